"""The four agreement figures of ROSALIA against a LISA reference fixture (format: tests/fixtures/lisa_reference).

    .venv/bin/python benchmarks/lisa_reference_figures.py [--fixture tests/fixtures/lisa_reference]

Converts the fixture's checkpoint with ``python -m rosalia_hf.convert_lisa`` and prints: ids equal (x/N), logits and
mask logits max |d| (fixture pixels, fp32), greedy generation equal (x/N), and our CLIP/SAM pixels' max |d|.
``tests/test_lisa_reference.py`` asserts the same points; this prints the numbers.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from safetensors import safe_open

from rosalia_hf import RosaliaForSegmentation, RosaliaProcessor
from rosalia_hf.predictor import predict_batch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fixture", default=str(Path(__file__).parents[1] / "tests" / "fixtures" / "lisa_reference"))
    root = Path(parser.parse_args().fixture)
    meta = json.loads((root / "cases.json").read_text())
    with safe_open(root / "expected.safetensors", "pt") as f:
        ref = {k: f.get_tensor(k) for k in f.keys()}
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "rosalia"
        subprocess.run([sys.executable, "-m", "rosalia_hf.convert_lisa", "--checkpoint", str(root / "lisa"),
                        "--clip", str(root / "clip"), "--output", str(out)], check=True, capture_output=True)
        model = RosaliaForSegmentation.from_pretrained(out, dtype=torch.float32).eval()
        processor = RosaliaProcessor.from_pretrained(out)
    n, vocab = meta["checkpoint"]["image_seq_length"], meta["checkpoint"]["lm_head_rows"]

    def expand(ids: torch.Tensor) -> list[int]:
        return [t for i in ids.tolist() for t in ([processor.image_token_id] * n if i == -200 else [i])]

    ids_equal = gen_equal = 0
    logit_d = mask_d = clip_d = sam_d = 0.0
    for i, case in enumerate(meta["cases"]):
        get = lambda name, i=i: ref[f"case{i}.{name}"]  # noqa: E731
        image = np.asarray(Image.open(root / case["image"]).convert("RGB"))
        full = processor([image], [case["instruction"]], answers=[case["answer"]])
        prompt = processor([image], [case["instruction"]], padding_side="left")
        ids_equal += (full["input_ids"][0].tolist() == expand(get("input_ids"))
                      and prompt["input_ids"][0].tolist() == expand(get("prompt_ids")))
        clip_d = max(clip_d, float((full["pixel_values"][0] - get("clip_pixel_values")).abs().max()))
        sam_d = max(sam_d, float((full["sam_pixel_values"][0] - get("sam_pixel_values")).abs().max()))
        pixels = {"pixel_values": get("clip_pixel_values")[None], "sam_pixel_values": get("sam_pixel_values")[None],
                  "original_sizes": torch.tensor([case["image_size_hw"]])}
        with torch.no_grad():
            tf = model(input_ids=torch.tensor([expand(get("input_ids"))]), **pixels)
        logit_d = max(logit_d, float((tf.logits[0, get("logits_positions"), :vocab] - get("logits")).abs().max()))
        mask_d = max([mask_d] + [float((a - b).abs().max()) for a, b in zip(tf.pred_masks, get("mask_logits"),
                                                                             strict=True)])
        prompt.update(pixels)
        (result,) = predict_batch(model, processor, prompt, max_new_tokens=meta["generation"]["max_new_tokens"])
        gen_equal += result["answer_ids"] == get("generated_ids").tolist()
    total = len(meta["cases"])
    print(f"fixture: {root}")
    print(f"ids equal (prompt and teacher-forced): {ids_equal}/{total}")
    print(f"logits max |d|: {logit_d:.2e}    mask logits max |d|: {mask_d:.2e}")
    print(f"greedy generation ids equal: {gen_equal}/{total}")
    print(f"pixels max |d|: CLIP {clip_d:.2e}, SAM {sam_d:.2e}")


if __name__ == "__main__":
    main()
