"""What disclosure groups cost per record: commitments at publish (seal), at the gate (verify the
batch) and at the subscriber (verify a projected record). ``python -m benchmarks.disclosure``.
"""

from __future__ import annotations

import datetime as dt
import os
import time

import msgspec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from exchange.core import datasets, disclosure
from exchange.core.envelope import rfc3339
from exchange.core.seal import seal
from exchange.core.signing import BatchProof, Verifier
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
    paths = [verifier.verify_batch(b, spec.groups)[2] for b in batches]
    out["gate_verify_batch_us"] = (time.perf_counter() - t) / records * 1e6

    granted = {"residence"}
    projected = []
    for b, ps in zip(batches, paths, strict=True):
        for i, r in enumerate(b.records):
            data, sl, wh = disclosure.project(r.event.data, spec.groups, r.salts, granted)
            projected.append((msgspec.structs.replace(r.event, data=data), sl, wh,
                              BatchProof(b.statement, b.signature, i, ps[i])))
    sub = Verifier({NODE: key.public_key()})
    t = time.perf_counter()
    for ev, sl, wh, proof in projected:
        sub.verify_record(ev, spec.groups, sl, wh, proof)
    out["subscriber_verify_projected_us"] = (time.perf_counter() - t) / records * 1e6
    budget = 1e6 / 50_000  # the end-to-end target: 20 µs per record
    print(f"population records, {len(spec.groups)} groups, batches of 1,000:")
    for k, v in out.items():
        print(f"  {k:<32}{v:>7.2f} µs/record  ({v / budget:.0%} of a 20 µs budget)")
    print(msgspec.json.encode({k: round(v, 2) for k, v in out.items()}).decode())


if __name__ == "__main__":
    main()
