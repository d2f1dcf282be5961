"""Step 1: concept names for openclipart-png drawings (writes /tmp/oca/sizes.json, /tmp/oca/classes.json).

    mkdir -p /tmp/oca && cd /tmp/oca && apt-get download openclipart-png && dpkg-deb -x openclipart-png_*.deb x
    python names.py
"""
import collections
import glob
import json
import os
import re

from PIL import Image

Image.MAX_IMAGE_PIXELS = None
PROMPTS = "/work/shared/data/text_prompts"
W = set()
for line in open(f"{PROMPTS}/wordnet_nouns/noun_glosses.jsonl"):
    for lemma in json.loads(line)["lemmas"]:
        lemma = lemma.lower().replace("_", " ")
        if " " not in lemma:
            W.add(lemma)
cnt: collections.Counter = collections.Counter()
for v in json.load(open(f"{PROMPTS}/clip_benchmark/cupl_prompts.json"))["imagenet1k"].values():
    for s in v:
        cnt.update(re.findall(r"[a-z]+", s.lower()))
for n in json.load(open(f"{PROMPTS}/clip_benchmark/en_classnames.json"))["imagenet1k"]:
    cnt.update({w: 5 for w in re.findall(r"[a-z]+", n.lower())})
sizes = {}
for f in sorted(glob.glob("x/usr/share/openclipart/png/**/*.png", recursive=True)):
    with Image.open(f) as im:
        sizes[f] = im.size[0] * im.size[1]
json.dump(sizes, open("sizes.json", "w"))
STOP = set("the and with for clip art clipart icon png svg image picture old new set version color colour black white "
           "line lines simple style outline remix theme gnome step part sketch drawing red green blue yellow grey gray "
           "pink purple brown dark light left right down back empty close search source design alt rich young big "
           "small little cartoon glossy glass button buttons people text symbol sign pattern number day tree elements "
           "map mount shape shapes bar roman front side top bottom view".split())
SKIP = ("computer/icons/", "special/", "shapes/flowchart", "shapes/jigsaw", "shapes/callouts",
        "signs_and_symbols/flags/", "unsorted/duplicates")
out = {}
for f, px in sizes.items():
    rel = f.split("/png/")[1]
    if px > 2e6 or rel.startswith(SKIP):
        continue
    stem = os.path.splitext(os.path.basename(rel))[0]
    toks = re.findall(r"[a-z]+", re.sub(r"([a-z])([A-Z])", r"\1 \2", stem).lower())
    keep: list[str] = []
    for t in toks:
        if len(t) >= 3 and t in W and cnt[t] >= 3 and t not in STOP and t not in keep:
            keep.append(t)
    if keep:
        out[f] = " ".join(keep[:3])
per = collections.defaultdict(list)
for f in sorted(out):
    per[out[f]].append(f)
json.dump({n: fs[:8] for n, fs in per.items()}, open("classes.json", "w"), indent=0)
print(len(out), "named drawings,", len(per), "concepts")
