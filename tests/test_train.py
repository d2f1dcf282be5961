"""Adapter training on generated two-colour images whose captions use made-up words.

The base model here ("halves") sees each image exactly (one-hot of its left and right colour) but
embeds texts as a bag of random per-word vectors, so its text->image recall is near chance. The words
recur across caption groups, so an adapter trained on some groups can align the held-out ones.
"""

from __future__ import annotations

import json
import os
import zlib
from pathlib import Path
from typing import Sequence

import numpy as np
import pytest
import torch
from fakes import COLOURS, NAMES
from PIL import Image

import mmsearch
from mmsearch.encoders import load_encoder, register_scheme
from mmsearch.errors import ConfigError
from mmsearch.evaluation import Pair
from mmsearch.train import AdapterEncoder, AdapterExistsError, TrainConfig, TrainProgress, train_adapter
from mmsearch.train import register as register_adapters

LEFT_WORDS = ["zorp", "blick", "frub", "quax", "mell", "tirn", "gorb", "yask"]
RIGHT_WORDS = ["plon", "wuzz", "kreb", "dafe", "snib", "vold", "hupe", "ciss"]
DIM = 16
FAST = TrainConfig(epochs=40, learning_rate=0.05, batch_size=64, seed=3, cv_folds=3)  # 64 groups: cross-validation
HELD_OUT = TrainConfig(epochs=100, learning_rate=0.05, batch_size=64, seed=3, cv_below_groups=0)  # one validation split


class HalvesTransform:
    """Image -> mean RGB of its left and right halves, shape (6,)."""

    def __call__(self, image: Image.Image) -> torch.Tensor:
        arr = np.asarray(image.convert("RGB").resize((8, 4)), dtype=np.float32) / 255.0
        return torch.from_numpy(np.concatenate([arr[:, :4].reshape(-1, 3).mean(0), arr[:, 4:].reshape(-1, 3).mean(0)]))


class HalvesEncoder:
    """Images: one-hot(left colour) + one-hot(right colour); texts: a sum of random per-word vectors."""

    dim = DIM
    preprocess_id = "halves-8x4"

    def __init__(self, spec: str = "halves:v1") -> None:
        self.spec = spec

    @property
    def image_transform(self) -> HalvesTransform:
        return HalvesTransform()

    def encode_images(self, batch: torch.Tensor) -> np.ndarray:
        table = np.array(list(COLOURS.values()), dtype=np.float32) / 255.0
        halves = batch.numpy().reshape(-1, 2, 3)
        nearest = ((halves[:, :, None, :] - table[None, None]) ** 2).sum(-1).argmin(-1)
        out = np.zeros((len(halves), DIM), dtype=np.float32)
        out[np.arange(len(halves)), nearest[:, 0]] = 1
        out[np.arange(len(halves)), 8 + nearest[:, 1]] = 1
        return out / np.sqrt(2)

    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        out = np.stack([sum(_word_vec(w) for w in t.split()) for t in texts]).astype(np.float32)
        return out / np.linalg.norm(out, axis=1, keepdims=True)


def _word_vec(word: str) -> np.ndarray:
    return np.random.default_rng(zlib.crc32(word.encode())).standard_normal(DIM)


class ExactEncoder(HalvesEncoder):
    """Like halves, but texts land exactly on their image's vector: the base model is already perfect."""

    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        out = np.zeros((len(texts), DIM), dtype=np.float32)
        for row, text in enumerate(texts):
            left, right = text.split()
            out[row, LEFT_WORDS.index(left)] = out[row, 8 + RIGHT_WORDS.index(right)] = 1
        return out / np.sqrt(2)


register_scheme("halves", lambda spec, device: HalvesEncoder(str(spec)))
register_scheme("exact", lambda spec, device: ExactEncoder(str(spec)))
register_adapters()


def make_pairs(root: Path, *, captions_dir: bool = False) -> list[Pair]:
    """64 images, one per (left, right) colour combination, captioned 'LEFTWORD RIGHTWORD'."""
    root.mkdir(parents=True, exist_ok=True)
    pairs = []
    for i, left in enumerate(NAMES):
        for j, right in enumerate(NAMES):
            image = Image.new("RGB", (16, 8), COLOURS[left])
            image.paste(COLOURS[right], (8, 0, 16, 8))
            path = root / f"{left}-{right}.png"
            image.save(path)
            caption = f"{LEFT_WORDS[i]} {RIGHT_WORDS[j]}"
            if captions_dir:
                path.with_suffix(".txt").write_text(caption, encoding="utf-8")
            pairs.append(Pair(str(path), caption, caption))
    return pairs


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("train")
    pairs = make_pairs(root / "images")
    seen: list[TrainProgress] = []
    report = train_adapter(pairs, base="halves:v1", out=root / "adapter", config=FAST, progress=seen.append)
    return root, pairs, report, seen


