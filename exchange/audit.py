"""An independent audit of the exchange's log: everything re-derived, nothing taken on trust.

Offline (``audit_data``) on a broker's data directory: re-derive every leaf from the stored
records, rebuild the tree, check every checkpoint's signature and root, and every record's
publisher signature and batch path. Online (``audit_url``) against a running broker: rebuild the
tree from ``/v1/log/entries`` and check the signed checkpoints and their consistency.

The first fault wins: the result names the first bad seq and what is wrong (``record_changed``,
``record_missing``, ``log_truncated``, ``checkpoint_forged``, ``inconsistent_checkpoints``,
``signature_invalid``).
"""

from __future__ import annotations

import base64
import json
import sqlite3
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from exchange import pki
from exchange.core import agreements, datasets, disclosure, merkle, tiles, tlog
from exchange.core.envelope import digest
from exchange.core.errors import Code, ExchangeError, InputError, IntegrityError
from exchange.core.ledger import StoredBody
from exchange.core.signing import Statement, Verifier, key_id

__all__ = ["AuditResult", "Trust", "audit_data", "write_trust"]

TRUST_FILE = "trust.json"
_body = msgspec.msgpack.Decoder(StoredBody)
_stmt = msgspec.msgpack.Decoder(Statement)


@dataclass
class AuditResult:
    ok: bool = True
    entries: int = 0
    checkpoints: int = 0
    first_bad_seq: int | None = None
    problem: str | None = None
    detail: str = ""
    batches: int = 0
    signatures: int = 0
    agreements: int = 0

    def fail(self, seq: int | None, problem: str, detail: str) -> AuditResult:
        if self.ok:
            self.ok, self.first_bad_seq, self.problem, self.detail = False, seq, problem, detail
        return self

    def as_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "entries": self.entries, "checkpoints": self.checkpoints,
                "first_bad_seq": self.first_bad_seq, "problem": self.problem,
                "detail": self.detail, "batches": self.batches,
                "signatures_checked": self.signatures, "agreement_entries": self.agreements}


@dataclass
class Trust:
    """What the auditor trusts: the log's origin and key, and publishers' signing keys."""

    origin: str
    log_key: Ed25519PublicKey
    signing_keys: dict[str, Ed25519PublicKey] = field(default_factory=dict)
    #: node id → key id → every key it was certified for: records signed before a rotation
    history: dict[str, dict[str, Ed25519PublicKey]] = field(default_factory=dict)
    #: operator name → key id → its signing keys (countersignatures on agreements)
    operators: dict[str, dict[str, Ed25519PublicKey]] = field(default_factory=dict)
    #: dataset → owner (who may approve agreements on it)
    owners: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_pki(cls, pki_dir: Path, origin: str | None = None,
                 owners: dict[str, str] | None = None) -> Trust:
        broker = pki.load_broker_identity(pki_dir)
        return cls(origin or f"{broker.node_id}/log", broker.signing_public_key,
                   pki.load_signing_registry(pki_dir), _history(pki_dir), _operators(pki_dir),
                   dict(owners or {}))

    @classmethod
    def from_file(cls, path: Path) -> Trust:
        raw = json.loads(path.read_text(encoding="utf-8"))
        key = tlog.NoteKey.from_vkey(raw["vkey"])

        def keys(section: str) -> dict[str, dict[str, Ed25519PublicKey]]:
            return {n: {kid: pki.decode_public_key(k) for kid, k in ks.items()}
                    for n, ks in raw.get(section, {}).items()}

        return cls(key.name, key.public,
                   {n: pki.decode_public_key(k) for n, k in raw["signing_keys"].items()},
                   keys("history"), keys("operators"), dict(raw.get("owners", {})))

    def certified(self, node: str, kid: str, time: str | None) -> Ed25519PublicKey | None:
        return self.history.get(node, {}).get(kid)

    def party_key(self, role: str, who: str, kid: str) -> Ed25519PublicKey | None:
        """A node's or operator's certified signing key by key id."""
        if role == "operator":
            return self.operators.get(who, {}).get(kid)
        found = self.history.get(who, {}).get(kid)
        current = self.signing_keys.get(who)
        if found is None and current is not None and key_id(current) == kid:
            found = current
        return found


