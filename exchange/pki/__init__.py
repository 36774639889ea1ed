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

Keys are made where they are used: a node or an operator creates its own keys and requests
(``party``); the CA only ever sees requests and signs them, offline (``sign``) or against a
single-use invitation (``invite``/``redeem``, served by ``exchange pki serve``). The CA's key
lives in a directory of its own (``default_ca_dir``), never in what the broker reads.

Modules: ``names`` (node ids, SAN URIs, roles), ``files`` (on-disk layout, safe I/O),
``authority`` (the CA's steps), ``party`` (a node's or operator's own directory) and
``identity`` (what a party loads: keys, certificate history, CRL, TLS contexts).
"""

from __future__ import annotations

from exchange.pki.authority import CA_VALIDITY_DAYS as CA_VALIDITY_DAYS
from exchange.pki.authority import CLOCK_SKEW as CLOCK_SKEW
from exchange.pki.authority import CRL_VALIDITY_DAYS as CRL_VALIDITY_DAYS
from exchange.pki.authority import LEAF_VALIDITY_DAYS as LEAF_VALIDITY_DAYS
from exchange.pki.authority import ORGANIZATION as ORGANIZATION
from exchange.pki.authority import (
    NodeInfo,
    Token,
    ca_pin,
    enroll,
    init,
    invite,
    list_nodes,
    list_operators,
    parse_token,
    redeem,
    refresh_crl,
    revoke,
    rotate,
    sign,
)
from exchange.pki.files import default_ca_dir
from exchange.pki.identity import (
    Identity,
    Revocations,
    ServerTLS,
    SigningCert,
    certified_signing_keys,
    client_ssl_context,
    decode_public_key,
    encode_public_key,
    load_broker_identity,
    load_node_identity,
    load_revoked,
    load_signing_history,
    load_signing_key,
    load_signing_public_key,
    load_signing_registry,
    save_signing_key,
    server_ssl_context,
    signing_history,
    signing_identity_from_cert,
)
from exchange.pki.names import (
    BROKER_ID,
    NODE_ID_PATTERN,
    NODE_URI_PREFIX,
    OPERATOR_URI_PREFIX,
    Principal,
    node_id_from_cert,
    node_uri,
    principal_from_cert,
    principal_uri,
    validate_node_id,
)
from exchange.pki.names import DOCUMENT_SIGNING as DOCUMENT_SIGNING
from exchange.pki.names import NODE_ID_MAX_LENGTH as NODE_ID_MAX_LENGTH

__all__ = [
    "BROKER_ID",
    "NODE_ID_PATTERN",
    "NODE_URI_PREFIX",
    "OPERATOR_URI_PREFIX",
    "Identity",
    "NodeInfo",
    "Principal",
    "Revocations",
    "ServerTLS",
    "SigningCert",
    "Token",
    "ca_pin",
    "certified_signing_keys",
    "client_ssl_context",
    "decode_public_key",
    "default_ca_dir",
    "encode_public_key",
    "enroll",
    "init",
    "invite",
    "list_nodes",
    "list_operators",
    "load_broker_identity",
    "load_node_identity",
    "load_revoked",
    "load_signing_history",
    "load_signing_key",
    "load_signing_public_key",
    "load_signing_registry",
    "node_id_from_cert",
    "node_uri",
    "parse_token",
    "principal_from_cert",
    "principal_uri",
    "redeem",
    "refresh_crl",
    "revoke",
    "rotate",
    "save_signing_key",
    "server_ssl_context",
    "sign",
    "signing_history",
    "signing_identity_from_cert",
    "validate_node_id",
]
