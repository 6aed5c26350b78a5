"""The upstream side of the data plane: the connection (``h1client``), the pool, protocol switches
(``upgrade``), and the TLS contexts and per-route upstreams (``upstreams``).

May import ``http1``, ``transport``, ``messages``, ``config``, ``net``, ``disk`` and below; never the
client-facing ``server``, the pipeline or the runtime.
"""
