"""A private pcscd with vsmartcard's virtual readers: the emulated chip encoder's PC/SC stack.

A card printer's contactless encoder is a PC/SC reader. Emulated, it is pcscd's ``vpcd``
driver ("Virtual PCD 00 00"), into which ``drivers/chip/emulator.py`` inserts a chip: the
station then talks to the chip through a real pcscd and pyscard, as to hardware. Where no
systemd socket-activates pcscd (tests, the demo), ``Pcscd`` starts one.

pcscd's socket path, /run/pcscd/pcscd.comm, is fixed at build time, and vpcd's ports are
fixed by its reader.conf; several sessions on one machine (developers, CI, a demo next to
a test run) would share one daemon and one card slot, and each could stop it under the
others. So by default the daemon is private: it runs in its own mount namespace where
/run/pcscd is a directory of this process, loads a reader.conf with a free pair of vpcd
ports, and this process (and every child it starts afterwards: scriptor, the station's
daemons) reaches it through ``PCSCLITE_CSOCK_NAME``, which libpcsclite reads once, at a
process's first PC/SC call. ``private=False`` uses the system socket instead: a pcscd
already running is reused and left running, otherwise one is started and stopped at the
end. Missing packages raise ``PcscdError`` naming what to install. pcscd runs without
``--apdu``: its trace would hold every personalisation write (names, MRZ, portrait) in hex.
"""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from station.errors import StationError

PCSCD = "pcscd"
VPCD_DRIVER = Path("/usr/lib/pcsc/drivers/serial/libifdvpcd.so")
VPCD_CONFIG = Path("/etc/reader.conf.d/vpcd")
SYSTEM_IPC_DIR = Path("/run/pcscd")
SOCKET_NAME = "pcscd.comm"
PID_NAME = "pcscd.pid"
SOCKET_ENV = "PCSCLITE_CSOCK_NAME"
READER_PREFIX = "Virtual PCD"
SYSTEM_VPCD_PORT = 0x8C7B   # slot n of /etc/reader.conf.d/vpcd listens on this + n
VPCD_SLOTS = 2              # vpcd opens two readers per reader.conf line
START_TIMEOUT_S = 10.0      # pcscd up and the vpcd readers listed (about 0.2 s here)
STOP_TIMEOUT_S = 5.0        # SIGTERM to exit, then SIGKILL
CARD_TIMEOUT_S = 5.0        # a card seen (or gone) by pcscd: it polls vpcd every 0.4 s
POLL_S = 0.05
LOG_TAIL_LINES = 30


class PcscdError(StationError):
    """pcscd or its virtual reader is missing or did not come up; the message says why."""

    code = "device_error"


def _fail(message: str) -> None:
    raise PcscdError(message)


def check_installed() -> str:
    """The pcscd binary; fails naming the Debian package that is missing."""
    binary = shutil.which(PCSCD) or shutil.which(PCSCD, path="/usr/sbin:/sbin")
    if binary is None:
        _fail("pcscd is not installed: apt-get install pcscd vsmartcard-vpcd")
    if not VPCD_DRIVER.exists():
        _fail(f"vsmartcard's vpcd driver is not installed ({VPCD_DRIVER}): apt-get install vsmartcard-vpcd")
    if os.geteuid() != 0:
        _fail(f"pcscd must run as root here (running as uid {os.geteuid()})")
    return binary


def list_readers() -> list[str]:
    """Reader names as pyscard lists them; [] while pcscd does not answer."""
    from smartcard.Exceptions import SmartcardException
    from smartcard.pcsc.PCSCExceptions import BaseSCardException
    from smartcard.System import readers

    try:
        return [str(reader) for reader in readers()]
    except (SmartcardException, BaseSCardException):  # no service yet, or no readers
        return []


def port_free(port: int) -> bool:
    with socket.socket() as probe:
        try:
            probe.bind(("0.0.0.0", port))
        except OSError:
            return False
    return True


