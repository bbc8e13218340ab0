"""What the uplink may send next: records in pieces under a bounded window. Pure.

A record goes out as ``offer`` (is it there already? where does the collector's spool
end?) and then pieces from that offset. Every offer and piece counts against the window
(messages and bytes) until the collector answers for it, so a slow link never holds more
than the window in its queues, a broken one loses at most the window, and events (sent
outside this window) never wait behind a record backlog. The I/O loop is ``station.uplink``.
"""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Transfer:
    """One record on its way: what has been offered, sent and acknowledged."""
    record_id: str
    sha256: str
    size: int
    offered: bool = False
    next_offset: int | None = None             # None until the collector said where to start
    inflight: dict[int, int] = field(default_factory=dict)  # piece end offset -> bytes
    offer_inflight: bool = False

    @property
    def bytes_inflight(self) -> int:
        return sum(self.inflight.values())

    @property
    def messages_inflight(self) -> int:
        return len(self.inflight) + (1 if self.offer_inflight else 0)

    @property
    def fully_sent(self) -> bool:
        return self.next_offset is not None and self.next_offset >= self.size


class Window:
    """The transfers in flight, oldest first, and how much the window still allows."""

    def __init__(self, max_bytes: int, max_messages: int, chunk_bytes: int):
        self.max_bytes, self.max_messages, self.chunk_bytes = max_bytes, max_messages, chunk_bytes
        self.transfers: dict[str, Transfer] = {}

    def __contains__(self, record_id: str) -> bool:
        return record_id in self.transfers

    @property
    def bytes_inflight(self) -> int:
        return sum(t.bytes_inflight for t in self.transfers.values())

    @property
    def messages_inflight(self) -> int:
        return sum(t.messages_inflight for t in self.transfers.values())

    def can_start(self) -> bool:
        """Room for one more offer (a new record)."""
        return self.messages_inflight < self.max_messages

    def start(self, record_id: str, sha256: str, size: int) -> Transfer:
        transfer = Transfer(record_id, sha256, size, offered=True, offer_inflight=True)
        self.transfers[record_id] = transfer
        return transfer

    def want(self, record_id: str, offset: int) -> None:
        """The collector holds ``offset`` bytes: go on from there (forgetting pieces in flight)."""
        transfer = self.transfers.get(record_id)
        if transfer is None:
            return
        transfer.offer_inflight = False
        transfer.inflight.clear()
        transfer.next_offset = min(max(offset, 0), transfer.size)

    def acked(self, record_id: str, offset: int) -> None:
        transfer = self.transfers.get(record_id)
        if transfer is not None:
            for end in [end for end in transfer.inflight if end <= offset]:
                del transfer.inflight[end]

    def finish(self, record_id: str) -> Transfer | None:
        """Stored (or given up for now): the record leaves the window."""
        return self.transfers.pop(record_id, None)

    def next_pieces(self) -> list[tuple[Transfer, int, int]]:
        """Pieces (transfer, offset, length) the window allows now, oldest record first;
        each is counted in flight as it is returned."""
        pieces = []
        for transfer in self.transfers.values():
            while transfer.next_offset is not None and not transfer.fully_sent:
                length = min(self.chunk_bytes, transfer.size - transfer.next_offset)
                if self.messages_inflight >= self.max_messages or \
                        (self.bytes_inflight + length > self.max_bytes and self.bytes_inflight > 0):
                    return pieces
                offset = transfer.next_offset
                transfer.inflight[offset + length] = length
                transfer.next_offset = offset + length
                pieces.append((transfer, offset, length))
        return pieces

    def clear(self) -> None:
        """The link broke: nothing is in flight any more; every record is offered again."""
        self.transfers.clear()
