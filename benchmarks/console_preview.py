#!/usr/bin/env python3
"""Benchmark the camera preview from the camera daemon to a browser through the console,
against the camera's own preview publications in the same run.

A whole station runs in processes under a fresh ``/tmp/cpvb-*`` directory, as the console's
browser tests start it: the fingerprint sensor emulator with ``station-fingerprintd``,
``station-camerad`` on its emulated source (the packaged 1280x720 at ``source.fps``, 30),
``station-controller`` with freshly provisioned keys and ``station-console``; the preview
runs at its packaged rate (``preview.fps`` in ``camera.yaml``, 15). Debian's Chromium,
driven by Playwright, signs in through the page's form with an officer account made for
the run, and starts a session through the page's own ``command("session.start")`` and
``openSession``: the portrait step opens ``/ws/preview`` and every frame goes through the
page's real ``drawFrame`` (JPEG decode, canvas, face overlay, ``ack``), which keeps
``window.station.previewStats``.

Phases:

- start-up: the station, then a baseline subscriber here, then the browser and the session;
- warm-up (``--warmup``, 3 s) once the page has drawn its first frame;
- the window (``--seconds``, 10): ``previewStats`` is reset at its start and read at its
  end; the baseline subscriber (``station.bus.Subscriber`` with ``FRAME_HWM`` on the
  camera's frames socket, topic ``camera.cam0.preview``, in this process) receives the same
  publications throughout; ``/proc/PID/stat`` CPU ticks of the console, the camera daemon
  and the browser's processes are read before and after.

Figures:

- ``preview_fps``: frames drawn in the page, (frames - 1) / (last - first receive time);
  ``camera_preview_fps``: the same over the baseline's receipts, the rate the camera
  publishes previews (the ceiling of the browser's rate); ``preview_ratio`` = the first
  over the second. The ``preview_fps`` goal (>= 15) equals the packaged publish rate, so it
  is judged within one frame of the window (>= 15 - 1 / ``seconds``).
- ``p50_latency_ms``, ``p95_latency_ms``: the page's receive time (``performance.timeOrigin
  + performance.now()``) minus the frame's acquisition time, from the page's own
  ``latencies_ms``. The camera stamps ``t_acq_ns`` with ``time.monotonic_ns()``; the
  console's bridge adds ``t_acq_wall_ns``, the same instant on the wall clock, which the
  page subtracts. Should a page ever mix the two clocks again (values off by decades), the
  offset, measured here from the same two kernel clocks, is subtracted and ``problems``
  says so.
- ``baseline_p50_latency_ms``, ``baseline_p95_latency_ms``: ``time.monotonic_ns()`` at the
  baseline's receipt minus ``t_acq_ns``: acquisition, analysis and JPEG encoding in the
  camera daemon and the bus; what the console and the browser add is the difference.
- ``cpu_share``: the console process's CPU time over the window (user + system) / wall time,
  in cores; ``camera_cpu_share`` and ``browser_cpu_share`` (Chromium's processes and
  Playwright's driver, summed) for context: on a 2-core machine all three share the cores.

Goals (the issue's): ``preview_fps`` >= 15, ``p95_latency_ms`` <= 150, ``cpu_share`` <= 0.25.
Prints one JSON object on stdout; progress on stderr; about 30 s. Every process is stopped
and the directory removed at the end, also on failure (then the end of each daemon's log is
printed first); ``--keep`` keeps the directory and the logs.

    .venv/bin/python benchmarks/console_preview.py [--seconds 10] [--warmup 3] [--keep]
"""
from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import yaml  # noqa: E402
import zmq  # noqa: E402

from station import config, keyring  # noqa: E402
from station.bus import FRAME_HWM, CommandClient, Subscriber  # noqa: E402
from station.console.accounts import Accounts  # noqa: E402
from station.console.daemon import accounts_path  # noqa: E402
from station.demo import make_applicant  # noqa: E402
from station.errors import StationError  # noqa: E402
from station.paths import Paths  # noqa: E402
from station.programs import Program, program_env, scripts_dir  # noqa: E402
from common import machine, progress_for  # noqa: E402

BIN = scripts_dir()
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_FLAGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-quic",
                  "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync"]
