"""Hostile or broken user inputs (issue 15, hardening): pickles that run code, remote-code and hub-id model folders,
DICOM headers that would give a black image, and split CSVs that give one image two splits."""

from __future__ import annotations

import argparse
import builtins
import csv
import gzip
import io
import json
import os
import pickle
import subprocess
import zipfile
from pathlib import Path

import numpy as np
import pytest
from _cohort import copy_cohort, make_cohort
from _vision_helpers import save_tiny_radedit, save_tiny_yolo
from test_dicom import _tiny

from mimic_ils import cli, ingest
from mimic_ils.dicom import check_dicom, read_dicom
from mimic_ils.scan import scan_cohort
from mimic_ils.schema import SPLITS, BackendError, DicomReadError
from mimic_ils.synth import SPLIT_NAME
from mimic_ils.vision import base

torch = pytest.importorskip("torch")

# ---------------------------------------------------------------------------------------- S2: pickles run code


class _Payload:
    """Unpickling this calls ``call(*args)``: code that would create the marker file."""

    def __init__(self, call, args) -> None:
        self.call, self.args = call, args

    def __reduce__(self):
        return self.call, self.args


def _payloads(marker: Path) -> dict[str, _Payload]:
    return {
        "os.system": _Payload(os.system, (f"touch '{marker}'",)),
        "builtins.eval": _Payload(builtins.eval, (f"open({str(marker)!r}, 'w').close()",)),
        "subprocess.Popen": _Payload(subprocess.Popen, (["touch", str(marker)],)),
    }


PAYLOADS = ("os.system", "builtins.eval", "subprocess.Popen")
REFUSED_NAME = {"os.system": "posix.system", "builtins.eval": "builtins.eval", "subprocess.Popen": "subprocess.Popen"}


def _hybridgnet_state():
    from mimic_ils.vision.hybridgnet import HybridGNet, HybridGNetConfig

    torch.manual_seed(0)
    return HybridGNet(HybridGNetConfig(input_size=64)).state_dict()


def _cxas_state():
    from mimic_ils.vision.cxas import CxasUNet, CxasUNetConfig

    torch.manual_seed(0)
    return CxasUNet(CxasUNetConfig(width=4, blocks=(1, 1, 1, 1))).state_dict()


def _load_hybridgnet(path: Path):
    from mimic_ils.vision.hybridgnet import HybridGNetConfig

    return base.create("lungs_heart", "hybridgnet", weights=str(path), config=HybridGNetConfig(input_size=64))


def _load_cxas(path: Path):
    from mimic_ils.vision.cxas import CxasUNetConfig

    return base.create("anatomy", "cxas", weights=str(path), config=CxasUNetConfig(width=4, blocks=(1, 1, 1, 1)))


def _load_yolo(path: Path):
    return base.create("lesion_boxes", "yolo", weights=str(path))


def _hostile_checkpoint(loader: str, payload: _Payload, path: Path) -> Path:
    """A checkpoint in the loader's real layout with one extra entry whose unpickling runs ``payload``."""
    if loader == "hybridgnet":
        torch.save({**_hybridgnet_state(), "evil": payload}, path)
    elif loader == "cxas":
        torch.save({"model": _cxas_state(), "args": payload, "epoch": 3}, path)
    else:
        from ultralytics.nn.tasks import DetectionModel

        torch.manual_seed(0)
        torch.save({"model": DetectionModel("yolov8n.yaml", nc=14, verbose=False), "train_args": payload}, path)
    return path


LOADERS = {"hybridgnet": _load_hybridgnet, "cxas": _load_cxas, "yolo": _load_yolo}


@pytest.mark.parametrize("payload", PAYLOADS)
@pytest.mark.parametrize("loader", sorted(LOADERS))
def test_checkpoint_whose_pickle_runs_code_is_refused_before_it_runs(tmp_path: Path, loader: str, payload: str):
    marker = tmp_path / "pwned"
    path = _hostile_checkpoint(loader, _payloads(marker)[payload], tmp_path / "weights.pt")
    with pytest.raises(BackendError) as caught:
        LOADERS[loader](path)
    message = str(caught.value)
    assert "\n" not in message and str(path) in message and REFUSED_NAME[payload] in message
    assert not marker.exists(), "the checkpoint's code ran"


