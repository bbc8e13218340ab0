"""Passive authentication of a chip's files (ICAO Doc 9303 Part 11 5.1), ours or anyone's.

The files come as a directory of EF.COM, DG1 ... DG16 and EF.SOD, as a reader dumps them or as
``station/lds.py`` writes them. Every step is a ``Check`` with a verdict and a sentence a field
engineer can act on, so a refused chip says which file changed, and an accepted one says how
far it was proven: without the country's CSCA certificate the signature shows only that the
files match the Document Signer certificate inside EF.SOD, not that a country issued it, and
the result says the chain was not checked.

  1. each file is one TLV with its own tag, filling the file
  2. EF.SOD is CMS SignedData over an LDSSecurityObject
  3. each data group's hash is the one EF.SOD lists; listed but absent, present but not
     listed, are failures; EF.COM lists the same data groups; an ECDSA Active
     Authentication key in DG15 has DG14 name its signature algorithm
  4. the signed attributes hold the eContent's type and digest; the signature over them
     verifies with the DS certificate's key; the DS certificate is valid now and signs
  5. with a CSCA: the CSCA issued the DS certificate (name and signature) and is valid now
"""
from __future__ import annotations

import hashlib
import hmac
import re
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Mapping

from asn1crypto import cms, core
from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa

from station import lds
from station.errors import StationError

PASS, FAIL, NOT_CHECKED = "pass", "fail", "not_checked"
_FILE_NAME = re.compile(r"EF\.COM|EF\.SOD|DG([1-9]|1[0-6])")
_HASHES = {"sha1": hashes.SHA1, "sha224": hashes.SHA224, "sha256": hashes.SHA256, "sha384": hashes.SHA384,
           "sha512": hashes.SHA512}
_HASH_NAMES = {"sha1": "SHA-1", "sha224": "SHA-224", "sha256": "SHA-256", "sha384": "SHA-384", "sha512": "SHA-512"}
_ASN1_ERRORS = (ValueError, TypeError, KeyError, IndexError, OverflowError)  # what asn1crypto raises on bad input


@dataclass(frozen=True)
class Check:
    """One step of the verification: ``name`` (e.g. ``DG2 hash``), PASS / FAIL / NOT_CHECKED."""

    name: str
    status: str
    message: str

    def to_dict(self) -> dict[str, str]:
        return {"check": self.name, "status": self.status, "message": self.message}


@dataclass
class ChipVerification:
    """Every check made on one set of chip files, in order.

    ``valid``: no check failed. ``chain_checked``: the DS certificate was proven against a
    CSCA; a valid set without it is intact and self-consistent, not proven authentic.
    """

    source: str
    files: list[str]
    checks: list[Check] = field(default_factory=list)

    def add(self, name: str, status: str, message: str) -> bool:
        self.checks.append(Check(name, status, message))
        return status != FAIL

    @property
    def valid(self) -> bool:
        return bool(self.checks) and all(check.status != FAIL for check in self.checks)

    @property
    def chain_checked(self) -> bool:
        return any(c.name == "certificate chain" and c.status == PASS for c in self.checks)

    @property
    def failures(self) -> list[Check]:
        return [check for check in self.checks if check.status == FAIL]

    def verdict(self) -> str:
        if not self.valid:
            return f"INVALID: {len(self.failures)} check(s) failed; do not issue or accept this chip"
        if self.chain_checked:
            return "VALID: the data groups are intact and signed by a Document Signer of the CSCA given"
        return ("VALID as far as checked: the data groups are intact and match the signature, but the "
                "Document Signer certificate was NOT checked against a CSCA (give --csca CERT)")

    def to_dict(self) -> dict[str, Any]:
        return {"source": self.source, "files": self.files, "valid": self.valid,
                "chain_checked": self.chain_checked, "verdict": self.verdict(),
                "checks": [check.to_dict() for check in self.checks]}

    def report(self) -> str:
        labels = {PASS: "PASS", FAIL: "FAIL", NOT_CHECKED: "NOT CHECKED"}
        lines = [f"chip files in {self.source}: {' '.join(self.files) or 'none'}"]
        lines += [f"{labels[c.status]:<12} {c.name}: {c.message}" for c in self.checks]
        lines.append(self.verdict())
        return "\n".join(lines)


