"""Run an agent with no network but loopback, and the model endpoint as its only way out.

Usage (the gateway's agent command for the realagents suite):
    unshare -n -- python netns_relay.py SOCKET PORT -- AGENT [ARGS...]

Inside the fresh network namespace: bring `lo` up (opencode's ACP bridge talks to its
own loopback server), listen on 127.0.0.1:PORT, fork a relay that forwards every
connection to the Unix socket SOCKET (the scripted model endpoint in the test process;
Unix sockets live in the file system, not in a network namespace), then exec the agent.
The relay exits when the agent does (its parent changes) and dies with its process group.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import subprocess
import sys


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(OSError, asyncio.IncompleteReadError):
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    with contextlib.suppress(OSError):
        writer.close()


async def _relay(listener: socket.socket, target: str, parent: int) -> None:
    async def handle(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        try:
            ur, uw = await asyncio.open_unix_connection(target)
        except OSError:
            w.close()
            return
        await asyncio.gather(_pipe(r, uw), _pipe(ur, w))

    server = await asyncio.start_server(handle, sock=listener)
    async with server:
        while os.getppid() == parent:
            await asyncio.sleep(0.5)


def main() -> None:
    sep = sys.argv.index("--")
    target, port = sys.argv[1], int(sys.argv[2])
    command = sys.argv[sep + 1 :]
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", port))
    listener.listen(64)
    parent = os.getpid()
    if os.fork() == 0:
        # the relay must not hold the agent's stdio pipes open
        devnull = os.open(os.devnull, os.O_RDWR)
        for fd in (0, 1, 2):
            os.dup2(devnull, fd)
        try:
            asyncio.run(_relay(listener, target, parent))
        finally:
            os._exit(0)
    listener.close()
    os.execvp(command[0], command)


if __name__ == "__main__":
    main()
