"""Cold `mmsearch query` with the built-in model: whole process, text and --image, on a 1k-image and a
1M-row collection, this code vs a baseline commit, in one run.

Every run is a new process (`mmsearch query ... --json`, the venv's console script), so it pays every import
and model load a user pays; the operating system's file cache is warm for all of them alike (one untimed
warm-up run per configuration, which also exports any ONNX graph a configuration needs into the model
cache). Per run: wall time (monotonic clock around the process) and the process's peak RSS (``os.wait4``
rusage, i.e. what ``/usr/bin/time -v`` reports as "Maximum resident set size").

The two codes run with the same venv: the baseline is a ``git worktree`` of ``--baseline`` (default
4dcc114, before issue 16), put first on PYTHONPATH; the new code is ``--new`` (a source tree, default this
checkout, or a commit checked out as a worktree). Runs alternate baseline/new, text/image and the two
collections, so slow spells of a shared machine fall on all of them alike.

Each code queries collections it built itself (the on-disk format moved on since the baseline, which
cannot read a newer collection; and a collection built by the new code keeps what a query needs, e.g. the
no-match threshold, in its index record):

- ``1k``: ``--rows`` images (default 1,000), distinct variants (crops, flips, sizes) of the bundled
  data/sample photos or of the images under ``--images DIR``, indexed by each code's ``mmsearch index``;
  the top hits of both codes are compared (the same ids, scores within 2e-3).
- ``openclip``: the same images indexed with ``openclip:mms-tiny/random`` (the tiny random-weights test
  model: no real OpenCLIP weights are available offline), queried with its towers in ONNX Runtime (the
  default on the CPU) and in PyTorch (``MMSEARCH_CACHE_DIR`` under a regular file, so no export can be found
  or made); ``--no-openclip`` leaves it out, ``--no-openclip-torch`` leaves out its PyTorch arm.
- ``--rclip``: rclip 3.3 (its own venv, built on first use by benchmarks/compare/run.py's ``setup_venv`` under
  ``--compare-work``) against mmsearch with the same weights file: the OpenCLIP rows then run
  ``openclip:ViT-B-32-256@FILE`` (rclip runs that architecture only), FILE being ``--openclip-model``'s file
  or else the seeded random ViT-B-32-256 weights of benchmarks/compare (``ensure_weights``), and rclip's two
  ONNX files are exported from that same FILE into its data folder (``peers/rclip_local_model.py``). rclip
  indexes the folder it is asked in: one untimed ``rclip`` run in the images folder indexes it (its time is
  the ``rclip/1k`` build), and the row count of rclip's database is checked; the timed runs are then queries
  over that already-indexed folder, as ``rclip QUERY`` (the user's command: it re-walks the folder, stats
  every file and finds nothing to embed) and as ``rclip --no-indexing QUERY`` (no walk). The image query is
  ``rclip /abs/path/IMAGE``. Runs interleave with mmsearch's; the top-5 files and scores of mmsearch (ONNX)
  and rclip are compared (rclip prints scores to 3 decimals).
- ``1M``: ``--big-rows`` (default 1,000,000) synthetic unit vectors under the built-in model's spec, with
  image metadata, written through each code's ``mmsearch.store`` in 8,192-row shards (as ``mmsearch
  index`` does) with the same ids and vectors, and an ``IVF1024,Flat`` index (as benchmarks/versions.py
  does). ``--big-rows 0`` leaves it out.

    python benchmarks/cold_query.py [--rows 1000] [--big-rows 1000000] [--runs 5] [--baseline 4dcc114|none]
    python benchmarks/cold_query.py --baseline none --big-rows 0 --rclip --no-openclip-torch   # vs rclip

Prints a table and writes benchmarks/results/cold_query.json (raw runs, medians, machine, commits).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
COMPARE = ROOT / "benchmarks" / "compare"
RCLIP_ARCH = "ViT-B-32-256"
SAMPLE = ROOT / "data" / "sample"
RESULTS = ROOT / "benchmarks" / "results"
TEXT_QUERY = "a cat"
IMAGE_QUERY = SAMPLE / "lighthouse.jpg"
K = 5
#: no real ViT-B-32 weights exist offline here: the OpenCLIP rows use the tiny random-weights test model
OPENCLIP = "openclip:mms-tiny/random"


def make_images(out: Path, rows: int, source: Path) -> int:
    """``rows`` distinct JPEGs: deterministic crops / flips / sizes of the images under ``source``."""
    from PIL import Image, ImageOps

    sources = sorted(p for p in source.rglob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    if not sources:
        raise SystemExit(f"no images under {source}")
    out.mkdir(parents=True, exist_ok=True)
    for i in range(rows):
        variant, src = divmod(i, len(sources))
        with Image.open(sources[src]) as opened:
            image = ImageOps.exif_transpose(opened).convert("RGB")
        w, h = image.size
        cut = 0.02 * (variant % 7)  # up to 12% off each side
        box = (int(w * cut), int(h * cut * 0.5), w - int(w * cut * 0.7), h - int(h * cut))
        image = image.crop(box)
        if variant % 2:
            image = ImageOps.mirror(image)
        side = 160 + 16 * (variant % 9)
        image.thumbnail((side, side))
        image.save(out / f"{sources[src].stem}_{variant:03d}.jpg", quality=88)
    return rows


SYNTHETIC = """
import sys, time
import numpy as np
from mmsearch.encoders.registry import load_encoder
from mmsearch.indexes import IndexOptions, build_index
from mmsearch.store import ModelInfo, Store

