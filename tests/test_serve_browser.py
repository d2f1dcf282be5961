"""The web page in headless Chromium against a real server: search by text, image and similar item; the full-size
view; the address as the page's state (reload, Back/Forward); weak matches; messages; the phone layout; /docs offline.

Needs Debian's ``chromium`` (``apt-get install -y chromium``) and the ``playwright`` Python package (its
own browser download is not used). Screenshots land in ``test-artifacts/``.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

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
IMAGES = 9  # eight solid colours and a flag with transparent bands
ALL_THUMBS_LOADED = "() => [...document.querySelectorAll('.hit img.thumb')].every(i => i.complete && i.naturalWidth > 0)"

pytestmark = pytest.mark.skipif(not Path(CHROMIUM).is_file(), reason="no chromium: apt-get install -y chromium")


def transparent_flag(path: Path) -> Path:
    """A 60x30 RGBA PNG: a red band between two fully transparent bands (RGB 0 under the transparency)."""
    flag = Image.new("RGBA", (60, 30), (0, 0, 0, 0))
    flag.paste(Image.new("RGBA", (60, 10), (*COLOURS["red"], 255)), (0, 10))
    flag.save(path)
    return path


@pytest.fixture(scope="module")
def base_url(tmp_path_factory: pytest.TempPathFactory) -> str:
    root = tmp_path_factory.mktemp("browser")
    folder = make_colour_folder(root / "imgs", ["red", "green", "blue", "yellow", "cyan", "magenta", "white", "black"])
    transparent_flag(folder / "a_flag_with_a_rather_long_file_name_that_must_not_be_cut.png")
    col = mmsearch.index(folder, out=root / "colours.mms", model="colour:v1", workers=0).path
    _label(col, root / "cache")
    with live_server(create_app([col], worker_threads=2, torch_threads=None)) as url:
        yield url


def _label(col: Path, cache: Path) -> None:
    """Store labels as ``mmsearch index`` does: a colour vocabulary, so each square's first label is its colour."""
    from mmsearch.encoders import load_encoder
    from mmsearch.query.labels import Vocabulary, update_labels
    from mmsearch.store import Store

    names = list(COLOURS)
    with Store.open_for_writing(col) as store, store.transaction("labels"):
        update_labels(store, load_encoder("colour:v1"), cache=cache,
                      vocabulary=Vocabulary("colours", [f"{n} thing" for n in names], [[n] for n in names]))


@pytest.fixture(scope="module")
def browser():
    with playwright_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture
def page(browser):
    """A desktop-sized page; the test fails on any uncaught script error."""
    context = browser.new_context(viewport={"width": 1100, "height": 720})
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    yield page
    context.close()
    assert errors == []


def _wait_for_results(page, prefix: str) -> None:
    """Wait for the status line the page writes after rendering results ("<label> — N images in T ms"),
    not the "Searching <label>…" line it shows while the request is in flight."""
    page.wait_for_function("p => document.getElementById('status').textContent.startsWith(p)", arg=prefix)


def _open(page, base_url: str, query: str = "") -> None:
    page.goto(base_url + query)
    page.wait_for_selector("#collection option", state="attached")


def _search(page, text: str) -> None:
    page.fill("#q", text)
    page.press("#q", "Enter")
    _wait_for_results(page, f"“{text}” — ")


def _address(page) -> dict[str, list[str]]:
    return parse_qs(urlsplit(page.url).query)


def _names(page) -> list[str]:
    return page.locator(".hit .uri").all_inner_texts()


