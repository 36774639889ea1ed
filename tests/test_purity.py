"""The pure core imports no I/O library: no event loop, no HTTP, no database, no logging.

Checked in a fresh interpreter, because this test process has already imported the shell. The
core is whatever lives under ``exchange/core/``: the list is globbed, never kept by hand.
"""

from __future__ import annotations

import json
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
