"""Types and rules shared by the dataset definitions: identifiers, addresses, dates."""

from __future__ import annotations

import datetime as dt
from typing import Annotated

import msgspec
from msgspec import Meta
from stdnum.vn import mst as _mst

from exchange.core.datasets import admin_units
from exchange.core.datasets.base import RuleContext
from exchange.core.envelope import PRINTABLE
from exchange.core.errors import Code, Violation

__all__ = [
    "Address",
    "CountryCode",
    "Name",
    "PersonalId",
    "PersonalOrTaxId",
    "ProvinceCode",
    "Text",
    "WardCode",
    "address_rules",
    "mst_problem",
    "owner_id_problem",
    "personal_id_problem",
]

PersonalId = Annotated[str, Meta(
    pattern=r"^[0-9]{12}$",
    description="Personal identification number (số định danh cá nhân / CCCD), 12 digits "
                "PPP G YY RRRRRR (Circular 07/2016/TT-BCA Art. 7).",
    extra={"expected": "a 12-digit personal id, e.g. 001085012345"},
)]
#: a 12-digit personal id, a 10-digit MST or a 13-digit branch MST written NNNNNNNNNN-NNN
PersonalOrTaxId = Annotated[str, Meta(
    pattern=r"^([0-9]{12}|[0-9]{10}(-[0-9]{3})?)$",
    description="Personal identification number (12 digits) or tax code (MST, 10 digits, "
                "branches NNNNNNNNNN-NNN).",
    extra={"expected": "a 12-digit personal id, a 10-digit tax code (MST) or a branch tax "
                       "code NNNNNNNNNN-NNN"},
)]
ProvinceCode = Annotated[str, Meta(
    pattern=r"^[0-9]{2}$",
    description="Province code, Decision 19/2025/QĐ-TTg (34 units from 1 Jul 2025).",
    extra={"expected": "a 2-digit province code, e.g. 01"},
)]
WardCode = Annotated[str, Meta(
    pattern=r"^[0-9]{5}$",
    description="Commune (xã/phường/đặc khu) code, Decision 19/2025/QĐ-TTg.",
    extra={"expected": "a 5-digit commune/ward code, e.g. 00004"},
)]
CountryCode = Annotated[str, Meta(
    pattern=r"^[A-Z]{2}$", description="ISO 3166-1 alpha-2 country code.",
    extra={"expected": "a 2-letter ISO 3166-1 country code in capitals, e.g. VN"},
)]
#: printable (``envelope.PRINTABLE``): no control, bidirectional-override or zero-width
#: characters, and not blank
_PRINTABLE_WORDS = ("printable text: not blank, and no control, bidirectional-override or "
                   "zero-width characters")
Name = Annotated[str, Meta(min_length=1, max_length=200, pattern=PRINTABLE,
                           extra={"expected": _PRINTABLE_WORDS})]
Text = Annotated[str, Meta(min_length=1, max_length=500, pattern=PRINTABLE,
                           extra={"expected": _PRINTABLE_WORDS})]


class Address(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True, kw_only=True):
    """An address by the 2025 administrative codes (two levels: province, commune)."""

    province_code: ProvinceCode
    ward_code: WardCode
    street: Text | None = None


def address_rules(addr: Address, path: str) -> list[Violation]:
    """The province and commune exist (Decision 19/2025/QĐ-TTg) and the commune is in it."""
    out: list[Violation] = []
    province_ok = admin_units.province_exists(addr.province_code)
    if not province_ok:
        out.append(Violation(Code.UNKNOWN_PROVINCE,
                             f"no province {addr.province_code!r} in the 2025 list",
                             f"{path}.province_code"))
    ward_prov = admin_units.ward_province(addr.ward_code)
    if ward_prov is None:
        out.append(Violation(Code.UNKNOWN_WARD, f"no commune {addr.ward_code!r} in the 2025 list",
                             f"{path}.ward_code"))
    elif province_ok and ward_prov != addr.province_code:
        out.append(Violation(
            Code.WARD_NOT_IN_PROVINCE,
            f"commune {addr.ward_code} belongs to province {ward_prov}, "
            f"not {addr.province_code}", f"{path}.ward_code"))
    return out


