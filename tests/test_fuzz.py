"""Fuzzing what a peer or a field engineer can hand the station: bus frames, sensor bytes,
config files, and requests to every running daemon kind.

The pure decoders (envelope, subscriber, ZFM packet codec, config loader) are driven by
Hypothesis; each must return its value or raise its one documented error, never another
exception. The daemons (camera, fingerprint, controller) are driven over their real
command sockets by a seeded generator of structured-malformed requests: each request that
carries a usable correlation id gets exactly one reply with a documented error code, no
handler fails with ``internal``, the watchdog keeps beating, and the daemon still answers
and stops cleanly afterwards.

Reproduce a run with ``STATION_FUZZ_SEED=<n>`` (every failure message names the seed); the
default seed keeps CI deterministic.
"""
from __future__ import annotations

import contextlib
import os
import random
import select
import socket
import subprocess
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Callable, Iterator

import orjson
import pytest
import yaml
import zmq
from hypothesis import HealthCheck, Phase, given, seed, settings
from hypothesis import strategies as st

from drivers.fingerprint import protocol as fp
from drivers.fingerprint.protocol import Confirmation, Instruction, PacketType
from station import config
from station.bus import MAX_REQUEST_BYTES, CommandClient, Subscriber
from station.envelope import (
    CORR_PATTERN,
    MAX_HEADER_BYTES,
    RAW_ENCODINGS,
    MalformedMessage,
    Message,
    decode,
    encode,
    make_header,
    scan_corr,
)
from station.errors import CODES, ConfigError, ProtocolError, StationError
from station.paths import Paths
from tests.station_harness import BIN, applicant

SEED = int(os.environ.get("STATION_FUZZ_SEED", "20240611"))
# Shrinking a failure can take a minute, so CI reports the example as generated (the seed
# reproduces it); STATION_FUZZ_SHRINK=1 shrinks it to the smallest one when you debug.
PHASES = [Phase.explicit, Phase.reuse, Phase.generate] + [Phase.shrink] * bool(os.environ.get("STATION_FUZZ_SHRINK"))
FUZZ = settings(deadline=None, database=None, phases=PHASES,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture,
                                       HealthCheck.data_too_large, HealthCheck.large_base_example])
PACKAGED = Path(str(resources.files("station.defaults")))
# Error codes a reply may carry: the documented set, plus the sensor's own confirmation codes.
REPLY_CODES = set(CODES) | {f"fingerprint_{c.name.lower()}" for c in Confirmation}


# == the envelope ==========================================================================
json_scalars = (st.none() | st.booleans() | st.integers(-2**63, 2**64 - 1)
                | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=20))
json_values = st.recursive(json_scalars, lambda children: st.lists(children, max_size=4)
                           | st.dictionaries(st.text(max_size=8), children, max_size=4), max_leaves=16)
# What a field of the wrong type holds: a list, an object, a scalar of another kind.
# Hypothesis draws the first alternative of a one_of or sampled_from more often than the
# others, so each list below starts with the one that reaches deepest into the decoder.
wrong_types = st.one_of(st.lists(json_scalars, max_size=3),
                        st.dictionaries(st.text(max_size=6), json_scalars, max_size=3), json_scalars)
topics = st.from_regex(r"[a-z]{1,8}\.[a-z0-9_-]{1,8}\.[a-z.]{1,12}", fullmatch=True)
HEADER_KEYS = ("v", "src", "boot", "seq", "t_pub_ns", "payloads")
IMAGE_KEYS = ("encoding", "width", "height", "step", "t_acq_ns")  # encoding first: it gates the others
ENVELOPE_KEYS = HEADER_KEYS + IMAGE_KEYS


@st.composite
def valid_messages(draw) -> tuple[str, dict, dict[str, bytes]]:
    """A message a publisher could send: random fields, named payloads, sometimes a raw
    image that matches."""
    fields = draw(st.dictionaries(st.text(max_size=10).filter(lambda k: k not in ENVELOPE_KEYS), json_values,
                                  max_size=5))
    payloads = {f"part{i}": part for i, part in enumerate(draw(st.lists(st.binary(max_size=64), max_size=3)))}
    if draw(st.booleans()):
        encoding = draw(st.sampled_from(["gray8", "bgr8", "jpeg", "png"]))
        width, height = draw(st.integers(1, 16)), draw(st.integers(1, 16))
        step = width * RAW_ENCODINGS.get(encoding, 1) + draw(st.integers(0, 3))
        image = bytes(step * height) if encoding in ("gray8", "bgr8") else draw(st.binary(min_size=1, max_size=64))
        fields.update(encoding=encoding, width=width, height=height, step=step)
        payloads = {"image": image, **payloads}
    header = make_header(draw(st.text(min_size=1, max_size=12)), draw(st.text(min_size=1, max_size=16)),
                         draw(st.integers(0, 2**63 - 1)), fields,
                         draw(st.none() | st.integers(0, 2**63 - 1)))
    return draw(topics), header, payloads


@st.composite
def mutated_messages(draw) -> list[bytes]:
    """A valid message with one kind of fault: fields of another type, a field missing, a
    frame cut or added, a header byte changed and its tail cut, a bad topic."""
    topic, header, payloads = draw(valid_messages())
    how = draw(st.sampled_from(["image_fields", "header_field", "drop_field", "frames", "header_bytes", "topic"]))
    if how == "image_fields":  # the header itself stays valid, so the image checks are reached
        for key in draw(st.lists(st.sampled_from(IMAGE_KEYS), min_size=1, max_size=3, unique=True)):
            header[key] = draw(wrong_types)
    elif how == "header_field":
        header[draw(st.sampled_from(HEADER_KEYS))] = draw(wrong_types)
    elif how == "drop_field":
        header.pop(draw(st.sampled_from(ENVELOPE_KEYS)), None)
    frames = encode(topic, header, payloads)
    if how == "frames":
        frames = draw(st.sampled_from([frames[:1], frames[:2], frames + [b""], frames[:2] + frames[3:]]))
    elif how == "header_bytes":
        raw = bytearray(frames[1])
        at = draw(st.integers(0, len(raw) - 1))
        raw[at] = draw(st.integers(0, 255))
        frames[1] = bytes(raw[:draw(st.integers(at, len(raw)))])
    elif how == "topic":
        frames[0] = draw(st.binary(max_size=20)
                         | st.sampled_from([b"a.b", b"a..c", b".b.c", b"a.b.", "é.b.c".encode()]))
    return frames


