#!/usr/bin/env python3
"""Benchmark the fingerprint image upload against the line's theoretical limit.

The emulator paces every byte it sends at 10 bits a byte (8N1) at the emulated baud, so
a transfer can at best deliver image bytes at

    limit = payload share of a data packet x baud / 10 bytes/s,

where the payload share is ``packet_size / (packet_size + 11)`` (start code 2, address 4,
PID 1, length 2, checksum 2). ``ratio`` is our effective throughput, 36,864 image bytes
over the time ``Scanner.upload_image()`` takes from sending UpImage to returning the image
(ack, every data packet, checksums, reassembly, unpacking), divided by that limit.

The peer figure is ``pyfingerprint``'s ``downloadImage`` (its name for UpImage) on the
same emulator in the same run: it reads byte by byte and writes the image file itself,
which is part of its cost as a user sees it. Every image received is checked against
the emulator's buffer, so a fast wrong answer cannot score.

Prints one JSON object on stdout (progress on stderr); about 25 s with the defaults.

    .venv/bin/python benchmarks/fingerprint_link.py [--bauds 57600 115200] [--rounds 1]
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from drivers.fingerprint import protocol as fp  # noqa: E402
from drivers.fingerprint.device import Scanner  # noqa: E402
from drivers.fingerprint.emulator import SensorEmulator  # noqa: E402

GOAL = 0.95
PACKET_OVERHEAD_BYTES = 11


def limit_bytes_per_s(baud: int, packet_size: int) -> float:
    share = packet_size / (packet_size + PACKET_OVERHEAD_BYTES)
    return share * baud / 10


def ours(emulator: SensorEmulator, baud: int, rounds: int) -> list[float]:
    times = []
    scanner = Scanner(emulator.path, baud=baud, command_timeout_s=1.0)
    with scanner:
        for _ in range(rounds):
            if not scanner.take_image():
                raise RuntimeError("the emulator reported no finger")
            started = time.perf_counter()
            image = scanner.upload_image()
            times.append(time.perf_counter() - started)
            if not np.array_equal(image, emulator.image):
                raise RuntimeError("our upload returned a different image than the sensor's buffer")
    return times


def pyfingerprint(emulator: SensorEmulator, baud: int, rounds: int, workdir: Path) -> list[float]:
    from pyfingerprint.pyfingerprint import PyFingerprint

    times = []
    sensor = PyFingerprint(emulator.path, baud, 0xFFFFFFFF, 0x00000000)
    try:
        if not sensor.verifyPassword():
            raise RuntimeError("pyfingerprint: wrong password")
        for index in range(rounds):
            if not sensor.readImage():
                raise RuntimeError("pyfingerprint: no finger")
            destination = workdir / f"pyfingerprint-{baud}-{index}.bmp"
            started = time.perf_counter()
            sensor.downloadImage(str(destination))
            times.append(time.perf_counter() - started)
            if not np.array_equal(np.asarray(Image.open(destination)), emulator.image):
                raise RuntimeError("pyfingerprint returned a different image than the sensor's buffer")
    finally:
        del sensor  # its destructor closes the port
    return times


def run(bauds: list[int], rounds: int, packet_size: int) -> dict:
    started = time.monotonic()
    per_baud: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="fplink-") as tmp:
        for baud in bauds:
            limit = limit_bytes_per_s(baud, packet_size)
            with SensorEmulator(baud=baud, packet_size=packet_size) as emulator:
                print(f"{baud} baud: ours ...", file=sys.stderr, flush=True)
                ours_s = min(ours(emulator, baud, rounds))
                print(f"{baud} baud: pyfingerprint ...", file=sys.stderr, flush=True)
                peer_s = min(pyfingerprint(emulator, baud, rounds, Path(tmp)))
            per_baud[str(baud)] = {
                "limit_bytes_per_s": round(limit, 1),
                "limit_s": round(fp.IMAGE_BYTES / limit, 3),
                "ours_s": round(ours_s, 3),
                "ours_bytes_per_s": round(fp.IMAGE_BYTES / ours_s, 1),
                "ours_ratio": round(fp.IMAGE_BYTES / ours_s / limit, 4),
                "pyfingerprint_s": round(peer_s, 3),
                "pyfingerprint_bytes_per_s": round(fp.IMAGE_BYTES / peer_s, 1),
                "pyfingerprint_ratio": round(fp.IMAGE_BYTES / peer_s / limit, 4),
            }
    lowest = str(min(bauds))
    ratio = per_baud[lowest]["ours_ratio"]
    return {
        "benchmark": "fingerprint_link",
        "ratio": ratio,
        "ratio_baud": int(lowest),
        "goal": GOAL,
        "goal_met": ratio >= GOAL,
        "image_bytes": fp.IMAGE_BYTES,
        "packet_size": packet_size,
        "payload_share": round(packet_size / (packet_size + PACKET_OVERHEAD_BYTES), 4),
        "rounds": rounds,
        "per_baud": per_baud,
        "seconds": round(time.monotonic() - started, 1),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--bauds", type=int, nargs="+", default=[57600, 115200])
    parser.add_argument("--rounds", type=int, default=1, help="uploads per client and baud; the best counts")
    parser.add_argument("--packet-size", type=int, default=128, choices=fp.PACKET_SIZES)
    args = parser.parse_args(argv)
    for baud in args.bauds:
        try:
            fp.baud_multiple(baud)
        except ValueError as exc:
            parser.error(str(exc))
    print(json.dumps(run(args.bauds, max(1, args.rounds), args.packet_size), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
