"""Quality measured by a real broker: crafted streams whose scores are known in advance, the
metrics endpoint read by the Prometheus text parser, and state that survives a restart."""

from __future__ import annotations

import asyncio
import copy
from typing import Any

import msgspec
from prometheus_client.parser import text_string_to_metric_families

from exchange.core.access import Agreement
from exchange.node import Delivery, Node, Record
from exchange.sim.generate import Generator
from tests.conftest import OWNERS, TODAY, Env, broker_config, start_broker


async def _quality(node: Node, dataset: str) -> dict[str, Any]:
    report: dict[str, dict[str, Any]] = (
        await node.get_json(f"/v1/quality/{dataset}"))["datasets"]
    return report[dataset]


async def test_unresolved_owners_resolve_when_population_arrives(env: Env) -> None:
    gen = Generator(11, today=TODAY)
    people = gen.population(10)
    vehicles = gen.vehicle(10, people)
    for person, vehicle in zip(people, vehicles, strict=True):
        vehicle["owner_id"] = person["id"]  # one vehicle each
    owners = {v["owner_id"] for v in vehicles}
    # three owners exist in population; seven arrive later
    early = people[:3]
    async with Node(env.node_config(OWNERS["population"])) as pop, \
            Node(env.node_config(OWNERS["vehicle"])) as veh:
        await pop.publish("population", [Record(p) for p in early])
        await veh.publish("vehicle", [Record(v) for v in vehicles])
        q = await _quality(veh, "vehicle")
        assert q["scores"]["unresolved_references"] == 7
        assert q["scores"]["clean"] == round(1 - 7 / 10, 4)
        assert {u["target_key"] for u in q["unresolved"]} <= owners
        await pop.publish("population", [Record(p) for p in people if p not in early])
        q = await _quality(veh, "vehicle")
        assert q["scores"]["unresolved_references"] == 0
        assert q["scores"]["clean"] == 1.0
        assert q["counters"]["references"] == 10


async def test_correct_sufficient_clean_counted_at_the_gate(env: Env) -> None:
    people = Generator(12, today=TODAY).population(10)
    for p in people[:4]:
        p.pop("ethnicity", None)
        p.pop("religion", None)
    for p in people[4:]:
        p["ethnicity"], p["religion"] = "Kinh", "Không"
    bad = copy.deepcopy(people[0])
    bad["id"], bad["permanent_address"]["ward_code"] = "001099000999", "99999"
    async with Node(env.node_config(OWNERS["population"], normalise=False)) as pop:
        messy = copy.deepcopy(people[9])
        messy["full_name"] = "  " + messy["full_name"] + " "
        await pop.publish("population", [Record(p) for p in people[:9]] +
                          [Record(messy), Record(bad)])
        await pop.publish("population", [Record(people[1])])  # an exact re-send
        q = await _quality(pop, "population")
    c = q["counters"]
    assert (c["accepted"], c["duplicates"], sum(c["rejected"].values())) == (10, 1, 1)
    assert q["scores"]["correct"] == round(10 / 11, 4)
    assert q["scores"]["sufficient"] == round(6 / 10, 4)
    assert c["not_normalised"] == 1
    assert q["scores"]["clean"] == round(1 - 2 / 12, 4)
    assert not q["scores"]["stale"] and q["scores"]["seconds_since_update"] is not None


async def test_metrics_parse_and_quality_survives_restart(env: Env) -> None:
    people = Generator(13, today=TODAY).population(5)
    got: list[Delivery] = []
    done = asyncio.Event()

    async def handler(d: Delivery) -> None:
        got.append(d)
        if len(got) == 5:
            done.set()

    async with Node(env.node_config(OWNERS["population"])) as pop, \
            Node(env.node_config(OWNERS["tax"])) as tax:
        await pop.publish("population", [Record(p) for p in people])
        tax.subscribe("population", "q", handler)
        await asyncio.wait_for(done.wait(), 10)
        async with Node(env.operator_config()) as operator:
            text = (await operator.get_bytes("/metrics")).decode()
        before = await _quality(pop, "population")
    families = {f.name: f for f in text_string_to_metric_families(text)}
    accepted = [s for s in families["exchange_gate_records"].samples
                if s.labels["outcome"] == "accepted" and s.labels["dataset"] == "population"]
    assert accepted and accepted[0].value == 5
    scores = {s.labels["principle"]: s.value for s in families["exchange_quality_score"].samples
              if s.labels["dataset"] == "population"}
    assert set(scores) == {"correct", "sufficient", "clean", "live"}
    assert all(0.0 <= v <= 1.0 for v in scores.values())
    assert "exchange_delivery_latency_seconds" in families
    assert "exchange_subscription_lag_records" in families
    assert before["counters"]["delivered"] == 5

    await env.runner.cleanup()
    _, runner, url = await start_broker(broker_config(env.pki_dir, env.data_dir))
    try:
        async with Node(msgspec.structs.replace(env.node_config(OWNERS["population"]),
                                                brokers=[url])) as pop:
            after = await _quality(pop, "population")
    finally:
        await runner.cleanup()
    assert after["counters"] == before["counters"]