arbitrary_frames = st.lists(st.binary(max_size=80), max_size=5) | st.builds(
    lambda topic, header, rest: [topic, header, *rest],
    st.binary(max_size=20) | topics.map(str.encode),
    json_values.map(orjson.dumps) | st.dictionaries(st.sampled_from(ENVELOPE_KEYS), json_values).map(orjson.dumps),
    st.lists(st.binary(max_size=40), max_size=3))
any_frames = arbitrary_frames | mutated_messages()


@settings(FUZZ, max_examples=300)
@seed(SEED)
@given(any_frames)
def test_decode_returns_a_message_or_raises_malformed(frames):
    try:
        message = decode(frames)
    except MalformedMessage as exc:
        assert isinstance(exc.reason, str) and exc.reason
        return
    assert isinstance(message, Message) and isinstance(message.header, dict)
    assert message.topic == frames[0].decode("ascii") and message.payloads == frames[2:]


@settings(FUZZ, max_examples=100)
@seed(SEED)
@given(valid_messages())
def test_every_valid_message_round_trips(message):
    topic, header, payloads = message
    decoded = decode(encode(topic, header, payloads))
    assert (decoded.topic, decoded.header, decoded.payloads) == (topic, header, list(payloads.values()))
    assert all(decoded.payload(name) == part for name, part in payloads.items())
    assert (decoded.src, decoded.seq, decoded.boot) == (header["src"], header["seq"], header["boot"])


@settings(FUZZ, max_examples=100)
@seed(SEED)
@given(st.lists(mutated_messages() | arbitrary_frames | valid_messages().map(lambda m: encode(*m)),
                min_size=1, max_size=5))
def test_subscriber_accept_never_raises_and_counts_each_malformed_message_by_reason(ctx, messages):
    subscriber = Subscriber(ctx)
    try:
        for frames in messages:
            before, stale = Counter(subscriber.malformed), subscriber.stale
            accepted = subscriber.accept(frames)
            try:
                decode(frames)
            except MalformedMessage as exc:
                assert accepted is None
                assert Counter(subscriber.malformed) - before == Counter({exc.reason: 1})
                continue
            assert Counter(subscriber.malformed) == before
            assert accepted is not None or subscriber.stale == stale + 1
    finally:
        subscriber.close()


# == the ZFM packet codec ==================================================================
addresses = st.integers(0, 2**32 - 1)
packets = st.builds(fp.Packet, st.sampled_from(list(PacketType)).map(int), st.binary(max_size=256), addresses)


def chunked(data: bytes, cuts: list[int]) -> list[bytes]:
    """``data`` split where a serial port might deliver it."""
    points = sorted({c % (len(data) + 1) for c in cuts})
    return [data[a:b] for a, b in zip([0, *points], [*points, len(data)])]


@settings(FUZZ, max_examples=300)
@seed(SEED)
@given(st.lists(packets, min_size=1, max_size=6), st.lists(st.integers(0, 2000), max_size=8),
       st.binary(max_size=40).map(lambda b: b.replace(b"\xef", b"")))
def test_every_packet_decodes_back_whole_and_through_the_reader_in_any_chunks(sent, cuts, noise):
    for packet in sent:
        assert fp.decode_packet(packet.encode()) == packet
    reader = fp.PacketReader()
    stream = noise + b"".join(p.encode() for p in sent)
    received = [p for chunk in chunked(stream, cuts) for p in reader.feed(chunk)]
    assert received == sent
    assert (reader.dropped_bytes, reader.bad_packets, reader.pending) == (len(noise), 0, 0)


@settings(FUZZ, max_examples=300)
@seed(SEED)
@given(st.integers(0, 255), st.binary(max_size=256), addresses)
def test_a_packet_of_any_pid_round_trips(pid, payload, address):
    assert fp.decode_packet(fp.encode_packet(pid, payload, address)) == fp.Packet(pid, payload, address)


def mutate(data: bytes, edits: list[tuple[int, int, int]]) -> bytes:
    """Line faults: a byte changed, lost or doubled at each (where, how, value)."""
    out = bytearray(data)
    for where, how, value in edits:
        if not out:
            break
        at = where % len(out)
        if how == 0:
            out[at] = value
        elif how == 1:
            del out[at]
        else:
            out.insert(at, value)
    return bytes(out)


byte_streams = st.binary(max_size=600) | st.builds(
    mutate, st.lists(packets, max_size=4).map(lambda ps: b"".join(p.encode() for p in ps)),
    st.lists(st.tuples(st.integers(0, 2000), st.integers(0, 2), st.integers(0, 255)), max_size=4))


@settings(FUZZ, max_examples=400)
@seed(SEED)
@given(byte_streams, st.lists(st.integers(0, 2000), max_size=8), st.none() | st.just(fp.DEFAULT_ADDRESS))
def test_any_bytes_give_only_checked_packets_or_a_protocol_error(stream, cuts, address):
    try:
        packet = fp.decode_packet(stream)
    except ProtocolError:
        pass
    else:
        assert packet.encode() == stream  # one frame, one meaning
    reader = fp.PacketReader(address)
    received = [p for chunk in chunked(stream, cuts) for p in reader.feed(chunk)]
    for packet in received:
        assert packet.encode() in stream and packet.pid in set(PacketType)
        assert address is None or packet.address == address
    assert reader.dropped_bytes + sum(len(p.encode()) for p in received) + reader.pending == len(stream)


