"""One digest of a synthetic build's bytes, to show that a refactor changed no output (issue 16).

    python benchmarks/build_digest.py [--studies 60] [--seed 0] [--work DIR]

Synthesises a cohort, builds it in one process and in two shards plus a merge (phantom vision backends, rules
report backend), and prints per output file its sha256 and one digest of the folder. ``README.md`` and
``build_info.json`` carry the code's commit, which is blanked; the manifest (which lists those two files' bytes)
is left out. Run it on two commits and compare the last line: equal digests mean byte-identical folders.
"""

from __future__ import annotations

import argparse
import hashlib
import re
import subprocess
import sys
import tempfile
from pathlib import Path

COMMIT = re.compile(rb"[0-9a-f]{40}")


def folder_lines(folder: Path) -> list[str]:
    """``"<sha256>  <relative path>"`` of every file of a built folder, commit blanked, manifest left out."""
    lines = []
    for path in sorted(folder.rglob("*")):
        if not path.is_file() or path.name == "mimic_ils_manifest.json":
            continue
        data = path.read_bytes()
        if path.name in ("README.md", "build_info.json"):
            data = COMMIT.sub(b"COMMIT", data)
        lines.append(f"{hashlib.sha256(data).hexdigest()}  {path.relative_to(folder).as_posix()}")
    return lines


def mimic_ils(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "mimic_ils", *args], check=True, stdout=subprocess.DEVNULL)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--studies", type=int, default=60)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--work", help="folder for the cohort and the builds (default: a temporary one)")
    parser.add_argument("--files", action="store_true", help="also print every file's digest")
    args = parser.parse_args()
    root = Path(args.work or tempfile.mkdtemp(prefix="build_digest."))
    cohort, single, sharded = root / "cohort", root / "single", root / "sharded"
    mimic_ils("synth", "--out", str(cohort), "--studies", str(args.studies), "--seed", str(args.seed))
    build = ["build", "--mimic-root", str(cohort), "--backends", "phantom", "--no-progress"]
    mimic_ils(*build, "--out", str(single), "--work", str(root / "work1"))
    mimic_ils(*build, "--out", str(sharded), "--work", str(root / "work2"), "--shard", "0/2")
    mimic_ils(*build, "--out", str(sharded), "--work", str(root / "work2"), "--shard", "1/2", "--merge")
    lines = {name: folder_lines(folder) for name, folder in (("single", single), ("sharded", sharded))}
    if args.files:
        print("\n".join(lines["single"]))
    if lines["single"] != lines["sharded"]:
        raise SystemExit("the one-process and the sharded builds differ")
    digest = hashlib.sha256("\n".join(lines["single"]).encode()).hexdigest()
    print(f"{len(lines['single'])} files, one-process == two shards + merge; folder digest {digest}")


if __name__ == "__main__":
    main()
