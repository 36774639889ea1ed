"""The broker's aiohttp application: routes, the authentication gate, problem+json errors.

``create_app(broker)`` builds the application over a ``Broker`` (config, PKI, store); ``serve``
in ``exchange.broker.server`` runs it over TLS 1.3 with client certificates.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import uuid
import weakref
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import msgspec
import structlog
from aiohttp import WSMsgType, web
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from exchange import audit, pki
from exchange.broker.access import AccessLog
from exchange.broker.agreements import AgreementBook, NewRequest
from exchange.broker.agreements import decode as book_decode
from exchange.broker.checkpoints import TlogService
from exchange.broker.checks import registry_groups
from exchange.broker.hub import Hub
from exchange.broker.metrics import QualityTracker, ops_registry
from exchange.broker.openapi import openapi
from exchange.broker.publish import Publisher
from exchange.broker.subscribe import Subscriptions
from exchange.clock import SYSTEM, Clock
from exchange.core import datasets, tlog
from exchange.core.access import BrokerConfig, Limits, Policy, parse_config
from exchange.core.agreements import Decision
from exchange.core.errors import (
    AuthError,
    Code,
    ExchangeError,
    Forbidden,
    InputError,
    InternalError,
    LimitExceeded,
    NotAllowed,
    NotFound,
    RateLimited,
    RequestTimeout,
    UnsupportedMediaType,
)
from exchange.core.feed import Feed
from exchange.core.ledger import StoredBody
from exchange.core.signing import Verifier, key_id
from exchange.core.wire import PROBLEM_CODE_HEADER, PublishReply
from exchange.store.base import AccessRow, Store

__all__ = ["BROKER", "Broker", "create_app"]

logger = structlog.get_logger("exchange.broker")
_json = msgspec.json.Encoder()
_msgpack = msgspec.msgpack.Encoder()
_stored_body = msgspec.msgpack.Decoder(StoredBody)
PROBLEM = "application/problem+json"
#: what a published batch may be sent as (JSON, or MessagePack for less to parse)
BATCH_TYPES = ("application/json", "application/msgpack", "application/x-msgpack")
#: every operator request, one JSON line each, in the broker's data directory
OPERATOR_LOG = "operator-actions.log"


class Broker:
    """Everything one broker process holds: config, access policy, keys, store, live state."""

    def __init__(self, config: BrokerConfig, store: Store, *, config_path: Path | None = None,
                 tls: pki.ServerTLS | None = None, clock: Clock = SYSTEM) -> None:
        self.config_path = config_path
        self.clock = clock
        self.store = store
        self.tls = tls
        self.pki_dir = Path(config.pki_dir)
        self.identity = pki.load_broker_identity(self.pki_dir)
        #: the exchange CA, read once: every certificate history is checked against it
        self.ca = x509.load_pem_x509_certificate(self.identity.ca_cert.read_bytes())
        self.hub = Hub()
        self.started = clock.time()
        #: open WebSockets per node, bounded by limits.max_connections_per_node
        self.sockets: Counter[str] = Counter()
        #: requests of each node or operator being served now
        self.requests: Counter[str] = Counter()
        #: every connection that made a request, by its client certificate's serial: a
        #: revocation closes them all (streams included), not only new handshakes
        self.peers: dict[int, weakref.WeakSet[asyncio.BaseTransport]] = {}
        #: the node each of those serials names (``/metrics``: connected nodes), and when each
        #: node was last served (a request's start and end, on the broker's clock)
        self.peer_nodes: dict[int, str] = {}
        self.last_seen: dict[str, float] = {}
        self.apply(config)
        # a new batch is signed with its node's current key; a rotated-out key is named
        self._registry_stamp: tuple[int, int, int] | None = None
        self.verifier = Verifier(self.current_key, history=self.retired_key, current_only=True)
        self.quality = (QualityTracker(store, owners=lambda: self.policy.owners,
                                       clock=clock.time)
                        if config.quality else None)
        self.publisher = Publisher(store=store, broker_id=self.identity.node_id,
                                   signing_key=self.identity.signing_key,
                                   verifier=self.verifier, limits=lambda: self.limits,
                                   on_append=self.hub.appended, quality=self.quality,
                                   clock=clock,
                                   schema_base=lambda: self.config.public_url or None)
        self.tlog = TlogService(
            store, tlog.NoteKey.from_private(self.log_origin, self.identity.signing_key),
            self.log_origin, config.checkpoint_interval_s, clock=clock)
        self.subscriptions = Subscriptions(store=store, hub=self.hub,
                                           policy=lambda: self.policy,
                                           limits=lambda: self.limits, quality=self.quality,
                                           clock=clock)
        self.access_log = AccessLog(store)
        self.book = AgreementBook(
            store=store, publisher=self.publisher, broker_id=self.identity.node_id,
            signing_key=self.identity.signing_key, clock=clock,
            owner=lambda d: self.policy.owners.get(d),
            keys=self.party_key,
            current=self.current_kid, changed=self.agreements_changed)
        #: what ``/metrics`` serves besides the quality tracker's: log, connections, PKI, process
        self.metrics = ops_registry(self)

    def apply(self, config: BrokerConfig) -> None:
        """Take ``config`` as the one in force: access policy, limits, signing keys, CRL, TLS
        context (what a reload does after reading the file).

        All or nothing: the config is checked first as ``serve`` checks it (``check_config``
        over the nodes the signing-key registry enrols); every problem is named in one
        ``InputError`` (``access.problems_of`` lists them), and a failure of any step leaves the
        state in force untouched."""
        groups = registry_groups()
        signing_keys = pki.load_signing_registry(self.pki_dir)
        revoked = pki.load_revoked(self.pki_dir)
        policy = Policy(config, groups, enrolled=signing_keys.keys(),
                        broker_id=self.identity.node_id)
        if self.tls is not None:
            self.tls.reload()  # the last step that can fail; new handshakes see the new CRL
        self.base_policy = policy
        book = getattr(self, "book", None)
        self.policy = policy.with_agreements(book.active()) if book is not None else policy
        self.config = config
        self.log_origin = config.log_origin or f"{self.identity.node_id}/log"
        self.limits: Limits = config.limits
        self.signing_keys = signing_keys
        self.revoked = revoked
        self.drop_revoked()
        subscriptions = getattr(self, "subscriptions", None)
        if subscriptions is not None:
            subscriptions.policy_changed()  # live subscriptions re-check their grant now

    def drop_revoked(self) -> int:
        """Close every open connection whose client certificate the CRL now lists: its
        publish and subscribe streams end at once, and its next handshake is refused. Returns
        how many were closed."""
        closed = 0
        for serial in [s for s in self.peers if s in self.revoked.serials]:
            for transport in list(self.peers.pop(serial)):
                if not transport.is_closing():
                    transport.close()
                    closed += 1
        if closed:
            logger.warning("revoked_connections_closed", connections=closed)
        return closed

    def agreements_changed(self) -> None:
        """The book changed: the policy takes its active agreements, and every live
        subscription re-checks its grant at once (a revocation closes it within the second)."""
        self.policy = self.base_policy.with_agreements(self.book.active())
        self.subscriptions.policy_changed()
        # offline audits check every signature in agreement entries: they need every key
        # (an operator's included) and each dataset's owner
        with contextlib.suppress(ExchangeError, OSError):
            self.write_trust()

    def write_trust(self) -> None:
        """Leave the public trust material beside the data for offline audits (the log key,
        every key certified so far, each dataset's owner)."""
        audit.write_trust(Path(self.config.data_dir), self.log_origin, self.tlog.key,
                          self.signing_keys, self.pki_dir, self.policy.owners)

    def _party_certs(self, role: str, who: str) -> list[pki.SigningCert]:
        try:
            return pki.certified_signing_keys(
                pki.signing_history(self.pki_dir, who, role=role), self.ca)
        except (ExchangeError, OSError, ValueError):
            return []

    def party_key(self, role: str, who: str, kid: str) -> Ed25519PublicKey | None:
        """A node's or operator's signing key by key id, from the CA's certificates (every one
        it was issued: an agreement signed before a rotation still verifies)."""
        return next((c.key for c in self._party_certs(role, who) if c.kid == kid), None)

    def current_kid(self, role: str, who: str) -> str | None:
        """The key id a new signature of this party must be made with: its last certificate,
        unless revoked."""
        certs = self._party_certs(role, who)
        if not certs or certs[-1].serial in self.revoked.serials:
            return None
        return certs[-1].kid

    def log_operator_action(self, operator: str, method: str, target: str, status: int) -> None:
        """One JSON line per operator request in ``<data_dir>/operator-actions.log`` (0600,
        appended): who asked what, when, and what the broker answered."""
        line = msgspec.json.encode({"time": self.clock.time(), "operator": operator,
                                    "method": method, "target": target, "status": status})
        try:
            fd = os.open(Path(self.config.data_dir) / OPERATOR_LOG,
                         os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            try:
                os.write(fd, line + b"\n")
            finally:
                os.close(fd)
        except OSError as err:
            logger.error("operator_log_unwritable", error=str(err))
        logger.info("operator_action", method=method, target=target, status=status)

    def current_key(self, node: str) -> Ed25519PublicKey | None:
        """The node's current signing key. The CA rewrites ``nodes.json`` whenever it certifies
        a key (a rotation included): one ``stat`` per batch notices, and the registry is read
        again, so a rotated-out key is refused from the moment the CA certified its successor,
        not from the next reload."""
        try:
            st = os.stat(self.pki_dir / "nodes.json")
            stamp = (st.st_ino, st.st_mtime_ns, st.st_size)
        except OSError:
            stamp = None
        if stamp != self._registry_stamp:
            try:
                self.signing_keys = pki.load_signing_registry(self.pki_dir)
                self._registry_stamp = stamp
                self.write_trust()  # offline audits check against every key so far
            except (ExchangeError, OSError) as err:  # a half-synced copy, a full disk
                logger.error("signing_registry_unreadable", error=str(err))
        return self.signing_keys.get(node)

    def retired_key(self, node: str, kid: str, time: str | None) -> Ed25519PublicKey | None:
        """A key ``node`` was certified for other than the one the broker holds as current:
        read from the CA's certificate history only when a batch names such a key (a
        refusal's path, or the first batch after a rotation; not the publish path). The last
        certificate issued is the node's current key: if the broker held another (the node
        rotated since the registry was loaded), it takes the new one now, before the batch is
        judged, and the audit trust file learns it."""
        certs = self._party_certs("node", node)
        if not certs:
            return None
        current = self.signing_keys.get(node)
        if current is None or key_id(current) != certs[-1].kid:
            self.signing_keys = {**self.signing_keys, node: certs[-1].key}
            logger.info("signing_key_rotated", node=node, kid=certs[-1].kid)
            with contextlib.suppress(ExchangeError, OSError):  # a full disk: audit later
                self.write_trust()
        return next((c.key for c in certs if c.kid == kid), None)

    def reload(self) -> None:
        """Re-read the config file, the signing-key registry, the CRL and the TLS material and
        ``apply`` them; keep the old state if anything fails, so a typo never takes the
        exchange down. A config that does not decode or check raises one ``InputError``
        naming every problem found."""
        config = load_config(self.config_path) if self.config_path is not None else self.config
        self.apply(config)
        logger.info("reloaded", datasets=len(config.datasets), agreements=len(config.agreements))


def load_config(path: Path) -> BrokerConfig:
    """The operator's file, decoded strictly (``parse_config``); an unreadable file is an
    ``InputError`` (``bad_config``) too, so every failure to load is one kind of error."""
    fmt = "json" if path.suffix == ".json" else "toml"
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as err:
        # the message names no path: whoever reports it names the file
        raise InputError(f"cannot read the file: {err.strerror or err}",
                         code=Code.BAD_CONFIG) from None
    except UnicodeDecodeError as err:
        raise InputError(f"not UTF-8 text: {err}", code=Code.BAD_CONFIG) from None
    config = parse_config(text, fmt=fmt)
    # relative paths in the file are relative to the file
    base = path.parent
    return msgspec.structs.replace(
        config,
        data_dir=str((base / config.data_dir).resolve()),
        pki_dir=str((base / config.pki_dir).resolve()))


BROKER = web.AppKey("broker", Broker)
NODE = web.RequestKey("node", str)
PRINCIPAL = web.RequestKey("principal", pki.Principal)


def problem_response(err: ExchangeError, request: web.Request) -> web.Response:
    return web.Response(body=_json.encode(err.problem(instance=request.path)),
                        status=err.status, content_type=PROBLEM,
                        headers={PROBLEM_CODE_HEADER: err.code})


@web.middleware
async def problem_middleware(request: web.Request,
                             handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
                             ) -> web.StreamResponse:
    """Every error leaves as RFC 9457 problem+json with a stable ``code``."""
    rid = request.headers.get("X-Request-Id") or uuid.uuid4().hex[:16]
    structlog.contextvars.bind_contextvars(request_id=rid, path=request.path,
                                           peer=request.remote)
    try:
        return await handler(request)
    except ExchangeError as err:
        logger.info("refused", code=err.code, status=err.status, detail=err.message)
        response = problem_response(err, request)
        if isinstance(err, RequestTimeout):
            response.force_close()  # nothing more is read from this connection
        return response
    except web.HTTPRequestEntityTooLarge as exc:
        return problem_response(LimitExceeded(f"body larger than {exc.text}",
                                              code=Code.BODY_TOO_LARGE), request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        http_err = {404: NotFound(exc.reason), 405: NotAllowed(exc.reason)}.get(exc.status)
        if http_err is None:
            http_err = ExchangeError(exc.reason, code=Code.HTTP_ERROR)
            http_err.status = exc.status
        response = problem_response(http_err, request)
        if isinstance(exc, web.HTTPMethodNotAllowed):
            # RFC 9110 §15.5.6: a 405 says which methods the resource has
            response.headers["Allow"] = ", ".join(sorted(exc.allowed_methods))
        return response
    except Exception:
        logger.exception("internal_error")
        return problem_response(InternalError("internal error; the request id is in the log",
                                              code=Code.INTERNAL_ERROR), request)
    finally:
        structlog.contextvars.clear_contextvars()


@web.middleware
async def auth_middleware(request: web.Request,
                          handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
                          ) -> web.StreamResponse:
    """Who is calling: a node or an operator, named by the client certificate; refused if the
    certificate is revoked. Every operator request is logged with the operator's name."""
    broker = request.app[BROKER]
    ssl_object = request.transport.get_extra_info("ssl_object") if request.transport else None
    der = ssl_object.getpeercert(binary_form=True) if ssl_object is not None else None
    if not der:
        raise AuthError("a client certificate from the exchange CA is required",
                        code=Code.NO_CERTIFICATE)
    try:
        cert = x509.load_der_x509_certificate(der)
    except ValueError:
        raise AuthError("peer certificate does not parse", code=Code.BAD_CERTIFICATE) from None
    who = pki.principal_from_cert(cert)
    if cert.serial_number in broker.revoked.serials or (
            who.role == "node" and who.id in broker.revoked.node_ids):
        raise AuthError(f"the certificate of {who.role} {who.id} is revoked",
                        code=Code.REVOKED)
    request[PRINCIPAL] = who
    if broker.requests[who.id] >= broker.limits.max_requests_per_node:
        raise RateLimited(f"{who.id} has {broker.requests[who.id]} requests in progress; the "
                          f"limit is {broker.limits.max_requests_per_node}",
                          code=Code.TOO_MANY_REQUESTS)
    broker.requests[who.id] += 1
    try:
        return await _serve_principal(request, handler, broker, who, cert.serial_number)
    finally:
        broker.requests[who.id] -= 1


async def _serve_principal(request: web.Request,
                           handler: Callable[[web.Request], Awaitable[web.StreamResponse]],
                           broker: Broker, who: pki.Principal, serial: int
                           ) -> web.StreamResponse:
    if request.transport is not None:
        broker.peers.setdefault(serial, weakref.WeakSet()).add(request.transport)
    if who.role == "node":
        request[NODE] = who.id
        structlog.contextvars.bind_contextvars(node=who.id)
        broker.peer_nodes[serial] = who.id
        broker.last_seen[who.id] = broker.clock.time()
        try:
            return await handler(request)
        finally:  # a subscription's stream ends here: the node was there until then
            broker.last_seen[who.id] = broker.clock.time()
    structlog.contextvars.bind_contextvars(operator=who.id)
    status = 500
    try:
        response = await handler(request)
        status = response.status
        return response
    except ExchangeError as err:
        status = err.status
        raise
    finally:
        broker.log_operator_action(who.id, request.method, request.path_qs, status)


def _node(request: web.Request) -> str:
    """The calling node; an operator is refused: operators watch, they neither publish nor
    subscribe."""
    who = request[PRINCIPAL]
    if who.role != "node":
        raise Forbidden(f"operator {who.id} is not a node: publishing and subscribing take a "
                        "node's certificate", code=Code.NOT_A_NODE)
    return who.id


def _operator(request: web.Request, what: str) -> str:
    """The calling operator; a node is refused (it sees only what concerns it)."""
    who = request[PRINCIPAL]
    if who.role != "operator":
        raise Forbidden(f"{what} is for operators; node {who.id} sees only what concerns it",
                        code=Code.OPERATOR_ONLY)
    return who.id


def _ok(body: Any, status: int = 200) -> web.Response:
    return web.Response(body=_json.encode(body), status=status, content_type="application/json")


async def healthz(request: web.Request) -> web.Response:
    broker = request.app[BROKER]
    out = {"status": "ok", "broker": broker.identity.node_id,
           "head": await broker.store.head(), "uptime_s": round(broker.clock.time() -
                                                                broker.started, 3),
           # which store, and what a NATS client knows of its cluster without asking it
           "store": getattr(broker.store, "kind", "unknown")}
    health = getattr(broker.store, "health", None)
    if health is not None:
        out["cluster"] = health()
    return _ok(out)


@functools.cache
def _openapi_body() -> bytes:
    return _json.encode(openapi())


async def openapi_document(request: web.Request) -> web.Response:
    """The OpenAPI 3.1 description of this API (``exchange.broker.openapi``; committed as
    ``docs/openapi.json``). Behind a client certificate like every route: the TLS handshake
    asks every connection for one, and the committed copy is the public one."""
    return web.Response(body=_openapi_body(), content_type="application/json")


def public_url(request: web.Request) -> str:
    """The exchange's public base URL: the configured one, else the origin this request came
    to (what the client can reach)."""
    return request.app[BROKER].config.public_url or f"https://{request.host}"


async def list_datasets(request: web.Request) -> web.Response:
    broker = request.app[BROKER]
    out = []
    base = public_url(request)
    for d in broker.config.datasets:
        spec = datasets.get(d.name)
        out.append({"name": d.name, "owner": d.owner, "version": spec.version,
                    "versions": [s.version for s in datasets.versions(d.name)],
                    "type": spec.type, "dataschema": spec.dataschema_uri(base),
                    "groups": {g: list(f) for g, f in spec.groups.items()},
                    "head": await broker.store.head(d.name)})
    return _ok(out)


async def list_schemas(request: web.Request) -> web.Response:
    base = public_url(request)
    return _ok([{"dataset": n, "versions": sorted(datasets.REGISTRY[n]),
                 "compatibility": datasets.get(n).compatibility,
                 "latest": datasets.get(n).dataschema_uri(base)} for n in datasets.names()])


async def schema_versions(request: web.Request) -> web.Response:
    """Every version of one dataset's schema: immutable once published, each with the digest
    of its JSON Schema as served, the groups it added and the mode it was checked under."""
    name = request.match_info["dataset"]
    return _ok(datasets.version_history(name, public_url(request)))


async def get_schema(request: web.Request) -> web.Response:
    version = request.match_info.get("version")
    try:
        v = int(version) if version else None
    except ValueError:
        raise NotFound(f"schema version {version!r} is not a number",
                       code=Code.UNKNOWN_SCHEMA_VERSION) from None
    spec = datasets.get(request.match_info["dataset"], v)
    # the committed form, byte for byte: its SHA-256 is the one /versions lists
    body = datasets.schema_text(spec).encode()
    headers = {"ETag": f'"{datasets.schema_digest(spec)}"'}
    if version:  # a published version never changes
        headers["Cache-Control"] = "public, max-age=31536000, immutable"
    return web.Response(body=body, content_type="application/schema+json", headers=headers)


async def post_records(request: web.Request) -> web.Response:
    broker = request.app[BROKER]
    node, dataset = _node(request), request.match_info["dataset"]
    structlog.contextvars.bind_contextvars(dataset=dataset)
    broker.policy.check_publish(node, dataset)
    if request.content_type not in BATCH_TYPES:
        raise UnsupportedMediaType(f"a batch is {' or '.join(BATCH_TYPES)}, not "
                                   f"{request.content_type or 'untyped'}",
                                   code=Code.UNSUPPORTED_MEDIA_TYPE)
    declared = request.content_length
    if declared is not None and declared > broker.limits.max_body_bytes:
        # refused on the declaration, before a byte is read or waited for
        raise LimitExceeded(f"body of {declared} bytes; the limit is "
                            f"{broker.limits.max_body_bytes}", code=Code.BODY_TOO_LARGE)
    body = await _read_body(request, broker)
    outcome = await broker.publisher.publish(node, dataset, body, request.content_type)
    logger.info("published", accepted=outcome.receipt.receipt.accepted,
             duplicates=len(outcome.receipt.receipt.duplicates),
             rejected=len(outcome.receipt.receipt.rejected), last_seq=outcome.last_seq)
    if outcome.problem is not None:
        # like every other problem reply, name the resource it is about (RFC 9457 §3.1.5)
        outcome.problem.setdefault("instance", request.path)
        return web.Response(body=_json.encode(outcome.problem), status=outcome.status,
                            content_type=PROBLEM,
                            headers={PROBLEM_CODE_HEADER: outcome.problem["code"]})
    return _ok(outcome.receipt)


async def _read_body(request: web.Request, broker: Broker) -> bytes:
    """The whole body, within ``limits.body_timeout_s`` on the broker's clock; a body that
    trickles in slower is refused (408) and its connection closed."""
    clock = broker.clock
    reading = asyncio.ensure_future(request.read())
    deadline = asyncio.ensure_future(
        clock.sleep_until(clock.monotonic() + broker.limits.body_timeout_s))
    try:
        await asyncio.wait({reading, deadline}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        deadline.cancel()
    if not reading.done():
        reading.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await reading
        raise RequestTimeout(f"the body did not arrive within {broker.limits.body_timeout_s} s",
                             code=Code.BODY_TOO_SLOW)
    return reading.result()


@contextlib.contextmanager
def _socket_slot(broker: Broker, node: str) -> Iterator[None]:
    """One of the node's bounded WebSocket slots, for as long as the socket is open."""
    if broker.sockets[node] >= broker.limits.max_connections_per_node:
        raise RateLimited(f"{node} has {broker.sockets[node]} WebSockets open; the limit is "
                          f"{broker.limits.max_connections_per_node}",
                          code=Code.TOO_MANY_CONNECTIONS)
    broker.sockets[node] += 1
    try:
        yield
    finally:
        broker.sockets[node] -= 1


async def publish_ws(request: web.Request) -> web.StreamResponse:
    """A stream of batches on one WebSocket; one ``PublishReply`` per batch, in order."""
    broker = request.app[BROKER]
    node, dataset = _node(request), request.match_info["dataset"]
    broker.policy.check_publish(node, dataset)
    with _socket_slot(broker, node):
        return await _publish_stream(request, broker, node, dataset)


#: batches a publish WebSocket may have in flight before the broker stops reading it
PUBLISH_WINDOW = 64


async def _publish_stream(request: web.Request, broker: Broker, node: str, dataset: str
                          ) -> web.StreamResponse:
    """Batches are checked as they arrive and decided in arrival order by the one writer (and
    committed together where the store groups them); replies go back in the same order. At
    most ``PUBLISH_WINDOW`` are in flight: past that the broker stops reading the socket."""
    limits = broker.limits
    ws = web.WebSocketResponse(heartbeat=limits.idle_timeout_s / 2,
                               max_msg_size=limits.max_body_bytes)
    await ws.prepare(request)
    replies: asyncio.Queue[tuple[asyncio.Task[PublishReply], bool] | None] = asyncio.Queue(
        maxsize=PUBLISH_WINDOW)

    async def one(body: bytes, binary: bool) -> PublishReply:
        try:
            broker.policy.check_publish(node, dataset)  # an agreement may change mid-stream
            outcome = await broker.publisher.publish(
                node, dataset, body, "application/msgpack" if binary else "application/json")
            return PublishReply(receipt=outcome.receipt, problem=outcome.problem)
        except ExchangeError as err:
            return PublishReply(problem=err.problem(instance=request.path))
        except Exception:
            logger.exception("internal_error")
            return PublishReply(problem=InternalError(
                "internal error; the request id is in the log",
                code=Code.INTERNAL_ERROR).problem(instance=request.path))

    async def send_in_order() -> None:
        while (item := await replies.get()) is not None:
            task, binary = item
            reply = await task
            if ws.closed:
                continue
            if binary:
                await ws.send_bytes(_msgpack.encode(reply))
            else:
                await ws.send_str(_json.encode(reply).decode())

    sender = asyncio.create_task(send_in_order())
    try:
        async for msg in ws:
            if msg.type not in (WSMsgType.TEXT, WSMsgType.BINARY):
                continue
            binary = msg.type == WSMsgType.BINARY
            body = msg.data if binary else msg.data.encode()
            await replies.put((asyncio.create_task(one(body, binary)), binary))
    finally:
        await replies.put(None)
        with contextlib.suppress(ConnectionError, RuntimeError):
            await sender
    return ws


async def subscribe_ws(request: web.Request) -> web.StreamResponse:
    broker = request.app[BROKER]
    structlog.contextvars.bind_contextvars(dataset=request.match_info["dataset"])
    node = _node(request)
    with _socket_slot(broker, node):
        return await broker.subscriptions.handle(request, node)


async def list_subscriptions(request: web.Request) -> web.Response:
    """Durable subscriptions with their lag: a node's own; every one for an operator."""
    broker = request.app[BROKER]
    who = request[PRINCIPAL]
    out = []
    for row in await _lags(broker, None if who.role == "operator" else who.id):
        # a connected subscription's own state on this broker: credit it holds, records sent
        # and not yet acked, records sent again after an ack timeout (null: not connected here)
        feed = broker.subscriptions.live.get((row["node"], row["dataset"], row["name"]))
        out.append({**row, "head": await broker.store.head(row["dataset"]),
                    "connected": feed is not None,
                    "credits": feed.state.credits if feed else None,
                    "in_flight": len(feed.state.inflight) if feed else None,
                    "redeliveries": feed.state.redeliveries if feed else None})
    return _ok(out)


async def dead_letters(request: web.Request) -> web.Response:
    """The caller's refused records, oldest first; page with ``after`` = the last id seen. An
    operator names the node (``?node=``)."""
    broker = request.app[BROKER]
    who = request[PRINCIPAL]
    node = who.id
    if who.role == "operator":
        node = request.query.get("node", "")
        if not node:
            raise InputError("an operator names the node: ?node=<node id>", code=Code.BAD_QUERY)
        try:
            pki.validate_node_id(node)
        except ExchangeError:  # a typo would list nothing, as if the node had no dead letters
            raise InputError(f"node {node!r} is not a node id", code=Code.BAD_QUERY) from None
    elif "node" in request.query and request.query["node"] != who.id:
        _operator(request, "another node's dead letters")
    try:
        after = int(request.query.get("after", "0"))
        limit = max(1, min(int(request.query.get("limit", "100")), 1000))
    except ValueError:
        raise InputError("after and limit must be integers", code=Code.BAD_QUERY) from None
    if not 0 <= after <= MAX_QUERY_INT:
        raise InputError(f"after must be in 0..{MAX_QUERY_INT}", code=Code.BAD_QUERY)
    rows = await broker.store.dead_letters(node, after, limit)
    return _ok([{**msgspec.to_builtins(d, builtin_types=(bytes,)),
                 "record": d.record.decode("utf-8", "replace")} for d in rows])


async def node_certificate(request: web.Request) -> web.Response:
    """A node's current signing certificate (PEM), for subscribers to check against the
    exchange CA themselves: the broker serves it, but cannot forge it."""
    broker = request.app[BROKER]
    node = request.match_info["node"]
    try:
        pki.validate_node_id(node)
        path = broker.pki_dir / "nodes" / node / "signing.crt"
        if node == broker.identity.node_id:
            path = broker.identity.signing_cert
        return web.Response(body=Path(path).read_bytes(),
                            content_type="application/pem-certificate-chain")
    except (OSError, ExchangeError):
        raise NotFound(f"no signing certificate for {node!r}", code=Code.UNKNOWN_NODE) from None


async def node_certificates(request: web.Request) -> web.Response:
    """Every signing certificate a node was ever issued (PEM bundle, in the order issued, the
    current one last): records
    signed before a key rotation verify against the certificate of their statement's key id."""
    broker = request.app[BROKER]
    node = request.match_info["node"]
    try:
        pki.validate_node_id(node)
        if node == broker.identity.node_id:
            body = broker.identity.signing_cert.read_bytes()
        else:
            body = pki.signing_history(broker.pki_dir, node)
    except (OSError, ExchangeError):
        body = b""
    if not body:
        raise NotFound(f"no signing certificate for {node!r}", code=Code.UNKNOWN_NODE)
    return web.Response(body=body, content_type="application/pem-certificate-chain")


#: the largest integer a query may carry: what a store's seq can hold (sqlite's INTEGER)
MAX_QUERY_INT = 2**63 - 1


def _ints(request: web.Request, *names: str) -> list[int]:
    try:
        values = [int(request.query[n]) for n in names]
    except KeyError as err:
        raise InputError(f"query parameter {err.args[0]!r} is required",
                         code=Code.BAD_QUERY) from None
    except ValueError:
        raise InputError(f"{', '.join(names)} must be integers", code=Code.BAD_QUERY) from None
    if not all(-MAX_QUERY_INT <= v <= MAX_QUERY_INT for v in values):
        raise InputError(f"{', '.join(names)} out of range", code=Code.BAD_QUERY)
    return values


async def log_checkpoint(request: web.Request) -> web.Response:
    """The latest signed checkpoint (C2SP tlog-checkpoint in a signed note), as text."""
    cp = await request.app[BROKER].tlog.served()
    return web.Response(text=cp.note, content_type="text/plain")


async def log_key(request: web.Request) -> web.Response:
    """The checkpoint verifier key (signed-note vkey). Trust it via the broker's signing
    certificate (GET /v1/nodes/<broker>/certificate), not because this endpoint says so."""
    broker = request.app[BROKER]
    return _ok({"origin": broker.log_origin, "vkey": broker.tlog.key.vkey,
                "broker": broker.identity.node_id})


async def log_inclusion(request: web.Request) -> web.Response:
    seq, size = _ints(request, "seq", "size")
    proof = await request.app[BROKER].tlog.inclusion(seq, size)
    return _ok({"seq": seq, "size": size, "proof": proof})


async def log_consistency(request: web.Request) -> web.Response:
    old, new = _ints(request, "from", "to")
    proof = await request.app[BROKER].tlog.consistency(old, new)
    return _ok({"from": old, "to": new, "proof": proof})


async def log_entries(request: web.Request) -> web.Response:
    start, end = _ints(request, "start", "end")
    return _ok(await request.app[BROKER].tlog.entries(start, end))


async def lookup(request: web.Request) -> web.Response:
    """The current version of one record, under the caller's agreement: projected to its
    granted groups and framed exactly as a subscription delivers it (publisher signature,
    batch, audit path), so the SDK verifies it the same way, and its seq for an inclusion
    proof against a checkpoint. A lookup is an access like a delivery: it is recorded."""
    broker = request.app[BROKER]
    node, dataset = _node(request), request.match_info["dataset"]
    key = request.match_info["key"]
    agreement, granted = broker.policy.check_subscribe(node, dataset, broker.clock.utcnow())
    current = (await broker.store.current(dataset, [key])).get(key)
    if current is None:
        raise NotFound(f"{dataset} has no record {key!r}", code=Code.UNKNOWN_RECORD)
    rows = await broker.store.read(dataset, current.seq - 1, 1)
    if not rows or rows[0].seq != current.seq:
        raise NotFound(f"{dataset} has no record {key!r}", code=Code.UNKNOWN_RECORD)
    row = rows[0]
    feed = Feed(dataset=dataset, acked=row.seq - 1, ack_timeout=broker.limits.ack_timeout_s,
                granted=granted, min_completeness=agreement.min_completeness,
                always_paths=True, cache=broker.subscriptions.cache)
    feed.state.grant(1)
    feed.wants()
    fetched = await broker.store.batches([row.batch_id])
    frame = feed.frame([row], fetched, head=broker.hub.heads.get(dataset, row.seq),
                       now=broker.clock.monotonic())
    if frame is None:
        raise NotFound(f"{dataset} record {key!r} is below the agreement's completeness",
                       code=Code.UNKNOWN_RECORD)
    if agreement.id:
        await broker.access_log.record(AccessRow(
            dataset=dataset, node=node, name="", kind="lookup", agreement=agreement.id,
            purpose=agreement.purpose, groups=tuple(granted), first_seq=row.seq,
            last_seq=row.seq, at=broker.clock.time(),
            min_completeness=agreement.min_completeness))
    body = b'{"seq":%d,"version":%d,"frame":' % (row.seq, row.version) + frame.data + b"}"
    return web.Response(body=body, content_type="application/json")


async def get_access(request: web.Request) -> web.Response:
    """Who received one record: every version of it, and for each the agencies that were
    delivered it or looked it up, when, under which agreement and purpose, with which groups.
    The dataset's owner or an operator asks (Decree 13/2023/NĐ-CP Art. 9: the person's right to
    know who processed their data)."""
    broker = request.app[BROKER]
    who = request[PRINCIPAL]
    try:
        dataset, key = request.query["dataset"], request.query["key"]
    except KeyError as err:
        raise InputError(f"query parameter {err.args[0]!r} is required",
                         code=Code.BAD_QUERY) from None
    owner = broker.policy.owners.get(dataset)
    if owner is None:
        raise NotFound(f"dataset {dataset!r} is not served here", code=Code.UNKNOWN_DATASET)
    if who.role != "operator" and who.id != owner:
        raise Forbidden(f"who received a {dataset} record is for its owner ({owner}) or an "
                        "operator to ask", code=Code.OPERATOR_ONLY)
    versions = await broker.store.versions(dataset, key)
    rows = await broker.store.access(dataset, [v.seq for v in versions])
    out = []
    for v in versions:
        completeness = _stored_body.decode(v.body).completeness
        out.append({
            "version": v.version, "seq": v.seq, "accepted_at": v.accepted_at,
            "received_by": [
                {"node": r.node, "kind": r.kind, "subscription": r.name or None,
                 "agreement": r.agreement, "purpose": r.purpose, "groups": list(r.groups),
                 "at": r.at}
                for r in rows if r.first_seq <= v.seq <= r.last_seq
                and completeness >= r.min_completeness]})
    return _ok({"dataset": dataset, "key": key, "versions": out})


#: what ``?state=`` may ask for: the stored states and ``expired`` (derived from the time)
AGREEMENT_STATES = ("requested", "approved", "active", "rejected", "revoked", "expired")


async def list_agreements(request: web.Request) -> web.Response:
    """The agreements the caller may see (a node: those it asked for or whose dataset it owns;
    an operator: all), newest first; ``?state=`` and ``?dataset=`` narrow the list."""
    broker = request.app[BROKER]
    who = request[PRINCIPAL]
    now = broker.clock.utcnow()
    state, dataset = request.query.get("state"), request.query.get("dataset")
    if state is not None and state not in AGREEMENT_STATES:
        # a typo would otherwise list nothing, as if there were no such agreements
        raise InputError(f"state must be one of {', '.join(AGREEMENT_STATES)}",
                         code=Code.BAD_QUERY)
    out = [broker.book.view(e, now) for e in broker.book.visible(who.role, who.id)]
    out = [v for v in out if (state is None or v["state"] == state)
           and (dataset is None or v["request"]["dataset"] == dataset)]
    out.sort(key=lambda v: -v["seq"])
    return _ok(out)


async def _visible_entry(request: web.Request) -> Any:
    broker = request.app[BROKER]
    who = request[PRINCIPAL]
    entry = await broker.book.fresh(request.match_info["id"])
    if entry not in broker.book.visible(who.role, who.id):
        raise NotFound(f"no agreement {request.match_info['id']!r}",
                       code=Code.UNKNOWN_AGREEMENT)
    return entry


async def get_agreement(request: web.Request) -> web.Response:
    return _ok(request.app[BROKER].book.view(await _visible_entry(request)))


async def post_agreement(request: web.Request) -> web.Response:
    """A subscriber's signed request (``NewRequest``); 201 with the stored agreement."""
    broker = request.app[BROKER]
    node = _node(request)
    body = book_decode(NewRequest, await _read_body(request, broker))
    entry = await broker.book.request(node, body)
    return _ok(broker.book.view(entry), status=201)


async def post_decision(request: web.Request) -> web.Response:
    """The owner's (approve, reject, revoke) or an operator's (countersign, revoke) signed
    decision on an agreement the caller can see."""
    broker = request.app[BROKER]
    who = request[PRINCIPAL]
    await _visible_entry(request)
    decision = book_decode(Decision, await _read_body(request, broker))
    entry = await broker.book.decide(who.role, who.id, request.match_info["id"], decision)
    return _ok(broker.book.view(entry))


async def get_catalog(request: web.Request) -> web.Response:
    """The catalogue: per dataset served here, what a would-be subscriber reads before asking
    (DCAT terms where they fit), with its live quality and how many agreements read it."""
    broker = request.app[BROKER]
    only = request.match_info.get("dataset")
    now = broker.clock.utcnow()
    scores: dict[str, Any] = {}
    if broker.quality is not None:
        report = await broker.quality.report(only)
        scores = {name: entry["scores"] for name, entry in report.items()}
    out = []
    for d in broker.config.datasets:
        if only is not None and d.name != only:
            continue
        spec = datasets.get(d.name)
        cat = spec.catalogue
        agreements_on = broker.policy.agreements_on(d.name)
        out.append({
            "identifier": d.name,
            "title": {"vi": cat.title_vi, "en": cat.title_en} if cat else d.name,
            "description": ({"vi": cat.description_vi, "en": cat.description_en} if cat
                            else spec.description),
            "publisher": d.owner,
            "theme": cat.theme if cat else "",
            "legal_basis": cat.legal_basis if cat else "",
            "classification": cat.classification if cat else "other",
            "category": cat.category if cat else "",
            "accrualPeriodicity": f"PT{spec.update_interval_s}S",
            "conformsTo": [s.dataschema_uri(public_url(request))
                           for s in datasets.versions(d.name)],
            # the latest schema version; an agreement names the one its subscriber reads
            "version": spec.version,
            "type": spec.type,
            "record": spec.description,
            # the key is the envelope's subject: every subscriber sees it, whatever it is granted
            "key": {"fields": list(cat.key_fields) if cat else [], "always_disclosed": True},
            "distributions": {g: list(f) for g, f in spec.groups.items()},
            "countersignature_required": bool(cat and cat.classification in
                                              ("core", "important")),
            "quality": scores.get(d.name),
            "agreements": {"live": sum(1 for a in agreements_on if a.live(now)),
                           "signed": sum(1 for a in agreements_on
                                         if a.id.startswith("agr-") and a.live(now)),
                           "config": sum(1 for a in agreements_on
                                         if a.id.startswith("config:") and a.live(now))},
        })
    if only is not None and not out:
        raise NotFound(f"dataset {only!r} is not served here", code=Code.UNKNOWN_DATASET)
    return _ok(out[0] if only is not None else out)


def _tracker(broker: Broker) -> QualityTracker:
    if broker.quality is None:
        raise NotFound("quality scoring is switched off in this broker's config",
                       code=Code.QUALITY_OFF)
    return broker.quality


async def get_quality(request: web.Request) -> web.Response:
    """Correct, sufficient, clean, live: scores per dataset and publisher, with their counters,
    unresolved references and per-subscriber latency (definitions in exchange.quality).

    The whole exchange's view is an operator's; a node reads the report of a dataset it owns
    (its own records, and who reads them), nothing else."""
    broker = request.app[BROKER]
    dataset = request.match_info.get("dataset")
    if dataset is not None:
        datasets.get(dataset)
    who = request[PRINCIPAL]
    if who.role != "operator" and (dataset is None or broker.policy.owners.get(dataset)
                                   != who.id):
        _operator(request, "the quality of datasets a node does not own")
    report = await _tracker(broker).report(dataset, request.match_info.get("publisher"))
    lags = await _lags(broker)
    for name, entry in report.items():
        entry["subscriptions"] = [lag for lag in lags if lag["dataset"] == name]
    return _ok({"datasets": report})


async def _lags(broker: Broker, node: str | None = None) -> list[dict[str, Any]]:
    """Every subscription's lag in records and in seconds (age of its oldest unacked record);
    ``node``'s alone if named."""
    out = []
    now = broker.clock.time()
    for row in await broker.store.subscriptions():
        if node is not None and row.node != node:
            continue
        behind = await broker.store.read(row.dataset, row.acked, 1)
        out.append({"node": row.node, "dataset": row.dataset, "name": row.name,
                    "acked": row.acked,
                    "lag": await broker.store.count_after(row.dataset, row.acked),
                    "lag_s": round(max(0.0, now - behind[0].accepted_at), 3) if behind else 0.0})
    return out


async def metrics(request: web.Request) -> web.Response:
    """Prometheus text format (prometheus-client's own encoder): operators only (a scraper gets
    an operator certificate of its own), as it names every subscription and its lag. The
    quality tracker's families, then the operational ones (``ops_registry``), all read now.
    With quality scoring switched off, the operational ones alone: what operators alert on
    (log, checkpoints, certificates, connections, process) does not depend on scoring."""
    _operator(request, "/metrics")
    broker = request.app[BROKER]
    body = b""
    tracker = broker.quality
    if tracker is not None:
        tracker.lag = {(lag["dataset"], lag["node"], lag["name"]): (lag["lag"], lag["lag_s"])
                       for lag in await _lags(broker)}
        tracker.scraped = await tracker.totals()
        body = generate_latest(tracker.registry)
    body += generate_latest(broker.metrics)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


def create_app(broker: Broker) -> web.Application:
    app = web.Application(middlewares=[problem_middleware, auth_middleware],
                          client_max_size=broker.limits.max_body_bytes)
    app[BROKER] = broker

    async def store_ctx(app: web.Application) -> AsyncIterator[None]:
        await broker.store.open()
        broker.write_trust()
        if broker.quality is not None:
            await broker.quality.load()
        for d in broker.config.datasets:
            broker.hub.heads[d.name] = await broker.store.head(d.name)
        yield
        if broker.quality is not None:
            await broker.quality.flush()
        await broker.store.close()

    async def book_ctx(app: web.Application) -> AsyncIterator[None]:
        """The agreement book follows the store: at start, and whenever the agreement
        dataset grows (another broker's transition, over NATS, included)."""
        async def follow() -> None:
            while True:
                grown = broker.hub.event("agreement")
                try:
                    await broker.book.refresh()
                except Exception as err:  # never let the book stop following the store
                    logger.error("agreements_unreadable", error=repr(err))
                    await broker.clock.sleep_until(broker.clock.monotonic() + 1.0)
                    continue
                await grown.wait()

        await broker.book.refresh()
        task = asyncio.create_task(follow())
        yield
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    async def log_ctx(app: web.Application) -> AsyncIterator[None]:
        async for _ in broker.tlog.run():
            yield

    app.cleanup_ctx.append(store_ctx)
    app.cleanup_ctx.append(book_ctx)
    app.cleanup_ctx.append(log_ctx)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/v1/openapi.json", openapi_document)
    app.router.add_get("/v1/datasets", list_datasets)
    app.router.add_get("/v1/schemas", list_schemas)
    app.router.add_get("/v1/schemas/{dataset}", get_schema)
    app.router.add_get("/v1/schemas/{dataset}/versions", schema_versions)
    app.router.add_get("/v1/schemas/{dataset}/{version}", get_schema)
    app.router.add_post("/v1/datasets/{dataset}/records", post_records)
    app.router.add_get("/v1/datasets/{dataset}/publish", publish_ws)
    app.router.add_get("/v1/datasets/{dataset}/subscribe", subscribe_ws)
    app.router.add_get("/v1/subscriptions", list_subscriptions)
    app.router.add_get("/v1/dead-letters", dead_letters)
    app.router.add_get("/v1/nodes/{node}/certificate", node_certificate)
    app.router.add_get("/v1/nodes/{node}/certificates", node_certificates)
    app.router.add_get("/v1/quality", get_quality)
    app.router.add_get("/v1/quality/{dataset}", get_quality)
    app.router.add_get("/v1/quality/{dataset}/{publisher}", get_quality)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/v1/catalog", get_catalog)
    app.router.add_get("/v1/catalog/{dataset}", get_catalog)
    app.router.add_get("/v1/datasets/{dataset}/records/{key}", lookup)
    app.router.add_get("/v1/access", get_access)
    app.router.add_get("/v1/agreements", list_agreements)
    app.router.add_post("/v1/agreements", post_agreement)
    app.router.add_get("/v1/agreements/{id}", get_agreement)
    app.router.add_post("/v1/agreements/{id}/decisions", post_decision)
    app.router.add_get("/v1/log/checkpoint", log_checkpoint)
    app.router.add_get("/v1/log/key", log_key)
    app.router.add_get("/v1/log/proof/inclusion", log_inclusion)
    app.router.add_get("/v1/log/proof/consistency", log_consistency)
    app.router.add_get("/v1/log/entries", log_entries)
    return app

