"""The README's library examples run as written (on a small collection built with the real built-in model)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import mmsearch

ROOT = Path(__file__).resolve().parents[1]
NAMES = ["cat_chelsea", "red_sports_car", "red_bus", "blue_car", "lighthouse", "dahlia_flower", "coffee_cup"]

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def collection(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("sample")
    for name in NAMES:
        for suffix in (".jpg", ".txt"):
            shutil.copy(ROOT / "data" / "sample" / f"{name}{suffix}", folder)
    return mmsearch.index(folder, out=folder / "c.mms").path


@pytest.mark.parametrize("name", ["recommender.py", "assistant.py"])
def test_example_is_in_the_readme_verbatim(name: str) -> None:
    assert (ROOT / "examples" / name).read_text().strip() in (ROOT / "README.md").read_text()


def _run(*args: str) -> str:
    result = subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_recommender_example(collection: Path) -> None:
    out = _run(str(ROOT / "examples" / "recommender.py"), str(collection))
    recommended = [line.split()[-1] for line in out.splitlines() if line.startswith("recommend")]
    assert len(recommended) == 3 and not any("cat_chelsea" in r for r in recommended[:1])
    assert "batch     'a bus' -> ['red_bus.jpg'" in out
    assert "embeddings (7,) (7, 384) float32" in out and "by id (2, 384)" in out


def test_assistant_example(collection: Path) -> None:
    out = _run(str(ROOT / "examples" / "assistant.py"), str(collection))
    assert "found: True" in out and "[I1] image" in out and "lighthouse.jpg" in out.split("[I2]")[0]
