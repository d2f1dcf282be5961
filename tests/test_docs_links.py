"""Relative links between README.md, docs/*.md and benchmarks/README.md point to files that exist, and their
#anchors to headings that exist (GitHub's heading ids)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), ROOT / "benchmarks" / "README.md"]

#: pages another change writes; a link to one is checked once the page exists
PENDING = {"docs/sharing.md"}  # the versioned-collections work writes it

FENCE = re.compile(r"^\s*(```|~~~)")
INLINE_CODE = re.compile(r"`[^`\n]*`")
MD_LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
HTML_LINK = re.compile(r"""<(?:a|img)\b[^>]*?\b(?:href|src)\s*=\s*["']([^"']+)["']""", re.IGNORECASE)
HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")


def _prose(text: str) -> list[tuple[int, str]]:
    """(line number, line) of the lines outside fenced code blocks."""
    out, fenced = [], False
    for number, line in enumerate(text.splitlines(), 1):
        if FENCE.match(line):
            fenced = not fenced
            continue
        if not fenced:
            out.append((number, line))
    return out


def links(page: Path) -> list[tuple[int, str]]:
    """(line number, target) of every link in the page's prose (not in code)."""
    found = []
    for number, line in _prose(page.read_text(encoding="utf-8")):
        line = INLINE_CODE.sub("", line)
        found += [(number, m.group(1)) for m in MD_LINK.finditer(line)]
        found += [(number, m.group(1)) for m in HTML_LINK.finditer(line)]
    return found


def slug(heading: str) -> str:
    """The id GitHub gives a heading: markup dropped, lower case, punctuation removed, spaces to hyphens."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link keeps its text
    text = re.sub(r"<[^>]+>", "", text).replace("`", "")
    text = re.sub(r"(\*\*|__|\*)", "", text)
    return re.sub(r"[^\w\- ]", "", text.strip().lower()).replace(" ", "-")


def anchors(page: Path) -> set[str]:
    """The heading ids of a page, repeated headings numbered as GitHub numbers them (-1, -2...)."""
    seen: dict[str, int] = {}
    ids = set()
    for _, line in _prose(page.read_text(encoding="utf-8")):
        m = HEADING.match(line)
        if not m:
            continue
        base = slug(m.group(2))
        count = seen.get(base, 0)
        ids.add(base if count == 0 else f"{base}-{count}")
        seen[base] = count + 1
    return ids


def _is_external(target: str) -> bool:
    return bool(re.match(r"^[a-z][a-z0-9+.-]*:", target, re.IGNORECASE)) or target.startswith("//")


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(page: Path) -> None:
    assert page.is_file(), f"{page.relative_to(ROOT)} is missing"
    broken = []
    for number, target in links(page):
        if _is_external(target):
            continue
        path_part, _, anchor = target.partition("#")
        dest = (page.parent / path_part).resolve() if path_part else page
        where = f"{page.relative_to(ROOT)}:{number}: {target}"
        try:
            rel = dest.relative_to(ROOT).as_posix()
        except ValueError:
            broken.append(f"{where} (points outside the repository)")
            continue
        if not dest.exists():
            if rel not in PENDING:
                broken.append(f"{where} ({rel} does not exist)")
            continue
        if anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            broken.append(f"{where} (no heading #{anchor} in {rel})")
    assert not broken, "broken links:\n" + "\n".join(broken)


def test_the_checker_sees_links_and_headings(tmp_path: Path) -> None:
    page = tmp_path / "page.md"
    page.write_text("# Models (`--model`)\n\n## On a GPU (`benchmarks/gpu.py`)\n## On a GPU (`benchmarks/gpu.py`)\n"
                    "See [a](other.md#x), ![b](img.png) and <img src=\"phone.png\" width=3>, not `[c](code.md)`.\n"
                    "```\n[d](fenced.md)\n```\n")
    assert [t for _, t in links(page)] == ["other.md#x", "img.png", "phone.png"]
    assert anchors(page) == {"models---model", "on-a-gpu-benchmarksgpupy", "on-a-gpu-benchmarksgpupy-1"}


def test_readme_keeps_the_ci_test_command() -> None:
    """CI's .ci/run calls `make test`: the README names it as the test command, beside `make demo`."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert "make demo" in readme and "make test" in readme
    assert len(readme.splitlines()) <= 300, "the README is the five-minute read; depth goes to docs/"
