"""Vietnam's administrative units and the code lists derived from the pre-2025 provinces.

Current units (from 1 Jul 2025): ``exchange/data/vn_admin_units_2025.csv``, 34 provincial units and
3,321 communes (xã, phường, đặc khu), codes as published with Decision 19/2025/QĐ-TTg (the list of
administrative-unit codes after Resolution 202/2025/QH15). The file was taken in 2025 from two
independent open packages of the official list that agree on every code; names are normalised on
load (``normalise_text``) because the packages differ only in tone-mark placement. Codes are
2 digits (province) and 5 digits (commune); codes are never reused.

Historic lists (data, below):

- ``BIRTH_PROVINCES``: the 63 three-digit province codes of the personal identification number,
  Circular 07/2016/TT-BCA Annex 1 (the birth-registration place, PPP in ``PPP G YY RRRRRR``);
- ``PLATE_CODES``: the two-digit plate codes per pre-2025 province, Circular 79/2024/TT-BCA
  Annex 2 (previously Circular 58/2020/TT-BCA, Annex 2); 80 is the central agencies' code.
  After 1 Jul 2025 a merged province uses all of its parts' codes.

Loaded once, lazily, through importlib.resources; pure otherwise.
"""

from __future__ import annotations

import csv
import functools
import io
from dataclasses import dataclass
from importlib import resources

from exchange.core.datasets.normalise import normalise_text

__all__ = [
    "BIRTH_PROVINCES",
    "OLD_PROVINCES",
    "PLATE_CODES",
    "OldProvince",
    "Ward",
    "province_exists",
    "province_name",
    "provinces",
    "ward",
    "ward_exists",
    "ward_in_province",
    "ward_name",
    "ward_province",
    "wards",
    "wards_of",
]


@dataclass(frozen=True, slots=True)
class Ward:
    """One commune-level unit (xã, phường or đặc khu)."""

    code: str
    name: str
    kind: str
    province_code: str


@dataclass(frozen=True, slots=True)
class OldProvince:
    """One of the 63 provinces before 1 Jul 2025, with the codes it left behind."""

    code: str  # 2-digit GSO code before 2025; the CCCD code is "0" + code
    name: str
    plates: tuple[str, ...]  # vehicle plate codes, Circular 79/2024/TT-BCA Annex 2
    province_2025: str  # the 2025 unit it became part of (Resolution 202/2025/QH15)


#: The 63 pre-2025 provinces. Plate codes: Circular 79/2024/TT-BCA Annex 2 ("Ký hiệu biển số xe
#: ô tô, mô tô trong nước"); merger: Resolution 202/2025/QH15 Art. 1.
OLD_PROVINCES: tuple[OldProvince, ...] = (
    OldProvince("01", "Hà Nội", ("29", "30", "31", "32", "33", "40"), "01"),
    OldProvince("02", "Hà Giang", ("23",), "08"),
    OldProvince("04", "Cao Bằng", ("11",), "04"),
    OldProvince("06", "Bắc Kạn", ("97",), "19"),
    OldProvince("08", "Tuyên Quang", ("22",), "08"),
    OldProvince("10", "Lào Cai", ("24",), "15"),
    OldProvince("11", "Điện Biên", ("27",), "11"),
    OldProvince("12", "Lai Châu", ("25",), "12"),
    OldProvince("14", "Sơn La", ("26",), "14"),
    OldProvince("15", "Yên Bái", ("21",), "15"),
    OldProvince("17", "Hòa Bình", ("28",), "25"),
    OldProvince("19", "Thái Nguyên", ("20",), "19"),
    OldProvince("20", "Lạng Sơn", ("12",), "20"),
    OldProvince("22", "Quảng Ninh", ("14",), "22"),
    OldProvince("24", "Bắc Giang", ("98",), "24"),
    OldProvince("25", "Phú Thọ", ("19",), "25"),
    OldProvince("26", "Vĩnh Phúc", ("88",), "25"),
    OldProvince("27", "Bắc Ninh", ("99",), "24"),
    OldProvince("30", "Hải Dương", ("34",), "31"),
    OldProvince("31", "Hải Phòng", ("15", "16"), "31"),
    OldProvince("33", "Hưng Yên", ("89",), "33"),
    OldProvince("34", "Thái Bình", ("17",), "33"),
    OldProvince("35", "Hà Nam", ("90",), "37"),
    OldProvince("36", "Nam Định", ("18",), "37"),
    OldProvince("37", "Ninh Bình", ("35",), "37"),
    OldProvince("38", "Thanh Hóa", ("36",), "38"),
    OldProvince("40", "Nghệ An", ("37",), "40"),
    OldProvince("42", "Hà Tĩnh", ("38",), "42"),
    OldProvince("44", "Quảng Bình", ("73",), "44"),
    OldProvince("45", "Quảng Trị", ("74",), "44"),
    OldProvince("46", "Thừa Thiên Huế", ("75",), "46"),
    OldProvince("48", "Đà Nẵng", ("43",), "48"),
    OldProvince("49", "Quảng Nam", ("92",), "48"),
    OldProvince("51", "Quảng Ngãi", ("76",), "51"),
    OldProvince("52", "Bình Định", ("77",), "52"),
    OldProvince("54", "Phú Yên", ("78",), "66"),
    OldProvince("56", "Khánh Hòa", ("79",), "56"),
    OldProvince("58", "Ninh Thuận", ("85",), "56"),
    OldProvince("60", "Bình Thuận", ("86",), "68"),
    OldProvince("62", "Kon Tum", ("82",), "51"),
    OldProvince("64", "Gia Lai", ("81",), "52"),
    OldProvince("66", "Đắk Lắk", ("47",), "66"),
    OldProvince("67", "Đắk Nông", ("48",), "68"),
    OldProvince("68", "Lâm Đồng", ("49",), "68"),
    OldProvince("70", "Bình Phước", ("93",), "75"),
    OldProvince("72", "Tây Ninh", ("70",), "80"),
    OldProvince("74", "Bình Dương", ("61",), "79"),
    OldProvince("75", "Đồng Nai", ("39", "60"), "75"),
    OldProvince("77", "Bà Rịa – Vũng Tàu", ("72",), "79"),
    OldProvince("79", "Hồ Chí Minh", ("41", "50", "51", "52", "53", "54", "55", "56", "57", "58",
                                     "59"), "79"),
    OldProvince("80", "Long An", ("62",), "80"),
    OldProvince("82", "Tiền Giang", ("63",), "82"),
    OldProvince("83", "Bến Tre", ("71",), "86"),
    OldProvince("84", "Trà Vinh", ("84",), "86"),
    OldProvince("86", "Vĩnh Long", ("64",), "86"),
    OldProvince("87", "Đồng Tháp", ("66",), "82"),
    OldProvince("89", "An Giang", ("67",), "91"),
    OldProvince("91", "Kiên Giang", ("68",), "91"),
    OldProvince("92", "Cần Thơ", ("65",), "92"),
    OldProvince("93", "Hậu Giang", ("95",), "92"),
    OldProvince("94", "Sóc Trăng", ("83",), "92"),
    OldProvince("95", "Bạc Liêu", ("94",), "96"),
    OldProvince("96", "Cà Mau", ("69",), "96"),
)

