"""Admitting a request under its account's and its project's limits, and telling the client
where it stands.

Every inference response carries the OpenAI `x-ratelimit-*` headers (of the level with less
left, where the project has its own limit); a refusal is a 429 with `retry-after`:
`rate_limit_exceeded` while a rate window is full (retrying later works), or
`insufficient_quota` with `x-should-retry: false` once a day's or month's quota, or the
month's budget under a hard cap, is spent, or a prepaid balance no longer covers the request
(no `retry-after` then: only buying credits helps, and the message says where). A refusal by
the key's project names the project: its limits are the account's to change, not the plan's.
"""

import math
from decimal import ROUND_CEILING, ROUND_FLOOR, Decimal

from gateway.auth import Principal
from gateway.errors import ApiError, invalid_request, unavailable
from gateway.limits import Admission, Limits, Spend
from gateway.pricing import pico_amount, shown
from gateway.responses import Headers
from gateway.validation import InferenceRequest

# Completion tokens reserved for a request that names no max_tokens on a tier without a cap.
DEFAULT_COMPLETION_RESERVE = 1024
_QUOTAS = {"tokens_per_day": "day", "tokens_per_month": "month"}
# A project without limits of its own.
NO_LIMITS = Limits()
# A request that costs nothing (unpriced).
UNPRICED = Spend()


def completion_cap(
    request: InferenceRequest, limits: Limits, project: Limits = NO_LIMITS, project_name: str = ""
) -> int | None:
    """The max_tokens to send upstream; refuses a request beyond its plan's caps or its
    project's (400). The smaller of the two caps applies."""
    caps = []
    for level, own in (("your plan allows", limits), (_project(project_name) + " allows", project)):
        _request_check(request, own, level)
        if own.max_tokens_per_request is not None:
            caps.append(own.max_tokens_per_request)
    if request.max_tokens is not None:
        return request.max_tokens
    return min(caps, default=None)


def _request_check(request: InferenceRequest, limits: Limits, allows: str) -> None:
    cap = limits.max_tokens_per_request
    if cap is not None and request.max_tokens is not None and request.max_tokens > cap:
        raise invalid_request(
            f"`max_tokens` is {request.max_tokens}; {allows} at most {cap} per request.",
            param="max_tokens",
            code="invalid_value",
        )
    context = limits.max_context_tokens
    if context is not None and request.prompt_tokens_estimate > context:
        raise invalid_request(
            f"The prompt is about {request.prompt_tokens_estimate} tokens; {allows} "
            f"at most {context}.",
            param="messages",
            code="context_length_exceeded",
        )


def _project(name: str) -> str:
    return f'the project "{name}"'


def tokens_to_reserve(request: InferenceRequest, cap: int | None) -> int:
    """The most the request can use: an upper bound, so that concurrent requests cannot carry
    an account past a quota by more than one request's own use (limits_admit.lua).

    The prompt's bound comes from its bytes, whatever the client put in them; each answer
    (`n` per prompt) may use the whole completion cap.
    """
    if request.endpoint == "embeddings":
        return request.prompt_tokens_bound
    completion = cap if cap is not None else DEFAULT_COMPLETION_RESERVE
    return request.prompt_tokens_bound + request.answers * completion


def rate_limit_headers(
    limits: Limits, admission: Admission, project: Limits = NO_LIMITS
) -> Headers:
    """The OpenAI rate-limit headers: for requests and for tokens per minute, the limit with
    less left of the account's and its project's (where the project has one)."""
    headers: list[tuple[bytes, bytes]] = []
    for kind, levels in (
        (
            "requests",
            (
                (limits.requests_per_minute, admission.requests_used, admission.requests_reset_ms),
                (
                    project.requests_per_minute,
                    admission.project_requests_used,
                    admission.project_requests_reset_ms,
                ),
            ),
        ),
        (
            "tokens",
            (
                (limits.tokens_per_minute, admission.tokens_used, admission.tokens_reset_ms),
                (
                    project.tokens_per_minute,
                    admission.project_tokens_used,
                    admission.project_tokens_reset_ms,
                ),
            ),
        ),
    ):
        windows = [
            (max(0, limit - used), limit, reset)
            for limit, used, reset in levels
            if limit is not None
        ]
        if not windows:
            continue
        left, limit, reset_ms = min(windows)
        headers += [
            (f"x-ratelimit-limit-{kind}".encode(), str(limit).encode()),
            (f"x-ratelimit-remaining-{kind}".encode(), str(left).encode()),
            (f"x-ratelimit-reset-{kind}".encode(), duration(reset_ms).encode()),
        ]
    return tuple(headers)


