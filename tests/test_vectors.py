"""The committed conformance vectors (schemas/vectors/) are fresh, and the Python core passes
every valid vector and fails every tampered one with the error the vector names."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from exchange import vectors

FILES = vectors.generate()


@pytest.mark.parametrize("name", sorted(FILES))
def test_committed_vectors_are_fresh(name: str) -> None:
    committed = (vectors.VECTORS_DIR / f"{name}.json").read_bytes()
    assert committed == vectors.render(FILES[name]), (
        f"schemas/vectors/{name}.json is stale: run `python -m exchange.vectors`")


def test_no_stray_vector_files() -> None:
    assert {p.stem for p in vectors.VECTORS_DIR.glob("*.json")} == set(FILES)


def _all() -> list[dict[str, Any]]:
    return [v for content in FILES.values() for v in content.get("vectors", [])]


@pytest.mark.parametrize("vector", _all(), ids=lambda v: v["name"])
def test_python_core_agrees_with_each_vector(vector: dict[str, Any]) -> None:
    assert vectors.check(vector) == vector["error"]


def test_every_kind_has_valid_and_tampered_vectors() -> None:
    kinds: dict[str, set[bool]] = {}
    for v in _all():
        kinds.setdefault(v["kind"], set()).add(v["valid"])
        assert v["valid"] == (v["error"] is None)
        assert v["valid"] or v["changed"]
    assert kinds == {k: {True, False} for k in kinds}
    assert set(kinds) == {"canonical", "commitment", "record_digest", "batch", "record",
                          "receipt", "log_entry", "inclusion", "consistency", "checkpoint"}


def test_regenerating_writes_the_same_bytes(tmp_path: Path) -> None:
    vectors.write(tmp_path)
    for name in FILES:
        assert (tmp_path / f"{name}.json").read_bytes() == \
            (vectors.VECTORS_DIR / f"{name}.json").read_bytes()
    assert json.loads((tmp_path / "keys.json").read_text())["keys"]["log"]["vkey"]
