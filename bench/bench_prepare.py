"""Benchmark 01_prepare_data.py: square crops/s with Lanczos, and CARN_V2 x2 throughput.

    python bench/bench_prepare.py                         # 500 boxes, CARN on a 64 px tile
    python bench/bench_prepare.py --boxes 200 --carn-iters 3 --device cpu

Synthetic inputs: a 2400x3400 noisy page with random box sizes 32-200 px (margin 0.2, resized
to --size), and a random-weight CARN_V2 (same cost as the released weights). Writes
bench/results/bench_prepare.json.
"""
import argparse
import importlib.util
import io
import json
import os
import platform
import random
import time

import numpy as np
import torch
from PIL import Image

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load_prepare():
    spec = importlib.util.spec_from_file_location("prepare_data", os.path.join(ROOT, "01_prepare_data.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def sync(device):
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--boxes", type=int, default=500)
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--carn-tile", type=int, default=64, help="CARN input tile side")
    p.add_argument("--carn-iters", type=int, default=5)
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch default)")
    args = p.parse_args(argv)
    prep = load_prepare()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device

    rng = random.Random(0)
    page = Image.fromarray(np.random.default_rng(0).integers(0, 256, (3400, 2400, 3), dtype=np.uint8))
    boxes = []
    for _ in range(args.boxes):
        s = rng.randint(32, 200)
        x, y = rng.randint(0, 2400 - s), rng.randint(0, 3400 - s)
        boxes.append(prep.Box("page", x, y, x + s, y + s + rng.randint(-8, 8)))
    for b in boxes[:10]:                                            # warm-up
        prep.resize_square(prep.crop_square(page, *prep.square_around(b, 0.2)), args.size)
    t0 = time.perf_counter()
    for b in boxes:
        prep.resize_square(prep.crop_square(page, *prep.square_around(b, 0.2)), args.size, "lanczos")
    crop_s = time.perf_counter() - t0
    crops_per_s = len(boxes) / crop_s
    t0 = time.perf_counter()
    for b in boxes:                                                 # the same plus PNG encoding
        img = prep.resize_square(prep.crop_square(page, *prep.square_around(b, 0.2)), args.size, "lanczos")
        img.save(io.BytesIO(), format="PNG")
    png_per_s = len(boxes) / (time.perf_counter() - t0)

    model = prep.CARNV2().eval().to(device)
    x = torch.rand(1, 3, args.carn_tile, args.carn_tile, device=device)
    with torch.no_grad():
        model(x)                                                    # warm-up
        sync(device)
        t0 = time.perf_counter()
        for _ in range(args.carn_iters):
            model(x)
        sync(device)
    carn_s = (time.perf_counter() - t0) / args.carn_iters
    out_mpix_s = (2 * args.carn_tile) ** 2 / carn_s / 1e6

    result = {"device": device, "torch": torch.__version__, "cpu": platform.processor() or platform.machine(),
              "threads": torch.get_num_threads(), "boxes": len(boxes), "size": args.size,
              "lanczos_crops_per_s": round(crops_per_s, 1), "lanczos_crops_with_png_per_s": round(png_per_s, 1),
              "carn_input": [1, 3, args.carn_tile, args.carn_tile], "carn_iters": args.carn_iters,
              "carn_ms_per_tile": round(carn_s * 1000, 1), "carn_output_mpix_per_s": round(out_mpix_s, 3)}
    for k, v in result.items():
        print(f"{k:>24}: {v}")
    os.makedirs(os.path.join(ROOT, "bench", "results"), exist_ok=True)
    with open(os.path.join(ROOT, "bench", "results", "bench_prepare.json"), "w") as f:
        json.dump(result, f, indent=2)
    return result


if __name__ == "__main__":
    main()
