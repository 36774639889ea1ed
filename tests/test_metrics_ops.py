"""The operational side of ``/metrics`` (what operators alert on), scraped from a real broker and
read back with prometheus-client's own parser; and the Grafana dashboard and Prometheus alert
rules in ``deploy/``, checked against the metric names a live broker actually exports."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import msgspec
import pytest

# PyYAML is in the dev install (schemathesis and jsonschema-path need it); it ships no stubs
import yaml  # type: ignore[import-untyped]
from cryptography import x509
from cryptography.x509.oid import NameOID
from prometheus_client.parser import text_string_to_metric_families

from exchange import pki
from exchange.core import datasets
from tests.conftest import (
    OPERATOR,
    OUTSIDER,
    OWNERS,
    Env,
    Timed,
    broker_config,
    eventually,
    people,
    sealed,
    start_broker,
    timed_broker,
)

POP = OWNERS["population"]
TAX = OWNERS["tax"]
ROOT = Path(__file__).resolve().parent.parent
DASHBOARD = ROOT / "deploy" / "grafana" / "exchange-dashboard.json"
ALERTS = ROOT / "deploy" / "prometheus" / "exchange-alerts.yml"
ALERT_TESTS = ROOT / "deploy" / "prometheus" / "exchange-alerts.test.yml"


# -- scraping ------------------------------------------------------------------------------------

class Scrape:
    """One ``/metrics`` exposition, parsed."""

    def __init__(self, text: str) -> None:
        self.families = {f.name: f for f in text_string_to_metric_families(text)}

    def value(self, name: str, **labels: str) -> float:
        """The one sample of ``name`` whose labels include ``labels``."""
        found = [s.value for s in self.samples(name) if labels.items() <= s.labels.items()]
        assert len(found) == 1, (name, labels, found)
        return float(found[0])

    def samples(self, name: str) -> list[Any]:
        return [s for f in self.families.values() for s in f.samples if s.name == name]

    def names(self) -> set[str]:
        """Every family and sample name: what a query may select."""
        return set(self.families) | {s.name for f in self.families.values()
                                     for s in f.samples}


def session(env: Env, node: str, url: str) -> aiohttp.ClientSession:
    return aiohttp.ClientSession(url, connector=aiohttp.TCPConnector(ssl=env.ssl(node)))


async def scrape(env: Env, url: str | None = None) -> Scrape:
    connector = aiohttp.TCPConnector(ssl=env.operator_ssl())
    async with aiohttp.ClientSession(url or env.url, connector=connector) as s, \
            s.get("/metrics") as resp:
        assert resp.status == 200, await resp.text()
        return Scrape(await resp.text())


async def publish(env: Env, s: aiohttp.ClientSession, n: int) -> None:
    batch = sealed(env, POP, people(n))
    async with s.post("/v1/datasets/population/records", data=msgspec.json.encode(batch),
                      headers={"Content-Type": "application/json"}) as resp:
        assert resp.status == 200, await resp.text()


@pytest.fixture
async def timed(env: Env, tmp_path: Path) -> AsyncIterator[Timed]:
    async with timed_broker(env.pki_dir, tmp_path / "timed") as t:
        yield t


# -- the broker's operational metrics ------------------------------------------------------------

async def test_log_checkpoint_nodes_lag_and_staleness_follow_the_clock(env: Env,
                                                                       timed: Timed) -> None:
    clock, broker = timed.clock, timed.broker
    t0 = clock.time()
    m = await scrape(env, timed.url)
    size0 = m.value("exchange_log_size")
    assert m.value("exchange_checkpoint_size") == size0  # signed at start: covers the log
    assert m.value("exchange_checkpoint_age_seconds") == 0.0
    assert m.value("exchange_checkpoint_interval_seconds") == broker.tlog.interval
    assert m.value("exchange_connected_nodes") == 0  # the scraping operator is no node

    # an idle log is not re-signed: its checkpoint ages with the clock
    await clock.advance(30)
    m = await scrape(env, timed.url)
    assert m.value("exchange_checkpoint_age_seconds") == 30.0

    async with session(env, POP, timed.url) as pop, session(env, TAX, timed.url) as tax:
        await publish(env, pop, 5)
        m = await scrape(env, timed.url)
        assert m.value("exchange_log_size") == size0 + 5
        assert m.value("exchange_checkpoint_size") == size0  # not yet: the timer signs it
        assert m.value("exchange_checkpoint_age_seconds") == 30.0
        assert m.value("exchange_dataset_last_record_timestamp_seconds",
                       dataset="population") == t0 + 30
        assert m.value("exchange_dataset_stale", dataset="population", publisher=POP) == 0

        # the timer's next tick signs the grown log (checkpoint() waits for it under the lock)
        await clock.advance(broker.tlog.interval)
        await broker.tlog.checkpoint()
        # a subscriber that grants no credit: everything published is its lag
        ws = await tax.ws_connect("/v1/datasets/population/subscribe?name=behind&encoding=json")
        assert json.loads((await ws.receive(timeout=10)).data)["type"] == "hello"
        m = await scrape(env, timed.url)
        assert m.value("exchange_checkpoint_size") == size0 + 5
        assert m.value("exchange_checkpoint_age_seconds") == 0.0
        lag = {"dataset": "population", "subscriber": TAX, "subscription": "behind"}
        assert m.value("exchange_subscription_lag_records", **lag) == 5
        assert m.value("exchange_subscription_lag_seconds", **lag) == broker.tlog.interval
        # both nodes hold a connection open now; an open one is seen now
        assert m.value("exchange_connected_nodes") == 2
        now = clock.time()
        assert m.value("exchange_node_last_seen_timestamp_seconds", node=TAX) == now
        assert m.value("exchange_node_last_seen_timestamp_seconds", node=POP) == now

        # quiet for exactly the update interval: still live; one second more: stale
        interval = datasets.get("population").update_interval_s
        await clock.advance(interval - broker.tlog.interval)
        m = await scrape(env, timed.url)
        assert m.value("exchange_dataset_stale", dataset="population", publisher=POP) == 0
        await clock.advance(1)
        m = await scrape(env, timed.url)
        assert m.value("exchange_dataset_stale", dataset="population", publisher=POP) == 1
        assert m.value("exchange_subscription_lag_seconds", **lag) == interval + 1
        assert m.value("exchange_subscription_lag_records", **lag) == 5
        assert m.value("exchange_checkpoint_age_seconds") == interval
        await ws.close()
        gone = clock.time()
    # the broker learns of a closed connection from its transport, which sets no event a
    # test can wait on: look again until both transports report it
    async def nobody() -> bool:
        return (await scrape(env, timed.url)).value("exchange_connected_nodes") == 0

    await eventually(nobody, what="no node connected")
    m = await scrape(env, timed.url)
    assert m.value("exchange_node_last_seen_timestamp_seconds", node=TAX) == gone


def _not_after(path: Path) -> float:
    return x509.load_pem_x509_certificate(path.read_bytes()).not_valid_after_utc.timestamp()


async def test_certificates_and_crl_expiry(env: Env) -> None:
    m = await scrape(env)
    expiry = {(s.labels["subject"], s.labels["role"], s.labels["usage"]): s.value
              for s in m.samples("exchange_certificate_expiry_timestamp_seconds")}
    ca = x509.load_pem_x509_certificate((env.pki_dir / "ca.crt").read_bytes())
    ca_name = str(ca.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value)
    broker_id = env.broker.identity.node_id
    nodes = [*OWNERS.values(), OUTSIDER]
    assert set(expiry) == {(ca_name, "ca", "ca"),
                           *((broker_id, "broker", u) for u in ("tls", "signing")),
                           *((n, "node", u) for n in nodes for u in ("tls", "signing")),
                           *((OPERATOR, "operator", u) for u in ("tls", "signing"))}
    assert expiry[(ca_name, "ca", "ca")] == ca.not_valid_after_utc.timestamp()
    assert expiry[(broker_id, "broker", "tls")] == _not_after(env.pki_dir / "broker/tls.crt")
    assert expiry[(POP, "node", "signing")] == _not_after(
        env.pki_dir / "nodes" / POP / "signing.crt")
    assert not any(s.value for s in m.samples("exchange_certificate_revoked"))
    crl = m.value("exchange_crl_next_update_timestamp_seconds")
    assert crl == env.broker.revoked.next_update.timestamp()

    # a node enrolled for three days shows at the next scrape (no reload: files are read)
    short = "vn.gov.test.shortlived"
    pki.enroll(env.pki_dir, short, validity_days=3)
    pki.revoke(env.pki_dir, OUTSIDER)
    pki.refresh_crl(env.pki_dir, days=2)
    m = await scrape(env)
    tls = m.value("exchange_certificate_expiry_timestamp_seconds", subject=short, usage="tls")
    assert tls == _not_after(env.pki_dir / "nodes" / short / "tls.crt")
    assert tls - time.time() < 3 * 86_400 + 60
    # the CRL in force is the one loaded: until the reload, neither the revocation nor the
    # new nextUpdate is in force, and the gauges say so
    assert m.value("exchange_certificate_revoked", subject=OUTSIDER, usage="tls") == 0
    assert m.value("exchange_crl_next_update_timestamp_seconds") == crl

    env.broker.reload()
    m = await scrape(env)
    for usage in ("tls", "signing"):
        assert m.value("exchange_certificate_revoked", subject=OUTSIDER, usage=usage) == 1
        # a revoked certificate still shows its expiry (the alert leaves it out, not the gauge)
        assert m.value("exchange_certificate_expiry_timestamp_seconds", subject=OUTSIDER,
                       usage=usage) == _not_after(env.pki_dir / "nodes" / OUTSIDER /
                                                  f"{usage}.crt")
    assert m.value("exchange_certificate_revoked", subject=POP, usage="tls") == 0
    next_update = pki.load_revoked(env.pki_dir).next_update.timestamp()
    assert m.value("exchange_crl_next_update_timestamp_seconds") == next_update
    assert next_update - time.time() < 2 * 86_400 + 60


async def test_process_metrics(env: Env) -> None:
    m = await scrape(env)
    assert m.value("process_resident_memory_bytes") > 0
    assert m.value("process_open_fds") > 0
    assert m.value("process_cpu_seconds_total") > 0
    # the quality tracker's families are still there, beside the operational ones
    assert "exchange_gate_records" in m.families


async def test_operational_metrics_do_not_need_quality_scoring(env: Env, tmp_path: Path) -> None:
    """With quality scoring switched off, /metrics still serves what operators alert on
    (before, it answered 404 quality_off and the alerts went blind)."""
    config = msgspec.structs.replace(broker_config(env.pki_dir, tmp_path / "q-off"),
                                     quality=False)
    _, runner, url = await start_broker(config)
    try:
        m = await scrape(env, url)
    finally:
        await runner.cleanup()
    assert m.value("exchange_log_size") == 0
    assert m.value("process_open_fds") > 0
    assert "exchange_quality_score" not in m.families  # no scores without scoring


# -- the dashboard and the alert rules -----------------------------------------------------------

#: PromQL words that are not metric names (functions are recognised by their ``(``)
_KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "and", "or",
             "unless", "bool", "offset", "inf", "nan"}
_STRIP = [
    re.compile(r'"(?:[^"\\]|\\.)*"'),  # string literals: label values, regexes
    re.compile(r"\{[^}]*\}"),  # label matchers
    re.compile(r"\[[^\]]*\]"),  # range and subquery durations
    re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)"),  # label lists
    re.compile(r"\$\{[^}]*\}|\$\w+"),  # Grafana variables
    re.compile(r"\{\{[^}]*\}\}"),  # Go templates (legends)
]
#: Grafana's variable query: its last argument is a label name
_LABEL_VALUES = re.compile(r"^\s*label_values\((.*),\s*\w+\s*\)\s*$", re.DOTALL)
_IDENT = re.compile(r"(?<![\w.:])([A-Za-z_:][\w:]*)(?![\w:]|\s*\()")
_SUFFIXES = ("_bucket", "_sum", "_count", "_total", "_created")


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression (or a Grafana ``label_values`` query) selects."""
    expr = _LABEL_VALUES.sub(r"\1", expr)
    for pattern in _STRIP:
        expr = pattern.sub(" ", expr)
    return {name for name in _IDENT.findall(expr) if name not in _KEYWORDS}


