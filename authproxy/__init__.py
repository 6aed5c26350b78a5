"""authproxy: a forward HTTP(S) proxy that adds credentials to outbound requests."""

__version__ = "0.1.0"
