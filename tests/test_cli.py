"""The CLI through click's runner: thin over the library, one-line errors, JSON for scripts."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner
from fakes import make_colour_folder

from mmsearch.cli.main import main


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()


@pytest.fixture
def indexed(tmp_path, runner, colour_model, monkeypatch):
    folder = make_colour_folder(tmp_path / "photos", ["red", "green", "blue"])
    (folder / "junk.png").write_bytes(b"nope")
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(main, ["index", "photos", "--model", colour_model])
    assert result.exit_code == 0, result.output
    return tmp_path / "photos.mms", result


def test_index_prints_summary_and_model(indexed) -> None:
    _, result = indexed
    assert "with model colour:v1" in result.output
    assert "3 images, 3 texts" in result.output and "rejected    1 new" in result.output


def test_query_with_no_flags_finds_the_collection(indexed, runner) -> None:
    result = runner.invoke(main, ["query", "a green square", "-k", "2"])
    assert result.exit_code == 0, result.output
    first = next(line for line in result.output.splitlines() if line.startswith("1 "))  # after any notice, the header
    assert "green.png" in first and "1.0000" in first


def test_query_json_all_directions(indexed, runner, tmp_path) -> None:
    coll, _ = indexed
    t2i = json.loads(runner.invoke(main, ["query", "blue", "-c", str(coll), "--json"]).output)
    assert t2i[0]["uri"].endswith("blue.png") and t2i[0]["modality"] == "image"
    img = str(next((tmp_path / "photos").rglob("red.png")))
    i2t = json.loads(runner.invoke(main, ["query", "--image", img, "--modality", "text", "--json"]).output)
    assert i2t[0]["text"] == "a red square"
    i2i = json.loads(runner.invoke(main, ["query", "--image", img, "--json", "-k", "1"]).output)
    assert i2i[0]["uri"] == img
    t2t = json.loads(runner.invoke(main, ["query", "a blue square", "--modality", "text", "--json"]).output)
    assert t2t[0]["text"] == "a blue square"
    by_id = json.loads(runner.invoke(main, ["query", "--id", str(i2i[0]["id"]), "--modality", "text", "--json"]).output)
    assert by_id[0]["text"] == "a red square"


def test_rerun_embeds_nothing(indexed, runner) -> None:
    result = runner.invoke(main, ["index", "photos", "--json"])
    summary = json.loads(result.output)
    assert summary["images_embedded"] == 0 and summary["skipped_unchanged"] == 3
    assert summary["skipped_quarantined"] == 1


def test_info_and_quarantine(indexed, runner) -> None:
    coll, _ = indexed
    info = runner.invoke(main, ["info", str(coll)])
    assert "colour:v1" in info.output and "3 images, 3 texts" in info.output
    assert json.loads(runner.invoke(main, ["info", "--json"]).output)["images"] == 3
    q = runner.invoke(main, ["quarantine"])
    assert "junk.png" in q.output and "not a recognised image" in q.output


@pytest.mark.parametrize("args, message", [
    (["query", "x", "-c", "/no/such/dir"], "no mmsearch collection"),
    (["query"], "exactly one"),
    (["query", "x", "--modality", "text", "--model", "openclip:mms-tiny/random"], "built with model 'colour:v1'"),
    (["index", "photos", "--model", "openclip:mms-tiny/random"], "built with model 'colour:v1'"),
])
def test_errors_are_one_line_and_nonzero(indexed, runner, args, message) -> None:
    result = runner.invoke(main, args)
    assert result.exit_code == 1
    assert message in result.output and "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) == 1


def test_no_collection_anywhere(tmp_path, runner, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(main, ["query", "x"])
    assert result.exit_code == 1 and "--collection" in result.output


def test_bad_model_spec(tmp_path, runner) -> None:
    make_colour_folder(tmp_path / "p", ["red"])
    result = runner.invoke(main, ["index", str(tmp_path / "p"), "--model", "clip-please"])
    assert result.exit_code == 1 and "unknown model spec" in result.output


def test_help_lists_commands(runner) -> None:
    out = runner.invoke(main, ["--help"]).output
    for cmd in ("index", "query", "info", "quarantine"):
        assert cmd in out


def test_a_url_collection_needs_the_ray_engine(tmp_path, runner) -> None:
    folder = make_colour_folder(tmp_path / "imgs")
    result = runner.invoke(main, ["index", str(folder), "--out", "s3://bucket/c.mms", "--model", "colour:v1"])
    assert result.exit_code != 0 and "--engine ray" in result.output


def test_ray_actors_have_their_own_flag(tmp_path, runner) -> None:
    """--actors is the Ray engine's; --workers (decode processes) still sets the actors with --engine ray for one
    release, with a one-line deprecation warning; giving both, or --actors without Ray, is a usage error."""
    folder = str(make_colour_folder(tmp_path / "imgs"))
    local = runner.invoke(main, ["index", folder, "--model", "colour:v1", "--actors", "2"])
    assert local.exit_code == 2 and "--actors is for --engine ray" in local.output
    both = runner.invoke(main, ["index", folder, "--engine", "ray", "--workers", "3", "--actors", "2"])
    assert both.exit_code == 2 and "give --actors N alone" in both.output
    # an unknown URL scheme fails before Ray starts, after the flags are read
    old = runner.invoke(main, ["index", folder, "--engine", "ray", "--workers", "3", "--out", "nosuch://b/c.mms"])
    assert old.exit_code != 0
    warnings = [line for line in old.output.splitlines() if "deprecated" in line]
    assert len(warnings) == 1 and "--actors 3" in warnings[0], old.output
    new = runner.invoke(main, ["index", folder, "--engine", "ray", "--actors", "3", "--out", "nosuch://b/c.mms"])
    assert new.exit_code != 0 and "deprecated" not in new.output
    assert "--num-gpus-per-actor" in runner.invoke(main, ["index", "--help"]).output
