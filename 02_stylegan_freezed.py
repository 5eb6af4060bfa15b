"""StyleGAN (v1) fine-tuned from FFHQ with FreezeD: training, FID curve, sampling, style mixing.

Papers
- T. Karras, S. Laine, T. Aila, "A Style-Based Generator Architecture for Generative Adversarial
  Networks", CVPR 2019, arXiv:1812.04948 (StyleGAN).
- T. Karras, T. Aila, S. Laine, J. Lehtinen, "Progressive Growing of GANs for Improved Quality,
  Stability, and Variation", ICLR 2018, arXiv:1710.10196 (progressive growing, equalized lr,
  minibatch stddev).
- S. Mo, M. Cho, J. Shin, "Freeze the Discriminator: a Simple Baseline for Fine-Tuning GANs",
  CVPRW 2020, arXiv:2002.10964 (FreezeD).
- L. Mescheder, A. Geiger, S. Nowozin, "Which Training Methods for GANs do actually Converge?",
  ICML 2018, arXiv:1801.04406 (R1 penalty).

What StyleGAN changed from its predecessor, ProGAN (same progressive growing, equalized lr and
minibatch stddev discriminator): the latent z no longer enters the first layer; an 8-layer mapping
network turns it into w, which sets the scale and bias of every AdaIN (styles), the synthesis starts
from a learned constant, per-pixel noise adds stochastic detail, and mixing two w's during training
(mixing regularization) keeps the styles of different resolutions apart. FreezeD then changes only
the fine-tuning: the discriminator's input-side blocks stay fixed on the source model's features.

What this file implements
- The style-based generator (8-layer mapping network, learned constant, AdaIN, per-block noise,
  progressive blocks 4..1024 px with fade-in) and the progressive discriminator, with the module
  and parameter names of rosinality/style-based-gan-pytorch `model.py` (also used unchanged by
  sangwoomo/FreezeD `stylegan/model.py`). Its released checkpoints (`stylegan-256px-new.model`,
  `stylegan-1024px-new.model`: a dict {generator, discriminator, g_optimizer, d_optimizer,
  g_running}) and bare EMA files (a g_running state dict) load with strict=True.
- Fine-tuning from such a checkpoint at a fixed resolution (alpha = 1, sangwoomo/FreezeD
  `stylegan/finetune.py`) with the FreezeD paper's baselines as flags: plain fine-tuning,
  FreezeD (`--freeze-d K`), feature matching against the source discriminator (`--lambda-fm`)
  and L2-SP towards the source weights (`--lambda-l2-g`, `--lambda-l2-d`).
- Progressive training from scratch without `--ckpt` (rosinality `train.py` phases).
- Losses: non-saturating logistic + R1 (gamma 10 by default, `--r1-gamma`; every step) or WGAN-GP; mixing
  regularization.
- Left out: FreezeD's MineGAN, supervised (GLO/AdaBIGGAN) and AdaIN-only variants.

How `--freeze-d K` maps to FreezeD's numbering
    K = number of discriminator blocks frozen, counted from the image (input) side; `from_rgb` is
    frozen with them. At resolution 2**(step + 2) the discriminator runs step + 1 blocks
    (`progression.{8-step}` ... `progression.8`), and FreezeD's `--feature_loc` (= the number of
    trainable blocks, counted from the 4x4 end) is
        feature_loc = step + 1 - K       (256 px: step 6, feature_loc = 7 - K).
    FreezeD's README example `--freeze_D --feature_loc 3` at 256 px is `--freeze-d 4`: frozen
    from_rgb.*, progression.2..5 (256 -> 16 px), trainable progression.6, 7, 8 and `linear`.
    K = 0 trains the whole discriminator (plain fine-tuning). Freezing is requires_grad=False only,
    as in FreezeD: Adam still holds every parameter but a parameter without a gradient is skipped.

Run
    # FreezeD fine-tuning of the FFHQ 256 px checkpoint (FreezeD README: --mixing --loss r1 --sched)
    python 02_stylegan_freezed.py train --data DIR --size 256 --out runs/freezed \\
        --ckpt stylegan-256px-new.model --freeze-d 4 --mixing --loss r1 --sched --iter 50000
    # the same with the preset (fills --freeze-d 4 --mixing --loss r1 --sched)
    python 02_stylegan_freezed.py train --data DIR --out runs/freezed --ckpt stylegan-256px-new.model --preset freezed
    # the baselines: plain fine-tuning / feature matching / L2-SP (the weights are free choices here:
    # FreezeD's code defaults them to 0 and its README gives none)
    python 02_stylegan_freezed.py train --data DIR --size 256 --out runs/ft --ckpt FILE --mixing --sched
    python 02_stylegan_freezed.py train ... --ckpt FILE --lambda-fm 1.0
    python 02_stylegan_freezed.py train ... --ckpt FILE --lambda-l2-g 1.0 --lambda-l2-d 1.0
    # resume (restores networks, EMA, optimizers, data order, RNG and step)
    python 02_stylegan_freezed.py train --resume runs/freezed --iter 50000
    # bf16 autocast for the G and D forwards (about 2x on Ampere/Hopper GPUs; weights stay fp32)
    python 02_stylegan_freezed.py train --data DIR --out runs/freezed --ckpt FILE --preset freezed --precision bf16
    # progressive training from scratch (rosinality train.py, FFHQ recipe)
    python 02_stylegan_freezed.py train --data DIR --size 256 --out runs/scratch --mixing --loss r1 --sched
    # sampling and the style-mixing figure (paper Fig. 3)
    python 02_stylegan_freezed.py generate --ckpt runs/freezed --size 256 --seeds 0-7 --out out/
    python 02_stylegan_freezed.py mix --ckpt FILE --size 256 --rows 1-3 --cols 4-8 --out mix.png
    # tiny CPU demo
    python 01_prepare_data.py --demo 32 --out demo_out/data --size 32
    python 02_stylegan_freezed.py train --data demo_out/data --size 32 --out demo_out/run \\
        --channel-max 32 --code-dim 32 --iter 200 --batch 4 --fid-every 0

Run folder (the layout of 03 and 05): settings.json, log.jsonl, checkpoints/NNNNNN.pt (the newest
--keep; atomic, resumable), samples/NNNNNN.png (EMA generator, fixed latents and noise), and with FID
on, `fid.csv` and `fid.png`: FID and KID of the EMA generator against the training folder every
`--fid-every` steps (FreezeD: 1000, 5000 samples, from step 0), through `ops.fid` (pytorch-fid
Inception, eval mode; FreezeD's own numbers were computed with Inception left in train mode, so they
are not directly comparable). `--resume RUN` takes a run folder or a checkpoint file inside
RUN/checkpoints (a run folder of an older version, with one checkpoint.pt, resumes too). Ctrl-C or
SIGTERM finishes the step, saves it and exits with 130 or 143. One trainer per run folder (RUN/.lock,
ops/runs.py: a second one gets one line naming the PID); every file is written whole; a full,
read-only or vanished disk, or running out of memory, stops the run with one line saying what to do,
and the checkpoints written before stay; data files that do not decode are listed in RUN/skipped.txt.

Map of this file, in reading order (the method above the plumbing line):
    hyperparameters
                   CHANNELS, CODE_DIM, N_MLP, LR, SCHED_LR, ADAM_BETAS, MAPPING_LR_MULT, BATCH_FINETUNE,
                   SCHED_BATCH_FINETUNE, EMA_DECAY, ITERATIONS, PHASE_IMAGES, R1_GAMMA, GP_LAMBDA, DRIFT,
                   MIXING_PROB, FREEZE_D_PAPER, LAMBDA_FM, LAMBDA_L2_G, LAMBDA_L2_D, PRESETS
    schedule       scaled_channels, size_to_step, batch_for, lr_for, grow, fade_in_alpha
    layers         ScaledConv2d, ScaledLinear, EqualConv2d, EqualLinear, PixelNorm, Blur, FusedUpsample,
                   FusedDownsample
    generator      AdaptiveInstanceNorm, NoiseInjection, ConstantInput, StyledConvBlock, Generator,
                   StyledGenerator
    discriminator  ConvBlock, minibatch_stddev, Discriminator
    FreezeD        freezed_trainable, set_requires_grad
    losses         d_logistic_loss, g_nonsaturating_loss, d_r1_penalty, d_wgan_loss, d_gradient_penalty,
                   l2_sp, feature_matching, accumulate
    one iteration  make_optimizers, set_lr, train_step
    plumbing       RUN_DEFAULTS; checkpoint I/O; data (ImageFolder, BatchSampler); run folder; train and its
                   stages: lock_existing_run, train_settings, set_up (RunState, build_networks, restore,
                   save_run_checkpoint), open_run_folder, train_loop (iterate_or_say_memory, iterate,
                   forward_precision, write_log), evaluate (write_samples, run_fid); generate, mix; CLI
"""
import argparse
import contextlib
import dataclasses
import io
import json
import math
import os
import random
import re
import signal
import sys
import threading
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image
from tqdm import tqdm

import ops  # the image-file rule; importing ops checks the torch version (>= 2.6)
from ops import runs  # the run folder's lock and whole-file writes (shared with 03 and 05)
from ops.device import DEVICE_HELP, resolve_device

try:  # FID is optional: without ops/fid.py (or its Inception weights) training runs on without it
    from ops import fid_eval as fid_ops
except ImportError:
    fid_ops = None


# ----------------------------------------------------------------------------------------------
# Hyperparameters: the method's constants, the source of each beside it (StyleGAN = Karras et al.
# 2019, ProGAN = Karras et al. 2018, FreezeD = Mo et al. 2020; rosinality = style-based-gan-pytorch
# train.py / model.py, FreezeD code = sangwoomo/FreezeD stylegan/finetune.py). The flags of `train`
# default to these; settings.json records the values a run used, beside the run settings (folders,
# intervals, logging: RUN_DEFAULTS, below the plumbing line).
# ----------------------------------------------------------------------------------------------
# Networks (StyleGAN Sec. 2, rosinality model.py)
CHANNELS = (512, 512, 512, 512, 256, 128, 64, 32, 16)  # generator block outputs at 4, 8, ..., 1024 px
N_BLOCKS = len(CHANNELS)  # 9: every checkpoint holds all resolutions up to 1024
FUSED_FROM = 5  # G blocks 5..8 (128 px and up) use FusedUpsample; D blocks 0..3 FusedDownsample
CODE_DIM = 512  # z and w are 512-d (StyleGAN Sec. 2)
N_MLP = 8  # the mapping network f: 8 fully connected layers (StyleGAN Sec. 2)
LRELU = 0.2  # leaky ReLU slope everywhere (ProGAN Sec. A.1, rosinality)

# Optimisation: Adam as ProGAN, which StyleGAN keeps (StyleGAN App. C); rosinality / FreezeD code
LR = 0.001  # Adam lr without --sched (ProGAN Sec. A.1; rosinality --lr)
SCHED_LR = {128: 0.0015, 256: 0.002, 512: 0.003, 1024: 0.003}  # --sched: lr per resolution, LR elsewhere
ADAM_BETAS = (0.0, 0.99)  # G and D (ProGAN Sec. A.1; rosinality, FreezeD code)
MAPPING_LR_MULT = 0.01  # the mapping network at lr x 0.01 (StyleGAN App. C; rosinality 'mult')
BATCH_SCRATCH = 32  # images per step from scratch without --sched (rosinality)
SCHED_BATCH_PROGRESSIVE = {4: 512, 8: 256, 16: 128, 32: 64, 64: 32, 128: 32, 256: 32}  # --sched, else 32
BATCH_FINETUNE = 8  # images per step fine-tuning (FreezeD code: 8 per GPU at 256 px)
SCHED_BATCH_FINETUNE = {4: 128, 8: 64, 16: 32, 32: 16, 64: 8, 128: 8, 256: 8}  # --sched, else 8
EMA_DECAY = 0.999  # G_running = EMA of G per step (ProGAN Sec. A.1; rosinality, FreezeD code)
SIZE = 256  # resolution of the FreezeD experiments (FreezeD code --image_size 256)
ITERATIONS = 50_000  # fine-tuning iterations, one D and one G step each (FreezeD code --phase)
PHASE_IMAGES = 600_000  # from scratch: images per fade-in and per stabilisation (rosinality --phase)
INIT_SIZE = 8  # from scratch: the first resolution (rosinality --init_size)

# Losses and regularizers
LOSS_FINETUNE = "r1"  # the only loss FreezeD's code allows: logistic + R1
LOSS_SCRATCH = "wgan-gp"  # rosinality's default from scratch (its FFHQ recipe: --loss r1)
R1_GAMMA = 10.0  # R1 weight gamma, penalty gamma/2 E||grad D(x)||^2 (StyleGAN App. C; rosinality, FreezeD)
GP_LAMBDA = 10.0  # WGAN-GP weight lambda (Gulrajani et al. 2017 Sec. 4; ProGAN Sec. A.1)
DRIFT = 0.001  # WGAN-GP drift term epsilon_drift (ProGAN Sec. A.1)
MIXING_PROB = 0.9  # mixing regularization: 90% from two z's (StyleGAN Sec. 3.1, Table 2), per step as rosinality

# FreezeD (Mo et al. Sec. 3) and its baselines
FREEZE_D_PAPER = 4  # K frozen D blocks: FreezeD README --feature_loc 3 at 256 px (--freeze-d 0 = plain fine-tuning)
FM_BLOCKS = 4  # feature matching after this many D blocks when K = 0 (FreezeD code --feature_loc 3)
LAMBDA_FM = 0.0  # feature matching weight (FreezeD code: 0; its README gives none)
LAMBDA_L2_G = 0.0  # L2-SP weight on G (FreezeD code: 0)
LAMBDA_L2_D = 0.0  # L2-SP weight on D (FreezeD code: 0)

