"""Messages on the wire between nodes and the broker (pure types, JSON and MessagePack).

HTTP (``/v1``):

- ``POST /v1/datasets/{dataset}/records`` body: ``signing.Batch`` (``application/json`` or
  ``application/msgpack``). Reply 200 ``Receipt`` when every record was accepted or a duplicate;
  otherwise an RFC 9457 problem (409 when every rejection is a version conflict or stale version,
  else 422) whose ``errors`` list each rejected record (index, path, code, message) and whose
  ``receipt`` member is the signed receipt for the rest.
- ``GET /v1/datasets/{dataset}/publish`` WebSocket: the client sends ``Batch`` frames, the broker
  answers each with a ``PublishReply`` frame, in order.
- ``GET /v1/datasets/{dataset}/subscribe?name=…&start=earliest|latest|seq:N|time:RFC3339``
  WebSocket; client frames are ``Credit`` and ``Ack``; broker frames are ``Records``.
  ``encoding=msgpack`` switches frames to binary MessagePack; JSON text frames otherwise.

Wire types evolve by adding fields with defaults (msgspec's schema-evolution rules).
"""

from __future__ import annotations

import re
from typing import Annotated, Any

import msgspec
import msgspec.inspect as mi

from exchange.core.envelope import PRINTABLE, SPECVERSION, Envelope, EnvelopeIn
from exchange.core.errors import Code, InputError, Violation
from exchange.core.signing import (
    Batch,
    BatchIn,
    Bytes32,
    PublishedRecordIn,
    Signature,
    Statement,
)

__all__ = [
    "CLOSE_AGREEMENT_CHANGED",
    "CLOSE_BAD_FRAME",
    "CLOSE_FORBIDDEN",
    "PROBLEM_CODE_HEADER",
    "Ack",
    "BatchRef",
    "ClientFrame",
    "Credit",
    "DeliveredEvent",
    "DeliveredRecord",
    "DeliveredRecordIn",
    "PublishReply",
    "Receipt",
    "Records",
    "RecordsIn",
    "SignedReceipt",
    "decode_batch",
]


def _no_ext(code: int, data: memoryview) -> Any:
    # MessagePack extension types have no JSON form, so no canonical bytes: refuse them here
    raise InputError(f"MessagePack extension type {code} is not allowed in records",
                     code=Code.MALFORMED)


_json_batch = msgspec.json.Decoder(BatchIn)
_msgpack_batch = msgspec.msgpack.Decoder(BatchIn, ext_hook=_no_ext)
MSGPACK_TYPES = ("application/msgpack", "application/x-msgpack")


# -- the fast decode: the attribute patterns checked once per distinct value -----------------
#
# msgspec runs a ``pattern`` through Python's ``re`` for every value: six per record, half of
# a batch's decoding. A batch's records share their specversion, source, type and time, and
# their ids and subjects are nearly always printable ASCII, which three ``str`` methods tell.
# So the batch is decoded first without the patterns (every other constraint kept), and the
# patterns are checked afterwards; anything that fails, or fails to decode, is decoded again
# with ``BatchIn`` itself, whose error (or value) is the answer: the same as before.

def _pattern(field: str) -> re.Pattern[str]:
    """The compiled ``pattern`` of an ``EnvelopeIn`` attribute (msgspec matches with
    ``search``)."""
    info = mi.type_info(EnvelopeIn)
    assert isinstance(info, mi.StructType)
    t = next(f.type for f in info.fields if f.name == field)
    while isinstance(t, mi.Metadata):
        t = t.type
    assert isinstance(t, mi.StrType) and t.pattern is not None
    return re.compile(t.pattern)


_SHARED = tuple((f, _pattern(f).search) for f in ("specversion", "source", "type", "time"))
_PRINTABLE = re.compile(PRINTABLE).search
assert _pattern("id").pattern == _pattern("subject").pattern == PRINTABLE


def printable(s: str) -> bool:
    """``PRINTABLE`` as msgspec checks it (``re.search``), in three ``str`` calls for ASCII:
    printable characters, not only spaces (``$`` also matches before a final newline)."""
    if s.isascii():
        core = s[:-1] if s[-1:] == "\n" else s
        return core.isprintable() and core.strip(" ") != ""
    return _PRINTABLE(s) is not None


