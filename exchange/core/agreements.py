"""Agreements as signed data (pure): the request, the decisions, the lifecycle.

A subscriber node **requests** (dataset, groups, purpose, legal basis, until when) and signs the
request with its Ed25519 key. The dataset's owner **approves** or **rejects** with its key; for
a dataset classified core or important an operator **countersigns** before the agreement is
active. The owner or an operator **revokes**; expiry ends it. Every document carries every
signature so far, so the latest version of an agreement proves its whole history, and each
version is an entry of the transparency log (the ``agreement`` dataset, published by the broker).

States::

    requested ──approve──▶ active                        (classification other)
    requested ──approve──▶ approved ──countersign──▶ active   (core, important)
    requested | approved ──reject──▶ rejected
    requested | approved | active ──revoke──▶ revoked
    active, past ``expires``: expired (derived from the time; nothing is written)
"""

from __future__ import annotations

import datetime as dt
import hashlib
from collections.abc import Callable
from typing import Annotated, Literal

import msgspec
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from exchange.core import canonical
from exchange.core.envelope import NodeId
from exchange.core.errors import (
    AuthError,
    Code,
    ConflictError,
    Forbidden,
    InputError,
    IntegrityError,
)
from exchange.core.signing import KeyId, key_id

__all__ = [
    "REQUEST_CONTEXT",
    "Action",
    "AgreementRecord",
    "Decision",
    "Request",
    "Signature",
    "apply",
    "decide",
    "request_id",
    "sign_request",
    "state_at",
    "verify",
]

REQUEST_CONTEXT = b"vn-exchange/agreement-request/v1\n"
DECISION_CONTEXT = b"vn-exchange/agreement-decision/v1\n"

Action = Literal["approve", "reject", "countersign", "revoke"]
Role = Literal["node", "operator"]
State = Literal["requested", "approved", "active", "rejected", "revoked"]
Text = Annotated[str, msgspec.Meta(min_length=3, max_length=500)]
Time = Annotated[str, msgspec.Meta(max_length=40)]


