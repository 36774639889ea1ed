"""Conformance vectors: ``python -m exchange.vectors [DIR]`` writes ``schemas/vectors/*.json``.

Everything a verifier in another language must reproduce, byte for byte (docs/canonical.md):
canonical bytes, group commitments, record digests, batch roots and audit paths, statements
and their signatures, delivered records with withheld groups, receipts alone and in groups, log
entries and leaf hashes, inclusion and consistency proofs, checkpoints as signed notes. Each
vector is ``valid`` or a tampered copy naming what was ``changed`` and the ``error`` code a
verifier must give (the codes of ``exchange.core.errors``, and ``*_mismatch`` where a value is
recomputed and compared).

Deterministic: keys from fixed seeds, fixed times and salts, so regenerating gives the same
bytes (tests/test_vectors.py checks the committed files are fresh, and that the Python core
passes every valid vector and fails every tampered one with its expected error).

The records, groups and dataset names are fixed here, not read from ``exchange.core.datasets``:
the vectors pin the encoding, not a dataset's current schema.
"""

from __future__ import annotations

import base64
import copy
import hashlib
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from exchange.core import canonical, disclosure, envelope, merkle, receipts, tlog
from exchange.core.errors import ExchangeError
from exchange.core.signing import (
    Batch,
    BatchProof,
    Statement,
    Verifier,
    key_id,
    statement_bytes,
)
from exchange.core.wire import Receipt, SignedReceipt

__all__ = ["check", "generate", "main", "write"]

VECTORS_DIR = Path(__file__).resolve().parent.parent / "schemas" / "vectors"
TIME = "2026-11-22T08:00:00Z"
ACCEPTED_US = 1_795_334_400_123_456
PUBLISHER = "vn.gov.mps.population"
LAND_OWNER = "vn.gov.monre.land"
BROKER = "vn.gov.exchange.broker"
ORIGIN = "exchange.example/log"

GROUPS: dict[str, dict[str, tuple[str, ...]]] = {
    "population": {
        "identity": ("id", "full_name", "birth_date", "sex", "nationality"),
        "residence": ("permanent_address",),
        "civil_status": ("status", "death_date", "as_of"),
    },
    "land": {
        "parcel": ("ward_code", "map_sheet", "parcel_number", "area_m2", "purposes", "address",
                   "as_of"),
        "rights": ("certificate_serial", "owners"),
    },
}

PEOPLE: list[dict[str, Any]] = [
    {"id": "001190000001", "full_name": "Nguyễn Văn An", "birth_date": "1990-01-02",
     "sex": "male", "nationality": "VN", "status": "living", "as_of": "2026-11-20",
     "permanent_address": {"province_code": "01", "ward_code": "00004",
                           "street": "Số 1 Phố Hàng Bạc"}},
    {"id": "079185000002", "full_name": "Trần Thị Bích Ngọc", "birth_date": "1985-05-06",
     "sex": "female", "nationality": "VN", "status": "deceased", "death_date": "2026-10-01",
     "as_of": "2026-10-02",
     "permanent_address": {"province_code": "79", "ward_code": "26734",
                           "street": "12/3 \"Lê Lợi\" \\ tab\there / U+2028:\u2028 😀"}},
    {"id": "048200000003", "full_name": "Lê Ánh", "birth_date": "2000-12-31", "sex": "female",
     "nationality": "VN", "status": "living", "as_of": "2026-11-21",
     "permanent_address": {"province_code": "48", "ward_code": "20194", "street": ""}},
]

PARCELS: list[dict[str, Any]] = [
    {"ward_code": "26890", "map_sheet": 22, "parcel_number": 691, "area_m2": 1475.8,
     "purposes": ["ODT", "CLN"], "certificate_serial": "CA 370434",
     "owners": ["001190000001"], "as_of": "2026-11-05",
     "address": {"province_code": "79", "ward_code": "26890", "street": "Thửa 691"}},
    {"ward_code": "00004", "map_sheet": 3, "parcel_number": 12, "area_m2": 100.0,
     "purposes": ["ODT"], "certificate_serial": "CB 000012",
     "owners": ["001190000001", "079185000002"], "as_of": "2026-11-06",
     "address": {"province_code": "01", "ward_code": "00004", "street": "Thửa 12"}},
]


def _key(name: str) -> Ed25519PrivateKey:
    return Ed25519PrivateKey.from_private_bytes(
        hashlib.sha256(b"vn-exchange/vectors/" + name.encode()).digest())


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


