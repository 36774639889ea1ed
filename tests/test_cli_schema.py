"""``exchange schema``: list, show, export, validate (exit 0 valid, 1 invalid, 2 unusable)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from exchange.cli import main
from exchange.core import datasets

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "schemas"
TODAY = ["--today", "2026-11-22"]


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    rc = main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


def test_list(capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, _ = run(capsys, "schema", "list")
    assert rc == 0
    assert [line.split()[0] for line in out.splitlines()] == ["land", "population", "tax",
                                                              "vehicle"]
    assert "vn.exchange.population.v1" in out


def test_show(capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, _ = run(capsys, "schema", "show", "tax")
    assert rc == 0
    assert out == datasets.schema_text(datasets.get("tax"))
    rc, out, _ = run(capsys, "schema", "show", "tax", "--version", "1")
    assert rc == 0 and json.loads(out)["$id"] == "/v1/schemas/tax/1"
    rc, _, err = run(capsys, "schema", "show", "weather")
    assert rc == 2 and "unknown dataset" in err
    rc, _, err = run(capsys, "schema", "show", "tax", "--version", "7")
    assert rc == 2 and "no version 7" in err


def test_export(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    rc, out, _ = run(capsys, "schema", "export", str(tmp_path))
    assert rc == 0 and len(out.splitlines()) == 4
    for name in datasets.names():
        committed = (EXAMPLES / name / "v1" / "schema.json").read_text("utf-8")
        assert (tmp_path / name / "v1" / "schema.json").read_text("utf-8") == committed


@pytest.mark.parametrize("name", ["population", "tax", "land", "vehicle"])
def test_validate_examples(capsys: pytest.CaptureFixture[str], name: str) -> None:
    valid = EXAMPLES / name / "v1" / "examples" / "valid.ndjson"
    rc, out, _ = run(capsys, "schema", "validate", name, str(valid), *TODAY)
    assert rc == 0
    assert out.endswith(" invalid, 0 notes\n") and " 0 invalid" in out
    invalid = EXAMPLES / name / "v1" / "examples" / "invalid.ndjson"
    rc, out, _ = run(capsys, "schema", "validate", name, str(invalid), "--format", "json", *TODAY)
    assert rc == 1
    report = json.loads(out)
    n = len(invalid.read_bytes().splitlines())
    assert report["dataset"] == name
    assert (report["total"], report["valid"], report["invalid"]) == (n, 0, n)
    assert {e["index"] for e in report["errors"]} == set(range(n))
    assert all(set(e) >= {"index", "path", "code", "message"} for e in report["errors"])


def test_text_output(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    f = tmp_path / "people.ndjson"
    lines = (EXAMPLES / "population" / "v1" / "examples" / "valid.ndjson").read_text("utf-8")
    bad = json.loads(lines.splitlines()[0])
    bad["permanent_address"]["ward_code"] = "99999"
    note = json.loads(lines.splitlines()[1])
    note["full_name"] = "Trần  Thị Hoà"
    f.write_text(lines + "\n" + json.dumps(bad) + "\n" + json.dumps(note, ensure_ascii=False)
                 + "\n", "utf-8")
    rc, out, _ = run(capsys, "schema", "validate", "population", str(f), *TODAY)
    assert rc == 1
    assert out.splitlines() == [
        "record 6 (line 8): $.permanent_address.ward_code: unknown_ward: "
        "no commune '99999' in the 2025 list",
        "record 7 (line 9): $.full_name: not_normalised (note): not in canonical form (NFC, "
        "trimmed, single spaces, tone placement \"Hòa\"); normalised: 'Trần Thị Hòa'",
        "population v1: 8 records, 7 valid, 1 invalid, 1 notes",
    ]


def test_json_array_and_envelopes(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    records = [json.loads(line) for line in
               (EXAMPLES / "vehicle" / "v1" / "examples" / "valid.ndjson").read_text("utf-8")
               .splitlines()]
    envelopes = [{"specversion": "1.0", "id": str(i), "source": "vn.gov.mps.vehicle",
                  "type": "vn.exchange.vehicle.v1", "subject": r["plate"], "data": r}
                 for i, r in enumerate(records)]
    f = tmp_path / "mixed.json"
    f.write_text(json.dumps(records[:2] + envelopes, indent=2), "utf-8")
    rc, out, _ = run(capsys, "schema", "validate", "vehicle", str(f), "--format", "json", *TODAY)
    assert rc == 0, out
    assert json.loads(out)["total"] == 2 + len(envelopes)

    envelopes[0]["type"] = "vn.exchange.tax.v1"
    envelopes[1]["data"]["vin"] = "RL4BT3F30N5O12345"
    del envelopes[2]["data"]
    f.write_text("\n".join(json.dumps(e) for e in envelopes), "utf-8")
    rc, out, _ = run(capsys, "schema", "validate", "vehicle", str(f), "--format", "json", *TODAY)
    assert rc == 1
    errors = json.loads(out)["errors"]
    assert [(e["index"], e["code"]) for e in errors] == [
        (0, "type_mismatch"), (1, "vin_format"), (2, "missing_field")]


def test_single_pretty_object(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    line = (EXAMPLES / "tax" / "v1" / "examples" / "valid.ndjson").read_text("utf-8")
    f = tmp_path / "one.json"
    f.write_text(json.dumps(json.loads(line.splitlines()[0]), indent=2), "utf-8")
    rc, out, _ = run(capsys, "schema", "validate", "tax", str(f), *TODAY)
    assert rc == 0 and "1 records, 1 valid" in out


@pytest.mark.parametrize(("content", "where"), [
    (b'{"id": "1"}\n{"id": 2,, }\n', "line 2, column 10"),
    (b'[{"id": "1"},\n {"id": }]', "line 2, column 9"),
    (b'{"id": "1"}\n\n{"full_name": "L\xc3\xaa\xff"}\n', "line 3, column 18"),
    (b'{"id": "1"\n', "line 2, column 1"),
    (b'{"id": "1"}\n{"id": "2"} {"id": "3"}\n', "line 2, column 13"),
    (b"[1, 2] x", "line 1, column 8"),
])
def test_malformed_input_exits_2(capsys: pytest.CaptureFixture[str], tmp_path: Path,
                                 content: bytes, where: str) -> None:
    f = tmp_path / "bad.ndjson"
    f.write_bytes(content)
    rc, out, err = run(capsys, "schema", "validate", "population", str(f), *TODAY)
    assert rc == 2
    assert out == ""
    assert where in err, err


def test_unreadable_file_exits_2(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    rc, _, err = run(capsys, "schema", "validate", "population", str(tmp_path / "missing"))
    assert rc == 2 and "cannot read" in err
    rc, _, err = run(capsys, "schema", "validate", "population", str(tmp_path))
    assert rc == 2


def test_empty_and_non_object_records(capsys: pytest.CaptureFixture[str],
                                      tmp_path: Path) -> None:
    f = tmp_path / "x.ndjson"
    f.write_bytes(b"\n  \n")
    assert run(capsys, "schema", "validate", "land", str(f))[0] == 0
    f.write_bytes(b'42\n"text"\n[]\n')
    rc, out, _ = run(capsys, "schema", "validate", "land", str(f), "--format", "json")
    assert rc == 1 and json.loads(out)["invalid"] == 3


def test_subprocess(tmp_path: Path) -> None:
    exe = Path(sys.executable).parent / "exchange"
    valid = EXAMPLES / "land" / "v1" / "examples" / "valid.ndjson"
    proc = subprocess.run([str(exe), "schema", "validate", "land", str(valid), "--format",
                           "json", *TODAY], capture_output=True, check=False)
    assert proc.returncode == 0, proc.stderr
    assert msgspec.json.decode(proc.stdout)["valid"] == 5
    invalid = EXAMPLES / "land" / "v1" / "examples" / "invalid.ndjson"
    proc = subprocess.run([str(exe), "schema", "validate", "land", str(invalid)],
                          capture_output=True, check=False)
    assert proc.returncode == 1 and b"land_purpose" in proc.stdout


@settings(max_examples=200, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(content=st.one_of(
    st.binary(max_size=200),
    st.lists(st.sampled_from([b"{", b"}", b"[", b"]", b'"specversion"', b'"data"', b":", b",",
                              b"\n", b'"1.0"', b"1", b"null", b'"id"', b"\xff", b" "]),
             max_size=30).map(b"".join),
))
def test_cli_never_tracebacks(tmp_path_factory: pytest.TempPathFactory, content: bytes) -> None:
    f = tmp_path_factory.mktemp("fuzz") / "in.ndjson"
    f.write_bytes(content)
    for fmt in ("text", "json"):
        rc = main(["schema", "validate", "population", str(f), "--format", fmt,
                   "--today", "2026-11-22"])
        assert rc in (0, 1, 2)
