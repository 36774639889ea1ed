"""Lookups and "who received my record": a real broker on sqlite; records looked up are
verified like deliveries, and every ack and lookup is on record with its agreement."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from exchange.core.errors import ExchangeError, Forbidden
from exchange.node import Delivery, Node, Record
from tests.conftest import OUTSIDER, OWNERS, Env, people

POP, TAX, LAND = OWNERS["population"], OWNERS["tax"], OWNERS["land"]


async def test_a_lookup_is_verified_projected_and_refused_without_an_agreement(env: Env
                                                                               ) -> None:
    person = people(1, seed=51)[0]
    async with Node(env.node_config(POP)) as pop, Node(env.node_config(LAND)) as land, \
            Node(env.node_config(OUTSIDER)) as out:
        await pop.publish("population", [Record(person)])
        got = await land.lookup("population", person["id"])
        # land's agreement grants residence only: the rest is withheld, the signature holds
        assert got.key == person["id"] and got.version == 1
        assert "permanent_address" in got.data and "full_name" not in got.data
        assert {"identity", "civil_status"} <= set(got.withheld)
        assert land.tlog.included == 1  # its inclusion in the log was checked
        own = await pop.lookup("population", person["id"])
        assert own.data["full_name"] == person["full_name"] and not own.withheld
        with pytest.raises(ExchangeError) as err:
            await land.lookup("population", "001099000000")
        assert err.value.code == "unknown_record"
        with pytest.raises(Forbidden) as refused:
            await out.lookup("population", person["id"])
        assert refused.value.code == "no_agreement"
        # a new version is what a lookup returns next
        await pop.publish("population", [Record({**person, "ethnicity": "Tày"},
                                                version=2)])
        assert (await land.lookup("population", person["id"])).version == 2


async def test_who_received_my_record_version_by_version(env: Env) -> None:
    person = people(1, seed=52)[0]
    async with Node(env.node_config(POP)) as pop, Node(env.node_config(TAX)) as tax, \
            Node(env.node_config(LAND)) as land, Node(env.operator_config()) as ops:
        await pop.publish("population", [Record(p) for p in [person, *people(2, seed=53)]])
        got: list[Delivery] = []
        three, updated = asyncio.Event(), asyncio.Event()

        async def handler(d: Delivery) -> None:
            got.append(d)
            if len(got) == 3:
                three.set()
            if d.version == 2:
                updated.set()

        tax.subscribe("population", "residents", handler)
        await asyncio.wait_for(three.wait(), 10)
        await until_acked(env, TAX, "residents", got[-1].seq)
        await land.lookup("population", person["id"])
        # the owner reads its own dataset: nobody received anything from anyone
        mine = pop.subscribe("population", "self", _ignore)
        await pop.publish("population", [Record({**person, "ethnicity": "Tày"},
                                                version=2)])
        await asyncio.wait_for(updated.wait(), 10)
        latest = (await pop.lookup("population", person["id"])).seq
        await until_acked(env, TAX, "residents", latest)
        await mine.stop()

        answer = await pop.access("population", person["id"])
        assert [v["version"] for v in answer["versions"]] == [1, 2]
        v1, v2 = answer["versions"]
        assert {(r["node"], r["kind"]) for r in v1["received_by"]} == {(TAX, "delivery"),
                                                                        (LAND, "lookup")}
        assert {(r["node"], r["kind"]) for r in v2["received_by"]} == {(TAX, "delivery")}
        tax_row = next(r for r in v1["received_by"] if r["node"] == TAX)
        assert tax_row["agreement"].startswith("config:") and tax_row["purpose"]
        assert tax_row["subscription"] == "residents" and "identity" in tax_row["groups"]
        land_row = next(r for r in v1["received_by"] if r["node"] == LAND)
        assert land_row["groups"] == ["residence"] and land_row["subscription"] is None
        assert all(r["node"] != POP for v in answer["versions"] for r in v["received_by"])
        # the operator may ask too; another node may not
        assert (await ops.access("population", person["id"])) == answer
        with pytest.raises(Forbidden) as err:
            await tax.access("population", person["id"])
        assert err.value.code == "operator_only"


async def until_acked(env: Env, node: str, name: str, seq: int) -> None:
    from tests.conftest import until

    async def acked() -> bool:
        row = await env.broker.store.subscription(node, "population", name)
        return row is not None and row.acked >= seq

    await until(acked, env.broker.subscriptions.next_change, what=f"{name} acked {seq}")


async def _ignore(d: Any) -> None:
    return None


async def test_the_cli_looks_up_and_answers_who_received(env: Env, capsys: Any) -> None:
    from exchange.cli import main

    person = people(1, seed=54)[0]
    async with Node(env.node_config(POP)) as pop:
        await pop.publish("population", [Record(person)])
    common = ["--broker", env.url, "--pki", str(env.pki_dir)]
    assert await asyncio.to_thread(main, ["lookup", "population", person["id"], *common,
                                          "--node", LAND, "--json"]) == 0
    looked = __import__("json").loads(capsys.readouterr().out)
    assert looked["key"] == person["id"] and looked["withheld"]
    assert await asyncio.to_thread(main, ["access", "population", person["id"], *common,
                                          "--node", POP]) == 0
    out = capsys.readouterr().out
    assert f"{LAND} by a lookup" in out and "groups residence" in out


async def test_records_sent_but_never_acked_are_on_record_too(env: Env) -> None:
    """A subscriber that reads everything and acks nothing still leaves its trace."""
    import aiohttp

    person = people(1, seed=55)[0]
    async with Node(env.node_config(POP)) as pop:
        await pop.publish("population", [Record(person)])
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=env.ssl(LAND))) as s:
        ws = await s.ws_connect(f"{env.url}/v1/datasets/population/subscribe?name=silent")
        await ws.receive_json()  # hello
        await ws.send_json({"type": "credit", "n": 1000})
        frame = await ws.receive_json()
        assert frame["type"] == "records"
        await ws.close()  # never acked

    async def recorded() -> bool:
        rows = await env.broker.store.access("population", [0])
        return any(r.kind == "sent" and r.node == LAND for r in rows)

    from tests.conftest import until
    await until(recorded, env.broker.subscriptions.next_change, what="the sent row")
    async with Node(env.node_config(POP)) as pop:
        answer = await pop.access("population", person["id"])
    assert {(r["node"], r["kind"]) for r in answer["versions"][0]["received_by"]} == {
        (LAND, "sent")}
