"""What every dataset definition provides (pure: no I/O beyond reading shipped package data).

A dataset version is a msgspec Struct for the record's ``data`` plus a ``DatasetSpec`` that says
how to find the key, how the fields split into disclosure groups, which fields the regulation
requires or recommends, and which domain rules apply beyond the JSON Schema.
"""

from __future__ import annotations

import datetime as dt
import functools
import hashlib
import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import msgspec

from exchange.core.datasets import explain
from exchange.core.datasets.normalise import normalisation_notes
from exchange.core.errors import Violation

__all__ = ["DatasetSpec", "RuleContext", "Validated", "schema_violation"]


@dataclass(frozen=True)
class RuleContext:
    """What domain rules may depend on besides the record. Injected so rules stay deterministic:
    the core never reads a clock, the caller says what day it is."""

    today: dt.date


@dataclass(frozen=True)
class Validated:
    """The outcome of validating one record's ``data``."""

    record: msgspec.Struct | None
    violations: list[Violation]
    #: human-readable notes on normalisation the record would need (NFC, whitespace, …); these
    #: are reported, never applied silently to signed content.
    notes: list[Violation] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.violations


Rule = Callable[[Any, RuleContext], list[Violation]]

_MSGSPEC_PATH = re.compile(r" - at `(\$[^`]*)`$")
_INDEX = re.compile(r"\[\d+\]")
# "Expected `str`, got `int`": a wrong JSON type, as opposed to a broken constraint
_TYPE_ERROR = re.compile(r"^Expected `[^`]+`, got `")


def schema_violation(
    err: msgspec.ValidationError, codes: Mapping[str, str] | None = None
) -> Violation:
    """Translate a msgspec validation error into a Violation naming the field path.

    ``codes`` maps a path (list indexes written ``[*]``) to the stable code to report when a
    value there breaks its constraint (pattern, enum, length, range) rather than its type.
    """
    text = str(err)
    m = _MSGSPEC_PATH.search(text)
    path = m.group(1) if m else "$"
    message = text[: m.start()] if m else text
    code = "schema_violation"
    if codes and not _TYPE_ERROR.match(message):
        mapped = codes.get(_INDEX.sub("[*]", path))
        if mapped is not None:
            return Violation(mapped, message, path)
    if message.startswith("Object missing required field"):
        code = "missing_field"
        # msgspec names the missing field in the message, not the path
        fm = re.search(r"`([^`]+)`", message)
        if fm:
            path = f"{path}.{fm.group(1)}"
    elif message.startswith("Object contains unknown field"):
        code = "unknown_field"
        fm = re.search(r"`([^`]+)`", message)
        if fm:
            path = f"{path}.{fm.group(1)}"
    return Violation(code, message, path)


@dataclass(frozen=True)
class Catalogue:
    """What a would-be subscriber reads before asking (DCAT terms where they fit)."""

    #: dct:title and dct:description, in Vietnamese and in English
    title_vi: str
    title_en: str
    description_vi: str
    description_en: str
    #: dcat:theme (a short subject heading)
    theme: str
    #: the law that makes the owner keep this data and allows sharing it
    legal_basis: str
    #: Law 60/2024/QH15 Art. 13: "core", "important" or "other"; core and important data need
    #: an operator's countersignature on every agreement
    classification: str
    #: the Decision 20/2025/QĐ-TTg annex category the classification rests on, if one applies
    category: str = ""
    #: the fields the record's key is made of. The key travels as the CloudEvents ``subject``
    #: and is disclosed to every subscriber whatever groups it is granted: an agreement on this
    #: dataset always reveals these values (the catalogue says so)
    key_fields: tuple[str, ...] = ()


