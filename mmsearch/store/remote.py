"""A collection at an fsspec URL (``file://``, ``memory://``, ``s3://``, ``gs://``...), kept through a local mirror.

The store writes with atomic renames and memory-maps index files, which object stores cannot do. So a
collection at a URL is worked on in a local staging directory (a full copy) and mirrored to the URL:

- :meth:`RemoteMirror.pull` makes the staging directory equal to the remote collection (the remote
  manifest is the truth; files are fetched only when missing or different by sha256);
- :meth:`RemoteMirror.push` uploads every file the local manifest lists that the remote manifest does
  not list with the same checksum (shards, index files, metadata, the quarantine), then the manifest,
  last: a reader of the URL sees the old collection or the new one, never a manifest whose files are
  missing. Pushing after each shard commit keeps the remote as resumable as a local collection.

Writers. A URL has no ``flock``, so the mirror takes two guards of its own (docs/ray.md,
"Storage"):

- a **writer lease**: ``_writer_lease.json`` at the URL names the writer (host, pid, staging copy) and an
  expiry, renewed while the run goes on (every push, and a heartbeat thread). A second writer finds an
  unexpired lease of someone else and is refused with one line naming the holder (after waiting ``wait_s``).
  A lease whose holder ran on this host and is gone (a killed driver) is taken over at once; one from
  another host only once expired. Where the store offers a conditional write (S3's ``If-None-Match: *``,
  via ``fs.pipe_file(..., mode="create")``; file:// and memory:// too) the lease is created put-if-absent;
  elsewhere it is written and read back, which leaves a short race between two writers starting together.
- a **conditional commit**: the version is published by creating ``_versions/NNNNNNNN.json`` put-if-absent,
  then replacing ``manifest.json``. Of two writers that publish the same version number one wins, the other
  gets :class:`~mmsearch.errors.CommitConflictError` and its remote manifest is never written. A store without
  conditional writes is checked (the remote version must still be the one this copy pulled) right before
  the manifest is written: then the lease is the guard, and the single-writer rule applies.

Backends come from fsspec (``pip install s3fs`` / ``gcsfs`` for s3:// / gs://); fsspec is imported only
when a URL is used.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import socket
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from ..errors import CollectionBusyError, CommitConflictError, ConfigError, MissingExtraError, StoreError
from .atomic import file_sha256
from .manifest import MANIFEST_NAME, MODALITIES
from .versions import DRAFT_NAME

log = logging.getLogger(__name__)

QUARANTINE_NAME = "quarantine.jsonl"
LEASE_NAME = "_writer_lease.json"
VERSIONS_DIR = "_versions"
#: how long a writer lease lasts without being renewed (a heartbeat renews it every third of this)
DEFAULT_LEASE_S = 300.0

__all__ = ["DEFAULT_LEASE_S", "RemoteMirror", "RemoteWriterConflictError", "filesystem_for", "is_url", "staging_dir_for"]


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
        self._conditional: bool | None = None
        self.lease_id = uuid.uuid4().hex
        self.lease_s = DEFAULT_LEASE_S
        self._lease_held = False
        self._heartbeat: threading.Thread | None = None
        self._stop = threading.Event()
        self._lease_lock = threading.Lock()

    # -- what the store offers -------------------------------------------------------------------
    def conditional_writes(self) -> bool:
        """Whether the store honours put-if-absent (``pipe_file(mode="create")``): probed once, for real (a
        store that ignores the condition overwrites, and is taken as offering none)."""
        if self._conditional is None:
            probe = f"{self.path}/.mms-probe-{uuid.uuid4().hex[:12]}"
            try:
                self.fs.makedirs(self.path, exist_ok=True)
                self.fs.pipe_file(probe, b"1", mode="create")
                try:
                    self.fs.pipe_file(probe, b"2", mode="create")
                    self._conditional = False
                except FileExistsError:
                    self._conditional = True
            except (TypeError, NotImplementedError, ValueError) as exc:
                log.debug("%s: no conditional writes (%s)", self.url, exc)
                self._conditional = False
            finally:
                try:
                    self.fs.rm_file(probe)
                except (OSError, NotImplementedError):
                    pass
            if not self._conditional:
                log.warning("%s offers no conditional write: the writer lease is best effort, one writer at a time "
                            "(see docs/ray.md)", self.url)
        return self._conditional

    def _create(self, target: str, data: bytes) -> None:
        """Write ``target`` only if absent (raises FileExistsError) where the store can; else just write it."""
        if self.conditional_writes():
            self.fs.pipe_file(target, data, mode="create")
        else:
            self.fs.pipe_file(target, data)

    # -- the writer lease ------------------------------------------------------------------------
    def read_lease(self) -> dict[str, Any] | None:
        """The remote writer lease (holder, expiry), or None."""
        try:
            return json.loads(self.fs.cat_file(f"{self.path}/{LEASE_NAME}"))
        except FileNotFoundError:
            return None
        except (json.JSONDecodeError, UnicodeDecodeError):
            return {"id": "?", "expires": 0.0, "damaged": True}  # a garbage lease protects no one

    def _lease_body(self, command: str) -> bytes:
        return json.dumps({"id": self.lease_id, "host": socket.gethostname(), "pid": os.getpid(),
                           "staging": str(self.local), "since": time.time(), "expires": time.time() + self.lease_s,
                           "command": command}).encode("utf-8")

    def acquire(self, *, wait_s: float | None = 10.0, lease_s: float = DEFAULT_LEASE_S, command: str = "") -> None:
        """Take the URL's writer lease (waiting up to ``wait_s``, None: for ever) and keep it renewed until
        :meth:`release`. Raises :class:`CollectionBusyError` naming the holder."""
        self.lease_s = lease_s
        target = f"{self.path}/{LEASE_NAME}"
        self.fs.makedirs(self.path, exist_ok=True)
        started = time.monotonic()
        while True:
            lease = self.read_lease()
            if lease is not None and lease.get("id") != self.lease_id and not self._stale(lease):
                if wait_s is not None and time.monotonic() - started >= wait_s:
                    raise CollectionBusyError(self.url, _describe(lease), wait_s)
                time.sleep(min(1.0, self.lease_s / 10))
                continue
            if lease is not None and lease.get("id") != self.lease_id:
                log.warning("%s: taking over the writer lease of %s (%s)", self.url, _describe(lease),
                            "expired" if lease.get("expires", 0) < time.time() else "its process is gone")
                try:
                    self.fs.rm_file(target)
                except FileNotFoundError:
                    pass
            try:
                self._create(target, self._lease_body(command))
            except FileExistsError:
                continue  # someone else created it between our read and our write: look again
            if not self.conditional_writes():
                time.sleep(0.2)  # read back: of two writers racing without put-if-absent, the last write wins
                mine = self.read_lease()
                if mine is None or mine.get("id") != self.lease_id:
                    continue
            break
        self._lease_held = True
        self._command = command
        self._stop.clear()
        self._heartbeat = threading.Thread(target=self._beat, name="mmsearch-lease", daemon=True)
        self._heartbeat.start()

    @staticmethod
    def _stale(lease: dict[str, Any]) -> bool:
        """Expired, or held by a process of this host that is gone (the kernel's answer, as for the local lock)."""
        if float(lease.get("expires", 0)) < time.time():
            return True
        if lease.get("host") == socket.gethostname() and isinstance(lease.get("pid"), int):
            try:
                os.kill(lease["pid"], 0)
            except ProcessLookupError:
                return True
            except PermissionError:
                return False
        return False

    def renew(self) -> None:
        """Push the lease's expiry forward; raises :class:`CollectionBusyError` when another writer has it now."""
        if not self._lease_held:
            return
        with self._lease_lock:
            lease = self.read_lease()
            if lease is None or lease.get("id") != self.lease_id:
                self._lease_held = False
                holder = _describe(lease) if lease else "nobody (the lease was removed)"
                raise CollectionBusyError(self.url, f"{holder}, which took over this run's expired writer lease", 0)
            body = json.loads(self._lease_body(getattr(self, "_command", "")))
            body["since"] = lease.get("since", body["since"])
            self.fs.pipe_file(f"{self.path}/{LEASE_NAME}", json.dumps(body).encode("utf-8"))

    def _beat(self) -> None:
        while not self._stop.wait(self.lease_s / 3):
            try:
                self.renew()
            except Exception as exc:  # noqa: BLE001 - the next push reports it
                log.warning("%s: could not renew the writer lease: %s", self.url, exc)
                return

    def release(self) -> None:
        """Stop renewing and remove the lease (if still ours)."""
        self._stop.set()
        if self._heartbeat is not None:
            self._heartbeat.join(timeout=5)
            self._heartbeat = None
        if not self._lease_held:
            return
        self._lease_held = False
        with self._lease_lock:
            lease = self.read_lease()
            if lease is not None and lease.get("id") == self.lease_id:
                try:
                    self.fs.rm_file(f"{self.path}/{LEASE_NAME}")
                except FileNotFoundError:
                    pass

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
        self._fetch(_listed_files(remote), mine)
        (self.local / MANIFEST_NAME).write_text(json.dumps(remote, indent=2, sort_keys=True), encoding="utf-8")
        self._pull_draft(remote)
        return self.local

    def _fetch(self, files: dict[str, str | None], mine: dict[str, str | None]) -> None:
        for rel, sha in files.items():
            dest = self.local / rel
            if sha is not None and dest.is_file() and (mine.get(rel) == sha or file_sha256(dest) == sha):
                continue
            if sha is None and not self.fs.exists(f"{self.path}/{rel}"):
                continue
            dest.parent.mkdir(parents=True, exist_ok=True)
            tmp = dest.with_name(f".tmp-pull-{dest.name}")
            self.fs.get_file(f"{self.path}/{rel}", str(tmp))
            tmp.replace(dest)

    def _pull_draft(self, remote: dict[str, Any]) -> None:
        """A run killed before it published left its checkpoint at the URL (``_draft.json`` + its files): take
        it when this copy has none of its own, so a driver restarted on another machine resumes it too."""
        local_draft = self.local / DRAFT_NAME
        if local_draft.is_file():
            return  # this copy's own checkpoint (the store drops it if it is not on the current version)
        try:
            data = self.fs.cat_file(f"{self.path}/{DRAFT_NAME}")
            draft = json.loads(data)
        except FileNotFoundError:
            return
        except (json.JSONDecodeError, UnicodeDecodeError):
            log.warning("%s/%s is unreadable: not resuming it", self.url, DRAFT_NAME)
            return
        if draft.get("base_version") != remote.get("version"):
            return  # made on another version: the store would drop it
        try:
            self._fetch({rel: sha for rel, sha in _listed_files(draft).items() if sha is not None}, {})
        except FileNotFoundError as exc:
            log.warning("%s/%s lists a file that is gone (%s): not resuming it", self.url, DRAFT_NAME, exc)
            return
        local_draft.write_bytes(data)
        log.info("took the checkpoint of an interrupted run from %s", self.url)

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
        self._check_not_behind(remote, manifest, checkpoint=listing is not None)  # before a byte is uploaded
        have = _listed_files(remote)
        self.fs.makedirs(self.path, exist_ok=True)
        uploaded = 0
        for rel, sha in _listed_files(manifest).items():
            source = self.local / rel
            if not source.is_file() or (sha is not None and sha in (have.get(rel), self._uploaded.get(rel))):
                continue
            self.fs.makedirs(f"{self.path}/{rel}".rsplit("/", 1)[0], exist_ok=True)
            if sha is None or rel in have:  # rewritten in place by design (the quarantine, index/<modality>.json)
                self.fs.put_file(str(source), f"{self.path}/{rel}")
            else:  # shards, deletion files, versioned index files: never overwritten
                self._put_new(source, rel)
            self._uploaded[rel] = sha
            uploaded += 1
        if self._lease_held:
            self.renew()  # also says, before anything is published, that another writer took over
        if listing is not None and (self.local / DRAFT_NAME).is_file():  # the checkpoint itself, for a restart elsewhere
            self.fs.pipe_file(f"{self.path}/{DRAFT_NAME}", (self.local / DRAFT_NAME).read_bytes())
        if not publish:
            return uploaded
        self._publish(manifest, local_manifest.read_bytes())
        return uploaded

    def _check_not_behind(self, remote: dict[str, Any], manifest: dict[str, Any], *, checkpoint: bool) -> None:
        """Refuse (before uploading anything) when the remote gained a version this copy does not build on."""
        have = remote.get("version")
        if not isinstance(have, int):
            return
        if checkpoint:
            base = manifest.get("base_version")
            if isinstance(base, int) and have > base:
                raise CommitConflictError(self.url, have)
            return
        number = manifest.get("version")
        if isinstance(number, int) and (have > number or (have == number and remote != manifest)):
            raise CommitConflictError(self.url, have)

    def _put_new(self, source: Path, rel: str) -> None:
        """Upload a file that must not exist yet (put-if-absent where the store can). A name already taken is
        fine with the same bytes (this run's own upload before a restart), a second writer's otherwise."""
        target = f"{self.path}/{rel}"
        try:
            if not self.conditional_writes():
                if self.fs.exists(target):
                    raise FileExistsError(target)
                self.fs.put_file(str(source), target)
            elif "s3" in _protocols(self.fs) or "s3a" in _protocols(self.fs):
                self.fs.put_file(str(source), target, mode="create")  # If-None-Match: *, multipart included
            else:
                self.fs.pipe_file(target, source.read_bytes(), mode="create")
        except FileExistsError:
            if hashlib.sha256(self.fs.cat_file(target)).hexdigest() == file_sha256(source):
                return
            raise RemoteWriterConflictError(self.url, rel) from None

    def _publish(self, manifest: dict[str, Any], data: bytes) -> None:
        """Make the local version the remote's current one: ``_versions/N.json`` put-if-absent, then the manifest."""
        number = manifest.get("version")
        remote = self.remote_manifest()
        if isinstance(number, int) and remote is not None and isinstance(remote.get("version"), int):
            if remote["version"] == number and remote == manifest:
                return  # already the remote's version (a push with nothing new)
            if remote["version"] >= number:
                raise CommitConflictError(self.url, remote["version"])
        if isinstance(number, int):
            target = f"{self.path}/{VERSIONS_DIR}/{number:08d}.json"
            self.fs.makedirs(f"{self.path}/{VERSIONS_DIR}", exist_ok=True)
            try:
                self._create(target, data)
            except FileExistsError as exc:
                raise CommitConflictError(self.url, number) from exc
        tmp = f"{self.path}/.tmp-{MANIFEST_NAME}.{uuid.uuid4().hex[:8]}"
        self.fs.pipe_file(tmp, data)
        self.fs.mv(tmp, f"{self.path}/{MANIFEST_NAME}")
        if not (self.local / DRAFT_NAME).is_file():  # published: the run's checkpoint at the URL is spent
            try:
                self.fs.rm_file(f"{self.path}/{DRAFT_NAME}")
            except FileNotFoundError:
                pass


class RemoteWriterConflictError(CommitConflictError):
    """A file this writer was to upload already holds another writer's bytes: two writers at one URL."""

    def __init__(self, url: str, rel: str) -> None:
        self.path, self.version, self.file = url, -1, rel
        StoreError.__init__(self, f"{url}/{rel} already holds another writer's data: a second writer is writing this "
                                  "collection (its lease expired or was bypassed); this run published nothing and "
                                  "overwrote nothing: run it again when the other writer is done")


def _protocols(fs: Any) -> tuple[str, ...]:
    protocol = fs.protocol
    return (protocol,) if isinstance(protocol, str) else tuple(protocol)


def _describe(lease: dict[str, Any]) -> str:
    if lease.get("damaged"):
        return "an unreadable writer lease"
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(lease.get("since", 0))))
    until = time.strftime("%H:%M:%S", time.localtime(float(lease.get("expires", 0))))
    what = f": {lease['command']}" if lease.get("command") else ""
    return f"pid {lease.get('pid')} on {lease.get('host')} (since {when}{what}; lease until {until})"


