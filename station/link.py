"""The delivery protocol between a station's uplink (DEALER) and the collector (ROUTER).

Every message is ``[header JSON][payload?]`` over one CURVE connection; the collector knows
the station from its authenticated CURVE key (ZAP), never from what a message claims.

Station -> collector                    collector -> station
  hello   {station, boot, status}         welcome    {last_seq}
  events  {entries: [{seq, t_ns,          events.ack {last_seq}
           topic, body}]}
  offer   {record, sha256, size}          want       {record, offset}  (or stored, duplicate)
  chunk   {record, sha256, size,          chunk.ack  {record, offset}  (bytes held so far)
           offset, final} + bytes         stored     {record, sha256, receipt, duplicate}
  confirm {records: [{record, sha256}]}   confirmed  {present: [...], missing: [...]}
  status  {status}                        (none)
  ping    {}                              pong       {}
                                          error      {code, message, retryable, record?, expected?}

Records go in pieces (``chunk``) so a link that drops mid-record resumes where the
collector's spool ends (``want`` says where) instead of starting over; ``stored`` comes only
after the record is durable and its station signatures verified. Events carry the station's
gap-free journal sequence, so the collector stores each exactly once and in order.

Pure: bytes in, messages out. Both ends validate with the same schemas.
"""
from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

import jsonschema
import orjson

from station.errors import BadRequest

PROTOCOL = 1
MAX_HEADER_BYTES = 1024 * 1024       # an events batch of a few hundred entries
MAX_CHUNK_BYTES = 4 * 1024 * 1024
MAX_MESSAGE_BYTES = MAX_HEADER_BYTES + MAX_CHUNK_BYTES  # ZMQ_MAXMSGSIZE on both link sockets
MAX_EVENTS_PER_BATCH = 500
MAX_CONFIRM_PER_BATCH = 500

