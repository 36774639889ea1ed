"""What the CA does: create the PKI, enroll and revoke nodes, re-sign the CRL, list the nodes.

Certificate profiles (validity, key usages, extensions) live here; every step that writes runs
under the PKI directory's lock.
"""

from __future__ import annotations

import base64
import datetime as dt
import getpass
import hashlib
import hmac
import ipaddress
import json
import os
import secrets
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID, ObjectIdentifier

from exchange.core.errors import AuthError, Code, ExchangeError, Forbidden, InputError, PkiError
from exchange.pki.files import (
    _BROKER,
    _CA_CERT,
    _CA_KEY,
    _CA_LOG,
    _CRL,
    _HISTORY,
    _NODES,
    _OPERATORS,
    _SIGNING_CERT,
    _SIGNING_CSR,
    _SIGNING_KEY,
    _SIGNING_PUB,
    _TLS_CERT,
    _TLS_CSR,
    _TLS_KEY,
    _TOKENS,
    _crl_number,
    _initialised,
    _load_crl,
    _locked,
    _mkdir,
    _now,
    _pem_key,
    _read_bytes,
    _read_cert,
    _read_registry,
    _read_text,
    _scan_nodes,
    _write,
    _write_registry,
    default_ca_dir,
)
from exchange.pki.identity import (
    Identity,
    encode_public_key,
    load_broker_identity,
    save_signing_key,
)
from exchange.pki.names import (
    BROKER_ID,
    DOCUMENT_SIGNING,
    NODE_URI_PREFIX,
    OPERATOR_URI_PREFIX,
    Principal,
    node_id_from_cert,
    node_uri,
    principal_from_cert,
    principal_uri,
    validate_node_id,
)

CA_VALIDITY_DAYS = 3650
#: One year: short enough that a forgotten node ages out, long enough for yearly re-enrolment.
LEAF_VALIDITY_DAYS = 365
#: OpenSSL refuses every handshake once the CRL's nextUpdate has passed (fail closed), so the CRL
#: is re-signed on every revocation and must be refreshed (``exchange pki crl``) before it lapses.
CRL_VALIDITY_DAYS = 90
#: Backdate notBefore so that a peer whose clock is a little behind still accepts a fresh cert.
CLOCK_SKEW = dt.timedelta(minutes=5)

ORGANIZATION = "Vietnam National Data Exchange"


# -- init / sign / enroll / revoke ----------------------------------------------------------------


def init(
    directory: str | os.PathLike[str],
    *,
    ca_dir: str | os.PathLike[str] | None = None,
    broker_hosts: Iterable[str] = ("localhost", "127.0.0.1"),
    broker_id: str = BROKER_ID,
    validity_days: int = LEAF_VALIDITY_DAYS,
    ca_validity_days: int = CA_VALIDITY_DAYS,
) -> Identity:
    """Create the CA, the broker's TLS and signing material, an empty CRL and ``nodes.json``.

    The CA's key goes to ``ca_dir`` (default: ``default_ca_dir(directory)``, a sibling), never
    into ``directory``, which is what the broker reads. ``broker_hosts`` become DNS or IP SANs
    of the broker's server certificate (``localhost`` and ``127.0.0.1`` are always added).
    Refuses a directory that already holds a CA.
    """
    validate_node_id(broker_id)
    root = Path(directory)
    ca = Path(ca_dir) if ca_dir is not None else default_ca_dir(root)
    _mkdir(root)
    _mkdir(ca)
    with _locked(root):
        if (ca / _CA_KEY).exists() or (root / _CA_CERT).exists() or (root / _CA_KEY).exists():
            raise PkiError(f"{root} already holds an exchange CA", code=Code.ALREADY_INITIALISED)
        now = _now()
        ca_key = ec.generate_private_key(ec.SECP256R1())
        ca_name = x509.Name(
            [
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, ORGANIZATION),
                x509.NameAttribute(NameOID.COMMON_NAME, "Exchange Root CA"),
            ]
        )
        ca_cert = (
            x509.CertificateBuilder()
            .subject_name(ca_name)
            .issuer_name(ca_name)
            .public_key(ca_key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - CLOCK_SKEW)
            .not_valid_after(now + dt.timedelta(days=ca_validity_days))
            # pathlen 0: the root signs leaves directly; no intermediate can be minted from it.
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=False,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), False)
            .sign(ca_key, hashes.SHA256())
        )
        _write(ca / _CA_KEY, _pem_key(ca_key), secret=True)
        ca_pem = ca_cert.public_bytes(serialization.Encoding.PEM)
        _write(ca / _CA_CERT, ca_pem)
        _write(root / _CA_CERT, ca_pem)

        hosts = dict.fromkeys(["localhost", "127.0.0.1", *broker_hosts])
        _issue_party(
            root / _BROKER,
            broker_id,
            ca_cert,
            ca_key,
            [x509.UniformResourceIdentifier(node_uri(broker_id)), *_host_names(hosts)],
            ExtendedKeyUsageOID.SERVER_AUTH,
            validity_days,
        )
        _write_crl(root, ca_cert, ca_key, [], number=1)
        _write_registry(root, {broker_id: _read_text(root / _BROKER / _SIGNING_PUB).strip()})
        _log(ca, "init", broker=broker_id, pki_dir=str(root.absolute()))
    return load_broker_identity(root)


