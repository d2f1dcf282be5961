"""builtin:v3 against builtin:v4 image encoding on the CPU (ONNX Runtime): the same seeded, pre-transformed batches,
the versions interleaved, median images/s of ``ROUNDS`` passes after a warm-up. Writes ``speed.json`` here.

    python tools/experiments/builtin_v4_fluent/speed.py
"""

from __future__ import annotations

import json
import os
import statistics
import time
from pathlib import Path

import numpy as np

from mmsearch.encoders.registry import load_encoder

ROUNDS, BATCHES, BATCH = 7, 6, 32


def main() -> None:
    encoders = {v: load_encoder(f"builtin:{v}", device="cpu") for v in ("v3", "v4")}
    batches = [np.random.default_rng(i).uniform(-1, 1, (BATCH, 3, 224, 224)).astype(np.float32) for i in range(BATCHES)]
    for e in encoders.values():
        e.encode_images(batches[0])
    rates: dict[str, list[float]] = {v: [] for v in encoders}
    for _ in range(ROUNDS):
        for v, e in encoders.items():
            start = time.perf_counter()
            for b in batches:
                e.encode_images(b)
            rates[v].append(BATCHES * BATCH / (time.perf_counter() - start))
    med = {v: statistics.median(r) for v, r in rates.items()}
    out = {"images_per_s": med, "v4_over_v3": med["v4"] / med["v3"], "rounds": rates, "load": os.getloadavg()}
    (Path(__file__).parent / "speed.json").write_text(json.dumps(out, indent=1))
    print(json.dumps({k: out[k] for k in ("images_per_s", "v4_over_v3", "load")}))


if __name__ == "__main__":
    main()
