"""The four reference agency nodes: population, tax, land and vehicle registries.

Each agency is a node SDK client that runs in-process as asyncio tasks: it publishes realistic
records of its own dataset (``exchange.sim.generate.Generator``), subscribes to what its agreements
grant, and keeps count of everything that happened to its records and deliveries.

- **population** (Ministry of Public Security) publishes citizens already on the register and
  births; address changes are a new version with another commune; deaths are a new version with
  ``status = "deceased"`` and a ``death_date``.
- **tax** (Ministry of Finance) publishes registrations and status changes; it subscribes to
  population and keeps a map of individuals' current address and status.
- **land** (Ministry of Agriculture and Environment) publishes parcels and transfers (a new
  version with new owners); it subscribes to population, where it may read residence only.
- **vehicle** (Ministry of Public Security) publishes registrations and transfers; it subscribes
  to population and tax.

Cross references resolve through the exchange itself: taxpayers' personal ids and land and
vehicle owners are ids the agency received from population (or MSTs received from tax), never
ids it made up. A configurable share of records is faulty on purpose (bad checksum, unknown
commune, wrong owner, version conflict, stale version) so the broker's gate has work to do; each
planned record carries the outcome it should have, and outcomes that differ are counted.

Records are published in chunks, each awaited before the next is planned, so a version conflict
or a stale version always refers to a version the broker has confirmed.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import functools
import random
import tomllib
from collections import Counter
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

import msgspec

from exchange.core import datasets
from exchange.core.access import Agreement, BrokerConfig, DatasetConfig
from exchange.core.datasets.land import parcel_key
from exchange.core.datasets.vehicle import compact_plate
from exchange.core.errors import Code, ExchangeError, InputError
from exchange.node import Delivery, Node, NodeConfig, PublishResult, Record, Subscription
from exchange.sim.generate import FAULTS, Generator, fault

__all__ = [
    "AGREEMENTS",
    "OWNERS",
    "ROLES",
    "Agency",
    "AgencyConfig",
    "LandRegistry",
    "Planned",
    "PopulationRegistry",
    "TaxAuthority",
    "VehicleRegistry",
    "broker_config",
    "broker_toml",
    "default_config",
    "load_node_file",
    "make_agency",
]

Role = Literal["population", "tax", "land", "vehicle"]
ROLES: tuple[Role, ...] = ("population", "tax", "land", "vehicle")

#: dataset -> its one owner, the authoritative source
OWNERS: dict[str, str] = {
    "population": "vn.gov.mps.population",
    "tax": "vn.gov.mof.tax",
    "land": "vn.gov.mae.land",
    "vehicle": "vn.gov.mps.vehicle",
}

#: the data-sharing agreements of the reference exchange (Law 91/2025/QH15: each agency
#: receives only the disclosure groups its purpose needs)
AGREEMENTS: list[Agreement] = [
    Agreement(subscriber=OWNERS["tax"], dataset="population",
              purpose="keep taxpayers' addresses and status current",
              groups=["identity", "residence", "civil_status"]),
    Agreement(subscriber=OWNERS["land"], dataset="population",
              purpose="identify land users", groups=["residence"]),
    Agreement(subscriber=OWNERS["vehicle"], dataset="population",
              purpose="identify vehicle owners", groups=["identity", "residence"]),
    Agreement(subscriber=OWNERS["vehicle"], dataset="tax",
              purpose="identify organisations owning vehicles"),
]

_SUBSCRIPTIONS: dict[Role, dict[str, str]] = {
    "population": {},
    "tax": {"population": "tax-residents"},
    "land": {"population": "land-users"},
    "vehicle": {"population": "vehicle-owners", "tax": "vehicle-organisations"},
}
_FAULT_KINDS: dict[Role, list[str]] = {
    "population": ["unknown_commune", "version_conflict", "stale_version"],
    "tax": ["bad_checksum", "unknown_commune", "wrong_owner", "version_conflict",
            "stale_version"],
    "land": ["unknown_commune", "wrong_owner", "version_conflict", "stale_version"],
    "vehicle": ["wrong_owner", "bad_plate", "version_conflict", "stale_version"],
}
_RATES: dict[Role, float] = {"population": 150.0, "tax": 75.0, "land": 75.0, "vehicle": 75.0}
_UPDATES: dict[Role, float] = {"population": 0.25, "tax": 0.1, "land": 0.2, "vehicle": 0.2}
#: faults the agency makes itself, on records the broker has already accepted
_VERSION_FAULTS = ("version_conflict", "stale_version")

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


def broker_config(pki_dir: str, data_dir: str, listen: str = "127.0.0.1:8443") -> BrokerConfig:
    """The reference exchange: the four datasets with their owners and the agreements."""
    return BrokerConfig(listen=listen, pki_dir=pki_dir, data_dir=data_dir,
                        datasets=[DatasetConfig(d, o) for d, o in OWNERS.items()],
                        agreements=list(AGREEMENTS))


def broker_toml(pki_dir: str, data_dir: str, listen: str = "127.0.0.1:8443") -> str:
    """``broker_config`` as the TOML text an operator would write (paths relative to it)."""
    lines = ['node_id = "vn.gov.ndc.broker"', f'listen = "{listen}"',
             f"pki_dir = {_toml_str(pki_dir)}", f"data_dir = {_toml_str(data_dir)}",
             'store = "sqlite"', ""]
    for name, owner in OWNERS.items():
        lines += ["[[datasets]]", f'name = "{name}"', f'owner = "{owner}"', ""]
    for a in AGREEMENTS:
        lines += ["[[agreements]]", f'subscriber = "{a.subscriber}"', f'dataset = "{a.dataset}"',
                  f"purpose = {_toml_str(a.purpose)}",
                  "groups = [" + ", ".join(f'"{g}"' for g in a.groups) + "]", ""]
    return "\n".join(lines)


def _toml_str(s: str) -> str:
    return msgspec.json.encode(s).decode()  # a JSON string is a TOML basic string


def load_node_file(path: str | Path) -> tuple[NodeConfig, AgencyConfig]:
    """A node file: ``NodeConfig`` fields at the top, the ``[agency]`` section below.

    ``pki_dir`` is relative to the file.
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
    node = msgspec.structs.replace(node, pki_dir=str((path.parent / node.pki_dir).resolve()))
    if OWNERS[config.role] != node.node_id:
        raise InputError(f"{path}: the {config.role} registry is {OWNERS[config.role]}, "
                         f"not {node.node_id}", code=Code.BAD_CONFIG)
    return node, config


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
    planned: Counter[str] = field(default_factory=Counter)
    #: records whose outcome was not the planned one, with a few examples
    unexpected: int = 0
    examples: list[tuple[str, str, str, str]] = field(default_factory=list)
    accepted_seqs: set[int] = field(default_factory=set)


