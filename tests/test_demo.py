"""The whole station end to end, as `make demo` runs it: separate processes, emulated
devices, a real pseudo-terminal between the fingerprint daemon and its sensor."""
import json
import subprocess
import sysconfig
from pathlib import Path

import pytest

from station.store import RecordStore

BIN = Path(sysconfig.get_path("scripts"))


@pytest.mark.timeout(300)
def test_demo_enrolls_every_applicant_and_loses_nothing(tmp_path):
    workdir = tmp_path / "booth"
    out = subprocess.run([str(BIN / "station"), "demo", "--applicants", "3", "--workdir", str(workdir)],
                         capture_output=True, text=True, timeout=280)
    assert out.returncode == 0, out.stdout + out.stderr
    summary = json.loads((workdir / "summary.json").read_text())
    assert summary["committed"] == 3 and summary["lost"] == 0, summary["problems"]
    assert all(code == 0 for code in summary["exit_codes"].values()), summary["exit_codes"]
    store = RecordStore(Path(summary["paths"]["state"]) / "store")
    for result in summary["results"]:
        assert result["record"] and not result["error"]
        assert store.verify(result["record"]) == []
        names = {Path(f).name for f in result["files"]}
        assert {"portrait.jpg", "portrait-chip.jp2"} <= names
        assert all(Path(f).exists() for f in result["files"])
        assert set(result["timings_s"]) >= {"start", "portrait", "finish", "total"}
    first, second, third = summary["results"]
    assert {f"finger-{p:02d}.wsq" for p in range(1, 11)} <= {Path(f).name for f in first["files"]}
    # applicant 2 put the thumb down for the index: refused as the same finger
    assert any("position 2 refused: same finger as right thumb" in e for e in second["events"])
    # applicant 3: left little amputated (declared), left index worn (force-captured)
    manifest = store.get(third["record"]).manifest
    assert manifest["exceptions"] == {"10": "XX"} and "finger-10.wsq" not in {Path(f).name for f in third["files"]}
    assert manifest["fingers"]["7"]["force_captured"] is True and manifest["fingers"]["7"]["attempts"] == 3
    assert all(f["nfiq2"] >= 40 for p, f in manifest["fingers"].items() if p != "7")
    assert "applicant 3/3" in out.stdout
