"""A WebSocket server's frames (RFC 6455 §5) with their payloads scrubbed, every frame's length unchanged.

Sans-IO: bytes from the upstream in, bytes for the client out. Only a
scrubbed route's WebSocket is parsed; any other is a byte tunnel.

- Data frames: a message (text, and binary too: a secret is as readable in
  a binary frame, and a same-length replacement leaves the framing alone)
  is one scrubbed stream across its fragments (§5.4), so a value split
  between two fragments is found. A frame's header leaves at once; its
  payload leaves as the scrubber releases it, so the last bytes of a
  fragment may wait for the next fragment (or the message's end).
- Control frames (§5.5: at most 125 bytes, never fragmented) are scrubbed
  whole: a Close reason is the upstream's text. One may arrive between two
  fragments; it leaves after the fragment before it, order kept.
- Fail closed: a frame with an RSV bit set (an extension such as
  permessage-deflate, RFC 7692, that the handshake did not offer, since a
  scrubbed route removes ``Sec-WebSocket-Extensions``: its payload cannot
  be read), a masked frame (§5.1: a server must not mask) or a malformed
  fragment sequence raises ``FrameError``, and the connection is cut.
"""

from __future__ import annotations

from collections import deque

from authproxy.secrecy.scrub import Needles, Scrubber

__all__ = ["FrameError", "FrameScrubber"]

_CONTINUATION = 0x0
_CONTROL = 0x8
_KNOWN = frozenset({0x0, 0x1, 0x2, 0x8, 0x9, 0xA})


class FrameError(ValueError):
    """Frames the scrubber cannot read, so cannot pass on."""


class FrameScrubber:
    """Upstream-to-client frames in, the same frames with scrubbed payloads out."""

    def __init__(self, needles: Needles, substitute: bytes | None = None) -> None:
        self._needles = needles
        self._sub = substitute
        self._buf = bytearray()  # received, not yet parsed (a frame header in progress, a control payload)
        self._left = 0  # payload bytes of the current frame still to come
        self._control: tuple[bytes, int] | None = None  # a control frame's header and payload length
        self._fin = False  # the current data frame ends its message
        self._message: Scrubber | None = None  # the data message in progress
        self._plan: deque[bytes | int] = deque()  # what leaves, in order: bytes as they are, or n scrubbed bytes
        self._ready = bytearray()  # scrubbed payload bytes not yet placed in their frames
        self._done = 0  # bytes replaced by finished messages

    @property
    def scrubbed(self) -> int:
        return self._done + (self._message.scrubbed if self._message is not None else 0)

    def feed(self, data: bytes) -> bytes:
        """What can leave now of the frames received so far."""
        view = memoryview(data)
        while view:
            if self._left and self._control is None:
                take = view[: self._left]
                view = view[len(take) :]
                self._left -= len(take)
                assert self._message is not None
                self._ready += self._message.feed(bytes(take))
                if not self._left:
                    self._frame_end()
                continue
            self._buf += view
            view = view[len(view) :]
            rest = self._parse()
            if rest:
                view = memoryview(rest)
        return self._place()

    def flush(self) -> bytes:
        """At the connection's end: a frame cut short is not passed on (it could end in a partial value)."""
        return b""

    def _parse(self) -> bytes:
        """Headers and control frames out of ``_buf``; the payload bytes of a data frame after them are returned."""
        buf = self._buf
        while True:
            if self._control is not None:
                head, size = self._control
                if len(buf) < size:
                    return b""
                payload = bytes(buf[:size])
                del buf[:size]
                self._control = None
                once = Scrubber(self._needles, self._sub)
                self._plan.append(head + once.whole(payload))
                self._done += once.scrubbed
                continue
            if self._left:
                rest = bytes(buf)
                buf.clear()
                return rest
            parsed = _header(buf)
            if parsed is None:
                return b""
            head_size, opcode, fin, size = parsed
            if opcode not in _KNOWN:
                raise FrameError(f"a frame has the reserved opcode {opcode:#x} (RFC 6455 §5.2)")
            head = bytes(buf[:head_size])
            del buf[:head_size]
            if opcode & _CONTROL:
                if not fin or size > 125:
                    raise FrameError("a control frame is fragmented or longer than 125 bytes (RFC 6455 §5.5)")
                self._control = (head, size)
                continue
            self._data_frame(head, opcode, fin, size)

    def _data_frame(self, head: bytes, opcode: int, fin: bool, size: int) -> None:
        if opcode == _CONTINUATION:
            if self._message is None:
                raise FrameError("a continuation frame with no message to continue (RFC 6455 §5.4)")
        elif self._message is not None:
            raise FrameError("a new message began before the last one ended (RFC 6455 §5.4)")
        else:
            self._message = Scrubber(self._needles, self._sub)
        self._plan.append(head)
        self._plan.append(size)
        self._fin, self._left = fin, size
        if not size:
            self._frame_end()

    def _frame_end(self) -> None:
        if self._fin and self._message is not None:
            self._ready += self._message.flush()
            self._done += self._message.scrubbed
            self._message = None

    def _place(self) -> bytes:
        """Headers, control frames and scrubbed payloads in frame order, as far as the payloads are ready."""
        out = bytearray()
        plan, ready = self._plan, self._ready
        while plan:
            item = plan[0]
            if isinstance(item, int):
                take = min(item, len(ready))
                out += ready[:take]
                del ready[:take]
                if take < item:
                    plan[0] = item - take
                    break
            else:
                out += item
            plan.popleft()
        return bytes(out)


def _header(buf: bytearray) -> tuple[int, int, bool, int] | None:
    """(header size, opcode, FIN, payload length) of the frame at the start of ``buf``, or None until it is whole."""
    if len(buf) < 2:
        return None
    b0, b1 = buf[0], buf[1]
    if b0 & 0x70:
        raise FrameError("a frame uses an extension (RSV bits set) whose payload cannot be scrubbed")
    if b1 & 0x80:
        raise FrameError("a server frame is masked (RFC 6455 §5.1)")
    size = b1 & 0x7F
    head = 2
    if size == 126:
        head = 4
        if len(buf) < head:
            return None
        size = int.from_bytes(buf[2:4], "big")
    elif size == 127:
        head = 10
        if len(buf) < head:
            return None
        size = int.from_bytes(buf[2:10], "big")
    return head, b0 & 0x0F, bool(b0 & 0x80), size
