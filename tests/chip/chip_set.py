"""What the chip tests share: chip portraits drawn with OpenCV, a set of chip files written
to a directory, a Document Signer certificate of any key type issued by a test CSCA."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone
from pathlib import Path

import cv2
import numpy as np
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization

from station import pki


def portrait_image() -> np.ndarray:
    image = np.full((160, 120, 3), 235, np.uint8)
    cv2.ellipse(image, (60, 78), (38, 50), 0, 0, 360, (120, 160, 210), -1)
    cv2.circle(image, (46, 70), 5, (40, 40, 40), -1)
    cv2.circle(image, (74, 70), 5, (40, 40, 40), -1)
    return image


def chip_portrait_jp2() -> bytes:
    ok, encoded = cv2.imencode(".jp2", portrait_image(), [cv2.IMWRITE_JPEG2000_COMPRESSION_X1000, 100])
    assert ok
    return encoded.tobytes()


def chip_portrait_jpeg() -> bytes:
    ok, encoded = cv2.imencode(".jpg", portrait_image(), [cv2.IMWRITE_JPEG_QUALITY, 80])
    assert ok
    return encoded.tobytes()


def write_files(directory: Path, files: dict[str, bytes]) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        (directory / name).write_bytes(data)
    return directory


def issue_document_signer(test_pki: pki.TestPki, private_key, *, key_usage: x509.KeyUsage | None = None,
                          not_before: datetime | None = None, days: int = 365) -> x509.Certificate:
    """A DS certificate for ``private_key`` issued by ``test_pki``'s CSCA, with other choices
    than ``init_test`` makes (key type, key usage, validity)."""
    csca = pki.load_certificate(test_pki.csca_cert)
    csca_key = serialization.load_pem_private_key(test_pki.csca_key.read_bytes(), None)
    start = not_before or datetime.now(timezone.utc) - timedelta(minutes=5)
    usage = key_usage or x509.KeyUsage(True, False, False, False, False, False, False, False, False)
    return (x509.CertificateBuilder()
            .subject_name(x509.Name.from_rfc4514_string("CN=TEST other Document Signer,C=VN"))
            .issuer_name(csca.subject).public_key(private_key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(start).not_valid_after(start + timedelta(days=days))
            .add_extension(usage, critical=True)
            .sign(csca_key, hashes.SHA256()))


def write_pem(path: Path, certificate: x509.Certificate | None = None, private_key=None) -> Path:
    if certificate is not None:
        path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    else:
        path.write_bytes(private_key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                   serialization.NoEncryption()))
        path.chmod(0o600)
    return path
