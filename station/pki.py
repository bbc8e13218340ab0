"""The country signing PKI of the chip (ICAO Doc 9303 Part 12): CSCA and Document Signer.

A Document Signer (DS) signs each chip's EF.SOD; its certificate, issued by the country's
CSCA, travels inside every EF.SOD, and a reader that trusts the CSCA trusts the chip. In
production the CSCA is kept offline by the issuing authority and the DS key and certificate
are issued elsewhere: the station loads them with ``load_document_signer``, which refuses a
pair that cannot sign a chip a reader would accept. ``init_test`` makes a throwaway CSCA and
DS (every name says TEST) for development, demos and tests.

Validity, by Doc 9303-12's rule that a certificate lives for its key's usage period plus the
longest validity of a document signed in that period: a DS key signs for 3 months; the
longest expiring CCCD is valid 22 years (issued at 38, renewed at 60: ``station/card.py``),
so a DS certificate is valid 22 years and 3 months, and a CSCA (key used 5 years) that much
longer again. A CCCD issued at 58 or later never expires, and outlives any certificate: a
reader finds its DS certificate expired one day, as it would for any document.

Errors: ``bad_document_signer`` (the DS cannot sign), ``bad_permissions`` (a key file open
to others), ``bad_certificate`` (not a certificate), ``test_pki_exists``, ``keyring_io``.
"""
from __future__ import annotations

import os
import re
import stat
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

from asn1crypto import algos, core
from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.x509.oid import NameOID

from station import card
from station.errors import StationError
from station.store import fsync_dir, write_private

CSCA_KEY = "csca.key.pem"
CSCA_CERT = "csca.cert.pem"
DS_KEY = "ds.key.pem"
DS_CERT = "ds.cert.pem"
DOCUMENT_TYPE_LIST_OID = "2.23.136.1.1.6.2"  # Doc 9303-12 documentTypeList, in DS certificates
DOCUMENT_TYPES = ("ID",)  # the CCCD's MRZ document code

DS_KEY_USAGE = timedelta(days=91)  # 3 months
CSCA_KEY_USAGE_YEARS = 5
DOCUMENT_VALIDITY_YEARS = max(later - (earlier - card.GRACE_YEARS)
                              for earlier, later in zip(card.RENEWAL_AGES, card.RENEWAL_AGES[1:]))
CLOCK_SKEW = timedelta(minutes=5)  # notBefore this far back, so a reader with a slow clock accepts

_HASHES = {"sha256": hashes.SHA256, "sha384": hashes.SHA384, "sha512": hashes.SHA512}


class _DocumentTypes(core.SetOf):
    _child_spec = core.PrintableString


class DocumentTypeList(core.Sequence):
    """DocumentTypeListSyntax ::= SEQUENCE { version INTEGER (v0), docTypeList SET OF DocumentType }"""

    _fields = [("version", core.Integer), ("doc_type_list", _DocumentTypes)]


@dataclass(frozen=True)
class DocumentSigner:
    """A DS private key and its certificate: what signs EF.SOD.

    ECDSA signs with the hash that matches the curve (SHA-256 for P-256); RSA with RSASSA-PSS
    (SHA-256, MGF1-SHA-256, 32-byte salt), Doc 9303-12's recommendation, or PKCS#1 v1.5 when
    ``rsa_pss`` is False for a reader population that cannot do PSS.
    """

    private_key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey
    certificate: x509.Certificate
    rsa_pss: bool = True

    @property
    def digest(self) -> str:
        """The hash of the signature (asn1crypto's name): follows the key size."""
        if isinstance(self.private_key, ec.EllipticCurvePrivateKey):
            size = self.private_key.curve.key_size
            return "sha512" if size > 384 else "sha384" if size > 256 else "sha256"
        return "sha256"

    def certificate_der(self) -> bytes:
        return self.certificate.public_bytes(serialization.Encoding.DER)

    def signature_algorithm(self) -> algos.SignedDigestAlgorithm:
        """The SignerInfo's signatureAlgorithm for this key."""
        if isinstance(self.private_key, ec.EllipticCurvePrivateKey):
            return algos.SignedDigestAlgorithm({"algorithm": f"{self.digest}_ecdsa"})
        if not self.rsa_pss:
            return algos.SignedDigestAlgorithm({"algorithm": f"{self.digest}_rsa"})
        return algos.SignedDigestAlgorithm({
            "algorithm": "rsassa_pss",
            "parameters": algos.RSASSAPSSParams({
                "hash_algorithm": {"algorithm": self.digest},
                "mask_gen_algorithm": {"algorithm": "mgf1", "parameters": {"algorithm": self.digest}},
                "salt_length": _HASHES[self.digest].digest_size,
                "trailer_field": "trailer_field_bc",
            }),
        })

    def sign(self, data: bytes) -> bytes:
        """The signature over ``data`` (for EF.SOD: the DER SET of signed attributes)."""
        digest = _HASHES[self.digest]()
        if isinstance(self.private_key, ec.EllipticCurvePrivateKey):
            return self.private_key.sign(data, ec.ECDSA(digest))
        if not self.rsa_pss:
            return self.private_key.sign(data, padding.PKCS1v15(), digest)
        return self.private_key.sign(data, padding.PSS(padding.MGF1(digest), digest.digest_size), digest)


