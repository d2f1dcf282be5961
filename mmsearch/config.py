"""Defaults and the one place that reads environment variables.

Precedence everywhere: explicit argument (CLI flag) > environment variable > default.

- ``MMSEARCH_MODEL``: default model spec for new collections
- ``MMSEARCH_COLLECTION``: default collection for queries
- ``MMSEARCH_HOME``: where mmsearch keeps its small state (the last collection indexed)
- ``MMSEARCH_CACHE_DIR``: where derived model files are cached (ONNX exports, unpacked exemplar banks, label
  vocabularies)
- ``MMSEARCH_FAISS_GPU``: ``0`` keeps index training and adding on the CPU even when the installed faiss
  has GPUs (default: use them)
- ``MMSEARCH_CHAT_URL``, ``MMSEARCH_CHAT_MODEL``, ``MMSEARCH_CHAT_API_KEY``: an OpenAI-compatible chat
  endpoint for ``mmsearch ask`` (the API base URL, e.g. ``http://127.0.0.1:8080/v1``)
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import NamedTuple

from .errors import ConfigError

#: a collection directory's suffix (``PATH.mms``); here, not in the ingest package, so that reading the
#: configuration imports nothing heavy (a cold query pays every import)
COLLECTION_SUFFIX = ".mms"
FALLBACK_MODEL = "builtin"
LAST_COLLECTION_FILE = "last_collection"


def default_model() -> str:
    """The model spec used for a new collection when none is given."""
    return os.environ.get("MMSEARCH_MODEL") or FALLBACK_MODEL


class ChatEndpoint(NamedTuple):
    """Where the chat endpoint for ``ask`` is (``mmsearch.query.chat.ChatConfig(**endpoint._asdict())``)."""

    url: str
    model: str
    api_key: str | None = None


def chat_endpoint(url: str | None = None, model: str | None = None) -> ChatEndpoint | None:
    """The chat endpoint for ``ask``: arguments > ``$MMSEARCH_CHAT_*``; None when no URL is configured."""
    url = url or os.environ.get("MMSEARCH_CHAT_URL")
    if not url:
        return None
    model = model or os.environ.get("MMSEARCH_CHAT_MODEL")
    if not model:
        raise ConfigError("a chat URL is set but no model: set MMSEARCH_CHAT_MODEL or pass --chat-model")
    return ChatEndpoint(url=url, model=model, api_key=os.environ.get("MMSEARCH_CHAT_API_KEY") or None)


def faiss_gpu_allowed() -> bool:
    """False when ``$MMSEARCH_FAISS_GPU`` is ``0``/``off``/``false``/``no``: indexes then build on the CPU."""
    return os.environ.get("MMSEARCH_FAISS_GPU", "").strip().lower() not in ("0", "off", "false", "no")


def cache_dir() -> Path:
    """``$MMSEARCH_CACHE_DIR``, else ``$XDG_CACHE_HOME/mmsearch``, else ``~/.cache/mmsearch``."""
    if os.environ.get("MMSEARCH_CACHE_DIR"):
        return Path(os.environ["MMSEARCH_CACHE_DIR"]).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "mmsearch"


def state_dir() -> Path:
    """``$MMSEARCH_HOME``, else ``$XDG_STATE_HOME/mmsearch``, else ``~/.local/state/mmsearch``."""
    if os.environ.get("MMSEARCH_HOME"):
        return Path(os.environ["MMSEARCH_HOME"]).expanduser()
    base = os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state"
    return Path(base) / "mmsearch"


def default_collection_for(path: str | Path) -> Path:
    """Where ``mmsearch index PATH`` writes by default: a folder's ``PATH.mms`` beside it; a single file's
    (an image, a text corpus) ``NAME.mms`` in the current directory, never inside the folder holding it (as
    the llm CLI and rclip keep their databases out of the user's folders)."""
    p = Path(path).expanduser().absolute()
    p = Path(os.path.normpath(p))
    if p.is_file():
        return Path.cwd().absolute() / f"{p.stem or 'collection'}{COLLECTION_SUFFIX}"
    return p.parent / f"{p.name or 'collection'}{COLLECTION_SUFFIX}"


def remember_collection(path: str | Path) -> None:
    """Record the collection last indexed, so a later query can omit ``--collection``."""
    try:
        directory = state_dir()
        directory.mkdir(parents=True, exist_ok=True)
        (directory / LAST_COLLECTION_FILE).write_text(str(Path(path).absolute()), encoding="utf-8")
    except OSError:
        pass  # a read-only home must not make indexing fail; queries then need --collection


def last_collection() -> Path | None:
    """The collection recorded by :func:`remember_collection`, if any."""
    try:
        text = (state_dir() / LAST_COLLECTION_FILE).read_text(encoding="utf-8").strip()
    except OSError:
        return None
    return Path(text) if text else None


def forget_collection(path: str | Path, previous: Path | None = None) -> None:
    """Undo :func:`remember_collection` of ``path`` (a run that made nothing searchable): the last collection
    goes back to ``previous`` (None: none)."""
    last = last_collection()
    if last is None or last != Path(path).absolute():
        return
    if previous is not None:
        remember_collection(previous)
    else:
        (state_dir() / LAST_COLLECTION_FILE).unlink(missing_ok=True)


def resolve_collection(explicit: str | Path | None = None) -> Path:
    """The collection to query: explicit > $MMSEARCH_COLLECTION > the one *.mms in the cwd > the last indexed."""
    if explicit:
        return Path(explicit).expanduser()
    if os.environ.get("MMSEARCH_COLLECTION"):
        return Path(os.environ["MMSEARCH_COLLECTION"]).expanduser()
    here = sorted(p for p in Path.cwd().glob(f"*{COLLECTION_SUFFIX}") if (p / "manifest.json").is_file())
    if len(here) == 1:
        return here[0]
    recorded = state_dir() / LAST_COLLECTION_FILE
    last = Path(recorded.read_text(encoding="utf-8").strip()) if recorded.is_file() else None
    if len(here) > 1 and (last is None or last.resolve() not in {p.resolve() for p in here}):
        raise ConfigError(f"no collection given and {len(here)} here ({', '.join(p.name for p in here)}); "
                          "pass --collection DIR (or set MMSEARCH_COLLECTION)")
    if last is not None:
        if not (last / "manifest.json").is_file():
            raise ConfigError(f"no collection given, and the one indexed last ({last}) is gone; pass --collection "
                              "DIR (or set MMSEARCH_COLLECTION), or create one with `mmsearch index PATH`")
        return last
    raise ConfigError(
        "no collection given and none found; pass --collection DIR (or set MMSEARCH_COLLECTION), "
        "or create one with `mmsearch index PATH`"
    )
