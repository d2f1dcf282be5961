"""Cache grid2 features + ImageNet logits of Lite1/Lite2 for the same image lists (and order) as the Lite0 cache.

The Lite0 cache is /tmp/bi/feats/<set>.npz (tools/experiments/builtin_v4_candidates/features.py, v2/v3's ONNX graph);
this writes /tmp/lite2/feats/<tower>/<set>.npz with the same `paths`/`ok`, so the rows line up. Sets that cache
lacks ("foolbox imagenet") are run here for "lite0" too (same weights and export as v3's graph).
Usage: features.py lite2 holdout "emoji (noto)" ...   (run under `flock /tmp/bench.lock`).
"""
import json
import sys
import time
from multiprocessing import Pool
from pathlib import Path

import numpy as np
from PIL import Image

Image.MAX_IMAGE_PIXELS = None
sys.path.insert(0, str(Path(__file__).parent))
import towers  # noqa: E402

from mmsearch.encoders.builtin_transform import Lite0Transform  # noqa: E402

T = None


def init(size):
    global T
    T = Lite0Transform(size, size, tensors=False)


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


def key(name):
    return name.replace(" ", "_").replace("/", "_")


def lite0_ref(name):
    """The Lite0 cache of the last session (v3's graph) when it has this set; else None (then lite0 runs here)."""
    f = Path(f"/tmp/bi/feats/{key(name)}.npz")
    return np.load(f) if f.exists() else None


def set_paths(name):
    if name == "clipart":  # every openclipart drawing of /tmp/oca/classes.json (a development set here)
        classes = json.load(open("/tmp/oca/classes.json"))
        return ["/tmp/oca/" + p for p in sorted({p for ps in classes.values() for p in ps})]
    sys.path.insert(0, "/work/main/benchmarks")
    from quality import SETS, load_set
    loader, kw = SETS[name]
    return sorted({str(i) for i, _, _ in load_set(Path("/work/shared/data"), loader, kw)})


def run(tower, name):
    out = towers.CACHE / "feats" / tower / f"{key(name)}.npz"
    if out.exists():
        return
    out.parent.mkdir(parents=True, exist_ok=True)
    ref = lite0_ref(name)
    paths = [str(p) for p in ref["paths"]] if ref is not None else set_paths(name)
    runner = towers.onnx_runner(tower)
    feats, logits, ok = [], [], []
    t = time.time()
    with Pool(2, initializer=init, initargs=(towers.SIZES[tower],)) as pool:
        for i in range(0, len(paths), 64):
            arrs = pool.map(load, paths[i:i + 64])
            good = [a for a in arrs if a is not None]
            ok += [a is not None for a in arrs]
            if good:
                f, lg = runner.features_and_logits(np.stack(good), "grid2")
                feats.append(f.astype(np.float16))
                logits.append(lg)
            print(tower, name, i, round(time.time() - t), file=sys.stderr, flush=True)
    assert ref is None or ok == list(ref["ok"]), "decode failures differ from the Lite0 cache"
    np.savez(out, features=np.concatenate(feats), logits=np.concatenate(logits), ok=np.array(ok),
             paths=np.array(paths))
    print(f"{tower} {name}: {len(paths)} images in {time.time() - t:.0f} s", flush=True)


if __name__ == "__main__":
    for name in sys.argv[2:]:
        run(sys.argv[1], name)
