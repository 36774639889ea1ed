"""Text normalisation for the "clean" (sạch) principle: one spelling for one value.

The canonical form of a text value is:

1. Unicode NFC (precomposed letters: "ệ" is one code point, not e + circumflex + dot);
2. trimmed, with every internal run of whitespace collapsed to one ASCII space;
3. one tone-mark placement for the open diphthongs *oa*, *oe*, *uy*: the tone goes on the first
   vowel when nothing follows the diphthong in the syllable — "Hòa", "Thủy", "Khỏe", not "Hoà",
   "Thuỷ", "Khoẻ". Vietnamese grammars call this the traditional placement (kiểu cũ); it is the
   one the official commune list of Decision 19/2025/QĐ-TTg uses for almost every name (200 "Hòa"
   to 5 "Hoà"), so choosing it changes the fewest official names. A closed syllable ("hoàng",
   "Nguyễn", "khuỷu") and *qu* + *y* ("Quý", "Quỳnh", where the u belongs to the consonant) are
   spelled the same in both styles and are left alone.

Codes (plates, VINs, certificate serials) are additionally upper-cased: ``normalise_code``.

Normalisation is reported (``normalisation_notes``) or applied by the publisher before signing
(``normalise_record``); it is never applied silently to signed content.
"""

from __future__ import annotations

import functools
import re
import unicodedata
from collections.abc import Iterable, Mapping
from typing import Any

import msgspec

from exchange.core.errors import Code, Violation

__all__ = [
    "is_normalised",
    "normalisation_notes",
    "normalise_code",
    "normalise_record",
    "normalise_text",
]

# Tone marks as combining characters: grave (huyền), acute (sắc), hook (hỏi), tilde (ngã),
# dot below (nặng).
_TONES = ("\u0300", "\u0301", "\u0309", "\u0303", "\u0323")


def _build_tone_table() -> dict[str, str]:
    """Map each misplaced pair ("oà") to its canonical spelling ("òa"), in both letter cases."""
    table: dict[str, str] = {}
    for first, second in (("o", "a"), ("o", "e"), ("u", "y")):
        for tone in _TONES:
            for f, s in ((first, second), (first.upper(), second.upper()),
                         (first.upper(), second)):
                wrong = f + unicodedata.normalize("NFC", s + tone)
                right = unicodedata.normalize("NFC", f + tone) + s
                table[wrong] = right
    return table


_TONE_TABLE = _build_tone_table()
# A candidate pair at the end of a syllable (no letter follows), not after q (qu + y: "Quý");
# one character class is much faster to search than an alternation of the 45 pairs, and the
# table then tells the real misplacements ("oà") from harmless pairs ("uà").
_TONE_RE = re.compile(
    r"(?<![qQ])[oOuU][" + "".join(sorted({k[1] for k in _TONE_TABLE})) + r"](?!\w)"
)


def _fix_tone(match: re.Match[str]) -> str:
    pair = match.group(0)
    return _TONE_TABLE.get(pair, pair)


def _misplaced_tone(s: str) -> bool:
    return any(pair in _TONE_TABLE for pair in _TONE_RE.findall(s))


def _ascii_clean(s: str) -> bool:
    # isprintable() is False for tabs and newlines, which must collapse to a space
    return not s or (s[0] != " " and s[-1] != " " and "  " not in s and s.isprintable())


def normalise_text(s: str) -> str:
    """The canonical form of a text value (NFC, trimmed, single spaces, one tone placement)."""
    if s.isascii():
        # fast path: no diacritics, so only whitespace can be off
        return s if _ascii_clean(s) else " ".join(s.split())
    s = unicodedata.normalize("NFC", s)
    s = " ".join(s.split())
    fixed = _TONE_RE.sub(_fix_tone, s)
    # a stray combining mark after the moved tone may now compose with its letter
    return s if fixed == s else unicodedata.normalize("NFC", fixed)


def normalise_code(s: str) -> str:
    """The canonical form of a code (plate, VIN, serial): normalised text, upper case."""
    return normalise_text(s).upper()


def is_normalised(s: str) -> bool:
    """Whether ``s`` is already in canonical text form; same answer as ``normalise_text(s) == s``.

    Cheaper than normalising: printable strings hold no whitespace but the ASCII space, so the
    whitespace check is three string tests.
    """
    if not s:
        return True
    if s[0] == " " or s[-1] == " " or "  " in s:
        return False
    if not s.isprintable():
        return normalise_text(s) == s
    if s.isascii():
        return True
    return unicodedata.is_normalized("NFC", s) and not _misplaced_tone(s)


@functools.lru_cache(maxsize=256)
def _parts(dotted: str) -> tuple[str, ...]:
    return tuple(dotted.split("."))


def _lookup(data: Any, dotted: str) -> Any:
    value = data
    for part in _parts(dotted):
        if isinstance(value, msgspec.Struct):  # the hot path: a decoded record
            value = getattr(value, part, None)
        elif isinstance(value, Mapping):
            value = value.get(part)
        else:
            return None
        if value is None:
            return None
    return value


def normalisation_notes(data: Any, text_fields: Iterable[str]) -> list[Violation]:
    """A ``not_normalised`` note for each text field (dotted path) not in canonical form.

    ``data`` is a record's ``data`` as a mapping or as its decoded Struct.
    """
    notes: list[Violation] = []
    for dotted in text_fields:
        value = _lookup(data, dotted)
        if value is None:
            continue
        if isinstance(value, str):
            if is_normalised(value):
                continue
            notes.append(Violation(
                Code.NOT_NORMALISED,
                f"not in canonical form (NFC, trimmed, single spaces, tone placement \"Hòa\"); "
                f"normalised: {normalise_text(value)!r}",
                f"$.{dotted}",
            ))
        elif isinstance(value, list):
            for i, item in enumerate(value):
                if isinstance(item, str) and not is_normalised(item):
                    notes.append(Violation(
                        Code.NOT_NORMALISED,
                        f"not in canonical form; normalised: {normalise_text(item)!r}",
                        f"$.{dotted}[{i}]",
                    ))
    return notes


def _all_normalised(value: Any) -> bool:
    for v in value.values() if isinstance(value, Mapping) else value:
        if isinstance(v, str):
            if not is_normalised(v):
                return False
        elif isinstance(v, Mapping | list) and not _all_normalised(v):
            return False
    return True


def normalise_record(
    data: Mapping[str, Any], code_fields: Iterable[str] = ()
) -> tuple[dict[str, Any], list[str]]:
    """Normalise every string in ``data``; upper-case the dotted ``code_fields`` too.

    Returns the new data (``data`` is not modified) and the JSONPaths that changed. Publishers
    apply this before signing.
    """
    codes = frozenset(code_fields)
    if not codes and _all_normalised(data):
        # the common case, a record already in canonical form: one pass of C string tests,
        # no paths built
        return dict(data), []
    changed: list[str] = []

    def walk(value: Any, dotted: str, path: str) -> Any:
        if isinstance(value, str):
            new = normalise_code(value) if dotted in codes else normalise_text(value)
            if new != value:
                changed.append(path)
            return new
        if isinstance(value, Mapping):
            return {k: walk(v, f"{dotted}.{k}" if dotted else str(k), f"{path}.{k}")
                    for k, v in value.items()}
        if isinstance(value, list):
            return [walk(v, dotted, f"{path}[{i}]") for i, v in enumerate(value)]
        return value

    new_data: dict[str, Any] = walk(data, "", "$")
    return new_data, changed
