"""stationctl: the field engineer's and operator's command line.

  stationctl config check [--etc DIR]          validate every config file offline
  stationctl state NAME                        a daemon's snapshot (status, config, counters)
  stationctl call NAME CMD [JSON]              send one command, print the reply
  stationctl watch [NAME ...] [--topic PREFIX] print events as JSON lines (never payloads)
  stationctl face check IMAGE...               the camera's portrait checks on image files
  stationctl emulate fingerprint|camera|printer ...  run one device emulator; first line: its path
  stationctl provision --station-id ID --central-key FILE   create the station keys, install central's
  stationctl record list                       sealed records in the store (metadata only)
  stationctl record open ID|FILE --key KEY     verify, decrypt with a central private key, summarise
  stationctl record export ID|FILE --key KEY --out FILE.an2   the ANSI/NIST-ITL transaction
  stationctl events [--since N]                the controller's event journal, from sequence N
  stationctl uplink [--follow] [--json]        delivery to central: link, backlog, throughput
  stationctl print status [--json]             the print queue (instant issuance) and the printer
  stationctl print retry JOB | cancel JOB      print a rejected card again / withdraw a job
  stationctl pki init-test DIR [--country VN]  a throwaway test CSCA and Document Signer (keys 0600)
  stationctl chip verify DIR [--csca CERT] [--json]   passive authentication of a chip's files
  stationctl console add-user NAME [--role officer|engineer] [--language vi|en] [--password-stdin]
  stationctl console users | remove-user NAME | unlock NAME    the console's local accounts
"""
from __future__ import annotations

import argparse
import json
import os
import pwd
import signal
import sys
import time
from pathlib import Path
from typing import Sequence

import zmq

from station import config, keyring, record, sealing
from station.bus import CommandClient, Subscriber
from station.errors import StationError
from station.paths import Paths
from station.store import RecordStore


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
        out["payload_bytes"] = {name: len(p) for name, p in zip(reply.names, reply.payloads)}
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


def cmd_provision(args: argparse.Namespace) -> int:
    paths = _paths(args)
    central = None
    if args.central_key:
        try:
            central = Path(args.central_key).read_bytes()
        except OSError as exc:
            print(f"stationctl: cannot read the central public key {args.central_key}: {exc.strerror}",
                  file=sys.stderr)
            return 1
    owner = _service_owner(args.owner)
    try:
        result = keyring.provision(paths.keys, args.station_id, central, owner=owner, rotate=args.rotate)
    except StationError as exc:
        print(f"stationctl provision: {exc.message}", file=sys.stderr)
        return 1
    print(result.report())
    return 0


def _service_owner(user: str | None) -> tuple[int, int] | None:
    """Key files belong to the service user (``station``) when we run as root."""
    if os.geteuid() != 0:
        return None
    try:
        entry = pwd.getpwnam(user or "station")
    except KeyError:
        if user:
            raise SystemExit(f"stationctl provision: no user {user!r} on this machine")
        return None
    return entry.pw_uid, entry.pw_gid


def _reader(args: argparse.Namespace) -> RecordStore:
    return RecordStore.reader(_paths(args).store)


def cmd_record_list(args: argparse.Namespace) -> int:
    try:
        store = _reader(args)
        rows = store.records()
    except StationError as exc:
        print(f"stationctl record list: {exc.message}", file=sys.stderr)
        return 1
    for row in rows:
        print(json.dumps(row.to_dict(), sort_keys=True))
    store.close()
    return 0


def _open_record(args: argparse.Namespace) -> tuple[sealing.SealedHeader, dict, bytes]:
    """(header, manifest, transaction) of a sealed record given by id (in the store) or path."""
    source = Path(args.record)
    if source.is_file():
        blob = source.read_bytes()
    else:
        store = _reader(args)
        try:
            blob = store.sealed(args.record)
        finally:
            store.close()
    central = sealing.CentralPrivateKey.from_pem(Path(args.key).read_bytes())
    station_pem = Path(args.station_key or _paths(args).keys / keyring.STATION_PUB).read_bytes()
    header, plaintext = sealing.open_sealed(blob, central, sealing.StationPublicKeys.from_pem(station_pem))
    manifest, an2 = record.unpack(plaintext)
    return header, manifest, an2


def cmd_record_open(args: argparse.Namespace) -> int:
    try:
        header, manifest, an2 = _open_record(args)
    except (StationError, OSError) as exc:
        print(f"stationctl record open: {getattr(exc, 'message', exc)}", file=sys.stderr)
        return 1
    fingers = manifest["fingers"]
    print(json.dumps({
        "record": header.record_id, "station": header.station_id, "signatures": "Ed25519 + ML-DSA-65 valid",
        "created_ns": header.created_ns, "operator": manifest["operator"], "software": manifest["software"],
        "portrait": manifest["portrait"], "exception_photo": manifest["exception_photo"] is not None,
        "fingers": [{k: f.get(k) for k in ("position", "nfiq2", "force_captured", "exception") if k in f}
                    for f in fingers],
        "an2_bytes": len(an2), "an2_sha256": manifest["an2"]["sha256"],
    }, indent=2, ensure_ascii=False))
    return 0


