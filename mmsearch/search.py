"""The query layer: :class:`Collection` answers queries of every kind with typed :class:`Hit` results.

Scores are cosine similarities of unit vectors: higher is more similar, 1.0 is identical.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, Mapping, Sequence

import numpy as np

from .encoders.base import Encoder
from .encoders.registry import canonical_spec, load_encoder, spec_for_collection
from .errors import EncoderMismatchError, IndexNotFoundError, MMSearchError, QueryError
from .indexes import SearchIndex, is_current, load_index
from .indexes.calibration import ScoreMoments, good_matches, read_moments
from .modality import plural, singular
from .query.calibration import NULL_QUERIES, threshold_from_null_scores
from .query.combine import Q, Term, as_term, combine
from .query.evidence import EvidenceBundle, EvidenceItem
from .query.filters import Filter
from .query.labels import labels_of, match_labels
from .query.terms import ImageQuery, embed_terms
from .store import Store
from .store.store import rows_with_ids

if TYPE_CHECKING:
    import pyarrow as pa
    import pyarrow.compute as pc

log = logging.getLogger(__name__)

#: a labels file of up to this many rows is read once per version and kept; a larger one is read by id per query
LABELS_CACHED_ROWS = 200_000

MAX_K = 10_000
DEDUP_OVERSAMPLE = 4

MARK_DEPTH = 10  # hits searched, at least, to mark the good matches among (docs/no-match.md)


@dataclass(frozen=True)
class Hit:
    """One search result. ``uri`` is the image path (images) or the text's source (texts).

    ``good_match``: True when the hit stands out from the query's own scores over the collection (see
    docs/no-match.md), False when not; for an index built before its score moments were kept, text queries
    compare with :meth:`Collection.no_match_threshold` and the others get None.
    ``labels`` (images): the model's top concepts stored at index time, ``[{"name", "confidence"}, ...]``
    best first (empty for texts and for collections indexed before labels; see docs/labels.md).
    """

    id: int
    score: float
    modality: str  # "image" | "text"
    uri: str | None = None
    text: str | None = None
    caption: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    good_match: bool | None = None
    labels: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """The one JSON form of a hit, shared by the library, the CLI and the HTTP API."""
        return asdict(self)


@dataclass(frozen=True)
class _Target:
    """A search's checked arguments: the modality, its loaded index, the ids a filter allows (None: all).
    Made before any query is embedded, so that every error that needs no model comes before it loads."""

    modality: str
    index: SearchIndex
    allowed: np.ndarray | None
    k: int
    dedup: float | None


@dataclass(frozen=True)
class _Plan:
    """What to search for: query vectors, ids to leave out per query, and whether they are texts."""

    vectors: np.ndarray
    exclude: list[set[int]]
    text_only: list[bool]


class Collection:
    """An opened collection. Create with :func:`mmsearch.open`."""

    def __init__(self, store: Store, *, model: str | None = None, device: str | None = None) -> None:
        self._store = store
        spec = store.manifest.model.spec
        if model is not None and spec_for_collection(model, spec) is None:
            raise EncoderMismatchError(spec, canonical_spec(model))
        self._device = device
        self._encoder: Encoder | None = None
        self._indexes: dict[str, SearchIndex] = {}
        self._rows: dict[str, tuple[pa.Table, np.ndarray]] = {}
        self._thresholds: dict[str, float] = {}
        self._moments: dict[str, ScoreMoments | None] = {}
        self._labels: dict[str, pa.Table] = {}  # modality -> its labels rows (a small labels file, kept per version)

    @property
    def path(self) -> Path:
        """The collection directory."""
        return self._store.root

    @property
    def model(self) -> str:
        """The model spec the collection was built with."""
        return self._store.manifest.model.spec

    @property
    def dim(self) -> int:
        """The embedding dimension."""
        return self._store.manifest.model.dim

    @property
    def encoder(self) -> Encoder:
        """The collection's encoder, loaded on first use."""
        if self._encoder is None:
            self._encoder = load_encoder(self.model, device=self._device)
            if self._encoder.dim != self.dim:
                raise EncoderMismatchError(self.model, f"{self.model} (dim {self._encoder.dim})")
        return self._encoder

    @property
    def version(self) -> int:
        """The version of the collection this handle reads (see :meth:`refresh`)."""
        return self._store.version

    def refresh(self) -> bool:
        """Move this handle to the collection's newest version; True when there was a newer one.

        A handle keeps reading the version it opened, whole and consistent, whatever writers do meanwhile,
        until it refreshes (or the version is cleaned up, after the retention: see docs/sharing.md).
        """
        store = Store.open(self.path)
        if store.version == self._store.version:
            store.close()
            return False
        old, self._store = self._store, store
        self._indexes, self._rows, self._thresholds, self._moments, self._labels = {}, {}, {}, {}, {}
        old.close()
        return True

    def close(self) -> None:
        """Let go of this handle's lease on its version (clean-up may then remove that version once superseded)."""
        self._store.close()

    def metadata(self, modality: str = "image") -> tuple[pa.Table, np.ndarray]:
        """The stored metadata of live items (no embeddings; user columns joined), sorted by id, with the ids."""
        return self._table(_modality(modality))

    def __len__(self) -> int:
        return sum(self._store.manifest.live_rows(m) for m in ("images", "texts"))

    def __repr__(self) -> str:
        return f"Collection({str(self.path)!r}, model={self.model!r}, items={len(self)})"

    # -- searching -----------------------------------------------------------------------------
    def search(
        self, query: str | None = None, *, text: str | None = None, image: ImageQuery | None = None,
        vector: np.ndarray | None = None, id: int | None = None,
        positive: Sequence[Term] = (), negative: Sequence[Term] = (),
        k: int = 10, modality: str = "image", filter: Filter | Mapping[str, Any] | None = None,
        where: pc.Expression | None = None, dedup: float | None = None,
        search_params: dict[str, float] | None = None,
    ) -> list[Hit]:
        """Rank items of ``modality`` ("image" or "text") by similarity to a query.

        The query is exactly one of ``text`` (or positionally ``query``), ``image`` (path, bytes, PIL
        image or HxWx3 array), ``vector`` or ``id`` (an item of the collection, left out of the
        results) — or query arithmetic: ``positive`` and ``negative`` lists of terms (a ``str`` is a
        text, a ``Path`` an image, or :class:`mmsearch.Q` with a weight), to which a single query
        given above is added as a positive term.

        ``filter`` (a :class:`mmsearch.Filter` or its dict form) and ``where`` (a pyarrow expression
        over the metadata columns) are pre-filters: k matching results come back when k match.
        ``dedup`` (a similarity such as 0.95) keeps one result per group of near-duplicates.
        ``search_params`` overrides the index's tuned ``nprobe`` / ``efSearch`` / ``k_factor``.
        """
        if query is not None:
            if text is not None:
                raise QueryError("give the text either positionally or as text=, not both")
            text = query
        single = [Q(**{n: v}) for n, v in (("text", text), ("image", image), ("vector", vector), ("id", id)) if v is not None]
        if len(single) > 1:
            raise QueryError("give exactly one of text=, image=, vector=, id= (use positive=[...] to combine several)")
        if not single and not positive:
            raise QueryError("give exactly one of text=, image=, vector=, id= (or positive=[...] terms)")
        target = self._target(k, modality, filter=filter, where=where, dedup=dedup)
        if negative or positive or not single:
            plan = self._arithmetic([*single, *positive], list(negative))
        else:
            plan = self._plan(single)
        return self._run(plan, target, search_params=search_params)[0]

    def search_batch(
        self, queries: Sequence[Term], *, k: int = 10, modality: str = "image",
        filter: Filter | Mapping[str, Any] | None = None, where: pc.Expression | None = None,
        dedup: float | None = None, search_params: dict[str, float] | None = None,
    ) -> list[list[Hit]]:
        """Many queries at once (texts as ``str``, images as ``Path``, or :class:`mmsearch.Q`), results
        in the same order. Texts are encoded in one batch, images in one, and the index is searched once."""
        if not queries:
            return []
        target = self._target(k, modality, filter=filter, where=where, dedup=dedup)
        plan = self._plan([as_term(q) for q in queries])
        return self._run(plan, target, search_params=search_params)

    def recommend(
        self, positive_ids: Sequence[int], negative_ids: Sequence[int] = (), *, k: int = 10,
        modality: str | None = None, filter: Filter | Mapping[str, Any] | None = None,
        where: pc.Expression | None = None, dedup: float | None = None,
    ) -> list[Hit]:
        """Items like ``positive_ids`` and unlike ``negative_ids`` (none of them returned).

        ``modality`` defaults to that of the first positive item.
        """
        if not positive_ids:
            raise QueryError("recommend needs at least one positive id")
        checked = self._target(k, modality or self._modality_of(int(positive_ids[0])), filter=filter, where=where,
                               dedup=dedup)
        plan = self._arithmetic([Q(id=int(i)) for i in positive_ids], [Q(id=int(i)) for i in negative_ids])
        return self._run(plan, checked)[0]

    def similar(self, id: int, *, k: int = 10, modality: str | None = None,
                filter: Filter | Mapping[str, Any] | None = None, dedup: float | None = None) -> list[Hit]:
        """Items most similar to item ``id`` (itself left out); ``modality`` defaults to the item's own."""
        return self.search(id=id, k=k, modality=modality or self._modality_of(int(id)), filter=filter, dedup=dedup)

    def item(self, id: int) -> Hit:
        """One item's stored metadata as a :class:`Hit` (score 1.0: an item is identical to itself)."""
        modality = plural(self._modality_of(int(id)))
        labels = self._labels_by_id(modality, [int(id)])
        return self._hit(modality, self._rows_by_id(modality, [int(id)]).get(int(id)), int(id), 1.0,
                         labels=labels.get(int(id)))

    def set_metadata(self, ids: Sequence[int], columns: Mapping[str, Sequence[Any]], *, modality: str = "image") -> None:
        """Attach your own metadata columns to items (e.g. ``{"rating": [5, 3], "album": ["x", "y"]}``).

        They are stored with the collection (``extra/<modality>.parquet``), show up in ``Hit.metadata``, and
        can be filtered on (``filter={"where": {"rating": 5}}`` or ``where=pc.field("rating") >= 4``). Setting
        a column again for the same ids replaces the values; other ids keep theirs.
        """
        import pyarrow as pa

        target = _modality(modality)
        ids = [int(i) for i in ids]
        _, known = self._table(target)
        missing = [i for i in ids if _find(known, i) is None]
        if missing:
            raise QueryError(f"no {singular(target)} with id {missing[0]} in this collection")
        reserved = set(_columns(target)) | {"id", "embedding"}
        for name, values in columns.items():
            if name in reserved or not name.isidentifier():
                raise QueryError(f"cannot use {name!r} as a metadata column (reserved or not an identifier)")
            if len(values) != len(ids):
                raise QueryError(f"column {name!r} has {len(values)} values for {len(ids)} ids")
        update = pa.table({"id": pa.array(ids, pa.int64()), **{k: pa.array(list(v)) for k, v in columns.items()}})
        with Store.open_for_writing(self.path) as writer, writer.transaction("set_metadata"):
            writer.write_extra(target, _merge_extra(writer.read_extra(target), update))
        self.refresh()

    def labels(self, ids: Sequence[int], *, modality: str = "image") -> dict[int, list[dict[str, Any]]]:
        """The stored labels of ``ids`` (``{id: [{"name", "confidence"}, ...]}``; ids without labels left out),
        read by id from the labels file. See docs/labels.md."""
        return self._labels_by_id(_modality(modality), [int(i) for i in ids])

    # -- embeddings for pipelines ------------------------------------------------------------------
    def embeddings(self, ids: Sequence[int]) -> np.ndarray:
        """(len(ids), dim) float32 stored embeddings, in the order given (images or texts)."""
        return self._vectors_of_ids([int(i) for i in ids])

    def iter_embeddings(self, modality: str = "image", *, as_arrow: bool = False) -> Iterator[tuple[Any, Any]]:
        """(ids, embeddings) per shard, live rows only: numpy (int64, (n, dim) float32) or, with
        ``as_arrow``, the Arrow id column and fixed-size-list embedding column as stored (zero-copy)."""
        target = _modality(modality)
        if not as_arrow:
            yield from self._store.iter_embeddings(target)
            return
        for table in self._store.iter_tables(target, ["id", "embedding"]):
            yield table.column("id"), table.column("embedding")

    # -- calibration and evidence ------------------------------------------------------------------
    def no_match_threshold(self, modality: str = "image") -> float:
        """Scores of text queries above this are good matches for ``modality`` in this collection.

        It is the 95th percentile of the best scores that unrelated text queries reach here, computed when the
        index is built and kept in its record (for older indexes: on first use, then cached for this object).
        """
        target = _modality(modality)
        record = self._store.manifest.indexes.get(target)
        if record is not None and record.no_match_threshold is not None:
            return record.no_match_threshold  # computed when the index was built
        if target not in self._thresholds:  # an index built before thresholds were kept
            vectors = self.encoder.encode_texts(list(NULL_QUERIES))
            scores, _ = self._index(target).search(vectors, 1)
            self._thresholds[target] = threshold_from_null_scores(scores[:, 0])
        return self._thresholds[target]

    def evidence(self, question: str, *, k: int = 5, k_texts: int | None = None, nearest_texts: int = 3,
                 filter: Filter | Mapping[str, Any] | None = None) -> EvidenceBundle:
        """The best images and texts for ``question``, with citation ids (I1.., T1..) and, for each image, its
        stored labels (what the model sees in it) and its nearest texts in the collection (an image->text,
        retrieval-based caption) with their scores: only those above the text index's no-match threshold."""
        available = [m for m in ("images", "texts") if self._has_index(m)]
        if not available:
            raise IndexNotFoundError("image or text", str(self.path))
        on_images = self._target(k, "image", filter=filter) if "images" in available else None
        on_texts = self._target(k_texts or k, "text", filter=filter) if "texts" in available else None
        plan = self._plan([Q(text=question)])
        images = self._run(plan, on_images)[0] if on_images else []
        texts = self._run(plan, on_texts)[0] if on_texts else []
        neighbours: list[list[Hit]] = [[] for _ in images]
        related = None
        if images and "texts" in available and nearest_texts > 0:
            related = self.no_match_threshold("text")
            vectors = self._vectors_of_ids([h.id for h in images])
            found = self._run(_Plan(vectors, [set() for _ in images], [False] * len(images)),
                              self._target(nearest_texts, "text"))
            neighbours = [[n for n in near if n.score > related] for near in found]
        threshold = self.no_match_threshold("image" if images else "text")
        return EvidenceBundle(
            question=question, model=self.model, threshold=threshold,
            images=[_evidence_item(f"I{n}", h, near) for n, (h, near) in enumerate(zip(images, neighbours), 1)],
            texts=[_evidence_item(f"T{n}", h, []) for n, h in enumerate(texts, 1)],
            related_threshold=related,
        )

    # -- information -------------------------------------------------------------------------------
    def info(self) -> dict[str, Any]:
        """A JSON-able summary: model, counts, shards, indexes."""
        m = self._store.manifest
        return {
            "path": str(self.path),
            "format_version": m.format_version,
            "model": asdict(m.model),
            "embedding_dtype": m.embedding_dtype,
            "images": m.live_rows("images"),
            "texts": m.live_rows("texts"),
            "deleted": {k: len(v) for k, v in m.deleted.items()},
            "shards": {k: len(v) for k, v in m.shards.items()},
            "indexes": {name: asdict(record) for name, record in m.indexes.items()},
            "updated_at": m.updated_at,
            "version": self._store.version,
            "writer": self._store.writer(),  # who is writing it now, or None
        }

    def quarantine(self) -> list[dict[str, Any]]:
        """Inputs the collection rejected: uri, reason, error, time."""
        from .ingest import quarantine

        return quarantine.read(self.path)

    # -- internals -------------------------------------------------------------------------------
    def _plan(self, terms: Sequence[Q]) -> _Plan:
        vectors = embed_terms(lambda: self.encoder, terms, self.dim, self._vectors_of_ids)
        exclude = [{int(t.id)} if t.id is not None else set() for t in terms]
        return _Plan(vectors, exclude, [t.text is not None for t in terms])

    def _arithmetic(self, positive: Sequence[Term], negative: Sequence[Term]) -> _Plan:
        pos, neg = [as_term(t) for t in positive], [as_term(t) for t in negative]
        vectors = embed_terms(lambda: self.encoder, [*pos, *neg], self.dim, self._vectors_of_ids)
        lookup = {id(t): v for t, v in zip([*pos, *neg], vectors)}
        combined = combine(pos, neg, lambda t: lookup[id(t)])
        exclude = {int(t.id) for t in [*pos, *neg] if t.id is not None}
        return _Plan(combined[None, :], [exclude], [all(t.text is not None for t in [*pos, *neg])])

    def _target(self, k: int, modality: str, *, filter: Filter | Mapping[str, Any] | None = None,
                where: pc.Expression | None = None, dedup: float | None = None) -> _Target:
        """Check a search's arguments and load what it searches (no model: errors come before one loads)."""
        _check_k(k)
        if dedup is not None and not 0 < dedup <= 1:
            raise QueryError(f"dedup must be a similarity in (0, 1], not {dedup!r}")
        target = _modality(modality)
        index = self._index(target)
        allowed = None
        if filter is not None and not isinstance(filter, Filter):
            filter = Filter.from_dict(filter)
        if where is not None or (filter is not None and filter.has_metadata_conditions()):
            table, _ = self._table(target)  # a metadata filter needs every row's metadata; a plain search none
            expression = _combine_filters(filter, where, target, table.column_names)
            allowed = None if expression is None else _filter_ids(table, expression)
        if filter is not None and filter.labels:
            if target != "images":
                raise QueryError("the labels filter applies to images only (texts have no labels)")
            if not self._store.manifest.labels.get(target):
                raise QueryError(f"{self.path} has no labels to filter on; run `mmsearch index` on it again "
                                 "to compute them (see docs/labels.md)")
            labelled = match_labels(self._store.read_labels(target), filter.labels, filter.label_min_confidence)
            allowed = labelled if allowed is None else np.intersect1d(allowed, labelled)
        return _Target(target, index, allowed, int(k), dedup)

    def _run(self, plan: _Plan, target: _Target, *, search_params: dict[str, float] | None = None) -> list[list[Hit]]:
        k, dedup, index = target.k, target.dedup, target.index
        wanted = k * DEDUP_OVERSAMPLE + 10 if dedup else k
        if self._score_moments(target.modality) is not None:
            wanted = max(wanted, MARK_DEPTH)  # the marks test the best few, whatever k is: a copy must not hide the answer
        extra = max(len(e) for e in plan.exclude)
        scores, ids = index.search(plan.vectors, max(1, min(wanted + extra, index.ntotal)), allowed_ids=target.allowed,
                                   params=search_params)
        good = self._good_match(plan, target.modality, scores, ids)
        ranked = []
        for row, (row_scores, row_ids) in enumerate(zip(scores, ids)):
            pairs = [(int(i), float(s)) for s, i in zip(row_scores, row_ids) if i >= 0 and int(i) not in plan.exclude[row]]
            if dedup:
                pairs = self._collapse(pairs, dedup)
            ranked.append(pairs[:k])
        rows = self._rows_by_id(target.modality, [i for pairs in ranked for i, _ in pairs])
        labels = self._labels_by_id(target.modality, [i for pairs in ranked for i, _ in pairs])
        return [[self._hit(target.modality, rows.get(i), i, s, good(n, s), labels=labels.get(i))
                 for i, s in pairs] for n, pairs in enumerate(ranked)]

    def _good_match(self, plan: _Plan, modality: str, scores: np.ndarray,
                    ids: np.ndarray) -> Callable[[int, float], bool | None]:
        """Whether a hit of query ``n`` with ``score`` is a good match (None: not calibrated), from the search's
        rows of scores, best first (docs/no-match.md)."""
        moments = self._score_moments(modality)
        if moments is not None:
            raw = np.where(ids >= 0, scores, -np.inf)
            good = good_matches(plan.vectors, raw, moments)
            floor = [float(row[marks].min()) if marks.any() else float("inf") for row, marks in zip(raw, good)]
            return lambda n, score: bool(score >= floor[n])
        threshold = self.no_match_threshold(modality) if any(plan.text_only) else None
        return lambda n, score: None if threshold is None or not plan.text_only[n] else bool(score > threshold)

    def _score_moments(self, modality: str) -> ScoreMoments | None:
        """The score moments kept with ``modality``'s index, or of a small exact index's own vectors (None for an
        index built before they were kept)."""
        if modality not in self._moments:
            record = self._store.manifest.indexes.get(modality)
            if record is not None and record.moments_in_index:
                self._moments[modality] = ScoreMoments.of([self._index(modality).live_vectors()])
            else:
                file = record.moments_file if record is not None else None
                self._moments[modality] = read_moments(self._store.root / file) if file else None
        return self._moments[modality]

    def _collapse(self, pairs: list[tuple[int, float]], threshold: float) -> list[tuple[int, float]]:
        """Keep the best of each group of results more similar than ``threshold`` to one kept before."""
        if not pairs:
            return pairs
        vectors = self._vectors_of_ids([i for i, _ in pairs])
        kept: list[int] = []
        for n in range(len(pairs)):
            if not kept or float(np.max(vectors[kept] @ vectors[n])) < threshold:
                kept.append(n)
        return [pairs[n] for n in kept]

    def _vectors_of_ids(self, ids: list[int]) -> np.ndarray:
        out = np.zeros((len(ids), self.dim), dtype=np.float32)
        where = self._locate(ids)
        missing = [n for n, i in enumerate(ids) if int(i) not in where]
        if missing:
            raise QueryError(f"no item with id {ids[missing[0]]} in this collection")
        for modality in ("images", "texts"):
            here = [n for n, i in enumerate(ids) if where[int(i)] == modality]
            if here:
                found = self._store.embeddings_by_id(modality, [ids[n] for n in here])
                for n in here:
                    out[n] = found[ids[n]]
        return out

    def _modality_of(self, item_id: int) -> str:
        modality = self._locate([item_id]).get(int(item_id))
        if modality is None:
            raise QueryError(f"no item with id {item_id} in this collection")
        return singular(modality)

    def _locate(self, ids: Sequence[int]) -> dict[int, str]:
        """The modality ("images" or "texts") of each live item among ``ids``.

        Reads only the id column of the shards' row groups whose id statistics can hold them (or the metadata
        already read), never every row's metadata: an item, ``similar`` or ``recommend`` costs the same on 1k
        or 1M rows."""
        wanted = np.unique(np.asarray(list(ids), dtype=np.int64))
        found: dict[int, str] = {}
        for modality in ("images", "texts"):
            if not len(wanted):
                break
            if modality in self._rows:
                sorted_ids = self._rows[modality][1]
                here = [int(i) for i in wanted if _find(sorted_ids, int(i)) is not None]
            else:
                here = []
                for shard in self._store.manifest.shards[modality]:
                    if len(here) == len(wanted):
                        break
                    table = self._store.read_shard(shard, ["id"], ids=wanted)
                    here += [int(i) for i in table.column("id").to_pylist()]
            found.update((i, modality) for i in here)
            wanted = wanted[~np.isin(wanted, here)]
        return found

    def _has_index(self, modality: str) -> bool:
        return modality in self._store.manifest.indexes

    def _index(self, modality: str) -> SearchIndex:
        if modality not in self._indexes:
            record = self._store.manifest.indexes.get(modality)
            missing = [f for f in record.needed_files() if not (self.path / f).is_file()] if record else []
            if missing:
                more = f" and {len(missing) - 1} more file(s)" if len(missing) > 1 else ""
                raise MMSearchError(f"the {modality} index of {self.path} lacks {missing[0]}{more}; run `mmsearch "
                                    "index` on it again to rebuild it (`mmsearch verify` lists what is damaged)")
            if not is_current(self._store, modality) and record is not None:
                raise MMSearchError(
                    f"the {modality} index of {self.path} is older than its shards; run `mmsearch index` again to update it"
                )
            self._indexes[modality] = load_index(self._store, modality)
        return self._indexes[modality]

    def _table(self, modality: str) -> tuple[pa.Table, np.ndarray]:
        """Metadata of live rows (no embeddings), sorted by id for lookups."""
        if modality not in self._rows:
            columns = [c for c in _columns(modality) if c != "embedding"]
            table = self._store.scan(modality, columns)
            extra = self._store.read_extra(modality)
            if extra is not None:
                table = table.join(extra, "id", join_type="left outer")
            table = table.sort_by("id")
            self._rows[modality] = (table, table.column("id").to_numpy())
        return self._rows[modality]

    def _rows_by_id(self, modality: str, ids: Sequence[int]) -> dict[int, dict[str, Any]]:
        """The stored metadata (user columns joined) of the live items among ``ids``, by id.

        Reads only the rows asked for: the shards' row groups whose id statistics can hold them, without the
        embeddings (a cold query then costs the same on 1k or 1M rows), unless every row is already read."""
        if not len(ids):
            return {}
        if modality in self._rows:
            table, sorted_ids = self._rows[modality]
            positions = {i: _find(sorted_ids, i) for i in map(int, ids)}
            return {i: table.slice(p, 1).to_pylist()[0] for i, p in positions.items() if p is not None}
        columns = [c for c in _columns(modality) if c != "embedding"]
        missing = np.unique(np.asarray(ids, dtype=np.int64))
        found: dict[int, dict[str, Any]] = {}
        for shard in self._store.manifest.shards[modality]:
            if not len(missing):
                break
            for row in self._store.read_shard(shard, columns, ids=missing).to_pylist():
                found[int(row["id"])] = row
            missing = missing[~np.isin(missing, list(found))]
        extra = self._store.read_extra(modality) if found else None
        if extra is not None:  # as the left outer join of the whole table does: None where an item has no values
            names = [c for c in extra.column_names if c != "id"]
            extra_ids = np.asarray(extra.column("id").to_pylist(), dtype=np.int64)
            for item_id, row in found.items():
                at = np.flatnonzero(extra_ids == item_id)
                values = extra.slice(int(at[0]), 1).to_pylist()[0] if len(at) else {}
                row.update({name: values.get(name) for name in names})
        return found

    def _labels_by_id(self, modality: str, ids: Sequence[int]) -> dict[int, list[dict[str, Any]]]:
        """The stored labels of ``ids`` (read from the labels file's row groups that hold them), by id."""
        info = self._store.manifest.labels.get(modality)
        if not len(ids) or not info:
            return {}
        wanted = np.unique(np.asarray(ids, dtype=np.int64))
        if info.get("rows", LABELS_CACHED_ROWS + 1) > LABELS_CACHED_ROWS:
            return labels_of(self._store.read_labels(modality, ids=wanted))
        if modality not in self._labels:  # read once per version: a query then opens no file for its labels
            self._labels[modality] = self._store.read_labels(modality)
        return labels_of(rows_with_ids(self._labels[modality], wanted))

    def _hit(self, modality: str, row: dict[str, Any] | None, item_id: int, score: float,
             good: bool | None = None, *, labels: list[dict[str, Any]] | None = None) -> Hit:
        row = row if row is not None else {"id": item_id}
        user = {k: v for k, v in row.items() if k not in _BUILTIN_COLUMNS}
        if modality == "images":
            meta = {**{k: row.get(k) for k in ("width", "height", "bytes", "mtime", "sha256")}, **user}
            return Hit(item_id, score, "image", uri=row.get("uri"), caption=row.get("caption"), metadata=meta,
                       good_match=good, labels=list(labels or []))
        meta = {**{k: row.get(k) for k in ("key", "image_id")}, **user}
        return Hit(item_id, score, "text", uri=row.get("source"), text=row.get("text"), metadata=meta, good_match=good)


