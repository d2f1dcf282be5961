"""Top-5 label accuracy of stored labels (mmsearch.query.labels) on the labelled shared sets.

For each set every image is embedded once with the model (cached under /tmp), labelled exactly as
``update_labels`` does (zero-shot over the model's vocabulary, top 5, softmax at the model's temperature), and
scored: an image counts as right when one of its 5 names holds every content word of the set's label
(lower case, plural "s" dropped, "a/an/the/of/flag/emoji"-style filler kept only where the name has it).
``coverage`` is the share of images whose label matches *some* name of the vocabulary at all: the ceiling.

Run: ``HF_HUB_OFFLINE=1 python benchmarks/labels.py [--model builtin] [--sets ...]``; writes
``benchmarks/results/labels-<model>.json`` and prints a table. Needs ../shared/data (not a test).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from pathlib import Path

import numpy as np

DATA = Path(os.environ.get("MMSEARCH_SHARED_DATA", "/work/shared/data"))
SETS = ["art4apps_words", "iso_flags", "named_sample_images", "emoji:google", "emoji:openmoji", "foolbox_samples"]
CACHE = Path("/tmp/mmsearch-labels-bench")
STOP = {"a", "an", "the", "of", "and", "with", "in", "on", "drawing", "photo", "picture", "image"}


def words(text: str) -> set[str]:
    out = set()
    for w in re.findall(r"[a-z0-9]+", text.lower()):
        if w in STOP:
            continue
        out.add(w[:-1] if len(w) > 3 and w.endswith("s") and not w.endswith("ss") else w)
    return out


def truth(set_name: str, item: dict) -> str:
    """The label an image should get: the set's own label word(s)."""
    if set_name == "named_sample_images":
        return item["group"].split("_", 1)[1].replace("_", " ")
    if set_name == "art4apps_words":
        return item["group"]
    return item["text"]  # flags: "the flag of X"; emoji: the Unicode name; foolbox: the class name


def load_set(spec: str) -> list[dict]:
    sys.path.insert(0, str(DATA))
    from load_pairs import load

    name, _, style = spec.partition(":")
    return load(name, style=style) if style else load(name)


def embed(model: str, spec: str, items: list[dict]) -> np.ndarray:
    from PIL import Image

    from mmsearch.encoders import embed_pil_images, load_encoder

    path = CACHE / f"{re.sub(r'[^A-Za-z0-9]+', '_', model)}-{spec.replace(':', '_')}-{len(items)}.npy"
    if path.is_file():
        return np.load(path)
    encoder = load_encoder(model)
    out = []
    for start in range(0, len(items), 64):
        images = [Image.open(i["image"]).convert("RGBA") for i in items[start:start + 64]]
        out.append(embed_pil_images(encoder, images))
    vectors = np.concatenate(out).astype(np.float32)
    CACHE.mkdir(parents=True, exist_ok=True)
    np.save(path, vectors)
    return vectors


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="builtin")
    parser.add_argument("--sets", nargs="*", default=SETS)
    args = parser.parse_args()
    from mmsearch.encoders import canonical_spec, load_encoder
    from mmsearch.query.labels import LABEL_K, temperature_for, top_labels, vocabulary_embeddings, vocabulary_for

    model = canonical_spec(args.model)
    temperature = temperature_for(model)
    vocabulary = vocabulary_for(model)
    started = time.perf_counter()
    vocab_vectors = vocabulary_embeddings(load_encoder(model), model, vocabulary, CACHE / "vocab")
    vocab_words = [words(n) for n in vocabulary.names]
    rows = []
    for spec in args.sets:
        items = load_set(spec)
        t0 = time.perf_counter()
        vectors = embed(model, spec, items)
        embed_s = time.perf_counter() - t0
        indices, confidences = top_labels(vectors, vocab_vectors, LABEL_K, temperature, names=list(vocabulary.names))
        top1 = top5 = covered = 0
        for item, row in zip(items, indices):
            want = words(truth(spec.split(":")[0], item))
            ok = [bool(want) and want <= vocab_words[i] for i in row]
            top1 += ok[0]
            top5 += any(ok)
            covered += bool(want) and any(want <= w for w in vocab_words)
        n = len(items)
        rows.append({"set": spec, "images": n, "top1": round(100 * top1 / n, 1), "top5": round(100 * top5 / n, 1),
                     "coverage": round(100 * covered / n, 1),
                     "top5_of_covered": round(100 * top5 / covered, 1) if covered else None,
                     "mean_top1_confidence": round(float(confidences[:, 0].mean()), 3), "embed_s": round(embed_s, 1)})
    result = {"model": model, "vocabulary": vocabulary.name, "names": len(vocabulary.names), "k": LABEL_K,
              "temperature": temperature, "rows": rows, "seconds": round(time.perf_counter() - started, 1),
              "load": "2 shared CPU cores, 5 helpers working at once", "cpu_count": os.cpu_count()}
    out = Path(__file__).parent / "results" / f"labels-{model.replace(':', '_')}.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"model {model}, vocabulary {vocabulary.name} ({len(vocabulary.names)} names), top {LABEL_K}")
    print(f"temperature {temperature}; conf1: the mean confidence of the first label")
    print(f"{'set':22} {'images':>6} {'top1':>6} {'top5':>6} {'coverage':>8} {'top5/cov':>8} {'conf1':>6}")
    for r in rows:
        print(f"{r['set']:22} {r['images']:6d} {r['top1']:6.1f} {r['top5']:6.1f} {r['coverage']:8.1f} "
              f"{(r['top5_of_covered'] or 0):8.1f} {r['mean_top1_confidence']:6.3f}")
    print(f"written to {out}")


if __name__ == "__main__":
    main()
