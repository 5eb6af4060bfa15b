"""Latent-space exploration of a trained generator: GANSpace and SeFa directions, named knobs (find them
on a sheet, name them, keep them in a library, use them by name), projection of your own images, edits,
memes, latent walks, style mixing, a web UI.

Papers
- GANSpace: Härkönen, Hertzmann, Lehtinen, Paris, "GANSpace: Discovering Interpretable GAN Controls",
  NeurIPS 2020, arXiv:2004.02546. For StyleGAN/StyleGAN2 the paper runs PCA directly on style vectors
  w = M(z) (harskish/ganspace, `--layer style --use_w`): the principal axes of W are edit directions,
  applied to a chosen range of the generator's per-layer styles ("E(i, s-e)").
- SeFa: Shen, Zhou, "Closed-Form Factorization of Latent Semantics in GANs", CVPR 2021,
  arXiv:2007.06600. No sampling: with A the stacked style-affine weights (each output unit's weight row
  normalised to unit length, as genforce/sefa's `factorize_weight`), the directions n maximising
  ||A n||^2 subject to ||n|| = 1 are the eigenvectors of A^T A (Eq. 5 of the paper), strongest first.
- Projection: Karras et al., "Analyzing and Improving the Image Quality of StyleGAN", CVPR 2020,
  arXiv:1912.04958, Sec. 5 ("Projection of images to latent space"), as NVlabs/stylegan2-ada-pytorch
  `projector.py` implements it: start at the mean w, Adam on w and on the per-layer noise maps, a
  learning rate ramped up then cosine-ramped down, a decaying Gaussian noise added to w (scaled by the
  spread of W), a multi-scale penalty on noise-map autocorrelation, noise maps renormalised each step.
  rosinality/stylegan2-pytorch `projector.py` adds W+ (`--w_plus`: one w per style slot) and LPIPS + MSE.
  LPIPS: Zhang et al., "The Unreasonable Effectiveness of Deep Features as a Perceptual Metric",
  CVPR 2018, arXiv:1801.03924 (Eq. 1).

What this file implements
- `ganspace`: exact PCA of W (mean and covariance accumulated in float64 over N samples; the same
  subspace sklearn's full PCA finds; GANSpace's default incremental PCA approximates it).
- `sefa`: eigenvectors of A^T A for the selected layers (numpy eigh on the symmetric 512x512 matrix).
- `project`: your own image -> w (or W+) + noise maps, NVIDIA's defaults; the distance is LPIPS/VGG16
  when VGG16 weights are at hand (`--vgg FILE`, or torchvision's file in the torch hub cache; the
  `lpips` package's layer weights when installed), else the checkpoint's own discriminator features
  (LPIPS-style, no download) plus pixel MSE. Writes NAME_proj.png, NAME_latent.pt, NAME_compare.png,
  NAME_distances.json and, with --video, NAME_proj.gif.
- `edit`: a grid PNG of the plain edits and an animated GIF per seed (or projected latent) sweeping one
  direction over a range of degrees; the GIF is the meme: captions in white with a black outline, fitted
  to the width (`--font`), on frames enlarged to at least 256 px when captioned (`--meme-size`).
- `mix`: the style-mixing figure of StyleGAN Fig. 3 (coarse 4-8 px, middle 16-32 px, fine 64+ px).
- `sheet`: which direction changes what: for the first K directions one row per layer zone (coarse /
  middle / fine, as `mix` names them), a few seeds at -3 .. +3 sigma, a "where it changes" map (mean
  |image(+3) - image(-3)| over the seeds) and a word for where it sits (top, eyes, mouth, bottom, whole
  image, pose); the numbers behind each row (centre and thirds of the change, its spread, the sideways
  shift and roll that explain it) go to sheet.json for a naming rule to read.
- `name`, `knobs`: direction i on layers a-b becomes a named knob in a library (JSON, one per generator);
  strengths are in sigma, the spread of w along the direction (GANSpace's lat_stdev; `sefa` stores it
  too), so +3 is a comparable change for every knob and generator.
- `edit --library LIB --knob NAME[=S]`: edits and memes by name, several knobs at once; `walk`: a
  looping latent-walk GIF through seeds (linear in W, eased).
- `ui`: a gradio page: a seed, one slider per knob (its name, sigma units, its own layers), "name this
  direction" (index, name, layer range: added to the library and saved), another library, upload ->
  project -> edit, meme GIFs (optional extra: `pip install -r requirements-ui.txt`). Each browser
  session has its own latent, library and GIF folder; saves from two sessions at once keep both knobs.
It works on every generator that `03_stylegan2_ada.py` (StyleGAN2: ours, rosinality .pt, NVIDIA .pkl)
or `02_stylegan_freezed.py` (StyleGAN v1) can load; those scripts are imported with importlib, so copy
them along with this file.

Files (`torch.save`, all load with weights_only=True)
- directions: `directions` [K, dim] unit rows, strongest first; `values` [K] (explained variances for
  GANSpace, eigenvalues for SeFa); `method`; `layers` (the style slots they were computed for and are
  applied to); `checkpoint` (fingerprint of the generator they came from); GANSpace adds `mean` [dim]
  and `stdev` [K] (sigma, the spread of w along each direction; `sefa` stores it too); `family`, `size`,
  `n_latent` (the generator, so `name` can check a layer range without it).
- knob library (JSON, not torch; see "the knob library" below the banner): `generator` (fingerprint,
  family, size, style_dim, n_latent) and `knobs`, each with its name, layers [first, last], range in
  sigma, sigma, source (method, index, sign, directions fingerprint, file) and its own unit vector.
  It stands alone, is checked field by field when read, and is written atomically under a lock.
- latent (from `project`): `ws` [1, n_latent, dim] (the styles every slot reads), `w` [1, dim] (W
  projections only), `space` ('w' or 'w+'), `noises` (list of [1, 1, r, r]), `family`, `size`,
  `n_latent`, `style_dim`, `checkpoint` (fingerprint), `image`, `distance`, `steps`.

Run
    python 04_latent_explore.py sefa --ckpt RUN/checkpoints/best.pt --out sefa.pt
    python 04_latent_explore.py ganspace --ckpt RUN/checkpoints/best.pt --out ganspace.pt
    python 04_latent_explore.py edit --ckpt RUN/checkpoints/best.pt --dirs sefa.pt --index 0 \\
        --degrees=-5:5:11 --seeds 0-3 --caption-top "WHEN THE CODE" --caption-bottom "FINALLY RUNS" --out edits
    python 04_latent_explore.py project --ckpt RUN/checkpoints/best.pt --image me.png --w-plus --video --out proj
    python 04_latent_explore.py edit --ckpt RUN/checkpoints/best.pt --dirs sefa.pt --latent proj/me_latent.pt --out edits_me
    python 04_latent_explore.py mix --ckpt RUN/checkpoints/best.pt --rows 0-3 --cols 10-14 --out mix.png
    python 04_latent_explore.py sheet --ckpt RUN/checkpoints/best.pt --dirs sefa.pt --out sheet
    python 04_latent_explore.py name --dirs sefa.pt --index 3 --layers 4-7 --name mouth --library knobs.json
    python 04_latent_explore.py knobs --library knobs.json
    python 04_latent_explore.py edit --ckpt RUN/checkpoints/best.pt --library knobs.json --knob mouth=2 \\
        --knob tilt=-1 --seeds 0-3 --caption-top "ME" --out edits_knobs
    python 04_latent_explore.py walk --ckpt RUN/checkpoints/best.pt --seeds 0,4,9 --out walk.gif
    python 04_latent_explore.py ui --ckpt RUN/checkpoints/best.pt --library knobs.json
    # tiny CPU demo, about a minute, on the shipped 32 px source model of demo.py: find, name, use two knobs
    python 04_latent_explore.py sefa --ckpt demo_models/stylegan2_source_32px.pt --out demo_out/sefa.pt
    python 04_latent_explore.py sheet --ckpt demo_models/stylegan2_source_32px.pt --dirs demo_out/sefa.pt \\
        --count 8 --out demo_out/sheet
    python 04_latent_explore.py name --dirs demo_out/sefa.pt --index 1 --layers 0-3 --name hair \\
        --library demo_out/knobs.json
    python 04_latent_explore.py name --dirs demo_out/sefa.pt --index 7 --layers 0-3 --name turn \\
        --library demo_out/knobs.json
    python 04_latent_explore.py edit --ckpt demo_models/stylegan2_source_32px.pt --library demo_out/knobs.json \\
        --knob hair --knob turn=1 --seeds 0-3 --caption-top "ME" --out demo_out/knob_edits

Map (the method, then one banner line, then the plumbing)
  1 the generator seen as z -> w -> styles -> image: StyleGAN2Explorer, StyleGANv1Explorer, mean_w
  2 directions: ganspace, w_stdev, sefa, canonical_sign
  3 projection: learning_rate, w_noise_scale, noise_regularization, normalize_noise_, FeatureDistance
    (LPIPS Eq. 1; its VGG16Features network is ops/lpips.py's), DiscriminatorFeatures, w_stats, project
  4 editing and mixing: truncate, styles_for, apply_edit, mix_styles, apply_knobs, walk_styles
  5 where an edit changes the image: change_map, change_location, pose_change, where_word
  ---- plumbing ----
  checkpoints and file formats (load_explorer, directions and latent files), the knob library
  (read_library, check_knob, add_knob, library_lock), parsing, images and captions, the commands
  (run_*, direction_sheet), the web UI (ExplorerApp, GifFolder, ui_project, build_ui), the CLI (main).
"""
import argparse
import contextlib
import hashlib
import importlib
import importlib.util
import json
import math
import os
import re
import shutil
import sys
import tempfile
import threading
import time
import weakref
import zipfile

try:
    import fcntl  # POSIX file locks (library saves); absent on Windows
except ImportError:
    fcntl = None

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw, ImageFont
from torch import nn
from tqdm import tqdm

import ops  # noqa: F401  (checks the torch version: one line and exit on torch < 2.6)
from ops import OPS_HELP, OPS_MODES, set_ops
from ops import lpips as lpips_ops
from ops import runs  # out_of_memory: one rule for every script
from ops.device import DEVICE_HELP, resolve_device
from ops.lpips import (TORCHVISION_VGG16, VGG16_CFG, VGG16Features, hub_vgg16_file, lpips_lin_weights,  # noqa: F401
                       unit_normalize)

ROOT = os.path.dirname(os.path.abspath(__file__))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

W_AVG_SAMPLES = 4096  # z samples averaged into w_avg when a checkpoint stores none (rosinality mean_latent)
W_AVG_SEED = 123      # fixed, so truncation is reproducible across runs
GANSPACE_SEED = 1     # harskish/ganspace draws its latents after seeding with 1 (SEED_SAMPLING)
STDEV_SAMPLES = 5000  # fresh w samples used to measure the spread along each direction (GANSpace)
SEED_MAX = 2 ** 32 - 1  # np.random.RandomState accepts seeds 0 .. 2^32 - 1
MIX_LABEL_MIN = 64    # mix figures name each band in its corner cell from this image width up
MEME_SIZE = 256       # captioned pictures are enlarged to at least this width before the caption is drawn

# Projection defaults: NVlabs/stylegan2-ada-pytorch projector.py `project(...)` (rosinality's the same).
PROJECT_STEPS = 1000           # num_steps
PROJECT_W_SAMPLES = 10_000     # w_avg_samples: z ~ RandomState(123).randn(10000, dim)
PROJECT_LR = 0.1               # initial_learning_rate (Adam, betas 0.9, 0.999)
PROJECT_NOISE_FACTOR = 0.05    # initial_noise_factor: w noise std = w_std * 0.05 at t = 0
PROJECT_LR_RAMPDOWN = 0.25     # lr_rampdown_length: cosine ramp-down over the last 25% of the steps
PROJECT_LR_RAMPUP = 0.05       # lr_rampup_length: linear ramp-up over the first 5%
PROJECT_NOISE_RAMP = 0.75      # noise_ramp_length: w noise reaches 0 at 75% of the steps
PROJECT_NOISE_REG = 1e5        # regularize_noise_weight
PROJECT_SEED = 303             # projector.py's --seed default
VIDEO_FRAMES = 50              # at most this many frames in --video GIFs

# LPIPS (Zhang et al. 2018) on VGG16 lives in ops/lpips.py (shared with the diversity measure):
# VGG16Features (the taps relu1_2 .. relu5_3, LPIPS' input scaling), unit_normalize, the weight files.


class ExploreError(ValueError):
    """Bad input the user can fix (a flag, a file): `main` prints its message as one line."""


# ----------------------------------------------------------------------------------------------------
# 1. The generator seen as z -> w -> per-layer styles -> image
# ----------------------------------------------------------------------------------------------------

class StyleGAN2Explorer:
    """A StyleGAN2 generator (03_stylegan2_ada.Generator) seen as: z -> w -> per-layer styles -> image.

    Style slots: conv layer l (conv1 = 0, convs[i] = i + 1) reads ws[:, l]; ToRGB layers read the slot
    after their conv; slot n_latent - 1 feeds only the last ToRGB. SeFa uses the modulation (style
    affine) weight of the conv layer behind each selected slot. Noise inputs: g.noises.noise_i,
    [1, 1, r, r] ('const' mode, NVIDIA's noise_const buffers).
    """

    family = "stylegan2"
    path = None  # the checkpoint file, set by load_explorer

    def __init__(self, g, w_avg=None):
        self.g = g.eval().requires_grad_(False)
        self.style_dim = g.style_dim
        self.n_latent = g.n_latent
        self.size = g.size
        self.device = next(g.parameters()).device
        self.w_avg = (w_avg.reshape(1, -1).to(self.device).float() if w_avg is not None
                      else mean_w(self.mapping, self.style_dim, self.device))

    @torch.no_grad()
    def mapping(self, z):
        return self.g.style(z)

    def style_weights(self, layers):
        """[(slot, weight [C_in, style_dim])] for the selected slots that feed a modulated conv."""
        convs = [self.g.conv1] + list(self.g.convs)
        return [(s, convs[s].conv.modulation.weight.detach()) for s in layers if s < len(convs)]

    def mix_bands(self):
        """StyleGAN Sec. 3.1 bands with two slots per resolution (NVIDIA's numbering, 18 slots at 1024 px):
        coarse 4-8 px = slots 0-3, middle 16-32 px = 4-7, fine 64 px and up = 8 .. n_latent - 1."""
        bands = (("coarse", 0, 4), ("middle", 4, 8), ("fine", 8, self.n_latent))
        return [(name, a, min(b, self.n_latent)) for name, a, b in bands if a < self.n_latent]

    def noise_maps(self):
        """The checkpoint's constant noise maps (clones): list of [1, 1, r, r]."""
        return [getattr(self.g.noises, f"noise_{i}").detach().clone() for i in range(self.g.num_layers)]

    def render(self, ws, noises):
        """ws [B, n_latent, dim], noises (list of [1 or B, 1, r, r]) -> image [B, 3, size, size] in [-1, 1].
        Differentiable in ws and noises (projection)."""
        img, _ = self.g([ws], input_is_latent=True, noise=list(noises), randomize_noise=False)
        return img

    @torch.no_grad()
    def synthesize(self, ws, noise_mode="const", noises=None):
        """ws [B, n_latent, dim] -> images [B, 3, size, size] in [-1, 1]; `noises` overrides noise_mode."""
        if noises is not None:
            return self.render(ws, noises)
        if noise_mode == "random":
            img, _ = self.g([ws], input_is_latent=True, randomize_noise=True)
            return img
        maps = self.noise_maps()
        return self.render(ws, [torch.zeros_like(n) for n in maps] if noise_mode == "none" else maps)


class StyleGANv1Explorer:
    """A StyleGAN v1 generator (02_stylegan_freezed.StyledGenerator) at one resolution.

    rosinality's v1 synthesis takes one style per progressive block (both AdaINs of a block read it),
    so the style slots here are the step + 1 blocks (7 at 256 px): slot s runs at 4 * 2^s px. SeFa
    stacks both AdaIN affine weights of each selected block ([2C, dim] each: scale rows then shift
    rows, as genforce's layer pairs). v1 checkpoints store no noise maps: 'const' noise is drawn once
    from a fixed seed (02's seed_noise(g, 0, ...)), one map per block.
    """

    family = "stylegan"
    path = None

    def __init__(self, g, size, device="cpu"):
        self.sg1 = load_script("02_stylegan_freezed")
        self.g = g.eval().to(device).requires_grad_(False)
        self.device = device
        self.size = size
        try:
            self.step = self.sg1.size_to_step(size)
        except ValueError as e:
            raise ExploreError(str(e)) from None
        self.style_dim = g.code_dim
        self.n_latent = self.step + 1
        self.w_avg = mean_w(self.mapping, self.style_dim, device)
        self.const_noise = [n.to(device) for n in self.sg1.seed_noise(g, 0, self.step, "random")]

    @torch.no_grad()
    def mapping(self, z):
        return self.g.style(z)

    def style_weights(self, layers):
        blocks = self.g.generator.progression
        return [(s, torch.cat([blocks[s].adain1.style.linear.weight_orig.detach(),
                               blocks[s].adain2.style.linear.weight_orig.detach()], 0))
                for s in layers if s < self.n_latent]

    def mix_bands(self):
        """The same bands in pixels as StyleGAN2Explorer, with one slot per block (02's MIX_LEVELS):
        coarse = blocks 0-1 (4-8 px), middle = 2-3 (16-32 px), fine = 4 .. step (64 px and up)."""
        bands = (("coarse", 0, 2), ("middle", 2, 4), ("fine", 4, self.n_latent))
        return [(name, a, min(b, self.n_latent)) for name, a, b in bands if a < self.n_latent]

    def noise_maps(self):
        return [n.detach().clone() for n in self.const_noise]

    def render(self, ws, noises):
        b = ws.shape[0]
        noise = [n.expand(b, -1, -1, -1) for n in noises]  # block 0 reads its batch size off noise[0]
        return self.g.generator([ws[:, i] for i in range(self.n_latent)], noise, self.step)

    @torch.no_grad()
    def synthesize(self, ws, noise_mode="const", noises=None):
        if noises is not None:
            return self.render(ws, noises)
        if noise_mode == "random":
            return self.render(ws, self.g.make_noise(ws.shape[0], self.step, self.device))
        maps = self.noise_maps()
        return self.render(ws, [torch.zeros_like(n) for n in maps] if noise_mode == "none" else maps)


