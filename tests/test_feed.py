"""A subscription's feed: its state machine (credits, cumulative acks, redelivery) and the frames
it makes from stored records (pure, no socket)."""

from __future__ import annotations

import itertools
from typing import Any

import msgspec
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from exchange.core import datasets
from exchange.core.errors import InputError
from exchange.core.feed import ConsumerState, Feed, Frame, FrameCache, parse_request
from exchange.core.ledger import BatchRow, StoredBody, StoredRecord
from exchange.core.seal import seal
from exchange.core.signing import Verifier
from exchange.core.wire import Ack, Credit, Hello, Records
from tests.conftest import SEALED_AT, people

TIMEOUT = 10.0
NODE = "vn.gov.mps.population"
SPEC = datasets.get("population")


def fresh(acked: int = -1) -> ConsumerState:
    return ConsumerState(acked=acked, ack_timeout=TIMEOUT)


def inflight_seqs(s: ConsumerState) -> list[int]:
    return [seq for seq, _ in s.inflight]


def test_no_credit_no_send() -> None:
    s = fresh()
    assert s.wants(100) == 0
    with pytest.raises(AssertionError):
        s.sent([0], now=0.0)


def test_credits_limit_sends() -> None:
    s = fresh()
    s.grant(3)
    assert s.wants(10) == 3
    assert s.wants(2) == 2
    assert s.wants(0) == 0
    s.grant(4)
    assert s.wants(100) == 7


def test_sent_spends_credits_and_tracks_inflight() -> None:
    s = fresh()
    s.grant(5)
    s.sent([0, 1, 2], now=1.0)
    assert s.credits == 2
    assert s.wants(10) == 2
    assert inflight_seqs(s) == [0, 1, 2]
    assert s.sent_upto == 2
    assert s.max_sent == 2
    s.sent([], now=2.0)  # nothing sent: nothing changes
    assert s.credits == 2
    assert s.sent_upto == 2


def test_sent_more_than_credit_or_out_of_order_is_a_bug() -> None:
    s = fresh()
    s.grant(2)
    with pytest.raises(AssertionError):
        s.sent([0, 1, 2], now=0.0)
    s.sent([0], now=0.0)
    with pytest.raises(AssertionError):
        s.sent([0], now=0.0)  # already sent


def test_start_position_is_the_durable_ack() -> None:
    s = fresh(acked=41)
    assert s.sent_upto == 41
    assert s.max_sent == 41
    s.grant(1)
    s.sent([41], now=0.0)  # acked already: nothing to track, no credit spent
    assert s.credits == 1 and not s.inflight
    s.sent([42], now=0.0)
    assert inflight_seqs(s) == [42]


def test_cumulative_ack_pops_inflight_and_reports_movement() -> None:
    s = fresh()
    s.grant(5)
    s.sent([0, 1, 2, 3, 4], now=0.0)
    assert s.ack(2) is True
    assert s.acked == 2
    assert inflight_seqs(s) == [3, 4]
    assert s.ack(2) is False  # a repeat
    assert s.ack(1) is False  # an old one
    assert s.acked == 2
    assert inflight_seqs(s) == [3, 4]
    assert s.ack(4) is True
    assert not s.inflight
    assert s.next_deadline() is None


def test_ack_with_gaps_in_seqs() -> None:
    # seqs need not be contiguous (a subscription skips other datasets' records)
    s = fresh()
    s.grant(3)
    s.sent([3, 7, 12], now=0.0)
    assert s.ack(8) is True
    assert inflight_seqs(s) == [12]


@pytest.mark.parametrize("seq", [3, 4, 1000])
def test_ack_beyond_anything_sent_is_refused(seq: int) -> None:
    s = fresh()
    s.grant(3)
    s.sent([0, 1, 2], now=0.0)
    with pytest.raises(InputError) as info:
        s.ack(seq)
    assert info.value.code == "bad_ack"
    assert info.value.status == 400
    # and the state is untouched
    assert s.acked == -1
    assert inflight_seqs(s) == [0, 1, 2]


