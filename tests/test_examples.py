"""The documentation's code runs as written (on a small collection built with the real built-in model).

- ``examples/*.py`` are kept verbatim in README.md or docs/*.md and run as scripts.
- Every other ```python block of README.md and docs/*.md runs in a folder holding ``photos/`` (a few sample
  images with caption sidecars), ``photos.mms`` (their collection) and ``notes.txt`` (a small text corpus),
  the blocks of one page in order. A block right after ``<!-- compile-only: why -->`` is only compiled.
- Every ``mmsearch`` command line in the other code blocks names a real command and real flags.
"""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

import mmsearch

ROOT = Path(__file__).resolve().parents[1]
NAMES = ["cat_chelsea", "red_sports_car", "red_bus", "blue_car", "lighthouse", "dahlia_flower", "coffee_cup"]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
EXAMPLES = sorted((ROOT / "examples").glob("*.py"))
NOTES = ["a red car parked in the street", "a lighthouse on a rocky coast", "my cat sleeping on the sofa"]

FENCE = re.compile(r"^(\s*)(`{3,}|~{3,})\s*([^\s`]*)")
COMPILE_ONLY = re.compile(r"^\s*<!--\s*compile-only:\s*(.+?)\s*-->\s*$")


@dataclass(frozen=True)
class Block:
    """A fenced code block of a page."""

    page: Path
    line: int  # of the opening fence
    lang: str
    code: str
    compile_only: str | None  # why it is not run

    @property
    def name(self) -> str:
        return f"{self.page.relative_to(ROOT)}:{self.line}"

    @property
    def example(self) -> Path | None:
        """The examples/ script this block is, verbatim."""
        return next((e for e in EXAMPLES if e.read_text().strip() == self.code.strip()), None)


def code_blocks(page: Path) -> list[Block]:
    """Every fenced block of a page, indented ones (in list items) included, dedented."""
    lines = page.read_text(encoding="utf-8").splitlines()
    blocks, n = [], 0
    while n < len(lines):
        m = FENCE.match(lines[n])
        if not m:
            n += 1
            continue
        indent, fence, lang = m.group(1), m.group(2), m.group(3).lower()
        body, end = [], n + 1
        while end < len(lines) and not lines[end].strip().startswith(fence[0] * len(fence)):
            body.append(lines[end][len(indent):] if lines[end].startswith(indent) else lines[end].lstrip())
            end += 1
        previous = next((lines[p] for p in range(n - 1, -1, -1) if lines[p].strip()), "")
        why = COMPILE_ONLY.match(previous)
        blocks.append(Block(page, n + 1, lang, "\n".join(body) + "\n", why.group(1) if why else None))
        n = end + 1
    return blocks


BLOCKS = [b for page in PAGES for b in code_blocks(page)]
PYTHON = [b for b in BLOCKS if b.lang in ("python", "py", "python3")]
RUNNABLE = [b for b in PYTHON if b.compile_only is None and b.example is None]

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def _build(folder: Path) -> Path:
    """``folder/photos`` (sample images + captions), ``folder/notes.txt`` and ``folder/photos.mms``."""
    photos = folder / "photos"
    photos.mkdir()
    for name in NAMES:
        for suffix in (".jpg", ".txt"):
            shutil.copy(ROOT / "data" / "sample" / f"{name}{suffix}", photos)
    (folder / "notes.txt").write_text("\n".join(NOTES) + "\n")
    with pytest.MonkeyPatch.context() as mp:  # module-scoped: the per-test state dir is not set up yet
        mp.setenv("MMSEARCH_HOME", str(folder / "state"))
        return mmsearch.index(photos, out=folder / "photos.mms").path


