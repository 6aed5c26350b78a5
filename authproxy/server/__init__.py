"""The client-facing side: the listener, the connection (``connection``, reading its requests with
``reading``), CONNECT and what is inside a tunnel (``connect``, ``sniff``), and the allocator and TLS
buffer tuning (``memory``).

The top of the data plane: it drives ``authproxy.pipeline`` for each request. May import the pipeline,
the runtime and everything below them; not ``admin``, ``run`` or ``cli``.
"""
