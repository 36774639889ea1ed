"""Canonical bytes: the JSON Canonicalization Scheme, RFC 8785 (pure).

Everything the exchange signs or hashes as JSON (record attributes and commitments, group
fields, batch statements, receipts, agreement documents) is encoded here, so that a verifier in
any language can rebuild the same bytes with an RFC 8785 library (docs/canonical.md):

- UTF-8, no whitespace; object members sorted by their keys' UTF-16 code units (§3.2.3);
- strings as ECMAScript's ``JSON.stringify`` writes them: ``"`` and ``\\`` escaped, control
  characters as ``\\b \\t \\n \\f \\r`` or ``\\u00xx`` (lower-case hex), everything else raw
  UTF-8, ``/`` not escaped (§3.2.2.2);
- numbers as ECMAScript's ``Number::toString`` writes them (§3.2.2.3): ``100.0`` is ``100``,
  ``-0.0`` is ``0``, ``1e-7`` and ``1e+21`` use exponents, ``1e20`` does not;
- integers only within ±(2**53 − 1), the doubles' exact range (RFC 7493 §2.2, I-JSON); NaN and
  infinities have no JSON form. Both are refused with ``ValueError``.

One extension, for the binary values the core hashes (commitments, roots): ``bytes`` encode as
a JSON string holding their standard base64 (RFC 4648 §4, with padding), what msgspec writes.

msgspec's sorted encoder already writes strings, integers and ``bytes`` exactly so, and sorts by
code point, which is UTF-16 order unless a key holds a character above U+FFFF. ``encode`` scans
the value once: without floats, out-of-range integers or such keys (every population, tax and
vehicle record) msgspec's bytes are the canonical bytes; floats are replaced by their RFC 8785
text (``msgspec.Raw``); the rare object with an astral key is encoded by the ``rfc8785``
reference package.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import msgspec
import msgspec.inspect as mi
import rfc8785

__all__ = ["MAX_INT", "Shape", "encode", "encode_checked", "encoder", "number", "number_is_plain",
           "received", "shape"]

#: the largest integer every JSON implementation holds exactly (IEEE 754 doubles)
MAX_INT = 2**53 - 1

_enc = msgspec.json.Encoder(order="sorted")
_SCALARS = frozenset({str, bool, type(None), bytes})
_FLOAT_LO, _FLOAT_HI = 1e-5, 1e16


def encode(value: Any) -> bytes:
    """The RFC 8785 bytes of a JSON value (``bytes`` as base64 strings). Raises ``ValueError``
    for NaN, infinities and integers beyond ±(2**53 − 1), ``TypeError`` for what JSON cannot
    hold (a non-string key, an arbitrary object)."""
    if _plain(value):
        return _enc.encode(value)
    return _careful(value)


#: ``encode`` for a value the caller has checked is in the fast domain (strings, bytes,
#: booleans, null, safe integers, fractional floats in [1e-5, 1e16), BMP keys): msgspec's
#: bytes, unchecked (its bound method itself: no Python frame per call on the gate's path)
encode_checked: Callable[[Any], bytes] = _enc.encode


def number(x: float) -> str:
    """An RFC 8785 number (ECMAScript ``Number::toString``, ECMA-262 §6.1.6.1.20)."""
    if x != x or x in (math.inf, -math.inf):
        raise ValueError(f"{x} has no canonical form (RFC 8785 §3.2.2.3)")
    if x == 0:
        return "0"  # -0 too
    if x.is_integer() and -MAX_INT <= x <= MAX_INT:
        return str(int(x))
    # Python's repr is the shortest round-tripping decimal, as ECMAScript's; only the layout
    # differs: find the digits d1..dk and the exponent n with x = 0.d1..dk × 10**n
    sign = "-" if x < 0 else ""
    mantissa, _, exp = repr(abs(x)).partition("e")
    whole, _, frac = mantissa.partition(".")
    n = int(exp or 0)
    if whole == "0":
        digits = frac.lstrip("0")
        n -= len(frac) - len(digits)
    else:
        digits = whole + frac
        n += len(whole)
    digits = digits.rstrip("0")
    k = len(digits)
    if k <= n <= 21:
        out = digits + "0" * (n - k)
    elif 0 < n <= 21:
        out = f"{digits[:n]}.{digits[n:]}"
    elif -6 < n <= 0:
        out = f"0.{'0' * -n}{digits}"
    else:
        e = n - 1
        out = f"{digits[0]}{'.' + digits[1:] if k > 1 else ''}e{'+' if e > 0 else '-'}{abs(e)}"
    return sign + out


def encoder(value: Any) -> Callable[[Any], bytes]:
    """An encoder for the parts of ``value`` (the fields of one record, split into groups):
    ``value`` is checked once, and its parts are encoded without checking each again."""
    return _enc.encode if _plain(value) else _careful


def _plain(v: Any) -> bool:
    """Whether msgspec's sorted encoding of ``v`` is already its RFC 8785 encoding: only
    strings, bytes, booleans, null, safe integers, and containers of them with BMP keys.

    Recursive only through containers (records nest two or three levels; the gate bounds
    depth), with one C-level pass over each object's keys: a record costs about twice
    msgspec's own encoding, which measured fastest of the pure-Python scans tried."""
    t = type(v)
    if t is dict:
        try:
            keys = "".join(v)
        except TypeError:  # a key that is not a string
            return False
        if not keys.isascii() and max(keys) > "\uffff":
            return False
        values: Any = v.values()
        try:  # all strings (a group of text fields): one C-level pass says so
            "".join(values)
            return True
        except TypeError:
            pass
    elif t is list:
        values = v
    elif t is int:
        return bool(-MAX_INT <= v <= MAX_INT)
    elif t is float:
        return not v.is_integer() and _FLOAT_LO <= abs(v) < _FLOAT_HI
    else:
        return t in _SCALARS
    for x in values:
        tx = type(x)
        if tx in _SCALARS:
            continue
        if tx is int:
            if not -MAX_INT <= x <= MAX_INT:
                return False
        elif tx is float:
            # msgspec writes the shortest round-tripping digits as ECMAScript does, and in the
            # same layout for fractional values from 1e-5 to 1e16 (checked against rfc8785 by
            # tests/test_canonical.py): a land parcel's area needs no rewriting
            if x.is_integer() or not _FLOAT_LO <= abs(x) < _FLOAT_HI:
                return False
        elif tx is dict or tx is list:
            if not _plain(x):
                return False
        else:
            return False
    return True


