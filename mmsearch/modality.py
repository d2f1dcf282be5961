"""The two modalities and their two spellings, in one place (layer 0: imports nothing from mmsearch).

Inside, a modality is plural: the store's tables and shard folders, index files and manifest keys are
``"images"`` and ``"texts"``. Outside, it is singular: the CLI's ``--modality``, a hit's ``modality``, the HTTP
API say ``"image"`` and ``"text"``. Convert with :func:`singular` / :func:`plural`, never by slicing.
"""

from __future__ import annotations

from enum import Enum

__all__ = ["IMAGES", "MODALITIES", "Modality", "TEXTS", "other", "plural", "singular"]


class Modality(str, Enum):
    """A modality; its value is the inside (plural) spelling, so a member equals that string."""

    IMAGES = "images"
    TEXTS = "texts"

    @property
    def singular(self) -> str:
        """``"image"`` or ``"text"``."""
        return _SINGULAR[self.value]

    def __str__(self) -> str:
        return self.value


IMAGES = Modality.IMAGES.value
TEXTS = Modality.TEXTS.value
MODALITIES = (IMAGES, TEXTS)

_SINGULAR = {IMAGES: "image", TEXTS: "text"}
_PLURAL = {**{s: p for p, s in _SINGULAR.items()}, **{p: p for p in _SINGULAR}}


def singular(modality: str) -> str:
    """``"images"`` / ``"image"`` -> ``"image"``; ``"texts"`` / ``"text"`` -> ``"text"`` (ValueError otherwise)."""
    return _SINGULAR[plural(modality)]


def plural(modality: str) -> str:
    """``"image"`` / ``"images"`` -> ``"images"``; ``"text"`` / ``"texts"`` -> ``"texts"`` (ValueError otherwise)."""
    try:
        return _PLURAL[str(modality)]
    except KeyError:
        raise ValueError(f"unknown modality {modality!r}: one of image, text (images, texts)") from None


def other(modality: str) -> str:
    """The other modality, in the inside spelling: ``"images"`` <-> ``"texts"``."""
    return TEXTS if plural(modality) == IMAGES else IMAGES
