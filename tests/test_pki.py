"""The exchange PKI: real files in tmp_path, real TLS 1.3 handshakes on 127.0.0.1."""

from __future__ import annotations

import json
import os
import ssl
import stat
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ed25519
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import ExtendedKeyUsageOID

from exchange import pki
from exchange.cli import main as cli_main
from exchange.core.errors import AuthError, PkiError

NODE = "vn.gov.mps.population"
OTHER = "vn.gov.mof.tax"


@pytest.fixture(scope="module")
def shared_pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A PKI with two nodes, for tests that only read (key generation is the slow part)."""
    root = tmp_path_factory.mktemp("pki") / "exchange"
    pki.init(root)
    pki.enroll(root, NODE)
    pki.enroll(root, OTHER)
    return root


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


# -- files ---------------------------------------------------------------------------------------


def test_init_and_enroll_write_the_documented_layout(shared_pki: Path) -> None:
    root = shared_pki
    assert mode(root) == 0o700
    # the CA key lives apart from what the broker reads
    assert not (root / "ca.key").exists()
    ca_dir = pki.default_ca_dir(root)
    assert ca_dir == root.parent / "exchange-ca" and mode(ca_dir) == 0o700
    assert mode(ca_dir / "ca.key") == 0o600
    assert mode(root / "ca.crt") == 0o644
    assert (root / "crl.pem").is_file()
    for party in (root / "broker", root / "nodes" / NODE):
        assert mode(party) == 0o700
        assert mode(party / "tls.key") == 0o600
        assert mode(party / "signing.key") == 0o600
        for public in ("tls.crt", "signing.crt", "signing.pub"):
            assert mode(party / public) == 0o644


def test_broker_certificate_names_hosts_and_broker_id(tmp_path: Path) -> None:
    broker = pki.init(tmp_path / "x", broker_hosts=["broker.exchange.gov.vn", "10.0.0.7"])
    cert = x509.load_pem_x509_certificate(broker.tls_cert.read_bytes())
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["localhost", "broker.exchange.gov.vn"]
    assert [str(ip) for ip in san.get_values_for_type(x509.IPAddress)] == ["127.0.0.1", "10.0.0.7"]
    assert pki.node_id_from_cert(cert) == pki.BROKER_ID == broker.node_id
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.SERVER_AUTH]


def test_signing_key_is_bound_by_certificate_and_registry(shared_pki: Path) -> None:
    ident = pki.load_node_identity(shared_pki, NODE)
    ca = x509.load_pem_x509_certificate(ident.ca_cert.read_bytes())
    node_id, key = pki.signing_identity_from_cert(ident.signing_cert.read_bytes(), ca)
    assert node_id == NODE
    assert pki.encode_public_key(key) == pki.encode_public_key(ident.signing_public_key)

    registry = pki.load_signing_registry(shared_pki)
    assert set(registry) == {NODE, OTHER, pki.BROKER_ID}
    assert pki.encode_public_key(registry[NODE]) == pki.encode_public_key(key)
    raw = json.loads((shared_pki / "nodes.json").read_text())
    assert raw[NODE] == (shared_pki / "nodes" / NODE / "signing.pub").read_text().strip()

    signature = ident.signing_key.sign(b"batch statement")
    registry[NODE].verify(signature, b"batch statement")


def test_signing_certificate_from_a_foreign_ca_is_refused(shared_pki: Path, tmp_path: Path) -> None:
    foreign = pki.init(tmp_path / "foreign")
    ca = x509.load_pem_x509_certificate((shared_pki / "ca.crt").read_bytes())
    with pytest.raises(AuthError) as err:
        pki.signing_identity_from_cert(foreign.signing_cert.read_bytes(), ca)
    assert err.value.code == "bad_certificate"


def test_tls_certificate_is_not_a_signing_certificate(shared_pki: Path) -> None:
    ident = pki.load_node_identity(shared_pki, NODE)
    ca = x509.load_pem_x509_certificate(ident.ca_cert.read_bytes())
    with pytest.raises(AuthError):
        pki.signing_identity_from_cert(ident.tls_cert.read_bytes(), ca)


def test_signing_key_round_trip(tmp_path: Path) -> None:
    key = ed25519.Ed25519PrivateKey.generate()
    path = tmp_path / "k"
    pki.save_signing_key(path, key)
    assert mode(path) == 0o600
    assert len(path.read_text().strip()) == 44  # base64 of 32 bytes
    loaded = pki.load_signing_key(path)
    assert pki.encode_public_key(loaded.public_key()) == pki.encode_public_key(key.public_key())
    path.write_text("bm90IDMyIGJ5dGVz\n")
    with pytest.raises(PkiError) as err:
        pki.load_signing_key(path)
    assert err.value.code == "pki_corrupt"


@pytest.mark.parametrize(
    "bad",
    ["population", "VN.gov.mps", "vn..gov", "vn.gov/../x", ".vn.gov", "vn.gov.", "", "a." * 80],
)
def test_invalid_node_ids_are_refused(shared_pki: Path, bad: str) -> None:
    with pytest.raises(PkiError) as err:
        pki.enroll(shared_pki, bad)
    assert err.value.code == "invalid_node_id"


def test_enroll_refuses_to_overwrite_and_the_broker_id(shared_pki: Path) -> None:
    for node_id in (NODE, pki.BROKER_ID):
        with pytest.raises(PkiError) as err:
            pki.enroll(shared_pki, node_id)
        assert err.value.code == "already_enrolled"


def test_unknown_and_uninitialised(tmp_path: Path, shared_pki: Path) -> None:
    with pytest.raises(PkiError) as err:
        pki.load_node_identity(shared_pki, "vn.gov.nobody")
    assert err.value.code == "not_enrolled"
    with pytest.raises(PkiError) as err:
        pki.enroll(tmp_path, NODE)
    assert err.value.code == "not_initialised"
    with pytest.raises(PkiError) as err:
        pki.init(shared_pki)
    assert err.value.code == "already_initialised"


def test_revoke_updates_the_crl(tmp_path: Path) -> None:
    root = tmp_path / "x"
    pki.init(root)
    pki.enroll(root, NODE)
    pki.enroll(root, OTHER)
    before = pki.load_revoked(root)
    assert before.crl_number == 1 and not before.serials

    assert pki.revoke(root, NODE, reason=x509.ReasonFlags.key_compromise) == 2
    after = pki.load_revoked(root)
    tls = x509.load_pem_x509_certificate((root / "nodes" / NODE / "tls.crt").read_bytes())
    sig = x509.load_pem_x509_certificate((root / "nodes" / NODE / "signing.crt").read_bytes())
    assert after.serials == {tls.serial_number, sig.serial_number}
    assert after.node_ids == {NODE}
    assert NODE in after and OTHER not in after and tls.serial_number in after

    crl = x509.load_pem_x509_crl((root / "crl.pem").read_bytes())
    ca = x509.load_pem_x509_certificate((root / "ca.crt").read_bytes())
    assert crl.is_signature_valid(ca.public_key())  # type: ignore[arg-type]
    entry = crl.get_revoked_certificate_by_serial_number(tls.serial_number)
    assert entry is not None
    reason = entry.extensions.get_extension_for_class(x509.CRLReason).value.reason
    assert reason is x509.ReasonFlags.key_compromise

    with pytest.raises(PkiError) as err:
        pki.revoke(root, NODE)
    assert err.value.code == "already_revoked"
    assert [n.revoked for n in pki.list_nodes(root)] == [False, True]  # sorted: mof, mps

    # Re-enrolment replaces the keys: the node is usable again, its old serials stay revoked.
    pki.enroll(root, NODE, force=True)
    again = pki.load_revoked(root)
    assert again.node_ids == frozenset() and again.serials == after.serials
    assert pki.refresh_crl(root) == again.crl_number + 1


def test_force_enroll_revokes_the_replaced_certificates(tmp_path: Path) -> None:
    root = tmp_path / "x"
    pki.init(root)
    old = pki.enroll(root, NODE)
    old_serial = x509.load_pem_x509_certificate(old.tls_cert.read_bytes()).serial_number
    new = pki.enroll(root, NODE, force=True)
    assert pki.encode_public_key(new.signing_public_key) != pki.encode_public_key(
        old.signing_public_key
    )
    crl = x509.load_pem_x509_crl((root / "crl.pem").read_bytes())
    entry = crl.get_revoked_certificate_by_serial_number(old_serial)
    assert entry is not None
    reason = entry.extensions.get_extension_for_class(x509.CRLReason).value.reason
    assert reason is x509.ReasonFlags.superseded


def test_node_id_from_cert_accepts_der_parsed_and_dict(shared_pki: Path) -> None:
    cert = x509.load_pem_x509_certificate((shared_pki / "nodes" / NODE / "tls.crt").read_bytes())
    assert pki.node_id_from_cert(cert.public_bytes(Encoding.DER)) == NODE
    assert pki.node_id_from_cert(cert) == NODE
    assert pki.node_id_from_cert({"subjectAltName": (("URI", pki.node_uri(NODE)),)}) == NODE
    for bad in (
        {"subjectAltName": (("DNS", "localhost"),)},
        {"subjectAltName": (("URI", pki.node_uri(NODE)), ("URI", pki.node_uri(OTHER)))},
        {"subjectAltName": (("URI", pki.NODE_URI_PREFIX + "../etc"),)},
        b"not a certificate",
    ):
        with pytest.raises(AuthError) as err:
            pki.node_id_from_cert(bad)
        assert err.value.code == "bad_certificate"


# -- TLS over real sockets -----------------------------------------------------------------------


Seen = list[tuple[str, str | None]]


@asynccontextmanager
async def broker(ctx: ssl.SSLContext) -> AsyncIterator[tuple[str, Seen]]:
    """A real aiohttp server on a free 127.0.0.1 port; yields its URL and the (node, tls) seen."""
    seen: Seen = []

    async def whoami(request: web.Request) -> web.Response:
        assert request.transport is not None
        sslobj = request.transport.get_extra_info("ssl_object")
        node_id = pki.node_id_from_cert(sslobj.getpeercert(binary_form=True))
        seen.append((node_id, sslobj.version()))
        return web.json_response({"node": node_id})

    app = web.Application()
    app.router.add_get("/whoami", whoami)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=ctx)
    await site.start()
    try:
        port = runner.addresses[0][1]
        yield f"https://127.0.0.1:{port}/whoami", seen
    finally:
        await runner.cleanup()


async def get(url: str, ctx: ssl.SSLContext) -> dict[str, str]:
    """One request on a fresh connection (the server records the TLS version it negotiated)."""
    async with (
        aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=ctx, force_close=True)) as s,
        s.get(url) as resp,
    ):
        resp.raise_for_status()
        body: dict[str, str] = await resp.json()
        return body


def bare_client_context(ca: Path) -> ssl.SSLContext:
    """Trusts the exchange CA but presents no certificate."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.load_verify_locations(cafile=ca)
    return ctx