PRESETS = {  # the FreezeD paper's rows that need no extra weights (--preset fills unset flags)
    "finetune": dict(freeze_d=0, mixing=True, loss="r1", sched=True),
    "freezed": dict(freeze_d=FREEZE_D_PAPER, mixing=True, loss="r1", sched=True),  # FreezeD README
}


# ----------------------------------------------------------------------------------------------
# The schedule: resolution, batch and lr per step; progressive growing (ProGAN Sec. 3, rosinality)
# ----------------------------------------------------------------------------------------------
def scaled_channels(channel_max=512):
    """Channel widths of the 9 generator blocks capped at channel_max (512 = the released model)."""
    return tuple(min(c, channel_max) for c in CHANNELS)


def size_to_step(size, flag="--size"):
    """Resolution -> progressive step: 4 px -> 0, 8 -> 1, ..., 256 -> 6, 1024 -> 8."""
    if size < 4 or size > 4 * 2 ** (N_BLOCKS - 1) or size & (size - 1):
        raise ValueError(f"{flag} {size}: must be a power of two between 4 and {4 * 2 ** (N_BLOCKS - 1)}")
    return int(math.log2(size)) - 2


def batch_for(cfg, res):
    if cfg.batch:
        return cfg.batch
    if cfg.ckpt:
        return SCHED_BATCH_FINETUNE.get(res, BATCH_FINETUNE) if cfg.sched else BATCH_FINETUNE
    return SCHED_BATCH_PROGRESSIVE.get(res, BATCH_SCRATCH) if cfg.sched else BATCH_SCRATCH


def lr_for(cfg, res):
    return SCHED_LR.get(res, LR) if cfg.sched else cfg.lr


def grow(progress, phase, max_step):
    """Progressive growing (rosinality train.py): after `phase` images of fade-in and `phase` more of
    stabilisation at step s, go on to s + 1 (twice the resolution), up to max_step.
    progress = {"step": s, "used_sample": images seen at s}, updated in place."""
    if progress["used_sample"] > 2 * phase and progress["step"] < max_step:
        progress["step"] += 1
        progress["used_sample"] = 0


def fade_in_alpha(progress, phase, fading):
    """The fade-in weight of the newest block (ProGAN Sec. 3, Fig. 2): alpha rises linearly from 0 to
    1 over the first `phase` images at a step, then stays 1. fading=False (fine-tuning at a fixed
    resolution, or the first resolution from scratch: nothing to fade from): 1."""
    return min(1.0, (progress["used_sample"] + 1) / phase) if fading else 1.0


# ----------------------------------------------------------------------------------------------
# Equalized learning rate layers (ProGAN Sec. 4.1): weights stored as N(0, 1) in `weight_orig`,
# scaled at run time by the He constant sqrt(2 / fan_in).
# ----------------------------------------------------------------------------------------------
class ScaledConv2d(nn.Module):
    """Conv2d whose weight is weight_orig * sqrt(2 / (in * k * k)); the bias is not scaled."""

    def __init__(self, in_channel, out_channel, kernel_size, padding=0):
        super().__init__()
        self.weight_orig = nn.Parameter(torch.randn(out_channel, in_channel, kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.zeros(out_channel))
        self.scale = math.sqrt(2 / (in_channel * kernel_size * kernel_size))
        self.padding = padding

    def forward(self, x):
        return F.conv2d(x, self.weight_orig * self.scale, self.bias, padding=self.padding)


class ScaledLinear(nn.Module):
    """Linear whose weight is weight_orig * sqrt(2 / in)."""

    def __init__(self, in_dim, out_dim):
        super().__init__()
        self.weight_orig = nn.Parameter(torch.randn(out_dim, in_dim))
        self.bias = nn.Parameter(torch.zeros(out_dim))
        self.scale = math.sqrt(2 / in_dim)

    def forward(self, x):
        return F.linear(x, self.weight_orig * self.scale, self.bias)


class EqualConv2d(nn.Module):
    """Equalized-lr conv, keys `conv.weight_orig` [out, in, k, k] and `conv.bias` [out]."""

    def __init__(self, in_channel, out_channel, kernel_size, padding=0):
        super().__init__()
        self.conv = ScaledConv2d(in_channel, out_channel, kernel_size, padding)

    def forward(self, x):
        return self.conv(x)


class EqualLinear(nn.Module):
    """Equalized-lr linear, keys `linear.weight_orig` [out, in] and `linear.bias` [out]."""

    def __init__(self, in_dim, out_dim):
        super().__init__()
        self.linear = ScaledLinear(in_dim, out_dim)

    def forward(self, x):
        return self.linear(x)


class PixelNorm(nn.Module):
    """z / sqrt(mean(z^2) + 1e-8) over the channel axis (ProGAN Sec. 4.2), before the mapping MLP."""

    def forward(self, x):
        return x * torch.rsqrt(x.pow(2).mean(dim=1, keepdim=True) + 1e-8)


class Blur(nn.Module):
    """Depthwise 3x3 binomial filter [1,2,1]^T [1,2,1] / 16 after upsampling / before downsampling
    (StyleGAN Sec. 2, "bilinear" resampling). Buffers `weight` and `weight_flip` [C, 1, 3, 3] are
    saved in the checkpoints (the port uses the flipped copy in its hand-written backward; autograd
    gives the same gradient here, since the kernel is symmetric)."""

    def __init__(self, channel):
        super().__init__()
        k = torch.tensor([1.0, 2.0, 1.0])
        k = torch.outer(k, k) / 16.0
        self.register_buffer("weight", k.expand(channel, 1, 3, 3).clone())
        self.register_buffer("weight_flip", torch.flip(k, [0, 1]).expand(channel, 1, 3, 3).clone())

    def forward(self, x):
        return F.conv2d(x, self.weight, padding=1, groups=x.shape[1])


def _box_filtered_kernel(weight):
    """3x3 kernel -> 4x4 kernel = 2x2 box average of the zero-padded kernel (the port's fused
    resampling). A stride-2 conv with it equals the 3x3 conv then 2x2 average pooling; a stride-2
    transposed conv equals nearest 2x upsampling then the 3x3 conv, times 1/4 (box average, not sum:
    the port's convention, kept so its weights give its images)."""
    return F.avg_pool2d(F.pad(weight, [1, 1, 1, 1]), 2, stride=1)  # [a, b, 5, 5] -> [a, b, 4, 4]


class FusedUpsample(nn.Module):
    """Nearest 2x upsample + equalized 3x3 conv (scaled by 1/4) as one transposed conv. Raw
    parameters (no `_orig`): `weight` [in, out, 3, 3] (transposed-conv layout), `bias` [out]."""

    def __init__(self, in_channel, out_channel, kernel_size=3, padding=1):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(in_channel, out_channel, kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.zeros(out_channel))
        self.scale = math.sqrt(2 / (in_channel * kernel_size * kernel_size))
        self.padding = padding

    def forward(self, x):
        w = _box_filtered_kernel(self.weight * self.scale)
        return F.conv_transpose2d(x, w, self.bias, stride=2, padding=self.padding)  # H -> 2H


class FusedDownsample(nn.Module):
    """Equalized 3x3 conv + 2x2 average pooling as one stride-2 conv. Raw `weight` [out, in, 3, 3]."""

    def __init__(self, in_channel, out_channel, kernel_size=3, padding=1):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_channel, in_channel, kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.zeros(out_channel))
        self.scale = math.sqrt(2 / (in_channel * kernel_size * kernel_size))
        self.padding = padding

    def forward(self, x):
        w = _box_filtered_kernel(self.weight * self.scale)
        return F.conv2d(x, w, self.bias, stride=2, padding=self.padding)  # H -> H/2


# ----------------------------------------------------------------------------------------------
# Generator (StyleGAN Sec. 2, Fig. 1b)
# ----------------------------------------------------------------------------------------------
class AdaptiveInstanceNorm(nn.Module):
    """AdaIN(x, y) = y_s * (x - mu(x)) / sigma(x) + y_b (StyleGAN Eq. 1); y = A(w) is the learned
    affine `style` (bias initialised so that y_s = 1, y_b = 0)."""

    def __init__(self, channel, style_dim):
        super().__init__()
        self.norm = nn.InstanceNorm2d(channel)  # no affine, no running stats: no state_dict keys
        self.style = EqualLinear(style_dim, 2 * channel)
        with torch.no_grad():
            self.style.linear.bias[:channel] = 1
            self.style.linear.bias[channel:] = 0

    def forward(self, x, w):
        y = self.style(w)[:, :, None, None]  # [B, 2C, 1, 1]
        y_s, y_b = y.chunk(2, dim=1)
        return y_s * self.norm(x) + y_b


class NoiseInjection(nn.Module):
    """x + B * noise with a learned per-channel scale B (StyleGAN Sec. 2, "B" in Fig. 1b); the scale
    is stored equalized as `weight_orig` [1, C, 1, 1], multiplier sqrt(2 / C)."""

    def __init__(self, channel):
        super().__init__()
        self.weight_orig = nn.Parameter(torch.zeros(1, channel, 1, 1))
        self.scale = math.sqrt(2 / channel)

    def forward(self, x, noise):
        return x + self.weight_orig * self.scale * noise  # noise [B, 1, H, W] broadcast over C


class ConstantInput(nn.Module):
    """The learned 4x4 constant that replaces the latent input (StyleGAN Sec. 2)."""

    def __init__(self, channel, size=4):
        super().__init__()
        self.input = nn.Parameter(torch.randn(1, channel, size, size))

    def forward(self, batch):
        return self.input.expand(batch, -1, -1, -1)


class StyledConvBlock(nn.Module):
    """One resolution of the synthesis network: [upsample +] conv, noise, lrelu, AdaIN, twice.
    Block 0 starts from the constant; blocks 1-4 upsample (nearest) then conv then blur; blocks 5-8
    use FusedUpsample then blur. Both halves get the same noise map."""

    def __init__(self, in_channel, out_channel, style_dim, initial=False, fused=False):
        super().__init__()
        if initial:
            self.conv1 = ConstantInput(in_channel)
        elif fused:
            self.conv1 = nn.Sequential(FusedUpsample(in_channel, out_channel, 3, padding=1),
                                       Blur(out_channel))
        else:
            self.conv1 = nn.Sequential(nn.Upsample(scale_factor=2, mode="nearest"),
                                       EqualConv2d(in_channel, out_channel, 3, padding=1),
                                       Blur(out_channel))
        self.noise1 = NoiseInjection(out_channel)
        self.adain1 = AdaptiveInstanceNorm(out_channel, style_dim)
        self.conv2 = EqualConv2d(out_channel, out_channel, 3, padding=1)
        self.noise2 = NoiseInjection(out_channel)
        self.adain2 = AdaptiveInstanceNorm(out_channel, style_dim)
        self.initial = initial

    def forward(self, x, w, noise):
        """w: [B, style_dim] for both AdaINs, or a pair (w1, w2), one per AdaIN."""
        w1, w2 = w if isinstance(w, (tuple, list)) else (w, w)
        out = self.conv1(x.shape[0]) if self.initial else self.conv1(x)
        out = self.adain1(F.leaky_relu(self.noise1(out, noise), LRELU), w1)
        out = self.conv2(out)
        out = self.adain2(F.leaky_relu(self.noise2(out, noise), LRELU), w2)
        return out


class Generator(nn.Module):
    """Synthesis network g: 9 progressive blocks (4..1024 px) and their 1x1 `to_rgb` convs."""

    def __init__(self, style_dim=CODE_DIM, channels=CHANNELS):
        super().__init__()
        assert len(channels) == N_BLOCKS, channels
        self.progression = nn.ModuleList()
        self.to_rgb = nn.ModuleList()
        for i, c_out in enumerate(channels):
            c_in = channels[i - 1] if i > 0 else c_out
            self.progression.append(StyledConvBlock(c_in, c_out, style_dim, initial=(i == 0),
                                                    fused=(i >= FUSED_FROM)))
            self.to_rgb.append(EqualConv2d(c_out, 3, 1))

    def forward(self, ws, noise, step, alpha=-1):
        """ws: list of step + 1 styles [B, style_dim], one per block (or (w1, w2) pairs, one per
        AdaIN); noise: list of [B, 1, 4*2^i,
        4*2^i]. alpha in [0, 1) blends in the new block (ProGAN Sec. 3, Fig. 2):
        out = (1 - alpha) * up(to_rgb[step-1](h_{step-1})) + alpha * to_rgb[step](h_step)."""
        out = None
        for i in range(step + 1):
            prev = out
            out = self.progression[i](out if i > 0 else noise[0], ws[i], noise[i])
        img = self.to_rgb[step](out)  # [B, 3, 4*2^step, 4*2^step]
        if step > 0 and 0 <= alpha < 1:
            skip = F.interpolate(self.to_rgb[step - 1](prev), scale_factor=2, mode="nearest")
            img = (1 - alpha) * skip + alpha * img
        return img


