"""The running agencies: ``Agency`` on a node, and the four reference roles.

``Agency`` subscribes to what its agreements grant, publishes what its ``Planner`` plans (in
chunks, each confirmed before the next is planned) and counts every outcome (``Stats``,
``SubscriptionStats``); ``PopulationRegistry``, ``TaxAuthority``, ``LandRegistry`` and
``VehicleRegistry`` make their datasets' records. ``make_agency`` picks the role's class.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import functools
from collections import Counter
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from typing import Any

from exchange.core.datasets import RuleContext
from exchange.core.datasets.land import parcel_key
from exchange.core.datasets.vehicle import compact_plate
from exchange.core.errors import ExchangeError
from exchange.node import Delivery, Node, PublishResult, Record, Subscription
from exchange.sim.config import AgencyConfig
from exchange.sim.generate import fault
from exchange.sim.planner import Held, Planned, Planner
from exchange.sim.topology import _SUBSCRIPTIONS, Role

__all__ = [
    "Agency",
    "LandRegistry",
    "PopulationRegistry",
    "Stats",
    "SubscriptionStats",
    "TaxAuthority",
    "VehicleRegistry",
    "make_agency",
]


@dataclass
class SubscriptionStats:
    dataset: str
    name: str
    delivered: int = 0
    seqs: set[int] = field(default_factory=set)


@dataclass
class Stats:
    published: int = 0
    accepted: int = 0
    duplicates: int = 0
    rejected: Counter[str] = field(default_factory=Counter)
    #: records whose batch never got a receipt (broker unreachable, batch refused whole)
    failed: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    #: the message of the last error that failed a publish (what an operator reads first)
    last_error: str | None = None
    planned: Counter[str] = field(default_factory=Counter)
    #: records whose outcome was not the planned one, with a few examples
    unexpected: int = 0
    examples: list[tuple[str, str, str, str]] = field(default_factory=list)
    accepted_seqs: set[int] = field(default_factory=set)


class Agency(Planner):
    """One reference agency on a connected ``Node``. ``await agency.run()`` until ``stop()``."""

    def __init__(self, node: Node, config: AgencyConfig, *, today: dt.date | None = None
                 ) -> None:
        super().__init__(config, today=today)
        self.node = node
        self.stats = Stats()
        self.sub_stats: dict[str, SubscriptionStats] = {}
        self.subscriptions: dict[str, Subscription] = {}
        self._changed = asyncio.Condition()
        self._stop = asyncio.Event()
        #: keep every accepted and delivered seq, to count what was lost; a node that runs for
        #: days turns this off (the SDK already drops redelivered seqs)
        self.track_seqs = True

    @property
    def node_id(self) -> str:
        return self.node.config.node_id

    # -- subscriptions ----------------------------------------------------------------------

    def start_subscriptions(self) -> None:
        subs = self.config.subscriptions
        if subs is None:
            subs = _SUBSCRIPTIONS[self.role]
        for dataset, name in subs.items():
            if dataset in self.subscriptions:
                continue
            stats = self.sub_stats[dataset] = SubscriptionStats(dataset, name)
            self.subscriptions[dataset] = self.node.subscribe(
                dataset, name, self._handler(stats), start="earliest")

    def _handler(self, stats: SubscriptionStats) -> Callable[[Delivery], Any]:
        async def handle(d: Delivery) -> None:
            stats.delivered += 1
            if self.track_seqs:
                stats.seqs.add(d.seq)
            self.on_delivery(d)
            async with self._changed:
                self._changed.notify_all()
        return handle

    def on_delivery(self, d: Delivery) -> None:
        """A verified record from a subscription (override)."""

    async def wait_until(self, predicate: Callable[[], bool]) -> None:
        """Wait until ``predicate()`` holds; it is checked after every delivery and publish.
        Bound it with ``asyncio.timeout``."""
        async with self._changed:
            await self._changed.wait_for(predicate)

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    def caught_up(self, accepted: Mapping[str, set[int]]) -> bool:
        """Every subscription has received every seq in ``accepted`` of its dataset."""
        return all(accepted.get(s.dataset, set()) <= s.seqs for s in self.sub_stats.values())

    # -- publishing ---------------------------------------------------------------------------

    async def publish(self, planned: list[Planned]) -> PublishResult | None:
        """Publish planned records, account for every outcome, remember what was accepted."""
        st = self.stats
        st.published += len(planned)
        st.planned.update(p.kind for p in planned)
        try:
            result = await self.node.publish(self.dataset,
                                             [Record(p.data, p.version) for p in planned])
        except ExchangeError as err:
            st.failed += len(planned)
            st.errors[err.code] += 1
            st.last_error = f"{err.message} ({err.code})"
            await self._notify()
            return None
        rejected: dict[int | None, str] = {}
        for v in result.rejected:  # a record may break several rules: count it by the first
            rejected.setdefault(v.index, v.code)
        for i, p in enumerate(planned):
            code = rejected.get(i)
            seq = result.seqs[i] if i < len(result.seqs) else None
            held = self.records.get(p.key)
            if code is not None:
                st.rejected[code] += 1
                outcome = code
            elif seq is None:
                st.failed += 1
                outcome = "failed"
            elif held is not None and held.seq == seq:
                st.duplicates += 1
                outcome = "duplicate"
            else:
                st.accepted += 1
                if self.track_seqs:
                    st.accepted_seqs.add(seq)
                if held is None:
                    self._keys.append(p.key)
                self.records[p.key] = Held(p.version, p.data, seq)
                outcome = "accepted"
            if outcome != p.expect:
                st.unexpected += 1
                if len(st.examples) < 20:
                    st.examples.append((p.kind, p.key, p.expect, outcome))
        await self._notify()
        return result

    async def run(self, records: int | None = None) -> None:
        """Subscribe, then publish chunks at the configured rate until ``records`` (default: the
        config's ``records``; 0 = no limit) are published or ``stop()`` is called."""
        self.start_subscriptions()
        limit = self.config.records if records is None else records
        await self._wait(self.ready)
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        sent = 0
        while not self._stop.is_set() and (not limit or sent < limit):
            n = self.config.chunk if not limit else min(self.config.chunk, limit - sent)
            planned = self.plan(n)
            if not planned:  # not enough people known yet: wait for the next delivery
                await self._wait(functools.partial(self._knows_more_than, self.people_known()))
                continue
            await self.publish(planned)
            sent += len(planned)
            if self.config.rate > 0:
                ahead = sent / self.config.rate - (loop.time() - t0)
                if ahead > 0:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._stop.wait(), ahead)

    def people_known(self) -> int:
        """How many people this agency has received from population."""
        return 0

    def _knows_more_than(self, n: int) -> bool:
        return self.people_known() > n

    async def _wait(self, predicate: Callable[[], bool]) -> bool:
        async with self._changed:
            await self._changed.wait_for(lambda: predicate() or self._stop.is_set())
        return not self._stop.is_set()

    async def stop(self) -> None:
        """Stop publishing after the chunk in flight; subscriptions keep running."""
        self._stop.set()
        await self._notify()

    # -- reporting ----------------------------------------------------------------------------

    def summary(self) -> dict[str, Any]:
        st = self.stats
        subs: dict[str, Any] = {}
        for dataset, s in self.sub_stats.items():
            sub = self.subscriptions[dataset]
            subs[f"{self.node_id}/{dataset}/{s.name}"] = {
                "delivered": s.delivered, "verified": sub.verified,
                "verification_failures": len(sub.evidence), "reconnects": sub.reconnects}
        return {
            "node": self.node_id, "role": self.role, "dataset": self.dataset, "seed": self.seed,
            "published": st.published, "accepted": st.accepted, "duplicates": st.duplicates,
            "rejected": dict(sorted(st.rejected.items())), "failed": st.failed,
            "errors": dict(st.errors), "last_error": st.last_error,
            "planned": dict(sorted(st.planned.items())),
            "unexpected": st.unexpected,
            "unexpected_examples": [{"kind": k, "key": key, "expected": e, "got": o}
                                    for k, key, e, o in st.examples],
            "subscriptions": subs,
        }


