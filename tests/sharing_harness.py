"""Many processes on one collection at once: writers (some killed with SIGKILL and started again), readers
re-opening and searching in a loop, and ``mmsearch serve`` polled over HTTP. Used by tests/test_sharing.py
(small) and benchmarks/sharing_stress.py (bigger).

Every process is a real OS process running the real code: writers are ``mmsearch.index`` with a slowed-down
colour model (so kills land mid-run), the server is the ``mmsearch serve`` command.
"""

from __future__ import annotations

import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent

SETUP = f"""
import sys, time
sys.path.insert(0, {str(TESTS)!r})
from fakes import ColourEncoder
from mmsearch.encoders import register_scheme

class Slow(ColourEncoder):
    delay = float(sys.argv[-1]) if sys.argv[-1].replace('.', '', 1).isdigit() else 0.0
    def encode_images(self, batch):
        time.sleep(self.delay)
        return super().encode_images(batch)

register_scheme("colour", lambda spec, device: Slow(str(spec)))
"""

WRITER = SETUP + """
import mmsearch
folder, out, shard_rows = sys.argv[1], sys.argv[2], int(sys.argv[3])
mmsearch.index(folder, out=out, model="colour:v1", batch_size=2, shard_rows=shard_rows, workers=0, wait_s=None,
               retention_s=0)
"""

READER = SETUP + """
import json, os, random
import mmsearch
out, stop, report = sys.argv[1], sys.argv[2], sys.argv[3]
rng = random.Random(os.getpid())
errors, searches, versions, col = [], 0, set(), None
while not os.path.exists(stop):
    try:
        if col is None or rng.random() < 0.3:
            col = mmsearch.open(out)
        else:
            col.refresh()
        hits = col.search("a red square", k=5)
        assert hits and all(h.uri is not None for h in hits), hits
        texts = col.search("a blue square", k=3, modality="text")
        assert all(t.text for t in texts), texts
        col.item(hits[0].id)
        versions.add(col.version)
        searches += 1
    except Exception as exc:
        errors.append(f"{type(exc).__name__}: {exc}")
json.dump({"errors": errors, "searches": searches, "versions": sorted(versions)}, open(report, "w"))
"""

SERVER = SETUP + """
from mmsearch.cli.main import main
main(["serve", sys.argv[1], "--port", sys.argv[2], "--threads", "2"])
"""


@dataclass
class Outcome:
    """What happened during one run."""

    folders: list[Path]
    out: Path
    writer_runs: int = 0
    kills: int = 0
    reader_errors: list[str] = field(default_factory=list)
    reader_searches: int = 0
    versions_seen: int = 0
    http_requests: int = 0
    http_5xx: int = 0
    http_errors: list[str] = field(default_factory=list)
    seconds: float = 0.0


def make_folders(base: Path, writers: int, images: int) -> list[Path]:
    """``writers + 1`` folders (the first is indexed before the run) of solid-colour PNGs with captions."""
    from fakes import COLOURS, NAMES

    folders = []
    for w in range(writers + 1):
        folder = base / f"folder{w}"
        folder.mkdir(parents=True)
        for i in range(images):
            name = NAMES[(w + i) % len(NAMES)]
            Image.new("RGB", (24 + w, 16 + i % 7), COLOURS[name]).save(folder / f"w{w}_{i:04d}_{name}.png")
            (folder / f"w{w}_{i:04d}_{name}.txt").write_text(f"a {name} square\n", encoding="utf-8")
        folders.append(folder)
    return folders


def run(base: Path, *, writers: int = 3, images: int = 12, readers: int = 2, kills: int = 3, seed: int = 0,
        encode_delay_s: float = 0.02, timeout_s: float = 240.0, shard_rows: int = 2) -> Outcome:
    """Run the whole scene once; returns what the readers, the server and the writers saw. ``shard_rows`` 2: many
    checkpoints for the kills to land between; larger: each run's rows in one small shard, merged as runs go."""
    import httpx

    rng = random.Random(seed)
    folders = make_folders(base, writers, images)
    out = base / "shared.mms"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), *sys.path]), "HF_HUB_OFFLINE": "1"}
    _run_writer(folders[0], out, env, encode_delay_s, shard_rows).wait(timeout=120)
    outcome = Outcome(folders, out)
    started = time.monotonic()
    stop = base / "stop"
    port = _free_port()
    server = subprocess.Popen([sys.executable, "-c", SERVER, str(out), str(port), "x"], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    reader_procs = [subprocess.Popen([sys.executable, "-c", READER, str(out), str(stop), str(base / f"reader{r}.json"),
                                      "x"], env=env) for r in range(readers)]
    try:
        client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30)
        _wait_for_server(client, server)
        pending = list(folders[1:])
        running: dict[Path, subprocess.Popen] = {}
        kills_left = kills
        while pending or running:
            if time.monotonic() - started > timeout_s:
                raise TimeoutError("the writers did not finish in time")
            while pending and len(running) < writers:
                folder = pending.pop(0)
                running[folder] = _run_writer(folder, out, env, encode_delay_s, shard_rows)
                outcome.writer_runs += 1
            _poll(client, outcome)
            for folder, proc in list(running.items()):
                if proc.poll() is not None:
                    del running[folder]
                    if proc.returncode != 0:
                        pending.append(folder)  # killed: its run is started again
                elif kills_left and rng.random() < 0.08:
                    proc.send_signal(signal.SIGKILL)
                    proc.wait()
                    kills_left -= 1
                    outcome.kills += 1
            time.sleep(0.05)
        for _ in range(10):  # the server moves to the final version within its 2 s check
            _poll(client, outcome)
            time.sleep(0.3)
    finally:
        stop.write_text("stop")
        for proc in reader_procs:
            proc.wait(timeout=60)
        server.send_signal(signal.SIGINT)
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
    for r in range(readers):
        report = json.loads((base / f"reader{r}.json").read_text())
        outcome.reader_errors += report["errors"]
        outcome.reader_searches += report["searches"]
        outcome.versions_seen = max(outcome.versions_seen, len(report["versions"]))
    outcome.seconds = time.monotonic() - started
    return outcome


def _run_writer(folder: Path, out: Path, env: dict[str, str], delay: float, shard_rows: int) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", WRITER, str(folder), str(out), str(shard_rows), str(delay)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _poll(client, outcome: Outcome) -> None:  # noqa: ANN001
    try:
        r = client.get("/api/collections/shared/search", params={"q": "a green square", "k": 5})
    except Exception as exc:  # noqa: BLE001 - a refused connection counts as a failure too
        outcome.http_errors.append(repr(exc))
        return
    outcome.http_requests += 1
    if r.status_code >= 500:
        outcome.http_5xx += 1
        outcome.http_errors.append(r.text[:200])
    elif r.status_code != 200 or not r.json()["hits"]:
        outcome.http_errors.append(f"{r.status_code}: {r.text[:200]}")


def _wait_for_server(client, server: subprocess.Popen) -> None:  # noqa: ANN001
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"mmsearch serve exited: {server.stderr.read().decode()[-2000:]}")
        try:
            if client.get("/api/collections").status_code == 200:
                return
        except Exception:  # noqa: BLE001 - not listening yet
            pass
        time.sleep(0.2)
    raise RuntimeError("mmsearch serve did not start")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
