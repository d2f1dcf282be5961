"""Ingest throughput and memory on a real image corpus.

    apt-get download openclipart-png && dpkg-deb -x openclipart-png_*.deb /tmp/clipart
    python benchmarks/ingest.py /tmp/clipart [--images 2000] [--models openclip:mms-tiny/random builtin]
        [--workers auto 0 2]

For each model, in the same run and on the same files:

- ``pipeline``: ``mmsearch.index`` end to end, once per ``--workers`` setting (``auto``: the cores split from a
  short calibration of decode and encode costs, the default since issue 16; a number: that many decode
  processes) (discover, decode in worker processes, encode, write shards;
  model loading and the FAISS build are not counted: ``report.seconds``), dedup off so every file is encoded;
- ``encoder``: the encoder alone on pre-decoded, pre-transformed tensors (the ceiling the pipeline can reach);
- ``naive``: a single-process loop (decode a batch, then encode it, no overlap).

Each figure is the median of ``--repeats`` runs. Peak RSS of the indexing process (and of its largest
decode worker) is measured in fresh subprocesses at two corpus sizes. Prints a table and writes
``benchmarks/results/ingest.json`` (or ``--out``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import mmsearch

RESULTS = Path(__file__).resolve().parent / "results" / "ingest.json"
RSS_SCRIPT = """
import json, resource, sys
import mmsearch
r = mmsearch.index(sys.argv[1], out=sys.argv[2], model=sys.argv[3], batch_size=int(sys.argv[4]), dedup=False,
                   workers=None if sys.argv[5] == "None" else int(sys.argv[5]))
