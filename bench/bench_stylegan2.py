"""Benchmark 03_stylegan2_ada.py's training step as `03 train` runs it, side by side with the
public implementations (NVlabs/stylegan2-ada-pytorch, rosinality/stylegan2-pytorch).

    python bench/bench_stylegan2.py                                   # calm-gan alone, both configs
    python bench/bench_stylegan2.py --peer nvlabs=../stylegan2-ada-pytorch \\
        --peer rosinality=../stylegan2-pytorch --threads 1 --rounds 3   # one table with ratios
    python bench/bench_stylegan2.py --configs 64-cm1 --what step --profile   # per-op table
    python bench/bench_stylegan2.py --device cuda --precision fp32,bf16,fp16 --rounds 5

What is timed (batch 4, fp32 unless --precision, the same threads for every implementation, in
one process, interleaved rounds; min/median/max over the rounds):
- step: 03's own iteration, built as `03 train` builds it (the parsed `train` flags, 03's
  resolve_settings, _build_training and _choose_step: `train_step`, or the scale-out step where
  03 train would use it, e.g. --precision fp16): D step, lazy R1, G step, lazy path length, G_ema,
  with `--augment none` and with ADA at a fixed p (`--ada-p`). Three kinds of iteration are timed:
  "plain" (i = 1), "+pl" (i = 4: path length) and "+r1+pl" (i = 0: R1 and path length). With R1
  every 16 and path length every 4 iterations, 16 iterations hold 12 plain, 3 "+pl" and 1 "+r1+pl",
  so the real step is (12 plain + 3 pl + 1 r1_pl) / 16, and --iters (timed iterations per kind and
  round) can be 1.
- loop: `03 train` itself (03's main) on a folder of random PNGs for 1 + N iterations
  (--loop-iters N), data loading, logging and bookkeeping included; the first iteration (start-up,
  the loader's workers) is left out. Shown beside train_step's time for the same iterations.
- gen: G forward without gradients, z -> image, random noise, the inference mode of each code.
Peers (--peer NAME=PATH: a checkout the user fetched, imported unmodified, never copied):
- nvlabs: training/networks.py Generator and Discriminator (--fp32's num_fp16_res 0, conv_clamp
  None; with --precision fp16 their mixed precision, 4 fp16 resolutions, conv_clamp 256),
  training/augment.py AugmentPipe with train.py's 'bgc' spec, training/loss.py
  StyleGAN2Loss.accumulate_gradients, run phase by phase as training/training_loop.py's loop body
  runs them (Gmain, Greg every 4, Dmain, Dreg every 16; zero_grad, requires_grad, gain = interval,
  nan_to_num, step; then G_ema with the buffers), with its conv2d/grid_sample gradfix switches on.
- rosinality: model.py Generator/Discriminator and train.py's train() itself (the loop body with
  its loss functions and non_leaking.augment at a fixed p), each call running k iterations of one
  kind: start_iter 1 and d_reg_every / g_reg_every 1 (regularize every iteration) or 10^9 (never).
  op/ builds CUDA at import (torch.utils.cpp_extension.load at module level), which fails on a
  machine without a GPU; on the CPU the bench imports op/ with that one call answered by a stand-in
  object (`cuda_build_skipped`), and op/'s own CPU branches (upfirdn2d_native, the CPU
  fused_leaky_relu) run. dataset.py imports lmdb, which train() does not use: a stand-in module is
  registered if lmdb is not installed. non_leaking.py's second-order grid_sample calls a private
  torch lookup whose form changed (`grid_sampler_backward_compat` answers it as the old form did).
Without a peer only calm-gan's times are printed: a ratio needs a peer measured in the same run.

Configurations: "64-cm1" = 64 px, channel multiplier 1 (NVlabs channel_base 16384); "256-f" =
256 px config-f (channel multiplier 2, channel_base 32768). z and w 512, mapping 8 layers, mbstd
group 4, R1 gamma 10, path length weight 2 on batch // 2, style mixing 0.9, Adam with the lazy
correction. Wall-clock figures on a shared CPU vary with the load: read the ratios (each round's
peer time / calm-gan time), not the absolute times. Writes bench/results/stylegan2_<device>.json.
"""
import argparse
import contextlib
import copy
import importlib
import importlib.util
import io
import json
import os
import platform
import random
import shutil
import statistics
import sys
import tempfile
import time
import types
import warnings

