"""Project limits in the limiter, on the real Redis: the account's and the key's project's
limits checked in one Lua call, all or nothing, settled at both levels (P2)."""

import asyncio
import itertools
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import orjson
import pytest
import redis
from django.conf import settings
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from psycopg_pool import AsyncConnectionPool

from customers.services import project_create, project_default
from gateway.batching import ScriptBatcher
from gateway.limits import Admission, Limiter, Limits, Spend, Standing, project_keys
from metering.events import FINAL, record_from_event
from metering.redis_clients import redis_connect_async
from metering.services import usage_records_write
from tests.support.events import usage
from tests.support.tenants import tenant_create
from tests.support.waiting import wait_until

pytestmark = pytest.mark.redis_cluster

START = datetime(2026, 11, 22, 10, 0, tzinfo=UTC)
LEASE_MS = 30_000
UNPRICED = Spend()
# Fresh ids each run: limit keys outlive a test run (day counters last a day).
ids = itertools.count(uuid.uuid4().int % 10**9 * 1000)


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


Ticket = tuple[str, Admission]  # a request's id and its admission


@dataclass
class Org:
    """An account and its projects, with fresh ids, driven through one limiter."""

    loop: asyncio.AbstractEventLoop
    limiter: Limiter
    account: Limits = field(default_factory=Limits)
    projects: dict[int, Limits] = field(default_factory=dict)
    account_id: int = field(default_factory=lambda: next(ids))
    steps: Iterator[int] = field(default_factory=itertools.count)

    def project(self, **limits: int) -> int:
        project_id = next(ids)
        self.projects[project_id] = Limits(**limits)
        return project_id

    def admit(
        self, project_id: int, reserve: int = 10, at: datetime = START, spend: Spend = UNPRICED
    ) -> Ticket:
        request_id = f"r{next(self.steps)}"
        admission = self.loop.run_until_complete(
            self.limiter.admit(
                account_id=self.account_id,
                request_id=request_id,
                reserve=reserve,
                limits=self.account,
                now=at,
                spend=spend,
                project_id=project_id,
                project_limits=self.projects[project_id],
            )
        )
        return request_id, admission

    def settle(self, ticket: Ticket, used: int, spent: int = 0) -> None:
        request_id, admission = ticket

        async def settled() -> None:
            self.limiter.settle(admission, request_id=request_id, used=used, spent=spent)
            await self.limiter._batcher.idle()

        self.loop.run_until_complete(settled())

    def standings(
        self, project_id: int, at: datetime = START, currency: str = "USD"
    ) -> tuple[Standing, Standing]:
        return self.loop.run_until_complete(
            self.limiter.standings(
                account_id=self.account_id, project_id=project_id, now=at, currency=currency
            )
        )


@pytest.fixture
def org(loop: asyncio.AbstractEventLoop, limiter: Limiter) -> Org:
    return Org(loop, limiter)


def refused(ticket: Ticket) -> tuple[str, str]:
    """Which level refused the request, and which of its limits."""
    admission = ticket[1]
    assert not admission.admitted
    return admission.level, admission.reason


def test_a_projects_rate_limit_refuses_while_its_account_allows(org: Org) -> None:
    org.account = Limits(requests_per_minute=100)
    tight, other = org.project(requests_per_minute=2), org.project()
    assert org.admit(tight)[1].admitted and org.admit(tight)[1].admitted
    third = org.admit(tight, at=START + timedelta(seconds=10))
    assert refused(third) == ("project", "requests")
    assert third[1].retry_after_ms == 50_000
    assert (third[1].project_requests_used, third[1].requests_used) == (2, 2)
    # The account's other project is still served.
    assert org.admit(other)[1].admitted
    account, project = org.standings(tight)
    assert (account.requests_last_minute, project.requests_last_minute) == (3, 2)


def test_an_accounts_limit_refuses_whatever_its_projects_allow(org: Org) -> None:
    org.account = Limits(tokens_per_day=100)
    roomy = org.project(tokens_per_day=1_000)
    assert org.admit(roomy, reserve=100)[1].admitted
    assert refused(org.admit(roomy, reserve=1)) == ("account", "tokens_per_day")
    account, project = org.standings(roomy)
    assert (account.tokens_today, project.tokens_today) == (100, 100)


