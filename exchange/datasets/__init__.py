"""The national datasets: population, tax, land, vehicle — versioned definitions and rules."""

from __future__ import annotations

from exchange.datasets.base import DatasetSpec, RuleContext, Validated
from exchange.errors import NotFound

__all__ = ["REGISTRY", "DatasetSpec", "RuleContext", "Validated", "get", "names"]

#: name -> version -> spec. Filled in by the dataset modules below.
REGISTRY: dict[str, dict[int, DatasetSpec]] = {}


def _register(spec: DatasetSpec) -> None:
    REGISTRY.setdefault(spec.name, {})[spec.version] = spec


def names() -> list[str]:
    return sorted(REGISTRY)


def get(name: str, version: int | None = None) -> DatasetSpec:
    """The spec of ``name`` at ``version`` (default: latest)."""
    versions = REGISTRY.get(name)
    if not versions:
        raise NotFound(f"unknown dataset {name!r}; known: {', '.join(names())}",
                       code="unknown_dataset")
    if version is None:
        version = max(versions)
    try:
        return versions[version]
    except KeyError:
        raise NotFound(f"dataset {name!r} has no version {version}; known: "
                       f"{', '.join(map(str, sorted(versions)))}", code="unknown_schema_version") from None