def test_adapter_lifts_held_out_recall(trained) -> None:
    _, _, report, seen = trained
    before, after = report.before["text_to_image"], report.after["text_to_image"]
    # 64 caption groups are under cv_below_groups: the epoch count is chosen by 3-fold cross-validation on the
    # 51 non-test pairs, then the heads are refitted on all of them
    assert report.test_pairs >= 10 and report.train_pairs + report.test_pairs == 64 and report.val_pairs == report.train_pairs
    assert report.validation["method"] == "3-fold cross-validation" and report.improved
    assert report.validation["adapter"] > report.validation["base"]
    assert before["R@1"] < 40
    assert after["R@1"] >= before["R@1"] + 40  # the stated margin: +40 points of text->image recall@1
    assert report.after["image_to_text"]["R@1"] >= report.before["image_to_text"]["R@1"] + 40
    assert {p.stage for p in seen} == {"fold 1/3", "fold 2/3", "fold 3/3", "final"}
    assert seen[-1].stage == "final" and seen[-1].epoch == report.best_epoch and 0 < report.best_epoch <= report.epochs_run
    assert any("small set" in note for note in report.notes)  # 64 groups: the report says its numbers are coarse


def test_held_out_selection_on_a_validation_split(tmp_path: Path) -> None:
    pairs = make_pairs(tmp_path / "images")
    seen: list[TrainProgress] = []
    report = train_adapter(pairs, base="halves:v1", out=tmp_path / "ad", config=HELD_OUT, progress=seen.append)
    assert report.validation["method"] == "held-out split" and report.improved
    assert report.train_pairs + report.val_pairs + report.test_pairs == 64 and report.val_pairs == report.validation["pairs"]
    assert report.after["text_to_image"]["R@1"] >= report.before["text_to_image"]["R@1"] + 25
    assert report.after["image_to_text"]["R@1"] >= report.before["image_to_text"]["R@1"] + 25
    # the kept epoch has the best validation score seen, and early stopping ended the run patience epochs later
    scores = [p.val_score for p in seen]
    assert seen[report.best_epoch - 1].val_score == max(scores) == report.validation["adapter"]
    assert report.epochs_run == len(seen) and report.epochs_run in (HELD_OUT.epochs, report.best_epoch + HELD_OUT.patience_epochs)


@pytest.mark.parametrize("config", [FAST, HELD_OUT], ids=["cross-validation", "held-out"])
def test_keeps_the_base_model_when_the_adapter_cannot_beat_it_on_validation(config: TrainConfig, tmp_path: Path) -> None:
    from mmsearch.train import load_heads

    pairs = make_pairs(tmp_path / "images")
    report = train_adapter(pairs, base="exact:v1", out=tmp_path / "ad", config=config)
    assert report.validation["base"] == 1.0 and not report.improved and report.best_epoch == 0
    assert report.after == {**report.before, "model": report.after["model"]}  # the test recall is the base model's
    assert any("identity" in note for note in report.notes)
    heads, meta = load_heads(tmp_path / "ad")
    assert all(float(p.detach().abs().max()) == 0 for p in heads.identity_parameters()) and meta["report"]["improved"] is False
    vecs = ExactEncoder().encode_texts(["zorp plon", "mell vold"])
    np.testing.assert_allclose(AdapterEncoder(ExactEncoder(), heads, tmp_path / "ad").project_texts(vecs), vecs, atol=1e-6)


def test_the_pull_toward_the_base_model_shrinks_the_heads(tmp_path: Path) -> None:
    from mmsearch.train.data import base_features, split_by_group
    from mmsearch.train.trainer import _fit, _gather, _torch_threads

    pairs = make_pairs(tmp_path / "images")
    feats = base_features(pairs, HalvesEncoder(), tmp_path / "cache", batch_size=16, workers=0)
    train = _gather(feats, split_by_group(pairs, test_fraction=0.2, val_fraction=0.15, seed=0)[0])
    norms = []
    for weight in (0.0, 10.0, 1000.0):
        config = TrainConfig(epochs=30, learning_rate=0.05, batch_size=64, identity_weight=weight)
        with _torch_threads(1):
            heads = _fit(train, None, DIM, config, seed=0, epochs=30, patience=None, progress=None, stage="").heads
        norms.append(sum(float(p.detach().pow(2).sum()) for p in heads.identity_parameters()))
    assert norms[0] > norms[1] > norms[2] > 0