#: CCCD birth-registration province code (3 digits) -> province name. Circular 07/2016/TT-BCA
#: Annex 1. Births registered abroad use a country code; those are not accepted in v1.
BIRTH_PROVINCES: dict[str, str] = {"0" + p.code: p.name for p in OLD_PROVINCES}

#: plate code (2 digits) -> who registers under it. Circular 79/2024/TT-BCA Annex 2; 80 is the
#: central agencies' code (Cục Cảnh sát giao thông). Never 00; 10, 13, 42, 44–46, 87, 91 and 96 are
#: not assigned.
PLATE_CODES: dict[str, str] = {
    **{code: p.name for p in OLD_PROVINCES for code in p.plates},
    "80": "Cơ quan trung ương (Cục Cảnh sát giao thông)",
}


@dataclass(frozen=True, slots=True)
class _Units:
    provinces: dict[str, str]
    wards: dict[str, Ward]
    by_province: dict[str, tuple[Ward, ...]]


@functools.cache
def _units() -> _Units:
    text = resources.files("exchange").joinpath("data/vn_admin_units_2025.csv").read_text("utf-8")
    provinces: dict[str, str] = {}
    wards: dict[str, Ward] = {}
    by_province: dict[str, list[Ward]] = {}
    for row in csv.DictReader(io.StringIO(text)):
        p = row["province_code"]
        provinces.setdefault(p, normalise_text(row["province_name"]))
        w = Ward(row["ward_code"], normalise_text(row["ward_name"]), row["ward_type"], p)
        wards[w.code] = w
        by_province.setdefault(p, []).append(w)
    return _Units(provinces, wards, {p: tuple(ws) for p, ws in by_province.items()})


def province_exists(code: str) -> bool:
    return code in _units().provinces


def ward_exists(code: str) -> bool:
    return code in _units().wards


def ward_province(code: str) -> str | None:
    """The 2025 province code of commune ``code``, or None if there is no such commune."""
    w = _units().wards.get(code)
    return w.province_code if w else None


def ward_in_province(ward_code: str, province_code: str) -> bool:
    w = _units().wards.get(ward_code)
    return w is not None and w.province_code == province_code


def province_name(code: str) -> str | None:
    return _units().provinces.get(code)


def ward_name(code: str) -> str | None:
    w = _units().wards.get(code)
    return w.name if w else None


def ward(code: str) -> Ward | None:
    return _units().wards.get(code)


def provinces() -> dict[str, str]:
    """All 34 provincial units: code -> name (a copy)."""
    return dict(_units().provinces)


def wards() -> tuple[Ward, ...]:
    """All 3,321 communes in file order."""
    return tuple(_units().wards.values())


def wards_of(province_code: str) -> tuple[Ward, ...]:
    return _units().by_province.get(province_code, ())
