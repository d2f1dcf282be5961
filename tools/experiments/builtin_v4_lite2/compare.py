"""v3 vs Lite1/Lite2/ensemble ConSE from cached features (v3's class bank, T = 2, text side and exemplar classes).

Unless said otherwise the exemplar classes (v2's flags, v3's emoji) are scored on the Lite0 grid2 features, exactly
as v3 does, and only the 1,000 ImageNet logits change:
  v3           Lite0's logits (v3 itself)
  L1, L2       Lite1's / Lite2's logits in their place
  L2s          Lite2's logits times s = std(Lite0 logits) / std(Lite2 logits) on foolbox's 20 ImageNet images
               (v3's T and exemplar calibration were set against Lite0's logit scale; s is fixed from
               data that is neither a development nor a goal set)
  ens-logit    the mean of Lite0's and Lite2's logits
  ens-prob     the mean of the two ConSE probability vectors (Lite0's and Lite2's, same exemplar logits)
  L2x          Lite2 alone: its logits, and the exemplar classes scored on Lite2's features against v3's banks
               re-embedded with Lite2 (exemplars.py; same sources, class-bank rows and 65 cos - 30)
  ens-prob-x   the mean of v3's and L2x's probability vectors (each network with its own exemplars)
Development sets: "clipart" (all 873 openclipart concepts of /tmp/oca/classes.json; no clip-art exemplars are used
here, so the whole set is a development set), "holdout" (39 held-out concepts, 72 drawings), "emoji (noto)",
"foolbox imagenet" (20 ImageNet photos). Goal sets: art4apps, named_sample_images, iso_flags, OpenMoji.
Usage: compare.py "clipart,holdout,emoji (noto)" [variant,...]   (dev sets first; goal sets once, with the variant fixed)
"""
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, "/work/main/benchmarks")
sys.path.insert(0, str(Path(__file__).parent))
import towers
from quality import SETS, load_set

from mmsearch.encoders.base import l2_normalise
from mmsearch.encoders.builtin import BuiltinEncoder
from mmsearch.encoders.builtin_v3 import V3_RECIPE, quadmean
from mmsearch.evaluation import recall_at_k

enc = BuiltinEncoder("v2", backend="onnx", device="cpu")
v3 = V3_RECIPE.load_exemplars(384)
bank = np.concatenate([enc._bank[:1000], v3.class_bank])
mean = enc._mean
T = 2.0


def text_embed(texts):
    return np.concatenate([enc.encode_texts(texts[i:i + 256]) for i in range(0, len(texts), 256)])


def key(name):
    return ("emoji (openmoji)" if "CLDR" in name else name).replace(" ", "_").replace("/", "_")


def foolbox_scale():
    """std(Lite0 logits) / std(Lite2 logits) over foolbox's 20 ImageNet images (v3's preprocessing)."""
    from PIL import Image

    from mmsearch.encoders.builtin_transform import Lite0Transform
    root = Path("/work/shared/data/foolbox_samples")
    rows = [json.loads(line) for line in open(root / "labels.jsonl")]
    imgs = [Image.open(root / r["image"]) for r in rows if r["dataset"] == "imagenet"]
    std = {}
    for n in ("lite0", "lite2"):
        t = Lite0Transform(towers.SIZES[n], towers.SIZES[n], tensors=False)
        _, lg = towers.onnx_runner(n).features_and_logits(np.stack([t.array(i) for i in imgs]), "grid2")
        std[n] = lg.std()
    return float(std["lite0"] / std["lite2"])


def probs(imagenet_logits, ex_logits):
    z = np.concatenate([imagenet_logits, ex_logits], axis=1).astype(np.float64) / T
    z -= z.max(axis=1, keepdims=True)
    p = np.exp(z)
    return p / p.sum(axis=1, keepdims=True)


def embed(p):
    return l2_normalise(p.astype(np.float32) @ bank - mean)


