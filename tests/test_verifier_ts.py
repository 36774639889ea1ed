"""The second-language verifier (verifier-ts/, TypeScript on Node's standard library) agrees
with the Python core: on every conformance vector, and on what a live broker delivers to a
subscriber granted only some groups (records with paths, a whole batch, a checkpoint note, an
inclusion proof), each of which fails once one byte of it is changed.

Node.js and npm are required: without them this test fails, it does not skip."""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import aiohttp
import msgspec
import pytest
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from exchange import pki
from exchange.core import datasets, tlog
from exchange.node import Node, Record
from tests.conftest import OWNERS, Env, people

ROOT = Path(__file__).resolve().parent.parent
TS = ROOT / "verifier-ts"
CLI = TS / "dist" / "cli.js"
VECTORS = ROOT / "schemas" / "vectors"
POP, LAND = OWNERS["population"], OWNERS["land"]


def _tool(name: str) -> str:
    path = shutil.which(name)
    assert path, (f"`{name}` is not on PATH: the TypeScript verifier needs Node.js 18+ and npm "
                  "(install them; this test does not skip)")
    return path


@pytest.fixture(scope="module")
def cli() -> list[str]:
    """``node dist/cli.js``, built first when the sources are newer (``make test`` builds it
    too, through a stamp file)."""
    node = _tool("node")
    sources = [*(TS / "src").glob("*.ts"), TS / "package-lock.json", TS / "tsconfig.json"]
    if not CLI.exists() or CLI.stat().st_mtime < max(p.stat().st_mtime for p in sources):
        npm, npx = _tool("npm"), _tool("npx")
        if not (TS / "node_modules" / "typescript").exists():
            subprocess.run([npm, "ci", "--no-audit", "--no-fund", "--silent"], cwd=TS,
                           check=True, timeout=300)
        subprocess.run([npx, "tsc", "-p", "."], cwd=TS, check=True, timeout=300)
    return [node, str(CLI)]


def run(cli: list[str], *args: str | Path) -> tuple[int, dict[str, Any]]:
    out = subprocess.run([*cli, *map(str, args)], capture_output=True, text=True, timeout=120)
    assert out.stdout, out.stderr
    return out.returncode, json.loads(out.stdout)


def test_every_vector_valid_passes_and_tampered_fails_for_its_reason(cli: list[str]) -> None:
    rc, out = run(cli, "vectors", VECTORS)
    wrong = [r for r in out["results"] if not r["ok"]]
    assert not wrong, json.dumps(wrong, ensure_ascii=False, indent=1)
    assert rc == 0 and out["ok"]
    results = out["results"]
    assert len(results) >= 100
    assert any(r["valid"] for r in results) and any(not r["valid"] for r in results)
    for r in results:
        assert r["got"] == r["expected"] == (None if r["valid"] else r["expected"])
    kinds = {r["kind"] for r in results}
    assert kinds == {"canonical", "commitment", "record_digest", "batch", "record", "receipt",
                     "log_entry", "inclusion", "consistency", "checkpoint"}


def test_a_broken_vector_file_is_reported(cli: list[str], tmp_path: Path) -> None:
    content = json.loads((VECTORS / "records.json").read_text())
    content["vectors"][0]["record"]["event"]["data"]["status"] = "living"  # valid no more
    (tmp_path / "records.json").write_text(json.dumps(content, ensure_ascii=False))
    rc, out = run(cli, "vectors", tmp_path)
    assert rc == 1 and not out["ok"] and out["failed"] == 1
    bad = next(r for r in out["results"] if not r["ok"])
    assert bad["expected"] is None and bad["got"] == "signature_invalid"


def _flip(text: str) -> str:
    """``text`` (base64) with one bit of its first byte changed."""
    raw = bytearray(base64.b64decode(text))
    raw[0] ^= 1
    return base64.b64encode(bytes(raw)).decode()


