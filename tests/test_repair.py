"""The corruption matrix: each kind of damage is named by ``verify`` and repaired by ``index``, after which the
collection answers the same queries as before the damage. Plus the failures that must stay one line."""

from __future__ import annotations

import errno
import os
from pathlib import Path
from typing import Callable

import pytest
from click.testing import CliRunner
from fakes import make_colour_folder
from PIL import Image

import mmsearch
from mmsearch.store import Store
from mmsearch.store.versions import list_versions, version_path

COLOUR = "colour:v1"
NAMES = ["red", "green", "blue", "yellow", "cyan", "magenta", "white"]
QUERIES = ["a red square", "green", "a blue square", "yellow and cyan", "white"]


def _answers(out: Path) -> list:
    col = mmsearch.open(out)
    # matches (score > 0) in rank order; ties among the rest are ordered by id, which a repair may change
    images = [sorted((-round(h.score, 4), Path(h.uri).name) for h in col.search(q, k=4) if h.score > 0.01)
              for q in QUERIES]
    texts = [sorted(h.text for h in col.search(q, k=3, modality="text") if h.score > 0.01) for q in QUERIES]
    return [images, texts, col.info()["images"], col.info()["texts"]]


@pytest.fixture
def built(tmp_path: Path) -> tuple[Path, Path, list]:
    folder = make_colour_folder(tmp_path / "imgs", NAMES)
    Image.new("RGB", (40, 30), (0, 0, 0)).save(folder / "black.png")
    out = mmsearch.index(folder, out=tmp_path / "c.mms", model=COLOUR, workers=0, shard_rows=3).path
    (folder / "black.png").unlink()  # one deletion: the collection has a deletion file too
    mmsearch.index(folder, out=out, workers=0, shard_rows=3)
    assert mmsearch.verify(out, deep=True) == []
    return folder, out, _answers(out)


def _listed(out: Path, kind: str) -> str:
    m = Store.open(out).manifest
    if kind == "index":
        return m.indexes["images"].file
    if kind == "shard":
        return m.shards["images"][1].file
    if kind == "text-shard":
        return m.shards["texts"][0].file
    return m.deletion_files["images"][0]["file"]


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 3])


def _garbage(path: Path) -> None:
    path.write_bytes(os.urandom(path.stat().st_size))


