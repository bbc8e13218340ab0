"""station-collector: central's gateway and the operator's tools beside it.

  station-collector init     [--data-dir DIR]             create the gateway's CURVE key, print it
  station-collector allow    BUNDLE.pem [--data-dir DIR]  register a station (its provision bundle)
  station-collector serve    [--etc --state --run --set]  run the gateway
  station-collector watch    [--station ID] [--since N] [--follow]   the merged event stream, JSON lines
  station-collector export   ID --key CENTRAL_KEY --out FILE.an2     a record's ANSI/NIST-ITL transaction
  station-collector stations                              per station: last seen, backlog, last sequence

The tools read the same config as ``serve`` (``--etc``, ``--state``, ``--set``) and open its
storage read-only beside a running gateway.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import zmq

from station import config, record, sealing
from station.collector import gateway
from station.collector.allowlist import SUFFIX, Allowlist
from station.collector.storage import Storage
from station.errors import StationError
from station.paths import Paths


def _config(args: argparse.Namespace) -> tuple[dict, Path]:
    paths = Paths.resolve(args.etc, args.state, None)
    cfg = config.load("collector", None, paths.etc, args.set)
    directory = Path(args.data_dir) if getattr(args, "data_dir", None) else gateway.data_dir(cfg, paths)
    return cfg, directory


def cmd_init(args: argparse.Namespace) -> int:
    _cfg, directory = _config(args)
    path = directory / gateway.KEY_FILE
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    (directory / _cfg["stations_dir"]).mkdir(parents=True, exist_ok=True, mode=0o700)
    if not path.exists():
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as out:
            out.write(zmq.curve_keypair()[1] + b"\n")
    public, _ = gateway.load_key(directory)
    print(f"collector key: {path}")
    print(f"stations' uplink config: collector.server_key: \"{public.decode()}\"")
    return 0


def cmd_allow(args: argparse.Namespace) -> int:
    cfg, directory = _config(args)
    keys = sealing.StationPublicKeys.from_pem(Path(args.bundle).read_bytes())
    if not keys.curve_key:
        raise StationError(f"{args.bundle} has no 'Curve-Key:' line: export it again with stationctl provision",
                           code="bad_key")
    target_dir = directory / cfg["stations_dir"]
    target_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    target = target_dir / f"{keys.station_id}{SUFFIX}"
    target.write_text(keys.to_pem())
    Allowlist.load(target_dir, cfg["revoked"])  # the whole directory still loads
    print(f"station {keys.station_id} allowed ({target}); a running collector applies it on SIGHUP "
          f"(systemctl reload station-collector)")
    return 0


@contextmanager
def _storage(args: argparse.Namespace) -> Iterator[tuple[dict, Path, Storage]]:
    """The running gateway's storage, opened beside it for reading."""
    cfg, directory = _config(args)
    storage = gateway.open_storage(cfg, directory, read_only=True)
    try:
        yield cfg, directory, storage
    finally:
        storage.close()


def cmd_watch(args: argparse.Namespace) -> int:
    with _storage(args) as (_cfg, _directory, storage):
        try:
            for event in storage.events(args.station, args.since, follow=args.follow, timeout_s=args.timeout):
                print(json.dumps(event.to_dict(), sort_keys=True, ensure_ascii=False), flush=True)
        except KeyboardInterrupt:
            pass
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    with _storage(args) as (cfg, directory, storage):
        found = storage.find_record(args.record)
        if found is None:
            raise StationError(f"record {args.record} is not at this collector", code="not_found")
        blob = storage.get_record(args.record)
    station = Allowlist.load(directory / cfg["stations_dir"], []).keys(found.station_id)
    central = sealing.CentralPrivateKey.from_pem(Path(args.key).read_bytes())
    header, plaintext = sealing.open_sealed(blob, central, station)
    _manifest, an2 = record.unpack(plaintext)
    fd = os.open(args.out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(an2)
    print(f"{args.out}: ANSI/NIST-ITL transaction of record {header.record_id} from station {header.station_id} "
          f"({len(an2)} bytes; signatures valid)")
    return 0


def cmd_stations(args: argparse.Namespace) -> int:
    with _storage(args) as (_cfg, _directory, storage):
        for info in storage.stations():
            row = info.to_dict()
            row["last_seen_age_s"] = round((time.time_ns() - info.last_seen_ns) / 1e9, 1) if info.last_seen_ns else None
            print(json.dumps(row, sort_keys=True))
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="station-collector", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("serve", help="run the gateway (flags: station-collector serve --help)", add_help=False)
    specs = {
        "init": ("create the gateway's CURVE key and print its public half", cmd_init),
        "allow": ("register a station from its public key bundle", cmd_allow),
        "watch": ("the merged event stream as JSON lines", cmd_watch),
        "export": ("write a record's ANSI/NIST-ITL transaction", cmd_export),
        "stations": ("per station: last seen, reported backlog, last sequence", cmd_stations),
    }
    for name, (text, func) in specs.items():
        command = sub.add_parser(name, help=text)
        command.set_defaults(func=func)
        command.add_argument("--etc", help="config directory (default $STATION_ETC or /etc/station)")
        command.add_argument("--state", help="state directory (default $STATION_STATE or /var/lib/station)")
        command.add_argument("--data-dir", help="the collector's data directory (default from config)")
        command.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                             help="override one config key (repeatable)")
    sub.choices["allow"].add_argument("bundle", help="the station's public key bundle (station.pub.pem)")
    watch = sub.choices["watch"]
    watch.add_argument("--station", help="one station's events only")
    watch.add_argument("--since", type=int, default=0, help="events after this station sequence")
    watch.add_argument("--follow", action="store_true", help="keep printing new events")
    watch.add_argument("--timeout", type=float, default=None, help="with --follow: stop after this quiet time")
    export = sub.choices["export"]
    export.add_argument("record", help="record id")
    export.add_argument("--key", required=True, help="central's private key (PEM)")
    export.add_argument("--out", required=True, help="output file (.an2)")
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["serve"]:
        return gateway.serve(argv[1:])
    args = _parser().parse_args(argv)
    try:
        return args.func(args)
    except StationError as exc:
        print(f"station-collector {args.command}: {exc.message}", file=sys.stderr)
        return exc.exit_status
    except OSError as exc:
        print(f"station-collector {args.command}: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
