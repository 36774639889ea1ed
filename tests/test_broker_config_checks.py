"""The broker's config checks: every problem with its path, the same for ``check-config``,
``serve`` and a reload; ``broker reload`` waits for the broker's answer.

The pure check is tested directly; the commands run as real processes (``python -m exchange``)
over real files and a real PKI; the reload talks to a broker served in this test's event loop
over its real control socket, and the config in force is read back through a real TLS
subscription."""

from __future__ import annotations

import asyncio
import datetime as dt
import errno
import json
import os
import socket
import stat
import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import msgspec
import pytest

from exchange import pki
from exchange.broker import checks, control
from exchange.broker.app import load_config
from exchange.broker.checks import registry_groups
from exchange.broker.server import serve
from exchange.core.access import (
    Agreement,
    BrokerConfig,
    DatasetConfig,
    Limits,
    Policy,
    check_config,
    parse_config,
    parse_listen,
    problems_of,
)
from exchange.core.errors import ConflictError, InputError, UnavailableError
from exchange.sim.topology import broker_config as reference_config
from exchange.sim.topology import broker_toml
from tests.conftest import OUTSIDER, OWNERS, make_pki

GROUPS = registry_groups()  # name -> version -> groups
BROKER = pki.BROKER_ID
POP, TAX, LAND = OWNERS["population"], OWNERS["tax"], OWNERS["land"]
NEVER = "vn.gov.never.enrolled"
ENROLLED = {BROKER, *OWNERS.values(), OUTSIDER}

#: appended to the reference config: three problems in two agreements
BROKEN = f"""
[[agreements]]
subscriber = "{OUTSIDER}"
dataset = "weather"
purpose = "forecasting"

[[agreements]]
subscriber = "{NEVER}"
dataset = "population"
purpose = "research"
groups = ["identity", "salary"]
"""
BROKEN_PATHS = [("agreements[4].dataset", "unknown_dataset"),
                ("agreements[5].subscriber", "not_enrolled"),
                ("agreements[5].groups[1]", "unknown_group")]

#: appended to the reference config: a new agreement, granting the outsider one group
GRANT = f"""
[[agreements]]
subscriber = "{OUTSIDER}"
dataset = "population"
purpose = "statistics"
groups = ["identity"]
"""


# -- the pure check ------------------------------------------------------------------------------


def test_the_pure_check_reports_every_problem_with_its_path() -> None:
    past = dt.datetime(2020, 1, 1, tzinfo=dt.UTC)
    config = BrokerConfig(
        node_id="vn.gov.ndc.other", listen="localhost", store="redis://cache:6379",
        checkpoint_interval_s=0.0,
        limits=Limits(max_batch_records=0, ack_timeout_s=float("nan")),
        datasets=[DatasetConfig("population", POP), DatasetConfig("weather", POP),
                  DatasetConfig("population", TAX), DatasetConfig("tax", "vn.gov.mof.ghost")],
        agreements=[
            # expired: grants nothing, and is no problem
            Agreement(subscriber=TAX, dataset="population", purpose="old contract",
                      groups=["identity"], expires=past),
            Agreement(subscriber=TAX, dataset="land", purpose="not served here"),
            Agreement(subscriber=LAND, dataset="population", purpose="typo in a group",
                      groups=["identity", "salary", "identity"]),
            Agreement(subscriber=NEVER, dataset="tax", purpose="never enrolled"),
            Agreement(subscriber=POP, dataset="population", purpose="its own dataset"),
        ])
    found = check_config(config, groups=GROUPS, enrolled=ENROLLED, broker_id=BROKER)
    assert [(p.path, p.code) for p in found] == [
        ("node_id", "bad_config"),
        ("listen", "bad_config"),
        ("store", "bad_config"),
        ("checkpoint_interval_s", "bad_config"),
        ("limits.max_batch_records", "bad_config"),
        ("limits.ack_timeout_s", "bad_config"),
        ("datasets[1].name", "unknown_dataset"),
        ("datasets[2].name", "duplicate_dataset"),
        ("datasets[3].owner", "not_enrolled"),
        ("agreements[1].dataset", "unknown_dataset"),
        ("agreements[2].groups[1]", "unknown_group"),
        ("agreements[2].groups[2]", "bad_config"),
        ("agreements[3].subscriber", "not_enrolled"),
        ("agreements[4].subscriber", "bad_config"),
    ]
    by_path = {p.path: p.message for p in found}
    assert "salary" in by_path["agreements[2].groups[1]"]
    assert NEVER in by_path["agreements[3].subscriber"]
    assert "weather" in by_path["datasets[1].name"]


