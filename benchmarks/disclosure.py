"""What disclosure groups cost per record: commitments at publish (seal), at the gate (verify the
batch), the broker's projection for a subscriber granted one group (the subscribe feed's own code)
and at the subscriber (verify a projected record). ``python -m benchmarks.disclosure``.
"""

from __future__ import annotations

import datetime as dt
import os
import time

import msgspec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from exchange.core import datasets, disclosure
from exchange.core.envelope import rfc3339
from exchange.core.feed import encode_record
from exchange.core.ledger import StoredBody, StoredRecord
from exchange.core.seal import seal
from exchange.core.signing import BatchProof, Verifier
from exchange.core.wire import DeliveredRecord
from exchange.sim.generate import Generator

NODE = "vn.gov.mps.population"


def main(records: int = 20_000) -> None:
    spec = datasets.get("population")
    key = Ed25519PrivateKey.generate()
    people = Generator(2, today=dt.date(2026, 11, 22)).population(records)
    items = [(p["id"], 1, p) for p in people]
    out = {}

    t = time.perf_counter()
    batches = [seal(key, NODE, spec, items[i:i + 1000], os.urandom(32), time=rfc3339(time.time()))
               for i in range(0, records, 1000)]
    out["seal_us"] = (time.perf_counter() - t) / records * 1e6

    salts = [r.salts for b in batches for r in b.records]
    datas = [r.event.data for b in batches for r in b.records]
    t = time.perf_counter()
    for d, s in zip(datas, salts, strict=True):
        disclosure.commitments(d, spec.groups, s)
    out["commitments_us"] = (time.perf_counter() - t) / records * 1e6

    verifier = Verifier({NODE: key.public_key()})
    t = time.perf_counter()
    checked = [verifier.verify_batch(b, spec.groups) for b in batches]
    out["gate_verify_batch_us"] = (time.perf_counter() - t) / records * 1e6

    # what the broker runs for a subscriber granted one group: the feed's projection and
    # encoding of stored records (``exchange.core.feed.encode_record``)
    stored = [StoredRecord(n * 1000 + i, "population", r.event.subject, 1, n, i, 0.0, digests[i],
                           msgspec.msgpack.encode(StoredBody(r.event, r.salts, commitments[i],
                                                             paths[i])))
              for n, (b, (commitments, digests, paths)) in enumerate(
                  zip(batches, checked, strict=True))
              for i, r in enumerate(b.records)]
    granted = frozenset({"residence"})
    t = time.perf_counter()
    encoded = [encode_record(r, granted, False, binary=True) for r in stored]
    out["broker_project_encode_us"] = (time.perf_counter() - t) / records * 1e6
    delivered = [msgspec.msgpack.decode(bytes(raw), type=DeliveredRecord)
                 for raw in encoded if raw is not None]
    sub = Verifier({NODE: key.public_key()})
    proofs = {n: b for n, b in enumerate(batches)}
    t = time.perf_counter()
    for got in delivered:
        b = proofs[got.batch]
        sub.verify_record(got.event, spec.groups, got.salts, got.withheld,
                          BatchProof(b.statement, b.signature, got.index, got.path))
    out["subscriber_verify_projected_us"] = (time.perf_counter() - t) / records * 1e6
    budget = 1e6 / 50_000  # the end-to-end target: 20 µs per record
    print(f"population records, {len(spec.groups)} groups, batches of 1,000:")
    for k, v in out.items():
        print(f"  {k:<32}{v:>7.2f} µs/record  ({v / budget:.0%} of a 20 µs budget)")
    print(msgspec.json.encode({k: round(v, 2) for k, v in out.items()}).decode())


if __name__ == "__main__":
    main()
