"""A bench-only ndjson ACP agent: `pace <rate> <count>` emits chunks whose text is the
CLOCK_MONOTONIC ns at which each was due (system-wide, so another process can measure the
hop); `flood <count>` emits them as fast as the pipe takes them. Anything else: one chunk."""

from __future__ import annotations

import asyncio
import json
import sys
import time
from typing import Any


class PaceAgent:
    def __init__(self) -> None:
        self.writer: asyncio.StreamWriter | None = None
        self.count = 0

    def send(self, message: dict[str, Any]) -> None:
        assert self.writer is not None
        self.writer.write(json.dumps(message, separators=(",", ":")).encode() + b"\n")

    def chunk(self, sid: str, text: str) -> None:
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

    async def prompt(self, sid: str, text: str) -> None:
        words = text.split()
        assert self.writer is not None
        if words[:1] == ["pace"] and len(words) == 3:
            rate, count = float(words[1]), int(words[2])
            start = time.monotonic_ns() + 5_000_000
            step = 1e9 / rate
            for i in range(count):
                due = start + int(i * step)
                delay = (due - time.monotonic_ns()) / 1e9
                if delay > 0:
                    await asyncio.sleep(delay)
                self.chunk(sid, str(due))
                if i % 64 == 0:
                    await self.writer.drain()
        elif words[:1] == ["flood"] and len(words) == 2:
            for i in range(int(words[1])):
                self.chunk(sid, str(time.monotonic_ns()))
                if i % 256 == 0:
                    await self.writer.drain()
        else:
            self.chunk(sid, "ok")
        await self.writer.drain()

    async def handle(self, msg: dict[str, Any]) -> None:
        method, params, rid = msg.get("method"), msg.get("params") or {}, msg.get("id")
        result: Any
        if method == "initialize":
            result = {"protocolVersion": 1, "agentCapabilities": {"loadSession": True}}
        elif method in ("session/new", "session/load"):
            self.count += 1
            result = {"sessionId": f"pace-{self.count}"}
        elif method == "session/prompt":
            text = " ".join(b.get("text", "") for b in params.get("prompt", []))
            await self.prompt(params["sessionId"], text)
            result = {"stopReason": "end_turn"}
        elif rid is None:
            return
        else:
            result = {}
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


if __name__ == "__main__":
    asyncio.run(PaceAgent().run())
