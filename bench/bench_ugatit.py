"""Benchmark U-GAT-IT training steps (05_ugatit.py): s/iter, images/s and peak memory, full and light.

What is timed, per configuration (variant:size:batch), on synthetic images in [-1, 1]:
- ours: 05's training step as `05_ugatit.py train` calls it (`setup_training`: the step the loop's
  rule picks, with its optimisers, recomputation and --amp), one call per iteration; --step plain
  and --step fast time 05's train_step and train_step_fast instead (what that rule was decided on).
- peer (--peer ugatit=PATH, a checkout of znxlwm/UGATIT-pytorch, never part of this repository):
  its own iteration, its networks.py and UGATIT.py imported unmodified. Its UGATIT object is built
  by its build_model() on a one-image temporary dataset, its train() loop then runs N iterations,
  and each iteration is the time between two of the loop's per-step progress prints (its module's
  `print` is pointed at a clock; its data loaders are replaced by ones that hand out the same
  batches as ours). Its sample sheets, checkpoints and lr decay are kept out (print_freq, save_freq
  beyond N, decay_flag off; ours sets the lr outside the step too). Two things in it do not run on
  current PyTorch / without OpenCV and are bridged, not edited: the loaders' iterators get the
  Python-2 `.next()` its loop calls, and an empty `cv2` module stands in when OpenCV is missing
  (utils.py imports it; the iteration never calls it).
- reference (--loop reference|both): the same networks as ours driven the way UGATIT.py drives
  them (its train() loop rewritten here, with its un-fused AdaILN/ILN and CAM concatenation): a
  same-machine check of what the step order and the fusions save, without a peer checkout.

Each implementation runs in its own worker process (its peak resident memory, ru_maxrss, or peak
CUDA memory, is its own), all with the same thread count. The workers are built and warmed up
first, then timed in interleaved rounds (round r runs --iters iterations of each, the order
rotated each round), so that a change in the machine's load falls on all of them; the table
gives min / median / max over all timed iterations and, per implementation, its median over
ours with the range of the per-round ratios. On a shared CPU, compare ratios, not absolute times.

    python bench/bench_ugatit.py                                   # default grid, CPU or CUDA
    python bench/bench_ugatit.py --configs full:128:1 light:128:1 --peer ugatit=../UGATIT-pytorch --threads 2
    python bench/bench_ugatit.py --configs full:128:1 light:128:1 --loop both --iters 1 --threads 1
    python bench/bench_ugatit.py --configs full:64:1 --ch 16 --step plain --step fast --rounds 5
    python bench/bench_ugatit.py --configs full:128:4 --amp bf16   # CUDA: what --amp saves
"""
import argparse
import contextlib
import datetime
import importlib.util
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
import types

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PEER_NAME = "UGATIT-pytorch"


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
    return d_loss.item()


def train_argv(args, variant, size, batch):
    """The `05_ugatit.py train` flags of this configuration (what setup_training reads)."""
    argv = ["train", "--img-size", str(size), "--batch", str(batch), "--ch", str(args.ch), "--n-res", str(args.n_res)]
    argv += ["--light"] if variant == "light" else []
    argv += ["--amp", args.amp] if args.amp else []
    argv += ["--no-recompute"] if args.no_recompute else []
    return argv


def batches(torch, round_index, n, batch, size, device):
    """n (real_A, real_B) pairs, the same in every worker for the same round."""
    g = torch.Generator().manual_seed(1000 + round_index)
    return [tuple((torch.rand(batch, 3, size, size, generator=g) * 2 - 1).to(device) for _ in "AB")
            for _ in range(n)]


def build_ours(torch, F, args, impl, variant, size, batch, device):
    """-> (run, step name): run(pairs) -> (wall, process CPU) seconds per iteration, for ours (the loop's
    step, or --step plain / fast) or for the reference rewrite."""
    u = load_ugatit()
    if impl == "reference":
        u.layer_instance_norm = unfused_norm(torch)
        u.cam_features = unfused_cam(torch, F)
    torch.manual_seed(0)
    nets = u.build_networks(args.ch, args.n_res, size, variant == "light")
    for net in nets.values():
        net.to(device).train()
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    if impl == "reference":
        for net in nets.values():
            net.fold_cam = False            # the concatenation of u.cam_features (replaced above)
        g_optim, d_optim = u.adam_optimizers(nets, 1e-4, 1e-4)
        w = u.loss_weights(u.build_parser().parse_args(["train"]))
        autocast = u.autocast_factory(args.amp, device)

        def step(real_A, real_B):
            with autocast():
                return reference_step(u, torch, F, nets, g_optim, d_optim, real_A, real_B, w)
        kind = "reference"
    else:                                   # what `05_ugatit.py train` sets up
        cfg = u.build_parser().parse_args(train_argv(args, variant, size, batch))
        kind = "fast" if impl == "ours" else impl  # the loop's rule: setup_training's docstring
        step = u.setup_training(nets, cfg, device, kind=kind)[0]

    def run(pairs):
        times = []
        for real_A, real_B in pairs:
            sync()
            t0, c0 = time.perf_counter(), time.process_time()
            step(real_A, real_B)
            sync()
            times.append((time.perf_counter() - t0, time.process_time() - c0))
        return times
    return run, kind


