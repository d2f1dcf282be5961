"""Write the default built-in model's label vocabulary embedding into mmsearch/query/vocabulary/ (float16).

``mmsearch.index`` labels each image against its model's vocabulary (docs/labels.md); embedding the built-in
model's 7,640 prompts takes about half a minute on 2 CPU cores, once per machine. Shipping the result makes the
first index run on a new machine pay nothing. Deterministic: the same model and vocabulary give the same file.
Run again whenever the vocabulary or the built-in model's text tower changes (tests/test_labels.py checks the
shipped file is there and equal to what the encoder gives).

    python tools/build_label_vocabulary.py [--spec builtin:v3]

(``builtin:v4`` has v3's classes and text tower: it reads v3's file, ``mmsearch.query.labels._SAME_TEXTS``.)
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np

from mmsearch.encoders import load_encoder
from mmsearch.query.labels import VOCABULARY_DIR, vocabulary_embeddings, vocabulary_for


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spec", default="builtin:v3", help="canonical model spec (default: builtin:v3)")
    spec = parser.parse_args().spec
    vocabulary = vocabulary_for(spec)
    with tempfile.TemporaryDirectory() as cache:
        vectors = vocabulary_embeddings(load_encoder(spec), spec, vocabulary, Path(cache))
        name = next((Path(cache) / "labels").glob("*.npy")).name
    for old in VOCABULARY_DIR.glob(f"{name.rsplit('-', 1)[0]}-*.npy"):
        old.unlink()  # another vocabulary's file for this model
    np.save(VOCABULARY_DIR / name, vectors.astype(np.float16))
    print(f"{VOCABULARY_DIR / name}: {vectors.shape[0]} names x {vectors.shape[1]}")


if __name__ == "__main__":
    main()
