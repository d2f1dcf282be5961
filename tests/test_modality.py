"""One modality spelling inside (plural), one outside (singular), converted in one place."""

from __future__ import annotations

import subprocess
import sys

import pytest

from mmsearch.modality import IMAGES, MODALITIES, TEXTS, Modality, other, plural, singular
from mmsearch.store import MODALITIES as STORE_MODALITIES


def test_spellings_convert_both_ways() -> None:
    assert MODALITIES == STORE_MODALITIES == ("images", "texts")
    assert [singular(m) for m in ("images", "image", "texts", "text")] == ["image", "image", "text", "text"]
    assert [plural(m) for m in ("image", "images", "text", "texts")] == ["images", "images", "texts", "texts"]
    assert other(IMAGES) == TEXTS and other("text") == IMAGES
    assert Modality.IMAGES == "images" and Modality("texts").singular == "text" and str(Modality.TEXTS) == "texts"


@pytest.mark.parametrize("bad", ["imag", "", "audio", "Images"])
def test_an_unknown_modality_is_refused_by_name(bad: str) -> None:
    with pytest.raises(ValueError, match="unknown modality"):
        plural(bad)


def test_it_imports_nothing_else_from_mmsearch() -> None:
    code = "import sys, mmsearch.modality; print(sorted(m for m in sys.modules if m.startswith('mmsearch')))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "['mmsearch', 'mmsearch.errors', 'mmsearch.modality']"
