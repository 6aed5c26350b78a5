"""The token layer: the per-route token cache with single flight (``manager``), tokens shared between workers
(``shared``), and the interactive ``login`` that seeds the store; the shared store on Redis (``redisstore``,
its lease ``lease``) and the choice of store (``stores``).

May import ``config``, ``credentials``, ``disk``, ``ops`` and below; no server or upstream code.
"""
