"""The ``mmsearch`` command line: a thin layer over the library (parse, call, print)."""

from __future__ import annotations

import errno
import functools
import json
import logging
import sys
from typing import Any, Callable

import click

from mmsearch.errors import MMSearchError

from . import render


def _library_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Turn library errors into a one-line message and exit status 1."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except MMSearchError as exc:
            raise click.ClickException(str(exc)) from exc
        except OSError as exc:  # a full disk, a permission, a vanished directory: one line, the last version stays
            where = f" ({exc.filename})" if exc.filename else ""
            hint = " (free some space and run it again: the collection is as it was before this run)" \
                if exc.errno == errno.ENOSPC else ""
            raise click.ClickException(f"{exc.strerror or exc}{where}{hint}") from exc

    return wrapper


class Duration(click.ParamType):
    """A duration: seconds, or a number with s, m, h or d (``90s``, ``30m``, ``1h``, ``7d``)."""

    name = "duration"
    UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}

    def convert(self, value: Any, param: Any, ctx: Any) -> float:
        if isinstance(value, (int, float)):
            return float(value)
        text = str(value).strip().lower()
        unit = self.UNITS.get(text[-1:], None)
        try:
            seconds = float(text[:-1] if unit else text) * (unit or 1)
        except ValueError:
            self.fail(f"{value!r} is not a duration (e.g. 90s, 30m, 1h, 7d)", param, ctx)
        if seconds < 0:
            self.fail("a duration cannot be negative", param, ctx)
        return seconds


