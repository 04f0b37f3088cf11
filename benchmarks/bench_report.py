"""Rule-backend throughput: reports per second on one core over the synthetic cohort's reports.

Run: ``.venv/bin/python benchmarks/bench_report.py [--studies 2000] [--repeats 5] [--root COHORT]``.

The reports come from ``mimic_ils.synth.plan_cohort`` (the exact report texts ``generate_cohort`` writes, without
rendering pixels) or, with ``--root``, from the ``files/**/s*.txt`` of a generated cohort on disk. Each repeat runs
``structure_report`` (section choice + rules structuring + location mapping) over every report in this one
process pinned to one CPU; the script prints the median reports/s against the 1,000 reports/s target, and the
share of time spent choosing sections. The sentence cache is emptied before each run (``--no-sentence-cache``: off).
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

from mimic_ils.report import choose_section, get_backend, rules, structure_report

TARGET = 1000.0


def load_reports(studies: int, seed: int, root: str | None) -> list[tuple[str, str]]:
    """(study_id, report text) pairs, from a cohort folder or planned by the synthetic generator."""
    if root:
        paths = sorted(Path(root).glob("files/p*/p*/s*.txt"))
        return [(path.stem[1:], path.read_text(encoding="utf-8")) for path in paths]
    from mimic_ils import synth

    return [(plan.study_id, plan.report) for plan in synth.plan_cohort(studies, seed)]


def run_once(reports: list[tuple[str, str]], cache: bool = True) -> tuple[float, float, int]:
    """Seconds for sectioning only, seconds for the whole report stage, findings produced. Each run starts with an
    empty sentence cache (so only the repeats within one pass hit it); ``cache=False`` bypasses it entirely."""
    rules.clear_sentence_cache()
    start = time.perf_counter()
    for study_id, text in reports:
        choose_section(text, study_id)
    sectioning = time.perf_counter() - start
    backend = get_backend("rules")
    original = rules._analyse_text
    if not cache:
        rules._analyse_text = original.__wrapped__  # the same work, never remembered
    try:
        start = time.perf_counter()
        findings = sum(len(structure_report(text, study_id=study_id, backend=backend).findings)
                       for study_id, text in reports)
        elapsed = time.perf_counter() - start
    finally:
        rules._analyse_text = original
    return sectioning, elapsed, findings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--studies", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--root", help="a generated cohort folder to read the reports from")
    parser.add_argument("--no-sentence-cache", action="store_true",
                        help="analyse every sentence afresh (the worst case: no sentence repeats)")
    args = parser.parse_args()
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})
    reports = load_reports(args.studies, args.seed, args.root)
    cache = not args.no_sentence_cache
    run_once(reports[:50], cache)  # warm-up: regex compilation, imports
    runs = [run_once(reports, cache) for _ in range(args.repeats)]
    totals = [total for _, total, _ in runs]
    median = statistics.median(totals)
    rate = len(reports) / median
    sectioning = statistics.median(section for section, _, _ in runs)
    chars = sum(len(text) for _, text in reports)
    print(f"reports: {len(reports)} ({chars / len(reports):.0f} characters each on average), findings per run: "
          f"{runs[0][2]}, repeats: {args.repeats}, cpus: {len(os.sched_getaffinity(0))}, sentence cache: "
          f"{'on (emptied each run)' if cache else 'off'}")
    print(f"structure_report (rules) median: {median:.3f} s -> {rate:,.0f} reports/s "
          f"({1000 * median / len(reports):.2f} ms/report); runs: {', '.join(f'{t:.3f}' for t in totals)}")
    print(f"choose_section alone median: {sectioning:.3f} s ({100 * sectioning / median:.0f}% of the total)")
    print(f"target {TARGET:.0f} reports/s: {'met' if rate >= TARGET else 'NOT met'} (ratio {rate / TARGET:.1f}x)")


if __name__ == "__main__":
    main()