def _careful(value: Any) -> bytes:
    """The general case: floats as RFC 8785 numbers (``msgspec.Raw``), every bound checked;
    Structs, enums and tuples as msgspec sees them. Subtrees without floats are not copied."""
    if type(value) not in _TREES:
        value = msgspec.to_builtins(value)  # Struct -> dict, tuple -> list, bytes -> base64
    astral = [False]
    fixed = _fix(value, astral)
    if astral[0]:
        # keys beyond the BMP sort by UTF-16 code units, not code points: the reference
        # implementation's order (rare enough that its speed does not matter)
        return rfc8785.dumps(msgspec.to_builtins(value))
    return _enc.encode(fixed)


_TREES = frozenset({dict, list})


def _fix(v: Any, astral: list[bool]) -> Any:
    """``v`` with its floats replaced by their RFC 8785 text; ``v`` itself when it has none."""
    t = type(v)
    if t is float:
        return msgspec.Raw(number(v).encode())
    if t is int:
        if not -MAX_INT <= v <= MAX_INT:
            raise ValueError(f"integer {v} is beyond ±(2**53 - 1): it has no canonical form "
                             "(RFC 8785 §3.2.2.3, I-JSON)")
        return v
    if t is dict:
        try:
            keys = "".join(v)
        except TypeError:
            raise TypeError(f"an object key of {list(v)!r} is not a string") from None
        if not keys.isascii() and max(keys) > "\uffff":
            astral[0] = True
        out: dict[str, Any] | None = None
        for k, x in v.items():
            if type(x) in _SCALARS:
                continue
            y = _fix(x, astral)
            if y is not x:
                if out is None:
                    out = dict(v)
                out[k] = y
        return v if out is None else out
    if t is list:
        new = [x if type(x) in _SCALARS else _fix(x, astral) for x in v]
        return v if all(a is b for a, b in zip(new, v, strict=True)) else new
    if t in _SCALARS:
        return v
    raise TypeError(f"{t.__name__} has no JSON form")


# -- what a schema guarantees -------------------------------------------------------------------


def number_is_plain(x: Any) -> bool:
    """Whether msgspec writes the number ``x`` as RFC 8785 does (what ``_plain`` lets through)."""
    t = type(x)
    if t is int:
        return bool(-MAX_INT <= x <= MAX_INT)
    if t is float:
        return not x.is_integer() and _FLOAT_LO <= abs(x) < _FLOAT_HI
    return True


def received(shape: Shape | None, data: Mapping[str, Any]) -> Callable[[Any], bytes]:
    """An encoder for the parts of a record a subscriber *received* and is about to verify.

    Where the record type vouches for msgspec's bytes (``shape``, its numbers plain), each part
    is msgspec's encoding, unchecked: a value outside the type's domain (a float in a text
    field, a big integer) gives other bytes than the publisher signed, so the record fails
    verification as altered, which it is. The one encoding msgspec shares between two JSON
    values is ``null`` (NaN and the infinities are written so): a part whose bytes hold
    ``null`` is encoded carefully, which refuses them. Otherwise ``encoder(data)``."""
    if shape is None or not shape.plain(data):
        return encoder(data)
    return _received_part


