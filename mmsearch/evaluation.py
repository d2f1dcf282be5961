"""Retrieval quality on labelled (image, text[, group]) pairs: text->image and image->text recall@k.

A text's right answers are all images of its group (same caption or label), and an image's right
answers are all texts of its group. Ranking is exact inner product over unit vectors — what the
collection's Flat index computes — so the numbers measure the model, not an approximate index.
"""

from __future__ import annotations

import math
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .config import default_model
from .encoders.registry import load_encoder
from .errors import ConfigError
from .ingest.corpora import TABLE_EXTENSIONS, iter_image_texts
from .ingest.discover import IMAGE_EXTENSIONS, ImageFile, iter_image_files

T2I_KS = (1, 5, 10)
I2T_KS = (1, 5)


@dataclass(frozen=True)
class Pair:
    """One labelled example."""

    image: str
    text: str
    group: str


@dataclass
class EvalReport:
    """Recall (in %) with the chance level of each metric beside it."""

    model: str
    images: int
    texts: int
    groups: int
    text_to_image: dict[str, float] = field(default_factory=dict)
    image_to_text: dict[str, float] = field(default_factory=dict)
    chance: dict[str, float] = field(default_factory=dict)
    rejected: int = 0
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        """JSON form."""
        return asdict(self)


def load_pairs(path: str | Path, *, text_column: str | None = None, path_column: str | None = None) -> list[Pair]:
    """Pairs from a captioned image folder (group = caption), or a .jsonl / .csv / .parquet table of image paths
    and texts with an optional ``group`` column (group = text when absent), read as ingest reads caption manifests
    (:func:`mmsearch.ingest.corpora.iter_image_texts`): the columns named, else the first of ``path``, ``image``,
    ``image_path``, ``file``, ``filepath``, ``filename``, ``uri`` and of ``text``, ``caption``, ``content``;
    relative image paths from the table's folder."""
    path = Path(path).expanduser()
    if path.is_dir():
        pairs = [Pair(f.uri, f.caption, f.caption) for f in iter_image_files(path) if f.caption]
    elif path.suffix.lower() in TABLE_EXTENSIONS:
        pairs = []
        for lineno, image, text, row in iter_image_texts(path, text_column=text_column, path_column=path_column):
            if Path(image).suffix.lower() not in IMAGE_EXTENSIONS:
                raise ConfigError(f"{path}:{lineno}: {image!r} is not an image file ({', '.join(sorted(IMAGE_EXTENSIONS))})")
            group = row.get("group")
            pairs.append(Pair(image, text, str(group) if group is not None and str(group) != "" else text))
    else:
        raise ConfigError(f"{str(path)!r}: give a folder of captioned images or a .jsonl/.csv/.parquet of image/text pairs")
    if not pairs:
        raise ConfigError(f"no (image, text) pairs found in {str(path)!r}")
    return pairs


def evaluate(pairs: Sequence[Pair] | str | Path, *, model: str | None = None, device: str | None = None,
             batch_size: int = 32, workers: int = 0, text_column: str | None = None,
             path_column: str | None = None) -> EvalReport:
    """Embed the pairs with ``model`` and measure text->image recall@1/5/10 and image->text recall@1/5. A path is
    read by :func:`load_pairs` (``text_column`` / ``path_column``: the columns of a table, else guessed)."""
    started = time.perf_counter()
    pairs = (load_pairs(pairs, text_column=text_column, path_column=path_column) if isinstance(pairs, (str, Path))
             else list(pairs))
    encoder = load_encoder(model or default_model(), device=device)
    images = sorted({p.image: p.group for p in pairs}.items())
    texts = sorted({p.text: p.group for p in pairs}.items())
    image_vecs, ok = embed_images(encoder, [u for u, _ in images], batch_size, workers)
    image_groups = np.array([g for (_, g), good in zip(images, ok) if good])
    text_vecs = np.concatenate([encoder.encode_texts([t for t, _ in texts[i:i + batch_size]])
                                for i in range(0, len(texts), batch_size)])
    text_groups = np.array([g for _, g in texts])
    report = EvalReport(model=encoder.spec, images=len(image_groups), texts=len(texts),
                        groups=len(set(text_groups)), rejected=int((~ok).sum()))
    report.text_to_image, chance_t2i = recall_at_k(text_vecs, text_groups, image_vecs, image_groups, T2I_KS)
    report.image_to_text, chance_i2t = recall_at_k(image_vecs, image_groups, text_vecs, text_groups, I2T_KS)
    report.chance = {**{f"t2i@{k}": v for k, v in chance_t2i.items()}, **{f"i2t@{k}": v for k, v in chance_i2t.items()}}
    report.seconds = round(time.perf_counter() - started, 3)
    return report


def embed_images(encoder: Any, uris: list[str], batch_size: int, workers: int) -> tuple[np.ndarray, np.ndarray]:
    """Embeddings of the readable images among ``uris`` and which ones were readable, through the ingest's own
    path (decode workers, the uint8 cut of the transform, the encoder's OOM back-off)."""
    from .ingest.encode import BatchEncoder
    from .ingest.pool import decode_batches

    batcher = BatchEncoder(encoder, batch_size)
    files = [ImageFile(u, 0, 0.0, None) for u in uris]
    vecs, ok = [], np.zeros(len(files), dtype=bool)
    for batch in decode_batches(files, batcher.worker_transform, batch_size=batch_size, workers=workers):
        good = [d for d in batch if d.pixels is not None]
        for d in good:
            ok[d.index] = True
        if good:
            vecs.append(batcher.images([d.pixels for d in good]))
    if not vecs:
        raise ConfigError("none of the images could be read")
    return np.concatenate(vecs), ok


def recall_at_k(queries: np.ndarray, q_groups: np.ndarray, items: np.ndarray, i_groups: np.ndarray,
            ks: Sequence[int]) -> tuple[dict[str, float], dict[int, float]]:
    """Recall@k in % (a hit when any of the top k items shares the query's group) and chance levels."""
    kmax = min(max(ks), len(items))
    hits = {k: 0 for k in ks}
    for start in range(0, len(queries), 1024):
        scores = queries[start:start + 1024] @ items.T
        top = np.argsort(-scores, axis=1, kind="stable")[:, :kmax]
        match = i_groups[top] == q_groups[start:start + 1024, None]
        for k in ks:
            hits[k] += int(match[:, :k].any(axis=1).sum())
    sizes = Counter(i_groups.tolist())
    chance = {k: 100 * float(np.mean([_p_any(len(items), sizes.get(g, 0), k) for g in q_groups])) for k in ks}
    return {f"R@{k}": round(100 * hits[k] / len(queries), 2) for k in ks}, {k: round(v, 2) for k, v in chance.items()}


def _p_any(n: int, m: int, k: int) -> float:
    """P(at least one of m relevant among n items lands in a random top k)."""
    if m == 0:
        return 0.0
    k = min(k, n)
    if n - m < k:
        return 1.0
    return 1.0 - math.exp(math.lgamma(n - m + 1) - math.lgamma(n - m - k + 1) - math.lgamma(n + 1) + math.lgamma(n - k + 1))
