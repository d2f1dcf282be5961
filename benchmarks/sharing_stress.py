"""The concurrency scene of tests/test_sharing.py at a bigger size: writers on different folders (some killed
with SIGKILL and started again), readers re-opening and searching in a loop, ``mmsearch serve`` polled over
HTTP, all at once on one collection. Prints a table and writes benchmarks/results/sharing_stress.json.

Run: ``python benchmarks/sharing_stress.py [--writers 4] [--images 40] [--readers 3] [--kills 6] [--seed 0]
[--shard-rows 2]``.
The run fails (exit 1) on any lost or duplicated row, reader exception or HTTP 5xx, or if ``verify --deep``
finds a problem.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from sharing_harness import run  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--writers", type=int, default=4)
    parser.add_argument("--images", type=int, default=40)
    parser.add_argument("--readers", type=int, default=3)
    parser.add_argument("--kills", type=int, default=6)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--shard-rows", type=int, default=2,
                        help="the writers' --shard-rows: 2, many checkpoints; above --images, one small shard a run")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "sharing_stress.json")
    args = parser.parse_args()
    import mmsearch

    with tempfile.TemporaryDirectory(prefix="mms-stress-") as work:
        o = run(Path(work), writers=args.writers, images=args.images, readers=args.readers, kills=args.kills,
                seed=args.seed, timeout_s=1800, shard_rows=args.shard_rows)
        images, _ = mmsearch.open(o.out).metadata("image")
        texts, _ = mmsearch.open(o.out).metadata("text")
        expected = Counter(str(p) for f in o.folders for p in f.glob("*.png"))
        got = Counter(images.column("uri").to_pylist())
        ids = images.column("id").to_pylist() + texts.column("id").to_pylist()
        problems = mmsearch.verify(o.out, deep=True)
        from mmsearch.store import Store

        with Store.open(o.out) as store:  # the shard files listed at the end (small ones are merged as writes go)
            listed = {m: len(store.manifest.shards[m]) for m in ("images", "texts")}
        result = {
            "writers": args.writers, "images_per_folder": args.images, "readers": args.readers,
            "writer_runs": o.writer_runs, "kills": o.kills, "seconds": round(o.seconds, 1),
            "rows_expected": sum(expected.values()), "rows_found": sum(got.values()),
            "rows_missing": sum((expected - got).values()), "rows_extra": sum((got - expected).values()),
            "duplicate_ids": len(ids) - len(set(ids)), "captions": texts.num_rows,
            "reader_searches": o.reader_searches, "reader_errors": len(o.reader_errors),
            "versions_seen_by_a_reader": o.versions_seen, "http_requests": o.http_requests, "http_5xx": o.http_5xx,
            "http_other_errors": len(o.http_errors), "shards_listed": listed, "verify_problems": problems,
        }
    width = max(map(len, result))
    for key, value in result.items():
        print(f"{key:<{width}}  {value}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(f"wrote {args.out}")
    bad = (result["rows_missing"] or result["rows_extra"] or result["duplicate_ids"] or result["reader_errors"]
           or result["http_5xx"] or result["http_other_errors"] or problems or result["captions"] != result["rows_found"])
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
