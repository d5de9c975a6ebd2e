"""A raw ndjson ACP agent that fails its prompts the way real agents without credentials do.

Prompts: `env` answers with a JSON chunk of its environment; `auth` fails with ACP's -32000
"Authentication required" (claude-agent-acp without a key); `refused` with -32603 "Internal
error: Incorrect API key provided" (opencode when the model API says 401); `boom` with an
unrelated -32603; anything else ends the turn. With the argument `--no-key`, session/new
itself fails with -32000 "Gemini API key is missing or not configured." (gemini, codex).
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

ERRORS = {
    "auth": (-32000, "Authentication required"),
    "refused": (-32603, "Internal error: Incorrect API key provided"),
    "boom": (-32603, "Internal error: boom"),
}


def send(message: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()


def main() -> None:
    for line in sys.stdin:
        msg = json.loads(line)
        method, id_ = msg.get("method"), msg.get("id")
        params = msg.get("params") or {}
        if id_ is None:
            continue
        if method == "initialize":
            result: Any = {
                "protocolVersion": 1,
                "agentCapabilities": {},
                "authMethods": [],
            }
        elif method == "session/new":
            if "--no-key" in sys.argv:
                error = {
                    "code": -32000,
                    "message": "Gemini API key is missing or not configured.",
                }
                send({"jsonrpc": "2.0", "id": id_, "error": error})
                continue
            result = {"sessionId": "cred-1"}
        elif method == "session/prompt":
            word = params["prompt"][0]["text"].split()[0]
            if word in ERRORS:
                code, message = ERRORS[word]
                send(
                    {
                        "jsonrpc": "2.0",
                        "id": id_,
                        "error": {"code": code, "message": message},
                    }
                )
                continue
            if word == "env":
                update = {
                    "sessionUpdate": "agent_message_chunk",
                    "content": {"type": "text", "text": json.dumps(dict(os.environ))},
                }
                send(
                    {
                        "jsonrpc": "2.0",
                        "method": "session/update",
                        "params": {"sessionId": params["sessionId"], "update": update},
                    }
                )
            result = {"stopReason": "end_turn"}
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
