"""``exchange bench --quick --json`` end to end, as an operator runs it: keys and sane values.

Never asserts on speed: only that every scenario ran, rates are positive and the ratios are the
ones the reported numbers give.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.hdr import Histogram

ROOT = Path(__file__).resolve().parent.parent


def test_histogram_percentiles_within_bucket_error() -> None:
    h = Histogram()
    for ms in range(1, 1001):  # 1..1000 ms, uniform
        h.record(ms / 1000)
    assert h.total == 1000
    for p, want in ((50, 500), (95, 950), (99, 990)):
        assert want <= h.percentile(p) <= want * 1.02
    assert h.percentile(100) == 1000
    assert Histogram().summary()["p99_ms"] == 0


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_bench_quick_json(tmp_path: Path) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "exchange", "bench", "--quick", "--json", "--duration", "1",
         "--subscribers", "1,4", "--no-progress", "--work-dir", str(tmp_path)],
        capture_output=True, text=True, timeout=180, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-3000:]
    report = json.loads(out.stdout)
    for key in ("e2e_records_per_s", "p99_ms_at_half_load", "jetstream_baseline_records_per_s",
                "ratio_vs_jetstream", "verify_limit_per_s", "replay_records_per_s",
                "broker_peak_rss_mb", "per_record_sig_records_per_s", "validate_limit_per_s",
                "sqlite_insert_limit_per_s", "publish_only_records_per_s",
                "ingest_per_record_sig_records_per_s"):
        assert report[key] is not None and report[key] > 0, key
    assert report["ratio_vs_jetstream"] == pytest.approx(
        report["e2e_records_per_s"] / report["jetstream_baseline_records_per_s"],
        rel=0.01, abs=1e-3)
    assert report["ratio_per_record_vs_verify_limit"] == pytest.approx(
        report["per_record_sig_records_per_s"] / report["verify_limit_per_s"],
        rel=0.01, abs=1e-3)
    assert report["ratio_ingest_per_record_vs_verify_limit"] == pytest.approx(
        report["ingest_per_record_sig_records_per_s"] / report["verify_limit_per_s"],
        rel=0.01, abs=1e-3)
    names = [s["scenario"] for s in report["scenarios"]]
    assert "publish only" in names and "replay from seq 0" in names
    assert "publish only, per-record sigs" in names
    assert {s["subscribers"] for s in report["scenarios"]} >= {1, 4}
    for s in report["scenarios"]:
        assert s["records"] > 0 and s["records_per_s"] > 0, s
        assert s["broker_cpu_s"] > 0 and s["broker_peak_rss_mb"] > 0, s
        lat = s["latency"]
        if lat is not None:
            assert 0 < lat["p50_ms"] <= lat["p95_ms"] <= lat["p99_ms"] <= lat["max_ms"], s


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_bench_load_in_processes(tmp_path: Path) -> None:
    """``--load-procs 2``: publishers and each subscriber in processes of their own; every
    party's CPU per record, the machine's cores and both JetStream ratios are reported."""
    out = subprocess.run(
        [sys.executable, "-m", "exchange", "bench", "--quick", "--json", "--duration", "0.5",
         "--load-procs", "2", "--subscribers", "1,2", "--no-progress", "--work-dir",
         str(tmp_path)],
        capture_output=True, text=True, timeout=240, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-3000:]
    report = json.loads(out.stdout)
    machine = report["machine"]
    assert machine["cores"] >= 1 and 1 <= machine["affinity"] <= machine["cores"]
    assert "cpu_model" in machine
    assert report["load_procs"] == 2
    for key in ("jetstream_baseline_records_per_s", "jetstream_equal_work_records_per_s"):
        assert report[key] > 0, key
    assert report["ratio_vs_jetstream"] == pytest.approx(
        report["e2e_records_per_s"] / report["jetstream_baseline_records_per_s"],
        rel=0.01, abs=1e-3)
    assert report["ratio_vs_jetstream_equal_work"] == pytest.approx(
        report["e2e_records_per_s"] / report["jetstream_equal_work_records_per_s"],
        rel=0.01, abs=1e-3)
    for key in ("jetstream", "jetstream_equal_work"):
        p = report[key]["parties"]
        assert p["publishers"]["procs"] == 2 and p["publishers"]["us_per_record"] > 0, key
        assert p["subscribers"]["us_per_record"] > 0 and p["nats"]["us_per_record"] > 0, key
    e2e = [s for s in report["scenarios"] if s["scenario"].startswith("e2e batch sigs")]
    assert {s["subscribers"] for s in e2e} == {1, 2}
    for s in e2e:
        p = s["parties"]
        assert s["records_per_s"] > 0 and "procs" in s["load"], s
        assert p["broker"]["us_per_record"] > 0 and p["publishers"]["us_per_record"] > 0, s
        assert p["publishers"]["procs"] == 2 and p["subscribers"]["procs"] == s["subscribers"]
        assert len(p["subscribers"]["each_us_per_record"]) == s["subscribers"]
        assert all(us > 0 for us in p["subscribers"]["each_us_per_record"]), s
        # every subscriber verified every record the publishers had receipts for
        assert all(n >= p["publishers"]["accepted"] > 0
                   for n in p["subscribers"]["delivered_each"]), s
    assert report["e2e_parties"]["subscribers"]["procs"] == 1


def test_bench_refuses_workers_the_broker_lacks() -> None:
    from benchmarks.bench import Options, refusal
    from benchmarks.harness import broker_has_option

    why = refusal(Options(workers=2))
    if broker_has_option("--workers"):
        assert why is None
    else:
        assert why == "this broker has no --workers"
    assert refusal(Options(brokers=2)) is not None  # needs --store nats
    assert refusal(Options(store="nats", brokers=2, load_procs=0)) is not None
    assert refusal(Options()) is None