async def test_mutual_tls_13_names_the_node(shared_pki: Path) -> None:
    async with broker(pki.server_ssl_context(shared_pki)) as (url, seen):
        for node_id in (NODE, OTHER):
            assert await get(url, pki.client_ssl_context(shared_pki, node_id)) == {"node": node_id}
        ident = pki.load_node_identity(shared_pki, NODE)
        assert await get(url, pki.client_ssl_context(ident)) == {"node": NODE}
    assert seen == [(NODE, "TLSv1.3"), (OTHER, "TLSv1.3"), (NODE, "TLSv1.3")]


async def test_client_without_certificate_is_refused(shared_pki: Path) -> None:
    async with broker(pki.server_ssl_context(shared_pki)) as (url, seen):
        # TLS 1.3: the client finishes its side first, so the refusal (a certificate_required
        # alert) arrives on the first read, as a connection error rather than at connect.
        with pytest.raises(aiohttp.ClientError):
            await get(url, bare_client_context(shared_pki / "ca.crt"))
    assert seen == []


async def test_certificate_from_a_foreign_ca_is_refused(shared_pki: Path, tmp_path: Path) -> None:
    foreign = tmp_path / "foreign"
    pki.init(foreign)
    pki.enroll(foreign, NODE)  # same node id, same CA name: only the signature tells them apart
    ctx = pki.client_ssl_context(foreign, NODE)
    ctx.load_verify_locations(cafile=shared_pki / "ca.crt")  # so only the server can object
    async with broker(pki.server_ssl_context(shared_pki)) as (url, seen):
        with pytest.raises(aiohttp.ClientError):
            await get(url, ctx)
    assert seen == []


