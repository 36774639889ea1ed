"""tax v1: one taxpayer's registration (đăng ký thuế).

Owner: the Tax Department (Ministry of Finance). Key: ``tax_id`` as written: a 10-digit MST, a
13-digit branch MST ``NNNNNNNNNN-NNN``, or, for individuals and households since 1 Jul 2025, the
12-digit personal identification number (Circular 86/2024/TT-BTC Art. 5(5), Art. 39).
"""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Literal

import msgspec
from msgspec import Meta

from exchange.core.datasets.base import Catalogue, DatasetSpec, RuleContext
from exchange.core.datasets.common import (
    Address,
    Name,
    PersonalId,
    address_rules,
    future,
    mst_problem,
    personal_id_problem,
)
from exchange.core.errors import Code, Violation

__all__ = ["SPEC", "Taxpayer"]

TaxId = Annotated[str, Meta(
    pattern=r"^([0-9]{10}(-[0-9]{3})?|[0-9]{12})$",
    description="MST: 10 digits with check digit, branches NNNNNNNNNN-NNN; or the 12-digit "
                "personal id of an individual or household (Circular 86/2024/TT-BTC Art. 5).",
    extra={"expected": "a 10-digit tax code (MST), a branch code NNNNNNNNNN-NNN, or the "
                       "12-digit personal id of an individual or household"},
)]


class Taxpayer(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True, kw_only=True):
    """One registered taxpayer (tax v1)."""

    tax_id: TaxId
    kind: Literal["individual", "household", "organisation"]
    name: Name
    #: individuals and households: the person's (head's) id; organisations: legal representative
    personal_id: PersonalId | None = None
    address: Address
    tax_office: Annotated[str, Meta(
        pattern=r"^[0-9A-Z]{2,12}$", description="Code of the managing tax office.",
        extra={"expected": "a tax office code of 2 to 12 capital letters or digits, e.g. "
                           "01101"})]
    # the statuses the Tax Department's public lookup shows: đang hoạt động, tạm ngừng hoạt động,
    # ngừng hoạt động chưa hoàn thành thủ tục, đã chấm dứt hiệu lực MST, đã chuyển cơ quan thuế,
    # không hoạt động tại địa chỉ đã đăng ký
    status: Literal["active", "suspended", "closing", "closed", "moved", "absent"]
    registration_date: dt.date
    as_of: dt.date


def tax_id_rules(t: Taxpayer, ctx: RuleContext) -> list[Violation]:
    """MST check digit and components; 12-digit ids only for people (Circular 86/2024 Art. 5)."""
    if len(t.tax_id) == 12:
        if t.kind == "organisation":
            return [Violation(Code.TAX_ID_KIND,
                              "an organisation's tax code is a 10-digit MST, not a personal id",
                              "$.tax_id")]
        problem = personal_id_problem(t.tax_id)
        if problem:
            return [Violation(problem[0], problem[1], "$.tax_id")]
        if t.personal_id is not None and t.personal_id != t.tax_id:
            return [Violation(Code.TAX_ID_PERSONAL_MISMATCH,
                              "a 12-digit tax id is the person's own personal id "
                              "(Circular 86/2024 Art. 5(5))", "$.personal_id")]
        return []
    problem = mst_problem(t.tax_id)
    return [Violation(problem[0], problem[1], "$.tax_id")] if problem else []


def personal_id_rules(t: Taxpayer, ctx: RuleContext) -> list[Violation]:
    # Form 05-ĐK-TCT (individuals) asks for the identity papers; households register through
    # their head (Circular 86/2024 Art. 7)
    if t.personal_id is None:
        if t.kind != "organisation":
            return [Violation(Code.PERSONAL_ID_REQUIRED,
                              f"a taxpayer of kind {t.kind} needs the personal_id",
                              "$.personal_id")]
        return []
    problem = personal_id_problem(t.personal_id)
    return [Violation(problem[0], problem[1], "$.personal_id")] if problem else []


def dates(t: Taxpayer, ctx: RuleContext) -> list[Violation]:
    out = future(t.registration_date, ctx, "$.registration_date") + future(t.as_of, ctx, "$.as_of")
    if t.as_of < t.registration_date:
        out.append(Violation(Code.AS_OF_BEFORE_REGISTRATION,
                             "as_of is before the registration date", "$.as_of"))
    return out


def address(t: Taxpayer, ctx: RuleContext) -> list[Violation]:
    return address_rules(t.address, "$.address")


SPEC = DatasetSpec(
    name="tax",
    version=1,
    record_type=Taxpayer,
    key=lambda t: t.tax_id,
    groups={
        "registration": ("tax_id", "kind", "name", "tax_office", "status", "registration_date",
                         "as_of"),
        "address": ("address",),
        "personal": ("personal_id",),
    },
    # form 05-ĐK-TCT (individuals), 01-ĐK-TCT (organisations): name, identifiers, address,
    # managing tax office
    required=("tax_id", "kind", "name", "address", "tax_office", "status", "registration_date",
              "as_of"),
    recommended=("personal_id",),
    rules=(tax_id_rules, personal_id_rules, dates, address),
    codes={
        "$.tax_id": Code.TAX_ID_FORMAT,
        "$.personal_id": Code.ID_FORMAT,
        "$.address.province_code": Code.UNKNOWN_PROVINCE,
        "$.address.ward_code": Code.UNKNOWN_WARD,
        "$.kind": Code.TAXPAYER_KIND,
        "$.status": Code.STATUS_CODE,
        "$.tax_office": Code.TAX_OFFICE_FORMAT,
    },
    text_fields=("name", "address.street"),
    update_interval_s=86_400,
    references=("personal_id",),
    description="A taxpayer's registration (Circular 86/2024/TT-BTC). Key: the tax id as "
                "written (MST, branch MST, or a person's 12-digit id).",
    catalogue=Catalogue(
        title_vi="Cơ sở dữ liệu đăng ký thuế",
        title_en="Taxpayer registration",
        description_vi="Đăng ký thuế của cá nhân, hộ kinh doanh và tổ chức: mã số thuế, tên, "
                       "địa chỉ, cơ quan thuế quản lý, tình trạng hoạt động.",
        description_en="Tax registration of individuals, households and organisations: tax "
                       "code, name, address, managing tax office, status.",
        theme="taxation",
        legal_basis="Law on Tax Administration 38/2019/QH14; Circular 86/2024/TT-BTC",
        classification="core",
        category="Decision 20/2025/QĐ-TTg annex: undisclosed basic data of citizens "
                 "(personal tax codes)",
        key_fields=("tax_id",),
    ),
)
