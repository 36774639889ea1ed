"""The exchange PKI: one root CA, the broker's and the nodes' certificates and signing keys.

Shell module (file I/O, ``ssl``): it creates and reads the material under one PKI directory and
builds the TLS contexts the broker and the node SDK use. Certificate profiles, the file layout and
the operator's steps are in ``certs/README.md``.

Two kinds of key per party, on purpose:

- a **TLS key** (ECDSA P-256): authenticates the connection. P-256 rather than Ed25519 because
  every TLS stack and HSM speaks it; Ed25519 certificates in TLS are still patchy outside OpenSSL.
- a **signing key** (Ed25519): signs batches (nodes), receipts and checkpoints (broker). Its public
  half is bound to the party's id by a *signing certificate* issued by the same CA (EKU
  id-kp-documentSigning, RFC 9336), and listed in ``nodes.json`` for quick look-up.

The party's id travels in a SAN URI ``urn:vn-exchange:node:<node id>`` in both certificates.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import datetime as dt
import fcntl
import ipaddress
import json
import os
import re
import ssl
import tempfile
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID, ObjectIdentifier

from exchange.core.errors import AuthError, Code, PkiError

__all__ = [
    "BROKER_ID",
    "NODE_ID_PATTERN",
    "NODE_URI_PREFIX",
    "Identity",
    "NodeInfo",
    "Revocations",
    "ServerTLS",
    "client_ssl_context",
    "decode_public_key",
    "encode_public_key",
    "enroll",
    "init",
    "list_nodes",
    "load_broker_identity",
    "load_node_identity",
    "load_revoked",
    "load_signing_key",
    "load_signing_public_key",
    "load_signing_registry",
    "node_id_from_cert",
    "node_uri",
    "refresh_crl",
    "revoke",
    "save_signing_key",
    "server_ssl_context",
    "signing_identity_from_cert",
    "validate_node_id",
]

#: SAN URI that names a party. A private URN namespace: only exchange software reads it, and a
#: prefix match is all it takes to tell our identities from any other URI a certificate may hold.
NODE_URI_PREFIX = "urn:vn-exchange:node:"

#: The broker's default id (run by the National Data Center).
BROKER_ID = "vn.gov.ndc.broker"

#: Reverse-DNS style: at least two dot-separated labels of lower-case letters, digits and hyphens.
#: No "/" and no empty label, so an id is always one safe path component.
NODE_ID_PATTERN = re.compile(r"^[a-z0-9]+(\.[a-z0-9-]+)+$")
NODE_ID_MAX_LENGTH = 128

CA_VALIDITY_DAYS = 3650
#: One year: short enough that a forgotten node ages out, long enough for yearly re-enrolment.
LEAF_VALIDITY_DAYS = 365
#: OpenSSL refuses every handshake once the CRL's nextUpdate has passed (fail closed), so the CRL
#: is re-signed on every revocation and must be refreshed (``exchange pki crl``) before it lapses.
CRL_VALIDITY_DAYS = 90
#: Backdate notBefore so that a peer whose clock is a little behind still accepts a fresh cert.
CLOCK_SKEW = dt.timedelta(minutes=5)

#: RFC 9336 id-kp-documentSigning: keeps a signing certificate out of TLS.
DOCUMENT_SIGNING = ObjectIdentifier("1.3.6.1.5.5.7.3.36")

ORGANIZATION = "Vietnam National Data Exchange"

_CA_CERT = "ca.crt"
_CA_KEY = "ca.key"
_CRL = "crl.pem"
_REGISTRY = "nodes.json"
_LOCK = ".lock"
_BROKER = "broker"
_NODES = "nodes"
_TLS_CERT = "tls.crt"
_TLS_KEY = "tls.key"
_SIGNING_CERT = "signing.crt"
_SIGNING_KEY = "signing.key"
_SIGNING_PUB = "signing.pub"


# -- identities ----------------------------------------------------------------------------------


def validate_node_id(node_id: str) -> str:
    """Return ``node_id`` if it is well formed, else raise ``PkiError(invalid_node_id)``."""
    if len(node_id) > NODE_ID_MAX_LENGTH or not NODE_ID_PATTERN.fullmatch(node_id):
        raise PkiError(
            f"invalid node id {node_id!r}: expected lower-case dotted labels such as "
            "'vn.gov.mps.population'",
            code=Code.INVALID_NODE_ID,
        )
    return node_id


def node_uri(node_id: str) -> str:
    """The SAN URI naming ``node_id``."""
    return NODE_URI_PREFIX + validate_node_id(node_id)


def node_id_from_cert(cert: bytes | x509.Certificate | Mapping[str, Any]) -> str:
    """The node id in a certificate's SAN URI.

    ``cert`` is DER bytes (``getpeercert(binary_form=True)``), a parsed certificate, or the dict
    ``getpeercert()`` returns. Raises ``AuthError(bad_certificate)`` when there is not exactly one
    well-formed exchange URI: the gate maps that to 401.
    """
    uris: list[str]
    if isinstance(cert, bytes | bytearray | memoryview):
        try:
            cert = x509.load_der_x509_certificate(bytes(cert))
        except ValueError as err:
            raise AuthError("peer certificate does not parse", code=Code.BAD_CERTIFICATE) from err
    if isinstance(cert, x509.Certificate):
        try:
            san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        except x509.ExtensionNotFound:
            san = x509.SubjectAlternativeName([])
        uris = san.get_values_for_type(x509.UniformResourceIdentifier)
    else:
        uris = [v for k, v in cert.get("subjectAltName", ()) if k == "URI"]
    ids = [u[len(NODE_URI_PREFIX) :] for u in uris if u.startswith(NODE_URI_PREFIX)]
    if len(ids) != 1:
        raise AuthError(
            f"certificate must name exactly one node ({NODE_URI_PREFIX}…), found {len(ids)}",
            code=Code.BAD_CERTIFICATE,
        )
    try:
        return validate_node_id(ids[0])
    except PkiError as err:
        raise AuthError(err.message, code=Code.BAD_CERTIFICATE) from err


@dataclass(frozen=True, slots=True)
class Identity:
    """Everything a party needs to connect and sign: paths for ``ssl``, the signing key loaded."""

    node_id: str
    ca_cert: Path
    tls_cert: Path
    tls_key: Path
    signing_cert: Path
    signing_key: ed25519.Ed25519PrivateKey

    @property
    def signing_public_key(self) -> ed25519.Ed25519PublicKey:
        return self.signing_key.public_key()


def load_node_identity(directory: str | os.PathLike[str], node_id: str) -> Identity:
    """The enrolled node's files; ``PkiError(not_enrolled)`` if it was never enrolled."""
    root = _initialised(directory)
    node_dir = root / _NODES / validate_node_id(node_id)
    if not (node_dir / _TLS_CERT).is_file():
        raise PkiError(f"node {node_id!r} is not enrolled in {root}", code=Code.NOT_ENROLLED)
    return _identity(root, node_dir, node_id)


