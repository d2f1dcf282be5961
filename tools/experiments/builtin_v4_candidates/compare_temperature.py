import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from pathlib import Path

import compare_clipart as E
import numpy as np
from quality import SETS, load_set

from mmsearch.evaluation import recall_at_k

for s in sys.argv[1].split(","):
    d = E.feats_for(s)
    loader, kw = SETS[s]
    triples = load_set(Path("/work/shared/data"), loader, kw)
    gmap = {i: g for i, _, g in triples}
    paths = [str(p) for p, ok in zip(d["paths"], d["ok"]) if ok]
    grid = d["features"].astype(np.float32)
    logits = d["logits"]
    ig = np.array([gmap[p] for p in paths])
    texts = sorted({t: g for _, t, g in triples}.items())
    tv = E.text_embed([t for t, _ in texts])
    tg = np.array([g for _, g in texts])
    for T in (1.5, 2.0, 3.0):
        iv = E.embed(logits, grid, None, T=T)
        t2i, ch = recall_at_k(tv, tg, iv, ig, (1, 10))
        i2t, _ = recall_at_k(iv, ig, tv, tg, (1,))
        print(f"{s[:30]:<31} T={T} t2i R@1 {t2i['R@1']:5.1f} R@10 {t2i['R@10']:5.1f}  i2t R@1 {i2t['R@1']:5.1f}", flush=True)
