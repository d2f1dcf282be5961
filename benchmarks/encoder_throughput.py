"""Encoding throughput of the built-in model on this machine: PyTorch vs ONNX Runtime, and texts/s.

    python benchmarks/encoder_throughput.py [--batch-size 32] [--batches 4] [--repeats 5] [--texts 512]

Both image backends embed the same seeded batches of already-transformed pixels (decoding and resizing
are measured separately, per process, as "transform"). Each figure is the median of ``--repeats``
timed passes after one warm-up pass (which also pays for the one-time ONNX export). Prints a table and
writes ``benchmarks/results/encoder_throughput.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path
from typing import Callable

import numpy as np

from mmsearch.encoders.builtin import BuiltinEncoder

RESULTS = Path(__file__).resolve().parent / "results" / "encoder_throughput.json"
WORDS = (
    "cat dog red car bicycle mountain lake beach city street night sunset flower tree bird boat "
    "house kitchen cup coffee rocket flag emoji drawing child playing ball snow forest river bridge"
).split()


def median_seconds(work: Callable[[], object], repeats: int) -> float:
    """Median wall time of ``repeats`` calls after one untimed warm-up call."""
    work()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        work()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def make_batches(batch_size: int, batches: int, size_px: int) -> list:
    import torch

    generator = torch.Generator().manual_seed(0)
    return [torch.rand(batch_size, 3, size_px, size_px, generator=generator) * 2 - 1 for _ in range(batches)]


def make_texts(count: int) -> list[str]:
    rng = np.random.default_rng(0)
    return [f"a photo of a {' '.join(rng.choice(WORDS, size=rng.integers(2, 8)))}" for _ in range(count)]


def make_images(count: int) -> list:
    from PIL import Image

    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 256, size=(480, 640, 3), dtype=np.uint8)) for _ in range(count)]


def image_rate(backend: str, batches: list, repeats: int) -> dict:
    encoder = BuiltinEncoder(backend=backend, device="cpu")
    start = time.perf_counter()
    encoder.encode_images(batches[0][:1])
    first_call_s = time.perf_counter() - start
    seconds = median_seconds(lambda: [encoder.encode_images(b) for b in batches], repeats)
    count = sum(len(b) for b in batches)
    embeddings = np.concatenate([encoder.encode_images(b) for b in batches])
    return {
        "backend": encoder.backend,
        "images": count,
        "seconds": seconds,
        "images_per_s": count / seconds,
        "first_call_s": first_call_s,
        "embeddings": embeddings,
    }


def text_rate(texts: list[str], repeats: int) -> dict:
    encoder = BuiltinEncoder(backend="torch", device="cpu")
    seconds = median_seconds(lambda: encoder.encode_texts(texts), repeats)
    return {"texts": len(texts), "seconds": seconds, "texts_per_s": len(texts) / seconds}


def transform_rate(count: int, repeats: int) -> dict:
    transform = BuiltinEncoder(backend="torch", device="cpu").image_transform
    images = make_images(count)
    seconds = median_seconds(lambda: [transform(image) for image in images], repeats)
    return {"images": count, "source_size": "640x480 RGB", "seconds": seconds, "images_per_s": count / seconds}


def environment() -> dict:
    import onnxruntime
    import torch

    return {
        "cpu": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "onnxruntime": onnxruntime.__version__,
        "python": platform.python_version(),
    }


def print_table(result: dict) -> None:
    rows = [
        ("images, PyTorch", result["images_torch"]["images_per_s"], "img/s"),
        ("images, ONNX Runtime", result["images_onnx"]["images_per_s"], "img/s"),
        ("texts, PyTorch", result["texts"]["texts_per_s"], "texts/s"),
        ("transform (1 process)", result["transform"]["images_per_s"], "img/s"),
    ]
    print(f"{'built-in model, CPU':<24}{'rate':>10}  unit")
    for name, rate, unit in rows:
        print(f"{name:<24}{rate:>10.1f}  {unit}")
    print(
        f"ONNX / PyTorch speed-up: {result['onnx_speedup']:.2f}x   "
        f"max |embedding diff|: {result['max_abs_embedding_diff']:.1e}   ({result['environment']['cpu_count']} CPUs)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--batches", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--texts", type=int, default=512)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()

    batches = make_batches(args.batch_size, args.batches, 224)
    torch_run = image_rate("torch", batches, args.repeats)
    onnx_run = image_rate("onnx", batches, args.repeats)
    diff = float(np.abs(torch_run.pop("embeddings") - onnx_run.pop("embeddings")).max())
    result = {
        "model": "builtin:v1",
        "batch_size": args.batch_size,
        "batches": args.batches,
        "repeats": args.repeats,
        "images_torch": torch_run,
        "images_onnx": onnx_run,
        "onnx_speedup": onnx_run["images_per_s"] / torch_run["images_per_s"],
        "max_abs_embedding_diff": diff,
        "texts": text_rate(make_texts(args.texts), args.repeats),
        "transform": transform_rate(64, args.repeats),
        "environment": environment(),
    }
    print_table(result)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
