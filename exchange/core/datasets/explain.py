"""Every schema problem of one record, each in words that say what to fix (pure: no I/O).

msgspec's typed decoder is the fast path (``DatasetSpec.validate_json``): it decodes straight into
the record Struct and stops at the first error, whose text names the type, not the fix ("Invalid
enum value 'F'", "Invalid RFC3339 encoded date", a regular expression). This module is the slow
path, taken only for a record the fast path refused. It walks the record's JSON value beside the
Struct's annotations and checks every field on its own with ``msgspec.convert``, so msgspec stays
the one judge of what is valid; this module only says why, and says it for every field:

- ``explain`` returns every problem (unknown fields, missing fields, each bad value, recursing into
  nested Structs and lists) and a ``Partial`` record of the fields that did decode;
- domain rules can run on that ``Partial``: reading a field that did not decode raises
  ``Undecoded``, and the caller skips that rule (``DatasetSpec.validate_all``);
- ``reword`` gives msgspec's first error the same words, for callers that stop at the first (the
  broker's gate), at the cost of one walk down the path at fault.

The words for a pattern come from ``Meta(extra={"expected": ...})`` next to the pattern, so they
travel with the type; the type's ``description`` or the pattern itself is the fallback.
"""

from __future__ import annotations

import calendar
import contextlib
import datetime as dt
import difflib
import functools
import re
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Annotated, Any, Literal, Union

import msgspec

from exchange.core.errors import Code, Violation

__all__ = ["Explanation", "Partial", "Undecoded", "expected", "explain", "reword"]

#: list indexes in a path, written ``[*]`` in a dataset's ``codes`` map
_INDEX = re.compile(r"\[\d+\]")
_ISO_DATE = re.compile(r"^(\d{4})-(\d{2})-(\d{2})$")
# dates as people write them: 12/04/1990, 12-04-1990, 12.04.1990 (day first, as in Vietnam)
_DMY = re.compile(r"^(\d{1,2})[/.-](\d{1,2})[/.-](\d{4})$")
_YMD = re.compile(r"^(\d{4})[/.](\d{1,2})[/.](\d{1,2})$")
_EXAMPLE_DATE = "1990-04-12"
#: an enum longer than this is not spelled out in full
_MAX_LISTED = 40
_NONE = type(None)


