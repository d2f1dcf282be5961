"""Re-index with nothing to do decides it from the manifest and file stats: the model is not loaded (issue 16).

Every load_encoder call of mmsearch.index is recorded (the registry keeps one encoder per process, so a
count of constructions would not see a second load); the collection is built once (one load), then indexed again
unchanged (no load), then with a changed file, a new text corpus line, and a removed file (loads: there is
something to embed, or an index to update)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from fakes import ColourEncoder, make_colour_folder

import mmsearch
import mmsearch.api
from mmsearch.encoders import register_scheme
from mmsearch.errors import EncoderMismatchError, StoreError

LOADS: list[str] = []
register_scheme("loadcount", lambda spec, device: ColourEncoder(str(spec)))
MODEL = "loadcount:v1"


@pytest.fixture(autouse=True)
def _count_loads(monkeypatch: pytest.MonkeyPatch) -> None:
    real = mmsearch.api.load_encoder

    def counting(spec: str, *, device: str | None = None) -> object:
        LOADS.append(spec)
        return real(spec, device=device)

    LOADS.clear()
    monkeypatch.setattr(mmsearch.api, "load_encoder", counting)


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    root = make_colour_folder(tmp_path / "pics")
    (tmp_path / "notes.txt").write_text("first note\nsecond note\n", encoding="utf-8")
    return root


def _index(folder: Path, out: Path, **kwargs: object) -> mmsearch.IndexResult:
    return mmsearch.index([folder, folder.parent / "notes.txt"], out=out, model=MODEL, workers=0, **kwargs)


def test_an_unchanged_reindex_does_not_load_the_encoder(folder: Path, tmp_path: Path) -> None:
    out = tmp_path / "c.mms"
    first = _index(folder, out)
    assert len(LOADS) == 1 and first.report.images_embedded == 4
    version = mmsearch.open(out).version
    LOADS.clear()

    again = _index(folder, out)
    assert LOADS == []  # decided from the manifest and file stats
    assert again.model == first.model and again.indexes == {}
    assert again.report.skipped_unchanged == 4 + 2 and again.report.images_embedded == 0
    assert mmsearch.open(out).version == version  # nothing published either
    hits = mmsearch.open(out).search(vector=ColourEncoder().encode_texts(["red"])[0], k=1)
    assert Path(hits[0].uri).stem == "red"


@pytest.mark.parametrize("change", ["image", "text", "removed"])
def test_a_reindex_with_something_to_do_loads_it(change: str, folder: Path, tmp_path: Path) -> None:
    out = tmp_path / "c.mms"
    _index(folder, out)
    LOADS.clear()
    if change == "image":
        from PIL import Image

        Image.new("RGB", (40, 30), (10, 200, 10)).save(folder / "red.png")
    elif change == "text":
        with (folder.parent / "notes.txt").open("a", encoding="utf-8") as f:
            f.write("third note\n")
    else:
        (folder / "red.png").unlink()
    result = _index(folder, out)
    assert LOADS == [MODEL]  # once, when first needed (an index update needs its no-match queries)
    assert result.indexes, "an index was updated"


def test_the_lazily_loaded_model_must_still_match_the_collection(folder: Path, tmp_path: Path) -> None:
    out = tmp_path / "c.mms"
    _index(folder, out)
    from mmsearch.encoders import registry

    monkeypatch_registry = dict(registry._cache)
    registry._cache.clear()
    register_scheme("loadcount", lambda spec, device: _Wider(str(spec)))
    try:
        (folder / "red.png").unlink()
        with pytest.raises(StoreError, match="dim or preprocessing"):
            _index(folder, out)
    finally:
        register_scheme("loadcount", lambda spec, device: ColourEncoder(str(spec)))
        registry._cache.clear()
        registry._cache.update(monkeypatch_registry)
    with pytest.raises(EncoderMismatchError):
        mmsearch.index(folder, out=out, model="colour:v1", workers=0)


class _Wider(ColourEncoder):
    @property
    def dim(self) -> int:  # type: ignore[override]
        return super().dim + 1


def test_the_cli_reindex_of_an_unchanged_folder_imports_no_model(folder: Path, tmp_path: Path) -> None:
    """The built-in model, whole process: the second `mmsearch index` imports neither onnxruntime nor torch."""
    pytest.importorskip("onnxruntime")
    out = tmp_path / "b.mms"
    code = (
        "import json, sys\n"
        "from mmsearch.cli.main import main\n"
        "try:\n    main(['index', sys.argv[1], '--out', sys.argv[2], '--model', 'builtin', '--workers', '0'])\n"
        "except SystemExit as exit:\n    assert not exit.code, exit.code\n"
        "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in "
        "('onnxruntime', 'torch', 'transformers', 'tokenizers'))))\n"
    )
    repo = Path(__file__).resolve().parents[1]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(repo)}
    runs = [subprocess.run([sys.executable, "-c", code, str(folder), str(out)], capture_output=True, text=True,
                           env=env, cwd=repo, timeout=600) for _ in range(2)]
    assert all(r.returncode == 0 for r in runs), runs[-1].stderr[-2000:]
    assert json.loads(runs[0].stdout.strip().splitlines()[-1])  # the first run embedded: a model loaded
    assert json.loads(runs[1].stdout.strip().splitlines()[-1]) == []


# -- the cores split between decode workers and the encoder, from measured costs ---------------------
def test_split_cores_follows_the_costs() -> None:
    from mmsearch.ingest.encode import split_cores

    assert split_cores(2, decode_s=0.001, encode_s=0.1) == 0  # OpenCLIP on 2 cores: the encoder gets both
    # the built-in model on large PNGs, 2 cores: decoding in this process beside the encoder thread wins (measured)
    assert split_cores(2, decode_s=0.011, encode_s=0.008, ipc_s=0.0003) == 0
    assert split_cores(2, decode_s=0.05, encode_s=0.001) == 2  # a nearly free encoder: both cores decode
    assert split_cores(16, decode_s=0.05, encode_s=0.01) == 4  # capped at MAX_AUTO_WORKERS
    assert split_cores(8, decode_s=0.01, encode_s=0.01) == 0  # encode-bound: workers would take nothing off it
    assert split_cores(8, decode_s=0.04, encode_s=0.01) >= 2  # one decoding thread cannot keep up
    assert split_cores(1, decode_s=1.0, encode_s=0.001) == 0  # one core: nothing to split
    # the pixels' transfer counts: what pays without it does not with it
    assert split_cores(4, decode_s=0.02, encode_s=0.005) >= 1
    assert split_cores(4, decode_s=0.02, encode_s=0.005, ipc_s=0.02) == 0


def test_workers_default_to_a_calibration(folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The first batches decode in this process (timed) while they are encoded (timed); the split for the rest is
    chosen from those costs, once, and asked for nothing when the workers are given."""
    import mmsearch.ingest.stage as stage
    from mmsearch.ingest import encode

    for n in range(70):  # enough files for decode workers to be considered (>= 2 batches)
        (folder / f"copy{n}.png").write_bytes((folder / "red.png").read_bytes())
    calls = []

    def recording(batcher: encode.BatchEncoder, decode_times: list[float], ipc_s: float) -> int:
        calls.append((len(decode_times), batcher.encoded_images))
        workers = encode.choose_workers(batcher, decode_times, ipc_s)
        calls.append(workers)
        return workers

    monkeypatch.setattr(stage, "choose_workers", recording)
    result = mmsearch.index(folder, out=tmp_path / "w.mms", model=MODEL, batch_size=8, dedup=False)
    assert calls[0][0] == 16 and calls[0][1] >= 8  # two batches decoded here; the first one already encoded
    assert 0 <= calls[1] <= encode.MAX_AUTO_WORKERS and len(calls) == 2
    assert result.report.images_embedded == 74
    calls.clear()
    mmsearch.index(folder, out=tmp_path / "x.mms", model=MODEL, batch_size=8, workers=0)
    assert calls == []  # asked for: no calibration
