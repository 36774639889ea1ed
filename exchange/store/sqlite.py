"""The embedded default store: one sqlite file in WAL mode, via aiosqlite.

Each publish is one transaction (records, current versions, batch statement, dead letters), so a
crash leaves a batch either wholly stored or not at all; the receipt is sent only after commit.
``synchronous=FULL`` by default: a commit survives power loss, not only a killed process (sqlite's
WAL docs: NORMAL may lose the last commits on power loss). ``durability="normal"`` trades that for
speed where the disk is battery-backed.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import sqlite3
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import aiosqlite
import msgspec
import structlog

from exchange.core import ledger, merkle, tiles, tlog
from exchange.core.errors import Code, InternalError, UnavailableError
from exchange.core.gate import Current
from exchange.core.signing import Statement
from exchange.store.base import AccessRow, Appended, SubscriptionRow, Tail

logger = structlog.get_logger("exchange.store.sqlite")

#: log nodes hashed again from tiles, kept for the next proofs (32 bytes each)
NODE_CACHE = 65_536
#: WAL pages past which a commit checkpoints itself (the checkpointer's thread normally has)
WAL_BACKSTOP_PAGES = 16_384
#: bytes a WAL is cut back to once checkpointed
JOURNAL_LIMIT = 64 * 1024 * 1024
#: nodes of a ``tree`` table migrated to tiles at a time (memory: a chunk, a tile per level)
MIGRATE_CHUNK = 65_536

_ACCESS_COLUMNS = ("dataset, node, name, kind, agreement, purpose, groups, first_seq, last_seq, "
                   "at, min_completeness")


def _access_row(cols: Sequence[Any]) -> AccessRow:
    d, node, name, kind, agreement, purpose, groups, first, last, at, minc = cols
    return AccessRow(dataset=d, node=node, name=name, kind=kind, agreement=agreement,
                     purpose=purpose, groups=tuple(g for g in groups.split(",") if g),
                     first_seq=first, last_seq=last, at=at, min_completeness=minc)

__all__ = ["SqliteStore"]

SCHEMA = """
CREATE TABLE IF NOT EXISTS batches (
    id INTEGER PRIMARY KEY,
    publisher TEXT NOT NULL,
    dataset TEXT NOT NULL,
    statement BLOB NOT NULL,
    signature BLOB NOT NULL,
    received_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS records (
    seq INTEGER PRIMARY KEY,
    dataset TEXT NOT NULL,
    key TEXT NOT NULL,
    version INTEGER NOT NULL,
    batch_id INTEGER NOT NULL REFERENCES batches(id),
    idx INTEGER NOT NULL,
    accepted_at REAL NOT NULL,
    digest BLOB NOT NULL,
    body BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS records_dataset_seq ON records(dataset, seq);
CREATE INDEX IF NOT EXISTS records_dataset_key ON records(dataset, key);
CREATE TABLE IF NOT EXISTS access (
    id INTEGER PRIMARY KEY,
    dataset TEXT NOT NULL,
    node TEXT NOT NULL,
    name TEXT NOT NULL,
    kind TEXT NOT NULL,
    agreement TEXT NOT NULL,
    purpose TEXT NOT NULL,
    groups TEXT NOT NULL,
    first_seq INTEGER NOT NULL,
    last_seq INTEGER NOT NULL,
    at REAL NOT NULL,
    min_completeness REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS access_chain ON access(dataset, node, name, first_seq);
CREATE INDEX IF NOT EXISTS access_kind ON access(dataset, kind, first_seq);
CREATE TABLE IF NOT EXISTS current (
    dataset TEXT NOT NULL,
    key TEXT NOT NULL,
    version INTEGER NOT NULL,
    content BLOB NOT NULL,
    seq INTEGER NOT NULL,
    PRIMARY KEY (dataset, key)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS dead_letters (
    id INTEGER PRIMARY KEY,
    publisher TEXT NOT NULL,
    dataset TEXT NOT NULL,
    received_at REAL NOT NULL,
    idx INTEGER,
    code TEXT NOT NULL,
    path TEXT NOT NULL,
    message TEXT NOT NULL,
    record BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS dead_letters_publisher ON dead_letters(publisher, id);
-- the transparency log's hashes as C2SP tlog-tiles (exchange.core.tiles): tile (level, idx)
-- holds tree level 8*level, nodes 256*idx onwards, 32 bytes each; only a level's rightmost
-- tile is partial. Every node in between is hashed again from its tile.
CREATE TABLE IF NOT EXISTS tiles (
    level INTEGER NOT NULL,
    idx INTEGER NOT NULL,
    hashes BLOB NOT NULL,
    PRIMARY KEY (level, idx)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS checkpoints (
    size INTEGER PRIMARY KEY,
    root BLOB NOT NULL,
    note TEXT NOT NULL,
    signed_at REAL NOT NULL
);
-- data quality: the gate's counters per (dataset, publisher), and references to records the
-- exchange does not (yet) hold
CREATE TABLE IF NOT EXISTS quality (
    dataset TEXT NOT NULL,
    publisher TEXT NOT NULL,
    counters BLOB NOT NULL,
    PRIMARY KEY (dataset, publisher)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS unresolved (
    target_dataset TEXT NOT NULL,
    target_key TEXT NOT NULL,
    dataset TEXT NOT NULL,
    key TEXT NOT NULL,
    PRIMARY KEY (target_dataset, target_key, dataset, key)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS unresolved_source ON unresolved(dataset, key);
CREATE TABLE IF NOT EXISTS subscriptions (
    node TEXT NOT NULL,
    dataset TEXT NOT NULL,
    name TEXT NOT NULL,
    acked INTEGER NOT NULL,
    created_at REAL NOT NULL,
    PRIMARY KEY (node, dataset, name)
) WITHOUT ROWID;
"""

_body = msgspec.msgpack.Encoder()
_stmt_dec = msgspec.msgpack.Decoder(Statement)
_json = msgspec.json.Encoder()


def _commit_group(batch_rows: list[tuple[object, ...]], rows: list[tuple[object, ...]],
                  cur_rows: list[tuple[str, str, int, bytes, int]],
                  tile_rows: list[tuple[int, int, bytes]],
                  refs: dict[tuple[str, str], list[ledger.Reference]],
                  dead_rows: list[tuple[object, ...]], quality: list[ledger.QualityRow],
                  db: sqlite3.Connection) -> None:
    """One group append as one transaction, run on the writer's thread: all or nothing."""
    with _transaction(db):
        if rows:
            db.executemany("INSERT INTO batches (id, publisher, dataset, statement, signature, "
                           "received_at) VALUES (?, ?, ?, ?, ?, ?)", batch_rows)
            db.executemany("INSERT INTO records VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", rows)
            db.executemany(
                "INSERT INTO current VALUES (?, ?, ?, ?, ?) ON CONFLICT(dataset, key) "
                "DO UPDATE SET version=excluded.version, content=excluded.content, "
                "seq=excluded.seq", cur_rows)
            db.executemany("INSERT OR REPLACE INTO tiles VALUES (?, ?, ?)", tile_rows)
            new_refs = [r for rs in refs.values() for r in rs]
            # with no unresolved reference stored and none new, there is nothing to replace or
            # resolve: two index probes per record saved
            if new_refs or db.execute("SELECT 1 FROM unresolved LIMIT 1").fetchone():
                db.executemany("DELETE FROM unresolved WHERE dataset=? AND key=?", list(refs))
                if new_refs:
                    db.executemany("INSERT OR IGNORE INTO unresolved VALUES (?, ?, ?, ?)",
                                   new_refs)
                # resolve last: a population record earlier in the group resolves a
                # vehicle's owner reference added later in the same group
                db.executemany("DELETE FROM unresolved WHERE target_dataset=? AND target_key=?",
                               [(r[0], r[1]) for r in cur_rows])
        if dead_rows:
            db.executemany(_INSERT_DEAD, dead_rows)
        if quality:
            db.executemany(_UPSERT_QUALITY, quality)


def _migrate_tree(db: sqlite3.Connection) -> int:
    """A store made before the log was kept as tiles: its ``tree`` rows (a row per node)
    become tiles, in one transaction that also drops ``tree`` (so a store holds one layout or
    the other whole; ``exchange audit`` reads ``tree`` while it exists). Streamed: memory
    holds one chunk of nodes and a tile per level. Returns the tile rows written (0: nothing
    to migrate)."""
    if db.execute("SELECT 1 FROM sqlite_master WHERE type='table' AND name='tree'"
                  ).fetchone() is None:
        return 0
    written = 0
    with _transaction(db):
        cursor = db.execute(f"SELECT level, idx, hash FROM tree WHERE level % {tiles.HEIGHT} = 0"
                            " ORDER BY level, idx")
        edge: tiles.Edge = {}
        while nodes := cursor.fetchmany(MIGRATE_CHUNK):
            edge, rows = tiles.grow(edge, nodes)
            db.executemany("INSERT OR REPLACE INTO tiles VALUES (?, ?, ?)", rows)
            written += len(rows)
        db.execute("DROP TABLE tree")
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # before the first append asks for one
    return written


def _checkpoint(db: sqlite3.Connection) -> None:
    db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()


@contextlib.contextmanager
def _transaction(db: sqlite3.Connection) -> Iterator[None]:
    """One write transaction on the writer connection: committed whole or rolled back."""
    db.execute("BEGIN IMMEDIATE")
    try:
        yield
        db.execute("COMMIT")
    except BaseException:
        # all-or-nothing; nothing already committed is touched
        if db.in_transaction:
            db.execute("ROLLBACK")
        raise


_INSERT_DEAD = ("INSERT INTO dead_letters (publisher, dataset, received_at, idx, code, path, "
                "message, record) VALUES (?, ?, ?, ?, ?, ?, ?, ?)")
_UPSERT_QUALITY = ("INSERT INTO quality VALUES (?, ?, ?) ON CONFLICT(dataset, publisher) "
                   "DO UPDATE SET counters=excluded.counters")


class SqliteStore:
    """``Store`` on one sqlite file (WAL). The broker serialises appends.

    Two connections. Every write (a group append, an ack, dead letters, a checkpoint) is one
    transaction run whole, in one hop, on a writer connection with a thread of its own, under
    ``_writing``. The aiosqlite connection only reads, each query in one hop, so no statement
    stays open to pin it to an old snapshot. Reads are bounded by ``_head`` (the last committed
    seq), and live reads just behind the head come from an in-memory ``Tail`` filled after each
    commit, so a subscriber never receives a record that may yet be rolled back or lost to a
    crash.
    """

    #: a group commit is one sqlite transaction: no bound but memory
    atomic_batch_bounded = False
    #: the one broker on this file grows the log and signs its checkpoints
    sequencing = True
    #: what ``/healthz`` names the store (the operator console shows it)
    kind = "sqlite"

    def __init__(self, path: str | Path, *, durability: str = "full",
                 tail_records: int = 10_000) -> None:
        self.path = Path(path)
        self._durability = durability.upper()
        self._db: aiosqlite.Connection | None = None
        self._head = -1
        self._last_batch = 0
        self._tree = merkle.CompactRange()
        #: the log's rightmost tile of each tile level, as committed
        self._edge: tiles.Edge = {}
        #: nodes hashed again from their tiles (a perfect subtree never changes)
        self._nodes: collections.OrderedDict[tuple[int, int], bytes] = (
            collections.OrderedDict())
        self._writing = asyncio.Lock()
        self._tail_records = tail_records
        self._writer: sqlite3.Connection | None = None
        self._writer_pool: ThreadPoolExecutor | None = None
        #: the WAL is copied back into the database by a thread of its own, off the commit's
        #: path (``wal_autocheckpoint`` would run it inside the commit that crosses the mark)
        self._checkpointer: sqlite3.Connection | None = None
        self._checkpointer_pool: ThreadPoolExecutor | None = None
        self._checkpointing: asyncio.Future[None] | None = None
        self._checkpoint_again = False
        self.tail = Tail(-1, tail_records)

    @property
    def db(self) -> aiosqlite.Connection:
        if self._db is None:
            raise UnavailableError("store is not open", code=Code.STORE_CLOSED)
        return self._db

    async def open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._db = await aiosqlite.connect(self.path, isolation_level=None)
            await self._db.execute("PRAGMA journal_mode=WAL")
            await self._db.execute(f"PRAGMA synchronous={self._durability}")
            await self._db.execute("PRAGMA foreign_keys=ON")
            await self._db.execute("PRAGMA busy_timeout=10000")
            await self._db.executescript(SCHEMA)
            row = await self._one("SELECT COALESCE(MAX(seq), -1) FROM records")
            self._head = int(row[0]) if row else -1
            self.tail = Tail(self._head, self._tail_records)
            # every write runs on a connection of its own, each transaction in one hop to its
            # thread; the aiosqlite connection only reads
            self._writer_pool = ThreadPoolExecutor(1, thread_name_prefix="sqlite-writer")
            self._writer = await asyncio.get_running_loop().run_in_executor(
                self._writer_pool, self._connect_writer)
            self._checkpointer_pool = ThreadPoolExecutor(1, thread_name_prefix="sqlite-wal")
            self._checkpointer = await asyncio.get_running_loop().run_in_executor(
                self._checkpointer_pool, self._connect_checkpointer)
            row = await self._one("SELECT COALESCE(MAX(id), 0) FROM batches")
            self._last_batch = int(row[0]) if row else 0
            migrated = await asyncio.get_running_loop().run_in_executor(
                self._writer_pool, _migrate_tree, self._writer)
            if migrated:
                logger.info("log_migrated_to_tiles", tiles=migrated)
            self._edge = {t: (n, h) for t, n, h in await self._rows(
                "SELECT level, idx, hashes FROM tiles AS t WHERE idx = "
                "(SELECT MAX(idx) FROM tiles WHERE level = t.level)")}
            self._tree = await self._load_frontier(self._head + 1)
        except BaseException as err:
            await self.close()
            if isinstance(err, sqlite3.Error):
                raise UnavailableError(f"cannot open the store at {self.path}: {err}",
                                       code=Code.STORE_UNAVAILABLE) from None
            raise

    async def _load_frontier(self, size: int) -> merkle.CompactRange:
        """The log's right edge from stored nodes: one node per set bit of ``size``."""
        coords = []
        start = 0
        for level in range(size.bit_length() - 1, -1, -1):
            if size >> level & 1:
                coords.append((level, start >> level))
                start += 1 << level
        nodes = await self.log_nodes(coords)
        missing = [c for c in coords if c not in nodes]
        if missing:
            raise InternalError(f"transparency log is missing nodes {missing[:3]}; run "
                                "`exchange audit --data` on this directory",
                                code=Code.LOG_DAMAGED)
        return merkle.CompactRange(size, [nodes[c] for c in coords])

    def _connect_writer(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        db.execute(f"PRAGMA synchronous={self._durability}")
        db.execute("PRAGMA foreign_keys=ON")
        db.execute("PRAGMA busy_timeout=10000")
        # the checkpointer's thread copies the WAL back after each commit; the writer does it
        # itself only past a high mark (a checkpointer that fell far behind), and a WAL grown
        # by a burst is cut back to JOURNAL_LIMIT once copied
        db.execute(f"PRAGMA wal_autocheckpoint={WAL_BACKSTOP_PAGES}")
        db.execute(f"PRAGMA journal_size_limit={JOURNAL_LIMIT}")
        return db

    def _connect_checkpointer(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        db.execute(f"PRAGMA synchronous={self._durability}")
        db.execute("PRAGMA busy_timeout=10000")
        return db

    def _checkpoint_soon(self) -> None:
        """After any commit: copy the WAL back (PASSIVE: never waits for, nor blocks, a reader
        or the writer) on the checkpointer's thread. One at a time; a commit that lands while
        one runs asks for one more after it, so under load they run back to back and the WAL
        stays about one checkpoint's worth of commits long. Never raises: the commit it
        follows is already the caller's."""
        if self._checkpointing is not None and not self._checkpointing.done():
            self._checkpoint_again = True
            return
        db, pool = self._checkpointer, self._checkpointer_pool
        if db is None or pool is None:
            return
        self._checkpoint_again = False
        try:
            self._checkpointing = asyncio.get_running_loop().run_in_executor(
                pool, _checkpoint, db)
        except RuntimeError as err:  # the loop or the pool is shutting down
            logger.warning("wal_checkpoint_not_started", error=str(err))
            return
        self._checkpointing.add_done_callback(self._checkpointed)

    def _checkpointed(self, done: asyncio.Future[None]) -> None:
        if not done.cancelled() and done.exception() is not None:
            # the WAL keeps the commits; the next checkpoint copies them back
            logger.warning("wal_checkpoint_failed", error=str(done.exception()))
        if self._checkpoint_again:
            self._checkpoint_soon()

    async def close(self) -> None:
        checkpointer, cpool = self._checkpointer, self._checkpointer_pool
        self._checkpointer = self._checkpointer_pool = None
        if cpool is not None:
            if checkpointer is not None:  # after a checkpoint still running
                await asyncio.get_running_loop().run_in_executor(cpool, checkpointer.close)
            cpool.shutdown()
        writer, pool = self._writer, self._writer_pool
        self._writer = self._writer_pool = None
        if pool is not None:
            if writer is not None:  # after any transaction still queued on its thread
                await asyncio.get_running_loop().run_in_executor(pool, writer.close)
            pool.shutdown()
        if self._db is not None:
            await self._db.close()
            self._db = None

    async def sync(self) -> None:
        """One writer: every commit is read back before its append returns."""

    async def head(self, dataset: str | None = None) -> int:
        if dataset is None:
            return self._head
        row = await self._one(
            "SELECT COALESCE(MAX(seq), -1) FROM records WHERE dataset=? AND seq<=?",
            (dataset, self._head))
        return int(row[0]) if row else -1

    async def current(self, dataset: str, keys: Sequence[str]) -> dict[str, Current]:
        out: dict[str, Current] = {}
        unique = list(dict.fromkeys(keys))
        # sqlite's default SQLITE_MAX_VARIABLE_NUMBER is 32766 since 3.32; stay well below it
        for i in range(0, len(unique), 900):
            chunk = unique[i:i + 900]
            marks = ",".join("?" * len(chunk))
            for key, version, content, seq in await self._rows(
                    f"SELECT key, version, content, seq FROM current WHERE dataset=? AND key IN "
                    f"({marks})", (dataset, *chunk)):
                out[key] = Current(version, content, seq)
        return out

    async def append(self, plan: ledger.Plan) -> Appended:
        """A group commit in one transaction: one fsync for all of its batches, every row from
        the plan, the log's new nodes with them."""
        async with self._writing:
            first = self._head + 1
            tree = merkle.CompactRange(self._tree.size, self._tree.frontier)
            # stored iff logged: the tiles change in the same transaction
            edge, tile_rows = tiles.grow(self._edge, tree.extend(plan.leaves(first)))
            ids: list[int] = []
            batch_id = self._last_batch
            batch_rows: list[tuple[object, ...]] = []
            for b in plan.batches:
                if b is None:
                    ids.append(0)
                    continue
                batch_id += 1
                ids.append(batch_id)
                batch_rows.append((batch_id, b.publisher, b.dataset, _body.encode(b.statement),
                                   b.signature, plan.now))
            tail: list[ledger.StoredRecord] = []
            rows: list[tuple[object, ...]] = []
            cur_rows: list[tuple[str, str, int, bytes, int]] = []
            seq = first
            for b, bid in zip(plan.batches, ids, strict=True):
                if b is None:
                    continue
                for e in plan.entries[b.offset:b.offset + b.count]:
                    record = e.stored(seq, bid)
                    tail.append(record)
                    rows.append((seq, e.dataset, e.key, e.version, bid, e.index, e.accepted_at,
                                 e.digest, e.body))
                    cur_rows.append((e.dataset, e.key, e.version, e.content, seq))
                    seq += 1
            job = functools.partial(_commit_group, batch_rows, rows, cur_rows, tile_rows,
                                    plan.references(), self._dead_rows(plan.dead),
                                    list(plan.quality))
            cancelled = await self._in_writer(job)
            self._head = seq - 1
            self.tail.add(tail, plan.batch_rows(ids))
            self._last_batch = batch_id
            self._tree = merkle.CompactRange(tree.size, tree.frontier)
            self._edge = edge
            self._checkpoint_soon()
            if cancelled:
                raise asyncio.CancelledError
            return Appended(ids, first)

    async def _in_writer(self, job: Callable[[sqlite3.Connection], None]) -> bool:
        """Run one whole transaction on the writer connection, in one hop to its thread.

        Cancelling the caller does not cancel the transaction: it is waited for, and True is
        returned, so the caller records what was committed before it stops."""
        if self._writer is None or self._writer_pool is None:
            raise UnavailableError("store is not open", code=Code.STORE_CLOSED)
        fut = asyncio.get_running_loop().run_in_executor(self._writer_pool, job, self._writer)
        cancelled = False
        while True:
            try:
                await asyncio.shield(fut)
                return cancelled
            except asyncio.CancelledError:
                if fut.done() and not fut.cancelled() and fut.exception() is None:
                    return True
                if fut.done():
                    raise
                cancelled = True
            except Exception as err:
                if cancelled:  # rolled back; the caller asked to stop, so it stops
                    raise asyncio.CancelledError from None
                if isinstance(err, sqlite3.Error):  # disk full, I/O error, locked database
                    raise UnavailableError(f"the store could not commit: {err}",
                                           code=Code.STORE_UNAVAILABLE) from None
                raise

    async def _rows(self, sql: str, params: Sequence[object] = ()) -> list[Any]:
        """A query's rows in one hop to the reader's thread: no statement stays open between
        hops, so every read sees what is committed when it runs (an open one would pin the
        connection to an older snapshot of the WAL)."""
        return list(await self.db.execute_fetchall(sql, params))

    async def _one(self, sql: str, params: Sequence[object] = ()) -> Any:
        rows = await self._rows(sql, params)
        return rows[0] if rows else None

    async def _write(self, *steps: tuple[str, Any, bool]) -> None:
        """Small writes (``(sql, params, many)``) as one transaction on the writer connection,
        the only one that writes: nothing contends with the appends, and a cancelled caller
        never leaves a transaction open."""

        def job(db: sqlite3.Connection) -> None:
            with _transaction(db):
                for sql, params, many in steps:
                    if many:
                        db.executemany(sql, params)
                    else:
                        db.execute(sql, params)

        async with self._writing:
            cancelled = await self._in_writer(job)
            self._checkpoint_soon()
            if cancelled:
                raise asyncio.CancelledError

    @staticmethod
    def _dead_rows(dead: Sequence[ledger.DeadLetter]) -> list[tuple[object, ...]]:
        return [(d.publisher, d.dataset, d.received_at, d.index, d.code, d.path, d.message,
                 d.record) for d in dead]

    # -- transparency log -------------------------------------------------------------------

    def log_state(self) -> tuple[int, bytes]:
        """Size and root of the log as committed."""
        return self._tree.size, self._tree.root()

    async def log_nodes(self, coords: Sequence[tuple[int, int]]) -> dict[tuple[int, int], bytes]:
        """Nodes of the log from their tiles (a node past the committed log is left out)."""
        out: dict[tuple[int, int], bytes] = {}
        wanted = []
        for c in dict.fromkeys(coords):
            h = self._nodes.get(c)
            if h is None:
                wanted.append(c)
            else:
                self._nodes.move_to_end(c)
                out[c] = h
        held: dict[tuple[int, int], bytes] = {}
        needed = sorted(tiles.needed(wanted))
        for i in range(0, len(needed), 400):
            chunk = needed[i:i + 400]
            where = " OR ".join("(level=? AND idx=?)" for _ in chunk)
            for level, idx, hashes in await self._rows(
                    f"SELECT level, idx, hashes FROM tiles WHERE {where}",
                    [v for c in chunk for v in c]):
                held[(level, idx)] = hashes
        for level, idx in wanted:
            h = tiles.node(level, idx, held)
            if h is not None:
                out[(level, idx)] = h
                if level % tiles.HEIGHT:  # hashed again from a tile: kept
                    self._nodes[(level, idx)] = h
                    if len(self._nodes) > NODE_CACHE:
                        self._nodes.popitem(last=False)
        return out

    async def add_checkpoint(self, cp: tlog.Checkpoint, now: float) -> None:
        await self._write(("INSERT OR IGNORE INTO checkpoints VALUES (?, ?, ?, ?)",
                           (cp.size, cp.root, cp.note, now), False))

    async def checkpoints(self, since_size: int = 0) -> list[tlog.Checkpoint]:
        rows = await self._rows("SELECT note FROM checkpoints WHERE size>=? ORDER BY size",
                                (since_size,))
        return [tlog.Checkpoint.parse(n.split("\n\n")[0] + "\n", n) for (n,) in rows]

    async def latest_checkpoint(self) -> tlog.Checkpoint | None:
        row = await self._one("SELECT note FROM checkpoints ORDER BY size DESC LIMIT 1")
        if row is None:
            return None
        note: str = row[0]
        return tlog.Checkpoint.parse(note.split("\n\n")[0] + "\n", note)

    async def add_dead_letters(self, dead: Sequence[ledger.DeadLetter], *,
                               quality: Sequence[ledger.QualityRow] = ()) -> None:
        if dead or quality:
            await self._write((_INSERT_DEAD, self._dead_rows(dead), True),
                              (_UPSERT_QUALITY, list(quality), True))

    async def save_quality(self, rows: Sequence[ledger.QualityRow]) -> None:
        if rows:
            await self._write((_UPSERT_QUALITY, list(rows), True))

    async def load_quality(self) -> list[ledger.QualityRow]:
        return [(d, p, c) for d, p, c in await self._rows(
            "SELECT dataset, publisher, counters FROM quality")]

    async def other_quality(self) -> list[ledger.QualityRow]:
        """No other broker process writes this store."""
        return []

    async def unresolved_counts(self) -> dict[str, int]:
        """Unresolved references per referring dataset."""
        return {d: int(n) for d, n in await self._rows(
            "SELECT dataset, COUNT(*) FROM unresolved GROUP BY dataset")}

    async def unresolved_sample(self, dataset: str, limit: int = 20) -> list[ledger.Reference]:
        return [(t, tk, d, k) for t, tk, d, k in await self._rows(
            "SELECT target_dataset, target_key, dataset, key FROM unresolved WHERE dataset=? "
            "ORDER BY key LIMIT ?", (dataset, limit))]

    def _records(self, rows: Sequence[sqlite3.Row | tuple[object, ...]]
                 ) -> list[ledger.StoredRecord]:
        return [ledger.StoredRecord(*r) for r in rows]

    async def read(self, dataset: str, after: int, limit: int) -> list[ledger.StoredRecord]:
        recent = self.tail.read(dataset, after, limit)
        if recent is not None:
            return recent
        return self._records(await self._rows(
            "SELECT seq, dataset, key, version, batch_id, idx, accepted_at, digest, body "
            "FROM records WHERE dataset=? AND seq>? AND seq<=? ORDER BY seq LIMIT ?",
            (dataset, after, self._head, limit)))

    async def versions(self, dataset: str, key: str) -> list[ledger.StoredRecord]:
        return self._records(await self._rows(
            "SELECT seq, dataset, key, version, batch_id, idx, accepted_at, digest, body "
            "FROM records WHERE dataset=? AND key=? AND seq<=? ORDER BY seq",
            (dataset, key, self._head)))

    async def add_access(self, rows: Sequence[AccessRow]) -> None:
        if rows:
            await self._write(self._access_step(rows))

    @staticmethod
    def _access_step(rows: Sequence[AccessRow]) -> tuple[str, Any, bool]:
        return ("INSERT INTO access (dataset, node, name, kind, agreement, purpose, groups, "
                "first_seq, last_seq, at, min_completeness) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                [(r.dataset, r.node, r.name, r.kind, r.agreement, r.purpose,
                  ",".join(r.groups), r.first_seq, r.last_seq, r.at, r.min_completeness)
                 for r in rows], True)

    async def access(self, dataset: str, seqs: Sequence[int]) -> list[AccessRow]:
        """Per chain of one node's rows under one name (a subscription's acks never overlap),
        the row that starts at or before each seq, if it reaches it: one indexed probe per
        chain and seq, however many acks are stored. Lookups (name "") are matched exactly."""
        chains = await self._rows("SELECT DISTINCT node, name FROM access WHERE dataset=? "
                                  "AND kind!='sent'", (dataset,))
        found: dict[int, AccessRow] = {}
        for seq in seqs:
            # sent but never acked (one row per such connection, ranges may overlap): all
            rows = await self._rows(
                f"SELECT id, {_ACCESS_COLUMNS} FROM access WHERE dataset=? AND kind='sent' "
                "AND first_seq<=? AND last_seq>=?", (dataset, seq, seq))
            for row_id, *cols in rows:
                found[row_id] = _access_row(cols)
        for node, name in chains:
            for seq in seqs:
                if name == "":
                    rows = await self._rows(
                        f"SELECT id, {_ACCESS_COLUMNS} FROM access WHERE dataset=? AND node=? "
                        "AND name='' AND kind!='sent' AND first_seq=?", (dataset, node, seq))
                else:
                    rows = await self._rows(
                        f"SELECT id, {_ACCESS_COLUMNS} FROM access WHERE dataset=? AND node=? "
                        "AND name=? AND kind='delivery' AND first_seq<=? "
                        "ORDER BY first_seq DESC LIMIT 1", (dataset, node, name, seq))
                for row_id, *cols in rows:
                    row = _access_row(cols)
                    if row.first_seq <= seq <= row.last_seq:
                        found[row_id] = row
        return [found[i] for i in sorted(found)]

    async def read_range(self, start: int, end: int) -> list[ledger.StoredRecord]:
        return self._records(await self._rows(
            "SELECT seq, dataset, key, version, batch_id, idx, accepted_at, digest, body "
            "FROM records WHERE seq>=? AND seq<? AND seq<=? ORDER BY seq",
            (start, end, self._head)))

    async def seq_before_time(self, dataset: str, t: float) -> int:
        row = await self._one(
            "SELECT COALESCE(MAX(seq), -1) FROM records WHERE dataset=? AND accepted_at<? "
            "AND seq<=?", (dataset, t, self._head))
        return int(row[0]) if row else -1

    async def batches(self, ids: Sequence[int]) -> dict[int, ledger.BatchRow]:
        out = self.tail.batches(ids)
        unique = [i for i in dict.fromkeys(ids) if i not in out]
        for i in range(0, len(unique), 900):
            chunk = unique[i:i + 900]
            for bid, stmt, sig in await self._rows(
                    f"SELECT id, statement, signature FROM batches WHERE id IN "
                    f"({','.join('?' * len(chunk))})", chunk):
                out[bid] = ledger.BatchRow(bid, _stmt_dec.decode(stmt), sig)
        return out

    async def subscription(self, node: str, dataset: str, name: str) -> SubscriptionRow | None:
        row = await self._one(
            "SELECT node, dataset, name, acked, created_at FROM subscriptions "
            "WHERE node=? AND dataset=? AND name=?", (node, dataset, name))
        return SubscriptionRow(*row) if row else None

    async def create_subscription(self, node: str, dataset: str, name: str, acked: int,
                                  now: float) -> SubscriptionRow:
        await self._write(("INSERT OR IGNORE INTO subscriptions VALUES (?, ?, ?, ?, ?)",
                           (node, dataset, name, acked, now), False))
        row = await self.subscription(node, dataset, name)
        assert row is not None
        return row

    async def ack(self, node: str, dataset: str, name: str, seq: int, *,
                  access: AccessRow | None = None) -> None:
        # MAX keeps the position monotonic even if two connections of one subscription race
        steps: list[tuple[str, Any, bool]] = [(
            "UPDATE subscriptions SET acked=MAX(acked, ?) WHERE node=? AND dataset=? AND "
            "name=?", (seq, node, dataset, name), False)]
        if access is not None:
            steps.append(self._access_step([access]))  # in the same transaction
        await self._write(*steps)

    async def subscriptions(self) -> list[SubscriptionRow]:
        return [SubscriptionRow(*r) for r in await self._rows(
            "SELECT node, dataset, name, acked, created_at FROM subscriptions "
            "ORDER BY dataset, node, name")]

    async def count_after(self, dataset: str, seq: int) -> int:
        row = await self._one(
            "SELECT COUNT(*) FROM records WHERE dataset=? AND seq>? AND seq<=?",
            (dataset, seq, self._head))
        return int(row[0]) if row else 0

    async def dead_letter_count(self, publisher: str) -> int:
        row = await self._one("SELECT COUNT(*) FROM dead_letters WHERE publisher=?",
                              (publisher,))
        return int(row[0]) if row else 0

    async def dead_letters(self, publisher: str, after: int, limit: int) -> list[ledger.DeadLetter]:
        return [ledger.DeadLetter(id=r[0], publisher=r[1], dataset=r[2], received_at=r[3],
                           index=r[4], code=r[5], path=r[6], message=r[7], record=r[8])
                for r in await self._rows(
                    "SELECT id, publisher, dataset, received_at, idx, code, path, message, "
                    "record FROM dead_letters WHERE publisher=? AND id>? ORDER BY id LIMIT ?",
                    (publisher, after, limit))]
