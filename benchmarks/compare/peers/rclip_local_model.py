"""Give rclip a model file it can load without the network (run with mmsearch's venv: open_clip + onnx).

rclip 3.x downloads two ONNX files (ViT-B-32-256, datacomp_s34b_b86k) and the CLIP BPE vocabulary from the
Hugging Face hub on first run; with no hub it stops (the exact error is in the results). To measure its indexing
throughput anyway, this exports the same architecture (open_clip ``ViT-B-32-256``) with seeded *random* weights to
the file names and input/output names rclip loads, under RCLIP_DATADIR. Its rankings are then meaningless, so rclip
is measured for throughput and memory only.

    python rclip_local_model.py DATADIR
"""

from __future__ import annotations

import gzip
import shutil
import sys
from pathlib import Path

import open_clip
import torch

SUBDIR = "ViT-B-32-256-datacomp_s34b_b86k"


class Visual(torch.nn.Module):
    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.encode_image(x)


class Textual(Visual):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.encode_text(x)


def main() -> None:
    out = Path(sys.argv[1]) / SUBDIR
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    model = open_clip.create_model("ViT-B-32-256", pretrained=None).eval()
    # grad stays enabled: under no_grad nn.MultiheadAttention takes a fused fast path that ONNX cannot export
    for name, module, example in (("visual.onnx", Visual(model), torch.randn(2, 3, 256, 256)),
                                  ("textual.onnx", Textual(model), torch.zeros(2, 77, dtype=torch.long))):
        target = out / name
        if not target.exists():
            tmp = target.with_suffix(".tmp")
            torch.onnx.export(module, (example,), str(tmp), input_names=["input"], output_names=["output"],
                              dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}}, opset_version=17, dynamo=False)
            tmp.rename(target)
    vocab = Path(open_clip.__file__).parent / "bpe_simple_vocab_16e6.txt.gz"
    (Path(sys.argv[1]) / "tokenizer").mkdir(exist_ok=True)
    shutil.copy(vocab, Path(sys.argv[1]) / "tokenizer" / vocab.name)
    with gzip.open(vocab) as f:
        f.read(10)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
