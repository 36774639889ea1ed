"""``exchange schema``: list, show and export the dataset schemas; validate records locally.

``exchange schema validate DATASET FILE`` reads NDJSON (streamed, in constant memory), one
JSON object, or a JSON array, of record ``data`` objects or of whole envelopes (objects with
``specversion``; their ``data`` is validated), and reports every problem of every record.
Exit status: 0 every record valid, 1 some record invalid, 2 unusable input (unreadable, empty,
no line of it JSON, a broken JSON array).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import io
import itertools
import json
import os
import re
import stat
import sys
import time
import xml.etree.ElementTree as ET
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, TextIO

import msgspec

from exchange.core import datasets
from exchange.core.datasets import DatasetSpec, RuleContext, Validated, compat
from exchange.core.envelope import parse_type
from exchange.core.errors import Code, ExchangeError, Violation

__all__ = ["register"]

_RAW = msgspec.json.Decoder(msgspec.Raw)
_ARRAY = msgspec.json.Decoder(list[msgspec.Raw])
_OBJECT = msgspec.json.Decoder(dict[str, msgspec.Raw])
_STR = msgspec.json.Decoder(str)
_ENCODER = msgspec.json.Encoder()


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("schema", help="dataset schemas: list, show, export, validate",
                              description=__doc__.splitlines()[0] if __doc__ else None)
    sub = p.add_subparsers(dest="schema_command", required=True, metavar="SUBCOMMAND")

    ls = sub.add_parser("list", help="list the datasets and their versions")
    ls.set_defaults(func=_list)

    show = sub.add_parser("show", help="print a dataset's JSON Schema")
    show.add_argument("dataset", help="dataset name (population, tax, land, vehicle)")
    show.add_argument("--version", type=int, default=None, help="schema version (default latest)")
    show.set_defaults(func=_show)

    export = sub.add_parser("export", help="write <DIR>/<dataset>/v<N>/schema.json for all, "
                            "refusing to change a published version (<DIR>/published.json)")
    export.add_argument("directory", metavar="DIR", help="where to write (the repo: schemas)")
    export.set_defaults(func=_export)

    vers = sub.add_parser("versions", help="a dataset's schema versions: digest, mode, what "
                          "each added")
    vers.add_argument("dataset", help="dataset name (population, tax, land, vehicle)")
    vers.add_argument("--format", choices=("text", "json"), default="text")
    vers.set_defaults(func=_versions)

    diff = sub.add_parser("diff", help="what changed between two versions, and whether each "
                          "reads the other")
    diff.add_argument("dataset", help="dataset name")
    diff.add_argument("old", type=int, metavar="OLD", help="the earlier version")
    diff.add_argument("new", type=int, metavar="NEW", help="the later version")
    diff.set_defaults(func=_diff)

    check = sub.add_parser("check", help="check a proposed JSON Schema against every published "
                           "version (exit 0 compatible, 1 not, 2 unusable)")
    check.add_argument("dataset", help="dataset name")
    check.add_argument("file", metavar="FILE", help="the proposed version's JSON Schema (as "
                       "`schema show` prints one, with x-exchange.disclosure_groups)")
    check.add_argument("--mode", choices=compat.MODES, default=None,
                       help="compatibility mode (default: the dataset's)")
    check.set_defaults(func=_check)

    val = sub.add_parser("validate", help="validate records (NDJSON, JSON array or envelopes)")
    val.add_argument("dataset", help="dataset name (population, tax, land, vehicle)")
    val.add_argument("file", metavar="FILE", help="path, or - for standard input")
    val.add_argument("--version", type=int, default=None, help="schema version (default latest)")
    val.add_argument("--format", choices=("text", "json", "junit"), default="text",
                     help="text (default), a JSON report, or JUnit XML for CI")
    val.add_argument("--today", type=dt.date.fromisoformat, default=None, metavar="YYYY-MM-DD",
                     help="the date rules compare against (default: today, UTC)")
    val.add_argument("--max-errors", type=_count, default=1000, metavar="N",
                     help="show at most N problems (and N notes), count the rest "
                          "(default 1000; 0: no limit)")
    val.add_argument("--no-progress", action="store_true",
                     help="no progress line on a terminal")
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
    except (OSError, datasets.PublishedVersionChanged) as err:
        print(f"exchange schema export: {err}", file=sys.stderr)
        return 2
    return 0


def _versions(args: argparse.Namespace) -> int:
    try:
        history = datasets.version_history(args.dataset, "")
    except ExchangeError as err:
        print(f"exchange schema: {err.message}", file=sys.stderr)
        return 2
    if args.format == "json":
        sys.stdout.buffer.write(_ENCODER.encode(history) + b"\n")
        return 0
    print(f"{history['dataset']}: {len(history['versions'])} version(s), latest "
          f"v{history['latest']}, mode {history['compatibility']}")
    for v in history["versions"]:
        added = (f"adds groups {', '.join(v['added_groups'])} ({', '.join(v['added_fields'])})"
                 if v["version"] > 1 else f"groups {', '.join(v['groups'])}")
        print(f"  v{v['version']}  {v['type']:<28} sha256 {v['sha256'][:16]}  {added}")
    return 0


def _diff(args: argparse.Namespace) -> int:
    try:
        old = datasets.get(args.dataset, args.old)
        new = datasets.get(args.dataset, args.new)
    except ExchangeError as err:
        print(f"exchange schema: {err.message}", file=sys.stderr)
        return 2
    a, b = old.json_schema(), new.json_schema()
    print(f"{args.dataset} v{args.old} -> v{args.new}")
    for line in compat.describe_changes(a, b):
        print(f"  {line}")
    found = compat.breaks(a, b, against=args.old)
    for direction, what in (("backward", f"v{args.new} reads every v{args.old} record"),
                            ("forward", f"a v{args.old} reader reads every v{args.new} record "
                                        "as delivered to it")):
        mine = [x for x in found if x.direction in (direction, "groups")]
        print(f"{direction}: {'yes' if not mine else 'NO'} ({what})")
        for x in mine:
            print(f"  {x.path}: {x.message}")
    return 1 if found else 0


def _check(args: argparse.Namespace) -> int:
    try:
        specs = datasets.versions(args.dataset)
        text = (sys.stdin.read() if args.file == "-"
                else Path(args.file).read_text(encoding="utf-8"))
        proposed = json.loads(text)
        if not isinstance(proposed, dict) or "x-exchange" not in proposed:
            raise ValueError("not an exported dataset schema (no x-exchange member)")
    except ExchangeError as err:
        print(f"exchange schema: {err.message}", file=sys.stderr)
        return 2
    except (OSError, ValueError) as err:
        print(f"exchange schema check: {args.file}: {err}", file=sys.stderr)
        return 2
    mode = args.mode or specs[-1].compatibility
    version = specs[-1].version + 1
    try:
        found = compat.check_version(mode, version, proposed,
                                     {s.version: s.json_schema() for s in specs})
    except (ValueError, KeyError, TypeError) as err:
        print(f"exchange schema check: {args.file}: cannot compare: {err!r}", file=sys.stderr)
        return 2
    against = "every published version" if mode.endswith("_TRANSITIVE") else "the latest"
    if not found:
        print(f"{args.dataset} v{version} (proposed) is {mode} compatible with {against} "
              f"(v{', v'.join(str(s.version) for s in specs)})")
        return 0
    print(f"{args.dataset} v{version} (proposed) is not {mode} compatible:")
    for x in found:
        print(f"  {x}")
    return 1


# -- validate: reading records ------------------------------------------------------------------
#
# NDJSON is read in chunks, line by line, in constant memory whatever the file's size; only a
# JSON array (input starting with "[") is read whole, and the report says so. Every problem of a
# line is reported and validation goes on with the next line: a malformed line, bytes that are
# not UTF-8, a line too long to hold. A record spread over several lines (one pretty-printed
# object) is joined back when its first line is an unfinished "{".

_CHUNK = 1 << 20
#: a line longer than this is reported (``too_large``) and skipped, never held: 256 times the
#: broker's default ``max_record_bytes`` (64 KiB)
_MAX_LINE = 16 << 20
#: how far a pretty-printed record may spread over lines before it is taken as malformed
_MAX_JOINED = 1 << 20
#: the progress line is drawn for an input of at least this size (or of unknown size)
_PROGRESS_BYTES = 8 << 20
_BOM = b"\xef\xbb\xbf"
_UTF16_BOMS = (b"\xff\xfe", b"\xfe\xff")


def _count(text: str) -> int:
    n = int(text)
    if n < 0:
        raise argparse.ArgumentTypeError("must be 0 or more")
    return n


@dataclass
class Item:
    """One raw value of the input, or one line that is not a value (``problem``)."""

    index: int
    line: int | None  # 1-based line of an NDJSON record (its first line when joined)
    raw: bytes
    problem: dict[str, Any] | None = None


class Source:
    """Chunks of the input with a count of the bytes read (for the progress line)."""

    def __init__(self, stream: BinaryIO, progress: Progress | None) -> None:
        self.stream = stream
        self.read_bytes = 0
        self.progress = progress

    def chunks(self) -> Iterator[bytes]:
        while chunk := self.stream.read(_CHUNK):
            self.read_bytes += len(chunk)
            yield chunk

    def rest(self) -> bytes:
        data = self.stream.read()
        self.read_bytes += len(data)
        return data


class Lines:
    """NDJSON lines from chunks: (line number, bytes or None for a line over ``max_line``).

    Holds at most one line and one chunk; ``push_back`` returns lines read ahead.
    """

    def __init__(self, chunks: Iterator[bytes], max_line: int = _MAX_LINE) -> None:
        self._chunks = chunks
        self._max = max_line
        self._pending: deque[tuple[int, bytes | None]] = deque()
        self._ready: deque[bytes | None] = deque()
        self._tail = b""
        self._skipping = False  # inside a line over the limit: drop bytes until its end
        self._line_no = 0
        self._done = False

    def push_back(self, lines: list[tuple[int, bytes | None]]) -> None:
        self._pending.extendleft(reversed(lines))

    def __iter__(self) -> Lines:
        return self

    def __next__(self) -> tuple[int, bytes | None]:
        if self._pending:
            return self._pending.popleft()
        while not self._ready:
            if self._done:
                raise StopIteration
            self._fill()
        self._line_no += 1
        return self._line_no, self._ready.popleft()

    def _fill(self) -> None:
        chunk = next(self._chunks, None)
        if chunk is None:
            self._done = True
            if self._skipping:
                self._ready.append(None)
            elif self._tail:
                self._ready.append(self._tail)
            self._tail = b""
            return
        parts = chunk.split(b"\n")
        for part in parts[:-1]:
            if self._skipping:
                self._skipping = False
                self._ready.append(None)
            elif self._tail:
                line = self._tail + part
                self._tail = b""
                self._ready.append(line if len(line) <= self._max else None)
            else:
                self._ready.append(part if len(part) <= self._max else None)
        last = parts[-1]
        if self._skipping:
            return
        self._tail += last
        if len(self._tail) > self._max:
            self._tail = b""
            self._skipping = True


def _problem(code: str, message: str, *, index: int | None = None, line: int | None = None,
             column: int | None = None, path: str = "$") -> dict[str, Any]:
    out: dict[str, Any] = {}
    if index is not None:
        out["index"] = index
    if line is not None:
        out["line"] = line
    if column is not None:
        out["column"] = column
    out.update(path=path, code=code, message=message)
    return out


_BYTE = re.compile(r"\(byte (\d+)\)")


def _position(err: Exception, raw: bytes) -> tuple[int, int, str]:
    """(line offset within ``raw``, 1-based column in characters, reason) of a DecodeError."""
    text = str(err)
    m = _BYTE.search(text)
    pos = int(m.group(1)) if m else len(raw)
    reason = text.split(" (byte")[0].removeprefix("JSON is malformed: ")
    if "truncated" in reason:
        reason = "the input ends before the JSON value does"
    if reason.endswith("trailing characters") and m:
        pos -= 1  # msgspec reports the byte after the first trailing one
    pos = max(0, min(pos, len(raw)))
    lines = raw.count(b"\n", 0, pos)
    start = raw.rfind(b"\n", 0, pos) + 1
    return lines, len(raw[start:pos].decode("utf-8", "replace")) + 1, reason


def _utf8_problem(raw: bytes) -> tuple[int, int, str] | None:
    """(line offset, column, reason) of the first byte of ``raw`` that is not UTF-8."""
    if raw.isascii():
        return None
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError as err:
        lines = raw.count(b"\n", 0, err.start)
        start = raw.rfind(b"\n", 0, err.start) + 1
        column = len(raw[start:err.start].decode("utf-8", "replace")) + 1
        return lines, column, f"byte 0x{raw[err.start]:02x} is not UTF-8 ({err.reason})"
    return None


class Reader:
    """The records of one input, with the problems of the input itself (``notes``, ``fatal``)."""

    def __init__(self, source: Source, note: Callable[[dict[str, Any]], None]) -> None:
        self.source = source
        self.note = note
        #: the input is unusable as a whole (a broken JSON array, UTF-16): no records at all
        self.fatal: dict[str, Any] | None = None

    def items(self) -> Iterator[Item]:
        chunks = self.source.chunks()
        first = b""
        for chunk in chunks:
            first += chunk
            if first.lstrip() or len(first) >= 3:
                break
        if first.startswith(_BOM):
            first = first[len(_BOM):]
            self.note(_problem(
                Code.BYTE_ORDER_MARK, "the input starts with a UTF-8 byte order mark; it was "
                "skipped (RFC 8259 §8.1: JSON text must not begin with one)", line=1))
        elif first.startswith(_UTF16_BOMS):
            self.fatal = _problem(Code.BAD_ENCODING, "the input is UTF-16 (it starts with a "
                                  "UTF-16 byte order mark); save it as UTF-8", line=1, column=1)
            return
        if first.lstrip().startswith(b"["):
            yield from self._array(first + self.source.rest())
            return
        yield from self._ndjson(Lines(itertools.chain((first,), chunks)))

    def _array(self, buf: bytes) -> Iterator[Item]:
        self.note(_problem(
            Code.NOT_STREAMED, f"a JSON array is read whole into memory "
            f"({len(buf) / 1e6:.1f} MB); write NDJSON (one record a line) to validate files "
            "of any size in constant memory"))
        bad = _utf8_problem(buf)
        if bad is not None:
            lines, column, reason = bad
            self.fatal = _problem(Code.BAD_ENCODING, reason, line=lines + 1, column=column)
            return
        try:
            values = _ARRAY.decode(buf)
        except msgspec.DecodeError as err:
            lines, column, reason = _position(err, buf)
            self.fatal = _problem(Code.MALFORMED, f"malformed JSON: {reason}", line=lines + 1,
                                  column=column)
            return
        for i, raw in enumerate(values):
            yield Item(i, None, bytes(raw))

    def _ndjson(self, lines: Lines) -> Iterator[Item]:
        index = 0
        for line_no, raw in lines:
            if raw is None:
                yield Item(index, line_no, b"", _problem(
                    Code.TOO_LARGE, f"the line is longer than {_MAX_LINE >> 20} MiB; skipped",
                    index=index, line=line_no))
                index += 1
                continue
            if not raw.strip():
                continue
            bad = _utf8_problem(raw)
            if bad is not None:
                yield Item(index, line_no, raw, _problem(
                    Code.BAD_ENCODING, bad[2], index=index, line=line_no, column=bad[1]))
                index += 1
                continue
            if raw.lstrip()[:1] in (b"{", b"[") and not raw.rstrip().endswith((b"}", b"]")):
                # perhaps the first line of a pretty-printed record; if not, the check
                # reports the line malformed
                raw = self._join(lines, raw) or raw
            yield Item(index, line_no, raw)
            index += 1

    @staticmethod
    def _join(lines: Lines, first: bytes) -> bytes | None:
        """``first`` and the lines after it, if together they are one (pretty-printed) JSON
        value; else None, and the lines read ahead are pushed back."""
        taken: list[tuple[int, bytes | None]] = []
        buf = first
        for line_no, raw in lines:
            taken.append((line_no, raw))
            # a new record starts at column 0; a pretty-printed one's inner lines are indented
            if raw is None or raw.startswith((b"{", b"[")) or len(buf) > _MAX_JOINED:
                break
            buf += b"\n" + raw
            if raw.lstrip().startswith((b"}", b"]")):
                try:
                    _RAW.decode(buf)
                except msgspec.DecodeError as err:
                    if "truncated" in str(err):
                        continue
                    break
                if _utf8_problem(buf) is None:
                    return buf
                break
        lines.push_back(taken)
        return None


# -- validate: checking records -------------------------------------------------------------------

def _check_item(spec: DatasetSpec, raw: bytes, ctx: RuleContext, *,
                pinned: bool = True) -> Validated:
    """Every problem of one raw value: a ``data`` object or an envelope (``validate_json_all``:
    the typed decoder's fast path, and every problem of a record it refuses). An envelope of
    another version of the dataset is checked against its own version unless the version was
    ``pinned`` (``--version``). Raises ``msgspec.DecodeError`` if ``raw`` is not JSON."""
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
                own = _own_version(spec, type_name) if not pinned else None
                if own is not None:
                    spec = own
                elif type_name != spec.type:
                    return Validated(None, [Violation(
                        Code.TYPE_MISMATCH,
                        f"envelope type {type_name!r} is not {spec.type!r}", "$.type")])
            data = obj.get("data")
            if data is None:
                return Validated(None, [Violation(Code.MISSING_FIELD, "envelope has no data",
                                                  "$.data")])
            raw = bytes(data)
    return spec.validate_json_all(raw, ctx)


def _own_version(spec: DatasetSpec, type_name: str | None) -> DatasetSpec | None:
    """The registered version of ``spec``'s dataset that an envelope's ``type`` names."""
    if type_name is None:
        return None
    try:
        name, version = parse_type(type_name)
        return datasets.get(name, version) if name == spec.name else None
    except ExchangeError:
        return None


def _label(e: dict[str, Any]) -> str:
    where = ", ".join(f"{k} {e[k]}" for k in ("line", "column") if k in e)
    what = f"record {e['index']}" if "index" in e else "input"
    return f"{what} ({where})" if where else what


def _plural(n: int, noun: str) -> str:
    return f"{n:,} {noun}" + ("" if n == 1 else "s")


class Report:
    """What ``validate`` found: counts, and the problems and notes up to ``max_shown`` each.
    In text format each is written as it is found; JSON and JUnit are written at the end."""

    def __init__(self, spec: DatasetSpec, fmt: str, max_shown: int, out: TextIO,
                 progress: Progress | None) -> None:
        self.spec = spec
        self.fmt = fmt
        self.max_shown = max_shown or sys.maxsize
        self.out = out
        self.progress = progress
        self.total = self.invalid = self.decoded = 0
        self.errors: list[dict[str, Any]] = []
        self.notes: list[dict[str, Any]] = []
        self.error_count = self.note_count = 0
        self.unusable: str | None = None

    def record(self, item: Item, result: Validated | None,
               problem: dict[str, Any] | None = None) -> None:
        self.total += 1
        if result is not None:
            self.decoded += 1
        found = [problem] if problem is not None else [
            self._dict(v, item) for v in result.violations] if result is not None else []
        if found:
            self.invalid += 1
            for e in found:
                self.error(e)
        if result is not None:
            for v in result.notes:
                self.note(self._dict(v, item))

    @staticmethod
    def _dict(v: Violation, item: Item) -> dict[str, Any]:
        return _problem(v.code, v.message, index=item.index, line=item.line, path=v.path)

    def error(self, e: dict[str, Any]) -> None:
        self.error_count += 1
        if len(self.errors) < self.max_shown:
            self.errors.append(e)
            self._write(e, "")

    def note(self, e: dict[str, Any]) -> None:
        self.note_count += 1
        if len(self.notes) < self.max_shown:
            self.notes.append(e)
            self._write(e, " (note)")

    def _write(self, e: dict[str, Any], kind: str) -> None:
        if self.fmt == "text":
            if self.progress is not None:
                self.progress.clear()
            self.out.write(f"{_label(e)}: {e['path']}: {e['code']}{kind}: {e['message']}\n")

    def finish(self, source_name: str) -> None:
        if self.progress is not None:
            self.progress.clear()
        if self.fmt == "json":
            self._json()
        elif self.fmt == "junit":
            self.out.write(_junit(self, source_name))
        else:
            self._text()
        self.out.flush()

    def _not_shown(self) -> tuple[int, int]:
        return self.error_count - len(self.errors), self.note_count - len(self.notes)

    def _text(self) -> None:
        errors, notes = self._not_shown()
        if errors or notes:
            parts = [_plural(n, what) for n, what in ((errors, "problem"), (notes, "note")) if n]
            self.out.write(f"… and {' and '.join(parts)} more, not shown (--max-errors "
                           f"{self.max_shown})\n")
        name = f"{self.spec.name} v{self.spec.version}"
        if self.unusable:
            self.out.write(f"{name}: {self.unusable}\n")
            return
        self.out.write(f"{name}: {_plural(self.total, 'record')}, {self.total - self.invalid:,} "
                       f"valid, {self.invalid:,} invalid, {_plural(self.note_count, 'note')}\n")

    def _json(self) -> None:
        errors, notes = self._not_shown()
        report = {"dataset": self.spec.name, "version": self.spec.version, "total": self.total,
                  "valid": self.total - self.invalid, "invalid": self.invalid,
                  "errors": self.errors, "notes": self.notes,
                  "error_count": self.error_count, "errors_not_shown": errors,
                  "note_count": self.note_count, "notes_not_shown": notes,
                  "unusable": self.unusable}
        self.out.write(_ENCODER.encode(report).decode() + "\n")


# XML 1.0 allows no control characters but tab, newline and carriage return
_XML_BAD = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff]")


def _xml(text: str) -> str:
    return _XML_BAD.sub("\ufffd", text)


def _junit(report: Report, source_name: str) -> str:
    """JUnit XML: one testsuite for the file, one failing testcase per invalid record shown
    (each of its problems a line of the failure, the first one its message), one passing
    testcase standing for the valid records, and an error testcase for unusable input."""
    spec = report.spec
    classname = f"{spec.name}.v{spec.version}"
    cases: list[ET.Element] = []
    by_record: dict[int | None, list[dict[str, Any]]] = {}
    for e in report.errors:
        by_record.setdefault(e.get("index"), []).append(e)
    failures = errors = 0
    for index, found in by_record.items():
        case = ET.Element("testcase", classname=classname, name=_label(found[0]),
                          file=source_name)
        if "line" in found[0]:
            case.set("line", str(found[0]["line"]))
        first = found[0]
        tag = "error" if index is None else "failure"
        body = ET.SubElement(case, tag, type=first["code"],
                             message=_xml(f"{first['path']}: {first['code']}: {first['message']}"))
        body.text = _xml("\n".join(f"{e['path']}: {e['code']}: {e['message']}" for e in found))
        errors += tag == "error"
        failures += tag == "failure"
        cases.append(case)
    valid = report.total - report.invalid
    if valid:
        cases.append(ET.Element("testcase", classname=classname,
                                name=f"{_plural(valid, 'valid record')}", file=source_name))
    hidden, _ = report._not_shown()
    if hidden:
        case = ET.Element("testcase", classname=classname, name="problems not shown")
        ET.SubElement(case, "failure", type="max_errors",
                      message=f"{_plural(hidden, 'more problem')} not shown (--max-errors "
                              f"{report.max_shown})")
        failures += 1
        cases.append(case)
    if report.unusable and not any(c.find("error") is not None for c in cases):
        case = ET.Element("testcase", classname=classname, name="input")
        ET.SubElement(case, "error", type="unusable", message=_xml(report.unusable))
        errors += 1
        cases.append(case)
    suite = ET.Element("testsuite", name=f"{spec.name} v{spec.version}: {source_name}",
                       tests=str(len(cases)), failures=str(failures), errors=str(errors),
                       skipped="0")
    props = ET.SubElement(suite, "properties")
    for key, value in (("dataset", spec.name), ("version", spec.version),
                       ("records", report.total), ("valid", valid),
                       ("invalid", report.invalid), ("problems", report.error_count),
                       ("notes", report.note_count)):
        ET.SubElement(props, "property", name=key, value=str(value))
    suite.extend(cases)
    if report.notes:
        out = ET.SubElement(suite, "system-out")
        out.text = _xml("\n".join(f"{_label(e)}: {e['path']}: {e['code']} (note): "
                                  f"{e['message']}" for e in report.notes))
    root = ET.Element("testsuites", name="exchange schema validate", tests=suite.get("tests", ""),
                      failures=str(failures), errors=str(errors))
    root.append(suite)
    ET.indent(root)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(root, "unicode") + "\n"


class Progress:
    """A one-line progress report on a terminal: records, percent of bytes, records/s.

    The clock is passed in (``time.monotonic``); a redraw at most every ``interval`` seconds.
    """

    def __init__(self, stream: TextIO, total_bytes: int | None, clock: Callable[[], float],
                 interval: float = 0.25) -> None:
        self.stream = stream
        self.total_bytes = total_bytes
        self.clock = clock
        self.interval = interval
        self.start = self.last = clock()
        self.shown = False

    def update(self, records: int, done_bytes: int) -> None:
        now = self.clock()
        if now - self.last < self.interval:
            return
        self.last = now
        self.stream.write("\r" + progress_line(records, done_bytes, self.total_bytes,
                                               now - self.start))
        self.stream.flush()
        self.shown = True

    def clear(self) -> None:
        if self.shown:
            self.stream.write("\r\x1b[K")
            self.stream.flush()
            self.shown = False


def progress_line(records: int, done_bytes: int, total_bytes: int | None,
                  elapsed: float) -> str:
    """``"1,234,567 records  42%  98,765 records/s"`` (no percent when the size is unknown)."""
    rate = records / elapsed if elapsed > 0 else 0.0
    percent = (f"  {min(100, 100 * done_bytes // total_bytes)}%"
               if total_bytes else f"  {done_bytes / 1e6:,.0f} MB")
    return f"{_plural(records, 'record')}{percent}  {rate:,.0f} records/s"


def _open(path: str) -> tuple[BinaryIO, int | None]:
    """The input stream and its size when it is a regular file (for the percentage)."""
    if path == "-":
        stream: BinaryIO = sys.stdin.buffer
    else:
        stream = open(path, "rb")  # noqa: SIM115 (closed by the caller)
    try:
        st = os.fstat(stream.fileno())
        size = st.st_size if stat.S_ISREG(st.st_mode) else None
    except (OSError, ValueError, io.UnsupportedOperation):
        size = None
    return stream, size


def _validate(args: argparse.Namespace) -> int:
    spec = _spec(args)
    if spec is None:
        return 2
    try:
        stream, size = _open(args.file)
    except OSError as err:
        print(f"exchange schema validate: cannot read {args.file}: {err.strerror or err}",
              file=sys.stderr)
        return 2
    progress = None
    if (not args.no_progress and sys.stderr.isatty()
            and (size is None or size >= _PROGRESS_BYTES)):
        progress = Progress(sys.stderr, size, time.monotonic)
    ctx = RuleContext(today=args.today or dt.datetime.now(dt.UTC).date())
    report = Report(spec, args.format, args.max_errors, sys.stdout, progress)
    source = Source(stream, progress)
    reader = Reader(source, report.note)
    seen_bytes = 0
    try:
        with stream if args.file != "-" else contextlib.nullcontext(stream):
            for item in reader.items():
                if item.problem is not None:
                    report.record(item, None, item.problem)
                else:
                    try:
                        report.record(item, _check_item(spec, item.raw, ctx,
                                                        pinned=args.version is not None))
                    except msgspec.DecodeError as err:
                        lines, column, reason = _position(err, item.raw)
                        report.record(item, None, _problem(
                            Code.MALFORMED, f"malformed JSON: {reason}", index=item.index,
                            line=None if item.line is None else item.line + lines,
                            column=column))
                    except RecursionError:
                        report.record(item, None, _problem(
                            Code.TOO_DEEP, "JSON nested too deeply", index=item.index,
                            line=item.line))
                if progress is not None and source.read_bytes != seen_bytes:
                    seen_bytes = source.read_bytes
                    progress.update(report.total, seen_bytes)
    except OSError as err:
        print(f"exchange schema validate: cannot read {args.file}: {err.strerror or err}",
              file=sys.stderr)
        return 2
    if reader.fatal is not None:
        report.error(reader.fatal)
        report.unusable = f"{_label(reader.fatal)}: {reader.fatal['message']}"
    elif report.total == 0:
        report.unusable = "no records (the input is empty or only blank lines)"
    elif report.decoded == 0:
        first = report.errors[0] if report.errors else None
        which = ("the only record is not JSON" if report.total == 1 else
                 f"none of the {report.total:,} records is JSON")
        report.unusable = (f"no records: {which}" + (
            f" ({_label(first)}: {first['message']})" if first else ""))
    report.finish(args.file)
    if report.unusable:
        print(f"exchange schema validate: {args.file}: {report.unusable}", file=sys.stderr)
        return 2
    return 1 if report.invalid else 0
