"""clip-retrieval: text queries through clip-back's own query path (run with the clip-retrieval venv).

    python clip_retrieval_query.py EMBEDDINGS_FOLDER INDEX_FOLDER CLIP_MODEL QUERIES_JSON OUT_JSON

Loads the index folder the way ``clip-retrieval back`` does (``load_clip_index`` with clip-back's default
options) and calls ``KnnService.compute_query`` + ``KnnService.knn_search`` in-process (what ``KnnService.query``
does before its metadata step; no HTTP), with deduplication off so that exactly 10 results come back for the
recall check. The metadata step is left out: for a folder of files it reads and re-encodes every result image as a
base64 JPEG, which fails on RGBA PNGs (``OSError: cannot write mode RGBA as JPEG``); the result ids are mapped to
paths through the metadata parquet (row order) instead. The exact baseline searches ``img_emb/*.npy`` (rows in
``metadata/*.parquet`` order).
"""

from __future__ import annotations

import inspect
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
from clip_retrieval.clip_back import ClipOptions, KnnService, clip_back, load_clip_index
from common import exact_topk, run_queries, write


def main() -> None:
    emb, idx, clip_model, queries_file, out = sys.argv[1:6]
    queries = json.loads(open(queries_file).read())
    defaults = {k: v.default for k, v in inspect.signature(clip_back).parameters.items()}
    options = ClipOptions(
        indice_folder=idx, clip_model=clip_model, enable_hdf5=defaults["enable_hdf5"],
        enable_faiss_memory_mapping=defaults["enable_faiss_memory_mapping"], columns_to_return=["image_path"],
        reorder_metadata_by_ivf_index=defaults["reorder_metadata_by_ivf_index"], enable_mclip_option=False,
        use_jit=defaults["use_jit"], use_arrow=defaults["use_arrow"], provide_safety_model=False,
        provide_violence_detector=False, provide_aesthetic_embeddings=False)
    resource = load_clip_index(options)
    knn = KnnService(clip_resources={"index": resource})
    matrix = np.concatenate([np.load(f) for f in sorted(Path(emb, "img_emb").glob("*.npy"))]).astype(np.float32)
    paths = pd.concat([pd.read_parquet(f) for f in sorted(Path(emb, "metadata").glob("*.parquet"))])["image_path"].tolist()

    def search(q: str) -> list[str]:
        query = knn.compute_query(resource, q, None, None, None, False, None, None)
        _, ids = knn.knn_search(query, modality="image", num_result_ids=10, clip_resource=resource, deduplicate=False,
                                use_safety_model=False, use_violence_detector=False)
        return [paths[i] for i in ids]

    returned, latency = run_queries(queries, search)
    import torch

    with torch.no_grad():
        vectors = resource.model.encode_text(resource.tokenizer(list(queries)).to(resource.device)).float().numpy()
    exact = [exact_topk(matrix, paths, v / np.linalg.norm(v)) for v in vectors]
    write(out, system="clip-retrieval", queries=queries, returned=returned, exact=exact, latency_ms=latency, paths=paths,
          matrix=matrix, extra={"index_infos": json.loads(Path(idx, "image.json").read_text())
                                if Path(idx, "image.json").exists() else None, "clip_back_use_jit": defaults["use_jit"]})


if __name__ == "__main__":
    main()
