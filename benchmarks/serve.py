"""HTTP load test of `mmsearch serve`: N concurrent clients send text queries for a fixed time, on loopback.

The server runs as its own process (`python -m cli.main serve`, bound to 127.0.0.1); this process is the
load generator (asyncio + httpx, one connection per client). For each client count it reports throughput,
p50/p99 latency and errors (any non-200 or transport error counts; the run expects zero).

    python benchmarks/serve.py [--collection DIR | --images DIR --model SPEC] [--clients 1,4,16] [--duration-s 10]

Prints a table and writes benchmarks/results/serve.json. Only 127.0.0.1 traffic; uses only the public API.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

import mmsearch

ROOT = Path(__file__).resolve().parent
QUERIES = ["a cat", "a red car", "a flag", "flowers", "a cup of coffee", "mountains", "an astronaut", "a bird",
           "a lighthouse by the sea", "a bowl of fruit", "a city at night", "a dog playing", "an old building",
           "a bicycle", "snow", "a portrait of a person"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(collection: Path, port: int, threads: int) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "mmsearch.cli.main", "serve", str(collection), "--host", "127.0.0.1", "--port", str(port),
           "--threads", str(threads)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    return subprocess.Popen(cmd, cwd=ROOT.parent, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def wait_ready(base: str, server: subprocess.Popen, timeout_s: float = 600) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise SystemExit(f"the server exited: {server.stderr.read().decode()[-2000:]}")
        try:
            if httpx.get(f"{base}/api/health", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise SystemExit("the server did not become ready")


async def client_loop(client: httpx.AsyncClient, url: str, offset: int, deadline: float,
                      latencies: list[float], errors: list[str]) -> None:
    i = offset
    while time.perf_counter() < deadline:
        started = time.perf_counter()
        try:
            r = await client.get(url, params={"q": QUERIES[i % len(QUERIES)], "k": 10})
            if r.status_code != 200:
                errors.append(f"{r.status_code}: {r.text[:200]}")
        except httpx.HTTPError as exc:
            errors.append(f"{type(exc).__name__}: {exc}")
        latencies.append(time.perf_counter() - started)
        i += 1


async def load(url: str, clients: int, duration_s: float) -> dict:
    latencies: list[float] = []
    errors: list[str] = []
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(limits=limits, timeout=60) as client:
        started = time.perf_counter()
        deadline = started + duration_s
        await asyncio.gather(*(client_loop(client, url, c, deadline, latencies, errors) for c in range(clients)))
        elapsed = time.perf_counter() - started
    return summarise(clients, latencies, errors, elapsed)


def summarise(clients: int, latencies: list[float], errors: list[str], elapsed: float) -> dict:
    ordered = sorted(latencies)

    def pct(p: float) -> float:
        return round(1000 * ordered[min(len(ordered) - 1, int(p * len(ordered)))], 2) if ordered else float("nan")

    return {"clients": clients, "requests": len(latencies), "errors": len(errors), "first_errors": errors[:3],
            "seconds": round(elapsed, 2), "qps": round(len(latencies) / elapsed, 1), "p50_ms": pct(0.50),
            "p99_ms": pct(0.99)}


def collection_for(args: argparse.Namespace, scratch: Path) -> Path:
    if args.collection:
        return Path(args.collection)
    return mmsearch.index(args.images, out=scratch / "bench.mms", model=args.model).path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--collection", help="An existing collection [default: index --images with --model].")
    parser.add_argument("--images", default=str(ROOT.parent / "data" / "sample"))
    parser.add_argument("--model", default="builtin")
    parser.add_argument("--clients", default="1,4,16", help="Comma-separated concurrent client counts.")
    parser.add_argument("--duration-s", type=float, default=10.0)
    parser.add_argument("--threads", type=int, default=4, help="The server's worker threads.")
    parser.add_argument("--out", default=str(ROOT / "results" / "serve.json"))
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as scratch:
        collection = collection_for(args, Path(scratch))
        info = mmsearch.open(collection).info()
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        server = start_server(collection, port, args.threads)
        try:
            wait_ready(base, server)
            name = httpx.get(f"{base}/api/collections").json()["collections"][0]["name"]
            url = f"{base}/api/collections/{name}/search"
            asyncio.run(load(url, 1, 1.0))  # warm-up, not reported
            rows = [asyncio.run(load(url, int(n), args.duration_s)) for n in args.clients.split(",")]
        finally:
            server.terminate()
            server.wait(timeout=30)
    report(rows, args, info)


def report(rows: list[dict], args: argparse.Namespace, info: dict) -> None:
    print(f"mmsearch serve, text queries (k=10), model {info['model']['spec']}, {info['images']} images, "
          f"{args.threads} worker threads, {os.cpu_count()} CPUs, {args.duration_s:g} s per row")
    print(f"{'clients':>7} {'requests':>9} {'errors':>6} {'QPS':>8} {'p50 ms':>8} {'p99 ms':>8}")
    for r in rows:
        print(f"{r['clients']:>7} {r['requests']:>9} {r['errors']:>6} {r['qps']:>8} {r['p50_ms']:>8} {r['p99_ms']:>8}")
    result = {"benchmark": "serve", "model": info["model"]["spec"], "images": info["images"], "texts": info["texts"],
              "server_threads": args.threads, "duration_s": args.duration_s, "cpus": os.cpu_count(),
              "platform": platform.platform(), "python": platform.python_version(), "mmsearch": mmsearch.__version__,
              "time": time.strftime("%Y-%m-%dT%H:%M:%S"), "rows": rows}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    if any(r["errors"] for r in rows):
        raise SystemExit(f"errors during the load test: {[r['first_errors'] for r in rows]}")


if __name__ == "__main__":
    main()
