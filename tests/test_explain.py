"""The slow path: every problem of a record, in words that say what to fix (datasets.explain)."""

from __future__ import annotations

import datetime as dt
from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from exchange.core.datasets import RuleContext, get
from exchange.core.datasets.explain import Partial, Undecoded, explain, reword
from exchange.core.datasets.land import PURPOSES
from exchange.core.datasets.population import Person
from exchange.core.errors import Code
from tests.test_datasets_population import AN, rec

CTX = RuleContext(today=dt.date(2026, 11, 22))
SPEC = get("population", 1)


def found(data: Any) -> list[tuple[str, str, str]]:
    return [(v.path, v.code, v.message) for v in SPEC.validate_all(data, CTX).violations]


def test_valid_record_is_what_validate_says() -> None:
    result = SPEC.validate_all(rec(), CTX)
    assert result.ok and isinstance(result.record, Person)
    assert explain(Person, rec()).violations == []


def test_bad_province_and_two_unknown_fields_are_all_reported() -> None:
    data = rec(permanent_address={"province_code": "02", "ward_code": "00004"},
               phone="0912345678", brith_date="1985-03-14")
    assert [(p, c) for p, c, _ in found(data)] == [
        ("$.phone", "unknown_field"), ("$.brith_date", "unknown_field"),
        ("$.permanent_address.province_code", "unknown_province")]
    assert "did you mean birth_date?" in found(data)[1][2]
    # the fast path stops at the first
    assert len(SPEC.validate(data, CTX).violations) == 1


def test_every_field_and_every_missing_field() -> None:
    data = rec(id=12, full_name="", sex="F", as_of="2025-13-01", birth_date=None)
    assert [(p, c) for p, c, _ in found(data)] == [
        ("$.id", "schema_violation"), ("$.full_name", "schema_violation"),
        ("$.sex", "sex_code"), ("$.as_of", "schema_violation"),
        ("$.birth_date", "missing_field")]
    messages = dict((p, m) for p, _, m in found(data))
    assert messages["$.id"] == "id must be a 12-digit personal id, e.g. 001085012345; got a " \
                               "number (12)"
    assert messages["$.as_of"].startswith("as_of: no such month: 2025-13-01")
    assert "a date as YYYY-MM-DD" in messages["$.birth_date"]


def test_no_such_day() -> None:
    [(path, code, message)] = found(rec(birth_date="1990-02-30"))
    assert (path, code) == ("$.birth_date", "schema_violation")
    assert message == "birth_date: no such day: 1990-02-30 (February 1990 has 28 days)"
    assert "(February 2024 has 29 days)" in found(rec(birth_date="2024-02-30"))[0][2]


@pytest.mark.parametrize(("written", "example"), [
    ("12/04/1990", "1990-04-12"), ("12.04.1990", "1990-04-12"), ("1990/04/12", "1990-04-12"),
    ("31/02/1990", "1990-04-12"), ("April 12, 1990", "1990-04-12"),
])
def test_a_date_written_otherwise_names_the_format(written: str, example: str) -> None:
    [(_, _, message)] = found(rec(birth_date=written))
    assert message == (f"birth_date must be a date as YYYY-MM-DD, e.g. {example}; got "
                       f"{written!r}")


def test_enum_lists_the_allowed_values() -> None:
    [(path, code, message)] = found(rec(sex="F"))
    assert (path, code) == ("$.sex", Code.SEX_CODE)
    assert message == "sex must be one of: male, female; got 'F'"
    # a wrong JSON type is a schema_violation, as msgspec's first error is
    assert found(rec(sex=1))[0][1:] == ("schema_violation",
                                        "sex must be one of: male, female; got a number (1)")


def test_pattern_in_words() -> None:
    data = rec(permanent_address={"province_code": "1", "ward_code": "0004"})
    assert found(data) == [
        ("$.permanent_address.province_code", "unknown_province",
         "province_code must be a 2-digit province code, e.g. 01; got '1'"),
        ("$.permanent_address.ward_code", "unknown_ward",
         "ward_code must be a 5-digit commune/ward code, e.g. 00004; got '0004'"),
    ]


