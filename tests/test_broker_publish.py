"""Publishing over raw HTTP and WebSocket: receipts, every rejection code, dead letters, reads.

Real TLS 1.3 with client certificates on 127.0.0.1 and sqlite on disk (the ``env`` fixture);
batches are sealed with the nodes' own keys, bodies are posted byte for byte.
"""

from __future__ import annotations

import copy
from typing import Any

import aiohttp
import msgspec
import pytest
from cryptography.exceptions import InvalidSignature

from exchange import pki
from exchange.core import receipts
from exchange.core.signing import Batch
from exchange.core.wire import PublishReply, SignedReceipt
from exchange.sim.generate import fault
from tests.conftest import OWNERS, PROBLEM, Env, people, sealed, until

POP = OWNERS["population"]
TAX = OWNERS["tax"]
RECORDS = "/v1/datasets/population/records"
_receipt = msgspec.json.Decoder(SignedReceipt)


def session(env: Env, node: str) -> aiohttp.ClientSession:
    return aiohttp.ClientSession(env.url, connector=aiohttp.TCPConnector(ssl=env.ssl(node)))


async def post(s: aiohttp.ClientSession, batch: Batch, *, msgpack: bool = False,
               path: str = RECORDS) -> tuple[int, str, Any]:
    body = msgspec.msgpack.encode(batch) if msgpack else msgspec.json.encode(batch)
    ctype = "application/msgpack" if msgpack else "application/json"
    async with s.post(path, data=body, headers={"Content-Type": ctype}) as resp:
        return resp.status, resp.content_type, msgspec.json.decode(await resp.read())


def check_receipt(env: Env, raw: Any) -> SignedReceipt:
    """Decode a receipt and verify it with the broker's signing key."""
    signed = msgspec.convert(raw, SignedReceipt)
    key = pki.load_broker_identity(env.pki_dir).signing_key.public_key()
    key.verify(signed.signature, receipts.signed_message(signed))
    return signed


async def test_accepted_batch_gets_a_signed_receipt(env: Env) -> None:
    ps = people(5)
    batch = sealed(env, POP, ps)
    async with session(env, POP) as s:
        status, ctype, body = await post(s, batch)
    assert (status, ctype) == (200, "application/json")
    r = check_receipt(env, body).receipt
    assert (r.first_seq, r.last_seq, r.accepted) == (0, 4, 5)
    assert (r.publisher, r.dataset, r.batch_root) == (POP, "population", batch.statement.root)
    assert r.broker == pki.load_broker_identity(env.pki_dir).node_id
    assert not r.duplicates and not r.rejected


async def test_receipt_with_a_forged_byte_does_not_verify(env: Env) -> None:
    async with session(env, POP) as s:
        _, _, body = await post(s, sealed(env, POP, people(1)))
    signed = check_receipt(env, body)
    forged = msgspec.structs.replace(signed, receipt=msgspec.structs.replace(signed.receipt,
                                                                            accepted=2))
    key = pki.load_broker_identity(env.pki_dir).signing_key.public_key()
    with pytest.raises(InvalidSignature):
        key.verify(forged.signature, receipts.signed_message(forged))


@pytest.mark.parametrize("msgpack", [False, True], ids=["json", "msgpack"])
async def test_schema_and_domain_violations_are_listed_and_the_rest_receipted(
        env: Env, msgpack: bool) -> None:
    ps = people(4)
    bad = [ps[0], fault(ps[1], "missing_field"), ps[2], fault(ps[3], "unknown_commune")]
    async with session(env, POP) as s:
        status, ctype, body = await post(s, sealed(env, POP, bad), msgpack=msgpack)
    assert (status, ctype) == (422, PROBLEM)
    assert body["status"] == 422 and body["code"] == "records_rejected"
    assert body["instance"] == RECORDS
    errors = {(e["index"], e["path"], e["code"]) for e in body["errors"]}
    assert errors == {(1, "$.birth_date", "missing_field"),
                      (3, "$.permanent_address.ward_code", "unknown_ward")}
    assert all(e["message"] for e in body["errors"])
    r = check_receipt(env, body["receipt"]).receipt
    assert (r.accepted, r.first_seq, r.last_seq) == (2, 0, 1)
    assert {(v.index, v.code) for v in r.rejected} == {(1, "missing_field"), (3, "unknown_ward")}