def _pub(public: Ed25519PublicKey) -> dict[str, str]:
    return {"raw": _b64(public.public_bytes(Encoding.Raw, PublicFormat.Raw)),
            "spki_pem": public.public_bytes(Encoding.PEM,
                                            PublicFormat.SubjectPublicKeyInfo).decode(),
            "kid": key_id(public)}


def _json(value: Any) -> Any:
    """A value as it travels in JSON (bytes as base64 strings)."""
    return msgspec.to_builtins(value)


def _valid(name: str, kind: str, **fields: Any) -> dict[str, Any]:
    return {"name": name, "kind": kind, "valid": True, "error": None, **fields}


def _tamper(base: dict[str, Any], name: str, changed: str, error: str,
            edit: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
    v = copy.deepcopy(base)
    edit(v)
    v.update(name=name, valid=False, error=error, changed=changed)
    return v


def _flip_b64(text: str, at: int = 0) -> str:
    raw = bytearray(base64.b64decode(text))
    raw[at] ^= 0x01
    return _b64(bytes(raw))


# --- the vectors -------------------------------------------------------------------------------

def _canonical() -> list[dict[str, Any]]:
    cases = {
        "integral float": "{\"area\": 100.0}",
        "negative zero": "[-0.0, 0, -1]",
        "floats in ECMAScript form": "[1475.8, 1e16, 1e21, 1e-7, 0.000001, 4.8e-6, "
                                     "1.2345678901234568e20, 0.1, 5e-324, 1.7976931348623157e308]",
        "keys sorted by UTF-16 code units": "{\"\\ufb33\": 1, \"\\ud83d\\ude00\": 2, "
                                            "\"\\u20ac\": 3, \"a\": 4, \"B\": 5, \"\": 6}",
        "non-ASCII as raw UTF-8": "{\"name\": \"Nguyễn Văn An\", \"emoji\": \"😀\"}",
        "escapes": "[\"\\u0000\\u0001\\b\\t\\n\\u000b\\f\\r\\u001f\", \"\\\"\\\\/\", "
                   "\"\\u007f\\u2028\\u2029\"]",
        "nesting and literals": "{\"z\": [true, false, null, {}, []], \"a\": {\"b\": {\"c\": 1}}}",
        "safe integers": "[9007199254740991, -9007199254740991, 0, 123]",
    }
    out = []
    for name, text in cases.items():
        c = canonical.encode(json.loads(text)).decode()
        v = _valid(f"canonical: {name}", "canonical", input=text, canonical=c,
                   sha256=hashlib.sha256(c.encode()).hexdigest())
        out.append(v)
    wrong = {
        "integral float": ("written as 100.0", "{\"area\":100.0}"),
        "keys sorted by UTF-16 code units": (
            "keys sorted by code point", "{\"\":6,\"B\":5,\"a\":4,\"\u20ac\":3,\"\ufb33\":1,"
            "\"😀\":2}"),
        "non-ASCII as raw UTF-8": ("non-ASCII escaped as \\u", "{\"emoji\":\"\\ud83d\\ude00\","
                                   "\"name\":\"Nguy\\u1ec5n V\\u0103n An\"}"),
        "escapes": ("solidus escaped", "[\"\\u0000\\u0001\\b\\t\\n\\u000b\\f\\r\\u001f\","
                    "\"\\\"\\\\\\/\",\"\u007f\u2028\u2029\"]"),
        "floats in ECMAScript form": ("exponent written 1e-07", out[2]["canonical"].replace(
            "1e-7", "1e-07")),
        "nesting and literals": ("whitespace after a colon", out[6]["canonical"].replace(
            ":", ": ", 1)),
    }
    by = {v["name"].removeprefix("canonical: "): v for v in out}
    for name, (changed, text) in wrong.items():
        t = _tamper(by[name], f"canonical: {name}, {changed}", changed, "canonical_mismatch",
                    lambda v: None)
        t["canonical"] = text
        out.append(t)
    return out


def _commitments() -> list[dict[str, Any]]:
    out = []
    salt = hashlib.sha256(b"vn-exchange/vectors/salt").digest()[:16]
    for dataset, rec in (("population", PEOPLE[1]), ("land", PARCELS[1])):
        for group, fields in GROUPS[dataset].items():
            part = {f: rec[f] for f in fields if f in rec}
            c = disclosure.commit(salt, group, rec, fields)
            out.append(_valid(f"commitment: {dataset} {group}", "commitment", group=group,
                              salt=_b64(salt), fields=part,
                              canonical=canonical.encode(part).decode(), commitment=_b64(c)))
    base = out[0]
    out.append(_tamper(base, "commitment: a field value changed", "fields.full_name",
                       "commitment_mismatch",
                       lambda v: v["fields"].update(full_name="Trần Thị Bích Ngoc")))
    out.append(_tamper(base, "commitment: another salt", "salt", "commitment_mismatch",
                       lambda v: v.update(salt=_flip_b64(v["salt"], 15))))
    out.append(_tamper(base, "commitment: another group name", "group", "commitment_mismatch",
                       lambda v: v.update(group="residence")))
    out.append(_tamper(out[3], "commitment: integral float hashed as 100.0",
                       "canonical text 100.0 used", "commitment_mismatch",
                       lambda v: v.update(commitment=_b64(hashlib.sha256(
                           base64.b64decode(v["salt"]) + b"parcel\x00"
                           + v["canonical"].replace("100", "100.0").encode()).digest()))))
    return out


class _Sealed:
    """One batch sealed from fixed keys, salts and time."""

    def __init__(self, dataset: str, node: str, records: list[dict[str, Any]], keyname: str,
                 subjects: list[str]) -> None:
        self.key = _key(keyname)
        self.groups = GROUPS[dataset]
        seed = hashlib.sha256(f"vn-exchange/vectors/seed/{dataset}".encode()).digest()
        stream = hashlib.shake_256(seed).digest(16 * (len(self.groups) + 1) * len(records))
        self.events: list[envelope.Envelope] = []
        self.salts: list[dict[str, bytes]] = []
        self.commitments: list[dict[str, bytes]] = []
        self.digests: list[bytes] = []
        at = 0
        for i, data in enumerate(records):
            rid = stream[at:at + 16].hex()
            at += 16
            salts = {}
            for g in self.groups:
                salts[g] = stream[at:at + 16]
                at += 16
            ev = envelope.Envelope(
                id=f"{rid[:8]}-{rid[8:12]}-{rid[12:16]}-{rid[16:20]}-{rid[20:]}", source=node,
                type=f"vn.exchange.{dataset}.v1", subject=subjects[i], time=TIME,
                dataschema=f"https://exchange.example/v1/schemas/{dataset}/1", version=i + 1,
                data=data)
            cs = disclosure.commitments(data, self.groups, salts)
            self.events.append(ev)
            self.salts.append(salts)
            self.commitments.append(cs)
            self.digests.append(envelope.digest(ev.attributes(), cs))
        self.leaves = [merkle.leaf_hash(d) for d in self.digests]
        self.root, self.paths = merkle.inclusion_paths(self.leaves)
        self.statement = Statement(node=node, dataset=dataset, root=self.root,
                                   size=len(records), time=TIME,
                                   kid=key_id(self.key.public_key()))
        self.signature = self.key.sign(statement_bytes(self.statement))

    def common(self) -> dict[str, Any]:
        return {"groups": {g: list(f) for g, f in self.groups.items()},
                "public_key": _b64(self.key.public_key().public_bytes_raw()),
                "statement": _json(self.statement), "signature": _b64(self.signature)}


def _digests(sealed: list[_Sealed]) -> list[dict[str, Any]]:
    out = []
    for s in sealed:
        for i, ev in enumerate(s.events):
            attrs = ev.attributes()
            cs = {g: _b64(c) for g, c in s.commitments[i].items()}
            out.append(_valid(f"record digest: {s.statement.dataset} {i}", "record_digest",
                              attributes=attrs, commitments=cs,
                              canonical=envelope.canonical_bytes(
                                  attrs, s.commitments[i]).decode(),
                              digest=_b64(s.digests[i]), leaf_hash=_b64(s.leaves[i])))
    base = out[0]
    out.append(_tamper(base, "record digest: version changed", "attributes.version",
                       "digest_mismatch", lambda v: v["attributes"].update(version=2)))
    out.append(_tamper(base, "record digest: a commitment changed", "commitments.identity",
                       "digest_mismatch", lambda v: v["commitments"].update(
                           identity=_flip_b64(v["commitments"]["identity"], 31))))
    out.append(_tamper(base, "record digest: commitment as hex, not base64",
                       "commitments.identity", "digest_mismatch", lambda v: v["commitments"].update(
                           identity=base64.b64decode(v["commitments"]["identity"]).hex())))
    return out


def _batches(sealed: list[_Sealed]) -> list[dict[str, Any]]:
    out = []
    for s in sealed:
        recs = [{"event": _json(ev), "salts": _json(s.salts[i])}
                for i, ev in enumerate(s.events)]
        out.append(_valid(
            f"batch: {s.statement.dataset}, {len(recs)} records", "batch", **s.common(),
            statement_bytes=_b64(statement_bytes(s.statement)),
            records=recs, digests=[_b64(d) for d in s.digests], root=_b64(s.root),
            paths=[[_b64(p) for p in path] for path in s.paths]))
    base = out[0]
    out.append(_tamper(base, "batch: a field of one record changed",
                       "records[1].event.data.full_name", "signature_invalid",
                       lambda v: v["records"][1]["event"]["data"].update(full_name="Trần Thị B")))
    out.append(_tamper(base, "batch: records reordered", "records[0] <-> records[1]",
                       "signature_invalid",
                       lambda v: v.update(records=[v["records"][1], v["records"][0],
                                                   *v["records"][2:]])))
    out.append(_tamper(base, "batch: a record dropped", "records[2] removed",
                       "signature_invalid", lambda v: v["records"].pop()))
    out.append(_tamper(base, "batch: signature altered", "signature byte 0",
                       "signature_invalid", lambda v: v.update(signature=_flip_b64(
                           v["signature"]))))
    out.append(_tamper(base, "batch: statement time changed", "statement.time",
                       "signature_invalid",
                       lambda v: v["statement"].update(time="2026-11-22T08:00:01Z")))
    out.append(_tamper(base, "batch: another publisher's key", "public_key",
                       "signature_invalid", lambda v: v.update(public_key=_b64(
                           _key("broker").public_key().public_bytes_raw()))))
    out.append(_tamper(out[1], "batch: a salt altered (land, record 1)",
                       "records[1].salts.parcel", "signature_invalid",
                       lambda v: v["records"][1]["salts"].update(
                           parcel=_flip_b64(v["records"][1]["salts"]["parcel"]))))
    return out


def _delivered(s: _Sealed, i: int, granted: set[str]) -> dict[str, Any]:
    ev = s.events[i]
    data, salts, withheld = disclosure.project(ev.data, s.groups, s.salts[i], s.commitments[i],
                                               granted)
    event = _json(ev)
    event["data"] = data
    return {"event": event, "salts": _json(salts), "withheld": _json(withheld), "index": i,
            "path": [_b64(p) for p in s.paths[i]]}


def _records(sealed: list[_Sealed]) -> list[dict[str, Any]]:
    pop, land = sealed
    out = [
        _valid("record: population 1, residence withheld", "record", **pop.common(),
               record=_delivered(pop, 1, {"identity", "civil_status"}),
               digest=_b64(pop.digests[1])),
        _valid("record: population 2 (last leaf), only identity granted", "record",
               **pop.common(), record=_delivered(pop, 2, {"identity"}),
               digest=_b64(pop.digests[2])),
        _valid("record: population 0, every group granted", "record", **pop.common(),
               record=_delivered(pop, 0, set(pop.groups)), digest=_b64(pop.digests[0])),
        _valid("record: land 1, rights withheld", "record", **land.common(),
               record=_delivered(land, 1, {"parcel"}), digest=_b64(land.digests[1])),
    ]
    base = out[0]
    out += [
        _tamper(base, "record: a disclosed value changed", "record.event.data.status",
                "signature_invalid",
                lambda v: v["record"]["event"]["data"].update(status="living")),
        _tamper(base, "record: a withheld commitment altered", "record.withheld.residence",
                "signature_invalid", lambda v: v["record"]["withheld"].update(
                    residence=_flip_b64(v["record"]["withheld"]["residence"], 7))),
        _tamper(base, "record: a path node altered", "record.path[0]", "signature_invalid",
                lambda v: v["record"]["path"].__setitem__(0, _flip_b64(v["record"]["path"][0]))),
        _tamper(base, "record: another index", "record.index", "signature_invalid",
                lambda v: v["record"].update(index=0)),
        _tamper(base, "record: subject changed", "record.event.subject", "signature_invalid",
                lambda v: v["record"]["event"].update(subject="001190000001")),
        _tamper(base, "record: source is not the signer", "record.event.source",
                "signature_invalid",
                lambda v: v["record"]["event"].update(source="vn.gov.other.node")),
        _tamper(base, "record: a field of a withheld group smuggled in",
                "record.event.data.permanent_address", "disclosure_invalid",
                lambda v: v["record"]["event"]["data"].update(permanent_address={})),
        _tamper(base, "record: a group both disclosed and withheld", "record.withheld.identity",
                "disclosure_invalid", lambda v: v["record"]["withheld"].update(
                    identity=_b64(bytes(32)))),
        _tamper(base, "record: a group missing", "record.withheld.residence removed",
                "disclosure_invalid", lambda v: v["record"]["withheld"].pop("residence")),
        _tamper(base, "record: statement signature altered", "signature byte 63",
                "signature_invalid",
                lambda v: v.update(signature=_flip_b64(v["signature"], 63))),
        _tamper(out[3], "record: area sent as another float", "record.event.data.area_m2",
                "signature_invalid",
                lambda v: v["record"]["event"]["data"].update(area_m2=100.5)),
    ]
    return out


def _receipts(key: Ed25519PrivateKey, sealed: list[_Sealed]) -> list[dict[str, Any]]:
    def receipt(i: int, s: _Sealed, first: int) -> Receipt:
        return Receipt(broker=BROKER, publisher=s.statement.node, dataset=s.statement.dataset,
                       batch_root=s.root, first_seq=first, last_seq=first + s.statement.size - 1,
                       accepted=s.statement.size, time=TIME, log_size=first + s.statement.size,
                       log_root=hashlib.sha256(f"log root {i}".encode()).digest())
    pop, land = sealed
    alone = receipts.sign(key, [receipt(0, pop, 0)])[0]
    group = receipts.sign(key, [receipt(1, pop, 3), receipt(2, land, 6), receipt(3, pop, 8)])
    pub = _b64(key.public_key().public_bytes_raw())
    out = [_valid("receipt: signed alone", "receipt", broker_key=pub, signed=_json(alone),
                  signed_bytes=_b64(receipts.signed_message(alone)))]
    for i, g in enumerate(group):
        out.append(_valid(f"receipt: group of 3, receipt {i}", "receipt", broker_key=pub,
                          signed=_json(g), signed_bytes=_b64(receipts.signed_message(g))))
    out += [
        _tamper(out[0], "receipt: accepted count changed", "signed.receipt.accepted",
                "receipt_invalid", lambda v: v["signed"]["receipt"].update(accepted=2)),
        _tamper(out[0], "receipt: signature altered", "signed.signature", "receipt_invalid",
                lambda v: v["signed"].update(signature=_flip_b64(v["signed"]["signature"]))),
        _tamper(out[2], "receipt: group path altered", "signed.path[0]", "receipt_invalid",
                lambda v: v["signed"]["path"].__setitem__(0, _flip_b64(v["signed"]["path"][0]))),
        _tamper(out[2], "receipt: another index in its group", "signed.index",
                "receipt_invalid", lambda v: v["signed"].update(index=0)),
        _tamper(out[3], "receipt: seq range changed", "signed.receipt.last_seq",
                "receipt_invalid", lambda v: v["signed"]["receipt"].update(last_seq=8)),
        _tamper(out[1], "receipt: another broker key", "broker_key", "receipt_invalid",
                lambda v: v.update(broker_key=_b64(
                    _key("publisher").public_key().public_bytes_raw()))),
    ]
    return out


def _log(sealed: list[_Sealed]) -> tuple[list[dict[str, Any]], list[tuple[int, bytes]]]:
    """Log entries of the sealed records, in seq order; returns the vectors and the tree."""
    out: list[dict[str, Any]] = []
    leaves: list[bytes] = []
    seq = 0
    for s in sealed:
        for i, d in enumerate(s.digests):
            fields = {"seq": seq, "dataset": s.statement.dataset, "publisher": s.statement.node,
                      "digest": _b64(d), "batch_root": _b64(s.root),
                      "accepted_us": ACCEPTED_US + seq}
            entry = tlog.entry_bytes(seq, s.statement.dataset, s.statement.node, d, s.root,
                                     ACCEPTED_US + seq)
            leaves.append(merkle.leaf_hash(entry))
            out.append(_valid(f"log entry: seq {seq} ({s.statement.dataset} {i})", "log_entry",
                              **fields, entry=_b64(entry), leaf_hash=_b64(leaves[-1])))
            seq += 1
    base = out[1]
    out += [
        _tamper(base, "log entry: acceptance time off by 1 µs", "accepted_us", "entry_mismatch",
                lambda v: v.update(accepted_us=v["accepted_us"] + 1)),
        _tamper(base, "log entry: seq changed", "seq", "entry_mismatch",
                lambda v: v.update(seq=7)),
        _tamper(base, "log entry: leaf hashed without the 0x00 prefix", "leaf_hash",
                "entry_mismatch", lambda v: v.update(leaf_hash=_b64(hashlib.sha256(
                    base64.b64decode(v["entry"])).digest()))),
    ]
    return out, list(enumerate(leaves))


def _proofs(leaves: list[bytes]) -> list[dict[str, Any]]:
    nodes: dict[tuple[int, int], bytes] = {}
    tree = merkle.CompactRange(on_node=lambda lvl, i, h: nodes.__setitem__((lvl, i), h))
    roots = []
    for leaf in leaves:
        tree.append(leaf)
        roots.append(tree.root())

    def reader(level: int, index: int) -> bytes:
        return nodes[(level, index)]
    n = len(leaves)
    out = []
    for index, size in ((0, 1), (0, n), (2, n), (n - 1, n), (3, 4), (1, 3)):
        proof = merkle.inclusion_proof(reader, index, size)
        out.append(_valid(f"inclusion: leaf {index} in tree of {size}", "inclusion",
                          leaf_hash=_b64(leaves[index]), index=index, size=size,
                          proof=[_b64(p) for p in proof], root=_b64(roots[size - 1])))
    for old, new in ((1, n), (2, n), (3, n), (4, 4), (3, 4), (2, 3)):
        proof = merkle.consistency_proof(reader, old, new)
        out.append(_valid(f"consistency: {old} -> {new}", "consistency", old=old, new=new,
                          old_root=_b64(roots[old - 1]), new_root=_b64(roots[new - 1]),
                          proof=[_b64(p) for p in proof]))
    inc, cons = out[2], out[8]  # leaf 2 of all; 3 -> all
    out += [
        _tamper(inc, "inclusion: a proof node altered", "proof[1]", "proof_invalid",
                lambda v: v["proof"].__setitem__(1, _flip_b64(v["proof"][1]))),
        _tamper(inc, "inclusion: another index", "index", "proof_invalid",
                lambda v: v.update(index=3)),
        _tamper(inc, "inclusion: proof node missing", "proof[-1] removed", "proof_invalid",
                lambda v: v["proof"].pop()),
        _tamper(inc, "inclusion: an extra proof node", "proof + [root]", "proof_invalid",
                lambda v: v["proof"].append(v["root"])),
        _tamper(inc, "inclusion: index beyond the tree", "index", "proof_invalid",
                lambda v: v.update(index=v["size"])),
        _tamper(cons, "consistency: a proof node altered", "proof[0]", "proof_invalid",
                lambda v: v["proof"].__setitem__(0, _flip_b64(v["proof"][0]))),
        _tamper(cons, "consistency: old root of another tree", "old_root", "proof_invalid",
                lambda v: v.update(old_root=_flip_b64(v["old_root"]))),
        _tamper(cons, "consistency: sizes swapped", "old, new", "proof_invalid",
                lambda v: v.update(old=v["new"], new=v["old"])),
        _tamper(cons, "consistency: empty proof", "proof", "proof_invalid",
                lambda v: v.update(proof=[])),
    ]
    return out


def _checkpoints(leaves: list[bytes]) -> list[dict[str, Any]]:
    key = tlog.NoteKey.from_private(ORIGIN, _key("log"))
    other = tlog.NoteKey.from_private(ORIGIN, _key("intruder"))
    root = merkle.root(leaves)
    cp = tlog.sign_checkpoint(key, ORIGIN, len(leaves), root)
    empty = tlog.sign_checkpoint(key, ORIGIN, 0, merkle.EMPTY_ROOT)
    out = [
        _valid("checkpoint: the log", "checkpoint", vkey=key.vkey, origin=ORIGIN, note=cp.note,
               size=len(leaves), root=_b64(root)),
        _valid("checkpoint: the empty log", "checkpoint", vkey=key.vkey, origin=ORIGIN,
               note=empty.note, size=0, root=_b64(merkle.EMPTY_ROOT)),
    ]
    base = out[0]
    body = cp.body()
    name, hexid, b64 = key.vkey.split("+")
    sigline = cp.note[len(body) + 1:]
    out += [
        _tamper(base, "checkpoint: size changed", "note size line", "checkpoint_forged",
                lambda v: v.update(note=v["note"].replace(f"\n{len(leaves)}\n", "\n99\n", 1))),
        _tamper(base, "checkpoint: root changed", "note root line", "checkpoint_forged",
                lambda v: v.update(note=v["note"].replace(
                    _b64(root), _b64(merkle.EMPTY_ROOT), 1))),
        _tamper(base, "checkpoint: signed by another key of the same name", "signature line",
                "checkpoint_forged",
                lambda v: v.update(note=other.sign_note(body))),
        _tamper(base, "checkpoint: no blank line before the signatures", "note",
                "checkpoint_invalid",
                lambda v: v.update(note=body + sigline)),
        _tamper(base, "checkpoint: for another log", "origin", "checkpoint_invalid",
                lambda v: v.update(origin="other.example/log")),
        _tamper(base, "checkpoint: verifier key id does not match", "vkey", "bad_vkey",
                lambda v: v.update(vkey=f"{name}+{int(hexid, 16) ^ 1:08x}+{b64}")),
    ]
    return out


def generate() -> dict[str, dict[str, Any]]:
    """Every vector file's content, by file name."""
    pop = _Sealed("population", PUBLISHER, PEOPLE, "publisher",
                  [p["id"] for p in PEOPLE])
    land = _Sealed("land", LAND_OWNER, PARCELS, "land",
                   [f"{p['ward_code']}-{p['map_sheet']}-{p['parcel_number']}" for p in PARCELS])
    sealed = [pop, land]
    entries, tree = _log(sealed)
    leaves = [leaf for _, leaf in tree]
    note_key = tlog.NoteKey.from_private(ORIGIN, _key("log"))
    keys = {"publisher": {"node": PUBLISHER, **_pub(pop.key.public_key())},
            "land": {"node": LAND_OWNER, **_pub(land.key.public_key())},
            "broker": {"node": BROKER, **_pub(_key("broker").public_key())},
            "log": {"origin": ORIGIN, "vkey": note_key.vkey}}
    files: dict[str, tuple[str, list[dict[str, Any]]]] = {
        "canonical": ("RFC 8785 canonical bytes of JSON texts (input is JSON text).",
                      _canonical()),
        "commitments": ("c = SHA-256(salt ‖ group ‖ 0x00 ‖ JCS(fields)).", _commitments()),
        "digests": ("digest = SHA-256(JCS({attributes, commitments})); leaf = "
                    "SHA-256(0x00 ‖ digest).", _digests(sealed)),
        "batches": ("Whole published batches: RFC 6962 root over record digests, Ed25519 over "
                    "STATEMENT_CONTEXT ‖ JCS(statement).", _batches(sealed)),
        "records": ("Delivered records, projected to granted groups, with index and audit "
                    "path.", _records(sealed)),
        "receipts": ("Broker receipts, alone and in a group commit.",
                     _receipts(_key("broker"), sealed)),
        "log": ("Transparency log entries (entry_bytes) and leaf hashes.", entries),
        "proofs": ("RFC 6962 inclusion and consistency proofs over the log's leaves.",
                   _proofs(leaves)),
        "checkpoints": ("C2SP checkpoints in signed notes.", _checkpoints(leaves)),
    }
    out: dict[str, dict[str, Any]] = {
        "keys": {"description": "Public keys of the vectors (raw Ed25519 base64, SPKI PEM, "
                                "key id), and the log's note verifier key.", "keys": keys}}
    for name, (description, vectors) in files.items():
        out[name] = {"description": description, "vectors": vectors}
    return out


def render(content: dict[str, Any]) -> bytes:
    return (json.dumps(content, ensure_ascii=False, indent=1) + "\n").encode()


def write(directory: Path = VECTORS_DIR) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for name, content in generate().items():
        path = directory / f"{name}.json"
        path.write_bytes(render(content))
        written.append(path)
    return written


# --- checking a vector with the Python core --------------------------------------------------

def check(v: dict[str, Any]) -> str | None:
    """Verify one vector with the Python core: ``None`` when it verifies, else the error code."""
    try:
        return _CHECKS[v["kind"]](v)
    except ExchangeError as err:
        return err.code


def _d(text: str) -> bytes:
    return base64.b64decode(text, validate=True)


def _ed(raw_b64: str) -> Ed25519PublicKey:
    return Ed25519PublicKey.from_public_bytes(_d(raw_b64))


def _groups(v: dict[str, Any]) -> dict[str, tuple[str, ...]]:
    return {g: tuple(f) for g, f in v["groups"].items()}


def _check_canonical(v: dict[str, Any]) -> str | None:
    ok = canonical.encode(json.loads(v["input"])).decode() == v["canonical"]
    ok = ok and hashlib.sha256(v["canonical"].encode()).hexdigest() == v["sha256"]
    return None if ok else "canonical_mismatch"


def _check_commitment(v: dict[str, Any]) -> str | None:
    fields = v["fields"]
    c = disclosure.commit(_d(v["salt"]), v["group"], fields, tuple(fields))
    return None if c == _d(v["commitment"]) else "commitment_mismatch"


def _check_digest(v: dict[str, Any]) -> str | None:
    try:
        cs = {g: _d(c) for g, c in v["commitments"].items()}
    except ValueError:
        return "digest_mismatch"
    d = envelope.digest(v["attributes"], cs)
    ok = d == _d(v["digest"]) and merkle.leaf_hash(d) == _d(v["leaf_hash"])
    return None if ok else "digest_mismatch"


_batch_decoder = msgspec.json.Decoder(Batch)
_signed_receipt = msgspec.json.Decoder(SignedReceipt)


def _check_batch(v: dict[str, Any]) -> str | None:
    batch = _batch_decoder.decode(json.dumps(
        {"statement": v["statement"], "signature": v["signature"], "records": v["records"]}))
    node = batch.statement.node
    Verifier({node: _ed(v["public_key"])}).verify_batch(batch, _groups(v))
    return None


def _check_record(v: dict[str, Any]) -> str | None:
    st = msgspec.json.decode(json.dumps(v["statement"]), type=Statement)
    r = v["record"]
    event = msgspec.convert(r["event"], envelope.Envelope)
    proof = BatchProof(st, _d(v["signature"]), r["index"], [_d(p) for p in r["path"]])
    Verifier({st.node: _ed(v["public_key"])}).verify_record(
        event, _groups(v), {g: _d(s) for g, s in r["salts"].items()},
        {g: _d(c) for g, c in r["withheld"].items()}, proof)
    return None


def _check_receipt(v: dict[str, Any]) -> str | None:
    signed = _signed_receipt.decode(json.dumps(v["signed"]))
    receipts.ReceiptChecker().check(_ed(v["broker_key"]), signed)
    return None


def _check_entry(v: dict[str, Any]) -> str | None:
    entry = tlog.entry_bytes(v["seq"], v["dataset"], v["publisher"], _d(v["digest"]),
                             _d(v["batch_root"]), v["accepted_us"])
    ok = entry == _d(v["entry"]) and merkle.leaf_hash(entry) == _d(v["leaf_hash"])
    return None if ok else "entry_mismatch"


def _check_inclusion(v: dict[str, Any]) -> str | None:
    merkle.verify_inclusion(_d(v["leaf_hash"]), v["index"], v["size"],
                            [_d(p) for p in v["proof"]], _d(v["root"]))
    return None


def _check_consistency(v: dict[str, Any]) -> str | None:
    merkle.verify_consistency(v["old"], v["new"], _d(v["old_root"]), _d(v["new_root"]),
                              [_d(p) for p in v["proof"]])
    return None


def _check_checkpoint(v: dict[str, Any]) -> str | None:
    key = tlog.NoteKey.from_vkey(v["vkey"])
    cp = tlog.open_checkpoint(key, v["note"], v["origin"])
    if cp.size != v["size"] or cp.root != _d(v["root"]):
        return "checkpoint_invalid"
    return None


_CHECKS: dict[str, Callable[[dict[str, Any]], str | None]] = {
    "canonical": _check_canonical, "commitment": _check_commitment,
    "record_digest": _check_digest, "batch": _check_batch, "record": _check_record,
    "receipt": _check_receipt, "log_entry": _check_entry, "inclusion": _check_inclusion,
    "consistency": _check_consistency, "checkpoint": _check_checkpoint,
}


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    for path in write(Path(args[0]) if args else VECTORS_DIR):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
