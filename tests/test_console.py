"""The operator console's server and view model, through a real console on 127.0.0.1 in front
of a real broker over TLS: the one-time token, the session cookie and the session secret,
tickets for /events, Origin checks, loopback only, the actions, the consistency check and its
stored baseline, and that no record content ever leaves it."""

from __future__ import annotations

import asyncio
import logging
import math
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import msgspec
import pytest
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from yarl import URL

from exchange.cli import main as cli_main
from exchange.clock import FakeClock
from exchange.console import Console, parse_listen, serve
from exchange.console.model import (
    CHECKPOINTS_SENT,
    WARN_DAYS,
    CheckpointSeen,
    Model,
    Sample,
    parse_metrics,
)
from exchange.console.server import (
    BASELINE_FILE,
    COOKIE,
    SECURITY_HEADERS,
    SESSION_HEADER,
    TICKET_TTL_S,
    create_app,
    parse_origin,
)
from exchange.core import tlog
from exchange.core.errors import InputError, IntegrityError
from exchange.node import Node
from tests.conftest import OUTSIDER, OWNERS, Env, people, until

POPULATION = OWNERS["population"]
#: a name no generator makes: if it shows up in anything the console serves, record data leaked
MARKER = "Zyxqvor Wantabe Kettleby"


@dataclass
class Running:
    console: Console
    url: str  # the one-time URL
    base: str
    runner: web.AppRunner

    async def snapshot_where(self, check: Any, what: str, within: float = 15.0
                             ) -> dict[str, Any]:
        """The first snapshot (from now on) for which ``check(snapshot)`` holds."""
        await until(lambda: self.console.snapshot is not None and check(self.console.snapshot),
                    self.console.next_update, within=within, what=what)
        assert self.console.snapshot is not None
        return self.console.snapshot


@pytest.fixture
async def running(env: Env) -> AsyncIterator[Running]:
    console = Console(env.operator_config(), interval_s=0.05, step_s=0.0)
    runner, url = await serve(console)
    try:
        yield Running(console, url, url.split("/?")[0], runner)
    finally:
        await runner.cleanup()


def client() -> aiohttp.ClientSession:
    """A browser-like session: it keeps cookies set by an IP-address host (aiohttp's jar
    refuses those unless told; browsers keep them)."""
    return aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True))


async def login(session: aiohttp.ClientSession, running: Running | str) -> dict[str, str]:
    """Redeem the token (of a running console, or in a one-time URL) as the page does;
    return the headers that carry the session's secret (the redirect's fragment gave it)."""
    url = running if isinstance(running, str) else running.url
    base = url.split("/?")[0]
    async with session.get(url, allow_redirects=False) as resp:
        assert resp.status == 303
        location = resp.headers["Location"]
    assert location.startswith("/#s=")
    secret = location.removeprefix("/#s=")
    assert len(secret) >= 32
    async with session.get(base + "/") as resp:
        assert resp.status == 200
        assert secret not in await resp.text()  # the page itself carries no secret
    return {SESSION_HEADER: secret}


async def first_event(session: aiohttp.ClientSession, base: str, headers: dict[str, str]
                      ) -> bytes:
    """Open /events as the page does (a ticket first) and read its first event."""
    async with session.post(base + "/api/ticket", headers=headers) as resp:
        assert resp.status == 200
        ticket = (await resp.json())["ticket"]
    async with session.get(base + "/events", params={"ticket": ticket}) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("text/event-stream")
        event = b""
        while not event.endswith(b"\n\n"):
            event += await resp.content.readline()
    return event


# -- access ------------------------------------------------------------------------------------


async def test_token_works_once_and_sets_a_strict_httponly_cookie(running: Running) -> None:
    async with client() as s:
        async with s.get(running.url, allow_redirects=False) as resp:
            assert resp.status == 303
            cookie = resp.headers["Set-Cookie"]
        assert cookie.startswith(f"{COOKIE}=")
        attrs = {a.strip().split("=")[0].lower(): a for a in cookie.split(";")[1:]}
        assert "httponly" in attrs
        assert attrs["samesite"].strip() == "SameSite=Strict"
        assert attrs["path"].strip() == "Path=/"
        async with s.get(running.base + "/") as resp:
            assert resp.status == 200
            assert 'id="overview"' in await resp.text()
    # the token is spent: a second browser presenting it is refused
    async with client() as other, other.get(running.url, allow_redirects=False) as resp:
        assert resp.status == 403
        assert "<html" not in (await resp.text()).lower()
        assert COOKIE not in resp.headers.get("Set-Cookie", "")


