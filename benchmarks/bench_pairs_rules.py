"""Appendix C and Table 9 on synthetic builds: rule violations and the global share of negatives per lesion.

    .venv/bin/python benchmarks/bench_pairs_rules.py --studies 60 150 1000 [--seed 0] [--work DIR]

For each size: generate a synthetic cohort, build it (phantom vision backends, rules report backend), read every
pair back through Table 2 and check Appendix C with ``mimic_ils.orchestration.templates.appendix_c_problems``
(one negative per lesion type and per target per study, lesion-inference negatives labelled opacity, no image
denying what it shows, ...), and compare the global share of negatives per lesion with Table 9's.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import pyarrow.parquet as pq

from mimic_ils import synth
from mimic_ils.orchestration import BuildConfig, build
from mimic_ils.orchestration.templates import appendix_c_problems
from mimic_ils.orchestration.writer import METADATA
from mimic_ils.schema import SPLITS
from mimic_ils.stats import compute_stats


def run(studies: int, seed: int, root: Path) -> dict:
    cohort = synth.generate_cohort(root / f"cohort{studies}", studies, seed)
    out = root / f"out{studies}"
    start = time.perf_counter()
    build(cohort, out, config=BuildConfig(vision="phantom"), progress=False)
    seconds = time.perf_counter() - start
    rows = []
    for split in SPLITS:
        if (out / split / METADATA).exists():
            table = pq.read_table(out / split / METADATA, columns=[
                "id", "study_id", "dicom_id", "instruction", "answer", "target", "lesion", "question_type",
                "polarity", "locations", "certainty", "mask_file_name"])
            rows += table.to_pylist()
    return {"studies": studies, "seconds": seconds, "pairs": len(rows), "problems": appendix_c_problems(rows),
            "shares": compute_stats(out)["global_negative_share"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--studies", type=int, nargs="+", default=[60, 150, 1000])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--work", help="folder for the cohorts and builds (default: a temporary one)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(args.work or tmp)
        root.mkdir(parents=True, exist_ok=True)
        for studies in args.studies:
            result = run(studies, args.seed, root)
            print(f"\n{studies} studies: {result['pairs']:,} pairs, built in {result['seconds']:.0f} s, "
                  f"{len(result['problems'])} rule violations")
            for problem in result["problems"][:10]:
                print(f"  {problem}")
            print("| lesion | negatives | global share (ours) | Table 9 | difference (points) |")
            print("|---|---|---|---|---|")
            for lesion, row in result["shares"].items():
                ours = row["ours"]
                diff = "—" if ours is None else f"{100 * (ours - row['paper']):+.1f}"
                print(f"| {lesion} | {row['negatives']:,} | {'—' if ours is None else f'{ours:.3f}'} | "
                      f"{row['paper']:.3f} | {diff} |")


if __name__ == "__main__":
    main()
