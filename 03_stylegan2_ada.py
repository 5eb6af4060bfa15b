"""StyleGAN2 with ADA, DiffAugment, FreezeD and FreezeG, in one file.

Papers
- Karras, Laine, Aittala, Hellsten, Lehtinen, Aila (2020). "Analyzing and Improving the Image
  Quality of StyleGAN" (StyleGAN2), arXiv:1912.04958.
- Karras, Aittala, Hellsten, Laine, Lehtinen, Aila (2020). "Training Generative Adversarial
  Networks with Limited Data" (ADA), arXiv:2006.06676.
- Zhao, Liu, Lin, Zhu, Han (2020). "Differentiable Augmentation for Data-Efficient GAN
  Training" (DiffAugment), arXiv:2006.10738.
- Mo, Cho, Shin (2020). "Freeze the Discriminator: a Simple Baseline for Fine-Tuning GANs"
  (FreezeD), arXiv:2002.10964.
- FreezeG: bryandlee/FreezeG (fine-tune only the highest-resolution generator blocks).
- Ojha, Li, Lu, Efros, Lee, Shechtman, Zhang (2021). "Few-shot Image Generation via Cross-domain
  Correspondence" (CDC), arXiv:2104.06820: for 10 images, keep the source model's relative
  distances between samples, and judge patches of the image away from the few training images.

What changed from StyleGAN v1 (02_stylegan_freezed.py)
- AdaIN is replaced by weight demodulation (Sec. 2.2, Eq. 1-3): the style scales the conv
  weights and the output is renormalised by the expected std, which removes the "droplet"
  artifacts; the noise and bias move out of the style block (Fig. 2c).
- No progressive growing: skip connections to RGB in G (every resolution adds its upsampled
  RGB), residual blocks in D (Sec. 4, Fig. 7).
- Lazy regularization (Sec. 3.1): R1 every 16 D steps, the new path-length penalty (Sec. 3.2,
  Eq. 4) every 4 G steps, with Adam's lr and betas corrected for the extra steps.
- For few images: ADA's adaptive, non-leaking augmentation, DiffAugment, and freezing.

Where the code follows
- Generator and Discriminator carry the state-dict names and shapes of rosinality/stylegan2-pytorch
  (model.py), so that port's `.pt` checkpoints (including the converted FFHQ config-f ones) load
  with strict=True and give the same images for the same weights, latents and noise. NVIDIA's
  `.pkl` files (PyTorch and TensorFlow-era) load through a restricted unpickler.
- The loop is rosinality train.py's with NVlabs' defaults; ADA's pipeline, p controller and the
  fp16 scheme (num_fp16_res, conv_clamp) follow NVlabs/stylegan2-ada-pytorch.

Map (the method, top to bottom; a copier cuts at the plumbing line)
- settings: `PRESETS` (the seed experiment's ablation rows), `HYPERPARAMETERS` (the papers' and the
  seed's values, each with its source), `channel_table`
- building blocks: `PixelNorm`, `Blur`, `Upsample`, `EqualLinear`, `EqualConv2d`,
  `ModulatedConv2d` (Eq. 1-3: `forward_paper` first, `forward_fast` beside it), `NoiseInjection`,
  `ConstantInput`, `StyledConv`, `ToRGB`
- networks: `Generator` (mapping + synthesis), `ConvLayer`, `ResBlock`, `Discriminator`
- augmentation: `AugmentPipe` (ADA 'bgc'), `AdaptiveP` (ADA's p), `DiffAugment`, `make_augment`
- losses and regularizers: `d_logistic_loss`, `g_nonsaturating_loss`, `d_r1_penalty`,
  `path_lengths`, `g_path_length_penalty`, `lazy_adam`, `mixing_noise`, `ema_update`, `ema_beta`
- freezing: `frozen_prefixes_d` (FreezeD), `frozen_prefixes_g` (FreezeG), `split_frozen`
- CDC: `cdc_similarities`, `cdc_distance_loss` (Eq. 3), `CrossDomainCorrespondence` (the frozen
  source copy, the anchor region, the patch head on D)
- one iteration: `train_step` (D step, lazy R1, G step, lazy path length, G_ema, ADA's p; CDC's
  terms by name when given)
Below the plumbing line: mixed precision (set_precision), the scale-out step
(train_step_scale_out: --batch-gpu, torchrun, fp16), checkpoint I/O (save_checkpoint,
load_checkpoint, load_generator, the NVIDIA .pkl readers), the image-folder dataset, settings
(RUN_DEFAULTS, resolve_settings), the run folder, mean_over_processes (torchrun), train(args) (the
loop around the step, in named stages), generate(args), ablation(args) (the seed's table: every
row x seed as ordinary runs, scored against the whole real set beside its noise floor), the CLI.

Two implementations, one result (each pair is tested equal)
- Modulated convolution: `forward_paper` builds per-sample weights w'' = d * s * w and runs one
  grouped convolution, as the paper does; `forward_fast` scales the input channels by s, runs ONE
  convolution with the shared weight, multiplies the output by d and adds the noise B in that same
  pass (so `NoiseInjection.forward` is not called there); 1x1 kernels use one batched matmul.
  `ModulatedConv2d.fused = None` (default) picks per call: fast on the CPU (a shared-weight
  convolution uses oneDNN's fast kernels and its weight gradient is one GEMM instead of B small
  grouped ones: one iteration at 64 px, channel multiplier 1, batch 4 costs 4.4 s of CPU time
  against 6.7 s, a 256 px config-f forward 2.9 s against 4.3 s); on CUDA the paper form for
  inference and the fast path for training, as NVlabs. On the CPU activations run channels_last.
- The iteration: `train_step` is the paper's, one batch in one process; `train_step_scale_out`
  (below the plumbing line) runs the same iteration in chunks of `--batch-gpu N` with accumulated
  gradients, in several torchrun processes, or in fp16, and gives the same parameters (for chunks,
  when N is a multiple of the minibatch-stddev group). The loop uses the scale-out step only when
  one of those three is asked for.

Run
    python 03_stylegan2_ada.py train --data DATA --out runs/freezed-ada --ckpt ffhq-256.pt --preset freezed-ada
    python 03_stylegan2_ada.py train --resume runs/freezed-ada                   # continue exactly
    python 03_stylegan2_ada.py train --data DATA --out runs/x --preset ada --dry-run   # print the settings
    python 03_stylegan2_ada.py train --data DATA --out runs/fp16 --ckpt ffhq-256.pt --precision fp16 --batch-gpu 8
    torchrun --nproc_per_node 2 03_stylegan2_ada.py train --data DATA --out runs/ddp --ckpt ffhq-256.pt
    python 03_stylegan2_ada.py generate --ckpt stylegan2-ffhq-config-f.pt --seeds 0-7 --out out/ffhq
    python 03_stylegan2_ada.py generate --ckpt ffhq.pkl --seeds 0-7 --truncation 0.7 --out out/pkl
    python 03_stylegan2_ada.py ablation --data DATA --ckpt ffhq-256.pt --iter 30000 --seeds 0,1,2 --out abl
    python 03_stylegan2_ada.py ablation --data DATA --ckpt ffhq-256.pt --shots 10 --rows freezed-ada,cdc \
        --iter 5000 --seeds 0,1 --out abl10                                       # 10-shot: CDC
    python 03_stylegan2_ada.py train --data DATA --out runs/tiny --size 32 --channel-max 32 \\
        --style-dim 32 --n-mlp 2 --batch 4 --iter 20 --fid-every 0 --device cpu     # CPU smoke run
    python bench/bench_stylegan2.py --device cpu
"""
import argparse
import contextlib
import copy
import io
import json
import math
import os
import pickle
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import warnings
import zipfile
from collections import OrderedDict

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import autograd
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler
from PIL import Image
from tqdm import tqdm

import ops
from ops import FusedLeakyReLU, fused_leaky_relu, make_kernel, runs, upfirdn2d

# ---------------------------------------------------------------------------------------------
# Presets and constants
# ---------------------------------------------------------------------------------------------
# The ablation of the seed experiment (bryandlee/malnyun_faces): 500 cartoon faces at 256 px,
# StyleGAN2 transferred from FFHQ (`--ckpt` is the user's FFHQ model), FID after 30k iterations
# (SEED_FID). `freeze_d` is given at 256 px (FreezeD's feature_loc 3: fromRGB and the 256..32 px
# blocks stay fixed); at other sizes it is shifted so that the same two lowest-resolution blocks
# train. "freezeg" is the seed's conclusion (bryandlee/FreezeG): only the two highest-resolution
# generator blocks train (freeze_g 5 of 7 at 256 px, shifted the same way). "cdc" is few-shot
# adaptation by cross-domain correspondence (Ojha et al. 2021, arXiv:2104.06820) at its train.py's
# defaults (kl_wt 1000, subspace_freq 4), with ADA as its published command runs it (run.sh: --augment;
# that command also sets --subspace_freq 2, at batch 4 per GPU on two GPUs: give --cdc-subspace-freq 2
# for it). Flags given on the command line override the preset.
PRESETS = {
    "baseline":        {"augment": "none",    "freeze_d": 0},
    "freezed":         {"augment": "none",    "freeze_d": 4},
    "diffaug":         {"augment": "diffaug", "freeze_d": 0},
    "ada":             {"augment": "ada",     "freeze_d": 0},
    "freezed-diffaug": {"augment": "diffaug", "freeze_d": 4},
    "freezed-ada":     {"augment": "ada",     "freeze_d": 4},
    "freezeg":         {"augment": "none",    "freeze_d": 0, "freeze_g": 5},
    "cdc":             {"augment": "ada",     "freeze_d": 0, "cdc_kl_weight": 1000.0, "cdc_subspace_freq": 4},
}
SEED_FID = {"baseline": 75.96, "freezed": 50.74, "diffaug": 63.74, "ada": 46.23,
            "freezed-diffaug": 45.24, "freezed-ada": 38.94}  # the seed's table, "FID (30k iter)"
PRESET_FREEZE_D_SIZE = 256  # resolution at which the presets' freeze_d counts blocks

# The method's hyperparameters: what a paper or the seed experiment fixes. Where the seed's own
# choice is not written down, it ran rosinality/stylegan2-pytorch train.py with its defaults (the seed
# README), so those are ours; NVlabs' values are named where they differ. The run's plumbing settings
# (folders, intervals, workers, FID cost, device) are RUN_DEFAULTS below the plumbing line; both land
# in the run's settings.json. Argparse defaults are None so that presets and --resume can tell
# which flags were given.
HYPERPARAMETERS = {
    "size": 256,               # the seed trains at 256 px (its 500 faces were upscaled to 256)
    "iter": 30000,             # the seed's FID table is "FID (30k iter)"
    "batch": 16,               # rosinality --batch 16 (NVlabs paper256: 64)
    "lr": 0.002,               # rosinality --lr 0.002, StyleGAN2 config-f (NVlabs paper256: 0.0025)
    "r1_gamma": 10.0,          # R1 weight gamma, penalty * gamma / 2 (config-f, rosinality --r1 10)
    "d_reg_every": 16,         # lazy R1 interval (StyleGAN2 Sec. 3.1; 0 = no R1)
    "g_reg_every": 4,          # lazy path-length interval (Sec. 3.2; 0 = none)
    "pl_weight": 2.0,          # path-length weight (rosinality --path_regularize 2, NVlabs pl_weight 2)
    "pl_decay": 0.01,          # decay of the running mean a of path lengths (both references)
    "pl_batch_shrink": 2,      # path-length batch = batch // 2 (both references)
    "mixing": 0.9,             # style-mixing probability (StyleGAN Sec. 3.1; rosinality --mixing 0.9)
    "ema_kimg": 10.0,          # G_ema half-life in kimg (NVlabs; rosinality 0.5 ** (32 / 10000) per step)
    "ema_rampup": 0.0,         # NVlabs ramp-up (0.05 in their "auto" cfg); 0 = off (ema_beta)
    "augment": "none",         # none | ada | diffaug (the presets choose)
    "ada_p": None,             # fixed ADA p (None = adaptive)
    "ada_target": 0.6,         # ADA target of r_t = E[sign(D(real))] (ADA Sec. 3)
    "ada_interval": 4,         # iterations between p updates (NVlabs ada_interval)
    "ada_kimg": None,          # kimg for p to move by 1: 500, or 100 from a pretrained --ckpt (NVlabs)
    "diffaug_policy": "color,translation,cutout",  # DiffAugment's policy for StyleGAN2 (Sec. 4)
    "xflip": True,             # mirrored copies of the real images (NVlabs --mirror; rosinality flips)
    "freeze_d": 0,             # FreezeD: fromRGB + this many D blocks stay fixed (presets: 4 at 256 px,
    #                            FreezeD's feature_loc 3)
    "freeze_g": 0,             # FreezeG: mapping + this many lowest-resolution G blocks stay fixed
    "channel_multiplier": 2, "channel_max": 512,  # config-f channels (rosinality model.py)
    "style_dim": 512, "n_mlp": 8,                  # z, w size and mapping depth (StyleGAN Sec. 2)
    "mbstd_group": 4,          # D's minibatch-stddev group (both; an NVIDIA --ckpt sets its own: 8 for paper256)
    # CDC (Ojha et al. 2021; utkarshojha/few-shot-gan-adaptation train.py, preset "cdc"):
    "cdc_kl_weight": 0.0,      # weight of the distance consistency (train.py --kl_wt 1000; 0 = off)
    "cdc_subspace_freq": 0,    # anchors + patch D, anchors every N-th iteration (--subspace_freq 4; 0 = off)
    "cdc_anchors": 10,         # anchor points (--n_train 10, the number of training images)
    "cdc_anchor_std": 0.1,     # std of z around an anchor (--subspace_std 0.1)
    "cdc_feat_batch": 4,       # samples in each distance term (--feat_const_batch 4)
    "cdc_patch_res": None,     # resolution of the patch logits: None = size / 8 (train.py: 32 at 256 px,
    #                            its --highp 1 feature), at least 8 (at 32 px: 8, not a 4 x 4 near-image D)
}
# Channels per resolution of rosinality's Generator/Discriminator before the channel multiplier
# (resolutions >= 64) and before the channel_max cap: 512 up to 32 px, then 16384 / r * cm.
BASE_CHANNELS = {4: 512, 8: 512, 16: 512, 32: 512, 64: 256, 128: 128, 256: 64, 512: 32, 1024: 16}
DEMOD_EPS = 1e-8          # Eq. 3 epsilon (both reference implementations)
MBSTD_EPS = 1e-8          # minibatch standard deviation epsilon
TRUNCATION_MEAN_N = 4096  # z samples for the mean w when a checkpoint stores no latent_avg


def channel_table(size, channel_multiplier=2, channel_max=512):
    """{resolution: channels} for 4..size, rosinality's table capped at channel_max."""
    table = {}
    r = 4
    while r <= size:
        base = BASE_CHANNELS[r] * (channel_multiplier if r >= 64 else 1)
        table[r] = int(min(channel_max, base))
        r *= 2
    return table


# ---------------------------------------------------------------------------------------------
# Building blocks
# ---------------------------------------------------------------------------------------------
class PixelNorm(nn.Module):
    """z / sqrt(mean(z^2) + 1e-8) along channels (mapping network input, StyleGAN Sec. 2)."""

    def forward(self, x):
        return x * torch.rsqrt(torch.mean(x * x, dim=1, keepdim=True) + 1e-8)


class Blur(nn.Module):
    """Depthwise FIR low-pass filter (upfirdn2d with up = down = 1); buffer `kernel`."""

    def __init__(self, kernel, pad, upsample_factor=1):
        super().__init__()
        k = make_kernel(kernel)
        if upsample_factor > 1:
            k = k * upsample_factor ** 2  # keep the DC level after zero insertion
        self.register_buffer("kernel", k)
        self.pad = pad

    def forward(self, x):
        return upfirdn2d(x, self.kernel, pad=self.pad)


class Upsample(nn.Module):
    """2x upsampling with the FIR filter (ToRGB skip path); buffer `kernel` sums to 4."""

    def __init__(self, kernel, factor=2):
        super().__init__()
        self.factor = factor
        k = make_kernel(kernel) * factor ** 2
        self.register_buffer("kernel", k)
        p = k.shape[0] - factor
        self.pad = ((p + 1) // 2 + factor - 1, p // 2)

    def forward(self, x):
        return upfirdn2d(x, self.kernel, up=self.factor, down=1, pad=self.pad)


class EqualLinear(nn.Module):
    """Fully connected layer with equalized learning rate (ProGAN Sec. 4.1).

    weight is stored as N(0, 1) / lr_mul and scaled at run time by lr_mul / sqrt(in_dim);
    bias is scaled by lr_mul. activation="fused_lrelu" applies bias + leaky ReLU * sqrt(2).
    """

    def __init__(self, in_dim, out_dim, bias=True, bias_init=0.0, lr_mul=1.0, activation=None):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_dim, in_dim).div_(lr_mul))
        self.bias = nn.Parameter(torch.full((out_dim,), float(bias_init))) if bias else None
        self.scale = lr_mul / math.sqrt(in_dim)
        self.lr_mul = lr_mul
        self.activation = activation

    def forward(self, x):
        if self.activation:
            out = F.linear(x, self.weight * self.scale)
            return fused_leaky_relu(out, self.bias * self.lr_mul)
        bias = self.bias * self.lr_mul if self.bias is not None else None
        return F.linear(x, self.weight * self.scale, bias)

    def extra_repr(self):
        return f"{self.weight.shape[1]}, {self.weight.shape[0]}, lr_mul={self.lr_mul}"


class EqualConv2d(nn.Module):
    """Conv2d with equalized learning rate: weight N(0, 1) scaled by 1 / sqrt(in * k * k)."""

    def __init__(self, in_channel, out_channel, kernel_size, stride=1, padding=0, bias=True):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_channel, in_channel, kernel_size, kernel_size))
        self.scale = 1 / math.sqrt(in_channel * kernel_size ** 2)
        self.stride = stride
        self.padding = padding
        self.bias = nn.Parameter(torch.zeros(out_channel)) if bias else None

    def forward(self, x):
        return F.conv2d(x, self.weight * self.scale, self.bias, stride=self.stride, padding=self.padding)

    def extra_repr(self):
        o, i, k, _ = self.weight.shape
        return f"{i}, {o}, {k}, stride={self.stride}, padding={self.padding}"



