"""Who may publish and who may read what: the operator's config and the access decisions (pure).

Deny by default: only a dataset's single owner publishes to it; a node subscribes only while a
data-sharing agreement names it, the dataset and a purpose, and has not expired. The agreement
also names the disclosure groups the subscriber may receive (Law 91/2025/QH15 on personal data:
an agency receives only the data its purpose needs).
"""

from __future__ import annotations

import copy
import datetime as dt
import math
import re
import tomllib
from collections.abc import Iterable, Mapping, Sequence, Set
from typing import Annotated
from urllib.parse import urlsplit

import msgspec

from exchange.core.envelope import NodeId
from exchange.core.errors import Code, ExchangeError, Forbidden, InputError, NotFound

__all__ = [
    "Agreement",
    "BrokerConfig",
    "ConfigProblem",
    "DatasetConfig",
    "Groups",
    "Limits",
    "Policy",
    "check_config",
    "config_error",
    "parse_config",
    "parse_listen",
    "problems_of",
]


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
    #: a request body must arrive whole within this many seconds (a body sent a byte a
    #: second holds a connection and a buffer for nothing)
    body_timeout_s: float = 30.0
    #: requests of one node being served at once (a slow client cannot hold them all)
    max_requests_per_node: int = 256
    #: refused records kept per publisher (past it, refusals are counted, not kept)
    max_dead_letters_per_publisher: int = 100_000
    #: a kept refused record is cut to this many bytes
    max_dead_letter_record_bytes: int = 4096


class DatasetConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    name: Annotated[str, msgspec.Meta(pattern=r"^[a-z][a-z0-9_]*$")]
    owner: NodeId


