"""The façade: :func:`index` builds or updates a collection, :func:`open` opens one for queries."""

from __future__ import annotations

import contextlib
import dataclasses
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, ContextManager, Iterator, Protocol, Sequence

from .config import default_collection_for, default_model, remember_collection
from .encoders.base import Encoder
from .encoders.registry import canonical_spec, load_encoder, spec_for_collection
from .errors import ConfigError, EncoderMismatchError, MMSearchError
from .indexes import IndexInfo, IndexOptions, IndexRequest, needs_update, resolve_options, update_index
from .indexes.compaction import compact_shards
from .indexes.faiss_index import MIN_CROSS_MODAL_QUERIES
from .modality import IMAGES
from .modality import other as other_modality
from .query.labels import update_labels
from .search import Collection
from .store import MODALITIES, ModelInfo, Store
from .store.lock import DEFAULT_WAIT_S
from .store.manifest import MANIFEST_NAME
from .store.remote import is_url
from .store.store import DEFAULT_RETENTION_S, check_model

if TYPE_CHECKING:  # the ingest package (PIL, pyarrow.compute) loads only to index: `open` for a query needs none of it
    from .ingest import EmbedStage, IngestOptions, IngestReport, Progress


@dataclass
class IndexResult:
    """What :func:`index` did."""

    path: Path
    model: str
    report: IngestReport
    indexes: dict[str, IndexInfo] = field(default_factory=dict)
    seconds: float = 0.0


@dataclass
class Build:
    """One build's working parts, opened by an :class:`Engine`: the collection (open for writing, locked), the
    embed stage that fills it, the report to fill, and the index step."""

    root: Path
    store: Store
    stage: EmbedStage
    report: IngestReport
    #: (the ingest report, what the caller asked of the indexes) -> the indexes (re)built
    build_indexes: Callable[[IngestReport, IndexRequest], dict[str, IndexInfo]]
    remember: bool = True  # whether ``root`` becomes the default collection (a URL's local copy does not)


class Engine(Protocol):
    """Where a build's heavy work runs, given to :func:`index` as ``engine=`` (as httpx takes a transport):
    :class:`LocalEngine` (the default) or ``mmsearch.distributed.RayEngine``. :func:`index` does the rest the same
    way for every engine: ingest plans and commits, then the index step, then one published version."""

    def open(self, out: str | Path, paths: Sequence[str | Path], *, model: str | None, device: str | None,
             ingest: IngestOptions, embedding_dtype: str, wait_s: float | None,
             progress: Progress | None) -> ContextManager[Build]:
        """The collection ``out`` (created if need be) and what embeds into it, for the time of one build."""
        ...


#: the keywords of :func:`index`'s flat form that are :class:`IndexRequest` fields, by their flat name
INDEX_KEYWORDS = {"index_factory": "factory", "max_index_memory_bytes": "max_index_memory_bytes",
                  "target_recall": "target_recall", "index_shards": "parts"}