class Request(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """What the subscriber asks for, in its own words and under its own signature."""

    subscriber: NodeId
    dataset: Annotated[str, msgspec.Meta(pattern=r"^[a-z][a-z0-9_]*$", max_length=64)]
    #: the dataset's owner the subscriber asks (from the catalogue): it alone approves
    owner: NodeId
    #: the schema version the subscriber reads: it receives records of later versions with
    #: the groups its version does not have withheld, so the grant never widens by itself
    version: Annotated[int, msgspec.Meta(ge=1, le=999)] = 1
    #: disclosure groups asked for; empty asks for every group of ``version``
    groups: Annotated[list[Annotated[str, msgspec.Meta(max_length=64)]],
                      msgspec.Meta(max_length=16)] = []
    purpose: Text
    #: the law or decision that allows the processing (Decree 13/2023 Art. 17, Law 91/2025)
    legal_basis: Text
    requested_at: Time
    expires: Time
    min_completeness: Annotated[float, msgspec.Meta(ge=0.0, le=1.0)] = 0.0
    #: random per request, so that two identical requests are two agreements
    nonce: Annotated[str, msgspec.Meta(pattern=r"^[0-9a-f]{16,64}$")]


class Signature(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """One party's signature: who, under which key, when."""

    by: NodeId
    role: Role
    kid: KeyId
    at: Time
    signature: Annotated[bytes, msgspec.Meta(min_length=64, max_length=64)]


class Decision(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    action: Action
    reason: Annotated[str, msgspec.Meta(max_length=500)] = ""
    signed: Signature


class AgreementRecord(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """The record the ``agreement`` dataset stores: one version per transition."""

    id: Annotated[str, msgspec.Meta(pattern=r"^agr-[0-9a-f]{16}$")]
    request: Request
    requested: Signature
    decisions: list[Decision] = []
    state: State = "requested"
    #: whether an operator's countersignature is needed (the dataset's classification)
    countersign: bool = False


def request_id(request: Request) -> str:
    """The agreement's id: derived from the signed request, so nobody picks another's."""
    return "agr-" + hashlib.sha256(canonical.encode(request)).hexdigest()[:16]


def request_bytes(request: Request) -> bytes:
    return REQUEST_CONTEXT + canonical.encode(request)


def decision_bytes(agreement_id: str, request: Request, action: str, reason: str, by: str,
                   role: str, at: str) -> bytes:
    """What a decision signs: the agreement (its id and the request's digest), the action and
    the reason, who and when; a signature never serves another agreement or action."""
    body = {"agreement": agreement_id,
            "request": hashlib.sha256(canonical.encode(request)).hexdigest(),
            "action": action, "reason": reason, "by": by, "role": role, "at": at}
    return DECISION_CONTEXT + canonical.encode(body)


def sign_request(key: Ed25519PrivateKey, request: Request, *, at: str) -> Signature:
    return Signature(by=request.subscriber, role="node", kid=key_id(key.public_key()), at=at,
                     signature=key.sign(request_bytes(request)))


def decide(key: Ed25519PrivateKey, record: AgreementRecord, action: Action, *, by: str,
           role: Role, at: str, reason: str = "") -> Decision:
    """A decision on ``record``, signed with ``key`` (the owner's or an operator's)."""
    return Decision(action=action, reason=reason, signed=Signature(
        by=by, role=role, kid=key_id(key.public_key()), at=at,
        signature=key.sign(decision_bytes(record.id, record.request, action, reason, by, role,
                                          at))))


#: (role, id, kid) -> that party's public key, if certified; None otherwise
Keys = Callable[[str, str, str], Ed25519PublicKey | None]


def _check(keys: Keys, signed: Signature, message: bytes, what: str) -> None:
    public = keys(signed.role, signed.by, signed.kid)
    if public is None:
        raise AuthError(f"{what}: no certified key {signed.kid} of {signed.role} {signed.by}",
                        code=Code.UNKNOWN_SIGNER)
    try:
        public.verify(signed.signature, message)
    except InvalidSignature:
        raise IntegrityError(f"{what}: the signature of {signed.role} {signed.by} does not "
                             "verify", code=Code.SIGNATURE_INVALID) from None


def verify(record: AgreementRecord, keys: Keys, *, owner: str | None = None) -> None:
    """Every signature in ``record`` verifies, each decision was its signer's to make (the
    owner is the one the subscriber's signed request names, unless ``owner`` is given), and
    the state is the one the decisions lead to. Raises the first fault."""
    owner = owner if owner is not None else record.request.owner
    if record.id != request_id(record.request):
        raise InputError(f"{record.id} is not the id of its request", code=Code.BAD_AGREEMENT)
    if record.requested.by != record.request.subscriber or record.requested.role != "node":
        raise InputError("the request is not signed by its subscriber", code=Code.BAD_AGREEMENT)
    _check(keys, record.requested, request_bytes(record.request), f"request of {record.id}")
    replay = AgreementRecord(id=record.id, request=record.request, requested=record.requested,
                             countersign=record.countersign)
    for decision in record.decisions:
        s = decision.signed
        _check(keys, s, decision_bytes(record.id, record.request, decision.action,
                                       decision.reason, s.by, s.role, s.at),
               f"{decision.action} of {record.id}")
        replay = apply(replay, decision, owner=owner)
    if replay.state != record.state:
        raise InputError(f"{record.id} says {record.state!r}, its decisions lead to "
                         f"{replay.state!r}", code=Code.BAD_AGREEMENT)


def apply(record: AgreementRecord, decision: Decision, *, owner: str) -> AgreementRecord:
    """The record after ``decision``, or the refusal: only the owner approves or rejects, only
    an operator countersigns, the owner or an operator revokes; each from the states it may."""
    s, state = decision.signed, record.state
    is_owner = s.role == "node" and s.by == owner
    if decision.action in ("approve", "reject"):
        if not is_owner:
            raise Forbidden(f"only the owner of {record.request.dataset} ({owner}) may "
                            f"{decision.action} {record.id}, not {s.role} {s.by}",
                            code=Code.NOT_OWNER)
        allowed: tuple[str, ...] = ("requested",) if decision.action == "approve" else (
            "requested", "approved")
        after: State = ("rejected" if decision.action == "reject"
                        else "approved" if record.countersign else "active")
    elif decision.action == "countersign":
        if s.role != "operator":
            raise Forbidden(f"only an operator countersigns {record.id}",
                            code=Code.OPERATOR_ONLY)
        allowed, after = ("approved",), "active"
    else:  # revoke
        if not is_owner and s.role != "operator":
            raise Forbidden(f"only the owner ({owner}) or an operator may revoke {record.id}",
                            code=Code.NOT_OWNER)
        allowed, after = ("requested", "approved", "active"), "revoked"
    if state not in allowed:
        raise ConflictError(f"{record.id} is {state}: it cannot be {_past(decision.action)}",
                            code=Code.AGREEMENT_STATE)
    return msgspec.structs.replace(record, decisions=[*record.decisions, decision],
                                   state=after)


def _past(action: str) -> str:
    return {"approve": "approved", "reject": "rejected", "countersign": "countersigned",
            "revoke": "revoked"}[action]


def state_at(record: AgreementRecord, now: dt.datetime) -> str:
    """The state at ``now``: an active agreement past its expiry is ``expired``."""
    if record.state == "active" and now >= expires_at(record):
        return "expired"
    return record.state


def expires_at(record: AgreementRecord) -> dt.datetime:
    return parse_time(record.request.expires)


def parse_time(text: str) -> dt.datetime:
    try:
        t = dt.datetime.fromisoformat(text)
    except ValueError:
        raise InputError(f"{text!r} is not an RFC 3339 time", code=Code.BAD_AGREEMENT) from None
    if t.tzinfo is None:
        raise InputError(f"{text!r} has no UTC offset", code=Code.BAD_AGREEMENT)
    return t
