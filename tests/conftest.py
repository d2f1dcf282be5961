"""Shared fixtures. Tests never touch the network: HF_HUB_OFFLINE=1 makes a missing hub fail at once."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).parent))

from fakes import ColourEncoder  # noqa: E402

from mmsearch.encoders import register_scheme  # noqa: E402

TINY = "openclip:mms-tiny/random"
COLOUR = "colour:v1"

register_scheme("colour", lambda spec, device: ColourEncoder(str(spec)))


@pytest.fixture(autouse=True)
def _isolated_state(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test gets its own mmsearch state dir and no default collection from the environment."""
    monkeypatch.setenv("MMSEARCH_HOME", str(tmp_path_factory.mktemp("mmsearch-home")))
    monkeypatch.delenv("MMSEARCH_COLLECTION", raising=False)
    monkeypatch.delenv("MMSEARCH_MODEL", raising=False)


@pytest.fixture
def tiny_model() -> str:
    return TINY


@pytest.fixture
def colour_model() -> str:
    return COLOUR


@pytest.fixture(scope="module")
def builtin_encoder(tmp_path_factory: pytest.TempPathFactory):  # noqa: ANN201
    """``make(version)``: the built-in model of that version on the CPU (ONNX Runtime when installed), one per
    version and test module, all sharing one fresh model cache."""
    from mmsearch.encoders.builtin import BuiltinEncoder

    cache = tmp_path_factory.mktemp("mmsearch-cache")
    made: dict[str, BuiltinEncoder] = {}

    def make(version: str) -> BuiltinEncoder:
        if version not in made:
            made[version] = BuiltinEncoder(version=version, backend="auto", device="cpu", cache_dir=cache)
        return made[version]

    return make
