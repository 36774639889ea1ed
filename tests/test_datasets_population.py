"""population v1: the personal id's structure, dates, residence (Circular 07/2016/TT-BCA)."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest

from exchange.core.datasets import RuleContext, get

CTX = RuleContext(today=dt.date(2026, 11, 22))
SPEC = get("population")

AN: dict[str, Any] = {
    "id": "001085012345", "full_name": "Nguyễn Văn An", "birth_date": "1985-03-14",
    "sex": "male", "birth_registration_province": "001",
    "permanent_address": {"province_code": "01", "ward_code": "00004",
                          "street": "Số 18 phố Đội Cấn"},
    "nationality": "VN", "status": "living", "ethnicity": "Kinh", "religion": "Không",
    "as_of": "2025-09-30",
}


def rec(**changes: Any) -> dict[str, Any]:
    out = {**AN, **changes}
    return {k: v for k, v in out.items() if v is not None}


def codes(data: dict[str, Any]) -> list[str]:
    return [v.code for v in SPEC.validate(data, CTX).violations]


def test_valid_and_key() -> None:
    result = SPEC.validate(AN, CTX)
    assert result.ok and not result.notes
    assert SPEC.key(result.record) == "001085012345"


def test_defaults_and_optional_fields() -> None:
    assert codes(rec(nationality=None, status=None, ethnicity=None, religion=None)) == []
    assert codes(rec(nationality="LA")) == []  # a Lao national
    assert codes(rec(nationality="XX")) == ["unknown_country"]
    assert codes(rec(nationality="vn")) == ["unknown_country"]


@pytest.mark.parametrize(("pid", "birth", "sex"), [
    ("001085012345", "1985-03-14", "male"),      # 20th century male: 0
    ("038192004417", "1992-11-02", "female"),    # 20th century female: 1
    ("001203008826", "2003-07-21", "male"),      # 21st century male: 2
    ("001310007752", "2010-05-09", "female"),    # 21st century female: 3
    ("001200000001", "2000-01-01", "male"),      # 2000 is in the 21st century's numbering
])
def test_century_sex_digit_agrees(pid: str, birth: str, sex: str) -> None:
    data = rec(id=pid, birth_date=birth, sex=sex, birth_registration_province=pid[:3])
    assert codes(data) == []


def test_century_sex_digit_mismatch() -> None:
    # Circular 07/2016/TT-BCA Art. 7(2): a woman born 1992 has 1, not 0
    assert codes(rec(sex="female")) == ["id_century_sex_mismatch"]
    # a man born in 2003 has 2, not 0
    assert codes(rec(birth_date="2003-03-14", id="001003012345")) == ["id_century_sex_mismatch"]
    # born before 1900: no digit exists
    assert codes(rec(birth_date="1885-03-14")) == ["id_century_sex_mismatch"]


def test_birth_year_digits() -> None:
    assert codes(rec(birth_date="1986-03-14")) == ["id_birth_year_mismatch"]


def test_birth_registration_province() -> None:
    assert codes(rec(id="003085012345", birth_registration_province="003")) == [
        "unknown_birth_province"]  # 003 is not in Annex 1 (Hà Giang is 002, Cao Bằng 004)
    assert codes(rec(birth_registration_province="036")) == ["id_birth_province_mismatch"]
    assert codes(rec(birth_registration_province="999")) == [
        "id_birth_province_mismatch", "unknown_birth_province"]
    assert codes(rec(birth_registration_province="36")) == ["unknown_birth_province"]


def test_id_format() -> None:
    assert codes(rec(id="00108501234")) == ["id_format"]
    assert codes(rec(id="00108501234X")) == ["id_format"]
    assert codes(rec(id=1085012345)) == ["schema_violation"]  # a number, not a string


def test_dates() -> None:
    assert codes(rec(id="001226000111", birth_date="2026-12-25")) == ["future_date"]
    assert codes(rec(as_of="2026-11-23")) == ["future_date"]
    assert codes(rec(as_of="2026-11-22")) == []
    assert codes(rec(birth_date="1985-02-30")) == ["schema_violation"]


def test_death() -> None:
    dead = rec(status="deceased", death_date="2024-12-05")
    assert codes(dead) == []
    assert codes(rec(status="deceased")) == ["death_date_required"]
    assert codes(rec(death_date="2024-12-05")) == ["death_date_not_allowed"]
    assert codes({**dead, "death_date": "1980-01-01"}) == ["death_before_birth"]
    assert codes({**dead, "death_date": "2027-01-01"}) == ["future_date"]
    assert codes(rec(status="missing")) == ["status_code"]


def test_residence() -> None:
    assert codes(rec(permanent_address={"province_code": "79", "ward_code": "26743"})) == []
    assert codes(rec(permanent_address={"province_code": "01", "ward_code": "99999"})) == [
        "unknown_ward"]
    assert codes(rec(permanent_address={"province_code": "79", "ward_code": "00004"})) == [
        "ward_not_in_province"]
    # 02 (Hà Giang) stopped existing on 1 Jul 2025
    assert codes(rec(permanent_address={"province_code": "02", "ward_code": "00004"})) == [
        "unknown_province"]
    assert codes(rec(permanent_address={"province_code": "1", "ward_code": "00004"})) == [
        "unknown_province"]
    result = SPEC.validate(rec(permanent_address={"province_code": "01"}), CTX)
    assert [(v.code, v.path) for v in result.violations] == [
        ("missing_field", "$.permanent_address.ward_code")]


def test_schema_errors_name_the_path() -> None:
    result = SPEC.validate(rec(sex="m"), CTX)
    assert [(v.code, v.path) for v in result.violations] == [("sex_code", "$.sex")]
    result = SPEC.validate(rec(phone="0912345678"), CTX)
    assert [(v.code, v.path) for v in result.violations] == [("unknown_field", "$.phone")]


def test_normalisation_is_a_note_not_a_violation() -> None:
    result = SPEC.validate(rec(full_name="Nguyễn  Thị Hoà"), CTX)
    assert result.ok
    assert [(n.code, n.path) for n in result.notes] == [("not_normalised", "$.full_name")]
    assert "'Nguyễn Thị Hòa'" in result.notes[0].message
