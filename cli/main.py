"""The ``mmsearch`` command line: a thin layer over the library (parse, call, print)."""

from __future__ import annotations

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

    return wrapper


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="mmsearch")
@click.option("-v", "--verbose", count=True, help="More log output (-v info, -vv debug).")
def main(verbose: int) -> None:
    """Index image folders and text corpora, then search them by text or image."""
    level = logging.WARNING - 10 * min(verbose, 2)
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)


@main.command("index")
@click.argument("paths", nargs=-1, required=True, type=click.Path(exists=True))
@click.option("--out", "-o", type=click.Path(file_okay=False), help="Collection directory [default: PATH.mms].")
@click.option("--model", "-m", help="Model spec, e.g. builtin, openclip:ViT-B-32/laion2b_s34b_b79k.")
@click.option("--batch-size", default=32, show_default=True, type=click.IntRange(1, 4096))
@click.option("--workers", type=click.IntRange(0, 64), help="Decode worker processes [default: CPUs, max 4].")
@click.option("--device", help="torch device (cpu, cuda, cuda:1) [default: cuda if available].")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
@_library_errors
def index_cmd(paths: tuple[str, ...], out: str | None, model: str | None, batch_size: int,
              workers: int | None, device: str | None, as_json: bool) -> None:
    """Embed and index image folders, images, or .txt/.jsonl text corpora (incremental)."""
    import mmsearch
    from mmsearch.api import model_for_collection
    from mmsearch.config import default_collection_for

    root = out or str(default_collection_for(paths[0]))
    spec = model_for_collection(root, model)
    if not as_json:
        click.echo(render.model_banner(spec, root), err=True)
    with render.Progress(enabled=not as_json) as progress:
        result = mmsearch.index(list(paths), out=root, model=spec, batch_size=batch_size, workers=workers,
                                device=device, progress=progress.update)
    click.echo(json.dumps(render.index_summary(result)) if as_json else render.index_text(result))


@main.command("query")
@click.argument("text", required=False)
@click.option("--image", "image", type=click.Path(exists=True, dir_okay=False), help="Query by an image file.")
@click.option("--id", "item_id", type=int, help="Query by an item already in the collection.")
@click.option("--collection", "-c", type=click.Path(file_okay=False), help="Collection directory.")
@click.option("-k", default=10, show_default=True, type=click.IntRange(1, 10_000), help="Number of results.")
@click.option("--modality", type=click.Choice(["image", "text"]), default="image", show_default=True,
              help="What to return: images or texts.")
@click.option("--model", "-m", help="Check the collection was built with this model.")
@click.option("--json", "as_json", is_flag=True, help="Print results as JSON.")
@_library_errors
def query_cmd(text: str | None, image: str | None, item_id: int | None, collection: str | None, k: int,
              modality: str, model: str | None, as_json: bool) -> None:
    """Search a collection by TEXT, --image FILE or --id N."""
    import mmsearch
    from mmsearch.config import resolve_collection

    col = mmsearch.open(resolve_collection(collection), model=model)
    hits = col.search(text, image=image, id=item_id, k=k, modality=modality)
    click.echo(json.dumps([h.to_dict() for h in hits], indent=2) if as_json else render.hits_table(hits))


@main.command("info")
@click.argument("collection", required=False, type=click.Path(file_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
@_library_errors
def info_cmd(collection: str | None, as_json: bool) -> None:
    """Show what a collection holds: model, counts, shards, indexes."""
    import mmsearch
    from mmsearch.config import resolve_collection

    info = mmsearch.open(resolve_collection(collection)).info()
    click.echo(json.dumps(info, indent=2) if as_json else render.info_text(info))


@main.command("quarantine")
@click.argument("collection", required=False, type=click.Path(file_okay=False))
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
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@_library_errors
def eval_cmd(pairs: str, model: str | None, batch_size: int, device: str | None, as_json: bool) -> None:
    """Measure retrieval quality on PAIRS: a captioned image folder or a JSONL of {image, text[, group]}."""
    import mmsearch

    report = mmsearch.evaluate(pairs, model=model, batch_size=batch_size, device=device)
    click.echo(json.dumps(report.to_dict(), indent=2) if as_json else render.eval_text(report))


if __name__ == "__main__":
    main()
