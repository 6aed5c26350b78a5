"""The ``authproxy`` command (``main``), its commands by group (``runcmd``, ``report``, ``prepare``,
sharing ``usage``) and the ``env`` command's variables (``envvars``).

The top: may import anything; nothing imports it but ``authproxy.__main__``.
"""