def test_ack_before_anything_sent_is_refused() -> None:
    s = fresh()
    with pytest.raises(InputError) as info:
        s.ack(0)
    assert info.value.code == "bad_ack"


def test_overdue_and_next_deadline() -> None:
    s = fresh()
    assert s.next_deadline() is None
    assert not s.overdue(1e9)
    s.grant(4)
    s.sent([0, 1], now=100.0)
    s.sent([2, 3], now=105.0)
    assert s.next_deadline() == 100.0 + TIMEOUT
    assert not s.overdue(109.9)
    assert s.overdue(110.0)
    s.ack(1)  # the oldest unacked record is now one sent at 105
    assert s.next_deadline() == 105.0 + TIMEOUT
    assert not s.overdue(110.0)
    assert s.overdue(115.0)


def test_rewind_goes_back_to_last_ack_without_refunding_credit() -> None:
    # the client received those frames and grants credit again for each frame it reads
    s = fresh()
    s.grant(5)
    s.sent([0, 1, 2, 3], now=0.0)
    s.ack(1)
    assert s.credits == 1
    assert s.overdue(TIMEOUT)
    assert s.rewind() == 2
    assert s.credits == 1
    s.grant(2)  # the client's grant for the frame it read
    assert not s.inflight
    assert s.sent_upto == 1  # reads continue after the last ack
    assert s.max_sent == 3
    assert s.redeliveries == 2
    assert s.next_deadline() is None
    # the same records go out again
    s.sent([2, 3], now=20.0)
    assert inflight_seqs(s) == [2, 3]
    assert s.credits == 1


def test_rewind_with_nothing_inflight_is_a_no_op() -> None:
    s = fresh()
    s.grant(2)
    assert s.rewind() == 0
    assert s.credits == 2
    assert s.redeliveries == 0


def test_late_ack_after_rewind_is_accepted_and_skips_resending() -> None:
    s = fresh()
    s.grant(5)
    s.sent([0, 1, 2, 3, 4], now=0.0)
    s.rewind()
    assert s.sent_upto == -1
    s.grant(5)  # the client read the first frame and grants again
    s.sent([0, 1], now=TIMEOUT)  # redelivery has begun
    # the client's ack for the first delivery arrives late: it covers all five
    assert s.ack(4) is True
    assert s.acked == 4
    assert s.sent_upto == 4  # 2, 3 and 4 are not sent a second time
    assert not s.inflight
    # a frame read before the late ack arrived: its acked records are dropped, not tracked
    credits = s.credits
    s.sent([2, 3, 4], now=TIMEOUT)
    assert not s.inflight and s.credits == credits
    s.sent([5], now=TIMEOUT)
    assert inflight_seqs(s) == [5]


def test_late_partial_ack_after_rewind() -> None:
    s = fresh()
    s.grant(5)
    s.sent([0, 1, 2, 3, 4], now=0.0)
    s.rewind()
    assert s.ack(2) is True  # covers records the client got before the rewind
    assert s.sent_upto == 2
    s.grant(5)
    s.sent([3, 4], now=TIMEOUT)
    # an ack up to the highest seq ever sent stays legitimate; beyond it does not
    with pytest.raises(InputError):
        s.ack(5)


