"""A scripted model endpoint: the Anthropic Messages and OpenAI Chat Completions APIs.

Real agents (claude-agent-acp, opencode) do real work against it offline: each test gives
it a script of steps (call this tool with these arguments, then answer this text) and the
endpoint streams them the way the real APIs do: Anthropic SSE with `tool_use` blocks,
`input_json_delta` and full usage (including the cache fields, without which
claude-agent-acp reports `used: null`); OpenAI chunks with `tool_calls` deltas and a
final usage chunk. Every request is logged, so a test can assert what the agent sent.

Steps are consumed by the agent's main requests only: a request without tools (opencode's
title request, sent concurrently with the first main request) is answered from its
content, never from the script. A request with a wrong API key is refused with 401 in the
API's own error format, as the vendors do.

It listens on a Unix socket: the agents run in a network namespace with only loopback,
and `netns_relay.py` forwards their TCP connections to this socket, the only way out.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
from aiohttp import web

API_KEY = "sk-test-realagents"


@dataclass
class ModelRequest:
    """One request the agent sent: which API, its headers and parsed body."""

    api: str  # "anthropic" | "openai"
    path: str
    headers: dict[str, str]
    body: dict[str, Any]
    main: bool  # carries tools: a step of the agent's loop (else a side request)
    # the token counts the answer reported: {"input": n, "output": n} (empty when refused)
    reported: dict[str, int] = field(default_factory=dict)

    def text(self) -> str:
        """Every text in the messages (system, user, assistant, tool results), joined."""
        out: list[str] = []
        system = self.body.get("system")
        if isinstance(system, str):
            out.append(system)
        for message in self.body.get("messages") or []:
            _collect(message.get("content"), out)
        return "\n".join(out)

    def last_tool_result(self) -> str:
        """The text of the newest tool result in the conversation ("" when none)."""
        found = ""
        for message in self.body.get("messages") or []:
            if message.get("role") == "tool":  # OpenAI
                parts: list[str] = []
                _collect(message.get("content"), parts)
                found = "\n".join(parts)
            content = message.get("content")
            if isinstance(
                content, list
            ):  # Anthropic: user message with tool_result blocks
                for block in content:
                    if isinstance(block, dict) and block.get("type") == "tool_result":
                        parts = []
                        _collect(block.get("content"), parts)
                        found = "\n".join(parts)
        return found

    def user_texts(self) -> list[str]:
        """The user's own prompts, oldest first (tool results left out)."""
        out: list[str] = []
        for message in self.body.get("messages") or []:
            if message.get("role") != "user":
                continue
            content = message.get("content")
            if isinstance(content, str):
                out.append(content)
            elif isinstance(content, list):
                out.extend(
                    str(b.get("text", ""))
                    for b in content
                    if isinstance(b, dict) and b.get("type") == "text"
                )
        return out


def _collect(content: Any, out: list[str]) -> None:
    if isinstance(content, str):
        out.append(content)
    elif isinstance(content, list):
        for block in content:
            if isinstance(block, dict):
                if isinstance(block.get("text"), str):
                    out.append(block["text"])
                _collect(block.get("content"), out)


Reply = Callable[[ModelRequest], str]


@dataclass
class Tool:
    """A step: call `name` with `input` (a dict, or built from the request)."""

    name: str
    input: dict[str, Any] | Callable[[ModelRequest], dict[str, Any]]


@dataclass
class Text:
    """A step that ends the agent's turn: answer `text` (a string, or built from the request)."""

    text: str | Reply


@dataclass
class Fail:
    """A step answered with an HTTP error in the API's own format."""

    status: int
    kind: str
    message: str


Step = Tool | Text | Fail


