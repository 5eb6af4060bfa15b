"""Latent-space exploration of a trained generator: GANSpace and SeFa directions, projection of your own
images, edits, memes, style mixing, a web UI.

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
- `ui`: a gradio page with sliders, captions and an image upload that projects (optional extra:
  `pip install -r requirements-ui.txt`).
It works on every generator that `03_stylegan2_ada.py` (StyleGAN2: ours, rosinality .pt, NVIDIA .pkl)
or `02_stylegan_freezed.py` (StyleGAN v1) can load; those scripts are imported with importlib, so copy
them along with this file.

Files (`torch.save`, all load with weights_only=True)
- directions: `directions` [K, dim] unit rows, strongest first; `values` [K] (explained variances for
  GANSpace, eigenvalues for SeFa); `method`; `layers` (the style slots they were computed for and are
  applied to); `checkpoint` (fingerprint of the generator they came from); GANSpace adds `mean` [dim]
  and `stdev` [K] (spread of W along each direction).
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
    python 04_latent_explore.py ui --ckpt RUN/checkpoints/best.pt --dirs sefa.pt

Map (the method, then one banner line, then the plumbing)
  1 the generator seen as z -> w -> styles -> image: StyleGAN2Explorer, StyleGANv1Explorer, mean_w
  2 directions: ganspace, sefa, canonical_sign
  3 projection: learning_rate, w_noise_scale, noise_regularization, normalize_noise_, FeatureDistance,
    VGG16Features, DiscriminatorFeatures, w_stats, project
  4 editing and mixing: truncate, styles_for, apply_edit, mix_styles
  ---- plumbing ----
  checkpoints and file formats (load_explorer, directions and latent files), parsing, images and
  captions, the commands (run_*), the web UI (Session, ui_project, build_ui), the CLI (main).
"""
import argparse
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
import time
import weakref
import zipfile

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw, ImageFont
from torch import nn
from tqdm import tqdm

import ops  # noqa: F401  (checks the torch version: one line and exit on torch < 2.6)
from ops import OPS_HELP, OPS_MODES, set_ops
from ops.device import DEVICE_HELP, resolve_device

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

# LPIPS (Zhang et al. 2018) on VGG16: ReLU outputs relu1_2, relu2_2, relu3_3, relu4_3, relu5_3, which are
# indices 3, 8, 15, 22, 29 of torchvision's vgg16().features; inputs in [-1, 1] shifted and scaled per
# channel (lpips ScalingLayer).
VGG16_CFG = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512)
VGG16_TAPS = (3, 8, 15, 22, 29)
LPIPS_SHIFT = (-0.030, -0.088, -0.188)
LPIPS_SCALE = (0.458, 0.448, 0.450)
TORCHVISION_VGG16 = "vgg16-397923af.pth"  # torchvision's ImageNet VGG16 file name in the hub cache


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
    # spread of fresh samples along each unit direction (GANSpace's lat_stdev)
    z = torch.from_numpy(np.random.RandomState(seed + 1).standard_normal((STDEV_SAMPLES, style_dim)))
    proj = mapping(z.float().to(device)).cpu().double() @ directions.T
    return {"directions": directions.float(), "values": values[order].float(), "method": "ganspace",
            "mean": mean.float(), "stdev": proj.std(0).float(), "n_samples": n_samples}


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


def unit_normalize(f, eps=1e-10):
    """LPIPS's normalize_tensor: each pixel's feature vector to unit length over channels ([B, C, H, W])."""
    return f / (f.square().sum(1, keepdim=True).sqrt() + eps)


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


