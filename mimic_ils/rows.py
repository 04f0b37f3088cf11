"""The typed rows of a build: what a study's result holds, and what the output folder's Parquet files hold.

* :class:`Failure`: a one-line reason with its stage, and whether it is transient (never cached as an outcome).
* :class:`PairRow`: one row of the ``pairs`` config; :class:`ImageRow`: one row of the ``images`` config;
  :class:`ConversationRow`: one row of the ``conversations`` config.
* :class:`ImageFate`, :class:`DroppedFinding`, :class:`StudyResult`: the study artifact of the work folder.
* :class:`LedgerRow`: one row of ``ledger.parquet``.

The columns of the Parquet files are stated once, here, as field metadata (:func:`columns`): the Arrow schemas
(``orchestration.writer``) and the ``datasets.Features`` of both configs (``mimic_ils.features``) derive from them.
A row's JSON (the work folder's artifacts, a Parquet row as ``pyarrow`` reads it) is made and read only by its own
``to_json`` / ``from_json``. A row's ``split`` is always the dataset's name (``validation``): rows of a work folder
or a built folder made before the rename (``validate``) read back under the new name.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, fields
from typing import Any

from mimic_ils.files import FileRecord
from mimic_ils.schema import canonical_split

# Column kinds: a nullable string, a list of strings, a file name (``*_file_name``; the loader's Image feature), and
# the list of an image's pairs (ImageRow only).
STRING, STRINGS, FILE, PAIRS = "string", "strings", "file", "pairs"
RETRIED = "retried next run"
STUDY_ARTIFACT_VERSION = 5  # 5: the reasoning pairs


def _column(kind: str, *, per_image: bool = True) -> Any:
    """A Parquet column of ``kind``; ``per_image=False``: a PairRow column an ImageRow holds once, not per pair."""
    return field(metadata={"column": kind, "per_image": per_image})


@dataclass(frozen=True)
class Column:
    """One Parquet column of a row class: its name, its kind, and (PairRow) whether each pair of an ImageRow has it."""

    name: str
    kind: str
    per_image: bool = True


def columns(row_class: type) -> tuple[Column, ...]:
    """The Parquet columns of ``row_class`` (PairRow, ImageRow, LedgerRow), in file order."""
    return tuple(Column(item.name, item.metadata["column"], item.metadata["per_image"])
                 for item in fields(row_class) if "column" in item.metadata)


def image_pair_columns() -> tuple[Column, ...]:
    """The columns of each pair inside an ImageRow (those of PairRow that differ between an image's pairs)."""
    return tuple(column for column in columns(PairRow) if column.per_image)


@dataclass(frozen=True)
class Failure:
    """Why a study or an image has no result: the stage (ingest, report, vision, grounding, qc, pairs) and a
    one-line reason. ``transient``: the machine's or a service's fault, not the study's; retried next run."""

    stage: str
    reason: str
    transient: bool = False

    @property
    def line(self) -> str:
        """The ledger's one line: ``"<stage>: <reason>"``, marked when transient."""
        text = f"{self.stage}: {self.reason}"
        return f"{text} (transient failure, {RETRIED})" if self.transient else text

    def __str__(self) -> str:
        return self.line

    def to_json(self) -> dict[str, Any]:
        return {"stage": self.stage, "reason": self.reason, "transient": self.transient}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Failure:
        return cls(data["stage"], data["reason"], bool(data.get("transient", False)))


@dataclass(frozen=True)
class PairRow:
    """One instruction-answer pair as a row of the ``pairs`` config.

    File names are relative to the folder that holds them: in the work folder ``images/<dicom_id>.png`` and
    ``masks/<digest>.png``; in a split folder of the output ``images/...`` and ``images/masks/...``. ``mask_file_name``
    is None for negatives; ``certainty`` is None for negatives and answers that carry none.
    """

    id: str = _column(STRING)
    image_file_name: str = _column(FILE, per_image=False)
    mask_file_name: str | None = _column(FILE)
    instruction: str = _column(STRING)
    answer: str = _column(STRING)
    target: str = _column(STRING)
    lesion: str = _column(STRING)
    question_type: str = _column(STRING)
    polarity: str = _column(STRING)
    locations: tuple[str, ...] = _column(STRINGS)
    certainty: str | None = _column(STRING)
    study_id: str = _column(STRING, per_image=False)
    dicom_id: str = _column(STRING, per_image=False)
    split: str = _column(STRING, per_image=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "split", canonical_split(self.split))

    @property
    def file_names(self) -> tuple[str, ...]:
        """The files this row names: its image, and its mask when it has one."""
        return (self.image_file_name,) if self.mask_file_name is None else (self.image_file_name, self.mask_file_name)

    def to_json(self) -> dict[str, Any]:
        return {column.name: _plain(getattr(self, column.name)) for column in columns(PairRow)}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> PairRow:
        return cls(**{column.name: _typed(column, data[column.name]) for column in columns(PairRow)})


@dataclass(frozen=True)
class ImageRow:
    """One row of the ``images`` config: an image and its pairs (same order). File names are relative to the split's
    ``images/`` folder; each pair is written with the per-image columns only (:func:`image_pair_columns`)."""

    dicom_id: str = _column(STRING)
    image_file_name: str = _column(FILE)
    study_id: str = _column(STRING)
    split: str = _column(STRING)
    pairs: tuple[PairRow, ...] = _column(PAIRS)

    def __post_init__(self) -> None:
        object.__setattr__(self, "split", canonical_split(self.split))

    def to_json(self) -> dict[str, Any]:
        return _grouped_json(self)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ImageRow:
        return _grouped_row(cls, data)


@dataclass(frozen=True)
class ConversationRow:
    """One row of the ``conversations`` config: 2 to 4 pairs of one image as the turns of one conversation
    (:func:`mimic_ils.conversations.image_conversations`), each answer with its own ``[SEG]`` and mask. File names
    are relative to the split's ``images/`` folder, as in the ``images`` config."""

    id: str = _column(STRING)
    image_file_name: str = _column(FILE)
    study_id: str = _column(STRING)
    dicom_id: str = _column(STRING)
    split: str = _column(STRING)
    turns: tuple[PairRow, ...] = _column(PAIRS)

    def __post_init__(self) -> None:
        object.__setattr__(self, "split", canonical_split(self.split))

    def to_json(self) -> dict[str, Any]:
        return _grouped_json(self)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ConversationRow:
        return _grouped_row(cls, data)


def _grouped_json(row: ImageRow | ConversationRow) -> dict[str, Any]:
    """A row holding a list of pairs: its own columns, and each pair's per-image columns."""
    names = [column.name for column in image_pair_columns()]
    out: dict[str, Any] = {}
    for column in columns(type(row)):
        value = getattr(row, column.name)
        out[column.name] = ([{name: pair[name] for name in names} for pair in map(PairRow.to_json, value)]
                            if column.kind == PAIRS else value)
    return out


def _grouped_row(cls: type, data: Mapping[str, Any]):
    shared = {column.name: data[column.name] for column in columns(PairRow) if not column.per_image}
    values = {}
    for column in columns(cls):
        values[column.name] = (tuple(PairRow.from_json({**pair, **shared}) for pair in data[column.name])
                               if column.kind == PAIRS else data[column.name])
    return cls(**values)


@dataclass(frozen=True)
class LedgerRow:
    """One row of ``ledger.parquet``: a study, image, pair (release import) or dropped finding, with its fate
    (used / excluded / dropped) and one-line reason (None when used). ``dicom_id`` is None for a study."""

    kind: str = _column(STRING)
    study_id: str = _column(STRING)
    dicom_id: str | None = _column(STRING)
    split: str = _column(STRING)
    fate: str = _column(STRING)
    reason: str | None = _column(STRING)

    def __post_init__(self) -> None:
        object.__setattr__(self, "split", canonical_split(self.split))

    def to_json(self) -> dict[str, Any]:
        return {column.name: getattr(self, column.name) for column in columns(LedgerRow)}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> LedgerRow:
        return cls(**{column.name: data[column.name] for column in columns(LedgerRow)})


@dataclass(frozen=True)
class ImageFate:
    """One image of a study: used (it has pairs) or excluded with the one-line reason; ``transient``: the reason is
    a transient failure (the study is retried next run)."""

    dicom_id: str
    view: str
    fate: str
    reason: str | None = None
    transient: bool = False

    @classmethod
    def excluded(cls, dicom_id: str, view: str, failure: Failure) -> ImageFate:
        return cls(dicom_id, view, "excluded", failure.line, failure.transient)

    def to_json(self) -> dict[str, Any]:
        return {"dicom_id": self.dicom_id, "view": self.view, "fate": self.fate, "reason": self.reason,
                "transient": self.transient}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ImageFate:
        return cls(data["dicom_id"], data["view"], data["fate"], data["reason"], bool(data["transient"]))


@dataclass(frozen=True)
class DroppedFinding:
    """A finding grounding dropped on one image (``what``: which finding; ``reason``: why)."""

    dicom_id: str
    what: str
    reason: str

    def to_json(self) -> dict[str, Any]:
        return {"dicom_id": self.dicom_id, "what": self.what, "reason": self.reason}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> DroppedFinding:
        return cls(data["dicom_id"], data["what"], data["reason"])


@dataclass(frozen=True)
class StudyResult:
    """The study artifact: the study's fate, every image's fate, its pairs, the findings grounding dropped, the
    records of the PNGs it names (work-folder path → FileRecord), the digests of its inputs, and whether a transient
    failure left it unfinished (then it is recomputed next run)."""

    study_id: str
    subject_id: str
    split: str
    fate: str
    reason: str | None = None
    images: tuple[ImageFate, ...] = ()
    pairs: tuple[PairRow, ...] = ()
    findings: tuple[DroppedFinding, ...] = ()
    files: Mapping[str, FileRecord] = field(default_factory=dict)
    inputs: Mapping[str, Any] | None = None
    transient: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "split", canonical_split(self.split))

    def to_json(self) -> dict[str, Any]:
        return {
            "version": STUDY_ARTIFACT_VERSION, "study_id": self.study_id, "subject_id": self.subject_id,
            "split": self.split, "fate": self.fate, "reason": self.reason,
            "images": [image.to_json() for image in self.images], "pairs": [pair.to_json() for pair in self.pairs],
            "findings": [finding.to_json() for finding in self.findings],
            "files": {name: record.to_json() for name, record in sorted(self.files.items())},
            "inputs": self.inputs, "transient": self.transient,
        }

    @classmethod
    def from_json(cls, data: Any) -> StudyResult | None:
        """The result of an artifact of this version; None for any other (an older work folder: recompute)."""
        if not isinstance(data, dict) or data.get("version") != STUDY_ARTIFACT_VERSION:
            return None
        records = {name: FileRecord.from_json(record) for name, record in data["files"].items()}
        if any(record is None for record in records.values()):
            return None
        return cls(
            data["study_id"], data["subject_id"], data["split"], data["fate"], data["reason"],
            tuple(ImageFate.from_json(image) for image in data["images"]),
            tuple(PairRow.from_json(pair) for pair in data["pairs"]),
            tuple(DroppedFinding.from_json(finding) for finding in data["findings"]),
            records, data["inputs"], bool(data["transient"]),
        )


