"""The accept loop: the connection limits, one ``server.Connection`` per client, the drain on shutdown.

Two limits, both checked once per connection, never per request:
``limits.max_connections`` for the process, and
``limits.max_connections_per_client`` for each client address, so that one
client (a scan, a leak, silent sockets) cannot take every slot. Each is
counted per process: under ``--workers`` the kernel spreads a client's
connections over the workers, each holding it to the limit.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket

from authproxy.errors import ProxyError, TooManyConnections, Unavailable, render
from authproxy.http1.h1response import raw_response
from authproxy.net.hosts import normalize_host
from authproxy.ops import accesslog
from authproxy.ops.accesslog import AccessRecord
from authproxy.runtime import Runtime
from authproxy.server.connection import Connection
from authproxy.server.memory import Trimmer
from authproxy.transport.stream import ClientStream

_BACKLOG = 1024
_ACCEPT_RETRY = 1.0  # after an accept() error other than "nothing pending" (EMFILE...), as asyncio waits

log = logging.getLogger("authproxy.server")


class ProxyServer:
    """The accept loop, the connection limit, and the drain on shutdown."""

    def __init__(self, rt: Runtime) -> None:
        self.rt = rt
        self.draining = False
        self.connections: set[Connection] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._server: asyncio.Server | None = None
        self._listeners: list[socket.socket] = []  # our own accept path (uvloop), duplicates of the server's sockets
        self._adopting: set[asyncio.Task[None]] = set()
        self._loop: asyncio.AbstractEventLoop | None = None  # the one start() ran on
        self.trimmer = Trimmer()
        self.per_client: dict[str, int] = {}  # connections held, by client address (absent: none)
        self._at_limit: set[str] = set()  # addresses refused since they last held fewer: warned once

    async def start(self, host: str, port: int) -> tuple[str, int]:
        # Kept: asking for the running loop (a getpid() system call) per connection adds up.
        loop = self._loop = asyncio.get_running_loop()
        self._server = await loop.create_server(self._protocol, host, port, backlog=_BACKLOG)
        if not isinstance(loop, asyncio.BaseEventLoop):
            # uvloop: its libuv takes one connection per loop iteration (see _accept_greedily).
            self._accept_greedily()
        self.trimmer.start()
        sock = self._server.sockets[0].getsockname()
        self.rt.bound = (normalize_host(str(sock[0])), int(sock[1]))
        return self.rt.bound

    async def _accept(self, stream: ClientStream) -> None:
        limits = self.rt.snapshot.config.limits
        if self.draining or len(self.connections) >= limits.max_connections:
            why = "the proxy is shutting down." if self.draining else "the proxy is at its connection limit."
            await self._turn_away(stream, Unavailable(why))
            return
        addr = client_address(stream)
        held = self.per_client.get(addr, 0)
        if held >= limits.max_connections_per_client:
            if addr not in self._at_limit:
                self._at_limit.add(addr)
                log.warning(
                    "client %s holds %d connections (limits.max_connections_per_client); more get 503",
                    addr,
                    held,
                )
            await self._turn_away(
                stream, TooManyConnections("this client address holds as many connections as the proxy allows one.")
            )
            return
        self.per_client[addr] = held + 1
        conn = Connection(self, stream)
        self.connections.add(conn)
        self.rt.metrics.connections.inc()
        task = stream.task  # this coroutine's task (ClientStream.connection_made)
        if task is not None:
            self._tasks.add(task)
        try:
            await conn.run()
        except asyncio.CancelledError:
            # Only drain cancels a connection (past its grace): ending here, rather than
            # as a cancelled task, spares asyncio's stream callback a traceback per connection.
            pass
        finally:
            left = self.per_client.pop(addr, 1) - 1
            if left:
                self.per_client[addr] = left
            if self._at_limit:
                self._at_limit.discard(addr)
            self.connections.discard(conn)
            self.rt.metrics.connections.dec()
            if not self.connections:
                self.trimmer.idle()
            if task is not None:
                self._tasks.discard(task)

    async def _turn_away(self, stream: ClientStream, err: ProxyError) -> None:
        """A 503 before any request is served, with its access line; the connection closes."""
        # Take the request off the wire first: closing a socket with unread
        # data sends a reset, which would destroy the 503 before it is read.
        with contextlib.suppress(TimeoutError, OSError):
            await asyncio.wait_for(stream.read(), 0.5)
        status, headers, body = render(err)
        headers.append((b"connection", b"close"))
        stream.write(raw_response(status, headers, body))
        with contextlib.suppress(OSError):
            await stream.drain()
        stream.close()
        rec = AccessRecord(method="-", mode="plain", host="-", path="-", status=status, error=err.code)
        accesslog.emit(rec)
        self.rt.metrics.request_done(rec)

    def _accept_greedily(self) -> None:
        """Take every pending connection when a listening socket is readable, not one per loop iteration.

        uvloop's libuv accepts a single connection per readiness (since 1.45,
        libuv/libuv#3696); under load one loop iteration takes milliseconds, so
        a burst of new clients waited that long each in the backlog while the
        open connections kept being served. Go's net/http (hey) dials for every
        request that finds no idle connection and cancels the dial when another
        connection serves that request first: behind the late accepts ~98% of
        its intercepted CONNECTs were reset mid-handshake, and its pool never
        grew. asyncio's own loop takes up to ``backlog`` connections per
        readiness; this does the same, from a duplicate of each listening
        socket (libuv's watcher stays: both take from the one queue).
        """
        assert self._server is not None
        for server_sock in self._server.sockets:
            sock = socket.socket(fileno=os.dup(server_sock.fileno()))
            sock.setblocking(False)
            self._listeners.append(sock)
            self._watch(sock)

    def _watch(self, sock: socket.socket) -> None:
        if not self.draining and sock.fileno() != -1:
            asyncio.get_running_loop().add_reader(sock, self._take, sock)

    def _take(self, sock: socket.socket) -> None:
        loop = self._loop
        assert loop is not None  # set by start, which watches the sockets
        for _ in range(_BACKLOG):
            try:
                client, _addr = sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except ConnectionAbortedError:
                continue
            except OSError:
                # EMFILE and the like: libuv's own watcher sheds that load; retrying
                # here at once would spin on a socket that stays readable.
                loop.remove_reader(sock)
                loop.call_later(_ACCEPT_RETRY, self._watch, sock)
                return
            # Not made non-blocking here: uvloop's libuv does it as it adopts the socket (uv_tcp_open),
            # and one ioctl() per connection is enough.
            task = loop.create_task(self._adopt(client))
            self._adopting.add(task)
            task.add_done_callback(self._adopting.discard)

    async def _adopt(self, client: socket.socket) -> None:
        """The accepted socket as start_server would have made it: streams, then ``_accept``."""
        try:
            assert self._loop is not None
            await self._loop.connect_accepted_socket(self._protocol, client)
        except OSError:
            client.close()

    def _protocol(self) -> ClientStream:
        return ClientStream(self._accept, self._loop)

    async def drain(self, grace: float) -> None:
        """Stop accepting; let requests in flight finish within ``grace``; close the rest."""
        self.draining = True
        self.trimmer.stop()
        # Our duplicates first: the listening socket lives on while any of them is open.
        for sock in self._listeners:
            asyncio.get_running_loop().remove_reader(sock)
            sock.close()
        self._listeners.clear()
        if self._server is not None:
            self._server.close()
        for conn in list(self.connections):
            conn.end_if_idle()
        pending = {t for t in self._tasks if not t.done()}
        if pending:
            _, still = await asyncio.wait(pending, timeout=grace)
            for t in still:
                t.cancel()
            if still:
                await asyncio.wait(still, timeout=1.0)


def client_address(stream: ClientStream) -> str:
    """The client's IP address as text; an IPv4-mapped IPv6 one (a dual-stack listener) as IPv4."""
    peer = stream.transport.get_extra_info("peername")
    addr = str(peer[0]) if isinstance(peer, tuple) and peer else "-"
    if addr.startswith("::ffff:") and "." in addr:
        return addr[7:]
    return addr