@dataclass(frozen=True)
class _Sod:
    """What EF.SOD says, taken out of asn1crypto's lazy objects (so a malformed part fails
    while parsing, in one place)."""

    content_type: str
    content: bytes
    hash_algorithm: str
    hashes: dict[int, bytes]
    signer_infos: int
    digest_algorithm: str
    digest_algorithms: list[str]
    signed_attrs: bytes | None  # DER as signed: the SET (tag 31), not the [0] of SignerInfo
    attributes: dict[str, list[Any]]
    signature_algorithm: Any  # asn1crypto SignedDigestAlgorithm
    signature: bytes
    certificate: x509.Certificate | None
    certificates: int


def verify_directory(directory: Path | str, csca: x509.Certificate | None = None, *,
                     now: datetime | None = None) -> ChipVerification:
    """Verify the chip files in ``directory`` (other files are ignored)."""
    directory = Path(directory)
    try:
        names = sorted(p.name for p in directory.iterdir() if p.is_file() and _FILE_NAME.fullmatch(p.name))
        files = {name: (directory / name).read_bytes() for name in names}
    except OSError as exc:
        raise StationError(f"cannot read chip files from {directory}: {exc.strerror}",
                           code="chip_files_unreadable") from None
    return verify_files(files, csca, now=now, source=str(directory))


def verify_files(files: Mapping[str, bytes], csca: x509.Certificate | None = None, *,
                 now: datetime | None = None, source: str = "files") -> ChipVerification:
    """Passive authentication of ``files`` (name -> bytes, names as in ``lds.FILES``; others
    are ignored)."""
    now = now or datetime.now(timezone.utc)
    order = list(lds.FILES)
    files = {name: files[name] for name in order if name in files}
    result = ChipVerification(source, list(files))
    for name in result.files:
        _check_structure(result, name, files[name])
    if "EF.SOD" not in files:
        result.add("EF.SOD", FAIL, "missing: without the Document Security Object nothing on this chip can be "
                                   "verified; read EF.SOD (file 011D) too")
        return result
    sod = _parse_sod(result, files["EF.SOD"])
    if sod is None:
        return result
    _check_hashes(result, files, sod)
    _check_active_authentication_info(result, files)
    _check_signature(result, sod)
    _check_document_signer(result, sod, now)
    _check_chain(result, sod, csca, now)
    return result


def _check_structure(result: ChipVerification, name: str, data: bytes) -> None:
    spec = lds.FILES[name]
    try:
        lds.read_file(name, data)
    except lds.LdsError as exc:
        result.add(f"{name} structure", FAIL, f"{exc.message}; the file is damaged or not an {name}")
        return
    result.add(f"{name} structure", PASS, f"one TLV with tag {spec.tag:02X}, {len(data)} bytes")


