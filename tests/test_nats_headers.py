"""The NATS store's client parses message headers as nats-py does, faster (see its docstring)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st
from nats.aio.client import Client as NatsPyClient

from exchange.store.nats.direct import Client

#: pieces header blocks are made of, the awkward ones included
_PIECE = st.sampled_from([b"Nats-Sequence", b"Nats-Subject", b"A", b" ", b"\t", b":", b": ",
                          b"\r\n", b"1", b"x y", b"\xc3\xa9", b"\xff", b"\x1c", b"\x85",
                          b"value", b"", b"Status", b"204", b"\r", b"\n"])


@given(st.lists(_PIECE, max_size=30).map(b"".join))
def test_the_fast_header_parser_agrees_with_nats_py(raw: bytes) -> None:
    assert Client._parse_header_lines(raw) == NatsPyClient._parse_header_lines(raw)


_NAME = st.text(st.characters(min_codepoint=33, max_codepoint=126, exclude_characters=":"),
                min_size=1, max_size=20)
_VALUE = st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=30)


@given(st.lists(st.tuples(_NAME, st.sampled_from([": ", ":", ":  ", ": \t"]), _VALUE),
                max_size=12), st.booleans())
def test_plain_blocks_parse_as_nats_py_does(lines: list[tuple[str, str, str]],
                                            end: bool) -> None:
    # the fast path's own ground: printable lines, some with spaces to strip
    raw = "".join(f"{n}{sep}{v}\r\n" for n, sep, v in lines).encode() + (b"\r\n" if end
                                                                           else b"")
    assert Client._parse_header_lines(raw) == NatsPyClient._parse_header_lines(raw)


def test_a_direct_get_reply_block() -> None:
    raw = (b"Nats-Stream: X_RECORDS\r\nNats-Subject: x.rec.population.1\r\n"
           b"Nats-Sequence: 42\r\nNats-Time-Stamp: 2026-11-27T05:17:17.785076664Z\r\n"
           b"Nats-Num-Pending: 10\r\nNats-Last-Sequence: 41\r\n\r\n")
    parsed = Client._parse_header_lines(raw)
    assert parsed == NatsPyClient._parse_header_lines(raw)
    assert parsed["Nats-Sequence"] == "42" and len(parsed) == 6
