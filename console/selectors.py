"""Reads for the management and self-serve APIs: usage aggregates, limits and standing.

Usage is summed in PostgreSQL (GROUP BY over the ledger's partitions, pruned by the time
range), never in Python. An account's standing against its limits is read from Redis with
the gateway's own script (gateway/lua/limits_peek.lua), so it matches GET /v1/usage.
"""

import functools
from collections.abc import Sequence
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import redis
from django.conf import settings
from django.db.models import Count, QuerySet, Sum
from django.db.models.functions import Coalesce, TruncDay

from customers.models import Account, LimitOverride
from gateway.limits import Limits, Standing, account_keys, credit_parse, prepaid_keys
from metering.credits import CREDIT_EPOCH
from metering.models import UsageRecord
from metering.redis_clients import redis_connect
from metering.redis_scripts import SCRIPTS, run

# What usage can be grouped by, and the column each group is read from.
USAGE_GROUPS = ("day", "model", "tier", "account", "project")
_GROUP_FIELDS = {"model": "model", "tier": "tier", "account": "account_id", "project": "project_id"}
_PEEK = SCRIPTS["limits_peek"]


def usage_aggregate(
    *, records: QuerySet[UsageRecord], group_by: Sequence[str]
) -> QuerySet[UsageRecord, dict[str, Any]]:
    """One row per group: requests and token sums, energy where attributed.

    `records` is the ledger already filtered (account, model, tier, time range); the rows come
    ordered by the groups, day first.
    """
    fields = [_GROUP_FIELDS[name] for name in group_by if name in _GROUP_FIELDS]
    expressions = {"day": TruncDay("started_at", tzinfo=UTC)} if "day" in group_by else {}
    order = [*expressions, *fields]
    rows: QuerySet[UsageRecord, dict[str, Any]] = (
        records.values(*fields, **expressions)
        .annotate(
            requests=Count("*"),
            sum_prompt_tokens=Coalesce(Sum("prompt_tokens"), 0),
            sum_cached_prompt_tokens=Coalesce(Sum("cached_prompt_tokens"), 0),
            sum_completion_tokens=Coalesce(Sum("completion_tokens"), 0),
            sum_reasoning_tokens=Coalesce(Sum("reasoning_tokens"), 0),
            sum_energy_joules=Coalesce(Sum("energy_joules"), 0.0),
        )
        .order_by(*order)
    )
    return rows


def account_limits(account: Account) -> Limits:
    """The account's effective limits: its override where set, else its tier's (as the gateway)."""
    tier = account.tier
    override = LimitOverride.objects.filter(account=account).first()

    def pick(name: str) -> Any:
        own = getattr(override, name, None) if override is not None else None
        return own if own is not None else getattr(tier, name)

    return Limits(*(pick(name) for name in Limits.__dataclass_fields__))


def account_standing(*, account_id: int, now: datetime, prepaid: bool = False) -> Standing:
    """Where the account stands now against its limits, and a `prepaid` account's credit
    (Redis, in one read, as GET /v1/usage reads them); raises redis.RedisError."""
    keys = account_keys(account_id, now)
    if prepaid:
        keys += prepaid_keys(account_id)
    reply = run(_redis(), _PEEK, keys, (int(now.timestamp() * 1000),))
    standing = Standing.from_peek(reply[:6])
    if not prepaid:
        return standing
    credit = credit_parse(reply[6:])
    if credit.balance is None and _redis().exists(CREDIT_EPOCH):
        credit = replace(credit, balance=0)  # never granted anything, not unknown
    return replace(standing, credit=credit)


@functools.cache
def _redis() -> redis.Redis:
    return redis_connect(settings.REDIS_URL, socket_timeout=2.0, socket_connect_timeout=2.0)
