"""Report sectioning as the official MIMIC-CXR preprocessing does it, and the paper's choice of one section per study.

Behaviour follows MIT-LCP ``mimic-cxr`` ``txt/section_parser.py`` / ``create_section_files.py`` (re-written here):

* a header is a line ``"\\n " + [A-Z ()/,-]+ + ":" + whitespace``; the text before the first header is the
  ``preamble``; a report with no header at all is one ``full report`` section;
* after a header the parser skips to the end of that line before searching for the next header (this avoids bad
  parses of headers that run on, e.g. ``CHEST, PA LATERAL:`` followed by ``INDICATION:``);
* header names are lower-cased and normalised (:data:`FREQUENT_SECTION_NAMES`, then "contains one of the main
  section names", then "mentions a view" → findings);
* empty ``findings`` / ``impression`` sections are dropped;
* when neither findings nor impression exists, the last section is split at its first blank line (``"\\n \\n"``)
  and the rest becomes ``last_paragraph``;
* a handful of studies carry fixed overrides (``mimic_ils/data/section_special_cases.json``).

The paper (Sec. 3.1, App. A.1) then uses *one* section per study: findings if present, else impression, else
last_paragraph (the last section of that name, stripped, as the official tool takes it).

One leniency the official tool lacks: when the strict pattern finds no header at all, headers at the very start of a
line without the leading space (``"FINDINGS: ..."``, as hand-typed reports have) are accepted. Real MIMIC-CXR files
always indent headers with one space, so their sectioning is unchanged.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from mimic_ils.schema import ReportError, Section

MAX_REPORT_CHARS = 100_000  # MIMIC-CXR reports are under 10k characters; anything this large is not a report.
PREFERRED_SECTIONS = ("findings", "impression", "last_paragraph")

_HEADER = re.compile(r"\n ([A-Z ()/,-]+):\s", re.DOTALL)
_LENIENT_HEADER = re.compile(r"(?:^|\n) ?([A-Z ()/,-]+):\s")
_SPECIAL_CASES_PATH = Path(__file__).resolve().parent.parent / "data" / "section_special_cases.json"

# Header name (lower case) → normalised name; counts in the official table are MIMIC-CXR frequencies.
FREQUENT_SECTION_NAMES = {
    "preamble": "preamble", "impression": "impression", "comparison": "comparison", "indication": "indication",
    "findings": "findings", "examination": "examination", "technique": "technique", "history": "history",
    "comparisons": "comparison", "clinical history": "history", "reason for examination": "indication",
    "notification": "notification", "reason for exam": "indication", "clinical information": "history",
    "exam": "examination", "clinical indication": "indication", "conclusion": "impression",
    "chest, two views": "findings", "recommendation(s)": "recommendations", "type of examination": "examination",
    "reference exam": "comparison", "patient history": "history", "addendum": "addendum",
    "comparison exam": "comparison", "date": "date", "comment": "comment", "findings and impression": "impression",
    "wet read": "wet read", "comparison film": "comparison", "recommendations": "recommendations",
    "findings/impression": "impression", "pfi": "history", "recommendation": "recommendations",
    "wetread": "wet read", "ndication": "impression", "impresson": "impression", "imprression": "impression",
    "imoression": "impression", "impressoin": "impression", "imprssion": "impression", "impresion": "impression",
    "imperssion": "impression", "mpression": "impression", "impession": "impression",
    "findings/ impression": "impression", "finding": "findings", "findins": "findings", "findindgs": "findings",
    "findgings": "findings", "findngs": "findings", "findnings": "findings", "finidngs": "findings",
    "idication": "indication", "reference findings": "findings", "comparision": "comparison",
    "comparsion": "comparison", "comparrison": "comparison", "comparisions": "comparison",
}
MAIN_SECTION_NAMES = ("impression", "findings", "history", "comparison", "addendum")
_VIEW_PHRASES = re.compile(
    "(chest|portable|pa and lateral|lateral and pa|ap and lateral|lateral and ap|frontal and|two views|frontal view"
    "|pa view|ap view|one view|lateral view|bone window|frontal upright|frontal semi-upright|ribs|pa and lat)"
)


@dataclass(frozen=True)
class SectionedReport:
    """All sections of one report: parallel tuples of section text, normalised name and start offset."""

    texts: tuple[str, ...]
    names: tuple[str, ...]
    starts: tuple[int, ...]

    def last(self, name: str) -> str | None:
        """Text of the last section called ``name`` (as the official tool picks it), or None."""
        for text, section_name in zip(reversed(self.texts), reversed(self.names), strict=True):
            if section_name == name:
                return text
        return None


def normalize_section_name(name: str) -> str:
    """Map one raw header (any case) to its normalised section name, as the official parser does."""
    name = name.lower().strip()
    if name in FREQUENT_SECTION_NAMES:
        return FREQUENT_SECTION_NAMES[name]
    for main in MAIN_SECTION_NAMES:
        if main in name:
            return main
    if _VIEW_PHRASES.search(name):
        return "findings"
    return name


def split_sections(text: str) -> SectionedReport:
    """Split a raw MIMIC-CXR report into sections (official ``section_text`` behaviour, see module docstring)."""
    pattern = _HEADER if _HEADER.search(text) or not _LENIENT_HEADER.search(text) else _LENIENT_HEADER
    texts, names, starts = _raw_sections(text, pattern)
    names = [normalize_section_name(name) for name in names]
    for i in reversed(range(len(names))):
        if names[i] in ("impression", "findings") and not texts[i].strip():
            del texts[i], names[i], starts[i]
    if "impression" not in names and "findings" not in names and "\n \n" in texts[-1]:
        head, *rest = texts[-1].split("\n \n")
        texts[-1] = head
        texts.append("\n \n".join(rest))
        names.append("last_paragraph")
        starts.append(starts[-1] + len(head))
    return SectionedReport(tuple(texts), tuple(names), tuple(starts))


def _raw_sections(text: str, pattern: re.Pattern) -> tuple[list[str], list[str], list[int]]:
    match = pattern.search(text)
    if match is None:
        return [text], ["full report"], [0]
    texts, names, starts = [text[: match.start(1)]], ["preamble"], [0]
    while match:
        name, start = match.group(1), match.end()
        line_end = text.find("\n", start)
        skip = 0 if line_end == -1 else line_end - start
        match = pattern.search(text, start + skip)
        end = len(text) if match is None else match.start()
        texts.append(text[start:end])
        names.append(name)
        starts.append(start)
    return texts, names, starts


@lru_cache(maxsize=1)
def special_cases() -> tuple[dict[str, str], dict[str, tuple[int, int]]]:
    """The official per-study overrides: (study → section name, study → character slice). Keys are ``s<id>``."""
    data = json.loads(_SPECIAL_CASES_PATH.read_text(encoding="utf-8"))
    slices = {study: (int(start), int(end)) for study, (start, end) in data["char_slices"].items()}
    return dict(data["section_names"]), slices


def _study_key(study_id: str | None) -> str | None:
    if not study_id:
        return None
    study_id = str(study_id).strip()
    return study_id if study_id.startswith("s") else f"s{study_id}"


def choose_section(text: str, study_id: str | None = None) -> Section:
    """The one section the pipeline uses for a raw report: findings, else impression, else last_paragraph.

    ``study_id`` (with or without the ``s`` prefix) enables the official per-study overrides: a fixed character
    slice is returned as ``impression`` (the official tool's "conclusion" text); a mis-named section (e.g. the
    impression written under RECOMMENDATIONS) is used as the impression when the study has no findings.
    Raises :class:`ReportError` with the reason when the report is empty, too large, or has no usable section.
    """
    if not text or not text.strip():
        raise ReportError("empty report")
    if len(text) > MAX_REPORT_CHARS:
        raise ReportError(f"report too large: {len(text)} characters (limit {MAX_REPORT_CHARS})")
    key = _study_key(study_id)
    renamed, slices = special_cases()
    if key in slices:
        start, end = slices[key]
        sliced = text[start:end].strip()
        if not sliced:
            raise ReportError(f"no findings, impression or last paragraph (official special case {key})")
        return Section("impression", sliced)
    sectioned = split_sections(text)
    if key in renamed and "findings" not in sectioned.names:
        override = sectioned.last(renamed[key])
        if override and override.strip():
            return Section("impression", override.strip())
    for name in PREFERRED_SECTIONS:
        chosen = sectioned.last(name)
        if chosen is not None and chosen.strip():
            return Section(name, chosen.strip())
    found = ", ".join(dict.fromkeys(sectioned.names)) or "none"
    raise ReportError(f"no findings, impression or last paragraph section (sections found: {found})")


_ABBREVIATIONS = re.compile(r"(?:\b(?:dr|drs|mr|mrs|ms|vs|approx|e\.g|i\.e|cf|fig)\.|\b[A-Za-z]\.)$", re.IGNORECASE)
_SENTENCE_BREAK = re.compile(r"(?<=[.!?])\s+|\n\s*\n")
_LIST_NUMBER = re.compile(r"^\(?\d{1,2}[.)]$")


def split_sentences(text: str) -> list[str]:
    """Sentences of a section, whitespace collapsed; the paper's ``sentence_index`` is 1-based over this list.

    Breaks after ``.``/``!``/``?`` followed by whitespace and at blank lines, but not after common abbreviations
    (``Dr.``, ``vs.``, ``e.g.``) or a bare list number (``1.`` joins the sentence it numbers).
    """
    pieces = [piece.strip() for piece in _SENTENCE_BREAK.split(text)]
    sentences: list[str] = []
    pending = ""
    for piece in pieces:
        if not piece:
            continue
        piece = " ".join(piece.split())
        pending = f"{pending} {piece}" if pending else piece
        if _LIST_NUMBER.match(pending) or _ABBREVIATIONS.search(pending):
            continue
        sentences.append(pending)
        pending = ""
    if pending:
        sentences.append(pending)
    return sentences


def read_report_file(path: str | Path) -> str:
    """Read a report file as strict UTF-8 text; :class:`ReportError` for missing, too large or non-UTF-8 files."""
    path = Path(path)
    try:
        with path.open("rb") as handle:
            data = handle.read(MAX_REPORT_CHARS * 4 + 1)
    except OSError as error:
        raise ReportError(f"cannot read report {path}: {error.strerror or error}") from None
    return decode_report_bytes(data, str(path))


def decode_report_bytes(data: bytes, origin: str = "report") -> str:
    """Decode report bytes as strict UTF-8 (a BOM is dropped); :class:`ReportError` with the offending offset."""
    if len(data) > MAX_REPORT_CHARS * 4:
        raise ReportError(f"{origin}: report too large (over {MAX_REPORT_CHARS * 4} bytes)")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        raise ReportError(
            f"{origin}: not UTF-8 text (byte 0x{data[error.start]:02x} at offset {error.start})"
        ) from None