class StyledGenerator(nn.Module):
    """Mapping network f (8 equalized FC layers, lr x0.01, Sec. 2) + synthesis network g.

    forward(z or [z1, z2], noise=None, step, alpha, mean_style=None, style_weight=1, mixing_range):
      - a list of two z's mixes styles (Sec. 3.1): blocks 0..k use w1 and blocks k+1.. use w2, with
        k drawn uniformly from 0..step-1 (python `random`), unless mixing_range=(a, b) is given, in
        which case blocks a..b use w2 and all others w1.
      - mean_style (the mean w) and style_weight psi give truncation w' = mean + psi (w - mean) (Sec. B).
    """

    def __init__(self, code_dim=CODE_DIM, n_mlp=N_MLP, channels=CHANNELS):
        super().__init__()
        self.code_dim = code_dim
        self.channels = tuple(channels)
        self.generator = Generator(code_dim, channels)
        layers = [PixelNorm()]
        for _ in range(n_mlp):  # keys style.1, style.3, ..., style.15
            layers += [EqualLinear(code_dim, code_dim), nn.LeakyReLU(LRELU)]
        self.style = nn.Sequential(*layers)

    def make_noise(self, batch, step, device="cpu", generator=None):
        """One noise map per block (both convs of a block share it): [B, 1, 4*2^i, 4*2^i]."""
        return [torch.randn(batch, 1, 4 * 2 ** i, 4 * 2 ** i, device=device, generator=generator)
                for i in range(step + 1)]

    def mean_style(self, z):
        return self.style(z).mean(0, keepdim=True)  # [1, code_dim]

    def forward(self, z, noise=None, step=0, alpha=-1, mean_style=None, style_weight=1.0,
                mixing_range=(-1, -1)):
        zs = list(z) if isinstance(z, (list, tuple)) else [z]
        for zi in zs:
            assert zi.ndim == 2 and zi.shape[1] == self.code_dim, f"z must be [B, {self.code_dim}]"
        assert 0 <= step < N_BLOCKS, step
        styles = [self.style(zi) for zi in zs]  # each [B, code_dim]
        if mean_style is not None:
            styles = [mean_style + style_weight * (w - mean_style) for w in styles]
        if noise is None:
            noise = self.make_noise(zs[0].shape[0], step, zs[0].device)
        if len(styles) == 1:
            ws = styles * (step + 1)
        elif mixing_range != (-1, -1):
            ws = [styles[1] if mixing_range[0] <= i <= mixing_range[1] else styles[0]
                  for i in range(step + 1)]
        elif step == 0:  # a single block: nothing to cross over
            ws = [styles[0]]
        else:
            k = random.randrange(step)  # crossover after block k
            ws = [styles[0] if i <= k else styles[1] for i in range(step + 1)]
        return self.generator(ws, noise, step, alpha)


# ----------------------------------------------------------------------------------------------
# Discriminator (ProGAN Sec. 3-4, progressive, minibatch stddev)
# ----------------------------------------------------------------------------------------------
class ConvBlock(nn.Module):
    """conv3x3 + lrelu, then [blur + (fused) stride-2 conv | blur + conv + avgpool | conv k2] + lrelu."""

    def __init__(self, in_channel, out_channel, kernel_size=3, padding=1, kernel_size2=None,
                 padding2=None, downsample=False, fused=False):
        super().__init__()
        k2 = kernel_size if kernel_size2 is None else kernel_size2
        p2 = padding if padding2 is None else padding2
        self.conv1 = nn.Sequential(EqualConv2d(in_channel, out_channel, kernel_size, padding),
                                   nn.LeakyReLU(LRELU))
        if downsample and fused:
            self.conv2 = nn.Sequential(Blur(out_channel), FusedDownsample(out_channel, out_channel, k2, p2),
                                       nn.LeakyReLU(LRELU))
        elif downsample:
            self.conv2 = nn.Sequential(Blur(out_channel), EqualConv2d(out_channel, out_channel, k2, p2),
                                       nn.AvgPool2d(2), nn.LeakyReLU(LRELU))
        else:
            self.conv2 = nn.Sequential(EqualConv2d(out_channel, out_channel, k2, p2), nn.LeakyReLU(LRELU))

    def forward(self, x):
        return self.conv2(self.conv1(x))


def minibatch_stddev(x):
    """Append one channel: the std over the batch, averaged over C, H, W (ProGAN Sec. 3)."""
    std = torch.sqrt(x.var(0, unbiased=False) + 1e-8).mean()
    return torch.cat([x, std.expand(x.shape[0], 1, x.shape[2], x.shape[3])], dim=1)


class Discriminator(nn.Module):
    """Progressive D. Block N reads resolution 1024 / 2^N (N = 0..7, downsampling), block 8 is the
    4x4 head after minibatch stddev; `from_rgb.N` feeds block N. At step s (2^(s+2) px) the blocks
    8-s .. 8 run. from_rgb_activate=True (rosinality train.py default, FreezeD) names the 1x1 conv
    `from_rgb.N.0.conv.*` and follows it with a leaky ReLU; False names it `from_rgb.N.conv.*`."""

    def __init__(self, channels=CHANNELS, from_rgb_activate=True):
        super().__init__()
        c = tuple(reversed(channels))  # D input width per block: 16, 32, ..., 512
        self.progression = nn.ModuleList()
        for n in range(N_BLOCKS - 1):
            self.progression.append(ConvBlock(c[n], c[n + 1], 3, 1, downsample=True,
                                              fused=(n < N_BLOCKS - FUSED_FROM)))
        self.progression.append(ConvBlock(c[-1] + 1, c[-1], 3, 1, 4, 0))  # 4x4 -> 1x1
        self.from_rgb = nn.ModuleList(
            [nn.Sequential(EqualConv2d(3, c[n], 1), nn.LeakyReLU(LRELU)) if from_rgb_activate
             else EqualConv2d(3, c[n], 1) for n in range(N_BLOCKS)])
        self.linear = EqualLinear(c[-1], 1)
        self.from_rgb_activate = from_rgb_activate

    def forward(self, x, step=0, alpha=-1, feature_blocks=None):
        """x: [B, 3, 2^(step+2), 2^(step+2)] -> logits [B, 1]. With feature_blocks=K, returns instead
        the activation after the first K active blocks (FreezeD's get_feature with
        feature_loc = step + 1 - K), flattened to [B, -1]."""
        assert x.ndim == 4 and x.shape[1] == 3 and x.shape[2] == x.shape[3] == 4 * 2 ** step, \
            f"D at step {step} expects [B, 3, {4 * 2 ** step}, {4 * 2 ** step}], got {list(x.shape)}"
        first = N_BLOCKS - 1 - step
        out = self.from_rgb[first](x)
        for n in range(first, N_BLOCKS):
            if n == N_BLOCKS - 1:
                out = minibatch_stddev(out)  # [B, C + 1, 4, 4]
            out = self.progression[n](out)
            if n == first and step > 0 and 0 <= alpha < 1:  # fade-in, after the new block
                skip = self.from_rgb[first + 1](F.avg_pool2d(x, 2))
                out = (1 - alpha) * skip + alpha * out
            if feature_blocks is not None and n - first + 1 == feature_blocks:
                return out.flatten(1)
        return self.linear(out.flatten(1))  # [B, C, 1, 1] -> [B, 1]


# ----------------------------------------------------------------------------------------------
# FreezeD (Mo et al. Sec. 3): freeze the discriminator's lower (input-side) blocks
# ----------------------------------------------------------------------------------------------
def freezed_trainable(d, step, freeze_d):
    """Names of D parameters trained with `--freeze-d K` at `step`. K = 0: all of them. K > 0: only
    progression.{8-step+K} .. progression.8 and linear, i.e. FreezeD's rule with
    feature_loc = step + 1 - K (names containing progression.{8-loc} for loc < feature_loc, and
    'linear'); from_rgb and the first K active blocks stay frozen."""
    names = [n for n, _ in d.named_parameters()]
    if freeze_d == 0:
        return set(names)
    if not 0 < freeze_d <= step + 1:
        raise ValueError(f"--freeze-d {freeze_d}: the {4 * 2 ** step} px discriminator has {step + 1} "
                         f"blocks, so K must be in 0..{step + 1}")
    feature_loc = step + 1 - freeze_d
    keep = {f"progression.{N_BLOCKS - 1 - loc}." for loc in range(feature_loc)}
    return {n for n in names if n.startswith("linear.") or any(n.startswith(k) for k in keep)}


def set_requires_grad(module, flag, names=None):
    for n, p in module.named_parameters():
        p.requires_grad_(flag if names is None or n in names else not flag)


# ----------------------------------------------------------------------------------------------
# Losses and regularizers
# ----------------------------------------------------------------------------------------------
def d_logistic_loss(real_pred, fake_pred):
    """Non-saturating logistic D loss (GAN paper Eq. 1): softplus(-D(x)) + softplus(D(G(z)))."""
    return F.softplus(-real_pred).mean() + F.softplus(fake_pred).mean()


def g_nonsaturating_loss(fake_pred):
    """-log sigmoid(D(G(z))) = softplus(-D(G(z)))."""
    return F.softplus(-fake_pred).mean()


def d_r1_penalty(real_pred, real_img):
    """R1 (Mescheder et al. 2018, Eq. 9): E_x ||grad_x D(x)||^2 over real x. The caller weights it
    by gamma / 2 (the same contract as 03_stylegan2_ada.py's d_r1_penalty)."""
    (grad,) = torch.autograd.grad(real_pred.sum(), real_img, create_graph=True)  # [B, 3, H, W]
    return grad.square().flatten(1).sum(1).mean()


def d_wgan_loss(real_pred, fake_pred):
    """WGAN critic loss with ProGAN's drift term: -E D(x) + eps_drift E D(x)^2 + E D(G(z))."""
    return -(real_pred.mean() - DRIFT * real_pred.pow(2).mean()) + fake_pred.mean()


def d_gradient_penalty(d, real_img, fake_img, step, alpha):
    """WGAN-GP (Gulrajani et al. Eq. 3): lambda E (||grad D(x_hat)||_2 - 1)^2, x_hat on the segment."""
    eps = torch.rand(real_img.shape[0], 1, 1, 1, device=real_img.device)
    x_hat = (eps * real_img.detach() + (1 - eps) * fake_img.detach()).requires_grad_(True)
    (grad,) = torch.autograd.grad(d(x_hat, step, alpha).sum(), x_hat, create_graph=True)
    return GP_LAMBDA * (grad.flatten(1).norm(2, dim=1) - 1).pow(2).mean()


def l2_sp(target, source):
    """L2-SP (Li et al. 2018), as in FreezeD finetune.py: sum over tensors of mean((p - p_src)^2)."""
    return sum(F.mse_loss(p, q) for p, q in zip(target.parameters(), source.parameters()))


def feature_matching(d, d_source, real_img, step, alpha, blocks):
    """Feature distillation (FreezeD baseline): mse between target and source D activations on real
    images after the first `blocks` active D blocks (FreezeD's feature_loc = step + 1 - blocks)."""
    with torch.no_grad():
        f_src = d_source(real_img, step, alpha, feature_blocks=blocks)
    return F.mse_loss(d(real_img, step, alpha, feature_blocks=blocks), f_src)


def accumulate(ema, model, decay=EMA_DECAY):
    """EMA of the parameters (not buffers), as rosinality train.py: ema = decay ema + (1 - decay) model."""
    with torch.no_grad():
        params = dict(model.named_parameters())
        for name, p in ema.named_parameters():
            p.mul_(decay).add_(params[name], alpha=1 - decay)


# ----------------------------------------------------------------------------------------------
# One training iteration
# ----------------------------------------------------------------------------------------------
def make_optimizers(g, d, lr):
    """Adam for G and for D with betas ADAM_BETAS (rosinality train.py, FreezeD code). G's mapping
    network is a group of its own at lr x MAPPING_LR_MULT (StyleGAN App. C); set_lr keeps that ratio.
    A D parameter that FreezeD freezes stays in D's optimizer but gets no gradient, so Adam skips it."""
    g_opt = torch.optim.Adam(g.generator.parameters(), lr=lr, betas=ADAM_BETAS)
    g_opt.add_param_group({"params": g.style.parameters(), "lr": lr * MAPPING_LR_MULT, "mult": MAPPING_LR_MULT})
    d_opt = torch.optim.Adam(d.parameters(), lr=lr, betas=ADAM_BETAS)
    return g_opt, d_opt


def set_lr(opt, lr):
    """The schedule's lr (lr_for) into every group, times the group's 'mult' (the mapping network's 0.01)."""
    for group in opt.param_groups:
        group["lr"] = lr * group.get("mult", 1)