async def test_requests_without_the_session_are_refused(running: Running) -> None:
    routes = ["/", "/static/console.js", "/static/console.css", "/api/snapshot", "/events"]
    async with client() as s:
        async with s.get(running.base + "/?token=" + "x" * 43, allow_redirects=False) as resp:
            assert resp.status == 403  # a wrong token
            body = await resp.text()
            assert "console" not in body.lower() and "<" not in body
        for route in routes:
            async with s.get(running.base + route) as resp:
                assert resp.status == 403, route
                assert "<html" not in (await resp.text()).lower()
        s.cookie_jar.update_cookies({COOKIE: "guessed-session-id"})
        for route in routes:
            async with s.get(running.base + route) as resp:
                assert resp.status == 403, route
        async with s.post(running.base + "/api/verify") as resp:
            assert resp.status == 403
    # the right token still works after wrong ones
    async with client() as s:
        headers = await login(s, running)
        for route in routes[:-1]:
            async with s.get(running.base + route, headers=headers) as resp:
                assert resp.status == 200, route


async def test_the_cookie_alone_is_refused(running: Running) -> None:
    """Browsers send 127.0.0.1's cookies to every port: another local service the operator
    visits gets ``exchange_console``. With it alone it can read the page, which holds no
    secret, and nothing else."""
    async with client() as s:
        headers = await login(s, running)
        cookie = s.cookie_jar.filter_cookies(URL(running.base))[COOKIE].value
        await running.snapshot_where(lambda _: True, "a first snapshot")
    async with aiohttp.ClientSession() as thief:
        stolen = {"Cookie": f"{COOKIE}={cookie}", "Origin": running.base}
        async with thief.get(running.base + "/", headers=stolen) as resp:
            assert resp.status == 200
            page = await resp.text()
        assert headers[SESSION_HEADER] not in page and "csrf" not in page.lower()
        for method, route in [("GET", "/api/snapshot"), ("POST", "/api/verify"),
                              ("POST", "/api/ticket"), ("GET", "/events"),
                              ("POST", "/api/agreements/agr-0000000000000000/revoke")]:
            for extra in ({}, {SESSION_HEADER: "a-guess"}, {SESSION_HEADER: cookie}):
                async with thief.request(method, running.base + route,
                                         headers={**stolen, **extra}) as resp:
                    assert resp.status == 403, (method, route, extra)
        # the secret without the cookie is no better
        async with thief.get(running.base + "/api/snapshot", headers=headers) as resp:
            assert resp.status == 403
        # both: the page's own requests
        both = {**stolen, **headers}
        async with thief.get(running.base + "/api/snapshot", headers=both) as resp:
            assert resp.status == 200
        # a ticket works once, for /events only, and never as the session header
        async with thief.post(running.base + "/api/ticket", headers=both) as resp:
            ticket = (await resp.json())["ticket"]
        async with thief.get(running.base + "/api/snapshot",
                             headers={**stolen, SESSION_HEADER: ticket}) as resp:
            assert resp.status == 403
        async with thief.get(running.base + "/events", params={"ticket": ticket},
                             headers=stolen) as resp:
            assert resp.status == 200
            assert (await resp.content.readline()) == b"event: snapshot\n"
        async with thief.get(running.base + "/events", params={"ticket": ticket},
                             headers=stolen) as resp:
            assert resp.status == 403  # spent


async def test_events_tickets_expire_and_belong_to_their_session(env: Env) -> None:
    clock = FakeClock()
    console = Console(env.operator_config(), clock=clock)
    console.sessions.update({"mine": "secret-1", "other": "secret-2"})
    late = console.ticket("mine")
    await clock.advance(TICKET_TTL_S + 1)
    assert not console.spend_ticket("mine", late)
    theirs = console.ticket("other")
    assert not console.spend_ticket("mine", theirs)
    assert not console.spend_ticket("other", theirs)  # spent by the wrong session's try
    good = console.ticket("mine")
    assert console.spend_ticket("mine", good) and not console.spend_ticket("mine", good)


async def test_head_does_not_spend_the_token(running: Running) -> None:
    """Link previews and prefetchers send HEAD: only the operator's GET redeems."""
    async with client() as s:
        async with s.head(running.url, allow_redirects=False) as resp:
            assert resp.status == 405
            assert COOKIE not in resp.headers.get("Set-Cookie", "")
        await login(s, running)


async def test_snapshot_before_the_first_poll_is_a_503_problem(env: Env) -> None:
    from aiohttp.test_utils import TestServer

    console = Console(env.operator_config(), token="t" * 43, snapshot_wait_s=0.0)
    async with TestServer(create_app(console, poll=False)) as server, client() as s:
        base = str(server.make_url("")).rstrip("/")
        headers = await login(s, base + "/?token=" + "t" * 43)
        async with s.get(base + "/api/snapshot", headers=headers) as resp:
            assert resp.status == 503
            assert resp.content_type == "application/problem+json"
            assert resp.headers["Retry-After"] == "1"
            problem = await resp.json()
        assert problem["status"] == 503 and problem["code"] == "unavailable"
        assert "first poll" in problem["detail"]


