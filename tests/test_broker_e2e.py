"""Publish → gate → store → deliver → verify, over real TLS on 127.0.0.1 and sqlite on disk."""

from __future__ import annotations

import asyncio

import msgspec
import pytest

from exchange.clock import FakeClock
from exchange.core.envelope import rfc3339
from exchange.core.errors import Forbidden, RemoteError, UnavailableError
from exchange.core.ledger import StoredBody
from exchange.node import Delivery, Node, Record
from exchange.sim.generate import Generator
from tests.conftest import OWNERS, TODAY, Env


async def test_population_reaches_tax_verified_and_projected(env: Env) -> None:
    people = Generator(1, today=TODAY).population(50)
    got: list[Delivery] = []
    done = asyncio.Event()

    async def handler(d: Delivery) -> None:
        got.append(d)
        if len(got) == len(people):
            done.set()

    async with Node(env.node_config(OWNERS["population"])) as pop, \
            Node(env.node_config(OWNERS["land"])) as land:
        result = await pop.publish("population", [Record(p) for p in people])
        assert result.accepted == 50 and not result.rejected
        assert result.seqs == list(range(50))
        sub = land.subscribe("population", "owners", handler)
        await asyncio.wait_for(done.wait(), 10)
        await sub.stop()
    assert [d.seq for d in got] == list(range(50))
    assert sub.verified == 50
    # the land registry's agreement grants only `residence`
    assert all(set(d.data) == {"permanent_address"} for d in got)
    # the owner publishes population v2 (its latest); the agreement reads v1, so the groups
    # v2 added arrive withheld too
    assert all(d.withheld == {"identity", "civil_status", "ethnicity_religion", "hometown",
                              "household"} for d in got)
    assert got[0].data["permanent_address"] == people[0]["permanent_address"]


async def test_failing_handler_is_retried_and_refusal_stops(env: Env) -> None:
    people = Generator(2, today=TODAY).population(5)
    seen: list[int] = []
    done = asyncio.Event()

    async def flaky(d: Delivery) -> None:
        if d.seq == 2 and 2 not in seen:
            seen.append(d.seq)
            raise RuntimeError("the agency's database is down")
        seen.append(d.seq)
        if d.seq == 4:
            done.set()

    async with Node(env.node_config(OWNERS["population"])) as pop, \
            Node(env.node_config(OWNERS["tax"])) as tax:
        result = await pop.publish("population", [Record(p) for p in people])
        assert result.accepted == 5 and not result.failed
        sub = tax.subscribe("population", "flaky", flaky)
        await asyncio.wait_for(done.wait(), 10)
        assert sub.handler_errors == 1
        # the failed record came again; nothing handled before it reached the handler twice
        assert seen == [0, 1, 2, 2, 3, 4]
        await sub.stop()
        # the land registry has no agreement on tax: refused for good, not retried forever
        async with Node(env.node_config(OWNERS["land"])) as land:
            refused = land.subscribe("tax", "nope", flaky)
            task = refused.task
            assert task is not None
            with pytest.raises(Forbidden) as e:
                await asyncio.wait_for(task, 10)
            # the class and code the broker raised, rebuilt from the refused handshake
            assert (e.value.code, e.value.status, e.value.remote) == ("no_agreement", 403, True)
            assert isinstance(e.value, RemoteError)


async def test_publishing_over_the_websocket_stream(env: Env) -> None:
    """The SDK's WebSocket transport: many one-record batches in flight on one connection,
    receipts in order, rejections and duplicates as over HTTP."""
    import copy

    people = Generator(3, today=TODAY).population(40)
    bad = copy.deepcopy(people[5])
    bad["permanent_address"]["ward_code"] = "99999"
    config = env.node_config(OWNERS["population"], transport="websocket", batch_size=1,
                             linger_s=0.0, max_in_flight=16)
    async with Node(config) as pop:
        records = [Record(p) for p in people[:5]] + [Record(bad)] + \
            [Record(p) for p in people[6:]]
        result = await pop.publish("population", records)
        assert result.accepted == 39 and not result.failed
        assert [v.code for v in result.rejected] == ["unknown_ward"]
        assert result.rejected[0].index == 5
        accepted = [s for s in result.seqs if s is not None]
        assert sorted(accepted) == list(range(39))
        again = await pop.publish("population", [Record(p) for p in people[:3]])
        assert again.duplicates == 3 and again.seqs == result.seqs[:3]
        assert pop.publisher.streams == 1  # one connection carried every batch
    async with Node(env.node_config(OWNERS["tax"], transport="websocket")) as tax:
        with pytest.raises(Forbidden) as e:
            await tax.publish("population", [Record(people[0])])
        assert (e.value.code, e.value.status, e.value.remote) == ("not_owner", 403, True)


async def test_a_batch_lingers_on_the_nodes_clock(env: Env) -> None:
    """Records wait ``linger_s`` for company, on the node's clock: moved, not waited for."""
    people = Generator(5, today=TODAY).population(3)
    clock = FakeClock()
    config = env.node_config(OWNERS["population"], linger_s=5.0, batch_size=100)
    async with Node(config, clock=clock) as pop:
        first = asyncio.create_task(pop.publish("population", [Record(p) for p in people[:2]]))
        await clock.sleeping(1)  # the flusher lingers for more
        second = asyncio.create_task(pop.publish("population", [Record(people[2])]))
        await clock.advance(4.999)
        assert not first.done() and not second.done()
        assert env.broker.hub.heads.get("population", -1) == -1  # nothing has left the node
        await clock.advance(0.001)
        one, two = await first, await second
    # one batch, one signature, sealed at the node's time
    assert one.receipts[0] is two.receipts[0]
    assert (one.receipts[0].receipt.accepted, one.seqs, two.seqs) == (3, [0, 1], [2])
    stored = await env.broker.store.read("population", -1, 3)
    times = {msgspec.msgpack.decode(r.body, type=StoredBody).event.time for r in stored}
    assert times == {rfc3339(clock.time())}


async def test_publish_retries_back_off_on_the_nodes_clock(env: Env) -> None:
    """Between retries to an unreachable broker the node waits on its clock, then gives up."""
    clock = FakeClock()
    config = env.node_config(OWNERS["population"], brokers=["https://127.0.0.1:1"], retries=2,
                             linger_s=0.0)
    async with Node(config, clock=clock) as pop:
        task = asyncio.create_task(pop.publish("population", [Record(
            Generator(6, today=TODAY).population(1)[0])]))
        for _ in range(2):  # two retries, each after a backoff on the clock
            await clock.sleeping(1)
            assert not task.done()
            await clock.advance(10.0)
        with pytest.raises(UnavailableError) as e:
            await task
    assert e.value.code == "broker_unreachable"
