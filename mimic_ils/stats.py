"""``mimic-ils stats``: the paper's Tables 9-11 (pairs per lesion × question type × polarity, per split; the
``reasoning`` type beyond them), counts of images and unique masks, the ``conversations`` config's conversations by
number of turns, the ledger's exclusion reasons, and a bar chart like the paper's Fig. 4.

Reads only the Parquet files of a built folder (no image decoding), so it runs in seconds on the full dataset.
"""

from __future__ import annotations

import io
import json
from collections import Counter
from pathlib import Path
from typing import Any

from mimic_ils.files import atomic_write_bytes
from mimic_ils.orchestration.ledger import summarize_ledger
from mimic_ils.orchestration.writer import CONVERSATIONS, IMAGES, METADATA, split_folders
from mimic_ils.rows import COUNTED_COLUMNS, TALLIED_COLUMNS, LedgerRow, split_counts
from mimic_ils.schema import LESION_TYPES, POLARITY, QUESTION_TYPES, MimicIlsError

COLUMNS = tuple((question_type, polarity) for question_type in QUESTION_TYPES for polarity in POLARITY)
_COLUMN_NAMES = {"basic": "basic", "global": "global", "lesion_inference": "lesion inf.", "reasoning": "reasoning"}
TABLE2_TYPES = tuple(question_type for question_type in QUESTION_TYPES if question_type != "reasoning")


def read_pairs(out: str | Path) -> dict[str, dict[str, list[Any]]]:
    """Per split, the tallied and counted columns of the pairs rows (``{column: values}``; no image decoding)."""
    import pyarrow.parquet as pq

    names = list(dict.fromkeys(TALLIED_COLUMNS + COUNTED_COLUMNS))
    split_columns = {split: pq.read_table(folder / METADATA, columns=names).to_pydict()
                     for split, folder in split_folders(out).items()}
    if not split_columns:
        raise MimicIlsError(f"{out} is not a built MIMIC-ILS folder (no <split>/{METADATA})")
    return split_columns


def compute_stats(out: str | Path) -> dict[str, Any]:
    """Tables (``tables[split][lesion]["basic/positive"]``...), counts per split, ledger summary."""
    import pyarrow.parquet as pq

    tables, counts = {}, {}
    for split, values in read_pairs(out).items():
        tally = Counter(zip(*(values[name] for name in TALLIED_COLUMNS), strict=True))  # (lesion, type, polarity)
        tables[split] = {
            lesion: {f"{q}/{p}": tally[(lesion, q, p)] for q, p in COLUMNS} for lesion in LESION_TYPES
        }
        split_count = split_counts(values)
        split_count["unique_masks"] = split_count.pop("masks")
        counts[split] = split_count
    ledger_path = Path(out) / "ledger.parquet"
    ledger = None
    if ledger_path.exists():
        ledger = summarize_ledger(LedgerRow.from_json(row) for row in pq.read_table(ledger_path).to_pylist())
    return {"tables": tables, "counts": counts, "ledger": ledger, "global_negative_share": global_shares(tables),
            "conversations": conversation_counts(out)}


def conversation_counts(out: str | Path) -> dict[str, dict[str, int]]:
    """Per split: conversations, their turns, and conversations by number of turns (``"2"``, ``"3"``, ``"4"``)."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    counts = {}
    for split, folder in split_folders(out, f"{IMAGES}/{CONVERSATIONS}").items():
        lengths = pc.list_value_length(pq.read_table(folder / IMAGES / CONVERSATIONS, columns=["turns"])
                                       .column("turns")).to_pylist()
        tally = Counter(lengths)
        counts[split] = {"conversations": len(lengths), "turns": sum(lengths),
                         **{str(size): tally[size] for size in sorted(tally)}}
    return counts


def global_shares(tables: dict[str, dict[str, dict[str, int]]]) -> dict[str, dict[str, float | None]]:
    """Per lesion (all splits): global negatives / the Table 2 negatives, ours and Table 9's (None: no negative)."""
    from mimic_ils.pairs import TABLE9_GLOBAL_NEGATIVE_SHARE

    shares = {}
    for lesion in TABLE9_GLOBAL_NEGATIVE_SHARE:
        negatives = sum(table[lesion][f"{q}/negative"] for table in tables.values() for q in TABLE2_TYPES)
        global_ = sum(table[lesion]["global/negative"] for table in tables.values())
        shares[lesion] = {"ours": global_ / negatives if negatives else None, "negatives": negatives,
                          "paper": TABLE9_GLOBAL_NEGATIVE_SHARE[lesion]}
    return shares