# -- searching ---------------------------------------------------------------------------------------
def test_search_page_in_chromium(page, base_url: str, tmp_path: Path) -> None:
    query_image = tmp_path / "query.png"
    Image.new("RGB", (24, 24), COLOURS["blue"]).save(query_image)
    _open(page, base_url)
    assert f"colours ({IMAGES} images" in page.inner_text("#collection")
    _search(page, "a red square")
    first = page.locator(".hit").first
    assert first.locator(".caption").inner_text() == "a red square"
    assert first.locator(".uri").inner_text() == "red.png"
    page.wait_for_function(ALL_THUMBS_LOADED)
    assert page.locator(".hit img.thumb").count() == IMAGES
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "serve-page-text.png"), full_page=True)

    page.set_input_files("#file", str(query_image))
    _wait_for_results(page, "by image query.png — ")
    assert page.locator(".hit").first.locator(".uri").inner_text() == "blue.png"
    assert float(page.locator(".hit .score").first.inner_text()) == pytest.approx(1.0, abs=1e-3)

    # "Similar" is a button of its own on each card; the status names the file, not the id
    second = page.locator(".hit").nth(1)
    clicked, name = second.get_attribute("data-id"), second.locator(".uri").inner_text()
    second.locator("button.similar").click()
    _wait_for_results(page, f"similar to {name} — ")
    assert f"#{clicked}" not in page.inner_text("#status")
    shown = [page.locator(".hit").nth(i).get_attribute("data-id") for i in range(page.locator(".hit").count())]
    assert clicked not in shown and len(shown) == IMAGES - 1
    page.wait_for_function(ALL_THUMBS_LOADED)
    page.screenshot(path=str(ARTIFACTS / "serve-page.png"), full_page=True)


def test_cards_show_what_the_model_sees(page, base_url: str) -> None:
    _open(page, base_url, "/?q=a+red+square")
    _wait_for_results(page, "“a red square” — ")
    first = page.locator(".hit").first
    assert first.locator(".uri").inner_text() == "red.png"
    assert first.locator(".labels").inner_text().startswith("red thing 1.00")


def test_full_file_names_are_shown(page, base_url: str) -> None:
    _open(page, base_url, "/?q=a+red+square")
    _wait_for_results(page, "“a red square” — ")
    long_name = "a_flag_with_a_rather_long_file_name_that_must_not_be_cut.png"
    card = page.locator(".hit", has=page.locator(".uri", has_text=long_name))
    uri = card.locator(".uri")
    assert uri.inner_text() == long_name and uri.get_attribute("title").endswith("/" + long_name)
    # wrapped, not cut: the element shows all of its text
    assert uri.evaluate("e => e.scrollWidth <= e.clientWidth + 1 && getComputedStyle(e).textOverflow !== 'ellipsis'")


def test_thumbnail_of_a_transparent_png_is_not_black(page, base_url: str) -> None:
    _open(page, base_url, "/?q=a+red+square")
    _wait_for_results(page, "“a red square” — ")
    page.wait_for_function(ALL_THUMBS_LOADED)
    thumb = page.locator(".hit", has=page.locator(".uri", has_text="a_flag_")).locator("img.thumb")
    # the pixels of the thumbnail as the page got it: top band transparent in the file, middle band red
    top, middle = thumb.evaluate("""img => {
        const c = document.createElement('canvas');
        c.width = img.naturalWidth; c.height = img.naturalHeight;
        const g = c.getContext('2d');
        g.drawImage(img, 0, 0);
        const at = (y) => [...g.getImageData(Math.floor(c.width / 2), y, 1, 1).data.slice(0, 3)];
        return [at(2), at(Math.floor(c.height / 2))];
    }""")
    assert min(top) > 235, f"a transparent pixel shows as {top}, not white"
    assert middle[0] > 200 and middle[1] < 60 and middle[2] < 60


# -- the full-size view --------------------------------------------------------------------------------
def test_card_opens_the_full_size_image_with_keyboard_navigation(page, base_url: str) -> None:
    _open(page, base_url, "/?q=a+red+square")
    _wait_for_results(page, "“a red square” — ")
    page.locator(".hit").first.click()
    viewer = page.locator("#viewer")
    assert viewer.is_visible() and page.url.endswith("q=a+red+square&modality=image&k=24")  # no search ran
    page.wait_for_function("() => document.getElementById('viewer-img').currentSrc.endsWith('/image')"
                           " && document.getElementById('viewer-img').complete")
    img = page.locator("#viewer-img")
    assert img.evaluate("i => [i.naturalWidth, i.naturalHeight]") == [40, 30]  # the original file, full size
    assert page.inner_text("#viewer-name") == "red.png" and page.inner_text("#viewer-path").endswith("/red.png")
    assert page.inner_text("#viewer-meta").startswith(f"1 / {IMAGES}")
    assert page.locator("#viewer-original").get_attribute("href").endswith("/image")
    page.screenshot(path=str(ARTIFACTS / "serve-page-viewer.png"))

    page.keyboard.press("ArrowRight")
    assert page.inner_text("#viewer-meta").startswith(f"2 / {IMAGES}")
    second = page.locator(".hit .uri").nth(1).inner_text()
    assert page.inner_text("#viewer-name") == second
    page.keyboard.press("ArrowLeft")
    page.keyboard.press("ArrowLeft")  # already the first: stays
    assert page.inner_text("#viewer-meta").startswith(f"1 / {IMAGES}")
    page.keyboard.press("Escape")
    assert not viewer.is_visible()
    assert page.evaluate("() => document.activeElement.classList.contains('hit')")  # focus back on the card

    # Enter on a focused card opens it too; "Similar" in the view searches
    page.locator(".hit").nth(1).focus()
    page.keyboard.press("Enter")
    assert viewer.is_visible() and page.inner_text("#viewer-name") == second
    page.click("#viewer-similar")
    _wait_for_results(page, f"similar to {second} — ")
    assert not viewer.is_visible()


