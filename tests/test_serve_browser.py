"""The web page in headless Chromium against a real server: text search, image upload, similar items.

Needs Debian's ``chromium`` (``apt-get install -y chromium``) and the ``playwright`` Python package (its
own browser download is not used). The screenshot lands in ``test-artifacts/serve-page.png``.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

pytest.importorskip("fastapi")
playwright_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright (no browser download needed)")

from fakes import COLOURS, make_colour_folder  # noqa: E402
from PIL import Image  # noqa: E402
from serve_live import live_server  # noqa: E402

import mmsearch  # noqa: E402
from mmsearch.serve import create_app  # noqa: E402

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--no-first-run"]

pytestmark = pytest.mark.skipif(not Path(CHROMIUM).is_file(), reason="no chromium: apt-get install -y chromium")


@pytest.fixture(scope="module")
def base_url(tmp_path_factory: pytest.TempPathFactory) -> str:
    root = tmp_path_factory.mktemp("browser")
    folder = make_colour_folder(root / "imgs", ["red", "green", "blue", "yellow", "cyan", "magenta", "white", "black"])
    col = mmsearch.index(folder, out=root / "colours.mms", model="colour:v1", workers=0).path
    with live_server(create_app([col], worker_threads=2, torch_threads=None)) as url:
        yield url


def test_search_page_in_chromium(base_url: str, tmp_path: Path) -> None:
    query_image = tmp_path / "query.png"
    Image.new("RGB", (24, 24), COLOURS["blue"]).save(query_image)
    with playwright_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1100, "height": 720})
            errors: list[str] = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            _text_search(page, base_url)
            ARTIFACTS.mkdir(exist_ok=True)
            page.screenshot(path=str(ARTIFACTS / "serve-page-text.png"), full_page=True)
            _upload(page, query_image)
            _similar(page)
            page.screenshot(path=str(ARTIFACTS / "serve-page.png"), full_page=True)
            assert errors == []
        finally:
            browser.close()


def _wait_for_results(page, prefix: str) -> None:
    """Wait for the status line the page writes after rendering results ("<label> — N images in T ms"),
    not the "Searching <label>…" line it shows while the request is in flight."""
    page.wait_for_function("p => document.getElementById('status').textContent.startsWith(p)", arg=prefix)


def _text_search(page, base_url: str) -> None:
    page.goto(base_url)
    page.wait_for_selector("#collection option", state="attached")
    assert "colours (8 images" in page.inner_text("#collection")
    page.fill("#q", "a red square")
    page.press("#q", "Enter")
    _wait_for_results(page, "“a red square” — ")
    first = page.locator(".hit").first
    assert first.locator(".caption").inner_text() == "a red square"
    assert first.locator(".uri").inner_text() == "red.png"
    page.wait_for_function("() => [...document.querySelectorAll('.hit img.thumb')].every(i => i.complete && i.naturalWidth > 0)")
    assert page.locator(".hit img.thumb").count() == 8


def _upload(page, query_image: Path) -> None:
    page.set_input_files("#file", str(query_image))
    _wait_for_results(page, "by image query.png — ")
    assert page.locator(".hit").first.locator(".uri").inner_text() == "blue.png"
    assert float(page.locator(".hit .score").first.inner_text()) == pytest.approx(1.0, abs=1e-3)


def _similar(page) -> None:
    second = page.locator(".hit").nth(1)
    clicked = second.get_attribute("data-id")
    second.click()
    _wait_for_results(page, f"similar to #{clicked} — ")
    shown = [page.locator(".hit").nth(i).get_attribute("data-id") for i in range(page.locator(".hit").count())]
    assert clicked not in shown and len(shown) == 7
    page.wait_for_function("() => [...document.querySelectorAll('.hit img.thumb')].every(i => i.complete && i.naturalWidth > 0)")