def command_params(instruction: Instruction) -> st.SearchStrategy[dict[str, int]]:
    ranges = {"B": 2**8 - 1, "H": 2**16 - 1, "I": 2**32 - 1}
    return st.fixed_dictionaries({name: st.integers(0, ranges[code])
                                  for name, code in fp.COMMAND_FIELDS[instruction]})


def reply_fields(instruction: Instruction) -> st.SearchStrategy[dict[str, Any]]:
    ranges = {"H": 2**16 - 1, "I": 2**32 - 1}
    return st.fixed_dictionaries({name: st.binary(min_size=32, max_size=32) if code == "32s"
                                  else st.integers(0, ranges[code])
                                  for name, code in fp.REPLY_FIELDS.get(instruction, ())})


@settings(FUZZ, max_examples=300)
@seed(SEED)
@given(st.data(), st.sampled_from(list(Instruction)), st.integers(0, 255))
def test_every_command_and_ack_round_trips(data, instruction, confirmation):
    params = data.draw(command_params(instruction))
    assert fp.decode_command(fp.encode_command(instruction, **params)) == fp.Command(instruction, params)
    fields = data.draw(reply_fields(instruction))
    ack = fp.encode_ack(instruction, confirmation, **fields)
    assert fp.decode_ack(instruction, ack) == fp.Ack(confirmation, fields)
    assert fp.SensorError(confirmation, instruction, "/dev/fuzz").code.startswith("fingerprint_")


@settings(FUZZ, max_examples=400)
@seed(SEED)
@given(st.binary(max_size=48), st.sampled_from(list(Instruction)))
def test_any_command_or_ack_payload_decodes_or_is_a_protocol_error(payload, instruction):
    try:
        command = fp.decode_command(payload)
    except ProtocolError:
        pass
    else:
        assert fp.encode_command(command.instruction, **command.params) == payload
    try:
        ack = fp.decode_ack(instruction, payload)
    except ProtocolError:
        return
    assert ack.confirmation == payload[0]
    if instruction == Instruction.READ_SYS_PARA and ack.ok:
        parameters = fp.SystemParameters.from_ack(ack)
        if parameters.packet_size_code < len(fp.PACKET_SIZES):
            assert parameters.packet_size == fp.PACKET_SIZES[parameters.packet_size_code]
        else:
            with pytest.raises(ProtocolError):
                parameters.packet_size


@settings(FUZZ, max_examples=150)
@seed(SEED)
@given(st.binary(max_size=3000), st.sampled_from(fp.PACKET_SIZES), addresses)
def test_a_data_transfer_reassembles_to_what_was_split(data, packet_size, address):
    frames = fp.split_data(data, packet_size, address)
    received = fp.PacketReader(address).feed(b"".join(frames))
    assert fp.reassemble(received, packet_size, len(data)) == data


@settings(FUZZ, max_examples=300)
@seed(SEED)
@given(st.lists(st.builds(fp.Packet, st.integers(0, 255), st.binary(max_size=300)), max_size=6),
       st.sampled_from(fp.PACKET_SIZES), st.none() | st.integers(0, 1000))
def test_any_packets_in_a_transfer_assemble_or_are_a_protocol_error(sent, packet_size, expected):
    assembler = fp.DataAssembler(packet_size, expected)
    try:
        for packet in sent:
            assembler.add(packet)
    except ProtocolError:
        return
    assert assembler.received_bytes == sum(len(p.payload) for p in sent)
    assert expected is None or assembler.received_bytes <= expected


# == the config loader =====================================================================
SECTIONS = ("controller", "enrollment", "camera", "fingerprint")
INSTANCED = {"camera", "fingerprint"}
yaml_scalars = (st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats() | st.text(max_size=24)
                | st.sampled_from(["yes", "on", "0x1F", "1e3", ".inf", "~", "2020-01-01", "<<", "&a", "*a",
                                   "!!binary"]))
yaml_values = st.recursive(yaml_scalars, lambda children: st.lists(children, max_size=4)
                           | st.dictionaries(st.text(max_size=10), children, max_size=4), max_leaves=12)


def schema_of(section: str) -> dict:
    return yaml.safe_load((PACKAGED / f"{section}.schema.yaml").read_text())


def shaped_like(schema: dict, defs: dict, depth: int = 0) -> st.SearchStrategy[dict]:
    """A mapping of the schema's own keys (plus strangers), each value sometimes right and
    sometimes wrong, so the fuzzer reaches nested checks instead of stopping at the top."""
    def value_for(sub: dict) -> st.SearchStrategy:
        if "$ref" in sub:
            sub = {**defs[sub["$ref"].rsplit("/", 1)[1]], **{k: v for k, v in sub.items() if k != "$ref"}}
        options = [yaml_values]
        if "properties" in sub and depth < 3:
            options.append(shaped_like(sub, defs, depth + 1))
        if "enum" in sub:
            options.append(st.sampled_from(sub["enum"]))
        low, high = sub.get("minimum", sub.get("exclusiveMinimum")), sub.get("maximum")
        if low is not None or high is not None:
            options.append(st.sampled_from([v for v in (low, high) if v is not None])
                           | st.floats(low if low is not None else -1e6, high if high is not None else 1e6))
        if sub.get("type") == "array" or "items" in sub:
            options.append(st.lists(value_for(sub.get("items", {})), max_size=12))
        return st.one_of(options)

    known = st.fixed_dictionaries({}, optional={name: value_for(sub)
                                                for name, sub in schema.get("properties", {}).items()})
    strangers = st.dictionaries(st.text(max_size=12), yaml_values, max_size=2)
    return st.tuples(known, strangers).map(lambda pair: {**pair[1], **pair[0]})


