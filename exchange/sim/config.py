"""An agency's configuration: the ``[agency]`` section of a node file and each role's defaults.

``default_config(role)`` is what ``nodes/<role>.toml`` holds; ``load_node_file`` reads a node
file into the node SDK's ``NodeConfig`` and the ``AgencyConfig``.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Annotated, Any

import msgspec

from exchange.core.errors import Code, InputError
from exchange.node import NodeConfig
from exchange.sim.topology import _SUBSCRIPTIONS, OWNERS, Role

__all__ = ["AgencyConfig", "default_config", "load_node_file"]

_FAULT_KINDS: dict[Role, list[str]] = {
    "population": ["unknown_commune", "version_conflict", "stale_version"],
    "tax": ["bad_checksum", "unknown_commune", "wrong_owner", "version_conflict",
            "stale_version"],
    "land": ["unknown_commune", "wrong_owner", "version_conflict", "stale_version"],
    "vehicle": ["wrong_owner", "bad_plate", "version_conflict", "stale_version"],
}
_RATES: dict[Role, float] = {"population": 150.0, "tax": 75.0, "land": 75.0, "vehicle": 75.0}
_UPDATES: dict[Role, float] = {"population": 0.25, "tax": 0.1, "land": 0.2, "vehicle": 0.2}

_Share = Annotated[float, msgspec.Meta(ge=0, le=1)]
_NonNeg = Annotated[float, msgspec.Meta(ge=0)]
_Pos = Annotated[int, msgspec.Meta(ge=1)]
_Count = Annotated[int, msgspec.Meta(ge=0)]


class AgencyConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """The ``[agency]`` section of a node file: what the agency does, how fast, how badly."""

    role: Role
    #: seed of the agency's generator; none draws a fresh one per run
    seed: int | None = None
    #: records per second published (0: as fast as the broker takes them)
    rate: _NonNeg = 100.0
    #: records per publish call; a chunk is confirmed before the next is planned
    chunk: _Pos = 25
    #: stop publishing after this many records (0: no limit)
    records: _Count = 0
    #: share of records that are new versions of accepted keys (address changes and deaths,
    #: status changes, transfers)
    updates: _Share = 0.2
    #: population: share of updates that are deaths, and of new records that are births
    deaths: _Share = 0.2
    births: _Share = 0.2
    #: share of records re-sent unchanged, as a publisher retrying would (duplicates)
    retries: _Share = 0.02
    #: share of records faulty on purpose, and which faults (default: the role's list)
    faults: _Share = 0.05
    fault_kinds: list[str] | None = None
    #: dataset -> durable subscription name (default: the role's agreements)
    subscriptions: dict[str, str] | None = None
    #: population records to know before publishing records that refer to people
    min_people: _Count = 20


def default_config(role: Role, **changes: Any) -> AgencyConfig:
    """The reference configuration of ``role`` (what ``nodes/<role>.toml`` holds)."""
    base = AgencyConfig(role=role, rate=_RATES[role], updates=_UPDATES[role],
                        fault_kinds=list(_FAULT_KINDS[role]),
                        subscriptions=dict(_SUBSCRIPTIONS[role]))
    return msgspec.structs.replace(base, **changes) if changes else base


def load_node_file(path: str | Path) -> tuple[NodeConfig, AgencyConfig]:
    """A node file: ``NodeConfig`` fields at the top, the ``[agency]`` section below.

    ``node_dir`` (or ``pki_dir``) is relative to the file.
    """
    path = Path(path)
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
        agency = raw.pop("agency", None)
        if agency is None:
            raise InputError(f"{path}: no [agency] section", code=Code.BAD_CONFIG)
        node = msgspec.convert(raw, NodeConfig)
        config = msgspec.convert(agency, AgencyConfig)
    except OSError as err:
        raise InputError(f"{path}: {err.strerror}", code=Code.BAD_CONFIG) from None
    except tomllib.TOMLDecodeError as err:
        raise InputError(f"{path} is not valid TOML: {err}", code=Code.BAD_CONFIG) from None
    except msgspec.ValidationError as err:
        raise InputError(f"{path}: {err}", code=Code.BAD_CONFIG) from None
    node = msgspec.structs.replace(
        node, **{name: str((path.parent / value).resolve())
                 for name, value in (("node_dir", node.node_dir), ("pki_dir", node.pki_dir))
                 if value})
    if OWNERS[config.role] != node.node_id:
        raise InputError(f"{path}: the {config.role} registry is {OWNERS[config.role]}, "
                         f"not {node.node_id}", code=Code.BAD_CONFIG)
    return node, config