def collection_argument(fn: Callable[..., Any]) -> Callable[..., Any]:
    """``[COLLECTION]`` as an argument, or as ``--collection/-c`` the way ``query`` and ``ask`` take it; the command
    gets one ``collection`` (None: the default collection, see ``mmsearch query``)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, collection: str | None, collection_option: str | None, **kwargs: Any) -> Any:
        if collection and collection_option and collection != collection_option:
            raise click.ClickException(f"two collections given ({collection} and --collection {collection_option}): "
                                   "give one")
        return fn(*args, collection=collection or collection_option, **kwargs)

    wrapper = click.option("--collection", "-c", "collection_option", type=click.Path(file_okay=False),
                           help="Collection directory (or give it as the argument).")(wrapper)
    return click.argument("collection", required=False, type=click.Path(file_okay=False))(wrapper)


WAIT_OPTION = click.option("--wait", "wait_s", type=Duration(), default="10s", show_default=True,
                           help="How long to wait for another process writing the collection (0: fail at once).")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="mmsearch")
@click.option("-v", "--verbose", count=True, help="More log output (-v info, -vv debug).")
def main(verbose: int) -> None:
    """Index image folders and text corpora, then search them by text or image."""
    level = logging.WARNING - 10 * min(verbose, 2)
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)


@main.command("index")
@click.argument("paths", nargs=-1, required=True, type=click.Path(exists=True))
@click.option("--out", "-o", type=click.Path(file_okay=False),
              help="Collection directory [default: PATH.mms]; with --engine ray also an fsspec URL (s3://, gs://, file://).")
@click.option("--model", "-m", help="Model spec, e.g. builtin, openclip:ViT-B-32/laion2b_s34b_b79k.")
@click.option("--batch-size", default=32, show_default=True, type=click.IntRange(1, 4096))
@click.option("--workers", type=click.IntRange(0, 64), help="Decode worker processes [default: split the cores from "
              "measured decode and encode costs]; 0: decode in the main process. (--engine ray: see --actors.)")
@click.option("--device", help="torch device (cpu, cuda, cuda:1) [default: cuda if available].")
@click.option("--shard-rows", default=8192, show_default=True, type=click.IntRange(1),
              help="Rows per committed shard (the most work a killed run loses).")
@click.option("--decode-timeout", "decode_timeout_s", default=30.0, show_default=True, type=click.FloatRange(0),
              help="Seconds one image may take to decode before it is quarantined (0: no limit).")
@click.option("--captions", multiple=True, type=click.Path(exists=True, dir_okay=False),
              help="Caption manifest (.jsonl/.csv/.parquet mapping image paths to captions); repeatable.")
@click.option("--text-column", help="Text column of .jsonl/.csv/.parquet corpora and caption manifests.")
@click.option("--id-column", help="Id column of text corpora [default: id, when present].")
@click.option("--path-column", help="Image path column of caption manifests [default: path, image, file...].")
@click.option("--no-dedup", "dedup", flag_value=False, default=True, help="Embed identical images separately.")
@click.option("--index", "index_factory", help="auto, or a FAISS factory string (HNSW32, IVF4096,Flat...) "
              "[default: the collection's, else auto].")
@click.option("--max-index-memory", help="Memory budget of an index, e.g. 4GB [default: the collection's, else 4GB].")
@click.option("--target-recall", type=click.FloatRange(0, 1, min_open=True),
              help="recall@10 the search parameters are tuned to [default: the collection's, else 0.95].")
@click.option("--index-shards", type=click.IntRange(1, 4096),
              help="Keep each index as N parts searched together, one per Ray task with --engine ray "
              "[default: the collection's, else 1: one index].")
@click.option("--engine", type=click.Choice(["local", "ray"]), default="local", show_default=True,
              help="local: this machine; ray: decode + encode on a Ray cluster (pip install 'mmsearch[ray]').")
@click.option("--address", help="Ray cluster address (auto, ray://head:10001) [default: $RAY_ADDRESS or a local Ray].")
@click.option("--actors", type=click.IntRange(1, 4096), help="--engine ray: encoder actors, each reading, decoding and "
              "encoding its tasks [default: 2].")
@click.option("--num-gpus-per-actor", "--num-gpus-per-worker", "num_gpus_per_actor", type=click.FloatRange(0), default=0,
              show_default=True, help="--engine ray: GPUs per encoder actor.")
@click.option("--ray-pipeline", type=click.Choice(["actors", "data"]), default="actors", show_default=True,
              help="--engine ray: actors decode + encode; data: Ray Data CPU decode tasks feeding encoder actors.")
@click.option("--staging", type=click.Path(file_okay=False),
              help="--engine ray with a URL --out: the local working copy [default: under $MMSEARCH_HOME/staging].")
@WAIT_OPTION
@click.option("--retention", "retention_s", type=Duration(), default="1h", show_default=True,
              help="Keep superseded versions this long for readers that hold none (see docs/sharing.md).")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
@_library_errors
def index_cmd(paths: tuple[str, ...], out: str | None, model: str | None, batch_size: int,
              workers: int | None, device: str | None, shard_rows: int, decode_timeout_s: float, captions: tuple[str, ...],
              text_column: str | None, id_column: str | None, path_column: str | None, dedup: bool,
              index_factory: str | None, max_index_memory: str | None, target_recall: float | None,
              index_shards: int | None, engine: str, address: str | None, actors: int | None, num_gpus_per_actor: float,
              ray_pipeline: str, staging: str | None, wait_s: float | None, retention_s: float, as_json: bool) -> None:
    """Embed and index image folders, images, or .txt/.jsonl/.csv/.parquet text corpora (incremental, resumable)."""
    import mmsearch
    from mmsearch.api import model_for_collection
    from mmsearch.config import default_collection_for, forget_collection, last_collection
    from mmsearch.indexes import IndexRequest, parse_bytes
    from mmsearch.ingest import IngestOptions

    actors = _ray_actors(engine, actors, workers)
    root = out or str(default_collection_for(paths[0]))
    is_url = "://" in root
    if is_url and engine != "ray":
        raise click.UsageError(f"--out {root}: a URL collection needs --engine ray (the local engine writes local paths)")
    created = not is_url and not _is_collection(root)
    if created:  # before anything is written: an empty input makes no collection and no default
        _check_inputs_have_items(paths, text_column=text_column, id_column=id_column)
    previous = last_collection()
    spec = model if is_url else model_for_collection(root, model)  # a URL collection's own model is read after the pull
    if not as_json:
        click.echo(render.model_banner(spec or "(the collection's own, else the default)", root), err=True)
    ingest = IngestOptions(batch_size=batch_size, workers=workers if engine == "local" else 0, shard_rows=shard_rows,
                           decode_timeout_s=decode_timeout_s or None, captions=captions, dedup=dedup,
                           text_column=text_column, id_column=id_column, path_column=path_column)
    request = IndexRequest(factory=index_factory, target_recall=target_recall, parts=index_shards,
                           max_index_memory_bytes=parse_bytes(max_index_memory) if max_index_memory else None)
    engine_object = None
    if engine == "ray":
        from mmsearch.distributed import RayEngine, RayOptions

        engine_object = RayEngine(RayOptions(address=address, actors=actors, num_gpus_per_actor=num_gpus_per_actor,
                                             pipeline=ray_pipeline, staging=staging))
    with render.Progress(enabled=not as_json and sys.stderr.isatty()) as progress:
        result = mmsearch.index(list(paths), out=root, model=spec, ingest=ingest, index=request, engine=engine_object,
                                device=device, progress=progress.update, wait_s=wait_s, retention_s=retention_s)
    report = result.report
    if created and not (report.images_embedded or report.texts_embedded or report.skipped_unchanged):
        import shutil

        forget_collection(result.path, previous)  # nothing searchable: not the default collection either
        shutil.rmtree(result.path, ignore_errors=True)  # it did not exist before this run
        reasons = ", ".join(f"{n} {why}" for why, n in sorted(report.rejected_reasons.items()))
        raise click.ClickException(
            f"nothing could be indexed from {', '.join(paths)}: every input was rejected ({reasons or 'none found'}); "
            "no collection was written. `mmsearch -v index ...` logs why each file failed")
    click.echo(json.dumps(render.index_summary(result)) if as_json else render.index_text(result))


def _ray_actors(engine: str, actors: int | None, workers: int | None) -> int:
    """The encoder actors of ``--engine ray``: ``--actors``, else the deprecated ``--workers`` (one release, with
    a warning), else 2. ``--actors`` without ``--engine ray`` is a usage error."""
    if engine != "ray":
        if actors is not None:
            raise click.UsageError("--actors is for --engine ray; decode processes on this machine: --workers N")
        return 2
    if workers is None:
        return actors or 2
    if actors is not None:
        raise click.UsageError("give --actors N alone with --engine ray (--workers is for decode processes)")
    click.echo("warning: --workers with --engine ray is deprecated and will mean decode processes only: "
               f"use --actors {workers or 2}", err=True)
    return workers or 2


def _is_collection(root: str) -> bool:
    from pathlib import Path

    from mmsearch.store.store import exists

    return exists(Path(root).expanduser())


def _check_inputs_have_items(paths: tuple[str, ...], *, text_column: str | None, id_column: str | None) -> None:
    """Fail (one line naming the fix) when an input holds nothing to index: a folder with no images, an empty
    text corpus."""
    import os
    from pathlib import Path

    from mmsearch.ingest.corpora import TEXT_CORPUS_EXTENSIONS, iter_text_records
    from mmsearch.ingest.discover import IMAGE_EXTENSIONS, classify, iter_image_files

    for raw in paths:
        path = Path(raw)
        if classify(path.absolute()) == "images":
            if not path.is_dir() or next(iter_image_files(path, on_reject=lambda *_: None), None) is not None:
                continue
            corpora = sorted(p.name for p in path.iterdir() if p.suffix.lower() in TEXT_CORPUS_EXTENSIONS
                             and p.is_file())[:3]
            hint = (f"; to index its texts give the file itself, e.g. `mmsearch index {os.path.join(raw, corpora[0])}`"
                    if corpora else "")
            raise click.ClickException(
                f"no images in {raw} (looked for {', '.join(sorted(IMAGE_EXTENSIONS))}, in subfolders too): give a "
                f"folder that holds images, an image, or a text corpus (.txt, .jsonl, .csv, .parquet){hint}. "
                "No collection was written")
        elif next(iter_text_records(path, text_column=text_column, id_column=id_column), None) is None:
            raise click.ClickException(f"no texts in {raw}: the corpus is empty (or every row's text is); "
                                       "nothing was indexed and no collection was written")


@main.command("query")
@click.argument("words", nargs=-1, metavar="[TEXT]...")
@click.option("--image", "image", type=click.Path(exists=True, dir_okay=False), help="Query by an image file.")
@click.option("--id", "item_id", type=int, help="Query by an item already in the collection.")
@click.option("--plus", multiple=True, help="Add a text to the query (repeatable): --image x.jpg --plus 'in winter'.")
@click.option("--minus", multiple=True, help="Subtract a text from the query (repeatable): --minus people.")
@click.option("--collection", "-c", type=click.Path(file_okay=False), help="Collection directory.")
@click.option("-k", default=10, show_default=True, type=click.IntRange(1, 10_000), help="Number of results.")
@click.option("--modality", type=click.Choice(["image", "text"]), default="image", show_default=True,
              help="What to return: images or texts.")
@click.option("--path-glob", help="Only items whose path (or text source) matches this glob.")
@click.option("--path-prefix", help="Only items whose path (or text source) starts with this.")
@click.option("--caption-contains", help="Only items whose caption (or text) contains this (any case).")
@click.option("--label", "labels", multiple=True,
              help="Only images with this label (the model's top concepts; whole words, any case). Repeat for any "
                   "of several.")
@click.option("--dedup", type=click.FloatRange(0, 1, min_open=True),
              help="Keep one result per group of near-duplicates more similar than this (e.g. 0.95).")
@click.option("--model", "-m", help="Check the collection was built with this model.")
@click.option("--json", "as_json", is_flag=True, help="Print results as JSON.")
@_library_errors
def query_cmd(words: tuple[str, ...], image: str | None, item_id: int | None, plus: tuple[str, ...],
              minus: tuple[str, ...], collection: str | None, k: int, modality: str, path_glob: str | None,
              path_prefix: str | None, caption_contains: str | None, labels: tuple[str, ...], dedup: float | None,
              model: str | None, as_json: bool) -> None:
    """Search a collection by TEXT, --image FILE or --id N (optionally --plus / --minus texts).

    TEXT may be several words, quoted or not: `mmsearch query red car` searches "red car"."""
    import mmsearch
    from mmsearch.config import resolve_collection

    text = _query_text(words)
    given = [name for name, value in (("TEXT", text), ("--image", image), ("--id", item_id)) if value is not None]
    if len(given) > 1:
        raise click.ClickException(f"give exactly one of TEXT, --image FILE or --id N, not {' and '.join(given)} "
                                   "(add texts to an image or id query with --plus / --minus)")
    if not given and not plus:
        raise click.ClickException("give exactly one of TEXT, --image FILE or --id N, "
                                   "e.g. mmsearch query \"a red car\" (or --plus TEXT terms)")
    col = mmsearch.open(resolve_collection(collection), model=model)
    filters = mmsearch.Filter(path_glob=path_glob, path_prefix=path_prefix, caption_contains=caption_contains,
                              labels=labels)
    hits = col.search(text, image=image, id=item_id, positive=list(plus), negative=list(minus), k=k,
                      modality=modality, filter=None if filters.is_empty() else filters, dedup=dedup)
    click.echo(json.dumps([h.to_dict() for h in hits], indent=2) if as_json else render.hits_table(hits))


def _query_text(words: tuple[str, ...]) -> str | None:
    """The words of an unquoted query joined with spaces, as a shell would have passed them quoted (rclip and
    the llm CLI take one quoted argument; joining accepts both, and the query takes no other argument that a
    stray word could have meant). A word that names a collection directory is refused with the flag to use."""
    from pathlib import Path

    for word in words[1:]:
        if word.endswith(".mms") and Path(word).is_dir():
            raise click.ClickException(f"{word!r} is a collection, not part of the query: "
                                       f"use --collection {word} (and quote the query)")
    text = " ".join(words).strip()
    return text or None


@main.command("ask")
@click.argument("words", nargs=-1, required=True, metavar="QUESTION...")
@click.option("--collection", "-c", type=click.Path(file_okay=False), help="Collection directory.")
@click.option("-k", default=5, show_default=True, type=click.IntRange(1, 100), help="Images and texts to cite.")
@click.option("--chat-url", help="OpenAI-compatible API base URL [env: MMSEARCH_CHAT_URL].")
@click.option("--chat-model", help="Chat model name [env: MMSEARCH_CHAT_MODEL].")
@click.option("--json", "as_json", is_flag=True, help="Print the evidence bundle (and answer) as JSON.")
@_library_errors
def ask_cmd(words: tuple[str, ...], collection: str | None, k: int, chat_url: str | None, chat_model: str | None,
            as_json: bool) -> None:
    """Answer QUESTION from the collection: retrieve evidence, and ask a chat model when one is configured.

    When the chat endpoint fails, the evidence is still printed, then one error line naming the endpoint (exit 1)."""
    import mmsearch
    from mmsearch.config import chat_endpoint, resolve_collection
    from mmsearch.query.chat import ChatConfig, ChatError, ask

    question = _query_text(words) or ""
    if not question:
        raise click.ClickException("give a QUESTION, e.g. mmsearch ask \"is there a lighthouse?\"")
    endpoint = chat_endpoint(chat_url, chat_model)  # a half-set configuration fails before the search
    config = ChatConfig(**endpoint._asdict()) if endpoint else None
    bundle = mmsearch.open(resolve_collection(collection)).evidence(question, k=k)
    answer, error = None, None
    if config:
        try:
            answer = ask(bundle, config)
        except ChatError as exc:
            error = str(exc)
    if as_json:
        click.echo(json.dumps({**bundle.to_dict(), "answer": answer, **({"chat_error": error} if error else {})},
                              indent=2))
    else:
        click.echo(render.answer_text(bundle, answer, failed=error is not None))
    if error:  # the evidence is out; the status still says the answer is missing
        raise click.ClickException(f"{error} (the evidence above is printed without an answer)")


@main.command("info")
@collection_argument
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
@_library_errors
def info_cmd(collection: str | None, as_json: bool) -> None:
    """Show what a collection holds: model, counts, shards, indexes."""
    import mmsearch
    from mmsearch.config import resolve_collection

    info = mmsearch.open(resolve_collection(collection)).info()
    click.echo(json.dumps(info, indent=2) if as_json else render.info_text(info))


@main.command("verify")
@collection_argument
@click.option("--deep", is_flag=True, help="Also read every shard: row counts, unique ids, embedding norms.")
@click.option("--json", "as_json", is_flag=True, help="Print the problems as JSON.")
@_library_errors
def verify_cmd(collection: str | None, deep: bool, as_json: bool) -> None:
    """Check every file of the collection's current version (presence, size, checksum); exit 1 naming each problem."""
    import mmsearch
    from mmsearch.config import resolve_collection

    path = resolve_collection(collection)
    problems = mmsearch.verify(path, deep=deep)
    if as_json:
        click.echo(json.dumps({"path": str(path), "problems": problems}, indent=2))
    else:
        click.echo("\n".join(problems) if problems else f"{path}: no problems found{' (deep)' if deep else ''}")
    if problems:
        if not as_json:
            click.echo(f"{len(problems)} problem(s): `mmsearch index` repairs what it can (see docs/sharing.md)", err=True)
        sys.exit(1)