def documents(section: str) -> st.SearchStrategy[bytes]:
    schema = schema_of(section)
    mapping = shaped_like(schema, schema.get("$defs", {})).map(
        lambda doc: yaml.safe_dump(doc, allow_unicode=True, sort_keys=False).encode())
    return mapping | st.text(max_size=300).map(str.encode) | st.binary(max_size=300)


def placements(section: str) -> list[str]:
    names = [f"{section}.yaml", f"conf.d/50-{section}.yaml"]
    return names + ([f"{section}@fz0.yaml"] if section in INSTANCED else [])


def load_one_file(section: str, name: str, raw: bytes) -> tuple[Path, Any]:
    """Load ``section`` with one site file holding ``raw``: (its path, the config or the ConfigError)."""
    with tempfile.TemporaryDirectory(prefix="st-cfg-") as tmp:
        path = Path(tmp) / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(raw)
        try:
            return path, config.load(section, "fz0" if section in INSTANCED else None, Path(tmp))
        except ConfigError as exc:
            return path, exc


@pytest.mark.parametrize("section", SECTIONS)
def test_any_config_file_loads_or_is_a_config_error_naming_it(section):
    @settings(FUZZ, max_examples=25 if section == "camera" else 40)
    @seed(SEED)
    @given(documents(section), st.sampled_from(placements(section)))
    def fuzz(raw, name):
        path, outcome = load_one_file(section, name, raw)
        if isinstance(outcome, ConfigError):
            assert outcome.problems, "a ConfigError without a problem"
            assert [p for p in outcome.problems if not p.startswith(str(path))] == []
        else:
            assert isinstance(outcome, dict) and set(outcome) >= set(schema_of(section).get("required", []))

    fuzz()


# Found while fuzzing the loader: each raises out of ``config.load`` (yaml ReaderError,
# RecursionError, ValueError), a traceback where the engineer should read file:line.
HOSTILE_FILES = {
    "a NUL byte": b"port: /dev/tty\x00\n",
    "bytes that are not UTF-8": b"port: /dev/tty\xff\xfe\n",
    "nesting 1000 deep": b"port: " + b"{a: " * 1000 + b"1" + b"}" * 1000 + b"\n",
    "an integer of 5000 digits": b"retries: " + b"9" * 5000 + b"\n",
}


@pytest.mark.parametrize("raw", HOSTILE_FILES.values(), ids=HOSTILE_FILES.keys())
def test_a_hostile_config_file_is_a_config_error_naming_it(raw):
    path, outcome = load_one_file("fingerprint", "fingerprint.yaml", raw)
    assert isinstance(outcome, ConfigError)
    assert len(outcome.problems) == 1 and outcome.problems[0].startswith(f"{path}")


def test_a_header_field_of_an_unhashable_type_is_malformed_not_a_crash():
    """Found by the envelope fuzzer: ``encoding`` is looked up in a set, so a list there
    raised TypeError out of ``decode`` (and out of every subscriber's ``receive``)."""
    for encoding in ([], {}, ["jpeg"]):
        header = make_header("cam0", "b00t", 1, {"encoding": encoding, "width": 2, "height": 2})
        with pytest.raises(MalformedMessage):
            decode(encode("camera.cam0.preview", header, {"image": b"\x00" * 4}))


# == the daemons over their command sockets ================================================
@dataclass
class Sent:
    index: int
    what: str
    frames: list[bytes]
    corr: str | None  # the correlation id a reply must carry, None if the request has none usable

    def describe(self) -> str:
        sizes = [len(f) for f in self.frames]
        return f"#{self.index} {self.what} frames={sizes} header={self.frames[0][:300]!r}"


def usable_corr(raw: bytes) -> str | None:
    """The oracle: the id a request can be answered by. A header that decodes to an object
    is answered by its own ``corr`` only; anything else by the first ``"corr": "<id>"`` in
    its first bytes (``scan_corr``), which is the documented contract."""
    if len(raw) <= MAX_HEADER_BYTES:
        try:
            header = orjson.loads(raw)
        except (orjson.JSONDecodeError, RecursionError):
            return scan_corr(raw)
        if isinstance(header, dict):
            corr = header.get("corr")
            return corr if isinstance(corr, str) and CORR_PATTERN.fullmatch(corr) else None
    return scan_corr(raw)


BOUNDARY = [None, True, False, 0, -1, 1, 2.0, 0.5, -0.0, 1e308, 2**31, 2**53 + 1, 2**63 - 1, 2**63, 2**64 - 1,
            -2**63, "", "x", "é", "\u0000", "a" * 300, "0" * 16, "f" * 32, [], [1], {}, {"a": None}]


def junk(rng: random.Random, depth: int = 0) -> Any:
    """A random JSON value, a boundary value half the time."""
    roll = rng.random()
    if depth >= 3 or roll < 0.55:
        return rng.choice(BOUNDARY)
    if roll < 0.7:
        return rng.uniform(-1e6, 1e6) if rng.random() < 0.5 else rng.randint(-10**6, 10**6)
    if roll < 0.8:
        return "".join(rng.choice("aé€𝄞\"\\/\n\t{}[]:,") for _ in range(rng.randint(0, 40)))
    if roll < 0.9:
        return [junk(rng, depth + 1) for _ in range(rng.randint(0, 4))]
    return {str(junk(rng, depth + 1))[:20]: junk(rng, depth + 1) for _ in range(rng.randint(0, 4))}


