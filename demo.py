"""The seed experiment in miniature, end to end, with one command: a pretrained face model, a few
hundred new faces, FreezeD + ADA, and a good generator in minutes.

    python demo.py                   # about 23 minutes on 2 CPU cores; everything lands in demo_out/
    python demo.py --few-shot        # + 10 shots: FreezeD + ADA against CDC (about 13 minutes more)
    python demo.py --full            # the seed's six rows, scratch and FreezeG, three seeds, 10 shots (hours)
    python demo.py --smoke           # the smallest setting (the test suite runs this), about a minute
    python demo.py --make-source     # remake the shipped source models in demo_models/ (hours on a CPU)
    python demo.py --device cuda --faces 500 --scale 10   # the same commands, scaled up on a GPU
    python demo.py --score-source    # re-measure the source models on the source faces (after --make-source)
    python demo.py --make-face-net   # remake FD-faces' network (demo faces only) in demo_models/ (~80 min CPU)

The story, as in the seed (bryandlee/malnyun_faces):
    source domain  FFHQ photos         -> here: 4,000 shaded colour faces (01 --demo-style source)
    source models  FFHQ StyleGAN/2     -> here: demo_models/, trained by --make-source (commands,
                                          time and sha256 in demo_models/source_models.json)
    target domain  500 cartoon faces   -> here: 200 line-art cartoon faces (01, the default style)
Both demo styles share the face layout (head oval, eye, nose and mouth placement), so what the source
model learned about faces carries over, as FFHQ -> cartoon faces does.

Stages (each is the real command line of a numbered script, run as a subprocess and timed):
 1. 01_prepare_data.py     draws the target faces
 2. 03_stylegan2_ada.py    samples the shipped source model; `03 ablation`: the rows baseline,
                           FreezeD + ADA and scratch + ADA (the seed's "collapsed" row), two seeds
                           each, the same iterations, scored against the whole real set (FID, KID,
                           FD-faces) beside the noise floor and the source model; the table ranks by
                           FID, and the stages below use the best row's best run, saying which
 3. 02_stylegan_freezed.py fine-tunes the shipped StyleGAN (v1) with FreezeD; style mixing; scored
                           as the ablation scores StyleGAN2
 4. 04_latent_explore.py   SeFa directions, the sheet that shows where each changes the faces, three
                           knobs named from it (hair, mouth, tilt where the sheet finds them) and
                           edits by name, a meme, GANSpace, style mixing
 5. 05_ugatit.py           a tiny U-GAT-IT between two demo styles (tinted, softened faces -> line
                           art), then chained onto the best StyleGAN2 run's samples
 6. (--few-shot) 10 shots  `03 ablation --shots 10` with FreezeD + ADA and CDC, two seeds, with the
                           diversity measure (intra-cluster LPIPS, copy share) beside held-out faces
Finally demo_out/summary.md shows the pictures, the table and the time per stage.

FID needs the Inception weights (pt_inception-2015-12-05-6726825d.pth, see ops/fid.py). Offline and
without them the demo computes FID/KID with random Inception weights and says so: such numbers rank
the rows of one table (and sit beside their own noise floor) but are not comparable with published FIDs.
"""
import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

from PIL import Image, ImageDraw, ImageFilter, ImageOps

from ops.device import DEVICE_HELP, resolve_device

ROOT = os.path.dirname(os.path.abspath(__file__))
MODELS = os.path.join(ROOT, "demo_models")
RECORD = os.path.join(MODELS, "source_models.json")

# Settings of `python demo.py` (full) and `--smoke`. Iterations are multiplied by --scale; the three
# StyleGAN2 rows (FreezeD + ADA, baseline transfer, scratch) run the same number of iterations.
PRESET = {
    "full": dict(faces=200, sg2_iter=1200, sg1_iter=1600, batch=8, ugatit_iter=200, ugatit_size=64,
                 ganspace_samples=20000, fid_dims=2048,
                 rows="baseline,freezed-ada,scratch", seeds="0,1",  # the ablation: 3 rows x 2 seeds
                 fid_every=400, fid_n=100, eval_n=200,             # curves at 0/400/800/1200; final: 200 images
                 few_shot=False, shots=10, few_shot_iter=1200, few_shot_seeds="0,1"),
    "smoke": dict(faces=16, sg2_iter=2, sg1_iter=2, batch=4, ugatit_iter=2, ugatit_size=64,
                  ganspace_samples=2000, fid_dims=64,  # Inception's first block only: plumbing check
                  rows="freezed-ada,scratch", seeds="0", fid_every=0, fid_n=8, eval_n=16,
                  few_shot=False, shots=4, few_shot_iter=2, few_shot_seeds="0"),  # (tests/test_cdc, test_ablation)
}
# --full: the seed's six rows, scratch and FreezeG, three seeds each, and the 10-shot rows
FULL = dict(rows="baseline,freezed,diffaug,ada,freezed-diffaug,freezed-ada,scratch,freezeg", seeds="0,1,2",
            few_shot=True)
EVAL_SEEDS = 1000  # StyleGAN v1's score: seeds 1000, 1001, ... (02 generate)
FREEZE_D_V1 = 1  # StyleGAN v1 FreezeD at 32 px: from_rgb and the 32 px block stay fixed, so the same three
#                 lowest-resolution blocks train as with the seed's K = 4 at 256 px (03's presets shift
#                 their freeze_d to the image size by themselves)
R1_GAMMA = 0.05  # StyleGAN2 R1 weight at 32 px: NVlabs' auto rule 0.0002 res^2 / batch = 0.026 (10 is for 1024 px)
KID_SUBSET = 50  # KID subset size below the half-set size (100), so its std shows a real spread
SOURCE_SCORE_FACES = 200  # the source models are scored on the first 200 source faces, as the demo's table
# StyleGAN v1's short fine-tune on 200 faces. In trials at 32 px (lr, R1 gamma): lr 0.001 (gamma 0.05 or 1),
# 0.0005 and 0.0003 collapsed G to one face by 1,600 / 1,600 / 2,000 iterations; 0.0002 keeps the faces
# apart through 1,600 (and collapses too by about 2,800). rosinality's gamma 10 kept the source's blur.
# So --scale > 1.5 runs v1 into its collapse at this size; at 256 px with real data use FreezeD's settings.
V1_LR = 0.0002
V1_R1_GAMMA = 1.0
V1_EMA_DECAY = 0.995  # G_running decay: a half-life of 140 steps (rosinality's 0.999 would keep the
#                      samples ~700 steps behind the 1,600 it trains)
VIEW = 96  # summary pictures show each generated image at least this many pixels wide (nearest neighbour)

# The source models of demo_models/ (`--make-source`): 4,000 source-style faces; StyleGAN2 and
# StyleGAN v1 at 32 px with 32 channels, a 64-d z/w and batch 8, small enough to train on a CPU.
SOURCE = dict(faces=4000, seed=0, size=32, channel_max=32, style_dim=64, n_mlp=2, batch=8, r1_gamma=R1_GAMMA,
              sg2_iter=20000, sg1_iter=20000, sg1_init=8, sg1_phase=8000)


