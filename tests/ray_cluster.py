"""A multi-node Ray cluster on one machine, an S3 emulator, and the driver / reader processes the cluster tests run.

``LocalCluster`` starts a head node and worker nodes with ``ray.cluster_utils.Cluster``: each node is its own
raylet with its own object store, CPUs and custom resources (head: ``{"head": 1}``, worker i:
``{"worker": 1, "worker<i>": 1}``), so scheduling, object transfer between nodes and node loss are real.
Work asks for ``{"worker": 0.5}`` to run on the worker nodes only (two actors fit on one surviving worker);
``{"worker1": 0.01}`` pins a task to one node. Failure detection is made fast (a killed node is declared
dead within ~2 s) so a node-loss test takes seconds.

``start_s3_emulator()`` runs ``moto_server`` on 127.0.0.1 (the ``dev`` extra installs ``moto[server]`` and
``s3fs``) and returns the environment that points boto / s3fs at it.

Run as a script it is one of the processes a test starts:

    python tests/ray_cluster.py drive ADDRESS SRC OUT [--stall-after N --marker FILE]   # a driver (killed by tests)
    python tests/ray_cluster.py read COLLECTION LOG STOPFILE                           # a polling reader
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Iterator

TESTS = str(Path(__file__).resolve().parent)
if TESTS not in sys.path:
    sys.path.insert(0, TESTS)

COLOUR = "colour:v1"
#: what the tests' actors and index tasks ask for: the worker nodes only, two per node
ON_WORKERS = {"worker": 0.5}
OBJECT_STORE_BYTES = 80 * 1024 * 1024  # per node: the tests move kilobytes
FAST_FAILURE_DETECTION = {"health_check_initial_delay_ms": 0, "health_check_period_ms": 300,
                          "health_check_timeout_ms": 300, "health_check_failure_threshold": 3}


def register_colour() -> None:
    """Run in every Ray actor (and the drivers): the colour encoder is a test fake, registered per process."""
    from fakes import ColourEncoder

    from mmsearch.encoders import register_scheme

    register_scheme("colour", lambda spec, device: ColourEncoder(str(spec)))


def python_path() -> str:
    return os.pathsep.join([TESTS, os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)


class LocalCluster:
    """Head + ``workers`` worker nodes, 1 CPU each (``head_cpus`` on the head), on this machine."""

    def __init__(self, workers: int = 2, *, head_cpus: int = 1, cpus_per_worker: int = 1,
                 object_store_bytes: int = OBJECT_STORE_BYTES) -> None:
        from ray.cluster_utils import Cluster

        self.cpus_per_worker, self.object_store_bytes = cpus_per_worker, object_store_bytes
        started = time.perf_counter()
        self.cluster = Cluster(initialize_head=True, connect=False, head_node_args={
            "num_cpus": head_cpus, "resources": {"head": 1}, "object_store_memory": object_store_bytes,
            "include_dashboard": False, "_system_config": FAST_FAILURE_DETECTION})
        self.head_s = time.perf_counter() - started
        self.workers: dict[str, Any] = {}  # resource name (worker1...) -> node
        self.worker_s: list[float] = []
        self._numbers = 0
        for _ in range(workers):
            self.add_worker()

    @property
    def address(self) -> str:
        return self.cluster.address

    def add_worker(self) -> str:
        """Start one more worker node; returns its resource name (``worker<n>``)."""
        self._numbers += 1
        name = f"worker{self._numbers}"
        started = time.perf_counter()
        node = self.cluster.add_node(num_cpus=self.cpus_per_worker, resources={"worker": 1, name: 1},
                                     object_store_memory=self.object_store_bytes)
        self.cluster.wait_for_nodes()
        self.worker_s.append(time.perf_counter() - started)
        self.workers[name] = node
        return name

    def node_id(self, name: str) -> str:
        return self.workers[name].node_id

    def name_of(self, node_id: str) -> str | None:
        return next((n for n, node in self.workers.items() if node.node_id == node_id), None)

    def running(self, name: str, title: str) -> bool:
        """Whether a worker process of node ``name`` is executing a task whose process title starts with ``title``
        (Ray titles a worker ``ray::<function>`` while it runs one): its raylet's children, read from /proc."""
        raylet = self.workers[name].all_processes["raylet"][0].process.pid
        for proc in Path("/proc").iterdir():
            if not proc.name.isdigit():
                continue
            try:
                stat = (proc / "stat").read_text()
                ppid = int(stat.rsplit(")", 1)[1].split()[1])
                if ppid == raylet and (proc / "cmdline").read_bytes().startswith(title.encode()):
                    return True
            except (OSError, ValueError, IndexError):
                continue
        return False

    def remove_worker(self, name: str, *, graceful: bool = False) -> None:
        """Kill a worker node (its raylet, object store and worker processes: SIGKILL unless ``graceful``)."""
        node = self.workers.pop(name)
        self.cluster.remove_node(node, allow_graceful=graceful)

    def keep_workers(self, n: int) -> None:
        """Add worker nodes until ``n`` are alive (after a test removed some)."""
        while len(self.workers) < n:
            self.add_worker()

    def connect(self, ray: Any, env: dict[str, str] | None = None) -> None:
        ray.init(address=self.address, log_to_driver=False,
                 runtime_env={"env_vars": {"PYTHONPATH": python_path(), **(env or {})}})

    def shutdown(self) -> None:
        self.cluster.shutdown()