@dataclass
class ArgsFor:
    """Arguments of one command: each known one valid, junk or absent, sometimes a stranger."""

    valid: dict[str, Callable[[random.Random], Any]]

    @property
    def names(self) -> list[str]:
        return list(self.valid)

    def __call__(self, rng: random.Random) -> dict:
        args = {}
        for name, good in self.valid.items():
            roll = rng.random()
            if roll < 0.55:
                args[name] = good(rng)
            elif roll < 0.85:
                args[name] = junk(rng)
        if rng.random() < 0.15:
            args[rng.choice(["extra", "corr", "cmd", "x" * 64, ""])] = junk(rng)
        return args


def deadline(rng: random.Random, slow: bool) -> Any:
    """Mostly a near deadline (every kept request is answered within seconds); far away
    only for commands answered at once, so no device work outlives the test."""
    roll = rng.random()
    if roll < 0.8:
        return time.time_ns() + int(rng.uniform(-0.5, 2.5) * 1e9)
    if roll < 0.9:
        return rng.choice([1, 10**9]) if slow else rng.choice([1, 2**63 - 1, 2**64 - 1])
    return junk(rng)


def mutate_bytes(rng: random.Random, raw: bytes) -> bytes:
    """A header damaged on its way: a byte changed, a run cut, a stray quote, escape or
    invalid UTF-8 put in, the tail lost, a run doubled."""
    out = bytearray(raw)
    for _ in range(rng.randint(1, 4)):
        at = rng.randrange(len(out) + 1)
        how = rng.randrange(5)
        if how == 0 and at < len(out):
            out[at] = rng.randrange(256)
        elif how == 1:
            del out[at:at + rng.randint(1, 8)]
        elif how == 2:
            out[at:at] = rng.choice([b"\xff", b"\xc3", b"\x00", b"\\u", b'"', b"{", b"]", b",", b"\\ud800", b"1e999"])
        elif how == 3:
            del out[at:]
        else:
            out[at:at] = out[max(0, at - 20):at]
    return bytes(out)


def boundary_requests(commands: dict[str, ArgsFor]) -> list[Sent]:
    """Every argument of every command at every boundary value, the rest valid: the
    systematic pass before the random one."""
    rng = random.Random(f"{SEED}:boundary")
    requests: list[Sent] = []
    for cmd, make_args in commands.items():
        names = [n for n in make_args.names if n] or ["extra"]
        for name in names:
            for value in BOUNDARY:
                args = {**{n: make_args.valid[n](rng) for n in make_args.names}, name: value}
                header = {"v": 1, "corr": f"b{len(requests)}", "cmd": cmd,
                          "deadline_ns": time.time_ns() + int(rng.uniform(0.2, 2.0) * 1e9), "args": args}
                raw = orjson.dumps(header)
                requests.append(Sent(len(requests), f"boundary:{cmd}.{name}", [raw], usable_corr(raw)))
    return requests


def forge(rng: random.Random, index: int, commands: dict[str, ArgsFor], slow: set[str]) -> Sent:
    """One structured-malformed request: mostly well-formed enough to reach the dispatcher
    and the handlers, each with one thing wrong (or nothing)."""
    cmd = rng.choice(list(commands))
    header: dict[str, Any] = {"v": 1, "corr": f"m{index}", "cmd": cmd,
                              "deadline_ns": deadline(rng, cmd in slow), "args": commands[cmd](rng)}
    what = rng.choices(["command", "unknown", "wrong_type", "missing", "huge", "bytes", "deep", "random",
                        "not_object"], [40, 6, 14, 6, 6, 12, 3, 5, 3])[0]
    raw: bytes | None = None
    if what == "unknown":
        header["cmd"] = rng.choice(["nope", "session.nope", "x" * 64, "Status", "ping ", "", "a" * 65, "é"])
        header["deadline_ns"] = time.time_ns() + 10**9
    elif what == "wrong_type":
        field = rng.choice(["v", "corr", "cmd", "deadline_ns", "args"])
        header[field] = junk(rng)
        what = f"wrong_type:{field}"
    elif what == "missing":
        for field in rng.sample(["v", "corr", "cmd", "deadline_ns", "args"], rng.randint(1, 2)):
            del header[field]
    elif what == "huge":
        char = rng.choice(["x", "é", "€", "\\", "\u0001"])
        big = char * (rng.randint(10_000, MAX_REQUEST_BYTES - 8_000) // max(1, len(orjson.dumps(char)) - 2))
        where = rng.choice(["arg", "first", "last"])
        if where == "arg":
            header["args"] = {**header["args"], rng.choice(["operator", "session", "reason", "mode", "z"]): big}
        elif where == "first":
            header = {"pad": big, **header}  # the corr then lies beyond the bounded scan
        else:
            header["pad"] = big
        what = f"huge:{where}"
    elif what == "deep":
        depth = rng.randint(200, 5000)
        raw = orjson.dumps(header)[:-1] + b',"deep":' + b"[" * depth + b"]" * depth + b"}"
    elif what == "random":
        raw = rng.randbytes(rng.randint(0, 300)) if rng.random() < 0.8 else b""
    elif what == "not_object":
        raw = rng.choice([orjson.dumps([header]), orjson.dumps(header["corr"]),
                          b'"corr":"' + header["corr"].encode() + b'"'])
    if raw is None:
        raw = orjson.dumps(header)
        if what == "bytes":
            raw = mutate_bytes(rng, raw)
    raw = raw[:MAX_REQUEST_BYTES]  # within the limit: the oversized case has its own test
    payloads = [rng.randbytes(rng.choice([0, 1, 100, 4096, 60_000])) for _ in range(rng.choice([0, 0, 0, 1, 2, 5]))]
    return Sent(index, what, [raw, *payloads], usable_corr(raw))


class Watchdog:
    """Listens where systemd would and timestamps every WATCHDOG=1."""

    def __init__(self, path: Path):
        self.path = path
        self.socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.socket.bind(str(path))
        self.socket.settimeout(0.1)
        self.beats: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._listen, daemon=True)
        self._thread.start()

    def _listen(self) -> None:
        while not self._stop.is_set():
            try:
                if self.socket.recv(4096) == b"WATCHDOG=1":
                    self.beats.append(time.monotonic())
            except socket.timeout:
                pass

    def between(self, start: float, end: float) -> list[float]:
        return [b for b in self.beats if start <= b <= end]

    def worst_gap(self, start: float, end: float) -> float:
        points = [start, *self.between(start, end), end]
        return max(b - a for a, b in zip(points, points[1:]))

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self.socket.close()


