"""population v1: one citizen in the National Population Database (CSDL quốc gia về dân cư).

Owner: the Ministry of Public Security. Key: the 12-digit personal identification number ``id``.
Fields follow the Law on Identification 26/2023/QH15 Art. 9 and the minimum set recorded at birth
registration (Decree 137/2015/NĐ-CP Art. 14).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from typing import Annotated, Literal

import msgspec
from msgspec import Meta

from exchange.core.datasets import admin_units
from exchange.core.datasets.admin_units import BIRTH_PROVINCES
from exchange.core.datasets.base import Catalogue, DatasetSpec, RuleContext
from exchange.core.datasets.common import (
    ISO_COUNTRIES,
    Address,
    CountryCode,
    Name,
    PersonalId,
    ProvinceCode,
    WardCode,
    address_rules,
    future,
)
from exchange.core.errors import Code, Violation

__all__ = ["SPEC", "SPEC_V2", "Hometown", "Person", "PersonV2"]


class Person(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True, kw_only=True):
    """One citizen (population v1)."""

    id: PersonalId
    full_name: Name
    birth_date: dt.date
    sex: Literal["male", "female"]
    birth_registration_province: Annotated[str, Meta(
        pattern=r"^[0-9]{3}$",
        description="Where the birth was registered: 3-digit code, Circular 07/2016/TT-BCA "
                    "Annex 1; equals the first three digits of id.",
        extra={"expected": "a 3-digit birth-registration province code (the first 3 digits "
                           "of id), e.g. 001"},
    )]
    permanent_address: Address
    nationality: CountryCode = "VN"
    status: Literal["living", "deceased"] = "living"
    death_date: dt.date | None = None
    ethnicity: Name | None = None
    religion: Name | None = None
    as_of: dt.date


def id_structure(p: Person, ctx: RuleContext) -> list[Violation]:
    """PPP G YY of the id agree with the birth data (Circular 07/2016/TT-BCA Art. 7)."""
    out: list[Violation] = []
    if p.id[:3] not in BIRTH_PROVINCES:
        out.append(Violation(Code.UNKNOWN_BIRTH_PROVINCE,
                             f"id starts with {p.id[:3]}, not a province code of Circular "
                             "07/2016/TT-BCA Annex 1", "$.id"))
    elif p.id[:3] != p.birth_registration_province:
        out.append(Violation(Code.ID_BIRTH_PROVINCE_MISMATCH,
                             f"id starts with {p.id[:3]} but the birth was registered in "
                             f"{p.birth_registration_province}", "$.id"))
    # G = 2 * (century - 20) + (1 if female): 20th c. 0/1, 21st 2/3, 22nd 4/5 ... (Art. 7(2))
    year = p.birth_date.year
    century = (year - 1900) // 100
    expected_g = 2 * century + (1 if p.sex == "female" else 0)
    if not 0 <= expected_g <= 9 or p.id[3] != str(expected_g):
        out.append(Violation(
            Code.ID_CENTURY_SEX_MISMATCH,
            f"digit 4 of the id is {p.id[3]}; a {p.sex} born in {year} has "
            f"{expected_g if 0 <= expected_g <= 9 else 'no valid digit'}", "$.id"))
    if p.id[4:6] != f"{year % 100:02d}":
        out.append(Violation(Code.ID_BIRTH_YEAR_MISMATCH,
                             f"digits 5-6 of the id are {p.id[4:6]}, the birth year is {year}",
                             "$.id"))
    return out


def birth_province(p: Person, ctx: RuleContext) -> list[Violation]:
    # Circular 07/2016/TT-BCA Annex 1: the 63 province codes (births abroad are out of v1);
    # when the id carries the same code, id_structure has reported it already
    code = p.birth_registration_province
    if code not in BIRTH_PROVINCES and code != p.id[:3]:
        return [Violation(Code.UNKNOWN_BIRTH_PROVINCE,
                          f"{p.birth_registration_province} is not a province code of Circular "
                          "07/2016/TT-BCA Annex 1", "$.birth_registration_province")]
    return []


def dates(p: Person, ctx: RuleContext) -> list[Violation]:
    """No future dates; death after birth; death date iff deceased (Law 26/2023 Art. 9(2))."""
    out = future(p.birth_date, ctx, "$.birth_date") + future(p.as_of, ctx, "$.as_of")
    if p.status == "deceased":
        if p.death_date is None:
            out.append(Violation(Code.DEATH_DATE_REQUIRED, "a deceased person needs a death_date",
                                 "$.death_date"))
    elif p.death_date is not None:
        out.append(Violation(Code.DEATH_DATE_NOT_ALLOWED, "a living person has no death_date",
                             "$.death_date"))
    if p.death_date is not None:
        out += future(p.death_date, ctx, "$.death_date")
        if p.death_date < p.birth_date:
            out.append(Violation(Code.DEATH_BEFORE_BIRTH,
                                 f"death {p.death_date} is before birth {p.birth_date}",
                                 "$.death_date"))
    return out


def residence(p: Person, ctx: RuleContext) -> list[Violation]:
    return address_rules(p.permanent_address, "$.permanent_address")


def nationality(p: Person, ctx: RuleContext) -> list[Violation]:
    if p.nationality not in ISO_COUNTRIES:
        return [Violation(Code.UNKNOWN_COUNTRY, f"{p.nationality} is not an ISO 3166-1 code",
                          "$.nationality")]
    return []


SPEC = DatasetSpec(
    name="population",
    version=1,
    record_type=Person,
    key=lambda p: p.id,
    groups={
        "identity": ("id", "full_name", "birth_date", "sex", "birth_registration_province",
                     "nationality"),
        "residence": ("permanent_address",),
        # as_of dates the whole record; it sits with civil status, which is what changes most
        "civil_status": ("status", "death_date", "as_of"),
        "ethnicity_religion": ("ethnicity", "religion"),
    },
    # Law 26/2023/QH15 Art. 9; Decree 137/2015/NĐ-CP Art. 14 (minimum set at birth registration)
    required=("id", "full_name", "birth_date", "sex", "birth_registration_province",
              "permanent_address", "nationality", "status", "as_of"),
    recommended=("ethnicity", "religion"),
    rules=(id_structure, birth_province, dates, residence, nationality),
    codes={
        "$.id": Code.ID_FORMAT,
        "$.birth_registration_province": Code.UNKNOWN_BIRTH_PROVINCE,
        "$.permanent_address.province_code": Code.UNKNOWN_PROVINCE,
        "$.permanent_address.ward_code": Code.UNKNOWN_WARD,
        "$.nationality": Code.UNKNOWN_COUNTRY,
        "$.sex": Code.SEX_CODE,
        "$.status": Code.STATUS_CODE,
    },
    text_fields=("full_name", "permanent_address.street", "ethnicity", "religion"),
    # births and deaths are registered every day, all day
    update_interval_s=3_600,
    description="A citizen in the National Population Database (Law on Identification "
                "26/2023/QH15 Art. 9). Key: the 12-digit personal identification number.",
    catalogue=Catalogue(
        title_vi="Cơ sở dữ liệu quốc gia về dân cư",
        title_en="National Population Database",
        description_vi="Thông tin cơ bản của công dân: họ tên, ngày sinh, giới tính, nơi đăng "
                       "ký khai sinh, nơi thường trú, tình trạng hôn nhân, dân tộc, tôn giáo.",
        description_en="Basic data of each citizen: name, birth date, sex, birth registration "
                       "place, permanent residence, marital status, ethnicity, religion.",
        theme="population and identity",
        legal_basis="Law on Identification 26/2023/QH15 Art. 9; Decree 70/2024/NĐ-CP",
        classification="core",
        category="Decision 20/2025/QĐ-TTg annex: undisclosed basic data of citizens (national "
                 "copy: core); ethnicity and religion are sensitive personal data (Decree "
                 "13/2023/NĐ-CP Art. 2(4))",
        key_fields=("id",),
    ),
)


# -- v2: hometown and household ------------------------------------------------------------------
#
# Two items of Law 26/2023/QH15 Art. 9 that v1 leaves out and that other registries keep asking
# the population database for: the hometown (quê quán, item 9, in the minimum set at birth
# registration of Decree 137/2015 Art. 14) and the household (items 19-20: the household head's
# personal id and the relationship with the head), which social insurance, land and tax use to
# find a family. Each sits in a disclosure group of its own, so an agreement made for v1 keeps
# its meaning: a v1 reader receives a v2 record with these groups withheld (as the commitments
# the publisher signed) and verifies it unchanged. Every v1 record is a valid v2 record.


class Hometown(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True, kw_only=True):
    """Quê quán: the province, and the commune when known, by the 2025 codes."""

    province_code: ProvinceCode
    ward_code: WardCode | None = None


Relationship = Literal["head", "spouse", "child", "parent", "grandchild", "sibling", "other"]


class PersonV2(Person, kw_only=True):
    """One citizen (population v2): v1 with hometown and household."""

    hometown: Hometown | None = None
    household_head_id: Annotated[PersonalId | None, Meta(
        description="Personal id of the household head (chủ hộ); the person's own id when the "
                    "person is the head.")] = None
    relationship_to_head: Relationship | None = None


def household(p: PersonV2, ctx: RuleContext) -> list[Violation]:
    """A household is named by its head and the relationship together; the head heads it."""
    head, rel = p.household_head_id, p.relationship_to_head
    if (head is None) != (rel is None):
        missing = "relationship_to_head" if rel is None else "household_head_id"
        return [Violation(Code.HOUSEHOLD_INCOMPLETE, "household_head_id and "
                          "relationship_to_head come together; add " + missing,
                          f"$.{missing}")]
    if rel == "head" and head != p.id:
        return [Violation(Code.HOUSEHOLD_HEAD_MISMATCH, f"the head of the household is "
                          f"{head}, but the relationship says this person ({p.id}) is",
                          "$.household_head_id")]
    if rel not in (None, "head") and head == p.id:
        return [Violation(Code.HOUSEHOLD_HEAD_MISMATCH, f"the person is their own household "
                          f"head, but the relationship is {rel!r}; use 'head'",
                          "$.relationship_to_head")]
    return []


def hometown(p: PersonV2, ctx: RuleContext) -> list[Violation]:
    h = p.hometown
    if h is None:
        return []
    if h.ward_code is None:
        if not admin_units.province_exists(h.province_code):
            return [Violation(Code.UNKNOWN_PROVINCE, f"no province {h.province_code!r} in the "
                              "2025 list", "$.hometown.province_code")]
        return []
    return address_rules(Address(province_code=h.province_code, ward_code=h.ward_code),
                         "$.hometown")


SPEC_V2 = dataclasses.replace(
    SPEC,
    version=2,
    record_type=PersonV2,
    groups={**SPEC.groups,
            "hometown": ("hometown",),
            "household": ("household_head_id", "relationship_to_head")},
    # the new fields are not scored for "sufficient" (yet): the reference agencies do not fill
    # them, and a score that falls when an owner moves to v2 would measure the move, not the data
    recommended=SPEC.recommended,
    rules=(*SPEC.rules, hometown, household),
    codes={**SPEC.codes,
           "$.hometown.province_code": Code.UNKNOWN_PROVINCE,
           "$.hometown.ward_code": Code.UNKNOWN_WARD,
           "$.household_head_id": Code.ID_FORMAT,
           "$.relationship_to_head": Code.RELATIONSHIP_CODE},
    references=(*SPEC.references, "household_head_id"),
    description="A citizen in the National Population Database (Law on Identification "
                "26/2023/QH15 Art. 9), v2: v1 with the hometown and the household (head and "
                "relationship). Key: the 12-digit personal identification number.",
)
