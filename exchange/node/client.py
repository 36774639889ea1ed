"""The node's connection to the exchange: its config, TLS identity, fail-over between brokers,
keys trusted through the exchange CA, and the broker's refusals as the errors it raised."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import errno
import ssl
import urllib.parse
from typing import Any, Literal

import aiohttp
import msgspec
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from exchange import pki
from exchange.clock import Clock
from exchange.core.errors import AuthError, Code, ExchangeError, PkiError, UnavailableError
from exchange.core.signing import Verifier
from exchange.core.wire import PROBLEM_CODE_HEADER
from exchange.pki import party

__all__ = ["Client", "NodeConfig", "certificate_alert", "handshake_refused", "load_identity",
           "problem"]


class NodeConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """How a node reaches the exchange. Decoded strictly from the node's TOML/JSON file."""

    node_id: str
    #: the node's own directory (``exchange node init``): its keys, certificates and ``ca.crt``
    node_dir: str = ""
    #: instead of ``node_dir``: a PKI directory whose ``nodes/<node_id>/`` holds keys made
    #: centrally (``exchange pki enroll --insecure-central-keys``: demos, tests, benchmarks)
    pki_dir: str = ""
    #: broker base URLs; the node fails over between them in order
    brokers: list[str]
    batch_size: int = 500
    linger_s: float = 0.01
    #: most batches of one dataset awaiting their receipt at once
    max_in_flight: int = 4
    encoding: Literal["json", "msgpack"] = "msgpack"
    #: "http": one POST per batch; "websocket": a publish stream per dataset, many batches in
    #: flight on one connection, replies in order (best for many small batches)
    transport: Literal["http", "websocket"] = "http"
    #: apply NFC / whitespace / tone-mark normalisation before signing, and count it
    normalise: bool = True
    timeout_s: float = 30.0
    retries: int = 5
    #: the schema version this node publishes of a dataset (``{"population": 1}``); a dataset
    #: not named is published at its latest version
    schema_versions: dict[str, int] = {}
    #: share of delivered records whose inclusion in the transparency log is checked (0..1)
    verify_inclusion: float = 0.0
    #: where the last trusted checkpoint is kept across restarts (and split-view evidence)
    checkpoint_file: str | None = None


