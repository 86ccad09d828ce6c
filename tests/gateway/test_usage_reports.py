"""A backend's usage report is untrusted input: an impossible one is refused, the request is
recorded once with the gateway's own count (marked estimated, the report kept for review),
and /metrics counts the refusal by backend."""

import json
from collections.abc import Iterator
from typing import Any

import pytest

from gateway.usage import PROMPT_ALLOWANCE, Counts, UsageBounds, usage_check
from simulator.testing import parse_sse
from tests.support.gateway import scrape
from tests.support.http import call
from tests.support.ledger import usage_for
from tests.support.servers import Server
from tests.support.tenants import MODEL, Tenant

pytestmark = pytest.mark.usefixtures("gateway")

BOUNDS = UsageBounds(prompt=100, completion=12)
TRUE = {
    "prompt_tokens": 40,
    "completion_tokens": 12,
    "total_tokens": 52,
    "prompt_tokens_details": {"cached_tokens": 16},
    "completion_tokens_details": {"reasoning_tokens": 4},
}


def test_a_true_report_is_taken_as_it_is() -> None:
    assert usage_check(TRUE, BOUNDS) == Counts(prompt=40, cached=16, completion=12, reasoning=4)


def test_missing_or_null_details_count_as_zero() -> None:
    report = {"prompt_tokens": 40, "completion_tokens": 12, "prompt_tokens_details": None}
    assert usage_check(report, BOUNDS) == Counts(prompt=40, cached=0, completion=12, reasoning=0)


def test_embeddings_report_no_completion_tokens() -> None:
    report = {"prompt_tokens": 40, "total_tokens": 40}
    assert usage_check(report, UsageBounds(prompt=100, completion=0)) == Counts(40, 0, 0, 0)
    assert usage_check({**report, "completion_tokens": 3}, UsageBounds(100, 0)) == (
        "completion_tokens is 3; this request allows at most 0"
    )


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        ({"completion_tokens": "12x"}, "completion_tokens is not a non-negative integer"),
        ({"completion_tokens": -1}, "completion_tokens is not a non-negative integer"),
        ({"completion_tokens": 12.0}, "completion_tokens is not a non-negative integer"),
        ({"completion_tokens": True}, "completion_tokens is not a non-negative integer"),
        ({"completion_tokens": None}, "completion_tokens is not a non-negative integer"),
        ({"prompt_tokens": "40"}, "prompt_tokens is not a non-negative integer"),
        ({"completion_tokens": 13}, "completion_tokens is 13; this request allows at most 12"),
        ({"prompt_tokens": 101}, "prompt_tokens is 101; this request allows at most 100"),
        (
            {"prompt_tokens_details": {"cached_tokens": 41}},
            "cached_tokens is 41; this request allows at most 40",
        ),
        (
            {"completion_tokens_details": {"reasoning_tokens": 13}},
            "reasoning_tokens is 13; this request allows at most 12",
        ),
        ({"prompt_tokens_details": [16]}, "its token details are not JSON objects"),
    ],
)
def test_an_impossible_report_says_what_is_wrong(change: dict[str, Any], problem: str) -> None:
    assert usage_check({**TRUE, **change}, BOUNDS) == problem


def test_a_report_that_is_not_an_object_is_refused() -> None:
    assert usage_check("52 tokens", BOUNDS) == "the report is not a JSON object"
    assert usage_check([40, 12], BOUNDS) == "the report is not a JSON object"


@pytest.fixture
def sim(simulator: Server) -> Iterator[Server]:
    call("DELETE", simulator.url + "/_sim/faults")
    yield simulator
    call("DELETE", simulator.url + "/_sim/faults")


def misreport(sim: Server, usage: object) -> None:
    body = json.dumps({"kind": "usage", "usage": usage}).encode()
    assert call("POST", sim.url + "/_sim/faults", body).status == 200


def chat(gateway: Server, tenant: Tenant, **extra: object) -> tuple[bytes, Any]:
    """One chat request of exactly 12 tokens; returns the body sent and the reply."""
    body = json.dumps(
        {
            "model": MODEL,
            "messages": [{"role": "user", "content": "Tell me a story."}],
            "max_tokens": 12,
            "ignore_eos": True,
            **extra,
        }
    ).encode()
    reply = call("POST", gateway.url + "/v1/chat/completions", body, key=tenant.key)
    assert reply.status == 200, reply.body
    return body, reply


