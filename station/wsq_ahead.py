"""WSQ encodings of accepted fingers, made while the officer takes the next finger.

``session.finish`` needs every finger WSQ-encoded (about 7 ms each on a station's CPU,
70 ms an applicant) while the officer waits for "done"; the scanner's upload of the next
finger leaves that CPU idle for seconds. So the controller hands each kept impression here
the moment it is accepted, and ``encoder(session)`` gives ``record.build`` an encoder that
returns the finished encoding of the very same pixels (found by their digest) or encodes
on the spot: a finger of a session resumed after a restart, or one not finished yet.

Encodings live in this process's memory only, per session, and go when the session ends
(``drop``); nothing here is written anywhere.
"""
from __future__ import annotations

import hashlib
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np

from station import biometrics

Encode = Callable[[np.ndarray], bytes]


def _digest(pixels: np.ndarray) -> bytes:
    return hashlib.sha256(repr(pixels.shape).encode() + pixels.tobytes()).digest()


class WsqAhead:
    def __init__(self, encode: Encode = biometrics.wsq_encode):
        self._encode = encode
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="wsq-ahead")
        self._lock = threading.Lock()
        self._sessions: dict[str, dict[bytes, Future]] = {}

    def submit(self, session_id: str, pixels: np.ndarray) -> None:
        """Start encoding an accepted impression of ``session_id`` in the background."""
        key = _digest(pixels)
        with self._lock:
            futures = self._sessions.setdefault(session_id, {})
            if key not in futures:
                futures[key] = self._pool.submit(self._encode, pixels)

    def encoder(self, session_id: str) -> Encode:
        """What the record's builder calls: the background encoding when there is one."""
        def encode(pixels: np.ndarray) -> bytes:
            with self._lock:
                future = self._sessions.get(session_id, {}).get(_digest(pixels))
            if future is not None and not future.cancelled() and future.exception() is None:
                return future.result()
            return self._encode(pixels)  # a background failure is raised here, where it is answered
        return encode

    def pending(self, session_id: str) -> int:
        with self._lock:
            return len(self._sessions.get(session_id, {}))

    def drop(self, session_id: str) -> None:
        """The session ended: forget its encodings (and skip those not started)."""
        with self._lock:
            futures = self._sessions.pop(session_id, {})
        for future in futures.values():
            future.cancel()

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
