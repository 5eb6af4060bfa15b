"""Every GPU figure of calm-gan from one command (about 10 minutes on one H100/H200).

    python bench/gpu_check.py               # on a machine with a CUDA GPU: run everything
    python bench/gpu_check.py --peer nvlabs=../stylegan2-ada-pytorch   # + NVIDIA's loop on the same card
    python bench/gpu_check.py --dry-run     # print what would run (also what happens without a GPU)
    python bench/gpu_check.py --only sg2-tf32,ugatit-amp-bf16 --budget 200

Writes bench/results/gpu_check.json and bench/results/gpu_check.md (the table below is printed too).
Each case runs in its own subprocess with a time limit, so one failure or hang costs only that case;
the whole run stops starting new cases when --budget seconds are spent. Cases, in order:

- build: both CUDA kernels compiled from scratch into a fresh extension folder (the later cases
  load them from there); the time is what a user's first run pays once.
- cuda-tests: `pytest -m cuda tests`, the tests marked as needing a CUDA GPU (kernels against the
  reference, gradcheck, the kernel self-check, FID and U-GAT-IT on CUDA).
- sg2-*: `03_stylegan2_ada.py train` at 256 px, config-f, batch 16, the seed's headline setting
  (--preset freezed-ada from a random-weight checkpoint), random images: seconds per kimg (median
  of the logged intervals after the first) and peak CUDA memory, in fp32 with TF32 off and on,
  bf16 and fp16 (when 03 has --precision), with the CUDA kernels and with --ops ref. From s/kimg:
  the projected time of the seed's headline run, 480 kimg (30k iterations at batch 16), without
  FID and checkpoint time.
- sg2-nvcfg-*: `03 train` at NVIDIA's own published setting, their `--cfg=auto` at 256 px: channel
  base 16384 (channel multiplier 1), mapping depth 2, batch 16, ADA on (adaptive), R1 gamma 0.8192,
  lr 0.0025, EMA 5 kimg with ramp-up 0.05, from scratch; in NVIDIA's arithmetic (fp16, TF32 off,
  as their loop sets it) and in 03's default on the card. Published for that setting: 12.53 s/kimg
  on one A100 (NVlabs/stylegan3 docs/configs.md) and 21.6-24.2 s/kimg on one V100
  (NVlabs/stylegan2-ada-pytorch README), beside which the row can be read.
- sg2-generate: G inference img/s, 256 px config-f, batch 16 (bench_stylegan2's calm-gan G_ema).
- sg2-bench: bench/bench_stylegan2.py on the card (the real step at 64 px channel multiplier 1 and
  256 px config-f, batch 4, fp32 and 03's mixed precision; with --peer, the peers side by side).
- nvidia-train (only with --peer nvlabs=PATH, a checkout of NVlabs/stylegan2-ada-pytorch): NVIDIA's
  own train.py with --cfg auto --batch 16 --aug ada on the same random 256 px images, 8 kimg: the
  median of its status lines' sec/kimg after the first tick (start-up and kernel builds excluded).
- ugatit-*: 05's training step at 128 px, full, batch 4 (the seed's setting), without and with --amp
  (bench_ugatit.py --worker): s/iter and peak memory, and whether it fits the seed's 11 GB card.
- sg1-*: 02's training step at 256 px, batch 8 (bench_stylegan_v1.py), fp32 and --precision bf16:
  s/iter, img/s, peak memory.
- fid: Inception pool3 features img/s (random weights; batches of 50 uint8 images at 256 px).
Without a CUDA device it prints this plan and exits 0, so CI never depends on a GPU.
"""
import argparse
import importlib.util
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from types import SimpleNamespace

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

HEADLINE_KIMG = 480          # the seed: 30k iterations at batch 16
# NVIDIA's --cfg=auto at 256 px on one GPU (train.py: fmaps 0.5, map 2, mb 16, gamma 0.0002 res^2 / mb,
# lrate 0.0025, ema mb * 10 / 32 kimg, ramp 0.05) and what they published for it, in s/kimg
NVIDIA_AUTO_256 = dict(channel_multiplier=1, n_mlp=2, batch=16, r1_gamma=0.8192, lr=0.0025, ema_kimg=5.0,
                       ema_rampup=0.05)