def load_broker_identity(directory: str | os.PathLike[str]) -> Identity:
    """The broker's files; its id is read back from its certificate."""
    root = _initialised(directory)
    broker_dir = root / _BROKER
    node_id = node_id_from_cert(_read_cert(broker_dir / _TLS_CERT))
    return _identity(root, broker_dir, node_id)


def _identity(root: Path, party_dir: Path, node_id: str) -> Identity:
    return Identity(
        node_id=node_id,
        ca_cert=root / _CA_CERT,
        tls_cert=party_dir / _TLS_CERT,
        tls_key=party_dir / _TLS_KEY,
        signing_cert=party_dir / _SIGNING_CERT,
        signing_key=load_signing_key(party_dir / _SIGNING_KEY),
    )


# -- signing keys: raw 32 bytes, base64 (standard alphabet, padded), one line --------------------


def encode_public_key(key: ed25519.Ed25519PublicKey) -> str:
    raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return base64.b64encode(raw).decode("ascii")


def decode_public_key(text: str) -> ed25519.Ed25519PublicKey:
    return ed25519.Ed25519PublicKey.from_public_bytes(_b64_32(text, "public key"))


def save_signing_key(path: str | os.PathLike[str], key: ed25519.Ed25519PrivateKey) -> None:
    """Write the private key (base64 of the 32-byte seed) with mode 0600, atomically."""
    raw = key.private_bytes(
        serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
    )
    _write(Path(path), base64.b64encode(raw) + b"\n", secret=True)


