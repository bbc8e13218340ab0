"""A station program run as a child process, as the demo, the benchmarks and the test
harnesses run the daemons and emulators outside systemd.

Its output goes to a log file, never to a pipe: a pipe nobody drains fills after 64 KiB and
the program then blocks on its next log line, which looks like a hung daemon. Only an
emulator's stdout is read (``reads_stdout``): it prints the device path it made, once, and
logs to stderr. A restart (``start`` after the process ended) appends to the same log, so
the reason a killed process gave is still there when its successor fails.
"""
from __future__ import annotations

import os
import signal as signals
import subprocess
import sysconfig
from pathlib import Path
from typing import Mapping, Sequence

from station.errors import StationError
from station.paths import Paths

# How long a program gets to finish its SIGTERM before it is SIGKILLed (``Program.killed``):
# our daemons end in well under a second; one that needs more is hung, not busy.
STOP_TIMEOUT_S = 5.0
LOG_TAIL_LINES = 15  # what an error message quotes from a program's log
EXIT_REPORT_S = 2.0  # a program whose stdout ended is taken as still running if it has not exited by then


def scripts_dir() -> Path:
    """Where pip put our console scripts (the venv's bin): the programs run from the
    environment that runs us, never from whatever ``PATH`` finds first."""
    return Path(sysconfig.get_path("scripts"))


def program_env(paths: Paths, base: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment a station program is started with: ours (``base``), pointed at
    ``paths``; without ``NOTIFY_SOCKET``, so a child never tells the systemd that runs *us*
    that it is ready or alive."""
    env = dict(os.environ if base is None else base)
    env.update(STATION_ETC=str(paths.etc), STATION_STATE=str(paths.state), STATION_RUN=str(paths.run))
    env.pop("NOTIFY_SOCKET", None)
    return env


def terminate(popen: subprocess.Popen, timeout_s: float = STOP_TIMEOUT_S, sig: int = signals.SIGTERM) -> bool:
    """``sig`` (SIGTERM: the program finishes its work and exits), then SIGKILL if it still
    runs after ``timeout_s``; True if it had to be killed. For a process started without
    ``Program`` (a test's own ``Popen``); a ``Program`` is stopped with ``Program.stop``."""
    if popen.poll() is not None:
        return False
    popen.send_signal(sig)
    try:
        popen.wait(timeout_s)
    except subprocess.TimeoutExpired:
        popen.kill()
        popen.wait()
        return True
    return False


class Program:
    """One station program (``argv`` with ``env``) and its current process, if any.

    ``reads_stdout``: stdout is a pipe for ``first_line`` (an emulator's device path);
    otherwise stdout and stderr both go to ``log_path``. ``writes_stdin``: stdin is a pipe
    (a wrapper answering requests there); otherwise it is /dev/null, so no child ever
    reads the terminal. ``own_session``: the process leads a session of its own, so a ^C
    at the terminal reaches only us and we stop the station in order; a test harness
    passes False, so a ^C to pytest ends its daemons too.
    """

    def __init__(self, argv: Sequence[str], env: Mapping[str, str], log_path: Path, *, reads_stdout: bool = False,
                 writes_stdin: bool = False, own_session: bool = True):
        self.argv = list(argv)
        self.env = dict(env)
        self.log_path = Path(log_path)
        self.reads_stdout = reads_stdout
        self.writes_stdin = writes_stdin
        self.own_session = own_session
        self.popen: subprocess.Popen | None = None
        self.killed = False  # the last stop found it still running after its timeout: SIGKILLed

    def __repr__(self) -> str:
        return f"<Program {self.name} pid={self.pid} log={self.log_path}>"

    @property
    def name(self) -> str:
        """What messages call it: its log's name (``logs/<name>.log``), as every caller names them."""
        return self.log_path.stem

    def start(self) -> "Program":
        """Start a new process; the log is appended to (a restart keeps its predecessor's)."""
        if self.alive:
            raise StationError(f"{self.name} is already running (pid {self.pid})")
        with open(self.log_path, "ab") as log:  # the child has its own copy of the descriptor
            self.popen = subprocess.Popen(
                self.argv, env=self.env, start_new_session=self.own_session,
                stdin=subprocess.PIPE if self.writes_stdin else subprocess.DEVNULL,
                stdout=subprocess.PIPE if self.reads_stdout else log, stderr=log)
        self.killed = False
        return self

    @property
    def pid(self) -> int | None:
        return None if self.popen is None else self.popen.pid

    @property
    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    @property
    def returncode(self) -> int | None:
        """The exit status once it ended (-N: killed by signal N); None while it runs."""
        return None if self.popen is None else self.popen.poll()

    def first_line(self) -> str:
        """The first line the program prints on stdout (``reads_stdout``), without its end;
        an emulator prints the device path it made there once it is ready."""
        assert self.popen is not None and self.popen.stdout is not None, "start it with reads_stdout=True"
        line = self.popen.stdout.readline().decode(errors="replace").strip()
        if not line:
            try:  # its stdout closed as it exited: give the kernel a moment to report the status
                status: int | None = self.popen.wait(EXIT_REPORT_S)
            except subprocess.TimeoutExpired:
                status = None
            state = "still runs" if status is None else f"exited with status {status}"
            raise StationError(f"{self.name} did not start: it printed nothing on stdout and {state}; "
                               f"{self.log_path} ends:\n{self.log_tail()}")
        return line

    def signal(self, sig: int) -> bool:
        """Send ``sig`` to the running process; False if none runs."""
        if not self.alive:
            return False
        self.popen.send_signal(sig)
        return True

    def stop(self, timeout_s: float = STOP_TIMEOUT_S, sig: int = signals.SIGTERM) -> int | None:
        """``sig``, then SIGKILL if it still runs after ``timeout_s`` (``killed`` says so,
        ``terminate``). The exit status (-9 when killed); None if it was never started."""
        if self.popen is None:
            return None
        if terminate(self.popen, timeout_s, sig):
            self.killed = True
        self._close_pipes()
        return self.popen.returncode

    def kill(self) -> int | None:
        """SIGKILL, as a crash or the kernel's OOM killer would end it; the exit status."""
        if self.popen is None:
            return None
        if self.popen.poll() is None:
            self.popen.kill()
            self.popen.wait()
        self._close_pipes()
        return self.popen.returncode

    def log_tail(self, lines: int = LOG_TAIL_LINES) -> str:
        """The last ``lines`` of its log, where a program that failed says why; "" if none."""
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def _close_pipes(self) -> None:
        for pipe in (self.popen.stdin, self.popen.stdout):
            if pipe is not None:
                try:
                    pipe.close()
                except OSError:  # stdin: the flush of what it never read; it is gone anyway
                    pass
