"""A raw ndjson ACP agent for gateway tests: the paths echo does not cover.

Flags: --protocol N (answer initialize with N), --no-models (offer nothing to switch),
--mode-option (offer modes only as a `mode` config option, as opencode does).
Prompts: `hang` never answers and ignores cancel; `title <t>` sends session_info_update;
`terminal <json>` sends terminal/create with those params (then wait_for_exit, output,
release) and says every answer as one JSON chunk; anything else ends the turn with usage. session/load replays one chunk first;
session/set_model is the legacy request (models listed the old way).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from typing import Any


class FakeAgent:
    def __init__(self, protocol: int, models: bool, mode_option: bool = False) -> None:
        self.protocol = protocol
        self.models = models
        self.mode_option = mode_option
        self.mode = "build"
        self.count = 0
        self.writer: asyncio.StreamWriter | None = None
        self.pending: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self.next_id = 0

    def send(self, message: dict[str, Any]) -> None:
        assert self.writer is not None
        self.writer.write(json.dumps(message).encode() + b"\n")

    def update(self, sid: str, update: dict[str, Any]) -> None:
        self.send(
            {
                "jsonrpc": "2.0",
                "method": "session/update",
                "params": {"sessionId": sid, "update": update},
            }
        )

    async def request(self, method: str, params: dict[str, Any]) -> dict[str, Any]:
        """A request to the client; the whole response (`result` or `error`)."""
        self.next_id += 1
        future = asyncio.get_running_loop().create_future()
        self.pending[self.next_id] = future
        self.send(
            {"jsonrpc": "2.0", "id": self.next_id, "method": method, "params": params}
        )
        return await future

    async def terminal(self, sid: str, params: dict[str, Any]) -> dict[str, Any]:
        said: dict[str, Any] = {}
        said["create"] = await self.request(
            "terminal/create", {"sessionId": sid, **params}
        )
        tid = said["create"].get("result", {}).get("terminalId")
        if tid is not None:
            ref = {"sessionId": sid, "terminalId": tid}
            said["exit"] = await self.request("terminal/wait_for_exit", ref)
            said["output"] = await self.request("terminal/output", ref)
            said["release"] = await self.request("terminal/release", ref)
        return said

    def config_options(self) -> list[dict[str, Any]]:
        return [
            {
                "id": "mode",
                "name": "Mode",
                "category": "mode",
                "type": "select",
                "currentValue": self.mode,
                "options": [
                    {"value": "build", "name": "Build"},
                    {"value": "plan", "name": "Plan"},
                ],
            }
        ]

    def session_result(self) -> dict[str, Any]:
        result: dict[str, Any] = {}
        if self.mode_option:
            result["configOptions"] = self.config_options()
        if self.models:
            result["models"] = {
                "currentModelId": "m1",
                "availableModels": [
                    {"modelId": "m1", "name": "M1"},
                    {"modelId": "m2", "name": "M2"},
                ],
            }
        return result

    async def handle(self, msg: dict[str, Any]) -> None:
        method, params, rid = msg.get("method"), msg.get("params") or {}, msg.get("id")
        result: Any = None
        if method == "initialize":
            result = {
                "protocolVersion": self.protocol,
                "agentCapabilities": {"loadSession": True},
            }
        elif method == "session/new":
            self.count += 1
            result = {"sessionId": f"fake-{self.count}", **self.session_result()}
        elif method == "session/load":
            self.update(
                params["sessionId"],
                {
                    "sessionUpdate": "agent_message_chunk",
                    "content": {"type": "text", "text": "replayed"},
                },
            )
            result = self.session_result()
        elif method == "session/set_model":
            result = {}
        elif method == "session/set_config_option" and self.mode_option:
            if params.get("configId") != "mode" or params.get("value") not in (
                "build",
                "plan",
            ):
                self.send(
                    {
                        "jsonrpc": "2.0",
                        "id": rid,
                        "error": {"code": -32602, "message": "bad mode"},
                    }
                )
                return
            self.mode = params["value"]
            result = {"configOptions": self.config_options()}
        elif method == "session/prompt":
            text = " ".join(b.get("text", "") for b in params.get("prompt", []))
            if text == "hang":
                return  # never answers, ignores cancel
            if text.startswith("terminal "):
                said = await self.terminal(params["sessionId"], json.loads(text[9:]))
                self.update(
                    params["sessionId"],
                    {
                        "sessionUpdate": "agent_message_chunk",
                        "content": {"type": "text", "text": json.dumps(said)},
                    },
                )
            if text.startswith("title "):
                self.update(
                    params["sessionId"],
                    {"sessionUpdate": "session_info_update", "title": text[6:]},
                )
            self.update(
                params["sessionId"],
                {
                    "sessionUpdate": "agent_message_chunk",
                    "content": {"type": "text", "text": "ok"},
                },
            )
            result = {
                "stopReason": "end_turn",
                "usage": {"inputTokens": 1, "outputTokens": 2, "totalTokens": 3},
            }
        elif rid is None:
            return  # notifications (session/cancel) are ignored
        else:
            self.send(
                {
                    "jsonrpc": "2.0",
                    "id": rid,
                    "error": {"code": -32601, "message": f"Method not found: {method}"},
                }
            )
            return
        self.send({"jsonrpc": "2.0", "id": rid, "result": result})

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader(limit=2**24)
        await loop.connect_read_pipe(
            lambda: asyncio.StreamReaderProtocol(reader), sys.stdin
        )
        transport, protocol = await loop.connect_write_pipe(
            asyncio.streams.FlowControlMixin, sys.stdout
        )
        self.writer = asyncio.StreamWriter(transport, protocol, None, loop)
        tasks = set()
        while line := await reader.readline():
            msg = json.loads(line)
            if "method" not in msg and msg.get("id") in self.pending:
                self.pending.pop(msg["id"]).set_result(msg)
            elif "method" in msg:
                task = asyncio.create_task(self.handle(msg))
                tasks.add(task)
                task.add_done_callback(tasks.discard)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--protocol", type=int, default=1)
    parser.add_argument("--no-models", action="store_true")
    parser.add_argument("--mode-option", action="store_true")
    args, _ = parser.parse_known_args()
    asyncio.run(FakeAgent(args.protocol, not args.no_models, args.mode_option).run())


if __name__ == "__main__":
    main()
