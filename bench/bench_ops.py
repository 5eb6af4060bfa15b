"""Benchmark ops/: upfirdn2d (StyleGAN2 resampling at 256 px) and fused bias + leaky ReLU.

Run:
    python bench/bench_ops.py                         # CPU: 4 x 4 ch, under a minute
    python bench/bench_ops.py --device cuda           # GPU: 4 x 512 ch, reference vs kernel
    python bench/bench_ops.py --channels 64 --iters 2 # CPU, closer to the real layer width

Variants, timed side by side: rounds interleave them, so machine noise hits all alike, and the
fastest round of each is reported (the least disturbed; medians are in the JSON too):
- `naive`: the obvious unfused formulation. upfirdn2d as zero insertion + pad + a single-channel
  conv2d on x reshaped to [N*C, 1, H, W] (rosinality's upfirdn2d_native); the activation as
  x + b, leaky_relu, * scale (three ops, autograd through each).
- `zero_dw` (CPU only): zero insertion + pad + depthwise conv2d (groups=C) with stride = down,
  the straightforward formulation the reference improves on.
- `ref`: calm-gan's PyTorch path (ops.upfirdn2d.upfirdn2d_ref: depthwise transposed / strided
  convolution; fused_leaky_relu on a non-CUDA tensor: two passes, output-only saved state).
- `kernel` (CUDA only): the compiled kernels in ops/cuda/.
Cases (shapes of the 256 px StyleGAN2 layers, batch 4):
- up2: upsample2d, [1,3,3,1] kernel * 4, up=2, pad (2, 1): [N, C, 128, 128] -> [N, C, 256, 256]
  (the ToRGB skip upsample);
- blur_up: blur, pad (1, 1), gain 4: [N, C, 257, 257] -> [N, C, 256, 256] (after the transposed
  conv of ModulatedConv2d(upsample=True));
- blur_down: blur, pad (2, 2): [N, C, 256, 256] -> [N, C, 257, 257] (before the discriminator's
  strided 3x3 conv);
- down2: downsample2d, down=2, pad (1, 1): [N, C, 256, 256] -> [N, C, 128, 128];
- lrelu: fused_leaky_relu on [N, C, 256, 256] with a [C] bias.
Each is timed forward only and forward + backward. Writes bench/results/bench_ops.json.
"""
import argparse
import json
import os
import platform
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import ops.cuda  # noqa: E402
from ops.fused_act import fused_leaky_relu, fused_leaky_relu_ref  # noqa: E402
from ops.upfirdn2d import make_kernel, upfirdn2d, upfirdn2d_ref  # noqa: E402


# ----------------------------------------------------------------------------------------------
# The obvious unfused formulations


def naive_upfirdn2d(x, kernel, up=1, down=1, pad=(0, 0)):
    """Zero insertion, pad, single-channel conv2d over [N*C, 1, H, W], slice (non-negative pads)."""
    n, c, h, w = x.shape
    p0, p1 = pad
    x = x.reshape(n * c, 1, h, 1, w, 1)
    x = F.pad(x, [0, up - 1, 0, 0, 0, up - 1]).reshape(n * c, 1, h * up, w * up)
    x = F.pad(x, [p0, p1, p0, p1])
    x = F.conv2d(x, torch.flip(kernel, [0, 1]).view(1, 1, *kernel.shape))
    x = x[:, :, ::down, ::down]
    return x.reshape(n, c, x.shape[2], x.shape[3])


def zero_insert_depthwise_upfirdn2d(x, kernel, up=1, down=1, pad=(0, 0)):
    """Zero insertion, pad, depthwise conv2d (groups=C) with stride = down (non-negative pads)."""
    n, c, h, w = x.shape
    p0, p1 = pad
    if up > 1:
        x = F.pad(x.reshape(n, c, h, 1, w, 1), [0, up - 1, 0, 0, 0, up - 1])
        x = x.reshape(n, c, h * up, w * up)
    weight = torch.flip(kernel, [0, 1]).view(1, 1, *kernel.shape).expand(c, 1, *kernel.shape)
    return F.conv2d(F.pad(x, [p0, p1, p0, p1]), weight, stride=down, groups=c)


def naive_leaky_relu(x, bias, negative_slope=0.2, scale=2 ** 0.5):
    return F.leaky_relu(x + bias.view(1, -1, 1, 1), negative_slope) * scale


# ----------------------------------------------------------------------------------------------
# Timing


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def make_cases(args, device):
    n, c = args.batch, args.channels
    k = make_kernel([1, 3, 3, 1]).to(device)
    cases = {
        "up2": (lambda: torch.randn(n, c, 128, 128, device=device),
                dict(kernel=k * 4, up=2, down=1, pad=(2, 1))),
        "blur_up": (lambda: torch.randn(n, c, 257, 257, device=device),
                    dict(kernel=k * 4, up=1, down=1, pad=(1, 1))),
        "blur_down": (lambda: torch.randn(n, c, 256, 256, device=device),
                      dict(kernel=k, up=1, down=1, pad=(2, 2))),
        "down2": (lambda: torch.randn(n, c, 256, 256, device=device),
                  dict(kernel=k, up=1, down=2, pad=(1, 1))),
    }
    variants = {"naive": naive_upfirdn2d, "zero_dw": zero_insert_depthwise_upfirdn2d,
                "ref": upfirdn2d_ref}
    if device.type == "cuda":
        variants = {"naive": naive_upfirdn2d, "ref": upfirdn2d_ref, "kernel": upfirdn2d}
    out = {}
    for name, (make_x, kw) in cases.items():
        out[name] = (make_x, {v: (lambda f, kw=kw: (lambda x: f(x, **kw)))(f)
                              for v, f in variants.items()})
    bias = torch.randn(c, device=device)
    act = {"naive": lambda x: naive_leaky_relu(x, bias),
           "ref": lambda x: fused_leaky_relu_ref(x, bias) if device.type == "cuda"
           else fused_leaky_relu(x, bias)}
    if device.type == "cuda":
        act["kernel"] = lambda x: fused_leaky_relu(x, bias)
    out["lrelu"] = (lambda: torch.randn(n, c, 256, 256, device=device), act)
    return out


