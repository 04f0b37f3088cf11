"""Peak memory and speed of the merge at the paper's scale (issue 18): streaming vs the former in-memory merge.

    python benchmarks/bench_merge.py [--pairs 1100000] [--old-pairs 100000] [--repeats 1] [--work DIR]

Builds a small synthetic cohort once (``mimic-ils synth`` + ``build``, phantom vision backends), then replicates its
study artifacts into a work folder until it holds ``--pairs`` pairs: each copy gets new study, dicom and mask names,
its PNGs hard-linked to the small build's (no disk cost), its artifact written as the build writes it
(``write_checked_json`` of ``StudyResult.to_json()``). Each merge runs in a fresh subprocess that reports its peak
resident memory above its start (``/proc/self/status``: VmHWM at the end minus VmRSS after the imports, the
card's ``huggingface_hub`` included), its wall
time and pairs/s. ``--old-pairs``: the same figures for the streaming and the in-memory merge on the first studies
holding about that many pairs (0: skip).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path


def status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def mimic_ils(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "mimic_ils", *args], check=True, stdout=subprocess.DEVNULL)


def base_build(root: Path, studies: int, seed: int) -> Path:
    """The work folder of a small phantom build (made once under ``root``)."""
    work = root / "base_work"
    if not (root / "base_out" / "mimic_ils_manifest.json").exists():
        mimic_ils("synth", "--out", str(root / "cohort"), "--studies", str(studies), "--seed", str(seed))
        mimic_ils("build", "--mimic-root", str(root / "cohort"), "--backends", "phantom", "--no-progress",
                  "--out", str(root / "base_out"), "--work", str(work))
    return work


def replicate(base: Path, work: Path, pairs: int) -> int:
    """Copies of the base build's study artifacts in ``work`` until it holds at least ``pairs`` pairs; the count."""
    from mimic_ils.orchestration.workdir import WorkDir, read_checked_json, write_checked_json
    from mimic_ils.rows import StudyResult

    results = [StudyResult.from_json(read_checked_json(path)) for path in sorted((base / "studies").glob("*.json"))]
    per_copy = sum(len(result.pairs) for result in results)
    copies = -(-pairs // per_copy)
    target = WorkDir(work)
    for folder in ("studies", "images", "masks"):
        (work / folder).mkdir(parents=True, exist_ok=True)
    for copy in range(copies):
        for result in results:
            new = renamed(result, copy)
            for name in new.files:
                destination = work / name
                if not destination.exists():
                    os.link(base / original_name(name), destination)
            write_checked_json(target.study_path(new.study_id), new.to_json())
    return copies * per_copy


def original_name(name: str) -> str:
    """The base build's file of a copy's file name (``images/<dicom>_c<k>.png``, ``masks/<digest>_c<k>.png``)."""
    stem, suffix = name.rsplit(".", 1)
    return f"{stem.rsplit('_c', 1)[0]}.{suffix}"


def renamed(result, copy: int):
    """A copy of a study result with new study, dicom and mask names (same records: the files are hard links)."""
    def file_name(name: str | None) -> str | None:
        if name is None:
            return None
        stem, suffix = name.rsplit(".", 1)
        return f"{stem}_c{copy}.{suffix}"

    study = f"{copy:05d}{result.study_id}"
    dicom = lambda dicom_id: f"{dicom_id}_c{copy}"  # noqa: E731
    pairs = tuple(replace(row, id=f"{dicom(row.dicom_id)}-{row.id.rsplit('-', 1)[1]}", study_id=study,
                          dicom_id=dicom(row.dicom_id), image_file_name=file_name(row.image_file_name),
                          mask_file_name=file_name(row.mask_file_name)) for row in result.pairs)
    return replace(result, study_id=study, images=tuple(replace(image, dicom_id=dicom(image.dicom_id))
                                                        for image in result.images),
                   findings=tuple(replace(finding, dicom_id=dicom(finding.dicom_id)) for finding in result.findings),
                   pairs=pairs, files={file_name(name): record for name, record in result.files.items()})


def run_merge(work: Path, out: Path, mode: str, limit: int | None) -> dict:
    """One merge in a fresh interpreter; its figures."""
    command = [sys.executable, __file__, "--child", mode, str(work), str(out)] + ([str(limit)] if limit else [])
    result = subprocess.run(command, check=True, capture_output=True, text=True)
    return json.loads(result.stdout.strip().splitlines()[-1])


def child(mode: str, work: Path, out: Path, limit: int | None) -> None:
    import shutil

    import huggingface_hub  # noqa: F401  (the card's imports: counted in the start, not in the merge's memory)

    import mimic_ils.features  # noqa: F401
    from mimic_ils.orchestration.merge import merge, merge_in_memory
    from mimic_ils.orchestration.workdir import WorkDir
    from mimic_ils.schema import Study

    start_kib = status_kib("VmRSS")
    ids = sorted(path.stem for path in (work / "studies").glob("*.json"))[:limit]
    studies = [Study("0", study_id, "", "") for study_id in ids]
    shutil.rmtree(out, ignore_errors=True)
    started = time.perf_counter()
    info = (merge if mode == "stream" else merge_in_memory)(WorkDir(work), studies, out, {"code_version": "bench"})
    wall = time.perf_counter() - started
    pairs = sum(counts["pairs"] for counts in info["counts"].values())
    print(json.dumps({"mode": mode, "studies": len(ids), "pairs": pairs, "wall_s": round(wall, 1),
                      "pairs_per_s": round(pairs / wall), "rss_start_mib": round(start_kib / 1024),
                      "peak_above_start_mib": round((status_kib("VmHWM") - start_kib) / 1024)}))


def studies_for(work: Path, pairs: int) -> int:
    """How many of the first studies (by id) hold about ``pairs`` pairs."""
    from mimic_ils.orchestration.workdir import read_checked_json

    total = 0
    for count, path in enumerate(sorted((work / "studies").glob("*.json")), 1):
        total += len(read_checked_json(path)["pairs"])
        if total >= pairs:
            return count
    return count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=1_100_000)
    parser.add_argument("--old-pairs", type=int, default=100_000)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--base-studies", type=int, default=60)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--work", help="folder for the builds (default: a temporary one; reused when given)")
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        mode, work, out, *limit = args.child
        return child(mode, Path(work), Path(out), int(limit[0]) if limit else None)
    root = Path(args.work or tempfile.mkdtemp(prefix="bench_merge."))
    base = base_build(root, args.base_studies, args.seed)
    work = root / f"work_{args.pairs}"
    if not (work / "studies").exists():
        started = time.perf_counter()
        made = replicate(base, work, args.pairs)
        print(f"replicated {made} pairs into {work} in {time.perf_counter() - started:.0f} s", flush=True)
    runs = []
    if args.old_pairs:
        limit = studies_for(work, args.old_pairs)
        runs += [("stream", limit), ("old", limit)]
    runs.append(("stream", None))
    for mode, limit in runs:
        figures = [run_merge(work, root / "out", mode, limit) for _ in range(args.repeats)]
        median = {key: statistics.median(run[key] for run in figures) for key in figures[0] if key != "mode"}
        print(json.dumps({"mode": mode, "runs": len(figures), **median}), flush=True)


if __name__ == "__main__":
    main()