def test_legitimate_tiny_checkpoints_still_load(tmp_path: Path):
    torch.save(_hybridgnet_state(), tmp_path / "bestMSE.pt")
    torch.save({"model": {"module." + k: v for k, v in _cxas_state().items()}}, tmp_path / "cxas.pth")
    assert _load_hybridgnet(tmp_path / "bestMSE.pt").model is not None
    assert _load_cxas(tmp_path / "cxas.pth").model is not None
    assert len(_load_yolo(save_tiny_yolo(tmp_path / "vinbig.pt")).model.names) == 14


def test_safetensors_weights_load_for_hybridgnet_and_cxas(tmp_path: Path):
    from safetensors.torch import save_file

    save_file(_hybridgnet_state(), tmp_path / "hybridgnet.safetensors")
    save_file({k: v.contiguous() for k, v in _cxas_state().items()}, tmp_path / "cxas.safetensors")
    assert _load_hybridgnet(tmp_path / "hybridgnet.safetensors").model is not None
    assert _load_cxas(tmp_path / "cxas.safetensors").model is not None
    (tmp_path / "junk.safetensors").write_bytes(b"\x00" * 20)
    with pytest.raises(BackendError, match="not a safetensors file"):
        _load_hybridgnet(tmp_path / "junk.safetensors")


def test_checkpoints_are_read_weights_only_without_fallback(tmp_path: Path, monkeypatch):
    calls = []
    original = torch.load
    monkeypatch.setattr(torch, "load", lambda *args, **kwargs: calls.append(kwargs) or original(*args, **kwargs))
    path = tmp_path / "bestMSE.pt"
    torch.save({**_hybridgnet_state(), "args": argparse.Namespace(lr=0.1)}, path)  # a training checkpoint's args
    with pytest.raises(BackendError, match="refused.*argparse.Namespace"):
        _load_hybridgnet(path)
    assert [call["weights_only"] for call in calls] == [True]


def _hand_pickle_in_torch_zip(path: Path, marker: Path) -> Path:
    """A torch zip whose data.pkl reaches ``posix.system`` through the memo, with decoy strings pushed last."""

    def string(text: str) -> bytes:
        raw = text.encode()
        return b"\x8c" + bytes([len(raw)]) + raw  # SHORT_BINUNICODE

    memoize, pop = b"\x94", b"0"
    body = (
        string(os.system.__module__) + memoize + pop  # memo 0
        + string("system") + memoize + pop  # memo 1
        + string("builtins") + pop + string("set") + pop  # decoys: the last two strings seen
        + b"h\x00h\x01"  # BINGET 0, BINGET 1
        + b"\x93"  # STACK_GLOBAL
        + string(f"touch '{marker}'") + b"\x85"  # TUPLE1
        + b"R"  # REDUCE
    )
    data = b"\x80\x04" + body + b"."
    template = path.with_suffix(".template")
    torch.save({"x": 1}, template)
    with zipfile.ZipFile(template) as source, zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as target:
        for info in source.infolist():
            content = data if info.filename.endswith("data.pkl") else source.read(info)
            target.writestr(info.filename, content)
    return path


def test_yolo_global_check_follows_the_pickle_memo(tmp_path: Path):
    from mimic_ils.vision.yolo import ordered_globals

    marker = tmp_path / "pwned"
    path = _hand_pickle_in_torch_zip(tmp_path / "memo.pt", marker)
    assert ordered_globals(path) == [f"{os.system.__module__}.system"]
    with pytest.raises(BackendError, match=rf"{os.system.__module__}\.system"):
        _load_yolo(path)
    assert not marker.exists()


def test_yolo_refuses_legacy_files_and_getattr(tmp_path: Path):
    legacy = tmp_path / "legacy.pt"
    torch.save({"x": torch.zeros(1)}, legacy, _use_new_zipfile_serialization=False)
    with pytest.raises(BackendError, match="zip-format"):
        _load_yolo(legacy)
    stream = io.BytesIO()
    pickle.dump(_Payload(getattr, (torch.nn.Conv2d, "__init__")), stream, protocol=2)  # getattr reaches anything
    path = tmp_path / "getattr.pt"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("getattr/data.pkl", stream.getvalue())
    with pytest.raises(BackendError, match="builtins.getattr"):
        _load_yolo(path)


