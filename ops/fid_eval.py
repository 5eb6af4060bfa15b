"""Evaluating a generator with ops.fid: the Evaluator, the copy check, provenance, fid.csv, the CLI.

ops/fid.py is the metric (pytorch-fid's network, features, statistics, Frechet distance, and KID);
this file is what few-shot training adds around it:

1. Memorization check (`nearest`): generated images closer to a training image than any two
   training images are to each other, by pool3 cosine distance and by 64x64 pixel L2 (both).
2. Provenance: the record kept with every score (counts, weights sha256, resize, file types,
   device, dims, git commit) and the warning when a side has fewer images than dimensions.
3. Evaluator: FID, KID and the copy count of a generator against the training folder, with the
   real side's features cached; the training scripts (02, 03) call it.
4. The run folder's training log: RUN/fid.csv (provenance header, one row per evaluation) and
   RUN/fid.png (FID and KID against the iteration).
5. The command line, pytorch-fid's shape; `python -m ops.fid ...` runs this file's main():

    python -m ops.fid real/ fake/                              # last line: FID: <value>
    python -m ops.fid real/ fake/ --kid --json fid.json        # KID: <mean> +- <std>, then FID
    python -m ops.fid --save-stats real/ real_stats.npz        # pytorch-fid compatible (mu, sigma)
    python -m ops.fid --save-features real/ real_feats.npz     # features too (needed for KID)
    python -m ops.fid real_stats.npz fake/ --inception pt_inception-2015-12-05-6726825d.pth
    python -m ops.fid nearest fake/ real/ --out nearest/ --top 16
    python -m ops.fid real/ fake/ --inception random --dims 64 # smoke test only: not comparable

From a training script:
    ev = Evaluator("data/train", device="cuda", cache_dir="runs/fid_cache")
    scores = ev.evaluate(lambda b: g_ema(torch.randn(b, 512, device="cuda"))[0])
    # {"fid", "kid_mean", "kid_std", "copies", "n_real", "n_gen"}; ev.provenance for the log
"""
import argparse
import csv
import json
import os
import subprocess
import sys
import warnings

import numpy as np
import torch
from PIL import Image, ImageDraw

from .device import DEVICE_HELP, resolve_device
from .fid import (DIMS_CHOICES, FID_WEIGHTS_NAME, QUANTIZE_METHOD, RESIZE_METHOD, THUMB_SIZE,
                  InceptionWeightsMissing, choose_kid_subset_size, default_cache_dir,
                  default_num_workers, folder_features, frechet_distance, generator_features, kid,
                  load_inception, load_npz, save_features, save_statistics, statistics,
                  weights_info)
from .runs import OUT_OF_MEMORY, save_image, write_atomic

# ----------------------------------------------------------------------------------------------
# 1. Memorization check: nearest training image of each generated image


def _unit_rows(f):
    f = np.asarray(f, dtype=np.float64)
    return f / np.maximum(np.linalg.norm(f, axis=1, keepdims=True), 1e-12)


def _flat(thumbs):
    return np.asarray(thumbs, dtype=np.float64).reshape(len(thumbs), -1) / 255.0


def _nearest_rows(q, r, metric, exclude_self=False, block=1024):
    """For each row of q: (index, distance) of its nearest row of r, blockwise.

    metric "cosine": q, r unit rows, distance 1 - cos; "l2": Euclidean distance.
    exclude_self: q is r, and i == j pairs are skipped (nearest *other* row)."""
    idx = np.zeros(len(q), np.int64)
    dist = np.zeros(len(q))
    r2 = (r * r).sum(1) if metric == "l2" else None
    for s in range(0, len(q), block):
        qb = q[s:s + block]
        if metric == "cosine":
            d = 1.0 - qb @ r.T
        else:
            d = np.sqrt(np.maximum((qb * qb).sum(1)[:, None] + r2[None] - 2 * qb @ r.T, 0))
        if exclude_self:
            d[np.arange(len(qb)), np.arange(s, s + len(qb))] = np.inf
        idx[s:s + block] = d.argmin(1)
        dist[s:s + block] = d[np.arange(len(qb)), idx[s:s + block]]
    return idx, dist