class Client:
    """One node's HTTPS session to the exchange's brokers, shared by its publisher, its
    subscriptions and its log monitor."""

    def __init__(self, config: NodeConfig, clock: Clock) -> None:
        self.config = config
        self.clock = clock
        self.identity = load_identity(config)
        self._ca = x509.load_pem_x509_certificate(self.identity.ca_cert.read_bytes())
        self._ssl: ssl.SSLContext = pki.client_ssl_context(self.identity)
        self._session: aiohttp.ClientSession | None = None
        self._broker = 0
        #: each signer's current key, and every key it was ever certified for (by key id)
        self._keys: dict[str, Ed25519PublicKey] = {}
        self._history: dict[str, dict[str, pki.SigningCert]] = {}
        #: publishers' signatures, checked with the keys ``trust`` fetched; one verification
        #: per batch statement; a statement under a rotated-out key is checked against the
        #: certificate of its key id, valid at the statement's time
        self.verifier = Verifier(self._keys.get, history=self._certified)

    async def open(self) -> None:
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(ssl=self._ssl, limit=32),
            timeout=aiohttp.ClientTimeout(total=self.config.timeout_s))

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            raise UnavailableError("node is not open: use `async with Node(...)`",
                                   code=Code.NODE_CLOSED)
        return self._session

    @property
    def url(self) -> str:
        """The broker this node talks to now."""
        return self.config.brokers[self._broker % len(self.config.brokers)].rstrip("/")

    def fail_over(self, failed: str) -> None:
        """Move to the next broker, unless another task has already moved away from
        ``failed``: several batches in flight fail together, and each stepping on would
        cycle the node straight back to the broker that failed."""
        if self.url == failed:
            self._broker = (self._broker + 1) % len(self.config.brokers)

    async def trust(self, node: str, kid: str | None = None) -> Ed25519PublicKey:
        """The current signing key of ``node`` (and every older one, by key id), from its
        certificates checked against the exchange CA: the broker serves them, but cannot forge
        them. Fetched again when a statement names a key id not seen yet (a rotation)."""
        key = self._keys.get(node)
        if key is None or not self.verifier.knows(node, kid):
            bundle = await self.get_bytes(f"/v1/nodes/{node}/certificates")
            certs = pki.certified_signing_keys(bundle, self._ca)
            if not certs:
                raise AuthError(f"no signing certificate served for {node}",
                                code=Code.UNKNOWN_SIGNER)
            strangers = sorted({c.node_id for c in certs} - {node})
            if strangers:
                raise AuthError(f"certificates served for {node} name {strangers}",
                                code=Code.BAD_CERTIFICATE)
            self._history[node] = {c.kid: c for c in certs}
            # served in the order issued: the last is the current key
            key = certs[-1].key
            self._keys[node] = key
        return key

    def _certified(self, node: str, kid: str, time: str | None) -> Ed25519PublicKey | None:
        cert = self._history.get(node, {}).get(kid)
        return cert.key if cert is not None and cert.valid_at(time) else None

    async def get_bytes(self, path: str) -> bytes:
        """GET ``path`` from the current broker; a refusal raises the error the broker raised."""
        url = self.url
        try:
            async with self.session.get(url + path) as resp:
                body = await resp.read()
        except (aiohttp.ClientError, OSError, TimeoutError) as err:
            self.fail_over(url)  # the next request goes to the next broker
            raise await self.connection_failed(url, err) from None
        if resp.status >= 400:
            raise problem(resp.status, body)
        return body

    async def get_json(self, path: str) -> Any:
        return msgspec.json.decode(await self.get_bytes(path))

    async def post_json(self, path: str, body: Any) -> Any:
        """POST ``body`` as JSON to the current broker; a refusal raises the broker's error."""
        url = self.url
        try:
            async with self.session.post(url + path, data=msgspec.json.encode(body),
                                         headers={"Content-Type": "application/json"}) as resp:
                raw = await resp.read()
        except (aiohttp.ClientError, OSError, TimeoutError) as err:
            self.fail_over(url)
            raise await self.connection_failed(url, err) from None
        if resp.status >= 400:
            raise problem(resp.status, raw)
        return msgspec.json.decode(raw)

    async def connection_failed(self, url: str, err: BaseException) -> ExchangeError:
        """What a failed connection to ``url`` means: ``certificate_refused`` when the broker
        refused this party's TLS certificate, else ``broker_unreachable``.

        A broker on asyncio refuses a certificate by closing the connection without sending
        its TLS alert, and in TLS 1.3 the client's side of the handshake is already complete
        by then (RFC 8446 §4.4.2: the server checks the client's certificate after the
        client's Finished), so the client only sees a reset or an empty read where the
        answer should be, which is what a broker that died mid-request looks like too. So
        on such an error one fresh connection asks ``/healthz``: closed without a word right
        after a TLS 1.3 handshake, the certificate was refused. A server that does send its
        alert (``certificate revoked``, ``unknown ca``, …) is taken at its word."""
        alert = certificate_alert(err)
        if alert is not None or (_cut_off(err) and await self._closes_after_handshake(url)):
            return AuthError(self._refused_message(url, alert), code=Code.CERTIFICATE_REFUSED)
        return UnavailableError(f"broker {url} unreachable: {err!r}",
                                code=Code.BROKER_UNREACHABLE)

    async def _closes_after_handshake(self, url: str) -> bool:
        """Whether ``url`` completes a TLS 1.3 handshake with this party's certificate, then
        hangs up (or sends a certificate alert) instead of answering a request."""
        parts = urllib.parse.urlsplit(url)
        host, port = parts.hostname or "", parts.port or 443
        writer: asyncio.StreamWriter | None = None
        try:
            async with asyncio.timeout(min(5.0, self.config.timeout_s)):
                reader, writer = await asyncio.open_connection(
                    host, port, ssl=self._ssl, server_hostname=host)
                tls = writer.get_extra_info("ssl_object")
                if tls is None or tls.version() != "TLSv1.3":
                    return False
                writer.write(f"GET /healthz HTTP/1.1\r\nHost: {parts.netloc}\r\n"
                             "Connection: close\r\n\r\n".encode())
                await writer.drain()
                return await reader.read(16) == b""
        except ssl.SSLError as err:
            # before the handshake completed (the broker's own certificate is not the CA's),
            # or the broker's alert after it
            return writer is not None or certificate_alert(err) is not None
        except (ConnectionResetError, BrokenPipeError):
            return writer is not None
        except (OSError, TimeoutError):
            return False
        finally:
            if writer is not None:
                writer.close()
                with contextlib.suppress(OSError, ssl.SSLError):
                    await writer.wait_closed()

    def _refused_message(self, url: str, alert: str | None) -> str:
        me = self.identity
        why = "it is revoked, expired or issued by another CA"
        try:
            cert = x509.load_pem_x509_certificate(me.tls_cert.read_bytes())
        except (OSError, ValueError):
            cert = None
        if cert is not None:
            now = dt.datetime.fromtimestamp(self.clock.time(), dt.UTC)
            if cert.not_valid_after_utc < now:
                why = f"it expired on {cert.not_valid_after_utc:%Y-%m-%d %H:%M} UTC"
            elif cert.not_valid_before_utc > now:
                why = f"it is not valid before {cert.not_valid_before_utc:%Y-%m-%d %H:%M} UTC"
            elif cert.issuer != self._ca.subject:
                why = (f"it was issued by {cert.issuer.rfc4514_string()}, not by the exchange "
                       f"CA in {me.ca_cert}")
        heard = f" (TLS alert: {alert})" if alert else ""
        return (f"broker {url} refused the TLS certificate of {me.role} {me.node_id}{heard}: "
                f"{why}. Check its dates and issuer: `openssl x509 -in {me.tls_cert} -noout "
                "-subject -issuer -dates`; the CA's operator sees whether it is revoked with "
                "`exchange pki list PKI_DIR` (the CRL: `openssl crl -in PKI_DIR/crl.pem -noout "
                f"-text`); a revoked or expired {me.role} enrols again (`exchange {me.role} "
                "enroll`)")


