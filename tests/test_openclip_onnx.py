"""OpenCLIP towers in ONNX Runtime (issue 16): the export agrees with PyTorch, is made once per weights file and
reused without torch, and a failed or corrupt export leaves the model on PyTorch. Uses the tiny random config."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("onnxruntime")
pytest.importorskip("open_clip")

from mmsearch.encoders.openclip import OpenCLIPEncoder  # noqa: E402
from mmsearch.encoders.openclip_onnx import ClipImageTransform, probe_images  # noqa: E402
from mmsearch.encoders.openclip_tokenizer import ClipTokenizer  # noqa: E402
from mmsearch.encoders.registry import parse_spec  # noqa: E402
from mmsearch.errors import EncoderError  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
TINY = "openclip:mms-tiny/random"
TEXTS = ["a red car", "x", "", "Ünïcödé — 東京 🚀 &amp; <b>tags</b>", "It's   the dog's   bowl!!", "42 cats, 7 dogs",
         " ".join(["lighthouse on the rocks at dusk"] * 30)]


def _cos(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.sum(a * b, axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("onnx-cache")


@pytest.fixture(scope="module")
def torch_encoder() -> OpenCLIPEncoder:
    encoder = OpenCLIPEncoder(parse_spec(TINY), device="cpu", backend="torch")
    assert encoder.backend == "torch"
    return encoder


@pytest.fixture(scope="module")
def onnx_encoder(cache: Path) -> OpenCLIPEncoder:
    encoder = OpenCLIPEncoder(parse_spec(TINY), device="cpu", cache_dir=cache)
    assert encoder.backend == "onnx" and encoder.onnx_dir is not None and encoder.onnx_dir.parent == cache
    assert encoder.weights_key == f"onnx:{encoder.onnx_dir.name}"  # what keeps its fixed texts' cache
    return encoder


def test_the_torch_free_tokenizer_gives_open_clips_ids() -> None:
    import open_clip

    for context in (32, 77):
        reference = open_clip.tokenizer.SimpleTokenizer(context_length=context)
        mine = ClipTokenizer(open_clip.tokenizer.default_bpe(), context)
        ids = mine(TEXTS)
        assert ids.dtype == np.int64 and ids.shape == (len(TEXTS), context)
        np.testing.assert_array_equal(ids, reference(TEXTS).numpy())
    assert (ids[-1] != 0).all() and ids[-1, -1] == mine.eot_token_id  # the long text was truncated to fit


def test_the_torch_free_image_transform_gives_open_clips_pixels() -> None:
    import open_clip

    mean, std = open_clip.OPENAI_DATASET_MEAN, open_clip.OPENAI_DATASET_STD
    for size in (32, 224):
        reference = open_clip.image_transform(size, is_train=False, mean=mean, std=std)
        mine = ClipImageTransform(size, mean, std)
        for image in probe_images():
            expected = reference(image).numpy()
            got = mine(image)
            assert got.shape == expected.shape == (3, size, size) and got.dtype == np.float32
            assert np.abs(got - expected).max() <= 1e-5


def test_onnx_towers_agree_with_torch(onnx_encoder: OpenCLIPEncoder, torch_encoder: OpenCLIPEncoder) -> None:
    assert (onnx_encoder.dim, onnx_encoder.preprocess_id) == (torch_encoder.dim, torch_encoder.preprocess_id)
    for texts in (TEXTS, TEXTS[:1]):  # other batch sizes than the export's example
        assert _cos(onnx_encoder.encode_texts(texts), torch_encoder.encode_texts(texts)).min() >= 0.999
    images = probe_images() + probe_images()[:2]
    from mmsearch.encoders import embed_pil_images

    got, expected = embed_pil_images(onnx_encoder, images), embed_pil_images(torch_encoder, images)
    assert got.shape == (7, onnx_encoder.dim)
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, rtol=1e-5)
    assert _cos(got, expected).min() >= 0.999
    assert onnx_encoder.numpy_input and not torch_encoder.numpy_input
    meta = json.loads((onnx_encoder.onnx_dir / "meta.json").read_text())
    assert min(meta["parity"].values()) >= 0.999 and meta["dim"] == onnx_encoder.dim


REUSE = """
import json, sys
from mmsearch.encoders.openclip import OpenCLIPEncoder
from mmsearch.encoders.registry import parse_spec
enc = OpenCLIPEncoder(parse_spec(sys.argv[1]), cache_dir=sys.argv[2])
vec = enc.encode_texts(["a red car"])
print(json.dumps({"backend": enc.backend, "dir": str(enc.onnx_dir), "vec": vec[0].tolist(),
                  "modules": sorted({m.split(".")[0] for m in sys.modules})}))
