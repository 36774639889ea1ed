"""The OpenAPI and AsyncAPI descriptions: valid, complete, committed fresh, served; and the
running broker held to the OpenAPI one by Schemathesis (property-based requests over real TLS
with a node's and an operator's certificate: no 5xx, every status, content type and body as
described)."""

from __future__ import annotations

import asyncio
import json
import ssl
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import msgspec
import openapi_spec_validator
import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.core.result import Err
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from exchange import pki
from exchange.broker import app as broker_app
from exchange.broker import openapi
from exchange.cli import main
from exchange.node import Node, Record
from tests.conftest import OPERATOR, OUTSIDER, OWNERS, Env, people, sealed

DOCS = Path(__file__).resolve().parent.parent / "docs"
#: examples per operation and generation mode: enough to reach every documented refusal of a
#: route, few enough for `make test` (the whole run is ~30 s on 2 cores)
EXAMPLES = 12
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance,
          response_headers_conformance, response_schema_conformance]


@schemathesis.serializer("application/msgpack", "application/x-msgpack")
def _msgpack(ctx: Any, value: Any) -> bytes:
    try:
        return msgspec.msgpack.encode(value)
    except (OverflowError, TypeError):
        # a value MessagePack cannot hold (negative cases make ints past 64 bits): the body
        # is sent anyway, as the bytes of something else, and must be refused as malformed
        return json.dumps(value).encode()


# -- the documents --------------------------------------------------------------------------


def test_openapi_is_valid_3_1() -> None:
    doc = openapi.openapi()
    assert doc["openapi"] == "3.1.0"
    openapi_spec_validator.validate(doc)


def _refs(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for k, v in node.items():
            if k == "$ref" and isinstance(v, str):
                yield v
            else:
                yield from _refs(v)
    elif isinstance(node, list):
        for v in node:
            yield from _refs(v)


@pytest.mark.parametrize("build", [openapi.openapi, openapi.asyncapi])
def test_every_ref_resolves(build: Any) -> None:
    doc = build()
    for target in set(_refs(doc)):
        assert target.startswith("#/"), target
        node: Any = doc
        for part in target[2:].split("/"):
            node = node[part.replace("~1", "/").replace("~0", "~")]
        assert isinstance(node, dict), target


def test_asyncapi_describes_both_websockets() -> None:
    doc = openapi.asyncapi()
    assert doc["asyncapi"] == "3.0.0"
    addresses = {c["address"] for c in doc["channels"].values()}
    ws = {path for (_, path), op in openapi.OPERATIONS.items() if op.websocket}
    assert addresses == ws
    # every frame both ways: the node's and the broker's
    assert set(doc["components"]["messages"]) == {"batch", "publishReply", "credit", "ack",
                                                  "hello", "records"}


@pytest.mark.parametrize(("name", "build"), [("openapi.json", openapi.openapi),
                                             ("asyncapi.json", openapi.asyncapi)])
def test_committed_documents_are_fresh(name: str, build: Any) -> None:
    """``exchange broker openapi [--asyncapi] -o docs/...`` rewrites them."""
    committed = (DOCS / name).read_text(encoding="utf-8")
    assert committed == openapi.document_text(build()), (
        f"docs/{name} is stale: exchange broker openapi "
        f"{'--asyncapi ' if 'async' in name else ''}--output docs/{name}")


def test_cli_writes_the_documents(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["broker", "openapi", "--output", str(tmp_path / "o.json")]) == 0
    assert (tmp_path / "o.json").read_text() == openapi.document_text(openapi.openapi())
    assert main(["broker", "openapi", "--asyncapi"]) == 0
    assert json.loads(capsys.readouterr().out) == openapi.asyncapi()


def test_constants_are_the_brokers() -> None:
    assert openapi.BATCH_TYPES == broker_app.BATCH_TYPES
    assert openapi.AGREEMENT_STATES == broker_app.AGREEMENT_STATES
    body = openapi.openapi()["paths"]["/v1/datasets/{dataset}/records"]["post"]["requestBody"]
    assert set(body["content"]) == set(broker_app.BATCH_TYPES)


async def test_every_route_is_described_and_served(env: Env) -> None:
    routes = {(r.method, r.resource.canonical) for r in env.runner.app.router.routes()
              if r.resource is not None}
    gets = {path for method, path in routes if method == "GET"}
    # aiohttp answers HEAD on every GET route (the document says so once)
    assert {path for method, path in routes if method == "HEAD"} <= gets
    described = set(openapi.OPERATIONS)
    assert {r for r in routes if r[0] != "HEAD"} == described
    documented = {(m.upper(), p) for p, item in openapi.openapi()["paths"].items()
                  for m in item}
    assert documented == described
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(
            ssl=env.ssl(OWNERS["tax"]))) as s, s.get(f"{env.url}/v1/openapi.json") as r:
        assert r.status == 200 and r.content_type == "application/json"
        assert await r.json() == openapi.openapi()