@pytest.fixture(scope="module")
def collection(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The collection the example scripts run against."""
    return _build(tmp_path_factory.mktemp("examples"))


_workspaces: dict[Path, Path] = {}


@pytest.fixture
def workspace(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> Path:
    """One folder per page, built on its first block and shared by its blocks in order: a later block sees
    what an earlier one did, and no page sees another's."""
    page = request.node.callspec.params["block"].page
    if page not in _workspaces:
        folder = tmp_path_factory.mktemp(page.stem)
        _build(folder)
        _workspaces[page] = folder
    return _workspaces[page]


# -- examples/*.py ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["recommender.py", "assistant.py"])
def test_example_is_in_the_readme_verbatim(name: str) -> None:
    """Each example script is in the README or a docs page, verbatim (it was in the README; now in docs/)."""
    script = (ROOT / "examples" / name).read_text().strip()
    assert any(script in page.read_text() for page in PAGES), f"examples/{name} is in no page verbatim"


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda p: p.name)
def test_every_example_is_in_a_page_verbatim(example: Path) -> None:
    assert any(b.example == example for b in PYTHON), f"examples/{example.name} is in no ```python block verbatim"


def _run(*args: str) -> str:
    result = subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    return result.stdout


@pytest.mark.slow
def test_recommender_example(collection: Path) -> None:
    out = _run(str(ROOT / "examples" / "recommender.py"), str(collection))
    recommended = [line.split()[-1] for line in out.splitlines() if line.startswith("recommend")]
    assert len(recommended) == 3 and not any("cat_chelsea" in r for r in recommended[:1])
    assert "batch     'a bus' -> ['red_bus.jpg'" in out
    assert "embeddings (7,) (7, 384) float32" in out and "by id (2, 384)" in out


@pytest.mark.slow
def test_assistant_example(collection: Path) -> None:
    out = _run(str(ROOT / "examples" / "assistant.py"), str(collection))
    assert "found: True" in out and "[I1] image" in out and "lighthouse.jpg" in out.split("[I2]")[0]


# -- ```python blocks --------------------------------------------------------------------------------------
def test_the_pages_have_python_blocks_to_run() -> None:
    assert len(RUNNABLE) >= 8 and any(b.page.name == "README.md" for b in RUNNABLE)
    assert len(PYTHON) - len(RUNNABLE) - sum(b.example is not None for b in PYTHON) <= 3, "keep compile-only rare"


@pytest.mark.parametrize("block", PYTHON, ids=lambda b: b.name)
def test_python_block_compiles(block: Block) -> None:
    compile(block.code, block.name, "exec")


@pytest.mark.slow
@pytest.mark.parametrize("block", RUNNABLE, ids=lambda b: b.name)
def test_python_block_runs(block: Block, workspace: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(workspace)
    exec(compile(block.code, block.name, "exec"), {"__name__": "__main__"})  # noqa: S102


# -- mmsearch command lines --------------------------------------------------------------------------------
def _command_lines() -> list[tuple[str, str]]:
    out = []
    for block in BLOCKS:
        if block.lang in ("python", "py", "python3", "yaml", "json"):
            continue
        for line in block.code.splitlines():
            text = line.split("#", 1)[0].strip().removeprefix("$ ").strip()
            if text.startswith("mmsearch "):
                out.append((f"{block.name}: {text}", text))
    return out


COMMAND_LINES = _command_lines()


@pytest.mark.parametrize("where,line", COMMAND_LINES, ids=[where for where, _ in COMMAND_LINES])
def test_command_lines_name_real_commands_and_flags(where: str, line: str) -> None:
    import click

    from mmsearch.cli.main import main

    tokens = [t for raw in shlex.split(line.replace("|", " ")) for t in [raw.strip("[]")] if t and t != "..."]
    words = [t for t in tokens[1:] if not t.startswith("-")]
    command = main.get_command(click.Context(main), words[0]) if words else None
    assert command is not None, f"{where}: no such command"
    known = {opt for param in command.params for opt in [*param.opts, *param.secondary_opts]} | {"--help", "-h"}
    unknown = [t.split("=", 1)[0] for t in tokens[1:] if t.startswith("-") and t.split("=", 1)[0] not in known]
    assert not unknown, f"{where}: {command.name} has no option {unknown}"


def test_yaml_blocks_parse() -> None:
    yaml = pytest.importorskip("yaml")
    for block in BLOCKS:
        if block.lang in ("yaml", "yml"):
            assert isinstance(yaml.safe_load(block.code), dict), block.name