def source_commands(data, runs, s=SOURCE):
    """The command lines that make the source data and train the two source models."""
    size, cm, sd, b = str(s["size"]), str(s["channel_max"]), str(s["style_dim"]), str(s["batch"])
    return {
        "data": ["01_prepare_data.py", "--demo", str(s["faces"]), "--demo-style", "source", "--size", size,
                 "--seed", str(s["seed"]), "--out", data],
        "stylegan2": ["03_stylegan2_ada.py", "train", "--data", data, "--out", os.path.join(runs, "sg2"),
                      "--size", size, "--channel-max", cm, "--style-dim", sd, "--n-mlp", str(s["n_mlp"]),
                      "--batch", b, "--iter", str(s["sg2_iter"]), "--r1-gamma", str(s["r1_gamma"]),
                      "--pl-weight", "0", "--ema-rampup", "0.05", "--device", "cpu", "--num-workers", "0",
                      "--no-progress", "--fid-every", "0", "--sample-every", "500", "--ckpt-every", "500",
                      "--keep", "20", "--log-every", "50"],
        "stylegan_v1": ["02_stylegan_freezed.py", "train", "--data", data, "--size", size,
                        "--out", os.path.join(runs, "sg1"), "--channel-max", cm, "--code-dim", sd,
                        "--iter", str(s["sg1_iter"]), "--batch", b, "--loss", "r1", "--r1-gamma",
                        str(s["r1_gamma"]), "--mixing",
                        "--init-size", str(s["sg1_init"]), "--phase", str(s["sg1_phase"]),
                        "--ema-decay", "0.998", "--fid-every", "0", "--sample-every", "500",
                        "--ckpt-every", "500", "--log-every", "50", "--device", "cpu", "--quiet"],
    }


# ---------------------------------------------------------------------------------------------
# Running the stages
# ---------------------------------------------------------------------------------------------
def run(stage, args, log, timings):
    """Run one script's command line; record its wall time; stop the demo on failure."""
    print(f"\n== {stage}: {' '.join(args)}", flush=True)
    t0 = time.time()
    call(args, log, stage)
    dt = time.time() - t0
    timings.append((stage, dt))
    print(f"   done in {dt:.1f} s", flush=True)
    return dt


def call(args, log, stage):
    """One subprocess, its output appended to the log; a failure ends the demo with the log's tail."""
    with open(log, "a") as f:
        f.write(f"\n$ {' '.join(args)}\n")
        f.flush()
        proc = subprocess.run([sys.executable] + args, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT)
    if proc.returncode != 0:
        with open(log) as f:
            tail = f.read().splitlines()[-15:]
        raise SystemExit(f"error: stage '{stage}' failed (exit {proc.returncode}); last lines of {log}:\n"
                         + "\n".join(tail))


def inception_choice(explicit):
    """The Inception weights to use: an explicit file, the torch hub cache, else 'random' (labelled)."""
    if explicit:
        return explicit, True
    hub = os.path.join(os.environ.get("TORCH_HOME", os.path.join(os.path.expanduser("~"), ".cache", "torch")),
                       "hub", "checkpoints", "pt_inception-2015-12-05-6726825d.pth")
    if os.path.isfile(hub):
        return hub, True
    return "random", False


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def newest(folder, pattern_ext=".png"):
    """The last numbered file (000400.pt, 000400.png, ...) in a folder, or any last file."""
    files = sorted(f for f in os.listdir(folder) if f.endswith(pattern_ext)) if os.path.isdir(folder) else []
    numbered = [f for f in files if f[:-len(pattern_ext)].isdigit()]
    files = numbered or files
    return os.path.join(folder, files[-1]) if files else None


def rel(path, out):
    return os.path.relpath(path, out) if path else None


# ---------------------------------------------------------------------------------------------
# The shipped source models
# ---------------------------------------------------------------------------------------------
def source_paths(size):
    return (os.path.join(MODELS, f"stylegan2_source_{size}px.pt"),
            os.path.join(MODELS, f"stylegan_v1_source_{size}px.pt"))


def save_record(record, path=RECORD):
    """source_models.json, written whole to a temporary file first and then moved over the old one."""
    with open(path + ".tmp", "w") as f:
        json.dump(record, f, indent=2)
        f.write("\n")
    os.replace(path + ".tmp", path)


def read_record(path=RECORD):
    if not os.path.isfile(path):
        return {}
    with open(path) as f:
        return json.load(f)


def half_state(sd):
    """Floating tensors stored as fp16 (half the bytes); load_state_dict copies them back into the
    fp32 parameters of a freshly built network, so the loaded model is fp32."""
    return {k: v.half() if v.is_floating_point() else v for k, v in sd.items()}


def pack_stylegan2(ckpt_path, dst):
    """03's run checkpoint -> the shipped file: g, d, g_ema (fp16), latent_avg, args, step."""
    import torch
    ck = torch.load(ckpt_path, map_location="cpu", weights_only=True)
    small = {"g": half_state(ck["g"]), "d": half_state(ck["d"]), "g_ema": half_state(ck["g_ema"]),
             "latent_avg": ck["latent_avg"].float(), "args": ck["args"], "step": ck["step"]}
    save_atomic(small, dst)
    return ck["step"]


def pack_stylegan_v1(ckpt_path, dst):
    """02's run checkpoint -> the shipped file: generator, discriminator, g_running (fp16), arch, args, step."""
    import torch
    ck = torch.load(ckpt_path, map_location="cpu", weights_only=True)
    small = {"generator": half_state(ck["generator"]), "discriminator": half_state(ck["discriminator"]),
             "g_running": half_state(ck["g_running"]), "arch": ck["arch"], "args": ck["args"],
             "step": ck["step"]}
    save_atomic(small, dst)
    return ck["step"]


def save_atomic(obj, dst):
    import torch
    os.makedirs(os.path.dirname(dst), exist_ok=True)
    tmp = dst + ".tmp"
    torch.save(obj, tmp)
    os.replace(tmp, dst)


def make_source(size, runs, log):
    """Draw the source faces, train both source models, pack them into demo_models/ with a record."""
    s = dict(SOURCE, size=size)
    data = os.path.join(runs, "data")
    cmds = source_commands(data, runs, s)
    sg2_dst, sg1_dst = source_paths(size)
    for path in (sg2_dst, sg1_dst):
        if os.path.exists(path):
            raise SystemExit(f"error: {path} exists; move it away first (the demo never overwrites a model)")
    if os.path.exists(runs):
        raise SystemExit(f"error: {runs} exists; choose another --source-runs folder or move it away")
    seconds = {}
    for key in ("data", "stylegan2", "stylegan_v1"):
        t0 = time.time()
        call(cmds[key], log, f"source {key}")
        seconds[key] = round(time.time() - t0, 1)
    steps = {"stylegan2": pack_stylegan2(newest(os.path.join(runs, "sg2", "checkpoints"), ".pt"), sg2_dst),
             "stylegan_v1": pack_stylegan_v1(newest(os.path.join(runs, "sg1", "checkpoints"), ".pt"), sg1_dst)}
    write_record(s, cmds, seconds, steps, note="made by python demo.py --make-source")
    score_sources(size, data, os.path.join(runs, "score"), log)


def rescore_sources(size, runs, log):
    """`--score-source`: the source faces (drawn again by the recorded data command when missing),
    then `score_sources` in a new folder under `runs`."""
    data = os.path.join(runs, "data")
    if not os.path.isdir(data):
        call(source_commands(data, runs, dict(SOURCE, size=size))["data"], log, "source data")
    os.makedirs(runs, exist_ok=True)
    return score_sources(size, data, tempfile.mkdtemp(prefix="score-", dir=runs), log)


