"""The bench's exchange: a throwaway PKI, a broker as a real subprocess over TLS, /proc stats.

The broker runs exactly as an operator runs it (``python -m exchange broker serve``), so its CPU
time and peak memory are its own, read from ``/proc/<pid>/stat`` (utime + stime) and
``/proc/<pid>/status`` (VmHWM, the resident-set high-water mark).
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from exchange import pki
from exchange.core import datasets
from exchange.store.nats.server import NatsCluster

__all__ = ["PUBLISHER", "SUBSCRIBER", "BrokerGroup", "BrokerProcess", "GroupStats", "ProcStats",
           "broker_has_option", "machine", "make_pki"]

PUBLISHER = "vn.gov.mps.population"
SUBSCRIBER = "vn.gov.mof.tax"
_TICK = os.sysconf("SC_CLK_TCK")


def make_pki(root: Path, broker_host: str = "127.0.0.1") -> Path:
    """A fresh exchange CA with the broker (its certificate naming ``broker_host`` too), the
    population owner and one subscriber."""
    pki_dir = root / "pki"
    if not (pki_dir / "ca.crt").exists():
        pki.init(pki_dir, broker_hosts=[broker_host.strip("[]")])
        for node in (PUBLISHER, SUBSCRIBER):
            pki.enroll(pki_dir, node)
    return pki_dir


@dataclass
class ProcStats:
    """CPU seconds (user + system) and memory of one process, from /proc."""

    pid: int
    #: one thread of it (``main_cpu_s`` then reads that thread alone)
    tid: int | None = None

    def cpu_s(self) -> float:
        """The process's CPU and that of its live descendants (a broker's gate workers)."""
        return self.main_cpu_s() + sum(ProcStats(c).cpu_s() for c in self.children())

    def main_cpu_s(self) -> float:
        """The process's own CPU, all its threads."""
        path = (f"/proc/{self.pid}/stat" if self.tid is None
                else f"/proc/{self.pid}/task/{self.tid}/stat")
        try:
            with open(path, encoding="ascii") as f:
                # the command name may hold spaces: fields after the closing paren are fixed
                fields = f.read().rpartition(")")[2].split()
        except OSError:
            return 0.0
        return (int(fields[11]) + int(fields[12])) / _TICK  # utime, stime (fields 14, 15)

    def threads(self) -> dict[int, float]:
        """CPU seconds of each of its threads, by thread id."""
        out: dict[int, float] = {}
        try:
            tids = [int(t) for t in os.listdir(f"/proc/{self.pid}/task")]
        except OSError:
            return out
        for tid in tids:
            out[tid] = ProcStats(self.pid, tid=tid).main_cpu_s()
        return out

    def children(self) -> list[int]:
        """Its child processes (``/proc/PID/task/TID/children``)."""
        out: list[int] = []
        try:
            tasks = os.listdir(f"/proc/{self.pid}/task")
        except OSError:
            return out
        for tid in tasks:
            with contextlib.suppress(OSError), open(
                    f"/proc/{self.pid}/task/{tid}/children", encoding="ascii") as f:
                out.extend(int(c) for c in f.read().split())
        return out

    def _status_kb(self, key: str) -> int:
        try:
            with open(f"/proc/{self.pid}/status", encoding="ascii") as f:
                for line in f:
                    if line.startswith(key + ":"):
                        return int(line.split()[1])
        except OSError:
            pass
        return 0

    def peak_rss_mb(self) -> float:
        return self._status_kb("VmHWM") / 1024

    def rss_mb(self) -> float:
        return self._status_kb("VmRSS") / 1024

    def reset_peak(self) -> None:
        """Reset VmHWM to the current RSS (Linux ``clear_refs`` value 5); best effort."""
        with contextlib.suppress(OSError), open(f"/proc/{self.pid}/clear_refs", "w",
                                                encoding="ascii") as f:
            f.write("5")


@dataclass
class BrokerProcess:
    """``exchange broker serve`` in a subprocess on a free loopback port."""

    root: Path
    pki_dir: Path
    store: str = "sqlite"
    limits: dict[str, Any] = field(default_factory=dict)
    proc: subprocess.Popen[bytes] | None = None
    port: int = 0
    #: ``store="nats"``: a single JetStream server of its own (R1), fresh with the broker
    nats: NatsCluster | None = None
    #: ``HOST:PORT`` to serve on (port 0: any free one); brokers run one after another
    listen: str = "127.0.0.1:0"
    #: more ``exchange broker serve`` options (``--workers N``)
    args: list[str] = field(default_factory=list)

    @property
    def url(self) -> str:
        from exchange.sim.process import connect_host

        return f"https://{connect_host(self.listen)}:{self.port}"

    @property
    def stats(self) -> ProcStats:
        assert self.proc is not None
        return ProcStats(self.proc.pid)

    def config(self) -> dict[str, Any]:
        return {
            "listen": self.listen,
            "data_dir": str(self.root / "data"),
            "pki_dir": str(self.pki_dir),
            "store": self.nats.url if self.nats is not None else self.store,
            "limits": {"max_frame_records": 2000, "max_batch_records": 5000, **self.limits},
            "datasets": [{"name": "population", "owner": PUBLISHER}],
            # the version the publisher writes (the latest): every group, so the broker
            # splices stored records as they are (a v1 reader of v2 records gets them
            # projected: another path, measured on its own)
            "agreements": [{"subscriber": SUBSCRIBER, "dataset": "population",
                            "purpose": "throughput benchmark",
                            "version": datasets.get("population").version}],
        }

    def start(self, *, fresh: bool = True, timeout: float = 30.0) -> BrokerProcess:
        if fresh and (self.root / "data").exists():
            shutil.rmtree(self.root / "data")
        self.root.mkdir(parents=True, exist_ok=True)
        if self.store == "nats" and self.nats is None:
            if fresh and (self.root / "nats").exists():
                shutil.rmtree(self.root / "nats")
            self.nats = NatsCluster(self.root / "nats")
            self.nats.start()
            self.nats.wait_healthy_sync(timeout)
        path = self.root / "broker.json"
        path.write_text(json.dumps(self.config()), encoding="utf-8")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "exchange", "broker", "serve", "--config", str(path),
             "--listen", self.listen, "--log-level", "warning", *self.args],
            stdout=subprocess.PIPE, stderr=open(self.root / "broker.log", "ab"),  # noqa: SIM115
            cwd=self.root)
        assert self.proc.stdout is not None
        deadline = time.monotonic() + timeout
        line = b""
        while time.monotonic() < deadline:
            ready, _, _ = select.select([self.proc.stdout], [], [], 0.5)
            if ready:
                line = self.proc.stdout.readline()
                if line.startswith(b"{"):
                    break
            if self.proc.poll() is not None:
                break
        if not line.startswith(b"{"):
            self.stop()
            log = (self.root / "broker.log").read_text(errors="replace")[-2000:]
            raise RuntimeError(f"broker did not start:\n{log}")
        self.port = int(json.loads(line)["port"])
        return self

    def stop(self) -> None:
        if self.proc is not None:
            self._stop_broker()
        if self.nats is not None:
            self.nats.stop()
            self.nats = None

    def _stop_broker(self) -> None:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        self.proc = None

    def __enter__(self) -> BrokerProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


