"""The reference exchange's topology: who owns which dataset and who may read what.

The four datasets and their one owner each, the data-sharing agreements between the agencies,
each role's durable subscriptions, and the broker configuration (as a ``BrokerConfig`` or as
the TOML text an operator would write) that puts them in force.
"""

from __future__ import annotations

from typing import Literal

import msgspec

from exchange.core.access import Agreement, BrokerConfig, DatasetConfig

__all__ = [
    "AGREEMENTS",
    "OWNERS",
    "ROLES",
    "Role",
    "broker_config",
    "broker_toml",
]

Role = Literal["population", "tax", "land", "vehicle"]
ROLES: tuple[Role, ...] = ("population", "tax", "land", "vehicle")

#: dataset -> its one owner, the authoritative source
OWNERS: dict[str, str] = {
    "population": "vn.gov.mps.population",
    "tax": "vn.gov.mof.tax",
    "land": "vn.gov.mae.land",
    "vehicle": "vn.gov.mps.vehicle",
}

#: the data-sharing agreements of the reference exchange (Law 91/2025/QH15: each agency
#: receives only the disclosure groups its purpose needs)
AGREEMENTS: list[Agreement] = [
    # population v2: the household lets the tax authority check dependants for family
    # deductions (giảm trừ gia cảnh, Law 04/2007/QH12 Art. 19)
    Agreement(subscriber=OWNERS["tax"], dataset="population", version=2,
              purpose="keep taxpayers' addresses and status current; check dependants",
              groups=["identity", "residence", "civil_status", "household"]),
    Agreement(subscriber=OWNERS["land"], dataset="population",
              purpose="identify land users", groups=["residence"]),
    Agreement(subscriber=OWNERS["vehicle"], dataset="population",
              purpose="identify vehicle owners", groups=["identity", "residence"]),
    Agreement(subscriber=OWNERS["vehicle"], dataset="tax",
              purpose="identify organisations owning vehicles"),
]

_SUBSCRIPTIONS: dict[Role, dict[str, str]] = {
    "population": {},
    "tax": {"population": "tax-residents"},
    "land": {"population": "land-users"},
    "vehicle": {"population": "vehicle-owners", "tax": "vehicle-organisations"},
}


def broker_config(pki_dir: str, data_dir: str, listen: str = "127.0.0.1:8443") -> BrokerConfig:
    """The reference exchange: the four datasets with their owners and the agreements."""
    return BrokerConfig(listen=listen, pki_dir=pki_dir, data_dir=data_dir,
                        datasets=[DatasetConfig(d, o) for d, o in OWNERS.items()],
                        agreements=list(AGREEMENTS))


def broker_toml(pki_dir: str, data_dir: str, listen: str = "127.0.0.1:8443") -> str:
    """``broker_config`` as the TOML text an operator would write (paths relative to it)."""
    lines = ['node_id = "vn.gov.ndc.broker"', f'listen = "{listen}"',
             f"pki_dir = {_toml_str(pki_dir)}", f"data_dir = {_toml_str(data_dir)}",
             'store = "sqlite"', ""]
    for name, owner in OWNERS.items():
        lines += ["[[datasets]]", f'name = "{name}"', f'owner = "{owner}"', ""]
    for a in AGREEMENTS:
        lines += ["[[agreements]]", f'subscriber = "{a.subscriber}"', f'dataset = "{a.dataset}"',
                  f"purpose = {_toml_str(a.purpose)}", f"version = {a.version}",
                  "groups = [" + ", ".join(f'"{g}"' for g in a.groups) + "]", ""]
    return "\n".join(lines)


def _toml_str(s: str) -> str:
    return msgspec.json.encode(s).decode()  # a JSON string is a TOML basic string