def _parse_sod(result: ChipVerification, data: bytes) -> _Sod | None:
    try:
        info = _load(cms.ContentInfo, lds.read_file("EF.SOD", data))
        if info["content_type"].native != "signed_data":
            raise ValueError(f"the content type is {info['content_type'].dotted}, not signedData")
        signed = info["content"]
        if signed["version"].native != "v3":
            raise ValueError(f"SignedData version is {signed['version'].native}; an EF.SOD's is v3")
        encap = signed["encap_content_info"]
        content = bytes(encap["content"]) if encap["content"] else b""
        security_object = _load(lds.LdsSecurityObject, content)
        version = security_object["version"].native
        if version not in (0, 1) or (version == 1) != bool(security_object["lds_version_info"]):
            raise ValueError(f"LDSSecurityObject version {version} (0 without ldsVersionInfo, 1 with it)")
        hash_algorithm = security_object["hash_algorithm"]["algorithm"].native
        if hash_algorithm not in _HASHES:
            raise ValueError(f"hash algorithm {hash_algorithm} is not one of Doc 9303's "
                             f"({', '.join(_HASH_NAMES.values())})")
        dg_hashes: dict[int, bytes] = {}
        for item in security_object["data_group_hash_values"]:
            number = item["data_group_number"].native
            if number not in lds.DATA_GROUPS or number in dg_hashes:
                raise ValueError(f"data group number {number} is not 1-16 or is listed twice")
            dg_hashes[number] = item["data_group_hash_value"].native
        signer_infos = list(signed["signer_infos"])
        if not signer_infos:
            raise ValueError("SignedData has no SignerInfo")
        signer = signer_infos[0]
        expected = "v1" if signer["sid"].name == "issuer_and_serial_number" else "v3"
        if signer["version"].native != expected:
            raise ValueError(f"SignerInfo version {signer['version'].native} with a {signer['sid'].name} "
                             f"signer id (RFC 5652 requires {expected})")
        signed_attrs = None
        attributes: dict[str, list[Any]] = {}
        if signer["signed_attrs"]:
            raw = signer["signed_attrs"].dump()
            signed_attrs = b"\x31" + raw[1:]
            for attribute in signer["signed_attrs"]:
                attributes.setdefault(attribute["type"].native, []).extend(v.native for v in attribute["values"])
        certificates = [choice.chosen for choice in (signed["certificates"] or [])
                        if choice.name == "certificate"]
        ds_certificate = next((c for c in certificates if _identifies(signer["sid"], c)), None)
        sod = _Sod(
            content_type=encap["content_type"].dotted, content=content, hash_algorithm=hash_algorithm,
            hashes=dg_hashes, signer_infos=len(signer_infos),
            digest_algorithm=signer["digest_algorithm"]["algorithm"].native,
            digest_algorithms=[a["algorithm"].native for a in signed["digest_algorithms"]],
            signed_attrs=signed_attrs, attributes=attributes,
            signature_algorithm=signer["signature_algorithm"], signature=signer["signature"].native,
            certificate=x509.load_der_x509_certificate(ds_certificate.dump()) if ds_certificate else None,
            certificates=len(certificates))
    except lds.LdsError as exc:
        result.add("EF.SOD content", FAIL, exc.message)
        return None
    except (*_ASN1_ERRORS, x509.InvalidVersion) as exc:
        result.add("EF.SOD content", FAIL, f"not a CMS SignedData over an LDSSecurityObject: {exc}")
        return None
    if sod.content_type != lds.LDS_SECURITY_OBJECT_OID:
        result.add("EF.SOD content", FAIL, f"the signed content type is {sod.content_type}, not "
                                           f"{lds.LDS_SECURITY_OBJECT_OID} (LDSSecurityObject)")
        return None
    result.add("EF.SOD content", PASS, f"CMS SignedData over an LDSSecurityObject: {_HASH_NAMES[sod.hash_algorithm]} "
                                       f"of {', '.join(f'DG{n}' for n in sorted(sod.hashes))}")
    return sod


def _load(spec: type[core.Asn1Value], der: bytes) -> Any:
    """``der`` as ``spec`` with every part parsed now, so a malformed field anywhere fails here
    and not at a later access. asn1crypto 1.5 raises AttributeError for some unexpected
    universal tags (REAL): that is malformed input too."""
    try:
        value = spec.load(der, strict=True)
        value.native
    except AttributeError as exc:
        raise ValueError(f"an unexpected ASN.1 type inside ({exc})") from None
    return value


def _identifies(sid: cms.SignerIdentifier, certificate: Any) -> bool:
    if sid.name == "issuer_and_serial_number":
        return (certificate.issuer == sid.chosen["issuer"]
                and certificate.serial_number == sid.chosen["serial_number"].native)
    return certificate.key_identifier == sid.chosen.native