def test_ranges_lengths_and_lists() -> None:
    land = get("land", 1)
    data = msgspec.json.decode(
        b'{"ward_code":"00004","map_sheet":0,"parcel_number":345,"area_m2":-1,'
        b'"purposes":["XYZ","ODT"],"owners":[],"address":{"province_code":"01",'
        b'"ward_code":"00004"},"as_of":"2025-09-30"}')
    assert [(v.path, v.code, v.message) for v in land.validate_all(data, CTX).violations] == [
        ("$.map_sheet", "map_sheet_range", "map_sheet must be a whole number from 1 to 99999; "
                                           "got 0"),
        ("$.area_m2", "area_range", "area_m2 must be a number greater than 0 and at most "
                                    "1000000000; got -1"),
        ("$.purposes[0]", "land_purpose",
         f"purposes[0] must be one of: {', '.join(PURPOSES)}; got 'XYZ'"),
        ("$.owners", "owner_id", "owners must have at least 1 item; got 0"),
    ]


def test_rules_run_on_the_fields_that_decoded() -> None:
    # the future birth date is found though the record has an unknown field
    data = rec(birth_date="2399-12-25", id="001899000111", phone="1")
    assert [(p, c) for p, c, _ in found(data)] == [("$.phone", "unknown_field"),
                                                   ("$.birth_date", "future_date")]
    # a rule that reads a broken field is skipped: no id rule when the id does not decode
    data = rec(id="00108501234", birth_date="2399-12-25")
    assert [(p, c) for p, c, _ in found(data)] == [("$.id", "id_format"),
                                                   ("$.birth_date", "future_date")]


def test_partial_raises_for_a_broken_field() -> None:
    result = explain(Person, rec(sex="F"))
    assert isinstance(result.record, Partial)
    assert result.record.birth_date == dt.date(1985, 3, 14)
    with pytest.raises(Undecoded):
        _ = result.record.sex
    assert result.record.nationality == "VN"


def test_not_an_object() -> None:
    [(path, code, message)] = found([1])
    assert (path, code) == ("$", "schema_violation")
    assert message.startswith("the record must be an object with fields id, full_name")


def test_the_first_error_has_the_same_words() -> None:
    # the gate's path: validate() stops at msgspec's first error, in explain's words
    for data, message in [
        (rec(sex="F"), "sex must be one of: male, female; got 'F'"),
        (rec(birth_date="1990-02-30"), "birth_date: no such day: 1990-02-30 (February 1990 "
                                       "has 28 days)"),
        (rec(permanent_address={"province_code": "01", "ward_code": "0004"}),
         "ward_code must be a 5-digit commune/ward code, e.g. 00004; got '0004'"),
    ]:
        [v] = SPEC.validate(data, CTX).violations
        assert v.message == message
        [w] = SPEC.validate_json(msgspec.json.encode(data), CTX).violations
        assert w == v
    [v] = SPEC.validate(rec(sex=None), CTX).violations
    assert (v.path, v.code) == ("$.sex", "missing_field")
    assert v.message == "sex is missing: it is required (one of: male, female)"


@settings(max_examples=200, deadline=None, derandomize=True)
@given(st.dictionaries(st.sampled_from([*AN, "phone"]),
                       st.one_of(st.none(), st.integers(), st.text(max_size=12),
                                 st.sampled_from(["1990-02-30", "F", "00004", "01"]),
                                 st.dictionaries(st.sampled_from(["province_code", "ward_code",
                                                                  "x"]),
                                                 st.text(max_size=6))),
                       max_size=8))
def test_agrees_with_msgspec(changes: dict[str, Any]) -> None:
    """explain finds a problem exactly when msgspec refuses the record; the first error's
    path and code are among those it finds; reword never raises."""
    data = {**AN, **changes}
    try:
        msgspec.convert(data, Person)
        refused = False
    except msgspec.ValidationError:
        refused = True
    result = explain(Person, data, SPEC.codes)
    assert bool(result.violations) == refused
    if refused:
        [first] = SPEC.validate(data, CTX).violations
        assert (first.path, first.code) in {(v.path, v.code) for v in result.violations}
        assert reword(Person, data, first).path == first.path
