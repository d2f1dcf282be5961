"""Deterministic fake encoders for tests: exact, known answers without model weights."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from PIL import Image

COLOURS = {
    "red": (255, 0, 0), "green": (0, 255, 0), "blue": (0, 0, 255), "yellow": (255, 255, 0),
    "cyan": (0, 255, 255), "magenta": (255, 0, 255), "white": (255, 255, 255), "black": (0, 0, 0),
}
NAMES = list(COLOURS)


class MeanColour:
    """Picklable transform: an image -> its mean RGB in [0, 1], shape (3,)."""

    def __call__(self, image: Image.Image) -> torch.Tensor:
        arr = np.asarray(image.convert("RGB").resize((8, 8)), dtype=np.float32) / 255.0
        return torch.from_numpy(arr.reshape(-1, 3).mean(axis=0))


class ColourEncoder:
    """Maps a solid-colour image and a caption naming that colour to the same unit vector.

    Axis i is colour NAMES[i]. An image gets the one-hot of its nearest named colour; a text gets the
    normalised sum of the one-hots of the colour words in it (a text with none gets a fixed vector).
    """

    dim = len(NAMES)
    preprocess_id = "mean-colour-8x8"

    def __init__(self, spec: str = "colour:v1") -> None:
        self.spec = spec

    @property
    def image_transform(self) -> MeanColour:
        return MeanColour()

    def encode_images(self, batch: torch.Tensor) -> np.ndarray:
        rgb = batch.numpy().reshape(-1, 3)
        table = np.array(list(COLOURS.values()), dtype=np.float32) / 255.0
        nearest = ((rgb[:, None, :] - table[None]) ** 2).sum(-1).argmin(1)
        return np.eye(self.dim, dtype=np.float32)[nearest]

    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for row, text in enumerate(texts):
            words = text.lower().replace(",", " ").split()
            for i, name in enumerate(NAMES):
                out[row, i] = words.count(name)
            if not out[row].any():
                out[row] = 1.0
        return out / np.linalg.norm(out, axis=1, keepdims=True)


def make_colour_folder(root: Path, names: Sequence[str] = ("red", "green", "blue", "yellow"),
                       *, captions: bool = True, size: tuple[int, int] = (40, 30)) -> Path:
    """A folder of solid-colour PNGs (in a subfolder too) with caption sidecars."""
    root.mkdir(parents=True, exist_ok=True)
    for i, name in enumerate(names):
        folder = root / "nested" if i % 2 else root
        folder.mkdir(exist_ok=True)
        Image.new("RGB", size, COLOURS[name]).save(folder / f"{name}.png")
        if captions:
            (folder / f"{name}.txt").write_text(f"a {name} square\n", encoding="utf-8")
    return root


def noise_image(path: Path, seed: int, size: tuple[int, int] = (48, 40)) -> Path:
    """A random-noise RGB image (distinct per seed) saved as PNG or JPEG by suffix."""
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(path)
    return path
