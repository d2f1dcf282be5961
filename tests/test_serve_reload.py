"""A running server follows its collection: a re-index shows on the next request; reload can be turned off."""

from __future__ import annotations

import json
from pathlib import Path

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
from mmsearch.serve.options import ServeOptions  # noqa: E402

COLOUR = "colour:v1"
SETTINGS = {"worker_threads": 2, "torch_threads": None}


def _uris(client: httpx.Client, q: str = "red") -> list[str]:
    r = client.get("/api/collections/c/search", params={"q": q, "k": 50})
    assert r.status_code == 200, r.text
    return sorted(Path(h["uri"]).name for h in r.json()["hits"])


def test_a_reindexed_collection_is_served_without_a_restart(tmp_path: Path) -> None:
    folder = make_colour_folder(tmp_path / "imgs", ["red", "green"])
    out = mmsearch.index(folder, out=tmp_path / "c.mms", model=COLOUR, workers=0).path
    app = create_app({"c": out}, reload_check_s=0.0, **SETTINGS)
    with live_server(app) as url, httpx.Client(base_url=url, timeout=30) as client:
        assert _uris(client) == ["green.png", "red.png"]
        Image.new("RGB", (40, 30), COLOURS["blue"]).save(folder / "blue.png")
        (folder / "red.png").unlink()
        mmsearch.index(folder, out=out, workers=0)
        assert _uris(client) == ["blue.png", "green.png"]  # the deletion and the new image, no restart
        assert client.get("/api/collections").json()["collections"][0]["images"] == 2
        ids = {Path(h["uri"]).name: h["id"] for h in client.get("/api/collections/c/search", params={"q": "blue"}).json()["hits"]}
        assert client.get(f"/api/collections/c/items/{ids['blue.png']}").status_code == 200


def test_a_broken_manifest_keeps_the_old_version_served(tmp_path: Path) -> None:
    out = mmsearch.index(make_colour_folder(tmp_path / "imgs", ["red", "green"]), out=tmp_path / "c.mms",
                         model=COLOUR, workers=0).path
    app = create_app({"c": out}, reload_check_s=0.0, **SETTINGS)
    with live_server(app) as url, httpx.Client(base_url=url, timeout=30) as client:
        assert _uris(client) == ["green.png", "red.png"]
        manifest = out / "manifest.json"
        (tmp_path / "bad.json").write_text(json.dumps({"format_version": 999}), encoding="utf-8")
        (tmp_path / "bad.json").replace(manifest)
        assert _uris(client) == ["green.png", "red.png"]


def test_reload_off_serves_the_start_up_version(tmp_path: Path) -> None:
    folder = make_colour_folder(tmp_path / "imgs", ["red", "green"])
    out = mmsearch.index(folder, out=tmp_path / "c.mms", model=COLOUR, workers=0).path
    app = create_app({"c": out}, reload_check_s=None, **SETTINGS)
    with live_server(app) as url, httpx.Client(base_url=url, timeout=30) as client:
        _uris(client)
        Image.new("RGB", (40, 30), COLOURS["blue"]).save(folder / "blue.png")
        mmsearch.index(folder, out=out, workers=0)
        assert _uris(client) == ["green.png", "red.png"]


def test_reload_interval_is_validated() -> None:
    with pytest.raises(ConfigError, match="reload_check_s"):
        ServeOptions(reload_check_s=-1)
