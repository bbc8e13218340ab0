"""Passive authentication of chip files: our set verifies, with our verifier and with
independent ones (asn1crypto + cryptography by hand, openssl cms); every tampering is refused."""
from __future__ import annotations

import hashlib
import json
import subprocess
import sysconfig
from datetime import timedelta
from pathlib import Path

import pytest
from asn1crypto import cms, core
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from station import chip_verify, lds, pki
from station.chip_verify import FAIL, NOT_CHECKED, PASS
from station.cli import main as stationctl_main
from tests.chip.chip_set import chip_portrait_jp2, issue_document_signer, write_files
from tests.printer.cards import make_card

BIN = Path(sysconfig.get_path("scripts"))


@pytest.fixture(scope="module")
def pkis(tmp_path_factory):
    root = tmp_path_factory.mktemp("pkis")
    return pki.init_test(root / "a"), pki.init_test(root / "b")


@pytest.fixture(scope="module")
def aa_key():
    return rsa.generate_private_key(65537, 2048)


@pytest.fixture(scope="module")
def files(pkis, aa_key):
    return lds.lds_files(make_card(), chip_portrait_jp2(), pkis[0].document_signer(), aa_key.public_key())


@pytest.fixture
def chip_dir(tmp_path, files):
    return write_files(tmp_path / "chip", files)


def _csca(test_pki):
    return pki.load_certificate(test_pki.csca_cert)


def _failed(result):
    return [check.name for check in result.failures]


def _statuses(result):
    return {check.name: check.status for check in result.checks}


def test_the_sod_decodes_with_asn1crypto_and_its_signature_checks_with_cryptography(files, pkis):
    """An independent reading of EF.SOD, written from RFC 5652 and Doc 9303-10, not chip_verify."""
    assert files["EF.SOD"][0] == 0x77
    tag, body, end = lds.read_tlv(files["EF.SOD"])
    assert (tag, end) == (0x77, len(files["EF.SOD"]))
    info = cms.ContentInfo.load(body, strict=True)
    assert info["content_type"].native == "signed_data"
    signed = info["content"]
    assert signed["version"].native == "v3"
    assert signed["encap_content_info"]["content_type"].dotted == "2.23.136.1.1.1"
    econtent = signed["encap_content_info"]["content"].native
    version, hash_algorithm, hash_values = _universal(econtent)  # no LDS schema: what the tags say
    assert isinstance(version, core.Integer) and version.native == 0
    assert _universal(hash_algorithm)[0].dotted == "2.16.840.1.101.3.4.2.1"  # id-sha256
    pairs = [_universal(item) for item in _universal(hash_values)]
    listed = {number.native: value.native for number, value in pairs}
    assert listed == {n: hashlib.sha256(files[f"DG{n}"]).digest() for n in (1, 2, 13, 15)}

    (certificate,) = signed["certificates"]
    ds = x509.load_der_x509_certificate(certificate.chosen.dump())
    assert ds == pki.load_certificate(pkis[0].ds_cert)
    (signer,) = signed["signer_infos"]
    assert signer["sid"].chosen["serial_number"].native == ds.serial_number
    attributes = {a["type"].native: [v.native for v in a["values"]] for a in signer["signed_attrs"]}
    assert set(attributes) == {"content_type", "message_digest"}
    assert attributes["content_type"] == ["2.23.136.1.1.1"]
    assert attributes["message_digest"] == [hashlib.sha256(econtent).digest()]
    assert signer["signature_algorithm"]["algorithm"].native == "sha256_ecdsa"
    signed_attrs = b"\x31" + signer["signed_attrs"].dump()[1:]
    ds.public_key().verify(signer["signature"].native, signed_attrs, ec.ECDSA(hashes.SHA256()))
    ds.verify_directly_issued_by(_csca(pkis[0]))


def _universal(der):
    """The children of a DER SEQUENCE, typed by their universal tags alone."""
    der = der if isinstance(der, bytes) else der.dump()
    return [item.parse() for item in core.SequenceOf.load(der, spec=core.Any, strict=True)]


