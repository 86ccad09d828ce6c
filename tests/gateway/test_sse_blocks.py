"""The stream pass-through works on whole blocks of events at once (gateway/proxy.py): each
event still gets the public model name and the tier served, and tokens are counted per event
as a client would count them."""

import orjson

from gateway.proxy import _TOKEN_EVENT, _rewriter


def event(delta: dict[str, str], **extra: object) -> bytes:
    chunk = {"id": "c1", "object": "chat.completion.chunk", "model": "engine-7b"}
    chunk |= {"choices": [{"index": 0, "delta": delta, "finish_reason": None}], **extra}
    return b"data: " + orjson.dumps(chunk)


BLOCK = b"\n\n".join(
    [
        event({"role": "assistant", "content": ""}, usage=None),
        event({"content": "Hello"}, usage=None),
        event({"content": ' "model":"engine-7b" is quoted'}, usage=None),
        event({}, usage=None),
        b'data: {"id":"c1","choices":[],"usage":{"prompt_tokens":3,"completion_tokens":2}}',
        b"data: [DONE]",
        b"",
    ]
)


def test_tokens_are_counted_per_event_with_content() -> None:
    assert len(_TOKEN_EVENT.findall(BLOCK)) == 2
    spaced = BLOCK.replace(b'"content":""', b'"content": ""').replace(b'"delta":{}', b'"delta": {}')
    assert len(_TOKEN_EVENT.findall(spaced)) == 2


def test_every_event_of_a_block_gets_the_public_model_and_the_tier() -> None:
    rename = (b'"model":"engine-7b"', b'"model":"public-7b"')
    rewrite = _rewriter(rename, "priority", stream=True)
    assert rewrite is not None
    events = rewrite(BLOCK).split(b"\n\n")
    chunks = [orjson.loads(e[6:]) for e in events[:5]]
    assert [c.get("model") for c in chunks[:4]] == ["public-7b"] * 4
    assert [c["service_tier"] for c in chunks] == ["priority"] * 5
    # Text that only looks like the key is the client's, untouched.
    assert chunks[2]["choices"][0]["delta"]["content"] == ' "model":"engine-7b" is quoted'
    assert events[5:] == [b"data: [DONE]", b""]


def test_an_event_where_the_engine_names_a_tier_keeps_it() -> None:
    block = event({"content": "a"}) + b"\n\n" + event({"content": "b"}, service_tier="default")
    rewrite = _rewriter(None, "flex", stream=True)
    assert rewrite is not None
    tiers = [orjson.loads(e[6:])["service_tier"] for e in rewrite(block).split(b"\n\n")]
    assert tiers == ["flex", "default"]


def test_a_whole_answer_gets_the_tier_once() -> None:
    rewrite = _rewriter(None, "default", stream=False)
    assert rewrite is not None
    answer = orjson.loads(rewrite(b'{"id":"x","choices":[{"message":{"content":"{\\"a\\":1}"}}]}'))
    assert answer["service_tier"] == "default"
    assert answer["choices"][0]["message"]["content"] == '{"a":1}'