class ConsumerMachine(RuleBasedStateMachine):
    """Drive grant / send / ack / clock / rewind in any order; the invariants always hold."""

    def __init__(self) -> None:
        super().__init__()
        self.s = ConsumerState(acked=-1, ack_timeout=TIMEOUT)
        self.now = 0.0
        self.granted = 0
        self.acked_model = -1

    @rule(n=st.integers(0, 6))
    def grant(self, n: int) -> None:
        self.s.grant(n)
        self.granted += n

    @rule(limit=st.integers(0, 8), gap=st.integers(1, 3))
    def send(self, limit: int, gap: int) -> None:
        n = self.s.wants(limit)
        assert n <= limit
        assert n <= self.s.credits
        start = self.s.sent_upto + 1
        seqs = list(range(start, start + n * gap, gap))
        before = self.s.credits
        self.s.sent(seqs, self.now)
        assert self.s.credits == before - n
        if seqs:
            assert self.s.sent_upto == seqs[-1]
            assert inflight_seqs(self.s)[-n:] == seqs

    @rule(data=st.data())
    def ack(self, data: st.DataObject) -> None:
        seq = data.draw(st.integers(-1, self.s.max_sent), label="seq")
        moved = self.s.ack(seq)
        assert moved == (seq > self.acked_model)
        self.acked_model = max(self.acked_model, seq)
        assert self.s.acked == self.acked_model
        assert self.s.sent_upto >= seq

    @rule(beyond=st.integers(1, 5))
    def bad_ack(self, beyond: int) -> None:
        snapshot = (self.s.acked, self.s.sent_upto, list(self.s.inflight), self.s.credits)
        with pytest.raises(InputError) as info:
            self.s.ack(self.s.max_sent + beyond)
        assert info.value.code == "bad_ack"
        assert snapshot == (self.s.acked, self.s.sent_upto, list(self.s.inflight),
                            self.s.credits)

    @rule(dt=st.sampled_from([0.0, 0.5, 3.0, TIMEOUT / 2, TIMEOUT]))
    def advance(self, dt: float) -> None:
        self.now += dt

    @rule()
    def rewind_if_overdue(self) -> None:
        if not self.s.overdue(self.now):
            return
        n_inflight = len(self.s.inflight)
        credits = self.s.credits
        redeliveries = self.s.redeliveries
        assert self.s.rewind() == n_inflight
        assert self.s.credits == credits  # no refund: the client re-grants per frame read
        assert self.s.redeliveries == redeliveries + n_inflight
        assert self.s.sent_upto == self.s.acked
        assert not self.s.inflight

    @invariant()
    def credits_never_negative(self) -> None:
        assert self.s.credits >= 0

    @invariant()
    def positions_are_ordered(self) -> None:
        assert self.s.acked <= self.s.sent_upto <= self.s.max_sent

    @invariant()
    def inflight_strictly_increasing_and_unacked(self) -> None:
        seqs = inflight_seqs(self.s)
        assert all(a < b for a, b in itertools.pairwise(seqs))
        assert all(seq > self.s.acked for seq in seqs)
        if seqs:
            assert seqs[-1] == self.s.sent_upto

    @invariant()
    def never_more_in_flight_than_granted(self) -> None:
        assert len(self.s.inflight) <= self.granted
        # stronger: every credit granted is either unspent or in flight, at most once
        assert self.s.credits + len(self.s.inflight) <= self.granted

    @invariant()
    def deadline_matches_overdue(self) -> None:
        deadline = self.s.next_deadline()
        if deadline is None:
            assert not self.s.overdue(self.now)
        else:
            assert self.s.overdue(self.now) == (self.now >= deadline)


ConsumerMachine.TestCase.settings = settings(
    max_examples=200, stateful_step_count=40, deadline=None, derandomize=True)
TestConsumerMachine = ConsumerMachine.TestCase


# -- the feed: client frames and stored records in, frames out (no socket) -------------------


def _stored(n: int, *, first_seq: int = 0, batch_id: int = 7, completeness: float = 1.0,
            seed: int = 4) -> tuple[list[StoredRecord], dict[int, BatchRow]]:
    """``n`` stored records of one batch, as a store would read them."""
    key = Ed25519PrivateKey.generate()
    batch = seal(key, NODE, SPEC, [(p["id"], 1, p) for p in people(n, seed=seed)],
                 bytes(32), time=SEALED_AT)
    commitments, digests, paths = Verifier({NODE: key.public_key()}).verify_batch(
        batch, SPEC.groups)
    rows = [StoredRecord(first_seq + i, "population", r.event.subject, 1, batch_id, i, 1.5e9,
                         digests[i], msgspec.msgpack.encode(StoredBody(
                             r.event, r.salts, commitments[i], paths[i], completeness)))
            for i, r in enumerate(batch.records)]
    return rows, {batch_id: BatchRow(batch_id, batch.statement, batch.signature)}


