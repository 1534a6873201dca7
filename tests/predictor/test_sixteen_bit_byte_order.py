"""16-bit images are scaled to 8 bits whatever their byte order: big-endian uint16 arrays (FITS
readers, network-order buffers) and PIL's "I;16B" images (big-endian 16-bit TIFF files)."""

import numpy as np
from PIL import Image

from glip_d2.demo import read_image_file
from glip_d2.predictor import _load_if_path, to_rgb_uint8

# dark 16-bit values (all <= 255), which must not be mistaken for 8-bit ones
VALUES = np.array([[100, 200, 3, 10], [50, 255, 40, 65]], dtype=np.uint16)
EXPECTED = np.round(VALUES / 257.0).astype(np.uint8)


def test_big_endian_uint16_array_is_scaled_like_a_native_one():
    native = to_rgb_uint8(VALUES)
    big = to_rgb_uint8(VALUES.astype(">u2"))
    assert np.array_equal(native[..., 0], EXPECTED)
    assert np.array_equal(big, native)
    rgb = np.stack([VALUES, VALUES // 2, VALUES], axis=2).astype(">u2")
    assert np.array_equal(to_rgb_uint8(rgb), to_rgb_uint8(rgb.astype(np.uint16)))


def test_big_endian_16_bit_tiff_file(tmp_path):
    image = Image.frombuffer("I;16B", (4, 2), VALUES.astype(">u2").tobytes(), "raw", "I;16B", 0, 1)
    path = tmp_path / "big_endian.tif"
    image.save(path)
    assert Image.open(path).mode == "I;16B"
    rgb, notes = read_image_file(str(path))  # the demo's reader
    assert np.array_equal(rgb[..., 0], EXPECTED) and any("16-bit" in n for n in notes)
    # the predictor's reader of file paths
    assert np.array_equal(to_rgb_uint8(_load_if_path(path))[..., 0], EXPECTED)
