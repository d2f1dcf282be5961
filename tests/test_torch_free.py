"""mmsearch without torch (issue 16): once the ONNX files are in the model cache, queries and indexing run in a
process where torch, torchvision, open_clip, transformers and timm cannot be imported.

The collections and ONNX exports are made here, with the full stack (as on the machine that exports them); each
check runs in a subprocess that first marks those packages as absent (``sys.modules[name] = None``: ``import``
raises ImportError and ``importlib.util.find_spec`` answers None, as on a box where they are not installed) and
puts a ``sys.meta_path`` finder first that refuses any of their submodules.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from no_torch import HEAVY, blocker

pytest.importorskip("onnxruntime")
pytest.importorskip("open_clip")

import mmsearch  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "data" / "sample"
NAMES = ["cat_chelsea", "coffee_cup", "red_bus", "lighthouse"]
TINY = "openclip:mms-tiny/random"
BLOCKED = HEAVY

pytestmark = pytest.mark.slow

PRELUDE = blocker(BLOCKED) + """
import json
from pathlib import Path
import mmsearch
"""

QUERY = PRELUDE + """
col = mmsearch.open(sys.argv[1])
kind, value = sys.argv[2], sys.argv[3]
hits = col.search(value, k=2) if kind == "text" else col.search(image=value, k=2)
print(json.dumps({"top": Path(hits[0].uri).stem, "score": hits[0].score, "n": len(hits),
                  "loaded": sorted(m for m in BLOCKED if sys.modules.get(m) is not None)}))
"""

INDEX = PRELUDE + """
result = mmsearch.index(sys.argv[1], out=sys.argv[2], model=sys.argv[3], workers=int(sys.argv[4]))
col = mmsearch.open(result.path)
hits = col.search(image=sys.argv[5], k=1)
print(json.dumps({"images": result.report.images_embedded, "top": Path(hits[0].uri).stem, "score": hits[0].score,
                  "loaded": sorted(m for m in BLOCKED if sys.modules.get(m) is not None)}))
"""


def _run(code: str, *args: str) -> dict:
    env = dict(os.environ, HF_HUB_OFFLINE="1", CUDA_VISIBLE_DEVICES="")
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    done = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, env=env, cwd=REPO,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["loaded"] == [], report["loaded"]
    return report


def _folder(root: Path) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for name in NAMES:
        shutil.copy(SAMPLE / f"{name}.jpg", root)
        shutil.copy(SAMPLE / f"{name}.txt", root)
    return root


@pytest.fixture(scope="module")
def builtin_collection(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = _folder(tmp_path_factory.mktemp("tf-builtin") / "in")
    result = mmsearch.index(folder, out=folder.parent / "b.mms", model="builtin", workers=0)
    from mmsearch.encoders.builtin import BuiltinEncoder

    encoder = BuiltinEncoder(backend="onnx", device="cpu")  # both graphs in the model cache
    assert encoder.text_backend == "onnx" and encoder.backend == "onnx"
    return result.path


@pytest.fixture(scope="module")
def openclip_collection(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = _folder(tmp_path_factory.mktemp("tf-openclip") / "in")
    result = mmsearch.index(folder, out=folder.parent / "o.mms", model=TINY, workers=0)
    from mmsearch.encoders import load_encoder

    assert load_encoder(TINY, device="cpu").backend == "onnx"  # exported into the model cache
    return result.path


def test_a_builtin_text_query_runs_without_torch(builtin_collection: Path) -> None:
    assert _run(QUERY, str(builtin_collection), "text", "a cat")["top"] == "cat_chelsea"


def test_a_builtin_image_query_runs_without_torch(builtin_collection: Path) -> None:
    report = _run(QUERY, str(builtin_collection), "image", str(SAMPLE / "lighthouse.jpg"))
    assert report["top"] == "lighthouse" and report["score"] == pytest.approx(1.0, abs=2e-3)


def test_openclip_queries_run_without_torch(openclip_collection: Path) -> None:
    text = _run(QUERY, str(openclip_collection), "text", "a red bus")
    assert text["n"] == 2 and -1.0 <= text["score"] <= 1.0
    image = _run(QUERY, str(openclip_collection), "image", str(SAMPLE / "red_bus.jpg"))
    assert image["top"] == "red_bus" and image["score"] == pytest.approx(1.0, abs=2e-3)  # stored as float16


@pytest.mark.parametrize("workers", [0, 1])
def test_indexing_with_openclip_runs_without_torch(openclip_collection: Path, tmp_path: Path, workers: int) -> None:
    folder = _folder(tmp_path / "new")
    report = _run(INDEX, str(folder), str(tmp_path / "new.mms"), TINY, str(workers), str(SAMPLE / "coffee_cup.jpg"))
    assert report["images"] == len(NAMES)
    assert report["top"] == "coffee_cup" and report["score"] == pytest.approx(1.0, abs=2e-3)


def test_models_export_makes_a_cache_that_serves_without_torch(openclip_collection: Path, tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """``mmsearch models export SPEC --to DIR`` (docs/install.md step 2) is all a torch-free box needs: queries run
    from that folder alone, as MMSEARCH_CACHE_DIR."""
    from click.testing import CliRunner

    from mmsearch.cli.main import main

    exported = tmp_path / "onnx-cache"
    out = CliRunner().invoke(main, ["models", "export", TINY, "--to", str(exported), "--json"])
    assert out.exit_code == 0, out.output
    assert json.loads(out.output) == {"spec": TINY, "cache": str(exported), "image": "onnx", "text": "onnx"}
    monkeypatch.setenv("MMSEARCH_CACHE_DIR", str(exported))
    image = _run(QUERY, str(openclip_collection), "image", str(SAMPLE / "red_bus.jpg"))
    assert image["top"] == "red_bus" and image["score"] == pytest.approx(1.0, abs=2e-3)
    refused = CliRunner().invoke(main, ["models", "export", "adapter:/nowhere", "--to", str(tmp_path / "x")])
    assert refused.exit_code == 1 and "export its base model" in refused.output
