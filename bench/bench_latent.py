"""Latent-explorer response time: one slider change = styles + edit + synthesis + caption (04's UI path).

    python bench/bench_latent.py                      # demo size on CPU (64 px, small channels)
    python bench/bench_latent.py --size 256 --channel-multiplier 2 --channel-max 512 --device cuda

Random weights (timing does not depend on them). Writes bench/results/bench_latent.json.
"""
import argparse
import importlib
import json
import os
import sys
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--channel-multiplier", type=int, default=1)
    p.add_argument("--channel-max", type=int, default=64)
    p.add_argument("--style-dim", type=int, default=512)
    p.add_argument("--device", default="cpu")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--iters", type=int, default=20)
    p.add_argument("--out", default=os.path.join(ROOT, "bench", "results", "bench_latent.json"))
    args = p.parse_args(argv)

    sg2 = importlib.import_module("03_stylegan2_ada")
    lx = importlib.import_module("04_latent_explore")
    g = sg2.Generator(args.size, style_dim=args.style_dim, channel_multiplier=args.channel_multiplier,
                      channel_max=args.channel_max).to(args.device)
    explorer = lx.StyleGAN2Explorer(g)
    dirs = lx.sefa([w for _, w in explorer.style_weights(range(explorer.n_latent))])
    session = lx.Session(explorer, dirs, n_sliders=8)
    amounts = [1.0, -0.5, 0.0, 2.0, 0.0, 0.0, 0.3, 0.0]

    def once(seed):
        img = session.render(seed, 0.7, 0, explorer.n_latent - 1, "TOP TEXT", "BOTTOM", *amounts)
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        return img

    for i in range(args.warmup):
        once(i)
    t0 = time.perf_counter()
    for i in range(args.iters):
        once(100 + i)
    ms = (time.perf_counter() - t0) / args.iters * 1000
    result = {"device": args.device, "torch": torch.__version__, "threads": torch.get_num_threads(),
              "size": args.size, "channel_multiplier": args.channel_multiplier, "channel_max": args.channel_max,
              "ms_per_image": round(ms, 2), "images_per_s": round(1000 / ms, 2)}
    print(json.dumps(result, indent=1))
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
