"""The node SDK: join the exchange, publish signed batches, subscribe with end-to-end verification.

```python
async with Node(NodeConfig(node_id="vn.gov.mps.population", pki_dir="pki",
                           brokers=["https://127.0.0.1:8443"])) as node:
    result = await node.publish("population", [Record(person, version=1)])
    sub = node.subscribe("tax", "addresses", handler, start="earliest")
```

One home per part: ``client`` (config, TLS identity, fail-over, keys trusted through the exchange
CA, refusals rebuilt as the broker's own error classes), ``publisher`` (batching by size and time,
sealing, receipts), ``subscriber`` (the WebSocket pump around the core's ``verify.Inbox``) and
``monitor`` (the transparency log). ``Node`` ties them together.
"""

from __future__ import annotations

import datetime as dt
import os
import urllib.parse
from collections.abc import Iterable, Mapping
from typing import Any

import msgspec
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from exchange.clock import SYSTEM, Clock
from exchange.core import agreements as floor
from exchange.core.envelope import rfc3339
from exchange.core.errors import Code, IntegrityError
from exchange.core.verify import Deliver, Delivery, Evidence, Inbox
from exchange.core.wire import RecordsIn
from exchange.node.client import Client, NodeConfig
from exchange.node.monitor import TlogMonitor
from exchange.node.publisher import Publisher, PublishResult, Record
from exchange.node.subscriber import Handler, Subscription


class _LookupReply(msgspec.Struct, frozen=True):
    seq: int
    version: int
    frame: RecordsIn


_lookup_reply = msgspec.json.Decoder(_LookupReply)

__all__ = ["Delivery", "Handler", "Node", "NodeConfig", "PublishResult", "Record",
           "Subscription", "TlogMonitor"]


