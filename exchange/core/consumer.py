"""The state of one live subscription: credits, cumulative acks, redelivery (pure).

Everything that decides what a subscription may send next lives here, as h11 keeps its state
machine in one file; the WebSocket handler only feeds events in and sends what this says.

- The client grants credits; each record sent spends one. The broker never sends without credit,
  so a client that grants nothing costs the broker nothing but the connection.
- Acks are cumulative: ``ack(s)`` means every record up to ``s`` is processed.
- Records sent but unacked for ``ack_timeout`` are sent again (go-back-N from the last ack); they
  spend credit again, which the client grants as it reads every frame.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from exchange.core.errors import Code, InputError

__all__ = ["ConsumerState"]


@dataclass
class ConsumerState:
    acked: int
    """Highest seq acked (cumulative); the durable position."""
    ack_timeout: float
    credits: int = 0
    sent_upto: int = -1
    """Highest seq sent on this connection; reads continue after it."""
    inflight: deque[tuple[int, float]] = field(default_factory=deque)
    """(seq, sent_at) of records sent and not yet acked, in seq order."""
    redeliveries: int = 0
    max_sent: int = -1
    """Highest seq ever sent on this connection (acks up to it are legitimate after a rewind)."""

    def __post_init__(self) -> None:
        self.sent_upto = max(self.sent_upto, self.acked)
        self.max_sent = max(self.max_sent, self.sent_upto)

    def grant(self, n: int) -> None:
        self.credits += n

    def wants(self, limit: int) -> int:
        """How many records may be sent now (at most ``limit``)."""
        return max(0, min(self.credits, limit))

    def sent(self, seqs: list[int], now: float) -> None:
        """Record that these seqs (ascending) went out.

        Seqs at or below ``acked`` were acked while the frame was being read and sent (a late
        ack for records sent before a rewind): they are done already, and spend nothing.
        """
        seqs = [s for s in seqs if s > self.acked]
        if not seqs:
            return
        if seqs[0] <= self.sent_upto or len(seqs) > self.credits:
            raise AssertionError("sent out of order or without credit")
        self.credits -= len(seqs)
        self.inflight.extend((s, now) for s in seqs)
        self.sent_upto = seqs[-1]
        self.max_sent = max(self.max_sent, self.sent_upto)

    def skip_to(self, seq: int) -> None:
        """Records up to ``seq`` were read and passed over (not for this subscriber): continue
        after them without spending credit."""
        self.sent_upto = max(self.sent_upto, seq)

    def ack(self, seq: int) -> bool:
        """Apply a cumulative ack. Returns True when the durable position moved."""
        if seq > self.max_sent:
            raise InputError(f"ack {seq} is beyond the last record sent ({self.max_sent})",
                             code=Code.BAD_ACK)
        if seq <= self.acked:
            return False
        self.acked = seq
        # an ack for records sent before a rewind: do not send them a second time
        self.sent_upto = max(self.sent_upto, seq)
        while self.inflight and self.inflight[0][0] <= seq:
            self.inflight.popleft()
        return True

    def overdue(self, now: float) -> bool:
        return bool(self.inflight) and now - self.inflight[0][1] >= self.ack_timeout

    def rewind(self) -> int:
        """Go back to the last ack so the unacked records are sent again; returns how many.

        No credit comes back: the client did receive those frames (one TCP stream) and grants
        credit again for every frame it reads, redelivered ones included.
        """
        n = len(self.inflight)
        self.inflight.clear()
        self.sent_upto = self.acked
        self.redeliveries += n
        return n

    def next_deadline(self) -> float | None:
        """When the oldest unacked record becomes overdue, if any."""
        return self.inflight[0][1] + self.ack_timeout if self.inflight else None