def step(fn, x, grad):
    """fn(x) (grad None) or fn(x).backward(grad)."""
    if grad is None:
        with torch.no_grad():
            fn(x)
    else:
        x.grad = None
        fn(x).backward(grad)


def time_ms(fn, x, grad, iters, device):
    """(wall ms, process CPU ms) per iteration of step(fn, x, grad). The CPU time of this process
    is what the op costs on a machine shared with other jobs, where wall time also counts waits."""
    sync(device)
    t0, c0 = time.perf_counter(), time.process_time()
    for _ in range(iters):
        step(fn, x, grad)
    sync(device)
    return ((time.perf_counter() - t0) / iters * 1e3, (time.process_time() - c0) / iters * 1e3)


def main(argv=None):
    parser = argparse.ArgumentParser(description="Benchmark upfirdn2d and fused_leaky_relu.")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--channels", type=int, default=None,
                        help="channels (default 512 on CUDA as at 256 px, 4 on CPU)")
    parser.add_argument("--iters", type=int, default=None, help="timed iterations per round "
                        "(default 20 on CUDA, 1 on CPU)")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds; fastest kept")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    parser.add_argument("--cases", default="up2,blur_up,blur_down,down2,lrelu")
    parser.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                                      "results", "bench_ops.json"))
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    args.channels = args.channels or (512 if device.type == "cuda" else 4)
    args.iters = args.iters or (20 if device.type == "cuda" else 1)
    if device.type == "cuda":
        for name in ("upfirdn2d", "bias_act"):
            if ops.cuda.load_extension(name) is None:
                print(f"warning: CUDA kernel {name} unavailable; 'kernel' times the reference")
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor()
    print(f"device {device} ({name}), torch {torch.__version__}, threads "
          f"{torch.get_num_threads()}, batch {args.batch}, channels {args.channels}, fp32, "
          f"{args.iters} iters x {args.rounds} rounds")

    results = []
    cases = make_cases(args, device)
    for case in args.cases.split(","):
        make_x, variants = cases[case]
        x = make_x().requires_grad_()
        with torch.no_grad():
            y = variants["ref"](x)
            grad = torch.randn_like(y)
            for v, f in variants.items():  # all variants agree before they are timed
                err = (f(x) - y).abs().max().item()
                assert err < 1e-4, f"{case}/{v} differs from the reference by {err}"
        for mode, g in (("fwd", None), ("fwd+bwd", grad)):
            times, cpu = {v: [] for v in variants}, {v: [] for v in variants}
            for f in variants.values():  # warm-up
                step(f, x, g)
            for _ in range(args.rounds):
                for v, f in variants.items():
                    wall_ms, cpu_ms = time_ms(f, x, g, args.iters, device)
                    times[v].append(wall_ms)
                    cpu[v].append(cpu_ms)
            med = {v: min(t) for v, t in times.items()}
            row = {"case": case, "mode": mode, "in": list(x.shape), "out": list(y.shape),
                   "ms": med, "ms_median": {v: statistics.median(t) for v, t in times.items()},
                   "ms_all": times, "cpu_ms": {v: min(t) for v, t in cpu.items()},
                   "speedup_ref_vs_naive": med["naive"] / med["ref"]}
            if device.type == "cpu":
                c = row["cpu_ms"]
                row["cpu_speedup_ref_vs_naive"] = c["naive"] / c["ref"]
                row["cpu_speedup_ref_vs_zero_dw"] = c["zero_dw"] / c["ref"] if "zero_dw" in c else None
            if "zero_dw" in med:
                row["speedup_ref_vs_zero_dw"] = med["zero_dw"] / med["ref"]
            if "kernel" in med:
                row["speedup_kernel_vs_ref"] = med["ref"] / med["kernel"]
            results.append(row)
            extra = (f", kernel {med['kernel']:8.2f} ms (x{row['speedup_kernel_vs_ref']:.2f} vs ref)"
                     if "kernel" in med else "")
            if "zero_dw" in med:
                extra += (f", zero_dw {med['zero_dw']:8.2f} ms "
                          f"(ref x{row['speedup_ref_vs_zero_dw']:.2f} vs it)")
            if device.type == "cpu":
                extra += (f"; CPU time: ref x{row['cpu_speedup_ref_vs_naive']:.2f} vs naive"
                          + (f", x{row['cpu_speedup_ref_vs_zero_dw']:.2f} vs zero_dw"
                             if "zero_dw" in med else ""))
            print(f"{case:9s} {mode:8s} {str(tuple(x.shape)):18s} naive {med['naive']:8.2f} ms, "
                  f"ref {med['ref']:8.2f} ms (x{row['speedup_ref_vs_naive']:.2f} vs naive){extra}")
        del x, y, grad

    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    report = {"device": str(device), "device_name": name, "torch": torch.__version__,
              "threads": torch.get_num_threads(), "batch": args.batch, "channels": args.channels,
              "iters": args.iters, "rounds": args.rounds, "dtype": "float32", "results": results}
    tmp = args.out + ".tmp"
    with open(tmp, "w") as f:
        json.dump(report, f, indent=1)
    os.replace(tmp, args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