def cmd_record_export(args: argparse.Namespace) -> int:
    try:
        _header, _manifest, an2 = _open_record(args)
        fd = os.open(args.out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as out:
            out.write(an2)
    except (StationError, OSError) as exc:
        print(f"stationctl record export: {getattr(exc, 'message', exc)}", file=sys.stderr)
        return 1
    print(f"{args.out}: ANSI/NIST-ITL transaction of record {args.record} ({len(an2)} bytes)")
    return 0


def cmd_events(args: argparse.Namespace) -> int:
    """The journal from ``--since``, page by page, as JSON lines; ``--follow`` keeps polling."""
    ctx = zmq.Context()
    client = CommandClient(ctx, _paths(args).cmd("controller"), name="controller")
    since = args.since
    try:
        while True:
            page = client.call("events.since", {"since": since, "limit": 500}, timeout_s=args.timeout).result
            for event in page["events"]:
                print(json.dumps(event, sort_keys=True), flush=True)
                since = event["seq"]
            if not page["events"]:
                if not args.follow:
                    return 0
                time.sleep(0.5)
    except StationError as exc:
        print(f"stationctl events: {exc.message}", file=sys.stderr)
        return 1
    finally:
        client.close()
        ctx.term()


def format_print_jobs(status: dict) -> str:
    """The print queue in an operator's words: one line a job, newest last."""
    lines = [f"printer:  {status['printer'] or 'none configured'} ({'online' if status['online'] else 'offline'}), "
             f"instant issuance {'on' if status['instant_issuance'] else 'off'}"]
    for job in status["jobs"]:
        line = f"{job['job']}  record {job['record'][:12]}…  {job['state']:<9} card {job['attempt']}/{job['max_attempts']}"
        if job["paused"]:
            line += f"  waiting: {job['paused']}"
        if job["spoiled"]:
            line += f"  spoiled: {', '.join(job['spoiled'])}"
        if job["reason"]:
            line += f"  ({job['reason']})"
        lines.append(line)
    if not status["jobs"]:
        lines.append("no print jobs")
    return "\n".join(lines)


def cmd_print(args: argparse.Namespace) -> int:
    """The controller's print queue: status, or an operator's retry or cancel."""
    ctx = zmq.Context()
    client = CommandClient(ctx, _paths(args).cmd("controller"), name="controller")
    operator = os.environ.get("SUDO_USER") or pwd.getpwuid(os.getuid()).pw_name
    try:
        if args.action == "status":
            status = client.call("print.status", timeout_s=args.timeout).result
            print(json.dumps(status, indent=2) if args.json else format_print_jobs(status))
        else:
            call_args = {"job": args.job, "operator": operator}
            if args.action == "cancel" and args.reason:
                call_args["reason"] = args.reason
            job = client.call(f"print.{args.action}", call_args, timeout_s=args.timeout).result
            print(f"print job {job['job']}: {job['state']}")
        return 0
    except StationError as exc:
        print(f"stationctl print {args.action}: {exc.message}", file=sys.stderr)
        return 1
    finally:
        client.close()
        ctx.term()


def _size(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return ""


def format_uplink(status: dict) -> str:
    """The uplink's snapshot in a field engineer's words."""
    backlog = status.get("backlog") or {}
    lines = [f"link:        {status['link']} {status.get('endpoint') or ''}".rstrip()]
    if status.get("last_error"):
        lines.append(f"last error:  {status['last_error']}")
    lines.append(f"backlog:     {backlog.get('records', 0)} record(s), {_size(backlog.get('bytes', 0))}, "
                 f"{backlog.get('events', 0)} event(s)")
    age = status.get("oldest_age_s")
    lines.append(f"oldest:      {'nothing waiting' if age is None else f'{age / 60:.1f} min old'}")
    lines.append(f"unconfirmed: {backlog.get('unconfirmed', 0)} record(s) delivered, awaiting confirmation")
    lines.append(f"throughput:  {_size(status.get('throughput_bps', 0))}/s")
    lines.append(f"delivered:   {status.get('records_delivered', 0)} record(s) this run, "
                 f"{status.get('records_purged', 0)} purged after retention")
    for record_id, refusal in (status.get("refused") or {}).items():
        lines.append(f"REFUSED:     {record_id}: {refusal['message']} ({refusal['code']})")
    return "\n".join(lines)


def progress_line(status: dict, total: int, width: int = 30) -> str:
    backlog = status.get("backlog") or {}
    left = backlog.get("records", 0)
    done = max(total - left, 0)
    filled = int(width * done / total) if total else width
    return (f"[{'#' * filled}{'.' * (width - filled)}] {done}/{total} records, {backlog.get('events', 0)} "
            f"event(s) left, {_size(status.get('throughput_bps', 0))}/s, link {status['link']}")


def cmd_uplink(args: argparse.Namespace) -> int:
    paths = _paths(args)
    ctx = zmq.Context()
    client = CommandClient(ctx, paths.cmd("uplink"), name="uplink")
    total = None
    try:
        while True:
            try:
                status = client.call("state", timeout_s=args.timeout).result["status"]
            except StationError as exc:
                print(f"stationctl uplink: the uplink does not answer ({exc.message}); is station-uplink running?",
                      file=sys.stderr)
                from station.outbox import Outbox
                outbox = Outbox(paths.store, read_only=True)
                try:
                    print(json.dumps({"backlog": outbox.backlog().to_dict()}, sort_keys=True))
                finally:
                    outbox.close()
                return 1
            if not args.follow:
                print(json.dumps(status, sort_keys=True) if args.json else format_uplink(status))
                return 0
            backlog = status.get("backlog") or {}
            total = max(total or 0, backlog.get("records", 0))
            print("\r" + progress_line(status, total), end="", flush=True)
            if backlog and backlog.get("records", 1) == 0 and backlog.get("events", 1) == 0:
                print("\nall records and events delivered")
                return 0
            time.sleep(0.5)
    except KeyboardInterrupt:
        print()
        return 0
    finally:
        client.close()
        ctx.term()


def cmd_pki_init_test(args: argparse.Namespace) -> int:
    from station import pki

    try:
        written = pki.init_test(args.directory, args.country)
    except StationError as exc:
        print(f"stationctl pki init-test: {exc.message}", file=sys.stderr)
        return 1
    print(written.report())
    return 0


def cmd_chip_verify(args: argparse.Namespace) -> int:
    """Exit 0 only when no check failed; the report says whether the chain was checked."""
    from station import chip_verify, pki

    try:
        csca = pki.load_certificate(args.csca) if args.csca else None
        result = chip_verify.verify_directory(args.directory, csca)
    except StationError as exc:
        print(f"stationctl chip verify: {exc.message}", file=sys.stderr)
        return 1
    print(json.dumps(result.to_dict(), indent=2, ensure_ascii=False) if args.json else result.report())
    return 0 if result.valid else 1


def cmd_console(args: argparse.Namespace) -> int:
    """The console's local accounts (the console reads the file at every sign-in)."""
    import getpass
    from station.console.accounts import Accounts
    from station.console.daemon import accounts_path
    accounts = Accounts(accounts_path(_paths(args)))
    if args.action == "users":
        for account in accounts:
            locked = " (locked)" if account.locked_until > time.time() else ""
            print(f"{account.name}\t{account.role}\t{account.language}\t{account.display_name}{locked}")
        return 0
    if args.action == "remove-user":
        accounts.remove(args.name)
    elif args.action == "unlock":
        accounts.unlock(args.name)
    else:
        if args.password_stdin:
            password = sys.stdin.readline().rstrip("\n")
        else:
            password = getpass.getpass(f"password for {args.name}: ")
            if getpass.getpass("again: ") != password:
                print("stationctl: the passwords differ", file=sys.stderr)
                return 1
        accounts.add(args.name, password, role=args.role, language=args.language,
                     display_name=args.display_name, replace_existing=args.replace)
    print(f"{args.action} {args.name}: done")
    return 0


def cmd_emulate(args: argparse.Namespace, rest: list[str]) -> int:
    if args.device == "fingerprint":
        from drivers.fingerprint import emulator
    elif args.device == "printer":
        from drivers.printer import emulator
    else:
        from drivers.camera import emulator
    return emulator.main(rest)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="stationctl", description="Station field-engineer and operator tool")
    parser.add_argument("--etc", help="config directory (default $STATION_ETC or /etc/station)")
    parser.add_argument("--run", help="socket directory (default $STATION_RUN or /run/station)")
    parser.add_argument("--state", help="state directory (default $STATION_STATE or /var/lib/station)")
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

    prov = sub.add_parser("provision", help="create this station's keys and install the central public key")
    prov.add_argument("--station-id", required=True, help="this station's id, e.g. VN-HP-0001")
    prov.add_argument("--central-key", help="central's public key bundle (PEM), to seal records to")
    prov.add_argument("--state", default=argparse.SUPPRESS, help="state directory")
    prov.add_argument("--owner", help="user owning the key files when run as root (default: station)")
    prov.add_argument("--rotate", action="store_true", help="replace existing station keys (new identity)")
    prov.set_defaults(func=cmd_provision)

    rec = sub.add_parser("record", help="sealed records in the store")
    rec_sub = rec.add_subparsers(dest="action", required=True)
    rec_list = rec_sub.add_parser("list", help="records in the store, metadata only (JSON lines)")
    rec_list.set_defaults(func=cmd_record_list)
    for action, func, text in (("open", cmd_record_open, "verify, decrypt and summarise one record"),
                               ("export", cmd_record_export, "write a record's ANSI/NIST-ITL transaction")):
        one = rec_sub.add_parser(action, help=text)
        one.add_argument("record", help="record id in the store, or the path of a sealed record file")
        one.add_argument("--key", required=True, help="central private key bundle (PEM)")
        one.add_argument("--station-key", help="the sealing station's public key bundle (default: this station's)")
        if action == "export":
            one.add_argument("--out", required=True, help="where to write the .an2 file")
        one.set_defaults(func=func)
    for parser_ in rec_sub.choices.values():
        parser_.add_argument("--state", default=argparse.SUPPRESS, help="state directory")

    events = sub.add_parser("events", help="the controller's event journal as JSON lines")
    events.add_argument("--since", type=int, default=0, help="print events after this sequence number")
    events.add_argument("--follow", action="store_true", help="keep printing new events")
    events.add_argument("--timeout", type=float, default=5.0)
    events.set_defaults(func=cmd_events)

    uplink = sub.add_parser("uplink", help="delivery to central: link state, backlog, throughput")
    uplink.add_argument("--follow", action="store_true", help="a live progress bar until the backlog is drained")
    uplink.add_argument("--json", action="store_true", help="the uplink's snapshot as JSON")
    uplink.add_argument("--timeout", type=float, default=3.0)
    uplink.set_defaults(func=cmd_uplink)

    printing = sub.add_parser("print", help="the print queue of instant issuance")
    print_sub = printing.add_subparsers(dest="action", required=True)
    print_status = print_sub.add_parser("status", help="print jobs and the printer")
    print_status.add_argument("--json", action="store_true", help="the queue as JSON")
    for action, text in (("retry", "print a rejected job's card again (after fixing the printer)"),
                         ("cancel", "withdraw a job; a card inside the printer is rejected")):
        one = print_sub.add_parser(action, help=text)
        one.add_argument("job", help="the job id (stationctl print status)")
        if action == "cancel":
            one.add_argument("--reason", default="", help="why, for the audit log")
    for parser_ in print_sub.choices.values():
        parser_.add_argument("--timeout", type=float, default=5.0)
        parser_.set_defaults(func=cmd_print)

    pki_parser = sub.add_parser("pki", help="the chip's signing PKI")
    pki_sub = pki_parser.add_subparsers(dest="action", required=True)
    init_test = pki_sub.add_parser("init-test", help="create a test CSCA and Document Signer (never for real cards)")
    init_test.add_argument("directory", help="where to write csca/ds keys (0600) and certificates")
    init_test.add_argument("--country", default="VN", help="two-letter country code of the test PKI (default VN)")
    init_test.set_defaults(func=cmd_pki_init_test)

    chip = sub.add_parser("chip", help="chip data tools")
    chip_sub = chip.add_subparsers(dest="action", required=True)
    verify = chip_sub.add_parser("verify", help="passive authentication of chip files (EF.COM, DG1..., EF.SOD)")
    verify.add_argument("directory", help="directory of files named EF.COM, DG1, DG2, ..., EF.SOD")
    verify.add_argument("--csca", help="the country's CSCA certificate (PEM or DER) to check the Document Signer")
    verify.add_argument("--json", action="store_true", help="every check as JSON")
    verify.set_defaults(func=cmd_chip_verify)

    emulate = sub.add_parser("emulate", help="run one device emulator (options: stationctl emulate DEVICE --help)",
                             add_help=False)
    emulate.add_argument("device", choices=["fingerprint", "camera", "printer"])
    emulate.set_defaults(func=None)

    console = sub.add_parser("console", help="the console's local operator accounts")
    console_sub = console.add_subparsers(dest="action", required=True)
    add = console_sub.add_parser("add-user", help="add (or with --replace change) an operator account")
    add.add_argument("name")
    add.add_argument("--role", choices=["officer", "engineer"], default="officer")
    add.add_argument("--language", choices=["vi", "en"], default="vi")
    add.add_argument("--display-name", default="")
    add.add_argument("--password-stdin", action="store_true", help="read the password from the first line of stdin")
    add.add_argument("--replace", action="store_true")
    console_sub.add_parser("users", help="list the accounts (never their hashes)")
    for action, text in (("remove-user", "remove an account"), ("unlock", "unlock an account locked by failed sign-ins")):
        one = console_sub.add_parser(action, help=text)
        one.add_argument("name")
    console.set_defaults(func=cmd_console)
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
