"""ImageNet sanity check of the towers: top-1/top-5 on foolbox's 20 ImageNet val images, and agreement with Lite0.

Preprocessing as the built-in model's (Lite0Transform: RGB on white, shorter side to N px bicubic, centre crop N,
[-1, 1]); `crop` also tries TF's eval crop (shorter side to N / crop_pct, then centre crop N).
"""
import json
import sys
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).parent))
import towers

from mmsearch.encoders.builtin_transform import Lite0Transform

root = Path("/work/shared/data/foolbox_samples")
rows = [json.loads(line) for line in open(root / "labels.jsonl")]
rows = [r for r in rows if r["dataset"] == "imagenet"]
labels = np.array([r["label_id"] for r in rows])
top1 = {}
for name in ("lite0", "lite1", "lite2"):
    n = towers.SIZES[name]
    run = towers.onnx_runner(name)
    for mode, resize in (("resize=crop", n), ("crop_pct 0.875", round(n / 0.875))):
        T = Lite0Transform(resize, n, tensors=False)
        x = np.stack([T.array(Image.open(root / r["image"])) for r in rows])
        _, logits = run.features_and_logits(x, "grid2")
        order = np.argsort(-logits, axis=1)
        t1 = (order[:, 0] == labels).mean() * 100
        t5 = np.mean([lab in o[:5] for lab, o in zip(labels, order)]) * 100
        top1[(name, mode)] = order[:, 0]
        agree = (order[:, 0] == top1[("lite0", mode)]).mean() * 100
        print(f"{name} {n}px {mode:<15} top-1 {t1:5.1f}  top-5 {t5:5.1f}  same top-1 as lite0 {agree:5.1f}  "
              f"logit range {logits.min():.1f}..{logits.max():.1f}")
