"""Ingest throughput on real image corpora: the whole ``mmsearch.index`` against the encoder alone, by
``--workers`` setting, for this code and (``--code NAME=DIR``) other checkouts of it, in one run.

    python benchmarks/ingest.py /work/shared/data/art4apps_words/images [--images 300] \\
        [--models builtin openclip:ViT-B-32/random] [--workers auto 0] \\
        [--code after=. --code before=/tmp/mmsearch-de72a50] [--copies 1] [--repeats 3] [--out FILE.json]

For each model, on the same files (the first ``--images`` PNGs / JPEGs under the source, sorted; ``--copies``
repeats a small corpus as more symlinks, dedup is off so every file is encoded):

- ``NAME/W``: ``mmsearch.index`` in a fresh process running the code in DIR (``this`` = the checkout holding
  this script) with ``workers=W`` (``auto``: the default, the cores split from a short calibration). Each
  process first indexes 8 other images (untimed: imports, the model's first run), then the corpus. Two rates:
  ``ingest`` (``report.seconds``: discover, decode, encode, write shards) and ``index`` (``result.seconds``: the
  whole call, with the FAISS build and the labels; the model was loaded by the warm-up); a NAME ending in
  ``-sequential`` runs that code with the encoder thread off (each batch decoded, then encoded);
- ``encoder``: the encoder alone on pre-decoded, pre-transformed float32 batches (the ceiling);
- ``decode``: this code's decode of each file (read, hash, decode, the workers' transform) in one thread, for
  the arithmetic of what 2 cores allow.

The arms run interleaved, ``--repeats`` rounds; each figure is the median. Prints a table and writes JSON with
the load average before and after.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parents[1]
RESULTS = HERE / "benchmarks" / "results" / "ingest.json"
SUFFIXES = (".png", ".jpg", ".jpeg")
RUN_SCRIPT = """
import json, os, shutil, sys
import mmsearch
warm, folder, work, model, batch, workers, sequential = sys.argv[1:8]
workers = None if workers == "auto" else int(workers)
if sequential == "1":  # decode a batch, then encode it: no encoder thread (issue 16's knob)
    import mmsearch.ingest.stage
    mmsearch.ingest.stage.OVERLAP_ENCODE = False
for name, src in (("warm", warm), ("run", folder)):
    out = os.path.join(work, name + ".mms")
    shutil.rmtree(out, ignore_errors=True)
    r = mmsearch.index(src, out=out, model=model, batch_size=int(batch), workers=workers, dedup=False)
    shutil.rmtree(out, ignore_errors=True)
print(json.dumps({"images": r.report.images_embedded, "rejected": r.report.rejected, "ingest_s": r.report.seconds,
                  "index_s": r.seconds, "code": os.path.dirname(os.path.dirname(mmsearch.__file__))}))