class Undecoded(Exception):
    """A domain rule read a field of a ``Partial`` record that did not decode."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.name = name


class Partial:
    """The fields of a record that decoded, read like the Struct: ``p.birth_date``. A field that
    did not decode raises ``Undecoded`` (never AttributeError: ``getattr(p, f, None)`` must not
    quietly read a broken field as missing)."""

    __slots__ = ("_broken", "_type", "_values")

    def __init__(self, struct_type: type[msgspec.Struct], values: dict[str, Any],
                 broken: frozenset[str]) -> None:
        self._type = struct_type
        self._values = values
        self._broken = broken

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        values = self._values
        if name in values:
            return values[name]
        if name in self._broken:
            raise Undecoded(name)
        raise AttributeError(f"{self._type.__name__} has no field {name!r}")

    def __repr__(self) -> str:
        return f"Partial({self._type.__name__}, broken={sorted(self._broken)})"


@dataclass(frozen=True)
class Explanation:
    """Every schema problem of one value, and what of it decoded."""

    violations: list[Violation]
    #: the decoded record (a Struct when nothing is wrong, a ``Partial`` when some fields are);
    #: None when the value is not even an object
    record: Any


# -- the annotations ------------------------------------------------------------------------

@dataclass(frozen=True)
class _Shape:
    """One annotation taken apart: the bare type, its constraints, whether null is allowed."""

    base: Any
    meta: tuple[msgspec.Meta, ...]
    nullable: bool
    #: the other members of a union that is not just ``X | None``
    options: tuple[Any, ...] = ()


def _shape(annotation: Any) -> _Shape:
    meta: list[msgspec.Meta] = []
    nullable = False
    while True:
        origin = typing.get_origin(annotation)
        if origin is Annotated:
            args = typing.get_args(annotation)
            meta.extend(m for m in args[1:] if isinstance(m, msgspec.Meta))
            annotation = args[0]
        elif origin is Union or origin is types.UnionType:
            members = [a for a in typing.get_args(annotation) if a is not _NONE]
            nullable = nullable or len(members) < len(typing.get_args(annotation))
            if len(members) != 1:
                return _Shape(annotation, tuple(meta), nullable, tuple(members))
            annotation = members[0]
        else:
            return _Shape(annotation, tuple(meta), nullable)


def _constraint(shape: _Shape, name: str) -> Any:
    for m in shape.meta:
        value = getattr(m, name)
        if value is not None:
            return value
    return None


@functools.cache
def _fields(struct_type: type[msgspec.Struct]) -> tuple[msgspec.structs.FieldInfo, ...]:
    # msgspec.structs.fields evaluates the annotations again on every call: ~400 µs for a record
    return msgspec.structs.fields(struct_type)


@functools.cache
def _by_key(struct_type: type[msgspec.Struct]) -> dict[str, msgspec.structs.FieldInfo]:
    return {f.encode_name: f for f in _fields(struct_type)}


@functools.lru_cache(maxsize=1024)
def _did_you_mean(key: str, known: tuple[str, ...]) -> str:
    # the same typo comes in every record of a file: worth remembering (difflib is ~100 µs)
    close = difflib.get_close_matches(key, known, n=1)
    return f" (did you mean {close[0]}?)" if close else ""


def _is_struct(tp: Any) -> bool:
    return isinstance(tp, type) and issubclass(tp, msgspec.Struct)


def expected(annotation: Any) -> str:
    """What a value of ``annotation`` is, in words: "a date as YYYY-MM-DD", "one of: male,
    female", "a 5-digit commune/ward code (e.g. 00004)"."""
    shape = _shape(annotation)
    words = _expected(shape)
    return f"{words}, or null" if shape.nullable and shape.base is not _NONE else words


def _expected(shape: _Shape) -> str:
    base = shape.base
    if shape.options:
        return " or ".join(expected(o) for o in shape.options)
    if typing.get_origin(base) is Literal:
        return "one of: " + _listed(typing.get_args(base))
    extra = _constraint(shape, "extra")
    if isinstance(extra, Mapping) and isinstance(extra.get("expected"), str):
        return str(extra["expected"])
    if base is str:
        pattern = _constraint(shape, "pattern")
        if pattern is not None:
            description = _constraint(shape, "description")
            if description:
                return f"text matching {pattern} ({description.rstrip('.')})"
            return f"text matching {pattern}"
        return "text" + _length_words(shape, "character")
    if base is dt.date:
        return f"a date as YYYY-MM-DD, e.g. {_EXAMPLE_DATE}"
    if base is dt.datetime:
        return "a date and time as RFC 3339, e.g. 2025-09-30T08:00:00Z"
    if base is bool:
        return "true or false"
    if base is int:
        return "a whole number" + _range_words(shape)
    if base is float:
        return "a number" + _range_words(shape)
    if base is bytes:
        return "base64-encoded bytes"
    if _is_struct(base):
        names = [f.encode_name for f in _fields(base)]
        return f"an object with fields {', '.join(names)}"
    origin = typing.get_origin(base)
    if origin in (list, tuple, set, frozenset):
        args = typing.get_args(base)
        item = f" of {expected(args[0])}" if args else ""
        return "a list" + item + _length_words(shape, "item")
    if origin is dict:
        return "an object"
    if base is _NONE:
        return "null"
    return getattr(base, "__name__", str(base))


def _listed(values: tuple[Any, ...]) -> str:
    shown = ", ".join(str(v) for v in values[:_MAX_LISTED])
    more = len(values) - _MAX_LISTED
    return shown + (f" (and {more} more)" if more > 0 else "")


def _plural(n: int, noun: str) -> str:
    return f"{n} {noun}" + ("" if n == 1 else "s")


