from __future__ import annotations

import json

import pytest
from click.testing import CliRunner
from fakes import COLOURS, make_colour_folder
from PIL import Image

import mmsearch
from mmsearch.cli.main import main
from mmsearch.errors import ConfigError
from mmsearch.evaluation import _p_any


def test_perfect_model_scores_100(tmp_path, colour_model) -> None:
    make_colour_folder(tmp_path / "p", list(COLOURS))
    report = mmsearch.evaluate(tmp_path / "p", model=colour_model)
    assert report.images == 8 and report.texts == 8 and report.groups == 8
    assert report.text_to_image == {"R@1": 100.0, "R@5": 100.0, "R@10": 100.0}
    assert report.image_to_text == {"R@1": 100.0, "R@5": 100.0}
    assert report.chance["t2i@1"] == pytest.approx(12.5) and report.chance["t2i@10"] == 100.0


def test_groups_from_jsonl_and_a_wrong_label(tmp_path, colour_model) -> None:
    lines = []
    for i, name in enumerate(["red", "red", "blue", "green"]):
        Image.new("RGB", (8, 8), COLOURS[name]).save(tmp_path / f"{i}.png")
        label = "green" if i == 3 else name
        lines.append({"image": f"{i}.png", "text": f"something {label}", "group": label})
    lines[2]["text"] = "something yellow"  # the model puts this text on no blue image: a miss
    (tmp_path / "pairs.jsonl").write_text("\n".join(json.dumps(x) for x in lines))
    report = mmsearch.evaluate(tmp_path / "pairs.jsonl", model=colour_model)
    assert report.images == 4 and report.texts == 3 and report.groups == 3
    # texts: red (hit), yellow-for-blue (miss at 1), green (hit)
    assert report.text_to_image["R@1"] == pytest.approx(200 / 3, abs=0.01)


def test_chance_formula() -> None:
    assert _p_any(10, 1, 1) == pytest.approx(0.1)
    assert _p_any(10, 2, 1) == pytest.approx(0.2)
    assert _p_any(10, 1, 5) == pytest.approx(0.5)
    assert _p_any(4, 2, 2) == pytest.approx(1 - 1 / 6)
    assert _p_any(3, 3, 1) == 1.0


def test_bad_inputs(tmp_path) -> None:
    (tmp_path / "x.csv").write_text("a")
    with pytest.raises(ConfigError):
        mmsearch.evaluate(tmp_path / "x.csv")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="no \\(image, text\\) pairs"):
        mmsearch.evaluate(tmp_path / "empty")
    (tmp_path / "bad.jsonl").write_text('{"image": "a.png"}\n')
    with pytest.raises(ConfigError, match="bad.jsonl:1"):
        mmsearch.evaluate(tmp_path / "bad.jsonl")


def test_cli_eval_table_and_json(tmp_path, colour_model) -> None:
    make_colour_folder(tmp_path / "p", ["red", "green", "blue"])
    runner = CliRunner()
    table = runner.invoke(main, ["eval", str(tmp_path / "p"), "--model", colour_model])
    assert table.exit_code == 0 and "text->image R@1" in table.output and "100.0" in table.output
    data = json.loads(runner.invoke(main, ["eval", str(tmp_path / "p"), "-m", colour_model, "--json"]).output)
    assert data["image_to_text"]["R@1"] == 100.0 and data["chance"]["i2t@1"] == pytest.approx(33.33, abs=0.01)


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_pairs_from_csv_and_parquet_tables(tmp_path, colour_model, fmt: str) -> None:
    import pyarrow as pa
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    names = ["red", "green", "blue"]
    for name in names:
        Image.new("RGB", (8, 8), COLOURS[name]).save(tmp_path / f"{name}.png")
    table = pa.table({"path": [f"{n}.png" for n in names], "caption": [f"a {n} thing" for n in names],
                      "group": names})
    target = tmp_path / f"pairs.{fmt}"
    (pacsv.write_csv if fmt == "csv" else pq.write_table)(table, target)
    report = mmsearch.evaluate(target, model=colour_model)
    assert report.images == 3 and report.groups == 3 and report.text_to_image["R@1"] == 100.0
    bad = tmp_path / f"bad.{fmt}"
    (pacsv.write_csv if fmt == "csv" else pq.write_table)(pa.table({"x": [1]}), bad)
    with pytest.raises(ConfigError, match="no image path column"):
        mmsearch.evaluate(bad, model=colour_model)


def test_eval_reads_a_pairs_table_as_ingest_reads_a_caption_manifest(tmp_path, colour_model) -> None:
    """One table reader (issue 17): the columns ingest guesses for a caption manifest (here image_path and content,
    which eval's own reader did not know) are the ones eval and train read; named columns work the same."""
    from mmsearch.evaluation import load_pairs
    from mmsearch.ingest.corpora import read_caption_manifest

    names = ["red", "green", "blue"]
    (tmp_path / "imgs").mkdir()
    for name in names:
        Image.new("RGB", (8, 8), COLOURS[name]).save(tmp_path / "imgs" / f"{name}.png")
    rows = [{"image_path": f"imgs/{n}.png", "content": f"a {n} thing", "other": 1} for n in names]
    guessed = tmp_path / "pairs.jsonl"
    guessed.write_text("\n".join(json.dumps(r) for r in rows))
    assert {p.image: p.text for p in load_pairs(guessed)} == read_caption_manifest(guessed)
    named = tmp_path / "named.jsonl"
    named.write_text("\n".join(json.dumps({"pic": r["image_path"], "words": r["content"]}) for r in rows))
    with pytest.raises(ConfigError, match="named.jsonl:1: no image path column"):
        load_pairs(named)
    assert load_pairs(named, text_column="words", path_column="pic") == load_pairs(guessed)
    out = CliRunner().invoke(main, ["eval", str(named), "-m", colour_model, "--text-column", "words",
                                    "--path-column", "pic", "--json"])
    assert out.exit_code == 0, out.output
    assert json.loads(out.output)["text_to_image"]["R@1"] == 100.0
