"""Give rclip the very weights file every other contender loads (run with mmsearch's venv: open_clip + onnx).

rclip 3.x downloads two ONNX files (``ViT-B-32-256-datacomp_s34b_b86k/{visual,textual}.onnx``) and the CLIP BPE
vocabulary from the Hugging Face hub on first run, unless they already lie in its data folder (``RCLIP_DATADIR``):
``model_download.download_onnx_model`` returns ``$RCLIP_DATADIR/<subdir>/<file>`` when that file exists. This
exports the towers of an OpenCLIP model built from ``WEIGHTS`` (a saved ``state_dict``, the file mmsearch, LanceDB,
clip-retrieval and the naive loop load) to those names, with the input/output names rclip feeds and reads
(``input`` -> ``output``: pixels (N, 3, 256, 256) float32 or token ids (N, 77) int64 -> unnormalised features;
rclip normalises them itself), and copies open_clip's BPE vocabulary (the one rclip's tokenizer reads).

rclip only runs ``ViT-B-32-256`` (its preprocessing is hard-wired to 256 px, its vector size to 512), so the
architecture is checked. Each tower is checked against PyTorch (lowest cosine over a few inputs, written to
``export.json`` beside the files) before the files are renamed into place.

    python rclip_local_model.py DATADIR WEIGHTS
"""

from __future__ import annotations

import gzip
import hashlib
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import open_clip
import torch

ARCH = "ViT-B-32-256"  # the only architecture rclip 3.3 can run
SUBDIR = "ViT-B-32-256-datacomp_s34b_b86k"
MIN_COSINE = 0.999


class Visual(torch.nn.Module):
    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.encode_image(x)


class Textual(Visual):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.encode_text(x)


def lowest_cosine(a: np.ndarray, b: np.ndarray) -> float:
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    return float((a * b).sum(axis=1).min())


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def main() -> None:
    datadir, weights = Path(sys.argv[1]), Path(sys.argv[2]).resolve()
    out = datadir / SUBDIR
    out.mkdir(parents=True, exist_ok=True)
    model = open_clip.create_model(ARCH, pretrained=str(weights)).eval()
    tokenizer = open_clip.get_tokenizer(ARCH)
    torch.manual_seed(1)
    pixels = torch.randn(3, 3, 256, 256)
    tokens = tokenizer(["a cat", "a photo of a red sports car", "ÉLAN vital — naïve café"])
    parity = {}
    # grad stays enabled: under no_grad nn.MultiheadAttention takes a fused fast path that ONNX cannot export
    for name, module, example, check in (("visual.onnx", Visual(model), torch.randn(2, 3, 256, 256), pixels),
                                         ("textual.onnx", Textual(model), torch.zeros(2, 77, dtype=torch.long), tokens)):
        target = out / name
        tmp = target.with_suffix(".tmp")
        torch.onnx.export(module, (example,), str(tmp), input_names=["input"], output_names=["output"],
                          dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}}, opset_version=17, dynamo=False)
        with torch.no_grad():
            reference = module(check).numpy()
        session = ort.InferenceSession(str(tmp), providers=["CPUExecutionProvider"])
        (got,) = session.run(None, {"input": check.numpy()})
        parity[name] = lowest_cosine(reference, got)
        if parity[name] < MIN_COSINE:
            raise SystemExit(f"{name}: ONNX Runtime vs PyTorch lowest cosine {parity[name]:.6f} < {MIN_COSINE}")
        tmp.rename(target)
    vocab = Path(open_clip.__file__).parent / "bpe_simple_vocab_16e6.txt.gz"
    (datadir / "tokenizer").mkdir(exist_ok=True)
    shutil.copy(vocab, datadir / "tokenizer" / vocab.name)
    with gzip.open(vocab) as f:
        f.read(10)
    (out / "export.json").write_text(json.dumps({
        "arch": ARCH, "weights": str(weights), "weights_sha256": file_sha256(weights), "opset": 17,
        "lowest_cosine_vs_torch": parity, "open_clip": open_clip.__version__, "torch": torch.__version__}, indent=1))
    print(f"wrote {out}: lowest cosine vs PyTorch {parity}")


if __name__ == "__main__":
    main()
