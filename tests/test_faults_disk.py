"""A store that cannot write (a full disk) must not cost readers: the last checkpoint is
served, a subscriber whose ack cannot be saved keeps being delivered to, and a broker starts
and serves reads. The store's writes are made to fail the way a full disk fails them."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import msgspec
import pytest

from exchange.core.errors import Code, UnavailableError
from exchange.node import Delivery, Node, Record
from exchange.store.sqlite import SqliteStore
from tests.conftest import OWNERS, Env, broker_config, make_pki, people, start_broker, until

POP, TAX = OWNERS["population"], OWNERS["tax"]


def disk_full(*_: Any, **__: Any) -> Any:
    raise UnavailableError("database or disk is full", code=Code.STORE_UNAVAILABLE)


async def test_the_last_checkpoint_is_served_when_none_can_be_stored(
        env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    async with Node(env.node_config(POP)) as pop:
        await pop.publish("population", [Record(p) for p in people(2, seed=91)])
        first = (await pop.get_bytes("/v1/log/checkpoint")).decode()
        monkeypatch.setattr(env.broker.store, "add_checkpoint", disk_full)
        await pop.publish("population", [Record(p) for p in people(2, seed=92)])
        served = (await pop.get_bytes("/v1/log/checkpoint")).decode()
    assert served == first  # the last stored one, signed, instead of a 503


async def test_a_subscriber_keeps_receiving_when_its_acks_cannot_be_saved(
        env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    store = env.broker.store
    real_ack = store.ack
    failing = True

    async def ack(*args: Any, **kw: Any) -> None:
        if failing:
            disk_full()
        await real_ack(*args, **kw)

    monkeypatch.setattr(store, "ack", ack)
    got: list[Delivery] = []
    six = asyncio.Event()

    async def handler(d: Delivery) -> None:
        got.append(d)
        if len(got) == 6:
            six.set()

    async with Node(env.node_config(POP)) as pop, Node(env.node_config(TAX)) as tax:
        sub = tax.subscribe("population", "through", handler)
        await pop.publish("population", [Record(p) for p in people(3, seed=93)])
        await pop.publish("population", [Record(p) for p in people(3, seed=94)])
        await asyncio.wait_for(six.wait(), 10)
        # every record once, on one connection: no drop, no reconnect, no resend
        assert len({d.seq for d in got}) == 6 and sub.redelivered == 0
        assert sub.dropped_duplicates == 0
        failing = False
        await pop.publish("population", [Record(p) for p in people(1, seed=95)])

        async def saved() -> bool:
            row = await store.subscription(TAX, "population", "through")
            return row is not None and row.acked == await store.head("population")

        await until(saved, env.broker.subscriptions.next_change, what="ack saved")
    # the access row of the first saved ack covers what was acked while saving failed
    rows = await store.access("population", [d.seq for d in got])
    assert {r.node for r in rows} == {TAX}
    assert min(r.first_seq for r in rows) <= min(d.seq for d in got)


async def test_a_broker_starts_and_serves_reads_when_it_cannot_write(tmp_path: Path) -> None:
    pki_dir = make_pki(tmp_path)
    config = broker_config(pki_dir, tmp_path / "data")
    store = SqliteStore(tmp_path / "data" / "exchange.sqlite")
    store.add_checkpoint = disk_full  # type: ignore[method-assign]
    broker, runner, url = await start_broker(config, store)
    try:
        async with Node(msgspec.structs.replace(
                Env(tmp_path, pki_dir, tmp_path / "data", url, broker, runner)
                .node_config(TAX))) as tax:
            health = await tax.get_json("/healthz")
            assert health["status"] == "ok"
            assert len(await tax.get_json("/v1/datasets")) == 4
    finally:
        await runner.cleanup()