def sign(
    directory: str | os.PathLike[str],
    request: bytes,
    *,
    ca_dir: str | os.PathLike[str] | None = None,
    force: bool = False,
    validity_days: int = LEAF_VALIDITY_DAYS,
) -> x509.Certificate:
    """Issue the certificate a PKCS#10 request asks for (``exchange pki sign``, offline).

    The request names its party (node or operator) in a SAN URI and proves it holds the key
    (its self-signature). An ECDSA P-256 key gets a TLS client certificate, an Ed25519 key a
    signing certificate. A TLS request for a party already enrolled is refused unless ``force``
    (the old certificate is then revoked, reason superseded). A signing request for an enrolled
    party is a **rotation**: the old signing certificate is revoked (superseded) and kept in the
    party's history, so records signed under it still verify.
    """
    root = _initialised(directory)
    ca = _ca_dir(root, ca_dir)
    try:
        with _locked(root):
            cert = _sign_locked(root, ca, _parse_csr(request), force=force,
                                validity_days=validity_days)
    except ExchangeError as err:
        if err.code != Code.NO_CA_KEY:
            _log(ca, "sign_refused", code=err.code, detail=err.message)
        raise
    _log(ca, "signed", **_describe(cert))
    return cert


def enroll(
    directory: str | os.PathLike[str],
    node_id: str,
    *,
    ca_dir: str | os.PathLike[str] | None = None,
    force: bool = False,
    validity_days: int = LEAF_VALIDITY_DAYS,
) -> Identity:
    """**Central keys, for demos and tests only** (``--insecure-central-keys``): make the
    node's keys inside the PKI directory (``nodes/<node id>/``) and sign their requests, so the
    operator holds the node's private keys. A real node makes its own (``party.create``).

    Refuses a node that is already enrolled unless ``force``; with ``force`` the old
    certificates are revoked (reason superseded) so the replaced keys stop working at once.
    """
    from exchange.pki import party

    root = _initialised(directory)
    validate_node_id(node_id)
    node_dir = root / _NODES / node_id
    if (node_dir / _TLS_CERT).exists() and not force:
        raise PkiError(f"node {node_id!r} is already enrolled (use --force to re-issue)",
                       code=Code.ALREADY_ENROLLED)
    if node_id == node_id_from_cert(_read_cert(root / _BROKER / _TLS_CERT)):
        raise PkiError(f"{node_id!r} is the broker's id", code=Code.ALREADY_ENROLLED)
    for stale in (_TLS_KEY, _SIGNING_KEY):
        (node_dir / stale).unlink(missing_ok=True)
    party.create(node_dir, node_id)
    certs = [
        sign(root, _read_bytes(node_dir / csr), ca_dir=ca_dir, force=force,
             validity_days=validity_days)
        for csr in (_TLS_CSR, _SIGNING_CSR)
    ]
    party.install(node_dir, [c.public_bytes(serialization.Encoding.PEM) for c in certs],
                  ca=_read_bytes(root / _CA_CERT))
    return party.load_identity(node_dir)


