"""Every refusal the broker makes, over real TLS: who (certificates), may (owner, agreement),
what (signatures, limits, malformed bodies). Each refusal that reaches HTTP is
``application/problem+json`` with a stable ``code``; none is ever a 5xx. Arbitrary bytes are
fuzzed at the publish endpoint."""

from __future__ import annotations

import random
import ssl
from pathlib import Path
from typing import Any

import aiohttp
import msgspec
import pytest

from exchange import pki
from exchange.core.signing import Batch
from tests.conftest import (
    OUTSIDER,
    OWNERS,
    PROBLEM,
    Env,
    broker_config,
    eventually,
    people,
    sealed,
    start_broker,
)

POP = OWNERS["population"]
TAX = OWNERS["tax"]
RECORDS = "/v1/datasets/population/records"
#: what a refused TLS handshake looks like to an aiohttp client (TLS 1.3 sends the server's
#: refusal of the client certificate after the client's Finished, so it can surface on first read)
REFUSED = (aiohttp.ClientConnectionError, ssl.SSLError, ConnectionError)


def session(env: Env, node: str | None = None, ctx: ssl.SSLContext | None = None,
            url: str | None = None) -> aiohttp.ClientSession:
    return aiohttp.ClientSession(url or env.url, connector=aiohttp.TCPConnector(
        ssl=ctx if ctx is not None else env.ssl(node or POP), force_close=True))


async def post_raw(s: aiohttp.ClientSession, body: bytes, ctype: str = "application/json",
                   path: str = RECORDS) -> tuple[int, str, dict[str, Any]]:
    async with s.post(path, data=body, headers={"Content-Type": ctype}) as resp:
        raw = await resp.read()
        assert resp.content_type == PROBLEM, (resp.status, raw[:200])
        problem = msgspec.json.decode(raw)
        assert isinstance(problem, dict)
        assert problem["status"] == resp.status
        assert isinstance(problem["code"], str) and problem["code"]
        assert problem["type"].endswith("/" + problem["code"])
        assert resp.headers["Problem-Code"] == problem["code"]  # for clients without the body
        return resp.status, problem["code"], problem


async def post(s: aiohttp.ClientSession, batch: Batch, path: str = RECORDS
               ) -> tuple[int, str, dict[str, Any]]:
    return await post_raw(s, msgspec.json.encode(batch), path=path)


def ca_only_context(env: Env) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(env.pki_dir / "ca.crt"))
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    return ctx


async def dead_letters(env: Env, node: str) -> list[dict[str, Any]]:
    async with session(env, node) as s, s.get("/v1/dead-letters") as resp:
        assert resp.status == 200
        out: list[dict[str, Any]] = msgspec.json.decode(await resp.read())
        return out


# -- who ---------------------------------------------------------------------------------------

async def test_no_client_certificate_is_refused_at_the_handshake(env: Env) -> None:
    async with session(env, ctx=ca_only_context(env)) as s:
        with pytest.raises(REFUSED):
            async with s.get("/healthz") as resp:
                await resp.read()


async def test_a_certificate_from_a_foreign_ca_is_refused(env: Env, tmp_path: Path) -> None:
    foreign = tmp_path / "foreign"
    pki.init(foreign)
    pki.enroll(foreign, POP)  # the same node id, but not vouched for by the exchange CA
    ident = pki.load_node_identity(foreign, POP)
    ctx = ca_only_context(env)
    ctx.load_cert_chain(ident.tls_cert, ident.tls_key)
    async with session(env, ctx=ctx) as s:
        with pytest.raises(REFUSED):
            async with s.get("/healthz") as resp:
                await resp.read()


