"""land v1: one land parcel (thửa đất) in the cadastral database.

Owner: the land registration offices (Ministry of Agriculture and Environment). Key:
``{ward_code}-{map_sheet}-{parcel_number}``, e.g. ``00004-12-345``: commune code, map sheet number
(số tờ bản đồ) and parcel number (số thửa), which together identify a parcel within a commune's
cadastral map (Circular 10/2024/TT-BTNMT). The 12-character GeoHash ``parcel_id`` of Circular
09/2024/TT-BTNMT is carried as an optional field because old parcels do not have one yet.
"""

from __future__ import annotations

import datetime as dt
import math
from typing import Annotated, Literal

import msgspec
from msgspec import Meta

from exchange.core.datasets import admin_units
from exchange.core.datasets.base import Catalogue, DatasetSpec, RuleContext
from exchange.core.datasets.common import (
    Address,
    PersonalOrTaxId,
    WardCode,
    address_rules,
    future,
    owner_id_problem,
)
from exchange.core.errors import Code, Violation

__all__ = ["PURPOSES", "SPEC", "Parcel", "geohash_decode", "parcel_key"]

#: Land-use purpose codes, Circular 08/2024/TT-BTNMT Annex II (BHK and NHK merged into HNK).
Purpose = Literal[
    "LUC", "LUK", "HNK", "CLN", "RDD", "RPH", "RSX", "NTS", "CNT", "LMU", "NKH", "ONT", "ODT",
    "TSC", "CQP", "CAN", "DVH", "DYT", "DGD", "DTT", "DKH", "TMD", "SKC", "SKS", "SKN", "DGT",
    "DTL", "TON", "TIN", "NTD", "SON", "MNC", "PNK", "BCS", "DCS", "NCS",
]
PURPOSES: tuple[str, ...] = Purpose.__args__  # type: ignore[attr-defined]

_GEOHASH = "0123456789bcdefghjkmnpqrstuvwxyz"
_GEOHASH_INDEX = {c: i for i, c in enumerate(_GEOHASH)}

# Vietnam including the Hoàng Sa (Paracel) and Trường Sa (Spratly) archipelagos, with a margin:
# northernmost point Lũng Cú 23°23′N, southernmost Mũi Cà Mau 8°34′N (Trường Sa reaches ~6°N),
# westernmost Apa Chải 102°08′E, easternmost Trường Sa ~117°E.
_LAT = (6.0, 23.5)
_LON = (102.0, 117.9)


class Parcel(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True, kw_only=True):
    """One land parcel (land v1)."""

    ward_code: WardCode
    map_sheet: Annotated[int, Meta(ge=1, le=99_999, description="Số tờ bản đồ.")]
    parcel_number: Annotated[int, Meta(ge=1, le=999_999, description="Số thửa.")]
    parcel_id: Annotated[str, Meta(
        pattern=r"^[0-9b-hjkmnp-z]{12}$",
        description="12-character GeoHash of the parcel's characteristic point (WGS84), "
                    "Circular 09/2024/TT-BTNMT.",
        extra={"expected": "a 12-character GeoHash (digits and lower-case letters but a, i, "
                           "l, o), e.g. w7epxv7s9t6j"},
    )] | None = None
    area_m2: Annotated[float, Meta(gt=0, le=1e9, description="Area in m², one decimal.")]
    purposes: Annotated[list[Purpose], Meta(
        min_length=1, max_length=10,
        description="Land-use purposes, Circular 08/2024/TT-BTNMT Annex II.")]
    certificate_serial: Annotated[str, Meta(
        pattern=r"^[A-Z]{2} ?([0-9]{8}|[0-9]{6})$",
        description="Certificate serial: 2 letters + 8 digits (Circular 10/2024/TT-BTNMT, "
                    "from 1 Aug 2024) or older 2 letters + 6 digits, optional space.",
        extra={"expected": "2 capital letters, an optional space and 8 digits (6 on older "
                           "certificates), e.g. AA 01234567"},
    )] | None = None
    owners: Annotated[list[PersonalOrTaxId], Meta(min_length=1, max_length=50)]
    address: Address
    as_of: dt.date


def parcel_key(ward_code: str, map_sheet: int, parcel_number: int) -> str:
    return f"{ward_code}-{map_sheet}-{parcel_number}"


def geohash_decode(gh: str) -> tuple[float, float]:
    """Centre (lat, lon) of a GeoHash cell."""
    lat_lo, lat_hi, lon_lo, lon_hi = -90.0, 90.0, -180.0, 180.0
    even = True
    for c in gh:
        bits = _GEOHASH_INDEX[c]
        for shift in (4, 3, 2, 1, 0):
            bit = (bits >> shift) & 1
            if even:
                mid = (lon_lo + lon_hi) / 2
                lon_lo, lon_hi = (mid, lon_hi) if bit else (lon_lo, mid)
            else:
                mid = (lat_lo + lat_hi) / 2
                lat_lo, lat_hi = (mid, lat_hi) if bit else (lat_lo, mid)
            even = not even
    return (lat_lo + lat_hi) / 2, (lon_lo + lon_hi) / 2


