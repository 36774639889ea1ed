"""The parallel gate (``gate_workers``): batches checked in worker processes, decided by the one
writer, with answers, dead letters, log and quality exactly what one process gives.

Two brokers on the suites' PKI and one ``FakeClock`` time: one checks in its own process, the
other in a pool of two spawned workers. The same requests go to both and every answer is
compared byte for byte (receipts are Ed25519-signed with the same key over the same content, so
equal bytes mean equal decisions, seqs, log sizes and roots).
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import os
import signal
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import msgspec
import pytest
from prometheus_client.parser import text_string_to_metric_families

from exchange import pki
from exchange.broker.workers import Delegated, Gated, GatePool, Refused, gate_batch
from exchange.core import datasets
from exchange.core.access import Limits
from exchange.core.seal import seal
from exchange.core.signing import Batch
from exchange.core.wire import PublishReply
from exchange.pki import party
from exchange.sim.generate import Generator, fault
from exchange.store.nats.server import NatsCluster
from tests import nats_fixtures
from tests.conftest import (
    OWNERS,
    SEALED_AT,
    TODAY,
    Env,
    Timed,
    broker_config,
    eventually,
    make_pki,
    people,
    sealed,
    timed_broker,
    until,
)
from tests.nats_fixtures import start_broker_on, store_url
from tests.test_broker_e2e import test_population_reaches_tax_verified_and_projected as _e2e

POP, TAX = OWNERS["population"], OWNERS["tax"]
JSON, MSGPACK = "application/json", "application/msgpack"


@contextlib.asynccontextmanager
async def two_brokers(tmp_path: Path) -> AsyncIterator[tuple[Env, Timed, Timed, GatePool]]:
    pki_dir = make_pki(tmp_path)
    pool = GatePool(2)
    try:
        async with timed_broker(pki_dir, tmp_path / "one") as one, \
                timed_broker(pki_dir, tmp_path / "pooled") as pooled:
            await pool.start()
            pooled.broker.publisher.pool = pool
            # ``sealed`` needs only the PKI of an Env
            env = Env(tmp_path, pki_dir, tmp_path / "one", one.url, one.broker, None)  # type: ignore[arg-type]
            yield env, one, pooled, pool
    finally:
        await pool.close()


def session(pki_dir: Path, url: str, node: str) -> aiohttp.ClientSession:
    return aiohttp.ClientSession(url, connector=aiohttp.TCPConnector(
        ssl=pki.client_ssl_context(pki_dir, node)))


async def both(env: Env, one: Timed, pooled: Timed, node: str, method: str, path: str,
               body: bytes = b"", ctype: str = JSON) -> tuple[int, Any]:
    """The same request to both brokers: the same status and the same bytes back."""
    answers = []
    for b in (one, pooled):
        async with session(env.pki_dir, b.url, node) as s, s.request(
                method, path, data=body or None,
                headers={"Content-Type": ctype} if body else None) as resp:
            answers.append((resp.status, await resp.read()))
    assert answers[0] == answers[1], (path, answers)
    status, raw = answers[0]
    return status, msgspec.json.decode(raw)


def tax_batch(env: Env, node: str, records: list[dict[str, Any]]) -> Batch:
    key = pki.load_node_identity(env.pki_dir, node).signing_key
    return seal(key, node, datasets.get("tax"), [(r["tax_id"], 1, r) for r in records],
                b"\x07" * 32, time=SEALED_AT)


def enc(batch: Batch, ctype: str = JSON) -> bytes:
    return msgspec.msgpack.encode(batch) if ctype == MSGPACK else msgspec.json.encode(batch)


async def test_a_pool_answers_exactly_as_one_process(tmp_path: Path) -> None:
    async with two_brokers(tmp_path) as (env, one, pooled, pool):
        ps = people(12)
        moved = copy.deepcopy(ps[0])
        moved["permanent_address"]["street"] = "Số 1 Tràng Tiền"
        taxes = Generator(3, today=TODAY).tax(4, ps)
        good = sealed(env, POP, ps[:5])
        tampered = msgspec.structs.replace(
            sealed(env, POP, ps[9:], seed=b"\x09" * 32),
            signature=bytes([good.signature[0] ^ 1]) + good.signature[1:])
        steps: list[tuple[str, str, bytes, str]] = [
            (POP, "population", enc(good), JSON),
            (POP, "population", enc(good), JSON),  # a retry: duplicates
            (POP, "population", enc(sealed(env, POP, [ps[5], fault(ps[6], "missing_field"),
                                                      fault(ps[7], "unknown_commune"),
                                                      fault(ps[8], "not_normalised")],
                                           seed=b"\x02" * 32), MSGPACK), MSGPACK),
            (POP, "population", enc(sealed(env, POP, ps[1:3], version=3,
                                           seed=b"\x03" * 32)), JSON),
            (POP, "population", enc(sealed(env, POP, [moved, ps[1]], seed=b"\x04" * 32)),
             JSON),  # version_conflict and stale_version: dead letters from the decision
            (POP, "population", enc(sealed(env, POP, ps[9:], signer=TAX)), JSON),  # other key
            (POP, "population", enc(tampered), JSON),  # refused whole: bad signature
            (POP, "population", b'{"statement": ', JSON),  # does not decode
            (POP, "population", enc(sealed(env, POP, ps[9:], version=1, dataset="population",
                                           seed=b"\x05" * 32)), JSON),
            (TAX, "tax", enc(tax_batch(env, TAX, taxes)), JSON),
            (POP, "tax", enc(tax_batch(env, POP, taxes)), JSON),  # not the owner
        ]
        statuses, accepted = [], 0
        for node, dataset, body, ctype in steps:
            status, got = await both(env, one, pooled, node, "POST",
                                   f"/v1/datasets/{dataset}/records", body, ctype)
            statuses.append((status, got.get("code")))
            signed = got if status == 200 else got.get("receipt")
            accepted += signed["receipt"]["accepted"] if signed else 0
        assert statuses == [(200, None), (200, None), (422, "records_rejected"), (200, None),
                            (409, "records_rejected"), (422, "signature_invalid"),
                            (422, "signature_invalid"), (400, "malformed"), (200, None),
                            (200, None), (403, "not_owner")]
        # the pool did the checking (of the batch naming another key, all but its signature)
        assert (pool.gated, pool.delegated) == (10, 0)
        for node in (POP, TAX):
            dead = (await both(env, one, pooled, node, "GET", "/v1/dead-letters"))[1]
            assert dead or node == TAX
        codes = [d["code"] for d in (await both(env, one, pooled, POP, "GET",
                                                "/v1/dead-letters"))[1]]
        assert {"missing_field", "version_conflict", "stale_version", "signature_invalid",
                "malformed"} <= set(codes)
        assert one.broker.store.log_state() == pooled.broker.store.log_state()
        assert one.broker.store.log_state()[0] == accepted == 16
        await pooled.broker.quality.flush()  # type: ignore[union-attr]
        await one.broker.quality.flush()  # type: ignore[union-attr]
        await both(env, one, pooled, POP, "GET", "/v1/quality/population")


async def test_a_stream_keeps_its_order_whichever_worker_finishes_first(
        tmp_path: Path) -> None:
    """One key's versions in consecutive batches of one stream, sent before any reply is read:
    each is decided after the one before it, though two workers check them side by side (a
    big batch ahead of small ones finishes last)."""
    async with two_brokers(tmp_path) as (env, _, pooled, pool):
        ps = people(400)
        batches = []
        for v in range(1, 9):
            # the odd ones carry 400 records (slow to check), the even ones 1
            rows = ps if v % 2 else ps[:1]
            batches.append(sealed(env, POP, rows, version=v, seed=bytes([v]) * 32))
        async with session(env.pki_dir, pooled.url, POP) as s, \
                s.ws_connect("/v1/datasets/population/publish") as ws:
            for b in batches:
                await ws.send_bytes(msgspec.msgpack.encode(b))
            replies = [msgspec.msgpack.decode((await ws.receive(timeout=30)).data,
                                              type=PublishReply) for _ in batches]
    assert [r.problem for r in replies] == [None] * len(batches)
    ranges = [(r.receipt.receipt.first_seq, r.receipt.receipt.last_seq)
              for r in replies if r.receipt is not None]
    assert ranges == [(0, 399), (400, 400), (401, 800), (801, 801), (802, 1201),
                      (1202, 1202), (1203, 1602), (1603, 1603)]
    assert pool.gated == len(batches)


async def test_a_killed_worker_costs_no_batch(tmp_path: Path) -> None:
    async with two_brokers(tmp_path) as (env, _, pooled, pool):
        before = pool.pids()
        assert len(before) == 2 and os.getpid() not in before
        os.kill(before[0], signal.SIGKILL)
        await until(lambda: pool.restarts == 1, pool.next_change, what="a worker replaced")
        ps = people(6)
        async with session(env.pki_dir, pooled.url, POP) as s:
            for i in range(3):
                async with s.post("/v1/datasets/population/records",
                                  data=enc(sealed(env, POP, ps[2 * i:2 * i + 2],
                                                  seed=bytes([i + 1]) * 32)),
                                  headers={"Content-Type": JSON}) as resp:
                    assert resp.status == 200, await resp.text()
        assert pooled.broker.store.log_state()[0] == 6
        assert (pool.gated, pool.delegated) == (3, 0)
        now = pool.pids()
        assert len(now) == 2 and before[0] not in now and before[1] in now


def test_a_worker_leaves_a_statement_under_another_key_to_the_broker(tmp_path: Path) -> None:
    pki_dir = make_pki(tmp_path)
    env = Env(tmp_path, pki_dir, tmp_path, "", None, None)  # type: ignore[arg-type]
    current = pki.load_node_identity(pki_dir, POP).signing_key.public_key().public_bytes_raw()
    limits = msgspec.msgpack.encode(Limits())
    mine = enc(sealed(env, POP, people(2)))
    others = enc(sealed(env, POP, people(2), signer=TAX))
    args = (limits, TODAY.toordinal(), True, None)
    decode = msgspec.msgpack.Decoder(Gated | Refused | Delegated).decode
    gated = decode(gate_batch(POP, "population", mine, JSON, current, *args))
    assert isinstance(gated, Gated) and len(gated.checked.candidates) == 2
    assert gated.statement_checked
    other = decode(gate_batch(POP, "population", others, JSON, current, *args))
    assert isinstance(other, Gated) and len(other.checked.candidates) == 2
    assert not other.statement_checked
    # a forged signature under the current key is refused in the worker
    forged = msgspec.json.decode(mine, type=Batch)
    forged = msgspec.structs.replace(forged, signature=bytes(64))
    bad = decode(gate_batch(POP, "population", enc(forged), JSON, current, *args))
    assert isinstance(bad, Refused) and bad.code == "signature_invalid"
    # a node with no key enrolled: its statement too is the broker's to judge
    unknown = decode(gate_batch(POP, "population", mine, JSON, None, *args))
    assert isinstance(unknown, Gated) and not unknown.statement_checked


@pytest.mark.parametrize("value", ["-1", "257", "two"])
def test_workers_out_of_range_are_refused_by_the_cli(value: str, tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    from exchange.cli import main

    with pytest.raises(SystemExit) as exit_:
        main(["broker", "check-config", "--config", str(tmp_path / "b.toml"),
              "--workers", value])
    assert exit_.value.code == 2
    assert "number of workers from 0 to 256" in capsys.readouterr().err


async def test_a_batch_held_by_a_worker_that_dies_is_checked_in_the_broker(
        tmp_path: Path) -> None:
    async with two_brokers(tmp_path) as (env, _, pooled, pool):
        pids = pool.pids()
        for pid in pids:  # the workers take the batch but answer nothing
            os.kill(pid, signal.SIGSTOP)
        batch = sealed(env, POP, people(3))
        async with session(env.pki_dir, pooled.url, POP) as s:
            async def publish() -> int:
                async with s.post("/v1/datasets/population/records", data=enc(batch),
                                  headers={"Content-Type": JSON}) as resp:
                    return resp.status

            sent = asyncio.create_task(publish())
            # the pool's queues raise no event: look until the batch is in one of them
            await eventually(lambda: any(w.waiting for w in pool._procs),
                             what="the batch sent to a worker")
            for pid in pids:
                os.kill(pid, signal.SIGKILL)
            assert await sent == 200
        assert (pool.gated, pool.delegated) == (0, 1)
        assert pooled.broker.store.log_state()[0] == 3
        await until(lambda: pool.restarts == 2, pool.next_change, what="both replaced")
        async with aiohttp.ClientSession(pooled.url, connector=aiohttp.TCPConnector(
                ssl=pki.client_ssl_context(party.load_identity(tmp_path / "operator")))) as s, \
                s.get("/metrics") as resp:
            metrics = {(x.name, tuple(sorted(x.labels.items()))): x.value
                       for m in text_string_to_metric_families(await resp.text())
                       for x in m.samples}
    assert metrics[("exchange_gate_workers", ())] == 2
    assert metrics[("exchange_gate_batches_total", (("checked_in", "broker"),))] == 1
    assert metrics[("exchange_gate_batches_total", (("checked_in", "worker"),))] == 0
    assert metrics[("exchange_gate_worker_restarts_total", ())] == 2


async def test_workers_leave_sigterm_and_sigint_to_the_broker(tmp_path: Path) -> None:
    """A service manager's SIGTERM, or a terminal's Ctrl-C, reaches the whole process group:
    the broker stops, and stops its workers; the workers themselves ignore both."""
    async with two_brokers(tmp_path) as (env, _, pooled, pool):
        pids = pool.pids()
        for pid in pids:
            os.kill(pid, signal.SIGTERM)
            os.kill(pid, signal.SIGINT)
        async with session(env.pki_dir, pooled.url, POP) as s, s.post(
                "/v1/datasets/population/records", data=enc(sealed(env, POP, people(2))),
                headers={"Content-Type": JSON}) as resp:
            assert resp.status == 200
        assert (pool.gated, pool.delegated, pool.restarts) == (1, 0, 0)
        assert pool.pids() == pids and pool.running() == 2
        procs = [w.process for w in pool._procs]
        await pool.close()  # their sockets closed: they stop
        assert not any(p.is_alive() for p in procs)
        assert all(p.exitcode == 0 for p in procs)


# -- on the NATS store: the same pool in front of JetStream's order --------------------------

nats_single = nats_fixtures.nats_single


async def test_end_to_end_on_nats_with_gate_workers(tmp_path: Path,
                                                     nats_single: NatsCluster) -> None:
    pki_dir = make_pki(tmp_path)
    config = broker_config(pki_dir, tmp_path / "data")
    broker, runner, url = await start_broker_on(config, store_url(nats_single))
    pool = GatePool(2)
    try:
        await pool.start()
        broker.publisher.pool = pool
        await _e2e(Env(tmp_path, pki_dir, tmp_path / "data", url, broker, runner))
        assert pool.gated >= 1 and pool.delegated == 0
    finally:
        await runner.cleanup()
        await pool.close()


def test_gate_workers_in_the_config_are_checked_and_the_cli_overrides(tmp_path: Path) -> None:
    from exchange.broker import checks
    from exchange.sim.topology import broker_toml

    pki_dir = make_pki(tmp_path)
    path = tmp_path / "exchange.toml"
    path.write_text(broker_toml(str(pki_dir), str(tmp_path / "data"), "127.0.0.1:0").replace(
        'store = "sqlite"', 'store = "sqlite"\ngate_workers = 300'), encoding="utf-8")
    problems = checks.load(path).problems
    assert [(p.path, p.code) for p in problems] == [("gate_workers", "bad_config")], problems
    assert "256" in problems[0].message
    path.write_text(path.read_text(encoding="utf-8").replace("gate_workers = 300",
                                                             "gate_workers = 3"),
                    encoding="utf-8")
    for override, want in ((None, 3), (4, 4), (0, 0)):
        checked = checks.load(path, workers=override)
        assert checked.problems == [] and checked.config is not None
        assert checked.config.gate_workers == want
