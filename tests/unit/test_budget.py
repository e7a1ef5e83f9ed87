"""The sliding-log request budget, driven by a fake clock whose sleep advances it."""

from __future__ import annotations

import asyncio

import pytest

from exporter.budget import BudgetExhausted, RequestBudget
from tests.clock import FakeClock


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(now=1000.0)


def make_budget(clock: FakeClock, requests: int = 3, window: float = 10.0) -> RequestBudget:
    return RequestBudget(requests=requests, window=window, clock=clock, sleep=clock.sleep)


def assert_at_most_n_in_any_window(grants: list[float], requests: int, window: float) -> None:
    """Every window [t, t + window) starting at a grant holds at most ``requests`` grants."""
    for start in grants:
        inside = [t for t in grants if start <= t < start + window]
        assert len(inside) <= requests, (start, inside)


@pytest.mark.parametrize(
    ("requests", "window"),
    [(0, 10.0), (-1, 10.0), (1, 0.0), (1, -5.0)],
    ids=["zero-requests", "negative-requests", "zero-window", "negative-window"],
)
def test_rejects_a_budget_that_can_grant_nothing(requests: int, window: float) -> None:
    """A budget without at least one request per positive window is refused."""
    with pytest.raises(ValueError, match="at least one request"):
        RequestBudget(requests=requests, window=window)


async def test_grants_up_to_n_requests_at_once_without_waiting(clock: FakeClock) -> None:
    """N requests in a fresh window are granted immediately."""
    budget = make_budget(clock, requests=3)
    for _ in range(3):
        await budget.acquire()
    assert clock.sleeps == []
    assert clock.now == 1000.0
    assert budget.available() == 0


async def test_next_grant_waits_exactly_until_the_oldest_grant_leaves_the_window(
    clock: FakeClock,
) -> None:
    """The N+1th request waits until the oldest grant is a full window old, no more, no less."""
    budget = make_budget(clock, requests=3, window=10.0)
    for _ in range(3):
        await budget.acquire()  # grants at 1000, 1001, 1002
        clock.advance(1.0)
    assert clock.now == 1003.0
    await budget.acquire()
    assert clock.sleeps == [7.0]
    assert clock.now == 1010.0
    await budget.acquire()  # the second grant (1001) must leave next
    assert clock.sleeps == [7.0, 1.0]
    assert clock.now == 1011.0


async def test_never_grants_more_than_n_in_any_window_under_a_burst(clock: FakeClock) -> None:
    """A long burst, with the clock moving irregularly, never puts N+1 grants in one window."""
    budget = make_budget(clock, requests=4, window=10.0)
    grants: list[float] = []
    steps = [0.0, 0.5, 0.0, 3.0, 6.4, 0.1, 0.0, 9.9, 0.2, 0.0, 0.0, 12.0, 0.3, 0.0, 0.0, 0.0]
    for step in steps:
        clock.advance(step)
        await budget.acquire()
        grants.append(clock.now)
    assert len(grants) == len(steps)
    assert_at_most_n_in_any_window(grants, requests=4, window=10.0)
    # a fixed-window or token-bucket budget would allow up to 2N across a boundary; a
    # sliding log keeps each grant at least one window after the grant N places earlier
    for earlier, later in zip(grants, grants[4:], strict=False):
        assert later - earlier >= 10.0


async def test_concurrent_waiters_never_exceed_the_limit(clock: FakeClock) -> None:
    """Many tasks acquiring at once are spread out so no window holds more than N grants."""
    budget = make_budget(clock, requests=2, window=5.0)
    grants: list[float] = []

    async def one() -> None:
        await budget.acquire()
        grants.append(clock.now)

    await asyncio.gather(*(one() for _ in range(7)))
    assert len(grants) == 7
    assert_at_most_n_in_any_window(sorted(grants), requests=2, window=5.0)


async def test_pause_for_blocks_every_grant_until_it_ends(clock: FakeClock) -> None:
    """A pause makes the next request wait until the pause is over, even with budget left."""
    budget = make_budget(clock, requests=3)
    budget.pause_for(30.0)
    assert budget.paused_until == 1030.0
    assert budget.available() == 0
    await budget.acquire()
    assert clock.sleeps == [30.0]
    assert clock.now == 1030.0


@pytest.mark.parametrize(
    ("first", "second", "until"),
    [(30.0, 5.0, 1030.0), (30.0, 60.0, 1060.0), (30.0, 0.0, 1030.0), (30.0, -10.0, 1030.0)],
    ids=["shorter-kept", "longer-extends", "zero-kept", "negative-kept"],
)
def test_pause_for_never_shortens_a_pause_in_force(
    clock: FakeClock, first: float, second: float, until: float
) -> None:
    """A second pause can only extend the first one."""
    budget = make_budget(clock)
    budget.pause_for(first)
    budget.pause_for(second)
    assert budget.paused_until == until


