"""The issue-19 benchmarks' own parts work: the bare proxy forwards whole and streamed answers,
and the meter benchmark drains a tiny backlog into exactly as many ledger rows, from one Redis
and from a three-primary cluster's three shards (the figures are in docs/benchmarks.md;
timings are never asserted)."""

import json
import sys
from collections.abc import Iterator

import pytest

from tests.support.bench import TINY_BACKLOG, bench_run
from tests.support.http import call
from tests.support.servers import Server, free_port, start_simulator

MODEL = "bench-model"


@pytest.fixture(scope="module")
def bare_proxy() -> Iterator[Server]:
    simulator = start_simulator("--model", MODEL, "--speedup", "0")
    port = free_port()
    args = [
        sys.executable,
        "-m",
        "uvicorn",
        "bench.bare_proxy:app",
        "--port",
        str(port),
        "--lifespan",
        "on",
        "--no-access-log",
    ]
    proxy = Server(args, port=port, ready_path="/health", env={"BARE_BACKEND": simulator.url})
    yield proxy
    proxy.stop()
    simulator.stop()


def _chat(stream: bool) -> bytes:
    body: dict[str, object] = {
        "model": MODEL,
        "messages": [{"role": "user", "content": "hi"}],
        "max_tokens": 8,
        "ignore_eos": True,
    }
    if stream:
        body |= {"stream": True, "stream_options": {"include_usage": True}}
    return json.dumps(body).encode()


def test_the_bare_proxy_forwards_a_whole_answer(bare_proxy: Server) -> None:
    reply = call("POST", bare_proxy.url + "/v1/chat/completions", _chat(stream=False))

    assert reply.status == 200
    assert reply.headers["content-type"].startswith("application/json")
    assert reply.headers["content-length"] == str(len(reply.body))
    assert reply.json()["usage"]["completion_tokens"] == 8


def test_the_bare_proxy_streams_every_event(bare_proxy: Server) -> None:
    reply = call("POST", bare_proxy.url + "/v1/chat/completions", _chat(stream=True))

    assert reply.status == 200
    assert reply.headers["content-type"].startswith("text/event-stream")
    events = [e for e in reply.body.decode().split("\n\n") if e]
    assert events[-1] == "data: [DONE]"
    usage = json.loads(events[-2].removeprefix("data: "))["usage"]
    assert usage["completion_tokens"] == 8


@pytest.mark.timeout(300)
@pytest.mark.parametrize(
    ("redis", "options"),
    [("single", []), ("cluster 3+3", ["--redis-cluster", "3"])],
    ids=["one-redis", "cluster-three-shards"],
)
def test_the_meter_bench_stores_a_backlog_exactly_once(redis: str, options: list[str]) -> None:
    out = bench_run(
        "bench.meter",
        *TINY_BACKLOG,
        *options,
        database="test_bench_meter",
    )

    assert f"1 meter(s) on {redis}: backlog of 2,000 events appended" in out
    assert f"1 meter(s) on {redis}: the ledger holds exactly 2,000 rows" in out
    assert "(2,000 after 2,000 events were appended again; 0 quarantined)" in out
