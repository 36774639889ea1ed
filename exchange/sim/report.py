"""What ``exchange demo`` reports: status lines, the live progress line and the summary.

``_say`` and ``Progress`` write to stderr while the demo runs; ``_summary`` gathers the
agencies' own summaries into the one the demo prints (``exchange.cli.demo.print_summary``) or
emits as JSON.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from exchange.core.errors import ExchangeError

if TYPE_CHECKING:
    from exchange.node import Node
    from exchange.sim.roles import Agency

__all__ = ["Progress", "lag"]


def _summary(summaries: list[dict[str, Any]], accepted: dict[str, set[int]],
             lost: dict[str, int], lags: dict[str, int], *, publish_s: float, elapsed_s: float,
             data: Path, caught_up: bool, broker_exit: int | None,
             failures: dict[str, str]) -> dict[str, Any]:
    rejected: Counter[str] = Counter()
    delivered: dict[str, int] = {}
    verified = evidence = 0
    for s in summaries:
        rejected.update(s["rejected"])
        for name, sub in s["subscriptions"].items():
            delivered[name] = sub["delivered"]
            verified += sub["verified"]
            evidence += sub["verification_failures"]
    published = sum(s["published"] for s in summaries)
    return {
        "published": published,
        "accepted": sum(s["accepted"] for s in summaries),
        "accepted_by_dataset": {d: len(seqs) for d, seqs in accepted.items()},
        "duplicates": sum(s["duplicates"] for s in summaries),
        "rejected": {"total": sum(rejected.values()), "by_code": dict(sorted(rejected.items()))},
        "failed": sum(s["failed"] for s in summaries),
        "unexpected": sum(s["unexpected"] for s in summaries),
        "delivered": delivered,
        "delivered_total": sum(delivered.values()),
        "verified": verified,
        "verification_failures": evidence,
        "lag": lags,
        "lost": sum(lost.values()),
        "lost_by_subscription": lost,
        "caught_up": caught_up,
        "records_per_s": round(published / publish_s, 1) if publish_s > 0 else 0.0,
        "publish_s": round(publish_s, 3),
        "elapsed_s": round(elapsed_s, 3),
        "broker_exit": broker_exit,
        "agency_failures": failures,
        "agencies": {s["role"]: s for s in summaries},
        "data_dir": str(data),
        "broker_log": str(data / "broker.log"),
        "nodes_log": str(data / "nodes.log"),
    }


def _say(message: str) -> None:
    print(f"exchange demo: {message}", file=sys.stderr, flush=True)


class Progress:
    """One line on stderr: rewritten in place on a terminal, a line every 2 s otherwise."""

    def __init__(self, agents: Sequence[Agency], live: bool) -> None:
        self.agents = agents
        self.live = live
        self.t0 = time.monotonic()
        self.phase = "streaming"
        self._width = 0

    def line(self) -> str:
        st = [a.stats for a in self.agents]
        published = sum(s.published for s in st)
        delivered = sum(s.delivered for a in self.agents for s in a.sub_stats.values())
        elapsed = time.monotonic() - self.t0
        rate = published / elapsed if elapsed > 0 else 0.0
        rejected = sum(sum(s.rejected.values()) for s in st)
        return (f"[{elapsed:5.1f}s] {self.phase}: published {published}  accepted "
                f"{sum(s.accepted for s in st)}  rejected {rejected}"
                f"  duplicates {sum(s.duplicates for s in st)}  delivered {delivered}  "
                f"{rate:,.0f} records/s")

    def show(self) -> None:
        text = self.line()
        if self.live:
            pad = max(0, self._width - len(text))
            sys.stderr.write("\r" + text + " " * pad)
            self._width = len(text)
        else:
            sys.stderr.write(text + "\n")
        sys.stderr.flush()

    async def run(self) -> None:
        interval = 0.1 if self.live else 2.0
        while True:
            await asyncio.sleep(interval)
            self.show()

    def finish(self) -> None:
        self.phase = "done"
        self.show()
        if self.live:
            sys.stderr.write("\n")
            sys.stderr.flush()


async def lag(node: Node) -> dict[str, int]:
    """Lag of this node's subscriptions, as the broker counts it ({} if it cannot say)."""
    try:
        rows = await node.get_json("/v1/subscriptions")
    except (ExchangeError, OSError, TimeoutError):
        return {}
    return {f"{r['node']}/{r['dataset']}/{r['name']}": int(r["lag"]) for r in rows
            if r["node"] == node.config.node_id}
