"""Keys made where they are used: a new agency joins offline and online, rotates its signing
key, and no private key is ever written outside its owner's directory. Real files, the CA's
real enrolment service over TLS on 127.0.0.1, a real broker."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import datetime as dt
import json
import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import msgspec
import pytest
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from exchange import audit, pki
from exchange.core.access import Agreement, BrokerConfig
from exchange.core.errors import AuthError, ExchangeError, Forbidden
from exchange.node import Delivery, Node, NodeConfig, Record, enrol
from exchange.pki import party
from exchange.pki.service import EnrolService, create_app, service_ssl_context
from exchange.sim.orchestration import join_offline
from tests.conftest import OPERATOR, OWNERS, broker_config, people, start_broker

POP, TAX, LAND, VEHICLE = (OWNERS[r] for r in ("population", "tax", "land", "vehicle"))


@asynccontextmanager
async def enrol_service(pki_dir: Path) -> AsyncIterator[str]:
    """``exchange pki serve`` in this process, on a free port."""
    service = EnrolService(pki_dir)
    runner = web.AppRunner(create_app(service), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=service_ssl_context(service))
    await site.start()
    try:
        yield f"https://127.0.0.1:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()


def ca_log(pki_dir: Path) -> list[dict[str, Any]]:
    text = (pki.default_ca_dir(pki_dir) / "ca.log").read_text()
    return [json.loads(line) for line in text.splitlines()]


@pytest.fixture
def exchange_pki(tmp_path: Path) -> Path:
    """A PKI whose land and vehicle nodes have central keys; population and tax join in the
    tests themselves, the real way."""
    pki_dir = tmp_path / "pki"
    pki.init(pki_dir)
    for node in (LAND, VEHICLE):
        pki.enroll(pki_dir, node)
    return pki_dir


def _config(pki_dir: Path, data: Path) -> BrokerConfig:
    return broker_config(pki_dir, data)


# -- the whole join, offline and online --------------------------------------------------------


async def test_agencies_join_offline_and_online_and_exchange_verified_records(
        tmp_path: Path, exchange_pki: Path) -> None:
    pop_dir, tax_dir = tmp_path / "agency-pop", tmp_path / "agency-tax"
    # offline: the population registry makes its keys; the CA signs the requests
    party.create(pop_dir, POP)
    assert (pop_dir / "signing.key").stat().st_mode & 0o777 == 0o600
    assert (pop_dir / "tls.key").stat().st_mode & 0o777 == 0o600
    certs = [pki.sign(exchange_pki, csr) for csr in party.requests(pop_dir)]
    party.install(pop_dir, [c.public_bytes(serialization.Encoding.PEM) for c in certs],
                  ca=(exchange_pki / "ca.crt").read_bytes())
    # online: the tax authority is invited and enrolls over TLS with its token
    token = pki.invite(exchange_pki, TAX, expires=dt.timedelta(hours=1))
    party.create(tax_dir, TAX)
    async with enrol_service(exchange_pki) as url:
        installed = await enrol.enroll(tax_dir, url, token)
    assert installed.tls and installed.signing
    assert party.requests(tax_dir) == []
    assert (tax_dir / "ca.crt").read_bytes() == (exchange_pki / "ca.crt").read_bytes()

    _, runner, url = await start_broker(_config(exchange_pki, tmp_path / "data"))
    try:
        got: list[Delivery] = []
        done = asyncio.Event()

        async def handler(d: Delivery) -> None:
            got.append(d)
            if len(got) == 5:
                done.set()

        async with Node(NodeConfig(node_id=POP, node_dir=str(pop_dir), brokers=[url])) as p, \
                Node(NodeConfig(node_id=TAX, node_dir=str(tax_dir), brokers=[url])) as t:
            result = await p.publish("population", [Record(r) for r in people(5)])
            assert result.accepted == 5
            sub = t.subscribe("population", "joined", handler)
            await asyncio.wait_for(done.wait(), 10)
            assert sub.verified == 5 and not sub.evidence
    finally:
        await runner.cleanup()
    events = [e["event"] for e in ca_log(exchange_pki)]
    assert events.count("invited") == 1 and events.count("enrolled") == 1
    assert events.count("signed") >= 2  # the offline pair (and the central ones)


async def test_a_node_config_must_match_its_directory(tmp_path: Path,
                                                      exchange_pki: Path) -> None:
    join_offline(exchange_pki, tmp_path / "pop", POP)
    with pytest.raises(ExchangeError) as err:
        Node(NodeConfig(node_id=TAX, node_dir=str(tmp_path / "pop"), brokers=["https://x"]))
    assert err.value.code == "not_enrolled"
    party.create(tmp_path / "fresh", TAX)  # keys, no certificates yet
    with pytest.raises(ExchangeError) as err:
        Node(NodeConfig(node_id=TAX, node_dir=str(tmp_path / "fresh"), brokers=["https://x"]))
    assert err.value.code == "not_enrolled"


# -- every refusal of the online path ------------------------------------------------------------


async def test_tokens_work_once_for_their_node_until_they_expire(tmp_path: Path,
                                                                 exchange_pki: Path) -> None:
    for name, node in (("tax", TAX), ("tax2", TAX), ("pop", POP)):
        party.create(tmp_path / name, node)
    token = pki.invite(exchange_pki, TAX)
    other = pki.invite(exchange_pki, TAX)
    async with enrol_service(exchange_pki) as url:
        err: pytest.ExceptionInfo[ExchangeError]
        # a request for a node id the token was not issued for: refused, and the token spent
        with pytest.raises(Forbidden) as err:
            await enrol.enroll(tmp_path / "pop", url, other)
        assert err.value.code == "token_node_mismatch"
        with pytest.raises(AuthError) as err:
            await enrol.enroll(tmp_path / "tax2", url, other)
        assert err.value.code == "token_used"
        # a made-up secret for a real token id: refused, and the real token still works
        forged = ".".join([*token.split(".")[:2], "x" * 32, token.split(".")[3]])
        with pytest.raises(AuthError) as err:
            await enrol.enroll(tmp_path / "tax2", url, forged)
        assert err.value.code == "token_invalid"
        await enrol.enroll(tmp_path / "tax", url, token)
        # used once: a second use is refused, for the same node too
        with pytest.raises(AuthError) as err:
            await enrol.enroll(tmp_path / "tax2", url, token)
        assert err.value.code == "token_used"
        # an enrolled node is not re-enrolled by a fresh token unless the operator says so
        again = pki.invite(exchange_pki, TAX)
        with pytest.raises(ExchangeError) as err:
            await enrol.enroll(tmp_path / "tax2", url, again)
        assert err.value.code == "already_enrolled"
    # expiry: the CA's own clock decides (given here, so no test waits for a day)
    late = pki.invite(exchange_pki, POP, expires=dt.timedelta(minutes=5))
    with pytest.raises(AuthError) as err:
        pki.redeem(exchange_pki, late, party.requests(tmp_path / "pop"),
                   now=dt.datetime.now(dt.UTC) + dt.timedelta(minutes=6))
    assert err.value.code == "token_expired"
    log = ca_log(exchange_pki)
    refused = [e["code"] for e in log if e["event"] == "enrol_refused"]
    assert refused == ["token_node_mismatch", "token_used", "token_invalid", "token_used",
                       "already_enrolled", "token_expired"]
    assert [e["id"] for e in log if e["event"] == "enrolled"] == [TAX]
    assert all(e["by"] and e["time"] for e in log)


async def test_a_node_refuses_a_service_whose_ca_is_not_the_pinned_one(
        tmp_path: Path, exchange_pki: Path) -> None:
    impostor = tmp_path / "impostor"
    pki.init(impostor)
    token = pki.invite(exchange_pki, TAX)
    party.create(tmp_path / "tax", TAX)
    async with enrol_service(impostor) as url:
        with pytest.raises(AuthError) as err:
            await enrol.enroll(tmp_path / "tax", url, token)
    assert err.value.code == "ca_pin_mismatch"
    # nothing reached the impostor: its CA log has no enrolment attempt, and the token is
    # unspent at the real CA
    assert not [e for e in ca_log(impostor) if e["event"].startswith("enrol")]
    assert not [e for e in ca_log(exchange_pki) if e["event"].startswith("enrol")]


def test_the_ca_refuses_requests_that_prove_nothing(tmp_path: Path, exchange_pki: Path) -> None:
    party.create(tmp_path / "pop", POP)
    csr = x509.load_pem_x509_csr((tmp_path / "pop" / "signing.csr").read_bytes())
    der = bytearray(csr.public_bytes(serialization.Encoding.DER))
    der[-1] ^= 1  # the self-signature no longer verifies: possession is not proven
    with pytest.raises(ExchangeError) as err:
        pki.sign(exchange_pki, bytes(der))
    assert err.value.code == "bad_csr"
    with pytest.raises(ExchangeError) as err:
        pki.sign(exchange_pki, b"not a request")
    assert err.value.code == "bad_csr"
    # the broker's id is never issued to anyone else
    party.create(tmp_path / "fake", pki.BROKER_ID)
    with pytest.raises(ExchangeError) as err:
        pki.sign(exchange_pki, (tmp_path / "fake" / "tls.csr").read_bytes())
    assert err.value.code == "already_enrolled"


def test_signing_takes_the_ca_key_which_the_broker_directory_does_not_hold(
        tmp_path: Path, exchange_pki: Path) -> None:
    party.create(tmp_path / "pop", POP)
    ca_dir = pki.default_ca_dir(exchange_pki)
    moved = tmp_path / "offline-ca"
    ca_dir.rename(moved)
    with pytest.raises(ExchangeError) as err:
        pki.sign(exchange_pki, (tmp_path / "pop" / "tls.csr").read_bytes())
    assert err.value.code == "no_ca_key"
    cert = pki.sign(exchange_pki, (tmp_path / "pop" / "tls.csr").read_bytes(), ca_dir=moved)
    assert pki.principal_from_cert(cert) == pki.Principal("node", POP)


# -- rotation -----------------------------------------------------------------------------------


async def test_rotation_keeps_old_records_verifiable_and_retires_the_old_key(
        tmp_path: Path, exchange_pki: Path) -> None:
    pop_dir = tmp_path / "pop"
    join_offline(exchange_pki, pop_dir, POP)
    join_offline(exchange_pki, tmp_path / "tax", TAX)
    old_key = party.load_identity(pop_dir).signing_key
    data = tmp_path / "data"
    broker, runner, url = await start_broker(_config(exchange_pki, data))
    pop_config = NodeConfig(node_id=POP, node_dir=str(pop_dir), brokers=[url])
    try:
        async with Node(pop_config) as p:
            before = await p.publish("population", [Record(r) for r in people(4, seed=3)])
        assert before.accepted == 4

        async with enrol_service(exchange_pki) as enrol_url:
            done = await enrol.rotate(pop_dir, enrol_url)
        assert done.rotated_from is not None and done.signing
        new_key = party.load_identity(pop_dir).signing_key
        assert new_key.public_key() != old_key.public_key()
        assert not (pop_dir / "signing.next.key").exists()
        assert (pop_dir / "retired" / f"{done.rotated_from}.crt").is_file()
        # the old private key is destroyed: no file in the node's directory holds it
        old_seed = base64.b64encode(old_key.private_bytes_raw())
        assert not [f for f in pop_dir.rglob("*") if f.is_file() and old_seed in f.read_bytes()]

        # a batch signed with the rotated-out key is refused, whole, even as the first batch
        # after the rotation (the broker still held the old key as current)
        from exchange.core import datasets
        from exchange.core.seal import seal
        from tests.conftest import SEALED_AT

        forged = seal(old_key, POP, datasets.get("population"),
                      [(r["id"], 1, r) for r in people(2, seed=5)], b"\x07" * 32,
                      time=SEALED_AT)
        async with Node(pop_config) as p:
            status, problem = await _post_batch(p, forged)
        assert status == 401 and problem["code"] == "key_retired"
        assert (await broker.store.head("population")) == 4 - 1

        # the broker learnt the rotation from the CA's certificates (no reload): the new key
        # signs
        async with Node(pop_config) as p:
            after = await p.publish("population", [Record(r) for r in people(3, seed=4)])
        assert after.accepted == 3 and not after.failed

        # a subscriber that never saw the old key verifies every record, old and new
        got: list[Delivery] = []
        seven = asyncio.Event()

        async def handler(d: Delivery) -> None:
            got.append(d)
            if len(got) == 7:
                seven.set()

        async with Node(NodeConfig(node_id=TAX, node_dir=str(tmp_path / "tax"),
                                   brokers=[url])) as t:
            sub = t.subscribe("population", "after-rotation", handler)
            await asyncio.wait_for(seven.wait(), 10)
            assert sub.verified == 7 and not sub.evidence
    finally:
        await runner.cleanup()
    # and so does the offline audit, from the broker's trust file or from the PKI
    assert audit.audit_data(data).ok
    result = audit.audit_data(data, audit.Trust.from_pki(exchange_pki))
    assert result.ok and result.signatures >= 2
    rotated = [e for e in ca_log(exchange_pki) if e["event"] == "rotated"]
    assert [e["id"] for e in rotated] == [POP]


async def _post_batch(node: Node, batch: Any) -> tuple[int, dict[str, Any]]:
    body = msgspec.json.encode(batch)
    async with node.client.session.post(node.client.url + "/v1/datasets/population/records",
                                        data=body,
                                        headers={"Content-Type": "application/json"}) as resp:
        return resp.status, await resp.json(content_type=None)


async def test_rotation_needs_the_nodes_own_tls_certificate(tmp_path: Path,
                                                            exchange_pki: Path) -> None:
    join_offline(exchange_pki, tmp_path / "pop", POP)
    join_offline(exchange_pki, tmp_path / "tax", TAX)
    # the tax node asks to certify a key named for population: refused
    csr = party.prepare_rotation(tmp_path / "pop")
    with pytest.raises(Forbidden):
        pki.rotate(exchange_pki, pki.Principal("node", TAX), csr)
    # without a client certificate the service refuses a rotation
    async with enrol_service(exchange_pki) as url:
        import aiohttp

        from exchange.node.enrol import _verified
        ctx = _verified((exchange_pki / "ca.crt").read_bytes())
        async with aiohttp.ClientSession() as s, s.post(
                url + "/v1/enrol/rotate", json={"request": csr.decode()}, ssl=ctx) as resp:
            assert resp.status == 401
            assert resp.headers["Problem-Code"] == "no_certificate"


# -- operators ----------------------------------------------------------------------------------


async def test_operator_views_are_refused_to_nodes_and_node_actions_to_operators(
        tmp_path: Path, exchange_pki: Path) -> None:
    join_offline(exchange_pki, tmp_path / "op", OPERATOR, role="operator")
    for node in (POP, TAX):
        pki.enroll(exchange_pki, node)
    config = msgspec.structs.replace(_config(exchange_pki, tmp_path / "data"), agreements=[
        Agreement(subscriber=TAX, dataset="population", purpose="tax residence")])
    _, runner, url = await start_broker(config)
    tax = NodeConfig(node_id=TAX, pki_dir=str(exchange_pki), brokers=[url])
    op = NodeConfig(node_id=OPERATOR, node_dir=str(tmp_path / "op"), brokers=[url])
    try:
        async with Node(NodeConfig(node_id=POP, pki_dir=str(exchange_pki),
                                   brokers=[url])) as p:
            await p.publish("population", [Record(r) for r in people(2)])
            bad = {**people(1, seed=9)[0], "id": "123"}
            await p.publish("population", [Record(bad)])
        async with Node(tax) as t:
            t.subscribe("population", "watched", _ignore)
            for path in ("/metrics", "/v1/quality", "/v1/quality/population",
                         f"/v1/dead-letters?node={POP}"):
                with pytest.raises(Forbidden) as err:
                    await t.get_json(path)
                assert err.value.code == "operator_only", path
            own = await t.get_json("/v1/subscriptions")
            assert {r["node"] for r in own} <= {TAX}
        async with Node(op) as o:
            text = (await o.get_bytes("/metrics")).decode()
            assert "exchange_gate_records" in text
            assert "population" in (await o.get_json("/v1/quality"))["datasets"]
            subs = await o.get_json("/v1/subscriptions")
            assert (TAX, "watched") in {(r["node"], r["name"]) for r in subs}
            letters = await o.dead_letters(node=POP)
            assert letters and letters[0]["code"]
            # an operator is not a node: it neither publishes nor subscribes
            with pytest.raises(Forbidden) as err:
                await o.publish("population", [Record(people(1, seed=8)[0])])
            assert err.value.code == "not_a_node"
    finally:
        await runner.cleanup()
    # every operator request is on record with the operator's name; no node request is
    actions = [json.loads(line) for line in
               (tmp_path / "data" / "operator-actions.log").read_text().splitlines()]
    assert {a["operator"] for a in actions} == {OPERATOR}
    # (the refused publish first asked which schema versions the broker serves)
    assert ["/metrics", "/v1/quality", "/v1/subscriptions",
            f"/v1/dead-letters?after=0&limit=100&node={POP}",
            "/v1/schemas/population/versions"] == [
        a["target"] for a in actions if a["method"] == "GET"]
    assert [a["status"] for a in actions if a["method"] == "POST"] == [403]
    assert (tmp_path / "data" / "operator-actions.log").stat().st_mode & 0o777 == 0o600


async def _ignore(d: Delivery) -> None:
    return None


# -- where private keys live --------------------------------------------------------------------


def _private_keys_in(path: Path) -> list[bytes]:
    """The public keys (SPKI DER) of every private key stored in ``path``, in the encodings
    the exchange writes (PEM PKCS#8, base64 Ed25519 seeds) and raw seeds."""
    data = path.read_bytes()
    found: list[bytes] = []
    if b"PRIVATE KEY" in data:
        for block in data.split(b"-----END")[:-1]:
            start = block.find(b"-----BEGIN")
            pem = block[start:] + b"-----END PRIVATE KEY-----\n"
            try:
                key = serialization.load_pem_private_key(pem, password=None)
            except ValueError:
                continue
            found.append(_spki(key.public_key()))
    for token in data.split():
        try:
            raw = base64.b64decode(token, validate=True)
        except ValueError:
            continue
        if len(raw) == 32:
            found.append(_spki(ed25519.Ed25519PrivateKey.from_private_bytes(raw).public_key()))
    return found


def _spki(public: Any) -> bytes:
    return bytes(public.public_bytes(serialization.Encoding.DER,
                                     serialization.PublicFormat.SubjectPublicKeyInfo))


def _owned_keys(directory: Path) -> set[bytes]:
    """Public keys of what a directory's certificates certify."""
    out = set()
    for cert_file in directory.rglob("*.crt"):
        if cert_file.name == "ca.crt":
            continue  # the CA's, pinned here: not this directory's key
        for cert in x509.load_pem_x509_certificates(cert_file.read_bytes()):
            out.add(_spki(cert.public_key()))
    return out


async def test_no_private_key_is_written_outside_its_owners_directory(
        tmp_path: Path, exchange_pki: Path) -> None:
    owners = {"population": tmp_path / "pop", "tax": tmp_path / "tax",
              "operator": tmp_path / "op"}
    join_offline(exchange_pki, owners["population"], POP)
    join_offline(exchange_pki, owners["operator"], OPERATOR, role="operator")
    party.create(owners["tax"], TAX)
    async with enrol_service(exchange_pki) as url:
        await enrol.enroll(owners["tax"], url, pki.invite(exchange_pki, TAX))
        await enrol.rotate(owners["population"], url)
    _, runner, burl = await start_broker(_config(exchange_pki, tmp_path / "data"))
    try:
        async with Node(NodeConfig(node_id=POP, node_dir=str(owners["population"]),
                                   brokers=[burl])) as p:
            await p.publish("population", [Record(r) for r in people(2)])
    finally:
        await runner.cleanup()

    ca_dir = pki.default_ca_dir(exchange_pki)
    homes: dict[bytes, Path] = {}
    for directory in [*owners.values(), ca_dir, exchange_pki / "broker",
                      *(exchange_pki / "nodes" / n for n in (LAND, VEHICLE))]:
        homes.update(dict.fromkeys(_owned_keys(directory), directory))
    ca_key = _spki(x509.load_pem_x509_certificate(
        (exchange_pki / "ca.crt").read_bytes()).public_key())
    homes[ca_key] = ca_dir
    seen = 0
    for f in tmp_path.rglob("*"):
        if not f.is_file():
            continue
        for public in _private_keys_in(f):
            home = homes.get(public)
            if home is None:
                continue  # 32 random-looking bytes that are nobody's key (salts, hashes)
            seen += 1
            assert f.is_relative_to(home), f"{f} holds a private key of {home}"
    # every owner's keys were found where they belong (the scan is not blind)
    assert seen >= 2 * len(owners) + 1
    # the agencies' own keys appear nowhere in what the CA or the broker keep
    for name in ("population", "tax", "operator"):
        own = _owned_keys(owners[name])
        for f in [*exchange_pki.rglob("*"), *ca_dir.rglob("*"), *(tmp_path / "data").rglob("*")]:
            if f.is_file():
                assert not own & set(_private_keys_in(f)), f


async def test_a_revoked_operator_loses_its_open_connection(
        tmp_path: Path, exchange_pki: Path) -> None:
    join_offline(exchange_pki, tmp_path / "op", OPERATOR, role="operator")
    for node in (POP, TAX):
        pki.enroll(exchange_pki, node)
    broker, runner, url = await start_broker(_config(exchange_pki, tmp_path / "data"))
    try:
        async with Node(NodeConfig(node_id=OPERATOR, node_dir=str(tmp_path / "op"),
                                   brokers=[url])) as o:
            assert await o.get_json("/v1/subscriptions") == []
            pki.revoke(exchange_pki, OPERATOR, role="operator")
            broker.reload()
            # the kept-alive connection was verified before the revocation: the reload closes
            # it, and a new one is refused at the handshake, which the SDK names as such
            for _ in range(2):
                with pytest.raises(AuthError) as refused:
                    await o.get_json("/v1/subscriptions")
                assert refused.value.code == "certificate_refused"
    finally:
        await runner.cleanup()


async def test_a_revoked_certificate_rotates_nothing_however_long_the_service_runs(
        tmp_path: Path, exchange_pki: Path) -> None:
    """The enrolment service read the CRL when it started; a revocation after that still
    stops a rotation asked with the revoked certificate."""
    join_offline(exchange_pki, tmp_path / "pop", POP)
    async with enrol_service(exchange_pki) as url:
        pki.revoke(exchange_pki, POP, reason=x509.ReasonFlags.key_compromise)
        with pytest.raises(AuthError) as err:
            await enrol.rotate(tmp_path / "pop", url)
        assert err.value.code == "revoked"
    assert [e["code"] for e in ca_log(exchange_pki) if e["event"] == "rotate_refused"] == [
        "revoked"]


async def test_the_enrolment_service_cuts_off_a_body_sent_too_slowly(exchange_pki: Path
                                                                     ) -> None:
    service = EnrolService(exchange_pki, body_timeout_s=0.5)
    runner = web.AppRunner(create_app(service), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=service_ssl_context(service))
    await site.start()
    port = runner.addresses[0][1]
    try:
        from exchange.node.enrol import _verified

        ctx = _verified((exchange_pki / "ca.crt").read_bytes())
        reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=ctx,
                                                       server_hostname="127.0.0.1")
        writer.write(b"POST /v1/enrol HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: "
                     b"application/json\r\nContent-Length: 1000\r\n\r\n{\"token\"")
        await writer.drain()
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        assert head.startswith(b"HTTP/1.1 408") and b"body_too_slow" in head
        writer.close()
        with contextlib.suppress(ConnectionError, ssl.SSLError):
            await writer.wait_closed()
    finally:
        await runner.cleanup()
