"""Hubness reduction for builtin:v4's text -> image search, measured on development sets before any goal set.

    python tools/experiments/hubness/hubness.py --dev            # development sets only
    python tools/experiments/hubness/hubness.py --goal           # the goal sets (run once, after the choice)

ConSE embeddings of out-of-domain images (drawings, emoji) crowd around a few generic directions, so the same
images ("hubs") come first for many queries. Two well-known remedies, both needing no labels:

- ``center-b``: each image embedding re-centred on its collection's mean image embedding (times ``b``) and
  normalised again (Suzuki et al. 2013, "Centering similarity measures to reduce hubs"); queries unchanged;
- ``csls-g``: score ``cos(t, i) - g * r_i``, ``r_i`` the mean cosine of image ``i`` with its 10 nearest texts of a
  fixed query bank (Conneau et al. 2018's CSLS, with the bank in place of the test queries as in QB-Norm,
  Bogolin et al. 2022). The bank: the label vocabulary's 7,640 texts, which ship with the package.

Development sets (neither a goal set nor an exemplar source): Noto emoji; the flags of npm ``country-flag-icons``
(rendered, as tools/experiments/builtin_v4_fluent/ made them); openclipart-png drawings named by
tools/experiments/builtin_v4_candidates/names.py (all drawings of a concept are its answers, query "a drawing of
{name}"). Embeddings are cached in /tmp/hubness/.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[3]
sys.path[:0] = [str(ROOT / "benchmarks")]

from quality import SETS, load_set  # noqa: E402

from mmsearch.encoders.registry import load_encoder  # noqa: E402
from mmsearch.evaluation import embed_images, recall_at_k  # noqa: E402
from mmsearch.query.labels import vocabulary_embeddings, vocabulary_for  # noqa: E402

CACHE = Path("/tmp/hubness")
MODEL = "builtin:v4"


def cfi_triples() -> list[tuple[str, str, str]]:
    names = {}
    for e in json.loads(Path("/tmp/tw/package/emoji.json").read_text(encoding="utf-8")):
        for short in e.get("short_names") or []:
            if e["category"] == "Flags" and len(short) == 7 and short.startswith("flag-"):
                names[short[5:].upper()] = e["name"].removesuffix(" Flag").removesuffix(" flag").strip()
    return [(str(p), f"the flag of {names[p.stem]}", p.stem) for p in sorted(Path("/tmp/cfi-8yfio2tx").glob("*.png"))
            if p.stem in names]


def openclipart_triples() -> list[tuple[str, str, str]]:
    classes = json.loads(Path("/tmp/oca/classes.json").read_text())
    return [(f"/tmp/oca/{p}", f"a drawing of {name}", name) for name, paths in classes.items() for p in paths]


DEV = {"noto emoji (dev)": lambda: load_set(ROOT.parent / "shared" / "data", *SETS["emoji (noto)"]),
       "country-flag-icons (dev)": cfi_triples, "openclipart (dev)": openclipart_triples}
GOAL = {name: (lambda n=name: load_set(ROOT.parent / "shared" / "data", *SETS[n])) for name in
        ("art4apps (a drawing of {label})", "emoji (openmoji)", "iso_flags", "named_sample_images", "foolbox imagenet")}


def embedded(encoder, name: str, triples) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    path = CACHE / (name.replace(" ", "_").replace("/", "_") + ".npz")
    if not path.exists():
        images = sorted({i: g for i, _, g in triples}.items())
        texts = sorted({t: g for _, t, g in triples}.items())
        vecs, ok = embed_images(encoder, [u for u, _ in images], 64, 2)
        groups = np.array([g for (_, g), good in zip(images, ok) if good])
        tvecs = np.concatenate([encoder.encode_texts([t for t, _ in texts[i:i + 256]])
                                for i in range(0, len(texts), 256)])
        CACHE.mkdir(exist_ok=True)
        np.savez(path, images=vecs, image_groups=groups, texts=tvecs, text_groups=np.array([g for _, g in texts]))
    with np.load(path) as z:
        return z["images"].astype(np.float32), z["image_groups"], z["texts"].astype(np.float32), z["text_groups"]


def unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def variants(images: np.ndarray, bank: np.ndarray) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """name -> (image vectors, per-image score offset): the score is texts @ vectors.T - offset."""
    zero = np.zeros(len(images), np.float32)
    out = {"v4": (images, zero)}
    mean = images.mean(axis=0)
    for b in (0.5, 0.75, 1.0):
        out[f"center-{b:g}"] = (unit(images - b * mean), zero)
    sims = images @ bank.T
    r = np.sort(sims, axis=1)[:, -10:].mean(axis=1)
    for g in (0.25, 0.5, 1.0):
        out[f"csls-{g:g}"] = (images, g * r)
    return out


def t2i(texts, text_groups, vecs, offset, image_groups) -> dict[str, float]:
    scores = texts @ vecs.T - offset[None, :]
    order = np.argsort(-scores, axis=1, kind="stable")[:, :10]
    hit = image_groups[order] == text_groups[:, None]
    return {"R@1": round(100 * hit[:, 0].mean(), 1), "R@10": round(100 * hit.any(axis=1).mean(), 1)}


def experiment_args(doc: str, out: Path, parser: argparse.ArgumentParser | None = None
                    ) -> tuple[argparse.Namespace, dict, dict]:
    """The development/goal experiments' command line (``--dev``, ``--goal``, ``--out``): (arguments, the sets
    asked for, the results saved so far)."""
    parser = parser or argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--dev", action="store_true")
    parser.add_argument("--goal", action="store_true")
    parser.add_argument("--out", type=Path, default=out)
    args = parser.parse_args()
    sets = {**(DEV if args.dev else {}), **(GOAL if args.goal else {})}
    return args, sets, json.loads(args.out.read_text()) if args.out.exists() else {}


def report(title: str, rows: dict[str, dict[str, float]]) -> None:
    print(title)
    for variant, r in rows.items():
        print(f"    {variant:14s} R@1 {r['R@1']:5.1f}  R@10 {r['R@10']:5.1f}", flush=True)


def main() -> None:
    args, sets, results = experiment_args(__doc__, CACHE / "results.json")
    encoder = load_encoder(MODEL)
    bank = vocabulary_embeddings(encoder, encoder.spec, vocabulary_for(encoder.spec))
    for name, make in sets.items():
        images, image_groups, texts, text_groups = embedded(encoder, name, make())
        # the same check as mmsearch.evaluation's recall for the unchanged embeddings
        base, _ = recall_at_k(texts, text_groups, images, image_groups, (1, 10))
        results[name] = {}
        for variant, (vecs, offset) in variants(images, bank).items():
            results[name][variant] = t2i(texts, text_groups, vecs, offset, image_groups)
        report(f"{name} ({len(images)} images, {len(texts)} texts; mmsearch.evaluation R@10 {base['R@10']:.1f})",
               results[name])
    args.out.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
