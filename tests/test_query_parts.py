"""The query-layer building blocks on their own: filters, arithmetic, evidence rendering, the chat client."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from mmsearch.errors import QueryError
from mmsearch.query import EvidenceBundle, EvidenceItem, Filter, Q
from mmsearch.query.calibration import threshold_from_null_scores
from mmsearch.query.chat import ChatConfig, ChatError, ask
from mmsearch.query.combine import combine

IMAGES = pa.table({
    "id": [1, 2, 3, 4], "uri": ["/a/x.jpg", "/a/b/y.png", "/c/z.jpg", "/a/w.JPG"],
    "bytes": [10, 2000, 300, 40], "width": [10, 640, 300, 50], "height": [10, 480, 200, 50],
    "mtime": [100.0, 200.0, 300.0, 400.0], "caption": ["A red car", None, "a RED bus", "blue sky"],
})


def _ids(f: Filter) -> list[int]:
    expr = f.expression("images", IMAGES.column_names)
    return IMAGES.filter(expr).column("id").to_pylist() if expr is not None else IMAGES.column("id").to_pylist()


@pytest.mark.parametrize("f, expected", [
    (Filter(), [1, 2, 3, 4]),
    (Filter(path_glob="/a/*.jpg"), [1]),
    (Filter(path_glob="*.png"), [2]),
    (Filter(path_prefix="/a/"), [1, 2, 4]),
    (Filter(caption_contains="red"), [1, 3]),
    (Filter(mtime_min=150, mtime_max=300), [2, 3]),
    (Filter(width_min=100, height_max=300), [3]),
    (Filter(bytes_max=50), [1, 4]),
    (Filter(where={"id": [2, 4]}), [2, 4]),
    (Filter(where={"width": 640}), [2]),
    (Filter(path_prefix="/a/", caption_contains="car"), [1]),
])
def test_filters(f: Filter, expected: list[int]) -> None:
    assert _ids(f) == expected


def test_filter_errors() -> None:
    with pytest.raises(QueryError, match="no column 'colour'"):
        Filter(where={"colour": "red"}).expression("images", IMAGES.column_names)
    with pytest.raises(QueryError, match="images only"):
        Filter(width_min=3).expression("texts", ["id", "text", "source"])
    with pytest.raises(QueryError, match="unknown filter field"):
        Filter.from_dict({"size": 3})
    assert Filter.from_dict({"path_glob": "*.jpg"}).path_glob == "*.jpg"


def test_combine_weights_and_negatives() -> None:
    vectors = {"a": np.array([1.0, 0, 0]), "b": np.array([0, 1.0, 0]), "c": np.array([0, 0, 1.0])}
    got = combine(["a", Q(text="b", weight=2.0)], ["c"], lambda t: vectors[t.text])
    np.testing.assert_allclose(got, np.array([1, 2, -1]) / np.sqrt(6), atol=1e-6)
    with pytest.raises(QueryError, match="cancel"):
        combine(["a"], ["a"], lambda t: vectors[t.text])
    with pytest.raises(QueryError, match="at least one positive"):
        combine([], ["a"], lambda t: vectors[t.text])
    with pytest.raises(QueryError, match="exactly one"):
        Q(text="a", id=3)
    with pytest.raises(QueryError, match="positive number"):
        Q(text="a", weight=0)


def test_threshold_percentile() -> None:
    assert threshold_from_null_scores(np.arange(101) / 100) == pytest.approx(0.95)


def _bundle(found: bool) -> EvidenceBundle:
    image = EvidenceItem("I1", 7, "image", 0.8 if found else 0.1, found, uri="/p/cat.jpg", caption="a cat",
                         nearest_texts=[{"id": 9, "text": "cats sleep a lot", "score": 0.7}])
    text = EvidenceItem("T1", 9, "text", 0.7 if found else 0.1, found, uri="notes.txt", text="cats sleep a lot")
    return EvidenceBundle("what does my cat do?", "colour:v1", 0.3, [image], [text])


def test_evidence_prompt_and_json() -> None:
    prompt = _bundle(True).to_prompt()
    assert "[I1] image /p/cat.jpg" in prompt and "caption: a cat" in prompt and "[T1] text" in prompt
    assert "related texts: cats sleep a lot" in prompt and "nothing relevant" not in prompt
    assert "nothing relevant was found" in _bundle(False).to_prompt()
    data = json.loads(json.dumps(_bundle(True).to_dict()))
    assert data["found"] is True and data["images"][0]["citation"] == "I1"


class _FakeChat(BaseHTTPRequestHandler):
    received: list[dict] = []

    def do_POST(self) -> None:  # noqa: N802
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        _FakeChat.received.append({"path": self.path, "body": body, "auth": self.headers.get("Authorization")})
        if body["model"] == "broken":
            self.send_response(500)
            self.end_headers()
            self.wfile.write(b"boom")
            return
        answer = {"choices": [{"message": {"role": "assistant", "content": "Your cat sleeps [T1]."}}]}
        data = json.dumps(answer).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def fake_chat():
    server = HTTPServer(("127.0.0.1", 0), _FakeChat)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    _FakeChat.received.clear()
    yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    server.shutdown()


def test_ask_sends_bundle_and_returns_answer(fake_chat) -> None:
    answer = ask(_bundle(True), ChatConfig(url=fake_chat, model="m", api_key="secret"))
    assert answer == "Your cat sleeps [T1]."
    req = _FakeChat.received[0]
    assert req["path"] == "/v1/chat/completions" and req["auth"] == "Bearer secret"
    assert "[I1] image /p/cat.jpg" in req["body"]["messages"][1]["content"]


def test_ask_errors(fake_chat) -> None:
    with pytest.raises(ChatError, match="HTTP 500"):
        ask(_bundle(True), ChatConfig(url=fake_chat, model="broken"))
    with pytest.raises(ChatError, match="cannot reach"):
        ask(_bundle(True), ChatConfig(url="http://127.0.0.1:9", model="m", timeout_s=2))


def test_path_term_is_an_image() -> None:
    from mmsearch.query.combine import as_term

    assert as_term(Path("x.jpg")).image == Path("x.jpg") and as_term("x").text == "x"


@pytest.mark.parametrize("pattern, path", [
    ("*/nested/*", "/a/nested/b.png"), ("*.jpg", "/x/y.jpg"), ("/a/?.png", "/a/b.png"), ("*[0-9].png", "/a/x7.png"),
    ("*[!0-9].png", "/a/xy.png"), ("a+b(*", "a+b(c"), ("*", ""),
])
def test_glob_matches_like_fnmatch(pattern: str, path: str) -> None:
    import fnmatch
    import re

    from mmsearch.query.filters import glob_to_regex

    assert bool(re.match(glob_to_regex(pattern), path)) == fnmatch.fnmatchcase(path, pattern) is True
    assert not re.match(glob_to_regex(pattern), path + "/extra.gif") or pattern.endswith("*")