def index(
    paths: str | Path | Sequence[str | Path], *, out: str | Path | None = None, model: str | None = None,
    ingest: IngestOptions | None = None, index: IndexRequest | None = None, engine: Engine | None = None,  # noqa: A002
    device: str | None = None, embedding_dtype: str = "float16", progress: Progress | None = None,
    wait_s: float | None = DEFAULT_WAIT_S, retention_s: float = DEFAULT_RETENTION_S, **options: Any,
) -> IndexResult:
    """Embed image folders / images / text corpora into a collection and (re)build its indexes.

    Re-running on the same inputs embeds only what is new or changed and records removed inputs
    as deletions. ``out`` defaults to ``PATH.mms`` beside the first input when it is a folder, else to
    ``NAME.mms`` in the current directory (a single file's folder is left alone). The model defaults to
    the collection's own model, else ``$MMSEARCH_MODEL``, else the built-in offline model.

    ``ingest``: :class:`~mmsearch.ingest.IngestOptions` (batch size, decode processes, shard rows, decode time
    limit, decompression-bomb limit, dedup, caption manifests, corpus columns). ``index``:
    :class:`~mmsearch.indexes.IndexRequest` (every :class:`~mmsearch.indexes.IndexOptions` knob, each optional:
    factory ``"auto"`` or a FAISS string such as ``"HNSW32"``, memory budget, target recall@10, parts, ...); a field
    left None keeps what the collection's indexes were built with, else the default (``"auto"``, 4 GiB, 0.95, 1 part).
    Indexes are updated in place (new shards added, deletions applied) or
    rebuilt when they would drift. The same knobs may be given as keywords, the older flat form, which still works:
    any :class:`IngestOptions` field (``batch_size=8``, ``captions=...``), and ``index_factory``,
    ``max_index_memory_bytes``, ``target_recall``, ``index_shards`` (= ``IndexRequest.parts``); a keyword overrides
    the same field of an options object given too. The option objects are the preferred form.

    ``engine``: where decoding and encoding run: :class:`LocalEngine` (default, this machine) or
    ``mmsearch.distributed.RayEngine(RayOptions(...))`` (a Ray cluster; ``out`` may then be an fsspec URL).

    Sharing: the run holds the collection's writer lock (waiting up to ``wait_s`` seconds for another writer;
    None: for ever) and publishes one new version at its end, so readers never see it half done; a killed run
    resumes where it stopped. Versions superseded more than ``retention_s`` seconds ago, and not held by a
    reader, are removed afterwards (see docs/sharing.md).
    """
    from .ingest import ingest as run_ingest

    started = time.perf_counter()
    path_list = [paths] if isinstance(paths, (str, Path)) else list(paths)
    if not path_list:
        raise ConfigError("nothing to index: give at least one folder, image or text corpus")
    ingest_opts, request = options_from_keywords(ingest, index, options)
    if retention_s < 0:
        raise ConfigError("retention_s must be >= 0")
    engine = engine if engine is not None else LocalEngine()
    target = out if out else default_collection_for(path_list[0])
    with engine.open(target, path_list, model=model, device=device, ingest=ingest_opts, embedding_dtype=embedding_dtype,
                     wait_s=wait_s, progress=progress) as build:
        store = build.store
        with store.transaction("index"):  # one version at the end; shard commits are resumable checkpoints
            report = run_ingest(store, None, path_list, options=ingest_opts, progress=progress, stage=build.stage,
                                report=build.report)
            built = build.build_indexes(report, request)
            # each image's top concepts, for hits, filters and evidence (the stage encodes the vocabulary, once
            # per model: it is cached); rows labelled before are kept
            update_labels(store, build.stage)
            compact_shards(store, ingest_opts.shard_rows)  # runs of small shards (few-row writes) become one file
        store.vacuum(retention_s)
        spec = store.manifest.model.spec
    if build.remember:
        remember_collection(build.root)
    return IndexResult(build.root, spec, report, built, time.perf_counter() - started)


def options_from_keywords(ingest: IngestOptions | None, index: IndexRequest | None,
                          keywords: dict[str, Any]) -> tuple[IngestOptions, IndexRequest]:
    """The option objects of a build: those given, with the flat keywords of :func:`index` applied over them."""
    from .ingest import IngestOptions

    ingest_fields = {f.name for f in dataclasses.fields(IngestOptions)}
    ingest_kw, index_kw = {}, {}
    for name, value in keywords.items():
        if name in ingest_fields:
            if not (name == "max_image_pixels" and value is None):  # None: the default
                ingest_kw[name] = value
        elif name in INDEX_KEYWORDS:
            index_kw[INDEX_KEYWORDS[name]] = value
        else:
            raise TypeError(f"index() got an unexpected keyword argument {name!r}")
    return (dataclasses.replace(ingest or IngestOptions(), **ingest_kw),
            dataclasses.replace(index or IndexRequest(), **index_kw))


