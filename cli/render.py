"""Human-readable rendering for the CLI (tables, summaries, progress). No library logic here."""

from __future__ import annotations

import datetime as dt
import shutil
from typing import Any

import click

RANDOM_WEIGHTS_NOTE = "note: this model has random weights (tests/demos only): rankings are not meaningful"


def model_banner(spec: str, root: str) -> str:
    """The line printed before indexing starts."""
    lines = [f"indexing into {root} with model {spec}"]
    if spec.endswith("/random"):
        lines.append(RANDOM_WEIGHTS_NOTE)
    return "\n".join(lines)


class Progress:
    """A click progress bar on stderr, one per ingest stage."""

    def __init__(self, *, enabled: bool) -> None:
        self.enabled = enabled
        self._bar: Any = None
        self._stage = ""
        self._done = 0

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self._close()

    def update(self, stage: str, done: int, total: int) -> None:
        """Progress callback for :func:`mmsearch.index`."""
        if not self.enabled:
            return
        if stage != self._stage:
            self._close()
            bar: Any = click.progressbar(length=total, label=f"embedding {stage}", file=click.get_text_stream("stderr"),  # type: ignore[operator]
                                         show_pos=True, show_eta=True)
            self._bar = bar.__enter__()
            self._stage, self._done = stage, 0
        self._bar.update(done - self._done)
        self._done = done

    def _close(self) -> None:
        if self._bar is not None:
            self._bar.__exit__(None, None, None)
            self._bar = None


def index_summary(result: Any) -> dict[str, Any]:
    """The JSON summary of an index run."""
    r = result.report
    return {
        "collection": str(result.path), "model": result.model, "seconds": round(result.seconds, 3),
        "images_embedded": r.images_embedded, "texts_embedded": r.texts_embedded,
        "skipped_unchanged": r.skipped_unchanged, "rejected": r.rejected,
        "skipped_quarantined": r.skipped_quarantined, "replaced": r.replaced, "deleted": r.deleted,
        "indexes_built": sorted(result.indexes),
    }


def index_text(result: Any) -> str:
    """The human summary of an index run."""
    s = index_summary(result)
    lines = [
        f"collection  {s['collection']}",
        f"model       {s['model']}",
        f"embedded    {s['images_embedded']} images, {s['texts_embedded']} texts in {s['seconds']:.1f}s",
        f"unchanged   {s['skipped_unchanged']} (already embedded)",
        f"rejected    {s['rejected']} new, {s['skipped_quarantined']} known"
        + ("  (see: mmsearch quarantine)" if s["rejected"] or s["skipped_quarantined"] else ""),
        f"changed     {s['replaced']} (embedded again)",
        f"deleted     {s['deleted']} (gone from disk)",
    ]
    return "\n".join(lines)


def hits_table(hits: list[Any]) -> str:
    """Ranked hits as an aligned table."""
    if not hits:
        return "no results"
    width = shutil.get_terminal_size((120, 20)).columns
    rows = []
    for rank, h in enumerate(hits, 1):
        what = h.uri if h.modality == "image" else h.text
        extra = h.caption if h.modality == "image" else h.uri
        rows.append((str(rank), f"{h.score:.4f}", str(h.id), str(what or ""), str(extra or "")))
    header = ("#", "score", "id", "item", "caption / source")
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(4)]
    out = []
    for r in [header, *rows]:
        line = "  ".join(c.ljust(w) for c, w in zip(r[:4], widths)) + "  " + r[4]
        out.append(line[:width] if len(line) > width else line)
    return "\n".join(out)


def info_text(info: dict[str, Any]) -> str:
    """A collection summary."""
    m = info["model"]
    lines = [
        f"collection  {info['path']}",
        f"model       {m['spec']}  (dim {m['dim']}, {m['metric']}, normalised={m['normalized']})",
        f"items       {info['images']} images, {info['texts']} texts "
        f"({info['deleted']['images'] + info['deleted']['texts']} deleted)",
        f"shards      {info['shards']['images']} image, {info['shards']['texts']} text ({info['embedding_dtype']})",
    ]
    for modality, idx in sorted(info["indexes"].items()):
        lines.append(f"index       {modality}: {idx['factory']}, {idx['rows']} vectors, built in {idx['build_seconds']}s")
    updated = dt.datetime.fromtimestamp(info["updated_at"]).isoformat(timespec="seconds")
    lines.append(f"updated     {updated}")
    return "\n".join(lines)


def quarantine_text(entries: list[dict[str, Any]]) -> str:
    """Rejected inputs, one per line."""
    if not entries:
        return "no rejected inputs"
    return "\n".join(f"{e.get('uri')}\t{e.get('reason')}\t{e.get('error')}" for e in entries)


def eval_text(report: Any) -> str:
    """Recall table with the chance level of each metric."""
    lines = [f"model {report.model}: {report.images} images, {report.texts} texts, {report.groups} groups"
             + (f", {report.rejected} unreadable images" if report.rejected else ""),
             f"{'metric':<16}{'recall %':>10}{'chance %':>10}"]
    for name, values, prefix in (("text->image", report.text_to_image, "t2i"), ("image->text", report.image_to_text, "i2t")):
        for key, value in values.items():
            k = key.split("@")[1]
            lines.append(f"{name + ' ' + key:<16}{value:>10.1f}{report.chance[f'{prefix}@{k}']:>10.1f}")
    return "\n".join(lines)