class _Feeder:
    """Stands in for one of the peer's DataLoaders: iter() gives an iterator with the `.next()` its
    loop calls (Python 2 style), handing out the current round's batches as (images, label)."""

    def __init__(self):
        self.items = []

    def __iter__(self):
        feeder = self

        class _It:
            def __init__(self):
                self.i = 0

            def __next__(self):
                item = feeder.items[self.i % len(feeder.items)]
                self.i += 1
                return item, 0
            next = __next__
        return _It()


def build_peer(torch, path, variant, size, batch, args, device, work):
    """The peer's UGATIT object on a one-image dataset in `work`; -> (run, name): run(pairs) -> (wall, process
    CPU) seconds per iteration."""
    from PIL import Image
    path = os.path.abspath(path)
    if not os.path.isfile(os.path.join(path, "UGATIT.py")) or not os.path.isfile(os.path.join(path, "networks.py")):
        raise SystemExit(f"--peer ugatit={path}: not a checkout of znxlwm/UGATIT-pytorch (no UGATIT.py, networks.py)")
    try:
        import cv2  # noqa: F401  (utils.py's import; the iteration does not use it)
    except ImportError:
        sys.modules["cv2"] = types.ModuleType("cv2")
    sys.path.insert(0, path)
    for d in ("trainA", "trainB", "testA", "testB"):
        os.makedirs(os.path.join(work, "dataset", "bench", d), exist_ok=True)
        Image.new("RGB", (size, size), (128, 64, 32)).save(os.path.join(work, "dataset", "bench", d, "0.png"))
    os.chdir(work)                          # build_model reads dataset/<name>/... relative to the cwd
    peer = importlib.import_module("UGATIT")
    opts = argparse.Namespace(  # main.py's flags: its defaults, this configuration, nothing written
        phase="train", light=variant == "light", dataset="bench", iteration=1, batch_size=batch,
        print_freq=10 ** 9, save_freq=10 ** 9, decay_flag=False, lr=1e-4, weight_decay=1e-4,
        adv_weight=1, cycle_weight=10, identity_weight=10, cam_weight=1000, ch=args.ch, n_res=args.n_res,
        n_dis=6, img_size=size, img_ch=3, result_dir=os.path.join(work, "results"), device=device.type,
        benchmark_flag=False, resume=False)
    with contextlib.redirect_stdout(sys.stderr):
        torch.manual_seed(0)
        gan = peer.UGATIT(opts)
        gan.build_model()
    feeders = {"A": _Feeder(), "B": _Feeder()}
    gan.trainA_loader, gan.trainB_loader = feeders["A"], feeders["B"]
    stamps = []
    peer.print = lambda *a, **k: stamps.append((time.perf_counter(), time.process_time()))  # its lines -> a clock

    def run(pairs):
        feeders["A"].items = [a.cpu() for a, _ in pairs]
        feeders["B"].items = [b.cpu() for _, b in pairs]
        gan.iteration = len(pairs)
        stamps.clear()
        gan.train()                         # 'training start !', then one line per iteration
        if len(stamps) != len(pairs) + 1:
            raise RuntimeError(f"the peer's loop printed {len(stamps)} lines for {len(pairs)} iterations")
        return [(b[0] - a[0], b[1] - a[1]) for a, b in zip(stamps, stamps[1:])]
    return run, "UGATIT.py train()"


