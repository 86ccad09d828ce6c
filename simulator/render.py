"""Response bodies shaped as vLLM/OpenAI produce them.

Stream chunks are spliced from pre-encoded byte templates rather than serialised one by one: in
instant mode a 64-token stream is built in microseconds, which keeps the simulator out of the
way of gateway benchmarks.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import orjson

from simulator.engine import Sequence
from simulator.faults import Fault
from simulator.textgen import TextGen

DONE = b"data: [DONE]\n\n"
SSE_HEADERS = {"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}

_FINISH = {None: b"null", "stop": b'"stop"', "length": b'"length"'}


def _usage(seqs: Iterable[Sequence], reasoning_tokens: int) -> dict[str, Any]:
    prompt = completion = cached = 0
    for seq in seqs:
        prompt += seq.num_prompt_tokens
        completion += seq.num_generated
        cached += seq.cached_tokens
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": cached},
        "completion_tokens_details": {"reasoning_tokens": reasoning_tokens},
    }


def _final_reason(seq: Sequence) -> str:
    return "length" if seq.length_limited else "stop"


class _Render:
    object_name = ""
    chunk_object_name = ""

    def __init__(
        self, *, request_id: str, created: int, model: str, include_usage: bool, textgen: TextGen
    ) -> None:
        self.request_id = request_id
        self.created = created
        self.model = model
        self.textgen = textgen
        self._envelope: dict[str, Any] = {
            "id": request_id,
            "object": self.chunk_object_name,
            "created": created,
            "model": model,
        }
        self._head = (
            b'data: {"id":"%s","object":"%s","created":%d,"model":%s,"choices":[{"index":'
            % (request_id.encode(), self.chunk_object_name.encode(), created, orjson.dumps(model))
        )
        # The SDK tells the usage chunk apart by choices == [] and usage null everywhere else.
        self._close = b"}]" + (b',"usage":null' if include_usage else b"") + b"}\n\n"
        # A "usage" fault taken by this request: its report is wrong on purpose.
        self.usage_fault: Fault | None = None

    def usage_chunk(self, seqs: list[Sequence]) -> bytes:
        chunk = {**self._envelope, "choices": [], "usage": self.usage(seqs)}
        return b"data: " + orjson.dumps(chunk) + b"\n\n"

    def reasoning_tokens(self, seq: Sequence) -> int:
        return 0

    def usage(self, seqs: list[Sequence]) -> Any:
        reasoning = sum(min(self.reasoning_tokens(seq), seq.num_generated) for seq in seqs)
        true = _usage(seqs, reasoning)
        return true if self.usage_fault is None else self.usage_fault.misreport(true)


class ChatRender(_Render):
    object_name = "chat.completion"
    chunk_object_name = "chat.completion.chunk"

    def __init__(
        self,
        *,
        request_id: str,
        created: int,
        model: str,
        include_usage: bool,
        textgen: TextGen,
        reasoning_fraction: float,
    ) -> None:
        super().__init__(
            request_id=request_id,
            created=created,
            model=model,
            include_usage=include_usage,
            textgen=textgen,
        )
        self._reasoning_fraction = reasoning_fraction
        self._tails = {
            reason: b'},"logprobs":null,"finish_reason":' + value + self._close
            for reason, value in _FINISH.items()
        }

    def reasoning_tokens(self, seq: Sequence) -> int:
        """The leading share of the output that is reasoning, as reasoning models emit it."""
        return int(seq.max_tokens * self._reasoning_fraction)

    def chunks(self, index: int, seq: Sequence, start: int, end: int) -> list[bytes]:
        head = self._head + b"%d" % index + b',"delta":{'
        reasoning = self.reasoning_tokens(seq)
        last = seq.max_tokens - 1
        tail = self._tails[None]
        out = []
        for position, token in enumerate(self.textgen.tokens_json(seq.prompt, start, end), start):
            field = b'"reasoning_content":' if position < reasoning else b'"content":'
            if position == 0:
                field = b'"role":"assistant",' + field
            if position == last:
                out.append(head + field + token + self._tails[_final_reason(seq)])
            else:
                out.append(head + field + token + tail)
        return out

    def body(self, seqs: list[Sequence]) -> bytes:
        choices = []
        for index, seq in enumerate(seqs):
            reasoning = min(self.reasoning_tokens(seq), seq.num_generated)
            message: dict[str, Any] = {
                "role": "assistant",
                "content": self.textgen.text(seq.prompt, reasoning, seq.num_generated),
                "reasoning_content": None,
                "tool_calls": [],
            }
            if reasoning:
                message["reasoning_content"] = self.textgen.text(seq.prompt, 0, reasoning)
            choices.append(
                {
                    "index": index,
                    "message": message,
                    "logprobs": None,
                    "finish_reason": _final_reason(seq),
                    "stop_reason": None,
                }
            )
        return orjson.dumps(
            {
                "id": self.request_id,
                "object": self.object_name,
                "created": self.created,
                "model": self.model,
                "choices": choices,
                "usage": self.usage(seqs),
            }
        )


class CompletionRender(_Render):
    object_name = "text_completion"
    chunk_object_name = "text_completion"

    def chunks(self, index: int, seq: Sequence, start: int, end: int) -> list[bytes]:
        head = self._head + b"%d" % index + b',"text":'
        tail = b',"logprobs":null,"finish_reason":null,"stop_reason":null' + self._close
        final_tail = (
            b',"logprobs":null,"finish_reason":'
            + _FINISH[_final_reason(seq)]
            + b',"stop_reason":null'
            + self._close
        )
        last = seq.max_tokens - 1
        return [
            head + token + (final_tail if position == last else tail)
            for position, token in enumerate(
                self.textgen.tokens_json(seq.prompt, start, end), start
            )
        ]

    def body(self, seqs: list[Sequence]) -> bytes:
        choices = [
            {
                "index": index,
                "text": self.textgen.text(seq.prompt, 0, seq.num_generated),
                "logprobs": None,
                "finish_reason": _final_reason(seq),
                "stop_reason": None,
                "prompt_logprobs": None,
            }
            for index, seq in enumerate(seqs)
        ]
        return orjson.dumps(
            {
                "id": self.request_id,
                "object": self.object_name,
                "created": self.created,
                "model": self.model,
                "choices": choices,
                "usage": self.usage(seqs),
            }
        )


Render = ChatRender | CompletionRender