def _check_hashes(result: ChipVerification, files: Mapping[str, bytes], sod: _Sod) -> None:
    present = {number for number, dg in lds.DATA_GROUPS.items() if dg.name in files}
    algorithm = _HASH_NAMES[sod.hash_algorithm]
    for number in sorted(present | set(sod.hashes)):
        name = f"DG{number}"
        if number not in present:
            result.add(f"{name} hash", FAIL, f"EF.SOD lists {name} but there is no file {name}: read it from the "
                                             f"chip again (file {lds.DATA_GROUPS[number].file_id:04X}); a chip "
                                             f"that lacks it was not written completely")
        elif number not in sod.hashes:
            result.add(f"{name} hash", FAIL, f"{name} is present but EF.SOD does not list it, so nothing protects "
                                             f"it: it was added after signing or EF.SOD is not this chip's")
        else:
            actual = hashlib.new(sod.hash_algorithm, files[name]).digest()
            if hmac.compare_digest(actual, sod.hashes[number]):
                result.add(f"{name} hash", PASS, f"{algorithm} matches EF.SOD")
            else:
                result.add(f"{name} hash", FAIL, f"{name} changed after signing: its {algorithm} is "
                                                 f"{actual.hex()[:16]}…, EF.SOD says {sod.hashes[number].hex()[:16]}…")
    if "EF.COM" in files:
        try:
            listed = set(lds.ef_com_data_groups(files["EF.COM"]))
        except lds.LdsError as exc:
            result.add("EF.COM data groups", FAIL, exc.message)
            return
        if listed == set(sod.hashes):
            result.add("EF.COM data groups", PASS, "EF.COM lists the data groups EF.SOD lists")
        else:
            result.add("EF.COM data groups", FAIL,
                       f"EF.COM lists {_groups(listed)}, EF.SOD {_groups(set(sod.hashes))}: a reader following "
                       f"EF.COM misses or looks for data groups (EF.COM is not signed; the encoder wrote it wrong)")
    else:
        result.add("EF.COM data groups", NOT_CHECKED, "no EF.COM: the data groups were taken from EF.SOD alone")


def _check_active_authentication_info(result: ChipVerification, files: Mapping[str, bytes]) -> None:
    """An ECDSA key in DG15 needs DG14's ActiveAuthenticationInfo to name its signature
    algorithm (Doc 9303-11), or an inspection system cannot check Active Authentication."""
    if "DG15" not in files:
        return
    name = "Active Authentication info"
    try:
        key = serialization.load_der_public_key(lds.read_file("DG15", files["DG15"]))
    except (lds.LdsError, ValueError, UnsupportedAlgorithm) as exc:
        result.add(name, FAIL, f"DG15 holds no public key ({exc})")
        return
    if not isinstance(key, ec.EllipticCurvePublicKey):
        result.add(name, PASS, f"DG15 holds a {type(key).__name__}: RSA Active Authentication needs no DG14")
        return
    if "DG14" not in files:
        result.add(name, FAIL, "DG15 holds an ECDSA key but there is no DG14 to name its signature algorithm")
        return
    try:
        algorithm = lds.aa_signature_algorithm(files["DG14"])
    except lds.LdsError as exc:
        result.add(name, FAIL, exc.message)
        return
    if algorithm is None:
        result.add(name, FAIL, "DG15 holds an ECDSA key but DG14 has no ActiveAuthenticationInfo")
    elif algorithm not in _ECDSA_PLAIN:
        result.add(name, FAIL, f"DG14 names {algorithm}, not an ECDSA plain-signature algorithm of BSI TR-03111")
    else:
        result.add(name, PASS, f"DG14 names {_ECDSA_PLAIN[algorithm]} for DG15's ECDSA key")


