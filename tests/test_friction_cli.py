"""``mimic-ils`` for people (issue 17): ``-v``/``-q``, plain progress lines off a terminal (no tqdm escapes in a log),
progress for synth, build, merge and the other commands, and a missing local path is one line naming it, with no
network access, for every command that takes a path."""

from __future__ import annotations

import io
import logging
import re
import socket
import sys
from pathlib import Path

import pytest

from mimic_ils import cli
from mimic_ils.progress import Progress

sys.path.insert(0, str(Path(__file__).parent))
from _cohort import make_cohort  # noqa: E402
from test_release_import import release  # noqa: E402, F401  (the release fixture)

PROGRESS_LINE = re.compile(r"^[\w -]+: \d+/\d+ [\w ]+ \(\d+%\), \d+\.\d s$")
ESCAPES = ("\r", "\x1b[")


def progress_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if PROGRESS_LINE.match(line)]


def run(capsys, *argv: str) -> tuple[int, str]:
    code = cli.main([str(arg) for arg in argv])
    return code, capsys.readouterr().err


# --- -v / -q ---

@pytest.mark.parametrize(("argv", "verbosity"), [
    (["scan", "x"], 0), (["-v", "scan", "x"], 1), (["scan", "x", "--verbose"], 1), (["-q", "scan", "x"], -1),
    (["scan", "--quiet", "x"], -1), (["--allow-downloads", "-q", "stats", "x"], -1),
])
def test_verbose_and_quiet_before_or_after_the_command(argv, verbosity):
    assert cli.build_parser().parse_args(argv).verbosity == verbosity


def test_verbosity_sets_the_level_for_the_command_only():
    package = logging.getLogger("mimic_ils")
    before = package.level
    for verbosity, level in ((1, logging.DEBUG), (0, logging.INFO), (-1, logging.WARNING)):
        with cli.output_settings(verbosity):
            assert package.getEffectiveLevel() == level
    assert package.level == before


# --- progress lines ---

def test_synth_build_and_merge_print_plain_progress_lines_and_quiet_prints_none(tmp_path, capsys):
    code, err = run(capsys, "synth", "--out", tmp_path / "cohort", "--studies", 4, "--seed", 2)
    assert code == 0 and "synth: 4/4 studies (100%)" in err and not any(escape in err for escape in ESCAPES)
    for shard in ("0/2", "1/2"):
        code, err = run(capsys, "build", "--mimic-root", tmp_path / "cohort", "--out", tmp_path / "ils",
                        "--backends", "phantom", "--shard", shard)
        assert code == 0 and not any(escape in err for escape in ESCAPES)
        names = {line.split(":")[0] for line in progress_lines(err)}
        assert names == {"build report", "build vision", "build grounding"} or not names  # an empty shard: none
    code, err = run(capsys, "build", "--mimic-root", tmp_path / "cohort", "--out", tmp_path / "ils", "--backends",
                    "phantom", "--merge")
    assert code == 0 and not any(escape in err for escape in ESCAPES)
    lines = progress_lines(err)
    assert any(line.startswith("merge: 4/4 studies checked (100%)") for line in lines)
    # the streaming merge: the studies written (rows of every split) and the files placed, each with its progress
    assert any(line.startswith("merge write: 4/4 studies written (100%)") for line in lines)
    assert any(line.startswith("merge files: ") and "(100%)" in line for line in lines)
    for argv in (["-q", "synth", "--out", tmp_path / "quiet", "--studies", 3],
                 ["build", "--mimic-root", tmp_path / "cohort", "--out", tmp_path / "ils2", "--backends", "phantom",
                  "-q"]):
        code, err = run(capsys, *argv)
        assert code == 0 and progress_lines(err) == [] and not any(escape in err for escape in ESCAPES)


def test_scan_cues_and_import_release_print_progress_lines(tmp_path_factory, tmp_path, capsys, release):  # noqa: F811
    cohort = make_cohort(tmp_path_factory, n_studies=12, seed=1)
    release_dir, images_root, _ = release
    for argv, name in ((["scan", cohort], "scan"),
                       (["cues", "--mimic-root", cohort, "--out", tmp_path / "cues", "--limit", 2], "cues"),
                       (["import-release", "--release", release_dir, "--images", images_root, "--out",
                         tmp_path / "out"], "import-release")):
        code, err = run(capsys, *argv)
        assert code == 0 and not any(escape in err for escape in ESCAPES)
        assert any(line.startswith(f"{name}: ") and "(100%)" in line for line in progress_lines(err)), err


