#!/usr/bin/env python3
"""Benchmark one card job: the artwork rendered, separated into ribbon panels and printed on
the printer emulator, against rendering the same artwork alone in the same run.

The full path is what instant issuance does per card once the card's data is known:
``CardFace.render`` (front and back, the controller's step), ``panels.separate`` of each side
with the printer's packaged settings (``ymcko``, 32 colour levels, the chip's keep-clear
rectangle on the back; the daemon's ``print`` job) and ``Printer.print_card`` over a pty:
every panel checked and packed (``protocol.download_panel``), written, and its reply awaited,
up to ``Se`` printing and ejecting the card. The baseline renders the same card and nothing
else. Both run interleaved card by card (full, render, render, full, ...) after a few
warm-up cards, each card a different applicant (``station.demo.make_applicant``) with the
astronaut as a token-sized portrait and two ``SyntheticFinger`` index impressions, built
before the clock starts. One ``CardFace`` is built before the loop (about 0.4 s: fonts and
the static art), as the controller keeps one.

The emulator is unpaced (no mechanism time), so the figure is software time; it decodes
every panel (``unpack_panel``) as a printer would and writes no PNGs. By default it runs as
``stationctl emulate printer`` in a child process pinned to the other core(s), this process
to one core: the printer's own decoding happens in the printer, so it must not take CPU
from the station's side. The protocol waits for every panel's reply, though, so the time
the emulator takes to decode a panel is still inside ``print_card``: ``print_card_ms``
splits into ``pack`` (bit-packing the panels), ``write`` (onto the pty, paced by the
emulator reading it), ``reply_wait`` (the emulator decoding a panel once its last byte is
in, and answering) and ``other`` (checks, framing); ``emulator_cpu_ms`` is the child's CPU per card and
``station_cpu_ms`` this process's CPU (``time.process_time``) per card, the emulator's not
counted: the station's own work whatever the line and the printer take.
``--emulator thread`` runs it in this process instead, on the same core.

``transport_floor`` moves the card's stream bytes through a bare pty to a reader on the
emulator's core, nothing else (``bare_pty_ms``), and gives the ratio a job doing only the
render and that transfer would reach (``ratio_at_best``): the floor under ``ratio``.

Goals: ``per_card_ms`` (median of the full path) <= 300 and ``ratio`` (median full /
median render alone) <= 1.3. Prints one JSON object on stdout; progress on stderr. About
25 s with the defaults.

    .venv/bin/python benchmarks/card_job.py [--cards 30] [--emulator process|thread]
"""
from __future__ import annotations

import argparse
import json
import os
import pty
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import tty
from datetime import date
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import cv2  # noqa: E402
import numpy as np  # noqa: E402

from drivers.emulation import send_command  # noqa: E402
from drivers.fingerprint import protocol as fp  # noqa: E402
from drivers.fingerprint.prints import SyntheticFinger  # noqa: E402
from drivers.printer import panels  # noqa: E402
from drivers.printer import protocol as pr  # noqa: E402
from drivers.printer.device import Printer  # noqa: E402
from drivers.printer.emulator import PrinterEmulator  # noqa: E402
from drivers.printer.transport import transport_for  # noqa: E402
from station import config  # noqa: E402
from stopwatch import Stopwatch  # noqa: E402
from station.card import CardData, card_data  # noqa: E402
from station.cardface import CardFace  # noqa: E402
from station.demo import make_applicant  # noqa: E402
from common import astronaut_token, machine, ms, progress_for  # noqa: E402

GOALS = {"per_card_ms": 300.0, "ratio": 1.3}
WARMUP_CARDS = 3
APPLICANT_SEED = 2024
ISSUE_DATE = date(2026, 12, 1)
AUTHORITY = "CỤC TRƯỞNG CỤC CẢNH SÁT QUẢN LÝ HÀNH CHÍNH VỀ TRẬT TỰ XÃ HỘI"
RIGHT_INDEX, LEFT_INDEX = 2, 7  # ISO/IEC 19794-4 finger positions
STATIONCTL = Path(sys.executable).parent / "stationctl"
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


progress = progress_for("card_job")