def tables_markdown(stats: dict[str, Any]) -> str:
    """Tables 9-11 and the counts as Markdown."""
    parts = []
    header = "| lesion | " + " | ".join(f"{_COLUMN_NAMES[q]} {p[:3]}." for q, p in COLUMNS) + " | total |"
    rule = "|---" * (len(COLUMNS) + 2) + "|"
    for split, table in stats["tables"].items():
        lines = [f"### Pairs per lesion, question type and polarity — {split}", "", header, rule]
        totals = Counter()
        for lesion, row in table.items():
            values = [row[f"{q}/{p}"] for q, p in COLUMNS]
            totals.update(row)
            lines.append(f"| {lesion} | " + " | ".join(f"{v:,}" for v in values) + f" | {sum(values):,} |")
        column_totals = [totals[f"{q}/{p}"] for q, p in COLUMNS]
        lines.append("| **total** | " + " | ".join(f"{v:,}" for v in column_totals) + f" | {sum(column_totals):,} |")
        parts.append("\n".join(lines))
    share_lines = ["### Global share of negatives (global negatives / Table 2 negatives), ours and Table 9's", "",
                   "| lesion | negatives | ours | Table 9 |", "|---|---|---|---|"]
    for lesion, row in stats.get("global_negative_share", {}).items():
        ours = "—" if row["ours"] is None else f"{row['ours']:.3f}"
        share_lines.append(f"| {lesion} | {row['negatives']:,} | {ours} | {row['paper']:.3f} |")
    parts.append("\n".join(share_lines))
    count_lines = ["### Counts", "", "| split | pairs | positive | negative | images | studies | unique masks |",
                   "|---|---|---|---|---|---|---|"]
    for split, row in stats["counts"].items():
        count_lines.append(f"| {split} | " + " | ".join(f"{row[key]:,}" for key in
                           ("pairs", "positive", "negative", "images", "studies", "unique_masks")) + " |")
    parts.append("\n".join(count_lines))
    if stats.get("conversations"):
        conversation_lines = ["### Conversations (the `conversations` config)", "",
                              "| split | conversations | turns | 2 turns | 3 turns | 4 turns |",
                              "|---|---|---|---|---|---|"]
        for split, row in stats["conversations"].items():
            conversation_lines.append(f"| {split} | " + " | ".join(f"{row.get(key, 0):,}" for key in
                                      ("conversations", "turns", "2", "3", "4")) + " |")
        parts.append("\n".join(conversation_lines))
    if stats["ledger"]:
        reason_lines = ["### Ledger: fates and exclusion reasons", "", "| what | count |", "|---|---|"]
        reason_lines += [f"| {key} | {value:,} |" for key, value in stats["ledger"]["fates"].items()]
        reason_lines += [f"| {key} | {value:,} |" for key, value in stats["ledger"]["reasons"].items()]
        parts.append("\n".join(reason_lines))
    return "\n\n".join(parts) + "\n"


def plot_pairs_per_lesion(stats: dict[str, Any], path: str | Path) -> Path:
    """Fig. 4-like chart: pairs per lesion type (all splits), stacked by question type and polarity."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    colors = {("basic", "positive"): "#1f77b4", ("basic", "negative"): "#aec7e8",
              ("global", "positive"): "#ff7f0e", ("global", "negative"): "#ffbb78",
              ("lesion_inference", "positive"): "#2ca02c", ("lesion_inference", "negative"): "#98df8a",
              ("reasoning", "positive"): "#9467bd", ("reasoning", "negative"): "#c5b0d5"}
    figure, axis = plt.subplots(figsize=(8, 4.2), dpi=110)
    bottom = np.zeros(len(LESION_TYPES))
    for question_type, polarity in COLUMNS:
        values = np.array([sum(table[lesion][f"{question_type}/{polarity}"] for table in stats["tables"].values())
                           for lesion in LESION_TYPES], dtype=float)
        axis.bar(LESION_TYPES, values, bottom=bottom, color=colors[(question_type, polarity)],
                 label=f"{_COLUMN_NAMES[question_type]} ({polarity})")
        bottom += values
    for x, total in enumerate(bottom):
        axis.text(x, total, f"{int(total):,}", ha="center", va="bottom", fontsize=8)
    axis.set_ylabel("instruction-answer pairs")
    axis.set_title("MIMIC-ILS pairs per lesion type (all splits)")
    axis.legend(fontsize=7, ncol=3, loc="upper right")
    axis.tick_params(axis="x", labelrotation=20)
    axis.set_ylim(0, max(bottom.max() * 1.25, 1))
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    plt.close(figure)
    atomic_write_bytes(path, buffer.getvalue())
    return Path(path)


def write_stats(out: str | Path, dest: str | Path | None = None) -> dict[str, Path]:
    """Write ``stats.json``, ``stats.md`` and ``pairs_per_lesion.png`` into ``dest`` (default ``OUT/stats``)."""
    stats = compute_stats(out)
    dest = Path(dest) if dest else Path(out) / "stats"
    atomic_write_bytes(dest / "stats.json", (json.dumps(stats, indent=2, sort_keys=True) + "\n").encode())
    atomic_write_bytes(dest / "stats.md", tables_markdown(stats).encode("utf-8"))
    return {"json": dest / "stats.json", "markdown": dest / "stats.md",
            "figure": plot_pairs_per_lesion(stats, dest / "pairs_per_lesion.png")}
