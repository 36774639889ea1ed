"""The pure core imports no I/O library: no event loop, no HTTP, no database, no logging.

Checked in a fresh interpreter, because this test process has already imported the shell. The
core is whatever lives under ``exchange/core/``: the list is globbed, never kept by hand.
"""

from __future__ import annotations

import ast
import json
import pathlib
import pkgutil
import subprocess
import sys

import exchange.core

CORE = sorted(m.name for m in pkgutil.walk_packages(exchange.core.__path__, "exchange.core."))
FORBIDDEN = ("asyncio", "aiohttp", "aiosqlite", "nats", "structlog")

PROBE = """
import importlib, json, sys
for name in sys.argv[1:]:
    importlib.import_module(name)
print(json.dumps(sorted(sys.modules)))
"""


def test_core_is_globbed_and_holds_every_step_of_the_flow() -> None:
    steps = {"exchange.core.gate", "exchange.core.envelope", "exchange.core.signing",
             "exchange.core.datasets.population", "exchange.core.datasets.vehicle"}
    assert steps <= set(CORE)


def test_pure_core_imports_no_io_library() -> None:
    out = subprocess.run([sys.executable, "-c", PROBE, *CORE], capture_output=True,
                         text=True, check=True, timeout=60)
    loaded = set(json.loads(out.stdout))
    assert set(CORE) <= loaded
    offending = sorted(m for m in loaded if m.split(".")[0] in FORBIDDEN)
    assert offending == []


def test_probe_detects_a_forbidden_import() -> None:
    # the probe itself works: the shell does pull these in
    out = subprocess.run([sys.executable, "-c", PROBE, "asyncio"], capture_output=True,
                         text=True, check=True, timeout=60)
    assert "asyncio" in json.loads(out.stdout)


#: what would make the core read the clock, draw randomness or touch the machine
IMPURE_MODULES = {"time", "random", "secrets", "os", "socket", "threading", "uuid", "subprocess"}
CLOCK_CALLS = {"now", "today", "utcnow", "monotonic", "perf_counter", "urandom"}


def _impurities(source: str, where: str) -> list[str]:
    found: list[str] = []
    for node in ast.walk(ast.parse(source)):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name.split(".")[0] for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            names = [node.module.split(".")[0]]
        found += [f"{where}: import {n}" for n in names if n in IMPURE_MODULES]
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                and node.func.attr in CLOCK_CALLS):
            found.append(f"{where}:{node.lineno}: .{node.func.attr}()")
    return found


def test_the_core_reads_no_clock_and_draws_no_randomness() -> None:
    """Time and randomness come in as arguments (a clock in the shell, a seed per batch), so
    every decision of the core can be replayed and tested without waiting."""
    found = [f for path in pathlib.Path(exchange.core.__path__[0]).rglob("*.py")
             for f in _impurities(path.read_text(encoding="utf-8"), path.name)]
    assert found == []


def test_the_scan_sees_a_clock_read() -> None:
    assert _impurities("import datetime as dt\nx = dt.datetime.now()\n", "x") == [
        "x:2: .now()"]
    assert _impurities("from os import urandom\n", "y") == ["y: import os"]
