import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, "/work/main/benchmarks")
import compare_clipart as E
from quality import SETS, load_set

from mmsearch.encoders.base import l2_normalise
from mmsearch.evaluation import recall_at_k

enc = E.enc
tower = enc._texts()
syn = [line.strip().split(", ")
       for line in open("/work/shared/data/text_prompts/opencv_dnn_classes/classification_classes_ILSVRC2012.txt")
       if line.strip()]
assert len(syn) == 1000
flat = [s for ss in syn for s in ss[:4]]
own = np.repeat(np.arange(1000), [len(ss[:4]) for ss in syn])
emb = tower.encode(flat).astype(np.float64)
names = np.zeros((1000, emb.shape[1]))
np.add.at(names, own, emb)
names /= np.bincount(own)[:, None]
v1 = E.bank1.astype(np.float64)

def variant(w):
    rows = (1 - w) * v1 / np.linalg.norm(v1, axis=1, keepdims=True) + w * names / np.linalg.norm(names, axis=1, keepdims=True)
    return rows.astype(np.float32), rows.mean(axis=0).astype(np.float32)

def embed_img(logits, grid, bank, mean):
    z = np.concatenate([logits, E.v3.logits(grid, 65.0, -30.0)], axis=1).astype(np.float64) / 2.0
    z -= z.max(axis=1, keepdims=True)
    p = np.exp(z)
    p /= p.sum(axis=1, keepdims=True)
    return l2_normalise(p.astype(np.float32) @ np.concatenate([bank, E.v3.class_bank]) - mean)

sets = sys.argv[1].split(",")
for s in sets:
    d = E.feats_for(s)
    loader, kw = SETS[s]
    triples = load_set(Path("/work/shared/data"), loader, kw)
    gmap = {i: g for i, _, g in triples}
    paths = [str(p) for p, ok in zip(d["paths"], d["ok"]) if ok]
    grid = d["features"].astype(np.float32)
    logits = d["logits"]
    ig = np.array([gmap[p] for p in paths])
    texts = sorted({t: g for _, t, g in triples}.items())
    raw = np.concatenate([tower.encode([t for t, _ in texts][i:i+256]) for i in range(0, len(texts), 256)])
    tg = np.array([g for _, g in texts])
    for w in (0.0, 0.25, 0.5):
        bank, mean = variant(w)
        if w == 0.0:
            bank, mean = E.bank1, E.mean
        iv = embed_img(logits, grid, bank, mean)
        tv = l2_normalise(raw - mean)
        t2i, ch = recall_at_k(tv, tg, iv, ig, (1, 10))
        i2t, _ = recall_at_k(iv, ig, tv, tg, (1,))
        print(f"{s[:30]:<31} names w={w:<5} t2i R@1 {t2i['R@1']:5.1f} R@10 {t2i['R@10']:5.1f}  "
              f"i2t R@1 {i2t['R@1']:5.1f}", flush=True)
