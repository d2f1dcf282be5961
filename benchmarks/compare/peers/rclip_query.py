"""rclip: text queries through rclip's own search path (run with the rclip venv, ``RCLIP_DATADIR`` set).

    RCLIP_DATADIR=DATADIR python rclip_query.py CORPUS QUERIES_JSON OUT_JSON

The folder must already be indexed (``rclip QUERY`` run in it once, which is how rclip indexes). This opens rclip
as its CLI does with ``--no-indexing`` (``rclip.main.init_rclip``) and calls ``RClip.search`` per query, in-process
(its CLI prints the same list). rclip searches exactly: it scores every stored vector of the folder with one
matrix product and sorts them, so its recall against the exact search below is 1 by construction; the stored
vectors (the ``images`` table of ``db.sqlite3``, float32 blobs) are written out for the same-weights check.
"""

from __future__ import annotations

import json
import sys

import numpy as np
from common import exact_topk, run_queries, write
from rclip import main as rclip_main


def main() -> None:
    corpus, queries_file, out = sys.argv[1:4]
    queries = json.loads(open(queries_file).read())
    rclip, model, database = rclip_main.init_rclip(corpus, 8, no_indexing=True)
    try:
        paths, matrix = rclip._get_features(corpus)
        returned, latency = run_queries(queries, lambda q: [r.filepath for r in rclip.search(q, corpus, 10)])
        exact = [exact_topk(matrix, paths, v) for v in model.compute_text_features(list(queries))]
        write(out, system="rclip", queries=queries, returned=returned, exact=exact, latency_ms=latency, paths=paths,
              matrix=np.asarray(matrix, dtype=np.float32), extra={"search": "exact (one matrix product, sorted)"})
    finally:
        rclip.close()
        model.close()
        database.close()


if __name__ == "__main__":
    main()