out, rows, shard_rows = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
encoder = load_encoder("builtin")
info = ModelInfo(spec=encoder.spec, preprocess_id=encoder.preprocess_id, dim=encoder.dim)
store = Store.open_or_create(out, info, embedding_dtype="float16")
rng = np.random.default_rng(0)
centres = rng.normal(size=(256, info.dim)).astype(np.float32)
started = time.perf_counter()
for start in range(0, rows, shard_rows):
    n = min(shard_rows, rows - start)
    v = centres[rng.integers(0, len(centres), n)] + rng.normal(size=(n, info.dim)).astype(np.float32)
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    ids = store.reserve_ids(n)
    store.append("images", {"id": ids, "uri": [f"/photos/{i // 1000:04d}/img_{i:07d}.jpg" for i in ids],
                            "sha256": [f"{i:064x}" for i in ids], "bytes": [100_000 + int(i) % 5000 for i in ids],
                            "width": [640] * n, "height": [480] * n, "mtime": [1.7e9 + float(i) for i in ids],
                            "caption": [None] * n}, v)
options = IndexOptions(factory="IVF1024,Flat")
try:  # the new code keeps the no-match threshold in the index record, computed at build time
    from mmsearch.api import with_probe_queries
    options = with_probe_queries(options, store, "images", encoder)
except ImportError:
    pass
build_index(store, "images", options)
store.close() if hasattr(store, "close") else None
print(f"{rows} rows in {time.perf_counter() - started:.1f} s")
"""


def build_synthetic(tree: Path, home: Path, out: Path, rows: int) -> float:
    """The 1M-row collection, written through ``tree``'s mmsearch.store (``-P``: not the cwd's); seconds it took."""
    start = time.perf_counter()
    run_timed([sys.executable, "-P", "-c", SYNTHETIC, str(out), str(rows), "8192"], code_env(tree, home))
    return time.perf_counter() - start


def checkout_baseline(commit: str, where: Path) -> str:
    """A detached worktree of ``commit`` at ``where`` (removed by :func:`remove_baseline`); the full hash."""
    full = subprocess.run(["git", "rev-parse", commit], cwd=ROOT, check=True, capture_output=True, text=True).stdout.strip()
    subprocess.run(["git", "worktree", "add", "--detach", str(where), full], cwd=ROOT, check=True, capture_output=True)
    return full


def remove_baseline(where: Path) -> None:
    subprocess.run(["git", "worktree", "remove", "--force", str(where)], cwd=ROOT, capture_output=True)
    shutil.rmtree(where, ignore_errors=True)
    subprocess.run(["git", "worktree", "prune"], cwd=ROOT, capture_output=True)


def mmsearch_command() -> list[str]:
    script = Path(sys.executable).parent / "mmsearch"
    return [str(script)] if script.exists() else [sys.executable, "-m", "mmsearch.cli.main"]


def run_timed(args: list[str], env: dict[str, str], cwd: Path = ROOT) -> tuple[float, float, str]:
    """(wall seconds, peak RSS MiB, stdout) of one process."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        start = time.perf_counter()
        process = subprocess.Popen(args, stdout=out, stderr=err, env=env, cwd=cwd)
        _, status, usage = os.wait4(process.pid, 0)
        wall = time.perf_counter() - start
        process.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read().decode(), err.read().decode()
    if process.returncode != 0:
        raise SystemExit(f"{' '.join(args)} failed ({process.returncode}):\n{stderr[-3000:]}")
    return wall, usage.ru_maxrss / 1024, stdout  # Linux: ru_maxrss in KiB