def revoke(
    directory: str | os.PathLike[str],
    node_id: str,
    *,
    reason: x509.ReasonFlags = x509.ReasonFlags.unspecified,
    role: str = "node",
    ca_dir: str | os.PathLike[str] | None = None,
) -> int:
    """Put the party's TLS and signing certificates on the CRL; return the new CRL number.

    A node stays in ``nodes.json`` so records it signed before revocation still verify; the
    broker refuses its TLS handshake once it has reloaded its context (``ServerTLS.reload``).
    """
    root = _initialised(directory)
    ca = _ca_dir(root, ca_dir)
    validate_node_id(node_id)
    with _locked(root):
        number = _revoke_locked(root, ca, _party_dir(root, role, node_id), node_id, reason,
                                missing_ok=False)
    _log(ca, "revoked", role=role, id=node_id, reason=reason.name, crl_number=number)
    return number


def refresh_crl(directory: str | os.PathLike[str], *, days: int = CRL_VALIDITY_DAYS,
                ca_dir: str | os.PathLike[str] | None = None) -> int:
    """Re-sign the CRL with a fresh nextUpdate (same entries); return the new CRL number."""
    root = _initialised(directory)
    ca = _ca_dir(root, ca_dir)
    with _locked(root):
        ca_cert, ca_key = _load_ca(root, ca)
        crl = _load_crl(root)
        entries = list(crl)
        number = _write_crl(root, ca_cert, ca_key, entries, number=_crl_number(crl) + 1,
                            days=days)
    _log(ca, "crl", crl_number=number)
    return number


# -- invitations: the online path ------------------------------------------------------------

TOKEN_PREFIX = "vnx1"


def invite(
    directory: str | os.PathLike[str],
    party_id: str,
    *,
    expires: dt.timedelta = dt.timedelta(hours=24),
    role: str = "node",
    replace: bool = False,
    ca_dir: str | os.PathLike[str] | None = None,
    now: dt.datetime | None = None,
) -> str:
    """A single-use enrolment token for ``party_id``, valid for ``expires``.

    ``vnx1.<id>.<secret>.<pin>``: the CA keeps only the secret's SHA-256; ``pin`` is the
    SHA-256 of the CA certificate, so the node can check it reached the real enrolment service
    before it trusts anything that service says (as kubeadm's discovery hash does).
    ``replace``: the party may be enrolled already (lost keys); its old certificates are revoked.
    """
    root = _initialised(directory)
    ca = _ca_dir(root, ca_dir)
    validate_node_id(party_id)
    if role not in ("node", "operator"):
        raise PkiError(f"unknown role {role!r}", code=Code.PKI_ERROR)
    if expires <= dt.timedelta(0):
        raise PkiError("an invitation must expire in the future", code=Code.PKI_ERROR)
    now = now or _now()
    token_id, secret = secrets.token_hex(6), secrets.token_urlsafe(24)
    with _locked(root):
        _load_ca(root, ca)  # only the CA's holder invites
        tokens = _read_tokens(ca)
        tokens[token_id] = {
            "role": role, "id": party_id, "digest": _digest(secret), "replace": replace,
            "issued": _iso(now), "expires": _iso(now + expires), "used": None,
        }
        _write_tokens(ca, tokens)
    _log(ca, "invited", token=token_id, role=role, id=party_id, expires=_iso(now + expires))
    return f"{TOKEN_PREFIX}.{token_id}.{secret}.{ca_pin(_read_cert(root / _CA_CERT))}"


@dataclass(frozen=True, slots=True)
class Token:
    id: str
    secret: str
    pin: str


