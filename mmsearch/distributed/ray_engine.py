"""The Ray engine: the single-machine ingest, with read + decode + encode fanned out to a Ray actor pool.

    driver: discover + plan (skip unchanged, known-bad) -> split the files to embed into tasks
            -> [actors: read, hash, decode, transform, encode; the model loaded once per actor]
            -> results taken back *in input order* -> the same ImageIngest code buffers, dedups and
               writes exact-size shards with the same Store -> the existing index build

Only the expensive, stateless part (bytes -> embedding) runs on the cluster. Everything that decides
what a row is (ids, dedup, captions, tombstones, quarantine, the manifest) is the unchanged
single-machine code running on the driver, so a collection built here equals the one
:func:`mmsearch.index` builds from the same inputs: same ids, same uris, same embeddings (up to the
float noise of a different batch composition), same index.

``pipeline="data"`` swaps the middle step for a Ray Data job (CPU decode tasks -> an encoder actor pool);
a collection at an fsspec URL is worked on in a local mirror pushed after each commit
(:mod:`mmsearch.store.remote`); full IVF index builds add the shards in Ray tasks (:mod:`.index_build`).

Fault tolerance: actors are restartable and their calls retried (``max_retries``), so a worker
process that dies costs only its in-flight tasks, which run again on the restarted actor (decode and
encode are pure, and only the driver writes shards, so a retry cannot duplicate rows). The driver
commits every shard as the single-machine path does; a driver that dies is simply run again and skips
what the committed shards already hold.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import logging
import os
import time
import uuid
from collections import deque
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

import numpy as np

from ..api import IndexResult, build_indexes, ingest_options, model_for_collection
from ..config import default_collection_for, remember_collection
from ..errors import ConfigError, IngestError, MissingExtraError
from ..ingest import IngestReport, Progress
from ..ingest.decode import Decoded
from ..ingest.discover import ImageFile, classify
from ..ingest.images import ImageIngest
from ..ingest.job import Job
from ..ingest.pipeline import caption_manifests
from ..ingest.texts import ingest_corpus
from ..query.calibration import NULL_QUERIES
from ..query.probes import PROBE_TEXTS
from ..store import ModelInfo, Store
from ..store.lock import DEFAULT_WAIT_S
from ..store.remote import RemoteMirror, is_url
from ..store.store import DEFAULT_RETENTION_S
from .faults import ClusterEvents, loss_errors
from .index_build import build_indexes_distributed

log = logging.getLogger(__name__)

__all__ = ["index_with_ray"]


def _import_ray() -> Any:
    try:
        import ray
    except ImportError as exc:
        raise MissingExtraError("ray", "ray") from exc
    return ray


def index_with_ray(
    paths: str | Path | Sequence[str | Path], *, out: str | Path | None = None, model: str | None = None,
    address: str | None = None, workers: int = 2, num_gpus_per_worker: float = 0, num_cpus_per_worker: float = 1,
    batch_size: int = 32, shard_rows: int = 8192, task_rows: int | None = None, embedding_dtype: str = "float16",
    device: str | None = None, index_factory: str | None = None, max_index_memory_bytes: int | None = None,
    target_recall: float | None = None, progress: Progress | None = None, decode_timeout_s: float | None = 30.0,
    max_image_pixels: int | None = None, dedup: bool = True, captions: str | Path | Sequence[str | Path] = (),
    text_column: str | None = None, id_column: str | None = None, path_column: str | None = None,
    worker_setup: Callable[[], None] | None = None, max_retries: int = 3, distributed_index: bool = True,
    index_parts: int | None = None, merge_memory_bytes: int | None = None, staging: str | Path | None = None,
    pipeline: str = "actors", index_shards: int | None = None, wait_s: float | None = DEFAULT_WAIT_S,
    retention_s: float = DEFAULT_RETENTION_S, resources_per_worker: dict[str, float] | None = None,
) -> IndexResult:
    """:func:`mmsearch.index` with decoding and encoding on a Ray cluster.

    ``address``: the Ray cluster (``"auto"``, ``"ray://head:10001"``); None uses the Ray instance this
    process already joined, else ``$RAY_ADDRESS``, else starts a local one. ``workers`` actors, each
    holding the model once, with ``num_cpus_per_worker`` / ``num_gpus_per_worker`` (GPUs: the model
    runs on CUDA unless ``device`` says otherwise). ``task_rows`` images per Ray task (default
    ``4 * batch_size``): the work a dying worker loses. ``worker_setup`` is called once in every actor
    before the model loads (e.g. to register an encoder scheme). ``out`` must be a path every worker
    and the driver see the same way only for the inputs: shards are written by the driver.
    ``out`` may be an fsspec URL (``file:///...``, ``s3://bucket/x.mms``, ``gs://...``, ``memory://...``): the
    driver then works on a local copy (``staging``, default under ``$MMSEARCH_HOME/staging``) pulled from
    the URL, and pushes each committed shard, then the manifest, to it (see :mod:`mmsearch.store.remote`);
    the result's ``path`` is that local copy.

    Index: full builds of IVF indexes (``distributed_index``) train once on the driver and add the
    shards in ``index_parts`` Ray tasks (default ``workers``), merged on the driver, on disk when the
    merged index is estimated above ``merge_memory_bytes`` (see :mod:`.index_build`). ``index_shards`` > 1
    (any index kind): the index is kept as that many parts, one Ray task each, saved apart and searched
    together, not merged (default: the collection's, else 1).
    ``resources_per_worker``: Ray custom resources each actor and index task asks for (e.g. ``{"encoder": 1}``
    to keep them on the nodes that offer it). Actors and index tasks are spread over the nodes (``SPREAD``).
    Fault tolerance: a task lost with its actor, worker process or node (its result on a node that went
    away included) is submitted again up to ``max_retries`` times, to a restarted actor or as a new task;
    each loss is logged, reported to ``progress`` as ``("retry", retries so far, 0)`` and counted in the
    result's ``report.cluster`` (:class:`~mmsearch.distributed.faults.ClusterEvents`). The distributed index
    build reports ``("index", parts done, parts)``.
    ``pipeline``: ``"actors"`` (default): each actor reads, decodes and encodes a task of images in one
    process. ``"data"``: a Ray Data job: decoding runs as CPU tasks (1 CPU each, anywhere in the
    cluster) feeding an actor pool of ``workers`` encoders (``num_gpus_per_worker`` / ``num_cpus_per_worker``
    each, the model loaded once per actor), results put back in input order on the driver; one more small actor
    (no CPU reserved) embeds corpus texts. Same shards and collection either way.
    The other arguments are those of :func:`mmsearch.index`.
    """
    _import_ray()  # the missing extra is said before anything else
    started = time.perf_counter()
    path_list = [paths] if isinstance(paths, (str, Path)) else list(paths)
    if not path_list:
        raise ConfigError("nothing to index: give at least one folder, image or text corpus")
    if batch_size < 1 or shard_rows < 1 or workers < 1 or (task_rows is not None and task_rows < 1):
        raise ConfigError("batch_size, shard_rows, workers and task_rows must be at least 1")
    if pipeline not in ("actors", "data"):
        raise ConfigError(f"pipeline must be 'actors' or 'data', not {pipeline!r}")
    mirror = RemoteMirror(out, staging) if isinstance(out, str) and is_url(out) else None
    run = dict(started=started, model=model, address=address, workers=workers, num_gpus_per_worker=num_gpus_per_worker,
               num_cpus_per_worker=num_cpus_per_worker, batch_size=batch_size, shard_rows=shard_rows, task_rows=task_rows,
               embedding_dtype=embedding_dtype, device=device, index_factory=index_factory,
               max_index_memory_bytes=max_index_memory_bytes, target_recall=target_recall, progress=progress,
               decode_timeout_s=decode_timeout_s, max_image_pixels=max_image_pixels, dedup=dedup, captions=captions,
               text_column=text_column, id_column=id_column, path_column=path_column, worker_setup=worker_setup,
               max_retries=max_retries, distributed_index=distributed_index, index_parts=index_parts,
               merge_memory_bytes=merge_memory_bytes, pipeline=pipeline, index_shards=index_shards, wait_s=wait_s,
               retention_s=retention_s, resources_per_worker=resources_per_worker)
    if mirror is None:
        return _index(path_list, Path(out).expanduser() if out else default_collection_for(path_list[0]), None, **run)
    # the URL's writer lease first (a second writer is refused), then its newest version
    mirror.acquire(wait_s=wait_s, command=f"mmsearch index --engine ray {' '.join(map(str, path_list))}"[:200])
    try:
        return _index(path_list, mirror.pull(), mirror, **run)
    finally:
        mirror.release()


def _index(path_list: list[str | Path], root: Path, mirror: RemoteMirror | None, *, started: float, model: str | None,
           address: str | None, workers: int, num_gpus_per_worker: float, num_cpus_per_worker: float, batch_size: int,
           shard_rows: int, task_rows: int | None, embedding_dtype: str, device: str | None, index_factory: str | None,
           max_index_memory_bytes: int | None, target_recall: float | None, progress: Progress | None,
           decode_timeout_s: float | None, max_image_pixels: int | None, dedup: bool, captions: Any,
           text_column: str | None, id_column: str | None, path_column: str | None,
           worker_setup: Callable[[], None] | None, max_retries: int, distributed_index: bool, index_parts: int | None,
           merge_memory_bytes: int | None, pipeline: str, index_shards: int | None, wait_s: float | None,
           retention_s: float, resources_per_worker: dict[str, float] | None) -> IndexResult:
    ray = _import_ray()
    spec = model_for_collection(root, model)
    options = ingest_options(
        batch_size=batch_size, workers=0, shard_rows=shard_rows, decode_timeout_s=decode_timeout_s,
        max_image_pixels=max_image_pixels, dedup=dedup, captions=captions, text_column=text_column,
        id_column=id_column, path_column=path_column,
    )
    we_started = not ray.is_initialized()
    if we_started:
        ray.init(address=address, include_dashboard=False, log_to_driver=False)
    data = pipeline == "data"
    events = ClusterEvents(progress=progress)
    events.start(ray)
    pool = _ActorPool(ray, spec, workers=1 if data else workers, num_cpus=0 if data else num_cpus_per_worker,
                      num_gpus=0 if data else num_gpus_per_worker, device="cpu" if data else device,
                      batch_size=batch_size, max_retries=max_retries, setup=worker_setup,
                      resources=resources_per_worker, events=events)
    encode_stage = dict(spec=spec, workers=workers, num_cpus=num_cpus_per_worker, num_gpus=num_gpus_per_worker,
                        device=device, batch_size=batch_size, setup=worker_setup, max_retries=max_retries)
    store = None
    try:
        model_spec, preprocess_id, dim = pool.run("model_info")
        pool.locate()
        info = ModelInfo(spec=model_spec, preprocess_id=preprocess_id, dim=dim)
        store = _MirroredStore.open_or_create(root, info, embedding_dtype=embedding_dtype, wait_s=wait_s)
        if mirror is not None:
            store.mirror = mirror
            mirror.push()  # the URL holds a (possibly empty) collection from now on
        with store.transaction("index"):  # one version at the end; shard commits are resumable checkpoints
            encoder = _RemoteEncoder(model_spec, dim, preprocess_id, pool)
            job = Job(store, encoder, options, RayIngestReport(cluster=events), progress, _RemoteBatcher(pool, dim),  # type: ignore[arg-type]
                      captions=caption_manifests(options))
            for raw in path_list:
                path = Path(os.path.normpath(Path(raw).expanduser().absolute()))
                if classify(path) == "images":
                    kind = _DataImageIngest if data else _RayImageIngest
                    kind(job, path, pool, task_rows or 4 * batch_size, max_image_pixels=options.max_image_pixels,
                         timeout_s=decode_timeout_s, encode_stage=encode_stage).run()
                else:
                    ingest_corpus(job, path)  # texts are encoded by the actors through the batcher
            job.report.seconds = time.perf_counter() - job.started
            if distributed_index:
                # the index tasks need the CPUs the actors hold: embed the generic tuning probes, then let the actors go
                encoder = _FixedTextEncoder(encoder, (*PROBE_TEXTS, *NULL_QUERIES))  # type: ignore[assignment]
                pool.close()
                remote_shards = mirror is not None and "memory" not in _protocols(mirror.fs)
                if mirror is not None and merge_memory_bytes:
                    log.warning("on-disk inverted lists are not carried to %s: merging the index in memory", mirror.url)
                    merge_memory_bytes = None
                built = build_indexes_distributed(
                    store, job.report, encoder, ray=ray, parts=index_parts or workers,  # type: ignore[arg-type]
                    index_factory=index_factory, max_index_memory_bytes=max_index_memory_bytes,
                    target_recall=target_recall, merge_memory_bytes=merge_memory_bytes,
                    shard_root=mirror.url if remote_shards else None, num_cpus_per_task=num_cpus_per_worker,
                    index_shards=index_shards, resources=resources_per_worker, events=events, max_retries=max_retries)
            else:
                built = build_indexes(store, job.report, encoder, index_factory=index_factory,  # type: ignore[arg-type]
                                      max_index_memory_bytes=max_index_memory_bytes, target_recall=target_recall,
                                      index_shards=index_shards)
        events.finish(ray)
        if events.tasks_lost or events.nodes_lost:
            log.warning("cluster: %s; the collection is complete", events.summary())
        store.vacuum(retention_s)
    finally:
        pool.close()
        if store is not None:
            store.close()
        if we_started:
            ray.shutdown()
    if mirror is None:
        remember_collection(root)
    return IndexResult(root, model_spec, job.report, built, time.perf_counter() - started)


@dataclasses.dataclass
class RayIngestReport(IngestReport):
    """The ingest report, plus what the cluster lost and retried (ingest and index build)."""

    cluster: ClusterEvents = dataclasses.field(default_factory=ClusterEvents)

    def to_dict(self) -> dict[str, object]:
        return {**super().to_dict(), "cluster": self.cluster.to_dict()}


class _MirroredStore(Store):
    """A Store whose every commit (a checkpoint inside the run's transaction, or the version it publishes) is
    also pushed to its remote mirror (when it has one): a restarted driver resumes from the staging copy."""

    mirror: RemoteMirror | None = None

    def commit(self) -> None:
        super().commit()
        if self.mirror is not None and self.in_transaction:  # a checkpoint: its files go up (the index tasks read
            listing = json.loads(self.manifest.to_json())  # them there), not the manifest
            listing["base_version"] = self.version  # the remote must still be at it: else a second writer published
            self.mirror.push(listing=listing, publish=False)

    def publish(self, operation: str = "") -> int:
        number = super().publish(operation)
        if self.mirror is not None:
            self.mirror.push()
        return number


def _protocols(fs: Any) -> tuple[str, ...]:
    protocol = fs.protocol
    return (protocol,) if isinstance(protocol, str) else tuple(protocol)


# -- the actors -------------------------------------------------------------------------------------


class EmbedWorker:
    """One Ray actor: the model loaded once; turns lists of image paths into embeddings."""

    def __init__(self, spec: str, device: str | None, batch_size: int, setup: Callable[[], None] | None) -> None:
        from ..encoders.registry import load_encoder
        from ..ingest.encode import BatchEncoder
        from ..ingest.images import model_input_px

        if setup is not None:
            setup()
        self.encoder = load_encoder(spec, device=device)
        self.batcher = BatchEncoder(self.encoder, batch_size)
        self.draft_px = model_input_px(self.encoder.image_transform)

    def pid(self) -> int:
        return os.getpid()

    def node_id(self) -> str:
        import ray

        return ray.get_runtime_context().get_node_id()

    def model_info(self) -> tuple[str, str, int]:
        return self.encoder.spec, self.encoder.preprocess_id, int(self.encoder.dim)

    def encode_texts(self, texts: list[str]) -> np.ndarray:
        return self.batcher.texts(texts)

    def decode_settings(self, max_image_pixels: int, timeout_s: float | None) -> Any:
        """What a decode task needs (the pixels the batcher takes: uint8 when its transform splits)."""
        from ..ingest.decode import DecodeSettings

        transform = getattr(self.batcher, "worker_transform", self.encoder.image_transform)
        return DecodeSettings(transform=transform, draft_px=self.draft_px, max_image_pixels=max_image_pixels,
                              timeout_s=timeout_s)

    def embed_images(self, paths: list[str], first_seq: int, captions: list[str], max_image_pixels: int,
                     timeout_s: float | None, skip_hashes: frozenset[str]) -> tuple[list[Any], dict[str, np.ndarray]]:
        """Decode + encode ``paths``; each result is a ``Decoded`` whose ``pixels`` hold the embedding.

        Also embeds the task's captions (text -> vector), so the driver does not run the model at all.
        """
        from ..ingest.decode import DecodeSettings, decode_image

        settings = DecodeSettings(transform=self.encoder.image_transform, draft_px=self.draft_px,
                                  max_image_pixels=max_image_pixels, timeout_s=timeout_s, skip_hashes=skip_hashes)
        decoded = [decode_image(p, settings, first_seq + i) for i, p in enumerate(paths)]
        todo = [d for d in decoded if d.pixels is not None]
        vectors = self.batcher.images([d.pixels for d in todo])
        for d, v in zip(todo, vectors):
            d.pixels = v
        texts = sorted(set(captions))
        caption_vectors = dict(zip(texts, self.batcher.texts(texts))) if texts else {}
        return decoded, caption_vectors


class _ActorPool:
    """``workers`` restartable actors, called round-robin; results read back in submission order.

    Lost calls (the actor's process or node went away) are retried here, not by Ray, so that each is logged
    and counted in ``events``: a call is submitted again to the next actor (a restarted one included: Ray
    restarts an actor on another node when its node dies) up to ``max_retries`` times."""

    def __init__(self, ray: Any, spec: str, *, workers: int, num_cpus: float, num_gpus: float, device: str | None,
                 batch_size: int, max_retries: int, setup: Callable[[], None] | None,
                 resources: dict[str, float] | None = None, events: ClusterEvents | None = None) -> None:
        self.ray = ray
        if device is None and num_gpus > 0:
            device = "cuda"
        self.max_retries = max_retries
        self.events = events if events is not None else ClusterEvents()
        self.lost_errors = loss_errors(ray)
        cls = ray.remote(num_cpus=num_cpus, num_gpus=num_gpus, resources=resources or None, max_restarts=max_retries,
                         max_task_retries=0, scheduling_strategy="SPREAD")(EmbedWorker)
        self.run_id = uuid.uuid4().hex[:8]
        self.actors = [cls.options(name=f"mmsearch-embed-{self.run_id}-{i}").remote(spec, device, batch_size, setup)
                       for i in range(workers)]
        self.nodes: list[str | None] = [None] * workers  # the node each actor was last seen on
        self._next = itertools.cycle(range(workers))
        self._submitted = 0

    def _submit(self, method: str, args: tuple[Any, ...], attempt: int = 0, what: str | None = None) -> _Call:
        actor = next(self._next)
        self._submitted += 1
        return _Call(method, args, actor, getattr(self.actors[actor], method).remote(*args), attempt,
                     what or f"{method} call {self._submitted}")

    def call(self, method: str, *args: Any) -> _Call:
        return self._submit(method, args)

    def get(self, call: _Call) -> Any:
        """The result of ``call``, submitting it again (to the next actor) each time it is lost."""
        while True:
            try:
                return self.ray.get(call.ref)
            except self.lost_errors as exc:
                node = self.nodes[call.actor]
                self.events.lost(self.ray, f"{call.what} on actor {call.actor}", exc, node=node, attempt=call.attempt,
                                 retries=self.max_retries)
                if call.attempt >= self.max_retries:
                    raise IngestError(f"{call.what} was lost {call.attempt + 1} times (its actor, worker process or "
                                      f"node went away each time): {exc}") from exc
                self.nodes[call.actor] = None
                call = self._submit(call.method, call.args, call.attempt + 1, call.what)

    def run(self, method: str, *args: Any) -> Any:
        return self.get(self.call(method, *args))

    def locate(self) -> None:
        """Learn the node of every actor (for the log of what a lost node held)."""
        for i, actor in enumerate(self.actors):
            try:
                self.nodes[i] = self.ray.get(actor.node_id.remote(), timeout=60)
            except Exception:  # noqa: BLE001 - only for the log
                self.nodes[i] = None

    def ordered(self, method: str, calls: Iterable[tuple[Any, ...]], window: int,
                describe: Callable[[int, tuple[Any, ...]], str] | None = None) -> Iterator[Any]:
        """Results of ``method(*args)`` for each args, in order; at most ``window`` calls in flight.
        ``describe(n, args)`` names the n-th call in the log of losses."""
        pending: deque[_Call] = deque()
        for n, args in enumerate(calls):
            pending.append(self._submit(method, args, what=describe(n, args) if describe else f"{method} task {n}"))
            if len(pending) >= window:
                yield self.get(pending.popleft())
        while pending:
            yield self.get(pending.popleft())

    def close(self) -> None:
        for actor in self.actors:
            self.ray.kill(actor, no_restart=True)
        self.actors = []


@dataclasses.dataclass
class _Call:
    method: str
    args: tuple[Any, ...]
    actor: int
    ref: Any
    attempt: int
    what: str


class _RemoteEncoder:
    """What the driver's Job knows of the model: its contract, no weights."""

    def __init__(self, spec: str, dim: int, preprocess_id: str, pool: _ActorPool) -> None:
        self.spec, self.dim, self.preprocess_id, self.pool = spec, dim, preprocess_id, pool
        self.device = "remote"

    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        return np.asarray(self.pool.run("encode_texts", list(texts)), dtype=np.float32)


class _FixedTextEncoder:
    """An encoder that knows only a fixed set of texts, embedded once (by the actors, before they go)."""

    def __init__(self, encoder: _RemoteEncoder, texts: Sequence[str]) -> None:
        self.spec, self.dim, self.preprocess_id, self.device = encoder.spec, encoder.dim, encoder.preprocess_id, "remote"
        self.known = dict(zip(texts, encoder.encode_texts(list(texts))))

    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        return np.stack([self.known[t] for t in texts]).astype(np.float32)


class _RemoteBatcher:
    """The driver-side stand-in for BatchEncoder: image rows arrive already embedded (``pixels`` holds
    the vector); texts come from the captions the actors embedded, else from an actor call."""

    def __init__(self, pool: _ActorPool, dim: int) -> None:
        self.pool, self.dim = pool, dim
        self.known: dict[str, np.ndarray] = {}

    def images(self, vectors: Sequence[np.ndarray]) -> np.ndarray:
        return np.stack(vectors).astype(np.float32) if len(vectors) else np.zeros((0, self.dim), np.float32)

    def texts(self, texts: Sequence[str]) -> np.ndarray:
        texts = list(texts)
        missing = sorted({t for t in texts if t not in self.known})
        if missing:
            self.known.update(zip(missing, self.pool.run("encode_texts", missing)))
        out = np.stack([self.known[t] for t in texts]).astype(np.float32) if texts else np.zeros((0, self.dim), np.float32)
        for t in texts:
            self.known.pop(t, None)
        return out


class _RayImageIngest(ImageIngest):
    """ImageIngest with its decode + encode stage on the actor pool; planning and committing unchanged."""

    def __init__(self, job: Job, root: Path, pool: _ActorPool, task_rows: int, *, max_image_pixels: int,
                 timeout_s: float | None, encode_stage: dict[str, Any] | None = None) -> None:
        super().__init__(job, root)
        self.pool, self.task_rows, self.encode_stage = pool, task_rows, encode_stage or {}
        self.max_image_pixels, self.timeout_s = max_image_pixels, timeout_s

    def _embed(self, todo: list[ImageFile]) -> None:
        batcher: _RemoteBatcher = self.job.batcher  # type: ignore[assignment]
        skip = self.pool.ray.put(frozenset(self.by_hash))  # shipped once, shared by every task
        calls = ((
            [f.os_path for f in todo[s:s + self.task_rows]], s,
            [f.caption for f in todo[s:s + self.task_rows] if f.caption], self.max_image_pixels, self.timeout_s, skip,
        ) for s in range(0, len(todo), self.task_rows))
        window = 2 * len(self.pool.actors)

        def decoded() -> Iterator[Decoded]:
            def describe(n: int, args: tuple[Any, ...]) -> str:
                return f"image task {n} (images {args[1] + 1}-{args[1] + len(args[0])} of {len(todo)})"

            for task_decoded, caption_vectors in self.pool.ordered("embed_images", calls, window, describe):
                batcher.known.update(caption_vectors)  # before any row of this task is taken
                yield from task_decoded

        self._consume(todo, decoded())


# -- the Ray Data pipeline: CPU decode tasks -> encoder actor pool ----------------------------------------


def decode_batch(batch: dict[str, np.ndarray], settings: Any) -> dict[str, np.ndarray]:
    """Ray Data CPU stage: decode each path (``Decoded`` objects, in order; failures carry their reason)."""
    from ..ingest.decode import decode_image

    decoded = np.empty(len(batch["seq"]), dtype=object)
    decoded[:] = [decode_image(str(p), settings, int(s)) for s, p in zip(batch["seq"], batch["path"])]
    return {"seq": batch["seq"], "caption": batch["caption"], "decoded": decoded}


class EncodeBatch:
    """Ray Data actor stage: the model loaded once; embeds the decoded pixels and the captions of a batch."""

    def __init__(self, spec: str, device: str | None, batch_size: int, setup: Callable[[], None] | None) -> None:
        self.worker = EmbedWorker(spec, device, batch_size, setup)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        decoded = list(batch["decoded"])
        todo = [d for d in decoded if d.pixels is not None]
        for d, v in zip(todo, self.worker.batcher.images([d.pixels for d in todo])):
            d.pixels = v
        captions = [str(c) for c in batch["caption"]]
        texts = sorted({c for c in captions if c})
        known = dict(zip(texts, self.worker.batcher.texts(texts))) if texts else {}
        out_decoded = np.empty(len(decoded), dtype=object)
        out_decoded[:] = decoded
        vectors = np.empty(len(decoded), dtype=object)
        vectors[:] = [known.get(c) for c in captions]
        return {"seq": batch["seq"], "caption": batch["caption"], "decoded": out_decoded, "caption_vector": vectors}


class _DataImageIngest(_RayImageIngest):
    """ImageIngest whose decode + encode stage is a Ray Data job; planning and committing unchanged."""

    def _embed(self, todo: list[ImageFile]) -> None:
        ray, stage = self.pool.ray, self.encode_stage
        if not todo:
            return self._consume(todo, iter(()))
        batcher: _RemoteBatcher = self.job.batcher  # type: ignore[assignment]
        settings = self.pool.run("decode_settings", self.max_image_pixels, self.timeout_s)
        settings = dataclasses.replace(settings, skip_hashes=frozenset(self.by_hash))
        items = [{"seq": i, "path": f.os_path, "caption": f.caption or ""} for i, f in enumerate(todo)]
        blocks = max(1, -(-len(items) // self.task_rows))
        device = stage["device"] or ("cuda" if stage["num_gpus"] > 0 else None)
        ds = ray.data.from_items(items, override_num_blocks=blocks)
        # Ray Data's defaults do the fault tolerance: decode tasks are retried (Ray's task retries) and
        # pool actors are restarted with their in-flight batches retried (max_restarts = max_task_retries = -1)
        ds = ds.map_batches(decode_batch, fn_kwargs={"settings": settings}, batch_size=self.task_rows, num_cpus=1,
                            batch_format="numpy")
        ds = ds.map_batches(EncodeBatch, fn_constructor_args=(stage["spec"], device, stage["batch_size"], stage["setup"]),
                            compute=ray.data.ActorPoolStrategy(size=stage["workers"]), batch_size=self.task_rows,
                            num_cpus=stage["num_cpus"], num_gpus=stage["num_gpus"], batch_format="numpy")

        def decoded() -> Iterator[Decoded]:
            """Rows in input order, whatever order the batches arrive in (a retried batch comes back late)."""
            waiting: dict[int, Decoded] = {}
            next_seq = 0
            for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
                for caption, vector in zip(batch["caption"], batch["caption_vector"]):
                    if caption and vector is not None:
                        batcher.known[str(caption)] = np.asarray(vector, dtype=np.float32)
                waiting.update((int(d.seq), d) for d in batch["decoded"])
                while next_seq in waiting:
                    yield waiting.pop(next_seq)
                    next_seq += 1
            if waiting or next_seq != len(todo):
                raise IngestError(f"the Ray Data job returned {next_seq} of {len(todo)} images in order")

        self._consume(todo, decoded())
