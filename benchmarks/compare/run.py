"""mmsearch against clip-retrieval, LanceDB, rclip and the naive loop: same machine, corpus and weights, one run.

    python benchmarks/compare/run.py --sizes 100,400            # sets up the peers' venvs on first use

It runs under any Python 3: without psutil and matplotlib at hand it builds a small venv with them
(``--work``/venvs/harness) and runs itself again there.

What it does, in order:

1. Sets up each peer in its own venv under ``--work`` (default /tmp/mms-compare) with pinned versions from PyPI
   (``PINS``). torch, torchvision, triton and the CUDA wheels are hard-linked from mmsearch's venv first
   (``link_torch.py``), so every contender runs the very same torch build and the ~5 GB of CUDA wheels are not
   copied per venv; pip installs everything else. A peer whose install fails gets a row saying so, with pip's error.
2. Saves one randomly initialised OpenCLIP model (``--arch``, default ViT-B-32-256, seed 0) to a file; mmsearch
   (``--model openclip:ARCH@FILE``), clip-retrieval (``--clip_model open_clip:ARCH/FILE``), LanceDB's
   ``open-clip`` embedding function (``pretrained=FILE``) and the naive loop all load that file, and
   ``peers/rclip_local_model.py`` exports rclip's two ONNX files from it (rclip runs ViT-B-32-256 only, so with
   another ``--arch`` rclip's row says it was left out). One-time work per weights file happens before the timed
   cells and is recorded apart: rclip's export, and mmsearch's ONNX export and label vocabulary (an untimed
   ``mmsearch index`` of 8 images).
3. Copies real images from ../shared/data (drawings, emoji, flags, photos, interleaved) into ``--corpus``, at
   each size.
4. For each size and system: the build runs as a user runs it (CLI, or the user's script) in a fresh process,
   timed end to end (start-up and model load included) while psutil polls the whole process tree for peak RSS
   and PSS (PSS counts pages shared between processes, e.g. forked workers, once). Then, in another process,
   text queries: p50 latency in-process after warm-up, recall@10 of the system's search against exact search
   over the system's own stored embeddings with the same query vector, and the stored embeddings themselves,
   compared with the naive loop's (mean cosine per image: the check that everyone ran the same weights).
   Each (size, system) cell holds the benchmark lock (``--lock``, default /tmp/bench.lock, ``flock``) while it
   runs, so other timed runs on the machine do not overlap it; do not wrap this script in ``flock`` itself.
5. Prints one table; writes benchmarks/results/compare.json (raw numbers, errors, pip freeze of every venv) and
   compare.png.

rclip downloads its model (ViT-B-32-256 in ONNX) from the Hugging Face hub on first run unless the files already
lie in its data folder. It is run twice: as a user runs it here (no hub: the exact error is recorded) and with the
shared weights file exported into its data folder. Its build is its first ``rclip QUERY`` in the folder (rclip
indexes the folder it is asked in, then answers); its queries go through ``RClip.search`` (``peers/rclip_query.py``).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

try:
    import psutil
except ImportError:  # main() reruns this script in a venv that has it
    psutil = None

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
PEERS = HERE / "peers"
RESULTS = REPO / "benchmarks" / "results"
MMS_PY = REPO / ".venv" / "bin" / "python"
MMS_CLI = REPO / ".venv" / "bin" / "mmsearch"
DATA = REPO.parent / "shared" / "data"

# The peers' versions (the newest on PyPI when this was written). Everything else they pull in is recorded
# (pip freeze) in the results JSON.
PINS: dict[str, list[str]] = {
    # clip-anytorch (imported by clip-retrieval's all_clip) needs pkg_resources, gone from setuptools 81+: with
    # today's setuptools `clip-retrieval inference` dies on import (see PIP_NOTES); the last setuptools with it
    # is pinned.
    "clip-retrieval": ["clip-retrieval==2.45.0", "setuptools==80.10.2"],
    "lancedb": ["lancedb==0.40.0", "open-clip-torch==3.3.0", "pillow==13.0.0", "pandas==3.1.1"],
    "rclip": ["rclip==3.3.0"],
}
PIP_NOTES = {
    "clip-retrieval": "installed as `pip install clip-retrieval==2.45.0` alone, `clip-retrieval inference` fails at import: "
                      "`ModuleNotFoundError: No module named 'pkg_resources'` (clip/clip.py, from clip-anytorch 2.6.0, "
                      "with setuptools 84.2.1); setuptools==80.10.2 is pinned to run it",
}
LINK_TORCH = {"clip-retrieval", "lancedb"}  # rclip runs ONNX Runtime, no torch
HARNESS = ["psutil", "numpy", "matplotlib", "pillow"]  # what this script needs (see ensure_harness)
RCLIP_ARCH = "ViT-B-32-256"  # the only architecture rclip 3.3 runs (256 px preprocessing, 512-d vectors)

SOURCES = ["art4apps_words/images", "emoji/openmoji_256", "iso_flags/images", "named_sample_images/images",
           "emoji/google_noto_64"]
EXTS = {".jpg", ".jpeg", ".png"}

QUERIES = [  # 20 text queries; each system embeds them with its own text path
    "a cat", "a red car", "a dog", "a flag with a star", "a smiling face", "a house", "an apple", "a bird",
    "a tree", "a person running", "a blue flag with a white cross", "a cup of coffee", "a boat on the sea",
    "a heart", "a clock", "a bicycle", "mountains", "a fish", "a flower", "a lighthouse",
]


# ----------------------------------------------------------------------------------------------------------
# measuring


STEP_TIMEOUT_S = 3600.0  # --step-timeout: a step still running then is killed and its row says so


def measured(cmd: list[str], *, env: dict[str, str] | None = None, cwd: Path | None = None, timeout: float | None = None,
             log: Path | None = None) -> dict:
    """Run ``cmd``; wall time and the peak of the process tree's summed RSS and PSS (MiB), polled every 0.1 s."""
    timeout = STEP_TIMEOUT_S if timeout is None else min(timeout, STEP_TIMEOUT_S)
    full_env = {**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})}
    out = open(log, "wb") if log else subprocess.DEVNULL
    started = time.perf_counter()
    proc = psutil.Popen(cmd, env=full_env, cwd=cwd, stdout=out, stderr=subprocess.STDOUT)
    peak_rss = peak_pss = 0
    rc = None
    while rc is None:
        try:
            procs = [proc, *proc.children(recursive=True)]
        except psutil.NoSuchProcess:
            procs = []
        rss = pss = 0
        for p in procs:
            try:
                info = p.memory_full_info()
                rss, pss = rss + info.rss, pss + getattr(info, "pss", info.rss)
            except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                pass
        peak_rss, peak_pss = max(peak_rss, rss), max(peak_pss, pss)
        try:
            rc = proc.wait(timeout=0.1)
        except psutil.TimeoutExpired:
            if time.perf_counter() - started > timeout:
                for p in [proc, *proc.children(recursive=True)]:
                    p.kill()
                rc = proc.wait()
                rc = f"timeout after {timeout:.0f}s"
    wall = time.perf_counter() - started
    if log:
        out.close()
    tail = log.read_text(errors="replace")[-3000:] if log else ""
    return {"cmd": cmd, "rc": rc, "wall_s": wall, "peak_rss_mib": peak_rss / 2**20, "peak_pss_mib": peak_pss / 2**20,
            "log": str(log) if log else None, "log_tail": tail}