def _history(pki_dir: Path) -> dict[str, dict[str, Ed25519PublicKey]]:
    return {n: {c.kid: c.key for c in certs}
            for n, certs in pki.load_signing_history(pki_dir).items()}


def _operators(pki_dir: Path) -> dict[str, dict[str, Ed25519PublicKey]]:
    ca = x509.load_pem_x509_certificate((pki_dir / "ca.crt").read_bytes())
    out: dict[str, dict[str, Ed25519PublicKey]] = {}
    for name, _serial, _revoked in pki.list_operators(pki_dir):
        certs = pki.certified_signing_keys(
            pki.signing_history(pki_dir, name, role="operator"), ca)
        out[name] = {c.kid: c.key for c in certs}
    return out


def write_trust(data_dir: Path, origin: str, log_key: tlog.NoteKey,
                signing_keys: dict[str, Ed25519PublicKey], pki_dir: Path | None = None,
                owners: dict[str, str] | None = None) -> None:
    """The broker leaves its public trust material beside the data, for offline audits: the
    log key, every node's current signing key and every key it (or an operator) was ever
    certified for, and each dataset's owner. An auditor who does not trust the data directory
    passes ``--pki`` instead."""
    data_dir.mkdir(parents=True, exist_ok=True)
    history = _history(pki_dir) if pki_dir is not None else {}
    operators = _operators(pki_dir) if pki_dir is not None else {}

    def encoded(keys: dict[str, dict[str, Ed25519PublicKey]]) -> dict[str, dict[str, str]]:
        return {n: {kid: pki.encode_public_key(k) for kid, k in ks.items()}
                for n, ks in keys.items()}

    body = {"origin": origin, "vkey": log_key.vkey,
            "signing_keys": {n: pki.encode_public_key(k) for n, k in signing_keys.items()},
            "history": encoded(history), "operators": encoded(operators),
            "owners": dict(owners or {})}
    (data_dir / TRUST_FILE).write_text(json.dumps(body, indent=2) + "\n", encoding="utf-8")


#: the exchange's own dataset of agreements: its entries are checked for what they say too
AGREEMENTS = "agreement"


class _AgreementChain:
    """Each agreement entry: every signature in it verifies against the CA-certified keys, each
    decision was its signer's to make, and each version extends the one before (same request,
    the earlier decisions unchanged)."""

    def __init__(self, trust: Trust) -> None:
        self.trust = trust
        self.last: dict[str, agreements.AgreementRecord] = {}

    def check(self, seq: int, data: Any, version: int) -> str | None:
        try:
            record = msgspec.convert(data, agreements.AgreementRecord)
            owner = self.trust.owners.get(record.request.dataset, record.request.owner)
            if owner != record.request.owner:
                return (f"seq {seq}: agreement {record.id} asks {record.request.owner} for "
                        f"{record.request.dataset}, whose owner is {owner}")
            # whether an operator must countersign comes from the dataset's classification,
            # not from the entry the broker wrote
            spec = datasets.get(record.request.dataset)
            needed = bool(spec.catalogue and spec.catalogue.classification
                          in ("core", "important"))
            if record.countersign != needed:
                return (f"seq {seq}: agreement {record.id} on {record.request.dataset} says "
                        f"countersign={record.countersign}; its classification needs {needed}")
            agreements.verify(record, self.trust.party_key, owner=owner)
        except msgspec.ValidationError as err:
            return f"seq {seq}: not an agreement: {err}"
        except ExchangeError as err:
            return f"seq {seq}: {err.message}"
        before = self.last.get(record.id)
        if before is not None and (before.request != record.request
                                   or record.decisions[:len(before.decisions)]
                                   != before.decisions
                                   or len(record.decisions) != len(before.decisions) + 1):
            return f"seq {seq}: version {version} of {record.id} rewrites its history"
        if before is None and (version != 1 or record.decisions):
            return f"seq {seq}: {record.id} starts at version {version}, not with its request"
        self.last[record.id] = record
        return None


