"""The station's keys on disk: ``<state>/keys/``, a 0700 directory of 0600 files.

  station.key.pem   Station-Id line + Ed25519 and ML-DSA-65 private keys (PKCS8): signs records.
                    One file, so the id and both keys are replaced together or not at all.
  station.pub.pem   the matching public bundle, for export to central (rewritten from the above)
  capture.key       32 random bytes: AES-256-GCM key for captures of sessions still open
  central.pub.pem   central's ML-KEM-768 + X25519 public key: the only key records are sealed to

``provision`` is the one command that creates or changes these files; ``load`` is what the
daemons call, and it refuses to start (naming the file and the command that fixes it) rather
than run without a key. Every write goes to a temporary file that is fsynced and renamed,
then the directory is fsynced, so a power cut leaves the old key or the new one.

KeyringError codes: not_provisioned, bad_permissions, bad_station_id, station_id_conflict,
bad_key, capture_corrupt, keyring_io.
"""
from __future__ import annotations

import dataclasses
import errno
import os
import stat
from dataclasses import dataclass
from pathlib import Path

import zmq
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from station.errors import StationError
from station.sealing import (CentralPrivateKey, CentralPublicKey, SealError, StationSigner,
                             valid_station_id)
from station.store import fsync_dir, write_private

STATION_KEY = "station.key.pem"
STATION_PUB = "station.pub.pem"
CAPTURE_KEY = "capture.key"
CENTRAL_PUB = "central.pub.pem"
TRANSPORT_KEY = "uplink.key"  # the uplink's CURVE secret key, Z85 (its public key is in STATION_PUB)
PRIVATE_FILES = (STATION_KEY, CAPTURE_KEY, TRANSPORT_KEY)
FIX_COMMAND = "stationctl provision --station-id ID --central-key FILE"
MAX_KEY_FILE_BYTES = 64 * 1024
NONCE_BYTES = 12
TAG_BYTES = 16


class KeyringError(StationError):
    """A key is missing, unreadable, too open or corrupt: an operator must act, so a daemon
    exits with EX_CONFIG (78) and systemd does not restart it in a loop."""

    code = "keyring_error"
    exit_status = 78


class CaptureCipher:
    """AES-256-GCM for captures at rest while their session is open.

    Layout: 12-byte random nonce || ciphertext || 16-byte tag. The caller's ``aad`` names
    what the blob is (session, capture), so a blob moved to another slot does not decrypt.
    Random nonces are safe far beyond the captures one station makes (2**32 per key).
    """

    def __init__(self, key: bytes):
        if len(key) != 32:
            raise KeyringError(f"capture key must be 32 bytes, got {len(key)}", code="bad_key")
        self._aead = AESGCM(bytes(key))

    def encrypt(self, data: bytes, aad: bytes) -> bytes:
        nonce = os.urandom(NONCE_BYTES)
        return nonce + self._aead.encrypt(nonce, data, aad)

    def decrypt(self, blob: bytes, aad: bytes) -> bytes:
        if len(blob) < NONCE_BYTES + TAG_BYTES:
            raise KeyringError(f"capture blob of {len(blob)} bytes is too short", code="capture_corrupt")
        try:
            return self._aead.decrypt(blob[:NONCE_BYTES], blob[NONCE_BYTES:], aad)
        except InvalidTag:
            raise KeyringError("capture blob is corrupt or belongs to another session or station",
                               code="capture_corrupt") from None


@dataclass(frozen=True)
class Keyring:
    keys_dir: Path
    station_id: str
    signer: StationSigner
    central: CentralPublicKey
    capture: CaptureCipher


@dataclass(frozen=True)
class ProvisionResult:
    """What ``stationctl provision`` prints: the id and public bundle to register at central."""

    station_id: str
    station_public_pem: str
    station_key_id: str
    central_key_id: str | None
    previous_station_key_id: str | None
    written: tuple[str, ...]

    def report(self) -> str:
        lines = [f"station id: {self.station_id}", f"station key id: {self.station_key_id}"]
        if self.previous_station_key_id and self.previous_station_key_id != self.station_key_id:
            lines.append(f"replaced station key id: {self.previous_station_key_id}")
        lines.append(f"central key id: {self.central_key_id or 'NONE (sealing cannot start; give --central-key)'}")
        lines.append(f"files written: {', '.join(self.written) or 'none'}")
        lines.append("register this public key bundle at central:")
        return "\n".join(lines) + "\n" + self.station_public_pem