# -- inputs ----------------------------------------------------------------------------------
def portrait_jpeg() -> bytes:
    """The astronaut's head and shoulders at the camera's token size (480 x 640, JPEG 92)."""
    return cv2.imencode(".jpg", astronaut_token(), [cv2.IMWRITE_JPEG_QUALITY, 92])[1].tobytes()


def index_finger(seed: int, position: int) -> np.ndarray:
    """An impression as the sensor delivers it: 4-bit grey, unpacked to uint8 (288 x 256)."""
    impression = SyntheticFinger(seed, position).impression(1)
    return fp.unpack_image(fp.pack_image(fp.quantize_image(impression)))


def make_cards(count: int) -> list[CardData]:
    rng, jpeg = random.Random(APPLICANT_SEED), portrait_jpeg()
    return [card_data(make_applicant(rng, number), jpeg, index_finger(APPLICANT_SEED + number, LEFT_INDEX),
                      index_finger(APPLICANT_SEED + number, RIGHT_INDEX), ISSUE_DATE, AUTHORITY)
            for number in range(count)]


# -- the printer -----------------------------------------------------------------------------
class EmulatorProcess:
    """``stationctl emulate printer`` in a child process on ``cpus``, with a control socket."""

    def __init__(self, top: Path, cards: int, cpus: set[int]):
        self.control = top / "printer.ctl"
        self.proc = subprocess.Popen(
            [str(STATIONCTL), "emulate", "printer", "--control", str(self.control), "--feeder", str(cards),
             "--ribbon-prints", str(cards), "--log-level", "WARNING"],
            stdout=subprocess.PIPE, text=True, preexec_fn=lambda: os.sched_setaffinity(0, cpus))
        assert self.proc.stdout is not None
        self.path = self.proc.stdout.readline().strip()
        if not self.path:
            self.stop()
            raise RuntimeError(f"stationctl emulate printer exited ({self.proc.returncode}) without a port path")
        deadline = time.monotonic() + 5
        while not self.control.exists() and time.monotonic() < deadline:
            time.sleep(0.02)

    def cpu_s(self) -> float | None:
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS  # utime + stime, every thread

    def status(self) -> dict[str, Any]:
        reply = send_command(self.control, "status")
        return json.loads(reply.split(" ", 1)[1])

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


class EmulatorThread:
    """``PrinterEmulator`` serving from a thread of this process (on this process's core)."""

    def __init__(self, cards: int):
        self.emulator = PrinterEmulator(feeder=cards, ribbon_prints=cards)
        self.path = self.emulator.start()

    def cpu_s(self) -> float | None:
        return None  # shares this process's CPU time

    def status(self) -> dict[str, Any]:
        return self.emulator.status()

    def stop(self) -> None:
        self.emulator.stop()


# -- timing ----------------------------------------------------------------------------------
def card_job(face: CardFace, printer: Printer, settings: dict[str, Any], card: CardData,
             watch: Stopwatch) -> dict[str, float]:
    """The full path for one card, timed part by part."""
    watch.reset()
    cpu0, t0 = time.process_time(), time.perf_counter()
    front, back = face.render(card)
    t1 = time.perf_counter()
    separated = [panels.separate(side, settings["ribbon"], settings["color_levels"],
                                 [tuple(r) for r in settings["overlay_keep_clear"][name]])
                 for name, side in (("front", front), ("back", back))]
    t2 = time.perf_counter()
    printer.print_card(*separated)
    t3, cpu3 = time.perf_counter(), time.process_time()
    spent = watch.spent
    return {"total": t3 - t0, "cpu": cpu3 - cpu0, "render": t1 - t0, "separate": t2 - t1, "print_card": t3 - t2,
            "pack": spent["pack"], "write": spent["write"], "reply_wait": spent["reply_wait"],
            "other": t3 - t2 - spent["pack"] - spent["write"] - spent["reply_wait"]}


def render_only(face: CardFace, card: CardData) -> dict[str, float]:
    cpu0, t0 = time.process_time(), time.perf_counter()
    face.render(card)
    return {"total": time.perf_counter() - t0, "cpu": time.process_time() - cpu0}


