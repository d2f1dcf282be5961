"""The no-match signal on the shared evaluation sets: can `good_match` be trusted?

Protocol (issue 19): on each set, every query against the whole collection (its answer is there) and against
the collection with its answer's items removed. For each signal: its AUROC (answer there vs removed) and the
precision/recall of `good_match` at the default cut. Directions: text->image and image->text on every set, and
image->image across drawing styles on emoji (a Noto emoji as the query, the OpenMoji emoji of the same code
point as its answer). Signals:

- raw: the best score, cut at the raw threshold an index build keeps today (95th percentile of the best scores
  of NULL_QUERIES against the collection);
- z: the best score's z-score against the query's own scores over the collection (mmsearch.indexes.calibration
  .match_z, from the collection's mean and covariance); its mark is good_matches' decision on the first of the
  10 best hits (match_marks: z above z_cut = sqrt(2 ln rows), copies of a hit counted once). Nothing is fitted
  on any set: the moments come from the collection itself, the cut from its size alone. With the answer
  removed, the moments are those of the collection without it (computed exactly from the scores).

"ceiling" is 0.5 + R@1/2: a signal that looks at the top hit cannot tell "there" from "removed" on a query whose
answer is not the top hit (both lists start with the same item), so its AUROC is about at most this.
"top hit" is a second view, the question a per-hit mark answers: the AUROC of the signal between queries whose
top hit is an answer and queries whose top hit is wrong (answer there), and the precision/recall of the mark on
the top hit (in the JSON: "top_hit"), and of the marks on each of the 10 best hits ("hits").

    python benchmarks/no_match.py [--model builtin] [--data ../shared/data] [--cache /tmp/mmsearch-no-match]

Embeddings are cached in --cache (one .npz per model and set). Prints a table and writes
benchmarks/results/no_match.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

from mmsearch.encoders.registry import load_encoder
from mmsearch.evaluation import embed_images
from mmsearch.indexes.calibration import ScoreMoments, match_marks, match_z, threshold_from_null_scores, z_cut
from mmsearch.query.calibration import NULL_QUERIES

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT))
from quality import auroc, load_set  # noqa: E402  (one loader and one AUROC for both benchmarks)

SETS = {  # name -> (loader set, loader kwargs)
    "art4apps": ("art4apps_words", {"template": "a drawing of {}"}),
    "iso_flags": ("iso_flags", {}),
    "emoji (noto)": ("emoji", {"style": "google"}),
    "emoji (openmoji)": ("emoji", {"style": "openmoji"}),
    "foolbox imagenet": ("foolbox_samples", {"dataset": "imagenet"}),
    "named_sample_images": ("named_sample_images", {}),
}


def embedded(encoder, data: Path, name: str, cache: Path) -> dict[str, np.ndarray]:
    """Images, texts and their groups of a set, embedded once per model (cached)."""
    file = cache / encoder.spec.replace(":", "_") / f"{name.replace(' ', '_').replace('(', '').replace(')', '')}.npz"
    if file.exists():
        return dict(np.load(file, allow_pickle=False))
    loader, kwargs = SETS[name]
    triples = load_set(data, loader, kwargs)
    images = sorted({i: g for i, _, g in triples}.items())
    texts = sorted({t: g for _, t, g in triples}.items())
    image_vecs, ok = embed_images(encoder, [u for u, _ in images], 64, 2)
    out = {"image_vecs": np.asarray(image_vecs, np.float32),
           "image_groups": np.array([g for (_, g), good in zip(images, ok) if good]),
           "text_vecs": np.concatenate([encoder.encode_texts([t for t, _ in texts[i:i + 256]])
                                        for i in range(0, len(texts), 256)]).astype(np.float32),
           "text_groups": np.array([g for _, g in texts])}
    file.parent.mkdir(parents=True, exist_ok=True)
    np.savez(file, **out)
    return out


def measure(queries: np.ndarray, query_groups: np.ndarray, items: np.ndarray, item_groups: np.ndarray,
            nulls: np.ndarray) -> dict:
    """Both signals for one direction: queries with an answer among ``items``, there vs removed."""
    answers = item_groups[None, :] == query_groups[:, None]
    keep = answers.any(axis=1)
    queries, answers = queries[keep], answers[keep]
    scores = queries.astype(np.float64) @ items.T.astype(np.float64)
    order = np.argsort(-scores, axis=1)
    top = np.take_along_axis(answers, order[:, :10], axis=1)
    r1, r10 = float(top[:, 0].mean()), float(top.any(axis=1).mean())
    there = scores.max(axis=1)
    removed = np.where(answers, -np.inf, scores).max(axis=1)
    moments = ScoreMoments.of([items])
    mean_there, std_there = moments.score_mean_std(queries)
    z_there = match_z(queries, there, moments)
    rest = (~answers).sum(axis=1)  # the moments of the collection without the answer, exactly, from the scores
    mean = np.where(answers, 0.0, scores).sum(axis=1) / rest
    std = np.sqrt(np.maximum(np.where(answers, 0.0, scores ** 2).sum(axis=1) / rest - mean ** 2, 1e-12))
    z_removed = (removed - mean) / std
    best = -np.sort(-scores, axis=1)[:, :10]  # the hits a search returns, best first
    best_removed = -np.sort(-np.where(answers, -np.inf, scores), axis=1)[:, :10]
    marks_there = match_marks(best, mean_there, std_there, len(items))
    good_there = marks_there[:, 0]  # the mark on the first hit
    best_right = np.take_along_axis(answers, order[:, :10], axis=1)  # is each of the 10 best hits an answer?
    good_removed = match_marks(best_removed, mean, std, rest)[:, 0]
    raw_cut = threshold_from_null_scores((nulls @ items.T).max(axis=1))
    cut = z_cut(len(items))

    def pr(pos: np.ndarray, neg: np.ndarray) -> dict:  # marked good with the answer there / removed
        tp, fp = int(pos.sum()), int(neg.sum())
        return {"precision": round(tp / max(tp + fp, 1), 3), "recall": round(tp / len(pos), 3)}

    right = top[:, 0]  # is the top hit an answer? (a per-hit mark's own question, with the answer there)
    top_hit = {"raw": auroc(there[right], there[~right]), "z": auroc(z_there[right], z_there[~right])} \
        if 0 < right.sum() < len(right) else {"raw": None, "z": None}
    def hits_pr(marked: np.ndarray) -> dict:  # the marks on the 10 best hits vs whether each is an answer
        return {"precision": round(float((marked & best_right).sum() / max(marked.sum(), 1)), 3),
                "recall": round(float((marked & best_right).sum() / max(best_right.sum(), 1)), 3)}

    def top_pr(marked: np.ndarray) -> dict:  # the mark on the top hit vs whether that hit is right
        return {"precision": round(float((marked & right).sum() / max(marked.sum(), 1)), 3),
                "recall": round(float((marked & right).sum() / max(right.sum(), 1)), 3)}

    return {"queries": int(len(queries)), "items": int(len(items)), "R@1": round(100 * r1, 1),
            "R@10": round(100 * r10, 1), "ceiling": round(0.5 + r1 / 2, 3),
            "top_hit_auroc": {k: None if v is None else round(v, 3) for k, v in top_hit.items()},
            "raw": {"auroc": round(auroc(there, removed), 3), "cut": round(raw_cut, 4), **pr(there > raw_cut, removed > raw_cut),
                    "top_hit": top_pr(there > raw_cut), "hits": hits_pr(best > raw_cut)},
            "z": {"auroc": round(auroc(z_there, z_removed), 3), "cut": round(cut, 3), **pr(good_there, good_removed),
                  "top_hit": top_pr(good_there), "hits": hits_pr(marks_there)}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="builtin")
    parser.add_argument("--data", default=str(ROOT.parent.parent / "shared" / "data"))
    parser.add_argument("--cache", default="/tmp/mmsearch-no-match")
    parser.add_argument("--out", default=str(ROOT / "results" / "no_match.json"))
    args = parser.parse_args()
    started = time.perf_counter()
    encoder = load_encoder(args.model)
    nulls = encoder.encode_texts(list(NULL_QUERIES)).astype(np.float64)
    sets = {name: embedded(encoder, Path(args.data), name, Path(args.cache)) for name in SETS}
    rows = []
    for name, d in sets.items():
        rows.append({"set": name, "direction": "text->image",
                     **measure(d["text_vecs"], d["text_groups"], d["image_vecs"], d["image_groups"], nulls)})
        rows.append({"set": name, "direction": "image->text",
                     **measure(d["image_vecs"], d["image_groups"], d["text_vecs"], d["text_groups"], nulls)})
    noto, openmoji = sets["emoji (noto)"], sets["emoji (openmoji)"]
    rows.append({"set": "emoji (noto -> openmoji)", "direction": "image->image",
                 **measure(noto["image_vecs"], noto["image_groups"], openmoji["image_vecs"], openmoji["image_groups"],
                           nulls)})

    print(f"{'set':<26}{'direction':<14}{'n':>6}{'R@1':>6}{'R@10':>6}{'ceil':>6} |"
          f"{'raw AUROC':>10}{'P':>6}{'R':>6} |{'z AUROC':>9}{'P':>6}{'R':>6}{'cut':>6} |{'top hit raw/z':>14}")
    for r in rows:
        raw, z = r["raw"], r["z"]
        print(f"{r['set']:<26}{r['direction']:<14}{r['queries']:>6}{r['R@1']:>6.1f}{r['R@10']:>6.1f}{r['ceiling']:>6.2f} |"
              f"{raw['auroc']:>10.3f}{raw['precision']:>6.2f}{raw['recall']:>6.2f} |"
              f"{z['auroc']:>9.3f}{z['precision']:>6.2f}{z['recall']:>6.2f}{z['cut']:>6.2f} |"
              + "{:>14}".format("/".join("-" if v is None else f"{v:.2f}" for v in r["top_hit_auroc"].values())))
    out = {"benchmark": "no_match", "date": time.strftime("%Y-%m-%d"), "model": encoder.spec,
           "machine": f"{platform.machine()}, {os.cpu_count()} cores shared with other jobs",
           "seconds": round(time.perf_counter() - started, 1),
           "note": "AUROC: answer there vs removed; P/R of good_match at the default cut (raw: the build's "
                   "null-query threshold on the best score; z: match_z > z_cut(rows)); ceiling = 0.5 + R@1/2",
           "rows": rows}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
