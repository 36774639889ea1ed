"""What holds for every dataset: registry, disclosure groups, exports, examples, robustness."""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from exchange.core import datasets
from exchange.core.datasets import RuleContext, admin_units
from exchange.core.datasets.normalise import is_normalised
from exchange.core.errors import NotFound

CTX = RuleContext(today=dt.date(2026, 11, 22))
ROOT = Path(__file__).resolve().parent.parent / "schemas"
NAMES = ("land", "population", "tax", "vehicle")
#: every published version: (dataset, version)
VERSIONS = [("land", 1), ("population", 1), ("population", 2), ("tax", 1), ("vehicle", 1)]

#: the expected violation code of each line of schemas/<dataset>/v<N>/examples/invalid.ndjson
INVALID_CODES = {
    "population": ["unknown_ward", "ward_not_in_province", "id_century_sex_mismatch",
                   "id_birth_year_mismatch", "unknown_birth_province", "future_date",
                   "death_before_birth", "death_date_required", "missing_field",
                   "unknown_field", "id_format", "id_birth_province_mismatch"],
    "tax": ["mst_checksum", "mst_serial", "mst_branch", "tax_id_kind", "personal_id_required",
            "tax_id_personal_mismatch", "future_date", "unknown_ward", "tax_id_format",
            "status_code"],
    "land": ["land_purpose", "land_purpose", "certificate_serial", "area_precision", "owner_id",
             "ward_mismatch", "parcel_id_format", "parcel_id_outside_vietnam", "unknown_ward",
             "owner_id", "future_date"],
    "vehicle": ["plate_format", "plate_province", "plate_series", "plate_series", "vin_format",
                "owner_id", "future_date", "registration_before_manufacture", "status_code",
                "plate_format"],
    "population/v2": ["unknown_province", "ward_not_in_province", "household_incomplete",
                      "household_head_mismatch", "household_head_mismatch", "relationship_code",
                      "id_format", "unknown_field"],
}


def test_registry() -> None:
    assert tuple(datasets.names()) == NAMES
    assert sorted((s.name, s.version) for n in NAMES for s in datasets.versions(n)) == VERSIONS
    for name, version in VERSIONS:
        spec = datasets.get(name, version)
        assert spec.version == version
        assert spec.type == f"vn.exchange.{name}.v{version}"
        assert spec.dataschema == f"/v1/schemas/{name}/{version}"
        assert spec.dataschema_uri("https://x.example/") == (
            f"https://x.example/v1/schemas/{name}/{version}")
        assert spec.compatibility == "FULL_TRANSITIVE"
    assert datasets.get("population").version == 2  # the latest
    with pytest.raises(NotFound) as err:
        datasets.get("weather")
    assert err.value.code == "unknown_dataset"
    with pytest.raises(NotFound) as err:
        datasets.get("tax", 9)
    assert err.value.code == "unknown_schema_version"


@pytest.mark.parametrize(("name", "version"), VERSIONS)
def test_groups_partition_the_fields(name: str, version: int) -> None:
    spec = datasets.get(name, version)
    fields = list(spec.record_type.__struct_fields__)
    grouped = [f for fs in spec.groups.values() for f in fs]
    assert sorted(grouped) == sorted(fields), "every field in exactly one group"
    assert len(grouped) == len(set(grouped))
    assert 2 <= len(spec.groups) <= 6
    assert set(spec.required) | set(spec.recommended) <= set(fields)
    assert not set(spec.required) & set(spec.recommended)


@pytest.mark.parametrize(("name", "version"), VERSIONS)
def test_required_fields_have_no_default(name: str, version: int) -> None:
    spec = datasets.get(name, version)
    info = msgspec.inspect.type_info(spec.record_type)
    assert isinstance(info, msgspec.inspect.StructType)
    optional = {f.name for f in info.fields if not f.required}
    # nationality and status have regulation defaults (VN, living); all else must be present
    assert set(spec.required) & optional <= {"nationality", "status"}


@pytest.mark.parametrize(("name", "version"), VERSIONS)
def test_committed_schema_is_fresh(name: str, version: int) -> None:
    spec = datasets.get(name, version)
    path = ROOT / name / f"v{version}" / "schema.json"
    assert path.read_text("utf-8") == datasets.schema_text(spec), (
        f"{path} is stale; regenerate with: exchange schema export schemas")


def test_export_schemas_writes_every_version(tmp_path: Path) -> None:
    written = datasets.export_schemas(tmp_path)
    assert sorted(p.relative_to(tmp_path).as_posix() for p in written) == [
        f"{n}/v{v}/schema.json" for n, v in VERSIONS]
    schema = json.loads((tmp_path / "tax" / "v1" / "schema.json").read_text("utf-8"))
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert schema["x-exchange"]["disclosure_groups"]["personal"] == ["personal_id"]


