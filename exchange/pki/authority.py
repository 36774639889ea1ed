"""What the CA does: create the PKI, enroll and revoke nodes, re-sign the CRL, list the nodes.

Certificate profiles (validity, key usages, extensions) live here; every step that writes runs
under the PKI directory's lock.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID, ObjectIdentifier

from exchange.core.errors import Code, PkiError
from exchange.pki.files import (
    _BROKER,
    _CA_CERT,
    _CA_KEY,
    _CRL,
    _NODES,
    _SIGNING_CERT,
    _SIGNING_KEY,
    _SIGNING_PUB,
    _TLS_CERT,
    _TLS_KEY,
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
)
from exchange.pki.identity import (
    Identity,
    encode_public_key,
    load_broker_identity,
    load_node_identity,
    save_signing_key,
)
from exchange.pki.names import (
    BROKER_ID,
    DOCUMENT_SIGNING,
    node_id_from_cert,
    node_uri,
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


# -- init / enroll / revoke -----------------------------------------------------------------------


def init(
    directory: str | os.PathLike[str],
    *,
    broker_hosts: Iterable[str] = ("localhost", "127.0.0.1"),
    broker_id: str = BROKER_ID,
    validity_days: int = LEAF_VALIDITY_DAYS,
    ca_validity_days: int = CA_VALIDITY_DAYS,
) -> Identity:
    """Create the CA, the broker's TLS and signing material, an empty CRL and ``nodes.json``.

    ``broker_hosts`` become DNS or IP SANs of the broker's server certificate (``localhost`` and
    ``127.0.0.1`` are always added). Refuses a directory that already holds a CA.
    """
    validate_node_id(broker_id)
    root = Path(directory)
    _mkdir(root)
    with _locked(root):
        if (root / _CA_KEY).exists():
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
        _write(root / _CA_KEY, _pem_key(ca_key), secret=True)
        _write(root / _CA_CERT, ca_cert.public_bytes(serialization.Encoding.PEM))

        hosts = dict.fromkeys(["localhost", "127.0.0.1", *broker_hosts])
        sans: list[x509.GeneralName] = [x509.UniformResourceIdentifier(node_uri(broker_id))]
        for host in hosts:
            try:
                sans.append(x509.IPAddress(ipaddress.ip_address(host)))
            except ValueError:
                sans.append(x509.DNSName(host))
        _issue_party(
            root / _BROKER,
            broker_id,
            ca_cert,
            ca_key,
            sans,
            ExtendedKeyUsageOID.SERVER_AUTH,
            validity_days,
        )
        _write_crl(root, ca_cert, ca_key, [], number=1)
        _write_registry(root, {broker_id: _read_text(root / _BROKER / _SIGNING_PUB).strip()})
    return load_broker_identity(root)


def enroll(
    directory: str | os.PathLike[str],
    node_id: str,
    *,
    force: bool = False,
    validity_days: int = LEAF_VALIDITY_DAYS,
) -> Identity:
    """Issue a node's TLS client certificate and Ed25519 signing key + certificate.

    Refuses a node that is already enrolled unless ``force``; with ``force`` the old certificates
    are revoked (reason superseded) so the replaced keys stop working at once.
    """
    root = _initialised(directory)
    validate_node_id(node_id)
    with _locked(root):
        if node_id == node_id_from_cert(_read_cert(root / _BROKER / _TLS_CERT)):
            raise PkiError(f"{node_id!r} is the broker's id", code=Code.ALREADY_ENROLLED)
        node_dir = root / _NODES / node_id
        if (node_dir / _TLS_CERT).exists():
            if not force:
                raise PkiError(
                    f"node {node_id!r} is already enrolled (use --force to re-issue)",
                    code=Code.ALREADY_ENROLLED,
                )
            _revoke_locked(root, node_id, x509.ReasonFlags.superseded, missing_ok=True)
        ca_cert, ca_key = _load_ca(root)
        _mkdir(root / _NODES)
        _issue_party(
            node_dir,
            node_id,
            ca_cert,
            ca_key,
            [x509.UniformResourceIdentifier(node_uri(node_id))],
            ExtendedKeyUsageOID.CLIENT_AUTH,
            validity_days,
        )
        registry = _read_registry(root)
        registry[node_id] = _read_text(node_dir / _SIGNING_PUB).strip()
        _write_registry(root, registry)
    return load_node_identity(root, node_id)


def revoke(
    directory: str | os.PathLike[str],
    node_id: str,
    *,
    reason: x509.ReasonFlags = x509.ReasonFlags.unspecified,
) -> int:
    """Put the node's TLS and signing certificates on the CRL; return the new CRL number.

    The node stays in ``nodes.json`` so records it signed before revocation still verify; the
    broker refuses its TLS handshake once it has reloaded its context (``ServerTLS.reload``).
    """
    root = _initialised(directory)
    validate_node_id(node_id)
    with _locked(root):
        return _revoke_locked(root, node_id, reason, missing_ok=False)


def refresh_crl(directory: str | os.PathLike[str], *, days: int = CRL_VALIDITY_DAYS) -> int:
    """Re-sign the CRL with a fresh nextUpdate (same entries); return the new CRL number."""
    root = _initialised(directory)
    with _locked(root):
        ca_cert, ca_key = _load_ca(root)
        crl = _load_crl(root)
        entries = list(crl)
        return _write_crl(root, ca_cert, ca_key, entries, number=_crl_number(crl) + 1, days=days)


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


def _revoke_locked(root: Path, node_id: str, reason: x509.ReasonFlags, *, missing_ok: bool) -> int:
    node_dir = root / _NODES / node_id
    if not (node_dir / _TLS_CERT).is_file():
        raise PkiError(f"node {node_id!r} is not enrolled in {root}", code=Code.NOT_ENROLLED)
    crl = _load_crl(root)
    entries = list(crl)
    already = {e.serial_number for e in entries}
    serials = [
        _read_cert(node_dir / name).serial_number
        for name in (_TLS_CERT, _SIGNING_CERT)
        if (node_dir / name).is_file()
    ]
    fresh = [s for s in serials if s not in already]
    if not fresh:
        if missing_ok:
            return _crl_number(crl)
        raise PkiError(f"node {node_id!r} is already revoked", code=Code.ALREADY_REVOKED)
    now = _now()
    for serial in fresh:
        builder = x509.RevokedCertificateBuilder().serial_number(serial).revocation_date(now)
        if reason is not x509.ReasonFlags.unspecified:
            # RFC 5280 §5.3.1: reasonCode unspecified SHOULD be absent rather than present.
            builder = builder.add_extension(x509.CRLReason(reason), critical=False)
        entries.append(builder.build())
    ca_cert, ca_key = _load_ca(root)
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


def _load_ca(root: Path) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    cert = _read_cert(root / _CA_CERT)
    try:
        key = serialization.load_pem_private_key(_read_bytes(root / _CA_KEY), password=None)
    except (ValueError, TypeError) as err:
        raise PkiError(f"{root / _CA_KEY} is not a PEM private key", code=Code.PKI_CORRUPT) from err
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise PkiError(f"{root / _CA_KEY} is not an ECDSA key", code=Code.PKI_CORRUPT)
    return cert, key