class Agency:
    """One reference agency on a connected ``Node``. ``await agency.run()`` until ``stop()``."""

    role: ClassVar[Role]
    dataset: ClassVar[str]

    def __init__(self, node: Node, config: AgencyConfig, *, today: dt.date | None = None
                 ) -> None:
        if config.role != self.role:
            raise InputError(f"a {type(self).__name__} needs role {self.role}, "
                             f"not {config.role}", code=Code.BAD_CONFIG)
        self.node = node
        self.config = config
        seed = config.seed if config.seed is not None else random.SystemRandom().getrandbits(32)
        self.seed = seed
        self.gen = Generator(f"{self.role}:{seed}", today)
        self.today = self.gen.today
        self.rng = random.Random(f"{self.role}:{seed}:plan")
        self.spec = datasets.get(self.dataset)
        self.stats = Stats()
        self.records: dict[str, Held] = {}
        self._keys: list[str] = []
        self.sub_stats: dict[str, SubscriptionStats] = {}
        self.subscriptions: dict[str, Subscription] = {}
        kinds = config.fault_kinds if config.fault_kinds is not None else _FAULT_KINDS[self.role]
        for k in kinds:
            if k not in _VERSION_FAULTS and k not in FAULTS[self.dataset]:
                raise InputError(f"fault {k!r} does not apply to {self.dataset}; try "
                                 f"{', '.join([*_VERSION_FAULTS, *FAULTS[self.dataset]])}",
                                 code=Code.BAD_CONFIG)
        self.fault_kinds = list(kinds)
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
        result = self.spec.validate(data)
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
            "errors": dict(st.errors), "planned": dict(sorted(st.planned.items())),
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
                    result = self.spec.validate(data)
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