STATION_ID = "VN-HP-0001"
CAMERA = "cam0"
OFFICER, PASSWORD = "bench", "mat-khau-cua-benchmark"
READY_TIMEOUT_S = 60.0
FIRST_FRAME_TIMEOUT_S = 20.0
GOALS = {"preview_fps": 15.0, "p95_latency_ms": 150.0, "cpu_share": 0.25}
CLOCKS_DIFFER_MS = 60_000.0  # a raw page latency beyond this mixes the wall and monotonic clocks


progress = progress_for("console_preview")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu_ticks(pid: int) -> int | None:
    """User + system clock ticks of one process so far; None once it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return int(fields[11]) + int(fields[12])


def descendants(root: int) -> set[int]:
    """Every live process below ``root``, from the parent pids in ``/proc``."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(entry.name))
    found, todo = set(), [root]
    while todo:
        for child in children.get(todo.pop(), []):
            found.add(child)
            todo.append(child)
    return found


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (``q`` in 0..100) of a non-empty list."""
    ordered = sorted(values)
    return ordered[max(0, min(len(ordered) - 1, round(q / 100 * len(ordered) + 0.5) - 1))]


# -- the station -------------------------------------------------------------------------------
class Station:
    """Every station process in ``top``, each in its own session, logs to files."""

    def __init__(self, top: Path):
        self.top = top
        self.paths = Paths(etc=top / "etc", state=top / "state", run=top / "run")
        self.logs = top / "logs"
        for directory in (self.paths.etc, self.paths.state, self.paths.run, self.logs):
            directory.mkdir(parents=True, exist_ok=True)
        self.env = program_env(self.paths)
        self.procs: dict[str, Program] = {}
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/"
        self.ctx = zmq.Context()

    def spawn(self, name: str, argv: list[str], reads_stdout: bool = False) -> Program:
        program = self.procs[name] = Program(argv, self.env, self.logs / f"{name}.log",
                                             reads_stdout=reads_stdout).start()
        return program

    def start(self) -> None:
        _, central_pub = keyring.write_central_pair(self.top / "central")
        keyring.provision(self.paths.keys, STATION_ID, central_pub.read_bytes())
        etc = self.paths.etc
        link = self.top / "fp0.tty"
        sensor = self.spawn("sensor", [str(BIN / "stationctl"), "emulate", "fingerprint", "--link", str(link),
                                       "--control", str(self.paths.run / "sensor.ctl")], reads_stdout=True)
        sensor.first_line()
        (etc / "fingerprint@fp0.yaml").write_text(yaml.safe_dump({"port": str(link)}))
        (etc / f"camera@{CAMERA}.yaml").write_text(yaml.safe_dump({"source": {"kind": "emulated"}}))
        (etc / "controller.yaml").write_text(yaml.safe_dump(
            {"drivers": {"camera": [CAMERA], "fingerprint": ["fp0"]}, "store": {"fsync": False}}))
        (etc / "console.yaml").write_text(yaml.safe_dump({"listen": {"port": self.port}}))
        Accounts(accounts_path(self.paths)).add(OFFICER, PASSWORD, role="officer", language="en",
                                                 display_name="Benchmark officer")
        self.spawn("fp0", [str(BIN / "station-fingerprintd"), "fp0", "--log-level", "WARNING"])
        self.spawn(CAMERA, [str(BIN / "station-camerad"), CAMERA, "--log-level", "WARNING"])
        self.spawn("controller", [str(BIN / "station-controller"), "--log-level", "WARNING"])
        self.wait_for("drivers online", lambda: all(
            d["online"] for d in self.call("controller", "status", timeout_s=1.0)["drivers"].values()))
        self.spawn("console", [str(BIN / "station-console"), "--log-level", "WARNING"])
        self.wait_for("the console", lambda: self.call("console", "state", timeout_s=1.0)["state"] == "ready")

    def call(self, name: str, cmd: str, args: dict | None = None, timeout_s: float = 5.0) -> Any:
        client = CommandClient(self.ctx, self.paths.cmd(name), name=name)
        try:
            return client.call(cmd, args, timeout_s=timeout_s).result
        finally:
            client.close()

    def wait_for(self, what: str, ready: Any) -> None:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline:
            self.check_alive()
            try:
                if ready():
                    return
            except StationError:
                pass
            time.sleep(0.1)
        raise StationError(f"timed out after {READY_TIMEOUT_S:.0f} s waiting for {what}")

    def check_alive(self) -> None:
        for name, program in self.procs.items():
            if not program.alive:
                raise StationError(f"{name} exited with status {program.returncode}:\n{program.log_tail()}")

    def stop(self) -> None:
        for program in reversed(list(self.procs.values())):  # the console first, the sensor emulator last
            program.stop()
        self.ctx.destroy(linger=0)


# -- the baseline ------------------------------------------------------------------------------
class Baseline:
    """The camera's preview publications as a plain subscriber in this process receives them."""

    def __init__(self, station: Station):
        self.sub = Subscriber(station.ctx, [station.paths.frames(CAMERA)], topics=[f"camera.{CAMERA}.preview"],
                              hwm=FRAME_HWM)
        self.received: list[tuple[int, int, int]] = []  # (receipt monotonic ns, t_acq_ns, index)

    def wait_first(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while self.sub.receive(timeout_ms=200) is None:
            if time.monotonic() > deadline:
                raise StationError(f"the camera published no preview within {timeout_s:g} s")

    def drain(self, seconds: float, record: bool) -> None:
        """Receive for ``seconds``; with ``record``, keep what arrives and count gaps afresh."""
        if record:
            self.sub.gaps = 0
        end = time.monotonic() + seconds
        while (left := end - time.monotonic()) > 0:
            msg = self.sub.receive(timeout_ms=max(1, int(left * 1000)))
            if msg is not None and record:
                self.received.append((time.monotonic_ns(), msg.get("t_acq_ns"), msg.get("index")))

    def figures(self) -> dict[str, Any]:
        if len(self.received) < 2:
            raise StationError("the baseline received fewer than two previews in the window")
        span_s = (self.received[-1][0] - self.received[0][0]) / 1e9
        latencies = [(got - acq) / 1e6 for got, acq, _ in self.received]
        steps: dict[str, int] = {}
        for a, b in zip(self.received, self.received[1:]):
            steps[str(b[2] - a[2])] = steps.get(str(b[2] - a[2]), 0) + 1
        return {"fps": (len(self.received) - 1) / span_s, "frames": len(self.received),
                "p50_ms": statistics.median(latencies), "p95_ms": percentile(latencies, 95),
                "max_ms": max(latencies), "index_steps": dict(sorted(steps.items(), key=lambda kv: int(kv[0]))),
                "gaps": self.sub.gaps}

    def close(self) -> None:
        self.sub.close()


# -- the browser -------------------------------------------------------------------------------
def open_preview(page: Any, station: Station) -> dict[str, Any]:
    """Sign in through the form, start a session through the page's own code: the portrait
    step opens the preview. Returns the session view."""
    page.goto(station.url)
    page.fill("#sign-in-user", OFFICER)
    page.fill("#sign-in-password", PASSWORD)
    page.press("#sign-in-password", "Enter")
    page.wait_for_selector("#view-start:not([hidden])")  # hello answered: no session to resume
    view = page.evaluate("""async (applicant) => {
        const view = await command("session.start", { applicant });
        await openSession(view);
        return view;
    }""", make_applicant(random.Random(0), 0))
    if view.get("step") != "portrait":
        raise StationError(f"the session opened at step {view.get('step')!r}, not the portrait")
    deadline = time.monotonic() + FIRST_FRAME_TIMEOUT_S  # polled: the page's CSP refuses wait_for_function
    while not page.evaluate("window.station.previewStats.frames"):
        if time.monotonic() > deadline:
            raise StationError(f"the page drew no preview frame within {FIRST_FRAME_TIMEOUT_S:g} s")
        time.sleep(0.1)
    return view


def page_clock_skew(page: Any, tries: int = 7) -> tuple[float, float]:
    """The page's wall clock minus this process's, and the bound on that figure (half the
    shortest round trip of the ``tries``): how far the page's latencies can be trusted."""
    best = None
    for _ in range(tries):
        before = time.time_ns()
        page_ms = page.evaluate("performance.timeOrigin + performance.now()")
        after = time.time_ns()
        half_rtt = (after - before) / 2e6
        if best is None or half_rtt < best[1]:
            best = (page_ms - (before + after) / 2e6, half_rtt)
    return best


RESET_STATS = "window.station.previewStats = { frames: 0, latencies_ms: [], first_ms: null, last_ms: null }"


def browser_figures(stats: dict[str, Any], seconds: float) -> dict[str, Any]:
    frames, first, last = stats["frames"], stats["first_ms"], stats["last_ms"]
    if frames < 2 or last is None or last <= first:
        raise StationError(f"the page drew {frames} frame(s) in {seconds:g} s")
    raw = stats["latencies_ms"]
    offset_ms = (time.time_ns() - time.monotonic_ns()) / 1e6
    clocks_differ = abs(statistics.median(raw)) > CLOCKS_DIFFER_MS
    latencies = [v - offset_ms for v in raw] if clocks_differ else raw
    return {"fps": (frames - 1) / ((last - first) / 1000), "frames": frames,
            "p50_ms": statistics.median(latencies), "p95_ms": percentile(latencies, 95),
            "max_ms": max(latencies), "clocks_differ": clocks_differ, "offset_ms": offset_ms}


# -- the run -----------------------------------------------------------------------------------
def share(pids: set[int], before: dict[int, int], after: dict[int, int], wall_s: float) -> float:
    """CPU time of ``pids`` between two samples over the wall time, in cores; a process
    gone by the second sample counts for nothing."""
    ticks = sum(after[pid] - before[pid] for pid in pids if pid in before and pid in after)
    return ticks / CLOCK_TICKS / wall_s


def sample(pids: set[int]) -> dict[int, int]:
    return {pid: ticks for pid in pids if (ticks := cpu_ticks(pid)) is not None}


def machine_used(load: tuple[float, float, float]) -> dict[str, Any]:
    from importlib.metadata import version

    chromium = subprocess.run([CHROMIUM, "--version"], capture_output=True, text=True).stdout.strip()
    return {**machine(load), "chromium": chromium, "playwright": version("playwright"),
            "aiohttp": version("aiohttp"), "pyzmq": zmq.__version__}


def measure(station: Station, seconds: float, warmup_s: float) -> dict[str, Any]:
    from playwright.sync_api import sync_playwright

    baseline = Baseline(station)
    try:
        baseline.wait_first(FIRST_FRAME_TIMEOUT_S)
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
            try:
                page = browser.new_context(viewport={"width": 1280, "height": 900}, locale="en-GB").new_page()
                said: list[str] = []
                page.on("pageerror", lambda error: said.append(str(error)))
                progress("signing in and opening the portrait step")
                open_preview(page, station)
                progress(f"warm-up {warmup_s:g} s, then {seconds:g} s measured")
                baseline.drain(warmup_s, record=False)
                console_pid, camera_pid = station.procs["console"].pid, station.procs[CAMERA].pid
                browser_pids = descendants(os.getpid()) - set().union(
                    *({p.pid} | descendants(p.pid) for p in station.procs.values()))
                relayed_before = station.call("console", "state")["status"]["frames_relayed"]
                skew_ms, skew_bound_ms = page_clock_skew(page)
                page.evaluate(RESET_STATS)
                cpu_before = sample({console_pid, camera_pid} | browser_pids)
                started = time.monotonic()
                baseline.drain(seconds, record=True)
                stats = page.evaluate("window.station.previewStats")
                cpu_after = sample({console_pid, camera_pid} | browser_pids)
                wall_s = time.monotonic() - started
                console_state = station.call("console", "state")
                station.check_alive()
            finally:
                browser.close()
    finally:
        baseline.close()
    relayed = console_state["status"]["frames_relayed"] - relayed_before
    return {
        "browser": browser_figures(stats, seconds), "baseline": baseline.figures(), "wall_s": wall_s,
        "cpu": {
            "console": share({console_pid}, cpu_before, cpu_after, wall_s),
            "camera": share({camera_pid}, cpu_before, cpu_after, wall_s),
            "browser": share(browser_pids, cpu_before, cpu_after, wall_s),
        },
        "relayed_fps": relayed / wall_s, "page_errors": said, "skew_ms": skew_ms, "skew_bound_ms": skew_bound_ms,
        "preview_viewers": console_state["status"]["preview_viewers"],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=10.0, help="the measured window")
    parser.add_argument("--warmup", type=float, default=3.0, help="after the page's first frame, before measuring")
    parser.add_argument("--keep", action="store_true", help="keep the work directory and the daemons' logs")
    args = parser.parse_args()
    load = os.getloadavg()
    packaged = config.load("camera", CAMERA, Path(tempfile.gettempdir()) / "no-etc")
    top = Path(tempfile.mkdtemp(prefix="cpvb-", dir="/tmp"))  # ipc paths must stay short
    station = Station(top)
    failed = True
    try:
        progress(f"starting the station in {top}")
        station.start()
        result = measure(station, args.seconds, args.warmup)
        failed = False
    finally:
        station.stop()
        if failed:
            for name, program in station.procs.items():
                if tail := program.log_tail(8):
                    progress(f"{name}.log ends:\n{tail}")
        if args.keep:
            progress(f"work directory and logs kept in {top}")
        else:
            shutil.rmtree(top, ignore_errors=True)

    browser, baseline, cpu = result["browser"], result["baseline"], result["cpu"]
    problems = []
    if browser["clocks_differ"]:
        problems.append(
            f"the page's latencies mix clocks (t_acq_ns is time.monotonic_ns(), the page's receive time is wall "
            f"time): {browser['offset_ms']:.0f} ms (wall - monotonic, read here) subtracted from each")
    if abs(result["skew_ms"]) > result["skew_bound_ms"] + 1.0:
        problems.append(f"the page's wall clock is {result['skew_ms']:+.1f} ms off this process's "
                        f"(+-{result['skew_bound_ms']:.1f}): its latencies are off by as much")
    if baseline["gaps"]:
        problems.append(f"the baseline subscriber lost {baseline['gaps']} preview(s) (FRAME_HWM): its rate is low")
    if result["page_errors"]:
        problems.append(f"page errors: {result['page_errors'][:3]}")
    ratio = browser["fps"] / baseline["fps"]
    goal_met = {"preview_fps": browser["fps"] >= GOALS["preview_fps"] - 1 / args.seconds,
                "p95_latency_ms": browser["p95_ms"] <= GOALS["p95_latency_ms"],
                "cpu_share": cpu["console"] <= GOALS["cpu_share"]}
    print(json.dumps({
        "preview_fps": round(browser["fps"], 2),
        "camera_preview_fps": round(baseline["fps"], 2),
        "preview_ratio": round(ratio, 3),
        "p50_latency_ms": round(browser["p50_ms"], 1),
        "p95_latency_ms": round(browser["p95_ms"], 1),
        "max_latency_ms": round(browser["max_ms"], 1),
        "baseline_p50_latency_ms": round(baseline["p50_ms"], 1),
        "baseline_p95_latency_ms": round(baseline["p95_ms"], 1),
        "baseline_max_latency_ms": round(baseline["max_ms"], 1),
        "cpu_share": round(cpu["console"], 3),
        "console_cpu_ms_per_frame": round(cpu["console"] / browser["fps"] * 1000, 2),
        "camera_cpu_share": round(cpu["camera"], 3),
        "browser_cpu_share": round(cpu["browser"], 3),
        "goals": GOALS, "goal_met": goal_met, "goals_met": all(goal_met.values()),
        "frames": {"browser": browser["frames"], "baseline": baseline["frames"],
                   "console_relayed_fps": round(result["relayed_fps"], 2), "baseline_gaps": baseline["gaps"],
                   # camera frames between two previews: 2 at 30 / 15 fps; 1 and 3 when a late
                   # frame moves the camera's preview slot
                   "camera_preview_index_steps": baseline["index_steps"]},
        "page_clock_skew_ms": [round(result["skew_ms"], 2), round(result["skew_bound_ms"], 2)],
        "camera": {"fps": packaged["source"]["fps"], "preview_fps": packaged["preview"]["fps"],
                   "preview_width": packaged["preview"]["width"], "source": "emulated",
                   "resolution": f"{packaged['source']['width']}x{packaged['source']['height']}"},
        "seconds": round(result["wall_s"], 2), "warmup_s": args.warmup,
        "machine": machine_used(load),
        "problems": problems,
    }, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
