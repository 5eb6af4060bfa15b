"""Benchmark ops.fid against pytorch-fid: feature throughput, Frechet distance, KID.

    python bench/bench_fid.py                       # all four, defaults below
    python bench/bench_fid.py --skip-cli --n-images 40
    python bench/bench_fid.py --only network cli

1. Features at 299 (img/s). (a) The network alone, same random weights, same batch: pytorch-fid's
   InceptionV3 under no_grad vs ours (inference mode, channels-last). (b) End to end, same PNG
   folder: `python -m pytorch_fid --save-stats` vs `python -m ops.fid --save-stats`, both reading
   the same weights file from a temporary torch hub cache, and the two .npz compared.
2. Frechet distance at 2048-d: pytorch-fid's scipy sqrtm path vs the fast path (pivoted Cholesky
   and symmetric eigenvalues), on covariances of synthetic non-negative features (N < 2048:
   singular; N > 2048: full rank).
3. KID: 50,000 x 2048 vs 500 x 2048 features, default 100 subsets of 1000 (capped at 500).

Synthetic inputs only; writes bench/results/bench_fid.json. The released weights are not needed:
throughput and agreement do not depend on the weight values.
"""
import argparse
import importlib.util
import json
import os
import platform
import subprocess
import sys
import tempfile
import time

import numpy as np
import torch
from PIL import Image

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from ops import fid  # noqa: E402

HAS_PYTORCH_FID = importlib.util.find_spec("pytorch_fid") is not None


def _timed(fn, iters):
    fn()  # warm-up
    t = time.perf_counter()
    for _ in range(iters):
        out = fn()
    return (time.perf_counter() - t) / iters, out


def bench_network(args, sd):
    x = torch.rand(args.batch_size, 3, args.size, args.size)
    ours = fid.load_inception("random", dims=2048)
    res = {"batch": args.batch_size, "input_size": args.size}
    t, f_ours = _timed(lambda: fid._features_of_batch(ours, x, "cpu"), args.iters)
    res["ours_img_s"] = args.batch_size / t
    if HAS_PYTORCH_FID:
        import pytorch_fid.inception as pfi
        pfi.load_state_dict_from_url = lambda *a, **k: sd
        ref = pfi.InceptionV3([3]).eval()

        def run_ref():
            with torch.no_grad():
                return ref(x)[0].flatten(1).numpy()
        t, f_ref = _timed(run_ref, args.iters)
        res["pytorch_fid_img_s"] = args.batch_size / t
        res["speedup"] = res["ours_img_s"] / res["pytorch_fid_img_s"]
        res["max_abs_feature_diff"] = float(np.abs(f_ours - f_ref).max())
    print(f"network, batch {args.batch_size} at {args.size}->299: " + ", ".join(
        f"{k} {v:.4g}" for k, v in res.items() if isinstance(v, float)))
    return res