# BSI TR-03111 ecdsa-plain-signatures (0.4.0.127.0.7.1.1.4.1), by hash
_ECDSA_PLAIN = {f"0.4.0.127.0.7.1.1.4.1.{n}": f"ecdsa-plain-{h}"
                for n, h in ((1, "SHA1"), (2, "SHA224"), (3, "SHA256"), (4, "SHA384"), (5, "SHA512"))}


def _groups(numbers: set[int]) -> str:
    return ", ".join(f"DG{n}" for n in sorted(numbers)) or "none"


def _check_signature(result: ChipVerification, sod: _Sod) -> None:
    if sod.signer_infos != 1:
        result.add("SOD signer", FAIL, f"EF.SOD has {sod.signer_infos} SignerInfos; Doc 9303 allows exactly one")
        return
    if sod.certificate is None:
        result.add("SOD signer", FAIL, f"none of the {sod.certificates} certificate(s) in EF.SOD is the one its "
                                       f"SignerInfo names: the Document Signer certificate is missing")
        return
    result.add("SOD signer", PASS, f"Document Signer {sod.certificate.subject.rfc4514_string()}")
    digest = sod.digest_algorithm
    if sod.signed_attrs is None:
        result.add("SOD signed attributes", FAIL, "the SignerInfo has no signed attributes; Doc 9303 requires "
                                                  "contentType and messageDigest")
        return
    problems = []
    if digest not in _HASHES:
        problems.append(f"digest algorithm {digest} is not one of Doc 9303's")
    elif digest not in sod.digest_algorithms:
        problems.append(f"digest algorithm {digest} is not among SignedData's digestAlgorithms")
    if sod.attributes.get("content_type") != [lds.LDS_SECURITY_OBJECT_OID]:
        problems.append(f"contentType attribute {sod.attributes.get('content_type')} is not the LDSSecurityObject's")
    if digest in _HASHES and sod.attributes.get("message_digest") != [hashlib.new(digest, sod.content).digest()]:
        problems.append("messageDigest is not the digest of the LDSSecurityObject: the hashes were changed "
                        "after signing")
    if problems:
        result.add("SOD signed attributes", FAIL, "; ".join(problems))
        return
    result.add("SOD signed attributes", PASS, f"contentType LDSSecurityObject, messageDigest ({_HASH_NAMES[digest]}) "
                                              f"matches the LDSSecurityObject")
    try:
        _verify(sod.certificate.public_key(), sod.signature, sod.signed_attrs, sod.signature_algorithm, digest)
    except InvalidSignature:
        result.add("SOD signature", FAIL, "the signature does not verify with the Document Signer certificate's "
                                          "key: EF.SOD was altered or signed by another key")
        return
    except (ValueError, TypeError, KeyError, UnsupportedAlgorithm) as exc:
        result.add("SOD signature", FAIL, f"cannot be verified ({_algorithm_name(sod.signature_algorithm, digest)}): "
                                          f"{exc}")
        return
    result.add("SOD signature", PASS, f"{_algorithm_name(sod.signature_algorithm, digest)} signature verifies with "
                                      f"the Document Signer certificate's key")


def _algorithm_name(algorithm: Any, digest_name: str) -> str:
    """``ECDSA with SHA-256``: a signature algorithm as a field engineer reads it."""
    kinds = {"ecdsa": "ECDSA", "rsassa_pss": "RSA-PSS", "rsassa_pkcs1v15": "RSA PKCS#1 v1.5"}
    try:
        kind = kinds.get(algorithm.signature_algo, algorithm.signature_algo)
    except ValueError:
        return f"signature algorithm {algorithm['algorithm'].dotted}"
    try:
        digest = algorithm.hash_algo
    except (ValueError, TypeError, KeyError):
        digest = digest_name
    return f"{kind} with {_HASH_NAMES.get(digest, digest)}"


