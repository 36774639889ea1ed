"""Batch signatures over RFC 6962 Merkle roots, and their verification (pure).

The publisher builds a Merkle tree over the digests of its batch's records and signs one
*statement* (node id, dataset, root, size, time) with Ed25519. Each record travels with its index
and audit path, so a single record verifies alone: recompute the root from its digest and path,
then check the statement's signature — once per batch, thanks to the verifier's cache. A record
published alone is a batch of one. This is X-Road's batch signature, with RFC 6962 trees.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from typing import Annotated, Any

import msgspec
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from exchange.core import canonical, disclosure, merkle
from exchange.core.envelope import Envelope, EnvelopeIn, NodeId, event_digest
from exchange.core.errors import AuthError, Code, IntegrityError

__all__ = [
    "Batch",
    "BatchIn",
    "BatchProof",
    "PublishedRecord",
    "Statement",
    "Verifier",
    "check_signer",
    "key_id",
    "record_digest",
    "statement_bytes",
]

# Domain separation: a signature over a batch statement can never be replayed as anything else.
STATEMENT_CONTEXT = b"vn-exchange/batch-statement/v1\n"

Bytes32 = Annotated[bytes, msgspec.Meta(min_length=32, max_length=32)]
Signature = Annotated[bytes, msgspec.Meta(min_length=64, max_length=64)]


KeyId = Annotated[str, msgspec.Meta(pattern=r"^[0-9a-f]{16}$")]


def key_id(public: Ed25519PublicKey) -> str:
    """A signing key's id: the first 8 bytes of SHA-256 over its raw 32 bytes, in hex. It picks
    the certificate a statement was signed under when a node has rotated its key."""
    raw = public.public_bytes(Encoding.Raw, PublicFormat.Raw)
    return hashlib.sha256(raw).digest()[:8].hex()


class Statement(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True,
                omit_defaults=True):
    """What a publisher signs for one batch."""

    node: NodeId
    dataset: Annotated[str, msgspec.Meta(pattern=r"^[a-z][a-z0-9_]*$", max_length=64)]
    root: Bytes32
    size: Annotated[int, msgspec.Meta(ge=1)]
    time: Annotated[str, msgspec.Meta(max_length=40)]
    #: the signing key's id (``key_id``); absent in statements made before keys rotated
    kid: KeyId | None = None


class PublishedRecord(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """A full record as published: the envelope and the salt of every disclosure group."""

    event: Envelope
    salts: dict[str, Annotated[bytes, msgspec.Meta(min_length=16, max_length=16)]]


class Batch(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    statement: Statement
    signature: Signature
    records: list[PublishedRecord]


class PublishedRecordIn(PublishedRecord, frozen=True, forbid_unknown_fields=True):
    """A published record as the broker decodes it (``EnvelopeIn``: nothing dropped, nothing
    filled in)."""

    event: EnvelopeIn


class BatchIn(Batch, frozen=True, forbid_unknown_fields=True):
    """A published batch as the broker decodes it."""

    records: list[PublishedRecordIn]  # type: ignore[assignment]


class BatchProof(msgspec.Struct, frozen=True):
    """Everything a subscriber needs to check one record against its publisher's signature."""

    statement: Statement
    signature: Signature
    index: int
    path: list[Bytes32]


def statement_bytes(statement: Statement) -> bytes:
    return STATEMENT_CONTEXT + canonical.encode(statement)


def record_digest(event: Envelope, groups: Mapping[str, tuple[str, ...]],
                  salts: Mapping[str, bytes], withheld: Mapping[str, bytes] | None = None,
                  shape: canonical.Shape | None = None) -> bytes:
    """Digest of a full or projected record: attributes plus every group's commitment.
    ``shape``: the record type's (``canonical.shape``), for the received-record encoder."""
    try:
        commitments = disclosure.opened_commitments(
            event.data, groups, salts, withheld or {}, canonical.received(shape, event.data))
        return event_digest(event, commitments)
    except (ValueError, TypeError) as err:
        # a value with no canonical form (NaN, an infinity, a non-string key) was never
        # signed: the record was altered on its way
        raise IntegrityError(f"record holds a value with no canonical form: {err}",
                             code=Code.SIGNATURE_INVALID) from None