def bench_cli(args, sd):
    res = {"n_images": args.n_images, "image_size": args.size, "batch": args.batch_size}
    with tempfile.TemporaryDirectory() as tmp:
        folder = os.path.join(tmp, "imgs")
        os.makedirs(folder)
        rng = np.random.default_rng(0)
        small = rng.integers(0, 256, (args.n_images, 8, 8, 3), dtype=np.uint8)
        for i, a in enumerate(small):  # smooth images: realistic PNG decode cost
            Image.fromarray(a).resize((args.size, args.size), Image.BILINEAR).save(
                os.path.join(folder, f"{i:05d}.png"))
        hub = os.path.join(tmp, "torch_home", "hub", "checkpoints")
        os.makedirs(hub)
        torch.save(sd, os.path.join(hub, fid.FID_WEIGHTS_NAME))
        env = dict(os.environ, TORCH_HOME=os.path.join(tmp, "torch_home"),
                   PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
        cmds = {"ours": [sys.executable, "-m", "ops.fid", "--save-stats", folder,
                         os.path.join(tmp, "ours.npz"), "--device", "cpu",
                         "--batch-size", str(args.batch_size)]}
        if HAS_PYTORCH_FID:
            cmds["pytorch_fid"] = [sys.executable, "-m", "pytorch_fid", "--save-stats", folder,
                                   os.path.join(tmp, "pytorch_fid.npz"), "--device", "cpu",
                                   "--batch-size", str(args.batch_size)]
        for name in ["pytorch_fid", "ours"] if HAS_PYTORCH_FID else ["ours"]:
            t = time.perf_counter()
            subprocess.run(cmds[name], check=True, env=env, cwd=ROOT, capture_output=True)
            res[f"{name}_s"] = time.perf_counter() - t
            res[f"{name}_img_s"] = args.n_images / res[f"{name}_s"]
        if HAS_PYTORCH_FID:
            a = np.load(os.path.join(tmp, "ours.npz"))
            b = np.load(os.path.join(tmp, "pytorch_fid.npz"))
            res["speedup"] = res["pytorch_fid_s"] / res["ours_s"]
            res["mu_max_rel_diff"] = float(np.abs(a["mu"] - b["mu"]).max() / np.abs(b["mu"]).max())
            res["sigma_max_rel_diff"] = float(np.abs(a["sigma"] - b["sigma"]).max()
                                              / np.abs(b["sigma"]).max())
    print(f"--save-stats end to end, {args.n_images} PNGs of {args.size}px: " + ", ".join(
        f"{k} {v:.4g}" for k, v in res.items() if isinstance(v, float)))
    return res


def bench_frechet(args):
    out = []
    rng = np.random.default_rng(0)
    d = 2048
    mix = rng.normal(size=(d, d)) / np.sqrt(d)
    for n1, n2 in args.fd_sizes:
        f1 = np.abs(rng.normal(size=(n1, d)) @ mix)
        f2 = np.abs(rng.normal(size=(n2, d)) @ mix + 0.05)
        m1, s1 = fid.statistics(f1)
        m2, s2 = fid.statistics(f2)
        t = time.perf_counter()
        v_sqrtm = fid.frechet_distance(m1, s1, m2, s2, method="sqrtm")
        t_sqrtm = time.perf_counter() - t
        t_fast, v_fast = _timed(lambda: fid.frechet_distance(m1, s1, m2, s2, method="fast"),
                                args.iters)
        r = {"n1": n1, "n2": n2, "dims": d, "sqrtm_s": t_sqrtm, "fast_s": t_fast,
             "speedup": t_sqrtm / t_fast, "fid_sqrtm": v_sqrtm, "fid_fast": v_fast,
             "rel_diff": abs(v_fast - v_sqrtm) / abs(v_sqrtm)}
        print(f"frechet 2048-d, N {n1} vs {n2}: sqrtm {t_sqrtm:.2f} s, fast {t_fast:.2f} s "
              f"({r['speedup']:.1f}x), FID {v_sqrtm:.6f} vs {v_fast:.6f} (rel {r['rel_diff']:.1e})")
        out.append(r)
    return out


def bench_kid(args):
    rng = np.random.default_rng(0)
    a = np.abs(rng.normal(size=(args.kid_n, 2048))).astype(np.float32)
    b = np.abs(rng.normal(size=(500, 2048)) + 0.01).astype(np.float32)
    x = torch.randn(500, 2048, dtype=torch.float64)  # how fast float64 matmuls run right now
    gemm_s, _ = _timed(lambda: x @ x.T, 5)
    t = time.perf_counter()
    mean, std = fid.kid(a, b)
    dt = time.perf_counter() - t
    gflops = 2 * 500 * 500 * 2048 / gemm_s / 1e9
    print(f"KID {args.kid_n}x2048 vs 500x2048, 100 subsets of 500: {dt:.2f} s "
          f"({mean:.3g} +- {std:.2g}); float64 matmul at {gflops:.1f} GFLOP/s meanwhile")
    return {"n_a": args.kid_n, "n_b": 500, "subsets": 100, "subset_size": 500, "seconds": dt,
            "float64_matmul_gflops": gflops}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--only", nargs="+", choices=["network", "cli", "frechet", "kid"], default=None)
    p.add_argument("--skip-cli", action="store_true", help="skip the end-to-end CLI comparison")
    p.add_argument("--batch-size", type=int, default=50)
    p.add_argument("--size", type=int, default=256, help="synthetic image size (px)")
    p.add_argument("--iters", type=int, default=2, help="timed iterations after one warm-up")
    p.add_argument("--n-images", type=int, default=100, help="images for the CLI comparison")
    p.add_argument("--fd-sizes", default=[(500, 5000)], help="N1xN2 pairs, e.g. 500x5000,5000x5000",
                   type=lambda s: [tuple(map(int, x.split("x"))) for x in s.split(",")])
    p.add_argument("--kid-n", type=int, default=50_000)
    p.add_argument("--out", default=os.path.join(ROOT, "bench", "results", "bench_fid.json"))
    args = p.parse_args(argv)
    info = {"device": "cpu", "cpu": platform.processor() or platform.machine(),
            "threads": torch.get_num_threads(), "torch": torch.__version__,
            "numpy": np.__version__, "pytorch_fid_installed": HAS_PYTORCH_FID}
    print(", ".join(f"{k} {v}" for k, v in info.items()))
    sd = fid.random_inception_state_dict()
    results = {"info": info}
    sections = args.only or ["network", "cli", "frechet", "kid"]
    if args.skip_cli and "cli" in sections:
        sections.remove("cli")
    for name in sections:
        if name == "network":
            results["network"] = bench_network(args, sd)
        elif name == "cli":
            results["cli"] = bench_cli(args, sd)
        elif name == "frechet":
            results["frechet"] = bench_frechet(args)
        else:
            results["kid"] = bench_kid(args)
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    if os.path.isfile(args.out):  # keep the sections not rerun this time
        with open(args.out) as f:
            results = {**json.load(f), **results}
    with open(args.out, "w") as f:
        json.dump(results, f, indent=2)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
