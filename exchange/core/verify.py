"""The subscriber's side of a subscription, as a protocol object: frames in, deliveries out.

Sans-IO, like ``feed`` on the broker's side: an ``Inbox`` never touches a socket or a clock, and
never waits for a key. The node SDK's pump asks it which signers' keys a frame needs
(``signers``), fetches and checks them against the exchange CA itself, hands it the frame
(``receive``) and gets back, in seq order, what to do with each record:

- ``Deliver``: verified against its publisher's signature (alone, by its audit path, or with the
  rest of its batch when the frame holds it whole); hand it to the handler, then ``handled``;
- ``Evidence``: it does not verify; never handed over, kept as evidence that someone altered it;
- ``Seen``: a seq already handled (a redelivery after a reconnect); dropped.

Once every item is dealt with, the frame's last seq is the cumulative ack (``Inbox.ack``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import msgspec

from exchange.core import canonical, datasets, tlog
from exchange.core.envelope import parse_type
from exchange.core.errors import Code, ExchangeError, IntegrityError
from exchange.core.signing import BatchProof, Statement, Verifier, check_signer, record_digest
from exchange.core.wire import BatchRef, DeliveredRecord, Records

__all__ = ["Deliver", "Delivery", "Evidence", "Inbox", "Seen"]


@dataclass(frozen=True)
class Delivery:
    """A verified record handed to a subscription handler."""

    seq: int
    dataset: str
    key: str
    version: int
    data: dict[str, Any]
    source: str
    time: str
    accepted_at: float
    #: disclosure groups the agreement withheld (their values never reached this node)
    withheld: frozenset[str]
    redelivered: bool
    #: the schema version the record was published under (``data`` follows it, less the
    #: withheld groups), and its schema's absolute URI (CloudEvents ``dataschema``)
    schema_version: int = 1
    dataschema: str = ""


class Deliver(msgspec.Struct, frozen=True):
    """A record that verified: hand it over. (msgspec Structs: one per record, built in a
    fraction of a frozen dataclass's time.)"""

    delivery: Delivery
    #: what the transparency log's entry binds, for an inclusion check
    digest: bytes
    statement: Statement

    def leaf(self) -> bytes:
        """The record's leaf in the transparency log (its inclusion can be checked)."""
        d = self.delivery
        return tlog.entry_leaf(d.seq, d.dataset, self.statement.node, self.digest,
                               self.statement.root, tlog.micros(d.accepted_at))


class Evidence(msgspec.Struct, frozen=True):
    """A record that did not verify: someone altered it in transit."""

    seq: int
    code: str
    message: str


class Seen(msgspec.Struct, frozen=True):
    """A record already handled (a redelivery after a reconnect)."""

    seq: int


Item = Deliver | Evidence | Seen


class Inbox:
    """Dedup and verification of one subscription's frames (see the module docstring)."""

    def __init__(self, verifier: Verifier, *, last_seq: int = -1) -> None:
        self.verifier = verifier
        #: highest seq handed to the handler (the dedup line after a reconnect)
        self.last_seq = last_seq
        self.verified = 0
        self.delivered = 0
        self.dropped_duplicates = 0
        self.redelivered = 0
        #: (seq, code) of records that failed verification: never handed to the handler
        self.evidence: list[tuple[int, str]] = []
        self._ack: int | None = None

    def signers(self, frame: Records) -> list[tuple[str, str | None]]:
        """The publishers' signing keys (node, key id) this frame needs and the verifier lacks:
        fetch and check them (against the exchange CA) before ``receive``."""
        return list(dict.fromkeys((b.statement.node, b.statement.kid) for b in frame.batches
                                  if not self.verifier.knows(b.statement.node, b.statement.kid)))

    def receive(self, frame: Records) -> list[Item]:
        """What to do with each record of ``frame``, in seq order."""
        batches = {b.id: b for b in frame.batches}
        types: dict[str, tuple[str, datasets.DatasetSpec]] = {}
        whole = self._verify_whole(frame.records, batches, types)
        known: dict[int, dict[bytes, tuple[int, int]]] = {}
        out: list[Item] = []
        for rec in frame.records:
            if rec.seq <= self.last_seq:
                self.dropped_duplicates += 1
                out.append(Seen(rec.seq))
                continue
            if rec.redelivered:
                self.redelivered += 1
            try:
                # by identity: a record with a path, whatever its seq, is verified on its own
                done = whole.get(id(rec)) if not rec.path else None
                if isinstance(done, ExchangeError):
                    raise done
                dataset, digest = done or self._verify(rec, batches, known, types)
            except ExchangeError as err:
                self.evidence.append((rec.seq, err.code))
                out.append(Evidence(rec.seq, err.code, err.message))
                continue
            self.verified += 1
            ev = rec.event
            out.append(Deliver(Delivery(
                seq=rec.seq, dataset=dataset, key=ev.subject, version=ev.version, data=ev.data,
                source=ev.source, time=ev.time, accepted_at=rec.accepted_at,
                withheld=frozenset(rec.withheld), redelivered=rec.redelivered,
                schema_version=types[ev.type][1].version, dataschema=ev.dataschema),
                digest, batches[rec.batch].statement))
        self._ack = frame.records[-1].seq if frame.records else None
        return out

    def handled(self, item: Deliver) -> None:
        """The handler returned for this record: it is never handed over again."""
        self.delivered += 1
        self.last_seq = item.delivery.seq

    @property
    def ack(self) -> int | None:
        """The cumulative ack once every item of the last frame is dealt with (None: nothing to
        ack). A handler that fails mid-frame leaves the frame unacked: the broker sends it
        again, and what was handled before the failure comes back ``Seen``."""
        return self._ack

    def _verify_whole(self, records: Sequence[DeliveredRecord], batches: Mapping[int, BatchRef],
                      types: dict[str, tuple[str, datasets.DatasetSpec]]
                      ) -> dict[int, tuple[str, bytes] | ExchangeError]:
        """Records that came without audit paths: the broker sends a batch so only when the
        frame holds all of it, and its root is rebuilt from them. Per record (``id()`` of the
        decoded record, alive as long as the frame), (dataset, digest) or why the batch failed
        (all of its records fail together: which one was altered cannot be told)."""
        pathless: dict[int, list[DeliveredRecord]] = {}
        for rec in records:
            if not rec.path:
                pathless.setdefault(rec.batch, []).append(rec)
        out: dict[int, tuple[str, bytes] | ExchangeError] = {}
        for bid, recs in pathless.items():
            try:
                ref = batches.get(bid)
                if ref is None:
                    raise IntegrityError(f"batch {bid} arrived without its statement",
                                         code=Code.SIGNATURE_INVALID)
                st = ref.statement
                if sorted(r.index for r in recs) != list(range(st.size)):
                    raise IntegrityError(f"batch {bid} came without audit paths but not whole",
                                         code=Code.SIGNATURE_INVALID)
                recs.sort(key=lambda r: r.index)
                found = []
                for rec in recs:
                    dataset, spec = _parsed_type(rec.event.type, types)
                    check_signer(rec.event, st, dataset)
                    found.append((dataset, record_digest(
                        rec.event, spec.groups, rec.salts, rec.withheld,
                        canonical.shape(spec.record_type))))
                self.verifier.verify_whole(st, ref.signature, [d for _, d in found])
            except ExchangeError as err:
                out.update((id(r), err) for r in recs)
                continue
            out.update((id(r), f) for r, f in zip(recs, found, strict=True))
        return out

    def _verify(self, rec: DeliveredRecord, batches: Mapping[int, BatchRef],
                known: dict[int, dict[bytes, tuple[int, int]]],
                types: dict[str, tuple[str, datasets.DatasetSpec]]) -> tuple[str, bytes]:
        """Verify one record; per frame, ``known`` shares Merkle work between the records of a
        batch and ``types`` parses each CloudEvents type once. Returns (dataset, digest)."""
        ref = batches.get(rec.batch)
        if ref is None:
            raise IntegrityError(f"record {rec.seq} arrived without its batch statement",
                                 code=Code.SIGNATURE_INVALID)
        ev = rec.event
        dataset, spec = _parsed_type(ev.type, types)
        digest = self.verifier.verify_record(
            ev, spec.groups, rec.salts, rec.withheld,
            BatchProof(ref.statement, ref.signature, rec.index, rec.path), dataset=dataset,
            known=known.setdefault(rec.batch, {}), shape=canonical.shape(spec.record_type))
        return dataset, digest


def _parsed_type(type_: str, types: dict[str, tuple[str, datasets.DatasetSpec]]
                 ) -> tuple[str, datasets.DatasetSpec]:
    """A CloudEvents type's dataset and spec, parsed once per frame (``types``)."""
    parsed = types.get(type_)
    if parsed is None:
        name, version = parse_type(type_)
        parsed = types[type_] = (name, datasets.get(name, version))
    return parsed
