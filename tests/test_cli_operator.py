"""The command line as an operator meets it: exit statuses that mean something, errors that say
what to do (a refused certificate is not an unreachable broker), ``--version``, help for every
argument, one name for the broker's URL, shell completion, and the broker under systemd
(``Type=notify``, SIGHUP reloads). Real brokers on 127.0.0.1 where a broker is involved."""

from __future__ import annotations

import argparse
import asyncio
import configparser
import contextlib
import importlib.metadata
import json
import os
import shlex
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from exchange import pki
from exchange.cli import DISTRIBUTION, build_parser, main
from exchange.cli.node import failed_entirely
from exchange.core.errors import AuthError, Code, UnavailableError
from exchange.node import Node
from exchange.node.client import certificate_alert
from exchange.sim.agencies import broker_toml
from tests.conftest import OWNERS, Env, make_pki, people

ROOT = Path(__file__).resolve().parent.parent
NODES = ROOT / "nodes"
UNIT = ROOT / "deploy" / "systemd" / "exchange-broker.service"
POP = OWNERS["population"]


async def exchange_cli(*args: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    """``python -m exchange ARGS`` without blocking the loop that serves the broker."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "exchange", *args, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    async with asyncio.timeout(120):
        out, err = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


def parsers(parser: argparse.ArgumentParser, path: tuple[str, ...] = ("exchange",)
            ) -> Iterator[tuple[tuple[str, ...], argparse.ArgumentParser,
                                argparse._SubParsersAction[argparse.ArgumentParser] | None]]:
    """Every parser of the tree, with its path and its subcommands (if any)."""
    subs = next((a for a in parser._actions if isinstance(a, argparse._SubParsersAction)), None)
    yield path, parser, subs
    if subs is not None:
        for name, child in subs.choices.items():
            yield from parsers(child, (*path, name))


# -- 1, 2: `node run` fails loudly, and a refused certificate is named as such ------------------

def test_publishing_failed_entirely_only_when_nothing_reached_the_broker() -> None:
    assert failed_entirely(20, 20)
    assert not failed_entirely(20, 19)  # one record got a receipt (or a refusal): it published
    assert not failed_entirely(0, 0)  # stopped before publishing anything: nothing failed


async def _ignore(_: Any) -> None:
    """A subscription handler that is never called."""


async def test_a_revoked_node_is_told_its_certificate_was_refused(env: Env) -> None:
    def refused(err: AuthError) -> None:
        assert err.code == Code.CERTIFICATE_REFUSED and err.status == 401
        assert f"refused the TLS certificate of node {POP}" in err.message
        assert "revoked, expired or issued by another CA" in err.message
        assert "exchange pki list" in err.message and "openssl x509 -in" in err.message

    async with contextlib.AsyncExitStack() as stack:
        # connected and publishing, over HTTP and over the publish WebSocket
        nodes = [await stack.enter_async_context(Node(env.node_config(
            POP, retries=3, transport=transport))) for transport in ("http", "websocket")]
        for i, node in enumerate(nodes):
            assert (await node.publish("population", people(2, seed=10 + i))).seqs
        head = await env.broker.store.head("population")
        pki.revoke(env.pki_dir, POP)
        env.broker.reload()
        # the next batch, on a new connection, fails at once: no retry makes it better
        for node in nodes:
            with pytest.raises(AuthError) as caught:
                await node.publish("population", people(2, seed=3))
            refused(caught.value)
    # a subscription is ended with the same error, not retried for ever as "unreachable"
    async with Node(env.node_config(POP, retries=0)) as node:
        sub = node.subscribe("population", "revoked", _ignore)
        assert sub.task is not None
        with pytest.raises(AuthError) as caught:
            await asyncio.wait_for(sub.task, 30)
        refused(caught.value)
    # a node starting afresh is told the same before it publishes anything
    async with Node(env.node_config(POP, retries=0)) as node:
        with pytest.raises(AuthError) as caught:
            await node.get_json("/v1/datasets")
        refused(caught.value)
    assert await env.broker.store.head("population") == head  # nothing more got in

    rc, out, err_text = await exchange_cli(
        "node", "run", str(NODES / "population.toml"), "--broker", env.url, "--pki",
        str(env.pki_dir), "--records", "20", "--seed", "4", "--json")
    assert rc == 1, err_text
    summary = json.loads(out)
    assert summary["published"] == summary["failed"] == 20 and summary["accepted"] == 0
    assert set(summary["errors"]) == {"certificate_refused"}
    assert "exchange node run: publishing failed: none of the 20 records" in err_text
    assert "refused the TLS certificate" in err_text and "unreachable" not in err_text
    assert "Traceback" not in err_text


async def test_node_run_exits_0_when_it_published(env: Env) -> None:
    rc, out, err = await exchange_cli(
        "node", "run", str(NODES / "population.toml"), "--broker", env.url, "--pki",
        str(env.pki_dir), "--records", "20", "--seed", "4", "--faults", "0")
    assert rc == 0, err
    assert "published 20, accepted 20" in out and "publishing failed" not in err


async def test_a_broker_that_is_down_is_still_unreachable(tmp_path: Path, env: Env) -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    async with Node(env.node_config(POP, retries=0, brokers=[f"https://127.0.0.1:{port}"])
                    ) as node:
        with pytest.raises(UnavailableError) as caught:
            await node.get_json("/v1/datasets")
    assert caught.value.code == Code.BROKER_UNREACHABLE


def test_a_tls_alert_about_the_certificate_is_recognised() -> None:
    revoked = ssl.SSLError(1, "[SSL: SSLV3_ALERT_CERTIFICATE_REVOKED] sslv3 alert certificate "
                              "revoked (_ssl.c:2580)")
    assert certificate_alert(revoked) == "certificate revoked"
    unknown_ca = ssl.SSLError(1, "[SSL: TLSV1_ALERT_UNKNOWN_CA] tlsv1 alert unknown ca")
    wrapped = aiohttp.ClientOSError(104, "Connection reset by peer")
    wrapped.__cause__ = unknown_ca
    assert certificate_alert(wrapped) == "unknown ca"
    assert certificate_alert(ssl.SSLError(1, "[SSL: WRONG_VERSION_NUMBER] wrong version")) is None
    assert certificate_alert(ConnectionResetError(104, "Connection reset by peer")) is None


# -- 3, 4, 5: --version, help for every argument, help that renders -----------------------------

def test_version_is_the_installed_distributions(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0
    assert capsys.readouterr().out == f"exchange {importlib.metadata.version(DISTRIBUTION)}\n"
    name = (ROOT / "pyproject.toml").read_text(encoding="utf-8").split('name = "')[1]
    assert name.split('"')[0] == DISTRIBUTION


def test_every_subcommand_and_positional_argument_has_help() -> None:
    missing = []
    walked = 0
    for path, parser, subs in parsers(build_parser()):
        walked += 1
        if subs is not None:
            helps = {a.dest: a.help for a in subs._choices_actions}
            missing += [f"{' '.join(path)} {name}" for name in subs.choices
                        if not (helps.get(name) or "").strip()]
        missing += [f"{' '.join(path)} <{a.dest}>" for a in parser._actions
                    if not a.option_strings and not isinstance(a, argparse._SubParsersAction)
                    and not (a.help or "").strip()]
    assert walked > 40  # the whole tree, subcommands of subcommands too
    assert missing == []


def test_every_help_renders_with_no_doubled_percent() -> None:
    for path, parser, _ in parsers(build_parser()):
        text = parser.format_help()
        assert "%%" not in text, path
        assert parser.format_usage().startswith("usage: " + " ".join(path)), path
    bench = dict((p, x) for p, x, _ in parsers(build_parser()))[("exchange", "bench")]
    assert "50%/90%" in " ".join(bench.format_help().split())


# -- 6: one name for the broker's URL -----------------------------------------------------------

async def test_audit_takes_broker_and_still_reads_url(
        env: Env, capsys: pytest.CaptureFixture[str]) -> None:
    parser = build_parser()
    audit = dict((p, x) for p, x, _ in parsers(parser))[("exchange", "audit")]
    assert "--broker URL" in audit.format_help() and "--url" not in audit.format_help()
    for name in ("quality", "dead-letters", "audit"):
        sub = dict((p, x) for p, x, _ in parsers(parser))[("exchange", name)]
        assert "--broker" in sub.format_help(), name
    async with Node(env.node_config(POP)) as node:
        await node.publish("population", people(3, seed=5))
    who = ["--pki", str(env.pki_dir), "--node", OWNERS["tax"], "--json"]
    rc = await asyncio.to_thread(main, ["audit", "--broker", env.url, *who])
    captured = capsys.readouterr()
    assert rc == 0 and json.loads(captured.out)["entries"] == 3 and captured.err == ""
    rc = await asyncio.to_thread(main, ["audit", "--url", env.url, *who])
    captured = capsys.readouterr()
    assert rc == 0 and json.loads(captured.out)["entries"] == 3
    assert "--url is deprecated, say --broker" in captured.err


# -- 7: "next page" only when there is one --------------------------------------------------------

async def test_dead_letters_names_a_next_page_only_when_there_is_one(env: Env) -> None:
    bad = people(3, seed=6)
    for record in bad:
        record["sex"] = "X"
    async with Node(env.node_config(POP)) as node:
        result = await node.publish("population", bad)
    assert len({v.index for v in result.rejected}) == 3
    who = ["--node", POP, "--pki", str(env.pki_dir), "--broker", env.url]
    rc, out, err = await exchange_cli("dead-letters", *who, "--limit", "2")
    assert rc == 0, err
    assert len(out.splitlines()) == 3  # the heading and two entries
    second = out.splitlines()[2].split()[0]
    assert f"2 dead letter(s); next page: --after {second}" in err
    rc, out, err = await exchange_cli("dead-letters", *who, "--after", second)
    assert rc == 0, err
    assert len(out.splitlines()) == 2 and "next page" not in err and "no more" in err
    rc, out, err = await exchange_cli("dead-letters", *who, "--limit", "3")
    assert rc == 0 and len(out.splitlines()) == 4 and "next page" not in err


# -- 8: demo and bench: where the broker listens, where the files go --------------------------

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def test_demo_listens_where_told_and_works_in_the_work_dir(tmp_path: Path) -> None:
    port = _free_port()
    work = tmp_path / "work"
    run = subprocess.run(
        [sys.executable, "-m", "exchange", "demo", "--records", "300", "--seed", "1", "--json",
         "--listen", f"127.0.0.1:{port}", "--work-dir", str(work)],
        capture_output=True, text=True, timeout=180, check=False)
    assert run.returncode == 0, run.stderr[-3000:]
    assert f"broker listening on https://127.0.0.1:{port} " in run.stderr
    summary = json.loads(run.stdout)
    assert summary["published"] == 300 and summary["kept"]
    assert Path(summary["data_dir"]) == work.resolve()
    assert (work / "exchange.toml").is_file() and (work / "broker.log").is_file()
    bad = subprocess.run([sys.executable, "-m", "exchange", "demo", "--listen", "8443"],
                         capture_output=True, text=True, timeout=60, check=False)
    assert bad.returncode == 2 and "is not HOST:PORT" in bad.stderr


def test_bench_takes_listen_and_work_dir(tmp_path: Path) -> None:
    from benchmarks.bench import options_from

    args = build_parser().parse_args(["bench", "--quick", "--listen", "127.0.0.1:18443",
                                      "--work-dir", str(tmp_path)])
    opts = options_from(args)
    assert (opts.listen, opts.work_dir) == ("127.0.0.1:18443", tmp_path)
    from benchmarks.harness import BrokerProcess
    from benchmarks.scenarios import Context

    group = Context(root=tmp_path, pki_dir=tmp_path / "pki", listen=opts.listen).broker("x")
    assert group.listen == "127.0.0.1:18443"
    # each broker process of the group serves there (they run one after another)
    process = BrokerProcess(group.root, group.pki_dir, group.store, listen=group.listen)
    assert process.config()["listen"] == "127.0.0.1:18443"
    with pytest.raises(SystemExit):
        build_parser().parse_args(["bench", "--listen", "nope"])


# -- 9: shell completion --------------------------------------------------------------------------

def test_shell_completion_completes_subcommands(tmp_path: Path) -> None:
    # what bash's completion function does: the line so far in COMP_LINE, the answer on fd 8
    line = "exchange sch"
    env = {**os.environ, "_ARGCOMPLETE": "1", "_ARGCOMPLETE_IFS": "\n",
           "COMP_LINE": line, "COMP_POINT": str(len(line)), "COMP_TYPE": "9"}
    exe = shlex.quote(sys.executable)
    run = subprocess.run(["bash", "-c", f"exec {exe} -m exchange 8>&1 1>/dev/null 9>/dev/null"],
                         env=env, capture_output=True, text=True, timeout=60, check=False)
    assert run.returncode == 0, run.stderr
    assert run.stdout.split() == ["schema"]
    line = "exchange broker re"
    env.update(COMP_LINE=line, COMP_POINT=str(len(line)))
    run = subprocess.run(["bash", "-c", f"exec {exe} -m exchange 8>&1 1>/dev/null 9>/dev/null"],
                         env=env, capture_output=True, text=True, timeout=60, check=False)
    assert run.stdout.split() == ["reload"]
    # register-python-argcomplete completes an installed script only if its module says so
    head = (ROOT / "exchange" / "cli" / "__init__.py").read_bytes()[:1024]
    assert b"PYTHON_ARGCOMPLETE_OK" in head
    dist = importlib.metadata.distribution(DISTRIBUTION)
    assert any(ep.name == "exchange" and ep.value == "exchange.cli:main"
               for ep in dist.entry_points)
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    assert any(r.startswith("argcomplete") for r in project["dependencies"])


# -- 10, 11: the broker under systemd -------------------------------------------------------------

def _unit() -> configparser.ConfigParser:
    unit = configparser.ConfigParser(strict=False, interpolation=None, delimiters=("=",))
    unit.optionxform = str  # type: ignore[assignment,method-assign]
    unit.read_string(UNIT.read_text(encoding="utf-8"))
    return unit


def test_the_systemd_unit_is_hardened_and_runs_our_command() -> None:
    service = _unit()["Service"]
    want = {"Type": "notify", "NoNewPrivileges": "yes", "ProtectSystem": "strict",
            "ProtectHome": "yes", "PrivateTmp": "yes", "ProtectKernelTunables": "yes",
            "ProtectKernelModules": "yes", "ProtectControlGroups": "yes",
            "RestrictAddressFamilies": "AF_INET AF_INET6 AF_UNIX", "LockPersonality": "yes",
            "MemoryDenyWriteExecute": "yes", "CapabilityBoundingSet": "",
            "User": "exchange", "Restart": "on-failure", "ReadWritePaths": "/var/lib/exchange",
            "ExecReload": "/bin/kill -HUP $MAINPID"}
    assert {k: service.get(k) for k in want} == want
    # configparser keeps the last of a repeated key: the first SystemCallFilter is the allow list
    assert "SystemCallFilter=@system-service\n" in UNIT.read_text(encoding="utf-8")
    argv = shlex.split(service["ExecStart"])
    assert argv[0].endswith("/bin/exchange")
    args = build_parser().parse_args(argv[1:])
    assert (args.command, args.broker_command) == ("broker", "serve")
    assert args.config == Path("/etc/exchange/exchange.toml")


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="no systemd-analyze here")
def test_systemd_analyze_verifies_the_unit(tmp_path: Path) -> None:
    # verify checks that ExecStart's program exists: point it at this checkout's `exchange`
    exe = Path(sys.executable).with_name("exchange")
    assert exe.is_file()
    unit = tmp_path / UNIT.name
    unit.write_text(UNIT.read_text(encoding="utf-8").replace(
        "/opt/exchange/venv/bin/exchange", str(exe)), encoding="utf-8")
    run = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True,
                         text=True, timeout=60, check=False)
    # an unknown or misspelt key is only a warning: any output is a finding
    assert (run.returncode, run.stdout + run.stderr) == (0, "")


@contextlib.contextmanager
def notify_socket(path: Path) -> Iterator[socket.socket]:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(60)  # a bound on a broken broker; each recv returns as the message comes
    try:
        yield sock
    finally:
        sock.close()


def _message(sock: socket.socket) -> dict[str, str]:
    return dict(line.split("=", 1) for line in sock.recv(4096).decode().splitlines())


def test_sighup_reloads_and_systemd_is_told(tmp_path: Path) -> None:
    make_pki(tmp_path)
    config = tmp_path / "exchange.toml"
    toml = broker_toml("pki", "data", "127.0.0.1:0")
    config.write_text(toml, encoding="utf-8")
    agreements = toml.count("[[agreements]]")
    with notify_socket(tmp_path / "notify") as sock, (tmp_path / "broker.log").open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "exchange", "broker", "serve", "--config", str(config)],
            env={**os.environ, "NOTIFY_SOCKET": str(tmp_path / "notify")},
            stdout=subprocess.DEVNULL, stderr=log)
        try:
            ready = _message(sock)
            assert ready["READY"] == "1" and ready["MAINPID"] == str(proc.pid)
            assert ready["STATUS"].startswith("serving on 127.0.0.1:")
            # one agreement fewer, and SIGHUP: what `exchange broker reload` does
            config.write_text(toml.rsplit("[[agreements]]", 1)[0], encoding="utf-8")
            proc.send_signal(signal.SIGHUP)
            assert _message(sock)["RELOADING"] == "1"
            done = _message(sock)
            assert done == {"READY": "1", "STATUS": f"reloaded: 4 datasets, {agreements - 1} "
                                                    "agreements"}
            # a config the checks refuse: the broker says so and keeps serving the old one
            config.write_text(toml.replace('dataset = "population"', 'dataset = "nope"', 1),
                              encoding="utf-8")
            proc.send_signal(signal.SIGHUP)
            assert _message(sock)["RELOADING"] == "1"
            assert _message(sock)["STATUS"].startswith("reload refused, previous config kept")
            proc.send_signal(signal.SIGTERM)
            assert _message(sock) == {"STOPPING": "1"}
            assert proc.wait(60) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    text = (tmp_path / "broker.log").read_text(encoding="utf-8")
    assert '"reloaded"' in text and '"reload_failed"' in text
