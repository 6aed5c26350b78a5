"""The ``authproxy`` command (``main``) and the ``env`` command's variables (``envvars``).

The top: may import anything; nothing imports it but ``authproxy.__main__``.
"""