def refusal(
    principal: Principal, admission: Admission, *, spend: Spend = UNPRICED, credits_url: str = ""
) -> ApiError:
    """The 429 for a refused admission, naming the level (account or project) that refused;
    a prepaid refusal tells what the request may cost and where to buy credits."""
    if admission.reason == "credit":
        return _credit_refusal(principal, admission, spend, credits_url)
    if admission.reason == "credit_unknown":
        return unavailable(
            "Your prepaid credit balance cannot be checked right now; retry shortly.",
            code="credits_unavailable",
            retry_after="5",
        )
    retry_after = (
        (b"retry-after", str(math.ceil(admission.retry_after_ms / 1000)).encode()),
        (b"retry-after-ms", str(admission.retry_after_ms).encode()),
    )
    headers = (
        rate_limit_headers(principal.limits, admission, principal.project_limits) + retry_after
    )
    wait = duration(admission.retry_after_ms)
    by_project = admission.level == "project"
    if admission.reason == "budget":
        budget = principal.project_budget if by_project else principal.budget
        spent = "its" if budget is None else f"its {shown(budget.monthly_limit)} {budget.currency}"
        who = _project(principal.project_name).capitalize() if by_project else "This account"
        return ApiError(
            429,
            f"{who} has spent {spent} budget for this month; it renews in {wait}, "
            "or an administrator can raise it.",
            type="insufficient_quota",
            code="insufficient_quota",
            headers=(*headers, (b"x-should-retry", b"false")),
        )
    if period := _QUOTAS.get(admission.reason):
        whose = _project(principal.project_name) if by_project else "your plan"
        return ApiError(
            429,
            f"You have used this {period}'s token quota of {whose}; it renews in {wait}.",
            type="insufficient_quota",
            code="insufficient_quota",
            headers=(*headers, (b"x-should-retry", b"false")),
        )
    limits = principal.project_limits if by_project else principal.limits
    what, limit = {
        "concurrent": ("concurrent requests", limits.max_concurrent_requests),
        "requests": ("requests per minute", limits.requests_per_minute),
        "tokens": ("tokens per minute", limits.tokens_per_minute),
    }[admission.reason]
    of = f" of {_project(principal.project_name)}" if by_project else ""
    return ApiError(
        429,
        f"Rate limit reached for {what}{of} (limit {limit}). Please try again in {wait}.",
        type="requests" if admission.reason != "tokens" else "tokens",
        code="rate_limit_exceeded",
        headers=headers,
    )


def _credit_refusal(
    principal: Principal, admission: Admission, spend: Spend, credits_url: str
) -> ApiError:
    """429 `insufficient_quota`: the balance in whole cents rounded down, the request's most
    possible cost rounded up (so the one shown is always short of the other)."""
    balance = _cents(admission.balance or 0, ROUND_FLOOR)
    currency = spend.currency
    cost = (
        f", this request may cost up to {_cents(spend.reserve, ROUND_CEILING)} {currency}"
        if spend.reserve
        else ""
    )
    where = f"at {credits_url} " if credits_url else "(Credits) "
    return ApiError(
        429,
        f"Your prepaid credit balance is used up (balance {balance} {currency}{cost}). "
        f"Buy credits in the portal {where}to continue.",
        type="insufficient_quota",
        code="insufficient_quota",
        headers=(
            *rate_limit_headers(principal.limits, admission, principal.project_limits),
            (b"x-should-retry", b"false"),
        ),
    )


def _cents(pico: int, rounding: str) -> str:
    return shown(pico_amount(pico).quantize(Decimal("0.01"), rounding=rounding))


def duration(ms: int) -> str:
    """OpenAI's reset format: 20ms, 1.5s, 6m0s, 1h2m3s."""
    if ms < 1000:
        return f"{max(ms, 0)}ms"
    if ms < 60_000:
        return f"{round(ms / 1000, 1):g}s"
    seconds = math.ceil(ms / 1000)
    hours, rest = divmod(seconds, 3600)
    minutes, seconds = divmod(rest, 60)
    return f"{hours}h{minutes}m{seconds}s" if hours else f"{minutes}m{seconds}s"