class Node:
    """A connected exchange node. Use as ``async with Node(config) as node``."""

    def __init__(self, config: NodeConfig, *, clock: Clock = SYSTEM) -> None:
        self.config = config
        self.client = Client(config, clock)
        self.publisher = Publisher(self.client)
        #: the broker's transparency log as this node knows it
        self.tlog = TlogMonitor(self.client)
        self._subs: list[Subscription] = []

    async def __aenter__(self) -> Node:
        await self.client.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        for sub in list(self._subs):
            await sub.stop()
        await self.tlog.stop()
        await self.publisher.close()
        await self.client.close()

    @property
    def url(self) -> str:
        """The broker this node talks to now."""
        return self.client.url

    async def trust(self, node: str) -> Ed25519PublicKey:
        """The signing key of ``node``, from its certificate checked against the exchange CA."""
        return await self.client.trust(node)

    async def get_json(self, path: str) -> Any:
        """GET a JSON resource from the broker; a refusal raises the broker's own error."""
        return await self.client.get_json(path)

    async def get_bytes(self, path: str) -> bytes:
        return await self.client.get_bytes(path)

    async def publish(self, dataset: str, records: Iterable[Record | Mapping[str, Any]]
                      ) -> PublishResult:
        """Queue records for ``dataset`` and wait for their receipts.

        Batch-level refusals (not owner, bad signature, too large) raise the broker's error
        (``Forbidden``, ``IntegrityError``, ``LimitExceeded``: ``except`` them by class);
        record-level rejections are returned in ``PublishResult.rejected`` (and kept by the
        broker in this node's dead letters).
        """
        return await self.publisher.publish(dataset, records)

    def subscribe(self, dataset: str, name: str, handler: Handler, *, start: str = "earliest",
                  credits: int = 1000) -> Subscription:
        """Start a durable subscription; it runs until ``stop()`` or the node closes."""
        sub = Subscription(self.client, dataset, name, handler, start=start, credits=credits,
                           monitor=self.tlog, on_stop=self._forget)
        self._subs.append(sub)
        sub.start()
        return sub

    def _forget(self, sub: Subscription) -> None:
        if sub in self._subs:
            self._subs.remove(sub)

    # -- lookups and who received a record ----------------------------------------------------

    async def lookup(self, dataset: str, key: str) -> Delivery:
        """The current version of one record under this node's agreement, verified as a
        delivery is (the publisher's signature over what was granted) and checked for
        inclusion in the transparency log against a checkpoint this node trusts. Raises the
        broker's refusal (``no_agreement``, ``unknown_record``) or ``IntegrityError``."""
        body = await self.client.get_bytes(
            f"/v1/datasets/{dataset}/records/{urllib.parse.quote(key, safe='')}")
        reply = _lookup_reply.decode(body)
        inbox = Inbox(self.client.verifier)
        for signer, kid in inbox.signers(reply.frame):
            await self.client.trust(signer, kid)
        items = inbox.receive(reply.frame)
        if len(items) != 1 or not isinstance(items[0], Deliver):
            code = items[0].code if items and isinstance(items[0], Evidence) else "?"
            raise IntegrityError(f"the record {dataset}/{key} did not verify ({code})",
                                 code=Code.SIGNATURE_INVALID)
        item = items[0]
        got = item.delivery
        if (got.dataset, got.key, got.seq) != (dataset, key, reply.seq):
            # a genuine record, but not the one asked for
            raise IntegrityError(f"asked for {dataset}/{key}, the broker served "
                                 f"{got.dataset}/{got.key}", code=Code.SIGNATURE_INVALID)
        await self.tlog.verify_inclusion(item.delivery.seq, item.leaf())
        return item.delivery

    async def access(self, dataset: str, key: str) -> dict[str, Any]:
        """Who received one record, version by version (the dataset's owner or an operator
        asks): which agencies, when, under which agreement and purpose, with which groups."""
        query = urllib.parse.urlencode({"dataset": dataset, "key": key})
        out: dict[str, Any] = await self.get_json(f"/v1/access?{query}")
        return out

    # -- agreements (the exchange floor) ----------------------------------------------------

    async def request_agreement(self, dataset: str, *, purpose: str, legal_basis: str,
                                groups: Iterable[str] = (), days: float = 365.0,
                                min_completeness: float = 0.0, version: int | None = None
                                ) -> dict[str, Any]:
        """Ask ``dataset``'s owner for an agreement, signed with this node's key; the broker
        stores it as ``requested``. ``version`` is the schema version this node reads (default:
        the latest the catalogue lists); records of later versions reach it with the groups
        its version lacks withheld. Returns the stored agreement (its ``id`` among others)."""
        now = self.client.clock.utcnow()
        catalog = await self.get_json(f"/v1/catalog/{dataset}")
        req = floor.Request(
            subscriber=self.config.node_id, dataset=dataset, owner=catalog["publisher"],
            version=version if version is not None else int(catalog.get("version", 1)),
            groups=list(groups),
            purpose=purpose, legal_basis=legal_basis, requested_at=rfc3339(now.timestamp()),
            expires=rfc3339((now + dt.timedelta(days=days)).timestamp()),
            min_completeness=min_completeness, nonce=os.urandom(16).hex())
        signed = floor.sign_request(self.client.identity.signing_key, req,
                                         at=rfc3339(now.timestamp()))
        out: dict[str, Any] = await self.client.post_json(
            "/v1/agreements", {"request": req, "signature": signed})
        return out

    async def agreements(self, *, state: str | None = None, dataset: str | None = None
                         ) -> list[dict[str, Any]]:
        """The agreements this node (or operator) may see, newest first."""
        query = "&".join(f"{k}={v}" for k, v in (("state", state), ("dataset", dataset)) if v)
        out: list[dict[str, Any]] = await self.get_json(
            "/v1/agreements" + (f"?{query}" if query else ""))
        return out

    async def agreement(self, agreement_id: str) -> dict[str, Any]:
        out: dict[str, Any] = await self.get_json(f"/v1/agreements/{agreement_id}")
        return out

    async def decide(self, agreement_id: str, action: floor.Action, *, reason: str = ""
                     ) -> dict[str, Any]:
        """Approve, reject or revoke (the owner), countersign or revoke (an operator): the
        decision is signed here with this party's key over the agreement as the broker holds
        it, and checked there against the lifecycle."""
        view = await self.agreement(agreement_id)
        record = msgspec.convert({k: view[k] for k in ("id", "request", "requested",
                                                      "decisions", "countersign")},
                                 floor.AgreementRecord)
        # sign only what was asked for: the agreement named, its id its request's, the
        # request signed by its subscriber (a broker cannot get a decision for another one)
        if record.id != agreement_id or floor.request_id(record.request) != agreement_id:
            raise IntegrityError(f"the broker served another agreement than {agreement_id}",
                                 code=Code.SIGNATURE_INVALID)
        await self.client.trust(record.request.subscriber, record.requested.kid)
        public = self.client.verifier.key_for(record.request.subscriber, record.requested.kid)
        if public is None:
            raise IntegrityError("the request's signer has no certified key",
                                 code=Code.SIGNATURE_INVALID)
        try:
            public.verify(record.requested.signature, floor.request_bytes(record.request))
        except InvalidSignature:
            raise IntegrityError(f"the request of {agreement_id} is not its subscriber's",
                                 code=Code.SIGNATURE_INVALID) from None
        identity = self.client.identity
        decision = floor.decide(identity.signing_key, record, action,
                                     by=identity.node_id,
                                     role="operator" if identity.role == "operator" else "node",
                                     at=rfc3339(self.client.clock.time()), reason=reason)
        out: dict[str, Any] = await self.client.post_json(
            f"/v1/agreements/{agreement_id}/decisions", decision)
        return out

    async def dead_letters(self, after: int = 0, limit: int = 100, *, node: str | None = None
                           ) -> list[dict[str, Any]]:
        """Refused records, oldest first: this node's own, or (an operator) ``node``'s."""
        query = f"after={after}&limit={limit}" + (f"&node={node}" if node else "")
        out: list[dict[str, Any]] = await self.get_json(f"/v1/dead-letters?{query}")
        return out