print(json.dumps({"images": r.report.images_embedded,
                  "main_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "worker_mib": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024}))
"""


def corpus(source: Path, count: int, work: Path) -> Path:
    """A folder of ``count`` symlinks to the first PNGs / JPEGs (sorted) under ``source``."""
    files = sorted(p for p in source.rglob("*") if p.suffix.lower() in (".png", ".jpg", ".jpeg"))[:count]
    if len(files) < count:
        raise SystemExit(f"only {len(files)} images under {source}; need {count}")
    folder = work / f"corpus-{count}"
    folder.mkdir(parents=True)
    for i, f in enumerate(files):
        (folder / f"{i:06d}{f.suffix.lower()}").symlink_to(f)
    return folder


def pipeline_rate(folder: Path, model: str, batch_size: int, workers: int | None, work: Path) -> float:
    out = work / "pipeline.mms"
    shutil.rmtree(out, ignore_errors=True)
    result = mmsearch.index(folder, out=out, model=model, batch_size=batch_size, workers=workers, dedup=False)
    if result.report.rejected:
        raise SystemExit(f"the pipeline rejected {result.report.rejected} images: {dict(result.report.rejected_reasons)}")
    return result.report.images_embedded / result.report.seconds


def predecoded(folder: Path, encoder) -> list:  # noqa: ANN001
    from PIL import Image

    from mmsearch.ingest.decode import to_rgb

    out = []
    for p in sorted(folder.iterdir()):
        try:
            with Image.open(p) as im:
                out.append(encoder.image_transform(to_rgb(im)))
        except OSError:
            continue
    return out


def stack(items: list, encoder):  # noqa: ANN001, ANN201
    """One batch as the pipeline hands it over: NumPy for an encoder that takes it (``numpy_input``), else torch."""
    import numpy as np

    if getattr(encoder, "numpy_input", False):
        return np.stack([np.asarray(t) for t in items])
    import torch

    return torch.stack([torch.as_tensor(t) for t in items])


def encoder_rate(tensors: list, encoder, batch_size: int) -> float:  # noqa: ANN001
    batches = [stack(tensors[i:i + batch_size], encoder) for i in range(0, len(tensors), batch_size)]
    start = time.perf_counter()
    for b in batches:
        encoder.encode_images(b)
    return len(tensors) / (time.perf_counter() - start)


def naive_rate(folder: Path, encoder, batch_size: int) -> float:  # noqa: ANN001
    from PIL import Image

    start, done, batch = time.perf_counter(), 0, []
    for p in sorted(folder.iterdir()):
        try:
            with Image.open(p) as im:
                batch.append(encoder.image_transform(im.convert("RGB")))
        except OSError:
            continue
        if len(batch) == batch_size:
            encoder.encode_images(stack(batch, encoder))
            done, batch = done + len(batch), []
    if batch:
        encoder.encode_images(stack(batch, encoder))
        done += len(batch)
    return done / (time.perf_counter() - start)


def peak_rss(folder: Path, model: str, batch_size: int, workers: int | None, work: Path) -> dict:
    out = work / f"rss-{folder.name}.mms"
    shutil.rmtree(out, ignore_errors=True)
    done = subprocess.run([sys.executable, "-c", RSS_SCRIPT, str(folder), str(out), model, str(batch_size), str(workers)],
                          capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def measure(model: str, folders: list[Path], args: argparse.Namespace, work: Path) -> dict:
    from mmsearch.encoders.registry import load_encoder

    encoder = load_encoder(model)
    big = folders[-1]
    tensors = predecoded(big, encoder)
    settings = {w: None if w == "auto" else int(w) for w in args.workers}
    pipeline_rate(folders[0], model, args.batch_size, settings[args.workers[0]], work)  # warm-up (page cache, imports)
    rates: dict[str, list[float]] = {"encoder": [], "naive": [], **{f"pipeline/{w}": [] for w in settings}}
    for _ in range(args.repeats):
        rates["encoder"].append(encoder_rate(tensors, encoder, args.batch_size))
        for w, workers in settings.items():
            rates[f"pipeline/{w}"].append(pipeline_rate(big, model, args.batch_size, workers, work))
        rates["naive"].append(naive_rate(big, encoder, args.batch_size))
    med = {k: statistics.median(v) for k, v in rates.items()}
    med["pipeline"] = med[f"pipeline/{args.workers[0]}"]
    rss = {f.name: peak_rss(f, model, args.batch_size, settings[args.workers[0]], work) for f in folders}
    return {"model": model, "images": len(tensors), "images_per_s": med, "runs": rates,
            "pipeline_vs_encoder": med["pipeline"] / med["encoder"], "pipeline_vs_naive": med["pipeline"] / med["naive"],
            "pipeline_vs_encoder_by_workers": {w: med[f"pipeline/{w}"] / med["encoder"] for w in settings},
            "peak_rss_mib": rss}


def table(results: list[dict]) -> str:
    lines = [f"{'model':<26}{'images':>7}{'pipeline/s':>12}{'encoder/s':>11}{'naive/s':>9}{'pipe/enc':>10}"
             f"{'pipe/naive':>11}  peak RSS MiB (main / worker) by corpus size"]
    for r in results:
        rate = r["images_per_s"]
        rss = ", ".join(f"{k.split('-')[1]}: {v['main_mib']:.0f} / {v['worker_mib']:.0f}" for k, v in r["peak_rss_mib"].items())
        lines.append(f"{r['model']:<26}{r['images']:>7}{rate['pipeline']:>12.1f}{rate['encoder']:>11.1f}{rate['naive']:>9.1f}"
                     f"{r['pipeline_vs_encoder']:>10.2f}{r['pipeline_vs_naive']:>11.2f}  {rss}")
        by_workers = ", ".join(f"{w}: {rate[f'pipeline/{w}']:.1f}/s ({ratio:.2f}x the encoder)"
                               for w, ratio in r["pipeline_vs_encoder_by_workers"].items())
        lines.append(f"{'':<4}pipeline by --workers: {by_workers}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("source", type=Path, help="folder holding the corpus PNGs (searched recursively)")
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--small", type=int, default=500, help="the smaller corpus for the RSS comparison")
    parser.add_argument("--models", nargs="+", default=["openclip:mms-tiny/random", "builtin"])
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--workers", nargs="+", default=["auto", "0", "2"],
                        help="decode worker settings to run the pipeline with (auto or a number; the first is the "
                        "headline and the RSS runs')")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=RESULTS, help="where to write the JSON results")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    with tempfile.TemporaryDirectory(prefix="mms-bench-ingest-") as tmp:
        work = Path(tmp)
        folders = [corpus(args.source, n, work) for n in (args.small, args.images)]
        results = [measure(m, folders, args, work) for m in args.models]
    print(table(results))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
        "args": {k: str(v) for k, v in vars(args).items()}, "results": results}, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