@main.command("versions")
@collection_argument
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
@_library_errors
def versions_cmd(collection: str | None, as_json: bool) -> None:
    """List the versions a collection keeps (the current one marked)."""
    import mmsearch
    from mmsearch.config import resolve_collection

    rows = mmsearch.versions(resolve_collection(collection))
    click.echo(json.dumps(rows, indent=2) if as_json else render.versions_text(rows))


@main.command("vacuum")
@collection_argument
@click.option("--retention", "retention_s", type=Duration(), default="0s", show_default=True,
              help="Keep versions superseded less than this long ago.")
@WAIT_OPTION
@_library_errors
def vacuum_cmd(collection: str | None, retention_s: float, wait_s: float) -> None:
    """Remove old versions no reader holds, and files no version lists."""
    import mmsearch
    from mmsearch.config import resolve_collection

    done = mmsearch.vacuum(resolve_collection(collection), retention_s=retention_s, wait_s=wait_s)
    kept = f"; {done['leased']} kept: a reader holds them" if done["leased"] else ""
    click.echo(f"removed {done['versions']} old version(s) and {done['files']} file(s){kept}")


@main.command("quarantine")
@collection_argument
@click.option("--json", "as_json", is_flag=True, help="Print as JSON lines.")
@_library_errors
def quarantine_cmd(collection: str | None, as_json: bool) -> None:
    """List the inputs a collection rejected, with the reason."""
    import mmsearch
    from mmsearch.config import resolve_collection

    entries = mmsearch.open(resolve_collection(collection)).quarantine()
    click.echo("\n".join(json.dumps(e) for e in entries) if as_json else render.quarantine_text(entries))