def test_best_epoch_prefers_the_base_model_on_ties() -> None:
    from mmsearch.train.trainer import _best_epoch

    assert _best_epoch([0.5, 0.5, 0.4]) == 0
    assert _best_epoch([0.5, 0.6, 0.7, 0.7, 0.65]) == 2
    assert _best_epoch([0.5]) == 0


def test_split_keeps_test_captions_out_of_training(trained) -> None:
    root, pairs, report, _ = trained
    test = [json.loads(line) for line in (root / "adapter" / "test_pairs.jsonl").read_text().splitlines()]
    assert len(test) == report.test_pairs
    held_out = {t["text"] for t in test}
    # every held-out caption is new, but its words were seen in training
    assert held_out and len(held_out) == len(test)
    words = {w for p in pairs if p.text not in held_out for w in p.text.split()}
    assert all(set(t.split()) <= words for t in held_out)


def test_saved_adapter_round_trips_through_the_registry_and_evaluate(trained) -> None:
    root, _, report, _ = trained
    spec = f"adapter:{root / 'adapter'}"
    enc = load_encoder(spec)
    assert isinstance(enc, AdapterEncoder) and enc.dim == DIM and enc.preprocess_id == "halves-8x4"
    test_file = root / "adapter" / "test_pairs.jsonl"
    after = mmsearch.evaluate(test_file, model=spec)
    before = mmsearch.evaluate(test_file, model="halves:v1")
    assert after.text_to_image == report.after["text_to_image"]
    assert after.image_to_text == report.after["image_to_text"]
    assert before.text_to_image == report.before["text_to_image"]
    meta = json.loads((root / "adapter" / "adapter.json").read_text())
    assert meta["base_model"] == "halves:v1" and meta["seed"] == 3 and meta["head"] == "linear"
    assert meta["report"]["after"]["text_to_image"] == report.after["text_to_image"]


def test_projecting_stored_base_vectors_equals_re_embedding(trained) -> None:
    root, pairs, _, _ = trained
    enc = AdapterEncoder.load(root / "adapter")
    base = HalvesEncoder()
    texts = [p.text for p in pairs[:5]]
    np.testing.assert_allclose(enc.project_texts(base.encode_texts(texts)), enc.encode_texts(texts), atol=1e-6)
    batch = torch.stack([HalvesTransform()(Image.open(p.image)) for p in pairs[:5]])
    np.testing.assert_allclose(enc.project_images(base.encode_images(batch)), enc.encode_images(batch), atol=1e-6)


def test_refuses_to_overwrite_without_force(trained, tmp_path: Path) -> None:
    root, pairs, _, _ = trained
    before = (root / "adapter" / "adapter.safetensors").read_bytes()
    with pytest.raises(AdapterExistsError, match="--force"):
        train_adapter(pairs, base="halves:v1", out=root / "adapter", config=FAST)
    assert (root / "adapter" / "adapter.safetensors").read_bytes() == before


def test_same_seed_same_adapter_and_force_replaces(trained) -> None:
    root, pairs, report, _ = trained
    again = train_adapter(pairs, base="halves:v1", out=root / "adapter", config=FAST, force=True)
    assert again.after == report.after and again.best_epoch == report.best_epoch
    weights = (root / "adapter" / "adapter.safetensors").read_bytes()
    other = train_adapter(pairs, base="halves:v1", out=root / "other", config=FAST)
    assert (root / "other" / "adapter.safetensors").read_bytes() == weights
    assert other.after["text_to_image"] == report.after["text_to_image"]


def test_untrained_adapter_equals_base(tmp_path: Path) -> None:
    from mmsearch.train.heads import AdapterHeads

    heads = AdapterHeads(DIM, "mlp", 8)
    vecs = HalvesEncoder().encode_texts(["zorp plon", "mell vold"])
    enc = AdapterEncoder(HalvesEncoder(), heads.eval(), tmp_path)
    np.testing.assert_allclose(enc.project_texts(vecs), vecs, atol=1e-6)
    np.testing.assert_allclose(enc.project_images(np.eye(DIM, dtype=np.float32)), np.eye(DIM), atol=1e-6)