async def test_a_revoked_node_is_refused_after_reload(env: Env) -> None:
    async with session(env, OUTSIDER) as s, s.get("/healthz") as resp:
        assert resp.status == 200
    pki.revoke(env.pki_dir, OUTSIDER)
    env.broker.reload()
    async with session(env, OUTSIDER) as s:
        try:
            async with s.get("/healthz") as resp:
                status, body = resp.status, msgspec.json.decode(await resp.read())
        except REFUSED:
            pass  # refused at the handshake: the CRL is in the new TLS context
        else:
            assert (status, body["code"]) == (401, "revoked")
    # others are unaffected
    async with session(env, TAX) as s, s.get("/healthz") as resp:
        assert resp.status == 200


async def test_revoked_in_the_broker_list_is_refused_over_http(env: Env) -> None:
    """If the TLS layer lets a revoked certificate through (old context, established
    connection), the HTTP gate refuses it with the code ``revoked``."""
    async with session(env, OUTSIDER) as s:
        pki.revoke(env.pki_dir, OUTSIDER)
        env.broker.revoked = pki.load_revoked(env.pki_dir)  # the list, not the TLS context
        async with s.get("/healthz") as resp:
            assert (resp.status, resp.content_type) == (401, PROBLEM)
            assert msgspec.json.decode(await resp.read())["code"] == "revoked"


# -- may ---------------------------------------------------------------------------------------

async def test_only_the_owner_publishes(env: Env) -> None:
    async with session(env, TAX) as s:
        status, code, problem = await post(s, sealed(env, TAX, people(1)))
        assert (status, code) == (403, "not_owner")
        assert POP in problem["detail"]
        status, code, _ = await post(s, sealed(env, TAX, people(1)),
                                     path="/v1/datasets/weather/records")
        # one code, one class: a dataset not served here is not found, as GET /v1/schemas/…
        assert (status, code) == (404, "unknown_dataset")


async def test_no_agreement_no_subscription(env: Env) -> None:
    path = "/v1/datasets/population/subscribe?name=x"
    async with session(env, OUTSIDER) as s:
        with pytest.raises(aiohttp.WSServerHandshakeError) as info:
            await s.ws_connect(path)
        assert info.value.status == 403
        async with s.get(path) as resp:  # the same refusal, readable without the upgrade
            assert (resp.status, resp.content_type) == (403, PROBLEM)
            assert msgspec.json.decode(await resp.read())["code"] == "no_agreement"
    # the land registry reads population, but not tax
    async with session(env, OWNERS["land"]) as s, \
            s.get("/v1/datasets/tax/subscribe") as resp:
        assert resp.status == 403
        assert msgspec.json.decode(await resp.read())["code"] == "no_agreement"


async def test_an_agreement_withdrawn_mid_stream_closes_the_subscription(env: Env) -> None:
    async with session(env, OWNERS["land"]) as s, \
            s.ws_connect("/v1/datasets/population/subscribe?name=w") as ws:
        hello = msgspec.json.decode(await ws.receive_str(timeout=10))
        assert hello["type"] == "hello"
        config = env.broker.config
        env.broker.apply(msgspec.structs.replace(config, agreements=[
            a for a in config.agreements if a.subscriber != OWNERS["land"]]))
        await ws.send_str('{"type": "credit", "n": 1}')  # wakes the pump, which re-checks
        msg = await ws.receive(timeout=10)
        assert msg.type == aiohttp.WSMsgType.CLOSE
        assert (ws.close_code, msg.extra) == (4403, "no_agreement")


async def test_bad_subscribe_parameters(env: Env) -> None:
    async with session(env, TAX) as s:
        for query, code in [("name=a%20b", "bad_subscription_name"),
                            ("encoding=xml", "bad_encoding"),
                            ("start=yesterday", "bad_start"),
                            ("start=seq:-1", "bad_start"),
                            ("start=time:2026-01-01T00:00:00", "bad_start")]:
            async with s.get(f"/v1/datasets/population/subscribe?{query}") as resp:
                assert (resp.status, resp.content_type) == (400, PROBLEM), query
                assert msgspec.json.decode(await resp.read())["code"] == code


# -- what: signatures ----------------------------------------------------------------------------

