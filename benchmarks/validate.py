"""Decode + validate throughput of population records on one core.

    python -m benchmarks.validate [N]

Generates N (default 100,000) population records, serialises them as NDJSON bytes, then times
decoding each line straight into the record Struct and running the domain rules and the
normalisation check (``DatasetSpec.validate_json``). Prints records per second.

A second figure is the slow path of ``exchange schema validate``: the same records each made
invalid three ways (``sex`` "F", ``birth_date`` written 14/03/1985, an unknown field), so the fast
path refuses each and ``DatasetSpec.validate_json_all`` explains every problem.
"""

from __future__ import annotations

import datetime as dt
import sys
import time

import msgspec

from exchange.core.datasets import DatasetSpec, RuleContext, get
from exchange.sim.generate import Generator

TODAY = dt.date(2026, 11, 22)


def validate_rate(n: int, repeat: int = 3) -> float:
    """Records/s of ``DatasetSpec.validate_json`` over ``n`` population NDJSON lines (best of
    ``repeat``); the machine's decode + validate limit on one core."""
    spec = get("population")
    people = Generator(2026, today=TODAY).population(n)
    encoder = msgspec.json.Encoder()
    lines = [encoder.encode(p) for p in people]
    ctx = RuleContext(today=TODAY)
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        for line in lines:
            if not spec.validate_json(line, ctx).ok:
                raise ValueError("a generated record is invalid")
        best = min(best, time.perf_counter() - t0)
    return n / best


def _spoil(line: bytes) -> bytes:
    """A record with three problems: an enum, a date as DD/MM/YYYY, an unknown field."""
    data = msgspec.json.decode(line)
    y, m, d = data["birth_date"].split("-")
    data.update(sex="F", birth_date=f"{d}/{m}/{y}", phone="0912345678")
    return msgspec.json.encode(data)


def explain_rate(spec: DatasetSpec, lines: list[bytes], ctx: RuleContext) -> float:
    """Records/s of ``validate_json_all`` over invalid ``lines`` (best of 3): the typed decoder
    refuses each, then ``validate_all`` reports every problem."""
    bad = [_spoil(line) for line in lines]
    best = float("inf")
    for _ in range(3):
        t0 = time.perf_counter()
        for line in bad:
            result = spec.validate_json_all(line, ctx)
            if len(result.violations) < 3:
                raise ValueError("a spoiled record has fewer than three problems")
        best = min(best, time.perf_counter() - t0)
    return len(bad) / best


def main(argv: list[str]) -> int:
    n = int(argv[0]) if argv else 100_000
    spec = get("population")
    t0 = time.perf_counter()
    people = Generator(2026, today=TODAY).population(n)
    t_gen = time.perf_counter() - t0
    encoder = msgspec.json.Encoder()
    ndjson = b"\n".join(encoder.encode(p) for p in people) + b"\n"
    lines = ndjson.splitlines()
    ctx = RuleContext(today=TODAY)

    best = float("inf")
    for _ in range(3):
        t0 = time.perf_counter()
        invalid = 0
        for line in ndjson.splitlines():
            if not spec.validate_json(line, ctx).ok:
                invalid += 1
        best = min(best, time.perf_counter() - t0)
    if invalid:
        print(f"unexpected: {invalid} invalid records", file=sys.stderr)
        return 1
    print(f"generated {n:,} population records in {t_gen:.2f} s ({n / t_gen:,.0f}/s); "
          f"NDJSON {len(ndjson) / 1e6:.1f} MB")
    print(f"decode + validate + rules: {n / best:,.0f} records/s "
          f"({best * 1e6 / len(lines):.1f} µs per record, best of 3)")
    sample = lines[: max(1, n // 5)]
    rate = explain_rate(spec, sample, ctx)
    print(f"invalid records, every problem explained (3 each): {rate:,.0f} records/s "
          f"({1e6 / rate:.1f} µs per record, {len(sample):,} records, best of 3)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