def test_metric_names_are_read_out_of_promql() -> None:
    assert metric_names('sum by (dataset) (rate(exchange_gate_records_total{outcome="a b"}'
                        '[$__rate_interval])) / on(instance) group_left(x) up > 1e3') == {
        "exchange_gate_records_total", "up"}
    assert metric_names("histogram_quantile(0.95, sum by (le) (rate(x_bucket[5m])))") == {
        "x_bucket"}
    assert metric_names("(a - time()) / 86400 < 7 unless on(s) b == bool 1") == {"a", "b"}
    assert metric_names('label_values(x_total{instance=~"$instance"}, dataset)') == {"x_total"}
    assert metric_names("histogram_quantile(0.5, y)") == {"y"}


def unknown(names: set[str], exported: set[str]) -> set[str]:
    """``names`` that are neither exported nor an exported name plus a series suffix;
    ``up`` is Prometheus's own, per scrape target."""
    return {n for n in names if n != "up" and n not in exported
            and not any(n.endswith(s) and n[:-len(s)] in exported for s in _SUFFIXES)}


@pytest.fixture
async def exported(env: Env) -> set[str]:
    """Every metric name a live broker exports (a histogram and a lag sample included)."""
    async with session(env, POP, env.url) as pop:
        await publish(env, pop, 2)
    return (await scrape(env)).names()


