"""The console's local operator accounts: Argon2id password hashes, roles, language, lock-out.

Officers sign in at a shared kiosk, so an account locks after ``max_failures`` failed
sign-ins in a row for ``lockout_s`` (the field engineer can unlock it earlier with
``stationctl console unlock``). A name that is not an account costs the same hash check as a
wrong password and gets the same answer, so the page does not tell which names exist.

The accounts live in one JSON file in the state directory (0600, written by atomic
replace): the password hashes (argon2-cffi's PHC strings, never the password), the role
(``officer`` enrolls; ``engineer`` also sees the field-engineer page), the language the
page speaks to that operator (``vi`` first) and the lock-out counters, so a restart of the
console does not reset a lock.
"""
from __future__ import annotations

import json
import os
import re
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Iterator

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from station.errors import StationError

ROLES = ("officer", "engineer")
LANGUAGES = ("vi", "en")
NAME = re.compile(r"^[a-z][a-z0-9._-]{1,31}$")
MIN_PASSWORD = 8
_HASHER = PasswordHasher()  # Argon2id with the library's RFC 9106 "low memory" profile
_DUMMY_HASH = _HASHER.hash("not an account: same cost as a wrong password")


class SignInRefused(StationError):
    """``bad_credentials`` (wrong name or password) or ``locked`` (``retry_after_s`` says for how long)."""

    code = "bad_credentials"

    def __init__(self, message: str, *, code: str = "bad_credentials", retry_after_s: float = 0.0):
        super().__init__(message, code=code)
        self.retry_after_s = retry_after_s


class AccountError(StationError):
    code = "bad_request"


@dataclass(frozen=True)
class Account:
    name: str
    role: str
    language: str
    display_name: str
    password_hash: str
    failures: int = 0
    locked_until: float = 0.0  # wall-clock seconds

    def view(self) -> dict[str, str]:
        """What the page may know of an account: never the hash or counters."""
        return {"user": self.name, "role": self.role, "language": self.language, "display_name": self.display_name}


@dataclass(frozen=True)
class Lockout:
    """The lock-out policy, pure: what a failure or a success does to an account at ``now``."""

    max_failures: int
    lockout_s: float

    def locked_for(self, account: Account, now: float) -> float:
        return max(0.0, account.locked_until - now)

    def failed(self, account: Account, now: float) -> Account:
        failures = account.failures + 1
        if failures >= self.max_failures:
            return replace(account, failures=0, locked_until=now + self.lockout_s)
        return replace(account, failures=failures)

    def succeeded(self, account: Account) -> Account:
        return replace(account, failures=0, locked_until=0.0)


class Accounts:
    """The accounts file. One console process writes it; ``stationctl`` edits it offline too,
    each write an atomic replace of the whole (small) file."""

    def __init__(self, path: Path):
        self.path = path

    def load(self) -> dict[str, Account]:
        try:
            raw = json.loads(self.path.read_text("utf-8"))
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            raise StationError(f"{self.path}: cannot read the console accounts ({exc}); restore it or add "
                               "accounts again with 'stationctl console add-user'", code="config_invalid") from None
        return {name: Account(name=name, **fields) for name, fields in raw.get("accounts", {}).items()}

    def save(self, accounts: dict[str, Account]) -> None:
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        body = {"accounts": {a.name: {k: v for k, v in asdict(a).items() if k != "name"}
                             for a in sorted(accounts.values(), key=lambda a: a.name)}}
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        owner = os.stat(self.path.parent)
        if os.geteuid() == 0 and owner.st_uid != 0:  # stationctl as root: the file stays the console's
            os.fchown(fd, owner.st_uid, owner.st_gid)
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            json.dump(body, out, ensure_ascii=False, indent=1)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, self.path)

    def __iter__(self) -> Iterator[Account]:
        return iter(self.load().values())

    # -- administration (stationctl) ---------------------------------------------------------
    def add(self, name: str, password: str, *, role: str = "officer", language: str = "vi",
            display_name: str = "", replace_existing: bool = False) -> Account:
        problems = []
        if not NAME.match(name):
            problems.append(f"user name {name!r}: 2 to 32 of a-z 0-9 . _ - starting with a letter")
        if role not in ROLES:
            problems.append(f"role {role!r}: allowed {', '.join(ROLES)}")
        if language not in LANGUAGES:
            problems.append(f"language {language!r}: allowed {', '.join(LANGUAGES)}")
        if len(password) < MIN_PASSWORD:
            problems.append(f"password: at least {MIN_PASSWORD} characters")
        accounts = self.load()
        if name in accounts and not replace_existing:
            problems.append(f"user {name!r} exists already (use --replace to change it)")
        if problems:
            raise AccountError("; ".join(problems))
        account = Account(name, role, language, display_name or name, _HASHER.hash(password))
        accounts[name] = account
        self.save(accounts)
        return account

    def remove(self, name: str) -> None:
        accounts = self.load()
        if accounts.pop(name, None) is None:
            raise AccountError(f"no user {name!r}", code="not_found")
        self.save(accounts)

    def unlock(self, name: str) -> None:
        accounts = self.load()
        if name not in accounts:
            raise AccountError(f"no user {name!r}", code="not_found")
        accounts[name] = replace(accounts[name], failures=0, locked_until=0.0)
        self.save(accounts)

    # -- sign-in (the console; blocking: argon2 costs tens of milliseconds) -----------------
    def sign_in(self, name: str, password: str, policy: Lockout, now: float) -> Account:
        accounts = self.load()
        account = accounts.get(name)
        if account is None:
            _verify(_DUMMY_HASH, password)
            raise SignInRefused("wrong user name or password")
        wait = policy.locked_for(account, now)
        if wait > 0:
            raise SignInRefused(f"account {name} is locked after too many failed sign-ins; try again in "
                                f"{wait:.0f} s or ask the field engineer to unlock it", code="locked",
                                retry_after_s=wait)
        if not _verify(account.password_hash, password):
            account = policy.failed(account, now)
            accounts[name] = account
            self.save(accounts)
            if account.locked_until > now:
                raise SignInRefused(f"account {name} is now locked for {policy.lockout_s:.0f} s after "
                                    f"{policy.max_failures} failed sign-ins", code="locked",
                                    retry_after_s=policy.lockout_s)
            raise SignInRefused("wrong user name or password")
        if account.failures or account.locked_until:
            accounts[name] = account = policy.succeeded(account)
            self.save(accounts)
        return account


def _verify(password_hash: str, password: str) -> bool:
    try:
        return _HASHER.verify(password_hash, password)
    except (VerificationError, InvalidHashError):
        return False
