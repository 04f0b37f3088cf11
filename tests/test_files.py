"""``mimic_ils.files``: the one atomic write, PNG encoding and checksum record."""

from __future__ import annotations

import os
import stat

import numpy as np
import pytest

from mimic_ils.files import FileRecord, atomic_write_bytes, current_umask, encode_png, write_file_once


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
