"""The limiter on the real Redis against a reference model, with a controlled clock (P2)."""

import asyncio
import itertools
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import pytest
from django.conf import settings
from hypothesis import HealthCheck, example, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from gateway.batching import ScriptBatcher
from gateway.limits import Admission, Limiter, Limits, Spend, period_ends
from metering.redis_clients import redis_connect_async

pytestmark = pytest.mark.redis_cluster

START = datetime(2026, 11, 22, 10, 0, tzinfo=UTC)
LEASE_MS = 30_000
# Fresh account ids each run: limit keys outlive a test run (day counters last a day).
accounts = itertools.count(uuid.uuid4().int % 10**9 * 1000)


@dataclass
class Reference:
    """The limits' meaning, written as plainly as possible."""

    limits: Limits
    requests: dict[str, int] = field(default_factory=dict)  # id -> admitted at (ms)
    tokens: dict[str, tuple[int, int]] = field(default_factory=dict)  # id -> (at, amount)
    day: int = 0
    leases: dict[str, int] = field(default_factory=dict)  # id -> lease expiry (ms)

    def admit(self, now: int, request_id: str, reserve: int) -> tuple[bool, str]:
        self.requests = {k: t for k, t in self.requests.items() if t > now - 60_000}
        self.tokens = {k: v for k, v in self.tokens.items() if v[0] > now - 60_000}
        self.leases = {k: t for k, t in self.leases.items() if t > now}
        used = sum(amount for _, amount in self.tokens.values())
        checks = [
            ("concurrent", self.limits.max_concurrent_requests, len(self.leases)),
            ("requests", self.limits.requests_per_minute, len(self.requests)),
            ("tokens", self.limits.tokens_per_minute, used),
            ("tokens_per_day", self.limits.tokens_per_day, self.day),
        ]
        for reason, limit, current in checks:
            if limit is not None and current >= limit:
                return False, reason
        self.requests[request_id] = now
        self.tokens[request_id] = (now, reserve)
        self.day += reserve
        self.leases[request_id] = now + LEASE_MS
        return True, ""

    def settle(self, request_id: str, reserved: int, used: int) -> None:
        if request_id in self.tokens:
            at, amount = self.tokens[request_id]
            self.tokens[request_id] = (at, amount + used - reserved)
        self.day += used - reserved
        self.leases.pop(request_id, None)


@pytest.fixture(scope="module")
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    loop = asyncio.new_event_loop()
    yield loop
    loop.close()


@pytest.fixture(scope="module")
def limiter(loop: asyncio.AbstractEventLoop) -> Iterator[Limiter]:
    client = redis_connect_async(settings.REDIS_URL)
    batcher = ScriptBatcher(client, linger=0.001)
    yield Limiter(client, batcher, lease_seconds=LEASE_MS / 1000)
    loop.run_until_complete(client.aclose())


async def settle(
    limiter: Limiter, admission: Admission, request_id: str, used: int, spent: int = 0
) -> None:
    limiter.settle(admission, request_id=request_id, used=used, spent=spent)
    await limiter._batcher.idle()


limits_strategy = st.builds(
    Limits,
    requests_per_minute=st.none() | st.integers(1, 5),
    tokens_per_minute=st.none() | st.integers(10, 300),
    tokens_per_day=st.none() | st.integers(50, 800),
    max_concurrent_requests=st.none() | st.integers(1, 3),
)
operations = st.lists(
    st.tuples(
        st.integers(0, 40_000),  # clock advance (ms)
        st.integers(1, 120),  # tokens to reserve
        st.none() | st.integers(0, 150),  # settle the oldest open request with this many
    ),
    max_size=25,
)


@hypothesis_settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(limits=limits_strategy, ops=operations)
def test_the_limiter_agrees_with_the_reference_model(
    loop: asyncio.AbstractEventLoop,
    limiter: Limiter,
    limits: Limits,
    ops: list[tuple[int, int, int | None]],
) -> None:
    account_id = next(accounts)
    reference = Reference(limits)
    now = START
    open_requests: list[tuple[str, Admission]] = []
    for step, (advance, reserve, settle_with) in enumerate(ops):
        now += timedelta(milliseconds=advance)
        if settle_with is not None and open_requests:
            request_id, admission = open_requests.pop(0)
            loop.run_until_complete(settle(limiter, admission, request_id, settle_with))
            reference.settle(request_id, admission.reserved, settle_with)
        request_id = f"r{step}"
        got = loop.run_until_complete(
            limiter.admit(
                account_id=account_id,
                request_id=request_id,
                reserve=reserve,
                limits=limits,
                now=now,
            )
        )
        expected = reference.admit(int(now.timestamp() * 1000), request_id, reserve)
        assert (got.admitted, got.reason) == expected, f"step {step}"
        if got.admitted:
            open_requests.append((request_id, got))
            assert got.requests_used == len(reference.requests)
            assert got.tokens_used == sum(a for _, a in reference.tokens.values())