def score_sources(size, data, work, log, n_faces=SOURCE_SCORE_FACES, device="cpu", dims=2048, record=RECORD):
    """How close each shipped source model is to its own training faces, beside the noise floor:
    the demo's FID/KID (random Inception weights unless the real ones are cached) of n/2 samples
    against the second half of the first n source faces, written into the record's "score"."""
    os.makedirs(work, exist_ok=True)
    subset = os.path.join(work, "faces")
    os.makedirs(subset)
    for name in sorted(f for f in os.listdir(data) if f.endswith(".png"))[:n_faces]:
        shutil.copyfile(os.path.join(data, name), os.path.join(subset, name))
    sg2, sg1 = source_paths(size)
    seeds = f"1000-{1000 + n_faces // 2 - 1}"
    gens = [("stylegan2", ["03_stylegan2_ada.py", "generate", "--ckpt", sg2, "--seeds", seeds, "--out",
                           os.path.join(work, "sg2"), "--device", device], os.path.join(work, "sg2")),
            ("stylegan_v1", ["02_stylegan_freezed.py", "generate", "--ckpt", sg1, "--size", str(size), "--seeds",
                             seeds, "--out", os.path.join(work, "sg1"), "--device", device], os.path.join(work, "sg1"))]
    inception, _ = inception_choice(None)
    rows, half = metric_table(work, subset, gens, inception, dims, log, device)
    saved = read_record(record)
    entry = saved[str(size)]
    for key, fid, kid_m, kid_s in rows:
        name = "noise_floor" if key.startswith("noise floor") else key
        entry.setdefault("score", {})[name] = {"fid": round(fid, 4), "kid": round(kid_m, 6), "kid_std": round(kid_s, 6)}
    entry["score"]["how"] = (f"FID/KID of {half} samples vs the second half of the first {n_faces} source faces; "
                             f"noise_floor: first half vs second half; Inception "
                             f"{'random weights' if inception == 'random' else os.path.basename(inception)}; "
                             f"KID 100 subsets of {min(KID_SUBSET, half - 1)}")
    save_record(saved, record)
    return rows


def write_record(s, cmds, seconds, steps, note):
    """demo_models/source_models.json: the commands, the time they took and each file's sha256."""
    sg2_dst, sg1_dst = source_paths(s["size"])
    record = read_record()
    record[str(s["size"])] = {
        "settings": s, "note": note,
        "data": {"command": "python " + " ".join(cmds["data"]), "seconds": seconds.get("data")},
        "stylegan2": {"file": os.path.basename(sg2_dst), "sha256": sha256(sg2_dst), "bytes": os.path.getsize(sg2_dst),
                      "command": "python " + " ".join(cmds["stylegan2"]), "seconds": seconds.get("stylegan2"),
                      "iterations": steps["stylegan2"], "kimg": steps["stylegan2"] * s["batch"] / 1000},
        "stylegan_v1": {"file": os.path.basename(sg1_dst), "sha256": sha256(sg1_dst),
                        "bytes": os.path.getsize(sg1_dst), "command": "python " + " ".join(cmds["stylegan_v1"]),
                        "seconds": seconds.get("stylegan_v1"), "iterations": steps["stylegan_v1"],
                        "kimg": steps["stylegan_v1"] * s["batch"] / 1000},
    }
    save_record(record)


