"""OpenAI chat-completions wire shapes: bodies, stream chunks and error bodies.

Pure functions producing exactly what api.openai.com sends, so the official `openai`
client (and anything else written against the real API) parses them unchanged.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Callable
from typing import Any

from livia.sim.replies import Reply, stream_pieces

SYSTEM_FINGERPRINT = "fp_livia_sim"
ORGANIZATION = "org-livia-sim"
SSE_DONE = b"data: [DONE]\n\n"

#: Characters of tool-call arguments per streamed delta (OpenAI sends a token or so each).
_ARGUMENT_PIECE = 8


def new_id(prefix: str = "chatcmpl-", length: int = 29) -> str:
    """A random alphanumeric id such as "chatcmpl-9f3a..." (OpenAI's shape)."""
    return prefix + secrets.token_hex((length + 1) // 2)[:length]


def dumps(obj: Any) -> str:
    """Compact JSON, as OpenAI writes it."""
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False)


#: `dumps` of one string, without building an encoder per call (a reply has ~45 pieces).
_string: Callable[[str], str] = json.encoder.encode_basestring


def usage_body(prompt: int, completion: int) -> dict[str, Any]:
    """The `usage` object."""
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
        "completion_tokens_details": {
            "reasoning_tokens": 0,
            "audio_tokens": 0,
            "accepted_prediction_tokens": 0,
            "rejected_prediction_tokens": 0,
        },
    }


def _tool_call_body(reply: Reply) -> list[dict[str, Any]]:
    return [
        {
            "id": call.id,
            "type": "function",
            "function": {"name": call.name, "arguments": call.arguments},
        }
        for call in reply.tool_calls
    ]


def completion_body(
    completion_id: str, created: int, model: str, reply: Reply, usage: dict[str, Any]
) -> dict[str, Any]:
    """A whole (non-streamed) `chat.completion`."""
    message: dict[str, Any] = {
        "role": "assistant",
        "content": reply.text,
        "refusal": None,
        "annotations": [],
    }
    if reply.tool_calls:
        message["tool_calls"] = _tool_call_body(reply)
    return {
        "id": completion_id,
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": message,
                "logprobs": None,
                "finish_reason": reply.finish_reason,
            }
        ],
        "usage": usage,
        "service_tier": "default",
        "system_fingerprint": SYSTEM_FINGERPRINT,
    }


def stream_events(
    completion_id: str,
    created: int,
    model: str,
    reply: Reply,
    usage: dict[str, Any],
    *,
    include_usage: bool,
) -> list[bytes]:
    """The server-sent events of a streamed reply, in order, ending with `data: [DONE]`.

    Each event carries one `chat.completion.chunk`. Text: a role chunk with empty
    content, one chunk per word-sized piece, a chunk with the finish reason. Tool calls: a
    chunk opening each call (id, name, empty arguments), chunks with argument fragments, a
    chunk with finish reason "tool_calls". With `include_usage`, every chunk carries
    `"usage": null` and a last chunk with no choices carries the usage, as OpenAI's
    `stream_options.include_usage` does. The chunks share one pre-encoded envelope, so a
    long reply costs one small `json.dumps` per piece.
    """

    def chunk(**fields: Any) -> str:
        """A `chat.completion.chunk` with `fields` after the common ones, as JSON."""
        return dumps(
            {
                "id": completion_id,
                "object": "chat.completion.chunk",
                "created": created,
                "model": model,
                "service_tier": "default",
                "system_fingerprint": SYSTEM_FINGERPRINT,
                **fields,
            }
        )

    envelope = chunk(choices="@")
    head, _, tail = envelope.rpartition('"@"')
    head = "data: " + head + '[{"index":0,"delta":'
    usage_null = ',"usage":null' if include_usage else ""

    def ending(finish: str | None) -> str:
        return f',"logprobs":null,"finish_reason":{dumps(finish)}}}]{usage_null}{tail}\n\n'

    unfinished = ending(None)

    def event(delta: str, finish: str | None = None) -> bytes:
        return (head + delta + (unfinished if finish is None else ending(finish))).encode("utf-8")

    events: list[bytes] = []
    if reply.tool_calls:
        for index, call in enumerate(reply.tool_calls):
            opening: dict[str, Any] = {
                "tool_calls": [
                    {
                        "index": index,
                        "id": call.id,
                        "type": "function",
                        "function": {"name": call.name, "arguments": ""},
                    }
                ]
            }
            if index == 0:
                opening = {"role": "assistant", "content": None, **opening, "refusal": None}
            events.append(event(dumps(opening)))
            args = call.arguments
            for start in range(0, len(args), _ARGUMENT_PIECE):
                piece = dumps(args[start : start + _ARGUMENT_PIECE])
                events.append(
                    event(
                        f'{{"tool_calls":[{{"index":{index},"function":{{"arguments":{piece}}}}}]}}'
                    )
                )
    else:
        events.append(event('{"role":"assistant","content":"","refusal":null}'))
        events.extend(
            event('{"content":' + _string(piece) + "}") for piece in stream_pieces(reply.text or "")
        )
    events.append(event("{}", reply.finish_reason))
    if include_usage:
        last = chunk(choices=[], usage=usage)
        events.append(b"data: " + last.encode("utf-8") + b"\n\n")
    events.append(SSE_DONE)
    return events


def error_body(
    message: str, kind: str, *, param: str | None = None, code: str | None = None
) -> dict[str, Any]:
    """OpenAI's error envelope: {"error": {"message", "type", "param", "code"}}."""
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


def models_body(models: tuple[str, ...], created: int) -> dict[str, Any]:
    """`GET /v1/models`."""
    return {"object": "list", "data": [model_body(m, created) for m in models]}


def model_body(model: str, created: int) -> dict[str, Any]:
    """One model object."""
    return {"id": model, "object": "model", "created": created, "owned_by": "livia-sim"}