def load_signing_key(path: str | os.PathLike[str]) -> ed25519.Ed25519PrivateKey:
    return ed25519.Ed25519PrivateKey.from_private_bytes(_b64_32(_read_text(path), "private key"))


def load_signing_public_key(path: str | os.PathLike[str]) -> ed25519.Ed25519PublicKey:
    return decode_public_key(_read_text(path))


def load_signing_registry(directory: str | os.PathLike[str]) -> dict[str, ed25519.Ed25519PublicKey]:
    """``nodes.json``: node id → Ed25519 public signing key, the broker included."""
    registry = _read_registry(_initialised(directory))
    return {validate_node_id(k): decode_public_key(v) for k, v in registry.items()}


def signing_identity_from_cert(
    cert: bytes | x509.Certificate, ca: x509.Certificate, *, at: dt.datetime | None = None
) -> tuple[str, ed25519.Ed25519PublicKey]:
    """Check a signing certificate (PEM/DER bytes or parsed) against the CA; return id and key.

    Lets a subscriber trust a publisher's key from the CA alone, without trusting the broker.
    Revocation is not checked here: use ``load_revoked``.
    """
    if isinstance(cert, bytes):
        cert = _parse_cert(cert)
    try:
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature) as err:
        raise AuthError(
            "signing certificate not issued by the exchange CA", code=Code.BAD_CERTIFICATE
        ) from err
    now = at or _now()
    if not cert.not_valid_before_utc <= now <= cert.not_valid_after_utc:
        raise AuthError("signing certificate is not valid now", code=Code.CERTIFICATE_EXPIRED)
    try:
        eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound:
        eku = x509.ExtendedKeyUsage([])
    key = cert.public_key()
    if DOCUMENT_SIGNING not in eku or not isinstance(key, ed25519.Ed25519PublicKey):
        raise AuthError("not an exchange signing certificate", code=Code.BAD_CERTIFICATE)
    return node_id_from_cert(cert), key


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
class Revocations:
    """What the CRL says: every revoked serial, and the enrolled nodes whose current cert is one."""

    serials: frozenset[int]
    node_ids: frozenset[str]
    crl_number: int
    next_update: dt.datetime

    def __contains__(self, item: object) -> bool:
        return item in self.serials or item in self.node_ids


def load_revoked(directory: str | os.PathLike[str]) -> Revocations:
    root = _initialised(directory)
    crl = _load_crl(root)
    serials = frozenset(r.serial_number for r in crl)
    node_ids = frozenset(n.node_id for n in _scan_nodes(root) if n.tls_serial in serials)
    next_update = crl.next_update_utc
    assert next_update is not None  # we always set it
    return Revocations(serials, node_ids, _crl_number(crl), next_update)


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


# -- TLS contexts ----------------------------------------------------------------------------------


def server_ssl_context(directory: str | os.PathLike[str]) -> ssl.SSLContext:
    """A fresh broker context: TLS 1.3 only, client certificate required, CRL checked.

    Build a new one after every ``revoke`` (or use ``ServerTLS``, which swaps it in under a
    listening socket): a context reads the CRL once, when it is built.
    """
    broker = load_broker_identity(directory)
    root = Path(directory)
    with _map_ssl_errors("broker TLS context"):
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_3
        ctx.verify_mode = ssl.CERT_REQUIRED
        ctx.load_cert_chain(broker.tls_cert, broker.tls_key)
        ctx.load_verify_locations(cafile=root / _CA_CERT)
        # The CRL goes into the same X509 store; CHECK_LEAF makes OpenSSL consult it for the
        # client's certificate, so a revoked node fails the handshake before any request is read.
        ctx.load_verify_locations(cafile=root / _CRL)
        ctx.verify_flags |= ssl.VERIFY_CRL_CHECK_LEAF | ssl.VERIFY_X509_STRICT
    return ctx