def worker(args):
    """One implementation of one configuration in this process.

    One-shot (bench/gpu_check.py): warm-up, timed iterations, one RESULT line. --serve: after the
    warm-up prints READY, then for each line N on stdin times N iterations of the next round and
    prints TIMES; `quit` prints RESULT (peak memory) and exits.
    """
    import torch
    import torch.nn.functional as F
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    variant, size, batch = args.worker.split(":")
    size, batch = int(size), int(batch)
    impl = args.impl or ("reference" if args.loop == "reference" else "ours")
    with tempfile.TemporaryDirectory(prefix="bench_ugatit_") as work:
        if impl == "peer":
            run, kind = build_peer(torch, args.peer_path, variant, size, batch, args, device, work)
        else:
            run, kind = build_ours(torch, F, args, impl, variant, size, batch, device)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        run(batches(torch, -1, args.warmup, batch, size, device))

        def result(times):
            wall, cpu = [t for t, _ in times], sorted(c for _, c in times)
            s_iter = sorted(wall)[len(wall) // 2] if wall else None
            r = {"config": args.worker, "impl": impl, "step": kind, "loop": args.loop, "amp": args.amp,
                 "device": str(device), "threads": torch.get_num_threads(), "s_per_iter_median": s_iter,
                 "s_per_iter_all": wall, "cpu_s_per_iter_median": cpu[len(cpu) // 2] if cpu else None,
                 "img_per_s": batch / s_iter if s_iter else None,
                 "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20}
            if device.type == "cuda":
                r["peak_cuda_gib"] = torch.cuda.max_memory_allocated() / 2 ** 30
            return r

        if not args.serve:
            print("RESULT " + json.dumps(result(run(batches(torch, 0, args.iters, batch, size, device)))), flush=True)
            return
        print("READY " + json.dumps({"step": kind}), flush=True)
        all_times, round_index = [], 0
        for line in sys.stdin:
            if line.strip() == "quit":
                break
            times = run(batches(torch, round_index, int(line), batch, size, device))
            all_times += times
            round_index += 1
            print("TIMES " + json.dumps([t for t, _ in times]), flush=True)
        print("RESULT " + json.dumps(result(all_times)), flush=True)


class Worker:
    """A --serve worker process and its line protocol."""

    def __init__(self, cmd, label, timeout):
        self.label, self.timeout = label, timeout
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     text=True, cwd=ROOT)
        self.error = None
        self.info = self.expect("READY")

    def expect(self, tag):
        line = self.proc.stdout.readline()
        while line and not line.startswith(tag + " "):
            line = self.proc.stdout.readline()
        if not line:
            err = self.proc.stderr.read().strip().splitlines()
            self.error = err[-1] if err else f"exited with {self.proc.wait()}"
            return None
        return json.loads(line[len(tag) + 1:])

    def ask(self, n):
        if self.error:
            return None
        self.proc.stdin.write(f"{n}\n")
        self.proc.stdin.flush()
        return self.expect("TIMES")

    def finish(self):
        if self.error:
            return None
        self.proc.stdin.write("quit\n")
        self.proc.stdin.flush()
        r = self.expect("RESULT")
        self.proc.wait()
        return r


def spread(xs):
    xs = sorted(xs)
    return xs[0], xs[len(xs) // 2], xs[-1]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--configs", nargs="+", default=None,
                   help="variant:size:batch items (default: full and light x 128, 256 x batch 1, 4)")
    p.add_argument("--loop", choices=("ours", "reference", "both"), default="ours",
                   help="ours: 05's step as the loop calls it; reference: UGATIT.py's order rewritten; both")
    p.add_argument("--step", action="append", choices=("plain", "fast"), default=None,
                   help="time 05's train_step (plain) or train_step_fast (fast) instead of the loop's choice; "
                        "give it twice to time both side by side")
    p.add_argument("--peer", action="append", default=[], metavar="ugatit=PATH",
                   help="also time the peer's own iteration: a checkout of znxlwm/UGATIT-pytorch")
    p.add_argument("--iters", type=int, default=2, help="timed iterations per implementation and round")
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--ch", type=int, default=64)
    p.add_argument("--n-res", type=int, default=4)
    p.add_argument("--amp", choices=("bf16", "fp16"), default=None)
    p.add_argument("--no-recompute", action="store_true", help="ours: keep generator activations")
    p.add_argument("--device", default=None)
    p.add_argument("--threads", type=int, default=None, help="CPU threads of every worker (default: torch's)")
    p.add_argument("--timeout", type=float, default=1800, help="seconds per configuration")
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    p.add_argument("--impl", default=None, help=argparse.SUPPRESS)
    p.add_argument("--peer-path", default=None, help=argparse.SUPPRESS)
    p.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    import torch
    args.device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if args.worker:
        return worker(args)

    peer_path = None
    for item in args.peer:
        name, _, path = item.partition("=")
        if name != "ugatit" or not path:
            p.error(f"--peer {item}: expected ugatit=PATH (a checkout of znxlwm/UGATIT-pytorch)")
        if not os.path.isfile(os.path.join(path, "UGATIT.py")):
            p.error(f"--peer {item}: {path} has no UGATIT.py (not a checkout of znxlwm/UGATIT-pytorch)")
        peer_path = os.path.abspath(path)
    impls = list(dict.fromkeys(args.step)) if args.step else (["reference"] if args.loop == "reference" else ["ours"])
    if args.loop == "both":
        impls.append("reference")
    if peer_path:
        impls.append("peer")
    threads = args.threads or torch.get_num_threads()
    configs = args.configs or [f"{v}:{s}:{b}" for v in ("full", "light") for s in (128, 256) for b in (1, 4)]
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    print(f"device {args.device}, torch {torch.__version__}, threads {threads} per worker, cpus {os.cpu_count()}, "
          f"load average {load}")
    if args.device == "cuda":
        print("gpu", torch.cuda.get_device_name(0))
    print(f"ch {args.ch}, n_res {args.n_res}, amp {args.amp}, warm-up {args.warmup}, "
          f"{args.rounds} interleaved rounds x {args.iters} timed iterations per implementation")
    label = {"ours": "calm-gan", "plain": "calm-gan train_step", "fast": "calm-gan train_step_fast",
             "reference": "UGATIT.py order, rewritten", "peer": PEER_NAME}
    rows, results = [], []
    for cfg in configs:
        workers = {}
        for impl in impls:
            cmd = [sys.executable, os.path.abspath(__file__), "--worker", cfg, "--impl", impl, "--serve",
                   "--warmup", str(args.warmup), "--ch", str(args.ch), "--n-res", str(args.n_res),
                   "--device", args.device, "--threads", str(threads)]
            cmd += ["--amp", args.amp] if args.amp else []
            cmd += ["--no-recompute"] if args.no_recompute else []
            cmd += ["--peer-path", peer_path] if impl == "peer" else []
            workers[impl] = Worker(cmd, label[impl], args.timeout)
        times = {impl: [] for impl in impls}
        per_round = {impl: [] for impl in impls}
        for r in range(args.rounds):
            order = impls[r % len(impls):] + impls[:r % len(impls)]
            for impl in order:
                t = workers[impl].ask(args.iters)
                if t:
                    times[impl] += t
                    per_round[impl].append(sorted(t)[len(t) // 2])
        base = impls[0]
        for impl in impls:
            res = workers[impl].finish()
            w = workers[impl]
            if res is None:
                rows.append(f"{cfg:>14}  {w.label:<33} failed: {w.error}")
                continue
            res["label"] = w.label
            results.append(res)
            lo, med, hi = spread(times[impl])
            batch = int(cfg.split(":")[2])
            mem = f"{res['peak_cuda_gib']:.2f} GiB CUDA" if "peak_cuda_gib" in res else f"{res['peak_rss_gib']:.2f} GiB"
            ratio = ""
            if impl != base and times[base] and per_round[base]:
                rr = [b / a for a, b in zip(per_round[base], per_round[impl])]
                ratio = f"{med / spread(times[base])[1]:.2f}x ({min(rr):.2f}-{max(rr):.2f})"
            step = f" [{res['step']}]" if impl in ("ours", "plain", "fast") else ""
            rows.append(f"{cfg:>14}  {w.label + step:<33} {lo:7.3f} {med:7.3f} {hi:7.3f}  {batch / med:7.3f}  "
                        f"{mem:>14}  {ratio}")
    print(f"\n{'config':>14}  {'implementation':<33} {'s/iter: min':>11} {'median':>7} {'max':>7}  "
          f"{'img/s':>7}  {'peak memory':>14}  time / first row's (per-round range)")
    for row in rows:
        print(row)
    if len(impls) == 1:
        print(f"\nA ratio needs a second implementation beside calm-gan's, timed in the same run: "
              f"--peer ugatit=PATH (a checkout of znxlwm/UGATIT-pytorch) or --loop both.")
    os.makedirs(os.path.join(ROOT, "bench", "results"), exist_ok=True)
    stamp = datetime.datetime.now().strftime("%Y%m%d_%H%M%S")
    path = os.path.join(ROOT, "bench", "results", f"ugatit_{args.device}_{stamp}.json")
    with open(path, "w") as f:
        json.dump({"torch": torch.__version__, "device": args.device, "load_average": load, "threads": threads,
                   "rounds": args.rounds, "iters": args.iters, "results": results}, f, indent=1)
    print("wrote", path)


if __name__ == "__main__":
    main()
