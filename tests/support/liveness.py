"""Whether an object is still alive, for tests of what reference counting alone frees.

By identity among the objects the cycle collector tracks: a weak reference would be
simpler, but a class mypyc compiles natively (``H1Connection``) takes none.
"""

from __future__ import annotations

import gc


def alive(obj_id: int, cls: type) -> bool:
    """Is the object of ``cls`` whose ``id()`` was ``obj_id`` still allocated?"""
    return any(id(o) == obj_id and isinstance(o, cls) for o in gc.get_objects())
