"""Projection speed and quality: 04's `project` on images the generator made itself (known w).

    python bench/bench_project.py                               # 64 and 256 px on CPU, 100 steps each
    python bench/bench_project.py --sizes 256 --channel-multiplier 2 --channel-max 512 --device cuda --steps 1000
    python bench/bench_project.py --sizes 16 --channel-max 16 --style-dim 32 --steps 20   # a quick check

Random weights (the ToRGB layers scaled by --rgb-gain so images stay near [-1, 1] as a trained
generator's do); the target is G(w) for the w of --seed, quantized to uint8. For each size and space
(W+, W) it prints the PSNR of the projection and of the mean-w image, the distance used, steps/s and
the time per image at --steps and at NVIDIA's 1000 steps. Writes bench/results/bench_project.json.
"""
import argparse
import importlib
import json
import os
import sys
import time

import numpy as np
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--sizes", default="64,256", help="comma list of generator sizes")
    p.add_argument("--channel-multiplier", type=int, default=1, help="StyleGAN2 channel multiplier")
    p.add_argument("--channel-max", type=int, default=64, help="cap on channels per layer")
    p.add_argument("--style-dim", type=int, default=512, help="w dimension")
    p.add_argument("--rgb-gain", type=float, default=0.15, help="scale of the random ToRGB weights")
    p.add_argument("--steps", type=int, default=100, help="projection steps timed (NVIDIA default 1000)")
    p.add_argument("--distance", default="d", choices=["d", "mse", "vgg"],
                   help="d: a random discriminator's features + pixel MSE; mse; vgg (needs --vgg)")
    p.add_argument("--vgg", default=None, help="torchvision VGG16 weights for --distance vgg")
    p.add_argument("--seed", type=int, default=7, help="seed of the target's w")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--out", default=os.path.join(ROOT, "bench", "results", "bench_project.json"),
                   help="JSON file for the results")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    sg2 = importlib.import_module("03_stylegan2_ada")
    lx = importlib.import_module("04_latent_explore")
    rows = []
    for size in [int(s) for s in args.sizes.split(",")]:
        torch.manual_seed(0)
        g = sg2.Generator(size, style_dim=args.style_dim, channel_multiplier=args.channel_multiplier,
                          channel_max=args.channel_max)
        with torch.no_grad():
            for name, param in g.named_parameters():
                if "to_rgb" in name and name.endswith("conv.weight"):
                    param.mul_(args.rgb_gain)
        e = lx.StyleGAN2Explorer(g.to(args.device))
        if args.distance == "d":
            d = sg2.Discriminator(size, channel_multiplier=args.channel_multiplier,
                                  channel_max=args.channel_max).to(args.device)
            dist = lx.FeatureDistance("discriminator features + pixel MSE",
                                      lx.DiscriminatorFeatures(d, list(d.convs)[1:], lambda net, x: net(x)), None, 1.0)
        elif args.distance == "vgg":
            dist = lx.FeatureDistance("LPIPS-style VGG16", lx.load_vgg16(args.vgg).to(args.device), None, 0.0)
        else:
            dist = lx.FeatureDistance("pixel MSE", None, None, 1.0)
        target = np.asarray(lx.to_pil(e.synthesize(lx.styles_for(e, lx.seed_w(e, args.seed)))[0]))
        stats = lx.w_stats(e)
        mean_img = np.asarray(lx.to_pil(e.synthesize(lx.styles_for(e, stats[0]))[0]))
        lx.project(e, lx.uint8_to_tensor(target).to(args.device), dist, steps=2, stats=stats, bar=False)  # warm-up
        for plus in (True, False):
            if args.device.startswith("cuda"):
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            result, record = lx.project_image(e, target, dist, args.steps, plus, stats=stats, bar=False)
            if args.device.startswith("cuda"):
                torch.cuda.synchronize()
            sec = time.perf_counter() - t0
            row = {"size": size, "space": "W+" if plus else "W", "distance": dist.name, "steps": args.steps,
                   "psnr_db": round(record["psnr_db"], 2), "mean_w_psnr_db": round(lx.psnr(mean_img, target), 2),
                   "steps_per_s": round(args.steps / sec, 2), "s_per_image": round(sec, 2),
                   "s_per_image_1000_steps": round(1000 * sec / args.steps, 1)}
            rows.append(row)
            print(json.dumps(row))
    result = {"device": args.device, "torch": torch.__version__, "threads": torch.get_num_threads(),
              "channel_multiplier": args.channel_multiplier, "channel_max": args.channel_max,
              "style_dim": args.style_dim, "rows": rows}
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(result, f, indent=1)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
