"""stationctl: the field engineer's and operator's command line.

  stationctl config check [--etc DIR]          validate every config file offline
  stationctl state NAME                        a daemon's snapshot (status, config, counters)
  stationctl call NAME CMD [JSON]              send one command, print the reply
  stationctl watch [NAME ...] [--topic PREFIX] print events as JSON lines (never payloads)
  stationctl face check IMAGE...               the camera's portrait checks on image files
  stationctl emulate fingerprint|camera ...    run one device emulator; first line: its path
"""
from __future__ import annotations

import argparse
import json
import signal
import sys
from pathlib import Path
from typing import Sequence

import zmq

from station import config
from station.bus import CommandClient, Subscriber
from station.errors import StationError
from station.paths import Paths


def _paths(args: argparse.Namespace) -> Paths:
    return Paths.resolve(getattr(args, "etc", None), getattr(args, "state", None), getattr(args, "run", None))


def cmd_config_check(args: argparse.Namespace) -> int:
    etc = _paths(args).etc
    problems = config.check(etc)
    if problems:
        print(f"configuration in {etc} is invalid:", file=sys.stderr)
        for problem in problems:
            print(f"  {problem}", file=sys.stderr)
        return 1
    print(f"configuration in {etc} is valid")
    return 0


def cmd_call(args: argparse.Namespace) -> int:
    try:
        call_args = json.loads(args.args) if args.args else {}
    except json.JSONDecodeError as exc:
        print(f"stationctl: arguments must be a JSON object: {exc}", file=sys.stderr)
        return 2
    ctx = zmq.Context()
    client = CommandClient(ctx, _paths(args).cmd(args.name), name=args.name)
    try:
        reply = client.call(args.cmd, call_args, timeout_s=args.timeout)
    except StationError as exc:
        print(json.dumps({"ok": False, "error": exc.as_reply()}, indent=2))
        return 1
    finally:
        client.close()
        ctx.term()
    out = {"ok": True, "result": reply.result}
    if reply.payloads:
        out["payload_bytes"] = [len(p) for p in reply.payloads]
    print(json.dumps(out, indent=2))
    return 0


def cmd_state(args: argparse.Namespace) -> int:
    args.cmd, args.args = "state", None
    return cmd_call(args)


def cmd_watch(args: argparse.Namespace) -> int:
    paths = _paths(args)
    names = args.names or sorted(p.name[:-4] for p in paths.run.glob("*.pub"))
    if not names:
        print(f"stationctl: no daemons publish in {paths.run}", file=sys.stderr)
        return 1
    ctx = zmq.Context()
    sub = Subscriber(ctx, [paths.pub(n) for n in names], topics=[args.topic],
                     on_gap=lambda src, topic, want, got: print(
                         json.dumps({"gap": {"src": src, "topic": topic, "expected": want, "got": got}}), flush=True))
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    count = 0
    while args.count <= 0 or count < args.count:
        msg = sub.receive(timeout_ms=1000)
        if msg is None:
            continue
        if msg.event == "heartbeat" and not args.heartbeats:
            continue
        line = {"topic": msg.topic, **msg.header}
        if msg.payloads:
            line["payload_bytes"] = [len(p) for p in msg.payloads]
        print(json.dumps(line), flush=True)
        count += 1
    sub.close()
    ctx.term()
    return 0


def cmd_face_check(args: argparse.Namespace) -> int:
    """The camera daemon's own analysis on image files, for tuning thresholds at a desk."""
    import cv2

    from drivers.camera.detector import make_detector
    from drivers.camera.quality import FaceAnalyzer

    camera = config.load("camera", args.camera, _paths(args).etc)
    analyzer = FaceAnalyzer(camera["quality"], make_detector(camera["detector"]))
    status = 0
    for path in args.images:
        image = cv2.imread(path, cv2.IMREAD_COLOR) if Path(path).is_file() else None
        if image is None:
            print(json.dumps({"image": path, "error": "cannot read this file as an image"}))
            status = 1
            continue
        report = analyzer.analyze(image)
        print(json.dumps({"image": path, **report.to_dict()}, default=float, ensure_ascii=False))
        status = status or (0 if report.passed else 1)
    return status


def cmd_emulate(args: argparse.Namespace, rest: list[str]) -> int:
    if args.device == "fingerprint":
        from drivers.fingerprint import emulator
    else:
        from drivers.camera import emulator
    return emulator.main(rest)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="stationctl", description="Station field-engineer and operator tool")
    parser.add_argument("--etc", help="config directory (default $STATION_ETC or /etc/station)")
    parser.add_argument("--run", help="socket directory (default $STATION_RUN or /run/station)")
    sub = parser.add_subparsers(dest="command", required=True)

    cfg = sub.add_parser("config", help="configuration tools")
    cfg_sub = cfg.add_subparsers(dest="action", required=True)
    check = cfg_sub.add_parser("check", help="validate every config file offline")
    check.add_argument("--etc", default=argparse.SUPPRESS, help="config directory to check")
    check.set_defaults(func=cmd_config_check)

    state = sub.add_parser("state", help="print a daemon's snapshot")
    state.add_argument("name")
    state.add_argument("--timeout", type=float, default=3.0)
    state.set_defaults(func=cmd_state)

    call = sub.add_parser("call", help="send one command to a daemon")
    call.add_argument("name")
    call.add_argument("cmd")
    call.add_argument("args", nargs="?", help="JSON object of arguments")
    call.add_argument("--timeout", type=float, default=10.0)
    call.set_defaults(func=cmd_call)

    watch = sub.add_parser("watch", help="print events as JSON lines")
    watch.add_argument("names", nargs="*", help="daemons to watch (default: all in the runtime dir)")
    watch.add_argument("--topic", default="", help="topic prefix, e.g. fingerprint.fp0.")
    watch.add_argument("--heartbeats", action="store_true", help="show heartbeats too")
    watch.add_argument("--count", type=int, default=0, help="stop after N events")
    watch.set_defaults(func=cmd_watch)

    face = sub.add_parser("face", help="face image tools")
    face_sub = face.add_subparsers(dest="action", required=True)
    face_check = face_sub.add_parser("check", help="ICAO portrait checks on image files, one JSON report each")
    face_check.add_argument("images", nargs="+")
    face_check.add_argument("--camera", default="cam0", help="whose thresholds to use (default cam0)")
    face_check.set_defaults(func=cmd_face_check)

    emulate = sub.add_parser("emulate", help="run one device emulator (options: stationctl emulate DEVICE --help)",
                             add_help=False)
    emulate.add_argument("device", choices=["fingerprint", "camera"])
    emulate.set_defaults(func=None)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args, rest = parser.parse_known_args(argv)
    if args.command == "emulate":
        return cmd_emulate(args, rest)
    if rest:
        parser.error(f"unrecognised arguments: {' '.join(rest)}")
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
