"""One error hierarchy for the whole exchange.

Every error carries a stable machine-readable ``code``. The same code is the ``code`` member of the
RFC 9457 problem+json reply, the reason of a dead-letter entry, and the ``code`` of a validation
finding. Library exceptions (msgspec, aiohttp, sqlite, nats) are translated into these at the
boundary where I/O meets the core; they never leak to callers.

Grouped by cause, as httpcore does:

- ``InputError``: the peer sent something we cannot use (malformed, invalid, too big);
- ``AuthError``: who the peer is, or what it may do;
- ``ConflictError``: a record contradicts what the exchange already holds;
- ``IntegrityError``: a signature, digest or proof does not verify;
- ``UnavailableError``: a part the exchange depends on is down; retry later.
"""

from __future__ import annotations

from typing import Any, ClassVar

import msgspec

__all__ = [
    "AuthError",
    "ConflictError",
    "ExchangeError",
    "InputError",
    "IntegrityError",
    "LimitExceeded",
    "NotFound",
    "UnavailableError",
    "Violation",
]


class Violation(msgspec.Struct, frozen=True, omit_defaults=True):
    """One finding about one record: where, what (stable code), and a sentence for people.

    ``path`` is a JSONPath into the record's ``data`` (``$.address.ward_code``); ``index`` is the
    record's position in its batch or file.
    """

    code: str
    message: str
    path: str = "$"
    index: int | None = None

    def at(self, index: int) -> Violation:
        return Violation(self.code, self.message, self.path, index)


class ExchangeError(Exception):
    """Root of every error the exchange raises on purpose."""

    code: ClassVar[str] = "exchange_error"
    status: ClassVar[int] = 500
    title: ClassVar[str] = "Exchange error"

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        violations: list[Violation] | None = None,
        **extra: Any,
    ) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code  # type: ignore[misc]  # instance override of the class default
        self.violations = violations or []
        self.extra = extra

    def problem(self, instance: str | None = None) -> dict[str, Any]:
        """The RFC 9457 problem details object for this error."""
        body: dict[str, Any] = {
            "type": f"https://exchange.gov.vn/problems/{self.code}",
            "title": self.title,
            "status": self.status,
            "detail": self.message,
            "code": self.code,
        }
        if instance is not None:
            body["instance"] = instance
        if self.violations:
            body["errors"] = [msgspec.to_builtins(v) for v in self.violations]
        body.update(self.extra)
        return body


class InputError(ExchangeError):
    code = "bad_request"
    status = 400
    title = "Bad request"


class InvalidRecord(InputError):
    """Records that decode but break the schema or a domain rule (422)."""

    code = "invalid_record"
    status = 422
    title = "Invalid record"


class LimitExceeded(InputError):
    code = "too_large"
    status = 413
    title = "Limit exceeded"


class RateLimited(InputError):
    code = "rate_limited"
    status = 429
    title = "Too many requests"


class AuthError(ExchangeError):
    code = "not_authenticated"
    status = 401
    title = "Not authenticated"


class Forbidden(AuthError):
    code = "forbidden"
    status = 403
    title = "Forbidden"


class NotFound(ExchangeError):
    code = "not_found"
    status = 404
    title = "Not found"


class ConflictError(ExchangeError):
    code = "conflict"
    status = 409
    title = "Conflict"


class IntegrityError(ExchangeError):
    """A signature, digest, Merkle proof or checkpoint does not verify."""

    code = "signature_invalid"
    status = 422
    title = "Integrity check failed"


class UnavailableError(ExchangeError):
    code = "unavailable"
    status = 503
    title = "Service unavailable"


class PkiError(ExchangeError):
    """The exchange PKI cannot do what the operator asked (``exchange pki``, loading identities).

    Codes: ``invalid_node_id``, ``already_initialised``, ``not_initialised``, ``already_enrolled``,
    ``unknown_node``, ``already_revoked``, ``pki_incomplete``, ``pki_corrupt``, ``pki_io``.
    """

    code = "pki_error"
    status = 500
    title = "PKI error"
