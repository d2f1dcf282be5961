"""The query's wording on the openclipart development set (run hubness.py --dev first: it caches the images).

    python tools/experiments/hubness/query_wording.py
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from hubness import CACHE, MODEL, t2i  # noqa: E402

from mmsearch.encoders.registry import load_encoder  # noqa: E402

TEMPLATES = ("a drawing of {}", "{}", "a photo of {}", "a picture of a {}", "an illustration of {}", "a {}")


def main() -> None:
    encoder = load_encoder(MODEL)
    with np.load(CACHE / "openclipart_(dev).npz") as z:
        images, image_groups, names = z["images"].astype(np.float32), z["image_groups"], z["text_groups"]
    zero = np.zeros(len(images), np.float32)
    for template in TEMPLATES:
        texts = encoder.encode_texts([template.format(n) for n in names])
        print(f"{template:24s}", t2i(texts, names, images, zero, image_groups))


if __name__ == "__main__":
    main()
