"""v3's exemplar banks (v2's 270 flags, v3's 1,636 emoji) re-embedded with another tower: /tmp/lite2/banks_<tower>.npz.

Same sources and code as the shipped banks: `flag_icon_classes` of tools/build_builtin_assets_exemplars.py
(flag-icons 7.5.0 from `npm pack`, rendered with cairosvg, installed with `pip install --target /tmp/lite2/pylib`)
and `twemoji_classes` of tools/build_builtin_assets_v3.py (emoji-datasource-twitter 16.0.0); features from the
tower's ONNX graph with the built-in preprocessing at its size (flags: grid2, emoji: quadmean, both unit norm).
The class-bank rows (text side) are v3's, matched by class id. `lite0` rebuilds the shipped banks, as a check of
this path (printed: min cosine against the shipped features).
Usage: exemplars.py lite2 flag-icons-7.5.0.tgz emoji-datasource-twitter-16.0.0.tgz   (under flock /tmp/bench.lock)
"""
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, "/work/main/tools")
sys.path.insert(0, str(Path(__file__).parent))
sys.path.append("/tmp/lite2/pylib")  # cairosvg (after the venv, so the venv's Pillow wins)
import towers
from build_builtin_assets_exemplars import _package_dir as flags_dir
from build_builtin_assets_exemplars import flag_icon_classes
from build_builtin_assets_v3 import _package_dir as emoji_dir
from build_builtin_assets_v3 import twemoji_classes

from mmsearch.encoders.base import l2_normalise
from mmsearch.encoders.builtin_transform import Lite0Transform
from mmsearch.encoders.builtin_v3 import V3_RECIPE, quadmean


def grid2_features(tower, images):
    t = Lite0Transform(towers.SIZES[tower], towers.SIZES[tower], tensors=False)
    run = towers.onnx_runner(tower)
    out = [run.features_and_logits(np.stack([t.array(i) for i in images[s:s + 32]]), "grid2")[0]
           for s in range(0, len(images), 32)]
    return np.concatenate(out)


def main(tower, flag_tgz, emoji_tgz):
    v3 = V3_RECIPE.load_exemplars(384)
    with tempfile.TemporaryDirectory() as w1, tempfile.TemporaryDirectory() as w2:
        flags = flag_icon_classes(flags_dir(Path(flag_tgz), Path(w1)))
        emoji = twemoji_classes(emoji_dir(Path(emoji_tgz), Path(w2)))
    fid = [c.id for c in flags]
    eid = [c.id for c in emoji]
    assert tuple(fid) == v3.flags.class_ids and tuple(eid) == v3.emoji.class_ids, "class order differs from v3's"
    flag_images = [im for c in flags for im in c.exemplars]
    flag_owner = np.repeat(np.arange(len(flags)), [len(c.exemplars) for c in flags])
    assert (flag_owner == v3.flags.owner).all()
    ff = l2_normalise(grid2_features(tower, flag_images))
    ef = l2_normalise(quadmean(grid2_features(tower, [c.exemplars[0] for c in emoji])))
    if tower == "lite0":
        print("min cos vs shipped: flags", float((ff * v3.flags.features).sum(1).min()),
              "emoji", float((ef * v3.emoji.features).sum(1).min()))
    np.savez(towers.CACHE / f"banks_{tower}.npz", flag_features=ff.astype(np.float32), flag_owner=flag_owner,
             emoji_features=ef.astype(np.float32))
    print(tower, ff.shape, ef.shape)


if __name__ == "__main__":
    main(*sys.argv[1:4])
