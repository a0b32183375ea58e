"""Decoding every image mode the same way, and spotting unreadable files."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from pipeline.lib import images, pools, schemas


@pytest.mark.parametrize("mode", ["RGB", "L", "RGBA", "P", "CMYK", "I;16", "LA"])
def test_every_mode_becomes_rgb(tmp_path, mode):
    im = Image.new("RGB", (30, 20), (200, 30, 30)).convert(mode)
    path = tmp_path / ("x.tif" if mode in ("CMYK", "I;16") else "x.png")
    im.save(path)
    out = images.load_image(path, 16)
    assert out.shape == (16, 16, 3) and out.dtype == np.uint8
    if mode in ("RGB", "RGBA", "P", "CMYK"):
        assert out[..., 0].mean() > 150 and out[..., 1].mean() < 80  # still red


def test_transparent_pixels_become_white(tmp_path):
    Image.new("RGBA", (8, 8), (255, 0, 0, 0)).save(tmp_path / "t.png")
    assert (images.load_image(tmp_path / "t.png", 8) == 255).all()


def test_thumbnails_show_the_colours_the_model_sees(tmp_path):
    """The galleries' thumbnail converts modes as load_image does: a 16-bit grey gradient is not
    clipped to white, a transparent pixel is white, not the colour under it."""
    Image.fromarray(np.tile(np.linspace(0, 65535, 64, dtype=np.uint16), (64, 1))).save(tmp_path / "g.png")
    Image.new("RGBA", (64, 64), (255, 0, 0, 0)).save(tmp_path / "t.png")
    for name in ("g.png", "t.png"):
        shown, seen = images.thumbnail(tmp_path / name, 64), images.load_image(tmp_path / name, 64)
        assert shown.shape == seen.shape and np.abs(shown.astype(int) - seen).max() <= 2, name
    assert images.thumbnail(tmp_path / "g.png", 64)[0, 32, 0] in range(120, 136)  # mid-grey, not 255


def test_exif_orientation_is_applied(tmp_path):
    im = Image.new("RGB", (40, 20), (0, 0, 255))
    im.paste((255, 0, 0), (0, 0, 20, 20))  # left half red
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to view": left half ends up on top
    im.save(tmp_path / "r.jpg", exif=exif, quality=95)
    out = images.load_image(tmp_path / "r.jpg", 20)
    assert out[:8, :, 0].mean() > 200 and out[-8:, :, 2].mean() > 200


def test_inspect_reports_size_and_rejects_broken_files(tmp_path):
    Image.new("RGB", (64, 48), (1, 2, 3)).save(tmp_path / "ok.jpg")
    assert images.inspect_image(tmp_path / "ok.jpg") == (64, 48)
    data = (tmp_path / "ok.jpg").read_bytes()
    (tmp_path / "truncated.jpg").write_bytes(data[: len(data) // 2])
    (tmp_path / "empty.jpg").write_bytes(b"")
    (tmp_path / "text.jpg").write_text("not an image")
    for name in ("truncated.jpg", "empty.jpg", "text.jpg"):
        with pytest.raises(Exception):
            images.inspect_image(tmp_path / name)


def test_csv_roundtrip_and_sha(tmp_path):
    rows = [{"path": "a/ü.png", "label": "a", "split": "", "sha256": "0", "width": 1, "height": 2}]
    schemas.write_csv(tmp_path / "m.csv", rows, schemas.MANIFEST_FIELDS)
    assert schemas.read_csv(tmp_path / "m.csv")[0]["path"] == "a/ü.png"
    (tmp_path / "f").write_bytes(b"abc")
    assert images.sha256_file(tmp_path / "f").startswith("ba7816bf")


def test_huge_jpeg_is_decoded_at_reduced_scale(tmp_path):
    """A 9000x7000 photo (189 MB as pixels) is read at 1/8 scale: memory stays far below the full decode."""
    import subprocess
    import sys

    from conftest import ROOT

    Image.new("RGB", (9000, 7000), (30, 30, 200)).save(tmp_path / "huge.jpg", quality=50)
    code = ("import resource, sys; from pipeline.lib import images; "
            "before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss; "
            "out = images.load_image(sys.argv[1], 160); w, h = images.inspect_image(sys.argv[1]); "
            "print(out.shape, w, h, (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) // 1024)")
    result = subprocess.run([sys.executable, "-c", code, str(tmp_path / "huge.jpg")], cwd=ROOT,
                            capture_output=True, text=True, check=True)
    shape, width, height, grown_mb = result.stdout.rsplit(" ", 3)
    assert shape == "(160, 160, 3)" and (width, height) == ("9000", "7000")
    assert int(grown_mb) < 60, f"peak memory grew by {grown_mb} MB"


def png_header_only(path, width: int, height: int) -> None:
    """A PNG whose header claims width x height and holds no pixels: what a decompression bomb looks like."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b""))


def test_images_that_would_decode_too_large_are_refused_before_decoding(tmp_path):
    png_header_only(tmp_path / "bomb.png", 13000, 13000)  # 169 megapixels: below Pillow's own bomb limit
    with pytest.raises(images.ImageTooLarge, match="13000x13000 pixels; the limit is 40,000,000"):
        images.inspect_image(tmp_path / "bomb.png")
    png_header_only(tmp_path / "huge.png", 60000, 60000)  # past twice Pillow's limit: Pillow refuses at open
    with pytest.raises(images.ImageTooLarge, match="3600000000 pixels.*the limit is 40,000,000"):
        images.inspect_image(tmp_path / "huge.png")
    Image.new("RGB", (9000, 7000), (30, 30, 200)).save(tmp_path / "big.jpg", quality=50)
    assert images.inspect_image(tmp_path / "big.jpg") == (9000, 7000)  # a JPEG decodes at 1/8 scale


def test_a_png_cut_off_in_its_last_chunks_is_refused(tmp_path):
    pixels = np.random.default_rng(0).integers(0, 255, (300, 300, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(tmp_path / "whole.png")
    data = (tmp_path / "whole.png").read_bytes()
    assert images.inspect_image(tmp_path / "whole.png") == (300, 300)
    for cut in (12, 20):  # without IEND; without the end of the last IDAT chunk
        (tmp_path / "cut.png").write_bytes(data[:-cut])
        with pytest.raises(OSError):
            images.inspect_image(tmp_path / "cut.png")


def test_a_worker_process_error_reaches_the_user_as_its_own_one_line(tmp_path, monkeypatch):
    """pools.process_batches re-raises a worker's StageError as the worker raised it; the worker's
    traceback (which concurrent.futures chains as a cause) is kept as a note, for PIPELINE_DEBUG."""
    import functools

    from pipeline.lib import errors

    monkeypatch.setattr(pools, "cores", lambda: 2)  # workers even on a one-core machine
    rows = [{"path": "gone.png", "sha256": "0"}] * 3
    with pytest.raises(errors.StageError) as caught:
        list(pools.process_batches(functools.partial(images.decode_recorded, tmp_path, 32), rows, 2))
    assert errors.describe(caught.value) == str(caught.value)  # no "[cause: ...]"
    assert str(caught.value).startswith(f"{tmp_path / 'gone.png'}: recorded by ingest but missing")
    assert "in a worker process:" in caught.value.__notes__[0] and "read_recorded" in caught.value.__notes__[0]
