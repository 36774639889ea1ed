"""``exchange demo`` end to end: a real broker process, the four agencies, an honest summary."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from exchange.cli.demo import split_records
from tests.conftest import OWNERS

SUBSCRIPTIONS = {
    f"{OWNERS['tax']}/population/tax-residents",
    f"{OWNERS['land']}/population/land-users",
    f"{OWNERS['vehicle']}/population/vehicle-owners",
    f"{OWNERS['vehicle']}/tax/vehicle-organisations",
}


def test_demo_json(tmp_path: Path) -> None:
    data = tmp_path / "demo"
    proc = subprocess.run(
        # seeded: which faults the agencies make is then fixed, so the codes below are too
        [sys.executable, "-m", "exchange", "demo", "--records", "300", "--json", "--seed", "1",
         "--data", str(data)], capture_output=True, text=True, timeout=180, check=False)
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    s = json.loads(proc.stdout)  # exactly one JSON object, nothing else on stdout
    assert isinstance(s, dict)

    assert s["published"] == 300
    assert s["accepted"] > 0
    assert s["accepted"] + s["duplicates"] + s["rejected"]["total"] + s["failed"] == 300
    assert s["failed"] == 0 and s["unexpected"] == 0
    assert s["rejected"]["total"] == sum(s["rejected"]["by_code"].values()) > 0
    assert len(s["rejected"]["by_code"]) >= 3, s["rejected"]

    assert set(s["delivered"]) == SUBSCRIPTIONS
    for name, n in s["delivered"].items():
        dataset = name.split("/")[1]
        assert n == s["accepted_by_dataset"][dataset] > 0, name
        assert s["lag"][name] == 0
    assert s["lost"] == 0 and s["caught_up"]
    assert s["verified"] == sum(s["delivered"].values())
    assert s["verification_failures"] == 0
    assert s["records_per_s"] > 0
    assert s["broker_exit"] == 0

    assert s["data_dir"] == str(data)
    assert (data / "broker.log").stat().st_size > 0
    assert (data / "data" / "exchange.sqlite").exists()
    assert not (data / "data" / "broker.pid").exists()  # the broker stopped cleanly

    # the four quality scores per dataset, each in [0, 1]; faults make some below 1
    assert set(s["quality"]) == {"population", "tax", "land", "vehicle"}
    for scores in s["quality"].values():
        assert set(scores) == {"correct", "sufficient", "clean", "live"}
        assert all(0.0 <= v <= 1.0 for v in scores.values())
    assert min(q["correct"] for q in s["quality"].values()) < 1.0

    # the exchange floor: requested, approved, countersigned (land is core data), records
    # flowed, revoked, and the subscription was closed for it
    floor = s["agreements"]
    assert [(st["step"], st["state"]) for st in floor["steps"]] == [
        ("requested", "requested"), ("approved", "approved"), ("countersigned", "active"),
        ("revoked", "revoked")]
    assert floor["delivered_before_revocation"] == s["accepted_by_dataset"]["land"] > 0
    assert floor["subscription_closed"] == "no_agreement" and floor["closed_within_s"] < 1.0
    # a lookup, and who received that citizen's record: the three subscribers and the lookup
    access = s["access"]
    assert access["lookup"]["verified"] and access["lookup"]["fields"] == ["permanent_address"]
    received = {(r["node"], r["kind"]) for r in access["versions"][0]["received_by"]}
    assert {(OWNERS["tax"], "delivery"), (OWNERS["land"], "delivery"),
            (OWNERS["vehicle"], "delivery"), (OWNERS["land"], "lookup")} <= received

    # the data directory the demo leaves can be audited afterwards
    audit = subprocess.run([sys.executable, "-m", "exchange", "audit", "--data",
                            s["store_dir"], "--json"], capture_output=True, text=True,
                           timeout=60, check=False)
    assert audit.returncode == 0, audit.stdout + audit.stderr
    report = json.loads(audit.stdout)
    # every record, and every agreement transition with the signatures inside it
    assert report["ok"] and report["entries"] == s["accepted"] + len(floor["steps"])
    assert report["agreement_entries"] == len(floor["steps"])


def test_demo_refuses_a_directory_in_use(tmp_path: Path) -> None:
    (tmp_path / "something").write_text("x")
    proc = subprocess.run(
        [sys.executable, "-m", "exchange", "demo", "--records", "100", "--data", str(tmp_path)],
        capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 2
    assert "not an empty directory" in proc.stderr and "Traceback" not in proc.stderr


def test_records_are_shared_people_first() -> None:
    assert split_records(300) == {"population": 120, "tax": 60, "land": 60, "vehicle": 60}
    assert sum(split_records(1003).values()) == 1003
    assert split_records(0) == {"population": 0, "tax": 0, "land": 0, "vehicle": 0}
