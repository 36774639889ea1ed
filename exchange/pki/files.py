"""The PKI directory's layout on disk and the safe file I/O behind it.

File and directory names, atomic writes, the writers' lock, reading certificates, the CRL,
``nodes.json`` and the enrolled nodes back, and the encodings of stored keys.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import datetime as dt
import fcntl
import json
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from exchange.core.errors import Code, PkiError
from exchange.pki.names import NODE_ID_PATTERN

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
_OPERATORS = "operators"
#: every signing certificate a party was ever issued, by serial: records signed before a
#: rotation verify against the certificate of their key id
_HISTORY = "history"
_PARTY = "party.json"
_TLS_CSR = "tls.csr"
_SIGNING_CSR = "signing.csr"
_NEXT_KEY = "signing.next.key"
_NEXT_CSR = "signing.next.csr"
_NEXT_CERT = "signing.next.crt"
_RETIRED = "retired"
#: the CA's own directory (never read by the broker): the CA key, invitation tokens, the log
_TOKENS = "tokens.json"
_CA_LOG = "ca.log"
_ENROL = "enrol"


def default_ca_dir(pki_dir: str | os.PathLike[str]) -> Path:
    """Where the CA key lives when ``--ca-dir`` is not given: a sibling of the PKI directory
    (``certs/exchange`` → ``certs/exchange-ca``), never inside what the broker reads."""
    root = Path(pki_dir).absolute()
    return root.parent / f"{root.name}-ca"


@dataclass(frozen=True, slots=True)
class _Enrolled:
    node_id: str
    tls_serial: int
    signing_serial: int
    not_after: dt.datetime
    signing_public_key: str


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
