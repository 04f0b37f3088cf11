"""``mimic-ils report-agreement``: how far the ``rules`` and ``llm`` report backends agree on the same reports.

Inputs are report files and folders; a folder is searched recursively for ``*.txt`` (the MIMIC-CXR layout
``files/pXX/pSUBJECT/sSTUDY.txt``). Each report's section is chosen once (``choose_section``, findings, else
impression, else last paragraph) and structured by both backends. Findings are paired by sentence index and lesion
type, then by sentence index and entity (:mod:`mimic_ils.report.agreement`), and the command prints:

* per-field agreement over the paired findings: ``found`` (paired / all findings of either backend),
  ``lesion_type``, ``presence``, ``certainty``, ``side`` (right / left / both / none of the lung labels),
  ``locations`` (the same set of lung labels), ``predicted_lesion_type``;
* how many findings only one backend gave;
* the disagreeing sentences with the rules and llm values (the first ``--max-examples``);
* the reports that failed in either backend, each with its one-line reason (the run goes on; exit status 1).

``--json OUT`` writes everything: the counts, every disagreement, the failures and both backends' findings per
report. The llm options are those of ``structure-report`` (``--llm-url`` a loopback server such as vLLM, or
``--llm-model`` a local folder; ``--llm-cache`` makes a rerun free).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from mimic_ils.commands.structure_report import add_llm_arguments, finding_json, llm_backend, study_id_of


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser("report-agreement", help="per-field agreement of the rules and llm backends",
                                   description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("inputs", nargs="+", metavar="PATH",
                        help="report files (sSTUDY.txt) or folders searched recursively for *.txt")
    add_llm_arguments(parser, required=True)
    parser.add_argument("--max-examples", type=int, default=20, metavar="N",
                        help="disagreements to print (default: 20; all are in --json)")
    parser.add_argument("--json", metavar="OUT", help="write the full result to this JSON file")
    parser.set_defaults(func=run)
    return parser


def report_files(inputs: list[str]) -> list[Path]:
    """The files to compare: files as given, folders as their ``*.txt`` files (recursive, sorted)."""
    from mimic_ils.schema import ReportError

    files: list[Path] = []
    for name in inputs:
        path = Path(name)
        if path.is_dir():
            found = sorted(item for item in path.rglob("*.txt") if item.is_file())
            if not found:
                raise ReportError(f"no .txt report files under {path}")
            files.extend(found)
        else:
            files.append(path)
    return files


def _sentence(sentences: list[str], index: int) -> str:
    return sentences[index - 1] if 1 <= index <= len(sentences) else ""


def compare(files: list[Path], rules: Any, llm: Any, *, show_progress: bool = False) -> dict[str, Any]:
    """Structure every file with both backends and sum up their agreement (the JSON result of the command)."""
    from mimic_ils.progress import progress

    with progress("report-agreement", len(files), "reports", enabled=show_progress) as bar:
        return _compare(files, rules, llm, bar.update)


def _compare(files: list[Path], rules: Any, llm: Any, done: Any) -> dict[str, Any]:
    from mimic_ils.report import choose_section, read_report_file, split_sentences
    from mimic_ils.report.agreement import Agreement, disagreements, match_findings
    from mimic_ils.schema import ReportError

    total = Agreement()
    reports, failures, differing = [], [], []
    for path in files:
        name, study_id = str(path), study_id_of(str(path))
        stage = "read"
        try:
            section = choose_section(read_report_file(path), study_id)
            stage = "rules"
            by_rules = rules.structure(section)
            stage = "llm"
            by_llm = llm.structure(section)
        except ReportError as error:
            failures.append({"file": name, "backend": stage, "error": str(error)})
            done()
            continue
        matching = match_findings(by_rules, by_llm)
        total.add(matching)
        sentences = split_sentences(section.text)
        for item in disagreements(matching):
            differing.append({"file": name, "study_id": study_id, "sentence_index": item.sentence_index,
                              "sentence": _sentence(sentences, item.sentence_index), "field": item.field,
                              "rules": item.a, "llm": item.b})
        reports.append({"file": name, "study_id": study_id, "section": {"name": section.name, "text": section.text},
                        "rules": [finding_json(f) for f in by_rules], "llm": [finding_json(f) for f in by_llm],
                        "matched": len(matching.pairs)})
        done()
    return {"files": len(files), "compared": len(reports), "failed": len(failures), "matched": total.matched,
            "only_rules": total.only_a, "only_llm": total.only_b, "agreement": total.as_json(),
            "disagreements": differing, "failures": failures, "reports": reports}


def _show(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, list):
        return "[" + ", ".join(value) + "]"
    return str(value)


def format_result(result: dict[str, Any], max_examples: int = 20) -> str:
    """The printed summary of a :func:`compare` result."""
    lines = [f"reports: {result['files']} ({result['compared']} compared, {result['failed']} failed)",
             f"findings: {result['matched']} matched, {result['only_rules']} only rules, "
             f"{result['only_llm']} only llm",
             f"{'field':<22}{'agree':>7}{'total':>7}{'rate':>9}"]
    for name, counts in result["agreement"].items():
        rate = "-" if counts["rate"] is None else f"{100 * counts['rate']:.1f}%"
        lines.append(f"{name:<22}{counts['agree']:>7}{counts['total']:>7}{rate:>9}")
    differing = result["disagreements"]
    shown = differing[:max(0, max_examples)]
    lines.append(f"disagreements: {len(differing)} ({len(shown)} shown)")
    for item in shown:
        lines.append(f"  {item['file']} sentence {item['sentence_index']} [{item['field']}] "
                     f"rules={_show(item['rules'])} llm={_show(item['llm'])}: {item['sentence']}")
    if result["failures"]:
        lines.append(f"failed: {len(result['failures'])}")
        lines.extend(f"  {item['file']} ({item['backend']}): {item['error']}" for item in result["failures"])
    return "\n".join(lines)


def rules_backend() -> Any:
    """The rules backend the command compares with (a seam for tests)."""
    from mimic_ils.report import get_backend

    return get_backend("rules")


def run(args: argparse.Namespace) -> int:
    from mimic_ils.commands import require_path

    if len(args.inputs) == 1:
        require_path(args.inputs[0], "PATH", "path")  # among several, a missing file is a failed report
    require_path(args.llm_model, "--llm-model")
    files = report_files(args.inputs)
    result = compare(files, rules_backend(), llm_backend(args), show_progress=True)
    print(format_result(result, args.max_examples))
    if args.json:
        from mimic_ils.files import atomic_write_bytes

        atomic_write_bytes(args.json, (json.dumps(result, indent=2) + "\n").encode("utf-8"))
    return 1 if result["failed"] else 0