def train_step(g, d, g_ema, g_opt, d_opt, real, s, alpha, cfg, trainable_d, g_source=None, d_source=None):
    """One iteration of StyleGAN training, FreezeD fine-tuning included (the order of FreezeD
    finetune.py and rosinality train.py), on one batch of real images x: [B, 3, 4*2^s, 4*2^s] in
    [-1, 1] at progressive step s with fade-in weight alpha (1 = none).

    1. Latents: z for the D step and another for the G step; with probability MIXING_PROB each is
       a pair (z1, z2) that the generator switches between at a random block (mixing regularization,
       StyleGAN Sec. 3.1).
    2. D step, only the FreezeD-trainable part of D (`trainable_d`, FreezeD Sec. 3) learns:
           L_D = softplus(-D(x)) + softplus(D(G(z))) + gamma/2 E||grad_x D(x)||^2    (cfg.loss "r1")
              or -D(x) + eps_drift D(x)^2 + D(G(z)) + GP_LAMBDA (||grad D(x_hat)|| - 1)^2   ("wgan-gp")
              + lambda_fm FM(D, D_source; x) + lambda_l2_d L2-SP(D, D_source)    (FreezeD's baselines)
    3. G step with all of D frozen:
           L_G = softplus(-D(G(z)))   (r1)   or   -D(G(z))   (wgan-gp)   + lambda_l2_g L2-SP(G, G_source)
    4. G_running = EMA of G (decay cfg.ema_decay).
    cfg holds the hyperparameters: loss, mixing, lambda_fm, lambda_l2_d, lambda_l2_g, fm_blocks, and
    r1_gamma and ema_decay (R1_GAMMA and EMA_DECAY when cfg has none). Returns the loss terms as floats."""
    batch, device = real.shape[0], real.device
    # 1. latents
    if cfg.mixing and random.random() < MIXING_PROB:
        z_d = [torch.randn(batch, g.code_dim, device=device) for _ in range(2)]
        z_g = [torch.randn(batch, g.code_dim, device=device) for _ in range(2)]
    else:
        z_d = torch.randn(batch, g.code_dim, device=device)
        z_g = torch.randn(batch, g.code_dim, device=device)
    zero = torch.zeros((), device=device)  # the value of a term that is switched off

    # 2. D step: G fixed, D's FreezeD-trainable blocks learn
    set_requires_grad(g, False)
    set_requires_grad(d, True, trainable_d)
    d.zero_grad(set_to_none=True)
    with torch.no_grad():
        fake = g(z_d, step=s, alpha=alpha)
    real = real.detach().requires_grad_(cfg.loss == "r1")  # R1 differentiates D(x) with respect to x
    real_pred, fake_pred = d(real, s, alpha), d(fake, s, alpha)  # [B, 1] each
    if cfg.loss == "r1":
        gamma = getattr(cfg, "r1_gamma", R1_GAMMA)
        loss_d, reg_d = d_logistic_loss(real_pred, fake_pred), gamma / 2 * d_r1_penalty(real_pred, real)
    else:
        loss_d, reg_d = d_wgan_loss(real_pred, fake_pred), d_gradient_penalty(d, real, fake, s, alpha)
    fm = feature_matching(d, d_source, real, s, alpha, cfg.fm_blocks) if cfg.lambda_fm > 0 else zero
    l2_d = l2_sp(d, d_source) if cfg.lambda_l2_d > 0 else zero
    (loss_d + reg_d + cfg.lambda_fm * fm + cfg.lambda_l2_d * l2_d).backward()
    d_opt.step()

    # 3. G step: all of D fixed
    set_requires_grad(g, True)
    set_requires_grad(d, False)
    g.zero_grad(set_to_none=True)
    fake_pred = d(g(z_g, step=s, alpha=alpha), s, alpha)
    loss_g = g_nonsaturating_loss(fake_pred) if cfg.loss == "r1" else -fake_pred.mean()
    l2_g = l2_sp(g, g_source) if cfg.lambda_l2_g > 0 else zero
    (loss_g + cfg.lambda_l2_g * l2_g).backward()
    g_opt.step()

    # 4. the EMA generator
    accumulate(g_ema, g, getattr(cfg, "ema_decay", EMA_DECAY))

    stats = {"loss_d": loss_d.item(), "loss_g": loss_g.item(), ("r1" if cfg.loss == "r1" else "gp"): reg_d.item()}
    if cfg.lambda_fm > 0:
        stats["fm"] = fm.item()
    if cfg.lambda_l2_d > 0 or cfg.lambda_l2_g > 0:
        stats["l2_d"], stats["l2_g"] = l2_d.item(), l2_g.item()
    return stats


# ---- plumbing: data, checkpoints, formats, settings, distributed, run folder, CLI ----


# ----------------------------------------------------------------------------------------------
# Run settings (RUN_DEFAULTS): how often a run logs, samples, evaluates and saves, and where it
# runs; not the method (its hyperparameters are above the plumbing line). The flags of `train`
# default to these; settings.json records them beside the hyperparameters.
# ----------------------------------------------------------------------------------------------
RUN_DEFAULTS = {
    "seed": 0,              # torch and Python RNG (FreezeD code --seed 0)
    "n_sample": 16,         # images in each sample grid (fixed latents and noise)
    "sample_every": 1000,   # steps between sample grids in RUN/samples, 0 = off
    "log_every": 10,        # steps between log.jsonl lines
    "ckpt_every": 1000,     # steps between checkpoints; the last step is always saved
    "keep": 3,              # newest checkpoints kept in RUN/checkpoints (as 03_stylegan2_ada.py)
    "fid_every": 1000,      # steps between FID evaluations, 0 = off (FreezeD code --eval_step 1000)
    "fid_n": 5000,          # generated images per FID (FreezeD code --sample_num 5000)
    "fid_batch": 50,        # images per Inception batch (pytorch-fid's default)
    "device": None,         # None: ops.device's choice (cuda, mps, else cpu)
    "precision": None,      # fp32 | bf16 (forward_precision); None: fp32, or a resumed run's own
}


# ----------------------------------------------------------------------------------------------
# Checkpoint I/O. Keys follow rosinality train.py: {generator, discriminator, g_optimizer,
# d_optimizer, g_running}; our run files add step, args (plain dict), progress, rng, sampler,
# fixed sample latents and, for L2-SP / FM, the source networks.
# ----------------------------------------------------------------------------------------------
class CheckpointError(ValueError):
    """A checkpoint file that cannot be used; the message names the file and the problem."""


