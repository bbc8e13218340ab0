"""The station's keys on disk: modes, idempotent provisioning, rotation, refusals, capture cipher."""
import os
import stat

import pytest

from station.keyring import (CAPTURE_KEY, CENTRAL_PUB, FIX_COMMAND, STATION_KEY, STATION_PUB, TRANSPORT_KEY,
                             CaptureCipher, KeyringError, load, load_transport, provision, write_central_pair)
from station.sealing import (CentralPrivateKey, CentralPublicKey, SealError, StationPublicKeys,
                             open_sealed, seal, verify)

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def central(tmp_path):
    key_path, pub_path = write_central_pair(tmp_path / "central")
    return CentralPrivateKey.from_pem(key_path.read_bytes()), pub_path.read_bytes()


def _mode(path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _refusal(keys_dir) -> KeyringError:
    with pytest.raises(KeyringError) as info:
        load(keys_dir)
    return info.value


def test_provision_creates_private_files_and_a_working_keyring(tmp_path, central):
    central_key, central_pub = central
    keys = tmp_path / "state" / "keys"
    result = provision(keys, "VN-HP-0001", central_pub)
    assert _mode(keys) == 0o700
    assert sorted(p.name for p in keys.iterdir()) == sorted([STATION_KEY, STATION_PUB, CAPTURE_KEY, CENTRAL_PUB,
                                                             TRANSPORT_KEY])
    assert all(_mode(p) == 0o600 for p in keys.iterdir())
    assert len((keys / CAPTURE_KEY).read_bytes()) == 32
    exported = StationPublicKeys.from_pem(result.station_public_pem)
    assert (result.station_id, exported.station_id) == ("VN-HP-0001", "VN-HP-0001")
    assert exported.curve_key.encode() == load_transport(keys)[0]  # the collector admits this key
    assert exported.key_id == result.station_key_id and result.central_key_id == central_key.key_id
    assert result.previous_station_key_id is None
    assert "VN-HP-0001" in result.report() and result.station_key_id in result.report()
    ring = load(keys)
    assert ring.station_id == "VN-HP-0001" and ring.signer.public() == exported
    assert ring.central.key_id == central_key.key_id
    blob = seal(b"record", record_id="r-1", content_type="application/json", signer=ring.signer, central=ring.central)
    assert open_sealed(blob, central_key, exported)[1] == b"record"


def test_provision_again_keeps_keys_and_rotate_replaces_them(tmp_path, central):
    _, central_pub = central
    keys = tmp_path / "keys"
    first = provision(keys, "VN-HP-0001", central_pub)
    station_key, capture_key = (keys / STATION_KEY).read_bytes(), (keys / CAPTURE_KEY).read_bytes()
    again = provision(keys, "VN-HP-0001", None)
    assert again.station_key_id == first.station_key_id and again.previous_station_key_id == first.station_key_id
    assert (keys / STATION_KEY).read_bytes() == station_key and (keys / CAPTURE_KEY).read_bytes() == capture_key
    assert STATION_KEY not in again.written and CAPTURE_KEY not in again.written
    assert again.central_key_id == first.central_key_id  # kept when not given
    old_blob = seal(b"x", record_id="r-1", content_type="a/b", signer=load(keys).signer, central=load(keys).central)

    rotated = provision(keys, "VN-HP-0001", None, rotate=True)
    assert rotated.station_key_id != first.station_key_id
    assert rotated.previous_station_key_id == first.station_key_id
    assert first.station_key_id in rotated.report()
    assert (keys / CAPTURE_KEY).read_bytes() == capture_key  # open sessions' captures stay readable
    assert load(keys).signer.public().key_id == rotated.station_key_id
    assert StationPublicKeys.from_pem((keys / STATION_PUB).read_bytes()).key_id == rotated.station_key_id
    assert all(_mode(p) == 0o600 for p in keys.iterdir())
    assert not [p for p in keys.iterdir() if p.name.startswith(".")]  # no temporary files left
    with pytest.raises(SealError) as info:
        verify(old_blob, load(keys).signer.public())
    assert info.value.code == "wrong_station" and "rotated" in info.value.message


def test_a_provisioned_station_id_changes_only_with_rotate(tmp_path, central):
    keys = tmp_path / "keys"
    first = provision(keys, "VN-HP-0001", central[1])
    with pytest.raises(KeyringError) as info:
        provision(keys, "VN-HP-0002", None)
    assert info.value.code == "station_id_conflict" and "--rotate" in info.value.message
    assert load(keys).station_id == "VN-HP-0001"
    moved = provision(keys, "VN-HP-0002", None, rotate=True)
    assert moved.station_id == "VN-HP-0002" and moved.station_key_id != first.station_key_id
    assert load(keys).station_id == "VN-HP-0002"


@pytest.mark.parametrize("bad", ["", "VN HP 1", "VN_HP_0001", "x" * 33, "VN-HP-0001\n", "../keys", "VN-HP-0001/"])
def test_invalid_station_ids_are_refused(tmp_path, bad):
    with pytest.raises(KeyringError) as info:
        provision(tmp_path / "keys", bad, None)
    assert info.value.code == "bad_station_id" and "VN-HP-0001" in info.value.message
    assert not (tmp_path / "keys").exists()


def test_central_key_is_validated_installed_and_replaced(tmp_path, central):
    keys = tmp_path / "keys"
    for bad in (b"not a key", CentralPrivateKey.generate().to_pem(), b""):
        with pytest.raises(KeyringError) as info:
            provision(keys, "VN-HP-0001", bad)
        assert info.value.code == "bad_key"
    assert not keys.exists()
    provision(keys, "VN-HP-0001", central[1])
    replacement = CentralPrivateKey.generate().public()
    result = provision(keys, "VN-HP-0001", replacement.to_pem())
    assert result.central_key_id == replacement.key_id and CENTRAL_PUB in result.written
    assert load(keys).central == replacement


def test_load_without_central_key_names_the_file_and_the_command(tmp_path):
    keys = tmp_path / "keys"
    result = provision(keys, "VN-HP-0001", None)
    assert result.central_key_id is None and "NONE" in result.report()
    error = _refusal(keys)
    assert error.code == "not_provisioned"
    assert str(keys / CENTRAL_PUB) in error.message and FIX_COMMAND in error.message
    assert error.exit_status == 78  # EX_CONFIG: the daemon exits and systemd does not restart it


@pytest.mark.parametrize("name", [STATION_KEY, CAPTURE_KEY])
def test_load_names_each_missing_file(tmp_path, central, name):
    keys = tmp_path / "keys"
    provision(keys, "VN-HP-0001", central[1])
    (keys / name).unlink()
    error = _refusal(keys)
    assert error.code == "not_provisioned" and str(keys / name) in error.message and FIX_COMMAND in error.message


def test_load_of_a_missing_directory(tmp_path):
    error = _refusal(tmp_path / "nowhere")
    assert error.code == "not_provisioned" and "nowhere" in error.message and FIX_COMMAND in error.message


@pytest.mark.parametrize("name,mode", [(STATION_KEY, 0o644), (STATION_KEY, 0o640), (CAPTURE_KEY, 0o604)])
def test_private_keys_readable_by_others_are_refused(tmp_path, central, name, mode):
    keys = tmp_path / "keys"
    provision(keys, "VN-HP-0001", central[1])
    os.chmod(keys / name, mode)
    error = _refusal(keys)
    assert error.code == "bad_permissions" and str(keys / name) in error.message and "chmod 600" in error.message


def test_symlinked_or_corrupt_keys_are_refused(tmp_path, central):
    keys = tmp_path / "keys"
    provision(keys, "VN-HP-0001", central[1])
    real = tmp_path / "elsewhere.pem"
    os.replace(keys / STATION_KEY, real)
    os.symlink(real, keys / STATION_KEY)
    assert _refusal(keys).code == "bad_permissions"
    os.unlink(keys / STATION_KEY)
    os.replace(real, keys / STATION_KEY)
    (keys / CAPTURE_KEY).write_bytes(b"short")
    assert _refusal(keys).code == "bad_key"
    (keys / CAPTURE_KEY).write_bytes(os.urandom(32))
    (keys / CENTRAL_PUB).write_bytes(b"-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n")
    error = _refusal(keys)
    assert error.code == "bad_key" and CENTRAL_PUB in error.message
    (keys / STATION_KEY).write_bytes(b"Station-Id: VN-HP-0001\n")
    error = _refusal(keys)
    assert error.code == "bad_key" and "--rotate" in error.message
    with pytest.raises(KeyringError):
        provision(keys, "VN-HP-0001", central[1])
    assert provision(keys, "VN-HP-0001", central[1], rotate=True).previous_station_key_id is None
    assert load(keys).station_id == "VN-HP-0001"


@pytest.mark.skipif(os.geteuid() != 0, reason="chown to another user needs root")
def test_provision_chowns_to_the_service_user(tmp_path, central):
    keys = tmp_path / "keys"
    provision(keys, "VN-HP-0001", central[1], owner=(4321, 4322))
    for path in [keys, *keys.iterdir()]:
        assert (path.stat().st_uid, path.stat().st_gid) == (4321, 4322)


def test_capture_cipher_round_trip_and_refusals():
    cipher = CaptureCipher(os.urandom(32))
    aad = b"station-capture/v1\x00session-1\x00finger-02"
    data = os.urandom(50_000)
    blob = cipher.encrypt(data, aad)
    assert len(blob) == 12 + len(data) + 16 and data[:64] not in blob
    assert cipher.decrypt(blob, aad) == data
    assert cipher.encrypt(data, aad)[:12] != blob[:12]  # a fresh nonce each time
    assert cipher.decrypt(cipher.encrypt(b"", b""), b"") == b""
    refusals = [
        (blob, b"station-capture/v1\x00session-2\x00finger-02"),   # moved to another session
        (blob[:-1] + bytes([blob[-1] ^ 1]), aad),                   # tag
        (blob[:5] + bytes([blob[5] ^ 1]) + blob[6:], aad),          # nonce
        (blob[:30], aad), (b"", aad),
    ]
    for bad_blob, bad_aad in refusals:
        with pytest.raises(KeyringError) as info:
            cipher.decrypt(bad_blob, bad_aad)
        assert info.value.code == "capture_corrupt"
    with pytest.raises(KeyringError):
        CaptureCipher(os.urandom(32)).decrypt(blob, aad)   # another station's key
    with pytest.raises(KeyringError) as info:
        CaptureCipher(b"k" * 16)
    assert info.value.code == "bad_key"


def test_write_central_pair_modes_and_reuse(tmp_path):
    key_path, pub_path = write_central_pair(tmp_path / "central")
    assert (_mode(key_path), _mode(pub_path)) == (0o600, 0o644)
    private = CentralPrivateKey.from_pem(key_path.read_bytes())
    assert CentralPublicKey.from_pem(pub_path.read_bytes()).key_id == private.key_id
    pub_path.unlink()
    assert write_central_pair(tmp_path / "central") == (key_path, pub_path)
    assert CentralPrivateKey.from_pem(key_path.read_bytes()).key_id == private.key_id  # never replaced
    assert CentralPublicKey.from_pem(pub_path.read_bytes()).key_id == private.key_id


def test_station_public_bundle_on_disk_round_trips(tmp_path, central):
    keys = tmp_path / "keys"
    result = provision(keys, "VN-HP-0001", central[1])
    text = (keys / STATION_PUB).read_text()
    assert text == result.station_public_pem and text.startswith("Station-Id: VN-HP-0001\n")
    assert StationPublicKeys.from_pem(text) == load(keys).signer.public()
    assert CentralPublicKey.from_pem((keys / CENTRAL_PUB).read_bytes()) == load(keys).central