NVIDIA_PUBLISHED = "NVIDIA: 12.53 s/kimg on one A100 (stylegan3 configs.md), 21.6-24.2 on one V100 (stylegan2-ada README)"
NVIDIA_KIMG = 8              # their train.py --kimg for nvidia-train: ticks at 0, 4 and 8 kimg
SEED_CARD_GIB = 11           # the seed's RTX 2080 Ti
SG2 = dict(size=256, channel_multiplier=2, batch=16, iters=64, log_every=16, images=64, arch=[])
UGATIT = ["full:128:4"]
SG1 = ["--batch", "8"]
FID_BATCH = (50, 256)  # images per batch, their size
DEVICE = "cuda"


def smoke_settings():
    """--smoke: every case's code path at toy sizes on the CPU (what the test suite runs)."""
    global DEVICE, UGATIT, SG1, FID_BATCH
    SG2.update(size=32, channel_multiplier=1, batch=4, iters=4, log_every=1, images=8,
               arch=["--channel-max", "16", "--style-dim", "16", "--n-mlp", "2", "--num-workers", "0"])
    UGATIT = ["full:64:2", "--ch", "4", "--n-res", "1"]
    SG1 = ["--batch", "2", "--size", "8", "--freeze-d", "1"]
    FID_BATCH, DEVICE = (4, 32), "cpu"


def peak_gib(torch):
    return torch.cuda.max_memory_allocated() / 2 ** 30 if DEVICE == "cuda" else None


def reset_peak(torch):
    if DEVICE == "cuda":
        torch.cuda.reset_peak_memory_stats()


def load(name, path):
    spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, path))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def precision_choices():
    """03's --precision choices if its train command has the flag (it comes from another change), else ()."""
    m = load("stylegan2_ada_03", "03_stylegan2_ada.py")
    parser = argparse.ArgumentParser()
    m.add_train_args(parser)
    for action in parser._actions:
        if "--precision" in action.option_strings:
            return tuple(action.choices or ())
    return ()


def sg2_train_argv(work, name, precision=None, ops="auto"):
    """The 03 command line case `name` runs (data and start checkpoint are made by the case)."""
    argv = ["train", "--data", os.path.join(work, "sg2_data"), "--out", os.path.join(work, "run_" + name),
            "--ckpt", os.path.join(work, "sg2_start.pt"), "--preset", "freezed-ada",
            "--size", str(SG2["size"]), "--channel-multiplier", str(SG2["channel_multiplier"]),
            "--batch", str(SG2["batch"]), "--iter", str(SG2["iters"]), "--log-every", str(SG2["log_every"]),
            "--fid-every", "0", "--sample-every", "100000", "--ckpt-every", "100000", "--n-sample", "4",
            "--no-progress", "--device", DEVICE, "--ops", ops] + SG2["arch"]
    if precision is not None:
        argv += ["--precision", precision]
    return argv


def sg2_nvidia_argv(work, name, precision=None):
    """The 03 command line of NVIDIA's --cfg=auto at 256 px (from scratch, adaptive ADA)."""
    nv = dict(NVIDIA_AUTO_256, batch=SG2["batch"])  # --smoke: the toy batch
    argv = ["train", "--data", os.path.join(work, "sg2_data"), "--out", os.path.join(work, "run_" + name),
            "--augment", "ada", "--size", str(SG2["size"]), "--channel-multiplier", str(nv["channel_multiplier"]),
            "--n-mlp", str(nv["n_mlp"]), "--batch", str(nv["batch"]), "--r1-gamma", str(nv["r1_gamma"]),
            "--lr", str(nv["lr"]), "--ema-kimg", str(nv["ema_kimg"]), "--ema-rampup", str(nv["ema_rampup"]),
            "--iter", str(SG2["iters"]), "--log-every", str(SG2["log_every"]), "--fid-every", "0",
            "--sample-every", "100000", "--ckpt-every", "100000", "--n-sample", "4", "--no-progress",
            "--device", DEVICE] + _toy_arch(nv)
    if precision is not None:
        argv += ["--precision", precision]
    return argv


def _toy_arch(nv):
    """--smoke's toy channel widths (the mapping depth stays NVIDIA's 2)."""
    if not SG2["arch"]:
        return []
    return ["--channel-max", "16", "--style-dim", "16", "--num-workers", "0"]