class VGG16Features(nn.Module):
    """VGG16 conv layers (Simonyan & Zisserman 2015) in torchvision's `features` numbering, returning the
    five LPIPS taps. Input [B, 3, S, S] in [-1, 1]; images above 256 px are area-downsampled to 256
    first (NVIDIA projector.py: VGG was trained at 224 px)."""

    def __init__(self, state_dict):
        super().__init__()
        layers, c = [], 3
        for v in VGG16_CFG:
            if v == "M":
                layers.append(nn.MaxPool2d(2, 2))
            else:
                layers += [nn.Conv2d(c, v, 3, padding=1), nn.ReLU()]
                c = v
        self.features = nn.Sequential(*layers)                 # indices 0..29 as torchvision's
        self.features.load_state_dict(state_dict, strict=True)
        self.requires_grad_(False).eval()
        self.register_buffer("shift", torch.tensor(LPIPS_SHIFT).view(1, 3, 1, 1))
        self.register_buffer("scale", torch.tensor(LPIPS_SCALE).view(1, 3, 1, 1))

    def forward(self, img):
        if img.shape[2] > 256:
            img = F.interpolate(img, size=(256, 256), mode="area")
        x = (img - self.shift) / self.scale
        out = []
        for i, layer in enumerate(self.features):
            x = layer(x)
            if i in VGG16_TAPS:
                out.append(x)
            if i == VGG16_TAPS[-1]:
                break
        return out


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


def save_directions(path, result, layers, checkpoint=None):
    result = dict(result, layers=list(layers))
    if checkpoint is not None:
        result["checkpoint"] = checkpoint
    save_torch(path, result)


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


