"""The transparency log's pure parts: log entries, C2SP checkpoints and signed notes.

- Leaf ``i`` of the log is the record with ``seq = i``; its leaf hash is RFC 6962's
  ``SHA-256(0x00 ‖ entry)`` where ``entry`` binds seq, dataset, publisher node id, record digest,
  batch root and acceptance time (see ``entry_bytes``). The record digest covers the salted
  group commitments, never plaintext, so the log stays verifiable after a group is erased.
- The empty log's root is ``SHA-256()`` (RFC 6962 §2.1), as in ``exchange.merkle.EMPTY_ROOT``.
- A checkpoint is the C2SP tlog-checkpoint body (origin line, decimal size, base64 root), carried
  as a C2SP signed note signed with the broker's Ed25519 key. Key ids follow signed-note:
  ``SHA-256(name ‖ 0x0A ‖ 0x01 ‖ public key)[:4]``; verifier keys are ``name+hexid+base64(0x01 ‖
  key)``. No maintained Python package implements signed notes, hence this small module, checked
  against the Go reference implementation's published vectors in the tests.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import struct
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from exchange.core import merkle
from exchange.core.errors import Code, InputError, IntegrityError

__all__ = [
    "Checkpoint",
    "NoteKey",
    "entry_bytes",
    "entry_leaf",
    "open_checkpoint",
    "sign_checkpoint",
]

_ED25519 = 0x01
_EM_DASH = "\u2014"


def entry_bytes(seq: int, dataset: str, publisher: str, digest: bytes, batch_root: bytes,
                accepted_us: int) -> bytes:
    """The log entry of one accepted record, in a fixed binary layout (TLS-style, RFC 8446 §3):

    ``uint64 seq ‖ uint8 len ‖ dataset ‖ uint8 len ‖ publisher ‖ digest[32] ‖ batch_root[32] ‖
    uint64 accepted_at (µs since the Unix epoch, UTC)``.
    """
    if len(digest) != 32 or len(batch_root) != 32:
        raise InputError("log entry field out of range", code=Code.BAD_ENTRY)
    return (_U64(seq) + _names(dataset, publisher) + digest + batch_root + _U64(accepted_us))


_U64 = struct.Struct(">Q").pack


def _names(dataset: str, publisher: str) -> bytes:
    """``uint8 len ‖ dataset ‖ uint8 len ‖ publisher`` of an entry."""
    d, p = dataset.encode(), publisher.encode()
    if len(d) > 255 or len(p) > 255:
        raise InputError("log entry field out of range", code=Code.BAD_ENTRY)
    return bytes((len(d),)) + d + bytes((len(p),)) + p


def entry_leaf(seq: int, dataset: str, publisher: str, digest: bytes, batch_root: bytes,
               accepted_us: int) -> bytes:
    return merkle.leaf_hash(entry_bytes(seq, dataset, publisher, digest, batch_root, accepted_us))


def entry_leaves(first_seq: int, entries: Iterable[tuple[str, str, bytes, bytes]],
                 accepted_us: int) -> Iterator[bytes]:
    """``entry_leaf`` of consecutive seqs from ``first_seq``, one per ``(dataset, publisher,
    digest, batch_root)``, all accepted at ``accepted_us``: the same bytes, with what a group's
    entries share (the names' length-prefixed bytes, the time) encoded once."""
    tail = _U64(accepted_us)
    names: dict[tuple[str, str], bytes] = {}
    sha = hashlib.sha256
    seq = first_seq
    for dataset, publisher, digest, batch_root in entries:
        mid = names.get((dataset, publisher))
        if mid is None:
            mid = names[(dataset, publisher)] = _names(dataset, publisher)
        if len(digest) != 32 or len(batch_root) != 32:
            raise InputError("log entry field out of range", code=Code.BAD_ENTRY)
        # leaf_hash of entry_bytes, in one concatenation
        yield sha(b"\x00" + _U64(seq) + mid + digest + batch_root + tail).digest()
        seq += 1


def micros(t: float) -> int:
    """Acceptance time as whole microseconds: the exact value the entry binds."""
    return round(t * 1_000_000)


@dataclass(frozen=True)
class NoteKey:
    """An Ed25519 signed-note key: a name and a public key (and the private key to sign)."""

    name: str
    public: Ed25519PublicKey
    private: Ed25519PrivateKey | None = None

    @classmethod
    def from_private(cls, name: str, key: Ed25519PrivateKey) -> NoteKey:
        return cls(name, key.public_key(), key)

    @property
    def raw_public(self) -> bytes:
        return self.public.public_bytes(Encoding.Raw, PublicFormat.Raw)

    @property
    def key_id(self) -> bytes:
        if not self.name or any(c.isspace() for c in self.name) or "+" in self.name:
            raise InputError(f"note key name {self.name!r} is not valid", code=Code.BAD_KEY_NAME)
        return hashlib.sha256(self.name.encode() + b"\n" + bytes([_ED25519]) +
                              self.raw_public).digest()[:4]

    @property
    def vkey(self) -> str:
        """The verifier key string: ``name+hexid+base64(0x01 ‖ key)``."""
        return (f"{self.name}+{self.key_id.hex()}+"
                f"{base64.b64encode(bytes([_ED25519]) + self.raw_public).decode()}")

    @classmethod
    def from_vkey(cls, vkey: str) -> NoteKey:
        try:
            name, hexid, b64 = vkey.split("+", 2)
            raw = base64.b64decode(b64, validate=True)
        except (ValueError, binascii.Error):
            raise InputError(f"verifier key {vkey!r} is malformed", code=Code.BAD_VKEY) from None
        if len(raw) != 33 or raw[0] != _ED25519:
            raise InputError("verifier key is not an Ed25519 key", code=Code.BAD_VKEY)
        key = cls(name, Ed25519PublicKey.from_public_bytes(raw[1:]))
        if key.key_id.hex() != hexid:
            raise InputError("verifier key id does not match its name and key", code=Code.BAD_VKEY)
        return key

    def sign_note(self, text: str) -> str:
        """A signed note: the text (ending in a newline), a blank line, one signature line."""
        if self.private is None:
            raise InputError("no private key to sign with", code=Code.NO_PRIVATE_KEY)
        if not text.endswith("\n") or "\n\n" in text:
            raise InputError("note text must end with one newline and have no blank line",
                             code=Code.BAD_NOTE)
        sig = self.private.sign(text.encode())
        return f"{text}\n{_EM_DASH} {self.name} {base64.b64encode(self.key_id + sig).decode()}\n"

    def open_note(self, note: str) -> str:
        """Verify a note signed by this key; return its text."""
        text, sep, sigs = note.rpartition("\n\n")
        if not sep:
            raise IntegrityError("not a signed note (no blank line)", code=Code.CHECKPOINT_INVALID)
        text += "\n"
        for line in sigs.splitlines():
            prefix = f"{_EM_DASH} {self.name} "
            if not line.startswith(prefix):
                continue
            try:
                blob = base64.b64decode(line[len(prefix):], validate=True)
            except (ValueError, binascii.Error):  # not base64, or not even ASCII
                continue
            if len(blob) != 68 or blob[:4] != self.key_id:
                continue
            try:
                self.public.verify(blob[4:], text.encode())
            except InvalidSignature:
                raise IntegrityError(f"signature of {self.name} on the note does not verify",
                                     code=Code.CHECKPOINT_FORGED) from None
            return text
        raise IntegrityError(f"the note carries no signature by {self.name}",
                             code=Code.CHECKPOINT_FORGED)


@dataclass(frozen=True)
class Checkpoint:
    """C2SP tlog-checkpoint: origin, tree size, root hash (and optional extension lines)."""

    origin: str
    size: int
    root: bytes
    note: str = ""

    def body(self) -> str:
        return f"{self.origin}\n{self.size}\n{base64.b64encode(self.root).decode()}\n"

    @classmethod
    def parse(cls, text: str, note: str = "") -> Checkpoint:
        lines = text.split("\n")
        try:
            origin, size_s, root_b64 = lines[0], lines[1], lines[2]
            if not origin or not size_s.isdigit() or (size_s != "0" and size_s[0] == "0"):
                raise ValueError(size_s)
            root = base64.b64decode(root_b64, validate=True)
        except (IndexError, ValueError, binascii.Error):
            raise IntegrityError("checkpoint body is malformed", code=Code.CHECKPOINT_INVALID
                                 ) from None
        if len(root) != 32:
            raise IntegrityError("checkpoint root is not 32 bytes", code=Code.CHECKPOINT_INVALID)
        return cls(origin, int(size_s), root, note)


def sign_checkpoint(key: NoteKey, origin: str, size: int, root: bytes) -> Checkpoint:
    cp = Checkpoint(origin, size, root)
    return Checkpoint(origin, size, root, key.sign_note(cp.body()))


def open_checkpoint(key: NoteKey, note: str, origin: str | None = None) -> Checkpoint:
    """Verify a signed checkpoint note (and its origin, when given)."""
    cp = Checkpoint.parse(key.open_note(note), note)
    if origin is not None and cp.origin != origin:
        raise IntegrityError(f"checkpoint is for log {cp.origin!r}, not {origin!r}",
                             code=Code.CHECKPOINT_INVALID)
    return cp


def check_consistent(old: Checkpoint, new: Checkpoint, proof: list[bytes]) -> None:
    """Raise ``split_view`` unless ``new`` extends ``old`` (both already signature-checked)."""
    if new.size < old.size:
        old, new = new, old
    try:
        merkle.verify_consistency(old.size, new.size, old.root, new.root, proof)
    except IntegrityError:
        raise IntegrityError(
            f"checkpoints of sizes {old.size} and {new.size} cannot both be true (split view)",
            code=Code.SPLIT_VIEW) from None
