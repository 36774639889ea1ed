"""The subscription state machine: credits, cumulative acks, redelivery (pure, no socket)."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from exchange.core.consumer import ConsumerState
from exchange.core.errors import InputError

TIMEOUT = 10.0


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
