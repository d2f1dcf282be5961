"""Human-readable rendering for the CLI (tables, summaries, progress). No library logic here."""

from __future__ import annotations

import datetime as dt
import os
import shutil
import sys
from typing import Any

RANDOM_WEIGHTS_NOTE = "note: this model has random weights (tests/demos only): rankings are not meaningful"


def model_banner(spec: str, root: str) -> str:
    """The line printed before indexing starts."""
    lines = [f"indexing into {root} with model {spec}"]
    if spec.endswith("/random"):
        lines.append(RANDOM_WEIGHTS_NOTE)
    return "\n".join(lines)


class Progress:
    """Live progress bars on stderr (tqdm: items/s and ETA), one per ingest stage.

    Disabled (silent) when stderr is not a terminal or JSON output was asked for. A stage whose total
    is 0 (not known yet: discovery, streamed corpora) shows a count and a rate without a bar.
    tqdm comes with open_clip_torch, a dependency already.
    """

    def __init__(self, *, enabled: bool) -> None:
        self.enabled = enabled
        self._bars: dict[str, Any] = {}

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        for bar in self._bars.values():
            bar.close()
        self._bars.clear()

    def update(self, stage: str, done: int, total: int) -> None:
        """Progress callback for :func:`mmsearch.index`."""
        if not self.enabled:
            return
        bar = self._bars.get(stage)
        if bar is None:
            from tqdm import tqdm

            # leave=False: the bars go when the run ends, and the summary takes their place
            bar = self._bars[stage] = tqdm(desc=STAGE_LABELS.get(stage, stage), total=total or None, unit=" " + stage,
                                           file=sys.stderr, dynamic_ncols=True, smoothing=0.1, leave=False)
        if total and bar.total != total:
            bar.total = total
        bar.update(done - bar.n)


STAGE_LABELS = {"discover": "finding files", "images": "embedding images", "texts": "embedding texts"}


def index_summary(result: Any) -> dict[str, Any]:
    """The JSON summary of an index run."""
    r = result.report
    ingest_s = getattr(r, "seconds", 0.0) or result.seconds
    return {
        "collection": str(result.path), "model": result.model, "seconds": round(result.seconds, 3),
        **r.to_dict(),
        "images_per_s": round(r.images_embedded / ingest_s, 1) if ingest_s else 0.0,
        "indexes_built": sorted(result.indexes),
    }


def count(n: int) -> str:
    """A count as the summaries print it: thousands separated (``12,345``)."""
    return f"{int(n):,}"


def seconds(s: float) -> str:
    """A duration as the summaries print it: ``0.16 s``, ``3.9 s``, ``42 s``, ``12 min 5 s``."""
    s = float(s)
    if s < 1:
        return f"{s:.2f} s"
    if s < 60:
        return f"{s:.1f} s" if s < 10 else f"{s:.0f} s"
    return f"{int(s // 60)} min {s % 60:.0f} s"


def rate(n: float) -> str:
    """Items per second: ``0.5``, ``9.3``, ``120``."""
    return f"{n:.1f}" if n < 10 else f"{n:,.0f}"


def index_text(result: Any) -> str:
    """The human summary of an index run (counts, durations and rates each in one format)."""
    s = index_summary(result)
    lines = [
        f"collection  {s['collection']}",
        f"model       {s['model']}",
        f"embedded    {count(s['images_embedded'])} images, {count(s['texts_embedded'])} texts in {seconds(s['seconds'])}"
        + (f" ({rate(s['images_per_s'])} images/s)" if s["images_embedded"] else ""),
        f"unchanged   {count(s['skipped_unchanged'])} (already embedded)",
        f"duplicates  {count(s['images_deduplicated'])} (identical content: embedding reused)",
        f"rejected    {count(s['rejected'])} new{_reasons(s['rejected_reasons'])}, {count(s['skipped_quarantined'])} known"
        + ("  (see: mmsearch quarantine)" if s["rejected"] or s["skipped_quarantined"] else ""),
        f"changed     {count(s['replaced'])} (embedded again)",
        f"deleted     {count(s['deleted'])} (gone from disk)",
    ]
    lines += [f"index       {m}: {index_line(vars(i))}; {i.update}" for m, i in sorted(result.indexes.items())]
    return "\n".join(lines)


