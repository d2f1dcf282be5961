"""Exemplar-defined classes for the built-in model (``builtin:v2``).

ConSE can only name what its classifier has a class for: EfficientNet-Lite0 knows 1,000 ImageNet
classes and no single flag, so ``builtin:v1`` retrieves flags at chance. An exemplar class is defined
by images instead of a classifier row: a few rendered exemplars of the class, whose image features
(from the same network, taken before its classifier) are stored with the package. A query image's
feature is compared with every exemplar (cosine); the best cosine of each class becomes that class's
logit (``scale * cos + bias``, calibrated against the ImageNet logits), the extended logit vector goes
through the same softmax as in ``builtin:v1``, and the class's row of the class bank is the mean
sentence embedding of its descriptions ("the flag of Japan", ...). Everything else is ``builtin:v1``.

The bank is generic: any set of classes with exemplar images and descriptions can be added by the
asset-building script (``python tools/build_builtin_assets_exemplars.py`` in the repository); the shipped
bank holds the world's flags, rendered from the MIT-licensed ``flag-icons`` npm package (see
``assets/README.md``).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..errors import ModelUnavailableError
from .base import l2_normalise

if TYPE_CHECKING:
    from .builtin_recipes import ExemplarRecipe

#: image features exemplars can be compared in: the network's pooled 1280-d feature, or the mean of
#: each cell of a 2 x 2 grid over its last feature map (5120-d: keeps the coarse layout, which tells
#: flags apart that share colours); computed by :func:`mmsearch.encoders.builtin_torch.features_and_logits`
#: (and the exported graph)
FEATURES = ("pool", "grid2")


@dataclass(frozen=True)
class ExemplarBank:
    """Exemplar-defined classes: exemplar features, which class each belongs to, and the class bank rows."""

    #: (exemplars, feature dim) float32, unit norm
    features: np.ndarray
    #: (exemplars,) int, the class of each exemplar
    owner: np.ndarray
    #: (classes, text dim) float32, the sentence-embedding row of each class
    class_bank: np.ndarray
    #: class ids, in class order
    class_ids: tuple[str, ...]

    def __post_init__(self) -> None:
        if self.features.ndim != 2 or self.owner.shape != (self.features.shape[0],):
            raise ValueError("exemplar features and owners do not match")
        if self.class_bank.ndim != 2 or len(self.class_ids) != self.class_bank.shape[0]:
            raise ValueError("class bank rows and class ids do not match")
        if self.owner.size and (self.owner.min() < 0 or self.owner.max() >= len(self.class_ids)):
            raise ValueError("an exemplar belongs to no class")
        if set(np.unique(self.owner).tolist()) != set(range(len(self.class_ids))):
            raise ValueError("every class needs at least one exemplar")

    def similarities(self, features: np.ndarray) -> np.ndarray:
        """(N, classes): for each image and class, the best cosine between the image and the class's exemplars."""
        cos = l2_normalise(np.asarray(features, dtype=np.float32)) @ self.features.T
        best = np.full((cos.shape[0], len(self.class_ids)), -np.inf, dtype=np.float32)
        np.maximum.at(best.T, self.owner, cos.T)
        return best

    def logits(self, features: np.ndarray, scale: float, bias: float) -> np.ndarray:
        """The exemplar classes' logits, ``scale * similarity + bias`` (N, classes)."""
        return scale * self.similarities(features) + bias


def read_shipped_bank(path: Path, spec: str, kind: str, builder: str) -> tuple[dict, dict[str, np.ndarray]]:
    """The JSON record and arrays of a bank shipped at ``path`` (an .npz beside its .json), after checking the
    bytes against the record's sha256; a missing, unreadable or altered bank is :class:`ModelUnavailableError`
    naming the ``builder`` script (in the repository's ``tools/``) that makes it again."""
    record_path = path.with_suffix(".json")
    try:
        record = json.loads(record_path.read_text(encoding="utf-8"))
        blob = path.read_bytes()
    except (OSError, ValueError) as exc:
        raise ModelUnavailableError(
            spec, f"its {kind} bank is missing or unreadable ({exc}); reinstall mmsearch, or rebuild it with "
            f"python tools/{builder}.py (in the mmsearch repository)",
        ) from exc
    digest = hashlib.sha256(blob).hexdigest()
    if digest != record.get("sha256", {}).get(path.name):
        raise ModelUnavailableError(spec, f"{path} does not match the sha256 in {record_path.name}; reinstall mmsearch")
    return record, _unpacked_arrays(path.stem, digest, blob)


def _unpacked_arrays(stem: str, digest: str, blob: bytes) -> dict[str, np.ndarray]:
    """The arrays of a checked .npz ``blob``, floats as float32. Unzipping and widening them cost a cold image
    query ~0.15 s, so they are unpacked once into ``banks/<stem>-<sha256>/`` under the model cache
    (:func:`mmsearch.config.cache_dir`) and memory-mapped from there; an unwritable cache unpacks every time."""
    from ..config import cache_dir

    folder = cache_dir() / "banks" / f"{stem}-{digest[:16]}"
    try:
        names = sorted(folder.glob("*.npy"))
        if names:  # the folder appears whole (renamed into place) or not at all
            return {p.stem: np.load(p, mmap_mode="r", allow_pickle=False) for p in names}
    except (OSError, ValueError):
        pass  # a damaged cache: unpacked again below (and left as it is)
    with np.load(io.BytesIO(blob), allow_pickle=False) as packed:
        arrays = {name: packed[name] for name in packed.files}
    arrays = {k: v.astype(np.float32) if v.dtype.kind == "f" else v for k, v in arrays.items()}
    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}-", dir=folder.parent))
        for name, array in arrays.items():
            np.save(tmp / f"{name}.npy", array, allow_pickle=False)
        try:
            os.replace(tmp, folder)
        except OSError:  # another process put it there first
            shutil.rmtree(tmp, ignore_errors=True)
    except OSError:
        pass
    return arrays


def load_exemplar_bank(recipe: ExemplarRecipe, dim: int) -> ExemplarBank:
    """The exemplar bank shipped for ``recipe`` (checked against its JSON record's sha256)."""
    path = recipe.exemplars_path
    record, arrays = read_shipped_bank(path, recipe.spec, "exemplar", "build_builtin_assets_exemplars")
    bank = ExemplarBank(
        features=np.asarray(arrays["features"], dtype=np.float32),
        owner=np.asarray(arrays["owner"], dtype=np.int64),
        class_bank=np.asarray(arrays["class_bank"], dtype=np.float32),
        class_ids=tuple(str(c["id"]) for c in record["classes"]),
    )
    if record.get("feature") != recipe.feature or bank.class_bank.shape[1] != dim:
        raise ModelUnavailableError(recipe.spec, f"{path.name} was built for another feature or text model; reinstall mmsearch")
    return bank