def _feed(**kw: Any) -> Feed:
    args: dict[str, Any] = {"dataset": "population", "acked": -1, "ack_timeout": TIMEOUT,
                            "granted": list(SPEC.groups), "binary": True}
    args.update(kw)
    return Feed(**args)


def _records(frame: Frame | None) -> Records:
    assert frame is not None
    decoded: Records = msgspec.msgpack.decode(frame.data, type=Records)
    return decoded


def test_a_feed_sends_nothing_without_credit_and_at_most_the_credit() -> None:
    feed = _feed()
    assert feed.wants() == 0
    feed.receive(msgspec.msgpack.encode(Credit(3)))
    assert feed.wants() == 3
    rows, batches = _stored(5)
    got = _records(feed.frame(rows[:3], batches, head=4, now=0.0))
    assert [r.seq for r in got.records] == [0, 1, 2] and got.head == 4
    assert feed.wants() == 0 and feed.position == 2


def test_a_full_read_is_cut_at_a_batch_boundary_and_whole_batches_lose_their_paths() -> None:
    a, ba = _stored(3, batch_id=1)
    b, bb = _stored(4, first_seq=3, batch_id=2, seed=5)
    feed = _feed()
    feed.receive(msgspec.msgpack.encode(Credit(5)))
    assert feed.wants() == 5
    got = _records(feed.frame([*a, *b[:2]], {**ba, **bb}, head=6, now=0.0))
    # the read was full and cut batch 2: it waits for the next frame
    assert [r.seq for r in got.records] == [0, 1, 2] and [x.id for x in got.batches] == [1]
    assert all(r.path == [] for r in got.records)  # batch 1 travels whole
    feed.receive(msgspec.msgpack.encode(Credit(3)))
    assert feed.position == 2 and feed.wants() == 5
    # a read that was not full is sent as it is: the cut batch's records keep their paths
    got = _records(feed.frame(b[:2], {}, head=6, now=0.0))
    assert [r.seq for r in got.records] == [3, 4] and all(r.path for r in got.records)


def test_paths_always_keeps_every_path() -> None:
    rows, batches = _stored(3)
    feed = _feed(always_paths=True)
    feed.receive(msgspec.msgpack.encode(Credit(10)))
    feed.wants()
    assert all(r.path for r in _records(feed.frame(rows, batches, head=2, now=0.0)).records)


def test_a_partial_grant_is_projected_and_withholds_the_rest() -> None:
    rows, batches = _stored(2)
    feed = _feed(granted=["residence"], binary=False)
    feed.receive(b'{"type":"credit","n":5}'.decode())
    feed.wants()
    frame = feed.frame(rows, batches, head=1, now=0.0)
    assert frame is not None and not frame.binary
    got = msgspec.json.decode(frame.data, type=Records)
    for r in got.records:
        assert set(r.event.data) == {"permanent_address"} and set(r.salts) == {"residence"}
        assert set(r.withheld) == set(SPEC.groups) - {"residence"}


def test_acks_move_the_position_and_redelivery_waits_for_the_clock() -> None:
    rows, batches = _stored(4)
    feed = _feed()
    feed.receive(msgspec.msgpack.encode(Credit(4)))
    feed.wants()
    feed.frame(rows, batches, head=3, now=100.0)
    assert feed.receive(msgspec.msgpack.encode(Ack(1))) == 1
    assert feed.receive(msgspec.msgpack.encode(Ack(1))) is None  # not forward: nothing to store
    assert feed.deadline() == 100.0 + TIMEOUT
    assert feed.tick(100.0 + TIMEOUT - 0.001) == 0
    assert feed.tick(100.0 + TIMEOUT) == 2  # seqs 2 and 3 go back
    assert feed.position == 1
    feed.receive(msgspec.msgpack.encode(Credit(2)))
    feed.wants()
    again = _records(feed.frame(rows[2:], {}, head=3, now=200.0))
    assert [(r.seq, r.redelivered) for r in again.records] == [(2, True), (3, True)]


