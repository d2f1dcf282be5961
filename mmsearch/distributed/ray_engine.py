"""The Ray engine: :func:`mmsearch.index` with read + decode + encode fanned out to Ray, through the embed-stage
seam (:mod:`mmsearch.ingest.stage`): ``mmsearch.index(paths, engine=RayEngine(RayOptions(...)))``.

    driver: discover + plan (skip unchanged, known-bad) -> the stage splits the files to embed into tasks
            -> [actors: read, hash, decode, transform, encode (captions too); the model loaded once per actor]
            -> results taken back *in input order* -> the same ImageIngest code buffers, dedups and
               writes exact-size shards with the same Store -> the index build (Ray tasks for full IVF builds)

Only the expensive, stateless part (bytes -> embedding) runs on the cluster. Everything that decides
what a row is (ids, dedup, captions, tombstones, quarantine, the manifest) is the unchanged
single-machine code running on the driver, so a collection built here equals the one
:func:`mmsearch.index` builds from the same inputs: same ids, same uris, same embeddings (up to the
float noise of a different batch composition), same index.

``RayOptions(pipeline="data")`` swaps the middle step for a Ray Data job (CPU decode tasks -> an encoder actor pool);
a collection at an fsspec URL is worked on in a local mirror pushed after each commit
(:mod:`mmsearch.store.remote`); full IVF index builds add the shards in Ray tasks (:mod:`.index_build`).

Fault tolerance: actors are restartable and their calls retried (``max_retries``), so a worker
process that dies costs only its in-flight tasks, which run again on the restarted actor (decode and
encode are pure, and only the driver writes shards, so a retry cannot duplicate rows). The driver
commits every shard as the single-machine path does; a driver that dies is simply run again and skips
what the committed shards already hold.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import json
import logging
import os
import uuid
from collections import deque
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

import numpy as np

from ..api import Build, IndexResult, build_indexes, index, model_for_collection
from ..encoders.text_cache import FINGERPRINT_TEXT
from ..errors import IngestError, MissingExtraError
from ..indexes import IndexInfo, IndexRequest
from ..ingest import EmbeddedImage, ImageWork, IngestOptions, IngestReport, Progress
from ..ingest.decode import DecodeSettings, decode_image
from ..query.calibration import NULL_QUERIES
from ..query.probes import PROBE_TEXTS
from ..store import ModelInfo, Store
from ..store.remote import RemoteMirror, is_url
from .faults import ClusterEvents, loss_errors
from .index_build import build_indexes_distributed
from .options import LEGACY_KEYWORDS, RayOptions

log = logging.getLogger(__name__)

__all__ = ["ActorStage", "DataStage", "RayEngine", "RayIngestReport", "RayOptions", "index_with_ray"]


def import_ray() -> Any:
    """The ``ray`` module, or :class:`MissingExtraError` naming the extra to install."""
    try:
        import ray
    except ImportError as exc:
        raise MissingExtraError("ray", "ray") from exc
    return ray


def index_with_ray(paths: str | Path | Sequence[str | Path], *, out: str | Path | None = None,
                   model: str | None = None, **options: Any) -> IndexResult:
    """:func:`mmsearch.index` with ``engine=RayEngine(RayOptions(...))``: the :class:`RayOptions` fields are given
    as keywords here, under their field names or the older ones (``workers`` = ``actors``,
    ``num_cpus_per_worker``, ``num_gpus_per_worker``, ``resources_per_worker``, ``worker_setup``,
    ``index_parts`` = ``index_tasks``); every other keyword is :func:`mmsearch.index`'s (``batch_size``,
    ``shard_rows``, ``index_factory``, ``index_shards``, ``ingest=``, ``index=``, ``progress``...). ``out`` may be
    an fsspec URL (``file:///...``, ``s3://bucket/x.mms``, ``gs://...``, ``memory://...``): the driver then works
    on a local copy (``staging``) pulled from the URL and pushes each committed shard, then the manifest, to it
    (see :mod:`mmsearch.store.remote`); the result's ``path`` is that local copy. See docs/ray.md.
    """
    import_ray()  # the missing extra is said before anything else
    fields = {f.name for f in dataclasses.fields(RayOptions)}
    ray_options = {LEGACY_KEYWORDS.get(k, k): options.pop(k) for k in list(options) if LEGACY_KEYWORDS.get(k, k) in fields}
    return index(paths, out=out, model=model, engine=RayEngine(RayOptions(**ray_options)), **options)


class RayEngine:
    """The Ray engine of :func:`mmsearch.index` (``engine=RayEngine(RayOptions(...))``): the driver plans and
    commits as on one machine; the embed stage is Ray actors (:class:`ActorStage`) or a Ray Data job
    (:class:`DataStage`); full IVF index builds add the shards in Ray tasks. The driver never loads the model.
    ``out`` may be an fsspec URL: the build runs on a local copy holding the URL's writer lease."""

    def __init__(self, options: RayOptions | None = None) -> None:
        self.options = options or RayOptions()

    @contextlib.contextmanager
    def open(self, out: str | Path, paths: Sequence[str | Path], *, model: str | None, device: str | None,
             ingest: IngestOptions, embedding_dtype: str, wait_s: float | None,
             progress: Progress | None) -> Iterator[Build]:
        """Join (or start) Ray, start the actors, open the collection (a URL's: its lease first, then its newest
        version, pulled)."""
        ray = import_ray()
        mirror = RemoteMirror(str(out), self.options.staging) if is_url(out) else None
        if mirror is None:
            with self._session(ray, Path(out).expanduser(), None, model=model, device=device, ingest=ingest,
                               embedding_dtype=embedding_dtype, wait_s=wait_s, progress=progress) as build:
                yield build
            return
        # the URL's writer lease first (a second writer is refused), then its newest version
        mirror.acquire(wait_s=wait_s, command=f"mmsearch index --engine ray {' '.join(map(str, paths))}"[:200])
        try:
            with self._session(ray, mirror.pull(), mirror, model=model, device=device, ingest=ingest,
                               embedding_dtype=embedding_dtype, wait_s=wait_s, progress=progress) as build:
                yield build
        finally:
            mirror.release()

    @contextlib.contextmanager
    def _session(self, ray: Any, root: Path, mirror: RemoteMirror | None, *, model: str | None, device: str | None,
                 ingest: IngestOptions, embedding_dtype: str, wait_s: float | None,
                 progress: Progress | None) -> Iterator[Build]:
        opts = self.options
        spec = model_for_collection(root, model)
        we_started = not ray.is_initialized()
        if we_started:
            ray.init(address=opts.address, include_dashboard=False, log_to_driver=False)
        data = opts.pipeline == "data"
        events = ClusterEvents(progress=progress)
        pool: ActorPool | None = None
        store: MirroredStore | None = None
        try:
            events.start(ray)
            # Ray Data runs its own encoder actors; one small actor (no CPU reserved) then embeds texts
            pool = ActorPool(ray, spec, actors=1 if data else opts.actors, num_cpus=0 if data else opts.num_cpus_per_actor,
                             num_gpus=0 if data else opts.num_gpus_per_actor, device="cpu" if data else device,
                             batch_size=ingest.batch_size, max_retries=opts.max_retries, setup=opts.actor_setup,
                             resources=opts.resources_per_actor, events=events)
            model_spec, preprocess_id, dim = pool.run("model_info")
            pool.locate()
            info = ModelInfo(spec=model_spec, preprocess_id=preprocess_id, dim=dim)
            store = MirroredStore.open_or_create(root, info, embedding_dtype=embedding_dtype, wait_s=wait_s)
            if mirror is not None:
                store.mirror = mirror
                mirror.push()  # the URL holds a (possibly empty) collection from now on
            encoder = RemoteTextEncoder(model_spec, dim, preprocess_id, pool)
            task_rows = opts.task_rows or 4 * ingest.batch_size
            stage = (DataStage(pool, ingest, opts, spec=spec, device=device, texts=encoder, task_rows=task_rows) if data
                     else ActorStage(pool, ingest, texts=encoder, task_rows=task_rows))
            yield Build(root, store, stage, RayIngestReport(cluster=events),
                        self._index_step(ray, store, encoder, pool, mirror, events), remember=mirror is None)
            events.finish(ray)
            if events.tasks_lost or events.nodes_lost:
                log.warning("cluster: %s; the collection is complete", events.summary())
        finally:
            if pool is not None:
                pool.close()
            if store is not None:
                store.close()
            if we_started:
                ray.shutdown()

    def _index_step(self, ray: Any, store: Store, encoder: RemoteTextEncoder, pool: ActorPool,
                    mirror: RemoteMirror | None, events: ClusterEvents
                    ) -> Callable[[IngestReport, IndexRequest], dict[str, IndexInfo]]:
        opts = self.options

        def run(report: IngestReport, request: IndexRequest) -> dict[str, IndexInfo]:
            if not opts.distributed_index:
                return build_indexes(store, report, encoder, request)  # type: ignore[arg-type]
            # the index tasks need the CPUs the actors hold: embed the generic tuning probes, then let the actors go
            fixed = FixedTextEncoder(encoder, (*PROBE_TEXTS, *NULL_QUERIES, FINGERPRINT_TEXT))  # (text_cache's key)
            pool.close()
            remote_shards = mirror is not None and "memory" not in _protocols(mirror.fs)
            merge_memory_bytes = opts.merge_memory_bytes
            if mirror is not None and merge_memory_bytes:
                log.warning("on-disk inverted lists are not carried to %s: merging the index in memory", mirror.url)
                merge_memory_bytes = None
            return build_indexes_distributed(
                store, report, fixed, request, ray=ray, parts=opts.index_tasks or opts.actors,  # type: ignore[arg-type]
                merge_memory_bytes=merge_memory_bytes, shard_root=mirror.url if remote_shards else None,
                num_cpus_per_task=opts.num_cpus_per_actor, resources=opts.resources_per_actor, events=events,
                max_retries=opts.max_retries)

        return run


@dataclasses.dataclass
class RayIngestReport(IngestReport):
    """The ingest report, plus what the cluster lost and retried (ingest and index build)."""

    cluster: ClusterEvents = dataclasses.field(default_factory=ClusterEvents)

    def to_dict(self) -> dict[str, object]:
        return {**super().to_dict(), "cluster": self.cluster.to_dict()}


class MirroredStore(Store):
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
    """One Ray actor: the model loaded once; turns tasks of image paths (and their captions) into embeddings."""

    def __init__(self, spec: str, device: str | None, batch_size: int, setup: Callable[[], None] | None) -> None:
        from ..encoders.registry import load_encoder
        from ..ingest.encode import BatchEncoder
        from ..ingest.stage import model_input_px

        if setup is not None:
            setup()
        self.encoder = load_encoder(spec, device=device)
        self.batcher = BatchEncoder(self.encoder, batch_size)
        self.draft_px = model_input_px(self.batcher.worker_transform)

    def pid(self) -> int:
        return os.getpid()

    def node_id(self) -> str:
        import ray

        return ray.get_runtime_context().get_node_id()

    def model_info(self) -> tuple[str, str, int]:
        return self.encoder.spec, self.encoder.preprocess_id, int(self.encoder.dim)

    def encode_texts(self, texts: list[str]) -> np.ndarray:
        return self.batcher.texts(texts)

    def decode_settings(self, max_image_pixels: int, timeout_s: float | None) -> DecodeSettings:
        """What a decode task needs (the pixels the batcher takes: uint8 when its transform splits)."""
        return DecodeSettings(transform=self.batcher.worker_transform, draft_px=self.draft_px,
                              max_image_pixels=max_image_pixels, timeout_s=timeout_s)

    def embed(self, decoded: list[Any], captions: Sequence[str | None]) -> list[tuple[Any, Any, Any]]:
        """(the decode result without its pixels, image vector or None, caption vector or None) per input."""
        todo = [d for d in decoded if d.pixels is not None]
        vectors = dict(zip((d.seq for d in todo), self.batcher.images([d.pixels for d in todo])))
        texts = sorted({c for c in captions if c})
        known = dict(zip(texts, self.batcher.texts(texts))) if texts else {}
        return [(dataclasses.replace(d, pixels=None), vectors.get(d.seq), known.get(c) if c else None)
                for d, c in zip(decoded, captions)]

    def embed_images(self, paths: list[str], first_seq: int, captions: list[str | None], max_image_pixels: int,
                     timeout_s: float | None, skip_hashes: frozenset[str]) -> list[tuple[Any, Any, Any]]:
        """Read, decode and encode one task of images (and their captions): see :meth:`embed`."""
        settings = dataclasses.replace(self.decode_settings(max_image_pixels, timeout_s), skip_hashes=skip_hashes)
        return self.embed([decode_image(p, settings, first_seq + i) for i, p in enumerate(paths)], captions)


class ActorPool:
    """``actors`` restartable actors, called round-robin; results read back in submission order.

    Lost calls (the actor's process or node went away) are retried here, not by Ray, so that each is logged
    and counted in ``events``: a call is submitted again to the next actor (a restarted one included: Ray
    restarts an actor on another node when its node dies) up to ``max_retries`` times."""

    def __init__(self, ray: Any, spec: str, *, actors: int, num_cpus: float, num_gpus: float, device: str | None,
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
                       for i in range(actors)]
        self.nodes: list[str | None] = [None] * actors  # the node each actor was last seen on
        self._next = itertools.cycle(range(actors))
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


class RemoteTextEncoder:
    """What the driver knows of the model: its contract, no weights; texts are embedded by an actor."""

    def __init__(self, spec: str, dim: int, preprocess_id: str, pool: ActorPool) -> None:
        self.spec, self.dim, self.preprocess_id, self.pool = spec, dim, preprocess_id, pool
        self.device = "remote"

    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dim), np.float32)
        return np.asarray(self.pool.run("encode_texts", list(texts)), dtype=np.float32)


