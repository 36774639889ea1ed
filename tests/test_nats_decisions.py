"""On NATS, an append is conditional on exactly the versions its decision saw: another broker's
write in between makes it a stale read, even when the store has read other keys since (as the
quality tracker's reference lookups do)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from exchange import pki
from exchange.core import datasets, gate, ledger
from exchange.core.access import Limits
from exchange.core.signing import Verifier
from exchange.store.base import StaleRead
from exchange.store.nats.server import NatsCluster
from tests import nats_fixtures
from tests.conftest import TODAY, make_pki, people
from tests.nats_fixtures import two_stores
from tests.test_store_contract import POP, SPEC, batch_of, publish

nats_single = nats_fixtures.nats_single


async def test_a_decision_made_stale_by_another_broker_is_refused(
        tmp_path: Path, nats_single: NatsCluster) -> None:
    pki_dir = make_pki(tmp_path / "pki")
    async with two_stores(nats_single) as (a, b):
        p, other = people(2, seed=33)
        await publish(a, pki_dir, batch_of(pki_dir, [p], version=1, seed=1))
        # broker A decides version 2 of p against version 1 (seq 0) ...
        mine = batch_of(pki_dir, [{**p, "full_name": "Trần Văn Một"}], version=2, seed=2)
        checked = gate.check(mine, node=POP, spec=SPEC,
                             verifier=Verifier(pki.load_signing_registry(pki_dir)),
                             limits=Limits(), ctx=datasets.RuleContext(today=TODAY))
        decided = gate.decide(checked, await a.current("population", [p["id"]]))
        assert len(decided.accepted) == 1 and decided.replaces == [0]
        # ... broker B (once it has read version 1) stores a different version 2 meanwhile,
        # and A reads it back ...
        await b.sync()
        await publish(b, pki_dir, batch_of(pki_dir, [{**p, "full_name": "Lê Thị Hai"}],
                                           version=2, seed=3))
        await a.sync()
        # ... and reads other keys since, as a reference lookup does
        await a.current("population", [other["id"]])
        with pytest.raises(StaleRead):
            await a.append(ledger.plan([ledger.Append(POP, "population", mine, decided)],
                                       time.time()))
        assert a.log_state()[0] == 2  # nothing of A's was stored