def parse_token(token: str) -> Token:
    parts = token.strip().split(".")
    if len(parts) != 4 or parts[0] != TOKEN_PREFIX or not all(parts[1:]):
        raise AuthError("not an enrolment token (vnx1.<id>.<secret>.<pin>)",
                        code=Code.TOKEN_INVALID)
    return Token(parts[1], parts[2], parts[3])


def ca_pin(ca_cert: x509.Certificate) -> str:
    """SHA-256 of the CA certificate (DER), base64url without padding."""
    raw = hashlib.sha256(ca_cert.public_bytes(serialization.Encoding.DER)).digest()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def redeem(
    directory: str | os.PathLike[str],
    token: str,
    requests: list[bytes],
    *,
    ca_dir: str | os.PathLike[str] | None = None,
    now: dt.datetime | None = None,
    peer: str = "",
) -> list[x509.Certificate]:
    """Issue a party's TLS and signing certificates against its invitation (the online path).

    A token works once, for the party it was issued for, until it expires; it is spent by any
    use with the right secret, refused or not. Every use and every refusal goes to the CA's log.
    """
    root = _initialised(directory)
    ca = _ca_dir(root, ca_dir)
    now = now or _now()
    try:
        parsed = parse_token(token)
        csrs = [_parse_csr(r) for r in requests]
        with _locked(root):
            tokens = _read_tokens(ca)
            entry = tokens.get(parsed.id)
            if entry is None or not hmac.compare_digest(entry["digest"], _digest(parsed.secret)):
                raise AuthError("unknown enrolment token", code=Code.TOKEN_INVALID)
            if entry["used"] is not None:
                raise AuthError(f"enrolment token {parsed.id} was used at {entry['used']}",
                                code=Code.TOKEN_USED)
            if now >= dt.datetime.fromisoformat(entry["expires"]):
                raise AuthError(f"enrolment token {parsed.id} expired at {entry['expires']}",
                                code=Code.TOKEN_EXPIRED)
            entry["used"] = _iso(now)
            _write_tokens(ca, tokens)
            invited = Principal(entry["role"], entry["id"])
            for csr in csrs:
                named = _csr_principal(csr)
                if named != invited:
                    raise Forbidden(f"the token was issued for {invited.role} {invited.id}; the "
                                    f"request names {named.role} {named.id}",
                                    code=Code.TOKEN_NODE_MISMATCH)
            kinds = sorted(_kind(csr) for csr in csrs)
            if kinds != ["signing", "tls"]:
                raise InputError("enrolment needs one TLS request (P-256) and one signing "
                                 "request (Ed25519)", code=Code.BAD_CSR)
            # TLS first: an enrolled party is refused before anything is issued
            csrs.sort(key=lambda c: _kind(c) != "tls")
            certs = [_sign_locked(root, ca, csr, force=bool(entry["replace"]),
                                  validity_days=LEAF_VALIDITY_DAYS) for csr in csrs]
    except ExchangeError as err:
        _log(ca, "enrol_refused", token=_token_id(token), code=err.code, detail=err.message,
             peer=peer)
        raise
    _log(ca, "enrolled", token=parsed.id, role=invited.role, id=invited.id, peer=peer,
         serials=[format(c.serial_number, "x") for c in certs])
    return certs


