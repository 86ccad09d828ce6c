"""A prepaid balance in the limiter, on the real Redis: admitted only while the balance covers
the request's most possible cost, reserved in the same Lua call as every other limit (all or
nothing), settled to what the request cost, exactly, in integer pico-units."""

import asyncio
import itertools
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest
import redis
from django.conf import settings

from gateway.batching import ScriptBatcher
from gateway.limits import Admission, Limiter, Limits, Spend, Standing, prepaid_keys
from gateway.pricing import PICO
from metering.credits import CREDIT_EPOCH
from metering.redis_clients import redis_connect, redis_connect_async

pytestmark = pytest.mark.redis_cluster

START = datetime(2026, 11, 22, 10, 0, tzinfo=UTC)
CENT = PICO // 100
NO_LIMITS = Limits()
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
    yield Limiter(client, ScriptBatcher(client, linger=0.001), lease_seconds=30)
    loop.run_until_complete(client.aclose())


@pytest.fixture(scope="module")
def store() -> Iterator[redis.Redis]:
    client = redis_connect(settings.REDIS_URL)
    client.set(CREDIT_EPOCH, "test")  # this Redis holds the credit counters
    yield client
    client.close()


class Wallet:
    """One prepaid account with a fresh id, driven through the limiter."""

    def __init__(self, loop: asyncio.AbstractEventLoop, limiter: Limiter, store: redis.Redis):
        self.loop, self.limiter, self.store = loop, limiter, store
        self.account_id = next(ids)
        self.balance_key, self.held_key = prepaid_keys(self.account_id)
        self.steps = itertools.count()

    def fund(self, pico: int) -> None:
        self.store.incrby(self.balance_key, pico)

    def admit(
        self, cost: int, *, limits: Limits = NO_LIMITS, prepaid: bool = True
    ) -> tuple[str, Admission]:
        request_id = f"r{next(self.steps)}"
        admission = self.loop.run_until_complete(
            self.limiter.admit(
                account_id=self.account_id,
                request_id=request_id,
                reserve=10,
                limits=limits,
                now=START,
                spend=Spend("USD", cost),
                project_id=7,
                prepaid=prepaid,
            )
        )
        return request_id, admission

    def settle(self, ticket: tuple[str, Admission], spent: int) -> None:
        request_id, admission = ticket

        async def settled() -> None:
            self.limiter.settle(admission, request_id=request_id, used=5, spent=spent)
            await self.limiter._batcher.idle()

        self.loop.run_until_complete(settled())

    def balance(self) -> int | None:
        value = self.store.get(self.balance_key)
        return None if value is None else int(value)

    def standing(self) -> Standing:
        return self.loop.run_until_complete(
            self.limiter.peek(account_id=self.account_id, now=START, prepaid=True)
        )


@pytest.fixture
def wallet(loop: asyncio.AbstractEventLoop, limiter: Limiter, store: redis.Redis) -> Wallet:
    return Wallet(loop, limiter, store)


def test_a_covered_request_is_admitted_and_its_most_cost_held(wallet: Wallet) -> None:
    wallet.fund(100 * CENT)
    ticket = wallet.admit(30 * CENT)
    admission = ticket[1]
    assert admission.admitted and admission.credit_reserved == 30 * CENT
    assert admission.balance == wallet.balance() == 70 * CENT
    credit = wallet.standing().credit
    assert credit is not None and (credit.balance, credit.reserved) == (70 * CENT, 30 * CENT)


def test_settling_gives_back_exactly_what_the_request_did_not_cost(wallet: Wallet) -> None:
    wallet.fund(100 * CENT)
    ticket = wallet.admit(30 * CENT)
    wallet.settle(ticket, spent=12_345_678_901)  # 0.012345678901
    assert wallet.balance() == 100 * CENT - 12_345_678_901
    credit = wallet.standing().credit
    assert credit is not None and credit.reserved == 0
    # A settle that arrives twice (retried) gives nothing back the second time.
    wallet.settle(ticket, spent=0)
    assert wallet.balance() == 100 * CENT - 12_345_678_901


