"""Simulators on background threads, one per configuration per session, reset before each test.

There is deliberately no __init__.py here: with pytest's default import mode a package directory
named `simulator` would shadow the real `simulator` package. Test modules are therefore named
test_sim_*.py to stay unique across the test tree.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import openai
import pytest

from simulator import SimConfig, SimServer
from simulator.config import DEFAULT_MODEL

MODEL = DEFAULT_MODEL
OTHER_MODEL = "other-model"


def _serve(**overrides: Any) -> Iterator[SimServer]:
    with SimServer(SimConfig(port=0, models=(MODEL, OTHER_MODEL), **overrides)) as server:
        yield server


@pytest.fixture(scope="session")
def _instant_server() -> Iterator[SimServer]:
    yield from _serve(name="instant", speedup=0)


@pytest.fixture(scope="session")
def _fast_server() -> Iterator[SimServer]:
    # The timed engine loop at 20x real time: the same code path as production, quickly.
    yield from _serve(name="fast", speedup=20)


@pytest.fixture(scope="session")
def _realtime_server() -> Iterator[SimServer]:
    yield from _serve(name="realtime", speedup=1)


@pytest.fixture(scope="session")
def _single_seq_server() -> Iterator[SimServer]:
    yield from _serve(name="single", speedup=2, max_num_seqs=1)


@pytest.fixture(scope="session")
def _seed_one_server() -> Iterator[SimServer]:
    yield from _serve(name="seed1", speedup=0, seed=1)


def _fresh(server: SimServer) -> SimServer:
    server.reset()
    return server


@pytest.fixture
def instant(_instant_server: SimServer) -> SimServer:
    return _fresh(_instant_server)


@pytest.fixture
def fast(_fast_server: SimServer) -> SimServer:
    return _fresh(_fast_server)


@pytest.fixture
def realtime(_realtime_server: SimServer) -> SimServer:
    return _fresh(_realtime_server)


@pytest.fixture
def single_seq(_single_seq_server: SimServer) -> SimServer:
    return _fresh(_single_seq_server)


@pytest.fixture
def seed_one(_seed_one_server: SimServer) -> SimServer:
    return _fresh(_seed_one_server)


@pytest.fixture(params=["instant", "fast"])
def sim(request: pytest.FixtureRequest) -> SimServer:
    """Both serving paths: instant mode (speedup 0) and the timed engine loop."""
    server: SimServer = request.getfixturevalue(request.param)
    return server


@pytest.fixture
def client(sim: SimServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=sim.base_url, api_key="sk-test", max_retries=0)


@pytest.fixture
def async_client(sim: SimServer) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=sim.base_url, api_key="sk-test", max_retries=0)
