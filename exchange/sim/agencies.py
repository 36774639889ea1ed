"""The four reference agency nodes: population, tax, land and vehicle registries.

Each agency is a node SDK client that runs in-process as asyncio tasks: it publishes realistic
records of its own dataset (``exchange.sim.generate.Generator``), subscribes to what its agreements
grant, and keeps count of everything that happened to its records and deliveries.

- **population** (Ministry of Public Security) publishes citizens already on the register and
  births; address changes are a new version with another commune; deaths are a new version with
  ``status = "deceased"`` and a ``death_date``.
- **tax** (Ministry of Finance) publishes registrations and status changes; it subscribes to
  population and keeps a map of individuals' current address and status.
- **land** (Ministry of Agriculture and Environment) publishes parcels and transfers (a new
  version with new owners); it subscribes to population, where it may read residence only.
- **vehicle** (Ministry of Public Security) publishes registrations and transfers; it subscribes
  to population and tax.

Cross references resolve through the exchange itself: taxpayers' personal ids and land and
vehicle owners are ids the agency received from population (or MSTs received from tax), never
ids it made up. A configurable share of records is faulty on purpose (bad checksum, unknown
commune, wrong owner, version conflict, stale version) so the broker's gate has work to do; each
planned record carries the outcome it should have, and outcomes that differ are counted.

Records are published in chunks, each awaited before the next is planned, so a version conflict
or a stale version always refers to a version the broker has confirmed.

This module gathers the parts: ``exchange.sim.topology`` (owners, agreements, broker
configuration), ``exchange.sim.config`` (``AgencyConfig``, node files), ``exchange.sim.planner``
(planning records and faults) and ``exchange.sim.roles`` (the running agency and its roles).
"""

from __future__ import annotations

from exchange.sim.config import AgencyConfig, default_config, load_node_file
from exchange.sim.planner import Held as Held
from exchange.sim.planner import Planned
from exchange.sim.roles import (
    Agency,
    LandRegistry,
    PopulationRegistry,
    TaxAuthority,
    VehicleRegistry,
    make_agency,
)
from exchange.sim.roles import Stats as Stats
from exchange.sim.roles import SubscriptionStats as SubscriptionStats
from exchange.sim.topology import AGREEMENTS, OWNERS, ROLES, broker_config, broker_toml
from exchange.sim.topology import Role as Role

__all__ = [
    "AGREEMENTS",
    "OWNERS",
    "ROLES",
    "Agency",
    "AgencyConfig",
    "LandRegistry",
    "Planned",
    "PopulationRegistry",
    "TaxAuthority",
    "VehicleRegistry",
    "broker_config",
    "broker_toml",
    "default_config",
    "load_node_file",
    "make_agency",
]
