"""The façade: :func:`index` builds or updates a collection, :func:`open` opens one for queries."""

from __future__ import annotations

import dataclasses
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from .config import default_collection_for, default_model, remember_collection
from .encoders.base import Encoder
from .encoders.registry import canonical_spec, load_encoder
from .errors import ConfigError, EncoderMismatchError, MMSearchError
from .indexes import IndexInfo, IndexOptions, needs_update, resolve_options, update_index
from .indexes.choice import AUTO, choose_factory
from .indexes.faiss_index import MIN_CROSS_MODAL_QUERIES
from .search import Collection
from .store import MODALITIES, ModelInfo, Store
from .store.lock import DEFAULT_WAIT_S
from .store.manifest import MANIFEST_NAME
from .store.store import DEFAULT_RETENTION_S, check_model

if TYPE_CHECKING:  # the ingest package (PIL, pyarrow.compute) loads only to index: `open` for a query needs none of it
    from .ingest import IngestOptions, IngestReport, Progress


@dataclass
class IndexResult:
    """What :func:`index` did."""

    path: Path
    model: str
    report: IngestReport
    indexes: dict[str, IndexInfo] = field(default_factory=dict)
    seconds: float = 0.0


def index(
    paths: str | Path | Sequence[str | Path], *, out: str | Path | None = None, model: str | None = None,
    batch_size: int = 32, workers: int | None = None, shard_rows: int = 8192,
    embedding_dtype: str = "float16", device: str | None = None, index_factory: str | None = None,
    max_index_memory_bytes: int | None = None, target_recall: float | None = None,
    progress: Progress | None = None, decode_timeout_s: float | None = 30.0, max_image_pixels: int | None = None,
    dedup: bool = True, captions: str | Path | Sequence[str | Path] = (), text_column: str | None = None,
    id_column: str | None = None, path_column: str | None = None, index_shards: int | None = None,
    wait_s: float | None = DEFAULT_WAIT_S, retention_s: float = DEFAULT_RETENTION_S,
) -> IndexResult:
    """Embed image folders / images / text corpora into a collection and (re)build its indexes.

    Re-running on the same inputs embeds only what is new or changed and records removed inputs
    as deletions. ``out`` defaults to ``PATH.mms`` beside the first input when it is a folder, else to
    ``NAME.mms`` in the current directory (a single file's folder is left alone). The model defaults to
    the collection's own model, else ``$MMSEARCH_MODEL``, else the built-in offline model.

    ``index_factory`` (``"auto"`` or a FAISS factory string such as ``"HNSW32"``),
    ``max_index_memory_bytes`` and ``target_recall`` (recall@10 the search parameters are tuned to)
    default to what the collection's indexes were built with, else ``"auto"``, 4 GiB and 0.95.
    Indexes are updated in place (new shards added, deletions applied) or rebuilt when they would drift.
    ``index_shards`` > 1 keeps each index as that many parts searched together (default: the collection's, else 1).

    Ingest: ``decode_timeout_s`` bounds each image decode (None: no limit); ``max_image_pixels`` rejects
    larger images as decompression bombs (after reduced-size JPEG decoding); ``dedup`` embeds identical
    image content once; ``captions`` are caption manifests (.jsonl/.csv/.parquet: image path -> caption);
    ``text_column`` / ``id_column`` choose the columns of text corpora (``text_column`` / ``path_column``
    those of caption manifests).

    Sharing: the run holds the collection's writer lock (waiting up to ``wait_s`` seconds for another writer;
    None: for ever) and publishes one new version at its end, so readers never see it half done; a killed run
    resumes where it stopped. Versions superseded more than ``retention_s`` seconds ago, and not held by a
    reader, are removed afterwards (see docs/sharing.md).
    """
    from .ingest import ingest
    from .ingest.encode import LazyEncoder

    started = time.perf_counter()
    path_list = [paths] if isinstance(paths, (str, Path)) else list(paths)
    if not path_list:
        raise ConfigError("nothing to index: give at least one folder, image or text corpus")
    if batch_size < 1 or shard_rows < 1:
        raise ConfigError("batch_size and shard_rows must be at least 1")
    root = Path(out).expanduser() if out else default_collection_for(path_list[0])
    if retention_s < 0:
        raise ConfigError("retention_s must be >= 0")
    options = ingest_options(
        batch_size=batch_size, workers=_workers(workers), shard_rows=shard_rows, decode_timeout_s=decode_timeout_s,
        max_image_pixels=max_image_pixels, dedup=dedup, captions=captions, text_column=text_column,
        id_column=id_column, path_column=path_column,
    )
    spec = model_for_collection(root, model)
    created = not root.exists()
    lock = Store.lock(root, wait_s)  # before the model loads: a busy collection is said at once
    existing = None if created else _collection_model(root)
    try:
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
        with store.transaction("index"):
            report = ingest(store, encoder, path_list, options=options, progress=progress)
            built = build_indexes(store, report, encoder, index_factory=index_factory,
                                  max_index_memory_bytes=max_index_memory_bytes, target_recall=target_recall,
                                  index_shards=index_shards)
        store.vacuum(retention_s)
        spec = store.manifest.model.spec
    remember_collection(root)
    return IndexResult(root, spec, report, built, time.perf_counter() - started)


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