def rotate(
    directory: str | os.PathLike[str],
    principal: Principal,
    request: bytes,
    *,
    ca_dir: str | os.PathLike[str] | None = None,
    peer: str = "",
    presented_serial: int | None = None,
) -> x509.Certificate:
    """Certify a new signing key for ``principal``, who proved who it is with its current TLS
    certificate (the online ``exchange node rotate``). The request must name the same party,
    and the certificate presented (``presented_serial``) must be the party's current TLS
    certificate and not on the CRL as it is on disk now: a revoked or replaced certificate
    rotates nothing, however long the service has been running."""
    root = _initialised(directory)
    ca = _ca_dir(root, ca_dir)
    try:
        csr = _parse_csr(request)
        named = _csr_principal(csr)
        if named != principal:
            raise Forbidden(f"{principal.role} {principal.id} may rotate only its own key, not "
                            f"{named.role} {named.id}'s", code=Code.FORBIDDEN)
        if _kind(csr) != "signing":
            raise InputError("a rotation certifies a signing key (Ed25519)", code=Code.BAD_CSR)
        with _locked(root):
            party_dir = _party_dir(root, principal.role, principal.id)
            if not (party_dir / _SIGNING_CERT).is_file():
                raise PkiError(f"{principal.id} is not enrolled", code=Code.NOT_ENROLLED)
            if presented_serial is not None:
                current = _read_cert(party_dir / _TLS_CERT).serial_number
                revoked = {r.serial_number for r in _load_crl(root)}
                if presented_serial in revoked or presented_serial != current:
                    raise AuthError(f"the certificate presented is not {principal.id}'s "
                                    "current one, or it is revoked", code=Code.REVOKED)
            cert = _sign_locked(root, ca, csr, force=False, validity_days=LEAF_VALIDITY_DAYS)
    except ExchangeError as err:
        _log(ca, "rotate_refused", role=principal.role, id=principal.id, code=err.code,
             detail=err.message, peer=peer)
        raise
    _log(ca, "rotated", peer=peer, **_describe(cert))
    return cert


@dataclass(frozen=True, slots=True)
class NodeInfo:
    node_id: str
    tls_serial: int
    not_after: dt.datetime
    signing_public_key: str
    revoked: bool


def list_nodes(directory: str | os.PathLike[str]) -> list[NodeInfo]:
    """Enrolled nodes, sorted by id, with expiry and revocation state."""
    root = _initialised(directory)
    revoked = frozenset(r.serial_number for r in _load_crl(root))
    return [
        NodeInfo(
            n.node_id, n.tls_serial, n.not_after, n.signing_public_key, n.tls_serial in revoked
        )
        for n in _scan_nodes(root)
    ]


def list_operators(directory: str | os.PathLike[str]) -> list[tuple[str, int, bool]]:
    """Operators with a certificate: (name, TLS serial, revoked)."""
    root = _initialised(directory)
    revoked = frozenset(r.serial_number for r in _load_crl(root))
    out = []
    base = root / _OPERATORS
    for d in sorted(base.iterdir()) if base.is_dir() else []:
        if (d / _TLS_CERT).is_file():
            serial = _read_cert(d / _TLS_CERT).serial_number
            out.append((d.name, serial, serial in revoked))
    return out


# -- internals ---------------------------------------------------------------------------------


def _issue_party(
    party_dir: Path,
    node_id: str,
    ca_cert: x509.Certificate,
    ca_key: ec.EllipticCurvePrivateKey,
    sans: list[x509.GeneralName],
    tls_usage: ObjectIdentifier,
    validity_days: int,
) -> None:
    """TLS key + cert and Ed25519 signing key + cert for one party, written into ``party_dir``."""
    _mkdir(party_dir)
    tls_key = ec.generate_private_key(ec.SECP256R1())
    tls_cert = _leaf(
        ca_cert,
        ca_key,
        node_id,
        tls_key.public_key(),
        sans,
        # ECDHE_ECDSA: the key signs the handshake, nothing is encrypted with it.
        _key_usage(digital_signature=True),
        tls_usage,
        validity_days,
    )
    signing_key = ed25519.Ed25519PrivateKey.generate()
    signing_cert = _leaf(
        ca_cert,
        ca_key,
        node_id,
        signing_key.public_key(),
        [x509.UniformResourceIdentifier(node_uri(node_id))],
        # contentCommitment (nonRepudiation): the key signs statements about records.
        _key_usage(digital_signature=True, content_commitment=True),
        DOCUMENT_SIGNING,
        validity_days,
    )
    _write(party_dir / _TLS_KEY, _pem_key(tls_key), secret=True)
    _write(party_dir / _TLS_CERT, tls_cert.public_bytes(serialization.Encoding.PEM))
    save_signing_key(party_dir / _SIGNING_KEY, signing_key)
    _write(party_dir / _SIGNING_PUB, (encode_public_key(signing_key.public_key()) + "\n").encode())
    _write(party_dir / _SIGNING_CERT, signing_cert.public_bytes(serialization.Encoding.PEM))


