"""The official openai client against a real gateway process and a real simulated backend."""

import openai
import pytest

from tests.support.ledger import usage_for
from tests.support.servers import Server
from tests.support.tenants import MODEL, Tenant

pytestmark = pytest.mark.usefixtures("gateway")

CHAT = [{"role": "user", "content": "Say something about token factories."}]


def client(gateway: Server, tenant: Tenant) -> openai.OpenAI:
    return openai.OpenAI(base_url=gateway.url + "/v1", api_key=tenant.key, max_retries=0)


def test_a_chat_completion_is_answered_and_metered_once(gateway: Server, tenant: Tenant) -> None:
    completion = client(gateway, tenant).chat.completions.create(
        model=MODEL, messages=CHAT, max_tokens=12
    )
    assert completion.model == MODEL
    assert completion.choices[0].message.content
    assert completion.usage is not None and completion.usage.completion_tokens == 12
    [record] = usage_for(completion._request_id or "")
    assert record.account_id == tenant.account.pk
    assert (record.prompt_tokens, record.completion_tokens) == (
        completion.usage.prompt_tokens,
        12,
    )
    assert (record.outcome, record.status_code, record.streamed) == ("ok", 200, False)
    assert not record.tokens_estimated
    assert record.backend == "sim-a" and record.model == MODEL and record.tier == "premium"
    assert record.latency_ms > 0 and record.ended_at > record.started_at


async def test_the_async_client_works_too(gateway: Server, tenant: Tenant) -> None:
    async with openai.AsyncOpenAI(
        base_url=gateway.url + "/v1", api_key=tenant.key, max_retries=0
    ) as aclient:
        completion = await aclient.chat.completions.create(model=MODEL, messages=CHAT, max_tokens=5)
    assert completion.usage is not None and completion.usage.completion_tokens == 5


def test_a_stream_with_include_usage_ends_with_the_usage_chunk(
    gateway: Server, tenant: Tenant
) -> None:
    stream = client(gateway, tenant).chat.completions.create(
        model=MODEL,
        messages=CHAT,
        max_tokens=20,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    *body, last = chunks
    assert last.choices == [] and last.usage is not None
    assert last.usage.completion_tokens == 20
    assert all(chunk.usage is None for chunk in body)
    assert "".join(c.choices[0].delta.content or "" for c in body if c.choices)
    [record] = usage_for(stream.response.headers["x-request-id"])
    assert (record.completion_tokens, record.streamed, record.outcome) == (20, True, "ok")
    assert record.ttft_ms is not None and 0 < record.ttft_ms <= record.latency_ms


def test_a_stream_without_include_usage_gets_no_usage_chunk_but_is_metered(
    gateway: Server, tenant: Tenant
) -> None:
    stream = client(gateway, tenant).chat.completions.create(
        model=MODEL, messages=CHAT, max_tokens=8, stream=True
    )
    chunks = list(stream)
    assert all(chunk.choices for chunk in chunks)
    [record] = usage_for(stream.response.headers["x-request-id"])
    assert record.completion_tokens == 8 and not record.tokens_estimated


def test_completions_and_embeddings_and_models(gateway: Server, tenant: Tenant) -> None:
    api = client(gateway, tenant)
    completion = api.completions.create(model=MODEL, prompt="Once upon a time", max_tokens=4)
    assert completion.choices[0].text and completion.usage is not None
    embedding = api.embeddings.create(model=MODEL, input=["one", "two"])
    assert len(embedding.data) == 2 and len(embedding.data[0].embedding) > 0
    [record] = usage_for(embedding._request_id or "")
    assert record.endpoint == "embeddings" and record.prompt_tokens > 0
    assert MODEL in [m.id for m in api.models.list()]


def test_every_response_carries_a_request_id(gateway: Server, tenant: Tenant) -> None:
    raw = client(gateway, tenant).models.with_raw_response.list()
    assert raw.headers["x-request-id"].startswith("req_")