import numpy as np
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

CONFIGS = {"64-cm1": dict(size=64, channel_multiplier=1), "256-f": dict(size=256, channel_multiplier=2)}
# (kind, the iteration index i that has exactly these steps, how many of 16 iterations are this kind)
KINDS = (("plain", 1, 12), ("pl", 4, 3), ("r1_pl", 0, 1))
D_REG_EVERY, G_REG_EVERY = 16, 4   # 03's (and both peers') lazy intervals, which KINDS assumes
NEVER = 10 ** 9                    # a reg interval that no iteration index reaches
PEERS = ("nvlabs", "rosinality")


def load_03():
    spec = importlib.util.spec_from_file_location("stylegan2_ada", os.path.join(ROOT, "03_stylegan2_ada.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed_once(fn, device, iters=1):
    """Seconds per call of fn (iters calls, synchronised)."""
    sync(device)
    t0 = time.perf_counter()
    for _ in range(iters):
        fn()
    sync(device)
    return (time.perf_counter() - t0) / iters


def real_step(kind_times):
    """The iteration at the paper's intervals from the three kinds: (12 plain + 3 pl + 1 r1_pl) / 16."""
    return sum(share * kind_times[kind] for kind, _, share in KINDS) / D_REG_EVERY


def spread(values):
    """(min, median, max) of a list of numbers."""
    return min(values), statistics.median(values), max(values)


def peak_memory_mb(device):
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2 ** 20
    import resource
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB -> MiB (process peak)


# ----------------------------------------------------------------------------------------------
# calm-gan: 03's step, built by 03's own plumbing


def calm_train_argv(cfg, batch, augment, p, precision, device):
    """The `03 train` flags of one configuration (data and run folder added by the loop row)."""
    argv = ["--size", str(cfg["size"]), "--channel-multiplier", str(cfg["channel_multiplier"]),
            "--batch", str(batch), "--device", device.type if device.index is None else str(device)]
    argv += cfg.get("arch", [])  # other 03 architecture flags of the configuration, if any
    if augment == "ada":
        argv += ["--ada-p", str(p)]
    if precision is not None:
        argv += ["--precision", precision]
    return argv


class CalmGan:
    """03's iteration as `03 train` calls it: settings through 03's parser and resolve_settings,
    networks, lazily corrected Adam and augmentation through _build_training, and the step through
    _choose_step (train_step, or the scale-out step for fp16)."""
    name = "calm-gan"

    def __init__(self, m, cfg, batch, augment, p, precision, device, real):
        self.m, self.device, self.real = m, device, real
        args = m.build_parser().parse_args(["train"] + calm_train_argv(cfg, batch, augment, p, precision, device))
        settings, _ = m.resolve_settings(args)
        assert (settings.d_reg_every, settings.g_reg_every) == (D_REG_EVERY, G_REG_EVERY)
        quiet = lambda *a, **k: None
        self.t = m._build_training(settings, None, device, quiet)
        self.step_fn = m._choose_step(self.t, settings, batch, 1, device, quiet)
        self.batch, self.style_dim = batch, settings.style_dim

    def step(self, kind, iters=1):
        i = dict((k, i) for k, i, _ in KINDS)[kind]
        return timed_once(lambda: self.step_fn(i, self.real), self.device, iters)

    def generate(self, iters=1):
        g = self.t.g_ema
        z = torch.randn(self.batch, self.style_dim, device=self.device)
        with torch.no_grad():
            return timed_once(lambda: g([z]), self.device, iters)


# ----------------------------------------------------------------------------------------------
# Peers: imported from the user's checkout, unmodified


@contextlib.contextmanager
def cuda_build_skipped():
    """While rosinality's op/ is imported on a CPU-only machine: its module-level
    torch.utils.cpp_extension.load(...) returns a stand-in instead of compiling CUDA (which fails
    without a GPU). op/ only calls the built module on CUDA tensors; on CPU tensors it takes its
    own fallbacks, so the stand-in is never used (it raises if it is)."""
    from torch.utils import cpp_extension

    class NotBuilt:
        def __init__(self, name):
            self.name = name

        def __getattr__(self, attr):
            raise RuntimeError(f"the CUDA extension {self.name!r} was not built (CPU benchmark)")

    real = cpp_extension.load
    cpp_extension.load = lambda name, *a, **k: NotBuilt(name)
    try:
        yield
    finally:
        cpp_extension.load = real


@contextlib.contextmanager
def grid_sampler_backward_compat():
    """rosinality's non_leaking.py (ADA's second-order grid_sample) fetches
    torch._C._jit_get_operation("aten::grid_sampler_2d_backward") and calls it with 6 arguments;
    current torch returns (op, overload names) there and the op takes a 7th, output_mask. While
    rosinality's step runs, that one lookup gets the op itself with output_mask (True, True): the
    same computation the old call made."""
    real = torch._C._jit_get_operation

    def lookup(name):
        if name == "aten::grid_sampler_2d_backward":
            return lambda *a: torch.ops.aten.grid_sampler_2d_backward(*a[:6], [True, True])
        return real(name)

    torch._C._jit_get_operation = lookup
    try:
        yield
    finally:
        torch._C._jit_get_operation = real


def import_peer(name, path, device):
    """The peer's modules, imported from `path` (added to sys.path)."""
    path = os.path.abspath(path)
    markers = {"nvlabs": "training/loss.py", "rosinality": "op/upfirdn2d.py"}
    if not os.path.isfile(os.path.join(path, markers[name])):
        raise SystemExit(f"error: --peer {name}={path}: no {markers[name]} there (expected a checkout of "
                         f"{'NVlabs/stylegan2-ada-pytorch' if name == 'nvlabs' else 'rosinality/stylegan2-pytorch'})")
    if path not in sys.path:
        sys.path.insert(1, path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if name == "nvlabs":
            mods = {k: importlib.import_module(k) for k in (
                "training.networks", "training.loss", "training.augment", "torch_utils.misc",
                "torch_utils.ops.conv2d_gradfix", "torch_utils.ops.grid_sample_gradfix")}
            return types.SimpleNamespace(**{k.split(".")[-1]: v for k, v in mods.items()})
        try:
            importlib.import_module("lmdb")
        except ImportError:  # dataset.py's import; train() itself reads no lmdb
            sys.modules["lmdb"] = types.ModuleType("lmdb")
        ctx = cuda_build_skipped() if device.type != "cuda" else contextlib.nullcontext()
        with ctx:
            model = importlib.import_module("model")
            spec = importlib.util.spec_from_file_location("rosinality_train", os.path.join(path, "train.py"))
            train = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(train)
        return types.SimpleNamespace(model=model, train=train)


# NVlabs train.py augpipe_specs['bgc'] (the ops the 'bgc' pipeline enables)
NVLABS_BGC = dict(xflip=1, rotate90=1, xint=1, scale=1, rotate=1, aniso=1, xfrac=1,
                  brightness=1, contrast=1, lumaflip=1, hue=1, saturation=1)


class NVlabs:
    """NVlabs' networks, AugmentPipe and StyleGAN2Loss, phases as training_loop.py runs them."""
    name = "nvlabs"

    def __init__(self, mods, cfg, batch, augment, p, precision, device, real):
        self.mods, self.device, self.real, self.batch = mods, device, real, batch
        fp16 = precision == "fp16"
        common = dict(c_dim=0, img_resolution=cfg["size"], img_channels=3)
        base = int(16384 * cfg["channel_multiplier"])
        mixed = dict(num_fp16_res=4 if fp16 else 0, conv_clamp=256 if fp16 else None)  # their --fp32: 0, None
        torch.manual_seed(0)
        net = mods.networks
        self.G = net.Generator(z_dim=512, w_dim=512, **common, mapping_kwargs=dict(num_layers=8),
                               synthesis_kwargs=dict(channel_base=base, channel_max=512, **mixed))
        self.D = net.Discriminator(**common, channel_base=base, channel_max=512, **mixed,
                                   epilogue_kwargs=dict(mbstd_group_size=4))
        self.G = self.G.train().requires_grad_(False).to(device)
        self.D = self.D.train().requires_grad_(False).to(device)
        self.G_ema = copy.deepcopy(self.G).eval()
        self.pipe = None
        if augment == "ada":
            self.pipe = mods.augment.AugmentPipe(**NVLABS_BGC).train().requires_grad_(False).to(device)
            self.pipe.p.copy_(torch.as_tensor(p))
        self.loss = mods.loss.StyleGAN2Loss(device=device, G_mapping=self.G.mapping, G_synthesis=self.G.synthesis,
                                            D=self.D, augment_pipe=self.pipe, style_mixing_prob=0.9, r1_gamma=10,
                                            pl_batch_shrink=2, pl_decay=0.01, pl_weight=2)
        self.phases = []
        for name, module, interval in (("G", self.G, G_REG_EVERY), ("D", self.D, D_REG_EVERY)):
            ratio = interval / (interval + 1)  # training_loop's lazy-regularization correction
            opt = torch.optim.Adam(module.parameters(), lr=0.002 * ratio, betas=[0 ** ratio, 0.99 ** ratio], eps=1e-8)
            self.phases += [(name + "main", module, opt, 1), (name + "reg", module, opt, interval)]
        self.c = torch.empty([batch, 0], device=device)

    def iteration(self, batch_idx):
        """training_loop.py's body for one batch (one process, batch_gpu = batch)."""
        misc = self.mods.misc
        all_gen_z = torch.randn([len(self.phases) * self.batch, 512], device=self.device).split(self.batch)
        for (name, module, opt, interval), gen_z in zip(self.phases, all_gen_z):
            if batch_idx % interval != 0:
                continue
            opt.zero_grad(set_to_none=True)
            module.requires_grad_(True)
            self.loss.accumulate_gradients(phase=name, real_img=self.real, real_c=self.c, gen_z=gen_z,
                                           gen_c=self.c, sync=True, gain=interval)
            module.requires_grad_(False)
            for param in module.parameters():
                if param.grad is not None:
                    misc.nan_to_num(param.grad, nan=0, posinf=1e5, neginf=-1e5, out=param.grad)
            opt.step()
        ema_beta = 0.5 ** (self.batch / (10 * 1000))  # ema_kimg 10, no ramp-up (config-f)
        for p_ema, p in zip(self.G_ema.parameters(), self.G.parameters()):
            p_ema.copy_(p.lerp(p_ema, ema_beta))
        for b_ema, b in zip(self.G_ema.buffers(), self.G.buffers()):
            b_ema.copy_(b)

    def step(self, kind, iters=1):
        i = dict((k, i) for k, i, _ in KINDS)[kind]
        # their training_loop's switches (custom grads where their torch version allows, no TF32)
        self.mods.conv2d_gradfix.enabled = self.mods.grid_sample_gradfix.enabled = True
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "gradfix not supported on PyTorch 2.x. Falling back"
            return timed_once(lambda: self.iteration(i), self.device, iters)

    def generate(self, iters=1):
        z = torch.randn(self.batch, 512, device=self.device)
        with torch.no_grad():
            return timed_once(lambda: self.G_ema(z, self.c), self.device, iters)


class Rosinality:
    """rosinality's model.py networks and train.py's train() (its loop body, unmodified)."""
    name = "rosinality"

    def __init__(self, mods, cfg, batch, augment, p, precision, device, real):
        if precision not in (None, "fp32"):
            raise ValueError("rosinality/stylegan2-pytorch trains in fp32 only")
        self.mods, self.device, self.real = mods, device, real
        model, size, cm = mods.model, cfg["size"], cfg["channel_multiplier"]
        torch.manual_seed(0)
        self.g = model.Generator(size, 512, 8, channel_multiplier=cm).to(device)
        self.d = model.Discriminator(size, channel_multiplier=cm).to(device)
        self.g_ema = model.Generator(size, 512, 8, channel_multiplier=cm).to(device)
        self.g_ema.eval()
        mods.train.accumulate(self.g_ema, self.g, 0)
        g_ratio, d_ratio = G_REG_EVERY / (G_REG_EVERY + 1), D_REG_EVERY / (D_REG_EVERY + 1)
        self.g_optim = torch.optim.Adam(self.g.parameters(), lr=0.002 * g_ratio, betas=(0 ** g_ratio, 0.99 ** g_ratio))
        self.d_optim = torch.optim.Adam(self.d.parameters(), lr=0.002 * d_ratio, betas=(0 ** d_ratio, 0.99 ** d_ratio))
        # train.py's argparse defaults for what train() reads
        self.args = argparse.Namespace(batch=batch, n_sample=64, latent=512, mixing=0.9, r1=10, path_regularize=2,
                                       path_batch_shrink=2, augment=augment == "ada", augment_p=p if augment == "ada" else 0,
                                       ada_target=0.6, ada_length=500 * 1000, ada_every=256, distributed=False,
                                       wandb=False, local_rank=0)

    def step(self, kind, iters=1):
        r1 = kind == "r1_pl"
        self.args.start_iter, self.args.iter = 1, iters  # iterations i = 1 .. iters
        self.args.d_reg_every = 1 if r1 else NEVER
        self.args.g_reg_every = 1 if kind in ("pl", "r1_pl") else NEVER
        loader = [self.real.clone() for _ in range(iters)]  # fresh batches, as a DataLoader gives

        def run():
            with contextlib.redirect_stderr(io.StringIO()), grid_sampler_backward_compat():  # its tqdm bar
                self.mods.train.train(self.args, loader, self.g, self.d, self.g_optim, self.d_optim,
                                      self.g_ema, self.device)
        return timed_once(run, self.device, 1) / iters

    def generate(self, iters=1):
        z = torch.randn(self.args.batch, 512, device=self.device)
        with torch.no_grad():
            return timed_once(lambda: self.g_ema([z]), self.device, iters)


# ----------------------------------------------------------------------------------------------
# The loop row: `03 train` itself


def make_image_folder(folder, size, n=16):
    from PIL import Image
    os.makedirs(folder, exist_ok=True)
    rng = np.random.RandomState(0)
    for i in range(n):
        Image.fromarray(rng.randint(0, 256, (size, size, 3), dtype=np.uint8)).save(os.path.join(folder, f"{i:03d}.png"))
    return folder


def time_03_train(m, data, work, cfg, batch, augment, p, precision, device, n_iters):
    """Run `03 train` for 1 + n_iters iterations; returns the wall seconds of iterations 1..n_iters
    (each from the previous log line to its own: data loading, the step, logging), noted at each
    of 03's per-iteration log lines."""
    out = tempfile.mkdtemp(prefix="run_", dir=work)
    os.rmdir(out)
    argv = ["train", "--data", data, "--out", out, "--iter", str(1 + n_iters), "--log-every", "1",
            "--fid-every", "0", "--sample-every", str(NEVER), "--ckpt-every", str(NEVER), "--n-sample", "1",
            "--no-progress"] + calm_train_argv(cfg, batch, augment, p, precision, device)
    marks, real_log_step = [], m._log_step

    def noting(*a, **k):
        real_log_step(*a, **k)
        sync(device)
        marks.append(time.perf_counter())

    m._log_step = noting
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            m.main(argv)
    finally:
        m._log_step = real_log_step
        shutil.rmtree(out, ignore_errors=True)
    return [b - a for a, b in zip(marks, marks[1:])]  # iterations 1 .. n_iters


def kind_of(i):
    if i % D_REG_EVERY == 0:
        return "r1_pl"
    return "pl" if i % G_REG_EVERY == 0 else "plain"


# ----------------------------------------------------------------------------------------------
# Profile: where the time of one real step goes


def categorize(event):
    """Category of a profiler event by its name and input shapes."""
    name = event.key
    if name.startswith("Optimizer.") or "adam" in name.lower():
        return "optimizer (Adam)"
    if name in ("_FusedLeakyReLU", "_FusedLeakyReLUGrad", "_FusedLeakyReLUBackward",
                "_FusedLeakyReLUGradBackward") or "bias_act" in name or "leaky_relu" in name:
        return "fused bias + leaky ReLU"
    if "conv" in name:
        shapes = [sh for sh in (event.input_shapes or []) if isinstance(sh, list)]
        weight = shapes[2] if "backward" in name and len(shapes) > 2 else shapes[1] if len(shapes) > 1 else []
        if len(weight) == 4 and weight[1] == 1:  # depthwise [C, 1, kh, kw]: the FIR filters
            return "upfirdn2d (FIR depthwise conv)"
        return "convolutions"
    if name in ("aten::mm", "aten::bmm", "aten::addmm", "aten::linear", "aten::matmul"):
        return "matmul (mapping, modulation, 1x1)"
    if name in ("aten::lerp_", "aten::_foreach_lerp_"):
        return "G_ema (lerp)"
    if name in ("aten::constant_pad_nd", "aten::grid_sampler_2d", "aten::grid_sampler_2d_backward"):
        return "augmentation / padding"
    return "elementwise and copies"


def profile_step(impl, device, categories_of=categorize):
    """One profiled iteration of each kind, weighted to the real step: {category: seconds}."""
    from torch.profiler import ProfilerActivity, profile
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    total = {}
    for kind, _, share in KINDS:
        with profile(activities=acts, record_shapes=True) as prof:
            wall = impl.step(kind)
        cats, self_sum = {}, 0.0
        for ev in prof.key_averages(group_by_input_shape=True):
            t = ev.self_cpu_time_total / 1e6
            self_sum += t
            c = categories_of(ev)
            cats[c] = cats.get(c, 0.0) + t
        cats["Python and autograd bookkeeping (wall - op time)"] = max(wall - self_sum, 0.0)
        cats["wall (profiled)"] = wall
        for c, t in cats.items():
            total[c] = total.get(c, 0.0) + share * t / D_REG_EVERY
    return total


def print_profile(name, prof):
    wall = prof.pop("wall (profiled)")
    print(f"\nprofile of {name}'s real step (12:3:1 of 16 iterations, profiler on): {wall:.3f} s")
    for c, t in sorted(prof.items(), key=lambda kv: -kv[1]):
        print(f"  {c:<52} {t:8.3f} s  {100 * t / wall:5.1f} %")
    prof["wall (profiled)"] = wall


# ----------------------------------------------------------------------------------------------
# Driver


def parse_peers(items):
    peers = {}
    for item in items or []:
        name, sep, path = item.partition("=")
        if not sep or name not in PEERS or not path:
            raise SystemExit(f"error: --peer {item!r}: expected NAME=PATH with NAME one of {', '.join(PEERS)}")
        peers[name] = path
    return peers


def fmt(t):
    lo, med, hi = spread(t)
    return f"{med:8.3f} [{lo:.3f}-{hi:.3f}]"


def fmt_ratio(r):
    lo, med, hi = spread(r)
    return f"{med:5.2f}x [{lo:.2f}-{hi:.2f}]"


def table(rows, names):
    """rows: (config, what, {impl: [seconds per round]}); ratio of each peer to calm-gan per round."""
    head = f"{'configuration':<22} {'what':<34} {'calm-gan s':>24}"
    for n in names[1:]:
        head += f" {n + ' s':>24} {n + '/calm-gan':>20}"
    lines = [head, "-" * len(head)]
    for config, what, times in rows:
        line = f"{config:<22} {what:<34} {fmt(times['calm-gan']) if 'calm-gan' in times else '':>24}"
        for n in names[1:]:
            if n in times and "calm-gan" in times:
                ratios = [p / c for p, c in zip(times[n], times["calm-gan"])]
                line += f" {fmt(times[n]):>24} {fmt_ratio(ratios):>20}"
            else:
                line += f" {'':>24} {'':>20}"
        lines.append(line)
    return "\n".join(lines)


def build_impls(m, peer_mods, cfg, batch, augment, p, precision, device, real):
    impls = [CalmGan(m, cfg, batch, augment, p, precision, device, real)]
    for name, mods in peer_mods.items():
        cls = {"nvlabs": NVlabs, "rosinality": Rosinality}[name]
        try:
            impls.append(cls(mods, cfg, batch, augment, p, precision, device, real))
        except ValueError as e:
            print(f"  ({name} left out at {precision}: {e})")
    return impls


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--configs", default="64-cm1,256-f", help="comma list of " + ", ".join(CONFIGS))
    p.add_argument("--what", default="step,loop,gen", help="comma list of step, loop, gen")
    p.add_argument("--augment", default="none,ada", help="comma list of none, ada (ADA at the fixed --ada-p)")
    p.add_argument("--ada-p", type=float, default=0.2, help="the fixed ADA p (default 0.2)")
    p.add_argument("--precision", default=None, help="comma list of fp32, bf16, fp16 (default: fp32; on CUDA "
                                                     "fp32 and 03's default precision there)")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds (min/median/max over them)")
    p.add_argument("--iters", type=int, default=1, help="timed iterations per kind of iteration and round")
    p.add_argument("--loop-iters", type=int, default=3, help="timed iterations of `03 train` per round")
    p.add_argument("--threads", type=int, default=0, help="torch threads for everyone (0 = torch default)")
    p.add_argument("--tf32", type=int, default=0, help="CUDA TF32 matmul/conv (NVlabs' loop: off)")
    p.add_argument("--peer", action="append", metavar="NAME=PATH",
                   help="a checkout of NVlabs/stylegan2-ada-pytorch (nvlabs=PATH) or rosinality/stylegan2-pytorch "
                        "(rosinality=PATH), timed side by side")
    p.add_argument("--profile", action="store_true", help="also a per-op table of each implementation's real step")
    p.add_argument("--out", default=None, help="JSON path (default bench/results/stylegan2_<device>.json)")
    args = p.parse_args(argv)

    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = bool(args.tf32)
    m = load_03()
    whats = args.what.split(",")
    unknown = [c for c in args.configs.split(",") if c not in CONFIGS] + \
        [w for w in whats if w not in ("step", "loop", "gen")] + \
        [a for a in args.augment.split(",") if a not in ("none", "ada")]
    if unknown:
        raise SystemExit(f"error: unknown {', '.join(unknown)} (configs: {', '.join(CONFIGS)}; what: step, loop, "
                         f"gen; augment: none, ada)")
    if args.precision:
        precisions = args.precision.split(",")
    else:
        precisions = ["fp32"] + ([m.default_precision(device)] if device.type == "cuda" else [])
        precisions = list(dict.fromkeys(precisions))
    peers = parse_peers(args.peer)
    peer_mods = {name: import_peer(name, path, device) for name, path in peers.items()}
    names = ["calm-gan"] + list(peer_mods)
    info = {"device": str(device), "device_name": torch.cuda.get_device_name(device) if device.type == "cuda"
            else platform.processor() or platform.machine(), "torch": torch.__version__,
            "threads": torch.get_num_threads(), "batch": args.batch, "ada_p": args.ada_p, "rounds": args.rounds,
            "iters": args.iters, "peers": peers, "load_avg_start": os.getloadavg(), "command": sys.argv,
            "results": []}
    print(f"device {info['device']} ({info['device_name']}), torch {torch.__version__}, threads "
          f"{info['threads']}, batch {args.batch}, {args.rounds} interleaved rounds, load avg "
          f"{' '.join(f'{v:.1f}' for v in info['load_avg_start'])}")
    if not peer_mods:
        print("no --peer given: calm-gan's times only (a ratio needs a peer measured in the same run)")
    rows, profiles = [], {}
    work = tempfile.mkdtemp(prefix="calm_gan_bench_sg2_")
    try:
        for cname in args.configs.split(","):
            cfg = CONFIGS[cname]
            torch.manual_seed(0)
            real = (torch.rand(args.batch, 3, cfg["size"], cfg["size"]) * 2 - 1).to(device)
            data = make_image_folder(os.path.join(work, f"data_{cfg['size']}"), cfg["size"]) if "loop" in whats else None
            for precision in precisions:
                prec_label = "" if precision == "fp32" else f" {precision}"
                if "gen" in whats and precision == precisions[0]:
                    impls = build_impls(m, peer_mods, cfg, args.batch, "none", 0.0, precision, device, real)
                    for impl in impls:
                        impl.generate()  # warm-up
                    times = {i.name: [] for i in impls}
                    for r in range(args.rounds):
                        for impl in impls[r % len(impls):] + impls[:r % len(impls)]:
                            times[impl.name].append(impl.generate(args.iters))
                    rows.append((cname + prec_label, f"G forward, batch {args.batch}", times))
                    print(table(rows[-1:], names).splitlines()[-1], flush=True)
                    del impls
                for augment in args.augment.split(","):
                    label = f"{cname}{prec_label} {'ADA p=' + str(args.ada_p) if augment == 'ada' else 'no aug'}"
                    impls = build_impls(m, peer_mods, cfg, args.batch, augment, args.ada_p, precision, device, real) \
                        if "step" in whats else []
                    for impl in impls:
                        for kind, _, _ in KINDS:
                            impl.step(kind)  # warm-up of each kind
                    kinds = {i.name: {k: [] for k, _, _ in KINDS} for i in impls}
                    loop, loop_same = [], []
                    for r in range(args.rounds):
                        for impl in impls[r % len(impls):] + impls[:r % len(impls)]:
                            for kind, _, _ in KINDS:
                                kinds[impl.name][kind].append(impl.step(kind, args.iters))
                        if "loop" in whats:
                            its = time_03_train(m, data, work, cfg, args.batch, augment, args.ada_p,
                                                precision, device, args.loop_iters)
                            loop.append(sum(its) / len(its))
                            if impls:  # train_step's time for the same iterations 1..N, this round
                                ks = kinds["calm-gan"]
                                loop_same.append(statistics.mean(ks[kind_of(i)][-1] for i in range(1, len(its) + 1)))
                    if impls:
                        real_times = {n: [real_step({k: kinds[n][k][r] for k in kinds[n]}) for r in range(args.rounds)]
                                      for n in kinds}
                        rows.append((label, "real step (12:3:1 of 16)", real_times))
                        print(table(rows[-1:], names).splitlines()[-1], flush=True)
                        for kind, _, share in KINDS:
                            rows.append((label, f"  {kind} iteration ({share} of 16)",
                                         {n: kinds[n][kind] for n in kinds}))
                            print(table(rows[-1:], names).splitlines()[-1], flush=True)
                    if loop:
                        which = ", ".join(f"{i}:{kind_of(i)}" for i in range(1, args.loop_iters + 1))
                        rows.append((label, f"03 train loop, i=1..{args.loop_iters}", {"calm-gan": loop}))
                        print(table(rows[-1:], names).splitlines()[-1] + f"   ({which})", flush=True)
                        if loop_same:
                            rows.append((label, "  train_step, same iterations", {"calm-gan": loop_same}))
                            print(table(rows[-1:], names).splitlines()[-1], flush=True)
                    if args.profile and impls:
                        for impl in impls:
                            prof = profile_step(impl, device)
                            profiles[f"{label} {impl.name}"] = prof
                            print_profile(f"{label} {impl.name}", prof)
                    del impls
                    info["peak_memory_mb"] = peak_memory_mb(device)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    info["load_avg_end"] = os.getloadavg()
    print(f"\n{table(rows, names)}\n(seconds: median [min-max] over {args.rounds} interleaved rounds; ratio = the "
          f"peer's time / calm-gan's in the same round; load avg at the end "
          f"{' '.join(f'{v:.1f}' for v in info['load_avg_end'])})")
    info["results"] = [{"config": c, "what": w, "seconds": t} for c, w, t in rows]
    info["profiles"] = profiles
    out = args.out or os.path.join(ROOT, "bench", "results", f"stylegan2_{device.type}.json")
    os.makedirs(os.path.dirname(out), exist_ok=True)
    with open(out, "w") as f:
        json.dump(info, f, indent=1)
    print(f"wrote {out}")
    return info


if __name__ == "__main__":
    main()
