"""The whole calm-gan pipeline on built-in demo data, end to end, with one command.

    python demo.py                   # about 11 minutes on 2 CPU cores; everything lands in demo_out/
    python demo.py --smoke           # the smallest setting (the test suite runs this), about a minute
    python demo.py --device cuda --size 64 --faces 500 --scale 10   # the same commands, scaled up on a GPU

Stages (each is the real command line of a numbered script, run as a subprocess and timed):
 1. 01_prepare_data.py   draws the demo cartoon faces (the stand-in for the seed's 500 hand-cut faces)
 2. 03_stylegan2_ada.py  trains a small StyleGAN2 from scratch ("the FFHQ model" of this demo), then
                         fine-tunes it with the seed's best row, FreezeD + ADA (--preset freezed-ada)
 3. 02_stylegan_freezed.py  trains a small StyleGAN (v1) and draws its style-mixing figure
 4. 04_latent_explore.py SeFa and GANSpace directions, an edit GIF with a meme caption, style mixing
 5. 05_ugatit.py         a tiny U-GAT-IT between two demo styles (tinted, softened faces -> line art),
                         then chained onto the StyleGAN2 samples
Finally demo_out/summary.md shows every picture with the figures (FID/KID at the start and end of
training, images/s, time per stage).

FID needs the Inception weights (pt_inception-2015-12-05-6726825d.pth, see ops/fid.py). Offline and
without them the demo computes FID/KID with random Inception weights and says so: such numbers show
the trend of one run only and are not comparable with published FIDs.
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import time

import numpy as np
from PIL import Image, ImageFilter, ImageOps

from ops.device import DEVICE_HELP, resolve_device

ROOT = os.path.dirname(os.path.abspath(__file__))

# Settings: (full demo, --smoke). Iterations are multiplied by --scale.
PRESET = {
    "full": dict(faces=200, size=32, sg2_pretrain=1500, sg2_finetune=500, sg1_iter=3000, ugatit_iter=200,
                 ugatit_size=64, fid_n=100, channel_max=64, style_dim=64, batch=8),
    "smoke": dict(faces=16, size=16, sg2_pretrain=4, sg2_finetune=4, sg1_iter=4, ugatit_iter=2,
                  ugatit_size=64, fid_n=16, channel_max=16, style_dim=32, batch=4),
}


def run(stage, args, log, timings):
    """Run one script's command line; record its wall time; stop the demo on failure."""
    cmd = [sys.executable] + args
    print(f"\n== {stage}: {' '.join(args)}", flush=True)
    t0 = time.time()
    with open(log, "a") as f:
        f.write(f"\n$ {' '.join(args)}\n")
        f.flush()
        proc = subprocess.run(cmd, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT)
    dt = time.time() - t0
    timings.append((stage, dt))
    if proc.returncode != 0:
        with open(log) as f:
            tail = f.read().splitlines()[-15:]
        raise SystemExit(f"error: stage '{stage}' failed (exit {proc.returncode}); last lines of {log}:\n"
                         + "\n".join(tail))
    print(f"   done in {dt:.1f} s", flush=True)
    return dt


def inception_choice(explicit):
    """The Inception weights to use: an explicit file, the torch hub cache, else 'random' (labelled)."""
    if explicit:
        return explicit, True
    hub = os.path.join(os.environ.get("TORCH_HOME", os.path.join(os.path.expanduser("~"), ".cache", "torch")),
                       "hub", "checkpoints", "pt_inception-2015-12-05-6726825d.pth")
    if os.path.isfile(hub):
        return hub, True
    return "random", False


def fid_rows(run_dir):
    """The rows of a run's fid.csv, read by the same ops.fid function that writes it."""
    from ops.fid import read_fid_csv  # imported here: it pulls in torchvision
    return read_fid_csv(os.path.join(run_dir, "fid.csv"))


def last_json_line(path, key):
    """The last value of `key` in a log.jsonl (or None)."""
    value = None
    if os.path.isfile(path):
        with open(path) as f:
            for line in f:
                try:
                    row = json.loads(line)
                except ValueError:
                    continue
                if key in row:
                    value = row[key]
    return value


