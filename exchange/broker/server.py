"""Run the broker: checks first, TLS 1.3 with client certificates, reloads on SIGHUP and on
the control socket (``exchange broker reload``), SIGTERM stops cleanly. Under systemd
(``Type=notify``, deploy/systemd/exchange-broker.service) it says when it is ready, reloading
and stopping."""

from __future__ import annotations

import asyncio
import gc
import os
import signal
import socket
import sys
import time
from pathlib import Path

import structlog
from aiohttp import web

from exchange import pki
from exchange.broker import checks, control
from exchange.broker.app import Broker, create_app
from exchange.broker.tls_log import log_handshake_refusals
from exchange.broker.workers import GatePool
from exchange.core.access import BrokerConfig, config_error, parse_listen, problems_of
from exchange.core.errors import Code, ExchangeError, InputError, UnavailableError
from exchange.store.base import Store
from exchange.store.sqlite import SqliteStore

__all__ = ["main_serve", "make_store", "serve", "split_listen", "wire_store"]

logger = structlog.get_logger("exchange.broker")


def make_store(config: BrokerConfig) -> Store:
    if config.store in ("sqlite", ""):
        return SqliteStore(Path(config.data_dir) / "exchange.sqlite")
    if config.store.startswith(("nats://", "tls://")):
        from exchange.store.nats.store import NatsStore

        # the lease id lives in the data directory, which one broker process serves at a time
        return NatsStore(config.store, lease_id_file=Path(config.data_dir) / "nats-lease-id")
    raise InputError(f"store {config.store!r} is not available; use sqlite or "
                     "nats://HOST:PORT[,HOST:PORT...]", code=Code.BAD_CONFIG)


def sd_notify(state: str) -> bool:
    """Send ``state`` (``READY=1``, ``STATUS=…``) to the service manager, as sd_notify(3) does:
    one datagram to the AF_UNIX socket named in ``$NOTIFY_SOCKET`` (``@`` for the abstract
    namespace). Not under systemd, or the socket gone: nothing, False."""
    path = os.environ.get("NOTIFY_SOCKET", "")
    if not path.startswith(("/", "@")):
        return False
    address = "\0" + path[1:] if path.startswith("@") else path
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(address)
            sock.sendall(state.encode())
    except OSError:
        return False
    return True


def _on_sighup(broker: Broker) -> None:
    """SIGHUP does what ``exchange broker reload`` does; the answer goes to the log (as for
    the control socket) and to systemd's status line, around a reloading state."""
    sd_notify(f"RELOADING=1\nMONOTONIC_USEC={time.monotonic_ns() // 1000}")
    answer = control.reload(broker)
    status = (f"reloaded: {answer.datasets} datasets, {answer.agreements} agreements"
              if answer.ok else "reload refused, previous config kept: see the log")
    sd_notify(f"READY=1\nSTATUS={status}")


def wire_store(broker: Broker) -> None:
    """A store shared with other broker processes wakes this one's live subscribers when any
    of them appends (NATS); sqlite has one writer and needs nothing."""
    watch = getattr(broker.store, "watch", None)
    if watch is not None:
        watch(broker.hub.appended)


def split_listen(listen: str) -> tuple[str, int]:
    """``HOST:PORT`` as ``(host, port)``; see ``exchange.core.access.parse_listen``."""
    return parse_listen(listen)


async def serve(config: BrokerConfig, *, config_path: Path | None = None,
                ready: asyncio.Event | None = None, stop: asyncio.Event | None = None) -> None:
    """Serve until SIGTERM/SIGINT, or until ``stop`` is set. Prints one JSON line with the bound
    port when listening; SIGHUP and the control socket reload.

    Checks first, exactly as ``exchange broker check-config`` does (``checks.check``): a config
    with problems raises one ``InputError`` naming them all (``access.problems_of``) before
    anything is opened. Failing to start (the port in use, another broker on the same data
    directory, the store down) raises an ``ExchangeError`` too."""
    checked = checks.check(config)
    if checked.problems:
        raise config_error(checked.problems)
    log_handshake_refusals()
    tls = pki.ServerTLS(config.pki_dir)
    broker = Broker(config, make_store(config), config_path=config_path, tls=tls)
    wire_store(broker)
    data_dir = Path(config.data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    stop = stop if stop is not None else asyncio.Event()
    loop = asyncio.get_running_loop()
    signals = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
    pool = GatePool(config.gate_workers) if config.gate_workers else None
    async with control.serving(control.socket_path(data_dir), broker):
        app = create_app(broker)
        runner = web.AppRunner(app, access_log=None,
                               keepalive_timeout=config.limits.idle_timeout_s)
        await runner.setup()
        pidfile = data_dir / "broker.pid"
        try:
            if pool is not None:  # started before the port opens: the first batch waits for none
                pids = await pool.start()
                broker.publisher.pool = pool
                logger.info("gate_workers", workers=len(pids), pids=pids)
            host, port = parse_listen(config.listen)
            site = web.TCPSite(runner, host, port, ssl_context=tls.context, backlog=512)
            try:
                await site.start()
            except OSError as err:
                # asyncio's own strerror repeats the address; the errno's text is the reason
                reason = os.strerror(err.errno) if err.errno else str(err)
                raise UnavailableError(f"cannot listen on {config.listen}: {reason}",
                                       code=Code.UNAVAILABLE) from None
            bound = runner.addresses[0][1] if runner.addresses else port
            # everything loaded so far (modules, the admin-unit tables, the app) lives as long
            # as the process: out of the collector's sight, a full collection scans only what
            # serving made, which keeps its pauses (a latency tail every few seconds under
            # load) short
            gc.collect()
            gc.freeze()
            pidfile.write_text(f"{os.getpid()}\n")
            print(f'{{"event": "listening", "host": "{host}", "port": {bound}}}', flush=True)
            logger.info("listening", host=host, port=bound, store=config.store,
                        data_dir=config.data_dir)
            loop.add_signal_handler(signal.SIGTERM, stop.set)
            loop.add_signal_handler(signal.SIGINT, stop.set)
            loop.add_signal_handler(signal.SIGHUP, _on_sighup, broker)
            if ready is not None:
                ready.set()
            sd_notify(f"READY=1\nSTATUS=serving on {host}:{bound}\nMAINPID={os.getpid()}")
            await stop.wait()
        finally:
            logger.info("stopping")
            sd_notify("STOPPING=1")
            for sig in signals:
                loop.remove_signal_handler(sig)
            await runner.cleanup()
            if pool is not None:
                broker.publisher.pool = None
                await pool.close()
            pidfile.unlink(missing_ok=True)
            gc.unfreeze()  # a caller that goes on (a test) collects as usual again


def main_serve(config: BrokerConfig, config_path: Path | None) -> int:
    """``serve`` as a command: 0 after a clean stop, 1 (with one line per problem on stderr,
    never a traceback) when the broker cannot start."""
    try:
        asyncio.run(serve(config, config_path=config_path))
    except KeyboardInterrupt:  # before the loop's own SIGINT handler was in place
        return 0
    except ExchangeError as err:
        if err.code == Code.BAD_CONFIG:
            checks.report(problems_of(err), config_path)
            print(f"exchange broker serve: not started: {checks.summary(problems_of(err))}",
                  file=sys.stderr)
        else:
            print(f"exchange broker serve: not started: {err.message} ({err.code})",
                  file=sys.stderr)
        return 1
    except OSError as err:
        print(f"exchange broker serve: not started: {err}", file=sys.stderr)
        return 1
    return 0