async def test_one_kind_of_violation_names_its_code(env: Env) -> None:
    p = people(1)[0]
    async with session(env, POP) as s:
        status, _, body = await post(s, sealed(env, POP, [fault(p, "bad_id")]))
    assert status == 422
    assert body["code"] == "id_century_sex_mismatch"
    assert body["errors"] == [{"code": "id_century_sex_mismatch", "path": "$.id", "index": 0,
                               "message": body["errors"][0]["message"]}]
    r = check_receipt(env, body["receipt"]).receipt
    assert (r.accepted, r.first_seq, r.last_seq) == (0, 0, -1)


async def test_version_conflict_and_stale_version_are_409(env: Env) -> None:
    a, b = people(2)
    moved = copy.deepcopy(a)
    moved["permanent_address"]["street"] = "Số 1 Tràng Tiền"
    async with session(env, POP) as s:
        assert (await post(s, sealed(env, POP, [a, b])))[0] == 200
        assert (await post(s, sealed(env, POP, [b], version=3)))[0] == 200
        # same version, other content
        status, ctype, body = await post(s, sealed(env, POP, [moved]))
        assert (status, ctype, body["code"]) == (409, PROBLEM, "version_conflict")
        assert [(e["index"], e["path"]) for e in body["errors"]] == [(0, "$.version")]
        # lower version than stored
        status, _, body = await post(s, sealed(env, POP, [b], version=2))
        assert (status, body["code"]) == (409, "stale_version")
        check_receipt(env, body["receipt"])
        # both at once still 409; with a schema error as well it becomes 422
        status, _, body = await post(s, sealed(env, POP, [moved, b], version=1))
        assert (status, body["code"]) == (409, "records_rejected")
        status, _, body = await post(
            s, sealed(env, POP, [moved, fault(b, "missing_field")], version=1))
        assert (status, body["code"]) == (422, "records_rejected")
        # a newer version of a key is accepted after all that
        status, _, body = await post(s, sealed(env, POP, [moved], version=2))
        assert status == 200 and check_receipt(env, body).receipt.first_seq == 3


async def test_same_version_twice_in_one_batch(env: Env) -> None:
    a = people(1)[0]
    moved = copy.deepcopy(a)
    moved["permanent_address"]["street"] = "Số 1 Tràng Tiền"
    async with session(env, POP) as s:
        status, _, body = await post(s, sealed(env, POP, [a, a, moved]))
    assert status == 409
    r = check_receipt(env, body["receipt"]).receipt
    assert r.accepted == 1 and [(d.index, d.seq) for d in r.duplicates] == [(1, 0)]
    assert [(v.index, v.code) for v in r.rejected] == [(2, "version_conflict")]


async def test_retry_of_the_same_batch_returns_the_original_seqs(env: Env) -> None:
    ps = people(6)
    first = sealed(env, POP, ps[:3])
    async with session(env, POP) as s:
        _, _, body = await post(s, first)
        assert check_receipt(env, body).receipt.first_seq == 0
        _, _, body = await post(s, sealed(env, POP, ps[3:], seed=b"\x02" * 32))
        assert check_receipt(env, body).receipt.first_seq == 3
        # the identical body again
        status, _, body = await post(s, first)
        assert status == 200
        r = check_receipt(env, body).receipt
        assert r.accepted == 0 and (r.first_seq, r.last_seq) == (0, -1)
        assert [(d.index, d.seq) for d in r.duplicates] == [(0, 0), (1, 1), (2, 2)]
        # the same data sealed again: other ids, salts and signature; same content
        resealed = sealed(env, POP, ps[::-1], seed=b"\x03" * 32)
        assert resealed.statement.root != first.statement.root
        status, _, body = await post(s, resealed, msgpack=True)
        assert status == 200
        r = check_receipt(env, body).receipt
        assert r.accepted == 0
        assert [(d.index, d.seq) for d in r.duplicates] == [(i, 5 - i) for i in range(6)]
        _, _, health = await get(s, "/healthz")
    assert health["head"] == 5


