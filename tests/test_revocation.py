"""Revocation reaches live connections: after `pki revoke` and a reload, every open publish and
subscribe stream of that identity is closed at once, a kept-alive connection is gone, and no
new connection (fresh or resumed) gets in. Real TLS on 127.0.0.1."""

from __future__ import annotations

import asyncio
import ssl

import aiohttp
import msgspec
import pytest
from aiohttp import WSMsgType

from exchange import pki
from tests.conftest import OWNERS, Env, people, sealed

POP, TAX = OWNERS["population"], OWNERS["tax"]


async def test_revocation_closes_open_streams_within_a_second(env: Env) -> None:
    pub_session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=env.ssl(POP)))
    sub_session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=env.ssl(TAX)))
    try:
        pub = await pub_session.ws_connect(f"{env.url}/v1/datasets/population/publish")
        await pub.send_bytes(msgspec.msgpack.encode(sealed(env, POP, people(2, seed=71))))
        reply = msgspec.msgpack.decode((await pub.receive()).data)
        assert reply["receipt"]["receipt"]["accepted"] == 2
        sub = await sub_session.ws_connect(
            f"{env.url}/v1/datasets/population/subscribe?name=live&start=earliest")
        hello = await sub.receive_json()
        assert hello["type"] == "hello"
        await sub.send_json({"type": "credit", "n": 100})
        assert (await sub.receive_json())["type"] == "records"

        head = await env.broker.store.head()
        pki.revoke(env.pki_dir, POP)
        pki.revoke(env.pki_dir, TAX)
        env.broker.reload()
        # both streams end now, without anyone sending anything
        for ws in (pub, sub):
            msg = await asyncio.wait_for(ws.receive(), 1.0)
            assert msg.type in (WSMsgType.CLOSE, WSMsgType.CLOSED, WSMsgType.CLOSING,
                                WSMsgType.ERROR)
        with pytest.raises((ConnectionError, RuntimeError, aiohttp.ClientError)):
            await pub.send_bytes(msgspec.msgpack.encode(sealed(env, POP, people(1, seed=72))))
            await asyncio.wait_for(pub.receive(), 1.0)
        assert await env.broker.store.head() == head  # nothing more was accepted
        # and the identity does not get back in, on a new connection
        with pytest.raises(aiohttp.ClientError):
            async with pub_session.get(f"{env.url}/v1/datasets") as resp:
                await resp.read()
    finally:
        await pub_session.close()
        await sub_session.close()


async def test_a_kept_alive_connection_is_closed_and_no_session_resumes(env: Env) -> None:
    ctx = env.ssl(TAX)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=ctx)) as s:
        async with s.get(f"{env.url}/v1/datasets") as resp:
            assert resp.status == 200
        # the broker issues no session tickets: nothing a client could resume later
        host, port = env.url.removeprefix("https://").split(":")
        reader, writer = await asyncio.open_connection(host, int(port), ssl=ctx,
                                                       server_hostname=host)
        tls = writer.get_extra_info("ssl_object")
        assert isinstance(tls, ssl.SSLObject)
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        await writer.drain()
        assert (await reader.read()).startswith(b"HTTP/1.1 200")
        assert tls.session is None or not tls.session.has_ticket
        writer.close()

        pki.revoke(env.pki_dir, TAX)
        env.broker.reload()
        with pytest.raises(aiohttp.ClientError):
            async with s.get(f"{env.url}/v1/datasets") as resp:
                await resp.read()