def _evidence_item(citation: str, hit: Hit, near: list[Hit]) -> EvidenceItem:
    return EvidenceItem(
        citation=citation, id=hit.id, modality=hit.modality, score=hit.score, good_match=hit.good_match,
        uri=hit.uri, text=hit.text, caption=hit.caption,
        nearest_texts=[{"id": n.id, "text": n.text, "score": round(n.score, 4)} for n in near],
        labels=list(hit.labels),
    )


_BUILTIN_COLUMNS = {"id", "uri", "sha256", "bytes", "width", "height", "mtime", "caption", "text", "source", "key",
                    "image_id", "embedding"}


def _merge_extra(old: pa.Table | None, update: pa.Table) -> pa.Table:
    """``old`` with ``update``'s rows replacing or adding values by id (columns are unioned)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    if old is None:
        return update
    kept = old.filter(pc.invert(pc.is_in(old.column("id"), value_set=update.column("id"))))
    updated = update.join(old.drop_columns([c for c in old.column_names if c in update.column_names and c != "id"]),
                          "id", join_type="left outer")
    try:
        return pa.concat_tables([kept, updated], promote_options="default").combine_chunks()
    except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
        raise QueryError(f"metadata values do not match the column's existing type: {exc}") from exc


def _columns(modality: str) -> list[str]:
    from .store.schema import COLUMNS

    return [f.name for f in COLUMNS[modality]]


def _combine_filters(filter: Filter | Mapping[str, Any] | None, where: pc.Expression | None, modality: str,
                     columns: list[str]) -> pc.Expression | None:
    if filter is not None and not isinstance(filter, Filter):
        filter = Filter.from_dict(filter)
    expression = filter.expression(modality, columns) if filter is not None else None
    if where is None:
        return expression
    return where if expression is None else expression & where


def _filter_ids(table: pa.Table, where: pc.Expression) -> np.ndarray:
    """Ids of the metadata rows matching ``where``."""
    import pyarrow as pa

    try:
        return table.filter(where).column("id").to_numpy()
    except (pa.ArrowException, TypeError) as exc:
        raise QueryError(f"cannot apply the filter {where}: {exc}") from exc


def _find(sorted_ids: np.ndarray, item_id: int) -> int | None:
    pos = int(np.searchsorted(sorted_ids, item_id))
    return pos if pos < len(sorted_ids) and sorted_ids[pos] == item_id else None


def _modality(name: str) -> str:
    try:
        return plural(name)
    except (ValueError, TypeError):
        raise QueryError(f"modality must be 'image' or 'text', not {name!r}") from None


def _check_k(k: int) -> None:
    if not isinstance(k, (int, np.integer)) or isinstance(k, bool) or not 1 <= k <= MAX_K:
        raise QueryError(f"k must be an integer from 1 to {MAX_K}, not {k!r}")