def mst_problem(tax_id: str) -> tuple[str, str] | None:
    """(code, message) if ``tax_id`` (10 digits, or NNNNNNNNNN-NNN) is not a valid MST.

    Circular 105/2020/TT-BTC Art. 5 (now Circular 86/2024/TT-BTC): serial N3..N9 0000000 is not
    issued; branch suffix 000 is not issued; N10 = 10 - (Σ Ni·Wi mod 11) with
    W = 31 29 23 19 17 13 7 5 3, and no code exists when the sum is 0 mod 11. The check digit is
    python-stdnum's ``stdnum.vn.mst``.
    """
    if tax_id[2:9] == "0000000":
        return Code.MST_SERIAL, "tax code serial N3..N9 0000000 is never issued"
    if len(tax_id) == 14 and tax_id[11:] == "000":
        return Code.MST_BRANCH, "branch suffix 000 is never issued (001..999)"
    if not _mst.is_valid(tax_id):
        return Code.MST_CHECKSUM, f"tax code {tax_id} fails its check digit (Circular 86/2024)"
    return None


def personal_id_problem(pid: str) -> tuple[str, str] | None:
    """(code, message) if the birth-registration province PPP of a 12-digit id is unknown."""
    # Circular 07/2016/TT-BCA Annex 1: PPP is one of the 63 province codes
    if pid[:3] not in admin_units.BIRTH_PROVINCES:
        return Code.UNKNOWN_BIRTH_PROVINCE, (
            f"personal id {pid} starts with {pid[:3]}, not a birth-registration province code "
            "(Circular 07/2016/TT-BCA Annex 1)")
    return None


def owner_id_problem(owner: str) -> str | None:
    """A message if ``owner`` is neither a plausible personal id nor a valid MST."""
    problem = personal_id_problem(owner) if len(owner) == 12 else mst_problem(owner)
    return None if problem is None else problem[1]


def future(value: dt.date, ctx: RuleContext, path: str) -> list[Violation]:
    if value > ctx.today:
        return [Violation(Code.FUTURE_DATE, f"{value.isoformat()} is after today "
                                         f"({ctx.today.isoformat()})", path)]
    return []


#: ISO 3166-1 alpha-2 officially assigned codes (249), for nationality.
_ISO_TABLE = """
AD AE AF AG AI AL AM AO AQ AR AS AT AU AW AX AZ BA BB BD BE BF BG BH BI BJ BL BM BN BO BQ BR BS
BT BV BW BY BZ CA CC CD CF CG CH CI CK CL CM CN CO CR CU CV CW CX CY CZ DE DJ DK DM DO DZ EC EE
EG EH ER ES ET FI FJ FK FM FO FR GA GB GD GE GF GG GH GI GL GM GN GP GQ GR GS GT GU GW GY HK HM
HN HR HT HU ID IE IL IM IN IO IQ IR IS IT JE JM JO JP KE KG KH KI KM KN KP KR KW KY KZ LA LB LC
LI LK LR LS LT LU LV LY MA MC MD ME MF MG MH MK ML MM MN MO MP MQ MR MS MT MU MV MW MX MY MZ NA
NC NE NF NG NI NL NO NP NR NU NZ OM PA PE PF PG PH PK PL PM PN PR PS PT PW PY QA RE RO RS RU RW
SA SB SC SD SE SG SH SI SJ SK SL SM SN SO SR SS ST SV SX SY SZ TC TD TF TG TH TJ TK TL TM TN TO
TR TT TV TW TZ UA UG UM US UY UZ VA VC VE VG VI VN VU WF WS YE YT ZA ZM ZW
"""
ISO_COUNTRIES: frozenset[str] = frozenset(_ISO_TABLE.split())