async def test_msgpack_body_is_accepted(env: Env) -> None:
    async with session(env, POP) as s:
        status, ctype, body = await post(s, sealed(env, POP, people(3)), msgpack=True)
    assert (status, ctype) == (200, "application/json")
    assert check_receipt(env, body).receipt.accepted == 3


async def get(s: aiohttp.ClientSession, path: str) -> tuple[int, str, Any]:
    async with s.get(path) as resp:
        return resp.status, resp.content_type, msgspec.json.decode(await resp.read())


async def test_dead_letters_are_kept_for_the_publisher_only(env: Env) -> None:
    ps = people(5)
    moved = copy.deepcopy(ps[0])
    moved["permanent_address"]["street"] = "Số 1 Tràng Tiền"
    async with session(env, POP) as s:
        await post(s, sealed(env, POP, ps[:2], version=2))
        await post(s, sealed(env, POP, [ps[2], fault(ps[3], "future_as_of"),
                                        fault(ps[4], "death_before_birth")]))
        await post(s, sealed(env, POP, [moved], version=2))
        await post(s, sealed(env, POP, [ps[1]], version=1))
        status, ctype, dead = await get(s, "/v1/dead-letters")
        assert (status, ctype) == (200, "application/json")
        _, _, page = await get(s, f"/v1/dead-letters?after={dead[1]['id']}&limit=1")
        status, ctype, bad_query = await get(s, "/v1/dead-letters?after=x")
    assert [(d["index"], d["code"], d["path"]) for d in dead] == [
        (1, "future_date", "$.as_of"),
        (2, "death_before_birth", "$.death_date"),
        (0, "version_conflict", "$.version"),
        (0, "stale_version", "$.version")]
    assert all(d["publisher"] == POP and d["dataset"] == "population" for d in dead)
    # the record is kept as received, so the publisher can see what it sent
    kept = msgspec.json.decode(dead[0]["record"])
    assert kept["event"]["data"]["as_of"] == "2999-01-01"
    assert msgspec.json.decode(dead[2]["record"])["event"]["data"] == moved
    assert [d["id"] for d in page] == [dead[2]["id"]]
    assert (status, ctype, bad_query["code"]) == (400, PROBLEM, "bad_query")
    async with session(env, TAX) as s:
        status, _, other = await get(s, "/v1/dead-letters")
    assert status == 200 and other == []


async def test_publish_websocket_answers_each_batch_in_order(env: Env) -> None:
    ps = people(7)
    batches = [sealed(env, POP, ps[:3], seed=b"\x01" * 32),
               sealed(env, POP, [fault(ps[3], "missing_field"), ps[4]], seed=b"\x02" * 32),
               sealed(env, POP, ps[:3], seed=b"\x01" * 32),
               sealed(env, POP, ps[5:], seed=b"\x03" * 32)]
    async with session(env, POP) as s, \
            s.ws_connect("/v1/datasets/population/publish") as ws:
        # all sent before any reply is read: the replies still come one per batch, in order
        for i, b in enumerate(batches):
            if i % 2:
                await ws.send_bytes(msgspec.msgpack.encode(b))
            else:
                await ws.send_str(msgspec.json.encode(b).decode())
        await ws.send_str('{"statement": ')
        replies: list[PublishReply] = []
        for i in range(len(batches) + 1):
            msg = await ws.receive(timeout=10)
            if i % 2:
                assert msg.type == aiohttp.WSMsgType.BINARY
                replies.append(msgspec.msgpack.decode(msg.data, type=PublishReply))
            else:
                assert msg.type == aiohttp.WSMsgType.TEXT
                replies.append(msgspec.json.decode(msg.data, type=PublishReply))
    receipts = []
    for reply, b in zip(replies, batches, strict=False):
        assert reply.receipt is not None
        check_receipt(env, msgspec.to_builtins(reply.receipt))
        assert reply.receipt.receipt.batch_root == b.statement.root
        receipts.append(reply.receipt.receipt)
    assert [(r.first_seq, r.last_seq) for r in receipts] == [(0, 2), (3, 3), (0, -1), (4, 5)]
    assert replies[0].problem is None and replies[3].problem is None
    assert replies[1].problem is not None and replies[1].problem["code"] == "missing_field"
    assert [(d.index, d.seq) for d in receipts[2].duplicates] == [(0, 0), (1, 1), (2, 2)]
    last = replies[4]
    assert last.receipt is None and last.problem is not None
    assert last.problem["code"] == "malformed"