async def test_negative_pause_does_not_block(clock: FakeClock) -> None:
    """A pause of negative length is no pause at all."""
    budget = make_budget(clock)
    budget.pause_for(-5.0)
    await budget.acquire()
    assert clock.sleeps == []


@pytest.mark.parametrize(
    ("deadline_in", "wait"),
    [(10.0, 30.0), (29.9, 30.0)],
    ids=["paused", "paused-just-past-deadline"],
)
async def test_a_pause_past_the_deadline_raises_budget_exhausted(
    clock: FakeClock, deadline_in: float, wait: float
) -> None:
    """No grant can come before the deadline while paused: fail at once, without waiting
    or recording one."""
    budget = make_budget(clock, requests=3, window=100.0)
    await budget.acquire()  # 1000
    clock.advance(4.0)
    await budget.acquire()  # 1004
    budget.pause_for(30.0)
    with pytest.raises(BudgetExhausted) as caught:
        await budget.acquire(deadline=clock.now + deadline_in)
    assert caught.value.wait == pytest.approx(wait)
    assert clock.sleeps == []
    # one request is free again once the pause is over; a recorded refusal would use it
    clock.now = 1034.0
    assert budget.available() == 1


async def test_a_full_window_is_waited_for_past_the_deadline(clock: FakeClock) -> None:
    """A full window never refuses: the grant waits for room however late that is (the
    cycle stretches), and says how long it waited."""
    budget = make_budget(clock, requests=3, window=100.0)
    assert await budget.acquire() == 0.0  # 1000
    clock.advance(4.0)
    assert await budget.acquire() == 0.0  # 1004
    assert await budget.acquire() == 0.0  # 1004: the window is full until 1100
    assert await budget.acquire(deadline=clock.now + 5.0) == pytest.approx(96.0)
    assert clock.sleeps == [pytest.approx(96.0)]
    assert clock.now == pytest.approx(1100.0)


async def test_waits_when_the_grant_comes_exactly_at_the_deadline(clock: FakeClock) -> None:
    """A grant due at the deadline itself is waited for, not refused."""
    budget = make_budget(clock, requests=1, window=10.0)
    await budget.acquire()
    await budget.acquire(deadline=1010.0)
    assert clock.sleeps == [10.0]


@pytest.mark.parametrize(
    ("grants", "later", "paused", "expected"),
    [
        (0, 0.0, False, 3),
        (1, 0.0, False, 2),
        (3, 0.0, False, 0),
        (3, 9.9, False, 0),
        (3, 10.0, False, 3),
        (0, 0.0, True, 0),
        (2, 10.0, True, 0),
    ],
    ids=[
        "fresh",
        "one-used",
        "all-used",
        "all-used-window-not-over",
        "window-over",
        "paused",
        "paused-after-window",
    ],
)
async def test_available_counts_what_could_be_granted_now(
    clock: FakeClock, grants: int, later: float, paused: bool, expected: int
) -> None:
    """available() is N minus the grants in the window, and zero during a pause."""
    budget = make_budget(clock, requests=3, window=10.0)
    for _ in range(grants):
        await budget.acquire()
    if paused:
        budget.pause_for(60.0)
    clock.advance(later)
    assert budget.available() == expected


class YieldingClock(FakeClock):
    """Its sleep lets every other task run before time moves, as a real sleep would
    (FakeClock's moves time first, then yields)."""

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        await asyncio.sleep(0)
        self.now += seconds


async def test_waiters_are_granted_by_priority_then_arrival() -> None:
    """With the window full, queued requests leave lowest priority number first, and in
    arrival order within a priority, whatever order they came in."""
    clock = YieldingClock(1000.0)
    budget = RequestBudget(requests=1, window=10.0, clock=clock, sleep=clock.sleep)
    await budget.acquire()
    order: list[str] = []

    async def ask(name: str, priority: int) -> None:
        await budget.acquire(priority=priority)
        order.append(name)

    await asyncio.gather(
        ask("other-1", 2), ask("live-1", 1), ask("listing", 0), ask("other-2", 2), ask("live-2", 1)
    )
    assert order == ["listing", "live-1", "live-2", "other-1", "other-2"]


async def test_a_cancelled_waiter_does_not_hold_up_the_others() -> None:
    """A waiter cancelled at the head of the queue, mid-sleep, leaves it; the next one takes
    its place and is granted when the window has room."""
    clock = FakeClock(1000.0)
    gate = asyncio.Event()

    async def sleep(seconds: float) -> None:  # blocks until the test opens the gate
        clock.sleeps.append(seconds)
        await gate.wait()
        clock.now += seconds

    budget = RequestBudget(requests=1, window=10.0, clock=clock, sleep=sleep)
    await budget.acquire()
    head = asyncio.ensure_future(budget.acquire(priority=0))
    behind = asyncio.ensure_future(budget.acquire(priority=1))
    while len(clock.sleeps) < 1:
        await asyncio.sleep(0)
    head.cancel()
    while len(clock.sleeps) < 2:  # behind is the head now, and sleeps for the window
        await asyncio.sleep(0)
    gate.set()
    assert await asyncio.wait_for(behind, timeout=5) == 10.0
    assert head.cancelled()
    assert budget.available() == 0  # behind's grant is in the window; head took none