def code_env(tree: Path, home: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update(HF_HUB_OFFLINE="1", MMSEARCH_HOME=str(home), PYTHONPATH=str(tree), TOKENIZERS_PARALLELISM="false")
    env.pop("MMSEARCH_COLLECTION", None)
    env.pop("MMSEARCH_MODEL", None)
    # a user's Python keeps compiled modules (.pyc): with this set (as on some CI and sandbox machines) every cold
    # run would compile the modules whose .pyc is missing or stale, ~0.1 s that no user pays
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    return env


def query_args(collection: Path, kind: str) -> list[str]:
    what = [TEXT_QUERY] if kind == "text" else ["--image", str(IMAGE_QUERY)]
    return [*mmsearch_command(), "query", *what, "--collection", str(collection), "-k", str(K), "--json"]


def top_hits(stdout: str) -> list[tuple[int, float]]:
    return [(int(h["id"]), float(h["score"])) for h in json.loads(stdout)]


def top_files(stdout: str, arm: str) -> list[tuple[str, float]]:
    """(resolved path, score) of each hit: mmsearch's ``--json`` or rclip's ``score<TAB>"path"`` lines."""
    if not arm.startswith("rclip"):
        return [(str(Path(h["uri"]).resolve()), float(h["score"])) for h in json.loads(stdout)]
    lines = [ln.split("\t", 1) for ln in stdout.splitlines() if "\t" in ln and not ln.startswith("score")]
    return [(str(Path(path.strip().strip('"')).resolve()), float(score)) for score, path in lines]


def load_compare() -> Any:
    """benchmarks/compare/run.py as a module (its venv set-up, weights and rclip export)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("compare_run", COMPARE / "run.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def rclip_indexed_rows(datadir: Path, folder: Path) -> int:
    """Images of ``folder`` in rclip's database (not deleted)."""
    import sqlite3

    with sqlite3.connect(datadir / "db.sqlite3") as con:
        return con.execute("SELECT COUNT(*) FROM images WHERE deleted IS NULL AND filepath LIKE ?",
                           (f"{folder}{os.sep}%",)).fetchone()[0]


def git_state(tree: Path) -> dict[str, Any]:
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=tree, capture_output=True, text=True).stdout.strip()
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=tree, capture_output=True,
                           text=True).stdout.strip()
    return {"path": str(tree), "head": head or None, "uncommitted_changes": bool(dirty)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1000, help="images in the small collection")
    parser.add_argument("--big-rows", type=int, default=1_000_000, help="rows of the synthetic collection (0: none)")
    parser.add_argument("--runs", type=int, default=5, help="timed cold runs per configuration (>= 5)")
    parser.add_argument("--baseline", default="4dcc114", help="the commit to compare against ('none': no baseline)")
    parser.add_argument("--new", default=str(ROOT),
                        help="the new code: a source tree, or a commit to check out (default: this checkout)")
    parser.add_argument("--no-openclip", action="store_true", help="leave out the OpenCLIP ONNX-vs-torch rows")
    parser.add_argument("--no-openclip-torch", action="store_true", help="leave out the OpenCLIP rows' PyTorch arm")
    parser.add_argument("--rclip", action="store_true",
                        help=f"add rclip 3.3 (own venv) with the OpenCLIP rows' weights file ({RCLIP_ARCH} only)")
    parser.add_argument("--compare-work", type=Path, default=Path("/tmp/mms-compare"),
                        help="benchmarks/compare's work folder: rclip's venv, the shared weights, rclip's export")
    parser.add_argument("--openclip-model", default=OPENCLIP,
                        help=f"the OpenCLIP spec of those rows (default {OPENCLIP}; e.g. openclip:ViT-B-32/random "
                             "has ViT-B-32's compute with random weights)")
    parser.add_argument("--images", type=Path, default=SAMPLE, help="source images (default: data/sample)")
    parser.add_argument("--out", type=Path, default=RESULTS / "cold_query.json")
    parser.add_argument("--keep", type=Path, help="keep the work directory (collections, worktrees) here")
    args = parser.parse_args()
    if args.runs < 5:
        parser.error("--runs must be at least 5")
    rclip: dict[str, Any] = {}
    if args.rclip:
        if args.no_openclip:
            parser.error("--rclip compares with the OpenCLIP rows: drop --no-openclip")
        compare = load_compare()
        if args.openclip_model == OPENCLIP:
            args.openclip_model = f"openclip:{RCLIP_ARCH}@{compare.ensure_weights(RCLIP_ARCH, args.compare_work)}"
        arch, _, weights = args.openclip_model.removeprefix("openclip:").partition("@")
        if arch != RCLIP_ARCH or not weights:
            parser.error(f"--rclip needs --openclip-model openclip:{RCLIP_ARCH}@FILE (rclip runs {RCLIP_ARCH} only)")
        venv = compare.setup_venv("rclip", args.compare_work)
        if venv["install_rc"] != 0:
            raise SystemExit(f"rclip's venv failed to install: {venv['error']} (log: {venv['log']})")
        model_dir, export = compare.ensure_rclip_model(arch, Path(weights), args.compare_work)
        rclip = {"cli": str(Path(venv["venv"]) / "bin" / "rclip"), "model": model_dir, "export": export,
                 "version": next((f for f in venv["freeze"] if f.lower().startswith("rclip==")), "rclip"),
                 "onnxruntime": next((f for f in venv["freeze"] if f.lower().startswith("onnxruntime==")), None),
                 "link_tree": compare.link_tree}

    work = Path(args.keep or tempfile.mkdtemp(prefix="mms-cold-query-"))
    work.mkdir(parents=True, exist_ok=True)
    home = work / "home"
    baseline_tree = work / "baseline"
    new_tree = Path(args.new).resolve() if Path(args.new).is_dir() else work / "new"
    with_baseline = args.baseline.lower() != "none"
    codes: dict[str, Path] = {}
    sizes = ["1k"] + (["1M"] if args.big_rows else [])
    started = time.time()
    load_before = os.getloadavg()
    builds: dict[str, float] = {}
    commit = None
    # the torch arm of OpenCLIP: a model cache that cannot be created (a path under a regular file), so no ONNX
    # export is found or made and the encoder runs in PyTorch, as where onnxruntime is missing
    blocker = work / "no-cache"
    blocker.write_text("a file, so no cache directory can be made under it\n")
    try:
        if with_baseline:
            commit = checkout_baseline(args.baseline, baseline_tree)
            codes["baseline"] = baseline_tree
        new_commit = None if new_tree != work / "new" else checkout_baseline(args.new, new_tree)
        codes["new"] = new_tree
        images = work / "images"
        if not images.exists():
            step = time.perf_counter()
            make_images(images, args.rows, args.images)
            builds["images"] = round(time.perf_counter() - step, 1)
        collections: dict[tuple[str, str], Path] = {}
        for code, tree in codes.items():
            small = collections[(code, "1k")] = work / f"{code}-1k.mms"
            if not small.exists():
                start = time.perf_counter()
                run_timed([*mmsearch_command(), "index", str(images), "--out", str(small), "--model", "builtin"],
                          code_env(tree, home))
                builds[f"{code}/1k"] = round(time.perf_counter() - start, 1)
                print(f"built {code}/1k in {builds[f'{code}/1k']} s", flush=True)
            if args.big_rows:
                big = collections[(code, "1M")] = work / f"{code}-1M.mms"
                if not big.exists():
                    builds[f"{code}/1M"] = round(build_synthetic(tree, home, big, args.big_rows), 1)
                    print(f"built {code}/1M in {builds[f'{code}/1M']} s", flush=True)
        # arm -> (collection key, env)
        arms: dict[str, tuple[str, dict[str, str]]] = {code: (code, code_env(tree, home)) for code, tree in codes.items()}
        arm_sizes = {code: sizes for code in codes}
        if not args.no_openclip:
            tiny = collections[("openclip", "1k")] = work / "openclip-1k.mms"
            if not tiny.exists():
                start = time.perf_counter()
                run_timed([*mmsearch_command(), "index", str(images), "--out", str(tiny), "--model", args.openclip_model],
                          code_env(new_tree, home))
                builds["openclip/1k"] = round(time.perf_counter() - start, 1)
                print(f"built openclip/1k in {builds['openclip/1k']} s", flush=True)
            torch_env = dict(code_env(new_tree, home), MMSEARCH_CACHE_DIR=str(blocker / "cache"))
            arms["openclip-onnx"] = ("openclip", code_env(new_tree, home))
            arm_sizes["openclip-onnx"] = ["1k"]
            if not args.no_openclip_torch:
                arms["openclip-torch"] = ("openclip", torch_env)
                arm_sizes["openclip-torch"] = ["1k"]
        if rclip:  # rclip's data folder: the exported model (hard links) and its database, indexed once here
            datadir = work / "rclip-data"
            if not (datadir / "db.sqlite3").exists():
                shutil.rmtree(datadir, ignore_errors=True)
                rclip["link_tree"](rclip["model"], datadir)
            rclip_env = dict(os.environ, HF_HUB_OFFLINE="1", RCLIP_DATADIR=str(datadir))
            start = time.perf_counter()
            run_timed([rclip["cli"], "-f", "-t", str(K), TEXT_QUERY], rclip_env, cwd=images)
            builds["rclip/1k"] = round(time.perf_counter() - start, 1)
            indexed = rclip_indexed_rows(datadir, images.resolve())
            if indexed != args.rows:
                raise SystemExit(f"rclip indexed {indexed} of the {args.rows} images in {images}")
            print(f"built rclip/1k in {builds['rclip/1k']} s ({indexed} images in its database)", flush=True)
            for arm, flags in (("rclip", []), ("rclip-no-indexing", ["--no-indexing"])):
                arms[arm] = ("rclip", rclip_env)
                arm_sizes[arm] = ["1k"]
                rclip[arm] = flags
        print(f"collections: {args.rows} images, {args.big_rows} synthetic rows; built in {builds}", flush=True)

        configs = [(size, kind, arm) for size in sizes for kind in ("text", "image") for arm in arms
                   if size in arm_sizes[arm]]

        def command(size: str, kind: str, arm: str) -> tuple[list[str], dict[str, str], Path]:
            key, env = arms[arm]
            if key == "rclip":  # in the indexed folder: rclip searches the folder it runs in
                what = TEXT_QUERY if kind == "text" else str(IMAGE_QUERY)
                return [rclip["cli"], *rclip[arm], "-t", str(K), what], env, images
            return query_args(collections[(key, size)], kind), env, ROOT

        hits: dict[str, list[tuple[int, float]]] = {}
        files: dict[str, list[tuple[str, float]]] = {}
        for size, kind, arm in configs:  # warm-up: file cache, ONNX exports
            _, _, stdout = run_timed(*command(size, kind, arm))
            files[f"{size}/{kind}/{arm}"] = top_files(stdout, arm)
            if not arm.startswith("rclip"):
                hits[f"{size}/{kind}/{arm}"] = top_hits(stdout)
        if rclip and rclip_indexed_rows(work / "rclip-data", images.resolve()) != args.rows:
            raise SystemExit("rclip's database changed during the warm-up queries")
        runs: dict[str, list[dict[str, float]]] = {"/".join(c): [] for c in configs}
        for n in range(args.runs):
            for size, kind, arm in configs:
                wall, rss, _ = run_timed(*command(size, kind, arm))
                runs[f"{size}/{kind}/{arm}"].append({"wall_s": round(wall, 4), "peak_rss_mib": round(rss, 1)})
            print(f"round {n + 1}/{args.runs} done, load average {os.getloadavg()[0]:.1f}", flush=True)
    finally:
        for tree in (baseline_tree, work / "new"):
            if tree.exists():
                remove_baseline(tree)
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)

    summary: dict[str, dict[str, float]] = {}
    for name, rows in runs.items():
        walls = [r["wall_s"] for r in rows]
        rss = [r["peak_rss_mib"] for r in rows]
        summary[name] = {"median_s": round(statistics.median(walls), 3), "min_s": min(walls), "max_s": max(walls),
                         "median_peak_rss_mib": round(statistics.median(rss), 1), "max_peak_rss_mib": max(rss)}
    pairs = ([("baseline", "new", sizes)] if with_baseline else []) + \
        ([] if args.no_openclip or args.no_openclip_torch else [("openclip-torch", "openclip-onnx", ["1k"])]) + \
        ([("rclip", "openclip-onnx", ["1k"]), ("rclip-no-indexing", "openclip-onnx", ["1k"])] if rclip else [])
    agreement = {}
    for reference, candidate, pair_sizes in pairs:
        by_file = reference.startswith("rclip")  # rclip has no ids: compare the files
        for size in pair_sizes:
            for kind in ("text", "image"):
                table = files if by_file else hits
                old, new = table[f"{size}/{kind}/{reference}"], table[f"{size}/{kind}/{candidate}"]
                agreement[f"{size}/{kind}/{candidate}-vs-{reference}"] = {
                    "same_ids": [i for i, _ in old] == [i for i, _ in new],
                    "same_set": len({i for i, _ in old} & {i for i, _ in new}),
                    "max_score_diff": round(max(abs(a - b) for (_, a), (_, b) in zip(old, new)), 6),
                    "reference_top": old[:3], "candidate_top": new[:3],
                }

    print(f"\ncold `mmsearch query`, median of {args.runs} runs (load average {load_before[0]:.1f} at start, "
          f"{os.getloadavg()[0]:.1f} at the end, {os.cpu_count()} cores)")
    print(f"{'rows':<6}{'query':<7}{'arm':<18}{'median s':>10}{'min s':>8}{'max s':>8}{'peak RSS MiB':>14}")
    for size, kind, arm in configs:
        s = summary[f"{size}/{kind}/{arm}"]
        print(f"{size:<6}{kind:<7}{arm:<18}{s['median_s']:>10.2f}{s['min_s']:>8.2f}{s['max_s']:>8.2f}"
              f"{s['median_peak_rss_mib']:>14.0f}")
    speed_up = {f"{size}/{kind}/{candidate}-vs-{reference}": round(summary[f"{size}/{kind}/{reference}"]["median_s"]
                                                                   / summary[f"{size}/{kind}/{candidate}"]["median_s"], 2)
                for reference, candidate, pair_sizes in pairs for size in pair_sizes for kind in ("text", "image")}
    for name, ratio in speed_up.items():
        a = agreement[name]
        verdict = ("same top-5 ids" if a["same_ids"] else "DIFFERENT top-5 ids") + \
            ("" if a["same_ids"] else f" ({a['same_set']} in common)")
        print(f"{name}: {ratio:.2f}x as fast, {verdict}, max score difference {a['max_score_diff']:.1e}")

    record = {
        "benchmark": "cold_query",
        "date": time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(started)),
        "duration_s": round(time.time() - started, 1),
        "machine": {"platform": platform.platform(), "python": platform.python_version(), "cpus": os.cpu_count(),
                    "load_average_start": load_before, "load_average_end": os.getloadavg()},
        "settings": {"rows": args.rows, "big_rows": args.big_rows, "runs": args.runs, "k": K,
                     "text_query": TEXT_QUERY, "image_query": str(IMAGE_QUERY.relative_to(ROOT)), "model": "builtin",
                     "openclip_model": None if args.no_openclip else args.openclip_model,
                     "openclip_torch_arm": None if args.no_openclip_torch else
                     "MMSEARCH_CACHE_DIR under a regular file: no export, PyTorch",
                     "rclip": {"version": rclip["version"], "onnxruntime": rclip["onnxruntime"], "export": rclip["export"],
                               "arms": {"rclip": "rclip -t K QUERY in the indexed folder (re-walks it, embeds nothing)",
                                        "rclip-no-indexing": "rclip --no-indexing -t K QUERY"},
                               "image_query": "rclip -t K /abs/path/IMAGE"} if rclip else None,
                     "images_from": str(args.images), "collections_built_by": "each code its own",
                     "big_index": "IVF1024,Flat" if args.big_rows else None},
        "codes": {**({"baseline": {"commit": commit, "tree": "git worktree"}} if with_baseline else {}),
                  "new": {"commit": new_commit, "tree": "git worktree"} if new_commit else git_state(codes["new"])},
        "collection_build_s": builds,
        "summary": summary,
        "speed_up": speed_up,
        "hits_agreement": agreement,
        "runs": runs,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
