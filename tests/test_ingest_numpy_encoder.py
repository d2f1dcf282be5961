"""An encoder that declares ``numpy_input = True`` gets NumPy batches on the CPU: ingest imports no torch.

The fake encoder below is a stand-in model; the thing under test is the pipeline (decode, the uint8 cut and its
finish, stacking, shards), run in a fresh process where importing torch or torchvision raises ImportError."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import torch
from no_torch import blocker
from PIL import Image
from torchvision import transforms as T

from mmsearch.ingest.transfer import split_transform

SCRIPT = blocker(("torch", "torchvision")) + textwrap.dedent('''
    import json, sys
    from pathlib import Path

    import numpy as np
    from PIL import Image
    from mmsearch.ingest import IngestOptions, ingest
    from mmsearch.ingest.transfer import SplitTransform, Uint8Head
    from mmsearch.store import ModelInfo, Store

    def resized(image):
        return image.convert("RGB").resize((8, 8))

    class Transform:
        """PIL -> (3, 8, 8) float32 in [-1, 1], NumPy only; offers its uint8 cut."""
        def __call__(self, image):
            return np.asarray(resized(image), np.float32).transpose(2, 0, 1) * np.float32(2 / 255) - np.float32(1)

        def split_uint8(self):
            return SplitTransform(Uint8Head([resized]), multiply_subtract=(2 / 255, 1.0))

    class Plain:
        """The same pixels, no cut offered: float32 from the workers."""
        __call__ = Transform.__call__

    class NumpyEncoder:
        numpy_input = True
        dim, preprocess_id, device = 3, "np-8x8", "cpu"

        def __init__(self, transform):
            self.spec, self.image_transform, self.batches = "np:v1", transform, []

        def encode_images(self, batch):
            assert isinstance(batch, np.ndarray) and batch.dtype == np.float32, type(batch)
            self.batches.append(len(batch))
            mean = batch.mean(axis=(2, 3)) + 1.5
            return mean / np.linalg.norm(mean, axis=1, keepdims=True)

        def encode_texts(self, texts):
            return np.tile(np.float32([1, 0, 0]), (len(texts), 1))

    folder, out = Path(sys.argv[1]), Path(sys.argv[2])
    results = {}
    for name, transform in (("uint8", Transform()), ("float", Plain())):
        encoder = NumpyEncoder(transform)
        store = Store.open_or_create(out / name, ModelInfo(encoder.spec, encoder.preprocess_id, encoder.dim))
        with store:
            report = ingest(store, encoder, [folder], options=IngestOptions(batch_size=2, workers=0))
            table = store.scan("images", ["id", "uri"]).to_pydict()
            vectors = store.embeddings_by_id("images", table["id"])
        results[name] = {
            "embedded": report.images_embedded, "texts": report.texts_embedded, "batches": encoder.batches,
            "vectors": {Path(u).name: vectors[i].astype(float).tolist() for i, u in zip(table["id"], table["uri"])},
        }
    results["torch_loaded"] = sorted(m for m, mod in sys.modules.items()
                                     if mod is not None and m.split(".")[0] in ("torch", "torchvision"))
    print(json.dumps(results))
''')


def _expected(path: Path) -> np.ndarray:
    pixels = np.asarray(Image.open(path).convert("RGB").resize((8, 8)), np.float32) * np.float32(2 / 255) - 1
    mean = pixels.mean(axis=(0, 1)) + 1.5
    return mean / np.linalg.norm(mean)


def test_ingest_with_a_numpy_input_encoder_imports_no_torch(tmp_path: Path) -> None:
    folder = tmp_path / "imgs"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(5):
        Image.fromarray(rng.integers(0, 256, (20 + i, 30, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    (folder / "0.txt").write_text("a caption\n", encoding="utf-8")
    run = subprocess.run([sys.executable, "-c", SCRIPT, str(folder), str(tmp_path / "out")],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    results = json.loads(run.stdout.strip().splitlines()[-1])
    assert results["torch_loaded"] == []
    for name in ("uint8", "float"):
        got = results[name]
        assert got["embedded"] == 5 and got["texts"] == 1 and sum(got["batches"]) == 5
        assert sorted(got["vectors"]) == [f"{i}.png" for i in range(5)]
        for file, vector in got["vectors"].items():  # float16 storage
            np.testing.assert_allclose(vector, _expected(folder / file), atol=2e-3)


def test_numpy_finish_of_a_torchvision_cut_equals_the_torch_finish() -> None:
    mean, std = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)  # CLIP's
    transform = T.Compose([T.Lambda(lambda image: image.convert("RGB")),
                           T.Resize(32, interpolation=T.InterpolationMode.BICUBIC), T.CenterCrop(32), T.ToTensor(),
                           T.Normalize(mean, std)])
    split = split_transform(transform, numpy=True)
    assert split is not None and split.mean is not None
    rng = np.random.default_rng(3)
    for size in ((97, 61), (40, 300), (224, 224)):
        image = Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))
        head = split.head(image)[None]
        np.testing.assert_array_equal(split.finish(head)[0], transform(image).numpy())
        np.testing.assert_array_equal(split.finish(head), split.finish(torch.from_numpy(head)).numpy())
