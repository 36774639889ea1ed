"""The broker's book of agreements: every agreement's latest version, its transitions published
as records of the ``agreement`` system dataset (so each is a transparency-log entry), and the
live ones handed to the access policy.

A transition is checked against the pure lifecycle (``exchange.core.agreements``) and every
signature on it, then sealed as a one-record batch under the broker's key and appended through
the same publisher as any record: the store decides its version, so two brokers racing on one
agreement (NATS) cannot both win. The book follows the store: it reads the agreement records
it has not seen before every decision and whenever the dataset grows.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import msgspec
import structlog

from exchange.broker.publish import Publisher
from exchange.clock import Clock
from exchange.core import agreements, datasets
from exchange.core.access import Agreement
from exchange.core.agreements import AgreementRecord, Decision, Request, Signature
from exchange.core.envelope import rfc3339
from exchange.core.errors import (
    AuthError,
    Code,
    ConflictError,
    Forbidden,
    InputError,
    NotFound,
)
from exchange.core.ledger import StoredBody
from exchange.core.seal import LOCAL_BASE, seal
from exchange.store.base import Store

__all__ = ["AgreementBook", "NewRequest", "decode"]

logger = structlog.get_logger("exchange.agreements")
DATASET = "agreement"
_body = msgspec.msgpack.Decoder(StoredBody)
_msgpack = msgspec.msgpack.Encoder()


class NewRequest(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """``POST /v1/agreements``: the request and the subscriber's signature on it."""

    request: Request
    signature: Signature


@dataclass
class Entry:
    record: AgreementRecord
    version: int
    seq: int