def bare_pty_ms(size: int, reader_cpus: set[int], rounds: int = 10) -> float:
    """The card's stream through a bare pty: this process writes ``size`` bytes, a forked
    reader on ``reader_cpus`` takes them (up to 1 MiB a read) and answers one byte. No
    protocol, no decoding: the least a printer on a pty can cost (median, ms)."""
    master, slave = pty.openpty()
    tty.setraw(slave)
    data, times = bytes(size), []
    try:
        for _ in range(rounds):
            pid = os.fork()
            if pid == 0:  # the reader: nothing but reads
                try:
                    os.sched_setaffinity(0, reader_cpus)
                    got = 0
                    while got < size:
                        got += len(os.read(master, 1 << 20))
                    os.write(master, b"\r")
                finally:
                    os._exit(0)
            started = time.perf_counter()
            view = memoryview(data)
            while view:
                view = view[os.write(slave, view):]
            os.read(slave, 1)
            times.append(time.perf_counter() - started)
            os.waitpid(pid, 0)
    finally:
        os.close(master)
        os.close(slave)
    return ms(statistics.median(times))


# -- the run ---------------------------------------------------------------------------------
def summary(rows: list[dict[str, float]], key: str = "total") -> dict[str, float]:
    values = [r[key] for r in rows]
    return {"median_ms": ms(statistics.median(values)), "p90_ms": ms(statistics.quantiles(values, n=10)[-1])}


def machine_used(allowed: list[int], cpu: int, emulator_cpus: set[int] | None,
                 load: tuple[float, float, float]) -> dict[str, Any]:
    return {**machine(load, allowed), "benchmark_cpu": cpu,
            "emulator_cpus": sorted(emulator_cpus) if emulator_cpus else [cpu],
            "numpy": np.__version__, "opencv": cv2.__version__}


