"""The reference agencies against a real broker on 127.0.0.1: what they publish, what they learn
from each other, and what the gate refuses (and lists in dead letters, through the CLI)."""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import pytest

from exchange.broker.app import load_config
from exchange.core.errors import InputError
from exchange.node import Node
from exchange.sim import agencies
from exchange.sim.agencies import (
    ROLES,
    Agency,
    LandRegistry,
    Planned,
    PopulationRegistry,
    TaxAuthority,
    VehicleRegistry,
    default_config,
    load_node_file,
    make_agency,
)
from tests.conftest import AGREEMENTS, OWNERS, Env

NODES = Path(__file__).resolve().parent.parent / "nodes"
#: clean records only, unless a test asks for faults
CLEAN: dict[str, Any] = {"faults": 0.0, "retries": 0.0, "updates": 0.0}


async def exchange_cli(*args: str) -> tuple[int, str, str]:
    """``python -m exchange ARGS`` without blocking the loop that serves the broker."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "exchange", *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    async with asyncio.timeout(120):
        out, err = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


@pytest.fixture
async def nodes(env: Env) -> AsyncIterator[dict[str, Node]]:
    async with AsyncExitStack() as stack:
        yield {role: await stack.enter_async_context(Node(env.node_config(OWNERS[role])))
               for role in ROLES}


def agency(nodes: dict[str, Node], role: agencies.Role, seed: int, **changes: Any) -> Agency:
    return make_agency(nodes[role], default_config(role, seed=seed, **{**CLEAN, **changes}))


async def with_people(nodes: dict[str, Node], n: int = 40) -> PopulationRegistry:
    pop = agency(nodes, "population", 1)
    assert isinstance(pop, PopulationRegistry)
    await pop.publish(pop.plan(n))
    assert pop.stats.accepted == n
    return pop


async def knowing(a: Agency, n: int) -> None:
    """Start ``a``'s subscriptions and wait until it knows ``n`` people."""
    a.start_subscriptions()
    async with asyncio.timeout(10):
        await a.wait_until(lambda: a.people_known() >= n)


def test_node_files_are_the_reference_configs() -> None:
    for role in ROLES:
        node, config = load_node_file(NODES / f"{role}.toml")
        assert node.node_id == OWNERS[role]
        assert config == default_config(role)
        assert Path(node.node_dir).is_absolute() and not node.pki_dir
    broker = load_config(NODES / "exchange.toml")
    assert {d.name: d.owner for d in broker.datasets} == OWNERS == agencies.OWNERS
    assert broker.agreements == AGREEMENTS == agencies.AGREEMENTS
    reference = agencies.broker_config(broker.pki_dir, broker.data_dir)
    assert broker == reference


def test_a_node_file_naming_another_agency_is_refused(tmp_path: Path) -> None:
    text = (NODES / "tax.toml").read_text().replace('role = "tax"', 'role = "land"')
    (tmp_path / "tax.toml").write_text(text)
    with pytest.raises(InputError, match=r"land registry is vn\.gov\.mae\.land"):
        load_node_file(tmp_path / "tax.toml")


async def test_tax_follows_address_changes_and_deaths(nodes: dict[str, Node]) -> None:
    pop = await with_people(nodes, 30)
    tax = agency(nodes, "tax", 2)
    assert isinstance(tax, TaxAuthority)
    await knowing(tax, 30)
    key = next(k for k, h in pop.records.items() if h.data["status"] == "living")
    before = tax.residents[key]
    assert before == {"address": pop.records[key].data["permanent_address"],
                      "status": "living", "version": 1}

    moved = pop.address_change(pop.records[key].data)
    await pop.publish_update(key, moved)
    async with asyncio.timeout(10):
        await tax.wait_until(lambda: tax.residents[key]["version"] == 2)
    assert tax.residents[key]["address"] == moved["permanent_address"] != before["address"]
    assert moved["permanent_address"]["ward_code"] != before["address"]["ward_code"]

    died = pop.death(pop.records[key].data)
    await pop.publish_update(key, died)
    async with asyncio.timeout(10):
        await tax.wait_until(lambda: tax.residents[key]["version"] == 3)
    assert tax.residents[key] == {"address": moved["permanent_address"], "status": "deceased",
                                  "version": 3}
    assert tax.people[key]["death_date"] == died["death_date"]
    assert pop.stats.unexpected == 0 and tax.stats.unexpected == 0


