"""One error hierarchy and one catalogue of codes for the whole exchange (pure).

Every error carries a stable machine-readable ``code`` from ``Code``, the one catalogue: each code
is defined there once, with the error class it belongs to (and so its HTTP status). The same code
is the ``code`` member of the RFC 9457 problem+json reply, the reason of a dead-letter entry, and
the ``code`` of a validation finding (``Violation``). Library exceptions (msgspec, aiohttp,
sqlite, nats) are translated into these at the boundary where I/O meets the core; they never leak
to callers.

Grouped by cause, as httpcore does:

- ``InputError``: the peer sent something we cannot use (malformed, invalid, too big);
- ``AuthError``: who the peer is, or what it may do;
- ``NotFound``: what the peer asked for does not exist here;
- ``ConflictError``: a record contradicts what the exchange already holds;
- ``IntegrityError``: a signature, digest or proof does not verify;
- ``UnavailableError``: a part the exchange depends on is down; retry later;
- ``InternalError``: the exchange itself is at fault; retrying does not help.

Across the wire (nats.py's ``APIError.from_error``): ``ExchangeError.from_problem`` rebuilds, from
a problem+json reply, the class the other side raised, so ``except Forbidden`` works on both
sides. A rebuilt error is also a ``RemoteError`` (h11's ``RemoteProtocolError``): the peer refused;
an error raised here is not.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from typing import Any, ClassVar

import msgspec

__all__ = [
    "AuthError",
    "Code",
    "ConflictError",
    "ExchangeError",
    "Forbidden",
    "InputError",
    "IntegrityError",
    "InternalError",
    "InvalidRecord",
    "LimitExceeded",
    "NotAllowed",
    "NotFound",
    "PkiError",
    "RateLimited",
    "RemoteError",
    "RequestTimeout",
    "UnavailableError",
    "UnsupportedMediaType",
    "Violation",
]


class ExchangeError(Exception):
    """Root of every error the exchange raises on purpose."""

    #: the HTTP status of this class (``from_problem`` keeps a peer's own status)
    status: int = 500
    title: ClassVar[str] = "Exchange error"
    #: the code a class raises when none is given
    default: ClassVar[str] = "exchange_error"

    def __init__(self, message: str, *, code: Code | None = None,
                 violations: list[Violation] | None = None, **extra: Any) -> None:
        super().__init__(message)
        self.message = message
        if code is not None and not isinstance(self, code.error):
            # the catalogue is the authority: a code is raised only by its own class (or a
            # subclass), so the class rebuilt on the other side of the wire is this one
            raise TypeError(f"code {code.value!r} belongs to {code.error.__name__}, "
                            f"not {type(self).__name__}")
        self.code: str = code.value if code is not None else self.default
        self.violations = violations or []
        self.extra = extra

    @property
    def remote(self) -> bool:
        """Whether the other side of the wire raised this (rebuilt from its problem+json)."""
        return isinstance(self, RemoteError)

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

    @classmethod
    def from_problem(cls, problem: Mapping[str, Any], status: int | None = None
                     ) -> ExchangeError:
        """The error a peer raised, rebuilt from its problem+json: the class its ``code`` has
        in the catalogue (by ``status`` for a code this side does not know), marked remote."""
        raw = problem.get("code")
        code = Code.of(raw)
        status = status or _int(problem.get("status"))
        klass = (code.error if code is not None
                 else _class_for_status(status) if status else ExchangeError)
        status = status or klass.status
        err = _remote(klass)(str(problem.get("detail") or f"HTTP {status}"))
        err.code = str(raw) if isinstance(raw, str) and raw else klass.default
        err.status = status
        err.violations = [msgspec.convert(v, Violation) for v in problem.get("errors") or ()
                          if isinstance(v, dict) and _violation_like(v)]
        err.extra = {k: v for k, v in problem.items()
                     if k not in ("detail", "code", "status", "errors", "type", "title")}
        return err

    @classmethod
    def from_code(cls, code: str, message: str, status: int | None = None) -> ExchangeError:
        """A peer's error known only by its code (a WebSocket close reason, a handshake header)."""
        return cls.from_problem({"code": code, "detail": message}, status)


class RemoteError(ExchangeError):
    """Mixed into every error rebuilt from a peer's reply (see ``ExchangeError.from_problem``)."""

    title = "Refused by the peer"


