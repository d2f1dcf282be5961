"""What a cluster run lost and did again: worker processes, actors and whole nodes going away.

The Ray engine retries lost work itself instead of leaving it to Ray's transparent retries, so that
the driver can say what happened: every task whose actor, worker process or node went away (or whose
finished result was on a node that went away) is logged as lost, counted, and submitted again, to a
restarted actor (Ray restarts an actor elsewhere when its node dies, ``max_restarts``) or as a new
task. Decode + encode and the index parts are pure functions of their inputs, and only the driver
writes the collection, so a retry cannot change or duplicate a row: a run that lost a node ends with
the collection a clean run makes.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any, Callable

log = logging.getLogger("mmsearch.distributed")

__all__ = ["ClusterEvents", "loss_errors", "node_states"]


def loss_errors(ray: Any) -> tuple[type[BaseException], ...]:
    """The exceptions that mean "the work was lost with its process or node", not "the work failed"."""
    names = ("RayActorError", "WorkerCrashedError", "NodeDiedError", "ObjectLostError", "OwnerDiedError",
             "ObjectReconstructionFailedError", "LocalRayletDiedError", "ActorUnavailableError", "TaskUnschedulableError")
    found = tuple(getattr(ray.exceptions, n) for n in names if isinstance(getattr(ray.exceptions, n, None), type))
    return found


def node_states(ray: Any) -> dict[str, bool]:
    """node id -> alive, for every node the cluster has known."""
    try:
        return {n["NodeID"]: bool(n["Alive"]) for n in ray.nodes()}
    except Exception:  # pragma: no cover - the GCS unreachable: say nothing rather than fail the run
        return {}


@dataclass
class ClusterEvents:
    """The losses and retries of one run (``IndexResult.report.cluster`` / the report's ``cluster`` entry)."""

    progress: Callable[[str, int, int], None] | None = None
    tasks_lost: int = 0
    tasks_retried: int = 0
    nodes_lost: list[str] = field(default_factory=list)
    events: list[dict[str, Any]] = field(default_factory=list)
    _nodes_at_start: dict[str, bool] = field(default_factory=dict)

    def start(self, ray: Any) -> None:
        self._nodes_at_start = node_states(ray)

    def finish(self, ray: Any) -> None:
        """Note the nodes that left during the run (also those that took no task of ours with them)."""
        for node_id, alive in node_states(ray).items():
            if not alive and self._nodes_at_start.get(node_id) and node_id not in self.nodes_lost:
                self.nodes_lost.append(node_id)
                log.warning("cluster: node %s left the cluster during the run", node_id[:12])

    def lost(self, ray: Any, what: str, exc: BaseException, *, node: str | None, attempt: int, retries: int) -> None:
        """Record one lost task (``what``), and that it is retried unless ``attempt`` passed ``retries``."""
        self.tasks_lost += 1
        now = node_states(ray)
        for node_id, alive in now.items():
            if not alive and self._nodes_at_start.get(node_id) and node_id not in self.nodes_lost:
                self.nodes_lost.append(node_id)
                log.warning("cluster: node %s left the cluster (%d of %d nodes alive)", node_id[:12],
                            sum(now.values()), len(now))
        node_gone = node is not None and now.get(node) is False
        cause = f"node {node[:12]} lost" if node_gone else type(exc).__name__
        retry = attempt < retries
        self.events.append({"time": round(time.time(), 3), "task": what, "node": node, "node_lost": node_gone,
                            "error": type(exc).__name__, "retried": retry, "attempt": attempt + 1})
        if retry:
            self.tasks_retried += 1
            log.warning("cluster: lost %s (%s); retrying it (attempt %d of %d)", what, cause, attempt + 2, retries + 1)
            if self.progress is not None:
                self.progress("retry", self.tasks_retried, 0)
        else:
            log.error("cluster: lost %s (%s) %d times: giving up", what, cause, attempt + 1)

    def summary(self) -> str:
        if not self.tasks_lost and not self.nodes_lost:
            return "no task lost"
        nodes = f"{len(self.nodes_lost)} node(s) lost ({', '.join(n[:12] for n in self.nodes_lost)}), " if self.nodes_lost else ""
        return f"{nodes}{self.tasks_lost} task(s) lost, {self.tasks_retried} retried"

    def to_dict(self) -> dict[str, Any]:
        return {"tasks_lost": self.tasks_lost, "tasks_retried": self.tasks_retried, "nodes_lost": list(self.nodes_lost),
                "events": list(self.events)}
