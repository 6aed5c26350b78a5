"""The accept loop: the connection limit, one ``server.Connection`` per client, the drain on shutdown."""

from __future__ import annotations

import asyncio
import contextlib

from .errors import Unavailable, render
from .h1response import raw_response
from .hosts import normalize_host
from .memory import Trimmer
from .runtime import Runtime
from .server import READ_SIZE, Connection


class ProxyServer:
    """The accept loop, the connection limit, and the drain on shutdown."""

    def __init__(self, rt: Runtime) -> None:
        self.rt = rt
        self.draining = False
        self.connections: set[Connection] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._server: asyncio.Server | None = None
        self.trimmer = Trimmer()

    async def start(self, host: str, port: int) -> tuple[str, int]:
        self._server = await asyncio.start_server(self._accept, host, port, limit=READ_SIZE, backlog=1024)
        self.trimmer.start()
        sock = self._server.sockets[0].getsockname()
        self.rt.bound = (normalize_host(str(sock[0])), int(sock[1]))
        return self.rt.bound

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        limits = self.rt.snapshot.config.limits
        if self.draining or len(self.connections) >= limits.max_connections:
            why = "the proxy is shutting down." if self.draining else "the proxy is at its connection limit."
            # Take the request off the wire first: closing a socket with unread
            # data sends a reset, which would destroy the 503 before it is read.
            with contextlib.suppress(TimeoutError, OSError):
                await asyncio.wait_for(reader.read(65536), 0.5)
            status, headers, body = render(Unavailable(why))
            headers.append((b"connection", b"close"))
            writer.write(raw_response(status, headers, body))
            with contextlib.suppress(OSError):
                await writer.drain()
            writer.close()
            return
        conn = Connection(self, reader, writer)
        self.connections.add(conn)
        self.rt.metrics.connections.inc()
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
        try:
            await conn.run()
        finally:
            self.connections.discard(conn)
            self.rt.metrics.connections.dec()
            if not self.connections:
                self.trimmer.idle()
            if task is not None:
                self._tasks.discard(task)

    async def drain(self, grace: float) -> None:
        """Stop accepting; let requests in flight finish within ``grace``; close the rest."""
        self.draining = True
        self.trimmer.stop()
        if self._server is not None:
            self._server.close()
        for conn in list(self.connections):
            if not conn.busy:
                conn.writer.close()
        pending = {t for t in self._tasks if not t.done()}
        if pending:
            _, still = await asyncio.wait(pending, timeout=grace)
            for t in still:
                t.cancel()
            if still:
                await asyncio.wait(still, timeout=1.0)