def _length_words(shape: _Shape, noun: str) -> str:
    lo, hi = _constraint(shape, "min_length"), _constraint(shape, "max_length")
    if lo is not None and hi is not None:
        return f" of {lo} to {_plural(hi, noun)}"
    if lo is not None:
        return f" of at least {_plural(lo, noun)}"
    if hi is not None:
        return f" of at most {_plural(hi, noun)}"
    return ""


def _number(x: float) -> str:
    if isinstance(x, float) and x.is_integer() and abs(x) < 1e16:
        return str(int(x))
    return str(x)


def _range_words(shape: _Shape) -> str:
    ge, gt = _constraint(shape, "ge"), _constraint(shape, "gt")
    le, lt = _constraint(shape, "le"), _constraint(shape, "lt")
    if ge is not None and le is not None:
        return f" from {_number(ge)} to {_number(le)}"
    low = (f"at least {_number(ge)}" if ge is not None else
           f"greater than {_number(gt)}" if gt is not None else "")
    high = (f"at most {_number(le)}" if le is not None else
            f"less than {_number(lt)}" if lt is not None else "")
    parts = [w for w in (low, high) if w]
    return " " + " and ".join(parts) if parts else ""


# -- describing one value -----------------------------------------------------------------------

def _json_kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return f"a number ({value!r})"
    if isinstance(value, str):
        return f"text ({_quote(value)})"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


def _quote(value: str, limit: int = 60) -> str:
    return repr(value if len(value) <= limit else value[:limit] + "…")


def _name(path: str) -> str:
    """The field a path ends at: ``$.permanent_address.ward_code`` -> ``ward_code``."""
    tail = path.rsplit(".", 1)[-1]
    return "the record" if tail == "$" else tail


