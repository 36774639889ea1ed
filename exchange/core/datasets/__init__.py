"""The national datasets: population, tax, land, vehicle — versioned definitions and rules."""

from __future__ import annotations

import json
from pathlib import Path

from exchange.core.datasets.base import Catalogue, DatasetSpec, RuleContext, Validated
from exchange.core.errors import Code, NotFound

__all__ = [
    "REGISTRY",
    "Catalogue",
    "DatasetSpec",
    "RuleContext",
    "Validated",
    "export_schemas",
    "get",
    "names",
    "schema_text",
]

#: name -> version -> spec. Filled in by the dataset modules below.
REGISTRY: dict[str, dict[int, DatasetSpec]] = {}


def _register(spec: DatasetSpec) -> None:
    REGISTRY.setdefault(spec.name, {})[spec.version] = spec


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
    return json.dumps(spec.json_schema(), indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def export_schemas(directory: str | Path) -> list[Path]:
    """Write ``<directory>/<dataset>/v<N>/schema.json`` for every registered dataset version."""
    written: list[Path] = []
    for name in names():
        for version, spec in sorted(REGISTRY[name].items()):
            path = Path(directory) / name / f"v{version}" / "schema.json"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(schema_text(spec), encoding="utf-8")
            written.append(path)
    return written


# the dataset modules register themselves; imported last because they import this package
from exchange.core.datasets import agreement, land, population, tax, vehicle  # noqa: E402

for _module in (population, tax, land, vehicle, agreement):
    _register(_module.SPEC)
