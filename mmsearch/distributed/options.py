"""The options of the Ray engine (one frozen dataclass, validated once; imports nothing heavy)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from ..errors import ConfigError

#: the keywords :func:`mmsearch.distributed.index_with_ray` kept from before :class:`RayOptions`, by field name
LEGACY_KEYWORDS = {
    "workers": "actors", "num_cpus_per_worker": "num_cpus_per_actor", "num_gpus_per_worker": "num_gpus_per_actor",
    "resources_per_worker": "resources_per_actor", "worker_setup": "actor_setup", "index_parts": "index_tasks",
}


@dataclass(frozen=True)
class RayOptions:
    """How a build runs on Ray (``mmsearch.index(..., engine=RayEngine(RayOptions(...)))``); a new knob is one
    field here (plus its CLI flag).

    ``address``: the cluster (``"auto"``, ``"ray://head:10001"``); None: the Ray instance this process joined, else
    ``$RAY_ADDRESS``, else a local one. ``actors`` encoder actors, each holding the model once, with
    ``num_cpus_per_actor`` / ``num_gpus_per_actor`` (GPUs: the model runs on CUDA unless ``device`` says otherwise)
    and the custom ``resources_per_actor``; ``actor_setup`` runs once in every actor before the model loads (e.g.
    to register an encoder scheme). ``task_rows``: images per Ray task (default ``4 * batch_size``), the work a
    dying actor loses; a lost task is submitted again up to ``max_retries`` times. ``pipeline``: ``"actors"``
    (each actor reads, decodes and encodes its tasks) or ``"data"`` (a Ray Data job: CPU decode tasks feeding the
    encoder actors). ``distributed_index``: full IVF builds add the shards in ``index_tasks`` Ray tasks (default
    ``actors``), merged on the driver, on disk above ``merge_memory_bytes``. ``staging``: the local working copy
    of a URL collection (default under ``$MMSEARCH_HOME/staging``).
    """

    address: str | None = None
    actors: int = 2
    num_cpus_per_actor: float = 1
    num_gpus_per_actor: float = 0
    resources_per_actor: dict[str, float] | None = None
    actor_setup: Callable[[], None] | None = None
    task_rows: int | None = None
    max_retries: int = 3
    pipeline: str = "actors"
    distributed_index: bool = True
    index_tasks: int | None = None
    merge_memory_bytes: int | None = None
    staging: str | Path | None = None

    def __post_init__(self) -> None:
        if self.actors < 1 or (self.task_rows is not None and self.task_rows < 1):
            raise ConfigError("actors (--actors; the older keyword: workers) and task_rows must be at least 1")
        if self.index_tasks is not None and self.index_tasks < 1:
            raise ConfigError("index_parts (index tasks) must be at least 1")
        if self.max_retries < 0:
            raise ConfigError("max_retries must be >= 0")
        if self.pipeline not in ("actors", "data"):
            raise ConfigError(f"pipeline must be 'actors' or 'data', not {self.pipeline!r}")
