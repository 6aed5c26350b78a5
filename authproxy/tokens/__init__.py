"""The token layer: the per-route token cache with single flight (``manager``), tokens shared between workers
(``shared``), and the interactive ``login`` that seeds the store.

May import ``config``, ``credentials``, ``disk``, ``ops`` and below; no server or upstream code.
"""
