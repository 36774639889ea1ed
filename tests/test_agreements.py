"""Agreements as signed, logged data: the pure lifecycle, then a real broker: request, approval,
countersignature, delivery, revocation and expiry closing live subscriptions, and every
refusal on the way."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
from pathlib import Path
from typing import Any

import msgspec
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from exchange import audit
from exchange.clock import FakeClock
from exchange.core import agreements
from exchange.core.agreements import AgreementRecord, Request
from exchange.core.errors import (
    AuthError,
    ConflictError,
    ExchangeError,
    Forbidden,
    IntegrityError,
)
from exchange.core.signing import key_id
from exchange.node import Delivery, Node, Record
from tests.conftest import (
    OUTSIDER,
    OWNERS,
    Env,
    broker_config,
    make_pki,
    people,
    start_broker,
)

POP, TAX = OWNERS["population"], OWNERS["tax"]
OPS = "vn.gov.ndc.ops.test"
AT = "2026-11-22T09:00:00Z"

# -- the pure lifecycle ------------------------------------------------------------------------

KEYS = {("node", n): Ed25519PrivateKey.generate() for n in (POP, TAX, OUTSIDER)}
KEYS[("operator", OPS)] = Ed25519PrivateKey.generate()


def _keys(role: str, who: str, kid: str) -> Any:
    key = KEYS.get((role, who))
    return key.public_key() if key is not None and key_id(key.public_key()) == kid else None


def _requested(countersign: bool = True, **kw: Any) -> AgreementRecord:
    req = Request(subscriber=OUTSIDER, dataset="population", owner=POP, groups=["residence"],
                  purpose="address checks", legal_basis="Decree 13/2023 Art. 17",
                  requested_at=AT, expires="2027-11-22T09:00:00Z", nonce="ab" * 8, **kw)
    return AgreementRecord(id=agreements.request_id(req), request=req,
                           requested=agreements.sign_request(KEYS[("node", OUTSIDER)], req,
                                                             at=AT),
                           countersign=countersign)


def _decide(record: AgreementRecord, action: agreements.Action, role: str, who: str
            ) -> agreements.Decision:
    return agreements.decide(KEYS[(role, who)], record, action, by=who,
                             role="operator" if role == "operator" else "node", at=AT)


def test_a_core_agreement_needs_the_owner_then_an_operator() -> None:
    r = _requested()
    r = agreements.apply(r, _decide(r, "approve", "node", POP), owner=POP)
    assert r.state == "approved"
    r = agreements.apply(r, _decide(r, "countersign", "operator", OPS), owner=POP)
    assert r.state == "active"
    agreements.verify(r, _keys, owner=POP)
    r = agreements.apply(r, _decide(r, "revoke", "operator", OPS), owner=POP)
    assert r.state == "revoked"
    agreements.verify(r, _keys, owner=POP)
    # an agreement on data classified "other" is active on the owner's approval alone
    o = _requested(countersign=False)
    assert agreements.apply(o, _decide(o, "approve", "node", POP), owner=POP).state == "active"


def test_each_decision_is_its_signers_to_make_from_the_states_it_may() -> None:
    r = _requested()
    with pytest.raises(Forbidden) as err:
        agreements.apply(r, _decide(r, "approve", "node", TAX), owner=POP)
    assert err.value.code == "not_owner"
    with pytest.raises(Forbidden) as err:
        agreements.apply(r, _decide(r, "approve", "operator", OPS), owner=POP)
    assert err.value.code == "not_owner"
    with pytest.raises(Forbidden) as err:
        agreements.apply(r, _decide(r, "countersign", "node", POP), owner=POP)
    assert err.value.code == "operator_only"
    with pytest.raises(ConflictError) as conflict:  # countersigned before the owner approved
        agreements.apply(r, _decide(r, "countersign", "operator", OPS), owner=POP)
    assert conflict.value.code == "agreement_state"
    with pytest.raises(Forbidden):
        agreements.apply(r, _decide(r, "revoke", "node", OUTSIDER), owner=POP)
    rejected = agreements.apply(r, _decide(r, "reject", "node", POP), owner=POP)
    with pytest.raises(ConflictError):
        agreements.apply(rejected, _decide(rejected, "approve", "node", POP), owner=POP)


def test_verification_catches_every_altered_part() -> None:
    r = _requested()
    r = agreements.apply(r, _decide(r, "approve", "node", POP), owner=POP)
    wider = msgspec.structs.replace(r, request=msgspec.structs.replace(
        r.request, groups=["residence", "identity"]))
    with pytest.raises(ExchangeError):  # the id no longer matches, and the signature fails
        agreements.verify(wider, _keys, owner=POP)
    forged_state = msgspec.structs.replace(r, state="active")
    with pytest.raises(ExchangeError) as err:
        agreements.verify(forged_state, _keys, owner=POP)
    assert err.value.code == "bad_agreement"
    # an approval lifted from one agreement onto another does not verify
    other = _requested(min_completeness=0.5)
    lifted = msgspec.structs.replace(other, decisions=list(r.decisions), state="approved")
    with pytest.raises(IntegrityError):
        agreements.verify(lifted, _keys, owner=POP)
    unknown = agreements.decide(Ed25519PrivateKey.generate(), _requested(), "approve", by=POP,
                                role="node", at=AT)
    with pytest.raises(AuthError) as auth:
        agreements.verify(agreements.apply(_requested(), unknown, owner=POP), _keys, owner=POP)
    assert auth.value.code == "unknown_signer"


def test_expiry_is_read_from_the_time() -> None:
    r = _requested(countersign=False)
    r = agreements.apply(r, _decide(r, "approve", "node", POP), owner=POP)
    assert agreements.state_at(r, dt.datetime(2027, 11, 22, 8, 59, tzinfo=dt.UTC)) == "active"
    assert agreements.state_at(r, dt.datetime(2027, 11, 22, 9, 0, tzinfo=dt.UTC)) == "expired"


# -- on a real broker ------------------------------------------------------------------------


async def _collect(got: list[Delivery], n: int, done: asyncio.Event) -> Any:
    async def handler(d: Delivery) -> None:
        got.append(d)
        if len(got) >= n:
            done.set()
    return handler


async def test_lifecycle_on_the_broker_and_every_refusal(env: Env) -> None:
    async with Node(env.node_config(POP)) as pop, Node(env.node_config(OUTSIDER)) as out, \
            Node(env.node_config(TAX)) as tax, Node(env.operator_config()) as ops:
        await pop.publish("population", [Record(p) for p in people(3)])
        # nothing yet: the outsider has no agreement
        refused = out.subscribe("population", "early", _ignore)
        with pytest.raises(Forbidden) as err:
            await asyncio.wait_for(_task(refused), 5)
        assert err.value.code == "no_agreement"

        asked = await out.request_agreement("population", purpose="address checks",
                                            legal_basis="Decree 13/2023/NĐ-CP Art. 17",
                                            groups=["residence"], days=30)
        assert asked["state"] == "requested" and asked["countersign"] is True
        agreement_id = asked["id"]
        # a node that is not the owner approving: the subscriber itself is refused, and a
        # third node does not even learn the agreement exists
        with pytest.raises(Forbidden) as err:
            await out.decide(agreement_id, "approve")
        assert err.value.code == "not_owner"
        with pytest.raises(ExchangeError) as hidden:
            await tax.decide(agreement_id, "approve")
        assert hidden.value.code == "unknown_agreement"
        record = msgspec.convert({k: asked[k] for k in ("id", "request", "requested",
                                                       "decisions", "countersign")},
                                 AgreementRecord)
        forged = agreements.decide(tax.client.identity.signing_key, record, "approve", by=TAX,
                                   role="node", at=AT)
        with pytest.raises(ExchangeError) as hidden:
            await tax.client.post_json(f"/v1/agreements/{agreement_id}/decisions", forged)
        assert hidden.value.code == "unknown_agreement"
        # an operator countersigning before the owner approved
        with pytest.raises(ConflictError):
            await ops.decide(agreement_id, "countersign")
        approved = await pop.decide(agreement_id, "approve")
        assert approved["state"] == "approved"
        # a core dataset is not read on the owner's approval alone
        early = out.subscribe("population", "approved-only", _ignore)
        with pytest.raises(Forbidden):
            await asyncio.wait_for(_task(early), 5)

        active = await ops.decide(agreement_id, "countersign")
        assert active["state"] == "active" and active["version"] == 3
        got: list[Delivery] = []
        three = asyncio.Event()
        sub = out.subscribe("population", "addresses", await _collect(got, 3, three))
        await asyncio.wait_for(three.wait(), 10)
        assert {d.key for d in got} == {p["id"] for p in people(3)}
        looked = await out.lookup("population", people(3)[0]["id"])  # while it is active
        assert set(looked.data) == {"permanent_address"}
        # projected to what was asked for: residence, nothing else
        assert all(set(d.data) == {"permanent_address"} and "identity" in d.withheld
                   for d in got)

        # the owner revokes: the live subscription is closed within a second
        revoked = await pop.decide(agreement_id, "revoke", reason="purpose fulfilled")
        assert revoked["state"] == "revoked"
        with pytest.raises(Forbidden) as err:
            await asyncio.wait_for(_task(sub), 1.0)
        assert err.value.code == "no_agreement"
        again = out.subscribe("population", "addresses", _ignore)
        with pytest.raises(Forbidden):
            await asyncio.wait_for(_task(again), 5)
        with pytest.raises(Forbidden) as err:
            await out.lookup("population", people(3)[0]["id"])
        assert err.value.code == "no_agreement"
        # visibility: the subscriber and the owner see it, another node does not
        assert [a["id"] for a in await out.agreements()] == [agreement_id]
        assert agreement_id in [a["id"] for a in await pop.agreements(state="revoked")]
        assert agreement_id not in [a["id"] for a in await tax.agreements()]
        with pytest.raises(ExchangeError) as nf:
            await tax.agreement(agreement_id)
        assert nf.value.code == "unknown_agreement"
        # a request signed by someone else than the caller is refused
        with pytest.raises(Forbidden):
            await tax.client.post_json("/v1/agreements", {
                "request": asked["request"], "signature": asked["requested"]})

    # every transition is a record of the agreement dataset, in the log
    head = await env.broker.store.head("agreement")
    rows = await env.broker.store.read("agreement", -1, 10)
    assert [r.version for r in rows] == [1, 2, 3, 4] and rows[-1].seq == head


async def test_the_audit_checks_every_transition(env: Env) -> None:
    await test_lifecycle_on_the_broker_and_every_refusal(env)
    result = audit.audit_data(env.data_dir)
    assert result.ok and result.agreements == 4, result


async def _ignore(d: Delivery) -> None:
    return None


def _task(sub: Any) -> asyncio.Task[None]:
    assert sub.task is not None
    task: asyncio.Task[None] = sub.task
    return task


async def test_expiry_closes_the_live_subscription(tmp_path: Path) -> None:
    clock = FakeClock(start=dt.datetime(2026, 11, 22, 9, tzinfo=dt.UTC).timestamp())
    pki_dir = make_pki(tmp_path)
    config = broker_config(pki_dir, tmp_path / "data")
    broker, runner, url = await start_broker(config, clock=clock)
    try:
        def cfg(node: str) -> Any:
            from exchange.node import NodeConfig

            return NodeConfig(node_id=node, pki_dir=str(pki_dir), brokers=[url],
                              linger_s=0.0)

        async with Node(cfg(POP), clock=clock) as pop, \
                Node(cfg(OUTSIDER), clock=clock) as out, \
                Node(msgspec.structs.replace(cfg(POP), node_id="vn.gov.ndc.ops.test",
                                             pki_dir="", node_dir=str(tmp_path / "operator")),
                     clock=clock) as ops:
            await pop.publish("population", [Record(p) for p in people(2)])
            a = await out.request_agreement("population", purpose="a short look",
                                            legal_basis="Decree 13/2023 Art. 17", days=1)
            await pop.decide(a["id"], "approve")
            await ops.decide(a["id"], "countersign")
            got: list[Delivery] = []
            two = asyncio.Event()
            sub = out.subscribe("population", "short", await _collect(got, 2, two))
            await asyncio.wait_for(two.wait(), 10)
            await clock.advance(86_400 + 1)
            with pytest.raises(Forbidden) as err:
                await asyncio.wait_for(_task(sub), 5)
            assert err.value.code == "no_agreement"
            assert (await out.agreement(a["id"]))["state"] == "expired"
            with pytest.raises(Forbidden):
                await out.lookup("population", people(2)[0]["id"])
            with pytest.raises(ConflictError):  # an expired agreement is not revived
                await ops.decide(a["id"], "countersign")
    finally:
        with contextlib.suppress(Exception):
            await runner.cleanup()
        del broker


async def test_the_cli_walks_the_lifecycle_and_reads_the_catalogue(env: Env, capsys: Any
                                                                   ) -> None:
    from exchange.cli import main

    def run(*args: str) -> Any:
        return asyncio.to_thread(main, [*args, "--broker", env.url, "--json"])

    as_out = ["--pki", str(env.pki_dir), "--node", OUTSIDER]
    as_pop = ["--pki", str(env.pki_dir), "--node", POP]
    as_ops = ["--as", str(env.operator_dir)]
    assert await run("agreement", "request", "tax", "--purpose", "credit checks",
                     "--legal-basis", "Law 91/2025/QH15", "--groups", "registration",
                     "--days", "10", *as_out) == 0
    asked = msgspec.json.decode(capsys.readouterr().out)
    assert await run("agreement", "approve", asked["id"], *as_pop) == 1
    assert "unknown_agreement" in capsys.readouterr().err  # not population's to see or decide
    as_tax = ["--pki", str(env.pki_dir), "--node", TAX]
    assert await run("agreement", "approve", asked["id"], *as_tax) == 0
    assert msgspec.json.decode(capsys.readouterr().out)["state"] == "approved"
    assert await run("agreement", "approve", asked["id"], *as_ops) == 0  # the countersignature
    shown = msgspec.json.decode(capsys.readouterr().out)
    assert shown["state"] == "active"
    assert [d["action"] for d in shown["decisions"]] == ["approve", "countersign"]
    assert await run("agreement", "list", "--state", "active", *as_ops) == 0
    assert asked["id"] in [a["id"] for a in msgspec.json.decode(capsys.readouterr().out)]

    assert await run("catalog", *as_out) == 0
    catalog = {c["identifier"]: c for c in msgspec.json.decode(capsys.readouterr().out)}
    assert set(catalog) == {"population", "tax", "land", "vehicle"}
    tax = catalog["tax"]
    assert tax["publisher"] == TAX and tax["classification"] == "core"
    assert tax["countersignature_required"] and tax["title"]["vi"]
    assert tax["agreements"]["signed"] == 1
    assert tax["distributions"]["registration"][0] == "tax_id"
    assert tax["conformsTo"] == [f"{env.url}/v1/schemas/tax/1"] and tax["version"] == 1
    # what every subscriber sees whatever it is granted: the key, said plainly
    assert tax["key"] == {"fields": ["tax_id"], "always_disclosed": True}
    assert catalog["population"]["key"]["fields"] == ["id"]
    # the text forms print without error too
    assert await asyncio.to_thread(main, ["catalog", "tax", "--broker", env.url, *as_out]) == 0
    assert "classification  core" in capsys.readouterr().out
    assert await asyncio.to_thread(main, ["agreement", "show", asked["id"], "--broker", env.url,
                                          *as_out]) == 0
    assert "countersign" in capsys.readouterr().out


async def test_the_audit_names_a_forged_agreement_entry(env: Env) -> None:
    """A dishonest broker can log an agreement the owner never approved; the audit finds it
    by the signatures inside the entry, not only the broker's own."""
    async with Node(env.node_config(OUTSIDER)) as out, Node(env.node_config(POP)) as pop:
        asked = await out.request_agreement("population", purpose="address checks",
                                            legal_basis="Decree 13/2023 Art. 17")
        await pop.decide(asked["id"], "approve")
    honest = audit.audit_data(env.data_dir)
    assert honest.ok and honest.agreements == 2
    entry = env.broker.book.get(asked["id"])
    stranger = Ed25519PrivateKey.generate()
    forged = agreements.decide(stranger, entry.record, "countersign", by=OPS, role="operator",
                               at=AT)
    record = msgspec.structs.replace(entry.record, decisions=[*entry.record.decisions, forged],
                                     state="active")
    await env.broker.book._append(record, entry.version + 1)  # as a dishonest broker would
    result = audit.audit_data(env.data_dir)
    assert not result.ok and result.problem == "agreement_invalid"
    assert result.first_bad_seq == await env.broker.store.head("agreement")


async def test_a_request_names_the_owner_it_asks_and_each_group_once(env: Env) -> None:
    async with Node(env.node_config(OUTSIDER)) as out:
        now = "2026-11-22T09:00:00Z"
        for owner, groups, code in ((TAX, ["residence"], "bad_agreement"),
                                    (POP, ["residence", "residence"], "bad_agreement")):
            req = Request(subscriber=OUTSIDER, dataset="population", owner=owner,
                          groups=groups, purpose="address checks", legal_basis="Decree 13",
                          requested_at=now, expires="2099-01-01T00:00:00Z", nonce="cd" * 8)
            signed = agreements.sign_request(out.client.identity.signing_key, req, at=now)
            with pytest.raises(ExchangeError) as err:
                await out.client.post_json("/v1/agreements", {"request": req,
                                                              "signature": signed})
            assert err.value.code == code and err.value.status == 400