@main.command("eval")
@click.argument("pairs", type=click.Path(exists=True))
@click.option("--model", "-m", help="Model spec [default: builtin].")
@click.option("--batch-size", default=32, show_default=True, type=click.IntRange(1, 4096))
@click.option("--device", help="torch device [default: cuda if available].")
@click.option("--text-column", help="Text column of a .jsonl/.csv/.parquet PAIRS table [default: text, caption, content].")
@click.option("--path-column", help="Image path column of a PAIRS table [default: path, image, file...].")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@_library_errors
def eval_cmd(pairs: str, model: str | None, batch_size: int, device: str | None, text_column: str | None,
             path_column: str | None, as_json: bool) -> None:
    """Measure retrieval quality on PAIRS: a captioned image folder or a .jsonl/.csv/.parquet table of image paths
    and texts (optional group column), read as caption manifests are."""
    import mmsearch

    report = mmsearch.evaluate(pairs, model=model, batch_size=batch_size, device=device, text_column=text_column,
                               path_column=path_column)
    click.echo(json.dumps(report.to_dict(), indent=2) if as_json else render.eval_text(report))



@main.command("train")
@click.argument("pairs", type=click.Path(exists=True))
@click.option("--base", "-m", "base", help="Base model spec to adapt [default: builtin].")
@click.option("--out", "-o", required=True, type=click.Path(file_okay=False), help="Folder to save the adapter in.")
@click.option("--force", is_flag=True, help="Replace an adapter already saved at --out.")
@click.option("--epochs", default=100, show_default=True, type=click.IntRange(1, 100_000))
@click.option("--head", default="linear", show_default=True, type=click.Choice(["linear", "mlp"]))
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--device", help="torch device for the base model [default: cuda if available].")
@click.option("--text-column", help="Text column of a .jsonl/.csv/.parquet PAIRS table [default: text, caption, content].")
@click.option("--path-column", help="Image path column of a PAIRS table [default: path, image, file...].")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@_library_errors
def train_cmd(pairs: str, base: str | None, out: str, force: bool, epochs: int, head: str, seed: int,
              device: str | None, text_column: str | None, path_column: str | None, as_json: bool) -> None:
    """Fit an adapter to PAIRS (a captioned image folder or a .jsonl/.csv/.parquet table of image paths and texts,
    optional group column); use it as --model adapter:OUT."""
    from mmsearch.config import default_model
    from mmsearch.train import TrainConfig, train_adapter

    def progress(p: Any) -> None:
        if not as_json:
            val = "" if p.val_loss != p.val_loss else f"  val loss {p.val_loss:.4f}  val MRR {p.val_score:.4f}"  # NaN: no val
            click.echo(f"{p.stage + '  ' if p.stage else ''}epoch {p.epoch}/{p.epochs}  train loss {p.train_loss:.4f}{val}  "
                       f"best {p.best_epoch}", err=True)

    report = train_adapter(pairs, base=base or default_model(), out=out, force=force, device=device, progress=progress,
                           config=TrainConfig(epochs=epochs, head=head, seed=seed), text_column=text_column,
                           path_column=path_column)
    click.echo(json.dumps(report.to_dict(), indent=2) if as_json else render.train_text(report))


