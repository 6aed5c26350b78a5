"""Grant handlers, registered by their ``type`` name on import."""

from authproxy.credentials.grants import (
    api_key,
    authorization_code,
    aws_sigv4,
    basic,
    bearer,
    bws,
    client_credentials,
    command,
    jwt_bearer,
    password,
    refresh_token,
    token_exchange,
)
from authproxy.credentials.grants.base import REGISTRY, Credential, Grant, GrantContext

__all__ = [
    "REGISTRY",
    "Credential",
    "Grant",
    "GrantContext",
    "api_key",
    "authorization_code",
    "aws_sigv4",
    "basic",
    "bearer",
    "bws",
    "client_credentials",
    "command",
    "jwt_bearer",
    "password",
    "refresh_token",
    "token_exchange",
]