def actor_nodes(ray: Any, prefix: str = "mmsearch-embed-") -> dict[str, str]:
    """The node id of every live named actor whose name starts with ``prefix``."""
    out = {}
    for name in sorted(ray.util.list_named_actors()):
        if name.startswith(prefix):
            try:
                out[name] = ray.get(ray.get_actor(name).node_id.remote(), timeout=30)
            except Exception:  # noqa: BLE001 - gone meanwhile
                pass
    return out


# -- the S3 emulator ------------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_s3_emulator() -> tuple[subprocess.Popen, dict[str, str]] | str:
    """(the moto_server process, the environment pointing boto/s3fs at it), or why it cannot run."""
    try:
        import moto  # noqa: F401
        import s3fs  # noqa: F401
    except ImportError as exc:
        return f"the S3 emulator needs moto[server] and s3fs (the dev extra): {exc}"
    server = shutil.which("moto_server", path=os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]))
    if server is None:
        return "moto_server is not installed (pip install 'moto[server]')"
    port = free_port()
    proc = subprocess.Popen([server, "-H", "127.0.0.1", "-p", str(port)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return f"moto_server exited with status {proc.returncode}"
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                break
        except OSError:
            time.sleep(0.2)
    else:
        proc.kill()
        return "moto_server did not listen within 30 s"
    env = {"AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}", "AWS_ACCESS_KEY_ID": "testing",
           "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}
    return proc, env


@contextlib.contextmanager
def s3_emulator() -> Iterator[dict[str, str] | str]:
    """The S3 emulator running with os.environ pointing at it (yields that environment), or why it cannot run
    (yields the reason). s3fs's cached filesystems are dropped on both ends: they hold a client for one endpoint."""
    started = start_s3_emulator()
    if isinstance(started, str):
        yield started
        return
    import s3fs

    proc, env = started
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    s3fs.S3FileSystem.clear_instance_cache()
    try:
        yield env
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        s3fs.S3FileSystem.clear_instance_cache()
        proc.terminate()
        proc.wait(timeout=10)


def make_bucket(env: dict[str, str], bucket: str) -> None:
    import s3fs

    fs = s3fs.S3FileSystem(endpoint_url=env["AWS_ENDPOINT_URL"], key=env["AWS_ACCESS_KEY_ID"],
                           secret=env["AWS_SECRET_ACCESS_KEY"], skip_instance_cache=True)
    fs.mkdir(bucket)


# -- the processes the tests start ------------------------------------------------------------------------
def drive(args: argparse.Namespace) -> None:
    """A driver: index SRC into OUT on the cluster at ADDRESS; with --stall-after N it stops at N images
    (writing --marker) and waits there to be killed."""
    import ray

    from mmsearch.distributed import index_with_ray

    register_colour()
    ray.init(address=args.address, log_to_driver=False, runtime_env={"env_vars": {"PYTHONPATH": python_path()}})

    def progress(stage: str, done: int, total: int) -> None:
        if args.stall_after and stage == "images" and done >= args.stall_after:
            Path(args.marker).write_text(str(done))
            time.sleep(3600)  # the test kills this process here

    result = index_with_ray(args.src, out=args.out, model=COLOUR, shard_rows=5, batch_size=2, task_rows=2, workers=2,
                            num_cpus_per_worker=0.5, resources_per_worker=ON_WORKERS, worker_setup=register_colour,
                            index_factory=args.factory, index_parts=4, progress=progress)
    print(json.dumps(result.report.to_dict()))


def read(args: argparse.Namespace) -> None:
    """A reader polling the collection until STOPFILE exists: one JSON line per open + search."""
    import mmsearch

    register_colour()
    with open(args.log, "a", encoding="utf-8") as log:
        while not Path(args.stop).exists():
            try:
                col = mmsearch.open(args.collection, model=COLOUR)
                try:
                    hits = col.search("red", k=3)
                    line = {"version": col.version, "hits": len(hits), "rows": len(col)}
                finally:
                    col.close()
            except Exception as exc:  # noqa: BLE001 - every failure is what the test counts
                line = {"error": f"{type(exc).__name__}: {exc}"}
            log.write(json.dumps(line) + "\n")
            log.flush()
            time.sleep(0.1)


def main() -> None:
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="cmd", required=True)
    d = sub.add_parser("drive")
    d.add_argument("address")
    d.add_argument("src")
    d.add_argument("out")
    d.add_argument("--stall-after", type=int, default=0)
    d.add_argument("--marker", default="")
    d.add_argument("--factory", default="Flat")
    r = sub.add_parser("read")
    r.add_argument("collection")
    r.add_argument("log")
    r.add_argument("stop")
    args = parser.parse_args()
    drive(args) if args.cmd == "drive" else read(args)


if __name__ == "__main__":
    main()
