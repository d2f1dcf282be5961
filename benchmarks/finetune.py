"""Adapter training (mmsearch.train) on the real evaluation sets in ../shared/data: recall before and after.

For each set, pairs are split by group (no caption or label of the test split is seen in training),
an adapter is trained on the frozen base features of the training split, and text->image / image->text
recall@1/5 on the held-out split is reported for the base model and the adapter, with the training time
on this machine. Prints one table and writes benchmarks/results/finetune.json.

    python benchmarks/finetune.py [--model builtin] [--sets iso_flags ...] [--head linear|mlp]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
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


def load_set(data: Path, name: str, kwargs: dict) -> list[Pair]:
    sys.path.insert(0, str(data))
    from load_pairs import load

    return [Pair(x["image"], x["text"], x["group"]) for x in load(name, **kwargs) if os.path.exists(x["image"])]


def run_set(data: Path, set_name: str, model: str, config: TrainConfig, work: Path) -> dict:
    loader, kwargs = SETS[set_name]
    pairs = load_set(data, loader, kwargs)
    started = time.perf_counter()
    report = train_adapter(pairs, base=model, out=work / set_name, config=config, workers=4)
    row = {"set": set_name, "model": model, "pairs": report.pairs, "test_pairs": report.test_pairs,
           "epochs_run": report.epochs_run, "best_epoch": report.best_epoch,
           "train_seconds": round(time.perf_counter() - started, 1)}
    for direction, k in METRICS:
        short = "t2i" if direction == "text_to_image" else "i2t"
        row[f"{short} {k} before"] = report.before[direction][k]
        row[f"{short} {k} after"] = report.after[direction][k]
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="builtin")
    parser.add_argument("--data", default=str(ROOT.parent.parent / "shared" / "data"))
    parser.add_argument("--sets", nargs="*", default=list(SETS))
    parser.add_argument("--head", default="linear", choices=["linear", "mlp"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=str(ROOT / "results" / "finetune.json"))
    args = parser.parse_args()
    config = TrainConfig(head=args.head, seed=args.seed)
    with tempfile.TemporaryDirectory() as work:
        rows = [run_set(Path(args.data), name, args.model, config, Path(work)) for name in args.sets]
    print_table(rows)
    result = {"config": config.__dict__, "machine": {"cpu_count": os.cpu_count(), "platform": platform.platform()},
              "note": "train_seconds includes computing the frozen base features (first run, no cache)", "rows": rows}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {args.out}")


def print_table(rows: list[dict]) -> None:
    cols = ["set", "pairs", "test_pairs"] + [f"{'t2i' if d == 'text_to_image' else 'i2t'} {k} {w}"
                                             for d, k in METRICS for w in ("before", "after")] + ["train_seconds"]
    widths = [max(len(c), *(len(str(r[c])) for r in rows)) for c in cols]
    print("  ".join(c.ljust(w) for c, w in zip(cols, widths)))
    for r in rows:
        print("  ".join(str(r[c]).ljust(w) for c, w in zip(cols, widths)))


if __name__ == "__main__":
    main()