@dataclass(kw_only=True)
class AgreementBook:
    store: Store
    publisher: Publisher
    broker_id: str
    signing_key: Any
    clock: Clock
    #: the dataset's owner as the config says (None: not served here)
    owner: Callable[[str], str | None]
    #: (role, id, kid) -> the party's certified key
    keys: agreements.Keys
    #: (role, id) -> the key id its new signatures must use (None: no live signing key)
    current: Callable[[str, str], str | None]
    #: told after every change (live subscriptions re-check their grant)
    changed: Callable[[], None]
    entries: dict[str, Entry] = field(default_factory=dict)
    position: int = -1
    _lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    async def refresh(self) -> bool:
        """Read the agreement records not seen yet; whether any changed the book (re-reading
        a transition this broker appended itself changes nothing)."""
        grew = False
        while rows := await self.store.read(DATASET, self.position, 500):
            for row in rows:
                body = _body.decode(row.body)
                record = msgspec.convert(body.event.data, AgreementRecord)
                known = self.entries.get(record.id)
                if known is None or row.version > known.version:
                    self.entries[record.id] = Entry(record, row.version, row.seq)
                    grew = True
                self.position = row.seq
        if grew:
            self.changed()
        return grew

    async def fresh(self, agreement_id: str) -> Entry:
        """``get``, after reading on to everything stored now when the book does not hold it:
        an agreement made through another broker a moment ago is found (NATS)."""
        if agreement_id not in self.entries:
            await self.store.sync()
            await self.refresh()
        return self.get(agreement_id)

    def get(self, agreement_id: str) -> Entry:
        entry = self.entries.get(agreement_id)
        if entry is None:
            raise NotFound(f"no agreement {agreement_id!r}", code=Code.UNKNOWN_AGREEMENT)
        return entry

    def active(self) -> Iterable[Agreement]:
        """The approved (and, where needed, countersigned) agreements, as access grants; the
        policy leaves out the expired ones at each decision."""
        for entry in self.entries.values():
            r = entry.record
            if r.state == "active":
                yield Agreement(subscriber=r.request.subscriber, dataset=r.request.dataset,
                                purpose=r.request.purpose, groups=list(r.request.groups),
                                version=r.request.version,
                                min_completeness=r.request.min_completeness,
                                expires=agreements.expires_at(r), id=r.id,
                                legal_basis=r.request.legal_basis)

    async def request(self, node: str, body: NewRequest) -> Entry:
        """A subscriber's signed request; stored as version 1 (state ``requested``)."""
        req, signed = body.request, body.signature
        if req.subscriber != node or signed.by != node or signed.role != "node":
            raise Forbidden(f"{node} may request agreements for itself only",
                            code=Code.FORBIDDEN)
        owner = self.owner(req.dataset)
        if owner is None:
            raise NotFound(f"dataset {req.dataset!r} is not served here",
                           code=Code.UNKNOWN_DATASET)
        if req.owner != owner:
            raise InputError(f"the request asks {req.owner} for {req.dataset}, whose owner is "
                             f"{owner}", code=Code.BAD_AGREEMENT)
        if len(set(req.groups)) != len(req.groups):
            raise InputError("a group is asked for twice", code=Code.BAD_AGREEMENT)
        if owner == node:
            raise InputError(f"{node} owns {req.dataset}: an owner needs no agreement",
                             code=Code.BAD_AGREEMENT)
        spec = datasets.get(req.dataset, req.version)  # NotFound: no such version
        known = tuple(spec.groups)
        unknown = [g for g in req.groups if g not in known]
        if unknown:
            raise InputError(f"{req.dataset} v{req.version} has no disclosure groups "
                             f"{unknown}; known: {list(known)}", code=Code.UNKNOWN_GROUP)
        now = self.clock.utcnow()
        if agreements.parse_time(req.expires) <= now:
            raise InputError("the agreement would expire before it starts",
                             code=Code.BAD_AGREEMENT)
        record = AgreementRecord(
            id=agreements.request_id(req), request=req, requested=signed,
            countersign=spec.catalogue is not None
            and spec.catalogue.classification in ("core", "important"))
        self._current(signed)
        agreements.verify(record, self.keys, owner=owner)
        async with self._lock:
            await self.refresh()
            if record.id in self.entries:
                raise ConflictError(f"{record.id} was requested already",
                                    code=Code.AGREEMENT_STATE)
            return await self._append(record, 1)

    async def decide(self, principal_role: str, principal: str, agreement_id: str,
                     decision: Decision) -> Entry:
        """The owner's or an operator's signed decision; stored as the next version."""
        s = decision.signed
        if s.by != principal or s.role != principal_role:
            raise Forbidden(f"{principal_role} {principal} may send only its own decisions, "
                            f"not {s.role} {s.by}'s", code=Code.FORBIDDEN)
        async with self._lock:
            # every transition stored so far, another broker's a moment ago included: the
            # decision applies to the latest version (a stale one only costs a conflict)
            await self.store.sync()
            await self.refresh()
            entry = self.get(agreement_id)
            # the owner the subscriber asked, in its signed request: a later change of owner
            # in the config leaves the agreement decidable (and revocable) as it was made
            owner = entry.record.request.owner
            record = agreements.apply(entry.record, decision, owner=owner)
            if decision.action in ("approve", "countersign") and agreements.state_at(
                    record, self.clock.utcnow()) == "expired":
                raise ConflictError(f"{agreement_id} has expired", code=Code.AGREEMENT_STATE)
            self._current(s)
            agreements.verify(record, self.keys, owner=owner)
            return await self._append(record, entry.version + 1)

    def _current(self, signed: Signature) -> None:
        """A new signature is made with the signer's current key: not a rotated-out or
        revoked one."""
        kid = self.current(signed.role, signed.by)
        if kid != signed.kid:
            raise AuthError(f"{signed.role} {signed.by} signed with key {signed.kid}, not its "
                            f"current key ({kid or 'none: revoked or not enrolled'})",
                            code=Code.KEY_RETIRED)

    async def _append(self, record: AgreementRecord, version: int) -> Entry:
        """Seal the new version under the broker's key and append it like any record."""
        spec = datasets.get(DATASET)
        data = msgspec.to_builtins(record)
        batch = seal(self.signing_key, self.broker_id, spec, [(record.id, version, data)],
                     os.urandom(32), time=rfc3339(self.clock.time()),
                     schema_base=self.publisher.schema_base() or LOCAL_BASE)
        outcome = await self.publisher.publish(self.broker_id, DATASET, _msgpack.encode(batch),
                                               "application/msgpack")
        if outcome.problem is not None:
            codes = [r.code for r in outcome.receipt.receipt.rejected]
            if any(c in (Code.VERSION_CONFLICT, Code.STALE_VERSION) for c in codes):
                raise ConflictError(f"{record.id} changed meanwhile; ask again",
                                    code=Code.AGREEMENT_STATE)
            # the gate refused what the request holds (too large, not printable): the
            # requester's to fix, not the broker's fault
            raise InputError(f"the agreement cannot be recorded: "
                             f"{outcome.problem.get('detail', '')}", code=Code.BAD_AGREEMENT)
        entry = Entry(record, version, outcome.last_seq)
        self.entries[record.id] = entry
        # the read position is not moved here: seqs are global, and another broker's
        # transition below this one may not have been read yet (refresh reads it, and this
        # one again, harmlessly)
        logger.info("agreement", id=record.id, state=record.state, version=version,
                    seq=outcome.last_seq)
        self.changed()
        return entry

    def view(self, entry: Entry, now: dt.datetime | None = None) -> dict[str, Any]:
        out: dict[str, Any] = msgspec.to_builtins(entry.record)
        out["version"], out["seq"] = entry.version, entry.seq
        out["state"] = agreements.state_at(entry.record, now or self.clock.utcnow())
        out["owner"] = self.owner(entry.record.request.dataset)
        return out

    def visible(self, role: str, who: str) -> list[Entry]:
        """An operator sees every agreement; a node those it asked for or whose dataset it
        owns."""
        return [e for e in self.entries.values()
                if role == "operator" or e.record.request.subscriber == who
                or self.owner(e.record.request.dataset) == who]


def decode(kind: type[Any], body: bytes) -> Any:
    try:
        return msgspec.json.decode(body, type=kind)
    except msgspec.ValidationError as err:
        raise InputError(f"agreement: {err}", code=Code.BAD_AGREEMENT) from None
    except (msgspec.DecodeError, UnicodeDecodeError) as err:
        raise InputError(f"not JSON: {err}", code=Code.MALFORMED) from None

