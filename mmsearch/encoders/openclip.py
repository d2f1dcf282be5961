"""The OpenCLIP backend.

Weights come from a local file, the Hugging Face hub cache, or (when the hub is reachable) a
download. With no network and no cached copy it fails at once with a message naming the fix —
never a long retry loop.

On the CPU both towers run in ONNX Runtime (:mod:`mmsearch.encoders.openclip_onnx`): exported once per
weights file into the model cache where torch and open_clip are installed, checked against PyTorch, and
from then on loaded without torch or open_clip (a text query opens only the text tower). When the export
fails or disagrees, the model runs in PyTorch (a warning says why). On a GPU, or with ``backend="torch"``,
it runs in PyTorch.
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import os
import socket
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, Sequence
from urllib.parse import urlparse

import numpy as np

from ..errors import ConfigError, EncoderError, ModelUnavailableError
from .base import ModelSpec, l2_normalise, pick_device
from .openclip_onnx import RANDOM_SEED

if TYPE_CHECKING:
    from PIL import Image

    from .openclip_onnx import OnnxOpenCLIP

log = logging.getLogger(__name__)

_CONFIG_DIR = Path(__file__).with_name("model_configs")
RANDOM_TAG = "random"
BACKENDS = ("auto", "onnx", "torch")
_export_lock = threading.Lock()


def _open_clip() -> Any:
    import open_clip

    if _CONFIG_DIR not in getattr(open_clip.factory, "_MODEL_CONFIG_PATHS", []):
        open_clip.add_model_config(_CONFIG_DIR)
    return open_clip


def onnx_runtime_ready() -> bool:
    """Whether the packages of the ONNX path are installed (onnxruntime, ftfy and regex for the tokenizer)."""
    return all(importlib.util.find_spec(name) is not None for name in ("onnxruntime", "ftfy", "regex"))


class OpenCLIPEncoder:
    """An OpenCLIP dual encoder; see :mod:`mmsearch.encoders.registry` for spec strings.

    ``backend``: ``"auto"`` (ONNX Runtime on the CPU when it can be had, else PyTorch), ``"onnx"`` (ONNX
    Runtime or an error) or ``"torch"``. ``cache_dir`` holds the ONNX exports (default: the model cache,
    ``$MMSEARCH_CACHE_DIR``).
    """

    def __init__(self, spec: ModelSpec, *, device: str | None = None, backend: str = "auto",
                 cache_dir: str | os.PathLike[str] | None = None) -> None:
        if backend not in BACKENDS:
            raise ConfigError(f"unknown OpenCLIP backend {backend!r}; use one of {', '.join(BACKENDS)}")
        if cache_dir is None:
            from ..config import cache_dir as default_cache_dir

            cache_dir = default_cache_dir()
        self.spec = str(spec)
        self._parsed = spec
        self._cache_dir = Path(cache_dir)
        self._requested = backend
        self.device = pick_device(device)
        self._torch_model: Any = None
        self._onnx: OnnxOpenCLIP | None = None
        want_onnx = backend == "onnx" or (backend == "auto" and self.device == "cpu" and onnx_runtime_ready())
        if backend == "onnx" and self.device != "cpu":
            raise ConfigError(f"the ONNX backend runs on the CPU, not on {self.device!r}")
        if want_onnx:
            self._onnx = self._cached_export()
        if self._onnx is None:
            self._load_torch()
            if want_onnx:
                self._onnx = self._export()
        if self._onnx is not None:
            self.dim = self._onnx.dim
            self.preprocess_id = self._onnx.preprocess_id
            self._torch_model = None  # the checked export replaces it (memory; :attr:`_model` reloads it)

    @property
    def _model(self) -> Any:
        """The PyTorch model (open_clip), loaded on first use when the towers run in ONNX Runtime."""
        if self._torch_model is None:
            self._load_torch()
        return self._torch_model

    # -- which runtime --------------------------------------------------------------------------------------
    @property
    def backend(self) -> str:
        """``"onnx"`` or ``"torch"``: where the towers run now."""
        return "onnx" if self._onnx is not None else "torch"

    @property
    def numpy_input(self) -> bool:
        """True on ONNX Runtime: image batches are NumPy arrays (ingest then needs no torch)."""
        return self._onnx is not None

    @property
    def onnx_dir(self) -> Path | None:
        """The directory of the ONNX export in use (None on PyTorch)."""
        return self._onnx.directory if self._onnx is not None else None

    @property
    def weights_key(self) -> str | None:
        """What identifies the weights without running a tower: the export folder's name, which holds their content
        hash (None on PyTorch: :mod:`.text_cache` then embeds one text to tell them apart)."""
        return f"onnx:{self.onnx_dir.name}" if self.onnx_dir is not None else None

    def _cached_export(self) -> OnnxOpenCLIP | None:
        from .openclip_onnx import OnnxOpenCLIP, find_export

        if self._requested == "auto" and not onnx_runtime_ready():
            return None
        found = find_export(self._parsed, self._cache_dir)
        if found is None:
            return None
        try:
            return OnnxOpenCLIP(found)
        except EncoderError:
            if self._requested == "onnx":
                raise
            log.warning("the cached ONNX export of %s is unusable; re-exporting it", self.spec, exc_info=True)
            return None

    def _export(self) -> OnnxOpenCLIP | None:
        """Export the loaded PyTorch model (once), check it, and return it; None (stay on PyTorch) on failure."""
        from .openclip_onnx import OnnxOpenCLIP, export, export_dir, export_key

        try:
            with _export_lock:
                config_text = ""
                if self._weights is None:
                    import json

                    config_text = json.dumps(_open_clip().get_model_config(self._parsed.arch), sort_keys=True)
                directory = export_dir(self._cache_dir, self._parsed,
                                       export_key(self._parsed, self._weights, self._cache_dir, config_text))
                log.info("exporting the OpenCLIP towers of %s to ONNX (once) into %s", self.spec, directory)
                export(self._model, self._transform, self._tokenizer, self._parsed, directory,
                       alias_cache_dir=self._cache_dir, preprocess_id=self.preprocess_id)
                return OnnxOpenCLIP(directory)
        except (EncoderError, ModelUnavailableError, OSError) as exc:
            if self._requested == "onnx":
                raise EncoderError(f"no ONNX export of {self.spec}: {exc}") from exc
            log.warning("running %s in PyTorch: its ONNX export is unavailable (%s)", self.spec, exc)
            return None

    def _load_torch(self) -> None:
        missing = [n for n in ("torch", "open_clip") if importlib.util.find_spec(n) is None]
        if missing:
            raise ModelUnavailableError(
                self.spec, f"no ONNX export of it in {self._cache_dir} and no {' or '.join(missing)} to make one; "
                "export it on a machine with torch and copy the cache (docs/install.md), or pip install "
                "torch open_clip_torch")
        import torch

        open_clip = _open_clip()
        spec = self._parsed
        if spec.arch not in open_clip.list_models():
            raise ConfigError(f"unknown OpenCLIP architecture {spec.arch!r}; see open_clip.list_models()")
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
        self._weights = pretrained
        self._torch_model = model
        self._transform = preprocess
        self._tokenizer = open_clip.get_tokenizer(spec.arch)
        self.dim = _text_dim(model, self._tokenizer, self.device)
        self.preprocess_id = _describe_transform(preprocess)

    def _fall_back(self, exc: Exception) -> None:
        """A cached export that fails when used (a corrupt graph): PyTorch from now on, or the error."""
        if self._requested == "onnx" or any(importlib.util.find_spec(n) is None for n in ("torch", "open_clip")):
            raise exc
        log.warning("running %s in PyTorch: %s", self.spec, exc)
        self._onnx = None
        self._load_torch()

    # -- the Encoder protocol -------------------------------------------------------------------------------
    @property
    def image_transform(self) -> Callable[..., Any]:
        """The model's eval transform (resize, crop, normalise), picklable: NumPy on ONNX Runtime, else the
        torchvision pipeline; both give the same pixels."""
        if self._onnx is not None:
            return self._onnx.transform
        return self._transform

    def encode_images(self, batch: Any) -> np.ndarray:
        """(N, C, H, W) transformed images (a NumPy array or a torch tensor) -> (N, dim) unit-norm float32."""
        if self._onnx is not None:
            try:
                return self._onnx.encode_images(batch)
            except EncoderError as exc:
                self._fall_back(exc)
        import torch

        batch = torch.as_tensor(batch)
        with torch.inference_mode(), self._autocast():
            feats = self._model.encode_image(batch.to(self.device, non_blocking=True))
        return l2_normalise(feats.float().cpu().numpy())

    def embed_pil_images(self, images: Sequence[Image.Image]) -> np.ndarray:
        """PIL images -> (N, dim) unit-norm float32, transformed here (no torch on ONNX Runtime)."""
        if not images:
            return np.zeros((0, self.dim), dtype=np.float32)
        transform = self.image_transform
        pixels = [transform(img.convert("RGB")) for img in images]
        if self._onnx is not None:
            return self.encode_images(np.stack(pixels))
        import torch

        return self.encode_images(torch.stack(pixels))

    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        """Texts -> (N, dim) unit-norm float32."""
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        if self._onnx is not None:
            try:
                return self._onnx.encode_texts(list(texts))
            except EncoderError as exc:
                self._fall_back(exc)
        import torch

        tokens = self._tokenizer(list(texts)).to(self.device)
        with torch.inference_mode(), self._autocast():
            feats = self._model.encode_text(tokens)
        return l2_normalise(feats.float().cpu().numpy())

    def _autocast(self) -> Any:
        import torch

        if self.device.startswith("cuda"):
            dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
            return torch.autocast("cuda", dtype=dtype)
        return torch.autocast("cpu", enabled=False)


def export_onnx(spec: ModelSpec, cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """Export ``spec``'s towers to ONNX into the model cache (``cache_dir``, default ``$MMSEARCH_CACHE_DIR``)
    unless already there; returns the export's directory. Needs torch and open_clip; copy the cache to use the
    model where they are not installed (docs/install.md)."""
    encoder = OpenCLIPEncoder(spec, device="cpu", backend="onnx", cache_dir=cache_dir)
    assert encoder.onnx_dir is not None
    return encoder.onnx_dir


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
    import torch

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
    parsed = _parse_tag_spec(spec)
    if parsed is None or parsed.scheme != "openclip" or not parsed.pretrained or parsed.pretrained == RANDOM_TAG:
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


def _parse_tag_spec(spec: str | ModelSpec) -> ModelSpec | None:
    """``openclip:ARCH/TAG`` as a :class:`ModelSpec`; None for any other form."""
    if isinstance(spec, ModelSpec):
        return spec
    scheme, _, rest = (spec or "").strip().partition(":")
    arch, _, tag = rest.partition("/")
    return ModelSpec("openclip", arch, pretrained=tag) if scheme == "openclip" and arch and tag and "@" not in rest else None


def hub_cache_dir() -> Path:
    """The Hugging Face hub cache OpenCLIP weights are looked up in: ``$HF_HUB_CACHE``, else ``$HF_HOME/hub``,
    else ``~/.cache/huggingface/hub``."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    home = os.environ.get("HF_HOME") or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "huggingface"
    return Path(home).expanduser() / "hub"
