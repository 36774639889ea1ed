"""Run the broker: TLS 1.3 with client certificates, SIGHUP reloads, SIGTERM stops cleanly."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import signal
from pathlib import Path

import structlog
from aiohttp import web

from exchange import pki
from exchange.broker.app import Broker, create_app
from exchange.core.access import BrokerConfig
from exchange.core.errors import Code, InputError
from exchange.store.base import Store
from exchange.store.sqlite import SqliteStore

__all__ = ["make_store", "serve", "wire_store"]

logger = structlog.get_logger("exchange.broker")


def make_store(config: BrokerConfig) -> Store:
    if config.store in ("sqlite", ""):
        return SqliteStore(Path(config.data_dir) / "exchange.sqlite")
    if config.store.startswith(("nats://", "tls://")):
        from exchange.store.nats.store import NatsStore

        return NatsStore(config.store)
    raise InputError(f"store {config.store!r} is not available; use sqlite or "
                     "nats://HOST:PORT[,HOST:PORT...]", code=Code.BAD_CONFIG)


def wire_store(broker: Broker) -> None:
    """A store shared with other broker processes wakes this one's live subscribers when any
    of them appends (NATS); sqlite has one writer and needs nothing."""
    watch = getattr(broker.store, "watch", None)
    if watch is not None:
        watch(broker.hub.appended)


def split_listen(listen: str) -> tuple[str, int]:
    host, _, port = listen.rpartition(":")
    try:
        return host.strip("[]") or "127.0.0.1", int(port)
    except ValueError:
        raise InputError(f"listen {listen!r} is not HOST:PORT", code=Code.BAD_CONFIG) from None


async def serve(config: BrokerConfig, *, config_path: Path | None = None,
                ready: asyncio.Event | None = None) -> None:
    """Serve until SIGTERM/SIGINT. Prints one JSON line with the bound port when listening."""
    tls = pki.ServerTLS(config.pki_dir)
    broker = Broker(config, make_store(config), config_path=config_path, tls=tls)
    wire_store(broker)
    app = create_app(broker)
    runner = web.AppRunner(app, access_log=None,
                           keepalive_timeout=config.limits.idle_timeout_s)
    await runner.setup()
    host, port = split_listen(config.listen)
    site = web.TCPSite(runner, host, port, ssl_context=tls.context, backlog=512)
    await site.start()
    bound = runner.addresses[0][1] if runner.addresses else port
    # everything loaded so far (modules, the admin-unit tables, the app) lives as long as the
    # process: out of the collector's sight, a full collection scans only what serving made,
    # which keeps its pauses (a latency tail every few seconds under load) short
    gc.collect()
    gc.freeze()
    Path(config.data_dir).mkdir(parents=True, exist_ok=True)
    pidfile = Path(config.data_dir) / "broker.pid"
    pidfile.write_text(f"{os.getpid()}\n")
    print(f'{{"event": "listening", "host": "{host}", "port": {bound}}}', flush=True)
    logger.info("listening", host=host, port=bound, store=config.store, data_dir=config.data_dir)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)

    def _reload() -> None:
        try:
            broker.reload()
        except Exception as err:  # keep serving with the old config; say why loudly
            logger.error("reload_failed", error=str(err))

    loop.add_signal_handler(signal.SIGHUP, _reload)
    if ready is not None:
        ready.set()
    try:
        await stop.wait()
    finally:
        logger.info("stopping")
        await runner.cleanup()
        pidfile.unlink(missing_ok=True)


def main_serve(config: BrokerConfig, config_path: Path | None) -> int:
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(config, config_path=config_path))
    return 0


