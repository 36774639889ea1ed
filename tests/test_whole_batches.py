"""Batches delivered whole travel without audit paths: the SDK rebuilds their root from the
records, delivers them when it matches, and keeps every record of the batch as evidence when it
does not (which record was altered cannot be told)."""

from __future__ import annotations

import os
from typing import Any

import msgspec

from exchange import pki
from exchange.core import datasets
from exchange.core.seal import seal
from exchange.core.signing import Batch, Verifier
from exchange.core.verify import Deliver, Delivery, Evidence, Inbox, Seen
from exchange.core.wire import BatchRef, DeliveredRecord, RecordsIn
from tests.conftest import OWNERS, SEALED_AT, Env, people

POP = OWNERS["population"]
SPEC = datasets.get("population")


def _batch(env: Env, n: int) -> tuple[Batch, list[list[bytes]]]:
    key = pki.load_node_identity(env.pki_dir, POP).signing_key
    batch = seal(key, POP, SPEC, [(p["id"], 1, p) for p in people(n, seed=71)],
                 os.urandom(32), time=SEALED_AT)
    _, _, paths = Verifier({POP: key.public_key()}).verify_batch(batch, SPEC.groups)
    return batch, paths


def _frame(batch: Batch, records: list[DeliveredRecord]) -> RecordsIn:
    raw = msgspec.msgpack.encode({"type": "records", "records": records, "batches": [
        BatchRef(9, batch.statement, batch.signature)]})
    return msgspec.msgpack.decode(raw, type=RecordsIn)


def _delivered(batch: Batch, paths: list[list[bytes]] | None, *, first: int = 0,
               only: range | None = None) -> list[DeliveredRecord]:
    return [DeliveredRecord(seq=first + i, event=r.event, salts=r.salts, batch=9, index=i,
                            path=paths[i] if paths else [], accepted_at=1.0)
            for i, r in enumerate(batch.records) if only is None or i in only]


def _inbox(env: Env) -> Inbox:
    """The subscriber's side with the exchange's signing keys at hand (no socket)."""
    return Inbox(Verifier(pki.load_signing_registry(env.pki_dir)))


def _take(inbox: Inbox, frame: RecordsIn, got: list[Delivery]) -> int | None:
    """Deal with every item of a frame as the SDK's pump does; the frame's ack."""
    for item in inbox.receive(frame):
        if isinstance(item, Deliver):
            got.append(item.delivery)
            inbox.handled(item)
    return inbox.ack


def test_whole_batches_verify_and_altered_ones_are_evidence(env: Env) -> None:
    batch, paths = _batch(env, 5)
    inbox, got = _inbox(env), list[Delivery]()
    # whole, no paths: delivered, one signature check
    assert _take(inbox, _frame(batch, _delivered(batch, None)), got) == 4
    assert [d.seq for d in got] == [0, 1, 2, 3, 4] and not inbox.evidence
    assert inbox.verifier.verifications == 1
    # the same batch again, one record altered: nothing of it delivered, all kept
    bad = _delivered(batch, None, first=10)
    ev = bad[2].event
    bad[2] = msgspec.structs.replace(bad[2], event=msgspec.structs.replace(
        ev, data={**ev.data, "full_name": "Someone Else"}))
    items = inbox.receive(_frame(batch, bad))
    assert all(isinstance(i, Evidence) for i in items) and inbox.ack == 14
    assert len(got) == 5
    assert [s for s, _ in inbox.evidence] == [10, 11, 12, 13, 14]
    assert {c for _, c in inbox.evidence} == {"signature_invalid"}
    # without paths but not whole: refused; with paths, part of a batch verifies alone
    inbox.evidence.clear()
    _take(inbox, _frame(batch, _delivered(batch, None, first=20, only=range(3))), got)
    assert [s for s, _ in inbox.evidence] == [20, 21, 22]
    _take(inbox, _frame(batch, _delivered(batch, paths, first=30, only=range(3))), got)
    assert [d.seq for d in got[5:]] == [30, 31, 32]
    # a redelivery of what was handled is dropped, and still acked
    items = inbox.receive(_frame(batch, _delivered(batch, paths, first=30, only=range(3))))
    assert [type(i) for i in items] == [Seen, Seen, Seen] and inbox.ack == 32


def test_the_inbox_names_the_signers_whose_keys_a_frame_needs(env: Env) -> None:
    batch, _ = _batch(env, 2)
    keys: dict[str, Any] = {}
    inbox = Inbox(Verifier(keys.get))
    frame = _frame(batch, _delivered(batch, None))
    assert inbox.signers(frame) == [(POP, batch.statement.kid)]
    # verifying without the key keeps every record as evidence (unknown_signer)
    assert all(isinstance(i, Evidence) and i.code == "unknown_signer"
               for i in inbox.receive(frame))
    keys[POP] = pki.load_signing_registry(env.pki_dir)[POP]
    assert inbox.signers(frame) == []
    assert all(isinstance(i, Deliver) for i in inbox.receive(frame))


async def test_the_broker_sends_paths_only_for_batches_a_frame_cuts(env: Env) -> None:
    # batches of 4 and 6; a credit of 7 cuts the second: the first (whole) comes without paths,
    # the cut one with them; the read was full, so the broker keeps to the batch boundary
    from tests.test_subscribe import TAX, publish, session, subscribe

    first = await publish(env, people(4, seed=81), seed=1)
    second = await publish(env, people(6, seed=82), seed=2)
    async with session(env, TAX) as s:
        sub = await subscribe(s, "paths")
        await sub.hello()
        await sub.credit(7)
        got = await sub.records(4)
        assert [r.seq for r in got] == first and all(not r.path for r in got)
        got = await sub.records(3)  # the rest of the credit: part of the second batch
        assert [r.seq for r in got] == second[:3] and all(r.path for r in got)
        await sub.credit(10)
        got = await sub.records(3)
        assert [r.seq for r in got] == second[3:] and all(r.path for r in got)
        await sub.ws.close()


def test_a_record_with_a_path_never_rides_on_a_whole_batch(env: Env) -> None:
    # a forged record with a made-up path and the seq of a record in a whole batch must be
    # verified on its own (and fail), not take that batch's result
    batch, _ = _batch(env, 3)
    inbox, got = _inbox(env), list[Delivery]()
    genuine = _delivered(batch, None)
    ev = genuine[0].event
    forged = msgspec.structs.replace(genuine[0], path=[b"\x00" * 32], event=(
        msgspec.structs.replace(ev, data={**ev.data, "full_name": "FORGED"})))
    _take(inbox, _frame(batch, [forged, *genuine]), got)
    assert [s for s, _ in inbox.evidence] == [0]
    assert [(d.seq, d.data["full_name"]) for d in got] == [
        (r.seq, r.event.data["full_name"]) for r in genuine]


async def test_paths_always_gives_every_record_its_path(env: Env) -> None:
    from tests.test_subscribe import TAX, publish, session, subscribe

    seqs = await publish(env, people(4, seed=83), seed=1)
    async with session(env, TAX) as s:
        sub = await subscribe(s, "with-paths", paths="always")
        await sub.hello()
        await sub.credit(10)
        got = await sub.records(4)
        assert [r.seq for r in got] == seqs and all(r.path for r in got)
        await sub.ws.close()
        async with s.get("/v1/datasets/population/subscribe?name=x&paths=sometimes") as resp:
            assert resp.status == 400
            assert (await resp.json())["code"] == "bad_paths"
