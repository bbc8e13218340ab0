"""The test PKI's certificates and files, and the checks on a production Document Signer."""
from __future__ import annotations

import stat
import subprocess
from datetime import datetime, timedelta, timezone

import pytest
from asn1crypto import core
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

from station import pki
from station.errors import CODES, StationError
from tests.chip.chip_set import issue_document_signer, write_pem


@pytest.fixture(scope="module")
def test_pki(tmp_path_factory):
    return pki.init_test(tmp_path_factory.mktemp("pki") / "vn")


def _mode(path):
    return stat.S_IMODE(path.stat().st_mode)


def test_keys_are_0600_and_certificates_0644(test_pki):
    assert _mode(test_pki.csca_key) == 0o600 and _mode(test_pki.ds_key) == 0o600
    assert _mode(test_pki.csca_cert) == 0o644 and _mode(test_pki.ds_cert) == 0o644
    assert sorted(p.name for p in test_pki.directory.iterdir()) == sorted(
        [pki.CSCA_KEY, pki.CSCA_CERT, pki.DS_KEY, pki.DS_CERT])
    assert str(test_pki.ds_key) in test_pki.report() and str(test_pki.csca_cert) in test_pki.report()


def test_the_csca_is_a_self_signed_ca_for_certificates_only(test_pki):
    csca = pki.load_certificate(test_pki.csca_cert)
    extensions = csca.extensions
    constraints = extensions.get_extension_for_class(x509.BasicConstraints)
    assert constraints.critical and constraints.value.ca and constraints.value.path_length == 0
    usage = extensions.get_extension_for_class(x509.KeyUsage)
    assert usage.critical and usage.value.key_cert_sign and usage.value.crl_sign
    assert not usage.value.digital_signature
    ski = extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value.digest
    assert extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value.key_identifier == ski
    assert csca.subject == csca.issuer and "TEST" in csca.subject.rfc4514_string()
    assert csca.subject.get_attributes_for_oid(x509.NameOID.COUNTRY_NAME)[0].value == "VN"
    csca.verify_directly_issued_by(csca)
    assert isinstance(csca.public_key(), ec.EllipticCurvePublicKey) and csca.public_key().curve.name == "secp256r1"


def test_the_document_signer_certificate_follows_the_icao_profile(test_pki):
    csca, ds = pki.load_certificate(test_pki.csca_cert), pki.load_certificate(test_pki.ds_cert)
    ds.verify_directly_issued_by(csca)
    usage = ds.extensions.get_extension_for_class(x509.KeyUsage)
    assert usage.critical and usage.value.digital_signature and not usage.value.key_cert_sign
    csca_ski = csca.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value.digest
    assert ds.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value.key_identifier == csca_ski
    document_types = ds.extensions.get_extension_for_oid(x509.ObjectIdentifier("2.23.136.1.1.6.2"))
    assert not document_types.critical
    decoded = core.Sequence.load(document_types.value.value)
    assert decoded[0].native == 0
    assert [item.native for item in core.SetOf.load(decoded[1].dump(), spec=core.PrintableString)] == ["ID"]
    period = ds.extensions.get_extension_for_class(x509.PrivateKeyUsagePeriod).value
    assert period.not_after - period.not_before == pki.DS_KEY_USAGE
    validity = ds.not_valid_after_utc - ds.not_valid_before_utc
    assert pki.DOCUMENT_VALIDITY_YEARS == 22
    assert timedelta(days=22 * 365 + 91) <= validity <= timedelta(days=22 * 366 + 92)
    assert csca.not_valid_after_utc >= ds.not_valid_after_utc


