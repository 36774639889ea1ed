"""Subscriptions over raw WebSockets: credits, cumulative acks, start positions, redelivery,
lag, and the agreement's disclosure groups as seen in the frames on the wire."""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import msgspec
import pytest

from exchange import pki
from exchange.core import datasets
from exchange.core.errors import IntegrityError
from exchange.core.feed import Feed
from exchange.core.signing import BatchProof, Verifier, record_digest
from exchange.core.wire import Hello, Records
from exchange.node import Delivery, Node, Record
from tests.conftest import (
    OWNERS,
    Env,
    Timed,
    people,
    sealed,
    timed_broker,
    until,
)

POP = OWNERS["population"]
TAX = OWNERS["tax"]
LAND = OWNERS["land"]
_frame = msgspec.json.Decoder(Records | Hello)


def session(env: Env, node: str, url: str | None = None) -> aiohttp.ClientSession:
    return aiohttp.ClientSession(url or env.url,
                                 connector=aiohttp.TCPConnector(ssl=env.ssl(node)))


async def publish(env: Env, records: list[dict[str, Any]], *, seed: int = 1,
                  url: str | None = None) -> list[int]:
    """Publish as the population owner over HTTP; return the seqs."""
    async with session(env, POP, url) as s:
        batch = sealed(env, POP, records, seed=seed.to_bytes(32, "big"))
        async with s.post("/v1/datasets/population/records", data=msgspec.json.encode(batch),
                          headers={"Content-Type": "application/json"}) as resp:
            assert resp.status == 200, await resp.text()
            r = msgspec.json.decode(await resp.read())["receipt"]
    return list(range(r["first_seq"], r["last_seq"] + 1))