# The columns a split's counts are made from, and those stats tallies (Tables 9-11).
COUNTED_COLUMNS = ("polarity", "dicom_id", "study_id", "mask_file_name")
TALLIED_COLUMNS = ("lesion", "question_type", "polarity")


def column_values(rows: Iterable[PairRow], names: Iterable[str]) -> dict[str, list[Any]]:
    """``{name: [each row's value]}`` of PairRows: the shape ``pyarrow``'s ``Table.to_pydict`` gives."""
    rows = list(rows)
    return {name: [getattr(row, name) for row in rows] for name in names}


def split_counts(values: Mapping[str, list[Any]]) -> dict[str, int]:
    """The counts of one split (card, build_info.json, stats) from its pairs' COUNTED_COLUMNS values."""
    polarity = values["polarity"]
    return {
        "pairs": len(polarity),
        "positive": sum(value == "positive" for value in polarity),
        "negative": sum(value == "negative" for value in polarity),
        "images": len(set(values["dicom_id"])),
        "masks": len({name for name in values["mask_file_name"] if name}),
        "studies": len(set(values["study_id"])),
    }


def _plain(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


def _typed(column: Column, value: Any) -> Any:
    return tuple(value) if column.kind == STRINGS else value



class SplitCounter:
    """:func:`split_counts` of a split accumulated row by row (the distinct images, masks and studies as sets of
    ids, never the rows)."""

    def __init__(self) -> None:
        self.pairs = self.positive = self.negative = 0
        self.images: set[str] = set()
        self.masks: set[str] = set()
        self.studies: set[str] = set()

    def add(self, row: PairRow) -> None:
        self.pairs += 1
        self.positive += row.polarity == "positive"
        self.negative += row.polarity == "negative"
        self.images.add(row.dicom_id)
        if row.mask_file_name:
            self.masks.add(row.mask_file_name)
        self.studies.add(row.study_id)

    def counts(self) -> dict[str, int]:
        return {"pairs": self.pairs, "positive": self.positive, "negative": self.negative,
                "images": len(self.images), "masks": len(self.masks), "studies": len(self.studies)}
