"""What is kept under the state directory: atomic writes and locks (``state``), the token store, the local CA.

May import ``errors``, ``secrecy`` and ``net``; nothing above.
"""
