"""Per-image wall time of the RadEdit and YOLO backends at their real input sizes, with random weights.

RadEdit: a UNet of Stable-Diffusion-2 shape (320/640/1280/1280 channels, two layers per block, cross-attention
width 768 = BioViL-T's hidden size; the ``microsoft/radedit`` UNet config could not be checked offline, this is the
standard latent-diffusion shape it is built on), the SDXL VAE shape (128/256/512/512, scale factor 8) and a
BERT-base text encoder (12 layers, width 768, as BioViL-T). Images are 512x512 in the model, 2500x2048 outside.
It prints the median time of one UNet call (batch 1 for inversion, batch 2 for classifier-free guidance), of the VAE
round trip, and of a whole ``edit`` with ``--steps`` steps; and the per-image time extrapolated to the defaults
(100 steps, skip ratio 0.3: 70 inversion calls + 70 guided calls + VAE).

YOLO: ``yolov8n`` and ``yolov8x`` shapes (14 classes) through the backend at ``imgsz`` 1024 on a 2500x2048 grey
image.

HybridGNet and CXAS have their own script, ``benchmarks/bench_vision_networks.py``.

    .venv/bin/python benchmarks/bench_vision.py [--device cpu] [--steps 4] [--repeats 3] [--threads 2]
        [--skip-radedit] [--skip-yolo] [--runner-studies N]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

FRAME = (2500, 2048)


def report(name: str, seconds: float) -> tuple[str, float]:
    """Print one figure as soon as it is measured (the RadEdit figures take minutes on a CPU)."""
    print(f"{name:<52}  {seconds:9.3f} s", flush=True)
    return name, seconds


def median_seconds(run: Callable[[], object], repeats: int, device: str) -> float:
    """Median wall time of ``run`` over ``repeats`` calls after one warm-up."""
    run()
    times = []
    for _ in range(repeats):
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        start = time.perf_counter()
        run()
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def radedit_components(folder: Path):
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import BertConfig, BertModel, BertTokenizer

    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        sample_size=64,
        cross_attention_dim=768,
        attention_head_dim=(5, 10, 20, 20),
        use_linear_projection=True,
        block_out_channels=(320, 640, 1280, 1280),
        layers_per_block=2,
    )
    vae = AutoencoderKL(
        block_out_channels=(128, 256, 512, 512),
        layers_per_block=2,
        latent_channels=4,
        sample_size=1024,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        scaling_factor=0.13025,
    )
    text = BertModel(BertConfig(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, vocab_size=30522))
    vocab = folder / "vocab.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "no", "acute", "process"]) + "\n")
    return unet, vae, text, BertTokenizer(str(vocab), model_max_length=128)


def bench_radedit(args: argparse.Namespace) -> list[tuple[str, float]]:
    from mimic_ils.vision.radedit import RadEditPseudoNormal

    with tempfile.TemporaryDirectory() as folder:
        components = radedit_components(Path(folder))
    backend = RadEditPseudoNormal.from_components(
        *components,
        device=args.device,
        dtype=args.dtype,
        num_inference_steps=args.steps,
        skip_ratio=0.25,
        batch_size=1,
    )
    dtype = backend.dtype
    latent1 = torch.randn(1, 4, 64, 64, device=args.device, dtype=dtype)
    latent2 = torch.randn(2, 4, 64, 64, device=args.device, dtype=dtype)
    text1 = backend.unconditional
    text2 = torch.cat([backend.unconditional, backend.conditional])
    pixels = torch.randn(1, 3, 512, 512, device=args.device, dtype=dtype)
    image = np.random.default_rng(0).integers(0, 256, FRAME, dtype=np.uint8)
    mask = np.zeros(FRAME, bool)
    mask[400:2100, 200:1850] = True
    with torch.inference_mode():
        unet1 = median_seconds(
            lambda: backend.unet(latent1, 500, encoder_hidden_states=text1), args.repeats, args.device
        )
        rows = [report("radedit UNet call, batch 1 (64x64 latent)", unet1)]
        unet2 = median_seconds(
            lambda: backend.unet(latent2, 500, encoder_hidden_states=text2), args.repeats, args.device
        )
        rows.append(report("radedit UNet call, batch 2 (guidance)", unet2))
        vae = median_seconds(
            lambda: backend.vae.decode(backend.vae.encode(pixels).latent_dist.mode()).sample, args.repeats, args.device
        )
        rows.append(report("radedit VAE encode + decode 512^2", vae))
    rows.append(report("radedit edit extrapolated to 100 steps, skip 0.3", 70 * unet1 + 70 * unet2 + vae))
    if args.steps:
        active = len(backend._timesteps())
        edit = median_seconds(lambda: backend.edit([image], [mask], ["bench"]), 1, args.device)
        rows.append(report(f"radedit edit 2500x2048, {args.steps} steps ({active} active)", edit))
    return rows


def yolo_checkpoint(folder: Path, scale: str) -> Path:
    from ultralytics.nn.tasks import DetectionModel

    from mimic_ils.vision.yolo import VINBIG_CLASSES

    torch.manual_seed(0)
    model = DetectionModel(f"yolov8{scale}.yaml", nc=len(VINBIG_CLASSES), verbose=False)
    model.names = dict(enumerate(VINBIG_CLASSES))
    path = folder / f"yolov8{scale}_vinbig.pt"
    torch.save({"model": model, "train_args": {}}, path)
    return path


def bench_yolo(args: argparse.Namespace) -> list[tuple[str, float]]:
    from mimic_ils.vision.yolo import YoloLesionBoxes

    image = np.random.default_rng(0).integers(0, 256, FRAME, dtype=np.uint8)
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        for scale in ("n", "x"):
            detector = YoloLesionBoxes(yolo_checkpoint(Path(folder), scale), device=args.device, imgsz=1024)
            seconds = median_seconds(lambda d=detector: d.detect([image], ["bench"]), args.repeats, args.device)
            rows.append(report(f"yolo v8{scale} detect 2500x2048 at imgsz 1024", seconds))
    return rows


def bench_runner(args: argparse.Namespace) -> list[tuple[str, float]]:
    """The phantom pipeline through ``run_cues`` (cues + PNG/JSON artifacts) on a fresh synthetic cohort."""
    from mimic_ils.ingest import iter_studies
    from mimic_ils.synth import generate_cohort
    from mimic_ils.vision.runner import VisionConfig, run_cues

    with tempfile.TemporaryDirectory() as folder:
        root = generate_cohort(Path(folder) / "cohort", args.runner_studies, 0)
        images = [image for study in iter_studies(root) for image in study.frontal_images]
        start = time.perf_counter()
        statuses = run_cues(root, images, Path(folder) / "cues", VisionConfig.preset("phantom"))
        seconds = (time.perf_counter() - start) / max(1, len(images))
        written = sum(status == "written" for _, status in statuses)
        return [report(f"runner, phantom backends, per image ({written} written)", seconds)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float16", help="RadEdit dtype on accelerators (CPU runs float32)")
    parser.add_argument("--steps", type=int, default=4, help="RadEdit steps of the whole-edit timing (0: skip it)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch default)")
    parser.add_argument("--skip-radedit", action="store_true")
    parser.add_argument("--skip-yolo", action="store_true")
    parser.add_argument("--runner-studies", type=int, default=0, help="also time run_cues (phantom) on N studies")
    args = parser.parse_args()
    import ultralytics  # noqa: F401  (it sets torch's thread count on import; ours must come after)

    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"device {args.device}, torch threads {torch.get_num_threads()}, median of {args.repeats} after a warm-up")
    if not args.skip_yolo:
        bench_yolo(args)
    if args.runner_studies:
        bench_runner(args)
    if not args.skip_radedit:
        bench_radedit(args)


if __name__ == "__main__":
    main()
