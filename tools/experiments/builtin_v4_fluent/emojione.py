"""A third emoji family on top of builtin:v4: EmojiOne 2.2.7 (CC-BY 4.0), development sets only.

    npm pack emojione@2.2.7            # 64 px PNGs named by code points (assets/png/), artwork CC-BY 4.0
    PYTHONPATH=/tmp/pylib python tools/experiments/builtin_v4_fluent/emojione.py emojione-2.2.7.tgz \
        --twemoji /tmp/tw/package --flags /tmp/cfi/package --margins 0 0.03 0.06 0.1

Each of v3's emoji classes whose code points (without U+FE0F) name an EmojiOne PNG gets it as one more exemplar,
embedded as the others are; a class's cosine is then the best of v4's (Twemoji, Fluent less 0.06) and the
EmojiOne cosine less the margin. Scored on the development sets only (Noto emoji; the flags of
country-flag-icons), as fluent.py scores them: no goal set is read here.
"""

from __future__ import annotations

import argparse
import json
import sys
import tarfile
import tempfile
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE)]

from fluent import (  # noqa: E402
    ROOT,
    SETS,
    ExemplarClass,
    country_flag_icons,
    exemplar_features,
    load_set,
    measure_with,
)

from mmsearch.encoders import builtin_v3  # noqa: E402
from mmsearch.encoders.base import l2_normalise  # noqa: E402
from mmsearch.encoders.registry import load_encoder  # noqa: E402


def emojione_exemplars(package: Path) -> dict[str, object]:
    from PIL import Image

    record = json.loads((ROOT / "mmsearch/encoders/assets/builtin_v3_emoji.json").read_text(encoding="utf-8"))
    out = {}
    for cls in record["classes"]:
        points = cls["id"].split(":", 1)[1]
        for name in (points, "-".join(p for p in points.split("-") if p != "fe0f")):
            png = package / "assets" / "png" / f"{name}.png"
            if png.exists():
                with Image.open(png) as im:
                    out[cls["id"]] = im.convert("RGBA")
                break
    return out


class PlusOne:
    """v4's emoji bank plus one more family, its cosines less ``margin``."""

    def __init__(self, base, ids: list[str], feats: np.ndarray, margin: float) -> None:
        self.base, self.margin = base, margin
        self.features, self.class_bank, self.class_ids = base.features, base.class_bank, base.class_ids
        index = {c: i for i, c in enumerate(base.class_ids)}
        self.owner = np.array([index[c] for c in ids], dtype=np.int64)
        self.extra = feats

    def similarities(self, grid2: np.ndarray) -> np.ndarray:
        best = self.base.similarities(grid2)
        query = l2_normalise(builtin_v3.quadmean(grid2))
        np.maximum.at(best.T, self.owner, (query @ self.extra.T - self.margin).T)
        return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("package", type=Path, help="emojione-2.2.7.tgz (npm pack) or its unpacked folder")
    parser.add_argument("--twemoji", type=Path, required=True)
    parser.add_argument("--flags", type=Path, required=True)
    parser.add_argument("--margins", nargs="+", type=float, default=[0.0, 0.03, 0.06, 0.1])
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    parser.add_argument("--out", type=Path, default=HERE / "emojione.json")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        package = args.package
        if not package.is_dir():
            with tarfile.open(package) as tar:
                tar.extractall(tmp, filter="data")
            package = Path(tmp) / "package"
        images = emojione_exemplars(package if (package / "assets").exists() else package / "package")
    print(f"EmojiOne: {len(images)} of 1636 classes", flush=True)
    ids = list(images)
    grid2 = exemplar_features([ExemplarClass(c, c, [c], [images[c]], [c]) for c in ids], builtin_v3.V3_RECIPE)
    feats = l2_normalise(builtin_v3.quadmean(grid2))
    dev = {"country-flag-icons (dev)": country_flag_icons(args.flags, args.twemoji, Path(tempfile.mkdtemp())),
           "emoji (noto)": load_set(args.data, *SETS["emoji (noto)"])}
    results: dict[str, dict] = {}
    for name, margin in [("v4", None), *((f"v4+emojione-m{m:g}", m) for m in args.margins)]:
        encoder = load_encoder("builtin:v4")
        encoder._exemplars  # noqa: B018 - loads the banks
        if margin is not None:
            composite = encoder._image_assets[1]
            composite.emoji = PlusOne(composite.emoji, ids, feats, margin)
        for set_name, triples in dev.items():
            r = measure_with(encoder, triples)
            results.setdefault(set_name, {})[name] = r
            t = r["text_to_image"]
            print(f"{set_name:26s} {name:22s} t2i R@1 {t['R@1']:5.1f} R@10 {t['R@10']:5.1f}", flush=True)
        if margin is not None:  # the encoder is cached per spec: put v4's bank back
            encoder._image_assets[1].emoji = encoder._image_assets[1].emoji.base
    args.out.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
