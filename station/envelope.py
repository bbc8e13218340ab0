"""The message envelope, pure: frames in, a checked ``Message`` out, and back.

A message is multipart ``[topic][header JSON][payload 0][payload 1]…``. The topic is
``<kind>.<name>.<event>`` so a subscriber can filter by prefix; the header is a JSON object
that describes itself (version, source, boot, sequence, times, image geometry); payloads are
raw bytes, never base64 and never pickle. Decoding never trusts the sender: every field is
checked and a malformed message raises ``MalformedMessage`` with a short reason that a
subscriber counts, logs once and drops.
"""
from __future__ import annotations

import re
import secrets
import time
from dataclasses import dataclass, field
from collections.abc import Mapping
from typing import Any, Sequence

import orjson

ENVELOPE_VERSION = 1

# Raw pixel encodings whose payload size follows from the geometry; the others are compressed.
RAW_ENCODINGS = {"bgr8": 3, "gray8": 1}
IMAGE_ENCODINGS = set(RAW_ENCODINGS) | {"jpeg", "png", "wsq", "jp2"}
MAX_HEADER_BYTES = 64 * 1024
# Headers are small and many: orjson is several times faster than the json module both
# ways, and numpy scalars in a quality report serialise without conversion.
_JSON_OPTIONS = orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS


def dump_json(value: Any) -> bytes:
    return orjson.dumps(value, option=_JSON_OPTIONS)


class MalformedMessage(ValueError):
    """A message that does not follow the envelope; ``reason`` is a short, countable key.
    ``corr`` is the correlation id of a request that could still be answered."""

    def __init__(self, reason: str, detail: str = "", corr: str | None = None):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.corr = corr


def new_boot_id() -> str:
    """A random id per process start, so subscribers notice a restart even if seq restarts."""
    return secrets.token_hex(8)


@dataclass
class Message:
    topic: str
    header: dict[str, Any]
    payloads: list[Any] = field(default_factory=list)

    @property
    def kind(self) -> str:
        return self.topic.split(".", 2)[0]

    @property
    def src(self) -> str:
        return self.header["src"]

    @property
    def event(self) -> str:
        return self.topic.split(".", 2)[2]

    @property
    def seq(self) -> int:
        return self.header["seq"]

    @property
    def boot(self) -> str:
        return self.header["boot"]

    def get(self, key: str, default: Any = None) -> Any:
        return self.header.get(key, default)

    def payload(self, name: str) -> Any:
        """The payload the header names ``name``; KeyError naming those there are."""
        names = self.header.get("payloads", [])
        if name not in names:
            raise KeyError(f"{self.topic} has no payload {name!r} (it has {names})")
        return self.payloads[names.index(name)]


def topic_for(kind: str, name: str, event: str) -> str:
    return f"{kind}.{name}.{event}"


def make_header(
    src: str, boot: str, seq: int, fields: dict[str, Any] | None = None, t_acq_ns: int | None = None
) -> dict[str, Any]:
    header: dict[str, Any] = dict(fields or {})
    header.update(v=ENVELOPE_VERSION, src=src, boot=boot, seq=seq, t_pub_ns=time.time_ns())
    if t_acq_ns is not None:
        header["t_acq_ns"] = t_acq_ns
    return header


Payloads = Mapping[str, Any]
PAYLOAD_NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")


def name_payloads(header: dict[str, Any], payloads: Payloads) -> list[Any]:
    """Name the payloads in the header (``payloads: [name, ...]``, in frame order) and
    return them as frames: what travels is known by its name, not its position."""
    if payloads:
        header["payloads"] = list(payloads)
    return list(payloads.values())


def payload_names(header: dict[str, Any], count: int) -> list[str]:
    """The names of a message's ``count`` payloads; a header that names them wrongly is
    malformed (a reader must never take a template for an image)."""
    names = header.get("payloads", [])
    if (not isinstance(names, list) or len(names) != count or len(set(names)) != count
            or not all(isinstance(n, str) and PAYLOAD_NAME.fullmatch(n) for n in names)):
        raise MalformedMessage("bad_payload_names", f"{count} payload(s), names {str(names)[:80]}")
    return names


def encode(topic: str, header: dict[str, Any], payloads: Payloads | None = None) -> list[Any]:
    """Frames ready for ``send_multipart``; payloads pass through untouched (zero-copy)."""
    parts = name_payloads(header, payloads or {})
    return [topic.encode(), dump_json(header), *parts]


def _buffer_len(part: Any) -> int:
    buf = getattr(part, "buffer", part)  # zmq.Frame exposes .buffer; bytes/memoryview are buffers
    return memoryview(buf).nbytes


def _bytes(part: Any) -> bytes:
    return part.bytes if hasattr(part, "bytes") else bytes(part)