# ----------------------------------------------------------------------- S3: RadEdit remote code and hub ids


@pytest.fixture(scope="module")
def radedit_folders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    pytest.importorskip("diffusers")
    return save_tiny_radedit(tmp_path_factory.mktemp("radedit_adversarial"))


def _radedit(folders: dict[str, str], **options):
    return base.create("pseudo_normal", "radedit", **folders, num_inference_steps=2, resolution=64, **options)


def test_radedit_does_not_run_a_folders_own_code_by_default(radedit_folders, tmp_path: Path):
    import shutil

    marker = tmp_path / "pwned"
    text = Path(shutil.copytree(radedit_folders["text_encoder"], tmp_path / "text"))
    (text / "modeling_evil.py").write_text(
        f"open({str(marker)!r}, 'w').close()\nfrom transformers import BertModel as EvilModel\n"
    )
    config = json.loads((text / "config.json").read_text())
    config["auto_map"] = {"AutoModel": "modeling_evil.EvilModel"}
    (text / "config.json").write_text(json.dumps(config))
    with pytest.raises(BackendError, match="trust_remote_code: true") as caught:
        _radedit({**radedit_folders, "text_encoder": str(text)})
    assert "\n" not in str(caught.value)
    assert not marker.exists(), "the text encoder folder's code ran"
    with pytest.raises(BackendError, match="true or false"):
        _radedit(radedit_folders, trust_remote_code="yes")


def test_radedit_loads_every_component_with_local_files_only(radedit_folders, monkeypatch):
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import AutoModel, AutoTokenizer

    seen = []
    for cls in (UNet2DConditionModel, AutoencoderKL, AutoModel, AutoTokenizer):
        original = cls.from_pretrained.__func__

        def spy(klass, *args, _original=original, _name=cls.__name__, **kwargs):
            seen.append((_name, kwargs.get("local_files_only"), kwargs.get("trust_remote_code", False)))
            return _original(klass, *args, **kwargs)

        monkeypatch.setattr(cls, "from_pretrained", classmethod(spy))
    _radedit(radedit_folders)
    assert sorted(name for name, _, _ in seen) == ["AutoModel", "AutoTokenizer", "AutoencoderKL",
                                                   "UNet2DConditionModel"]
    assert all(local is True and trust is False for _, local, trust in seen), seen


@pytest.mark.parametrize("component", ["unet", "vae", "text_encoder", "tokenizer"])
def test_radedit_hub_id_instead_of_a_folder_is_one_clear_line(radedit_folders, monkeypatch, component: str):
    from transformers import AutoTokenizer

    def no_download(*args, **kwargs):
        raise AssertionError("from_pretrained called with a hub id")

    monkeypatch.setattr(AutoTokenizer, "from_pretrained", no_download)
    with pytest.raises(BackendError, match="hub id") as caught:
        _radedit({**radedit_folders, component: "microsoft/BiomedVLP-BioViL-T"})
    assert "\n" not in str(caught.value) and "microsoft/BiomedVLP-BioViL-T" in str(caught.value)


# ------------------------------------------------------------------------ W5: DICOM values giving a black image


def _tiny_dicom(path: Path, **attributes) -> Path:
    """A 16x16 12-bit MONOCHROME2 ramp with ``attributes`` set (``test_dicom``'s writer)."""
    _tiny(path, np.arange(256).reshape(16, 16) * 16, **attributes)
    return path


BAD_VALUES = [
    ("RescaleSlope", {"RescaleSlope": "NaN", "RescaleIntercept": 0}),
    ("RescaleIntercept", {"RescaleSlope": 1, "RescaleIntercept": "inf"}),
    ("WindowCenter", {"WindowCenter": "nan", "WindowWidth": 400}),
    ("WindowWidth", {"WindowCenter": 2000, "WindowWidth": "-inf"}),
    ("WindowWidth", {"WindowCenter": 2000, "WindowWidth": ["inf", 400]}),
    ("BitsStored", {"BitsStored": 17}),
    ("HighBit", {"HighBit": 15}),
]


