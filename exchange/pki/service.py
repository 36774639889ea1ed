"""The CA's enrolment service (``exchange pki serve``): the online path to a certificate.

It runs where the CA key is, as the CA's own process, never inside the broker: a broker that
could issue certificates could mint any agency's signing key and forge its records. Over TLS
with a server certificate of its own (issued by the CA at first start), it answers:

- ``GET /v1/enrol/ca`` — the CA certificate. A node checks it against the pin in its token
  before it trusts anything else this service says.
- ``POST /v1/enrol`` — ``{"token": ..., "requests": [PEM, PEM]}`` → the node's TLS and signing
  certificates; the token is spent (``authority.redeem``).
- ``POST /v1/enrol/rotate`` — ``{"request": PEM}`` from a party authenticated by its current
  TLS client certificate → a certificate for its new signing key (``authority.rotate``).

Refusals are RFC 9457 problem+json with the stable code in ``Problem-Code``; every use and
every refusal is in the CA's log (``ca.log``).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import ssl
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path
from typing import Any

import msgspec
import structlog
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID

from exchange.core.errors import (
    AuthError,
    Code,
    ExchangeError,
    InputError,
    InternalError,
    RequestTimeout,
)
from exchange.core.wire import PROBLEM_CODE_HEADER
from exchange.pki import authority
from exchange.pki.files import (
    _CA_CERT,
    _CRL,
    _ENROL,
    _TLS_CERT,
    _TLS_KEY,
    _initialised,
    _mkdir,
    _now,
    _pem_key,
    _read_bytes,
    _read_cert,
    _write,
    default_ca_dir,
)
from exchange.pki.names import principal_from_cert

__all__ = ["EnrolService", "create_app", "service_ssl_context"]

logger = structlog.get_logger("exchange.pki")
PROBLEM = "application/problem+json"
_json = msgspec.json.Encoder()


class EnrolRequest(msgspec.Struct, forbid_unknown_fields=True):
    token: str
    requests: list[str]


class RotateRequest(msgspec.Struct, forbid_unknown_fields=True):
    request: str


class EnrolService:
    """What the service holds: where the PKI and the CA key are."""

    def __init__(self, pki_dir: str | os.PathLike[str],
                 ca_dir: str | os.PathLike[str] | None = None, *,
                 body_timeout_s: float = 30.0) -> None:
        self.pki_dir = _initialised(pki_dir)
        self.ca_dir = Path(ca_dir) if ca_dir is not None else default_ca_dir(self.pki_dir)
        #: a request body (64 KiB at most) must arrive whole within this many seconds
        self.body_timeout_s = body_timeout_s


SERVICE = web.AppKey("service", EnrolService)


def service_ssl_context(service: EnrolService, hosts: Iterable[str] = ()) -> ssl.SSLContext:
    """TLS 1.3, server-authenticated by a certificate the CA issues to its own service (made
    at first start, renewed when the host names change); a client certificate is asked for
    but optional (only ``rotate`` needs one), verified against the CA and the CRL."""
    names = list(dict.fromkeys(["localhost", "127.0.0.1", *hosts]))
    cert_path, key_path = _service_cert(service, names)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.load_cert_chain(cert_path, key_path)
    ctx.verify_mode = ssl.CERT_OPTIONAL
    ctx.load_verify_locations(cafile=service.pki_dir / _CA_CERT)
    ctx.load_verify_locations(cafile=service.pki_dir / _CRL)
    ctx.verify_flags |= ssl.VERIFY_CRL_CHECK_LEAF | ssl.VERIFY_X509_STRICT
    return ctx


def _service_cert(service: EnrolService, names: list[str]) -> tuple[Path, Path]:
    out = service.ca_dir / _ENROL
    cert_path, key_path = out / _TLS_CERT, out / _TLS_KEY
    if cert_path.is_file() and key_path.is_file():
        cert = _read_cert(cert_path)
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        have = {str(v) for v in san.get_values_for_type(x509.DNSName)} | {
            str(v) for v in san.get_values_for_type(x509.IPAddress)}
        if set(names) <= have and cert.not_valid_after_utc > _now() + dt.timedelta(days=7):
            return cert_path, key_path
    ca_cert, ca_key = authority._load_ca(service.pki_dir, service.ca_dir)
    key = ec.generate_private_key(ec.SECP256R1())
    cert = authority._leaf(ca_cert, ca_key, "Exchange enrolment service", key.public_key(),
                           authority._host_names(names),
                           authority._key_usage(digital_signature=True),
                           ExtendedKeyUsageOID.SERVER_AUTH, authority.LEAF_VALIDITY_DAYS)
    _mkdir(out)
    _write(key_path, _pem_key(key), secret=True)
    _write(cert_path, cert.public_bytes(serialization.Encoding.PEM))
    return cert_path, key_path


def _problem(err: ExchangeError, request: web.Request) -> web.Response:
    return web.Response(body=_json.encode(err.problem(instance=request.path)),
                        status=err.status, content_type=PROBLEM,
                        headers={PROBLEM_CODE_HEADER: err.code})


@web.middleware
async def _errors(request: web.Request,
                  handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
                  ) -> web.StreamResponse:
    try:
        return await handler(request)
    except ExchangeError as err:
        logger.info("enrol_refused", code=err.code, detail=err.message, path=request.path,
                    peer=request.remote)
        response = _problem(err, request)
        if isinstance(err, RequestTimeout):
            response.force_close()
        return response
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        http_err = ExchangeError(exc.reason, code=Code.HTTP_ERROR)
        http_err.status = exc.status
        return _problem(http_err, request)
    except Exception:
        logger.exception("internal_error")
        return _problem(InternalError("internal error", code=Code.INTERNAL_ERROR), request)


def _peer(request: web.Request) -> str:
    peer = request.transport.get_extra_info("peername") if request.transport else None
    return f"{peer[0]}:{peer[1]}" if peer else ""


async def _decode(request: web.Request, kind: type[Any]) -> Any:
    try:
        body = await asyncio.wait_for(request.read(), request.app[SERVICE].body_timeout_s)
    except TimeoutError:
        raise RequestTimeout("the body did not arrive in time",
                             code=Code.BODY_TOO_SLOW) from None
    return decode_body(kind, body)


def decode_body(kind: type[Any], body: bytes) -> Any:
    """A request body as ``kind``, or the ``InputError`` that says why not."""
    try:
        return msgspec.json.decode(body, type=kind)
    except (msgspec.DecodeError, UnicodeDecodeError) as err:
        raise InputError(f"request body: {err}", code=Code.MALFORMED) from None


def _pem(cert: x509.Certificate) -> str:
    return cert.public_bytes(serialization.Encoding.PEM).decode("ascii")


async def get_ca(request: web.Request) -> web.Response:
    service = request.app[SERVICE]
    return web.Response(body=_read_bytes(service.pki_dir / _CA_CERT),
                        content_type="application/pem-certificate-chain")


async def post_enrol(request: web.Request) -> web.Response:
    service = request.app[SERVICE]
    body: EnrolRequest = await _decode(request, EnrolRequest)
    certs = authority.redeem(service.pki_dir, body.token,
                             [r.encode("ascii", "replace") for r in body.requests],
                             ca_dir=service.ca_dir, peer=_peer(request))
    principal = principal_from_cert(certs[0])
    logger.info("enrolled", role=principal.role, id=principal.id, peer=_peer(request))
    return web.Response(body=_json.encode({
        "certificates": [_pem(c) for c in certs],
        "ca": _read_bytes(service.pki_dir / _CA_CERT).decode("ascii")}),
        content_type="application/json")


async def post_rotate(request: web.Request) -> web.Response:
    service = request.app[SERVICE]
    ssl_object = request.transport.get_extra_info("ssl_object") if request.transport else None
    der = ssl_object.getpeercert(binary_form=True) if ssl_object is not None else None
    if not der:
        raise AuthError("a rotation is asked with the party's current TLS certificate",
                        code=Code.NO_CERTIFICATE)
    principal = principal_from_cert(der)
    serial = x509.load_der_x509_certificate(der).serial_number
    body: RotateRequest = await _decode(request, RotateRequest)
    cert = authority.rotate(service.pki_dir, principal, body.request.encode("ascii", "replace"),
                            ca_dir=service.ca_dir, peer=_peer(request),
                            presented_serial=serial)
    logger.info("rotated", role=principal.role, id=principal.id, peer=_peer(request))
    return web.Response(body=_json.encode({"certificates": [_pem(cert)]}),
                        content_type="application/json")


def create_app(service: EnrolService) -> web.Application:
    app = web.Application(middlewares=[_errors], client_max_size=64 * 1024)
    app[SERVICE] = service
    app.router.add_get("/v1/enrol/ca", get_ca)
    app.router.add_post("/v1/enrol", post_enrol)
    app.router.add_post("/v1/enrol/rotate", post_rotate)
    return app