def save_checkpoint(path, ckpt):
    """torch.save(ckpt) to a temp file in the same folder, then os.replace: never a partial file."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    buf = io.BytesIO()  # serialised in memory first: a full disk is then an OSError with its errno
    torch.save(ckpt, buf)  # (torch's zip writer reports it as an unnamed RuntimeError)
    runs.write_atomic(path, lambda f: f.write(buf.getbuffer()))


def load_checkpoint(path):
    """torch.load(weights_only=True) -> dict. Accepts a train dict or a bare g_running state dict."""
    if not os.path.isfile(path):
        raise CheckpointError(f"{path}: no such checkpoint file")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # pickle errors of many kinds: report them in one line
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"{path}: not a readable weights-only torch checkpoint ({first})") from None
    if not isinstance(ckpt, dict):
        raise CheckpointError(f"{path}: expected a dict of state dicts, got {type(ckpt).__name__}")
    if "g_running" not in ckpt and "generator" not in ckpt:
        if any(k.startswith("generator.progression.") for k in ckpt):  # bare g_running file
            return {"g_running": ckpt}
        raise CheckpointError(f"{path}: no 'g_running' or 'generator' entry and not a bare StyleGAN v1 "
                              f"generator state dict (first keys: {list(ckpt)[:3]})")
    return ckpt


def _strip_module(sd):
    """DataParallel-saved state dicts carry a 'module.' prefix; the released files do not."""
    return {k[7:] if k.startswith("module.") else k: v for k, v in sd.items()}


def generator_arch(sd, path="checkpoint"):
    """Read code_dim, n_mlp and the 9 block widths off a StyledGenerator state dict."""
    try:
        code_dim = sd["style.1.linear.weight_orig"].shape[1]
        n_mlp = sum(1 for k in sd if k.startswith("style.") and k.endswith(".linear.weight_orig"))
        channels = tuple(sd[f"generator.to_rgb.{i}.conv.weight_orig"].shape[1] for i in range(N_BLOCKS))
    except KeyError as e:
        raise CheckpointError(f"{path}: not a StyleGAN v1 generator state dict (missing key {e})") from None
    return dict(code_dim=int(code_dim), n_mlp=int(n_mlp), channels=tuple(int(c) for c in channels))


def discriminator_arch(sd, path="checkpoint"):
    activate = "from_rgb.0.0.conv.weight_orig" in sd
    key = "from_rgb.{}.0.conv.weight_orig" if activate else "from_rgb.{}.conv.weight_orig"
    try:
        channels = tuple(int(sd[key.format(N_BLOCKS - 1 - i)].shape[0]) for i in range(N_BLOCKS))
    except KeyError as e:
        raise CheckpointError(f"{path}: not a StyleGAN v1 discriminator state dict (missing key {e})") from None
    return dict(channels=channels, from_rgb_activate=activate)


def load_strict(module, sd, path, what):
    """load_state_dict(strict=True) with a one-line error listing what does not match."""
    sd = _strip_module(sd)
    own = module.state_dict()
    missing = [k for k in own if k not in sd]
    unexpected = [k for k in sd if k not in own]
    wrong = [f"{k} {list(sd[k].shape)} != {list(own[k].shape)}" for k in own
             if k in sd and tuple(sd[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or wrong:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing (e.g. {missing[0]})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (e.g. {unexpected[0]})")
        if wrong:
            parts.append(f"{len(wrong)} with wrong shape (e.g. {wrong[0]})")
        raise CheckpointError(f"{path}: '{what}' does not fit the StyleGAN v1 layout: " + "; ".join(parts))
    module.load_state_dict(sd, strict=True)


def build_generator_from(sd, path):
    g = StyledGenerator(**generator_arch(_strip_module(sd), path))
    load_strict(g, sd, path, "generator")
    return g


def build_discriminator_from(sd, path):
    d = Discriminator(**discriminator_arch(_strip_module(sd), path))
    load_strict(d, sd, path, "discriminator")
    return d


# ----------------------------------------------------------------------------------------------
# Data: a folder of images, decoded once, kept as uint8, resized per resolution (LANCZOS, as
# rosinality prepare_data.py); random horizontal flips; scaled to [-1, 1].
# ----------------------------------------------------------------------------------------------
IMAGE_EXTS = ops.IMAGE_EXTENSIONS  # one rule with 03, 05 and FID: pytorch-fid's extensions, any case


NOT_TRAINING_IMAGES = ("contact_sheet.png",)  # 01_prepare_data.py's preview grid of the crops


class ImageFolder:
    """The images directly in `root` (as ops.fid reads the real set) as RGB uint8 [N, 3, size, size].
    A file that does not decode is skipped with one line (`WARNING: <path>: <error> (skipped)`, the
    form of ops.readable_warnings, printed here so that it shows however the file is used) and
    listed in `skipped` (the run writes them to RUN/skipped.txt)."""

    def __init__(self, root, size):
        if not os.path.isdir(root):
            raise ValueError(f"{root}: data folder does not exist")
        files = ops.image_files(root, exclude=NOT_TRAINING_IMAGES)
        if not files:
            raise ValueError(f"{root}: no images found (looked for {', '.join(IMAGE_EXTS)})")
        images, bad, resized = [], [], 0
        for f in files:
            try:
                with Image.open(f) as im:
                    im = im.convert("RGB")
                    if im.size != (size, size):
                        resized += 1
                        im = _center_crop_resize(im, size)
                    images.append(np.asarray(im, dtype=np.uint8))
            except Exception as e:
                bad.append(f"{f}: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else 'unreadable'}")
        for line in bad[:10]:
            print(f"WARNING: {line} (skipped)", file=sys.stderr)
        if len(bad) > 10:
            print(f"WARNING: {root}: {len(bad) - 10} more unreadable images skipped", file=sys.stderr)
        self.skipped = bad
        if not images:
            raise ValueError(f"{root}: none of the {len(files)} image files could be read")
        if resized:
            print(f"note: {resized} of {len(images)} images in {root} were not {size}x{size}; "
                  f"center-cropped and resized (LANCZOS)", file=sys.stderr)
        self.root, self.size = root, size
        self.full = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous()  # [N, 3, S, S] uint8
        self._cache = {size: self.full}

    def __len__(self):
        return self.full.shape[0]

    def at(self, resolution):
        """[N, 3, r, r] uint8, resized from the full size with LANCZOS once per resolution."""
        if resolution not in self._cache:
            arr = [np.asarray(Image.fromarray(x.permute(1, 2, 0).numpy()).resize(
                (resolution, resolution), Image.LANCZOS)) for x in self.full]
            self._cache[resolution] = torch.from_numpy(np.stack(arr)).permute(0, 3, 1, 2).contiguous()
        return self._cache[resolution]


def _center_crop_resize(im, size):
    w, h = im.size
    s = min(w, h)
    im = im.crop(((w - s) // 2, (h - s) // 2, (w - s) // 2 + s, (h - s) // 2 + s))
    return im.resize((size, size), Image.LANCZOS)


class BatchSampler:
    """Endless shuffled epochs with its own torch.Generator, so resume continues the same order."""

    def __init__(self, n, seed):
        self.n = n
        self.gen = torch.Generator().manual_seed(seed)
        self.perm = torch.randperm(n, generator=self.gen)
        self.pos = 0

    def next(self, data, batch):
        """data [N, 3, r, r] uint8 -> [batch, 3, r, r] float in [-1, 1], randomly flipped."""
        idx = []
        while len(idx) < batch:
            if self.pos >= self.n:
                self.perm, self.pos = torch.randperm(self.n, generator=self.gen), 0
            take = min(batch - len(idx), self.n - self.pos)
            idx += self.perm[self.pos:self.pos + take].tolist()
            self.pos += take
        x = data[idx].float() / 127.5 - 1
        flip = torch.rand(batch, generator=self.gen) < 0.5
        x[flip] = x[flip].flip(3)
        return x

    def state_dict(self):
        return {"gen": self.gen.get_state(), "perm": self.perm, "pos": self.pos}

    def load_state_dict(self, s):
        self.gen.set_state(s["gen"])
        self.perm, self.pos = s["perm"], int(s["pos"])


# ----------------------------------------------------------------------------------------------
# Run folder: image grids, the FID curve drawn with PIL, log lines
# ----------------------------------------------------------------------------------------------
# ---- Run folder contract: identical in 02, 03 and 05 (tests/test_run_folder.py compares the source) ----
class ResumeError(ValueError):
    """--resume cannot continue: the message names the folder or file and what is wrong."""


class _StopRequest:
    """SIGINT (Ctrl-C) or SIGTERM (batch schedulers, `timeout`, `docker stop`): finish the current
    iteration, write a checkpoint, exit with 128 + the signal number (130 or 143, as a shell reports
    a process ended by that signal). A second Ctrl-C interrupts at once. A signal that is ignored when
    the run starts (SIGINT under `nohup` or in a background job) stays ignored; the previous handlers
    are restored on exit."""

    def __init__(self):
        self.requested = False
        self.signum = None
        self.previous = {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                if signal.getsignal(sig) is not signal.SIG_IGN:
                    self.previous[sig] = signal.signal(sig, self._handler)
        return self

    def _handler(self, signum, frame):
        self.requested, self.signum = True, signum
        if signal.SIGINT in self.previous:  # a second Ctrl-C raises KeyboardInterrupt at once
            signal.signal(signal.SIGINT, signal.default_int_handler)

    @property
    def exit_code(self):
        return 128 + int(self.signum or signal.SIGINT)

    def message(self, step, path, script, run):
        """The one line printed on the way out: the step saved and the command that continues it."""
        name = signal.Signals(self.signum or signal.SIGINT).name
        return (f"{name}: stopped after iteration {step}, checkpoint {path}. "
                f"Continue with: python {script} train --resume {run}")

    def __exit__(self, *exc):
        for sig, handler in self.previous.items():
            if handler is not None:
                signal.signal(sig, handler)
        return False


def checkpoint_files(folder):
    """Numbered checkpoints (000500.pt ...) in `folder`, oldest first (best.pt excluded)."""
    if not os.path.isdir(folder):
        return []
    names = [n for n in os.listdir(folder) if n.endswith(".pt") and n[:-3].isdigit()]
    return [os.path.join(folder, n) for n in sorted(names, key=lambda n: int(n[:-3]))]


def find_resume(path, out=None):
    """--resume PATH -> (run folder, checkpoint files to try, newest first).

    PATH is a run folder (its checkpoints/NNNNNN.pt, then the `checkpoint.pt` of the older 02 / 05
    layout) or a checkpoint file. A file inside RUN/checkpoints continues RUN; any other file
    continues into a new run folder `out` (--out), never into the file's own folder.
    """
    if os.path.isdir(path):
        files = checkpoint_files(os.path.join(path, "checkpoints"))[::-1]
        if os.path.isfile(os.path.join(path, "checkpoint.pt")):
            files.append(os.path.join(path, "checkpoint.pt"))
        return path, files
    if not os.path.isfile(path):
        raise ResumeError(f"{path}: no such run folder or checkpoint file")
    parent = os.path.dirname(os.path.abspath(path))
    if os.path.basename(parent) == "checkpoints":
        return os.path.dirname(parent), [path]
    if not out:
        raise ResumeError(f"--resume {path}: this file is not in a run's checkpoints/ folder, so the "
                          f"continued run needs its own folder: add --out NEW_RUN")
    if os.path.isdir(out) and [n for n in os.listdir(out) if n != runs.LOCK_NAME]:
        raise ResumeError(f"--out {out}: exists and is not empty; choose a new folder for the run "
                          f"continued from {path}")
    return out, [path]


def clean_stray_temp_files(run):
    """Remove what a write killed half-way, or refused its rename (a folder turned read-only), leaves
    behind: `.tmp-*` in RUN, RUN/checkpoints and RUN/samples (ops.runs.write_atomic's temporary
    files), the older layout's `checkpoint.pt.tmp`; finished files are never touched. Returns the
    removed paths."""
    stray = []
    for folder in (run, os.path.join(run, "checkpoints"), os.path.join(run, "samples")):
        if os.path.isdir(folder):
            stray += [os.path.join(folder, n) for n in sorted(os.listdir(folder)) if n.startswith(".tmp-")]
    if os.path.isfile(os.path.join(run, "checkpoint.pt.tmp")):
        stray.append(os.path.join(run, "checkpoint.pt.tmp"))
    removed = []
    for path in stray:
        try:
            os.remove(path)
            removed.append(path)
        except FileNotFoundError:  # another process of the same run (torchrun) removed it first
            pass
    return removed


def open_resume(path, out, load):
    """--resume PATH -> (run, file, checkpoint dict), loading with `load(file)`.

    Stray temporary files are removed first. When the newest checkpoint does not load (cut short
    by a kill, corrupt), the one before it is used, and the message says which. A run stopped
    before its first checkpoint gives (run, None, None): it starts again from step 0 with the
    settings in RUN/settings.json.
    """
    run, files = find_resume(path, out)
    for stray in clean_stray_temp_files(run) if os.path.isdir(run) else []:
        print(f"note: removed {stray}, left by an interrupted save", file=sys.stderr)
    failed = []
    for file in files:
        try:
            ckpt = load(file)
        except Exception as e:  # whatever keeps a file from loading: try the one before
            failed.append(f"{file} ({str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__})")
            continue
        if failed:
            print(f"warning: skipped {'; '.join(failed)}; resuming from {file}, the newest checkpoint "
                  f"that loads", file=sys.stderr)
        return run, file, ckpt
    if failed:
        raise ResumeError("no checkpoint of this run loads: " + "; ".join(failed))
    if not os.path.isfile(os.path.join(run, "settings.json")):
        raise ResumeError(f"{run}: nothing to resume (no checkpoints/NNNNNN.pt and no settings.json)")
    print(f"note: {run} has no checkpoint yet (stopped before the first one was written): it starts "
          f"again from step 0 with its settings.json", file=sys.stderr)
    return run, None, None


def read_run_settings(run, needed):
    """RUN/settings.json as a dict, for a run stopped before its first checkpoint. One line when the
    file does not read or is another script's (it lacks one of the `needed` keys): a run folder of
    another script is never trained into, nor its log cut."""
    path = os.path.join(run, "settings.json")
    try:
        with open(path, encoding="utf-8") as f:
            saved = json.load(f)
    except (OSError, ValueError) as e:
        raise ResumeError(f"{path}: cannot read the run's settings ({str(e).splitlines()[0]})") from None
    missing = [k for k in needed if not isinstance(saved, dict) or k not in saved]
    if missing:
        raise ResumeError(f"{path}: not the settings of a run of this script (no {missing[0]!r}); "
                          f"--resume takes a run folder that this script wrote")
    return saved


def cut_run_logs(run, step):
    """On resume from `step`: drop what a killed run logged after its checkpoint (lines of
    RUN/log.jsonl and rows of RUN/fid.csv with a larger step; fid.png is redrawn), so that the
    resumed run does not log those steps twice. step = -1 (a restart from step 0) drops them all."""

    def rewrite(path, lines):
        with open(path + ".tmp", "w", newline="") as f:
            f.writelines(lines)
        os.replace(path + ".tmp", path)

    log = os.path.join(run, "log.jsonl")
    if os.path.isfile(log):
        kept = []
        with open(log) as f:
            for line in f:
                try:
                    if json.loads(line).get("step", 0) <= step:
                        kept.append(line)
                except (ValueError, AttributeError):  # a line cut short by the kill
                    pass
        rewrite(log, kept)
    table = os.path.join(run, "fid.csv")
    if os.path.isfile(table):
        with open(table, newline="") as f:
            lines = f.readlines()
        header = next((i for i, line in enumerate(lines) if not line.startswith("#")), None)

        def keep(i, line):  # provenance comments, the header, rows up to `step` (step is column 1)
            if line.startswith("#") or i == header:
                return True
            try:
                return float(line.split(",", 1)[0]) <= step
            except ValueError:
                return False

        kept = [line for i, line in enumerate(lines) if keep(i, line)]
        if len(kept) < len(lines):
            rewrite(table, kept)
            try:
                from ops import fid_eval as fid_lib
                fid_lib.draw_fid_curve(fid_lib.read_fid_csv(table), os.path.join(run, "fid.png"))
            except ImportError:
                pass


def to_uint8(img):
    """[-1, 1] float -> uint8 HWC: round half up of (x + 1) * 127.5, as NVlabs generate.py."""
    return (img.permute(0, 2, 3, 1) * 127.5 + 128).clamp(0, 255).to(torch.uint8)


def refuse_existing_outputs(paths, overwrite):
    """The output rule of every sampling command: `paths` are all the files it is about to write.
    One that exists (a file the user owns) stops it before anything, a folder included, is written,
    unless --overwrite; with --overwrite exactly these files are replaced and nothing else is touched."""
    taken = [p for p in dict.fromkeys(paths) if os.path.lexists(p)]
    if taken and not overwrite:
        also = ", ".join(taken[1:3]) + (f" and {len(taken) - 3} more" if len(taken) > 3 else "")
        raise FileExistsError(f"{taken[0]} exists" + (f", as do {also}" if also else "")
                              + f" (pass --overwrite to replace {'them' if also else 'it'})")


def save_grid(img, path, nrow):
    """Tile [B, 3, H, W] images row by row, nrow images per row, into one PNG."""
    arr = to_uint8(img).cpu().numpy()  # [B, H, W, 3]
    b, h, w, _ = arr.shape
    rows = math.ceil(b / nrow)
    canvas = np.zeros((rows * h, nrow * w, 3), np.uint8)
    for i in range(b):
        r, c = divmod(i, nrow)
        canvas[r * h:(r + 1) * h, c * w:(c + 1) * w] = arr[i]
    runs.save_image(Image.fromarray(canvas), path)  # whole or not at all


def make_fid_evaluator(args, device):
    """ops.fid.Evaluator on the training folder, or None (one notice) when FID cannot run."""
    if not args.fid_every:
        return None
    evaluator_cls = getattr(fid_ops, "Evaluator", None)
    if evaluator_cls is None:
        print("notice: ops/fid.py is not available; training without FID", file=sys.stderr)
        return None
    missing = getattr(fid_ops, "InceptionWeightsMissing", FileNotFoundError)
    try:
        return evaluator_cls(args.data, inception=args.fid_inception, device=str(device),
                             batch_size=args.fid_batch, n_gen=args.fid_n,
                             cache_dir=os.path.join(args.out, "fid_cache"))  # real features, once
    except missing as e:
        print(f"notice: FID disabled, Inception weights unavailable ({e})", file=sys.stderr)
        return None


# ----------------------------------------------------------------------------------------------
# train(args) and its stages, in the order they run: the run's settings, set-up (data, networks,
# optimizers, resume), the run folder, the loop (one train_step per iteration), evaluation
# (samples, FID) and saving
# ----------------------------------------------------------------------------------------------
def resolve_train_args(args):
    """Fill preset and default values into a copy of the parsed flags (the parsed args stay as given)."""
    cfg = argparse.Namespace(**vars(args))
    for key, value in PRESETS.get(args.preset, {}).items() if args.preset else []:
        if getattr(cfg, key) is None:
            setattr(cfg, key, value)
    cfg.freeze_d = cfg.freeze_d or 0
    cfg.precision = getattr(cfg, "precision", None) or "fp32"
    cfg.mixing = bool(cfg.mixing)
    cfg.sched = bool(cfg.sched)
    cfg.loss = cfg.loss or (LOSS_FINETUNE if cfg.ckpt else LOSS_SCRATCH)
    cfg.iter = ITERATIONS if cfg.iter is None else cfg.iter
    cfg.fm_blocks = cfg.fm_blocks or (cfg.freeze_d if cfg.freeze_d else FM_BLOCKS)
    cfg.keep = RUN_DEFAULTS["keep"] if cfg.keep is None else cfg.keep
    if cfg.keep < 1:
        raise ValueError(f"--keep {cfg.keep}: must be at least 1")
    if not (cfg.r1_gamma >= 0 and math.isfinite(cfg.r1_gamma)):
        raise ValueError(f"--r1-gamma {cfg.r1_gamma}: must be a finite number >= 0")
    if cfg.data is None or cfg.out is None:
        raise ValueError("train needs --data DIR and --out RUN")
    step = size_to_step(cfg.size)
    if cfg.freeze_d and not cfg.ckpt:
        raise ValueError(f"--freeze-d {cfg.freeze_d} needs --ckpt: FreezeD freezes a pretrained discriminator")
    if (cfg.lambda_fm > 0 or cfg.lambda_l2_d > 0 or cfg.lambda_l2_g > 0) and not cfg.ckpt:
        raise ValueError("--lambda-fm / --lambda-l2-g / --lambda-l2-d need --ckpt (the source networks)")
    if cfg.ckpt and not 0 <= cfg.freeze_d <= step + 1:
        raise ValueError(f"--freeze-d {cfg.freeze_d}: the {cfg.size} px discriminator has {step + 1} blocks, "
                         f"so K must be in 0..{step + 1}")
    if cfg.lambda_fm > 0 and not 1 <= cfg.fm_blocks <= step + 1:
        raise ValueError(f"--fm-blocks {cfg.fm_blocks}: must be in 1..{step + 1} at {cfg.size} px")
    return cfg


def load_run_checkpoint(path):
    """One of this script's run checkpoints (it has `step` and `args`), for --resume."""
    ckpt = load_checkpoint(path)
    if "args" not in ckpt or "step" not in ckpt:
        raise CheckpointError(f"{path}: not a run checkpoint of this script (no 'step'/'args')")
    return ckpt


