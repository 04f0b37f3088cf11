"""The DICOM reader on every variant the synthetic generator writes, hand-computed LUT/window cases, bad files."""

from __future__ import annotations

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian

from mimic_ils import phantom_render
from mimic_ils.dicom import check_dicom, read_dicom, read_dicom_header, window
from mimic_ils.schema import DicomReadError
from mimic_ils.synth import ImagePlan, StudyPlan, write_dicom

VARIANTS = [(photometric, bits, voi) for photometric in ("MONOCHROME1", "MONOCHROME2") for bits in (12, 16)
            for voi in ("lut", "window", "none")]


@pytest.fixture(scope="module")
def phantom() -> phantom_render.FrontalRender:
    rng = np.random.default_rng(3)
    geometry = phantom_render.sample_geometry(rng, 120, 96)
    return phantom_render.render_frontal(geometry, [phantom_render.LesionSpec("pneumonia", ("right lung base",))], rng)


def _write(tmp_path, display: np.ndarray, photometric: str, bits: int, voi: str, view: str = "PA"):
    image = ImagePlan(dicom_id="0a0b0c0d-00000001-00000002-00000003-00000004", view=view, height=display.shape[0],
                      width=display.shape[1], photometric=photometric, bits_stored=bits, voi=voi)
    study = StudyPlan(index=0, subject_id="10000032", study_id="50414267", split="train", date="21800506",
                      time="213014.531", images=[image])
    path = tmp_path / f"{photometric}_{bits}_{voi}.dcm"
    write_dicom(path, display, image, study, seed=0)
    return path


@pytest.mark.parametrize(("photometric", "bits", "voi"), VARIANTS)
def test_every_variant_reads_back_as_the_display_image(tmp_path, phantom, photometric, bits, voi):
    path = _write(tmp_path, phantom.display, photometric, bits, voi)
    ds = pydicom.dcmread(path)
    assert ds.PhotometricInterpretation == photometric and ds.BitsStored == bits
    assert ("VOILUTSequence" in ds) == (voi == "lut") and ("WindowCenter" in ds) == (voi == "window")
    image = read_dicom(path)
    assert image.dtype == np.uint8 and image.shape == (120, 96)
    assert np.abs(image.astype(int) - phantom.display.astype(int)).max() <= 1
    lungs = phantom.lung_right | phantom.lung_left
    spine = np.zeros_like(lungs)
    spine[20:45, 46:50] = True  # the spine column above the heart
    assert image[lungs].mean() < 100, "lungs must come out dark"
    assert image[spine].mean() > image[lungs].mean() + 60, "bones must come out bright"
    as_float = read_dicom(path, out_dtype=np.float32)
    assert as_float.dtype == np.float32 and 0.0 <= as_float.min() and as_float.max() <= 1.0
    np.testing.assert_allclose(as_float * 255.0, image, atol=0.51)


def test_monochrome1_is_stored_inverted(tmp_path, phantom):
    raw1 = pydicom.dcmread(_write(tmp_path, phantom.display, "MONOCHROME1", 12, "none")).pixel_array
    raw2 = pydicom.dcmread(_write(tmp_path, phantom.display, "MONOCHROME2", 12, "none")).pixel_array
    lungs = phantom.lung_right | phantom.lung_left
    assert raw1[lungs].mean() > raw2[lungs].mean()  # stored bright, displayed dark


def test_header_without_pixels(tmp_path, phantom):
    header = read_dicom_header(_write(tmp_path, phantom.display, "MONOCHROME2", 16, "window", view="AP"))
    assert (header.view, header.rows, header.columns, header.bits_stored) == ("AP", 120, 96, 16)
    assert header.photometric == "MONOCHROME2"


def _tiny(path, pixels: np.ndarray, **attributes) -> None:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1"
    meta.MediaStorageSOPInstanceUID = "2.25.1"
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID, ds.Modality = meta.MediaStorageSOPClassUID, "2.25.1", "CR"
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel, ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 1, 16, 12, 11, 0
    ds.PhotometricInterpretation = "MONOCHROME2"
    for keyword, value in attributes.items():
        setattr(ds, keyword, value)
    if pixels.size:
        ds.PixelData = pixels.astype("<u2").tobytes()
    ds.save_as(path, enforce_file_format=True)


def test_voi_lut_sequence_hand_computed(tmp_path):
    item = Dataset()
    item.add_new(0x00283002, "US", [4, 10, 8])  # 4 entries, first mapped value 10, 8-bit output
    item.add_new(0x00283006, "US", [0, 51, 102, 255])
    _tiny(tmp_path / "lut.dcm", np.array([[9, 10, 11], [12, 13, 40]]), VOILUTSequence=Sequence([item]))
    np.testing.assert_array_equal(read_dicom(tmp_path / "lut.dcm"), [[0, 0, 51], [102, 255, 255]])