def test_mlp_head_from_a_captioned_folder(tmp_path: Path) -> None:
    make_pairs(tmp_path / "photos", captions_dir=True)
    config = TrainConfig(head="mlp", hidden_dim=32, epochs=40, learning_rate=0.02, seed=1, cv_folds=3)
    report = train_adapter(tmp_path / "photos", base="halves:v1", out=tmp_path / "mlp", config=config)
    assert report.head == "mlp" and report.pairs == 64
    assert report.after["text_to_image"]["R@1"] > report.before["text_to_image"]["R@1"]


def test_guard_rails(tmp_path: Path) -> None:
    pairs = make_pairs(tmp_path / "images")
    with pytest.raises(ConfigError, match="only 29 distinct captions: training needs at least 30"):
        train_adapter(pairs[:29], base="halves:v1", out=tmp_path / "a")
    same_caption = [Pair(p.image, "zorp plon", "zorp plon") for p in pairs]  # 64 images but one caption group
    with pytest.raises(ConfigError, match="only 1 distinct captions"):
        train_adapter(same_caption, base="halves:v1", out=tmp_path / "a")
    with pytest.raises(ConfigError, match="cv_folds"):
        train_adapter(pairs, base="halves:v1", out=tmp_path / "a", config=TrainConfig(cv_folds=1))
    with pytest.raises(ConfigError, match="head"):
        train_adapter(pairs, base="halves:v1", out=tmp_path / "a", config=TrainConfig(head="conv"))
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not an image")
    noisy = pairs + pairs[:8] + [Pair(str(broken), "zorp ciss", "zorp ciss")]
    report = train_adapter(noisy, base="halves:v1", out=tmp_path / "b", config=TrainConfig(epochs=2))
    assert report.skipped_images == 1 and report.merged_duplicates == 8 and report.pairs == 64


def test_reprojecting_a_collection_equals_re_embedding_with_the_adapter(trained, tmp_path: Path) -> None:
    from mmsearch.store import Store
    from mmsearch.train import reproject_collection

    root, _, _, _ = trained
    adapter = root / "adapter"
    folder = tmp_path / "photos"
    make_pairs(folder, captions_dir=True)
    mmsearch.index(folder, out=tmp_path / "base.mms", model="halves:v1", workers=0, embedding_dtype="float32")
    report = reproject_collection(tmp_path / "base.mms", tmp_path / "projected.mms", adapter=adapter)
    mmsearch.index(folder, out=tmp_path / "direct.mms", model=f"adapter:{adapter}", workers=0, embedding_dtype="float32")
    assert report.images == 64 and report.texts == 64 and report.model == f"adapter:{adapter.resolve()}"
    for modality, key in (("images", "uri"), ("texts", "text")):
        got, want = (Store.open(tmp_path / name).scan(modality).sort_by(key) for name in ("projected.mms", "direct.mms"))
        assert got.column(key).to_pylist() == want.column(key).to_pylist()
        np.testing.assert_allclose(np.array(got.column("embedding").to_pylist()),
                                   np.array(want.column("embedding").to_pylist()), atol=1e-5)
    hits = mmsearch.open(tmp_path / "projected.mms").search("zorp plon", k=1)
    assert Path(hits[0].uri).name == "red-red.png"
    with pytest.raises(ConfigError, match="force"):
        reproject_collection(tmp_path / "base.mms", tmp_path / "projected.mms", adapter=adapter)


def test_groups_linked_by_a_caption_or_image_land_in_the_same_split() -> None:
    from mmsearch.train.data import split_by_group

    pairs = [Pair(f"/img/{i}.png", f"caption {i}", f"g{i}") for i in range(40)]
    pairs += [Pair("/img/x.png", "caption 0", "gx"), Pair("/img/1.png", "other words", "gy")]
    for seed in range(5):
        parts = split_by_group(pairs, test_fraction=0.3, val_fraction=0.2, seed=seed)
        where = {p.group: n for n, part in enumerate(parts) for p in part}
        assert where["gx"] == where["g0"] and where["gy"] == where["g1"]
        texts = [{p.text for p in part} for part in parts]
        assert not texts[0] & texts[2] and not texts[1] & texts[2] and not texts[0] & texts[1]


