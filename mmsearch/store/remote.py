"""A collection at an fsspec URL (``file://``, ``memory://``, ``s3://``, ``gs://``...), kept through a local mirror.

The store writes with atomic renames and memory-maps index files, which object stores cannot do. So a
collection at a URL is worked on in a local staging directory (a full copy) and mirrored to the URL:

- :meth:`RemoteMirror.pull` makes the staging directory equal to the remote collection (the remote
  manifest is the truth; files are fetched only when missing or different by sha256);
- :meth:`RemoteMirror.push` uploads every file the local manifest lists that the remote manifest does
  not list with the same checksum (shards, index files, metadata, the quarantine), then the manifest,
  last: a reader of the URL sees the old collection or the new one, never a manifest whose files are
  missing. Pushing after each shard commit keeps the remote as resumable as a local collection.

Backends come from fsspec (``pip install s3fs`` / ``gcsfs`` for s3:// / gs://); fsspec is imported only
when a URL is used.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import uuid
from pathlib import Path
from typing import Any

from ..errors import ConfigError, MissingExtraError, StoreError
from .atomic import file_sha256
from .manifest import MANIFEST_NAME, MODALITIES

log = logging.getLogger(__name__)

QUARANTINE_NAME = "quarantine.jsonl"

__all__ = ["RemoteMirror", "filesystem_for", "is_url", "staging_dir_for"]


def is_url(path: str | Path) -> bool:
    """True for ``scheme://...`` strings (a Path never is one)."""
    return isinstance(path, str) and "://" in path


def filesystem_for(root: str | Path) -> tuple[Any | None, str]:
    """(fsspec filesystem or None for a plain local path, the path within it) for ``root``."""
    if not is_url(root):
        return None, str(root)
    try:
        import fsspec
    except ImportError as exc:  # pragma: no cover - fsspec comes with the ray extra
        raise MissingExtraError("fsspec", "ray") from exc
    try:
        fs, path = fsspec.core.url_to_fs(str(root))
    except (ImportError, ValueError) as exc:
        raise ConfigError(f"cannot open {root!r}: {exc} (install the fsspec backend for its scheme, e.g. s3fs, gcsfs)") from exc
    return fs, path


def staging_dir_for(url: str) -> Path:
    """The default local staging directory of ``url`` (stable, so a restarted driver finds it)."""
    from ..config import state_dir

    return state_dir() / "staging" / hashlib.sha256(url.encode()).hexdigest()[:16]


class RemoteMirror:
    """The collection at ``url`` and its local copy at ``local``."""

    def __init__(self, url: str, local: str | Path | None = None) -> None:
        if not is_url(url):
            raise ConfigError(f"{url!r} is not a URL (scheme://path)")
        self.url = url.rstrip("/")
        self.fs, self.path = filesystem_for(self.url)
        self.path = self.path.rstrip("/")
        self.local = Path(local).expanduser() if local is not None else staging_dir_for(self.url)
        self._uploaded: dict[str, str | None] = {}  # what this mirror put there (checkpoints are not in the remote manifest)

    # -- reading the remote ----------------------------------------------------------------------
    def remote_manifest(self) -> dict[str, Any] | None:
        """The remote manifest as a dict, or None when the URL holds no collection yet."""
        target = f"{self.path}/{MANIFEST_NAME}"
        if not self.fs.exists(target):
            return None
        try:
            return json.loads(self.fs.cat_file(target))
        except json.JSONDecodeError as exc:
            raise StoreError(f"{self.url}/{MANIFEST_NAME} is not valid JSON: {exc}") from exc

    def pull(self) -> Path:
        """Make the local copy equal to the remote collection; returns the local directory."""
        remote = self.remote_manifest()
        if remote is None:
            if (self.local / MANIFEST_NAME).exists():
                log.warning("%s holds no collection: discarding the stale local copy %s", self.url, self.local)
                shutil.rmtree(self.local)
            self.local.mkdir(parents=True, exist_ok=True)
            return self.local
        self.local.mkdir(parents=True, exist_ok=True)
        local_manifest = self.local / MANIFEST_NAME
        mine = _listed_files(json.loads(local_manifest.read_text(encoding="utf-8"))) if local_manifest.is_file() else {}
        for rel, sha in _listed_files(remote).items():
            dest = self.local / rel
            if sha is not None and dest.is_file() and (mine.get(rel) == sha or file_sha256(dest) == sha):
                continue
            if sha is None and not self.fs.exists(f"{self.path}/{rel}"):
                continue
            dest.parent.mkdir(parents=True, exist_ok=True)
            tmp = dest.with_name(f".tmp-pull-{dest.name}")
            self.fs.get_file(f"{self.path}/{rel}", str(tmp))
            tmp.replace(dest)
        (self.local / MANIFEST_NAME).write_text(json.dumps(remote, indent=2, sort_keys=True), encoding="utf-8")
        return self.local

    # -- writing the remote ----------------------------------------------------------------------
    def push(self, *, listing: dict[str, Any] | None = None, publish: bool = True) -> int:
        """Upload what the remote lacks, then the manifest; returns how many files were uploaded.

        ``listing``: upload the files this manifest (a writer's checkpoint) lists instead of the local one's;
        ``publish=False``: leave the remote manifest as it is (the remote's readers keep the old version)."""
        local_manifest = self.local / MANIFEST_NAME
        if not local_manifest.is_file():
            raise StoreError(f"{self.local} holds no collection to push")
        manifest = listing if listing is not None else json.loads(local_manifest.read_text(encoding="utf-8"))
        remote = self.remote_manifest() or {}
        have = _listed_files(remote)
        self.fs.makedirs(self.path, exist_ok=True)
        uploaded = 0
        for rel, sha in _listed_files(manifest).items():
            source = self.local / rel
            if not source.is_file() or (sha is not None and sha in (have.get(rel), self._uploaded.get(rel))):
                continue
            self.fs.makedirs(f"{self.path}/{rel}".rsplit("/", 1)[0], exist_ok=True)
            self.fs.put_file(str(source), f"{self.path}/{rel}")
            self._uploaded[rel] = sha
            uploaded += 1
        if not publish:
            return uploaded
        tmp = f"{self.path}/.tmp-{MANIFEST_NAME}.{uuid.uuid4().hex[:8]}"
        self.fs.pipe_file(tmp, local_manifest.read_bytes())
        self.fs.mv(tmp, f"{self.path}/{MANIFEST_NAME}")
        return uploaded


def _listed_files(manifest: dict[str, Any]) -> dict[str, str | None]:
    """Every file a manifest accounts for -> its sha256 (None: no checksum, always copied when present)."""
    files: dict[str, str | None] = {}
    for modality in MODALITIES:
        for shard in manifest.get("shards", {}).get(modality, []):
            files[shard["file"]] = shard["sha256"]
        extra = manifest.get("extra", {}).get(modality)
        if extra:
            files[extra["file"]] = extra.get("sha256")
        deleted = manifest.get("deleted", {}).get(modality)
        for entry in deleted.get("files", []) if isinstance(deleted, dict) else []:
            files[entry["file"]] = entry["sha256"]
    for modality, info in manifest.get("indexes", {}).items():
        # an index file is rewritten in place; its manifest entry (fingerprint, build time) identifies it
        tag = hashlib.sha256(json.dumps(info, sort_keys=True).encode()).hexdigest()
        for rel in info.get("part_files") or [info["file"]]:
            files[rel] = tag
        files[f"{info['file'].rsplit('/', 1)[0]}/{modality}.json"] = tag  # index/<modality>.json
    files[QUARANTINE_NAME] = None
    return files

