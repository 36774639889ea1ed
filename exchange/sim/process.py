"""The broker as a child process: ``python -m exchange broker serve`` for ``exchange demo``.

``running_broker`` starts it on a free port of 127.0.0.1, waits until it listens, keeps its
output in a log file, and stops it (SIGTERM, then SIGKILL) on the way out. A broker that does
not come up raises ``DemoError``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path

__all__ = ["BrokerProcess", "DemoError", "running_broker"]


class DemoError(Exception):
    """The demo could not run; the message says why and where the logs are."""



class BrokerProcess:
    """``python -m exchange broker serve`` as a child process, its log in the data dir."""

    def __init__(self, config: Path, log: Path, listen: str = "127.0.0.1:0") -> None:
        self.config = config
        self.log = log
        #: ``HOST:PORT`` to serve on (port 0: any free one)
        self.listen = listen
        self.proc: asyncio.subprocess.Process | None = None
        self.url = ""
        self._drain: asyncio.Task[None] | None = None

    async def start(self, within_s: float = 30.0) -> str:
        with self.log.open("ab") as log:
            self.proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "exchange", "broker", "serve", "--config",
                str(self.config), "--listen", self.listen,
                stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE, stderr=log)
        assert self.proc.stdout is not None
        try:
            async with asyncio.timeout(within_s):
                while True:
                    line = await self.proc.stdout.readline()
                    if not line:
                        code = await self.proc.wait()
                        raise DemoError(f"the broker exited with code {code} before listening;"
                                        f" see {self.log}")
                    port = _listening_port(line)
                    if port is not None:
                        break
        except TimeoutError:
            await self.stop()
            raise DemoError(f"the broker did not listen within {within_s:.0f}s; "
                            f"see {self.log}") from None
        self._drain = asyncio.create_task(self._copy_stdout())
        self.url = f"https://{connect_host(self.listen)}:{port}"
        return self.url

    async def _copy_stdout(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        with self.log.open("ab") as log:
            async for line in self.proc.stdout:
                log.write(line)

    async def stop(self, grace_s: float = 20.0) -> int:
        """SIGTERM, then wait; SIGKILL if it does not stop in time. Returns the exit code."""
        proc = self.proc
        if proc is None:
            return 0
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
            try:
                async with asyncio.timeout(grace_s):
                    await proc.wait()
            except TimeoutError:
                proc.kill()
                await proc.wait()
        if self._drain is not None:
            await self._drain
        assert proc.returncode is not None
        return proc.returncode


def connect_host(listen: str) -> str:
    """Where a client on this machine reaches a broker serving on ``listen``: the host named,
    or loopback for a wildcard (``0.0.0.0``, ``[::]``) or no host."""
    host = listen.rpartition(":")[0].removeprefix("[").removesuffix("]")
    if host in ("", "0.0.0.0", "::"):
        return "127.0.0.1"
    return f"[{host}]" if ":" in host else host


def _listening_port(line: bytes) -> int | None:
    try:
        event = json.loads(line)
    except ValueError:
        return None
    if isinstance(event, dict) and event.get("event") == "listening":
        return int(event["port"])
    return None


@contextlib.asynccontextmanager
async def running_broker(config: Path, log: Path, listen: str = "127.0.0.1:0"
                         ) -> AsyncIterator[BrokerProcess]:
    broker = BrokerProcess(config, log, listen)
    try:
        await broker.start()
        yield broker
    finally:
        await broker.stop()
