"""The OpenCLIP backend.

Weights come from a local file, the Hugging Face hub cache, or (when the hub is reachable) a
download. With no network and no cached copy it fails at once with a message naming the fix —
never a long retry loop.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence
from urllib.parse import urlparse

import numpy as np
import torch

from ..errors import ConfigError, EncoderError, ModelUnavailableError
from .base import l2_normalise, pick_device
from .registry import ModelSpec

log = logging.getLogger(__name__)

_CONFIG_DIR = Path(__file__).with_name("model_configs")
RANDOM_TAG = "random"
RANDOM_SEED = 0


def _open_clip() -> Any:
    import open_clip

    if _CONFIG_DIR not in getattr(open_clip.factory, "_MODEL_CONFIG_PATHS", []):
        open_clip.add_model_config(_CONFIG_DIR)
    return open_clip


class OpenCLIPEncoder:
    """An OpenCLIP dual encoder; see :mod:`mmsearch.encoders.registry` for spec strings."""

    def __init__(self, spec: ModelSpec, *, device: str | None = None) -> None:
        open_clip = _open_clip()
        if spec.arch not in open_clip.list_models():
            raise ConfigError(
                f"unknown OpenCLIP architecture {spec.arch!r}; see open_clip.list_models()"
            )
        self.spec = str(spec)
        self.device = pick_device(device)
        pretrained = _resolve_weights(open_clip, spec)
        try:
            with torch.random.fork_rng(devices=[]), _quiet(pretrained is None):
                torch.manual_seed(RANDOM_SEED)  # makes "random" weights identical in every process
                model, _, preprocess = open_clip.create_model_and_transforms(
                    spec.arch, pretrained=pretrained, device=self.device
                )
        except (RuntimeError, OSError, ValueError, KeyError) as exc:
            raise EncoderError(f"could not load OpenCLIP model {self.spec!r}: {exc}") from exc
        model.eval()
        self._model = model
        self._transform = preprocess
        self._tokenizer = open_clip.get_tokenizer(spec.arch)
        self.dim = _text_dim(model, self._tokenizer, self.device)
        self.preprocess_id = _describe_transform(preprocess)

    @property
    def image_transform(self) -> Callable[..., torch.Tensor]:
        """torchvision transform (resize, crop, normalise) of this model; picklable."""
        return self._transform

    def encode_images(self, batch: torch.Tensor) -> np.ndarray:
        """(N, C, H, W) transformed images -> (N, dim) unit-norm float32."""
        with torch.inference_mode(), self._autocast():
            feats = self._model.encode_image(batch.to(self.device, non_blocking=True))
        return l2_normalise(feats.float().cpu().numpy())

    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        """Texts -> (N, dim) unit-norm float32."""
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        tokens = self._tokenizer(list(texts)).to(self.device)
        with torch.inference_mode(), self._autocast():
            feats = self._model.encode_text(tokens)
        return l2_normalise(feats.float().cpu().numpy())

    def _autocast(self) -> Any:
        if self.device.startswith("cuda"):
            dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
            return torch.autocast("cuda", dtype=dtype)
        return torch.autocast("cpu", enabled=False)


@contextlib.contextmanager
def _quiet(enabled: bool) -> Iterator[None]:
    """Silence open_clip's root-logger warning about random weights when random is what was asked."""
    if enabled:
        logging.disable(logging.WARNING)
    try:
        yield
    finally:
        if enabled:
            logging.disable(logging.NOTSET)


def _text_dim(model: Any, tokenizer: Any, device: str) -> int:
    """The embedding dimension, read off one real forward pass (configs name it differently)."""
    with torch.inference_mode():
        return int(model.encode_text(tokenizer(["probe"]).to(device)).shape[1])


def _describe_transform(transform: Any) -> str:
    """A stable id of the preprocessing: the repr of the torchvision pipeline, compacted."""
    return " ".join(repr(transform).split())


def _resolve_weights(open_clip: Any, spec: ModelSpec) -> str | None:
    """Return what to pass as ``pretrained``: None (random init), a local path, or a tag."""
    if spec.weights_path:
        path = Path(spec.weights_path).expanduser()
        if not path.is_file():
            raise ModelUnavailableError(spec.weights_path, f"weights file {str(path)!r} does not exist")
        return str(path)
    if spec.pretrained == RANDOM_TAG:
        return None
    cfg = open_clip.get_pretrained_cfg(spec.arch, spec.pretrained)
    if not cfg:
        tags = open_clip.list_pretrained_tags_by_model(spec.arch)
        raise ConfigError(
            f"OpenCLIP has no pretrained tag {spec.pretrained!r} for {spec.arch}; "
            f"known tags: {', '.join(tags) or 'none'} (or use 'openclip:{spec.arch}/random')"
        )
    return _cached_or_download(open_clip, spec, cfg)