@pytest.mark.parametrize(("name", "version"), VERSIONS)
def test_valid_examples_pass(name: str, version: int) -> None:
    spec = datasets.get(name, version)
    lines = (ROOT / name / f"v{version}" / "examples" / "valid.ndjson").read_bytes().splitlines()
    assert len(lines) >= 5
    keys = set()
    for line in lines:
        result = spec.validate(msgspec.json.decode(line), CTX)
        assert result.ok, (line, result.violations)
        assert not result.notes, result.notes
        assert spec.validate_json(line, CTX).ok
        keys.add(spec.key(result.record))
    assert len(keys) == len(lines)


@pytest.mark.parametrize(("name", "version"), VERSIONS)
def test_invalid_examples_fail_with_their_code(name: str, version: int) -> None:
    spec = datasets.get(name, version)
    path = ROOT / name / f"v{version}" / "examples" / "invalid.ndjson"
    lines = path.read_bytes().splitlines()
    expected = INVALID_CODES[name if version == 1 else f"{name}/v{version}"]
    assert len(lines) == len(expected)
    for i, (line, code) in enumerate(zip(lines, expected, strict=True)):
        result = spec.validate_json(line, CTX)
        codes = {v.code for v in result.violations}
        assert codes == {code}, (i, line, result.violations)


def test_admin_units() -> None:
    assert len(admin_units.provinces()) == 34
    assert len(admin_units.wards()) == 3321
    assert admin_units.province_name("79") == "Thành phố Hồ Chí Minh"
    assert admin_units.ward_name("26743") == "Phường Bến Thành"
    assert admin_units.ward_in_province("00004", "01")
    assert not admin_units.ward_in_province("00004", "79")
    assert admin_units.ward_province("99999") is None
    assert not admin_units.province_exists("02")  # Hà Giang merged into Tuyên Quang (08)
    assert len(admin_units.wards_of("01")) > 100
    # names are normalised on load: the published list has a few "Hoà" among 200 "Hòa"
    assert all(is_normalised(w.name) for w in admin_units.wards())
    assert not any(w.name.endswith(("Hoà", "Thuỷ")) for w in admin_units.wards())


def test_historic_code_lists() -> None:
    assert len(admin_units.BIRTH_PROVINCES) == 63
    assert admin_units.BIRTH_PROVINCES["001"] == "Hà Nội"
    assert admin_units.BIRTH_PROVINCES["096"] == "Cà Mau"
    assert "00" not in admin_units.PLATE_CODES
    for code in ("29", "30", "31", "32", "33", "40"):
        assert admin_units.PLATE_CODES[code] == "Hà Nội"
    assert all(admin_units.PLATE_CODES[str(c)] == "Hồ Chí Minh" for c in range(50, 60))
    assert admin_units.PLATE_CODES["80"].startswith("Cơ quan trung ương")
    # every pre-2025 province has a plate code and maps to one of the 34 current units
    current = set(admin_units.provinces())
    assert all(p.plates and p.province_2025 in current for p in admin_units.OLD_PROVINCES)
    assert {p.province_2025 for p in admin_units.OLD_PROVINCES} == current


_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner,
                                                                max_size=6),
    max_leaves=20,
)


def _near(name: str) -> st.SearchStrategy[Any]:
    """A valid example with one field replaced by an arbitrary JSON value."""
    lines = (ROOT / name / "v1" / "examples" / "valid.ndjson").read_bytes().splitlines()
    base = [msgspec.json.decode(line) for line in lines]

    def mutate(rec: dict[str, Any], key: str, value: Any) -> dict[str, Any]:
        out = dict(rec)
        out[key if key in rec or not rec else sorted(rec)[len(key) % len(rec)]] = value
        return out

    return st.builds(mutate, st.sampled_from(base), st.text(max_size=20), _JSON)


@pytest.mark.parametrize("name", NAMES)
@settings(max_examples=150, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_validate_never_raises(name: str, data: st.DataObject) -> None:
    spec = datasets.get(name, 1)
    value = data.draw(st.one_of(_JSON, _near(name)))
    result = spec.validate(value, CTX)
    assert isinstance(result, datasets.Validated)
    assert result.ok == (not result.violations)
    buf = msgspec.json.encode(value)
    assert isinstance(spec.validate_json(buf, CTX), datasets.Validated)


def test_pure_modules_import_no_io_libraries() -> None:
    code = ("import sys, exchange.core.datasets, exchange.sim.generate; "
            "print(sorted(m for m in ('asyncio', 'aiohttp', 'aiosqlite', 'nats') "
            "if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert out.strip() == "[]"