@main.command("models")
@click.argument("action", required=False, type=click.Choice(["list", "fetch", "check", "export"]), default="list")
@click.argument("spec", required=False)
@click.option("--to", "to", type=click.Path(file_okay=False),
              help="fetch: the folder to download the weights into; export: the cache folder for the ONNX graphs.")
@click.option("--weights", multiple=True, type=click.Path(), help="list: also check this local weights file (repeatable).")
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
@_library_errors
def models_cmd(action: str, spec: str | None, to: str | None, weights: tuple[str, ...], as_json: bool) -> None:
    """List the models this machine can load offline; fetch OpenCLIP weights to carry to one; check one loads;
    export one's ONNX graphs for a CPU box without torch.

    \b
    mmsearch models                                   the built-in model, OpenCLIP weights in the HF cache
    mmsearch models fetch openclip:ARCH/TAG --to DIR  (on a machine with network) download them into DIR
    mmsearch models check SPEC                        load SPEC and embed a probe text
    mmsearch models export SPEC --to DIR              (where torch is) ONNX graphs into DIR, for MMSEARCH_CACHE_DIR
    """
    from mmsearch.encoders.registry import fetch_weights, hub_cache_dir, local_models

    if action == "list":
        if spec:
            raise click.ClickException(f"`mmsearch models` lists; to fetch {spec}: mmsearch models fetch {spec} --to DIR")
        rows = local_models(weights)
        if as_json:
            click.echo(json.dumps(rows, indent=2))
            return
        click.echo(render.models_text(rows, str(hub_cache_dir())))
        return
    if not spec:
        raise click.ClickException(f"give the model: mmsearch models {action} SPEC"
                                   + (" --to DIR" if action in ("fetch", "export") else ""))
    if action in ("fetch", "export") and not to:
        raise click.ClickException(f"give the folder: mmsearch models {action} {spec} --to DIR")
    if action == "export":
        from mmsearch.encoders.registry import export_onnx

        done = export_onnx(spec, to)
        click.echo(json.dumps(done) if as_json else
                   f"{done['spec']}: image tower {done['image']}, text tower {done['text']}, in {done['cache']} "
                   f"(copy it to the CPU box and set MMSEARCH_CACHE_DIR to it)")
        return
    if action == "fetch":
        path = fetch_weights(spec, to)
        click.echo(json.dumps({"spec": spec, "file": path, "cache": to}) if as_json else render.fetched_text(spec, path, to))
        return
    from mmsearch.encoders.registry import load_encoder

    encoder = load_encoder(spec, device="cpu")
    dim = int(encoder.encode_texts(["a photo of a cat"]).shape[1])
    click.echo(json.dumps({"spec": encoder.spec, "dim": dim, "ok": True}) if as_json
               else f"{encoder.spec}: loads, embeds a text into {dim} dimensions")


