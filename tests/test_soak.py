"""The chaos soak (benchmarks/soak.py), shortened to a dozen applicants: every daemon
SIGKILLed once, the scanner unplugged, the camera stalled, the collector down, the disk
low and full, malformed traffic throughout; then nothing reported done may be lost or
duplicated at central, every event must arrive once and in order, every session must end
with an audit line, and no daemon may miss its watchdog.

The soak's pure parts (the fault schedule, the measures, the event check, the malformed
requests) are tested first, so a broken oracle fails here rather than passing a station.
Reproduce a soak with ``STATION_SOAK_SEED=<n>`` (the failure message names the seed and
the kept work directory, whose ``logs/`` hold every daemon's output).
"""
from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path

import orjson
import pytest

SOAK = Path(__file__).resolve().parents[1] / "benchmarks" / "soak.py"
sys.path.insert(0, str(SOAK.parent))

import soak  # noqa: E402

SEED = int(os.environ.get("STATION_SOAK_SEED", "1"))


def test_the_schedule_is_a_pure_function_of_seed_and_day():
    no_draws = {kind: 0.0 for kind in soak.FAULT_KINDS}
    quick = soak.schedule(SEED, 12, no_draws, soak.QUICK_DURATIONS, soak.FAULT_KINDS)
    assert quick == soak.schedule(SEED, 12, no_draws, soak.QUICK_DURATIONS, soak.FAULT_KINDS)
    assert sorted(f.kind for f in quick) == sorted(soak.FAULT_KINDS)  # each exactly once
    assert all(2 <= f.applicant <= 11 and 0 <= f.offset < 1 for f in quick)  # neither warm-up nor the end
    assert len({f.applicant for f in quick}) == len(quick)
    assert quick == sorted(quick, key=lambda f: (f.applicant, f.offset, f.kind))
    low, high = soak.QUICK_DURATIONS["collector_down"]
    assert all(low <= f.duration_s <= high for f in quick if f.kind == "collector_down")
    assert soak.schedule(SEED + 1, 12, no_draws, soak.QUICK_DURATIONS, soak.FAULT_KINDS) != quick

    day = soak.schedule(SEED, 400, soak.DAY_RATES, soak.DAY_DURATIONS, soak.FAULT_KINDS)
    per_kind = {kind: sum(f.kind == kind for f in day) for kind in soak.FAULT_KINDS}
    assert 1 <= per_kind["kill_controller"] <= 15 and 1 <= per_kind["collector_down"] <= 10, per_kind
    without_disk = soak.schedule(SEED, 400, {**soak.DAY_RATES, "disk_low": 0, "disk_full": 0}, soak.DAY_DURATIONS)
    assert not {"disk_low", "disk_full"} & {f.kind for f in without_disk}


def test_a_watchdog_gap_is_measured_within_one_process_lifetime():
    steady = soak.Lifetime("fp0", 10, started=0.0, ready=1.0, pings=[1.05, 6.1, 11.2], ended=14.0)
    assert soak.watchdog_gap_s(steady, now=99) == pytest.approx(5.1)
    hung_then_killed = soak.Lifetime("fp0", 11, started=0.0, ready=1.0, pings=[1.05], ended=9.0)
    assert soak.watchdog_gap_s(hung_then_killed, now=99) == pytest.approx(7.95)
    still_running = soak.Lifetime("fp0", 12, started=0.0, ready=2.0, pings=[2.1, 7.1])
    assert soak.watchdog_gap_s(still_running, now=20.0) == pytest.approx(12.9)
    killed_while_starting = soak.Lifetime("fp0", 13, started=0.0, ended=1.5)
    assert soak.watchdog_gap_s(killed_while_starting, now=99) is None


def test_rss_growth_starts_after_the_warm_up():
    life = soak.Lifetime("controller", 1, started=100.0, rss_kb=[(101, 50_000), (112, 90_000), (150, 91_000),
                                                                  (300, 95_000)])
    assert soak.rss_growth_kb(life, warmup_s=10) == (90_000, 95_000, 5_000)
    assert soak.rss_growth_kb(life, warmup_s=100) is None  # one sample after it: no growth to measure


