"""vehicle v1: one registered road vehicle (đăng ký xe).

Owner: the Traffic Police (Ministry of Public Security). Key: the plate without separators,
upper case (``30A-123.45`` -> ``30A12345``, ``29-B1 123.45`` -> ``29B112345``); the written form is
kept in ``plate``. Rules from Circular 79/2024/TT-BCA (plates, Annex 2 codes) and Law 36/2024/QH15
Art. 36(3) (plates follow the owner's identifier). Diplomatic plates (NG, NN, QT, CV with a country
number) are registered separately and are not part of v1.
"""

from __future__ import annotations

import datetime as dt
import re
from typing import Annotated, Literal

import msgspec
from msgspec import Meta

from exchange.core.datasets.admin_units import PLATE_CODES
from exchange.core.datasets.base import Catalogue, DatasetSpec, RuleContext
from exchange.core.datasets.common import Name, PersonalOrTaxId, future, owner_id_problem
from exchange.core.errors import Code, Violation

__all__ = ["CAR_SERIES", "SPEC", "Vehicle", "compact_plate", "parse_plate"]

# Car: NNL-NNN.NN or the older NNL-NNNN; motorbike: NN-LD NNN.NN or NN-LD NNNN.
_CAR = r"[0-9]{2}[A-ZĐ]{1,2}-([0-9]{3}\.[0-9]{2}|[0-9]{4})"
_MOTO = r"[0-9]{2}-[A-ZĐ]{1,2}[0-9]? ([0-9]{3}\.[0-9]{2}|[0-9]{4})"
_CAR_RE = re.compile(r"([0-9]{2})([A-ZĐ]{1,2})-")
_MOTO_RE = re.compile(r"([0-9]{2})-([A-ZĐ]{1,2})([0-9]?) ")

#: Circular 79/2024/TT-BCA Annex 2: car series letters (I, J, O, Q, R, W not used for cars)
CAR_SERIES = frozenset("ABCDEFGHKLMNPSTUVXYZ")
#: special series, same annex: LD foreign-invested enterprises, DA projects, KT army enterprises,
#: R trailers and semi-trailers, MK tractors, MĐ electric motorbikes, TĐ pilot vehicles,
#: HC restricted-area vehicles, T temporary
SPECIAL_SERIES = frozenset({"LD", "DA", "KT", "R", "MK", "MĐ", "TĐ", "HC", "T"})

Kind = Literal["car", "truck", "bus", "motorbike", "trailer", "semi_trailer", "tractor"]


class Vehicle(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True, kw_only=True):
    """One registered vehicle (vehicle v1)."""

    plate: Annotated[str, Meta(
        pattern=f"^({_CAR}|{_MOTO})$",
        description="Plate as written: car 30A-123.45 (older 30A-1234), motorbike 29-B1 123.45 "
                    "(Circular 79/2024/TT-BCA).",
        extra={"expected": "a plate as written: car 30A-123.45 (older 30A-1234), motorbike "
                           "29-B1 123.45"},
    )]
    vin: Annotated[str, Meta(
        pattern=r"^[A-HJ-NPR-Z0-9]{17}$",
        description="Vehicle identification (chassis) number, 17 characters without I, O, Q "
                    "(ISO 3779).",
        extra={"expected": "a 17-character VIN of capital letters and digits, without I, O "
                           "or Q"},
    )]
    kind: Kind
    make: Name
    model: Name
    year: Annotated[int, Meta(ge=1900, le=2200, description="Year of manufacture.")]
    colour: Name | None = None
    owner_id: PersonalOrTaxId
    registration_date: dt.date
    status: Literal["registered", "transferred", "deregistered"]
    as_of: dt.date


def compact_plate(plate: str) -> str:
    """The plate without separators, upper case: the record key."""
    return plate.upper().replace("-", "").replace(".", "").replace(" ", "")


def parse_plate(plate: str) -> tuple[str, str, bool] | None:
    """(province code, series, is_motorbike_form) of a plate that matches the schema pattern."""
    m = _MOTO_RE.match(plate)
    if m:
        return m.group(1), m.group(2) + m.group(3), True
    m = _CAR_RE.match(plate)
    if m:
        return m.group(1), m.group(2), False
    return None


def _series_ok(series: str, motorbike: bool) -> bool:
    if not motorbike:
        return series in CAR_SERIES or series in SPECIAL_SERIES
    letters = series.rstrip("0123456789")
    digit = series[len(letters):]
    if digit == "0":
        return False
    if len(letters) == 1:
        # NN-LD: a letter and a digit 1..9 (29-B1)
        return letters in CAR_SERIES and digit != ""
    # two letters: mopeds under 50 cm³ (29-AA), or the special series (MĐ electric)
    return (letters[0] in CAR_SERIES and letters[1] in CAR_SERIES) or letters in SPECIAL_SERIES


