"""``builtin:v4``: ``builtin:v3`` with a second drawing of 1,259 of its emoji classes (Microsoft's Fluent emoji).

v3 defines each emoji class by one Twemoji drawing, so an emoji drawn in another family's style is matched
against one style only. v4 adds, for the classes Fluent draws, its "modern" drawing (MIT, from the npm package
``fluentui-emoji``; attribution in ``assets/README.md``) as a second exemplar in the same feature (the quadrant
mean of grid2). A class's emoji logit is v3's ``65 * cos - 30`` with ``cos`` the better of its Twemoji cosine and
its Fluent cosine less a margin (0.06): without it, Fluent's drawings took probability mass from the flag classes
of real flags. Style and margin were chosen on development sets, neither an exemplar source nor a goal set
(``tools/experiments/builtin_v4_fluent/``). Classes, class bank, image graph and text tower are v3's: texts embed
exactly as in v1-v3.

The bank is built by ``python tools/build_builtin_assets_v4.py`` in the repository (registry packages only).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import ModelUnavailableError
from .base import l2_normalise
from .builtin_exemplars import load_exemplar_bank, read_shipped_bank
from .builtin_recipes import ASSETS_DIR, RECIPES
from .builtin_v3 import EMOJI_FEATURE, CompositeExemplars, EmojiBank, V3Recipe, load_emoji_bank, quadmean


@dataclass(frozen=True)
class V4Recipe(V3Recipe):
    """v3's recipe (its flags and emoji banks, reused unchanged) plus a second exemplar for some emoji classes."""

    #: the version whose emoji bank (classes, Twemoji exemplars, class-bank rows) is reused
    emoji_version: str = "v3"
    #: cosine taken off the second family's similarities
    extra_margin: float = 0.06

    @property
    def emoji_path(self) -> Path:
        return ASSETS_DIR / f"builtin_{self.emoji_version}_emoji.npz"

    @property
    def extra_emoji_path(self) -> Path:
        return ASSETS_DIR / f"builtin_{self.version}_emoji_extra.npz"

    def load_exemplars(self, dim: int) -> CompositeExemplars:
        emoji = TwoFamilyEmojiBank.from_banks(load_emoji_bank(self, dim), *load_extra_emoji(self), self.extra_margin)
        return CompositeExemplars(load_exemplar_bank(self, dim), emoji, self.emoji_scale, self.emoji_bias)


V4_RECIPE = V4Recipe(
    version="v4", resize_px=224, crop_px=224, temperature=2.0, descriptions_per_class=10, seed=0,
    base_bank="v1", feature="grid2", exemplar_scale=65.0, exemplar_bias=-30.0,
    flags_version="v2", emoji_scale=65.0, emoji_bias=-30.0, emoji_version="v3", extra_margin=0.06,
)
RECIPES.setdefault("v4", V4_RECIPE)  # importing this module makes builtin:v4 known to get_recipe


@dataclass(frozen=True)
class TwoFamilyEmojiBank(EmojiBank):
    """v3's emoji bank plus extra exemplars: a class's similarity is the best of its first exemplar's cosine and
    its extra exemplars' cosines less ``margin``."""

    extra: np.ndarray = field(default_factory=lambda: np.zeros((0, 1280), np.float32))  # (extras, 1280) unit rows
    owner: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))  # (extras,) the class of each
    margin: float = 0.0

    @classmethod
    def from_banks(cls, base: EmojiBank, extra: np.ndarray, owner: np.ndarray, margin: float) -> TwoFamilyEmojiBank:
        if owner.size and (owner.min() < 0 or owner.max() >= len(base.class_ids)):
            raise ValueError("an extra emoji exemplar belongs to no class")
        return cls(base.features, base.class_bank, base.class_ids, base.names, extra, owner, margin)

    def similarities(self, grid2: np.ndarray) -> np.ndarray:
        query = l2_normalise(quadmean(grid2))
        best = query @ self.features.T
        if len(self.owner):
            np.maximum.at(best.T, self.owner, (query @ self.extra.T - np.float32(self.margin)).T)
        return best


def load_extra_emoji(recipe: V4Recipe) -> tuple[np.ndarray, np.ndarray]:
    """The second family's exemplar features (unit rows) and their classes, checked against the JSON record."""
    path = recipe.extra_emoji_path
    record, arrays = read_shipped_bank(path, recipe.spec, "emoji", "build_builtin_assets_v4")
    features = l2_normalise(np.asarray(arrays["features"], dtype=np.float32))
    owner = np.asarray(arrays["owner"], dtype=np.int64)
    if (record.get("feature") != EMOJI_FEATURE or owner.shape != (features.shape[0],)
            or record.get("margin") != recipe.extra_margin):
        raise ModelUnavailableError(recipe.spec, f"{path.name} was built for another feature or margin; "
                                    "reinstall mmsearch")
    return features, owner
