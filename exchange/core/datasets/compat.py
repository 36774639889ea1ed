"""Schema compatibility between versions of one dataset (pure).

A dataset's versions are JSON Schemas (2020-12, as ``DatasetSpec.json_schema`` exports them) with
disclosure groups. Whether version B may follow version A depends on the dataset's mode, the
modes of Confluent Schema Registry:

- ``BACKWARD``: a reader of B reads every record written as A (every valid A record is valid B);
- ``FORWARD``: a reader of A reads every record written as B, *as the exchange delivers it to an
  A reader*: fields of groups A does not have are withheld (sent as commitments), so only B's
  fields in A's groups must be valid A;
- ``FULL``: both; ``NONE``: anything goes.

A mode checks against the previous version only; its ``_TRANSITIVE`` form against every earlier
version (a registry that checks only the latest lets A → B → C drift where C no longer reads A).
In every mode but ``NONE`` a published disclosure group keeps its name and exactly its fields:
agreements grant groups by name, and what a group means is part of what was signed.

"Valid A is valid B" is decided structurally over the two schemas (a sound test: it may call a
harmless change incompatible, never the reverse): types, enums, string patterns and lengths,
number bounds, required fields and ``additionalProperties``. Each break names the field path.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

__all__ = [
    "DEFAULT_MODE",
    "MODES",
    "Break",
    "breaks",
    "check_version",
    "describe_changes",
    "is_subschema",
]

MODES = ("NONE", "BACKWARD", "BACKWARD_TRANSITIVE", "FORWARD", "FORWARD_TRANSITIVE",
         "FULL", "FULL_TRANSITIVE")
#: national registries: every version reads and is read by every other
DEFAULT_MODE = "FULL_TRANSITIVE"

_LOWER = ("minLength", "minimum", "exclusiveMinimum", "minItems", "minProperties")
_UPPER = ("maxLength", "maximum", "exclusiveMaximum", "maxItems", "maxProperties")


@dataclass(frozen=True)
class Break:
    """One reason a version is incompatible with an earlier one."""

    #: the earlier version it breaks against
    against: int
    #: ``backward`` (new readers, old records) or ``forward`` (old readers, new records), or
    #: ``groups`` (a published group changed)
    direction: str
    #: where: ``$.hometown.province_code``, or ``groups.identity``
    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message} ({self.direction}, against v{self.against})"


def check_version(mode: str, version: int, schema: Mapping[str, Any],
                  earlier: Mapping[int, Mapping[str, Any]]) -> list[Break]:
    """Every break of ``schema`` (version ``version``) against the ``earlier`` versions its
    ``mode`` compares with. ``schema`` and each earlier one are exported JSON Schemas with
    ``x-exchange.disclosure_groups``."""
    if mode not in MODES:
        raise ValueError(f"unknown compatibility mode {mode!r}; known: {', '.join(MODES)}")
    before = sorted(v for v in earlier if v < version)
    if mode == "NONE" or not before:
        return []
    targets = before if mode.endswith("_TRANSITIVE") else before[-1:]
    base = mode.removesuffix("_TRANSITIVE")
    out: list[Break] = []
    for v in targets:
        out.extend(breaks(earlier[v], schema, against=v,
                          backward=base in ("BACKWARD", "FULL"),
                          forward=base in ("FORWARD", "FULL")))
    return out


def breaks(old: Mapping[str, Any], new: Mapping[str, Any], *, against: int,
           backward: bool = True, forward: bool = True) -> list[Break]:
    """What keeps ``new`` from following ``old`` in the directions asked."""
    out: list[Break] = []
    old_groups = _groups(old)
    new_groups = _groups(new)
    for g, fields in old_groups.items():
        if g not in new_groups:
            out.append(Break(against, "groups", f"groups.{g}",
                             f"group {g!r} was removed; agreements grant it by name"))
        elif set(new_groups[g]) != set(fields):
            added = sorted(set(new_groups[g]) - set(fields))
            gone = sorted(set(fields) - set(new_groups[g]))
            what = "; ".join(part for part in (
                f"adds {', '.join(added)}" if added else "",
                f"drops {', '.join(gone)}" if gone else "") if part)
            out.append(Break(against, "groups", f"groups.{g}",
                             f"group {g!r} {what}: a published group keeps its fields (put new "
                             "fields in a new group)"))
    if backward:
        out.extend(Break(against, "backward", path, f"a v{against} record {message}")
                   for path, message in _not_subset(old, new, old, new, "$"))
    if forward:
        # an old reader receives only the fields of the groups it knows
        kept = {f for g, fields in new_groups.items() if g in old_groups for f in fields}
        projected = _project(new, kept)
        out.extend(Break(against, "forward", path, f"a record of the new version, as a "
                         f"v{against} reader receives it, {message}")
                   for path, message in _not_subset(projected, old, new, old, "$"))
    return out


def is_subschema(sub: Mapping[str, Any] | bool, sup: Mapping[str, Any] | bool) -> bool:
    """Whether every instance valid under ``sub`` is valid under ``sup`` (soundly decided).
    Raises ValueError for a schema it cannot read (a reference cycle, a missing definition)."""
    sub_root = sub if isinstance(sub, Mapping) else {}
    sup_root = sup if isinstance(sup, Mapping) else {}
    return not any(True for _ in _not_subset(sub, sup, sub_root, sup_root, "$"))


def describe_changes(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    """What a reader notices between two versions: groups and fields added, removed or
    changed (one line each), whether or not they break compatibility."""
    out: list[str] = []
    og, ng = _groups(old), _groups(new)
    for g in ng:
        if g not in og:
            out.append(f"+ group {g}: {', '.join(ng[g])}")
    for g in og:
        if g not in ng:
            out.append(f"- group {g}")
    op = _resolve(old, old).get("properties", {})
    np_ = _resolve(new, new).get("properties", {})
    oreq = set(_resolve(old, old).get("required", []))
    nreq = set(_resolve(new, new).get("required", []))
    for f in np_:
        if f not in op:
            out.append(f"+ field {f}{' (required)' if f in nreq else ''}")
    for f in op:
        if f not in np_:
            out.append(f"- field {f}")
        elif _plain(op[f], old) != _plain(np_[f], new):
            out.append(f"~ field {f}: its schema changed")
        elif (f in oreq) != (f in nreq):
            out.append(f"~ field {f}: {'now required' if f in nreq else 'now optional'}")
    return out or ["no change to groups or fields"]


def _plain(node: Any, root: Mapping[str, Any]) -> Any:
    """A schema with references resolved and annotations dropped (to compare meaning)."""
    if isinstance(node, Mapping):
        node = _resolve(node, root)
        return {k: _plain(v, root) for k, v in node.items() if k not in _ANNOTATIONS}
    if isinstance(node, list):
        return [_plain(v, root) for v in node]
    return node


# -- the structural test -------------------------------------------------------------------------


def _groups(schema: Mapping[str, Any]) -> dict[str, list[str]]:
    groups = schema.get("x-exchange", {}).get("disclosure_groups", {})
    return {str(g): [str(f) for f in fs] for g, fs in groups.items()}


def _project(schema: Mapping[str, Any], keep: set[str]) -> dict[str, Any]:
    """The record object of ``schema`` with only the ``keep`` properties (a copy)."""
    root = _resolve(schema, schema)
    props = {k: v for k, v in root.get("properties", {}).items() if k in keep}
    obj = {**root, "properties": props,
           "required": [f for f in root.get("required", []) if f in keep]}
    return {"$defs": schema.get("$defs", {}), **obj}


def _resolve(node: Mapping[str, Any], root: Mapping[str, Any]) -> Mapping[str, Any]:
    """``node`` with its references followed (their siblings dropped): for describing only."""
    seen = 0
    while isinstance(node, Mapping) and "$ref" in node:
        node = _target(node["$ref"], root)
        seen += 1
        if seen > 64:
            raise ValueError("reference cycle")
    return node if isinstance(node, Mapping) else {}


def _target(ref: Any, root: Mapping[str, Any]) -> Any:
    if not isinstance(ref, str) or not ref.startswith("#/$defs/"):
        raise ValueError(f"only local $defs references are supported, not {ref!r}")
    defs = root.get("$defs", {})
    name = ref.removeprefix("#/$defs/")
    if name not in defs:
        raise ValueError(f"reference to a missing definition {ref!r}")
    return defs[name]


#: keywords that say nothing about which instances are valid
_ANNOTATIONS = frozenset({"title", "description", "default", "examples", "$comment",
                          "deprecated", "readOnly", "writeOnly", "$schema", "$id", "$defs",
                          "contentEncoding", "contentMediaType", "x-exchange"})
#: keywords the structural test reads itself (everything else in the new schema must be equal)
_STRUCTURAL = frozenset({"type", "enum", "const", "properties", "required",
                         "additionalProperties", "items", "anyOf", "oneOf", "$ref",
                         "x-conflict"})
#: marks a schema whose keywords could not be merged: never called compatible
_CONFLICT = "x-conflict"

Schema = Mapping[str, Any] | bool


def _norm(node: Any, root: Mapping[str, Any]) -> Schema:
    """A schema as the test reads it: ``True``/``False`` for the boolean schemas (and ``{}``),
    references followed with their siblings merged in (2020-12 applies both); keywords that
    clash in the merge mark it ``x-conflict``."""
    if node is True or node is False:
        return bool(node)
    if not isinstance(node, Mapping):
        raise ValueError(f"a schema must be an object or a boolean, not {node!r}")
    out = dict(node)
    hops = 0
    while "$ref" in out:
        target = _target(out.pop("$ref"), root)
        if target is False:
            return False
        if isinstance(target, Mapping):
            out = _merge(out, target)
        hops += 1
        if hops > 64:
            raise ValueError("reference cycle")
    meaningful = [k for k in out if k not in _ANNOTATIONS]
    return True if not meaningful else out


def _merge(a: Mapping[str, Any], b: Mapping[str, Any]) -> dict[str, Any]:
    """Both schemas' keywords: an instance must meet both (``allOf``). A keyword in both with
    different values is not worked out: the result is marked as a conflict."""
    out = dict(a)
    for k, v in b.items():
        if k in out and k not in _ANNOTATIONS and out[k] != v:
            out[_CONFLICT] = k
        else:
            out.setdefault(k, v)
    return out


def _branches(node: Any, root: Mapping[str, Any]) -> tuple[list[Schema], bool]:
    """The alternatives of a schema (``anyOf``/``oneOf`` spread, their siblings merged into
    each), and whether they are ``oneOf`` alternatives (an instance must match exactly one)."""
    n = _norm(node, root)
    if isinstance(n, bool):
        return [n], False
    for key in ("anyOf", "oneOf"):
        if key in n:
            siblings = {k: v for k, v in n.items() if k != key}
            if "anyOf" in siblings or "oneOf" in siblings:
                return [{**n, _CONFLICT: "anyOf and oneOf together"}], False
            out: list[Schema] = []
            exclusive = key == "oneOf"
            for alternative in n[key]:
                parts, inner_exclusive = _branches(alternative, root)
                exclusive = exclusive or inner_exclusive
                for b in parts:
                    if b is False:
                        continue
                    base = siblings if b is True else _merge(siblings, b)
                    normed = _norm(base, root)
                    out.append(normed)
            return (out or [False]), exclusive and len(out) > 1
    return [n], False


def _types(node: Mapping[str, Any]) -> set[str] | None:
    """The JSON types a branch admits (None: any): ``type``, narrowed by ``enum``/``const``."""
    t = node.get("type")
    types = None if t is None else ({t} if isinstance(t, str) else set(t))
    for values in (node.get("enum"), [node["const"]] if "const" in node else None):
        if values is None:
            continue
        found = {_json_type(v) for v in values}
        types = found if types is None else {x for x in found if x in _widen(types)}
    return types


def _widen(types: set[str]) -> set[str]:
    return types | {"integer"} if "number" in types else types


def _json_type(v: Any) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "boolean"
    if isinstance(v, int):
        return "integer"
    if isinstance(v, float):
        return "integer" if v.is_integer() else "number"
    if isinstance(v, str):
        return "string"
    if isinstance(v, list):
        return "array"
    return "object"


def _json_eq(a: Any, b: Any) -> bool:
    """JSON equality: ``true`` is not ``1``; ``1`` is ``1.0``."""
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a is b
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return a == b
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_json_eq(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_json_eq(a[k], b[k]) for k in a)
    return type(a) is type(b) and bool(a == b)


def _valid(value: Any, node: Any, root: Mapping[str, Any], depth: int = 0) -> bool:
    """Whether ``value`` is valid under ``node``, for the keywords the exchange's schemas use;
    a keyword it does not know makes it answer False (so a break is reported, never missed)."""
    if depth > 64:
        return False
    branches, exclusive = _branches(node, root)
    matches = 0
    for b in branches:
        if b is True or (b is not False and _valid_branch(value, b, root, depth)):
            matches += 1
            if not exclusive:
                return True
    return matches == 1 if exclusive else False


def _valid_branch(v: Any, n: Mapping[str, Any], root: Mapping[str, Any], depth: int) -> bool:
    if _CONFLICT in n:
        return False
    kind = _json_type(v)
    types = n.get("type")
    if types is not None:
        allowed = _widen({types} if isinstance(types, str) else set(types))
        if kind not in allowed:
            return False
    if "enum" in n and not any(_json_eq(v, e) for e in n["enum"]):
        return False
    if "const" in n and not _json_eq(v, n["const"]):
        return False
    for key, want in n.items():
        if key in _ANNOTATIONS or key in ("type", "enum", "const"):
            continue
        if key in ("minLength", "maxLength", "pattern", "format"):
            if kind != "string":
                continue
            if (key == "minLength" and len(v) < want) or (key == "maxLength" and len(v) > want):
                return False
            if key == "pattern" and re.search(want, v) is None:
                return False
            if key == "format" and not _format_ok(want, v):
                return False
        elif key in ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum",
                     "multipleOf"):
            if kind not in ("integer", "number"):
                continue
            if ((key == "minimum" and v < want) or (key == "maximum" and v > want)
                    or (key == "exclusiveMinimum" and v <= want)
                    or (key == "exclusiveMaximum" and v >= want)
                    or (key == "multipleOf" and (v / want) != int(v / want))):
                return False
        elif key in ("items", "minItems", "maxItems"):
            if kind != "array":
                continue
            if (key == "minItems" and len(v) < want) or (key == "maxItems" and len(v) > want):
                return False
            if key == "items" and not all(_valid(x, want, root, depth + 1) for x in v):
                return False
        elif key in ("properties", "required", "additionalProperties", "minProperties",
                     "maxProperties"):
            if kind != "object":
                continue
            props = n.get("properties", {})
            if key == "required" and any(f not in v for f in want):
                return False
            if key == "properties" and any(f in v and not _valid(v[f], s, root, depth + 1)
                                           for f, s in want.items()):
                return False
            if key == "additionalProperties" and any(
                    not _valid(x, want, root, depth + 1)
                    for f, x in v.items() if f not in props):
                return False
            if ((key == "minProperties" and len(v) < want)
                    or (key == "maxProperties" and len(v) > want)):
                return False
        else:
            return False  # a keyword not worked out here: never called valid
    return True


def _format_ok(fmt: str, v: str) -> bool:
    import datetime as dt

    try:
        if fmt == "date":
            return len(v) == 10 and dt.date.fromisoformat(v) is not None
        if fmt == "date-time":
            return dt.datetime.fromisoformat(v.replace("Z", "+00:00")).tzinfo is not None
    except ValueError:
        return False
    return False


def _not_subset(sub: Any, sup: Any, sub_root: Mapping[str, Any], sup_root: Mapping[str, Any],
                path: str, seen: set[tuple[int, int]] | None = None
                ) -> Iterator[tuple[str, str]]:
    """``(path, what)`` for each way an instance of ``sub`` may fail ``sup``."""
    seen = set() if seen is None else seen
    pair = (id(sub), id(sup))
    if pair in seen:  # a recursive schema: assume the pair holds (co-induction)
        return
    seen = seen | {pair}
    sup_branches, exclusive = _branches(sup, sup_root)
    if exclusive:
        yield path, ("the new version offers alternatives of which exactly one must match "
                     "(oneOf), which this test cannot compare: use anyOf")
        return
    sub_branches, _ = _branches(sub, sub_root)
    for b in sub_branches:
        if b is False:
            continue
        failures: list[tuple[Schema, list[tuple[str, str]]]] = []
        for s in sup_branches:
            found = list(_branch_not_subset(b, s, sub_root, sup_root, path, seen))
            if not found:
                break
            failures.append((s, found))
        else:
            # report the reasons of the branch of the same kind (a string against a string),
            # not of every alternative (a string is not null either)
            alike = [found for s, found in failures if _same_kind(b, s)]
            if len(alike) == 1:
                yield from alike[0]
            else:
                yield path, f"may be {_describe(b)}, which is no longer admitted"


def _same_kind(a: Schema, b: Schema) -> bool:
    if isinstance(a, bool) or isinstance(b, bool):
        return True
    at, bt = _types(a), _types(b)
    return at is None or bt is None or bool(at & _widen(bt))


def _describe(node: Schema) -> str:
    if isinstance(node, bool):
        return "any value" if node else "nothing"
    if "enum" in node:
        return "one of " + ", ".join(map(repr, node["enum"]))
    types = _types(node)
    return "/".join(sorted(types)) if types else "any value"


def _numeric(t: set[str]) -> bool:
    return t <= {"integer", "number"}


def _branch_not_subset(b: Schema, s: Schema, sub_root: Mapping[str, Any],
                       sup_root: Mapping[str, Any], path: str, seen: set[tuple[int, int]]
                       ) -> Iterator[tuple[str, str]]:
    if s is True or b is False:
        return
    if s is False:
        yield path, "may hold a value; now nothing is admitted"
        return
    if b is True:
        yield path, "may be any value; now it is constrained"
        return
    if _CONFLICT in s:
        yield path, (f"the new version's keywords cannot be compared (two values of "
                     f"{s[_CONFLICT]!r})")
        return
    values = (list(b["enum"]) if "enum" in b else [b["const"]] if "const" in b else None)
    if values is not None:
        # a closed set of values: check each against the whole new schema
        for v in values:
            if b.get("type") is not None and not _valid(v, {"type": b["type"]}, sub_root):
                continue  # not an instance of the old schema after all
            if not _valid(v, s, sup_root):
                yield path, f"may hold {v!r}, which is no longer allowed"
        return
    bt, st = _types(b), _types(s)
    if "enum" in s or "const" in s:
        allowed = s.get("enum", [s.get("const")])
        yield path, f"may hold any value; now only {', '.join(map(repr, allowed))}"
        return
    if st is not None:
        if bt is None:
            yield path, f"may be any value; now it must be {'/'.join(sorted(st))}"
            return
        if not bt <= _widen(st):
            yield path, (f"may be {'/'.join(sorted(bt - _widen(st)))}; it must now be "
                         f"{'/'.join(sorted(st))}")
            return
    for key in s:
        if key in _ANNOTATIONS or key in _STRUCTURAL:
            continue
        if key in _LOWER:
            if key not in b or b[key] < s[key]:
                yield path, f"may have {key} {b.get(key, 'unbounded')}; now {s[key]}"
        elif key in _UPPER:
            if key not in b or b[key] > s[key]:
                yield path, f"may have {key} {b.get(key, 'unbounded')}; now {s[key]}"
        elif key == "pattern":
            if b.get("pattern") != s["pattern"]:
                yield path, (f"may match {b.get('pattern', 'any text')!r}; it must now match "
                             f"{s['pattern']!r}")
        elif key == "format":
            if b.get("format") != s["format"]:
                yield path, f"may be any text; it must now be a {s['format']}"
        elif b.get(key) != s[key]:
            yield path, f"constraint {key} changed from {b.get(key)!r} to {s[key]!r}"
    objects = ("object" in (bt or {"object"}) or any(
        k in x for x in (b, s) for k in ("properties", "required", "additionalProperties")))
    if objects:
        yield from _object_not_subset(b, s, sub_root, sup_root, path, seen)
    if "items" in s and "array" in (bt or {"array"}):
        yield from _not_subset(b.get("items", True), s["items"], sub_root, sup_root,
                               f"{path}[*]", seen)
    if bt is not None and _numeric(bt) and st == {"integer"} and "number" in bt:
        yield path, "may be a fraction; it must now be an integer"


def _object_not_subset(b: Mapping[str, Any], s: Mapping[str, Any],
                       sub_root: Mapping[str, Any], sup_root: Mapping[str, Any], path: str,
                       seen: set[tuple[int, int]]) -> Iterator[tuple[str, str]]:
    b_props: Mapping[str, Any] = b.get("properties", {})
    s_props: Mapping[str, Any] = s.get("properties", {})
    b_required = set(b.get("required", []))
    b_rest: Any = b.get("additionalProperties", True)
    s_rest: Any = s.get("additionalProperties", True)
    for f in sorted(set(s.get("required", [])) - b_required):
        yield f"{path}.{f}", ("may lack this field, which is now required"
                              if f in b_props or b_rest is not False else
                              "cannot have this field, which is now required")
    for f, sub_schema in b_props.items():
        target = s_props.get(f, s_rest)
        if target is False:
            yield f"{path}.{f}", "may have this field, which is no longer known"
        else:
            yield from _not_subset(sub_schema, target, sub_root, sup_root, f"{path}.{f}", seen)
    if b_rest is False:
        return
    # an open old object may hold any other name: with the old ``additionalProperties``
    for f, sup_schema in s_props.items():
        if f not in b_props:
            for where, what in _not_subset(b_rest, sup_schema, sub_root, sup_root,
                                           f"{path}.{f}", seen):
                yield where, f"may have this field unchecked before: {what}"
    if s_rest is False:
        yield path, "may have fields not listed; now unknown fields are refused"
    elif s_rest is not True:
        yield from _not_subset(b_rest, s_rest, sub_root, sup_root, f"{path}.*", seen)