def _birth_year(pid: str) -> int:
    """Birth year from digits G and YY of a personal id (Circular 07/2016/TT-BCA Art. 7)."""
    return 1900 + 100 * (int(pid[3]) // 2) + int(pid[4:6])


class _KnowsPeople(Agency):
    """An agency that learns people from its population subscription."""

    def __init__(self, node: Node, config: AgencyConfig, *, today: dt.date | None = None
                 ) -> None:
        super().__init__(node, config, today=today)
        #: person id -> what this agency may know of them, shaped like a population record
        self.people: dict[str, dict[str, Any]] = {}
        self._people_ids: list[str] = []  # for random picks without copying the dict
        self._versions: dict[str, int] = {}

    def ready(self) -> bool:
        return len(self.people) >= self.config.min_people

    def people_known(self) -> int:
        return len(self.people)

    def on_delivery(self, d: Delivery) -> None:
        if d.dataset == "population" and d.version >= self._versions.get(d.key, 0):
            self._versions[d.key] = d.version
            person = {"status": "living", **d.data, "id": d.key}
            if "birth_date" not in person:  # withheld: the id still says the year
                person["birth_date"] = f"{_birth_year(d.key)}-12-31"
            if d.key not in self.people:
                self._people_ids.append(d.key)
            self.people[d.key] = person

    def _adult_id(self, exclude: Collection[str] = ()) -> str | None:
        if not self._people_ids:
            return None
        cutoff = self.today.year - 18
        for _ in range(30):
            pid = self.rng.choice(self._people_ids)
            p = self.people[pid]
            if pid not in exclude and p.get("status") == "living" and \
                    int(str(p["birth_date"])[:4]) < cutoff:
                return pid
        return None


class PopulationRegistry(Agency):
    role = "population"
    dataset = "population"

    def __init__(self, node: Node, config: AgencyConfig, *, today: dt.date | None = None
                 ) -> None:
        super().__init__(node, config, today=today)
        self._ids: set[str] = set()

    def key_of(self, data: Mapping[str, Any]) -> str:
        return str(data["id"])

    def new_records(self, n: int) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        while len(out) < n:
            p = self.gen.person()
            if self.rng.random() < self.config.births:
                p = self._newborn(p)
            if p["id"] not in self._ids:
                self._ids.add(p["id"])
                out.append(p)
        return out

    def _newborn(self, p: dict[str, Any]) -> dict[str, Any]:
        """A birth registered today: the id's century/sex digit and year follow the new date."""
        birth = self.today - dt.timedelta(days=self.rng.randint(0, 60))
        g = 2 * ((birth.year - 1900) // 100) + (1 if p["sex"] == "female" else 0)
        head = f"{p['birth_registration_province']}{g}{birth.year % 100:02d}"
        pid = head + p["id"][6:]
        while pid in self._ids:
            pid = f"{head}{self.rng.randrange(1_000_000):06d}"
        born = {k: v for k, v in p.items() if k not in ("death_date", "religion")}
        born.update(id=pid, birth_date=birth.isoformat(), status="living",
                    as_of=self.today.isoformat())
        return born

    def update(self, held: Held) -> dict[str, Any] | None:
        if held.data.get("status") == "deceased":
            return None
        if self.rng.random() < self.config.deaths:
            return self.death(held.data)
        return self.address_change(held.data)

    def death(self, data: Mapping[str, Any]) -> dict[str, Any]:
        birth = dt.date.fromisoformat(data["birth_date"])
        died = max(birth, self.today - dt.timedelta(days=self.rng.randint(0, 20)))
        return {**data, "status": "deceased", "death_date": died.isoformat(),
                "as_of": self.today.isoformat()}

    def address_change(self, data: Mapping[str, Any]) -> dict[str, Any]:
        old = data["permanent_address"]["ward_code"]
        while True:
            addr = self.gen.person()["permanent_address"]
            if addr["ward_code"] != old:
                break
        return {**data, "permanent_address": addr, "as_of": self.today.isoformat()}

    def variant(self, data: dict[str, Any]) -> dict[str, Any]:
        return {**data, "ethnicity": "Tày" if data.get("ethnicity") == "Kinh" else "Kinh"}

    async def publish_update(self, key: str, data: dict[str, Any]) -> PublishResult | None:
        """Publish the next version of ``key`` (an address change or a death)."""
        held = self.records[key]
        return await self.publish([Planned("update", key, held.version + 1, data, "accepted")])


class TaxAuthority(_KnowsPeople):
    role = "tax"
    dataset = "tax"

    def __init__(self, node: Node, config: AgencyConfig, *, today: dt.date | None = None
                 ) -> None:
        super().__init__(node, config, today=today)
        #: individuals' current address and status, as population last said
        self.residents: dict[str, dict[str, Any]] = {}

    def on_delivery(self, d: Delivery) -> None:
        super().on_delivery(d)
        if d.dataset == "population":
            self.residents[d.key] = {"address": d.data.get("permanent_address"),
                                     "status": d.data.get("status"), "version": d.version}

    def key_of(self, data: Mapping[str, Any]) -> str:
        return str(data["tax_id"])

    def new_records(self, n: int) -> list[dict[str, Any]]:
        if n <= 0:
            return []
        try:
            return self.gen.tax(n, list(self.people.values()))
        except ValueError:  # no living adult known yet
            return []

    def faulty(self, kind: str, used: Collection[str] = ()) -> Planned | None:
        if kind == "wrong_owner":
            # a 12-digit tax id is the person's own id, so a wrong personal id there is a
            # mismatch first; fault an MST holder to show the unresolvable reference itself
            for _ in range(10):
                fresh = self.new_records(1)
                if fresh and len(fresh[0]["tax_id"]) != 12:
                    data = fault(fresh[0], kind)
                    result = self.spec.validate(data, RuleContext(today=self.today))
                    code = result.violations[0].code if result.violations else "accepted"
                    return Planned(kind, self.key_of(data), 1, data, code)
            return None
        return super().faulty(kind, used)

    def update(self, held: Held) -> dict[str, Any] | None:
        statuses = ["active", "suspended", "closing", "closed", "moved", "absent"]
        statuses.remove(held.data["status"])
        return {**held.data, "status": self.rng.choice(statuses),
                "as_of": self.today.isoformat()}

    def variant(self, data: dict[str, Any]) -> dict[str, Any]:
        office = data["tax_office"]
        number = int(office[-3:]) + 1 if int(office[-3:]) < 999 else 100
        return {**data, "tax_office": f"{office[:-3]}{number:03d}"}


class LandRegistry(_KnowsPeople):
    role = "land"
    dataset = "land"

    def key_of(self, data: Mapping[str, Any]) -> str:
        return parcel_key(data["ward_code"], data["map_sheet"], data["parcel_number"])

    def new_records(self, n: int) -> list[dict[str, Any]]:
        if n <= 0:
            return []
        try:
            return self.gen.land(n, list(self.people.values()))
        except ValueError:
            return []

    def update(self, held: Held) -> dict[str, Any] | None:
        """A transfer: new land users, a new certificate (Circular 10/2024/TT-BTNMT form)."""
        first = self._adult_id(exclude=held.data["owners"])
        if first is None:
            return None
        owners = [first]
        if self.rng.random() < 0.35:
            second = self._adult_id(exclude=[*held.data["owners"], first])
            if second is not None:
                owners.append(second)
        serial = f"A{self.rng.choice('ABCD')} {self.rng.randrange(10**8):08d}"
        return {**held.data, "owners": owners, "certificate_serial": serial,
                "as_of": self.today.isoformat()}

    def variant(self, data: dict[str, Any]) -> dict[str, Any]:
        return {**data, "area_m2": round(float(data["area_m2"]) + 1.0, 1)}


class VehicleRegistry(_KnowsPeople):
    role = "vehicle"
    dataset = "vehicle"

    def __init__(self, node: Node, config: AgencyConfig, *, today: dt.date | None = None
                 ) -> None:
        super().__init__(node, config, today=today)
        self.taxpayers: dict[str, dict[str, Any]] = {}

    def on_delivery(self, d: Delivery) -> None:
        super().on_delivery(d)
        if d.dataset == "tax":
            self.taxpayers[d.key] = dict(d.data)

    def key_of(self, data: Mapping[str, Any]) -> str:
        return compact_plate(str(data["plate"]))

    def new_records(self, n: int) -> list[dict[str, Any]]:
        if n <= 0:
            return []
        try:
            return self.gen.vehicle(n, list(self.people.values()),
                                    list(self.taxpayers.values()))
        except ValueError:
            return []

    def update(self, held: Held) -> dict[str, Any] | None:
        """A transfer to another person, registered today (Circular 79/2024/TT-BCA)."""
        if held.data.get("status") == "deregistered":
            return None
        owner = self._adult_id(exclude=[held.data["owner_id"]])
        if owner is None:
            return None
        return {**held.data, "owner_id": owner, "registration_date": self.today.isoformat(),
                "status": "registered", "as_of": self.today.isoformat()}

    def variant(self, data: dict[str, Any]) -> dict[str, Any]:
        return {**data, "colour": "Đỏ" if data.get("colour") != "Đỏ" else "Xanh"}


_CLASSES: dict[Role, type[Agency]] = {
    "population": PopulationRegistry, "tax": TaxAuthority, "land": LandRegistry,
    "vehicle": VehicleRegistry,
}


def make_agency(node: Node, config: AgencyConfig, *, today: dt.date | None = None) -> Agency:
    """The reference agency for ``config.role`` on ``node``."""
    return _CLASSES[config.role](node, config, today=today)