class _Walker:
    """Collects the violations of one record; ``codes`` maps paths to stable codes."""

    def __init__(self, codes: Mapping[str, str] | None) -> None:
        self.codes = codes or {}
        self.out: list[Violation] = []

    def wrong_type(self, path: str, annotation: Any, value: Any) -> None:
        # a wrong JSON type is a schema_violation, as schema_violation() reports it
        self.out.append(Violation(Code.SCHEMA_VIOLATION,
                                  f"{_name(path)} must be {expected(annotation)}; got "
                                  f"{_json_kind(value)}", path))

    def broken(self, path: str, message: str) -> None:
        """A value of the right JSON type that breaks a constraint: the dataset's code."""
        code = self.codes.get(_INDEX.sub("[*]", path), Code.SCHEMA_VIOLATION)
        self.out.append(Violation(code, message, path))

    def value(self, value: Any, annotation: Any, path: str) -> tuple[bool, Any]:
        """(decoded?, the value decoded or a ``Partial``) after reporting every problem."""
        try:
            return True, msgspec.convert(value, annotation)
        except msgspec.ValidationError as err:
            before = len(self.out)
            decoded = self.explain_value(value, annotation, path, err)
            if len(self.out) == before:  # not understood here: msgspec's own words
                self.broken(path, _msgspec_message(err))
            return False, decoded

    def explain_value(self, value: Any, annotation: Any, path: str,
                      err: msgspec.ValidationError) -> Any:
        shape = _shape(annotation)
        base = shape.base
        if value is None and not shape.nullable:
            self.wrong_type(path, annotation, value)
            return None
        if shape.options:
            self.broken(path, f"{_name(path)} must be {expected(annotation)}; got "
                        f"{_json_kind(value)}")
            return None
        if _is_struct(base):
            if not isinstance(value, dict):
                self.wrong_type(path, annotation, value)
                return None
            return self.struct(value, base, path)
        origin = typing.get_origin(base)
        if origin is Literal:
            allowed = typing.get_args(base)
            if not any(isinstance(value, type(a)) for a in allowed):
                self.wrong_type(path, annotation, value)
            else:
                got = _quote(value) if isinstance(value, str) else repr(value)
                self.broken(path, f"{_name(path)} must be one of: {_listed(allowed)}; got {got}")
            return None
        if origin is list and isinstance(value, list):
            self.items(value, shape, path)
            return None
        if base is str and isinstance(value, str):
            self.text(value, shape, path)
            return None
        if base is dt.date and isinstance(value, str):
            self.broken(path, date_problem(_name(path), value))
            return None
        if base in (int, float) and isinstance(value, int | float) and not isinstance(value, bool):
            if base is int and isinstance(value, float):
                self.wrong_type(path, annotation, value)
            else:
                self.broken(path, f"{_name(path)} must be {_expected(shape)}; got "
                            f"{_number(value)}")
            return None
        if _msgspec_message(err).startswith("Expected `"):
            self.wrong_type(path, annotation, value)
        return None

    def text(self, value: str, shape: _Shape, path: str) -> None:
        name = _name(path)
        lo, hi = _constraint(shape, "min_length"), _constraint(shape, "max_length")
        if lo is not None and len(value) < lo:
            what = "empty" if not value else f"{_plural(len(value), 'character')}"
            self.broken(path, f"{name} must be at least {_plural(lo, 'character')}; got {what}")
        elif hi is not None and len(value) > hi:
            self.broken(path, f"{name} must be at most {_plural(hi, 'character')}; got "
                        f"{len(value)}")
        else:
            self.broken(path, f"{name} must be {_expected(shape)}; got {_quote(value)}")

    def items(self, value: list[Any], shape: _Shape, path: str) -> None:
        name = _name(path)
        lo, hi = _constraint(shape, "min_length"), _constraint(shape, "max_length")
        if lo is not None and len(value) < lo:
            self.broken(path, f"{name} must have at least {_plural(lo, 'item')}; got "
                        f"{len(value)}")
        elif hi is not None and len(value) > hi:
            self.broken(path, f"{name} must have at most {_plural(hi, 'item')}; got "
                        f"{len(value)}")
        args = typing.get_args(shape.base)
        if args:
            for i, item in enumerate(value):
                self.value(item, args[0], f"{path}[{i}]")

    def struct(self, data: dict[str, Any], struct_type: type[msgspec.Struct],
               path: str) -> Any:
        fields = _fields(struct_type)
        by_key = _by_key(struct_type)
        config = struct_type.__struct_config__
        values: dict[str, Any] = {}
        broken: set[str] = set()
        for key, value in data.items():
            f = by_key.get(key)
            if f is None:
                if config.forbid_unknown_fields:
                    self.unknown(key, path, tuple(by_key))
                continue
            ok, decoded = self.value(value, f.type, f"{path}.{key}")
            if ok:
                values[f.name] = decoded
            else:
                broken.add(f.name)
        for f in fields:
            if f.encode_name in data:
                continue
            if f.required:
                self.out.append(Violation(
                    Code.MISSING_FIELD,
                    f"{f.encode_name} is missing: it is required ({expected(f.type)})",
                    f"{path}.{f.encode_name}"))
                broken.add(f.name)
            elif f.default_factory is not msgspec.NODEFAULT:
                values[f.name] = f.default_factory()
            else:
                values[f.name] = f.default
        if broken:
            return Partial(struct_type, values, frozenset(broken))
        try:
            return struct_type(**values)
        except (TypeError, msgspec.ValidationError):  # e.g. a __post_init__ check
            return Partial(struct_type, values, frozenset())

    def unknown(self, key: str, path: str, known: tuple[str, ...]) -> None:
        hint = _did_you_mean(key[:100], known)
        self.out.append(Violation(Code.UNKNOWN_FIELD,
                                  f"unknown field {key!r}{hint}: remove it, or use one of the "
                                  f"schema's fields", f"{path}.{key}"))