class LocalEngine:
    """This machine: decode processes and the model here (:class:`~mmsearch.ingest.LocalStage`), the index
    built here. The default engine of :func:`index`."""

    @contextlib.contextmanager
    def open(self, out: str | Path, paths: Sequence[str | Path], *, model: str | None, device: str | None,
             ingest: IngestOptions, embedding_dtype: str, wait_s: float | None,
             progress: Progress | None) -> Iterator[Build]:
        """Lock (or create) the collection, then load the model only if something needs it."""
        from .ingest import IngestReport, LocalStage
        from .ingest.encode import LazyEncoder

        if is_url(out):
            raise ConfigError(f"{out}: a URL collection needs the Ray engine (mmsearch.distributed.RayEngine; "
                              "`mmsearch index --engine ray`): the local engine writes local paths")
        root = Path(out).expanduser()
        created = not root.exists()
        lock = Store.lock(root, wait_s)  # before the model loads: a busy collection is said at once
        try:
            existing = None if created else _collection_model(root)  # the manifest, read once before the writer's open
            spec = _spec_for(existing, model)
            # a new collection needs the model's contract (dim, preprocessing) now; an existing one has it, and the
            # model loads only when something is embedded or an index needs its queries: an unchanged re-index
            # (files compared by uri, size, mtime and caption; corpora by key and text) loads none
            eager = load_encoder(spec, device=device) if existing is None else None
        except BaseException:
            lock.release()
            if created:
                shutil.rmtree(root, ignore_errors=True)  # nothing was written but the lock file
            raise
        info = _model_info(eager) if eager is not None else existing
        assert info is not None

        def load() -> Encoder:
            encoder = load_encoder(spec, device=device)
            check_model(info, _model_info(encoder))  # as the writer's open checks it
            return encoder

        encoder = LazyEncoder(load) if eager is None else eager
        with Store.open_or_create(root, info, embedding_dtype=embedding_dtype, lock=lock) as store:
            yield Build(root, store, LocalStage(encoder, ingest), IngestReport(),
                        lambda report, request: build_indexes(store, report, encoder, request))


def _spec_for(existing: ModelInfo | None, model: str | None) -> str:
    """The model of a build: the collection's own (``model``, if given, must be it), else ``model`` or the default."""
    if existing is not None:
        if model is not None and spec_for_collection(model, existing.spec) is None:
            raise EncoderMismatchError(existing.spec, canonical_spec(model))
        return existing.spec
    return canonical_spec(model or default_model())


def _model_info(encoder: Encoder) -> ModelInfo:
    return ModelInfo(spec=encoder.spec, preprocess_id=encoder.preprocess_id, dim=encoder.dim)


def _collection_model(root: Path) -> ModelInfo | None:
    """The model contract of the collection at ``root`` (None: no readable collection there yet)."""
    if not (root / MANIFEST_NAME).is_file():
        return None
    try:
        with Store.open(root, lenient=True) as store:
            return store.manifest.model
    except MMSearchError:
        return None  # damaged or half-made: the writer's open repairs it, with the model loaded first


def build_indexes(store: Store, report: IngestReport, encoder: Encoder,
                  request: IndexRequest | None = None) -> dict[str, IndexInfo]:
    """The index step of :func:`index` (the Ray engine's too): update each modality's index whose rows or options
    changed; a ``request`` field left None keeps the collection's own, else the default."""
    built = {}
    for modality in MODALITIES:
        opts = resolve_options(store, modality, request or IndexRequest())
        if modality in report.changed or needs_update(store, modality, opts):
            result = update_index(store, modality, with_probe_queries(opts, store, modality, encoder))
            if result:
                built[modality] = result
    return built


