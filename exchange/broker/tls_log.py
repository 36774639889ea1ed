"""A structured log line for every refused TLS handshake (no certificate, a foreign CA, an
expired or revoked certificate). asyncio drops these silently (an ``ssl.SSLError`` is an
``OSError``, logged only in debug mode); the broker wraps the one place it learns of them.

This reaches into ``asyncio.sslproto`` (CPython's, 3.11 to 3.13): if the hook is not there, the
broker runs as before and says once that handshake refusals will not be logged.
"""

from __future__ import annotations

import ssl
from asyncio import sslproto
from typing import Any

import structlog

from exchange.core.errors import Code

__all__ = ["log_handshake_refusals"]

logger = structlog.get_logger("exchange.broker")


def _code(exc: BaseException) -> str:
    if isinstance(exc, ssl.SSLCertVerificationError):
        message = (exc.verify_message or "").lower()
        if "revoked" in message:
            return Code.REVOKED
        if "expired" in message:
            return Code.CERTIFICATE_EXPIRED
        return Code.BAD_CERTIFICATE
    reason = getattr(exc, "reason", "") or ""
    if "CERTIFICATE" in reason and "RETURN" in reason:
        return Code.NO_CERTIFICATE
    return Code.NOT_AUTHENTICATED


def log_handshake_refusals() -> bool:
    """Install the hook (once per process); whether it could be."""
    original = getattr(sslproto.SSLProtocol, "_on_handshake_complete", None)
    if original is None:
        logger.warning("tls_refusals_not_logged", reason="asyncio has no handshake hook")
        return False
    if getattr(original, "_exchange_logged", False):
        return True

    def on_handshake_complete(self: Any, handshake_exc: BaseException | None) -> None:
        if handshake_exc is not None:
            transport = getattr(self, "_transport", None)
            peer = transport.get_extra_info("peername") if transport is not None else None
            logger.info("refused", code=_code(handshake_exc), status="tls_handshake",
                        peer=peer[0] if peer else None,
                        detail=getattr(handshake_exc, "verify_message", None)
                        or getattr(handshake_exc, "reason", None) or str(handshake_exc))
        original(self, handshake_exc)

    on_handshake_complete._exchange_logged = True  # type: ignore[attr-defined]
    sslproto.SSLProtocol._on_handshake_complete = on_handshake_complete  # type: ignore[method-assign]
    return True
