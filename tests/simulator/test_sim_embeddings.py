from __future__ import annotations

import math

import openai
import pytest

from simulator import SimServer
from simulator.config import DEFAULT_MODEL as MODEL


def test_the_sdk_decodes_its_default_base64_embeddings(client: openai.OpenAI) -> None:
    response = client.embeddings.create(model=MODEL, input="The quick brown fox")

    [item] = response.data
    assert len(item.embedding) == 384
    assert math.isclose(math.fsum(x * x for x in item.embedding), 1.0, rel_tol=1e-5)
    assert response.usage.prompt_tokens == 4
    assert response.usage.total_tokens == 4


def test_float_and_base64_encodings_carry_the_same_vector(client: openai.OpenAI) -> None:
    as_base64 = client.embeddings.create(model=MODEL, input="same text")
    as_float = client.embeddings.create(model=MODEL, input="same text", encoding_format="float")

    assert as_base64.data[0].embedding == as_float.data[0].embedding


def test_it_embeds_each_input_of_a_list_deterministically(client: openai.OpenAI) -> None:
    first = client.embeddings.create(model=MODEL, input=["a cat", "a dog", "a cat"])

    vectors = [item.embedding for item in first.data]
    assert [item.index for item in first.data] == [0, 1, 2]
    assert vectors[0] == vectors[2] != vectors[1]
    again = client.embeddings.create(model=MODEL, input="a dog")
    assert again.data[0].embedding == vectors[1]


def test_it_honours_dimensions(client: openai.OpenAI) -> None:
    response = client.embeddings.create(model=MODEL, input="short", dimensions=8)

    assert len(response.data[0].embedding) == 8


def test_it_rejects_dimensions_above_the_model(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError):
        client.embeddings.create(model=MODEL, input="short", dimensions=4096)


def test_it_counts_embeddings_in_stats(sim: SimServer, client: openai.OpenAI) -> None:
    client.embeddings.create(model=MODEL, input=["one two", "three"])

    stats = sim.stats()
    assert stats["requests"] == {"/v1/embeddings": 1}
    assert stats["embedding_tokens"] == 3