def error_of(text: str) -> str:
    """The most telling line of a failure log: the last ``...Error: ...`` line, or the last non-empty line."""
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    for ln in reversed(lines):
        if "Error" in ln.split(":")[0] or ln.startswith(("ERROR", "error:")):
            return ln[:600]
    return lines[-1][:600] if lines else "(no output)"


def du_mib(*paths: Path) -> float:
    total = 0
    for path in paths:
        if path.is_file():
            total += path.stat().st_size
        elif path.is_dir():
            total += sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
    return total / 2**20


# ----------------------------------------------------------------------------------------------------------
# setup


def setup_venv(name: str, work: Path) -> dict:
    venv = work / "venvs" / name
    logs = work / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    marker = venv / ".mms-compare-installed.json"
    if marker.exists():
        return json.loads(marker.read_text())
    if not (venv / "bin" / "python").exists():  # an existing venv is reused: pip below makes it match the pins
        subprocess.run([shutil.which("python3") or "python3", "-m", "venv", str(venv)], check=True)
    site = next((venv / "lib").glob("python3*/site-packages"))
    if name in LINK_TORCH:
        mms_site = next((REPO / ".venv" / "lib").glob("python3*/site-packages"))
        subprocess.run([str(MMS_PY), str(HERE / "link_torch.py"), str(mms_site), str(site)], check=True,
                       stdout=subprocess.DEVNULL)
    log = logs / f"{name}.install.log"
    with open(log, "wb") as f:
        rc = subprocess.run([str(venv / "bin" / "pip"), "install", *PINS[name]], stdout=f, stderr=subprocess.STDOUT).returncode
    text = log.read_text(errors="replace")
    freeze = subprocess.run([str(venv / "bin" / "pip"), "freeze"], capture_output=True, text=True).stdout.split()
    state = {"venv": str(venv), "pins": PINS[name], "install_rc": rc, "freeze": freeze, "note": PIP_NOTES.get(name),
             "error": None if rc == 0 else error_of(text), "log": str(log)}
    marker.write_text(json.dumps(state, indent=1))
    return state