async def test_forged_signature_refuses_the_batch_and_keeps_it(env: Env) -> None:
    batch = sealed(env, POP, people(3))
    sig = bytearray(batch.signature)
    sig[0] ^= 1
    forged = msgspec.structs.replace(batch, signature=bytes(sig))
    async with session(env, POP) as s:
        status, code, _ = await post(s, forged)
    assert (status, code) == (422, "signature_invalid")
    dead = await dead_letters(env, POP)
    assert [(d["index"], d["code"]) for d in dead] == [(i, "signature_invalid") for i in range(3)]
    assert await dead_letters(env, TAX) == []


async def test_an_altered_record_refuses_the_whole_batch(env: Env) -> None:
    batch = sealed(env, POP, people(3))
    rec = batch.records[1]
    data = {**rec.event.data, "full_name": "Nguyễn Văn A"}
    altered = msgspec.structs.replace(batch, records=[
        batch.records[0], msgspec.structs.replace(
            rec, event=msgspec.structs.replace(rec.event, data=data)), batch.records[2]])
    async with session(env, POP) as s:
        status, code, _ = await post(s, altered)
        assert (status, code) == (422, "signature_invalid")
        async with s.get("/healthz") as resp:
            assert msgspec.json.decode(await resp.read())["head"] == -1


async def test_another_nodes_key_under_this_nodes_name(env: Env) -> None:
    batch = sealed(env, POP, people(2), signer=TAX)  # statement says POP, TAX's key signed
    async with session(env, POP) as s:
        status, code, _ = await post(s, batch)
    assert (status, code) == (422, "signature_invalid")
    assert {d["code"] for d in await dead_letters(env, POP)} == {"signature_invalid"}


async def test_statement_node_must_be_the_connection_node(env: Env) -> None:
    batch = sealed(env, TAX, people(2))  # validly signed by TAX, sent over POP's connection
    async with session(env, POP) as s:
        status, code, problem = await post(s, batch)
    assert (status, code) == (422, "signer_mismatch")
    assert TAX in problem["detail"] and POP in problem["detail"]
    assert {d["code"] for d in await dead_letters(env, POP)} == {"signer_mismatch"}


async def test_statement_for_another_dataset(env: Env) -> None:
    batch = sealed(env, POP, people(1))
    async with session(env, POP) as s:
        # POP does not own tax, so the dataset check never gets to the signature
        status, code, _ = await post(s, batch, path="/v1/datasets/tax/records")
    assert (status, code) == (403, "not_owner")


# -- what: limits and malformed bodies --------------------------------------------------------

async def test_oversized_body_is_413(env: Env, tmp_path: Path) -> None:
    config = broker_config(env.pki_dir, tmp_path / "small", max_body_bytes=4096)
    broker, runner, url = await start_broker(config)
    try:
        async with session(env, POP, url=url) as s:
            small = sealed(env, POP, people(1))
            assert len(msgspec.json.encode(small)) < 4096
            async with s.post(RECORDS, data=msgspec.json.encode(small),
                              headers={"Content-Type": "application/json"}) as resp:
                assert resp.status == 200
            big = sealed(env, POP, people(20, seed=2))
            assert len(msgspec.json.encode(big)) > 4096
            status, code, problem = await post(s, big)
            assert (status, code) == (413, "body_too_large")
            assert "4096" in problem["detail"]
            # the connection's next request is still served
            async with s.get("/healthz") as resp:
                assert resp.status == 200
                assert msgspec.json.decode(await resp.read())["head"] == 0
    finally:
        await runner.cleanup()
    assert broker.store is not None


def nested(depth: int) -> Any:
    value: Any = "x"
    for _ in range(depth):
        value = {"a": value}
    return value


async def test_deep_nesting_in_a_signed_record(env: Env) -> None:
    p = people(1)[0]
    deep = {**p, "permanent_address": {**p["permanent_address"], "street": nested(30)}}
    async with session(env, POP) as s:
        status, code, problem = await post(s, sealed(env, POP, [deep]))
    assert status == 422
    assert code in ("too_deep", "schema_violation", "invalid_type")
    assert problem["errors"][0]["index"] == 0


