"""What the reasoning pairs and the conversations cost per image, and how many of each a build gets (issue 19).

    python benchmarks/bench_reasoning.py OUT [--repeat 200]

``OUT`` is a built folder (e.g. ``mimic-ils build`` of the synthetic cohort). Its Table 2 pairs are read back per
image and given to :func:`mimic_ils.reasoning.reasoning_pairs` (templates backend, a fixed clinical context with
cues for every lesion type) and its pairs to :func:`mimic_ils.conversations.image_conversations`, ``--repeat``
times; the script prints the median time per image of each, and the folder's counts: reasoning pairs per Table 2
pair, conversations per image, turns per conversation.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections import defaultdict
from pathlib import Path

import pyarrow.parquet as pq

from mimic_ils.conversations import image_conversations
from mimic_ils.reasoning import reasoning_pairs
from mimic_ils.rows import PairRow
from mimic_ils.schema import ClinicalContext, Pair

CONTEXT = ClinicalContext(("fever", "dyspnea", "heart failure", "recent surgery"), True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--repeat", type=int, default=200)
    args = parser.parse_args(argv)
    rows = [row for path in sorted(args.out.glob("*/metadata.parquet")) for row in pq.read_table(path).to_pylist()]
    images: dict[str, list[dict]] = defaultdict(list)
    for row in rows:
        images[row["dicom_id"]].append(row)
    table2 = {key: [_pair(row) for row in value if row["question_type"] != "reasoning"]
              for key, value in images.items()}
    made_times, dealt_times = [], []
    for _ in range(args.repeat):
        started = time.perf_counter()
        for pairs in table2.values():
            reasoning_pairs(pairs, CONTEXT, study_id=pairs[0].study_id)
        made_times.append((time.perf_counter() - started) / len(table2))
        started = time.perf_counter()
        for value in images.values():
            image_conversations([PairRow.from_json(row) for row in value])
        dealt_times.append((time.perf_counter() - started) / len(images))
    reasoning = sum(row["question_type"] == "reasoning" for row in rows)
    conversations = [pq.read_table(path).column("turns").to_pylist()
                     for path in sorted(args.out.glob("*/images/conversations.parquet"))]
    turns = [len(turn) for split in conversations for turn in split]
    print(f"{len(images)} images, {len(rows)} pairs ({reasoning} reasoning: {reasoning / (len(rows) - reasoning):.2f} "
          f"per Table 2 pair), {len(turns)} conversations ({len(turns) / len(images):.2f} per image, "
          f"{statistics.mean(turns):.2f} turns each)")
    print(f"reasoning_pairs: median {statistics.median(made_times) * 1e6:.0f} us per image; "
          f"image_conversations: median {statistics.median(dealt_times) * 1e6:.0f} us per image "
          f"({args.repeat} repeats)")


def _pair(row: dict) -> Pair:
    return Pair(row["instruction"], row["answer"], row["target"], row["lesion"], row["question_type"],
                row["polarity"], tuple(row["locations"]), row["certainty"], row["mask_file_name"], row["study_id"],
                row["dicom_id"])


if __name__ == "__main__":
    main()
