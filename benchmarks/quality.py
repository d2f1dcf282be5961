"""Retrieval quality of a model on the real evaluation sets in ../shared/data, with chance levels.

Runs `mmsearch.evaluate` (text->image recall@1/5/10, image->text recall@1/5; a hit when any item of
the query's group is retrieved) on each set, for each model given (default: the built-in model and the
random-init OpenCLIP floor), prints one table and writes benchmarks/results/quality.json.

    python benchmarks/quality.py [--models builtin openclip:mms-tiny/random] [--data ../shared/data]

The set "emoji (google) without flags" leaves out the 270 emoji of Unicode's "Flags" category, to show
what a model does on emoji apart from flags (builtin:v2 has exemplar classes for flags).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import mmsearch
from mmsearch.evaluation import Pair

ROOT = Path(__file__).resolve().parent
SETS = {  # name -> (loader set, loader kwargs)
    "art4apps (a drawing of {label})": ("art4apps_words", {"template": "a drawing of {}"}),
    "iso_flags": ("iso_flags", {}),
    "emoji (google)": ("emoji", {"style": "google"}),
    "emoji (google) without flags": ("emoji", {"style": "google", "exclude_category": "Flags"}),
    "foolbox imagenet": ("foolbox_samples", {"dataset": "imagenet"}),
    "named_sample_images": ("named_sample_images", {}),
}
METRICS = [("t2i", "text_to_image", "R@1"), ("t2i", "text_to_image", "R@5"), ("t2i", "text_to_image", "R@10"),
           ("i2t", "image_to_text", "R@1"), ("i2t", "image_to_text", "R@5")]


def load_set(data: Path, name: str, kwargs: dict) -> list[Pair]:
    sys.path.insert(0, str(data))
    from load_pairs import load

    kwargs = dict(kwargs)
    exclude = kwargs.pop("exclude_category", None)
    skip: set[str] = set()
    if exclude:  # emoji only: their categories are in emoji.jsonl, keyed like the groups (hexcode)
        with open(data / name / "emoji.jsonl", encoding="utf-8") as f:
            rows = [json.loads(line) for line in f if line.strip()]
        skip = {r["hexcode"] for r in rows if r.get("category") == exclude}
    return [Pair(x["image"], x["text"], x["group"]) for x in load(name, **kwargs)
            if os.path.exists(x["image"]) and x["group"] not in skip]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["builtin", "openclip:mms-tiny/random"])
    parser.add_argument("--data", default=str(ROOT.parent.parent / "shared" / "data"))
    parser.add_argument("--sets", nargs="*", default=[s for s in SETS if "without" not in s], choices=list(SETS))
    parser.add_argument("--out", default=str(ROOT / "results" / "quality.json"))
    args = parser.parse_args()

    rows = []
    for set_name in args.sets:
        loader, kwargs = SETS[set_name]
        pairs = load_set(Path(args.data), loader, kwargs)
        for model in args.models:
            report = mmsearch.evaluate(pairs, model=model, batch_size=64, workers=2)
            rows.append({"set": set_name, **report.to_dict()})
            print(f"done {set_name} / {model} in {report.seconds:.0f}s", file=sys.stderr)

    header = f"{'set':<34}{'model':<28}" + "".join(f"{p + m[1:]:>14}" for p, _, m in METRICS) + f"{'mean':>8}"
    print(header)
    for r in rows:
        cells = [r[key][m] for _, key, m in METRICS]
        chance = [r["chance"][f"{p}@{m[2:]}"] for p, _, m in METRICS]
        r["mean"] = round(sum(cells) / len(cells), 2)
        r["mean_chance"] = round(sum(chance) / len(chance), 2)
        print(f"{r['set']:<34}{r['model']:<28}" + "".join(f"{c:5.1f} ({h:4.1f})".rjust(14) for c, h in zip(cells, chance))
              + f"{r['mean']:>8.1f}")
    out = {"benchmark": "quality", "date": time.strftime("%Y-%m-%d"), "note": "recall in %, chance in parentheses",
           "rows": rows}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
