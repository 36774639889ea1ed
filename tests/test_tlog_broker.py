"""The transparency log end to end: checkpoints, proofs, node-side checks, and the audit of a
real data directory after tampering."""

from __future__ import annotations

import asyncio
import base64
import json
import shutil
import sqlite3
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from exchange import audit, pki
from exchange.cli import main
from exchange.core import merkle, tlog
from exchange.core.errors import IntegrityError
from exchange.node import Delivery, Node, Record
from exchange.sim.generate import Generator
from tests.conftest import OWNERS, TODAY, Env


async def _publish(env: Env, batches: int, per: int, seed: int = 7) -> list[int]:
    people = Generator(seed, today=TODAY).population(batches * per)
    sizes = []
    async with Node(env.node_config(OWNERS["population"])) as pop:
        for b in range(batches):
            r = await pop.publish("population", [Record(p) for p in
                                                 people[b * per:(b + 1) * per]])
            assert r.accepted == per
            sizes.append((await env.broker.tlog.checkpoint()).size)
    return sizes


async def test_receipts_checkpoints_and_proofs(env: Env) -> None:
    people = Generator(3, today=TODAY).population(20)
    async with Node(env.node_config(OWNERS["population"])) as pop:
        r1 = await pop.publish("population", [Record(p) for p in people[:8]])
        r2 = await pop.publish("population", [Record(p) for p in people[8:]])
        cp = await pop.tlog.refresh()
        assert cp.size == 20
        # every published record is provably in the log
        for seq in (0, 7, 8, 19):
            proof = await pop.get_json(f"/v1/log/proof/inclusion?seq={seq}&size=20")
            entries = await pop.get_json(f"/v1/log/entries?start={seq}&end={seq + 1}")
            leaf = tlog.entry_leaf(seq, "population", OWNERS["population"],
                                   base64.b64decode(entries[0]["digest"]),
                                   base64.b64decode(entries[0]["batch_root"]),
                                   entries[0]["accepted_us"])
            merkle.verify_inclusion(leaf, seq, 20, [base64.b64decode(p) for p in proof["proof"]],
                                    cp.root)
        for bad in ("seq=20&size=20", "seq=0&size=21", "seq=x&size=1"):
            with pytest.raises(Exception) as e:
                await pop.get_json(f"/v1/log/proof/inclusion?{bad}")
            assert getattr(e.value, "code", "") in ("bad_range", "beyond_log", "bad_query")
    assert r1.accepted == 8 and r2.accepted == 12


async def test_receipt_promise_is_kept_by_the_next_checkpoint(env: Env) -> None:
    people = Generator(4, today=TODAY).population(10)
    async with Node(env.node_config(OWNERS["population"])) as pop:
        first = await pop.publish("population", [Record(p) for p in people[:4]])
        await pop.publish("population", [Record(p) for p in people[4:]])
        cp = await pop.tlog.refresh()
        (signed,) = first.receipts
        promise = signed.receipt
        assert (promise.first_seq, promise.last_seq, promise.log_size) == (0, 3, 4)
        proof = await pop.get_json(f"/v1/log/proof/consistency?from={promise.log_size}"
                                   f"&to={cp.size}")
    merkle.verify_consistency(promise.log_size, cp.size, promise.log_root, cp.root,
                              [base64.b64decode(p) for p in proof["proof"]])


async def test_subscriber_checks_inclusion_and_consistency(env: Env) -> None:
    people = Generator(5, today=TODAY).population(30)
    got: list[Delivery] = []
    done = asyncio.Event()

    async def handler(d: Delivery) -> None:
        got.append(d)
        if len(got) == 30:
            done.set()

    async with Node(env.node_config(OWNERS["population"])) as pop, \
            Node(env.node_config(OWNERS["tax"], verify_inclusion=1.0,
                                 checkpoint_file=str(env.root / "tax.checkpoint"))) as tax:
        await pop.publish("population", [Record(p) for p in people[:10]])
        first = await tax.tlog.refresh()
        tax.subscribe("population", "all", handler)
        await pop.publish("population", [Record(p) for p in people[10:]])
        await asyncio.wait_for(done.wait(), 10)
        await tax.tlog.settle()
        assert tax.tlog.trusted is not None and tax.tlog.trusted.size >= first.size
        assert tax.tlog.included + len(tax.tlog.failures) >= 1
        assert not tax.tlog.failures and not tax.tlog.evidence
        assert (env.root / "tax.checkpoint").read_text().startswith(tax.tlog.trusted.origin)