def nvidia_train_argv(peer, work):
    """NVIDIA's own train.py for the nvidia-train case (their --cfg auto at 256 px, batch 16, ADA)."""
    return [sys.executable, os.path.join(peer, "train.py"), "--outdir", os.path.join(work, "nvidia_run"),
            "--data", os.path.join(work, "sg2_data"), "--gpus", "1", "--cfg", "auto", "--batch", "16",
            "--aug", "ada", "--kimg", str(NVIDIA_KIMG), "--snap", "1000", "--metrics", "none"]


def nvidia_sec_per_kimg(stdout):
    """sec/kimg from NVIDIA's status lines ("tick 1 kimg 4.0 ... sec/kimg 12.53 ..."): the median
    over the ticks after tick 0 (tick 0 holds the start-up), or None if there is no such tick."""
    values = []
    for line in stdout.splitlines():
        found = re.match(r"tick\s+(\d+)\s.*\bsec/kimg\s+([0-9.]+)", line.strip())
        if found and int(found.group(1)) > 0:
            values.append(float(found.group(2)))
    return statistics.median(values) if values else None


def plan(work, precisions, peers=None):
    """[(name, limit_s, description, command or None)] in run order; a None command marks a case
    that cannot run here (with the reason as its description). peers: {"nvlabs": PATH, ...}."""
    peers = peers or {}
    me = [sys.executable, os.path.abspath(__file__), "--work", work] + (["--smoke"] if DEVICE == "cpu" else []) \
        + ["--case"]

    def sg2(name, label, precision, ops, tf32):
        if precision != "fp32" and precision not in precisions:
            return (name, 0, f"{label}: not available (03 train has no --precision {precision})", None)
        # fp32 is 03's only arithmetic without --precision; with the flag, fp32 is asked for explicitly
        argv = sg2_train_argv(work, name, precision if precision in precisions else None, ops)
        return (name, 150, f"03 at 256 px config-f, batch 16, {label}: python 03_stylegan2_ada.py "
                           + " ".join(argv), me + [name, "--tf32", "1" if tf32 else "0", "--"] + argv)

    cases = [("build", 300, "compile upfirdn2d and bias_act from scratch", me + ["build"]),
             ("cuda-tests", 300, "python -m pytest -q -m cuda tests", me + ["cuda-tests"]),
             sg2("sg2-fp32", "fp32, TF32 off", "fp32", "auto", False),
             sg2("sg2-tf32", "fp32, TF32 on", "fp32", "auto", True),
             sg2("sg2-bf16", "bf16", "bf16", "auto", True),
             sg2("sg2-fp16", "fp16", "fp16", "auto", True)]
    for nv_precision, label, tf32 in (("fp16", "fp16, TF32 off (NVIDIA's arithmetic)", False),
                                      (None, "03's default precision", True)):
        name = "sg2-nvcfg-" + (nv_precision or "default")
        if nv_precision is not None and nv_precision not in precisions:
            cases.append((name, 0, f"NVIDIA's --cfg=auto: not available (03 train has no --precision "
                                   f"{nv_precision})", None))
            continue
        argv = sg2_nvidia_argv(work, name, nv_precision)
        cases.append((name, 150, f"03 at NVIDIA's --cfg=auto 256 px, batch 16, ADA, {label}: python "
                                 f"03_stylegan2_ada.py {' '.join(argv)}",
                      me + [name, "--tf32", "1" if tf32 else "0", "--"] + argv))
    cases.append(("sg2-generate", 90, "03 G inference, 256 px config-f, batch 16, fp32", me + ["sg2-generate"]))
    sb = ["bench/bench_stylegan2.py", "--device", DEVICE, "--what", "step,gen", "--rounds", "3",
          "--out", os.path.join(work, "bench_stylegan2.json")] + \
        (["--configs", "64-cm1", "--augment", "none", "--rounds", "1"] if DEVICE == "cpu" else []) + \
        [f"--peer={k}={v}" for k, v in sorted(peers.items())]
    cases.append(("sg2-bench", 240, f"03's real step side by side: python {' '.join(sb)}",
                  me + ["sg2-bench", "--"] + sb))
    if "nvlabs" in peers:
        cmd = nvidia_train_argv(peers["nvlabs"], work)
        cases.append(("nvidia-train", 400, f"NVIDIA's own loop, --cfg auto 256 px, batch 16, ADA, {NVIDIA_KIMG} kimg: "
                                           f"{' '.join(cmd[1:])}", me + ["nvidia-train", "--"] + cmd))
    for amp in (None, "bf16", "fp16"):
        ub = ["bench/bench_ugatit.py", "--worker"] + UGATIT + ["--device", DEVICE, "--iters", "5",
                                                              "--warmup", "2"] + (["--amp", amp] if amp else [])
        cases.append((f"ugatit-{'fp32' if amp is None else 'amp-' + amp}", 120,
                      f"05 at 128 px full, batch 4: python {' '.join(ub)}", me + ["ugatit", "--"] + ub))
    for precision in ("fp32", "bf16"):
        v1 = ["bench/bench_stylegan_v1.py", "--device", DEVICE] + SG1 + [
            "--iters", "5", "--warmup", "2", "--precision", precision, "--out", os.path.join(work, "sg1")]
        cases.append((f"sg1-{precision}", 120, f"02 at 256 px, batch 8, {precision}: python {' '.join(v1)}",
                      me + ["sg1", "--"] + v1))
    cases.append(("fid", 90, "Inception features, batches of 50 uint8 images at 256 px", me + ["fid"]))
    cases += [sg2("sg2-fp32-ref", "fp32, TF32 off, --ops ref", "fp32", "ref", False),
              sg2("sg2-tf32-ref", "fp32, TF32 on, --ops ref", "fp32", "ref", True),
              sg2("sg2-bf16-ref", "bf16, --ops ref", "bf16", "ref", True),
              sg2("sg2-fp16-ref", "fp16, --ops ref", "fp16", "ref", True)]
    return cases