def test_openssl_accepts_the_chain(test_pki):
    out = subprocess.run(["openssl", "verify", "-CAfile", str(test_pki.csca_cert), str(test_pki.ds_cert)],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 0 and out.stdout.strip().endswith(": OK"), out.stderr


def test_init_test_refuses_to_replace_a_test_pki(test_pki):
    key = test_pki.ds_key.read_bytes()
    with pytest.raises(StationError) as error:
        pki.init_test(test_pki.directory)
    assert error.value.code == "test_pki_exists" and str(test_pki.csca_key) in error.value.message
    assert test_pki.ds_key.read_bytes() == key
    with pytest.raises(StationError, match="two-letter"):
        pki.init_test(test_pki.directory.parent / "other", country="VNM")


def test_load_document_signer_accepts_the_pair_and_signs(test_pki):
    signer = pki.load_document_signer(test_pki.ds_key, test_pki.ds_cert)
    assert signer.digest == "sha256" and signer.signature_algorithm()["algorithm"].native == "sha256_ecdsa"
    signature = signer.sign(b"signed attributes")
    signer.certificate.public_key().verify(signature, b"signed attributes", ec.ECDSA(hashes.SHA256()))


def test_load_document_signer_refuses_a_key_of_another_certificate(test_pki, tmp_path):
    other = pki.init_test(tmp_path / "other")
    with pytest.raises(StationError) as error:
        pki.load_document_signer(other.ds_key, test_pki.ds_cert)
    assert error.value.code == "bad_document_signer" and "is not the private key of" in error.value.message


@pytest.mark.parametrize("when, why", [(timedelta(days=-1), "not now"), (timedelta(days=30 * 366), "not now"),
                                       (timedelta(days=120), "may sign only until")])
def test_load_document_signer_refuses_out_of_its_time(test_pki, when, why):
    now = pki.load_certificate(test_pki.ds_cert).not_valid_before_utc + when
    with pytest.raises(StationError, match=why) as error:
        pki.load_document_signer(test_pki.ds_key, test_pki.ds_cert, now=now)
    assert error.value.code == "bad_document_signer"


def test_load_document_signer_refuses_a_certificate_not_for_signatures(test_pki, tmp_path):
    key = ec.generate_private_key(ec.SECP256R1())
    certificate = issue_document_signer(test_pki, key, key_usage=x509.KeyUsage(
        False, False, False, False, True, False, False, False, False))
    with pytest.raises(StationError, match="digitalSignature") as error:
        pki.load_document_signer(write_pem(tmp_path / "k.pem", private_key=key),
                                 write_pem(tmp_path / "c.pem", certificate))
    assert error.value.code == "bad_document_signer"


def test_load_document_signer_refuses_unreadable_or_open_files(test_pki, tmp_path):
    copy = tmp_path / "ds.key.pem"
    copy.write_bytes(test_pki.ds_key.read_bytes())
    copy.chmod(0o644)
    with pytest.raises(StationError, match="chmod 600") as error:
        pki.load_document_signer(copy, test_pki.ds_cert)
    assert error.value.code == "bad_permissions"
    with pytest.raises(StationError) as error:
        pki.load_document_signer(tmp_path / "missing.pem", test_pki.ds_cert)
    assert error.value.code == "bad_document_signer" and "missing.pem" in error.value.message
    (tmp_path / "garbage.pem").write_text("not a certificate")
    with pytest.raises(StationError) as error:
        pki.load_document_signer(test_pki.ds_key, tmp_path / "garbage.pem")
    assert error.value.code == "bad_certificate"


def test_every_error_code_is_documented():
    for code in ("bad_document_signer", "bad_certificate", "test_pki_exists", "keyring_io", "bad_permissions",
                 "bad_lds", "chip_files_unreadable"):
        assert code in CODES, code


def test_a_leap_day_does_not_break_validity(tmp_path):
    created = pki.init_test(tmp_path, now=datetime(2028, 2, 29, 12, tzinfo=timezone.utc) + pki.CLOCK_SKEW)
    ds = pki.load_certificate(created.ds_cert)
    assert ds.not_valid_before_utc == datetime(2028, 2, 29, 12, tzinfo=timezone.utc)
