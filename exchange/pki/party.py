"""A party's own directory: its keys, made where they are used, and the certificates it got.

A node (``exchange node init DIR NODE_ID``) or an operator (``exchange operator init DIR NAME``)
creates its TLS key (ECDSA P-256) and its Ed25519 signing key on its own machine, 0600 from the
first byte, and a PKCS#10 request for each. The CA answers with certificates (offline:
``exchange pki sign``; online: ``exchange node enroll`` with an invitation token); ``install``
checks and files them. No private key ever leaves this directory.

Layout (certs/README.md)::

    DIR/            0700
      party.json    {"role": "node" | "operator", "id": ...}
      tls.key       0600   tls.csr    tls.crt
      signing.key   0600   signing.csr  signing.crt
      ca.crt        the exchange CA, pinned at enrolment
      signing.next.key / .csr / .crt    a rotation under way
      retired/<kid>.crt                 signing certificates of rotated-out keys
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from exchange.core.errors import AuthError, Code, PkiError
from exchange.core.signing import key_id
from exchange.pki.files import (
    _CA_CERT,
    _NEXT_CERT,
    _NEXT_CSR,
    _NEXT_KEY,
    _PARTY,
    _RETIRED,
    _SIGNING_CERT,
    _SIGNING_CSR,
    _SIGNING_KEY,
    _TLS_CERT,
    _TLS_CSR,
    _TLS_KEY,
    _mkdir,
    _parse_cert,
    _pem_key,
    _read_bytes,
    _read_cert,
    _read_text,
    _write,
)
from exchange.pki.identity import Identity, load_signing_key, save_signing_key
from exchange.pki.names import (
    DOCUMENT_SIGNING,
    Principal,
    principal_from_cert,
    principal_uri,
    validate_node_id,
)

__all__ = ["Party", "create", "install", "load", "load_identity", "prepare_rotation",
           "requests"]

Role = Literal["node", "operator"]


@dataclass(frozen=True, slots=True)
class Party:
    role: Role
    id: str
    dir: Path

    @property
    def principal(self) -> Principal:
        return Principal(self.role, self.id)


def create(directory: str | os.PathLike[str], party_id: str, *, role: Role = "node") -> Party:
    """Make the party's keys and certificate requests in ``directory`` (created 0700).

    Refuses a directory that already holds keys: a second ``init`` must never replace a key
    that certificates were issued for."""
    validate_node_id(party_id)
    root = Path(directory)
    _mkdir(root)
    if (root / _TLS_KEY).exists() or (root / _SIGNING_KEY).exists():
        raise PkiError(f"{root} already holds keys", code=Code.ALREADY_INITIALISED)
    principal = Principal(role, party_id)
    tls_key = ec.generate_private_key(ec.SECP256R1())
    signing_key = ed25519.Ed25519PrivateKey.generate()
    _write(root / _TLS_KEY, _pem_key(tls_key), secret=True)
    save_signing_key(root / _SIGNING_KEY, signing_key)
    _write(root / _TLS_CSR, _request(tls_key, principal, tls=True))
    _write(root / _SIGNING_CSR, _request(signing_key, principal, tls=False))
    _write(root / _PARTY, (json.dumps({"role": role, "id": party_id}) + "\n").encode())
    return Party(role, party_id, root)


def load(directory: str | os.PathLike[str]) -> Party:
    root = Path(directory)
    try:
        raw = json.loads(_read_text(root / _PARTY))
        role, party_id = raw["role"], raw["id"]
    except (json.JSONDecodeError, KeyError, TypeError) as err:
        raise PkiError(f"{root / _PARTY} is not a party file", code=Code.PKI_CORRUPT) from err
    if role not in ("node", "operator"):
        raise PkiError(f"{root / _PARTY}: unknown role {role!r}", code=Code.PKI_CORRUPT)
    return Party(role, validate_node_id(party_id), root)


def requests(directory: str | os.PathLike[str]) -> list[bytes]:
    """The certificate requests still waiting for a certificate, PEM."""
    root = Path(directory)
    pending = []
    for csr, crt in ((_TLS_CSR, _TLS_CERT), (_SIGNING_CSR, _SIGNING_CERT), (_NEXT_CSR, _NEXT_CERT)):
        if (root / csr).is_file() and not (root / crt).is_file():
            pending.append(_read_bytes(root / csr))
    return pending


def prepare_rotation(directory: str | os.PathLike[str]) -> bytes:
    """A new signing key (``signing.next.key``) and its request; ``install`` promotes it once
    its certificate arrives. A rotation already under way is started again with a fresh key."""
    party = load(directory)
    if not (party.dir / _SIGNING_CERT).is_file():
        raise PkiError(f"{party.dir} is not enrolled yet: nothing to rotate",
                       code=Code.NOT_ENROLLED)
    key = ed25519.Ed25519PrivateKey.generate()
    save_signing_key(party.dir / _NEXT_KEY, key)
    (party.dir / _NEXT_CERT).unlink(missing_ok=True)  # from a rotation started before
    csr = _request(key, party.principal, tls=False)
    _write(party.dir / _NEXT_CSR, csr)
    return csr


@dataclass(frozen=True, slots=True)
class Installed:
    tls: bool = False
    signing: bool = False
    rotated_from: str | None = None  # the retired key's id, after a rotation


def install(directory: str | os.PathLike[str], certificates: list[bytes],
            ca: bytes | None = None) -> Installed:
    """Check certificates from the CA and file each beside the key it certifies.

    Each must be issued by the exchange CA (``ca``, pinned into ``ca.crt`` on first install,
    else the ``ca.crt`` already here), name this party, and certify one of its keys. A
    certificate for ``signing.next.key`` completes a rotation: the old signing certificate
    moves to ``retired/``, the old private key is destroyed and the new one takes its place.
    """
    party = load(directory)
    root = party.dir
    if ca is not None:
        ca_cert = _parse_cert(ca)
        if (root / _CA_CERT).is_file() and _read_cert(root / _CA_CERT) != ca_cert:
            raise AuthError(f"{root / _CA_CERT} pins another CA than the one offered",
                            code=Code.BAD_CERTIFICATE)
    else:
        ca_cert = _read_cert(root / _CA_CERT)
    keys = {
        _TLS_CERT: _public(root / _TLS_KEY, tls=True),
        _SIGNING_CERT: _public(root / _SIGNING_KEY, tls=False),
    }
    if (root / _NEXT_KEY).is_file():
        keys[_NEXT_CERT] = _public(root / _NEXT_KEY, tls=False)
    placed: dict[str, x509.Certificate] = {}
    for pem in certificates:
        cert = _parse_cert(pem)
        _check_issued(cert, ca_cert, party)
        spki = cert.public_key().public_bytes(serialization.Encoding.DER,
                                              serialization.PublicFormat.SubjectPublicKeyInfo)
        name = next((n for n, k in keys.items() if k == spki), None)
        if name is None:
            raise PkiError(f"a certificate for {party.id} certifies none of the keys in {root}",
                           code=Code.KEY_MISMATCH_CERT)
        placed[name] = cert
    if ca is not None:
        _write(root / _CA_CERT, ca_cert.public_bytes(serialization.Encoding.PEM))
    for name, cert in placed.items():
        _write(root / name, cert.public_bytes(serialization.Encoding.PEM))
    rotated_from = None
    if _NEXT_CERT in placed:
        rotated_from = _promote(root)
    return Installed(tls=_TLS_CERT in placed,
                     signing=_SIGNING_CERT in placed or _NEXT_CERT in placed,
                     rotated_from=rotated_from)


def load_identity(directory: str | os.PathLike[str]) -> Identity:
    """What the party connects and signs with; every certificate must match its key."""
    party = load(directory)
    root = party.dir
    for name in (_TLS_CERT, _SIGNING_CERT, _CA_CERT):
        if not (root / name).is_file():
            raise PkiError(f"{root} is not enrolled yet ({name} is missing): run `exchange "
                           "node enroll` or have the CA sign the requests", code=Code.NOT_ENROLLED)
    signing_key = load_signing_key(root / _SIGNING_KEY)
    for cert_name, public in ((_TLS_CERT, _public(root / _TLS_KEY, tls=True)),
                              (_SIGNING_CERT, _spki(signing_key.public_key()))):
        cert = _read_cert(root / cert_name)
        if _spki(cert.public_key()) != public:
            raise PkiError(f"{root / cert_name} does not certify the key beside it",
                           code=Code.KEY_MISMATCH_CERT)
    return Identity(node_id=party.id, ca_cert=root / _CA_CERT, tls_cert=root / _TLS_CERT,
                    tls_key=root / _TLS_KEY, signing_cert=root / _SIGNING_CERT,
                    signing_key=signing_key, role=party.role)


# -- internals ---------------------------------------------------------------------------------


def _request(key: ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey, principal: Principal,
             *, tls: bool) -> bytes:
    """PKCS#10: the party's id in a SAN URI, the usage asked for in an EKU request. The CA
    decides the profile; the request only proves the key is held (its self-signature)."""
    builder = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, principal.id)]))
        .add_extension(x509.SubjectAlternativeName(
            [x509.UniformResourceIdentifier(principal_uri(principal))]), critical=False)
        .add_extension(x509.ExtendedKeyUsage(
            [ExtendedKeyUsageOID.CLIENT_AUTH if tls else DOCUMENT_SIGNING]), critical=False)
    )
    algorithm = hashes.SHA256() if tls else None  # Ed25519 signs without a separate hash
    return builder.sign(key, algorithm).public_bytes(serialization.Encoding.PEM)


def _spki(public: object) -> bytes:
    assert isinstance(public, ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey)
    return public.public_bytes(serialization.Encoding.DER,
                               serialization.PublicFormat.SubjectPublicKeyInfo)


def _public(path: Path, *, tls: bool) -> bytes:
    if tls:
        try:
            key = serialization.load_pem_private_key(_read_bytes(path), password=None)
        except (ValueError, TypeError) as err:
            raise PkiError(f"{path} is not a PEM private key", code=Code.PKI_CORRUPT) from err
        return _spki(key.public_key())
    return _spki(load_signing_key(path).public_key())


def _check_issued(cert: x509.Certificate, ca: x509.Certificate, party: Party) -> None:
    try:
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature) as err:
        raise AuthError("certificate not issued by the exchange CA",
                        code=Code.BAD_CERTIFICATE) from err
    named = principal_from_cert(cert)
    if named != party.principal:
        raise AuthError(f"certificate names {named.role} {named.id}, not {party.role} "
                        f"{party.id}", code=Code.BAD_CERTIFICATE)


def _promote(root: Path) -> str:
    """Finish a rotation: retire the old signing certificate, destroy the old key."""
    old_cert = _read_cert(root / _SIGNING_CERT)
    old_public = old_cert.public_key()
    assert isinstance(old_public, ed25519.Ed25519PublicKey)
    kid = key_id(old_public)
    _mkdir(root / _RETIRED)
    _write(root / _RETIRED / f"{kid}.crt", old_cert.public_bytes(serialization.Encoding.PEM))
    # the new key and certificate replace the old ones by rename: a reader sees one or the other
    os.replace(root / _NEXT_KEY, root / _SIGNING_KEY)
    os.replace(root / _NEXT_CERT, root / _SIGNING_CERT)
    os.replace(root / _NEXT_CSR, root / _SIGNING_CSR)
    return kid