def _cached_or_download(open_clip: Any, spec: ModelSpec, cfg: dict[str, Any]) -> str:
    hub = cfg.get("hf_hub", "")
    if hub:
        cached = _hub_cache_lookup(hub)
        if cached:
            return cached
    hint = (
        "the weights are not in the Hugging Face cache and the hub cannot be reached. Fix: run "
        f"`mmsearch models fetch {spec} --to DIR` on a machine with network access and copy DIR here as "
        "$HF_HUB_CACHE (`mmsearch models` then lists it), or "
        f"download the weights file and use 'openclip:{spec.arch}@/path/to/weights', or use the "
        "offline built-in model ('--model builtin')"
    )
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes") or not _hub_reachable():
        raise ModelUnavailableError(str(spec), hint)
    try:
        return str(open_clip.pretrained.download_pretrained(cfg))
    except Exception as exc:  # any download failure becomes one typed error
        raise ModelUnavailableError(str(spec), f"{hint} ({exc})") from exc


def _hub_cache_lookup(hub: str) -> str | None:
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return None
    repo_id, filename = os.path.split(hub.rstrip("/")) if not hub.endswith("/") else (hub[:-1], "")
    names = [filename] if filename else []
    names += ["open_clip_model.safetensors", "open_clip_pytorch_model.bin"]
    for name in names:
        found = try_to_load_from_cache(repo_id=repo_id, filename=name)
        if isinstance(found, str):
            return found
    return None


def _hub_reachable(timeout_s: float = 3.0) -> bool:
    try:
        from huggingface_hub import constants

        endpoint = urlparse(constants.ENDPOINT)
    except ImportError:
        return False
    host, port = endpoint.hostname or "", endpoint.port or (443 if endpoint.scheme == "https" else 80)
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            return True
    except OSError:
        return False


# -- what is on this machine, and fetching weights to carry to one without network (``mmsearch models``) -----
def cached_pretrained(cache_dir: str | Path | None = None) -> list[dict[str, Any]]:
    """The OpenCLIP pretrained models whose weights are in the hub cache (``cache_dir``, default
    ``$HF_HUB_CACHE``, else ``$HF_HOME/hub``): ``[{"spec", "file", "bytes"}]``, sorted by spec. Reads the cache
    only (no network)."""
    from .registry import hub_cache_dir

    root = Path(cache_dir) if cache_dir else hub_cache_dir()
    if not root.is_dir():
        return []
    repos = {p.name[len("models--"):].replace("--", "/") for p in root.glob("models--*")}
    if not repos:
        return []
    open_clip = _open_clip()
    found = []
    for arch, tag in open_clip.list_pretrained():
        hub = (open_clip.get_pretrained_cfg(arch, tag) or {}).get("hf_hub", "").rstrip("/")
        parts = hub.split("/")
        repo_id, filename = "/".join(parts[:2]), "/".join(parts[2:])
        if not hub or repo_id not in repos:
            continue
        path = _cached_file(repo_id, filename, root)
        if path:
            found.append({"spec": f"openclip:{arch}/{tag}", "file": path, "bytes": os.path.getsize(path)})
    return sorted(found, key=lambda m: m["spec"])


def _cached_file(repo_id: str, filename: str, cache_dir: Path) -> str | None:
    """The cached weights file of an OpenCLIP hub repo (the file named, else OpenCLIP's default names)."""
    from huggingface_hub import try_to_load_from_cache

    for name in [n for n in (filename, "open_clip_model.safetensors", "open_clip_pytorch_model.bin") if n]:
        found = try_to_load_from_cache(repo_id=repo_id, filename=name, cache_dir=str(cache_dir))
        if isinstance(found, str):
            return found
    return None


def fetch_pretrained(spec: str, to: str | Path) -> Path:
    """Download the weights of ``openclip:ARCH/TAG`` into ``to``, laid out as a Hugging Face hub cache, to copy
    to a machine without network (there: ``HF_HUB_CACHE=<the copy>``, or merge it into
    ``~/.cache/huggingface/hub``). Fails at once, in one line, when the hub cannot be reached."""
    from .registry import parse_spec

    parsed = parse_spec(spec)
    if parsed.scheme != "openclip" or not parsed.pretrained or parsed.pretrained == RANDOM_TAG:
        raise ConfigError(f"only OpenCLIP pretrained models are fetched (openclip:ARCH/TAG, e.g. "
                          f"openclip:ViT-B-32/laion2b_s34b_b79k), not {spec!r}")
    offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes")
    if offline or not _hub_reachable():  # before importing open_clip (seconds): an offline machine fails at once
        why = "HF_HUB_OFFLINE is set" if offline else "the Hugging Face hub cannot be reached from this machine"
        raise EncoderError(f"cannot fetch {parsed}: {why}; run `mmsearch models fetch {parsed} --to DIR` on a "
                           "machine with network access and copy DIR here")
    open_clip = _open_clip()
    if parsed.arch not in open_clip.list_models():
        raise ConfigError(f"unknown OpenCLIP architecture {parsed.arch!r}; see open_clip.list_models()")
    cfg = open_clip.get_pretrained_cfg(parsed.arch, parsed.pretrained)
    if not cfg:
        tags = open_clip.list_pretrained_tags_by_model(parsed.arch)
        raise ConfigError(f"OpenCLIP has no pretrained tag {parsed.pretrained!r} for {parsed.arch}; "
                          f"known tags: {', '.join(tags) or 'none'}")
    target = Path(to).expanduser()
    target.mkdir(parents=True, exist_ok=True)
    try:
        return Path(open_clip.pretrained.download_pretrained(cfg, cache_dir=str(target)))
    except Exception as exc:  # any download failure becomes one typed error
        raise ModelUnavailableError(str(parsed), f"the download failed ({exc})") from exc