def _verify(public_key: Any, signature: bytes, data: bytes, algorithm: Any, digest_name: str) -> None:
    """Verify a CMS signature; ``InvalidSignature`` when it does not, ValueError when the
    algorithm and key do not go together."""
    kind = algorithm.signature_algo
    try:
        digest = _HASHES[algorithm.hash_algo]()
    except ValueError:  # rsaEncryption / ecPublicKey alone: the hash is the SignerInfo's digest
        digest = _HASHES[digest_name]()
    if kind == "ecdsa" and isinstance(public_key, ec.EllipticCurvePublicKey):
        public_key.verify(signature, data, ec.ECDSA(digest))
    elif kind == "rsassa_pkcs1v15" and isinstance(public_key, rsa.RSAPublicKey):
        public_key.verify(signature, data, padding.PKCS1v15(), digest)
    elif kind == "rsassa_pss" and isinstance(public_key, rsa.RSAPublicKey):
        params = algorithm["parameters"]
        mgf_hash = _HASHES[params["mask_gen_algorithm"]["parameters"]["algorithm"].native]()
        public_key.verify(signature, data, padding.PSS(padding.MGF1(mgf_hash), params["salt_length"].native), digest)
    else:
        raise ValueError(f"signature algorithm {algorithm['algorithm'].native} does not fit a "
                         f"{type(public_key).__name__.removeprefix('_')}")


def _check_document_signer(result: ChipVerification, sod: _Sod, now: datetime) -> None:
    certificate = sod.certificate
    if certificate is None:
        return
    problems = []
    if not certificate.not_valid_before_utc <= now <= certificate.not_valid_after_utc:
        problems.append(f"valid {certificate.not_valid_before_utc:%Y-%m-%d} to "
                        f"{certificate.not_valid_after_utc:%Y-%m-%d}, not on {now:%Y-%m-%d}")
    try:
        usage = certificate.extensions.get_extension_for_class(x509.KeyUsage).value
        if not usage.digital_signature:
            problems.append("its key usage lacks digitalSignature")
    except x509.ExtensionNotFound:
        pass
    except ValueError as exc:
        problems.append(f"its extensions do not parse ({exc})")
    if problems:
        result.add("DS certificate", FAIL, f"{certificate.subject.rfc4514_string()}: {'; '.join(problems)}")
    else:
        result.add("DS certificate", PASS, f"valid until {certificate.not_valid_after_utc:%Y-%m-%d}")


def _check_chain(result: ChipVerification, sod: _Sod, csca: x509.Certificate | None, now: datetime) -> None:
    if sod.certificate is None:
        return
    if csca is None:
        result.add("certificate chain", NOT_CHECKED,
                   "no CSCA certificate given (--csca CERT): the signature proves the files match the Document "
                   "Signer certificate inside EF.SOD, not that the issuing country made it")
        return
    name = csca.subject.rfc4514_string()
    try:
        sod.certificate.verify_directly_issued_by(csca)
    except ValueError:
        result.add("certificate chain", FAIL,
                   f"the Document Signer certificate was issued by {sod.certificate.issuer.rfc4514_string()}, "
                   f"not by the CSCA given ({name})")
        return
    except InvalidSignature:
        result.add("certificate chain", FAIL, f"the Document Signer certificate names {name} as issuer but its "
                                              f"signature does not verify with that CSCA's key: it is forged or "
                                              f"from another CSCA with the same name")
        return
    except (TypeError, UnsupportedAlgorithm) as exc:
        result.add("certificate chain", FAIL, f"cannot check the Document Signer certificate against {name}: {exc}")
        return
    if not csca.not_valid_before_utc <= now <= csca.not_valid_after_utc:
        result.add("certificate chain", FAIL, f"the CSCA {name} is valid {csca.not_valid_before_utc:%Y-%m-%d} to "
                                              f"{csca.not_valid_after_utc:%Y-%m-%d}, not on {now:%Y-%m-%d}")
        return
    result.add("certificate chain", PASS, f"the Document Signer certificate was issued by the CSCA {name}")