WATCHDOG_USEC = 2_000_000  # WATCHDOG=1 every half second (a quarter of WatchdogSec)
WATCHDOG_INTERVAL_S = WATCHDOG_USEC / 4e6


@dataclass
class Running:
    proc: subprocess.Popen
    endpoint: str
    watchdog: Watchdog
    log: Path

    def log_tail(self) -> str:
        return self.log.read_text(errors="replace")[-3000:]


def launch(argv: list[str], name: str, env: dict, root: Path) -> Running:
    """Start one daemon as systemd would: a notify socket and a watchdog."""
    watchdog = Watchdog(root / f"{name}.notify")
    log = root / f"{name}.log"
    try:
        with open(log, "wb") as out:
            proc = subprocess.Popen([str(BIN / argv[0]), *argv[1:]], stdout=out, stderr=out, env=dict(
                env, NOTIFY_SOCKET=str(watchdog.path), WATCHDOG_USEC=str(WATCHDOG_USEC)))
    except BaseException:
        watchdog.close()
        raise
    return Running(proc, Paths.resolve().cmd(name), watchdog, log)


def wait_answering(running: Running, ctx, ready_state: str | None = None, timeout_s: float = 30.0) -> None:
    """Until ``state`` answers (and says ``ready_state``, when given)."""
    client = CommandClient(ctx, running.endpoint, name="probe")
    try:
        until = time.monotonic() + timeout_s
        while True:
            assert running.proc.poll() is None, f"exited with {running.proc.returncode}:\n{running.log_tail()}"
            assert time.monotonic() < until, f"not answering within {timeout_s} s:\n{running.log_tail()}"
            try:
                state = client.call("state", timeout_s=0.5).result["state"]
            except StationError:
                continue
            if ready_state is None or state == ready_state:
                return
            time.sleep(0.1)
    finally:
        client.close()


def stop_daemon(running: Running) -> int | None:
    """Terminate and reap; a daemon that ignores SIGTERM is killed, and None says so."""
    try:
        if running.proc.poll() is None:
            running.proc.terminate()
            try:
                running.proc.wait(5)
            except subprocess.TimeoutExpired:
                running.proc.kill()
                running.proc.wait()
                return None
        return running.proc.returncode
    finally:
        running.watchdog.close()


def exchange(sock: zmq.Socket, wanted: Callable[[], bool], timeout_s: float,
             on_reply: Callable[[list[bytes]], None]) -> bool:
    """Receive replies until ``wanted()`` holds or the time is up; False on time out."""
    until = time.monotonic() + timeout_s
    while not wanted():
        remaining = until - time.monotonic()
        if remaining <= 0:
            return False
        if sock.poll(int(min(remaining, 0.2) * 1000)):
            on_reply(sock.recv_multipart())
    return True


def fuzz_daemon(running: Running, ctx, commands: dict[str, ArgsFor], *, slow: set[str], messages: int,
                budget_s: float, label: str) -> None:
    """Send seeded structured-malformed requests in bursts, each burst closed by a ``ping``
    (the dispatcher serves one peer in order, so its answer means the burst was read); then
    check every answerable request got exactly one reply, with a documented error code."""
    rng = random.Random(f"{SEED}:{label}")
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(running.endpoint)
    sent: list[Sent] = []
    replies: Counter[str] = Counter()
    sentinels: set[str] = set()
    problems: list[str] = []
    codes: Counter[str] = Counter()  # "<cmd>:<ok or error code>", printed for a failure's context

    def on_reply(frames: list[bytes]) -> None:
        try:
            reply = orjson.loads(frames[0])
        except orjson.JSONDecodeError:
            reply = None
        corr = reply.get("corr") if isinstance(reply, dict) else None
        if not isinstance(corr, str):
            problems.append(f"unreadable reply {frames[0][:200]!r}")
            return
        if corr.startswith("sentinel-"):
            sentinels.add(corr)
            return
        replies[corr] += 1
        outcome = "ok" if reply.get("ok") is True else str((reply.get("error") or {}).get("code"))
        codes[f"{reply.get('cmd')}:{outcome}"] += 1
        if reply.get("ok") is not True:
            code = (reply.get("error") or {}).get("code")
            if code not in REPLY_CODES or code == "internal":
                origin = next((s.describe() for s in sent if s.corr == corr), "?")
                problems.append(f"reply {code!r} to {origin}: {str(reply.get('error'))[:300]}")

    start = time.monotonic()
    burst = 0
    prelude = boundary_requests(commands)
    try:
        while len(sent) < len(prelude) + messages and time.monotonic() - start < budget_s:
            burst += 1
            for _ in range(rng.randint(1, 12)):
                index = len(sent)
                message = prelude[index] if index < len(prelude) else forge(rng, index, commands, slow)
                sent.append(message)
                sock.send_multipart(message.frames)
            sock.send_multipart([orjson.dumps({"v": 1, "corr": f"sentinel-{burst}", "cmd": "ping",
                                               "deadline_ns": time.time_ns() + 10**10})])
            assert exchange(sock, lambda: f"sentinel-{burst}" in sentinels, 10.0, on_reply), (
                f"{label} stopped answering after {len(sent)} requests (seed {SEED}); last: {sent[-1].describe()}\n"
                f"{running.log_tail()}")
        expected = Counter(s.corr for s in sent if s.corr is not None)
        exchange(sock, lambda: all(replies[c] >= n for c, n in expected.items()), 20.0, on_reply)
        exchange(sock, lambda: False, 0.3, on_reply)  # a second reply would arrive now
    finally:
        sock.close()
    print(f"{label}: {len(sent)} requests ({len(prelude)} boundary) in {time.monotonic() - start:.1f} s, "
          f"{sum(1 for s in sent if s.corr)} answerable; kinds {dict(Counter(s.what.split(':')[0] for s in sent))}; "
          f"replies {dict(codes)}")
    missing = [s.describe() for s in sent if s.corr is not None and replies[s.corr] < expected[s.corr]]
    extra = {c: n for c, n in replies.items() if n > expected.get(c, 0)}
    assert len(sent) >= min(messages, 50), f"only {len(sent)} requests sent within {budget_s} s"
    assert (missing, extra, problems) == ([], {}, []), (
        f"{label}, seed {SEED}: {len(missing)} answerable requests unanswered, replies beyond one {extra}, "
        f"problems:\n" + "\n".join(missing[:10] + problems[:20]))