def with_probe_queries(opts: IndexOptions, store: Store, modality: str, encoder: Encoder) -> IndexOptions:
    """The text queries a build needs from the encoder: unrelated ones, whose scores set the index's no-match
    threshold; and, for an image index of a collection with (almost) no texts, generic ones to tune it on (not
    encoded for an exact Flat index, which has nothing to tune)."""
    from .encoders.text_cache import fixed_text_embeddings
    from .query.calibration import NULL_QUERIES

    opts = dataclasses.replace(opts, null_queries=fixed_text_embeddings(encoder, NULL_QUERIES))
    other = other_modality(modality)
    if modality != IMAGES or store.manifest.live_rows(other) >= MIN_CROSS_MODAL_QUERIES:
        return opts
    if not _approximate(opts, store, modality):
        return opts
    from .query.probes import PROBE_TEXTS

    return dataclasses.replace(opts, probe_queries=fixed_text_embeddings(encoder, PROBE_TEXTS))


def _approximate(opts: IndexOptions, store: Store, modality: str) -> bool:
    """Whether the index this build will have (or the one it updates) is approximate, i.e. has parameters to tune."""
    factory = opts.factory_for(store.manifest.live_rows(modality), store.manifest.model.dim)
    saved = store.manifest.indexes.get(modality)
    existing = saved.factory if saved is not None else None
    return any(f is not None and f.replace(" ", "") != "Flat" for f in (factory, existing))


def open(path: str | Path, *, model: str | None = None, device: str | None = None) -> Collection:  # noqa: A001
    """Open a collection for queries. ``model``, if given, must be the one it was built with."""
    return Collection(Store.open(path), model=model, device=device)


def model_for_collection(root: str | Path, model: str | None = None) -> str:
    """The model spec :func:`index` will use for ``root``: the collection's own, else ``model`` or the default."""
    root = Path(root).expanduser()
    if (root / MANIFEST_NAME).is_file():
        existing = Store.open(root, lenient=True).manifest.model.spec
        if model is not None and spec_for_collection(model, existing) is None:
            raise EncoderMismatchError(existing, canonical_spec(model))
        return existing
    return canonical_spec(model or default_model())


def versions(path: str | Path) -> list[dict[str, Any]]:
    """The versions a collection keeps, oldest first: number, time, operation, live rows, whether it is the
    current one and whether a reader holds it."""
    from .store.versions import is_leased

    current = Store.open(path)
    try:
        return [{**summary, "current": summary["version"] == current.version,
                 "held_by_reader": summary["version"] != current.version and is_leased(current.root, summary["version"])}
                for summary in list_version_summaries(current.root)]
    finally:
        current.close()


def list_version_summaries(root: Path) -> list[dict[str, Any]]:
    """One dict per version file (unreadable ones say so)."""
    from .store.store import read_version
    from .store.versions import list_versions

    out = []
    for number in list_versions(root):
        manifest = read_version(root, number)
        if manifest is None:
            out.append({"version": number, "readable": False})
            continue
        out.append({"version": number, "readable": True, "published_at": manifest.updated_at,
                    "operation": manifest.operation, "images": manifest.live_rows("images"),
                    "texts": manifest.live_rows("texts")})
    return out


def verify(path: str | Path, *, deep: bool = False) -> list[str]:
    """Every problem in the collection's current version (missing files, wrong sizes or checksums; ``deep``: rows,
    ids and embedding norms of every shard), one line each. Empty: sound. Reads only; ``index`` repairs."""
    store = Store.open(path, lenient=True)
    try:
        return store.check(deep=deep)
    finally:
        store.close()


def vacuum(path: str | Path, *, retention_s: float = 0.0, wait_s: float | None = DEFAULT_WAIT_S) -> dict[str, int]:
    """Remove versions superseded more than ``retention_s`` ago that no reader holds, and files no version lists."""
    if retention_s < 0:
        raise ConfigError("retention_s must be >= 0")
    with Store.open_for_writing(path, wait_s=wait_s) as store:
        return store.vacuum(retention_s)
