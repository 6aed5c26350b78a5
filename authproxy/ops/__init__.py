"""What the proxy reports while it runs: the access log, Prometheus metrics, per-route request rates.

Low in the stack so the server, the pipeline and the token layer can all record
into it. May import ``secrecy`` (every log line goes through the redactor) and
``errors``; nothing above.
"""
