"""``exchange schema``: list, show and export the dataset schemas; validate records locally.

``exchange schema validate DATASET FILE`` reads NDJSON, one JSON object, or a JSON array, of
record ``data`` objects or of whole envelopes (objects with ``specversion``; their ``data`` is
validated). Exit status: 0 every record valid, 1 some record invalid, 2 unusable input.
"""

from __future__ import annotations

import argparse
import datetime as dt
import re
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec

from exchange.core import datasets
from exchange.core.datasets import DatasetSpec, RuleContext, Validated
from exchange.core.errors import Code, ExchangeError, Violation

__all__ = ["register"]

_RAW = msgspec.json.Decoder(msgspec.Raw)
_ARRAY = msgspec.json.Decoder(list[msgspec.Raw])
_OBJECT = msgspec.json.Decoder(dict[str, msgspec.Raw])
_STR = msgspec.json.Decoder(str)
_ENCODER = msgspec.json.Encoder()
_BYTE = re.compile(r"\(byte (\d+)\)")


class Unusable(Exception):
    """The input cannot be read as records at all (exit status 2)."""


@dataclass
class Item:
    index: int
    line: int | None  # 1-based line number of an NDJSON record
    offset: int  # byte offset of ``raw`` in the input
    raw: bytes


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("schema", help="dataset schemas: list, show, export, validate",
                              description=__doc__.splitlines()[0] if __doc__ else None)
    sub = p.add_subparsers(dest="schema_command", required=True, metavar="SUBCOMMAND")

    ls = sub.add_parser("list", help="list the datasets and their versions")
    ls.set_defaults(func=_list)

    show = sub.add_parser("show", help="print a dataset's JSON Schema")
    show.add_argument("dataset")
    show.add_argument("--version", type=int, default=None, help="schema version (default latest)")
    show.set_defaults(func=_show)

    export = sub.add_parser("export", help="write <DIR>/<dataset>/v<N>/schema.json for all")
    export.add_argument("directory", metavar="DIR")
    export.set_defaults(func=_export)

    val = sub.add_parser("validate", help="validate records (NDJSON, JSON array or envelopes)")
    val.add_argument("dataset")
    val.add_argument("file", metavar="FILE", help="path, or - for standard input")
    val.add_argument("--version", type=int, default=None, help="schema version (default latest)")
    val.add_argument("--format", choices=("text", "json"), default="text")
    val.add_argument("--today", type=dt.date.fromisoformat, default=None, metavar="YYYY-MM-DD",
                     help="the date rules compare against (default: today, UTC)")
    val.set_defaults(func=_validate)


def _spec(args: argparse.Namespace) -> DatasetSpec | None:
    try:
        return datasets.get(args.dataset, args.version)
    except ExchangeError as err:
        print(f"exchange schema: {err.message}", file=sys.stderr)
        return None


def _list(args: argparse.Namespace) -> int:
    for name in datasets.names():
        for version, spec in sorted(datasets.REGISTRY[name].items()):
            groups = ", ".join(spec.groups)
            print(f"{name:<11} v{version}  {spec.type:<28} groups: {groups}")
    return 0


def _show(args: argparse.Namespace) -> int:
    spec = _spec(args)
    if spec is None:
        return 2
    sys.stdout.write(datasets.schema_text(spec))
    return 0


def _export(args: argparse.Namespace) -> int:
    try:
        for path in datasets.export_schemas(args.directory):
            print(path)
    except OSError as err:
        print(f"exchange schema export: {err}", file=sys.stderr)
        return 2
    return 0


# -- reading records ----------------------------------------------------------------------------

def _where(buf: bytes, pos: int) -> str:
    """'line L, column C' of byte offset ``pos`` (column counted in characters)."""
    pos = max(0, min(pos, len(buf)))
    line = buf.count(b"\n", 0, pos) + 1
    start = buf.rfind(b"\n", 0, pos) + 1
    col = len(buf[start:pos].decode("utf-8", "replace")) + 1
    return f"line {line}, column {col}"


def _decode_error(err: Exception, buf: bytes, offset: int, end: int) -> Unusable:
    m = _BYTE.search(str(err))
    pos = offset + int(m.group(1)) if m else end
    reason = str(err).split(" (byte")[0]
    if reason.endswith("trailing characters") and m:
        pos -= 1  # msgspec reports the byte after the first trailing one
    return Unusable(f"malformed JSON at {_where(buf, pos)}: {reason}")


def _check_utf8(buf: bytes) -> None:
    try:
        buf.decode("utf-8")
    except UnicodeDecodeError as err:
        raise Unusable(f"not UTF-8 at {_where(buf, err.start)}: {err.reason}") from None


