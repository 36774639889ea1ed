"""The record envelope: CloudEvents 1.0 attributes around one versioned record (pure).

A record on the wire is a CloudEvent (JSON event format, CloudEvents 1.0 §3) with one extension
attribute, ``version`` (the record's version for its key; CloudEvents extension names are
lowercase alphanumerics, spec §3.1.1), and the record fields as ``data``.

The envelope's *canonical bytes* bind every attribute and one salted commitment per disclosure
group (see ``exchange.disclosure``), never the plaintext of ``data`` directly; the *digest* is
SHA-256 of the canonical bytes. That is what batch signatures cover.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import re
from typing import Annotated, Any, Literal

import msgspec

from exchange.core import canonical
from exchange.core.errors import Code, InputError

__all__ = [
    "PRINTABLE",
    "SPECVERSION",
    "Envelope",
    "EnvelopeIn",
    "canonical_bytes",
    "digest",
    "event_digest",
    "parse_type",
    "rfc3339",
]

SPECVERSION = "1.0"
_TYPE = re.compile(r"^vn\.exchange\.([a-z][a-z0-9_]*)\.v([1-9][0-9]*)$")

# RFC 3339 §5.6 date-time, as CloudEvents 1.0 requires for ``time``
_RFC3339 = r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,9})?(Z|[+-]\d{2}:\d{2})$"

NodeId = Annotated[str, msgspec.Meta(pattern=r"^[a-z0-9]+(\.[a-z0-9-]+)+$", max_length=128)]

#: text with no control characters (C0, DEL, C1), no bidirectional overrides or isolates and no
#: zero-width characters, and not made of spaces alone: what names and identifiers may hold
#: (a right-to-left override can make an id read as another; an invisible name is no name)
PRINTABLE = (r"^(?=.*[^\s\u200b-\u200f\u2060-\u2064\ufeff])"
             r"[^\x00-\x1f\x7f-\x9f\u200b-\u200f\u202a-\u202e\u2060-\u2064\u2066-\u2069"
             r"\ufeff]*$")


class Envelope(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=False):
    """CloudEvents 1.0 attributes, the ``version`` extension and ``data``."""

    specversion: Annotated[str, msgspec.Meta(pattern=r"^1\.0$")] = SPECVERSION
    id: Annotated[str, msgspec.Meta(min_length=1, max_length=128)]
    source: NodeId
    type: Annotated[str, msgspec.Meta(pattern=_TYPE.pattern, max_length=96)]
    subject: Annotated[str, msgspec.Meta(min_length=1, max_length=128)]
    time: Annotated[str, msgspec.Meta(pattern=_RFC3339, max_length=40)]
    datacontenttype: str = "application/json"
    dataschema: Annotated[str, msgspec.Meta(min_length=1, max_length=256)]
    version: Annotated[int, msgspec.Meta(ge=1, le=2**53)]
    data: dict[str, Any]

    @property
    def dataset(self) -> str:
        return parse_type(self.type)[0]

    @property
    def schema_version(self) -> int:
        return parse_type(self.type)[1]

    def attributes(self) -> dict[str, Any]:
        """Every attribute but ``data``: what is always disclosed."""
        return {
            "specversion": self.specversion,
            "id": self.id,
            "source": self.source,
            "type": self.type,
            "subject": self.subject,
            "time": self.time,
            "datacontenttype": self.datacontenttype,
            "dataschema": self.dataschema,
            "version": self.version,
        }


def parse_type(type_: str) -> tuple[str, int]:
    """``vn.exchange.population.v1`` -> ``("population", 1)``."""
    m = _TYPE.match(type_)
    if m is None:
        raise InputError(f"type {type_!r} is not vn.exchange.<dataset>.v<N>", code=Code.BAD_TYPE)
    return m.group(1), int(m.group(2))


def rfc3339(t: float) -> str:
    """Unix time as UTC RFC 3339 with a ``Z``, the form the CloudEvents SDKs write back
    unchanged. The caller reads the clock: the core never does."""
    return dt.datetime.fromtimestamp(t, dt.UTC).isoformat().replace("+00:00", "Z")


def canonical_bytes(attributes: dict[str, Any], commitments: dict[str, bytes]) -> bytes:
    """Deterministic bytes of a record: its attributes and its group commitments.

    RFC 8785 (JCS) of ``{"attributes": …, "commitments": {group: base64(c_g)}}``
    (``exchange.core.canonical``; byte for byte in docs/canonical.md).
    """
    value = {"attributes": attributes, "commitments": commitments}
    version = attributes.get("version")
    if (type(version) is int and -canonical.MAX_INT <= version <= canonical.MAX_INT
            and sum(type(a) is str for a in attributes.values()) == len(attributes) - 1
            and "".join(attributes).isascii() and "".join(commitments).isascii()):
        try:  # the common case, checked in C: string attributes and bytes commitments
            b"".join(commitments.values())
            return canonical.encode_checked(value)
        except TypeError:
            pass
    return canonical.encode(value)


def digest(attributes: dict[str, Any], commitments: dict[str, bytes]) -> bytes:
    return hashlib.sha256(canonical_bytes(attributes, commitments)).digest()


def event_digest(event: Envelope, commitments: dict[str, bytes]) -> bytes:
    """``digest(event.attributes(), commitments)``, checked for the common case in two C
    calls: every attribute but ``version`` a string (the field names are ASCII)."""
    v = event.version
    try:
        "".join((event.specversion, event.id, event.source, event.type, event.subject,
                 event.time, event.datacontenttype, event.dataschema))
        b"".join(commitments.values())
    except TypeError:
        return digest(event.attributes(), commitments)
    if type(v) is not int or not -canonical.MAX_INT <= v <= canonical.MAX_INT or not "".join(
            commitments).isascii():
        return digest(event.attributes(), commitments)
    return hashlib.sha256(canonical.encode_checked(
        {"attributes": event.attributes(), "commitments": commitments})).digest()


class EnvelopeIn(Envelope, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """``Envelope`` as the broker decodes a published one: exactly what was signed. No
    attribute is dropped (an unknown one is refused, ``unknown_attribute``) and none is filled
    in (``specversion`` and ``datacontenttype`` must be there); ids and subjects are printable
    text."""

    specversion: Annotated[str, msgspec.Meta(pattern=r"^1\.0$")]
    id: Annotated[str, msgspec.Meta(min_length=1, max_length=128, pattern=PRINTABLE)]
    subject: Annotated[str, msgspec.Meta(min_length=1, max_length=128, pattern=PRINTABLE)]
    datacontenttype: Literal["application/json"]