def meme(img, top=None, bottom=None, font_path=None, min_size=MEME_SIZE):
    """A captioned picture: enlarged by a whole factor (Lanczos) to at least `min_size` px wide, then
    captioned, so the text takes a meme's share of the picture rather than covering a 32 px face.
    Without a caption the image is returned as it is."""
    if not (top or bottom):
        return img
    factor = -(-min_size // img.width) if min_size else 1
    if factor > 1:
        img = img.resize((img.width * factor, img.height * factor), Image.LANCZOS)
    return caption(img, top, bottom, font_path)


def grid(images, ncol, pad=2, bg=(255, 255, 255)):
    w, h = images[0].size
    nrow = (len(images) + ncol - 1) // ncol
    sheet = Image.new("RGB", (ncol * (w + pad) + pad, nrow * (h + pad) + pad), bg)
    for i, im in enumerate(images):
        sheet.paste(im, (pad + (i % ncol) * (w + pad), pad + (i // ncol) * (h + pad)))
    return sheet


def save_gif(frames, path, duration_ms=80):
    """Animated GIF, one frame per degree, looping forever."""
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


def run_edit(args):
    explorer = load_explorer(args.ckpt, args.device, args.size)
    d = load_directions(args.dirs)
    check_directions(d, args.dirs, explorer)
    if not 0 <= args.index < len(d["directions"]):
        raise ExploreError(f"{args.dirs}: --index {args.index} outside 0..{len(d['directions']) - 1}")
    if not 0 <= args.meme_size <= 4096:
        raise ExploreError(f"--meme-size {args.meme_size}: must be in 0..4096 (0 = the generator's size)")
    layers = (parse_range(args.layers, explorer.n_latent, "--layers") if args.layers
              else list(d.get("layers") or range(explorer.n_latent)))
    degrees = parse_degrees(args.degrees)
    sources = _sources(args, explorer, "--seeds", args.seeds, "0-3")
    truncation = args.truncation if args.truncation is not None else (1.0 if args.latent else 0.7)
    gifs = [os.path.join(args.out, f"{name}_dir{args.index:02d}.gif") for name, *_ in sources]
    if args.latent and len(set(gifs)) < len(gifs):
        raise ExploreError("--latent: two files share a name (" + ", ".join(sorted({n for n, *_ in sources if
                           [m for m, *_ in sources].count(n) > 1})) + "); their GIFs would overwrite each other")
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
    save_directions(args.out, result, layers, fingerprint(explorer))
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

def hub_vgg16_file():
    """torchvision's VGG16 weights in the torch hub cache, if a download ever put them there."""
    path = os.path.join(torch.hub.get_dir(), "checkpoints", TORCHVISION_VGG16)
    return path if os.path.isfile(path) else None


def lpips_lin_weights():
    """The `lpips` package's learned VGG layer weights (weights/v0.1/vgg.pth) as 5 [C] tensors, if installed."""
    spec = importlib.util.find_spec("lpips")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = os.path.join(list(spec.submodule_search_locations)[0], "weights", "v0.1", "vgg.pth")
    if not os.path.isfile(path):
        return None
    sd = torch.load(path, map_location="cpu", weights_only=True)
    return [sd[f"lin{i}.model.1.weight"].flatten().float() for i in range(len(VGG16_TAPS))]


def load_vgg16(path):
    """torchvision's VGG16 state dict (features.* keys; classifier.* ignored) -> VGG16Features."""
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as z:
            if any(n.endswith("/constants.pkl") or "/code/" in n for n in z.namelist()):
                raise ExploreError(f"{path}: a TorchScript file (NVIDIA's vgg16.pt holds code, which is not "
                                   f"loaded); pass torchvision's {TORCHVISION_VGG16}")
    sd = read_weights_only(path, "weights-only VGG16 file")
    if not isinstance(sd, dict):
        raise ExploreError(f"{path}: not a VGG16 state dict")
    feats = {k[len("features."):]: v for k, v in sd.items() if str(k).startswith("features.")} or sd
    try:
        return VGG16Features(feats)
    except RuntimeError as e:
        raise ExploreError(f"{path}: does not fit VGG16's conv layers ({str(e).splitlines()[1].strip() if len(str(e).splitlines()) > 1 else e})") from None


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
        result, record = project_image(explorer, target_u8, distance, args.steps, args.w_plus, args.seed,
                                       args.video, stats, desc=f"project {name}", lr=args.lr,
                                       noise_factor=args.noise, noise_ramp=args.noise_ramp,
                                       noise_reg=args.noise_regularize, lr_rampup=args.lr_rampup,
                                       lr_rampdown=args.lr_rampdown)
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


# ----------------------------------------------------------------------------------------------------
# Web UI (gradio, optional)
# ----------------------------------------------------------------------------------------------------

class Session:
    """What a slider change re-runs: styles from (seed or projected latent, truncation), plus the weighted
    directions, then synthesis only (directions are computed once, beforehand)."""

    MAX_GIFS = 8  # GIFs kept in the session's one temp folder; older ones are removed

    def __init__(self, explorer, dirs=None, n_sliders=8, project_steps=300):
        self.explorer = explorer
        self.dirs = dirs["directions"][:n_sliders] if dirs is not None else torch.zeros(0, explorer.style_dim)
        self.scale = (dirs.get("stdev")[:n_sliders] if dirs is not None and "stdev" in dirs
                      else torch.ones(len(self.dirs)))
        self.project_steps = project_steps
        self._tmp, self._gifs, self._distance, self._stats = None, [], None, None

    def _styles(self, latent, seed, truncation, layer_start, layer_end, amounts):
        e = self.explorer
        layers = list(range(int(layer_start), int(layer_end) + 1))
        if latent is not None:
            ws, noises = truncate(e, latent["ws"], float(truncation)), latent["noises"]
        else:
            ws, noises = styles_for(e, seed_w(e, int(seed)), float(truncation)), None
        for direction, scale, amount in zip(self.dirs, self.scale, amounts):
            if amount:
                ws = apply_edit(ws, direction, float(amount) * float(scale), layers)
        return ws, noises

    def view(self, latent, seed, truncation, layer_start, layer_end, top, bottom, *amounts):
        """The image for the page: the projected latent when there is one, else the seed."""
        ws, noises = self._styles(latent, seed, truncation, layer_start, layer_end, amounts)
        return meme(to_pil(self.explorer.synthesize(ws, noises=noises)[0]), top or None, bottom or None)

    def render(self, seed, truncation, layer_start, layer_end, top, bottom, *amounts):
        return self.view(None, seed, truncation, layer_start, layer_end, top, bottom, *amounts)

    def _gif_dir(self):
        if self._tmp is None:  # one folder per session, removed with it (or at exit)
            self._tmp = tempfile.mkdtemp(prefix="calm-gan-")
            self._finalizer = weakref.finalize(self, shutil.rmtree, self._tmp, True)
        return self._tmp

    def close(self):
        if self._tmp is not None:
            self._finalizer()
            self._tmp, self._gifs = None, []

    def gif(self, seed, truncation, layer_start, layer_end, top, bottom, index, *amounts, latent=None):
        """A GIF sweeping direction `index` from -10 to +10 (slider units) on top of the other sliders."""
        index = int(index)
        if not 0 <= index < len(self.dirs):
            raise ExploreError(f"direction {index} outside 0..{len(self.dirs) - 1}")
        frames = []
        for a in np.linspace(-10, 10, 11):
            values = list(amounts)
            values[index] = float(a)
            frames.append(self.view(latent, seed, truncation, layer_start, layer_end, top, bottom, *values))
        name = "projected" if latent is not None else f"seed{int(seed):04d}"
        path = os.path.join(self._gif_dir(), f"{name}_dir{index:02d}_{len(self._gifs):06d}.gif")
        save_gif(frames, path)
        self._gifs.append(path)
        while len(self._gifs) > self.MAX_GIFS:
            old = self._gifs.pop(0)
            if os.path.exists(old):
                os.remove(old)
        return path


def ui_project(session, image, steps=None, w_plus=True, progress=None):
    """The UI's "project" button: a PIL image -> (latent {ws, noises}, reconstruction PIL, status line).
    `progress(done, total)` is called every step (gradio's progress bar)."""
    if image is None:
        raise ExploreError("no image uploaded")
    e = session.explorer
    with tempfile.TemporaryDirectory(prefix="calm-gan-upload-") as tmp:
        path = os.path.join(tmp, "upload.png")
        image.save(path)
        target = load_target(path, e.size)
    if session._distance is None:
        session._distance = make_distance(e, "auto")
        session._stats = w_stats(e)
    steps = int(steps or session.project_steps)
    result, record = project_image(e, target, session._distance, steps, bool(w_plus), stats=session._stats,
                                   progress=progress, bar=False)
    latent = {"ws": result["ws"], "noises": result["noises"]}
    return latent, to_pil(result["image"][0]), (f"projected in {record['seconds']:.1f} s: PSNR "
                                                  f"{record['psnr_db']:.1f} dB ({record['distance']})")


def build_ui(explorer, dirs=None, n_sliders=8):
    try:
        import gradio as gr
    except ImportError:
        raise ExploreError("the web UI needs gradio: pip install -r requirements-ui.txt") from None
    session = Session(explorer, dirs, n_sliders)
    n = explorer.n_latent
    with gr.Blocks(title="calm-gan latent explorer") as demo:
        gr.Markdown(f"### calm-gan latent explorer: {explorer.family}, {explorer.size} px, "
                    f"{len(session.dirs)} directions" + (f" ({dirs['method']})" if dirs is not None else ""))
        latent = gr.State(None)
        with gr.Row():
            with gr.Column():
                seed = gr.Number(value=0, precision=0, label="seed")
                trunc = gr.Slider(0.0, 1.0, value=0.7, step=0.01, label="truncation psi")
                start = gr.Slider(0, n - 1, value=0, step=1, label="first layer")
                end = gr.Slider(0, n - 1, value=n - 1, step=1, label="last layer")
                top = gr.Textbox(label="caption top")
                bottom = gr.Textbox(label="caption bottom")
                sliders = [gr.Slider(-10, 10, value=0, step=0.1, label=f"direction {i}")
                           for i in range(len(session.dirs))]
            with gr.Column():
                image = gr.Image(type="pil", label="image (download with the arrow)", format="png", height=384)
                upload = gr.Image(type="pil", label="your image: project it, then edit it with the sliders")
                steps = gr.Slider(10, 1000, value=session.project_steps, step=10, label="projection steps")
                w_plus = gr.Checkbox(value=True, label="W+ (one w per layer: closer, less editable)")
                project_button = gr.Button("project")
                use_seed = gr.Button("back to the seed")
                status = gr.Markdown()
                gif_index = gr.Number(value=0, precision=0, label="GIF: sweep direction")
                gif_button = gr.Button("make GIF")
                gif_file = gr.File(label="GIF")
        inputs = [seed, trunc, start, end, top, bottom] + sliders

        def do_project(img, n_steps, plus, progress=gr.Progress()):
            try:
                lat, _, text = ui_project(session, img, n_steps, plus,
                                          lambda i, total: progress((i, total), desc="projecting"))
            except ExploreError as err:
                raise gr.Error(str(err))
            return lat, text

        def do_gif(lat, *values):
            return session.gif(*values, latent=lat)

        for comp in inputs:
            comp.change(session.view, [latent] + inputs, image, api_name=False)
        button = gr.Button("render")
        button.click(session.view, [latent] + inputs, image, api_name="render")
        project_button.click(do_project, [upload, steps, w_plus], [latent, status], api_name="project").then(
            session.view, [latent] + inputs, image, api_name=False)
        use_seed.click(lambda: (None, ""), None, [latent, status], api_name=False).then(
            session.view, [latent] + inputs, image, api_name=False)
        gif_button.click(do_gif, [latent, seed, trunc, start, end, top, bottom, gif_index] + sliders, gif_file,
                         api_name="gif")
        demo.load(session.view, [latent] + inputs, image, api_name=False)
    return demo


def run_ui(args):
    explorer = load_explorer(args.ckpt, args.device, args.size)
    dirs = load_directions(args.dirs) if args.dirs else None
    if dirs is not None:
        check_directions(dirs, args.dirs, explorer)
    demo = build_ui(explorer, dirs, args.sliders)
    demo.launch(server_name=args.host, server_port=args.port, share=args.share)


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

    e = sub.add_parser("edit", help="grid + GIF per seed (or projected latent) sweeping one direction")
    common(e)
    e.add_argument("--dirs", required=True, help="directions file from `sefa` or `ganspace`")
    e.add_argument("--index", type=int, default=0, help="which direction (0 = strongest)")
    e.add_argument("--degrees", default="-5:5:11",
                   help="start:stop:count or a comma list; write --degrees=-5:5:11 when it starts with a minus")
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

    u = sub.add_parser("ui", help="interactive gradio page")
    common(u)
    u.add_argument("--dirs", default=None, help="directions file for the sliders (none: no sliders)")
    u.add_argument("--sliders", type=int, default=8, help="number of direction sliders")
    u.add_argument("--host", default="127.0.0.1", help="bind address (loopback unless told otherwise)")
    u.add_argument("--port", type=int, default=7860, help="port of the page")
    u.add_argument("--share", action="store_true", help="make a public gradio link (off by default)")
    return p


def user_errors():
    """The exceptions that are the user's input, not a bug: one line each, no traceback."""
    return (ExploreError, OSError, load_script("03_stylegan2_ada").CheckpointError,
            load_script("02_stylegan_freezed").CheckpointError)


def main(argv=None):
    args = build_parser().parse_args(argv)
    args.device = str(resolve_device(args.device))
    set_ops(args.ops)
    t0 = time.time()
    run = {"ganspace": run_directions, "sefa": run_directions, "project": run_project, "edit": run_edit,
           "mix": run_mix, "ui": run_ui}[args.cmd]
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
