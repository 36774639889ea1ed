"""``exchange schema``: list, show, export, validate (exit 0 valid, 1 invalid, 2 unusable)."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from exchange.cli import main
from exchange.cli import schema as schema_cli
from exchange.core import datasets

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "schemas"
TODAY = ["--today", "2026-11-22"]
VALID_LINE = (EXAMPLES / "population" / "v1" / "examples" / "valid.ndjson").read_bytes() \
    .splitlines()[0]


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    rc = main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


def test_list(capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, _ = run(capsys, "schema", "list")
    assert rc == 0
    assert [line.split()[:2] for line in out.splitlines()] == [
        ["land", "v1"], ["population", "v1"], ["population", "v2"], ["tax", "v1"],
        ["vehicle", "v1"]]
    assert "vn.exchange.population.v1" in out and "vn.exchange.population.v2" in out


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
    assert rc == 0 and len(out.splitlines()) == 5
    for name in datasets.names():
        for spec in datasets.versions(name):
            at = Path(name) / f"v{spec.version}" / "schema.json"
            assert (tmp_path / at).read_text("utf-8") == (EXAMPLES / at).read_text("utf-8")
    assert (tmp_path / "published.json").read_text() == (EXAMPLES / "published.json").read_text()


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
    rc, out, _ = run(capsys, "schema", "validate", "population", str(f), "--version", "1", *TODAY)
    assert rc == 1
    assert out.splitlines() == [
        "record 6 (line 8): $.permanent_address.ward_code: unknown_ward: "
        "no commune '99999' in the 2025 list",
        "record 7 (line 9): $.full_name: not_normalised (note): not in canonical form (NFC, "
        "trimmed, single spaces, tone placement \"Hòa\"); normalised: 'Trần Thị Hòa'",
        "population v1: 8 records, 7 valid, 1 invalid, 1 note",
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
    assert rc == 0 and "tax v1: 1 record, 1 valid, 0 invalid, 0 notes" in out


@pytest.mark.parametrize(("content", "where"), [
    (b'[{"id": "1"},\n {"id": }]', "line 2, column 9"),
    (b"[1, 2] x", "line 1, column 8"),
    (b'{"id": "1"\n', "line 1, column 11"),
    (b"\xff\xfe{\x00}\x00", "UTF-16"),
])
def test_unusable_input_exits_2(capsys: pytest.CaptureFixture[str], tmp_path: Path,
                                content: bytes, where: str) -> None:
    f = tmp_path / "bad.ndjson"
    f.write_bytes(content)
    rc, out, err = run(capsys, "schema", "validate", "population", str(f), *TODAY)
    assert rc == 2
    assert where in out and where in err, (out, err)


@pytest.mark.parametrize(("content", "where", "code"), [
    (b'{"id": "1"}\n{"id": 2,, }\n', (2, 10), "malformed"),
    (b'{"id": "1"}\n\n{"full_name": "L\xc3\xaa\xff"}\n', (3, 18), "bad_encoding"),
    (b'{"id": "1"}\n{"id": "2"} {"id": "3"}\n', (2, 13), "malformed"),
])
def test_a_bad_line_is_reported_and_validation_goes_on(
        capsys: pytest.CaptureFixture[str], tmp_path: Path, content: bytes,
        where: tuple[int, int], code: str) -> None:
    f = tmp_path / "bad.ndjson"
    f.write_bytes(content + VALID_LINE + b"\n")
    rc, out, _ = run(capsys, "schema", "validate", "population", str(f), "--format", "json",
                     *TODAY)
    assert rc == 1
    report = json.loads(out)
    assert (report["total"], report["valid"], report["unusable"]) == (3, 1, None)
    bad = [e for e in report["errors"] if e["code"] == code]
    assert [(e["line"], e["column"]) for e in bad] == [where]
    assert bad[0]["index"] == 1


def test_unreadable_file_exits_2(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    rc, _, err = run(capsys, "schema", "validate", "population", str(tmp_path / "missing"))
    assert rc == 2 and "cannot read" in err
    rc, _, err = run(capsys, "schema", "validate", "population", str(tmp_path))
    assert rc == 2


def test_empty_and_non_object_records(capsys: pytest.CaptureFixture[str],
                                      tmp_path: Path) -> None:
    f = tmp_path / "x.ndjson"
    f.write_bytes(b"\n  \n")
    assert run(capsys, "schema", "validate", "land", str(f))[0] == 2
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


# -- every problem of every record (issue 17) ----------------------------------------------------

def _line(**changes: object) -> bytes:
    data = json.loads(VALID_LINE)
    data.update(changes)
    return json.dumps(data, ensure_ascii=False).encode()


def test_every_problem_of_every_record(capsys: pytest.CaptureFixture[str],
                                       tmp_path: Path) -> None:
    f = tmp_path / "people.ndjson"
    bad_province = _line(permanent_address={"province_code": "02", "ward_code": "00004"},
                         phone="0912345678", fax="024")
    bad_date = _line(sex="F", birth_date="1990-02-30")
    f.write_bytes(VALID_LINE + b"\n" + bad_province + b"\n" + bad_date + b"\n")
    rc, out, _ = run(capsys, "schema", "validate", "population", str(f), "--format", "json",
                     *TODAY)
    assert rc == 1
    report = json.loads(out)
    assert (report["total"], report["valid"], report["invalid"]) == (3, 1, 2)
    assert [(e["index"], e["line"], e["path"], e["code"]) for e in report["errors"]] == [
        (1, 2, "$.phone", "unknown_field"), (1, 2, "$.fax", "unknown_field"),
        (1, 2, "$.permanent_address.province_code", "unknown_province"),
        (2, 3, "$.birth_date", "schema_violation"), (2, 3, "$.sex", "sex_code")]
    messages = [e["message"] for e in report["errors"]]
    assert "no such day" in messages[3]
    assert messages[4] == "sex must be one of: male, female; got 'F'"


def test_messages_say_what_to_fix(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    f = tmp_path / "people.ndjson"
    f.write_bytes(_line(birth_date="12/04/1990",
                        permanent_address={"province_code": "01", "ward_code": "0004"}) + b"\n")
    rc, out, _ = run(capsys, "schema", "validate", "population", str(f), "--version", "1",
                     *TODAY)
    assert rc == 1
    assert out.splitlines() == [
        "record 0 (line 1): $.birth_date: schema_violation: birth_date must be a date as "
        "YYYY-MM-DD, e.g. 1990-04-12; got '12/04/1990'",
        "record 0 (line 1): $.permanent_address.ward_code: unknown_ward: ward_code must be a "
        "5-digit commune/ward code, e.g. 00004; got '0004'",
        "population v1: 1 record, 0 valid, 1 invalid, 0 notes",
    ]


def test_byte_order_mark_is_a_note(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    f = tmp_path / "bom.ndjson"
    f.write_bytes(b"\xef\xbb\xbf" + VALID_LINE + b"\n")
    rc, out, _ = run(capsys, "schema", "validate", "population", str(f), "--format", "json",
                     *TODAY)
    assert rc == 0
    report = json.loads(out)
    assert report["valid"] == 1
    assert [(n["code"], n["line"]) for n in report["notes"]] == [("byte_order_mark", 1)]
    rc, out, _ = run(capsys, "schema", "validate", "population", str(f), *TODAY)
    assert rc == 0 and "byte order mark" in out and out.endswith("0 invalid, 1 note\n")


@pytest.mark.parametrize("content", [b"", b"\n", b"\n  \n\r\n", b"\xef\xbb\xbf"])
def test_empty_or_blank_input_is_no_records(capsys: pytest.CaptureFixture[str],
                                            tmp_path: Path, content: bytes) -> None:
    f = tmp_path / "empty.ndjson"
    f.write_bytes(content)
    rc, out, err = run(capsys, "schema", "validate", "land", str(f), *TODAY)
    assert rc == 2
    assert "no records" in out and "no records" in err
    rc, out, _ = run(capsys, "schema", "validate", "land", str(f), "--format", "json", *TODAY)
    assert rc == 2 and json.loads(out)["unusable"].startswith("no records")


def test_only_malformed_lines_is_no_records(capsys: pytest.CaptureFixture[str],
                                           tmp_path: Path) -> None:
    f = tmp_path / "table.csv"
    f.write_bytes(b"id,full_name\n001085012345,An\n")
    rc, out, err = run(capsys, "schema", "validate", "population", str(f), *TODAY)
    assert rc == 2
    assert "none of the 2 records is JSON" in err
    assert out.count(": malformed: ") == 2


def test_max_errors_caps_what_is_shown_not_what_is_counted(
        capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    f = tmp_path / "bad.ndjson"
    f.write_bytes(b"".join(_line(sex="F", phone=str(i)) + b"\n" for i in range(10)))
    rc, out, _ = run(capsys, "schema", "validate", "population", str(f), "--format", "json",
                     "--max-errors", "3", *TODAY)
    assert rc == 1
    report = json.loads(out)
    assert len(report["errors"]) == 3 and report["invalid"] == 10
    assert (report["error_count"], report["errors_not_shown"]) == (20, 17)
    rc, out, _ = run(capsys, "schema", "validate", "population", str(f), "--max-errors", "3",
                     *TODAY)
    lines = out.splitlines()
    assert len(lines) == 5
    assert lines[3] == "… and 17 problems more, not shown (--max-errors 3)"
    assert lines[4].endswith("10 records, 0 valid, 10 invalid, 0 notes")
    rc, out, _ = run(capsys, "schema", "validate", "population", str(f), "--max-errors", "0",
                     *TODAY)
    assert len(out.splitlines()) == 21  # 0: no limit


def test_junit(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    f = tmp_path / "people.ndjson"
    f.write_bytes(VALID_LINE + b"\n" + _line(sex="F", phone="1") + b"\n{not json\n")
    rc, out, _ = run(capsys, "schema", "validate", "population", str(f), "--format", "junit",
                     *TODAY)
    assert rc == 1
    root = ET.fromstring(out)
    assert root.tag == "testsuites"
    [suite] = root
    assert (suite.get("tests"), suite.get("failures"), suite.get("errors")) == ("3", "2", "0")
    cases = suite.findall("testcase")
    assert [c.get("name") for c in cases] == ["record 1 (line 2)", "record 2 (line 3, column 2)",
                                              "1 valid record"]
    failure = cases[0].find("failure")
    assert failure is not None and failure.text is not None
    assert failure.get("type") == "sex_code"
    assert failure.get("message") == "$.sex: sex_code: sex must be one of: male, female; got 'F'"
    assert failure.text.splitlines() == [
        "$.sex: sex_code: sex must be one of: male, female; got 'F'",
        "$.phone: unknown_field: unknown field 'phone': remove it, or use one of the schema's "
        "fields"]
    assert cases[1].find("failure") is not None and cases[2].find("failure") is None
    props = {p.get("name"): p.get("value") for p in suite.iter("property")}
    assert (props["records"], props["valid"], props["invalid"]) == ("3", "1", "2")


def test_pretty_printed_records_among_lines(capsys: pytest.CaptureFixture[str],
                                           tmp_path: Path) -> None:
    pretty = json.dumps(json.loads(VALID_LINE), indent=2, ensure_ascii=False).encode()
    f = tmp_path / "mixed.ndjson"
    f.write_bytes(VALID_LINE + b"\n" + pretty + b"\n" + b'{"id": "1",\n' + VALID_LINE + b"\n")
    rc, out, _ = run(capsys, "schema", "validate", "population", str(f), "--format", "json",
                     *TODAY)
    assert rc == 1
    report = json.loads(out)
    assert (report["total"], report["valid"]) == (4, 3)
    [e] = report["errors"]
    assert (e["code"], e["line"]) == ("malformed", 2 + pretty.count(b"\n") + 1)


def test_json_array_is_a_note(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    f = tmp_path / "people.json"
    f.write_bytes(b"[" + VALID_LINE + b"]")
    rc, out, _ = run(capsys, "schema", "validate", "population", str(f), "--format", "json",
                     *TODAY)
    assert rc == 0
    assert [n["code"] for n in json.loads(out)["notes"]] == ["not_streamed"]


def test_progress_only_on_a_terminal(capsys: pytest.CaptureFixture[str], tmp_path: Path,
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    f = tmp_path / "people.ndjson"
    f.write_bytes(VALID_LINE + b"\n")
    rc, _, err = run(capsys, "schema", "validate", "population", str(f), *TODAY)
    assert rc == 0 and err == ""

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    ticks = iter(float(t) for t in range(1000))
    screen = Terminal()
    progress = schema_cli.Progress(screen, 1000, lambda: next(ticks), interval=1.0)
    progress.update(10, 250)
    progress.update(20, 500)
    progress.clear()
    assert screen.getvalue() == ("\r10 records  25%  10 records/s\r20 records  50%  "
                                 "10 records/s\r\x1b[K")
    assert schema_cli.progress_line(1, 2_000_000, None, 0.5) == "1 record  2 MB  2 records/s"
    # a terminal, but a small file: no progress line
    terminal = Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    assert main(["schema", "validate", "population", str(f), *TODAY]) == 0
    assert terminal.getvalue() == ""


def test_lines_holds_at_most_a_line() -> None:
    chunks = [b'{"a": 1}\n{"b"', b": 2}\n", b"x" * 50, b"x" * 50 + b"\nlast"]
    lines = schema_cli.Lines(iter(chunks), max_line=64)
    assert list(lines) == [(1, b'{"a": 1}'), (2, b'{"b": 2}'), (3, None), (4, b"last")]


def test_constant_memory(tmp_path: Path) -> None:
    """A 40 MB file is streamed: the peak RSS grows by far less than the file's size."""
    lines = (EXAMPLES / "population" / "v1" / "examples" / "valid.ndjson").read_bytes()
    bad = _line(sex="F") + b"\n"
    block = lines * 50 + bad
    big = tmp_path / "big.ndjson"
    with big.open("wb") as f:
        while f.tell() < 40_000_000:
            f.write(block)
    small = tmp_path / "small.ndjson"
    small.write_bytes(block)
    probe = ("import resource, sys\n"
             "from exchange.cli import main\n"
             "rc = main(['schema', 'validate', 'population', sys.argv[1], '--format', 'json',"
             " '--today', '2026-11-22', '--max-errors', '10'])\n"
             "sys.stderr.write(str(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss))\n"
             "sys.exit(rc)\n")

    def peak_kib(path: Path) -> int:
        proc = subprocess.run([sys.executable, "-c", probe, str(path)], capture_output=True,
                              check=False, timeout=60)
        assert proc.returncode == 1, proc.stderr
        assert json.loads(proc.stdout)["errors_not_shown"] >= 0
        return int(proc.stderr.decode().strip().splitlines()[-1])

    grown = peak_kib(big) - peak_kib(small)
    assert grown < 10_000, f"peak RSS grew by {grown} KiB for a 40 MB file"
