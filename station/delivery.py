"""What the uplink may send next: records in pieces under a bounded window. Pure.

A record of several pieces goes out as ``offer`` (is it there already? where does the
collector's spool end?) and then pieces from that offset; a record of one piece is sent at
once (an offer would cost a round trip through the collector's storage for every record,
and a duplicate is recognised when it is stored anyway). Two bounds, each with its own
reason:

- bytes: piece bytes sent and not yet acknowledged as *received* (``chunk.ack``), and
  bytes of started records not yet sent. This is what a broken link can lose and what sits
  in the modem's queues, so it is sized to the link (its bandwidth-delay product), never
  to the collector's storage latency;
- records: records in flight from their offer to their ``stored`` (after the collector's
  durable write). This keeps enough records queued at the collector for it to store them
  in batches (one fsync for many), and bounds what it holds in memory for one station.

Events go outside this window, so they never wait behind a record backlog. The I/O loop
is ``station.uplink``.
"""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Transfer:
    """One record on its way: what has been offered, sent and acknowledged."""
    record_id: str
    sha256: str
    size: int
    next_offset: int | None = None             # None until the collector said where to start
    inflight: dict[int, int] = field(default_factory=dict)  # piece end offset -> bytes

    @property
    def fully_sent(self) -> bool:
        return self.next_offset is not None and self.next_offset >= self.size

    @property
    def unsent(self) -> int:
        return self.size - (self.next_offset or 0)


class Window:
    """The transfers in flight, oldest first, and how much the window still allows."""

    def __init__(self, max_bytes: int, max_records: int, chunk_bytes: int):
        self.max_bytes, self.max_records, self.chunk_bytes = max_bytes, max_records, chunk_bytes
        self.transfers: dict[str, Transfer] = {}
        self.bytes_inflight = 0               # sent, not yet acknowledged as received

    def __contains__(self, record_id: str) -> bool:
        return record_id in self.transfers

    @property
    def records_inflight(self) -> int:
        return len(self.transfers)

    def unsent(self) -> int:
        return sum(t.unsent for t in self.transfers.values())

    def can_start(self) -> bool:
        """Room for one more record: a free slot, and what is started but unsent fits the
        byte window (so the uplink never offers far ahead of what it can send)."""
        return len(self.transfers) < self.max_records and self.unsent() < self.max_bytes

    def start(self, record_id: str, sha256: str, size: int, offset: int | None = None) -> Transfer:
        """A record enters the window: offered (``offset`` None: wait for ``want``), or sent
        from ``offset`` at once."""
        transfer = Transfer(record_id, sha256, size, next_offset=offset)
        self.transfers[record_id] = transfer
        return transfer

    def _release(self, transfer: Transfer, ends: list[int]) -> None:
        for end in ends:
            self.bytes_inflight -= transfer.inflight.pop(end)

    def want(self, record_id: str, offset: int) -> None:
        """The collector holds ``offset`` bytes: go on from there (forgetting pieces in flight)."""
        transfer = self.transfers.get(record_id)
        if transfer is None:
            return
        self._release(transfer, list(transfer.inflight))
        transfer.next_offset = min(max(offset, 0), transfer.size)

    def acked(self, record_id: str, offset: int) -> None:
        """The collector has received the record's first ``offset`` bytes."""
        transfer = self.transfers.get(record_id)
        if transfer is not None:
            self._release(transfer, [end for end in transfer.inflight if end <= offset])

    def finish(self, record_id: str) -> Transfer | None:
        """Stored (or given up for now): the record leaves the window."""
        transfer = self.transfers.pop(record_id, None)
        if transfer is not None:
            self._release(transfer, list(transfer.inflight))
        return transfer

    def next_pieces(self) -> list[tuple[Transfer, int, int]]:
        """Pieces (transfer, offset, length) the window allows now, oldest record first;
        each is counted in flight as it is returned. One piece may exceed an empty window
        (a window smaller than a piece must not stall)."""
        pieces = []
        for transfer in self.transfers.values():
            while transfer.next_offset is not None and not transfer.fully_sent:
                length = min(self.chunk_bytes, transfer.size - transfer.next_offset)
                if self.bytes_inflight + length > self.max_bytes and self.bytes_inflight > 0:
                    return pieces
                offset = transfer.next_offset
                transfer.inflight[offset + length] = length
                self.bytes_inflight += length
                transfer.next_offset = offset + length
                pieces.append((transfer, offset, length))
        return pieces

    def clear(self) -> None:
        """The link broke: nothing is in flight any more; every record is offered again."""
        self.transfers.clear()
        self.bytes_inflight = 0