def load_identity(config: NodeConfig) -> pki.Identity:
    """The node's identity from its own directory (or, for central keys, the PKI directory);
    the certificates must name ``config.node_id``."""
    if bool(config.node_dir) == bool(config.pki_dir):
        raise PkiError("a node config names exactly one of node_dir (its own directory) and "
                       "pki_dir (central keys)", code=Code.NOT_ENROLLED)
    if config.node_dir:
        identity = party.load_identity(config.node_dir)
    else:
        identity = pki.load_node_identity(config.pki_dir, config.node_id)
    if identity.node_id != config.node_id:
        raise PkiError(f"{config.node_dir} holds the keys of {identity.role} "
                       f"{identity.node_id}, not of {config.node_id}", code=Code.NOT_ENROLLED)
    return identity


#: the TLS alerts (RFC 8446 §6.2) a server sends about the client's certificate, as OpenSSL
#: names them in an ``SSLError``'s reason (``SSLV3_ALERT_CERTIFICATE_REVOKED``, …)
_CERTIFICATE_ALERTS = ("BAD_CERTIFICATE", "UNSUPPORTED_CERTIFICATE", "CERTIFICATE_REVOKED",
                       "CERTIFICATE_EXPIRED", "CERTIFICATE_UNKNOWN", "UNKNOWN_CA",
                       "CERTIFICATE_REQUIRED")


def certificate_alert(err: BaseException | None) -> str | None:
    """The TLS alert about our certificate in ``err`` (or what it wraps: aiohttp keeps the
    ``ssl.SSLError`` as ``os_error`` or the cause), as words: ``certificate revoked``."""
    seen: set[int] = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        if isinstance(err, ssl.SSLError):
            reason = (getattr(err, "reason", None) or str(err)).upper().replace(" ", "_")
            for alert in _CERTIFICATE_ALERTS:
                if f"ALERT_{alert}" in reason:
                    return alert.lower().replace("_", " ")
        err = getattr(err, "os_error", None) or err.__cause__ or err.__context__
    return None


def _cut_off(err: BaseException) -> bool:
    """The connection was cut where an answer should have come: reset, or closed by the
    server (aiohttp: ``ServerDisconnectedError``; a reset as ``ClientOSError``)."""
    if isinstance(err, aiohttp.ServerDisconnectedError | ConnectionResetError | BrokenPipeError
                  | ssl.SSLEOFError):
        return True
    os_error = getattr(err, "os_error", None)
    cause = err.__cause__ or err.__context__
    return any(isinstance(e, ConnectionResetError | BrokenPipeError | ssl.SSLEOFError)
               for e in (os_error, cause)) or (
        isinstance(err, aiohttp.ClientOSError) and err.errno in (errno.ECONNRESET, errno.EPIPE))


def problem(status: int, body: bytes) -> ExchangeError:
    """The broker's problem+json reply as the error class it raised (``RemoteError`` too)."""
    try:
        p = msgspec.json.decode(body)
    except msgspec.DecodeError:
        p = {}
    return ExchangeError.from_problem(p if isinstance(p, dict) else {}, status)


def handshake_refused(err: aiohttp.WSServerHandshakeError, what: str) -> ExchangeError:
    """A refused WebSocket handshake as the error the broker raised: aiohttp keeps the status
    and headers but not the body, so the broker repeats the problem's code in a header."""
    code = err.headers.get(PROBLEM_CODE_HEADER, "") if err.headers else ""
    return ExchangeError.from_code(code, f"{what} refused: {err.status} {err.message}",
                                   err.status)
