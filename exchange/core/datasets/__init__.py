"""The national datasets: population, tax, land, vehicle — versioned definitions and rules."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from exchange.core.datasets import compat
from exchange.core.datasets.base import Catalogue, DatasetSpec, RuleContext, Validated
from exchange.core.errors import Code, NotFound

__all__ = [
    "REGISTRY",
    "Catalogue",
    "DatasetSpec",
    "IncompatibleSchema",
    "PublishedVersionChanged",
    "RuleContext",
    "Validated",
    "export_schemas",
    "get",
    "names",
    "register",
    "schema_digest",
    "schema_text",
    "version_history",
    "versions",
]

#: name -> version -> spec. Filled in by the dataset modules below.
REGISTRY: dict[str, dict[int, DatasetSpec]] = {}


class IncompatibleSchema(ValueError):
    """A new version breaks its dataset's compatibility mode; ``breaks`` names each field."""

    def __init__(self, spec: DatasetSpec, found: list[compat.Break]) -> None:
        self.breaks = found
        lines = "\n".join(f"  {b}" for b in found)
        super().__init__(f"{spec.name} v{spec.version} is not {spec.compatibility} compatible:"
                         f"\n{lines}")


def register(spec: DatasetSpec, registry: dict[str, dict[int, DatasetSpec]] | None = None
             ) -> None:
    """Add a version to the registry (default ``REGISTRY``), after checking it against every
    earlier version as its mode requires. A version, once registered, is never replaced."""
    reg = REGISTRY if registry is None else registry
    versions = reg.get(spec.name, {})  # the entry is made only once the version passes
    if spec.version in versions:
        raise ValueError(f"{spec.name} v{spec.version} is registered already; a version is "
                         "immutable: publish a new one")
    if versions and spec.version != max(versions) + 1:
        raise ValueError(f"{spec.name} v{spec.version} does not follow v{max(versions)}")
    found = compat.check_version(spec.compatibility, spec.version, spec.json_schema(),
                                 {v: s.json_schema() for v, s in versions.items()})
    if found:
        raise IncompatibleSchema(spec, found)
    reg.setdefault(spec.name, {})[spec.version] = spec


def versions(name: str) -> list[DatasetSpec]:
    """Every version of a dataset, oldest first."""
    get(name)  # NotFound for an unknown name
    return [spec for _, spec in sorted(REGISTRY[name].items())]


def names() -> list[str]:
    """The national datasets (the exchange's own system datasets are not among them)."""
    return sorted(n for n, versions in REGISTRY.items()
                  if not any(spec.system for spec in versions.values()))


def get(name: str, version: int | None = None) -> DatasetSpec:
    """The spec of ``name`` at ``version`` (default: latest)."""
    versions = REGISTRY.get(name)
    if not versions:
        raise NotFound(f"unknown dataset {name!r}; known: {', '.join(names())}",
                       code=Code.UNKNOWN_DATASET)
    if version is None:
        version = max(versions)
    try:
        return versions[version]
    except KeyError:
        raise NotFound(f"dataset {name!r} has no version {version}; known: "
                       f"{', '.join(map(str, sorted(versions)))}",
                       code=Code.UNKNOWN_SCHEMA_VERSION) from None


def schema_text(spec: DatasetSpec) -> str:
    """The committed form of a JSON Schema export: 2-space indent, sorted keys, final newline."""
    return spec.schema_text


def schema_digest(spec: DatasetSpec) -> str:
    """SHA-256 (hex) of a version's committed JSON Schema text: what "immutable" pins."""
    return spec.schema_digest


def version_history(name: str, base: str) -> dict[str, Any]:
    """A dataset's versions as the registry lists them (``/v1/schemas/{dataset}/versions``):
    each with its type, absolute ``dataschema`` under ``base``, digest, groups, and what it
    added to the version before it."""
    specs = versions(name)
    out: list[dict[str, Any]] = []
    prev: DatasetSpec | None = None
    for spec in specs:
        fields = _fields(spec)
        before = _fields(prev) if prev is not None else set()
        out.append({
            "version": spec.version, "type": spec.type, "dataschema": spec.dataschema_uri(base),
            "sha256": schema_digest(spec), "compatibility": spec.compatibility,
            "groups": {g: list(fs) for g, fs in spec.groups.items()},
            "added_groups": [g for g in spec.groups if prev is None or g not in prev.groups],
            "added_fields": sorted(fields - before) if prev is not None else [],
            "removed_fields": sorted(before - fields),
        })
        prev = spec
    return {"dataset": name, "latest": specs[-1].version,
            "compatibility": specs[-1].compatibility, "versions": out}


def _fields(spec: DatasetSpec) -> set[str]:
    return {f for fs in spec.groups.values() for f in fs}


class PublishedVersionChanged(ValueError):
    """An export would change a version already published (``published.json`` pins it)."""


#: the file beside the exported schemas that pins each published version's digest
PUBLISHED = "published.json"


def export_schemas(directory: str | Path) -> list[Path]:
    """Write ``<directory>/<dataset>/v<N>/schema.json`` for every registered dataset version,
    and pin each new version's digest in ``<directory>/published.json``.

    A version is immutable once published: if a pinned version's schema would change, nothing
    is written and ``PublishedVersionChanged`` names it (change the data in a new version)."""
    root = Path(directory)
    pins_path = root / PUBLISHED
    pins: dict[str, dict[str, str]] = (json.loads(pins_path.read_text("utf-8"))
                                       if pins_path.exists() else {})
    changed = [f"{spec.name} v{spec.version}" for name in names() for spec in versions(name)
               if pins.get(name, {}).get(str(spec.version), spec.schema_digest)
               != spec.schema_digest]
    # a published version the code no longer has: later versions would no longer be
    # checked against it, and its records would have no schema
    changed += [f"{name} v{v}" for name, pinned in pins.items() for v in pinned
                if name not in REGISTRY or int(v) not in REGISTRY[name]]
    if changed:
        raise PublishedVersionChanged(
            f"{', '.join(changed)} {'is' if len(changed) == 1 else 'are'} published and "
            f"immutable, but the code now gives a different schema: undo the change, or make "
            f"it in a new version ({pins_path} pins the published digests)")
    written: list[Path] = []
    for name in names():
        for spec in versions(name):
            path = root / name / f"v{spec.version}" / "schema.json"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(schema_text(spec), encoding="utf-8")
            written.append(path)
            pins.setdefault(name, {})[str(spec.version)] = schema_digest(spec)
    root.mkdir(parents=True, exist_ok=True)
    pins_path.write_text(json.dumps(pins, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return written


# the dataset modules register themselves; imported last because they import this package
from exchange.core.datasets import agreement, land, population, tax, vehicle  # noqa: E402

for _spec in (population.SPEC, population.SPEC_V2, tax.SPEC, land.SPEC, vehicle.SPEC,
              agreement.SPEC):
    register(_spec)