async def test_node_refuses_a_broker_from_a_foreign_ca(shared_pki: Path, tmp_path: Path) -> None:
    foreign = tmp_path / "foreign"
    pki.init(foreign)
    async with broker(pki.server_ssl_context(foreign)) as (url, seen):
        with pytest.raises(aiohttp.ClientConnectorCertificateError):
            await get(url, pki.client_ssl_context(shared_pki, NODE))
    assert seen == []


async def test_tls_12_is_refused(shared_pki: Path) -> None:
    ctx = pki.client_ssl_context(shared_pki, NODE)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    async with broker(pki.server_ssl_context(shared_pki)) as (url, seen):
        with pytest.raises(aiohttp.ClientError):
            await get(url, ctx)
    assert seen == []


async def test_revoked_node_is_refused_at_the_handshake(tmp_path: Path) -> None:
    root = tmp_path / "x"
    pki.init(root)
    pki.enroll(root, NODE)
    pki.enroll(root, OTHER)
    node_ctx = pki.client_ssl_context(root, NODE)
    other_ctx = pki.client_ssl_context(root, OTHER)

    async with broker(pki.server_ssl_context(root)) as (url, seen):
        assert (await get(url, node_ctx)) == {"node": NODE}
        pki.revoke(root, NODE)
        # A context reads the CRL when it is built: this one still admits the node.
        assert (await get(url, node_ctx)) == {"node": NODE}

    async with broker(pki.server_ssl_context(root)) as (url, seen):
        with pytest.raises(aiohttp.ClientError):
            await get(url, node_ctx)
        assert (await get(url, other_ctx)) == {"node": OTHER}
    assert seen == [(OTHER, "TLSv1.3")]


