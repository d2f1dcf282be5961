"""Running the same ingest and index steps on a cluster engine (Ray).

Ray is an optional extra (``pip install mmsearch[ray]``): nothing here imports it until a build runs, and the
single-machine path never imports this package. ``mmsearch.index(paths, engine=RayEngine(RayOptions(...)))``
is the preferred form; :func:`index_with_ray` takes the same options as keywords.
"""

from __future__ import annotations

from typing import Any

from .options import RayOptions

__all__ = ["RayEngine", "RayOptions", "index_with_ray"]


def index_with_ray(*args: Any, **kwargs: Any) -> Any:
    """See :func:`mmsearch.distributed.ray_engine.index_with_ray`."""
    from .ray_engine import index_with_ray as run

    return run(*args, **kwargs)


def __getattr__(name: str) -> Any:
    """:class:`~.ray_engine.RayEngine` loads the ingest and index code (not Ray) when first used."""
    if name == "RayEngine":
        from .ray_engine import RayEngine

        return RayEngine
    raise AttributeError(f"module 'mmsearch.distributed' has no attribute {name!r}")