async def test_split_view_is_reported_and_kept_as_evidence(env: Env) -> None:
    await _publish(env, 2, 5)
    ident = pki.load_broker_identity(env.pki_dir)
    async with Node(env.node_config(OWNERS["tax"],
                                    checkpoint_file=str(env.root / "cp"))) as tax:
        trusted = await tax.tlog.refresh()
        key = tlog.NoteKey.from_private(trusted.origin, ident.signing_key)
        # the broker (or whoever holds its key) shows this node a different history
        forked = tlog.sign_checkpoint(key, trusted.origin, trusted.size, b"\x11" * 32)
        with pytest.raises(IntegrityError) as e:
            await tax.tlog.observe(tlog.open_checkpoint(key, forked.note, trusted.origin))
        assert e.value.code == "split_view"
        assert tax.tlog.evidence == [(trusted.note, forked.note)]
        assert tax.tlog.trusted == trusted  # the node keeps trusting what it had
        shorter = tlog.sign_checkpoint(key, trusted.origin, 4, b"\x22" * 32)
        with pytest.raises(IntegrityError):
            await tax.tlog.observe(shorter)
        assert (env.root / "cp.split-view").is_file()


async def _stopped_data_dir(env: Env) -> Path:
    await _publish(env, 3, 10)
    await env.runner.cleanup()  # a final checkpoint is signed on shutdown
    return env.data_dir


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def _sql(d: Path, *statements: str) -> None:
    db = sqlite3.connect(d / "exchange.sqlite")
    for s in statements:
        db.execute(s)
    db.commit()
    db.close()


async def test_audit_detects_each_tampering_at_the_right_seq(env: Env, tmp_path: Path) -> None:
    data = await _stopped_data_dir(env)
    clean = audit.audit_data(data)
    assert clean.ok and clean.entries == 30 and clean.checkpoints >= 3 and clean.batches == 3

    # one byte of one stored record
    d = _copy(data, tmp_path / "byte")
    db = sqlite3.connect(d / "exchange.sqlite")
    (body,) = db.execute("SELECT body FROM records WHERE seq=13").fetchone()
    i = body.index(b"Nguy") if b"Nguy" in body else len(body) // 2
    changed = bytearray(body)
    changed[i] ^= 0x01
    db.execute("UPDATE records SET body=? WHERE seq=13", (bytes(changed),))
    db.commit()
    db.close()
    r = audit.audit_data(d)
    assert (r.ok, r.first_bad_seq, r.problem) == (False, 13, "record_changed")

    d = _copy(data, tmp_path / "missing")
    _sql(d, "DELETE FROM records WHERE seq=21")
    r = audit.audit_data(d)
    assert (r.first_bad_seq, r.problem) == (21, "record_missing")

    d = _copy(data, tmp_path / "truncated")
    _sql(d, "DELETE FROM records WHERE seq>=25",
         "UPDATE tiles SET hashes=substr(hashes, 1, 25 * 32) WHERE level=0 AND idx=0")
    r = audit.audit_data(d)
    assert (r.first_bad_seq, r.problem) == (25, "log_truncated")

    d = _copy(data, tmp_path / "forged")
    db = sqlite3.connect(d / "exchange.sqlite")
    size, note = db.execute("SELECT size, note FROM checkpoints ORDER BY size DESC").fetchone()
    origin = note.split("\n")[0]
    other = tlog.NoteKey.from_private(origin, Ed25519PrivateKey.generate())
    cp = tlog.Checkpoint.parse(note.split("\n\n")[0] + "\n")
    db.execute("UPDATE checkpoints SET note=? WHERE size=?",
               (tlog.sign_checkpoint(other, origin, cp.size, cp.root).note, size))
    db.commit()
    db.close()
    r = audit.audit_data(d)
    assert r.problem == "checkpoint_forged"

    # a rewritten digest and log leaf (the attacker recomputed them) still breaks the checkpoint
    d = _copy(data, tmp_path / "rewritten")
    db = sqlite3.connect(d / "exchange.sqlite")
    db.execute("UPDATE records SET accepted_at=accepted_at+1 WHERE seq=5")
    db.commit()
    db.close()
    r = audit.audit_data(d)
    assert (r.first_bad_seq, r.problem) == (5, "record_changed")


