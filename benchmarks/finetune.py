"""Adapter training (mmsearch.train) on the real evaluation sets in ../shared/data: recall before and after.

For each set and seed, pairs are split by group (no caption or label of the test split is seen in training),
an adapter is trained on the frozen base features of the training split with the default TrainConfig, and
text->image / image->text recall@1/5 on the held-out split is reported for the base model and the adapter,
with the training time on this machine. The seed picks the split, so several seeds give several test splits:
the per-set mean over seeds is the number to read on small sets. Prints one table and writes
benchmarks/results/finetune.json.

    python benchmarks/finetune.py [--model builtin] [--sets iso_flags ...] [--seeds 0 1 2] [--head linear|mlp]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, replace
from pathlib import Path

from mmsearch.evaluation import Pair
from mmsearch.train import TrainConfig, train_adapter

ROOT = Path(__file__).resolve().parent
SETS = {  # name -> (loader set, loader kwargs)
    "art4apps": ("art4apps_words", {"template": "a drawing of {}"}),
    "iso_flags": ("iso_flags", {}),
    "emoji_google": ("emoji", {"style": "google"}),
    "named_sample_images": ("named_sample_images", {}),
}
METRICS = [("text_to_image", "R@1"), ("text_to_image", "R@5"), ("image_to_text", "R@1"), ("image_to_text", "R@5")]
KEYS = [f"{'t2i' if d == 'text_to_image' else 'i2t'} {k} {w}" for d, k in METRICS for w in ("before", "after")]


def load_set(data: Path, name: str, kwargs: dict) -> list[Pair]:
    sys.path.insert(0, str(data))
    from load_pairs import load

    return [Pair(x["image"], x["text"], x["group"]) for x in load(name, **kwargs) if os.path.exists(x["image"])]


def embed_set(pairs: list[Pair], model: str, out: Path) -> float:
    """Compute and cache the frozen base features where train_adapter looks for them; seconds taken."""
    from mmsearch.encoders import load_encoder
    from mmsearch.train.data import base_features, clean_pairs

    started = time.perf_counter()
    base_features(clean_pairs(pairs)[0], load_encoder(model), out / "cache", batch_size=32, workers=4)
    return round(time.perf_counter() - started, 1)


def run_set(data: Path, set_name: str, model: str, config: TrainConfig, seeds: list[int], work: Path) -> list[dict]:
    loader, kwargs = SETS[set_name]
    pairs = load_set(data, loader, kwargs)
    out = work / set_name
    feature_seconds = embed_set(pairs, model, out)
    rows = []
    for seed in seeds:
        started = time.perf_counter()
        report = train_adapter(pairs, base=model, out=out, config=replace(config, seed=seed), force=True)
        row = {"set": set_name, "seed": seed, "model": model, "pairs": report.pairs, "test_pairs": report.test_pairs,
               "selection": report.validation["method"], "val_mrr base": report.validation["base"],
               "val_mrr adapter": report.validation["adapter"], "improved": report.improved,
               "best_epoch": report.best_epoch, "train_seconds": round(time.perf_counter() - started, 1),
               "feature_seconds": feature_seconds}
        for direction, k in METRICS:
            short = "t2i" if direction == "text_to_image" else "i2t"
            row[f"{short} {k} before"] = report.before[direction][k]
            row[f"{short} {k} after"] = report.after[direction][k]
        print_table([row], header=not rows and set_name == next(iter(SETS)))
        rows.append(row)
    return rows


def mean_row(rows: list[dict]) -> dict:
    """The per-set mean over seeds (test splits), with the median training time."""
    row = {"set": rows[0]["set"], "seed": "mean", "pairs": rows[0]["pairs"],
           "test_pairs": round(statistics.mean(r["test_pairs"] for r in rows), 1),
           "improved": f"{sum(r['improved'] for r in rows)}/{len(rows)}",
           "train_seconds": statistics.median(r["train_seconds"] for r in rows),
           "feature_seconds": rows[0]["feature_seconds"]}
    row.update({k: round(statistics.mean(r[k] for r in rows), 2) for k in KEYS})
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="builtin")
    parser.add_argument("--data", default=str(ROOT.parent.parent / "shared" / "data"))
    parser.add_argument("--sets", nargs="*", default=list(SETS))
    parser.add_argument("--seeds", nargs="*", type=int, default=[0, 1, 2])
    parser.add_argument("--head", default="linear", choices=["linear", "mlp"])
    parser.add_argument("--work", help="keep the adapters and feature caches here (default: a temporary folder)")
    parser.add_argument("--out", default=str(ROOT / "results" / "finetune.json"))
    args = parser.parse_args()
    config = TrainConfig(head=args.head)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.work or tmp)
        rows = [r for name in args.sets for r in run_set(Path(args.data), name, args.model, config, args.seeds, work)]
    means = [mean_row([r for r in rows if r["set"] == name]) for name in args.sets]
    print("\nmean over seeds:")
    print_table(means)
    result = {"config": {**asdict(config), "seed": args.seeds},
              "machine": {"cpu_count": os.cpu_count(), "platform": platform.platform()},
              "note": "train_seconds: training only (selection + refit + before/after report), base features cached; "
                      "feature_seconds: computing the frozen base features once per set",
              "rows": rows, "means": means}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {args.out}")


def print_table(rows: list[dict], header: bool = True) -> None:
    cols = ["set", "seed", "pairs", "test_pairs", *KEYS, "improved", "train_seconds"]
    widths = [max(len(c), 8) for c in cols]
    if header:
        print("  ".join(c.ljust(w) for c, w in zip(cols, widths)))
    for r in rows:
        print("  ".join(str(r.get(c, "")).ljust(w) for c, w in zip(cols, widths)), flush=True)


if __name__ == "__main__":
    main()