def make_face_net(runs, device="cpu", dst=os.path.join(MODELS, "face_features_32px.pt"),
                  record_path=os.path.join(MODELS, "face_features.json"), n_target=12000, n_source=4000,
                  n_val=500, epochs=6, faces=200, scratch_iter=300, speckle=(0.05, 0.1, 0.2, 0.4, 0.8)):
    """`--make-face-net`: the face-feature network of FD-faces (demo faces only, ops/face_features.py).

    Draws n_target line-art and n_source shaded faces with their labels through 01, trains the
    network's heads on them (ops.face_features.train_face_net), writes dst (fp16), then checks it on
    what a reader can tell apart, with the random-Inception FID of the demo's table beside it: the
    demo's `faces` real target faces split in two halves (the noise floor), the first half with
    speckle added at each strength, the shipped StyleGAN2 source model's samples, and a StyleGAN2
    trained from scratch for scratch_iter iterations; each against the second half, n = faces / 2
    per side. The command, wall times, sha256, set sizes and every number go to record_path."""
    import importlib.util

    import numpy as np
    import torch
    from PIL import Image as PILImage

    from ops import face_features as ff
    from ops.fid import folder_features, load_inception

    for path in (dst, record_path):
        if os.path.exists(path):
            raise SystemExit(f"error: {path} exists; move it away first (the demo never overwrites a model)")
    if os.path.exists(runs):
        raise SystemExit(f"error: {runs} exists; choose another --source-runs folder or move it away")
    os.makedirs(runs)
    log = os.path.join(runs, "make_face_net.log")
    spec = importlib.util.spec_from_file_location("prepare_data", os.path.join(ROOT, "01_prepare_data.py"))
    prep = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(prep)
    t0 = time.time()
    net, train = ff.train_face_net(lambda n, style, seed: prep.make_demo_faces_with_labels(n, 32, seed, style),
                                   n_target, n_source, n_val, epochs, device=str(device))
    ff.save_face_net(net.cpu(), dst, train)
    t_net = time.time() - t0
    print(f"wrote {dst} ({os.path.getsize(dst) / 1e3:.0f} kB) in {t_net:.0f} s; now the checks", flush=True)

    t1 = time.time()
    real = os.path.join(runs, "checks", "real")
    call(["01_prepare_data.py", "--demo", str(faces), "--size", "32", "--out", real], log, "face-net checks")
    half = faces // 2
    files = sorted(f for f in os.listdir(real) if f.endswith(".png"))
    sets = {"real half A": os.path.join(runs, "checks", "half_a"),
            "real half B": os.path.join(runs, "checks", "half_b")}
    for name, part in (("real half A", files[:half]), ("real half B", files[half:2 * half])):
        os.makedirs(sets[name])
        for f in part:
            shutil.copyfile(os.path.join(real, f), os.path.join(sets[name], f))
    a = ff.to_input(sets["real half A"])
    g = torch.Generator().manual_seed(0)
    for s in speckle:  # the same half A with dots on and beside the lines, saved as PNGs
        folder = sets[f"half A + speckle {s:g}"] = os.path.join(runs, "checks", f"speckle_{s:g}")
        os.makedirs(folder)
        x = ((ff.speckle(a, s, g) + 1) * 127.5 + 0.5).clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()
        for f, img in zip(files[:half], x):
            PILImage.fromarray(img).save(os.path.join(folder, f))
    sg2_src = source_paths(32)[0]
    seeds = f"1000-{1000 + half - 1}"
    scratch = os.path.join(runs, "checks", "scratch_run")
    call(["03_stylegan2_ada.py", "train", "--data", real, "--out", scratch, "--augment", "ada", "--iter",
          str(scratch_iter), "--batch", "8", "--size", "32", "--channel-max", "32", "--style-dim", "64", "--n-mlp", "2",
          "--device", str(device), "--num-workers", "0", "--no-progress", "--fid-every", "0", "--sample-every",
          str(scratch_iter), "--ckpt-every", str(scratch_iter), "--ema-rampup", "0.05", "--r1-gamma", str(R1_GAMMA)],
         log, "face-net checks")
    for name, ckpt in (("StyleGAN2 source model", sg2_src), (f"StyleGAN2 from scratch, {scratch_iter} iterations",
                                                              scratch)):
        sets[name] = os.path.join(runs, "checks", name.split(",")[0].replace(" ", "_"))
        call(["03_stylegan2_ada.py", "generate", "--ckpt", ckpt, "--seeds", seeds, "--out", sets[name],
              "--device", str(device)], log, "face-net checks")
    inception = load_inception("random", str(device), 2048)
    ref_faces = ff.features(sets["real half B"], net)
    ref_inception = folder_features(sets["real half B"], inception, batch_size=50, device=str(device),
                                    num_workers=0)["features"]
    rows = []
    for name, folder in sets.items():
        if name == "real half B":
            continue
        f = ff.features(folder, net)
        fi = folder_features(folder, inception, batch_size=50, device=str(device), num_workers=0)["features"]
        km, ks = ff.kid_faces(ref_faces, f, subset_size=min(KID_SUBSET, half - 1))
        ki, kis = ff.kid_faces(ref_inception, fi, subset_size=min(KID_SUBSET, half - 1))
        rows.append({"row": "noise floor: real half A vs real half B" if name == "real half A" else name,
                     "fd_faces": round(ff.fd_faces(ref_faces, f), 4), "kid_faces": round(km, 6),
                     "kid_faces_std": round(ks, 6), "fid_random_inception": round(ff.fd_faces(ref_inception, fi), 4),
                     "kid_random_inception": round(ki, 6), "kid_random_inception_std": round(kis, 6)})
        print(f"   {rows[-1]['row']:45s} {ff.MEASURE} {rows[-1]['fd_faces']:8.3f}   "
              f"FID (random Inception) {rows[-1]['fid_random_inception']:8.3f}", flush=True)

    def ordering(key):
        floor, ladder = rows[0][key], [r[key] for r in rows[1:1 + len(speckle)]]
        far = [r[key] for r in rows[1 + len(speckle):]]
        return {"floor_lowest": all(r[key] > floor for r in rows[1:]),
                "speckle_monotonic": all(x < y for x, y in zip([floor] + ladder, ladder)),
                "models_above_all_speckle": min(far) > max(ladder),
                "models_over_floor": [round(x / floor, 1) if floor > 0 else None for x in far]}

    seconds = {"draw": train["seconds"]["draw"], "train": train["seconds"]["train"],
               "net_total": round(t_net, 1), "checks": round(time.time() - t1, 1)}
    record = {"32": {
        "file": os.path.basename(dst), "sha256": sha256(dst), "bytes": os.path.getsize(dst),
        "command": "python demo.py --make-face-net", "measure": ff.MEASURE, "note": ff.NOTE,
        "seconds": seconds, "device": str(device), "training": train,
        "checks": {"how": f"{half} images per side against real half B (the second half of the demo's {faces} "
                          f"target faces, 01 --demo {faces} --size 32, seed 0); speckle: ops.face_features.speckle "
                          f"on half A, saved as PNG; models: 03 generate --seeds {seeds}; FID: random Inception "
                          f"weights, 2048-d, as the demo's table offline; KID: 100 subsets of "
                          f"{min(KID_SUBSET, half - 1)}",
                   "rows": rows, "fd_faces": ordering("fd_faces"),
                   "fid_random_inception": ordering("fid_random_inception")}}}
    with open(record_path + ".tmp", "w") as fh:
        json.dump(record, fh, indent=2)
        fh.write("\n")
    os.replace(record_path + ".tmp", record_path)
    print(f"wrote {record_path} ({ff.MEASURE}: {ff.NOTE})")
    return record


# ---------------------------------------------------------------------------------------------
# Pictures and the FID/KID table
# ---------------------------------------------------------------------------------------------
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


def enlarged(src, dst, factor):
    """A copy of picture `src` enlarged by a whole factor with nearest neighbour (each generated pixel
    becomes a factor x factor block, nothing is smoothed or invented), for the summary page."""
    if not src or not os.path.isfile(src):
        return None
    os.makedirs(os.path.dirname(dst), exist_ok=True)
    if dst.endswith(".gif"):  # animated: copy as it is (04's meme frames are already enlarged)
        shutil.copyfile(src, dst)
        return dst
    with Image.open(src) as img:
        img.convert("RGB").resize((img.width * factor, img.height * factor), Image.NEAREST).save(dst)
    return dst