def _read_key_file(path: Path, private: bool) -> bytes:
    """Read a key file that must be a regular file; a private one must be 0600 or stricter."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except FileNotFoundError:
        raise KeyringError(f"{path} is missing; run: {FIX_COMMAND}", code="not_provisioned") from None
    except PermissionError:
        raise KeyringError(f"cannot read {path}: permission denied for uid {os.getuid()}; the key "
                           f"files must belong to the station user", code="bad_permissions") from None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise KeyringError(f"{path} is a symlink; key files must be regular files",
                               code="bad_permissions") from None
        raise KeyringError(f"cannot read {path}: {exc.strerror}", code="keyring_io") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise KeyringError(f"{path} is not a regular file", code="bad_permissions")
        if private and info.st_mode & 0o077:
            raise KeyringError(f"{path} is accessible by group/others (mode {stat.S_IMODE(info.st_mode):04o}); "
                               f"run: chmod 600 {path}", code="bad_permissions")
        data = os.read(fd, MAX_KEY_FILE_BYTES + 1)
    finally:
        os.close(fd)
    if len(data) > MAX_KEY_FILE_BYTES:
        raise KeyringError(f"{path} is larger than any key file ({MAX_KEY_FILE_BYTES} bytes)", code="bad_key")
    return data


def _parse(path: Path, parse, data: bytes, fix: str = f"replace it with: {FIX_COMMAND}"):
    try:
        return parse(data)
    except SealError as exc:
        raise KeyringError(f"{path}: {exc.message}; {fix}", code="bad_key") from None


def load(keys_dir: Path) -> Keyring:
    """The keys a daemon needs to seal records; refuses to return without every one of them."""
    keys_dir = Path(keys_dir)
    if not keys_dir.is_dir():
        raise KeyringError(f"key directory {keys_dir} does not exist; run: {FIX_COMMAND}",
                           code="not_provisioned")
    signer = _parse(keys_dir / STATION_KEY, StationSigner.from_pem, _read_key_file(keys_dir / STATION_KEY, True),
                    f"re-key with: {FIX_COMMAND} --rotate, then register the new public key at central")
    capture_key = _read_key_file(keys_dir / CAPTURE_KEY, True)
    if len(capture_key) != 32:
        raise KeyringError(f"{keys_dir / CAPTURE_KEY} holds {len(capture_key)} bytes, not 32; "
                           f"remove it and run: {FIX_COMMAND}", code="bad_key")
    central_path = keys_dir / CENTRAL_PUB
    try:
        central_pem = _read_key_file(central_path, False)
    except KeyringError as exc:
        if exc.code == "not_provisioned":
            raise KeyringError(f"{central_path} is missing: records cannot be sealed without central's "
                               f"public key; run: {FIX_COMMAND}", code="not_provisioned") from None
        raise
    central = _parse(central_path, CentralPublicKey.from_pem, central_pem)
    return Keyring(keys_dir, signer.station_id, signer, central, CaptureCipher(capture_key))


def load_transport(keys_dir: Path) -> tuple[bytes, bytes]:
    """The uplink's CURVE key pair (public, secret), Z85: who the station is to the collector."""
    path = Path(keys_dir) / TRANSPORT_KEY
    secret = _read_key_file(path, True).strip()
    try:
        return zmq.curve_public(secret), secret
    except (ValueError, zmq.ZMQError):
        raise KeyringError(f"{path} does not hold a Z85 CURVE secret key; remove it and run: {FIX_COMMAND}",
                           code="bad_key") from None