def free_port_pair() -> int:
    """A free TCP port p with p + 1 free too, for vpcd's two slots."""
    for _ in range(20):
        with socket.socket() as first:
            first.bind(("0.0.0.0", 0))
            port = first.getsockname()[1]
        if port_free(port) and port_free(port + 1):
            return port
    raise RuntimeError("no two consecutive free TCP ports for vpcd")


def private_ipc_dir() -> Path:
    """Where this process's private pcscd puts its socket: known before it starts."""
    return Path(tempfile.gettempdir()) / f"pcscd-{os.getpid()}"


_UNSET = object()
_saved_socket_env: Any = _UNSET


def point_clients_at(socket_path: Path) -> None:
    """Make this process's PC/SC clients (and its later children) use ``socket_path``."""
    global _saved_socket_env
    if _saved_socket_env is _UNSET:
        _saved_socket_env = os.environ.get(SOCKET_ENV)
    os.environ[SOCKET_ENV] = str(socket_path)


def restore_clients() -> None:
    global _saved_socket_env
    if _saved_socket_env is _UNSET:
        return
    if _saved_socket_env is None:
        os.environ.pop(SOCKET_ENV, None)
    else:
        os.environ[SOCKET_ENV] = _saved_socket_env
    _saved_socket_env = _UNSET