@main.command("serve")
@click.argument("collections", nargs=-1)
@click.option("--host", default="127.0.0.1", show_default=True, help="Interface to bind (0.0.0.0 exposes it to the network).")
@click.option("--port", default=8000, show_default=True, type=click.IntRange(0, 65535))
@click.option("--api-key", envvar="MMSEARCH_API_KEY", help="Require this key in the X-API-Key header [env: MMSEARCH_API_KEY].")
@click.option("--max-upload-mb", default=20.0, show_default=True, type=click.FloatRange(0.001), help="Largest query image.")
@click.option("--threads", "worker_threads", default=4, show_default=True, type=click.IntRange(1, 256),
              help="Worker threads for encoding, search and thumbnails.")
@click.option("--faiss-threads", default=1, show_default=True, type=click.IntRange(1, 256), help="Threads per FAISS search.")
@click.option("--torch-threads", default=1, show_default=True, type=click.IntRange(1, 256),
              help="torch intra-op threads (requests already run in parallel on --threads).")
@click.option("--media-root", "media_roots", multiple=True, type=click.Path(exists=True, file_okay=False),
              help="Folder whose images may be served (repeatable) [default: the folder holding each collection's images].")
@click.option("--no-reload", is_flag=True,
              help="Serve the collections as they were at start-up (default: a re-index shows on the next request).")
