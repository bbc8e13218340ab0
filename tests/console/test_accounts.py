"""The console's accounts: Argon2id hashes at rest (0600), lock-out after failed sign-ins,
the same answer for an unknown name as for a wrong password, stationctl's administration."""
from __future__ import annotations

import json
import os
import stat
import subprocess

import pytest

from station.console.accounts import AccountError, Accounts, Lockout, SignInRefused
from station_harness import BIN

POLICY = Lockout(max_failures=3, lockout_s=60)


@pytest.fixture
def accounts(tmp_path):
    accounts = Accounts(tmp_path / "console" / "accounts.json")
    accounts.add("canbo1", "mat-khau-dung", display_name="Cán bộ Một")
    return accounts


def test_the_password_is_stored_only_as_an_argon2id_hash_in_a_private_file(accounts):
    raw = accounts.path.read_text("utf-8")
    assert "mat-khau-dung" not in raw
    stored = json.loads(raw)["accounts"]["canbo1"]
    assert stored["password_hash"].startswith("$argon2id$")
    assert stat.S_IMODE(accounts.path.stat().st_mode) == 0o600
    assert stat.S_IMODE(accounts.path.parent.stat().st_mode) == 0o700
    assert stored["display_name"] == "Cán bộ Một"


def test_sign_in_returns_the_account_without_its_hash(accounts):
    account = accounts.sign_in("canbo1", "mat-khau-dung", POLICY, now=1000.0)
    assert account.view() == {"user": "canbo1", "role": "officer", "language": "vi", "display_name": "Cán bộ Một"}


def test_an_unknown_name_and_a_wrong_password_get_the_same_answer(accounts):
    with pytest.raises(SignInRefused) as unknown:
        accounts.sign_in("nobody", "mat-khau-dung", POLICY, now=1000.0)
    with pytest.raises(SignInRefused) as wrong:
        accounts.sign_in("canbo1", "sai", POLICY, now=1000.0)
    assert (unknown.value.code, unknown.value.message) == (wrong.value.code, wrong.value.message) == \
        ("bad_credentials", "wrong user name or password")


def test_failures_lock_the_account_for_the_lockout_time_even_with_the_right_password(accounts):
    for _ in range(2):
        with pytest.raises(SignInRefused, match="wrong"):
            accounts.sign_in("canbo1", "sai", POLICY, now=1000.0)
    with pytest.raises(SignInRefused) as third:
        accounts.sign_in("canbo1", "sai", POLICY, now=1000.0)
    assert third.value.code == "locked" and third.value.retry_after_s == 60
    with pytest.raises(SignInRefused) as right_but_locked:
        accounts.sign_in("canbo1", "mat-khau-dung", POLICY, now=1030.0)
    assert right_but_locked.value.code == "locked" and right_but_locked.value.retry_after_s == pytest.approx(30)
    # The lock is on disk: a restarted console keeps it; after the lock-out time it is over.
    assert Accounts(accounts.path).load()["canbo1"].locked_until == 1060.0
    assert accounts.sign_in("canbo1", "mat-khau-dung", POLICY, now=1061.0).name == "canbo1"


def test_a_success_resets_the_failure_count(accounts):
    for _ in range(2):
        with pytest.raises(SignInRefused):
            accounts.sign_in("canbo1", "sai", POLICY, now=1000.0)
    accounts.sign_in("canbo1", "mat-khau-dung", POLICY, now=1000.0)
    for _ in range(2):
        with pytest.raises(SignInRefused, match="wrong"):
            accounts.sign_in("canbo1", "sai", POLICY, now=1000.0)


def test_the_engineer_unlocks_an_account(accounts):
    for _ in range(3):
        with pytest.raises(SignInRefused):
            accounts.sign_in("canbo1", "sai", POLICY, now=1000.0)
    accounts.unlock("canbo1")
    assert accounts.sign_in("canbo1", "mat-khau-dung", POLICY, now=1001.0).name == "canbo1"


@pytest.mark.parametrize("name, password, role, language, why", [
    ("Canbo", "mat-khau-dung", "officer", "vi", "user name"),
    ("canbo2", "short", "officer", "vi", "at least 8"),
    ("canbo2", "mat-khau-dung", "admin", "vi", "role 'admin'"),
    ("canbo2", "mat-khau-dung", "officer", "fr", "language 'fr'"),
    ("canbo1", "mat-khau-dung", "officer", "vi", "exists already"),
])
def test_bad_accounts_are_refused_with_the_reason(accounts, name, password, role, language, why):
    with pytest.raises(AccountError, match=why):
        accounts.add(name, password, role=role, language=language)


def test_stationctl_manages_the_accounts(tmp_path, monkeypatch):
    env = {"STATION_STATE": str(tmp_path), "PATH": "/usr/bin:/bin"}
    add = subprocess.run([str(BIN / "stationctl"), "console", "add-user", "kythuat", "--role", "engineer",
                          "--language", "en", "--password-stdin"], input="mat-khau-ky-thuat\n", env=env,
                         capture_output=True, text=True, timeout=60)
    assert add.returncode == 0, add.stderr
    listed = subprocess.run([str(BIN / "stationctl"), "console", "users"], env=env, capture_output=True, text=True,
                            timeout=60)
    assert listed.stdout.split("\t")[:3] == ["kythuat", "engineer", "en"]
    assert "argon2" not in listed.stdout
    accounts = Accounts(tmp_path / "console" / "accounts.json")
    assert accounts.sign_in("kythuat", "mat-khau-ky-thuat", POLICY, now=0.0).role == "engineer"


@pytest.mark.skipif(os.geteuid() != 0, reason="only root can give a file away")
def test_accounts_written_by_root_stay_readable_by_the_console_user(tmp_path):
    """``stationctl console add-user`` run as root must not leave a file the console cannot read."""
    directory = tmp_path / "console"
    directory.mkdir(mode=0o700)
    os.chown(directory, 65534, 65534)  # the console's user
    Accounts(directory / "accounts.json").add("canbo1", "mat-khau-dung")
    written = (directory / "accounts.json").stat()
    assert (written.st_uid, written.st_gid, stat.S_IMODE(written.st_mode)) == (65534, 65534, 0o600)