def run(cards: int, mode: str, top: Path) -> dict[str, Any]:
    load = os.getloadavg()
    allowed = sorted(os.sched_getaffinity(0))
    cpu, spare = allowed[0], set(allowed[1:])
    problems: list[str] = []
    if mode == "process" and not spare:
        problems.append(f"only cpu {cpu} is allowed: the emulator process shares the benchmark's core")
        spare = {cpu}
    os.sched_setaffinity(0, {cpu})  # both sides on one core: no migrations mid-run

    etc = top / "etc"  # empty: the packaged card.yaml and printer.yaml, no site overrides
    etc.mkdir()
    settings = config.load("printer", None, etc)
    progress(f"building {WARMUP_CARDS + cards} cards and the card face")
    deck = make_cards(WARMUP_CARDS + cards)
    started = time.perf_counter()
    face = CardFace.from_config(etc)
    face_build_s = time.perf_counter() - started

    total = WARMUP_CARDS + cards
    emulator = EmulatorProcess(top, total, spare) if mode == "process" else EmulatorThread(total)
    timeouts = settings["timeouts"]
    printer = Printer(transport_for(emulator.path, baud=settings["baud"]), query_timeout_s=timeouts["query_s"],
                      move_timeout_s=timeouts["move_s"], panel_timeout_s=timeouts["panel_s"],
                      print_timeout_s=timeouts["print_s"], ribbon_low=settings["ribbon_low"])
    watch = Stopwatch()
    original_pack = pr.pack_panel
    full_rows: list[dict[str, float]] = []
    render_rows: list[dict[str, float]] = []
    try:
        printer.open()
        identity = printer.identify()
        printer.setup(settings["ribbon"])
        pr.pack_panel = watch.wrap("pack", original_pack)  # download_panel looks it up at each call
        printer.transport.write = watch.wrap("write", printer.transport.write)  # type: ignore[method-assign]
        printer._await_reply = watch.wrap("reply_wait", printer._await_reply)  # type: ignore[method-assign]
        progress(f"{WARMUP_CARDS} warm-up and {cards} measured cards, full path and render alone interleaved "
                 f"(emulator: {mode})")
        cpu_before = None
        for index, card in enumerate(deck):
            if index == WARMUP_CARDS:
                cpu_before = emulator.cpu_s()
            order = (("full", lambda: card_job(face, printer, settings, card, watch)),
                     ("render", lambda: render_only(face, card)))
            for name, one in order if index % 2 == 0 else reversed(order):
                result = one()
                if index >= WARMUP_CARDS:
                    (full_rows if name == "full" else render_rows).append(result)
        cpu_after = emulator.cpu_s()
        status = emulator.status()
    finally:
        pr.pack_panel = original_pack
        printer.close()
        emulator.stop()

    printed = status["counters"]["printed"]
    if printed != total:
        problems.append(f"the emulator printed {printed} cards, {total} were sent")
    if status["emulator"].get("error_replies"):
        problems.append(f"the emulator answered {status['emulator']['error_replies']} commands with an error")
    stats = printer.stats
    if stats.error_replies or stats.timeouts or stats.stale_bytes or stats.extra_replies:
        problems.append(f"driver counters: {stats}")

    full = statistics.median(r["total"] for r in full_rows)
    render = statistics.median(r["total"] for r in render_rows)
    ratio = full / render
    paired = statistics.median(f["total"] / r["total"] for f, r in zip(full_rows, render_rows))
    goals_met = {"per_card_ms": ms(full) <= GOALS["per_card_ms"], "ratio": ratio <= GOALS["ratio"]}
    one_card = deck[0]
    sides = [panels.separate(side, settings["ribbon"], settings["color_levels"],
                             [tuple(r) for r in settings["overlay_keep_clear"][name]])
             for name, side in zip(("front", "back"), face.render(one_card))]
    stream_bytes = sum(pr.panel_bytes(p.levels) for side in sides for p in side)
    floor_ms = bare_pty_ms(stream_bytes, spare if mode == "process" else {cpu})
    return {
        "benchmark": "card_job",
        "per_card_ms": ms(full),
        "render_only_ms": ms(render),
        "ratio": round(ratio, 3),
        # each card's full path against the render-alone run beside it: steadier when the
        # machine's speed drifts during the run
        "paired_ratio": round(paired, 3),
        "goals": GOALS,
        "goals_met": goals_met,
        "full": summary(full_rows),
        "render_alone": summary(render_rows),
        # this process's CPU only (with --emulator process, none of the emulator's): the
        # station's own work, whatever the line and the printer take
        "station_cpu_ms": {"full": ms(statistics.median(r["cpu"] for r in full_rows)),
                           "render_alone": ms(statistics.median(r["cpu"] for r in render_rows))},
        "breakdown_ms": {key: ms(statistics.median(r[key] for r in full_rows))
                         for key in ("render", "separate", "print_card")},
        "print_card_ms": {key: ms(statistics.median(r[key] for r in full_rows))
                          for key in ("pack", "write", "reply_wait", "other")},
        "emulator": mode,
        "emulator_cpu_ms": None if cpu_before is None or cpu_after is None
        else ms((cpu_after - cpu_before) / cards),
        "cards": cards,
        "warmup_cards": WARMUP_CARDS,
        "panels": {name: "".join(p.letter for p in side) for name, side in zip(("front", "back"), sides)},
        "stream_bytes_per_card": stream_bytes,
        # The same bytes through a bare pty (no protocol, no decoding), and the ratio a card
        # job would have if rendering it and moving those bytes were all it did.
        "transport_floor": {"bare_pty_ms": floor_ms, "ratio_at_best": round((ms(render) + floor_ms) / ms(render), 3)},
        "ribbon": settings["ribbon"], "color_levels": settings["color_levels"],
        "keep_clear": settings["overlay_keep_clear"],
        "printer": identity.model,
        "card_face_build_ms": ms(face_build_s),
        "machine": machine_used(allowed, cpu, spare if mode == "process" else None, load),
        "problems": problems,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cards", type=int, default=30, help="measured cards of each (default 30)")
    parser.add_argument("--emulator", choices=("process", "thread"), default="process",
                        help="the printer emulator in a child process on another core (default) or in a thread here")
    args = parser.parse_args(argv)
    if args.cards < 2:
        parser.error("--cards must be at least 2")
    top = Path(tempfile.mkdtemp(prefix="cardjob-"))
    try:
        print(json.dumps(run(args.cards, args.emulator, top), indent=2, ensure_ascii=False))
    finally:
        shutil.rmtree(top, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