# ----------------------------------------------------------------------------------------------
# The cases (each runs in its own process and prints one RESULT line)


def case_build(args, rest):
    import ops.cuda
    times = {}
    for name in sorted(ops.cuda._SOURCES):
        t0 = time.perf_counter()
        ops.cuda.build(name)  # TORCH_EXTENSIONS_DIR is a fresh folder: this really compiles
        times[name] = round(time.perf_counter() - t0, 1)
    return {"figure": f"{sum(times.values()):.0f} s ({', '.join(f'{k} {v} s' for k, v in times.items())})",
            "seconds": times}


def case_cuda_tests(args, rest):
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-m", "cuda", "tests"], cwd=ROOT,
                          capture_output=True, text=True)
    lines = proc.stdout.strip().splitlines()
    summary = lines[-1] if lines else proc.stderr.strip()[-200:]
    failed = [line.split(" ")[1] for line in lines if line.startswith("FAILED ")]
    return {"ok": proc.returncode == 0, "figure": summary.strip("= "), "failed": failed,
            "note": "" if proc.returncode == 0 else "FAILED: " + ", ".join(failed[:5])}


def sg2_prepare(work, m, torch):
    """Random 256 px images and a random-weight config-f checkpoint (G, G_ema, D), made once."""
    import numpy as np
    from PIL import Image
    data = os.path.join(work, "sg2_data")
    if not os.path.isdir(data):
        tmp = data + ".tmp"
        os.makedirs(tmp, exist_ok=True)
        rng = np.random.RandomState(0)
        for i in range(SG2["images"]):
            Image.fromarray(rng.randint(0, 256, (SG2["size"], SG2["size"], 3), dtype=np.uint8)).save(
                os.path.join(tmp, f"{i:05d}.png"))
        os.replace(tmp, data)
    start = os.path.join(work, "sg2_start.pt")
    if not os.path.isfile(start):
        torch.manual_seed(0)
        small = DEVICE == "cpu"  # --smoke: the toy sizes of smoke_settings
        arch = dict(size=SG2["size"], style_dim=16 if small else 512, n_mlp=2 if small else 8,
                    channel_multiplier=SG2["channel_multiplier"], channel_max=16 if small else 512)
        g = m.Generator(**arch)
        d = m.Discriminator(SG2["size"], channel_multiplier=SG2["channel_multiplier"], channel_max=arch["channel_max"])
        m.save_checkpoint(start, {"g": g.state_dict(), "g_ema": g.state_dict(), "d": d.state_dict(),
                                  "args": arch, "step": 0})