def load(name):
    f0 = Path(f"/tmp/bi/feats/{key(name)}.npz")
    d0 = np.load(f0 if f0.exists() else towers.CACHE / "feats" / "lite0" / f"{key(name)}.npz")
    out = {"paths": [str(p) for p, ok in zip(d0["paths"], d0["ok"]) if ok],
           "grid": d0["features"].astype(np.float32), "lite0": d0["logits"]}
    for t in ("lite1", "lite2"):
        f = towers.CACHE / "feats" / t / f"{key(name)}.npz"
        if f.exists():
            d = np.load(f)
            assert [str(p) for p in d["paths"]] == [str(p) for p in d0["paths"]]
            out[t] = d["logits"]
            out[t + "_grid"] = d["features"].astype(np.float32)
    return out


def own_exemplar_logits(tower, grid):
    """v3's flag + emoji exemplar logits (65 cos - 30) with banks re-embedded by `tower` (exemplars.py)."""
    b = np.load(towers.CACHE / f"banks_{tower}.npz")
    cos = l2_normalise(grid) @ b["flag_features"].T
    best = np.full((len(grid), int(b["flag_owner"].max()) + 1), -np.inf, np.float32)
    np.maximum.at(best.T, b["flag_owner"], cos.T)
    emoji = l2_normalise(quadmean(grid)) @ b["emoji_features"].T
    return np.concatenate([65.0 * best - 30.0, 65.0 * emoji - 30.0], axis=1)


def variants(d, scale):
    ex = v3.logits(d["grid"], 65.0, -30.0)
    p0 = probs(d["lite0"], ex)
    out = {"v3": p0}
    if "lite1" in d:
        out["L1"] = probs(d["lite1"], ex)
    p2 = probs(d["lite2"], ex)
    out["L2"] = p2
    out["L2s"] = probs(d["lite2"] * scale, ex)
    out["ens-logit"] = probs((d["lite0"] + d["lite2"]) / 2, ex)
    out["ens-prob"] = (p0 + p2) / 2
    p2x = probs(d["lite2"], own_exemplar_logits("lite2", d["lite2_grid"]))
    out["L2x"] = p2x
    out["ens-prob-x"] = (p0 + p2x) / 2
    return out


def triples_for(s):
    if s == "clipart":  # development: 873 openclipart concepts, 1,905 drawings, queries "a drawing of {name}"
        classes = json.load(open("/tmp/oca/classes.json"))
        return [("/tmp/oca/" + p, f"a drawing of {n}", n) for n, ps in classes.items() for p in ps]
    if s == "holdout":
        hold = json.load(open("/tmp/oca/holdout.json"))
        return [("/tmp/oca/" + p, n, n) for n, ps in hold.items() for p in ps]
    loader, kw = SETS[s]
    return load_set(Path("/work/shared/data"), loader, kw)


if __name__ == "__main__":
    sets = sys.argv[1].split(";" if ";" in sys.argv[1] else ",")  # ";" when a set name has a comma
    keep = sys.argv[2].split(",") if len(sys.argv) > 2 else None
    scale = foolbox_scale()
    print(f"L2s scale s = {scale:.3f}")
    for s in filter(None, sets):
        d = load(s)
        triples = triples_for(s)
        gmap = {str(i): g for i, _, g in triples}
        ig = np.array([gmap[p] for p in d["paths"]])
        texts = sorted({t: g for _, t, g in triples}.items())
        tv = text_embed([t for t, _ in texts])
        tg = np.array([g for _, g in texts])
        for v, p in variants(d, scale).items():
            if keep and v not in keep:
                continue
            iv = embed(p)
            t2i, ch = recall_at_k(tv, tg, iv, ig, (1, 10))
            i2t, _ = recall_at_k(iv, ig, tv, tg, (1,))
            print(f"{s[:30]:<31}{v:<11} t2i R@1 {t2i['R@1']:5.1f} R@10 {t2i['R@10']:5.1f}  "
                  f"i2t R@1 {i2t['R@1']:5.1f}  chance {ch[10]:.1f}", flush=True)
