"""Labels: the model's top concepts for each image, stored at index time (see docs/labels.md).

One approach for every model: zero-shot over a vocabulary. The vocabulary's prompts are embedded with the
collection's own text encoder (once per model and vocabulary: cached under the model cache), each image
embedding is scored against them by cosine, and the top ``LABEL_K`` names are kept with softmax confidences at
:func:`temperature_for` the model: CLIP's logit scale (100) for OpenCLIP and other models, ``BUILTIN_TEMPERATURE``
for the built-in model (docs/labels.md says how it was chosen).

Vocabularies: the built-in model's own classes (the 1,000 ImageNet classes of its class bank, plus the flag
bank of ``builtin:v2`` and the emoji bank of ``builtin:v3``, which ``builtin:v4`` shares); any other model the
shipped ImageNet-1k class names (``vocabulary/imagenet1k.json``, from PyPI clip-benchmark 1.6.2, MIT).

:func:`update_labels` is the one writer; it is incremental (only rows without labels are scored, deleted rows
are dropped) and runs inside the index run's writer transaction. :func:`match_labels` is what the ``labels``
filter uses.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Union

import numpy as np

from ..store.atomic import write_npy_atomic

if TYPE_CHECKING:
    import pyarrow as pa

    from ..encoders.base import Encoder
    from ..store import Store

log = logging.getLogger(__name__)

#: an encoder, or a function that loads one: called only when the vocabulary's embedding is not cached
EncoderSource = Union["Encoder", Callable[[], "Encoder"]]

#: names kept per image
LABEL_K = 5
#: softmax(TEMPERATURE * cosine): CLIP's logit scale (exp(4.6052) = 100), for every model but the built-in one
TEMPERATURE = 100.0
#: the built-in model's: where the mean top-1 label confidence equals the mean top-1 probability of the model's own
#: classifier (softmax of its class logits) on unlabelled images of the repository (data/sample, tests/fixtures)
BUILTIN_TEMPERATURE = 22.5
#: the labels filter matches a stored name only at this confidence or more (a 5th name at 0.001 says little)
FILTER_MIN_CONFIDENCE = 0.05
#: rows scored per matrix product (memory: rows x vocabulary floats)
BATCH_ROWS = 4096
VOCABULARY_DIR = Path(__file__).parent / "vocabulary"
IMAGENET_PROMPT = "a photo of a {}."
_ASSETS = Path(__file__).resolve().parent.parent / "encoders" / "assets"
#: the class banks each built-in version has beyond ImageNet (asset JSON files of mmsearch/encoders/assets)
_BUILTIN_BANKS = {
    "v1": (),
    "v2": ("builtin_v2_exemplars.json",),
    "v3": ("builtin_v2_exemplars.json", "builtin_v3_emoji.json"),
    "v4": ("builtin_v2_exemplars.json", "builtin_v3_emoji.json"),  # v3's classes (more exemplars, same names)
}
#: built-in versions whose text tower and classes equal an earlier version's: their vocabulary embeds the same,
#: so they share its cached (and shipped) embedding
_SAME_TEXTS = {"builtin:v4": "builtin:v3"}


@dataclass(frozen=True)
class Vocabulary:
    """Label names and, per name, the prompt texts whose mean text embedding stands for it."""

    name: str
    names: list[str]
    prompts: list[list[str]]

    @property
    def sha256(self) -> str:
        """A digest of the names and prompts: stored labels made from another vocabulary are made again."""
        data = json.dumps([self.names, self.prompts], ensure_ascii=False).encode("utf-8")
        return hashlib.sha256(data).hexdigest()


def imagenet_names() -> list[str]:
    """The 1,000 ImageNet-1k class names in class-index order (shipped: PyPI clip-benchmark 1.6.2, MIT)."""
    return list(json.loads((VOCABULARY_DIR / "imagenet1k.json").read_text("utf-8"))["names"])


def vocabulary_for(spec: str) -> Vocabulary:
    """The vocabulary labels are drawn from for the model ``spec`` (canonical, as in the manifest)."""
    imagenet = imagenet_names()
    names = list(imagenet)
    prompts = [[IMAGENET_PROMPT.format(n)] for n in imagenet]
    scheme, _, version = spec.partition(":")
    if scheme != "builtin":
        return Vocabulary("imagenet1k", names, prompts)
    banks = _BUILTIN_BANKS.get(version)
    if banks is None:
        log.warning("no label vocabulary is known for %s beyond ImageNet's classes", spec)
        banks = ()
    for file in banks:
        recipe = json.loads((_ASSETS / file).read_text("utf-8"))
        for entry in recipe["classes"]:
            kind = entry["id"].split(":", 1)[0]
            names.append(f"flag of {entry['name']}" if kind == "flag" else f"{entry['name']} {kind}")
            prompts.append(list(entry["texts"]))
    return Vocabulary("+".join(["imagenet1k", *(Path(b).stem for b in banks)]), names, prompts)


def temperature_for(spec: str) -> float:
    """The softmax temperature (logit scale) of the labels' confidences for the model ``spec``."""
    return BUILTIN_TEMPERATURE if spec.partition(":")[0] == "builtin" else TEMPERATURE