@dataclass(frozen=True)
class TestPki:
    """What ``init_test`` wrote."""

    __test__ = False  # a test PKI, not a pytest class
    directory: Path
    csca_key: Path
    csca_cert: Path
    ds_key: Path
    ds_cert: Path
    csca_subject: str
    ds_subject: str
    ds_not_after: datetime

    def document_signer(self) -> DocumentSigner:
        return load_document_signer(self.ds_key, self.ds_cert)

    def report(self) -> str:
        return "\n".join([
            f"test PKI in {self.directory} (TEST ONLY: no reader outside this project trusts it)",
            f"  {self.csca_key}  CSCA private key (0600)",
            f"  {self.csca_cert}  CSCA certificate: {self.csca_subject}",
            f"  {self.ds_key}  Document Signer private key (0600)",
            f"  {self.ds_cert}  Document Signer certificate: {self.ds_subject}, valid until "
            f"{self.ds_not_after:%Y-%m-%d}",
            f"verify a chip with: stationctl chip verify DIR --csca {self.csca_cert}",
        ])


def existing_test(directory: Path | str) -> TestPki | None:
    """The test PKI ``init_test`` wrote in ``directory`` before, or None when there is none."""
    directory = Path(directory)
    paths = [directory / name for name in (CSCA_KEY, CSCA_CERT, DS_KEY, DS_CERT)]
    if not all(p.exists() for p in paths):
        return None
    csca, ds = load_certificate(paths[1]), load_certificate(paths[3])
    return TestPki(directory, *paths, csca_subject=csca.subject.rfc4514_string(),
                   ds_subject=ds.subject.rfc4514_string(), ds_not_after=ds.not_valid_after_utc)


def init_test(directory: Path | str, country: str = "VN", *, now: datetime | None = None) -> TestPki:
    """A test CSCA (self-signed) and a DS certificate it issued, ECDSA P-256 keys.

    Refuses a directory that already holds a test PKI: chips signed by it would stop
    verifying against a new CSCA, so replacing one is the caller's deliberate ``rm``.
    """
    if not re.fullmatch(r"[A-Z]{2}", country):
        raise StationError(f"test PKI: country {country!r} is not a two-letter ISO 3166 code such as VN",
                           code="bad_request")
    directory = Path(directory)
    paths = [directory / name for name in (CSCA_KEY, CSCA_CERT, DS_KEY, DS_CERT)]
    existing = [str(p) for p in paths if p.exists()]
    if existing:
        raise StationError(f"a test PKI already exists: {', '.join(existing)}; remove these files or "
                           f"choose another directory", code="test_pki_exists")
    start = (now or datetime.now(timezone.utc)) - CLOCK_SKEW
    csca_key, ds_key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    csca_cert = _csca_certificate(csca_key, country, start)
    ds_cert = _ds_certificate(ds_key, csca_key, csca_cert, start)
    try:
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        for path, key in ((paths[0], csca_key), (paths[2], ds_key)):
            write_private(path, key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                  serialization.NoEncryption()), True)
        for path, cert in ((paths[1], csca_cert), (paths[3], ds_cert)):
            write_private(path, cert.public_bytes(serialization.Encoding.PEM), True)
            os.chmod(path, 0o644)
        fsync_dir(directory)
    except OSError as exc:
        raise StationError(f"cannot write the test PKI to {directory}: {exc}", code="keyring_io") from exc
    return TestPki(directory, *paths, csca_subject=csca_cert.subject.rfc4514_string(),
                   ds_subject=ds_cert.subject.rfc4514_string(), ds_not_after=ds_cert.not_valid_after_utc)


