"""The prelude of a test subprocess that must run without torch (issue 16): ``blocker(...) + code`` for
``python -c``. Two ways to be without it:

- ``installed=False``: as on a box where the packages are not installed: ``sys.modules[name] = None`` (``import``
  raises ImportError, ``importlib.util.find_spec`` answers None) and a ``sys.meta_path`` finder refuses their
  submodules;
- ``installed=True``: the packages are there (lookups find them, as code that asks whether torch exists sees) but
  loading any of them raises ImportError.
"""

from __future__ import annotations

HEAVY = ("torch", "torchvision", "open_clip", "transformers", "timm")


def blocker(blocked: tuple[str, ...] = HEAVY, *, installed: bool = False) -> str:
    """Python source that makes ``blocked`` unimportable in the process that runs it first."""
    if installed:
        return f"""
import importlib.machinery, sys
BLOCKED = {tuple(blocked)!r}
class _NoLoad:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            return importlib.machinery.ModuleSpec(name, self)
        return None
    def create_module(self, spec):
        raise ImportError(f"{{spec.name}} is blocked in this test")
    def exec_module(self, module):
        raise ImportError(f"{{module.__name__}} is blocked in this test")
sys.meta_path.insert(0, _NoLoad())
"""
    return f"""
import sys
BLOCKED = {tuple(blocked)!r}
for name in BLOCKED:
    sys.modules[name] = None
class _Refuse:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ImportError(f"{{name}} is blocked: this process runs without it")
        return None
sys.meta_path.insert(0, _Refuse())
"""
