"""The query layer: :class:`Collection` answers text/image/vector/id queries with typed :class:`Hit`s.

Scores are cosine similarities of unit vectors: higher is more similar, 1.0 is identical.
"""

from __future__ import annotations

import io
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Union

import numpy as np

from .encoders.base import Encoder, embed_pil_images
from .encoders.registry import canonical_spec, load_encoder
from .errors import EncoderMismatchError, MMSearchError, QueryError
from .indexes import SearchIndex, is_current, load_index
from .store import Store

if TYPE_CHECKING:
    import pyarrow as pa
    import pyarrow.compute as pc
    from PIL import Image

log = logging.getLogger(__name__)

ImageQuery = Union[str, Path, bytes, "Image.Image", np.ndarray]
MODALITY_NAMES = {"image": "images", "images": "images", "text": "texts", "texts": "texts"}
MAX_K = 10_000


@dataclass(frozen=True)
class Hit:
    """One search result. ``uri`` is the image path (images) or the text's source (texts)."""

    id: int
    score: float
    modality: str  # "image" | "text"
    uri: str | None = None
    text: str | None = None
    caption: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """The one JSON form of a hit, shared by the library, the CLI and the HTTP API."""
        return asdict(self)


class Collection:
    """An opened collection. Create with :func:`mmsearch.open`."""

    def __init__(self, store: Store, *, model: str | None = None, device: str | None = None) -> None:
        self._store = store
        spec = store.manifest.model.spec
        if model is not None and canonical_spec(model) != spec:
            raise EncoderMismatchError(spec, canonical_spec(model))
        self._device = device
        self._encoder: Encoder | None = None
        self._indexes: dict[str, SearchIndex] = {}
        self._rows: dict[str, tuple[pa.Table, np.ndarray]] = {}

    @property
    def path(self) -> Path:
        """The collection directory."""
        return self._store.root

    @property
    def model(self) -> str:
        """The model spec the collection was built with."""
        return self._store.manifest.model.spec

    @property
    def encoder(self) -> Encoder:
        """The collection's encoder, loaded on first use."""
        if self._encoder is None:
            self._encoder = load_encoder(self.model, device=self._device)
            if self._encoder.dim != self._store.manifest.model.dim:
                raise EncoderMismatchError(self.model, f"{self.model} (dim {self._encoder.dim})")
        return self._encoder

    def __len__(self) -> int:
        return sum(self._store.manifest.live_rows(m) for m in ("images", "texts"))

    def __repr__(self) -> str:
        return f"Collection({str(self.path)!r}, model={self.model!r}, items={len(self)})"

    def search(
        self, query: str | None = None, *, text: str | None = None, image: ImageQuery | None = None,
        vector: np.ndarray | None = None, id: int | None = None, k: int = 10, modality: str = "image",
        where: pc.Expression | None = None, search_params: dict[str, float] | None = None,
    ) -> list[Hit]:
        """Rank items of ``modality`` ("image" or "text") by similarity to exactly one query.

        ``query`` is a shorthand for ``text``. A query by ``id`` uses that item's stored embedding
        and leaves the item itself out of the results. ``where`` is a pyarrow expression over the
        metadata columns (e.g. ``pc.field("width") > 100``): a pre-filter, so k matching results come
        back when k match. ``search_params`` overrides the index's tuned ``nprobe`` / ``efSearch`` /
        ``k_factor`` for this query.
        """
        if query is not None:
            if text is not None:
                raise QueryError("give the text either positionally or as text=, not both")
            text = query
        given = [name for name, v in (("text", text), ("image", image), ("vector", vector), ("id", id)) if v is not None]
        if len(given) != 1:
            raise QueryError(f"give exactly one of text=, image=, vector=, id= (got {', '.join(given) or 'none'})")
        _check_k(k)
        target = _modality(modality)
        q = self._query_vector(text=text, image=image, vector=vector, id=id)
        exclude = {int(id)} if id is not None else set()
        return self._search_vectors(q[None, :], k, target, exclude, where=where, search_params=search_params)[0]

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
            "indexes": m.indexes,
            "updated_at": m.updated_at,
        }

    def quarantine(self) -> list[dict[str, Any]]:
        """Inputs the collection rejected: uri, reason, error, time."""
        from .ingest import quarantine

        return quarantine.read(self.path)

    # -- internals -----------------------------------------------------------------------------
    def _query_vector(self, *, text: str | None, image: ImageQuery | None,
                      vector: np.ndarray | None, id: int | None) -> np.ndarray:
        if text is not None:
            if not isinstance(text, str) or not text.strip():
                raise QueryError("the text query is empty")
            return self.encoder.encode_texts([text])[0]
        if image is not None:
            return embed_pil_images(self.encoder, [_load_image(image)])[0]
        if vector is not None:
            return _check_vector(vector, self._store.manifest.model.dim)
        return self._vector_of(int(id))  # type: ignore[arg-type]

    def _vector_of(self, item_id: int) -> np.ndarray:
        for modality in ("images", "texts"):
            if _find(self._table(modality)[1], item_id) is not None:
                return self._index(modality).reconstruct(item_id)
        raise QueryError(f"no item with id {item_id} in this collection")

    def _search_vectors(self, q: np.ndarray, k: int, modality: str, exclude: set[int], *,
                        where: pc.Expression | None = None,
                        search_params: dict[str, float] | None = None) -> list[list[Hit]]:
        index = self._index(modality)
        table, sorted_ids = self._table(modality)
        allowed = None if where is None else _filter_ids(table, where)
        scores, ids = index.search(q, min(k + len(exclude), max(index.ntotal, 1)), allowed_ids=allowed,
                                   params=search_params)
        results = []
        for row_scores, row_ids in zip(scores, ids):
            hits = [self._hit(modality, table, sorted_ids, int(i), float(s))
                    for s, i in zip(row_scores, row_ids) if i >= 0 and int(i) not in exclude]
            results.append(hits[:k])
        return results

    def _index(self, modality: str) -> SearchIndex:
        if modality not in self._indexes:
            if not is_current(self._store, modality) and self._store.manifest.indexes.get(modality):
                raise MMSearchError(
                    f"the {modality} index of {self.path} is older than its shards; run `mmsearch index` again to update it"
                )
            self._indexes[modality] = load_index(self._store, modality)
        return self._indexes[modality]

    def _table(self, modality: str) -> tuple[pa.Table, np.ndarray]:
        """Metadata of live rows (no embeddings), sorted by id for lookups."""
        if modality not in self._rows:
            columns = [c for c in _columns(self._store, modality) if c != "embedding"]
            table = self._store.scan(modality, columns).sort_by("id")
            self._rows[modality] = (table, table.column("id").to_numpy())
        return self._rows[modality]

    def _hit(self, modality: str, table: pa.Table, ids: np.ndarray, item_id: int, score: float) -> Hit:
        pos = _find(ids, item_id)
        row: dict[str, Any] = table.slice(pos, 1).to_pylist()[0] if pos is not None else {"id": item_id}
        if modality == "images":
            meta = {k: row.get(k) for k in ("width", "height", "bytes", "mtime", "sha256")}
            return Hit(item_id, score, "image", uri=row.get("uri"), caption=row.get("caption"), metadata=meta)
        meta = {k: row.get(k) for k in ("key", "image_id")}
        return Hit(item_id, score, "text", uri=row.get("source"), text=row.get("text"), metadata=meta)