def resume_settings(args, stored):
    """The run's own settings with --resume, except the flags that may change: out, iter, device,
    quiet, keep (given with --resume)."""
    cfg = argparse.Namespace(**stored)
    defaults = vars(build_parser().parse_args(["train"]))
    ignored = [f"--{k.replace('_', '-')}" for k, v in vars(args).items()
               if k not in ("command", "resume", "out", "iter", "device", "quiet", "keep", "dry_run")
               and k in defaults and v != defaults[k] and v != stored.get(k)]
    if ignored:  # one rule with 03: the run's own settings win, and the user hears so
        print(f"note: {', '.join(ignored)} ignored with --resume (the run's settings are used)", file=sys.stderr)
    cfg.quiet = args.quiet
    cfg.iter = args.iter if args.iter is not None else cfg.iter
    cfg.device = args.device or cfg.device
    cfg.precision = args.precision or getattr(cfg, "precision", None) or "fp32"  # a run may switch precision
    cfg.keep = args.keep if args.keep is not None else getattr(cfg, "keep", RUN_DEFAULTS["keep"])
    return cfg


def train(args):
    """Fine-tune (with --ckpt) or train progressively; see the module docstring for the commands.
    The stages, in order:
        lock_existing_run  --resume RUN: RUN/.lock (one line if another trainer holds it), before anything
                           in RUN is touched; a new run's folder is locked right before it is first written
        train_settings   the flags with the preset filled in, or with --resume the run's own settings
        set_up           device, seeds, data, networks, optimizers; with --resume restored from the checkpoint
        open_run_folder  settings.json, samples/, checkpoints/, skipped.txt (cut_run_logs: a resumed run's
                         logs cut back)
        run_fid          FID at step 0 (with --fid-every)
        train_loop       one train_step per iteration; log lines, samples, FID and checkpoints when due

    A write the machine refuses (disk full, read-only or vanished folder: ops.runs.is_write_failure)
    stops the run with one line naming the file and the errno; what was written before stays, and
    `--resume RUN` continues once the disk is back.

    Run folder (as 03_stylegan2_ada.py): settings.json, log.jsonl, checkpoints/NNNNNN.pt (the newest
    --keep), samples/NNNNNN.png, and with FID fid.csv / fid.png. `--resume RUN` continues RUN (a
    bare `--resume` continues --out); `--resume FILE` continues a checkpoint file, in RUN when the
    file is in RUN/checkpoints, else in a new --out.
    """
    dry = getattr(args, "dry_run", False)
    lock = None if dry else lock_existing_run(args)  # before open_resume and cut_run_logs touch RUN
    try:
        cfg, resume, ckpt_file, restart = train_settings(args)
        if dry:
            print(json.dumps(vars(cfg), indent=1))
            return None
        run = set_up(cfg, resume, ckpt_file)
        if lock is None:
            lock = runs.RunLock(cfg.out)  # a new run folder (or a run continued into a new --out): ours now
        try:
            open_run_folder(cfg, run.data.skipped)
            if resume is not None or restart:  # what a killed run logged after its checkpoint goes (a restart: all)
                cut_run_logs(cfg.out, run.iteration if resume is not None else -1)
            run.evaluator = make_fid_evaluator(cfg, run.device)
            if run.evaluator is not None and run.iteration == 0:
                print(f"FID at step 0: {run_fid(run)['fid']:.2f}", file=sys.stderr)
            saved = train_loop(run)
        except OSError as e:
            if runs.is_write_failure(e):  # disk full, read-only, vanished: one line, the run resumes later
                raise SystemExit(runs.write_failure(e, cfg.out, os.path.basename(__file__))) from None
            raise
        if run.data.skipped:
            print(f"skipped {len(run.data.skipped)} unreadable image(s) of {cfg.data}, listed in "
                  f"{os.path.join(cfg.out, 'skipped.txt')}", file=sys.stderr)
        return saved
    finally:
        if lock is not None:
            lock.release()


def lock_existing_run(args):
    """--resume RUN of this script: its lock (one line if another trainer holds it), taken before
    the stray temporary files go and the logs are cut. Nothing is created in a folder that is not
    this script's run (its settings.json is checked first); a run continued into a new --out, or a
    new run, is locked right before its folder is first written."""
    where = args.out if args.resume is True else args.resume
    if not where:
        return None  # no --resume (or one without a folder: train_settings says so)
    run = find_resume(where, None if args.resume is True else args.out)[0]
    if not os.path.isfile(os.path.join(run, "settings.json")):
        return None
    read_run_settings(run, ("code_dim", "init_size"))  # another script's run: one line, untouched
    return runs.RunLock(run)


# ---- stage 1: the run's settings ----
def train_settings(args):
    """(cfg, resume, ckpt_file, restart): the settings of this run. A new run: the flags with the
    preset and the defaults filled in (its --out must be new or empty). --resume: the run's own
    settings, its newest checkpoint that loads (`resume`, the dict, read from `ckpt_file`), or, for a
    run stopped before its first checkpoint, its settings.json and restart=True (step 0)."""
    resume = ckpt_file = None
    restart = False
    if args.resume:
        where = args.out if args.resume is True else args.resume
        if not where:
            raise ResumeError("--resume needs a run folder: --resume RUN (or --out RUN --resume)")
        run, ckpt_file, resume = open_resume(where, None if args.resume is True else args.out,
                                             load_run_checkpoint)
        if resume is not None:
            cfg = resume_settings(args, resume["args"])
        else:
            cfg = resume_settings(args, read_run_settings(run, ("code_dim", "init_size")))
            restart = True
        cfg.out = run
    else:
        cfg = resolve_train_args(args)
        if os.path.isdir(cfg.out) and [n for n in os.listdir(cfg.out) if n != runs.LOCK_NAME]:
            raise ValueError(f"{cfg.out}: run folder exists and is not empty; continue it with "
                             f"--resume {cfg.out} or choose another --out")
    if cfg.log_every < 1:  # an interval (x % 0 fails); --sample-every / --ckpt-every 0 mean off
        raise ValueError(f"--log-every {cfg.log_every}: must be at least 1")
    return cfg, resume, ckpt_file, restart


# ---- stage 2: set-up ----
@dataclasses.dataclass
class RunState:
    """What the training loop reads and a run checkpoint holds (set_up builds it, restore refills it)."""
    cfg: argparse.Namespace          # the run's settings (settings.json; 'args' in each checkpoint)
    device: torch.device
    data: ImageFolder                # the training images, uint8, resized per resolution
    g: nn.Module                     # G (StyledGenerator), trained
    d: nn.Module                     # D (Discriminator), trained where FreezeD lets it
    g_ema: nn.Module                 # G_running, the EMA of G: samples, FID, generate
    g_source: nn.Module              # frozen source G for L2-SP (else None)
    d_source: nn.Module              # frozen source D for L2-SP / feature matching (else None)
    g_opt: torch.optim.Optimizer
    d_opt: torch.optim.Optimizer
    sampler: BatchSampler            # the order of the real images (its own RNG)
    sample_z: torch.Tensor           # [n_sample, code_dim]: the latents of every sample grid
    arch: dict                       # code_dim, n_mlp, channels, from_rgb_activate
    progress: dict                   # {"step": progressive step s, "used_sample": images seen at s}
    init_step: int                   # the first progressive step of the run (nothing to fade from there)
    iteration: int = 0               # iterations done ('step' in the checkpoint)
    evaluator: object = None         # ops.fid Evaluator, or None without FID
    trainable_d: set = None          # FreezeD's trainable D parameters at progressive step trainable_at
    trainable_at: int = None

    @property
    def finetune(self):
        return self.cfg.ckpt is not None

    @property
    def max_step(self):
        return size_to_step(self.cfg.size)


def set_up(cfg, resume, ckpt_file):
    """Device, seeds, data, networks and optimizers of the run. With --resume (`resume`: the
    checkpoint dict read from `ckpt_file`) everything the loop reads comes back from it."""
    device = resolve_device(cfg.device)
    torch.manual_seed(cfg.seed)
    random.seed(cfg.seed)
    data = ImageFolder(cfg.data, cfg.size)  # bad data fails here, before the run folder is made
    g, d, g_ema, g_source, d_source = build_networks(cfg, resume, ckpt_file)
    arch = dict(code_dim=g.code_dim, n_mlp=len(g.style) // 2, channels=list(g.channels),
                from_rgb_activate=d.from_rgb_activate)
    g, d, g_ema = g.to(device), d.to(device), g_ema.eval().to(device)
    for net in (g_source, d_source):
        if net is not None:
            net.to(device).eval().requires_grad_(False)
    g_opt, d_opt = make_optimizers(g, d, cfg.lr)
    sample_z = torch.randn(cfg.n_sample, g.code_dim, generator=torch.Generator().manual_seed(cfg.seed + 1))
    init_step = (size_to_step(cfg.size) if cfg.ckpt is not None
                 else size_to_step(min(cfg.init_size, cfg.size), "--init-size"))
    run = RunState(cfg, device, data, g, d, g_ema, g_source, d_source, g_opt, d_opt,
                   sampler=BatchSampler(len(data), cfg.seed), sample_z=sample_z, arch=arch,
                   progress={"step": init_step, "used_sample": 0}, init_step=init_step)
    if resume is not None:
        restore(run, resume)
        print(f"resumed {ckpt_file} at step {run.iteration}", file=sys.stderr)
    return run


def build_networks(cfg, resume, ckpt_file):
    """(G, D, G_running, G_source, D_source): from our own run checkpoint (--resume), from the source
    checkpoint (--ckpt: fine-tuning; the sources only where L2-SP or FM needs them), or new (from
    scratch, G_running a copy of G)."""
    g_source = d_source = None
    if resume is not None:
        arch = resume["arch"]
        g = StyledGenerator(arch["code_dim"], arch["n_mlp"], arch["channels"])
        d = Discriminator(arch["channels"], arch["from_rgb_activate"])
        g_ema = StyledGenerator(arch["code_dim"], arch["n_mlp"], arch["channels"])
        load_strict(g, resume["generator"], ckpt_file, "generator")
        load_strict(d, resume["discriminator"], ckpt_file, "discriminator")
        load_strict(g_ema, resume["g_running"], ckpt_file, "g_running")
        if "g_source" in resume:
            g_source = build_generator_from(resume["g_source"], ckpt_file)
        if "d_source" in resume:
            d_source = build_discriminator_from(resume["d_source"], ckpt_file)
    elif cfg.ckpt is not None:
        src = load_checkpoint(cfg.ckpt)
        g_sd = src.get("generator", src.get("g_running"))
        g = build_generator_from(g_sd, cfg.ckpt)
        g_ema = build_generator_from(src.get("g_running", g_sd), cfg.ckpt)
        if "discriminator" in src:
            d = build_discriminator_from(src["discriminator"], cfg.ckpt)
        else:
            print(f"note: {cfg.ckpt} holds no discriminator; D starts from random weights", file=sys.stderr)
            d = Discriminator(g.channels)
        if cfg.lambda_l2_g > 0:
            g_source = build_generator_from(g_sd, cfg.ckpt)
        if cfg.lambda_fm > 0 or cfg.lambda_l2_d > 0:
            d_source = build_discriminator_from(d.state_dict(), cfg.ckpt)
    else:
        channels = scaled_channels(cfg.channel_max)
        g = StyledGenerator(cfg.code_dim, N_MLP, channels)
        d = Discriminator(channels, from_rgb_activate=True)
        g_ema = StyledGenerator(cfg.code_dim, N_MLP, channels)
        g_ema.load_state_dict(g.state_dict())
    return g, d, g_ema, g_source, d_source


def restore(run, ckpt):
    """--resume: what the loop reads, from a run checkpoint (save_run_checkpoint writes it): the
    optimizers, the data order, the progressive progress, the iteration, the sample latents and,
    last, the RNG states. The networks are loaded by build_networks."""
    run.g_opt.load_state_dict(ckpt["g_optimizer"])
    run.d_opt.load_state_dict(ckpt["d_optimizer"])
    run.sampler.load_state_dict(ckpt["sampler"])
    run.progress = dict(ckpt["progress"])
    run.init_step = int(ckpt["init_step"])
    run.iteration = int(ckpt["step"])
    run.sample_z = ckpt["sample_z"]
    rng = ckpt["rng"]
    torch.set_rng_state(rng["torch"])
    if run.device.type == "cuda" and "cuda" in rng:
        torch.cuda.set_rng_state(rng["cuda"], run.device)
    random.setstate((rng["python"][0], tuple(rng["python"][1]), rng["python"][2]))


def save_run_checkpoint(run):
    """RUN/checkpoints/NNNNNN.pt (atomic): rosinality's keys {generator, discriminator, g_optimizer,
    d_optimizer, g_running} and what `restore` reads; the newest --keep are kept. Returns its path."""
    state = {"generator": run.g.state_dict(), "discriminator": run.d.state_dict(),
             "g_optimizer": run.g_opt.state_dict(), "d_optimizer": run.d_opt.state_dict(),
             "g_running": run.g_ema.state_dict(), "step": run.iteration, "args": vars(run.cfg),
             "arch": run.arch, "progress": dict(run.progress), "init_step": run.init_step,
             "sampler": run.sampler.state_dict(), "sample_z": run.sample_z,
             "rng": {"torch": torch.get_rng_state(), "python": list(random.getstate())}}
    if run.device.type == "cuda":
        state["rng"]["cuda"] = torch.cuda.get_rng_state(run.device)
    if run.g_source is not None:
        state["g_source"] = run.g_source.state_dict()
    if run.d_source is not None:
        state["d_source"] = run.d_source.state_dict()
    folder = os.path.join(run.cfg.out, "checkpoints")
    path = os.path.join(folder, f"{run.iteration:06d}.pt")
    runs.sync(os.path.join(run.cfg.out, "log.jsonl"))  # the log lines up to this step are on the disk before it
    save_checkpoint(path, state)
    for old in checkpoint_files(folder)[:-run.cfg.keep]:  # keep the newest --keep
        os.remove(old)
    return path


