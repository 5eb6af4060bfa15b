"""Latent-explorer response time: one slider change = styles + 8 named knobs + synthesis + enlarging
to 256 px + caption (04's UI path, ExplorerApp.view).

    python bench/bench_latent.py                      # demo size on CPU (64 px, small channels)
    python bench/bench_latent.py --size 256 --channel-multiplier 2 --channel-max 512 --device cuda

Random weights (timing does not depend on them). Writes bench/results/bench_latent.json.
"""
import argparse
import importlib
import json
import os
import sys
import tempfile
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
    dirs["stdev"] = lx.w_stdev(explorer.mapping, dirs["directions"], explorer.style_dim, device=args.device)
    n = explorer.n_latent
    with tempfile.TemporaryDirectory() as tmp:  # a library of 8 knobs, each on its own layers
        path = os.path.join(tmp, "knobs.json")
        for i in range(8):
            knob = lx.direction_knob(dirs, "sefa.pt", i, f"knob {i}", (i % n, min(n - 1, i % n + 3)),
                                     lx.KNOB_RANGE, float(dirs["stdev"][i]))
            lx.add_knob(path, knob, lx.generator_info(explorer))
        app = lx.ExplorerApp(explorer, dirs, path, "sefa.pt", n_sliders=8)
        library, _ = app.open_library("knobs.json")
    amounts = [1.0, -0.5, 0.0, 2.0, 0.0, 0.0, 0.3, 0.0]

    def once(seed):
        img = app.view(None, library, seed, 0.7, "TOP TEXT", "BOTTOM", 0, 0.0, f"0-{n - 1}", *amounts)
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
