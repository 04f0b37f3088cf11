"""Images of any bit depth and file type, as the predictor and the app read them; the overlay picture."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from rosalia_hf.errors import DicomError, ImageReadError
from rosalia_hf.images import as_image_array, find_images, read_image, to_uint8
from rosalia_hf.overlay import render_overlay
from rosalia_hf.processing_rosalia import to_rgb_uint8


def _ramp(dtype, high) -> np.ndarray:
    return (np.linspace(0, high, 64 * 48).reshape(48, 64)).astype(dtype)


def test_a_16_bit_png_is_scaled_not_clipped(tmp_path):
    wide = _ramp(np.uint16, 4095)  # 12-bit values in a 16-bit PNG, as X-ray exports are
    path = tmp_path / "xray16.png"
    Image.fromarray(wide).save(path)
    assert Image.open(path).mode.startswith("I")
    pixels = read_image(path)
    assert pixels.dtype == np.uint8 and pixels.shape == (48, 64)
    assert pixels.min() == 0 and pixels.max() == 255
    assert np.array_equal(pixels, to_uint8(wide))
    assert (pixels == 255).mean() < 0.01  # convert("L") would clip nearly all of it to white
    assert np.array_equal(to_rgb_uint8(Image.open(path))[..., 0], pixels)


@pytest.mark.parametrize("mode", ["L", "RGB", "RGBA", "P", "LA", "1", "I", "F"])
def test_every_pil_mode_gives_uint8(tmp_path, mode):
    base = Image.fromarray(_ramp(np.uint8, 255))
    image = base.convert(mode)
    suffix = ".tiff" if mode == "F" else ".png"
    path = tmp_path / f"x_{mode}{suffix}"
    image.save(path)
    pixels = read_image(path)
    assert pixels.dtype == np.uint8 and pixels.shape[:2] == (48, 64)
    assert pixels.ndim == 2 or pixels.shape[2] == 3
    assert int(pixels.max()) > int(pixels.min())  # contrast kept, not a flat image


def test_bad_images_stay_one_line_when_ultralytics_patched_pillow(tmp_path):
    import ultralytics  # noqa: F401  (its import wraps Image.open with a HEIF fallback that needs pi_heif)

    text = tmp_path / "notes.jpg"
    text.write_text("not an image")
    with pytest.raises(ImageReadError, match="notes.jpg: not an image Pillow can decode"):
        read_image(text)


def test_jpeg_and_arrays_of_any_dtype():
    for array in (_ramp(np.uint16, 60000), _ramp(np.float32, 1.0), _ramp(np.int32, 70000), _ramp(np.float64, -3)):
        out = as_image_array(array)
        assert out.dtype == np.uint8 and out.min() == 0 and out.max() == 255


def test_bad_images_are_one_line_naming_the_file(tmp_path):
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 10)
    text = tmp_path / "notes.jpg"
    text.write_text("not an image")
    truncated = tmp_path / "cut.png"
    Image.fromarray(_ramp(np.uint8, 255)).save(truncated)
    truncated.write_bytes(truncated.read_bytes()[:80])
    for path in (broken, text, truncated, tmp_path / "missing.png", tmp_path):
        with pytest.raises(ImageReadError) as caught:
            read_image(path)
        assert str(path) in str(caught.value) and "\n" not in str(caught.value)
    bad_dicom = tmp_path / "bad.dcm"
    bad_dicom.write_bytes(b"\0" * 200)
    with pytest.raises(DicomError, match="bad.dcm"):
        read_image(bad_dicom)
    with pytest.raises(ImageReadError, match="NaN"):
        as_image_array(np.full((16, 16), np.nan, np.float32))


def test_a_dicom_reads_through_the_build_reader(tmp_path):
    import shutil

    from mimic_ils.dicom import read_dicom
    from mimic_ils.synth import ImagePlan, StudyPlan, write_dicom

    display = np.linspace(0, 255, 40 * 32).reshape(40, 32).astype(np.uint8)
    image = ImagePlan(dicom_id="0a0b0c0d-00000001-00000002-00000003-00000004", view="PA", height=40, width=32,
                      photometric="MONOCHROME1", bits_stored=12, voi="window")
    study = StudyPlan(index=0, subject_id="10000032", study_id="50414267", split="train", date="21800506",
                      time="213014.531", images=[image])
    path = tmp_path / "x.dcm"
    write_dicom(path, display, image, study, seed=0)
    bare = tmp_path / "nosuffix"  # no suffix: found by the DICM preamble
    shutil.copy(path, bare)
    pixels = read_image(path)
    assert np.array_equal(pixels, read_dicom(path)) and np.array_equal(read_image(bare), pixels)
    assert np.abs(pixels.astype(int) - display.astype(int)).max() <= 1  # MONOCHROME1 came out as displayed


def test_find_images_walks_folders_and_names_what_is_missing(tmp_path):
    (tmp_path / "a" / "b").mkdir(parents=True)
    for name in ("a/1.png", "a/b/2.dcm", "a/b/3.JPG", "a/readme.txt"):
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / "empty").mkdir()
    files, problems = find_images([tmp_path / "a", tmp_path / "empty", tmp_path / "nope.png"])
    assert [p.relative_to(tmp_path).as_posix() for p in files] == ["a/1.png", "a/b/2.dcm", "a/b/3.JPG"]
    assert len(problems) == 2 and "empty" in problems[0] and "nope.png: no such file" in problems[1]


def _mask_pixels(picture: np.ndarray) -> int:
    red = (picture[..., 0] > 150) & (picture[..., 1] < 110) & (picture[..., 2] < 110)
    return int(red.sum())


def test_overlay_draws_the_mask_the_markers_and_the_text():
    image = np.full((200, 160), 90, np.uint8)
    mask = np.zeros((200, 160), bool)
    mask[60:140, 20:70] = True  # on the image's left = the patient's right
    with_mask = render_overlay(image, mask, instruction="Segment the opacity in the right lung.", answer="[SEG]",
                               footer="basic · positive")
    without = render_overlay(image, None, instruction="Segment the opacity in the right lung.", answer="[SEG]",
                             footer="basic · positive")
    assert with_mask.dtype == np.uint8 and with_mask.ndim == 3 and with_mask.shape == without.shape
    assert _mask_pixels(with_mask) > 1000 and _mask_pixels(without) == 0
    red_columns = np.nonzero((with_mask[..., 0] > 150) & (with_mask[..., 1] < 110))[1]
    assert red_columns.mean() < with_mask.shape[1] / 2  # drawn where it is: the left half of the picture
    yellow = (without[..., 0] > 200) & (without[..., 1] > 180) & (without[..., 2] < 120)
    ys, xs = np.nonzero(yellow)
    assert xs.min() < without.shape[1] * 0.1 and xs.max() > without.shape[1] * 0.9  # R left, L right
    no_markers = render_overlay(image, None, side_markers=False)
    assert not ((no_markers[..., 0] > 200) & (no_markers[..., 1] > 180) & (no_markers[..., 2] < 120)).any()
    with pytest.raises(ValueError, match="frame"):
        render_overlay(image, mask[:100])