async def test_server_tls_reload_applies_to_a_listening_socket(tmp_path: Path) -> None:
    root = tmp_path / "x"
    pki.init(root)
    pki.enroll(root, NODE)
    tls = pki.ServerTLS(root)
    node_ctx = pki.client_ssl_context(root, NODE)
    async with broker(tls.context) as (url, seen):
        assert (await get(url, node_ctx)) == {"node": NODE}
        pki.revoke(root, NODE)
        tls.reload()
        with pytest.raises(aiohttp.ClientError):
            await get(url, node_ctx)
        # Re-enrolled with fresh keys, the node is admitted again after the next reload.
        pki.enroll(root, NODE, force=True)
        tls.reload()
        assert (await get(url, pki.client_ssl_context(root, NODE))) == {"node": NODE}
    assert seen == [(NODE, "TLSv1.3"), (NODE, "TLSv1.3")]


# -- CLI -----------------------------------------------------------------------------------------


def test_cli_init_enroll_list_revoke(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = str(tmp_path / "pki")
    assert cli_main(["pki", "init", root, "--host", "broker.example"]) == 0
    assert cli_main(["pki", "enroll", "--insecure-central-keys", root, NODE]) == 0
    assert cli_main(["pki", "enroll", "--insecure-central-keys", root, OTHER]) == 0
    assert cli_main(["pki", "revoke", root, OTHER, "--reason", "key-compromise"]) == 0
    capsys.readouterr()
    assert cli_main(["pki", "list", root]) == 0
    out = capsys.readouterr().out
    lines = {line.split()[0]: line for line in out.splitlines()[1:]}
    assert "revoked" in lines[OTHER]
    assert "active" in lines[NODE]
    assert cli_main(["pki", "crl", root]) == 0
    assert os.stat(Path(root) / "nodes" / NODE / "tls.key").st_mode & 0o777 == 0o600


def test_cli_errors_exit_1_with_the_message(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = str(tmp_path / "pki")
    # central key generation only behind its explicit flag
    with pytest.raises(SystemExit) as exit_:
        cli_main(["pki", "enroll", root, NODE])
    assert exit_.value.code == 2
    assert "--insecure-central-keys" in capsys.readouterr().err
    assert cli_main(["pki", "enroll", "--insecure-central-keys", root, NODE]) == 1
    err = capsys.readouterr().err
    assert "holds no exchange CA" in err and "Traceback" not in err
    assert cli_main(["pki", "init", root]) == 0
    assert cli_main(["pki", "enroll", "--insecure-central-keys", root, "Bad_Id"]) == 1
    assert "invalid node id" in capsys.readouterr().err
    assert cli_main(["pki", "enroll", "--insecure-central-keys", root, NODE]) == 0
    assert cli_main(["pki", "enroll", "--insecure-central-keys", root, NODE]) == 1
    assert "already enrolled" in capsys.readouterr().err
    assert cli_main(["pki", "enroll", "--insecure-central-keys", root, NODE, "--force"]) == 0
    assert cli_main(["pki", "revoke", root, "vn.gov.nobody"]) == 1
    assert "not enrolled" in capsys.readouterr().err