def test_the_event_check_sees_gaps_duplicates_reordering_and_changed_events():
    journal = {1: ("a", {"n": 1}), 2: ("b", {"n": 2}), 3: ("c", {"n": 3}), 4: ("d", {"n": 4})}
    clean = [{"seq": s, "topic": t, "body": b} for s, (t, b) in journal.items()]
    assert soak.check_events(clean, journal) == {"checked": 4, "station_last_seq": 4, "duplicates": 0,
                                                 "out_of_order": 0, "missing": 0, "unknown": 0, "mismatched": 0}
    bad = [clean[0], clean[2], clean[2], {**clean[1], "body": {"n": 5}}, {"seq": 9, "topic": "x", "body": {}}]
    found = soak.check_events(bad, journal)
    assert (found["duplicates"], found["missing"], found["mismatched"], found["unknown"]) == (1, 1, 1, 1)
    assert found["out_of_order"] == 2  # 3 after 3, 2 after 3


def test_malformed_traffic_never_holds_a_request_that_may_change_anything():
    """The background fuzzer must disturb the station only by being handled badly: every
    command that acts (a capture, a session step, a cancel) carries arguments outside its
    schema or a session id that does not exist."""
    rng = random.Random(SEED)
    kinds = set()
    for index in range(4000):
        for daemon in soak.COMMANDS:
            kind, frames = soak.malformed_request(rng, index, daemon)
            kinds.add(kind)
            assert all(len(f) < soak.MAX_REQUEST_BYTES for f in frames)
            try:
                header = orjson.loads(frames[0])
            except orjson.JSONDecodeError:
                continue
            if not isinstance(header, dict) or header.get("cmd") not in soak.COMMANDS[daemon] \
                    or header["cmd"] in soak.HARMLESS:
                continue
            args = header.get("args")
            assert isinstance(args, dict), (kind, header)
            cmd = header["cmd"]
            if cmd == "capture":
                assert args.get("mode") not in ("icao", "exception") and "mode" in args, (kind, args)
                position = args.get("position")
                assert not (isinstance(position, int) and 0 <= position <= 15), (kind, args)
            elif cmd == "session.start":
                assert not (isinstance(args.get("applicant"), dict) and "id_number" in args["applicant"])
            elif cmd.startswith("session."):
                assert "session" in args, (kind, args)
    assert kinds == set(soak.MALFORMED_KINDS)


@pytest.mark.timeout(400)
def test_a_shortened_chaos_day_loses_nothing_and_every_daemon_keeps_its_watchdog(tmp_path):
    workdir = tmp_path / "soak"
    argv = [sys.executable, str(SOAK), "--quick", "--seed", str(SEED), "--workdir", str(workdir)]
    no_mount = soak.can_mount_privately()
    if no_mount:  # not root: the day goes on without its disk faults
        argv += ["--state-fs", "none"]
    started = time.monotonic()
    done = subprocess.run(argv, capture_output=True, text=True, timeout=330)
    seconds = time.monotonic() - started
    assert done.stdout.strip(), f"the soak printed no report (exit {done.returncode}):\n{done.stderr[-4000:]}"
    report = json.loads(done.stdout)
    context = (f"seed {SEED}, work directory {workdir}; problems: {report['problems'][:10]}\n"
               f"progress:\n{done.stderr[-3000:]}")
    print(f"\nsoak {seconds:.0f} s: {report['records_done']} records, faults {report['faults_injected']}, "
          f"watchdog {report['max_watchdog_gap_s']}, rss growth {report['rss_growth_mb']}, "
          f"retries {report['officer_retries']}")

    assert report["records_done"] + report["given_up"] == report["applicants"] == 12, context
    assert report["records_done"] >= 10, context
    assert report["lost"] == 0, context
    assert report["duplicated"] == 0, context
    assert report["records_unreported"] == 0 and report["records_unexpected_at_central"] == 0, context
    assert report["sessions_lost_unaudited"] == 0, context
    events = report.get("event_check") or {}
    assert events, context  # the reconciliation ran
    assert events["checked"] == events["station_last_seq"] > 0, context
    assert [events[k] for k in ("duplicates", "out_of_order", "missing", "unknown", "mismatched")] == [0] * 5, context
    expected_kinds = [k for k in soak.FAULT_KINDS if not (no_mount and k in soak.DISK_KINDS)]
    assert [k for k in expected_kinds if report["faults_injected"][k] < 1] == [], context
    assert all(report["restarts"][d] >= 1 for d in soak.DAEMONS), context
    gap = report["max_watchdog_gap_s"]
    assert all(gap[d] is not None for d in soak.DAEMONS), context
    assert gap["overall"] < report["watchdog_goal_s"] <= 0.5 * report["watchdog_sec"], context
    assert report["unexpected_exits"] == [], context
    assert report["malformed"]["internal_errors"] == 0 and sum(report["malformed"]["sent"].values()) > 500, context
    assert report["goal_met"] is True, context
    assert done.returncode == 0, context