def test_the_reference_exchange_has_no_problem() -> None:
    config = reference_config("certs", "data", "127.0.0.1:0")
    assert check_config(config, groups=GROUPS, enrolled=ENROLLED, broker_id=BROKER) == []
    # what is not given is not checked: without the PKI nobody is "not enrolled"
    assert check_config(config, groups=GROUPS) == []


def test_every_limit_is_a_positive_number() -> None:
    config = BrokerConfig(limits=Limits(max_body_bytes=-1, idle_timeout_s=float("inf"),
                                        max_connections_per_node=1))
    assert [p.path for p in check_config(config)] == ["limits.max_body_bytes",
                                                      "limits.idle_timeout_s"]
    # one limit below another's default is a choice, not a problem
    assert check_config(BrokerConfig(limits=Limits(max_body_bytes=4096))) == []


def test_policy_names_every_problem_in_one_error() -> None:
    config = BrokerConfig(
        datasets=[DatasetConfig("population", POP)],
        agreements=[Agreement(subscriber=TAX, dataset="land", purpose="not served"),
                    Agreement(subscriber=NEVER, dataset="population", purpose="research",
                              groups=["salary"])])
    with pytest.raises(InputError) as info:
        Policy(config, GROUPS, enrolled=ENROLLED)
    assert info.value.code == "bad_config"
    paths = ["agreements[0].dataset", "agreements[1].subscriber", "agreements[1].groups[0]"]
    assert [p.path for p in problems_of(info.value)] == paths
    assert all(p in info.value.message for p in paths)
    # the problems travel in the problem+json too
    assert [p["path"] for p in info.value.problem()["problems"]] == paths


@pytest.mark.parametrize("text, fmt, path", [
    ('listne = "127.0.0.1:1"\n', "toml", "listne"),
    ("[limits]\nmax_batch_record = 1\n", "toml", "limits.max_batch_record"),
    ('[[agreements]]\nsubscriber = "vn.gov.a.b"\ndataset = "tax"\npurpose = "x"\n', "toml",
     "agreements[0].purpose"),
    ('{"datasets": [{"name": "tax", "owner": "not a node id"}]}', "json", "datasets[0].owner"),
    ("listen = \n", "toml", ""),
    ("[1]", "json", ""),
])
def test_a_file_that_does_not_decode_is_one_problem_with_its_path(text: str, fmt: str,
                                                                  path: str) -> None:
    with pytest.raises(InputError) as info:
        parse_config(text, fmt=fmt)
    assert info.value.code == "bad_config"
    assert [p.path for p in problems_of(info.value)] == [path]


@pytest.mark.parametrize("listen, expected", [
    ("127.0.0.1:8443", ("127.0.0.1", 8443)),
    (":0", ("127.0.0.1", 0)),
    ("[::1]:443", ("::1", 443)),
    ("broker.example:65535", ("broker.example", 65535)),
])
def test_listen_is_host_and_port(listen: str, expected: tuple[str, int]) -> None:
    assert parse_listen(listen) == expected


@pytest.mark.parametrize("listen", ["8443", "localhost", "host:http", "host:65536", "::1:443",
                                    "host:-1", "a b:1"])
