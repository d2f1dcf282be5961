"""Cache grid2 features + ImageNet logits of image lists (v3's ONNX graph)."""
import json
import sys
import time
from multiprocessing import Pool
from pathlib import Path

import numpy as np
from PIL import Image

Image.MAX_IMAGE_PIXELS = None
sys.path.insert(0, "/work/main/benchmarks")
from mmsearch.encoders.builtin import BuiltinEncoder  # noqa: E402
from mmsearch.encoders.builtin_transform import Lite0Transform  # noqa: E402

T = Lite0Transform(224, 224, tensors=False)

def load(path):
    try:
        with Image.open(path) as im:
            im.load()
            if im.width * im.height > 4e6:
                im.thumbnail((1024, 1024))
            return T.array(im)
    except Exception as exc:
        print("bad", path, exc, file=sys.stderr)
        return None

def run(name, paths):
    out = Path(f"/tmp/bi/feats/{name}.npz")
    if out.exists():
        return
    enc = BuiltinEncoder("v2", backend="onnx", device="cpu")
    runner = enc._images()
    feats, logits, ok = [], [], []
    t = time.time()
    with Pool(2) as pool:
        for i in range(0, len(paths), 64):
            arrs = pool.map(load, paths[i:i + 64])
            good = [a for a in arrs if a is not None]
            ok += [a is not None for a in arrs]
            if good:
                f, lg = runner.features_and_logits(np.stack(good), "grid2")
                feats.append(f.astype(np.float16))
                logits.append(lg)
            print(name, i, round(time.time() - t), file=sys.stderr, flush=True)
    np.savez(out, features=np.concatenate(feats), logits=np.concatenate(logits), ok=np.array(ok),
             paths=np.array(paths))

if __name__ == "__main__":
    from quality import SETS, load_set
    which = sys.argv[1:]
    for name in which:
        if name == "holdout":
            hold = json.load(open("/tmp/oca/holdout.json"))
            paths = ["/tmp/oca/" + p for ps in hold.values() for p in ps]
        elif name == "clipart":
            classes = json.load(open("/tmp/oca/classes.json"))
            paths = sorted({p for ps in classes.values() for p in ps})
            paths = ["/tmp/oca/" + p for p in paths]
        else:
            loader, kw = SETS[name]
            paths = sorted({i for i, _, _ in load_set(Path("/work/shared/data"), loader, kw)})
        run(name.replace(" ", "_").replace("/", "_"), paths)
