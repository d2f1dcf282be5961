"""Text-side ConSE for builtin:v4's text -> image search, measured on development sets before any goal set.

    python tools/experiments/text_conse/text_conse.py --dev     # development sets only
    python tools/experiments/text_conse/text_conse.py --goal    # the goal sets (run once, after the choice)

An image embeds as a convex combination of the class bank's rows (ConSE); a text embeds as itself. ``proj-T-a``
projects the text the same way: the softmax (temperature ``T``) of its cosines with the class rows, times the
bank, centred and normalised like an image, then mixed with the text itself (weight ``a`` on the text). Texts and
images then meet inside the bank's hull. Uses the embeddings cached by ../hubness/hubness.py (/tmp/hubness).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent / "hubness")]

from hubness import CACHE, MODEL, embedded, experiment_args, report, t2i, unit  # noqa: E402

from mmsearch.encoders.registry import load_encoder  # noqa: E402


def project(texts: np.ndarray, bank: np.ndarray, mean: np.ndarray, temperature: float) -> np.ndarray:
    rows = unit(bank - mean)
    logits = texts @ rows.T / temperature
    logits -= logits.max(axis=1, keepdims=True)
    w = np.exp(logits)
    w /= w.sum(axis=1, keepdims=True)
    return unit(w @ bank - mean)


def variants(texts: np.ndarray, bank: np.ndarray, mean: np.ndarray) -> dict[str, np.ndarray]:
    out = {"v4": texts}
    for t in (0.02, 0.05, 0.1):
        p = project(texts, bank, mean, t)
        for a in (0.0, 0.5, 0.75):
            out[f"proj-{t:g}-{a:g}"] = unit(a * texts + (1 - a) * p)
    return out


def main() -> None:
    args, sets, results = experiment_args(__doc__, HERE / "results.json")
    encoder = load_encoder(MODEL)
    encoder.encode_images  # noqa: B018 - the bank loads with the image side
    bank, mean = np.asarray(encoder._bank, np.float32), np.asarray(encoder._mean, np.float32)
    for name, make in sets.items():
        images, image_groups, texts, text_groups = embedded(encoder, name, make())
        zero = np.zeros(len(images), np.float32)
        results[name] = {v: t2i(t, text_groups, images, zero, image_groups) for v, t in variants(texts, bank, mean).items()}
        report(f"{name} ({len(images)} images, {len(texts)} texts)", results[name])
    args.out.write_text(json.dumps(results, indent=2))
    assert CACHE.exists()

if __name__ == "__main__":
    main()
