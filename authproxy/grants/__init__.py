"""Grant handlers, registered by their ``type`` name on import."""

from . import api_key, basic, bearer, client_credentials, password
from .base import LATER, REGISTRY, Credential, Grant, GrantContext

__all__ = [
    "LATER",
    "REGISTRY",
    "Credential",
    "Grant",
    "GrantContext",
    "api_key",
    "basic",
    "bearer",
    "client_credentials",
    "password",
]