# -- the address ---------------------------------------------------------------------------------------
def test_the_address_holds_the_search_and_back_works(page, base_url: str) -> None:
    _open(page, base_url, "/?collection=colours&q=a+green+square&modality=image&k=12")
    _wait_for_results(page, "“a green square” — ")  # a shared address runs its search on load
    assert page.input_value("#q") == "a green square" and page.input_value("#k") == "12"
    assert _names(page)[0] == "green.png"

    _search(page, "a blue square")
    assert _address(page) == {"collection": ["colours"], "q": ["a blue square"], "modality": ["image"], "k": ["12"]}
    page.check("input[name=modality][value=text]")
    _wait_for_results(page, "“a blue square” — ")
    page.wait_for_function("() => document.querySelector('.hit.text') !== null")
    assert _address(page)["modality"] == ["text"]

    page.go_back()
    _wait_for_results(page, "“a blue square” — ")
    page.wait_for_function("() => document.querySelector('.hit.image') !== null")
    assert page.is_checked("input[name=modality][value=image]") and _names(page)[0] == "blue.png"
    page.go_back()
    _wait_for_results(page, "“a green square” — ")
    assert page.input_value("#q") == "a green square" and _names(page)[0] == "green.png"
    page.go_forward()
    _wait_for_results(page, "“a blue square” — ")
    assert page.input_value("#q") == "a blue square"

    # similar items are in the address too; reloading it shows the same results, named by file
    page.locator(".hit").first.locator("button.similar").click()
    _wait_for_results(page, "similar to blue.png — ")
    before = _names(page)
    assert "similar" in _address(page)
    page.reload()
    _wait_for_results(page, "similar to blue.png — ")
    assert _names(page) == before

    page.go_back()
    _wait_for_results(page, "“a blue square” — ")


def test_an_address_naming_no_collection_shows_an_error_box(page, base_url: str) -> None:
    _open(page, base_url, "/?collection=nope&q=red")
    box = page.locator("#message.error")
    box.wait_for()
    assert "nope" in box.inner_text() and "colours" in box.inner_text() and box.get_attribute("role") == "alert"
    _open(page, base_url, "/?collection=colours&similar=999999")
    page.locator("#message.error").wait_for()
    assert "999999" in page.inner_text("#message") and page.locator(".hit").count() == 0


# -- what the results say ------------------------------------------------------------------------------
def test_weak_matches_are_marked(page, base_url: str) -> None:
    _open(page, base_url)
    _search(page, "a red square")
    # one good match (red), then a line, then the weak ones: dimmed and badged
    grid = page.locator("#results > *")
    assert grid.nth(0).get_attribute("class") == "hit image"
    assert "weak-divider" in grid.nth(1).get_attribute("class")
    assert "Weaker matches" in grid.nth(1).inner_text()
    assert page.locator(".hit.weak").count() == IMAGES - 1 and page.locator(".hit.weak .weak-badge").count() == IMAGES - 1
    assert float(page.locator(".hit.weak").first.evaluate("e => getComputedStyle(e).opacity")) < 1
    assert "(1 good, 8 weak)" in page.inner_text("#status")

    _search(page, "xyzzy")  # nothing matches: said above the results
    assert "all-weak" in grid.nth(0).get_attribute("class") and "No good match" in grid.nth(0).inner_text()
    assert page.locator(".hit.weak").count() == IMAGES