def test_rescale_then_window_hand_computed(tmp_path):
    # modality = 2 * stored - 100 = [0, 50, 100, 150]; centre 100.5, width 101: y = (x - 100) / 100 + 0.5, clipped
    stored = np.array([[50, 75, 100, 125]])
    _tiny(tmp_path / "win.dcm", stored, RescaleSlope=2, RescaleIntercept=-100, WindowCenter=100.5, WindowWidth=101)
    np.testing.assert_array_equal(read_dicom(tmp_path / "win.dcm"), [[0, 0, 128, 255]])


def test_multi_valued_window_uses_the_first_pair(tmp_path):
    stored = np.array([[50, 75, 100, 125]])
    _tiny(tmp_path / "win2.dcm", stored, RescaleSlope=2, RescaleIntercept=-100, WindowCenter=[100.5, 400],
          WindowWidth=[101, 10])
    np.testing.assert_array_equal(read_dicom(tmp_path / "win2.dcm"), [[0, 0, 128, 255]])


def test_modality_lut_sequence_hand_computed(tmp_path):
    item = Dataset()
    item.add_new(0x00283002, "US", [4, 0, 12])  # 4 entries from stored value 0, 12-bit output
    item.add_new(0x00283006, "US", [0, 1000, 2000, 4095])
    item.ModalityLUTType = "US"
    _tiny(tmp_path / "mlut.dcm", np.array([[0, 1, 2, 3]]), ModalityLUTSequence=Sequence([item]))
    # no VOI: the modality output range (the table's min..max) maps onto 0..255
    np.testing.assert_array_equal(read_dicom(tmp_path / "mlut.dcm"), [[0, 62, 125, 255]])


def test_no_voi_uses_the_stored_range(tmp_path):
    _tiny(tmp_path / "raw.dcm", np.array([[0, 4095, 2048]]))
    np.testing.assert_array_equal(read_dicom(tmp_path / "raw.dcm"), [[0, 255, 128]])


@pytest.mark.parametrize(
    ("values", "center", "width", "function", "expected"),
    [
        ([0.0, 2047.5, 4095.0], 2048.0, 4096.0, "LINEAR", [0.0, 0.5, 1.0]),
        ([1000.0, 1499.5, 3000.0], 1500.0, 1000.0, "LINEAR", [0.0, 0.5, 1.0]),
        ([900.0, 1000.0, 1100.0], 1000.0, 200.0, "LINEAR_EXACT", [0.0, 0.5, 1.0]),
        ([1000.0], 1000.0, 200.0, "SIGMOID", [0.5]),
        ([1100.0], 1000.0, 200.0, "SIGMOID", [1.0 / (1.0 + np.exp(-2.0))]),
    ],
)
def test_window_functions(values, center, width, function, expected):
    np.testing.assert_allclose(window(np.array(values), center, width, function), expected, atol=1e-3)


def test_corrupt_file(tmp_path):
    path = tmp_path / "corrupt.dcm"
    path.write_bytes(np.random.default_rng(0).bytes(4096))
    with pytest.raises(DicomReadError, match="not a DICOM file") as info:
        read_dicom(path)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("keep", [0.999, 0.6, 0.05])
def test_truncated_file(tmp_path, phantom, keep):
    path = _write(tmp_path, phantom.display, "MONOCHROME2", 12, "window")
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    for reader in (read_dicom, check_dicom):
        with pytest.raises(DicomReadError) as info:
            reader(path)
        assert "\n" not in str(info.value) and str(path) in str(info.value)


def test_no_pixel_data(tmp_path):
    _tiny(tmp_path / "empty.dcm", np.zeros((0, 0)), Rows=4, Columns=4)
    for reader in (read_dicom, check_dicom):
        with pytest.raises(DicomReadError, match="no pixel data"):
            reader(tmp_path / "empty.dcm")


@pytest.mark.parametrize("photometric", ["PALETTE COLOR", "YBR_FULL", ""])
def test_unknown_photometric_interpretation(tmp_path, photometric):
    _tiny(tmp_path / "rgb.dcm", np.zeros((2, 2)), PhotometricInterpretation=photometric)
    with pytest.raises(DicomReadError, match="photometric|PhotometricInterpretation"):
        read_dicom(tmp_path / "rgb.dcm")


def test_missing_file(tmp_path):
    with pytest.raises(DicomReadError, match="file not found"):
        read_dicom(tmp_path / "absent.dcm")
