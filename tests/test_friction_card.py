"""The dataset card of a built folder (issue 17): it parses as a Hugging Face dataset card, carries the licence and
the access gating of credentialed MIMIC-CXR data, has the template's Uses and Bias, Risks, and Limitations sections,
and every path it names is a file (or folder) of the folder it describes."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest
from huggingface_hub import DatasetCard

from mimic_ils.orchestration import build
from mimic_ils.release import import_release
from mimic_ils.schema import FRONTAL_VIEWS, LESION_TYPES, SPLITS

sys.path.insert(0, str(Path(__file__).parent))
from _build_helpers import FakeStages  # noqa: E402
from test_release_import import release  # noqa: E402, F401  (the release fixture)

PATH_LIKE = re.compile(r"/|\.(png|jpe?g|parquet|json|md)$")


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("card") / "out"
    build(None, out, stages=FakeStages(12), progress=False)
    return out


def named_paths(text: str) -> set[str]:
    """The inline code spans of a card's body that are paths (code blocks left out)."""
    prose = re.sub(r"```.*?```", "", text, flags=re.S)
    return {span for span in re.findall(r"`([^`\s]+)`", prose) if PATH_LIKE.search(span)}


def matches(folder: Path, pattern: str) -> list[Path]:
    """The files (or, for a pattern ending in /, folders) of ``folder`` a card pattern names; ``<x>`` is a wildcard,
    ``<split>`` any split."""
    globbed = re.sub(r"<[^>]+>", "*", pattern.replace("<split>", "{split}"))
    found = []
    for split in SPLITS if "{split}" in globbed else [None]:
        name = globbed.format(split=split) if split else globbed
        found += [path for path in folder.glob(name.rstrip("/")) if path.is_dir() == name.endswith("/")]
    return found


def test_card_paths_are_the_folders_files(built):
    card = DatasetCard.load(built / "README.md")
    paths = named_paths(card.text)
    assert "<split>/images/masks/<digest>.png" in paths and "<split>/images/<dicom_id>.png" in paths
    assert not any(path.startswith("<split>/masks") for path in paths)
    missing = [path for path in sorted(paths) if not matches(built, path)]
    assert missing == []
    masks = matches(built, "<split>/images/masks/<digest>.png")
    assert masks and len(masks) == len(list(built.glob("*/images/masks/*.png")))
    for entry in card.data.configs:
        for files in entry["data_files"]:
            assert files["split"] in SPLITS and all(list(built.glob(path)) for path in files["path"])


def test_card_of_an_imported_release_names_its_jpgs(release, tmp_path):  # noqa: F811
    release_dir, images_root, _ = release
    import_release(release_dir, images_root, tmp_path / "out")
    paths = named_paths(DatasetCard.load(tmp_path / "out" / "README.md").text)
    assert "<split>/images/<dicom_id>.jpg" in paths and "<split>/images/<dicom_id>.png" not in paths
    assert [path for path in sorted(paths) if not matches(tmp_path / "out", path)] == []


def test_card_yaml_has_the_licence_and_dua_gating(built):
    data = DatasetCard.load(built / "README.md").data.to_dict()
    assert data["license"] == "other"
    assert data["license_name"] == "physionet-credentialed-health-data-license-1.5.0"
    assert data["license_link"].startswith("https://physionet.org/content/mimic-cxr/")
    prompt = data["extra_gated_prompt"]
    assert "credentialed PhysioNet user" in prompt and "data use agreement" in prompt and "1.5.0" in prompt
    fields = data["extra_gated_fields"]
    assert set(fields.values()) <= {"text", "checkbox"} and fields["PhysioNet username"] == "text"
    agreed = [label for label, kind in fields.items() if kind == "checkbox"]
    assert any("data use agreement" in label for label in agreed) and any("credentialed" in label for label in agreed)


def _sections(text: str) -> dict[str, str]:
    """Heading → its body (up to the next heading of any level)."""
    parts = re.split(r"^(#{2,4} .+)$", text, flags=re.M)
    return {parts[i].lstrip("#").strip(): parts[i + 1] for i in range(1, len(parts) - 1, 2)}


def test_card_has_uses_and_bias_risks_limitations_sections(built):
    sections = _sections(DatasetCard.load(built / "README.md").text)
    assert {"Uses", "Direct Use", "Out-of-Scope Use", "Bias, Risks, and Limitations", "Recommendations",
            "Dataset Structure", "Dataset Creation", "Citation"} <= set(sections)
    assert "Clinical use" in sections["Out-of-Scope Use"] and "diagnosis" in sections["Out-of-Scope Use"]
    risks = sections["Bias, Risks, and Limitations"]
    for phrase in ("pseudo-labels", "Single-centre", "Beth Israel Deaconess", "Frontal views only",
                   "Seven lesion types", "Not for clinical use", *FRONTAL_VIEWS, *LESION_TYPES):
        assert phrase in risks, phrase