async def test_security_headers_on_pages_and_refusals(running: Running) -> None:
    async with client() as s:
        async with s.get(running.base + "/api/snapshot") as resp:
            assert resp.status == 403
            for name, value in SECURITY_HEADERS.items():
                assert resp.headers[name] == value
        await login(s, running)
        async with s.get(running.base + "/") as resp:
            csp = resp.headers["Content-Security-Policy"]
            page = await resp.text()
        assert "default-src 'self'" in csp and "frame-ancestors 'none'" in csp
        assert "'unsafe-inline'" not in csp
        assert resp.headers["X-Content-Type-Options"] == "nosniff"
        assert resp.headers["Referrer-Policy"] == "no-referrer"
        assert "<script>" not in page and "<style" not in page  # nothing inline
        assert "http://" not in page.replace('http://www.w3.org', "") and "https://" not in page
        async with s.get(running.base + "/static/console.js") as resp:
            assert resp.content_type == "text/javascript"
            js = await resp.text()
        assert "https://" not in js  # nothing fetched from elsewhere
        async with s.get(running.base + "/static/../server.py") as resp:
            assert resp.status in (403, 404)


async def test_another_host_name_is_refused(running: Running) -> None:
    """DNS rebinding: a page at evil.example resolving to 127.0.0.1 is not the console."""
    async with client() as s:
        async with s.get(running.url, allow_redirects=False,
                         headers={"Host": "evil.example"}) as resp:
            assert resp.status == 403
        headers = await login(s, running)  # the token was not spent by the refused request
        async with s.get(running.base + "/api/snapshot",
                         headers={**headers, "Host": "evil.example"}) as resp:
            assert resp.status == 403


async def test_state_changes_need_the_session_header_and_the_own_origin(
        running: Running) -> None:
    async with client() as s:
        headers = await login(s, running)
        url = running.base + "/api/verify"
        async with s.post(url) as resp:
            assert resp.status == 403
        async with s.post(url, headers={SESSION_HEADER: "not-it"}) as resp:
            assert resp.status == 403
        async with s.post(url, headers={**headers, "Origin": "http://evil.example"}) as resp:
            assert resp.status == 403
        async with s.post(url, headers={**headers, "Origin": running.base}) as resp:
            assert resp.status == 200
            assert (await resp.json())["status"] == "baseline"
        # GET never changes state: the action routes do not answer it
        async with s.get(running.base + "/api/verify", headers=headers) as resp:
            assert resp.status == 405 or resp.status == 403


@pytest.mark.parametrize("public", [None, "https://console.example"])
async def test_a_tls_proxy_in_front_needs_the_public_origin(env: Env, public: str | None
                                                            ) -> None:
    """Behind a TLS proxy the page's Origin is the proxy's, not http:// + Host: it passes
    only when ``--public-origin`` names it, and the cookie is Secure then."""
    console = Console(env.operator_config(), interval_s=3600.0, public_origin=public)
    runner, url = await serve(console)
    try:
        local = f"http://127.0.0.1:{runner.addresses[0][1]}"
        assert url == f"{public or local}/?token={console.token}"
        async with aiohttp.ClientSession() as s:
            async with s.get(f"{local}/?token={console.token}", allow_redirects=False,
                             headers={"Host": "console.example" if public else
                                      local.removeprefix("http://")}) as resp:
                assert resp.status == 303
                set_cookie = resp.headers["Set-Cookie"]
                secret = resp.headers["Location"].removeprefix("/#s=")
            attrs = [a.strip().lower() for a in set_cookie.split(";")]
            assert ("secure" in attrs) is (public is not None)
            cookie = set_cookie.split(";")[0]
            async with s.post(local + "/api/verify", headers={
                    "Cookie": cookie, SESSION_HEADER: secret,
                    "Origin": "https://console.example"}) as resp:
                assert resp.status == (200 if public else 403)
            if public:  # the proxy's own origin, and only it
                async with s.post(local + "/api/verify", headers={
                        "Cookie": cookie, SESSION_HEADER: secret, "Origin": local}) as resp:
                    assert resp.status == 403
    finally:
        await runner.cleanup()


def test_public_origin_is_an_origin() -> None:
    assert parse_origin("https://console.example") == "https://console.example"
    assert parse_origin("https://Console.Example:443/") == "https://console.example"
    assert parse_origin("http://[::1]:8080") == "http://[::1]:8080"
    for bad in ("console.example", "ftp://x", "https://x/path", "https://u@x",
                "https://x?q=1", "https://x:99999"):
        with pytest.raises(InputError):
            parse_origin(bad)