@_library_errors
def serve_cmd(collections: tuple[str, ...], host: str, port: int, api_key: str | None, max_upload_mb: float,
              media_roots: tuple[str, ...], no_reload: bool, **options: Any) -> None:
    """Serve COLLECTIONS over HTTP: a search page at /, a JSON API under /api, OpenAPI docs at /docs.

    Each is a collection directory, or NAME=DIR to choose the name it is served under (default: the directory's
    name less .mms; directories that share a name get their parent folder's name in front)."""
    from mmsearch.config import resolve_collection
    from mmsearch.serve import run
    from mmsearch.serve.catalog import collection_names

    items = [_named(c) for c in collections] or [(None, str(resolve_collection(None)))]
    names = collection_names(items)  # a clash fails here, in one line, before anything opens
    if host not in ("127.0.0.1", "localhost", "::1") and not api_key:
        click.echo(f"Warning: serving on {host} with no --api-key: anyone who can reach it can search and see the images.",
                   err=True)
    served = ", ".join(f"{path} as {name}" for name, (_, path) in zip(names, items))
    click.echo(f"Serving {served} on http://{host}:{port}/ (API docs at /docs); Ctrl-C stops.", err=True)
    # plain paths when no NAME= was given (the library names them the same way); named ones as (name, path)
    collections_arg = [path for _, path in items] if all(n is None for n, _ in items) else items
    run(collections_arg, host=host, port=port, api_key=api_key, max_upload_bytes=int(max_upload_mb * 1024 * 1024),
        media_roots=tuple(media_roots) or None, reload_check_s=None if no_reload else 2.0, **options)


def _named(arg: str) -> tuple[str | None, str]:
    """``NAME=DIR`` -> (NAME, DIR); a plain directory (even one with ``=`` in its name) -> (None, DIR)."""
    import os
    import re

    name, sep, path = arg.partition("=")
    if sep and re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}", name) and not os.path.exists(arg):
        return name, path
    return None, arg


if __name__ == "__main__":
    main()
