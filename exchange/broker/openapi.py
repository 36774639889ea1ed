"""The broker's HTTP API as an OpenAPI 3.1 document, and its WebSocket protocols in AsyncAPI 3.0.

Pure: ``openapi()`` and ``asyncapi()`` build plain dicts from the route table below and the
project's own msgspec wire types (``msgspec.json.schema_components``: JSON Schema 2020-12, the
dialect OpenAPI 3.1 and AsyncAPI 3.0 take as is). ``docs/openapi.json`` and
``docs/asyncapi.json`` are these documents, committed; a test checks they are fresh and that
every route ``create_app`` registers is described here. The broker serves the first at
``GET /v1/openapi.json``.

A route is one ``Op`` entry in ``OPERATIONS``: who may call it, its query parameters, its
success replies and, per error status, the problem ``code``s it can answer with (the
catalogue's, ``exchange.core.errors.Code``). Path parameters are named once in ``PATH_PARAMS``;
the errors every route can answer (``COMMON_ERRORS``) are added to each.
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, get_args

import msgspec

from exchange.broker.agreements import NewRequest
from exchange.core.agreements import AgreementRecord, Decision, State
from exchange.core.errors import Code, Violation
from exchange.core.quality import Counters
from exchange.core.signing import BatchIn
from exchange.core.wire import (
    CLOSE_AGREEMENT_CHANGED,
    CLOSE_BAD_FRAME,
    CLOSE_FORBIDDEN,
    PROBLEM_CODE_HEADER,
    Ack,
    Credit,
    Hello,
    PublishReply,
    Records,
    SignedReceipt,
)

__all__ = ["OPERATIONS", "Op", "asyncapi", "document_text", "openapi"]

VERSION = "0.1.0"
PROBLEM = "application/problem+json"
JSON = "application/json"
MSGPACK = "application/msgpack"
PEM = "application/pem-certificate-chain"
#: what a published batch may be sent as (``app.BATCH_TYPES``; a test keeps the two equal)
BATCH_TYPES = (JSON, MSGPACK, "application/x-msgpack")
_REF = "#/components/schemas/{name}"


def ref(name: str) -> dict[str, Any]:
    return {"$ref": _REF.format(name=name)}


def _array(items: dict[str, Any]) -> dict[str, Any]:
    return {"type": "array", "items": items}


def _obj(**props: Any) -> dict[str, Any]:
    """An object schema: ``props`` by name, every one required, no others."""
    return {"type": "object", "properties": props, "required": list(props),
            "additionalProperties": False}


_INT = {"type": "integer"}
_NUM = {"type": "number"}
_STR = {"type": "string"}
_BOOL = {"type": "boolean"}
_B64 = {"type": "string", "contentEncoding": "base64"}
_NULLABLE_NUM = {"type": ["number", "null"]}
_GROUPS = {"type": "object", "additionalProperties": _array(_STR),
           "description": "disclosure group -> the record fields it discloses"}


# -- the route table --------------------------------------------------------------------------


@dataclass(frozen=True)
class Param:
    """A query parameter."""

    name: str
    schema: dict[str, Any]
    description: str
    required: bool = False


@dataclass(frozen=True)
class Op:
    """One operation: enough to write its OpenAPI entry."""

    id: str
    summary: str
    tag: str
    #: who may call it: ``any`` (a node or an operator), ``node``, ``operator``, or a sentence
    who: str
    #: status -> media type -> schema of the success replies
    ok: Mapping[int, Mapping[str, dict[str, Any]]]
    #: status -> the problem codes it can carry (None: any code of the catalogue)
    errors: Mapping[int, Sequence[str] | None] = field(default_factory=dict)
    description: str = ""
    query: Sequence[Param] = ()
    #: media type -> schema of the request body
    body: Mapping[str, dict[str, Any]] | None = None
    #: a WebSocket route: described in the AsyncAPI document, not callable as plain HTTP
    websocket: bool = False
    #: response headers of the success replies, by name
    headers: Mapping[str, dict[str, Any]] = field(default_factory=dict)


#: path parameters, by name: every route that has one shares its description
PATH_PARAMS: dict[str, tuple[dict[str, Any], str]] = {
    "dataset": ({"type": "string", "pattern": "^[a-z][a-z0-9_]*$", "maxLength": 64},
                "a dataset name: population, tax, land, vehicle, agreement, ..."),
    "version": ({"type": "string", "pattern": "^[1-9][0-9]*$"},
                "a schema version of the dataset (1, 2, ...)"),
    "node": ({"type": "string", "pattern": r"^[a-z0-9]+(\.[a-z0-9-]+)+$", "maxLength": 128},
             "a node id, e.g. vn.gov.mps.population"),
    "publisher": ({"type": "string", "pattern": r"^[a-z0-9]+(\.[a-z0-9-]+)+$",
                   "maxLength": 128}, "the publishing node's id"),
    "key": ({"type": "string", "minLength": 1, "maxLength": 128},
            "the record's key (its envelope's subject: citizen id, tax id, parcel id, plate)"),
    "id": ({"type": "string", "pattern": "^agr-[0-9a-f]{16}$"}, "an agreement id"),
}

#: what every route can answer, whoever calls it: its certificate revoked since the handshake
#: (401), too many requests of the caller in progress (429), a fault of the broker (500), its
#: store unreachable (503)
COMMON_ERRORS: dict[int, tuple[str, ...]] = {
    401: (Code.NO_CERTIFICATE, Code.BAD_CERTIFICATE, Code.REVOKED),
    429: (Code.TOO_MANY_REQUESTS,),
    500: (Code.INTERNAL_ERROR,),
    503: (Code.STORE_UNAVAILABLE, Code.STORE_CLOSED, Code.UNAVAILABLE),
}

#: the errors of a route that reads a body
BODY_ERRORS: dict[int, tuple[str, ...]] = {
    408: (Code.BODY_TOO_SLOW,),
    413: (Code.BODY_TOO_LARGE,),
}

_WHO = {
    "any": "Any enrolled party: a node or an operator.",
    "node": "Nodes only: an operator's certificate is refused (403 `not_a_node`).",
    "operator": "Operators only: a node's certificate is refused (403 `operator_only`).",
}

_ETAG = {"description": "the SHA-256 of the schema as served (the `sha256` its version lists)",
         "schema": _STR}
#: the states ``GET /v1/agreements?state=`` takes (``app.AGREEMENT_STATES``; a test keeps the
#: two equal): the stored ones and ``expired``, derived from the time
AGREEMENT_STATES = (*get_args(State), "expired")
_INT_QUERY = {"type": "integer", "minimum": 0, "maximum": 2**63 - 1}
_LOG_ERRORS: dict[int, Sequence[str] | None] = {
    400: (Code.BAD_QUERY, Code.BAD_RANGE), 404: (Code.BEYOND_LOG,)}

OPERATIONS: dict[tuple[str, str], Op] = {
    ("GET", "/healthz"): Op(
        "healthz", "Liveness, the broker's id and the log's head", "broker", "any",
        {200: {JSON: ref("Health")}}),
    ("GET", "/v1/openapi.json"): Op(
        "openapi", "This document", "broker", "any",
        {200: {JSON: {"type": "object", "required": ["openapi", "info", "paths"]}}},
        description="The OpenAPI 3.1 description of the broker's HTTP API (also committed as "
        "`docs/openapi.json`). Like every route it takes a client certificate: the broker's "
        "TLS handshake requires one; the committed copy is the public one."),
    ("GET", "/v1/datasets"): Op(
        "listDatasets", "The datasets served here, with owner, schema and head", "datasets",
        "any", {200: {JSON: _array(ref("DatasetSummary"))}}),
    ("GET", "/v1/schemas"): Op(
        "listSchemas", "Every dataset schema the exchange knows, with its versions", "schemas",
        "any", {200: {JSON: _array(ref("SchemaSummary"))}}),
    ("GET", "/v1/schemas/{dataset}"): Op(
        "getLatestSchema", "The latest JSON Schema 2020-12 of a dataset's records", "schemas",
        "any", {200: {"application/schema+json": ref("DatasetSchema")}},
        {404: (Code.UNKNOWN_DATASET,)}, headers={"ETag": _ETAG}),
    ("GET", "/v1/schemas/{dataset}/versions"): Op(
        "listSchemaVersions", "Every version of a dataset's schema, with its compatibility mode",
        "schemas", "any", {200: {JSON: ref("SchemaVersions")}},
        {404: (Code.UNKNOWN_DATASET,)}),
    ("GET", "/v1/schemas/{dataset}/{version}"): Op(
        "getSchema", "One version of a dataset's JSON Schema (immutable once published)",
        "schemas", "any", {200: {"application/schema+json": ref("DatasetSchema")}},
        {404: (Code.UNKNOWN_DATASET, Code.UNKNOWN_SCHEMA_VERSION)},
        headers={"ETag": _ETAG, "Cache-Control": {
            "description": "a published version never changes: `immutable`",
            "schema": _STR}}),
    ("POST", "/v1/datasets/{dataset}/records"): Op(
        "publishBatch", "Publish one signed batch", "publish",
        "The dataset's owner node only (403 `not_owner`; an operator: `not_a_node`).",
        {200: {JSON: ref("SignedReceipt")}},
        {400: (Code.MALFORMED, Code.SCHEMA_VIOLATION, Code.UNKNOWN_ATTRIBUTE, Code.TOO_DEEP),
         401: (Code.UNKNOWN_SIGNER, Code.KEY_RETIRED),
         403: (Code.NOT_OWNER, Code.NOT_A_NODE),
         404: (Code.UNKNOWN_DATASET,),
         # every rejection a version conflict or a stale version (a retry, a race)
         409: (Code.VERSION_CONFLICT, Code.STALE_VERSION, Code.RECORDS_REJECTED),
         413: (Code.BATCH_TOO_LARGE, Code.TOO_LARGE),
         415: (Code.UNSUPPORTED_MEDIA_TYPE,),
         # a whole batch that does not verify, or some records refused: their codes
         422: None,
         503: (Code.CONTENDED, Code.STORE_UNAVAILABLE, Code.STORE_CLOSED, Code.UNAVAILABLE),
         **BODY_ERRORS},
        description="The body is a `Batch` (README: *Over plain HTTPS and WebSocket*), JSON "
        "or MessagePack. 200 with the broker's signed receipt when every record was accepted "
        "or a duplicate. When some records are refused the reply is a problem (409 when every "
        "refusal is a version conflict, else 422) whose `errors` name each refused record "
        "(index, path, code, message) and whose `receipt` is the signed receipt for the rest; "
        "`code` is the refusals' one code, or `records_rejected`. Refused records are kept as "
        "dead letters (`GET /v1/dead-letters`).",
        body={JSON: ref("BatchIn"), MSGPACK: ref("BatchIn"),
              "application/x-msgpack": ref("BatchIn")}),
    ("GET", "/v1/datasets/{dataset}/publish"): Op(
        "publishStream", "Publish batches on a WebSocket (AsyncAPI: `publish`)", "publish",
        "The dataset's owner node only.",
        {101: {}},
        {400: (Code.HTTP_ERROR,), 403: (Code.NOT_OWNER, Code.NOT_A_NODE),
         404: (Code.UNKNOWN_DATASET,), 429: (Code.TOO_MANY_CONNECTIONS,)},
        description="A WebSocket upgrade. The node sends `Batch` frames (text: JSON, binary: "
        "MessagePack); the broker answers each with one `PublishReply` frame in the same "
        "encoding, in order. Frames are described in `docs/asyncapi.json`.",
        websocket=True),
    ("GET", "/v1/datasets/{dataset}/subscribe"): Op(
        "subscribeStream", "Subscribe on a WebSocket (AsyncAPI: `subscribe`)", "subscribe",
        "Nodes with an agreement on the dataset (or its owner).",
        {101: {}},
        {400: (Code.BAD_SUBSCRIPTION_NAME, Code.BAD_ENCODING, Code.BAD_PATHS, Code.BAD_START,
               Code.HTTP_ERROR),
         403: (Code.NO_AGREEMENT, Code.NOT_A_NODE), 404: (Code.UNKNOWN_DATASET,),
         409: (Code.SUBSCRIPTION_BUSY,), 429: (Code.TOO_MANY_CONNECTIONS,)},
        description="A WebSocket upgrade for a durable, named subscription. The broker sends "
        "`hello`, then `records` frames within the credit the client grants (`credit`); the "
        "client acks cumulatively (`ack`). Close codes 4400 (bad frame), 4403 (no agreement "
        "any more), 4409 (agreement changed), with the catalogue code as the reason. Frames "
        "are described in `docs/asyncapi.json`.",
        query=(
            Param("name", {"type": "string", "pattern": "^[A-Za-z0-9_.-]{1,64}$",
                           "default": "default"}, "the subscription's name"),
            Param("start", {"type": "string", "default": "earliest",
                            "pattern": r"^(earliest|latest|seq:[0-9]+|time:.+)$"},
                  "where a new subscription starts: earliest, latest, seq:N (the first seq "
                  "delivered) or time:RFC3339; a known subscription resumes after its ack"),
            Param("encoding", {"enum": ["json", "msgpack"], "default": "json"},
                  "frames as JSON text or MessagePack binary"),
            Param("paths", {"enum": ["auto", "always"], "default": "auto"},
                  "always: every record with its audit path, even in a whole batch"),
        ),
        websocket=True),
    ("GET", "/v1/datasets/{dataset}/records/{key}"): Op(
        "lookupRecord", "The current version of one record, as a subscription delivers it",
        "exchange", "Nodes with an agreement on the dataset (or its owner).",
        {200: {JSON: ref("Lookup")}},
        {403: (Code.NO_AGREEMENT, Code.NOT_A_NODE),
         404: (Code.UNKNOWN_DATASET, Code.UNKNOWN_RECORD)},
        description="Projected to the groups the caller's agreement grants and framed exactly "
        "as a `records` frame (publisher's signature, batch, audit path), with its seq for an "
        "inclusion proof. Recorded as an access (`GET /v1/access`)."),
    ("GET", "/v1/subscriptions"): Op(
        "listSubscriptions", "Durable subscriptions with their lag", "subscribe",
        "Any: a node sees its own subscriptions, an operator every one.",
        {200: {JSON: _array(ref("Subscription"))}}),
    ("GET", "/v1/dead-letters"): Op(
        "listDeadLetters", "Refused records, oldest first", "publish",
        "A node reads its own (naming another node: 403 `operator_only`); an operator names "
        "the node with `node=` (required for an operator).",
        {200: {JSON: _array(ref("DeadLetterView"))}},
        {400: (Code.BAD_QUERY,), 403: (Code.OPERATOR_ONLY,)},
        query=(
            Param("node", PATH_PARAMS["node"][0], "whose dead letters (an operator: required)"),
            Param("after", {**_INT_QUERY, "default": 0},
                  "a cursor: the last `id` seen; the page starts after it"),
            Param("limit", {"type": "integer", "default": 100},
                  "page size, clamped to 1..1000"),
        )),
    ("GET", "/v1/nodes/{node}/certificate"): Op(
        "getNodeCertificate", "A node's current signing certificate (PEM)", "pki", "any",
        {200: {PEM: _STR}}, {404: (Code.UNKNOWN_NODE,)},
        description="For subscribers to check against the exchange CA themselves: the broker "
        "serves it, but cannot forge it. The broker's own id gives the broker's certificate."),
    ("GET", "/v1/nodes/{node}/certificates"): Op(
        "getNodeCertificates", "Every signing certificate a node was issued (PEM bundle)", "pki",
        "any", {200: {PEM: _STR}}, {404: (Code.UNKNOWN_NODE,)},
        description="In the order issued, the current one last: records signed before a key "
        "rotation verify against the certificate of their statement's key id."),
    ("GET", "/v1/quality"): Op(
        "getQuality", "The four quality scores of every dataset", "quality", "operator",
        {200: {JSON: ref("QualityReport")}},
        {403: (Code.OPERATOR_ONLY,), 404: (Code.QUALITY_OFF,)}),
    ("GET", "/v1/quality/{dataset}"): Op(
        "getDatasetQuality", "The quality scores of one dataset", "quality",
        "The dataset's owner node or an operator (otherwise 403 `operator_only`).",
        {200: {JSON: ref("QualityReport")}},
        {403: (Code.OPERATOR_ONLY,), 404: (Code.UNKNOWN_DATASET, Code.QUALITY_OFF)}),
    ("GET", "/v1/quality/{dataset}/{publisher}"): Op(
        "getPublisherQuality", "The quality scores of one dataset from one publisher",
        "quality", "The dataset's owner node or an operator (otherwise 403 `operator_only`).",
        {200: {JSON: ref("QualityReport")}},
        {403: (Code.OPERATOR_ONLY,), 404: (Code.UNKNOWN_DATASET, Code.QUALITY_OFF)}),
    ("GET", "/metrics"): Op(
        "metrics", "Prometheus metrics", "quality", "operator",
        {200: {"text/plain": _STR}},
        {403: (Code.OPERATOR_ONLY,)},
        description="The Prometheus text format (`text/plain; version=...`): quality counters "
        "and scores and every subscription's lag (when quality scoring is on), and the "
        "operational metrics: log size, checkpoint age, connected nodes, certificate and CRL "
        "expiry, process CPU, memory and descriptors."),
    ("GET", "/v1/catalog"): Op(
        "getCatalog", "The catalogue: what each dataset served here is", "exchange", "any",
        {200: {JSON: _array(ref("CatalogEntry"))}}),
    ("GET", "/v1/catalog/{dataset}"): Op(
        "getCatalogEntry", "The catalogue entry of one dataset", "exchange", "any",
        {200: {JSON: ref("CatalogEntry")}}, {404: (Code.UNKNOWN_DATASET,)}),
    ("GET", "/v1/access"): Op(
        "getAccess", "Who received each version of one record", "exchange",
        "The dataset's owner node or an operator (otherwise 403 `operator_only`).",
        {200: {JSON: ref("AccessReport")}},
        {400: (Code.BAD_QUERY,), 403: (Code.OPERATOR_ONLY,), 404: (Code.UNKNOWN_DATASET,)},
        description="Every version of the record and, for each, the agencies delivered it or "
        "that looked it up: when, under which agreement and purpose, with which groups "
        "(Decree 13/2023/NĐ-CP Art. 9).",
        query=(Param("dataset", _STR, "the record's dataset", required=True),
               Param("key", _STR, "the record's key", required=True))),
    ("GET", "/v1/agreements"): Op(
        "listAgreements", "The agreements the caller may see, newest first", "agreements",
        "Any: a node sees those it asked for and those on datasets it owns; an operator all.",
        {200: {JSON: _array(ref("AgreementView"))}}, {400: (Code.BAD_QUERY,)},
        query=(Param("state", {"enum": list(AGREEMENT_STATES)},
                     "only agreements in this state"),
               Param("dataset", _STR, "only agreements on this dataset"))),
    ("POST", "/v1/agreements"): Op(
        "requestAgreement", "Ask a dataset's owner for an agreement (signed)", "agreements",
        "node", {201: {JSON: ref("AgreementView")}},
        {400: (Code.BAD_AGREEMENT, Code.MALFORMED, Code.UNKNOWN_GROUP),
         401: (Code.KEY_RETIRED, Code.UNKNOWN_SIGNER),
         403: (Code.FORBIDDEN, Code.NOT_A_NODE), 404: (Code.UNKNOWN_DATASET,),
         409: (Code.AGREEMENT_STATE,), 422: (Code.SIGNATURE_INVALID,), **BODY_ERRORS},
        description="The subscriber's request and its Ed25519 signature over "
        "`vn-exchange/agreement-request/v1\\n` ‖ JSON(request, keys sorted). 201 with the "
        "stored agreement (state `requested`).",
        body={JSON: ref("NewRequest")}),
    ("GET", "/v1/agreements/{id}"): Op(
        "getAgreement", "One agreement, with every signature and its log seq", "agreements",
        "Any party that may see it (as for the list).",
        {200: {JSON: ref("AgreementView")}}, {404: (Code.UNKNOWN_AGREEMENT,)}),
    ("POST", "/v1/agreements/{id}/decisions"): Op(
        "decideAgreement", "Approve, reject, countersign or revoke (signed)", "agreements",
        "The owner node (approve, reject, revoke) or an operator (countersign, revoke).",
        {200: {JSON: ref("AgreementView")}},
        {400: (Code.BAD_AGREEMENT, Code.MALFORMED),
         401: (Code.KEY_RETIRED, Code.UNKNOWN_SIGNER),
         403: (Code.FORBIDDEN, Code.NOT_OWNER, Code.OPERATOR_ONLY),
         404: (Code.UNKNOWN_AGREEMENT,), 409: (Code.AGREEMENT_STATE,),
         422: (Code.SIGNATURE_INVALID,), **BODY_ERRORS},
        body={JSON: ref("Decision")}),
    ("GET", "/v1/log/checkpoint"): Op(
        "getCheckpoint", "The latest signed checkpoint", "log", "any",
        {200: {"text/plain": _STR}},
        description="A C2SP tlog-checkpoint in a signed note, by the broker's Ed25519 key."),
    ("GET", "/v1/log/key"): Op(
        "getLogKey", "The checkpoint verifier key (signed-note vkey)", "log", "any",
        {200: {JSON: ref("LogKey")}},
        description="Trust it via the broker's signing certificate "
        "(`GET /v1/nodes/{broker}/certificate`), not because this route says so."),
    ("GET", "/v1/log/proof/inclusion"): Op(
        "getInclusionProof", "An RFC 9162 inclusion proof of one log entry", "log", "any",
        {200: {JSON: ref("InclusionProof")}}, _LOG_ERRORS,
        query=(Param("seq", _INT_QUERY, "the entry (a record's seq), below `size`",
                     required=True),
               Param("size", {**_INT_QUERY, "minimum": 1}, "the tree size (of a checkpoint)",
                     required=True))),
    ("GET", "/v1/log/proof/consistency"): Op(
        "getConsistencyProof", "An RFC 9162 consistency proof between two tree sizes", "log",
        "any", {200: {JSON: ref("ConsistencyProof")}}, _LOG_ERRORS,
        query=(Param("from", {**_INT_QUERY, "minimum": 1},
                     "the older size (RFC 9162 §2.1.4: no proof from the empty tree)",
                     required=True),
               Param("to", {**_INT_QUERY, "minimum": 1}, "the newer size, >= `from`",
                     required=True))),
    ("GET", "/v1/log/entries"): Op(
        "getLogEntries", "Log entries start..end (end exclusive, at most 1000)", "log", "any",
        {200: {JSON: _array(ref("LogEntry"))}}, _LOG_ERRORS,
        query=(Param("start", _INT_QUERY, "the first seq", required=True),
               Param("end", _INT_QUERY, "past the last seq (clamped to the log's size)",
                     required=True))),
}


# -- schemas ----------------------------------------------------------------------------------

#: the project's wire types, as msgspec exports them (JSON Schema 2020-12)
WIRE_TYPES: tuple[Any, ...] = (BatchIn, SignedReceipt, PublishReply, NewRequest, Decision,
                               AgreementRecord, Violation, Credit, Ack, Hello, Records, Counters)

_SCORES = _obj(
    correct=_NULLABLE_NUM, sufficient=_NULLABLE_NUM, clean=_NULLABLE_NUM, live=_NUM,
    stale=_BOOL, unresolved_references=_INT, seconds_since_update=_NULLABLE_NUM)
_LAG = _obj(node=_STR, dataset=_STR, name=_STR, acked=_INT, lag=_INT, lag_s=_NUM)


def _handwritten() -> dict[str, dict[str, Any]]:
    """Replies the broker builds as plain dicts (no wire type of their own)."""
    quality_entry = _obj(
        scores=ref("Scores"), counters=ref("Counters"), update_interval_s=_NUM,
        publishers={"type": "object", "additionalProperties": _obj(
            scores=ref("Scores"), counters=ref("Counters"))},
        unresolved=_array(_obj(target_dataset=_STR, target_key=_STR, key=_STR)),
        latency_ms={"type": "object", "additionalProperties": _obj(
            p50=_NULLABLE_NUM, p95=_NULLABLE_NUM, p99=_NULLABLE_NUM)},
        subscriptions=_array(ref("Lag")))
    lang = {"oneOf": [_obj(vi=_STR, en=_STR), _STR]}
    return {
        "Problem": {
            "title": "Problem",
            "description": "RFC 9457 problem details. `code` is the exchange's stable code "
            "(the catalogue `exchange.core.errors.Code`), repeated in the `Problem-Code` "
            "header. A publish's refusals list each refused record in `errors` and carry the "
            "signed `receipt` for the rest.",
            "type": "object",
            "properties": {
                "type": {"type": "string", "format": "uri"},
                "title": _STR,
                "status": {"type": "integer", "minimum": 400, "maximum": 599},
                "detail": _STR,
                "code": {"type": "string", "pattern": "^[a-z][a-z0-9_]*$"},
                "instance": _STR,
                "errors": _array(ref("Violation")),
                "receipt": ref("SignedReceipt"),
            },
            "required": ["type", "title", "status", "detail", "code"],
            "additionalProperties": True,
        },
        "Health": {
            **_obj(status={"const": "ok"}, broker=_STR, head=_INT, uptime_s=_NUM,
                   store={"enum": ["sqlite", "nats", "unknown"]}),
            "properties": {
                "status": {"const": "ok"}, "broker": _STR, "head": _INT, "uptime_s": _NUM,
                "store": {"enum": ["sqlite", "nats", "unknown"]},
                "cluster": {**_obj(connected=_BOOL, server={"type": ["string", "null"]},
                                   servers=_INT, replicas={"type": ["integer", "null"]},
                                   sequencer={"type": "boolean", "description":
                                              "whether this broker holds the sequencer "
                                              "lease: it grows the log and signs checkpoints"}),
                            "description": "the NATS store only: what its client knows of "
                                           "the cluster, without asking it"}}},
        "DatasetSummary": _obj(name=_STR, owner=_STR, version=_INT, versions=_array(_INT),
                               type=_STR, dataschema=_STR, groups=_GROUPS,
                               head={"type": "integer", "description": "last seq; -1: none"}),
        "SchemaSummary": _obj(dataset=_STR, versions=_array(_INT), compatibility=_STR,
                              latest=_STR),
        "SchemaVersions": _obj(
            dataset=_STR, latest=_INT,
            compatibility={**_STR, "description": "the mode the latest version was checked "
                           "under (e.g. FULL_TRANSITIVE)"},
            versions=_array(_obj(
                version=_INT, type=_STR, dataschema=_STR, sha256=_STR, compatibility=_STR,
                groups=_GROUPS, added_groups=_array(_STR), added_fields=_array(_STR),
                removed_fields=_array(_STR)))),
        "DatasetSchema": {
            "description": "A JSON Schema 2020-12 of the record `data`; `x-exchange` names "
            "the CloudEvents type, disclosure groups, required and recommended fields.",
            "type": "object", "required": ["$schema", "$id", "x-exchange"],
            "properties": {"$schema": {"const": "https://json-schema.org/draft/2020-12/schema"},
                           "$id": _STR, "x-exchange": {
                               **_obj(type=_STR, disclosure_groups=_GROUPS,
                                      required=_array(_STR), recommended=_array(_STR)),
                               "additionalProperties": True}}},
        "Subscription": _obj(node=_STR, dataset=_STR, name=_STR, acked=_INT, head=_INT,
                             lag=_INT, lag_s=_NUM, connected=_BOOL,
                             credits={"type": ["integer", "null"]},
                             in_flight={"type": ["integer", "null"]},
                             redeliveries={"type": ["integer", "null"]}),
        "DeadLetterView": {
            **_obj(id=_INT, publisher=_STR, dataset=_STR, received_at=_NUM,
                   index={"type": ["integer", "null"]}, code=_STR, path=_STR, message=_STR,
                   record=_STR),
            "description": "A refused record (`index` null: the whole body was refused); "
            "`record` is the record as received (JSON), or a prefix of an undecodable body."},
        "Scores": _SCORES,
        "Lag": _LAG,
        "QualityReport": _obj(datasets={"type": "object",
                                        "additionalProperties": quality_entry}),
        "CatalogEntry": _obj(
            identifier=_STR, title=lang, description=lang, publisher=_STR, theme=_STR,
            legal_basis=_STR, classification={"enum": ["core", "important", "other"]},
            category=_STR, accrualPeriodicity=_STR, conformsTo=_array(_STR), version=_INT,
            type=_STR, record=_STR, key=_obj(fields=_array(_STR), always_disclosed=_BOOL),
            distributions=_GROUPS, countersignature_required=_BOOL,
            quality={"oneOf": [ref("Scores"), {"type": "null"}]},
            agreements=_obj(live=_INT, signed=_INT, config=_INT)),
        "Lookup": _obj(seq=_INT, version=_INT, frame=ref("Records")),
        "AccessReport": _obj(dataset=_STR, key=_STR, versions=_array(_obj(
            version=_INT, seq=_INT, accepted_at=_NUM, received_by=_array(_obj(
                node=_STR, kind={"enum": ["delivery", "sent", "lookup"]},
                subscription={"type": ["string", "null"]}, agreement=_STR, purpose=_STR,
                groups=_array(_STR), at=_NUM))))),
        "LogKey": _obj(origin=_STR, vkey=_STR, broker=_STR),
        "InclusionProof": _obj(seq=_INT, size=_INT, proof=_array(_B64)),
        "ConsistencyProof": _obj(**{"from": _INT, "to": _INT, "proof": _array(_B64)}),
        "LogEntry": _obj(seq=_INT, dataset=_STR, publisher=_STR, digest=_B64,
                         batch_root=_B64, accepted_us=_INT, leaf=_B64),
    }


def schemas() -> dict[str, dict[str, Any]]:
    """Every component schema: the wire types' and the hand-written replies'."""
    _, wire = msgspec.json.schema_components(WIRE_TYPES, ref_template=_REF)
    out: dict[str, dict[str, Any]] = dict(wire)
    # an agreement as the broker shows it: the stored record and where it stands now
    view = copy.deepcopy(out["AgreementRecord"])
    view["title"] = "AgreementView"
    view["description"] = ("An agreement's latest version (`AgreementRecord`) with its "
                           "`version`, log `seq`, `state` now (`expired` past `expires`) and "
                           "the dataset's `owner` (null: not served here now).")
    view["properties"].update(
        version=_INT, seq=_INT, owner={"type": ["string", "null"]},
        state={"enum": list(AGREEMENT_STATES)})
    view["required"] = sorted({*view["required"], "version", "seq", "state", "owner"})
    out["AgreementView"] = view
    out.update(_handwritten())
    return out


# -- the OpenAPI document ---------------------------------------------------------------------

_PARAM = re.compile(r"\{([^{}]+)\}")


def _problem_response(status: int, codes: Sequence[str] | None) -> dict[str, Any]:
    schema: dict[str, Any] = ref("Problem")
    if codes is not None:
        schema = {"allOf": [ref("Problem")],
                  "properties": {"code": {"enum": sorted({str(c) for c in codes})}}}
        what = ", ".join(f"`{c}`" for c in sorted({str(c) for c in codes}))
    else:
        what = "any code of the catalogue (the refused records' codes)"
    return {"description": f"Problem ({status}): {what}",
            "headers": {PROBLEM_CODE_HEADER: {"$ref": "#/components/headers/ProblemCode"}},
            "content": {PROBLEM: {"schema": schema}}}


#: the shared reply of each status in ``COMMON_ERRORS``, for a route that adds no code to it
_COMMON_NAMES = {401: "Unauthenticated", 429: "TooManyRequests", 500: "InternalError",
                 503: "Unavailable"}


def _operation(path: str, op: Op) -> dict[str, Any]:
    who = _WHO.get(op.who, op.who)
    out: dict[str, Any] = {
        "operationId": op.id, "summary": op.summary, "tags": [op.tag],
        "description": f"{op.description}\n\n**Who:** {who}".strip(),
    }
    params: list[dict[str, Any]] = [
        {"name": name, "in": "path", "required": True, "schema": PATH_PARAMS[name][0],
         "description": PATH_PARAMS[name][1]} for name in _PARAM.findall(path)]
    params += [{"name": p.name, "in": "query", "required": p.required, "schema": p.schema,
                "description": p.description} for p in op.query]
    if params:
        out["parameters"] = params
    if op.body is not None:
        out["requestBody"] = {"required": True, "content": {
            media: {"schema": schema} for media, schema in op.body.items()}}
    responses: dict[str, Any] = {}
    for status, content in op.ok.items():
        if status == 101:
            responses["101"] = {"description": "Switching Protocols: the WebSocket is open; "
                                "see docs/asyncapi.json"}
            continue
        reply: dict[str, Any] = {"description": "OK" if status == 200 else "Created",
                                 "content": {m: {"schema": s} for m, s in content.items()}}
        if op.headers:
            reply["headers"] = dict(op.headers)
        responses[str(status)] = reply
    errors: dict[int, Sequence[str] | None] = {s: list(c) for s, c in COMMON_ERRORS.items()}
    for status, codes in op.errors.items():
        known = errors.get(status, [])
        errors[status] = None if codes is None or known is None else [*known, *codes]
    for status in sorted(errors):
        responses[str(status)] = (
            {"$ref": f"#/components/responses/{_COMMON_NAMES[status]}"}
            if status not in op.errors else _problem_response(status, errors[status]))
    out["responses"] = responses
    if op.websocket:
        out["x-websocket"] = True
    return out


def openapi() -> dict[str, Any]:
    """The OpenAPI 3.1.0 description of every route of the broker."""
    paths: dict[str, dict[str, Any]] = {}
    for (method, path), op in OPERATIONS.items():
        paths.setdefault(path, {})[method.lower()] = _operation(path, op)
    return {
        "openapi": "3.1.0",
        "jsonSchemaDialect": "https://spec.openapis.org/oas/3.1/dialect/base",
        "info": {
            "title": "Vietnam national data exchange: broker API",
            "version": VERSION,
            "description": (
                "Every call is HTTPS (TLS 1.3) with a client certificate from the exchange "
                "CA: the handshake refuses a connection without one. The certificate names a "
                "node (an agency system) or an operator; each operation says which it takes. "
                "Errors are RFC 9457 `application/problem+json` with a stable `code`, repeated "
                "in the `Problem-Code` header. Every GET also answers HEAD. An `X-Request-Id` "
                "request header is logged with the request. The WebSocket protocols (publish, "
                "subscribe) are described in AsyncAPI 3.0: `docs/asyncapi.json`."),
            "license": {"name": "Apache-2.0", "identifier": "Apache-2.0"},
        },
        "tags": [{"name": t} for t in sorted({op.tag for op in OPERATIONS.values()})],
        "security": [{"mutualTLS": []}],
        "paths": paths,
        "components": {
            "securitySchemes": {"mutualTLS": {
                "type": "mutualTLS",
                "description": "A client certificate issued by the exchange CA: a node's "
                "(node id in a SAN URI) or an operator's. Revoked certificates are refused "
                "at the handshake, and a revocation closes live connections."}},
            "responses": {_COMMON_NAMES[status]: _problem_response(status, codes)
                          for status, codes in COMMON_ERRORS.items()},
            "headers": {"ProblemCode": {
                "description": "The problem's `code`, for clients that see only a reply's "
                "status and headers (a refused WebSocket handshake)",
                "schema": {"type": "string"}}},
            "schemas": schemas(),
        },
    }


# -- the AsyncAPI document ------------------------------------------------------------------


def _message(name: str, title: str, summary: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {"name": name, "title": title, "summary": summary,
            "contentType": JSON, "payload": schema}


def asyncapi() -> dict[str, Any]:
    """The AsyncAPI 3.0 description of the publish and subscribe WebSockets."""
    dataset = {"description": PATH_PARAMS["dataset"][1]}
    close = (f"The broker closes with {CLOSE_BAD_FRAME} (a client frame that is not "
             f"`credit` or `ack`; reason: the error), {CLOSE_FORBIDDEN} (the agreement was "
             f"revoked or expired; reason: the catalogue code, e.g. `no_agreement`) or "
             f"{CLOSE_AGREEMENT_CHANGED} (`agreement_changed`: reconnect for the new grant).")
    messages = {
        "batch": _message(
            "batch", "Batch", "One signed batch, as for POST /v1/datasets/{dataset}/records "
            "(text frame: JSON; binary frame: MessagePack).", ref("BatchIn")),
        "publishReply": _message(
            "publishReply", "PublishReply", "The reply to one batch, in order, in the batch's "
            "encoding: `receipt` (every record accepted or a duplicate), or `problem` (RFC "
            "9457, as the HTTP route's; with `receipt` inside when only some records were "
            "refused).", ref("PublishReply")),
        "credit": _message("credit", "Credit", "Let the broker send `n` more records.",
                           ref("Credit")),
        "ack": _message("ack", "Ack", "Cumulative: every record up to `seq` is processed "
                        "(stored as the subscription's position, and as an access record).",
                        ref("Ack")),
        "hello": _message("hello", "Hello", "The first frame: where the subscription starts "
                          "and what its agreement grants.", ref("Hello")),
        "records": _message(
            "records", "Records", "Records within the credit, projected to the granted groups; "
            "each batch statement once per frame. Records of a batch the frame holds whole "
            "come without audit paths (rebuild the batch root from them) unless "
            "`paths=always`. Unacked records come again after the ack timeout, "
            "`redelivered`.", ref("Records")),
    }
    return {
        "asyncapi": "3.0.0",
        "info": {
            "title": "Vietnam national data exchange: broker WebSockets",
            "version": VERSION,
            "description": "WebSocket upgrades of `GET` routes of the broker's HTTP API "
            "(`docs/openapi.json`), over the same TLS 1.3 with a node's client certificate. "
            "Text frames are JSON, binary frames MessagePack, with the same fields (bytes: "
            "base64 in JSON, bin in MessagePack). A refused upgrade is an HTTP problem+json "
            "reply whose code is also in the `Problem-Code` header.",
        },
        "defaultContentType": JSON,
        "servers": {"broker": {
            "host": "broker.example:8443", "protocol": "wss",
            "security": [{"$ref": "#/components/securitySchemes/mutualTLS"}]}},
        "channels": {
            "publish": {
                "address": "/v1/datasets/{dataset}/publish",
                "title": "Publish a stream of batches (the dataset's owner node)",
                "description": "At most 64 batches are in flight: past that the broker stops "
                "reading the socket until replies are sent.",
                "parameters": {"dataset": dataset},
                "messages": {"batch": {"$ref": "#/components/messages/batch"},
                             "publishReply": {"$ref": "#/components/messages/publishReply"}},
            },
            "subscribe": {
                "address": "/v1/datasets/{dataset}/subscribe",
                "title": "A durable subscription (a node with an agreement, or the owner)",
                "description": "Query: `name` (the subscription, default `default`), `start` "
                "(earliest | latest | seq:N | time:RFC3339, for a new subscription), "
                "`encoding` (json | msgpack: the broker's frames), `paths` (auto | always). "
                "Client frames may be text (JSON) or binary (MessagePack) whatever the "
                "encoding. " + close,
                "parameters": {"dataset": dataset},
                "bindings": {"ws": {"method": "GET", "query": {
                    "type": "object", "properties": {
                        "name": {"type": "string", "pattern": "^[A-Za-z0-9_.-]{1,64}$"},
                        "start": _STR, "encoding": {"enum": ["json", "msgpack"]},
                        "paths": {"enum": ["auto", "always"]}}}}},
                "messages": {m: {"$ref": f"#/components/messages/{m}"}
                             for m in ("credit", "ack", "hello", "records")},
            },
        },
        "operations": {
            "sendBatch": {"action": "send", "channel": {"$ref": "#/channels/publish"},
                          "summary": "The node sends batches",
                          "messages": [{"$ref": "#/channels/publish/messages/batch"}],
                          "reply": {"channel": {"$ref": "#/channels/publish"}, "messages": [
                              {"$ref": "#/channels/publish/messages/publishReply"}]}},
            "grantCredit": {"action": "send", "channel": {"$ref": "#/channels/subscribe"},
                            "summary": "The node grants credit",
                            "messages": [{"$ref": "#/channels/subscribe/messages/credit"}]},
            "sendAck": {"action": "send", "channel": {"$ref": "#/channels/subscribe"},
                        "summary": "The node acks cumulatively",
                        "messages": [{"$ref": "#/channels/subscribe/messages/ack"}]},
            "receiveHello": {"action": "receive", "channel": {"$ref": "#/channels/subscribe"},
                             "summary": "The broker's first frame",
                             "messages": [{"$ref": "#/channels/subscribe/messages/hello"}]},
            "receiveRecords": {"action": "receive",
                               "channel": {"$ref": "#/channels/subscribe"},
                               "summary": "The broker delivers records",
                               "messages": [{"$ref": "#/channels/subscribe/messages/records"}]},
        },
        "components": {
            "securitySchemes": {"mutualTLS": {
                "type": "X509", "description": "A node's client certificate from the "
                "exchange CA (TLS 1.3)."}},
            "messages": messages,
            "schemas": schemas(),
        },
    }


def document_text(doc: Mapping[str, Any]) -> str:
    """The committed form: 2-space indent, sorted keys, final newline."""
    return json.dumps(doc, indent=2, sort_keys=True, ensure_ascii=False) + "\n"