def test_records_below_the_agreements_completeness_are_passed_over_without_credit() -> None:
    rows, batches = _stored(3, completeness=0.5)
    feed = _feed(min_completeness=0.9)
    feed.receive(msgspec.msgpack.encode(Credit(3)))
    feed.wants()
    assert feed.frame(rows, batches, head=2, now=0.0) is None
    assert feed.position == 2 and feed.state.credits == 3


def test_feeds_with_one_grant_share_one_encoding() -> None:
    rows, batches = _stored(3)
    cache = FrameCache()
    one, two = _feed(cache=cache), _feed(cache=cache)
    for f in (one, two):
        f.receive(msgspec.msgpack.encode(Credit(3)))
        f.wants()
    first = one.frame(rows, batches, head=2, now=0.0)
    assert len(cache.encoded) == 3 and set(cache.batches) == {7}
    second = two.frame(rows, {}, head=2, now=0.0)  # the batch comes from the cache
    assert first is not None and second is not None and first.data == second.data


def test_frames_that_are_not_credit_or_ack_are_refused() -> None:
    feed = _feed()
    for bad in (b"\xc1", '{"type":"credit","n":-1}', '{"type":"nope"}', "not json"):
        with pytest.raises(InputError):
            feed.receive(bad)
    with pytest.raises(InputError) as err:
        feed.receive(msgspec.msgpack.encode(Ack(0)))  # nothing was sent yet
    assert err.value.code == "bad_ack"


def test_hello_says_where_the_feed_starts_and_what_it_grants() -> None:
    hello = msgspec.msgpack.decode(_feed(acked=41, granted=["residence", "identity"]).hello(
        "s", "tax administration"), type=Hello)
    assert (hello.acked, hello.start_after, hello.granted) == (41, 41, ["residence", "identity"])


@pytest.mark.parametrize(("query", "code"), [
    ({"name": "a b"}, "bad_subscription_name"), ({"encoding": "xml"}, "bad_encoding"),
    ({"paths": "never"}, "bad_paths"), ({"start": "seq:-1"}, "bad_start"),
    ({"start": "time:2026-01-01T00:00:00"}, "bad_start")])
def test_a_subscribe_request_names_what_is_wrong(query: dict[str, str], code: str) -> None:
    with pytest.raises(InputError) as err:
        parse_request(query)
    assert err.value.code == code


def test_a_subscribe_request_with_defaults() -> None:
    req = parse_request({"start": "seq:5", "encoding": "msgpack", "paths": "always"})
    assert (req.name, req.binary, req.always_paths, req.start) == ("default", True, True,
                                                                   ("seq", 5))


def test_acks_that_keep_moving_hold_off_redelivery() -> None:
    """The timeout runs from the later of the oldest send and the last ack that moved the
    position: a slow subscriber working through a wide window is not sent it again."""
    s = fresh()
    s.grant(100)
    s.sent(list(range(100)), now=0.0)
    now = 0.0
    for upto in range(9, 100, 10):  # 10 acked per half timeout: 5 timeouts in all
        now += TIMEOUT / 2
        assert not s.overdue(now)
        assert s.ack(upto, now)
        assert s.next_deadline() == (now + TIMEOUT if s.inflight else None)
    assert not s.inflight and s.redeliveries == 0
    # without ``now`` (the position alone) an ack does not count as progress in time
    t = fresh()
    t.grant(3)
    t.sent([0, 1, 2], now=0.0)
    assert t.ack(0) and t.overdue(TIMEOUT)
    # a stop is still a stop: nothing acked for a timeout after the last ack
    u = fresh()
    u.grant(3)
    u.sent([0, 1, 2], now=0.0)
    assert u.ack(0, now=TIMEOUT / 2)
    assert not u.overdue(TIMEOUT * 1.5 - 0.001) and u.overdue(TIMEOUT * 1.5)
    assert u.rewind() == 2