def location(p: Parcel, ctx: RuleContext) -> list[Violation]:
    """The commune exists; the address names the same commune (Decree 101/2024 Art. 6)."""
    out = address_rules(p.address, "$.address")
    if not admin_units.ward_exists(p.ward_code):
        out.append(Violation(Code.UNKNOWN_WARD, f"no commune {p.ward_code!r} in the 2025 list",
                             "$.ward_code"))
    elif p.address.ward_code != p.ward_code:
        out.append(Violation(Code.WARD_MISMATCH,
                             f"address commune {p.address.ward_code} is not the parcel's "
                             f"commune {p.ward_code}", "$.address.ward_code"))
    if p.parcel_id is not None:
        lat, lon = geohash_decode(p.parcel_id)
        if not (_LAT[0] <= lat <= _LAT[1] and _LON[0] <= lon <= _LON[1]):
            out.append(Violation(Code.PARCEL_ID_OUTSIDE_VIETNAM,
                                 f"GeoHash {p.parcel_id} is at {lat:.4f}, {lon:.4f}, "
                                 "outside Vietnam", "$.parcel_id"))
    return out


def area(p: Parcel, ctx: RuleContext) -> list[Violation]:
    # certificates state the area in m² with one decimal (Circular 10/2024/TT-BTNMT Art. 6)
    tenths = p.area_m2 * 10
    if not math.isfinite(tenths) or abs(tenths - round(tenths)) > 1e-6 * max(1.0, tenths):
        return [Violation(Code.AREA_PRECISION, f"area {p.area_m2} m² has more than one decimal",
                          "$.area_m2")]
    return []


def purposes(p: Parcel, ctx: RuleContext) -> list[Violation]:
    if len(set(p.purposes)) != len(p.purposes):
        return [Violation(Code.LAND_PURPOSE, "a purpose is listed twice", "$.purposes")]
    return []


def owners(p: Parcel, ctx: RuleContext) -> list[Violation]:
    """Land users by personal id or, for organisations, tax code (Decree 101/2024 Art. 6)."""
    out: list[Violation] = []
    for i, owner in enumerate(p.owners):
        problem = owner_id_problem(owner)
        if problem:
            out.append(Violation(Code.OWNER_ID, problem, f"$.owners[{i}]"))
    if len(set(p.owners)) != len(p.owners):
        out.append(Violation(Code.OWNER_ID, "an owner is listed twice", "$.owners"))
    return out


def dates(p: Parcel, ctx: RuleContext) -> list[Violation]:
    return future(p.as_of, ctx, "$.as_of")


SPEC = DatasetSpec(
    name="land",
    version=1,
    record_type=Parcel,
    key=lambda p: parcel_key(p.ward_code, p.map_sheet, p.parcel_number),
    groups={
        "parcel": ("ward_code", "map_sheet", "parcel_number", "parcel_id", "area_m2", "purposes",
                   "address", "as_of"),
        "rights": ("certificate_serial", "owners"),
    },
    # Decree 101/2024/NĐ-CP Art. 6 and 18; 2025 cadastral data clean-up guidance
    required=("ward_code", "map_sheet", "parcel_number", "area_m2", "purposes", "owners",
              "address", "as_of"),
    recommended=("parcel_id", "certificate_serial"),
    rules=(location, area, purposes, owners, dates),
    codes={
        "$.ward_code": Code.UNKNOWN_WARD,
        "$.address.province_code": Code.UNKNOWN_PROVINCE,
        "$.address.ward_code": Code.UNKNOWN_WARD,
        "$.parcel_id": Code.PARCEL_ID_FORMAT,
        "$.area_m2": Code.AREA_RANGE,
        "$.purposes": Code.LAND_PURPOSE,
        "$.purposes[*]": Code.LAND_PURPOSE,
        "$.certificate_serial": Code.CERTIFICATE_SERIAL,
        "$.owners": Code.OWNER_ID,
        "$.owners[*]": Code.OWNER_ID,
        "$.map_sheet": Code.MAP_SHEET_RANGE,
        "$.parcel_number": Code.PARCEL_NUMBER_RANGE,
    },
    text_fields=("address.street",),
    code_fields=("certificate_serial",),
    update_interval_s=86_400,
    references=("owners",),
    description="A land parcel in the cadastral database (Decree 101/2024/NĐ-CP). Key: "
                "{ward_code}-{map_sheet}-{parcel_number}.",
    catalogue=Catalogue(
        title_vi="Cơ sở dữ liệu đất đai",
        title_en="Land (cadastral) database",
        description_vi="Thửa đất: tờ bản đồ, số thửa, diện tích, mục đích sử dụng, người sử "
                       "dụng đất, giấy chứng nhận.",
        description_en="Land parcels: map sheet, parcel number, area, land-use purposes, land "
                       "users, certificate.",
        theme="land and environment",
        legal_basis="Land Law 31/2024/QH15; Decree 101/2024/NĐ-CP",
        classification="core",
        category="Decision 20/2025/QĐ-TTg annex: undisclosed basic data of citizens (land "
                 "users)",
        key_fields=("ward_code", "map_sheet", "parcel_number"),
    ),
)