class Pcscd:
    """One pcscd for a test session or a demo: ``start()``, ``stop()``, its vpcd readers and ports."""

    def __init__(self, workdir: Path, *, private: bool = True):
        self.workdir = workdir
        self.private = private
        self.log_path = workdir / "pcscd.log"
        self.ipc_dir = private_ipc_dir() if private else SYSTEM_IPC_DIR
        self.vpcd_port = SYSTEM_VPCD_PORT
        self.process: subprocess.Popen[bytes] | None = None
        self.reused = False

    @property
    def socket_path(self) -> Path:
        return self.ipc_dir / SOCKET_NAME

    def start(self) -> "Pcscd":
        binary = check_installed()
        if self.private:
            self._start_private(binary)
        elif self._running_pid() is not None:
            self.reused = True
        else:
            if not VPCD_CONFIG.exists():
                _fail(f"{VPCD_CONFIG} is missing: apt-get install --reinstall vsmartcard-vpcd")
            for port in (self.port(slot) for slot in range(VPCD_SLOTS)):
                if not port_free(port):
                    _fail(f"vpcd's port {port} is taken, yet no pcscd owns {self.socket_path}: a pcscd "
                          f"that lost its socket (see: ss -ltnp | grep {port}; stop that process), or "
                          f"use the private pcscd (pcscd_fixture())")
            for stale in (self.socket_path, self.ipc_dir / PID_NAME):  # left by a killed pcscd
                stale.unlink(missing_ok=True)
            self._spawn([binary, "--foreground", "--info"])
        self._wait_readers()
        return self

    def _start_private(self, binary: str) -> None:
        if shutil.which("unshare") is None:
            _fail("unshare (util-linux) is needed for a private pcscd; or use pcscd_fixture(private=False)")
        self.ipc_dir.mkdir(parents=True, exist_ok=True)
        SYSTEM_IPC_DIR.mkdir(parents=True, exist_ok=True)  # the mount point pcscd's path is fixed to
        config_dir = self.workdir / "reader.conf.d"
        config_dir.mkdir(exist_ok=True)
        self.vpcd_port = free_port_pair()
        (config_dir / "vpcd").write_text(
            f'FRIENDLYNAME "{READER_PREFIX}"\nDEVICENAME /dev/null:{self.vpcd_port}\n'
            f"LIBPATH {VPCD_DRIVER}\nCHANNELID {self.vpcd_port}\n")
        point_clients_at(self.socket_path)
        # pdeathsig: a session killed outright takes its pcscd with it, never an orphan.
        script = 'mount --bind "$1" /run/pcscd && shift && exec "$@"'
        self._spawn(["setpriv", "--pdeathsig", "TERM", "unshare", "--mount", "--propagation", "private",
                     "sh", "-c", script, "sh", str(self.ipc_dir),
                     binary, "--foreground", "--info", "--config", str(config_dir)])

    def _spawn(self, argv: list[str]) -> None:
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)

    def _running_pid(self) -> int | None:
        """A live pcscd owning the system socket (shared mode)."""
        try:
            pid = int((self.ipc_dir / PID_NAME).read_text().strip())
            name = Path(f"/proc/{pid}/comm").read_text().strip()
        except (OSError, ValueError):
            return None
        return pid if name == PCSCD else None

    def _wait_readers(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.readers():
                return
            if self.process is not None and self.process.poll() is not None:
                self.stop()
                _fail(f"pcscd exited with {self.process.returncode} at start:\n{self.log_tail()}")
            time.sleep(POLL_S)
        listed = list_readers()
        self.stop()
        hint = (f"if this process made a PC/SC call before the fixture, libpcsclite kept its "
                f"first socket name and does not see {self.socket_path}" if self.private
                else f"is {VPCD_CONFIG} loaded?")
        _fail(f"no {READER_PREFIX!r} reader within {START_TIMEOUT_S:g} s of starting pcscd "
              f"({'reused, ' if self.reused else ''}socket {self.socket_path}); readers listed: "
              f"{listed or 'none'}; {hint}\n{self.log_tail()}")

    def stop(self) -> None:
        """Stop the pcscd this session started; a reused one is left running."""
        process, self.process = self.process, None
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(STOP_TIMEOUT_S)
        if self.private:
            restore_clients()
            shutil.rmtree(self.ipc_dir, ignore_errors=True)

    def readers(self) -> list[str]:
        """The vpcd readers pcscd lists now."""
        return [name for name in list_readers() if name.startswith(READER_PREFIX)]

    @staticmethod
    def reader(slot: int = 0) -> str:
        """The PC/SC name of vpcd slot ``slot`` ("Virtual PCD 00 00" for 0)."""
        return f"{READER_PREFIX} 00 {slot:02d}"

    def port(self, slot: int = 0) -> int:
        """The TCP port a card inserts into for slot ``slot`` (``ChipEmulator(port=...)``)."""
        if not 0 <= slot < VPCD_SLOTS:
            raise ValueError(f"vpcd has slots 0..{VPCD_SLOTS - 1}, not {slot}")
        return self.vpcd_port + slot

    def log_tail(self, lines: int = LOG_TAIL_LINES) -> str:
        if self.reused:
            return "(pcscd was already running; its log is not ours)"
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError as error:
            return f"(no pcscd log: {error})"
        return f"--- last lines of {self.log_path} ---\n" + "\n".join(text.splitlines()[-lines:])


def card_state(reader: str) -> int:
    """The reader's PC/SC event state bits (``SCARD_STATE_*``)."""
    from smartcard import scard

    result, context = scard.SCardEstablishContext(scard.SCARD_SCOPE_USER)
    if result != scard.SCARD_S_SUCCESS:
        raise RuntimeError(f"SCardEstablishContext: {scard.SCardGetErrorMessage(result)}")
    try:
        result, states = scard.SCardGetStatusChange(context, 0, [(reader, scard.SCARD_STATE_UNAWARE)])
        if result != scard.SCARD_S_SUCCESS:
            raise RuntimeError(f"SCardGetStatusChange({reader!r}): {scard.SCardGetErrorMessage(result)}")
        return int(states[0][1])
    finally:
        scard.SCardReleaseContext(context)


def wait_card(reader: str, *, present: bool, timeout_s: float = CARD_TIMEOUT_S) -> None:
    """Wait until pcscd reports a card in ``reader`` (or none); ``PcscdError`` naming the
    reader's last state otherwise."""
    from smartcard import scard

    deadline = time.monotonic() + timeout_s
    while True:
        state = card_state(reader)
        if bool(state & scard.SCARD_STATE_PRESENT) == present:
            return
        if time.monotonic() > deadline:
            _fail(f"{reader}: card {'not seen' if present else 'still present'} after {timeout_s:g} s "
                  f"(state 0x{state:X})")
        time.sleep(POLL_S)
