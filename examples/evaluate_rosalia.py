"""Evaluate a ROSALIA checkpoint on a built MIMIC-ILS folder and write a Markdown report (paper Tables 4/5/6/13).

    python examples/evaluate_rosalia.py --model CKPT --dataset OUT --split test --out eval_out [--segment-only]

Writes ``eval_out/report.md`` (tables), ``eval_out/cases.png`` (best/worst pair per lesion: image, reference,
prediction, instruction) and ``eval_out/metrics.json``. The same command is ``mimic-ils evaluate``; the reusable
core is ``rosalia_hf.evaluation.evaluate_model(RosaliaPredictor(model, processor), dataset)``.
"""

from __future__ import annotations

import sys

from rosalia_hf.evaluation_cli import main

if __name__ == "__main__":
    sys.exit(main())