def test_empty_query_shows_a_message(page, base_url: str) -> None:
    _open(page, base_url)
    page.wait_for_function("() => document.getElementById('status').textContent.startsWith('Type a query')")
    page.press("#q", "Enter")
    box = page.locator("#message")
    assert box.is_visible() and "Empty query" in box.inner_text() and "error" not in box.get_attribute("class")
    page.fill("#q", "   ")
    page.click("#search-form button[type=submit]")
    assert box.is_visible() and "q=" not in page.url
    _search(page, "a red square")  # a real search clears it
    assert not box.is_visible()


def test_loading_dims_the_old_results(page, base_url: str) -> None:
    _open(page, base_url)
    _search(page, "a red square")
    dimmed = page.evaluate("""() => {
        document.getElementById('q').value = 'a cyan square';
        document.getElementById('search-form').requestSubmit();
        const grid = document.getElementById('results');
        return [grid.classList.contains('loading'), grid.querySelectorAll('.hit').length,
                parseFloat(getComputedStyle(grid).opacity)];
    }""")
    assert dimmed[0] and dimmed[1] == IMAGES  # the old results stay while the new ones load, dimmed
    _wait_for_results(page, "“a cyan square” — ")
    assert page.locator("#results.loading").count() == 0 and _names(page)[0] == "cyan.png"


# -- phone layout and sharpness ------------------------------------------------------------------------
def test_phone_layout_at_390px(browser, base_url: str) -> None:
    context = browser.new_context(viewport={"width": 390, "height": 844}, device_scale_factor=2, is_mobile=True,
                                  has_touch=True)
    page = context.new_page()
    try:
        _open(page, base_url, "/?q=a+red+square")
        _wait_for_results(page, "“a red square” — ")
        page.wait_for_function(ALL_THUMBS_LOADED)
        no_overflow = "() => document.documentElement.scrollWidth <= window.innerWidth"
        assert page.evaluate(no_overflow), page.evaluate("() => document.documentElement.scrollWidth")
        # the search row wraps: the buttons go below the text box, inside the screen
        q, button = page.locator("#q").bounding_box(), page.locator("#search-form button[type=submit]").bounding_box()
        assert button["y"] >= q["y"] + q["height"] - 1 and q["x"] + q["width"] <= 390
        # more than 1.5 results on the first screen (adding up the part of each card in view)
        shown = page.evaluate("""() => [...document.querySelectorAll('.hit')].map(h => h.getBoundingClientRect())
            .reduce((n, r) => n + Math.max(0, Math.min(r.bottom, innerHeight) - Math.max(r.top, 0)) / r.height, 0)""")
        assert shown > 2, shown
        # sharp at 2x: the browser picked the larger thumbnail
        assert all("size=640" in src for src in page.locator(".hit img.thumb").evaluate_all(
            "imgs => imgs.map(i => i.currentSrc)"))
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "serve-page-phone.png"))
        page.locator(".hit").first.click()
        page.locator("#viewer").wait_for()
        assert page.evaluate(no_overflow)
        page.keyboard.press("Escape")
    finally:
        context.close()


# -- /docs with no network ------------------------------------------------------------------------------
def test_docs_render_offline(browser, base_url: str) -> None:
    context = browser.new_context()
    outside: list[tuple[str, str]] = []

    def only_this_server(route) -> None:
        if route.request.url.startswith(base_url):
            route.continue_()
        else:
            outside.append((route.request.resource_type, route.request.url))
            route.abort()

    context.route("**/*", only_this_server)
    page = context.new_page()
    try:
        page.goto(base_url + "/docs")
        page.wait_for_selector(".swagger-ui .info .title", timeout=30_000)
        assert "mmsearch" in page.inner_text(".swagger-ui .info .title")
        page.wait_for_selector(".opblock-summary-path[data-path='/api/collections/{name}/search']")
        assert outside == []
        page.goto(base_url + "/redoc")
        page.wait_for_selector("h1", timeout=30_000)
        assert "mmsearch" in page.inner_text("h1")
        assert {kind for kind, _ in outside} <= {"image"}  # ReDoc's "powered by" logo; its code is all local
        icon = page.request.get(base_url + "/favicon.ico")
        assert icon.ok and icon.headers["content-type"] == "image/x-icon"
    finally:
        context.close()