DUPLICATE_FRACTION = 0.1  # a training pair closer than 0.1 x the median nearest-neighbour distance is a duplicate


def _robust_min(nn_dist):
    """Smallest nearest-neighbour distance among training images, leaving out near-duplicates:
    images whose nearest other training image is closer than DUPLICATE_FRACTION x the median
    nearest-neighbour distance (an exact or re-encoded copy inside the data set would otherwise
    set the threshold to about 0 and nothing could ever be flagged). Returns (value, n_left_out)."""
    dup = nn_dist < DUPLICATE_FRACTION * np.median(nn_dist)
    if dup.all():
        return float(nn_dist.min()), 0
    return float(nn_dist[~dup].min()), int(dup.sum())


def memorization_thresholds(train_feats, train_thumbs):
    """The closest pair of distinct, non-duplicate training images: (min cosine distance of pool3
    features, min L2 distance of 64x64 pixels in [0, 1]) and a line saying how they were chosen.
    A generated image nearer than that to a training image, by both measures, is a copy."""
    if len(train_feats) < 2:
        raise ValueError("the memorization check needs at least 2 training images")
    tf = _unit_rows(train_feats)
    _, dc = _nearest_rows(tf, tf, "cosine", exclude_self=True)
    tp = _flat(train_thumbs)
    _, dp = _nearest_rows(tp, tp, "l2", exclude_self=True)
    (thr_c, dup_c), (thr_p, dup_p) = _robust_min(dc), _robust_min(dp)
    rule = (f"copy thresholds: pool3 cosine {thr_c:.4g}, 64px L2 {thr_p:.4g} = the closest pair of "
            f"training images, leaving out near-duplicates (nearest neighbour closer than "
            f"{DUPLICATE_FRACTION} x the median: {dup_c} by pool3, {dup_p} by pixels)")
    return (thr_c, thr_p), rule


def train_thresholds(train_feats, train_thumbs):
    """(feature, pixel) thresholds of memorization_thresholds."""
    return memorization_thresholds(train_feats, train_thumbs)[0]


def nearest(gen_feats, gen_thumbs, train_feats, train_thumbs, thresholds=None):
    """Nearest training image of every generated one, by pool3 cosine distance and 64px L2.

    A copy lies closer to a training image than the closest pair of distinct training images
    (near-duplicates inside the training set left out, see memorization_thresholds), by both
    measures. One measure alone flags about 2 / (N_train + 1) of truly new images by
    chance (a minimum over N_train distances against one over N_train^2 / 2 pairs); requiring
    both keeps chance flags rare while exact and lightly perturbed copies pass both.
    Returns dict of arrays (length N_gen): feat_index, feat_dist, pixel_index, pixel_dist,
    copy_feat, copy_pixel, copy (both); and thresholds (feature, pixel).
    """
    thr = thresholds or train_thresholds(train_feats, train_thumbs)
    fi, fd = _nearest_rows(_unit_rows(gen_feats), _unit_rows(train_feats), "cosine")
    pi, pd = _nearest_rows(_flat(gen_thumbs), _flat(train_thumbs), "l2")
    cf, cp = fd < thr[0], pd < thr[1]
    return {"feat_index": fi, "feat_dist": fd, "pixel_index": pi, "pixel_dist": pd,
            "copy_feat": cf, "copy_pixel": cp, "copy": cf & cp, "thresholds": thr}


def nearest_grid(gen_thumbs, train_thumbs, pairs, pad=2):
    """PIL image: one row per (gen_index, train_index) pair, generated left, training right."""
    t = THUMB_SIZE
    grid = np.full((pad + len(pairs) * (t + pad), 2 * t + 3 * pad, 3), 255, np.uint8)
    for row, (g, r) in enumerate(pairs):
        y = pad + row * (t + pad)
        grid[y:y + t, pad:pad + t] = np.asarray(gen_thumbs[g]).transpose(1, 2, 0)
        grid[y:y + t, 2 * pad + t:2 * pad + 2 * t] = np.asarray(train_thumbs[r]).transpose(1, 2, 0)
    return Image.fromarray(grid)


