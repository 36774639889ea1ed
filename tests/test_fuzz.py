"""A bounded run of the hostile-input suite (the long run is ``make fuzz``): every decoder
that reads outside bytes gets random and mutated inputs and may only answer with the
exchange's own errors; every HTTP route over real TLS gets random requests and never answers
with a 5xx."""

from __future__ import annotations

import random
from typing import Any

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import OWNERS, Env, people, sealed
from tests.fuzz_targets import SEEDS, TARGETS, run
from tests.test_broker_refusals import session

POP = OWNERS["population"]
BOUNDED = settings(max_examples=150, deadline=None, derandomize=True,
                   suppress_health_check=[HealthCheck.too_slow])




@st.composite
def mutated(draw: Any, target: str) -> bytes:
    data = bytearray(draw(st.sampled_from(SEEDS[target])))
    for _ in range(draw(st.integers(0, 8))):
        op = draw(st.integers(0, 2))
        at = draw(st.integers(0, max(0, len(data) - 1)))
        if op == 0 and data:
            data[at] = draw(st.integers(0, 255))
        elif op == 1:
            data[at:at] = draw(st.binary(max_size=16))
        elif data:
            del data[at:at + draw(st.integers(1, 16))]
    return bytes(data)


@pytest.mark.parametrize("target", sorted(TARGETS))
@BOUNDED
@given(data=st.data())
def test_decoders_answer_only_with_the_exchanges_errors(target: str, data: Any) -> None:
    raw = data.draw(st.one_of(st.binary(max_size=512), mutated(target)))
    run(target, raw)


async def test_every_route_answers_random_requests_without_a_5xx(env: Env) -> None:
    """Random methods, paths, queries, bodies and content types against every route, over
    real TLS: each answer is below 500, and a refusal is a problem with a code."""
    rnd = random.Random(2026)
    valid = msgspec.json.encode(sealed(env, POP, people(1, seed=97)))
    routes = [r.resource.canonical for r in env.runner.app.router.routes()
              if r.resource is not None]
    params = {"dataset": ["population", "nope", "%00", "a" * 300],
              "version": ["1", "0", "-1", "1e9", "x"], "publisher": [POP, "x"],
              "node": [POP, "..", "x" * 200], "key": ["001099000000", "%2F", "\u202e"],
              "id": ["agr-0123456789abcdef", "x"]}
    queries = ["", "?after=1e99", "?seq=-5&size=x", "?start=9&end=1", "?from=0&to=0",
               "?dataset=population&key=1", "?limit=-1", "?state=active", "?node=%00"]
    bodies = [b"", valid, valid[: len(valid) // 2], b"\x00" * 64, b"[]", b"{" * 200,
              b"{\"\x80\": 1}",
              msgspec.msgpack.encode({"a": 1})]
    ctypes = ["application/json", "application/msgpack", "text/plain", ""]
    seen = 0
    async with session(env) as s:
        for _ in range(300):
            route = rnd.choice(routes)
            path = route
            for name, values in params.items():
                path = path.replace("{" + name + "}", rnd.choice(values))
            method = rnd.choice(["GET", "POST", "PUT", "DELETE"])
            body = rnd.choice(bodies) if method in ("POST", "PUT") else None
            headers = {"Content-Type": rnd.choice(ctypes)} if body is not None else {}
            async with s.request(method, path + rnd.choice(queries), data=body,
                                 headers=headers) as resp:
                await resp.read()
                assert resp.status < 500, (method, path, resp.status)
                if resp.status >= 400:
                    assert resp.headers.get("Problem-Code"), (method, path)
                seen += 1
    assert seen == 300
