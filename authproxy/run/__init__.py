"""Running the proxy: one process (``serve``), reloads, the supervisor of ``run --workers`` and its
workers, and the files they share (``fleet``).

May import everything except ``cli``.
"""