def load_document_signer(key_path: Path | str, cert_path: Path | str, *, rsa_pss: bool = True,
                         now: datetime | None = None) -> DocumentSigner:
    """The production DS: a PEM private key (0600) and its certificate (PEM or DER).

    Refused with ``bad_document_signer`` when the pair could only make chips that readers
    reject: the key is not the certificate's, the certificate is not valid now, its key's
    usage period is over, or it is not for digital signatures.
    """
    key_path, cert_path = Path(key_path), Path(cert_path)
    now = now or datetime.now(timezone.utc)
    key_bytes = _read_private(key_path)
    try:
        private_key = serialization.load_pem_private_key(key_bytes, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise StationError(f"{key_path} is not an unencrypted PEM private key ({exc}); the DS key must be "
                           f"PKCS#8 or traditional PEM without a passphrase", code="bad_document_signer") from None
    if not isinstance(private_key, (ec.EllipticCurvePrivateKey, rsa.RSAPrivateKey)):
        raise StationError(f"{key_path} holds a {type(private_key).__name__}; a Document Signer key is ECDSA "
                           f"or RSA", code="bad_document_signer")
    certificate = load_certificate(cert_path)
    fix = "ask the CSCA operator for a new Document Signer certificate"
    spki = serialization.PublicFormat.SubjectPublicKeyInfo
    if (private_key.public_key().public_bytes(serialization.Encoding.DER, spki)
            != certificate.public_key().public_bytes(serialization.Encoding.DER, spki)):
        raise StationError(f"{key_path} is not the private key of the certificate {cert_path} "
                           f"({certificate.subject.rfc4514_string()}): install the key and certificate that "
                           f"belong together", code="bad_document_signer")
    if not certificate.not_valid_before_utc <= now <= certificate.not_valid_after_utc:
        raise StationError(f"{cert_path}: the Document Signer certificate is valid from "
                           f"{certificate.not_valid_before_utc:%Y-%m-%d %H:%M} to "
                           f"{certificate.not_valid_after_utc:%Y-%m-%d %H:%M} UTC, not now "
                           f"({now:%Y-%m-%d %H:%M} UTC): {fix} (or check this machine's clock)",
                           code="bad_document_signer")
    try:
        usage = certificate.extensions.get_extension_for_class(x509.KeyUsage).value
    except x509.ExtensionNotFound:
        usage = None
    if usage is None or not usage.digital_signature:
        raise StationError(f"{cert_path}: the certificate's key usage does not include digitalSignature, so "
                           f"readers refuse what it signs: {fix}", code="bad_document_signer")
    try:
        period = certificate.extensions.get_extension_for_class(x509.PrivateKeyUsagePeriod).value
    except x509.ExtensionNotFound:
        period = None
    if period is not None and period.not_after is not None and now > period.not_after.replace(tzinfo=timezone.utc):
        raise StationError(f"{cert_path}: the Document Signer key may sign only until "
                           f"{period.not_after:%Y-%m-%d} (private key usage period): {fix}",
                           code="bad_document_signer")
    return DocumentSigner(private_key, certificate, rsa_pss)


def load_certificate(path: Path | str) -> x509.Certificate:
    """An X.509 certificate file, PEM or DER; ``bad_certificate`` naming the file otherwise."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise StationError(f"cannot read the certificate {path}: {exc.strerror}", code="bad_certificate") from None
    try:
        if b"-----BEGIN CERTIFICATE-----" in data:
            return x509.load_pem_x509_certificate(data)
        return x509.load_der_x509_certificate(data)
    except (ValueError, x509.InvalidVersion) as exc:
        raise StationError(f"{path} is not an X.509 certificate (PEM or DER): {exc}",
                           code="bad_certificate") from None


def _read_private(path: Path) -> bytes:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError as exc:
        raise StationError(f"cannot read the Document Signer key {path}: {exc.strerror}",
                           code="bad_document_signer") from None
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode) or mode & 0o077:
            raise StationError(f"{path} must be a regular file readable by its owner only (mode "
                               f"{stat.S_IMODE(mode):04o}); run: chmod 600 {path}", code="bad_permissions")
        with open(fd, "rb", closefd=False) as file:
            return file.read()
    finally:
        os.close(fd)


def _name(country: str, common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COUNTRY_NAME, country),
                      x509.NameAttribute(NameOID.ORGANIZATION_NAME, "TEST station PKI"),
                      x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _years(moment: datetime, years: int) -> datetime:
    try:
        return moment.replace(year=moment.year + years)
    except ValueError:  # 29 February
        return moment.replace(year=moment.year + years, day=28)


def _csca_certificate(key: ec.EllipticCurvePrivateKey, country: str, start: datetime) -> x509.Certificate:
    usage_end = _years(start, CSCA_KEY_USAGE_YEARS)
    name = _name(country, f"TEST CSCA {country}")
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    return (x509.CertificateBuilder()
            .subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(start)
            .not_valid_after(_years(usage_end + DS_KEY_USAGE, DOCUMENT_VALIDITY_YEARS))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False, key_encipherment=False,
                                         data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                         crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
            .add_extension(ski, critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False)
            .add_extension(x509.PrivateKeyUsagePeriod(start, usage_end), critical=False)
            .sign(key, hashes.SHA256()))


def _ds_certificate(key: ec.EllipticCurvePrivateKey, csca_key: ec.EllipticCurvePrivateKey,
                    csca: x509.Certificate, start: datetime) -> x509.Certificate:
    country = csca.subject.get_attributes_for_oid(NameOID.COUNTRY_NAME)[0].value
    usage_end = start + DS_KEY_USAGE
    document_types = DocumentTypeList({"version": 0, "doc_type_list": list(DOCUMENT_TYPES)}).dump()
    csca_ski = csca.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    return (x509.CertificateBuilder()
            .subject_name(_name(country, f"TEST Document Signer {country} 1")).issuer_name(csca.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(start)
            .not_valid_after(_years(usage_end, DOCUMENT_VALIDITY_YEARS))
            .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                                         data_encipherment=False, key_agreement=False, key_cert_sign=False,
                                         crl_sign=False, encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(csca_ski), critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .add_extension(x509.PrivateKeyUsagePeriod(start, usage_end), critical=False)
            .add_extension(x509.UnrecognizedExtension(x509.ObjectIdentifier(DOCUMENT_TYPE_LIST_OID), document_types),
                           critical=False)
            .sign(csca_key, hashes.SHA256()))