async def test_audit_cli_offline_and_online(env: Env, capsys: pytest.CaptureFixture[str]
                                            ) -> None:
    await _publish(env, 2, 6)
    # online, against the running broker, saving the checkpoint for next time
    saved = env.root / "saved.checkpoint"
    rc = await asyncio.to_thread(main, ["audit", "--url", env.url, "--pki", str(env.pki_dir),
                                        "--node", OWNERS["tax"], "--json",
                                        "--save-checkpoint", str(saved)])
    out = json.loads(capsys.readouterr().out)
    assert rc == 0 and out["ok"] and out["entries"] == 12
    await _publish(env, 1, 3, seed=8)
    rc = await asyncio.to_thread(main, ["audit", "--url", env.url, "--pki", str(env.pki_dir),
                                        "--node", OWNERS["tax"], "--json",
                                        "--from-checkpoint", str(saved)])
    out = json.loads(capsys.readouterr().out)
    assert rc == 0 and out["entries"] == 15 and out["checkpoints"] == 2
    await env.runner.cleanup()
    # the broker is gone: "could not check" (exit 2), never a verdict on the log
    rc = await asyncio.to_thread(main, ["audit", "--url", env.url, "--pki", str(env.pki_dir),
                                        "--node", OWNERS["tax"], "--json",
                                        "--from-checkpoint", str(saved)])
    assert rc == 2 and "inconsistent" not in capsys.readouterr().out
    rc = main(["audit", "--data", str(env.data_dir), "--pki", str(env.pki_dir), "--json"])
    out = json.loads(capsys.readouterr().out)
    assert rc == 0 and out == {**out, "ok": True, "entries": 15, "first_bad_seq": None,
                               "problem": None}
    _sql(env.data_dir, "DELETE FROM records WHERE seq=3")
    assert main(["audit", "--data", str(env.data_dir)]) == 1
    assert "FAILED at seq 3: record_missing" in capsys.readouterr().out


async def test_audit_catches_tampering_disguised_as_an_erasure(env: Env, tmp_path: Path) -> None:
    """Erasing a group keeps its commitment and drops its plaintext; changing the plaintext and
    dropping the salt is not an erasure, and the audit says so."""
    import msgspec

    from exchange.core.ledger import StoredBody

    data = await _stopped_data_dir(env)
    d = _copy(data, tmp_path / "disguised")
    db = sqlite3.connect(d / "exchange.sqlite")
    (raw,) = db.execute("SELECT body FROM records WHERE seq=2").fetchone()
    body = msgspec.msgpack.decode(raw, type=StoredBody)
    salts = {g: s for g, s in body.salts.items() if g != "identity"}
    event = msgspec.structs.replace(body.event, data={**body.event.data,
                                                      "full_name": "Người Khác"})
    forged = msgspec.structs.replace(body, event=event, salts=salts)
    db.execute("UPDATE records SET body=? WHERE seq=2", (msgspec.msgpack.encode(forged),))
    db.commit()
    db.close()
    r = audit.audit_data(d)
    assert (r.first_bad_seq, r.problem) == (2, "record_changed")

    # a real erasure (plaintext and salt of a group removed together) still audits clean
    d = _copy(data, tmp_path / "erased")
    db = sqlite3.connect(d / "exchange.sqlite")
    (raw,) = db.execute("SELECT body FROM records WHERE seq=2").fetchone()
    body = msgspec.msgpack.decode(raw, type=StoredBody)
    identity = set(datasets_groups("identity"))
    event = msgspec.structs.replace(body.event, data={
        k: v for k, v in body.event.data.items() if k not in identity})
    erased = msgspec.structs.replace(body, event=event, salts={
        g: s for g, s in body.salts.items() if g != "identity"})
    db.execute("UPDATE records SET body=? WHERE seq=2", (msgspec.msgpack.encode(erased),))
    db.commit()
    db.close()
    assert audit.audit_data(d).ok


def datasets_groups(group: str) -> tuple[str, ...]:
    from exchange.core import datasets

    return datasets.get("population").groups[group]
