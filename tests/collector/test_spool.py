"""The collector's spool of record pieces: appended only in order, bounded per station,
swept of what nobody finishes."""
import os
import time

import pytest

from station.collector.spool import Spool, SpoolFull

SHA = "ab" * 32


def test_pieces_append_in_order_only(tmp_path):
    spool = Spool(tmp_path)
    assert spool.append("S1", "R1", SHA, 0, b"abc") == 3
    assert spool.append("S1", "R1", SHA, 5, b"zzz") == 3            # not where the file ends: told where
    assert spool.append("S1", "R1", SHA, 3, b"def") == 6
    assert spool.read("S1", "R1", SHA) == b"abcdef" and spool.held("S1", "R1", SHA) == 6
    spool.discard("S1", "R1", SHA)
    assert spool.held("S1", "R1", SHA) == 0


def test_a_station_share_is_bounded_and_others_are_not_affected(tmp_path):
    spool = Spool(tmp_path, max_station_bytes=10)
    spool.append("S1", "R1", SHA, 0, b"x" * 6)
    spool.append("S1", "R2", SHA, 0, b"y" * 4)
    assert spool.station_bytes("S1") == 10
    with pytest.raises(SpoolFull) as refused:
        spool.append("S1", "R1", SHA, 6, b"x")
    assert refused.value.code == "spool_full" and refused.value.retryable and "S1" in refused.value.message
    assert spool.held("S1", "R1", SHA) == 6                          # nothing half-written
    assert spool.append("S2", "R1", SHA, 0, b"z" * 10) == 10        # another station's share
    spool.discard("S1", "R2", SHA)
    assert spool.append("S1", "R1", SHA, 6, b"x" * 4) == 10         # room again once a record is done


def test_sweep_removes_only_what_nobody_added_to(tmp_path):
    spool = Spool(tmp_path)
    spool.append("S1", "old", SHA, 0, b"o" * 7)
    spool.append("S1", "new", SHA, 0, b"n" * 5)
    spool.append("S2", "old", SHA, 0, b"p" * 3)
    long_ago = time.time() - 100 * 3600
    for station in ("S1", "S2"):
        path = next((tmp_path / station).glob("old.*"))
        os.utime(path, (long_ago, long_ago))
    assert spool.sweep(72 * 3600) == (2, 10)
    assert spool.held("S1", "old", SHA) == 0 and spool.held("S2", "old", SHA) == 0
    assert spool.held("S1", "new", SHA) == 5
    assert spool.sweep(72 * 3600) == (0, 0)