class _EnvelopeLax(EnvelopeIn, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """``EnvelopeIn`` without its patterns (``_attributes_hold`` checks them)."""

    specversion: str
    id: Annotated[str, msgspec.Meta(min_length=1, max_length=128)]
    source: Annotated[str, msgspec.Meta(max_length=128)]
    type: Annotated[str, msgspec.Meta(max_length=96)]
    subject: Annotated[str, msgspec.Meta(min_length=1, max_length=128)]
    time: Annotated[str, msgspec.Meta(max_length=40)]


class _RecordLax(PublishedRecordIn, frozen=True, forbid_unknown_fields=True):
    event: _EnvelopeLax


class _BatchLax(BatchIn, frozen=True, forbid_unknown_fields=True):
    records: list[_RecordLax]  # type: ignore[assignment]


_json_lax = msgspec.json.Decoder(_BatchLax)
_msgpack_lax = msgspec.msgpack.Decoder(_BatchLax, ext_hook=_no_ext)


def _attributes_hold(batch: Batch) -> bool:
    """Whether every record's attributes match ``EnvelopeIn``'s patterns."""
    records = batch.records
    for r in records:
        ev = r.event
        if not (printable(ev.id) and printable(ev.subject)):
            return False
    for field, search in _SHARED:
        for value in {getattr(r.event, field) for r in records}:
            if search(value) is None:
                return False
    return True


def decode_batch(body: bytes, content_type: str) -> Batch:
    """A published batch from its body (MessagePack or JSON), or the ``InputError`` that says
    what is wrong with it: msgspec's errors are translated here, once."""
    binary = content_type in MSGPACK_TYPES
    try:
        batch: Batch = (_msgpack_lax if binary else _json_lax).decode(body)
    except Exception:  # the strict decode below says what is wrong
        pass
    else:
        if _attributes_hold(batch):
            return batch
    try:
        return (_msgpack_batch if binary else _json_batch).decode(body)
    except msgspec.ValidationError as err:
        text = str(err)
        if text.startswith("Object contains unknown field") and text.endswith(".event`"):
            # an attribute the publisher signed that this exchange does not carry: refused,
            # never dropped (the signature would no longer cover what is stored)
            raise InputError(f"unknown CloudEvents attribute: {err}",
                             code=Code.UNKNOWN_ATTRIBUTE) from None
        raise InputError(f"batch does not match the wire schema: {err}",
                         code=Code.SCHEMA_VIOLATION) from None
    except (msgspec.DecodeError, UnicodeDecodeError) as err:
        # msgspec's MessagePack decoder raises UnicodeDecodeError for a str that is not
        # UTF-8; a truncated body's message has no position, so give it
        where = f" (at byte {len(body)})" if "truncated" in str(err) else ""
        kind = "MessagePack" if binary else "JSON"
        raise InputError(f"body is not valid {kind}: {err}{where}",
                         code=Code.MALFORMED) from None
    except RecursionError:
        raise InputError("body is nested too deeply", code=Code.TOO_DEEP) from None


class Duplicate(msgspec.Struct, frozen=True):
    index: int
    seq: int


class Receipt(msgspec.Struct, frozen=True, kw_only=True):
    """The broker's statement that a batch was received and what became of each record."""

    broker: str
    publisher: str
    dataset: str
    batch_root: Bytes32
    #: seqs of the accepted records: first_seq..last_seq (0..-1 when none was accepted)
    first_seq: int
    last_seq: int
    accepted: int
    duplicates: list[Duplicate] = []
    rejected: list[Violation] = []
    time: str
    #: the signed promise: the log's size and root right after this batch was appended. The
    #: batch's records are leaves first_seq..last_seq of that tree; a later checkpoint must be
    #: consistent with it (GET /v1/log/proof/consistency?from=log_size&to=…).
    log_size: int = 0
    log_root: bytes = b""


class SignedReceipt(msgspec.Struct, frozen=True, omit_defaults=True):
    """A receipt and the broker's signature, alone or over its group commit (``receipts``).

    ``group_size`` 1: Ed25519 over ``RECEIPT_CONTEXT ‖ canonical(receipt)``. Otherwise the
    receipts of one group commit are the leaves of an RFC 6962 tree and the signature covers
    its root (``receipts.ReceiptGroup``); ``index`` and ``path`` place this receipt in it.
    """

    receipt: Receipt
    signature: Signature
    group_size: Annotated[int, msgspec.Meta(ge=1, le=1 << 20)] = 1
    index: Annotated[int, msgspec.Meta(ge=0)] = 0
    path: Annotated[list[Bytes32], msgspec.Meta(max_length=32)] = []


RECEIPT_CONTEXT = b"vn-exchange/receipt/v1\n"

#: every problem+json reply repeats its ``code`` in this header, for clients that see a reply's
#: status and headers but not its body (a refused WebSocket handshake in aiohttp): they rebuild
#: the same error class from it (``ExchangeError.from_code``)
PROBLEM_CODE_HEADER = "Problem-Code"

#: WebSocket close codes in the private range (RFC 6455 §7.4.2); the close reason is the
#: catalogue code of why
CLOSE_BAD_FRAME = 4400
CLOSE_FORBIDDEN = 4403
CLOSE_AGREEMENT_CHANGED = 4409


class PublishReply(msgspec.Struct, frozen=True, omit_defaults=True):
    """Reply to one batch on the publish WebSocket: a receipt, or a problem object."""

    receipt: SignedReceipt | None = None
    problem: dict[str, Any] | None = None


# --- subscribe ---------------------------------------------------------------------------------

class Credit(msgspec.Struct, frozen=True, tag="credit"):
    """Permission for the broker to send ``n`` more records."""

    n: Annotated[int, msgspec.Meta(ge=0, le=1_000_000)]


class Ack(msgspec.Struct, frozen=True, tag="ack"):
    """Cumulative acknowledgement: every record up to and including ``seq`` is processed."""

    seq: Annotated[int, msgspec.Meta(ge=0)]


ClientFrame = Credit | Ack


class BatchRef(msgspec.Struct, frozen=True):
    """A publisher's batch statement and signature, sent once per frame for its records."""

    id: int
    statement: Statement
    signature: Signature


class DeliveredRecord(msgspec.Struct, frozen=True, kw_only=True):
    """One record as a subscriber receives it, projected to the groups its agreement grants."""

    seq: int
    event: Envelope
    salts: dict[str, bytes]
    withheld: dict[str, bytes] = {}
    batch: int
    index: int
    path: list[Bytes32]
    accepted_at: float
    redelivered: bool = False


class Records(msgspec.Struct, frozen=True, tag="records"):
    batches: list[BatchRef]
    records: list[DeliveredRecord]
    #: the dataset's head seq when the frame was sent (lets the client see its own lag)
    head: int = 0


class DeliveredEvent(Envelope, frozen=True, kw_only=True):
    """``Envelope`` as a subscriber decodes it: the same fields, without re-running the
    attribute formats (patterns cost ~1.5 µs a record). The broker's gate checked them, and the
    publisher's signature covers every attribute, so a changed one fails verification anyway."""

    specversion: str = SPECVERSION
    id: str
    source: str
    type: str
    subject: str
    time: str
    dataschema: str
    version: int


class DeliveredRecordIn(DeliveredRecord, frozen=True, kw_only=True):
    """``DeliveredRecord`` as a subscriber decodes it."""

    event: DeliveredEvent


class RecordsIn(Records, frozen=True, tag="records"):
    """``Records`` as a subscriber decodes it."""

    records: list[DeliveredRecordIn]  # type: ignore[assignment]


class Hello(msgspec.Struct, frozen=True, tag="hello"):
    """First frame of a subscription: where it starts and what the agreement grants."""

    subscription: str
    dataset: str
    acked: int
    start_after: int
    granted: list[str]
    purpose: str
    #: the schema version the agreement reads: records of later versions arrive with the
    #: groups it lacks withheld
    version: int = 1