def test_listen_that_is_not_host_and_port(listen: str) -> None:
    with pytest.raises(InputError):
        parse_listen(listen)


# -- check-config and serve, as commands -----------------------------------------------------------


@pytest.fixture(scope="module")
def pki_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One exchange PKI for the command tests (read only): the four owners and the outsider."""
    return make_pki(tmp_path_factory.mktemp("exchange"))


def write(path: Path, pki_dir: Path, extra: str = "", listen: str = "127.0.0.1:0") -> Path:
    path.write_text(broker_toml(str(pki_dir), str(path.parent / "data"), listen) + extra,
                    encoding="utf-8")
    return path


def exchange(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "exchange", *args], capture_output=True,
                          text=True, timeout=120, cwd=cwd)


def problem_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if not line.startswith("exchange broker")]


def test_check_config_reports_each_problem_with_its_path(tmp_path: Path, pki_dir: Path) -> None:
    config = write(tmp_path / "exchange.toml", pki_dir, BROKEN)
    done = exchange("broker", "check-config", "-c", str(config), cwd=tmp_path)
    assert done.returncode == 1, done.stderr
    assert "Traceback" not in done.stderr
    assert done.stdout == ""
    lines = problem_lines(done.stderr)
    assert [(line.split(": ")[0], line.rsplit("(", 1)[1].rstrip(")")) for line in lines] == \
        BROKEN_PATHS
    assert "'weather'" in lines[0] and NEVER in lines[1] and "'salary'" in lines[2]
    # the same, for machines
    done = exchange("broker", "check-config", "-c", str(config), "--json", cwd=tmp_path)
    assert done.returncode == 1
    assert [(p["path"], p["code"]) for p in json.loads(done.stdout)] == BROKEN_PATHS
    # nothing was created by checking
    assert not (tmp_path / "data").exists()


def test_serve_refuses_with_the_same_lines_and_no_traceback(tmp_path: Path,
                                                           pki_dir: Path) -> None:
    config = write(tmp_path / "exchange.toml", pki_dir, BROKEN)
    checked = exchange("broker", "check-config", "-c", str(config), cwd=tmp_path)
    served = exchange("broker", "serve", "-c", str(config), cwd=tmp_path)
    assert served.returncode == 1
    assert "Traceback" not in served.stderr
    assert problem_lines(served.stderr) == problem_lines(checked.stderr)
    assert served.stderr.splitlines()[-1] == (
        "exchange broker serve: not started: 3 problems in the config")
    assert not (tmp_path / "data").exists()


@pytest.mark.parametrize("case", ["bad toml", "missing pki", "missing file", "bad listen"])
def test_check_config_and_serve_on_a_file_they_cannot_use(case: str, tmp_path: Path,
                                                         pki_dir: Path) -> None:
    config = tmp_path / "exchange.toml"
    args: list[str] = []
    if case == "bad toml":
        config.write_text('listen = "127.0.0.1:0\n', encoding="utf-8")
        expected = f"{config}: not valid TOML: "
    elif case == "missing pki":
        write(config, tmp_path / "no-pki")
        expected = "pki_dir: "
    elif case == "missing file":
        expected = f"{config}: cannot read the file: "
    else:
        write(config, pki_dir)
        args = ["--listen", "localhost"]  # the override is checked like the file
        expected = "listen: "
    for command in ("check-config", "serve"):
        done = exchange("broker", command, "-c", str(config), *args, cwd=tmp_path)
        assert done.returncode == 1, (command, done.stderr)
        assert "Traceback" not in done.stderr, command
        assert problem_lines(done.stderr)[0].startswith(expected), (command, done.stderr)
    if case == "missing pki":
        assert "(not_initialised)" in done.stderr


def test_serve_on_a_port_in_use_says_so_in_one_line(tmp_path: Path, pki_dir: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        config = write(tmp_path / "exchange.toml", pki_dir, listen=f"127.0.0.1:{port}")
        done = exchange("broker", "serve", "-c", str(config), "--log-level", "error",
                        cwd=tmp_path)
    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    assert done.stderr.splitlines() == [
        f"exchange broker serve: not started: cannot listen on 127.0.0.1:{port}: "
        f"{os.strerror(errno.EADDRINUSE)} (unavailable)"]
    left = {p.name for p in (tmp_path / "data").iterdir()}
    assert not left & {"broker.sock", "broker.pid"}, left


def test_a_good_config_is_ok(tmp_path: Path, pki_dir: Path) -> None:
    config = write(tmp_path / "exchange.toml", pki_dir)
    done = exchange("broker", "check-config", "-c", str(config), cwd=tmp_path)
    assert (done.returncode, done.stderr) == (0, "")
    assert done.stdout == "ok: 4 datasets, 4 agreements, 5 enrolled nodes\n"
    done = exchange("broker", "check-config", "-c", str(config), "--json", cwd=tmp_path)
    assert (done.returncode, done.stdout) == (0, "[]\n")


def test_reload_without_a_broker(tmp_path: Path, pki_dir: Path) -> None:
    config = write(tmp_path / "exchange.toml", pki_dir)
    done = exchange("broker", "reload", "-c", str(config), cwd=tmp_path)
    assert done.returncode == 1
    assert done.stderr.splitlines() == [
        f"exchange broker reload: no broker answers on {tmp_path / 'data' / 'broker.sock'}; "
        "is it running with this data directory? (broker_unreachable)"]


# -- reload against a running broker -------------------------------------------------------------


@dataclass
class Served:
    config: Path
    data: Path
    url: str
    task: asyncio.Task[None]
    stop: asyncio.Event


@pytest.fixture
async def served(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> AsyncIterator[Served]:
    """``serve`` in this loop over a fresh PKI, with the reference config in a TOML file."""
    config = write(tmp_path / "exchange.toml", make_pki(tmp_path))
    ready, stop = asyncio.Event(), asyncio.Event()
    task = asyncio.create_task(serve(load_config(config), config_path=config, ready=ready,
                                     stop=stop))
    await started(task, ready)
    listening = json.loads(capsys.readouterr().out.splitlines()[-1])
    try:
        yield Served(config, tmp_path / "data", f"https://127.0.0.1:{listening['port']}",
                     task, stop)
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)
    assert not (tmp_path / "data" / "broker.sock").exists()
    assert not (tmp_path / "data" / "broker.pid").exists()


async def started(task: asyncio.Task[None], ready: asyncio.Event) -> None:
    """Until ``ready`` is set; if ``serve`` ends first, its error."""
    waiter = asyncio.create_task(ready.wait())
    done, _ = await asyncio.wait({task, waiter}, timeout=30,
                                 return_when=asyncio.FIRST_COMPLETED)
    waiter.cancel()
    if task in done:
        task.result()
        raise AssertionError("serve returned before it was ready")
    assert ready.is_set(), "serve was not ready within 30 s"


async def granted(s: Served, node: str) -> list[str] | int:
    """What ``node`` may read of population now: its groups, or the refusal's status."""
    ctx = pki.client_ssl_context(s.config.parent / "pki", node)
    async with aiohttp.ClientSession(s.url, connector=aiohttp.TCPConnector(
            ssl=ctx, force_close=True)) as session:
        try:
            async with session.ws_connect("/v1/datasets/population/subscribe?name=r") as ws:
                hello = msgspec.json.decode(await ws.receive_str(timeout=10))
                groups: list[str] = hello["granted"]
                return groups
        except aiohttp.WSServerHandshakeError as err:
            return err.status