def _listed_files(manifest: dict[str, Any]) -> dict[str, str | None]:
    """Every file a manifest accounts for -> its sha256 (None: no checksum, always copied when present)."""
    files: dict[str, str | None] = {}
    for modality in MODALITIES:
        for shard in manifest.get("shards", {}).get(modality, []):
            files[shard["file"]] = shard["sha256"]
        extra = manifest.get("extra", {}).get(modality)
        if extra:
            files[extra["file"]] = extra.get("sha256")
        labels = manifest.get("labels", {}).get(modality)
        if labels:
            files[labels["file"]] = labels.get("sha256")
        deleted = manifest.get("deleted", {}).get(modality)
        for entry in deleted.get("files", []) if isinstance(deleted, dict) else []:
            files[entry["file"]] = entry["sha256"]
    for modality, info in manifest.get("indexes", {}).items():
        # an index file is rewritten in place; its manifest entry (fingerprint, build time) identifies it
        tag = hashlib.sha256(json.dumps(info, sort_keys=True).encode()).hexdigest()
        for rel in [*(info.get("part_files") or [info["file"]]), *info.get("data_files", []),
                    *([info["moments_file"]] if info.get("moments_file") else [])]:
            files[rel] = tag
        files[f"{info['file'].rsplit('/', 1)[0]}/{modality}.json"] = tag  # index/<modality>.json
    files[QUARANTINE_NAME] = None
    return files