def _received_part(part: Any) -> bytes:
    out = _enc.encode(part)
    return out if b"null" not in out else encode(part)


@dataclass(frozen=True, slots=True)
class Shape:
    """What every value that converts to a record type (``msgspec.convert``, strict) holds,
    as far as canonical bytes and the gate's limits care.

    Such a value is in msgspec's canonical domain (strings, booleans, null, safe integers,
    containers of them with the type's own ASCII keys), but for the top-level fields in
    ``numbers``, whose integers or floats must each pass ``number_is_plain``: the one check
    left per record, where ``_plain`` walks every value. ``depth``: the deepest container
    (``data`` is 1), ``fields``: the most top-level fields."""

    numbers: tuple[str, ...]
    depth: int
    fields: int

    def plain(self, data: Mapping[str, Any]) -> bool:
        """Whether the numbers of ``data`` (a value the record type may accept) are plain."""
        for f in self.numbers:
            x = data.get(f)
            if x is not None and not number_is_plain(x):
                return False
        return True


_shapes: dict[type, Shape | None] = {}


def shape(record_type: type) -> Shape | None:
    """The ``Shape`` of a Struct type, or None when a value it accepts may lie outside
    msgspec's canonical domain in ways a per-field check cannot tell (free-form ``Any`` or
    dict values, floats below the top level, recursive types, unknown fields ignored)."""
    if record_type not in _shapes:
        _shapes[record_type] = _shape_of(record_type)
    return _shapes[record_type]


class _Unsafe(Exception):
    pass


def _shape_of(record_type: type) -> Shape | None:
    info = mi.type_info(record_type)
    if not isinstance(info, mi.StructType) or info.array_like:
        return None
    try:
        depths = {f.encode_name: _depth(f.type, top=True, seen={record_type})
                  for f in _struct_fields(info)}
    except _Unsafe:
        return None
    return Shape(tuple(f for f, d in depths.items() if d < 0),
                 1 + max((max(d, 0) for d in depths.values()), default=0), len(depths))


def _struct_fields(info: mi.StructType) -> tuple[mi.Field, ...]:
    if not info.forbid_unknown_fields:
        raise _Unsafe  # an ignored unknown field may hold anything
    if any(not f.encode_name.isascii() for f in info.fields) or (
            info.tag_field is not None and not info.tag_field.isascii()):
        raise _Unsafe
    return info.fields


def _depth(t: mi.Type, *, top: bool, seen: set[type]) -> int:
    """The container depth a value of ``t`` adds (0 for a scalar), negated when it is a
    number that needs ``number_is_plain`` (allowed only at the top level)."""
    while isinstance(t, mi.Metadata):
        t = t.type
    if isinstance(t, (mi.StrType, mi.BoolType, mi.NoneType, mi.DateType, mi.DateTimeType,
                      mi.TimeType)):
        return 0
    if isinstance(t, mi.LiteralType):
        if all(type(v) is str or (type(v) is int and -MAX_INT <= v <= MAX_INT)
               for v in t.values):
            return 0
        raise _Unsafe
    if isinstance(t, mi.IntType):
        lo = t.ge if t.ge is not None else (t.gt + 1 if t.gt is not None else None)
        hi = t.le if t.le is not None else (t.lt - 1 if t.lt is not None else None)
        if lo is not None and hi is not None and lo >= -MAX_INT and hi <= MAX_INT:
            return 0
        if top:
            return -1
        raise _Unsafe
    if isinstance(t, mi.FloatType):
        if top:
            return -1
        raise _Unsafe
    if isinstance(t, mi.UnionType):
        depths = [_depth(u, top=top, seen=seen) for u in t.types]
        if any(d < 0 for d in depths):
            if any(d > 0 for d in depths):
                raise _Unsafe
            return -1
        return max(depths)
    if isinstance(t, (mi.ListType, mi.SetType, mi.FrozenSetType, mi.VarTupleType)):
        return 1 + _nested(t.item_type, seen)
    if isinstance(t, mi.TupleType):
        return 1 + max((_nested(u, seen) for u in t.item_types), default=0)
    if isinstance(t, mi.StructType):
        if t.cls in seen or t.array_like:
            raise _Unsafe  # recursive: no bound on depth
        inner = seen | {t.cls}
        return 1 + max((_nested(f.type, inner) for f in _struct_fields(t)), default=0)
    raise _Unsafe  # Any, dict (free keys), bytes, decimals, enums, ...


def _nested(t: mi.Type, seen: set[type]) -> int:
    return _depth(t, top=False, seen=seen)