def mean_w(mapping, style_dim, device):
    """w_avg: mean of M(z) over W_AVG_SAMPLES latents from a fixed seed -> [1, style_dim]."""
    z = torch.from_numpy(np.random.RandomState(W_AVG_SEED).randn(W_AVG_SAMPLES, style_dim)).float()
    return mapping(z.to(device)).mean(0, keepdim=True)


# ----------------------------------------------------------------------------------------------------
# 2. Directions
# ----------------------------------------------------------------------------------------------------

def canonical_sign(directions):
    """Eigenvectors have arbitrary signs; make each row's largest-magnitude entry positive."""
    idx = directions.abs().argmax(dim=1)
    sign = torch.sign(directions[torch.arange(len(directions)), idx])
    return directions * sign[:, None]


@torch.no_grad()
def ganspace(mapping, style_dim, n_samples=1_000_000, components=80, batch=10_000, seed=GANSPACE_SEED,
             device="cpu"):
    """GANSpace (Sec. 3.1): PCA of w = M(z), z ~ N(0, I), exactly (float64 moments).

    mean = E[w]; C = E[(w - mean)(w - mean)^T] (unbiased); C = V diag(lambda) V^T;
    directions = top-K columns of V as rows, values = lambda (explained variance).
    Latents: np.random.RandomState(seed).standard_normal, drawn in chunks (same stream as one call).
    """
    rng = np.random.RandomState(seed)
    total = torch.zeros(style_dim, dtype=torch.float64)
    outer = torch.zeros(style_dim, style_dim, dtype=torch.float64)
    done = 0
    with tqdm(total=n_samples, desc="ganspace: sampling W", leave=False) as bar:
        while done < n_samples:
            b = min(batch, n_samples - done)
            z = torch.from_numpy(rng.standard_normal((b, style_dim))).float().to(device)
            w = mapping(z).cpu().double()                 # [b, style_dim]; float64 on the CPU (MPS has none)
            total += w.sum(0)
            outer += w.T @ w
            done += b
            bar.update(b)
    mean = total / n_samples
    cov = (outer - n_samples * torch.outer(mean, mean)) / (n_samples - 1)
    values, vectors = torch.linalg.eigh(cov)               # ascending
    order = torch.argsort(values, descending=True)[:components]
    directions = canonical_sign(vectors[:, order].T.contiguous())
    return {"directions": directions.float(), "values": values[order].float(), "method": "ganspace",
            "mean": mean.float(), "stdev": w_stdev(mapping, directions, style_dim, seed + 1, device=device),
            "n_samples": n_samples}


@torch.no_grad()
def w_stdev(mapping, directions, style_dim, seed=GANSPACE_SEED + 1, n=STDEV_SAMPLES, device="cpu"):
    """sigma_k = std of n . w over fresh w = M(z) along each unit row n of `directions` [K, dim] -> [K]
    (GANSpace's lat_stdev). A strength of s sigma moves w by s * sigma_k * n: the same share of W's
    spread for every direction and every generator, so "+3" means a comparable change everywhere."""
    z = torch.from_numpy(np.random.RandomState(seed).standard_normal((n, style_dim))).float()
    proj = mapping(z.to(device)).cpu().double() @ directions.double().T    # [n, K]
    return proj.std(0).float()


def sefa(weights):
    """SeFa (Eq. 5): A = stacked style-affine weights [sum C_in, dim], each row scaled to unit norm
    (genforce/sefa normalisation); directions = eigenvectors of A^T A by descending eigenvalue."""
    weights = [w.detach().cpu().double() for w in weights]  # float64 on the CPU (MPS has none)
    a = torch.cat([w / w.norm(dim=1, keepdim=True) for w in weights], dim=0)
    values, vectors = np.linalg.eigh((a.T @ a).numpy())    # symmetric: real, ascending
    order = np.argsort(values)[::-1].copy()
    directions = canonical_sign(torch.from_numpy(vectors[:, order].T.copy()))
    return {"directions": directions.float(), "values": torch.from_numpy(values[order].copy()).float(),
            "method": "sefa"}


# ----------------------------------------------------------------------------------------------------
# 3. Projection (StyleGAN2 Sec. 5; NVlabs projector.py, rosinality projector.py)
# ----------------------------------------------------------------------------------------------------

def learning_rate(t, lr=PROJECT_LR, rampdown=PROJECT_LR_RAMPDOWN, rampup=PROJECT_LR_RAMPUP):
    """lr(t), t = step / num_steps in [0, 1): linear ramp-up over `rampup`, cosine ramp-down over the
    last `rampdown`:  lr * min(1, t / rampup) * (1 - cos(pi * min(1, (1 - t) / rampdown))) / 2."""
    down = min(1.0, (1.0 - t) / rampdown)
    down = 0.5 - 0.5 * math.cos(down * math.pi)
    return lr * down * min(1.0, t / rampup)


def w_noise_scale(t, w_std, factor=PROJECT_NOISE_FACTOR, ramp=PROJECT_NOISE_RAMP):
    """Std of the Gaussian noise added to w at time t: w_std * factor * max(0, 1 - t / ramp)^2."""
    return w_std * factor * max(0.0, 1.0 - t / ramp) ** 2


def noise_regularization(noises):
    """Multi-scale noise penalty (StyleGAN2 Sec. 5): for every map n, at 2x2-average-pooled scales down
    to 8 px, add the squared mean autocorrelation at a 1-pixel shift along x and along y:
        sum_maps sum_scales [mean(n * roll_x(n))^2 + mean(n * roll_y(n))^2]."""
    reg = 0.0
    for n in noises:
        while True:
            reg = reg + (n * torch.roll(n, shifts=1, dims=3)).mean() ** 2
            reg = reg + (n * torch.roll(n, shifts=1, dims=2)).mean() ** 2
            if n.shape[2] <= 8:
                break
            n = F.avg_pool2d(n, kernel_size=2)
    return reg


@torch.no_grad()
def normalize_noise_(noises):
    """Each noise map back to mean 0, mean square 1 (in place), after every step."""
    for n in noises:
        n -= n.mean()
        n *= n.square().mean().rsqrt()



class FeatureDistance(nn.Module):
    """d(x, y) = sum_l mean_hw sum_c lin_lc (f^_l(x) - f^_l(y))_c^2 + mse * mean((x - y)^2)   (LPIPS Eq. 1)

    f_l: the feature maps `extract` returns (a list, [B, C_l, H_l, W_l]); f^ their unit-normalised form;
    lin_l: per-channel layer weights (LPIPS's learned `lin` layers), ones when not given. With no
    `extract` only the pixel term is left. `name` says which distance this is (printed and recorded).
    """

    def __init__(self, name, extract=None, lin=None, mse=0.0):
        super().__init__()
        self.name = name
        self.extract = extract
        self.lin = lin
        self.mse = mse

    def prepare(self, target):
        """Target [1, 3, S, S] in [-1, 1] -> what forward compares against (computed once)."""
        with torch.no_grad():
            feats = [unit_normalize(f) for f in self.extract(target)] if self.extract is not None else []
        return target, feats

    def forward(self, img, prepared):
        """img [1, 3, S, S] -> (distance, {part: float}) against `prepare(target)`."""
        target, target_feats = prepared
        total = img.new_zeros(())
        parts = {}
        if self.extract is not None:
            feat = 0.0
            for l, (f, g) in enumerate(zip(self.extract(img), target_feats)):
                d = (unit_normalize(f) - g).square()                        # [1, C_l, H_l, W_l]
                if self.lin is not None:
                    d = d * self.lin[l].view(1, -1, 1, 1).to(d)
                feat = feat + d.sum(1).mean()
            total = total + feat
            parts["features"] = float(feat.detach()) if torch.is_tensor(feat) else feat
        mse = (img - target).square().mean()
        parts["mse"] = float(mse.detach())
        if self.mse:
            total = total + self.mse * mse
        return total, parts



class DiscriminatorFeatures(nn.Module):
    """The checkpoint's own discriminator as a feature extractor (no download): the outputs of its
    blocks, from the image side down to 4x4 (`blocks`: the modules whose outputs are kept; `run`:
    img -> the discriminator's forward pass)."""

    def __init__(self, d, blocks, run):
        super().__init__()
        self.d = d.eval().requires_grad_(False)
        self._blocks, self._run, self._out = list(blocks), run, []
        for m in self._blocks:
            m.register_forward_hook(lambda module, inputs, output: self._out.append(output))

    def forward(self, img):
        self._out = []
        self._run(self.d, img)
        return self._out


