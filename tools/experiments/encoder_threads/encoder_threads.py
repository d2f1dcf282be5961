"""One encoder thread with two ONNX Runtime threads, or two encoder threads with one each, while this thread decodes:

    python tools/experiments/encoder_threads/encoder_threads.py builtin FOLDER COPIES ROUNDS

Images/s (median of ROUNDS, arms interleaved) of the encoder alone on pre-decoded batches of 32, and of a pipeline
that decodes each batch here while encoder threads embed earlier ones. Measured and not shipped
(benchmarks/README.md, Ingest).
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import onnxruntime as ort

from mmsearch.encoders.registry import load_encoder
from mmsearch.ingest.decode import DecodeSettings, decode_image
from mmsearch.ingest.encode import BatchEncoder
from mmsearch.ingest.stage import model_input_px

BATCH = 32


def main() -> None:
    model, folder, copies, rounds = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    paths = sorted(str(p) for p in folder.iterdir() if p.suffix.lower() in {".jpg", ".jpeg", ".png"}) * copies
    encoder = load_encoder(model)
    batcher = BatchEncoder(encoder, BATCH)
    settings = DecodeSettings(transform=batcher.worker_transform, draft_px=model_input_px(batcher.worker_transform))
    decoded = [d.pixels for d in (decode_image(p, settings, i) for i, p in enumerate(paths)) if d.pixels is not None]
    batcher.images(decoded[:BATCH])  # loads the image runner
    runner = encoder._images()

    def session(threads: int) -> ort.InferenceSession:
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.intra_op_num_threads = threads
        return ort.InferenceSession(str(runner.path), options, providers=["CPUExecutionProvider"])

    two_threads, one_thread = runner.session, session(1)
    batches = [decoded[i:i + BATCH] for i in range(0, len(decoded), BATCH)]
    path_batches = [paths[i:i + BATCH] for i in range(0, len(paths), BATCH)]

    def alone(threads: int) -> None:
        runner.session = two_threads if threads == 1 else one_thread
        with ThreadPoolExecutor(threads) as pool:
            list(pool.map(batcher.images, batches))

    def pipeline(threads: int) -> None:
        runner.session = two_threads if threads == 1 else one_thread
        with ThreadPoolExecutor(threads) as pool:
            pending = []
            for batch in path_batches:
                pixels = [d.pixels for d in (decode_image(p, settings, 0) for p in batch) if d.pixels is not None]
                pending.append(pool.submit(batcher.images, pixels))
                while len(pending) > threads:
                    pending.pop(0).result()
            for future in pending:
                future.result()

    arms = {"encoder alone, 1 thread x intra 2": lambda: alone(1),
            "encoder alone, 2 threads x intra 1": lambda: alone(2),
            "pipeline, 1 encoder thread x intra 2": lambda: pipeline(1),
            "pipeline, 2 encoder threads x intra 1": lambda: pipeline(2),
            "decode alone": lambda: [decode_image(p, settings, 0) for p in paths]}
    times: dict[str, list[float]] = {name: [] for name in arms}
    for _ in range(rounds):
        for name, run in arms.items():
            start = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - start)
    speeds = {name: round(len(paths) / statistics.median(t), 1) for name, t in times.items()}
    print(json.dumps({"model": model, "images": len(paths), "load": os.getloadavg(), "img_per_s": speeds}, indent=1))


if __name__ == "__main__":
    main()
