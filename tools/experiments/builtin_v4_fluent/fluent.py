"""A second emoji family as exemplars beside v3's Twemoji: Microsoft's Fluent emoji (MIT); how builtin:v4 was chosen.

    npm pack fluentui-emoji@1.3.0                       # Fluent emoji SVGs (flat / high-contrast / modern), MIT
    pip install --target /tmp/pylib cairosvg emoji      # an SVG renderer; CLDR names of every code point
    PYTHONPATH=/tmp/pylib python tools/experiments/builtin_v4_fluent/fluent.py fluentui-emoji-1.3.0.tgz \
        --styles flat high-contrast --sets "emoji (noto)"

For each of v3's 1,636 emoji classes (``builtin_v3_emoji.json``: ids are code points), the Fluent file is found by
the CLDR name of the code point (PyPI ``emoji``: ``:grinning_face_with_big_eyes:`` -> ``grinning-face-with-big-
eyes.svg``), rendered at 64 px (Twemoji's size) on white as a query image is, and embedded as v3 embeds Twemoji
(grid2, then the quadrant mean). A class's emoji logit is then v3's ``65 * cos - 30`` with cos the best over its
exemplars (Twemoji, plus Fluent where a file was found); nothing else changes. Neither emoji evaluation family
(Noto, OpenMoji) is a source. Prints t->i R@1/R@10 and i->t R@1 per set for v3 and each variant (the sets are
benchmarks/quality.py's); run the development set (Noto) first, the goal sets once. Results: README.md here.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import tarfile
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[3]
sys.path[:0] = [str(ROOT / "tools"), str(ROOT / "benchmarks")]

from build_builtin_assets_exemplars import ExemplarClass, exemplar_features  # noqa: E402
from build_builtin_assets_v4 import fluent_exemplars as builder_exemplars  # noqa: E402
from quality import SETS, load_set, measure  # noqa: E402

from mmsearch.encoders import builtin_v3  # noqa: E402
from mmsearch.encoders.base import l2_normalise  # noqa: E402
from mmsearch.encoders.registry import load_encoder  # noqa: E402


def fluent_exemplars(package: Path, style: str) -> dict[str, object]:
    """class id -> 64 px RGBA exemplar, for the v3 classes whose CLDR name has a Fluent file of ``style`` (the
    shipped builder's lookup and rendering)."""
    return {cid: image for cid, _, image in builder_exemplars(package, style)}


class TwoFamilyEmoji:
    """v3's emoji bank with extra exemplars: a class's similarity is its best over Twemoji and the extras."""

    def __init__(self, base: builtin_v3.EmojiBank, extra: list[tuple[str, np.ndarray]], margin: float = 0.0) -> None:
        self.base, self.margin = base, margin
        self.features, self.class_bank, self.class_ids = base.features, base.class_bank, base.class_ids
        index = {c: i for i, c in enumerate(base.class_ids)}
        self.owner = np.array([index[c] for c, _ in extra], dtype=np.int64)
        self.extra = np.stack([f for _, f in extra]) if extra else np.zeros((0, base.features.shape[1]), np.float32)

    def similarities(self, grid2: np.ndarray) -> np.ndarray:
        q = l2_normalise(builtin_v3.quadmean(grid2))
        best = q @ self.base.features.T
        if len(self.owner):
            np.maximum.at(best.T, self.owner, (q @ self.extra.T - self.margin).T)
        return best


def variant_encoder(extra: list[tuple[str, np.ndarray]], margin: float = 0.0):
    """builtin:v3 (ONNX Runtime on the CPU) with ``extra`` (class id, quadmean feature) exemplars."""
    encoder = load_encoder("builtin:v3")
    encoder._exemplars  # noqa: B018 - loads the banks
    composite = encoder._image_assets[1]
    composite.emoji = TwoFamilyEmoji(composite.emoji, extra, margin)
    return encoder


def load_cache(path: Path, styles: list[str]) -> dict[str, dict[str, np.ndarray]]:
    features: dict[str, dict[str, np.ndarray]] = {}
    if path.exists():
        with np.load(path) as z:
            for key in z.files:
                style, cid = key.split("|", 1)
                features.setdefault(style, {})[cid] = z[key]
    return features


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("package", type=Path, help="fluentui-emoji-1.3.0.tgz (npm pack)")
    parser.add_argument("--styles", nargs="+", default=["flat"])
    parser.add_argument("--sets", nargs="*", default=["emoji (noto)"], choices=list(SETS))
    parser.add_argument("--twemoji", type=Path, help="an unpacked emoji-datasource-twitter 16.0.0 package folder: adds "
                        "the development set 'twemoji flags' (its 270 flag drawings, which v3 leaves out)")
    parser.add_argument("--flags", type=Path, help="an unpacked country-flag-icons package folder (npm, MIT; its own "
                        "3:2 drawings, neither v2's exemplar source nor iso_flags'): adds the development set 'country-"
                        "flag-icons' (rendered 320 px wide; names from --twemoji's emoji.json)")
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    parser.add_argument("--out", type=Path, default=Path("/tmp/fluent.json"))
    parser.add_argument("--margins", nargs="+", type=float, default=[0.0],
                        help="cosine taken off the extra family's similarities (one variant per margin)")
    parser.add_argument("--by-category", action="store_true",
                        help="emoji sets: also R@10 of the flag and the other queries apart (same collection)")
    parser.add_argument("--cache", type=Path, default=Path("/tmp/fluent-features.npz"),
                        help="the rendered exemplars' features, reused by the next run")
    args = parser.parse_args()
    features = load_cache(args.cache, args.styles)
    with tempfile.TemporaryDirectory() as tmp:
        with tarfile.open(args.package) as tar:
            tar.extractall(tmp, filter="data")
        for style in [s for s in args.styles if s not in features]:
            images = fluent_exemplars(Path(tmp) / "package", style)
            classes = [ExemplarClass(cid, cid, [cid], [im], [cid]) for cid, im in images.items()]
            recipe = builtin_v3.V3_RECIPE
            grid2 = exemplar_features(classes, recipe)
            feats = l2_normalise(builtin_v3.quadmean(grid2))
            features[style] = dict(zip(images, feats))
            print(f"{style}: {len(images)} of 1636 classes have a Fluent file", flush=True)
    np.savez(args.cache, **{f"{style}|{cid}": f for style, fs in features.items() for cid, f in fs.items()})
    variants: dict[str, tuple[list[tuple[str, np.ndarray]], float]] = {"v3": ([], 0.0)}
    for style in args.styles:
        for margin in args.margins:
            variants[f"v3+fluent-{style}" + (f"-m{margin:g}" if margin else "")] = (list(features[style].items()), margin)
    if len(args.styles) > 1:
        variants["v3+fluent-" + "+".join(args.styles)] = ([kv for s in args.styles for kv in features[s].items()], 0.0)
    results: dict[str, dict] = {}
    sets = [(name, *SETS[name]) for name in args.sets]
    if args.twemoji:
        sets.insert(0, ("twemoji flags (dev)", "twemoji", {}))
    if args.flags:
        sets.insert(0, ("country-flag-icons (dev)", "cfi", {}))
    for set_name, loader, kwargs in sets:
        if loader == "cfi":
            triples = country_flag_icons(args.flags, args.twemoji, Path(tempfile.mkdtemp(prefix="cfi-")))
        elif loader == "twemoji":
            triples = twemoji_flags(args.twemoji)
        else:
            triples = load_set(args.data, loader, kwargs)
        for name, (extra, margin) in variants.items():
            encoder = variant_encoder(extra, margin)
            r = measure_with(encoder, triples)
            results.setdefault(set_name, {})[name] = r
            t, i = r["text_to_image"], r["image_to_text"]
            print(f"{set_name:32s} {name:34s} t2i R@1 {t['R@1']:5.1f} R@10 {t['R@10']:5.1f}  i2t R@1 {i['R@1']:5.1f}",
                  flush=True)
            if args.by_category and loader == "emoji":
                r["by_category"] = by_category(encoder, triples, args.data)
                print("    R@10 by query category:", r["by_category"], flush=True)
    args.out.write_text(json.dumps(results, indent=2))


def twemoji_flags(package: Path) -> list[tuple[str, str, str]]:
    """(image, text, group): each Twemoji flag drawing (64 px) and "the flag of {name}" ("Argentina Flag" ->
    "the flag of Argentina")."""
    entries = json.loads((package / "emoji.json").read_text(encoding="utf-8"))
    out = []
    for e in entries:
        image = package / "img" / "twitter" / "64" / e["image"]
        if e["category"] == "Flags" and e.get("has_img_twitter") and image.exists():
            name = re.sub(r"\s*flag$", "", str(e["name"]), flags=re.IGNORECASE).strip()
            out.append((str(image), f"the flag of {name}", e["unified"]))
    return out


def country_flag_icons(package: Path, twemoji: Path, out: Path) -> list[tuple[str, str, str]]:
    """(image, text, group): each 3:2 flag of country-flag-icons whose ISO code Twemoji names (``flag-jp``:
    "Japan Flag"), rendered 320 px wide as PNG into ``out``, and "the flag of {name}"."""
    import cairosvg

    names = {}
    for e in json.loads((twemoji / "emoji.json").read_text(encoding="utf-8")):
        for short in e.get("short_names") or []:
            if e["category"] == "Flags" and re.fullmatch(r"flag-[a-z]{2}", short):
                names[short[5:].upper()] = re.sub(r"\s*flag$", "", str(e["name"]), flags=re.IGNORECASE).strip()
    triples = []
    for svg in sorted((package / "3x2").glob("*.svg")):
        if svg.stem in names:
            png = out / f"{svg.stem}.png"
            cairosvg.svg2png(url=str(svg), write_to=str(png), output_width=320)
            triples.append((str(png), f"the flag of {names[svg.stem]}", svg.stem))
    return triples


def by_category(encoder, triples, data: Path) -> dict[str, float]:
    """t->i R@10 of the flag queries and of the others, each against the whole set."""
    from mmsearch.evaluation import embed_images, recall_at_k

    with open(data / "emoji" / "emoji.jsonl", encoding="utf-8") as f:
        category = {r["hexcode"]: r.get("category") for r in (json.loads(line) for line in f if line.strip())}
    images = sorted({i: g for i, _, g in triples}.items())
    texts = sorted({t: g for _, t, g in triples}.items())
    vecs, ok = embed_images(encoder, [u for u, _ in images], 64, 2)
    groups = np.array([g for (_, g), good in zip(images, ok) if good])
    text_vecs = encoder.encode_texts([t for t, _ in texts])
    text_groups = np.array([g for _, g in texts])
    out = {}
    for name, keep in (("flags", lambda g: category.get(g) == "Flags"), ("others", lambda g: category.get(g) != "Flags")):
        mask = np.array([keep(g) for g in text_groups])
        r, _ = recall_at_k(text_vecs[mask], text_groups[mask], vecs, groups, (10,))
        out[f"{name} ({int(mask.sum())})"] = round(r["R@10"], 1)
    return out


def measure_with(encoder, triples):
    import quality

    saved = quality.load_encoder
    quality.load_encoder = lambda model: encoder
    quality._IMAGE_CACHE.clear()
    try:
        return measure("builtin:v3", triples)
    finally:
        quality.load_encoder = saved


if __name__ == "__main__":
    main()
