"""What every dataset definition provides (pure: no I/O beyond reading shipped package data).

A dataset version is a msgspec Struct for the record's ``data`` plus a ``DatasetSpec`` that says
how to find the key, how the fields split into disclosure groups, which fields the regulation
requires or recommends, and which domain rules apply beyond the JSON Schema.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import msgspec

from exchange.errors import Violation

__all__ = ["DatasetSpec", "RuleContext", "Validated", "schema_violation"]


@dataclass(frozen=True)
class RuleContext:
    """What domain rules may depend on besides the record. Injected so rules stay deterministic."""

    today: dt.date = field(default_factory=lambda: dt.datetime.now(dt.UTC).date())


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


def schema_violation(err: msgspec.ValidationError) -> Violation:
    """Translate a msgspec validation error into a Violation naming the field path."""
    text = str(err)
    m = _MSGSPEC_PATH.search(text)
    path = m.group(1) if m else "$"
    message = text[: m.start()] if m else text
    code = "schema_violation"
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
    #: how often the owner is expected to publish at least once (seconds); for "live"
    update_interval_s: int = 86_400
    description: str = ""

    @property
    def type(self) -> str:
        """CloudEvents ``type`` attribute of records of this dataset version."""
        return f"vn.exchange.{self.name}.v{self.version}"

    @property
    def dataschema(self) -> str:
        """CloudEvents ``dataschema`` attribute: where the broker serves the JSON Schema."""
        return f"/v1/schemas/{self.name}/{self.version}"

    def group_of(self) -> dict[str, str]:
        return {f: g for g, fields in self.groups.items() for f in fields}

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

    def validate(self, data: Any, ctx: RuleContext | None = None) -> Validated:
        """Schema then domain rules. Never raises for bad input; returns the violations."""
        try:
            record = msgspec.convert(data, self.record_type)
        except msgspec.ValidationError as err:
            return Validated(None, [schema_violation(err)])
        ctx = ctx or RuleContext()
        violations: list[Violation] = []
        for rule in self.rules:
            violations.extend(rule(record, ctx))
        return Validated(record, violations)