def vocabulary_embeddings(encoder: EncoderSource, spec: str, vocabulary: Vocabulary, cache: Path | None = None,
                          *, dim: int | None = None) -> np.ndarray:
    """(len(names), dim) float32 unit rows: per name, the normalised mean text embedding of its prompts.

    The default model's ship with the package (``mmsearch/query/vocabulary/``, float16), so a first index run on a
    new machine does not spend half a minute embedding its 7,640 prompts. Others are cached as
    ``labels/<spec>-<vocabulary sha256>.npy`` under the model cache (``cache`` or
    :func:`mmsearch.config.cache_dir`), so a collection's next index run does not embed them again: ``encoder``
    may be a function that loads one, called only when the cache has no embedding of ``dim`` columns."""
    from ..config import cache_dir

    key = _SAME_TEXTS.get(spec, spec)
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", key)[:80]
    digest = hashlib.sha256(f"{key}\n{vocabulary.sha256}".encode()).hexdigest()[:16]
    path = Path(cache or cache_dir()) / "labels" / f"{safe}-{digest}.npy"
    if not hasattr(encoder, "encode_texts"):
        loaded: Encoder | None = None

        def load() -> Encoder:
            nonlocal loaded
            loaded = loaded or encoder()  # type: ignore[operator]
            return loaded
    else:
        def load() -> Encoder:
            return encoder  # type: ignore[return-value]
    shipped = VOCABULARY_DIR / path.name  # the default model's, made by tools/build_label_vocabulary.py
    for candidate in (shipped, path):
        if not candidate.is_file():
            continue
        try:
            cached = np.load(candidate)
            if cached.ndim == 2 and len(cached) == len(vocabulary.names) and cached.shape[1] == (dim or load().dim):
                cached = cached.astype(np.float32)  # the shipped file is float16: unit rows again
                return cached / np.maximum(np.linalg.norm(cached, axis=1, keepdims=True), 1e-12)
        except (OSError, ValueError):
            pass  # a damaged cache file is made again
    encoder = load()
    flat = [p for prompts in vocabulary.prompts for p in prompts]
    owner = np.repeat(np.arange(len(vocabulary.prompts)), [len(p) for p in vocabulary.prompts])
    vectors = np.asarray(encoder.encode_texts(flat), dtype=np.float32)
    sums = np.zeros((len(vocabulary.names), vectors.shape[1]), np.float32)
    np.add.at(sums, owner, vectors)
    out = sums / np.maximum(np.linalg.norm(sums, axis=1, keepdims=True), 1e-12)
    try:  # a unique temporary per writer: two index runs filling the cache at once do not mix their bytes
        write_npy_atomic(path, out)
    except OSError as exc:  # a read-only cache costs only the time to embed them again
        log.debug("could not cache label embeddings at %s: %s", path, exc)
    return out