@pytest.mark.parametrize("depth", [100, 10_000, 200_000])
async def test_deep_nesting_in_a_raw_body_is_never_a_500(env: Env, depth: int) -> None:
    batch = msgspec.to_builtins(sealed(env, POP, people(1)))
    marker = "DEEP"
    batch["records"][0]["event"]["data"]["street"] = marker
    text = msgspec.json.encode(batch).decode()
    body = text.replace(f'"{marker}"', "[" * depth + "]" * depth).encode()
    async with session(env, POP) as s:
        status, code, _ = await post_raw(s, body)
        assert 400 <= status < 500
        assert code in ("too_deep", "schema_violation", "signature_invalid", "malformed")
        packed = msgspec.msgpack.encode(batch).replace(
            msgspec.msgpack.encode(marker), b"\x91" * depth + b"\x90")
        status, code, _ = await post_raw(s, packed, "application/msgpack")
        assert 400 <= status < 500
        assert code in ("too_deep", "schema_violation", "signature_invalid", "malformed")


async def test_malformed_json_names_the_position(env: Env) -> None:
    body = msgspec.json.encode(sealed(env, POP, people(1)))[:50]
    async with session(env, POP) as s:
        status, code, problem = await post_raw(s, body)
        assert (status, code) == (400, "malformed")
        assert "JSON" in problem["detail"] and "50" in problem["detail"]
        status, code, problem = await post_raw(s, b'{"statement": ]')
        assert (status, code) == (400, "malformed")
        assert "14" in problem["detail"]  # the byte offset of the stray ]
        status, code, _ = await post_raw(s, b"\xc1", "application/msgpack")
        assert (status, code) == (400, "malformed")
        status, code, _ = await post_raw(s, b'{"statement": {}}')
        assert (status, code) == (400, "schema_violation")
    dead = await dead_letters(env, POP)
    assert [d["index"] for d in dead] == [None] * 4
    assert dead[1]["record"] == '{"statement": ]'


# -- fuzz --------------------------------------------------------------------------------------

def fuzz_bodies(valid_json: bytes, valid_msgpack: bytes, n: int, seed: int) -> list[bytes]:
    """Random bytes, plus truncations and bit flips of valid bodies (which reach deeper)."""
    rnd = random.Random(seed)
    out: list[bytes] = []
    for i in range(n):
        kind = i % 4
        if kind == 0:
            out.append(rnd.randbytes(rnd.randrange(0, 200)))
        else:
            base = bytearray(valid_json if kind != 3 else valid_msgpack)
            if kind == 1:
                out.append(bytes(base[:rnd.randrange(0, len(base))]))
            else:
                for _ in range(rnd.randrange(1, 4)):
                    pos = rnd.randrange(len(base))
                    base[pos] = rnd.randrange(256)
                out.append(bytes(base))
    return out


async def test_fuzz_publish_only_4xx_problems(env: Env) -> None:
    batch = sealed(env, POP, people(2))
    bodies = fuzz_bodies(msgspec.json.encode(batch), msgspec.msgpack.encode(batch), 60, seed=7)
    seen: set[str] = set()
    async with session(env, POP) as s:
        for body in bodies:
            for ctype in ("application/json", "application/msgpack"):
                async with s.post(RECORDS, data=body, headers={"Content-Type": ctype}) as resp:
                    raw = await resp.read()
                    if resp.status == 200:  # a flip inside a salt or id can still be valid
                        continue
                    assert 400 <= resp.status < 500, (resp.status, body, raw)
                    assert resp.content_type == PROBLEM
                    problem = msgspec.json.decode(raw)
                    assert problem["status"] == resp.status
                    seen.add(problem["code"])
        async with s.get("/healthz") as resp:
            assert resp.status == 200
    assert "malformed" in seen


