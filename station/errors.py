"""One flat hierarchy of errors, each a value an operator or engineer can act on.

Every error carries a short machine ``code`` (what a remote peer sees in a structured
reply), a human ``message`` (what failed, where, what to do) and whether retrying the same
request may succeed.
"""
from __future__ import annotations


class StationError(Exception):
    """Base of every error the station raises on purpose."""

    code = "error"
    retryable = False
    details: dict | None = None  # structured findings a UI shows next to its fields
    exit_status: int = 1  # a daemon that cannot start because of it exits with this (sysexits)

    def __init__(self, message: str, *, code: str | None = None, retryable: bool | None = None):
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        if retryable is not None:
            self.retryable = retryable

    def as_reply(self) -> dict:
        """The structured form sent over the bus: ``{code, message, retryable}``."""
        reply = {"code": self.code, "message": self.message, "retryable": self.retryable}
        if self.details:
            reply["details"] = self.details
        return reply


class BadRequest(StationError):
    """The request is malformed or an argument is wrong; the message names which."""

    code = "bad_request"


class ConfigError(StationError):
    """A configuration file is invalid; ``problems`` lists each finding (file:line: key: why)."""

    code = "config_invalid"

    def __init__(self, problems: list[str]):
        self.problems = list(problems)
        super().__init__("\n".join(self.problems) or "invalid configuration")


class DeviceError(StationError):
    """The device failed or is absent (unplugged, no reply, refused a command)."""

    code = "device_error"
    retryable = True


class ProtocolError(StationError):
    """Bytes on a wire did not follow the protocol (bad checksum, start code, length)."""

    code = "protocol_error"
    retryable = True


class DeadlineExceeded(StationError):
    """A request did not complete before its deadline."""

    code = "deadline_exceeded"
    retryable = True


class CommandError(StationError):
    """A command failed on the remote side; carries the remote's structured error."""

    code = "command_failed"

    @classmethod
    def from_reply(cls, error: dict) -> "CommandError":
        exc = cls(
            str(error.get("message", "")),
            code=str(error.get("code", "error")),
            retryable=bool(error.get("retryable", False)),
        )
        if isinstance(error.get("details"), dict):
            exc.details = error["details"]
        return exc