def top_labels(embeddings: np.ndarray, vocabulary_vectors: np.ndarray, k: int = LABEL_K,
               temperature: float = TEMPERATURE, names: list[str] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Indices (n, k) of the ``k`` best vocabulary rows for each embedding, best first, and their softmax
    confidences (over the whole vocabulary, at ``temperature``). With ``names`` (one per row), rows that share a
    name count as one label: the first row of the name, with the confidence of them all (ImageNet has two
    "missile" classes, and a hit should not show "missile" twice at half the confidence)."""
    groups = _same_name_groups(names) if names is not None else []
    k = min(k, len(vocabulary_vectors) - sum(len(g) - 1 for g in groups))
    indices = np.zeros((len(embeddings), k), np.int64)
    confidences = np.zeros((len(embeddings), k), np.float32)
    for start in range(0, len(embeddings), BATCH_ROWS):
        logits = temperature * (np.asarray(embeddings[start:start + BATCH_ROWS], np.float32) @ vocabulary_vectors.T)
        logits -= logits.max(axis=1, keepdims=True)
        probs = np.exp(logits)
        probs /= probs.sum(axis=1, keepdims=True)
        for first, *others in groups:
            probs[:, first] += probs[:, others].sum(axis=1)
            probs[:, others] = -1.0  # never among the best
        top = np.argpartition(-probs, k - 1, axis=1)[:, :k]
        order = np.argsort(-np.take_along_axis(probs, top, axis=1), axis=1, kind="stable")
        top = np.take_along_axis(top, order, axis=1)
        indices[start:start + len(top)] = top
        confidences[start:start + len(top)] = np.take_along_axis(probs, top, axis=1)
    return indices, confidences


def _same_name_groups(names: list[str]) -> list[list[int]]:
    """The row numbers of each name that more than one row has, first row first."""
    rows: dict[str, list[int]] = {}
    for i, name in enumerate(names):
        rows.setdefault(name, []).append(i)
    return [group for group in rows.values() if len(group) > 1]


def update_labels(store: Store, encoder: EncoderSource, *, modality: str = "images", cache: Path | None = None,
                  vocabulary: Vocabulary | None = None) -> int:
    """Label the rows of ``modality`` that have no labels yet, drop those of deleted rows, and write the labels
    file when anything changed (a commit: inside a writer transaction, a checkpoint). Returns how many rows
    were scored. Labels made with another vocabulary, k or temperature are all made again.

    ``encoder`` is the collection's encoder, or a function that loads it (called only when the vocabulary's
    embedding is not cached yet: an index run with nothing new, or with the cache warm, loads no model).
    ``vocabulary`` replaces the model's own (:func:`vocabulary_for`), e.g. a domain's names."""
    import pyarrow as pa

    from ..store import arrow

    spec = store.manifest.model.spec
    vocabulary = vocabulary or vocabulary_for(spec)
    temperature = temperature_for(spec)
    about = {"vocabulary": vocabulary.name, "vocabulary_sha256": vocabulary.sha256, "k": LABEL_K,
             "temperature": temperature}
    info = store.manifest.labels.get(modality) or {}
    old = store.read_labels(modality) if all(info.get(k) == v for k, v in about.items()) else None
    labelled = _ids(old) if old is not None else np.zeros(0, np.int64)
    kept_parts: list[pa.Table] = []
    new_ids: list[np.ndarray] = []
    new_vectors: list[np.ndarray] = []
    live: list[np.ndarray] = []
    from ..store.schema import embeddings_to_numpy

    for shard in store.manifest.shards[modality]:
        ids = _ids(store.read_shard(shard, ["id"]))
        live.append(ids)
        missing = ids[~np.isin(ids, labelled)]
        if len(missing):  # only these rows' embeddings are read (the row groups holding them)
            table = store.read_shard(shard, ["id", "embedding"], ids=missing)
            new_ids.append(_ids(table))
            new_vectors.append(embeddings_to_numpy(table.column("embedding"), store.manifest.model.dim))
    live_ids = np.concatenate(live) if live else np.zeros(0, np.int64)
    dropped = 0
    if old is not None and len(old):
        keep = np.isin(_ids(old), live_ids)
        dropped = int((~keep).sum())
        kept_parts.append(old.filter(arrow.array(keep, pa.bool_())) if dropped else old)
    scored = int(sum(len(i) for i in new_ids))
    if not scored and not dropped and (old is not None or not len(live_ids)):
        return 0
    if scored:
        vectors = vocabulary_embeddings(encoder, spec, vocabulary, cache, dim=store.manifest.model.dim)
        indices, confidences = top_labels(np.concatenate(new_vectors), vectors, LABEL_K, temperature,
                                          names=list(vocabulary.names))
        names = np.asarray(vocabulary.names, dtype=object)
        kept_parts.append(pa.table({
            "id": arrow.array(np.concatenate(new_ids), pa.int64()),
            "labels": arrow.array([list(names[row]) for row in indices], pa.list_(pa.string())),
            "confidences": arrow.array([[round(float(c), 4) for c in row] for row in confidences],
                                       pa.list_(pa.float32())),
        }))
    table = pa.concat_tables(kept_parts) if kept_parts else _empty()
    store.write_labels(modality, table, about)
    log.info("labels: %d %s scored, %d dropped (%s, %d names)", scored, modality, dropped, vocabulary.name,
             len(vocabulary.names))
    return scored


def labels_of(table: pa.Table | None) -> dict[int, list[dict[str, Any]]]:
    """``{id: [{"name", "confidence"}, ...]}`` from a labels table (as :meth:`Store.read_labels` returns)."""
    if table is None:
        return {}
    out = {}
    for row in table.to_pylist():
        out[int(row["id"])] = [{"name": n, "confidence": round(float(c), 4)}
                               for n, c in zip(row["labels"] or [], row["confidences"] or [])]
    return out


def match_labels(table: pa.Table | None, wanted: Iterable[str], min_confidence: float = FILTER_MIN_CONFIDENCE) -> np.ndarray:
    """Ids whose stored labels of at least ``min_confidence`` match one of ``wanted``: a name equal to it or
    holding it as whole words, ignoring case (``cat`` matches "tabby cat" and "cat face emoji", not "catamaran")."""
    patterns = [re.compile(rf"(?<![\w]){re.escape(w.strip().lower())}(?![\w])") for w in wanted if w.strip()]
    if table is None or not patterns:
        return np.zeros(0, np.int64)
    ids = _ids(table)
    hits = [i for i, names, confidences in zip(ids.tolist(), table.column("labels").to_pylist(),
                                               table.column("confidences").to_pylist())
            if any(c >= min_confidence and p.search(n.lower())
                   for n, c in zip(names or [], confidences or []) for p in patterns)]
    return np.asarray(hits, np.int64)


def _ids(table: pa.Table) -> np.ndarray:
    return np.asarray(table.column("id").to_pylist(), dtype=np.int64)


def _empty() -> pa.Table:
    import pyarrow as pa

    from ..store import arrow

    return pa.table({"id": arrow.array([], pa.int64()), "labels": arrow.array([], pa.list_(pa.string())),
                     "confidences": arrow.array([], pa.list_(pa.float32()))})

