"""Benchmark 02_stylegan_freezed.py: 256 px training images/s and generator images/s.

A training iteration is the script's own `train_step`: D step (logistic loss + R1 every step, on
the FreezeD-trainable part of D) + G step (non-saturating loss, style mixing 0.9) + EMA update,
fp32, the released model's widths (512 .. 64 channels at 256 px), random data, Adam betas (0, 0.99).
Images/s = batch / (seconds per iteration), best of the timed iterations.

    python bench/bench_stylegan_v1.py                           # CPU, batch 2, 1 warm-up + 2 timed
    python bench/bench_stylegan_v1.py --device cuda --batch 8 --iters 10   # FreezeD's 256 px batch
    python bench/bench_stylegan_v1.py --freeze-d 0              # plain fine-tuning (all of D trained)

Writes bench/results/stylegan_v1_<device>.json.
"""
import argparse
import importlib.util
import json
import os
import platform
import sys
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def load_02():
    spec = importlib.util.spec_from_file_location("stylegan_freezed", os.path.join(ROOT, "02_stylegan_freezed.py"))
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
    times = []
    for _ in range(iters):
        t0 = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t0)
    return times


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--batch", type=int, default=2, help="CPU default 2; FreezeD uses 8 at 256 px")
    p.add_argument("--freeze-d", type=int, default=4, help="FreezeD K (4 = the README's feature_loc 3)")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--iters", type=int, default=2)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    p.add_argument("--precision", choices=["fp32", "bf16"], default="fp32", help="02's --precision")
    p.add_argument("--out", default=os.path.join(ROOT, "bench", "results"))
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    m = load_02()
    device = torch.device(args.device)
    step = m.size_to_step(args.size)
    torch.manual_seed(0)
    g, d = m.StyledGenerator().to(device), m.Discriminator().to(device)
    g_ema = m.StyledGenerator().to(device).eval()
    g_ema.load_state_dict(g.state_dict())
    g_opt = torch.optim.Adam(g.generator.parameters(), lr=0.002, betas=(0.0, 0.99))
    g_opt.add_param_group({"params": g.style.parameters(), "lr": 0.002 * m.MAPPING_LR_MULT})
    d_opt = torch.optim.Adam(d.parameters(), lr=0.002, betas=(0.0, 0.99))
    cfg = argparse.Namespace(mixing=True, loss="r1", lambda_fm=0.0, lambda_l2_d=0.0, lambda_l2_g=0.0, fm_blocks=4)
    trainable = m.freezed_trainable(d, step, args.freeze_d)
    real = torch.rand(args.batch, 3, args.size, args.size, device=device) * 2 - 1

    with m.forward_precision(args.precision, device, g, d):  # 02's --precision, as its training loop applies it
        train_times = timed(lambda: m.train_step(g, d, g_ema, g_opt, d_opt, real, step, 1.0, cfg, trainable),
                            device, args.warmup, args.iters)
    z = torch.randn(args.batch, m.CODE_DIM, device=device)

    @torch.no_grad()
    def sample():
        g_ema(z, step=step, alpha=1)

    gen_times = timed(sample, device, args.warmup, args.iters)
    result = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "torch": torch.__version__, "threads": torch.get_num_threads(), "size": args.size,
        "batch": args.batch, "freeze_d": args.freeze_d, "precision": args.precision,
        "g_params": sum(p.numel() for p in g.parameters()), "d_params": sum(p.numel() for p in d.parameters()),
        "d_trainable_params": sum(p.numel() for n, p in d.named_parameters() if n in trainable),
        "train_s_per_iter": train_times, "train_img_per_s": args.batch / min(train_times),
        "generate_s_per_batch": gen_times, "generate_img_per_s": args.batch / min(gen_times),
        "command": "python bench/bench_stylegan_v1.py " + " ".join(argv if argv is not None else sys.argv[1:]),
    }
    if device.type == "cuda":
        result["peak_mem_mb"] = torch.cuda.max_memory_allocated(device) / 2 ** 20
    print(json.dumps(result, indent=1))
    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, f"stylegan_v1_{device.type}{'_bf16' if args.precision == 'bf16' else ''}.json")
    with open(path, "w") as f:
        json.dump(result, f, indent=1)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