@dataclass
class GroupStats:
    """CPU seconds summed and peak memory (the highest) over a group of broker processes."""

    procs: list[ProcStats]
    #: the group's nats-servers (store ``nats``), a party of their own
    nats: list[ProcStats] = field(default_factory=list)

    def cpu_s(self) -> float:
        return sum(p.cpu_s() for p in self.procs)

    def main_cpu_s(self) -> float:
        """The brokers' own processes: without their gate workers."""
        return sum(p.main_cpu_s() for p in self.procs)

    def loop_cpu_s(self) -> float:
        """The brokers' event-loop threads alone (not the sqlite writer thread)."""
        return sum(ProcStats(p.pid, tid=p.pid).main_cpu_s() for p in self.procs)

    def nats_cpu_s(self) -> float:
        return sum(p.cpu_s() for p in self.nats)

    def peak_rss_mb(self) -> float:
        return max((p.peak_rss_mb() for p in self.procs), default=0.0)

    def reset_peak(self) -> None:
        for p in self.procs:
            p.reset_peak()


@dataclass
class BrokerGroup:
    """``n`` brokers serving one exchange: on ``store="nats"`` several broker processes over
    one JetStream server (R1, as ``BrokerProcess`` starts for one broker); ``n`` = 1 is one
    ``BrokerProcess`` as before. Publisher and subscriber ``i`` use broker ``i mod n``."""

    root: Path
    pki_dir: Path
    store: str = "sqlite"
    n: int = 1
    listen: str = "127.0.0.1:0"
    args: list[str] = field(default_factory=list)
    brokers: list[BrokerProcess] = field(default_factory=list)
    nats: NatsCluster | None = None
    #: per publisher process, records it has taken from its people (versions keep rising)
    cursors: dict[int, int] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return self.brokers[0].url

    @property
    def urls(self) -> list[str]:
        return [b.url for b in self.brokers]

    @property
    def stats(self) -> GroupStats:
        nats = self.nats or (self.brokers[0].nats if self.brokers else None)
        servers = [] if nats is None else [ProcStats(s.proc.pid) for s in nats.servers
                                           if s.proc is not None]
        return GroupStats([b.stats for b in self.brokers], servers)

    def start(self) -> BrokerGroup:
        if self.n > 1 and self.store != "nats":
            raise ValueError("several brokers share one store only on --store nats")
        try:
            if self.n == 1:
                self.brokers = [BrokerProcess(self.root, self.pki_dir, self.store,
                                              listen=self.listen, args=self.args).start()]
                return self
            if (self.root / "nats").exists():
                shutil.rmtree(self.root / "nats")
            self.nats = NatsCluster(self.root / "nats")
            self.nats.start()
            self.nats.wait_healthy_sync(30.0)
            for i in range(self.n):
                b = BrokerProcess(self.root / f"broker{i}", self.pki_dir, self.nats.url,
                                  listen=self.listen, args=self.args)
                self.brokers.append(b)
                b.start()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        for b in self.brokers:
            b.stop()
        self.brokers = []
        if self.nats is not None:
            self.nats.stop()
            self.nats = None

    def __enter__(self) -> BrokerGroup:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def broker_has_option(option: str) -> bool:
    """Whether ``exchange broker serve`` takes ``option`` (read from its ``--help``)."""
    out = subprocess.run([sys.executable, "-m", "exchange", "broker", "serve", "--help"],
                         capture_output=True, text=True, timeout=60, check=False)
    # the options section lists each as "  --workers N  …" (or "-w N, --workers N")
    return option in out.stdout.replace(",", " ").split()


def machine() -> dict[str, Any]:
    """The machine a run measured: cores, the cores this process may use, the CPU model."""
    model = ""
    with contextlib.suppress(OSError), open("/proc/cpuinfo", encoding="utf-8") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.partition(":")[2].strip()
                break
    try:
        affinity = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        affinity = os.cpu_count() or 0
    return {"cores": os.cpu_count(), "affinity": affinity, "cpu_model": model}