@pytest.mark.parametrize(
    ("usage", "problem"),
    [
        ({"completion_tokens": "12x"}, "completion_tokens is not a non-negative integer"),
        ({"completion_tokens": -3}, "completion_tokens is not a non-negative integer"),
        ({"completion_tokens": 1_000_000}, "completion_tokens is 1000000; this request allows"),
        ({"prompt_tokens": 10**9}, "prompt_tokens is 1000000000; this request allows"),
        ({"completion_tokens_details": {"reasoning_tokens": 13}}, "reasoning_tokens is 13;"),
        ({"prompt_tokens_details": {"cached_tokens": 10**6}}, "cached_tokens is 1000000;"),
        ("lots", "the report is not a JSON object"),
    ],
)
def test_a_stream_with_an_impossible_report_is_recorded_once_with_the_gateways_count(
    sim: Server, gateway: Server, tenant: Tenant, usage: object, problem: str
) -> None:
    misreport(sim, usage)
    body, reply = chat(gateway, tenant, stream=True, stream_options={"include_usage": True})
    events = parse_sse(reply.body)
    delivered = sum(
        1 for e in events[:-1] if e["choices"] and e["choices"][0]["delta"].get("content")
    )
    assert delivered == 12 and events[-1] == "[DONE]"
    [record] = usage_for(reply.headers["x-request-id"])
    assert (record.outcome, record.status_code, record.tokens_estimated) == ("ok", 200, True)
    assert (record.prompt_tokens, record.completion_tokens) == (len(body) // 4, delivered)
    assert (record.cached_prompt_tokens, record.reasoning_tokens) == (0, 0)
    assert record.usage_anomaly is not None
    assert record.usage_anomaly["reported"] == events[-2]["usage"]
    assert record.usage_anomaly["problem"].startswith(problem)


def test_a_whole_answer_with_an_impossible_report_is_recorded_as_estimated(
    sim: Server, gateway: Server, tenant: Tenant
) -> None:
    misreport(sim, {"completion_tokens": "12x"})
    body, reply = chat(gateway, tenant)
    assert reply.json()["usage"]["completion_tokens"] == "12x"  # passed through unchanged
    [record] = usage_for(reply.headers["x-request-id"])
    assert (record.outcome, record.tokens_estimated) == ("ok", True)
    # The gateway counts streamed tokens only; a whole answer's own count is its prompt.
    assert (record.prompt_tokens, record.completion_tokens) == (len(body) // 4, 0)
    assert record.usage_anomaly == {
        "reported": reply.json()["usage"],
        "problem": "completion_tokens is not a non-negative integer",
    }


def test_refused_reports_are_counted_by_backend_in_metrics(
    sim: Server, gateway: Server, tenant: Tenant
) -> None:
    labels = frozenset({"backend": "sim-a"}.items())
    before = scrape(gateway).get(("tf_usage_anomalies_total", labels), 0.0)
    misreport(sim, {"completion_tokens": -1})
    chat(gateway, tenant)
    chat(gateway, tenant)  # a true report is not counted
    assert scrape(gateway)[("tf_usage_anomalies_total", labels)] == before + 1


def test_a_true_report_for_several_prompts_is_trusted(gateway: Server, tenant: Tenant) -> None:
    """The completion bound is max_tokens for each answer: here two prompts, two answers."""
    body = json.dumps(
        {"model": MODEL, "prompt": ["Once", "upon"], "max_tokens": 5, "ignore_eos": True}
    ).encode()
    reply = call("POST", gateway.url + "/v1/completions", body, key=tenant.key)
    assert reply.status == 200, reply.body
    [record] = usage_for(reply.headers["x-request-id"])
    assert (record.completion_tokens, record.tokens_estimated) == (10, False)
    assert record.usage_anomaly is None
    assert record.prompt_tokens == reply.json()["usage"]["prompt_tokens"] < PROMPT_ALLOWANCE
