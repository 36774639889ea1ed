"""The broker on NATS JetStream, over real TLS and real nats-server processes: the end-to-end
flow and subscription semantics on one server and on a 3-node cluster (R3), two brokers on one
exchange racing on the same key, and NATS going away (503, nothing accepted and lost)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import aiohttp
import msgspec
import pytest

from exchange.node import Node, Record
from exchange.store.nats.server import NatsCluster
from exchange.store.nats.store import NatsStore
from tests import nats_fixtures
from tests.conftest import OWNERS, Env, broker_config, make_pki, people, sealed
from tests.nats_fixtures import start_broker_on, store_url
from tests.test_broker_e2e import (
    test_population_reaches_tax_verified_and_projected as _e2e,
)
from tests.test_subscribe import (
    test_credits_bound_every_frame as _credits,
)
from tests.test_subscribe import (
    test_cumulative_acks_persist_across_reconnects as _acks,
)
from tests.test_subscribe import test_start_latest as _latest
from tests.test_tlog_broker import test_receipts_checkpoints_and_proofs as _log_proofs

POP = OWNERS["population"]
nats_single = nats_fixtures.nats_single
nats_cluster = nats_fixtures.nats_cluster
nats_any = nats_fixtures.nats_any
nats_env = nats_fixtures.nats_env


async def test_e2e(nats_env: Env) -> None:
    await _e2e(nats_env)


async def test_subscription_credits(nats_env: Env) -> None:
    await _credits(nats_env)


async def test_subscription_acks_resume(nats_env: Env) -> None:
    await _acks(nats_env)


async def test_subscription_start_latest(nats_env: Env) -> None:
    await _latest(nats_env)


async def test_log_proofs(nats_env: Env) -> None:
    await _log_proofs(nats_env)


async def _post(env: Env, url: str, batch: object) -> tuple[int, dict[str, object]]:
    async with aiohttp.ClientSession(url, connector=aiohttp.TCPConnector(
            ssl=env.ssl(POP))) as s, s.post(
            "/v1/datasets/population/records", data=msgspec.json.encode(batch),
            headers={"Content-Type": "application/json"}) as resp:
        return resp.status, msgspec.json.decode(await resp.read())


async def test_two_brokers_race_on_one_key_exactly_one_wins(tmp_path: Path,
                                                            nats_cluster: NatsCluster) -> None:
    pki_dir = make_pki(tmp_path)
    url = store_url(nats_cluster)
    a = await start_broker_on(broker_config(pki_dir, tmp_path / "a"), url)
    b = await start_broker_on(broker_config(pki_dir, tmp_path / "b"), url)
    env = Env(tmp_path, pki_dir, tmp_path / "a", a[2], a[0], a[1])
    try:
        ps = people(50, seed=21)
        outcomes = []
        for i, p in enumerate(ps):
            # the same key and version, different content, at the same moment on two brokers
            other = {**p, "full_name": p["full_name"] + " B"}
            one = sealed(env, POP, [p], seed=(2 * i).to_bytes(32, "big"))
            two = sealed(env, POP, [other], seed=(2 * i + 1).to_bytes(32, "big"))
            (sa, ra), (sb, rb) = await asyncio.gather(_post(env, a[2], one),
                                                      _post(env, b[2], two))
            outcomes.append(sorted([sa, sb]))
            loser = ra if sa == 409 else rb
            assert sorted([sa, sb]) == [200, 409], (ra, rb)
            assert loser["code"] in ("version_conflict", "stale_version"), loser
        # both brokers derived the same log from the one stream
        await _settle(a[0], b[0], size=50)
        assert a[0].store.log_state() == b[0].store.log_state()
        assert a[0].store.log_state()[0] == 50
        # either broker reports the exchange's quality, counted by both of them
        for broker in (a[0], b[0]):
            assert broker.quality is not None
            counters = (await broker.quality.report("population"))["population"]["counters"]
            conflicts = sum(counters["rejected"].values())
            assert (counters["accepted"], conflicts, counters["received"]) == (50, 50, 100)
    finally:
        await a[1].cleanup()
        await b[1].cleanup()


async def _settle(*brokers: object, size: int = 0) -> None:
    from tests.conftest import eventually

    # a poll: each broker's tailer reads the stream on its own schedule; no one event covers
    # them all
    await eventually(lambda: all(b.store.log_state()[0] >= size  # type: ignore[attr-defined]
                                 for b in brokers), what="brokers caught up")


async def test_nats_unreachable_is_503_and_nothing_is_lost(tmp_path: Path) -> None:
    pki_dir = make_pki(tmp_path)
    cluster = NatsCluster(tmp_path / "nats", 1)
    cluster.start()
    try:
        await cluster.wait_healthy()
        url = store_url(cluster)
        broker, runner, base = await start_broker_on(broker_config(pki_dir, tmp_path / "d"), url)
        env = Env(tmp_path, pki_dir, tmp_path / "d", base, broker, runner)
        try:
            ps = people(6, seed=22)
            status, body = await _post(env, base, sealed(env, POP, ps[:3]))
            assert status == 200
            cluster.servers[0].kill()
            status, body = await _post(env, base, sealed(env, POP, ps[3:], seed=b"\x02" * 32))
            assert status == 503 and body["code"] == "store_unavailable", body
            # back: the refused batch was not stored; publishing it again is accepted
            cluster.servers[0].start()
            await cluster.wait_healthy()
            from tests.conftest import eventually

            store = broker.store
            assert isinstance(store, NatsStore)
            # a poll: the reconnect happens inside nats-py, whose callback the store owns
            await eventually(lambda: store.nc.is_connected, within=20, what="reconnect")
            async with Node(env.node_config(POP)) as pop:
                result = await pop.publish("population", [Record(p) for p in ps])
            assert result.seqs == [0, 1, 2, 3, 4, 5]
            assert (result.accepted, result.duplicates) == (3, 3)
        finally:
            await runner.cleanup()
    finally:
        cluster.stop()


async def test_agreement_lifecycle(nats_env: Env) -> None:
    from tests.test_agreements import test_lifecycle_on_the_broker_and_every_refusal as run

    await run(nats_env)


async def test_who_received_a_record(nats_env: Env) -> None:
    from tests.test_access_records import test_who_received_my_record_version_by_version as run

    await run(nats_env)


async def test_two_brokers_share_one_book_of_agreements(tmp_path: Path,
                                                        nats_single: NatsCluster) -> None:
    """An agreement requested on one broker is decided on the other and read through either:
    each broker's book follows the records stream."""
    from tests.conftest import OUTSIDER, until

    pki_dir = make_pki(tmp_path)
    url = store_url(nats_single)
    a = await start_broker_on(broker_config(pki_dir, tmp_path / "a"), url)
    b = await start_broker_on(broker_config(pki_dir, tmp_path / "b"), url)
    env_a = Env(tmp_path, pki_dir, tmp_path / "a", a[2], a[0], a[1])
    env_b = Env(tmp_path, pki_dir, tmp_path / "b", b[2], b[0], b[1])
    try:
        async with Node(env_a.node_config(OUTSIDER)) as out, \
                Node(env_b.node_config(POP)) as pop, Node(env_a.operator_config()) as ops:
            asked = await out.request_agreement("population", purpose="address checks",
                                                legal_basis="Decree 13/2023 Art. 17")
            assert (await pop.decide(asked["id"], "approve"))["state"] == "approved"  # on b
            assert (await ops.decide(asked["id"], "countersign"))["state"] == "active"  # on a

            def active_on_b() -> bool:
                entry = b[0].book.entries.get(asked["id"])
                return entry is not None and entry.record.state == "active"

            # the book reads the transition once the log announces it, then changes the policy
            await until(active_on_b, b[0].subscriptions.next_policy_change, what="b's book")
            await pop.publish("population", [Record(p) for p in people(2, seed=61)])
            async with Node(env_b.node_config(OUTSIDER)) as out_b:
                looked = await out_b.lookup("population", people(2, seed=61)[0]["id"])
            assert looked.version == 1
    finally:
        await a[1].cleanup()
        await b[1].cleanup()


