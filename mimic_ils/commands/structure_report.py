"""``mimic-ils structure-report``: section choice and structured findings of raw MIMIC-CXR report files.

One input (a file or ``-`` for stdin) prints one JSON object::

    {"section": {"name", "text"}, "findings": [{"entity", "sentence_index", "presence", "certainty", "location",
     "predicted_lesion_type", "predicted_lesion_sentence_index", "lesion_type", "locations", "location_source"}]}

Several inputs print JSON Lines, one object per input in input order, each with a ``"file"`` key; a report that
cannot be structured prints ``{"file", "error"}`` and the batch goes on (exit status 1 if any failed). All reports
share one process and one backend, so a batch pays the start-up (and an LLM's loading) once.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import Any

_STUDY_FILE = re.compile(r"^s?(\d+)$")


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser("structure-report", help="structure raw MIMIC-CXR reports into findings (JSON)",
                                   description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("files", nargs="*", default=["-"], metavar="FILE",
                        help="report files (sSTUDY.txt); '-' or nothing reads one report from stdin")
    parser.add_argument("--backend", choices=("rules", "llm"), default="rules", help="structuring backend")
    add_llm_arguments(parser)
    parser.add_argument("--study-id", help="study id of a single report (enables the official special cases; "
                                           "taken from sSTUDY.txt file names otherwise)")
    parser.set_defaults(func=run)
    return parser


def add_llm_arguments(parser: argparse.ArgumentParser, *, required: bool = False) -> None:
    """The options of the llm backend (shared with ``report-agreement``); ``required``: one of --llm-model and
    --llm-url must be given."""
    where = parser.add_mutually_exclusive_group(required=required)
    where.add_argument("--llm-model", metavar="PATH", help="local transformers model folder (llm backend)")
    where.add_argument("--llm-url", metavar="URL", help="OpenAI-compatible server on loopback (llm backend)")
    parser.add_argument("--llm-name", default="default", help="model name sent to the server (default: default)")
    parser.add_argument("--llm-cache", metavar="DIR", help="cache folder of LLM answers (rerun costs no call)")
    parser.add_argument("--llm-timeout", type=float, default=120.0, help="seconds per LLM request")
    parser.add_argument("--llm-mapping", choices=("llm", "rules"), default="llm",
                        help="map locations with the two LLM prompts (paper) or the rule table")
    parser.add_argument("--allow-remote-llm", action="store_true",
                        help="allow a non-loopback LLM URL (only for a server the PhysioNet DUA covers)")


def llm_backend(args: argparse.Namespace) -> Any:
    """The llm backend the options of :func:`add_llm_arguments` describe; raises BackendError."""
    from mimic_ils.report import get_backend

    return get_backend("llm", model_path=args.llm_model, url=args.llm_url, model_name=args.llm_name,
                       cache_dir=args.llm_cache, allow_remote=args.allow_remote_llm, timeout=args.llm_timeout,
                       mapping=args.llm_mapping)


def _check_options(args: argparse.Namespace) -> None:
    from mimic_ils.schema import BackendError

    if args.backend == "rules" and (args.llm_model or args.llm_url):
        raise BackendError("--llm-model / --llm-url need --backend llm")


def _backend(args: argparse.Namespace) -> Any:
    from mimic_ils.report import get_backend

    _check_options(args)
    return get_backend("rules") if args.backend == "rules" else llm_backend(args)


def study_id_of(name: str, given: str | None = None) -> str | None:
    """The study id of a report file: ``given``, else the digits of an ``sSTUDY.txt`` name, else None."""
    if given:
        return given
    match = _STUDY_FILE.match(Path(name).stem)
    return match.group(1) if match else None


def read_report(name: str) -> str:
    from mimic_ils.report.sections import decode_report_bytes, read_report_file

    if name == "-":
        return decode_report_bytes(sys.stdin.buffer.read(), "stdin")
    return read_report_file(name)


def finding_json(f: Any) -> dict[str, Any]:
    """The JSON object of one Finding."""
    return {"entity": f.entity, "sentence_index": f.sentence_index, "presence": f.presence,
            "certainty": f.certainty, "location": f.location, "predicted_lesion_type": f.predicted_lesion_type,
            "predicted_lesion_sentence_index": f.predicted_lesion_sentence_index, "lesion_type": f.lesion_type,
            "locations": list(f.locations), "location_source": f.location_source}


def report_json(report: Any) -> dict[str, Any]:
    """The JSON object of one StructuredReport."""
    return {"section": {"name": report.section.name, "text": report.section.text},
            "findings": [finding_json(f) for f in report.findings]}


def structure_one(name: str, backend: Any, study_id: str | None = None) -> dict[str, Any]:
    """JSON object of one report file (``-`` = stdin); raises ReportError."""
    from mimic_ils.report import structure_report

    return report_json(structure_report(read_report(name), study_id=study_id_of(name, study_id), backend=backend))


def run(args: argparse.Namespace) -> int:
    from mimic_ils.commands import require_path
    from mimic_ils.schema import ReportError

    _check_options(args)
    if len(args.files) == 1 and args.files[0] != "-":
        require_path(args.files[0], "FILE", "file")  # in a batch, a missing file is its error line
    require_path(args.llm_model, "--llm-model")
    backend = _backend(args)
    if len(args.files) == 1:
        print(json.dumps(structure_one(args.files[0], backend, args.study_id), indent=2))
        return 0
    from mimic_ils.progress import progress

    failed = 0
    with progress("structure-report", len(args.files), "reports") as bar:
        for name in args.files:
            try:
                record = {"file": name, **structure_one(name, backend)}
            except ReportError as error:
                record, failed = {"file": name, "error": str(error)}, failed + 1
            print(json.dumps(record), flush=False)
            bar.update()
    sys.stdout.flush()
    return 1 if failed else 0