def _flip(path: Path) -> None:
    data = bytearray(path.read_bytes())
    for i in range(8):
        data[len(data) // 2 + 13 * i] ^= 0xFF
    path.write_bytes(bytes(data))


DAMAGE: dict[str, tuple[str, Callable[[Path], None]]] = {
    "index truncated": ("index", _truncate),
    "index garbage": ("index", _garbage),
    "index missing": ("index", Path.unlink),
    "shard truncated": ("shard", _truncate),
    "shard missing": ("shard", Path.unlink),
    "shard bytes flipped": ("shard", _flip),
    "caption shard missing": ("text-shard", Path.unlink),
    "deletion file garbage": ("deletions", _garbage),
}


@pytest.mark.parametrize("kind", list(DAMAGE))
def test_damage_is_named_then_repaired(built: tuple[Path, Path, list], kind: str) -> None:
    folder, out, before = built
    what, damage = DAMAGE[kind]
    rel = _listed(out, what)
    damage(out / rel)
    problems = mmsearch.verify(out)
    assert any(p.startswith(rel) for p in problems), problems
    result = mmsearch.index(folder, out=out, workers=0, shard_rows=3)
    assert mmsearch.verify(out, deep=True) == []
    assert _answers(out) == before
    if what in ("shard", "text-shard"):  # the damaged rows' sources were embedded again
        assert result.report.images_embedded > 0
    if damage is not Path.unlink:  # the damaged file is set aside for the user, not deleted
        assert (out / "_damaged" / rel).is_file()


def test_a_query_on_a_missing_index_file_names_the_file_and_the_fix(built: tuple[Path, Path, list]) -> None:
    _, out, _ = built
    rel = _listed(out, "index")
    (out / rel).unlink()
    with pytest.raises(mmsearch.MMSearchError, match=f"lacks {rel}; run `mmsearch index` on it again"):
        mmsearch.open(out).search("a red square")


def test_a_garbage_manifest_falls_back_to_the_newest_version(built: tuple[Path, Path, list]) -> None:
    folder, out, before = built
    (out / "manifest.json").write_bytes(os.urandom(300))
    assert _answers(out) == before  # readers use the newest version file, saying so on the log
    assert any(p.startswith("manifest.json") for p in mmsearch.verify(out))
    mmsearch.index(folder, out=out, workers=0, shard_rows=3)
    assert mmsearch.verify(out) == [] and _answers(out) == before


def test_a_broken_newest_version_falls_back_to_the_last_good_one(built: tuple[Path, Path, list], caplog) -> None:
    folder, out, before = built
    newest = list_versions(out)[-1]
    version_path(out, newest).write_bytes(b"\x00\xff" * 50)
    (out / "manifest.json").write_bytes(b"\x00\xff" * 50)
    col = mmsearch.open(out)
    assert col.version == newest - 1 and "newest one that is readable" in caplog.text
    problems = mmsearch.verify(out)
    assert any(p.startswith(f"_versions/{newest:08d}.json") for p in problems)
    mmsearch.index(folder, out=out, workers=0, shard_rows=3)
    assert mmsearch.open(out).version > newest and _answers(out) == before


def test_a_full_disk_during_the_commit_is_one_line_and_keeps_the_last_version(built: tuple[Path, Path, list],
                                                                             monkeypatch) -> None:
    folder, out, before = built
    version = mmsearch.open(out).version
    Image.new("RGB", (40, 30), (0, 0, 0)).save(folder / "black.png")

    def full(*args: object, **kwargs: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr("mmsearch.store.store.write_version", full)
    from mmsearch.cli.main import main

    result = CliRunner().invoke(main, ["index", str(folder), "--out", str(out)])
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert result.output.strip().splitlines()[-1].startswith("Error: No space left on device")
    assert mmsearch.open(out).version == version and _answers(out) == before
    monkeypatch.undo()
    mmsearch.index(folder, out=out, workers=0, shard_rows=3)  # space again: the interrupted run is resumed
    assert mmsearch.open(out).info()["images"] == len(NAMES) + 1


def test_a_garbage_manifest_without_versions_is_one_line(tmp_path: Path) -> None:
    out = tmp_path / "c.mms"
    out.mkdir()
    (out / "manifest.json").write_bytes(os.urandom(500))
    from mmsearch.cli.main import main

    result = CliRunner().invoke(main, ["info", str(out)])
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) == 1 and "not a manifest" in result.output


def test_an_oversized_image_is_quarantined_without_being_read(tmp_path: Path, monkeypatch) -> None:
    folder = make_colour_folder(tmp_path / "imgs", ["red"])
    with open(folder / "huge.jpg", "wb") as f:  # sparse: 2 GiB on paper, nothing on disk
        f.truncate(2 * 1024**3)
    out = mmsearch.index(folder, out=tmp_path / "c.mms", model=COLOUR, workers=0).path
    rejected = mmsearch.open(out).quarantine()
    assert [(Path(e["uri"]).name, e["reason"]) for e in rejected] == [("huge.jpg", "too-large")]
    assert "MiB" in rejected[0]["error"]


def test_verify_cli_exits_non_zero_naming_each_problem(built: tuple[Path, Path, list]) -> None:
    _, out, _ = built
    from mmsearch.cli.main import main

    assert CliRunner().invoke(main, ["verify", str(out)]).exit_code == 0
    shard, index = _listed(out, "shard"), _listed(out, "index")
    _flip(out / shard)
    (out / index).unlink()
    result = CliRunner().invoke(main, ["verify", str(out), "--deep"])
    assert result.exit_code == 1
    assert f"{shard}: checksum mismatch" in result.output and f"{index}: missing" in result.output


def test_a_reader_refuses_embeddings_that_are_not_unit_length(tmp_path: Path) -> None:
    import numpy as np

    from mmsearch.errors import CorruptShardError
    from mmsearch.store import ModelInfo

    store = Store.open_or_create(tmp_path / "c.mms", ModelInfo("colour:v1", "p", 4), embedding_dtype="float32")
    ids = store.reserve_ids(2)
    vectors = np.array([[1, 0, 0, 0], [9.79, 0, 0, 0]], dtype=np.float32)  # the second: damaged bytes
    store.append("texts", {"id": ids, "text": ["a", "b"], "source": ["s", "s"], "key": ["a", "b"],
                           "image_id": [None, None]}, vectors)
    reader = Store.open(store.root)
    assert reader.embeddings_by_id("texts", [0])[0][0] == 1.0
    with pytest.raises(CorruptShardError, match="not unit length"):
        reader.embeddings_by_id("texts", [1])
    assert any("not finite unit vectors" in p for p in reader.check(deep=True))
