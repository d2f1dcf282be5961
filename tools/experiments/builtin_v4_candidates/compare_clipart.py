"""v3 vs v4 candidates from cached features (no tuning on scored sets: fixed settings, compared once)."""
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, "/work/main/benchmarks")
from quality import SETS, load_set

from mmsearch.encoders.base import l2_normalise
from mmsearch.encoders.builtin import BuiltinEncoder
from mmsearch.encoders.builtin_v3 import V3_RECIPE, quadmean
from mmsearch.evaluation import recall_at_k

enc = BuiltinEncoder("v2", backend="onnx", device="cpu")
v3 = V3_RECIPE.load_exemplars(384)
bank1, mean = enc._bank[:1000], enc._mean

def text_embed(texts):
    return np.concatenate([enc.encode_texts(texts[i:i + 256]) for i in range(0, len(texts), 256)])

def clipart_bank(templates):
    classes = json.load(open("/tmp/oca/classes.json"))
    d = np.load("/tmp/bi/feats/clipart.npz")
    idx = {p: i for i, p in enumerate(d["paths"])}
    rows = np.flatnonzero(d["ok"])
    pos = {int(r): j for j, r in enumerate(rows)}
    feats = l2_normalise(quadmean(d["features"].astype(np.float32)))
    F, owner, names = [], [], []
    for _c, (name, ps) in enumerate(sorted(classes.items())):
        js = [pos[idx["/tmp/oca/" + p]] for p in ps if idx["/tmp/oca/" + p] in pos]
        if not js:
            continue
        k = len(names)
        names.append(name)
        F.append(feats[js])
        owner += [k] * len(js)
    descs = [[t.format(n) for t in templates] for n in names]
    flat = text_embed([s for ds in descs for s in ds])
    cb = flat.reshape(len(names), len(templates), -1).mean(axis=1)  # unit rows averaged (like builders)
    return np.concatenate(F), np.array(owner), cb.astype(np.float32), names

def embed(logits, grid, cb=None, scale=65.0, bias=-30.0, T=2.0, topk=None):
    parts = [logits, v3.logits(grid, 65.0, -30.0)]
    bank = [bank1, v3.class_bank]
    if cb is not None:
        F, owner, rows, _ = cb
        cos = l2_normalise(quadmean(grid)) @ F.T
        best = np.full((len(grid), rows.shape[0]), -np.inf, np.float32)
        np.maximum.at(best.T, owner, cos.T)
        parts.append(scale * best + bias)
        bank.append(rows)
    z = np.concatenate(parts, axis=1).astype(np.float64) / T
    if topk:
        kth = -np.partition(-z, topk - 1, axis=1)[:, topk - 1:topk]
        z = np.where(z >= kth, z, -np.inf)
    z -= z.max(axis=1, keepdims=True)
    p = np.exp(z)
    p /= p.sum(axis=1, keepdims=True)
    return l2_normalise(p.astype(np.float32) @ np.concatenate(bank) - mean)

SETNAMES = ["art4apps (a drawing of {label})", "named_sample_images", "iso_flags", "emoji (openmoji)",
            "emoji (openmoji, CLDR text)", "emoji (noto)"]
def feats_for(name):
    key = name if "CLDR" not in name else "emoji (openmoji)"
    return np.load(f"/tmp/bi/feats/{key.replace(' ', '_').replace('/', '_')}.npz")

if __name__ == "__main__":
    import itertools
    sets = sys.argv[1].split(",")
    T1 = ["{}", "a drawing of {}", "clip art of {}", "an illustration of {}"]
    cb = clipart_bank(T1)
    variants = {"v3": dict(cb=None)}
    for topk, bias in itertools.product([None, 10, 50], [-30.0, -35.0]):
        variants[f"v4 top{topk} b{bias:g}"] = dict(cb=cb, topk=topk, bias=bias)
    for topk in [10, 50]:
        variants[f"v3 top{topk}"] = dict(cb=None, topk=topk)
    for s in sets:
        if s == "holdout":
            d = np.load("/tmp/bi/feats/holdout.npz")
            hold = json.load(open("/tmp/oca/holdout.json"))
            inv = {"/tmp/oca/" + p: n for n, ps in hold.items() for p in ps}
            triples = [(p, n, n) for p, n in inv.items()]
        else:
            d = feats_for(s)
            loader, kw = SETS[s]
            triples = load_set(Path("/work/shared/data"), loader, kw)
        gmap = {i: g for i, _, g in triples}
        paths = [str(p) for p, ok in zip(d["paths"], d["ok"]) if ok]
        grid = d["features"].astype(np.float32)
        logits = d["logits"]
        igroups = np.array([gmap[p] for p in paths])
        texts = sorted({t: g for _, t, g in triples}.items())
        tv = text_embed([t for t, _ in texts])
        tg = np.array([g for _, g in texts])
        for v, kw in variants.items():
            iv = embed(logits, grid, **kw)
            t2i, ch = recall_at_k(tv, tg, iv, igroups, (1, 10))
            i2t, ch2 = recall_at_k(iv, igroups, tv, tg, (1,))
            print(f"{s[:30]:<31}{v:<20} t2i R@1 {t2i['R@1']:5.1f} R@10 {t2i['R@10']:5.1f}  "
                  f"i2t R@1 {i2t['R@1']:5.1f}  chance {ch[10]:.1f}", flush=True)