async def reload_command(s: Served, *args: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "exchange", "broker", "reload", "-c", str(s.config), *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, cwd=s.config.parent)
    out, err = await asyncio.wait_for(proc.communicate(), 120)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_a_refused_reload_says_why_and_keeps_the_old_config(served: Served) -> None:
    good = served.config.read_text(encoding="utf-8")
    assert await granted(served, OUTSIDER) == 403
    assert stat.S_IMODE(os.stat(served.data / "broker.sock").st_mode) == 0o600

    served.config.write_text(good + BROKEN, encoding="utf-8")
    rc, out, err = await reload_command(served)
    assert (rc, out) == (1, "")
    assert "Traceback" not in err
    lines = err.splitlines()
    assert [(line.split(": ")[0], line.rsplit("(", 1)[1].rstrip(")"))
            for line in lines[:-1]] == BROKEN_PATHS
    assert lines[-1] == ("exchange broker reload: refused; the broker keeps serving its "
                         "previous config")
    # the same answer, as data
    answer = await control.request(control.socket_path(served.data), within=30)
    assert not answer.ok
    assert [(p.path, p.code) for p in answer.problems] == BROKEN_PATHS
    assert answer.config == str(served.config)

    # a file that does not even decode: the broker names the file
    served.config.write_text(good.replace('store = "sqlite"', 'store = "sqlite'),
                             encoding="utf-8")
    rc, out, err = await reload_command(served, "--data", str(served.data))
    assert rc == 1
    assert err.startswith(f"{served.config}: not valid TOML: ")
    assert "Traceback" not in err

    # the old config is still in force: healthy, and the outsider still reads nothing
    assert await granted(served, OUTSIDER) == 403
    assert await granted(served, TAX) == ["identity", "residence", "civil_status",
                                             "household"]
    assert not served.task.done()

    served.config.write_text(good + GRANT, encoding="utf-8")
    rc, out, err = await reload_command(served)
    assert (rc, err) == (0, "")
    assert out == f"reloaded: 4 datasets, 5 agreements ({served.config})\n"
    assert await granted(served, OUTSIDER) == ["identity"]


