"""land v1: parcel key, purposes (Circular 08/2024), certificates, area, owners, GeoHash."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest

from exchange.core.datasets import RuleContext, get
from exchange.core.datasets.land import PURPOSES, geohash_decode

CTX = RuleContext(today=dt.date(2026, 11, 22))
SPEC = get("land")

PARCEL: dict[str, Any] = {
    "ward_code": "00004", "map_sheet": 12, "parcel_number": 345, "parcel_id": "w7epxv7s9t6j",
    "area_m2": 68.5, "purposes": ["ODT"], "certificate_serial": "BN 531146",
    "owners": ["001085012345"],
    "address": {"province_code": "01", "ward_code": "00004", "street": "Số 18 phố Đội Cấn"},
    "as_of": "2025-09-30",
}


def codes(**changes: Any) -> list[str]:
    d = {k: v for k, v in {**PARCEL, **changes}.items() if v is not None}
    return [v.code for v in SPEC.validate(d, CTX).violations]


def test_valid_and_key() -> None:
    result = SPEC.validate(PARCEL, CTX)
    assert result.ok, result.violations
    assert SPEC.key(result.record) == "00004-12-345"
    assert codes(parcel_id=None, certificate_serial=None) == []


def test_geohash() -> None:
    lat, lon = geohash_decode("w7epxv7s9t6j")
    assert abs(lat - 21.0355) < 1e-4 and abs(lon - 105.8142) < 1e-4
    assert codes(parcel_id="u09tvw0f6szy") == ["parcel_id_outside_vietnam"]  # Paris
    assert codes(parcel_id="w7abcdefghia") == ["parcel_id_format"]  # a, i: not base32
    assert codes(parcel_id="w7epxv7s9t6") == ["parcel_id_format"]  # 11 characters
    assert codes(parcel_id="W7EPXV7S9T6J") == ["parcel_id_format"]  # GeoHash is lower case


def test_purposes() -> None:
    assert len(PURPOSES) == 36
    assert codes(purposes=["ONT", "CLN"]) == []
    assert codes(purposes=["BHK"]) == ["land_purpose"]  # merged into HNK by Circular 08/2024
    assert codes(purposes=["odt"]) == ["land_purpose"]
    assert codes(purposes=[]) == ["land_purpose"]
    assert codes(purposes=["ODT", "ODT"]) == ["land_purpose"]


@pytest.mark.parametrize("serial", ["BN 531146", "BN531146", "AA 01234567", "AB12345678"])
def test_certificate_serial_valid(serial: str) -> None:
    assert codes(certificate_serial=serial) == []


@pytest.mark.parametrize("serial", ["B 1234", "bn 531146", "BN 5311467", "BN  531146", "123"])
def test_certificate_serial_invalid(serial: str) -> None:
    assert codes(certificate_serial=serial) == ["certificate_serial"]


def test_area() -> None:
    assert codes(area_m2=1250) == []
    assert codes(area_m2=0.1) == []
    assert codes(area_m2=123456.7) == []
    assert codes(area_m2=68.55) == ["area_precision"]
    assert codes(area_m2=0) == ["area_range"]
    assert codes(area_m2=-5.0) == ["area_range"]


def test_owners() -> None:
    assert codes(owners=["001085012345", "038192004417"]) == []
    assert codes(owners=["0300588569"]) == []  # an organisation by its tax code
    assert codes(owners=["999000000000"]) == ["owner_id"]
    assert codes(owners=["0300588560"]) == ["owner_id"]  # bad MST check digit
    assert codes(owners=["12345"]) == ["owner_id"]
    assert codes(owners=[]) == ["owner_id"]
    assert codes(owners=["001085012345", "001085012345"]) == ["owner_id"]


def test_location() -> None:
    assert codes(address={"province_code": "01", "ward_code": "00070"}) == ["ward_mismatch"]
    assert codes(ward_code="99999", address={"province_code": "01", "ward_code": "99999"}) == [
        "unknown_ward", "unknown_ward"]
    assert codes(address={"province_code": "79", "ward_code": "00004"}) == [
        "ward_not_in_province"]
    assert codes(map_sheet=0) == ["map_sheet_range"]
    assert codes(parcel_number=0) == ["parcel_number_range"]
    assert codes(as_of="2027-01-01") == ["future_date"]