def build_indexes(store: Store, report: IngestReport, encoder: Encoder, *, index_factory: str | None = None,
                  max_index_memory_bytes: int | None = None, target_recall: float | None = None,
                  index_shards: int | None = None) -> dict[str, IndexInfo]:
    """The index step of :func:`index` (also used by the Ray engine): update each modality's index whose rows
    or options changed; ``None`` options keep the collection's own, else the defaults."""
    built = {}
    for modality in MODALITIES:
        opts = resolve_options(store, modality, factory=index_factory, max_index_memory_bytes=max_index_memory_bytes,
                               target_recall=target_recall, index_shards=index_shards)
        if modality in report.changed or needs_update(store, modality, opts):
            result = update_index(store, modality, with_probe_queries(opts, store, modality, encoder))
            if result:
                built[modality] = result
    return built


def with_probe_queries(opts: IndexOptions, store: Store, modality: str, encoder: Encoder) -> IndexOptions:
    """The text queries a build needs from the encoder: unrelated ones, whose scores set the index's no-match
    threshold; and, for an image index of a collection with (almost) no texts, generic ones to tune it on (not
    encoded for an exact Flat index, which has nothing to tune)."""
    from .query.calibration import NULL_QUERIES

    opts = dataclasses.replace(opts, null_queries=encoder.encode_texts(list(NULL_QUERIES)))
    other = "texts" if modality == "images" else "images"
    if modality != "images" or store.manifest.live_rows(other) >= MIN_CROSS_MODAL_QUERIES:
        return opts
    if not _approximate(opts, store, modality):
        return opts
    from .query.probes import PROBE_TEXTS

    return dataclasses.replace(opts, probe_queries=encoder.encode_texts(list(PROBE_TEXTS)))


def _approximate(opts: IndexOptions, store: Store, modality: str) -> bool:
    """Whether the index this build will have (or the one it updates) is approximate, i.e. has parameters to tune."""
    factory = opts.factory
    if factory == AUTO:
        factory = choose_factory(store.manifest.live_rows(modality), store.manifest.model.dim, opts.max_index_memory_bytes)
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
        if model is not None and canonical_spec(model) != existing:
            raise EncoderMismatchError(existing, canonical_spec(model))
        return existing
    return canonical_spec(model or default_model())


def ingest_options(*, captions: str | Path | Sequence[str | Path], max_image_pixels: int | None,
                    decode_timeout_s: float | None, **rest: Any) -> IngestOptions:
    from .ingest import IngestOptions

    if decode_timeout_s is not None and decode_timeout_s <= 0:
        raise ConfigError("decode_timeout_s must be positive (or None for no limit)")
    if max_image_pixels is not None and max_image_pixels < 1:
        raise ConfigError("max_image_pixels must be at least 1")
    manifests = [captions] if isinstance(captions, (str, Path)) else list(captions)
    extra = {} if max_image_pixels is None else {"max_image_pixels": max_image_pixels}
    return IngestOptions(captions=tuple(str(Path(c).expanduser()) for c in manifests),
                         decode_timeout_s=decode_timeout_s, **extra, **rest)


def _workers(workers: int | None) -> int | None:
    """The decode processes asked for; None: split the cores from the measured decode and encode costs of the
    first images (:func:`mmsearch.ingest.encode.calibrate_workers`)."""
    if workers is not None and workers < 0:
        raise ConfigError("workers must be >= 0")
    return workers


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
