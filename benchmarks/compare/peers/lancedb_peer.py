"""LanceDB with its OpenCLIP embedding function, as its documentation shows (run with the lancedb venv).

    python lancedb_peer.py build CORPUS DB_DIR ARCH WEIGHTS     # table with image_uri -> vector, embedded on add
    python lancedb_peer.py query DB_DIR ARCH WEIGHTS QUERIES_JSON OUT_JSON

No ANN index is built: LanceDB's docs advise brute-force search (exact) for tables under ~100k rows, which these
are; ``tbl.search(text)`` embeds the text with the same embedding function.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import lancedb
import numpy as np
from common import exact_topk, run_queries, write
from lancedb.embeddings import get_registry
from lancedb.pydantic import LanceModel, Vector

EXTS = {".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff"}


def embedding(arch: str, weights: str):  # noqa: ANN201
    return get_registry().get("open-clip").create(name=arch, pretrained=weights)


def main() -> None:
    mode = sys.argv[1]
    if mode == "build":
        corpus, db_dir, arch, weights = sys.argv[2:6]
        clip = embedding(arch, weights)

        class Images(LanceModel):
            image_uri: str = clip.SourceField()
            vector: Vector(clip.ndims()) = clip.VectorField()

        db = lancedb.connect(db_dir)
        table = db.create_table("images", schema=Images)
        uris = [str(p.resolve()) for p in sorted(Path(corpus).rglob("*")) if p.suffix.lower() in EXTS]
        table.add([{"image_uri": u} for u in uris])
        print(f"{table.count_rows()} rows")
        return
    db_dir, arch, weights, queries_file, out = sys.argv[2:7]
    queries = json.loads(open(queries_file).read())
    table = lancedb.connect(db_dir).open_table("images")
    clip = embedding(arch, weights)  # the same function the table's schema names, for the exact baseline's query vectors
    data = table.to_arrow()
    paths = data.column("image_uri").to_pylist()
    matrix = np.asarray(data.column("vector").to_pylist(), dtype=np.float32)
    returned, latency = run_queries(queries, lambda q: [r["image_uri"] for r in table.search(q).limit(10).to_list()])
    exact = [exact_topk(matrix, paths, np.asarray(v)) for v in clip.generate_text_embeddings(list(queries))]
    write(out, system="LanceDB", queries=queries, returned=returned, exact=exact, latency_ms=latency, paths=paths,
          matrix=matrix, extra={"metric": "LanceDB default (l2) on the function's normalised vectors"})


if __name__ == "__main__":
    main()
