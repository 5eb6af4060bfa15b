"""Benchmark 03_stylegan2_ada.py: generator images/s and one training iteration.

A training iteration here is what the issue's table measures: D step (non-saturating logistic
loss on real and G(z)) + G step (non-saturating loss, style mixing 0.9) + G EMA update, without
the lazy R1 and path-length steps; fp32, random data, Adam (lr 0.002, betas (0, 0.99)).

    python bench/bench_stylegan2.py                       # CPU, both configurations
    python bench/bench_stylegan2.py --device cuda --iters 10
    python bench/bench_stylegan2.py --configs 64-cm1 --what train --modconv fused

Wall-clock figures need a quiet machine (the load average is recorded); the process CPU time is
printed too (with T threads busy, quiet wall time is about CPU time / T).

Configurations: "256-f" = 256 px config-f (channel multiplier 2), "64-cm1" = 64 px, channel
multiplier 1. Writes bench/results/stylegan2_<device>.json.
"""
import argparse
import importlib.util
import json
import os
import platform
import resource
import sys
import time

import torch
import torch.nn.functional as F

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

CONFIGS = {"256-f": dict(size=256, channel_multiplier=2), "64-cm1": dict(size=64, channel_multiplier=1)}


def load_03():
    spec = importlib.util.spec_from_file_location("stylegan2_ada", os.path.join(ROOT, "03_stylegan2_ada.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(fn, device, warmup, iters):
    for _ in range(warmup):
        fn()
    sync(device)
    times, cpu = [], []
    for _ in range(iters):
        t0, c0 = time.perf_counter(), time.process_time()
        fn()
        sync(device)
        times.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    return times, cpu


def peak_memory_mb(device):
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2 ** 20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB -> MiB (process peak)


def bench_generator(m, cfg, args, device):
    g = m.Generator(**cfg).to(device).eval()
    m.set_modconv_path(g, {"auto": None, "fused": True, "nonfused": False}[args.modconv])
    if args.channels_last:
        g = g.to(memory_format=torch.channels_last)
    z = torch.randn(args.batch, g.style_dim, device=device)

    @torch.no_grad()
    def step():
        g([z])

    times, cpu = timed(step, device, args.warmup, args.iters)
    best = min(times)
    return {"batch": args.batch, "s_per_batch": times, "cpu_s_per_batch": cpu, "img_per_s": args.batch / best,
            "img_per_s_median": args.batch / sorted(times)[len(times) // 2]}


def bench_train(m, cfg, args, device):
    torch.manual_seed(0)
    g = m.Generator(**cfg).to(device)
    d = m.Discriminator(cfg["size"], channel_multiplier=cfg["channel_multiplier"]).to(device)
    g_ema = m.Generator(**cfg).to(device).eval()
    g_ema.load_state_dict(g.state_dict())
    for net in (g, g_ema):
        m.set_modconv_path(net, {"auto": None, "fused": True, "nonfused": False}[args.modconv])
    if args.channels_last:
        g, d = g.to(memory_format=torch.channels_last), d.to(memory_format=torch.channels_last)
    g_optim = torch.optim.Adam(g.parameters(), lr=0.002, betas=(0.0, 0.99))
    d_optim = torch.optim.Adam(d.parameters(), lr=0.002, betas=(0.0, 0.99))
    real = torch.randn(args.batch, 3, cfg["size"], cfg["size"], device=device).clamp(-1, 1)
    ema_beta = 0.5 ** (args.batch / (10 * 1000))
    g_params, ema_params = list(g.parameters()), list(g_ema.parameters())

    def mixing_z():
        if torch.rand(()) < 0.9:
            return list(torch.randn(2, args.batch, g.style_dim, device=device).unbind(0))
        return [torch.randn(args.batch, g.style_dim, device=device)]

    def step():
        # D step: G fixed (no graph through G), D trained on real vs fake
        d.requires_grad_(True)
        with torch.no_grad():
            fake, _ = g(mixing_z())
        d_loss = F.softplus(-d(real)).mean() + F.softplus(d(fake)).mean()
        d_optim.zero_grad(set_to_none=True)
        d_loss.backward()
        d_optim.step()
        # G step: D fixed (gradients flow through D to the image only)
        d.requires_grad_(False)
        fake, _ = g(mixing_z())
        g_loss = F.softplus(-d(fake)).mean()
        g_optim.zero_grad(set_to_none=True)
        g_loss.backward()
        g_optim.step()
        # EMA of the generator parameters
        with torch.no_grad():
            torch._foreach_lerp_(ema_params, g_params, 1 - ema_beta)

    times, cpu = timed(step, device, args.warmup, args.iters)
    return {"batch": args.batch, "s_per_iter": times, "cpu_s_per_iter": cpu, "best_s_per_iter": min(times),
            "median_s_per_iter": sorted(times)[len(times) // 2], "train_img_per_s": args.batch / min(times)}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--configs", default="256-f,64-cm1", help="comma list of " + ", ".join(CONFIGS))
    p.add_argument("--what", default="gen,train", help="gen, train or both")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--iters", type=int, default=2)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch default)")
    p.add_argument("--modconv", choices=["auto", "fused", "nonfused"], default="auto")
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--out", default=None, help="JSON path (default bench/results/stylegan2_<device>.json)")
    args = p.parse_args(argv)

    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    m = load_03()
    info = {"device": str(device), "device_name": torch.cuda.get_device_name(device) if device.type == "cuda"
            else platform.processor() or platform.machine(), "torch": torch.__version__,
            "threads": torch.get_num_threads(), "modconv": args.modconv, "channels_last": args.channels_last,
            "load_avg_start": os.getloadavg(), "dtype": "float32", "results": {}}
    print(f"device {info['device']} ({info['device_name']}), torch {torch.__version__}, "
          f"threads {info['threads']}, modconv {args.modconv}, load avg {info['load_avg_start']}")
    for name in args.configs.split(","):
        cfg = CONFIGS[name]
        res = {"config": cfg}
        if "gen" in args.what:
            res["generator_forward"] = r = bench_generator(m, cfg, args, device)
            print(f"{name}: G forward batch {args.batch} [{args.batch},3,{cfg['size']},{cfg['size']}]: "
                  f"{r['img_per_s']:.2f} img/s (best of {args.iters}; wall {[round(t, 3) for t in r['s_per_batch']]} s, "
                  f"process CPU {[round(t, 3) for t in r['cpu_s_per_batch']]} s)")
        if "train" in args.what:
            res["train_iteration"] = r = bench_train(m, cfg, args, device)
            print(f"{name}: train iteration (D + G + EMA) batch {args.batch}: {r['best_s_per_iter']:.3f} s/iter "
                  f"= {r['train_img_per_s']:.2f} img/s (wall {[round(t, 3) for t in r['s_per_iter']]} s, "
                  f"process CPU {[round(t, 3) for t in r['cpu_s_per_iter']]} s)")
        res["peak_memory_mb"] = peak_memory_mb(device)
        print(f"{name}: peak memory {res['peak_memory_mb']:.0f} MiB "
              f"({'max allocated' if device.type == 'cuda' else 'process peak RSS'})")
        info["results"][name] = res
    info["load_avg_end"] = os.getloadavg()
    out = args.out or os.path.join(ROOT, "bench", "results", f"stylegan2_{device.type}.json")
    os.makedirs(os.path.dirname(out), exist_ok=True)
    with open(out, "w") as f:
        json.dump(info, f, indent=1)
    print(f"wrote {out}")
    return info


if __name__ == "__main__":
    main()