# ---- stage 3: the run folder ----
def open_run_folder(cfg, skipped=()):
    """RUN/samples, RUN/checkpoints and RUN/settings.json (written once, at the run's first start),
    made only once the data, the checkpoints and the settings have all been read; RUN/skipped.txt
    lists the data files that could not be read, one per line."""
    for sub in ("samples", "checkpoints"):
        os.makedirs(os.path.join(cfg.out, sub), exist_ok=True)
    if not os.path.isfile(os.path.join(cfg.out, "settings.json")):
        runs.write_atomic(os.path.join(cfg.out, "settings.json"), lambda f: json.dump(vars(cfg), f, indent=1),
                          mode="w")
    if skipped:
        runs.write_atomic(os.path.join(cfg.out, "skipped.txt"), lambda f: f.write("\n".join(skipped) + "\n"),
                          mode="w")


# ---- stage 4: the loop ----
def train_loop(run):
    """Iterations up to --iter, each: `iterate` (the schedule, one batch, train_step), its log line,
    the evaluations that are due, and a checkpoint when due. Ctrl-C or SIGTERM: the iteration under
    way finishes and is saved, and the run exits with 130 or 143; a second Ctrl-C stops at once,
    without saving that iteration. Returns the path of the last checkpoint."""
    cfg = run.cfg
    log = os.path.join(cfg.out, "log.jsonl")
    pbar = tqdm(total=cfg.iter, initial=run.iteration, dynamic_ncols=True, disable=cfg.quiet)
    start = (time.time(), run.iteration)  # for img_per_s
    saved = None  # the checkpoint of iteration run.iteration, once written
    with _StopRequest() as stop:
        try:
            while run.iteration < cfg.iter and not stop.requested:
                stats = iterate_or_say_memory(run)  # the schedule, one batch of real images, train_step
                write_log(run, stats, log, pbar, start)
                evaluate(run, pbar)  # a sample grid, FID: when due
                if checkpoint_due(run, stop.requested):
                    saved = save_run_checkpoint(run)
        except KeyboardInterrupt:  # a second Ctrl-C, during an iteration: stop without saving it
            pbar.close()
            print(f"\nSIGINT: interrupted during iteration {run.iteration + 1}, not saved. Continue from the "
                  f"last checkpoint with: python {os.path.basename(__file__)} train --resume {cfg.out}",
                  file=sys.stderr)
            raise SystemExit(130) from None
        finally:
            pbar.close()
    if saved is None or not saved.endswith(f"{run.iteration:06d}.pt"):  # a signal after this step's save check
        saved = save_run_checkpoint(run)
    if stop.requested:
        print("\n" + stop.message(run.iteration, saved, os.path.basename(__file__), cfg.out), file=sys.stderr)
        raise SystemExit(stop.exit_code)
    return saved


def iterate(run):
    """One iteration: the schedule at this point (progressive growing, fade-in alpha, batch size, lr),
    FreezeD's trainable part of D at this resolution, one batch of real images, then train_step
    (its forwards in bf16 with --precision bf16). Returns the log line's values."""
    cfg, progress = run.cfg, run.progress
    if not run.finetune:
        grow(progress, cfg.phase, run.max_step)
    s = progress["step"]
    res = 4 * 2 ** s
    alpha, batch = current_alpha(run), batch_for(cfg, res)
    set_lr(run.g_opt, lr_for(cfg, res))
    set_lr(run.d_opt, lr_for(cfg, res))
    if run.trainable_at != s:
        run.trainable_d, run.trainable_at = freezed_trainable(run.d, s, cfg.freeze_d), s
    real = run.sampler.next(run.data.at(res), batch).to(run.device)  # [B, 3, res, res] in [-1, 1]
    progress["used_sample"] += batch
    with forward_precision(cfg.precision, run.device, run.g, run.d, run.d_source):
        stats = train_step(run.g, run.d, run.g_ema, run.g_opt, run.d_opt, real, s, alpha, cfg, run.trainable_d,
                           run.g_source, run.d_source)
    run.iteration += 1
    return {"step": run.iteration, "res": res, "alpha": round(alpha, 5), **stats}


# CUDA's out-of-memory error (torch.OutOfMemoryError in newer torch)
OUT_OF_MEMORY = runs.OUT_OF_MEMORY


def iterate_or_say_memory(run):
    """`iterate`, with out of memory as one line naming what to lower: --batch (the schedule's batch
    at this resolution unless --batch is given), --size, and on a GPU the bf16 forwards (which
    --resume takes). Nothing is saved: an iteration cut short may have stepped one optimizer; the
    checkpoints written so far (the last finished step's among them) stay as they are."""
    try:
        return iterate(run)
    except (MemoryError, RuntimeError) as e:
        memory = runs.out_of_memory(e)
        if memory is None:
            raise
        cfg, res = run.cfg, 4 * 2 ** run.progress["step"]
        batch = batch_for(cfg, res)
        source = "" if cfg.batch else f", the {'--sched ' if cfg.sched else ''}schedule's at {res} px"
        lower = [f"--batch {max(1, batch // 2)} (now {batch}{source})"] if batch > 1 else []
        lower.append(f"a smaller --size (now {cfg.size})")
        also = (f"; or continue in less memory with: python {os.path.basename(__file__)} train --resume "
                f"{cfg.out} --precision bf16" if memory[0] == "GPU" and cfg.precision != "bf16" else "")
        kept = "; the checkpoints written so far are intact" if checkpoint_files(
            os.path.join(cfg.out, "checkpoints")) else ""
        raise SystemExit(f"error: out of {memory[0]} memory in iteration {run.iteration + 1} ({memory[1]}); "
                         f"start a new run with {' or '.join(lower)}{also}{kept}") from None


def current_alpha(run):
    """The fade-in alpha now: fading only from scratch, after the first resolution."""
    fading = not run.finetune and run.progress["step"] != run.init_step
    return fade_in_alpha(run.progress, run.cfg.phase, fading)


@contextlib.contextmanager
def forward_precision(precision, device, *nets):
    """--precision bf16, the fast path beside the fp32 train_step: inside, every forward of `nets`
    (G, D, the source D) runs under bf16 autocast (convolutions and matmuls in bf16, reductions and
    norms in fp32) and returns fp32, so that train_step's losses, the gradients with respect to the
    images (R1, WGAN-GP), the optimizer steps and the EMA stay fp32, as do weights, optimizer state
    and checkpoints. About 2x on GPUs with bf16 tensor cores (Ampere, Hopper). fp32: nothing changes."""
    nets = [net for net in nets if net is not None]
    if precision != "bf16":
        yield
        return

    def in_bf16(forward):
        def forward_bf16(*args, **kwargs):
            with torch.autocast(device.type, dtype=torch.bfloat16):
                out = forward(*args, **kwargs)
            return out.float()
        return forward_bf16

    for net in nets:
        net.forward = in_bf16(net.forward)  # an instance attribute: it shadows the class's forward
    try:
        yield
    finally:
        for net in nets:
            del net.forward  # the class's forward again


def write_log(run, stats, log, pbar, start):
    """The progress bar after every iteration; a line of `log` (RUN/log.jsonl) every --log-every and
    at the last, with the seconds and images/s since this start of the run (start = (time, iteration)):
    one write of one whole line (ops.runs.append_line), synced to the disk at each checkpoint."""
    cfg, it = run.cfg, run.iteration
    pbar.update(1)
    pbar.set_postfix(res=stats["res"], D=f"{stats['loss_d']:.3f}", G=f"{stats['loss_g']:.3f}", refresh=False)
    if it % cfg.log_every == 0 or it == cfg.iter:
        stats["sec"] = round(time.time() - start[0], 2)
        stats["img_per_s"] = round((it - start[1]) * batch_for(cfg, stats["res"]) / max(stats["sec"], 1e-9), 2)
        runs.append_line(log, json.dumps(stats))


def checkpoint_due(run, stopping):
    """A checkpoint every --ckpt-every steps (0: none between), at the last step, and when a signal asks to stop."""
    cfg, it = run.cfg, run.iteration
    return bool(cfg.ckpt_every and it % cfg.ckpt_every == 0) or it == cfg.iter or stopping


# ---- stage 5: evaluation ----
def evaluate(run, pbar):
    """The evaluations due after this iteration: a sample grid every --sample-every (and at the
    last), FID every --fid-every."""
    cfg, it = run.cfg, run.iteration
    if cfg.sample_every and (it % cfg.sample_every == 0 or it == cfg.iter):
        write_samples(run)
    if run.evaluator is not None and it % cfg.fid_every == 0:
        pbar.write(f"step {it}: FID {run_fid(run)['fid']:.2f}")  # run_fid adds it to log.jsonl


@torch.no_grad()
def write_samples(run):
    """RUN/samples/NNNNNN.png: G_running on the run's fixed latents and noise."""
    s, g_ema = run.progress["step"], run.g_ema
    noise = g_ema.make_noise(len(run.sample_z), s, "cpu", torch.Generator().manual_seed(run.cfg.seed + 2))
    img = g_ema(run.sample_z.to(run.device), [n.to(run.device) for n in noise], step=s, alpha=current_alpha(run))
    save_grid(img, os.path.join(run.cfg.out, "samples", f"{run.iteration:06d}.png"),
              nrow=int(math.ceil(len(img) ** 0.5)))


def run_fid(run):
    """FID and KID of G_running against the training folder, from the same latents at every
    evaluation: a row of fid.csv (and fid.png) and a line of log.jsonl. Returns ops.fid's result."""
    cfg, g_ema, device, it = run.cfg, run.g_ema, run.device, run.iteration
    s, a = run.progress["step"], current_alpha(run)
    gen = torch.Generator(device=device).manual_seed(cfg.seed + 3)

    @torch.no_grad()
    def gen_fn(batch):
        z = torch.randn(batch, g_ema.code_dim, device=device, generator=gen)
        return g_ema(z, g_ema.make_noise(batch, s, device, gen), step=s, alpha=a).clamp(-1, 1)

    result = run.evaluator.evaluate(gen_fn, n_gen=cfg.fid_n)
    from ops.fid_eval import record_fid  # fid.csv (with its provenance header) and fid.png: FID and KID
    # kimg: thousands of real images shown; exact at one batch size (fine-tuning, or --batch), counted
    # at the current resolution's batch from scratch with --sched (its batch changes with resolution)
    kimg = it * batch_for(cfg, 4 * 2 ** s) / 1000
    record_fid(cfg.out, it, result, getattr(run.evaluator, "provenance", None), kimg=kimg)
    runs.append_line(os.path.join(cfg.out, "log.jsonl"),  # the copy count beside the losses
                     json.dumps({"step": it, "fid": float(result["fid"]), "kid_mean": float(result["kid_mean"]),
                                 "kid_std": float(result["kid_std"]), "copies": int(result["copies"])}))
    return result


# ----------------------------------------------------------------------------------------------
# Sampling and the style-mixing figure
# ----------------------------------------------------------------------------------------------
TRUNC_ROUNDS, TRUNC_BATCH = 10, 1024  # mean W over 10 x 1024 samples (rosinality generate.py)
# the style-mixing bands of StyleGAN Fig. 3: blocks at 4-8 px (coarse), 16-32 px (middle), 64 px and up (fine)
MIX_LEVELS = (("coarse", 0, 1), ("middle", 2, 3), ("fine", 4, N_BLOCKS - 1))


def parse_seeds(text):
    """'0-7' -> [0..7]; '1,5,9-11' -> [1, 5, 9, 10, 11]."""
    seeds = []
    try:
        for part in text.split(","):
            if "-" in part.strip()[1:]:
                a, b = part.split("-", 1)
                seeds += list(range(int(a), int(b) + 1))
            elif part.strip():
                seeds.append(int(part))
    except ValueError:
        raise ValueError(f"seeds {text!r}: expected a list like 0-7 or 1,5,9-11") from None
    if not seeds:
        raise ValueError(f"seeds {text!r}: no seed given")
    bad = [s for s in seeds if not 0 <= s <= 2 ** 32 - 1]
    if bad:
        raise ValueError(f"seeds {text!r}: {bad[0]} is outside 0..{2 ** 32 - 1} (numpy's RandomState seeds)")
    return seeds


def load_sampling_generator(path, device):
    """The EMA generator (g_running) of a checkpoint, else its `generator`. A run folder gives its
    newest checkpoint."""
    if os.path.isdir(path):
        files = find_resume(path)[1]
        if not files:
            raise CheckpointError(f"{path}: a folder without checkpoints/NNNNNN.pt or checkpoint.pt")
        path = files[0]
    ckpt = load_checkpoint(path)
    sd = ckpt["g_running"] if "g_running" in ckpt else ckpt["generator"]
    return build_generator_from(sd, path).eval().to(device), ckpt


def seed_z(seed, code_dim):
    """z = np.random.RandomState(seed).randn(1, code_dim) (the same latents as 03's generate)."""
    return torch.from_numpy(np.random.RandomState(seed).randn(1, code_dim)).float()


def seed_noise(g, seed, step, mode, batch=1):
    """Per-block noise maps: drawn from torch.Generator().manual_seed(seed) ('random') or zeros ('none')."""
    noise = g.make_noise(batch, step, "cpu", torch.Generator().manual_seed(seed))
    return [torch.zeros_like(n) for n in noise] if mode == "none" else noise


def mean_w(g, device):
    """Mean of W over 10 x 1024 z's (rosinality generate.py), from a fixed torch generator."""
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        return sum(g.mean_style(torch.randn(TRUNC_BATCH, g.code_dim, generator=gen).to(device))
                   for _ in range(TRUNC_ROUNDS)) / TRUNC_ROUNDS