def _leaf(
    ca_cert: x509.Certificate,
    ca_key: ec.EllipticCurvePrivateKey,
    node_id: str,
    public_key: ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey,
    sans: list[x509.GeneralName],
    key_usage: x509.KeyUsage,
    eku: ObjectIdentifier,
    validity_days: int,
) -> x509.Certificate:
    now = _now()
    not_after = min(now + dt.timedelta(days=validity_days), ca_cert.not_valid_after_utc)
    ca_ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    return (
        x509.CertificateBuilder()
        .subject_name(
            x509.Name(
                [
                    x509.NameAttribute(NameOID.ORGANIZATION_NAME, ORGANIZATION),
                    x509.NameAttribute(NameOID.COMMON_NAME, node_id),
                ]
            )
        )
        .issuer_name(ca_cert.subject)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - CLOCK_SKEW)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(key_usage, critical=True)
        .add_extension(x509.ExtendedKeyUsage([eku]), critical=False)
        # The identity is in the SAN, not the subject; RFC 5280 §4.2.1.6 says make the SAN critical
        # only when the subject is empty, which it is not.
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )


def _key_usage(
    *, digital_signature: bool = False, content_commitment: bool = False
) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=digital_signature,
        content_commitment=content_commitment,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=False,
        crl_sign=False,
        encipher_only=False,
        decipher_only=False,
    )


def _revoke_locked(root: Path, ca: Path, party_dir: Path, party_id: str,
                   reason: x509.ReasonFlags, *, missing_ok: bool,
                   names: tuple[str, ...] = (_TLS_CERT, _SIGNING_CERT)) -> int:
    if not (party_dir / _TLS_CERT).is_file() and not (party_dir / _SIGNING_CERT).is_file():
        raise PkiError(f"{party_id!r} is not enrolled in {root}", code=Code.NOT_ENROLLED)
    crl = _load_crl(root)
    entries = list(crl)
    already = {e.serial_number for e in entries}
    serials = [
        _read_cert(party_dir / name).serial_number
        for name in names
        if (party_dir / name).is_file()
    ]
    fresh = [s for s in serials if s not in already]
    if not fresh:
        if missing_ok:
            return _crl_number(crl)
        raise PkiError(f"{party_id!r} is already revoked", code=Code.ALREADY_REVOKED)
    now = _now()
    for serial in fresh:
        builder = x509.RevokedCertificateBuilder().serial_number(serial).revocation_date(now)
        if reason is not x509.ReasonFlags.unspecified:
            # RFC 5280 §5.3.1: reasonCode unspecified SHOULD be absent rather than present.
            builder = builder.add_extension(x509.CRLReason(reason), critical=False)
        entries.append(builder.build())
    ca_cert, ca_key = _load_ca(root, ca)
    return _write_crl(root, ca_cert, ca_key, entries, number=_crl_number(crl) + 1)


def _write_crl(
    root: Path,
    ca_cert: x509.Certificate,
    ca_key: ec.EllipticCurvePrivateKey,
    entries: list[x509.RevokedCertificate],
    *,
    number: int,
    days: int = CRL_VALIDITY_DAYS,
) -> int:
    now = _now()
    ca_ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(ca_cert.subject)
        .last_update(now - CLOCK_SKEW)
        .next_update(now + dt.timedelta(days=days))
        # RFC 5280 §5.2.1 and §5.2.3: conforming CRLs MUST carry the AKI and the CRL number.
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski), critical=False
        )
        .add_extension(x509.CRLNumber(number), critical=False)
    )
    for entry in entries:
        builder = builder.add_revoked_certificate(entry)
    crl = builder.sign(ca_key, hashes.SHA256())
    _write(root / _CRL, crl.public_bytes(serialization.Encoding.PEM))
    return number


