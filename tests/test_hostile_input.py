"""Input the gate must refuse or report, each found by trying to break a running broker from
outside: attributes dropped or invented, media types, sizes, invisible text, impossible times,
numbers out of range, HTTP semantics. Real TLS on 127.0.0.1; none of it is ever a 5xx, and
nothing of it is stored."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from typing import Any

import msgspec
import pytest

from exchange.core import datasets
from exchange.core.seal import seal
from exchange.pki import load_node_identity
from tests.conftest import OWNERS, PROBLEM, SEALED_AT, Env, people, sealed
from tests.test_broker_refusals import RECORDS, post, post_raw, session

POP = OWNERS["population"]


def _json(env: Env, records: list[dict[str, Any]]) -> bytes:
    return msgspec.json.encode(sealed(env, POP, records))


async def test_attributes_are_never_dropped_or_invented(env: Env) -> None:
    body = _json(env, people(1, seed=81))
    cases = {
        # an extension attribute the exchange does not carry: refused, not dropped
        "extension": body.replace(b'"specversion":', b'"traceparent":"00-ab-cd-01",'
                                                    b'"specversion":', 1),
        # one byte flipped in an attribute name in transit: the default is not filled in
        "flipped": body.replace(b'"datacontenttype"', b'"datacontenttypf"', 1),
    }
    async with session(env) as s:
        for name, raw in cases.items():
            status, code, problem = await post_raw(s, raw)
            assert (status, code) == (400, "unknown_attribute"), name
            assert "$.records[0].event" in problem["detail"], name
        # a missing attribute is not filled in either
        missing = body.replace(b'"specversion":"1.0",', b"", 1)
        status, code, problem = await post_raw(s, missing)
        assert status in (400, 422) and "specversion" in problem["detail"]
        other_type = body.replace(b'"datacontenttype":"application/json"',
                                  b'"datacontenttype":"' + b"x" * 200_000 + b'"', 1)
        status, code, _ = await post_raw(s, other_type)
        assert status in (400, 422) and code == "schema_violation"
    assert await env.broker.store.head() == -1


async def test_unsupported_media_types_are_415(env: Env) -> None:
    body = _json(env, people(1, seed=82))
    async with session(env) as s:
        for ctype in ("text/plain", "application/x-www-form-urlencoded", "multipart/form-data"):
            status, code, _ = await post_raw(s, body, ctype=ctype)
            assert (status, code) == (415, "unsupported_media_type"), ctype
        async with s.post(RECORDS, data=body, headers={"Content-Type": ""}) as resp:
            assert resp.status == 415 and resp.content_type == PROBLEM
    assert await env.broker.store.head() == -1


async def test_a_declared_huge_body_is_refused_before_it_is_read(env: Env) -> None:
    host, port = env.url.removeprefix("https://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port), ssl=env.ssl(POP),
                                                   server_hostname=host)
    writer.write(f"POST {RECORDS} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json"
                 "\r\nContent-Length: 1000000000000\r\n\r\n".encode())
    await writer.drain()
    # answered on the declaration: no wait for a body that never comes
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    assert head.startswith(b"HTTP/1.1 413")
    writer.close()


async def test_envelope_size_counts_against_the_record_limit(env: Env) -> None:
    big = {**people(1, seed=83)[0], "notes": "a" * 70_000}
    async with session(env) as s:
        status, _, problem = await post(s, sealed(env, POP, [big]))
    assert status == 422
    assert [(r["index"], r["code"]) for r in problem["receipt"]["receipt"]["rejected"]] == [
        (0, "too_large")]
    assert await env.broker.store.head() == -1


async def test_invisible_names_and_impossible_times(env: Env) -> None:
    person = people(1, seed=84)[0]
    key = load_node_identity(env.pki_dir, POP).signing_key
    spec = datasets.get("population")
    async with session(env) as s:
        # a right-to-left override in the subject: refused with its path
        rlo = seal(key, POP, spec, [("0010\u202e" + person["id"][4:], 1, person)],
                   b"\x02" * 32, time=SEALED_AT)
        status, _, problem = await post(s, rlo)
        assert status == 400 and "event.subject" in problem["detail"]
        # a name made only of invisible characters, a NUL in a name
        for name in ("\u200b\u200b\u200b", "Nguyễn\x00Văn"):
            status, _, problem = await post(s, sealed(env, POP, [{**person, "full_name": name}]))
            rejected = problem["receipt"]["receipt"]["rejected"]
            assert status == 422 and rejected[0]["path"] == "$.full_name", name
        # a time that matches the pattern but is no instant
        for when in ("2025-13-45T25:61:61Z", "0000-00-00T00:00:00Z"):
            bad = seal(key, POP, spec, [(person["id"], 1, person)], b"\x03" * 32, time=when)
            status, _, problem = await post(s, bad)
            assert status == 422, when
            assert problem["receipt"]["receipt"]["rejected"][0]["code"] == "bad_time"
    assert await env.broker.store.head() == -1


@pytest.mark.parametrize("query", [
    "/v1/dead-letters?after=1e20", "/v1/dead-letters?after=-1e20",
    "/v1/dead-letters?after=100000000000000000000", "/v1/dead-letters?after=-1",
    "/v1/log/entries?start=100000000000000000000&end=100000000000000000001",
    "/v1/log/proof/inclusion?seq=0&size=100000000000000000000",
    "/v1/log/proof/consistency?from=0&to=1",
])
async def test_numbers_out_of_range_are_400_never_500(env: Env, query: str) -> None:
    async with session(env) as s, s.get(query) as resp:
        assert resp.status in (400, 404) and resp.content_type == PROBLEM, query
        assert resp.headers["Problem-Code"] in ("bad_query", "bad_range", "beyond_log")


async def test_a_subscription_start_out_of_range_is_400(env: Env) -> None:
    import aiohttp

    async with session(env, OWNERS["tax"]) as s:
        with pytest.raises(aiohttp.WSServerHandshakeError) as err:
            await s.ws_connect("/v1/datasets/population/subscribe?name=x&start=seq:"
                               "100000000000000000000")
    assert err.value.status == 400
    assert err.value.headers is not None and err.value.headers["Problem-Code"] == "bad_start"


async def test_log_entries_beyond_the_log_say_so_like_the_proofs(env: Env) -> None:
    async with session(env) as s:
        async with s.get("/v1/log/entries?start=5&end=6") as resp:
            assert (resp.status, resp.headers["Problem-Code"]) == (404, "beyond_log")
        async with s.get("/v1/log/proof/inclusion?seq=5&size=6") as resp:
            assert (resp.status, resp.headers["Problem-Code"]) == (404, "beyond_log")


async def test_405_says_which_methods_are_allowed(env: Env) -> None:
    async with session(env) as s, s.put("/v1/datasets") as resp:
        assert resp.status == 405 and resp.content_type == PROBLEM
        assert "GET" in resp.headers["Allow"]
    async with session(env) as s, s.delete(RECORDS) as resp:
        assert resp.status == 405 and "POST" in resp.headers["Allow"]


async def test_dead_letters_are_bounded_per_publisher_and_say_so(tmp_path: Any) -> None:
    """A publisher cannot fill the broker's disk with refusals: past its quota the refused
    records are counted, not kept, and the reply says how many were not kept."""
    from tests.conftest import broker_config, make_pki, start_broker

    pki_dir = make_pki(tmp_path)
    config = broker_config(pki_dir, tmp_path / "data", max_dead_letters_per_publisher=3,
                           max_dead_letter_record_bytes=200)
    broker, runner, url = await start_broker(config)
    env = Env(tmp_path, pki_dir, tmp_path / "data", url, broker, runner)
    try:
        bad = [{**p, "id": "12345"} for p in people(5, seed=85)]  # five refused records
        async with session(env) as s:
            status, _, problem = await post(s, sealed(env, POP, bad))
            assert status == 422 and problem["dead_letters_not_kept"] == 2
            assert "not kept" in problem["detail"]
            status, _, problem = await post(s, sealed(env, POP, bad[:2], seed=b"\x09" * 32))
            assert problem["dead_letters_not_kept"] == 2
            # a batch refused whole, once the store is full: said in its reply too
            forged = msgspec.json.encode(sealed(env, POP, people(1, seed=86)))
            forged = forged.replace(b'"signature":"', b'"signature":"AAAA', 1)
            status, _, problem = await post_raw(s, forged)
            assert status >= 400 and "not kept" in problem["detail"]
            async with s.get("/v1/dead-letters?limit=100") as resp:
                kept = msgspec.json.decode(await resp.read())
        assert len(kept) == 3
        assert all(len(d["record"].encode()) <= 200 and "cut to" in d["message"] for d in kept)
        # every refusal still counts where quality is measured
        counters = broker.quality.counters[("population", POP)] if broker.quality else None
        assert counters is not None and sum(counters.rejected.values()) >= 7
    finally:
        await runner.cleanup()


async def test_a_body_sent_too_slowly_is_cut_off(tmp_path: Any) -> None:
    """A body trickling in a byte at a time holds no connection past the body deadline (the
    broker's clock: moved here, not waited for)."""
    from exchange.clock import FakeClock
    from tests.conftest import broker_config, make_pki, start_broker

    clock = FakeClock()
    pki_dir = make_pki(tmp_path)
    broker, runner, url = await start_broker(broker_config(pki_dir, tmp_path / "data"),
                                             clock=clock)
    env = Env(tmp_path, pki_dir, tmp_path / "data", url, broker, runner)
    try:
        host, port = url.removeprefix("https://").split(":")
        reader, writer = await asyncio.open_connection(host, int(port), ssl=env.ssl(POP),
                                                       server_hostname=host)
        idle = clock.sleepers
        writer.write(f"POST {RECORDS} HTTP/1.1\r\nHost: {host}\r\nContent-Type: "
                     "application/json\r\nContent-Length: 1000\r\n\r\n{\"statement\"".encode())
        await writer.drain()
        await clock.sleeping(idle + 1)  # the broker now waits for the rest, on its deadline
        await clock.advance(broker.limits.body_timeout_s + 1)
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        assert head.startswith(b"HTTP/1.1 408") and b"Problem-Code: body_too_slow" in head
        assert b"Connection: close" in head  # nothing more is read from this connection
        writer.close()
        with contextlib.suppress(ConnectionError, ssl.SSLError):
            await writer.wait_closed()
    finally:
        await runner.cleanup()


async def test_requests_in_progress_per_node_are_bounded(tmp_path: Any) -> None:
    from tests.conftest import broker_config, make_pki, start_broker

    pki_dir = make_pki(tmp_path)
    config = broker_config(pki_dir, tmp_path / "data", max_requests_per_node=2)
    broker, runner, url = await start_broker(config)
    env = Env(tmp_path, pki_dir, tmp_path / "data", url, broker, runner)
    host, port = url.removeprefix("https://").split(":")
    held = []
    try:
        for _ in range(2):  # two bodies that never finish hold the node's two slots
            _, writer = await asyncio.open_connection(host, int(port), ssl=env.ssl(POP),
                                                           server_hostname=host)
            writer.write(f"POST {RECORDS} HTTP/1.1\r\nHost: {host}\r\nContent-Type: "
                         "application/json\r\nContent-Length: 100\r\n\r\n{".encode())
            await writer.drain()
            held.append(writer)

        async def full() -> bool:
            return broker.requests[POP] == 2

        from tests.conftest import eventually
        # the broker counts a request once it has read its headers; no event marks that
        await eventually(full, what="two requests in progress")
        async with session(env) as s, s.get("/v1/datasets") as resp:
            assert resp.status == 429 and resp.headers["Problem-Code"] == "too_many_requests"
        async with session(env, OWNERS["tax"]) as s, s.get("/v1/datasets") as resp:
            assert resp.status == 200  # another node is not held up
    finally:
        for w in held:
            w.close()
        await runner.cleanup()


async def test_every_refusal_is_one_structured_log_line(tmp_path: Any) -> None:
    """A refusal leaves one JSON line in the broker's log naming the peer, the identity and the
    code (a real broker process, at its default level)."""
    import json

    import aiohttp

    from exchange import pki
    from exchange.sim.process import running_broker
    from exchange.sim.topology import broker_toml
    from tests.conftest import make_pki

    pki_dir = make_pki(tmp_path)
    config = tmp_path / "exchange.toml"
    config.write_text(broker_toml(str(pki_dir), str(tmp_path / "data"), "127.0.0.1:0"))
    log = tmp_path / "broker.log"
    tax = pki.client_ssl_context(pki_dir, OWNERS["tax"])
    async with running_broker(config, log) as broker, aiohttp.ClientSession(
            broker.url, connector=aiohttp.TCPConnector(ssl=tax)) as s:
        async with s.post(RECORDS, data=b"{}", headers={
                "Content-Type": "application/json"}) as resp:
            assert resp.status == 403
        ws = await s.ws_connect("/v1/datasets/population/subscribe?name=logged")
        await ws.receive()  # hello
        await ws.send_str("not a frame")
        await ws.receive()
        await ws.close()
        # handshakes refused: no client certificate, and one from a foreign CA
        host, port = broker.url.removeprefix("https://").split(":")
        ca_only = ssl.create_default_context(cafile=str(pki_dir / "ca.crt"))
        foreign_dir = tmp_path / "foreign"
        pki.init(foreign_dir)
        pki.enroll(foreign_dir, OWNERS["tax"])
        foreign = pki.client_ssl_context(foreign_dir, OWNERS["tax"])
        foreign.load_verify_locations(cafile=str(pki_dir / "ca.crt"))
        for ctx in (ca_only, foreign):
            with contextlib.suppress(OSError, ssl.SSLError, asyncio.IncompleteReadError):
                reader, writer = await asyncio.open_connection(host, int(port), ssl=ctx,
                                                               server_hostname=host)
                writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
                await reader.readuntil(b"\r\n")
    lines = [json.loads(line) for line in log.read_text().splitlines()
             if line.startswith("{")]
    refused = [x for x in lines if x.get("event") == "refused"]
    handshakes = [x for x in refused if x.get("status") == "tls_handshake"]
    assert {x["code"] for x in handshakes} >= {"no_certificate", "bad_certificate"}
    assert all(x["peer"] == "127.0.0.1" for x in handshakes)
    http = next(x for x in refused if x.get("status") == 403)
    assert http["peer"] == "127.0.0.1" and http["node"] == OWNERS["tax"]
    assert http["code"] == "not_owner"
    frame = next(x for x in refused if x.get("status") == 4400)
    assert frame["code"] == "bad_request" and frame["subscription"] == "logged"


def test_a_librarys_traceback_is_a_field_of_one_json_line(capfd: Any) -> None:
    import json
    import logging

    from exchange import logger

    logger.configure("warning", json=True)
    capfd.readouterr()
    try:
        raise ZeroDivisionError("boom")
    except ZeroDivisionError:
        logging.getLogger("aiohttp.server").exception("Error handling request")
    (line,) = capfd.readouterr().err.splitlines()  # one line, not a multi-line dump
    record = json.loads(line)
    assert record["logger"] == "aiohttp.server" and record["level"] == "error"
    assert "ZeroDivisionError: boom" in record["exception"]


async def test_duplicate_json_keys_cannot_make_two_meanings(env: Env) -> None:
    """Decided, not refused: a duplicated key in a published record is read last-wins, and the
    signature is checked over that reading; what is stored, served and kept as evidence is the
    broker's re-encoding of it, never the published bytes. A publisher whose parser read the
    first value instead signed another digest, and its batch fails verification."""
    person = people(1, seed=99)[0]
    async with session(env) as s:
        # the publisher signed the record with full_name X; the wire repeats the key, first
        # with another value: read last-wins, it is still X, and it verifies
        batch = msgspec.json.encode(sealed(env, POP, [person]))
        name = msgspec.json.encode(person["full_name"])
        twice = batch.replace(b'"full_name":' + name,
                              b'"full_name":"Someone Else","full_name":' + name, 1)
        assert twice != batch
        async with s.post(RECORDS, data=twice,
                          headers={"Content-Type": "application/json"}) as resp:
            assert resp.status == 200
        # the other way round (the signed value first) would be read as the other value,
        # which the signature does not cover: refused whole
        other = people(1, seed=100)[0]
        batch = msgspec.json.encode(sealed(env, POP, [other], seed=b"\x0a" * 32))
        name = msgspec.json.encode(other["full_name"])
        swapped = batch.replace(b'"full_name":' + name,
                                b'"full_name":' + name + b',"full_name":"Someone Else"', 1)
        status, code, _ = await post_raw(s, swapped)
        assert status >= 400 and code == "signature_invalid"
    stored = await env.broker.store.read("population", -1, 10)
    assert [r.key for r in stored] == [person["id"]]
    assert b"Someone Else" not in stored[0].body


async def test_headers_sent_slowly_hold_the_connection_no_longer_than_the_idle_limit(
        tmp_path: Any, capsys: Any) -> None:
    """A connection that trickles its request line and headers a byte at a time is closed when
    the idle limit (``limits.idle_timeout_s``) runs out from its start: partial data does not
    extend it. The broker as ``exchange broker serve`` runs it."""
    import json
    from pathlib import Path

    from exchange import pki
    from exchange.broker.app import load_config
    from exchange.broker.server import serve
    from exchange.sim.topology import broker_toml
    from tests.conftest import make_pki

    pki_dir = make_pki(Path(tmp_path))
    config_file = Path(tmp_path) / "exchange.toml"
    config_file.write_text(broker_toml(str(pki_dir), str(Path(tmp_path) / "data"),
                                       "127.0.0.1:0") + "\n[limits]\nidle_timeout_s = 1.0\n")
    ready, stop = asyncio.Event(), asyncio.Event()
    task = asyncio.create_task(serve(load_config(config_file), ready=ready, stop=stop))
    await asyncio.wait_for(ready.wait(), 30)
    port = json.loads(capsys.readouterr().out.splitlines()[-1])["port"]
    try:
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", port, ssl=pki.client_ssl_context(pki_dir, POP),
            server_hostname="127.0.0.1")
        closed = asyncio.ensure_future(reader.read())  # EOF: the broker closed it

        async def trickle() -> None:
            for byte in b"GET /v1/datasets HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: " * 10:
                writer.write(bytes([byte]))
                await asyncio.sleep(0.05)  # the attack itself: a byte every 50 ms

        sender = asyncio.ensure_future(trickle())
        done, _ = await asyncio.wait({closed, sender}, timeout=10,
                                     return_when=asyncio.FIRST_COMPLETED)
        assert closed in done, "the slow connection was not closed"
        assert not sender.done()  # closed while bytes were still coming
        sender.cancel()
        with contextlib.suppress(asyncio.CancelledError, ConnectionError, ssl.SSLError):
            await sender
        writer.close()
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)
