"""The sequencer's view of the records stream, in order: the tailer.

Only the broker holding the sequencer lease (``lease``) runs one. It reads the records stream
from the start (when it takes the role) and then as it grows, and keeps in memory what the log
and the index queries need: the transparency log's tree and its stored nodes, each dataset's
seqs and acceptance times, every key it holds (for references), and the references
records hold to records not yet stored. What it holds is exactly what was committed and read
back: ``log_state()`` never runs ahead of the stream.

Appending brokers tell the sequencer "appended up to seq N" on the core subject
``P.appended.<dataset>`` (``hint``); a hint wakes the tailer at once, a lost one costs at most
the idle poll interval. After every page it applies, and once per idle poll, the tailer calls
``on_page`` with the datasets the page touched (the sequencer announces the log's new head).
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import time
from array import array
from collections.abc import Awaitable, Callable, Iterator, Sequence

import msgspec
import structlog

from exchange.core import merkle, tlog
from exchange.core.errors import Code, InternalError, UnavailableError
from exchange.core.ledger import Entry, Reference
from exchange.store.nats.direct import PAGE, DirectGets

__all__ = ["Tailer"]

logger = structlog.get_logger("exchange.store.nats")

_entry = msgspec.msgpack.Decoder(Entry)


async def _nothing(touched: dict[str, int]) -> None:
    pass


class Tailer:
    """The sequencer's derived state, and the task that keeps it up with the stream."""

    def __init__(self, direct: DirectGets, records_stream: str, *, timeout: float,
                 idle_poll: float) -> None:
        self.direct = direct
        self.records_stream = records_stream
        self.timeout = timeout
        self.idle_poll = idle_poll
        self._tree = merkle.CompactRange()
        self._levels: list[bytearray] = []
        self._seqs: dict[str, array[int]] = {}
        self._times: dict[str, array[float]] = {}
        #: every (dataset, key) the log holds: what a reference resolves to
        self._stored: set[tuple[str, str]] = set()
        self._refs: dict[tuple[str, str], list[tuple[str, str]]] = {}
        #: called after every page applied (the datasets it touched, and their last seq) and
        #: once per idle poll (with none)
        self.on_page: Callable[[dict[str, int]], Awaitable[None]] = _nothing
        self._target = 0
        self._applied = asyncio.Event()
        self._hint = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._stopping = False

    # -- running ----------------------------------------------------------------------------

    def hint(self, up_to: int | None = None) -> None:
        """Something was appended (up to seq ``up_to``, if known): read on now."""
        if up_to is not None:
            self._target = max(self._target, up_to)
        self._hint.set()

    async def catch_up(self) -> None:
        """Read the whole stream as it is now (before serving)."""
        while await self.poll():
            pass

    def start(self) -> None:
        self._stopping = False
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        """Stop reading, and wait until the task has: two tasks applying pages to one tree
        would break it (the flag ends a task whose cancel a 3.11 ``wait_for`` swallowed, at
        its next I/O timeout at the latest)."""
        if self._task is not None:
            self._stopping = True
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def poll(self) -> int:
        """Read and apply the next page of the records stream; how many entries it applied."""
        size = self._tree.size
        msgs = await self.direct.get(self.records_stream, {"seq": size + 1, "batch": PAGE},
                                     batch=True)
        entries: list[Entry] = []
        leaves: list[bytes] = []
        failed: Exception | None = None
        for m in msgs:
            # a page is applied up to its first bad message: the records before it are in the
            # log, announced, and waited for like any others
            try:
                assert m.headers is not None
                seq = size + len(entries)
                if int(m.headers["Nats-Sequence"]) != seq + 1:
                    raise InternalError(f"records stream has a gap at {seq + 1}",
                                        code=Code.LOG_DAMAGED)
                e = _entry.decode(m.data)
                leaves.append(tlog.entry_leaf(seq, e.dataset, e.publisher, e.digest,
                                              e.batch_root, tlog.micros(e.accepted_at)))
                entries.append(e)
            except Exception as err:
                failed = err
                break
        if entries:
            touched = self._apply(size, entries, leaves)
            self._applied.set()
            self._applied = asyncio.Event()
            await self.on_page(touched)
        if failed is not None:
            raise failed
        return len(msgs)

    def _apply(self, first: int, entries: Sequence[Entry], leaves: Sequence[bytes]
               ) -> dict[str, int]:
        """Entries ``first``.. and their log leaves, in order: the tree grows by all of them at
        once (``CompactRange.extend``) and each perfect subtree completed is kept; the index
        learns each record. The datasets touched, with their last seq."""
        levels = self._levels
        for level, _, h in self._tree.extend(leaves):
            if level == len(levels):
                levels.append(bytearray())
            levels[level] += h
        touched: dict[str, int] = {}
        stored, refs = self._stored, self._refs
        for seq, e in enumerate(entries, first):
            dataset = e.dataset
            seqs = self._seqs.get(dataset)
            if seqs is None:
                seqs = self._seqs[dataset] = array("q")
                self._times[dataset] = array("d")
            seqs.append(seq)
            self._times[dataset].append(e.accepted_at)
            stored.add((dataset, e.key))
            if e.refs:
                refs[(dataset, e.key)] = list(e.refs)
            elif refs:
                refs.pop((dataset, e.key), None)
            touched[dataset] = seq
        return touched

    async def _run(self) -> None:
        backoff = 0.005
        while not self._stopping:
            try:
                if await self.poll():
                    backoff = 0.005
                    continue
                if self._target >= self._tree.size:
                    # told of entries this replica has not served yet: ask again soon
                    await asyncio.sleep(backoff)
                    backoff = min(backoff * 2, 0.25)
                    continue
                self._hint.clear()
                try:
                    # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow stop()'s
                    # cancel when the hint comes at the same moment
                    async with asyncio.timeout(self.idle_poll):
                        await self._hint.wait()
                except TimeoutError:
                    await self.on_page({})  # nothing new: say so once per idle poll
            except asyncio.CancelledError:
                raise
            except Exception as err:  # NATS down: keep trying; publishes are refused meanwhile
                logger.warning("tail_failed", error=repr(err))
                await asyncio.sleep(min(backoff * 4, 0.5))
                backoff = min(backoff * 2, 0.25)

    async def wait_applied(self, size: int) -> None:
        """Until the tailer has read the log up to ``size`` entries (an I/O timeout, not
        protocol timing: a replica that never serves them fails the caller, who retries)."""
        deadline = time.monotonic() + max(self.timeout, 10.0)
        self.hint(size - 1)
        while self._tree.size < size:
            left = deadline - time.monotonic()
            if left <= 0:
                raise UnavailableError(f"stored, but not read back within {self.timeout}s; "
                                       "retry: the retry finds the records as duplicates",
                                       code=Code.STORE_UNAVAILABLE)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(left):
                    await self._applied.wait()

    # -- what it knows ------------------------------------------------------------------------

    @property
    def size(self) -> int:
        """Entries read back: the committed log."""
        return self._tree.size

    def log_state(self) -> tuple[int, bytes]:
        return self._tree.size, self._tree.root()

    def log_nodes(self, coords: Sequence[tuple[int, int]]) -> dict[tuple[int, int], bytes]:
        out: dict[tuple[int, int], bytes] = {}
        for level, idx in coords:
            if level < len(self._levels):
                h = bytes(self._levels[level][idx * 32:idx * 32 + 32])
                if len(h) == 32:
                    out[(level, idx)] = h
        return out

    def heads(self) -> dict[str, int]:
        """Every dataset's last seq in the log."""
        return {d: seqs[-1] for d, seqs in self._seqs.items() if seqs}

    def unresolved(self) -> Iterator[Reference]:
        for (dataset, key), targets in self._refs.items():
            for target, target_key in targets:
                if (target, target_key) not in self._stored:
                    yield (target, target_key, dataset, key)

    def seq_before_time(self, dataset: str, t: float) -> int:
        # accepted_at comes from each broker's clock, so it is not monotonic in seq: scan
        seqs, times = self._seqs.get(dataset), self._times.get(dataset)
        if not seqs or times is None:
            return -1
        best = -1
        for s, at in zip(seqs, times, strict=True):
            if at < t:
                best = s
        return best

    def count_after(self, dataset: str, seq: int) -> int:
        seqs = self._seqs.get(dataset)
        return len(seqs) - bisect.bisect_right(seqs, seq) if seqs else 0