def test_the_servers_fsync_before_they_acknowledge(nats_cluster: NatsCluster) -> None:
    """A receipt is a durable promise: every JetStream server the exchange starts syncs each
    write before acknowledging it (not every two minutes, JetStream's default)."""
    import json
    import urllib.request

    for server in nats_cluster.servers:
        with urllib.request.urlopen(f"http://127.0.0.1:{server.http_port}/varz",
                                    timeout=10) as resp:
            config = json.load(resp)["jetstream"]["config"]
        assert config["sync_always"] is True, server.name


async def test_a_store_url_without_the_fsync_word_is_warned_about(
        nats_single: NatsCluster, capfd: pytest.CaptureFixture[str]) -> None:
    from tests.nats_fixtures import prefix

    capfd.readouterr()
    for url, warned in ((f"{nats_single.url}?prefix={prefix()}", True),
                        (f"{nats_single.url}?prefix={prefix()}&sync=always", False)):
        store = NatsStore(url)
        await store.open()
        await store.close()
        assert ("nats_fsync_unverified" in capfd.readouterr().err) is warned, url


async def test_health_names_the_store_and_what_the_client_knows_of_the_cluster(
        nats_env: Env) -> None:
    """``/healthz`` on NATS: the store kind and the client's own view of the cluster (no
    request to it), which the operator console shows."""
    async with aiohttp.ClientSession(nats_env.url, connector=aiohttp.TCPConnector(
            ssl=nats_env.ssl(POP))) as s, s.get("/healthz") as resp:
        health = msgspec.json.decode(await resp.read())
    assert resp.status == 200 and health["store"] == "nats"
    cluster = health["cluster"]
    store = nats_env.broker.store
    assert isinstance(store, NatsStore)
    assert cluster["connected"] is True and cluster["server"]
    assert cluster["servers"] >= 1 and cluster["replicas"] == store.replicas
    assert cluster["sequencer"] is True  # the only broker holds the lease