def test_base_features_are_cached_as_parquet_and_reused(trained) -> None:
    import pyarrow.parquet as pq

    from mmsearch.train.data import base_features

    root, pairs, _ = trained[0], trained[1], trained[2]
    cache = next((root / "adapter").rglob("images.parquet")).parent
    images = pq.read_table(cache / "images.parquet")
    assert images.schema.field("embedding").type.list_size == 16 and images.num_rows == len({p.image for p in pairs})
    from mmsearch.encoders import load_encoder

    base = load_encoder("halves:v1")

    class _NoEncode:  # a cache hit must not touch the encoder
        spec, preprocess_id = base.spec, base.preprocess_id

    again = base_features(pairs, _NoEncode(), cache.parent, batch_size=8, workers=0)
    assert again.image_uris == images.column("uri").to_pylist()
    # an image edited in place (same path) is a cache miss: the encoder is asked again
    edited = Path(pairs[0].image)
    edited.write_bytes(edited.read_bytes())
    os.utime(edited, ns=(edited.stat().st_atime_ns, edited.stat().st_mtime_ns + 10**9))
    with pytest.raises(AttributeError):
        base_features(pairs, _NoEncode(), cache.parent, batch_size=8, workers=0)
    assert base_features(pairs, base, cache.parent, batch_size=8, workers=0).image_uris == again.image_uris


def test_train_cli(tmp_path: Path) -> None:
    import json

    from click.testing import CliRunner

    from mmsearch.cli.main import main

    make_pairs(tmp_path / "photos", captions_dir=True)
    runner = CliRunner()
    args = ["train", str(tmp_path / "photos"), "--base", "halves:v1", "--out", str(tmp_path / "ad"), "--epochs", "3"]
    first = runner.invoke(main, [*args, "--json"])
    assert first.exit_code == 0, first.output
    report = json.loads(first.output[first.output.index("{"):])
    assert report["base_model"] == "halves:v1" and report["test_pairs"] > 0
    again = runner.invoke(main, args)
    assert again.exit_code == 1 and "--force" in again.output
    table = runner.invoke(main, [*args, "--force"])
    assert table.exit_code == 0 and "use it with: --model adapter:" in table.output


def test_train_cli_reads_a_csv_table_with_named_columns(tmp_path: Path) -> None:
    import csv

    from click.testing import CliRunner

    from mmsearch.cli.main import main

    pairs = make_pairs(tmp_path / "photos")
    with open(tmp_path / "pairs.csv", "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["picture", "words", "group"])
        writer.writerows([Path(p.image).relative_to(tmp_path), p.text, p.group] for p in pairs)
    args = ["train", str(tmp_path / "pairs.csv"), "--base", "halves:v1", "--out", str(tmp_path / "ad"), "--epochs", "3"]
    guessed = CliRunner().invoke(main, args)
    assert guessed.exit_code != 0 and "--path-column" in guessed.output  # neither column has a known name
    named = CliRunner().invoke(main, [*args, "--path-column", "picture", "--text-column", "words", "--json"])
    assert named.exit_code == 0, named.output
    assert json.loads(named.output[named.output.index("{"):])["pairs"] == 64


@pytest.mark.parametrize("weights", ["random", "file"])
def test_trains_on_an_openclip_base(weights: str, tiny_model: str, tmp_path: Path) -> None:
    """The OpenCLIP backend end to end: features, training, the saved adapter as a model spec, evaluate.

    The tiny model's weights are random (no real CLIP weights here), so only the mechanics are checked, for
    ``openclip:ARCH/random`` and for ``openclip:ARCH@FILE`` (an architecture with a local weights file).
    """
    from mmsearch.encoders.openclip import OpenCLIPEncoder
    from mmsearch.encoders.registry import parse_spec

    base = tiny_model
    if weights == "file":
        path = tmp_path / "tiny.pt"
        torch.save(OpenCLIPEncoder(parse_spec(tiny_model))._model.state_dict(), path)
        base = f"openclip:mms-tiny@{path}"
    pairs = make_pairs(tmp_path / "images")
    config = TrainConfig(epochs=5, batch_size=32, cv_folds=2, min_groups=10)
    report = train_adapter(pairs, base=base, out=tmp_path / "ad", config=config)
    assert report.base_model == base and report.pairs == 64 and report.test_pairs > 0 and report.skipped_images == 0
    spec = f"adapter:{tmp_path / 'ad'}"
    enc = load_encoder(spec)
    assert isinstance(enc, AdapterEncoder) and enc.base.spec == base and enc.dim == load_encoder(base).dim
    texts = ["zorp plon", "mell vold"]
    np.testing.assert_allclose(enc.encode_texts(texts), enc.project_texts(load_encoder(base).encode_texts(texts)), atol=1e-6)
    after = mmsearch.evaluate(tmp_path / "ad" / "test_pairs.jsonl", model=spec, workers=0)
    assert after.text_to_image == report.after["text_to_image"] and after.image_to_text == report.after["image_to_text"]