def case_sg2(args, rest):
    import torch
    import ops
    m = load("stylegan2_ada_03", "03_stylegan2_ada.py")
    sg2_prepare(args.work, m, torch)
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = bool(args.tf32)
    reset_peak(torch)
    t0 = time.perf_counter()
    m.main(rest)
    wall = time.perf_counter() - t0
    out = rest[rest.index("--out") + 1]
    with open(os.path.join(out, "log.jsonl")) as f:
        rates = [json.loads(line)["img_per_s"] for line in f][1:]  # the first interval holds the warm-up
    rate = sorted(rates)[len(rates) // 2]
    s_kimg = 1000 / rate
    peak = peak_gib(torch)
    shutil.rmtree(out, ignore_errors=True)
    hours = s_kimg * HEADLINE_KIMG / 3600
    # what the run ended with (03 may set TF32 itself for a precision)
    tf32 = {"matmul": torch.backends.cuda.matmul.allow_tf32, "cudnn": torch.backends.cudnn.allow_tf32}
    note = f"480 kimg: {hours:.2f} h; kernels {ops.cuda.self_check_results() or 'not used'}"
    if set(tf32.values()) != {bool(args.tf32)}:
        note += f"; TF32 at the end: {tf32}"
    return {"figure": f"{s_kimg:.2f} s/kimg", "s_per_kimg": s_kimg, "img_per_s": rate, "peak_gib": peak,
            "headline_hours": hours, "wall_s": wall, "tf32": bool(args.tf32), "tf32_at_end": tf32,
            "ops": ops.get_ops(), "kernel_self_check": ops.cuda.self_check_results(), "note": note}


def case_sg2_generate(args, rest):
    import torch
    m = load("stylegan2_ada_03", "03_stylegan2_ada.py")
    torch.manual_seed(0)
    small = DEVICE == "cpu"  # --smoke: the toy sizes of smoke_settings
    g = m.Generator(SG2["size"], style_dim=16 if small else 512, n_mlp=2 if small else 8,
                    channel_multiplier=SG2["channel_multiplier"], channel_max=16 if small else 512).to(DEVICE).eval()
    z = torch.randn(SG2["batch"], g.style_dim, device=DEVICE)
    reset_peak(torch)
    times = []
    with torch.no_grad():
        for i in range(12 if DEVICE == "cuda" else 2):
            if DEVICE == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            g([z])
            if DEVICE == "cuda":
                torch.cuda.synchronize()
            times.append(time.perf_counter() - t0)
    t = statistics.median(times[2:] if len(times) > 2 else times)  # after two warm-up calls
    rate = SG2["batch"] / t
    return {"figure": f"{rate:.0f} img/s", "img_per_s": rate, "peak_gib": peak_gib(torch)}


def case_sg2_bench(args, rest):
    """bench/bench_stylegan2.py on this device: the real step's median per configuration and,
    with peers, the median ratio to each."""
    import torch
    bench = load("bench_stylegan2", "bench/bench_stylegan2.py")
    reset_peak(torch)
    info = bench.main(rest[1:])
    parts, ratios = [], {}
    for r in info["results"]:
        if not r["what"].startswith("real step"):
            continue
        sec = r["seconds"]
        med = statistics.median(sec["calm-gan"])
        text = f"{r['config']}: {med:.3f} s"
        for peer, times in sec.items():
            if peer != "calm-gan":
                ratio = statistics.median(p / c for p, c in zip(times, sec["calm-gan"]))
                ratios[f"{r['config']} {peer}"] = ratio
                text += f", {peer} {ratio:.2f}x"
        parts.append(text)
    return {"figure": "; ".join(parts[:2]) + ("; ..." if len(parts) > 2 else ""), "real_step": parts,
            "ratios": ratios, "peak_gib": peak_gib(torch), "note": "" if ratios else "no --peer: no ratio"}


def case_nvidia_train(args, rest):
    """NVIDIA's own train.py on the sg2 images; s/kimg from its status lines after tick 0."""
    import torch
    m = load("stylegan2_ada_03", "03_stylegan2_ada.py")
    sg2_prepare(args.work, m, torch)
    proc = subprocess.run(rest, cwd=os.path.dirname(rest[1]), capture_output=True, text=True)
    shutil.rmtree(os.path.join(args.work, "nvidia_run"), ignore_errors=True)
    s_kimg = nvidia_sec_per_kimg(proc.stdout)
    if s_kimg is None:
        last = (proc.stderr.strip().splitlines() or proc.stdout.strip().splitlines() or ["no status line"])[-1]
        raise RuntimeError(f"NVIDIA's train.py gave no timed tick (exit {proc.returncode}): {last[-160:]}")
    return {"figure": f"{s_kimg:.2f} s/kimg", "s_per_kimg": s_kimg, "note": NVIDIA_PUBLISHED}


def case_ugatit(args, rest):
    proc = subprocess.run([sys.executable] + rest, cwd=ROOT, capture_output=True, text=True)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    if not lines:
        raise RuntimeError((proc.stderr.strip().splitlines() or ["no RESULT line"])[-1])
    r = json.loads(lines[-1][len("RESULT "):])
    peak = r.get("peak_cuda_gib")
    fits = "" if peak is None else f"fits {SEED_CARD_GIB} GB: {'yes' if peak < SEED_CARD_GIB else 'no'}"
    return {"figure": f"{r['s_per_iter_median']:.3f} s/iter", "s_per_iter": r["s_per_iter_median"],
            "peak_gib": peak, "note": fits, "detail": r}


def case_sg1(args, rest):
    bench = load("bench_stylegan_v1", "bench/bench_stylegan_v1.py")
    bench.main(rest[1:])
    out = rest[rest.index("--out") + 1]
    bf16 = rest[rest.index("--precision") + 1] == "bf16"
    with open(os.path.join(out, f"stylegan_v1_{DEVICE}{'_bf16' if bf16 else ''}.json")) as f:
        r = json.load(f)
    s = min(r["train_s_per_iter"])
    peak = r["peak_mem_mb"] / 1024 if "peak_mem_mb" in r else None
    return {"figure": f"{s:.3f} s/iter ({r['train_img_per_s']:.1f} img/s)", "s_per_iter": s, "peak_gib": peak,
            "detail": r}


def case_fid(args, rest):
    import torch
    from ops import fid
    bench = load("bench_fid", "bench/bench_fid.py")
    model = fid.load_inception("random", device=DEVICE, dims=2048)
    n, size = FID_BATCH
    x = torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8)
    reset_peak(torch)
    t, _ = bench._timed(lambda: fid._features_of_batch(model, x, DEVICE), 5 if DEVICE == "cuda" else 1)
    return {"figure": f"{n / t:.1f} img/s", "img_per_s": n / t, "peak_gib": peak_gib(torch)}


