"""The upstream side of the data plane: the connection (``h1client``, with its request sender
``h1send`` and response reader ``h1parse``), the pool, protocol switches (``upgrade``), the TLS
contexts and per-route upstreams (``upstreams``), and response scrubbing (``scrubbed``).

May import ``http1``, ``transport``, ``messages``, ``config``, ``net``, ``disk`` and below; never the
client-facing ``server``, the pipeline or the runtime.
"""
