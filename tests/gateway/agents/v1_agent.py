"""A raw ndjson ACP v1 agent for the gateway's v1 paths echo does not cover.

Flags: --log FILE (every message received is appended as one JSON line), --caps
resume,close,delete (what it advertises under sessionCapabilities).
Prompts: `meta` says the prompt's `_meta` as JSON; `withdraw` sends elicitation/create,
withdraws it with `$/cancel_request`, and says the answer it got as JSON; anything else
ends the turn.
Config option `effort` (low/high/slow): `slow` is answered only when the client withdraws
the request with `$/cancel_request`, with error -32800; that answer is logged as
`{"sent": <message>}`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import uuid
from typing import Any


class V1Agent:
    def __init__(self, log: str, caps: list[str]) -> None:
        self.log = log
        self.caps = caps
        self.writer: asyncio.StreamWriter | None = None
        self.pending: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self.next_id = 0
        # the client's requests held until it withdraws them
        self.held: dict[Any, asyncio.Future[None]] = {}

    def record(self, message: dict[str, Any]) -> None:
        with open(self.log, "a", encoding="utf-8") as f:
            f.write(json.dumps(message) + "\n")

    def send(self, message: dict[str, Any]) -> None:
        assert self.writer is not None
        self.writer.write(json.dumps(message).encode() + b"\n")

    def say(self, sid: str, text: str) -> None:
        self.send(
            {
                "jsonrpc": "2.0",
                "method": "session/update",
                "params": {
                    "sessionId": sid,
                    "update": {
                        "sessionUpdate": "agent_message_chunk",
                        "content": {"type": "text", "text": text},
                    },
                },
            }
        )

    def answer(self, rid: Any, result: Any) -> None:
        self.send({"jsonrpc": "2.0", "id": rid, "result": result})

    async def withdraw(self, sid: str) -> dict[str, Any]:
        self.next_id += 1
        rid = self.next_id
        future = asyncio.get_running_loop().create_future()
        self.pending[rid] = future
        self.send(
            {
                "jsonrpc": "2.0",
                "id": rid,
                "method": "elicitation/create",
                "params": {
                    "sessionId": sid,
                    "mode": "form",
                    "message": "Your name?",
                    "requestedSchema": {
                        "type": "object",
                        "properties": {"name": {"type": "string"}},
                    },
                },
            }
        )
        self.send(
            {
                "jsonrpc": "2.0",
                "method": "$/cancel_request",
                "params": {"requestId": rid},
            }
        )
        return await future

    def options(self, effort: str) -> list[dict[str, Any]]:
        return [
            {
                "id": "effort",
                "name": "Effort",
                "type": "select",
                "currentValue": effort,
                "options": [
                    {"value": v, "name": v.title()} for v in ("low", "high", "slow")
                ],
            }
        ]

    async def set_option(self, rid: Any, value: str) -> None:
        if value != "slow":
            self.answer(rid, {"configOptions": self.options(value)})
            return
        held = asyncio.get_running_loop().create_future()
        self.held[rid] = held
        await held
        answer = {
            "jsonrpc": "2.0",
            "id": rid,
            "error": {"code": -32800, "message": "Request cancelled"},
        }
        self.send(answer)
        self.record({"sent": answer})

    async def handle(self, msg: dict[str, Any]) -> None:
        method = msg.get("method")
        rid = msg.get("id")
        params = msg.get("params") or {}
        if method == "initialize":
            self.answer(
                rid,
                {
                    "protocolVersion": 1,
                    "agentCapabilities": {
                        "loadSession": False,
                        "sessionCapabilities": {c: {} for c in self.caps},
                    },
                    "authMethods": [],
                },
            )
        elif method == "session/new":
            self.answer(
                rid,
                {
                    "sessionId": f"v1-{uuid.uuid4().hex[:8]}",
                    "configOptions": self.options("low"),
                },
            )
        elif method == "session/set_config_option":
            await self.set_option(rid, str(params.get("value")))
        elif method == "$/cancel_request":
            held = self.held.pop(params.get("requestId"), None)
            if held is not None:
                held.set_result(None)
        elif method in ("session/resume", "session/close", "session/delete"):
            self.answer(rid, {})
        elif method == "session/prompt":
            sid = params["sessionId"]
            text = "".join(
                b.get("text", "")
                for b in params.get("prompt", [])
                if isinstance(b, dict)
            )
            if text == "meta":
                self.say(sid, json.dumps(params.get("_meta")))
            elif text == "withdraw":
                self.say(sid, json.dumps(await self.withdraw(sid)))
            self.answer(rid, {"stopReason": "end_turn"})
        elif rid is not None and method is not None:
            self.send(
                {
                    "jsonrpc": "2.0",
                    "id": rid,
                    "error": {"code": -32601, "message": f"Method not found: {method}"},
                }
            )

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader(limit=1 << 24)
        await loop.connect_read_pipe(
            lambda: asyncio.StreamReaderProtocol(reader), sys.stdin
        )
        transport, protocol = await loop.connect_write_pipe(
            asyncio.streams.FlowControlMixin, sys.stdout
        )
        self.writer = asyncio.StreamWriter(transport, protocol, reader, loop)
        tasks: set[asyncio.Task[None]] = set()
        while line := await reader.readline():
            msg = json.loads(line)
            self.record(msg)
            if "method" not in msg and msg.get("id") in self.pending:
                self.pending.pop(msg["id"]).set_result(msg)
                continue
            task = asyncio.create_task(self.handle(msg))
            tasks.add(task)
            task.add_done_callback(tasks.discard)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--log", required=True)
    parser.add_argument("--caps", default="")
    args = parser.parse_args()
    caps = [c for c in args.caps.split(",") if c]
    asyncio.run(V1Agent(args.log, caps).run())


if __name__ == "__main__":
    main()
