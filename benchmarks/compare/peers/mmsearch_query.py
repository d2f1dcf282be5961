"""mmsearch: text queries against a collection built by ``mmsearch index`` (run with mmsearch's venv).

    python mmsearch_query.py COLLECTION QUERIES_JSON OUT_JSON
"""

from __future__ import annotations

import json
import sys

import numpy as np
from common import exact_topk, run_queries, write

import mmsearch


def main() -> None:
    collection, queries_file, out = sys.argv[1:4]
    queries = json.loads(open(queries_file).read())
    col = mmsearch.open(collection)
    ids, vectors = [], []
    for i, v in col.iter_embeddings("image"):
        ids.extend(int(x) for x in i)
        vectors.append(v)
    matrix = np.concatenate(vectors)
    paths = [col.item(i).uri for i in ids]
    returned, latency = run_queries(queries, lambda q: [h.uri for h in col.search(q, k=10)])
    exact = [exact_topk(matrix, paths, v) for v in col.encoder.encode_texts(list(queries))]
    write(out, system="mmsearch", queries=queries, returned=returned, exact=exact, latency_ms=latency, paths=paths,
          matrix=matrix, extra={"info_indexes": col.info().get("indexes")})


if __name__ == "__main__":
    main()