class FixedTextEncoder:
    """An encoder that knows only a fixed set of texts, embedded once (by the actors, before they go)."""

    def __init__(self, encoder: RemoteTextEncoder, texts: Sequence[str]) -> None:
        self.spec, self.dim, self.preprocess_id, self.device = encoder.spec, encoder.dim, encoder.preprocess_id, "remote"
        self.known = dict(zip(texts, encoder.encode_texts(list(texts))))

    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        return np.stack([self.known[t] for t in texts]).astype(np.float32)


class ActorStage:
    """The embed stage on Ray actors: the planned files in tasks of ``task_rows``, each read, decoded and encoded
    (captions too) by one actor call; results taken back in input order, at most two tasks per actor in flight."""

    def __init__(self, pool: ActorPool, options: IngestOptions, *, texts: RemoteTextEncoder, task_rows: int) -> None:
        self.pool, self.options, self.texts, self.task_rows = pool, options, texts, task_rows

    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        """Texts embedded by an actor (corpora, and captions a stage left to ingest)."""
        return self.texts.encode_texts(texts)

    def embed_images(self, work: ImageWork) -> Iterator[list[EmbeddedImage]]:
        """One batch per task, in input order."""
        files, n = work.files, self.task_rows
        if not files:
            return
        skip = self.pool.ray.put(work.known_hashes)  # shipped once, shared by every task
        calls = (([f.os_path for f in files[s:s + n]], s, [f.caption for f in files[s:s + n]],
                  self.options.max_image_pixels, self.options.decode_timeout_s, skip) for s in range(0, len(files), n))

        def describe(i: int, args: tuple[Any, ...]) -> str:
            return f"image task {i} (images {args[1] + 1}-{args[1] + len(args[0])} of {len(files)})"

        for results in self.pool.ordered("embed_images", calls, 2 * len(self.pool.actors), describe):
            yield [EmbeddedImage(files[d.seq], d, vector, caption) for d, vector, caption in results]


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
        captions = [str(c) or None for c in batch["caption"]]
        results = self.worker.embed(list(batch["decoded"]), captions)
        columns = {name: np.empty(len(results), dtype=object) for name in ("decoded", "vector", "caption_vector")}
        for i, row in enumerate(results):
            for name, value in zip(columns, row):
                columns[name][i] = value
        return {"seq": batch["seq"], **columns}