def oversized_requests_leave_the_daemon_serving(running: Running, ctx, limit: int = MAX_REQUEST_BYTES) -> None:
    """A frame above the daemon's limit (256 KiB; a printer's 8 MiB) makes libzmq drop that
    connection before the daemon reads it; the daemon and every other peer carry on.
    (ZMQ_MAXMSGSIZE limits each frame: a request over the limit only in total is read like
    any other, so it is sent first and only the daemon's survival is checked for it.)"""
    over = ctx.socket(zmq.DEALER)
    over.setsockopt(zmq.LINGER, 0)
    over.connect(running.endpoint)
    header = {"v": 1, "corr": "over-total", "cmd": "ping", "deadline_ns": time.time_ns() + 10**10}
    try:
        over.send_multipart([orjson.dumps(header)] + [b"\x00" * (limit // 2)] * 6)
        if over.poll(5000):
            over.recv_multipart()
        over.send_multipart([orjson.dumps({**header, "corr": "over-frame", "pad": "x" * limit})])
        answered: list[bytes] = []
        exchange(over, lambda: False, 0.5, lambda frames: answered.append(frames[0]))
        assert not [a for a in answered if b'"over-frame"' in a], "a frame over the limit was served"
    finally:
        over.close()
    fresh = CommandClient(ctx, running.endpoint, name="fresh")
    try:
        assert fresh.call("ping", timeout_s=5).result["pong"] is True
    finally:
        fresh.close()
    assert running.proc.poll() is None, running.log_tail()


def run_fuzz(running: Running, ctx, commands: dict[str, ArgsFor], *, slow: set[str], messages: int,
             budget_s: float, label: str, limit: int = MAX_REQUEST_BYTES) -> None:
    started = time.monotonic()
    fuzz_daemon(running, ctx, commands, slow=slow, messages=messages, budget_s=budget_s, label=label)
    oversized_requests_leave_the_daemon_serving(running, ctx, limit)
    ended = time.monotonic()
    gap = running.watchdog.worst_gap(started, ended)
    assert len(running.watchdog.between(started, ended)) >= 2, f"{label}: the watchdog did not beat while fuzzed"
    assert gap < 1.5 * WATCHDOG_INTERVAL_S, f"{label}: no WATCHDOG=1 for {gap:.2f} s (every {WATCHDOG_INTERVAL_S:g} s)"
    code = stop_daemon(running)
    assert code == 0, f"{label} did not stop cleanly on SIGTERM (exit {code}):\n{running.log_tail()}"
    log = running.log.read_text(errors="replace")
    for sign in ("main loop failed", "dispatch_failed"):  # an exception past a handler, answered or not
        assert sign not in log, f"{label} logged {sign!r}:\n{running.log_tail()}"


RUNTIME = {"ping": ArgsFor({}), "state": ArgsFor({})}
HEX = "0123456789abcdef"


def test_the_camera_daemon_answers_every_fuzzed_request(station_env, ctx):
    (station_env["etc"] / "camera@cam0.yaml").write_text(yaml.safe_dump({
        "source": {"kind": "emulated", "width": 640, "height": 480}, "capture": {"timeout_s": 2.0}}))
    commands = {**RUNTIME, "frame": ArgsFor({}), "cancel": ArgsFor({}),
                "capture": ArgsFor({"mode": lambda r: r.choice(["icao", "exception"]),
                                      "timeout_s": lambda r: r.uniform(0.5, 2.0)})}
    running = launch(["station-camerad", "cam0"], "cam0", station_env["env"], station_env["etc"].parent)
    try:
        wait_answering(running, ctx)
        run_fuzz(running, ctx, commands, slow={"capture", "frame"}, messages=5000, budget_s=3.0, label="camera cam0")
    finally:
        stop_daemon(running)


@contextlib.contextmanager
def emulator(device: str, link: Path, env: dict) -> Iterator[None]:
    """``stationctl emulate DEVICE --link LINK`` running, its device path printed, for the test."""
    process = subprocess.Popen([str(BIN / "stationctl"), "emulate", device, "--link", str(link)],
                               env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    try:
        ready, _, _ = select.select([process.stdout], [], [], 30)
        assert ready and process.stdout.readline().strip(), f"the {device} emulator did not start"
        yield
    finally:
        process.terminate()
        try:
            process.wait(5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        process.stdout.close()


def test_the_fingerprint_daemon_answers_every_fuzzed_request(station_env, ctx):
    link = station_env["run"] / "fp0.tty"
    with emulator("fingerprint", link, station_env["env"]):
        (station_env["etc"] / "fingerprint@fp0.yaml").write_text(yaml.safe_dump({
            "port": str(link), "command_timeout_s": 0.3, "retries": 2, "finger_wait_s": 2}))
        commands = {**RUNTIME, "cancel": ArgsFor({}),
                    "capture": ArgsFor({"position": lambda r: r.randint(0, 15)})}
        running = launch(["station-fingerprintd", "fp0"], "fp0", station_env["env"], station_env["etc"].parent)
        try:
            wait_answering(running, ctx, ready_state="ready")
            run_fuzz(running, ctx, commands, slow={"capture"}, messages=20_000, budget_s=3.0, label="fingerprint fp0")
        finally:
            stop_daemon(running)


def test_the_printer_daemon_answers_every_fuzzed_request(station_env, ctx):
    from drivers.printer.daemon import PrinterDaemon

    link = station_env["run"] / "printer0.tty"
    with emulator("printer", link, station_env["env"]):
        (station_env["etc"] / "printer@printer0.yaml").write_text(yaml.safe_dump({"port": str(link)}))
        commands = {**RUNTIME, "status": ArgsFor({}), "reject": ArgsFor({}), "eject": ArgsFor({}),
                    "feed": ArgsFor({"to": lambda r: r.choice(["contactless", "contact", "hopper"])}),
                    "print": ArgsFor({})}
        running = launch(["station-printerd", "printer0"], "printer0", station_env["env"], station_env["etc"].parent)
        try:
            wait_answering(running, ctx, ready_state="ready")
            run_fuzz(running, ctx, commands, slow={"feed", "print", "reject", "eject", "status"}, messages=5000,
                     budget_s=3.0, label="printer printer0", limit=PrinterDaemon.max_request_bytes)
        finally:
            stop_daemon(running)


def test_the_controller_answers_every_fuzzed_request(provisioned, ctx):
    etc = provisioned["etc"]
    (etc / "controller.yaml").write_text(yaml.safe_dump({
        "command_timeout_s": 1, "capture_timeout_s": 2, "store": {"fsync": False}}))
    (etc / "enrollment.yaml").write_text(yaml.safe_dump({"finger_positions": [1, 2], "portrait_required": False}))
    running = launch(["station-controller"], "controller", provisioned["env"], etc.parent)
    try:
        wait_answering(running, ctx)
        client = CommandClient(ctx, running.endpoint, name="controller")
        try:  # a real session, so the fuzzed session commands reach the session logic
            sessions = [client.call("session.start", {"applicant": applicant(n), "operator": "op"}).result["session"]
                        for n in range(2)]
        finally:
            client.close()

        def session_id(rng: random.Random) -> str:
            return rng.choice(sessions + ["".join(rng.choice(HEX) for _ in range(16))])

        def an_applicant(rng: random.Random) -> dict:
            person = applicant(rng.randrange(100))
            if rng.random() < 0.7:
                person[rng.choice(list(person) + ["extra"])] = junk(rng)
            return person

        position = {"position": lambda r: r.randint(1, 10)}
        operator = {"operator": lambda r: r.choice(["op", "op2", "x" * 64])}
        session = {"session": session_id, **operator}
        commands = {
            **RUNTIME, "status": ArgsFor({}), "session.list": ArgsFor({}), "record.list": ArgsFor({}),
            "session.start": ArgsFor({"applicant": an_applicant, **operator}),
            "session.get": ArgsFor(session), "session.review": ArgsFor(session), "session.portrait": ArgsFor(session),
            "session.exception_photo": ArgsFor(session), "session.finger": ArgsFor({**session, **position}),
            "session.exception": ArgsFor({**session, **position, "reason": lambda r: r.choice(["XX", "UP", "ZZ"])}),
            "session.finish": ArgsFor(session), "session.abort": ArgsFor(session),
            "session.cancel": ArgsFor({**session, "reason": lambda r: r.choice(["", "left", "é" * 200])}),
            "events.since": ArgsFor({"since": lambda r: r.randint(0, 50), "limit": lambda r: r.randint(1, 500)}),
            "record.get": ArgsFor({"record": lambda r: "".join(r.choice(HEX) for _ in range(32))}),
            "print.status": ArgsFor({}),
            "print.retry": ArgsFor({"job": lambda r: "".join(r.choice(HEX) for _ in range(16)), **operator}),
            "print.cancel": ArgsFor({"job": lambda r: "".join(r.choice(HEX) for _ in range(16)), **operator,
                                     "reason": lambda r: r.choice(["", "x" * 300])}),
        }
        run_fuzz(running, ctx, commands, slow={"session.portrait", "session.exception_photo", "session.finger",
                                               "session.finish"},
                 messages=20_000, budget_s=3.0, label="controller")
    finally:
        stop_daemon(running)


def test_the_console_answers_every_fuzzed_request(station_env, ctx):
    """The console's own command socket (its web side is fuzzed in tests/console); it bridges
    a controller that is not running, as after a boot where the controller starts later."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    (station_env["etc"] / "console.yaml").write_text(yaml.safe_dump({"listen": {"port": port}}))
    running = launch(["station-console"], "console", station_env["env"], station_env["etc"].parent)
    try:
        wait_answering(running, ctx, ready_state="ready")
        run_fuzz(running, ctx, {**RUNTIME, "reload": ArgsFor({})}, slow=set(), messages=5000, budget_s=3.0,
                 label="console")
    finally:
        stop_daemon(running)