def _check_size(args, ckpt, path):
    """--size as a progression step; without --size, the size the checkpoint was trained at (else 256)."""
    trained = ckpt.get("args", {}).get("size") if isinstance(ckpt.get("args"), dict) else None
    if args.size is None:
        args.size = trained if isinstance(trained, int) else 256
    step = size_to_step(args.size)
    if trained and args.size > trained:
        print(f"note: {path} was trained up to {trained} px; blocks above that are untrained", file=sys.stderr)
    return step


@torch.no_grad()
def generate(args):
    """One PNG per seed, `seed0000.png`, ..., from the EMA generator at --size."""
    device = resolve_device(args.device)
    if args.size is not None:
        size_to_step(args.size)  # a bad --size fails before the checkpoint is read
    seeds = parse_seeds(args.seeds)
    paths = [os.path.join(args.out, f"seed{seed:04d}.png") for seed in seeds]
    refuse_existing_outputs(paths, args.overwrite)  # before the folder is made
    g, ckpt = load_sampling_generator(args.ckpt, device)
    step = _check_size(args, ckpt, args.ckpt)
    os.makedirs(args.out, exist_ok=True)
    mean = mean_w(g, device) if args.truncation != 1 else None
    for seed, path in zip(seeds, paths):
        z = seed_z(seed, g.code_dim).to(device)
        noise = [n.to(device) for n in seed_noise(g, seed, step, args.noise_mode)]
        img = g(z, noise, step=step, alpha=1, mean_style=mean, style_weight=args.truncation)  # [1, 3, S, S]
        Image.fromarray(to_uint8(img)[0].cpu().numpy()).save(path)
    print(f"wrote {len(paths)} images to {args.out}")
    return paths


@torch.no_grad()
def mix(args):
    """Style-mixing figure (StyleGAN Fig. 3). Top row: the --cols images (source A); left column:
    the --rows images (source B). Then three bands of rows: each cell takes the styles of blocks
    coarse (4-8 px), middle (16-32 px) or fine (64 px and up) from its row's B and all other styles
    from its column's A. One shared noise draw for every cell."""
    device = resolve_device(args.device)
    if args.size is not None:
        size_to_step(args.size)  # a bad --size fails before the checkpoint is read
    g, ckpt = load_sampling_generator(args.ckpt, device)
    step = _check_size(args, ckpt, args.ckpt)
    rows, cols = parse_seeds(args.rows), parse_seeds(args.cols)
    refuse_existing_outputs([args.out], args.overwrite)  # never over a file the user owns
    if os.path.splitext(args.out)[1].lower() not in Image.registered_extensions():
        raise ValueError(f"--out {args.out}: not an image file name (e.g. mix.png)")
    mean = mean_w(g, device) if args.truncation != 1 else None
    z_a = torch.cat([seed_z(s, g.code_dim) for s in cols]).to(device)  # [C, code_dim]
    z_b = torch.cat([seed_z(s, g.code_dim) for s in rows]).to(device)  # [R, code_dim]
    base_noise = seed_noise(g, 0, step, args.noise_mode)

    def render(z, mixing_range=(-1, -1)):
        n = z[0].shape[0] if isinstance(z, list) else z.shape[0]
        noise = [x.expand(n, -1, -1, -1).to(device) for x in base_noise]
        return g(z, noise, step=step, alpha=1, mean_style=mean, style_weight=args.truncation,
                 mixing_range=mixing_range)

    size = 4 * 2 ** step
    levels = [(name, lo, min(hi, step)) for name, lo, hi in MIX_LEVELS if lo <= step]
    canvas = np.full(((1 + len(levels) * len(rows)) * size, (1 + len(cols)) * size, 3), 255, np.uint8)

    def put(r, c, img):
        canvas[r * size:(r + 1) * size, c * size:(c + 1) * size] = to_uint8(img)[0].cpu().numpy()

    for j, img in enumerate(render(z_a).split(1)):
        put(0, 1 + j, img)
    row_imgs = render(z_b).split(1)
    for band, (name, lo, hi) in enumerate(levels):
        for i in range(len(rows)):
            r = 1 + band * len(rows) + i
            put(r, 0, row_imgs[i])
            mixed = render([z_a, z_b[i:i + 1].expand(len(cols), -1)], mixing_range=(lo, hi))
            for j, img in enumerate(mixed.split(1)):
                put(r, 1 + j, img)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    Image.fromarray(canvas).save(args.out)
    print(f"wrote {args.out}: top row = cols {cols}; left column = rows {rows}; bands = "
          + ", ".join(f"{n} (blocks {lo}-{hi} from the row)" for n, lo, hi in levels))
    return args.out


# ----------------------------------------------------------------------------------------------
# CLI
# ----------------------------------------------------------------------------------------------
def build_parser():
    p = argparse.ArgumentParser(description="StyleGAN v1 + FreezeD (rosinality / sangwoomo layout)")
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="fine-tune from --ckpt (FreezeD) or train progressively")
    t.add_argument("--data", help="folder of training images")
    t.add_argument("--size", type=int, default=SIZE, help=f"training (final) resolution (FreezeD: {SIZE})")
    t.add_argument("--out", help="run folder: settings.json, log.jsonl, checkpoints/, samples/, fid.csv, fid.png")
    t.add_argument("--ckpt", help="source checkpoint to fine-tune (rosinality .model dict or g_running file)")
    t.add_argument("--resume", nargs="?", const=True, default=False, metavar="RUN",
                   help="continue RUN (a run folder, or a checkpoint file inside RUN/checkpoints) with its "
                        "saved settings; alone: the run in --out. A checkpoint file elsewhere continues "
                        "into a new --out")
    t.add_argument("--preset", choices=sorted(PRESETS), help="fills unset flags with a FreezeD paper row")
    t.add_argument("--freeze-d", type=int, default=None,
                   help="K input-side D blocks (+ from_rgb) frozen; FreezeD feature_loc = step+1-K "
                        f"(256 px: 7-K; FreezeD README = {FREEZE_D_PAPER}); 0 = plain fine-tuning (default 0)")
    t.add_argument("--loss", choices=["r1", "wgan-gp"], default=None,
                   help=f"default {LOSS_FINETUNE} with --ckpt (FreezeD), {LOSS_SCRATCH} from scratch (rosinality)")
    t.add_argument("--r1-gamma", type=float, default=R1_GAMMA,
                   help=f"R1 weight gamma with --loss r1 (rosinality/FreezeD: {R1_GAMMA:g}, tuned for 256-1024 px; "
                        "NVlabs' rule 0.0002 res^2 / batch gives about 0.03 at 32 px and batch 8)")
    t.add_argument("--mixing", action=argparse.BooleanOptionalAction, default=None,
                   help=f"style mixing regularization, p {MIXING_PROB} (default off unless a preset sets it)")
    t.add_argument("--sched", action=argparse.BooleanOptionalAction, default=None,
                   help=f"lr/batch per resolution (lr {SCHED_LR[256]} at 256 px; batch {SCHED_BATCH_FINETUNE[256]} "
                        f"fine-tuning, {SCHED_BATCH_PROGRESSIVE[256]} scratch)")
    t.add_argument("--lr", type=float, default=LR, help=f"Adam lr without --sched (default {LR})")
    t.add_argument("--batch", type=int, default=None, help="batch size (default from the schedule)")
    t.add_argument("--iter", type=int, default=None, help=f"iterations (FreezeD {ITERATIONS}, the default)")
    t.add_argument("--phase", type=int, default=PHASE_IMAGES,
                   help=f"images per fade-in / stabilise phase (scratch; rosinality {PHASE_IMAGES})")
    t.add_argument("--init-size", type=int, default=INIT_SIZE,
                   help=f"first resolution when training from scratch (rosinality {INIT_SIZE})")
    t.add_argument("--lambda-fm", type=float, default=LAMBDA_FM,
                   help=f"feature matching to the source D (FreezeD code: {LAMBDA_FM:g})")
    t.add_argument("--fm-blocks", type=int, default=None,
                   help=f"FM after this many input-side D blocks (default --freeze-d, else {FM_BLOCKS} = "
                        f"feature_loc 3 at 256 px)")
    t.add_argument("--lambda-l2-g", type=float, default=LAMBDA_L2_G,
                   help=f"L2-SP weight on G (FreezeD code: {LAMBDA_L2_G:g})")
    t.add_argument("--lambda-l2-d", type=float, default=LAMBDA_L2_D,
                   help=f"L2-SP weight on D (FreezeD code: {LAMBDA_L2_D:g})")
    t.add_argument("--channel-max", type=int, default=max(CHANNELS),
                   help=f"cap on block widths (scratch only; {max(CHANNELS)} = paper)")
    t.add_argument("--code-dim", type=int, default=CODE_DIM, help=f"z / w size (scratch only; {CODE_DIM} = paper)")
    t.add_argument("--ema-decay", type=float, default=EMA_DECAY,
                   help=f"G_running EMA decay per step (rosinality/FreezeD: {EMA_DECAY})")
    t.add_argument("--seed", type=int, default=RUN_DEFAULTS["seed"], help=f"random seed ({RUN_DEFAULTS['seed']})")
    t.add_argument("--device", default=RUN_DEFAULTS["device"], help=DEVICE_HELP)
    t.add_argument("--precision", choices=["fp32", "bf16"], default=RUN_DEFAULTS["precision"],
                   help="fp32 (default: FreezeD's arithmetic) or bf16 autocast for G and D forwards, about "
                        "2x faster on GPUs with bf16 tensor cores (Ampere, Hopper; slower on CPU); weights, "
                        "optimizer, EMA and checkpoints stay fp32, so runs resume in either precision")
    t.add_argument("--n-sample", type=int, default=RUN_DEFAULTS["n_sample"],
                   help=f"images in each sample grid ({RUN_DEFAULTS['n_sample']})")
    t.add_argument("--sample-every", type=int, default=RUN_DEFAULTS["sample_every"],
                   help=f"steps between sample grids in RUN/samples, 0 = off ({RUN_DEFAULTS['sample_every']})")
    t.add_argument("--log-every", type=int, default=RUN_DEFAULTS["log_every"],
                   help=f"steps between log.jsonl lines ({RUN_DEFAULTS['log_every']})")
    t.add_argument("--ckpt-every", type=int, default=RUN_DEFAULTS["ckpt_every"],
                   help=f"steps between checkpoints; the last step is always saved ({RUN_DEFAULTS['ckpt_every']})")
    t.add_argument("--keep", type=int, default=None,
                   help=f"newest checkpoints kept in RUN/checkpoints (default {RUN_DEFAULTS['keep']})")
    t.add_argument("--fid-every", type=int, default=RUN_DEFAULTS["fid_every"],
                   help=f"FID every N steps (FreezeD {RUN_DEFAULTS['fid_every']}); 0 = off")
    t.add_argument("--fid-n", type=int, default=RUN_DEFAULTS["fid_n"],
                   help=f"generated images per FID (FreezeD {RUN_DEFAULTS['fid_n']})")
    t.add_argument("--fid-batch", type=int, default=RUN_DEFAULTS["fid_batch"],
                   help=f"images per FID batch ({RUN_DEFAULTS['fid_batch']})")
    t.add_argument("--inception", "--fid-inception", dest="fid_inception", default=None,
                   help="FID Inception weights file (pt_inception-2015-12-05; default: torch hub cache)")
    t.add_argument("--quiet", action="store_true", help="no progress bar")
    t.add_argument("--dry-run", action="store_true", help="print the resolved settings and exit")

    def sampling_flags(s):
        s.add_argument("--ckpt", required=True,
                       help="checkpoint (train dict or bare g_running state dict), or a run folder (its newest)")
        s.add_argument("--size", type=int, default=None,
                       help="output resolution (checkpoints hold 4..1024; default: the size the checkpoint "
                            "was trained at, else 256)")
        s.add_argument("--truncation", type=float, default=1.0, help="psi in W (rosinality generate.py: 0.7)")
        s.add_argument("--noise-mode", choices=["random", "none"], default="random",
                       help="random: noise seeded per image; none: zero noise")
        s.add_argument("--device", default=None, help=DEVICE_HELP)

    gen = sub.add_parser("generate", help="one PNG per seed")
    sampling_flags(gen)
    gen.add_argument("--seeds", default="0-7", help="e.g. 0-7 or 1,5,9")
    gen.add_argument("--out", required=True, help="output folder")
    gen.add_argument("--overwrite", action="store_true", help="replace existing seedNNNN.png files in --out")

    m = sub.add_parser("mix", help="style-mixing figure: coarse / middle / fine crossovers")
    sampling_flags(m)
    m.add_argument("--rows", default="1-3", help="seeds of the left column (styles copied in)")
    m.add_argument("--cols", default="4-8", help="seeds of the top row")
    m.add_argument("--out", required=True, help="PNG path")
    m.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    return p


def main(argv=None):
    if __name__ == "__main__":  # a program's warnings one line each; a test importing this file keeps Python's
        ops.readable_warnings()
    args = build_parser().parse_args(argv)
    try:
        if args.command == "train":
            return train(args)
        if args.command == "generate":
            return generate(args)
        return mix(args)
    except (CheckpointError, ValueError) as e:
        if __name__ == "__main__":
            sys.exit(f"error: {e}")
        raise
    except (FileExistsError, NotADirectoryError, IsADirectoryError, PermissionError) as e:  # an --out that is a file, a folder without write permission ...
        if __name__ == "__main__":
            sys.exit(f"error: {e.filename}: {e.strerror}" if e.filename else f"error: {e}")
        raise


if __name__ == "__main__":
    main()