def w_stats(explorer, n=PROJECT_W_SAMPLES, batch=2500):
    """w_avg [1, dim] and w_std (scalar) of n mapped z ~ RandomState(123).randn (NVIDIA projector.py):
    w_std = sqrt(sum ||w - w_avg||^2 / n), the RMS distance of w from its mean."""
    z = np.random.RandomState(W_AVG_SEED).randn(n, explorer.style_dim)
    w = torch.cat([explorer.mapping(torch.from_numpy(c).float().to(explorer.device)).double()
                   for c in np.array_split(z, max(1, n // batch))], 0)  # [n, dim]
    w_avg = w.mean(0, keepdim=True)
    w_std = float(((w - w_avg).square().sum() / n).sqrt())
    return w_avg.float(), w_std


def project(explorer, target, distance, *, steps=PROJECT_STEPS, w_plus=False, lr=PROJECT_LR,
            noise_factor=PROJECT_NOISE_FACTOR, lr_rampdown=PROJECT_LR_RAMPDOWN, lr_rampup=PROJECT_LR_RAMPUP,
            noise_ramp=PROJECT_NOISE_RAMP, noise_reg=PROJECT_NOISE_REG, seed=PROJECT_SEED, stats=None,
            record_every=0, progress=None, bar=True, desc="project"):
    """Find w (or W+ with w_plus) and noise maps whose image matches `target` [1, 3, S, S] in [-1, 1].

    Per step, t = step / steps:  lr = learning_rate(t);  w' = w + N(0, w_noise_scale(t)^2);
      loss = distance(G(w', noises), target) + noise_reg * noise_regularization(noises);
      Adam step on (w, noises); noises renormalised (normalize_noise_).
    Start: w = w_avg (repeated over the n_latent slots in W+), noises ~ N(0, 1) from `seed`.
    `stats` = (w_avg, w_std) to reuse w_stats; `record_every` > 0 keeps a copy of ws every that many
    steps (for --video); `progress(done, total)` is called after each step.
    Returns {ws [1, n_latent, dim], w [1, dim] or None, noises, image, frames, history}.
    """
    dev = explorer.device
    w_avg, w_std = stats if stats is not None else w_stats(explorer)
    gen = torch.Generator().manual_seed(seed)
    noises = [torch.randn(n.shape, generator=gen).to(dev).requires_grad_(True) for n in explorer.noise_maps()]
    start = w_avg.to(dev).view(1, 1, -1)
    w_opt = (start.repeat(1, explorer.n_latent, 1) if w_plus else start.clone()).requires_grad_(True)
    opt = torch.optim.Adam([w_opt] + noises, lr=lr, betas=(0.9, 0.999))
    prepared = distance.prepare(target.to(dev))
    history = {"lr": [], "loss": [], "distance": [], "noise_reg": []}
    frames = []
    for step in tqdm(range(steps), desc=desc, disable=not bar, leave=False):
        t = step / steps
        for group in opt.param_groups:
            group["lr"] = learning_rate(t, lr, lr_rampdown, lr_rampup)
        w_noise = torch.randn(w_opt.shape, generator=gen).to(dev) * w_noise_scale(t, w_std, noise_factor, noise_ramp)
        ws = (w_opt + w_noise).expand(1, explorer.n_latent, -1)      # [1, n_latent, dim]
        dist, _ = distance(explorer.render(ws, noises), prepared)
        reg = noise_regularization(noises)
        loss = dist + noise_reg * reg
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        normalize_noise_(noises)
        history["lr"].append(opt.param_groups[0]["lr"])
        history["loss"].append(float(loss.detach()))
        history["distance"].append(float(dist.detach()))
        history["noise_reg"].append(float(reg.detach()))
        if record_every and (step % record_every == 0 or step == steps - 1):
            frames.append(w_opt.detach().expand(1, explorer.n_latent, -1).clone())
        if progress is not None:
            progress(step + 1, steps)
    ws = w_opt.detach().expand(1, explorer.n_latent, -1).clone()
    noises = [n.detach().clone() for n in noises]
    return {"ws": ws, "w": None if w_plus else w_opt.detach()[:, 0].clone(), "noises": noises,
            "image": explorer.synthesize(ws, noises=noises), "frames": frames, "history": history}


# ----------------------------------------------------------------------------------------------------
# 4. Editing and mixing
# ----------------------------------------------------------------------------------------------------

def truncate(explorer, ws, psi=1.0):
    """Truncation (StyleGAN Sec. B): w' = w_avg + psi (w - w_avg), for w [B, dim] or ws [B, L, dim]."""
    if psi == 1.0:
        return ws
    avg = explorer.w_avg if ws.ndim == 2 else explorer.w_avg[:, None, :]
    return avg + psi * (ws - avg)


def styles_for(explorer, w, truncation=1.0):
    """w [B, dim] -> per-layer styles [B, n_latent, dim], truncated toward w_avg."""
    w = truncate(explorer, w, truncation)
    return w[:, None, :].repeat(1, explorer.n_latent, 1)


def apply_edit(ws, direction, degree, layers):
    """ws[:, l] += degree * direction for l in layers (GANSpace E(i, s-e), SeFa's edit)."""
    ws = ws.clone()
    ws[:, layers, :] += degree * direction.to(ws)
    return ws


def mix_styles(ws_rows, ws_cols, a, b):
    """StyleGAN Fig. 3: cell (i, j) takes the slots [a, b) of the band from row source i (source B) and
    every other slot from column source j (source A). [R, L, dim], [C, L, dim] -> [R, C, L, dim]."""
    cells = ws_cols[None].repeat(len(ws_rows), 1, 1, 1)
    cells[:, :, a:b] = ws_rows[:, None, a:b]
    return cells


def apply_knobs(ws, knobs):
    """Named knobs, each the edit above on its own slots with its strength in sigma units: for every
    (n [dim], sigma, (first, last), s) in `knobs`, ws[:, first..last] += s * sigma * n. ws [B, L, dim]."""
    ws = ws.clone()
    for direction, sigma, (first, last), strength in knobs:
        if strength:
            ws[:, first:last + 1, :] += float(strength) * float(sigma) * direction.to(ws)
    return ws


def walk_styles(keys, frames_per_key):
    """A looping latent walk (the interpolation videos of NVIDIA's code): from each key's styles to the
    next one's, and from the last back to the first, ws = (1 - t) ws_i + t ws_i+1, linear in W as
    StyleGAN's perceptual path length (Sec. 4.2) interpolates, with t = (1 - cos(pi u)) / 2 eased so the
    walk slows at each key, u = 0, 1/F, .., (F - 1)/F. keys [K, L, dim] -> [K * F, L, dim]."""
    u = torch.arange(frames_per_key, dtype=torch.float32) / frames_per_key
    t = ((1 - torch.cos(math.pi * u)) / 2).view(-1, 1, 1).to(keys)          # [F, 1, 1]
    nxt = torch.roll(keys, shifts=-1, dims=0)
    return torch.cat([(1 - t) * keys[i:i + 1] + t * nxt[i:i + 1] for i in range(len(keys))], 0)


# ----------------------------------------------------------------------------------------------------
# 5. Where an edit changes the image (the numbers a sheet shows and a naming rule reads)
# ----------------------------------------------------------------------------------------------------

POSE_SHARE = 0.4      # a shift or roll that explains >= 40% of the change: the edit moves the picture
WHOLE_SPREAD = 0.3    # half of the change spread over >= 30% of the area (an even change: 50%): everywhere
POSE_PX = 64          # pose is measured on images reduced to at most this size (cost, not accuracy)


def change_map(lo, hi):
    """Where an edit changes the image: |img(+s) - img(-s)| averaged over seeds and colour channels.
    lo, hi [N, 3, H, W] in [-1, 1] (the same seeds at the lowest and the highest strength) -> [H, W]."""
    return (hi - lo).abs().mean(dim=(0, 1))


def change_location(m):
    """The numbers of a change map m [H, W] (>= 0), heights and widths as fractions of the image:
    mean (how much changes), centroid (x, y) of the change, its share in the top, middle and bottom
    thirds, and spread: the share of the image area that holds the larger half of the change (0.5
    for a change the same everywhere, small for a local one)."""
    h, w = m.shape
    m = m.double()
    total = float(m.sum())
    if total <= 0:
        return {"mean": 0.0, "centroid": [0.5, 0.5], "thirds": {"top": 0.0, "middle": 0.0, "bottom": 0.0},
                "spread": 0.0}
    p = m / total
    ys = (torch.arange(h, dtype=torch.float64) + 0.5) / h
    xs = (torch.arange(w, dtype=torch.float64) + 0.5) / w
    rows = p.sum(1)                                                            # [H]
    thirds = [float(rows[(ys >= lo) & (ys < hi)].sum()) for lo, hi in ((0, 1 / 3), (1 / 3, 2 / 3), (2 / 3, 1.01))]
    ranked = torch.sort(p.flatten(), descending=True).values.cumsum(0)
    spread = (int(torch.searchsorted(ranked, torch.tensor(0.5, dtype=torch.float64))) + 1) / (h * w)
    return {"mean": float(m.mean()), "centroid": [float((p.sum(0) * xs).sum()), float((rows * ys).sum())],
            "thirds": dict(zip(("top", "middle", "bottom"), thirds)), "spread": spread}


def _warps(img, moves):
    """img [N, 3, S, S] under each move (dx px, dy px, degrees): shifted and rotated about its centre
    (bilinear, edges repeated), all in one grid_sample -> [len(moves), N, 3, S, S]."""
    n, s = len(img), img.shape[-1]
    thetas = torch.tensor([[[math.cos(math.radians(r)), -math.sin(math.radians(r)), -2 * dx / s],
                            [math.sin(math.radians(r)), math.cos(math.radians(r)), -2 * dy / s]]
                           for dx, dy, r in moves], dtype=img.dtype)                  # [M, 2, 3]
    thetas = thetas.repeat_interleave(n, 0)                                         # [M * N, 2, 3]
    src = img.repeat(len(moves), 1, 1, 1)
    grid = F.affine_grid(thetas, list(src.shape), align_corners=False)
    return F.grid_sample(src, grid, mode="bilinear", padding_mode="border", align_corners=False).view(
        len(moves), *img.shape)


def pose_change(lo, hi, candidates=41):
    """How much of an edit is the picture moving rather than changing: for a sideways shift (px), an
    up-down shift (px) and an in-plane roll (degrees), the amount that best maps img(-s) onto img(+s)
    (a grid search over +-1/4 of the width, +-30 degrees) and the share of the change it explains,
    1 - |warp(lo) - hi|^2 / |lo - hi|^2 (1 for a pure move, about 0 for a local change). Pixels are
    those of the generator's size. lo, hi [N, 3, H, W] in [-1, 1]."""
    size = lo.shape[-1]
    if size > POSE_PX:
        lo, hi = F.interpolate(lo, size=POSE_PX, mode="area"), F.interpolate(hi, size=POSE_PX, mode="area")
    scale = size / lo.shape[-1]
    base = float((lo - hi).square().sum())
    out = {}
    for key, unit, limit, axis in (("shift_x", "px", lo.shape[-1] / 4, 0), ("shift_y", "px", lo.shape[-1] / 4, 1),
                                   ("roll", "degrees", 30.0, 2)):
        values = np.linspace(-limit, limit, candidates)
        moves = [tuple(float(v) if i == axis else 0.0 for i in range(3)) for v in values]
        err = (_warps(lo, moves) - hi[None]).square().flatten(1).sum(1)                # [M]
        best = int(err.argmin())
        share = 0.0 if base <= 0 else max(0.0, 1 - float(err[best]) / base)
        out[key] = {unit: float(values[best]) * (scale if unit == "px" else 1.0), "share": share}
    return out


WORD_RULE = (f"pose if a shift or roll explains >= {POSE_SHARE:g} of the change; whole image if its larger half "
             f"covers >= {WHOLE_SPREAD:g} of the area; else by the height of its centroid: top < 1/3, eyes < 0.55, "
             f"mouth < 0.8, bottom")


def where_word(location, pose):
    """A short word for where a change sits: 'pose' when a shift or roll explains >= POSE_SHARE of it;
    'whole image' when its larger half covers >= WHOLE_SPREAD of the area; else by the height of its
    centroid: 'top' (upper third: hair, forehead), 'eyes' (to 0.55), 'mouth' (to 0.8), 'bottom'."""
    if max(p["share"] for p in pose.values()) >= POSE_SHARE:
        return "pose"
    if location["spread"] >= WHOLE_SPREAD:
        return "whole image"
    y = location["centroid"][1]
    return "top" if y < 1 / 3 else "eyes" if y < 0.55 else "mouth" if y < 0.8 else "bottom"


# ---- plumbing: checkpoints and file formats, parsing, images and captions, commands, web UI, CLI ----

def load_script(name):
    """Import a numbered sibling script (its file name starts with a digit) as a module."""
    return importlib.import_module(name)


def checkpoint_family(path):
    """'stylegan' (02's StyleGAN v1 keys: generator / g_running / generator.progression.*) or
    'stylegan2' (everything else, which 03's loader reads or reports on: g_ema, bare StyleGAN2 state
    dicts, NVIDIA pickles). Decided by the keys, so a loader's error is never mistaken for a format."""
    if not os.path.isfile(path):
        raise ExploreError(f"{path}: no such checkpoint file")
    with open(path, "rb") as f:
        head = f.read(16)
    is_zip = zipfile.is_zipfile(path)
    if not is_zip and not head.startswith(b"\x80\x02\x8a\x0a\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x19"):
        return "stylegan2"  # a pickle (NVIDIA .pkl) or unknown: 03's loader reads it or says why not
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=is_zip)
    except Exception:  # unreadable: 03's loader gives the one-line reason
        return "stylegan2"
    keys = [str(k) for k in ckpt] if isinstance(ckpt, dict) else []
    if "g_running" in keys or "generator" in keys or any(k.startswith("generator.progression.") for k in keys):
        return "stylegan"
    return "stylegan2"


def load_explorer(path, device="cpu", size=None):
    """Any checkpoint 03 (StyleGAN2) or 02 (StyleGAN v1) can load -> an explorer object. The loader's
    own error (03's or 02's CheckpointError) propagates. `size` matters only for StyleGAN v1 files,
    which hold every resolution up to 1024."""
    if checkpoint_family(path) == "stylegan2":
        g, latent_avg = load_script("03_stylegan2_ada").load_generator(path, device=device)
        explorer = StyleGAN2Explorer(g, latent_avg)
    else:
        g, ckpt = load_script("02_stylegan_freezed").load_sampling_generator(path, device)
        trained = ckpt.get("args", {}).get("size") if isinstance(ckpt.get("args"), dict) else None
        explorer = StyleGANv1Explorer(g, size or trained or 256, device)
    explorer.path = path
    return explorer


def fingerprint(explorer):
    """16 hex digits of sha256 over the generator's state dict (names, shapes, float32 values): equal
    for the same weights, different for another generator of the same architecture."""
    cached = getattr(explorer, "_fingerprint", None)
    if cached is None:
        h = hashlib.sha256()
        for name, t in sorted(explorer.g.state_dict().items()):
            h.update(f"{name}{tuple(t.shape)}".encode())
            h.update(t.detach().float().cpu().contiguous().numpy().tobytes())
        cached = explorer._fingerprint = h.hexdigest()[:16]
    return cached


def warn(text):
    print(f"warning: {text}", file=sys.stderr)


def save_torch(path, obj):
    """torch.save to a temp file in the same folder, then os.replace: never a partial file."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".pt", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def save_directions(path, result, layers, explorer=None):
    """A directions file; with the explorer it also records the generator (fingerprint, family, size,
    n_latent), so `name` can check a layer range and a library without loading the checkpoint."""
    result = dict(result, layers=list(layers))
    if explorer is not None:
        result.update(checkpoint=fingerprint(explorer), family=explorer.family, size=explorer.size,
                      n_latent=explorer.n_latent)
    save_torch(path, result)


def directions_fingerprint(d):
    """16 hex digits of sha256 over the directions tensor (shape and float32 values): which file a knob's
    vector came from, the same for a copy or a re-save of it."""
    t = d["directions"].detach().float().cpu().contiguous()
    return hashlib.sha256(f"{tuple(t.shape)}".encode() + t.numpy().tobytes()).hexdigest()[:16]


def read_weights_only(path, what):
    """torch.load(weights_only=True) on the CPU; an unreadable file is one line: PATH: not a readable WHAT."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise ExploreError(f"{path}: not a readable {what} ({err.__class__.__name__})") from None


def load_directions(path):
    if not os.path.isfile(path):
        raise ExploreError(f"{path}: no such directions file (make one with `sefa` or `ganspace`)")
    d = read_weights_only(path, "directions file")
    if not isinstance(d, dict) or not torch.is_tensor(d.get("directions")) or d["directions"].ndim != 2:
        raise ExploreError(f"{path}: not a directions file (needs a [K, dim] 'directions' tensor)")
    return d


def check_directions(d, path, explorer):
    """Raise if the directions cannot apply to this generator; warn if they were made from another one."""
    k, dim = d["directions"].shape
    if dim != explorer.style_dim:
        raise ExploreError(f"{path}: directions of dimension {dim}, but {explorer.path} has style dimension "
                           f"{explorer.style_dim} (made from another generator)")
    layers = d.get("layers") or []
    if any(not isinstance(s, int) or not 0 <= s < explorer.n_latent for s in layers):
        raise ExploreError(f"{path}: its layers {min(layers)}-{max(layers)} are outside the {explorer.n_latent} "
                           f"style slots of {explorer.path}")
    if d.get("checkpoint") and d["checkpoint"] != fingerprint(explorer):
        warn(f"{path} was made from another generator (fingerprint {d['checkpoint']}, this one "
             f"{fingerprint(explorer)}): its directions may mean something else here")


def save_latent(path, explorer, result, image_name="", distance_name="", steps=0):
    save_torch(path, {
        "ws": result["ws"].cpu(), **({"w": result["w"].cpu()} if result.get("w") is not None else {}),
        "space": "w" if result.get("w") is not None else "w+",
        "noises": [n.cpu() for n in result["noises"]], "family": explorer.family, "size": explorer.size,
        "n_latent": explorer.n_latent, "style_dim": explorer.style_dim, "checkpoint": fingerprint(explorer),
        "image": image_name, "distance": distance_name, "steps": steps})


def load_latent(path, explorer):
    """A latent file from `project` -> {ws, noises, ...} on the explorer's device; one-line errors for a
    file of another generator shape, a warning for another generator of the same shape."""
    if not os.path.isfile(path):
        raise ExploreError(f"{path}: no such latent file (make one with `project`)")
    lat = read_weights_only(path, "latent file")
    ws = lat.get("ws") if isinstance(lat, dict) else None
    if not torch.is_tensor(ws) or ws.ndim != 3 or ws.shape[0] != 1:
        raise ExploreError(f"{path}: not a latent file (needs a [1, n_latent, dim] 'ws' tensor)")
    if tuple(ws.shape[1:]) != (explorer.n_latent, explorer.style_dim):
        raise ExploreError(f"{path}: a latent of {ws.shape[1]} style slots x {ws.shape[2]} dims, but "
                           f"{explorer.path} has {explorer.n_latent} x {explorer.style_dim} "
                           f"(projected with another checkpoint)")
    noises = lat.get("noises")
    want = [tuple(n.shape) for n in explorer.noise_maps()]
    if not isinstance(noises, list) or [tuple(n.shape) if torch.is_tensor(n) else None for n in noises] != want:
        raise ExploreError(f"{path}: its noise maps do not fit {explorer.path} (projected with another checkpoint)")
    if lat.get("checkpoint") and lat["checkpoint"] != fingerprint(explorer):
        warn(f"{path} was projected with another generator (fingerprint {lat['checkpoint']}, this one "
             f"{fingerprint(explorer)}): the image will differ")
    lat = dict(lat, ws=ws.float().to(explorer.device), noises=[n.float().to(explorer.device) for n in noises])
    return lat


# ---- the knob library: one JSON file per generator ----
#
# {"format": "calm-gan knob library", "version": 1,
#  "generator": {"fingerprint": 16 hex, "family": "stylegan2" | "stylegan", "size": px, "style_dim": d,
#                "n_latent": style slots},
#  "knobs": [{"name": "hair", "layers": [first, last], "range": [lo, hi], "unit": "sigma", "sigma": s,
#             "source": {"method": "sefa", "index": i, "directions": 16 hex, "file": "sefa.pt"},
#             "vector": [d numbers, unit length]}, ...]}
# A knob at strength t moves the styles of slots first..last by t * sigma * vector. The file stands alone
# (the vector is in it), is plain JSON, and is checked field by field when read: it may come from anyone.

LIBRARY_FORMAT = "calm-gan knob library"
LIBRARY_VERSION = 1
LIBRARY_MAX_BYTES = 4 << 20   # 4 MiB holds ~600 knobs of a 512-d generator; anything larger is not a library
LIBRARY_MAX_KNOBS = 256
KNOB_NAME_MAX = 40
KNOB_NAME_CHARS = " _-."      # besides letters and digits (of any script)
KNOB_RANGE = (-3.0, 3.0)      # default range of a knob, in sigma
KNOB_STRENGTH_MAX = 100.0     # a range end beyond 100 sigma is a typo: the image left the face space long before
KNOB_SWEEP_STEPS = 7          # frames of a knob's sweep over its range (-3 .. 3: whole sigmas)
UNIT_TOLERANCE = 1e-3         # a stored vector's length may differ from 1 by float rounding, not more
FAMILIES = ("stylegan2", "stylegan")
_HEX16 = re.compile(r"[0-9a-f]{16}")
_SAVE_LOCKS = {}              # library path -> threading.Lock: the sessions of one UI page save one at a time
_SAVE_LOCKS_GUARD = threading.Lock()


def generator_info(explorer):
    """The "generator" entry of a library: what a knob needs to fit (and which generator it was found on)."""
    return {"fingerprint": fingerprint(explorer), "family": explorer.family, "size": int(explorer.size),
            "style_dim": int(explorer.style_dim), "n_latent": int(explorer.n_latent)}


def _number(v):
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _int(v):
    return isinstance(v, int) and not isinstance(v, bool)


def check_knob_name(name, what="--name"):
    """A knob's name: 1..40 letters (any script), digits, spaces, '_', '-' or '.'; not 'seed' (the
    page's seed control has that name). Returns it, else raises one line."""
    if not isinstance(name, str) or not name.strip():
        raise ExploreError(f"{what}: a knob needs a name (letters, digits, spaces, '_', '-', '.')")
    if len(name) > KNOB_NAME_MAX:
        raise ExploreError(f"{what} {name[:KNOB_NAME_MAX]!r}...: longer than {KNOB_NAME_MAX} characters")
    bad = sorted({c for c in name if not (c.isalnum() or c in KNOB_NAME_CHARS)})
    if bad or name != name.strip():
        raise ExploreError(f"{what} {name!r}: only letters, digits, spaces, '_', '-' and '.' (no leading or "
                           f"trailing space)" + (f"; not {''.join(bad)!r}" if bad else ""))
    if name.casefold() == "seed":
        raise ExploreError(f"{what} {name!r}: 'seed' is the name of the seed control; choose another")
    return name


def _check_fields(obj, want, where):
    if not isinstance(obj, dict):
        raise ExploreError(f"{where}: expected an object {{...}}, found {type(obj).__name__}")
    missing = [k for k in want if k not in obj]
    unknown = [k for k in obj if k not in want]
    if missing:
        raise ExploreError(f"{where}: missing field {missing[0]!r}")
    if unknown:
        raise ExploreError(f"{where}: unknown field {str(unknown[0])[:40]!r}")


def check_knob(knob, gen, where):
    """One knob of a library, every field checked against the library's generator; returns it normalised
    (floats, tuples of ints) or raises one line naming `where` and the field."""
    _check_fields(knob, ("name", "layers", "range", "unit", "sigma", "source", "vector"), where)
    name = check_knob_name(knob["name"], f"{where}: name")
    where = f"{where} ({name!r})"
    layers = knob["layers"]
    if not (isinstance(layers, list) and len(layers) == 2 and all(_int(v) for v in layers)):
        raise ExploreError(f"{where}: layers must be [first, last] style slots (integers)")
    if not 0 <= layers[0] <= layers[1] < gen["n_latent"]:
        raise ExploreError(f"{where}: layers {layers[0]}-{layers[1]} outside the generator's {gen['n_latent']} "
                           f"style slots (0-{gen['n_latent'] - 1})")
    rng = knob["range"]
    if not (isinstance(rng, list) and len(rng) == 2 and all(_number(v) and math.isfinite(v) for v in rng)):
        raise ExploreError(f"{where}: range must be [low, high] (finite numbers, in sigma)")
    if not (-KNOB_STRENGTH_MAX <= rng[0] < rng[1] <= KNOB_STRENGTH_MAX):
        raise ExploreError(f"{where}: range {rng[0]:g}..{rng[1]:g} must go upwards within "
                           f"+-{KNOB_STRENGTH_MAX:g} sigma")
    if knob["unit"] != "sigma":
        raise ExploreError(f"{where}: unit {str(knob['unit'])[:20]!r}; knobs are in 'sigma' (of w along the vector)")
    sigma = knob["sigma"]
    if not (_number(sigma) and math.isfinite(sigma) and 0 < sigma < 1e6):
        raise ExploreError(f"{where}: sigma must be a positive number (the spread of w along the vector)")
    src = knob["source"]
    _check_fields(src, ("method", "index", "sign", "directions", "file"), f"{where} source")
    if src["method"] not in ("sefa", "ganspace"):
        raise ExploreError(f"{where}: source method {str(src['method'])[:20]!r}; expected 'sefa' or 'ganspace'")
    if not (_int(src["index"]) and 0 <= src["index"] < 1 << 16):
        raise ExploreError(f"{where}: source index must be a direction number (a non-negative integer)")
    if not (_int(src["sign"]) and src["sign"] in (1, -1)):
        raise ExploreError(f"{where}: source sign must be 1 or -1 (-1: the direction reversed)")
    if not (isinstance(src["directions"], str) and _HEX16.fullmatch(src["directions"])):
        raise ExploreError(f"{where}: source directions must be a fingerprint of 16 hex digits")
    if not (isinstance(src["file"], str) and len(src["file"]) <= 255 and src["file"].isprintable()):
        raise ExploreError(f"{where}: source file must be a file name (printable, at most 255 characters)")
    vec = knob["vector"]
    if not isinstance(vec, list) or len(vec) != gen["style_dim"]:
        length = len(vec) if isinstance(vec, list) else type(vec).__name__
        raise ExploreError(f"{where}: vector of length {length}, but the generator's w has "
                           f"{gen['style_dim']} dimensions")
    if not all(_number(v) and math.isfinite(v) for v in vec):
        raise ExploreError(f"{where}: vector holds a value that is not a finite number")
    norm = math.sqrt(sum(float(v) * float(v) for v in vec))
    if abs(norm - 1) > UNIT_TOLERANCE:
        raise ExploreError(f"{where}: vector of length {norm:.4g}; a knob's vector has unit length "
                           f"(its strength is in sigma)")
    return {"name": name, "layers": [int(layers[0]), int(layers[1])], "range": [float(rng[0]), float(rng[1])],
            "unit": "sigma", "sigma": float(sigma), "source": dict(src), "vector": [float(v) for v in vec]}


def check_library(obj, path):
    """A parsed library (untrusted JSON) -> the same, every field checked; one-line errors name `path`."""
    _check_fields(obj, ("format", "version", "generator", "knobs"), f"{path}")
    if obj["format"] != LIBRARY_FORMAT:
        raise ExploreError(f"{path}: format {str(obj['format'])[:40]!r}, not a {LIBRARY_FORMAT!r}")
    if obj["version"] != LIBRARY_VERSION:
        raise ExploreError(f"{path}: library version {str(obj['version'])[:10]}; this script reads version "
                           f"{LIBRARY_VERSION}")
    gen = obj["generator"]
    _check_fields(gen, ("fingerprint", "family", "size", "style_dim", "n_latent"), f"{path}: generator")
    if not (isinstance(gen["fingerprint"], str) and _HEX16.fullmatch(gen["fingerprint"])):
        raise ExploreError(f"{path}: generator fingerprint must be 16 hex digits")
    if gen["family"] not in FAMILIES:
        raise ExploreError(f"{path}: generator family {str(gen['family'])[:20]!r}; expected one of {FAMILIES}")
    for key, top in (("size", 8192), ("style_dim", 8192), ("n_latent", 64)):
        if not (_int(gen[key]) and 1 <= gen[key] <= top):
            raise ExploreError(f"{path}: generator {key} must be an integer in 1..{top}")
    knobs = obj["knobs"]
    if not isinstance(knobs, list):
        raise ExploreError(f"{path}: knobs must be a list [...]")
    if len(knobs) > LIBRARY_MAX_KNOBS:
        raise ExploreError(f"{path}: {len(knobs)} knobs; a library holds at most {LIBRARY_MAX_KNOBS}")
    out, seen = [], set()
    for i, knob in enumerate(knobs):
        knob = check_knob(knob, gen, f"{path}: knob {i}")
        if knob["name"].casefold() in seen:
            raise ExploreError(f"{path}: knob {i}: the name {knob['name']!r} is used twice")
        seen.add(knob["name"].casefold())
        out.append(knob)
    return {"format": LIBRARY_FORMAT, "version": LIBRARY_VERSION, "generator": dict(gen), "knobs": out}


def _refuse_constant(name):
    raise ValueError(f"{name} is not a JSON number")


def _refuse_duplicates(pairs):
    keys = [k for k, _ in pairs]
    for k in keys:
        if keys.count(k) > 1:
            raise ValueError(f"the field {k[:40]!r} appears twice in one object")
    return dict(pairs)


def read_library(path):
    """A knob library file -> the checked library. Refused with one line: no file, a folder, more than
    LIBRARY_MAX_BYTES, not UTF-8, not JSON (NaN and Infinity included), nested too deeply, a field missing,
    unknown or out of range."""
    if not os.path.exists(path):
        raise ExploreError(f"{path}: no such knob library (make one with `name`)")
    if not os.path.isfile(path):
        raise ExploreError(f"{path}: not a file")
    size = os.path.getsize(path)
    if size > LIBRARY_MAX_BYTES:
        raise ExploreError(f"{path}: {size / 2 ** 20:.1f} MiB, larger than a knob library can be "
                           f"({LIBRARY_MAX_BYTES >> 20} MiB); not a library")
    with open(path, "rb") as f:
        raw = f.read(LIBRARY_MAX_BYTES + 1)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise ExploreError(f"{path}: not a knob library (not UTF-8 text at byte {err.start})") from None
    try:
        obj = json.loads(text, parse_constant=_refuse_constant, object_pairs_hook=_refuse_duplicates)
    except json.JSONDecodeError as err:
        raise ExploreError(f"{path}: not a knob library (not JSON: {err.msg} at line {err.lineno} column "
                           f"{err.colno})") from None
    except RecursionError:
        raise ExploreError(f"{path}: not a knob library (JSON nested too deeply)") from None
    except ValueError as err:
        raise ExploreError(f"{path}: not a knob library ({err})") from None
    return check_library(obj, path)


def new_library(generator):
    return {"format": LIBRARY_FORMAT, "version": LIBRARY_VERSION, "generator": dict(generator), "knobs": []}


def library_text(lib):
    """The library as JSON text: one knob per line, its name first and its vector last (8 significant
    digits, float32's precision), so `head` shows the names and a diff shows which knob changed."""
    head = {k: lib[k] for k in ("format", "version")}
    lines = ["{" + json.dumps(head, ensure_ascii=False)[1:-1] + ",",
             f' "generator": {json.dumps(lib["generator"])},', ' "knobs": [']
    for i, knob in enumerate(lib["knobs"]):
        fields = json.dumps({k: v for k, v in knob.items() if k != "vector"}, ensure_ascii=False)[:-1]
        vector = ", ".join(f"{v:.8g}" for v in knob["vector"])
        lines.append(f'  {fields}, "vector": [{vector}]}}' + ("," if i < len(lib["knobs"]) - 1 else ""))
    return "\n".join(lines + [" ]", "}", ""])


def write_library(path, lib):
    """Write the library atomically: a temporary file in the same folder, flushed to disk, then renamed
    over the old one, so a reader sees the old library or the new one, never a part."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".json", dir=folder)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(library_text(lib))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


@contextlib.contextmanager
def library_lock(path):
    """One writer at a time for a library: a thread lock for the sessions of one process (POSIX record
    locks do not exclude threads), and fcntl.lockf on a hidden file beside it for other processes; the OS
    drops that lock when a process dies, so a killed writer never leaves a stale one."""
    real = os.path.realpath(path)
    with _SAVE_LOCKS_GUARD:
        thread_lock = _SAVE_LOCKS.setdefault(real, threading.Lock())
    with thread_lock:
        if fcntl is None:  # no fcntl (Windows): one process at a time is the user's part
            yield
            return
        folder, base = os.path.split(real)
        os.makedirs(folder, exist_ok=True)
        with open(os.path.join(folder, f".{base}.lock"), "a") as f:
            fcntl.lockf(f, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.lockf(f, fcntl.LOCK_UN)


def add_knob(path, knob, generator, overwrite=False):
    """Add (or with `overwrite` replace) one knob in the library at `path`, creating it if missing; read,
    changed and written under library_lock, so two sessions or processes saving at once keep both knobs.
    A library of another generator, a taken name without `overwrite`, or an unreadable file there (it
    may be the user's) are refused with one line and the file stays as it was. Returns the library."""
    with library_lock(path):
        lib = read_library(path) if os.path.exists(path) else new_library(generator)
        have = lib["generator"]
        if have["fingerprint"] != generator["fingerprint"]:
            raise ExploreError(f"{path}: the library of another generator (fingerprint {have['fingerprint']}); "
                               f"this knob comes from {generator['fingerprint']}: use another --library file")
        knob = check_knob(knob, have, f"{path}: new knob")
        names = [k["name"].casefold() for k in lib["knobs"]]
        if knob["name"].casefold() in names:
            if not overwrite:
                raise ExploreError(f"{path}: already has a knob {knob['name']!r} (pass --overwrite to replace it, "
                                   f"or choose another name)")
            lib["knobs"][names.index(knob["name"].casefold())] = knob
        else:
            if len(lib["knobs"]) >= LIBRARY_MAX_KNOBS:
                raise ExploreError(f"{path}: full ({LIBRARY_MAX_KNOBS} knobs)")
            lib["knobs"].append(knob)
        write_library(path, lib)
    return lib


def check_library_fits(lib, path, explorer):
    """A library may only drive the generator it was made on: same fingerprint (same weights)."""
    have, want = lib["generator"], generator_info(explorer)
    if have["fingerprint"] != want["fingerprint"]:
        raise ExploreError(f"{path}: the library of another generator (fingerprint {have['fingerprint']}, "
                           f"{explorer.path} is {want['fingerprint']}); its knobs mean nothing here")
    for key in ("style_dim", "n_latent"):
        if have[key] != want[key]:
            raise ExploreError(f"{path}: made for {key} {have[key]}, but {explorer.path} has {want[key]}")


def knob_term(knob, strength, device="cpu"):
    """(vector, sigma, (first, last), strength): one entry of apply_knobs."""
    return (torch.tensor(knob["vector"], dtype=torch.float32, device=device), knob["sigma"],
            tuple(knob["layers"]), float(strength))


def find_knob(lib, name, path):
    for knob in lib["knobs"]:
        if knob["name"].casefold() == name.casefold():
            return knob
    have = ", ".join(k["name"] for k in lib["knobs"]) or "none yet"
    raise ExploreError(f"{path}: no knob {name!r} (it has: {have})")


def parse_knob_specs(specs, lib, path):
    """--knob NAME or NAME=STRENGTH (in sigma) -> [(knob, strength or None)]; None = sweep it."""
    out = []
    for spec in specs:
        name, eq, value = spec.partition("=")
        strength = None
        if eq:
            try:
                strength = float(value)
            except ValueError:
                raise ExploreError(f"--knob {spec!r}: the strength after '=' must be a number (in sigma)") from None
            if not math.isfinite(strength) or abs(strength) > KNOB_STRENGTH_MAX:
                raise ExploreError(f"--knob {spec!r}: the strength must be finite, within +-{KNOB_STRENGTH_MAX:g}")
        out.append((find_knob(lib, name.strip(), path), strength))
    names = [k["name"] for k, _ in out]
    if len(set(names)) < len(names):
        raise ExploreError(f"--knob: {sorted(n for n in names if names.count(n) > 1)[0]!r} given twice")
    return out


def file_tag(name):
    """A knob name as part of a file name: spaces and dots become '-', letters of any script stay."""
    return "".join(c if c.isalnum() or c in "_-" else "-" for c in name)


# ---- parsing ----

def parse_range(text, n=None, what="range"):
    """'0-3' -> [0, 1, 2, 3]; '1,4,7' -> [1, 4, 7]; 'all' -> range(n); inclusive, as sefa's parse_indices.
    Only non-negative integers; a range must go upwards; with n, every value lies in 0..n-1."""
    if text in (None, "", "all") and n is not None:
        return list(range(n))
    out = []
    for part in str(text).split(","):
        part = part.strip()
        if part.startswith("-"):
            raise ExploreError(f"{what} {text!r}: negative values are not allowed")
        m = re.fullmatch(r"(\d+)(?:-(\d+))?", part)
        if m is None:
            raise ExploreError(f"{what} {text!r}: expected non-negative integers like 0-3 or 1,5,9-11")
        lo, hi = int(m.group(1)), int(m.group(2) or m.group(1))
        if hi < lo:
            raise ExploreError(f"{what} {text!r}: the range {lo}-{hi} runs backwards (write {hi}-{lo})")
        out.extend(range(lo, hi + 1))
    if n is not None and any(i >= n for i in out):
        raise ExploreError(f"{what} {text!r}: outside 0..{n - 1}")
    return out


def parse_seeds(text, what="--seeds"):
    """Seeds for np.random.RandomState: integers 0 .. 2^32 - 1, as '0-7' or '1,5,9-11'."""
    seeds = parse_range(text, what=what)
    if not seeds:
        raise ExploreError(f"{what} {text!r}: no seed given")
    if max(seeds) > SEED_MAX:
        raise ExploreError(f"{what} {text!r}: seeds go up to {SEED_MAX} (np.random.RandomState)")
    return seeds


def parse_degrees(text):
    """'-5:5:11' -> 11 evenly spaced degrees from -5 to 5 (inclusive); '1,2,3' -> a list."""
    try:
        if ":" in text:
            start, stop, num = text.split(":")
            values = [float(v) for v in np.linspace(float(start), float(stop), int(num))]
        else:
            values = [float(v) for v in text.split(",")]
    except ValueError:
        raise ExploreError(f"--degrees {text!r}: expected start:stop:count (e.g. -5:5:11) or a list 1,2,3") from None
    if not values:
        raise ExploreError(f"--degrees {text!r}: no degree given")
    return values


# ---- images ----

def seed_w(explorer, seed):
    """z = np.random.RandomState(seed).randn(1, dim) (NVIDIA's seed convention, as 03 generate) -> w [1, dim]."""
    z = torch.from_numpy(np.random.RandomState(seed).randn(1, explorer.style_dim)).float()
    return explorer.mapping(z.to(explorer.device))


def to_pil(img):
    """[3, H, W] in [-1, 1] -> PIL through 03's `to_uint8`, so edits quantize exactly as `generate`."""
    return Image.fromarray(load_script("03_stylegan2_ada").to_uint8(img[None].detach().cpu())[0].numpy(), "RGB")


def load_target(path, size):
    """An image file of any size and mode -> uint8 [size, size, 3], read exactly as 03 reads its training
    images (03's `_load_image`: RGB with transparency on white, centre-crop to a square, Lanczos resize;
    NVIDIA projector.py crops and resizes alike). One-line error if unreadable or a decompression bomb."""
    try:
        arr, _, _ = load_script("03_stylegan2_ada")._load_image(path, size)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise ExploreError(f"{path}: not a readable image ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})") from None
    return arr


def uint8_to_tensor(arr):
    """uint8 [H, W, 3] -> [1, 3, H, W] in [-1, 1] (x / 127.5 - 1)."""
    return torch.from_numpy(arr.copy()).permute(2, 0, 1)[None].float() / 127.5 - 1


def psnr(a, b):
    """PSNR in dB between two uint8 images: 10 log10(255^2 / mean((a - b)^2))."""
    mse = np.mean((np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2)
    return float("inf") if mse == 0 else float(10 * np.log10(255.0 ** 2 / mse))


def load_font(size, font_path=None):
    if font_path:
        try:
            return ImageFont.truetype(font_path, size)
        except OSError:
            raise ExploreError(f"{font_path}: not a readable TrueType/OpenType font") from None
    return ImageFont.load_default(size=size)


def _wrap(draw, text, font, stroke, width):
    """Greedy word wrap so that every line fits `width` pixels (a word that cannot fit stays alone)."""
    lines = []
    for word in text.split():
        trial = f"{lines[-1]} {word}" if lines else word
        box = draw.textbbox((0, 0), trial, font=font, stroke_width=stroke)
        if lines and box[2] - box[0] <= width:
            lines[-1] = trial
        else:
            lines.append(word)
    return "\n".join(lines)


def draw_caption(img, text, where="top", font_path=None):
    """Meme caption: white text with a black outline, centred, at the largest font size (<= H/7)
    whose word-wrapped lines fit the width and half the height."""
    if not text:
        return img
    img = img.copy()
    draw = ImageDraw.Draw(img)
    w, h = img.size
    margin = max(2, w // 40)
    for size in range(max(6, h // 7), 2, -1):
        font = load_font(size, font_path)
        stroke = max(1, size // 12)
        lines = _wrap(draw, text, font, stroke, w - 2 * margin)
        box = draw.multiline_textbbox((0, 0), lines, font=font, stroke_width=stroke, align="center")
        tw, th = box[2] - box[0], box[3] - box[1]
        if tw <= w - 2 * margin and th <= h // 2 - margin:
            break
    x = (w - tw) // 2 - box[0]
    y = (margin - box[1]) if where == "top" else (h - margin - th - box[1])
    draw.multiline_text((x, y), lines, font=font, fill="white", stroke_width=stroke, stroke_fill="black",
                        align="center")
    return img


def caption(img, top=None, bottom=None, font_path=None):
    return draw_caption(draw_caption(img, top, "top", font_path), bottom, "bottom", font_path)


def enlarge(img, min_size, resample=Image.LANCZOS):
    """img enlarged by the smallest whole factor that makes it at least `min_size` px wide (as it is when
    it already is, or min_size is 0)."""
    factor = -(-min_size // img.width) if min_size else 1
    return img.resize((img.width * factor, img.height * factor), resample) if factor > 1 else img


def meme(img, top=None, bottom=None, font_path=None, min_size=MEME_SIZE):
    """A captioned picture: enlarged by a whole factor (Lanczos) to at least `min_size` px wide, then
    captioned, so the text takes a meme's share of the picture rather than covering a 32 px face.
    Without a caption the image is returned as it is."""
    if not (top or bottom):
        return img
    return caption(enlarge(img, min_size), top, bottom, font_path)


def cell_image(img, cell):
    """A sheet cell of `cell` px or more: a small image enlarged by a whole factor with nearest neighbour
    (each generated pixel a block, nothing invented), a large one reduced to `cell` px (Lanczos)."""
    if img.width >= cell:
        return img.resize((cell, cell), Image.LANCZOS) if img.width > cell else img
    return enlarge(img, cell, Image.NEAREST)


def heat_image(m, background):
    """A change map m [H, W] (scaled to its maximum) drawn as heat (black -> red -> yellow) over a
    dimmed grey copy of `background` (PIL, the same size), so one sees which part of the face it is."""
    m = (m / m.max()).clamp(0, 1).numpy() if float(m.max()) > 0 else np.zeros(tuple(m.shape))
    heat = np.stack([np.clip(2 * m, 0, 1), np.clip(2 * m - 1, 0, 1), np.zeros_like(m)], -1) * 255
    grey = np.asarray(background.convert("L"), np.float64)[..., None] * 0.35
    return Image.fromarray(np.clip(grey + 0.65 * heat, 0, 255).astype(np.uint8), "RGB")


def grid(images, ncol, pad=2, bg=(255, 255, 255)):
    w, h = images[0].size
    nrow = (len(images) + ncol - 1) // ncol
    sheet = Image.new("RGB", (ncol * (w + pad) + pad, nrow * (h + pad) + pad), bg)
    for i, im in enumerate(images):
        sheet.paste(im, (pad + (i % ncol) * (w + pad), pad + (i // ncol) * (h + pad)))
    return sheet


def save_gif(frames, path, duration_ms=80):
    """Animated GIF, one frame per degree, looping forever. A frame of at most 256 colours is stored
    exactly; a larger one gets its own palette by fast octree quantization (PIL's default median cut
    takes seconds per 256 px frame)."""
    frames = [f.quantize(256, method=Image.Quantize.FASTOCTREE) if f.mode == "RGB" and f.getcolors(256) is None
              else f for f in frames]
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=duration_ms, loop=0,
                   optimize=False, disposal=2)


# ---- edit ----

def edit_frames(explorer, direction, seed, degrees, layers, truncation=1.0, noise_mode="const", ws=None,
                noises=None):
    """One image per degree for one seed, or for the given styles `ws` [1, L, dim] (a projected latent,
    with its `noises`), the direction swept over the chosen layers; no caption (see `meme`)."""
    if ws is None:
        ws = styles_for(explorer, seed_w(explorer, seed), truncation)
    else:
        ws = truncate(explorer, ws, truncation)
    batch = torch.cat([apply_edit(ws, direction, d, layers) for d in degrees], 0)
    imgs = torch.cat([explorer.synthesize(b, noise_mode, noises) for b in batch.split(8)], 0)
    return [to_pil(im) for im in imgs]


def _sources(args, explorer, seeds_flag, seeds_text, default):
    """[(name, ws [1, L, dim] or None, noises or None, seed or None)] from --latent files or seeds."""
    if args.latent and seeds_text is not None:
        raise ExploreError(f"give {seeds_flag} or --latent, not both")
    if args.latent:
        out = []
        for path in args.latent:
            lat = load_latent(path, explorer)
            out.append((os.path.splitext(os.path.basename(path))[0].removesuffix("_latent"), lat["ws"],
                        lat["noises"], None))
        return out
    return [(f"seed{s:04d}", None, None, s) for s in parse_seeds(seeds_text or default, seeds_flag)]


def _check_gif_names(args, sources, paths):
    if args.latent and len(set(paths)) < len(paths):
        raise ExploreError("--latent: two files share a name (" + ", ".join(sorted({n for n, *_ in sources if
                           [m for m, *_ in sources].count(n) > 1})) + "); their outputs would overwrite each other")


def run_edit(args):
    if (args.dirs is None) == (args.library is None):
        raise ExploreError("edit: give --dirs DIRS (with --index) or --library LIB (with --knob NAME), one of them")
    explorer = load_explorer(args.ckpt, args.device, args.size)
    if not 0 <= args.meme_size <= 4096:
        raise ExploreError(f"--meme-size {args.meme_size}: must be in 0..4096 (0 = the generator's size)")
    if args.library is not None:
        return run_edit_knobs(args, explorer)
    if args.knob:
        raise ExploreError("--knob needs --library LIB (the file that names the knobs)")
    d = load_directions(args.dirs)
    check_directions(d, args.dirs, explorer)
    if not 0 <= args.index < len(d["directions"]):
        raise ExploreError(f"{args.dirs}: --index {args.index} outside 0..{len(d['directions']) - 1}")
    layers = (parse_range(args.layers, explorer.n_latent, "--layers") if args.layers
              else list(d.get("layers") or range(explorer.n_latent)))
    degrees = parse_degrees(args.degrees or "-5:5:11")
    sources = _sources(args, explorer, "--seeds", args.seeds, "0-3")
    truncation = args.truncation if args.truncation is not None else (1.0 if args.latent else 0.7)
    gifs = [os.path.join(args.out, f"{name}_dir{args.index:02d}.gif") for name, *_ in sources]
    _check_gif_names(args, sources, gifs)
    sheet = os.path.join(args.out, f"grid_dir{args.index:02d}.png")
    load_script("03_stylegan2_ada").refuse_existing_outputs(gifs + [sheet], args.overwrite)
    os.makedirs(args.out, exist_ok=True)   # only after every input and output has been checked
    rows = []
    for (name, ws, noises, seed), gif in zip(tqdm(sources, desc="edit"), gifs):
        frames = edit_frames(explorer, d["directions"][args.index], seed, degrees, layers, truncation,
                             args.noise_mode, ws, noises)
        # the GIF is the meme (captioned, enlarged so the caption fits); the grid shows the plain edits
        save_gif([meme(f, args.caption_top, args.caption_bottom, args.font, args.meme_size) for f in frames],
                 gif, args.duration)
        rows.extend(frames)
    grid(rows, len(degrees)).save(sheet)
    print(f"wrote {args.out}: grid_dir{args.index:02d}.png and one GIF per {'latent' if args.latent else 'seed'} "
          f"({len(degrees)} frames, degrees {degrees[0]:g}..{degrees[-1]:g}, layers {layers[0]}-{layers[-1]})")


def knob_frames(explorer, ws, noises, terms, noise_mode="const"):
    """One image per list of knob terms (apply_knobs), for the styles ws [1, L, dim]."""
    batch = torch.cat([apply_knobs(ws, t) for t in terms], 0)
    imgs = torch.cat([explorer.synthesize(b, noise_mode, noises) for b in batch.split(8)], 0)
    return [to_pil(im) for im in imgs]


def run_edit_knobs(args, explorer):
    """edit --library LIB --knob NAME[=S] ...: knobs given a strength are applied as they are; one knob
    without a strength is swept over its range (or --degrees, in sigma): a grid row and a (meme) GIF per
    seed. With every knob given a strength: one edited picture per seed (a meme with a caption) and a
    grid of original | edited."""
    lib = read_library(args.library)
    check_library_fits(lib, args.library, explorer)
    if not args.knob:
        raise ExploreError(f"--library needs --knob NAME (its knobs: "
                           f"{', '.join(k['name'] for k in lib['knobs']) or 'none yet'})")
    if args.layers:
        raise ExploreError("--layers: a knob brings its own layer range (name it again with other --layers)")
    specs = parse_knob_specs(args.knob, lib, args.library)
    swept = [k for k, s in specs if s is None]
    if len(swept) > 1:
        raise ExploreError(f"--knob: one knob is swept at a time ({', '.join(k['name'] for k in swept)} have no "
                           f"strength); give the others one, e.g. --knob {swept[1]['name']}=1")
    fixed = [knob_term(k, s, explorer.device) for k, s in specs if s is not None]
    tag = "_".join(file_tag(k["name"]) + ("" if s is None else f"{s:+g}") for k, s in specs)
    sources = _sources(args, explorer, "--seeds", args.seeds, "0-3")
    truncation = args.truncation if args.truncation is not None else (1.0 if args.latent else 0.7)
    if swept:
        knob = swept[0]
        strengths = (parse_degrees(args.degrees) if args.degrees
                     else [float(v) for v in np.linspace(*knob["range"], KNOB_SWEEP_STEPS)])
        outputs = [os.path.join(args.out, f"{name}_{tag}.gif") for name, *_ in sources]
        terms = [fixed + [knob_term(knob, v, explorer.device)] for v in strengths]
    else:
        outputs = [os.path.join(args.out, f"{name}_{tag}.png") for name, *_ in sources]
        terms = [[], fixed]
    _check_gif_names(args, sources, outputs)
    sheet = os.path.join(args.out, f"grid_{tag}.png")
    load_script("03_stylegan2_ada").refuse_existing_outputs(outputs + [sheet], args.overwrite)
    os.makedirs(args.out, exist_ok=True)   # only after every input and output has been checked
    rows = []
    for (name, ws, noises, seed), path in zip(tqdm(sources, desc="edit"), outputs):
        ws = (styles_for(explorer, seed_w(explorer, seed), truncation) if ws is None
              else truncate(explorer, ws, truncation))
        frames = knob_frames(explorer, ws, noises, terms, args.noise_mode)
        shown = [meme(f, args.caption_top, args.caption_bottom, args.font, args.meme_size) for f in frames]
        save_gif(shown, path, args.duration) if swept else shown[-1].save(path)
        rows.extend(frames)
    grid(rows, len(terms)).save(sheet)
    what = (f"{knob['name']} swept {strengths[0]:g}..{strengths[-1]:g} sigma (layers {knob['layers'][0]}-"
            f"{knob['layers'][1]}), one GIF per {'latent' if args.latent else 'seed'}" if swept
            else "original | edited, one edited picture per " + ("latent" if args.latent else "seed"))
    print(f"wrote {args.out}: grid_{tag}.png ({what})")


def run_walk(args):
    """walk: a looping GIF through the seeds' images (walk_styles), knobs from --library applied to every
    frame, enlarged to --view px (whole factor, Lanczos) and captioned like a meme."""
    explorer = load_explorer(args.ckpt, args.device, args.size)
    seeds = parse_seeds(args.seeds)
    if len(seeds) < 2:
        raise ExploreError(f"--seeds {args.seeds!r}: a walk needs at least two seeds")
    if not 1 <= args.frames <= 240:
        raise ExploreError(f"--frames {args.frames}: frames per seed must be in 1..240")
    if not 0 <= args.view <= 4096:
        raise ExploreError(f"--view {args.view}: must be in 0..4096 (0 = the generator's size)")
    if os.path.splitext(args.out)[1].lower() != ".gif":
        raise ExploreError(f"--out {args.out}: a walk is a GIF (e.g. walk.gif)")
    terms = []
    if args.knob:
        if args.library is None:
            raise ExploreError("--knob needs --library LIB (the file that names the knobs)")
        lib = read_library(args.library)
        check_library_fits(lib, args.library, explorer)
        specs = parse_knob_specs(args.knob, lib, args.library)
        if any(s is None for _, s in specs):
            raise ExploreError("walk --knob: give each knob a strength, e.g. --knob hair=2")
        terms = [knob_term(k, s, explorer.device) for k, s in specs]
    load_script("03_stylegan2_ada").refuse_existing_outputs([args.out], args.overwrite)
    keys = styles_for(explorer, torch.cat([seed_w(explorer, s) for s in seeds]), args.truncation)
    ws = apply_knobs(walk_styles(keys, args.frames), terms)
    frames = [to_pil(im) for b in ws.split(8) for im in explorer.synthesize(b, args.noise_mode)]
    frames = [caption(enlarge(f, args.view), args.caption_top, args.caption_bottom, args.font) for f in frames]
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    save_gif(frames, args.out, args.duration)
    print(f"wrote {args.out}: {len(frames)} frames through seeds {', '.join(map(str, seeds))} and back, "
          f"{frames[0].width} px")


# ---- naming knobs ----

def parse_layer_range(text, n, what="--layers"):
    """'4-7' or '5' -> (4, 7) / (5, 5): a contiguous range of style slots inside 0..n-1."""
    m = re.fullmatch(r"\s*(\d+)\s*(?:-\s*(\d+))?\s*", str(text))
    if m is None:
        raise ExploreError(f"{what} {text!r}: expected a range of style slots like 4-7 (or one slot, 5)")
    a, b = int(m.group(1)), int(m.group(2) or m.group(1))
    if b < a:
        raise ExploreError(f"{what} {text!r}: the range runs backwards (write {b}-{a})")
    if b >= n:
        raise ExploreError(f"{what} {text!r}: outside the generator's {n} style slots (0-{n - 1})")
    return a, b


def parse_strength_range(text):
    """'-3:3' -> (-3.0, 3.0): a knob's range in sigma."""
    try:
        lo, hi = (float(v) for v in str(text).split(":"))
    except ValueError:
        raise ExploreError(f"--range {text!r}: expected low:high in sigma, e.g. --range=-3:3") from None
    if not (math.isfinite(lo) and math.isfinite(hi) and -KNOB_STRENGTH_MAX <= lo < hi <= KNOB_STRENGTH_MAX):
        raise ExploreError(f"--range {text!r}: low < high, within +-{KNOB_STRENGTH_MAX:g} sigma")
    return lo, hi


def direction_knob(d, dirs_path, index, name, layers, strength_range, sigma, sign=1):
    """A library entry for direction `index` of directions file `d` (sign -1: reversed, so that + goes
    the way the name says)."""
    vector = d["directions"][index].double()
    vector = (sign * vector / vector.norm()).tolist()  # unit rows already; exactly unit in float64 for the check
    return {"name": name, "layers": [int(layers[0]), int(layers[1])],
            "range": [float(strength_range[0]), float(strength_range[1])], "unit": "sigma",
            "sigma": float(f"{sigma:.8g}"), "source": {"method": str(d.get("method", "sefa")), "index": int(index),
                                              "sign": int(sign), "directions": directions_fingerprint(d),
                                              "file": os.path.basename(dirs_path)},
            "vector": vector}


def dirs_generator(d, path, explorer=None):
    """The generator entry for a directions file: from the file itself (sefa/ganspace record it), or from
    --ckpt for an older file; a checkpoint that is not the one the file came from is refused."""
    if explorer is not None:
        check_directions(d, path, explorer)
        info = generator_info(explorer)
        if d.get("checkpoint") and d["checkpoint"] != info["fingerprint"]:
            raise ExploreError(f"{path} was made from another generator (fingerprint {d['checkpoint']}) than "
                               f"{explorer.path} ({info['fingerprint']}); name knobs with its own checkpoint")
        return info
    need = [k for k in ("checkpoint", "family", "size", "n_latent") if k not in d]
    if need:
        raise ExploreError(f"{path}: an older directions file that does not record its generator ({need[0]}); "
                           f"pass --ckpt CKPT (the checkpoint it was made from)")
    return {"fingerprint": str(d["checkpoint"]), "family": str(d["family"]), "size": int(d["size"]),
            "style_dim": int(d["directions"].shape[1]), "n_latent": int(d["n_latent"])}


def run_name(args):
    """name: one direction of a directions file becomes a named knob in the library."""
    d = load_directions(args.dirs)
    k = len(d["directions"])
    if not 0 <= args.index < k:
        raise ExploreError(f"{args.dirs}: --index {args.index} outside 0..{k - 1}")
    name = check_knob_name(args.name)
    strength_range = parse_strength_range(args.range)
    explorer = load_explorer(args.ckpt, args.device, args.size) if args.ckpt else None
    gen = dirs_generator(d, args.dirs, explorer)
    default = d.get("layers") or list(range(gen["n_latent"]))
    layers = (parse_layer_range(args.layers, gen["n_latent"]) if args.layers is not None
              else (min(default), max(default)))
    stdev = d.get("stdev")
    if torch.is_tensor(stdev) and stdev.shape == (k,):
        sigma = float(stdev[args.index])
    elif explorer is not None:  # an older SeFa file: measure sigma along the direction now
        sigma = float(w_stdev(explorer.mapping, d["directions"][args.index:args.index + 1].float(),
                              explorer.style_dim, device=explorer.device)[0])
    else:
        raise ExploreError(f"{args.dirs}: an older {d.get('method', 'directions')} file without the spread of w "
                           f"along its directions; pass --ckpt CKPT to measure it")
    if not (math.isfinite(sigma) and sigma > 0):
        raise ExploreError(f"{args.dirs}: direction {args.index} has no spread in w (sigma {sigma:g}); "
                           f"it moves nothing")
    knob = direction_knob(d, args.dirs, args.index, name, layers, strength_range, sigma, -1 if args.flip else 1)
    lib = add_knob(args.library, knob, gen, args.overwrite)
    print(f"{args.library}: knob {name!r} = {'-' if args.flip else ''}{knob['source']['method']} direction "
          f"{args.index}, layers "
          f"{layers[0]}-{layers[1]}, {strength_range[0]:g}..{strength_range[1]:g} sigma (sigma = {sigma:.4g}); "
          f"{len(lib['knobs'])} knob(s)")


def run_knobs(args):
    """knobs: the library's knobs, one line each."""
    lib = read_library(args.library)
    gen = lib["generator"]
    print(f"{args.library}: {len(lib['knobs'])} knob(s) for the {gen['family']} generator {gen['fingerprint']} "
          f"({gen['size']} px, {gen['n_latent']} style slots, w of {gen['style_dim']} dimensions)")
    rows = [(k["name"], f"{'-' if k['source']['sign'] < 0 else ''}{k['source']['method']} #{k['source']['index']} "
                        f"({k['source']['file']})",
             f"{k['layers'][0]}-{k['layers'][1]}", f"{k['range'][0]:g}..{k['range'][1]:g} sigma",
             f"{k['sigma']:.4g}") for k in lib["knobs"]]
    head = ("name", "source", "layers", "range", "sigma")
    widths = [max(len(r[i]) for r in rows + [head]) for i in range(len(head))]
    for r in [head] + rows:
        print("  " + "  ".join(v.ljust(w) for v, w in zip(r, widths)).rstrip())


# ---- sheet: which index is the mouth ----

SHEET_CELL = 128  # px per sheet cell: small generators are enlarged (nearest) to at least this


def row_numbers(index, zone, layers, sigma, lo, mid, hi, grid_size=16):
    """The numbers behind one sheet row (a direction on one zone's slots), as sheet.json stores them: the
    change from the lowest to the highest strength (lo, hi), its word, pose and pooled map, and under
    "sides" where each half of the sweep changes the image (lo vs mid and mid vs hi, mid = unedited): a
    direction may grow hair one way and do something else the other way."""
    r = lambda v: round(float(v), 5)  # noqa: E731

    def place(a, b):
        m = change_map(a, b)
        loc = change_location(m)
        small = F.adaptive_avg_pool2d(m[None, None], min(grid_size, m.shape[0]))[0, 0]
        return {"change": r(loc["mean"]), "centroid": [r(v) for v in loc["centroid"]],
                "thirds": {k: r(v) for k, v in loc["thirds"].items()}, "spread": r(loc["spread"]),
                "map": [[r(v) for v in row] for row in small.tolist()]}
    pose = pose_change(lo, hi)
    whole = place(lo, hi)
    return {"index": int(index), "zone": zone, "layers": [int(layers[0]), int(layers[1])], "sigma": r(sigma),
            "word": where_word(change_location(change_map(lo, hi)), pose), **whole,
            "shift_x": {k: r(v) for k, v in pose["shift_x"].items()},
            "shift_y": {k: r(v) for k, v in pose["shift_y"].items()},
            "roll": {k: r(v) for k, v in pose["roll"].items()},
            "sides": {"minus": place(lo, mid), "plus": place(mid, hi)}}, change_map(lo, hi)


def direction_sheet(explorer, directions, sigmas, indices, seeds, strengths, truncation=0.7, cell=SHEET_CELL,
                    noise_mode="const"):
    """For each direction and each layer zone (mix_bands: coarse / middle / fine, the zones the generator
    has), one row: every seed at every strength (in sigma) on the zone's slots, then the row's
    where-it-changes map (change_map of the lowest vs the highest strength, as heat over the mean face)
    and a label with the word for where it sits. Returns (sheet PIL, [row numbers])."""
    base = styles_for(explorer, torch.cat([seed_w(explorer, s) for s in seeds]), truncation)   # [N, L, dim]
    font = load_font(max(10, cell // 9))
    label_w = max(cell, 150)
    rows, records = [], []
    header = Image.new("RGB", (label_w + (len(seeds) * len(strengths) + 1) * (cell + 2), cell // 4 + 8), "white")
    draw = ImageDraw.Draw(header)
    draw.text((4, 4), "direction, zone", fill="black", font=font)
    for j, s in enumerate(seeds):
        for i, v in enumerate(strengths):
            x = label_w + (j * len(strengths) + i) * (cell + 2) + 4
            draw.text((x, 4), f"seed {s}: {v:+g} sd" if i == 0 else f"{v:+g} sd", fill="black", font=font)
    draw.text((label_w + len(seeds) * len(strengths) * (cell + 2) + 4, 4), "where it changes", fill="black", font=font)
    unedited = torch.cat([explorer.synthesize(c, noise_mode) for c in base.split(16)]).clamp(-1, 1)  # [N, 3, H, W]
    plain = unedited.mean(0)                                                        # the mean face, behind the maps
    for k in indices:
        for zone, a, b in explorer.mix_bands():
            edited = torch.cat([apply_knobs(base, [(directions[k], sigmas[k], (a, b - 1), v)]) for v in strengths])
            imgs = torch.cat([explorer.synthesize(c, noise_mode) for c in edited.split(16)]).clamp(-1, 1)  # as shown
            imgs = imgs.view(len(strengths), len(seeds), *imgs.shape[1:])                # [strength, seed, 3, H, W]
            rec, m = row_numbers(k, zone, (a, b - 1), sigmas[k], imgs[0], unedited, imgs[-1])
            records.append(rec)
            cells = [cell_image(to_pil(imgs[i][j]), cell) for j in range(len(seeds)) for i in range(len(strengths))]
            cells.append(cell_image(heat_image(m, to_pil(plain)), cell))
            label = Image.new("RGB", (label_w, cells[0].height), "white")
            ImageDraw.Draw(label).multiline_text(
                (4, 4), f"#{k} {zone} {a}-{b - 1}\n{rec['word']}\nchange {rec['change']:.3f}\nsigma {sigmas[k]:.3g}",
                fill="black", font=font, spacing=4)
            row = Image.new("RGB", (label_w + len(cells) * (cell + 2), cells[0].height + 2), "white")
            row.paste(label, (0, 0))
            for i, c in enumerate(cells):
                row.paste(c, (label_w + i * (cell + 2), 0))
            rows.append(row)
        rows.append(Image.new("RGB", (rows[-1].width, 6), (200, 200, 200)))       # between directions
    sheet = Image.new("RGB", (header.width, header.height + sum(r.height for r in rows)), "white")
    sheet.paste(header, (0, 0))
    y = header.height
    for r in rows:
        sheet.paste(r, (0, y))
        y += r.height
    return sheet, records


def run_sheet(args):
    explorer = load_explorer(args.ckpt, args.device, args.size)
    d = load_directions(args.dirs)
    check_directions(d, args.dirs, explorer)
    k = len(d["directions"])
    if not 1 <= args.count <= k:
        raise ExploreError(f"--count {args.count}: {args.dirs} holds {k} directions")
    if not 16 <= args.cell <= 1024:
        raise ExploreError(f"--cell {args.cell}: must be in 16..1024 px")
    seeds = parse_seeds(args.seeds)
    strengths = sorted(parse_degrees(args.strengths))
    if len(strengths) < 2 or strengths[0] == strengths[-1]:
        raise ExploreError(f"--strengths {args.strengths!r}: need at least two different strengths")
    stdev = d.get("stdev")
    sigmas = ([float(v) for v in stdev] if torch.is_tensor(stdev) and stdev.shape == (k,)
              else w_stdev(explorer.mapping, d["directions"].float(), explorer.style_dim,
                           device=explorer.device).tolist())
    png, numbers = os.path.join(args.out, "sheet.png"), os.path.join(args.out, "sheet.json")
    load_script("03_stylegan2_ada").refuse_existing_outputs([png, numbers], args.overwrite)
    directions = d["directions"].float().to(explorer.device)
    sheet, rows = direction_sheet(explorer, directions, sigmas, range(args.count), seeds, strengths,
                                  args.truncation, args.cell, args.noise_mode)
    os.makedirs(args.out, exist_ok=True)
    sheet.save(png)
    record = {"checkpoint": fingerprint(explorer), "directions": {"file": os.path.basename(args.dirs),
              "fingerprint": directions_fingerprint(d), "method": str(d.get("method", ""))},
              "seeds": seeds, "strengths": strengths, "unit": "sigma", "truncation": args.truncation,
              "zones": [{"name": n, "layers": [a, b - 1]} for n, a, b in explorer.mix_bands()],
              "word_rule": WORD_RULE,
              "fields": {"change": "mean |img(+s) - img(-s)| over pixels, seeds and channels (images in [-1, 1])",
                         "centroid": "(x, y) of the change, fractions of the width and height",
                         "thirds": "share of the change in the top, middle and bottom thirds",
                         "spread": "share of the area holding the larger half of the change (0.5: even)",
                         "shift_x, shift_y, roll": "the move that best maps img(-s) onto img(+s) and the share "
                                                   "of the change it explains",
                         "sides": "change, centroid, thirds, spread and map of each half: minus = lowest strength "
                                  "vs unedited, plus = unedited vs highest",
                         "map": "the change map, area-pooled to at most 16 x 16, rows top to bottom"},
              "rows": rows}
    write_json(numbers, record)
    words = ", ".join(f"#{r['index']} {r['zone']}: {r['word']}" for r in rows)
    print(f"wrote {png} and {numbers}: {args.count} directions x {len(explorer.mix_bands())} zones ({words})")


def write_json(path, obj):
    """JSON written to a temporary file and renamed over `path`: never a partial file."""
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".json", dir=folder)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(obj, f, indent=1)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def run_directions(args):
    explorer = load_explorer(args.ckpt, args.device, args.size)
    load_script("03_stylegan2_ada").refuse_existing_outputs([args.out], args.overwrite)  # never over a user's file
    layers = parse_range(args.layers, explorer.n_latent, "--layers")
    if args.cmd == "sefa":
        weights = explorer.style_weights(layers)
        if not weights:
            raise ExploreError(f"--layers {args.layers} select no style-modulated layer")
        result = sefa([w for _, w in weights])
        result["directions"] = result["directions"][: args.components]
        result["values"] = result["values"][: args.components]
    else:
        result = ganspace(explorer.mapping, explorer.style_dim, args.samples, args.components,
                          args.batch, device=explorer.device)
    if "stdev" not in result:  # SeFa samples nothing; sigma along each direction makes strengths comparable
        result["stdev"] = w_stdev(explorer.mapping, result["directions"], explorer.style_dim,
                                  device=explorer.device)
    save_directions(args.out, result, layers, explorer)
    v = result["values"]
    print(f"wrote {args.out}: {len(v)} {args.cmd} directions; top values "
          + ", ".join(f"{x:.4g}" for x in v[:5].tolist()))


# ---- mix ----

def mix_figure(explorer, rows, cols, truncation=1.0, noise_mode="const", row_latents=None):
    """StyleGAN Fig. 3: top row = column sources (A), left column = row sources (B); in each band's block
    of rows, a cell takes the band's slots from its row source and all other slots from its column source
    (mix_styles). rows: seeds, or row_latents [(ws, noises)] from projected images, whose cells are
    rendered with the row's noise maps. Returns (sheet, {band: [[cell PIL]]}, row PILs, column PILs)."""
    w_cols = torch.cat([seed_w(explorer, s) for s in cols], 0)
    ws_cols = styles_for(explorer, w_cols, truncation)
    if row_latents is None:
        ws_rows = styles_for(explorer, torch.cat([seed_w(explorer, s) for s in rows], 0), truncation)
        row_noises = [None] * len(rows)
    else:
        ws_rows = torch.cat([truncate(explorer, ws, truncation) for ws, _ in row_latents], 0)
        row_noises = [n for _, n in row_latents]
    row_imgs = [to_pil(explorer.synthesize(ws_rows[i:i + 1], noise_mode, row_noises[i])[0])
                for i in range(len(ws_rows))]
    col_imgs = [to_pil(i) for i in explorer.synthesize(ws_cols, noise_mode)]
    size = row_imgs[0].size
    blocks, cells_by_band = [], {}
    for name, a, b in explorer.mix_bands():
        mixed = mix_styles(ws_rows, ws_cols, a, b)                       # [R, C, L, dim]
        blank = Image.new("RGB", size, (255, 255, 255))  # the band's name, where a font that small is legible
        blank = draw_caption(blank, f"{name} {a}-{b - 1}", "top") if size[0] >= MIX_LABEL_MIN else blank
        cells, band = [blank] + col_imgs, []
        for i, img in enumerate(row_imgs):
            row = [to_pil(x) for x in explorer.synthesize(mixed[i], noise_mode, row_noises[i])]
            band.append(row)
            cells += [img] + row
        cells_by_band[name] = band
        blocks.append(grid(cells, len(cols) + 1))
    sheet = Image.new("RGB", (blocks[0].width, sum(b.height for b in blocks)), (255, 255, 255))
    y = 0
    for block in blocks:
        sheet.paste(block, (0, y))
        y += block.height
    return sheet, cells_by_band, row_imgs, col_imgs


def run_mix(args):
    explorer = load_explorer(args.ckpt, args.device, args.size)
    cols = parse_seeds(args.cols, "--cols")
    sources = _sources(args, explorer, "--rows", args.rows, "0-3")
    truncation = args.truncation if args.truncation is not None else (1.0 if args.latent else 0.7)
    load_script("03_stylegan2_ada").refuse_existing_outputs([args.out], args.overwrite)  # never over a user's file
    if os.path.splitext(args.out)[1].lower() not in Image.registered_extensions():
        raise ExploreError(f"--out {args.out}: not an image file name (e.g. mix.png)")
    if args.latent:
        sheet = mix_figure(explorer, None, cols, truncation, args.noise_mode, [(ws, n) for _, ws, n, _ in sources])[0]
    else:
        sheet = mix_figure(explorer, [s for *_, s in sources], cols, truncation, args.noise_mode)[0]
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    sheet.save(args.out)
    print(f"wrote {args.out}: top row = cols (source A), left column = rows (source B); bands "
          + ", ".join(f"{n} slots {a}-{b - 1} from the row" for n, a, b in explorer.mix_bands()))


# ---- project ----


def load_vgg16(path):
    """torchvision's VGG16 state dict -> VGG16Features (ops.lpips), a bad file as ExploreError."""
    try:
        return lpips_ops.load_vgg16(path)
    except lpips_ops.LPIPSWeightsError as e:
        raise ExploreError(str(e)) from None


def discriminator_features(explorer):
    """DiscriminatorFeatures from the checkpoint's D, or (None, reason) when it has none."""
    path = explorer.path
    if path is None:
        return None, "no checkpoint file behind this generator"
    if explorer.family == "stylegan2":
        sg2 = load_script("03_stylegan2_ada")
        ckpt = sg2.load_checkpoint(path)
        if "d" not in ckpt:
            return None, f"{path} holds no discriminator ('d')"
        cfg = sg2.generator_config_from_state(ckpt["g_ema"], ckpt.get("args"))
        args = ckpt.get("args") if isinstance(ckpt.get("args"), dict) else {}
        d = sg2.Discriminator(cfg["size"], channel_multiplier=cfg["channel_multiplier"],
                              channel_max=cfg["channel_max"], mbstd_group=int(args.get("mbstd_group", 4)))
        sg2.load_state_checked(d, ckpt["d"], f"{path} ['d']")
        d = d.to(explorer.device)
        return DiscriminatorFeatures(d, list(d.convs)[1:], lambda net, img: net(img)), None
    sg1 = explorer.sg1
    ckpt = sg1.load_checkpoint(path)
    if "discriminator" not in ckpt:
        return None, f"{path} holds no discriminator ('discriminator')"
    d = sg1.build_discriminator_from(ckpt["discriminator"], path).to(explorer.device)
    first = sg1.N_BLOCKS - 1 - explorer.step
    return DiscriminatorFeatures(d, list(d.progression)[first:sg1.N_BLOCKS - 1],
                                 lambda net, img: net(img, step=explorer.step)), None


def make_distance(explorer, kind="auto", vgg=None, mse=None):
    """The projection distance. auto: LPIPS/VGG16 when VGG16 weights are at hand (--vgg FILE, or the torch
    hub cache), else the checkpoint's discriminator features + pixel MSE, else pixel MSE alone."""
    if kind in ("auto", "vgg"):
        path = vgg or hub_vgg16_file()
        if path is None and kind == "vgg":
            raise ExploreError(f"--distance vgg needs VGG16 weights: --vgg FILE (torchvision's {TORCHVISION_VGG16})")
        if path is not None:
            if not os.path.isfile(path):
                raise ExploreError(f"{path}: no such VGG16 weights file")
            lin = lpips_lin_weights()
            name = ("LPIPS (VGG16, lpips package layer weights)" if lin is not None
                    else "LPIPS-style VGG16 features (equal layer weights; install `lpips` for the learned ones)")
            return FeatureDistance(name, load_vgg16(path).to(explorer.device), lin,
                                   0.0 if mse is None else mse)  # rosinality: --mse 0 by default
    if kind in ("auto", "d"):
        extract, why = discriminator_features(explorer)
        if extract is not None:
            return FeatureDistance("discriminator features + pixel MSE", extract, None, 1.0 if mse is None else mse)
        if kind == "d":
            raise ExploreError(f"--distance d: {why}")
        print(f"note: {why}; projecting with pixel MSE alone", file=sys.stderr)
    return FeatureDistance("pixel MSE", None, None, 1.0 if not mse else mse)


def projection_outputs(out, name, video):
    names = [f"{name}_proj.png", f"{name}_latent.pt", f"{name}_compare.png", f"{name}_distances.json"]
    return [os.path.join(out, n) for n in names + ([f"{name}_proj.gif"] if video else [])]


def project_image(explorer, target_u8, distance, steps, w_plus, seed=PROJECT_SEED, video=False, stats=None,
                  progress=None, bar=True, desc="project", **settings):
    """Project one uint8 image; returns (result, record) where record holds the final distances.
    `settings`: project's lr, noise_factor, lr_rampdown, lr_rampup, noise_ramp, noise_reg."""
    t0 = time.time()
    target = uint8_to_tensor(target_u8).to(explorer.device)
    result = project(explorer, target, distance, steps=steps, w_plus=w_plus, seed=seed, stats=stats,
                     record_every=max(1, steps // VIDEO_FRAMES) if video else 0, progress=progress, bar=bar,
                     desc=desc, **settings)
    proj = np.asarray(to_pil(result["image"][0]))
    with torch.no_grad():
        final, parts = distance(result["image"], distance.prepare(target))
    record = {"distance": distance.name, "space": "w+" if w_plus else "w", "steps": steps, "seed": seed,
              "final": float(final), **{k: v for k, v in parts.items()},
              "noise_reg": float(noise_regularization(result["noises"])), "psnr_db": psnr(proj, target_u8),
              "seconds": round(time.time() - t0, 2), "steps_per_s": round(steps / max(time.time() - t0, 1e-9), 2)}
    return result, record


def run_project(args):
    explorer = load_explorer(args.ckpt, args.device, args.size)
    names = [os.path.splitext(os.path.basename(p))[0] for p in args.image]
    if len(set(names)) != len(names):
        raise ExploreError("--image: two images share a name (" + ", ".join(sorted({n for n in names if names.count(n) > 1}))
                           + "); their outputs would overwrite each other")
    targets = [load_target(p, explorer.size) for p in args.image]        # every image readable before we start
    if args.steps < 1:
        raise ExploreError(f"--steps {args.steps}: must be at least 1")
    for flag in ("noise_ramp", "lr_rampup", "lr_rampdown"):
        if not 0 < getattr(args, flag) <= 1:
            raise ExploreError(f"--{flag.replace('_', '-')} {getattr(args, flag)}: a fraction of the steps in (0, 1]")
    load_script("03_stylegan2_ada").refuse_existing_outputs(
        [p for n in names for p in projection_outputs(args.out, n, args.video)], args.overwrite)
    distance = make_distance(explorer, args.distance, args.vgg, args.mse)
    print(f"distance: {distance.name}; space: {'W+' if args.w_plus else 'W'}; {args.steps} steps")
    stats = w_stats(explorer)
    os.makedirs(args.out, exist_ok=True)
    for path, name, target_u8 in zip(args.image, names, targets):
        try:
            result, record = project_image(explorer, target_u8, distance, args.steps, args.w_plus, args.seed,
                                           args.video, stats, desc=f"project {name}", lr=args.lr,
                                           noise_factor=args.noise, noise_ramp=args.noise_ramp,
                                           noise_reg=args.noise_regularize, lr_rampup=args.lr_rampup,
                                           lr_rampdown=args.lr_rampdown)
        except (MemoryError, RuntimeError) as e:
            raise_if_out_of_memory(e, explorer, distance, name, args)
            raise
        record["image"] = os.path.basename(path)
        proj = to_pil(result["image"][0])
        proj.save(os.path.join(args.out, f"{name}_proj.png"))
        save_latent(os.path.join(args.out, f"{name}_latent.pt"), explorer, result, os.path.basename(path),
                    distance.name, args.steps)
        target_pil = Image.fromarray(target_u8)
        grid([target_pil, proj], 2).save(os.path.join(args.out, f"{name}_compare.png"))
        if args.video:
            frames = [grid([target_pil, to_pil(explorer.synthesize(ws, noises=result["noises"])[0])], 2)
                      for ws in result["frames"]]
            save_gif(frames, os.path.join(args.out, f"{name}_proj.gif"), 100)
        with open(os.path.join(args.out, f"{name}_distances.json"), "w") as f:
            json.dump(record, f, indent=1)
        print(f"{name}: PSNR {record['psnr_db']:.2f} dB, {distance.name} {record['final']:.4g} "
              f"({record['steps_per_s']:.1f} steps/s) -> {args.out}/{name}_*")


def raise_if_out_of_memory(e, explorer, distance, name, args):
    """Running out of memory (out_of_memory) while projecting `name` as one line naming what to
    change: --distance (pixel MSE runs no feature network) and --device. The images projected
    before it are written. Other errors: returns, for the caller to re-raise."""
    memory = runs.out_of_memory(e)
    if memory is None:
        return
    lower = [] if distance.name == "pixel MSE" else ["--distance mse (no feature network)"]
    lower += ["--device cpu"] if memory[0] == "GPU" and args.device != "cpu" else []
    advice = f"try {' or '.join(lower)}" if lower else "it needs a machine with more memory"
    raise ExploreError(f"out of {memory[0]} memory projecting {name} at {explorer.size} px with {distance.name} "
                       f"on {args.device} ({memory[1]}); {advice}") from None


# ----------------------------------------------------------------------------------------------------
# Web UI (gradio, optional)
# ----------------------------------------------------------------------------------------------------

UI_VIEW = 256       # the page draws the image at least this wide: enlarged by a whole factor, Lanczos
UI_SLIDERS = 16     # knob sliders on the page; a library with more shows its first 16
UI_GIF_FRAMES = 11  # frames of the page's meme GIF (the knob swept over its range)
TRIED = "the direction being tried"


class GifFolder:
    """One browser session's GIFs: its own folder under the page's temporary folder, the newest MAX_GIFS
    kept, so one user's GIFs never push out another's; removed when gradio drops the session."""

    MAX_GIFS = 8

    def __init__(self, root):
        self.path = tempfile.mkdtemp(prefix="session-", dir=root)
        self.files, self.made = [], 0

    def add(self, frames, stem, duration_ms=80):
        path = os.path.join(self.path, f"{stem}_{self.made:06d}.gif")
        save_gif(frames, path, duration_ms)
        self.files.append(path)
        self.made += 1
        while len(self.files) > self.MAX_GIFS:
            old = self.files.pop(0)
            if os.path.exists(old):
                os.remove(old)
        return path

    def close(self):
        shutil.rmtree(self.path, ignore_errors=True)
        self.files = []


class ExplorerApp:
    """What every browser session of one `ui` page shares, read-only once made: the generator, the
    directions to name from (and sigma along each), the library folder; and, built on first use under a
    lock so two sessions never build them twice, the projection distance and W statistics. A session's
    own things (its projected latent, its library, its GIF folder) live in gradio State values, one per
    session, and go in and out of these methods as arguments.

    library (a session's): {"path": the file, "lib": the checked library, or None when unreadable}.
    A slider change re-runs styles (seed or latent, truncation) + knobs + the tried direction, then
    synthesis only."""

    def __init__(self, explorer, dirs, library_path, dirs_name="", project_steps=300, n_sliders=UI_SLIDERS):
        self.explorer = explorer
        self.dirs_file = dirs
        self.dirs_name = dirs_name
        self.dirs = dirs["directions"].float().to(explorer.device)
        stdev = dirs.get("stdev")
        self.sigmas = ([float(v) for v in stdev] if torch.is_tensor(stdev) and stdev.shape == (len(self.dirs),)
                       else w_stdev(explorer.mapping, self.dirs, explorer.style_dim, device=explorer.device).tolist())
        self.library_path = os.path.abspath(library_path)
        self.library_folder = os.path.dirname(self.library_path)
        self.generator = generator_info(explorer)
        self.project_steps = project_steps
        self.n_sliders = n_sliders
        self._lock = threading.Lock()
        self._distance, self._stats = None, None
        self.gif_root = tempfile.mkdtemp(prefix="calm-gan-ui-")
        self._cleanup = weakref.finalize(self, shutil.rmtree, self.gif_root, True)

    # -- shared, built once --
    def projection_tools(self):
        """(distance, (w_avg, w_std)) for projections, built by the first caller while others wait."""
        with self._lock:
            if self._distance is None:
                stats = w_stats(self.explorer)
                self._distance, self._stats = make_distance(self.explorer, "auto"), stats
            return self._distance, self._stats

    # -- a session's library --
    def library_file(self, name):
        """A library name typed on the page -> its path in the library folder. Only plain *.json names:
        the page may be shared, so it reads and writes no other place on this machine."""
        name = (name or "").strip()
        if not name.endswith(".json") or os.path.basename(name) != name or name.startswith("."):
            raise ExploreError(f"{name!r}: a library is a file name ending in .json in the page's library "
                               f"folder (no folders)")
        return os.path.join(self.library_folder, name)

    def open_library(self, name):
        """(library, status line) for a name in the library folder; a missing file is a new library."""
        path = self.library_file(name)
        if not os.path.exists(path):
            return ({"path": path, "lib": new_library(self.generator)},
                    f"{name}: a new library (written when you name a knob)")
        lib = read_library(path)
        check_library_fits(lib, path, self.explorer)
        more = len(lib["knobs"]) - self.n_sliders
        return {"path": path, "lib": lib}, (f"{name}: {len(lib['knobs'])} knob(s)"
                                            + (f"; the first {self.n_sliders} have sliders (--sliders)" if more > 0 else ""))

    def knobs(self, library):
        """The knobs that have sliders: the first n_sliders of the session's library."""
        lib = (library or {}).get("lib")
        return lib["knobs"][: self.n_sliders] if lib else []

    def name_direction(self, library, index, name, layers, strength_range=KNOB_RANGE):
        """The page's "name this direction": direction `index` on slots `layers` ('4-7') becomes knob `name`,
        added to the session's library file and saved (add_knob: under the lock, merged with what other
        sessions saved meanwhile). Returns (library, status line)."""
        path = (library or {}).get("path") or self.library_path
        try:
            i = int(index)
        except (TypeError, ValueError):
            raise ExploreError(f"direction index {index!r}: a whole number") from None
        if not 0 <= i < len(self.dirs):
            raise ExploreError(f"direction index {i}: outside 0..{len(self.dirs) - 1}")
        name = check_knob_name((name or "").strip(), "name")
        a, b = parse_layer_range(layers, self.explorer.n_latent, "layer range")
        knob = direction_knob(self.dirs_file, self.dirs_name, i, name, (a, b), strength_range, self.sigmas[i])
        lib = add_knob(path, knob, self.generator)
        return ({"path": path, "lib": lib},
                f"saved {name!r} (direction {i}, layers {a}-{b}) to {os.path.basename(path)}: "
                f"{len(lib['knobs'])} knob(s)")

    # -- pictures --
    def tried(self, index, strength, layers):
        """The apply_knobs term of the direction being tried, or None (no strength, or a blank or bad entry:
        the name button reports those)."""
        try:
            i, strength = int(index), float(strength or 0)
            a, b = parse_layer_range(layers, self.explorer.n_latent)
        except (TypeError, ValueError, ExploreError):
            return None
        if not strength or not 0 <= i < len(self.dirs):
            return None
        return (self.dirs[i], self.sigmas[i], (a, b), strength)

    def styles(self, latent, seed, truncation):
        """(ws [1, L, dim], noises or None): the projected latent when there is one, else the seed."""
        e = self.explorer
        if latent is not None:
            return truncate(e, latent["ws"], float(truncation)), latent["noises"]
        seed = int(seed or 0)
        if not 0 <= seed <= SEED_MAX:
            raise ExploreError(f"seed {seed}: seeds go from 0 to {SEED_MAX}")
        return styles_for(e, seed_w(e, seed), float(truncation)), None

    def knob_terms(self, library, amounts):
        """apply_knobs terms of the session's knobs at their sliders' strengths (`amounts`, in order)."""
        return [knob_term(k, a, self.explorer.device) for k, a in zip(self.knobs(library), amounts) if a]

    def picture(self, latent, library, seed, truncation, extra, amounts):
        """The image at the generator's size: styles, every knob at its slider's strength and the `extra`
        apply_knobs terms, then synthesis."""
        ws, noises = self.styles(latent, seed, truncation)
        ws = apply_knobs(ws, self.knob_terms(library, amounts) + list(extra))
        return to_pil(self.explorer.synthesize(ws, noises=noises)[0])

    def view(self, latent, library, seed, truncation, top, bottom, index, strength, layers, *amounts):
        """What the page shows: the picture enlarged to UI_VIEW px (whole factor, Lanczos), captioned."""
        tried = self.tried(index, strength, layers)
        img = self.picture(latent, library, seed, truncation, [tried] if tried else [], amounts)
        return caption(enlarge(img, UI_VIEW), top or None, bottom or None)

    def gif(self, folder, latent, library, which, seed, truncation, top, bottom, index, strength, layers, *amounts):
        """A meme GIF of knob `which` (a name, or TRIED) swept over its range on top of the other sliders,
        written into the session's GifFolder (made on the first GIF). Returns (folder, path)."""
        knobs = self.knobs(library)
        names = [k["name"] for k in knobs]
        amounts = list(amounts)
        if which == TRIED or not which:
            swept = self.tried(index, 1.0, layers)
            if swept is None:
                raise ExploreError("the direction being tried needs an index and a layer range like 0-3")
            (lo, hi), stem, others = KNOB_RANGE, f"dir{int(index):02d}", []
        elif which in names:
            k = knobs[names.index(which)]
            swept, (lo, hi), stem = knob_term(k, 1.0, self.explorer.device), k["range"], file_tag(which)
            amounts[names.index(which)] = 0.0
            others = [t for t in [self.tried(index, strength, layers)] if t is not None]
        else:
            raise ExploreError(f"no knob {which!r} in this library")
        ws, noises = self.styles(latent, seed, truncation)
        fixed = self.knob_terms(library, amounts) + others
        batch = torch.cat([apply_knobs(ws, fixed + [swept[:3] + (float(v),)])
                           for v in np.linspace(lo, hi, UI_GIF_FRAMES)])
        frames = [caption(enlarge(to_pil(im), UI_VIEW), top or None, bottom or None)
                  for b in batch.split(8) for im in self.explorer.synthesize(b, noises=noises)]
        folder = folder if folder is not None else GifFolder(self.gif_root)
        name = "projected" if latent is not None else f"seed{int(seed or 0):04d}"
        return folder, folder.add(frames, f"{name}_{stem}")


def ui_project(app, image, steps=None, w_plus=True, progress=None):
    """The UI's "project" button: a PIL image -> (latent {ws, noises}, reconstruction PIL, status line).
    `progress(done, total)` is called every step (gradio's progress bar)."""
    if image is None:
        raise ExploreError("no image uploaded")
    e = app.explorer
    with tempfile.TemporaryDirectory(prefix="calm-gan-upload-") as tmp:
        path = os.path.join(tmp, "upload.png")
        image.save(path)
        target = load_target(path, e.size)
    distance, stats = app.projection_tools()
    steps = int(steps or app.project_steps)
    result, record = project_image(e, target, distance, steps, bool(w_plus), stats=stats, progress=progress, bar=False)
    latent = {"ws": result["ws"], "noises": result["noises"]}
    return latent, to_pil(result["image"][0]), (f"projected in {record['seconds']:.1f} s: PSNR "
                                                  f"{record['psnr_db']:.1f} dB ({record['distance']})")


def build_ui(app):
    """The gradio page of an ExplorerApp. Per session (gradio State): the projected latent, the library,
    the GIF folder. Named endpoints for scripts (gradio_client): /render, /name_direction, /load_library,
    /project, /gif."""
    try:
        import gradio as gr
    except ImportError:
        raise ExploreError("the web UI needs gradio: pip install -r requirements-ui.txt") from None
    e = app.explorer
    n = e.n_latent
    factor = -(-UI_VIEW // e.size)
    bands = ", ".join(f"{name} {a}-{b - 1}" for name, a, b in e.mix_bands())

    def updates(library, values=None, old_names=None):
        """Slider updates for a session's library: one per knob (label = its name, range in sigma, its layers
        in the info line), the rest hidden; a knob that keeps its slider keeps its value."""
        knobs = app.knobs(library)
        out = []
        for i in range(app.n_sliders):
            if i < len(knobs):
                k = knobs[i]
                keep = values is not None and old_names is not None and i < len(old_names) and old_names[i] == k["name"]
                out.append(gr.update(visible=True, label=k["name"], minimum=k["range"][0], maximum=k["range"][1],
                                     value=values[i] if keep else 0.0,
                                     info=f"sigma of w; layers {k['layers'][0]}-{k['layers'][1]}; "
                                          f"{'-' if k['source']['sign'] < 0 else ''}{k['source']['method']} "
                                          f"#{k['source']['index']}"))
            else:
                out.append(gr.update(visible=False, value=0.0, label=f"knob slot {i}"))
        choices = [k["name"] for k in knobs] + [TRIED]
        return out + [gr.update(choices=choices, value=choices[0])]

    def fail(err):
        return f"**error:** {err}"

    with gr.Blocks(title="calm-gan latent explorer") as demo:
        gr.Markdown(f"### calm-gan latent explorer: {e.family}, {e.size} px, {n} style slots ({bands}); "
                    f"{len(app.dirs)} {app.dirs_file.get('method', '')} directions to name")
        latent = gr.State(None)
        library = gr.State(None)
        gifs = gr.State(None, delete_callback=lambda folder: folder.close() if folder is not None else None)
        with gr.Row():
            with gr.Column():
                seed = gr.Number(value=0, precision=0, minimum=0, maximum=SEED_MAX, label="seed")
                trunc = gr.Slider(0.0, 1.0, value=0.7, step=0.01, label="truncation psi")
                sliders = [gr.Slider(KNOB_RANGE[0], KNOB_RANGE[1], value=0.0, step=0.1, label=f"knob slot {i}",
                                     visible=False) for i in range(app.n_sliders)]
                top = gr.Textbox(label="caption top")
                bottom = gr.Textbox(label="caption bottom")
                gr.Markdown("**Name this direction**: try a direction on a layer range, then name it; it is "
                            "added to the library and saved.")
                index = gr.Number(value=0, precision=0, minimum=0, maximum=len(app.dirs) - 1, label="direction index",
                                  elem_id="direction-index")
                strength = gr.Slider(KNOB_RANGE[0], KNOB_RANGE[1], value=0.0, step=0.1,
                                     label="try it (sigma of w)")
                layers = gr.Textbox(value=f"0-{n - 1}", label=f"layer range (style slots 0-{n - 1}; {bands})",
                                    elem_id="layer-range")
                knob_name = gr.Textbox(label="knob name", elem_id="knob-name")
                name_button = gr.Button("name this direction and save", elem_id="name-button")
                library_name = gr.Textbox(value=os.path.basename(app.library_path),
                                          label=f"library file (in {app.library_folder})")
                load_button = gr.Button("load library")
                status = gr.Markdown(elem_id="status")
            with gr.Column():
                image = gr.Image(type="pil", format="png",
                                 label=f"image: {e.size} px drawn at {e.size * factor} px (x{factor}, Lanczos); "
                                       f"download with the arrow", elem_id="view")
                upload = gr.Image(type="pil", label="your image: project it, then edit it with the knobs")
                steps = gr.Slider(10, 1000, value=app.project_steps, step=10, label="projection steps")
                w_plus = gr.Checkbox(value=True, label="W+ (one w per layer: closer, less editable)")
                project_button = gr.Button("project")
                use_seed = gr.Button("back to the seed")
                gif_which = gr.Dropdown(choices=[TRIED], value=TRIED, label="meme GIF: sweep this knob")
                gif_button = gr.Button("make GIF")
                gif_file = gr.File(label="meme GIF")
                render = gr.Button("render")
        controls = [seed, trunc, top, bottom, index, strength, layers]
        view_inputs = [latent, library] + controls + sliders

        def on_view(*values):
            try:
                return app.view(*values)
            except ExploreError as err:
                raise gr.Error(str(err))

        def on_load():
            try:
                lib, text = app.open_library(os.path.basename(app.library_path))
            except ExploreError as err:
                lib, text = {"path": app.library_path, "lib": None}, fail(err)
            return [lib, text] + updates(lib)

        def on_name(lib, i, name, span, *values):
            old = [k["name"] for k in app.knobs(lib)]
            try:
                lib, text = app.name_direction(lib, i, name, span)
            except (ExploreError, OSError) as err:
                return [lib, fail(err)] + updates(lib, list(values), old)
            return [lib, text] + updates(lib, list(values), old)

        def on_open(lib, name, *values):
            try:
                new, text = app.open_library(name)
            except ExploreError as err:
                return [lib, fail(err)] + updates(lib, list(values), [k["name"] for k in app.knobs(lib)])
            return [new, text] + updates(new)

        def on_project(img, n_steps, plus, progress=gr.Progress()):
            try:
                lat, _, text = ui_project(app, img, n_steps, plus,
                                          lambda i, total: progress((i, total), desc="projecting"))
            except ExploreError as err:
                raise gr.Error(str(err))
            return lat, text

        def on_gif(folder, *values):
            try:
                return app.gif(folder, *values)
            except ExploreError as err:
                raise gr.Error(str(err))

        library_outputs = [library, status] + sliders + [gif_which]
        for comp in controls + sliders:
            comp.change(on_view, view_inputs, image, api_name=False)
        render.click(on_view, view_inputs, image, api_name="render")
        name_button.click(on_name, [library, index, knob_name, layers] + sliders, library_outputs,
                          api_name="name_direction").then(on_view, view_inputs, image, api_name=False)
        load_button.click(on_open, [library, library_name] + sliders, library_outputs,
                          api_name="load_library").then(on_view, view_inputs, image, api_name=False)
        project_button.click(on_project, [upload, steps, w_plus], [latent, status], api_name="project").then(
            on_view, view_inputs, image, api_name=False)
        use_seed.click(lambda: (None, ""), None, [latent, status], api_name=False).then(
            on_view, view_inputs, image, api_name=False)
        gif_button.click(on_gif, [gifs, latent, library, gif_which] + controls + sliders, [gifs, gif_file],
                         api_name="gif")
        demo.load(on_load, None, library_outputs, api_name=False).then(on_view, view_inputs, image, api_name=False)
    return demo


def run_ui(args):
    explorer = load_explorer(args.ckpt, args.device, args.size)
    if not 1 <= args.sliders <= 64:
        raise ExploreError(f"--sliders {args.sliders}: must be in 1..64")
    if args.dirs:
        dirs = load_directions(args.dirs)
        check_directions(dirs, args.dirs, explorer)
    else:  # SeFa of all layers: no sampling, a second on a CPU
        dirs = sefa([w for _, w in explorer.style_weights(range(explorer.n_latent))])
    if os.path.exists(args.library):  # refuse a bad or foreign library before the page starts
        check_library_fits(read_library(args.library), args.library, explorer)
    app = ExplorerApp(explorer, dirs, args.library,
                      os.path.basename(args.dirs) if args.dirs else "sefa (computed by ui)", n_sliders=args.sliders)
    print(f"library: {app.library_path}" + ("" if os.path.exists(args.library) else " (written when a knob is named)"))
    build_ui(app).launch(server_name=args.host, server_port=args.port, share=args.share)


# ----------------------------------------------------------------------------------------------------
# CLI
# ----------------------------------------------------------------------------------------------------

def build_parser():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)

    def common(sp):
        sp.add_argument("--ckpt", required=True, help="generator checkpoint (02 or 03 loadable)")
        sp.add_argument("--device", default="auto", help=DEVICE_HELP)
        sp.add_argument("--ops", choices=OPS_MODES, default="auto", help="StyleGAN2's " + OPS_HELP)
        sp.add_argument("--size", type=int, default=None,
                        help="StyleGAN v1 only: resolution to run at (default: the trained one, else 256)")

    def sources(sp, flag, default):
        sp.add_argument(flag, default=None, help=f"seeds, e.g. 0-3 or 1,5,9 (default {default}); "
                                                 "z = np.random.RandomState(seed).randn, as 03 generate")
        sp.add_argument("--latent", nargs="+", default=None, metavar="FILE",
                        help=f"NAME_latent.pt file(s) from `project`, in place of {flag}")
        sp.add_argument("--truncation", type=float, default=None,
                        help="psi toward the mean w (default 0.7 for seeds, as SeFa's sampling; 1 for --latent)")
        sp.add_argument("--noise-mode", default="const", choices=["const", "random", "none"],
                        help="noise maps for seeds: the checkpoint's constant ones, fresh, or zero "
                             "(a latent brings its own)")

    g = sub.add_parser("ganspace", help="PCA directions of W (GANSpace)")
    common(g)
    g.add_argument("--out", required=True, help="directions file to write (.pt); its folder is created")
    g.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    g.add_argument("--samples", type=int, default=1_000_000, help="w samples (GANSpace's StyleGAN2 setting: 1M)")
    g.add_argument("--components", type=int, default=80, help="directions kept (GANSpace default 80)")
    g.add_argument("--batch", type=int, default=10_000, help="w samples mapped per batch (GANSpace: 10000)")
    g.add_argument("--layers", default="all", help="style slots the edits apply to, e.g. 0-5 (default all)")

    s = sub.add_parser("sefa", help="closed-form factorization directions (SeFa)")
    common(s)
    s.add_argument("--out", required=True, help="directions file to write (.pt); its folder is created")
    s.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    s.add_argument("--layers", default="all", help="style slots to factorize and edit, e.g. 0-1 (default all)")
    s.add_argument("--components", type=int, default=512, help="directions kept, strongest first (default all 512)")

    pr = sub.add_parser("project", help="find the latent (w or W+) and noise maps of your own image(s)")
    common(pr)
    pr.add_argument("--image", nargs="+", required=True, help="image file(s), any size and mode "
                    "(centre-cropped and resized to the generator's size)")
    pr.add_argument("--out", required=True, help="output folder: NAME_proj.png, NAME_latent.pt, "
                    "NAME_compare.png, NAME_distances.json (+ NAME_proj.gif with --video)")
    pr.add_argument("--steps", type=int, default=PROJECT_STEPS, help="optimisation steps (NVIDIA: 1000)")
    pr.add_argument("--w-plus", action="store_true",
                    help="optimise one w per style slot (W+, rosinality --w_plus): closer, less editable")
    pr.add_argument("--distance", default="auto", choices=["auto", "vgg", "d", "mse"],
                    help="vgg: LPIPS on VGG16; d: the checkpoint's discriminator features + pixel MSE; "
                         "mse: pixels only; auto: vgg when VGG16 weights are at hand, else d, else mse")
    pr.add_argument("--vgg", default=None, metavar="FILE",
                    help=f"torchvision's VGG16 weights ({TORCHVISION_VGG16}); default: the torch hub cache copy")
    pr.add_argument("--mse", type=float, default=None,
                    help="weight of the pixel MSE term (default 0 with vgg, as rosinality; 1 with d)")
    pr.add_argument("--lr", type=float, default=PROJECT_LR, help="peak Adam learning rate (NVIDIA: 0.1)")
    pr.add_argument("--noise", type=float, default=PROJECT_NOISE_FACTOR,
                    help="std of the noise added to w at the start, in units of W's spread (NVIDIA: 0.05)")
    pr.add_argument("--noise-ramp", type=float, default=PROJECT_NOISE_RAMP,
                    help="fraction of the steps over which that noise fades to 0 (NVIDIA: 0.75)")
    pr.add_argument("--noise-regularize", type=float, default=PROJECT_NOISE_REG,
                    help="weight of the noise-map autocorrelation penalty (NVIDIA: 1e5)")
    pr.add_argument("--lr-rampup", type=float, default=PROJECT_LR_RAMPUP,
                    help="fraction of the steps of linear lr warm-up (NVIDIA: 0.05)")
    pr.add_argument("--lr-rampdown", type=float, default=PROJECT_LR_RAMPDOWN,
                    help="fraction of the steps of cosine lr ramp-down at the end (NVIDIA: 0.25)")
    pr.add_argument("--seed", type=int, default=PROJECT_SEED, help="seed of the noise-map start and w noise "
                    "(NVIDIA: 303)")
    pr.add_argument("--video", action="store_true", help="also write NAME_proj.gif: target | reconstruction "
                    f"over the optimisation (at most {VIDEO_FRAMES} frames)")
    pr.add_argument("--overwrite", action="store_true", help="replace outputs of an earlier projection")

    e = sub.add_parser("edit", help="grid + GIF per seed (or projected latent) sweeping one direction or "
                                    "named knob; several knobs at once for one edited picture")
    common(e)
    e.add_argument("--dirs", default=None, help="directions file from `sefa` or `ganspace` (or use --library)")
    e.add_argument("--index", type=int, default=0, help="which direction of --dirs (0 = strongest)")
    e.add_argument("--library", default=None, help="knob library (JSON) from `name`, in place of --dirs")
    e.add_argument("--knob", action="append", default=[], metavar="NAME[=STRENGTH]",
                   help="a knob of --library by name, with a strength in sigma (e.g. --knob mouth=2 --knob "
                        "tilt=-1: one edited picture); one knob without a strength is swept over its range")
    e.add_argument("--degrees", default=None,
                   help="start:stop:count or a comma list (default -5:5:11 for --dirs, raw units; for a swept "
                        "knob its range in 7 steps, in sigma); write --degrees=-5:5:11 when it starts with a minus")
    sources(e, "--seeds", "0-3")
    e.add_argument("--layers", default=None, help="style slots to edit (default: the file's layers)")
    e.add_argument("--caption-top", default=None, help="meme caption at the top")
    e.add_argument("--caption-bottom", default=None, help="meme caption at the bottom")
    e.add_argument("--font", default=None, help="TrueType/OpenType font file (e.g. one covering Hangul)")
    e.add_argument("--meme-size", type=int, default=MEME_SIZE,
                   help=f"captioned GIF frames are enlarged by a whole factor to at least this width "
                        f"(default {MEME_SIZE}; 0 = the generator's size); the grid PNG is never captioned")
    e.add_argument("--duration", type=int, default=80, help="ms per GIF frame")
    e.add_argument("--out", required=True, help="output folder (grid PNG and GIFs)")
    e.add_argument("--overwrite", action="store_true", help="replace existing grid_dirNN.png / NAME_dirNN.gif in --out")

    m = sub.add_parser("mix", help="style-mixing figure (coarse / middle / fine)")
    common(m)
    sources(m, "--rows", "0-3")
    m.add_argument("--cols", default="10-14", help="seeds of the top row (source A), e.g. 10-14")
    m.add_argument("--out", required=True, help="PNG file to write; its folder is created")
    m.add_argument("--overwrite", action="store_true", help="replace an existing --out file")

    n = sub.add_parser("name", help="name a direction: add it as a knob to a library (JSON, one per generator)")
    n.add_argument("--dirs", required=True, help="directions file from `sefa` or `ganspace`")
    n.add_argument("--index", type=int, required=True, help="which direction (the sheet's #)")
    n.add_argument("--name", required=True, help=f"the knob's name: up to {KNOB_NAME_MAX} letters, digits, "
                                                  "spaces, '_', '-', '.'")
    n.add_argument("--layers", default=None, help="style slots it acts on, first-last (e.g. 0-3, a zone of the "
                                                  "sheet; default: the directions file's layers)")
    n.add_argument("--range", default=f"{KNOB_RANGE[0]:g}:{KNOB_RANGE[1]:g}",
                   help="its range in sigma of w along it, low:high (default -3:3; write --range=-3:3)")
    n.add_argument("--library", required=True, help="the library file (.json); created when missing")
    n.add_argument("--flip", action="store_true", help="store the direction reversed, so that + goes the way "
                                                       "the name says (the sheet's -3 side becomes +3)")
    n.add_argument("--overwrite", action="store_true", help="replace a knob of the same name")
    n.add_argument("--ckpt", default=None, help="the generator the directions came from: needed only for an older "
                                                "directions file (measures sigma, checks the layer range)")
    n.add_argument("--device", default="auto", help=DEVICE_HELP)
    n.add_argument("--ops", choices=OPS_MODES, default="auto", help="StyleGAN2's " + OPS_HELP)
    n.add_argument("--size", type=int, default=None, help="StyleGAN v1 only: resolution of --ckpt")

    k = sub.add_parser("knobs", help="list the knobs of a library")
    k.add_argument("--library", required=True, help="the library file (.json)")
    k.add_argument("--device", default="auto", help=DEVICE_HELP)
    k.add_argument("--ops", choices=OPS_MODES, default="auto", help="StyleGAN2's " + OPS_HELP)

    sh = sub.add_parser("sheet", help="what each direction changes: seeds at -3..+3 sigma per layer zone, "
                                      "a where-it-changes map, and its numbers as JSON")
    common(sh)
    sh.add_argument("--dirs", required=True, help="directions file from `sefa` or `ganspace`")
    sh.add_argument("--count", type=int, default=8, help="the first K directions (default 8)")
    sh.add_argument("--seeds", default="0-2", help="seeds of each row (default 0-2)")
    sh.add_argument("--strengths", default="-3:3:5", help="strengths in sigma, start:stop:count or a list "
                                                          "(default -3:3:5; write --strengths=-3:3:5)")
    sh.add_argument("--truncation", type=float, default=0.7, help="psi of the seeds (default 0.7)")
    sh.add_argument("--noise-mode", default="const", choices=["const", "random", "none"], help="noise maps")
    sh.add_argument("--cell", type=int, default=SHEET_CELL,
                    help=f"px per cell (default {SHEET_CELL}): smaller images enlarged by a whole factor "
                         "(nearest neighbour), larger ones reduced (Lanczos)")
    sh.add_argument("--out", required=True, help="output folder: sheet.png and sheet.json (the numbers)")
    sh.add_argument("--overwrite", action="store_true", help="replace an earlier sheet.png / sheet.json")

    wk = sub.add_parser("walk", help="a looping latent-walk GIF through seeds (knobs applied to every frame)")
    common(wk)
    wk.add_argument("--seeds", default="0-3", help="the seeds to walk through, in order, back to the first")
    wk.add_argument("--frames", type=int, default=24, help="frames from one seed to the next (default 24)")
    wk.add_argument("--truncation", type=float, default=0.7, help="psi of the seeds (default 0.7)")
    wk.add_argument("--noise-mode", default="const", choices=["const", "random", "none"],
                    help="noise maps (const: the same on every frame, so only the styles move)")
    wk.add_argument("--library", default=None, help="knob library for --knob")
    wk.add_argument("--knob", action="append", default=[], metavar="NAME=STRENGTH", help="a knob applied to "
                                                                                           "every frame")
    wk.add_argument("--view", type=int, default=MEME_SIZE, help=f"frames enlarged by a whole factor (Lanczos) "
                                                                 f"to at least this width (default {MEME_SIZE})")
    wk.add_argument("--caption-top", default=None, help="meme caption at the top")
    wk.add_argument("--caption-bottom", default=None, help="meme caption at the bottom")
    wk.add_argument("--font", default=None, help="TrueType/OpenType font file")
    wk.add_argument("--duration", type=int, default=60, help="ms per frame")
    wk.add_argument("--out", required=True, help="the GIF to write")
    wk.add_argument("--overwrite", action="store_true", help="replace an existing --out file")

    u = sub.add_parser("ui", help="interactive gradio page: named knobs, name new ones, project, memes")
    common(u)
    u.add_argument("--library", default="knobs.json",
                   help="knob library whose knobs get sliders; created when the first knob is named "
                        "(default knobs.json); the page reads and writes libraries in its folder only")
    u.add_argument("--dirs", default=None, help="directions to name from (default: SeFa of all layers, "
                                                "computed at start)")
    u.add_argument("--sliders", type=int, default=UI_SLIDERS, help=f"most knob sliders shown (default {UI_SLIDERS})")
    u.add_argument("--host", default="127.0.0.1", help="bind address (loopback unless told otherwise)")
    u.add_argument("--port", type=int, default=7860, help="port of the page")
    u.add_argument("--share", action="store_true", help="make a public gradio link (off by default)")
    return p


def user_errors():
    """The exceptions that are the user's input, not a bug: one line each, no traceback."""
    return (ExploreError, OSError, load_script("03_stylegan2_ada").CheckpointError,
            load_script("02_stylegan_freezed").CheckpointError)


def main(argv=None):
    if __name__ == "__main__":  # a program's warnings one line each; a test importing this file keeps Python's
        ops.readable_warnings()
    args = build_parser().parse_args(argv)
    args.device = str(resolve_device(args.device))
    set_ops(args.ops)
    t0 = time.time()
    run = {"ganspace": run_directions, "sefa": run_directions, "project": run_project, "edit": run_edit,
           "mix": run_mix, "ui": run_ui, "name": run_name, "knobs": run_knobs, "sheet": run_sheet,
           "walk": run_walk}[args.cmd]
    try:
        run(args)
    except Exception as err:
        if isinstance(err, user_errors()):
            raise SystemExit(f"error: {err}") from None
        raise
    if args.cmd != "ui":
        print(f"done in {time.time() - t0:.1f} s")


if __name__ == "__main__":
    main()
