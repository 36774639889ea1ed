"""Text normalisation: NFC, whitespace, one tone placement ("Hòa"), code case."""

from __future__ import annotations

import unicodedata

from hypothesis import given
from hypothesis import strategies as st

from exchange.core.datasets.normalise import (
    is_normalised,
    normalisation_notes,
    normalise_code,
    normalise_record,
    normalise_text,
)


def test_tone_styles_compare_equal() -> None:
    assert normalise_text("Hoà Bình") == normalise_text("Hòa Bình") == "Hòa Bình"
    assert normalise_text("Thuỷ") == "Thủy"
    assert normalise_text("Khoẻ") == "Khỏe"
    assert normalise_text("Uỷ ban nhân dân") == "Ủy ban nhân dân"
    assert normalise_text("HOÀ") == "HÒA"


def test_closed_syllables_and_qu_are_left_alone() -> None:
    for word in ("Hoàng", "Nguyễn", "khuỷu", "Quý", "Quỳnh", "quà", "thuyền", "mùa", "Toàn"):
        assert normalise_text(word) == word
        assert is_normalised(word)


def test_nfc_and_whitespace() -> None:
    decomposed = unicodedata.normalize("NFD", "Nguyễn Thị Hòa")
    assert decomposed != "Nguyễn Thị Hòa"
    assert normalise_text(decomposed) == "Nguyễn Thị Hòa"
    assert normalise_text("  Lê\tVăn \u00a0 Tám\n") == "Lê Văn Tám"
    assert normalise_text("plain ascii") == "plain ascii"
    assert normalise_text("") == ""


def test_code_case() -> None:
    assert normalise_code(" 30a-123.45 ") == "30A-123.45"
    assert normalise_code("bn 531146") == "BN 531146"


def test_notes_name_the_path_and_the_normalised_form() -> None:
    data = {"full_name": " Trần  Thị Thuỷ", "permanent_address": {"street": "Số 1  Lê Lợi"},
            "religion": "Không"}
    notes = normalisation_notes(data, ("full_name", "permanent_address.street", "religion",
                                       "ethnicity"))
    assert [n.path for n in notes] == ["$.full_name", "$.permanent_address.street"]
    assert all(n.code == "not_normalised" for n in notes)
    assert "'Trần Thị Thủy'" in notes[0].message


def test_normalise_record_reports_changed_paths() -> None:
    data = {"plate": "30a-123.45", "make": "Toyota", "owners": [" Hoà ", "ok"],
            "address": {"street": "Thôn  Đông"}, "year": 2020}
    new, changed = normalise_record(data, code_fields=("plate",))
    assert new == {"plate": "30A-123.45", "make": "Toyota", "owners": ["Hòa", "ok"],
                   "address": {"street": "Thôn Đông"}, "year": 2020}
    assert changed == ["$.plate", "$.owners[0]", "$.address.street"]
    assert data["plate"] == "30a-123.45"  # not modified in place


_VIET = st.text(alphabet=st.sampled_from(
    [*"aàáảãạăằắẳẵặâầấẩẫậoòóỏõọôơuùúủũụưyỳýỷỹỵeèéẻẽẹêHhQqTtnNg OoUuYy \t",
     "\u0300", "\u0301", "\u0309", "\u0303", "\u0323", "\u00a0"]), max_size=30)


@given(st.one_of(st.text(max_size=40), _VIET))
def test_idempotent_and_is_normalised_agrees(s: str) -> None:
    n = normalise_text(s)
    assert normalise_text(n) == n
    assert is_normalised(n)
    assert is_normalised(s) == (n == s)
    assert unicodedata.is_normalized("NFC", n)


_VALUES = st.recursive(
    st.one_of(st.none(), st.integers(), _VIET, st.text(max_size=12)),
    lambda inner: st.one_of(st.lists(inner, max_size=3),
                            st.dictionaries(st.sampled_from("abc"), inner, max_size=3)),
    max_leaves=8)


@given(st.dictionaries(st.sampled_from(["name", "street", "tags", "address"]), _VALUES,
                       max_size=4))
def test_normalise_record_fast_path_agrees_with_the_walk(data: dict[str, object]) -> None:
    # the fast path (nothing to change) must give what normalising every string gives
    new, changed = normalise_record(data)

    def each(v: object) -> object:
        if isinstance(v, str):
            return normalise_text(v)
        if isinstance(v, dict):
            return {k: each(x) for k, x in v.items()}
        if isinstance(v, list):
            return [each(x) for x in v]
        return v

    assert new == each(data)
    assert (changed == []) == (new == data)
    assert normalise_record(new) == (new, [])