class DataStage:
    """The embed stage as a Ray Data job: decoding in CPU tasks (1 CPU each, anywhere in the cluster) feeding
    an actor pool of encoders; rows put back in input order on the driver."""

    def __init__(self, pool: ActorPool, options: IngestOptions, ray_options: RayOptions, *, spec: str,
                 device: str | None, texts: RemoteTextEncoder, task_rows: int) -> None:
        self.pool, self.options, self.ray_options, self.task_rows = pool, options, ray_options, task_rows
        self.spec, self.device, self.texts = spec, device, texts

    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        """Texts embedded by the small text actor."""
        return self.texts.encode_texts(texts)

    def embed_images(self, work: ImageWork) -> Iterator[list[EmbeddedImage]]:
        """Batches in input order, whatever order Ray Data returns them in (a retried batch comes back late)."""
        files = work.files
        if not files:
            return
        ray, opts = self.pool.ray, self.ray_options
        settings = self.pool.run("decode_settings", self.options.max_image_pixels, self.options.decode_timeout_s)
        settings = dataclasses.replace(settings, skip_hashes=work.known_hashes)
        items = [{"seq": i, "path": f.os_path, "caption": f.caption or ""} for i, f in enumerate(files)]
        blocks = max(1, -(-len(items) // self.task_rows))
        device = self.device or ("cuda" if opts.num_gpus_per_actor > 0 else None)
        ds = ray.data.from_items(items, override_num_blocks=blocks)
        # Ray Data's defaults do the fault tolerance: decode tasks are retried (Ray's task retries) and
        # pool actors are restarted with their in-flight batches retried (max_restarts = max_task_retries = -1)
        ds = ds.map_batches(decode_batch, fn_kwargs={"settings": settings}, batch_size=self.task_rows, num_cpus=1,
                            batch_format="numpy")
        ds = ds.map_batches(EncodeBatch, fn_constructor_args=(self.spec, device, self.options.batch_size, opts.actor_setup),
                            compute=ray.data.ActorPoolStrategy(size=opts.actors), batch_size=self.task_rows,
                            num_cpus=opts.num_cpus_per_actor, num_gpus=opts.num_gpus_per_actor, batch_format="numpy")
        waiting: dict[int, EmbeddedImage] = {}
        next_seq = 0
        for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
            for d, vector, caption in zip(batch["decoded"], batch["vector"], batch["caption_vector"]):
                waiting[int(d.seq)] = EmbeddedImage(files[int(d.seq)], d, vector, caption)
            ready = []
            while next_seq in waiting:
                ready.append(waiting.pop(next_seq))
                next_seq += 1
            if ready:
                yield ready
        if waiting or next_seq != len(files):
            raise IngestError(f"the Ray Data job returned {next_seq} of {len(files)} images in order")
