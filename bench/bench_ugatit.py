"""Benchmark U-GAT-IT training steps (05_ugatit.py): images/s and peak memory, full and light.

Each configuration runs in its own subprocess, so the peak resident memory (ru_maxrss of that
child) or the peak CUDA memory belongs to that configuration alone. Synthetic inputs in [-1, 1];
warm-up steps, then timed steps (CUDA synchronised around the timer). Wall time and the worker's
process CPU time are both recorded: on a shared CPU the wall time follows the load, while with
`--threads 1` the CPU time measures the work itself.

`--loop reference` times the same networks driven the way znxlwm/UGATIT-pytorch's UGATIT.py drives
them (its train() loop rewritten here: D update on non-detached fakes
with separate real/fake calls, six generator calls and D weight gradients in the G update, plain
Adam) and with its un-fused AdaILN/ILN and CAM concatenation, as a same-machine, same-load baseline.

    python bench/bench_ugatit.py                                   # default grid, CPU or CUDA
    python bench/bench_ugatit.py --configs full:128:1 light:128:1 --loop both --iters 2
    python bench/bench_ugatit.py --configs full:128:1 light:128:1 --loop both --iters 1 --threads 1
    python bench/bench_ugatit.py --configs full:128:4 --amp bf16   # CUDA: what --amp saves
"""
import argparse
import datetime
import importlib.util
import json
import os
import resource
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load_ugatit():
    if ROOT not in sys.path:  # 05 imports ops/
        sys.path.insert(0, ROOT)
    spec = importlib.util.spec_from_file_location("ugatit_05", os.path.join(ROOT, "05_ugatit.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def unfused_norm(torch):
    """The reference's AdaILN/ILN arithmetic, one tensor per operation (baseline only)."""
    def layer_instance_norm(x, rho, gamma, beta, eps=1e-5):
        in_mean, in_var = x.mean(dim=(2, 3), keepdim=True), x.var(dim=(2, 3), keepdim=True)
        out_in = (x - in_mean) / torch.sqrt(in_var + eps)
        ln_mean, ln_var = x.mean(dim=(1, 2, 3), keepdim=True), x.var(dim=(1, 2, 3), keepdim=True)
        out_ln = (x - ln_mean) / torch.sqrt(ln_var + eps)
        out = rho.expand(x.shape[0], -1, -1, -1) * out_in + (1 - rho.expand(x.shape[0], -1, -1, -1)) * out_ln
        return out * gamma + beta
    return layer_instance_norm


def unfused_cam(torch, F):
    """The reference's CAM: concatenate the two re-weighted copies, then the 1x1 conv (baseline only)."""
    def cam_features(x, gap_fc, gmp_fc, gap_w, gmp_w, conv1x1, act):
        gap_logit = gap_fc(F.adaptive_avg_pool2d(x, 1).view(x.shape[0], -1))
        gmp_logit = gmp_fc(F.adaptive_max_pool2d(x, 1).view(x.shape[0], -1))
        h = torch.cat([x * gap_w.reshape(1, -1, 1, 1), x * gmp_w.reshape(1, -1, 1, 1)], 1)
        h = act(conv1x1(h))
        return h, torch.cat([gap_logit, gmp_logit], 1), h.sum(dim=1, keepdim=True)
    return cam_features


def reference_step(u, torch, F, nets, g_optim, d_optim, real_A, real_B, w):
    """UGATIT.py's iteration order, rewritten for timing."""
    gA2B, gB2A = nets["genA2B"], nets["genB2A"]
    dGA, dGB, dLA, dLB = nets["disGA"], nets["disGB"], nets["disLA"], nets["disLB"]
    mse = lambda x, t: F.mse_loss(x, torch.full_like(x, t))
    d_optim.zero_grad()
    fake_A2B, _, _ = gA2B(real_A)
    fake_B2A, _, _ = gB2A(real_B)
    d_loss = 0
    for D, real, fake in ((dGA, real_A, fake_B2A), (dLA, real_A, fake_B2A), (dGB, real_B, fake_A2B), (dLB, real_B, fake_A2B)):
        r, rc, _ = D(real)
        f, fc, _ = D(fake)
        d_loss = d_loss + w["adv"] * (mse(r, 1) + mse(f, 0) + mse(rc, 1) + mse(fc, 0))
    d_loss.backward()
    d_optim.step()
    g_optim.zero_grad()
    fake_A2B, cam_A2B, _ = gA2B(real_A)
    fake_B2A, cam_B2A, _ = gB2A(real_B)
    fake_A2B2A, _, _ = gB2A(fake_A2B)
    fake_B2A2B, _, _ = gA2B(fake_B2A)
    fake_A2A, cam_A2A, _ = gB2A(real_A)
    fake_B2B, cam_B2B, _ = gA2B(real_B)
    adv = 0
    for D, fake in ((dGA, fake_B2A), (dLA, fake_B2A), (dGB, fake_A2B), (dLB, fake_A2B)):
        f, fc, _ = D(fake)
        adv = adv + mse(f, 1) + mse(fc, 1)
    g_loss = (w["adv"] * adv + w["cycle"] * (F.l1_loss(fake_A2B2A, real_A) + F.l1_loss(fake_B2A2B, real_B))
              + w["identity"] * (F.l1_loss(fake_A2A, real_A) + F.l1_loss(fake_B2B, real_B))
              + w["cam"] * (u.cam_loss(cam_B2A, cam_A2A) + u.cam_loss(cam_A2B, cam_B2B)))
    g_loss.backward()
    g_optim.step()
    u.clip_rho_(gA2B, gB2A)


def worker(args):
    """Run one configuration in this process and print one JSON line."""
    import torch
    import torch.nn.functional as F
    if args.threads:
        torch.set_num_threads(args.threads)
    u = load_ugatit()
    device = torch.device(args.device)
    variant, size, batch = args.worker.split(":")
    size, batch = int(size), int(batch)
    if args.loop == "reference":
        u.layer_instance_norm = unfused_norm(torch)
        u.cam_features = unfused_cam(torch, F)
    torch.manual_seed(0)
    nets = u.build_networks(args.ch, args.n_res, size, variant == "light")
    for net in nets.values():
        net.to(device).train()
    w = {"adv": 1.0, "cycle": 10.0, "identity": 10.0, "cam": 1000.0}
    if args.loop == "reference":
        for net in nets.values():
            net.fold_cam = False            # the concatenation of u.cam_features (replaced above)
        g_params = [p for k in ("genA2B", "genB2A") for p in nets[k].parameters()]
        d_params = [p for k in ("disGA", "disGB", "disLA", "disLB") for p in nets[k].parameters()]
        g_optim = torch.optim.Adam(g_params, lr=1e-4, betas=(0.5, 0.999), weight_decay=1e-4)
        d_optim = torch.optim.Adam(d_params, lr=1e-4, betas=(0.5, 0.999), weight_decay=1e-4)
    else:                                   # what `05_ugatit.py train` sets up
        g_optim, d_optim = u.make_optimizers(nets, 1e-4, 1e-4, in_backward=args.amp != "fp16")
        nets["genA2B"].recompute = nets["genB2A"].recompute = not args.no_recompute
        if device.type == "cpu":
            u.release_freed_memory()
    autocast = u.autocast_factory(args.amp, device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    times, cpu_times = [], []
    for i in range(args.warmup + args.iters):
        real_A = torch.rand(batch, 3, size, size, device=device) * 2 - 1
        real_B = torch.rand(batch, 3, size, size, device=device) * 2 - 1
        sync()
        t0, c0 = time.perf_counter(), time.process_time()
        if args.loop == "reference":
            with autocast():
                reference_step(u, torch, F, nets, g_optim, d_optim, real_A, real_B, w)
        else:
            u.train_step(nets, g_optim, d_optim, real_A, real_B, w, autocast)
        sync()
        if i >= args.warmup:
            times.append(time.perf_counter() - t0)
            cpu_times.append(time.process_time() - c0)
    s_iter = sorted(times)[len(times) // 2]
    result = {"config": args.worker, "loop": args.loop, "amp": args.amp, "device": str(device),
              "threads": torch.get_num_threads(), "s_per_iter_median": s_iter, "s_per_iter_all": times,
              "cpu_s_per_iter_median": sorted(cpu_times)[len(cpu_times) // 2], "img_per_s": batch / s_iter,
              "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}
    if device.type == "cuda":
        result["peak_cuda_gib"] = torch.cuda.max_memory_allocated() / 2**30
    print("RESULT " + json.dumps(result))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--configs", nargs="+", default=None,
                   help="variant:size:batch items (default: full and light x 128, 256 x batch 1, 4)")
    p.add_argument("--loop", choices=("ours", "reference", "both"), default="ours")
    p.add_argument("--iters", type=int, default=2, help="timed iterations")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--ch", type=int, default=64)
    p.add_argument("--n-res", type=int, default=4)
    p.add_argument("--amp", choices=("bf16", "fp16"), default=None)
    p.add_argument("--no-recompute", action="store_true", help="ours: keep generator activations")
    p.add_argument("--device", default=None)
    p.add_argument("--threads", type=int, default=None,
                   help="CPU threads per worker; 1 makes process CPU time a load-independent work measure")
    p.add_argument("--timeout", type=float, default=600, help="seconds per configuration")
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    import torch
    args.device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if args.worker:
        return worker(args)

    configs = args.configs or [f"{v}:{s}:{b}" for v in ("full", "light") for s in (128, 256) for b in (1, 4)]
    loops = ("ours", "reference") if args.loop == "both" else (args.loop,)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    print(f"device {args.device}, torch {torch.__version__}, threads {torch.get_num_threads()}, "
          f"cpus {os.cpu_count()}, load average {load}")
    if args.device == "cuda":
        print("gpu", torch.cuda.get_device_name(0))
    print(f"ch {args.ch}, n_res {args.n_res}, warm-up {args.warmup}, timed {args.iters}, amp {args.amp}")
    results = []
    for cfg in configs:
        for loop in loops:
            cmd = [sys.executable, os.path.abspath(__file__), "--worker", cfg, "--loop", loop,
                   "--iters", str(args.iters), "--warmup", str(args.warmup), "--ch", str(args.ch),
                   "--n-res", str(args.n_res), "--device", args.device]
            if args.threads:
                cmd += ["--threads", str(args.threads)]
            if args.no_recompute:
                cmd.append("--no-recompute")
            if args.amp:
                cmd += ["--amp", args.amp]
            try:
                proc = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout)
                lines = [l for l in proc.stdout.splitlines() if l.startswith("RESULT ")]
                if not lines:
                    print(f"{cfg} {loop}: failed: {proc.stderr.strip().splitlines()[-1:]}")
                    continue
                r = json.loads(lines[-1][len("RESULT "):])
            except subprocess.TimeoutExpired:
                print(f"{cfg} {loop}: over {args.timeout} s, skipped")
                continue
            results.append(r)
            extra = f", peak CUDA {r['peak_cuda_gib']:.2f} GiB" if "peak_cuda_gib" in r else ""
            print(f"{cfg:>14} {loop:>9}: {r['s_per_iter_median']:.2f} s/iter (process CPU "
                  f"{r['cpu_s_per_iter_median']:.1f} s), {r['img_per_s']:.3f} img/s, "
                  f"peak RSS {r['peak_rss_gib']:.2f} GiB{extra}", flush=True)
    os.makedirs(os.path.join(ROOT, "bench", "results"), exist_ok=True)
    stamp = datetime.datetime.now().strftime("%Y%m%d_%H%M%S")
    path = os.path.join(ROOT, "bench", "results", f"ugatit_{args.device}_{stamp}.json")
    with open(path, "w") as f:
        json.dump({"torch": torch.__version__, "device": args.device, "load_average": load,
                   "results": results}, f, indent=1)
    print("wrote", path)


if __name__ == "__main__":
    main()
