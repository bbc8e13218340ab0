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
    out = subprocess.run([str(BIN / "station"), "demo", "--applicants", "2", "--workdir", str(workdir)],
                         capture_output=True, text=True, timeout=280)
    assert out.returncode == 0, out.stdout + out.stderr
    summary = json.loads((workdir / "summary.json").read_text())
    assert summary["committed"] == 2 and summary["lost"] == 0, summary["problems"]
    assert all(code == 0 for code in summary["exit_codes"].values()), summary["exit_codes"]
    store = RecordStore(Path(summary["paths"]["state"]) / "store")
    for result in summary["results"]:
        assert result["record"] and not result["error"]
        assert store.verify(result["record"]) == []
        names = {Path(f).name for f in result["files"]}
        assert "portrait.jpg" in names
        assert {f"finger-{p:02d}.wsq" for p in range(1, 11)} <= names
        assert all(Path(f).exists() for f in result["files"])
        assert set(result["timings_s"]) >= {"start", "portrait", "finish", "total"}
    assert "applicant 2/2" in out.stdout
