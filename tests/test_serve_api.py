"""The HTTP API against a real uvicorn server on a loopback port: every endpoint and every bad input."""

from __future__ import annotations

import http.client
import io
import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import urlsplit

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
httpx = pytest.importorskip("httpx")

from fakes import COLOURS, make_colour_folder  # noqa: E402
from PIL import Image  # noqa: E402
from serve_live import live_server  # noqa: E402

import mmsearch  # noqa: E402
from mmsearch.errors import ConfigError  # noqa: E402
from mmsearch.serve import create_app  # noqa: E402

COLOUR = "colour:v1"
# torch_threads=None: a test server must not change the torch settings of the whole test process
LIMITS = {"max_upload_bytes": 100_000, "max_image_pixels": 1_000_000, "max_k": 50, "worker_threads": 2,
          "torch_threads": None}


def png(colour: str, size: tuple[int, int] = (16, 16), fmt: str = "PNG") -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, COLOURS[colour]).save(out, format=fmt)
    return out.getvalue()


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Six colours + captions + a text corpus; a symlink out of the corpus; a file changed after indexing."""
    root = tmp_path_factory.mktemp("serve")
    folder = make_colour_folder(root / "imgs", ["red", "green", "blue", "yellow", "cyan", "magenta"])
    (root / "outside").mkdir()
    Image.new("RGB", (20, 20), COLOURS["white"]).save(root / "outside" / "white.png")
    (folder / "link.png").symlink_to(root / "outside" / "white.png")
    Image.new("RGB", (30, 30), COLOURS["black"]).save(folder / "black.png")
    (root / "corpus.txt").write_text("the sky is blue today\nfresh green grass\n", encoding="utf-8")
    main = mmsearch.index([folder, root / "corpus.txt"], out=root / "main.mms", model=COLOUR, workers=0).path
    (folder / "black.png").write_bytes(b"no longer the image that was indexed")
    plain = make_colour_folder(root / "plain", ["red", "blue"], captions=False)
    return {"main": main, "plain": mmsearch.index(plain, out=root / "plain.mms", model=COLOUR, workers=0).path,
            "folder": folder}


@pytest.fixture(scope="module")
def client(corpus: dict[str, Path]) -> httpx.Client:
    app = create_app({"main": corpus["main"], "plain": corpus["plain"]}, **LIMITS)
    with live_server(app) as url, httpx.Client(base_url=url, timeout=30) as c:
        yield c


@pytest.fixture(scope="module")
def ids(client: httpx.Client) -> dict[str, int]:
    """Image file name (and text) -> item id, read through the API."""
    images = client.get("/api/collections/main/search", params={"q": "anything", "k": 50}).json()["hits"]
    texts = client.get("/api/collections/main/search", params={"q": "anything", "k": 50, "modality": "text"}).json()["hits"]
    return {**{Path(h["uri"]).name: h["id"] for h in images}, **{h["text"]: h["id"] for h in texts}}


def error_of(response: httpx.Response, status: int) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    error = response.json()["error"]
    assert error["status"] == status and error["message"]
    return error


def raw_get(client: httpx.Client, path: str) -> tuple[int, bytes]:
    """GET a path byte for byte (httpx would normalise ../ and %2e)."""
    parts = urlsplit(str(client.base_url))
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


# -- endpoints -------------------------------------------------------------------------------------
def test_health_and_page(client: httpx.Client) -> None:
    assert client.get("/api/health").json() == {"status": "ok", "version": mmsearch.__version__,
                                                 "api_key_required": False}
    page = client.get("/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"] and "/static/app.js" in page.text
    assert client.get("/static/app.js").status_code == 200 and client.get("/static/style.css").status_code == 200


def test_collections_and_info(client: httpx.Client) -> None:
    listed = client.get("/api/collections").json()["collections"]
    assert [(c["name"], c["model"], c["images"], c["texts"]) for c in listed] == [
        ("main", COLOUR, 8, 8), ("plain", COLOUR, 2, 0)]
    info = client.get("/api/collections/main").json()
    assert info["name"] == "main" and info["model"]["spec"] == COLOUR and info["images"] == 8
    assert error_of(client.get("/api/collections/nope"), 404)["code"] == "unknown_collection"


def test_search_by_text(client: httpx.Client) -> None:
    body = client.get("/api/collections/main/search", params={"q": "a red square", "k": 3}).json()
    assert body["query"] == {"type": "text", "text": "a red square"} and body["k"] == 3 and body["modality"] == "image"
    top = body["hits"][0]
    assert Path(top["uri"]).name == "red.png" and top["score"] == pytest.approx(1.0, abs=1e-3)
    assert set(top) == {"id", "score", "modality", "uri", "text", "caption", "metadata", "good_match", "labels"}
    assert len(body["hits"]) == 3
    texts = client.get("/api/collections/main/search", params={"q": "blue", "modality": "text", "k": 2}).json()["hits"]
    assert {h["text"] for h in texts} == {"a blue square", "the sky is blue today"}


def test_search_by_uploaded_image(client: httpx.Client) -> None:
    for fmt, name in (("PNG", "q.png"), ("JPEG", "q.jpg"), ("WEBP", "q.webp")):
        files = {"file": (name, png("cyan", fmt=fmt), "application/octet-stream")}
        body = client.post("/api/collections/main/search/image", params={"k": 2}, files=files).json()
        assert Path(body["hits"][0]["uri"]).name == "cyan.png" and body["query"]["type"] == "image", fmt
    files = {"file": ("q.png", png("green"), "image/png")}
    texts = client.post("/api/collections/main/search/image", params={"modality": "text"}, files=files).json()["hits"]
    assert texts[0]["text"] in {"a green square", "fresh green grass"} and texts[0]["score"] == pytest.approx(1.0, abs=1e-3)


def test_similar_by_id(client: httpx.Client, ids: dict[str, int]) -> None:
    body = client.get(f"/api/collections/main/items/{ids['yellow.png']}/similar", params={"k": 3}).json()
    assert body["query"] == {"type": "id", "id": ids["yellow.png"]}
    assert ids["yellow.png"] not in [h["id"] for h in body["hits"]] and len(body["hits"]) == 3
    captions = client.get(f"/api/collections/main/items/{ids['yellow.png']}/similar",
                          params={"modality": "text", "k": 1}).json()["hits"]
    assert captions[0]["text"] == "a yellow square"


def test_item_metadata(client: httpx.Client, ids: dict[str, int], corpus: dict[str, Path]) -> None:
    item = client.get(f"/api/collections/main/items/{ids['red.png']}").json()
    assert item["modality"] == "image" and item["uri"] == str(corpus["folder"] / "red.png")
    assert item["caption"] == "a red square" and item["metadata"]["width"] == 40 and "score" not in item
    text = client.get(f"/api/collections/main/items/{ids['fresh green grass']}").json()
    assert text["modality"] == "text" and text["text"] == "fresh green grass" and text["uri"].endswith("corpus.txt")
    assert error_of(client.get("/api/collections/main/items/999999"), 404)["code"] == "unknown_id"
    assert error_of(client.get("/api/collections/main/items/999999/similar"), 404)["code"] == "unknown_id"


def test_image_and_thumbnail(client: httpx.Client, ids: dict[str, int], corpus: dict[str, Path]) -> None:
    original = client.get(f"/api/collections/main/items/{ids['blue.png']}/image")
    assert original.headers["content-type"] == "image/png"
    assert original.content == (corpus["folder"] / "blue.png").read_bytes()
    thumb = client.get(f"/api/collections/main/items/{ids['blue.png']}/thumbnail", params={"size": 20})
    assert thumb.headers["content-type"] == "image/jpeg"
    image = Image.open(io.BytesIO(thumb.content))
    assert image.format == "JPEG" and max(image.size) == 20
    cached = client.get(f"/api/collections/main/items/{ids['blue.png']}/thumbnail", params={"size": 20})
    assert cached.content == thumb.content
    error_of(client.get(f"/api/collections/main/items/{ids['a blue square']}/thumbnail"), 404)


def test_files_outside_the_corpus_or_changed_are_not_served(client: httpx.Client, ids: dict[str, int]) -> None:
    for endpoint in ("image", "thumbnail"):
        assert error_of(client.get(f"/api/collections/main/items/{ids['link.png']}/{endpoint}"), 403)["code"] == \
            "outside_collection"
        assert error_of(client.get(f"/api/collections/main/items/{ids['black.png']}/{endpoint}"), 404)["code"] == \
            "file_changed"


def test_openapi_docs(client: httpx.Client) -> None:
    paths = client.get("/openapi.json").json()["paths"]
    for path in ("/api/health", "/api/collections", "/api/collections/{name}", "/api/collections/{name}/search",
                 "/api/collections/{name}/search/image", "/api/collections/{name}/items/{item_id}",
                 "/api/collections/{name}/items/{item_id}/similar", "/api/collections/{name}/items/{item_id}/image",
                 "/api/collections/{name}/items/{item_id}/thumbnail"):
        assert path in paths, path
    assert "swagger" in client.get("/docs").text.lower()


def test_several_collections_at_once(client: httpx.Client) -> None:
    hits = client.get("/api/collections/plain/search", params={"q": "blue", "k": 5}).json()["hits"]
    assert [Path(h["uri"]).name for h in hits][0] == "blue.png" and len(hits) == 2
    # the plain collection holds no texts: the library's IndexNotFoundError becomes a 404
    assert error_of(client.get("/api/collections/plain/search", params={"q": "blue", "modality": "text"}), 404)["code"] \
        == "IndexNotFoundError"


def test_concurrent_requests(client: httpx.Client) -> None:
    def one(i: int) -> int:
        name = list(COLOURS)[i % 6]
        return client.get("/api/collections/main/search", params={"q": name, "k": 1}).status_code

    with ThreadPoolExecutor(8) as pool:
        assert set(pool.map(one, range(40))) == {200}


# -- bad input: always a 4xx JSON error ------------------------------------------------------------
@pytest.mark.parametrize("params", [
    {"q": "red", "k": 0}, {"q": "red", "k": 51}, {"q": "red", "k": -3}, {"q": "red", "k": "ten"}, {"q": "red", "k": 1.5},
    {"q": "red", "modality": "video"}, {}, {"q": ""}, {"q": "x" * 1001},
])
def test_bad_search_parameters_are_422(client: httpx.Client, params: dict) -> None:
    error_of(client.get("/api/collections/main/search", params=params), 422)


def test_blank_query_is_400(client: httpx.Client) -> None:
    assert "empty" in error_of(client.get("/api/collections/main/search", params={"q": "   "}), 400)["message"]


def test_very_long_query_string(client: httpx.Client) -> None:
    error_of(client.get("/api/collections/main/search", params={"q": "red " * 5000}), 422)
    status, _ = raw_get(client, "/api/collections/main/search?q=" + "r" * 60_000)
    assert status == 422
    try:  # past uvicorn's 64 KiB request-head limit: a 400, or the connection is cut while we still send
        status, _ = raw_get(client, "/api/collections/main/search?q=" + "r" * 200_000)
        assert 400 <= status < 500
    except ConnectionResetError:
        pass
    assert client.get("/api/health").status_code == 200


@pytest.mark.parametrize("item", ["abc", "-1", "1.5", str(2**63), str(10**30), "%00"])
def test_bad_item_ids_are_422(client: httpx.Client, item: str) -> None:
    for suffix in ("", "/similar", "/image", "/thumbnail"):
        error_of(client.get(f"/api/collections/main/items/{item}{suffix}"), 422)


def test_bad_thumbnail_size(client: httpx.Client, ids: dict[str, int]) -> None:
    for size in (0, 5000, "big"):
        error_of(client.get(f"/api/collections/main/items/{ids['red.png']}/thumbnail", params={"size": size}), 422)


def test_bad_uploads(client: httpx.Client) -> None:
    url = "/api/collections/main/search/image"
    assert error_of(client.post(url, files={"file": ("a.png", b"GIF89a not really", "image/png")}), 400)["code"] == \
        "not_an_image"
    error_of(client.post(url, files={"file": ("a.txt", b"hello", "text/plain")}), 400)
    error_of(client.post(url, files={"file": ("a.png", b"", "image/png")}), 400)
    truncated = png("red", (64, 64))[:60]
    error_of(client.post(url, files={"file": ("t.png", truncated, "image/png")}), 400)
    error_of(client.post(url, files={"other": ("a.png", png("red"), "image/png")}), 422)
    error_of(client.post(url, json={"file": "red"}), 422)
    error_of(client.post(url, content=b"\x89PNG raw", headers={"content-type": "image/png"}), 422)
    error_of(client.get(url), 405)
    error_of(client.post(url, params={"k": 0}, files={"file": ("a.png", png("red"), "image/png")}), 422)


def test_oversized_uploads_are_413(client: httpx.Client) -> None:
    url = "/api/collections/main/search/image"
    noise = io.BytesIO()
    Image.frombytes("RGB", (200, 200), bytes(range(256)) * 468 + bytes(192)).save(noise, format="BMP")
    assert 100_000 < len(noise.getvalue()) < 164_000  # over the file limit, under the body limit
    assert error_of(client.post(url, files={"file": ("big.bmp", noise.getvalue(), "image/bmp")}), 413)["code"] == \
        "upload_too_large"
    error_of(client.post(url, files={"file": ("huge.bmp", b"0" * 400_000, "image/bmp")}), 413)

    def chunks():  # no Content-Length: the limit applies while the body streams in
        yield b"--b\r\nContent-Disposition: form-data; name=\"file\"; filename=\"x.png\"\r\n\r\n"
        for _ in range(40):
            yield b"0" * 10_000
    error_of(client.post(url, content=chunks(), headers={"content-type": "multipart/form-data; boundary=b"}), 413)


def test_decompression_bomb_is_413(client: httpx.Client) -> None:
    bomb = png("red", (2000, 2000))  # 4 Mpx, a few KB: over the 1 Mpx limit
    assert len(bomb) < 100_000
    files = {"file": ("bomb.png", bomb, "image/png")}
    assert error_of(client.post("/api/collections/main/search/image", files=files), 413)["code"] == "image_too_large"


@pytest.mark.parametrize("path", [
    "/static/../../../../etc/passwd", "/static/%2e%2e/%2e%2e/%2e%2e/etc/passwd", "/static/..%2f..%2f..%2fetc%2fpasswd",
    "/static//etc/passwd", "/static/%2fetc%2fpasswd", "/api/collections/..%2f..%2fetc%2fpasswd",
    "/api/collections/main/items/..%2f..%2f..%2fetc%2fpasswd/image", "/api/collections/main/items/%2fetc%2fpasswd/image",
    "/api/collections/main/items/../../../../etc/passwd", "/../../../../etc/passwd", "/%2e%2e/%2e%2e/etc/passwd",
    "/static/..\\..\\..\\etc\\passwd", "/api/collections/main/items/1/image/../../../../../etc/passwd",
])
def test_path_traversal_is_refused(client: httpx.Client, path: str) -> None:
    status, body = raw_get(client, path)
    assert 400 <= status < 500 and b"root:" not in body
    assert json.loads(body)["error"]["status"] == status


def test_unknown_route_is_json_404(client: httpx.Client) -> None:
    assert "no such endpoint" in error_of(client.get("/api/nothing-here"), 404)["message"]


# -- API key, options, CLI --------------------------------------------------------------------------
def test_api_key(corpus: dict[str, Path]) -> None:
    app = create_app([corpus["plain"]], api_key="s3cret", warm_up=False, torch_threads=None)
    with live_server(app) as url, httpx.Client(base_url=url, timeout=30) as c:
        assert c.get("/api/health").json()["api_key_required"] is True
        assert c.get("/").status_code == 200
        assert error_of(c.get("/api/collections"), 401)["code"] == "unauthorized"
        error_of(c.get("/api/collections/plain/search", params={"q": "red"}, headers={"X-API-Key": "wrong"}), 401)
        ok = c.get("/api/collections/plain/search", params={"q": "red"}, headers={"X-API-Key": "s3cret"})
        assert ok.status_code == 200 and Path(ok.json()["hits"][0]["uri"]).name == "red.png"


def test_bad_settings_are_config_errors(corpus: dict[str, Path]) -> None:
    with pytest.raises(ConfigError, match="max_k"):
        create_app([corpus["plain"]], max_k=0)
    with pytest.raises(ConfigError, match="torch_threads"):
        create_app([corpus["plain"]], torch_threads=0)
    with pytest.raises(ConfigError, match="api_key"):
        create_app([corpus["plain"]], api_key=" ")
    with pytest.raises(ConfigError, match="both named"):
        create_app([corpus["plain"], corpus["plain"]])
    with pytest.raises(ConfigError, match="name"):
        create_app({"../x": corpus["plain"]})
    with pytest.raises(mmsearch.CollectionNotFoundError):
        create_app([corpus["folder"]])


def test_cli_serve_passes_flags_to_the_library(monkeypatch: pytest.MonkeyPatch, corpus: dict[str, Path]) -> None:
    from click.testing import CliRunner

    import mmsearch.serve
    from mmsearch.cli.main import main

    calls = []
    monkeypatch.setattr(mmsearch.serve, "run", lambda paths, **kw: calls.append((paths, kw)))
    result = CliRunner().invoke(main, ["serve", str(corpus["main"]), "--port", "9001", "--threads", "3",
                                       "--max-upload-mb", "1", "--host", "0.0.0.0"])
    assert result.exit_code == 0, result.output
    assert "without" in result.output or "no --api-key" in result.output
    paths, kw = calls[0]
    assert paths == [str(corpus["main"])] and kw["port"] == 9001 and kw["host"] == "0.0.0.0"
    assert kw["worker_threads"] == 3 and kw["max_upload_bytes"] == 1024 * 1024 and kw["api_key"] is None


# -- the web page's needs: thumbnails of transparent images, plain error words, offline docs ----------------
def test_thumbnails_put_transparency_on_white(tmp_path: Path) -> None:
    """Transparent pixels come out white (as the embeddings see them), not black, whatever the PNG's mode."""
    folder = tmp_path / "flags"
    folder.mkdir()
    rgba = Image.new("RGBA", (60, 30), (0, 0, 0, 0))  # transparent bands over RGB 0: black if alpha is dropped
    rgba.paste(Image.new("RGBA", (60, 10), (*COLOURS["red"], 255)), (0, 10))
    rgba.save(folder / "rgba.png")
    rgba.convert("LA").save(folder / "grey_alpha.png")
    palette = Image.new("P", (60, 30), 0)
    palette.putpalette([0, 0, 0, *COLOURS["blue"]] + [0] * 762)
    palette.paste(1, (0, 10, 60, 20))
    palette.save(folder / "palette.png", transparency=0)
    col = mmsearch.index(folder, out=tmp_path / "flags.mms", model=COLOUR, workers=0).path
    with live_server(create_app([col], **LIMITS)) as url, httpx.Client(base_url=url, timeout=30) as c:
        hits = c.get("/api/collections/flags/search", params={"q": "anything", "k": 10}).json()["hits"]
        assert len(hits) == 3
        for hit in hits:
            for size in (32, 640):
                response = c.get(f"/api/collections/flags/items/{hit['id']}/thumbnail", params={"size": size})
                thumb = Image.open(io.BytesIO(response.content)).convert("RGB")
                assert thumb.size == ((32, 16) if size == 32 else (60, 30))  # never enlarged
                w, h = thumb.size
                top, middle = thumb.getpixel((w // 2, 1)), thumb.getpixel((w // 2, h // 2))
                assert min(top) > 240, (hit["uri"], top)
                assert max(middle) - min(middle) > 100 or "grey" in hit["uri"], (hit["uri"], middle)


def test_upload_errors_name_no_object_reprs(client: httpx.Client) -> None:
    url = "/api/collections/main/search/image"
    for data in (b"GIF89a not really", b"hello", b"\x00" * 64):
        message = error_of(client.post(url, files={"file": ("a.png", data, "image/png")}), 400)["message"]
        assert "0x" not in message and "<" not in message and "BytesIO" not in message, message
        assert "not an image" in message


def test_plain_message_says_object_reprs_in_words() -> None:
    from mmsearch.serve.errors import ApiError, error_body, plain_message

    assert plain_message(f"cannot identify image file {io.BytesIO()!r}") == "cannot identify image file the uploaded data"
    assert plain_message(f"bad value {object()!r}") == "bad value an object"
    assert plain_message("keeps <tags> and 0x10 as they are") == "keeps <tags> and 0x10 as they are"
    assert "0x" not in ApiError(400, f"x {io.BytesIO()!r}").message
    assert "0x" not in error_body(500, f"y {io.BytesIO()!r}")["error"]["message"]


def test_docs_are_served_from_installed_files(client: httpx.Client) -> None:
    """/docs and /redoc need no CDN: Swagger UI and ReDoc come from the installed fastapi-offline package."""
    for page, assets in (("/docs", ("/static/docs/swagger-ui-bundle.js", "/static/docs/swagger-ui.css")),
                         ("/redoc", ("/static/docs/redoc.standalone.js",))):
        html = client.get(page)
        assert html.status_code == 200 and "text/html" in html.headers["content-type"]
        assert "http://" not in html.text and "https://" not in html.text, page
        for asset in assets:
            assert asset in html.text
            response = client.get(asset)
            assert response.status_code == 200 and len(response.content) > 100_000, asset
    assert "oauth2" in client.get("/docs/oauth2-redirect").text.lower()
    icon = client.get("/favicon.ico")
    assert icon.status_code == 200 and icon.headers["content-type"] == "image/x-icon"
    assert Image.open(io.BytesIO(icon.content)).format == "ICO"
    assert client.get("/static/favicon.svg").headers["content-type"].startswith("image/svg+xml")
    assert 'rel="icon"' in client.get("/").text


def test_page_addresses_with_search_state_serve_the_page(client: httpx.Client) -> None:
    page = client.get("/", params={"collection": "main", "q": "a red square", "modality": "text", "k": "12"})
    assert page.status_code == 200 and "/static/app.js" in page.text


def test_hits_carry_labels_and_the_label_filter(tmp_path: Path) -> None:
    from mmsearch.encoders import load_encoder
    from mmsearch.query.labels import Vocabulary, update_labels
    from mmsearch.store import Store

    folder = make_colour_folder(tmp_path / "imgs", ["red", "green", "blue"])
    root = mmsearch.index(folder, out=tmp_path / "l.mms", model=COLOUR, workers=0).path
    names = ["red", "green", "blue", "white"]
    with Store.open_for_writing(root) as store, store.transaction("labels"):
        update_labels(store, load_encoder(COLOUR), cache=tmp_path / "cache",
                      vocabulary=Vocabulary("colours", [f"{n} thing" for n in names], [[n] for n in names]))
    with live_server(create_app({"l": root}, **LIMITS)) as url, httpx.Client(base_url=url, timeout=30) as c:
        hits = c.get("/api/collections/l/search", params={"q": "red", "k": 3}).json()["hits"]
        assert hits[0]["labels"][0] == {"name": "red thing", "confidence": 1.0}
        only = c.get("/api/collections/l/search", params=[("q", "red"), ("k", 3), ("label", "green"),
                                                          ("label", "BLUE")]).json()["hits"]
        assert sorted(Path(h["uri"]).name for h in only) == ["blue.png", "green.png"]
        similar = c.get(f"/api/collections/l/items/{hits[0]['id']}/similar", params={"label": "blue"}).json()["hits"]
        assert [Path(h["uri"]).name for h in similar] == ["blue.png"]
        assert c.get(f"/api/collections/l/items/{hits[0]['id']}").json()["labels"][0]["name"] == "red thing"
        error = error_of(c.get("/api/collections/l/search", params={"q": "red", "modality": "text", "label": "x"}), 400)
        assert "images only" in error["message"] or "text" in error["message"]
