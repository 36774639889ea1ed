"""What a party loads and uses: its identity, signing keys, the CRL's verdict, TLS contexts.

Read-only over the PKI directory except ``save_signing_key``; the CA's own steps are in
``exchange.pki.authority``.
"""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import os
import ssl
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from exchange.core.errors import AuthError, Code, PkiError
from exchange.core.signing import key_id
from exchange.pki.files import (
    _BROKER,
    _CA_CERT,
    _CRL,
    _HISTORY,
    _NODES,
    _SIGNING_CERT,
    _SIGNING_KEY,
    _TLS_CERT,
    _TLS_KEY,
    _b64_32,
    _crl_number,
    _initialised,
    _load_crl,
    _now,
    _parse_cert,
    _read_cert,
    _read_registry,
    _read_text,
    _scan_nodes,
    _write,
)
from exchange.pki.names import (
    DOCUMENT_SIGNING,
    node_id_from_cert,
    principal_from_cert,
    validate_node_id,
)


@dataclass(frozen=True, slots=True)
class Identity:
    """Everything a party needs to connect and sign: paths for ``ssl``, the signing key loaded."""

    node_id: str
    ca_cert: Path
    tls_cert: Path
    tls_key: Path
    signing_cert: Path
    signing_key: ed25519.Ed25519PrivateKey
    role: str = "node"

    @property
    def signing_public_key(self) -> ed25519.Ed25519PublicKey:
        return self.signing_key.public_key()


def load_node_identity(directory: str | os.PathLike[str], node_id: str) -> Identity:
    """A node enrolled with central keys (``pki.enroll``: tests, benchmarks): its directory is
    ``nodes/<node id>/`` of the PKI directory. ``PkiError(not_enrolled)`` if it is not there."""
    from exchange.pki import party

    root = _initialised(directory)
    node_dir = root / _NODES / validate_node_id(node_id)
    if not (node_dir / _TLS_KEY).is_file():
        raise PkiError(f"node {node_id!r} has no keys in {root} (a node that made its own "
                       "keys loads them from its own directory)", code=Code.NOT_ENROLLED)
    return party.load_identity(node_dir)


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
    cert: bytes | x509.Certificate, ca: x509.Certificate, *, at: dt.datetime | None = None,
    check_time: bool = True, any_role: bool = False,
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
    if check_time and not cert.not_valid_before_utc <= now <= cert.not_valid_after_utc:
        raise AuthError("signing certificate is not valid now", code=Code.CERTIFICATE_EXPIRED)
    try:
        eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound:
        eku = x509.ExtendedKeyUsage([])
    key = cert.public_key()
    if DOCUMENT_SIGNING not in eku or not isinstance(key, ed25519.Ed25519PublicKey):
        raise AuthError("not an exchange signing certificate", code=Code.BAD_CERTIFICATE)
    return principal_from_cert(cert).id if any_role else node_id_from_cert(cert), key


@dataclass(frozen=True, slots=True)
class SigningCert:
    """One certified signing key of a party: which, and when it may have signed."""

    node_id: str
    kid: str
    key: ed25519.Ed25519PublicKey
    not_before: dt.datetime
    not_after: dt.datetime
    serial: int

    def valid_at(self, time: str | None) -> bool:
        """Whether a statement made at ``time`` (RFC 3339; ``None``: any) falls in the
        certificate's validity."""
        if time is None:
            return True
        try:
            at = dt.datetime.fromisoformat(time)
        except ValueError:
            return False
        if at.tzinfo is None:
            return False
        return self.not_before <= at <= self.not_after


def certified_signing_keys(bundle: bytes, ca: x509.Certificate) -> list[SigningCert]:
    """Every signing certificate in a PEM bundle, each checked against the CA (issuer, EKU,
    key type) but not against the clock: an old certificate vouches for what was signed while
    it was valid. Raises ``AuthError`` if any certificate fails."""
    out = []
    for cert in x509.load_pem_x509_certificates(bundle) if bundle.strip() else []:
        node_id, key = signing_identity_from_cert(cert, ca, check_time=False, any_role=True)
        out.append(SigningCert(node_id, key_id(key), key, cert.not_valid_before_utc,
                               cert.not_valid_after_utc, cert.serial_number))
    return out


def signing_history(directory: str | os.PathLike[str], node_id: str, *,
                    role: str = "node") -> bytes:
    """Every signing certificate ever issued to ``node_id`` (an operator's with ``role``),
    PEM, in the order issued: the last is the current one."""
    root = _initialised(directory)
    history = (root / (_NODES if role == "node" else "operators") / validate_node_id(node_id)
               / _HISTORY)
    paths = sorted(history.glob("*.crt")) if history.is_dir() else []
    return b"".join(_read_cert(p).public_bytes(serialization.Encoding.PEM) for p in paths)


def load_signing_history(directory: str | os.PathLike[str]) -> dict[str, list[SigningCert]]:
    """node id → every signing key it was certified for (``nodes/<id>/history/``)."""
    root = _initialised(directory)
    ca = _read_cert(root / _CA_CERT)
    out: dict[str, list[SigningCert]] = {}
    nodes = root / _NODES
    for node_dir in sorted(nodes.iterdir()) if nodes.is_dir() else []:
        if (node_dir / _HISTORY).is_dir():
            out[node_dir.name] = certified_signing_keys(signing_history(root, node_dir.name), ca)
    return out


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
        # no session tickets: a resumed TLS 1.3 session skips the certificate check, so a
        # certificate revoked since would get in; every connection is verified in full
        ctx.num_tickets = 0
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


@contextlib.contextmanager
def _map_ssl_errors(what: str) -> Iterator[None]:
    try:
        yield
    except ssl.SSLError as err:
        raise PkiError(f"{what}: {err.reason or err}", code=Code.PKI_CORRUPT) from err
    except OSError as err:
        raise PkiError(f"{what}: {err.strerror or err}", code=Code.PKI_IO) from err
