"""Schema versions: the registry and its compatibility modes, population v2 beside v1, v1 and
v2 readers of the same records, and ``dataschema`` as an absolute URI."""

from __future__ import annotations

import asyncio
import copy
import dataclasses
import hashlib
import json
from pathlib import Path
from typing import Any

import aiohttp
import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from exchange.cli import main
from exchange.core import datasets
from exchange.core.datasets import IncompatibleSchema, compat
from exchange.core.datasets.population import SPEC_V2
from exchange.core.seal import seal
from exchange.node import Delivery, Node, Record
from tests.conftest import (
    AGREEMENTS,
    OWNERS,
    SEALED_AT,
    Env,
    broker_config,
    make_pki,
    people,
    start_broker,
    until,
)

POP, TAX, LAND = OWNERS["population"], OWNERS["tax"], OWNERS["land"]
SCHEMAS = Path(__file__).resolve().parent.parent / "schemas"


def v2_people(n: int) -> list[dict[str, Any]]:
    """``n`` population records with v2's fields: two by two in households whose heads are
    people not published here (so no head's id travels as a record key)."""
    out = people(n, seed=7)
    heads = people(n, seed=8)
    for i, p in enumerate(out):
        p["hometown"] = {"province_code": p["permanent_address"]["province_code"]}
        p["household_head_id"] = heads[i // 2]["id"]
        p["relationship_to_head"] = ("spouse", "child")[i % 2]
    return out


def schema(version: int = 1) -> dict[str, Any]:
    return copy.deepcopy(datasets.get("population", version).json_schema())


def person(s: dict[str, Any]) -> dict[str, Any]:
    """The record object of an exported schema (``$ref`` to its ``$defs`` entry)."""
    props: dict[str, Any] = s["$defs"][s["$ref"].removeprefix("#/$defs/")]
    return props


# -- the compatibility rules ---------------------------------------------------------------------


def test_v2_is_full_transitive_compatible_with_v1() -> None:
    assert compat.breaks(schema(1), schema(2), against=1) == []
    assert compat.check_version("FULL_TRANSITIVE", 2, schema(2), {1: schema(1)}) == []
    # v1 reads v2 only because v2's fields sit in groups of their own: put them in identity
    # and a v1 reader granted identity would receive fields it does not know
    moved = schema(2)
    groups = moved["x-exchange"]["disclosure_groups"]
    groups["identity"] += groups.pop("household")
    found = compat.breaks(schema(1), moved, against=1)
    assert {(b.direction, b.path) for b in found} == {
        ("groups", "groups.identity"), ("forward", "$.household_head_id"),
        ("forward", "$.relationship_to_head")}
    assert "adds household_head_id, relationship_to_head" in str(found[0])


def test_each_kind_of_break_names_its_field() -> None:
    old = schema(2)
    new = schema(2)
    p = person(new)
    p["properties"]["sex"] = {"enum": ["male"]}                       # narrowed enum
    p["properties"]["birth_place"] = {"type": "string"}               # new required field
    p["required"].append("birth_place")
    del p["properties"]["religion"]                                   # removed field
    new["$defs"]["Address"]["properties"]["ward_code"]["pattern"] = "^[0-9]{6}$"
    p["properties"]["full_name"]["maxLength"] = 300                   # widened: forward break
    found = {(b.direction, b.path): b.message for b in compat.breaks(old, new, against=2)}
    assert "'female', which is no longer allowed" in found[("backward", "$.sex")]
    assert "now required" in found[("backward", "$.birth_place")]
    assert "no longer known" in found[("backward", "$.religion")]
    assert "^[0-9]{6}$" in found[("backward", "$.permanent_address.ward_code")]
    assert "maxLength" in found[("forward", "$.full_name")]
    # the v1 reader does not know birth_place (it is in no group it has) but does know that
    # religion may be absent: forward breaks only where it reads a value it cannot take
    assert ("forward", "$.religion") not in found
    assert ("forward", "$.sex") not in found  # fewer values: every new record reads as old


def test_a_subset_test_that_holds_what_it_says() -> None:
    s = {"type": "string", "maxLength": 5}
    assert compat.is_subschema(s, {"type": "string"})
    assert not compat.is_subschema({"type": "string"}, s)
    assert compat.is_subschema({"type": "integer"}, {"type": "number"})
    assert not compat.is_subschema({"type": "number"}, {"type": "integer"})
    assert compat.is_subschema({"enum": ["a"]}, {"enum": ["a", "b"]})
    assert compat.is_subschema({"anyOf": [{"type": "string"}, {"type": "null"}]},
                               {"anyOf": [{"type": "null"}, {"type": "string"}]})
    assert not compat.is_subschema({"anyOf": [{"type": "string"}, {"type": "null"}]},
                                   {"type": "string"})


def test_modes_compare_with_the_latest_or_with_every_version() -> None:
    v1 = schema(1)
    # v2 was published under NONE and dropped a sex value; v3 keeps v2's enum
    v2 = schema(1)
    person(v2)["properties"]["sex"] = {"enum": ["male"]}
    v3 = copy.deepcopy(v2)
    earlier = {1: v1, 2: v2}
    assert compat.check_version("BACKWARD", 3, v3, earlier) == []
    found = compat.check_version("BACKWARD_TRANSITIVE", 3, v3, earlier)
    assert [(b.against, b.path) for b in found] == [(1, "$.sex")]
    assert compat.check_version("FORWARD_TRANSITIVE", 3, v3, earlier) == []
    assert compat.check_version("NONE", 3, {}, earlier) == []
    with pytest.raises(ValueError, match="unknown compatibility mode"):
        compat.check_version("SIDEWAYS", 3, v3, earlier)


def test_an_incompatible_version_is_refused_with_the_field_named() -> None:
    class PersonV3(SPEC_V2.record_type, kw_only=True):  # type: ignore[misc,name-defined,call-arg]
        mobile: str  # required: no v1 or v2 record has it

    v3 = dataclasses.replace(SPEC_V2, version=3, record_type=PersonV3,
                             groups={**SPEC_V2.groups, "contact": ("mobile",)})
    registry = {"population": dict(datasets.REGISTRY["population"])}
    with pytest.raises(IncompatibleSchema) as err:
        datasets.register(v3, registry)
    assert {(b.against, b.direction, b.path) for b in err.value.breaks} == {
        (1, "backward", "$.mobile"), (2, "backward", "$.mobile")}
    assert "$.mobile" in str(err.value) and "FULL_TRANSITIVE" in str(err.value)
    assert 3 not in registry["population"]
    # the same with a default is compatible, and registers
    class PersonV3b(SPEC_V2.record_type, kw_only=True):  # type: ignore[misc,name-defined,call-arg]
        mobile: str | None = None

    datasets.register(dataclasses.replace(v3, record_type=PersonV3b), registry)
    assert 3 in registry["population"]
    # a version is never replaced, and versions follow each other
    with pytest.raises(ValueError, match="immutable"):
        datasets.register(SPEC_V2, registry)
    with pytest.raises(ValueError, match="does not follow"):
        datasets.register(dataclasses.replace(SPEC_V2, version=9), registry)


def test_export_refuses_to_change_a_published_version(tmp_path: Path) -> None:
    datasets.export_schemas(tmp_path)
    pins = json.loads((tmp_path / "published.json").read_text())
    assert pins["population"]["1"] == datasets.schema_digest(datasets.get("population", 1))
    # the committed pins are the ones the code gives: no published version changed
    assert json.loads((SCHEMAS / "published.json").read_text()) == pins
    pins["population"]["1"] = "0" * 64  # as if v1's code had changed since it was published
    (tmp_path / "published.json").write_text(json.dumps(pins))
    before = (tmp_path / "population" / "v2" / "schema.json").stat().st_mtime_ns
    with pytest.raises(datasets.PublishedVersionChanged, match="population v1 is published"):
        datasets.export_schemas(tmp_path)
    assert (tmp_path / "population" / "v2" / "schema.json").stat().st_mtime_ns == before
    # a published version the code no longer registers is refused too
    pins["population"]["1"] = datasets.schema_digest(datasets.get("population", 1))
    pins["population"]["3"] = "0" * 64
    (tmp_path / "published.json").write_text(json.dumps(pins))
    with pytest.raises(datasets.PublishedVersionChanged, match="population v3 is published"):
        datasets.export_schemas(tmp_path)
    # and a version refused at registration leaves no trace in the registry
    registry: dict[str, dict[int, Any]] = {}
    with pytest.raises(ValueError, match="unknown compatibility mode"):
        datasets.register(dataclasses.replace(SPEC_V2, name="other", version=1,
                                              compatibility="SIDEWAYS"), registry)
    assert registry == {}


# -- the CLI -------------------------------------------------------------------------------------


def test_cli_versions_diff_check(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert main(["schema", "versions", "population"]) == 0
    out = capsys.readouterr().out
    assert "latest v2, mode FULL_TRANSITIVE" in out and "adds groups hometown, household" in out
    assert main(["schema", "versions", "population", "--format", "json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert [v["sha256"] for v in listed["versions"]] == [
        datasets.schema_digest(s) for s in datasets.versions("population")]

    assert main(["schema", "diff", "population", "1", "2"]) == 0
    out = capsys.readouterr().out
    assert "+ group household: household_head_id, relationship_to_head" in out
    assert "backward: yes" in out and "forward: yes" in out

    proposed = schema(2)
    person(proposed)["properties"]["status"] = {"enum": ["living", "deceased", "missing"]}
    path = tmp_path / "v3.json"
    path.write_text(json.dumps(proposed))
    assert main(["schema", "check", "population", str(path)]) == 1
    out = capsys.readouterr().out
    assert "population v3 (proposed) is not FULL_TRANSITIVE compatible" in out
    assert "$.status: a record of the new version, as a v1 reader receives it, may hold " \
           "'missing'" in out
    assert "against v1" in out and "against v2" in out
    assert main(["schema", "check", "population", str(path), "--mode", "BACKWARD"]) == 0
    assert "is BACKWARD compatible with the latest" in capsys.readouterr().out
    path.write_text("[1, 2]")
    assert main(["schema", "check", "population", str(path)]) == 2


# -- v1 and v2 readers of the same records, end to end --------------------------------------------


async def test_v1_and_v2_subscribers_verify_records_published_as_v2(env: Env) -> None:
    # the reference agreements: land reads v1 (residence), tax reads v2 (with household)
    by_node = {a.subscriber: a for a in AGREEMENTS if a.dataset == "population"}
    assert by_node[LAND].version == 1 and by_node[TAX].version == 2
    records = v2_people(20)
    got: dict[str, list[Delivery]] = {TAX: [], LAND: []}
    done = {TAX: asyncio.Event(), LAND: asyncio.Event()}

    def handler(node: str, n: int) -> Any:
        async def on(d: Delivery) -> None:
            got[node].append(d)
            if len(got[node]) == n:
                done[node].set()
        return on

    async with Node(env.node_config(POP)) as pop, Node(env.node_config(TAX)) as tax, \
            Node(env.node_config(LAND)) as land:
        result = await pop.publish("population", [Record(p) for p in records])
        assert result.accepted == 20 and not result.rejected
        # the owner pinned to v1 publishes v1 records beside them (new keys)
        async with Node(env.node_config(POP, schema_versions={"population": 1})) as pop1:
            old = people(5, seed=99)
            assert (await pop1.publish("population", [Record(p) for p in old])).accepted == 5
        subs = [tax.subscribe("population", "tax-v2", handler(TAX, 25)),
                land.subscribe("population", "land-v1", handler(LAND, 25))]
        await asyncio.wait_for(asyncio.gather(*(e.wait() for e in done.values())), 10)
        for s in subs:
            await s.stop()
    assert [s.verified for s in subs] == [25, 25]
    types = [d.schema_version for d in got[TAX]]
    assert types == [2] * 20 + [1] * 5
    assert all(d.dataschema == f"{env.url}/v1/schemas/population/{d.schema_version}"
               for d in got[TAX])
    # the v2 reader receives the household it is granted, not the hometown
    for d, p in zip(got[TAX][:20], records, strict=True):
        assert d.data["household_head_id"] == p["household_head_id"]
        assert d.data["relationship_to_head"] == p["relationship_to_head"]
        assert "hometown" not in d.data and "hometown" in d.withheld
    assert all("household" not in d.withheld for d in got[TAX][20:])  # v1 has no such group
    # the v1 reader: exactly what it received before v2 existed, v2's groups withheld
    for d in got[LAND]:
        assert set(d.data) == {"permanent_address"}
    assert {frozenset(d.withheld) for d in got[LAND][:20]} == {frozenset(
        {"identity", "civil_status", "ethnicity_religion", "hometown", "household"})}


async def test_no_byte_of_a_later_version_group_reaches_a_v1_reader(env: Env) -> None:
    records = v2_people(6)
    async with Node(env.node_config(POP)) as pop:
        assert (await pop.publish("population", [Record(p) for p in records])).accepted == 6
    frames: list[str] = []
    async with aiohttp.ClientSession(env.url, connector=aiohttp.TCPConnector(
            ssl=env.ssl(LAND))) as s:
        ws = await s.ws_connect("/v1/datasets/population/subscribe?name=raw&encoding=json")
        hello = msgspec.json.decode((await ws.receive(timeout=10)).data)
        assert hello["version"] == 1 and "household" not in hello["granted"]
        await ws.send_str(json.dumps({"type": "credit", "n": 100}))
        seen = 0
        while seen < 6:
            text = (await ws.receive(timeout=10)).data
            frames.append(text)
            seen += len(msgspec.json.decode(text)["records"])
        await ws.close()
    raw = "".join(frames)
    for p in records:
        assert p["household_head_id"] not in raw
        assert "relationship_to_head" not in raw and "hometown" not in raw.replace(
            '"hometown":', "")  # the group's name appears among the withheld, no value


# -- dataschema ----------------------------------------------------------------------------------


async def test_dataschema_is_an_absolute_uri_of_the_records_version(tmp_path: Path) -> None:
    pki_dir = make_pki(tmp_path)
    config = msgspec.structs.replace(broker_config(pki_dir, tmp_path / "data"),
                                     public_url="https://exchange.example.gov.vn")
    _, runner, url = await start_broker(config)
    try:
        from exchange import pki

        key = pki.load_node_identity(pki_dir, POP).signing_key
        spec = datasets.get("population", 2)
        items = [(p["id"], 1, p) for p in people(3)]

        async def post(batch: Any) -> Any:
            async with aiohttp.ClientSession(url, connector=aiohttp.TCPConnector(
                    ssl=pki.client_ssl_context(pki_dir, POP))) as s, \
                    s.post("/v1/datasets/population/records", data=msgspec.json.encode(batch),
                           headers={"Content-Type": "application/json"}) as resp:
                return resp.status, msgspec.json.decode(await resp.read())

        status, body = await post(seal(key, POP, spec, items, b"\x02" * 32, time=SEALED_AT,
                                       schema_base="https://localhost"))
        assert status == 422
        assert [(e["code"], e["index"], e["path"]) for e in body["errors"]] == [
            ("bad_dataschema", i, "$.dataschema") for i in range(3)]
        assert all("is not 'https://exchange.example.gov.vn/v1/schemas/population/2'"
                   in e["message"] for e in body["errors"])
        status, body = await post(seal(key, POP, spec, items, b"\x03" * 32, time=SEALED_AT,
                                       schema_base="https://exchange.example.gov.vn"))
        assert status == 200, body
        # the SDK takes the base the broker advertises
        async with aiohttp.ClientSession(url, connector=aiohttp.TCPConnector(
                ssl=pki.client_ssl_context(pki_dir, POP))) as s, \
                s.get("/v1/schemas/population/versions") as resp:
            listed = msgspec.json.decode(await resp.read())
        assert [v["dataschema"] for v in listed["versions"]] == [
            "https://exchange.example.gov.vn/v1/schemas/population/1",
            "https://exchange.example.gov.vn/v1/schemas/population/2"]
        from exchange.node import NodeConfig

        cfg = NodeConfig(node_id=POP, pki_dir=str(pki_dir), brokers=[url], linger_s=0.005)
        async with Node(cfg) as pop:
            result = await pop.publish("population", [Record(p) for p in people(3, seed=5)])
        assert result.accepted == 3
    finally:
        await runner.cleanup()


async def test_without_a_public_url_any_https_origin_but_only_the_right_path(env: Env) -> None:
    from exchange import pki

    key = pki.load_node_identity(env.pki_dir, POP).signing_key
    spec = datasets.get("population", 2)
    items = [(p["id"], 1, p) for p in people(2)]
    async with aiohttp.ClientSession(env.url, connector=aiohttp.TCPConnector(
            ssl=env.ssl(POP))) as s:
        for n, (dataschema, ok) in enumerate([
                ("/v1/schemas/population/2", False),           # relative: not a URI
                ("http://exchange.example/v1/schemas/population/2", False),
                ("https://exchange.example/v1/schemas/population/1", False),  # other version
                ("https://u:p@exchange.example/v1/schemas/population/2", False),
                ("https://exchange.example:notaport/v1/schemas/population/2", False),
                ("https://exchange.example/v1/schemas/population/2?v=1", False),
                ("https://exchange.example/v1/schemas/population/2#x", False),
                ("https://exchange.example/v1/schemas/population/2", True)]):
            batch = seal(key, POP, spec, items, bytes([n + 10]) * 32, time=SEALED_AT)
            records = [msgspec.structs.replace(
                r, event=msgspec.structs.replace(r.event, dataschema=dataschema))
                for r in batch.records]
            # re-signed: the publisher's own choice of dataschema, signed like the rest
            resealed = _resign(key, batch, records)
            async with s.post("/v1/datasets/population/records",
                              data=msgspec.json.encode(resealed),
                              headers={"Content-Type": "application/json"}) as resp:
                body = msgspec.json.decode(await resp.read())
                if ok:
                    assert resp.status == 200, body
                else:
                    assert resp.status == 422, body
                    assert {e["code"] for e in body["errors"]} == {"bad_dataschema"}
    await until(lambda: env.broker.hub.heads.get("population") == 1,
                lambda: env.broker.hub.event("population"), what="head 1")


def _resign(key: Any, batch: Any, records: list[Any]) -> Any:
    from exchange.core import disclosure, merkle
    from exchange.core.envelope import digest
    from exchange.core.signing import Batch, Statement, statement_bytes

    spec = datasets.get("population", 2)
    leaves = [merkle.leaf_hash(digest(r.event.attributes(), disclosure.commitments(
        r.event.data, spec.groups, r.salts))) for r in records]
    st = batch.statement
    statement = Statement(node=st.node, dataset=st.dataset, root=merkle.root(leaves),
                          size=len(records), time=st.time, kid=st.kid)
    return Batch(statement, key.sign(statement_bytes(statement)), records)


# -- the compatibility test is sound: never "compatible" where a record breaks -------------------

_VALUES = [None, True, False, 0, 1, -1, 2.5, 7, "", "a", "ab", "abc", "b1", "2026-01-02",
           [], [1], ["a"], [1, "a"], {}, {"a": 1}, {"a": "x"}, {"b": None}, {"a": "x", "b": 2},
           {"c": 1}]


def _schemas() -> st.SearchStrategy[Any]:
    scalar_types = st.sampled_from(["string", "integer", "number", "boolean", "null"])
    constraints = st.fixed_dictionaries({}, optional={
        "minLength": st.integers(0, 3), "maxLength": st.integers(0, 3),
        "pattern": st.sampled_from(["^a", "b", "^[0-9]+$"]),
        "minimum": st.integers(-1, 2), "maximum": st.integers(-1, 7),
        "exclusiveMinimum": st.integers(-1, 2)})
    leaf = st.one_of(
        st.builds(lambda t, c: {"type": t, **c}, scalar_types, constraints),
        st.builds(lambda t, c: {"type": t, **c},
                  st.lists(scalar_types, min_size=1, max_size=3, unique=True), constraints),
        st.builds(lambda vs: {"enum": vs},
                  st.lists(st.sampled_from(_VALUES[:14]), min_size=1, max_size=3)),
        st.builds(lambda v: {"const": v}, st.sampled_from(_VALUES[:14])),
        st.booleans())

    def nest(inner: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
        props = st.dictionaries(st.sampled_from(["a", "b"]), inner, max_size=2)
        return st.one_of(
            st.builds(lambda bs: {"anyOf": bs}, st.lists(inner, min_size=1, max_size=3)),
            st.builds(lambda ps, req, rest, t: {
                **({"type": "object"} if t else {}), "properties": ps,
                "required": sorted(set(req)), **({} if rest is None else
                                                  {"additionalProperties": rest})},
                props, st.lists(st.sampled_from(["a", "b"]), max_size=2),
                st.one_of(st.none(), st.booleans(), inner), st.booleans()),
            st.builds(lambda items, lo: {"type": "array", "items": items,
                                         **({"minItems": lo} if lo else {})},
                      inner, st.integers(0, 1)))

    return st.recursive(leaf, nest, max_leaves=6)


@settings(max_examples=600, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow])
@given(old=_schemas(), new=_schemas())
def test_compatible_means_every_record_still_valid(old: Any, new: Any) -> None:
    """Whatever the test calls compatible (about 1 in 7 distinct pairs drawn here), every
    value a JSON Schema validator finds valid under the old schema is valid under the new."""
    from jsonschema import Draft202012Validator  # type: ignore[import-untyped]

    for a, b in ((old, new), (new, old), (old, old)):
        try:
            if not compat.is_subschema(a, b):
                continue
        except ValueError:
            continue  # "cannot compare": reported as such, never as compatible
        va, vb = Draft202012Validator(a), Draft202012Validator(b)
        for value in _VALUES:
            if va.is_valid(value):
                assert vb.is_valid(value), (a, b, value)


def test_the_review_counterexamples_are_breaks() -> None:
    def field(s: Any) -> dict[str, Any]:
        return {"type": "object", "properties": {"x": s}, "required": ["x"],
                "additionalProperties": False}

    pairs = [
        ({"enum": ["a"]}, {"type": "string", "minLength": 5}),
        ({"const": 5}, {"type": "integer", "maximum": 3}),
        ({"enum": ["bb"]}, {"enum": ["a", "bb"], "maxLength": 1}),
        ({"enum": [1]}, {"type": "string", "enum": ["a", 1]}),
        ({"enum": [True, 0]}, {"enum": [1, False]}),
        ({"type": "integer"}, {"oneOf": [{"type": "integer"}, {"type": "number"}]}),
        ({"type": "string"}, {"type": "string", "maxLength": 3,
                              "anyOf": [{"type": "string"}]}),
        ({"type": "object", "properties": {}},
         {"type": "object", "properties": {"w": {"type": "string"}}}),
        ({"type": "object", "properties": {}},
         {"type": "object", "properties": {}, "additionalProperties": {"type": "string"}}),
        ({"type": ["object", "null"]}, {"type": ["object", "null"], "required": ["k"]}),
        ({"type": ["object", "null"]}, {"type": ["object", "null"],
                                        "additionalProperties": False}),
    ]
    for old, new in pairs:
        assert not compat.is_subschema(field(old), field(new)), (old, new)
    ref_old = {**field({"$ref": "#/$defs/T"}), "$defs": {"T": {"type": "string"}}}
    ref_new = {**field({"$ref": "#/$defs/T", "maxLength": 3}),
               "$defs": {"T": {"type": "string"}}}
    assert not compat.is_subschema(ref_old, ref_new)
    recursive = {"$defs": {"N": {"type": "object", "properties": {
        "kids": {"type": "array", "items": {"$ref": "#/$defs/N"}}}}}, "$ref": "#/$defs/N"}
    assert compat.is_subschema(recursive, recursive)  # no RecursionError
    assert compat.is_subschema(field(True), field(True))
    assert not compat.is_subschema(field(True), field({"type": "string"}))


def test_a_public_url_is_one_https_origin_in_lower_case() -> None:
    from exchange.core.access import BrokerConfig, check_config

    for url, ok in (("https://exchange.example.gov.vn", True),
                    ("https://exchange.example.gov.vn:8443", True),
                    ("https://Exchange.Example.gov.vn", False),
                    ("http://exchange.example.gov.vn", False),
                    ("https://exchange.example.gov.vn/base", False),
                    ("https://u@exchange.example.gov.vn", False)):
        found = [p.path for p in check_config(BrokerConfig(public_url=url))]
        assert (found == []) is ok, (url, found)
        assert found in ([], ["public_url"])



async def test_a_served_schema_is_the_committed_file_with_its_digest(env: Env) -> None:
    async with aiohttp.ClientSession(env.url, connector=aiohttp.TCPConnector(
            ssl=env.ssl(LAND))) as s:
        for version in (1, 2):
            async with s.get(f"/v1/schemas/population/{version}") as resp:
                body = await resp.read()
                headers = resp.headers
            committed = (SCHEMAS / "population" / f"v{version}" / "schema.json").read_bytes()
            assert body == committed
            assert headers["ETag"] == f'"{hashlib.sha256(committed).hexdigest()}"'
            assert "immutable" in headers["Cache-Control"]
        async with s.get("/v1/schemas/population") as resp:  # the latest: not immutable
            assert resp.status == 200 and "Cache-Control" not in resp.headers
            assert await resp.read() == (SCHEMAS / "population" / "v2" / "schema.json"
                                         ).read_bytes()


async def test_a_batch_is_checked_against_its_records_version(env: Env) -> None:
    """One version per batch: the first record's. A record of another version is refused alone
    (its index named); a version the exchange does not know refuses the batch."""
    from exchange import pki

    key = pki.load_node_identity(env.pki_dir, POP).signing_key
    ps = people(3, seed=31)
    v2 = datasets.get("population", 2)
    batch = seal(key, POP, v2, [(p["id"], 1, p) for p in ps], b"\x21" * 32, time=SEALED_AT)
    # the middle record claims v1 (re-signed: the publisher's own statement)
    records = list(batch.records)
    records[1] = msgspec.structs.replace(records[1], event=msgspec.structs.replace(
        records[1].event, type="vn.exchange.population.v1",
        dataschema="https://localhost/v1/schemas/population/1"))
    mixed = _resign(key, batch, records)
    unknown = _resign(key, batch, [msgspec.structs.replace(r, event=msgspec.structs.replace(
        r.event, type="vn.exchange.population.v9")) for r in batch.records])
    async with aiohttp.ClientSession(env.url, connector=aiohttp.TCPConnector(
            ssl=env.ssl(POP))) as s:
        async with s.post("/v1/datasets/population/records", data=msgspec.json.encode(mixed),
                          headers={"Content-Type": "application/json"}) as resp:
            body = msgspec.json.decode(await resp.read())
        assert resp.status == 422
        # (its dataschema, v1's, is not the batch version's either)
        assert sorted((e["index"], e["code"]) for e in body["errors"]) == [
            (1, "bad_dataschema"), (1, "unknown_schema_version")]
        assert body["receipt"]["receipt"]["accepted"] == 2
        async with s.post("/v1/datasets/population/records", data=msgspec.json.encode(unknown),
                          headers={"Content-Type": "application/json"}) as resp:
            body = msgspec.json.decode(await resp.read())
        assert (resp.status, body["code"]) == (404, "unknown_schema_version")
