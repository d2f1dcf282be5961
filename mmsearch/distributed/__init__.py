"""Running the same ingest and index steps on a cluster engine (Ray).

Ray is an optional extra (``pip install mmsearch[ray]``): nothing here imports it until
:func:`index_with_ray` runs, and the single-machine path never imports this package.
"""

from __future__ import annotations

from typing import Any

__all__ = ["index_with_ray"]


def index_with_ray(*args: Any, **kwargs: Any) -> Any:
    """See :func:`mmsearch.distributed.ray_engine.index_with_ray`."""
    from .ray_engine import index_with_ray as run

    return run(*args, **kwargs)
