"""authproxy: a forward HTTP(S) proxy that adds credentials to outbound requests."""

import os as _os

__version__ = "0.1.0"

if _os.environ.get("AUTHPROXY_PURE_PYTHON") == "1":
    # Before any hot module is imported: the .py sources, not their compiled twins (see compiled.py).
    from authproxy.compiled import prefer_sources as _prefer_sources

    _prefer_sources()