@dataclass(frozen=True)
class DatasetSpec:
    """One version of one dataset."""

    name: str
    version: int
    record_type: type[msgspec.Struct]
    #: record key from a validated record (12-digit id, MST, parcel key, plate)
    key: Callable[[Any], str]
    #: disclosure groups: name -> top-level field names; the groups partition the fields
    groups: Mapping[str, tuple[str, ...]]
    #: fields the regulation requires (must be present and non-empty) and recommends (scored)
    required: tuple[str, ...]
    recommended: tuple[str, ...]
    rules: tuple[Rule, ...] = ()
    #: path (list indexes as ``[*]``) -> stable code for a constraint failure found by the schema
    codes: Mapping[str, str] = field(default_factory=dict)
    #: dotted paths of free-text fields checked for normalisation (notes, never violations)
    text_fields: tuple[str, ...] = ()
    #: dotted paths of code fields that ``normalise_record`` upper-cases (plates, VINs, serials)
    code_fields: tuple[str, ...] = ()
    #: how often the owner is expected to publish at least once (seconds); for "live"
    update_interval_s: int = 86_400
    #: fields holding ids of records in other datasets (a 12-digit personal id refers to
    #: population, a tax code to tax); checked, never enforced, for the "clean" score
    references: tuple[str, ...] = ()
    description: str = ""
    catalogue: Catalogue | None = None
    #: kept by the exchange itself (agreements): not listed with the national datasets
    system: bool = False
    #: how this version must relate to the earlier ones (``compat.MODES``); checked when the
    #: version is registered
    compatibility: str = "FULL_TRANSITIVE"

    @property
    def type(self) -> str:
        """CloudEvents ``type`` attribute of records of this dataset version."""
        return f"vn.exchange.{self.name}.v{self.version}"

    @property
    def dataschema(self) -> str:
        """Where the broker serves this version's JSON Schema, relative to its base URL (the
        schema's ``$id``: a reference that resolves against wherever it was fetched from)."""
        return f"/v1/schemas/{self.name}/{self.version}"

    def dataschema_uri(self, base: str) -> str:
        """CloudEvents ``dataschema``, an absolute URI (spec §3.1.1): the schema at the
        exchange's public ``base`` URL (``https://exchange.example.gov.vn``)."""
        return base.rstrip("/") + self.dataschema

    def json_schema(self) -> dict[str, Any]:
        """JSON Schema 2020-12 of the record ``data``, with the disclosure groups annotated."""
        schema: dict[str, Any] = msgspec.json.schema(self.record_type)
        schema = {
            "$schema": "https://json-schema.org/draft/2020-12/schema",
            "$id": self.dataschema,
            "title": f"{self.name} v{self.version}",
            "description": self.description,
            **schema,
            "x-exchange": {
                "type": self.type,
                "disclosure_groups": {g: list(fs) for g, fs in self.groups.items()},
                "required": list(self.required),
                "recommended": list(self.recommended),
            },
        }
        return schema

    @functools.cached_property
    def schema_text(self) -> str:
        """The committed form of the JSON Schema export: 2-space indent, sorted keys, final
        newline (a version is immutable: computed once)."""
        return json.dumps(self.json_schema(), indent=2, sort_keys=True,
                          ensure_ascii=False) + "\n"

    @functools.cached_property
    def schema_digest(self) -> str:
        """SHA-256 (hex) of ``schema_text``: what "immutable" pins."""
        return hashlib.sha256(self.schema_text.encode()).hexdigest()

    @functools.cached_property
    def decoder(self) -> msgspec.json.Decoder[Any]:
        """A reusable JSON decoder straight into ``record_type`` (no intermediate dicts)."""
        return msgspec.json.Decoder(self.record_type)

    def validate(self, data: Any, ctx: RuleContext) -> Validated:
        """Schema then domain rules. Never raises for bad input; returns the violations.

        Stops at the first schema error (msgspec's), in ``explain``'s words."""
        try:
            record = msgspec.convert(data, self.record_type)
        except msgspec.ValidationError as err:
            return Validated(None, [self._first(err, data)])
        return self.check(record, ctx)

    def validate_json(self, buf: bytes | str, ctx: RuleContext) -> Validated:
        """Decode one JSON ``data`` object and validate it; the fast path for bytes on the wire.

        Stops at the first schema error, like ``validate``. Raises ``msgspec.DecodeError`` (not
        a ValidationError) only when ``buf`` is not JSON.
        """
        try:
            record = self.decoder.decode(buf)
        except msgspec.ValidationError as err:
            # the refusal path only: decode again, untyped, to word the error
            try:
                data = msgspec.json.decode(buf)
            except (msgspec.DecodeError, UnicodeDecodeError):
                return Validated(None, [schema_violation(err, self.codes)])
            return Validated(None, [self._first(err, data)])
        return self.check(record, ctx)

    def _first(self, err: msgspec.ValidationError, data: Any) -> Violation:
        """msgspec's first error as ``schema_violation`` reports it, in ``explain``'s words."""
        first = schema_violation(err, self.codes)
        try:
            return explain.reword(self.record_type, data, first)
        except RecursionError:
            return first

    def validate_json_all(self, buf: bytes | str, ctx: RuleContext) -> Validated:
        """Every problem of one JSON ``data`` object: the fast path (``validate_json``'s typed
        decode) for a record whose schema holds, ``validate_all`` for one it refuses.

        Raises ``msgspec.DecodeError`` when ``buf`` is not JSON, ``UnicodeDecodeError`` when a
        string in it is not UTF-8.
        """
        try:
            record = self.decoder.decode(buf)
        except msgspec.ValidationError:
            return self.validate_all(msgspec.json.decode(buf), ctx)
        return self.check(record, ctx)

    def validate_all(self, data: Any, ctx: RuleContext) -> Validated:
        """Every problem of one record: each schema problem (``explain``), then the findings of
        every domain rule that reads only fields that decoded. A rule that reads a broken field
        is skipped: what it would say rests on a value the record must fix first.

        The slow path, for a record ``validate`` refused (about ten times its cost); for a valid
        record it returns what ``validate`` does.
        """
        found = explain.explain(self.record_type, data, self.codes)
        if not found.violations:
            return self.check(found.record, ctx)
        if found.record is None:
            return Validated(None, found.violations)
        violations = list(found.violations)
        for rule in self.rules:
            try:
                violations.extend(rule(found.record, ctx))
            except explain.Undecoded:
                continue
        notes = normalisation_notes(data, self.text_fields) if self.text_fields else []
        return Validated(None, violations, notes)

    def check(self, record: Any, ctx: RuleContext) -> Validated:
        """Domain rules and normalisation notes for an already decoded ``record_type`` value."""
        violations: list[Violation] = []
        for rule in self.rules:
            found = rule(record, ctx)
            if found:
                violations.extend(found)
        notes = normalisation_notes(record, self.text_fields) if self.text_fields else []
        return Validated(record, violations, notes)