def _stored_leaves(db: sqlite3.Connection) -> dict[int, bytes]:
    """The log's leaves as the store keeps them: its ``tree`` rows while it has them (a store
    not yet migrated: the migration drops ``tree`` in the transaction that fills ``tiles``),
    else its level-0 tiles."""
    tables = {n for (n,) in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    if "tree" in tables:
        return {idx: h for idx, h in db.execute("SELECT idx, hash FROM tree WHERE level=0")}
    out: dict[int, bytes] = {}
    if "tiles" in tables:
        for idx, hashes in db.execute("SELECT idx, hashes FROM tiles WHERE level=0"):
            base = idx * tiles.WIDTH
            out.update((base + i, h) for i, h in enumerate(tiles.hashes(hashes)))
    return out


def _records(db: sqlite3.Connection, chunk: int = 5000) -> Iterator[tuple[Any, ...]]:
    last = -1
    while True:
        rows = db.execute(
            "SELECT seq, dataset, key, version, batch_id, idx, accepted_at, digest, body "
            "FROM records WHERE seq>? ORDER BY seq LIMIT ?", (last, chunk)).fetchall()
        if not rows:
            return
        yield from rows
        last = rows[-1][0]


def audit_data(data_dir: Path, trust: Trust | None = None,
               progress: Callable[[int], None] | None = None) -> AuditResult:
    """Audit a broker's data directory (read-only)."""
    path = data_dir / "exchange.sqlite"
    if not path.is_file():
        raise InputError(f"no exchange store at {path}", code=Code.NO_STORE)
    if trust is None:
        trust = Trust.from_file(data_dir / TRUST_FILE)
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return _audit(db, trust, progress)
    finally:
        db.close()


def _audit(db: sqlite3.Connection, trust: Trust,
           progress: Callable[[int], None] | None) -> AuditResult:
    res = AuditResult()
    key = tlog.NoteKey(trust.origin, trust.log_key)
    checkpoints: list[tlog.Checkpoint] = []
    for size, root, note in db.execute("SELECT size, root, note FROM checkpoints ORDER BY size"):
        try:
            cp = tlog.open_checkpoint(key, note, trust.origin)
        except IntegrityError as err:
            return res.fail(max(size - 1, 0), "checkpoint_forged",
                            f"checkpoint of size {size}: {err.message}")
        if cp.size != size or cp.root != root:
            return res.fail(max(size - 1, 0), "checkpoint_forged",
                            f"checkpoint row of size {size} does not match its signed note")
        checkpoints.append(cp)
    res.checkpoints = len(checkpoints)

    verifier = Verifier(trust.signing_keys, history=trust.certified)
    agreement_check = _AgreementChain(trust)
    batches: dict[int, tuple[Statement, bytes]] = {}
    stored_leaf = _stored_leaves(db)
    tree = merkle.CompactRange()
    cps = iter(checkpoints)
    next_cp = next(cps, None)
    while next_cp is not None and next_cp.size == 0:
        next_cp = next(cps, None)
    for expected, row in enumerate(_records(db)):
        seq, dataset, _key, _version, batch_id, idx, accepted_at, dig, body_raw = row
        if seq != expected:
            return res.fail(expected, "record_missing", f"seq {expected} is not in the store")
        if batch_id not in batches:
            row = db.execute("SELECT statement, signature FROM batches WHERE id=?",
                             (batch_id,)).fetchone()
            if row is None:
                return res.fail(seq, "record_changed", f"batch {batch_id} of seq {seq} is gone")
            st, sig = _stmt.decode(row[0]), row[1]
            try:
                verifier.verify_statement(st, sig)
            except ExchangeError as err:
                return res.fail(seq, "signature_invalid", f"batch {batch_id}: {err.message}")
            batches[batch_id] = (st, sig)
            res.batches += 1
        st, _ = batches[batch_id]
        try:
            body = _body.decode(body_raw)
            ev = body.event
            spec = datasets.get(ev.dataset, ev.schema_version)
            # re-derive the commitment of every group whose plaintext is held; an erased group
            # keeps only its commitment (which the digest covers), and no field of its own
            erased = {g: c for g, c in body.commitments.items() if g not in body.salts}
            commitments = disclosure.opened_commitments(ev.data, spec.groups, body.salts, erased)
            d = digest(ev.attributes(), commitments)
        except (msgspec.DecodeError, msgspec.ValidationError, ExchangeError, KeyError) as err:
            return res.fail(seq, "record_changed", f"seq {seq} cannot be read: {err}")
        if d != dig or commitments != body.commitments or ev.dataset != dataset:
            return res.fail(seq, "record_changed", f"seq {seq}: content does not match its "
                            "digest")
        try:
            merkle.verify_inclusion(merkle.leaf_hash(d), idx, st.size, body.path, st.root)
        except IntegrityError:
            return res.fail(seq, "record_changed", f"seq {seq} is not in its signed batch")
        if ev.source != st.node:
            return res.fail(seq, "record_changed", f"seq {seq}: source is not the signer")
        if dataset == AGREEMENTS:
            problem = agreement_check.check(seq, ev.data, _version)
            if problem is not None:
                return res.fail(seq, "agreement_invalid", problem)
            res.agreements += 1
        leaf = tlog.entry_leaf(seq, dataset, st.node, d, st.root, tlog.micros(accepted_at))
        if stored_leaf.get(seq) != leaf:
            return res.fail(seq, "record_changed", f"seq {seq}: log entry does not match the "
                            "stored record")
        tree.append(leaf)
        res.entries = tree.size
        while next_cp is not None and next_cp.size == tree.size:
            if tree.root() != next_cp.root:
                return res.fail(seq, "inconsistent_checkpoints",
                                f"checkpoint of size {next_cp.size} does not match the records")
            next_cp = next(cps, None)
        if progress is not None and seq % 10_000 == 0:
            progress(seq)
    res.signatures = verifier.verifications
    if next_cp is not None:
        return res.fail(tree.size, "log_truncated",
                        f"a checkpoint covers {next_cp.size} entries; the store has {tree.size}")
    if len(stored_leaf) > tree.size:
        return res.fail(tree.size, "log_truncated",
                        f"the log has {len(stored_leaf)} leaves; the store has {tree.size} "
                        "records")
    return res


def audit_entries(entries: list[dict[str, Any]], checkpoints: list[tlog.Checkpoint]
                  ) -> AuditResult:
    """Online audit core: rebuild the tree from served entries, check the checkpoints."""
    res = AuditResult(checkpoints=len(checkpoints))
    tree = merkle.CompactRange()
    wanted = sorted(checkpoints, key=lambda c: c.size)
    i = 0
    while i < len(wanted) and wanted[i].size == 0:
        i += 1
    for e in entries:
        seq = e["seq"]
        if seq != tree.size:
            return res.fail(tree.size, "record_missing", f"entry {tree.size} was not served")
        leaf = tlog.entry_leaf(seq, e["dataset"], e["publisher"], base64.b64decode(e["digest"]),
                               base64.b64decode(e["batch_root"]), e["accepted_us"])
        tree.append(leaf)
        while i < len(wanted) and wanted[i].size == tree.size:
            if tree.root() != wanted[i].root:
                return res.fail(seq, "inconsistent_checkpoints",
                                f"checkpoint of size {wanted[i].size} does not match the entries")
            i += 1
    res.entries = tree.size
    if i < len(wanted):
        return res.fail(tree.size, "log_truncated",
                        f"a checkpoint covers {wanted[i].size} entries; {tree.size} were served")
    return res