def client_ssl_context(
    source: str | os.PathLike[str] | Identity, node_id: str | None = None
) -> ssl.SSLContext:
    """A node's context: TLS 1.3 only, the broker verified against the exchange CA (hostname
    included), the node's certificate presented. ``source`` is a PKI directory plus ``node_id``,
    or an ``Identity``."""
    if isinstance(source, Identity):
        ident = source
    else:
        if node_id is None:
            raise PkiError(
                "client_ssl_context needs a node id with a directory", code=Code.NOT_ENROLLED
            )
        ident = load_node_identity(source, node_id)
    with _map_ssl_errors("node TLS context"):
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # CERT_REQUIRED + check_hostname
        ctx.minimum_version = ssl.TLSVersion.TLSv1_3
        ctx.load_verify_locations(cafile=ident.ca_cert)
        ctx.verify_flags |= ssl.VERIFY_X509_STRICT
        ctx.load_cert_chain(ident.tls_cert, ident.tls_key)
    return ctx


class ServerTLS:
    """A listening context whose verification material can be replaced without re-binding.

    Pass ``.context`` to the server once; call ``reload()`` after a revocation. New handshakes
    are moved onto the newest context from the SNI callback, which OpenSSL runs for every
    ClientHello (with ``None`` when the client sends no server name, e.g. for an IP address), so
    they are verified against the newest CRL. Established connections are left alone.
    """

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self._directory = Path(directory)
        self._current = server_ssl_context(self._directory)
        self.context = server_ssl_context(self._directory)
        self.context.sni_callback = self._select

    def reload(self) -> None:
        """Re-read certificates and the CRL; raises (keeping the old context) if they are bad."""
        self._current = server_ssl_context(self._directory)

    def _select(self, sock: ssl.SSLObject, server_name: str | None, ctx: ssl.SSLContext) -> None:
        sock.context = self._current


# -- internals ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Enrolled:
    node_id: str
    tls_serial: int
    signing_serial: int
    not_after: dt.datetime
    signing_public_key: str


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


def _crl_number(crl: x509.CertificateRevocationList) -> int:
    try:
        return crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number
    except x509.ExtensionNotFound:
        return 0


def _load_crl(root: Path) -> x509.CertificateRevocationList:
    data = _read_bytes(root / _CRL)
    try:
        return x509.load_pem_x509_crl(data)
    except ValueError as err:
        raise PkiError(f"{root / _CRL} is not a PEM CRL", code=Code.PKI_CORRUPT) from err


def _load_ca(root: Path) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    cert = _read_cert(root / _CA_CERT)
    try:
        key = serialization.load_pem_private_key(_read_bytes(root / _CA_KEY), password=None)
    except (ValueError, TypeError) as err:
        raise PkiError(f"{root / _CA_KEY} is not a PEM private key", code=Code.PKI_CORRUPT) from err
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise PkiError(f"{root / _CA_KEY} is not an ECDSA key", code=Code.PKI_CORRUPT)
    return cert, key


def _scan_nodes(root: Path) -> list[_Enrolled]:
    nodes_dir = root / _NODES
    if not nodes_dir.is_dir():
        return []
    found = []
    for node_dir in sorted(nodes_dir.iterdir()):
        if not (node_dir / _TLS_CERT).is_file() or not NODE_ID_PATTERN.fullmatch(node_dir.name):
            continue
        tls = _read_cert(node_dir / _TLS_CERT)
        signing = _read_cert(node_dir / _SIGNING_CERT)
        found.append(
            _Enrolled(
                node_id=node_dir.name,
                tls_serial=tls.serial_number,
                signing_serial=signing.serial_number,
                not_after=tls.not_valid_after_utc,
                signing_public_key=_read_text(node_dir / _SIGNING_PUB).strip(),
            )
        )
    return found


def _read_registry(root: Path) -> dict[str, str]:
    path = root / _REGISTRY
    if not path.exists():
        return {}
    try:
        data = json.loads(_read_text(path))
    except json.JSONDecodeError as err:
        raise PkiError(f"{path} is not valid JSON: {err}", code=Code.PKI_CORRUPT) from err
    if not isinstance(data, dict):
        raise PkiError(f"{path} must hold an object", code=Code.PKI_CORRUPT)
    return {str(k): str(v) for k, v in data.items()}


