"""A misbehaving ndjson ACP agent for fault tests (nothing here is a real agent's protocol bug fix).

Flags:
  --hang-init          never answer initialize
  --ignore-sigterm     ignore SIGTERM and stdin EOF, and keep a child (same group) that
                       ignores SIGTERM too: only SIGKILL of the group ends them
  --pidfile PATH       write "<pid> <child pid>" once started (with --ignore-sigterm)
Prompts (first word):
  hang                 never answer the prompt, ignore session/cancel
  garbage              non-JSON lines and blank lines on stdout, then a normal reply
  nonobject            a JSON line that is not an object (kills an SDK reader), then hang
  huge <bytes>         one agent_message_chunk of that many bytes, then a normal reply
  hugegarbage <bytes>  one non-JSON line of that many bytes, then a normal reply
  stderr <mib>         that many MiB on stderr (64-byte lines), then a normal reply
  crash                one chunk, then exit 5
anything else          one chunk "ok", end_turn
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
from typing import Any


class BadAgent:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.writer: asyncio.StreamWriter | None = None

    def raw(self, data: bytes) -> None:
        assert self.writer is not None
        self.writer.write(data)

    def send(self, message: dict[str, Any]) -> None:
        self.raw(json.dumps(message).encode() + b"\n")

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

    async def prompt(self, params: dict[str, Any]) -> dict[str, Any] | None:
        sid = params["sessionId"]
        text = " ".join(b.get("text", "") for b in params.get("prompt", []))
        word, _, rest = text.partition(" ")
        if word == "hang":
            return None
        if word == "garbage":
            self.raw(b"this is not json\n\n{broken json\n\x00\xff\xfe binary\n")
        elif word == "nonobject":
            self.raw(b"42\n")
            return None
        elif word == "huge":
            self.chunk(sid, "x" * int(rest))
        elif word == "hugegarbage":
            self.raw(b"#" * int(rest) + b"\n")
        elif word == "stderr":
            line = b"bad agent stderr flood " + b"." * 40 + b"\n"
            out = sys.stderr.buffer
            for _ in range(int(rest) * 16384):
                out.write(line)
            out.flush()
        elif word == "crash":
            self.chunk(sid, "crashing")
            assert self.writer is not None
            await self.writer.drain()
            os._exit(5)
        self.chunk(sid, "ok")
        return {"stopReason": "end_turn"}

    async def handle(self, msg: dict[str, Any]) -> None:
        method, params, rid = msg.get("method"), msg.get("params") or {}, msg.get("id")
        result: Any
        if method == "initialize":
            if self.args.hang_init:
                return
            result = {"protocolVersion": 1, "agentCapabilities": {}}
        elif method == "session/new":
            result = {"sessionId": "bad-1"}
        elif method == "session/prompt":
            result = await self.prompt(params)
            if result is None:
                return
        elif rid is None:
            return
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
        if self.args.ignore_sigterm:
            await asyncio.Event().wait()  # stdin closed: stay anyway


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--hang-init", action="store_true")
    parser.add_argument("--ignore-sigterm", action="store_true")
    parser.add_argument("--pidfile")
    args, _ = parser.parse_known_args()
    if args.ignore_sigterm:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        # inherits SIG_IGN for SIGTERM; stays in our process group
        child = subprocess.Popen(
            [sys.executable, "-c", "import time\nwhile True: time.sleep(60)"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
        )
        if args.pidfile:
            with open(args.pidfile, "w") as f:
                f.write(f"{os.getpid()} {child.pid}")
    asyncio.run(BadAgent(args).run())


if __name__ == "__main__":
    main()