async def test_cross_references_resolve_to_published_records(nodes: dict[str, Node]) -> None:
    pop = await with_people(nodes, 60)
    tax = agency(nodes, "tax", 3)
    land = agency(nodes, "land", 4)
    vehicle = agency(nodes, "vehicle", 5)
    assert isinstance(tax, TaxAuthority) and isinstance(land, LandRegistry)
    assert isinstance(vehicle, VehicleRegistry)
    for a in (tax, land, vehicle):
        await knowing(a, 60)
    await tax.publish(tax.plan(40))
    async with asyncio.timeout(10):
        await vehicle.wait_until(lambda: len(vehicle.taxpayers) == len(tax.records))
    await land.publish(land.plan(40))
    await vehicle.publish(vehicle.plan(40))
    # transfers: new versions with new owners, still people the registries received
    await land.publish(_updates(land, 10))
    await vehicle.publish(_updates(vehicle, 10))

    people = set(pop.records)
    orgs = {k for k, h in tax.records.items() if h.data["kind"] == "organisation"}
    for h in tax.records.values():
        if "personal_id" in h.data:
            assert h.data["personal_id"] in people
    for h in land.records.values():
        assert set(h.data["owners"]) <= people
    for h in vehicle.records.values():
        assert h.data["owner_id"] in people | orgs
    assert any(h.version == 2 for h in land.records.values())
    assert any(h.version == 2 for h in vehicle.records.values())
    # land's agreement grants residence only: it never saw a name or a birth date
    assert all("full_name" not in p for p in land.people.values())
    assert all("full_name" in p for p in vehicle.people.values())
    for a in (tax, land, vehicle):
        assert a.stats.unexpected == 0 and not a.stats.rejected and not a.stats.failed


def _updates(a: Agency, n: int) -> list[Planned]:
    out = []
    for key, held in list(a.records.items()):
        data = a.update(held)
        if data is not None:
            out.append(Planned("update", key, held.version + 1, data, "accepted"))
        if len(out) == n:
            break
    return out


@pytest.mark.parametrize("role", ROLES)
async def test_faults_are_refused_with_their_codes_and_kept_as_dead_letters(
        env: Env, nodes: dict[str, Node], role: agencies.Role) -> None:
    pop = await with_people(nodes, 40)
    a: Agency = pop if role == "population" else agency(nodes, role, 6)
    if a is not pop:
        await knowing(a, 40)
        await a.publish(a.plan(20))
    # a second version of one key, so a stale version can be made
    update = _updates(a, 1)
    await a.publish(update)
    assert a.records[update[0].key].version == 2
    used: set[str] = set()
    planned = []
    for kind in a.fault_kinds:
        p = a.faulty(kind, used)
        assert p is not None, kind
        used.add(p.key)
        planned.append(p)
    result = await a.publish(planned)
    assert result is not None and result.accepted == 0
    assert a.stats.unexpected == 0, a.stats.examples
    expected = {p.expect for p in planned}
    assert "accepted" not in expected
    assert "version_conflict" in expected and "stale_version" in expected
    assert set(a.stats.rejected) == expected

    rc, out, err = await exchange_cli("dead-letters", "--node", OWNERS[role], "--pki",
                                      str(env.pki_dir), "--broker", env.url, "--json")
    assert rc == 0, err
    rows = json.loads(out)
    # one entry per violation: a land parcel in an unknown commune breaks two fields
    assert {r["code"] for r in rows} == expected
    assert len(rows) >= len(planned)
    assert all(r["dataset"] == a.dataset and r["path"].startswith("$") for r in rows)
    if role == "population":
        rc, out, err = await exchange_cli("dead-letters", "--node", OWNERS[role], "--pki",
                                          str(env.pki_dir), "--broker", env.url, "--limit", "1")
        assert rc == 0, err
        lines = out.splitlines()
        assert lines[0].split()[:3] == ["ID", "RECEIVED", "(UTC)"]
        assert len(lines) == 2 and rows[0]["code"] in lines[1]
        assert f"--after {rows[0]['id']}" in err


async def test_node_run_publishes_and_reports(env: Env) -> None:
    rc, out, err = await exchange_cli(
        "node", "run", str(NODES / "population.toml"), "--broker", env.url, "--pki",
        str(env.pki_dir), "--records", "60", "--seed", "9", "--faults", "0.2", "--json")
    assert rc == 0, err
    assert "Traceback" not in err
    s = json.loads(out)
    assert s["node"] == OWNERS["population"] and s["published"] == 60
    assert s["accepted"] + s["duplicates"] + sum(s["rejected"].values()) == 60
    assert s["rejected"] and s["unexpected"] == 0 and s["failed"] == 0
    assert await env.broker.store.head("population") == s["accepted"] - 1