def index_line(idx: dict[str, Any]) -> str:
    """One index: kind, size, tuned search parameters and the recall they measured (an exact index, which
    has nothing to tune, says "exact search" instead of a recall it cannot miss)."""
    params = " ".join(f"{k}={v:g}" for k, v in idx.get("params", {}).items())
    if params:
        recall = f"{params}, recall@{idx.get('recall_at_k', 10)} {idx.get('recall', 1.0):.3f}"
        if not idx.get("target_met", True):
            recall += f" (below the target {idx.get('target_recall')})"
        recall += f" on {idx['tuned_on']}" if idx.get("tuned_on") else ""
    else:
        recall = "exact search"
    parts = f" in {len(idx['part_files'])} parts" if idx.get("part_files") else ""
    return (f"{idx['factory']}{parts}, {count(idx['rows'])} vectors, {recall}, "
            f"{idx.get('latency_ms', 0):.2f} ms/query, built in {seconds(idx['build_seconds'])}")


def _reasons(counts: dict[str, int]) -> str:
    return f" ({', '.join(f'{n} {reason}' for reason, n in counts.items())})" if counts else ""


WEAK_LINE = "-- weaker matches below: probably not what you asked for --"
NO_GOOD_MATCH = "no good match in this collection: these are only the closest items"


def hits_table(hits: list[Any]) -> str:
    """Ranked hits as an aligned table. Where hits carry ``good_match``, a line separates the good matches from the
    weak ones, as on the web page, and a first line says when no hit is good."""
    if not hits:
        return "no results"
    width = _table_width()
    with_labels = any(getattr(h, "labels", None) for h in hits)
    rows = []
    for rank, h in enumerate(hits, 1):
        what = h.uri if h.modality == "image" else h.text
        extra = str((h.caption if h.modality == "image" else h.uri) or "")
        row = [str(rank), f"{h.score:.4f}", str(h.id), str(what or "")]
        if with_labels:  # the caption (yours) keeps its place before the labels (the model's), cut if long
            row += [_cut(extra, CAPTION_WIDTH_WITH_LABELS), labels_text(getattr(h, "labels", None) or [])]
        else:
            row.append(extra)
        rows.append(row)
    header = ["#", "score", "id", "item", "caption / source", *(["labels"] if with_labels else [])]
    fixed = len(header) - 1
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(fixed)]
    if with_labels and width is not None:  # long paths give way first (the file name stays); labels keep room
        room = width - (sum(widths) - widths[ITEM] + 2 * fixed) - min(LABELS_KEPT, max(len(r[-1]) for r in rows))
        if widths[ITEM] > max(room, ITEM_MIN):
            widths[ITEM] = max(room, ITEM_MIN)
            for r in rows:
                r[ITEM] = _cut_left(r[ITEM], widths[ITEM])
    out = []
    for r in [header, *rows]:
        line = ("  ".join(c.ljust(w) for c, w in zip(r[:fixed], widths)) + "  " + r[fixed]).rstrip()
        out.append(line[:width] if width is not None and len(line) > width else line)
    first_weak = next((n for n, h in enumerate(hits) if getattr(h, "good_match", None) is False), None)
    if first_weak == 0:
        out.insert(0, NO_GOOD_MATCH)
    elif first_weak is not None:
        out.insert(first_weak + 1, WEAK_LINE)  # after the header and the good rows
    return "\n".join(out)


CAPTION_WIDTH_WITH_LABELS = 40


def _table_width() -> int | None:
    """The width to cut the hits table at: ``$COLUMNS``, else the terminal's; None (whole lines) when the output
    is not a terminal (a pipe or a file keeps everything)."""
    columns = os.environ.get("COLUMNS", "")
    if columns.isdigit() and int(columns) > 0:
        return int(columns)
    return shutil.get_terminal_size().columns if sys.stdout.isatty() else None
ITEM = 3  # the item column of the hits table (an image's path or a text)
ITEM_MIN = 24  # an item cut for the labels keeps at least this many characters
LABELS_KEPT = 36  # what the labels column keeps when the line is too wide


def _cut_left(text: str, width: int) -> str:
    return text if len(text) <= width else "…" + text[len(text) - width + 1:]


