"""A collection shared between writers, readers and the server: versions, the writer lock, leases, clean-up."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
from fakes import make_colour_folder
from PIL import Image

import mmsearch
from mmsearch.errors import CollectionBusyError, CommitConflictError
from mmsearch.store import Store
from mmsearch.store.lock import WriterLock
from mmsearch.store.versions import list_versions

COLOUR = "colour:v1"


def test_writers_readers_and_the_server_at_once_with_kills(tmp_path: Path) -> None:
    pytest.importorskip("fastapi")
    from sharing_harness import run

    _check_scene(run(tmp_path, writers=3, images=10, readers=2, kills=3, seed=1))


def test_small_shards_are_merged_while_writers_are_killed_and_readers_read(tmp_path: Path) -> None:
    """Each writer run leaves one small shard (shard_rows above its rows): they are merged as runs go, and no row
    is lost, doubled or unreadable meanwhile."""
    pytest.importorskip("fastapi")
    from sharing_harness import run

    outcome = run(tmp_path, writers=9, images=3, readers=1, kills=2, seed=2, shard_rows=32)
    _check_scene(outcome)
    with Store.open(outcome.out) as store:
        assert len(store.manifest.shards["images"]) < 8 <= outcome.writer_runs  # merged: fewer files than runs


def _check_scene(outcome) -> None:  # noqa: ANN001 - a sharing_harness.Outcome
    assert outcome.kills >= 1, "no writer was killed: the test proved nothing about kills"
    assert outcome.reader_errors == [] and outcome.reader_searches > 20
    assert outcome.versions_seen >= 2, "the readers never saw the collection change"
    assert outcome.http_5xx == 0 and outcome.http_errors == [] and outcome.http_requests > 20
    col = mmsearch.open(outcome.out)
    images, _ = col.metadata("image")
    texts, _ = col.metadata("text")
    expected = sorted(str(p) for f in outcome.folders for p in f.glob("*.png"))
    uris = images.column("uri").to_pylist()
    assert sorted(uris) == expected  # the union of every writer's rows: none lost, none twice
    all_ids = images.column("id").to_pylist() + texts.column("id").to_pylist()
    assert len(set(all_ids)) == len(all_ids)
    by_id = dict(zip(images.column("id").to_pylist(), uris))
    pairs = list(zip(texts.column("image_id").to_pylist(), texts.column("source").to_pylist()))
    assert len(pairs) == len(uris) and all(by_id[img] == src for img, src in pairs)  # each caption on its image
    assert Counter(src for _, src in pairs) == Counter(uris)
    verify = subprocess.run([sys.executable, "-m", "mmsearch.cli.main", "verify", str(outcome.out), "--deep"],
                            capture_output=True, text=True, cwd=Path(__file__).resolve().parents[1])
    assert verify.returncode == 0, verify.stdout + verify.stderr
    assert not (outcome.out / "_draft.json").exists()


def test_a_second_writer_waits_then_fails_naming_the_holder(tmp_path: Path) -> None:
    out = mmsearch.index(make_colour_folder(tmp_path / "a", ["red"]), out=tmp_path / "c.mms", model=COLOUR, workers=0).path
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time\nfrom mmsearch.store.lock import WriterLock\n"
                               f"lock = WriterLock({str(out)!r}).acquire()\nprint('held', flush=True)\ntime.sleep(30)"],
                              stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    try:
        assert holder.stdout.readline().strip() == "held"
        assert f"pid {holder.pid}" in mmsearch.open(out).info()["writer"]  # `mmsearch info` says who writes
        started = time.monotonic()
        with pytest.raises(CollectionBusyError, match=rf"pid {holder.pid} on .*--wait SECONDS"):
            mmsearch.index(tmp_path / "a", out=out, wait_s=0.5, workers=0)
        assert time.monotonic() - started >= 0.5
        from sharing_harness import SETUP

        args = ["index", str(tmp_path / "a"), "--out", str(out), "--wait", "0"]
        script = SETUP + f"from mmsearch.cli.main import main\nmain({args!r})"
        cli = subprocess.run([sys.executable, "-c", script, "x"], capture_output=True, text=True,
                             cwd=Path(__file__).resolve().parents[1], env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
        assert cli.returncode == 1 and "Traceback" not in cli.stderr
        assert f"pid {holder.pid}" in cli.stderr and len(cli.stderr.strip().splitlines()) <= 2
    finally:
        holder.kill()
        holder.wait()
    mmsearch.index(tmp_path / "a", out=out, wait_s=5, workers=0)  # the holder died: its lock went with it
    assert mmsearch.open(out).info()["writer"] is None


def test_a_reader_keeps_its_version_until_it_refreshes(tmp_path: Path) -> None:
    folder = make_colour_folder(tmp_path / "imgs", ["red", "green"])
    out = mmsearch.index(folder, out=tmp_path / "c.mms", model=COLOUR, workers=0).path
    col = mmsearch.open(out)
    before = col.version
    (folder / "red.png").unlink()
    Image.new("RGB", (40, 30), (0, 0, 255)).save(folder / "blue.png")
    mmsearch.index(folder, out=out, workers=0, retention_s=0)  # retention 0: only the reader's lease keeps its version
    hits = col.search("red", k=10)
    assert col.version == before and "red.png" in {Path(h.uri).name for h in hits}
    assert all(h.uri is not None for h in hits)
    assert before in list_versions(out)  # held by the reader: not cleaned up
    assert col.refresh() and col.version > before
    assert {Path(h.uri).name for h in col.search("blue", k=10)} == {"blue.png", "green.png"}
    col.close()
    assert mmsearch.vacuum(out)["versions"] >= 1 and list_versions(out)[0] > before


def test_a_stale_writer_cannot_overwrite_a_newer_version(tmp_path: Path) -> None:
    out = mmsearch.index(make_colour_folder(tmp_path / "a", ["red"]), out=tmp_path / "c.mms", model=COLOUR, workers=0).path
    stale = Store.open(out)  # a reader that will try to write after someone else did
    mmsearch.index(make_colour_folder(tmp_path / "b", ["green"]), out=out, workers=0)
    with pytest.raises(CommitConflictError, match="nothing of either was lost"):
        stale.mark_deleted("images", [0])
    assert mmsearch.open(out).info()["images"] == 2


def test_versions_are_listed_and_old_ones_vacuumed(tmp_path: Path) -> None:
    folder = make_colour_folder(tmp_path / "imgs", ["red"])
    out = mmsearch.index(folder, out=tmp_path / "c.mms", model=COLOUR, workers=0).path
    Image.new("RGB", (40, 30), (0, 0, 255)).save(folder / "blue.png")
    mmsearch.index(folder, out=out, workers=0)  # default retention: the older version stays
    rows = mmsearch.versions(out)
    assert [r["operation"] for r in rows] == ["create", "index", "index"] and rows[-1]["current"]
    assert [r["images"] for r in rows] == [0, 1, 2]
    done = mmsearch.vacuum(out, retention_s=0)
    assert done["versions"] == 2 and [r["version"] for r in mmsearch.versions(out)] == [rows[-1]["version"]]
    assert mmsearch.verify(out, deep=True) == []
    listed = set(Store.open(out).manifest.files())
    on_disk = {p.relative_to(out).as_posix() for d in ("images", "texts", "index", "extra") for p in (out / d).rglob("*")
               if p.is_file() and not p.name.endswith(".json")}
    assert on_disk == listed  # nothing left that no version lists


def test_collection_files_follow_the_umask(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        out = mmsearch.index(make_colour_folder(tmp_path / "a", ["red"]), out=tmp_path / "c.mms", model=COLOUR,
                             workers=0).path
    finally:
        os.umask(old)
    files = [p for p in out.rglob("*") if p.is_file() and p.name != "writer.lock"]
    assert files and all(stat.S_IMODE(p.stat().st_mode) == 0o644 for p in files), \
        {p.name: oct(stat.S_IMODE(p.stat().st_mode)) for p in files}


def test_a_collection_from_before_versions_opens_and_migrates(tmp_path: Path) -> None:
    folder = make_colour_folder(tmp_path / "imgs", ["red", "green"])
    out = mmsearch.index(folder, out=tmp_path / "c.mms", model=COLOUR, workers=0).path
    manifest = json.loads((out / "manifest.json").read_text())
    for p in (out / "_versions").iterdir():  # as collections were written before versions
        p.unlink()
    (out / "_versions").rmdir()
    manifest.pop("version")
    manifest.pop("operation")
    manifest["format_version"] = 1
    (out / "manifest.json").write_text(json.dumps(manifest))
    assert mmsearch.open(out).version == 0 and len(mmsearch.open(out).search("red", k=5)) == 2
    Image.new("RGB", (40, 30), (0, 0, 255)).save(folder / "blue.png")
    mmsearch.index(folder, out=out, workers=0)
    assert [r["version"] for r in mmsearch.versions(out)] == [0, 1] and mmsearch.open(out).info()["images"] == 3
    assert json.loads((out / "manifest.json").read_text())["format_version"] == 2


def test_writer_lock_nests_within_a_thread(tmp_path: Path) -> None:
    lock = WriterLock(tmp_path).acquire()
    inner = WriterLock(tmp_path).acquire(wait_s=0)
    assert inner.nested
    inner.release()
    assert lock.held and not lock.nested
    lock.release()
