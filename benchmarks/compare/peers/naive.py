"""The loop every user writes: PIL -> open_clip preprocess -> model, one image at a time; numpy matmul to search.

    python naive.py build CORPUS OUT_NPZ ARCH WEIGHTS
    python naive.py query OUT_NPZ ARCH WEIGHTS QUERIES_JSON OUT_JSON
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import open_clip
import torch
from common import exact_topk, normalise, run_queries, write
from PIL import Image

EXTS = {".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff"}


def main() -> None:
    mode = sys.argv[1]
    if mode == "build":
        corpus, out, arch, weights = sys.argv[2:6]
        model, _, preprocess = open_clip.create_model_and_transforms(arch, pretrained=weights)
        model.eval()
        paths, vectors = [], []
        for p in sorted(Path(corpus).rglob("*")):
            if p.suffix.lower() not in EXTS:
                continue
            with torch.no_grad():
                image = preprocess(Image.open(p).convert("RGB")).unsqueeze(0)
                vectors.append(model.encode_image(image)[0].numpy())
            paths.append(str(p.resolve()))
        np.savez(out, paths=np.array(paths), vectors=normalise(np.stack(vectors)))
        return
    index, arch, weights, queries_file, out = sys.argv[2:7]
    queries = json.loads(open(queries_file).read())
    data = np.load(index)
    paths, matrix = [str(p) for p in data["paths"]], data["vectors"]
    model, _, _ = open_clip.create_model_and_transforms(arch, pretrained=weights)
    model.eval()
    tokenizer = open_clip.get_tokenizer(arch)

    def encode(texts: list[str]) -> np.ndarray:
        with torch.no_grad():
            return normalise(model.encode_text(tokenizer(texts)).numpy())

    returned, latency = run_queries(queries, lambda q: exact_topk(matrix, paths, encode([q])[0]))
    exact = returned  # the naive search is the exact search
    write(out, system="naive", queries=queries, returned=returned, exact=exact, latency_ms=latency, paths=paths,
          matrix=matrix)


if __name__ == "__main__":
    main()
