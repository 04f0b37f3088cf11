"""Per-image wall time of the re-implemented vision networks at their real input sizes, with random weights.

HybridGNet runs at 1024x1024 (one image per forward, as the backend does) and CXAS ``UNet_ResNet50_default`` at
512x512, each through its backend (preprocessing, network, masks back in a 2500x2048 original frame) and the
network alone. Prints the median of ``--repeats`` runs after one warm-up. With ``--chexmask-rows N`` it also times
the CheXmask reader on a synthetic CSV of N rows of 1024x1024 masks (one index scan, then lookup + RLE decode).

    .venv/bin/python benchmarks/bench_vision_networks.py [--device cuda] [--repeats 5] [--threads 2]
        [--chexmask-rows 20000] [--skip-networks]
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

from mimic_ils.vision.chexmask import CheXmaskLungsHeart, rle_encode
from mimic_ils.vision.cxas import ANATOMY_LABELS, CxasAnatomy, CxasUNet, label_ids
from mimic_ils.vision.hybridgnet import HybridGNet, HybridGNetLungsHeart


def _median_seconds(run: Callable[[], object], repeats: int, device: torch.device) -> float:
    run()
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        run()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _checkpoints(folder: Path) -> tuple[Path, Path]:
    torch.manual_seed(0)
    hybrid = folder / "bestMSE.pt"
    torch.save(HybridGNet().state_dict(), hybrid)
    cxas = folder / "UNet_ResNet50_default.pth"
    torch.save({"model": {"module." + k: v for k, v in CxasUNet().state_dict().items()}}, cxas)
    return hybrid, cxas


def bench_chexmask(rows: int, folder: Path) -> None:
    """Index scan time and per-image lookup + decode time on a synthetic CheXmask CSV."""
    yy, xx = np.mgrid[:1024, :1024]
    codes = [rle_encode((yy - 500) ** 2 / 300**2 + (xx - c) ** 2 / 150**2 < 1) for c in (700, 300, 512)]
    landmarks = str(np.round(np.random.default_rng(0).random((120, 2)) * 1024, 1).tolist())
    path = folder / "MIMIC-CXR-JPG.csv"
    with path.open("w") as handle:
        handle.write("dicom_id,Dice RCA (Mean),Dice RCA (Max),Landmarks,Left Lung,Right Lung,Heart,Height,Width\n")
        for i in range(rows):
            handle.write(f'{i:08x},0.8,0.85,"{landmarks}",{codes[0]},{codes[1]},{codes[2]},1024,1024\n')
    start = time.perf_counter()
    backend = CheXmaskLungsHeart(csv=path)
    count = len(backend.index)
    scan = time.perf_counter() - start
    image, step = np.zeros((1024, 1024), np.uint8), max(1, rows // 50)
    start = time.perf_counter()
    looked_up = [backend.segment([image], [f"{i:08x}"]) for i in range(0, rows, step)]
    per_image = (time.perf_counter() - start) / len(looked_up)
    megabytes = path.stat().st_size / 1e6
    print(f"chexmask index scan: {count} rows, {megabytes:.0f} MB in {scan:.2f} s ({count / scan:.0f} rows/s)")
    print(f"chexmask lookup + decode per image (1024^2): {per_image * 1000:.1f} ms")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch default)")
    parser.add_argument("--chexmask-rows", type=int, default=0, help="also time the CheXmask reader on N rows")
    parser.add_argument("--skip-networks", action="store_true")
    args = parser.parse_args()
    if args.chexmask_rows:
        with tempfile.TemporaryDirectory() as folder:
            bench_chexmask(args.chexmask_rows, Path(folder))
    if args.skip_networks:
        return
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    image = np.random.default_rng(0).integers(0, 256, (2500, 2048), dtype=np.uint8)
    with tempfile.TemporaryDirectory() as folder:
        hybrid_path, cxas_path = _checkpoints(Path(folder))
        hybrid = HybridGNetLungsHeart(hybrid_path, device=device)
        cxas = CxasAnatomy(cxas_path, device=device, batch_size=1)
    hybrid_input = torch.rand(1, 1, 1024, 1024, device=device)
    cxas_input = torch.randn(1, 3, 512, 512, device=device)
    channels = label_ids(ANATOMY_LABELS)
    rows = []
    with torch.inference_mode():
        rows.append(
            ("hybridgnet network 1024^2", _median_seconds(lambda: hybrid.model(hybrid_input), args.repeats, device))
        )
        rows.append(
            (
                "hybridgnet backend 2500x2048",
                _median_seconds(lambda: hybrid.segment([image], ["b"]), args.repeats, device),
            )
        )
        rows.append(
            (
                "cxas network 512^2 (16 labels)",
                _median_seconds(lambda: cxas.model(cxas_input, channels), args.repeats, device),
            )
        )
        rows.append(
            ("cxas network 512^2 (159 labels)", _median_seconds(lambda: cxas.model(cxas_input), args.repeats, device))
        )
        rows.append(
            ("cxas backend 2500x2048", _median_seconds(lambda: cxas.segment([image], ["b"]), args.repeats, device))
        )
    print(f"device={device} threads={torch.get_num_threads()} repeats={args.repeats} (median seconds per image)")
    for name, seconds in rows:
        print(f"{name:34s} {seconds:8.3f} s")
    print(f"ratio cxas/hybridgnet (backends)    {rows[4][1] / rows[1][1]:8.2f}")


if __name__ == "__main__":
    main()