_REMOTE: dict[type[ExchangeError], type[ExchangeError]] = {}


def _remote(klass: type[ExchangeError]) -> type[ExchangeError]:
    """``klass`` as rebuilt from a peer: a subclass of both ``klass`` and ``RemoteError``."""
    if klass is ExchangeError:
        return RemoteError
    sub = _REMOTE.get(klass)
    if sub is None:
        name = f"Remote{klass.__name__}"
        sub = _REMOTE[klass] = type(name, (klass, RemoteError),
                                    {"__module__": __name__, "__qualname__": name,
                                     "title": klass.title})
    return sub


class InputError(ExchangeError):
    status = 400
    title = "Bad request"
    default = "bad_request"


class InvalidRecord(InputError):
    """Records that decode but break the schema or a domain rule (422)."""

    status = 422
    title = "Invalid record"
    default = "invalid_record"


class LimitExceeded(InputError):
    status = 413
    title = "Limit exceeded"
    default = "too_large"


class UnsupportedMediaType(InputError):
    status = 415
    title = "Unsupported media type"
    default = "unsupported_media_type"


class RequestTimeout(InputError):
    status = 408
    title = "Request timeout"
    default = "body_too_slow"


class RateLimited(InputError):
    status = 429
    title = "Too many requests"
    default = "rate_limited"


class NotAllowed(InputError):
    status = 405
    title = "Method not allowed"
    default = "method_not_allowed"


class AuthError(ExchangeError):
    status = 401
    title = "Not authenticated"
    default = "not_authenticated"


class Forbidden(AuthError):
    status = 403
    title = "Forbidden"
    default = "forbidden"


class NotFound(ExchangeError):
    status = 404
    title = "Not found"
    default = "not_found"


class ConflictError(ExchangeError):
    status = 409
    title = "Conflict"
    default = "conflict"


class IntegrityError(ExchangeError):
    """A signature, digest, Merkle proof or checkpoint does not verify."""

    status = 422
    title = "Integrity check failed"
    default = "signature_invalid"


class UnavailableError(ExchangeError):
    """A part the exchange depends on is down: the same request may succeed later."""

    status = 503
    title = "Service unavailable"
    default = "unavailable"


class InternalError(ExchangeError):
    """The exchange itself is at fault (a bug, a damaged store): retrying does not help."""

    status = 500
    title = "Internal error"
    default = "internal_error"


class PkiError(ExchangeError):
    """The exchange PKI cannot do what the operator asked (``exchange pki``, loading identities)."""

    status = 500
    title = "PKI error"
    default = "pki_error"


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


_BY_STATUS: dict[int, type[ExchangeError]] = {
    400: InputError, 401: AuthError, 403: Forbidden, 404: NotFound, 405: NotAllowed,
    409: ConflictError, 413: LimitExceeded, 422: InvalidRecord, 429: RateLimited,
    503: UnavailableError,
}


def _class_for_status(status: int) -> type[ExchangeError]:
    if status in _BY_STATUS:
        return _BY_STATUS[status]
    if 400 <= status < 500:
        return InputError
    return UnavailableError if status in (502, 504) else ExchangeError


def _violation_like(v: Mapping[str, Any]) -> bool:
    return isinstance(v.get("code"), str) and isinstance(v.get("message"), str)


