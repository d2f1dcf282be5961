"""Embeddings of fixed texts (an index build's no-match and tuning queries), kept in the model cache.

Every build of an index encodes the same few dozen texts (:data:`mmsearch.query.calibration.NULL_QUERIES`, and
for an image collection without texts the tuning probes). With a large text tower that is seconds per run (2.1 s
for ViT-B-32's 32 no-match queries on 2 cores) for vectors that depend only on the model. They are saved once as
``texts/<key>.npy`` under the model cache (:func:`mmsearch.config.cache_dir`), where the key is the texts, the
model's spec and preprocessing id, and what identifies its weights: the encoder's ``weights_key`` when it has one
(an OpenCLIP model's content-keyed ONNX export folder, the built-in model's text tower), else the model's
embedding of one fixed text. Weights that change under the same spec
(a file replaced at the same path) get another key, so the saved vectors are not used for them.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Sequence

import numpy as np

from ..store.atomic import write_npy_atomic
from .base import Encoder

#: embedded on every call (one text, milliseconds): what tells one model's weights from another's
FINGERPRINT_TEXT = "a photo of something"


def fixed_text_embeddings(encoder: Encoder, texts: Sequence[str], *, cache: Path | None = None) -> np.ndarray:
    """``encoder.encode_texts(texts)``, from the model cache when this model embedded these texts before."""
    from ..config import cache_dir

    texts = list(texts)
    if not texts:
        return np.asarray(encoder.encode_texts(texts), dtype=np.float32)
    named = getattr(encoder, "weights_key", None)  # names the weights without loading a tower
    if isinstance(named, str):
        weights = named.encode()
    else:  # runtimes differ in ulps: float16 keeps one machine's runs on one key
        weights = np.asarray(encoder.encode_texts([FINGERPRINT_TEXT]), dtype=np.float16).tobytes()
    key = hashlib.sha256("\n".join([encoder.spec, encoder.preprocess_id, *texts]).encode() + weights)
    path = Path(cache or cache_dir()) / "texts" / f"{key.hexdigest()[:32]}.npy"
    try:
        saved = np.load(path, allow_pickle=False)
        if saved.shape == (len(texts), encoder.dim) and saved.dtype == np.float32:
            return saved
    except (OSError, ValueError):
        pass  # not there yet, or damaged: embedded again and saved over it
    vectors = np.asarray(encoder.encode_texts(texts), dtype=np.float32)
    try:
        write_npy_atomic(path, vectors)
    except OSError:
        pass  # an unwritable cache: embedded again next time
    return vectors

