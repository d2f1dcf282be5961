"""Hard-link torch, torchvision, triton and the CUDA wheels from one venv into another.

    python link_torch.py SOURCE_SITE_PACKAGES TARGET_SITE_PACKAGES

The peers' venvs get the very same torch build as mmsearch's (the same kernels for every contender), and the
~5 GB of CUDA wheels that come with PyPI's torch are not copied once per venv. pip sees them as installed (their
dist-info is linked too); pip replaces files by unlinking, so the source venv is never modified.
Run with the SOURCE venv's python (it reads that venv's installed-files lists).
"""

from __future__ import annotations

import importlib.metadata as md
import os
import sys
from pathlib import Path

PREFIXES = ("torch", "torchvision", "triton", "nvidia-", "cuda-")


def main() -> None:
    source, target = Path(sys.argv[1]).resolve(), Path(sys.argv[2]).resolve()
    linked = 0
    for dist in md.distributions(path=[str(source)]):
        name = dist.metadata["Name"].lower()
        if not (name in ("torch", "torchvision", "triton") or name.startswith(PREFIXES[3:])):
            continue
        for f in dist.files or []:
            src = (source / f).resolve()
            if not src.is_file() or source not in src.parents:
                continue
            dst = target / src.relative_to(source)
            dst.parent.mkdir(parents=True, exist_ok=True)
            if not dst.exists():
                os.link(src, dst)
                linked += 1
        print(f"linked {dist.metadata['Name']} {dist.version}")
    print(f"{linked} files")


if __name__ == "__main__":
    main()