def comparison_figure(rows, path, tile=64, label_w=112):
    """One row per folder: rows = [(label, folder)], each folder's PNGs in name order (a generator's
    seedNNNN.png: the same seeds in the same columns; or training images), as many columns as the
    first row has."""
    files = [sorted(f for f in os.listdir(folder) if f.endswith(".png")) for _, folder in rows]
    n = len(files[0])
    fig = Image.new("RGB", (label_w + tile * n, tile * len(rows)), "white")
    draw = ImageDraw.Draw(fig)
    for r, ((label, folder), names) in enumerate(zip(rows, files)):
        draw.multiline_text((6, r * tile + tile // 2 - 12), label, fill="black")
        for c, name in enumerate(names[:n]):
            img = Image.open(os.path.join(folder, name)).convert("RGB").resize((tile, tile), Image.NEAREST)
            fig.paste(img, (label_w + c * tile, r * tile))
    fig.save(path)


STRONG = 1 / 3     # a half-sweep counts as a strong change from a third of the sheet's largest one
VISIBLE = 0.1      # and as a visible one from a tenth (a mouth is small: its change is small)
TILT_SHARE = 0.25  # a sideways move must explain a quarter of a row's change for it to be called tilt
MOUTH_BOX = (0.5, 0.8, 0.25, 0.75)  # y0, y1, x0, x1 of the picture: where 01's demo faces have the mouth
MOUTH_SHARE = 0.4  # a knob is "mouth" when this much of its change falls in that box (15% of the area)


def box_share(m, box):
    """The share of a change map (sheet.json's pooled map, rows top to bottom) inside box (y0, y1, x0, x1)."""
    n = len(m)
    y0, y1, x0, x1 = (int(round(v * n)) for v in box)
    total = sum(map(sum, m))
    return sum(sum(row[x0:x1]) for row in m[y0:y1]) / total if total > 0 else 0.0


def pick_demo_knobs(rows):
    """The demo's naming rule, on the numbers `04 sheet` writes (sheet.json: one row per direction and
    layer zone; under "sides" where each half of the sweep, -3 sd .. 0 and 0 .. +3 sd, changes the
    image, with its map; heights y as fractions of the image, 0 at the top). A change is local when its
    larger half covers less than 30% of the picture (spread < 0.3: not a colour cast over everything).
    Each direction is named at most once:
      tilt:  the row whose change a sideways move (shift_x or roll) explains best, if it explains at
             least TILT_SHARE of it;
      hair:  of the other directions' strong local half-sweeps (a change of at least STRONG times the
             largest one), the one whose change sits highest (the smallest centroid y);
      mouth: of the rest, the visible local half-sweep (at least VISIBLE times the largest change) on
             the middle layers (StyleGAN Sec. 3.1: the middle styles hold the facial features) with the
             largest share of its change in MOUTH_BOX, if that share is MOUTH_SHARE or more;
      and, while fewer than three are named, the strongest remaining half-sweep, named after its zone
      and index (e.g. "coarse 2"): a name that claims nothing it might not do.
    Relative heights for hair, not fixed ones, because the faces do not fill the picture (hair starts
    below its top third). A knob found on the minus half is stored reversed (`name --flip`), so that +
    is the half that was found. Returns [(name, row, flip, reason)]."""
    halves = [(r, side) for r in rows for side in ("minus", "plus")]
    largest = max(r["sides"][side]["change"] for r, side in halves)
    picked, used = [], set()

    def move(r):
        return max(r["shift_x"]["share"], r["roll"]["share"])

    def pick(name, r, side, why):
        used.add(r["index"])
        where = (f"direction {r['index']}{'' if side is None else ' (' + side + ' half)'} on the {r['zone']} "
                 f"layers {r['layers'][0]}-{r['layers'][1]}")
        picked.append((name, r, side == "minus", f"{name} = {where}: {why}"))

    def local(least):
        return [(r, side, r["sides"][side]) for r, side in halves if r["index"] not in used
                and r["sides"][side]["change"] >= least * largest and r["sides"][side]["spread"] < 0.3]

    def told(h):
        return f"centre of change at y = {h['centroid'][1]:.2f}; change {h['change']:.3f}, spread {h['spread']:.2f}"

    tilt = max(rows, key=move)
    if move(tilt) >= TILT_SHARE:
        pick("tilt", tilt, None, f"a sideways move explains {move(tilt):.0%} of its change, the most of any row")
    hair = min(local(STRONG), key=lambda c: c[2]["centroid"][1], default=None)
    if hair is not None:
        pick("hair", hair[0], hair[1], f"of the strong local changes the one that sits highest ({told(hair[2])})")
    mouth = max((c for c in local(VISIBLE) if c[0]["zone"] == "middle"),
                key=lambda c: box_share(c[2]["map"], MOUTH_BOX), default=None)
    if mouth is not None and box_share(mouth[2]["map"], MOUTH_BOX) >= MOUTH_SHARE:
        pick("mouth", mouth[0], mouth[1], f"of the visible local middle-layer changes the one with the most of it "
                                          f"({box_share(mouth[2]['map'], MOUTH_BOX):.0%}) where the mouth is "
                                          f"({told(mouth[2])})")
    while len(picked) < 3 and len(used) < len({r["index"] for r in rows}):
        r, side = max(((r, side) for r, side in halves if r["index"] not in used),
                      key=lambda h: h[0]["sides"][h[1]]["change"])
        missing = [n for n in ("tilt", "hair", "mouth") if n not in [p[0] for p in picked]]
        pick(f"{r['zone']} {r['index']}", r, side,
             f"no row fits the rule for {' or '.join(missing)} (best sideways move {move(tilt):.0%}); the strongest "
             f"remaining change ({r['sides'][side]['change']:.3f}), named after its zone and index")
    return picked


def file_tag(name):
    """A knob name as 04 puts it into file names (spaces and dots -> '-')."""
    return "".join(c if c.isalnum() or c in "_-" else "-" for c in name)


def name_demo_knobs(ckpt, out, log, device="cpu", timings=None, count=8, seeds="0-2"):
    """The demo names knobs on the generator it just trained (so no library can ship for it): `04 sefa`,
    `04 sheet` of the first `count` directions (untruncated, as the demo explores), pick_demo_knobs on
    the sheet's numbers, `04 name` for each pick (on the picked zone's layers), one `04 edit` row per
    knob (its range, the seeds) and a meme GIF with the first one. Each step is the real command line,
    timed into `timings` when given. Returns the paths (sefa, sheet, sheet_json, library, edits
    {name: grid PNG}, meme) and `reasons`, one line per knob, for summary.md."""
    step = (lambda stage, args: run(stage, args, log, timings)) if timings is not None else (
        lambda stage, args: call(args, log, stage))
    os.makedirs(out, exist_ok=True)
    dev = ["--device", device]
    sefa, sheet, library = (os.path.join(out, n) for n in ("sefa.pt", "sheet", "knobs.json"))
    step("04 SeFa for the knobs", ["04_latent_explore.py", "sefa", "--ckpt", ckpt, "--out", sefa] + dev)
    step("04 sheet", ["04_latent_explore.py", "sheet", "--ckpt", ckpt, "--dirs", sefa, "--count", str(count),
                      "--seeds", seeds, "--truncation", "1", "--out", sheet] + dev)
    with open(os.path.join(sheet, "sheet.json")) as f:
        rows = json.load(f)["rows"]
    picks = pick_demo_knobs(rows)
    edits = {}
    for name, row, flip, _ in picks:
        step(f"04 name {name}", ["04_latent_explore.py", "name", "--dirs", sefa, "--index", str(row["index"]),
                                 "--name", name, "--layers", f"{row['layers'][0]}-{row['layers'][1]}",
                                 "--library", library] + (["--flip"] if flip else []) + dev)
        folder = os.path.join(out, "edit_" + file_tag(name))
        step(f"04 edit {name}", ["04_latent_explore.py", "edit", "--ckpt", ckpt, "--library", library, "--knob", name,
                                 "--seeds", seeds, "--truncation", "1", "--out", folder] + dev)
        edits[name] = os.path.join(folder, f"grid_{file_tag(name)}.png")
    first = picks[0][0]
    meme = os.path.join(out, "meme")
    step("04 meme", ["04_latent_explore.py", "edit", "--ckpt", ckpt, "--library", library, "--knob", first,
                     "--seeds", "0", "--truncation", "1", "--caption-top", "ME", "--caption-bottom", "ALSO ME",
                     "--out", meme] + dev)
    return {"sefa": sefa, "sheet": os.path.join(sheet, "sheet.png"), "sheet_json": os.path.join(sheet, "sheet.json"),
            "library": library, "edits": edits, "meme": os.path.join(meme, f"seed0000_{file_tag(first)}.gif"),
            "reasons": [why for *_, why in picks]}


def metric_table(out, data, generators, inception, dims, log, device):
    """FID and KID of each generator against the second half of the real target faces, and the
    noise floor: the same two numbers between the first and the second half of the real faces.

    generators: [(row name, command that writes n images into a folder, folder)]. Every side has
    n = half the real faces, so each row and the floor share the sample sizes (FID's bias with few
    samples is large; the floor shows how large).
    """
    from ops.fid import folder_features, frechet_distance, kid, load_inception, statistics
    model = load_inception(inception, device, dims)
    real = folder_features(data, model, batch_size=50, device=device, num_workers=0)
    feats = real["features"]
    half = len(feats) // 2
    ref, other = feats[half:2 * half], feats[:half]

    def score(f):
        mu1, s1 = statistics(ref)
        mu2, s2 = statistics(f)
        km, ks = kid(ref, f, subsets=100, subset_size=min(KID_SUBSET, half - 1))
        return frechet_distance(mu1, s1, mu2, s2), km, ks

    rows = [("noise floor: real half A vs real half B", *score(other))]
    for name, cmd, folder in generators:
        call(cmd, log, "FID/KID table")
        f = folder_features(folder, model, batch_size=50, device=device, num_workers=0)["features"]
        rows.append((name, *score(f)))
    with open(os.path.join(out, "metrics.json"), "w") as fh:
        json.dump({"n_per_side": half, "dims": dims, "kid_subset_size": min(KID_SUBSET, half - 1),
                   "inception": "random" if inception == "random" else os.path.basename(inception),
                   "rows": [{"row": r, "fid": f, "kid_mean": m, "kid_std": s} for r, f, m, s in rows]}, fh, indent=2)
    return rows, half


def write_summary(d):
    """demo_out/summary.md: the story, the ablation table with its reading, the pictures, the times."""
    out, cfg = d.out, d.cfg
    lines = ["# calm-gan demo: the seed experiment in miniature", "",
             f"Target data: {cfg['faces']} procedural line-art cartoon faces at {cfg['size']} px (the stand-in for "
             "the seed's 500 cartoon faces). Source models: StyleGAN2 and StyleGAN v1 trained on "
             f"{SOURCE['faces']} shaded colour faces (the stand-in for FFHQ), shipped in `demo_models/`. "
             f"Device {cfg['device']}."
             + (f" The StyleGAN images are shown {d.zoom}x enlarged (nearest neighbour: each pixel a {d.zoom}x{d.zoom} "
                "block; the unenlarged files are in the run folders); the meme GIF is drawn at 256 px by 04, "
                "U-GAT-IT's pictures are as written." if d.zoom > 1 else ""), ""]
    for key, name in (("stylegan2", "StyleGAN2"), ("stylegan_v1", "StyleGAN v1")):
        r = d.record.get(key, {})
        if r.get("seconds"):
            lines.append(f"- {name} source model: {r['iterations']} iterations ({r['kimg']:g} kimg), "
                         f"{r['seconds'] / 60:.0f} min on a CPU (`{r['command']}`).")
    lines += ["", f"## The ablation: {len(cfg['rows'].split(','))} rows x {len(cfg['seeds'].split(','))} seeds, "
              f"{cfg['sg2_iter']} iterations each (`03_stylegan2_ada.py ablation`)", "",
              f"Every row trained {cfg['sg2_iter']} iterations (batch {cfg['batch']}) on the target faces from the "
              "same source model with the same seeds; the grid shows the same z in every row.", ""]
    with open(os.path.join(d.abl, "table.md")) as f:
        table = f.read().split("\n", 2)[2]  # without its own title
    lines += [table.strip(), ""]
    if d.v1_score:
        v = d.v1_score
        lines += [f"StyleGAN v1 after FreezeD (02, {cfg['sg1_iter']} iterations), scored the same way: FID {v['fid']:.2f}, "
                  f"KID {v['kid_mean']:.5f} ± {v['kid_std']:.5f}" + (f", FD-faces {v['fd_faces']:.3f}" if "fd_faces" in v else "")
                  + ".", ""]
    lines += [f"The explorer figures below use **{d.best_label}**, {d.best_reason}.", ""]
    for title, path in d.images:
        if path and os.path.isfile(os.path.join(out, path)):
            lines += [f"## {title}", "", f"![{title}]({path})", ""]
    if d.knob_reasons:
        lines += ["How the knobs were named (the rule in demo.py `pick_demo_knobs`, on the sheet's numbers):", ""]
        lines += [f"- {why}" for why in d.knob_reasons] + [""]
    if d.few_shot:
        with open(os.path.join(d.few_shot, "table.md")) as f:
            lines += ["## 10 shots: FreezeD + ADA vs CDC", "", f.read().split("\n", 2)[2].strip(), ""]
    lines += ["## Time per stage", "", "| stage | seconds |", "|---|---|"]
    lines += [f"| {s} | {t:.1f} |" for s, t in d.timings]
    lines += [f"| total | {sum(t for _, t in d.timings):.1f} |", ""]
    with open(os.path.join(out, "summary.md"), "w") as f:
        f.write("\n".join(lines))


class Demo:
    """What the stages share: the settings, the folders, the log and the time of each stage."""

    def __init__(self, args, cfg, out, record):
        self.args, self.cfg, self.out, self.record = args, cfg, out, record
        self.log, self.timings, self.images = os.path.join(out, "demo.log"), [], []
        self.dev = cfg["device"]
        self.zoom = max(1, -(-VIEW // cfg["size"]))  # 32 px -> each image shown 3x, nearest neighbour
        self.data = os.path.join(out, "data")
        self.sg2_src, self.sg1_src = source_paths(cfg["size"])
        self.inception, self.real_fid = inception_choice(args.inception)
        self.v1_score, self.few_shot, self.knob_reasons = None, None, []

    def run(self, stage, args):
        return run(stage, args, self.log, self.timings)

    def show(self, title, src, factor=None):
        """A picture for summary.md: a copy in figures/ enlarged `factor` times (nearest), outputs untouched."""
        factor = self.zoom if factor is None else factor
        dst = os.path.join(self.out, "figures", rel(src, self.out).replace(os.sep, "_")) if src else None
        self.images.append((title, rel(enlarged(src, dst, factor), self.out)))


def stage_data(d):
    d.run("01 demo faces", ["01_prepare_data.py", "--demo", str(d.cfg["faces"]), "--size", str(d.cfg["size"]),
                            "--out", d.data])
    d.run("03 source samples", ["03_stylegan2_ada.py", "generate", "--ckpt", d.sg2_src, "--seeds", "0-7",
                                "--out", os.path.join(d.out, "sg2_source_samples"), "--device", d.dev])


def ablation_command(d, out, rows, seeds, iters, extra=()):
    """03 ablation: every row x seed from the shipped StyleGAN2 on the target faces. G_ema's half-life
    ramps up with the images seen (NVlabs ema_rampup 0.05), otherwise its 10 kimg default would keep
    runs of a few thousand images near their start; R1 at the source model's weight (R1_GAMMA)."""
    cfg = d.cfg
    return (["03_stylegan2_ada.py", "ablation", "--data", d.data, "--ckpt", d.sg2_src, "--out", out,
             "--rows", rows, "--seeds", seeds, "--iter", str(iters), "--batch", str(cfg["batch"]),
             "--ema-rampup", "0.05", "--r1-gamma", str(R1_GAMMA), "--inception", d.inception,
             "--fid-dims", str(cfg["fid_dims"]), "--fid-every", str(cfg["fid_every"]), "--fid-n", str(cfg["fid_n"]),
             "--eval-n", str(cfg["eval_n"]), "--face-features",
             "--sample-every", str(max(1, iters // 4)),
             "--ckpt-every", str(iters), "--device", d.dev, "--num-workers", "0", "--no-progress"] + list(extra))


def row_label(row):
    """The name 03's tables give an ablation row (FreezeD + ADA for freezed-ada, ...)."""
    import importlib.util
    if "sg2" not in _SCRIPTS:
        spec = importlib.util.spec_from_file_location("stylegan2_ada", os.path.join(ROOT, "03_stylegan2_ada.py"))
        _SCRIPTS["sg2"] = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(_SCRIPTS["sg2"])
    return _SCRIPTS["sg2"].ROW_LABELS.get(row, row)


_SCRIPTS = {}


def best_run(abl):
    """The row the table ranks first (03 ablation's --rank-by: FID, the measure a user of real faces has;
    FD-faces, its second column, preferred a speckled run in the README's demo run), and its run with the
    lowest score: (row, run folder, reason)."""
    with open(os.path.join(abl, "table.json")) as f:
        table = json.load(f)
    key = table.get("rank_by", "fid")
    best = min(table["rows"], key=lambda e: e[key])
    name, score = min(((n, s[key]) for n, s in best["runs"].items()), key=lambda t: t[1])
    spread = f" ± {best[key + '_std']:.3f}" if best.get(key + "_std") is not None else ""
    label = {"fd_faces": "FD-faces", "fid": "FID"}[key]
    reason = (f"the row with the lowest mean {label} ({best[key]:.3f}{spread} over its seeds), its run {name} "
              f"({label} {score:.3f})")
    return best["row"], os.path.join(abl, "runs", name), reason


def stage_stylegan2(d):
    cfg = d.cfg
    d.abl = os.path.join(d.out, "ablation")
    d.run(f"03 ablation ({cfg['rows']}; seeds {cfg['seeds']})",
          ablation_command(d, d.abl, cfg["rows"], cfg["seeds"], cfg["sg2_iter"]))
    row, run_dir, d.best_reason = best_run(d.abl)
    d.best_label = row_label(row)
    d.g2 = newest(os.path.join(run_dir, "checkpoints"), ".pt")
    rows = [("source model\n(before)", os.path.join(d.out, "sg2_source_samples"))]
    rows += row_samples(d, d.abl, cfg["rows"].split(","), cfg["seeds"], "0-7", "samples", "03 generate")
    comparison_figure(rows, os.path.join(d.out, "compare.png"), tile=d.zoom * cfg["size"])
    d.images += [("Same seeds, same iterations: the source model, then each row's first run", "compare.png"),
                 ("FID during training, mean ± std over the seeds (03 ablation curves.png)",
                  rel(os.path.join(d.abl, "curves.png"), d.out)),
                 ("Target faces (01)", rel(os.path.join(d.data, "overview", "contact_sheet.png"), d.out))]


def row_samples(d, abl, rows, seeds, which, folder, stage):
    """03 generate of the same seeds `which` from each row's first-seed run of the ablation `abl`:
    [(row label, samples folder)] for comparison_figure."""
    first_seed = seeds.split(",")[0]
    out = []
    for r in rows:
        samples = os.path.join(d.out, folder, r)
        d.run(f"{stage} ({r})", ["03_stylegan2_ada.py", "generate", "--ckpt", os.path.join(abl, "runs", f"{r}-s{first_seed}"),
                                 "--seeds", which, "--out", samples, "--device", d.dev])
        out.append((row_label(r), samples))
    return out


def stage_stylegan_v1(d):
    cfg, s = d.cfg, str(d.cfg["size"])
    sg1 = d.sg1 = os.path.join(d.out, "sg1_freezed")
    n = cfg["sg1_iter"]
    d.run("02 StyleGAN v1 FreezeD", ["02_stylegan_freezed.py", "train", "--data", d.data, "--size", s, "--out", sg1,
          "--ckpt", d.sg1_src, "--preset", "freezed", "--freeze-d", str(FREEZE_D_V1), "--no-sched", "--iter", str(n),
          "--lr", str(V1_LR), "--r1-gamma", str(V1_R1_GAMMA), "--ema-decay", str(V1_EMA_DECAY), "--batch",
          str(cfg["batch"]), "--fid-every", "0", "--sample-every", str(max(1, n // 4)), "--ckpt-every", str(n),
          "--device", d.dev, "--quiet"])
    d.run("02 style mixing", ["02_stylegan_freezed.py", "mix", "--ckpt", sg1, "--size", s, "--rows", "1-3",
          "--cols", "4-7", "--out", os.path.join(d.out, "sg1_mix.png")])
    d.show("StyleGAN v1 after FreezeD: style mixing (02), one block of rows per band (coarse 4-8 px, middle "
           "16-32 px, fine 64 px and up where the size has it): each cell takes its block's band from the left "
           "image and the rest from the top one", os.path.join(d.out, "sg1_mix.png"))
    d.show("StyleGAN v1 after FreezeD: training samples (02)", newest(os.path.join(sg1, "samples")))


def stage_explore(d):
    """04 on the best row's generator, untruncated (after a short fine-tune psi 0.7 draws nearly the
    average face for every seed): named knobs from the sheet, GANSpace, style mixing."""
    lx = os.path.join(d.out, "explore")
    os.makedirs(lx, exist_ok=True)
    knobs = name_demo_knobs(d.g2, os.path.join(lx, "knobs"), d.log, d.dev, d.timings)
    d.knob_reasons = knobs["reasons"]
    d.run("04 GANSpace", ["04_latent_explore.py", "ganspace", "--ckpt", d.g2, "--out", os.path.join(lx, "ganspace.pt"),
                          "--samples", str(d.cfg["ganspace_samples"]), "--components", "16", "--device", d.dev])
    d.run("04 style mixing", ["04_latent_explore.py", "mix", "--ckpt", d.g2, "--rows", "0-2", "--cols", "10-13",
                              "--truncation", "1", "--out", os.path.join(lx, "mix.png"), "--device", d.dev])
    d.show(f"Where each SeFa direction changes {d.best_label}'s faces (04 sheet: -3 .. +3 sigma per layer zone, "
           f"and the map of the change)", knobs["sheet"], 1)
    for name, grid in knobs["edits"].items():
        d.show(f"Named knob '{name}' (04 edit --library --knob {name}), three seeds", grid)
    d.show(f"Meme with the knob '{next(iter(knobs['edits']))}' (04)", knobs["meme"], 1)
    d.show(f"StyleGAN2 style mixing on {d.best_label} (04)", os.path.join(lx, "mix.png"))


def stage_ugatit(d):
    cfg = d.cfg
    ug_data = os.path.join(d.out, "ugatit_data")
    make_domain_a(d.data, os.path.join(ug_data, "trainA"), cfg["ugatit_size"])
    shutil.copytree(d.data, os.path.join(ug_data, "trainB"), ignore=shutil.ignore_patterns("overview", "*.csv", "*.json"))
    ug = os.path.join(d.out, "ugatit")
    n = d.it("ugatit_iter")
    d.run("05 U-GAT-IT", ["05_ugatit.py", "train", "--data", ug_data, "--out", ug, "--img-size", str(cfg["ugatit_size"]),
          "--ch", "8", "--n-res", "1", "--iter", str(n), "--batch", "2", "--sample-every", str(n), "--save-every",
          str(n), "--log-every", str(max(1, n // 10)), "--device", d.dev, "--quiet"])
    d.run("05 chain", ["05_ugatit.py", "chain", "--ugatit", ug, "--stylegan", d.g2, "--seeds", "1", "2", "--walk", "6",
          "--out", os.path.join(d.out, "chain"), "--device", d.dev])
    d.show("U-GAT-IT samples (05)", newest(os.path.join(ug, "samples")), 1)
    d.show(f"StyleGAN2 ({d.best_label}) -> U-GAT-IT walk (05)", newest(os.path.join(d.out, "chain"), ".gif"), 1)


def stage_few_shot(d):
    """10 target faces only: FreezeD + ADA against CDC (Ojha et al. 2021), the same budget."""
    cfg = d.cfg
    d.few_shot = os.path.join(d.out, "few_shot")
    d.run(f"03 ablation 10 shots (freezed-ada,cdc; seeds {cfg['few_shot_seeds']})",
          ablation_command(d, d.few_shot, "freezed-ada,cdc", cfg["few_shot_seeds"], cfg["few_shot_iter"],
                           ["--shots", str(cfg["shots"]), "--diversity-n", str(cfg["eval_n"])]))
    shots = os.path.join(d.few_shot, f"shots-{cfg['shots']}")
    rows = [(f"the {cfg['shots']}\ntraining faces", shots)]
    rows += row_samples(d, d.few_shot, ["freezed-ada", "cdc"], cfg["few_shot_seeds"], "0-9", "samples_few_shot",
                        "03 generate 10 shots")
    comparison_figure(rows, os.path.join(d.out, "few_shot.png"), tile=d.zoom * cfg["size"])
    d.images.append(("10 shots: the training faces, then FreezeD + ADA and CDC (seeds 0-9 of each row's first run)",
                     "few_shot.png"))


def stage_v1_score(d):
    """StyleGAN v1 scored as the ablation scores StyleGAN2: eval_n images against the whole real set."""
    from ops import face_features
    from ops.fid import folder_features, frechet_distance, kid, load_inception, statistics
    cfg = d.cfg
    folder = os.path.join(d.out, "fid_sets", "sg1")
    t0 = time.time()
    call(["02_stylegan_freezed.py", "generate", "--ckpt", d.sg1, "--size", str(cfg["size"]), "--seeds",
          f"{EVAL_SEEDS}-{EVAL_SEEDS + cfg['eval_n'] - 1}", "--out", folder, "--device", d.dev], d.log, "v1 score")
    model = load_inception(d.inception, d.dev, cfg["fid_dims"])
    real = folder_features(d.data, model, batch_size=50, device=d.dev, num_workers=0)["features"]
    gen = folder_features(folder, model, batch_size=50, device=d.dev, num_workers=0)["features"]
    (mu1, s1), (mu2, s2) = statistics(real), statistics(gen)
    km, ks = kid(real, gen, subsets=100)
    d.v1_score = {"fid": float(frechet_distance(mu1, s1, mu2, s2)), "kid_mean": float(km), "kid_std": float(ks)}
    d.v1_score["fd_faces"] = float(face_features.fd_faces(face_features.features(d.data),
                                                          face_features.features(folder)))
    d.timings.append(("02 StyleGAN v1 score", time.time() - t0))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default=os.path.join(ROOT, "demo_out"))
    p.add_argument("--smoke", action="store_true", help="smallest setting (used by the test suite)")
    p.add_argument("--full", action="store_true",
                   help="the seed's six rows, scratch and FreezeG with three seeds, and the 10-shot rows")
    p.add_argument("--few-shot", action="store_true",
                   help="add the 10-shot comparison (FreezeD + ADA vs CDC, two seeds) to the default demo")
    p.add_argument("--make-source", action="store_true",
                   help="train the source models into demo_models/ (refuses to overwrite them)")
    p.add_argument("--score-source", action="store_true",
                   help="FID/KID of the shipped source models against the source faces, beside the noise floor; "
                        "written into demo_models/source_models.json")
    p.add_argument("--make-face-net", action="store_true",
                   help="train the face-feature network of FD-faces (demo faces only) into demo_models/ and check it")
    p.add_argument("--source-runs", default=os.path.join(ROOT, "runs", "source"),
                   help="--make-source / --score-source: folder for the source data, training runs and scores")
    p.add_argument("--device", default="auto", help=DEVICE_HELP)
    p.add_argument("--faces", type=int, default=None, help="target faces (default 200; 16 with --smoke)")
    p.add_argument("--size", type=int, default=SOURCE["size"], help="image size (a shipped source model's size)")
    p.add_argument("--scale", type=float, default=1.0, help="multiply every stage's iterations")
    p.add_argument("--inception", default=None, help="FID Inception weights (default: hub cache, else random)")
    args = p.parse_args(argv)

    if args.make_source:
        os.makedirs(args.source_runs, exist_ok=True)
        make_source(args.size, os.path.join(args.source_runs, f"{args.size}px"),
                    os.path.join(args.source_runs, "make_source.log"))
        print(f"wrote {source_paths(args.size)} and {RECORD}")
        return
    if args.make_face_net:
        make_face_net(os.path.join(args.source_runs, "face_net"), resolve_device(args.device))
        return
    if args.score_source:
        if str(args.size) not in read_record():
            raise SystemExit(f"error: {RECORD} has no {args.size} px source models to score")
        rows = rescore_sources(args.size, os.path.join(args.source_runs, f"{args.size}px"),
                               os.path.join(args.source_runs, "score_source.log"))
        for r, f, m, sd in rows:
            print(f"   {r:45s} FID {f:8.2f}  KID {m:.5f} ± {sd:.5f}")
        print(f"wrote the scores into {RECORD}")
        return
    d = prepare(args)
    stage_data(d)                   # 01: the target faces; the source model's samples
    stage_stylegan2(d)              # 03 ablation: every row x seed, scored; the comparison figure
    stage_stylegan_v1(d)            # 02: StyleGAN v1 + FreezeD, style mixing
    stage_v1_score(d)
    stage_explore(d)                # 04 on the best row: named knobs, GANSpace, mixing
    stage_ugatit(d)                 # 05: U-GAT-IT, chained onto the best row
    if d.cfg["few_shot"]:
        stage_few_shot(d)           # 10 shots: FreezeD + ADA vs CDC
    write_summary(d)
    print(f"\nwrote {os.path.join(d.out, 'summary.md')} ({sum(t for _, t in d.timings):.0f} s in all)")


def prepare(args):
    """Check the source models, resolve the settings, make the demo's folder (refusing one it did not make)."""
    sg2_src, sg1_src = source_paths(args.size)
    for path in (sg2_src, sg1_src):
        if not os.path.isfile(path):
            raise SystemExit(f"error: {path}: no source model for {args.size} px; "
                             f"run `python demo.py --make-source --size {args.size}` first")
    cfg = dict(PRESET["smoke" if args.smoke else "full"])
    if args.full and not args.smoke:
        cfg.update(FULL)
    cfg["few_shot"] = cfg.get("few_shot") or args.few_shot
    cfg.update(faces=args.faces or cfg["faces"], size=args.size, device=str(resolve_device(args.device)))
    for key in ("sg2_iter", "sg1_iter", "few_shot_iter"):
        cfg[key] = max(2, int(cfg[key] * args.scale))
    out = os.path.abspath(args.out)
    if os.path.isdir(out) and os.listdir(out):
        if not os.path.isfile(os.path.join(out, "demo.log")):  # only a folder an earlier demo made is removed
            raise SystemExit(f"error: {out} exists and was not made by demo.py (no demo.log); "
                             f"choose another --out or move it away")
        shutil.rmtree(out)  # the demo folder is always rebuilt from scratch
    elif os.path.isfile(out):
        raise SystemExit(f"error: {out} is a file; choose another --out")
    os.makedirs(out)
    d = Demo(args, cfg, out, read_record().get(str(args.size), {}))
    d.it = lambda k: max(2, int(cfg[k] * args.scale))  # noqa: E731
    return d


if __name__ == "__main__":
    main()
