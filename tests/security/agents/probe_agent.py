"""A raw ndjson ACP agent for the security tests.

Prompts: `env` answers with a JSON chunk of its environment, argv and cwd; `huge <bytes>`
writes one session/update line of that many bytes (then ends the turn); anything else
ends the turn at once.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any


def send(message: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()


def chunk(sid: str, text: str) -> None:
    send(
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


def main() -> None:
    for line in sys.stdin:
        msg = json.loads(line)
        method, id_ = msg.get("method"), msg.get("id")
        params = msg.get("params") or {}
        if method == "initialize":
            result: Any = {"protocolVersion": 1, "agentCapabilities": {}}
        elif method == "session/new":
            result = {"sessionId": "probe-1"}
        elif method == "session/prompt":
            words = params["prompt"][0]["text"].split()
            if words[0] == "env":
                report = {"env": dict(os.environ), "argv": sys.argv, "cwd": os.getcwd()}
                chunk(params["sessionId"], json.dumps(report))
            elif words[0] == "huge":
                chunk(params["sessionId"], "x" * int(words[1]))
            result = {"stopReason": "end_turn"}
        elif id_ is None:
            continue
        else:
            send(
                {
                    "jsonrpc": "2.0",
                    "id": id_,
                    "error": {"code": -32601, "message": method},
                }
            )
            continue
        send({"jsonrpc": "2.0", "id": id_, "result": result})


if __name__ == "__main__":
    main()
