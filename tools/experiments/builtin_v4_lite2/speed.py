"""Image-tower throughput on CPU (ONNX Runtime, the built-in model's CPU path): Lite0 (v3) vs Lite1, Lite2, Lite0+Lite2.

As benchmarks/encoder_throughput.py: seeded batches of transformed pixels (batch 32, 4 batches), median of 5 timed
passes after a warm-up, graphs with grid2 features + logits (v2/v3's graph kind). Decoding is not included (Lite2's
260 px crop costs about what Lite0's 224 px does). Ratios are against Lite0 in the same run; run under
`flock /tmp/bench.lock`. The v3 exemplar matmuls add the same to every variant (negligible, see docs).
"""
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
import towers


def median_seconds(work, repeats=5):
    work()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        work()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


rng = np.random.default_rng(0)
batches = {n: [rng.uniform(-1, 1, (32, 3, s, s)).astype(np.float32) for _ in range(4)] for n, s in towers.SIZES.items()}
runners = {n: towers.onnx_runner(n) for n in towers.SIZES}
secs = {}
for n in towers.SIZES:
    secs[n] = median_seconds(lambda n=n: [runners[n].features_and_logits(b, "grid2") for b in batches[n]])
secs["lite0+lite2"] = secs["lite0"] + secs["lite2"]
print(f"load average {os.getloadavg()}, {os.cpu_count()} cores")
for n, s in secs.items():
    ips = 128 / s
    print(f"{n:<12} {ips:7.1f} img/s   {secs['lite0'] / s:.2f}x Lite0 (v3)")

# End to end from files, one process (what `encode_images` does per image, serially): decode + the built-in
# preprocessing + tower(s) + ConSE, on real images: the first 64 art4apps JPEGs and the 82 named sample photos.
# v3: Lite0 at 224; ens-prob-x: one decode, two resizes (224 and 260), both towers; exemplar matmuls included.
from PIL import Image  # noqa: E402

sys.path.insert(0, "/work/main/benchmarks")
from quality import SETS, load_set  # noqa: E402

from mmsearch.encoders.builtin_transform import Lite0Transform  # noqa: E402
from mmsearch.encoders.builtin_v3 import V3_RECIPE  # noqa: E402

v3 = V3_RECIPE.load_exemplars(384)
files = []
for name in ("art4apps (a drawing of {label})", "named_sample_images"):
    loader, kw = SETS[name]
    files += sorted({str(i) for i, _, _ in load_set(Path("/work/shared/data"), loader, kw)})[:82]
t224, t260 = Lite0Transform(224, 224, tensors=False), Lite0Transform(260, 260, tensors=False)


def pipeline(which):
    for s in range(0, len(files), 32):
        ims = []
        for f in files[s:s + 32]:
            with Image.open(f) as im:
                im.load()
                ims.append(im.copy())
        g0, l0 = runners["lite0"].features_and_logits(np.stack([t224.array(i) for i in ims]), "grid2")
        v3.logits(g0, 65.0, -30.0)
        if which == "ens":
            g2, l2 = runners["lite2"].features_and_logits(np.stack([t260.array(i) for i in ims]), "grid2")
            v3.logits(g2, 65.0, -30.0)  # same cost as the Lite2 banks' matmuls


e2e = {w: median_seconds(lambda w=w: pipeline(w), 3) for w in ("v3", "ens")}
print(f"end to end, {len(files)} files, load average {os.getloadavg()}")
for w, s in e2e.items():
    print(f"{w:<12} {len(files) / s:7.1f} img/s   {e2e['v3'] / s:.2f}x v3")
