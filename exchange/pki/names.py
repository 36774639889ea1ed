"""Node ids and how certificates name parties: the SAN URI, the id rules, the signing EKU.

Pure functions over ids and parsed certificates; no file I/O.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, Literal, NamedTuple

from cryptography import x509
from cryptography.x509.oid import ObjectIdentifier

from exchange.core.errors import AuthError, Code, PkiError

#: SAN URI that names a party. A private URN namespace: only exchange software reads it, and a
#: prefix match is all it takes to tell our identities from any other URI a certificate may hold.
NODE_URI_PREFIX = "urn:vn-exchange:node:"
#: SAN URI that names an operator: a role of its own, never a node. An operator certificate
#: opens the exchange-wide views and nothing a node does (publish, subscribe).
OPERATOR_URI_PREFIX = "urn:vn-exchange:operator:"

#: The broker's default id (run by the National Data Center).
BROKER_ID = "vn.gov.ndc.broker"

#: Reverse-DNS style: at least two dot-separated labels of lower-case letters, digits and hyphens.
#: No "/" and no empty label, so an id is always one safe path component.
NODE_ID_PATTERN = re.compile(r"^[a-z0-9]+(\.[a-z0-9-]+)+$")
NODE_ID_MAX_LENGTH = 128

#: RFC 9336 id-kp-documentSigning: keeps a signing certificate out of TLS.
DOCUMENT_SIGNING = ObjectIdentifier("1.3.6.1.5.5.7.3.36")


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


class Principal(NamedTuple):
    """Who a certificate names: a node or an operator, and its id."""

    role: Literal["node", "operator"]
    id: str


def principal_uri(principal: Principal) -> str:
    prefix = NODE_URI_PREFIX if principal.role == "node" else OPERATOR_URI_PREFIX
    return prefix + validate_node_id(principal.id)


def principal_from_cert(cert: bytes | x509.Certificate) -> Principal:
    """The node or operator a certificate names (exactly one exchange URI, of either kind)."""
    if isinstance(cert, bytes | bytearray | memoryview):
        try:
            cert = x509.load_der_x509_certificate(bytes(cert))
        except ValueError as err:
            raise AuthError("peer certificate does not parse", code=Code.BAD_CERTIFICATE) from err
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        san = x509.SubjectAlternativeName([])
    found = [(role, u[len(prefix):])
             for u in san.get_values_for_type(x509.UniformResourceIdentifier)
             for role, prefix in (("node", NODE_URI_PREFIX), ("operator", OPERATOR_URI_PREFIX))
             if u.startswith(prefix)]
    if len(found) != 1:
        raise AuthError(f"certificate must name exactly one node or operator, found "
                        f"{len(found)}", code=Code.BAD_CERTIFICATE)
    role, party_id = found[0]
    try:
        validate_node_id(party_id)
    except PkiError as err:
        raise AuthError(err.message, code=Code.BAD_CERTIFICATE) from err
    return Principal("node" if role == "node" else "operator", party_id)