def _columns(store: Store, modality: str) -> list[str]:
    from .store.schema import COLUMNS

    return [f.name for f in COLUMNS[modality]]


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
        return MODALITY_NAMES[name]
    except KeyError:
        raise QueryError(f"modality must be 'image' or 'text', not {name!r}") from None


def _check_k(k: int) -> None:
    if not isinstance(k, (int, np.integer)) or isinstance(k, bool) or not 1 <= k <= MAX_K:
        raise QueryError(f"k must be an integer from 1 to {MAX_K}, not {k!r}")


def _check_vector(vector: np.ndarray, dim: int) -> np.ndarray:
    v = np.asarray(vector, dtype=np.float32).reshape(-1)
    if v.shape[0] != dim:
        raise QueryError(f"the query vector has {v.shape[0]} dimensions; this collection's model has {dim}")
    norm = float(np.linalg.norm(v))
    if not np.isfinite(norm) or norm == 0:
        raise QueryError("the query vector is zero or not finite")
    return v / norm


def _load_image(image: ImageQuery) -> Image.Image:
    from PIL import Image, ImageOps, UnidentifiedImageError

    try:
        if isinstance(image, Image.Image):
            img = image
        elif isinstance(image, np.ndarray):
            img = Image.fromarray(image)
        elif isinstance(image, (bytes, bytearray)):
            img = Image.open(io.BytesIO(image))
        else:
            img = Image.open(Path(image).expanduser())
        return ImageOps.exif_transpose(img).convert("RGB")
    except (OSError, UnidentifiedImageError, TypeError, ValueError) as exc:
        raise QueryError(f"cannot read the query image: {exc}") from exc
