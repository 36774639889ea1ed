"""Planning what an agency publishes next: new records, updates, retries and faults.

``Planner`` is the base of every agency (``exchange.sim.roles.Agency``): it holds the agency's
generator, its random draws and the broker-confirmed version of each of its keys, and plans
chunks of records, each with the outcome the broker's gate should give it (``Planned``). The
roles override the record-making parts (``new_records``, ``update``, ``variant``, ``key_of``);
the agency publishes the plan and keeps ``records`` current with what the broker accepted.
"""

from __future__ import annotations

import datetime as dt
import random
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from exchange.core import datasets
from exchange.core.datasets import RuleContext
from exchange.core.errors import Code, InputError
from exchange.sim.config import _FAULT_KINDS, AgencyConfig
from exchange.sim.generate import FAULTS, Generator, fault
from exchange.sim.topology import Role

__all__ = ["Held", "Planned", "Planner"]

#: faults the agency makes itself, on records the broker has already accepted
_VERSION_FAULTS = ("version_conflict", "stale_version")


@dataclass
class Planned:
    """One record about to be published, and the outcome it should have."""

    kind: str  #: new, update, retry, or a fault kind
    key: str
    version: int
    data: dict[str, Any]
    #: ``accepted``, ``duplicate``, or the violation code the gate should give
    expect: str


@dataclass
class Held:
    """The broker-confirmed current version of one of the agency's keys."""

    version: int
    data: dict[str, Any]
    seq: int


class Planner:
    """What an agency publishes next, planned a chunk at a time (see ``plan``)."""

    role: ClassVar[Role]
    dataset: ClassVar[str]

    def __init__(self, config: AgencyConfig, *, today: dt.date | None = None) -> None:
        if config.role != self.role:
            raise InputError(f"a {type(self).__name__} needs role {self.role}, "
                             f"not {config.role}", code=Code.BAD_CONFIG)
        self.config = config
        seed = config.seed if config.seed is not None else random.SystemRandom().getrandbits(32)
        self.seed = seed
        self.gen = Generator(f"{self.role}:{seed}", today)
        self.today = self.gen.today
        self.rng = random.Random(f"{self.role}:{seed}:plan")
        self.spec = datasets.get(self.dataset)
        #: key -> its broker-confirmed current version (kept by the publisher)
        self.records: dict[str, Held] = {}
        self._keys: list[str] = []
        kinds = config.fault_kinds if config.fault_kinds is not None else _FAULT_KINDS[self.role]
        for k in kinds:
            if k not in _VERSION_FAULTS and k not in FAULTS[self.dataset]:
                raise InputError(f"fault {k!r} does not apply to {self.dataset}; try "
                                 f"{', '.join([*_VERSION_FAULTS, *FAULTS[self.dataset]])}",
                                 code=Code.BAD_CONFIG)
        self.fault_kinds = list(kinds)

    # -- planning (override the record-making parts) -----------------------------------------

    def ready(self) -> bool:
        """Whether the agency knows enough (people) to publish."""
        return True

    def new_records(self, n: int) -> list[dict[str, Any]]:
        raise NotImplementedError

    def update(self, held: Held) -> dict[str, Any] | None:
        """The next version's data of a held key, or None if the key takes no update."""
        raise NotImplementedError

    def variant(self, data: dict[str, Any]) -> dict[str, Any]:
        """Other content for the same key: what a conflicting publisher would send."""
        raise NotImplementedError

    def key_of(self, data: Mapping[str, Any]) -> str:
        raise NotImplementedError

    def _pick_held(self, used: Collection[str], min_version: int = 1
                   ) -> tuple[str, Held] | None:
        """A random accepted key not in ``used``, at ``min_version`` or above."""
        if not self._keys:
            return None
        for _ in range(8):  # most keys qualify: a few random draws beat a scan
            key = self.rng.choice(self._keys)
            held = self.records[key]
            if key not in used and held.version >= min_version:
                return key, held
        eligible = [k for k in self._keys
                    if k not in used and self.records[k].version >= min_version]
        if not eligible:
            return None
        key = self.rng.choice(eligible)
        return key, self.records[key]

    def faulty(self, kind: str, used: Collection[str] = ()) -> Planned | None:
        """One record with fault ``kind``, on a key not in ``used``; None if none can be made
        yet (a stale version needs a key at version 2 or above)."""
        if kind == "version_conflict":
            picked = self._pick_held(used)
            if picked is None:
                return None
            key, held = picked
            return Planned(kind, key, held.version, self.variant(held.data), "version_conflict")
        if kind == "stale_version":
            picked = self._pick_held(used, min_version=2)
            if picked is None:
                return None
            key, held = picked
            return Planned(kind, key, held.version - 1, self.variant(held.data), "stale_version")
        fresh = self.new_records(1)
        if not fresh:
            return None
        data = fault(fresh[0], kind)
        result = self.spec.validate(data, RuleContext(today=self.today))
        key = self.key_of(data) if result.record is not None else "?"
        expect = result.violations[0].code if result.violations else "accepted"
        return Planned(kind, key, 1, data, expect)

    def plan(self, n: int) -> list[Planned]:
        """``n`` records (or fewer, when the agency cannot make more yet), each key once."""
        c = self.config
        out: list[Planned] = []
        used: set[str] = set()
        fresh = 0
        for _ in range(n):
            r = self.rng.random()
            item: Planned | None = None
            if r < c.faults and self.fault_kinds:
                item = self.faulty(self.rng.choice(self.fault_kinds), used)
            elif r < c.faults + c.retries:
                picked = self._pick_held(used)
                if picked is not None:
                    key, held = picked
                    item = Planned("retry", key, held.version, held.data, "duplicate")
            elif r < c.faults + c.retries + c.updates:
                picked = self._pick_held(used)
                if picked is not None:
                    key, held = picked
                    data = self.update(held)
                    if data is not None:
                        item = Planned("update", key, held.version + 1, data, "accepted")
            if item is None:
                fresh += 1
            else:
                out.append(item)
                used.add(item.key)
        for data in self.new_records(fresh):
            key = self.key_of(data)
            if key not in used and key not in self.records:
                out.append(Planned("new", key, 1, data, "accepted"))
                used.add(key)
        self.rng.shuffle(out)
        return out
