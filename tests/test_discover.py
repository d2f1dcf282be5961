from __future__ import annotations

import json

import pytest

from mmsearch.errors import ConfigError
from mmsearch.ingest import classify, iter_image_files, iter_text_records


def test_walks_recursively_with_all_extensions_and_captions(tmp_path) -> None:
    for name in ["a.jpg", "b.JPEG", "c.png", "d.webp", "e.gif", "f.bmp", "g.tiff", "h.tif", "notes.md", "x.txt"]:
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / "sub" / "deeper").mkdir(parents=True)
    (tmp_path / "sub" / "deeper" / "i.jpg").write_bytes(b"x")
    (tmp_path / "a.txt").write_text("  a caption \n")
    (tmp_path / ".hidden").mkdir()
    (tmp_path / ".hidden" / "j.jpg").write_bytes(b"x")
    (tmp_path / "old.mms").mkdir()
    (tmp_path / "old.mms" / "k.jpg").write_bytes(b"x")
    found = {f.uri.split("/")[-1]: f for f in iter_image_files(tmp_path)}
    assert sorted(found) == ["a.jpg", "b.JPEG", "c.png", "d.webp", "e.gif", "f.bmp", "g.tiff", "h.tif", "i.jpg"]
    assert found["a.jpg"].caption == "a caption" and found["c.png"].caption is None
    assert found["a.jpg"].bytes == 1


def test_classify(tmp_path) -> None:
    (tmp_path / "c.txt").write_text("x")
    (tmp_path / "d.md").write_text("x")
    assert classify(tmp_path) == "images"
    assert classify(tmp_path / "c.txt") == "texts"
    with pytest.raises(ConfigError, match="don't know how to index"):
        classify(tmp_path / "d.md")
    with pytest.raises(ConfigError, match="does not exist"):
        classify(tmp_path / "missing.csv")


def test_txt_corpus_one_text_per_line_deduplicated(tmp_path) -> None:
    p = tmp_path / "c.txt"
    p.write_text("first line\n\n  second line \nfirst line\n")
    assert [r.text for r in iter_text_records(p)] == ["first line", "second line"]


def test_jsonl_corpus_uses_ids_when_present(tmp_path) -> None:
    p = tmp_path / "c.jsonl"
    p.write_text(json.dumps({"id": 7, "text": "seven"}) + "\n" + json.dumps({"caption": "cap"}) + "\n")
    records = list(iter_text_records(p))
    assert [(r.key, r.text) for r in records][0] == ("id:7", "seven")
    assert records[1].text == "cap" and records[1].key.startswith("sha256:")


def test_jsonl_without_text_field_names_the_line(tmp_path) -> None:
    p = tmp_path / "c.jsonl"
    p.write_text('{"text": "ok"}\n{"other": 1}\n')
    with pytest.raises(ConfigError, match="c.jsonl:2"):
        list(iter_text_records(p))
