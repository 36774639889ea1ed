"""Who may publish and who may read what: the operator's config and the access decisions (pure).

Deny by default: only a dataset's single owner publishes to it; a node subscribes only while a
data-sharing agreement names it, the dataset and a purpose, and has not expired. The agreement
also names the disclosure groups the subscriber may receive (Law 91/2025/QH15 on personal data:
an agency receives only the data its purpose needs).
"""

from __future__ import annotations

import datetime as dt
import tomllib
from typing import Annotated

import msgspec

from exchange.core.envelope import NodeId
from exchange.core.errors import Code, Forbidden, InputError, NotFound

__all__ = ["Agreement", "BrokerConfig", "DatasetConfig", "Limits", "Policy", "parse_config"]


class Limits(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """Bounds on what one peer can make the broker hold. Defaults suit the demo and tests."""

    #: a whole request body; nginx's client_max_body_size defaults to 1 MiB, ours is a batch
    max_body_bytes: int = 16 * 1024 * 1024
    max_batch_records: int = 5000
    #: one record's encoded size; the largest real record (a land parcel with owners) is ~2 KiB
    max_record_bytes: int = 64 * 1024
    max_depth: int = 8
    max_fields: int = 64
    idle_timeout_s: float = 120.0
    #: records sent but not acked for this long are sent again
    ack_timeout_s: float = 30.0
    #: most records in one subscribe frame
    max_frame_records: int = 1000
    max_connections_per_node: int = 64


class DatasetConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    name: Annotated[str, msgspec.Meta(pattern=r"^[a-z][a-z0-9_]*$")]
    owner: NodeId


class Agreement(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """A data-sharing grant: subscriber, dataset, purpose, groups, until when."""

    subscriber: NodeId
    dataset: str
    purpose: Annotated[str, msgspec.Meta(min_length=3)]
    #: disclosure groups granted; empty means every group of the dataset
    groups: list[str] = []
    #: deliver only records at least this complete (share of recommended fields, 0..1)
    min_completeness: Annotated[float, msgspec.Meta(ge=0.0, le=1.0)] = 0.0
    #: must carry a UTC offset: a naive time cannot be compared with the broker's UTC clock
    expires: Annotated[dt.datetime, msgspec.Meta(tz=True)] | None = None

    def live(self, now: dt.datetime) -> bool:
        return self.expires is None or now < self.expires


class BrokerConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """The operator's file (TOML or JSON), decoded strictly so a typo fails loudly."""

    node_id: NodeId = "vn.gov.ndc.broker"
    listen: str = "127.0.0.1:8443"
    data_dir: str = "data"
    pki_dir: str = "certs/exchange"
    store: str = "sqlite"
    #: the transparency log's origin line (C2SP tlog-checkpoint); default "<node_id>/log"
    log_origin: str = ""
    #: sign a new checkpoint at least this often while records arrive
    checkpoint_interval_s: float = 1.0
    #: score data quality at the gate (correct, sufficient, clean, live)
    quality: bool = True
    limits: Limits = Limits()
    #: nodes that may see every subscription's lag and the whole exchange's state
    operators: list[NodeId] = []
    datasets: list[DatasetConfig] = []
    agreements: list[Agreement] = []


def parse_config(text: str, *, fmt: str = "toml") -> BrokerConfig:
    try:
        raw = tomllib.loads(text) if fmt == "toml" else msgspec.json.decode(text)
        return msgspec.convert(raw, BrokerConfig)
    except (tomllib.TOMLDecodeError, msgspec.DecodeError) as err:
        raise InputError(f"config is not valid {fmt.upper()}: {err}",
                         code=Code.BAD_CONFIG) from None
    except msgspec.ValidationError as err:
        raise InputError(f"config: {err}", code=Code.BAD_CONFIG) from None


class Policy:
    """Access decisions over one config. Rebuilt on reload; never mutated."""

    def __init__(self, config: BrokerConfig, groups: dict[str, tuple[str, ...]] | None = None
                 ) -> None:
        self.config = config
        self.owners = {d.name: d.owner for d in config.datasets}
        self._groups = groups or {}
        self._agreements: dict[tuple[str, str], list[Agreement]] = {}
        for a in config.agreements:
            if a.dataset not in self.owners:
                raise InputError(f"agreement for {a.subscriber} names unknown dataset "
                                 f"{a.dataset!r}", code=Code.BAD_CONFIG)
            known = self._groups.get(a.dataset)
            if known is not None:
                unknown = [g for g in a.groups if g not in known]
                if unknown:
                    raise InputError(f"agreement for {a.subscriber} on {a.dataset} grants "
                                     f"unknown groups {unknown}; known: {list(known)}",
                                     code=Code.BAD_CONFIG)
            self._agreements.setdefault((a.subscriber, a.dataset), []).append(a)

    def check_publish(self, node: str, dataset: str) -> None:
        owner = self.owners.get(dataset)
        if owner is None:
            raise NotFound(f"dataset {dataset!r} is not served here",
                           code=Code.UNKNOWN_DATASET)
        if owner != node:
            raise Forbidden(f"{node} is not the owner of {dataset} (the owner is {owner})",
                            code=Code.NOT_OWNER)

    def check_subscribe(self, node: str, dataset: str, now: dt.datetime) -> tuple[Agreement,
                                                                                    list[str]]:
        """The live agreement and the groups it grants; Forbidden without one, NotFound for a
        dataset not served here."""
        if dataset not in self.owners:
            raise NotFound(f"dataset {dataset!r} is not served here",
                           code=Code.UNKNOWN_DATASET)
        if self.owners[dataset] == node:
            # the owner reads its own dataset in full
            return (Agreement(subscriber=node, dataset=dataset, purpose="owner"),
                    list(self._groups.get(dataset, ())))
        live = [a for a in self._agreements.get((node, dataset), []) if a.live(now)]
        if not live:
            raise Forbidden(f"{node} has no live agreement to read {dataset}",
                            code=Code.NO_AGREEMENT)
        a = live[0]
        groups = a.groups or list(self._groups.get(dataset, ()))
        return a, groups
