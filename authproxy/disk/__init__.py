"""What is kept under the state directory: atomic writes and locks (``state``), the token store, the local CA;
and the interface every token store implements (``tokenstore``).

May import ``errors``, ``secrecy`` and ``net``; nothing above.
"""
