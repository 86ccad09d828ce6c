"""Admitting a request under its account's limits, and telling the client where it stands.

Every inference response carries the OpenAI `x-ratelimit-*` headers; a refusal is a 429 with
`retry-after`: `rate_limit_exceeded` while a rate window is full (retrying later works), or
`insufficient_quota` with `x-should-retry: false` once a day's or month's quota, or the
month's budget under a hard cap, is spent.
"""

import math

from gateway.errors import ApiError, invalid_request
from gateway.limits import Admission, Limits
from gateway.pricing import Budget, shown
from gateway.responses import Headers
from gateway.validation import InferenceRequest

# Completion tokens reserved for a request that names no max_tokens on a tier without a cap.
DEFAULT_COMPLETION_RESERVE = 1024
_QUOTAS = {"tokens_per_day": "day", "tokens_per_month": "month"}


def completion_cap(request: InferenceRequest, limits: Limits) -> int | None:
    """The max_tokens to send upstream; refuses a request beyond its tier's caps (400)."""
    cap = limits.max_tokens_per_request
    if cap is not None and request.max_tokens is not None and request.max_tokens > cap:
        raise invalid_request(
            f"`max_tokens` is {request.max_tokens}; your plan allows at most {cap} per request.",
            param="max_tokens",
            code="invalid_value",
        )
    context = limits.max_context_tokens
    if context is not None and request.prompt_tokens_estimate > context:
        raise invalid_request(
            f"The prompt is about {request.prompt_tokens_estimate} tokens; your plan allows "
            f"at most {context}.",
            param="messages",
            code="context_length_exceeded",
        )
    return request.max_tokens if request.max_tokens is not None else cap


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


def rate_limit_headers(limits: Limits, admission: Admission) -> Headers:
    headers: list[tuple[bytes, bytes]] = []
    for kind, limit, used, reset_ms in (
        (
            "requests",
            limits.requests_per_minute,
            admission.requests_used,
            admission.requests_reset_ms,
        ),
        ("tokens", limits.tokens_per_minute, admission.tokens_used, admission.tokens_reset_ms),
    ):
        if limit is None:
            continue
        headers += [
            (f"x-ratelimit-limit-{kind}".encode(), str(limit).encode()),
            (f"x-ratelimit-remaining-{kind}".encode(), str(max(0, limit - used)).encode()),
            (f"x-ratelimit-reset-{kind}".encode(), duration(reset_ms).encode()),
        ]
    return tuple(headers)


def refusal(limits: Limits, admission: Admission, budget: Budget | None = None) -> ApiError:
    retry_after = (
        (b"retry-after", str(math.ceil(admission.retry_after_ms / 1000)).encode()),
        (b"retry-after-ms", str(admission.retry_after_ms).encode()),
    )
    headers = rate_limit_headers(limits, admission) + retry_after
    wait = duration(admission.retry_after_ms)
    if admission.reason == "budget":
        spent = "its" if budget is None else f"its {shown(budget.monthly_limit)} {budget.currency}"
        return ApiError(
            429,
            f"This account has spent {spent} budget for this month; it renews in {wait}, "
            "or an administrator can raise it.",
            type="insufficient_quota",
            code="insufficient_quota",
            headers=(*headers, (b"x-should-retry", b"false")),
        )
    if period := _QUOTAS.get(admission.reason):
        return ApiError(
            429,
            f"You have used this {period}'s token quota of your plan; it renews in {wait}.",
            type="insufficient_quota",
            code="insufficient_quota",
            headers=(*headers, (b"x-should-retry", b"false")),
        )
    what = {
        "concurrent": f"concurrent requests (limit {limits.max_concurrent_requests})",
        "requests": f"requests per minute (limit {limits.requests_per_minute})",
        "tokens": f"tokens per minute (limit {limits.tokens_per_minute})",
    }[admission.reason]
    return ApiError(
        429,
        f"Rate limit reached for {what}. Please try again in {wait}.",
        type="requests" if admission.reason != "tokens" else "tokens",
        code="rate_limit_exceeded",
        headers=headers,
    )


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