def decode(frames: Sequence[Any]) -> Message:
    """Check and decode a received multipart message (bytes or ``zmq.Frame`` parts)."""
    if len(frames) < 2:
        raise MalformedMessage("too_few_frames", f"{len(frames)} frame(s)")
    try:
        topic = _bytes(frames[0]).decode("ascii")
    except UnicodeDecodeError:
        raise MalformedMessage("bad_topic", "not ASCII") from None
    if topic.count(".") < 2 or not all(topic.split(".", 2)):
        raise MalformedMessage("bad_topic", repr(topic[:80]))
    raw = _bytes(frames[1])
    if len(raw) > MAX_HEADER_BYTES:
        raise MalformedMessage("header_too_large", f"{len(raw)} bytes")
    try:
        header = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise MalformedMessage("bad_json", str(exc)[:80]) from None
    if not isinstance(header, dict):
        raise MalformedMessage("bad_header", "not a JSON object")
    check_header(header)
    payloads = list(frames[2:])
    check_image(header, payloads)
    payload_names(header, len(payloads))
    return Message(topic, header, payloads)


def check_header(header: dict[str, Any]) -> None:
    if header.get("v") != ENVELOPE_VERSION:
        raise MalformedMessage("bad_version", repr(header.get("v")))
    for key, kind in (("src", str), ("boot", str)):
        if not isinstance(header.get(key), kind) or not header[key]:
            raise MalformedMessage(f"bad_{key}", repr(header.get(key))[:40])
    for key in ("seq", "t_pub_ns"):
        value = header.get(key)
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise MalformedMessage(f"bad_{key}", repr(value)[:40])


def check_image(header: dict[str, Any], payloads: list[Any]) -> None:
    """An image header must describe its first payload exactly; a lie here would crash a viewer."""
    encoding = header.get("encoding")
    if encoding is None:
        return
    if not isinstance(encoding, str) or encoding not in IMAGE_ENCODINGS:
        raise MalformedMessage("bad_encoding", repr(encoding)[:40])
    if not payloads:
        raise MalformedMessage("missing_payload", f"{encoding} image without payload")
    width, height = header.get("width"), header.get("height")
    if not (isinstance(width, int) and isinstance(height, int) and width > 0 and height > 0):
        raise MalformedMessage("bad_geometry", f"{width!r}x{height!r}")
    if encoding in RAW_ENCODINGS:
        step = header.get("step")
        if not isinstance(step, int) or step < width * RAW_ENCODINGS[encoding]:
            raise MalformedMessage("bad_geometry", f"step {step!r}")
        if _buffer_len(payloads[0]) != step * height:
            raise MalformedMessage("bad_geometry", "payload size does not match step x height")


def image_fields(image: Any, encoding: str) -> dict[str, Any]:
    """Header fields for a raw numpy image (``bgr8`` or ``gray8``)."""
    height, width = image.shape[:2]
    return {"width": int(width), "height": int(height), "encoding": encoding, "step": int(image.strides[0])}


# -- requests (the command sockets) ---------------------------------------------------------
# A correlation id is what a reply is matched on, so only a plain, bounded one is echoed:
# a reply must never fail to encode because of what the sender put there.
CORR_PATTERN = re.compile(r"[A-Za-z0-9_.:-]{1,64}")
CMD_PATTERN = re.compile(r"[a-z][a-z0-9_.]{0,63}")
_CORR_SCAN = re.compile(rb'"corr"\s*:\s*"([A-Za-z0-9_.:-]{1,64})"')
CORR_SCAN_BYTES = 4096


def scan_corr(raw: bytes) -> str | None:
    """The correlation id of a request whose header does not decode (too deep, bad
    encoding, truncated): a bounded scan of its first bytes, so it can still be answered."""
    match = _CORR_SCAN.search(raw[:CORR_SCAN_BYTES])
    return match.group(1).decode("ascii") if match else None


def decode_request(raw: bytes) -> dict[str, Any]:
    """A request header ``{v, corr, cmd, deadline_ns, args}``, checked; raises
    ``MalformedMessage`` (with ``corr`` when one was found) for anything else. Costs no more
    than decoding: orjson refuses nesting deeper than 1024 and invalid UTF-8 itself."""
    if len(raw) > MAX_HEADER_BYTES:
        raise MalformedMessage("header_too_large", f"{len(raw)} bytes", scan_corr(raw))
    try:
        header = orjson.loads(raw)
    except (orjson.JSONDecodeError, RecursionError):
        raise MalformedMessage("bad_json", "not a JSON document", scan_corr(raw)) from None
    if not isinstance(header, dict):
        raise MalformedMessage("bad_header", "not a JSON object", scan_corr(raw))
    corr = header.get("corr")
    if not isinstance(corr, str) or not CORR_PATTERN.fullmatch(corr):
        raise MalformedMessage("bad_corr", "corr must be 1-64 of A-Z a-z 0-9 _ . : -")
    cmd = header.get("cmd")
    if not isinstance(cmd, str) or not CMD_PATTERN.fullmatch(cmd):
        raise MalformedMessage("bad_cmd", "cmd must be a command name such as session.start", corr)
    deadline = header.get("deadline_ns")
    if type(deadline) is not int or deadline <= 0:
        raise MalformedMessage("bad_deadline", "deadline_ns must be a positive integer (ns since the epoch)", corr)
    if not isinstance(header.get("args", {}), dict):
        raise MalformedMessage("bad_args", "args must be a JSON object", corr)
    return header