def ensure_weights(arch: str, work: Path) -> Path:
    path = work / "weights" / f"{arch}-random-seed0.pt"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        code = ("import sys, torch, open_clip; torch.manual_seed(0); "
                "m = open_clip.create_model(sys.argv[1], pretrained=None); torch.save(m.state_dict(), sys.argv[2])")
        subprocess.run([str(MMS_PY), "-c", code, arch, str(path)], check=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    return path


def ensure_rclip_model(arch: str, weights: Path, work: Path) -> tuple[Path, dict]:
    """rclip's data folder with its two ONNX files exported from ``weights`` (made once); (folder, export record)."""
    folder = work / f"rclip-model-{weights.stem}"
    record = folder / "ViT-B-32-256-datacomp_s34b_b86k" / "export.json"
    if not record.exists():
        started = time.perf_counter()
        subprocess.run([str(MMS_PY), str(PEERS / "rclip_local_model.py"), str(folder), str(weights)], check=True,
                       env={**os.environ, "HF_HUB_OFFLINE": "1"}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        data = json.loads(record.read_text())
        data["export_s"] = round(time.perf_counter() - started, 1)
        record.write_text(json.dumps(data, indent=1))
    data = json.loads(record.read_text())
    if Path(data["weights"]) != weights.resolve():
        raise SystemExit(f"{folder} was exported from {data['weights']}, not {weights}: remove it and rerun")
    return folder, data


def link_tree(source: Path, target: Path) -> None:
    """``target`` as a copy of ``source`` made of hard links (the ONNX files are only read)."""
    for f in source.rglob("*"):
        if f.is_file():
            dst = target / f.relative_to(source)
            dst.parent.mkdir(parents=True, exist_ok=True)
            os.link(f, dst)


def ensure_harness(work: Path) -> None:
    """Without psutil (or matplotlib) here, build ``work/venvs/harness`` with them and rerun this script there."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        pass
    else:
        if psutil is not None:
            return
    venv = work / "venvs" / "harness"
    if os.environ.get("MMS_COMPARE_HARNESS"):
        raise SystemExit(f"{venv} lacks one of {HARNESS}: remove it and rerun")
    if not (venv / "bin" / "python").exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run([str(venv / "bin" / "pip"), "install", "-q", *HARNESS], check=True)
    os.execve(str(venv / "bin" / "python"), [str(venv / "bin" / "python"), __file__, *sys.argv[1:]],
              {**os.environ, "MMS_COMPARE_HARNESS": "1"})


class BenchLock:
    """``flock`` on the shared benchmark lock file for one timed cell (no-op when ``path`` is empty)."""

    def __init__(self, path: str) -> None:
        self.path, self.file, self.waited_s = path, None, 0.0

    def __enter__(self) -> BenchLock:
        if self.path:
            import fcntl

            self.file = open(self.path, "a")
            started = time.perf_counter()
            fcntl.flock(self.file, fcntl.LOCK_EX)
            self.waited_s = time.perf_counter() - started
        return self

    def __exit__(self, *exc: object) -> None:
        if self.file is not None:
            self.file.close()  # releases the lock


def build_corpus(size: int, root: Path) -> Path:
    """``size`` real images, interleaved from the sources (sorted within each), copied to ``root/n{size}``."""
    folder = root / f"n{size}"
    if folder.is_dir() and len(list(folder.iterdir())) == size:
        return folder
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    lists = [sorted(p for p in (DATA / s).iterdir() if p.suffix.lower() in EXTS) for s in SOURCES]
    picked: list[Path] = []
    i = 0
    while len(picked) < size:
        if all(i >= len(lst) for lst in lists):
            raise SystemExit(f"only {len(picked)} images in {SOURCES}; asked for {size}")
        picked += [lst[i] for lst in lists if i < len(lst)]
        i += 1
    for n, src in enumerate(picked[:size]):
        shutil.copy(src, folder / f"{n:05d}_{src.parent.parent.name}_{src.name}")
    return folder


def warm_page_cache(folder: Path) -> None:
    for f in folder.iterdir():
        f.read_bytes()


# ----------------------------------------------------------------------------------------------------------
# the systems: each returns one row


def row(system: str, size: int, **kw: object) -> dict:
    return {"system": system, "images": size, "status": "ok", "error": None, **kw}


def finish(r: dict, builds: list[dict], query: dict | None, disk_index: float | None, disk_total: float | None) -> dict:
    wall = sum(b["wall_s"] for b in builds)
    r.update(wall_s=wall, images_per_s=r["images"] / wall, peak_rss_mib=max(b["peak_rss_mib"] for b in builds),
             peak_pss_mib=max(b["peak_pss_mib"] for b in builds), disk_index_mib=disk_index, disk_total_mib=disk_total,
             builds=builds)
    if query is not None:
        r.update(recall_at_10=query["recall_at_10"], query_p50_ms=query["latency_p50_ms"], rows=query["rows"],
                 query_latency_ms=query["latency_ms"], query_extra={k: v for k, v in query.items()
                                                                    if k not in ("returned", "exact", "latency_ms", "queries")})
    return r


def failed(r: dict, stage: str, result: dict) -> dict:
    r.update(status=f"{stage} failed (rc {result['rc']})", error=error_of(result["log_tail"]), builds=[result])
    return r


def run_query(cmd: list[str], out: Path, log: Path, env: dict | None = None) -> tuple[dict, dict | None]:
    result = measured(cmd, log=log, env={"PYTHONPATH": str(PEERS), **(env or {})})
    if result["rc"] != 0 or not out.exists():
        return result, None
    return result, json.loads(out.read_text())


def run_mmsearch(ctx: dict, size: int, corpus: Path, work: Path) -> dict:
    r = row("mmsearch", size, version=ctx["mmsearch_version"])
    out = work / "mmsearch.mms"
    build = measured([str(MMS_CLI), "index", str(corpus), "--out", str(out), "--model", ctx["spec"], "--json"],
                     log=work / "mmsearch.build.log")
    if build["rc"] != 0:
        return failed(r, "index", build)
    qres, q = run_query([str(MMS_PY), str(PEERS / "mmsearch_query.py"), str(out), ctx["queries"], str(work / "mmsearch.q.json")],
                        work / "mmsearch.q.json", work / "mmsearch.query.log")
    if q is None:
        return failed(r, "query", qres)
    return finish(r, [build], q, du_mib(out / "index"), du_mib(out))


def run_naive(ctx: dict, size: int, corpus: Path, work: Path) -> dict:
    r = row("naive loop", size, version="PIL + open_clip + numpy, one image at a time (mmsearch's venv)")
    out = work / "naive.npz"
    build = measured([str(MMS_PY), str(PEERS / "naive.py"), "build", str(corpus), str(out), ctx["arch"], ctx["weights"]],
                     log=work / "naive.build.log", env={"PYTHONPATH": str(PEERS)})
    if build["rc"] != 0:
        return failed(r, "build", build)
    qres, q = run_query([str(MMS_PY), str(PEERS / "naive.py"), "query", str(out), ctx["arch"], ctx["weights"], ctx["queries"],
                         str(work / "naive.q.json")], work / "naive.q.json", work / "naive.query.log")
    if q is None:
        return failed(r, "query", qres)
    return finish(r, [build], q, du_mib(out), du_mib(out))


def run_clip_retrieval(ctx: dict, size: int, corpus: Path, work: Path) -> dict:
    venv = ctx["venvs"]["clip-retrieval"]
    r = row("clip-retrieval", size, version=" ".join(venv["pins"]))
    if venv["install_rc"] != 0:
        r.update(status="install failed", error=venv["error"])
        return r
    bin_ = Path(venv["venv"]) / "bin"
    emb, idx = work / "cr-embeddings", work / "cr-index"
    shutil.rmtree(emb, ignore_errors=True)
    shutil.rmtree(idx, ignore_errors=True)
    model = f"open_clip:{ctx['arch']}/{ctx['weights']}"
    inference = measured([str(bin_ / "clip-retrieval"), "inference", "--input_dataset", str(corpus), "--output_folder", str(emb),
                          "--input_format", "files", "--clip_model", model, "--enable_text", "False"],
                         log=work / "clip-retrieval.inference.log")
    if inference["rc"] != 0:
        return failed(r, "clip-retrieval inference", inference)
    index = measured([str(bin_ / "clip-retrieval"), "index", "--embeddings_folder", str(emb), "--index_folder", str(idx)],
                     log=work / "clip-retrieval.index.log")
    if index["rc"] != 0:
        r = failed(r, "clip-retrieval index", index)
        r["builds"] = [inference, index]
        return r
    qres, q = run_query([str(bin_ / "python"), str(PEERS / "clip_retrieval_query.py"), str(emb), str(idx), model, ctx["queries"],
                         str(work / "cr.q.json")], work / "cr.q.json", work / "clip-retrieval.query.log")
    if q is None:
        return failed(r, "query", qres)
    return finish(r, [inference, index], q, du_mib(idx), du_mib(idx, emb))


def run_lancedb(ctx: dict, size: int, corpus: Path, work: Path) -> dict:
    venv = ctx["venvs"]["lancedb"]
    r = row("LanceDB", size, version=" ".join(venv["pins"][:2]))
    if venv["install_rc"] != 0:
        r.update(status="install failed", error=venv["error"])
        return r
    py = str(Path(venv["venv"]) / "bin" / "python")
    db = work / "lancedb"
    shutil.rmtree(db, ignore_errors=True)
    build = measured([py, str(PEERS / "lancedb_peer.py"), "build", str(corpus), str(db), ctx["arch"], ctx["weights"]],
                     log=work / "lancedb.build.log", env={"PYTHONPATH": str(PEERS)})
    if build["rc"] != 0:
        return failed(r, "build", build)
    qres, q = run_query([py, str(PEERS / "lancedb_peer.py"), "query", str(db), ctx["arch"], ctx["weights"], ctx["queries"],
                         str(work / "lancedb.q.json")], work / "lancedb.q.json", work / "lancedb.query.log")
    if q is None:
        return failed(r, "query", qres)
    index_note = json.loads((db / "index_note.json").read_text()) if (db / "index_note.json").exists() else {}
    r["index_note"] = index_note
    return finish(r, [build], q, None, du_mib(db))


def run_rclip(ctx: dict, size: int, corpus: Path, work: Path) -> list[dict]:
    venv = ctx["venvs"]["rclip"]
    as_user = row("rclip (as a user runs it here)", size, version=" ".join(venv["pins"]))
    local = row("rclip", size, version=" ".join(venv["pins"]) + " (ONNX files exported from the shared weights)")
    if venv["install_rc"] != 0:
        for r in (as_user, local):
            r.update(status="install failed", error=venv["error"])
        return [as_user, local]
    cli = str(Path(venv["venv"]) / "bin" / "rclip")
    rows = []
    # 1. as a user runs it: first run downloads the model from the hub, which this machine cannot reach.
    data = work / "rclip-data-empty"
    shutil.rmtree(data, ignore_errors=True)
    res = measured([cli, "-f", "-t", "10", "a cat"], cwd=corpus, env={"RCLIP_DATADIR": str(data)}, log=work / "rclip.user.log",
                   timeout=600)
    if res["rc"] != 0:
        rows.append(failed(as_user, "model download", res))
    else:
        rows.append(finish(as_user, [res], None, None, du_mib(data)))
    if ctx["rclip_model"] is None:
        local.update(status=f"left out: rclip 3.3 runs {RCLIP_ARCH} only, this run's --arch is {ctx['arch']}")
        return [*rows, local]
    # 2. the shared weights file, exported to the ONNX files rclip loads; the build is rclip's first query in the folder
    data = work / "rclip-data"
    shutil.rmtree(data, ignore_errors=True)
    link_tree(ctx["rclip_model"], data)
    model_mib = du_mib(data)
    env = {"RCLIP_DATADIR": str(data)}
    build = measured([cli, "-f", "-t", "10", "a cat"], cwd=corpus, env=env, log=work / "rclip.build.log")
    if build["rc"] != 0:
        return [*rows, failed(local, "index", build)]
    qres, q = run_query([str(Path(venv["venv"]) / "bin" / "python"), str(PEERS / "rclip_query.py"), str(corpus),
                         ctx["queries"], str(work / "rclip.q.json")], work / "rclip.q.json", work / "rclip.query.log", env=env)
    if q is None:
        return [*rows, failed(local, "query", qres)]
    return [*rows, finish(local, [build], q, None, du_mib(data) - model_mib)]


SYSTEMS = {"mmsearch": run_mmsearch, "clip-retrieval": run_clip_retrieval, "lancedb": run_lancedb, "naive": run_naive,
           "rclip": run_rclip}


# ----------------------------------------------------------------------------------------------------------
# agreement, table, chart


def has_alpha(path: str) -> bool:
    from PIL import Image

    with Image.open(path) as im:
        return im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info)


def agreement(work: Path, rows: list[dict]) -> None:
    """Mean cosine between each system's stored embedding of an image and the naive loop's, over all images and
    separately over opaque ones (transparent PNGs differ by design: mmsearch composites them over white, the naive
    loop's ``convert("RGB")`` drops the alpha channel)."""
    ref_file = work / "naive.npz"
    if not ref_file.exists():
        return
    ref = np.load(ref_file)
    ref_map = {str(p): v for p, v in zip(ref["paths"], ref["vectors"])}
    alpha = {p: has_alpha(p) for p in ref_map}
    files = {"mmsearch": "mmsearch.q.npz", "clip-retrieval": "cr.q.npz", "LanceDB": "lancedb.q.npz", "rclip": "rclip.q.npz",
             "naive loop": "naive.q.npz"}
    for r in rows:
        f = work / files.get(r["system"], "-")
        if r["status"] != "ok" or not f.exists() or r["system"] == "naive loop":
            continue
        d = np.load(f)
        pairs = [(str(p), float(v @ ref_map[str(p)])) for p, v in zip(d["paths"], d["vectors"]) if str(p) in ref_map]
        cos = [c for _, c in pairs]
        opaque = [c for p, c in pairs if not alpha[p]]
        r["cos_vs_naive_mean"] = float(np.mean(cos)) if cos else None
        r["cos_vs_naive_min"] = float(np.min(cos)) if cos else None
        r["cos_vs_naive_opaque_mean"] = float(np.mean(opaque)) if opaque else None
        r["cos_vs_naive_opaque_min"] = float(np.min(opaque)) if opaque else None
        r["cos_vs_naive_n"], r["cos_vs_naive_opaque_n"] = len(cos), len(opaque)
    top10_vs_mmsearch(work, rows, files)


def top10_vs_mmsearch(work: Path, rows: list[dict], files: dict[str, str]) -> None:
    """Per system, the mean share of mmsearch's text-query top 10 (same 20 queries) that the system also returned."""
    ours_file = work / "mmsearch.q.json"
    if not ours_file.exists():
        return
    ours = [[str(Path(p).resolve()) for p in hits] for hits in json.loads(ours_file.read_text())["returned"]]
    for r in rows:
        f = (work / files.get(r["system"], "-")).with_suffix(".json")
        if r["status"] != "ok" or not f.exists():
            continue
        theirs = [[str(Path(p).resolve()) for p in hits] for hits in json.loads(f.read_text())["returned"]]
        r["top10_overlap_vs_mmsearch"] = float(np.mean([len(set(a) & set(b)) / max(1, len(a)) for a, b in zip(ours, theirs)]))


def fmt(v: object, spec: str) -> str:
    return "–" if v is None else format(v, spec)


def table(rows: list[dict]) -> str:
    """The markdown table; "x mmsearch" is a system's images/s over mmsearch's at the same size, same run."""
    head = ("| system | images | status | end-to-end s | images/s | x mmsearch | peak RSS MiB (tree, summed) | peak PSS MiB | "
            "index MiB | on disk MiB | recall@10 | query p50 ms | cos vs naive | cos vs naive, opaque images | "
            "top-10 shared with mmsearch |")
    lines = [head, "|" + "---|" * 15]
    ours = {r["images"]: r.get("images_per_s") for r in rows if r["system"] == "mmsearch" and r["status"] == "ok"}
    for r in rows:
        status = r["status"] if r["status"] == "ok" else f"{r['status']}: `{r['error']}`"
        if r.get("images_per_s") and ours.get(r["images"]):
            r["x_mmsearch"] = r["images_per_s"] / ours[r["images"]]
        cells = [r["system"], str(r["images"]), status] + [
            fmt(r.get(key), spec) for key, spec in (
                ("wall_s", ".1f"), ("images_per_s", ".2f"), ("x_mmsearch", ".2f"), ("peak_rss_mib", ".0f"),
                ("peak_pss_mib", ".0f"),
                ("disk_index_mib", ".2f"), ("disk_total_mib", ".2f"), ("recall_at_10", ".3f"), ("query_p50_ms", ".1f"),
                ("cos_vs_naive_mean", ".4f"), ("cos_vs_naive_opaque_mean", ".4f"), ("top10_overlap_vs_mmsearch", ".3f"))]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def chart(rows: list[dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = [r for r in rows if r["status"] == "ok"]
    systems = list(dict.fromkeys(r["system"] for r in ok))
    sizes = sorted({r["images"] for r in ok})
    metrics = [("images_per_s", "end-to-end images/s (higher is better)"), ("peak_pss_mib", "peak PSS MiB, process tree"),
               ("query_p50_ms", "text query p50 ms (in-process)")]
    fig, axes = plt.subplots(1, 3, figsize=(17, 5.5))
    width = 0.8 / max(1, len(systems))
    for ax, (key, label) in zip(axes, metrics):
        for i, s in enumerate(systems):
            vals = [next((r.get(key) for r in ok if r["system"] == s and r["images"] == n), None) for n in sizes]
            xs = [j + i * width for j, v in enumerate(vals) if v is not None]
            ax.bar(xs, [v for v in vals if v is not None], width, label=s.replace(" (", "\n("))
        ax.set_xticks([j + width * (len(systems) - 1) / 2 for j in range(len(sizes))], [f"{n} images" for n in sizes])
        ax.set_title(label, fontsize=10)
    axes[0].legend(fontsize=7)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


# ----------------------------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="100,400", help="corpus sizes, comma-separated")
    parser.add_argument("--arch", default=RCLIP_ARCH, help="OpenCLIP architecture every contender loads (random init)")
    parser.add_argument("--systems", default=",".join(SYSTEMS), help=f"subset of {','.join(SYSTEMS)}")
    parser.add_argument("--work", type=Path, default=Path("/tmp/mms-compare"), help="venvs, weights, builds, logs")
    parser.add_argument("--corpus", type=Path, default=Path("/tmp/compare-corpus"))
    parser.add_argument("--out", type=Path, default=RESULTS / "compare.json")
    parser.add_argument("--step-timeout", type=float, default=3600.0, help="seconds; a slower step is killed and reported")
    parser.add_argument("--lock", default="/tmp/bench.lock",
                        help="benchmark lock file, held (flock) by each timed cell; '' for none")
    parser.add_argument("--report-only", action="store_true",
                        help="measure nothing: recompute the embedding agreement from the kept run folders and rewrite the "
                             "table, JSON and chart of --out")
    args = parser.parse_args()
    ensure_harness(args.work)
    os.environ["HF_HUB_OFFLINE"] = "1"
    global STEP_TIMEOUT_S
    STEP_TIMEOUT_S = args.step_timeout
    if args.report_only:
        data = json.loads(args.out.read_text())
        for size in sorted({r["images"] for r in data["rows"]}):
            agreement(args.work / "runs" / f"n{size}", [r for r in data["rows"] if r["images"] == size])
        data["table_markdown"] = table(data["rows"])
        args.out.write_text(json.dumps(data, indent=1, default=str))
        chart(data["rows"], args.out.with_suffix(".png"), data.get("chart_title", ""))
        print(data["table_markdown"])
        return
    sizes = [int(s) for s in args.sizes.split(",")]
    systems = [s for s in args.systems.split(",") if s]

    print("setting up the peers' venvs (first run only)...", flush=True)
    venvs = {name: setup_venv(name, args.work) for name in PINS if name in systems or (name == "rclip" and "rclip" in systems)}
    for name, v in venvs.items():
        print(f"  {name}: {'ok' if v['install_rc'] == 0 else 'FAILED: ' + v['error']}")
    weights = ensure_weights(args.arch, args.work)
    prepare: dict[str, object] = {}
    rclip_model = None
    if "rclip" in systems and args.arch == RCLIP_ARCH:
        rclip_model, prepare["rclip_export"] = ensure_rclip_model(args.arch, weights, args.work)
    if "mmsearch" in systems:  # once per weights file: ONNX export and label vocabulary, into mmsearch's model cache
        few = build_corpus(8, args.corpus)
        warm = measured([str(MMS_CLI), "index", str(few), "--out", str(args.work / "mmsearch-warmup.mms"), "--model",
                         f"openclip:{args.arch}@{weights}"], log=args.work / "logs" / "mmsearch.warmup.log")
        shutil.rmtree(args.work / "mmsearch-warmup.mms", ignore_errors=True)
        if warm["rc"] != 0:
            raise SystemExit(f"mmsearch's warm-up index failed: {error_of(warm['log_tail'])}")
        prepare["mmsearch_warmup_index_8_images_s"] = round(warm["wall_s"], 1)
    print(f"prepared: {prepare}", flush=True)
    queries = args.work / "queries.json"
    queries.write_text(json.dumps(QUERIES))
    mms_version = subprocess.run([str(MMS_PY), "-c", "import mmsearch; print(mmsearch.__version__)"], capture_output=True,
                                 text=True).stdout.strip()
    ctx = {"arch": args.arch, "weights": str(weights), "spec": f"openclip:{args.arch}@{weights}", "queries": str(queries),
           "venvs": venvs, "rclip_model": rclip_model, "mmsearch_version": f"mmsearch {mms_version}"}

    rows: list[dict] = []
    for size in sizes:
        corpus = build_corpus(size, args.corpus)
        work = args.work / "runs" / f"n{size}"
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)
        size_rows: list[dict] = []
        for name in systems:
            warm_page_cache(corpus)
            with BenchLock(args.lock) as lock:
                load = os.getloadavg()[0]
                print(f"[{size} images] {name} ... (waited {lock.waited_s:.0f} s for the lock, load {load:.1f})", flush=True)
                got = SYSTEMS[name](ctx, size, corpus, work)
                load_after = os.getloadavg()[0]
            for r in got if isinstance(got, list) else [got]:
                r.update(load_avg_1min_before=load, load_avg_1min_after=load_after)
                print(f"    {r['status']}" + (f" {r['wall_s']:.1f} s" if r.get("wall_s") else "") +
                      (f": {r['error']}" if r.get("error") else ""), flush=True)
                size_rows.append(r)
                with open(work / "rows.jsonl", "a") as f:  # kept as it goes: an interrupted run still has its rows
                    f.write(json.dumps(r, default=str) + "\n")
        agreement(work, size_rows)
        rows += size_rows

    cpu = platform.processor() or next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                                        if ln.startswith("model name")), "?")
    machine = {"cpus": os.cpu_count(), "cpu": cpu, "ram_gib": round(psutil.virtual_memory().total / 2**30, 1),
               "platform": platform.platform(), "python": platform.python_version(),
               "load_avg_at_end": os.getloadavg()}
    title = (f"{args.arch} (random weights, same file for all), real images, {machine['cpus']} CPUs, "
             f"{datetime.date.today().isoformat()}")
    print()
    print(table(rows))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({
        "benchmark": "compare", "date": datetime.date.today().isoformat(), "machine": machine,
        "command": "python benchmarks/compare/run.py " + " ".join(sys.argv[1:]), "arch": args.arch,
        "weights": "random init, torch.manual_seed(0), saved once and loaded by every contender", "queries": QUERIES,
        "prepare": prepare, "lock": args.lock,
        "venvs": venvs, "rows": rows, "table_markdown": table(rows), "chart_title": title}, indent=1, default=str))
    chart(rows, args.out.with_suffix(".png"), title)
    print(f"wrote {args.out} and {args.out.with_suffix('.png')}")


if __name__ == "__main__":
    main()
