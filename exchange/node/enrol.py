"""A node's (or operator's) side of the online enrolment: ``exchange node enroll`` and
``exchange node rotate --url``, against the CA's enrolment service (``exchange pki serve``).

The token carries the SHA-256 pin of the exchange CA. The node fetches the CA certificate
first, over a connection it does not trust yet, and keeps it only if it matches the pin; the
token and the requests then travel over TLS verified against that CA (server-authenticated,
host name checked), never over the first connection.
"""

from __future__ import annotations

import hmac
import os
import ssl
from typing import Any

import aiohttp
import msgspec
from cryptography import x509

from exchange import pki
from exchange.core.errors import AuthError, Code, ExchangeError, PkiError, UnavailableError
from exchange.node.client import problem
from exchange.pki import party

__all__ = ["enroll", "rotate"]


async def enroll(directory: str | os.PathLike[str], url: str, token: str, *,
                 timeout_s: float = 30.0) -> party.Installed:
    """Send the party's requests with its invitation; install what comes back."""
    parsed = pki.parse_token(token)
    party.load(directory)  # a party's directory, made by `init`
    requests = party.requests(directory)
    if not requests:
        raise PkiError(f"{directory} has no requests waiting (already enrolled?)",
                            code=Code.ALREADY_ENROLLED)
    url = url.rstrip("/")
    ca_pem = await _pinned_ca(url, parsed.pin, timeout_s)
    body = await _post(url + "/v1/enrol", _verified(ca_pem),
                       {"token": token.strip(), "requests": [r.decode() for r in requests]},
                       timeout_s)
    if body.get("ca") and _pin(str(body["ca"]).encode()) != parsed.pin:
        raise AuthError("the service answered with another CA than the pinned one",
                        code=Code.CA_PIN_MISMATCH)
    return party.install(directory, [c.encode() for c in body["certificates"]], ca=ca_pem)


async def rotate(directory: str | os.PathLike[str], url: str, *,
                 timeout_s: float = 30.0) -> party.Installed:
    """Make a new signing key and have it certified, authenticated by the current TLS
    certificate; the old key is destroyed once the new certificate is installed."""
    csr = party.prepare_rotation(directory)
    identity = party.load_identity(directory)
    ctx = pki.client_ssl_context(identity)
    body = await _post(url.rstrip("/") + "/v1/enrol/rotate", ctx, {"request": csr.decode()},
                       timeout_s)
    return party.install(directory, [c.encode() for c in body["certificates"]])


def _pin(pem: bytes) -> str:
    return pki.ca_pin(x509.load_pem_x509_certificate(pem))


async def _pinned_ca(url: str, pin: str, timeout_s: float) -> bytes:
    # not verified on purpose: nothing is trusted from this connection but a certificate whose
    # hash the token vouches for, and nothing secret is sent on it
    unverified = ssl.create_default_context()
    unverified.check_hostname = False
    unverified.verify_mode = ssl.CERT_NONE
    try:
        async with (aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout_s)) as s,
                    s.get(url + "/v1/enrol/ca", ssl=unverified) as resp):
            pem = await resp.read()
            if resp.status >= 400:
                raise problem(resp.status, pem)
    except (aiohttp.ClientError, OSError, TimeoutError) as err:
        raise UnavailableError(f"enrolment service {url} unreachable: {err!r}",
                               code=Code.BROKER_UNREACHABLE) from None
    try:
        got = _pin(pem)
    except ValueError:
        raise AuthError(f"{url} did not serve a certificate", code=Code.CA_PIN_MISMATCH) from None
    if not hmac.compare_digest(got, pin):
        raise AuthError(f"the CA served by {url} is not the one the token names (pin {got}, "
                        f"expected {pin}): refusing to send anything", code=Code.CA_PIN_MISMATCH)
    return pem


def _verified(ca_pem: bytes) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # CERT_REQUIRED + check_hostname
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.load_verify_locations(cadata=ca_pem.decode("ascii"))
    return ctx


async def _post(url: str, ctx: ssl.SSLContext, payload: object, timeout_s: float
                ) -> dict[str, Any]:
    try:
        async with (aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout_s)) as s,
                    s.post(url, data=msgspec.json.encode(payload), ssl=ctx,
                           headers={"Content-Type": "application/json"}) as resp):
            raw = await resp.read()
            if resp.status >= 400:
                raise problem(resp.status, raw)
    except (aiohttp.ClientError, OSError, TimeoutError) as err:
        raise UnavailableError(f"enrolment service {url} unreachable: {err!r}",
                               code=Code.BROKER_UNREACHABLE) from None
    body = msgspec.json.decode(raw)
    if not isinstance(body, dict) or not isinstance(body.get("certificates"), list):
        raise ExchangeError("the enrolment service answered without certificates",
                            code=Code.EXCHANGE_ERROR)
    return body