async def test_one_broker_per_data_directory(served: Served, tmp_path: Path) -> None:
    second = load_config(served.config)
    with pytest.raises(ConflictError) as info:
        await serve(second, stop=asyncio.Event())
    assert info.value.code == "conflict"
    assert "another broker" in info.value.message
    # the first one still answers, on the same socket
    answer = await control.request(control.socket_path(served.data), within=30)
    assert (answer.ok, answer.datasets, answer.agreements) == (True, 4, 4)
    unknown = await control.request(control.socket_path(served.data), "status", within=30)
    assert (unknown.ok, unknown.code) == (False, "bad_request")


async def test_a_socket_left_by_a_dead_broker_is_taken_over(tmp_path: Path,
                                                             capsys: pytest.CaptureFixture[str]
                                                             ) -> None:
    config = write(tmp_path / "exchange.toml", make_pki(tmp_path))
    data = tmp_path / "data"
    data.mkdir()
    with socket.socket(socket.AF_UNIX) as dead:  # bound, never listening, never removed
        dead.bind(str(data / "broker.sock"))
    with pytest.raises(UnavailableError) as info:
        await control.request(control.socket_path(data), within=30)
    assert info.value.code == "broker_unreachable"
    ready, stop = asyncio.Event(), asyncio.Event()
    task = asyncio.create_task(serve(load_config(config), config_path=config, ready=ready,
                                     stop=stop))
    try:
        await started(task, ready)
        answer = await control.request(control.socket_path(data), within=30)
        assert answer.ok
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)


async def test_serve_checks_before_it_opens_anything(tmp_path: Path) -> None:
    config = load_config(write(tmp_path / "exchange.toml", make_pki(tmp_path), BROKEN))
    with pytest.raises(InputError) as info:
        await serve(config, stop=asyncio.Event())
    assert [(p.path, p.code) for p in problems_of(info.value)] == BROKEN_PATHS
    assert [(p.path, p.code) for p in checks.check(config).problems] == BROKEN_PATHS
    assert not (tmp_path / "data").exists()
