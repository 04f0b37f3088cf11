"""``mimic_ils.files``: the one atomic write, PNG encoding and checksum record."""

from __future__ import annotations

import os
import stat

import numpy as np
import pytest

from mimic_ils.files import FileRecord, atomic_write_bytes, current_umask, encode_png, write_file_once

PINNED_PNG = "b527d1b3b44980e0"  # sha256 prefix of encode_png of the 16x16 ramp below


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_atomic_writes_get_the_mode_of_a_plain_open(tmp_path, umask):
    previous = os.umask(umask)
    try:
        atomic_write_bytes(tmp_path / "a" / "x.bin", b"data")
        with open(tmp_path / "plain.bin", "wb") as handle:
            handle.write(b"data")
        assert current_umask() == umask
    finally:
        os.umask(previous)
    mode = stat.S_IMODE((tmp_path / "a" / "x.bin").stat().st_mode)
    assert mode == stat.S_IMODE((tmp_path / "plain.bin").stat().st_mode) == 0o666 & ~umask
    assert (tmp_path / "a" / "x.bin").read_bytes() == b"data" and os.listdir(tmp_path / "a") == ["x.bin"]


def test_file_records_match_size_then_content(tmp_path):
    record = write_file_once(tmp_path / "m.png", encode_png(np.eye(8, dtype=bool)))
    assert record == FileRecord.of_file(tmp_path / "m.png")
    assert FileRecord.from_json(record.to_json()) == record
    assert record.matches(tmp_path / "m.png") and not record.matches(tmp_path / "missing.png")
    data = bytearray((tmp_path / "m.png").read_bytes())
    data[-13] ^= 1  # same size, other bytes: only the full check sees it
    (tmp_path / "m.png").write_bytes(bytes(data))
    assert record.matches(tmp_path / "m.png", full=False) and not record.matches(tmp_path / "m.png", full=True)
    assert FileRecord.from_json("abc:12") is None and FileRecord.from_json({"sha256": "x", "size": True}) is None


def test_png_encoding_is_deterministic_and_lossless():
    pixels = np.arange(64, dtype=np.uint8).reshape(8, 8)
    assert encode_png(pixels) == encode_png(pixels.copy())
    from io import BytesIO

    from PIL import Image

    assert np.array_equal(np.asarray(Image.open(BytesIO(encode_png(pixels)))), pixels)
    assert np.array_equal(np.asarray(Image.open(BytesIO(encode_png(pixels > 30)))), (pixels > 30) * 255)


@pytest.mark.parametrize("shape", [(1, 1), (1, 7), (5, 1), (33, 17), (480, 640)])
def test_png_encoder_round_trips_any_grey_image_through_pillow_and_datasets(shape):
    from io import BytesIO

    import datasets
    from PIL import Image

    rng = np.random.default_rng(sum(shape))
    smooth = np.cumsum(rng.integers(-3, 4, shape), axis=0) % 256  # X-ray-like: neighbouring rows close
    for pixels in (rng.integers(0, 256, shape, dtype=np.uint8), smooth.astype(np.uint8),
                   np.zeros(shape, np.uint8), np.full(shape, 255, np.uint8)):
        data = encode_png(pixels)
        image = Image.open(BytesIO(data))
        image.load()  # CRCs and zlib stream checked by the decoder
        assert image.mode == "L" and image.size == shape[::-1] and np.array_equal(np.asarray(image), pixels)
        decoded = datasets.Image().decode_example({"bytes": data, "path": None})
        assert np.array_equal(np.asarray(decoded), pixels)


def test_png_encoder_output_is_small_and_fixed():
    """Masks compress to a few hundred bytes; the bytes of a known image are pinned (a change of encoder is a change
    of every dataset folder's bytes, so it must be deliberate)."""
    import hashlib

    mask = np.zeros((300, 200), bool)
    mask[40:200, 30:120] = True
    assert len(encode_png(mask)) < 600
    pixels = (np.add.outer(np.arange(16), np.arange(16)) * 7 % 256).astype(np.uint8)
    assert hashlib.sha256(encode_png(pixels)).hexdigest()[:16] == PINNED_PNG
    with pytest.raises(ValueError, match="HxW"):
        encode_png(np.zeros((2, 2, 3), np.uint8))
    with pytest.raises(ValueError, match="non-empty"):
        encode_png(np.zeros((0, 4), np.uint8))


def test_link_file_once_links_atomically_and_keeps_an_identical_file(tmp_path):
    source = tmp_path / "vision" / "image.png"
    source.parent.mkdir()
    source.write_bytes(encode_png(np.eye(8, dtype=bool)))
    target = tmp_path / "images" / "x.png"
    from mimic_ils.files import link_file_once

    record = link_file_once(source, target)
    assert record == FileRecord.of_bytes(source.read_bytes()) and os.path.samefile(source, target)
    target.unlink()
    target.write_bytes(source.read_bytes())  # an identical copy stays as it is
    inode = target.stat().st_ino
    assert link_file_once(source, target) == record and target.stat().st_ino == inode
    target.write_bytes(b"other")  # a different file is replaced by the link
    assert link_file_once(source, target) == record and os.path.samefile(source, target)
    assert sorted(path.name for path in target.parent.iterdir()) == ["x.png"]  # no temporary left
