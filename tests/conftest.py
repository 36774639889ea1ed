"""Shared fixtures: a real exchange on 127.0.0.1 — PKI from the project's own CA, the broker
over TLS 1.3 with client certificates, sqlite on disk."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import inspect
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec
import pytest
from aiohttp import web

from exchange import logger, pki
from exchange.broker.app import Broker, create_app
from exchange.broker.server import wire_store
from exchange.clock import SYSTEM, Clock, FakeClock
from exchange.core.access import BrokerConfig, DatasetConfig, Limits
from exchange.node import NodeConfig
from exchange.sim.agencies import AGREEMENTS as AGREEMENTS  # re-exported for the suites
from exchange.sim.agencies import OWNERS as OWNERS
from exchange.store.base import Store
from exchange.store.sqlite import SqliteStore

TODAY = dt.date(2026, 11, 22)
#: the statement time of batches the suites seal themselves (the core never reads a clock)
SEALED_AT = "2026-11-22T09:00:00Z"

# structured logs to stderr, warnings and up: stdout stays clean for the CLI's own output
logger.configure("warning", json=True)

OUTSIDER = "vn.gov.test.outsider"
#: the operator every suite's PKI has (its own keys in ``<root>/operator``, signed offline)
OPERATOR = "vn.gov.ndc.ops.test"



@dataclass
class Env:
    root: Path
    pki_dir: Path
    data_dir: Path
    url: str
    broker: Broker
    runner: web.AppRunner

    def node_config(self, node_id: str, **kw: Any) -> NodeConfig:
        base: dict[str, Any] = {"node_id": node_id, "pki_dir": str(self.pki_dir),
                                "brokers": [self.url], "linger_s": 0.005}
        base.update(kw)
        return NodeConfig(**base)

    def ssl(self, node_id: str) -> Any:
        return pki.client_ssl_context(self.pki_dir, node_id)

    @property
    def operator_dir(self) -> Path:
        return self.root / "operator"

    def operator_config(self, **kw: Any) -> NodeConfig:
        base: dict[str, Any] = {"node_id": OPERATOR, "node_dir": str(self.operator_dir),
                                "brokers": [self.url]}
        base.update(kw)
        return NodeConfig(**base)

    def operator_ssl(self) -> Any:
        from exchange.pki import party

        return pki.client_ssl_context(party.load_identity(self.operator_dir))


def make_pki(root: Path) -> Path:
    """The suites' PKI: nodes with central keys (fast, and fine for tests), and an operator
    that made its own keys in ``root/operator``."""
    from exchange.sim.orchestration import join_offline

    pki_dir = root / "pki"
    pki.init(pki_dir)
    for node in [*OWNERS.values(), OUTSIDER]:
        pki.enroll(pki_dir, node)
    join_offline(pki_dir, root / "operator", OPERATOR, role="operator")
    return pki_dir


def broker_config(pki_dir: Path, data_dir: Path, **limits: Any) -> BrokerConfig:
    return BrokerConfig(
        listen="127.0.0.1:0", data_dir=str(data_dir), pki_dir=str(pki_dir),
        limits=msgspec.structs.replace(Limits(), **limits),
        datasets=[DatasetConfig(name, owner) for name, owner in OWNERS.items()],
        agreements=AGREEMENTS)


async def start_broker(config: BrokerConfig, store: Store | None = None, *,
                       clock: Clock = SYSTEM) -> tuple[Broker, web.AppRunner, str]:
    """A broker in this process over TLS on 127.0.0.1; on sqlite in its data dir by default."""
    tls = pki.ServerTLS(config.pki_dir)
    broker = Broker(config, store or SqliteStore(Path(config.data_dir) / "exchange.sqlite"),
                    tls=tls, clock=clock)
    wire_store(broker)
    runner = web.AppRunner(create_app(broker), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=tls.context)
    await site.start()
    port = runner.addresses[0][1]
    return broker, runner, f"https://127.0.0.1:{port}"


@dataclass
class Timed:
    """A broker on the suites' PKI, on a clock the test moves."""

    url: str
    clock: FakeClock
    broker: Broker


@contextlib.asynccontextmanager
async def timed_broker(pki_dir: Path, data_dir: Path) -> AsyncIterator[Timed]:
    """A broker on a ``FakeClock`` at noon on the suites' day: the agreements are in force and
    the generated records' dates in its past."""
    clock = FakeClock(dt.datetime.combine(TODAY, dt.time(12), dt.UTC).timestamp())
    broker, runner, url = await start_broker(broker_config(pki_dir, data_dir), clock=clock)
    try:
        yield Timed(url, clock, broker)
    finally:
        await runner.cleanup()


@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[Env]:
    pki_dir = make_pki(tmp_path)
    config = broker_config(pki_dir, tmp_path / "data")
    broker, runner, url = await start_broker(config)
    try:
        yield Env(tmp_path, pki_dir, tmp_path / "data", url, broker, runner)
    finally:
        await runner.cleanup()


# -- helpers for the broker suites (raw HTTP/WebSocket over the same TLS) ---------------------

PROBLEM = "application/problem+json"


def people(n: int, seed: int = 1) -> list[dict[str, Any]]:
    """``n`` valid population records (deterministic)."""
    from exchange.sim.generate import Generator

    return Generator(seed, today=TODAY).population(n)


def sealed(env: Env, node: str, records: list[dict[str, Any]], *, dataset: str = "population",
           version: int = 1, seed: bytes = b"\x01" * 32, signer: str | None = None) -> Any:
    """A signed ``Batch`` of ``records`` as ``node`` (signed with ``signer``'s key if given);
    the subject of each record is its ``id`` (or ``?``)."""
    from exchange.core import datasets
    from exchange.core.seal import seal

    key = pki.load_node_identity(env.pki_dir, signer or node).signing_key
    items = [(str(r.get("id", "?")), version, r) for r in records]
    return seal(key, node, datasets.get(dataset), items, seed, time=SEALED_AT)


async def until(condition: Any, change: Callable[[], asyncio.Event], within: float = 10.0,
                what: str = "condition") -> None:
    """Wait until ``condition()`` (sync or async) is true, looking again each time the system
    signals a change (``change()`` returns the event the next change sets; it is taken before
    each look, so no change between a look and the wait is missed)."""
    async def loop() -> None:
        while True:
            changed = change()
            value = condition()
            if inspect.isawaitable(value):
                value = await value
            if value:
                return
            await changed.wait()

    try:
        await asyncio.wait_for(loop(), within)
    except TimeoutError:
        raise AssertionError(f"timed out waiting for {what}") from None


async def eventually(condition: Any, within: float = 10.0, what: str = "condition") -> None:
    """Wait until ``condition()`` (sync or async) is true, yielding to the loop between tries;
    for state that raises no event to wait on (say why next to each use)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while True:
        value = condition()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)