def test_openssl_cms_verifies_the_sod_against_the_csca(files, pkis, tmp_path):
    (tmp_path / "sod.der").write_bytes(lds.read_file("EF.SOD", files["EF.SOD"]))
    out = subprocess.run(["openssl", "cms", "-verify", "-inform", "DER", "-in", str(tmp_path / "sod.der"),
                          "-CAfile", str(pkis[0].csca_cert), "-purpose", "any", "-out", str(tmp_path / "lso.der")],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    assert "Verification successful" in out.stderr
    assert lds.LdsSecurityObject.load((tmp_path / "lso.der").read_bytes())["version"].native == 0
    wrong = subprocess.run(["openssl", "cms", "-verify", "-inform", "DER", "-in", str(tmp_path / "sod.der"),
                            "-CAfile", str(pkis[1].csca_cert), "-purpose", "any", "-out", "/dev/null"],
                           capture_output=True, text=True, timeout=30)
    assert wrong.returncode != 0


def test_a_full_set_verifies_with_the_csca(chip_dir, pkis):
    result = chip_verify.verify_directory(chip_dir, _csca(pkis[0]))
    assert result.valid and result.chain_checked, result.report()
    assert result.files == ["EF.COM", "DG1", "DG2", "DG13", "DG15", "EF.SOD"]
    statuses = _statuses(result)
    assert set(statuses.values()) == {PASS}
    for name in ("DG1 hash", "DG2 hash", "DG13 hash", "DG15 hash", "SOD signature", "SOD signed attributes",
                 "DS certificate", "certificate chain", "EF.COM data groups"):
        assert statuses[name] == PASS, name
    assert result.verdict().startswith("VALID: ")


def test_an_ecdsa_active_authentication_key_needs_dg14_to_name_its_algorithm(pkis, tmp_path, monkeypatch):
    card, portrait, signer = make_card(), chip_portrait_jp2(), pkis[0].document_signer()
    key = ec.generate_private_key(ec.SECP256R1()).public_key()
    files = lds.lds_files(card, portrait, signer, key)
    result = chip_verify.verify_files(files, _csca(pkis[0]))
    assert result.valid, result.report()
    assert _statuses(result)["Active Authentication info"] == PASS
    assert "ecdsa-plain-SHA256" in next(c.message for c in result.checks if c.name == "Active Authentication info")
    without = {name: data for name, data in files.items() if name != "DG14"}
    assert "Active Authentication info" in _failed(chip_verify.verify_files(without, _csca(pkis[0])))
    real = lds.dg14
    monkeypatch.setattr(lds, "dg14", lambda: real("1.2.840.10045.4.3.2"))  # X9.62 ecdsa-with-SHA256 (DER r, s)
    result = chip_verify.verify_files(lds.lds_files(card, portrait, signer, key), _csca(pkis[0]))
    assert _failed(result) == ["Active Authentication info"], result.report()
    assert "not an ECDSA plain-signature" in result.failures[0].message


def test_without_a_csca_the_result_says_the_chain_was_not_checked(chip_dir):
    result = chip_verify.verify_directory(chip_dir)
    assert result.valid and not result.chain_checked
    assert _statuses(result)["certificate chain"] == NOT_CHECKED
    assert "NOT checked" in result.verdict() and "NOT CHECKED" in result.report()
    assert result.to_dict()["chain_checked"] is False


@pytest.mark.parametrize("group", ["DG1", "DG2", "DG13", "DG15"])
@pytest.mark.parametrize("where", ["first value byte", "middle", "last"])
def test_one_changed_byte_in_a_data_group_is_refused(chip_dir, files, pkis, group, where):
    data = bytearray(files[group])
    position = {"first value byte": len(data) - len(lds.read_file(group, bytes(data))), "middle": len(data) // 2,
                "last": len(data) - 1}[where]
    data[position] ^= 0x01
    (chip_dir / group).write_bytes(bytes(data))
    result = chip_verify.verify_directory(chip_dir, _csca(pkis[0]))
    assert not result.valid
    # A DG15 that no longer parses as a key also fails the Active Authentication check.
    extra = ["Active Authentication info"] if group == "DG15" else []
    assert _failed(result) in ([f"{group} hash"], [f"{group} hash", *extra])
    assert "changed after signing" in next(c.message for c in result.failures)
    assert "INVALID" in result.verdict()


def test_a_changed_signature_is_refused(chip_dir, files, pkis):
    signed = cms.ContentInfo.load(lds.read_file("EF.SOD", files["EF.SOD"]))["content"]
    signature = signed["signer_infos"][0]["signature"].native
    sod = files["EF.SOD"]
    assert sod.count(signature) == 1
    at = sod.index(signature) + len(signature) - 1
    (chip_dir / "EF.SOD").write_bytes(sod[:at] + bytes([sod[at] ^ 0x01]) + sod[at + 1:])
    result = chip_verify.verify_directory(chip_dir, _csca(pkis[0]))
    assert _failed(result) == ["SOD signature"]


def test_a_document_signer_of_another_csca_is_refused(chip_dir, pkis):
    result = chip_verify.verify_directory(chip_dir, _csca(pkis[1]))
    assert _failed(result) == ["certificate chain"]
    assert "signature does not verify with that CSCA's key" in result.failures[0].message


def test_a_data_group_listed_in_the_sod_but_missing_is_refused(chip_dir, pkis):
    (chip_dir / "DG13").unlink()
    result = chip_verify.verify_directory(chip_dir, _csca(pkis[0]))
    assert _failed(result) == ["DG13 hash"]
    assert "there is no file DG13" in result.failures[0].message


def test_a_data_group_not_listed_in_the_sod_is_refused(chip_dir, pkis):
    (chip_dir / "DG14").write_bytes(lds.tlv(0x6E, lds.tlv(0x31, b"")))
    (chip_dir / "notes.txt").write_text("not a chip file")
    result = chip_verify.verify_directory(chip_dir, _csca(pkis[0]))
    assert _failed(result) == ["DG14 hash"]
    assert "notes.txt" not in result.files


def test_a_set_without_sod_is_refused(chip_dir):
    (chip_dir / "EF.SOD").unlink()
    result = chip_verify.verify_directory(chip_dir)
    assert _failed(result) == ["EF.SOD"]


def test_an_ef_com_that_disagrees_with_the_sod_is_refused(chip_dir, pkis):
    (chip_dir / "EF.COM").write_bytes(lds.ef_com([1, 2, 13]))
    result = chip_verify.verify_directory(chip_dir, _csca(pkis[0]))
    assert _failed(result) == ["EF.COM data groups"]
    assert "DG15" in result.failures[0].message


def test_one_flipped_bit_anywhere_in_the_sod_is_refused(files, pkis):
    """Every byte of EF.SOD is signed by the DS, by the CSCA (the DS certificate), or checked.

    One exception, by design: the SignerInfo's issuer name only finds the DS certificate, and
    names match as RFC 5280 compares them (case-insensitively), so a flip of a letter's case
    there still names the same certificate, whose signature then still verifies."""
    csca = _csca(pkis[0])
    sod = files["EF.SOD"]
    signer = cms.ContentInfo.load(lds.read_file("EF.SOD", sod))["content"]["signer_infos"][0]
    sid = signer["sid"].chosen
    sid_start = sod.index(sid.dump())
    seen: set[str] = set()
    accepted = []
    for position in range(len(sod)):
        tampered = bytearray(sod)
        tampered[position] ^= 1 << (position % 8)
        result = chip_verify.verify_files({**files, "EF.SOD": bytes(tampered)}, csca)
        if result.valid:
            assert sid_start <= position < sid_start + len(sid.dump()), (position, result.report())
            issuer = cms.ContentInfo.load(lds.read_file("EF.SOD", bytes(tampered)))["content"][
                "signer_infos"][0]["sid"].chosen["issuer"]
            assert issuer == sid["issuer"] and issuer.dump() != sid["issuer"].dump()
            assert chr(sod[position]).isalpha() and tampered[position] == sod[position] ^ 0x20  # its case only
            accepted.append(position)
        seen.update(_failed(result))
    assert len(accepted) < len(sid["issuer"].dump()), accepted  # a few letters of the name, no more
    assert {"EF.SOD structure", "EF.SOD content", "SOD signature", "SOD signer", "certificate chain"} <= seen


@pytest.mark.parametrize("rsa_pss", [True, False])
def test_an_rsa_document_signer_verifies(pkis, tmp_path, rsa_pss):
    key = rsa.generate_private_key(65537, 2048)
    signer = pki.DocumentSigner(key, issue_document_signer(pkis[0], key), rsa_pss=rsa_pss)
    files = lds.lds_files(make_card(), chip_portrait_jp2(), signer)
    result = chip_verify.verify_files(files, _csca(pkis[0]))
    assert result.valid and result.chain_checked, result.report()
    algorithm = "RSA-PSS with SHA-256" if rsa_pss else "RSA PKCS#1 v1.5 with SHA-256"
    assert next(c.message for c in result.checks if c.name == "SOD signature").startswith(algorithm)


def test_an_expired_document_signer_is_refused(pkis):
    key = ec.generate_private_key(ec.SECP256R1())
    certificate = issue_document_signer(pkis[0], key, days=1)
    files = lds.lds_files(make_card(), chip_portrait_jp2(), pki.DocumentSigner(key, certificate))
    later = certificate.not_valid_after_utc + timedelta(days=1)
    result = chip_verify.verify_files(files, _csca(pkis[0]), now=later)
    assert _failed(result) == ["DS certificate"]


def test_damaged_files_are_failed_checks_not_exceptions(files):
    damaged = {**files, "DG2": files["DG2"][:100], "EF.SOD": b"\x77\x03\x30\x01\x00"}
    result = chip_verify.verify_files(damaged)
    assert not result.valid
    assert {"DG2 structure", "EF.SOD content"} <= set(_failed(result))


# -- stationctl ------------------------------------------------------------------------------------

def stationctl(*args):
    return subprocess.run([str(BIN / "stationctl"), *map(str, args)], capture_output=True, text=True, timeout=60)


def test_stationctl_pki_init_test_and_chip_verify(tmp_path, files):
    made = stationctl("pki", "init-test", tmp_path / "pki")
    assert made.returncode == 0, made.stderr
    for name in (pki.CSCA_KEY, pki.CSCA_CERT, pki.DS_KEY, pki.DS_CERT):
        assert str(tmp_path / "pki" / name) in made.stdout
    again = stationctl("pki", "init-test", tmp_path / "pki")
    assert again.returncode == 1 and "already exists" in again.stderr and "Traceback" not in again.stderr

    directory = tmp_path / "pki"
    signer = pki.load_document_signer(directory / pki.DS_KEY, directory / pki.DS_CERT)
    chip = write_files(tmp_path / "chip", lds.lds_files(make_card(), chip_portrait_jp2(), signer))
    csca = directory / pki.CSCA_CERT
    ok = stationctl("chip", "verify", chip, "--csca", csca)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert ok.stdout.strip().splitlines()[-1].startswith("VALID: ")
    unchecked = stationctl("chip", "verify", chip, "--json")
    assert unchecked.returncode == 0
    report = json.loads(unchecked.stdout)
    assert report["valid"] is True and report["chain_checked"] is False
    assert {"check": "certificate chain", "status": "not_checked"}.items() <= next(
        c for c in report["checks"] if c["check"] == "certificate chain").items()

    (chip / "DG1").write_bytes(files["DG1"].replace(b"NGUYEN", b"NGUYEM"))
    bad = stationctl("chip", "verify", chip, "--csca", csca, "--json")
    assert bad.returncode == 1 and "Traceback" not in bad.stderr
    assert [c["check"] for c in json.loads(bad.stdout)["checks"] if c["status"] == FAIL] == ["DG1 hash"]


@pytest.mark.parametrize("args, message", [
    (["chip", "verify", "{tmp}/nowhere"], "cannot read chip files"),
    (["chip", "verify", "{tmp}", "--csca", "{tmp}/missing.pem"], "cannot read the certificate"),
    (["pki", "init-test", "{tmp}/x", "--country", "vietnam"], "two-letter"),
])
def test_stationctl_errors_exit_1_without_a_traceback(tmp_path, capsys, args, message):
    assert stationctl_main([a.format(tmp=tmp_path) for a in args]) == 1
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_stationctl_chip_verify_of_an_empty_directory_is_invalid(tmp_path, capsys):
    assert stationctl_main(["chip", "verify", str(tmp_path)]) == 1
    assert "EF.SOD: missing" in capsys.readouterr().out
