"""What the broker checks before it serves a config, in one place (shell: reads files).

``exchange broker serve`` refuses to start, and ``exchange broker check-config`` reports, on
exactly the same list: ``check(config)``. It decodes nothing itself; ``load`` reads and decodes
the file (``exchange.broker.app.load_config``) and then checks it, so a file that does not even
decode is reported the same way, with the path msgspec names. The pure part, everything that
needs no file, is ``exchange.core.access.check_config``; here are the parts that read the disk:

- ``pki_dir``: the broker's identity, its TLS context (CA, certificate, key, CRL) and the CRL
  load; the signing-key registry gives the enrolled nodes the pure check needs;
- ``data_dir``: exists or can be created, and can be written;
- ``store``: the store can be built from its string (the NATS store parses its parameters);
- the control socket's path fits a unix socket address.

A reload (``Broker.reload``) runs the same pure check over the same registry.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import msgspec

from exchange import pki
from exchange.core import datasets
from exchange.core.access import BrokerConfig, ConfigProblem, check_config, problems_of
from exchange.core.errors import Code, ExchangeError

__all__ = ["SOCKET_NAME", "Checked", "check", "decode", "line", "load", "registry_groups",
           "report", "summary"]

#: where ``serve`` listens for ``exchange broker reload`` (next to broker.pid)
SOCKET_NAME = "broker.sock"
#: sun_path holds 108 bytes on Linux (104 on the BSDs), the final NUL included
_SUN_PATH_MAX = 103


@dataclass
class Checked:
    """A config and every problem found in it; ``config`` is None when the file did not decode.
    ``enrolled`` is the enrolled nodes (the broker's own id left out), when the PKI loaded."""

    config: BrokerConfig | None
    problems: list[ConfigProblem] = field(default_factory=list)
    enrolled: frozenset[str] = frozenset()

    @property
    def ok(self) -> bool:
        return self.config is not None and not self.problems


def registry_groups() -> dict[str, dict[int, tuple[str, ...]]]:
    """Every dataset this exchange knows, with the disclosure groups of each version."""
    return {name: {spec.version: tuple(spec.groups) for spec in datasets.versions(name)}
            for name in datasets.names()}


def decode(path: Path, *, listen: str | None = None, data_dir: str | None = None,
           workers: int | None = None) -> BrokerConfig:
    """Read and decode the file at ``path`` (``InputError`` naming the problem if it cannot be)
    and apply the command line's overrides (``--listen``, ``--data``, ``--workers``)."""
    from exchange.broker.app import load_config

    config = load_config(path)
    changes: dict[str, str | int] = {}
    if listen:
        changes["listen"] = listen
    if data_dir:
        changes["data_dir"] = str(Path(data_dir).resolve())
    if workers is not None:
        changes["gate_workers"] = workers
    return msgspec.structs.replace(config, **changes) if changes else config


def load(path: Path, *, listen: str | None = None, data_dir: str | None = None,
         workers: int | None = None) -> Checked:
    """``decode`` and ``check``: everything ``exchange broker serve`` would refuse."""
    try:
        config = decode(path, listen=listen, data_dir=data_dir, workers=workers)
    except ExchangeError as err:
        return Checked(None, problems_of(err))
    return check(config)


def check(config: BrokerConfig) -> Checked:
    """Every problem that would stop ``serve`` (or a reload) with ``config``."""
    problems: list[ConfigProblem] = []
    enrolled: set[str] | None = None
    broker_id: str | None = None
    try:
        broker_id = pki.load_broker_identity(config.pki_dir).node_id
        pki.server_ssl_context(config.pki_dir)
        pki.load_revoked(config.pki_dir)
        enrolled = set(pki.load_signing_registry(config.pki_dir))
    except ExchangeError as err:
        # one problem: every later step fails for the same reason (no CA, a damaged file)
        problems.append(ConfigProblem("pki_dir", err.code, err.message))
    except (OSError, ValueError) as err:  # what the PKI module did not translate
        problems.append(ConfigProblem("pki_dir", Code.PKI_IO, f"{config.pki_dir}: {err}"))
    problems += check_config(config, groups=registry_groups(), enrolled=enrolled,
                             broker_id=broker_id)
    try:
        problems += _data_dir_problems(Path(config.data_dir))
    except OSError as err:  # a directory above it cannot even be looked into
        problems.append(ConfigProblem("data_dir", Code.BAD_CONFIG,
                                      f"{config.data_dir}: {err.strerror or err}"))
    if not any(p.path == "store" for p in problems):
        problems += _store_problems(config)
    nodes = frozenset(enrolled or ()) - {broker_id or config.node_id}
    return Checked(config, problems, nodes)


def line(problem: ConfigProblem, file: Path | None = None) -> str:
    """``PATH: MESSAGE (code)``; a problem of the whole document is named by its file."""
    where = problem.path or (str(file) if file is not None else "(config)")
    return f"{where}: {problem.message} ({problem.code})"


def report(problems: Sequence[ConfigProblem], file: Path | None = None) -> None:
    """One line per problem on stderr, in the order found."""
    for p in problems:
        print(line(p, file), file=sys.stderr)


def summary(problems: Sequence[ConfigProblem]) -> str:
    return f"{len(problems)} problem{'' if len(problems) == 1 else 's'} in the config"


def _data_dir_problems(data_dir: Path) -> list[ConfigProblem]:
    """The data directory exists and can be written, or the nearest existing directory above it
    can be (``serve`` creates it); checked without creating anything."""
    def problem(message: str) -> list[ConfigProblem]:
        return [ConfigProblem("data_dir", Code.BAD_CONFIG, message)]

    socket = data_dir / SOCKET_NAME
    if len(os.fsencode(socket)) > _SUN_PATH_MAX:
        return problem(f"{data_dir} is too long a path for the control socket {SOCKET_NAME} "
                       f"(a unix socket path holds at most {_SUN_PATH_MAX} bytes)")
    existing = data_dir
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        return problem(f"{existing} is not a directory" if existing == data_dir else
                       f"{data_dir} cannot be created: {existing} is not a directory")
    if not os.access(existing, os.W_OK | os.X_OK):
        return problem(f"{existing} is not writable" if existing == data_dir else
                       f"{data_dir} cannot be created: {existing} is not writable")
    return []


def _store_problems(config: BrokerConfig) -> list[ConfigProblem]:
    from exchange.broker.server import make_store

    try:
        make_store(config)  # builds the object only: no file is opened, no server dialled
    except ExchangeError as err:
        return [ConfigProblem("store", err.code, err.message)]
    except ValueError as err:  # a parameter that is not a number (replicas=three)
        return [ConfigProblem("store", Code.BAD_CONFIG, f"{config.store!r}: {err}")]
    return []
