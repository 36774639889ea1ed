"""The operator console's server and view model, through a real console on 127.0.0.1 in front
of a real broker over TLS: the one-time token, the session cookie, CSRF and Origin checks,
loopback only, the actions, the consistency check, and that no record content ever leaves it."""

from __future__ import annotations

import asyncio
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

from exchange.cli import main as cli_main
from exchange.console import Console, parse_listen, serve
from exchange.console.model import WARN_DAYS, CheckpointSeen, Model, Sample, parse_metrics
from exchange.console.server import COOKIE, CSRF_HEADER, SECURITY_HEADERS
from exchange.core import tlog
from exchange.core.errors import InputError
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


async def login(session: aiohttp.ClientSession, running: Running) -> str:
    """Redeem the token; return the page's CSRF value."""
    async with session.get(running.url, allow_redirects=False) as resp:
        assert resp.status == 303
        assert resp.headers["Location"] == "/"
    async with session.get(running.base + "/") as resp:
        assert resp.status == 200
        page = await resp.text()
    csrf = page.split('name="csrf-token" content="')[1].split('"')[0]
    assert len(csrf) >= 32
    return csrf


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
        await login(s, running)
        for route in routes[:-1]:
            async with s.get(running.base + route) as resp:
                assert resp.status == 200, route


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
        await login(s, running)  # the token was not spent by the refused request
        async with s.get(running.base + "/api/snapshot", headers={"Host": "evil.example"}
                         ) as resp:
            assert resp.status == 403


async def test_state_changes_need_the_csrf_header_and_the_own_origin(running: Running) -> None:
    async with client() as s:
        csrf = await login(s, running)
        url = running.base + "/api/verify"
        async with s.post(url) as resp:
            assert resp.status == 403
        async with s.post(url, headers={CSRF_HEADER: "not-it"}) as resp:
            assert resp.status == 403
        async with s.post(url, headers={CSRF_HEADER: csrf, "Origin": "http://evil.example"}
                          ) as resp:
            assert resp.status == 403
        async with s.post(url, headers={CSRF_HEADER: csrf, "Origin": running.base}) as resp:
            assert resp.status == 200
            assert (await resp.json())["verified"] is True
        # GET never changes state: the action routes do not answer it
        async with s.get(running.base + "/api/verify") as resp:
            assert resp.status == 405 or resp.status == 403


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
        await login(s, running)
        async with s.get(running.base + "/api/snapshot") as resp:
            body = await resp.text()
        async with s.get(running.base + "/events") as resp:
            assert resp.headers["Content-Type"].startswith("text/event-stream")
            event = b""
            while not event.endswith(b"\n\n"):
                event += await resp.content.readline()
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
            csrf = await login(s, running)
            headers = {CSRF_HEADER: csrf}
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
            csrf = await login_again(running, s)
            async with s.post(running.base + f"/api/agreements/{asked['id']}/revoke",
                              headers={CSRF_HEADER: csrf}) as resp:
                assert resp.status == 200
                assert (await resp.json())["state"] == "revoked"


async def login_again(running: Running, s: aiohttp.ClientSession) -> str:
    """A second browser session: a new one-time token, as a restarted console prints."""
    running.console.token = "second-token-for-the-test"
    running.url = running.base + "/?token=second-token-for-the-test"
    return await login(s, running)


async def test_consistency_check_verifies_and_detects_a_forged_baseline(
        env: Env, running: Running) -> None:
    async with client() as s, Node(env.node_config(POPULATION)) as node:
        csrf = await login(s, running)
        await node.publish("population", people(5, seed=3))
        await running.snapshot_where(lambda s: s["log"]["size"] >= 5, "the log to grow")
        # the first check starts from the first checkpoint the console saw
        async with s.post(running.base + "/api/verify", headers={CSRF_HEADER: csrf}) as resp:
            first = await resp.json()
        assert first["verified"] is True and first["to"]["size"] >= 5
        await node.publish("population", people(7, seed=4))
        await until(lambda: running.console.latest is not None
                    and running.console.baseline is not None
                    and running.console.latest.size > running.console.baseline.size,
                    running.console.next_update, what="a larger checkpoint than the baseline")
        # the next one from where the last one ended
        async with s.post(running.base + "/api/verify", headers={CSRF_HEADER: csrf}) as resp:
            good = await resp.json()
        assert good["verified"] is True, good
        assert 0 < good["from"]["size"] < good["to"]["size"]
        assert good["proof_hashes"] > 0
        snap = await running.snapshot_where(
            lambda s: s["log"]["verification"] is not None, "the result in the snapshot")
        assert snap["log"]["verification"]["verified"] is True
        assert len(snap["log"]["checkpoints"]) >= 2

        # a baseline the log key never signed (someone else's note of the same log)
        forger = tlog.NoteKey.from_private(running.console.node.tlog.origin or "x",
                                           Ed25519PrivateKey.generate())
        running.console.baseline = tlog.sign_checkpoint(forger, forger.name, 3, b"\x00" * 32)
        async with s.post(running.base + "/api/verify", headers={CSRF_HEADER: csrf}) as resp:
            bad = await resp.json()
        assert bad["verified"] is False and "checkpoint_forged" in bad["detail"]

        # a baseline correctly signed but of another history: the proof does not verify
        key = tlog.NoteKey.from_private(running.console.node.tlog.origin or "x",
                                        env.broker.identity.signing_key)
        running.console.baseline = tlog.sign_checkpoint(key, key.name, 3, b"\x11" * 32)
        async with s.post(running.base + "/api/verify", headers={CSRF_HEADER: csrf}) as resp:
            split = await resp.json()
        assert split["verified"] is False and "split_view" in split["detail"]


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
    assert odd["agreements"]["active"][0]["dataset"] == ""


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
            async with client() as s:
                async with s.get(url) as resp:
                    page = await resp.text()
                    status = resp.status
                async with s.get(url.split("/?")[0] + "/api/snapshot") as resp:
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
