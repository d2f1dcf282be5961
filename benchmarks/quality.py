"""Retrieval quality and the no-match signal of models on the real evaluation sets in ../shared/data.

For each set and model the images and texts are embedded once, then:

- recall, exactly as `mmsearch eval` computes it (text->image R@1/5/10, image->text R@1/5, a hit when any item
  of the query's group is retrieved; chance levels beside them);
- the no-match signal: every text query against the whole set (its answer is there) and against the set with
  its answer's images removed. The signal is the best score; reported: its AUROC (answer there vs removed)
  and the precision/recall of `good_match` at the default threshold, which is computed as an index build
  computes it (the 95th percentile of the best scores of NULL_QUERIES against the collection).

    python benchmarks/quality.py [--models builtin:v2 builtin:v3] [--data ../shared/data]

Prints one table and writes benchmarks/results/quality.json. Sets: "emoji (noto)" and "emoji (openmoji)"
use the Unicode names as queries; "emoji (openmoji, CLDR text)" uses OpenMoji's own annotations (CLDR short
names) instead, a query wording that no model's descriptions were built from. "... without flags" leaves out
the 270 emoji of Unicode's "Flags" category. builtin:v3's emoji exemplars are Twemoji: neither Noto nor
OpenMoji images were used to build or calibrate it.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

from mmsearch.encoders.registry import load_encoder
from mmsearch.evaluation import embed_images, recall_at_k
from mmsearch.query.calibration import NULL_QUERIES, threshold_from_null_scores

ROOT = Path(__file__).resolve().parent
SETS = {  # name -> (loader set, loader kwargs)
    "art4apps (a drawing of {label})": ("art4apps_words", {"template": "a drawing of {}"}),
    "iso_flags": ("iso_flags", {}),
    "emoji (noto)": ("emoji", {"style": "google"}),
    "emoji (noto) without flags": ("emoji", {"style": "google", "exclude_category": "Flags"}),
    "emoji (openmoji)": ("emoji", {"style": "openmoji"}),
    "emoji (openmoji, CLDR text)": ("emoji", {"style": "openmoji", "text_field": "openmoji_annotation"}),
    "foolbox imagenet": ("foolbox_samples", {"dataset": "imagenet"}),
    "named_sample_images": ("named_sample_images", {}),
}
DEFAULT_SETS = ["art4apps (a drawing of {label})", "iso_flags", "emoji (noto)", "emoji (openmoji)",
                "emoji (openmoji, CLDR text)", "foolbox imagenet", "named_sample_images"]


def load_set(data: Path, name: str, kwargs: dict) -> list[tuple[str, str, str]]:
    """(image, text, group) triples of a shared set."""
    sys.path.insert(0, str(data))
    from load_pairs import load

    kwargs = dict(kwargs)
    exclude = kwargs.pop("exclude_category", None)
    text_field = kwargs.pop("text_field", None)
    rows: dict[str, dict] = {}
    if name == "emoji":
        with open(data / name / "emoji.jsonl", encoding="utf-8") as f:
            rows = {r["hexcode"]: r for r in (json.loads(line) for line in f if line.strip())}
    out = []
    for x in load(name, **kwargs):
        row = rows.get(x["group"], {})
        if not os.path.exists(x["image"]) or (exclude and row.get("category") == exclude):
            continue
        text = row.get(text_field) if text_field else x["text"]
        if text:
            out.append((x["image"], str(text), x["group"]))
    return out


def auroc(pos: np.ndarray, neg: np.ndarray) -> float:
    """P(a random positive scores above a random negative), ties counted half."""
    values = np.concatenate([pos, neg])
    order = values.argsort(kind="stable")
    ranks = np.empty(len(values))
    ranks[order] = np.arange(1, len(values) + 1)
    for v in np.unique(values):  # average ranks of ties
        tied = values == v
        if tied.sum() > 1:
            ranks[tied] = ranks[tied].mean()
    return float((ranks[: len(pos)].sum() - len(pos) * (len(pos) + 1) / 2) / (len(pos) * len(neg)))


_IMAGE_CACHE: dict = {}


def measure(model: str, triples: list[tuple[str, str, str]]) -> dict:
    started = time.perf_counter()
    encoder = load_encoder(model)
    images = sorted({i: g for i, _, g in triples}.items())
    texts = sorted({t: g for _, t, g in triples}.items())
    key = (model, tuple(u for u, _ in images))  # sets that share images (two text wordings) embed them once
    if key not in _IMAGE_CACHE:
        _IMAGE_CACHE[key] = embed_images(encoder, [u for u, _ in images], 64, 2)
    image_vecs, ok = _IMAGE_CACHE[key]
    image_groups = np.array([g for (_, g), good in zip(images, ok) if good])
    text_vecs = np.concatenate([encoder.encode_texts([t for t, _ in texts[i:i + 256]]) for i in range(0, len(texts), 256)])
    text_groups = np.array([g for _, g in texts])
    t2i, chance_t2i = recall_at_k(text_vecs, text_groups, image_vecs, image_groups, (1, 5, 10))
    i2t, chance_i2t = recall_at_k(image_vecs, image_groups, text_vecs, text_groups, (1, 5))
    # the no-match signal: best score with the answer there vs with its images removed
    scores = text_vecs @ image_vecs.T
    there = scores.max(axis=1)
    removed = np.where(image_groups[None, :] == text_groups[:, None], -np.inf, scores).max(axis=1)
    threshold = threshold_from_null_scores((encoder.encode_texts(list(NULL_QUERIES)) @ image_vecs.T).max(axis=1))
    true_pos, false_pos = int((there > threshold).sum()), int((removed > threshold).sum())
    return {
        "model": encoder.spec, "images": len(image_groups), "texts": len(texts), "groups": len(set(text_groups)),
        "text_to_image": t2i, "image_to_text": i2t,
        "chance": {**{f"t2i@{k}": v for k, v in chance_t2i.items()}, **{f"i2t@{k}": v for k, v in chance_i2t.items()}},
        "no_match": {"auroc": round(auroc(there, removed), 3), "threshold": round(threshold, 4),
                     "precision": round(true_pos / max(true_pos + false_pos, 1), 3),
                     "recall": round(true_pos / len(there), 3)},
        "seconds": round(time.perf_counter() - started, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["builtin:v2", "builtin:v3"])
    parser.add_argument("--data", default=str(ROOT.parent.parent / "shared" / "data"))
    parser.add_argument("--sets", nargs="*", default=DEFAULT_SETS, choices=list(SETS))
    parser.add_argument("--out", default=str(ROOT / "results" / "quality.json"))
    args = parser.parse_args()

    rows = []
    for set_name in args.sets:
        loader, kwargs = SETS[set_name]
        triples = load_set(Path(args.data), loader, kwargs)
        for model in args.models:
            rows.append({"set": set_name, **measure(model, triples)})
            print(f"done {set_name} / {model} in {rows[-1]['seconds']:.0f}s", file=sys.stderr, flush=True)

    print(f"{'set':<32}{'model':<12}{'t2i R@1':>14}{'t2i R@10':>14}{'i2t R@1':>14}"
          f"{'no-match AUROC':>16}{'prec':>6}{'rec':>6}")
    for r in rows:
        cells = [(r["text_to_image"]["R@1"], r["chance"]["t2i@1"]), (r["text_to_image"]["R@10"], r["chance"]["t2i@10"]),
                 (r["image_to_text"]["R@1"], r["chance"]["i2t@1"])]
        nm = r["no_match"]
        print(f"{r['set']:<32}{r['model']:<12}" + "".join(f"{c:5.1f} ({h:4.1f})".rjust(14) for c, h in cells)
              + f"{nm['auroc']:>16.3f}{nm['precision']:>6.2f}{nm['recall']:>6.2f}")
    out = {"benchmark": "quality", "date": time.strftime("%Y-%m-%d"),
           "note": "recall in %, chance beside it; no_match: AUROC of the best score (answer there vs removed), "
                   "precision/recall of good_match at the default threshold", "rows": rows}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
