"""A raw ndjson ACP agent for the security tests.

Prompts: `env` answers with a JSON chunk of its environment, argv, cwd and ids; `mcp` with
the `mcpServers` its last session/new got; `write <path> <text>` asks the client to write
a file and answers `written` or the error; `huge <bytes>` writes one session/update line of
that many bytes (then ends the turn); anything else ends the turn at once. Standard library
only, so any Python can run it as any user.
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


def ask(method: str, params: dict[str, Any]) -> dict[str, Any]:
    """A request to the client; its reply (the client sends nothing else meanwhile)."""
    send({"jsonrpc": "2.0", "id": "probe-ask", "method": method, "params": params})
    for line in sys.stdin:
        reply = json.loads(line)
        if reply.get("id") == "probe-ask":
            return dict(reply)
    raise SystemExit("client went away")


def main() -> None:
    mcp_servers: Any = None
    for line in sys.stdin:
        msg = json.loads(line)
        method, id_ = msg.get("method"), msg.get("id")
        params = msg.get("params") or {}
        if method == "initialize":
            result: Any = {"protocolVersion": 1, "agentCapabilities": {}}
        elif method == "session/new":
            mcp_servers = params.get("mcpServers")
            result = {"sessionId": "probe-1"}
        elif method == "session/prompt":
            words = params["prompt"][0]["text"].split()
            if words[0] == "env":
                report = {
                    "env": dict(os.environ),
                    "argv": sys.argv,
                    "cwd": os.getcwd(),
                    "uid": os.getuid(),
                    "euid": os.geteuid(),
                    "gid": os.getgid(),
                    "groups": os.getgroups(),
                }
                chunk(params["sessionId"], json.dumps(report))
            elif words[0] == "mcp":
                chunk(params["sessionId"], json.dumps({"mcpServers": mcp_servers}))
            elif words[0] == "write":
                path = os.path.join(os.getcwd(), words[1])
                reply = ask(
                    "fs/write_text_file",
                    {"sessionId": "probe-1", "path": path, "content": words[2]},
                )
                chunk(
                    params["sessionId"], "written" if "result" in reply else "refused"
                )
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
