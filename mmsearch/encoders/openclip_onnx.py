"""OpenCLIP's text and image towers in ONNX Runtime: exported once per weights file, run without torch.

An export is a directory in the model cache (``$MMSEARCH_CACHE_DIR``, see :func:`mmsearch.config.cache_dir`)::

    openclip-<ARCH>-f<FORMAT>-<KEY>/
        text.onnx, text.onnx.data     token ids (N, context) int64 -> text features (N, dim), unnormalised
        image.onnx, image.onnx.data   pixels (N, 3, H, W) float32 -> image features (N, dim), unnormalised
        bpe_simple_vocab_16e6.txt.gz  the tokenizer's vocabulary (copied from open_clip)
        meta.json                     spec, dim, preprocessing, context length, parity, versions (written last)

``KEY`` is the content hash of the weights file (``openclip:ARCH@FILE`` and pretrained tags) or, for
``openclip:ARCH/random``, of the architecture config and the seed. A spec finds its export through a small
alias file (``openclip-specs/<hash of the spec>.json``), so a process that answers a text query reads two JSON
files and one graph: no torch, no open_clip. An export is kept only when both towers agree with PyTorch
(cosine >= :data:`PARITY_MIN_COSINE` on :data:`PARITY_TEXTS` and on probe images) and the torch-free tokenizer
and image transform give what open_clip's give; otherwise it raises and the encoder stays on PyTorch.

To use OpenCLIP on a machine without torch, export on one with torch (:func:`export_for_spec`) and copy the
cache directory (see docs/install.md).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import threading
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from ..errors import EncoderError, ModelUnavailableError
from .base import ModelSpec, l2_normalise
from .minilm import cpu_session, file_digest
from .openclip_tokenizer import VOCAB_NAME, ClipTokenizer

if TYPE_CHECKING:
    from PIL import Image

logger = logging.getLogger(__name__)

EXPORT_FORMAT = 1
ONNX_OPSET = 17
META_NAME = "meta.json"
ALIAS_DIR = "openclip-specs"
#: an export is used only when every probe embeds like PyTorch to this cosine or better
PARITY_MIN_COSINE = 0.999
#: the seed of ``openclip:ARCH/random`` weights (identical in every process)
RANDOM_SEED = 0
PARITY_TEXTS = (
    "a photo of a red sports car",
    "a cat",
    "ÉLAN vital — naïve café, 東京タワー, emoji 🚀!",
    "x",
    "Don't &amp; won't   spaces\tand\nnewlines",
    " ".join(["a very long description of a lighthouse on a rocky coast at dusk"] * 12),  # truncated
)
INSTALL_HINT = "pip install onnxruntime ftfy regex (see docs/install.md)"


# --- the torch-free image transform ------------------------------------------------------------------------
class ClipImageTransform:
    """open_clip's eval transform (``resize_mode="shortest"``): resize the short side (PIL bicubic), centre
    crop, RGB, scale to [0, 1], normalise -> a (3, H, W) float32 array. Picklable; no torch."""

    def __init__(self, size: int, mean: Sequence[float], std: Sequence[float], description: str = "") -> None:
        self.size = int(size)
        self.mean = np.asarray(mean, dtype=np.float32).reshape(3, 1, 1)
        self.std = np.asarray(std, dtype=np.float32).reshape(3, 1, 1)
        self.description = description

    def __repr__(self) -> str:
        return self.description or f"ClipImageTransform(size={self.size})"

    def __call__(self, image: Image.Image) -> np.ndarray:
        return self.scale(self.uint8(image))

    def uint8(self, image: Image.Image) -> np.ndarray:
        """The PIL part (resize, crop, RGB) -> (3, H, W) uint8 pixels."""
        from PIL import Image

        w, h = image.size
        short, long = (w, h) if w <= h else (h, w)
        new_short, new_long = self.size, int(self.size * long / short)
        new_w, new_h = (new_short, new_long) if w <= h else (new_long, new_short)
        if (new_w, new_h) != (w, h):
            image = image.resize((new_w, new_h), Image.BICUBIC)
        top, left = int(round((new_h - self.size) / 2.0)), int(round((new_w - self.size) / 2.0))
        image = image.crop((left, top, left + self.size, top + self.size))
        if image.mode != "RGB":
            image = image.convert("RGB")
        return np.ascontiguousarray(np.asarray(image, dtype=np.uint8).transpose(2, 0, 1))

    def scale(self, pixels: np.ndarray) -> np.ndarray:
        """uint8 pixels, (3, H, W) or a (N, 3, H, W) batch -> float32 in [0, 1], normalised."""
        x = pixels.astype(np.float32)
        x /= np.float32(255.0)
        x -= self.mean
        x /= self.std
        return x

    def split_uint8(self) -> ClipSplit:
        """The cut for decode workers (see ``mmsearch.ingest.transfer``): they ship uint8 pixels, a quarter of
        the bytes, and the scaling runs once per batch, giving the same floats."""
        return ClipSplit(ClipImageHead(self), self)


class ClipImageHead:
    """Picklable: a PIL image -> (3, H, W) uint8 pixels (:meth:`ClipImageTransform.uint8`; the workers' half)."""

    def __init__(self, transform: ClipImageTransform) -> None:
        self.transform = transform

    def __repr__(self) -> str:
        return f"ClipImageHead({self.transform!r})"

    def __call__(self, image: Image.Image) -> np.ndarray:
        return self.transform.uint8(image)


class ClipSplit:
    """:class:`ClipImageTransform` cut after its PIL steps: :attr:`head` in the workers, :meth:`finish` per batch."""

    def __init__(self, head: ClipImageHead, transform: ClipImageTransform) -> None:
        self.head, self.transform = head, transform

    def finish(self, batch: Any) -> Any:
        """(N, 3, H, W) uint8 -> float32, exactly as the whole transform gives: NumPy in NumPy, a torch tensor
        in torch (on its device)."""
        if isinstance(batch, np.ndarray):
            return self.transform.scale(batch)
        import torch

        mean = torch.as_tensor(self.transform.mean, device=batch.device)
        std = torch.as_tensor(self.transform.std, device=batch.device)
        return (batch.to(torch.float32) / 255.0 - mean) / std


# --- where an export lives ---------------------------------------------------------------------------------
def _alias_path(cache_dir: Path, spec: ModelSpec) -> Path:
    return cache_dir / ALIAS_DIR / f"{hashlib.sha256(str(spec).encode()).hexdigest()[:24]}.json"


def export_key(spec: ModelSpec, weights: str | None, cache_dir: Path, config_text: str = "") -> str:
    """The cache key of an export: the weights file's content hash, or (random weights) the config and seed."""
    source = f"file:{file_digest(Path(weights), cache_dir)}" if weights else f"random:{RANDOM_SEED}:{config_text}"
    return hashlib.sha256(f"{spec.arch}|{source}|{ONNX_OPSET}|{EXPORT_FORMAT}".encode()).hexdigest()[:16]


def export_dir(cache_dir: Path, spec: ModelSpec, key: str) -> Path:
    """The directory of the export of ``spec`` under ``key`` (see :func:`export_key`)."""
    safe_arch = "".join(c if c.isalnum() or c in "-_." else "_" for c in spec.arch)
    return cache_dir / f"openclip-{safe_arch}-f{EXPORT_FORMAT}-{key}"


def find_export(spec: ModelSpec, cache_dir: Path) -> Path | None:
    """The cached export of ``spec``, found without torch or open_clip; None when there is none.

    ``openclip:ARCH@FILE``: by the content hash of FILE (memoised by its size and mtime). Pretrained tags and
    random weights: by the alias written at export (random: only while the torch version is the one it was
    exported with, when torch is installed, since the seeded initialisation is torch's).
    """
    if spec.weights_path:
        path = Path(spec.weights_path).expanduser()
        if not path.is_file():
            raise ModelUnavailableError(str(spec), f"weights file {str(path)!r} does not exist")
        found = export_dir(cache_dir, spec, export_key(spec, str(path), cache_dir))
        return found if (found / META_NAME).is_file() else None
    try:
        alias = json.loads(_alias_path(cache_dir, spec).read_text(encoding="utf-8"))
        found = cache_dir / str(alias["dir"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if not (found / META_NAME).is_file():
        return None
    if spec.pretrained == "random" and alias.get("torch") and alias.get("torch") != _installed_version("torch"):
        return None if _installed_version("torch") else found
    return found


def _installed_version(package: str) -> str:
    from importlib import metadata

    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return ""


# --- running an export -------------------------------------------------------------------------------------
class OnnxOpenCLIP:
    """The two towers of one export; each ONNX session is opened on first use (a text query opens only the
    text tower)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        try:
            self.meta = json.loads((directory / META_NAME).read_text(encoding="utf-8"))
            self.dim = int(self.meta["dim"])
            self.preprocess_id = str(self.meta["preprocess_id"])
            pre = self.meta["preprocess"]
            self.transform = ClipImageTransform(pre["size"], pre["mean"], pre["std"], self.preprocess_id)
            self.context_length = int(self.meta["context_length"])
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise EncoderError(f"unreadable OpenCLIP export {directory} ({exc}); delete it to re-export") from exc
        self._sessions: dict[str, Any] = {}
        self._tokenizer: ClipTokenizer | None = None
        self._lock = threading.Lock()

    def session(self, tower: str) -> Any:
        """The ONNX Runtime session of ``"text"`` or ``"image"``."""
        with self._lock:
            if tower not in self._sessions:
                self._sessions[tower] = cpu_session(self.directory / f"{tower}.onnx",
                                                    f"delete {self.directory} to re-export it")
            return self._sessions[tower]

    @property
    def tokenizer(self) -> ClipTokenizer:
        """The torch-free tokenizer, reading the vocabulary copied beside the graphs."""
        if self._tokenizer is None:
            try:
                self._tokenizer = ClipTokenizer(self.directory / VOCAB_NAME, self.context_length)
            except ImportError as exc:
                raise ModelUnavailableError(str(self.meta.get("spec")), f"{exc}; {INSTALL_HINT}") from exc
            except OSError as exc:
                raise EncoderError(f"cannot read {self.directory / VOCAB_NAME} ({exc}); delete "
                                   f"{self.directory} to re-export it") from exc
        return self._tokenizer

    def text_features(self, ids: np.ndarray) -> np.ndarray:
        """Raw text features of token ids (N, context) -> (N, dim)."""
        return self.session("text").run(["features"], {"tokens": np.ascontiguousarray(ids, dtype=np.int64)})[0]

    def image_features(self, pixels: np.ndarray) -> np.ndarray:
        """Raw image features of transformed pixels (N, 3, H, W) -> (N, dim)."""
        return self.session("image").run(["features"], {"pixels": np.ascontiguousarray(pixels, dtype=np.float32)})[0]

    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        """Texts -> (N, dim) unit-norm float32."""
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        return l2_normalise(self.text_features(self.tokenizer(list(texts))))

    def encode_images(self, pixels: Any) -> np.ndarray:
        """A (N, 3, H, W) batch (NumPy, or anything ``np.asarray`` takes) -> (N, dim) unit-norm float32."""
        return l2_normalise(self.image_features(np.asarray(pixels, dtype=np.float32)))


# --- export ------------------------------------------------------------------------------------------------
def probe_images() -> list[Image.Image]:
    """A few images of different sizes, modes and content: what an export's image side is checked on."""
    from PIL import Image

    rng = np.random.default_rng(0)
    ramp = np.linspace(0, 255, 97 * 131 * 3).reshape(97, 131, 3).astype(np.uint8)
    return [
        Image.fromarray(rng.integers(0, 256, (61, 83, 3), dtype=np.uint8), "RGB"),
        Image.fromarray(ramp, "RGB"),
        Image.fromarray(rng.integers(0, 256, (300, 40, 4), dtype=np.uint8), "RGBA"),
        Image.new("RGB", (224, 224), (200, 10, 10)),
        Image.fromarray(rng.integers(0, 256, (50, 50), dtype=np.uint8), "L"),
    ]


def export(model: Any, preprocess: Any, tokenizer: Any, spec: ModelSpec, directory: Path, *,
           alias_cache_dir: Path | None = None, preprocess_id: str = "") -> dict[str, Any]:
    """Export ``model``'s towers (open_clip, eval mode, on the CPU) into ``directory`` and check them.

    Written into a temporary directory and renamed into place (a concurrent export that finished first wins);
    the alias of ``spec`` is written after. Returns the metadata. Raises :class:`EncoderError` when the export
    fails or disagrees with PyTorch (nothing is left behind then).
    """
    import onnx
    import open_clip
    import torch

    cfg = dict(getattr(model.visual, "preprocess_cfg", {}) or {})
    if cfg.get("resize_mode", "shortest") != "shortest" or cfg.get("interpolation", "bicubic") != "bicubic":
        raise EncoderError(f"the image preprocessing of {spec} ({cfg}) has no torch-free version here")
    if not isinstance(tokenizer, open_clip.tokenizer.SimpleTokenizer) or tokenizer.reduction_fn is not None \
            or tokenizer.clean_fn is not open_clip.tokenizer._clean_lower:
        raise EncoderError(f"the tokenizer of {spec} ({type(tokenizer).__name__}) has no torch-free version here")
    size = cfg["size"] if isinstance(cfg["size"], int) else cfg["size"][0]
    context = int(tokenizer.context_length)
    tmp = directory.with_name(f".{directory.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    try:
        tmp.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(open_clip.tokenizer.default_bpe(), tmp / VOCAB_NAME)

        class Text(torch.nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.model = model

            def forward(self, tokens: torch.Tensor) -> torch.Tensor:
                return self.model.encode_text(tokens)

        class Visual(torch.nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.model = model

            def forward(self, pixels: torch.Tensor) -> torch.Tensor:
                return self.model.encode_image(pixels)

        example_text = tokenizer(["a photo of a cat", "a dog"])
        example_pixels = torch.stack([preprocess(img) for img in probe_images()[:2]])
        with torch.inference_mode():
            dim = int(model.encode_text(example_text[:1]).shape[1])
        for name, module, example, input_name in (("text", Text(), example_text, "tokens"),
                                                  ("image", Visual(), example_pixels, "pixels")):
            traced = tmp / f"{name}.traced.onnx"
            # with autograd on, nn.MultiheadAttention takes its plain path (the fused inference kernel has no
            # ONNX export); the exporter records no gradients either way
            with torch.inference_mode(False), torch.enable_grad(), warnings.catch_warnings():
                warnings.simplefilter("ignore")  # the TorchScript exporter's tracing notes
                torch.onnx.export(module.eval(), (example,), str(traced), input_names=[input_name],
                                  output_names=["features"], opset_version=ONNX_OPSET, dynamo=False,
                                  dynamic_axes={input_name: {0: "batch"}, "features": {0: "batch"}})
            graph = tmp / f"{name}.onnx"
            onnx.save_model(onnx.load(str(traced)), str(graph), save_as_external_data=True,
                            all_tensors_to_one_file=True, location=f"{name}.onnx.data", size_threshold=1024)
            traced.unlink()
            os.chmod(graph.with_name(f"{name}.onnx.data"), graph.stat().st_mode & 0o777)  # onnx writes it 0600
        meta = {
            "format": EXPORT_FORMAT, "spec": str(spec), "arch": spec.arch,
            "dim": dim,
            "preprocess_id": preprocess_id, "preprocess": {"size": size, "mean": list(cfg["mean"]),
                                                            "std": list(cfg["std"])},
            "context_length": context, "opset": ONNX_OPSET,
            "versions": {p: _installed_version(p) for p in ("torch", "open_clip_torch", "onnx", "onnxruntime")},
        }
        (tmp / META_NAME).write_text(json.dumps(meta), encoding="utf-8")  # provisional: the check reads it
        meta.update(check(model, preprocess, tokenizer, OnnxOpenCLIP(tmp)))
        (tmp / META_NAME).write_text(json.dumps(meta, indent=1), encoding="utf-8")
        try:
            os.replace(tmp, directory)
        except OSError:
            if not (directory / META_NAME).is_file():  # not a concurrent export that got there first
                raise
        if alias_cache_dir is not None:
            _write_alias(alias_cache_dir, spec, directory, meta)
        logger.info("exported the OpenCLIP towers of %s to %s (lowest cosine to PyTorch: text %.6f, image %.6f)",
                    spec, directory, meta["parity"]["text"], meta["parity"]["image"])
        return meta
    except EncoderError:
        raise
    except Exception as exc:  # the exporter raises many unrelated types; convert at the boundary
        raise EncoderError(f"exporting the OpenCLIP towers of {spec} to ONNX failed: {exc}") from exc
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def check(model: Any, preprocess: Any, tokenizer: Any, candidate: OnnxOpenCLIP) -> dict[str, Any]:
    """Compare an export with the PyTorch model: token ids and pixels must be equal, embeddings within
    :data:`PARITY_MIN_COSINE`. Returns ``{"dim", "parity": {"text", "image"}}``; raises :class:`EncoderError`."""
    import torch

    ids = tokenizer(list(PARITY_TEXTS)).numpy()
    mine = candidate.tokenizer(list(PARITY_TEXTS))
    if not np.array_equal(ids, mine):
        raise EncoderError("the torch-free tokenizer's ids differ from open_clip's; not using the export")
    images = probe_images()
    reference_pixels = torch.stack([preprocess(img) for img in images])
    pixels = np.stack([candidate.transform(img) for img in images])
    if np.abs(reference_pixels.numpy() - pixels).max() > 1e-5:
        raise EncoderError("the torch-free image transform differs from open_clip's; not using the export")
    with torch.inference_mode():
        text_ref = model.encode_text(torch.from_numpy(ids)).float().numpy()
        image_ref = model.encode_image(reference_pixels).float().numpy()
    text_cos = _min_cosine(text_ref, candidate.text_features(ids))
    image_cos = _min_cosine(image_ref, candidate.image_features(pixels))
    if min(text_cos, image_cos) < PARITY_MIN_COSINE:
        raise EncoderError(f"the ONNX export differs from PyTorch (lowest cosine: text {text_cos:.6f}, image "
                           f"{image_cos:.6f} < {PARITY_MIN_COSINE}); not using it")
    return {"dim": int(text_ref.shape[1]), "parity": {"text": text_cos, "image": image_cos}}


def _min_cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.min(np.sum(l2_normalise(a) * l2_normalise(b), axis=1)))


def _write_alias(cache_dir: Path, spec: ModelSpec, directory: Path, meta: dict[str, Any]) -> None:
    alias = _alias_path(cache_dir, spec)
    alias.parent.mkdir(parents=True, exist_ok=True)
    tmp = alias.with_name(f".{alias.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    tmp.write_text(json.dumps({"spec": str(spec), "dir": directory.name, "torch": meta["versions"]["torch"]}),
                   encoding="utf-8")
    os.replace(tmp, alias)
