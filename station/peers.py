"""Who may talk to a daemon: the peer's credentials on the ipc sockets, checked by ZAP.

Socket file permissions keep strangers out of ``/run/station``, but anything that can
write there (a misconfigured tool, a compromised process of the station user's group)
could bind a driver's socket path and publish forged status, or send commands. libzmq
reads the connecting process's credentials of an ipc peer (``SO_PEERCRED``) and hands them
to the ZAP handler as the address ``<host>:<uid>:<gid>:<pid>``; this module decides:

- ``station.cmd`` (command sockets): the station's own user, root, and members of the
  station's group (the operators, who use ``stationctl`` and the console);
- ``station.pub`` (a subscriber checking the publisher it connected to): the station's own
  user and root only, so only the station's daemons publish driver status.

On TCP (the collector) the peer is a CURVE key: a domain registered with ``allow_curve``
asks its lookup for the station that key belongs to; the answer becomes the connection's
``User-Id``, which the collector reads from every message instead of trusting what the
message says about itself.

A refused peer's connection is closed by libzmq; the refusal is logged once per uid or key.
"""
from __future__ import annotations

import grp
import logging
import os
import pwd
from dataclasses import dataclass, field
from typing import Callable

import zmq
import zmq.utils.z85

log = logging.getLogger("station.peers")

ZAP_ENDPOINT = "inproc://zeromq.zap.01"
COMMANDS, PUBLISHERS = "station.cmd", "station.pub"


@dataclass(frozen=True)
class Peer:
    uid: int
    gid: int
    pid: int


def parse_address(address: bytes) -> Peer | None:
    """The ipc peer's credentials from a ZAP address, None for anything else (tcp)."""
    parts = address.decode("ascii", "replace").rsplit(":", 3)
    if len(parts) != 4 or not all(p.isdigit() for p in parts[1:]):
        return None
    return Peer(int(parts[1]), int(parts[2]), int(parts[3]))


def groups_of(uid: int, gid: int) -> set[int]:
    """Every group of the peer's user, not only the primary one SO_PEERCRED reports."""
    try:
        return set(os.getgrouplist(pwd.getpwuid(uid).pw_name, gid))
    except KeyError:  # a uid without a passwd entry (a container, a dynamic user)
        return {gid}


@dataclass
class PeerPolicy:
    uid: int = field(default_factory=os.geteuid)
    gid: int = field(default_factory=os.getegid)

    def allows(self, domain: str, peer: Peer | None) -> bool:
        if peer is None:
            return False  # the ipc sockets are the only ones this policy is set on
        if peer.uid in (self.uid, 0):
            return True
        return domain == COMMANDS and self.gid in groups_of(peer.uid, peer.gid)

    def describe(self) -> str:
        try:
            group = grp.getgrgid(self.gid).gr_name
        except KeyError:
            group = str(self.gid)
        return f"uid {self.uid} or root; commands also from group {group}"


class ZapHandler:
    """The ZAP endpoint of one context, served from the daemon's main loop (a handshake
    waits at most one loop iteration)."""

    def __init__(self, ctx: zmq.Context, policy: PeerPolicy | None = None):
        self.policy = policy or PeerPolicy()
        self.socket = ctx.socket(zmq.REP)
        self.socket.setsockopt(zmq.LINGER, 0)
        self.socket.bind(ZAP_ENDPOINT)
        self.refused: dict[int | str | None, int] = {}
        self._curve: dict[str, Callable[[bytes], str | None]] = {}

    def allow_curve(self, domain: str, lookup: Callable[[bytes], str | None]) -> None:
        """CURVE clients on ``domain``: ``lookup(public_key)`` names the peer, or None refuses it."""
        self._curve[domain] = lookup

    def _answer_curve(self, frames: list[bytes]) -> None:
        version, request_id, domain, address = frames[:4]
        key = frames[6] if len(frames) > 6 else b""
        lookup = self._curve.get(domain.decode("ascii", "replace"))
        user = lookup(key) if lookup is not None and len(key) == 32 else None
        if user:
            self.socket.send_multipart([version, request_id, b"200", b"OK", user.encode(), b""])
            return
        z85 = zmq.utils.z85.encode(key).decode() if len(key) == 32 else "?"
        self.refused[z85] = self.refused.get(z85, 0) + 1
        if self.refused[z85] == 1:
            log.warning("refused a CURVE client on %s from %s: key %s is not allowed (unknown or revoked)",
                        domain.decode("ascii", "replace"), address.decode("ascii", "replace")[:60], z85)
        self.socket.send_multipart([version, request_id, b"400", b"key not allowed", b"", b""])

    def handle_ready(self) -> None:
        while self.socket.poll(0):
            frames = self.socket.recv_multipart()
            if len(frames) < 6:
                self.socket.send_multipart([b"1.0", b"", b"500", b"malformed ZAP request", b"", b""])
                continue
            if frames[5] == b"CURVE":
                self._answer_curve(frames)
                continue
            version, request_id, domain, address = frames[:4]
            peer = parse_address(address)
            if self.policy.allows(domain.decode("ascii", "replace"), peer):
                user = f"{peer.uid}:{peer.gid}".encode()
                self.socket.send_multipart([version, request_id, b"200", b"OK", user, b""])
                continue
            uid = peer.uid if peer else None
            self.refused[uid] = self.refused.get(uid, 0) + 1
            if self.refused[uid] == 1:
                log.warning("refused a connection on %s from %s (pid %s): allowed are %s",
                            domain.decode("ascii", "replace"), f"uid {uid}" if peer else address[:60],
                            peer.pid if peer else "?", self.policy.describe())
            self.socket.send_multipart([version, request_id, b"400", b"peer not allowed", b"", b""])

    def close(self) -> None:
        self.socket.close(linger=0)