class Sub:
    """A raw subscription WebSocket (JSON frames)."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self.texts: list[str] = []

    async def frame(self, within: float = 10) -> Records | Hello:
        msg = await self.ws.receive(timeout=within)
        assert msg.type == aiohttp.WSMsgType.TEXT, msg
        self.texts.append(msg.data)
        frame: Records | Hello = _frame.decode(msg.data)
        return frame

    async def hello(self) -> Hello:
        frame = await self.frame()
        assert isinstance(frame, Hello)
        return frame

    async def records(self, n: int, within: float = 10) -> list[Any]:
        """The next ``n`` records, over as many frames as they take."""
        out: list[Any] = []
        while len(out) < n:
            frame = await self.frame(within)
            assert isinstance(frame, Records)
            out.extend(frame.records)
        assert len(out) == n, [r.seq for r in out]
        return out

    async def credit(self, n: int) -> None:
        await self.ws.send_str(msgspec.json.encode({"type": "credit", "n": n}).decode())

    async def ack(self, seq: int) -> None:
        await self.ws.send_str(msgspec.json.encode({"type": "ack", "seq": seq}).decode())


async def subscribe(s: aiohttp.ClientSession, name: str, **query: str) -> Sub:
    q = "&".join(f"{k}={v}" for k, v in {"name": name, "encoding": "json", **query}.items())
    return Sub(await s.ws_connect(f"/v1/datasets/population/subscribe?{q}"))


async def acked(env: Env, node: str, name: str, url: str | None = None) -> int:
    async with session(env, node, url) as s, s.get("/v1/subscriptions") as resp:
        for row in msgspec.json.decode(await resp.read()):
            if row["name"] == name:
                return int(row["acked"])
    raise AssertionError(f"no subscription {name}")


async def test_no_credit_no_records_and_nothing_held(env: Env) -> None:
    import tracemalloc

    async with session(env, TAX) as s:
        sub = await subscribe(s, "idle")
        await sub.hello()
        state = env.broker.subscriptions.live[(TAX, "population", "idle")].state
        tracemalloc.start()
        try:
            before = tracemalloc.take_snapshot()
            async with Node(env.node_config(POP, batch_size=500)) as pop:
                result = await pop.publish("population", [Record(p) for p in people(2000)])
            assert result.accepted == 2000
            await sub.credit(0)  # a zero grant is legal and changes nothing
            # the broker has read nothing for this subscriber, holds nothing in flight
            await until(lambda: env.broker.hub.heads.get("population") == 1999,
                        lambda: env.broker.hub.event("population"), what="head 1999")
            assert state.credits == 0 and not state.inflight and state.sent_upto == -1
            after = tracemalloc.take_snapshot()
        finally:
            tracemalloc.stop()
        grown = sum(st.size_diff for st in after.compare_to(before, "filename")
                    if "subscribe.py" in str(st.traceback) or "feed.py" in str(st.traceback))
        assert grown < 64 * 1024
        # the first records frame after the first credit starts at seq 0 with one record:
        # nothing was sent before it (frames arrive in order)
        await sub.credit(1)
        frame = await sub.frame()
        assert isinstance(frame, Records)
        assert [r.seq for r in frame.records] == [0] and frame.head == 1999
        assert not frame.records[0].redelivered
        assert state.credits == 0 and [s for s, _ in state.inflight] == [0]
        await sub.ws.close()


async def test_credits_bound_every_frame(env: Env) -> None:
    await publish(env, people(30))
    async with session(env, TAX) as s:
        sub = await subscribe(s, "c")
        await sub.hello()
        await sub.credit(7)
        got = await sub.records(7)
        assert [r.seq for r in got] == list(range(7))
        await sub.credit(3)
        got = await sub.records(3)
        assert [r.seq for r in got] == [7, 8, 9]
        # acks do not grant credit: after acking, the next record needs a credit
        await sub.ack(9)
        await sub.credit(1)
        assert [r.seq for r in await sub.records(1)] == [10]
        await sub.ws.close()


async def test_cumulative_acks_persist_across_reconnects(env: Env) -> None:
    await publish(env, people(10))
    changes = env.broker.subscriptions.next_change
    async with session(env, TAX) as s:
        sub = await subscribe(s, "durable")
        hello = await sub.hello()
        assert (hello.acked, hello.start_after) == (-1, -1)
        await sub.credit(100)
        assert [r.seq for r in await sub.records(10)] == list(range(10))
        await sub.ack(2)
        await sub.ack(5)  # cumulative: covers 3, 4, 5
        await sub.ack(4)  # an older ack changes nothing
        await until(lambda: _eq(acked(env, TAX, "durable"), 5), changes, what="ack 5 stored")
        await sub.ws.close()
        await until(lambda: (TAX, "population", "durable") not in env.broker.subscriptions.live,
                    changes, what="disconnect")
        more = await publish(env, people(13)[10:], seed=2)
        assert more == [10, 11, 12]
        # start= is ignored for an existing subscription: it resumes after its ack
        sub = await subscribe(s, "durable", start="latest")
        hello = await sub.hello()
        assert (hello.acked, hello.start_after) == (5, 5)
        await sub.credit(100)
        got = await sub.records(7)
        assert [r.seq for r in got] == list(range(6, 13))
        assert not any(r.redelivered for r in got)  # new connection: first delivery on it
        await sub.ack(12)
        await until(lambda: _eq(acked(env, TAX, "durable"), 12), changes, what="ack 12")
        await sub.ws.close()


async def _eq(value: Any, expected: int) -> bool:
    return bool(await value == expected)


async def test_a_second_connection_to_a_live_subscription_is_refused(env: Env) -> None:
    async with session(env, TAX) as s:
        sub = await subscribe(s, "one")
        await sub.hello()
        async with s.get("/v1/datasets/population/subscribe?name=one") as resp:
            assert resp.status == 409
            assert msgspec.json.decode(await resp.read())["code"] == "subscription_busy"
        await sub.ws.close()


async def test_ack_beyond_what_was_sent_closes_the_socket(env: Env) -> None:
    await publish(env, people(3))
    async with session(env, TAX) as s:
        sub = await subscribe(s, "bad")
        await sub.hello()
        await sub.credit(1)
        await sub.records(1)
        await sub.ack(2)
        msg = await sub.ws.receive(timeout=10)
        assert msg.type == aiohttp.WSMsgType.CLOSE
        assert sub.ws.close_code == 4400
        sub = await subscribe(s, "bad2")
        await sub.hello()
        await sub.ws.send_bytes(b"\xa1\xff")  # MessagePack str that is not UTF-8
        msg = await sub.ws.receive(timeout=10)
        assert msg.type == aiohttp.WSMsgType.CLOSE and sub.ws.close_code == 4400
    assert await acked(env, TAX, "bad") == -1


async def test_start_latest(env: Env) -> None:
    await publish(env, people(5))
    async with session(env, TAX) as s:
        sub = await subscribe(s, "late", start="latest")
        hello = await sub.hello()
        assert hello.start_after == 4
        await sub.credit(100)
        assert await publish(env, people(8)[5:], seed=2) == [5, 6, 7]
        assert [r.seq for r in await sub.records(3)] == [5, 6, 7]
        await sub.ws.close()


async def test_start_at_a_seq(env: Env) -> None:
    await publish(env, people(6))
    async with session(env, TAX) as s:
        sub = await subscribe(s, "from3", start="seq:3")
        assert (await sub.hello()).start_after == 2
        await sub.credit(100)
        assert [r.seq for r in await sub.records(3)] == [3, 4, 5]
        await sub.ws.close()


async def test_start_at_a_time(env: Env) -> None:
    first = await publish(env, people(4))
    t = time.time()
    # accepted_at of the next batch is read after t on the same clock
    second = await publish(env, people(7)[4:], seed=2)
    stamp = dt.datetime.fromtimestamp(t, dt.UTC).isoformat().replace("+00:00", "Z")
    async with session(env, TAX) as s:
        sub = await subscribe(s, "since", start=f"time:{stamp}")
        assert (await sub.hello()).start_after == first[-1]
        await sub.credit(100)
        got = await sub.records(3)
        assert [r.seq for r in got] == second
        assert all(r.accepted_at >= t for r in got)
        await sub.ws.close()


@pytest.fixture
async def timed(env: Env, tmp_path: Path) -> AsyncIterator[Timed]:
    async with timed_broker(env.pki_dir, tmp_path / "timed") as t:
        yield t
    assert t.broker.subscriptions.live == {}


async def settled(timed: Timed, feed: Feed, credits: int) -> None:
    """Until the broker's feed has taken the credit just sent: the pump then waits on the
    clock, so moving it is what happens next."""
    await until(lambda: feed.state.credits == credits,
                timed.broker.subscriptions.next_change, what=f"{credits} credits")


async def test_unacked_records_are_redelivered(env: Env, timed: Timed) -> None:
    await publish(env, people(5), url=timed.url)
    timeout = timed.broker.limits.ack_timeout_s
    async with session(env, TAX, timed.url) as s:
        sub = await subscribe(s, "slow")
        await sub.hello()
        await sub.credit(5)
        first = await sub.records(5)
        assert [r.seq for r in first] == [0, 1, 2, 3, 4]
        assert not any(r.redelivered for r in first)
        # a reader grants credit again for what it read, but does not ack
        await sub.credit(5)
        feed = timed.broker.subscriptions.live[(TAX, "population", "slow")]
        await settled(timed, feed, 5)
        # just short of the ack timeout nothing is due ...
        await timed.clock.advance(timeout - 0.001)
        assert feed.state.redeliveries == 0 and feed.state.credits == 5
        # ... at the timeout the same records come again, flagged
        await timed.clock.advance(0.001)
        again = await sub.records(5)
        assert feed.state.redeliveries == 5
        assert [r.seq for r in again] == [0, 1, 2, 3, 4]
        assert all(r.redelivered for r in again)
        assert [r.event.id for r in again] == [r.event.id for r in first]
        await sub.ack(4)
        await until(lambda: _eq(acked(env, TAX, "slow", timed.url), 4),
                    timed.broker.subscriptions.next_change, what="ack 4")
        # fully acked: no third delivery however long it waits; new records are not flagged
        await timed.clock.advance(10 * timeout)
        await publish(env, people(6)[5:], seed=2, url=timed.url)
        await sub.credit(1)
        frame = await sub.frame()
        assert isinstance(frame, Records)
        assert [(r.seq, r.redelivered) for r in frame.records] == [(5, False)]
        await sub.ws.close()


async def test_redelivery_resumes_after_a_partial_ack(env: Env, timed: Timed) -> None:
    await publish(env, people(6), url=timed.url)
    async with session(env, TAX, timed.url) as s:
        sub = await subscribe(s, "partial")
        await sub.hello()
        await sub.credit(6)
        await sub.records(6)
        await sub.credit(6)  # credit for what it read
        await sub.ack(3)
        await until(lambda: _eq(acked(env, TAX, "partial", timed.url), 3),
                    timed.broker.subscriptions.next_change, what="ack 3")
        await timed.clock.advance(timed.broker.limits.ack_timeout_s)
        # go-back-N from the last ack: only what is unacked comes again
        frame = await sub.frame()
        assert isinstance(frame, Records)
        assert [(r.seq, r.redelivered) for r in frame.records] == [(4, True), (5, True)]
        await sub.ws.close()


async def test_lag_goes_to_zero_after_acks(env: Env) -> None:
    await publish(env, people(12))

    async def lag() -> int:
        async with session(env, TAX) as s, s.get("/v1/subscriptions") as resp:
            rows = msgspec.json.decode(await resp.read())
            return int(rows[0]["lag"]) if rows else -1

    async with session(env, TAX) as s:
        sub = await subscribe(s, "lagging")
        await sub.hello()
        assert await lag() == 12
        await sub.credit(100)
        await sub.records(12)
        assert await lag() == 12  # sent is not processed
        await sub.ack(7)
        await until(lambda: _eq(lag(), 4), env.broker.subscriptions.next_change, what="lag 4")
        await sub.ack(11)
        await until(lambda: _eq(lag(), 0), env.broker.subscriptions.next_change, what="lag 0")
        await sub.ws.close()


async def test_residence_only_agreement_never_carries_identity_values(env: Env) -> None:
    ps = people(20, seed=3)
    await publish(env, ps)
    async with session(env, LAND) as s:
        sub = await subscribe(s, "parcels")
        hello = await sub.hello()
        assert hello.granted == ["residence"]
        await sub.credit(100)
        got = await sub.records(20)
        await sub.ws.close()
    wire = "".join(sub.texts)
    enc = msgspec.json.encode
    assert '"full_name"' not in wire and '"birth_date"' not in wire
    for p, r in zip(ps, got, strict=True):
        # the key is always disclosed (it is the envelope's subject); nowhere else
        assert wire.count(enc(p["id"]).decode()) == 1
        assert r.event.subject == p["id"] and "id" not in r.event.data
        for field in ("full_name", "birth_date", "ethnicity", "religion", "as_of"):
            if field in p:
                assert enc(p[field]).decode() not in wire, field
        addr = p["permanent_address"]
        assert f'"ward_code":{enc(addr["ward_code"]).decode()}' in wire
        assert "street" not in addr or enc(addr["street"]).decode() in wire
        assert r.event.data == {"permanent_address": p["permanent_address"]}
        # (sealed as population v2, the latest: its own groups are withheld too)
        assert set(r.withheld) == {"identity", "civil_status", "ethnicity_religion",
                                   "hometown", "household"}
        assert set(r.salts) == {"residence"}
    # the projected records still verify against the publisher's signature
    frames = [f for f in map(_frame.decode, sub.texts) if isinstance(f, Records)]
    verifier = Verifier(pki.load_signing_registry(env.pki_dir))
    spec = datasets.get("population")
    checked = 0
    for frame in frames:
        batches = {b.id: b for b in frame.batches}
        for r in frame.records:
            ref = batches[r.batch]
            if r.path or ref.statement.size == 1:
                verifier.verify_record(r.event, spec.groups, r.salts, r.withheld,
                                       BatchProof(ref.statement, ref.signature, r.index,
                                                  r.path))
                checked += 1
        # a batch the frame holds whole comes without paths: its root is rebuilt from it
        for bid, ref in batches.items():
            whole = sorted((r for r in frame.records if r.batch == bid and not r.path
                            and ref.statement.size > 1), key=lambda r: r.index)
            if whole:
                verifier.verify_whole(ref.statement, ref.signature, [
                    record_digest(r.event, spec.groups, r.salts, r.withheld) for r in whole])
                checked += len(whole)
    assert checked == 20 and verifier.verifications == 1
    # and a tampered value does not
    r = got[0]
    moved = {"permanent_address": {**r.event.data["permanent_address"], "street": "Số 2"}}
    ref = next(b for f in frames for b in f.batches if b.id == r.batch)
    same_batch = sorted((x for f in frames for x in f.records if x.batch == r.batch),
                        key=lambda x: x.index)
    digests = [record_digest(x.event, spec.groups, x.salts, x.withheld) for x in same_batch]
    digests[r.index] = record_digest(msgspec.structs.replace(r.event, data=moved), spec.groups,
                                     r.salts, r.withheld)
    with pytest.raises(IntegrityError, match="signed batch root"):
        verifier.verify_whole(ref.statement, ref.signature, digests)


async def test_subscribers_never_read_uncommitted_records(env: Env) -> None:
    """Reads share the store's one connection with the append transaction; a record read before
    its COMMIT could be delivered (and acked) and then lost to a crash, its seq reused."""
    store: Any = env.broker.store
    read = store.read
    early: list[tuple[int, int]] = []

    async def checked_read(dataset: str, after: int, limit: int) -> Any:
        rows = await read(dataset, after, limit)
        head = await store.head()  # the committed head: it moves only after COMMIT
        if rows and rows[-1].seq > head:
            early.append((rows[-1].seq, head))
        return rows

    store.read = checked_read
    done = asyncio.Event()
    seqs: list[int] = []

    async def handler(d: Delivery) -> None:
        seqs.append(d.seq)
        if len(seqs) == 3000:
            done.set()

    async with Node(env.node_config(POP, batch_size=50)) as pop, \
            Node(env.node_config(LAND)) as land:
        land.subscribe("population", "busy", handler)
        result = await pop.publish("population", [Record(p) for p in people(3000, seed=9)])
        assert result.accepted == 3000
        await asyncio.wait_for(done.wait(), 30)
    assert seqs == list(range(3000))
    assert early == []


async def test_a_subscriber_that_keeps_acking_is_not_sent_its_window_again(
        env: Env, timed: Timed) -> None:
    """A wide window worked through more slowly than the ack timeout, acked all along: nothing
    is redelivered while the acks move (before, the oldest record's age alone decided, and a
    slow subscriber got its whole window again, and again: the redelivery storm of issue 16).
    Once the acks stop, the timeout counts from the last one."""
    await publish(env, people(40), url=timed.url)
    timeout = timed.broker.limits.ack_timeout_s
    async with session(env, TAX, timed.url) as s:
        sub = await subscribe(s, "wide")
        await sub.hello()
        await sub.credit(40)
        assert [r.seq for r in await sub.records(40)] == list(range(40))
        feed = timed.broker.subscriptions.live[(TAX, "population", "wide")]
        for upto in range(4, 35, 5):  # 5 records acked per 0.6 timeouts: 4.2 timeouts in all
            await sub.ack(upto)
            await until(lambda upto=upto: feed.state.acked == upto,
                        timed.broker.subscriptions.next_change, what=f"ack {upto}")
            await timed.clock.advance(0.6 * timeout)
            assert feed.state.redeliveries == 0, f"redelivered after ack {upto}"
        # the acks stop at 34: the timeout runs from the last one
        await timed.clock.advance(0.4 * timeout - 0.001)
        assert feed.state.redeliveries == 0
        await timed.clock.advance(0.001)
        assert feed.state.redeliveries == 5  # 35..39 go again once credit allows
        await sub.credit(5)
        again = await sub.records(5)
        assert [(r.seq, r.redelivered) for r in again] == [(s, True) for s in range(35, 40)]
        await sub.ws.close()


async def test_a_plain_get_of_subscribe_is_refused_and_stores_nothing(env: Env) -> None:
    async with session(env, TAX) as s:
        async with s.get("/v1/datasets/population/subscribe?name=plain") as resp:
            body = msgspec.json.decode(await resp.read())
        assert resp.status == 400 and body["code"] == "bad_request"
        async with s.get("/v1/subscriptions") as resp:
            rows = msgspec.json.decode(await resp.read())
    assert "plain" not in {r["name"] for r in rows}