def _write_registry(root: Path, registry: dict[str, str]) -> None:
    text = json.dumps(dict(sorted(registry.items())), indent=2) + "\n"
    _write(root / _REGISTRY, text.encode())


def _initialised(directory: str | os.PathLike[str]) -> Path:
    root = Path(directory)
    if not (root / _CA_CERT).is_file():
        raise PkiError(
            f"{root} holds no exchange CA (run `exchange pki init {root}`)",
            code=Code.NOT_INITIALISED,
        )
    return root


def _now() -> dt.datetime:
    # Whole seconds: X.509 UTCTime has no fractions, and equal values read back compare equal.
    return dt.datetime.now(dt.UTC).replace(microsecond=0)


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _b64_32(text: str, what: str) -> bytes:
    try:
        raw = base64.b64decode(text.strip(), validate=True)
    except (binascii.Error, ValueError) as err:
        raise PkiError(f"Ed25519 {what} is not base64", code=Code.PKI_CORRUPT) from err
    if len(raw) != 32:
        raise PkiError(f"Ed25519 {what} must be 32 bytes, got {len(raw)}", code=Code.PKI_CORRUPT)
    return raw


def _parse_cert(data: bytes) -> x509.Certificate:
    try:
        if data.lstrip().startswith(b"-----BEGIN"):
            return x509.load_pem_x509_certificate(data)
        return x509.load_der_x509_certificate(data)
    except ValueError as err:
        raise PkiError("certificate does not parse", code=Code.PKI_CORRUPT) from err


def _read_cert(path: Path) -> x509.Certificate:
    try:
        return _parse_cert(_read_bytes(path))
    except PkiError as err:
        raise PkiError(f"{path}: {err.message}", code=Code.of(err.code)) from err


def _read_bytes(path: str | os.PathLike[str]) -> bytes:
    try:
        return Path(path).read_bytes()
    except FileNotFoundError as err:
        raise PkiError(f"{path} is missing", code=Code.PKI_INCOMPLETE) from err
    except OSError as err:
        raise PkiError(f"cannot read {path}: {err.strerror}", code=Code.PKI_IO) from err


def _read_text(path: str | os.PathLike[str]) -> str:
    try:
        return _read_bytes(path).decode("ascii")
    except UnicodeDecodeError as err:
        raise PkiError(f"{path} is not ASCII text", code=Code.PKI_CORRUPT) from err


def _mkdir(path: Path) -> None:
    try:
        # 0700: the directory holds private keys; an existing directory keeps the operator's mode.
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as err:
        raise PkiError(f"cannot create {path}: {err.strerror}", code=Code.PKI_IO) from err


def _write(path: Path, data: bytes, *, secret: bool = False) -> None:
    """Write atomically: a temp file in the same directory, then rename over the target.

    Readers (a broker reloading the CRL, a node loading its key) never see a half-written file.
    ``mkstemp`` creates the file 0600 from the start, so a secret is never readable by others,
    not even for a moment; public files are then opened up to 0644 before they get any content.
    """
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
        try:
            if not secret:
                os.fchmod(fd, 0o644)
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise
    except OSError as err:
        raise PkiError(f"cannot write {path}: {err.strerror}", code=Code.PKI_IO) from err


@contextlib.contextmanager
def _locked(root: Path) -> Iterator[None]:
    """Serialise writers on one PKI directory: two revocations must not reuse a CRL number."""
    try:
        fd = os.open(root / _LOCK, os.O_RDWR | os.O_CREAT, 0o600)
    except OSError as err:
        raise PkiError(f"cannot lock {root}: {err.strerror}", code=Code.PKI_IO) from err
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


@contextlib.contextmanager
def _map_ssl_errors(what: str) -> Iterator[None]:
    try:
        yield
    except ssl.SSLError as err:
        raise PkiError(f"{what}: {err.reason or err}", code=Code.PKI_CORRUPT) from err
    except OSError as err:
        raise PkiError(f"{what}: {err.strerror or err}", code=Code.PKI_IO) from err