def write_nearest(out_dir, result, gen_names, train_names, gen_thumbs, train_thumbs, top=16):
    """nearest.csv (every generated image) and nearest.png (the `top` closest pairs by pool3
    cosine distance). Returns the one-line summary."""
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "nearest.csv"), "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["generated", "nearest_train_feature", "feature_cosine_distance",
                    "nearest_train_pixel", "pixel_l2_64", "copy"])
        for g in range(len(gen_names)):
            w.writerow([gen_names[g], train_names[result["feat_index"][g]],
                        f"{result['feat_dist'][g]:.6g}", train_names[result["pixel_index"][g]],
                        f"{result['pixel_dist'][g]:.6g}", int(result["copy"][g])])
    order = np.argsort(result["feat_dist"], kind="stable")[:top]
    pairs = [(int(g), int(result["feat_index"][g])) for g in order]
    nearest_grid(gen_thumbs, train_thumbs, pairs).save(os.path.join(out_dir, "nearest.png"))
    n_copy = int(result["copy"].sum())
    return (f"copies: {n_copy} of {len(gen_names)} generated images lie closer to a training "
            f"image than the closest pair of training images, by pool3 cosine and 64px L2 "
            f"(by one measure: {int(result['copy_feat'].sum())} and "
            f"{int(result['copy_pixel'].sum())})")


# ----------------------------------------------------------------------------------------------
# 2. Provenance


