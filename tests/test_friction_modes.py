"""Output files follow the user's umask (issue 17: 61 of 68 files of a built dataset were 0600, unreadable to the
other users of a shared cluster): builds, work folders, stats, cues and imported releases, whatever umask the work
folder or the source files were made under."""

from __future__ import annotations

import os
import stat
import sys
from pathlib import Path

import pytest

from mimic_ils import cli
from mimic_ils.orchestration import build
from mimic_ils.release import import_release
from mimic_ils.stats import write_stats

sys.path.insert(0, str(Path(__file__).parent))
from _build_helpers import FakeStages  # noqa: E402
from _cohort import make_cohort  # noqa: E402
from test_release_import import release  # noqa: E402, F401  (the release fixture)


@pytest.fixture
def umask(request):
    previous = os.umask(request.param)
    yield request.param
    os.umask(previous)


def modes(folder: Path) -> dict[str, set[int]]:
    """The permission bits of ``folder`` and everything under it, files and folders apart."""
    found: dict[str, set[int]] = {"files": set(), "dirs": {stat.S_IMODE(folder.stat().st_mode)}}
    for path in folder.rglob("*"):
        found["dirs" if path.is_dir() else "files"].add(stat.S_IMODE(path.lstat().st_mode))
    return found


def expected(umask: int) -> dict[str, set[int]]:
    return {"files": {0o666 & ~umask}, "dirs": {0o777 & ~umask}}


@pytest.mark.parametrize("umask", [0o022, 0o077], indirect=True)
def test_a_build_its_work_folder_and_its_stats_follow_the_umask(umask, tmp_path):
    out, work = tmp_path / "out", tmp_path / "work"
    build(None, out, stages=FakeStages(12), work=work, progress=False)
    write_stats(out, tmp_path / "stats")
    assert len(list(out.rglob("*.png"))) > 10 and (tmp_path / "stats" / "pairs_per_lesion.png").is_file()
    for folder in (out, work, tmp_path / "stats"):
        assert modes(folder) == expected(umask), folder


@pytest.mark.parametrize("umask", [0o022], indirect=True)
def test_a_work_folder_made_under_umask_077_gives_a_readable_output_under_022(umask, tmp_path):
    out, work = tmp_path / "out", tmp_path / "work"
    os.umask(0o077)
    build(None, tmp_path / "private", stages=FakeStages(12), work=work, progress=False)
    os.umask(0o022)
    result = build(None, out, stages=FakeStages(12), work=work, progress=False)
    assert result["processed"]["cached"] == 12 and result["processed"]["computed"] == 0
    assert modes(out) == expected(0o022)
    # the work folder's PNGs stay as they were made (the output copies them instead of linking)
    assert {stat.S_IMODE(path.stat().st_mode) for path in work.glob("*/*.png")} == {0o600}


@pytest.mark.parametrize("umask", [0o022], indirect=True)
def test_a_phantom_build_and_cues_from_the_command_line_are_0644(umask, tmp_path_factory, tmp_path):
    cohort = make_cohort(tmp_path_factory, n_studies=12, seed=1)
    out = tmp_path / "ils"
    assert cli.main(["build", "--mimic-root", str(cohort), "--out", str(out), "--backends", "phantom", "--limit",
                     "4", "--no-progress"]) == 0
    assert cli.main(["cues", "--mimic-root", str(cohort), "--out", str(tmp_path / "cues"), "--limit", "2"]) == 0
    assert list(out.glob("*/images/masks/*.png")) and list((tmp_path / "cues").glob("*/overlay.png"))
    for folder in (out, tmp_path / "ils.work", tmp_path / "cues"):
        assert modes(folder) == expected(0o022), folder


@pytest.mark.parametrize("umask", [0o022], indirect=True)
def test_an_imported_release_is_readable_even_from_private_sources(umask, release, tmp_path):  # noqa: F811
    release_dir, images_root, _ = release
    for path in images_root.rglob("*.jpg"):
        path.chmod(0o600)
    import_release(release_dir, images_root, tmp_path / "out")
    assert list((tmp_path / "out").glob("*/images/*.jpg"))
    assert modes(tmp_path / "out") == expected(0o022)
    assert {stat.S_IMODE(path.stat().st_mode) for path in images_root.rglob("*.jpg")} == {0o600}