@hypothesis_settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    cap=st.integers(0, 3_000),
    ops=st.lists(
        st.tuples(
            st.integers(0, 900),  # money to reserve (pico-units)
            st.none() | st.integers(0, 1_200),  # settle the oldest open request at this cost
        ),
        max_size=25,
    ),
)
# Reserved at nothing, then it costs something: the month's spend counts it all the same.
@example(cap=3_000, ops=[(0, None), (0, 1)])
def test_the_hard_cap_agrees_with_the_reference_model(
    loop: asyncio.AbstractEventLoop, limiter: Limiter, cap: int, ops: list[tuple[int, int | None]]
) -> None:
    """Admitted while the month's spend (reservations in flight at their most, settled
    requests at their cost) is under the cap; so it is crossed by at most one reservation."""
    account_id, spent = next(accounts), 0
    open_requests: list[tuple[str, Admission]] = []
    for step, (reserve, settle_with) in enumerate(ops):
        if settle_with is not None and open_requests:
            request_id, admission = open_requests.pop(0)
            loop.run_until_complete(settle(limiter, admission, request_id, 0, settle_with))
            spent += settle_with - admission.spend_reserved
        got = loop.run_until_complete(
            limiter.admit(
                account_id=account_id,
                request_id=f"r{step}",
                reserve=1,
                limits=Limits(),
                now=START,
                spend=Spend("XTS", reserve, cap),
            )
        )
        assert (got.admitted, got.reason) == ((True, "") if spent < cap else (False, "budget"))
        if got.admitted:
            open_requests.append((f"r{step}", got))
            spent += reserve
        else:
            assert got.retry_after_ms == period_ends(START)[1] * 1000
        standing = loop.run_until_complete(
            limiter.peek(account_id=account_id, now=START, currency="XTS")
        )
        assert standing.spent_this_month == spent, f"step {step}"


def test_a_refused_request_changes_nothing(
    loop: asyncio.AbstractEventLoop, limiter: Limiter
) -> None:
    account_id, limits = next(accounts), Limits(requests_per_minute=1, tokens_per_minute=100)

    def admit(request_id: str, at: datetime) -> Admission:
        return loop.run_until_complete(
            limiter.admit(
                account_id=account_id, request_id=request_id, reserve=10, limits=limits, now=at
            )
        )

    assert admit("a", START).admitted
    refused = admit("b", START + timedelta(seconds=1))
    assert (refused.admitted, refused.reason) == (False, "requests")
    assert refused.retry_after_ms == 59_000
    assert (refused.requests_used, refused.tokens_used) == (1, 10)
    assert admit("c", START + timedelta(seconds=60)).admitted


def test_a_spent_daily_quota_waits_for_the_next_day(
    loop: asyncio.AbstractEventLoop, limiter: Limiter
) -> None:
    account_id, limits = next(accounts), Limits(tokens_per_day=100)
    late = datetime(2026, 11, 22, 23, 59, 0, tzinfo=UTC)
    first = loop.run_until_complete(
        limiter.admit(account_id=account_id, request_id="a", reserve=150, limits=limits, now=late)
    )
    assert first.admitted  # the quota was not yet spent: one reservation may cross it
    refused = loop.run_until_complete(
        limiter.admit(account_id=account_id, request_id="b", reserve=1, limits=limits, now=late)
    )
    assert (refused.admitted, refused.reason, refused.retry_after_ms) == (
        False,
        "tokens_per_day",
        60_000,
    )
    tomorrow = loop.run_until_complete(
        limiter.admit(
            account_id=account_id,
            request_id="c",
            reserve=1,
            limits=limits,
            now=late + timedelta(minutes=2),
        )
    )
    assert tomorrow.admitted


def test_period_ends_are_utc_calendar_boundaries() -> None:
    assert period_ends(datetime(2026, 12, 31, 23, 0, tzinfo=UTC)) == (3600, 3600)
    assert period_ends(datetime(2026, 2, 28, 0, 0, tzinfo=UTC)) == (86400, 86400)


def test_a_busy_accounts_window_slides_in_one_call(
    loop: asyncio.AbstractEventLoop, limiter: Limiter
) -> None:
    """Thousands of entries leaving the window at once (a busy account) must not break it."""
    account_id, limits = next(accounts), Limits(requests_per_minute=100_000)

    async def admit_many() -> None:
        await asyncio.gather(
            *(
                limiter.admit(
                    account_id=account_id, request_id=f"r{i}", reserve=1, limits=limits, now=START
                )
                for i in range(12_000)
            )
        )

    loop.run_until_complete(admit_many())
    later = loop.run_until_complete(
        limiter.admit(
            account_id=account_id,
            request_id="after",
            reserve=1,
            limits=limits,
            now=START + timedelta(seconds=61),
        )
    )
    assert later.admitted
    assert (later.requests_used, later.tokens_used) == (1, 1)