def git_commit():
    """calm-gan's git commit (with '-dirty' when the tree has changes), or None."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True,
                              text=True, timeout=10)
        if head.returncode != 0:
            return None
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               cwd=root, capture_output=True, text=True, timeout=10)
        return head.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return None


def provenance(info, counts, file_types, device, kid_settings=None):
    """The record kept with every score (--json, fid.csv header). info: weights_info(model)."""
    return {
        "tool": "calm-gan ops.fid (pytorch-fid 0.3.0 network and formulas)",
        "comparable": info["comparable"],
        "weights": info["weights"],
        "weights_sha256": info["weights_sha256"],
        "counts": counts,
        "dims": info["dims"],
        "resize": RESIZE_METHOD,
        "generated_images": QUANTIZE_METHOD,
        "file_types": file_types,
        "device": str(device),
        "covariance": "np.cov (N - 1), float64",
        "kid": kid_settings,
        "git_commit": git_commit(),
        "torch": torch.__version__,
    }


def small_sample_warning(counts, dims):
    """One warning when any side has fewer images than the feature dimension; returns its text."""
    small = {k: v for k, v in counts.items() if v is not None and v < dims}
    if not small:
        return None
    sides = ", ".join(f"{k}: {v}" for k, v in small.items())
    text = (f"fewer images than the {dims} feature dimensions ({sides}): the covariance is "
            f"singular and FID is biased upwards by the sample count; compare KID instead")
    warnings.warn(text)
    return text


# ----------------------------------------------------------------------------------------------
# 3. Evaluator: what training scripts call


class Evaluator:
    """FID, KID and the copy count of a generator against a folder of real images.

    The real side's features (and 64px thumbnails for the copy check) are computed once, cached in
    cache_dir under a content key (file names, sizes, mtimes, weights sha256, dims), and reused
    by every evaluate() call and by later runs.

    real_folder: training images; inception: weights file, None (hub cache, else download) or
    "random" (tests only); cache_dir: None = default_cache_dir(), False = no cache; n_gen:
    generated images per evaluation (default: as many as real); kid: compute KID (else
    kid_mean/kid_std are nan). Raises InceptionWeightsMissing when the weights are unavailable.
    """

    def __init__(self, real_folder, inception=None, device="cpu", batch_size=50, cache_dir=None,
                 n_gen=None, kid=True, dims=2048, num_workers=None, kid_subsets=100,
                 kid_subset_size=None):
        self.model = load_inception(inception, device, dims)
        self.device, self.batch_size, self.kid = device, batch_size, kid
        self.kid_subsets, self.kid_subset_size = kid_subsets, kid_subset_size
        cache_dir = default_cache_dir() if cache_dir is None else (cache_dir or None)
        real = folder_features(real_folder, self.model, batch_size, device, num_workers,
                               thumbs=True, cache_dir=cache_dir)
        self.real_feats, self.real_thumbs, self.real_files = (real["features"], real["thumbs"],
                                                              real["files"])
        self.mu, self.sigma = statistics(self.real_feats)
        self.thresholds, self.threshold_rule = memorization_thresholds(self.real_feats, self.real_thumbs)
        self.n_gen = n_gen or len(self.real_feats)
        m, rule = choose_kid_subset_size(len(self.real_feats), self.n_gen, kid_subset_size)
        self.provenance = provenance(
            weights_info(self.model), {"real": len(self.real_feats), "generated": self.n_gen},
            {"real": real["file_types"], "generated": "tensor from the generator"}, device,
            {"subsets": kid_subsets, "subset_size": m, "subset_size_rule": rule, "seed": 0} if kid else None)
        self.provenance["memorization"] = self.threshold_rule
        self.provenance["real_folder"] = os.path.basename(os.path.normpath(real_folder))
        self.provenance["warning"] = small_sample_warning(self.provenance["counts"], dims)

    def evaluate(self, gen_fn, n_gen=None):
        """gen_fn(b) -> float [b, 3, H, W] in [-1, 1] on any device. Returns
        {"fid", "kid_mean", "kid_std", "copies", "n_real", "n_gen"}."""
        n = n_gen or self.n_gen
        if n < 2:
            raise ValueError(f"n_gen must be at least 2, got {n}")
        gen = generator_features(gen_fn, n, self.model, self.batch_size, self.device,
                                 thumbs=True)
        mu, sigma = statistics(gen["features"])
        km, ks = (kid(self.real_feats, gen["features"], self.kid_subsets, self.kid_subset_size)
                  if self.kid else (float("nan"), float("nan")))
        near = nearest(gen["features"], gen["thumbs"], self.real_feats, self.real_thumbs,
                       self.thresholds)
        return {"fid": frechet_distance(self.mu, self.sigma, mu, sigma), "kid_mean": km,
                "kid_std": ks, "copies": int(near["copy"].sum()), "n_real": len(self.real_feats),
                "n_gen": n}


# ----------------------------------------------------------------------------------------------
# 4. The training log every run folder shares: fid.csv (with its provenance) and fid.png

FID_FIELDS = ("step", "kimg", "fid", "kid_mean", "kid_std", "copies", "n_real", "n_gen")


def read_fid_csv(path):
    """fid.csv -> list of row dicts (numbers as float/int); '#' provenance lines are skipped."""
    if not os.path.isfile(path):
        return []
    with open(path, newline="") as f:
        rows = list(csv.DictReader(line for line in f if not line.startswith("#")))
    out = []
    for r in rows:
        out.append({k: (int(float(v)) if k in ("step", "copies", "n_real", "n_gen") else float(v))
                    for k, v in r.items() if k in FID_FIELDS and v not in ("", None)})
    return out


def record_fid(run_dir, step, result, provenance=None, kimg=None):
    """Add one evaluation to RUN/fid.csv and redraw RUN/fid.png; returns all rows.

    The file starts with '# provenance: {json}' (Inception weights and sha256, image counts, file
    types, resize, device, dims, git commit), then the columns of FID_FIELDS. Rows at or after
    `step` are dropped first, so a resumed run that replays an evaluation does not duplicate it.
    """
    path = os.path.join(run_dir, "fid.csv")
    rows = [r for r in read_fid_csv(path) if r["step"] < step]
    rows.append({"step": step, "kimg": kimg, **{k: result.get(k) for k in FID_FIELDS[2:]}})

    def write(f):
        if provenance is not None:
            f.write("# provenance: " + json.dumps(provenance, sort_keys=True, default=str) + "\n")
        w = csv.writer(f, lineterminator="\n")
        w.writerow(FID_FIELDS)
        for r in rows:
            w.writerow(["" if r.get(k) is None else r[k] for k in FID_FIELDS])

    write_atomic(path, write, mode="w")  # whole or not at all; a failed write names fid.csv
    draw_fid_curve(rows, os.path.join(run_dir, "fid.png"))
    return rows


def _panel(draw, box, xs, ys, errs, color, label):
    """One line plot (with optional +-err band) in the pixel box (left, top, right, bottom)."""
    left, top, right, bottom = box
    draw.rectangle(box, outline="black")
    pts = [(x, y) for x, y in zip(xs, ys) if y == y]  # drop NaN
    draw.text((left + 6, top + 4), label, fill="black")
    if not pts:
        return
    x0, x1 = min(xs), max(xs) if max(xs) > min(xs) else min(xs) + 1
    spread = [e if e == e and e and e > 0 else 0 for e in (errs or [0] * len(pts))]
    lo = min(y - e for (x, y), e in zip(pts, spread))
    hi = max(y + e for (x, y), e in zip(pts, spread))
    if hi - lo < 1e-12:
        lo, hi = lo - 1, hi + 1
    lo, hi = lo - 0.05 * (hi - lo), hi + 0.05 * (hi - lo)

    def xy(x, y):
        return (left + (x - x0) / (x1 - x0) * (right - left), bottom - (y - lo) / (hi - lo) * (bottom - top))

    for t in range(5):
        yv = lo + (hi - lo) * t / 4
        py = xy(x0, yv)[1]
        draw.line([left - 4, py, left, py], fill="black")
        draw.text((4, py - 6), f"{yv:.3g}", fill="black")
    if errs:
        for (x, y), e in zip(pts, errs):
            if e == e and e > 0:  # a band only where a spread was measured
                draw.line([xy(x, y - e), xy(x, y + e)], fill=color, width=1)
    line = [xy(x, y) for x, y in pts]
    if len(line) > 1:
        draw.line(line, fill=color, width=2)
    for px, py in line:
        draw.ellipse([px - 3, py - 3, px + 3, py + 3], fill=color)


def draw_fid_curve(rows, path, width=640, height=520):
    """fid.png: FID (top) and KID mean +- std (bottom) against the iteration, drawn with PIL."""
    img = Image.new("RGB", (width, height), "white")
    d = ImageDraw.Draw(img)
    xs = [r["step"] for r in rows]
    if rows:
        fids = [r.get("fid", float("nan")) for r in rows]
        best = min(range(len(rows)), key=lambda i: fids[i] if fids[i] == fids[i] else float("inf"))
        _panel(d, (70, 20, width - 20, height // 2 - 20), xs, fids, None, (200, 30, 30),
               f"FID (best {fids[best]:.2f} at iteration {xs[best]})")
        stds = [r.get("kid_std", float("nan")) for r in rows]
        measured = any(e == e and e > 0 for e in stds)  # 0 (old files) or nan: no spread was measured
        _panel(d, (70, height // 2 + 10, width - 20, height - 40), xs,
               [r.get("kid_mean", float("nan")) for r in rows], stds if measured else None,
               (30, 80, 200), "KID (mean +- std over subsets)" if measured else
               "KID (mean; std not available: every subset was the whole set)")
        x0, x1 = min(xs), max(xs)
        for t in range(5):
            xv = x0 + (x1 - x0) * t / 4
            px = 70 + (xv - x0) / ((x1 - x0) or 1) * (width - 90)
            d.text((px - 12, height - 34), f"{xv:.0f}", fill="black")
    d.text((width // 2 - 25, height - 18), "iteration", fill="black")
    save_image(img, path)  # written whole (ops.runs.write_atomic)


# ----------------------------------------------------------------------------------------------
# 5. CLI (pytorch-fid's shape): `python -m ops.fid` runs main()


def kid_text(mean, std, subsets, m, rule):
    """The KID line: 'KID: mean ± std (...)', or the mean alone when the std is not available."""
    if std == std:
        return f"KID: {mean:.6g} ± {std:.6g} (std over {subsets} subsets of {m} images per side; {rule})"
    return (f"KID: {mean:.6g} (std not available: every subset is the whole of both sets, {m} "
            f"images; give a --kid-subset-size below {m})")


def _common_args(p):
    p.add_argument("--inception", default=None,
                   help=f"weights file ({FID_WEIGHTS_NAME}); default: torch hub cache, else "
                        f"download; 'random' for smoke tests only (not comparable)")
    p.add_argument("--batch-size", type=int, default=50, help="batch size (pytorch-fid: 50)")
    p.add_argument("--device", default="auto", help=DEVICE_HELP)
    p.add_argument("--num-workers", type=int, default=None,
                   help=f"decoding workers (default here: {default_num_workers()})")
    p.add_argument("--dims", type=int, default=2048, choices=DIMS_CHOICES,
                   help="feature dimension (pytorch-fid: 2048 = pool3)")
    p.add_argument("--cache-dir", default=None, help="cache folder features here, by content")


def build_parser():
    p = argparse.ArgumentParser(prog="python -m ops.fid", description=(
        "FID (and KID) between two folders of images or .npz files, as pytorch-fid computes it. "
        "Memorization check: python -m ops.fid nearest GENERATED TRAIN --out DIR."))
    p.add_argument("path", nargs=2, help="two folders or .npz files (stats or features); with "
                                         "--save-stats/--save-features: FOLDER OUT.npz")
    _common_args(p)
    p.add_argument("--save-stats", action="store_true",
                   help="write mu and sigma of the folder (first path) to the .npz (second path)")
    p.add_argument("--save-features", action="store_true",
                   help="write the features (plus mu, sigma) of the folder to the .npz")
    p.add_argument("--kid", action="store_true", help="also print KID: <mean> +- <std>")
    p.add_argument("--kid-subsets", type=int, default=100, help="KID subsets (default 100)")
    p.add_argument("--kid-subset-size", type=int, default=None,
                   help="KID subset size (default 1000, or half the smaller side when it has 1000 "
                        "images or fewer, so that the subsets differ; a given size is capped at "
                        "the smaller side)")
    p.add_argument("--json", default=None, help="write the scores and their provenance here")
    return p


def build_nearest_parser():
    p = argparse.ArgumentParser(prog="python -m ops.fid nearest", description=(
        "For each generated image, its nearest training image by pool3 cosine distance and by "
        "64x64 pixel L2; writes nearest.csv, nearest.png and counts the copies."))
    p.add_argument("generated", help="folder of generated images")
    p.add_argument("train", help="folder of training images")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--top", type=int, default=16, help="pairs shown in nearest.png (default 16)")
    _common_args(p)
    return p


def _side(path, get_model, args):
    """Features/stats of one CLI argument: folder, stats .npz or features .npz."""
    if path.endswith(".npz") and os.path.isfile(path):
        d = load_npz(path)
        n = len(d["features"]) if "features" in d else (int(d["n"]) if "n" in d else None)
        if d["mu"].shape[0] != args.dims:
            raise ValueError(f"{path}: statistics have {d['mu'].shape[0]} dims, expected "
                             f"{args.dims} (--dims)")
        info = d.get("weights_info") or {"weights": "unknown (statistics file)",
                                         "weights_sha256": None, "comparable": None,
                                         "dims": args.dims}
        return {"mu": d["mu"], "sigma": d["sigma"], "features": d.get("features"), "n": n,
                "file_types": d.get("file_types", "npz"), "info": info}
    if not os.path.isdir(path):
        raise ValueError(f"{path}: neither a folder nor an .npz file")
    model = get_model()
    f = folder_features(path, model, args.batch_size, args.device, args.num_workers,
                        cache_dir=args.cache_dir, progress=sys.stderr.isatty())
    mu, sigma = statistics(f["features"])
    return {"mu": mu, "sigma": sigma, "features": f["features"], "n": len(f["features"]),
            "file_types": f["file_types"], "info": weights_info(model)}


def fid(args):
    """The pytorch-fid style command: two sides -> [KID line] -> FID line (last)."""
    models = []

    def get_model():  # loaded only when a folder is read: two .npz files need no network
        if not models:
            models.append(load_inception(args.inception, args.device, args.dims))
            if not models[0].comparable:
                print("note: random Inception weights: numbers not comparable with any FID")
        return models[0]

    if args.save_stats or args.save_features:
        folder, out = args.path
        if os.path.exists(out):
            raise ValueError(f"{out}: already exists; refusing to overwrite")
        model = get_model()
        f = folder_features(folder, model, args.batch_size, args.device, args.num_workers,
                            cache_dir=args.cache_dir, progress=sys.stderr.isatty())
        if args.save_features:
            save_features(out, f, weights_info(model))
        else:
            save_statistics(out, *statistics(f["features"]), n=len(f["features"]),
                            info=weights_info(model))
        print(f"saved {'features' if args.save_features else 'statistics'} of "
              f"{len(f['features'])} images to {out}")
        return None
    a, b = (_side(p, get_model, args) for p in args.path)
    sha = [s["info"]["weights_sha256"] for s in (a, b)]
    if None not in sha and sha[0] != sha[1]:
        warnings.warn(f"{args.path[0]} and {args.path[1]} come from different Inception weights "
                      f"({sha[0][:12]} vs {sha[1][:12]}): their distance means nothing")
    if False in (a["info"]["comparable"], b["info"]["comparable"]) and not models:
        print("note: random Inception weights: numbers not comparable with any FID")
    counts = {"a": a["n"], "b": b["n"]}
    kid_settings = None
    result = {}
    warning = small_sample_warning(counts, args.dims)
    if args.kid:
        for p, s in zip(args.path, (a, b)):
            if s["features"] is None:
                raise ValueError(f"{p}: has only mu and sigma; KID needs features "
                                 f"(save them with --save-features)")
        m, rule = choose_kid_subset_size(len(a["features"]), len(b["features"]), args.kid_subset_size)
        kid_settings = {"subsets": args.kid_subsets, "subset_size": m, "subset_size_rule": rule,
                        "seed": 0}
        result["kid_mean"], result["kid_std"] = kid(a["features"], b["features"],
                                                    args.kid_subsets, args.kid_subset_size)
        print(kid_text(result["kid_mean"], result["kid_std"], args.kid_subsets, m, rule))
    result["fid"] = frechet_distance(a["mu"], a["sigma"], b["mu"], b["sigma"])
    if args.json:
        info = b["info"] if a["info"]["weights_sha256"] is None else a["info"]
        rec = provenance(info, counts, {"a": a["file_types"], "b": b["file_types"]},
                         args.device if models else "n/a (both sides from .npz)", kid_settings)
        rec.update(paths=[os.path.basename(os.path.normpath(p)) for p in args.path],
                   warning=warning, **result)
        if rec.get("kid_std") is not None and rec["kid_std"] != rec["kid_std"]:
            rec["kid_std"] = None  # not available (JSON has no NaN)
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        write_atomic(args.json, lambda fh: json.dump(rec, fh, indent=2), mode="w")
    print(f"FID: {result['fid']}")
    return result


def nearest_cmd(args):
    model = load_inception(args.inception, args.device, args.dims)
    if not model.comparable:
        print("note: random Inception weights: feature distances are not meaningful")
    sides = [folder_features(p, model, args.batch_size, args.device, args.num_workers,
                             thumbs=True, cache_dir=args.cache_dir)
             for p in (args.generated, args.train)]
    gen, train = sides
    thresholds, rule = memorization_thresholds(train["features"], train["thumbs"])
    print(rule)
    result = nearest(gen["features"], gen["thumbs"], train["features"], train["thumbs"], thresholds)
    line = write_nearest(args.out, result, gen["files"], train["files"], gen["thumbs"],
                         train["thumbs"], args.top)
    print(line)
    return result


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        nearest_mode = argv[:1] == ["nearest"]
        args = build_nearest_parser().parse_args(argv[1:]) if nearest_mode else build_parser().parse_args(argv)
        args.device = str(resolve_device(args.device))  # auto: cuda, then mps, then cpu
        try:
            return nearest_cmd(args) if nearest_mode else fid(args)
        except OUT_OF_MEMORY as e:
            raise SystemExit(out_of_memory_line(e, args)) from None
    except (ValueError, InceptionWeightsMissing) as e:
        raise SystemExit(f"ops.fid: error: {e}") from None


def out_of_memory_line(e, args):
    """One line for a device that cannot hold a batch: what failed and a smaller --batch-size."""
    first = (str(e).strip().splitlines() or ["out of memory"])[0]
    if args.batch_size > 1:
        hint = f"try --batch-size {max(1, args.batch_size // 2)}"
    else:
        hint = "try --device cpu"
    return (f"ops.fid: error: out of memory on {args.device} with --batch-size {args.batch_size} "
            f"({first}); {hint} (no score depends on it beyond float32 rounding)")


if __name__ == "__main__":
    main()
