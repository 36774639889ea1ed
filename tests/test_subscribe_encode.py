"""The subscribe feed's encoding: a fully granted record spliced from the stored MessagePack is
byte for byte what decoding, projecting (``disclosure.project``, the one projection) and encoding
it gives."""

from __future__ import annotations

import os

import msgspec
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from exchange.core import datasets
from exchange.core.errors import IntegrityError
from exchange.core.feed import encode_record, projected
from exchange.core.ledger import StoredBody, StoredRecord
from exchange.core.seal import seal
from exchange.core.signing import BatchProof, Verifier
from exchange.core.wire import BatchRef, DeliveredRecord, RecordsIn
from tests.conftest import SEALED_AT, people

NODE = "vn.gov.mps.population"
SPEC = datasets.get("population")


def stored(completeness: float = 1.0) -> list[StoredRecord]:
    key = Ed25519PrivateKey.generate()
    batch = seal(key, NODE, SPEC, [(p["id"], 3, p) for p in people(5, seed=4)],
                 os.urandom(32), time=SEALED_AT)
    commitments, digests, paths = Verifier({NODE: key.public_key()}).verify_batch(
        batch, SPEC.groups)
    return [StoredRecord(100 + i, "population", r.event.subject, 3, 7, i, 1.5e9, digests[i],
                         msgspec.msgpack.encode(StoredBody(r.event, r.salts, commitments[i],
                                                           paths[i], completeness)))
            for i, r in enumerate(batch.records)]


@pytest.mark.parametrize("redelivered", [False, True])
def test_spliced_full_grant_is_the_projected_record(redelivered: bool) -> None:
    full = frozenset(SPEC.groups)
    for r in stored():
        raw = encode_record(r, full, redelivered, binary=True)
        assert raw is not None
        body = msgspec.msgpack.decode(r.body, type=StoredBody)
        assert bytes(raw) == msgspec.msgpack.encode(projected(r, full, redelivered))
        got = msgspec.msgpack.decode(bytes(raw), type=DeliveredRecord)
        assert got.event == body.event and got.salts == body.salts and not got.withheld


def test_partial_grants_and_json_are_projected() -> None:
    part = frozenset({"residence"})
    for r in stored():
        body = msgspec.msgpack.decode(r.body, type=StoredBody)
        raw = encode_record(r, part, False, binary=True)
        assert raw is not None
        got = msgspec.msgpack.decode(bytes(raw), type=DeliveredRecord)
        assert set(got.salts) == {"residence"} and set(got.withheld) == set(SPEC.groups) - part
        assert set(got.event.data) == {"permanent_address"}
        as_json = encode_record(r, frozenset(SPEC.groups), False, binary=False)
        assert as_json is not None
        assert msgspec.json.decode(bytes(as_json), type=DeliveredRecord).event == body.event


def test_below_the_agreements_completeness_is_passed_over() -> None:
    r = stored(completeness=0.5)[0]
    assert encode_record(r, frozenset(SPEC.groups), False, True, min_completeness=0.9) is None
    assert encode_record(r, frozenset(SPEC.groups), False, True, min_completeness=0.5)


def test_subscriber_side_decoding_leaves_format_checks_to_the_signature() -> None:
    # the SDK decodes deliveries without the attribute patterns; an attribute changed in
    # transit, well-formed or not, still fails verification against the publisher's signature
    key = Ed25519PrivateKey.generate()
    batch = seal(key, NODE, SPEC, [(p["id"], 1, p) for p in people(2, seed=6)], os.urandom(32),
                 time=SEALED_AT)
    verifier = Verifier({NODE: key.public_key()})
    _, _, paths = verifier.verify_batch(batch, SPEC.groups)
    rec = batch.records[0]
    frame = {"type": "records", "batches": [BatchRef(1, batch.statement, batch.signature)],
             "records": [DeliveredRecord(seq=0, event=rec.event, salts=rec.salts, batch=1,
                                         index=0, path=paths[0], accepted_at=1.0)]}
    good = msgspec.msgpack.decode(msgspec.msgpack.encode(frame), type=RecordsIn)
    d = good.records[0]
    proof = BatchProof(batch.statement, batch.signature, 0, d.path)
    verifier.verify_record(d.event, SPEC.groups, d.salts, d.withheld, proof)
    for attr, value in (("time", "yesterday"), ("time", "2026-01-01T00:00:00Z"),
                        ("source", "VN.GOV.X"), ("specversion", "0.3")):
        bad = msgspec.structs.replace(d.event, **{attr: value})
        with pytest.raises(IntegrityError):
            verifier.verify_record(bad, SPEC.groups, d.salts, d.withheld, proof)
