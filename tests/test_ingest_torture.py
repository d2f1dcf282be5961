"""A folder of every bad input we know of (and awkward good ones) indexes to completion, with the right
rows and the right quarantine reasons."""

from __future__ import annotations

import os
import shutil
import signal
import struct
import sys
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
from fakes import COLOURS, ColourEncoder, MeanColour
from PIL import Image

import mmsearch
from mmsearch.encoders import register_scheme
from mmsearch.ingest.decode import DecodeSettings, decode_image

RED, BLUE = COLOURS["red"], COLOURS["blue"]


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def bomb_png(path: Path, side: int = 100_000) -> Path:
    """A tiny PNG whose header claims side x side pixels (a decompression bomb)."""
    header = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 1024)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header) + _png_chunk(b"IDAT", idat)
                     + _png_chunk(b"IEND", b""))
    return path


def exif_rotated_jpeg(path: Path) -> Path:
    """A 40x20 red JPEG whose EXIF says 'rotate 90°': it is 20x40 as displayed."""
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.new("RGB", (40, 20), RED).save(path, exif=exif.tobytes())
    return path


def make_good_awkward(root: Path) -> dict[str, str]:
    """Images that must be handled correctly (not rejected); returns name -> expected colour."""
    Image.new("CMYK", (30, 30), (0, 255, 255, 0)).save(root / "cmyk.jpg")  # red in CMYK
    Image.fromarray(np.full((20, 20), 255, np.uint16)).save(root / "deep16.png")  # 255/65535: near black
    pal = Image.new("P", (20, 20), 0)
    pal.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    pal.save(root / "palette_transparent.png", transparency=0)  # all transparent -> white
    Image.new("RGBA", (20, 20), (0, 0, 0, 0)).save(root / "alpha.png")  # transparent black -> white
    frames = [Image.new("RGB", (20, 20), RED), Image.new("RGB", (20, 20), BLUE)]
    frames[0].save(root / "animated.gif", save_all=True, append_images=frames[1:], duration=100, loop=0)
    exif_rotated_jpeg(root / "rotated.jpg")
    Image.new("RGB", (20, 20), BLUE).save(root / ("b" * 240 + ".png"))  # a very long name
    Image.new("RGB", (20, 20), COLOURS["green"]).save(os.fsencode(root) + b"/caf\xe9.png")  # not UTF-8
    return {"cmyk.jpg": "red", "deep16.png": "black", "palette_transparent.png": "white", "alpha.png": "white",
            "animated.gif": "red", "rotated.jpg": "red", "b" * 240 + ".png": "blue", "caf\\xe9.png": "green"}


def make_bad(root: Path) -> dict[str, str]:
    """Inputs that must be quarantined; returns name -> reason."""
    (root / "empty.png").write_bytes(b"")
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(root / "noise.png")
    noise = (root / "noise.png").read_bytes()
    (root / "noise.png").unlink()
    (root / "truncated.png").write_bytes(noise[: len(noise) // 2])
    header = _png_chunk(b"IHDR", struct.pack(">IIBBBBB", 20, 20, 8, 2, 0, 0, 0))
    garbage = _png_chunk(b"IDAT", bytes(rng.integers(0, 255, 300, dtype=np.uint8)))
    (root / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + header + garbage + _png_chunk(b"IEND", b""))
    (root / "notes.jpg").write_text("this is text, not a JPEG\n")
    bomb_png(root / "bomb.png")
    os.mkfifo(root / "pipe.jpg")
    os.symlink("selfloop.jpg", root / "selfloop.jpg")
    os.symlink("nowhere.png", root / "dangling.png")
    return {"empty.png": "empty", "truncated.png": "truncated", "corrupt.png": "corrupt", "notes.jpg": "not-an-image",
            "bomb.png": "too-large", "pipe.jpg": "not-a-file", "selfloop.jpg": "unreadable", "dangling.png": "vanished"}


@pytest.fixture
def torture(tmp_path: Path) -> tuple[Path, dict[str, str], dict[str, str]]:
    root = tmp_path / "torture"
    (root / "sub").mkdir(parents=True)
    good = {}
    for name in ["red", "green", "blue", "yellow", "cyan", "magenta"]:
        Image.new("RGB", (24, 16), COLOURS[name]).save(root / "sub" / f"{name}.png")
        good[f"{name}.png"] = name
    shutil.copy(root / "sub" / "red.png", root / "red_copy.png")  # identical content
    good["red_copy.png"] = "red"
    os.symlink("..", root / "sub" / "loop")  # a folder symlink loop
    good.update(make_good_awkward(root))
    return root, good, make_bad(root)


@pytest.mark.parametrize("workers", [0, 2])
def test_torture_folder_indexes_to_completion(torture, colour_model: str, workers: int) -> None:
    root, good, bad = torture
    result = mmsearch.index(root, model=colour_model, batch_size=2, workers=workers)
    report = result.report
    assert report.images_embedded == len(good)
    assert report.rejected == len(bad) and dict(report.rejected_reasons) == _count(bad.values())
    assert report.images_deduplicated >= 1  # red_copy.png (and CMYK red etc. are different bytes)
    col = mmsearch.open(result.path)
    hits = col.search(vector=np.ones(ColourEncoder.dim), k=100)
    by_name = {Path(h.uri).name: h for h in hits}
    assert sorted(by_name) == sorted(good)  # every good image once, the loop not followed twice
    for name, colour in good.items():
        hit = col.search(colour, k=100)
        assert name in {Path(h.uri).name for h in hit if h.score > 0.99}, (name, colour)
    assert (by_name["rotated.jpg"].metadata["width"], by_name["rotated.jpg"].metadata["height"]) == (20, 40)
    reasons = {Path(str(e["uri"])).name: e["reason"] for e in col.quarantine()}
    assert reasons == bad


def test_rerun_retries_only_passing_failures(torture, colour_model: str) -> None:
    root, good, bad = torture
    mmsearch.index(root, model=colour_model, batch_size=2, workers=0)
    again = mmsearch.index(root, batch_size=2, workers=0).report
    retried = {"unreadable", "vanished"}
    assert again.images_embedded == 0 and again.skipped_unchanged == len(good)
    assert dict(again.rejected_reasons) == _count(r for r in bad.values() if r in retried)
    assert again.skipped_quarantined == sum(r not in retried for r in bad.values())
    entries = mmsearch.open(root.parent / "torture.mms").quarantine()
    assert len(entries) == len(bad)  # repeated rejections collapse to one entry per input
    os.unlink(root / "selfloop.jpg")
    (root / "empty.png").unlink()
    Image.new("RGB", (8, 8), RED).save(root / "truncated.png")  # fixed: now a good image
    third = mmsearch.index(root, batch_size=2, workers=0).report
    assert third.images_embedded == 1
    left = {Path(str(e["uri"])).name for e in mmsearch.open(root.parent / "torture.mms").quarantine()}
    assert left == set(bad) - {"selfloop.jpg", "empty.png", "truncated.png"}


def test_huge_jpeg_decodes_at_reduced_size_under_the_pixel_limit(tmp_path: Path) -> None:
    Image.new("RGB", (800, 600), BLUE).save(tmp_path / "big.jpg", quality=90)
    Image.new("RGB", (800, 600), BLUE).save(tmp_path / "big.png")
    seen: list[tuple[int, int]] = []

    def transform(image: Image.Image) -> np.ndarray:
        seen.append(image.size)
        return np.asarray(image.resize((4, 4)), np.float32)

    settings = DecodeSettings(transform=transform, draft_px=None, max_image_pixels=100_000)
    jpeg = decode_image(str(tmp_path / "big.jpg"), settings)
    assert jpeg.ok and (jpeg.width, jpeg.height) == (800, 600) and seen == [(200, 150)]  # 1/4: the first scale under the limit
    png = decode_image(str(tmp_path / "big.png"), settings)
    assert png.reason == "too-large" and "800x600" in (png.error or "")
    seen.clear()
    model_sized = DecodeSettings(transform=transform, draft_px=64)
    assert decode_image(str(tmp_path / "big.jpg"), model_sized).ok and seen == [(100, 75)]  # 1/8 still >= 64


class _Hang:
    """Transform that hangs on 7x7 images (interruptibly), 9x9 (signals blocked) and crashes on 11x11."""

    def __call__(self, image: Image.Image) -> object:
        if image.size == (7, 7):
            time.sleep(30)
        if image.size == (9, 9):
            signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGALRM})
            time.sleep(30)
        if image.size == (11, 11):
            os.kill(os.getpid(), signal.SIGKILL)  # dies like a codec segfault, without a core dump
        return MeanColour()(image)


