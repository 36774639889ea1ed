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
import nats.aio.client
import nats.errors
import nats.js.errors
from exchange.core.errors import Code, UnavailableError
from nats.aio.msg import Msg

__all__ = ["PAGE", "Client", "DirectGets", "unavailable"]

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


class _Reply:
    """What came back for one request so far: its messages, and the future that is done at the
    end (the batch's status message, or a single message)."""

    __slots__ = ("batch", "done", "msgs", "status")

    def __init__(self, batch: bool) -> None:
        self.batch = batch
        self.msgs: list[Msg] = []
        self.status: Msg | None = None
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()


class DirectGets:
    """Direct-get requests on one connection, their replies matched by a token per request.

    The replies of a batch are collected by the subscription's callback and handed over once,
    at the batch's end: no task wakes per message."""

    def __init__(self, nc: Callable[[], nats.aio.client.Client], timeout: float) -> None:
        self._nc = nc
        self.timeout = timeout
        self._inbox = ""
        self._replies: dict[str, _Reply] = {}
        self._next_token = 0
        #: messages received per stream: what this broker read (the tests and the bench
        #: check who reads the records stream back)
        self.received: dict[str, int] = {}

    async def start(self) -> None:
        """Listen on this store's reply inbox (straight from the client's reader when it is
        the store's own ``Client``: no queue and no task per message)."""
        nc = self._nc()
        self._inbox = nc.new_inbox()
        sub = await nc.subscribe(self._inbox + ".*", cb=self._on_reply)
        if isinstance(nc, Client):
            nc.direct(sub, self._take)

    async def _on_reply(self, msg: Msg) -> None:
        self._take(msg)

    def _take(self, msg: Msg) -> None:
        r = self._replies.get(msg.subject.rpartition(".")[2])
        if r is None or r.done.done():
            return
        if (msg.headers or {}).get("Status"):
            r.status = msg
            r.done.set_result(None)
            return
        r.msgs.append(msg)
        if not r.batch:
            r.done.set_result(None)

    async def get(self, stream: str, req: dict[str, Any], *, batch: bool) -> list[Msg]:
        """One direct-get request: a single message, or a batch ended by EOB (status 204)."""
        self._next_token += 1
        tok = str(self._next_token)
        nc = self._nc()
        try:
            with unavailable(f"reading {stream}"):
                for tries in range(41):
                    r = self._replies[tok] = _Reply(batch)
                    await nc.publish(f"$JS.API.DIRECT.GET.{stream}", _json.encode(req),
                                     reply=f"{self._inbox}.{tok}")
                    async with asyncio.timeout(self.timeout):
                        await r.done
                    headers = r.status.headers or {} if r.status is not None else {}
                    status = headers.get("Status")
                    if status == "503" and not r.msgs and tries < 40:
                        # no responder yet: a new stream's replicas, or a leader election
                        await asyncio.sleep(0.025)
                        continue
                    if status and status not in ("204", "404"):
                        raise UnavailableError(f"NATS direct get from {stream}: {status} "
                                               f"{headers.get('Description', '')}",
                                               code=Code.STORE_UNAVAILABLE)
                    self.received[stream] = self.received.get(stream, 0) + len(r.msgs)
                    return r.msgs
        finally:
            self._replies.pop(tok, None)
        raise AssertionError("unreachable")


class Client(nats.aio.client.Client):
    """nats-py's client, with its message-header parser done in a fraction of the time.

    Every message a direct get returns carries some ten header lines (the server's six and the
    ones the broker published with the record), and nats-py 2.16 checks each header name for
    whitespace one character at a time in a generator: about 25 µs a message, more than half of
    what the sequencer spent reading a record back. This parser keeps its rules exactly
    (``tests/test_nats_headers.py`` checks the two agree on arbitrary header blocks): one
    ``Name: Value`` per CRLF line, names ASCII without whitespace, values stripped and decoded
    as UTF-8 with replacement."""

    def __init__(self) -> None:
        super().__init__()
        self._direct: dict[int, Callable[[Msg], None]] = {}

    def direct(self, sub: Any, take: Callable[[Msg], None]) -> None:
        """Hand ``sub``'s messages to ``take`` as the reader parses them, instead of through
        the subscription's queue and task (a direct get's replies, thousands a second: the
        queue, the task switch and the callback per message were a third of the sequencer's
        cost of reading a record back). ``take`` must not block."""
        self._direct[sub._id] = take

    async def _process_msg(self, sid: int, subject: bytes, reply: bytes, data: bytes,
                           headers: bytes) -> None:
        take = self._direct.get(sid)
        if take is None:
            await super()._process_msg(sid, subject, reply, data, headers)
            return
        self.stats["in_msgs"] += 1
        self.stats["in_bytes"] += len(data)
        hdr = await self._process_headers(headers)
        take(self._build_message(sid, subject, reply, data, hdr))

    @staticmethod
    def _parse_header_lines(raw: bytes) -> dict[str, str]:
        out: dict[str, str] = {}
        for line in raw.split(b"\r\n"):
            name, sep, value = line.partition(b":")
            if not sep:
                continue
            try:
                key = name.strip().decode("ascii")
            except UnicodeDecodeError:
                continue
            if key and key.split() != [key]:
                continue  # whitespace inside a name: not a header
            out[key] = value.strip().decode("utf-8", "replace")
        return out
