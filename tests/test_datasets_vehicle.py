"""vehicle v1: plates (Circular 79/2024/TT-BCA), VIN (ISO 3779), owner, dates."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest

from exchange.core.datasets import RuleContext, get
from exchange.core.datasets.vehicle import compact_plate, parse_plate

CTX = RuleContext(today=dt.date(2026, 11, 22))
SPEC = get("vehicle")

CAR: dict[str, Any] = {
    "plate": "30A-123.45", "vin": "RL4BT3F30N5012345", "kind": "car", "make": "Toyota",
    "model": "Vios", "year": 2022, "colour": "Trắng", "owner_id": "001085012345",
    "registration_date": "2022-05-18", "status": "registered", "as_of": "2025-09-30",
}
BIKE = {**CAR, "plate": "29-B1 123.45", "kind": "motorbike", "make": "Honda",
        "model": "Wave Alpha"}


def codes(base: dict[str, Any], **changes: Any) -> list[str]:
    d = {k: v for k, v in {**base, **changes}.items() if v is not None}
    return [v.code for v in SPEC.validate(d, CTX).violations]


def test_key_is_the_compact_plate() -> None:
    assert SPEC.key(SPEC.validate(CAR, CTX).record) == "30A12345"
    assert compact_plate("29-B1 123.45") == "29B112345"
    assert parse_plate("29-B1 123.45") == ("29", "B1", True)
    assert parse_plate("51LD-123.45") == ("51", "LD", False)


@pytest.mark.parametrize(("plate", "kind"), [
    ("30A-123.45", "car"), ("51K-678.90", "car"), ("30E-1234", "car"), ("43C-246.80", "truck"),
    ("51B-012.34", "bus"), ("15R-012.34", "trailer"), ("15R-012.35", "semi_trailer"),
    ("29LD-123.45", "car"), ("80A-001.23", "car"), ("99MK-012.34", "tractor"),
    ("29-B1 123.45", "motorbike"), ("59-X2 456.78", "motorbike"), ("29-AA 123.45", "motorbike"),
    ("29-MĐ1 123.45", "motorbike"), ("29-B1 1234", "motorbike"),
])
def test_valid_plates(plate: str, kind: str) -> None:
    assert codes(CAR, plate=plate, kind=kind) == []


def test_plate_format() -> None:
    assert codes(BIKE, plate="29B-123.45") == ["plate_format"]  # a car plate on a motorbike
    assert codes(CAR, plate="29-B1 123.45") == ["plate_format"]
    for bad in ("30a-123.45", "30A-12345", "30A 123.45", "3A-123.45", "30A-123.4"):
        assert codes(CAR, plate=bad) == ["plate_format"], bad


def test_plate_province() -> None:
    assert codes(CAR, plate="00A-123.45") == ["plate_province"]
    assert codes(CAR, plate="13A-123.45") == ["plate_province"]  # not assigned
    assert codes(BIKE, plate="10-B1 123.45") == ["plate_province"]


def test_plate_series() -> None:
    for series in "IJOQW":  # not used for cars
        assert codes(CAR, plate=f"30{series}-123.45") == ["plate_series"], series
    assert codes(CAR, plate="30R-123.45") == ["plate_series"]  # R only for trailers
    assert codes(CAR, plate="15C-012.34", kind="semi_trailer") == ["plate_series"]
    assert codes(BIKE, plate="29-B0 123.45") == ["plate_series"]
    assert codes(BIKE, plate="29-B 123.45") == ["plate_series"]
    assert codes(BIKE, plate="29-I1 123.45") == ["plate_series"]


def test_vin() -> None:
    assert codes(CAR, vin="RL4BT3F30N5O12345") == ["vin_format"]  # O is not used (ISO 3779)
    assert codes(CAR, vin="RL4BT3F30N501234") == ["vin_format"]  # 16 characters
    assert codes(CAR, vin="rl4bt3f30n5012345") == ["vin_format"]


def test_owner() -> None:
    assert codes(CAR, owner_id="0300588569") == []
    assert codes(CAR, owner_id="999000000000") == ["owner_id"]
    assert codes(CAR, owner_id="0300588560") == ["owner_id"]
    assert codes(CAR, owner_id="030058856") == ["owner_id"]


def test_dates() -> None:
    assert codes(CAR, registration_date="2027-01-05") == ["future_date"]
    assert codes(CAR, year=2027, registration_date="2026-11-01") == [
        "future_date", "registration_before_manufacture"]
    assert codes(CAR, year=2023) == ["registration_before_manufacture"]
    assert codes(CAR, year=1800) == ["year_range"]
    assert codes(CAR, status="stolen") == ["status_code"]
    assert codes(CAR, kind="boat") == ["vehicle_kind"]
    assert codes(CAR, colour=None) == []
