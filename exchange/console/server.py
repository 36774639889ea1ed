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
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable
from importlib import resources
from typing import Any

import msgspec
import structlog
from aiohttp import web
from cryptography import x509

from exchange import pki
from exchange.clock import SYSTEM, Clock
from exchange.console.model import OPERATOR_ACTIONS, CheckpointSeen, Model, Sample
from exchange.core import tlog
from exchange.core.agreements import Action
from exchange.core.errors import Code, ConflictError, ExchangeError, InputError, IntegrityError
from exchange.node import Node, NodeConfig

__all__ = ["CONSOLE", "COOKIE", "CSRF_HEADER", "Console", "create_app", "parse_listen",
           "serve"]

logger = structlog.get_logger("exchange.console")
_json = msgspec.json.Encoder()

#: the session cookie: HttpOnly (no script reads it), SameSite=Strict (no other site's page
#: sends it), Path=/ ; not Secure, since the console is plain HTTP on loopback
COOKIE = "exchange_console"
#: state-changing requests carry the session's CSRF value in this header (the page reads it
#: from its own <meta>); a form another site posts cannot set a header
CSRF_HEADER = "X-Console-CSRF"
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
                 token: str | None = None) -> None:
        self.config = config
        self.node = Node(config)
        self.clock = clock
        self.interval_s = interval_s
        self.model = Model(history_s=history_s, step_s=step_s)
        #: printed once at start; spent by the first request that presents it
        self.token: str | None = token or secrets.token_urlsafe(32)
        #: session id -> its CSRF value
        self.sessions: dict[str, str] = {}
        self.snapshot: dict[str, Any] | None = None
        self.polls = 0
        self._streams: set[asyncio.Queue[bytes | None]] = set()
        self._updated = asyncio.Event()
        self._poke = asyncio.Event()
        #: the checkpoint the next consistency check starts from: the first one the console
        #: saw, then the one each successful check ended at
        self.baseline: tlog.Checkpoint | None = None
        self.latest: tlog.Checkpoint | None = None
        self._certs: dict[str, float] = {}
        self._certs_at: dict[str, float] = {}
        #: where this server listens (set by ``serve``): the only Host and Origin it answers
        self.origins: set[str] = set()

    # -- sessions --------------------------------------------------------------------------

    def redeem(self, token: str) -> str | None:
        """A new session id for the one-time token, or None; the token works once."""
        if self.token is None or not hmac.compare_digest(token.encode(), self.token.encode()):
            return None
        self.token = None
        session = secrets.token_urlsafe(32)
        self.sessions[session] = secrets.token_urlsafe(32)
        return session

    def csrf_for(self, request: web.Request) -> str | None:
        """The CSRF value of the request's session, or None if it has no valid session."""
        cookie = request.cookies.get(COOKIE, "")
        for session, csrf in self.sessions.items():
            if cookie and hmac.compare_digest(cookie.encode(), session.encode()):
                return csrf
        return None

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
                if self.baseline is None:
                    self.baseline = cp
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
        RFC 6962 §2.1.4). A success makes the latest the next baseline."""
        new = await self._checkpoint()
        old = self.baseline
        result: dict[str, Any] = {"at": self.clock.time(), "to": _cp(new),
                                  "from": _cp(old) if old else None, "proof_hashes": 0}
        try:
            if old is None:
                result.update(verified=True, detail="the first checkpoint seen: it is the "
                              "baseline for the next check")
            else:
                # the baseline as its signed note says, not as remembered
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
                result.update(verified=True, detail=detail)
            self.baseline = new
        except (IntegrityError, InputError, ValueError, KeyError, TypeError) as err:
            result.update(verified=False, detail=_describe(err))
            logger.error("consistency_failed", detail=result["detail"])
        self.model.verification = result
        self.poke()
        return result

    # -- streams ---------------------------------------------------------------------------

    @contextlib.contextmanager
    def stream(self) -> Any:
        queue: asyncio.Queue[bytes | None] = asyncio.Queue(maxsize=1)
        if self.snapshot is not None:
            queue.put_nowait(_json.encode(self.snapshot))
        self._streams.add(queue)
        try:
            yield queue
        finally:
            self._streams.discard(queue)

    def close_streams(self) -> None:
        for queue in self._streams:
            with contextlib.suppress(asyncio.QueueEmpty):
                queue.get_nowait()
            queue.put_nowait(None)


def _cp(cp: tlog.Checkpoint) -> dict[str, Any]:
    return {"size": cp.size, "root": base64.b64encode(cp.root).decode()}


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
    """Every answer carries the security headers; a request for another host name (DNS
    rebinding) or without a session is refused before any handler runs."""
    console = request.app[CONSOLE]
    response: web.StreamResponse
    if console.origins and request.host not in console.origins:
        response = _refuse()
    elif request.path == "/" and "token" in request.query:
        response = await handler(request)
    elif console.csrf_for(request) is None or (request.method == "POST"
                                               and not _same_origin(request)):
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


def _same_origin(request: web.Request) -> bool:
    """A state change needs the session's CSRF header, and the page's own Origin if the
    browser sends one."""
    csrf = request.app[CONSOLE].csrf_for(request) or ""
    sent = request.headers.get(CSRF_HEADER, "")
    if not sent or not hmac.compare_digest(sent.encode(), csrf.encode()):
        return False
    origin = request.headers.get("Origin")
    return origin is None or origin == f"http://{request.host}"


def _static(name: str) -> bytes:
    return resources.files("exchange.console").joinpath("static", name).read_bytes()


async def index(request: web.Request) -> web.StreamResponse:
    console = request.app[CONSOLE]
    token = request.query.get("token")
    if token is not None:
        session = console.redeem(token)
        if session is None:
            return _refuse()
        response = web.Response(status=303, headers={"Location": "/"})
        response.set_cookie(COOKIE, session, httponly=True, samesite="Strict", path="/")
        response.headers["Cache-Control"] = "no-store"
        response.headers.update(SECURITY_HEADERS)
        return response
    csrf = console.csrf_for(request) or ""
    page = _static("index.html").decode().replace("{{CSRF}}", csrf)
    return web.Response(text=page, content_type="text/html",
                        headers={"Cache-Control": "no-store"})


async def static(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    if name not in STATIC:
        raise web.HTTPNotFound()
    return web.Response(body=_static(name), content_type=STATIC[name],
                        headers={"Cache-Control": "no-cache"})


async def api_snapshot(request: web.Request) -> web.Response:
    console = request.app[CONSOLE]
    if console.snapshot is None:
        await asyncio.wait_for(console.next_update().wait(), 30)
    return web.Response(body=_json.encode(console.snapshot), content_type="application/json",
                        headers={"Cache-Control": "no-store"})


async def events(request: web.Request) -> web.StreamResponse:
    """Server-Sent Events: one ``snapshot`` event per poll, the current one first."""
    console = request.app[CONSOLE]
    response = web.StreamResponse(headers={
        "Content-Type": "text/event-stream", "Cache-Control": "no-store",
        "X-Accel-Buffering": "no", **SECURITY_HEADERS})
    await response.prepare(request)
    with console.stream() as queue:
        while (data := await queue.get()) is not None:
            await response.write(b"event: snapshot\ndata: " + data + b"\n\n")
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


async def api_decide(request: web.Request) -> web.Response:
    console = request.app[CONSOLE]
    reason = _body_reason(await _body(request))
    try:
        out = await console.act(request.match_info["id"], request.match_info["action"], reason)
    except ExchangeError as err:
        return _answer({"error": err.code, "detail": err.message}, status=err.status)
    return _answer(out)


def _body_reason(body: dict[str, Any]) -> str:
    reason = body.get("reason", "")
    return reason[:500] if isinstance(reason, str) else ""


async def api_verify(request: web.Request) -> web.Response:
    try:
        return _answer(await request.app[CONSOLE].verify())
    except ExchangeError as err:
        return _answer({"verified": False, "detail": _describe(err)}, status=502)


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
    one-time URL to open."""
    runner = web.AppRunner(create_app(console), access_log=None, shutdown_timeout=2.0)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    bound = runner.addresses[0][1]
    shown = f"[{host}]" if ":" in host else host
    # a page reached under another name (DNS rebinding) is refused; on a remote listen
    # address the name is the operator's to choose, and the session cookie is the guard
    if _loopback(host):
        console.origins = {f"{shown}:{bound}", f"127.0.0.1:{bound}", f"localhost:{bound}",
                           f"[::1]:{bound}"}
    return runner, f"http://{shown}:{bound}/?token={console.token}"
