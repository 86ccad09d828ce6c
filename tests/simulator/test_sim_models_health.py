from __future__ import annotations

import openai

from simulator import SimServer
from simulator.config import DEFAULT_MODEL as MODEL
from simulator.testing import http


def test_it_lists_its_models(client: openai.OpenAI) -> None:
    models = client.models.list()

    assert [model.id for model in models] == [MODEL, "other-model"]
    assert all(model.object == "model" for model in models)


def test_health_is_200_with_an_empty_body(instant: SimServer) -> None:
    result = http("GET", instant.url + "/health")

    assert (result.status, result.body) == (200, b"")


def test_health_fails_while_a_health_fault_is_set_and_recovers_when_cleared(
    instant: SimServer,
) -> None:
    instant.arm_fault(kind="health", status=503)
    assert http("GET", instant.url + "/health").status == 503

    instant.reset()
    assert http("GET", instant.url + "/health").status == 200