async def test_agreement_minimum_completeness_filters_deliveries(env: Env) -> None:
    people = Generator(14, today=TODAY).population(6)
    for p in people[:3]:
        p.pop("ethnicity", None)
        p.pop("religion", None)
    for p in people[3:]:
        p["ethnicity"], p["religion"] = "Kinh", "Phật giáo"
    await env.runner.cleanup()
    config = broker_config(env.pki_dir, env.data_dir)
    config = msgspec.structs.replace(config, agreements=[
        a for a in config.agreements if a.subscriber != OWNERS["land"]] + [
        Agreement(subscriber=OWNERS["land"], dataset="population", purpose="complete only",
                  groups=["residence"], min_completeness=1.0)])
    _, runner, url = await start_broker(config)
    got: list[Delivery] = []
    last = asyncio.Event()

    async def handler(d: Delivery) -> None:
        got.append(d)
        if d.seq == 5:
            last.set()

    try:
        async with Node(msgspec.structs.replace(env.node_config(OWNERS["population"]),
                                                brokers=[url])) as pop, \
                Node(msgspec.structs.replace(env.node_config(OWNERS["land"]),
                                             brokers=[url])) as land:
            await pop.publish("population", [Record(p) for p in people])
            sub = land.subscribe("population", "complete", handler)
            await asyncio.wait_for(last.wait(), 10)
            await sub.stop()
    finally:
        await runner.cleanup()
    # only the three complete records (seqs 3, 4, 5) reach the land registry
    assert [d.seq for d in got] == [3, 4, 5]


async def test_quality_cli_table_and_json(env: Env, capsys: Any) -> None:
    from exchange.cli import main

    people = Generator(15, today=TODAY).population(4)
    async with Node(env.node_config(OWNERS["population"])) as pop:
        await pop.publish("population", [Record(p) for p in people])
    args = ["quality", "--broker", env.url, "--as", str(env.operator_dir)]
    assert await asyncio.to_thread(main, args) == 0
    out = capsys.readouterr().out
    assert "population" in out and OWNERS["population"] in out and "correct" in out
    assert await asyncio.to_thread(main, [*args, "--json", "--dataset", "population"]) == 0
    report = msgspec.json.decode(capsys.readouterr().out)
    assert report["datasets"]["population"]["counters"]["accepted"] == 4


async def test_counters_follow_only_what_was_committed(env: Env) -> None:
    """A commit that fails counts nothing; the publisher's retry then counts once."""
    from exchange.core.errors import Code, UnavailableError
    from exchange.core.ledger import Plan
    from exchange.store.base import Appended

    store = env.broker.store
    append = store.append
    failed: list[int] = []

    async def fails_once(plan: Plan) -> Appended:
        if not failed:
            failed.append(len(plan.entries))
            raise UnavailableError("the disk is full", code=Code.STORE_UNAVAILABLE)
        return await append(plan)

    store.append = fails_once  # type: ignore[method-assign]
    people = Generator(12, today=TODAY).population(4)
    async with Node(env.node_config(OWNERS["population"])) as pop:
        result = await pop.publish("population", [Record(p) for p in people])
        assert result.accepted == 4 and failed == [4]
        counters = (await _quality(pop, "population"))["counters"]
    assert (counters["received"], counters["accepted"], counters["duplicates"]) == (4, 4, 0)


async def test_a_replaying_subscriber_does_not_move_the_publishers_live_score(env: Env
                                                                              ) -> None:
    """Timeliness counts first live deliveries: a subscriber replaying old records from
    ``earliest`` (late by construction) changes nothing the publisher did."""
    people = Generator(17, today=TODAY).population(6)
    async with Node(env.node_config(OWNERS["population"])) as pop, \
            Node(env.node_config(OWNERS["land"])) as land:
        await pop.publish("population", [Record(p) for p in people])
        before = await _quality(pop, "population")
        got: list[Delivery] = []
        done = asyncio.Event()

        async def handler(d: Delivery) -> None:
            got.append(d)
            if len(got) == 6:
                done.set()

        # replaying the six from earliest: accepted before the subscription connected
        land.subscribe("population", "replay", handler)
        await asyncio.wait_for(done.wait(), 10)
        after = await _quality(pop, "population")
    assert after["counters"]["delivered"] == before["counters"]["delivered"] + 6
    assert after["counters"]["delivered_live"] == before["counters"]["delivered_live"]
    assert after["scores"]["live"] == before["scores"]["live"]


async def test_a_dataset_with_no_records_has_no_scores(env: Env) -> None:
    async with Node(env.operator_config()) as ops:
        report = (await ops.get_json("/v1/quality/land"))["datasets"]["land"]
    assert (report["scores"]["correct"], report["scores"]["sufficient"],
            report["scores"]["clean"]) == (None, None, None)
    assert report["scores"]["stale"] is True