def _load_ca(root: Path, ca: Path) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    cert = _read_cert(root / _CA_CERT)
    if not (ca / _CA_KEY).is_file():
        raise PkiError(f"the CA key is not on this machine (looked for {ca / _CA_KEY}): run this "
                       "where the CA's directory is, or pass --ca-dir", code=Code.NO_CA_KEY)
    try:
        key = serialization.load_pem_private_key(_read_bytes(ca / _CA_KEY), password=None)
    except (ValueError, TypeError) as err:
        raise PkiError(f"{ca / _CA_KEY} is not a PEM private key", code=Code.PKI_CORRUPT) from err
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise PkiError(f"{ca / _CA_KEY} is not an ECDSA key", code=Code.PKI_CORRUPT)
    if key.public_key() != cert.public_key():
        raise PkiError(f"{ca / _CA_KEY} is not the key of {root / _CA_CERT}",
                       code=Code.PKI_CORRUPT)
    return cert, key


def _ca_dir(root: Path, ca_dir: str | os.PathLike[str] | None) -> Path:
    return Path(ca_dir) if ca_dir is not None else default_ca_dir(root)


def _party_dir(root: Path, role: str, party_id: str) -> Path:
    return root / (_NODES if role == "node" else _OPERATORS) / party_id


def _host_names(hosts: Iterable[str]) -> list[x509.GeneralName]:
    names: list[x509.GeneralName] = []
    for host in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    return names


def _parse_csr(data: bytes) -> x509.CertificateSigningRequest:
    try:
        if data.lstrip().startswith(b"-----BEGIN"):
            csr = x509.load_pem_x509_csr(data)
        else:
            csr = x509.load_der_x509_csr(data)
    except ValueError as err:
        raise InputError("not a PKCS#10 certificate request", code=Code.BAD_CSR) from err
    if not csr.is_signature_valid:
        raise InputError("the request's self-signature does not verify: it does not prove "
                         "the key is held", code=Code.BAD_CSR)
    return csr


def _csr_principal(csr: x509.CertificateSigningRequest) -> Principal:
    try:
        san = csr.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        san = x509.SubjectAlternativeName([])
    uris = san.get_values_for_type(x509.UniformResourceIdentifier)
    found = [Principal("node", u[len(NODE_URI_PREFIX):]) for u in uris
             if u.startswith(NODE_URI_PREFIX)]
    found += [Principal("operator", u[len(OPERATOR_URI_PREFIX):]) for u in uris
              if u.startswith(OPERATOR_URI_PREFIX)]
    if len(found) != 1:
        raise InputError("a request must name exactly one node or operator in a SAN URI",
                         code=Code.BAD_CSR)
    try:
        validate_node_id(found[0].id)
    except PkiError as err:
        raise InputError(err.message, code=Code.BAD_CSR) from err
    return found[0]


def _kind(csr: x509.CertificateSigningRequest) -> str:
    key = csr.public_key()
    if isinstance(key, ed25519.Ed25519PublicKey):
        return "signing"
    if isinstance(key, ec.EllipticCurvePublicKey) and isinstance(key.curve, ec.SECP256R1):
        return "tls"
    raise InputError("a request's key must be ECDSA P-256 (TLS) or Ed25519 (signing)",
                     code=Code.BAD_CSR)