# Every code a peer may read in an error reply, and what it tells the caller. One set, so a
# console can translate each and a test can hold raise sites to it. ``fingerprint_<name>``
# codes are the sensor's own confirmation codes (drivers/fingerprint/protocol.py).
CODES: dict[str, str] = {
    # requests
    "bad_request": "the request or one of its arguments is wrong; the message names it",
    "unknown_command": "the daemon has no such command; the message lists those it has",
    "deadline_exceeded": "the request did not complete before its deadline",
    "stopping": "the daemon is shutting down; ask again once it is back",
    "internal": "a bug; the daemon's log has the traceback",
    "busy": "the device or session is busy with another request; retry shortly",
    "command_failed": "a command failed on the remote side",
    "error": "an error without a more specific code",
    "insecure": "refused: plain TCP without CURVE",
    # configuration and keys
    "config_invalid": "a configuration file is invalid; each problem names file, line and key",
    "not_provisioned": "station keys or central's public key are missing: run stationctl provision",
    "bad_permissions": "a private key file is readable by others or is a link",
    "bad_station_id": "not a valid station id",
    "station_id_conflict": "the keys belong to another station id (use --rotate to re-key)",
    "bad_key": "a key file does not hold the expected keys",
    "keyring_error": "the key directory cannot be used",
    "keyring_io": "the key directory cannot be written",
    "capture_corrupt": "an encrypted capture does not decrypt (wrong key or damaged)",
    # devices
    "device_error": "the device failed or is absent (unplugged, silent)",
    "protocol_error": "bytes on the wire did not follow the protocol",
    # the card printer's answers (drivers/printer/protocol.py ERRORS)
    "printer_command": "the printer does not know the command: check that the printer model and firmware are supported",
    "printer_parameter": "the printer refused a parameter of the command: check the ribbon and options configured for this printer",
    "printer_jam": "the card jammed or a mechanism timed out: reject the card and print on a new one; if the card stays stuck, open the cover and remove it",
    "printer_cover_open": "the printer's cover is open: close the cover",
    "printer_feeder": "no card came from the card input: load cards into the feeder and check that they are not stuck together",
    "printer_ribbon": "the ribbon is ended, missing or of the wrong type: replace the ribbon",
    "printer_error": "the printer reported an unknown error: check the printer's display and its firmware version",
    "driver_offline": "the driver daemon is not running or not heard from",
    "cancelled": "the operator cancelled the capture",
    "no_finger": "no finger was placed in time",
    "no_fingerprint": "the image holds no usable fingerprint; place the finger again",
    "no_face": "no usable face was seen in time",
    "biometrics_failed": "the biometric library failed on an image",
    "bad_template": "a fingerprint template is not ISO/IEC 19794-2",
    # sessions
    "no_session": "no open session with that id",
    "session_error": "the session cannot do that now",
    "session_closed": "the session has ended (finished, cancelled or expired)",
    "wrong_step": "not at this step of the session; the message says what is next",
    "incomplete": "the session lacks a capture; the message says which",
    "duplicate_finger": "the finger matches another position of the applicant",
    "invalid_demographics": "an applicant field is wrong; details.problems names each",
    "disk_low": "free disk below the configured floor; no new session",
    # records and the store
    "store_error": "the store could not be read or written",
    "store_busy": "another process holds the store's writer lock",
    "not_found": "no record with that id",
    "purged": "the record was confirmed by central and its sealed payload purged here",
    "record_corrupt": "a stored record does not match its hash",
    "capture_missing": "a session capture is missing from the store",
    "bad_record": "a record cannot be built from what was given",
    "print_job_state": "the print job cannot do that in its state; the message says what it allows",
    "encoding_failed": "the card's chip could not be written or did not verify; the card is rejected",
    "font_missing": "a font the card layout names is not installed; the message names the Debian package",
    "bad_seal": "a sealed record is invalid",
    "bad_format": "a sealed record does not follow the envelope format",
    "bad_input": "refused to seal: bad record id, content type or size",
    "bad_signature": "a station signature does not verify",
    "wrong_station": "the record is not signed by the station it names",
    "hash_mismatch": "a sealed record's content does not match its signed hashes",
    "decrypt_failed": "the record is sealed to another central key, or damaged",
    # delivery to central (station/link.py)
    "storage_unavailable": "the collector's storage cannot write now; the station retries",
    "spool_full": "a station's unfinished records fill its share of the collector's spool; the station retries",
    "event_gap": "events do not follow the last one the collector stored; details.expected says which",
    "record_conflict": "a record with that id but other content is stored already",
    "record_too_large": "the record is larger than the collector's storage accepts",
    "not_allowed": "the station is unknown or revoked at the collector",
    "store_not_ready": "the record store has not been created or migrated by the controller yet",
    # the chip's data and its signing PKI (station/lds.py, station/pki.py, station/chip_verify.py)
    "bad_lds": "a chip file does not follow the ICAO 9303 LDS encoding; the message names the file and offset",
    "chip_files_unreadable": "the directory of chip files (EF.COM, DG1, ..., EF.SOD) cannot be read",
    "bad_document_signer": "the Document Signer key or certificate cannot sign chips: mismatched, expired, past its key usage period or not for signatures",
    "bad_certificate": "a certificate file cannot be read or is not an X.509 certificate",
    "test_pki_exists": "a test PKI already exists in that directory; remove it or choose another",
    # the console's sign-in (station/console/accounts.py)
    "bad_credentials": "wrong user name or password",
    "locked": "the account is locked after too many failed sign-ins; retry_after_s says for how long",
}