def _items(buf: bytes) -> Iterator[Item]:
    """Split the input into raw JSON values: the items of a JSON array, or NDJSON lines."""
    if buf.lstrip().startswith(b"["):
        try:
            values = _ARRAY.decode(buf)
        except msgspec.ValidationError as err:
            raise Unusable(f"not a JSON array of records: {err}") from None
        except msgspec.DecodeError as err:
            raise _decode_error(err, buf, 0, len(buf)) from None
        for i, raw in enumerate(values):
            yield Item(i, None, 0, bytes(raw))
        return
    index = line_no = start = 0
    n = len(buf)
    while start < n:
        end = buf.find(b"\n", start)
        if end < 0:
            end = n
        line_no += 1
        line = buf[start:end]
        if line.strip():
            yield Item(index, line_no, start, line)
            index += 1
        start = end + 1


def _check_item(spec: DatasetSpec, item: Item, ctx: RuleContext) -> Validated:
    """Validate one raw value: a ``data`` object or an envelope. Raises DecodeError if not JSON."""
    raw = item.raw
    if b'"specversion"' in raw:
        try:
            obj = _OBJECT.decode(raw)
        except msgspec.ValidationError:
            obj = None
        if obj is not None and "specversion" in obj:
            etype = obj.get("type")
            if etype is not None:
                try:
                    type_name: str | None = _STR.decode(etype)
                except msgspec.ValidationError:
                    type_name = None
                if type_name != spec.type:
                    return Validated(None, [Violation(
                        Code.TYPE_MISMATCH,
                        f"envelope type {type_name!r} is not {spec.type!r}", "$.type")])
            data = obj.get("data")
            if data is None:
                return Validated(None, [Violation(Code.MISSING_FIELD, "envelope has no data",
                                                  "$.data")])
            raw = bytes(data)
    result = spec.validate_json(raw, ctx)
    if result.record is None:
        # the typed decoder stops at the first schema error; make sure the rest is JSON too
        _RAW.decode(raw)
    return result


def _check_all(spec: DatasetSpec, buf: bytes,
               ctx: RuleContext) -> Iterator[tuple[Item, Validated]]:
    """Each record with its outcome. Raises Unusable for input that is not records at all."""
    _check_utf8(buf)
    for item in _items(buf):
        try:
            yield item, _check_item(spec, item, ctx)
        except msgspec.DecodeError as err:
            if item.line is not None and item.index == 0 and "truncated" in str(err):
                # not NDJSON after all: perhaps one pretty-printed object
                try:
                    whole = Item(0, 1, 0, bytes(_RAW.decode(buf)))
                    yield whole, _check_item(spec, whole, ctx)
                except msgspec.DecodeError as whole_err:
                    raise _decode_error(whole_err, buf, 0, len(buf)) from None
                return
            raise _decode_error(err, buf, item.offset, item.offset + len(item.raw)) from None


def _violation_dict(v: Violation, index: int, line: int | None) -> dict[str, Any]:
    out: dict[str, Any] = {"index": index, "path": v.path, "code": v.code, "message": v.message}
    if line is not None:
        out["line"] = line
    return out


def _validate(args: argparse.Namespace) -> int:
    spec = _spec(args)
    if spec is None:
        return 2
    try:
        buf = sys.stdin.buffer.read() if args.file == "-" else Path(args.file).read_bytes()
    except OSError as err:
        print(f"exchange schema validate: cannot read {args.file}: {err.strerror or err}",
              file=sys.stderr)
        return 2
    ctx = RuleContext(today=args.today or dt.datetime.now(dt.UTC).date())
    errors: list[dict[str, Any]] = []
    notes: list[dict[str, Any]] = []
    total = invalid = 0
    try:
        for item, result in _check_all(spec, buf, ctx):
            total += 1
            if result.violations:
                invalid += 1
                errors.extend(_violation_dict(v, item.index, item.line)
                              for v in result.violations)
            notes.extend(_violation_dict(v, item.index, item.line) for v in result.notes)
    except (Unusable, RecursionError) as err:
        reason = str(err) if isinstance(err, Unusable) else "JSON nested too deeply"
        print(f"exchange schema validate: {args.file}: {reason}", file=sys.stderr)
        return 2
    if args.format == "json":
        report = {"dataset": spec.name, "version": spec.version, "total": total,
                  "valid": total - invalid, "invalid": invalid, "errors": errors, "notes": notes}
        sys.stdout.buffer.write(_ENCODER.encode(report) + b"\n")
        sys.stdout.flush()
    else:
        out = sys.stdout
        for e in errors:
            out.write(f"{_label(e)}: {e['path']}: {e['code']}: {e['message']}\n")
        for e in notes:
            out.write(f"{_label(e)}: {e['path']}: {e['code']} (note): {e['message']}\n")
        out.write(f"{spec.name} v{spec.version}: {total} records, {total - invalid} valid, "
                  f"{invalid} invalid, {len(notes)} notes\n")
    return 1 if invalid else 0


def _label(e: dict[str, Any]) -> str:
    return f"record {e['index']} (line {e['line']})" if "line" in e else f"record {e['index']}"