async def test_openapi_takes_a_client_certificate(env: Env) -> None:
    """Like every route: the broker's TLS handshake requires a certificate of the exchange CA."""
    ctx = ssl.create_default_context(cafile=str(env.pki_dir / "ca.crt"))
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=ctx)) as s:
        with pytest.raises(aiohttp.ClientError):
            async with s.get(f"{env.url}/v1/openapi.json") as r:
                await r.read()


# -- Schemathesis against the running broker --------------------------------------------------


@dataclass
class Known:
    """Values that exist in the running exchange: cases with them reach past the 404s."""

    path: dict[str, str]
    #: by operationId: query parameters, or a request body
    query: dict[str, dict[str, str]] = field(default_factory=dict)
    body: dict[str, Any] = field(default_factory=dict)


def _strategies(operation: Any, mode: GenerationMode, known: Known) -> Any:
    """Schemathesis' own cases, and cases with the known values filled in."""
    raw = operation.definition.raw
    out = [operation.as_strategy(generation_mode=mode)]
    path = {p["name"]: known.path[p["name"]] for p in raw.get("parameters", ())
            if p["in"] == "path" and p["name"] in known.path}
    fixed: dict[str, Any] = {}
    if path:
        fixed["path_parameters"] = path
    if raw["operationId"] in known.query:
        fixed["query"] = known.query[raw["operationId"]]
    if fixed:
        out.append(operation.as_strategy(generation_mode=mode, **fixed))
    if raw["operationId"] in known.body and mode is GenerationMode.POSITIVE:
        out.append(operation.as_strategy(generation_mode=mode, media_type="application/json",
                                         body=known.body[raw["operationId"]], **fixed))
    return st.one_of(out)


def _fuzz(url: str, cert: tuple[str, str], ca: str, known: Known, *, examples: int
          ) -> list[str]:
    """Property-based cases for every plain-HTTP operation, positive and negative, deterministic
    (derandomized, no example database); one line per operation that failed."""
    schema = schemathesis.openapi.from_dict(openapi.openapi())
    session = requests.Session()
    session.trust_env = False  # the exchange CA, not a bundle named in the environment
    failures: list[str] = []
    try:
        for result in schema.get_all_operations():
            if isinstance(result, Err):
                failures.append(f"an operation does not load: {result.err()}")
                continue
            operation = result.ok()
            raw = operation.definition.raw
            if raw.get("x-websocket"):
                continue  # described in AsyncAPI; not callable as plain HTTP
            # an operation that takes nothing has no invalid input to make
            modes = ([GenerationMode.POSITIVE, GenerationMode.NEGATIVE]
                     if raw.get("parameters") or raw.get("requestBody")
                     else [GenerationMode.POSITIVE])
            for mode in modes:

                @settings(max_examples=examples, derandomize=True, database=None,
                          deadline=None, phases=[Phase.explicit, Phase.generate],
                          suppress_health_check=list(HealthCheck))
                @given(case=_strategies(operation, mode, known))
                def run(case: Any) -> None:
                    response = case.call(base_url=url, session=session, timeout=30,
                                         verify=ca, cert=cert)
                    case.validate_response(response, checks=CHECKS)

                try:
                    run()
                except (Exception, BaseExceptionGroup) as err:
                    failures.append(f"{operation.label} ({mode.value}): {err}")
    finally:
        session.close()
    return failures


async def test_schemathesis_finds_nothing(env: Env) -> None:
    pop = OWNERS["population"]
    records = people(6)
    async with Node(env.node_config(pop)) as node:
        await node.publish("population", [Record(p) for p in records[:5]])
        bad = {**people(1, seed=9)[0], "sex": "X"}  # a dead letter too
        await node.publish("population", [Record(bad)])
    async with Node(env.node_config(OUTSIDER)) as outsider:
        asked = await outsider.request_agreement(
            "population", purpose="a test of the API", legal_basis="none, a test")
    await env.broker.tlog.checkpoint()
    key = str(records[0]["id"])
    known = Known(
        path={"dataset": "population", "node": pop, "publisher": pop, "key": key,
              "version": "1", "id": asked["id"]},
        query={"getAccess": {"dataset": "population", "key": key},
               "listDeadLetters": {"node": pop}},
        body={"publishBatch": msgspec.to_builtins(sealed(env, pop, records[5:]))})
    ca = str(env.pki_dir / "ca.crt")
    node_id = pki.load_node_identity(env.pki_dir, pop)
    operator = pki.party.load_identity(env.operator_dir)
    assert operator.node_id == OPERATOR
    failures = []
    for who in (node_id, operator):
        # requests blocks: it runs in a thread while the broker serves on this loop
        failures += await asyncio.to_thread(
            _fuzz, env.url, (str(who.tls_cert), str(who.tls_key)), ca, known,
            examples=EXAMPLES)
    assert not failures, "\n\n".join(failures)