@dataclass
class ModelServer:
    """The endpoint; `script(...)` appends steps, `requests` is the log."""

    socket_path: Path
    api_key: str = API_KEY
    model: str = "scripted-model"
    requests: list[ModelRequest] = field(default_factory=list)
    steps: list[Step] = field(default_factory=list)
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    _ids: itertools.count[int] = field(default_factory=lambda: itertools.count(1))
    _runner: web.AppRunner | None = None

    def script(self, *steps: Step) -> None:
        self.steps.extend(steps)

    def main_requests(self) -> list[ModelRequest]:
        return [r for r in self.requests if r.main]

    async def wait_requests(self, n: int, timeout: float = 60.0) -> ModelRequest:
        """Wait until the agent sent `n` main requests; the n-th."""
        async with asyncio.timeout(timeout):
            while len(self.main_requests()) < n:
                self.changed.clear()
                await self.changed.wait()
        return self.main_requests()[n - 1]

    async def start(self) -> None:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_get("/", self._head)  # and HEAD /, claude's reachability probe
        app.router.add_post("/v1/messages", self._anthropic)
        app.router.add_post("/v1/chat/completions", self._openai)
        app.router.add_route("*", "/{tail:.*}", self._unknown)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.UnixSite(self._runner, str(self.socket_path)).start()

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    # --- plumbing ---------------------------------------------------------------

    async def _head(self, request: web.Request) -> web.Response:
        return web.Response(text="ok")

    async def _unknown(self, request: web.Request) -> web.Response:
        self._log("unknown", request, {}, main=False)
        return web.json_response({"error": {"message": "not scripted"}}, status=404)

    def _log(
        self, api: str, request: web.Request, body: dict[str, Any], *, main: bool
    ) -> ModelRequest:
        entry = ModelRequest(api, request.path, dict(request.headers), body, main)
        self.requests.append(entry)
        self.changed.set()
        return entry

    def _key(self, request: web.Request) -> str | None:
        key = request.headers.get("x-api-key")
        auth = request.headers.get("Authorization", "")
        if key is None and auth.lower().startswith("bearer "):
            key = auth[7:].strip()
        return key

    def _next(self, entry: ModelRequest) -> Step:
        if not entry.main:
            return Text("Scripted session")  # a title or other side request
        if self.steps:
            return self.steps.pop(0)
        return Text("(the script has no more steps)")

    @staticmethod
    def _tokens(entry: ModelRequest) -> int:
        return max(1, len(orjson.dumps(entry.body.get("messages") or [])) // 4)

    async def _stream(self, request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(
            headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
        )
        await resp.prepare(request)
        return resp

    # --- Anthropic Messages -----------------------------------------------------

    async def _anthropic(self, request: web.Request) -> web.StreamResponse:
        body = orjson.loads(await request.read())
        entry = self._log("anthropic", request, body, main=bool(body.get("tools")))
        if self._key(request) != self.api_key:
            return _anthropic_error(401, "authentication_error", "invalid x-api-key")
        step = self._next(entry)
        if isinstance(step, Fail):
            return _anthropic_error(step.status, step.kind, step.message)
        msg_id = f"msg_{next(self._ids):04d}"
        usage = {
            "input_tokens": self._tokens(entry),
            "output_tokens": 1,
            "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": 0,
        }
        if isinstance(step, Tool):
            args = step.input(entry) if callable(step.input) else step.input
            block: dict[str, Any] = {
                "type": "tool_use",
                "id": f"toolu_{next(self._ids):04d}",
                "name": step.name,
                "input": args,
            }
            stop = "tool_use"
        else:
            text = step.text(entry) if callable(step.text) else step.text
            block = {"type": "text", "text": text}
            stop = "end_turn"
        out_tokens = max(1, len(orjson.dumps(block)) // 4)
        entry.reported = {"input": usage["input_tokens"], "output": out_tokens}
        if not body.get("stream"):
            return web.json_response(
                {
                    "id": msg_id,
                    "type": "message",
                    "role": "assistant",
                    "model": body.get("model", self.model),
                    "content": [block],
                    "stop_reason": stop,
                    "stop_sequence": None,
                    "usage": {**usage, "output_tokens": out_tokens},
                }
            )
        resp = await self._stream(request)

        async def send(event: str, data: dict[str, Any]) -> None:
            await resp.write(
                b"event: " + event.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"
            )

        await send(
            "message_start",
            {
                "type": "message_start",
                "message": {
                    "id": msg_id,
                    "type": "message",
                    "role": "assistant",
                    "model": body.get("model", self.model),
                    "content": [],
                    "stop_reason": None,
                    "stop_sequence": None,
                    "usage": usage,
                },
            },
        )
        if block["type"] == "tool_use":
            start = {**block, "input": {}}
            raw = orjson.dumps(block["input"]).decode()
            deltas = [
                {"type": "input_json_delta", "partial_json": piece}
                for piece in _pieces(raw)
            ]
        else:
            start = {"type": "text", "text": ""}
            deltas = [
                {"type": "text_delta", "text": piece}
                for piece in _pieces(block["text"])
            ]
        await send(
            "content_block_start",
            {"type": "content_block_start", "index": 0, "content_block": start},
        )
        await send("ping", {"type": "ping"})
        for delta in deltas:
            await send(
                "content_block_delta",
                {"type": "content_block_delta", "index": 0, "delta": delta},
            )
        await send("content_block_stop", {"type": "content_block_stop", "index": 0})
        await send(
            "message_delta",
            {
                "type": "message_delta",
                "delta": {"stop_reason": stop, "stop_sequence": None},
                "usage": {"output_tokens": out_tokens},
            },
        )
        await send("message_stop", {"type": "message_stop"})
        await resp.write_eof()
        return resp

    # --- OpenAI Chat Completions --------------------------------------------------

    async def _openai(self, request: web.Request) -> web.StreamResponse:
        body = orjson.loads(await request.read())
        entry = self._log("openai", request, body, main=bool(body.get("tools")))
        if self._key(request) != self.api_key:
            return _openai_error(401, "invalid_api_key", "Incorrect API key provided")
        step = self._next(entry)
        if isinstance(step, Fail):
            return _openai_error(step.status, step.kind, step.message)
        chat_id = f"chatcmpl-{next(self._ids):04d}"
        created = int(time.time())
        model = body.get("model", self.model)
        prompt_tokens = self._tokens(entry)
        if isinstance(step, Tool):
            args = step.input(entry) if callable(step.input) else step.input
            call_id = f"call_{next(self._ids):04d}"
            raw = orjson.dumps(args).decode()
            message: dict[str, Any] = {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": call_id,
                        "type": "function",
                        "function": {"name": step.name, "arguments": raw},
                    }
                ],
            }
            finish = "tool_calls"
            deltas: list[dict[str, Any]] = [
                {
                    "role": "assistant",
                    "tool_calls": [
                        {
                            "index": 0,
                            "id": call_id,
                            "type": "function",
                            "function": {"name": step.name, "arguments": ""},
                        }
                    ],
                }
            ]
            deltas += [
                {"tool_calls": [{"index": 0, "function": {"arguments": piece}}]}
                for piece in _pieces(raw)
            ]
        else:
            text = step.text(entry) if callable(step.text) else step.text
            message = {"role": "assistant", "content": text}
            finish = "stop"
            deltas = [{"role": "assistant", "content": ""}]
            deltas += [{"content": piece} for piece in _pieces(text)]
        completion_tokens = max(1, len(orjson.dumps(message)) // 4)
        usage = {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        }
        entry.reported = {"input": prompt_tokens, "output": completion_tokens}
        if not body.get("stream"):
            return web.json_response(
                {
                    "id": chat_id,
                    "object": "chat.completion",
                    "created": created,
                    "model": model,
                    "choices": [
                        {"index": 0, "message": message, "finish_reason": finish}
                    ],
                    "usage": usage,
                }
            )
        resp = await self._stream(request)

        async def chunk(choices: list[dict[str, Any]], **extra: Any) -> None:
            data = {
                "id": chat_id,
                "object": "chat.completion.chunk",
                "created": created,
                "model": model,
                "choices": choices,
                **extra,
            }
            await resp.write(b"data: " + orjson.dumps(data) + b"\n\n")

        for delta in deltas:
            await chunk([{"index": 0, "delta": delta, "finish_reason": None}])
        await chunk([{"index": 0, "delta": {}, "finish_reason": finish}])
        if (body.get("stream_options") or {}).get("include_usage"):
            await chunk([], usage=usage)
        await resp.write(b"data: [DONE]\n\n")
        await resp.write_eof()
        return resp


def _pieces(text: str, size: int = 16) -> list[str]:
    """Split into streaming deltas (at least one, possibly empty)."""
    return [text[i : i + size] for i in range(0, len(text), size)] or [""]


def _anthropic_error(status: int, kind: str, message: str) -> web.Response:
    return web.json_response(
        {"type": "error", "error": {"type": kind, "message": message}}, status=status
    )


def _openai_error(status: int, code: str, message: str) -> web.Response:
    kind = "invalid_request_error" if status < 500 else "server_error"
    return web.json_response(
        {"error": {"message": message, "type": kind, "code": code, "param": None}},
        status=status,
    )