"""


def test_a_second_load_reuses_the_export_without_torch(onnx_encoder: OpenCLIPEncoder, cache: Path) -> None:
    before = {p.relative_to(cache): p.stat().st_mtime_ns for p in cache.rglob("*")}
    env = dict(os.environ, HF_HUB_OFFLINE="1", CUDA_VISIBLE_DEVICES="")
    done = subprocess.run([sys.executable, "-c", REUSE, TINY, str(cache)], capture_output=True, text=True, env=env,
                          cwd=REPO, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["backend"] == "onnx" and report["dir"] == str(onnx_encoder.onnx_dir)
    assert not {"torch", "open_clip", "torchvision", "transformers"} & set(report["modules"])
    np.testing.assert_allclose(report["vec"], onnx_encoder.encode_texts(["a red car"])[0], atol=1e-6)
    after = {p.relative_to(cache): p.stat().st_mtime_ns for p in cache.rglob("*")}
    assert after == before  # nothing exported or rewritten


def test_an_export_that_cannot_be_written_leaves_the_model_on_torch(tmp_path: Path,
                                                                    torch_encoder: OpenCLIPEncoder) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    unwritable = blocker / "cache"  # mkdir under a regular file fails, for root too
    encoder = OpenCLIPEncoder(parse_spec(TINY), device="cpu", cache_dir=unwritable)
    assert encoder.backend == "torch" and encoder.onnx_dir is None and not encoder.numpy_input
    assert encoder.weights_key is None
    np.testing.assert_allclose(encoder.encode_texts(TEXTS), torch_encoder.encode_texts(TEXTS), atol=1e-6)
    with pytest.raises(EncoderError, match="no ONNX export"):
        OpenCLIPEncoder(parse_spec(TINY), device="cpu", cache_dir=unwritable, backend="onnx")


def test_a_corrupt_cached_export_falls_back_to_torch(onnx_encoder: OpenCLIPEncoder, torch_encoder: OpenCLIPEncoder,
                                                     tmp_path: Path) -> None:
    copy = tmp_path / "cache"
    shutil.copytree(onnx_encoder.onnx_dir.parent, copy)
    graph = copy / onnx_encoder.onnx_dir.name / "text.onnx"
    graph.write_bytes(graph.read_bytes()[:200])  # truncated: onnxruntime cannot load it
    with pytest.raises(EncoderError, match="re-export"):
        OpenCLIPEncoder(parse_spec(TINY), device="cpu", cache_dir=copy, backend="onnx").encode_texts(["a"])
    encoder = OpenCLIPEncoder(parse_spec(TINY), device="cpu", cache_dir=copy)
    assert encoder.backend == "onnx"  # the graphs open lazily: the failure shows on first use
    got = encoder.encode_texts(TEXTS)
    assert encoder.backend == "torch"
    np.testing.assert_allclose(got, torch_encoder.encode_texts(TEXTS), atol=1e-6)


def test_a_local_weights_file_is_exported_by_content(torch_encoder: OpenCLIPEncoder, cache: Path,
                                                     tmp_path: Path) -> None:
    import torch

    weights = tmp_path / "tiny.pt"
    torch.save(torch_encoder._model.state_dict(), weights)
    encoder = OpenCLIPEncoder(parse_spec(f"openclip:mms-tiny@{weights}"), device="cpu", cache_dir=cache)
    assert encoder.backend == "onnx" and encoder.spec == f"openclip:mms-tiny@{weights}"
    np.testing.assert_allclose(encoder.encode_texts(["x"]), torch_encoder.encode_texts(["x"]), atol=1e-5)
    moved = tmp_path / "moved.pt"
    weights.rename(moved)  # the same content elsewhere: the same export
    again = OpenCLIPEncoder(parse_spec(f"openclip:mms-tiny@{moved}"), device="cpu", cache_dir=cache)
    assert again.onnx_dir == encoder.onnx_dir