@pytest.mark.filterwarnings("ignore:Invalid value for VR DS")
@pytest.mark.parametrize(("tag", "attributes"), BAD_VALUES, ids=[f"{t}-{i}" for i, (t, _) in enumerate(BAD_VALUES)])
def test_non_finite_values_and_inconsistent_bits_are_read_errors(tmp_path: Path, tag: str, attributes: dict):
    path = _tiny_dicom(tmp_path / "bad.dcm", **attributes)
    for reader in (read_dicom, check_dicom):
        with pytest.raises(DicomReadError, match=tag) as caught:
            reader(path)
        assert "\n" not in str(caught.value) and str(path) in str(caught.value)


def test_voi_lut_with_non_finite_output_is_a_read_error(tmp_path: Path):
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence

    item = Dataset()
    item.add_new(0x00283002, "US", [4, 0, 0])  # 0 output bits: every display value divides by 2**0 - 1 = 0
    item.add_new(0x00283006, "US", [0, 1, 2, 3])
    path = _tiny_dicom(tmp_path / "lut.dcm", VOILUTSequence=Sequence([item]))
    with pytest.raises(DicomReadError, match="VOI LUT"):
        read_dicom(path)


def test_good_values_still_read(tmp_path: Path):
    path = _tiny_dicom(tmp_path / "good.dcm", RescaleSlope=1, RescaleIntercept=0, WindowCenter=2048, WindowWidth=4096)
    image = read_dicom(path)
    assert image.shape == (16, 16) and image.max() > 200 and image.min() < 10
    check_dicom(path)


# ------------------------------------------------------------------------------- W6: conflicting split rows


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    return make_cohort(tmp_path_factory, n_studies=6, seed=0)


def _split_rows(root: Path) -> list[dict[str, str]]:
    with gzip.open(root / SPLIT_NAME, "rt", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def _write_split_rows(root: Path, rows: list[dict[str, str]]) -> None:
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    (root / SPLIT_NAME).write_bytes(gzip.compress(text.getvalue().encode()))


def _other_split(split: str) -> str:
    return next(name for name in SPLITS if name != split)


def test_image_listed_with_two_splits_excludes_its_study_and_scan_reports_it(cohort, tmp_path: Path, capsys):
    root = copy_cohort(cohort, tmp_path / "root")
    rows = _split_rows(root)
    victim = rows[0]
    rows.append({**victim, "split": _other_split(victim["split"])})  # the conflicting row comes last
    rows.append(dict(rows[1]))  # an identical repeated row is harmless
    _write_split_rows(root, rows)
    index = ingest.load_index(root)
    study = next(study for study in index.studies if study.study_id == victim["study_id"])
    assert study.split not in SPLITS and study.split.startswith("conflicting")
    others = [study for study in index.studies if study.study_id != victim["study_id"]]
    assert others and all(study.split in SPLITS for study in others)
    reasons = " | ".join(problem.reason for problem in index.problems)
    assert victim["dicom_id"] in reasons and "conflicting split" in reasons
    assert sum("conflicting" in problem.reason for problem in index.problems) == 2  # the image and its study
    summary = scan_cohort(root)
    assert sum(summary.splits.values()) == len(index.studies) - 1
    assert any(victim["dicom_id"] in problem.path for problem in summary.problems)
    assert cli.main(["scan", str(root)]) == 0
    assert "conflicting split" in capsys.readouterr().out


def test_images_of_one_study_in_different_splits_exclude_the_study(cohort, tmp_path: Path):
    root = copy_cohort(cohort, tmp_path / "root")
    rows = _split_rows(root)
    by_study: dict[str, list[dict[str, str]]] = {}
    for row in rows:
        by_study.setdefault(row["study_id"], []).append(row)
    study_id, images = next((key, value) for key, value in sorted(by_study.items()) if len(value) > 1)
    images[-1]["split"] = _other_split(images[0]["split"])
    _write_split_rows(root, rows)
    index = ingest.load_index(root)
    study = next(study for study in index.studies if study.study_id == study_id)
    assert study.split.startswith("conflicting")
    from mimic_ils.orchestration.pipeline import _split_problem

    assert "conflicting" in _split_problem(study).line
    assert any("conflicting split rows" in problem.reason and study_id in problem.path for problem in index.problems)