def provision(keys_dir: Path, station_id: str, central_public_pem: bytes | None, *,
              owner: tuple[int, int] | None = None, rotate: bool = False) -> ProvisionResult:
    """Create what is missing, install the central key; replace station keys only on rotate.

    Running it again is safe: existing station keys and the capture key are kept, so records
    already registered at central keep verifying. The capture key survives a rotation too:
    captures of sessions open at that moment stay readable.
    """
    if not valid_station_id(station_id):
        raise KeyringError(f"invalid station id {station_id!r}: use 1-32 letters, digits or '-', "
                           f"e.g. VN-HP-0001", code="bad_station_id")
    keys_dir = Path(keys_dir)
    central = None
    if central_public_pem is not None:
        try:
            central = CentralPublicKey.from_pem(central_public_pem)
        except SealError as exc:
            raise KeyringError(f"the central key given is not central's public key bundle: {exc.message}",
                               code="bad_key") from None
    written: list[str] = []
    try:
        keys_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(keys_dir, 0o700)
        station_path = keys_dir / STATION_KEY
        previous = None
        if station_path.exists():
            try:
                previous = _parse(station_path, StationSigner.from_pem, _read_key_file(station_path, True),
                                  f"replace it with: {FIX_COMMAND} --rotate")
            except KeyringError as exc:
                if not (rotate and exc.code == "bad_key"):
                    raise
            if previous is not None and previous.station_id != station_id and not rotate:
                raise KeyringError(f"{station_path} is provisioned as station {previous.station_id}, not "
                                   f"{station_id}; to re-key it as {station_id} add --rotate and register "
                                   f"the new public key at central", code="station_id_conflict")
        signer = previous
        if previous is None or rotate:
            signer = StationSigner.generate(station_id)
            write_private(station_path, signer.to_pem(), True)
            written.append(STATION_KEY)
        transport_path = keys_dir / TRANSPORT_KEY
        if rotate or not transport_path.exists():
            write_private(transport_path, zmq.curve_keypair()[1], True)
            written.append(TRANSPORT_KEY)
        curve_public, _ = load_transport(keys_dir)
        public_pem = dataclasses.replace(signer.public(), curve_key=curve_public.decode()).to_pem()
        write_private(keys_dir / STATION_PUB, public_pem.encode("ascii"), True)
        written.append(STATION_PUB)
        if not (keys_dir / CAPTURE_KEY).exists():
            write_private(keys_dir / CAPTURE_KEY, os.urandom(32), True)
            written.append(CAPTURE_KEY)
        if central is not None:
            write_private(keys_dir / CENTRAL_PUB, central.to_pem(), True)
            written.append(CENTRAL_PUB)
        elif (keys_dir / CENTRAL_PUB).exists():
            central = _parse(keys_dir / CENTRAL_PUB, CentralPublicKey.from_pem,
                             _read_key_file(keys_dir / CENTRAL_PUB, False))
        fsync_dir(keys_dir)
        if owner is not None:
            for path in [keys_dir, *(keys_dir / name for name in (*PRIVATE_FILES, STATION_PUB, CENTRAL_PUB))]:
                if path.exists():
                    os.chown(path, *owner, follow_symlinks=False)
    except OSError as exc:
        raise KeyringError(f"cannot provision keys in {keys_dir}: {exc}", code="keyring_io") from exc
    return ProvisionResult(
        station_id=signer.station_id, station_public_pem=public_pem, station_key_id=signer.public().key_id,
        central_key_id=central.key_id if central else None,
        previous_station_key_id=previous.public().key_id if previous else None, written=tuple(written))


def write_central_pair(directory: Path) -> tuple[Path, Path]:
    """A central test key pair (``central.key.pem`` 0600, ``central.pub.pem`` 0644).

    For the demo and tests: the real central key lives in central's HSM. An existing private
    key is reused, never replaced (records sealed to it would become unreadable), so a demo
    run again in the same directory keeps opening its earlier records.
    """
    directory = Path(directory)
    key_path, pub_path = directory / "central.key.pem", directory / "central.pub.pem"
    try:
        directory.mkdir(parents=True, exist_ok=True)
        if key_path.exists():
            central = _parse(key_path, CentralPrivateKey.from_pem, _read_key_file(key_path, True),
                             "remove it to generate a new test pair")
        else:
            central = CentralPrivateKey.generate()
            write_private(key_path, central.to_pem(), True)
        write_private(pub_path, central.public().to_pem(), True)
        os.chmod(pub_path, 0o644)
        fsync_dir(directory)
    except OSError as exc:
        raise KeyringError(f"cannot write the central key pair to {directory}: {exc}", code="keyring_io") from exc
    return key_path, pub_path