async def test_a_closed_events_client_is_dropped_at_once(
        env: Env, caplog: pytest.LogCaptureFixture) -> None:
    """Not at the next snapshot (there is none here: one poll an hour), and quietly."""
    import structlog

    console = Console(env.operator_config(), interval_s=3600.0)
    runner, url = await serve(console)
    base = url.split("/?")[0]
    try:
        await until(lambda: console.snapshot is not None, console.next_update,
                    what="the first poll")
        with caplog.at_level(logging.WARNING), structlog.testing.capture_logs() as logs:
            async with client() as s:
                headers = await login(s, url)
                for _ in range(3):
                    gone = console.streams_changed()
                    assert (await first_event(s, base, headers)).startswith(b"event: snapshot")
                    # first_event has closed its connection: the server notices by itself
                    await asyncio.wait_for(gone.wait(), 10)
                    assert console.streams == 0
        assert [r for r in caplog.records if r.levelno >= logging.ERROR] == []
        assert [e for e in logs if e["log_level"] in ("error", "critical")] == []
    finally:
        await runner.cleanup()


def test_listen_is_loopback_unless_allowed() -> None:
    assert parse_listen("127.0.0.1:0") == ("127.0.0.1", 0)
    assert parse_listen("[::1]:8080") == ("::1", 8080)
    assert parse_listen("localhost:9") == ("localhost", 9)
    for remote in ("0.0.0.0:8080", "192.168.1.10:80", "example.org:80"):
        with pytest.raises(InputError, match="loopback"):
            parse_listen(remote)
    assert parse_listen("0.0.0.0:8080", allow_remote=True) == ("0.0.0.0", 8080)
    for bad in ("8080", ":80", "host:port", "127.0.0.1:70000"):
        with pytest.raises(InputError):
            parse_listen(bad)


def test_cli_refuses_a_remote_listen(env: Env, capsys: pytest.CaptureFixture[str]) -> None:
    rc = cli_main(["console", "--as", str(env.operator_dir), "--broker", env.url,
                   "--listen", "0.0.0.0:0"])
    assert rc == 2
    assert "--allow-remote" in capsys.readouterr().err


@pytest.mark.parametrize("interval", ["nan", "inf", "-inf", "0", "-1"])
def test_cli_refuses_an_interval_that_is_not_a_positive_number(
        env: Env, interval: str, capsys: pytest.CaptureFixture[str]) -> None:
    rc = cli_main(["console", "--as", str(env.operator_dir), "--broker", env.url,
                   f"--interval={interval}"])
    assert rc == 2
    assert "--interval must be a positive number" in capsys.readouterr().err
    with pytest.raises(InputError):
        Console(env.operator_config(), interval_s=float(interval))


def test_cli_refuses_a_bad_public_origin(env: Env, capsys: pytest.CaptureFixture[str]) -> None:
    rc = cli_main(["console", "--as", str(env.operator_dir), "--broker", env.url,
                   "--public-origin", "console.example/path"])
    assert rc == 2
    assert "--public-origin" in capsys.readouterr().err