def _panels(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for p in panels:
        yield p
        yield from _panels(p.get("panels", []))  # panels inside a collapsed row


def test_dashboard_is_a_grafana_export() -> None:
    board = json.loads(DASHBOARD.read_text())
    assert board["schemaVersion"] >= 39
    assert {(i["name"], i["type"], i["pluginId"]) for i in board["__inputs"]} == {
        ("DS_PROMETHEUS", "datasource", "prometheus")}
    panels = [p for p in _panels(board["panels"]) if p["type"] != "row"]
    assert len({p["id"] for p in _panels(board["panels"])}) == len(list(
        _panels(board["panels"])))
    for p in panels:
        assert p["datasource"] == {"type": "prometheus", "uid": "${DS_PROMETHEUS}"}, p["title"]
        assert p["targets"] and all(t["expr"].strip() for t in p["targets"]), p["title"]
        assert {"x", "y", "w", "h"} <= p["gridPos"].keys(), p["title"]
    titles = " ".join(p["title"].lower() for p in panels)
    for topic in ("records in/out", "accepted vs rejected", "log size", "checkpoint age",
                  "connected nodes", "certificate", "crl", "subscription lag", "stale",
                  "cpu", "memory", "file descriptors"):
        assert topic in titles, topic


def test_dashboard_queries_only_exported_metrics(exported: set[str]) -> None:
    board = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in _panels(board["panels"]) for t in p.get("targets", [])]
    exprs += [v["query"]["query"] if isinstance(v["query"], dict) else v["query"]
              for v in board["templating"]["list"] if v["type"] == "query"]
    used = set().union(*(metric_names(e) for e in exprs))
    assert unknown(used, exported) == set()
    # and it shows the operational metrics, not only the quality ones
    for name in ("exchange_checkpoint_age_seconds", "exchange_connected_nodes",
                 "exchange_certificate_expiry_timestamp_seconds",
                 "exchange_crl_next_update_timestamp_seconds", "process_open_fds",
                 "exchange_dataset_stale", "exchange_subscription_lag_records"):
        assert name in used, name


