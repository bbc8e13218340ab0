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
