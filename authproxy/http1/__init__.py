"""HTTP/1.1 framing without sockets: request heads and bodies (``h1request``), response heads
(``h1response``), the upstream message types and body framing (``h1message``, its errors ``h1errors``), and a scrubbed
WebSocket's frames (``wsframes``).

Sans-IO: no asyncio, no sockets; bytes in, parsed values or bytes out. May
import ``config`` (limits), ``errors``, ``net`` and below.
"""