async def test_websockets_per_node_are_bounded_429(env: Env, tmp_path: Path) -> None:
    config = broker_config(env.pki_dir, tmp_path / "few", max_connections_per_node=1)
    broker, runner, url = await start_broker(config)
    tax = OWNERS["tax"]
    try:
        async with session(env, tax, url=url) as s:
            path = "/v1/datasets/population/subscribe?name="
            async with s.ws_connect(path + "one") as first:
                with pytest.raises(aiohttp.WSServerHandshakeError) as e:
                    async with s.ws_connect(path + "two"):
                        pass
                assert e.value.status == 429
                async with s.get(path + "two") as resp:  # the refusal, as problem+json
                    assert resp.status == 429 and resp.content_type == PROBLEM
                    assert (await resp.json(content_type=None))["code"] == \
                        "too_many_connections"
                await first.close()
            # the slot is given back when the socket closes (a poll: the slot is released after
            # the handler returns, and nothing signals it)
            await eventually(lambda: broker.sockets[tax] == 0, what="slot released")
            async with s.ws_connect(path + "two") as again:
                assert not again.closed
    finally:
        await runner.cleanup()


async def test_an_agreement_narrowed_mid_stream_closes_the_subscription(env: Env) -> None:
    """A live socket never keeps projecting with a grant the operator has narrowed."""
    async with session(env, TAX) as s, \
            s.ws_connect("/v1/datasets/population/subscribe?name=n") as ws:
        hello = msgspec.json.decode(await ws.receive_str(timeout=10))
        assert "identity" in hello["granted"]
        config = env.broker.config
        env.broker.apply(msgspec.structs.replace(config, agreements=[
            msgspec.structs.replace(a, groups=["residence"]) if a.subscriber == TAX else a
            for a in config.agreements]))
        await ws.send_str('{"type": "credit", "n": 1}')  # wakes the pump, which re-checks
        msg = await ws.receive(timeout=10)
        assert msg.type == aiohttp.WSMsgType.CLOSE
        assert (ws.close_code, msg.extra) == (4409, "agreement_changed")
    # on reconnect the new grant applies
    async with session(env, TAX) as s, \
            s.ws_connect("/v1/datasets/population/subscribe?name=n") as ws:
        hello = msgspec.json.decode(await ws.receive_str(timeout=10))
        assert hello["granted"] == ["residence"]


async def test_a_salt_for_no_group_refuses_the_batch(env: Env) -> None:
    """Every group's salt and no other: otherwise a full-grant subscriber could not verify."""
    batch = sealed(env, POP, people(3))
    bad_record = msgspec.structs.replace(batch.records[1], salts={**batch.records[1].salts,
                                                                  "zz": b"\x00" * 16})
    bad = msgspec.structs.replace(batch, records=[batch.records[0], bad_record,
                                                  batch.records[2]])
    async with session(env, POP) as s:
        status, code, _ = await post(s, bad)
    assert (status, code) == (422, "disclosure_invalid")


async def test_messagepack_extension_values_are_malformed_not_500(env: Env) -> None:
    batch = msgspec.to_builtins(sealed(env, POP, people(1)), builtin_types=(bytes,))
    batch["records"][0]["event"]["data"]["full_name"] = msgspec.msgpack.Ext(1, b"x")
    async with session(env, POP) as s:
        status, code, _ = await post_raw(s, msgspec.msgpack.encode(batch),
                                         "application/msgpack")
    assert (status, code) == (400, "malformed")
    letters = await dead_letters(env, POP)
    assert [d["code"] for d in letters] == ["malformed"]


async def test_dead_letter_paging_refuses_no_limit(env: Env) -> None:
    async with session(env, POP) as s:
        for _ in range(3):
            await post(s, sealed(env, POP, [{"id": "x"}]))
        async with s.get("/v1/dead-letters?limit=-1") as resp:
            assert resp.status == 200
            assert len(await resp.json(content_type=None)) == 1