class _Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _logged(caplog) -> list[str]:
    return [record.getMessage() for record in caplog.records if record.name == "mimic_ils.progress"]


def test_plain_lines_come_per_tenth_at_most_every_few_seconds(caplog):
    caplog.set_level(logging.INFO, logger="mimic_ils")
    clock = _Clock()
    with Progress("build", 120, "studies", stream=io.StringIO(), clock=clock) as bar:
        for _ in range(120):  # one study a second: a line per tenth (12 studies, 12 s)
            clock.now += 1.0
            bar.update()
    lines = _logged(caplog)
    assert lines[0] == "build: 12/120 studies (10%), 12.0 s" and lines[-1] == "build: 120/120 studies (100%), 120.0 s"
    assert len(lines) == 10
    caplog.clear()
    with Progress("merge", 1000, "files", stream=io.StringIO(), clock=clock) as bar:
        for _ in range(1000):  # fast: only the last line
            clock.now += 0.001
            bar.update()
    assert _logged(caplog) == ["merge: 1000/1000 files (100%), 1.0 s"]
    caplog.clear()
    with Progress("cues", 10_000, "images", stream=io.StringIO(), clock=clock) as bar:
        for _ in range(3):  # slow: a line a minute although no tenth is done
            clock.now += 61.0
            bar.update()
    assert len(_logged(caplog)) == 3


def test_a_terminal_gets_a_tqdm_bar_and_quiet_gets_nothing(caplog):
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    caplog.set_level(logging.INFO, logger="mimic_ils")
    terminal = Terminal()
    with Progress("build", 5, "studies", stream=terminal) as bar:
        bar.update(5)
    assert "\r" in terminal.getvalue() and "5/5" in terminal.getvalue() and _logged(caplog) == []
    caplog.set_level(logging.WARNING, logger="mimic_ils")
    terminal = Terminal()
    with Progress("build", 5, "studies", stream=terminal) as bar:
        bar.update(5)
    assert terminal.getvalue() == "" and _logged(caplog) == []


# --- a local path that does not exist ---

MISSING = "/nonexistent/mimic-ils-friction"
COMMANDS = {
    "scan ROOT": ["scan", MISSING],
    "build --mimic-root": ["build", "--mimic-root", MISSING, "--out", "{tmp}/out"],
    "build --config": ["build", "--mimic-root", "{tmp}", "--out", "{tmp}/out", "--config", MISSING],
    "build --backends": ["build", "--mimic-root", "{tmp}", "--out", "{tmp}/out", "--backends", MISSING],
    "build --merge --mimic-root": ["build", "--mimic-root", MISSING, "--out", "{tmp}/out", "--merge"],
    "stats OUT": ["stats", MISSING],
    "import-release --release": ["import-release", "--release", MISSING, "--images", "{tmp}", "--out", "{tmp}/o"],
    "import-release --images": ["import-release", "--release", "{tmp}", "--images", MISSING, "--out", "{tmp}/o"],
    "cues --mimic-root": ["cues", "--mimic-root", MISSING, "--out", "{tmp}/cues"],
    "cues --backends": ["cues", "--mimic-root", "{tmp}", "--out", "{tmp}/cues", "--backends", MISSING],
    "cues --weights-dir": ["cues", "--mimic-root", "{tmp}", "--out", "{tmp}/cues", "--backends", "real",
                           "--weights-dir", MISSING],
    "structure-report FILE": ["structure-report", MISSING],
    "structure-report --llm-model": ["structure-report", "--backend", "llm", "--llm-model", MISSING,
                                     "{tmp}/s1.txt"],
    "report-agreement PATH": ["report-agreement", MISSING, "--llm-url", "http://127.0.0.1:9"],
    "report-agreement --llm-model": ["report-agreement", "{tmp}/s1.txt", "--llm-model", MISSING],
}


@pytest.fixture
def no_network(monkeypatch):
    attempts = []

    def refuse(self, address):
        attempts.append(address)
        raise OSError("network access in a test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    return attempts


@pytest.mark.parametrize("name", list(COMMANDS))
def test_a_missing_local_path_is_one_line_naming_it(name, tmp_path, capsys, no_network):
    (tmp_path / "s1.txt").write_text("FINDINGS: Small right pleural effusion.\n")
    argv = [arg.format(tmp=tmp_path) for arg in COMMANDS[name]]
    code, err = run(capsys, *argv)
    lines = err.strip().splitlines()
    assert code != 0 and 1 <= len(lines) <= 3, err
    assert MISSING in lines[-1] and name.split()[-1] in lines[-1] and "Traceback" not in err, err
    assert no_network == []