def _cut(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def labels_text(labels: list[dict[str, Any]], n: int = 2) -> str:
    """A hit's best ``n`` labels as the table shows them: ``tabby cat 0.62, tiger cat 0.21``."""
    return ", ".join(f"{label['name']} {label['confidence']:.2f}" for label in labels[:n])


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
        lines.append(f"index       {modality}: {index_line(idx)}")
    updated = dt.datetime.fromtimestamp(info["updated_at"]).isoformat(timespec="seconds")
    lines.append(f"version     {info.get('version', 0)}, published {updated} (`mmsearch versions` lists them)")
    if info.get("writer"):
        lines.append(f"writing     {info['writer']}: readers keep the version above until it publishes")
    return "\n".join(lines)


def versions_text(rows: list[dict[str, Any]]) -> str:
    """The version list, oldest first, the current one marked with *."""
    lines = [f"  {'version':>7}  {'published':<19}  {'operation':<13}{'images':>8}{'texts':>8}"]
    for r in rows:
        if not r.get("readable", True):
            lines.append(f"  {r['version']:>7}  (unreadable: `mmsearch verify` says why)")
            continue
        when = dt.datetime.fromtimestamp(r["published_at"]).isoformat(sep=" ", timespec="seconds")
        mark = "*" if r["current"] else " "
        held = "  (held by a reader)" if r.get("held_by_reader") else ""
        lines.append(f"{mark} {r['version']:>7}  {when:<19}  {r['operation']:<13}{r['images']:>8}{r['texts']:>8}{held}")
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


def answer_text(bundle: Any, answer: str | None, *, failed: bool = False) -> str:
    """The chat model's answer with its sources, or the evidence block and how to configure a model (only the
    evidence when a configured model ``failed``: the caller says why)."""
    if answer is None and failed:
        return bundle.to_prompt()
    if answer is None:
        return (bundle.to_prompt() + "\n\n(no chat model configured: set MMSEARCH_CHAT_URL and MMSEARCH_CHAT_MODEL, "
                "or pass --chat-url and --chat-model, to get an answer)")
    sources = [f"[{i.citation}] {i.uri if i.modality == 'image' else i.text}" for i in [*bundle.images, *bundle.texts]]
    return answer + "\n\nSources:\n" + "\n".join(sources)


def models_text(rows: list[dict[str, Any]], hub_cache: str) -> str:
    """The models this machine can load, and how to get OpenCLIP weights onto it when none are cached."""
    width = max(len(str(r["spec"])) for r in rows)
    lines = [f"{'ok' if r['ok'] else '--'}  {str(r['spec']):<{width}}  {r['kind']}: {r['source']}" for r in rows]
    if not any(r["kind"] == "OpenCLIP" for r in rows):
        lines += ["", f"No OpenCLIP weights in the Hugging Face cache ({hub_cache}). To get some onto this machine:",
                  "  on a machine with network:  mmsearch models fetch openclip:ViT-B-32/laion2b_s34b_b79k --to DIR",
                  f"  copy DIR here, then:        HF_HUB_CACHE=DIR mmsearch models   (or merge DIR into {hub_cache})",
                  "  or use a weights file:      --model openclip:ViT-B-32@/path/to/open_clip_model.safetensors"]
    return "\n".join(lines)


def fetched_text(spec: str, path: str, to: str) -> str:
    """What ``models fetch`` did, and what to do with the folder on the machine without network."""
    return "\n".join([f"fetched {spec}: {path}",
                      f"copy {to} to the machine without network, then there: export HF_HUB_CACHE=<the copy>",
                      f"(or merge it into ~/.cache/huggingface/hub), check with `mmsearch models`, use with --model {spec}"])


def train_text(report: Any) -> str:
    """Before/after recall on the held-out split, and where the adapter went."""
    lines = [f"adapter for {report.base_model} ({report.head} heads) saved to {report.adapter}",
             f"{report.pairs} pairs: {report.train_pairs} train, {report.val_pairs} validation, {report.test_pairs} test"
             + (f"; {report.skipped_images} unreadable images skipped" if report.skipped_images else "")
             + (f"; {report.merged_duplicates} duplicate pairs merged" if report.merged_duplicates else ""),
             f"best epoch {report.best_epoch} of {report.epochs_run}, temperature {report.temperature:.4f}, "
             f"{report.seconds:.1f}s",
             f"{'held-out metric':<18}{'before %':>10}{'after %':>10}"]
    if getattr(report, "validation", None):
        v = report.validation
        lines[3:3] = [f"chosen by {v['method']} on {v['pairs']} pairs: validation MRR {v['base']:.4f} (base) -> "
                      f"{v['adapter']:.4f} (adapter)"] + [f"note: {n}" for n in report.notes]
    for name, key in (("text->image", "text_to_image"), ("image->text", "image_to_text")):
        for metric, value in report.before[key].items():
            lines.append(f"{name + ' ' + metric:<18}{value:>10.1f}{report.after[key][metric]:>10.1f}")
    lines.append(f"use it with: --model adapter:{report.adapter}")
    return "\n".join(lines)