"""


def corpus(source: Path, count: int, copies: int, work: Path) -> Path:
    """A folder of ``count`` symlinks to the first images (sorted) under ``source``, each taken ``copies`` times."""
    files = sorted(p for p in source.rglob("*") if p.suffix.lower() in SUFFIXES)
    files = [f for f in files for _ in range(copies)][:count]
    folder = work / f"corpus-{len(files)}"
    folder.mkdir(parents=True)
    for i, f in enumerate(files):
        (folder / f"{i:06d}{f.suffix.lower()}").symlink_to(f)
    return folder


def warm_folder(source: Path, work: Path) -> Path:
    """8 images from the end of the corpus's list, for each process's untimed first index."""
    files = sorted(p for p in source.rglob("*") if p.suffix.lower() in SUFFIXES)[-8:]
    folder = work / "warm"
    folder.mkdir()
    for i, f in enumerate(files):
        (folder / f"w{i}{f.suffix.lower()}").symlink_to(f)
    return folder


def pipeline_run(code: Path, folder: Path, warm: Path, model: str, batch_size: int, workers: str, work: Path,
                 sequential: bool = False) -> dict:
    env = {**os.environ, "PYTHONPATH": str(code), "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([sys.executable, "-c", RUN_SCRIPT, str(warm), str(folder), str(work), model,
                           str(batch_size), workers, "1" if sequential else "0"],
                          capture_output=True, text=True, env=env, cwd=work)
    if done.returncode:
        raise SystemExit(f"index with {code} failed:\n{done.stderr[-3000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    if Path(result["code"]).resolve() != code.resolve():
        raise SystemExit(f"the run imported mmsearch from {result['code']}, not {code}")
    if result["rejected"]:
        raise SystemExit(f"the pipeline rejected {result['rejected']} images")
    return {"ingest": result["images"] / result["ingest_s"], "index": result["images"] / result["index_s"]}


def predecoded(folder: Path, encoder: Any) -> list:
    from PIL import Image

    from mmsearch.ingest.decode import to_rgb

    out = []
    for p in sorted(folder.iterdir()):
        with Image.open(p) as im:
            out.append(encoder.image_transform(to_rgb(im)))
    return out


def stack(items: list, encoder: Any) -> Any:
    """One batch as the pipeline hands it over: NumPy for an encoder that takes it (``numpy_input``), else torch."""
    import numpy as np

    if getattr(encoder, "numpy_input", False):
        return np.stack([np.asarray(t) for t in items])
    import torch

    return torch.stack([torch.as_tensor(t) for t in items])


def encoder_rate(tensors: list, encoder: Any, batch_size: int) -> float:
    batches = [stack(tensors[i:i + batch_size], encoder) for i in range(0, len(tensors), batch_size)]
    start = time.perf_counter()
    for b in batches:
        encoder.encode_images(b)
    return len(tensors) / (time.perf_counter() - start)


def decode_rate(folder: Path, encoder: Any, batch_size: int) -> float:
    """Images/s of this code's decode (read, hash, decode, the workers' part of the transform), one thread."""
    from mmsearch.ingest.decode import DecodeSettings, decode_image
    from mmsearch.ingest.encode import BatchEncoder
    from mmsearch.ingest.stage import model_input_px

    transform = BatchEncoder(encoder, batch_size).worker_transform
    settings = DecodeSettings(transform=transform, draft_px=model_input_px(transform))
    paths = sorted(folder.iterdir())
    start = time.perf_counter()
    for n, p in enumerate(paths):
        decode_image(str(p), settings, n)
    return len(paths) / (time.perf_counter() - start)


def measure(model: str, folder: Path, warm: Path, codes: dict[str, Path], args: argparse.Namespace,
            work: Path) -> dict:
    from mmsearch.encoders.registry import load_encoder

    encoder = load_encoder(model)
    tensors = predecoded(folder, encoder)
    encoder_rate(tensors[: args.batch_size], encoder, args.batch_size)  # the model's first run
    arms = [f"{name}/{w}" for name in codes for w in args.workers]
    runs: dict[str, list[Any]] = {"encoder": [], "decode": [], **{a: [] for a in arms}}
    for _ in range(args.repeats):
        runs["encoder"].append(encoder_rate(tensors, encoder, args.batch_size))
        runs["decode"].append(decode_rate(folder, encoder, args.batch_size))
        for arm in arms:
            name, workers = arm.split("/")
            runs[arm].append(pipeline_run(codes[name], folder, warm, model, args.batch_size, workers, work,
                                          sequential=name.endswith("-sequential")))
    med: dict[str, Any] = {k: statistics.median(runs[k]) for k in ("encoder", "decode")}
    for arm in arms:
        med[arm] = {k: statistics.median(r[k] for r in runs[arm]) for k in ("ingest", "index")}
    return {"model": model, "images": len(tensors), "images_per_s": med, "runs": runs,
            "vs_encoder": {arm: {k: v / med["encoder"] for k, v in med[arm].items()} for arm in arms}}


def table(results: list[dict], corpus_name: str) -> str:
    lines = [f"{corpus_name}: images/s (median), ingest | whole index(); ratio to the encoder alone in ()"]
    for r in results:
        rate = r["images_per_s"]
        lines.append(f"  {r['model']} ({r['images']} images): encoder alone {rate['encoder']:.1f}, "
                     f"decode alone (1 thread) {rate['decode']:.1f}")
        for arm, ratio in r["vs_encoder"].items():
            lines.append(f"    {arm:<14} {rate[arm]['ingest']:7.1f} ({ratio['ingest']:.2f}) | "
                         f"{rate[arm]['index']:7.1f} ({ratio['index']:.2f})")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("source", type=Path, help="folder holding the corpus images (searched recursively)")
    parser.add_argument("--images", type=int, default=300)
    parser.add_argument("--copies", type=int, default=1, help="take each file this many times (small corpora)")
    parser.add_argument("--models", nargs="+", default=["builtin", "openclip:ViT-B-32/random"])
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--workers", nargs="+", default=["auto", "0"],
                        help="decode worker settings to run the pipeline with (auto or a number)")
    parser.add_argument("--code", action="append", default=[], metavar="NAME=DIR",
                        help="a checkout to run as arms NAME/W (e.g. before=/tmp/mmsearch-de72a50; repeat it; "
                        "default: this=the checkout holding this script); a NAME ending in -sequential turns the "
                        "encoder thread off (ingest.stage.OVERLAP_ENCODE)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=RESULTS, help="where to write the JSON results")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    codes = {c.split("=", 1)[0]: Path(c.split("=", 1)[1]).resolve() for c in args.code} or {"this": HERE}
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="mms-bench-ingest-") as tmp:
        work = Path(tmp)
        folder = corpus(args.source, args.images, args.copies, work)
        warm = warm_folder(args.source, work)
        results = [measure(m, folder, warm, codes, args, work) for m in args.models]
    load_after = os.getloadavg()
    print(table(results, f"{args.source} x{args.copies}"))
    print(f"load average before {load_before[0]:.2f}, after {load_after[0]:.2f} (1 min)")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform(),
                    "load_average_before": load_before, "load_average_after": load_after},
        "codes": {k: str(v) for k, v in codes.items()},
        "args": {k: str(v) for k, v in vars(args).items()}, "results": results}, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
