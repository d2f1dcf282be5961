"""The CLI as a new user meets it (issue 18): empty inputs, where a single file's collection goes, globs on
names, weak matches, CLI words in errors, unquoted queries, serving collections that share a name, ask with a
dead chat endpoint, the summary's formats, ignored CSV columns, and getting OpenCLIP weights onto a machine."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest
from click.testing import CliRunner
from fakes import make_colour_folder

from mmsearch.cli.main import main
from mmsearch.config import last_collection


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()


@pytest.fixture
def photos(tmp_path: Path, runner: CliRunner, colour_model: str, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = make_colour_folder(tmp_path / "photos", ["red", "green", "blue", "yellow"])
    (folder / "flag_red.png").write_bytes((folder / "red.png").read_bytes())
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(main, ["index", "photos", "--model", colour_model])
    assert result.exit_code == 0, result.output
    return tmp_path / "photos.mms"


def _one_line_error(result) -> str:  # noqa: ANN001
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output and len(result.output.strip().splitlines()) == 1, result.output
    return result.output


# -- empty inputs ---------------------------------------------------------------------------------------------
def test_a_folder_with_no_images_fails_writes_nothing_and_is_not_the_default(tmp_path, runner, colour_model,
                                                                               monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    empty = tmp_path / "notes"
    empty.mkdir()
    (empty / "todo.jsonl").write_text('{"text": "buy milk"}\n')
    out = _one_line_error(runner.invoke(main, ["index", "notes", "--model", colour_model]))
    assert "no images in notes" in out and ".png" in out and "mmsearch index notes/todo.jsonl" in out
    assert not (tmp_path / "notes.mms").exists() and last_collection() is None
    query = runner.invoke(main, ["query", "red"])
    assert query.exit_code == 1 and "--collection" in query.output  # at once, not after a model load


def test_an_empty_corpus_and_an_all_rejected_folder_write_nothing(tmp_path, runner, colour_model, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "empty.txt").write_text("\n\n")
    assert "no texts in empty.txt" in _one_line_error(runner.invoke(main, ["index", "empty.txt", "-m", colour_model]))
    junk = tmp_path / "junk"
    junk.mkdir()
    (junk / "a.png").write_bytes(b"not a png")
    result = runner.invoke(main, ["index", "junk", "-m", colour_model, "--workers", "0"])
    lines = result.output.splitlines()  # the banner, then one error line
    assert result.exit_code == 1 and len(lines) == 2 and lines[1].startswith("Error: ")
    out = lines[1]
    assert "every input was rejected" in out and "not-an-image" in out
    assert not (tmp_path / "junk.mms").exists() and not (tmp_path / "empty.mms").exists()
    assert last_collection() is None


def test_an_emptied_folder_still_updates_its_collection(photos, runner, tmp_path) -> None:
    for p in (tmp_path / "photos").rglob("*.png"):
        p.unlink()
    result = runner.invoke(main, ["index", "photos", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["deleted"] == 5


# -- a single file's collection -------------------------------------------------------------------------------
def test_a_single_image_is_indexed_into_the_current_directory(tmp_path, runner, colour_model, monkeypatch) -> None:
    folder = make_colour_folder(tmp_path / "pictures", ["red"])
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    result = runner.invoke(main, ["index", str(folder / "red.png"), "--model", colour_model])
    assert result.exit_code == 0, result.output
    assert (work / "red.mms" / "manifest.json").is_file()
    assert not list(folder.glob("*.mms")), "nothing is written into the user's photo folder"
    hits = json.loads(runner.invoke(main, ["query", "red", "--json"]).output)  # found in the cwd
    assert Path(hits[0]["uri"]).name == "red.png"


# -- --path-glob ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("glob, names", [
    ("flag_*", ["flag_red.png"]),  # no slash: the file name
    ("*.png", ["blue.png", "flag_red.png", "green.png", "red.png", "yellow.png"]),
    ("nested/*", ["green.png", "yellow.png"]),  # a slash: relative to the collection's root
    ("*/nested/*", ["green.png", "yellow.png"]),  # the old advice still works
    ("photos/flag_*", ["flag_red.png"]),
    ("red*", ["red.png"]),
    ("ested/*", []),  # a folder boundary, not any substring
])
def test_path_glob_matches_names_and_relative_paths(photos, runner, glob, names) -> None:
    result = runner.invoke(main, ["query", "red", "-k", "10", "--path-glob", glob, "--json"])
    assert result.exit_code == 0, result.output
    assert sorted(Path(h["uri"]).name for h in json.loads(result.output)) == names


def test_path_glob_absolute(photos, runner, tmp_path) -> None:
    glob = f"{tmp_path}/photos/*e*.png"  # an absolute glob matches the whole path, * crossing folders
    hits = json.loads(runner.invoke(main, ["query", "red", "-k", "10", "--path-glob", glob, "--json"]).output)
    assert sorted(Path(h["uri"]).name for h in hits) == ["blue.png", "flag_red.png", "green.png", "red.png",
                                                          "yellow.png"]


def test_path_glob_in_the_library_matches_the_cli(photos) -> None:
    import mmsearch

    col = mmsearch.open(photos)
    hits = col.search("red", k=10, filter=mmsearch.Filter(path_glob="flag_*"))
    assert [Path(h.uri).name for h in hits] == ["flag_red.png"]
    assert [Path(h.uri).name for h in col.search("red", k=10, filter={"path_glob": "nested/g*"})] == ["green.png"]


# -- weak matches ---------------------------------------------------------------------------------------------
def test_the_table_draws_a_line_above_weak_matches(photos, runner) -> None:
    lines = runner.invoke(main, ["query", "a red square", "-k", "5"]).output.splitlines()
    assert lines[0].startswith("#") and "red.png" in lines[1] and "red.png" in lines[2]
    assert lines[3].startswith("-- weaker matches below")
    assert not any("weaker" in line for line in lines[4:])


def test_the_table_says_when_nothing_is_a_good_match(photos, runner) -> None:
    out = runner.invoke(main, ["query", "an abstract idea", "-k", "3"]).output
    assert out.splitlines()[0].startswith("no good match in this collection") and "weaker" not in out
    image = next((photos.parent / "photos").glob("red.png"))
    by_image = runner.invoke(main, ["query", "--image", str(image), "-k", "3"]).output.splitlines()  # marked too
    assert "red.png" in by_image[1] and "red.png" in by_image[2] and by_image[3].startswith("-- weaker matches below")


# -- CLI words, unquoted queries ------------------------------------------------------------------------------
@pytest.mark.parametrize("args, words", [
    (["query"], "TEXT, --image FILE or --id N"),
    (["query", "red", "--id", "1"], "not TEXT and --id"),
])
def test_query_errors_speak_cli(photos, runner, args, words) -> None:
    out = _one_line_error(runner.invoke(main, args))
    assert words in out and "text=" not in out and "vector=" not in out


def test_an_unquoted_query_is_joined(photos, runner) -> None:
    joined = runner.invoke(main, ["query", "a", "red", "square", "-k", "1", "--json"])
    quoted = runner.invoke(main, ["query", "a red square", "-k", "1", "--json"])
    assert joined.exit_code == 0, joined.output
    assert json.loads(joined.output) == json.loads(quoted.output)
    out = _one_line_error(runner.invoke(main, ["query", "red", "car", str(photos)]))
    assert "is a collection" in out and "--collection" in out


# -- serving collections that share a name --------------------------------------------------------------------
def _fake_run(monkeypatch):  # noqa: ANN001, ANN202
    import mmsearch.serve

    calls = []
    monkeypatch.setattr(mmsearch.serve, "run", lambda collections, **kw: calls.append(collections))
    return calls


def test_serve_two_collections_with_the_same_folder_name(tmp_path, runner, colour_model, monkeypatch) -> None:
    from mmsearch.serve import create_app

    for side in ("a", "b"):
        folder = make_colour_folder(tmp_path / side / "photos", ["red"] if side == "a" else ["blue"])
        assert runner.invoke(main, ["index", str(folder), "-m", colour_model]).exit_code == 0
    a, b = str(tmp_path / "a" / "photos.mms"), str(tmp_path / "b" / "photos.mms")
    calls = _fake_run(monkeypatch)
    result = runner.invoke(main, ["serve", a, b])
    assert result.exit_code == 0, result.output
    assert f"{a} as a-photos" in result.output and f"{b} as b-photos" in result.output
    app = create_app(calls[0])
    assert sorted(app.state.mmsearch.catalog) == ["a-photos", "b-photos"]
    result = runner.invoke(main, ["serve", f"mine={a}", b])  # NAME=DIR
    assert result.exit_code == 0, result.output
    assert calls[1] == [("mine", a), (None, b)]
    assert sorted(create_app(calls[1]).state.mmsearch.catalog) == ["mine", "photos"]
    assert "both named 'x'" in _one_line_error(runner.invoke(main, ["serve", f"x={a}", f"x={b}"]))
    assert "given twice" in _one_line_error(runner.invoke(main, ["serve", a, a]))


# -- ask with a dead chat endpoint ----------------------------------------------------------------------------
def _dead_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # closed again: nothing listens there


def test_ask_prints_the_evidence_when_the_chat_endpoint_is_down(photos, runner) -> None:
    url = f"http://127.0.0.1:{_dead_port()}/v1"
    result = runner.invoke(main, ["ask", "is", "there", "a", "red", "square?", "--chat-url", url, "--chat-model", "m"])
    assert result.exit_code == 1  # the answer is missing, but not the evidence
    assert "Question: is there a red square?" in result.output
    assert "[I1] image" in result.output and "red.png" in result.output
    errors = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and url in errors[0] and "evidence above" in errors[0]
    assert result.output.splitlines()[-1] == errors[0]
    json_run = runner.invoke(main, ["ask", "red?", "--chat-url", url, "--chat-model", "m", "--json"])
    data = json.loads(json_run.output.rsplit("\nError:", 1)[0])  # stderr's error line follows (mixed here)
    assert data["answer"] is None and url in data["chat_error"] and data["images"]


# -- leftovers ------------------------------------------------------------------------------------------------
def test_the_summary_says_exact_for_a_flat_index_and_formats_numbers_one_way(photos, runner) -> None:
    out = runner.invoke(main, ["info", str(photos)]).output
    line = next(line for line in out.splitlines() if line.startswith("index       images"))
    assert "exact search" in line and "recall@" not in line and "held out" not in line
    assert line.endswith(" s") and " ms/query" in line
    (photos.parent / "photos" / "cyan.png").write_bytes((photos.parent / "photos" / "red.png").read_bytes())
    summary = runner.invoke(main, ["index", "photos"]).output
    embedded = next(line for line in summary.splitlines() if line.startswith("embedded"))
    assert embedded.startswith("embedded    1 images, 0 texts in ") and " s (" in embedded


def test_progress_bars_do_not_stay_on_screen() -> None:
    from mmsearch.cli.render import Progress

    with Progress(enabled=True) as progress:
        progress.update("images", 1, 2)
        assert progress._bars["images"].leave is False


def test_csv_columns_that_are_not_stored_are_named(tmp_path, runner, colour_model, monkeypatch, caplog) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "cars.csv").write_text("id,text,colour,year\n1,a red car,red,2020\n2,a blue car,blue,2021\n")
    with caplog.at_level("WARNING"):
        result = runner.invoke(main, ["index", "cars.csv", "-m", colour_model])
    assert result.exit_code == 0, result.output
    warned = [r.getMessage() for r in caplog.records if "ignoring" in r.getMessage()]
    assert len(warned) == 1 and "'colour', 'year'" in warned[0] and "'text', 'id'" in warned[0]


# -- models ---------------------------------------------------------------------------------------------------
def _fake_hub_cache(root: Path) -> Path:
    repo = root / "models--laion--CLIP-ViT-B-32-laion2B-s34B-b79K"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("0123abcd")
    (repo / "snapshots" / "0123abcd").mkdir(parents=True)
    weights = repo / "snapshots" / "0123abcd" / "open_clip_model.safetensors"
    weights.write_bytes(b"\0" * 2_000_000)
    return weights


def test_models_lists_the_builtin_model_and_says_how_to_get_openclip(runner, tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    out = runner.invoke(main, ["models"]).output
    assert "builtin:v4" in out and "the default" in out
    assert all(f"builtin:v{n}  built-in (earlier version)" in out for n in (1, 2, 3))  # each still loadable
    assert "No OpenCLIP weights" in out and "mmsearch models fetch openclip:" in out and "HF_HUB_CACHE" in out


def test_models_lists_cached_openclip_weights_and_given_files(runner, tmp_path, monkeypatch) -> None:
    weights = _fake_hub_cache(tmp_path / "hub")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    local = tmp_path / "mine.safetensors"
    local.write_bytes(b"\0" * 10)
    result = runner.invoke(main, ["models", "--weights", str(local), "--weights", str(tmp_path / "nope.pt"), "--json"])
    assert result.exit_code == 0, result.output
    rows = {r["spec"]: r for r in json.loads(result.output)}
    assert str(weights) in rows["openclip:ViT-B-32/laion2b_s34b_b79k"]["source"]
    assert rows[f"openclip:ARCH@{local}"]["ok"] is True
    assert rows[f"openclip:ARCH@{tmp_path / 'nope.pt'}"]["ok"] is False


def test_models_fetch_fails_fast_in_one_line_offline(runner, tmp_path, monkeypatch) -> None:
    import time

    for offline in ("1", ""):
        monkeypatch.setenv("HF_HUB_OFFLINE", offline)
        monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{_dead_port()}")  # "" above: the hub is unreachable
        started = time.monotonic()
        out = _one_line_error(runner.invoke(main, ["models", "fetch", "openclip:ViT-B-32/laion2b_s34b_b79k",
                                                   "--to", str(tmp_path / "w")]))
        assert time.monotonic() - started < 5
        assert "cannot fetch openclip:ViT-B-32/laion2b_s34b_b79k" in out and "network access" in out
    assert not (tmp_path / "w").exists()
    assert "--to DIR" in _one_line_error(runner.invoke(main, ["models", "fetch", "openclip:ViT-B-32/laion2b_s34b_b79k"]))
    assert "only OpenCLIP" in _one_line_error(runner.invoke(main, ["models", "fetch", "builtin", "--to", "x"]))


def test_models_check_loads_a_model(runner, colour_model) -> None:
    out = runner.invoke(main, ["models", "check", colour_model]).output
    assert "colour:v1: loads, embeds a text into 8 dimensions" in out


def test_library_single_file_default_is_the_cwd(tmp_path, monkeypatch) -> None:
    from mmsearch.config import default_collection_for

    folder = make_colour_folder(tmp_path / "p", ["red"])
    monkeypatch.chdir(folder)
    assert default_collection_for(folder) == tmp_path / "p.mms"  # a folder's: beside it, wherever we are
    assert default_collection_for(folder / "red.png") == folder / "red.mms"  # a file's: here
    monkeypatch.chdir(tmp_path)
    assert default_collection_for(folder / "red.png") == tmp_path / "red.mms"


# -- which collection ----------------------------------------------------------------------------------------
def test_collection_commands_take_the_collection_as_an_argument_or_an_option(photos, runner, tmp_path,
                                                                            monkeypatch) -> None:
    monkeypatch.chdir(tmp_path.parent)  # not next to it, and not the default: --collection says which
    monkeypatch.setenv("MMSEARCH_COLLECTION", str(tmp_path / "elsewhere.mms"))
    for command in (["info"], ["verify"], ["versions"], ["quarantine"], ["vacuum"]):
        by_option = runner.invoke(main, [*command, "-c", str(photos)])
        by_argument = runner.invoke(main, [*command, str(photos)])
        assert by_option.exit_code == by_argument.exit_code == 0, (command, by_option.output)
        assert by_option.output == by_argument.output or command == ["vacuum"]
    out = _one_line_error(runner.invoke(main, ["info", str(photos), "--collection", str(tmp_path / "other.mms")]))
    assert "two collections given" in out
    assert "photos.mms" in runner.invoke(main, ["info", "--collection", str(photos)]).output


def test_no_guess_when_the_last_collection_is_gone_or_several_are_here(photos, runner, tmp_path, colour_model,
                                                                      monkeypatch) -> None:
    import shutil

    monkeypatch.delenv("MMSEARCH_COLLECTION", raising=False)
    make_colour_folder(tmp_path / "more", ["red", "blue"])
    assert runner.invoke(main, ["index", "more", "--model", colour_model]).exit_code == 0  # the last indexed
    assert runner.invoke(main, ["info"]).exit_code == 0  # two here, one of them the last indexed: that one
    elsewhere = tmp_path / "elsewhere"
    make_colour_folder(elsewhere / "x", ["green"])
    monkeypatch.chdir(elsewhere)
    assert runner.invoke(main, ["index", "x", "--model", colour_model]).exit_code == 0
    monkeypatch.chdir(tmp_path)
    out = _one_line_error(runner.invoke(main, ["query", "red"]))
    assert "2 here (more.mms, photos.mms)" in out and "--collection" in out
    shutil.rmtree(elsewhere / "x.mms")
    monkeypatch.chdir(elsewhere)
    out = _one_line_error(runner.invoke(main, ["info"]))
    assert "indexed last" in out and "is gone" in out and "x.mms" in out
