"""`tf up` end to end (embedded PostgreSQL and Redis, every service, a real call, a clean stop),
and the demo data it seeds on every start."""

import signal
from collections.abc import Iterator
from pathlib import Path

import openai
import psutil
import pytest

from customers.keys import key_id_parse
from customers.models import ApiKey
from fleet.models import Backend
from gateway.demo import demo_seed
from tests.support.tfup import (
    READY_TIMEOUT_SECONDS,
    STOP_TIMEOUT_SECONDS,
    TfUp,
    curl_parse,
    tf_up_running,
)


@pytest.fixture
def tf_up(tmp_path: Path) -> Iterator[TfUp]:
    with tf_up_running(tmp_path) as tf:
        yield tf


def processes_using(path: Path) -> list[psutil.Process]:
    """The embedded PostgreSQL and Redis are found by their data directory, named in argv."""
    found = []
    for process in psutil.process_iter(["cmdline"]):
        if any(str(path) in arg for arg in process.info["cmdline"] or []):
            found.append(process)
    return found


def test_it_serves_a_completion_and_stops_everything_on_ctrl_c(tf_up: TfUp, tmp_path: Path) -> None:
    curl = tf_up.wait_for_line("curl ", READY_TIMEOUT_SECONDS)
    base_url, api_key = curl_parse(curl)

    client = openai.OpenAI(base_url=base_url, api_key=api_key, max_retries=0, timeout=30)
    completion = client.chat.completions.create(
        model="llama-3.1-8b-instruct",
        messages=[{"role": "user", "content": "Hello!"}],
        max_tokens=16,
    )
    children = tf_up.children(recursive=False)
    descendants = tf_up.children(recursive=True)
    tf_up.process.send_signal(signal.SIGINT)
    exit_code = tf_up.process.wait(STOP_TIMEOUT_SECONDS)

    assert completion.model == "llama-3.1-8b-instruct"
    assert completion.choices[0].message.content
    assert completion.usage is not None
    assert 1 <= completion.usage.completion_tokens <= 16
    assert exit_code == 0, tf_up.output()
    # redis, sim-a, sim-b, meter, worker, beat and gateway, with their own children below them
    assert len(children) == 7
    assert [process for process in descendants if process.is_running()] == []
    assert processes_using(tmp_path) == []
    assert not (tmp_path / "pg" / "postmaster.pid").exists()


@pytest.mark.django_db
def test_seeding_again_issues_new_keys_and_revokes_the_earlier_ones() -> None:
    urls = {"sim-a": "http://127.0.0.1:9101", "sim-b": "http://127.0.0.1:9102/"}
    first = demo_seed(backend_urls=urls)
    second = demo_seed(backend_urls=urls)

    assert [(key.account, key.tier) for key in second] == [
        ("acme-research", "premium"),
        ("northwind-apps", "interactive"),
        ("hobbyist", "free"),
    ]
    demo_keys = ApiKey.objects.filter(name="tf-up", account__name__in=[k.account for k in second])
    live = {key.key_id for key in demo_keys if key.revoked_at is None}
    revoked = {key.key_id for key in demo_keys if key.revoked_at is not None}
    assert live == {key_id_parse(key.plaintext) for key in second}
    assert revoked == {key_id_parse(key.plaintext) for key in first}
    sim_b = Backend.objects.get(name="sim-b")
    assert (sim_b.base_url, sim_b.telemetry_url) == (
        "http://127.0.0.1:9102",
        "http://127.0.0.1:9102/dcgm/metrics",
    )
    assert sim_b.public_models == ["llama-3.1-8b-instruct"]
