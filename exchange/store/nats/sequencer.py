"""The sequencer role, and every broker's view of the log it grows.

One broker process holds the sequencer lease (``lease``). While it does, it alone reads the
whole records stream back (``tailer``), grows the transparency log from the stream's order,
signs the checkpoints on its timer, and answers what only a reader of every record can answer:

- on the core subject ``P.log.head`` it announces the log's size, root and the datasets whose
  last seq moved, after every page it applies; every dataset's head once per idle poll, and
  at least once a second while the log grows;
- on ``P.log.q`` it answers queries (``Sequencer.answer``): the log's state once it holds at
  least N entries (what a receipt waits for), tree nodes for proofs, a dataset's records after
  a seq (lag), the last seq before a time, and unresolved references.

Every broker, the sequencer included, keeps a ``LogView``: the last announced state, which its
receipts sign (``log_size``/``log_root``: the log after the batch, as on sqlite) and which caps
what its subscribers are served (no record is delivered before it is in the log). A lost
announcement costs nothing but time: a waiter asks with a query, the next announcement moves
the size on, and the next one with every dataset's head (within a second) the heads. A broker
asks for the whole state at start and after each reconnect. Sizes only grow: an older state
leaves them.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Sequence
from typing import Any

import msgspec
import structlog

import nats.errors
from exchange.core import merkle
from exchange.core.errors import Code, UnavailableError
from exchange.store.nats.direct import unavailable
from exchange.store.nats.tailer import Tailer
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

__all__ = ["LogView", "Queries", "Sequencer", "decode_head"]

logger = structlog.get_logger("exchange.store.nats")

_enc = msgspec.msgpack.Encoder()
_head = msgspec.msgpack.Decoder(tuple[int, bytes, dict[str, int]])
_query = msgspec.msgpack.Decoder(list[Any])
_reply = msgspec.msgpack.Decoder(tuple[bool, Any])

EMPTY_ROOT = merkle.CompactRange().root()
#: seconds between announcements that carry every dataset's head, while the log grows
FULL_HEADS_EVERY = 1.0


class LogView:
    """The log as last announced: size, root and each dataset's last seq in it."""

    def __init__(self) -> None:
        self.size = 0
        self.root = EMPTY_ROOT
        self.heads: dict[str, int] = {}
        #: whether any state was heard since start (before that the view knows nothing)
        self.known = False
        self._grown = asyncio.Event()
        self._watchers: list[Callable[[str, int], None]] = []

    def watch(self, on_append: Callable[[str, int], None]) -> None:
        self._watchers.append(on_append)

    def apply(self, size: int, root: bytes, touched: dict[str, int]) -> None:
        """A state from the sequencer. Size and root only grow (an older state, which
        announcements racing each other can bring, leaves them); each dataset's head is the
        highest heard, from any state (every head heard is in the log it came with)."""
        moved = size > self.size or not self.known
        self.known = True
        if size >= self.size:
            self.size, self.root = size, root
        for dataset, last in touched.items():
            if self.heads.get(dataset, -1) < last < size:
                self.heads[dataset] = last
                for w in self._watchers:
                    w(dataset, last)
        if moved:
            self._grown.set()
            self._grown = asyncio.Event()

    async def grown(self, within: float) -> None:
        """Until the next state is applied, or ``within`` seconds."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(within):
                await self._grown.wait()


class Sequencer:
    """The role: a tailer over the records stream, announcements and the query service. Started
    when the lease is taken, stopped when it is lost (the tree is kept: it is the stream's)."""

    def __init__(self, tailer: Tailer, nc: Callable[[], Client], prefix: str, view: LogView,
                 *, timeout: float) -> None:
        self.tailer = tailer
        self._nc = nc
        self.prefix = prefix
        self.view = view
        self.timeout = timeout
        self.active = False
        self._subs: list[Subscription] = []
        self._answering: set[asyncio.Task[None]] = set()
        self._full_at = 0.0
        tailer.on_page = self._announce

    async def start(self) -> None:
        """Read the stream up to now, then serve: announce and answer."""
        nc = self._nc()
        with unavailable("reading the records stream as the sequencer"):
            await self.tailer.catch_up()
            self._subs.append(await nc.subscribe(f"{self.prefix}.appended.>",
                                                 cb=self._on_hint))
            self._subs.append(await nc.subscribe(f"{self.prefix}.log.q", cb=self._on_query))
        self.active = True
        self.tailer.start()
        await self._announce(self.tailer.heads())

    async def stop(self) -> None:
        self.active = False
        await self.tailer.stop()
        for sub in self._subs:
            with contextlib.suppress(Exception):  # the connection may be gone already
                await sub.unsubscribe()
        self._subs = []
        for task in list(self._answering):
            task.cancel()

    def hint(self) -> None:
        if self.active:
            self.tailer.hint()

    async def _on_hint(self, msg: Msg) -> None:
        try:
            up_to = int(msg.data)
        except ValueError:
            up_to = None
        self.tailer.hint(up_to)

    async def _announce(self, touched: dict[str, int]) -> None:
        now = time.monotonic()
        if not touched or now - self._full_at >= FULL_HEADS_EVERY:
            # every dataset's head, when idle and at least once a second when busy: a broker
            # that missed an announcement learns what it touched within that time
            touched = self.tailer.heads()
            self._full_at = now
        size, root = self.tailer.log_state()
        self.view.apply(size, root, touched)
        with contextlib.suppress(Exception):  # a lost announcement costs a query, no more
            await self._nc().publish(f"{self.prefix}.log.head",
                                     _enc.encode((size, root, touched)))

    async def _on_query(self, msg: Msg) -> None:
        # each query its own task: a state query waits for the log to grow, and nats-py runs
        # one subscription's callbacks one after another
        task = asyncio.create_task(self._respond(msg))
        self._answering.add(task)
        task.add_done_callback(self._answering.discard)

    async def _respond(self, msg: Msg) -> None:
        try:
            query = _query.decode(msg.data)
            reply: tuple[bool, Any] = (True, await self.answer(query[0], query[1:]))
        except UnavailableError as err:
            reply = (False, err.message)
        except Exception as err:  # a malformed query: say so, never die
            reply = (False, repr(err))
        with contextlib.suppress(Exception):
            await msg.respond(_enc.encode(reply))

    async def answer(self, op: str, args: Sequence[Any]) -> Any:
        t = self.tailer
        if op == "state":
            await t.wait_applied(int(args[0]))
            size, root = t.log_state()
            return (size, root, t.heads())
        if op == "nodes":
            return [(lv, ix, h) for (lv, ix), h in t.log_nodes(
                [(int(lv), int(ix)) for lv, ix in args[0]]).items()]
        if op == "count_after":
            return t.count_after(str(args[0]), int(args[1]))
        if op == "before":
            return t.seq_before_time(str(args[0]), float(args[1]))
        if op == "unresolved":
            return sorted(t.unresolved())
        raise ValueError(f"unknown query {op!r}")


class Queries:
    """Asks the sequencer: in this process when it holds the role, else over ``P.log.q``."""

    def __init__(self, sequencer: Sequencer, nc: Callable[[], Client], prefix: str, *,
                 timeout: float) -> None:
        self.sequencer = sequencer
        self._nc = nc
        self.subject = f"{prefix}.log.q"
        self.timeout = timeout

    async def ask(self, op: str, *args: Any, wait: float | None = None) -> Any:
        if self.sequencer.active:
            try:
                async with asyncio.timeout(wait or self.timeout):  # the caller's bound here too
                    return await self.sequencer.answer(op, args)
            except TimeoutError:
                raise UnavailableError(f"the log did not answer {op} in time",
                                       code=Code.STORE_UNAVAILABLE) from None
        with unavailable(f"asking the sequencer ({op})"):
            try:
                msg = await self._nc().request(self.subject, _enc.encode((op, *args)),
                                               timeout=wait or self.timeout)
            except nats.errors.NoRespondersError:
                raise UnavailableError("no broker holds the sequencer lease now (one takes "
                                       "it within the lease); retry",
                                       code=Code.STORE_UNAVAILABLE) from None
        ok, value = _reply.decode(msg.data)
        if not ok:
            raise UnavailableError(f"the sequencer could not answer {op}: {value}",
                                   code=Code.STORE_UNAVAILABLE)
        return value

    async def refresh(self, view: LogView, deadline: float) -> None:
        """Ask for the whole state (every dataset's head) until one answer comes, or until
        ``deadline`` (monotonic): at start, and after a reconnect that may have lost
        announcements."""
        while True:
            left = deadline - time.monotonic()
            try:
                await self._fetch(view, 0, left)
                return
            except UnavailableError:
                if time.monotonic() >= deadline:
                    raise
                await view.grown(min(0.2, max(0.0, left)))  # no sequencer yet: again soon

    async def state(self, view: LogView, min_size: int, deadline: float) -> None:
        """Until ``view`` holds at least ``min_size`` entries: an announcement usually brings
        it; else ask (the sequencer answers once its log has them), until ``deadline``
        (monotonic)."""
        while view.size < min_size or not view.known:
            left = deadline - time.monotonic()
            if left <= 0:
                raise UnavailableError(
                    f"stored, but not in the log within the wait (the log has {view.size} "
                    "entries); retry: the retry finds the records as duplicates",
                    code=Code.STORE_UNAVAILABLE)
            await view.grown(min(0.2, left))
            if view.size >= min_size and view.known:
                return
            with contextlib.suppress(UnavailableError):
                # no sequencer for a moment (fail-over): ask again until the deadline
                await self._fetch(view, min_size, left)

    async def _fetch(self, view: LogView, min_size: int, left: float) -> None:
        """The log's state once it holds ``min_size`` entries, into ``view``."""
        size, root, heads = await self.ask("state", min_size,
                                           wait=max(0.05, min(self.timeout, left)))
        view.apply(int(size), bytes(root), {str(d): int(s) for d, s in heads.items()})


def decode_head(data: bytes) -> tuple[int, bytes, dict[str, int]]:
    return _head.decode(data)

