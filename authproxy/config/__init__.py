"""routes.yaml → typed, immutable objects, parsed once.

Nothing after ``load()`` reads YAML: the proxy works on ``Config`` and its
``Route``s. The model (``model``), the ``routes:`` entries (``route``) and the
file with its top-level keys (``parse``).
"""

from authproxy.config.model import (
    DEFAULT_LISTEN,
    DEFAULT_STATE_DIR,
    BwsSettings,
    Config,
    Limits,
    Match,
    Route,
    Timeouts,
    Upstream,
)
from authproxy.config.parse import load, parse_listen, per_client_default, text_line
from authproxy.schema.problems import ConfigError

__all__ = [
    "DEFAULT_LISTEN",
    "DEFAULT_STATE_DIR",
    "BwsSettings",
    "Config",
    "ConfigError",
    "Limits",
    "Match",
    "Route",
    "Timeouts",
    "Upstream",
    "load",
    "parse_listen",
    "per_client_default",
    "text_line",
]
