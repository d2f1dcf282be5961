from __future__ import annotations

import time

import pytest

from mmsearch.encoders import canonical_spec, load_encoder, parse_spec
from mmsearch.errors import ConfigError, ModelUnavailableError


@pytest.mark.parametrize("spec, expected", [
    ("builtin", "builtin:v4"),
    ("builtin:v2", "builtin:v2"),
    ("builtin:v1", "builtin:v1"),
    ("openclip:ViT-B-32/laion2b_s34b_b79k", "openclip:ViT-B-32/laion2b_s34b_b79k"),
    ("openclip:ViT-B-32@/w/x.safetensors", "openclip:ViT-B-32@/w/x.safetensors"),
    ("openclip:mms-tiny/random", "openclip:mms-tiny/random"),
])
def test_canonical_specs(spec: str, expected: str) -> None:
    assert canonical_spec(spec) == expected


@pytest.mark.parametrize("bad", ["", "clip", "openclip:", "openclip:ViT-B-32", "openclip:/tag", "foo:bar"])
def test_bad_specs_name_the_accepted_forms(bad: str) -> None:
    with pytest.raises(ConfigError, match="openclip:ARCH/TAG"):
        parse_spec(bad)


def test_uncached_pretrained_fails_fast_with_the_fix() -> None:
    started = time.perf_counter()
    with pytest.raises(ModelUnavailableError) as err:
        load_encoder("openclip:ViT-B-32/laion2b_s34b_b79k")
    assert time.perf_counter() - started < 30  # no retry loop (generous: loading torch is included)
    assert "builtin" in str(err.value) and "@/path" in str(err.value)


def test_missing_weights_file() -> None:
    with pytest.raises(ModelUnavailableError, match="does not exist"):
        load_encoder("openclip:mms-tiny@/nonexistent/weights.safetensors")


def test_unknown_tag_lists_known_tags() -> None:
    with pytest.raises(ConfigError, match="laion2b_s34b_b79k"):
        load_encoder("openclip:ViT-B-32/no-such-tag")


def test_unknown_architecture() -> None:
    with pytest.raises(ConfigError, match="unknown OpenCLIP architecture"):
        load_encoder("openclip:NoSuchArch/random")


def test_adapter_specs_resolve_through_the_entry_point_without_importing_train_first() -> None:
    """``adapter:`` comes from the ``mmsearch.schemes`` entry point (pyproject.toml), not a hard-coded import."""
    import subprocess
    import sys

    code = ("import sys; from mmsearch.encoders import parse_spec; from mmsearch.encoders.registry import "
            "registered_schemes; assert 'mmsearch.train' not in sys.modules; s = parse_spec('adapter:/x/ad'); "
            "print(s.scheme, s.arch, 'adapter' in registered_schemes(), 'mmsearch.train.adapter' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["adapter", "/x/ad", "True", "True"]
    with pytest.raises(ConfigError, match="unknown model spec"):
        parse_spec("nosuchscheme:x")