def make_domain_a(src, dst, size):
    """Second demo style for U-GAT-IT: faces softened, inverted-gray and tinted (a 'photo-ish' domain)."""
    os.makedirs(dst, exist_ok=True)
    for name in sorted(os.listdir(src)):
        if not name.endswith(".png"):
            continue
        img = Image.open(os.path.join(src, name)).convert("L").resize((size, size), Image.LANCZOS)
        img = img.filter(ImageFilter.GaussianBlur(radius=max(1, size // 48)))
        img = ImageOps.colorize(img, black=(90, 50, 30), white=(250, 215, 180))
        img.save(os.path.join(dst, name))


def newest(folder, pattern_ext=".png"):
    """The last numbered file (000400.pt, 000400.png, ...) in a folder, or any last file."""
    files = sorted(f for f in os.listdir(folder) if f.endswith(pattern_ext)) if os.path.isdir(folder) else []
    numbered = [f for f in files if f[:-len(pattern_ext)].isdigit()]
    files = numbered or files
    return os.path.join(folder, files[-1]) if files else None


def rel(path, out):
    return os.path.relpath(path, out) if path else None


def write_summary(out, cfg, timings, real_fid, images):
    lines = ["# calm-gan demo", "",
             f"Demo data: {cfg['faces']} procedural cartoon faces at {cfg['size']} px; device {cfg['device']}.", ""]
    if not real_fid:
        lines += ["FID and KID below were computed with **random Inception weights** (no "
                  "`pt_inception-2015-12-05` file here): they show the trend within this demo only and are "
                  "**not comparable** with published FIDs.", ""]
    lines += ["## Time per stage", "", "| stage | seconds |", "|---|---|"]
    lines += [f"| {s} | {t:.1f} |" for s, t in timings]
    lines += [f"| total | {sum(t for _, t in timings):.1f} |", ""]
    lines += ["## Training figures", "", "| run | FID start | FID end | KID end | images/s |", "|---|---|---|---|---|"]
    for name, run_dir in (("StyleGAN2 from scratch", "sg2_pretrain"), ("StyleGAN2 FreezeD + ADA", "sg2_freezed_ada"),
                          ("StyleGAN v1", "sg1")):
        rows = fid_rows(os.path.join(out, run_dir))
        first, last = (rows[0], rows[-1]) if rows else ({}, {})
        ips = last_json_line(os.path.join(out, run_dir, "log.jsonl"), "img_per_s")
        fmt = lambda v: f"{float(v):.2f}" if v not in (None, "") else "n/a"  # noqa: E731
        kid = (f"{last['kid_mean']:.4f} ± {last.get('kid_std', 0.0):.4f}"
               if last.get("kid_mean") is not None else "n/a")
        lines.append(f"| {name} | {fmt(first.get('fid'))} | {fmt(last.get('fid'))} | {kid} | {fmt(ips)} |")
    lines.append("")
    for title, path in images:
        if path and os.path.isfile(os.path.join(out, path)):
            lines += [f"## {title}", "", f"![{title}]({path})", ""]
    with open(os.path.join(out, "summary.md"), "w") as f:
        f.write("\n".join(lines))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default=os.path.join(ROOT, "demo_out"))
    p.add_argument("--smoke", action="store_true", help="smallest setting (used by the test suite)")
    p.add_argument("--device", default="auto", help=DEVICE_HELP)
    p.add_argument("--faces", type=int, default=None)
    p.add_argument("--size", type=int, default=None, help="StyleGAN image size (power of two)")
    p.add_argument("--scale", type=float, default=1.0, help="multiply every stage's iterations")
    p.add_argument("--inception", default=None, help="FID Inception weights (default: hub cache, else random)")
    args = p.parse_args(argv)

    cfg = dict(PRESET["smoke" if args.smoke else "full"])
    cfg.update({k: v for k, v in (("faces", args.faces), ("size", args.size)) if v is not None})
    args.device = str(resolve_device(args.device))  # resolved once: every stage runs on the same device
    cfg["device"] = args.device
    it = lambda k: max(2, int(cfg[k] * args.scale))  # noqa: E731
    inception, real_fid = inception_choice(args.inception)
    out = os.path.abspath(args.out)
    if os.path.isdir(out):
        shutil.rmtree(out)  # the demo folder is always rebuilt from scratch
    os.makedirs(out)
    log = os.path.join(out, "demo.log")
    timings = []
    data = os.path.join(out, "data")
    s, b, cm, sd = str(cfg["size"]), str(cfg["batch"]), str(cfg["channel_max"]), str(cfg["style_dim"])
    fid_every = lambda n: str(max(1, n))  # noqa: E731  (FID at the end of each run; step 0 as well)
    fid = ["--inception", inception, "--fid-n", str(cfg["fid_n"]), "--fid-batch", "16"]
    if args.smoke:  # Inception's first block only (pytorch-fid dims=64): the smoke run checks plumbing
        fid += ["--fid-dims", "64"]
    small = ["--size", s, "--channel-max", cm, "--style-dim", sd, "--n-mlp", "2", "--batch", b,
             "--device", args.device, "--num-workers", "0", "--no-progress"]
    # Runs of a few thousand images: G_ema's half-life ramps up with the images seen (NVlabs ema_rampup
    # 0.05), otherwise its default 10 kimg half-life would keep the samples at their initial state.
    ema = ["--ema-rampup", "0.05"]

    # 1. data
    run("01 demo faces", ["01_prepare_data.py", "--demo", str(cfg["faces"]), "--size", s, "--out", data],
        log, timings)
    # 2. StyleGAN2: from scratch, then the seed's transfer recipe with FreezeD + ADA
    pre, fin = os.path.join(out, "sg2_pretrain"), os.path.join(out, "sg2_freezed_ada")
    n_pre, n_fin = it("sg2_pretrain"), it("sg2_finetune")
    run("03 StyleGAN2 from scratch", ["03_stylegan2_ada.py", "train", "--data", data, "--out", pre,
        "--iter", str(n_pre), "--fid-every", fid_every(n_pre), "--sample-every", str(max(1, n_pre // 4)),
        "--ckpt-every", str(n_pre)] + small + ema + fid, log, timings)
    ckpt = newest(os.path.join(pre, "checkpoints"), ".pt")
    run("03 StyleGAN2 FreezeD + ADA", ["03_stylegan2_ada.py", "train", "--data", data, "--out", fin, "--ckpt", ckpt,
        "--preset", "freezed-ada", "--freeze-d", "1", "--iter", str(n_fin), "--fid-every", fid_every(n_fin),
        "--sample-every", str(max(1, n_fin // 4)), "--ckpt-every", str(n_fin), "--batch", b, "--device", args.device,
        "--num-workers", "0", "--no-progress"] + ema + fid, log, timings)
    g2 = newest(os.path.join(fin, "checkpoints"), ".pt")
    run("03 generate", ["03_stylegan2_ada.py", "generate", "--ckpt", g2, "--seeds", "0-7",
        "--out", os.path.join(out, "sg2_samples"), "--device", args.device], log, timings)
    # 3. StyleGAN v1 (progressive from scratch at this size) and its style mixing
    sg1 = os.path.join(out, "sg1")
    n1 = it("sg1_iter")
    # grows from size/2 to size: two phases at size/2, a fade-in phase, then three stable ones
    run("02 StyleGAN v1", ["02_stylegan_freezed.py", "train", "--data", data, "--size", s, "--out", sg1,
        "--channel-max", cm, "--code-dim", sd, "--iter", str(n1), "--batch", b, "--fid-every", fid_every(n1),
        "--fid-n", str(cfg["fid_n"]), "--inception", inception, "--sample-every", str(max(1, n1 // 4)),
        "--ckpt-every", str(n1), "--device", args.device, "--quiet", "--mixing", "--loss", "r1",
        "--init-size", str(cfg["size"] // 2), "--phase", str(max(cfg["batch"], n1 * cfg["batch"] // 6)),
        "--ema-decay", "0.99"], log, timings)
    run("02 style mixing", ["02_stylegan_freezed.py", "mix", "--ckpt", sg1,
        "--size", s, "--rows", "1-3", "--cols", "4-7", "--out", os.path.join(out, "sg1_mix.png")], log, timings)
    # 4. latent exploration on the fine-tuned StyleGAN2
    lx = os.path.join(out, "explore")
    os.makedirs(lx, exist_ok=True)
    run("04 SeFa", ["04_latent_explore.py", "sefa", "--ckpt", g2, "--out", os.path.join(lx, "sefa.pt"),
        "--device", args.device], log, timings)
    run("04 GANSpace", ["04_latent_explore.py", "ganspace", "--ckpt", g2, "--out", os.path.join(lx, "ganspace.pt"),
        "--samples", "20000" if not args.smoke else "2000", "--components", "16", "--device", args.device],
        log, timings)
    run("04 edit GIF", ["04_latent_explore.py", "edit", "--ckpt", g2, "--dirs", os.path.join(lx, "sefa.pt"),
        "--index", "0", "--degrees=-6:6:9", "--seeds", "0-2", "--caption-top", "ME",
        "--caption-bottom", "ALSO ME", "--out", os.path.join(lx, "edit"), "--device", args.device], log, timings)
    run("04 style mixing", ["04_latent_explore.py", "mix", "--ckpt", g2, "--rows", "0-2", "--cols", "10-13",
        "--out", os.path.join(lx, "mix.png"), "--device", args.device], log, timings)
    # 5. U-GAT-IT between two demo styles, then chained onto StyleGAN2
    ug_data = os.path.join(out, "ugatit_data")
    make_domain_a(data, os.path.join(ug_data, "trainA"), cfg["ugatit_size"])
    shutil.copytree(data, os.path.join(ug_data, "trainB"), ignore=shutil.ignore_patterns("overview", "*.csv", "*.json"))
    ug = os.path.join(out, "ugatit")
    n_ug = it("ugatit_iter")
    run("05 U-GAT-IT", ["05_ugatit.py", "train", "--data", ug_data, "--out", ug, "--img-size", str(cfg["ugatit_size"]),
        "--ch", "8", "--n-res", "1", "--iter", str(n_ug), "--batch", "2", "--sample-every", str(n_ug),
        "--save-every", str(n_ug), "--log-every", str(max(1, n_ug // 10)), "--device", args.device, "--quiet"],
        log, timings)
    ug_ckpt = ug  # the run folder: its newest checkpoint
    run("05 chain", ["05_ugatit.py", "chain", "--ugatit", ug_ckpt, "--stylegan", g2, "--seeds", "1", "2",
        "--walk", "6", "--out", os.path.join(out, "chain"), "--device", args.device], log, timings)

    images = [("Demo faces (01)", rel(os.path.join(data, "overview", "contact_sheet.png"), out)),
              ("StyleGAN2 from scratch: last samples (03)", rel(newest(os.path.join(pre, "samples")), out)),
              ("StyleGAN2 FreezeD + ADA: last samples (03)", rel(newest(os.path.join(fin, "samples")), out)),
              ("FID curve, FreezeD + ADA (03)", rel(os.path.join(fin, "fid.png"), out)),
              ("StyleGAN v1 samples (02)", rel(newest(os.path.join(sg1, "samples")), out)),
              ("StyleGAN v1 style mixing (02)", "sg1_mix.png"),
              ("SeFa direction 0, three seeds (04)", "explore/edit/grid_dir00.png"),
              ("Edit GIF with a caption (04)", "explore/edit/seed0000_dir00.gif"),
              ("StyleGAN2 style mixing (04)", "explore/mix.png"),
              ("U-GAT-IT samples (05)", rel(newest(os.path.join(ug, "samples")), out)),
              ("StyleGAN2 -> U-GAT-IT walk (05)", rel(newest(os.path.join(out, "chain"), ".gif"), out))]
    write_summary(out, cfg, timings, real_fid, images)
    print(f"\nwrote {os.path.join(out, 'summary.md')} ({sum(t for _, t in timings):.0f} s in all)")


if __name__ == "__main__":
    main()