_ID = {"type": "string", "pattern": r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$"}
_SHA256 = {"type": "string", "pattern": r"^[0-9a-f]{64}$"}
_COUNT = {"type": "integer", "minimum": 0}
_OBJ = {"type": "object"}
_ENTRY = {"type": "object", "required": ["seq", "t_ns", "topic", "body"], "additionalProperties": False,
          "properties": {"seq": {"type": "integer", "minimum": 1}, "t_ns": _COUNT,
                         "topic": {"type": "string", "maxLength": 200}, "body": _OBJ}}
_ERROR = {"code": {"type": "string"}, "message": {"type": "string"}, "retryable": {"type": "boolean"},
          "record": _ID, "expected": _COUNT, "details": _OBJ}


def _schema(required: list[str], **properties: Any) -> dict:
    return {"type": "object", "required": ["op", *required],
            "properties": {"op": {"type": "string"}, **properties}}


SCHEMAS: dict[str, dict] = {
    # station -> collector
    "hello": _schema(["station", "boot"], station=_ID, boot=_ID, v={"const": PROTOCOL}, status=_OBJ),
    "events": _schema(["entries"], entries={"type": "array", "minItems": 1, "maxItems": MAX_EVENTS_PER_BATCH,
                                            "items": _ENTRY}),
    "offer": _schema(["record", "sha256", "size"], record=_ID, sha256=_SHA256,
                     size={"type": "integer", "minimum": 1}),
    "chunk": _schema(["record", "sha256", "size", "offset", "final"], record=_ID, sha256=_SHA256,
                     size={"type": "integer", "minimum": 1}, offset=_COUNT, final={"type": "boolean"}),
    "confirm": _schema(["records"], records={"type": "array", "maxItems": MAX_CONFIRM_PER_BATCH, "items": {
        "type": "object", "required": ["record", "sha256"], "properties": {"record": _ID, "sha256": _SHA256}}}),
    "status": _schema(["status"], status=_OBJ),
    "ping": _schema([]),
    # collector -> station
    "welcome": _schema(["last_seq"], last_seq=_COUNT, collector={"type": "string"}),
    "events.ack": _schema(["last_seq"], last_seq=_COUNT),
    "want": _schema(["record", "offset"], record=_ID, offset=_COUNT),
    "chunk.ack": _schema(["record", "offset"], record=_ID, offset=_COUNT),
    "stored": _schema(["record", "sha256", "receipt"], record=_ID, sha256=_SHA256, receipt=_OBJ,
                      duplicate={"type": "boolean"}),
    "confirmed": _schema(["present", "missing"], present={"type": "array", "items": _ID},
                         missing={"type": "array", "items": _ID}),
    "pong": _schema([]),
    "error": _schema(["code", "message"], **_ERROR),
}
STATION_OPS = frozenset({"hello", "events", "offer", "chunk", "confirm", "status", "ping"})
COLLECTOR_OPS = frozenset(SCHEMAS) - STATION_OPS
_VALIDATORS = {op: jsonschema.Draft202012Validator(schema) for op, schema in SCHEMAS.items()}


@dataclass(frozen=True)
class LinkMessage:
    op: str
    header: dict[str, Any]
    payload: bytes | memoryview = b""

    def __getitem__(self, key: str) -> Any:
        return self.header[key]


def encode(op: str, payload: bytes | memoryview | None = None, **fields: Any) -> list:
    """The frames of one message; ``payload`` (a chunk's bytes) travels as its own frame."""
    header = orjson.dumps({"op": op, **fields})
    return [header] if payload is None else [header, payload]


def error(code: str, message: str, *, retryable: bool = False, **fields: Any) -> list:
    return encode("error", code=code, message=message, retryable=retryable, **fields)


def decode(frames: list, allowed: frozenset[str]) -> LinkMessage:
    """One received message, validated; ``BadRequest`` says what is wrong with it."""
    if not 1 <= len(frames) <= 2:
        raise BadRequest(f"a link message has 1 or 2 frames, not {len(frames)}")
    raw = bytes(frames[0])
    if len(raw) > MAX_HEADER_BYTES:
        raise BadRequest(f"link header of {len(raw)} bytes is over {MAX_HEADER_BYTES}")
    try:
        header = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise BadRequest(f"link header is not JSON: {exc}") from None
    if not isinstance(header, dict) or header.get("op") not in allowed:
        op = header.get("op") if isinstance(header, dict) else None
        raise BadRequest(f"unknown link message {str(op)[:40]!r}; expected one of {', '.join(sorted(allowed))}")
    validator = _VALIDATORS[header["op"]]
    if not validator.is_valid(header):  # the quick check; the explanation only for a bad message
        problem = jsonschema.exceptions.best_match(validator.iter_errors(header))
        where = "/".join(str(p) for p in problem.absolute_path) or "header"
        raise BadRequest(f"{header['op']}: {where}: {problem.message[:200]}")
    payload = frames[1] if len(frames) == 2 else b""
    if (header["op"] == "chunk") != (len(frames) == 2):
        raise BadRequest("a chunk carries exactly one payload frame; other messages none")
    if len(payload) > MAX_CHUNK_BYTES:
        raise BadRequest(f"chunk of {len(payload)} bytes is over {MAX_CHUNK_BYTES}")
    return LinkMessage(header["op"], header, payload)


class Backoff:
    """Capped exponential backoff with full jitter: thousands of stations that lost central
    at the same moment must not come back at the same moment."""

    def __init__(self, initial_s: float, cap_s: float, rng: random.Random | None = None):
        self.initial_s, self.cap_s = initial_s, cap_s
        self.failures = 0
        self._rng = rng or random.Random()

    def next_delay(self) -> float:
        ceiling = min(self.cap_s, self.initial_s * (2 ** self.failures))
        self.failures += 1
        return self._rng.uniform(self.initial_s / 2, max(ceiling, self.initial_s / 2))

    def reset(self) -> None:
        self.failures = 0
