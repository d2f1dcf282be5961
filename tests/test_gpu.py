"""The CUDA paths, checked against the CPU: skipped (saying why) where there is no GPU, as in CI.

Run on a CUDA machine with ``pytest -m gpu tests/test_gpu.py``; ``benchmarks/gpu.py`` measures the same paths.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from fakes import noise_image

import mmsearch
from mmsearch.encoders.registry import load_encoder
from mmsearch.indexes import build

torch = pytest.importorskip("torch")
pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]

TINY = "openclip:mms-tiny/random"


def _faiss_gpus() -> int:
    import faiss

    return faiss.get_num_gpus() if hasattr(faiss, "get_num_gpus") else 0


def test_openclip_on_cuda_matches_cpu() -> None:
    gpu, cpu = load_encoder(TINY, device="cuda"), load_encoder(TINY, device="cpu")
    x = torch.randn(16, *cpu.image_transform(__import__("PIL.Image").Image.new("RGB", (64, 48))).shape)
    cos = np.sum(gpu.encode_images(x) * cpu.encode_images(x), axis=1)
    assert cos.min() > 0.99  # bf16 autocast on the GPU, float32 on the CPU
    texts = ["a red car", "two dogs", "a lighthouse"]
    assert np.sum(gpu.encode_texts(texts) * cpu.encode_texts(texts), axis=1).min() > 0.99


def test_ingest_through_the_cuda_feed_matches_cpu(tmp_path: Path) -> None:
    """Decode workers -> pinned buffer (reused across batches) -> GPU gives the CPU's embeddings, per file."""
    folder = tmp_path / "imgs"
    folder.mkdir()
    for i in range(150):  # several batches, so a reused pinned buffer that was overwritten too early would show
        noise_image(folder / f"{i:03d}.png", seed=i, size=(96, 72))
    results = {}
    for device in ("cuda", "cpu"):
        out = tmp_path / f"{device}.mms"
        mmsearch.index(folder, out=out, model=TINY, device=device, batch_size=16, workers=2, dedup=False)
        col = mmsearch.open(out)
        ids, vecs = zip(*col.iter_embeddings("image"))
        ids, vecs = np.concatenate(ids), np.concatenate(vecs)
        results[device] = {col.item(int(i)).uri: v for i, v in zip(ids, vecs)}
    assert results["cuda"].keys() == results["cpu"].keys() and len(results["cpu"]) == 150
    cos = [float(results["cuda"][k] @ results["cpu"][k]) for k in results["cpu"]]
    assert min(cos) > 0.99


@pytest.mark.skipif("_faiss_gpus() == 0", reason="needs faiss with GPUs (faiss-gpu)")
def test_ivf_built_on_gpu_matches_cpu_build(monkeypatch: pytest.MonkeyPatch) -> None:
    import faiss

    rng = np.random.default_rng(0)
    centres = rng.standard_normal((200, 64)).astype(np.float32)
    x = centres[rng.integers(0, 200, 40_000)] + 0.3 * rng.standard_normal((40_000, 64)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    ids = np.arange(len(x), dtype=np.int64)
    exact = faiss.IndexFlatIP(64)
    exact.add(x)
    q = x[:500] + 0.05 * rng.standard_normal((500, 64)).astype(np.float32)
    _, truth = exact.search(q, 10)
    recall = {}
    for label, env in (("cpu", "0"), ("gpu", "1")):
        monkeypatch.setenv("MMSEARCH_FAISS_GPU", env)
        assert (build.faiss_gpus() > 0) == (label == "gpu")
        index = build.new_index("IVF256,Flat", 64)
        build.train_on_sample(index, lambda n: x[:n], len(x), max_sample_bytes=1 << 30)
        assert build.add_batches(index, [(ids[:20_000], x[:20_000]), (ids[20_000:], x[20_000:])]) == len(x)
        assert index.ntotal == len(x)
        index = faiss.deserialize_index(faiss.serialize_index(index))  # still a plain CPU index once built
        faiss.extract_index_ivf(index).nprobe = 16
        _, got = index.search(q, 10)
        recall[label] = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(got, truth)])
    assert recall["gpu"] >= recall["cpu"] - 0.03 and recall["gpu"] > 0.8