CASES = {"build": case_build, "cuda-tests": case_cuda_tests, "sg2-generate": case_sg2_generate,
         "sg2-bench": case_sg2_bench, "nvidia-train": case_nvidia_train,
         "ugatit": case_ugatit, "sg1": case_sg1, "fid": case_fid}


def run_case(args, rest):
    fn = CASES.get(args.case) or (case_sg2 if args.case.startswith("sg2-") else None)
    result = fn(args, rest)
    print("RESULT " + json.dumps(result), flush=True)


# ----------------------------------------------------------------------------------------------
# Orchestration


def table(results):
    rows = ["| case | what | result | peak memory | note |", "|---|---|---|---|---|"]
    for r in results:
        peak = f"{r['peak_gib']:.2f} GiB" if r.get("peak_gib") is not None else ""
        what = r["what"] if len(r["what"]) < 70 else r["what"].split(":")[0]
        rows.append(f"| {r['case']} | {what} | {r.get('figure', r['status'])} | {peak} | {r.get('note', '')} |")
    return "\n".join(rows)


def headline(results):
    timed = [r for r in results if r.get("headline_hours") is not None]
    if not timed:
        return "480 kimg headline run: no StyleGAN2 timing finished"
    best = min(timed, key=lambda r: r["headline_hours"])
    return (f"The seed's headline run (FreezeD + ADA, 256 px, batch 16, {HEADLINE_KIMG} kimg) projects to "
            f"{best['headline_hours']:.2f} h with {best['case']} ({best['s_per_kimg']:.2f} s/kimg; "
            f"the seed needed about 10 h on an RTX 2080 Ti), without FID and checkpoint time.")


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    rest = argv[argv.index("--") + 1:] if "--" in argv else []
    argv = argv[:argv.index("--")] if "--" in argv else argv
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dry-run", action="store_true", help="print the cases and exit")
    p.add_argument("--only", help="comma list of case names (default: all)")
    p.add_argument("--budget", type=float, default=600, help="seconds for the whole check (default 600)")
    p.add_argument("--peer", action="append", metavar="NAME=PATH",
                   help="a peer checkout for sg2-bench (nvlabs=PATH, rosinality=PATH); nvlabs also adds "
                        "nvidia-train, NVIDIA's own train.py on the same card")
    p.add_argument("--out", default=os.path.join(ROOT, "bench", "results"), help="folder for gpu_check.json/.md")
    p.add_argument("--work", default=None, help=argparse.SUPPRESS)
    p.add_argument("--case", default=None, help=argparse.SUPPRESS)
    p.add_argument("--tf32", type=int, default=1, help=argparse.SUPPRESS)
    p.add_argument("--smoke", action="store_true", help=argparse.SUPPRESS)  # toy sizes on the CPU (tests)
    args = p.parse_args(argv)
    if args.smoke:
        smoke_settings()
    if args.case:
        return run_case(args, rest)

    import torch
    gpu = torch.cuda.is_available() or args.smoke
    work = args.work or tempfile.mkdtemp(prefix="calm_gan_gpu_check_")
    peers = {}
    for item in args.peer or []:
        name, sep, path = item.partition("=")
        if not sep or name not in ("nvlabs", "rosinality") or not os.path.isdir(path):
            raise SystemExit(f"error: --peer {item!r}: expected nvlabs=PATH or rosinality=PATH with PATH a folder")
        peers[name] = os.path.abspath(path)
    cases = plan(work, precision_choices(), peers)
    if args.only:
        keep = set(args.only.split(","))
        unknown = keep - {c[0] for c in cases}
        if unknown:
            raise SystemExit(f"error: --only {','.join(sorted(unknown))}: no such case "
                             f"(cases: {', '.join(c[0] for c in cases)})")
        cases = [c for c in cases if c[0] in keep]
    if args.dry_run or not gpu:
        print(("dry run" if args.dry_run else "no CUDA device here: nothing is run") +
              f"; on a GPU these {len(cases)} cases run, each in a subprocess with its time limit, "
              f"within {args.budget:.0f} s in all:")
        for name, limit, what, cmd in cases:
            print(f"  {name:<16} {f'{limit} s' if cmd else '-':>6}  {what}")
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)
        return 0

    env = dict(os.environ, TORCH_EXTENSIONS_DIR=os.path.join(work, "torch_extensions"), PYTHONUNBUFFERED="1")
    info = {"device": torch.cuda.get_device_name(0) if DEVICE == "cuda" else "cpu (--smoke: toy sizes)",
            "torch": torch.__version__, "cuda": torch.version.cuda,
            "started": time.strftime("%Y-%m-%d %H:%M:%S"), "budget_s": args.budget}
    print(f"{info['device']}, torch {info['torch']}, CUDA {info['cuda']}; work folder {work}", flush=True)
    t_start, results = time.perf_counter(), []
    for name, limit, what, cmd in cases:
        left = args.budget - (time.perf_counter() - t_start)
        rec = {"case": name, "what": what, "limit_s": limit}
        if cmd is None:
            rec["status"] = "not available"
        elif left < 20:
            rec["status"] = "skipped (time budget)"
        else:
            t0 = time.perf_counter()
            try:
                proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True,
                                      timeout=min(limit, left))
                lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
                if lines:
                    rec.update(json.loads(lines[-1][len("RESULT "):]), status="ok")
                else:
                    last = (proc.stderr.strip().splitlines() or proc.stdout.strip().splitlines() or ["?"])[-1]
                    rec.update(status="failed", note=last[-200:])
            except subprocess.TimeoutExpired:
                rec.update(status=f"timed out ({min(limit, left):.0f} s)")
            rec["case_wall_s"] = round(time.perf_counter() - t0, 1)
        results.append(rec)
        print(f"  {name:<16} {rec.get('figure', rec['status'])}  {rec.get('note', '')}", flush=True)
    info["total_s"] = round(time.perf_counter() - t_start, 1)
    summary = headline(results)
    md = (f"GPU check on {info['device']} (torch {info['torch']}, CUDA {info['cuda']}), "
          f"{info['started']}, {info['total_s']:.0f} s in all\n\n{table(results)}\n\n{summary}\n")
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "gpu_check.json"), "w") as f:
        json.dump({"info": info, "results": results, "headline": summary}, f, indent=1)
    with open(os.path.join(args.out, "gpu_check.md"), "w") as f:
        f.write(md)
    print("\n" + md)
    print(f"wrote {os.path.join(args.out, 'gpu_check.json')} and gpu_check.md")
    if args.work is None:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