def test_a_balance_short_of_the_most_cost_is_refused_and_nothing_is_counted(
    wallet: Wallet,
) -> None:
    wallet.fund(29 * CENT)
    ticket = wallet.admit(30 * CENT)
    admission = ticket[1]
    assert not admission.admitted
    assert (admission.reason, admission.level) == ("credit", "account")
    assert admission.balance == 29 * CENT and admission.credit_reserved == 0
    assert wallet.balance() == 29 * CENT
    # Not counted against any other limit either.
    standing = wallet.standing()
    assert (standing.requests_last_minute, standing.running, standing.spent_this_month) == (
        0,
        0,
        0,
    )
    # Exactly covered is admitted: the reservation is at most the balance.
    assert wallet.admit(29 * CENT)[1].admitted
    assert wallet.balance() == 0


def test_a_refusal_by_another_limit_takes_no_credit(wallet: Wallet) -> None:
    wallet.fund(100 * CENT)
    one = Limits(max_concurrent_requests=1)
    assert wallet.admit(10 * CENT, limits=one)[1].admitted
    refused = wallet.admit(10 * CENT, limits=one)[1]
    assert (refused.admitted, refused.reason) == (False, "concurrent")
    assert wallet.balance() == 90 * CENT
    credit = wallet.standing().credit
    assert credit is not None and credit.reserved == 10 * CENT


def test_an_unpriced_request_is_admitted_while_the_balance_is_above_zero(
    wallet: Wallet,
) -> None:
    wallet.fund(1)
    ticket = wallet.admit(0)
    assert ticket[1].admitted and wallet.balance() == 1
    wallet.settle(ticket, spent=0)
    wallet.fund(-1)
    assert wallet.admit(0)[1].reason == "credit"
    wallet.fund(-5)
    refused = wallet.admit(0)[1]
    assert refused.reason == "credit" and refused.balance == -5


def test_a_missing_balance_is_none_while_redis_holds_the_counters(
    wallet: Wallet, store: redis.Redis
) -> None:
    refused = wallet.admit(0)[1]
    assert (refused.reason, refused.balance) == ("credit", None)
    credit = wallet.standing().credit
    assert credit is not None and (credit.balance, credit.reserved) == (0, 0)

    # Redis lost its data and billing has not rebuilt the counters: not "no credit".
    store.delete(CREDIT_EPOCH)
    try:
        assert wallet.admit(0)[1].reason == "credit_unknown"
        credit = wallet.standing().credit
        assert credit is not None and credit.balance is None
    finally:
        store.set(CREDIT_EPOCH, "test")


def test_a_settle_after_the_balance_was_rebuilt_takes_only_the_cost(
    wallet: Wallet, store: redis.Redis
) -> None:
    wallet.fund(100 * CENT)
    ticket = wallet.admit(30 * CENT)
    # Rebuilt from the ledger (without the reservation, which Redis lost with the rest).
    store.delete(wallet.held_key)
    store.set(wallet.balance_key, 100 * CENT)
    wallet.settle(ticket, spent=7 * CENT)
    assert wallet.balance() == 93 * CENT

    # And one that settles while the balance is missing adds nothing to create it.
    ticket = wallet.admit(3 * CENT)
    store.delete(wallet.balance_key)
    wallet.settle(ticket, spent=CENT)
    assert wallet.balance() is None


def test_amounts_past_2_to_the_53_stay_exact(wallet: Wallet) -> None:
    big = 2**62 + 12_345
    wallet.fund(big)
    most = 10**17 - 1  # REQUEST_MOST less one pico-unit: past a Lua double's exact range
    ticket = wallet.admit(most)
    assert ticket[1].admitted and wallet.balance() == big - most
    wallet.settle(ticket, spent=most - 3)
    assert wallet.balance() == big - most + 3
    credit = wallet.standing().credit
    assert credit is not None and credit.balance == big - most + 3


def test_an_account_billed_in_arrears_never_touches_a_balance(wallet: Wallet) -> None:
    ticket = wallet.admit(30 * CENT, prepaid=False)
    assert ticket[1].admitted and not ticket[1].prepaid
    wallet.settle(ticket, spent=CENT)
    assert wallet.balance() is None
    assert wallet.store.exists(wallet.held_key) == 0