async def test_publish_websocket_refused_to_a_non_owner(env: Env) -> None:
    async with session(env, TAX) as s:
        with pytest.raises(aiohttp.WSServerHandshakeError) as info:
            await s.ws_connect("/v1/datasets/population/publish")
    assert info.value.status == 403


async def test_reads_health_datasets_schemas(env: Env) -> None:
    async with session(env, POP) as s:
        await post(s, sealed(env, POP, people(3)))
        status, _, health = await get(s, "/healthz")
        assert status == 200 and health["status"] == "ok" and health["head"] == 2
        assert health["broker"] == pki.load_broker_identity(env.pki_dir).node_id
        status, _, ds = await get(s, "/v1/datasets")
        assert status == 200
        by_name = {d["name"]: d for d in ds}
        assert {n: d["owner"] for n, d in by_name.items()} == OWNERS
        assert by_name["population"]["head"] == 2 and by_name["tax"]["head"] == -1
        assert "residence" in by_name["population"]["groups"]
        status, _, schemas = await get(s, "/v1/schemas")
        assert status == 200 and {x["dataset"] for x in schemas} == set(OWNERS)
        assert all(1 in x["versions"] for x in schemas)
        async with s.get("/v1/schemas/population/1") as resp:
            assert resp.status == 200
            assert resp.content_type == "application/schema+json"
            schema = msgspec.json.decode(await resp.read())
        assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
        assert "$defs" in schema
        status, ctype, unknown = await get(s, "/v1/schemas/population/x")
        assert (status, ctype, unknown["code"]) == (404, PROBLEM, "unknown_schema_version")
        status, ctype, body = await get(s, "/v1/no/such/route")
        assert (status, ctype, body["code"]) == (404, PROBLEM, "not_found")
        assert body["status"] == 404 and body["instance"] == "/v1/no/such/route"
        async with s.delete("/healthz") as resp:
            assert (resp.status, resp.content_type) == (405, PROBLEM)
            assert msgspec.json.decode(await resp.read())["code"] == "method_not_allowed"


async def test_subscriptions_list_their_lag(env: Env) -> None:
    async with session(env, POP) as s:
        await post(s, sealed(env, POP, people(4)))
    async with session(env, TAX) as s:
        async with s.ws_connect("/v1/datasets/population/subscribe?name=lagging") as ws:
            hello = msgspec.json.decode(await ws.receive_str(timeout=10))
            assert hello["type"] == "hello" and hello["acked"] == -1
            status, _, subs = await get(s, "/v1/subscriptions")
            assert status == 200
            lag_s = subs[0].pop("lag_s")
            assert 0 <= lag_s < 60  # the oldest unacked record's age, on the broker's clock
            assert subs == [{"node": TAX, "dataset": "population", "name": "lagging",
                             "acked": -1, "head": 3, "lag": 4, "connected": True,
                             "credits": 0, "in_flight": 0, "redeliveries": 0}]
            await ws.send_str('{"type": "credit", "n": 10}')
            frame = msgspec.json.decode(await ws.receive_str(timeout=10))
            assert [r["seq"] for r in frame["records"]] == [0, 1, 2, 3]
            # while connected: the credit left and the records in flight, unacked
            _, _, subs = await get(s, "/v1/subscriptions")
            assert (subs[0]["credits"], subs[0]["in_flight"]) == (6, 4)
            await ws.send_str('{"type": "ack", "seq": 3}')

            async def caught_up() -> bool:
                return bool((await get(s, "/v1/subscriptions"))[2][0]["lag"] == 0)

            await until(caught_up, env.broker.subscriptions.next_change, what="lag 0")
        status, _, subs = await get(s, "/v1/subscriptions")
    assert subs[0]["acked"] == 3 and subs[0]["lag"] == 0 and not subs[0]["connected"]
    assert subs[0]["lag_s"] == 0.0 and subs[0]["credits"] is None  # not connected: no state
    async with session(env, POP) as s:
        _, _, own = await get(s, "/v1/subscriptions")
    assert own == []  # another node's subscriptions are not listed
