"""Incremental add / change / remove, content dedup, caption sources, text corpora, OOM back-off."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from fakes import COLOURS, ColourEncoder, make_colour_folder
from PIL import Image

import mmsearch
from mmsearch.encoders import register_scheme
from mmsearch.errors import ConfigError, EncoderError
from mmsearch.ingest import iter_text_records
from mmsearch.ingest.encode import BatchEncoder
from mmsearch.store import Store


class CountingColour(ColourEncoder):
    """Counts the images it encodes (per process)."""

    encoded = 0

    def encode_images(self, batch):  # noqa: ANN001, ANN201
        CountingColour.encoded += len(batch)
        return super().encode_images(batch)


register_scheme("counting", lambda spec, device: CountingColour(str(spec)))


def uris(out: Path) -> list[str]:
    return sorted(Path(u).name for u in Store.open(out).scan("images", ["uri"]).column("uri").to_pylist())


def test_add_change_remove(tmp_path: Path, colour_model: str) -> None:
    folder = make_colour_folder(tmp_path / "imgs", ["red", "green", "blue"])
    out = tmp_path / "c.mms"
    mmsearch.index(folder, out=out, model=colour_model)
    Image.new("RGB", (9, 9), COLOURS["cyan"]).save(folder / "cyan.png")  # added
    Image.new("RGB", (9, 9), COLOURS["white"]).save(folder / "red.png")  # changed content
    os.utime(folder / "red.png", (5, 5))
    (folder / "nested" / "green.png").unlink()  # removed
    report = mmsearch.index(folder, out=out).report
    assert (report.images_embedded, report.replaced, report.deleted, report.skipped_unchanged) == (2, 1, 1, 1)
    assert uris(out) == ["blue.png", "cyan.png", "red.png"]
    col = mmsearch.open(out)
    assert Path(col.search("white", k=1)[0].uri).name == "red.png"
    texts = [h.text for h in col.search("square", modality="text", k=10)]
    assert sorted(texts) == ["a blue square", "a red square"]  # green's caption went with its image
    (folder / "blue.txt").write_text("a blue square, edited")  # only the caption changed
    CountingColour.encoded = 0
    report = mmsearch.index(folder, out=out).report
    assert report.replaced == 1 and report.images_deduplicated == 1  # the image's embedding was reused


def test_identical_files_are_embedded_once_and_every_path_recorded(tmp_path: Path) -> None:
    folder = tmp_path / "imgs"
    folder.mkdir()
    for i in range(3):
        Image.new("RGB", (12, 12), COLOURS["blue"]).save(folder / f"same{i}.png")
    Image.new("RGB", (12, 12), COLOURS["red"]).save(folder / "red.png")
    CountingColour.encoded = 0
    result = mmsearch.index(folder, out=tmp_path / "c.mms", model="counting:v1", workers=0)
    assert CountingColour.encoded == 2 and result.report.images_deduplicated == 2
    hits = mmsearch.open(result.path).search("blue", k=10)
    assert sorted(Path(h.uri).name for h in hits[:3]) == ["same0.png", "same1.png", "same2.png"]
    assert len({h.metadata["sha256"] for h in hits[:3]}) == 1 and hits[2].score == pytest.approx(1.0, abs=1e-3)
    (folder / "later.png").write_bytes((folder / "same0.png").read_bytes())  # a later run: read from the store
    CountingColour.encoded = 0
    again = mmsearch.index(folder, out=result.path, workers=0).report
    assert CountingColour.encoded == 0 and again.images_deduplicated == 1 and again.images_embedded == 1


def test_captions_from_json_sidecars_and_a_manifest(tmp_path: Path, colour_model: str) -> None:
    folder = make_colour_folder(tmp_path / "imgs", ["red", "green", "blue", "yellow"], captions=False)
    (folder / "red.json").write_text(json.dumps({"caption": "a red sidecar", "url": "x"}))
    manifest = tmp_path / "captions.csv"
    with open(manifest, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["file", "caption"])
        w.writerow(["imgs/blue.png", "a blue from the manifest"])
        w.writerow([str(folder / "nested" / "green.png"), "a green from the manifest"])
    result = mmsearch.index(folder, model=colour_model, captions=manifest, path_column="file")
    col = mmsearch.open(result.path)
    captions = {Path(h.uri).name: h.caption for h in col.search("red", k=10)}
    assert captions == {"red.png": "a red sidecar", "blue.png": "a blue from the manifest",
                        "green.png": "a green from the manifest", "yellow.png": None}
    top = col.search(image=folder / "blue.png", modality="text", k=1)[0]
    assert top.text == "a blue from the manifest"


@pytest.mark.parametrize("kind", ["jsonl", "csv", "parquet"])
def test_table_corpora_with_chosen_columns_are_incremental(tmp_path: Path, colour_model: str, kind: str) -> None:
    rows = [{"doc": f"d{i}", "body": f"a {name} note", "other": i} for i, name in enumerate(["red", "green", "blue"])]
    path = tmp_path / f"corpus.{kind}"
    write_table(path, rows)
    out = tmp_path / "c.mms"
    first = mmsearch.index(path, out=out, model=colour_model, text_column="body", id_column="doc").report
    assert first.texts_embedded == 3
    rows[1]["body"] = "a yellow note"  # changed text, same id
    del rows[2]  # removed
    rows.append({"doc": "d9", "body": "a cyan note", "other": 9})  # added
    write_table(path, rows)
    again = mmsearch.index(path, out=out, text_column="body", id_column="doc").report
    assert (again.texts_embedded, again.replaced, again.deleted, again.skipped_unchanged) == (2, 1, 1, 1)
    keys = Store.open(out).scan("texts", ["key", "text"]).to_pydict()
    assert sorted(zip(keys["key"], keys["text"])) == [("id:d0", "a red note"), ("id:d1", "a yellow note"),
                                                      ("id:d9", "a cyan note")]


def test_missing_text_column_is_a_config_error_naming_the_columns(tmp_path: Path) -> None:
    path = tmp_path / "c.csv"
    write_table(path, [{"a": "x", "b": "y"}])
    with pytest.raises(ConfigError, match="columns are: a, b"):
        list(iter_text_records(path))
    assert [r.text for r in iter_text_records(path, text_column="b")] == ["y"]


def test_out_of_memory_halves_the_batch_and_retries() -> None:
    class Picky(ColourEncoder):
        calls: list[int] = []

        def encode_texts(self, texts):  # noqa: ANN001, ANN201
            Picky.calls.append(len(texts))
            if len(texts) > 3:
                raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")
            return super().encode_texts(texts)

    batcher = BatchEncoder(Picky(), batch_size=16)
    vectors = batcher.texts([f"red {i}" for i in range(10)])
    assert vectors.shape == (10, ColourEncoder.dim) and batcher.batch_size == 2
    assert Picky.calls[:3] == [10, 8, 4] and max(Picky.calls[3:]) <= 2

    class Hopeless(ColourEncoder):
        def encode_texts(self, texts):  # noqa: ANN001, ANN201
            raise RuntimeError("CUDA out of memory")

    with pytest.raises(EncoderError, match="batch of 1"):
        BatchEncoder(Hopeless(), batch_size=4).texts(["a", "b"])
    with pytest.raises(ValueError):  # other errors are not swallowed
        BatchEncoder(_Broken(), batch_size=4).texts(["a"])


class _Broken(ColourEncoder):
    def encode_texts(self, texts):  # noqa: ANN001, ANN201
        raise ValueError("not an OOM")


UNREADABLE_SCRIPT = """
import os, sys
os.setgid(65534); os.setuid(65534)
import mmsearch
r = mmsearch.index({folder!r}, out={out!r}, model="openclip:mms-tiny/random", workers=0)
print(dict(r.report.rejected_reasons), r.report.images_embedded)
"""


@pytest.mark.skipif(sys.platform != "linux", reason="Linux permissions")
def test_unreadable_file_is_quarantined(tmp_path: Path) -> None:
    """chmod 000 does not stop root, so as root the indexer runs as 'nobody' in a subprocess."""
    base = Path(tempfile.mkdtemp(prefix="mms-perm-"))
    try:
        base.chmod(0o777)
        folder = make_colour_folder(base / "imgs", ["red", "green"], captions=False)
        for p in [folder, folder / "nested"]:
            p.chmod(0o755)
        Image.new("RGB", (8, 8), COLOURS["blue"]).save(folder / "secret.png")
        (folder / "secret.png").chmod(0o000)
        if os.geteuid() != 0:
            pytest.skip("needs root to switch to an unprivileged user")  # as a normal user chmod 000 is enough, but
            # the subprocess below cannot setuid; the decode classification is covered by test_torture
        out = base / "c.mms"
        script = UNREADABLE_SCRIPT.format(folder=str(folder), out=str(out))
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), "MMSEARCH_HOME": str(base / "home"),
               "HOME": str(base)}
        probe = "import os; os.setgid(65534); os.setuid(65534); import mmsearch.api"
        if subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, timeout=120).returncode:
            pytest.skip("this Python installation is not readable by an unprivileged user, and as root chmod 000 "
                        "blocks nothing (the 'unreadable' reason is covered by test_torture's symlink loop)")
        done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr[-2000:]
        assert done.stdout.strip().splitlines()[-1] == "{'unreadable': 1} 2"
    finally:
        subprocess.run(["rm", "-rf", str(base)], check=False)


def write_table(path: Path, rows: list[dict]) -> None:
    if path.suffix == ".jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    elif path.suffix == ".csv":
        with open(path, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows(rows)
    else:
        pq.write_table(pa.Table.from_pylist(rows), path)


def test_non_utf8_names_are_indexed_and_followed_incrementally(tmp_path: Path, colour_model: str) -> None:
    folder = tmp_path / "imgs"
    folder.mkdir()
    name = os.fsencode(folder) + b"/r\xf6d.png"
    Image.new("RGB", (8, 8), COLOURS["red"]).save(name)
    result = mmsearch.index(folder, model=colour_model)
    assert result.report.images_embedded == 1
    assert uris(result.path) == ["r\\xf6d.png"]
    assert mmsearch.index(folder).report.skipped_unchanged == 1
    os.unlink(name)
    assert mmsearch.index(folder).report.deleted == 1
    assert np.isfinite(mmsearch.open(result.path).info()["images"])


def test_cli_index_flags_and_machine_readable_summary(tmp_path: Path, colour_model: str) -> None:
    from click.testing import CliRunner

    from mmsearch.cli.main import main

    folder = make_colour_folder(tmp_path / "imgs", ["red", "green"], captions=False)
    (folder / "broken.png").write_bytes(b"\x89PNG nope")
    corpus = tmp_path / "notes.csv"
    write_table(corpus, [{"ref": "n1", "words": "a red note"}])
    args = ["index", str(folder), str(corpus), "--out", str(tmp_path / "c.mms"), "--model", colour_model,
            "--text-column", "words", "--id-column", "ref", "--decode-timeout", "5", "--shard-rows", "1", "--json"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output.strip().splitlines()[-1])
    assert summary["images_embedded"] == 2 and summary["texts_embedded"] == 1
    assert summary["rejected_reasons"] == {"not-an-image": 1} and summary["images_per_s"] > 0
    assert len(Store.open(tmp_path / "c.mms").manifest.shards["images"]) == 2  # --shard-rows 1


# -- stable ids: a file (or a corpus line) that comes back unchanged gets its old row back ---------------------
def _ids_by_name(out: Path) -> dict[str, int]:
    rows = Store.open(out).scan("images", ["id", "uri"]).to_pydict()
    return {Path(u).name: i for i, u in zip(rows["id"], rows["uri"])}


@pytest.mark.parametrize("factory", ["Flat", "HNSW8"])  # an index that removes deleted vectors, one that masks them
def test_a_file_removed_then_restored_keeps_its_id_and_caption(tmp_path: Path, factory: str) -> None:
    folder = make_colour_folder(tmp_path / "imgs", ["red", "green", "blue"])
    out = tmp_path / "c.mms"
    mmsearch.index(folder, out=out, model="counting:v1", index_factory=factory)
    before = _ids_by_name(out)
    caption_id = mmsearch.open(out).search("red", modality="text", k=1)[0].id
    trash = tmp_path / "trash"
    trash.mkdir()
    for name in ("red.png", "red.txt"):  # a move keeps the modification time, as a trash or a backup does
        os.rename(folder / name, trash / name)
    assert mmsearch.index(folder, out=out).report.deleted == 1
    assert "red.png" not in _ids_by_name(out)
    for name in ("red.png", "red.txt"):
        os.rename(trash / name, folder / name)
    CountingColour.encoded = 0
    report = mmsearch.index(folder, out=out).report
    assert CountingColour.encoded == 0 and report.images_embedded == 0 and report.texts_embedded == 0
    assert _ids_by_name(out) == before  # same ids, no new row
    col = mmsearch.open(out)
    hit = col.search("red", k=1)[0]
    assert Path(hit.uri).name == "red.png" and hit.id == before["red.png"]
    caption = col.search("red", modality="text", k=1)[0]
    assert caption.id == caption_id and caption.text == "a red square"
    assert col.info()["deleted"] == {"images": 0, "texts": 0}
    assert mmsearch.verify(out, deep=True) == []
    assert mmsearch.index(folder, out=out).report.skipped_unchanged == 3  # and it stays put


def test_a_restored_file_with_new_content_or_time_gets_a_new_id(tmp_path: Path, colour_model: str) -> None:
    folder = make_colour_folder(tmp_path / "imgs", ["red", "green"], captions=False)
    out = tmp_path / "c.mms"
    mmsearch.index(folder, out=out, model=colour_model)
    red = _ids_by_name(out)["red.png"]
    data = (folder / "red.png").read_bytes()
    (folder / "red.png").unlink()
    mmsearch.index(folder, out=out)
    (folder / "red.png").write_bytes(data)  # a copy: same bytes, a new modification time
    report = mmsearch.index(folder, out=out).report
    assert report.images_embedded == 1 and _ids_by_name(out)["red.png"] != red


def test_a_corpus_line_removed_then_put_back_keeps_its_id(tmp_path: Path, colour_model: str) -> None:
    corpus = tmp_path / "notes.jsonl"
    rows = [{"id": n, "text": f"a {c} note"} for n, c in enumerate(["red", "green", "blue"])]

    def write(keep: list[dict]) -> None:
        corpus.write_text("".join(json.dumps(r) + "\n" for r in keep))

    def ids() -> dict[str, int]:
        t = Store.open(out).scan("texts", ["id", "text"]).to_pydict()
        return dict(zip(t["text"], t["id"]))

    out = tmp_path / "n.mms"
    write(rows)
    mmsearch.index(corpus, out=out, model=colour_model)
    before = ids()
    write(rows[1:])
    assert mmsearch.index(corpus, out=out).report.deleted == 1
    write([{"id": 0, "text": "a cyan note"}, *rows[1:]])  # the key back with other text: a new row
    mmsearch.index(corpus, out=out)
    assert ids()["a cyan note"] not in before.values()
    write(rows)  # and the original text back: its old row again, the cyan one deleted
    report = mmsearch.index(corpus, out=out).report
    assert report.texts_embedded == 0 and ids() == before
    assert mmsearch.open(out).search("red", modality="text", k=1)[0].id == before["a red note"]
    assert mmsearch.verify(out, deep=True) == []


def test_store_undelete_rewrites_the_deletion_list(tmp_path: Path, colour_model: str) -> None:
    folder = make_colour_folder(tmp_path / "imgs", ["red", "green", "blue", "yellow"], captions=False)
    out = tmp_path / "c.mms"
    mmsearch.index(folder, out=out, model=colour_model)
    ids = sorted(_ids_by_name(out).values())
    with Store.open_for_writing(out) as store:
        store.mark_deleted("images", ids[:3])
        store.commit()
    with Store.open_for_writing(out) as store:
        assert store.undelete("images", [ids[1], 999]) == 1
        store.mark_deleted("images", [ids[3]])  # same length as before: the list must still be saved whole
        store.commit()
    assert sorted(Store.open(out).manifest.deleted["images"]) == [ids[0], ids[2], ids[3]]
    assert mmsearch.verify(out) == []