class ModulatedConv2d(nn.Module):
    """Weight (de)modulation, StyleGAN2 Sec. 2.2, Eq. 1-3.

        s = modulation(w)                       (affine, bias init 1)          [B, in]
        w'_ijk = s_i * scale * w_ijk            (Eq. 1)
        d_j = 1 / sqrt(sum_ik w'_ijk^2 + 1e-8)  (Eq. 3), w''_ijk = d_j * w'_ijk

    Two implementations with equal results (tests/test_stylegan2_models.py):
    - `forward_paper`: the paper's form, per-sample weights w'' and one grouped convolution
      (groups = B), as the paper describes its implementation;
    - `forward_fast`: the fast path. Scale the input channels by s, run ONE convolution with the
      shared weight, multiply the output channels by d (and add the noise in that same pass);
      1x1 kernels on channels_last input use per-sample [out, in] weights and one batched matmul.
    `fused` picks: True = paper form, False = fast path, None = by device (`use_fused`): fast
    path on the CPU and for CUDA training, paper form for CUDA inference (as NVlabs).
    upsample: transposed conv stride 2, then Blur (pad (1, 1), gain 4).
    """

    def __init__(self, in_channel, out_channel, kernel_size, style_dim,
                 demodulate=True,                 # Eq. 3 (False for ToRGB)
                 upsample=False,                  # 2x up before the conv (H -> 2H)
                 blur_kernel=(1, 3, 3, 1),
                 fused=None):                     # True paper form, False fast path, None by device
        super().__init__()
        self.in_channel, self.out_channel = in_channel, out_channel
        self.kernel_size = kernel_size
        self.demodulate = demodulate
        self.upsample = upsample
        self.fused = fused
        self.scale = 1 / math.sqrt(in_channel * kernel_size ** 2)
        self.padding = kernel_size // 2
        self.weight = nn.Parameter(torch.randn(1, out_channel, in_channel, kernel_size, kernel_size))
        self.modulation = EqualLinear(style_dim, in_channel, bias_init=1)
        if upsample:
            p = (len(blur_kernel) - 2) - (kernel_size - 1)
            self.blur = Blur(blur_kernel, pad=((p + 1) // 2 + 1, p // 2 + 1), upsample_factor=2)

    def extra_repr(self):
        return (f"{self.in_channel}, {self.out_channel}, {self.kernel_size}, "
                f"demodulate={self.demodulate}, upsample={self.upsample}, fused={self.fused}")

    def use_fused(self, x):
        """True: the paper form (`forward_paper`) for this input; False: `forward_fast`."""
        if self.fused is not None:
            return self.fused
        return x.is_cuda and not torch.is_grad_enabled()

    def forward(self, x, style, noise=None):
        """x [B, in, H, W], style w [B, style_dim] -> [B, out, H', W'] (H' = 2H if upsample).

        noise: optional tensor broadcastable to the output ([B, 1, H', W'], already scaled by the
        noise strength) added after demodulation (the fast path adds it in the same memory pass).
        """
        b, c, h, w_ = x.shape
        assert c == self.in_channel, f"expected {self.in_channel} input channels, got {c}"
        with fp32_region(x):                                        # styles in fp32, as NVlabs
            s = self.modulation(style.float())                      # [B, in]
        weight = self.weight[0] * self.scale                        # [out, in, k, k]
        if self.use_fused(x):
            out = self.forward_paper(x, s, weight)
            return out if noise is None else out + noise
        return self.forward_fast(x, s, weight, noise)

    def forward_paper(self, x, s, weight):
        """Eq. 1-3 as written: per-sample weights w''_ijk = d_j s_i w_ijk, one grouped conv."""
        b, c, h, w_ = x.shape
        k = self.kernel_size
        wmod = weight.unsqueeze(0) * s.view(b, 1, c, 1, 1)          # [B, out, in, k, k]  Eq. 1
        if self.demodulate:
            d = torch.rsqrt(wmod.square().sum([2, 3, 4]) + DEMOD_EPS)  # [B, out]  Eq. 3
            wmod = wmod * d.view(b, self.out_channel, 1, 1, 1)
        wmod = wmod.to(x.dtype)
        x = x.reshape(1, b * c, h, w_)                              # the batch as B groups
        if self.upsample:
            wt = wmod.transpose(1, 2).reshape(b * c, self.out_channel, k, k)  # [B*in, out, k, k]
            out = F.conv_transpose2d(x, wt, stride=2, padding=0, groups=b)
            out = out.view(b, self.out_channel, out.shape[2], out.shape[3])  # [B, out, 2H+1, 2W+1]
            return self.blur(out)                                   # [B, out, 2H, 2W]
        out = F.conv2d(x, wmod.reshape(b * self.out_channel, c, k, k), padding=self.padding, groups=b)
        return out.view(b, self.out_channel, h, w_)

    # ---- the fast path (same results; module docstring for the timings) ----
    def forward_fast(self, x, s, weight, noise=None):
        """Non-fused: (conv(x * s, w) * d) + noise, one shared-weight convolution for the batch."""
        b, c = x.shape[:2]
        if self.kernel_size == 1 and not self.upsample and x.is_contiguous(memory_format=torch.channels_last):
            out = self._forward_1x1(x, s, weight)
            return out if noise is None else out + noise
        x = x * s.view(b, c, 1, 1).to(x.dtype)                      # modulate activations
        if self.upsample:
            out = F.conv_transpose2d(x, weight.transpose(0, 1).to(x.dtype), stride=2, padding=0)
            out = self.blur(out)
        else:
            out = F.conv2d(x, weight.to(x.dtype), padding=self.padding)
        if not self.demodulate:
            return out if noise is None else out + noise
        # sum_ik (s_i w_ijk)^2 = sum_i s_i^2 * (sum_k w_ijk^2): a [B, in] x [in, out] product
        with fp32_region(x):                                        # demodulation in fp32
            d = torch.rsqrt(s.square() @ weight.square().sum([2, 3]).t() + DEMOD_EPS)  # [B, out]
        d = d.view(b, self.out_channel, 1, 1).to(out.dtype)
        return out * d if noise is None else torch.addcmul(noise.to(out.dtype), out, d)

    def _forward_1x1(self, x, s, weight):
        """1x1 kernels (ToRGB): per-sample [out, in] weights and one batched matmul over pixels.

        Reads the activations once (no modulated copy); on channels_last input both reshapes
        are views.
        """
        b, c, h, w_ = x.shape
        wmod = weight[:, :, 0, 0].unsqueeze(0) * s.view(b, 1, c)     # [B, out, in]
        if self.demodulate:
            wmod = wmod * torch.rsqrt(wmod.square().sum(2, keepdim=True) + DEMOD_EPS)
        pixels = x.permute(0, 2, 3, 1).reshape(b, h * w_, c)        # [B, HW, in]
        out = torch.bmm(pixels, wmod.transpose(1, 2).to(x.dtype))   # [B, HW, out]
        return out.view(b, h, w_, self.out_channel).permute(0, 3, 1, 2)  # [B, out, H, W]


def memory_format(x):
    """channels_last on the CPU (oneDNN's transposed and depthwise convs are 2-10x faster in
    NHWC), the default layout elsewhere."""
    return torch.contiguous_format if x.is_cuda else torch.channels_last


def set_modconv_path(module, fused):
    """Force every ModulatedConv2d under `module` to fused=True/False, or None (automatic)."""
    for m in module.modules():
        if isinstance(m, ModulatedConv2d):
            m.fused = fused
    return module


class NoiseInjection(nn.Module):
    """Per-pixel noise B (StyleGAN Sec. 2): x + weight * noise, weight init 0, one map per sample."""

    def __init__(self):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(1))

    def forward(self, x, noise=None):
        if noise is None:
            b, _, h, w = x.shape
            noise = x.new_empty(b, 1, h, w).normal_()
        return x + self.weight * noise


class ConstantInput(nn.Module):
    """The learned 4x4 constant that starts synthesis; `input` [1, C, 4, 4]."""

    def __init__(self, channel, size=4):
        super().__init__()
        self.input = nn.Parameter(torch.randn(1, channel, size, size))

    def forward(self, batch):
        return self.input.repeat(batch, 1, 1, 1)



class StyledConv(nn.Module):
    """Modulated 3x3 conv -> noise B -> bias + leaky ReLU (StyleGAN2 Fig. 2c)."""

    def __init__(self, in_channel, out_channel, kernel_size, style_dim, upsample=False,
                 blur_kernel=(1, 3, 3, 1), demodulate=True):
        super().__init__()
        self.conv = ModulatedConv2d(in_channel, out_channel, kernel_size, style_dim,
                                    demodulate=demodulate, upsample=upsample, blur_kernel=blur_kernel)
        self.noise = NoiseInjection()
        self.activate = FusedLeakyReLU(out_channel)
        self.compute_dtype, self.conv_clamp = None, None  # mixed precision (set_precision)

    def forward(self, x, style, noise=None):
        """x [B, in, H, W] -> [B, out, H', W']; noise [B or 1, 1, H', W'] or None (fresh N(0, 1))."""
        if noise is None:
            r = x.shape[2] * (2 if self.conv.upsample else 1)
            noise = x.new_empty(x.shape[0], 1, r, x.shape[3] * r // x.shape[2]).normal_()
        ctx, x = block_precision(self, x)
        with ctx:
            if self.conv.use_fused(x):  # the paper's form: conv, then NoiseInjection
                out = self.noise(self.conv(x, style), noise)
            else:  # fast path: the same noise term added inside the demodulation pass (addcmul)
                out = self.conv(x, style, noise=self.noise.weight * noise)
            return clamp_activations(self, self.activate(out))


class ToRGB(nn.Module):
    """1x1 modulated conv to RGB without demodulation, plus the upsampled skip (Fig. 7b)."""

    def __init__(self, in_channel, style_dim, upsample=True, blur_kernel=(1, 3, 3, 1)):
        super().__init__()
        if upsample:
            self.upsample = Upsample(blur_kernel)
        self.conv = ModulatedConv2d(in_channel, 3, 1, style_dim, demodulate=False)
        self.bias = nn.Parameter(torch.zeros(1, 3, 1, 1))
        self.compute_dtype, self.conv_clamp = None, None  # mixed precision (set_precision)

    def forward(self, x, style, skip=None):
        """x [B, in, H, W] -> RGB [B, 3, H, W] in fp32 (the image sum stays fp32, as NVlabs)."""
        ctx, x = block_precision(self, x)
        with ctx:
            out = self.conv(x, style)
        out = clamp_activations(self, out.float() + self.bias)
        if skip is not None:
            out = out + self.upsample(skip)
        return out


# ---------------------------------------------------------------------------------------------
# Generator and Discriminator
# ---------------------------------------------------------------------------------------------
class Generator(nn.Module):
    """StyleGAN2 config-f generator with skip ToRGB outputs (StyleGAN2 Sec. 4, Fig. 7b).

    Mapping network f: z -> w (PixelNorm + n_mlp equalized FC layers, lr multiplier 0.01),
    synthesis from a learned 4x4 constant with two styled convs per resolution and one ToRGB each.
    Names and shapes follow rosinality/stylegan2-pytorch model.py; channel_max caps the channel
    table (512 = rosinality; smaller values make tiny CPU networks).
    """

    def __init__(self, size, style_dim=512, n_mlp=8, channel_multiplier=2, blur_kernel=(1, 3, 3, 1),
                 lr_mlp=0.01,            # mapping-network learning-rate multiplier
                 channel_max=512):       # cap on channels per layer
        super().__init__()
        log_size = int(math.log2(size))
        if 2 ** log_size != size or not 4 <= log_size <= 10:
            raise ValueError(f"Generator size must be a power of two in 16..1024, got {size}")
        self.size = size
        self.style_dim = style_dim
        self.n_mlp = n_mlp
        self.channel_multiplier = channel_multiplier
        self.channel_max = channel_max
        self.log_size = log_size
        self.num_layers = (log_size - 2) * 2 + 1  # noise inputs
        self.n_latent = log_size * 2 - 2          # w vectors (14 at 256 px)
        self.channels = channel_table(size, channel_multiplier, channel_max)

        self.style = nn.Sequential(PixelNorm(), *[
            EqualLinear(style_dim, style_dim, lr_mul=lr_mlp, activation="fused_lrelu") for _ in range(n_mlp)])

        c4 = self.channels[4]
        self.input = ConstantInput(c4)
        self.conv1 = StyledConv(c4, c4, 3, style_dim, blur_kernel=blur_kernel)
        self.to_rgb1 = ToRGB(c4, style_dim, upsample=False)

        self.convs = nn.ModuleList()
        self.to_rgbs = nn.ModuleList()
        self.noises = nn.Module()
        for i in range(self.num_layers):
            r = 2 ** ((i + 5) // 2)
            self.noises.register_buffer(f"noise_{i}", torch.randn(1, 1, r, r))
        in_channel = c4
        for k in range(3, log_size + 1):
            out_channel = self.channels[2 ** k]
            self.convs.append(StyledConv(in_channel, out_channel, 3, style_dim, upsample=True,
                                         blur_kernel=blur_kernel))
            self.convs.append(StyledConv(out_channel, out_channel, 3, style_dim, blur_kernel=blur_kernel))
            self.to_rgbs.append(ToRGB(out_channel, style_dim, blur_kernel=blur_kernel))
            in_channel = out_channel

    def make_noise(self):
        """Fresh noise maps, one per noise input: list of [1, 1, r, r]."""
        device = self.input.input.device
        return [torch.randn(1, 1, 2 ** ((i + 5) // 2), 2 ** ((i + 5) // 2), device=device)
                for i in range(self.num_layers)]

    @torch.no_grad()
    def mean_latent(self, n_latent):
        """Mean of f(z) over n_latent random z: [1, style_dim] (truncation centre)."""
        z = torch.randn(n_latent, self.style_dim, device=self.input.input.device)
        return self.style(z).mean(0, keepdim=True)

    def get_latent(self, z):
        return self.style(z)

    def forward(self, styles, return_latents=False, inject_index=None, truncation=1,
                truncation_latent=None, input_is_latent=False, noise=None, randomize_noise=True,
                return_feats=False):
        """styles: list of 1 or 2 [B, style_dim] (z, or w with input_is_latent), or [[B, n_latent, dim]].

        Returns (img [B, 3, size, size], latent [B, n_latent, dim] or None); with return_feats the
        second item is the list of the num_layers styled-conv outputs [B, C_r, r, r] instead
        (conv1's at 4 px, then both convs of each resolution: CDC's generator features).
        Truncation (StyleGAN Sec. 3.1 / Eq. in App. B): w' = w_avg + psi * (w - w_avg).
        Style mixing (Sec. 3.1): w layers [0, inject_index) from styles[0], the rest from styles[1].
        """
        if not isinstance(styles, (list, tuple)):
            raise TypeError("styles must be a list of tensors (rosinality's convention)")
        if not input_is_latent:
            styles = [self.style(s) for s in styles]
        if noise is None:
            if randomize_noise:
                noise = [None] * self.num_layers
            else:
                noise = [getattr(self.noises, f"noise_{i}") for i in range(self.num_layers)]
        if truncation < 1:
            styles = [truncation_latent + truncation * (s - truncation_latent) for s in styles]

        if len(styles) < 2:
            inject_index = self.n_latent
            latent = styles[0] if styles[0].ndim == 3 else styles[0].unsqueeze(1).repeat(1, inject_index, 1)
        else:
            if inject_index is None:
                inject_index = random.randint(1, self.n_latent - 1)
            latent = torch.cat([styles[0].unsqueeze(1).repeat(1, inject_index, 1),
                                styles[1].unsqueeze(1).repeat(1, self.n_latent - inject_index, 1)], 1)
        assert latent.shape[1:] == (self.n_latent, self.style_dim), f"latent shape {tuple(latent.shape)}"

        out = self.input(latent.shape[0]).contiguous(memory_format=memory_format(latent))  # [B, C4, 4, 4]
        out = self.conv1(out, latent[:, 0], noise=noise[0])
        feats = [out]
        skip = self.to_rgb1(out, latent[:, 1])                      # [B, 3, 4, 4]
        i = 1
        for conv_up, conv, noise1, noise2, to_rgb in zip(self.convs[::2], self.convs[1::2],
                                                          noise[1::2], noise[2::2], self.to_rgbs):
            out = conv_up(out, latent[:, i], noise=noise1)          # [B, C_r, r, r], r doubles
            feats.append(out)
            out = conv(out, latent[:, i + 1], noise=noise2)
            feats.append(out)
            skip = to_rgb(out, latent[:, i + 2], skip)              # [B, 3, r, r]
            i += 2
        if return_feats:
            return skip, feats
        return skip, (latent if return_latents else None)


class ConvLayer(nn.Sequential):
    """[Blur if downsample] + EqualConv2d + [bias + leaky ReLU]; rosinality's key indices."""

    def __init__(self, in_channel, out_channel, kernel_size, downsample=False, blur_kernel=(1, 3, 3, 1),
                 bias=True, activate=True):
        layers = []
        if downsample:
            p = (len(blur_kernel) - 2) + (kernel_size - 1)
            layers.append(Blur(blur_kernel, pad=((p + 1) // 2, p // 2)))
            stride, padding = 2, 0
        else:
            stride, padding = 1, kernel_size // 2
        layers.append(EqualConv2d(in_channel, out_channel, kernel_size, stride=stride, padding=padding,
                                  bias=bias and not activate))
        if activate:
            layers.append(FusedLeakyReLU(out_channel, bias=bias))
        super().__init__(*layers)


class ResBlock(nn.Module):
    """Residual D block (StyleGAN2 Fig. 7c): (conv2(conv1(x)) + skip(x)) / sqrt(2), 2x down."""

    def __init__(self, in_channel, out_channel, blur_kernel=(1, 3, 3, 1)):
        super().__init__()
        self.conv1 = ConvLayer(in_channel, in_channel, 3)
        self.conv2 = ConvLayer(in_channel, out_channel, 3, downsample=True, blur_kernel=blur_kernel)
        self.skip = ConvLayer(in_channel, out_channel, 1, downsample=True, blur_kernel=blur_kernel,
                              activate=False, bias=False)

    def forward(self, x):
        y = clamp_activations(self, self.conv1(x))  # mixed precision's clamp (set_precision), else as is
        y = clamp_activations(self, self.conv2(y))
        return (y + self.skip(x)) * (1 / math.sqrt(2))


class Discriminator(nn.Module):
    """Residual discriminator with minibatch standard deviation (StyleGAN2 Fig. 7c; ProGAN Sec. 3).

    convs.0 = fromRGB (1x1), convs.1.. = ResBlocks from the image side (convs.1 takes size x size),
    then mbstd (group mbstd_group, 1 feature), final_conv 3x3 and two equalized FC layers -> logit.
    """

    def __init__(self, size, channel_multiplier=2, blur_kernel=(1, 3, 3, 1), channel_max=512, mbstd_group=4):
        super().__init__()
        log_size = int(math.log2(size))
        if 2 ** log_size != size or not 4 <= log_size <= 10:
            raise ValueError(f"Discriminator size must be a power of two in 16..1024, got {size}")
        self.size = size
        self.channel_multiplier = channel_multiplier
        self.channel_max = channel_max
        self.mbstd_group = mbstd_group
        self.channels = ch = channel_table(size, channel_multiplier, channel_max)
        layers = [ConvLayer(3, ch[size], 1)]
        in_channel = ch[size]
        for k in range(log_size, 2, -1):
            out_channel = ch[2 ** (k - 1)]
            layers.append(ResBlock(in_channel, out_channel, blur_kernel))
            in_channel = out_channel
        self.convs = nn.Sequential(*layers)
        self.final_conv = ConvLayer(in_channel + 1, ch[4], 3)
        self.final_linear = nn.Sequential(EqualLinear(ch[4] * 4 * 4, ch[4], activation="fused_lrelu"),
                                          EqualLinear(ch[4], 1))

    def minibatch_stddev(self, x):
        """Append the mean over (C, H, W) of the per-group std over samples as one channel."""
        b, c, h, w = x.shape
        group = min(b, self.mbstd_group)
        if b % group:
            raise ValueError(f"batch {b} is not divisible by the minibatch-stddev group {group}")
        y = x.view(group, -1, 1, c, h, w)                            # [G, B/G, 1, C, H, W]
        y = torch.sqrt(y.var(0, unbiased=False) + MBSTD_EPS)        # [B/G, 1, C, H, W]
        y = y.mean([2, 3, 4], keepdim=True).squeeze(2)              # [B/G, 1, 1, 1]
        y = y.repeat(group, 1, h, w)                                # [B, 1, H, W]
        return torch.cat([x, y], 1)

    def patch_features(self, img, block):
        """The output of ResBlock `block`'s second conv (before the skip sum), [B, C, r, r] with
        r = size / 2^block: where CDC's patch-level head reads D (Ojha et al. 2021, Sec. 3.2)."""
        out = img.contiguous(memory_format=memory_format(img))
        for k, layer in enumerate(self.convs[:block + 1]):
            ctx, out = block_precision(layer, out)
            with ctx:
                if k == block:
                    return clamp_activations(layer, layer.conv2(clamp_activations(layer, layer.conv1(out))))
                out = clamp_activations(layer, layer(out))

    def forward(self, img):
        """img [B, 3, size, size] -> logits [B, 1]."""
        assert img.ndim == 4 and img.shape[1:] == (3, self.size, self.size), \
            f"expected [B, 3, {self.size}, {self.size}], got {tuple(img.shape)}"
        out = img.contiguous(memory_format=memory_format(img))
        for block in self.convs:                                    # fromRGB, then ResBlocks
            ctx, out = block_precision(block, out)                  # fp32 unless set_precision
            with ctx:
                out = clamp_activations(block, block(out))          # [B, C_r, r, r], r halves
        out = self.minibatch_stddev(out.float())                    # [B, C4 + 1, 4, 4], fp32 from here
        out = self.final_conv(out)
        return self.final_linear(out.flatten(1))                    # [B, 1]



# ---------------------------------------------------------------------------------------------
# Augmentation: ADA and DiffAugment
# ---------------------------------------------------------------------------------------------
# ---- ADA: adaptive discriminator augmentation (arXiv:2006.06676) ----------------------------

# Symlet-6 (Daubechies' least-asymmetric orthogonal wavelet with 6 vanishing moments), the
# decomposition low-pass filter; orthonormal (sum = sqrt 2, sum_k h[k] h[k + 2n] = delta_n).
# ADA App. B uses it for the 2x up/down-sampling around the geometric warp (NVlabs `Hz_geom`).
SYM6 = (0.015404109327027373, 0.0034907120842174702, -0.11799011114819057, -0.048311742585633,
        0.4910559419267466, 0.787641141030194, 0.3379294217276218, -0.07263752278646252,
        -0.021060292512300564, 0.04472490177066578, 0.0017677118642428036, -0.007800708325034148)

# NVlabs train.py augpipe_specs: which ops each named pipeline enables (probability multiplier 1).
AUGPIPE_SPECS = {
    "blit": dict(xflip=1, rotate90=1, xint=1),
    "geom": dict(scale=1, rotate=1, aniso=1, xfrac=1),
    "color": dict(brightness=1, contrast=1, lumaflip=1, hue=1, saturation=1),
    "bg": dict(xflip=1, rotate90=1, xint=1, scale=1, rotate=1, aniso=1, xfrac=1),
    "bgc": dict(xflip=1, rotate90=1, xint=1, scale=1, rotate=1, aniso=1, xfrac=1,
                brightness=1, contrast=1, lumaflip=1, hue=1, saturation=1),
}
_ALL_OPS = AUGPIPE_SPECS["bgc"].keys()


def _matrix(rows, like):
    """Nested list of scalars / [B] tensors -> [B, n, n] batched matrix (dtype/device of `like`)."""
    entries = [torch.as_tensor(e, dtype=like.dtype, device=like.device).expand(like.shape[0])
               for row in rows for e in row]
    return torch.stack(entries, dim=1).view(-1, len(rows), len(rows))


def _translate2d(tx, ty):
    return _matrix([[1, 0, tx], [0, 1, ty], [0, 0, 1]], tx)


def _scale2d(sx, sy):
    return _matrix([[sx, 0, 0], [0, sy, 0], [0, 0, 1]], sx)


def _rotate2d(theta):
    c, s = torch.cos(theta), torch.sin(theta)
    return _matrix([[c, -s, 0], [s, c, 0], [0, 0, 1]], theta)


def _const(v, batch, device):
    return torch.full([batch], float(v), device=device)


class AugmentPipe(nn.Module):
    """ADA's non-leaking augmentation pipeline 'bgc' (Karras et al. 2020, Sec. 2.3, App. B).

    Each op fires independently per image with probability (multiplier * p); in this order:
    geometric, as one inverse homogeneous transform G_inv (output pixel -> input pixel, centred
    coordinates, composed as G_inv = G_inv @ op^-1):
      xflip     x -> -x with prob. 1/2
      rotate90  rotation by k * 90 deg, k uniform in {0, 1, 2, 3}
      xint      integer translation, t ~ U(-xint_max, xint_max) * size, rounded
      scale     isotropic, s = 2^(N(0,1) * scale_std)
      rotate    theta ~ U(-pi, pi) * rotate_max, before and after aniso, each with
                p_rot = 1 - sqrt(1 - rotate * p) so that at least one fires with prob. rotate * p
      aniso     (s, 1/s), s = 2^(N(0,1) * aniso_std)
      xfrac     fractional translation, t ~ N(0, 1) * xfrac_std * size
    colour, as one 4x4 matrix C acting on (r, g, b, 1), composed as C = op @ C:
      brightness  + b, b ~ N(0, brightness_std)
      contrast    * c, c = 2^(N(0,1) * contrast_std)
      lumaflip    Householder reflection I - 2 v v^T about the luma axis v = (1,1,1)/sqrt 3, prob. 1/2
      hue         rotation about v by theta ~ U(-pi, pi) * hue_max
      saturation  v v^T + s (I - v v^T), s = 2^(N(0,1) * saturation_std)

    Resampling (App. B): an image whose G_inv moves pixels by whole pixels only (xflip,
    rotate90, xint and their compositions on square images) is an exact pixel gather here, with
    the same reflect fill the warp uses. Every other transformed image goes the NVlabs way: reflect
    padding by the margin the transformed corners need, 2x upsampling with the Symlet-6 low-pass,
    bilinear `grid_sample` in the 2x domain, 2x downsampling with the same filter, crop.
    NVlabs runs the blit-only images through that filter chain too, which slightly blurs flips and
    90-degree turns because sym6 is not symmetric (integer shifts come out exact there as well:
    perfect reconstruction of an orthogonal wavelet). Images on which nothing fired are returned
    bit-identical; p = 0 returns the input tensor itself.

    Constructor: one probability multiplier per op (default 1 each = 'bgc'; 0 disables the op),
    then the strengths (NVlabs defaults). `p` is a plain float (set it directly, e.g. from
    `AdaptiveP`); values above 1 act as 1.
    Differentiable w.r.t. the images, also twice (R1 through the pipe).
    """

    def __init__(self, xflip=1, rotate90=1, xint=1, scale=1, rotate=1, aniso=1, xfrac=1,
                 brightness=1, contrast=1, lumaflip=1, hue=1, saturation=1,
                 xint_max=0.125,        # max integer translation, fraction of the image size
                 scale_std=0.2,         # log2 std of isotropic scaling
                 rotate_max=1.0,        # max rotation, fraction of a half turn (1 = +-180 deg)
                 aniso_std=0.2,         # log2 std of anisotropic scaling
                 xfrac_std=0.125,       # std of fractional translation, fraction of the image size
                 brightness_std=0.2,    # std of the brightness offset (images in [-1, 1])
                 contrast_std=0.5,      # log2 std of contrast scaling
                 hue_max=1.0,           # max hue rotation, fraction of a half turn
                 saturation_std=1.0,    # log2 std of saturation scaling
                 p=0.0):
        super().__init__()
        self.xflip, self.rotate90, self.xint = float(xflip), float(rotate90), float(xint)
        self.scale, self.rotate, self.aniso, self.xfrac = float(scale), float(rotate), float(aniso), float(xfrac)
        self.brightness, self.contrast, self.lumaflip = float(brightness), float(contrast), float(lumaflip)
        self.hue, self.saturation = float(hue), float(saturation)
        self.xint_max, self.scale_std, self.rotate_max = xint_max, scale_std, rotate_max
        self.aniso_std, self.xfrac_std = aniso_std, xfrac_std
        self.brightness_std, self.contrast_std = brightness_std, contrast_std
        self.hue_max, self.saturation_std = hue_max, saturation_std
        self.p = p
        self.register_buffer("sym6", torch.tensor(SYM6) / sum(SYM6), persistent=False)  # [12], sum 1

    @property
    def p(self):
        return self._p

    @p.setter
    def p(self, value):
        value = float(value)
        if not value >= 0:
            raise ValueError(f"augmentation probability p must be >= 0, got {value}")
        self._p = value

    def extra_repr(self):
        on = [k for k in _ALL_OPS if getattr(self, k) > 0]
        return f"p={self.p:.4f}, ops={','.join(on) or 'none'}"

    # -- random draws -----------------------------------------------------------------------
    def _gate(self, value, neutral, prob, gen):
        """Per image: keep `value` with probability `prob`, else the op's neutral value."""
        fire = torch.rand(value.shape[0], device=value.device, generator=gen) < prob
        return torch.where(fire.view(-1, *[1] * (value.ndim - 1)), value, torch.full_like(value, neutral))

    def sample_geometry(self, batch, height, width, device, gen=None):
        """Draw G_inv [B, 3, 3]: output pixel -> input pixel, coordinates centred on the image."""
        rand = lambda *shape: torch.rand(shape, device=device, generator=gen)
        randn = lambda *shape: torch.randn(shape, device=device, generator=gen)
        G_inv = torch.eye(3, device=device).repeat(batch, 1, 1)
        if self.xflip > 0:
            i = self._gate(torch.floor(rand(batch) * 2), 0, self.xflip * self.p, gen)
            G_inv = G_inv @ _scale2d(1 - 2 * i, _const(1, batch, device))  # its own inverse
        if self.rotate90 > 0:
            i = self._gate(torch.floor(rand(batch) * 4), 0, self.rotate90 * self.p, gen)
            G_inv = G_inv @ _rotate2d(math.pi / 2 * i)  # inverse of a turn by -i * 90 deg
        if self.xint > 0:
            t = self._gate((rand(batch, 2) * 2 - 1) * self.xint_max, 0, self.xint * self.p, gen)
            G_inv = G_inv @ _translate2d(-torch.round(t[:, 0] * width), -torch.round(t[:, 1] * height))
        if self.scale > 0:
            s = self._gate(torch.exp2(randn(batch) * self.scale_std), 1, self.scale * self.p, gen)
            G_inv = G_inv @ _scale2d(1 / s, 1 / s)
        p_rot = 1 - math.sqrt(min(max(1 - self.rotate * self.p, 0.0), 1.0))
        if self.rotate > 0:  # pre-rotation
            theta = self._gate((rand(batch) * 2 - 1) * math.pi * self.rotate_max, 0, p_rot, gen)
            G_inv = G_inv @ _rotate2d(theta)  # inverse of a turn by -theta (theta is symmetric)
        if self.aniso > 0:
            s = self._gate(torch.exp2(randn(batch) * self.aniso_std), 1, self.aniso * self.p, gen)
            G_inv = G_inv @ _scale2d(1 / s, s)
        if self.rotate > 0:  # post-rotation
            theta = self._gate((rand(batch) * 2 - 1) * math.pi * self.rotate_max, 0, p_rot, gen)
            G_inv = G_inv @ _rotate2d(theta)
        if self.xfrac > 0:
            t = self._gate(randn(batch, 2) * self.xfrac_std, 0, self.xfrac * self.p, gen)
            G_inv = G_inv @ _translate2d(-t[:, 0] * width, -t[:, 1] * height)
        return G_inv

    def sample_color(self, batch, num_channels, device, gen=None):
        """Draw C [B, 4, 4], acting on homogeneous colours (r, g, b, 1)."""
        rand = lambda *shape: torch.rand(shape, device=device, generator=gen)
        randn = lambda *shape: torch.randn(shape, device=device, generator=gen)
        I4 = torch.eye(4, device=device)
        a = 1 / math.sqrt(3)
        v = torch.tensor([a, a, a, 0.0], device=device)  # luma axis
        vvT = torch.outer(v, v)  # [4, 4]
        P = torch.diag(torch.tensor([1.0, 1.0, 1.0, 0.0], device=device)) - vvT  # onto the chroma plane
        K = torch.tensor([[0.0, -a, a, 0], [a, 0, -a, 0], [-a, a, 0, 0], [0, 0, 0, 0]],
                         device=device)  # cross product with v: K x = v x x
        # every matrix below is exactly I when its op does not fire (value 0 or 1)
        C = I4.repeat(batch, 1, 1)
        if self.brightness > 0:
            b = self._gate(randn(batch) * self.brightness_std, 0, self.brightness * self.p, gen)
            offset = torch.zeros(batch, 4, 4, device=device)
            offset[:, :3, 3] = b[:, None]
            C = (I4 + offset) @ C
        if self.contrast > 0:
            c = self._gate(torch.exp2(randn(batch) * self.contrast_std), 1, self.contrast * self.p, gen)
            C = torch.diag_embed(torch.stack([c, c, c, torch.ones_like(c)], 1)) @ C
        if self.lumaflip > 0:
            i = self._gate(torch.floor(rand(batch) * 2), 0, self.lumaflip * self.p, gen)
            C = (I4 - 2 * vvT * i.view(-1, 1, 1)) @ C
        if self.hue > 0 and num_channels > 1:
            theta = self._gate((rand(batch) * 2 - 1) * math.pi * self.hue_max, 0, self.hue * self.p, gen)
            # Rodrigues about v: cos I + sin [v]x + (1 - cos) v v^T = I + sin K - (1 - cos) P
            cos, sin = torch.cos(theta).view(-1, 1, 1), torch.sin(theta).view(-1, 1, 1)
            C = (I4 + sin * K - (1 - cos) * P) @ C
        if self.saturation > 0 and num_channels > 1:
            s = self._gate(torch.exp2(randn(batch) * self.saturation_std), 1, self.saturation * self.p, gen)
            C = (I4 + (s.view(-1, 1, 1) - 1) * P) @ C  # v v^T + s (I - v v^T) on the colour axes
        return C

    # -- application: the images that moved by whole pixels are gathered, the others resampled --
    def forward(self, images, generator=None):
        """images [B, C, H, W] (C = 1 or 3, values in [-1, 1]) -> augmented, same shape."""
        if images.ndim != 4 or images.shape[1] not in (1, 3):
            raise ValueError(f"AugmentPipe expects images [B, 1 or 3, H, W], got {tuple(images.shape)}")
        if self.p <= 0:
            return images
        b, c, h, w = images.shape
        G_inv = self.sample_geometry(b, h, w, images.device, generator)   # [B, 3, 3]
        images = self.apply_geometry(images, G_inv)
        C = self.sample_color(b, c, images.device, generator)              # [B, 4, 4]
        return self.apply_color(images, C)

    def apply_geometry(self, images, G_inv):
        """Route each image by its transform: untouched, an exact pixel gather (whole-pixel moves),
        or NVlabs' filtered warp (everything else)."""
        batch, _, height, width = images.shape
        device = images.device
        centre = _translate2d(_const((width - 1) / 2, batch, device), _const((height - 1) / 2, batch, device))
        uncentre = _translate2d(_const(-(width - 1) / 2, batch, device), _const(-(height - 1) / 2, batch, device))
        M = centre @ G_inv @ uncentre  # index space: output (x, y, 1) -> input
        moved = (G_inv != torch.eye(3, device=device)).flatten(1).any(1).tolist()
        whole = ((M - M.round()).abs().flatten(1).amax(1) < 1e-4).tolist()
        blit = [i for i in range(batch) if moved[i] and whole[i]]
        warp = [i for i in range(batch) if moved[i] and not whole[i]]
        out = images
        if blit:
            idx = torch.tensor(blit, device=device)
            out = out.index_copy(0, idx, warp_integer(images[idx], M[idx].round()))
        if warp:
            idx = torch.tensor(warp, device=device)
            out = out.index_copy(0, idx, warp_resampled(images[idx], G_inv[idx], self.sym6))
        return out

    def apply_color(self, images, C):
        """rgb -> C[:3, :3] rgb + C[:3, 3] on the images whose C is not I; grayscale uses the mean row."""
        batch, channels, height, width = images.shape
        C = C.to(images.dtype)
        changed = (C != torch.eye(4, dtype=C.dtype, device=C.device)).flatten(1).any(1)
        if not bool(changed.any()):
            return images
        flat = images.reshape(batch, channels, height * width)
        if channels == 3:
            recoloured = C[:, :3, :3] @ flat + C[:, :3, 3:]
        else:
            row = C[:, :3, :].mean(1, keepdim=True)  # [B, 1, 4]
            recoloured = flat * row[:, :, :3].sum(2, keepdim=True) + row[:, :, 3:]
        return torch.where(changed.view(-1, 1, 1, 1), recoloured.view_as(images), images)


def warp_integer(images, M):
    """ADA's whole-pixel moves as an exact pixel gather (reflect fill, as the warp).
    images [n, C, H, W]; M [n, 3, 3]: integer index-space map, output (x, y, 1) -> input."""
    n, c, h, w = images.shape
    ys, xs = torch.meshgrid(torch.arange(h, device=images.device), torch.arange(w, device=images.device),
                            indexing="ij")
    xy1 = torch.stack([xs, ys, torch.ones_like(xs)]).view(1, 3, h * w).to(M.dtype)  # [1, 3, HW]
    src = torch.round(M @ xy1).long()  # [n, 3, HW]
    sx, okx = _reflect_index(src[:, 0], w)
    sy, oky = _reflect_index(src[:, 1], h)
    flat = (sy * w + sx)[:, None, :].expand(n, c, h * w)
    out = images.reshape(n, c, h * w).gather(2, flat) * (okx & oky)[:, None, :].to(images.dtype)
    return out.view(n, c, h, w)


def warp_resampled(images, G_inv, sym6):
    """ADA's other geometric transforms, as NVlabs warps them (App. B): reflect pad, sym6 2x up,
    bilinear grid_sample, sym6 2x down, crop. images [n, C, H, W]; G_inv [n, 3, 3] (centred)."""
    n, c, h, w = images.shape
    f = sym6.to(images.device, images.dtype)
    pad_f = f.numel() // 4  # 3: half the filter support, in input pixels
    mdtype = torch.float64 if images.dtype == torch.float64 else torch.float32  # matrices, grid
    G_inv = G_inv.to(mdtype)
    cx, cy = (w - 1) / 2, (h - 1) / 2
    # Margin: how far the transformed output corners reach beyond the image, plus the filter's
    # room, at most size - 1 (the limit of reflect padding; beyond that grid_sample reads zeros).
    corners = torch.tensor([[-cx, cx, cx, -cx], [-cy, -cy, cy, cy], [1, 1, 1, 1]],
                           dtype=mdtype, device=images.device)  # [3, 4]
    reach = (G_inv @ corners)[:, :2, :].permute(1, 0, 2).reshape(2, -1)  # [xy, n * 4]
    margin = torch.cat([-reach, reach]).amax(1)  # [x0, y0, x1, y1]
    margin = margin + torch.tensor([2 * pad_f - cx, 2 * pad_f - cy] * 2, dtype=margin.dtype,
                                   device=margin.device)
    margin = torch.minimum(margin.clamp(min=0), torch.tensor([w - 1, h - 1] * 2, dtype=margin.dtype,
                                                              device=margin.device))
    mx0, my0, mx1, my1 = [int(m) for m in margin.ceil().tolist()]
    images = F.pad(images, [mx0, mx1, my0, my1], mode="reflect")
    one = torch.ones(n, dtype=mdtype, device=images.device)
    G_inv = _translate2d(one * (mx0 - mx1) / 2, one * (my0 - my1) / 2) @ G_inv  # origin of the padded image
    # 2x upsample. NVlabs takes an input sample u to 2x-domain coordinate 2u - 1/2 (sym6's delay;
    # its DC group delay makes that 2u - 0.402, so rotations and scalings pivot about 0.05 px
    # off the centre: kept as NVlabs, harmless because reals and fakes get the same).
    images = _sym6_upsample2x(images, f)
    G_inv = _scale2d(2 * one, 2 * one) @ G_inv @ _scale2d(one / 2, one / 2)
    G_inv = _translate2d(-one / 2, -one / 2) @ G_inv @ _translate2d(one / 2, one / 2)
    # grid_sample in normalised coordinates (align_corners=False: [-1, 1] spans pixel edges)
    out_h, out_w = (h + 2 * pad_f) * 2, (w + 2 * pad_f) * 2
    in_h, in_w = images.shape[2:]
    G_inv = _scale2d(2 / in_w * one, 2 / in_h * one) @ G_inv @ _scale2d(out_w / 2 * one, out_h / 2 * one)
    grid = F.affine_grid(G_inv[:, :2, :], [n, c, out_h, out_w], align_corners=False)
    images = F.grid_sample(images, grid.to(images.dtype), mode="bilinear", padding_mode="zeros",
                           align_corners=False)
    return _sym6_downsample2x(images, f, crop=2 * pad_f)  # [n, c, h, w]


def _reflect_index(i, n):
    """Index into a size-n axis with reflect padding (edge not repeated), as F.pad 'reflect'.

    Valid for overshoots up to n - 1 (the most reflect padding allows); farther reads are zero,
    as grid_sample's zero padding beyond the padded image. Returns (index, valid mask).
    """
    valid = (i >= -(n - 1)) & (i <= 2 * (n - 1))
    i = i.abs()
    i = torch.where(i > n - 1, 2 * (n - 1) - i, i)
    return i.clamp(0, n - 1), valid


def _sym6_upsample2x(x, f):
    """2x upsampling with a separable FIR f [L] (sum 1), gain 2 per axis; [n,c,h,w] -> [n,c,2h,2w].

    Zero insertion + true convolution, pads ((L+1)//2, (L-2)//2) per axis, as NVlabs upsample2d.
    """
    L = f.numel()
    p0, p1 = (L + 1) // 2, (L - 2) // 2
    k = (f * 2).view(1, L)
    x = ops.upfirdn2d(x, k, up=(2, 1), pad=(p0, p1, 0, 0))
    return ops.upfirdn2d(x, k.view(L, 1), up=(1, 2), pad=(0, 0, p0, p1))


def _sym6_downsample2x(x, f, crop):
    """2x downsampling with the same FIR applied as a correlation (NVlabs flip_filter=True), cropping
    `crop` input pixels from each side: [n, c, 2(h + crop), 2(w + crop)] -> [n, c, h, w].

    Correlation with f = true convolution with f reversed; pads ((L-1)//2 - crop, (L-2)//2 - crop).
    """
    L = f.numel()
    p0, p1 = (L - 1) // 2 - crop, (L - 2) // 2 - crop
    k = f.flip(0).view(1, L)
    x = ops.upfirdn2d(x, k, down=(2, 1), pad=(p0, p1, 0, 0))
    return ops.upfirdn2d(x, k.view(L, 1), down=(1, 2), pad=(0, 0, p0, p1))


class AdaptiveP:
    """ADA's p controller (Karras et al. 2020, Sec. 3, Eq. 1 r_t; NVlabs training_loop.py).

    Overfitting heuristic r_t = E[sign(D(x_real))] over the real images of the last `interval`
    D steps. Every `interval` iterations:
        p <- max(p + sign(r_t - target) * batch_size * interval / (kimg * 1000), 0)
    so p can move from 0 to 1 within `kimg` thousand images. batch_size is the total batch (of all
    processes, when the scale-out step runs several and passes `average` to `step`).
    p_max=1 clamps p at 1 (rosinality clamps too, NVlabs does not): AugmentPipe treats every p >= 1
    the same, so values above 1 change nothing but make p lag when D stops overfitting.
    p_max=None follows NVlabs exactly.
    """

    def __init__(self, target=0.6, interval=4, kimg=500, *, batch_size, p=0.0, p_max=1.0):
        if interval < 1 or kimg <= 0 or batch_size < 1:
            raise ValueError(f"AdaptiveP needs interval >= 1, kimg > 0, batch_size >= 1; got "
                             f"{interval}, {kimg}, {batch_size}")
        self.target, self.interval, self.kimg = float(target), int(interval), float(kimg)
        self.batch_size, self.p_max = int(batch_size), p_max
        self.p = float(p)
        self.rt = None  # last r_t, for logging
        self._sum, self._count = 0.0, 0  # sign sum (tensor once accumulated) and count, this interval

    @property
    def step_size(self):
        return self.batch_size * self.interval / (self.kimg * 1000)

    def accumulate(self, real_logits):
        """Add sign(D(real)) of one D step: real_logits [B] or [B, 1] (augmented reals)."""
        signs = real_logits.detach().sign().float()
        self._sum = self._sum + signs.sum()  # stays on the device: no sync per step
        self._count += signs.numel()

    def step(self, iteration, average=None):
        """Call after each training iteration with the number of finished iterations (1, 2, ...).

        Adjusts p when iteration % interval == 0 (and something was accumulated); returns p.
        average: maps the [sign sum, count] tensor to the mean over all processes (r_t = sum / count
        is the same for sums and for means; the scale-out step's); None = these statistics alone.
        """
        if iteration % self.interval != 0 or self._count == 0:
            return self.p
        stats = torch.tensor([float(self._sum), float(self._count)], dtype=torch.float64)
        if average is not None:
            stats = average(stats)
        signs_sum, count = stats.tolist()
        self.rt = signs_sum / count
        adjust = float(np.sign(self.rt - self.target)) * self.step_size
        self.p = max(self.p + adjust, 0.0)
        if self.p_max is not None:
            self.p = min(self.p, float(self.p_max))
        self._sum, self._count = 0.0, 0
        return self.p

    def state_dict(self):
        """Plain numbers only (for a weights_only checkpoint)."""
        return {"p": float(self.p), "rt": self.rt, "signs_sum": float(self._sum), "signs_count": int(self._count)}

    def load_state_dict(self, state):
        self.p = float(state["p"])
        self.rt = state.get("rt")
        self._sum, self._count = float(state.get("signs_sum", 0.0)), int(state.get("signs_count", 0))


# ---- DiffAugment (arXiv:2006.10738) ----------------------------------------------------------
# Each op draws one random value per image; images in [-1, 1].

def _diffaug_brightness(x, gen=None):
    """x + (u - 0.5), u ~ U[0, 1): shift in [-0.5, 0.5)."""
    u = torch.rand(x.shape[0], 1, 1, 1, dtype=x.dtype, device=x.device, generator=gen)
    return x + (u - 0.5)


def _diffaug_saturation(x, gen=None):
    """(x - m) * 2u + m with m the per-pixel channel mean: factor in [0, 2)."""
    u = torch.rand(x.shape[0], 1, 1, 1, dtype=x.dtype, device=x.device, generator=gen)
    m = x.mean(dim=1, keepdim=True)  # [B, 1, H, W]
    return (x - m) * (u * 2) + m


def _diffaug_contrast(x, gen=None):
    """(x - m) * (u + 0.5) + m with m the per-image mean: factor in [0.5, 1.5)."""
    u = torch.rand(x.shape[0], 1, 1, 1, dtype=x.dtype, device=x.device, generator=gen)
    m = x.mean(dim=[1, 2, 3], keepdim=True)  # [B, 1, 1, 1]
    return (x - m) * (u + 0.5) + m


def _diffaug_translation(x, gen=None, ratio=0.125):
    """out[i, j] = x[i + t_h, j + t_w], integer t in [-int(H/8 + 1/2), +...]; vacated pixels are 0."""
    b, c, h, w = x.shape
    sh, sw = int(h * ratio + 0.5), int(w * ratio + 0.5)
    th = torch.randint(-sh, sh + 1, (b, 1, 1), device=x.device, generator=gen)
    tw = torch.randint(-sw, sw + 1, (b, 1, 1), device=x.device, generator=gen)
    # gather from a 1-pixel zero ring: any index outside the image lands on the ring
    rows = (torch.arange(h, device=x.device).view(1, h, 1) + th + 1).clamp(0, h + 1)  # [B, H, 1]
    cols = (torch.arange(w, device=x.device).view(1, 1, w) + tw + 1).clamp(0, w + 1)  # [B, 1, W]
    flat = (rows * (w + 2) + cols).view(b, 1, h * w).expand(b, c, h * w)
    padded = F.pad(x, [1, 1, 1, 1]).reshape(b, c, (h + 2) * (w + 2))
    return padded.gather(2, flat).view(b, c, h, w)


def _diffaug_cutout(x, gen=None, ratio=0.5):
    """Zero a square of side int(size/2 + 1/2) centred at a random pixel (clipped at the borders)."""
    b, c, h, w = x.shape
    sh, sw = int(h * ratio + 0.5), int(w * ratio + 0.5)
    oh = torch.randint(0, h + (1 - sh % 2), (b, 1, 1), device=x.device, generator=gen)
    ow = torch.randint(0, w + (1 - sw % 2), (b, 1, 1), device=x.device, generator=gen)
    rows = torch.arange(h, device=x.device).view(1, h, 1) - (oh - sh // 2)  # [B, H, 1]
    cols = torch.arange(w, device=x.device).view(1, 1, w) - (ow - sw // 2)  # [B, 1, W]
    inside = (rows >= 0) & (rows < sh) & (cols >= 0) & (cols < sw)  # [B, H, W]
    return x * (~inside).unsqueeze(1).to(x.dtype)


DIFFAUGMENT_POLICIES = {
    "color": (_diffaug_brightness, _diffaug_saturation, _diffaug_contrast),
    "translation": (_diffaug_translation,),
    "cutout": (_diffaug_cutout,),
}


def _policy_names(policy):
    """'color,translation' -> ['color', 'translation'], each checked."""
    names = [n.strip() for n in policy.split(",") if n.strip()]
    for name in names:
        if name not in DIFFAUGMENT_POLICIES:
            raise ValueError(f"unknown DiffAugment policy {name!r} (known: {', '.join(DIFFAUGMENT_POLICIES)})")
    return names


def diff_augment(x, policy="color,translation,cutout", generator=None):
    """DiffAugment T(x) (Zhao et al. 2020, Sec. 3): the policy's ops in order, differentiable.

    x [B, C, H, W] in [-1, 1]; the same policy goes on real and fake images, for D and G.
    """
    if x.ndim != 4:
        raise ValueError(f"diff_augment expects images [B, C, H, W], got {tuple(x.shape)}")
    for name in _policy_names(policy):
        for op in DIFFAUGMENT_POLICIES[name]:
            x = op(x, generator)
    return x.contiguous()


class DiffAugment(nn.Module):
    """`diff_augment` with a fixed policy, as a module."""

    def __init__(self, policy="color,translation,cutout"):
        super().__init__()
        _policy_names(policy)  # fail now on a misspelt policy
        self.policy = policy

    def forward(self, images, generator=None):
        return diff_augment(images, self.policy, generator)

    def extra_repr(self):
        return f"policy={self.policy!r}"


class NoAugment(nn.Module):
    """What D sees is what came in."""

    def forward(self, images, generator=None):
        return images


def make_augment(kind, p=0.0, spec="bgc", policy="color,translation,cutout", **strengths):
    """kind "none" | "ada" | "diffaug" -> module images [B, C, H, W] -> images.

    "ada": AugmentPipe with the ops of `spec` (AUGPIPE_SPECS, default 'bgc'), starting probability
    p (0 for adaptive ADA, a fixed value for `--ada-p`), optional strength overrides (e.g. scale_std).
    "diffaug": DiffAugment with `policy`.
    """
    if kind == "none":
        return NoAugment()
    if kind == "ada":
        if spec not in AUGPIPE_SPECS:
            raise ValueError(f"unknown ADA pipeline {spec!r} (known: {', '.join(AUGPIPE_SPECS)})")
        multipliers = {op: AUGPIPE_SPECS[spec].get(op, 0) for op in _ALL_OPS}
        return AugmentPipe(**multipliers, p=p, **strengths)
    if kind == "diffaug":
        return DiffAugment(policy)
    raise ValueError(f"unknown augmentation {kind!r} (choose none, ada or diffaug)")


# ---------------------------------------------------------------------------------------------
# Losses and regularizers
# ---------------------------------------------------------------------------------------------
def d_logistic_loss(real_logits, fake_logits):
    """Non-saturating logistic D loss (Goodfellow et al. 2014; StyleGAN2 App. B):
    E[softplus(-D(x))] + E[softplus(D(G(z)))], i.e. -log sigmoid(D(x)) - log(1 - sigmoid(D(G(z))))."""
    return F.softplus(-real_logits).mean() + F.softplus(fake_logits).mean()


def g_nonsaturating_loss(fake_logits):
    """Non-saturating G loss: E[softplus(-D(G(z)))] = -log sigmoid(D(G(z)))."""
    return F.softplus(-fake_logits).mean()


def d_r1_penalty(real_logits, real_img):
    """R1 (Mescheder et al. 2018, Eq. 9; StyleGAN2 App. B): E_x ||grad_x D(x)||^2 over real x.

    `real_img` is the un-augmented real batch with requires_grad, `real_logits` = D(augment(real_img)),
    so the gradient runs back through the (differentiable) augmentation as in NVlabs. The caller
    weights the penalty by gamma / 2 (and by the lazy interval).
    """
    (grad,) = autograd.grad(real_logits.sum(), real_img, create_graph=True)  # [B, 3, H, W]
    return grad.square().flatten(1).sum(1).mean()


def path_lengths(img, latents, y, create_graph=True):
    """||J_w^T y||_2 per sample (StyleGAN2 Sec. 3.2), J_w^T y by one backward pass: [B].

    The length of a sample is sqrt(mean over the n_latent styles of sum over dims), as in both
    reference implementations."""
    (grad,) = autograd.grad((img * y).sum(), latents, create_graph=create_graph)  # [B, n_latent, dim]
    return grad.square().sum(2).mean(1).sqrt()


def g_path_length_penalty(img, latents, pl_mean, decay=0.01, y=None, average=None):
    """Path-length regularizer (StyleGAN2 Sec. 3.2, Eq. 4): E_{w,y} (||J_w^T y||_2 - a)^2.

    img [B, 3, H, W] = G(w), latents [B, n_latent, style_dim] = the w+ the image was made from,
    y ~ N(0, I) / sqrt(H * W) (so the length does not depend on the resolution; drawn here unless
    given). a (`pl_mean`, a 0-dim tensor) is a running mean with a <- a + decay * (mean length - a).
    `average` maps this batch's mean length to the one a moves toward (None = this batch's; the
    scale-out step below the plumbing line passes the mean of its whole batch).
    Returns (penalty, new pl_mean (detached), lengths [B]).
    """
    if y is None:  # (randn, not randn_like: a channels_last img would lay the draws out differently)
        y = torch.randn(img.shape, dtype=img.dtype, device=img.device) / math.sqrt(img.shape[2] * img.shape[3])
    lengths = path_lengths(img, latents, y)
    batch_mean = lengths.mean().detach()
    if average is not None:
        batch_mean = average(batch_mean)
    pl_mean = pl_mean + decay * (batch_mean - pl_mean)
    penalty = (lengths - pl_mean).square().mean()
    return penalty, pl_mean.detach(), lengths


def lazy_adam(params, lr, reg_every):
    """Adam(lr, betas (0, 0.99)) with the lazy-regularization correction (StyleGAN2 Sec. 3.1, App. B):
    with a regularizer step every k main steps the optimiser runs k + 1 times per k iterations, so
    lr and the betas are rescaled by c = k / (k + 1): lr * c, (0 ** c, 0.99 ** c). k = 0: no correction."""
    c = reg_every / (reg_every + 1) if reg_every > 0 else 1.0
    return torch.optim.Adam(params, lr=lr * c, betas=(0.0 ** c, 0.99 ** c), eps=1e-8)


def mixing_noise(batch, style_dim, prob, device):
    """z for style mixing (StyleGAN Sec. 3.1): with probability `prob` two latents for the whole
    batch (G switches from the first to the second at a random layer), else one. List of [B, style_dim]."""
    if prob > 0 and random.random() < prob:
        return list(torch.randn(2, batch, style_dim, device=device).unbind(0))
    return [torch.randn(batch, style_dim, device=device)]


@torch.no_grad()
def ema_update(g_ema, g, beta):
    """G_ema <- beta * G_ema + (1 - beta) * G over parameters only. Buffers (noise maps used by the
    'const' noise mode, blur kernels) are not copied, as in rosinality: they are not trained, and a
    transferred model keeps the noise maps of its own G_ema. (NVlabs copies buffers.)"""
    for p_ema, p in zip(g_ema.parameters(), g.parameters()):
        p_ema.lerp_(p, 1.0 - beta)


def ema_beta(batch, ema_kimg, rampup, cur_nimg):
    """NVlabs: beta = 0.5 ** (batch / ema_nimg), ema_nimg = ema_kimg * 1000, with the optional
    ramp-up ema_nimg = min(ema_nimg, cur_nimg * rampup) (cur_nimg = images shown so far)."""
    ema_nimg = ema_kimg * 1000
    if rampup > 0:
        ema_nimg = min(ema_nimg, cur_nimg * rampup)
    return 0.5 ** (batch / max(ema_nimg, 1e-8))


# ---- Freezing (FreezeD, FreezeG) -------------------------------------------------------------
def frozen_prefixes_d(k):
    """FreezeD (Mo et al. 2020): fromRGB (convs.0) and the first k blocks from the image side
    (convs.1..convs.k) keep their weights. k = 4 at 256 px is FreezeD's feature_loc 3."""
    return [] if k <= 0 else [f"convs.{i}." for i in range(k + 1)]


def frozen_prefixes_g(k):
    """FreezeG (bryandlee/FreezeG): the mapping network and the k lowest-resolution generator blocks
    stay fixed. Block 0 = input, conv1, to_rgb1 (4x4); block j >= 1 = convs.2j-2, convs.2j-1,
    to_rgbs.j-1 (2^(j+2) px). Names are matched as prefixes with a dot, so convs.1 is not convs.10.
    Unlike bryandlee/FreezeG, path-length regularization keeps running (on w made a leaf)."""
    if k <= 0:
        return []
    names = ["style.", "input.", "conv1.", "to_rgb1."]
    for j in range(1, k):
        names += [f"convs.{2 * j - 2}.", f"convs.{2 * j - 1}.", f"to_rgbs.{j - 1}."]
    return names


def split_frozen(module, prefixes):
    """Switch off requires_grad for parameters whose name starts with one of `prefixes`.
    Returns (trainable parameters, names of the frozen ones); only the trainable ones go to Adam."""
    trainable, frozen = [], []
    for name, p in module.named_parameters():
        if any(name.startswith(pre) for pre in prefixes):
            p.requires_grad_(False)
            frozen.append(name)
        else:
            trainable.append(p)
    return trainable, frozen


def set_requires_grad(params, flag):
    for p in params:
        p.requires_grad_(flag)


# ---- CDC: few-shot adaptation by cross-domain correspondence (Ojha et al. 2021) --------------
def cdc_similarities(feats, layer_of):
    """For each anchor i: the cosine similarities of its features at layer layer_of[i] to every
    other sample's, softmaxed over j != i (Eq. 1 for the source, Eq. 2 for the target):
    y_i = softmax_j(sim(F_l(z_i), F_l(z_j))).

    feats: the generator's feature list (return_feats), each [N, C, r, r]; returns [N, N - 1]."""
    n = layer_of.numel()
    rows = []
    for i in range(n):
        f = feats[int(layer_of[i])].flatten(1)                       # [N, C r r]
        sim = F.cosine_similarity(f[i:i + 1], f, dim=1, eps=1e-8)    # [N]
        rows.append(torch.cat([sim[:i], sim[i + 1:]]))               # j != i
    return torch.softmax(torch.stack(rows), dim=1)                   # [N, N - 1]


def cdc_distance_loss(feats_source, feats_target, layer_of):
    """Cross-domain distance consistency (Ojha et al. 2021, Eq. 3): the target generator keeps the
    source's relative distances between samples, as the KL divergence of the softmaxed similarities.

    As utkarshojha/few-shot-gan-adaptation train.py computes it, where Eq. 3 reads differently:
    one layer per anchor sample (layer_of[i], uniform over the generator's layers 1..L-1) instead
    of the sum over layers; torch's KLDivLoss(log y_t, y_s), i.e. KL(y_s || y_t) = sum y_s (log y_s
    - log y_t), where Eq. 3 writes D_KL(y_t || y_s); and the mean over the N (N - 1) entries
    ("mean" reduction) in place of the sum. The weight (1000) is applied by the caller."""
    y_s = cdc_similarities(feats_source, layer_of).detach()          # the source's, fixed
    y_t = cdc_similarities(feats_target, layer_of)
    return (y_s * (y_s.log() - y_t.log())).mean()


class CrossDomainCorrespondence(nn.Module):
    """Ojha et al. 2021 (arXiv:2104.06820), on top of a transferred StyleGAN2:

    - the source generator G_s: a frozen copy of the starting G (`g_source`), whose feature
      similarities the adapted G must keep (`distance_loss`, Eq. 3);
    - anchors (Sec. 3.2): `anchors` [n, style_dim] fixed at the start; z near them,
      z = anchor + N(0, std^2) (`anchor_z`), must look real as whole images, every other z only
      patch by patch: on every subspace_freq-th iteration the adversarial losses use z near the
      anchors and D's image-level logit, on the others ordinary z and the patch-level logits of
      `patch_logits`, an extra head on an intermediate D feature (`patch_head`).
    Its state (G_s, the head, the anchors) is saved with the run's checkpoints ("cdc").
    """

    def __init__(self, g_source, d, patch_res,
                 subspace_freq=4,       # anchors every 4th iteration (train.py; 0 = no anchors, no patches)
                 n_anchors=10,          # n_train 10: anchors = number of training images (train.py)
                 anchor_std=0.1,        # subspace_std 0.1 (train.py)
                 feat_batch=4):         # feat_const_batch 4: samples in each distance term (train.py)
        super().__init__()
        self.subspace_freq = subspace_freq
        self.g_source = g_source.eval().requires_grad_(False)
        self.block = int(math.log2(d.size // patch_res))             # D block whose conv2 gives r x r
        if not (1 <= self.block < len(d.convs) and d.size // 2 ** self.block == patch_res):
            raise ValueError(f"patch resolution {patch_res}: a {d.size} px discriminator's blocks give "
                             f"{', '.join(str(d.size // 2 ** j) for j in range(1, len(d.convs)))} px")
        channels = d.channels[d.size // 2 ** self.block]
        self.patch_head = ConvLayer(channels, 1, 3)  # as train.py's Extra: 3x3 conv + bias + leaky ReLU
        self.register_buffer("anchors", torch.randn(n_anchors, g_source.style_dim))
        self.anchor_std, self.feat_batch = anchor_std, feat_batch

    def anchor_iteration(self, i):
        """Iteration i uses z near the anchors and D's image-level logit (train.py: i % subspace_freq == 0)."""
        return self.subspace_freq > 0 and i % self.subspace_freq == 0

    def patch_iteration(self, i):
        return self.subspace_freq > 0 and i % self.subspace_freq != 0

    def anchor_z(self, n):
        """n latents near the anchors: a random anchor each, plus N(0, anchor_std^2) noise [n, dim]."""
        pick = torch.randint(0, len(self.anchors), (n,), device=self.anchors.device)
        return self.anchors[pick] + self.anchor_std * torch.randn(n, self.anchors.shape[1], device=self.anchors.device)

    def patch_logits(self, d, img):
        """Patch-level realism: D's features at the patch block through the head: [B, 1, r, r]."""
        return self.patch_head(d.patch_features(img, self.block).float())

    def distance_loss(self, g):
        """Eq. 3 on feat_batch fresh z: the similarity structure of G_s (no gradient) and of G."""
        z = torch.randn(self.feat_batch, self.anchors.shape[1], device=self.anchors.device)
        layer_of = torch.randint(1, g.num_layers, (self.feat_batch,))   # one layer per anchor sample
        with torch.no_grad():
            feats_source = self.g_source([z], return_feats=True)[1]
        feats_target = g([z], return_feats=True)[1]
        return cdc_distance_loss(feats_source, feats_target, layer_of)


# ---------------------------------------------------------------------------------------------
# One training iteration
# ---------------------------------------------------------------------------------------------
def train_step(i, real, g, d, g_ema, g_optim, d_optim, augment, cfg, pl_mean, adaptive=None, cdc=None):
    """One StyleGAN2 training iteration i (0, 1, ...) on the real batch x [B, 3, size, size] in [-1, 1].

    T is the augmentation D sees (ADA's pipeline, DiffAugment, or the identity), z ~ N(0, I) with
    style mixing (a pair of z with probability cfg.mixing, `mixing_noise`).
    1. D step:  L_D = E[softplus(-D(T(x)))] + E[softplus(D(T(G(z))))]    (logistic loss, App. B)
    2. lazy R1, every d_reg_every iterations (Sec. 3.1):
                L_R1 = gamma / 2 * E||grad_x D(T(x))||^2 * d_reg_every
    3. G step:  L_G = E[softplus(-D(T(G(z))))]                           (D's weights fixed)
    4. lazy path length, every g_reg_every iterations, on B // pl_batch_shrink images (Sec. 3.2, Eq. 4):
                L_pl = pl_weight * E_{w,y}(||J_w^T y||_2 - a)^2 * g_reg_every,  a <- a + decay (mean - a)
    5. G_ema <- beta G_ema + (1 - beta) G, beta = 0.5 ** (B / (ema_kimg * 1000))  (NVlabs' half-life)
    6. ADA's p (Sec. 3, Eq. 1): the signs of D(T(x)) of step 1 give r_t = E[sign(D(T(x)))]; every
       ada_interval iterations  p <- max(0, p + sign(r_t - target) * B * interval / (ada_kimg * 1000)).
    FreezeD and FreezeG are in what the optimisers hold: frozen weights are not in them.
    CDC (`cdc`, a CrossDomainCorrespondence; Ojha et al. 2021) adds two named terms: in steps 1-3
    every subspace_freq-th iteration takes z near its anchors and the other iterations D's patch
    logits (Sec. 3.2), and step 3 adds cdc_kl_weight * L_dist, the distance consistency (Eq. 3).
    cfg: the resolved settings (style_dim, mixing, r1_gamma, d_reg_every, g_reg_every, pl_weight,
    pl_decay, pl_batch_shrink, ema_kimg, ema_rampup, batch); pl_mean: a, a 0-dim tensor;
    adaptive: ADA's AdaptiveP (None for a fixed p or no ADA); it sets augment.p.
    Returns (stats: dict of 0-dim tensors, new pl_mean).
    """
    batch, device = real.shape[0], real.device
    d_params = [p for group in d_optim.param_groups for p in group["params"]]
    stats = {}

    def latents(n):  # z ~ N(0, I), a pair with probability cfg.mixing; CDC: near its anchors
        if cdc is not None and cdc.anchor_iteration(i):
            return [cdc.anchor_z(n)]
        return mixing_noise(n, cfg.style_dim, cfg.mixing, device)

    def D(x):  # D's logits [B, 1]; CDC's patch iterations: its patch logits [B, 1, r, r]
        return cdc.patch_logits(d, x) if cdc is not None and cdc.patch_iteration(i) else d(x)

    # 1. D step on T(x) and T(G(z))
    set_requires_grad(d_params, True)
    with torch.no_grad():
        fake = g(latents(batch))[0]                                 # [B, 3, H, W]
    real_logits = D(augment(real))                                  # [B, 1]
    fake_logits = D(augment(fake))
    d_loss = d_logistic_loss(real_logits, fake_logits)
    d_optim.zero_grad(set_to_none=True)
    d_loss.backward()
    d_optim.step()
    stats.update(d_loss=d_loss.detach(), real_score=real_logits.detach().mean(),
                 fake_score=fake_logits.detach().mean())
    if adaptive is not None:  # sign(D(T(x))) for r_t (step 6), one per image (patch logits: their mean)
        adaptive.accumulate(real_logits.flatten(1).mean(1))

    # 2. lazy R1 on the un-augmented real images, through the (differentiable) augmentation
    if cfg.d_reg_every > 0 and cfg.r1_gamma > 0 and i % cfg.d_reg_every == 0:
        x = real.detach().requires_grad_(True)
        r1 = d_r1_penalty(D(augment(x)).flatten(1).mean(1), x)     # per image (CDC: mean patch logit)
        d_optim.zero_grad(set_to_none=True)
        (cfg.r1_gamma / 2 * r1 * cfg.d_reg_every).backward()
        d_optim.step()
        stats["r1"] = r1.detach()

    # 3. G step through the fixed D
    set_requires_grad(d_params, False)
    fake = g(latents(batch))[0]
    g_loss = g_nonsaturating_loss(D(augment(fake)))
    if cdc is not None and cfg.cdc_kl_weight > 0:  # CDC's cross-domain distance consistency (Eq. 3)
        distance = cdc.distance_loss(g)                             # L_dist
        g_loss = g_loss + cfg.cdc_kl_weight * distance
        stats["cdc_dist"] = distance.detach()
    g_optim.zero_grad(set_to_none=True)
    g_loss.backward()
    g_optim.step()
    stats["g_loss"] = g_loss.detach()

    # 4. lazy path length: J_w^T y by one backward pass, y ~ N(0, I) / sqrt(H W)
    if cfg.g_reg_every > 0 and cfg.pl_weight > 0 and i % cfg.g_reg_every == 0:
        pl_batch = max(1, batch // cfg.pl_batch_shrink)
        ws = [g.get_latent(z) for z in mixing_noise(pl_batch, cfg.style_dim, cfg.mixing, device)]
        if not ws[0].requires_grad:                                 # FreezeG: frozen mapping, w a leaf
            ws = [w.detach().requires_grad_(True) for w in ws]
        img, latents = g(ws, input_is_latent=True, return_latents=True)  # latents: w+ [B, n_latent, dim]
        penalty, pl_mean, lengths = g_path_length_penalty(img, latents, pl_mean, cfg.pl_decay)
        g_optim.zero_grad(set_to_none=True)
        (cfg.pl_weight * cfg.g_reg_every * penalty).backward()
        g_optim.step()
        stats.update(path_length=lengths.detach().mean(), pl_penalty=penalty.detach())

    # 5. G_ema
    ema_update(g_ema, g, ema_beta(cfg.batch, cfg.ema_kimg, cfg.ema_rampup, i * cfg.batch))

    # 6. ADA: move p every ada_interval iterations (AdaptiveP.step)
    if adaptive is not None:
        augment.p = adaptive.step(i + 1)
    return stats, pl_mean


# ---- plumbing: data, checkpoints, formats, settings, distributed, run folder, CLI ----

# ---------------------------------------------------------------------------------------------
# Mixed precision: the GPU path (NVlabs stylegan2-ada-pytorch: num_fp16_res, conv_clamp)
# ---------------------------------------------------------------------------------------------
def fp32_region(x):
    """Inside a half-precision block (autocast on, see `set_precision`): switch autocast off so
    that the styles and demodulation coefficients are computed in fp32, as NVlabs; else nothing."""
    kind = x.device.type
    if kind not in ("cpu", "cuda", "mps", "xpu"):  # e.g. meta: no autocast there
        return contextlib.nullcontext()
    try:
        on = torch.is_autocast_enabled(kind)
    except TypeError:  # torch < 2.4: no device argument
        on = torch.is_autocast_cpu_enabled() if kind == "cpu" else torch.is_autocast_enabled()
    return torch.autocast(kind, enabled=False) if on else contextlib.nullcontext()


def block_precision(module, x):
    """(context, x) for one network block under mixed precision (see `set_precision`).

    module.compute_dtype None: fp32, x cast to float32 (it may come from a half-precision block);
    float16/bfloat16: torch.autocast runs the block's convolutions and matmuls in that dtype while
    the parameters stay fp32 (autocast casts a copy per call)."""
    dtype = getattr(module, "compute_dtype", None)
    if dtype is None:
        return contextlib.nullcontext(), x.float()
    return torch.autocast(x.device.type, dtype=dtype), x


def clamp_activations(module, x):
    """NVIDIA's conv_clamp: fp16 layers clip their outputs to [-256, 256] so fp16 cannot overflow."""
    c = getattr(module, "conv_clamp", None)
    return x if c is None else x.clamp(-c, c)


PRECISIONS = ("fp32", "bf16", "fp16")


NUM_FP16_RES = 4   # NVlabs: the 4 highest resolutions run in fp16 ...


CONV_CLAMP = 256   # ... and clip their activations to [-256, 256]


def set_precision(net, precision, num_fp16_res=NUM_FP16_RES, conv_clamp=CONV_CLAMP):
    """Choose the compute dtype of each block of a Generator or Discriminator; returns net.

    fp32: everything fp32. fp16 (as NVlabs): the blocks at the num_fp16_res highest resolutions
    (r >= max(size * 2 / 2^num_fp16_res, 8): 32..256 px at 256 px) compute in float16 with their
    activations clamped to +-conv_clamp; the mapping network, the low resolutions, D's 4x4
    epilogue (mbstd, final conv, FC), the losses and the regularizers stay fp32. bf16: every
    resolution block in bfloat16 (same exponent range as fp32: no clamp, no loss scaling), the
    mapping network, D's epilogue and the losses fp32. Parameters stay fp32 either way (autocast
    casts copies), so optimiser state, EMA and checkpoints are fp32; the setting is not saved.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision {precision!r}: choose one of {', '.join(PRECISIONS)}")
    low = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    first = 4 if precision == "bf16" else max(2 ** (int(math.log2(net.size)) + 1 - num_fp16_res), 8)
    clamp = conv_clamp if precision == "fp16" else None

    def mark(block, r):
        block.compute_dtype, block.conv_clamp = (low, clamp) if low is not None and r >= first else (None, None)

    if isinstance(net, Generator):
        mark(net.conv1, 4)
        mark(net.to_rgb1, 4)
        for j, to_rgb in enumerate(net.to_rgbs):                  # block j + 1 at 2^(j + 3) px
            r = 2 ** (j + 3)
            for block in (net.convs[2 * j], net.convs[2 * j + 1], to_rgb):
                mark(block, r)
    elif isinstance(net, Discriminator):
        mark(net.convs[0], net.size)                                # fromRGB
        for j in range(1, len(net.convs)):                          # convs.j takes size / 2^(j-1) px
            mark(net.convs[j], net.size // 2 ** (j - 1))
    else:
        raise TypeError(f"set_precision: expected a Generator or Discriminator, got {type(net).__name__}")
    net.precision = precision
    return net


# ---------------------------------------------------------------------------------------------
# The scale-out step: --batch-gpu chunks, torchrun processes, fp16 (train_step's iteration, tested equal)
# ---------------------------------------------------------------------------------------------
def draw_g_inputs(g, batch, style_dim, mixing, device):
    """The random inputs of one G pass over `batch` images, drawn up front so that the batch can be
    cut into chunks (--batch-gpu) and still be the same batch: (z list, inject_index, noise list).

    The draws come in the order G itself would make them (z, the mixing layer, the noise maps of
    layers 0, 1, ...), so an unsplit step gives the images G(z) with fresh noise would give."""
    z = mixing_noise(batch, style_dim, mixing, device)                 # 1 or 2 x [B, style_dim]
    inject_index = random.randint(1, g.n_latent - 1) if len(z) == 2 else None
    noise = [torch.randn(batch, 1, 2 ** ((i + 5) // 2), 2 ** ((i + 5) // 2), device=device)
             for i in range(g.num_layers)]                             # [B, 1, r, r] per noise input
    return z, inject_index, noise


def batch_chunks(batch, batch_gpu, mbstd_group):
    """Split sample indices 0..batch-1 into chunks of batch_gpu for gradient accumulation.

    D's minibatch stddev groups samples {j, j + B/G, j + 2B/G, ...} (view(G, -1)). When G divides
    batch_gpu, each chunk takes whole groups, ordered so that D's grouping inside the chunk is the
    full batch's: then the accumulated step equals the full-batch step. Otherwise (batch_gpu < G:
    NVlabs' groups of min(G, batch_gpu)) the chunks are consecutive samples.
    Returns a list of index tensors (one [batch] arange when batch_gpu >= batch)."""
    if batch_gpu is None or batch_gpu >= batch:
        return [torch.arange(batch)]
    g = min(mbstd_group, batch)
    if batch % g == 0 and batch_gpu % g == 0:
        per = batch_gpu // g                                           # groups per chunk
        grid = torch.arange(batch).view(g, batch // g)                 # [G, B/G]: grid[k, j] in group j
        return [grid[:, c:c + per].reshape(-1) for c in range(0, batch // g, per)]
    return list(torch.arange(batch).split(batch_gpu))


def _pick(inputs, idx):
    """The G inputs (z list, inject_index, noise list) of the samples `idx`."""
    z, inject_index, noise = inputs
    return [t[idx] for t in z], inject_index, [n[idx] for n in noise]


def _optimizer_step(optim, fix_half_grads):
    """Adam step; under fp16 NVlabs' guard replaces inf/NaN gradients (overflow) before it."""
    if fix_half_grads:
        for group in optim.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    torch.nan_to_num(p.grad, nan=0.0, posinf=1e5, neginf=-1e5, out=p.grad)
    optim.step()


def train_step_scale_out(i, real, g, d, g_ema, g_optim, d_optim, augment, cfg, pl_mean, *,
                         adaptive=None, g_train=None, d_train=None, average=None):
    """`train_step`'s iteration as the loop runs it when the plain form cannot: the batch in chunks
    of cfg.batch_gpu with accumulated gradients, one process of several under torchrun, or fp16.

    Same steps 1-6 and the same random draws in the same order, so with one chunk, one process and
    fp32 it gives train_step's parameters (tests/test_stylegan2_train.py). What it adds:
    - --batch-gpu: G's random inputs are drawn up front for the whole batch (`draw_g_inputs`) and
      cut with `batch_chunks`, each chunk's loss weighted by chunk / B, so losses, R1, path length
      (a first pass finds the whole batch's mean length, which a moves toward) and the ADA
      statistics are the whole batch's;
    - torchrun: g_train, d_train are the DistributedDataParallel wrappers of g and d (gradients are
      averaged in backward), `average` the mean over processes (path-length mean, ADA statistics),
      and each regularizer's backward touches every parameter (+ 0 * output) so that the
      all-reduce finds them all;
    - fp16 (set_precision): inf/NaN gradients are replaced before each Adam step, as NVlabs.
    Returns (stats dict of 0-dim tensors, new pl_mean).
    """
    g_train, d_train = g_train or g, d_train or d
    ddp = d_train is not d
    batch, device = real.shape[0], real.device
    batch_gpu = getattr(cfg, "batch_gpu", None)
    half = getattr(g, "precision", "fp32") == "fp16"
    d_params = [p for group in d_optim.param_groups for p in group["params"]]
    chunks = batch_chunks(batch, batch_gpu, d.mbstd_group)
    stats = {}

    # 1. D step: loss = E[softplus(-D(x))] + E[softplus(D(G(z)))], accumulated over chunks
    set_requires_grad(d_params, True)
    g_in = draw_g_inputs(g, batch, cfg.style_dim, cfg.mixing, device)
    d_optim.zero_grad(set_to_none=True)
    d_loss, real_score, fake_score = 0.0, 0.0, 0.0
    for idx in chunks:
        w = len(idx) / batch                                           # share of the batch
        z, inject_index, noise = _pick(g_in, idx)
        with torch.no_grad():
            fake = g(z, inject_index=inject_index, noise=noise)[0]
        real_logits = d_train(augment(real[idx]))                      # [n, 1]
        fake_logits = d_train(augment(fake))
        loss = d_logistic_loss(real_logits, fake_logits) * w
        loss.backward()
        d_loss = d_loss + loss.detach()
        real_score = real_score + real_logits.detach().mean() * w
        fake_score = fake_score + fake_logits.detach().mean() * w
        if adaptive is not None:
            adaptive.accumulate(real_logits)                           # sign(D(real)), this chunk
    _optimizer_step(d_optim, half)
    stats.update(d_loss=d_loss, real_score=real_score, fake_score=fake_score)

    # 2. lazy R1 on the un-augmented real images, through the augmentation
    if cfg.d_reg_every > 0 and cfg.r1_gamma > 0 and i % cfg.d_reg_every == 0:
        d_optim.zero_grad(set_to_none=True)
        r1_total = 0.0
        for idx in chunks:
            w = len(idx) / batch
            real_r1 = real[idx].detach().requires_grad_(True)
            logits = d_train(augment(real_r1))
            r1 = d_r1_penalty(logits, real_r1) * w
            loss = cfg.r1_gamma / 2 * r1 * cfg.d_reg_every
            if ddp:  # the last bias gets no R1 gradient: + 0 * logits lets the all-reduce find it
                loss = loss + 0 * logits[0, 0]
            loss.backward()
            r1_total = r1_total + r1.detach()
        _optimizer_step(d_optim, half)
        stats["r1"] = r1_total

    # 3. G step: loss = E[softplus(-D(G(z)))] through the fixed D
    set_requires_grad(d_params, False)
    g_in = draw_g_inputs(g, batch, cfg.style_dim, cfg.mixing, device)
    g_optim.zero_grad(set_to_none=True)
    g_loss = 0.0
    for idx in chunks:
        z, inject_index, noise = _pick(g_in, idx)
        fake = g_train(z, inject_index=inject_index, noise=noise)[0]
        loss = g_nonsaturating_loss(d(augment(fake))) * (len(idx) / batch)
        loss.backward()
        g_loss = g_loss + loss.detach()
    _optimizer_step(g_optim, half)
    stats["g_loss"] = g_loss

    # 4. lazy path-length regularization on batch // pl_batch_shrink images
    if cfg.g_reg_every > 0 and cfg.pl_weight > 0 and i % cfg.g_reg_every == 0:
        pl_batch = max(1, batch // cfg.pl_batch_shrink)
        z, inject_index, noise = draw_g_inputs(g, pl_batch, cfg.style_dim, cfg.mixing, device)
        y = torch.randn(pl_batch, 3, g.size, g.size, device=device) / g.size  # N(0, I) / sqrt(H W)
        pl_chunks = list(torch.arange(pl_batch).split(batch_gpu or pl_batch))

        def images(idx, net):
            ws = [g.get_latent(t[idx]) for t in z]
            if not ws[0].requires_grad:                                # FreezeG: frozen mapping, w a leaf
                ws = [w.requires_grad_(True) for w in ws]
            return net(ws, input_is_latent=True, return_latents=True, inject_index=inject_index,
                       noise=[n[idx] for n in noise])

        pl_average = average
        if len(pl_chunks) > 1:  # a first pass for the whole batch's mean length (a moves toward it)
            lengths = torch.cat([path_lengths(*images(idx, g), y[idx], create_graph=False).detach()
                                 for idx in pl_chunks])
            whole = lengths.mean() if average is None else average(lengths.mean())
            pl_average = lambda _: whole  # noqa: E731
        g_optim.zero_grad(set_to_none=True)
        penalty_total, lengths_all, new_mean = 0.0, [], pl_mean
        for idx in pl_chunks:
            img, latents = images(idx, g_train)
            penalty, new_mean, lengths = g_path_length_penalty(img, latents, pl_mean, cfg.pl_decay,
                                                               y=y[idx], average=pl_average)
            penalty = penalty * (len(idx) / pl_batch)
            loss = cfg.pl_weight * cfg.g_reg_every * penalty
            if ddp:  # ToRGB's last bias has no path-length gradient: + 0 * img for the all-reduce
                loss = loss + 0 * img[0, 0, 0, 0]
            loss.backward()
            penalty_total = penalty_total + penalty.detach()
            lengths_all.append(lengths.detach())
        _optimizer_step(g_optim, half)
        pl_mean = new_mean
        stats["path_length"], stats["pl_penalty"] = torch.cat(lengths_all).mean(), penalty_total

    # 5. G_ema (NVlabs: beta from the total batch; ramp-up optional)
    ema_update(g_ema, g, ema_beta(cfg.batch, cfg.ema_kimg, cfg.ema_rampup, i * cfg.batch))

    # 6. ADA's p, from the statistics of every process
    if adaptive is not None:
        augment.p = adaptive.step(i + 1, average=average)
    return stats, pl_mean


# ---------------------------------------------------------------------------------------------
# Checkpoint I/O
# ---------------------------------------------------------------------------------------------
class CheckpointError(RuntimeError):
    """A checkpoint that is missing, unreadable, unsafe or of another architecture (one line)."""


def save_checkpoint(path, ckpt):
    """torch.save(ckpt) to a temp file in the same folder, then os.replace: never a partial file."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    buf = io.BytesIO()  # serialised in memory first: a full disk is then an OSError with its errno
    torch.save(ckpt, buf)  # (torch's zip writer reports it as an unnamed RuntimeError)
    runs.write_atomic(path, lambda f: f.write(buf.getbuffer()))


_LEGACY_TORCH_MAGIC = b"\x80\x02\x8a\x0a\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x19"  # old torch.save


def _first_line(e):
    """`Type: first line` of an exception, cut at its first sentence when that line is long."""
    lines = str(e).strip().splitlines()
    text = lines[0] if lines else ""
    if len(text) > 100 and ". " in text:
        text = text.split(". ", 1)[0] + "."
    return f"{type(e).__name__}: {text}"


def load_checkpoint(path, map_location="cpu"):
    """Read our checkpoints, rosinality .pt files and NVIDIA .pkl files into one dict.

    .pt (zip or legacy torch.save): torch.load(weights_only=True), with argparse.Namespace (the
    `args` of rosinality's train.py) as the only allow-listed class; `args` becomes a plain dict.
    A bare generator state dict becomes {"g_ema": state}. Pickles (NVIDIA) go through
    load_nvidia_pkl. Any problem raises CheckpointError with one line naming the file.
    """
    path = os.fspath(path)
    if os.path.isdir(path):
        raise CheckpointError(f"{path}: is a folder, not a checkpoint file")
    if not os.path.isfile(path):
        raise CheckpointError(f"{path}: no such checkpoint file")
    with open(path, "rb") as f:
        head = f.read(len(_LEGACY_TORCH_MAGIC))
    if len(head) == 0:
        raise CheckpointError(f"{path}: empty file, not a checkpoint")
    is_zip = head.startswith(b"PK\x03\x04") or zipfile.is_zipfile(path)  # torch.save's zip format
    if not is_zip and head != _LEGACY_TORCH_MAGIC:
        if head[:1] == b"\x80":
            return load_nvidia_pkl(path)
        raise CheckpointError(f"{path}: not a PyTorch checkpoint or NVIDIA pickle (unknown format)")
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        raise CheckpointError(f"{path}: refused by the weights-only loader or corrupt ({_first_line(e)})") from None
    except Exception as e:  # truncated zip, bad records, ...
        raise CheckpointError(f"{path}: truncated or corrupt checkpoint ({_first_line(e)})") from None
    if isinstance(ckpt, dict) and ckpt and all(torch.is_tensor(v) for v in ckpt.values()):
        if "style.1.weight" not in ckpt:
            raise CheckpointError(f"{path}: a bare state dict that is not a StyleGAN2 generator")
        ckpt = {"g_ema": ckpt}
    if not isinstance(ckpt, dict):
        raise CheckpointError(f"{path}: expected a dict checkpoint, got {type(ckpt).__name__}")
    if isinstance(ckpt.get("args"), argparse.Namespace):
        ckpt["args"] = dict(vars(ckpt["args"]))
    return ckpt


def state_mismatch(module, state_dict):
    """One-line description of how state_dict differs from module's (empty string if it fits)."""
    own = module.state_dict()
    missing = [k for k in own if k not in state_dict]
    unexpected = [k for k in state_dict if k not in own]
    shapes = [f"{k} {list(state_dict[k].shape)} vs {list(own[k].shape)}" for k in own
              if k in state_dict and tuple(state_dict[k].shape) != tuple(own[k].shape)]
    parts = []
    for name, items in (("missing keys", missing), ("unexpected keys", unexpected),
                        ("shapes differ (file vs model)", shapes)):
        if items:
            more = f" (+{len(items) - 3} more)" if len(items) > 3 else ""
            parts.append(f"{len(items)} {name}: {', '.join(items[:3])}{more}")
    return "; ".join(parts)


def load_state_checked(module, state_dict, where):
    """Strict load_state_dict with a one-line CheckpointError naming `where` and the differences."""
    diff = state_mismatch(module, state_dict)
    if diff:
        found = ""
        if isinstance(module, Generator):
            try:
                found = f"file holds a {generator_config_from_state(state_dict)['size']} px generator, "
            except CheckpointError:
                pass
        raise CheckpointError(f"{where}: {found}does not fit {type(module).__name__}"
                              f"({getattr(module, 'size', '?')} px): {diff}")
    module.load_state_dict(state_dict, strict=True)
    return module


def generator_config_from_state(state_dict, args=None):
    """Infer Generator(size, style_dim, n_mlp, channel_multiplier, channel_max) from tensor shapes.

    Stored args (ours or rosinality's Namespace) take precedence for the channel multiplier when
    the shapes cannot tell it (tiny networks where channel_max caps every layer).
    """
    args = dict(args or {})
    if "style.1.weight" not in state_dict or "input.input" not in state_dict:
        raise CheckpointError("state dict has no 'style.1.weight' / 'input.input': not a StyleGAN2 generator")
    n_mlp = sum(1 for k in state_dict if k.startswith("style.") and k.endswith(".weight"))
    style_dim = state_dict["style.1.weight"].shape[1]
    n_rgbs = sum(1 for k in state_dict if k.startswith("to_rgbs.") and k.endswith(".conv.weight"))
    size = 2 ** (n_rgbs + 2)
    c4 = state_dict["input.input"].shape[1]
    channel_max = int(args.get("channel_max", c4))
    cm = args.get("channel_multiplier")
    if cm is None:
        cm = 2
        for r in (64, 128, 256, 512, 1024):
            key = f"to_rgbs.{int(math.log2(r)) - 3}.conv.weight"
            if key in state_dict and state_dict[key].shape[2] < channel_max:
                cm = state_dict[key].shape[2] / BASE_CHANNELS[r]
                cm = int(cm) if float(cm).is_integer() else cm
                break
    return dict(size=size, style_dim=style_dim, n_mlp=n_mlp, channel_multiplier=cm, channel_max=channel_max)


def build_generator_from_state(state_dict, args=None, where="generator state"):
    """A Generator whose size/style_dim/n_mlp/channels fit state_dict, loaded strictly.

    `where` (e.g. the file name) starts the one-line CheckpointError if the weights do not fit.
    """
    try:
        cfg = generator_config_from_state(state_dict, args)
    except CheckpointError as e:
        raise CheckpointError(f"{where}: {e}") from None
    return load_state_checked(Generator(**cfg), state_dict, where)


def load_generator(path, device="cpu", which="g_ema"):
    """(Generator in eval mode on device, latent_avg [1, style_dim] or None) from any supported file."""
    ckpt = load_checkpoint(path)
    if which not in ckpt:
        raise CheckpointError(f"{path}: no '{which}' entry (keys: {', '.join(sorted(map(str, ckpt)))})")
    try:
        g = build_generator_from_state(ckpt[which], ckpt.get("args"), where=f"{path} ['{which}']")
    except ValueError as e:  # e.g. a size that is not a power of two
        raise CheckpointError(f"{path} ['{which}']: {e}") from None
    latent_avg = ckpt.get("latent_avg")
    if latent_avg is not None:
        latent_avg = torch.as_tensor(latent_avg, dtype=torch.float32).reshape(1, -1).to(device)
    return g.to(device).eval(), latent_avg


# ---- NVIDIA .pkl (NVlabs/stylegan2-ada-pytorch and the TensorFlow-era StyleGAN2 pickles) ------
# What the restricted unpickler allows: the globals in RestrictedUnpickler.ALLOWED, each mapped to
# a checking stand-in written here (never NVlabs' code, never a real torch/numpy class that a
# pickle could modify); SETITEM/APPEND/ADDITEMS only on the dicts, lists and sets the pickle
# itself built; BUILD (__setstate__ / setattr) only on numpy arrays and dtypes and the TF network
# placeholder; no persistent ids, no out-of-band buffers. Every size the file declares (bytes,
# storages, tensor views, arrays) is checked against the bytes actually present before anything
# is allocated.
class PersistentObject:
    """Placeholder for an NVlabs persistent-class object: its class name and __dict__ (`state`).

    NVlabs' torch_utils.persistence pickles every network as a call
    _reconstruct_persistent_obj(meta) whose meta carries the module source; the real function
    exec()s that source. Here the call only records meta['class_name'] and meta['state'].
    """

    def __init__(self, meta):
        if not isinstance(meta, dict) or not isinstance(meta.get("state"), dict):
            raise pickle.UnpicklingError("persistent object without a state dict")
        self.class_name = str(meta.get("class_name"))
        self.state = meta["state"]


class TFNetworkStub:
    """Placeholder for dnnlib.tflib.network.Network (TF-era): keeps the pickled state dict."""

    def __setstate__(self, state):
        if not isinstance(state, dict):
            raise pickle.UnpicklingError("TF network state is not a dict")
        self.state = state


class _EasyDictStub(dict):
    """dnnlib.util.EasyDict as a plain dict (constructor kwargs in NVlabs pickles)."""


class _SizedReader:
    """Read-only view of a file or bytes for the unpicklers: asking for more bytes than are left
    (a declared length larger than the file) is refused before any buffer is allocated."""

    def __init__(self, f, size):
        self.f, self.left = f, size

    def _take(self, n):
        if n > self.left:
            raise pickle.UnpicklingError(f"declares {n} bytes where only {self.left} are left in the file")
        self.left -= n

    def read(self, n=-1):
        n = self.left if n is None or n < 0 else n
        self._take(n)
        data = self.f.read(n)
        if len(data) != n:
            raise pickle.UnpicklingError("file ended early")
        return data

    def readinto(self, buf):
        n = len(buf)
        self._take(n)
        if self.f.readinto(buf) != n:
            raise pickle.UnpicklingError("file ended early")
        return n

    def readline(self):
        line = self.f.readline(self.left)
        self.left -= len(line)
        return line


_TORCH_LEGACY_MAGIC = 0x1950a86a20f9469cfc6c  # torch.save's legacy-format magic number (first pickle)
_STORAGE_DTYPES = {  # storage class names in torch.save's legacy format -> element dtype
    "FloatStorage": torch.float32, "DoubleStorage": torch.float64, "HalfStorage": torch.float16,
    "BFloat16Storage": torch.bfloat16, "LongStorage": torch.int64, "IntStorage": torch.int32,
    "ShortStorage": torch.int16, "CharStorage": torch.int8, "ByteStorage": torch.uint8,
    "BoolStorage": torch.bool, "UntypedStorage": torch.uint8,
}


class _PlainUnpickler(pickle._Unpickler):
    """Numbers, strings, tuples, lists, dicts only (the header pickles of a torch.save file)."""

    def find_class(self, module, name):
        raise pickle.UnpicklingError(f"refusing global {module}.{name} in torch.save storage bytes")

    def persistent_load(self, pid):
        raise pickle.UnpicklingError("persistent ids are not allowed here")


def _load_storage_bytes(data):
    """torch.storage._load_from_bytes(data) without torch.load: how plain pickle stores a tensor's
    storage (a legacy-format torch.save of that one storage, see torch/serialization.py):

        pickle magic, pickle 1001, pickle sys_info, pickle of the storage as a persistent id
        ('storage', <dtype class>, key, location, numel, view), pickle [key], then per key:
        int64 numel (little-endian) and numel * element_size raw bytes.

    Only the dtype name is taken from the class name; numel is checked against the bytes present.
    """
    if not isinstance(data, (bytes, bytearray)):
        raise pickle.UnpicklingError("storage bytes are not bytes")
    f = _SizedReader(io.BytesIO(data), len(data))
    if _PlainUnpickler(f).load() != _TORCH_LEGACY_MAGIC or _PlainUnpickler(f).load() != 1001:
        raise pickle.UnpicklingError("storage bytes are not a legacy torch.save of one storage")
    sys_info = _PlainUnpickler(f).load()
    if not isinstance(sys_info, dict) or sys_info.get("little_endian") is not True:
        raise pickle.UnpicklingError("storage bytes are not little-endian")
    found = []

    class StorageRef(_PlainUnpickler):
        def find_class(self, module, name):
            if module == "torch" and name in _STORAGE_DTYPES:
                return _STORAGE_DTYPES[name]  # the dtype stands in for the class
            return super().find_class(module, name)

        def persistent_load(self, pid):
            if not (isinstance(pid, tuple) and len(pid) in (5, 6) and pid[0] == "storage"
                    and isinstance(pid[1], torch.dtype) and isinstance(pid[4], int) and pid[4] >= 0
                    and (len(pid) == 5 or pid[5] is None)):
                raise pickle.UnpicklingError("unexpected storage reference in storage bytes")
            found.append(pid)
            return pid

    ref = StorageRef(f).load()
    keys = _PlainUnpickler(f).load()
    if not found or ref is not found[0] or len(found) != 1 or keys != [ref[2]]:
        raise pickle.UnpicklingError("storage bytes hold something other than one storage")
    dtype, numel = ref[1], ref[4]
    itemsize = torch.empty((), dtype=dtype).element_size()
    if numel * itemsize + 8 > f.left:
        raise pickle.UnpicklingError(f"storage declares {numel} x {itemsize} bytes where only "
                                     f"{max(f.left - 8, 0)} are present")
    if int.from_bytes(f.read(8), "little", signed=True) != numel:
        raise pickle.UnpicklingError("storage size record does not match its declaration")
    raw = bytearray(f.read(numel * itemsize))
    values = torch.frombuffer(raw, dtype=dtype) if numel else torch.empty(0, dtype=dtype)
    return torch.storage.TypedStorage(wrap_storage=values.untyped_storage(), dtype=dtype, _internal=True)


def _checked_view(storage, offset, size, stride):
    """A tensor viewing `storage` with (offset, size, stride), refused if it reaches outside the
    storage (torch's set_ would silently grow the storage to any declared size)."""
    if not isinstance(storage, torch.storage.TypedStorage):
        raise pickle.UnpicklingError("tensor without a storage")
    ok = (isinstance(offset, int) and offset >= 0 and isinstance(size, (tuple, list, torch.Size))
          and isinstance(stride, (tuple, list)) and len(size) == len(stride)
          and all(isinstance(v, int) and v >= 0 for v in (*size, *stride)))
    if not ok:
        raise pickle.UnpicklingError("tensor with an invalid offset, size or stride")
    needed = 0 if 0 in size else offset + 1 + sum((n - 1) * s for n, s in zip(size, stride))
    if needed > storage._size():
        raise pickle.UnpicklingError(f"tensor of size {list(size)} needs {needed} elements, "
                                     f"its storage holds {storage._size()}")
    t = torch.empty((0,), dtype=storage.dtype)
    return t.set_(storage._untyped_storage, offset, tuple(size), tuple(stride))


def _rebuild_tensor(storage, storage_offset, size, stride):
    return _checked_view(storage, storage_offset, size, stride)


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False, backward_hooks=None,
                       metadata=None):
    return _checked_view(storage, storage_offset, size, stride)  # weights: no grad, no hooks


def _rebuild_parameter(data, requires_grad, backward_hooks):
    if not torch.is_tensor(data):
        raise pickle.UnpicklingError("parameter without a tensor")
    return torch.nn.Parameter(data, bool(requires_grad))


def _rebuild_parameter_with_state(data, requires_grad, backward_hooks, state=None):
    return _rebuild_parameter(data, requires_grad, backward_hooks)


def _numpy_dtype(obj, align=False, copy=False):
    """np.dtype(...), always a fresh object (a BUILD may then only change this copy); no objects."""
    if not isinstance(obj, str):
        raise pickle.UnpicklingError(f"numpy dtype from {type(obj).__name__} is not allowed")
    dtype = np.dtype(obj, bool(align), True)
    if dtype.hasobject:
        raise pickle.UnpicklingError("numpy object dtypes are not allowed")
    return dtype


_NDARRAY = object()  # what the pickle's numpy.ndarray names: only an argument of _reconstruct


def _numpy_scalar(dtype, data=None):
    if not isinstance(dtype, np.dtype) or dtype.hasobject or not isinstance(data, bytes):
        raise pickle.UnpicklingError("numpy scalar must be a plain dtype and bytes")
    if len(data) != dtype.itemsize:
        raise pickle.UnpicklingError("numpy scalar bytes do not match its dtype")
    return np.frombuffer(data, dtype=dtype, count=1)[0]


def _numpy_reconstruct(cls, shape, dtype):
    """numpy's pickles start each array as _reconstruct(ndarray, (0,), b'b') and then BUILD it
    (ndarray.__setstate__ checks that the raw bytes fit the declared shape); the start is empty."""
    if cls is not _NDARRAY:
        raise pickle.UnpicklingError(f"numpy _reconstruct of {cls!r} is not allowed")
    return np.ndarray.__new__(np.ndarray, (0,), np.uint8)


def _numpy_frombuffer(buf, dtype, shape, order="C"):
    if not isinstance(buf, (bytes, bytearray)) or not isinstance(dtype, np.dtype) or dtype.hasobject:
        raise pickle.UnpicklingError("numpy _frombuffer needs bytes and a plain dtype")
    return np.frombuffer(bytes(buf), dtype=dtype).reshape(shape, order=order).copy()


def _codecs_encode(text, encoding="utf-8"):
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise pickle.UnpicklingError("_codecs.encode is allowed for latin1 text only")  # protocol-2 bytes
    return text.encode("latin1")


def _safe_set(items=()):
    return set(_checked_items(items))


def _safe_frozenset(items=()):
    return frozenset(_checked_items(items))


def _safe_ordered_dict(items=()):
    return OrderedDict(_checked_items(items))


def _checked_items(items):
    if not isinstance(items, (list, tuple, dict)):
        raise pickle.UnpicklingError("a container built from something other than a list, tuple or dict")
    return items


class RestrictedUnpickler(pickle._Unpickler):
    """Builds only tensors, numpy arrays/scalars, containers and NVIDIA placeholders.

    Every global the file names is looked up in ALLOWED and replaced by a stand-in written here;
    anything else (os.system, builtins.eval, NVlabs classes, ...) raises UnpicklingError before it
    can run. The pure-Python unpickler is used so that the opcodes that change an existing object
    (BUILD, SETITEM(S), APPEND(S), ADDITEMS, NEWOBJ) can be restricted to the objects this pickle
    built itself: no pickle can modify a class or function of this process.
    """

    ALLOWED = {
        ("collections", "OrderedDict"): _safe_ordered_dict,
        ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
        ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
        ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
        ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter_with_state,
        ("torch.storage", "_load_from_bytes"): _load_storage_bytes,
        ("torch_utils.persistence", "_reconstruct_persistent_obj"): PersistentObject,
        ("dnnlib.tflib.network", "Network"): TFNetworkStub,
        ("dnnlib.util", "EasyDict"): _EasyDictStub,
        ("numpy", "dtype"): _numpy_dtype,
        ("numpy", "ndarray"): _NDARRAY,
        ("numpy.core.multiarray", "scalar"): _numpy_scalar,
        ("numpy._core.multiarray", "scalar"): _numpy_scalar,
        ("numpy.core.multiarray", "_reconstruct"): _numpy_reconstruct,
        ("numpy._core.multiarray", "_reconstruct"): _numpy_reconstruct,
        ("numpy.core.numeric", "_frombuffer"): _numpy_frombuffer,
        ("numpy._core.numeric", "_frombuffer"): _numpy_frombuffer,
        ("_codecs", "encode"): _codecs_encode,
        ("builtins", "set"): _safe_set,
        ("builtins", "frozenset"): _safe_frozenset,
    }
    NEWOBJ_CLASSES = (TFNetworkStub, _EasyDictStub)  # classes a pickle may instantiate empty

    def __init__(self, file, size=None):
        if size is None:  # bytes from the current position to the end
            start = file.tell()
            size = file.seek(0, os.SEEK_END) - start
            file.seek(start)
        super().__init__(_SizedReader(file, size))

    def find_class(self, module, name):
        if (module, name) in self.ALLOWED:
            return self.ALLOWED[(module, name)]
        raise pickle.UnpicklingError(f"refusing global {module}.{name}: only tensors, numbers, "
                                     "containers and NVIDIA network placeholders may be unpickled")

    def persistent_load(self, pid):
        raise pickle.UnpicklingError("persistent ids are not allowed")

    def _target(self, allowed, opcode):
        """The object on top of the stack, if it is a fresh object of an allowed type."""
        obj = self.stack[-1] if self.stack else None
        if type(obj) not in allowed:
            raise pickle.UnpicklingError(f"refusing {opcode} on {type(obj).__name__}: only on the "
                                         f"containers and placeholders this pickle built")
        return obj

    _DICTS = (dict, OrderedDict, _EasyDictStub)

    def load_build(self):
        inst = self.stack[-2] if len(self.stack) > 1 else None
        if type(inst) not in (np.ndarray, TFNetworkStub) and not isinstance(inst, np.dtype):
            raise pickle.UnpicklingError(f"refusing BUILD on {type(inst).__name__}: only numpy "
                                         "arrays and dtypes and TF network placeholders take a state")
        state = self.stack.pop()
        inst.__setstate__(state)

    def load_setitem(self):
        value, key = self.stack.pop(), self.stack.pop()
        self._target(self._DICTS, "SETITEM")[key] = value

    def load_setitems(self):
        items = self.pop_mark()
        target = self._target(self._DICTS, "SETITEMS")
        for i in range(0, len(items), 2):
            target[items[i]] = items[i + 1]

    def load_append(self):
        value = self.stack.pop()
        self._target((list,), "APPEND").append(value)

    def load_appends(self):
        items = self.pop_mark()
        self._target((list,), "APPENDS").extend(items)

    def load_additems(self):
        items = self.pop_mark()
        self._target((set,), "ADDITEMS").update(items)

    def load_newobj(self):
        self.stack.pop()  # the constructor arguments, unused: an allowed class is built empty, cls()
        cls = self.stack.pop()
        if cls not in self.NEWOBJ_CLASSES:
            raise pickle.UnpicklingError(f"refusing NEWOBJ of {cls!r}")
        self.append(cls())

    def load_newobj_ex(self):
        self.stack.pop()  # kwargs
        self.load_newobj()

    def load_bytearray8(self):
        n = int.from_bytes(self.read(8), "little")
        self.append(bytearray(self.read(n)))  # read() checks n against the bytes left first

    def load_obj(self):
        raise pickle.UnpicklingError("refusing the OBJ opcode (protocol 1 class instances)")

    def load_inst(self):
        raise pickle.UnpicklingError("refusing the INST opcode (protocol 0 class instances)")

    dispatch = dict(pickle._Unpickler.dispatch)
    for _op, _fn in ((pickle.BUILD, load_build), (pickle.SETITEM, load_setitem),
                     (pickle.SETITEMS, load_setitems), (pickle.APPEND, load_append),
                     (pickle.APPENDS, load_appends), (pickle.ADDITEMS, load_additems),
                     (pickle.NEWOBJ, load_newobj), (pickle.NEWOBJ_EX, load_newobj_ex),
                     (pickle.BYTEARRAY8, load_bytearray8), (pickle.OBJ, load_obj), (pickle.INST, load_inst)):
        dispatch[_op[0]] = _fn
    del _op, _fn


def _persistent_state_dict(obj, prefix=""):
    """Flatten a tree of PersistentObject modules into {dotted name: tensor} (params + buffers)."""
    out = OrderedDict()
    state = obj.state
    skip = set(state.get("_non_persistent_buffers_set", ()) or ())
    for kind in ("_parameters", "_buffers"):
        for name, t in (state.get(kind) or {}).items():
            if t is None or (kind == "_buffers" and name in skip):
                continue
            if not torch.is_tensor(t):
                raise pickle.UnpicklingError(f"{prefix + name} is a {type(t).__name__}, not a tensor")
            out[prefix + name] = t.detach()
    for name, child in (state.get("_modules") or {}).items():
        if isinstance(child, PersistentObject):
            out.update(_persistent_state_dict(child, prefix + name + "."))
        elif child is not None:
            raise pickle.UnpicklingError(f"unexpected submodule type at {prefix + name}")
    return out


def _nvidia_mbstd_group(d):
    """Minibatch-stddev group of an NVlabs Discriminator placeholder, or None if not recorded.

    NVlabs' persistence keeps constructor arguments in the object's `_init_kwargs`:
    D(..., epilogue_kwargs={'mbstd_group_size': G}), and the epilogue b4 has its own
    _init_kwargs['mbstd_group_size'] (4 for 'stylegan2' configs, 8 for 'paper256')."""
    kwargs = d.state.get("_init_kwargs") or d.state.get("init_kwargs") or {}
    group = (kwargs.get("epilogue_kwargs") or {}).get("mbstd_group_size")
    b4 = (d.state.get("_modules") or {}).get("b4")
    if group is None and isinstance(b4, PersistentObject):
        group = (b4.state.get("_init_kwargs") or {}).get("mbstd_group_size")
    if group is None:
        return None
    if not isinstance(group, int) or group < 1:
        raise pickle.UnpicklingError(f"mbstd_group_size {group!r} is not a positive int")
    return group


def convert_nvidia_generator(sd, size):
    """NVlabs PyTorch Generator names (stylegan2-ada-pytorch training/networks.py) -> rosinality names.

    Returns (state dict, w_avg or None). Resample filters are constants and are not copied;
    the rosinality buffers that hold them are filled from make_kernel([1, 3, 3, 1]).
    """
    out = OrderedDict()
    i = 0
    while f"mapping.fc{i}.weight" in sd:
        out[f"style.{i + 1}.weight"] = sd[f"mapping.fc{i}.weight"]
        out[f"style.{i + 1}.bias"] = sd[f"mapping.fc{i}.bias"]
        i += 1

    def layer(src, dst, noise_idx):
        out[f"{dst}.conv.weight"] = sd[f"{src}.weight"].unsqueeze(0)
        out[f"{dst}.conv.modulation.weight"] = sd[f"{src}.affine.weight"]
        out[f"{dst}.conv.modulation.bias"] = sd[f"{src}.affine.bias"]
        out[f"{dst}.noise.weight"] = sd[f"{src}.noise_strength"].reshape(1)
        out[f"{dst}.activate.bias"] = sd[f"{src}.bias"]
        nc = sd[f"{src}.noise_const"]
        out[f"noises.noise_{noise_idx}"] = nc.reshape(1, 1, *nc.shape[-2:])

    def torgb(src, dst):
        out[f"{dst}.conv.weight"] = sd[f"{src}.weight"].unsqueeze(0)
        out[f"{dst}.conv.modulation.weight"] = sd[f"{src}.affine.weight"]
        out[f"{dst}.conv.modulation.bias"] = sd[f"{src}.affine.bias"]
        out[f"{dst}.bias"] = sd[f"{src}.bias"].reshape(1, 3, 1, 1)

    out["input.input"] = sd["synthesis.b4.const"].unsqueeze(0)
    layer("synthesis.b4.conv1", "conv1", 0)
    torgb("synthesis.b4.torgb", "to_rgb1")
    for k, log_r in enumerate(range(3, int(math.log2(size)) + 1)):
        r = 2 ** log_r
        layer(f"synthesis.b{r}.conv0", f"convs.{2 * k}", 2 * k + 1)
        layer(f"synthesis.b{r}.conv1", f"convs.{2 * k + 1}", 2 * k + 2)
        torgb(f"synthesis.b{r}.torgb", f"to_rgbs.{k}")
    _add_resample_kernels(out, size)
    return out, sd.get("mapping.w_avg")


def convert_nvidia_discriminator(sd, size):
    """NVlabs PyTorch Discriminator (resnet) names (training/networks.py) -> rosinality names."""
    out = OrderedDict()
    out["convs.0.0.weight"] = sd[f"b{size}.fromrgb.weight"]
    out["convs.0.1.bias"] = sd[f"b{size}.fromrgb.bias"]
    for k, log_r in enumerate(range(int(math.log2(size)), 2, -1), start=1):
        r = 2 ** log_r
        out[f"convs.{k}.conv1.0.weight"] = sd[f"b{r}.conv0.weight"]
        out[f"convs.{k}.conv1.1.bias"] = sd[f"b{r}.conv0.bias"]
        out[f"convs.{k}.conv2.1.weight"] = sd[f"b{r}.conv1.weight"]
        out[f"convs.{k}.conv2.2.bias"] = sd[f"b{r}.conv1.bias"]
        out[f"convs.{k}.skip.1.weight"] = sd[f"b{r}.skip.weight"]
    out["final_conv.0.weight"] = sd["b4.conv.weight"]
    out["final_conv.1.bias"] = sd["b4.conv.bias"]
    out["final_linear.0.weight"] = sd["b4.fc.weight"]
    out["final_linear.0.bias"] = sd["b4.fc.bias"]
    out["final_linear.1.weight"] = sd["b4.out.weight"]
    out["final_linear.1.bias"] = sd["b4.out.bias"]
    _add_resample_kernels(out, size, discriminator=True)
    return out


def _add_resample_kernels(out, size, discriminator=False):
    """Fill rosinality's constant FIR buffers (not present in foreign files)."""
    k = make_kernel([1, 3, 3, 1])
    n = int(math.log2(size))
    if discriminator:
        for b in range(1, n - 1):
            out[f"convs.{b}.conv2.0.kernel"] = k.clone()
            out[f"convs.{b}.skip.0.kernel"] = k.clone()
    else:
        for j in range(n - 2):
            out[f"convs.{2 * j}.conv.blur.kernel"] = k * 4
            out[f"to_rgbs.{j}.upsample.kernel"] = k * 4


def _tf_params(net, prefix=""):
    """TF-era Network placeholder -> {"component/.../var": ndarray}, components joined by '/'."""
    state = net.state
    if int(state.get("version", 0)) < 4:
        raise pickle.UnpicklingError(f"TF network pickle version {state.get('version')} < 4 is not supported")
    params = {}
    for name, value in state.get("variables", []):
        params[prefix + name] = value
    for name, comp in (state.get("components") or {}).items():
        params.update(_tf_params(comp, prefix + name + "/"))
    return params


def convert_tf_generator(tf, size):
    """TF StyleGAN2 Gs variables (NVlabs/stylegan2 networks_stylegan2.py) -> rosinality Generator state,
    the mapping of rosinality's convert_weight.py."""
    t = lambda a: torch.from_numpy(np.ascontiguousarray(a)).float()  # noqa: E731
    out = OrderedDict()
    i = 0
    while f"mapping/Dense{i}/weight" in tf:
        out[f"style.{i + 1}.weight"] = t(tf[f"mapping/Dense{i}/weight"]).t().contiguous()  # [in,out] -> [out,in]
        out[f"style.{i + 1}.bias"] = t(tf[f"mapping/Dense{i}/bias"])
        i += 1

    def conv_weight(a, flip=False):
        w = t(a)                                          # [kh, kw, in, out]
        if flip:
            w = torch.flip(w, [0, 1])                     # TF up-conv weights are stored flipped
        return w.permute(3, 2, 0, 1).unsqueeze(0).contiguous()  # [1, out, in, kh, kw]

    def modconv(src, dst, flip=False, rgb=False):
        out[f"{dst}.conv.weight"] = conv_weight(tf[f"{src}/weight"], flip)
        out[f"{dst}.conv.modulation.weight"] = t(tf[f"{src}/mod_weight"]).t().contiguous()
        out[f"{dst}.conv.modulation.bias"] = t(tf[f"{src}/mod_bias"]) + 1  # TF adds 1 at run time
        if rgb:
            out[f"{dst}.bias"] = t(tf[f"{src}/bias"]).reshape(1, 3, 1, 1)
        else:
            out[f"{dst}.noise.weight"] = t(tf[f"{src}/noise_strength"]).reshape(1)
            out[f"{dst}.activate.bias"] = t(tf[f"{src}/bias"])

    out["input.input"] = t(tf["synthesis/4x4/Const/const"]).reshape(1, -1, 4, 4)
    modconv("synthesis/4x4/Conv", "conv1")
    modconv("synthesis/4x4/ToRGB", "to_rgb1", rgb=True)
    for k, log_r in enumerate(range(3, int(math.log2(size)) + 1)):
        r = 2 ** log_r
        modconv(f"synthesis/{r}x{r}/Conv0_up", f"convs.{2 * k}", flip=True)
        modconv(f"synthesis/{r}x{r}/Conv1", f"convs.{2 * k + 1}")
        modconv(f"synthesis/{r}x{r}/ToRGB", f"to_rgbs.{k}", rgb=True)
    n_noise = 2 * (int(math.log2(size)) - 2) + 1
    for j in range(n_noise):
        nz = t(tf[f"synthesis/noise{j}"])
        out[f"noises.noise_{j}"] = nz.reshape(1, 1, *nz.shape[-2:])
    _add_resample_kernels(out, size)
    latent_avg = t(tf["dlatent_avg"]) if "dlatent_avg" in tf else None
    return out, latent_avg


def convert_tf_discriminator(tf, size):
    """TF StyleGAN2 D variables (resnet) -> rosinality Discriminator state; no weight flips."""
    t = lambda a: torch.from_numpy(np.ascontiguousarray(a)).float()  # noqa: E731
    conv = lambda a: t(a).permute(3, 2, 0, 1).contiguous()           # noqa: E731
    out = OrderedDict()
    out["convs.0.0.weight"] = conv(tf[f"{size}x{size}/FromRGB/weight"])
    out["convs.0.1.bias"] = t(tf[f"{size}x{size}/FromRGB/bias"])
    for k, log_r in enumerate(range(int(math.log2(size)), 2, -1), start=1):
        r = 2 ** log_r
        out[f"convs.{k}.conv1.0.weight"] = conv(tf[f"{r}x{r}/Conv0/weight"])
        out[f"convs.{k}.conv1.1.bias"] = t(tf[f"{r}x{r}/Conv0/bias"])
        out[f"convs.{k}.conv2.1.weight"] = conv(tf[f"{r}x{r}/Conv1_down/weight"])
        out[f"convs.{k}.conv2.2.bias"] = t(tf[f"{r}x{r}/Conv1_down/bias"])
        out[f"convs.{k}.skip.1.weight"] = conv(tf[f"{r}x{r}/Skip/weight"])
    out["final_conv.0.weight"] = conv(tf["4x4/Conv/weight"])
    out["final_conv.1.bias"] = t(tf["4x4/Conv/bias"])
    out["final_linear.0.weight"] = t(tf["4x4/Dense0/weight"]).t().contiguous()
    out["final_linear.0.bias"] = t(tf["4x4/Dense0/bias"])
    out["final_linear.1.weight"] = t(tf["Output/weight"]).t().contiguous()
    out["final_linear.1.bias"] = t(tf["Output/bias"])
    _add_resample_kernels(out, size, discriminator=True)
    return out


def load_nvidia_pkl(path):
    """NVIDIA StyleGAN2(-ADA) pickle -> our checkpoint dict ("g_ema", "g", "d", "latent_avg", "args").

    PyTorch pickles: a dict with G, D, G_ema persistent objects. TF-era pickles: a tuple
    (G, D, Gs) of tflib Networks. Nothing from the file is executed (RestrictedUnpickler).
    """
    try:
        with open(path, "rb") as f:
            data = RestrictedUnpickler(f).load()
    except pickle.UnpicklingError as e:
        raise CheckpointError(f"{path}: unsafe or unsupported pickle ({e})") from None
    except Exception as e:
        raise CheckpointError(f"{path}: truncated or corrupt pickle ({_first_line(e)})") from None

    ckpt, mbstd_group = {}, None
    try:
        if isinstance(data, dict) and isinstance(data.get("G_ema"), PersistentObject):
            g_sd = _persistent_state_dict(data["G_ema"])
            size = int(g_sd["synthesis.b4.const"].shape[-1] * 2 ** sum(
                1 for k in g_sd if k.startswith("synthesis.b") and k.endswith(".torgb.weight") and "b4." not in k))
            ckpt["g_ema"], w_avg = convert_nvidia_generator(g_sd, size)
            if isinstance(data.get("G"), PersistentObject):
                ckpt["g"], _ = convert_nvidia_generator(_persistent_state_dict(data["G"]), size)
            if isinstance(data.get("D"), PersistentObject):
                ckpt["d"] = convert_nvidia_discriminator(_persistent_state_dict(data["D"]), size)
                mbstd_group = _nvidia_mbstd_group(data["D"])
            ckpt["format"] = "nvidia-pytorch"
        elif isinstance(data, tuple) and len(data) == 3 and all(isinstance(n, TFNetworkStub) for n in data):
            tf_g, tf_d, tf_gs = (_tf_params(n) for n in data)
            size = 2 ** (sum(1 for k in tf_gs if k.endswith("/ToRGB/weight")) + 1)
            ckpt["g_ema"], w_avg = convert_tf_generator(tf_gs, size)
            ckpt["g"], _ = convert_tf_generator(tf_g, size)
            ckpt["d"] = convert_tf_discriminator(tf_d, size)
            group = (data[1].state.get("static_kwargs") or {}).get("mbstd_group_size")  # D_stylegan2(..., mbstd_group_size)
            if group is not None:
                if not isinstance(group, int) or group < 1:
                    raise pickle.UnpicklingError(f"mbstd_group_size {group!r} is not a positive int")
                mbstd_group = group
            ckpt["format"] = "nvidia-tf"
        else:
            raise CheckpointError(f"{path}: pickle holds neither NVIDIA G/D/G_ema nor a TF (G, D, Gs) tuple")
        if w_avg is not None:
            ckpt["latent_avg"] = torch.as_tensor(w_avg).float()
        ckpt["args"] = dict(generator_config_from_state(ckpt["g_ema"]))
    except KeyError as e:
        raise CheckpointError(f"{path}: NVIDIA network without expected parameter {e} "
                              "(only the StyleGAN2 skip generator / resnet discriminator is supported)") from None
    except CheckpointError:
        raise
    except Exception as e:  # allowed objects in the wrong places: a list where a dict belongs, ...
        raise CheckpointError(f"{path}: not the structure of an NVIDIA StyleGAN2 network "
                              f"({_first_line(e)})") from None
    if mbstd_group:
        ckpt["args"]["mbstd_group"] = mbstd_group  # NVlabs configs differ (4, or 8 for paper256)
    return ckpt


# ---------------------------------------------------------------------------------------------
# Data: image folder and per-step batches
# ---------------------------------------------------------------------------------------------
IMAGE_EXTENSIONS = ops.IMAGE_EXTENSIONS  # pytorch-fid's, any case (ops.image_files), so FID sees what D sees
_LANCZOS = getattr(Image, "Resampling", Image).LANCZOS


def _to_rgb(img):
    """Any PIL mode -> RGB; transparent images are composited on white."""
    has_alpha = img.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in img.info
    if has_alpha:
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    if img.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N"):
        # 16-bit grayscale (e.g. PNG): PIL's own conversion clips at 255 instead of scaling
        arr = np.asarray(img, dtype=np.float64) / 257.0
        img = Image.fromarray(np.clip(np.rint(arr), 0, 255).astype(np.uint8))  # mode L
    return img.convert("RGB")


def _load_image(path, size):
    """Read one file -> (uint8 array [size, size, 3], resized?, cropped?). Raises on a bad file,
    including a decompression bomb (a huge declared size with little data behind it)."""
    with ops.pil_bombs_are_errors(), Image.open(path) as img:
        img.load()
        img = _to_rgb(img)
    resized = cropped = False
    if img.size != (size, size):
        w, h = img.size
        if w != h:  # centre-crop to a square first so faces are not stretched
            side = min(w, h)
            left, top = (w - side) // 2, (h - side) // 2
            img = img.crop((left, top, left + side, top + side))
            cropped = True
        img = img.resize((size, size), _LANCZOS)
        resized = True
    return np.asarray(img, dtype=np.uint8), resized, cropped


class ImageFolderDataset(torch.utils.data.Dataset):
    """The images of one folder (not recursive, sorted by name) as float tensors [3, size, size] in [-1, 1].

    Reads .png/.jpg/.jpeg/.webp/.bmp in any mode (grayscale, palette, 16-bit, RGBA composited on
    white), resizes images that are not size x size with Lanczos (centre-cropping non-square ones
    first; one note says how many), skips unreadable files with one warning naming them.
    xflip=True doubles the data set with mirrored copies, as NVlabs `--mirror`: item i + N is the
    flipped item i, so every epoch shows each image once each way.
    in_memory=True keeps the decoded uint8 images (N * 3 * size^2 bytes: 500 images at 256 px are
    98 MB); False re-reads each file when it is asked for.
    """

    def __init__(self, folder, size, xflip=True, in_memory=True):
        folder = os.fspath(folder)
        if not os.path.exists(folder):
            raise FileNotFoundError(f"{folder}: data folder not found")
        if not os.path.isdir(folder):
            raise NotADirectoryError(f"{folder}: not a folder (--data takes a folder of images)")
        if not isinstance(size, int) or size < 1:
            raise ValueError(f"image size must be a positive int, got {size!r}")
        names = [os.path.basename(p) for p in ops.image_files(folder)]
        self.folder, self.size, self.xflip = folder, size, xflip
        self.paths, images, bad = [], [], []
        n_resized = n_cropped = 0
        for name in names:
            path = os.path.join(folder, name)
            try:
                arr, resized, cropped = _load_image(path, size)
            except (OSError, ValueError, SyntaxError, Image.DecompressionBombError,
                    Image.DecompressionBombWarning) as e:
                bad.append(f"{path}: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else 'unreadable'}")
                continue
            self.paths.append(path)
            n_resized, n_cropped = n_resized + resized, n_cropped + cropped
            if in_memory:
                images.append(torch.from_numpy(arr.copy()).permute(2, 0, 1))  # [3, size, size] uint8
        for line in bad[:10]:  # one line per file (ops.readable_warnings prints them as WARNING: ...)
            warnings.warn(f"{line} (skipped)")
        if len(bad) > 10:
            warnings.warn(f"{folder}: {len(bad) - 10} more unreadable images skipped")
        self.skipped = bad
        if not self.paths:
            found = f" ({len(bad)} unreadable)" if bad else ""
            raise ValueError(f"{folder}: no readable images ({', '.join(IMAGE_EXTENSIONS)}) in this folder{found}")
        if n_resized:
            print(f"note: {n_resized} of {len(self.paths)} images in {folder} are not {size}x{size} and were "
                  f"resized with Lanczos ({n_cropped} centre-cropped to a square first)", file=sys.stderr)
        self.images = torch.stack(images) if in_memory else None  # [N, 3, size, size] uint8
        self.num_resized = n_resized

    def __len__(self):
        return len(self.paths) * (2 if self.xflip else 1)

    def __getitem__(self, index):
        n = len(self.paths)
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} images")
        index %= len(self)
        i, flip = index % n, index >= n
        if self.images is not None:
            img = self.images[i]
        else:
            img = torch.from_numpy(_load_image(self.paths[i], self.size)[0].copy()).permute(2, 0, 1)
        img = img.float() / 127.5 - 1.0  # uint8 [0, 255] -> [-1, 1], as NVlabs' training loop
        return img.flip(2) if flip else img  # [3, size, size]


class StepBatchSampler:
    """Endless batches of data-set indices for iterations start, start+1, ...

    Epoch e is the DistributedSampler permutation for (seed, e) (this process's share under
    torchrun), cut into full batches; iteration i takes batch i % per_epoch of epoch i // per_epoch.
    So the data of each iteration depend only on the seed and i, and --resume continues exactly.
    """

    def __init__(self, sampler, batch, start):
        self.sampler, self.batch, self.start = sampler, batch, start
        self.per_epoch = len(sampler) // batch
        if self.per_epoch == 0:
            raise ValueError(f"the sampler gives no full batch: {len(sampler)} indices, batch {batch}")

    def __iter__(self):
        step = self.start
        while True:
            epoch, offset = divmod(step, self.per_epoch)
            self.sampler.set_epoch(epoch)
            idx = list(self.sampler)
            for k in range(offset, self.per_epoch):
                yield idx[k * self.batch:(k + 1) * self.batch]
            step = (epoch + 1) * self.per_epoch




# ---- Settings: defaults < preset < command line (< the run's settings with --resume) ---------
# The run's plumbing: where, how often, how much FID, which device (the method's values are
# HYPERPARAMETERS above the plumbing line). Together they are every train flag's default.
RUN_DEFAULTS = {
    "data": None, "out": None, "ckpt": None,
    "seed": 0,
    "n_sample": 16,            # images in each sample grid (fixed latents)
    "sample_every": 500, "ckpt_every": 2000, "keep": 3, "log_every": 10,
    "fid_every": 1000,         # 0 = no FID during training
    "fid_n": 5000,             # generated images per FID (FreezeD evaluates 5000)
    "fid_batch": 50, "inception": None,
    "fid_cache": None,         # cached real-image features (default RUN/fid_cache)
    "fid_dims": 2048,          # Inception features (2048 = pool3, the FID standard; less: smoke tests)
    "num_workers": 2, "device": None, "progress": True,
    "precision": None,         # fp32 | bf16 | fp16; None = per device (default_precision)
    "batch_gpu": None,         # images per forward/backward; the batch is accumulated (None = all at once)
}
TRAIN_DEFAULTS = {**RUN_DEFAULTS, **HYPERPARAMETERS}
# Settings that may change when a run is continued with --resume; all others come from the run.
RESUME_OVERRIDABLE = ("data", "iter", "n_sample", "sample_every", "ckpt_every", "keep", "log_every",
                      "fid_every", "fid_n", "fid_batch", "inception", "fid_cache", "fid_dims", "num_workers",
                      "device", "progress", "precision", "batch_gpu")
# Architecture settings that a --ckpt or --resume checkpoint decides.
ARCH_KEYS = ("size", "style_dim", "n_mlp", "channel_multiplier", "channel_max")


class TrainError(SystemExit):
    """Bad input for training: exits with the one-line message (status 1)."""

    def __init__(self, message):
        super().__init__("error: " + message)


def _given(args, key):
    value = getattr(args, key, None)
    return value is not None


def resolve_settings(args, stored=None, ckpt_arch=None):
    """Resolve the training settings into a new Namespace plus a dict naming each value's source.

    stored: the settings dict of the run being resumed (then only RESUME_OVERRIDABLE flags count);
    ckpt_arch: the architecture read from --ckpt (size, style_dim, n_mlp, channel_multiplier,
    channel_max), which flags may repeat but not contradict.
    """
    s, src = dict(TRAIN_DEFAULTS), {k: "default" for k in TRAIN_DEFAULTS}
    if stored is not None:
        for key, value in stored.items():
            if key in s:
                s[key], src[key] = value, "run"
        for key in TRAIN_DEFAULTS:
            if _given(args, key) and key in RESUME_OVERRIDABLE:
                s[key], src[key] = getattr(args, key), "flag"
            elif _given(args, key) and key not in ("out",) and getattr(args, key) != s[key]:
                print(f"note: --{key.replace('_', '-')} {getattr(args, key)} ignored with --resume "
                      f"(the run's value {s[key]!r} is used)")
        return argparse.Namespace(**s), src

    preset = getattr(args, "preset", None)
    if preset is not None:
        if preset not in PRESETS:
            raise TrainError(f"unknown --preset {preset!r}; choose one of {', '.join(PRESETS)}")
        for key, value in PRESETS[preset].items():
            s[key], src[key] = value, "preset " + preset
    for key in TRAIN_DEFAULTS:
        if _given(args, key):
            s[key], src[key] = getattr(args, key), "flag"

    if ckpt_arch is not None:
        for key in ARCH_KEYS:
            if src[key] == "flag" and s[key] != ckpt_arch[key]:
                raise TrainError(f"{s['ckpt']}: the checkpoint has {key.replace('_', '-')} "
                                 f"{ckpt_arch[key]}, but --{key.replace('_', '-')} {s[key]} was given")
            s[key], src[key] = ckpt_arch[key], "checkpoint"
        if ckpt_arch.get("mbstd_group"):
            s["mbstd_group"], src["mbstd_group"] = ckpt_arch["mbstd_group"], "checkpoint"

    size = s["size"]
    if not (isinstance(size, int) and 16 <= size <= 1024 and size & (size - 1) == 0):
        raise TrainError(f"--size {size}: must be a power of two in 16..1024")
    log_size = int(math.log2(size))
    for key in ("freeze_d", "freeze_g"):
        if src[key].startswith("preset") and s[key] > 0:
            # shift the 256-px block count so that the same blocks train (the lowest-resolution D
            # blocks, the highest-resolution G blocks)
            s[key] = max(0, s[key] + log_size - int(math.log2(PRESET_FREEZE_D_SIZE)))
    if s["ada_kimg"] is None:
        s["ada_kimg"] = 100 if s["ckpt"] else 500  # NVlabs: 100 when starting from a pickle
        src["ada_kimg"] = "default with --ckpt" if s["ckpt"] else "default"
    if s["ada_p"] is not None and s["augment"] != "ada":
        if src["augment"] == "flag":
            raise TrainError(f"--ada-p needs --augment ada (got --augment {s['augment']})")
        s["augment"], src["augment"] = "ada", "--ada-p"
    _check_settings(s)
    return argparse.Namespace(**s), src


def _check_settings(s):
    log_size = int(math.log2(s["size"]))
    if s["augment"] not in ("none", "ada", "diffaug"):
        raise TrainError(f"--augment {s['augment']!r}: choose none, ada or diffaug")
    if not 0 <= s["freeze_d"] <= log_size - 2:
        raise TrainError(f"--freeze-d {s['freeze_d']}: a {s['size']} px discriminator has "
                         f"{log_size - 2} blocks (0..{log_size - 2})")
    if not 0 <= s["freeze_g"] <= log_size - 2:
        raise TrainError(f"--freeze-g {s['freeze_g']}: a {s['size']} px generator has {log_size - 1} "
                         f"blocks and at least the last must train (0..{log_size - 2})")
    if s["batch"] < 1 or s["iter"] < 0 or s["keep"] < 1:
        raise TrainError("--batch and --keep must be >= 1 and --iter >= 0")
    for key in ("log_every", "sample_every", "ckpt_every", "ada_interval"):  # intervals (x % 0 fails)
        if s[key] < 1:
            raise TrainError(f"--{key.replace('_', '-')} {s[key]}: must be at least 1")
    if s["ada_p"] is not None and not 0 <= s["ada_p"] <= 1:
        raise TrainError(f"--ada-p {s['ada_p']}: must be in [0, 1]")
    _check_cdc(s, log_size)


def _check_cdc(s, log_size):
    if not (s["cdc_kl_weight"] > 0 or s["cdc_subspace_freq"] > 0):
        return
    if not s["ckpt"]:
        raise TrainError("CDC adapts a source model: give --ckpt SOURCE (G_s is its generator)")
    if s["cdc_kl_weight"] < 0 or s["cdc_subspace_freq"] < 0 or s["cdc_anchors"] < 1 or s["cdc_anchor_std"] < 0:
        raise TrainError("--cdc-kl-weight, --cdc-subspace-freq and --cdc-anchor-std must be >= 0, --cdc-anchors >= 1")
    if s["cdc_feat_batch"] < 3:
        raise TrainError(f"--cdc-feat-batch {s['cdc_feat_batch']}: needs at least 3 samples (a softmax over "
                         f"the other samples' similarities)")
    res = s["cdc_patch_res"] or max(s["size"] // 8, 8)
    options = [s["size"] // 2 ** j for j in range(1, log_size - 1)]
    if res not in options:
        raise TrainError(f"--cdc-patch-res {res}: a {s['size']} px discriminator's blocks give "
                         f"{', '.join(map(str, options))} px")


def print_settings(cfg, src, world=1):
    """Print the resolved settings with their sources and the derived optimiser numbers."""
    print("settings (source):")
    for key in TRAIN_DEFAULTS:
        print(f"  {key:<20} {getattr(cfg, key)!r:<28} ({src.get(key, 'default')})")
    for name, k in (("G", cfg.g_reg_every), ("D", cfg.d_reg_every)):
        c = k / (k + 1) if k > 0 else 1.0
        print(f"  {name} Adam: lr {cfg.lr * c:.6g}, betas ({0.0 ** c:g}, {0.99 ** c:.6f})"
              f" (lazy regularization every {k}: c = {c:.4f})")
    print(f"  batch per process {cfg.batch // world} x {world} process(es); "
          f"EMA beta {ema_beta(cfg.batch, cfg.ema_kimg, 0, 1):.6f} per iteration")


# ---- Run folder: sample grids, checkpoints, RNG state ----------------------------------------
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


def save_image_grid(images, path, nrow):
    """images [N, 3, H, W] in [-1, 1] -> one PNG grid, nrow images per row (to_uint8, as `generate`)."""
    n, c, h, w = images.shape
    x = to_uint8(images.detach().float().cpu())  # [N, H, W, 3]
    grid = torch.zeros(math.ceil(n / nrow) * h, nrow * w, c, dtype=torch.uint8)
    for i in range(n):
        r, q = divmod(i, nrow)
        grid[r * h:(r + 1) * h, q * w:(q + 1) * w] = x[i]
    runs.save_image(Image.fromarray(grid.numpy()), path)  # whole or not at all


def rng_state(device):
    """RNG states of torch (CPU and CUDA), numpy and Python as tensors/numbers/lists, so that the
    checkpoint loads with torch.load(weights_only=True)."""
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    py_version, py_state, py_gauss = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
        "numpy": {"name": np_name, "keys": torch.from_numpy(np_keys.astype(np.int64)), "pos": int(np_pos),
                  "has_gauss": int(np_has_gauss), "gauss": float(np_gauss)},
        "python": {"version": py_version, "state": torch.tensor(py_state, dtype=torch.int64),
                   "gauss": py_gauss},
    }


def set_rng_state(state, device):
    torch.set_rng_state(state["torch"])
    if state.get("cuda") is not None and device.type == "cuda":
        torch.cuda.set_rng_state(state["cuda"], device)
    n = state["numpy"]
    keys = n["keys"].numpy().astype(np.uint32)
    np.random.set_state((n["name"], keys, n["pos"], n["has_gauss"], n["gauss"]))
    p = state["python"]
    random.setstate((p["version"], tuple(int(v) for v in p["state"].tolist()), p["gauss"]))


def seed_everything(seed):
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def checkpoint_files(folder):
    """Numbered checkpoints (000500.pt ...) in `folder`, oldest first (best.pt excluded)."""
    if not os.path.isdir(folder):
        return []
    names = [n for n in os.listdir(folder) if n.endswith(".pt") and n[:-3].isdigit()]
    return [os.path.join(folder, n) for n in sorted(names, key=lambda n: int(n[:-3]))]


class ResumeError(TrainError):
    """--resume cannot continue: the message names the folder or file and what is wrong."""


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


# ---- train(args) -----------------------------------------------------------------------------
def parse_device(flag):
    """--device value -> torch.device (None or auto: cuda, then mps, then cpu); a one-line SystemExit
    if unusable."""
    return ops.resolve_device(flag)


def mean_over_processes(t):
    """The mean of tensor t over the torchrun processes (all-reduce; NCCL needs a CUDA tensor).
    The one place where the training reads another process's numbers: path-length mean, ADA sign
    statistics, logged values, the stop flag."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return t
    x = t.detach().clone()
    if dist.get_backend() == "nccl" and x.device.type != "cuda":
        x = x.cuda()
    dist.all_reduce(x)
    return (x / dist.get_world_size()).to(t.device)


# CUDA's out-of-memory error (torch.OutOfMemoryError in newer torch)
OUT_OF_MEMORY = runs.OUT_OF_MEMORY


def _setup_distributed(device_flag):
    """torchrun sets WORLD_SIZE/RANK/LOCAL_RANK: then one process per device (nccl on GPU, gloo on
    CPU). Returns (rank, world, device)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return 0, 1, parse_device(device_flag)
    cuda = torch.cuda.is_available() and device_flag != "cpu"
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if cuda:
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
    else:
        device = torch.device("cpu")
    if not dist.is_initialized():
        dist.init_process_group("nccl" if cuda else "gloo")
    return rank, world, device


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


def _open_start_checkpoint(path):
    """--ckpt: ours, rosinality .pt or NVIDIA .pkl (through load_checkpoint). Returns (dict, g_ema)
    with g_ema built from the stored weights, which also tells the architecture."""
    ckpt = load_checkpoint(path)
    which = "g_ema" if "g_ema" in ckpt else "g"
    if which not in ckpt:
        raise TrainError(f"{path}: no generator weights ('g_ema' or 'g') in this checkpoint")
    try:
        g_ema = build_generator_from_state(ckpt[which], ckpt.get("args"), where=f"{path} ['{which}']")
    except ValueError as e:  # e.g. a size that is not a power of two
        raise TrainError(f"{path} ['{which}']: {e}") from None
    return ckpt, g_ema


def _arch_of(g):
    return {"size": g.size, "style_dim": g.style_dim, "n_mlp": g.n_mlp,
            "channel_multiplier": g.channel_multiplier, "channel_max": g.channel_max}


def _load_resume_checkpoint(file):
    """One of this script's training checkpoints (all the keys the loop restores), for --resume."""
    ckpt = load_checkpoint(file)
    for key in ("g", "d", "g_ema", "g_optim", "d_optim", "args", "step"):
        if key not in ckpt:
            raise CheckpointError(f"{file}: not a training checkpoint of this script (no {key!r}); "
                                  f"use --ckpt to start a new run from it")
    return ckpt


def _open_resume(path, out=None):
    """--resume RUN (folder: its newest checkpoint that loads) or a checkpoint file (see
    find_resume). Returns (run, file, ckpt, stored settings); file and ckpt are None for a run
    stopped before its first checkpoint, which starts again from step 0 with RUN/settings.json."""
    run, file, ckpt = open_resume(path, out, _load_resume_checkpoint)
    if ckpt is not None:
        return run, file, ckpt, ckpt["args"]
    return run, None, None, read_run_settings(run, ("channel_multiplier", "r1_gamma"))


def make_fid_evaluator(cfg, device):
    """ops.fid.Evaluator on the training images (their features cached in --fid-cache), or None
    with one notice when ops/fid or the Inception weights are unavailable: training runs on."""
    try:
        from ops import fid_eval as fid_ops  # imported here: it pulls in torchvision
    except ImportError as e:
        print(f"notice: FID is off, ops/fid cannot be imported ({e})")
        return None
    try:
        return fid_ops.Evaluator(cfg.data, inception=cfg.inception, device=device, batch_size=cfg.fid_batch,
                                 cache_dir=cfg.fid_cache or os.path.join(cfg.out, "fid_cache"),
                                 n_gen=cfg.fid_n, dims=cfg.fid_dims)
    except fid_ops.InceptionWeightsMissing as e:
        print(f"notice: FID is off, training runs on without it: {e} (or --fid-every 0)")
        return None


def train(args):
    """Train StyleGAN2 (from scratch, from --ckpt, or continuing --resume RUN); see the module docstring.

    Each iteration: D step, R1 every d_reg_every, G step, path length every g_reg_every, G_ema; then
    ADA p, log, sample grid, FID, checkpoint. Returns the resolved settings (Namespace).
    """
    ops.set_ops(getattr(args, "ops", None) or "auto")
    if getattr(args, "dry_run", False):  # settings only: no device, no process group
        return _train(args, int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1")), None)
    rank, world, device = _setup_distributed(getattr(args, "device", None))
    try:
        return _train(args, rank, world, device)
    finally:
        if world > 1 and dist.is_initialized():
            dist.destroy_process_group()


def _train(args, rank, world, device):
    """The run as a list of stages; each is a function below."""
    main = rank == 0
    say = print if main else (lambda *a, **k: None)
    dry = getattr(args, "dry_run", False)
    lock = _lock_existing_run(args) if main and not dry else None   # before anything in it is touched
    try:
        cfg, src, start, resume = _settings(args, say)              # settings, start weights
        if dry:
            if main:
                print_settings(cfg, src, world)
            return cfg
        dataset, sampler, batch = _read_inputs(args, cfg, rank, world)  # every check before any write
        if main:
            print_settings(cfg, src, world)
        t = _build_training(cfg, start, device, say)                # networks, optimisers, augmentation
        if resume is not None:
            _restore(t, *resume, say)
        if main and lock is None:
            lock = runs.RunLock(cfg.out)                            # a new run folder: ours from now on
        try:
            return _run(args, cfg, t, dataset, sampler, batch, resume, rank, world, device, say)
        except OSError as e:
            if runs.is_write_failure(e):  # disk full, read-only, vanished: one line, the run resumes later
                raise SystemExit(runs.write_failure(e, cfg.out, os.path.basename(__file__))) from None
            raise
    finally:
        if lock is not None:
            lock.release()


def _lock_existing_run(args):
    """--resume RUN of this script: its lock (one line if another trainer holds it), taken before
    the stray temporary files go and the logs are cut. Nothing is created in a folder that is not
    this script's run (its settings.json is checked first); a run continued into a new --out, or a
    new run, is locked when its folder is made."""
    if not getattr(args, "resume", None):
        return None
    run = find_resume(args.resume, getattr(args, "out", None))[0]
    if not os.path.isfile(os.path.join(run, "settings.json")):
        return None
    read_run_settings(run, ("channel_multiplier", "r1_gamma"))  # another script's run: one line, untouched
    return runs.RunLock(run)


def _run(args, cfg, t, dataset, sampler, batch, resume, rank, world, device, say):
    """The run folder, the step, the data, the outputs, then the loop."""
    main = rank == 0
    if main:
        _prepare_run_folder(cfg, resumed=getattr(args, "resume", None), start=t.step if resume else -1,
                            dataset_skipped=dataset.skipped)
    step = _choose_step(t, cfg, batch, world, device, say)          # train_step, or the scale-out step
    loader = iter(DataLoader(dataset, batch_sampler=StepBatchSampler(sampler, batch, t.step),
                             num_workers=cfg.num_workers, pin_memory=device.type == "cuda",
                             generator=torch.Generator().manual_seed(cfg.seed + rank)))
    run = _RunOutputs(t, cfg, device, main)                         # samples, checkpoints, FID, log
    if main and t.step == 0:
        run.samples(0)
        if run.evaluator is not None:  # the starting point: for transfer, the source model on the new data
            run.fid(0)
    # training randomness differs per process; after a resume process 0 continues its exact stream
    seed_everything(cfg.seed + 1000 * (rank + 1) + (0 if resume is None or main else t.step))
    if resume is not None and main and resume[1].get("rng") is not None:
        set_rng_state(resume[1]["rng"], device)
    _loop(t, cfg, loader, step, run, batch, world, device, say)
    if main and dataset.skipped:
        say(f"skipped {len(dataset.skipped)} unreadable image(s) of {cfg.data}, listed in "
            f"{os.path.join(cfg.out, 'skipped.txt')}")
    return cfg


class Training:
    """What the loop reads and a checkpoint restores: the networks, their optimisers, the
    augmentation (ADA's pipe and its p controller), the path-length mean, the step, the best FID."""

    def __init__(self, g, d, g_ema, g_optim, d_optim, augment, adaptive, pl_mean):
        self.g, self.d, self.g_ema = g, d, g_ema
        self.g_optim, self.d_optim = g_optim, d_optim
        self.augment, self.adaptive = augment, adaptive
        self.pipe = augment if isinstance(augment, AugmentPipe) else None
        self.pl_mean = pl_mean
        self.step, self.best_fid = 0, None
        self.cdc = None  # CrossDomainCorrespondence (preset cdc): G_s, the patch head, the anchors


def _settings(args, say):
    """Resolve the settings; read the start checkpoint (--ckpt) or the run to continue (--resume).
    Returns (cfg, src, start, resume): start = (ckpt dict, its g_ema) or None, resume = (file, ckpt)
    or None (also for a run restarted from step 0 because it has no checkpoint yet)."""
    start, resume = None, None
    if getattr(args, "resume", None):
        run, resume_file, ckpt, stored = _open_resume(args.resume, getattr(args, "out", None))
        cfg, src = resolve_settings(args, stored=stored)
        cfg.out = run
        if ckpt is not None:
            resume = (resume_file, ckpt)
        elif cfg.ckpt:  # restarting a run that has no checkpoint yet: its start weights
            start = _open_start_checkpoint(cfg.ckpt)
        if getattr(args, "preset", None) is not None or getattr(args, "ckpt", None) is not None:
            say("note: --preset and --ckpt are ignored with --resume (the run's settings and weights "
                "are used)")
        return cfg, src, start, resume
    if getattr(args, "ckpt", None):
        start = _open_start_checkpoint(args.ckpt)
    arch = None
    if start is not None:
        arch = dict(_arch_of(start[1]), mbstd_group=(start[0].get("args") or {}).get("mbstd_group"))
    cfg, src = resolve_settings(args, ckpt_arch=arch)
    if getattr(args, "preset", None) is not None and not cfg.ckpt:
        say("note: the presets are transfer settings (the seed experiment starts from an FFHQ "
            "model); without --ckpt this run starts from random weights")
    return cfg, src, start, resume


def _read_inputs(args, cfg, rank, world):
    """The checks that need no network: folders, batch sizes, the data set. Returns (dataset, this
    process's sampler, batch per process)."""
    if cfg.data is None or cfg.out is None:
        raise TrainError("--data DIR and --out RUN are needed (or --resume RUN)")
    if cfg.batch % world:
        raise TrainError(f"--batch {cfg.batch} must be divisible by the number of processes ({world})")
    batch = cfg.batch // world  # per process
    group = cfg.mbstd_group  # minibatch standard deviation group size (4; 8 in NVIDIA's paper256 pickles)
    if batch % min(batch, group):
        raise TrainError(f"batch per process {batch}: must be below {group} or a multiple of {group} "
                         f"(minibatch standard deviation groups of {group})")
    if cfg.batch_gpu is not None and (cfg.batch_gpu < 1 or batch % cfg.batch_gpu
                                      or cfg.batch_gpu % min(cfg.batch_gpu, group)):
        raise TrainError(f"--batch-gpu {cfg.batch_gpu}: must divide the batch per process ({batch}) and "
                         f"be below {group} or a multiple of {group} (minibatch standard deviation groups of {group})")
    try:  # read before anything is written; xflip: mirrored copies, as NVlabs --mirror
        dataset = ImageFolderDataset(cfg.data, cfg.size, xflip=cfg.xflip)
    except (OSError, ValueError) as e:
        raise TrainError(str(e)) from None
    sampler = DistributedSampler(dataset, num_replicas=world, rank=rank, shuffle=True, seed=cfg.seed,
                                 drop_last=True)
    if len(sampler) < batch:
        raise TrainError(f"{cfg.data}: {len(dataset)} images (with mirrored copies) are fewer than "
                         f"one batch ({batch} per process)")
    if not getattr(args, "resume", None) and rank == 0 and os.path.isdir(cfg.out) and \
            [n for n in os.listdir(cfg.out) if n != runs.LOCK_NAME]:
        raise TrainError(f"{cfg.out}: run folder exists and is not empty; continue it with "
                         f"--resume {cfg.out} or choose another --out")
    return dataset, sampler, batch


def _build_training(cfg, start, device, say):
    """G, D and G_ema (from --ckpt, or random with the same weights in every process), FreezeD /
    FreezeG, the lazily corrected Adam optimisers and what D sees (ADA, DiffAugment, nothing)."""
    seed_everything(cfg.seed)  # same initial weights in every process
    arch = dict(style_dim=cfg.style_dim, n_mlp=cfg.n_mlp, channel_multiplier=cfg.channel_multiplier,
                channel_max=cfg.channel_max)
    g = Generator(cfg.size, **arch).to(device)
    d = Discriminator(cfg.size, channel_multiplier=cfg.channel_multiplier, channel_max=cfg.channel_max,
                      mbstd_group=cfg.mbstd_group).to(device)
    if start is not None:
        ckpt, g_ema = start[0], start[1].to(device)
        which = "g" if "g" in ckpt else "g_ema"
        load_state_checked(g, ckpt[which], f"{cfg.ckpt} ['{which}']")
        if "d" in ckpt:
            load_state_checked(d, ckpt["d"], f"{cfg.ckpt} ['d']")
        elif cfg.freeze_d > 0:
            raise TrainError(f"{cfg.ckpt}: has no discriminator weights ('d'), so --freeze-d has "
                             f"nothing to keep")
        else:
            say(f"note: {cfg.ckpt} has no discriminator weights; D starts from random weights")
    else:
        g_ema = copy.deepcopy(g)
    g_ema.eval().requires_grad_(False)

    g_params, g_frozen = split_frozen(g, frozen_prefixes_g(cfg.freeze_g))
    d_params, d_frozen = split_frozen(d, frozen_prefixes_d(cfg.freeze_d))
    if g_frozen or d_frozen:
        say(f"frozen: {len(g_frozen)} G tensors (FreezeG {cfg.freeze_g}), "
            f"{len(d_frozen)} D tensors (FreezeD {cfg.freeze_d})")
    g_optim = lazy_adam(g_params, cfg.lr, cfg.g_reg_every)
    d_optim = lazy_adam(d_params, cfg.lr, cfg.d_reg_every)

    # what D sees: ADA's 'bgc' pipeline (p from AdaptiveP, or --ada-p), DiffAugment, or nothing
    augment = make_augment(cfg.augment, p=cfg.ada_p or 0.0, policy=cfg.diffaug_policy).to(device)
    adaptive = None
    if cfg.augment == "ada" and cfg.ada_p is None:
        adaptive = AdaptiveP(target=cfg.ada_target, interval=cfg.ada_interval, kimg=cfg.ada_kimg,
                             batch_size=cfg.batch, p=0.0)
    t = Training(g, d, g_ema, g_optim, d_optim, augment, adaptive, torch.zeros((), device=device))
    if cfg.cdc_kl_weight > 0 or cfg.cdc_subspace_freq > 0:  # G_s = the starting G, frozen
        t.cdc = CrossDomainCorrespondence(
            copy.deepcopy(g), d, cdc_patch_res(cfg), subspace_freq=cfg.cdc_subspace_freq,
            n_anchors=cfg.cdc_anchors, anchor_std=cfg.cdc_anchor_std, feat_batch=cfg.cdc_feat_batch).to(device)
        if cfg.cdc_subspace_freq > 0:  # the patch head trains with D (train.py's e_optim: D's settings)
            d_optim.add_param_group({"params": list(t.cdc.patch_head.parameters())})
        say(f"CDC: distance consistency x {cfg.cdc_kl_weight:g}" + (
            f", anchors every {cfg.cdc_subspace_freq} iterations, patch logits at {cdc_patch_res(cfg)} px"
            if cfg.cdc_subspace_freq > 0 else ""))
    return t


def cdc_patch_res(cfg):
    """CDC's patch resolution: --cdc-patch-res, else size / 8 (32 at 256 px, as train.py), at least 8."""
    return cfg.cdc_patch_res or max(cfg.size // 8, 8)


def _restore(t, file, ckpt, say):
    """--resume: networks, optimisers, step, best FID, path-length mean, ADA's p and its statistics."""
    for net, key in ((t.g, "g"), (t.d, "d"), (t.g_ema, "g_ema")):
        load_state_checked(net, ckpt[key], f"{file} ['{key}']")
    t.g_optim.load_state_dict(ckpt["g_optim"])
    t.d_optim.load_state_dict(ckpt["d_optim"])
    t.step, t.best_fid = int(ckpt["step"]), ckpt.get("best_fid")
    t.pl_mean.fill_(float(ckpt.get("pl_mean", 0.0)))
    if t.adaptive is not None and ckpt.get("ada_state") is not None:
        t.adaptive.load_state_dict(ckpt["ada_state"])
    if t.pipe is not None:
        t.pipe.p = float(ckpt.get("ada_p", t.pipe.p))
    if t.cdc is not None:
        load_state_checked(t.cdc, ckpt["cdc"], f"{file} ['cdc']")
    say(f"resuming {file} at iteration {t.step}")


def _prepare_run_folder(cfg, resumed, start, dataset_skipped=()):
    """RUN/samples, RUN/checkpoints and RUN/settings.json (only now: bad input leaves nothing behind);
    on --resume, what a killed run logged after its checkpoint (start; -1 = no checkpoint) goes."""
    if not os.path.isfile(os.path.join(cfg.out, "settings.json")):  # first: a run whose first write fails
        runs.write_atomic(os.path.join(cfg.out, "settings.json"),  # is still an empty folder, made anew
                          lambda f: json.dump(vars(cfg), f, indent=1), mode="w")
    for sub in ("samples", "checkpoints"):
        os.makedirs(os.path.join(cfg.out, sub), exist_ok=True)
    if resumed:
        cut_run_logs(cfg.out, start)
    if dataset_skipped:  # the data files this run could not read, one per line
        runs.write_atomic(os.path.join(cfg.out, "skipped.txt"), lambda f: f.write("\n".join(dataset_skipped) + "\n"),
                          mode="w")


def _choose_step(t, cfg, batch, world, device, say):
    """The compute precision of G and D, and the step the loop calls: `train_step` (the paper's
    iteration), or `train_step_scale_out` for --batch-gpu below the batch, torchrun or fp16, with
    the DistributedDataParallel wrappers under torchrun. Returns step(i, real) -> stats."""
    precision = cfg.precision or default_precision(device)
    set_precision(t.g, precision)  # G_ema (samples, FID) stays fp32
    set_precision(t.d, precision)
    chunked = cfg.batch_gpu is not None and cfg.batch_gpu < batch
    say(f"precision {precision}" + ("" if cfg.precision else " (default on this device)")
        + (f"; {cfg.batch_gpu} images at once, gradients accumulated to {batch}" if chunked else ""))
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    nets = (t.g, t.d, t.g_ema, t.g_optim, t.d_optim, t.augment, cfg)
    if world == 1 and not chunked and precision != "fp16":
        def step(i, real):
            stats, t.pl_mean = train_step(i, real, *nets, t.pl_mean, adaptive=t.adaptive, cdc=t.cdc)
            return stats
        return step
    if t.cdc is not None:
        raise TrainError("CDC runs in the plain step only: one process, the whole batch at once (no "
                         "--batch-gpu below --batch), fp32 or bf16")
    g_train, d_train = t.g, t.d  # the wrappers that synchronise gradients under torchrun
    if world > 1:
        ids = [device.index] if device.type == "cuda" else None
        g_train = DistributedDataParallel(t.g, device_ids=ids, broadcast_buffers=False)
        d_train = DistributedDataParallel(t.d, device_ids=ids, broadcast_buffers=False)

    def step(i, real):
        stats, t.pl_mean = train_step_scale_out(
            i, real, *nets, t.pl_mean, adaptive=t.adaptive, g_train=g_train, d_train=d_train,
            average=mean_over_processes if world > 1 else None)
        return stats
    return step


class _RunOutputs:
    """What the run writes into its folder (process 0): sample grids of fixed latents, checkpoints
    (the last --keep, and best.pt by FID), FID rows with the copy count, log lines."""

    def __init__(self, t, cfg, device, main):
        self.t, self.cfg, self.device, self.main = t, cfg, device, main
        self.evaluator = make_fid_evaluator(cfg, device) if main and cfg.fid_every > 0 else None
        z = torch.randn(cfg.n_sample, cfg.style_dim, generator=torch.Generator().manual_seed(cfg.seed))
        self.sample_z = z.to(device)
        self.fork = [device.index if device.index is not None else torch.cuda.current_device()] \
            if device.type == "cuda" else []  # RNG streams that sampling must not move
        self.log_path = os.path.join(cfg.out, "log.jsonl")

    def samples(self, step):
        with torch.no_grad(), torch.random.fork_rng(devices=self.fork):
            imgs = torch.cat([self.t.g_ema([z], randomize_noise=False)[0] for z in self.sample_z.split(self.cfg.batch)])
        save_image_grid(imgs, os.path.join(self.cfg.out, "samples", f"{step:06d}.png"),
                        nrow=max(1, int(math.sqrt(self.cfg.n_sample))))

    def checkpoint_dict(self, step):
        t, cfg = self.t, self.cfg
        with torch.no_grad(), torch.random.fork_rng(devices=self.fork):
            z = torch.randn(TRUNCATION_MEAN_N, cfg.style_dim, generator=torch.Generator().manual_seed(123))
            latent_avg = t.g_ema.style(z.to(self.device)).mean(0)  # [style_dim], for truncation in `generate`
        return {"g": t.g.state_dict(), "d": t.d.state_dict(), "g_ema": t.g_ema.state_dict(),
                "g_optim": t.g_optim.state_dict(), "d_optim": t.d_optim.state_dict(),
                "args": vars(cfg).copy(), "step": step, "latent_avg": latent_avg.cpu(),
                "ada_p": float(t.pipe.p) if t.pipe is not None else 0.0,
                "ada_state": t.adaptive.state_dict() if t.adaptive is not None else None,
                "pl_mean": float(t.pl_mean), "best_fid": t.best_fid, "rng": rng_state(self.device),
                **({"cdc": t.cdc.state_dict()} if t.cdc is not None else {})}

    def checkpoint(self, step):
        folder = os.path.join(self.cfg.out, "checkpoints")
        runs.sync(self.log_path)  # the log lines up to this step are on the disk before it
        save_checkpoint(os.path.join(folder, f"{step:06d}.pt"), self.checkpoint_dict(step))
        for old in checkpoint_files(folder)[:-self.cfg.keep]:
            os.remove(old)
        return os.path.join(folder, f"{step:06d}.pt")

    def fid(self, step):
        """FID/KID of G_ema (the same latents at every evaluation) into fid.csv, fid.png, log.jsonl;
        best.pt when it is the lowest so far. Returns the FID."""
        t, cfg = self.t, self.cfg

        def gen_fn(n):
            return t.g_ema([torch.randn(n, cfg.style_dim, device=self.device)])[0]

        with torch.no_grad(), torch.random.fork_rng(devices=self.fork):
            torch.manual_seed(cfg.seed + 777)
            result = self.evaluator.evaluate(gen_fn, n_gen=cfg.fid_n)
        from ops import fid_eval as fid_ops  # already imported by make_fid_evaluator
        fid_ops.record_fid(cfg.out, step, result, self.evaluator.provenance, kimg=step * cfg.batch / 1000)
        self.log({"step": step, "fid": round(float(result["fid"]), 4), "kid_mean": float(result["kid_mean"]),
                  "kid_std": float(result["kid_std"]), "copies": int(result["copies"]),
                  "n_gen": int(result["n_gen"])})  # the copy count beside the losses
        if t.best_fid is None or result["fid"] < t.best_fid:
            t.best_fid = float(result["fid"])
            save_checkpoint(os.path.join(cfg.out, "checkpoints", "best.pt"), self.checkpoint_dict(step))
        return result["fid"]

    def log(self, record):
        runs.append_line(self.log_path, json.dumps(record))  # one write of one whole line


STAT_KEYS = ("d_loss", "g_loss", "r1", "path_length", "pl_penalty", "real_score", "fake_score")


def _loop(t, cfg, loader, step, run, batch, world, device, say):
    """Iterations t.step .. cfg.iter - 1: the step, then log, samples, FID and checkpoint at their
    intervals; Ctrl-C / SIGTERM finish the iteration, save and exit (130 / 143)."""
    main = run.main
    stats = {k: 0.0 for k in STAT_KEYS}  # the regularizers' last values between their iterations
    bar = tqdm(total=cfg.iter, initial=t.step, dynamic_ncols=True, disable=not (main and cfg.progress))
    clock = [time.time(), t.step]  # for img/s between log lines
    with _StopRequest() as stop:
        try:
            for i in range(t.step, cfg.iter):
                real = next(loader).to(device, non_blocking=True)  # [B, 3, size, size] in [-1, 1]
                try:
                    stats.update(step(i, real))  # train_step: D, R1, G, path length, G_ema, ADA's p
                except (MemoryError, RuntimeError) as e:  # CUDA's OutOfMemoryError is a RuntimeError
                    memory = runs.out_of_memory(e)
                    if memory is None:
                        raise
                    n = cfg.batch_gpu or batch
                    raise TrainError(f"out of {memory[0]} memory with {n} images at once ({memory[1]}); "
                                     f"try --batch-gpu {max(1, n // 2)} (the total --batch {cfg.batch} "
                                     f"is then reached by accumulating gradients), or a smaller --size") from None
                t.step = i + 1
                if t.step % cfg.log_every == 0 or t.step == cfg.iter:
                    _log_step(t, cfg, stats, run, bar, clock, device)
                bar.update(1)
                if main and (t.step % cfg.sample_every == 0 or t.step == cfg.iter):
                    run.samples(t.step)
                if run.evaluator is not None and (t.step % cfg.fid_every == 0 or t.step == cfg.iter):
                    fid = run.fid(t.step)
                    bar.write(f"iteration {t.step}: FID {fid:.2f} (best {t.best_fid:.2f})")
                stopping = stop.requested
                if world > 1:  # every process must stop at the same iteration: agree at log steps
                    stopping = False
                    if t.step % cfg.log_every == 0:
                        flag = torch.tensor([float(stop.requested)], device=device)
                        stopping = bool(mean_over_processes(flag).item() > 0)  # any process asked
                if main and (t.step % cfg.ckpt_every == 0 or t.step == cfg.iter or stopping):
                    path = run.checkpoint(t.step)
                if stopping:
                    say("\n" + stop.message(t.step, path if main else "", os.path.basename(__file__), cfg.out))
                    raise SystemExit(stop.exit_code)
        except KeyboardInterrupt:
            if main:
                run.checkpoint(t.step)
                say(f"\ninterrupted during iteration {t.step + 1}; checkpoint of the state at that moment "
                    f"written as iteration {t.step}. Continue with --resume {cfg.out}")
            raise SystemExit(130)
        finally:
            bar.close()


def _log_step(t, cfg, stats, run, bar, clock, device):
    """One log.jsonl line (the mean over processes of each number), the progress bar's numbers; a
    non-finite loss stops the run with one line."""
    values = mean_over_processes(torch.stack([torch.as_tensor(v, dtype=torch.float32, device=device)
                                              for v in stats.values()]))
    now = time.time()
    record = {"step": t.step, "kimg": round(t.step * cfg.batch / 1000, 3)}
    record.update({k: float(f"{float(v):.7g}") for k, v in zip(stats, values)})  # 7 significant digits
    record.update(pl_mean=round(float(t.pl_mean), 6),
                  ada_p=round(float(t.pipe.p), 6) if t.pipe is not None else 0.0,
                  img_per_s=round((t.step - clock[1]) * cfg.batch / max(now - clock[0], 1e-9), 2))
    clock[:] = [now, t.step]
    if run.main:
        run.log(record)
        bar.set_postfix(d=f"{record['d_loss']:.3f}", g=f"{record['g_loss']:.3f}", r1=f"{record['r1']:.3f}",
                        pl=f"{record['path_length']:.3f}", p=f"{record['ada_p']:.3f}", refresh=False)
    if not all(math.isfinite(v) for v in record.values()):
        raise TrainError(f"non-finite loss at iteration {t.step}: {record}")


def default_precision(device):
    """fp32 on the CPU (CPU half-precision convolutions are slower than fp32) and on GPUs without
    bf16; bf16 on CUDA GPUs that support it (Ampere and newer: fp32's range, so no clamp or loss
    scaling). fp16 is NVIDIA's setting for older GPUs with tensor cores (V100, RTX 20xx): ask for it."""
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return "bf16"
    return "fp32"


PRECISION_HELP = ("compute precision (weights, optimiser state, EMA and checkpoints stay fp32): fp32; bf16 "
                  "(autocast, every resolution block, no clamp or loss scaling needed); fp16 (NVlabs: the "
                  "4 highest resolutions in fp16 with activations clamped to 256, inf/NaN gradients "
                  "replaced). Default: bf16 on CUDA GPUs that support it (Ampere and newer), else fp32 "
                  "(the CPU has no fast half-precision convolutions); ask for fp16 on V100/RTX 20xx")


def add_train_args(parser):
    """Flags of the `train` subcommand, in groups. Defaults (stated in each help) are in
    TRAIN_DEFAULTS; the argparse defaults are None so that --preset and --resume can tell which
    flags were given."""
    D = TRAIN_DEFAULTS
    g = parser.add_argument_group("run")
    g.add_argument("--data", metavar="DIR", help="folder of training images (e.g. from 01_prepare_data.py)")
    g.add_argument("--out", metavar="RUN", help="run folder to create (samples/, checkpoints/, log.jsonl, "
                                                "fid.csv, fid.png)")
    g.add_argument("--ckpt", metavar="FILE", help="start G, D and G_ema from this checkpoint (ours, "
                                                  "rosinality .pt, NVIDIA .pkl)")
    g.add_argument("--resume", metavar="RUN", help="continue the run in this folder exactly (or from one "
                                                   "of its checkpoints)")
    g.add_argument("--preset", choices=list(PRESETS), help="an ablation row of the seed experiment "
                                                           "(flags override it)")
    g.add_argument("--dry-run", action="store_true", help="print the resolved settings and exit")
    g.add_argument("--iter", type=int, metavar="N", help=f"training iterations (default {D['iter']})")
    g.add_argument("--batch", type=int, metavar="N", help=f"total batch over all processes "
                                                          f"(default {D['batch']})")
    g.add_argument("--seed", type=int, help=f"random seed (default {D['seed']})")
    g.add_argument("--device", help=ops.device.DEVICE_HELP)
    g.add_argument("--ops", choices=ops.OPS_MODES, help=ops.OPS_HELP)
    g.add_argument("--precision", choices=PRECISIONS, help=PRECISION_HELP)
    g.add_argument("--batch-gpu", type=int, metavar="N",
                   help="images per forward/backward pass; gradients are accumulated to --batch, with the "
                        "same losses, R1, path length and ADA statistics (NVlabs --batch-gpu; minibatch-"
                        "stddev groups of min(group, N), group 4 or the checkpoint's). Lower it when the GPU runs out of memory "
                        "(default: the whole batch)")
    g.add_argument("--num-workers", type=int, metavar="N", help=f"data-loading workers "
                                                                f"(default {D['num_workers']})")
    g.add_argument("--xflip", action=argparse.BooleanOptionalAction,
                   help="add x-flipped copies of the images (default on)")

    g = parser.add_argument_group("architecture (read from --ckpt when given)")
    g.add_argument("--size", type=int, metavar="PX", help=f"image size, power of two (default {D['size']})")
    g.add_argument("--channel-multiplier", type=int, metavar="K",
                   help=f"channel multiplier (default {D['channel_multiplier']})")
    g.add_argument("--channel-max", type=int, metavar="C", help=f"channel cap (default {D['channel_max']})")
    g.add_argument("--style-dim", type=int, metavar="C", help=f"z and w size (default {D['style_dim']})")
    g.add_argument("--n-mlp", type=int, metavar="N", help=f"mapping layers (default {D['n_mlp']})")

    g = parser.add_argument_group("losses, regularization and optimiser")
    g.add_argument("--lr", type=float, help=f"Adam learning rate before the lazy-regularization correction "
                                            f"(default {D['lr']})")
    g.add_argument("--r1-gamma", type=float, metavar="GAMMA", help=f"R1 weight gamma (default {D['r1_gamma']})")
    g.add_argument("--d-reg-every", type=int, metavar="N",
                   help=f"lazy R1 interval, 0 = off (default {D['d_reg_every']})")
    g.add_argument("--g-reg-every", type=int, metavar="N",
                   help=f"lazy path-length interval, 0 = off (default {D['g_reg_every']})")
    g.add_argument("--pl-weight", type=float, metavar="W", help=f"path-length weight (default {D['pl_weight']})")
    g.add_argument("--pl-decay", type=float, metavar="D",
                   help=f"path-length mean decay (default {D['pl_decay']})")
    g.add_argument("--pl-batch-shrink", type=int, metavar="K",
                   help=f"path-length batch divisor (default {D['pl_batch_shrink']})")
    g.add_argument("--mixing", type=float, metavar="P", help=f"style-mixing probability (default {D['mixing']})")
    g.add_argument("--ema-kimg", type=float, metavar="KIMG",
                   help=f"G_ema half-life in kimg (default {D['ema_kimg']})")
    g.add_argument("--ema-rampup", type=float, metavar="R",
                   help=f"G_ema ramp-up, 0 = off (default {D['ema_rampup']})")

    g = parser.add_argument_group("augmentation")
    g.add_argument("--augment", choices=["none", "ada", "diffaug"], help=f"augmentation (default {D['augment']})")
    g.add_argument("--ada-p", type=float, metavar="P", help="fixed ADA probability p (default: adaptive)")
    g.add_argument("--ada-target", type=float, metavar="T",
                   help=f"ADA target for E[sign(D(real))] (default {D['ada_target']})")
    g.add_argument("--ada-interval", type=int, metavar="N",
                   help=f"iterations between p updates (default {D['ada_interval']})")
    g.add_argument("--ada-kimg", type=float, metavar="KIMG",
                   help="kimg for p to move by 1 (default 500; 100 with --ckpt)")
    g.add_argument("--diffaug-policy", metavar="OPS", help=f"DiffAugment policy (default {D['diffaug_policy']})")

    g = parser.add_argument_group("freezing")
    g.add_argument("--freeze-d", type=int, metavar="K",
                   help="FreezeD: keep fromRGB and the first K D blocks (default 0; presets: 4 at 256 px)")
    g.add_argument("--freeze-g", type=int, metavar="K",
                   help="FreezeG: keep the mapping and the K lowest-resolution G blocks (default 0; preset "
                        "freezeg: all but the two highest-resolution blocks)")

    g = parser.add_argument_group("CDC: few-shot adaptation by cross-domain correspondence (preset cdc)")
    g.add_argument("--cdc-kl-weight", type=float, metavar="W",
                   help="weight of the cross-domain distance consistency, Eq. 3 (default 0 = off; preset cdc 1000)")
    g.add_argument("--cdc-subspace-freq", type=int, metavar="N",
                   help="every N-th iteration z near the anchors with image-level D, else patch-level D "
                        "(default 0 = off; preset cdc 4, as the official code)")
    g.add_argument("--cdc-anchors", type=int, metavar="N", help=f"anchor points (default {D['cdc_anchors']})")
    g.add_argument("--cdc-anchor-std", type=float, metavar="S",
                   help=f"std of z around an anchor (default {D['cdc_anchor_std']})")
    g.add_argument("--cdc-feat-batch", type=int, metavar="N",
                   help=f"samples per distance term (default {D['cdc_feat_batch']})")
    g.add_argument("--cdc-patch-res", type=int, metavar="PX",
                   help="resolution of the patch logits (default size / 8, at least 8)")

    g = parser.add_argument_group("logging, samples, checkpoints and FID")
    g.add_argument("--log-every", type=int, metavar="N",
                   help=f"iterations between log.jsonl lines (default {D['log_every']})")
    g.add_argument("--progress", action=argparse.BooleanOptionalAction, help="tqdm progress bar (default on)")
    g.add_argument("--n-sample", type=int, metavar="N", help=f"images per sample grid (default {D['n_sample']})")
    g.add_argument("--sample-every", type=int, metavar="N",
                   help=f"iterations between sample grids (default {D['sample_every']})")
    g.add_argument("--ckpt-every", type=int, metavar="N",
                   help=f"iterations between checkpoints (default {D['ckpt_every']})")
    g.add_argument("--keep", type=int, metavar="N", help=f"numbered checkpoints kept (default {D['keep']})")
    g.add_argument("--fid-every", type=int, metavar="N",
                   help=f"iterations between FIDs, 0 = off (default {D['fid_every']})")
    g.add_argument("--fid-n", type=int, metavar="N", help=f"generated images per FID (default {D['fid_n']})")
    g.add_argument("--fid-batch", type=int, metavar="N", help=f"FID batch (default {D['fid_batch']})")
    g.add_argument("--fid-cache", metavar="DIR",
                   help="folder for the cached data-set features (default RUN/fid_cache)")
    g.add_argument("--inception", metavar="FILE",
                   help="FID Inception weights file (pt_inception-2015-12-05; default: torch hub cache)")
    g.add_argument("--fid-dims", type=int, metavar="N",
                   help=f"Inception feature size (default {D['fid_dims']}, the FID standard)")
    return parser


# ---------------------------------------------------------------------------------------------
# generate(args)
# ---------------------------------------------------------------------------------------------
def parse_seeds(text):
    """'0-7' or '1,5,9-11' -> [0, ..., 7] / [1, 5, 9, 10, 11].

    Raises argparse.ArgumentTypeError, which argparse prints as one line for --seeds.
    """
    seeds = []
    for part in str(text).split(","):
        part = part.strip()
        if not part:
            continue
        a, _, b = part.partition("-")
        if not a.isdigit() or not (b.isdigit() or not b):
            raise argparse.ArgumentTypeError(f"{part!r} is not a seed (N) or a seed range (N-M)")
        if b and int(b) < int(a):
            raise argparse.ArgumentTypeError(f"empty seed range {part!r}")
        if int(b or a) > 2 ** 32 - 1:
            raise argparse.ArgumentTypeError(f"{part!r}: seeds go up to {2 ** 32 - 1} (numpy's RandomState)")
        seeds.extend(range(int(a), int(b or a) + 1))
    if not seeds:
        raise argparse.ArgumentTypeError(f"no seeds in {text!r}")
    return seeds


def sampling_checkpoint(path):
    """--ckpt of generate: a checkpoint file as given, or a run folder -> its newest checkpoint
    (RUN/checkpoints/NNNNNN.pt, else the older layout's RUN/checkpoint.pt), as 02 generate and 05 test."""
    if not os.path.isdir(path):
        return path
    files = find_resume(path)[1]
    if not files:
        raise CheckpointError(f"{path}: a folder without checkpoints/NNNNNN.pt or checkpoint.pt")
    return files[0]


@torch.no_grad()
def generate(args):
    """Write seed{s:04d}.png for each seed; z = RandomState(s).randn(1, style_dim) (NVlabs convention)."""
    ops.set_ops(getattr(args, "ops", None) or "auto")
    device = parse_device(args.device)
    seeds = args.seeds if isinstance(args.seeds, (list, tuple)) else parse_seeds(args.seeds)
    paths = [os.path.join(args.out, f"seed{seed:04d}.png") for seed in seeds]
    refuse_existing_outputs(paths, args.overwrite)  # before the folder is made
    g, latent_avg = load_generator(sampling_checkpoint(args.ckpt), device=device)
    set_precision(g, getattr(args, "precision", None) or default_precision(device))
    os.makedirs(args.out, exist_ok=True)
    if args.truncation < 1 and latent_avg is None:
        torch.manual_seed(0)  # fixed mean w when the checkpoint stores none
        latent_avg = g.mean_latent(TRUNCATION_MEAN_N)
    for seed, path in zip(seeds, paths):
        z = torch.from_numpy(np.random.RandomState(seed).randn(1, g.style_dim)).float().to(device)
        if args.noise_mode == "const":
            noise = [getattr(g.noises, f"noise_{i}") for i in range(g.num_layers)]
        elif args.noise_mode == "none":
            noise = [torch.zeros_like(getattr(g.noises, f"noise_{i}")) for i in range(g.num_layers)]
        else:
            torch.manual_seed(seed)
            noise = [n.to(device) for n in g.make_noise()]
        try:
            img, _ = g([z], truncation=args.truncation, truncation_latent=latent_avg, noise=noise)
        except OUT_OF_MEMORY as e:
            raise SystemExit(f"error: out of GPU memory drawing one {g.size} px image ({_first_line(e)}); "
                             f"try --precision bf16 (or fp16), or --device cpu") from None
        Image.fromarray(to_uint8(img)[0].cpu().numpy(), "RGB").save(path)
    print(f"wrote {len(paths)} images to {args.out}")
    return paths


# ---------------------------------------------------------------------------------------------
# ablation(args): the seed's table in one command
# ---------------------------------------------------------------------------------------------
# Every (row, seed) is an ordinary run folder ABL/runs/ROW-sSEED that `train` makes and resumes;
# ABL/ablation.json records the command's settings, ABL/scores/ the final scores of each run, and
# the table, grid and curves are written from those. Rows: any preset; "scratch" is preset "ada"
# without --ckpt (random start, the seed's collapsed row).
ABLATION_ROWS = ("baseline", "freezed", "diffaug", "ada", "freezed-diffaug", "freezed-ada")  # the seed's order
SCRATCH_ROW = "scratch"
# Train flags the ablation sets per run itself; the rest of the given train flags go to every run.
ABLATION_OWN = ("data", "out", "ckpt", "resume", "preset", "seed", "iter", "dry_run", "device")
# Settings that may differ between the runs of one ablation and the command continuing it (the rest
# of every run's settings.json must equal what this command would start).
ABLATION_FREE = ("iter", "out", "ckpt", "data", "device", "progress", "num_workers", "precision", "batch_gpu",
                 "log_every", "sample_every", "ckpt_every", "keep", "fid_batch", "n_sample", "fid_cache")
EVAL_SEED = 2024        # z of the final scores: RandomState(EVAL_SEED), the same for every run
GRID_SEEDS = range(8)   # grid.png: seeds 0-7 (03 generate's z) from the first seed's run of each row
FLOOR_SEED = 0          # the real set is halved along a RandomState(0) permutation for the noise floor


class AblationError(TrainError):
    """The ablation cannot go on: one line naming the folder, run or flag."""


def _train_parser():
    parser = argparse.ArgumentParser(prog="03_stylegan2_ada.py train", add_help=False)
    return add_train_args(parser)


def _given_train_flags(args, skip):
    """The train flags given on this command line (not in `skip`) as an argv list for `train`."""
    argv = []
    for action in _train_parser()._actions:
        value = getattr(args, action.dest, None)
        if not action.option_strings or action.dest in skip or value is None:
            continue
        flag = action.option_strings[0]
        if isinstance(action, argparse.BooleanOptionalAction):
            argv.append(flag if value else "--no-" + flag[2:])
        elif action.nargs == 0:
            argv += [flag] if value else []
        else:
            argv += [flag, str(value)]
    return argv


def _row_names(text):
    rows = [r.strip() for r in str(text).split(",") if r.strip()]
    known = list(PRESETS) + [SCRATCH_ROW]
    for r in rows:
        if r not in known:
            raise AblationError(f"--rows: {r!r} is not a row; choose from {', '.join(known)}")
    if not rows or len(set(rows)) != len(rows):
        raise AblationError(f"--rows {text!r}: name each row once")
    return rows


def _ablation_seeds(text):
    seeds = parse_seeds(text) if not isinstance(text, (list, tuple)) else list(text)
    if len(set(seeds)) != len(seeds):
        raise AblationError(f"--seeds {text}: a seed is listed twice")
    return seeds


class _Run:
    """One (row, seed) of the ablation: its folder, the argv that starts it, its state."""

    def __init__(self, abl, row, seed):
        self.row, self.seed = row, seed
        self.name = f"{row}-s{seed}"
        self.folder = os.path.join(abl, "runs", self.name)

    def step(self):
        """The step of its newest checkpoint (03 names them NNNNNN.pt by step), None without one."""
        files = checkpoint_files(os.path.join(self.folder, "checkpoints"))
        return int(os.path.basename(files[-1])[:-3]) if files else None


def _ablation_plan(args, abl):
    """Check everything before anything is written (but the few-shot subset); returns (runs,
    per-run train argv, the settings to record, the source checkpoint's architecture or None)."""
    rows, seeds = _row_names(args.rows), _ablation_seeds(args.seeds)
    if getattr(args, "seed", None) is not None:
        raise AblationError("--seed: the ablation runs each row with every seed of --seeds")
    if args.data is None or args.out is None:
        raise AblationError("--data DIR and --out ABL are needed")
    n_iter = TRAIN_DEFAULTS["iter"] if args.iter is None else args.iter
    if n_iter < 1:
        raise AblationError(f"--iter {n_iter}: must be at least 1")
    if os.path.exists(abl) and not os.path.isdir(abl):
        raise AblationError(f"{abl}: is a file; --out takes the ablation's folder")
    record_path = os.path.join(abl, "ablation.json")
    if os.path.isdir(abl) and [n for n in os.listdir(abl) if n != runs.LOCK_NAME] and not os.path.isfile(record_path):
        raise AblationError(f"{abl}: exists and holds files that no ablation wrote (no ablation.json); "
                            f"choose another --out")
    transfer = [r for r in rows if r != SCRATCH_ROW]
    arch_flags, source, arch = [], None, None
    if args.ckpt:
        source = os.path.abspath(args.ckpt)
        try:
            ckpt, g_src = _open_start_checkpoint(source)
        except CheckpointError as e:
            raise AblationError(str(e)) from None
        arch = dict(_arch_of(g_src), mbstd_group=(ckpt.get("args") or {}).get("mbstd_group"))
        arch_flags = ["--size", str(arch["size"]), "--style-dim", str(arch["style_dim"]), "--n-mlp",
                      str(arch["n_mlp"]), "--channel-multiplier", str(arch["channel_multiplier"]),
                      "--channel-max", str(arch["channel_max"])]
        arch_flags += ["--mbstd-group", str(arch["mbstd_group"])] if arch["mbstd_group"] else []
    elif transfer:
        raise AblationError(f"rows {', '.join(transfer)} transfer from a source model: give --ckpt SOURCE.pt "
                            f"(or only --rows {SCRATCH_ROW})")
    real = os.path.abspath(args.data)
    if not os.path.isdir(real):
        raise AblationError(f"{args.data}: data folder not found")
    data, shot_files = real, None
    if getattr(args, "shots", None):
        data, shot_files = _few_shot_subset(real, args.shots, abl)
    shared = _given_train_flags(args, ABLATION_OWN)
    all_runs, argvs = [], {}
    for row in rows:
        for seed in seeds:
            run = _Run(abl, row, seed)
            argv = ["--data", data, "--out", run.folder, "--seed", str(seed), "--iter", str(n_iter),
                    "--fid-cache", os.path.join(abl, "fid_cache")]
            if row == SCRATCH_ROW:
                pairs = zip(arch_flags[::2], arch_flags[1::2])  # the source's architecture, unless given
                argv += ["--preset", "ada"] + [t for flag, v in pairs if flag not in shared for t in (flag, v)]
            else:
                argv += ["--preset", row, "--ckpt", source]
            all_runs.append(run)
            argvs[run.name] = argv + shared
    settings = {"rows": rows, "seeds": seeds, "iter": n_iter, "data_real": real, "data_train": data,
                "ckpt": source, "shots": getattr(args, "shots", None), "shot_files": shot_files,
                "train_flags": shared, "devices": args.devices,
                "eval_n": args.eval_n or args.fid_n or TRAIN_DEFAULTS["fid_n"]}
    return all_runs, argvs, settings, arch


def _few_shot_subset(real, shots, abl):
    """--shots K: K images of the real folder, RandomState(0).choice without replacement (the file
    names and indices are recorded); ABL/shots-K/ holds them (`_copy_shots`), a later run must find the same."""
    files = ops.image_files(real)
    if not 1 <= shots <= len(files):
        raise AblationError(f"--shots {shots}: {real} has {len(files)} images")
    index = sorted(int(i) for i in np.random.RandomState(0).choice(len(files), shots, replace=False))
    names = [os.path.basename(files[i]) for i in index]
    folder = os.path.join(abl, f"shots-{shots}")
    if os.path.isdir(folder):
        if sorted(os.listdir(folder)) != sorted(names):
            raise AblationError(f"{folder}: holds other images than the {shots} this command picks; "
                                f"choose another --out")
    return folder, [{"index": i, "file": n} for i, n in zip(index, names)]


def _copy_shots(real, folder, shot_files):
    """The few-shot folder, written whole (a temporary folder, then renamed) if it is not there."""
    if os.path.isdir(folder):
        return
    tmp = folder + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)  # ABL/shots-K.tmp: only ever a half-copied subset of ours
    os.makedirs(tmp)
    for item in shot_files:
        shutil.copyfile(os.path.join(real, item["file"]), os.path.join(tmp, item["file"]))
    os.replace(tmp, folder)


def _check_run_settings(run, argv, n_iter, arch):
    """A run already in the folder must be one this command would make: the same settings in its
    settings.json (ABLATION_FREE keys aside) and no more iterations than asked for. Returns its
    state: "new", "done" or "continue"."""
    if not os.path.isdir(run.folder):
        return "new"
    args = _train_parser().parse_args(argv)
    want = vars(resolve_settings(args, ckpt_arch=arch if args.ckpt else None)[0])
    path = os.path.join(run.folder, "settings.json")
    try:
        with open(path) as f:
            have = json.load(f)
    except (OSError, ValueError) as e:
        raise AblationError(f"{path}: cannot read this run's settings ({str(e).splitlines()[0]})") from None
    have = {**TRAIN_DEFAULTS, **have}  # a run made before a setting existed had its default
    differ = [k for k in want if k not in ABLATION_FREE and have.get(k) != want[k]]
    if differ:
        k = differ[0]
        raise AblationError(f"{run.folder} was made with --{k.replace('_', '-')} {have.get(k)!r}, this command "
                            f"asks for {want[k]!r}: the table would mix settings (use the run's flags, or "
                            f"another --out)")
    step = run.step()
    if step is not None and step > n_iter:
        raise AblationError(f"{run.folder} has trained {step} iterations, more than --iter {n_iter}: "
                            f"give --iter {step} or more (a run is never cut back)")
    return "done" if step == n_iter else "continue"


def _probe_seconds(argv, device, iters=3):
    """Seconds per iteration of one run's settings, from a few timed steps (no run folder): the
    plain iteration, one with path length and one with R1 and path length, weighted by their
    share of the iterations (1 - 1/4 - 1/16, 1/4 - 1/16, 1/16 at the default intervals)."""
    args = _train_parser().parse_args(argv)
    args.out = tempfile.mkdtemp(prefix="probe-")  # empty: never written
    try:
        cfg, _, start, _ = _settings(args, lambda *a, **k: None)
        dataset, sampler, batch = _read_inputs(args, cfg, 0, 1)
        t = _build_training(cfg, start, device, lambda *a, **k: None)
        step = _choose_step(t, cfg, batch, 1, device, lambda *a, **k: None)
        real = torch.stack([dataset[k] for k in range(batch)]).to(device)
        r1_every, pl_every = max(cfg.d_reg_every, 1), max(cfg.g_reg_every, 1)
        times = {}
        for kind, i in (("plain", 1), ("plain", 1), ("pl", pl_every if pl_every % r1_every else 0),
                        ("r1+pl", 0)):
            t0 = time.perf_counter()
            step(i, real)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            times.setdefault(kind, []).append(time.perf_counter() - t0)
        plain = min(times["plain"])
        pl = times["pl"][0] - plain
        r1 = times["r1+pl"][0] - plain - pl
        return plain + max(pl, 0) / pl_every + max(r1, 0) / r1_every
    finally:
        shutil.rmtree(args.out, ignore_errors=True)


def ablation(args):
    """The seed's table: every row x seed trained on one budget, scored against the whole real set
    beside the noise floor, written as ABL/table.md, table.json, grid.png and curves.png."""
    ops.set_ops(getattr(args, "ops", None) or "auto")
    abl = os.path.abspath(args.out) if args.out else None
    all_runs, argvs, settings, arch = _ablation_plan(args, abl)
    n_iter = settings["iter"]
    states = {r.name: _check_run_settings(r, argvs[r.name], n_iter, arch) for r in all_runs}
    devices = [d.strip() for d in (args.devices or "").split(",") if d.strip()] or \
        [str(parse_device(getattr(args, "device", None)))]
    todo = [r for r in all_runs if states[r.name] != "done"]
    _check_measures(args, settings)
    if args.rank_by == "fd-faces" and not args.face_features:
        raise AblationError("--rank-by fd-faces needs --face-features")
    if args.dry_run:
        per_it = {}
        for r in todo:  # one probe per row (seeds share the cost)
            if r.row not in per_it:
                argv = [settings["data_real"] if a == settings["data_train"] else a for a in argvs[r.name]]
                per_it[r.row] = _probe_seconds(argv, parse_device(devices[0]))  # (ABL/shots-K: not yet made)
        total = 0.0
        print(f"ablation {abl}: {len(all_runs)} runs, {n_iter} iterations each, on {', '.join(devices)}")
        for r in all_runs:
            left = n_iter - (r.step() or 0) if states[r.name] != "new" else n_iter
            est = per_it.get(r.row, 0.0) * (left if states[r.name] != "done" else 0)
            total += est
            print(f"  {r.name:<24} {states[r.name]:<9} {left if states[r.name] != 'done' else 0:>7} iterations "
                  f"to go  ~{est / 60:.1f} min")
        print(f"estimated training time {total / 60:.1f} min on one device ({total / 60 / len(devices):.1f} "
              f"with {len(devices)} in parallel), from a {sum(1 for _ in per_it)}-row timing probe; the "
              f"FID passes come on top")
        return all_runs
    _check_same_inputs(abl, settings)
    try:
        with runs.RunLock(abl):  # one ablation per folder (each run's own train locks the run too)
            return _ablation_in(abl, all_runs, argvs, states, settings, devices, todo, args)
    except OSError as e:
        if runs.is_write_failure(e):  # disk full, read-only, vanished: one line; the same command goes on
            raise AblationError(f"{e.filename or abl}: {e.strerror} ({runs.WRITE_ERRNOS[e.errno]}) while writing "
                                f"the ablation; finished runs and checkpoints are kept: fix it, then run the "
                                f"same command again") from None
        raise


# What an ablation's table is about: the same real set, training images and source model in every run
SAME_INPUTS = ("data_real", "data_train", "shots", "shot_files", "ckpt", "ckpt_sha256")


def _check_same_inputs(abl, settings):
    """A folder's earlier ablation.json must name the same real set, training subset and source
    model (by path and content) as this command; else one line (its runs and scores are of others)."""
    from ops.fid import sha256_file
    if settings["ckpt"]:
        settings["ckpt_sha256"] = sha256_file(settings["ckpt"])
    path = os.path.join(abl, "ablation.json")
    if not os.path.isfile(path):
        return
    try:
        with open(path) as f:
            had = json.load(f)
    except (OSError, ValueError) as e:
        raise AblationError(f"{path}: cannot read ({str(e).splitlines()[0]})") from None
    flags = {"data_real": "--data", "data_train": "--shots", "shots": "--shots", "shot_files": "--shots",
             "ckpt": "--ckpt", "ckpt_sha256": "--ckpt"}
    for k in SAME_INPUTS:
        if k in had and had[k] != settings.get(k):
            was, now = (had[k], settings.get(k)) if k not in ("shot_files", "ckpt_sha256") else \
                ({"shot_files": "other images", "ckpt_sha256": "a file of other content"}[k], "this one")
            raise AblationError(f"{abl}: its runs were made with {flags[k]} {was}, this command gives {now}: "
                                f"the table would mix inputs (give the same {flags[k]}, or another --out)")


def _ablation_in(abl, all_runs, argvs, states, settings, devices, todo, args):
    """Record the settings, train what is left (in turn, or one run per device), score, write."""
    n_iter = settings["iter"]
    _write_json(os.path.join(abl, "ablation.json"), settings)  # first: the folder is an ablation's from now on
    os.makedirs(os.path.join(abl, "runs"), exist_ok=True)
    if settings["shot_files"]:
        _copy_shots(settings["data_real"], settings["data_train"], settings["shot_files"])
    for r in all_runs:
        print(f"== {r.name}: {states[r.name]}" + ("" if states[r.name] == "done" else
              f" ({r.step() or 0} -> {n_iter} iterations)"), flush=True)
    if len(devices) > 1:
        _train_in_parallel(todo, argvs, states, devices, abl)
    else:
        for r in todo:
            argv = argvs[r.name] if states[r.name] == "new" else \
                ["--resume", r.folder, "--iter", str(n_iter)] + _resume_flags(argvs[r.name])
            t0 = time.time()
            try:
                train(_train_parser().parse_args(argv + ["--device", devices[0]]))
            finally:  # an interrupted run's time counts too
                _add_seconds(abl, r.name, time.time() - t0)
    return _score_and_write(abl, all_runs, settings, devices[0], args)


def _add_seconds(abl, name, seconds):
    """ABL/seconds.json: the wall time each run has taken, summed over the commands that trained it."""
    path = os.path.join(abl, "seconds.json")
    spent = json.load(open(path)) if os.path.isfile(path) else {}
    spent[name] = round(spent.get(name, 0.0) + seconds, 1)
    _write_json(path, spent)


def _resume_flags(argv):
    """The flags of a run's argv that --resume takes (RESUME_OVERRIDABLE; the rest is the run's)."""
    dests = {a.option_strings[0]: a.dest for a in _train_parser()._actions if a.option_strings}
    dests.update({"--no-" + f[2:]: d for f, d in list(dests.items())})
    out, k = [], 0
    while k < len(argv):
        dest = dests.get(argv[k])
        takes_value = k + 1 < len(argv) and not argv[k + 1].startswith("--")
        item = argv[k:k + 2] if takes_value else argv[k:k + 1]
        if dest in RESUME_OVERRIDABLE and dest not in ("data", "iter"):
            out += item
        k += len(item)
    return out


def _train_in_parallel(todo, argvs, states, devices, abl):
    """One `train` process per device (each an ordinary single-device run), the next run starting
    on a device as soon as its run ends; Ctrl-C / SIGTERM is passed to every run (each saves its
    checkpoint) and the ablation stops. Each run's output goes to ABL/logs/NAME.txt."""
    os.makedirs(os.path.join(abl, "logs"), exist_ok=True)
    queue, busy, failed = list(todo), {}, []
    with _StopRequest() as stop:
        while queue or busy:
            for dev in devices:
                if dev not in busy and queue and not stop.requested:
                    r = queue.pop(0)
                    argv = argvs[r.name] if states[r.name] == "new" else \
                        ["--resume", r.folder, "--iter", str(argvs[r.name][argvs[r.name].index("--iter") + 1])] \
                        + _resume_flags(argvs[r.name])
                    log = open(os.path.join(abl, "logs", f"{r.name}.txt"), "a")
                    proc = subprocess.Popen([sys.executable, os.path.abspath(__file__), "train", *argv,
                                             "--device", dev, "--no-progress"], stdout=log,
                                            stderr=subprocess.STDOUT)
                    busy[dev] = (r, proc, log, time.time())
                    print(f"   {r.name} on {dev} (pid {proc.pid})", flush=True)
            time.sleep(0.2)
            if stop.requested:
                for r, proc, log, _ in busy.values():
                    if proc.poll() is None:
                        proc.send_signal(signal.SIGTERM)  # each run finishes its iteration and saves
            for dev, (r, proc, log, t0) in list(busy.items()):
                if proc.poll() is not None:
                    log.close()
                    del busy[dev]
                    _add_seconds(abl, r.name, time.time() - t0)
                    if proc.returncode != 0:
                        failed.append((r, proc.returncode))
        if stop.requested:
            raise SystemExit(stop.exit_code)
    if failed:
        r, code = failed[0]
        raise AblationError(f"run {r.name} failed (exit {code}); its output is in "
                            f"{os.path.join(abl, 'logs', r.name + '.txt')}")


def _write_json(path, obj):
    runs.write_atomic(path, lambda f: f.write(json.dumps(obj, indent=1) + "\n"), mode="w")


def _eval_sampler(g, n, device, seed=EVAL_SEED):
    """gen_fn(b) for ops' feature passes: the next b of n fixed latents z = RandomState(seed).randn,
    drawn with G_ema's stored noise maps, so that every run and every measure sees the same z in
    the same order whatever the batch sizes."""
    z_all = torch.from_numpy(np.random.RandomState(seed).randn(n, g.style_dim)).float()
    cursor = [0]

    def gen_fn(b):
        z = z_all[cursor[0]:cursor[0] + b].to(device)
        cursor[0] += len(z)
        return g([z], randomize_noise=False)[0]
    return gen_fn


def _score_and_write(abl, all_runs, settings, device, args):
    """Final scores of every run (cached in ABL/scores/ by step and evaluation settings), the floor,
    then table.md, table.json, grid.png and curves.png."""
    from ops import fid_eval
    device = parse_device(device)
    cfg = TRAIN_DEFAULTS
    dims = args.fid_dims or cfg["fid_dims"]
    inception = args.inception
    try:
        ev = fid_eval.Evaluator(settings["data_real"], inception=inception, device=device,
                                batch_size=args.fid_batch or cfg["fid_batch"], cache_dir=os.path.join(abl, "fid_cache"),
                                n_gen=settings["eval_n"], dims=dims)
    except fid_eval.InceptionWeightsMissing as e:
        raise AblationError(f"{e}; give --inception FILE (or --inception random for a table whose numbers "
                            f"only rank its own rows)") from None
    extra = _ExtraMeasures(settings, args, device)
    key = {"n_gen": settings["eval_n"], "dims": dims, "seed": EVAL_SEED, "weights": ev.provenance["weights"],
           "weights_sha256": ev.provenance["weights_sha256"], **extra.key()}
    os.makedirs(os.path.join(abl, "scores"), exist_ok=True)
    scores = {}
    bar = tqdm(all_runs, desc="scoring", disable=not (args.progress is not False), dynamic_ncols=True)
    for r in bar:
        path, step = os.path.join(abl, "scores", r.name + ".json"), r.step()
        cached = None
        if os.path.isfile(path):
            with open(path) as f:
                cached = json.load(f)
        if cached and cached.get("step") == step and cached.get("key") == key:
            scores[r.name] = cached
            continue
        g, _ = load_generator(checkpoint_files(os.path.join(r.folder, "checkpoints"))[-1], device=device)
        with torch.no_grad():
            result = ev.evaluate(_eval_sampler(g, settings["eval_n"], device), n_gen=settings["eval_n"])
            scores[r.name] = {"step": step, "key": key, **{k: float(v) for k, v in result.items()},
                              **extra.score(g)}
        _write_json(path, scores[r.name])
    floor = {**_noise_floor(ev), **extra.floor()}
    table = _summarise(all_runs, scores, floor, settings, by="fd_faces" if args.rank_by == "fd-faces" else "fid")
    if settings["ckpt"]:  # where every transfer row started: the source model itself, scored the same way
        path = os.path.join(abl, "scores", "source.json")
        cached = json.load(open(path)) if os.path.isfile(path) else None
        if not (cached and cached.get("key") == key and cached.get("file") == settings["ckpt"]):
            g, _ = load_generator(settings["ckpt"], device=device)
            with torch.no_grad():
                result = ev.evaluate(_eval_sampler(g, settings["eval_n"], device), n_gen=settings["eval_n"])
                cached = {"key": key, "file": settings["ckpt"], **{k: float(v) for k, v in result.items()},
                          **extra.score(g)}
            _write_json(path, cached)
        table["source"] = cached
    table["inception"] = ev.provenance
    table["measures"] = extra.describe()
    _write_ablation_outputs(abl, all_runs, table, settings, device)
    return table


def _check_measures(args, settings):
    """Before any training: the networks of --face-features and of the diversity measure load."""
    face = getattr(args, "face_features", None)
    try:
        if face:
            from ops import face_features
            face_features.load_face_net(None if face == "shipped" else face)
        if settings.get("shot_files") or getattr(args, "shots", None):
            from ops import diversity
            diversity.perceptual_network(getattr(args, "vgg", None), None if face in (None, "shipped") else face)
    except Exception as e:  # FaceNetError, LPIPSWeightsError, ValueError: one line each
        raise AblationError(str(e).splitlines()[0]) from None


class _ExtraMeasures:
    """The measures beside FID/KID, one fixed network each for every row:
    FD-faces (--face-features; ops.face_features, for the demo's faces only): the Frechet distance
    on the face network's features of the same eval_n images, floor = two halves of the real set;
    with --shots, diversity (ops.diversity): intra-cluster LPIPS and the copy share of the first
    diversity_n of those images against the K training images; its reference is the rest of the real
    set (the images the runs never saw) measured the same way."""

    def __init__(self, settings, args, device):
        self.device, self.settings = device, settings
        self.faces = self.div_net = None
        face = getattr(args, "face_features", None)
        if face:
            from ops import face_features
            self.face_mod = face_features
            try:
                self.faces = face_features.load_face_net(None if face == "shipped" else face, device=device)
            except face_features.FaceNetError as e:
                raise AblationError(str(e)) from None
            self.face_real = face_features.features(settings["data_real"], self.faces)
        if settings.get("shot_files"):
            from ops import diversity
            self.div_mod = diversity
            try:
                self.div_net = diversity.perceptual_network(getattr(args, "vgg", None),
                                                            None if face in (None, "shipped") else face, device)
            except (ValueError, OSError) as e:
                raise AblationError(str(e)) from None
            real = ImageFolderDataset(settings["data_real"], _dataset_size(settings), xflip=False)
            shots = {item["file"] for item in settings["shot_files"]}
            names = [os.path.basename(p) for p in real.paths]
            self.train = torch.stack([real[k] for k, n in enumerate(names) if n in shots])
            self.held_out = torch.stack([real[k] for k, n in enumerate(names) if n not in shots])
            self.n_div = min(args.diversity_n, settings["eval_n"])

    def key(self):
        return {"faces": self.face_mod.MEASURE if self.faces is not None else None,
                "diversity": self.div_net.name if self.div_net is not None else None,
                "diversity_n": getattr(self, "n_div", None)}

    def describe(self):
        out = {}
        if self.faces is not None:
            out["faces"] = {"measure": self.face_mod.MEASURE, "note": self.face_mod.NOTE}
        if self.div_net is not None:
            out["diversity"] = {"network": self.div_net.name, "n_gen": self.n_div, "note": self.div_net.note,
                                "cluster_size": self.div_mod.CLUSTER_SIZE}
        return out

    def score(self, g):
        if self.faces is None and self.div_net is None:
            return {}
        n = self.settings["eval_n"]
        gen_fn, feats, keep = _eval_sampler(g, n, self.device), [], []
        for k in range(0, n, 100):
            img = gen_fn(min(100, n - k)).float().clamp(-1, 1).cpu()
            if self.faces is not None:
                feats.append(self.face_mod.features(img, self.faces))
            if self.div_net is not None and sum(len(x) for x in keep) < self.n_div:
                keep.append(img)
        out = {}
        if self.faces is not None:
            out["fd_faces"] = float(self.face_mod.fd_faces(self.face_real, np.concatenate(feats)))
        if self.div_net is not None:
            d = self.div_mod.diversity(torch.cat(keep)[:self.n_div], self.train, self.div_net)
            out.update(intra_lpips=d["intra_lpips"], copy_share=d["copy_share"], copy_threshold=d["copy_threshold"])
        return out

    def floor(self):
        out = {}
        if self.faces is not None:
            order = np.random.RandomState(FLOOR_SEED).permutation(len(self.face_real))
            half = len(order) // 2
            out["fd_faces"] = float(self.face_mod.fd_faces(self.face_real[order[:half]],
                                                            self.face_real[order[half:2 * half]]))
        if self.div_net is not None and len(self.held_out) >= 2:
            d = self.div_mod.diversity(self.held_out, self.train, self.div_net)
            out.update(intra_lpips=d["intra_lpips"], copy_share=d["copy_share"], n_held_out=len(self.held_out))
        return out


def _dataset_size(settings):
    """The training resolution of the ablation's runs (the source checkpoint's, or --size)."""
    flags = settings["train_flags"]
    if "--size" in flags:
        return int(flags[flags.index("--size") + 1])
    if settings["ckpt"]:
        return int(load_checkpoint(settings["ckpt"])["args"].get("size") or TRAIN_DEFAULTS["size"])
    return TRAIN_DEFAULTS["size"]


def _noise_floor(ev):
    """FID and KID between two halves of the real set (a RandomState(FLOOR_SEED) permutation):
    what a generator as good as the data would score with half the samples on each side."""
    from ops import fid as fid_ops
    feats = ev.real_feats
    order = np.random.RandomState(FLOOR_SEED).permutation(len(feats))
    half = len(feats) // 2
    a, b = feats[order[:half]], feats[order[half:2 * half]]
    mu_a, s_a = fid_ops.statistics(a)
    mu_b, s_b = fid_ops.statistics(b)
    km, ks = fid_ops.kid(a, b, subsets=ev.kid_subsets)
    return {"fid": float(fid_ops.frechet_distance(mu_a, s_a, mu_b, s_b)), "kid_mean": float(km),
            "kid_std": float(ks), "n_per_side": half}


def _mean_std(values):
    v = np.asarray(values, dtype=np.float64)
    return float(v.mean()), (float(v.std(ddof=1)) if len(v) > 1 else None)


def _summarise(all_runs, scores, floor, settings, by="fid"):
    """Rows in the order asked for: mean +- std over seeds of each number, calm-gan's rank (by the
    measure `by`: fid, or fd_faces) and the seed's, Kendall's tau between the two orders, and which
    ordered differences of `by` exceed the spread."""
    from scipy import stats as sstats
    rows = []
    for row in settings["rows"]:
        mine = [scores[r.name] for r in all_runs if r.row == row]
        entry = {"row": row, "seeds": [r.seed for r in all_runs if r.row == row],
                 "steps": [s["step"] for s in mine], "seed_fid": SEED_FID.get(row),
                 "runs": {r.name: scores[r.name] for r in all_runs if r.row == row}}
        for k in ("fid", "kid_mean", "copies", "fd_faces", "intra_lpips", "copy_share"):
            if all(k in s for s in mine):
                entry[k], entry[k + "_std"] = _mean_std([s[k] for s in mine])
        rows.append(entry)
    order = sorted(rows, key=lambda e: e[by])
    for rank, e in enumerate(order, 1):
        e["rank"] = rank
    seeded = [e for e in rows if e["seed_fid"] is not None]
    for rank, e in enumerate(sorted(seeded, key=lambda e: e["seed_fid"]), 1):
        e["seed_rank"] = rank
    tau = None
    if len(seeded) >= 3:
        res = sstats.kendalltau([e[by] for e in seeded], [e["seed_fid"] for e in seeded])
        tau = {"tau": float(res.statistic), "p": float(res.pvalue), "rows": len(seeded)}
    separated = []  # consecutive rows (by the mean of `by`) and whether their gap exceeds twice its standard error
    for lo, hi in zip(order, order[1:]):
        n_lo, n_hi = len(lo["seeds"]), len(hi["seeds"])
        if lo[by + "_std"] is None or hi[by + "_std"] is None:
            separated.append({"better": lo["row"], "worse": hi["row"], "gap": hi[by] - lo[by], "se": None})
            continue
        se = math.sqrt(lo[by + "_std"] ** 2 / n_lo + hi[by + "_std"] ** 2 / n_hi)
        separated.append({"better": lo["row"], "worse": hi["row"], "gap": hi[by] - lo[by], "se": se})
    return {"rows": rows, "floor": floor, "kendall": tau, "gaps": separated, "rank_by": by,
            "iter": settings["iter"], "seeds": settings["seeds"]}


ROW_LABELS = {"baseline": "Baseline", "freezed": "FreezeD", "diffaug": "DiffAug", "ada": "ADA",
              "freezed-diffaug": "FreezeD + DiffAug", "freezed-ada": "FreezeD + ADA", "freezeg": "FreezeG",
              SCRATCH_ROW: "Scratch + ADA", "cdc": "CDC"}
CURVE_COLOURS = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189),
                 (140, 86, 75), (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207)]


def _pm(mean, std, fmt):
    return format(mean, fmt) + (" ± " + format(std, fmt) if std is not None else " (one seed)")


def _table_markdown(table, settings):
    floor, rows = table["floor"], table["rows"]
    n_real = int(rows[0]["runs"][next(iter(rows[0]["runs"]))]["n_real"]) if rows else 0
    random_weights = not (table.get("inception") or {}).get("comparable", False)
    lines = [f"# Ablation: {settings['iter']} iterations, seeds {', '.join(map(str, settings['seeds']))}", "",
             f"FID and KID of {settings['eval_n']} generated images per run against the whole real set "
             f"({n_real} images); mean ± std over the seeds. The noise floor is the same metric between two "
             f"halves of the real set ({floor['n_per_side']} images each): the distance chance alone gives at "
             f"that size. The rows' samples are larger ({settings['eval_n']} against {n_real}), so a generator "
             f"as good as the data would score somewhat below it (the bias falls with 1/n per side).", ""]
    if settings.get("shots"):
        lines += [f"Trained on {settings['shots']} of the real images (indices in table.json), scored "
                  f"against all of them.", ""]
    if random_weights:
        lines += ["**Random Inception weights** (no pt_inception-2015-12-05 file): the numbers rank the rows "
                  "of this table against each other and the floor, and are not comparable with published FIDs.", ""]
    measures = table.get("measures") or {}
    extra = [(k, name, fmt) for k, name, fmt in (("fd_faces", "FD-faces", ".3f"), ("intra_lpips", "intra-cluster LPIPS", ".4f"),
                                                  ("copy_share", "copy share", ".2f")) if rows and k in rows[0]]
    head = (["Method", "seed FID (30k iter)", f"FID ({settings['iter']} iter)", "KID", "copies"]
            + [name for _, name, _ in extra] + ["rank", "seed's rank"])
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    cells = [f"{floor[k]:{fmt}}" if k in floor else "–" for k, _, fmt in extra]
    held = f"; diversity: the {floor['n_held_out']} real images not trained on" if "n_held_out" in floor else ""
    lines.append(f"| reference: real half vs half{held} | – | {floor['fid']:.2f} | "
                 f"{floor['kid_mean']:.5f} ± {floor['kid_std']:.5f} | – | " + " | ".join(cells + ["–", "–"]) + " |")
    src = table.get("source")
    if src:
        cells = [f"{src[k]:{fmt}}" if k in src else "–" for k, _, fmt in extra]
        lines.append(f"| reference: the source model, not fine-tuned | – | {src['fid']:.2f} | {src['kid_mean']:.5f} ± "
                     f"{src['kid_std']:.5f} | {src['copies']:.0f} | " + " | ".join(cells + ["–", "–"]) + " |")
    for e in rows:
        seed = f"{e['seed_fid']:.2f}" if e["seed_fid"] is not None else "–"
        cells = [_pm(e[k], e[k + "_std"], fmt) for k, _, fmt in extra]
        lines.append(f"| {ROW_LABELS.get(e['row'], e['row'])} | {seed} | {_pm(e['fid'], e['fid_std'], '.2f')} | "
                     f"{_pm(e['kid_mean'], e['kid_mean_std'], '.5f')} | {_pm(e['copies'], e['copies_std'], '.1f')} | "
                     + " | ".join(cells + [str(e["rank"]), str(e.get("seed_rank", "–"))]) + " |")
    lines += [""]
    if "faces" in measures:
        lines += [f"{measures['faces']['measure']}: the Frechet distance on the features of a network that "
                  f"{measures['faces']['note']}; its reference is the same distance between two halves of the real set.", ""]
    if "diversity" in measures:
        dv = measures["diversity"]
        lines += [f"Diversity ({dv['network']}, {dv['n_gen']} images per run): intra-cluster LPIPS (Ojha et al. 2021: "
                  f"each image joins its nearest training image's cluster; mean pairwise distance of up to "
                  f"{dv['cluster_size']} members per cluster; 0 = copies, higher = more diverse) and the share of near "
                  f"copies (nearer to a training image than the closest two training images).", ""]
    lines += [_verdict(table), ""]
    return "\n".join(lines)


def _told_apart(gap):
    """A gap between two rows' mean FIDs is real when it exceeds twice its standard error over the
    seeds and shows at the table's precision (0.01)."""
    return gap["se"] is not None and gap["gap"] > 2 * gap["se"] and gap["gap"] >= 0.005


def _verdict(table):
    """What the spread supports, in words: the order against the seed's, and which gaps are real."""
    out = []
    tau = table["kendall"]
    name = {"fid": "FID", "fd_faces": "FD-faces"}[table.get("rank_by", "fid")]
    out.append(f"Ranks, order and gaps by {name}.")
    if tau is not None:
        agree = "agrees with" if tau["tau"] > 0.5 else "partly agrees with" if tau["tau"] > 0 else "does not follow"
        out.append(f"Order: calm-gan's ranking {agree} the seed's (Kendall τ = {tau['tau']:.2f} over "
                   f"{tau['rows']} rows, p = {tau['p']:.2f}"
                   + ("; with this few rows and seeds that is no evidence either way)." if tau["p"] > 0.05 else ")."))
    else:
        out.append("Order: fewer than three of the seed's rows here, so no rank correlation is given.")
    gaps = table["gaps"]
    if gaps and any(g["se"] is None for g in gaps):
        out.append("One seed per row: there is no spread to tell a real difference from chance (GAN runs "
                   "of a few kimg differ a lot by seed); run more --seeds.")
    elif gaps:
        real = [g for g in gaps if _told_apart(g)]
        close = [g for g in gaps if not _told_apart(g)]
        if real:
            out.append("Beyond the spread (gap > 2 standard errors over seeds): " + "; ".join(
                f"{ROW_LABELS.get(g['better'], g['better'])} < {ROW_LABELS.get(g['worse'], g['worse'])} "
                f"({g['gap']:.2f} vs {g['se']:.2f})" for g in real) + ".")
        if close:
            out.append("Within the spread, not told apart: " + "; ".join(
                f"{ROW_LABELS.get(g['better'], g['better'])} / {ROW_LABELS.get(g['worse'], g['worse'])}"
                for g in close) + ".")
    by = table.get("rank_by", "fid")
    floor = table["floor"][by]
    below = [e["row"] for e in table["rows"] if e[by] <= floor]
    if below:
        out.append(f"At or below the noise floor ({floor:.2f}): {', '.join(below)}: within what chance gives "
                   f"this metric between two real halves.")
    return " ".join(out)


def _write_ablation_outputs(abl, all_runs, table, settings, device):
    import platform
    from ops import fid_eval
    versions = {"python": platform.python_version(), "torch": torch.__version__, "numpy": np.__version__,
                "calm_gan": fid_eval.git_commit()}
    seconds = os.path.join(abl, "seconds.json")  # training wall time per run (runs of --devices: their logs)
    table["seconds"] = json.load(open(seconds)) if os.path.isfile(seconds) else {}
    _write_json(os.path.join(abl, "table.json"), {"settings": settings, "versions": versions, **table})
    text = _table_markdown(table, settings)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=abl)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, os.path.join(abl, "table.md"))
    _ablation_grid(os.path.join(abl, "grid.png"), all_runs, settings, device)
    _ablation_curves(os.path.join(abl, "curves.png"), all_runs, table, settings)
    print(text)
    print(f"wrote {os.path.join(abl, 'table.md')}, table.json, grid.png, curves.png")


def _atomic_png(img, path):
    runs.save_image(img, path)


@torch.no_grad()
def _ablation_grid(path, all_runs, settings, device, label_w=120, min_tile=64):
    """One labelled row per ablation row: the first seed's run, seeds 0-7 (03 generate's z, the
    stored noise maps), the same z in every row; small images enlarged by a whole factor (nearest)."""
    from PIL import ImageDraw
    first = {}
    for r in all_runs:
        first.setdefault(r.row, r)
    images = []
    for row, r in first.items():
        g, _ = load_generator(checkpoint_files(os.path.join(r.folder, "checkpoints"))[-1], device=device)
        z = torch.from_numpy(np.stack([np.random.RandomState(s).randn(g.style_dim) for s in GRID_SEEDS])).float()
        images.append((row, to_uint8(g([z.to(device)], randomize_noise=False)[0]).cpu().numpy()))
    size = images[0][1].shape[1]
    zoom = max(1, -(-min_tile // size))
    tile = size * zoom
    fig = Image.new("RGB", (label_w + tile * len(GRID_SEEDS), tile * len(images)), "white")
    draw = ImageDraw.Draw(fig)
    for k, (row, arr) in enumerate(images):
        draw.text((6, k * tile + tile // 2 - 6), ROW_LABELS.get(row, row), fill="black")
        for c, a in enumerate(arr):
            fig.paste(Image.fromarray(a).resize((tile, tile), Image.NEAREST), (label_w + c * tile, k * tile))
    _atomic_png(fig, path)


def _ablation_curves(path, all_runs, table, settings, width=720, height=440):
    """FID against kimg from each run's fid.csv: per row the mean over seeds, shaded +- std, and the
    noise floor dashed. Runs trained with --fid-every 0 have no curve (said on the picture)."""
    from PIL import ImageDraw
    from ops import fid_eval
    series = []
    for k, row in enumerate(settings["rows"]):
        by_step = {}
        for r in all_runs:
            csv_path = os.path.join(r.folder, "fid.csv")
            if r.row == row and os.path.isfile(csv_path):
                for rec in fid_eval.read_fid_csv(csv_path):
                    by_step.setdefault((rec["step"], rec["kimg"]), []).append(rec["fid"])
        pts = [(kimg, *_mean_std(v)) for (step, kimg), v in sorted(by_step.items())]
        if pts:
            series.append((row, CURVE_COLOURS[k % len(CURVE_COLOURS)], pts))
    img = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(img, "RGBA")
    left, top, right, bottom = 70, 20, width - 170, height - 40
    draw.rectangle((left, top, right, bottom), outline="black")
    if not series:
        draw.text((left + 10, top + 10), "no FID during training (--fid-every 0): no curves", fill="black")
        _atomic_png(img, path)
        return
    xs = [p[0] for _, _, pts in series for p in pts]
    ys = [p[1] + s * (p[2] or 0) for _, _, pts in series for p in pts for s in (-1, 1)] + [table["floor"]["fid"]]
    x0, x1 = min(xs), max(xs) if max(xs) > min(xs) else min(xs) + 1
    y0, y1 = min(ys), max(ys) if max(ys) > min(ys) else min(ys) + 1
    y0, y1 = y0 - 0.05 * (y1 - y0), y1 + 0.05 * (y1 - y0)

    def at(x, y):
        return left + (x - x0) / (x1 - x0) * (right - left), bottom - (y - y0) / (y1 - y0) * (bottom - top)

    for t in range(5):
        xv, yv = x0 + (x1 - x0) * t / 4, y0 + (y1 - y0) * t / 4
        draw.text((at(xv, y0)[0] - 10, bottom + 6), f"{xv:.3g}", fill="black")
        draw.text((6, at(x0, yv)[1] - 6), f"{yv:.3g}", fill="black")
    draw.text(((left + right) // 2 - 20, height - 18), "kimg", fill="black")
    draw.text((6, 2), "FID", fill="black")
    fy = at(x0, table["floor"]["fid"])[1]
    for sx in range(left, right, 12):  # the floor, dashed
        draw.line([(sx, fy), (min(sx + 6, right), fy)], fill=(0, 0, 0), width=1)
    for k, (row, colour, pts) in enumerate(series):
        band = [at(x, m + (s or 0)) for x, m, s in pts] + [at(x, m - (s or 0)) for x, m, s in reversed(pts)]
        if len(pts) > 1 and any(s for _, _, s in pts):
            draw.polygon(band, fill=colour + (50,))
        line = [at(x, m) for x, m, _ in pts]
        if len(line) > 1:
            draw.line(line, fill=colour + (255,), width=2)
        for px, py in line:
            draw.ellipse([px - 2, py - 2, px + 2, py + 2], fill=colour + (255,))
        draw.line([(right + 12, top + 14 + 18 * k), (right + 32, top + 14 + 18 * k)], fill=colour + (255,), width=3)
        draw.text((right + 38, top + 8 + 18 * k), ROW_LABELS.get(row, row), fill="black")
    draw.text((right + 12, top + 14 + 18 * len(series)), "- - noise floor", fill="black")
    _atomic_png(img, path)


def add_ablation_args(parser):
    """`ablation`: the train flags (given once for every run) plus the table's own."""
    add_train_args(parser)
    g = parser.add_argument_group("ablation")
    g.add_argument("--rows", default=",".join(ABLATION_ROWS),
                   help=f"comma-separated rows: presets ({', '.join(PRESETS)}) or {SCRATCH_ROW} (preset ada "
                        f"without --ckpt); default the seed's six, in its order")
    g.add_argument("--seeds", default="0,1,2", help="the seeds of every row (each run's --seed; default 0,1,2)")
    g.add_argument("--devices", metavar="DEV,DEV", help="run rows side by side, one run per device (e.g. "
                                                        "cuda:0,cuda:1); default: one device (--device), in turn")
    g.add_argument("--eval-n", type=int, default=None, metavar="N",
                   help="generated images per final score (default --fid-n, 5000)")
    g.add_argument("--face-features", nargs="?", const="shipped", default=None, metavar="FILE",
                   help="add FD-faces, the Frechet distance on the demo face network's features (for calm-gan's "
                        "demo faces only; FILE, or the shipped demo_models/face_features_32px.pt without one)")
    g.add_argument("--rank-by", choices=["fid", "fd-faces"], default="fid",
                   help="the measure of the ranks, Kendall's tau and the gaps (default fid; fd-faces needs "
                        "--face-features: the demo's faces only)")
    g.add_argument("--vgg", metavar="FILE", help="torchvision's VGG16 weights for the diversity measure's LPIPS "
                                                 "(default: the torch hub cache, else the face network)")
    g.add_argument("--diversity-n", type=int, default=1000, metavar="N",
                   help="generated images per diversity score with --shots (default 1000, as Ojha et al.)")
    g.add_argument("--shots", type=int, default=None, metavar="K",
                   help="train every run on K of the --data images (a fixed random subset, its file names "
                        "recorded in table.json) and score against all of them (default: all)")
    parser.set_defaults(func=ablation)
    return parser


# ---------------------------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------------------------
def build_parser():
    parser = argparse.ArgumentParser(description="StyleGAN2 + ADA / DiffAugment / FreezeD / FreezeG")
    sub = parser.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train or fine-tune (presets: the seed experiment's ablation rows)",
                       description="Train StyleGAN2 from scratch, fine-tune it from --ckpt, or continue a "
                                   "run with --resume. Flags override --preset; --dry-run prints the "
                                   "resolved settings.")
    add_train_args(t)
    t.set_defaults(func=train)

    p = sub.add_parser("generate", help="images for seeds from a checkpoint (.pt ours/rosinality, NVIDIA .pkl)",
                       description="Write OUT/seedNNNN.png for each seed (z = RandomState(seed).randn).")
    p.add_argument("--ckpt", required=True, metavar="FILE",
                   help="checkpoint file (.pt or NVIDIA .pkl), or a run folder (its newest checkpoint)")
    p.add_argument("--seeds", type=parse_seeds, default="0-7", help="seeds, e.g. 0-7 or 1,5,9-11 (default 0-7)")
    p.add_argument("--truncation", type=float, default=1.0, metavar="PSI", help="truncation psi (default 1 = off)")
    p.add_argument("--noise-mode", choices=["const", "random", "none"], default="const",
                   help="const = stored noise maps (NVlabs default), random, none = zeros (default const)")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder")
    p.add_argument("--overwrite", action="store_true", help="replace existing seedNNNN.png files in --out")
    p.add_argument("--device", default="auto", help=ops.device.DEVICE_HELP)
    p.add_argument("--ops", choices=ops.OPS_MODES, default="auto", help=ops.OPS_HELP)
    p.add_argument("--precision", choices=PRECISIONS, help=PRECISION_HELP)
    p.set_defaults(func=generate)

    a = sub.add_parser("ablation", help="the seed's table: every row x seed on one budget, scored beside the "
                                        "noise floor (table.md, table.json, grid.png, curves.png)",
                       description="Train each --rows preset with each of --seeds from the same --ckpt for "
                                   "--iter iterations (ordinary run folders under OUT/runs), score every run "
                                   "against the whole --data set beside the noise floor, and write OUT/table.md, "
                                   "table.json, grid.png and curves.png. The train flags apply to every run. "
                                   "Run again to continue: finished runs are skipped, interrupted ones resume, "
                                   "a larger --iter continues every run. --dry-run lists the runs and their "
                                   "estimated time.")
    add_ablation_args(a)
    return parser


def main(argv=None):
    ops.readable_warnings()
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except CheckpointError as e:
        raise SystemExit(f"error: {e}")
    except (FileExistsError, NotADirectoryError, IsADirectoryError, PermissionError) as e:  # an --out that is a file, a folder without write permission ...
        raise SystemExit(f"error: {e.filename}: {e.strerror}" if e.filename else f"error: {e}") from None


if __name__ == "__main__":
    main()