# -- alert rules: their structure always; promtool's checks where it is installed ----------------

ALERT_NAMES = {"BrokerDown", "CheckpointStale", "CRLExpiring", "CertificateExpiring",
               "SubscriptionLagGrowing", "DatasetStale"}


def _rules() -> list[dict[str, Any]]:
    doc = yaml.safe_load(ALERTS.read_text())
    return [r for g in doc["groups"] for r in g["rules"]]


def test_alert_rules_are_complete(exported: set[str]) -> None:
    rules = _rules()
    assert {r["alert"] for r in rules} == ALERT_NAMES
    for r in rules:
        assert {"alert", "expr", "for", "labels", "annotations"} <= r.keys(), r.get("alert")
        assert re.fullmatch(r"\d+[smh]", r["for"]), r["alert"]
        assert r["labels"]["severity"] in {"critical", "warning"}, r["alert"]
        assert r["annotations"]["summary"] and r["annotations"]["description"], r["alert"]
        assert unknown(metric_names(r["expr"]), exported) == set(), r["alert"]


def _promtool(*args: str) -> subprocess.CompletedProcess[str]:
    promtool = shutil.which("promtool")
    if promtool is None:  # the structure is checked above either way
        pytest.fail("promtool is not installed: `make test` installs it (Debian package "
                    "prometheus: apt-get install prometheus)")
    return subprocess.run([promtool, *args], capture_output=True, text=True, timeout=60,
                          check=False)


def test_promtool_checks_the_rules() -> None:
    done = _promtool("check", "rules", str(ALERTS))
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"SUCCESS: {len(ALERT_NAMES)} rules found" in done.stdout


def test_promtool_unit_tests_the_rules() -> None:
    done = _promtool("test", "rules", str(ALERT_TESTS))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS" in done.stdout


def test_every_alert_has_a_unit_test() -> None:
    tests = yaml.safe_load(ALERT_TESTS.read_text())
    assert tests["rule_files"] == [ALERTS.name]
    fired = {a["alertname"] for t in tests["tests"] for a in t["alert_rule_test"]
             if a["exp_alerts"]}
    assert fired == ALERT_NAMES