class HangingColour(ColourEncoder):
    @property
    def image_transform(self) -> _Hang:
        return _Hang()


@pytest.mark.skipif(sys.platform != "linux", reason="uses Linux signals")
def test_hanging_and_crashing_decodes_are_bounded(tmp_path: Path) -> None:
    register_scheme("hanging", lambda spec, device: HangingColour(str(spec)))
    root = tmp_path / "imgs"
    root.mkdir()
    for i, name in enumerate(["red", "green", "blue", "yellow", "cyan", "magenta"]):
        Image.new("RGB", (20 + i, 20), COLOURS[name]).save(root / f"{name}.png")
    for side, name in [(7, "slow"), (9, "stuck"), (11, "crash")]:
        Image.new("RGB", (side, side), RED).save(root / f"{name}.png")
    started = time.monotonic()
    result = mmsearch.index(root, model="hanging:v1", batch_size=2, workers=2, decode_timeout_s=1.0)
    assert time.monotonic() - started < 20
    assert result.report.images_embedded == 6
    reasons = {Path(str(e["uri"])).name: e["reason"] for e in mmsearch.open(result.path).quarantine()}
    assert reasons == {"slow.png": "timeout", "stuck.png": "timeout", "crash.png": "crashed"}


def test_decode_timeout_in_process(tmp_path: Path) -> None:
    Image.new("RGB", (7, 7), RED).save(tmp_path / "slow.png")
    started = time.monotonic()
    decoded = decode_image(str(tmp_path / "slow.png"), DecodeSettings(transform=_Hang(), timeout_s=0.5))
    assert decoded.reason == "timeout" and time.monotonic() - started < 5


def _count(reasons) -> dict[str, int]:
    out: dict[str, int] = {}
    for r in reasons:
        out[r] = out.get(r, 0) + 1
    return out


@pytest.mark.parametrize("mode", ["1", "L", "P", "LA", "RGBA", "CMYK", "I;16", "I", "F", "YCbCr"])
def test_every_mode_decodes_at_reduced_size(tmp_path: Path, mode: str) -> None:
    """Large images of every mode go through the reduced-size path (some modes cannot be reduced directly)."""
    path = tmp_path / f"m.{'jpg' if mode in ('CMYK', 'YCbCr') else 'tiff' if mode in ('I', 'F') else 'png'}"
    Image.new(mode, (300, 260)).save(path)
    seen: list[tuple[int, int]] = []

    def transform(image: Image.Image) -> np.ndarray:
        seen.append(image.size)
        assert image.mode == "RGB"
        return np.zeros(3, np.float32)

    decoded = decode_image(str(path), DecodeSettings(transform=transform, draft_px=32))
    assert decoded.ok, decoded.error
    assert (decoded.width, decoded.height) == (300, 260) and max(seen[0]) < 300
