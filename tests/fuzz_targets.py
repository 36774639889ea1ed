"""Every decoder that reads bytes from outside, with its contract: for any input it returns, or
raises one of the exchange's own errors (never a bare ``ValueError``, ``KeyError``,
``UnicodeDecodeError``, ``RecursionError`` … that would be a 500 on the wire or a crash).

Shared by the bounded hypothesis suite in ``make test`` (``tests/test_fuzz.py``) and the long
coverage-guided run (``make fuzz``: ``tests/long/fuzz.py``, atheris)."""

from __future__ import annotations

import contextlib
import datetime as dt
from collections.abc import Callable

import msgspec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from exchange.core import access, datasets, tlog
from exchange.core.errors import ExchangeError
from exchange.core.feed import Feed, parse_request
from exchange.core.signing import Verifier
from exchange.core.wire import decode_batch

__all__ = ["SEEDS", "TARGETS", "run"]

_KEY = Ed25519PrivateKey.generate()
_NOTE_KEY = tlog.NoteKey.from_private("fuzz.example/log", _KEY)
_VERIFIER = Verifier({})
_TODAY = dt.date(2026, 11, 22)


def _batch_json(data: bytes) -> None:
    batch = decode_batch(data, "application/json")
    _gate(batch)


def _batch_msgpack(data: bytes) -> None:
    batch = decode_batch(data, "application/msgpack")
    _gate(batch)


def _gate(batch: object) -> None:
    from exchange.core import gate

    spec = datasets.get("population")
    gate.check(batch, node="vn.gov.mps.population", spec=spec,  # type: ignore[arg-type]
               verifier=_VERIFIER, limits=access.Limits(),
               ctx=datasets.RuleContext(today=_TODAY))


def _client_frame(data: bytes) -> None:
    feed = Feed(dataset="population", acked=-1, ack_timeout=30.0, granted=["identity"])
    feed.receive(data)
    feed.receive(data.decode("utf-8", "replace"))


def _config(data: bytes) -> None:
    text = data.decode("utf-8", "replace")
    config = access.parse_config(text, fmt="toml")
    access.check_config(config, groups={}, enrolled=set(), broker_id="vn.gov.ndc.broker")
    access.parse_config(text, fmt="json")


def _checkpoint(data: bytes) -> None:
    text = data.decode("utf-8", "replace")
    tlog.open_checkpoint(_NOTE_KEY, text, "fuzz.example/log")


def _subscribe_query(data: bytes) -> None:
    text = data.decode("utf-8", "replace")
    keys = ("name", "encoding", "paths", "start")
    parse_request(dict(zip(keys, text.split("&"), strict=False)))


def _csr(data: bytes) -> None:
    from exchange.pki import authority

    csr = authority._parse_csr(data)
    authority._csr_principal(csr)
    authority._kind(csr)


def _enrol_request(data: bytes) -> None:
    from exchange.pki import authority
    from exchange.pki.service import EnrolRequest, decode_body

    body = decode_body(EnrolRequest, data)

    authority.parse_token(body.token)
    for r in body.requests:
        authority._parse_csr(r.encode("ascii", "replace"))


def _agreement(data: bytes) -> None:
    from exchange.broker.agreements import NewRequest, decode
    from exchange.core.agreements import Decision

    for kind in (NewRequest, Decision):
        decode(kind, data)


def _seeds() -> dict[str, list[bytes]]:
    """Valid inputs to mutate, per target (a random byte string rarely gets past a parser)."""
    from exchange.core.seal import seal
    from exchange.sim.generate import Generator

    key = Ed25519PrivateKey.generate()
    ps = Generator(5, today=dt.date(2026, 11, 22)).population(2)
    batch = seal(key, "vn.gov.mps.population", datasets.get("population"),
                 [(p["id"], 1, p) for p in ps], b"\x05" * 32, time="2026-11-22T09:00:00Z")
    return {
        "batch_json": [msgspec.json.encode(batch)],
        "batch_msgpack": [msgspec.msgpack.encode(batch)],
        "client_frame": [b'{"type":"credit","n":100}', b'{"type":"ack","seq":5}'],
        "config": [b'[[datasets]]\nname = "population"\nowner = "vn.gov.mps.population"\n'],
        "checkpoint": [b"fuzz.example/log\n1\nAAAA\n\n\xe2\x80\x94 fuzz.example/log AAAA\n"],
        "subscribe_query": [b"live&json&auto&seq:5"],
        "csr": [b"-----BEGIN CERTIFICATE REQUEST-----\nMII\n-----END CERTIFICATE REQUEST-----\n"],
        "enrol_request": [b'{"token":"vnx1.a.b.c","requests":["x"]}'],
        "agreement": [b'{"action":"approve","signed":{}}'],
    }


SEEDS = _seeds()

TARGETS: dict[str, Callable[[bytes], None]] = {
    "batch_json": _batch_json,
    "batch_msgpack": _batch_msgpack,
    "client_frame": _client_frame,
    "config": _config,
    "checkpoint": _checkpoint,
    "subscribe_query": _subscribe_query,
    "csr": _csr,
    "enrol_request": _enrol_request,
    "agreement": _agreement,
}


def run(target: str, data: bytes) -> None:
    """Feed ``data`` to ``target``; only the exchange's own errors may come out."""
    with contextlib.suppress(ExchangeError):
        TARGETS[target](data)
