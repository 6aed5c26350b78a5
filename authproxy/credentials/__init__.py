"""Where a credential comes from: the grants (``grants/``), the Bitwarden Secrets client, OAuth error bodies,
and AWS SigV4 signing (``sigv4``, ``awssigner``, ``awsendpoint``).

A grant obtains a credential when asked; when to ask (caching, single flight,
retries, sharing between workers) is ``authproxy.tokens``'s job. May import
``errors``, ``secrecy``, ``schema``, ``net`` and ``disk``; no server, upstream or
runtime code.
"""
