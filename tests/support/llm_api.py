"""A small HTTPS server that speaks the OpenAI and Anthropic API shapes, for agent tests.

``POST /v1/chat/completions`` wants ``Authorization: Bearer <openai key>``;
``POST /v1/messages`` wants ``x-api-key: <anthropic key>``. Each answers a
completion as JSON, or, with ``"stream": true``, as Server-Sent Events in the
vendor's event shapes. Every credential it was shown is recorded, so a test
can say the server saw only the real keys.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

WORDS = ["Hello", " from", " the", " model"]


@dataclass
class LLMApi:
    openai_key: str
    anthropic_key: str
    shown: list[str] = field(default_factory=list)  # every credential header value received
    refused: int = 0


def _event(data: dict[str, Any], name: str | None = None) -> bytes:
    head = f"event: {name}\n" if name else ""
    return f"{head}data: {json.dumps(data)}\n\n".encode()


def app(api: LLMApi) -> web.Application:
    def gate(request: web.Request, header: str, want: str) -> web.Response | None:
        value = request.headers.get(header, "")
        api.shown.append(value)
        if value != want:
            api.refused += 1
            return web.json_response({"error": {"type": "authentication_error", "message": "invalid key"}}, status=401)
        return None

    async def stream(request: web.Request, events: list[bytes]) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        await resp.prepare(request)
        for ev in events:
            await resp.write(ev)
        await resp.write_eof()
        return resp

    async def chat(request: web.Request) -> web.StreamResponse:
        refused = gate(request, "Authorization", f"Bearer {api.openai_key}")
        if refused is not None:
            return refused
        body = await request.json()
        base = {"id": "chatcmpl-1", "created": 1700000000, "model": body["model"]}
        if not body.get("stream"):
            message = {"role": "assistant", "content": "".join(WORDS)}
            usage = {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7}
            choice = {"index": 0, "message": message, "finish_reason": "stop", "logprobs": None}
            return web.json_response({**base, "object": "chat.completion", "choices": [choice], "usage": usage})
        chunk: Callable[[dict[str, Any], str | None], bytes] = lambda delta, finish: _event(  # noqa: E731
            {
                **base,
                "object": "chat.completion.chunk",
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
            }
        )
        events = [chunk({"role": "assistant", "content": ""}, None)]
        events += [chunk({"content": w}, None) for w in WORDS]
        events += [chunk({}, "stop"), b"data: [DONE]\n\n"]
        return await stream(request, events)

    async def messages(request: web.Request) -> web.StreamResponse:
        refused = gate(request, "x-api-key", api.anthropic_key)
        if refused is not None:
            return refused
        body = await request.json()
        msg = {
            "id": "msg_1",
            "type": "message",
            "role": "assistant",
            "model": body["model"],
            "content": [{"type": "text", "text": "".join(WORDS)}],
            "stop_reason": "end_turn",
            "stop_sequence": None,
            "usage": {"input_tokens": 3, "output_tokens": 4},
        }
        if not body.get("stream"):
            return web.json_response(msg)
        start = {**msg, "content": [], "stop_reason": None}
        events = [
            _event({"type": "message_start", "message": start}, "message_start"),
            _event(
                {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
                "content_block_start",
            ),
        ]
        events += [
            _event(
                {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": w}},
                "content_block_delta",
            )
            for w in WORDS
        ]
        events += [
            _event({"type": "content_block_stop", "index": 0}, "content_block_stop"),
            _event(
                {
                    "type": "message_delta",
                    "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                    "usage": {"output_tokens": 4},
                },
                "message_delta",
            ),
            _event({"type": "message_stop"}, "message_stop"),
        ]
        return await stream(request, events)

    application = web.Application()
    application.router.add_post("/v1/chat/completions", chat)
    application.router.add_post("/v1/messages", messages)
    return application