async def test_a_pause_is_checked_against_the_deadline_as_it_is_now() -> None:
    """A request that waited long for the window, while its cycle's deadline moved with it,
    is not refused for a 1 s pause that starts just before its grant: the deadline is read
    when the pause is checked, not when the request was asked."""
    clock = FakeClock(1000.0)

    async def sleep(seconds: float) -> None:
        clock.now += seconds
        if seconds > 50:  # as if an answer said Ratelimit: r=0;t=1 as the window opens
            budget.pause_for(1.0)

    budget = RequestBudget(requests=1, window=100.0, clock=clock, sleep=sleep)
    await budget.acquire()
    deadline = [1010.0]

    def moving() -> float:  # the cycle's deadline, pushed back while it waits
        return deadline[0] + (clock.now - 1000.0)

    assert await budget.acquire(deadline=moving) == pytest.approx(101.0)
    assert clock.now == pytest.approx(1101.0)


async def test_a_pause_fails_the_waiters_it_would_hold_past_their_deadline_at_once() -> None:
    """Requests already waiting for a full window learn of a new pause at once: each one
    whose deadline the pause outlasts fails then, not when the window would have opened."""
    clock = FakeClock(1000.0)
    gate = asyncio.Event()  # never set: a sleep lasts until something wakes the waiter

    async def sleep(seconds: float) -> None:
        clock.sleeps.append(seconds)
        await gate.wait()

    budget = RequestBudget(requests=1, window=300.0, clock=clock, sleep=sleep)
    await budget.acquire()
    waiters = [
        asyncio.ensure_future(budget.acquire(deadline=1010.0, priority=p)) for p in (0, 1, 2)
    ]
    while not clock.sleeps:
        await asyncio.sleep(0)
    budget.pause_for(60.0)
    results = await asyncio.wait_for(asyncio.gather(*waiters, return_exceptions=True), 5)
    assert all(isinstance(r, BudgetExhausted) for r in results)
    assert budget.available() == 0 and len(clock.sleeps) == 1


async def test_slack_holds_each_window_longer() -> None:
    """With ``slack``, a grant counts for its window plus the slack: requests that reach
    the API later than granted never make more than the limit in the API's own window."""
    clock = FakeClock(0.0)
    budget = RequestBudget(requests=2, window=10.0, clock=clock, sleep=clock.sleep, slack=2.0)
    await budget.acquire()
    await budget.acquire()
    clock.now += 10.5  # the window alone would have room again
    assert budget.available() == 0
    waited = await budget.acquire()
    assert clock.now == pytest.approx(12.0) and waited == pytest.approx(1.5)


async def test_a_kept_share_is_left_to_negative_priorities_only(clock: FakeClock) -> None:
    """With a tenth of the window kept, ordinary requests stop at the other nine tenths,
    while a negative priority (a webhook's refresh) is still granted at once."""
    never = asyncio.Event()

    async def wait_for_ever(seconds: float) -> None:
        await never.wait()  # time stands still: whoever sleeps stays waiting

    budget = RequestBudget(requests=10, window=10.0, clock=clock, sleep=wait_for_ever)
    budget.keep_share(0.1)
    assert budget.kept(10) == 1
    assert budget.planned == 9
    for _ in range(9):
        assert await budget.acquire(priority=0) == 0.0
    ordinary = asyncio.ensure_future(budget.acquire(priority=0))
    for _ in range(5):
        await asyncio.sleep(0)
    assert not ordinary.done()  # the tenth is kept
    assert await asyncio.wait_for(budget.acquire(priority=-1), timeout=1) == 0.0
    assert not ordinary.done()
    ordinary.cancel()
    with pytest.raises(asyncio.CancelledError):
        await ordinary


async def test_negative_priorities_beyond_the_kept_share_still_keep_the_limit(
    clock: FakeClock,
) -> None:
    """Refreshes may use the whole window, but never more than it: the limit holds for
    every grant, whatever its priority."""
    budget = make_budget(clock, requests=5, window=10.0)
    budget.keep_share(0.2)
    grants = []
    for _ in range(12):
        await budget.acquire(priority=-1)
        grants.append(clock.now)
    assert_at_most_n_in_any_window(grants, 5, 10.0)


@pytest.mark.parametrize("share", [-0.1, 0.6])
def test_a_kept_share_out_of_range_is_refused(share: float) -> None:
    """Keeping more than half the budget (or less than none) is a mistake, not a plan."""
    with pytest.raises(ValueError, match="share kept"):
        make_budget(FakeClock()).keep_share(share)