def test_a_refusal_at_either_level_counts_nothing_at_either(org: Org) -> None:
    org.account = Limits(requests_per_minute=3)
    narrow = org.project(requests_per_minute=1, tokens_per_minute=1_000, max_concurrent_requests=5)
    assert org.admit(narrow, reserve=7)[1].admitted
    before = org.standings(narrow)
    assert refused(org.admit(narrow, reserve=50)) == ("project", "requests")
    assert org.standings(narrow) == before
    wide = org.project(requests_per_minute=10)
    assert org.admit(wide)[1].admitted and org.admit(wide)[1].admitted
    before = org.standings(wide)
    assert refused(org.admit(wide, reserve=50)) == ("account", "requests")
    assert org.standings(wide) == before
    account, project = before
    assert (account.tokens_today, project.tokens_today) == (27, 20)


def test_settling_swaps_the_reservation_at_both_levels(org: Org) -> None:
    project = org.project(tokens_per_minute=500, tokens_per_day=500, max_concurrent_requests=1)
    ticket = org.admit(project, reserve=400)
    assert refused(org.admit(project, reserve=1)) == ("project", "concurrent")
    org.settle(ticket, used=30)
    account, own = org.standings(project)
    assert (account.tokens_last_minute, account.tokens_today, account.running) == (30, 30, 0)
    assert (own.tokens_last_minute, own.tokens_today, own.running) == (30, 30, 0)
    assert org.admit(project, reserve=400)[1].admitted


def test_a_projects_hard_cap_refuses_and_settles_its_own_spend(org: Org) -> None:
    capped, free = org.project(), org.project()
    ticket = org.admit(capped, spend=Spend("XTS", 700, cap=10_000, project_cap=1_000))
    assert ticket[1].project_spend_reserved == 700
    org.settle(ticket, used=10, spent=1_200)  # it cost more than reserved: charged
    assert refused(org.admit(capped, spend=Spend("XTS", 1, project_cap=1_000))) == (
        "project",
        "budget",
    )
    assert org.admit(free, spend=Spend("XTS", 5, cap=10_000))[1].admitted
    account, project = org.standings(capped, currency="XTS")
    assert (account.spent_this_month, project.spent_this_month) == (1_205, 1_200)


def test_a_projects_keys_share_its_accounts_cluster_slot() -> None:
    keys = project_keys(7, 42, START, "USD")
    assert len(keys) == 8 and all(key.startswith("{a:7}:p:42:") for key in keys)


@dataclass
class Level:
    """One level's limits as plainly as possible: requests and tokens in the last minute, and
    tokens today. A request counts in its account's windows always, in its project's only
    where the project has that limit."""

    limits: Limits
    requests: dict[str, int] = field(default_factory=dict)  # id -> admitted at (ms)
    tokens: dict[str, tuple[int, int]] = field(default_factory=dict)  # id -> (at, amount)
    day: int = 0
    # Tokens requests used beyond what they reserved: no admission check can foresee them.
    overrun: int = 0

    def refusal(self, now: int) -> str | None:
        self.requests = {k: t for k, t in self.requests.items() if t > now - 60_000}
        self.tokens = {k: v for k, v in self.tokens.items() if v[0] > now - 60_000}
        used = sum(amount for _, amount in self.tokens.values())
        checks = [
            ("requests", self.limits.requests_per_minute, len(self.requests)),
            ("tokens", self.limits.tokens_per_minute, used),
            ("tokens_per_day", self.limits.tokens_per_day, self.day),
        ]
        return next((why for why, limit, now_at in checks if limit and now_at >= limit), None)

    def count(self, now: int, request_id: str, reserve: int, *, every: bool) -> None:
        if every or self.limits.requests_per_minute is not None:
            self.requests[request_id] = now
        if every or self.limits.tokens_per_minute is not None:
            self.tokens[request_id] = (now, reserve)
        self.day += reserve

    def settle(self, request_id: str, delta: int) -> None:
        if request_id in self.tokens:
            at, amount = self.tokens[request_id]
            self.tokens[request_id] = (at, amount + delta)
        self.day += delta
        self.overrun += max(delta, 0)


level_limits = st.builds(
    Limits,
    requests_per_minute=st.none() | st.integers(1, 5),
    tokens_per_minute=st.none() | st.integers(10, 300),
    tokens_per_day=st.none() | st.integers(50, 800),
)
MOST_RESERVED = 120


