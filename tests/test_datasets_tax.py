"""tax v1: MST check digit (Circular 86/2024/TT-BTC), personal ids as tax codes, addresses."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
from stdnum.vn import mst

from exchange.core.datasets import RuleContext, get
from exchange.core.datasets.common import mst_problem
from exchange.sim.generate import mst_check_digit

CTX = RuleContext(today=dt.date(2026, 11, 22))
SPEC = get("tax")

VIETTEL: dict[str, Any] = {
    "tax_id": "0100109106", "kind": "organisation",
    "name": "Tập đoàn Công nghiệp - Viễn thông Quân đội", "personal_id": "001085012345",
    "address": {"province_code": "01", "ward_code": "00166",
                "street": "Lô D26 Khu đô thị mới Cầu Giấy"},
    "tax_office": "01101", "status": "active", "registration_date": "1998-09-01",
    "as_of": "2025-09-30",
}
AN: dict[str, Any] = {
    "tax_id": "001085012345", "kind": "individual", "name": "Nguyễn Văn An",
    "personal_id": "001085012345",
    "address": {"province_code": "01", "ward_code": "00004"},
    "tax_office": "01120", "status": "active", "registration_date": "2025-07-01",
    "as_of": "2025-09-30",
}


def codes(data: dict[str, Any], **changes: Any) -> list[str]:
    d = {k: v for k, v in {**data, **changes}.items() if v is not None}
    return [v.code for v in SPEC.validate(d, CTX).violations]


def test_known_codes_pass() -> None:
    # Viettel and Vinamilk, and the circular's worked example (prefix 010004751 -> 6)
    for tax_id in ("0100109106", "0300588569", "0100047516"):
        assert codes(VIETTEL, tax_id=tax_id) == []
    assert mst_check_digit("010004751") == "6"
    assert SPEC.key(SPEC.validate(VIETTEL, CTX).record) == "0100109106"


def test_check_digit() -> None:
    assert codes(VIETTEL, tax_id="0100109107") == ["mst_checksum"]
    assert codes(VIETTEL, tax_id="0300588560") == ["mst_checksum"]


def test_no_code_when_sum_is_zero_mod_11() -> None:
    # 10 - 0 would be "10": no check digit exists, so every completion is rejected
    prefix = next(f"01{n:07d}" for n in range(1, 10_000) if mst_check_digit(f"01{n:07d}") is None)
    for d in "0123456789":
        assert not mst.is_valid(prefix + d)
        assert codes(VIETTEL, tax_id=prefix + d) == ["mst_checksum"]


def test_serial_and_branch_components() -> None:
    assert mst_problem("0100000000") is not None
    assert codes(VIETTEL, tax_id="0100000000") == ["mst_serial"]
    assert codes(VIETTEL, tax_id="0300588569-001") == []
    assert codes(VIETTEL, tax_id="0300588569-999") == []
    assert codes(VIETTEL, tax_id="0300588569-000") == ["mst_branch"]
    assert codes(VIETTEL, tax_id="0300588560-001") == ["mst_checksum"]


def test_tax_id_format() -> None:
    for bad in ("010010910", "0100109106001", "0100109106-01", "01001091O6", "0100 109 106"):
        assert codes(VIETTEL, tax_id=bad) == ["tax_id_format"], bad


def test_personal_id_as_tax_code() -> None:
    # Circular 86/2024 Art. 5(5): since 1 Jul 2025 the 12-digit id is the personal tax code
    assert codes(AN) == []
    assert codes(AN, kind="household", name="Hộ kinh doanh Nguyễn Văn An") == []
    assert codes(VIETTEL, tax_id="001085012345") == ["tax_id_kind"]
    assert codes(AN, personal_id="038192004417") == ["tax_id_personal_mismatch"]
    assert codes(AN, tax_id="999085012345", personal_id=None) == [
        "unknown_birth_province", "personal_id_required"]


def test_personal_id_required_for_people() -> None:
    assert codes(AN, tax_id="8041234562", personal_id=None) == ["personal_id_required"]
    assert codes(VIETTEL, personal_id=None) == []  # organisations: legal representative optional
    assert codes(VIETTEL, personal_id="999085012345") == ["unknown_birth_province"]
    assert codes(VIETTEL, personal_id="00108501234") == ["id_format"]


@pytest.mark.parametrize("status", ["active", "suspended", "closing", "closed", "moved",
                                    "absent"])
def test_statuses(status: str) -> None:
    assert codes(VIETTEL, status=status) == []


def test_code_lists() -> None:
    assert codes(VIETTEL, status="open") == ["status_code"]
    assert codes(VIETTEL, kind="company") == ["taxpayer_kind"]
    assert codes(VIETTEL, tax_office="cục thuế") == ["tax_office_format"]


def test_dates_and_address() -> None:
    assert codes(VIETTEL, registration_date="2026-12-01") == [
        "future_date", "as_of_before_registration"]
    assert codes(VIETTEL, as_of="1998-01-01") == ["as_of_before_registration"]
    assert codes(VIETTEL, address={"province_code": "01", "ward_code": "99999"}) == [
        "unknown_ward"]
    assert codes(VIETTEL, address={"province_code": "79", "ward_code": "00166"}) == [
        "ward_not_in_province"]
