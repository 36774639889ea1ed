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

_IGNORED = frozenset({"title", "description", "default", "examples", "$comment", "deprecated"})
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


def is_subschema(sub: Mapping[str, Any], sup: Mapping[str, Any]) -> bool:
    """Whether every instance valid under ``sub`` is valid under ``sup`` (soundly decided)."""
    return not any(True for _ in _not_subset(sub, sup, sub, sup, "$"))


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
        return {k: _plain(v, root) for k, v in node.items() if k not in _IGNORED}
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
    seen = 0
    while "$ref" in node:
        ref = node["$ref"]
        if not isinstance(ref, str) or not ref.startswith("#/$defs/"):
            raise ValueError(f"only local $defs references are supported, not {ref!r}")
        node = root.get("$defs", {})[ref.removeprefix("#/$defs/")]
        seen += 1
        if seen > 64:
            raise ValueError("reference cycle")
    return node


def _branches(node: Mapping[str, Any], root: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    node = _resolve(node, root)
    if "anyOf" in node:
        return [b for sub in node["anyOf"] for b in _branches(sub, root)]
    if "oneOf" in node:
        return [b for sub in node["oneOf"] for b in _branches(sub, root)]
    return [node]


def _types(node: Mapping[str, Any]) -> set[str] | None:
    """The JSON types a branch admits (None: any)."""
    if "enum" in node:
        return {_json_type(v) for v in node["enum"]}
    if "const" in node:
        return {_json_type(node["const"])}
    t = node.get("type")
    if t is None:
        return None
    return {t} if isinstance(t, str) else set(t)


def _json_type(v: Any) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "boolean"
    if isinstance(v, int):
        return "integer"
    if isinstance(v, float):
        return "number"
    if isinstance(v, str):
        return "string"
    if isinstance(v, list):
        return "array"
    return "object"


def _not_subset(sub: Mapping[str, Any], sup: Mapping[str, Any], sub_root: Mapping[str, Any],
                sup_root: Mapping[str, Any], path: str) -> Iterator[tuple[str, str]]:
    """``(path, what)`` for each way an instance of ``sub`` may fail ``sup``."""
    sup_branches = _branches(sup, sup_root)
    for b in _branches(sub, sub_root):
        failures = []
        for s in sup_branches:
            found = list(_branch_not_subset(b, s, sub_root, sup_root, path))
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


def _same_kind(a: Mapping[str, Any], b: Mapping[str, Any]) -> bool:
    at, bt = _types(a), _types(b)
    return at is None or bt is None or bool(at & (bt | ({"integer"} if "number" in bt else set())))


def _describe(node: Mapping[str, Any]) -> str:
    types = _types(node)
    if "enum" in node:
        return "one of " + ", ".join(map(repr, node["enum"]))
    return "/".join(sorted(types)) if types else "any value"


def _numeric(t: set[str]) -> bool:
    return t <= {"integer", "number"}


def _branch_not_subset(b: Mapping[str, Any], s: Mapping[str, Any], sub_root: Mapping[str, Any],
                       sup_root: Mapping[str, Any], path: str) -> Iterator[tuple[str, str]]:
    bt, st = _types(b), _types(s)
    if st is not None:
        if bt is None:
            yield path, f"may be any value; now it must be {'/'.join(sorted(st))}"
            return
        widened = st | ({"integer"} if "number" in st else set())
        if not bt <= widened:
            yield path, (f"may be {'/'.join(sorted(bt - widened))}; it must now be "
                         f"{'/'.join(sorted(st))}")
            return
    if "enum" in s or "const" in s:
        allowed = s.get("enum", [s.get("const")])
        values = b.get("enum", [b["const"]] if "const" in b else None)
        if values is None:
            yield path, f"may hold any value; now only {', '.join(map(repr, allowed))}"
        else:
            dropped = [v for v in values if v not in allowed]
            if dropped:
                yield path, f"may hold {', '.join(map(repr, dropped))}, no longer allowed"
        return
    if "enum" in b or "const" in b:
        return  # values checked against sup's type above; constraints below are for ranges
    kind = next(iter(bt)) if bt and len(bt) == 1 else None
    for key in s:
        if key in _IGNORED or key in ("type", "properties", "required", "additionalProperties",
                                      "items", "$ref", "anyOf", "oneOf"):
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
        elif key.startswith("x-"):
            continue
        elif b.get(key) != s[key]:
            yield path, f"constraint {key} changed from {b.get(key)!r} to {s[key]!r}"
    if kind == "object" or "properties" in s or "properties" in b:
        yield from _object_not_subset(b, s, sub_root, sup_root, path)
    if (kind == "array" or "items" in s) and "items" in s:
        if "items" not in b:
            yield f"{path}[*]", "may hold any items"
        else:
            yield from _not_subset(b["items"], s["items"], sub_root, sup_root, f"{path}[*]")
    if _numeric(bt or set()) and st == {"integer"} and "number" in (bt or set()):
        yield path, "may be a fraction; it must now be an integer"


def _object_not_subset(b: Mapping[str, Any], s: Mapping[str, Any], sub_root: Mapping[str, Any],
                       sup_root: Mapping[str, Any], path: str) -> Iterator[tuple[str, str]]:
    b_props: Mapping[str, Any] = b.get("properties", {})
    s_props: Mapping[str, Any] = s.get("properties", {})
    b_required = set(b.get("required", []))
    b_open = b.get("additionalProperties", True) is not False
    s_open = s.get("additionalProperties", True) is not False
    for f in sorted(set(s.get("required", [])) - b_required):
        yield f"{path}.{f}", ("may lack this field, which is now required"
                              if f in b_props or b_open else
                              "cannot have this field, which is now required")
    for f, sub_schema in b_props.items():
        if f in s_props:
            yield from _not_subset(sub_schema, s_props[f], sub_root, sup_root, f"{path}.{f}")
        elif not s_open:
            yield f"{path}.{f}", "may have this field, which is no longer known"
    if b_open and not s_open:
        yield path, "may have fields not listed; now unknown fields are refused"
