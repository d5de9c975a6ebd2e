"""A TCP proxy the tests control, to put faults between an app and Postgres or Redis.

proxy = TcpProxy("127.0.0.1", 6379)
await proxy.start()
url = proxy.rewrite("redis://127.0.0.1:6379/0")   # same URL through the proxy
await proxy.cut()          # drop every open connection (new ones still forwarded)
await proxy.stop()         # stop listening too: connects are refused
await proxy.start()        # listen again on the same port
proxy.blackhole = True     # accept and swallow: the peer hangs (no reply, no error)
proxy.drop_replies = True  # forward client→server, drop server→client: the server acts
                           # (commits) but the client never hears back, until a cut()
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Any

from yarl import URL


class TcpProxy:
    def __init__(
        self, target_host: str, target_port: int, *, host: str = "127.0.0.1"
    ) -> None:
        self.target_host = target_host
        self.target_port = target_port
        self.host = host
        self.port = 0
        self.blackhole = False
        self.drop_replies = False
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[Any]] = set()

    @classmethod
    def for_url(cls, url: str) -> TcpProxy:
        parsed = URL(url)
        assert parsed.host is not None
        assert parsed.port is not None
        return cls(parsed.host, parsed.port)

    def rewrite(self, url: str) -> str:
        """`url` with its host and port replaced by the proxy's."""
        assert self.port, "start() first"
        return str(URL(url).with_host(self.host).with_port(self.port))

    async def start(self) -> None:
        """Listen (again on the same port after a stop)."""
        assert self._server is None
        self._server = await asyncio.start_server(self._handle, self.host, self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        """Stop listening and drop every connection."""
        if self._server is not None:
            self._server.close()
            await self.cut()
            await self._server.wait_closed()
            self._server = None

    async def cut(self) -> None:
        """Drop every open connection; the listener stays."""
        for writer in list(self._writers):
            writer.transport.abort()
        self._writers.clear()
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, OSError):
                await task

    async def _handle(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self._writers.add(writer)
        upstream_writer: asyncio.StreamWriter | None = None
        try:
            if self.blackhole:
                while await reader.read(65536):
                    pass
                return
            up_reader, upstream_writer = await asyncio.open_connection(
                self.target_host, self.target_port
            )
            self._writers.add(upstream_writer)
            await asyncio.gather(
                _pipe(reader, upstream_writer),
                _pipe(up_reader, writer, drop=lambda: self.drop_replies),
            )
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            for w in (writer, upstream_writer):
                if w is not None:
                    self._writers.discard(w)
                    w.transport.abort()
            self._tasks.discard(task)


async def _pipe(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    drop: Callable[[], bool] = lambda: False,
) -> None:
    try:
        while data := await reader.read(65536):
            if drop():
                continue
            writer.write(data)
            await writer.drain()
    finally:
        writer.transport.abort()