def plate_rules(v: Vehicle, ctx: RuleContext) -> list[Violation]:
    """Plate form fits the kind; province code assigned; series allowed for the kind."""
    parsed = parse_plate(v.plate)
    if parsed is None:  # unreachable after the schema pattern; kept for direct callers
        return [Violation(Code.PLATE_FORMAT, f"{v.plate!r} is not a plate", "$.plate")]
    code, series, moto_form = parsed
    out: list[Violation] = []
    if moto_form != (v.kind == "motorbike"):
        want = "NN-LD NNN.NN" if v.kind == "motorbike" else "NNL-NNN.NN"
        out.append(Violation(Code.PLATE_FORMAT, f"a {v.kind} plate is written {want}", "$.plate"))
    # Circular 79/2024/TT-BCA Annex 2; 00 and unassigned numbers never appear
    if code not in PLATE_CODES:
        out.append(Violation(Code.PLATE_PROVINCE, f"{code} is not a plate province code",
                             "$.plate"))
    if not _series_ok(series, moto_form):
        out.append(Violation(Code.PLATE_SERIES, f"series {series} is not issued", "$.plate"))
    elif not moto_form:
        # R is reserved for trailers and semi-trailers, MK for tractors (same annex)
        needs = {"trailer": "R", "semi_trailer": "R", "tractor": "MK"}.get(v.kind)
        if needs is not None and series != needs:
            out.append(Violation(Code.PLATE_SERIES, f"a {v.kind} has series {needs}", "$.plate"))
        elif needs is None and series in ("R", "MK"):
            out.append(Violation(Code.PLATE_SERIES, f"series {series} is not for a {v.kind}",
                                 "$.plate"))
    return out


def owner(v: Vehicle, ctx: RuleContext) -> list[Violation]:
    # Law 36/2024/QH15 Art. 36(3): the owner is identified by personal id, else tax code
    problem = owner_id_problem(v.owner_id)
    return [Violation(Code.OWNER_ID, problem, "$.owner_id")] if problem else []


def dates(v: Vehicle, ctx: RuleContext) -> list[Violation]:
    out = future(v.registration_date, ctx, "$.registration_date") + future(v.as_of, ctx, "$.as_of")
    if v.year > ctx.today.year:
        out.append(Violation(Code.FUTURE_DATE, f"year of manufacture {v.year} is in the future",
                             "$.year"))
    if v.registration_date.year < v.year:
        out.append(Violation(Code.REGISTRATION_BEFORE_MANUFACTURE,
                             f"registered {v.registration_date} before its year of manufacture "
                             f"{v.year}", "$.registration_date"))
    return out


SPEC = DatasetSpec(
    name="vehicle",
    version=1,
    record_type=Vehicle,
    key=lambda v: compact_plate(v.plate),
    groups={
        "vehicle": ("plate", "vin", "kind", "make", "model", "year", "colour"),
        "registration": ("registration_date", "status", "as_of"),
        "owner": ("owner_id",),
    },
    # Circular 79/2024/TT-BCA: plate, owner id, chassis number, brand, model, type, colour, year,
    # first-registration date
    required=("plate", "vin", "kind", "make", "model", "year", "owner_id", "registration_date",
              "status", "as_of"),
    recommended=("colour",),
    rules=(plate_rules, owner, dates),
    codes={
        "$.plate": Code.PLATE_FORMAT,
        "$.vin": Code.VIN_FORMAT,
        "$.owner_id": Code.OWNER_ID,
        "$.kind": Code.VEHICLE_KIND,
        "$.status": Code.STATUS_CODE,
        "$.year": Code.YEAR_RANGE,
    },
    text_fields=("make", "model", "colour"),
    code_fields=("plate", "vin"),
    # registrations and transfers happen through the working day
    update_interval_s=3_600,
    references=("owner_id",),
    description="A registered road vehicle (Circular 79/2024/TT-BCA). Key: the plate without "
                "separators (30A12345).",
    catalogue=Catalogue(
        title_vi="Cơ sở dữ liệu đăng ký xe",
        title_en="Road vehicle registrations",
        description_vi="Xe cơ giới đã đăng ký: biển số, số khung, số máy, loại xe, chủ xe.",
        description_en="Registered road vehicles: plate, VIN, engine number, kind, owner.",
        theme="transport",
        legal_basis="Law on Road Traffic Order and Safety 36/2024/QH15; Circular "
                    "79/2024/TT-BCA",
        classification="core",
        category="Decision 20/2025/QĐ-TTg annex: undisclosed basic data of citizens (vehicle "
                 "owners, plates)",
        key_fields=("plate",),
    ),
)
