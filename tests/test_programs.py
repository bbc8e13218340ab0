"""station.programs: real short-lived programs (``python -c``) started, signalled, stopped
and killed; nothing here depends on how fast the machine is, only on what happened."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from station.errors import StationError
from station.paths import Paths
from station.programs import Program, program_env, scripts_dir, terminate

# A program that says it is ready on stdout only once its SIGTERM handling is in place, so a
# test never signals it before it can take the signal its way.
HANDLES_SIGTERM = """
import signal, sys, time
def done(*_):
    print("finishing its work", file=sys.stderr, flush=True)
    sys.exit(0)
signal.signal(signal.SIGTERM, done)
signal.signal(signal.SIGHUP, lambda *_: sys.exit(7))
print("ready", flush=True)
while True:
    time.sleep(1)
"""
IGNORES_SIGTERM = """
import signal, sys, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)
print("ready", flush=True)
while True:
    time.sleep(1)
"""
SLEEPS = "import time; print('ready', flush=True); time.sleep(120)"


def python(code: str, log: Path, **options) -> Program:
    return Program([sys.executable, "-c", code], os.environ, log, **options)


def wait_until(predicate, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {predicate}"
        time.sleep(0.02)


@pytest.fixture
def started():
    """Every program a test starts, killed at its end whatever happened."""
    programs: list[Program] = []
    yield programs
    for program in programs:
        program.kill()


def test_sigterm_ends_a_program_that_finishes_its_work_with_its_own_exit_status(tmp_path, started):
    program = python(HANDLES_SIGTERM, tmp_path / "daemon.log", reads_stdout=True).start()
    started.append(program)
    assert program.first_line() == "ready"
    assert program.alive and program.pid == program.popen.pid and program.returncode is None
    assert program.stop(timeout_s=30) == 0
    assert not program.alive and not program.killed and program.returncode == 0
    assert program.log_tail() == "finishing its work"


def test_a_program_without_a_handler_dies_of_sigterm(tmp_path, started):
    program = python(SLEEPS, tmp_path / "sleeper.log", reads_stdout=True).start()
    started.append(program)
    program.first_line()
    assert program.stop(timeout_s=30) == -signal.SIGTERM
    assert not program.killed


def test_a_program_that_ignores_sigterm_is_killed_after_the_timeout(tmp_path, started):
    program = python(IGNORES_SIGTERM, tmp_path / "stubborn.log", reads_stdout=True).start()
    started.append(program)
    program.first_line()
    assert program.stop(timeout_s=0.5) == -signal.SIGKILL
    assert program.killed and not program.alive
    assert program.stop() == -signal.SIGKILL  # stopping it again changes nothing
    assert program.killed


def test_stop_sends_the_signal_asked_for(tmp_path, started):
    program = python(HANDLES_SIGTERM, tmp_path / "daemon.log", reads_stdout=True).start()
    started.append(program)
    program.first_line()
    assert program.stop(timeout_s=30, sig=signal.SIGHUP) == 7  # its SIGHUP handler, not its SIGTERM one
    assert "finishing its work" not in program.log_tail()


def test_a_program_that_exited_by_itself_keeps_its_exit_status(tmp_path):
    program = python("import sys; print('no config', file=sys.stderr); sys.exit(3)", tmp_path / "bad.log").start()
    wait_until(lambda: not program.alive)
    assert program.returncode == 3
    assert not program.signal(signal.SIGTERM)  # nothing runs to be signalled
    assert program.stop() == 3 and not program.killed
    assert program.log_tail() == "no config"


def test_kill_is_sigkill_at_once(tmp_path, started):
    program = python(IGNORES_SIGTERM, tmp_path / "crash.log", reads_stdout=True).start()
    started.append(program)
    program.first_line()
    assert program.signal(signal.SIGTERM)  # ignored: it still runs
    assert program.alive
    assert program.kill() == -signal.SIGKILL
    assert not program.alive


def test_a_program_never_started_has_nothing_to_stop(tmp_path):
    program = python(SLEEPS, tmp_path / "never.log")
    assert program.pid is None and program.returncode is None and not program.alive
    assert program.stop() is None and program.kill() is None and not program.signal(signal.SIGTERM)
    assert program.log_tail() == ""  # no log yet


def test_stdout_and_stderr_go_to_the_log_and_its_tail_is_the_last_lines(tmp_path):
    code = "import sys\nfor n in range(40):\n    print(f'line {n}', file=[sys.stdout, sys.stderr][n % 2], flush=True)"
    program = python(code, tmp_path / "chatty.log").start()
    assert program.popen.stdout is None  # nothing for anyone to drain
    program.popen.wait(30)
    assert program.log_tail(3).splitlines() == ["line 37", "line 38", "line 39"]
    assert len(program.log_tail().splitlines()) == 15
    assert len((tmp_path / "chatty.log").read_text().splitlines()) == 40


def test_a_restart_appends_to_the_log(tmp_path):
    program = python("import os; print(os.getpid())", tmp_path / "restarted.log")
    first = program.start().pid
    program.popen.wait(30)
    second = program.start().pid
    program.popen.wait(30)
    assert program.log_tail().splitlines() == [str(first), str(second)]


def test_start_refuses_while_a_process_runs(tmp_path, started):
    program = python(SLEEPS, tmp_path / "once.log", reads_stdout=True).start()
    started.append(program)
    program.first_line()
    pid = program.pid
    with pytest.raises(StationError, match="once is already running"):
        program.start()
    assert program.pid == pid


def test_first_line_that_never_comes_names_the_log_and_quotes_it(tmp_path):
    program = python("import sys; print('cannot open /dev/ttyUSB9', file=sys.stderr); sys.exit(2)",
                     tmp_path / "emulator.log", reads_stdout=True).start()
    with pytest.raises(StationError) as failed:
        program.first_line()
    message = failed.value.message
    assert message.startswith("emulator did not start") and "exited with status 2" in message
    assert str(tmp_path / "emulator.log") in message and message.endswith("cannot open /dev/ttyUSB9")


def test_stdin_is_dev_null_unless_asked_for_and_then_it_is_a_pipe(tmp_path):
    ours, theirs = os.pipe()  # our stdin for a moment: a terminal a child could read from
    saved = os.dup(0)
    os.dup2(ours, 0)
    try:
        quiet = python("import os, sys; print(os.readlink('/proc/self/fd/0'), repr(sys.stdin.read()))",
                       tmp_path / "quiet.log").start()
    finally:
        os.dup2(saved, 0)
        for fd in (saved, ours, theirs):
            os.close(fd)
    assert quiet.popen.wait(30) == 0 and quiet.log_tail() == "/dev/null ''"
    echo = python("import sys\nfor line in sys.stdin: print(line.upper(), end='', flush=True)",
                  tmp_path / "echo.log", reads_stdout=True, writes_stdin=True).start()
    echo.popen.stdin.write(b"stats\n")
    echo.popen.stdin.flush()
    assert echo.first_line() == "STATS"
    assert echo.stop(timeout_s=30) in (0, -signal.SIGTERM)
    assert echo.popen.stdin.closed and echo.popen.stdout.closed


def test_own_session_keeps_a_terminal_ctrl_c_from_the_child(tmp_path, started):
    alone = python(SLEEPS, tmp_path / "alone.log", reads_stdout=True).start()
    shared = python(SLEEPS, tmp_path / "shared.log", reads_stdout=True, own_session=False).start()
    started += [alone, shared]
    alone.first_line()
    shared.first_line()
    assert os.getsid(alone.pid) == alone.pid
    assert os.getsid(shared.pid) == os.getsid(0)


def test_the_program_gets_the_environment_it_is_given(tmp_path):
    env = program_env(Paths(etc=tmp_path / "etc", state=tmp_path / "state", run=tmp_path / "run"),
                      {"PATH": os.environ.get("PATH", ""), "NOTIFY_SOCKET": "/run/systemd/notify", "LANG": "C.UTF-8"})
    assert env["STATION_ETC"] == str(tmp_path / "etc") and env["STATION_STATE"] == str(tmp_path / "state")
    assert env["STATION_RUN"] == str(tmp_path / "run") and env["LANG"] == "C.UTF-8"
    assert "NOTIFY_SOCKET" not in env  # never tell our own systemd a child is ready
    program = Program([sys.executable, "-c", "import os; print(os.environ['STATION_RUN'], "
                                             "os.environ.get('NOTIFY_SOCKET'))"], env, tmp_path / "env.log").start()
    program.popen.wait(30)
    assert program.log_tail() == f"{tmp_path / 'run'} None"


def test_program_env_starts_from_our_own_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("STATION_TEST_MARK", "kept")
    monkeypatch.setenv("NOTIFY_SOCKET", "/run/systemd/notify")
    env = program_env(Paths(etc=tmp_path, state=tmp_path, run=tmp_path))
    assert env["STATION_TEST_MARK"] == "kept" and "NOTIFY_SOCKET" not in env
    assert os.environ["NOTIFY_SOCKET"] == "/run/systemd/notify"  # ours is left alone


def test_terminate_stops_a_popen_started_elsewhere(tmp_path):
    with open(tmp_path / "plain.log", "ab") as log:
        popen = subprocess.Popen([sys.executable, "-c", IGNORES_SIGTERM], stdout=subprocess.PIPE, stderr=log)
    try:
        assert popen.stdout.readline() == b"ready\n"
        assert terminate(popen, timeout_s=0.5) is True and popen.returncode == -signal.SIGKILL
        assert terminate(popen) is False  # already ended
    finally:
        popen.stdout.close()
        if popen.poll() is None:
            popen.kill()
            popen.wait()


def test_scripts_dir_holds_our_console_scripts():
    assert (scripts_dir() / "stationctl").is_file()
    assert scripts_dir() == Path(sys.executable).parent  # this venv's bin