def test_cli_refuses_a_node_directory(env: Env, tmp_path: Path,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    from exchange.pki import party

    party.create(tmp_path / "node", "vn.gov.test.somenode")
    rc = cli_main(["console", "--as", str(tmp_path / "node"), "--broker", env.url])
    assert rc == 2
    assert "operator" in capsys.readouterr().err


# -- what it shows -----------------------------------------------------------------------------


async def test_counts_move_and_no_record_content_leaves_the_console(env: Env,
                                                                    running: Running) -> None:
    first = await running.snapshot_where(lambda s: s["overview"]["accepted"] is not None,
                                         "a first snapshot")
    before = first["overview"]["accepted"]
    records = people(30, seed=7)
    for r in records:
        r["full_name"] = MARKER
    async with Node(env.node_config(POPULATION)) as node:
        result = await node.publish("population", records)
    assert result.accepted == 30
    snap = await running.snapshot_where(
        lambda s: s["overview"]["accepted"] >= before + 30, "the accepted count to move")
    assert snap["overview"]["store"] == "sqlite"
    assert snap["overview"]["log_size"] is not None and snap["overview"]["log_size"] >= 30
    population = next(d for d in snap["datasets"] if d["name"] == "population")
    assert population["accepted"] >= 30 and population["stale"] is False
    assert population["title"]["vi"] and population["title"]["en"]
    assert population["scores"]["correct"] == 1.0
    assert population["history"]
    node = next(n for n in snap["nodes"] if n["id"] == POPULATION)
    assert node["published"] >= 30
    # a rate was measured at some poll while the records arrived, or after: the history has it
    assert any(p[1] > 0 for p in snap["overview"]["rates"])

    async with client() as s:
        headers = await login(s, running)
        async with s.get(running.base + "/api/snapshot", headers=headers) as resp:
            body = await resp.text()
        event = await first_event(s, running.base, headers)
    assert event.startswith(b"event: snapshot\ndata: {")
    for payload in (body, event.decode()):
        assert MARKER not in payload and "Kettleby" not in payload
        for r in records:  # neither the keys (citizen ids) nor any field's value
            assert r["id"] not in payload
            assert r["birth_date"] not in payload
            street = r["permanent_address"].get("street")
            assert street is None or street not in payload


async def test_expiring_certificate_and_stale_datasets(env: Env, running: Running) -> None:
    from exchange import pki

    expiring = "vn.gov.test.expiring"
    pki.enroll(env.pki_dir, expiring, validity_days=10)
    async with Node(env.node_config(expiring)) as node:
        await node.request_agreement("population", purpose="check expiring certificates",
                                     legal_basis="Decree 13/2023/ND-CP Art. 17", days=30)
    snap = await running.snapshot_where(
        lambda s: any(n["id"] == expiring and n["certificate"] for n in s["nodes"]),
        "the new node's certificate expiry")
    cert = next(n for n in snap["nodes"] if n["id"] == expiring)["certificate"]
    assert cert["warn"] is True and 9 < cert["days"] <= 10
    owner = next(n for n in snap["nodes"] if n["id"] == POPULATION)["certificate"]
    assert owner is not None and owner["warn"] is False and owner["days"] > WARN_DAYS
    # no record ever reached tax, land or vehicle here: never updated is stale
    stale = {d["name"]: d["stale"] for d in snap["datasets"]}
    assert stale["tax"] is True and stale["land"] is True


async def test_approve_reject_and_revoke_from_the_console(env: Env, running: Running) -> None:
    async with Node(env.node_config(OUTSIDER)) as outsider, \
            Node(env.node_config(POPULATION)) as owner:
        asked = await outsider.request_agreement(
            "population", purpose="audit the console", legal_basis="Law 91/2025/QH15 Art. 1",
            groups=["residence"], days=30)
        second = await outsider.request_agreement(
            "population", purpose="a second request to refuse",
            legal_basis="Law 91/2025/QH15 Art. 1", days=30)
        await owner.decide(asked["id"], "approve")
        snap = await running.snapshot_where(
            lambda s: any(a["id"] == asked["id"] for a in s["agreements"]["pending"]),
            "the approved request among the pending")
        pending = {a["id"]: a for a in snap["agreements"]["pending"]}
        assert pending[asked["id"]]["state"] == "approved"
        assert pending[asked["id"]]["actions"] == ["countersign", "reject"]
        assert pending[second["id"]]["actions"] == ["reject"]  # the owner has not decided
        async with client() as s:
            headers = await login(s, running)
            base = running.base + "/api/agreements/"
            async with s.post(base + asked["id"] + "/countersign", headers=headers) as resp:
                assert resp.status == 200, await resp.text()
                assert (await resp.json())["state"] == "active"
            async with s.post(base + second["id"] + "/reject", headers=headers,
                              json={"reason": "no legal basis given"}) as resp:
                assert resp.status == 200
                assert (await resp.json())["state"] == "revoked"
            async with s.post(base + second["id"] + "/countersign", headers=headers) as resp:
                assert resp.status == 409  # not the operator's to do in that state
            async with s.post(base + asked["id"] + "/approve", headers=headers) as resp:
                assert resp.status == 400  # an owner's action, not the console's
        view = await outsider.agreement(asked["id"])
        assert view["state"] == "active"
        signer = view["decisions"][-1]["signed"]
        assert signer["role"] == "operator" and signer["by"] == env.operator_config().node_id
        refused = await outsider.agreement(second["id"])
        assert refused["decisions"][-1]["reason"] == "no legal basis given"
        snap = await running.snapshot_where(
            lambda s: any(a["id"] == asked["id"] for a in s["agreements"]["active"]),
            "the agreement among the active")
        async with client() as s:
            headers = await login_again(running, s)
            async with s.post(running.base + f"/api/agreements/{asked['id']}/revoke",
                              headers=headers) as resp:
                assert resp.status == 200
                assert (await resp.json())["state"] == "revoked"


async def login_again(running: Running, s: aiohttp.ClientSession) -> dict[str, str]:
    """A second browser session: a new one-time token, as a restarted console prints."""
    running.console.token = "second-token-for-the-test"
    running.url = running.base + "/?token=second-token-for-the-test"
    return await login(s, running)


async def verify(s: aiohttp.ClientSession, running: Running, headers: dict[str, str]
                 ) -> tuple[int, dict[str, Any]]:
    async with s.post(running.base + "/api/verify", headers=headers) as resp:
        return resp.status, await resp.json()


async def test_consistency_check_records_a_baseline_then_verifies_and_detects_forgeries(
        env: Env, running: Running) -> None:
    stored = env.operator_dir / BASELINE_FILE
    assert running.console.baseline is None and not stored.exists()
    async with client() as s, Node(env.node_config(POPULATION)) as node:
        headers = await login(s, running)
        await node.publish("population", people(5, seed=3))
        await running.snapshot_where(lambda s: s["log"]["size"] >= 5, "the log to grow")
        # the first check of this operator directory proves nothing: it records the baseline
        status, first = await verify(s, running, headers)
        assert status == 200 and first["status"] == "baseline", first
        assert first["verified"] is False and first["to"]["size"] >= 5
        assert "baseline recorded" in first["detail"]
        snap = await running.snapshot_where(
            lambda s: s["log"]["verification"] is not None, "the result in the snapshot")
        assert snap["log"]["verification"]["status"] == "baseline"
        # kept as the signed note, private to the operator
        assert running.console.baseline is not None
        assert stored.read_text() == running.console.baseline.note
        assert stored.stat().st_mode & 0o777 == 0o600
        await node.publish("population", people(7, seed=4))
        await until(lambda: running.console.latest is not None
                    and running.console.latest.size > first["to"]["size"],
                    running.console.next_update, what="a larger checkpoint than the baseline")
        # the next one from where the last one ended
        status, good = await verify(s, running, headers)
        assert status == 200 and good["status"] == "verified" and good["verified"] is True
        assert good["from"]["size"] == first["to"]["size"] < good["to"]["size"]
        assert good["proof_hashes"] > 0
        snap = await running.snapshot_where(
            lambda s: (s["log"]["verification"] or {}).get("status") == "verified",
            "the result in the snapshot")
        assert len(snap["log"]["checkpoints"]) >= 2

        # a restarted console goes on from the stored baseline, not from the broker's word
        again = Console(env.operator_config())
        assert again.baseline is not None and again.baseline.size == good["to"]["size"]
        assert again.baseline.note == stored.read_text()

        # a baseline the log key never signed (someone else's note of the same log), stored
        forger = tlog.NoteKey.from_private(running.console.node.tlog.origin or "x",
                                           Ed25519PrivateKey.generate())
        stored.write_text(tlog.sign_checkpoint(forger, forger.name, 3, b"\x00" * 32).note)
        kept = stored.read_text()
        running.console.baseline = Console(env.operator_config()).baseline
        status, bad = await verify(s, running, headers)
        assert status == 502 and bad["status"] == "failed"
        assert "checkpoint_forged" in bad["detail"]

        # a baseline correctly signed but of another history: the proof does not verify
        key = tlog.NoteKey.from_private(running.console.node.tlog.origin or "x",
                                        env.broker.identity.signing_key)
        running.console.baseline = tlog.sign_checkpoint(key, key.name, 3, b"\x11" * 32)
        status, split = await verify(s, running, headers)
        assert status == 502 and split["verified"] is False and "split_view" in split["detail"]
        assert stored.read_text() == kept  # a failed check moves no baseline

        # the broker's latest checkpoint is forged: a 502, and the page shows it as failed
        running.console.baseline = again.baseline
        running.console.node.tlog.key = forger
        status, forged = await verify(s, running, headers)
        assert status == 502 and forged["status"] == "failed" and forged["to"] is None
        assert "checkpoint_forged" in forged["detail"]
        snap = await running.snapshot_where(
            lambda s: (s["log"]["verification"] or {}).get("at") == forged["at"],
            "the failed check in the snapshot")
        assert snap["log"]["verification"]["status"] == "failed"


def test_an_unreadable_stored_baseline_stops_the_console(env: Env) -> None:
    (env.operator_dir / BASELINE_FILE).write_text("not a checkpoint\n")
    with pytest.raises(IntegrityError, match=BASELINE_FILE):
        Console(env.operator_config())


# -- the pure model ----------------------------------------------------------------------------


def _quality(accepted: int, delivered: int, *, stale: bool = False) -> dict[str, Any]:
    return {"datasets": {"population": {
        "scores": {"correct": 0.9, "sufficient": 0.8, "clean": 1.0, "live": 0.5,
                   "stale": stale, "seconds_since_update": 3.0},
        "counters": {"accepted": accepted, "delivered": delivered, "duplicates": 1,
                     "rejected": {"schema_violation": 2}},
        "publishers": {POPULATION: {"counters": {"accepted": accepted,
                                                 "rejected": {"schema_violation": 2}}}},
        "unresolved": [{"target_dataset": "population", "target_key": "001085012345",
                        "key": "001085012345"}],
        "subscriptions": [{"node": OUTSIDER, "dataset": "population", "name": "s",
                           "lag": 4, "lag_s": 1.5}]}}}


METRICS = """# HELP process_cpu_seconds_total cpu
# TYPE process_cpu_seconds_total counter
process_cpu_seconds_total {cpu}
# TYPE process_resident_memory_bytes gauge
process_resident_memory_bytes 1.5e+08
# TYPE exchange_certificate_expiry_timestamp_seconds gauge
exchange_certificate_expiry_timestamp_seconds{{subject="vn.gov.test.soon",role="node"}} {soon}
exchange_certificate_expiry_timestamp_seconds{{subject="vn.gov.ndc.ops.x",role="operator"}} {late}
# TYPE exchange_crl_next_update_timestamp_seconds gauge
exchange_crl_next_update_timestamp_seconds {late}
"""


def test_model_rates_history_and_warnings() -> None:
    model = Model(history_s=100.0, step_s=10.0)
    t0 = 1_800_000_000.0
    day = 86_400.0
    metrics = METRICS.format(cpu=10.0, soon=t0 + 3 * day, late=t0 + 90 * day)
    first = model.update(Sample(at=t0, quality=_quality(100, 50), metrics=metrics,
                                checkpoint=CheckpointSeen(t0, 100, "cm9vdA==")))
    assert first["overview"]["in_per_s"] is None  # one sample is no rate
    assert first["overview"]["rss_bytes"] == 1.5e8
    second = model.update(Sample(at=t0 + 2, quality=_quality(300, 90, stale=True),
                                 metrics=METRICS.format(cpu=11.0, soon=t0 + 3 * day,
                                                        late=t0 + 90 * day)))
    o = second["overview"]
    assert o["in_per_s"] == 100.0 and o["out_per_s"] == 20.0
    assert o["cpu_percent"] == 50.0
    assert o["accepted"] == 300 and o["rejected"] == 2
    assert o["log_size"] == 100 and o["checkpoint_age_s"] == 2.0
    # a history point at most every step_s
    assert len(second["datasets"][0]["history"]) == 1
    assert second["datasets"][0]["stale"] is True
    soon = next(n for n in second["nodes"] if n["id"] == "vn.gov.test.soon")
    assert soon["certificate"]["warn"] is True and soon["certificate"]["days"] < WARN_DAYS
    assert second["crl"]["warn"] is False
    assert {c["role"] for c in second["certificates"]} == {"node", "operator"}
    later = model.update(Sample(at=t0 + 200, quality=_quality(300, 90)))
    assert [p[0] for p in later["datasets"][0]["history"]] == [t0 + 200]  # older trimmed
    assert later["overview"]["cpu_percent"] is None  # metrics missing: a dash, not a zero
    assert later["overview"]["rss_bytes"] is None
    encoded = msgspec.json.encode(later).decode()
    assert "001085012345" not in encoded  # the quality report's keys are never copied


def test_model_tolerates_missing_and_broken_sources() -> None:
    assert parse_metrics("this is { not prometheus").samples == {}
    assert parse_metrics(None).samples == {}
    snap = Model().update(Sample(at=1.0, errors={"metrics": "operator_only: no"}))
    assert snap["overview"]["accepted"] is None
    assert snap["datasets"] == [] and snap["nodes"] == [] and snap["subscriptions"] == []
    assert snap["errors"] == {"metrics": "operator_only: no"}
    odd = Model().update(Sample(at=1.0, quality={"datasets": {"population": "?"}},
                                agreements=[{"state": "active", "request": "?"}],
                                subscriptions=[{"node": 3}], catalog=[{"identifier": 5}]))
    # a malformed agreement is not shown with blank fields: it is named as an error
    assert odd["agreements"]["active"] == []
    assert "request is not an object" in odd["errors"]["agreements"]
    assert "population" in odd["errors"]["quality"]

    # one malformed field in any source: that source says so, the rest of the page stays
    good = {"id": "agr-0000000000000001", "state": "active",
            "request": {"dataset": "land", "subscriber": OUTSIDER, "groups": ["a"]},
            "decisions": [{"action": "approve", "signed": {"by": "x", "role": "owner"}}]}
    cases: dict[str, dict[str, Any]] = {
        "agreements": {"agreements": [good, "a string"]},
        "agreements ": {"agreements": [good, {**good, "request": {"groups": 3}}]},
        "agreements  ": {"agreements": [good, {**good, "decisions": [{"signed": "x"}]}]},
        "catalog": {"catalog": [{"identifier": "land", "agreements": ["agr-1"]}]},
        "quality": {"quality": {"datasets": {"population": {"scores": [1, 2]}}}},
        "subscriptions": {"subscriptions": [{"node": OUTSIDER, "dataset": "land"}, "row"]},
    }
    for source, broken in cases.items():
        sample = {"catalog": [{"identifier": "tax", "publisher": OWNERS["tax"]}],
                  "quality": _quality(10, 5), "agreements": [good],
                  "subscriptions": [{"node": OUTSIDER, "dataset": "land", "name": "s"}],
                  **broken}
        snap = Model().update(Sample(at=1.0, metrics=METRICS.format(cpu=1, soon=9, late=9),
                                     **sample))
        assert snap["errors"].keys() == {source.strip()}, (source, snap["errors"])
        assert snap["errors"][source.strip()].startswith("malformed"), snap["errors"]
        assert snap["overview"]["rss_bytes"] == 1.5e8  # the rest is kept
        assert [a["id"] for a in snap["agreements"]["active"]] == [good["id"]]
        assert [r["node"] for r in snap["subscriptions"]] == [OUTSIDER]
        if source == "quality":
            assert snap["overview"]["accepted"] == 0
            assert "population" not in {d["name"] for d in snap["datasets"]}
        else:
            assert snap["overview"]["accepted"] == 10
        msgspec.json.encode(snap)  # and it is JSON


def test_model_flags_a_split_view_and_a_shrunk_log() -> None:
    model = Model(step_s=0.0)
    ok = model.update(Sample(at=1.0, checkpoint=CheckpointSeen(1.0, 10, "cm9vdDEw")))
    assert ok["log"]["warnings"] == [] and ok["log"]["size"] == 10
    model.update(Sample(at=2.0, checkpoint=CheckpointSeen(2.0, 12, "cm9vdDEy")))
    # the same size as one seen, another root
    split = model.update(Sample(at=3.0, checkpoint=CheckpointSeen(3.0, 10, "b3RoZXI=")))
    [w] = split["log"]["warnings"]
    assert w["code"] == "split_view" and w["size"] == 10 and w["seen_root"] == "cm9vdDEw"
    # a smaller size than the largest seen
    shrunk = model.update(Sample(at=4.0, checkpoint=CheckpointSeen(4.0, 11, "cm9vdDEx")))
    assert [w["code"] for w in shrunk["log"]["warnings"]] == ["split_view", "shrunk"]
    assert shrunk["log"]["warnings"][1]["seen_size"] == 12
    # neither enters the history, and a repeat is not a new finding
    again = model.update(Sample(at=5.0, checkpoint=CheckpointSeen(5.0, 10, "b3RoZXI=")))
    assert again["log"]["warnings_total"] == 2
    assert [c[1] for c in again["log"]["checkpoints"]] == [10, 12]
    assert again["log"]["root"] == "cm9vdDEy"
    # the largest size with another root is a split view too
    top = model.update(Sample(at=6.0, checkpoint=CheckpointSeen(6.0, 12, "b3RoZXI=")))
    assert top["log"]["warnings"][-1]["code"] == "split_view"


def test_checkpoint_history_is_sampled_and_capped() -> None:
    # one point per step, the latest checkpoint of each
    model = Model(step_s=10.0)
    for i in range(100):
        snap = model.update(Sample(at=float(i), checkpoint=CheckpointSeen(float(i), i, f"r{i}")))
    assert [c[1] for c in snap["log"]["checkpoints"]] == [9, 19, 29, 39, 49, 59, 69, 79, 89, 99]
    # however short the step, a snapshot carries at most CHECKPOINTS_SENT, the newest
    model = Model(step_s=0.0, history_s=math.inf)
    for i in range(1000):
        snap = model.update(Sample(at=float(i), checkpoint=CheckpointSeen(float(i), i, f"r{i}")))
    sent = snap["log"]["checkpoints"]
    assert len(sent) == CHECKPOINTS_SENT == 360
    assert sent[-1] == [999.0, 999, "r999"] and sent[0][1] == 1000 - CHECKPOINTS_SENT
    assert len(msgspec.json.encode(snap)) < 40_000


def test_agreement_actions_follow_the_lifecycle() -> None:
    items = [{"id": f"agr-{i:016x}", "state": state, "request": {"dataset": "land"}}
             for i, state in enumerate(["requested", "approved", "active", "revoked",
                                        "rejected", "expired"])]
    ag = Model().update(Sample(at=1.0, agreements=items))["agreements"]
    assert [a["actions"] for a in ag["pending"]] == [["reject"], ["countersign", "reject"]]
    assert [a["actions"] for a in ag["active"]] == [["revoke"]]
    assert [a["state"] for a in ag["closed"]] == ["revoked", "rejected", "expired"]
    assert all(a["actions"] == [] for a in ag["closed"])


# -- the demo ----------------------------------------------------------------------------------


def test_demo_console_prints_the_url_and_runs_until_interrupted(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "exchange", "demo", "--console", "--rate", "50", "--seed", "1",
         "--data", str(tmp_path / "demo")], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True, env=env)
    try:
        assert proc.stdout is not None
        url = ""
        for line in proc.stdout:  # blocks on the child's output, no sleeping
            if "?token=" in line:
                url = line.split("open ", 1)[1].split()[0]
                break
        assert url.startswith("http://127.0.0.1:"), url

        async def fetch() -> tuple[int, str, dict[str, Any]]:
            base = url.split("/?")[0]
            async with client() as s:
                headers = await login(s, url)
                async with s.get(base + "/") as resp:
                    page = await resp.text()
                    status = resp.status
                async with s.get(base + "/api/snapshot", headers=headers) as resp:
                    snap = await resp.json()
            return status, page, snap

        status, page, snap = asyncio.run(fetch())
        assert status == 200 and 'id="overview"' in page
        assert snap["overview"]["store"] == "sqlite"
        assert {d["name"] for d in snap["datasets"]} == {"population", "tax", "land",
                                                         "vehicle"}
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err
        assert "Traceback" not in err
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


def test_static_files_ship_with_the_package() -> None:
    from importlib import resources

    static = resources.files("exchange.console").joinpath("static")
    names = {p.name for p in static.iterdir()}
    assert {"index.html", "console.css", "console.js"} <= names
    root = Path(__file__).resolve().parents[1]
    assert '"console/static/*"' in (root / "pyproject.toml").read_text()
