"""SIGKILL the indexer several times at random points: the final collection equals an uninterrupted run's
(same ids, uris, hashes, captions and embeddings; nothing twice, nothing lost)."""

from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
from fakes import COLOURS, ColourEncoder
from PIL import Image

from mmsearch.store import Store


class SlowColour(ColourEncoder):
    """Slow enough to be killed mid-run."""

    def encode_images(self, batch):  # noqa: ANN001, ANN201
        time.sleep(0.15)
        return super().encode_images(batch)


SCRIPT = """
import sys
sys.path.insert(0, {tests!r})
from test_ingest_resume import SlowColour
from mmsearch.encoders import register_scheme
register_scheme("slowcolour", lambda spec, device: SlowColour(str(spec)))
import mmsearch
mmsearch.index([{folder!r}, {corpus!r}], out={out!r}, model="slowcolour:v1", batch_size=2, shard_rows=3, workers=2)
"""


def make_corpus(root: Path) -> tuple[Path, Path]:
    folder = root / "imgs"
    names = list(COLOURS)
    for i in range(30):
        sub = folder / f"d{i % 3}"
        sub.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (10 + i, 12), COLOURS[names[i % len(names)]]).save(sub / f"img{i:02d}.png")
        if i % 2:
            (sub / f"img{i:02d}.txt").write_text(f"a {names[i % len(names)]} thing number {i}")
    shutil.copy(folder / "d0" / "img00.png", folder / "d1" / "dup.png")
    corpus = root / "notes.txt"
    corpus.write_text("".join(f"note {i} about {names[i % 8]}\n" for i in range(20)))
    return folder, corpus


def run(folder: Path, corpus: Path, out: Path, kill_after_s: float | None) -> None:
    script = SCRIPT.format(tests=str(Path(__file__).parent), folder=str(folder), corpus=str(corpus), out=str(out))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.Popen([sys.executable, "-c", script], env=env, stderr=subprocess.DEVNULL)
    if kill_after_s is None:
        assert proc.wait(timeout=120) == 0
        return
    try:
        proc.wait(timeout=kill_after_s)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGKILL)
        proc.wait()


def table(out: Path, modality: str) -> pa.Table:
    columns = ["id", "uri", "sha256", "width", "height", "caption", "embedding"] if modality == "images" \
        else ["id", "text", "source", "key", "image_id", "embedding"]
    return Store.open(out).scan(modality, columns).sort_by("id")


def test_killed_many_times_equals_uninterrupted(tmp_path: Path) -> None:
    folder, corpus = make_corpus(tmp_path)
    clean = tmp_path / "clean.mms"
    run(folder, corpus, clean, None)
    killed = tmp_path / "killed.mms"
    rng = random.Random(4)
    committed = []
    for _ in range(4):
        run(folder, corpus, killed, rng.uniform(1.2, 2.5))
        done = Store.open(killed).manifest.rows("images") if (killed / "manifest.json").exists() else 0
        committed.append(done)
    assert sum(done < 31 for done in committed) >= 2, f"too few runs were killed mid-way: {committed}"
    run(folder, corpus, killed, None)
    for modality in ("images", "texts"):
        expected, got = table(clean, modality), table(killed, modality)
        assert got.num_rows == expected.num_rows
        assert got.equals(expected), modality
    images = table(killed, "images")
    assert images.num_rows == 31 and len(set(images.column("uri").to_pylist())) == 31
    assert Store.open(killed).manifest.deleted == {"images": [], "texts": []}