def date_problem(name: str, text: str) -> str:
    """Why ``text`` is not a date as YYYY-MM-DD, and how to write it."""
    m = _ISO_DATE.match(text)
    if m:
        year, month, day = (int(g) for g in m.groups())
        if not 1 <= month <= 12:
            return f"{name}: no such month: {text} (month {m.group(2)}; months are 01 to 12)"
        if year < 1:
            return f"{name}: no such year: {text} (years start at 0001)"
        last = calendar.monthrange(year, month)[1]
        if 1 <= day <= last:
            return f"{name}: {text} is not a date (expected YYYY-MM-DD)"
        return (f"{name}: no such day: {text} ({calendar.month_name[month]} {year} has "
                f"{last} days)")
    example = _EXAMPLE_DATE
    guess = _DMY.match(text)
    if guess:
        day, month, year = (int(g) for g in guess.groups())
    else:
        guess = _YMD.match(text)
        if guess:
            year, month, day = (int(g) for g in guess.groups())
    if guess:
        with contextlib.suppress(ValueError):  # 31/02/1990: the generic example then
            example = dt.date(year, month, day).isoformat()
    return f"{name} must be a date as YYYY-MM-DD, e.g. {example}; got {_quote(text)}"


def _msgspec_message(err: msgspec.ValidationError) -> str:
    text = str(err)
    at = text.rfind(" - at `$")
    return text[:at] if at >= 0 else text


# -- the entry points ---------------------------------------------------------------------------

def explain(record_type: type[msgspec.Struct], data: Any,
            codes: Mapping[str, str] | None = None) -> Explanation:
    """Every schema problem of ``data`` (a decoded JSON value) as a ``record_type``.

    Problems come in the record's order: each field of the input as it appears (unknown fields
    among them), then the required fields that are missing. Codes are those ``schema_violation``
    gives the same problem: ``missing_field``, ``unknown_field``, the dataset's ``codes`` for a
    broken constraint, ``schema_violation`` for a wrong JSON type.
    """
    walker = _Walker(codes)
    if not isinstance(data, dict):
        walker.wrong_type("$", record_type, data)
        return Explanation(walker.out, None)
    record = walker.struct(data, record_type, "$")
    return Explanation(walker.out, record)


def _step(annotation: Any, key: str | int) -> Any:
    """The annotation one step down: a Struct's field, or a list's item; None if none."""
    shape = _shape(annotation)
    if isinstance(key, int):
        args = typing.get_args(shape.base)
        return args[0] if typing.get_origin(shape.base) is list and args else None
    if not _is_struct(shape.base):
        return None
    f = _by_key(shape.base).get(key)
    return None if f is None else f.type


_SEGMENT = re.compile(r"\.([^.\[]+)|\[(\d+)\]")


def reword(record_type: type[msgspec.Struct], data: Any, first: Violation) -> Violation:
    """``first`` (msgspec's first error, as ``schema_violation`` reports it) in this module's
    words; same code and path. One walk down ``first.path``: cheap enough for a refusal."""
    annotation: Any = record_type
    value = data
    segments = [(m.group(1), m.group(2)) for m in _SEGMENT.finditer(first.path)]
    for i, (key, index) in enumerate(segments):
        last = i == len(segments) - 1
        step: str | int = int(index) if index is not None else key
        inner = _step(annotation, step)
        if last and first.code in (Code.MISSING_FIELD, Code.UNKNOWN_FIELD):
            parent = _shape(annotation).base
            if first.code == Code.MISSING_FIELD and inner is not None:
                message = f"{key} is missing: it is required ({expected(inner)})"
                return Violation(first.code, message, first.path, first.index)
            if first.code == Code.UNKNOWN_FIELD and _is_struct(parent) and isinstance(key, str):
                walker = _Walker(None)
                walker.unknown(key, "$", tuple(_by_key(parent)))
                return Violation(first.code, walker.out[0].message, first.path, first.index)
            return first
        if inner is None:
            return first
        try:
            value = value[step]
        except (KeyError, IndexError, TypeError):
            return first
        annotation = inner
    walker = _Walker(None)
    try:
        msgspec.convert(value, annotation)
    except msgspec.ValidationError as err:
        walker.explain_value(value, annotation, first.path, err)
    else:
        return first
    for v in walker.out:
        if v.path == first.path:
            return Violation(first.code, v.message, first.path, first.index)
    return first