def _sign_locked(root: Path, ca: Path, csr: x509.CertificateSigningRequest, *, force: bool,
                 validity_days: int) -> x509.Certificate:
    principal = _csr_principal(csr)
    kind = _kind(csr)
    broker_id = node_id_from_cert(_read_cert(root / _BROKER / _TLS_CERT))
    if principal.id == broker_id:
        raise PkiError(f"{principal.id!r} is the broker's id", code=Code.ALREADY_ENROLLED)
    ca_cert, ca_key = _load_ca(root, ca)
    party_dir = _party_dir(root, principal.role, principal.id)
    revoked = frozenset(r.serial_number for r in _load_crl(root))
    name = _TLS_CERT if kind == "tls" else _SIGNING_CERT
    current = (party_dir / name)
    live = current.is_file() and _read_cert(current).serial_number not in revoked
    if kind == "tls" and live and not force:
        raise PkiError(f"{principal.role} {principal.id!r} is already enrolled (re-issue with "
                       "--force, or invite with --replace)", code=Code.ALREADY_ENROLLED)
    public = csr.public_key()
    assert isinstance(public, ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey)
    uri = x509.UniformResourceIdentifier(principal_uri(principal))
    if kind == "tls":
        cert = _leaf(ca_cert, ca_key, principal.id, public, [uri],
                     _key_usage(digital_signature=True), ExtendedKeyUsageOID.CLIENT_AUTH,
                     validity_days)
    else:
        cert = _leaf(ca_cert, ca_key, principal.id, public, [uri],
                     _key_usage(digital_signature=True, content_commitment=True),
                     DOCUMENT_SIGNING, validity_days)
    _mkdir(party_dir.parent)
    _mkdir(party_dir)
    if live:
        # re-issued TLS (forced) or a rotated signing key: the old certificate is superseded
        _revoke_locked(root, ca, party_dir, principal.id, x509.ReasonFlags.superseded,
                       missing_ok=True, names=(name,))
    pem = cert.public_bytes(serialization.Encoding.PEM)
    _write(party_dir / name, pem)
    if kind == "signing":
        # numbered in issuance order: the last is the current key (validity times tie within
        # a second, and serials are random)
        history = party_dir / _HISTORY
        _mkdir(history)
        number = len(list(history.glob("*.crt"))) + 1
        _write(history / f"{number:06d}-{cert.serial_number:x}.crt", pem)
        assert isinstance(public, ed25519.Ed25519PublicKey)
        encoded = encode_public_key(public)
        _write(party_dir / _SIGNING_PUB, (encoded + "\n").encode())
        if principal.role == "node":
            registry = _read_registry(root)
            registry[principal.id] = encoded
            _write_registry(root, registry)
    return cert


def _describe(cert: x509.Certificate) -> dict[str, str]:
    principal = principal_from_cert(cert)
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    return {"role": principal.role, "id": principal.id,
            "kind": "signing" if DOCUMENT_SIGNING in eku else "tls",
            "serial": format(cert.serial_number, "x")}


def _log(ca: Path, event: str, **fields: Any) -> None:
    """One JSON line per CA action in ``ca.log`` (who ran it, when, what), appended and synced
    before the action is reported done."""
    line = {"time": _iso(_now()), "event": event, "by": _who(), **fields}
    data = (json.dumps(line, ensure_ascii=False, sort_keys=True) + "\n").encode()
    try:
        fd = os.open(ca / _CA_LOG, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError as err:
        raise PkiError(f"cannot write the CA log {ca / _CA_LOG}: {err.strerror}",
                       code=Code.PKI_IO) from err


def _who() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return f"uid:{os.getuid()}"


def _read_tokens(ca: Path) -> dict[str, dict[str, Any]]:
    path = ca / _TOKENS
    if not path.exists():
        return {}
    try:
        data = json.loads(_read_text(path))
    except json.JSONDecodeError as err:
        raise PkiError(f"{path} is not valid JSON", code=Code.PKI_CORRUPT) from err
    if not isinstance(data, dict):
        raise PkiError(f"{path} must hold an object", code=Code.PKI_CORRUPT)
    return data


def _write_tokens(ca: Path, tokens: dict[str, dict[str, Any]]) -> None:
    _write(ca / _TOKENS, (json.dumps(tokens, indent=2, sort_keys=True) + "\n").encode(),
           secret=True)


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def _iso(t: dt.datetime) -> str:
    return t.isoformat(timespec="seconds")


def _token_id(token: str) -> str:
    parts = token.strip().split(".")
    return parts[1][:32] if len(parts) == 4 else "?"
