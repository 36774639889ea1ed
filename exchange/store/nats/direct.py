"""Direct gets (ADR-31): reads that any replica of a stream serves, with no consumer state.

Every read of the NATS store is a direct-get request published to ``$JS.API.DIRECT.GET.<stream>``
with a reply subject under one inbox per store; the replies come back on it in order, a batch
ending with an EOB status (204). Also here: the one place nats-py's and the network's errors
become the exchange's own (``unavailable``).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import msgspec

import nats
import nats.errors
import nats.js.errors
from exchange.core.errors import Code, UnavailableError
from nats.aio.client import Client
from nats.aio.msg import Msg

__all__ = ["PAGE", "DirectGets", "unavailable"]

#: a direct-get batch asks for at most this many messages
PAGE = 1000
_json = msgspec.json.Encoder()


@contextlib.contextmanager
def unavailable(what: str) -> Iterator[None]:
    """Translate nats-py's and the network's errors, once, where I/O meets the store."""
    try:
        yield
    except (nats.js.errors.KeyNotFoundError, nats.js.errors.KeyWrongLastSequenceError):
        raise  # answers, not faults: the caller handles them
    except (nats.errors.Error, nats.js.errors.Error, TimeoutError, OSError) as err:
        detail = getattr(err, "description", None) or repr(err)
        raise UnavailableError(f"NATS: {what} failed: {detail}", code=Code.STORE_UNAVAILABLE
                               ) from None


class DirectGets:
    """Direct-get requests on one connection, their replies matched by a token per request."""

    def __init__(self, nc: Callable[[], Client], timeout: float) -> None:
        self._nc = nc
        self.timeout = timeout
        self._inbox = ""
        self._replies: dict[str, asyncio.Queue[Msg]] = {}
        self._next_token = 0
        #: messages received per stream: what this broker read (the tests and the bench
        #: check who reads the records stream back)
        self.received: dict[str, int] = {}

    async def start(self) -> None:
        """Listen on this store's reply inbox."""
        nc = self._nc()
        self._inbox = nc.new_inbox()
        await nc.subscribe(self._inbox + ".*", cb=self._on_reply)

    async def _on_reply(self, msg: Msg) -> None:
        q = self._replies.get(msg.subject.rpartition(".")[2])
        if q is not None:
            q.put_nowait(msg)

    async def get(self, stream: str, req: dict[str, Any], *, batch: bool) -> list[Msg]:
        """One direct-get request: a single message, or a batch ended by EOB (status 204)."""
        self._next_token += 1
        tok = str(self._next_token)
        q: asyncio.Queue[Msg] = asyncio.Queue()
        self._replies[tok] = q
        out: list[Msg] = []
        tries = 0
        nc = self._nc()
        try:
            with unavailable(f"reading {stream}"):
                await nc.publish(f"$JS.API.DIRECT.GET.{stream}", _json.encode(req),
                                 reply=f"{self._inbox}.{tok}")
                while True:
                    msg = await asyncio.wait_for(q.get(), self.timeout)
                    headers = msg.headers or {}
                    status = headers.get("Status")
                    if status in ("204", "404"):
                        self.received[stream] = self.received.get(stream, 0) + len(out)
                        return out
                    if status == "503" and not out and tries < 40:
                        # no responder yet: a new stream's replicas, or a leader election
                        tries += 1
                        await asyncio.sleep(0.025)
                        await nc.publish(f"$JS.API.DIRECT.GET.{stream}", _json.encode(req),
                                         reply=f"{self._inbox}.{tok}")
                        continue
                    if status:
                        raise UnavailableError(f"NATS direct get from {stream}: {status} "
                                               f"{headers.get('Description', '')}",
                                               code=Code.STORE_UNAVAILABLE)
                    out.append(msg)
                    if not batch:
                        self.received[stream] = self.received.get(stream, 0) + 1
                        return out
        finally:
            del self._replies[tok]
