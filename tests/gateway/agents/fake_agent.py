"""A raw ndjson ACP agent for gateway tests: the paths echo does not cover.

Flags: --protocol N (answer initialize with N), --no-models (offer nothing to switch),
--mode-option (offer modes only as a `mode` config option, as opencode does).
Prompts: `hang` never answers and ignores cancel; `title <t>` sends session_info_update;
anything else ends the turn with usage. session/load replays one chunk first;
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
            if "method" in msg:
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