class Agreement(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """A data-sharing grant: subscriber, dataset, purpose, groups, until when."""

    subscriber: NodeId
    dataset: str
    purpose: Annotated[str, msgspec.Meta(min_length=3)]
    #: the schema version the subscriber reads (records of later versions arrive with the
    #: groups this version lacks withheld); 1 unless said, so a grant never widens by itself
    version: Annotated[int, msgspec.Meta(ge=1, le=999)] = 1
    #: disclosure groups granted; empty means every group of ``version``
    groups: list[str] = []
    #: deliver only records at least this complete (share of recommended fields, 0..1)
    min_completeness: Annotated[float, msgspec.Meta(ge=0.0, le=1.0)] = 0.0
    #: must carry a UTC offset: a naive time cannot be compared with the broker's UTC clock
    expires: Annotated[dt.datetime, msgspec.Meta(tz=True)] | None = None
    #: the law that allows it (a signed agreement always names one)
    legal_basis: str = ""
    #: ``agr-…`` for a signed agreement (``/v1/agreements``); ``config:<n>`` for the n-th of
    #: the config file's pre-approved bootstrap agreements (set by ``Policy``)
    id: str = ""

    def live(self, now: dt.datetime) -> bool:
        return self.expires is None or now < self.expires


class BrokerConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """The operator's file (TOML or JSON), decoded strictly so a typo fails loudly."""

    node_id: NodeId = "vn.gov.ndc.broker"
    listen: str = "127.0.0.1:8443"
    #: the exchange's public base URL (``https://exchange.example.gov.vn``): every record's
    #: ``dataschema`` must be a schema under it. Empty: any https origin is accepted and the
    #: broker advertises ``https://<listen>``
    public_url: str = ""
    data_dir: str = "data"
    pki_dir: str = "certs/exchange"
    store: str = "sqlite"
    #: the transparency log's origin line (C2SP tlog-checkpoint); default "<node_id>/log"
    log_origin: str = ""
    #: sign a new checkpoint at least this often while records arrive
    checkpoint_interval_s: float = 1.0
    #: score data quality at the gate (correct, sufficient, clean, live)
    quality: bool = True
    #: processes that check each batch's records (decode, signatures, schema, rules) beside the
    #: one that orders and commits them; 0: that one process checks them too
    gate_workers: Annotated[int, msgspec.Meta(ge=0, le=256)] = 0
    limits: Limits = Limits()
    datasets: list[DatasetConfig] = []
    agreements: list[Agreement] = []


class ConfigProblem(msgspec.Struct, frozen=True):
    """One thing wrong with a broker config: where (``agreements[2].groups[0]``; ``""`` for the
    document as a whole), what (a ``Code``; a plain string on the wire, like a ``Violation``'s),
    and a sentence for the operator."""

    path: str
    code: str
    message: str

    def __str__(self) -> str:
        return f"{self.path or '(config)'}: {self.message} ({self.code})"


def config_error(problems: Sequence[ConfigProblem]) -> InputError:
    """One ``InputError`` (``bad_config``) naming every problem; the problems travel with it
    (``problems_of``) and in its problem+json as ``problems``."""
    listed = "; ".join(map(str, problems))
    noun = "problem" if len(problems) == 1 else "problems"
    return InputError(f"config has {len(problems)} {noun}: {listed}", code=Code.BAD_CONFIG,
                      problems=[msgspec.to_builtins(p) for p in problems])


def problems_of(err: ExchangeError) -> list[ConfigProblem]:
    """The problems a ``config_error`` carries; an error without any is one problem of the
    whole document."""
    raw = err.extra.get("problems")
    if raw:
        return msgspec.convert(raw, list[ConfigProblem])
    return [ConfigProblem("", err.code, err.message)]


#: msgspec says where a value failed as a JSONPath suffix: "... - at `$.agreements[0].purpose`"
_AT = re.compile(r"^(?P<message>.*?)(?: - at `\$(?P<path>[^`]*)`)?$", re.DOTALL)
_UNKNOWN_FIELD = re.compile(r"^Object contains unknown field `(?P<field>[^`]+)`$")


def _validation_problem(err: msgspec.ValidationError) -> ConfigProblem:
    match = _AT.match(str(err))
    assert match is not None  # the pattern matches any text
    message, path = match["message"], (match["path"] or "").lstrip(".")
    unknown = _UNKNOWN_FIELD.match(message)
    if unknown is not None:
        # point at the typo itself, not at the table holding it
        path = f"{path}.{unknown['field']}" if path else unknown["field"]
        message = "unknown key (a typo?)"
    return ConfigProblem(path, Code.BAD_CONFIG, message)


def parse_config(text: str, *, fmt: str = "toml") -> BrokerConfig:
    """Decode the operator's file strictly. A failure is an ``InputError`` (``bad_config``)
    carrying one ``ConfigProblem`` with the path of the value at fault (msgspec stops at the
    first); ``check_config`` then finds everything a well-formed file can still get wrong."""
    try:
        raw = tomllib.loads(text) if fmt == "toml" else msgspec.json.decode(text)
        return msgspec.convert(raw, BrokerConfig)
    except msgspec.ValidationError as err:  # before DecodeError, its base class
        problem = _validation_problem(err)
    except (tomllib.TOMLDecodeError, msgspec.DecodeError) as err:
        problem = ConfigProblem("", Code.BAD_CONFIG, f"not valid {fmt.upper()}: {err}")
    raise config_error([problem])


def parse_listen(listen: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[::1]:PORT`` for IPv6; an empty host is 127.0.0.1; port 0: any free)."""
    host, sep, port = listen.rpartition(":")
    host = host.removeprefix("[").removesuffix("]") if host.startswith("[") else host
    if not sep or not port.isascii() or not port.isdigit() or int(port) > 65535 or (
            ":" in host and not listen.startswith("[")) or any(c.isspace() for c in host):
        raise InputError(f"listen {listen!r} is not HOST:PORT (PORT 0..65535; [IPv6]:PORT)",
                         code=Code.BAD_CONFIG)
    return host or "127.0.0.1", int(port)


def _limit_problems(limits: Limits) -> list[ConfigProblem]:
    out: list[ConfigProblem] = []
    for field in limits.__struct_fields__:
        value = getattr(limits, field)
        # NaN and infinity pass a plain "> 0": neither is a bound
        if isinstance(value, bool) or not isinstance(value, int | float) or not (
                value > 0 and math.isfinite(value)):
            out.append(ConfigProblem(f"limits.{field}", Code.BAD_CONFIG,
                                     f"must be a positive number, not {value!r}"))
    # a bound above another (max_record_bytes over max_body_bytes) never binds, which is
    # harmless: a test or a small deployment lowers one alone
    return out


#: the dataset registry as access decisions see it: name -> schema version -> disclosure groups
#: (a plain list of groups stands for a dataset with one version)
Groups = Mapping[str, Sequence[str] | Mapping[int, Sequence[str]]]


def _versioned(groups: Groups | None) -> dict[str, dict[int, tuple[str, ...]]]:
    out: dict[str, dict[int, tuple[str, ...]]] = {}
    for name, g in (groups or {}).items():
        out[name] = ({int(v): tuple(fs) for v, fs in g.items()} if isinstance(g, Mapping)
                     else {1: tuple(g)})
    return out


def check_config(config: BrokerConfig, *, groups: Groups | None = None,
                 enrolled: Set[str] | None = None, broker_id: str | None = None
                 ) -> list[ConfigProblem]:
    """Every problem of a decoded config, in file order; empty when the broker can serve it.

    ``groups`` is the dataset registry (name -> version -> disclosure groups): datasets,
    versions and groups outside it are refused. ``enrolled`` holds the node ids the exchange
    CA has enrolled: owners and subscribers outside it are refused (an agreement for a node
    that cannot connect is a typo or a step forgotten). ``broker_id`` is the id in the
    broker's certificate. Whatever is not given is not checked. Expired agreements are fine:
    they simply grant nothing.
    """
    out: list[ConfigProblem] = []
    registry = None if groups is None else _versioned(groups)

    def problem(path: str, code: Code, message: str) -> None:
        out.append(ConfigProblem(path, code, message))

    if broker_id is not None and config.node_id != broker_id:
        problem("node_id", Code.BAD_CONFIG,
                f"{config.node_id!r} is not the broker's id in its certificate ({broker_id!r})")
    try:
        parse_listen(config.listen)
    except InputError as err:
        problem("listen", Code.BAD_CONFIG, err.message)
    if config.store not in ("sqlite", "") and not (
            config.store.startswith(("nats://", "tls://")) and urlsplit(config.store).netloc):
        # the NATS store's own parser checks the rest (its parameters) where it is built
        problem("store", Code.BAD_CONFIG, f"{config.store!r} is neither sqlite nor "
                "nats://HOST:PORT[,HOST:PORT...] (or tls://...)")
    if config.public_url:
        u = urlsplit(config.public_url)
        if (u.scheme != "https" or not u.netloc or u.query or u.fragment or u.path
                or u.username is not None):
            problem("public_url", Code.BAD_CONFIG, f"{config.public_url!r} is not an https "
                    "origin such as https://exchange.example.gov.vn (no path)")
        elif u.netloc != u.netloc.lower():
            # dataschema is compared as text: one spelling of the origin, the usual one
            problem("public_url", Code.BAD_CONFIG, f"{config.public_url!r}: write the host in "
                    f"lower case ({u.scheme}://{u.netloc.lower()})")
    if "\n" in config.log_origin:
        problem("log_origin", Code.BAD_CONFIG, "must be one line (the checkpoint's origin line)")
    interval = config.checkpoint_interval_s
    if not (interval > 0 and math.isfinite(interval)):
        problem("checkpoint_interval_s", Code.BAD_CONFIG,
                f"must be a positive number of seconds, not {interval!r}")
    out += _limit_problems(config.limits)

    owners: dict[str, str] = {}
    for i, d in enumerate(config.datasets):
        at = f"datasets[{i}]"
        if d.name in owners:
            problem(f"{at}.name", Code.DUPLICATE_DATASET,
                    f"dataset {d.name!r} is listed twice; it has one owner")
            continue
        owners[d.name] = d.owner
        if registry is not None and d.name not in registry:
            problem(f"{at}.name", Code.UNKNOWN_DATASET,
                    f"unknown dataset {d.name!r}; known: {', '.join(sorted(registry))}")
        if enrolled is not None and d.owner not in enrolled:
            problem(f"{at}.owner", Code.NOT_ENROLLED,
                    f"owner {d.owner} is not enrolled in the exchange PKI "
                    f"(exchange pki enroll DIR {d.owner})")

    for i, a in enumerate(config.agreements):
        at = f"agreements[{i}]"
        if enrolled is not None and a.subscriber not in enrolled:
            problem(f"{at}.subscriber", Code.NOT_ENROLLED,
                    f"subscriber {a.subscriber} is not enrolled in the exchange PKI "
                    f"(exchange pki enroll DIR {a.subscriber})")
        owner = owners.get(a.dataset)
        if owner is None:
            served = ", ".join(owners) or "none"
            problem(f"{at}.dataset", Code.UNKNOWN_DATASET,
                    f"dataset {a.dataset!r} is not in this config's datasets (served: {served})")
            continue
        if owner == a.subscriber:
            problem(f"{at}.subscriber", Code.BAD_CONFIG,
                    f"{a.subscriber} owns {a.dataset} and reads it in full without an "
                    "agreement; a different subscriber was meant?")
        versions = None if registry is None else registry.get(a.dataset)
        if versions is None:
            continue
        known = versions.get(a.version)
        if known is None:
            problem(f"{at}.version", Code.UNKNOWN_SCHEMA_VERSION,
                    f"{a.dataset} has no schema version {a.version}; known: "
                    f"{', '.join(map(str, sorted(versions)))}")
            continue
        seen: set[str] = set()
        for j, g in enumerate(a.groups):
            if g not in known:
                problem(f"{at}.groups[{j}]", Code.UNKNOWN_GROUP,
                        f"{a.dataset} v{a.version} has no disclosure group {g!r}; known: "
                        f"{', '.join(known)}")
            elif g in seen:
                problem(f"{at}.groups[{j}]", Code.BAD_CONFIG, f"group {g!r} is listed twice")
            seen.add(g)
    return out


class Policy:
    """Access decisions over one config. Rebuilt on reload; never mutated."""

    def __init__(self, config: BrokerConfig, groups: Groups | None = None,
                 *, enrolled: Set[str] | None = None, broker_id: str | None = None) -> None:
        """Raises one ``InputError`` (``bad_config``) naming every problem ``check_config``
        finds (what is checked depends on what is given: see there)."""
        problems = check_config(config, groups=groups, enrolled=enrolled, broker_id=broker_id)
        if problems:
            raise config_error(problems)
        self.config = config
        self.owners = {d.name: d.owner for d in config.datasets}
        self._groups = _versioned(groups)
        self._agreements: dict[tuple[str, str], list[Agreement]] = {}
        for n, a in enumerate(config.agreements):
            marked = msgspec.structs.replace(a, id=a.id or f"config:{n}")
            self._agreements.setdefault((a.subscriber, a.dataset), []).append(marked)
        self._config_agreements = dict(self._agreements)

    def with_agreements(self, signed: Iterable[Agreement]) -> Policy:
        """This policy with the signed agreements in force besides the config's (the book
        changes between reloads; the config's checks are not run again)."""
        new = copy.copy(self)
        new._agreements = {k: list(v) for k, v in self._config_agreements.items()}
        for a in signed:
            new._agreements.setdefault((a.subscriber, a.dataset), []).append(a)
        return new

    def agreements_on(self, dataset: str) -> list[Agreement]:
        """Every agreement in force on ``dataset`` (config and signed), expired ones too."""
        return [a for (_, d), v in self._agreements.items() if d == dataset for a in v]

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
            versions = self._groups.get(dataset, {})
            latest = max(versions, default=1)
            return (Agreement(subscriber=node, dataset=dataset, purpose="owner", version=latest),
                    list(versions.get(latest, ())))
        live = [a for a in self._agreements.get((node, dataset), []) if a.live(now)]
        if not live:
            raise Forbidden(f"{node} has no live agreement to read {dataset}",
                            code=Code.NO_AGREEMENT)
        a = live[0]
        # a version's groups are what it grants at most: records of a later version arrive
        # with the groups added since withheld
        known = self._groups.get(dataset)
        if known is None:  # no registry given (a test of the access rules alone)
            return a, list(a.groups)
        of_version = known.get(a.version, ())
        groups = [g for g in a.groups if g in of_version] if a.groups else list(of_version)
        return a, groups
