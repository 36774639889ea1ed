"""The one catalogue of codes: each defined once with its class, raised only by that class, and
rebuilt across the wire as the class the other side raised."""

from __future__ import annotations

import ast
import pathlib

import pytest

import exchange
from exchange.core import datasets, errors
from exchange.core.errors import (
    Code,
    ConflictError,
    ExchangeError,
    Forbidden,
    InputError,
    InvalidRecord,
    NotFound,
    RemoteError,
    UnavailableError,
    Violation,
)

PACKAGE = pathlib.Path(exchange.__file__).parent


@pytest.mark.parametrize("code", list(Code))
def test_every_code_round_trips_as_its_own_class(code: Code) -> None:
    local = code.error(f"because of {code}", code=code,
                       violations=[Violation(Code.UNKNOWN_WARD, "no such ward", "$.w", 3)])
    assert not local.remote and local.code == code.value and local.status == code.status
    remote = ExchangeError.from_problem(local.problem(instance="/v1/x"), local.status)
    assert isinstance(remote, code.error) and isinstance(remote, RemoteError) and remote.remote
    assert (remote.code, remote.status, remote.message) == (code.value, code.status,
                                                            local.message)
    assert remote.violations == local.violations
    assert remote.extra == {"instance": "/v1/x"}


def test_a_code_is_raised_only_by_its_class() -> None:
    with pytest.raises(TypeError, match="belongs to NotFound"):
        Forbidden("x", code=Code.UNKNOWN_DATASET)
    # a subclass may raise its parent's codes: the rebuilt class is still the parent
    assert InvalidRecord("x", code=Code.BAD_QUERY).code == "bad_query"


def test_except_works_on_both_sides_of_the_wire() -> None:
    problem = Forbidden("no", code=Code.NOT_OWNER).problem()
    with pytest.raises(Forbidden):
        raise ExchangeError.from_problem(problem)
    with pytest.raises(RemoteError):
        raise ExchangeError.from_problem(problem)


def test_codes_unknown_here_fall_back_to_the_status() -> None:
    newer = ExchangeError.from_problem({"code": "from_the_future", "status": 404, "detail": "d"})
    assert isinstance(newer, NotFound) and newer.code == "from_the_future"
    assert newer.status == 404 and newer.message == "d"
    gone = ExchangeError.from_problem({}, 503)
    assert isinstance(gone, UnavailableError) and gone.code == "unavailable"
    bare = ExchangeError.from_code("", "no body")
    assert type(bare).__mro__[1] is ExchangeError and bare.status == 500
    # a close reason names the code alone: the status is the code's own
    closed = ExchangeError.from_code("agreement_changed", "4409")
    assert isinstance(closed, ConflictError) and closed.status == 409


def test_retry_signals_are_not_exchange_errors() -> None:
    from exchange.store.base import StaleRead

    assert not issubclass(StaleRead, ExchangeError)
    assert Code.LOG_DAMAGED.error is errors.InternalError  # a damaged log is not "retry later"


def test_only_version_findings_make_a_conflict() -> None:
    assert Violation(Code.VERSION_CONFLICT, "m").conflict
    assert Violation(Code.STALE_VERSION, "m").conflict
    assert not Violation(Code.UNKNOWN_WARD, "m").conflict
    assert not Violation("not_in_the_catalogue", "m").conflict


def _calls(tree: ast.AST) -> list[ast.Call]:
    return [n for n in ast.walk(tree) if isinstance(n, ast.Call)]


def _name(call: ast.Call) -> str | None:
    f = call.func
    return f.id if isinstance(f, ast.Name) else f.attr if isinstance(f, ast.Attribute) else None


def test_the_package_names_codes_only_through_the_catalogue() -> None:
    """No code is a free string: every ``code=`` and every finding's code is a ``Code``
    member (mypy checks the member exists), and each raise uses the code's own class."""
    free: list[str] = []
    mismatched: list[str] = []
    classes = {n: c for n, c in vars(errors).items()
               if isinstance(c, type) and issubclass(c, ExchangeError)}
    for path in PACKAGE.rglob("*.py"):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for call in _calls(tree):
            name = _name(call)
            args = [k.value for k in call.keywords if k.arg == "code"]
            if name == "Violation" and call.args:
                args.append(call.args[0])
            for a in args:
                where = f"{path.relative_to(PACKAGE)}:{a.lineno}"
                if isinstance(a, ast.Constant) and isinstance(a.value, str):
                    free.append(where)
                if (name in classes and isinstance(a, ast.Attribute)
                        and isinstance(a.value, ast.Name) and a.value.id == "Code"
                        and not issubclass(classes[name], Code[a.attr].error)):
                    mismatched.append(f"{where} {name} {a.attr}")
    assert free == []
    assert mismatched == []


def test_the_datasets_report_catalogue_codes() -> None:
    for name in datasets.names():
        for spec in datasets.REGISTRY[name].values():
            assert all(Code.of(c) is not None for c in spec.codes.values()), spec.name


def test_input_errors_are_client_errors() -> None:
    assert all(400 <= c.status < 500 for c in Code if issubclass(c.error, InputError))
