"""Byte streams over asyncio transports: the receive buffer, the client stream, the two-way tunnel pump,
and the stand-in for a lost transport.

Shared by the client side (``server``) and the upstream side (``upstream``). Imports nothing of
authproxy above itself.
"""
