"""Hosts and addresses: host/port/path normalisation, local-address checks, the destinations policy, egress rules,
and the control plane's synchronous HTTP client (``control``).

The one address check lives here, low in the stack, so that grants, the admin
gate and the data plane judge addresses the same way. May import ``errors``,
``secrecy`` and ``schema``; nothing above.
"""