async def test_what_a_live_broker_delivers_verifies_in_typescript(
        env: Env, cli: list[str], tmp_path: Path) -> None:
    ps = people(6, seed=17)
    # the land office is granted only the residence group of population
    async with Node(env.node_config(POP)) as node:
        result = await node.publish("population", [Record(p, version=1) for p in ps])
        assert result.accepted == 6, result
    connector = aiohttp.TCPConnector(ssl=env.ssl(LAND))
    async with aiohttp.ClientSession(env.url, connector=connector) as s:
        ws = await s.ws_connect("/v1/datasets/population/subscribe?name=ts&start=earliest"
                                "&encoding=json&paths=always")
        await ws.send_str('{"type":"credit","n":100}')
        batches: dict[int, dict[str, Any]] = {}
        records: list[dict[str, Any]] = []
        granted: list[str] = []
        while len(records) < 6:
            frame = json.loads((await ws.receive(timeout=10)).data)
            if frame["type"] == "hello":
                granted = frame["granted"]
                continue
            batches.update({b["id"]: b for b in frame["batches"]})
            records.extend(frame["records"])
        await ws.close()
        async with s.get("/v1/log/key") as resp:
            logkey = await resp.json()
        async with s.get("/v1/log/checkpoint") as resp:
            note = await resp.text()
        cp = tlog.Checkpoint.parse(note.rpartition("\n\n")[0] + "\n")
        assert cp.size >= 6
        seq = records[-1]["seq"]
        async with s.get(f"/v1/log/proof/inclusion?seq={seq}&size={cp.size}") as resp:
            proof = await resp.json()
    assert granted == ["residence"]
    assert all(set(r["withheld"]) and "full_name" not in r["event"]["data"] for r in records)

    groups = {g: list(f) for g, f in datasets.get("population").groups.items()}
    key = pki.load_signing_registry(env.pki_dir)[POP].public_bytes_raw()
    key_b64 = base64.b64encode(key).decode()
    (tmp_path / "publisher.key").write_text(key_b64)
    batch_id = records[0]["batch"]
    ref = batches[batch_id]

    def write(name: str, doc: dict[str, Any]) -> Path:
        path = tmp_path / name
        path.write_text(json.dumps(doc, ensure_ascii=False))
        return path

    # (1) each delivered record alone, with its path
    doc = {"groups": groups, "statement": ref["statement"], "signature": ref["signature"],
           "records": [r for r in records if r["batch"] == batch_id]}
    rc, out = run(cli, "record", write("records.json", doc), "--key", tmp_path / "publisher.key")
    assert (rc, out["ok"], out["verified"]) == (0, True, len(doc["records"])), out
    digests = dict(zip((r["seq"] for r in doc["records"]), out["digests"], strict=True))

    tampered = json.loads(json.dumps(doc))
    street = tampered["records"][0]["event"]["data"]["permanent_address"]
    street["ward_code"] = street["ward_code"][:-1] + chr(ord(street["ward_code"][-1]) ^ 1)
    rc, out = run(cli, "record", write("t-record.json", tampered), "--key", key_b64)
    assert (rc, out["code"]) == (1, "signature_invalid"), out

    tampered = json.loads(json.dumps(doc))
    g = next(iter(tampered["records"][0]["withheld"]))
    tampered["records"][0]["withheld"][g] = _flip(tampered["records"][0]["withheld"][g])
    rc, out = run(cli, "record", write("t-withheld.json", tampered), "--key", key_b64)
    assert (rc, out["code"]) == (1, "signature_invalid"), out

    # (2) the whole batch, by its root (PEM key this time)
    pem = pki.load_signing_registry(env.pki_dir)[POP]
    (tmp_path / "publisher.pem").write_bytes(
        pem.public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo))
    whole = {**doc, "records": [{k: r[k] for k in ("event", "salts", "withheld", "index")}
                                for r in doc["records"]]}
    rc, out = run(cli, "batch", write("batch.json", whole), "--key", tmp_path / "publisher.pem")
    assert (rc, out["ok"]) == (0, True) and out["root"] == ref["statement"]["root"], out
    tampered = json.loads(json.dumps(whole))
    tampered["records"][-1]["salts"]["residence"] = _flip(
        tampered["records"][-1]["salts"]["residence"])
    rc, out = run(cli, "batch", write("t-batch.json", tampered), "--key", key_b64)
    assert (rc, out["code"]) == (1, "signature_invalid"), out

    # (3) the checkpoint note
    (tmp_path / "checkpoint").write_text(note)
    rc, out = run(cli, "checkpoint", tmp_path / "checkpoint", "--vkey", logkey["vkey"],
                  "--origin", logkey["origin"])
    assert (rc, out["size"], out["root"]) == (0, cp.size, base64.b64encode(cp.root).decode())
    size_line = f"\n{cp.size}\n"
    (tmp_path / "t-checkpoint").write_text(note.replace(size_line, f"\n{cp.size + 1}\n", 1))
    rc, out = run(cli, "checkpoint", tmp_path / "t-checkpoint", "--vkey", logkey["vkey"])
    assert (rc, out["code"]) == (1, "checkpoint_forged"), out

    # (4) the last record's inclusion in the log, under that checkpoint
    last = records[-1]
    last_ref = batches[last["batch"]]
    if last["seq"] not in digests:
        rc, out = run(cli, "record", write("last.json", {
            "groups": groups, "statement": last_ref["statement"],
            "signature": last_ref["signature"], "record": last}), "--key", key_b64)
        assert rc == 0, out
        digests[last["seq"]] = out["digests"][0]
    entry = {"seq": seq, "dataset": "population", "publisher": last_ref["statement"]["node"],
             "digest": digests[seq], "batch_root": last_ref["statement"]["root"],
             "accepted_us": tlog.micros(last["accepted_at"])}
    inclusion = {"note": note, "origin": logkey["origin"], "index": seq, "size": proof["size"],
                 "proof": proof["proof"], "entry": entry}
    rc, out = run(cli, "inclusion", write("inclusion.json", inclusion), "--vkey",
                  logkey["vkey"])
    assert (rc, out["ok"], out["index"]) == (0, True, seq), out
    for name in ("proof", "entry"):
        tampered = json.loads(json.dumps(inclusion))
        if name == "proof":
            if not tampered["proof"]:
                continue
            tampered["proof"][0] = _flip(tampered["proof"][0])
        else:
            tampered["entry"]["accepted_us"] += 1
        rc, out = run(cli, "inclusion", write(f"t-{name}.json", tampered), "--vkey",
                      logkey["vkey"])
        assert (rc, out["code"]) == (1, "proof_invalid"), (name, out)
    assert msgspec.json.decode(json.dumps(proof))["seq"] == seq