class Code(enum.StrEnum):
    """Every code the exchange reports, each with the error class that raises it.

    A code that is only ever a record's finding (a ``Violation``: a schema or domain rule) belongs
    to ``InvalidRecord``; ``version_conflict`` and ``stale_version`` to ``ConflictError``: a
    publish refused for those alone is a 409, any other refusal a 422.
    """

    error: type[ExchangeError]

    def __new__(cls, value: str, error: type[ExchangeError]) -> Code:
        member = str.__new__(cls, value)
        member._value_ = value
        member.error = error
        return member

    @classmethod
    def of(cls, value: object) -> Code | None:
        """The catalogue's member for a code string, or None for a code it does not know."""
        if not isinstance(value, str):
            return None
        member = cls._value2member_map_.get(value)
        return member if isinstance(member, Code) else None

    @property
    def status(self) -> int:
        return self.error.status

    # -- the request: decoding, limits, parameters -------------------------------------------
    BAD_REQUEST = "bad_request", InputError
    MALFORMED = "malformed", InputError
    SCHEMA_VIOLATION = "schema_violation", InputError
    TOO_DEEP = "too_deep", InputError
    BAD_CONFIG = "bad_config", InputError
    #: findings of ``access.check_config`` (beside ``unknown_dataset`` and ``not_enrolled``)
    DUPLICATE_DATASET = "duplicate_dataset", InputError
    UNKNOWN_GROUP = "unknown_group", InputError
    BAD_ENCODING = "bad_encoding", InputError
    #: notes of ``exchange schema validate`` on its input as a whole: a UTF-8 byte order mark
    #: skipped; a JSON array read whole rather than streamed
    BYTE_ORDER_MARK = "byte_order_mark", InputError
    NOT_STREAMED = "not_streamed", InputError
    BAD_PATHS = "bad_paths", InputError
    BAD_QUERY = "bad_query", InputError
    BAD_RANGE = "bad_range", InputError
    BAD_START = "bad_start", InputError
    BAD_SUBSCRIPTION_NAME = "bad_subscription_name", InputError
    BAD_TYPE = "bad_type", InputError
    BAD_ACK = "bad_ack", InputError
    BAD_ENTRY = "bad_entry", InputError
    BAD_KEY_NAME = "bad_key_name", InputError
    BAD_NOTE = "bad_note", InputError
    BAD_VKEY = "bad_vkey", InputError
    NO_PRIVATE_KEY = "no_private_key", InputError
    NO_STORE = "no_store", InputError
    METHOD_NOT_ALLOWED = "method_not_allowed", NotAllowed
    TOO_LARGE = "too_large", LimitExceeded
    BATCH_TOO_LARGE = "batch_too_large", LimitExceeded
    BODY_TOO_LARGE = "body_too_large", LimitExceeded
    RATE_LIMITED = "rate_limited", RateLimited
    TOO_MANY_CONNECTIONS = "too_many_connections", RateLimited
    TOO_MANY_REQUESTS = "too_many_requests", RateLimited
    BODY_TOO_SLOW = "body_too_slow", RequestTimeout

    # -- who the peer is and what it may do ----------------------------------------------------
    NOT_AUTHENTICATED = "not_authenticated", AuthError
    NO_CERTIFICATE = "no_certificate", AuthError
    BAD_CERTIFICATE = "bad_certificate", AuthError
    CERTIFICATE_EXPIRED = "certificate_expired", AuthError
    REVOKED = "revoked", AuthError
    #: the broker refused the connecting party's TLS certificate in the handshake (revoked,
    #: expired, issued by another CA): the client's own finding, never a problem reply
    CERTIFICATE_REFUSED = "certificate_refused", AuthError
    UNKNOWN_SIGNER = "unknown_signer", AuthError
    KEY_RETIRED = "key_retired", AuthError
    TOKEN_INVALID = "token_invalid", AuthError
    TOKEN_USED = "token_used", AuthError
    TOKEN_EXPIRED = "token_expired", AuthError
    CA_PIN_MISMATCH = "ca_pin_mismatch", AuthError
    FORBIDDEN = "forbidden", Forbidden
    NOT_OWNER = "not_owner", Forbidden
    NO_AGREEMENT = "no_agreement", Forbidden
    OPERATOR_ONLY = "operator_only", Forbidden
    NOT_A_NODE = "not_a_node", Forbidden
    TOKEN_NODE_MISMATCH = "token_node_mismatch", Forbidden

    # -- what was asked for ----------------------------------------------------------------------
    NOT_FOUND = "not_found", NotFound
    UNKNOWN_DATASET = "unknown_dataset", NotFound
    UNKNOWN_SCHEMA_VERSION = "unknown_schema_version", NotFound
    UNKNOWN_NODE = "unknown_node", NotFound
    BEYOND_LOG = "beyond_log", NotFound
    QUALITY_OFF = "quality_off", NotFound
    UNKNOWN_AGREEMENT = "unknown_agreement", NotFound
    UNKNOWN_RECORD = "unknown_record", NotFound

    # -- conflicts with what the exchange holds ----------------------------------------------
    CONFLICT = "conflict", ConflictError
    VERSION_CONFLICT = "version_conflict", ConflictError
    STALE_VERSION = "stale_version", ConflictError
    SUBSCRIPTION_BUSY = "subscription_busy", ConflictError
    AGREEMENT_CHANGED = "agreement_changed", ConflictError
    AGREEMENT_STATE = "agreement_state", ConflictError

    # -- signatures, digests, proofs ---------------------------------------------------------
    SIGNATURE_INVALID = "signature_invalid", IntegrityError
    SIGNER_MISMATCH = "signer_mismatch", IntegrityError
    DATASET_MISMATCH = "dataset_mismatch", IntegrityError
    DISCLOSURE_INVALID = "disclosure_invalid", IntegrityError
    PROOF_INVALID = "proof_invalid", IntegrityError
    RECEIPT_INVALID = "receipt_invalid", IntegrityError
    CHECKPOINT_INVALID = "checkpoint_invalid", IntegrityError
    CHECKPOINT_FORGED = "checkpoint_forged", IntegrityError
    SPLIT_VIEW = "split_view", IntegrityError

    # -- retry later -----------------------------------------------------------------------------
    UNAVAILABLE = "unavailable", UnavailableError
    STORE_UNAVAILABLE = "store_unavailable", UnavailableError
    STORE_CLOSED = "store_closed", UnavailableError
    CONTENDED = "contended", UnavailableError
    BROKER_UNREACHABLE = "broker_unreachable", UnavailableError
    CONNECTION_LOST = "connection_lost", UnavailableError
    SUBSCRIPTION_CLOSED = "subscription_closed", UnavailableError
    NODE_CLOSED = "node_closed", UnavailableError
    PUBLISH_FAILED = "publish_failed", UnavailableError
    NATS_SERVER_MISSING = "nats_server_missing", UnavailableError
    NATS_SERVER_EXITED = "nats_server_exited", UnavailableError
    NATS_SERVER_TIMEOUT = "nats_server_timeout", UnavailableError

    # -- the exchange's own fault ------------------------------------------------------------------
    EXCHANGE_ERROR = "exchange_error", ExchangeError
    INTERNAL_ERROR = "internal_error", InternalError
    LOG_DAMAGED = "log_damaged", InternalError
    HTTP_ERROR = "http_error", ExchangeError

    # -- the exchange PKI --------------------------------------------------------------------------
    PKI_ERROR = "pki_error", PkiError
    INVALID_NODE_ID = "invalid_node_id", PkiError
    ALREADY_INITIALISED = "already_initialised", PkiError
    NOT_INITIALISED = "not_initialised", PkiError
    ALREADY_ENROLLED = "already_enrolled", PkiError
    NOT_ENROLLED = "not_enrolled", PkiError
    ALREADY_REVOKED = "already_revoked", PkiError
    PKI_INCOMPLETE = "pki_incomplete", PkiError
    PKI_CORRUPT = "pki_corrupt", PkiError
    PKI_IO = "pki_io", PkiError
    BAD_CSR = "bad_csr", InputError
    BAD_AGREEMENT = "bad_agreement", InputError
    UNKNOWN_ATTRIBUTE = "unknown_attribute", InputError
    UNSUPPORTED_MEDIA_TYPE = "unsupported_media_type", UnsupportedMediaType
    NO_CA_KEY = "no_ca_key", PkiError
    KEY_MISMATCH_CERT = "cert_key_mismatch", PkiError
    NOT_ROTATING = "not_rotating", PkiError

    # -- a record's findings: the gate, the schemas, the domain rules --------------------------
    INVALID_RECORD = "invalid_record", InvalidRecord
    RECORDS_REJECTED = "records_rejected", InvalidRecord
    SOURCE_MISMATCH = "source_mismatch", InvalidRecord
    KEY_MISMATCH = "key_mismatch", InvalidRecord
    TOO_MANY_FIELDS = "too_many_fields", InvalidRecord
    MISSING_FIELD = "missing_field", InvalidRecord
    UNKNOWN_FIELD = "unknown_field", InvalidRecord
    TYPE_MISMATCH = "type_mismatch", InvalidRecord
    BAD_DATASCHEMA = "bad_dataschema", InvalidRecord
    NOT_NORMALISED = "not_normalised", InvalidRecord
    FUTURE_DATE = "future_date", InvalidRecord
    BAD_TIME = "bad_time", InvalidRecord
    UNKNOWN_PROVINCE = "unknown_province", InvalidRecord
    UNKNOWN_WARD = "unknown_ward", InvalidRecord
    WARD_NOT_IN_PROVINCE = "ward_not_in_province", InvalidRecord
    UNKNOWN_COUNTRY = "unknown_country", InvalidRecord
    # population
    ID_FORMAT = "id_format", InvalidRecord
    SEX_CODE = "sex_code", InvalidRecord
    UNKNOWN_BIRTH_PROVINCE = "unknown_birth_province", InvalidRecord
    ID_BIRTH_PROVINCE_MISMATCH = "id_birth_province_mismatch", InvalidRecord
    ID_BIRTH_YEAR_MISMATCH = "id_birth_year_mismatch", InvalidRecord
    ID_CENTURY_SEX_MISMATCH = "id_century_sex_mismatch", InvalidRecord
    DEATH_BEFORE_BIRTH = "death_before_birth", InvalidRecord
    DEATH_DATE_REQUIRED = "death_date_required", InvalidRecord
    DEATH_DATE_NOT_ALLOWED = "death_date_not_allowed", InvalidRecord
    RELATIONSHIP_CODE = "relationship_code", InvalidRecord
    HOUSEHOLD_INCOMPLETE = "household_incomplete", InvalidRecord
    HOUSEHOLD_HEAD_MISMATCH = "household_head_mismatch", InvalidRecord
    # tax
    TAX_ID_FORMAT = "tax_id_format", InvalidRecord
    TAX_ID_KIND = "tax_id_kind", InvalidRecord
    TAX_ID_PERSONAL_MISMATCH = "tax_id_personal_mismatch", InvalidRecord
    TAX_OFFICE_FORMAT = "tax_office_format", InvalidRecord
    TAXPAYER_KIND = "taxpayer_kind", InvalidRecord
    STATUS_CODE = "status_code", InvalidRecord
    PERSONAL_ID_REQUIRED = "personal_id_required", InvalidRecord
    AS_OF_BEFORE_REGISTRATION = "as_of_before_registration", InvalidRecord
    MST_SERIAL = "mst_serial", InvalidRecord
    MST_BRANCH = "mst_branch", InvalidRecord
    MST_CHECKSUM = "mst_checksum", InvalidRecord
    # land
    PARCEL_ID_FORMAT = "parcel_id_format", InvalidRecord
    PARCEL_ID_OUTSIDE_VIETNAM = "parcel_id_outside_vietnam", InvalidRecord
    PARCEL_NUMBER_RANGE = "parcel_number_range", InvalidRecord
    MAP_SHEET_RANGE = "map_sheet_range", InvalidRecord
    AREA_RANGE = "area_range", InvalidRecord
    AREA_PRECISION = "area_precision", InvalidRecord
    LAND_PURPOSE = "land_purpose", InvalidRecord
    CERTIFICATE_SERIAL = "certificate_serial", InvalidRecord
    WARD_MISMATCH = "ward_mismatch", InvalidRecord
    OWNER_ID = "owner_id", InvalidRecord
    # vehicle
    PLATE_FORMAT = "plate_format", InvalidRecord
    PLATE_SERIES = "plate_series", InvalidRecord
    PLATE_PROVINCE = "plate_province", InvalidRecord
    VIN_FORMAT = "vin_format", InvalidRecord
    VEHICLE_KIND = "vehicle_kind", InvalidRecord
    YEAR_RANGE = "year_range", InvalidRecord
    REGISTRATION_BEFORE_MANUFACTURE = "registration_before_manufacture", InvalidRecord


class Violation(msgspec.Struct, frozen=True, omit_defaults=True):
    """One finding about one record: where, what (a ``Code``), and a sentence for people.

    ``path`` is a JSONPath into the record's ``data`` (``$.address.ward_code``); ``index`` is the
    record's position in its batch or file. On the wire ``code`` is a plain string, so a
    subscriber decodes findings with codes newer than its own catalogue.
    """

    code: str
    message: str
    path: str = "$"
    index: int | None = None

    def at(self, index: int) -> Violation:
        return Violation(self.code, self.message, self.path, index)

    @property
    def conflict(self) -> bool:
        """A finding about versions alone (a 409 when every finding of a publish is one)."""
        code = Code.of(self.code)
        return code is not None and issubclass(code.error, ConflictError)
