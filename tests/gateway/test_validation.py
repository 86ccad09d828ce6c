import orjson
import pytest

from gateway.errors import ApiError
from gateway.validation import CHAT, COMPLETIONS, EMBEDDINGS, MAX_TOKENS_CEILING, request_parse


def chat(**fields: object) -> bytes:
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}], **fields}
    return orjson.dumps(body)


def rejected(endpoint: str, raw: bytes) -> ApiError:
    with pytest.raises(ApiError) as caught:
        request_parse(endpoint, raw)
    assert caught.value.status == 400
    return caught.value


def test_it_accepts_a_plain_chat_request() -> None:
    request = request_parse(CHAT, chat(max_tokens=16))
    assert (request.model, request.stream, request.include_usage, request.max_tokens) == (
        "m",
        False,
        False,
        16,
    )


def test_it_notes_whether_the_client_wants_the_usage_chunk() -> None:
    wanted = request_parse(CHAT, chat(stream=True, stream_options={"include_usage": True}))
    assert wanted.stream and wanted.include_usage
    assert not request_parse(CHAT, chat(stream=True)).include_usage


@pytest.mark.parametrize("raw", [b"{", b"", b"\xff", b"nul"])
def test_it_rejects_malformed_json(raw: bytes) -> None:
    assert "could not parse the JSON body" in rejected(CHAT, raw).message


@pytest.mark.parametrize("raw", [b"[]", b"3", b'"x"', b"null"])
def test_it_rejects_a_body_that_is_not_an_object(raw: bytes) -> None:
    rejected(CHAT, raw)


@pytest.mark.parametrize("model", [None, "", 3, ["m"]])
def test_it_requires_a_model(model: object) -> None:
    assert rejected(CHAT, orjson.dumps({"model": model, "messages": []})).param == "model"


@pytest.mark.parametrize(
    "messages",
    [
        None,
        [],
        "hi",
        [3],
        [{"content": "x"}],
        [{"role": "boss", "content": "x"}],
        [{"role": "user", "content": 3}],
    ],
)
def test_it_rejects_bad_messages(messages: object) -> None:
    error = rejected(CHAT, orjson.dumps({"model": "m", "messages": messages}))
    assert error.param is not None and error.param.startswith("messages")


@pytest.mark.parametrize("value", [0, -1, MAX_TOKENS_CEILING + 1, 10**15, 1.5, "10", True])
def test_it_rejects_negative_or_absurd_max_tokens(value: object) -> None:
    assert rejected(CHAT, chat(max_tokens=value)).param == "max_tokens"


def test_it_prefers_max_completion_tokens() -> None:
    assert request_parse(CHAT, chat(max_tokens=5, max_completion_tokens=9)).max_tokens == 9


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("temperature", 2.5),
        ("temperature", "hot"),
        ("top_p", -0.1),
        ("n", 0),
        ("n", 1000),
        ("stream", "yes"),
        ("frequency_penalty", 3),
    ],
)
def test_it_rejects_out_of_range_sampling(field: str, value: object) -> None:
    assert rejected(CHAT, chat(**{field: value})).param == field


def test_it_rejects_stream_options_without_stream() -> None:
    assert rejected(CHAT, chat(stream_options={"include_usage": True})).param == "stream_options"


@pytest.mark.parametrize("prompt", ["hi", ["a", "b"], [1, 2, 3], [[1, 2], [3]]])
def test_it_accepts_every_prompt_shape(prompt: object) -> None:
    assert request_parse(COMPLETIONS, orjson.dumps({"model": "m", "prompt": prompt}))


@pytest.mark.parametrize("value", [None, [], [None], ["a", 1], {}])
def test_it_rejects_bad_embedding_input(value: object) -> None:
    assert rejected(EMBEDDINGS, orjson.dumps({"model": "m", "input": value})).param == "input"


def test_it_refuses_to_stream_embeddings() -> None:
    rejected(EMBEDDINGS, orjson.dumps({"model": "m", "input": "x", "stream": True}))


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"service_tier": []}, "service_tier"),
        ({"service_tier": {}}, "service_tier"),
        ({"messages": [{"role": []}]}, "messages.[0].role"),
        ({"messages": [{"role": {}}]}, "messages.[0].role"),
        ({"reasoning_effort": []}, "reasoning_effort"),
        ({"reasoning_effort": "maximal"}, "reasoning_effort"),
        ({"stop": [1]}, "stop"),
        ({"logprobs": "yes"}, "logprobs"),
        ({"top_logprobs": 50}, "top_logprobs"),
        ({"logit_bias": {"42": "x"}}, "logit_bias"),
        ({"model": "m" * 1000}, "model"),
    ],
)
def test_unhashable_or_unknown_values_are_a_400_naming_the_field(
    fields: dict[str, object], param: str
) -> None:
    error = rejected(CHAT, chat(**fields))
    assert error.param == param
    assert len(error.message) < 400


def test_json_nested_too_deep_is_refused_before_anything_else() -> None:
    raw = chat(extra="DEEP").replace(b'"DEEP"', b"[" * 1000 + b"1" + b"]" * 1000)
    error = rejected(CHAT, raw)
    assert "nested deeper" in error.message


def test_extra_engine_options_within_the_limits_are_forwarded() -> None:
    request = request_parse(CHAT, chat(guided_json={"type": "object"}, repetition_penalty=1.1))
    assert request.body["guided_json"] == {"type": "object"}


def test_a_prompt_can_never_have_more_tokens_than_its_bound() -> None:
    """2,000 `!` are ~2,000 tokens to a byte-level tokenizer; the bound covers them."""
    raw = chat(messages=[{"role": "user", "content": "!" * 2000}])
    request = request_parse(CHAT, raw)
    assert request.prompt_tokens_bound >= 2000 + 3 * 2 + 3
    assert request.prompt_tokens_estimate < 600  # the likely count stays a guess