def check_signer(event: Envelope, statement: Statement, dataset: str | None = None) -> None:
    """A record is its signer's and of the signed dataset (``dataset``: its parsed type)."""
    if event.source != statement.node:
        raise IntegrityError(f"record source {event.source!r} is not the signer "
                             f"{statement.node!r}", code=Code.SIGNATURE_INVALID)
    if (dataset or event.dataset) != statement.dataset:
        raise IntegrityError("record type does not match the signed dataset",
                             code=Code.SIGNATURE_INVALID)


class Verifier:
    """Checks publisher signatures; remembers verified statements so each batch costs one verify.

    ``keys`` maps a node id to its current Ed25519 public key (from the exchange PKI); a callable
    lets the caller look keys up lazily (enrolment can change while the verifier lives).

    A statement names its key (``kid``). ``history(node, kid, time)`` gives the key of an older,
    certified ``kid`` valid at ``time`` (the statement's; ``None``: at any time): what a
    subscriber or an auditor needs for records signed before a rotation. With ``current_only``
    (the broker, deciding on a new batch) a statement under such a retired key is refused
    (``key_retired``). A ``kid`` nobody certified is checked against the current key, and fails
    as any forged signature does.
    """

    def __init__(self, keys: Mapping[str, Ed25519PublicKey] | Callable[[str], Ed25519PublicKey
                                                                       | None],
                 cache_size: int = 4096, *,
                 history: Callable[[str, str, str | None], Ed25519PublicKey | None] | None = None,
                 current_only: bool = False) -> None:
        self._lookup: Callable[[str], Ed25519PublicKey | None] = (
            keys.get if isinstance(keys, Mapping) else keys)
        self._history = history
        self.current_only = current_only
        self._cache: OrderedDict[bytes, None] = OrderedDict()
        self._cache_size = cache_size
        self.verifications = 0  # signature checks actually performed (cache misses)

    def knows(self, node: str, kid: str | None = None) -> bool:
        """Whether the signing key of ``node`` (the one named ``kid``, if given) is at hand."""
        if kid is None:
            return self._lookup(node) is not None
        return self.key_for(node, kid) is not None

    def current(self, node: str) -> Ed25519PublicKey | None:
        """The current key of ``node``, if one is enrolled."""
        return self._lookup(node)

    def key_for(self, node: str, kid: str) -> Ed25519PublicKey | None:
        """The certified key ``kid`` of ``node``: its current one, or one from its history."""
        public = self._lookup(node)
        if public is not None and key_id(public) == kid:
            return public
        return self._history(node, kid, None) if self._history is not None else None

    def _key(self, statement: Statement) -> Ed25519PublicKey:
        public = self._lookup(statement.node)
        if public is None:
            raise AuthError(f"no signing key is enrolled for node {statement.node!r}",
                            code=Code.UNKNOWN_SIGNER)
        kid = statement.kid
        if kid is None or key_id(public) == kid:
            return public
        old = (self._history(statement.node, kid, statement.time)
               if self._history is not None else None)
        if old is None:
            return public  # a key nobody certified: the signature will not verify
        if self.current_only:
            # the lookup may have learnt of a rotation from ``history`` (the broker does)
            public = self._lookup(statement.node)
            if public is not None and key_id(public) == kid:
                return public
            raise AuthError(f"batch signed with key {kid}, which {statement.node} has rotated "
                            f"out (its current key is {key_id(public) if public else '?'}): a "
                            "retired key signs "
                            "nothing new", code=Code.KEY_RETIRED)
        return old

    def verify_statement(self, statement: Statement, signature: bytes) -> None:
        body = statement_bytes(statement)
        cache_key = body + signature
        if cache_key in self._cache:
            self._cache.move_to_end(cache_key)
            return
        public = self._key(statement)
        try:
            public.verify(signature, body)
        except InvalidSignature:
            raise IntegrityError(f"batch signature of {statement.node} does not verify",
                                 code=Code.SIGNATURE_INVALID) from None
        self.verifications += 1
        self._remember(cache_key)

    def remember(self, statement: Statement, signature: bytes) -> None:
        """Take a statement as verified (another process of the same broker verified it): a
        retry of its batch is then judged as if this verifier had checked it."""
        self._remember(statement_bytes(statement) + signature)

    def _remember(self, cache_key: bytes) -> None:
        self._cache[cache_key] = None
        self._cache.move_to_end(cache_key)
        if len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)

    def verify_record(self, event: Envelope, groups: Mapping[str, tuple[str, ...]],
                      salts: Mapping[str, bytes], withheld: Mapping[str, bytes],
                      proof: BatchProof, *, dataset: str | None = None,
                      known: dict[bytes, tuple[int, int]] | None = None,
                      shape: canonical.Shape | None = None) -> bytes:
        """Verify one (possibly projected) record on its own against its publisher's signature.

        ``known``: one dict per batch statement shared by the records of that batch a caller
        verifies together (see ``merkle.verify_inclusion_shared``); it is only filled once the
        statement's signature has verified, so a non-empty one means it has. ``dataset``: the
        record's dataset if the caller has parsed its type already.

        Returns the record's digest (what the transparency log's entry binds)."""
        st = proof.statement
        check_signer(event, st, dataset)
        d = record_digest(event, groups, salts, withheld, shape)
        if known is None:
            try:
                merkle.verify_inclusion(merkle.leaf_hash(d), proof.index, st.size, proof.path,
                                        st.root)
            except IntegrityError:
                raise IntegrityError("record is not in the signed batch (digest or path "
                                     "altered)", code=Code.SIGNATURE_INVALID) from None
            self.verify_statement(st, proof.signature)
            return d
        if not known:
            self.verify_statement(st, proof.signature)
        try:
            merkle.verify_inclusion_shared(merkle.leaf_hash(d), proof.index, st.size,
                                           proof.path, st.root, known)
        except IntegrityError:
            raise IntegrityError("record is not in the signed batch (digest or path altered)",
                                 code=Code.SIGNATURE_INVALID) from None
        return d

    def verify_whole(self, statement: Statement, signature: bytes, digests: Sequence[bytes]
                     ) -> None:
        """Verify every record of a batch delivered together, by digest in index order: their
        Merkle root must be the signed one, so no audit path is needed."""
        if len(digests) != statement.size:
            raise IntegrityError(f"statement says {statement.size} records, "
                                 f"{len(digests)} arrived", code=Code.SIGNATURE_INVALID)
        if merkle.root([merkle.leaf_hash(d) for d in digests]) != statement.root:
            raise IntegrityError("the records do not make the signed batch root (a record was "
                                 "altered)", code=Code.SIGNATURE_INVALID)
        self.verify_statement(statement, signature)

    def verify_batch(self, batch: Batch, groups: Mapping[str, tuple[str, ...]],
                     encoders: Sequence[Callable[[Any], bytes]] | None = None
                     ) -> tuple[list[dict[str, bytes]], list[bytes], list[list[bytes]]]:
        """Verify a whole published batch; return each record's commitments, digest, audit path.

        One altered record changes the root, so the whole batch is refused: the publisher's one
        signature vouches for all of its records or for none. ``encoders``: per record, the
        canonical encoder of its groups (``disclosure.commitments``); by default each record's
        data is checked as it is encoded.
        """
        st = batch.statement
        if st.size != len(batch.records):
            raise IntegrityError(f"statement says {st.size} records, batch has "
                                 f"{len(batch.records)}", code=Code.SIGNATURE_INVALID)
        all_commitments: list[dict[str, bytes]] = []
        digests: list[bytes] = []
        for i, r in enumerate(batch.records):
            if r.salts.keys() != groups.keys():
                # exactly one salt per group: a record the broker accepts must verify for
                # every subscriber, whichever groups it is granted
                raise IntegrityError(
                    f"record {i} has salts for {sorted(r.salts)}; the schema's groups are "
                    f"{sorted(groups)}", code=Code.DISCLOSURE_INVALID, index=i)
            commitments = disclosure.commitments(r.event.data, groups, r.salts,
                                                 encoders[i] if encoders else None)
            all_commitments.append(commitments)
            digests.append(event_digest(r.event, commitments))
        root, paths = merkle.inclusion_paths([merkle.leaf_hash(d) for d in digests])
        if root != st.root:
            raise IntegrityError("batch root does not match the records (a record was altered)",
                                 code=Code.SIGNATURE_INVALID)
        self.verify_statement(st, batch.signature)
        return all_commitments, digests, paths
