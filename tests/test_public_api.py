"""The public surface: __all__ is honest and `import mmsearch` stays cheap."""

from __future__ import annotations

import subprocess
import sys

import mmsearch


def test_all_names_resolve() -> None:
    for name in mmsearch.__all__:
        assert getattr(mmsearch, name) is not None, name


def test_all_is_sorted_and_unique() -> None:
    assert len(set(mmsearch.__all__)) == len(mmsearch.__all__)


def test_errors_share_one_base() -> None:
    for name in mmsearch.__all__:
        obj = getattr(mmsearch, name)
        if isinstance(obj, type) and issubclass(obj, Exception):
            assert issubclass(obj, mmsearch.MMSearchError), name


def test_import_is_cheap() -> None:
    code = "import sys, mmsearch; print(sorted(m for m in ('torch','faiss','open_clip','numpy','pyarrow') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_facade_functions_are_not_shadowed_by_submodules() -> None:
    import importlib
    import inspect
    import pkgutil

    for mod in pkgutil.walk_packages(mmsearch.__path__, "mmsearch."):
        importlib.import_module(mod.name)  # mmsearch.__main__ included: it runs the CLI only as a script
    for name in ("index", "open", "evaluate"):
        assert inspect.isfunction(getattr(mmsearch, name)), name