@hypothesis_settings(
    max_examples=50, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    account=level_limits,
    projects=st.lists(level_limits, min_size=2, max_size=2),
    ops=st.lists(
        st.tuples(
            st.integers(0, 40_000),  # clock advance (ms)
            st.integers(0, 1),  # which project's key calls
            st.integers(1, MOST_RESERVED),  # tokens to reserve
            st.none() | st.integers(0, 150),  # settle the oldest open request with this many
        ),
        max_size=25,
    ),
)
def test_both_levels_agree_with_the_reference_model(
    loop: asyncio.AbstractEventLoop,
    limiter: Limiter,
    account: Limits,
    projects: list[Limits],
    ops: list[tuple[int, int, int, int | None]],
) -> None:
    """Admitted exactly when both levels admit, counted at both or at neither; so neither
    level's tokens ever pass its limit by more than one reservation (and what requests used
    beyond their reservations)."""
    org = Org(loop, limiter, account=account)
    project_ids = [org.project() for _ in projects]
    org.projects = dict(zip(project_ids, projects, strict=True))
    levels = {0: Level(account)} | {p: Level(org.projects[p]) for p in project_ids}
    now = START
    open_requests: list[tuple[int, Ticket]] = []
    for step, (advance, which, reserve, settle_with) in enumerate(ops):
        now += timedelta(milliseconds=advance)
        at = int(now.timestamp() * 1000)
        if settle_with is not None and open_requests:
            project_id, ticket = open_requests.pop(0)
            org.settle(ticket, used=settle_with)
            for level in (levels[0], levels[project_id]):
                level.settle(ticket[0], settle_with - ticket[1].reserved)
        project_id = project_ids[which]
        ticket = org.admit(project_id, reserve=reserve, at=now)
        expected: tuple[bool, str, str] = (True, "", "")
        if why := levels[0].refusal(at):
            expected = (False, "account", why)
        elif why := levels[project_id].refusal(at):
            expected = (False, "project", why)
        else:
            levels[0].count(at, ticket[0], reserve, every=True)
            levels[project_id].count(at, ticket[0], reserve, every=False)
            open_requests.append((project_id, ticket))
        got = ticket[1]
        assert (got.admitted, got.level, got.reason) == expected, f"step {step}"
        for project_id in project_ids:
            account_standing, project_standing = org.standings(project_id, at=now)
            for level, standing in (
                (levels[0], account_standing),
                (levels[project_id], project_standing),
            ):
                assert standing.tokens_today == level.day, f"step {step}"
                limit = level.limits.tokens_per_day
                bound = None if limit is None else limit + MOST_RESERVED + level.overrun
                assert bound is None or standing.tokens_today < bound


def test_projects_counters_are_rebuilt_from_the_ledger_alone(
    live_db: None, loop: asyncio.AbstractEventLoop, limiter: Limiter, redis_client: redis.Redis
) -> None:
    """Projects' counters missing (Redis lost them, or they are new) are rebuilt from the
    ledger without adding the ledger to the accounts' counters a second time."""
    tenant = tenant_create()
    research = project_create(account=tenant.account, name="research")
    default = project_default(tenant.account)
    usage_records_write(
        records=[
            record(account_id=tenant.account.pk, project_id=research.pk, prompt_tokens=30),
            record(account_id=tenant.account.pk, project_id=research.pk, prompt_tokens=50),
            record(account_id=tenant.account.pk, project_id=default.pk, prompt_tokens=7),
        ]
    )
    client = redis_client  # emptied when the session began: no counters of an earlier run
    # The accounts' and spend's counters are there (whatever ran before); the projects' are not.
    now = datetime.now(UTC).isoformat()
    client.set("{limits}:epoch", now, nx=True)
    client.set("{limits}:epoch:spend-pico", now, nx=True)
    client.delete("{limits}:epoch:projects")
    db = settings.DATABASES["default"]
    pool = AsyncConnectionPool(
        f"dbname={db['NAME']} user={db['USER']} host={db['HOST']} port={db['PORT']}", open=False
    )

    async def rebuild() -> None:
        await pool.open()
        try:
            await limiter.rebuild_if_empty(pool)
        finally:
            await pool.close()

    loop.run_until_complete(rebuild())
    # Rebuilt by this call, or by a gateway of the session that found the epoch missing first.
    wait_until(lambda: client.exists("{limits}:epoch:projects"), what="the rebuild")
    now = datetime.now(UTC)

    def standings(project_id: int) -> tuple[Standing, Standing]:
        return loop.run_until_complete(
            limiter.standings(account_id=tenant.account.pk, project_id=project_id, now=now)
        )

    account, own = standings(research.pk)
    # Each record: its prompt and 5 completion tokens (tests/support/events.py).
    assert (own.tokens_today, own.tokens_this_month) == (90, 90)
    assert standings(default.pk)[1].tokens_today == 12
    assert account.tokens_today == 0  # the accounts' epoch was there: left as it was


def record(**overrides: object) -> dict[str, object]:
    return record_from_event({b"kind": FINAL, b"record": orjson.dumps(usage(**overrides))})
