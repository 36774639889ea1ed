"""The console's local web server: polls the broker as the operator, serves the page to one
browser on the operator's machine, pushes snapshots over Server-Sent Events.

``create_app(console)`` builds the aiohttp application over a ``Console`` (the operator's SDK
``Node``, the ``Model``, the sessions); ``serve`` runs it on a loopback address. The security
model is in the package docstring (``exchange.console``).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hmac
import ipaddress
import math
import os
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterator
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import msgspec
import structlog
from aiohttp import web
from cryptography import x509

from exchange import pki
from exchange.clock import SYSTEM, Clock
from exchange.console.model import OPERATOR_ACTIONS, CheckpointSeen, Model, Sample
from exchange.core import tlog
from exchange.core.agreements import Action
from exchange.core.errors import (
    Code,
    ConflictError,
    ExchangeError,
    InputError,
    IntegrityError,
    UnavailableError,
)
from exchange.node import Node, NodeConfig

__all__ = ["BASELINE_FILE", "CONSOLE", "COOKIE", "SESSION_HEADER", "Console", "create_app",
           "parse_listen", "parse_origin", "serve"]

logger = structlog.get_logger("exchange.console")
_json = msgspec.json.Encoder()

#: the session cookie: HttpOnly (no script reads it), SameSite=Strict (no other site's page
#: sends it), Path=/ ; Secure only behind an https ``public_origin`` (on loopback the console
#: is plain HTTP). It is never enough alone: browsers send a cookie for 127.0.0.1 to every
#: port of it (RFC 6265 §8.5: "cookies do not provide isolation by port"), so any other local
#: service the operator's browser visits receives it.
COOKIE = "exchange_console"
#: every /api request carries the session's secret in this header. The page got the secret in
#: the URL fragment of the redirect after the one-time token (a fragment never travels to a
#: server) and keeps it in sessionStorage, which is per origin, port included. A form or link
#: of another site cannot set a header, so the secret is the CSRF token too.
SESSION_HEADER = "X-Console-Session"
#: EventSource cannot set a header: /events takes a ticket from POST /api/ticket instead,
#: good once and for this many seconds (it does land in the URL, and so in access logs)
TICKET_TTL_S = 30.0
#: the signed checkpoint the next consistency check starts from, in the operator's directory
BASELINE_FILE = "console-checkpoint.txt"
#: the static files shipped in the package, by URL name (nothing else is served from disk)
STATIC = {"console.css": "text/css", "console.js": "text/javascript"}
#: CSP 3: only this origin's own script and style, no inline script, never framed
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; script-src 'self'; style-src 'self'; "
                               "img-src 'self' data:; connect-src 'self'; object-src 'none'; "
                               "base-uri 'none'; form-action 'self'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Resource-Policy": "same-origin",
}
#: how often the nodes' certificates are fetched again for their expiry (seconds)
CERT_REFRESH_S = 300.0


class Console:
    """What one console process holds: the operator's connection to the broker, the view
    model, the one-time token and the browser sessions."""

    def __init__(self, config: NodeConfig, *, interval_s: float = 1.0, step_s: float = 10.0,
                 history_s: float = 3600.0, clock: Clock = SYSTEM,
                 token: str | None = None, public_origin: str | None = None,
                 baseline_path: Path | None = None, snapshot_wait_s: float = 10.0) -> None:
        if not (math.isfinite(interval_s) and interval_s > 0):
            raise InputError(f"the poll interval must be a positive number of seconds, not "
                             f"{interval_s}", code=Code.BAD_CONFIG)
        self.config = config
        self.node = Node(config)
        self.clock = clock
        self.interval_s = interval_s
        self.model = Model(history_s=history_s, step_s=step_s)
        #: printed once at start; spent by the first GET that presents it
        self.token: str | None = token or secrets.token_urlsafe(32)
        #: session id (the cookie) -> the session's secret (the header)
        self.sessions: dict[str, str] = {}
        #: /events ticket -> (session id, monotonic deadline)
        self._tickets: dict[str, tuple[str, float]] = {}
        #: the origin the operator's browser sees when a TLS proxy fronts the console
        #: (``--public-origin``): the only Origin a POST may carry then
        self.public_origin = parse_origin(public_origin) if public_origin else None
        self.snapshot_wait_s = snapshot_wait_s
        self.snapshot: dict[str, Any] | None = None
        self.polls = 0
        self._streams: set[asyncio.Queue[bytes | None]] = set()
        self._streams_changed = asyncio.Event()
        self._updated = asyncio.Event()
        self._poke = asyncio.Event()
        #: the checkpoint the next consistency check starts from: the one the last check of
        #: this operator directory ended at, kept as its signed note in ``baseline_path``
        #: (re-verified with the log key at each check); None until the first check
        self.baseline_path = baseline_path or Path(config.node_dir) / BASELINE_FILE
        self.baseline: tlog.Checkpoint | None = _read_baseline(self.baseline_path)
        self.latest: tlog.Checkpoint | None = None
        self._certs: dict[str, float] = {}
        self._certs_at: dict[str, float] = {}
        #: where this server listens (set by ``serve``): the only Host and Origin it answers
        self.origins: set[str] = set()

    # -- sessions --------------------------------------------------------------------------

    def redeem(self, token: str) -> tuple[str, str] | None:
        """A new session (its id for the cookie, its secret for the page) for the one-time
        token, or None; the token works once."""
        if self.token is None or not hmac.compare_digest(token.encode(), self.token.encode()):
            return None
        self.token = None
        session, secret = secrets.token_urlsafe(32), secrets.token_urlsafe(32)
        self.sessions[session] = secret
        return session, secret

    def session_of(self, request: web.Request) -> str | None:
        """The session id the request's cookie names, or None."""
        cookie = request.cookies.get(COOKIE, "")
        for session in self.sessions:
            if cookie and hmac.compare_digest(cookie.encode(), session.encode()):
                return session
        return None

    def holds_secret(self, session: str, request: web.Request) -> bool:
        """Whether the request carries the session's secret in ``SESSION_HEADER``."""
        sent = request.headers.get(SESSION_HEADER, "")
        return bool(sent) and hmac.compare_digest(sent.encode(), self.sessions[session].encode())

    def ticket(self, session: str) -> str:
        """A ticket for one /events connection of this session, good for ``TICKET_TTL_S``."""
        now = self.clock.monotonic()
        for t, (_, deadline) in list(self._tickets.items()):
            if deadline <= now:
                del self._tickets[t]
        ticket = secrets.token_urlsafe(32)
        self._tickets[ticket] = (session, now + TICKET_TTL_S)
        return ticket

    def spend_ticket(self, session: str, ticket: str) -> bool:
        """Whether ``ticket`` is this session's and still good; it is spent either way."""
        for t in list(self._tickets):
            if ticket and hmac.compare_digest(t.encode(), ticket.encode()):
                owner, deadline = self._tickets.pop(t)
                return owner == session and self.clock.monotonic() < deadline
        return False

    # -- polling ---------------------------------------------------------------------------

    def next_update(self) -> asyncio.Event:
        """An event set when the next snapshot is ready (tests and the verify button wait)."""
        return self._updated

    async def _get(self, path: str) -> Any:
        return await self.node.get_json(path)

    async def _checkpoint(self) -> tlog.Checkpoint:
        """The broker's latest checkpoint, its signature checked with the log key (which is
        trusted only as the broker's signing key certified by the exchange CA)."""
        key = await self.node.tlog.note_key()
        note = (await self.node.get_bytes("/v1/log/checkpoint")).decode()
        return tlog.open_checkpoint(key, note, self.node.tlog.origin)

    async def poll(self) -> dict[str, Any]:
        """Fetch every source once, update the model, push the snapshot to every page."""
        # expiries learnt from the nodes' certificates by earlier polls
        sample = Sample(at=self.clock.time(), certificates=dict(self._certs))
        sources: dict[str, Callable[[], Awaitable[Any]]] = {
            "health": lambda: self._get("/healthz"),
            "metrics": lambda: self.node.get_bytes("/metrics"),
            "quality": lambda: self._get("/v1/quality"),
            "catalog": lambda: self._get("/v1/catalog"),
            "agreements": lambda: self._get("/v1/agreements"),
            "subscriptions": lambda: self._get("/v1/subscriptions"),
            "checkpoint": self._checkpoint,
        }
        results = await asyncio.gather(*(f() for f in sources.values()), return_exceptions=True)
        for name, value in zip(sources, results, strict=True):
            if isinstance(value, BaseException):
                if not isinstance(value, Exception):
                    raise value
                sample.errors[name] = _describe(value)
                continue
            if name == "metrics":
                sample.metrics = value.decode("utf-8", "replace")
            elif name == "checkpoint":
                cp: tlog.Checkpoint = value
                self.latest = cp
                sample.checkpoint = CheckpointSeen(sample.at, cp.size,
                                                   base64.b64encode(cp.root).decode())
            else:
                setattr(sample, name, value)
        snapshot = self.model.update(sample)
        self.publish(snapshot)
        await self._certificates(snapshot, sample.at)  # shown from the next poll on
        return snapshot

    async def _certificates(self, snapshot: dict[str, Any], now: float) -> None:
        """The signing certificate's notAfter of each node the metrics give no expiry for,
        fetched when first seen and every ``CERT_REFRESH_S`` after. It is the certificate
        the broker serves (checked against nothing: the console shows when it expires, it
        trusts no key from it)."""
        for n in snapshot["nodes"]:
            who = n["id"]
            if n["certificate"] is not None and who not in self._certs:
                continue
            if now - self._certs_at.get(who, -CERT_REFRESH_S) < CERT_REFRESH_S:
                continue
            self._certs_at[who] = now
            try:
                pki.validate_node_id(who)
                pem = await self.node.get_bytes(f"/v1/nodes/{who}/certificate")
                cert = x509.load_pem_x509_certificate(pem)
            except (ExchangeError, ValueError) as err:
                logger.info("certificate_unread", node=who, error=_describe(err))
                continue
            self._certs[who] = cert.not_valid_after_utc.timestamp()

    def publish(self, snapshot: dict[str, Any]) -> None:
        self.snapshot = snapshot
        self.polls += 1
        data = _json.encode(snapshot)
        for queue in self._streams:
            if queue.full():  # a slow page only needs the newest snapshot
                with contextlib.suppress(asyncio.QueueEmpty):
                    queue.get_nowait()
            queue.put_nowait(data)
        updated, self._updated = self._updated, asyncio.Event()
        updated.set()

    async def run(self) -> None:
        """Poll every ``interval_s``, or at once when an action asks (``poke``)."""
        while True:
            try:
                await self.poll()
            except Exception as err:  # never let the page go dark over one bad poll
                logger.error("poll_failed", error=repr(err))
            deadline = self.clock.monotonic() + self.interval_s
            sleeping = asyncio.ensure_future(self.clock.sleep_until(deadline))
            poked = asyncio.ensure_future(self._poke.wait())
            try:
                await asyncio.wait({sleeping, poked}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for f in (sleeping, poked):
                    f.cancel()
            self._poke.clear()

    def poke(self) -> None:
        self._poke.set()

    # -- actions ---------------------------------------------------------------------------

    async def act(self, agreement_id: str, action: str, reason: str) -> dict[str, Any]:
        """The operator's decision, signed here with the operator's key by the SDK (the
        browser never holds it). ``reject`` is a revocation with a reason: the lifecycle lets
        only the owner reject, and an operator revoke from any open state."""
        signed: Action
        if action == "reject":
            signed, reason = "revoke", reason or "rejected by the operator"
        elif action == "countersign":
            signed = "countersign"
        elif action == "revoke":
            signed = "revoke"
        else:
            raise InputError(f"unknown action {action!r}", code=Code.BAD_QUERY)
        view = await self.node.agreement(agreement_id)
        if action not in OPERATOR_ACTIONS.get(view.get("state", ""), ()):
            raise ConflictError(f"{agreement_id} is {view.get('state')}: an operator cannot "
                                f"{action} it", code=Code.AGREEMENT_STATE)
        out = await self.node.decide(agreement_id, signed, reason=reason)
        logger.info("agreement_decided", agreement=agreement_id, action=signed,
                    state=out.get("state"))
        self.poke()
        return {"id": agreement_id, "state": out.get("state"), "action": signed}

    async def verify(self) -> dict[str, Any]:
        """Ask the broker for a consistency proof from the baseline checkpoint to its latest,
        and check it here with the core's code (signatures with the log key, the proof with
        RFC 6962 §2.1.4). A success makes the latest the next baseline, kept in the operator
        directory; the very first check has nothing to prove and records the baseline only.
        The outcome, failures included, is what the page shows (``status``: ``verified``,
        ``baseline`` or ``failed``)."""
        old = self.baseline
        result: dict[str, Any] = {"at": self.clock.time(), "status": "failed",
                                  "verified": False, "from": _cp(old) if old else None,
                                  "to": None, "proof_hashes": 0}
        try:
            new = await self._checkpoint()
            result["to"] = _cp(new)
            if old is None:
                detail = ("baseline recorded: the first check from this operator directory "
                          "has nothing to prove; the next one proves the log extends it")
                status = "baseline"
            else:
                # the baseline as its signed note says, not as remembered or stored
                old = tlog.open_checkpoint(await self.node.tlog.note_key(), old.note,
                                           self.node.tlog.origin)
                if new.size < old.size:
                    raise IntegrityError(f"the log shrank from {old.size} to {new.size}",
                                         code=Code.SPLIT_VIEW)
                if new.size == old.size or old.size == 0:
                    if new.size == old.size and new.root != old.root:
                        raise IntegrityError(f"two checkpoints of size {new.size} differ",
                                             code=Code.SPLIT_VIEW)
                    detail = ("no new entries since the last check" if new.size == old.size
                              else "every tree extends the empty one")
                else:
                    proof = await self._get(
                        f"/v1/log/proof/consistency?from={old.size}&to={new.size}")
                    hashes = [base64.b64decode(p, validate=True) for p in proof["proof"]]
                    tlog.check_consistent(old, new, hashes)
                    result["proof_hashes"] = len(hashes)
                    detail = (f"size {new.size} extends size {old.size}: "
                              f"{len(hashes)} proof hashes checked")
                status = "verified"
            result.update(status=status, verified=status == "verified", detail=detail)
            self._keep_baseline(new, result)
        except (ExchangeError, ValueError, KeyError, TypeError) as err:
            result.update(status="failed", verified=False, detail=_describe(err))
            logger.error("consistency_failed", detail=result["detail"])
        self.model.verification = result
        self.poke()
        return result

    def _keep_baseline(self, cp: tlog.Checkpoint, result: dict[str, Any]) -> None:
        """The next check's starting point, in memory and, as its signed note, on disk (a
        restarted console goes on from it instead of trusting the broker afresh)."""
        self.baseline = cp
        tmp = self.baseline_path.with_name(self.baseline_path.name + ".tmp")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(cp.note)
            os.replace(tmp, self.baseline_path)
        except OSError as err:
            logger.error("baseline_unsaved", path=str(self.baseline_path), error=repr(err))
            result["detail"] += f" (not saved to {self.baseline_path}: {err.strerror})"

    # -- streams ---------------------------------------------------------------------------

    @contextlib.contextmanager
    def stream(self) -> Iterator[asyncio.Queue[bytes | None]]:
        """A queue of snapshots for one /events client, dropped when the client goes."""
        queue: asyncio.Queue[bytes | None] = asyncio.Queue(maxsize=1)
        if self.snapshot is not None:
            queue.put_nowait(_json.encode(self.snapshot))
        self._streams.add(queue)
        try:
            yield queue
        finally:
            self._streams.discard(queue)
            changed, self._streams_changed = self._streams_changed, asyncio.Event()
            changed.set()

    @property
    def streams(self) -> int:
        """How many /events clients are connected."""
        return len(self._streams)

    def streams_changed(self) -> asyncio.Event:
        """An event set when the next /events client goes away (tests wait on it)."""
        return self._streams_changed

    def close_streams(self) -> None:
        for queue in self._streams:
            with contextlib.suppress(asyncio.QueueEmpty):
                queue.get_nowait()
            queue.put_nowait(None)


def _cp(cp: tlog.Checkpoint) -> dict[str, Any]:
    return {"size": cp.size, "root": base64.b64encode(cp.root).decode()}


def _read_baseline(path: Path) -> tlog.Checkpoint | None:
    """The stored baseline, parsed (its signature is checked with the log key at each
    check); an unreadable file stops the console rather than being silently replaced."""
    try:
        note = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as err:
        raise IntegrityError(f"cannot read the console's baseline checkpoint {path}: {err}",
                             code=Code.CHECKPOINT_INVALID) from None
    try:
        return tlog.Checkpoint.parse(note.split("\n\n")[0] + "\n", note)
    except IntegrityError as err:
        raise IntegrityError(f"{path}: {err.message}; it is the checkpoint the last "
                             "consistency check ended at: find out how it changed, then "
                             "remove it to start from a new baseline",
                             code=Code.CHECKPOINT_INVALID) from None


def _describe(err: BaseException) -> str:
    if isinstance(err, ExchangeError):
        return f"{err.code}: {err.message}"
    return f"{type(err).__name__}: {err}"


# -- the web application ------------------------------------------------------------------------

CONSOLE = web.AppKey("console", Console)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _refuse(status: int = 403) -> web.Response:
    """A refusal that says nothing about the console (no page, no data)."""
    return web.Response(status=status, text="forbidden\n" if status == 403 else "error\n",
                        headers={"Cache-Control": "no-store"})


@web.middleware
async def security_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every answer carries the security headers. Before any handler runs, a request is
    refused if it names another host (DNS rebinding) or has no session cookie; /api also
    needs the session's secret in ``SESSION_HEADER`` (and a POST the console's own Origin),
    /events a ticket. The page and its static files hold no secret and need the cookie only."""
    console = request.app[CONSOLE]
    response: web.StreamResponse
    session = console.session_of(request)
    if console.origins and request.host not in console.origins:
        response = _refuse()
    elif request.path == "/" and "token" in request.query:
        # only a GET spends the token: a HEAD (a link preview, a prefetcher) must not
        response = await handler(request) if request.method == "GET" else _refuse(405)
    elif session is None or not _authorized(console, session, request):
        response = _refuse()
    else:
        try:
            response = await handler(request)
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            response = _refuse(exc.status)
    if not response.prepared:
        response.headers.update(SECURITY_HEADERS)
    return response


def _authorized(console: Console, session: str, request: web.Request) -> bool:
    if request.path.startswith("/api/"):
        return console.holds_secret(session, request) and (
            request.method in ("GET", "HEAD") or _same_origin(console, request))
    if request.path == "/events":
        return console.spend_ticket(session, request.query.get("ticket", ""))
    return request.method in ("GET", "HEAD")


def _same_origin(console: Console, request: web.Request) -> bool:
    """A state change carries the page's own Origin if the browser sends one: the public
    origin behind a proxy, else the address the request came to."""
    origin = request.headers.get("Origin")
    if origin is None:
        return True
    if console.public_origin is not None:
        return origin == console.public_origin
    return origin == f"http://{request.host}"


def _static(name: str) -> bytes:
    return resources.files("exchange.console").joinpath("static", name).read_bytes()


async def index(request: web.Request) -> web.StreamResponse:
    console = request.app[CONSOLE]
    token = request.query.get("token")
    if token is not None:
        redeemed = console.redeem(token)
        if redeemed is None:
            return _refuse()
        session, secret = redeemed
        # the secret goes in the fragment, which the browser keeps to itself: the page moves
        # it to sessionStorage and out of the address bar
        response = web.Response(status=303, headers={"Location": f"/#s={secret}"})
        response.set_cookie(COOKIE, session, httponly=True, samesite="Strict", path="/",
                            secure=(console.public_origin or "").startswith("https://"))
        response.headers["Cache-Control"] = "no-store"
        response.headers.update(SECURITY_HEADERS)
        return response
    return web.Response(body=_static("index.html"), content_type="text/html",
                        headers={"Cache-Control": "no-store"})


async def static(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    if name not in STATIC:
        raise web.HTTPNotFound()
    return web.Response(body=_static(name), content_type=STATIC[name],
                        headers={"Cache-Control": "no-cache"})


def _problem(err: ExchangeError, request: web.Request, **headers: str) -> web.Response:
    return web.Response(body=_json.encode(err.problem(request.path)), status=err.status,
                        content_type="application/problem+json",
                        headers={"Cache-Control": "no-store", **headers})


async def api_snapshot(request: web.Request) -> web.Response:
    console = request.app[CONSOLE]
    if console.snapshot is None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(console.next_update().wait(), console.snapshot_wait_s)
    if console.snapshot is None:
        return _problem(UnavailableError("no snapshot yet: the console's first poll of the "
                                         "broker has not finished", code=Code.UNAVAILABLE),
                        request, **{"Retry-After": "1"})
    return web.Response(body=_json.encode(console.snapshot), content_type="application/json",
                        headers={"Cache-Control": "no-store"})


async def api_ticket(request: web.Request) -> web.Response:
    """A single-use ticket for /events (EventSource cannot send the session header)."""
    console = request.app[CONSOLE]
    session = console.session_of(request)
    assert session is not None  # the middleware let the request through
    return _answer({"ticket": console.ticket(session), "expires_in": TICKET_TTL_S})


async def events(request: web.Request) -> web.StreamResponse:
    """Server-Sent Events: one ``snapshot`` event per poll, the current one first. A client
    that goes away is dropped at once: ``serve`` runs handlers with cancellation on
    disconnect, and a write that finds the connection reset ends the stream quietly."""
    console = request.app[CONSOLE]
    response = web.StreamResponse(headers={
        "Content-Type": "text/event-stream", "Cache-Control": "no-store",
        "X-Accel-Buffering": "no", **SECURITY_HEADERS})
    await response.prepare(request)
    with console.stream() as queue:
        try:
            while (data := await queue.get()) is not None:
                await response.write(b"event: snapshot\ndata: " + data + b"\n\n")
        except ConnectionResetError:  # aiohttp's ClientConnectionResetError is one
            logger.debug("events_client_gone")
    return response


async def _body(request: web.Request) -> dict[str, Any]:
    raw = await request.read()
    if not raw:
        return {}
    try:
        body = msgspec.json.decode(raw)
    except msgspec.DecodeError:
        return {}
    return body if isinstance(body, dict) else {}


def _answer(body: dict[str, Any], status: int = 200) -> web.Response:
    return web.Response(body=_json.encode(body), status=status,
                        content_type="application/json", headers={"Cache-Control": "no-store"})


async def _finish(work: Coroutine[Any, Any, dict[str, Any]]) -> dict[str, Any]:
    """Run an action to its end even if the page goes away meanwhile (handlers are cancelled
    on disconnect): a decision half sent is worse than one nobody saw answered."""
    task = asyncio.ensure_future(work)
    task.add_done_callback(lambda t: t.cancelled() or t.exception())
    return await asyncio.shield(task)


async def api_decide(request: web.Request) -> web.Response:
    console = request.app[CONSOLE]
    reason = _body_reason(await _body(request))
    try:
        out = await _finish(console.act(request.match_info["id"],
                                        request.match_info["action"], reason))
    except ExchangeError as err:
        return _problem(err, request)
    return _answer(out)


def _body_reason(body: dict[str, Any]) -> str:
    reason = body.get("reason", "")
    return reason[:500] if isinstance(reason, str) else ""


async def api_verify(request: web.Request) -> web.Response:
    result = await _finish(request.app[CONSOLE].verify())
    return _answer(result, status=502 if result["status"] == "failed" else 200)


def create_app(console: Console, *, poll: bool = True) -> web.Application:
    """The console's application; ``poll`` runs the polling loop beside it (tests may poll
    by hand)."""
    app = web.Application(middlewares=[security_middleware], client_max_size=64 * 1024)
    app[CONSOLE] = console

    async def node_ctx(app: web.Application) -> AsyncIterator[None]:
        async with console.node:
            task = asyncio.create_task(console.run()) if poll else None
            yield
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    async def on_shutdown(app: web.Application) -> None:
        console.close_streams()

    app.cleanup_ctx.append(node_ctx)
    app.on_shutdown.append(on_shutdown)
    app.router.add_get("/", index)
    app.router.add_get("/static/{name}", static)
    app.router.add_get("/api/snapshot", api_snapshot)
    app.router.add_get("/events", events)
    app.router.add_post("/api/ticket", api_ticket)
    app.router.add_post("/api/agreements/{id}/{action}", api_decide)
    app.router.add_post("/api/verify", api_verify)
    return app


def parse_listen(text: str, *, allow_remote: bool = False) -> tuple[str, int]:
    """``HOST:PORT`` to listen on; a host that is not loopback is refused unless
    ``allow_remote`` (the console acts with the operator's key: anyone who reaches it and
    holds a session does too)."""
    host, sep, port_s = text.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port_s.isdigit() or int(port_s) > 65535:
        raise InputError(f"--listen {text!r} is not HOST:PORT", code=Code.BAD_CONFIG)
    if not allow_remote and not _loopback(host):
        raise InputError(f"--listen {host} is not a loopback address; the console acts with "
                         "the operator's key, so it listens on 127.0.0.1 unless "
                         "--allow-remote says otherwise", code=Code.BAD_CONFIG)
    return host, int(port_s)


def parse_origin(text: str) -> str:
    """``--public-origin``: ``http(s)://HOST[:PORT]``, as a browser writes it in ``Origin``."""
    try:
        url = urlsplit(text.strip())
        port = url.port
    except ValueError:
        url, port = None, None
    if (url is None or url.scheme not in ("http", "https") or not url.hostname
            or url.username is not None or url.path not in ("", "/") or url.query
            or url.fragment):
        raise InputError(f"--public-origin {text!r} is not an origin such as "
                         "https://console.example (scheme, host and port only)",
                         code=Code.BAD_CONFIG)
    host = url.hostname if ":" not in url.hostname else f"[{url.hostname}]"
    default = {"http": 80, "https": 443}[url.scheme]
    return f"{url.scheme}://{host}" + (f":{port}" if port and port != default else "")


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


async def serve(console: Console, host: str = "127.0.0.1", port: int = 0
                ) -> tuple[web.AppRunner, str]:
    """Start the console on ``host:port`` (0: any free port); return the runner and the
    one-time URL to open (under the public origin when one is set)."""
    # handler_cancellation: an /events client that closes is dropped at once, not at the
    # next snapshot (aiohttp's web_advanced "Peer disconnection"); actions shield themselves
    runner = web.AppRunner(create_app(console), access_log=None, shutdown_timeout=2.0,
                           handler_cancellation=True)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    bound = runner.addresses[0][1]
    shown = f"[{host}]" if ":" in host else host
    # a page reached under another name (DNS rebinding) is refused; on a remote listen
    # address the name is the operator's to choose, and the session is the guard
    if _loopback(host):
        console.origins = {f"{shown}:{bound}", f"127.0.0.1:{bound}", f"localhost:{bound}",
                           f"[::1]:{bound}"}
        if console.public_origin is not None:  # a proxy on this machine, passing Host on
            console.origins.add(console.public_origin.split("://", 1)[1])
    base = console.public_origin or f"http://{shown}:{bound}"
    return runner, f"{base}/?token={console.token}"
