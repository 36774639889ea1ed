"""The broker's control socket: ``exchange broker reload`` asks, and waits for the answer.

A signal carries no answer: ``kill -HUP`` succeeds whether or not the reload does, and the reason
ends up only in the broker's log. So ``serve`` also listens on a unix-domain socket next to its
pid file, ``<data_dir>/broker.sock``, mode 0600 (only the broker's own user, who can signal it
anyway, may ask). One request line, one answer line of JSON, then the broker closes::

    reload\\n  ->  {"ok": true, "config": "/etc/exchange.toml", "datasets": 4, "agreements": 5}
               ->  {"ok": false, "problems": [{"path": "agreements[2].dataset", "code": ..., ...}]}
               ->  {"ok": false, "error": "...", "code": "pki_corrupt"}

A refused reload keeps the config in force (``Broker.reload``). SIGHUP runs the same reload and
logs the same answer.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import stat
from collections.abc import AsyncIterator
from pathlib import Path

import msgspec
import structlog

from exchange.broker.app import Broker
from exchange.broker.checks import SOCKET_NAME
from exchange.core.access import ConfigProblem, problems_of
from exchange.core.errors import (
    Code,
    ConflictError,
    ExchangeError,
    InputError,
    UnavailableError,
)

__all__ = ["SOCKET_NAME", "Answer", "reload", "request", "serving", "socket_path"]

logger = structlog.get_logger("exchange.broker")

#: a request line is one short word; anything longer is not a client of ours
MAX_REQUEST_BYTES = 1024
#: a client that connects and says nothing is dropped after this long
REQUEST_TIMEOUT_S = 10.0


class Answer(msgspec.Struct, frozen=True, omit_defaults=True, kw_only=True):
    """The broker's answer to one request: done, or refused with the problems or the error."""

    ok: bool
    #: the file the broker read (absent when it was started without one)
    config: str | None = None
    datasets: int | None = None
    agreements: int | None = None
    problems: list[ConfigProblem] = []
    error: str | None = None
    code: str | None = None


_encode = msgspec.json.Encoder().encode
_decode_answer = msgspec.json.Decoder(Answer).decode


def socket_path(data_dir: str | os.PathLike[str]) -> Path:
    return Path(data_dir) / SOCKET_NAME


def reload(broker: Broker) -> Answer:
    """Reload ``broker`` (``Broker.reload``) and say how it went; logged either way, so SIGHUP
    leaves the same account in the log."""
    where = str(broker.config_path) if broker.config_path is not None else None
    try:
        broker.reload()
    except InputError as err:
        problems = problems_of(err)
        logger.error("reload_failed", config=where, code=err.code,
                     problems=[str(p) for p in problems])
        return Answer(ok=False, config=where, problems=problems)
    except ExchangeError as err:
        logger.error("reload_failed", config=where, code=err.code, error=err.message)
        return Answer(ok=False, config=where, error=err.message, code=err.code)
    except Exception as err:  # a bug: still answer, and keep serving with the old config
        logger.exception("reload_failed", config=where)
        return Answer(ok=False, config=where, error=f"internal error: {err!r}",
                      code=Code.INTERNAL_ERROR)
    config = broker.config
    return Answer(ok=True, config=where, datasets=len(config.datasets),
                  agreements=len(config.agreements))


async def _answer(broker: Broker, reader: asyncio.StreamReader,
                  writer: asyncio.StreamWriter) -> None:
    try:
        async with asyncio.timeout(REQUEST_TIMEOUT_S):
            line = await reader.readline()
        if not line.endswith(b"\n"):
            return  # closed early (another broker probing whether this one is alive) or idle
        command = line.decode("utf-8", "replace").strip()
        if command == "reload":
            answer = reload(broker)
        else:
            answer = Answer(ok=False, error=f"unknown request {command[:40]!r}; known: reload",
                            code=Code.BAD_REQUEST)
        writer.write(_encode(answer) + b"\n")
        await writer.drain()
    except (TimeoutError, ValueError, ConnectionError):
        pass  # ValueError: a line past MAX_REQUEST_BYTES; the client gets no answer
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


async def _claim(path: Path) -> None:
    """Remove the socket a broker that died (SIGKILL, a crash) left behind; refuse to take one
    that a live broker still answers on (two brokers must not share a data directory)."""
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        raise ConflictError(f"{path} exists and is not the broker's control socket; remove it",
                            code=Code.CONFLICT)
    try:
        async with asyncio.timeout(REQUEST_TIMEOUT_S):
            _, writer = await asyncio.open_unix_connection(path)
    except (ConnectionRefusedError, FileNotFoundError):
        path.unlink(missing_ok=True)  # nobody listens: stale
        return
    writer.close()
    with contextlib.suppress(ConnectionError):
        await writer.wait_closed()
    raise ConflictError(f"another broker is serving {path.parent} (it answers on {path})",
                        code=Code.CONFLICT)


@contextlib.asynccontextmanager
async def serving(path: Path, broker: Broker) -> AsyncIterator[asyncio.Server]:
    """Answer requests on ``path`` for as long as the block runs; the socket is removed after."""
    await _claim(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(os.fspath(path))
        # before listen(): until then a connect is refused, so nobody slips in under the
        # umask's wider mode
        os.chmod(path, 0o600)
        server = await asyncio.start_unix_server(
            lambda r, w: _answer(broker, r, w), sock=sock, limit=MAX_REQUEST_BYTES)
    except BaseException:
        sock.close()
        path.unlink(missing_ok=True)
        raise
    try:
        yield server
    finally:
        server.close()
        with contextlib.suppress(OSError):
            path.unlink()
        await server.wait_closed()


async def request(path: Path, command: str = "reload", *, within: float = 30.0) -> Answer:
    """Send ``command`` to the broker listening on ``path`` and return its answer, within
    ``within`` seconds. ``UnavailableError`` when no broker answers (in time)."""
    try:
        async with asyncio.timeout(within):
            reader, writer = await asyncio.open_unix_connection(path)
            try:
                writer.write(command.encode() + b"\n")
                await writer.drain()
                line = await reader.readline()
            finally:
                writer.close()
                with contextlib.suppress(ConnectionError):
                    await writer.wait_closed()
    except TimeoutError:
        raise UnavailableError(f"the broker did not answer within {within:g} s",
                               code=Code.UNAVAILABLE) from None
    except (FileNotFoundError, ConnectionRefusedError):
        raise UnavailableError(f"no broker answers on {path}; is it running with this "
                               "data directory?", code=Code.BROKER_UNREACHABLE) from None
    except OSError as err:
        raise UnavailableError(f"cannot reach the broker on {path}: {err.strerror or err}",
                               code=Code.BROKER_UNREACHABLE) from None
    if not line.endswith(b"\n"):
        raise UnavailableError("the broker closed the connection without answering",
                               code=Code.CONNECTION_LOST)
    try:
        return _decode_answer(line)
    except msgspec.DecodeError as err:
        raise InputError(f"the broker's answer is not understood: {err}",
                         code=Code.MALFORMED) from None
