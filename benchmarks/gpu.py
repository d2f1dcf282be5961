"""GPU paths and throughput, on a CUDA machine (CI has none: run by hand where a GPU is).

    python benchmarks/gpu.py [--images 6000] [--vectors 1000000] [--out benchmarks/results/gpu.json]

What it measures, each stage in the same run (one failing stage is recorded, the others still run):

- ``encoder``: OpenCLIP image towers alone (random weights saved to a file: throughput does not depend on
  the weights) on pre-transformed batches on the GPU, bf16 autocast as mmsearch runs them;
- ``ingest``: ``mmsearch.index`` end to end on a folder of real JPEG photos (variants of ``data/sample``:
  random crops, flips, re-encodings, ~640 px) with decode worker processes feeding the GPU, against the
  encoder alone; plus a check that the embeddings written through the CUDA feeding path (pinned buffers,
  non-blocking copies) match a CPU float32 encoding of the same files;
- ``faiss``: building an IVF index with mmsearch's own train/add code (``mmsearch.indexes.build``), with
  and without faiss's GPUs (``MMSEARCH_FAISS_GPU=0`` for the CPU run) on the same vectors and training
  sample, recall@10 of both against exact search; and exact (flat) search QPS, CPU against GPU.

Medians of ``--repeats`` runs. Prints a table and writes JSON (after every stage, so a run cut short
still leaves what it measured).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shutil
import statistics
import sys
import tempfile
import time
import traceback
from multiprocessing import Pool
from pathlib import Path
from typing import Any, Callable

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "gpu.json"


# -- corpus ------------------------------------------------------------------------------------------
def _variant(job: tuple[str, str, int]) -> None:
    from PIL import Image, ImageOps

    src, dst, seed = job
    rng = random.Random(seed)
    with Image.open(src) as im:
        im = im.convert("RGB")
        w, h = im.size
        f = rng.uniform(0.6, 1.0)
        cw, ch = int(w * f), int(h * f)
        x, y = rng.randint(0, w - cw), rng.randint(0, h - ch)
        im = im.crop((x, y, x + cw, y + ch))
        scale = 640 / max(im.size)
        im = im.resize((max(1, int(im.width * scale)), max(1, int(im.height * scale))), Image.BICUBIC)
        if rng.random() < 0.5:
            im = ImageOps.mirror(im)
        im.save(dst, "JPEG", quality=rng.randint(80, 95))


def make_corpus(count: int, folder: Path) -> Path:
    """``count`` distinct ~640 px JPEGs cut from the bundled sample photos."""
    sources = sorted(p for p in (ROOT / "data" / "sample").iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    folder.mkdir(parents=True, exist_ok=True)
    jobs = [(str(sources[i % len(sources)]), str(folder / f"{i:06d}.jpg"), i) for i in range(count)]
    with Pool(os.cpu_count()) as pool:
        pool.map(_variant, jobs, chunksize=64)
    return folder


# -- stages ------------------------------------------------------------------------------------------
def random_weights(arch: str, work: Path) -> str:
    import torch

    from mmsearch.encoders.openclip import _open_clip  # open_clip with mmsearch's model configs added

    open_clip = _open_clip()
    path = work / f"{arch}-random.pt"
    if not path.exists():
        torch.manual_seed(0)
        model = open_clip.create_model(arch, pretrained=None)
        torch.save(model.state_dict(), path)
    return f"openclip:{arch}@{path}"


def encoder_rate(spec: str, batch: int, iters: int, device: str) -> dict[str, Any]:
    import torch
    from PIL import Image

    from mmsearch.encoders.registry import load_encoder

    enc = load_encoder(spec, device=device)
    x = torch.randn(batch, *enc.image_transform(Image.new("RGB", (640, 480))).shape)
    for _ in range(3):
        enc.encode_images(x)
    runs = []
    for _ in range(iters):
        start = time.perf_counter()
        enc.encode_images(x)  # returns host arrays: includes the copies both ways
        runs.append(batch / (time.perf_counter() - start))
    return {"spec": spec.split("@")[0], "batch": batch, "images_per_s": statistics.median(runs)}


def ingest_rate(folder: Path, spec: str, batch: int, workers: int, work: Path, repeats: int, device: str) -> dict[str, Any]:
    """End-to-end images/s, workers shipping uint8 pixels (the default) and float32 pixels (the baseline:
    the model's whole transform in the workers), alternating in the same run."""
    import mmsearch
    import mmsearch.ingest.encode as encode

    split = encode.split_transform
    rates: dict[str, list[float]] = {"uint8": [], "float32": []}
    out = work / "gpu-ingest.mms"
    for _ in range(repeats):
        for mode in rates:
            encode.split_transform = split if mode == "uint8" else (lambda transform: None)
            shutil.rmtree(out, ignore_errors=True)
            r = mmsearch.index(folder, out=out, model=spec, device=device, batch_size=batch, workers=workers,
                               dedup=False, index_factory="Flat")
            if r.report.rejected:
                raise RuntimeError(f"rejected {r.report.rejected}: {dict(r.report.rejected_reasons)}")
            rates[mode].append(r.report.images_embedded / r.report.seconds)
    encode.split_transform = split
    med = {mode: statistics.median(v) for mode, v in rates.items()}
    return {"images": r.report.images_embedded, "workers": workers, "batch": batch, "images_per_s": med["uint8"],
            "images_per_s_float32_transfer": med["float32"], "uint8_vs_float32": med["uint8"] / med["float32"],
            "runs": rates, "collection": str(out)}


def cuda_feed_matches_cpu(collection: Path, spec: str, n: int = 64) -> dict[str, Any]:
    """Cosine between embeddings stored by the GPU run and a CPU float32 encoding of the same files."""
    import torch
    from PIL import Image

    import mmsearch
    from mmsearch.encoders.registry import load_encoder
    from mmsearch.ingest.decode import to_rgb

    col = mmsearch.open(collection)
    ids = [int(i) for i in next(iter(col.iter_embeddings("image")))[0][:n]]
    stored = col.embeddings(ids)
    cpu = load_encoder(spec, device="cpu")
    pixels = []
    for i in ids:
        with Image.open(col.item(i).uri) as im:
            pixels.append(cpu.image_transform(to_rgb(im)))
    ref = cpu.encode_images(torch.stack(pixels))
    cos = np.sum(stored * ref, axis=1)
    return {"images": len(ids), "min_cosine": float(cos.min()), "median_cosine": float(np.median(cos))}


def clustered(n: int, d: int, seed: int, centres: int = 2000) -> np.ndarray:
    rng = np.random.default_rng(seed)
    c = rng.standard_normal((centres, d)).astype(np.float32)
    x = c[rng.integers(0, centres, n)] + 0.6 * rng.standard_normal((n, d)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x


def faiss_build(n: int, d: int, nlist: int, queries: int) -> dict[str, Any]:
    import faiss

    from mmsearch.indexes import build

    base = clustered(n, d, 0)
    q = clustered(queries, d, 1)
    exact = faiss.IndexFlatIP(d)
    exact.add(base)
    _, truth = exact.search(q, 10)
    ids = np.arange(n, dtype=np.int64)
    out: dict[str, Any] = {"vectors": n, "dim": d, "factory": f"IVF{nlist},Flat", "gpus_in_faiss": faiss.get_num_gpus()}
    for label, env in (("gpu", "1"), ("cpu", "0")):  # the GPU first: if it cannot run, fail fast
        os.environ["MMSEARCH_FAISS_GPU"] = env
        index = build.new_index(f"IVF{nlist},Flat", d)
        t0 = time.perf_counter()
        rows = build.train_on_sample(index, lambda k: base[:k], n, max_sample_bytes=1 << 32)
        t1 = time.perf_counter()
        build.add_batches(index, ((ids[i:i + 100_000], base[i:i + 100_000]) for i in range(0, n, 100_000)))
        t2 = time.perf_counter()
        faiss.extract_index_ivf(index).nprobe = 32
        _, got = index.search(q, 10)
        recall = float(np.mean([len(set(a) & set(b)) / 10 for a, b in zip(got, truth)]))
        out[label] = {"train_rows": rows, "train_s": t1 - t0, "add_s": t2 - t1, "recall@10_nprobe32": recall,
                      "faiss_gpus_used": build.faiss_gpus()}
    os.environ.pop("MMSEARCH_FAISS_GPU", None)
    out["train_speedup"] = out["cpu"]["train_s"] / out["gpu"]["train_s"]
    out["add_speedup"] = out["cpu"]["add_s"] / out["gpu"]["add_s"]
    return out


def flat_search(n: int, d: int, queries: int) -> dict[str, Any]:
    import faiss

    base = clustered(n, d, 0)
    q = clustered(queries, d, 2)
    cpu = faiss.IndexFlatIP(d)
    cpu.add(base)
    gpu = faiss.index_cpu_to_all_gpus(cpu)  # the GPU first: if it cannot run, fail fast
    gpu.search(q[:100], 10)
    runs = []
    for _ in range(3):
        t0 = time.perf_counter()
        _, gpu_ids = gpu.search(q, 10)
        runs.append(queries / (time.perf_counter() - t0))
    t0 = time.perf_counter()
    _, cpu_ids = cpu.search(q[:2000], 10)
    cpu_qps = 2000 / (time.perf_counter() - t0)
    agree = float(np.mean([len(set(a) & set(b)) / 10 for a, b in zip(cpu_ids, gpu_ids[:2000])]))
    return {"vectors": n, "dim": d, "cpu_qps": cpu_qps, "gpu_qps": statistics.median(runs),
            "speedup": statistics.median(runs) / cpu_qps, "top10_agreement": agree}


def in_subprocess(name: str, *params: int) -> dict[str, Any]:
    """Run a faiss stage in a child process: a faiss GPU kernel that cannot run aborts the process
    (a failed assertion, not an exception), and that must be a recorded result, not the end of the run."""
    import subprocess

    done = subprocess.run([sys.executable, __file__, "--call", name, *map(str, params)], capture_output=True, text=True)
    if done.returncode != 0:
        return {"error": f"exit code {done.returncode}", "stderr_tail": done.stderr.strip()[-1500:]}
    return json.loads(done.stdout.strip().splitlines()[-1])


# -- driver ------------------------------------------------------------------------------------------
def environment() -> dict[str, Any]:
    import torch

    env: dict[str, Any] = {"python": platform.python_version(), "cpus": os.cpu_count(), "torch": torch.__version__,
                           "cuda": torch.cuda.is_available()}
    if torch.cuda.is_available():
        env["gpu"] = torch.cuda.get_device_name(0)
    try:
        import faiss

        env["faiss"] = faiss.__version__
        env["faiss_gpus"] = faiss.get_num_gpus() if hasattr(faiss, "get_num_gpus") else 0
    except Exception as exc:  # noqa: BLE001 - recorded, not fatal
        env["faiss_error"] = repr(exc)
    return env


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=6000)
    parser.add_argument("--device", default="cuda", help="cpu only to smoke-test this script")
    parser.add_argument("--archs", nargs="+", default=["ViT-B-32", "ViT-L-14"])
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--workers", type=int, default=max(1, (os.cpu_count() or 2) - 1))
    parser.add_argument("--vectors", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--nlist", type=int, default=4096)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--no-faiss", dest="faiss", action="store_false", help="skip the faiss stages")
    parser.add_argument("--call", nargs="+", help=argparse.SUPPRESS)  # internal: one faiss stage in a subprocess
    args = parser.parse_args()
    if args.call:
        print(json.dumps(globals()[args.call[0]](*map(int, args.call[1:]))))
        return
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    results: dict[str, Any] = {"environment": environment(), "args": {k: str(v) for k, v in vars(args).items()}}
    args.out.parent.mkdir(parents=True, exist_ok=True)

    def stage(name: str, fn: Callable[[], Any]) -> Any:
        t0 = time.perf_counter()
        try:
            results[name] = fn()
        except Exception as exc:  # noqa: BLE001 - a failed stage is a result too
            results[name] = {"error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()[-3000:]}
        print(f"[{time.perf_counter() - t0:7.1f}s] {name}: {json.dumps(results[name], default=str)[:600]}", flush=True)
        args.out.write_text(json.dumps(results, indent=2, default=str))
        return results[name]

    with tempfile.TemporaryDirectory(prefix="mms-gpu-") as tmp:
        work = Path(tmp)
        specs = {a: random_weights(a, work) for a in args.archs}
        for arch, spec in specs.items():
            stage(f"encoder_{arch}", lambda spec=spec: encoder_rate(spec, args.batch_size, 10, args.device))
        folder = make_corpus(args.images, work / "corpus")
        first = specs[args.archs[0]]
        ingest = stage("ingest", lambda: ingest_rate(folder, first, args.batch_size, args.workers, work, args.repeats,
                                                     args.device))
        enc = results.get(f"encoder_{args.archs[0]}", {})
        if "images_per_s" in ingest and "images_per_s" in enc:
            results["ingest"]["pipeline_vs_encoder"] = ingest["images_per_s"] / enc["images_per_s"]
        if "collection" in ingest:
            stage("cuda_feed_check", lambda: cuda_feed_matches_cpu(Path(ingest["collection"]), first))
        if args.faiss:
            stage("faiss_ivf_build", lambda: in_subprocess("faiss_build", args.vectors, args.dim, args.nlist, 1000))
            stage("faiss_flat_search", lambda: in_subprocess("flat_search", args.vectors, args.dim, 10_000))
    print(table(results))
    print(f"wrote {args.out}")


def table(r: dict[str, Any]) -> str:
    rows = [f"environment: {r['environment']}"]
    for key, val in r.items():
        if key.startswith("encoder_") and "images_per_s" in val:
            rows.append(f"{key:<24} {val['images_per_s']:>10.0f} img/s (batch {val['batch']}, bf16, GPU)")
    ing = r.get("ingest", {})
    if "images_per_s" in ing:
        rows.append(f"{'ingest (end to end)':<24} {ing['images_per_s']:>10.0f} img/s ({ing['images']} JPEGs, "
                    f"{ing['workers']} decode workers; {ing.get('pipeline_vs_encoder', float('nan')):.2f} of the encoder alone; "
                    f"float32 transfer: {ing['images_per_s_float32_transfer']:.0f} img/s)")
    chk = r.get("cuda_feed_check", {})
    if "min_cosine" in chk:
        rows.append(f"{'CUDA feed vs CPU fp32':<24} min cosine {chk['min_cosine']:.4f} over {chk['images']} images")
    fb = r.get("faiss_ivf_build", {})
    if "cpu" in fb:
        for dev in ("cpu", "gpu"):
            b = fb[dev]
            rows.append(f"{'IVF build ' + dev:<24} train {b['train_s']:6.1f}s  add {b['add_s']:6.1f}s  "
                        f"recall@10 {b['recall@10_nprobe32']:.3f}  ({fb['vectors']:,} x {fb['dim']}, {fb['factory']})")
    fs = r.get("faiss_flat_search", {})
    if "gpu_qps" in fs:
        rows.append(f"{'flat search':<24} CPU {fs['cpu_qps']:,.0f} q/s  GPU {fs['gpu_qps']:,.0f} q/s  ({fs['speedup']:.0f}x)")
    for key, val in r.items():
        if isinstance(val, dict) and "error" in val:
            rows.append(f"{key}: FAILED {val['error']} {val.get('stderr_tail', '')[-300:]}")
    return "\n".join(rows)


if __name__ == "__main__":
    sys.exit(main())
