"""Decoding (score/decode.py): every file becomes a (size, size, 3) uint8 array or one DecodeError.

Pillow does the decoding; these check the guard rails around it: modes to RGB (16-bit and float
scaled, not clipped), EXIF orientation, the pixel limit, a reason for each bad file, and that
decode_batch keeps row order and turns a missing file into an error row.
"""

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from vehicle_ray.data import open_root
from vehicle_ray.score.decode import DecodeError, decode_batch, decode_image


def encode(img: Image.Image, fmt: str = "PNG", **kwargs) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kwargs)
    return buf.getvalue()


def png_header(width: int, height: int) -> bytes:
    """A valid PNG header for a grey image of any size, with almost no pixel data (a cheap "bomb")."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def palette_with_transparency() -> bytes:
    img = Image.new("P", (20, 10), 1)
    img.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    return encode(img, transparency=0)


MODES = {
    "L": lambda: encode(Image.new("L", (30, 20), 100)),
    "RGBA": lambda: encode(Image.new("RGBA", (30, 20), (10, 200, 30, 0))),
    "P+transparency": palette_with_transparency,
    "CMYK": lambda: encode(Image.new("CMYK", (30, 20), (0, 255, 255, 0)), "JPEG"),
    "I;16": lambda: encode(Image.fromarray(np.full((20, 30), 1000, np.uint16))),
    "I": lambda: encode(Image.fromarray(np.arange(600, dtype=np.int32).reshape(20, 30)), "TIFF"),
    "F": lambda: encode(Image.fromarray(np.linspace(0, 5, 600, dtype=np.float32).reshape(20, 30)), "TIFF"),
}


@pytest.mark.parametrize("mode", MODES)
def test_every_mode_becomes_rgb_uint8(mode):
    data = MODES[mode]()
    assert Image.open(io.BytesIO(data)).mode == mode.split("+")[0]
    out = decode_image(data, 16)
    assert (out.shape, out.dtype) == ((16, 16, 3), np.uint8)


def test_colours_survive_the_conversion():
    assert tuple(decode_image(palette_with_transparency(), 8)[4, 4]) == (255, 0, 0)
    assert tuple(decode_image(MODES["RGBA"](), 8)[4, 4]) == (10, 200, 30)  # alpha dropped, colour kept
    r, g, b = decode_image(MODES["CMYK"](), 8)[4, 4].astype(int)
    assert r > 200 and g < 60 and b < 60  # CMYK (0, 255, 255, 0) is red


def test_16_bit_and_float_are_scaled_not_clipped():
    half = encode(Image.fromarray(np.full((8, 8), 32768, np.uint16)))
    assert abs(int(decode_image(half, 4)[0, 0, 0]) - 128) <= 1
    ramp = decode_image(MODES["F"](), 30, "squish")[:, :, 0]  # 0..5 floats across the image
    assert ramp.max() >= 250 and ramp.min() <= 5 and len(np.unique(ramp)) > 20


def halves(orientation: int | None) -> bytes:
    """40 wide x 20 high: left half red, right half blue, optionally with an EXIF orientation."""
    img = Image.new("RGB", (40, 20), (255, 0, 0))
    img.paste((0, 0, 255), (20, 0, 40, 20))
    exif = Image.Exif()
    if orientation is not None:
        exif[0x0112] = orientation
    return encode(img, "JPEG", quality=95, exif=exif)


def is_red(px) -> bool:
    return px[0] > 200 and px[2] < 60


@pytest.mark.parametrize(
    "orientation, red_at, blue_at",
    [
        (None, (16, 4), (16, 28)),  # as stored: red on the left
        (3, (16, 28), (16, 4)),  # 3: rotated 180 degrees
        (6, (4, 16), (28, 16)),  # 6: rotate 90 degrees clockwise to display: the left half ends on top
        (8, (28, 16), (4, 16)),  # 8: 90 degrees counter-clockwise: the left half ends at the bottom
    ],
)
def test_exif_orientation_is_applied(orientation, red_at, blue_at):
    out = decode_image(halves(orientation), 32)
    assert is_red(out[red_at]) and out[blue_at][2] > 200 and out[blue_at][0] < 60


def test_pixel_limit_refuses_bombs():
    big = encode(Image.new("L", (2000, 2000)))  # 4 Mpx in a few kB
    assert len(big) < 50_000
    with pytest.raises(DecodeError, match="too large"):
        decode_image(big, 8, max_pixels=1_000_000)
    assert decode_image(big, 8, max_pixels=4_000_000).shape == (8, 8, 3)  # the limit is inclusive
    with pytest.raises(DecodeError, match="too large"):
        decode_image(png_header(50_000, 50_000), 8)  # 2.5 Gpx: refused from the header, no allocation


def test_pixel_limit_is_the_options_not_pillows():
    with pytest.raises(DecodeError, match="truncated"):  # under the 100 Mpx default: fails on the data
        decode_image(png_header(10_000, 9_500), 8)


@pytest.mark.parametrize(
    "data, message",
    [
        (b"", "empty file"),
        (encode(Image.new("RGB", (64, 64), (200, 10, 10)), "JPEG")[:300], "corrupt or truncated"),
        (png_header(100, 100), "corrupt or truncated"),
        (np.random.default_rng(0).bytes(500), "not an image"),
        (b"<!doctype html><html><body>404 Not Found</body></html>", "not an image"),
    ],
)
def test_bad_files_are_decode_errors_with_a_reason(data, message):
    with pytest.raises(DecodeError, match=message):
        decode_image(data, 8)


@pytest.mark.parametrize("size", [(1, 1), (400, 10), (10, 400)])
def test_tiny_and_extreme_aspect_images(size):
    data = encode(Image.new("RGB", size, (0, 128, 255)))
    for method in ("squish", "crop"):
        out = decode_image(data, 24, method)
        assert out.shape == (24, 24, 3)
        assert np.all(np.abs(out.astype(int) - (0, 128, 255)) <= 1)


def test_crop_takes_the_centre_and_squish_keeps_everything():
    ramp = np.tile(np.linspace(0, 255, 400).astype(np.uint8), (100, 1))  # 400 wide, dark to bright
    data = encode(Image.fromarray(ramp))
    squish, crop = decode_image(data, 32, "squish")[:, :, 0], decode_image(data, 32, "crop")[:, :, 0]
    assert squish[:, 0].max() < 20 and squish[:, -1].min() > 235
    assert crop[:, 0].min() > 80 and crop[:, -1].max() < 175  # only the middle 100 columns


def test_decode_batch_keeps_row_order_and_reports_each_failure(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "a.png").write_bytes(encode(Image.new("RGB", (10, 10), (255, 0, 0))))
    (tmp_path / "sub" / "c.jpg").write_bytes(encode(Image.new("RGB", (10, 10), (0, 0, 255)), "JPEG"))
    (tmp_path / "d.jpg").write_bytes(b"GIF89a? no")
    (tmp_path / "e.png").write_bytes(b"")
    root = open_root(tmp_path)
    rel = ["a.png", "missing.png", "sub/c.jpg", "d.jpg", "e.png"]
    batch = {"path": np.array([root.full_name(r) for r in rel], dtype=object), "rel": np.array(rel, dtype=object)}
    out = decode_batch(batch, root, 8, "squish", 1_000_000)
    assert list(out["path"]) == list(batch["path"])
    errors = list(out["error"])
    assert errors[0] == "" and errors[2] == ""
    assert errors[1] == "file not found"
    assert errors[3].startswith(("not an image", "corrupt")) and errors[4].startswith("empty file")
    assert out["image"].shape == (5, 8, 8, 3) and out["image"].dtype == np.uint8
    assert is_red(out["image"][0, 4, 4]) and out["image"][2, 4, 4, 2] > 200
    assert not out["image"][[1, 3, 4]].any()  # error rows carry a zero image


def scene(width: int, height: int) -> Image.Image:
    """A generated street-like scene (sample_data's renderer, drawn small) at a camera's aspect ratio."""
    from vehicle_ray.sample_data import render_image

    return render_image(7, True, 128).resize((width, height), Image.BILINEAR)


def test_large_jpegs_decode_at_reduced_scale_close_to_the_full_decode(tmp_path):
    from vehicle_ray.score.decode import reduce_on_decode

    data = encode(scene(512, 288), "JPEG", quality=92)  # at 64 px: 288 // 128 = 2, so a 1/2-scale decode
    img = Image.open(io.BytesIO(data))
    reduce_on_decode(img, 64)
    assert img.size == (256, 144)
    for method in ("squish", "crop"):
        reduced, exact = decode_image(data, 64, method), decode_image(data, 64, method, exact=True)
        assert (reduced.shape, reduced.dtype) == (exact.shape, exact.dtype) == ((64, 64, 3), np.uint8)
        diff = np.abs(reduced.astype(int) - exact.astype(int)).mean()
        assert 0 < diff < 1.5, (method, diff)  # another path, nearly the same pixels
    (tmp_path / "cam.jpg").write_bytes(data)  # the decode tasks pass --exact-decode on
    batch = {"path": np.array(["cam.jpg"], dtype=object), "rel": np.array(["cam.jpg"], dtype=object)}
    for flag in (True, False):
        out = decode_batch(batch, open_root(tmp_path), 64, "squish", 1_000_000, exact=flag)
        assert np.array_equal(out["image"][0], decode_image(data, 64, exact=flag))


@pytest.mark.parametrize("fmt, size", [("JPEG", (240, 135)), ("PNG", (512, 288))])
def test_small_jpegs_and_other_formats_take_the_exact_path(fmt, size):
    data = encode(scene(*size), fmt)
    assert np.array_equal(decode_image(data, 64), decode_image(data, 64, exact=True))
