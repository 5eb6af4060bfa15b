"""U-GAT-IT: unpaired image-to-image translation with attention (CAM) and AdaLIN, full and light.

Paper: J. Kim, M. Kim, H. Kang, K. Lee, "U-GAT-IT: Unsupervised Generative Attentional Networks with
Adaptive Layer-Instance Normalization for Image-to-Image Translation", ICLR 2020, arXiv:1907.10830.

This file holds the whole method: the ResNet generator with the class activation map (CAM) attention
(Sec. 2.1.1, a_s(x) = w_s * E_s(x)) and the AdaLIN residual blocks with learned rho, the ILN up-sampling
layers, the light variant (gamma/beta from pooled features), the global (7-layer) and local (5-layer)
spectral-normalised discriminators with their own CAM (Sec. 2.1.2), the four losses of Sec. 2.2 (L_lsgan, L_cycle,
L_identity, L_cam, weighted 1, 10, 10, 1000 in the full objective)
and the training loop; plus `test` (translate a folder) and `chain` (StyleGAN2 faces -> cartoons, the
seed experiment's figure). Checkpoints use the state-dict layout of znxlwm/UGATIT-pytorch
(`networks.py`, `UGATIT.py`): keys `genA2B`, `genB2A`, `disGA`, `disGB`, `disLA`, `disLB`, with the same
parameter names and shapes, so its files load with strict=True and translate the same images.
Our own checkpoints add `g_optim`, `d_optim`, `step` and `args` (a plain dict).

What it adds to its predecessor, CycleGAN (J.-Y. Zhu et al., ICCV 2017, arXiv:1703.10593; LSGAN
adversarial loss, cycle and identity losses, a ResNet generator): an attention module in generator
and discriminator, the class activation map of an auxiliary classifier that tells source from target
(with its own loss L_cam); AdaLIN, which learns per channel how much instance versus layer
normalisation to use, so that a translation may change shape as well as texture; and two
discriminators (global and local receptive field) instead of one PatchGAN.

Differences to the reference, none of which changes a key or a shape:
- AdaILN / ILN are computed as one per-channel scale and shift (the same AdaLIN formula, fewer tensors).
- In the CAM the two re-weighted copies of the features feed a 1x1 convolution (`cam_features`, the
  paper's form). The networks run `cam_features_folded` by default (`fold_cam = True`), which folds
  the CAM weights into that convolution's weight instead (linear algebra, same result, half the
  work; tests/test_ugatit.py checks outputs and gradients of both).
- Each discriminator sees the real and the translated images as one batch (`d_adv_loss`), so spectral
  normalisation does one power iteration per discriminator call (two per step instead of the
  reference's three). Otherwise `train_step` is UGATIT.py's iteration, in its order.
- Below 128 px the reference's global discriminator shrinks its map to 1x1 and the final reflection
  pad fails. Here a discriminator keeps all its layers and weights, but when an image is too small its
  deepest stride-2 convolutions run with stride 1 (from the last one backwards) until every
  reflection pad sees a map of at least 2 px; see `Discriminator.strides_for`. At 128 px and above
  the strides are the reference's (global D at 64 px: the 5th down-sampling becomes stride 1, output
  1x1 instead of a failure).
- Training images are drawn from a per-epoch permutation seeded by (seed, epoch) and cropped and
  flipped with a generator seeded by (seed, step), so a resumed run equals an uninterrupted one.
- The step the training loop runs (below the plumbing line; tests/test_ugatit.py checks that it gives
  `train_step`'s parameters after several iterations): `train_step_fast` makes the six translations
  with three generator calls instead of eight and reuses them (detached) for the D update; the
  generators recompute their full- and half-resolution activations in backward
  (`recompute_in_backward`; `--no-recompute` keeps them); Adam updates each parameter inside backward
  as soon as its gradient is complete and drops the gradient (`AdamInBackward`, the same update); the
  discriminators take no weight gradients during the G update; --amp runs it under autocast (and
  GradScalers for fp16); fused Adam on CUDA. glibc returns freed activations to the system
  (`release_freed_memory`), and spectral normalisation divides the conv output by sigma instead of
  keeping a copy of W / sigma. Why the loop runs the fast step in every case: `setup_training`.
  At 128 px (full, batch 1, CPU, bench/bench_ugatit.py) the peak resident memory is 4.6 GiB, against
  6.9 GiB for the reference's loop driving the same networks (7.8 GiB for its own code).
- Early versions of the reference computed the norm variance as a variance of variances; the current
  one (and this file) uses the plain unbiased variance over (H, W) and (C, H, W).

Run:
    python 05_ugatit.py train --data data/face2cartoon --out runs/ugatit --img-size 128 --batch 4 --iter 250000
    python 05_ugatit.py train --resume runs/ugatit                      # continue (SIGTERM / Ctrl-C save first)
    python 05_ugatit.py train --data data/face2cartoon --out runs/ugatit_light --light --amp bf16      # less memory
    python 05_ugatit.py test --ckpt runs/ugatit --input data/face2cartoon/testA --out out/a2b
    python 05_ugatit.py chain --ugatit runs/ugatit --stylegan runs/sg2/checkpoints/best.pt --seeds 1 2 3 --walk 24 --out out/chain
    python 05_ugatit.py train --data DIR --out runs/tiny --img-size 64 --ch 8 --n-res 1 --iter 20   # CPU demo

Data: DIR/trainA and DIR/trainB (and optionally DIR/testA, DIR/testB for sample sheets), image files
in any sub-folder; unreadable files are skipped with a warning.

Run folder (the layout of 02 and 03): settings.json, log.jsonl, checkpoints/NNNNNN.pt (the newest
--keep; atomic), samples/A2B_NNNNNNN.png and B2A_... . `--resume RUN` takes a run folder or a
checkpoint file inside RUN/checkpoints (a run folder of an older version, with one checkpoint.pt,
resumes too). Ctrl-C or SIGTERM finishes the step, saves it and exits with 130 or 143. One trainer per
run folder (RUN/.lock, ops/runs.py: a second one gets one line naming the PID); every file is written
whole; a full, read-only or vanished disk, or running out of memory, stops the run with one line saying
what to do, and the checkpoints written before stay; data files that do not decode are listed in
RUN/skipped.txt.

Map of this file, in reading order (the method above the plumbing line):
    hyperparameters  HPARAMS (the defaults of the flags), ADAM_BETAS, RHO_RANGE, ADAILN_RHO_INIT,
                     ILN_RHO_INIT, CROP_MARGIN, GLOBAL_D_LAYERS, LOCAL_D_LAYERS, NET_NAMES, learning_rate
    blocks           spectral_sigma, SNConv2d, SNLinear, layer_instance_norm, adaILN, ILN, ResnetBlock,
                     ResnetAdaILNBlock, cam_features (the paper's form), cam_features_folded (fast path)
    networks         ResnetGenerator, Discriminator, build_networks, clip_rho_
    losses           lsgan_loss, cam_loss, d_adv_loss, g_adv_loss
    one iteration    adam_optimizers, train_step (D update, G update, rho clipping)
    plumbing         the loop's step (train_step_fast, setup_training: the rule), memory
                     (AdamInBackward, make_optimizers, release_freed_memory, recompute_in_backward),
                     checkpoint I/O, data (UnpairedData), run folder, train and its stages
                     (lock_existing_run, train_settings, check_inputs, set_up, restore, open_run_folder,
                     train_loop, raise_if_out_of_memory), test, chain, CLI
"""
import argparse
import io
import json
import math
import os
import re
import signal
import sys
import threading
import warnings

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.utils.checkpoint
from PIL import Image

import ops  # the image-file rule; importing ops checks the torch version (>= 2.6)
from ops import OPS_HELP, OPS_MODES, runs, set_ops  # runs: the run folder's lock and whole-file writes
from ops.device import DEVICE_HELP, resolve_device

# ----------------------------------------------------------------------------------------------
# Hyperparameters of the method, each with its source: the paper (arXiv:1907.10830) or the reference
# code (znxlwm/UGATIT-pytorch main.py, UGATIT.py, networks.py). The train flags take their defaults
# from HPARAMS, and RUN/settings.json records the values a run used; the others are not flags.
# ----------------------------------------------------------------------------------------------
HPARAMS = {
    # the full objective (Sec. 2.2): lambda_1 L_lsgan + lambda_2 L_cycle + lambda_3 L_identity + lambda_4 L_cam
    "adv_weight": 1.0,          # lambda_1 (paper; main.py --adv_weight 1)
    "cycle_weight": 10.0,       # lambda_2 (paper; main.py --cycle_weight 10)
    "identity_weight": 10.0,    # lambda_3 (paper; main.py --identity_weight 10)
    "cam_weight": 1000.0,       # lambda_4 (paper; main.py --cam_weight 1000)
    # optimisation: one Adam for both generators, one for the four discriminators (UGATIT.py build_model)
    "lr": 1e-4,                 # main.py --lr
    "weight_decay": 1e-4,       # Adam's L2 term, added to the gradient (main.py --weight_decay)
    "iter": 1_000_000,          # main.py --iteration
    "batch": 1,                 # main.py --batch_size (the seed experiment: 4 at 128 px)
    # networks
    "img_size": 256,            # main.py --img_size (the seed experiment: 128)
    "ch": 64,                   # base channels of G and D (main.py --ch)
    "n_res": 4,                 # residual blocks in encoder and decoder (main.py --n_res; networks.py's own default 6)
}
ADAM_BETAS = (0.5, 0.999)       # UGATIT.py build_model, G and D
# lr schedule (UGATIT.py with main.py --decay_flag True, the default): lr for the first half of --iter, then
# lowered by lr / (iter // 2) each step, to 0 at the end: learning_rate() below
RHO_RANGE = (0.0, 1.0)          # RhoClipper(0, 1): every AdaILN / ILN rho clamped after each G step (UGATIT.py)
ADAILN_RHO_INIT = 0.9           # networks.py adaILN
ILN_RHO_INIT = 0.0              # networks.py ILN (its gamma starts at 1, beta at 0)
CROP_MARGIN = 30                # augmentation: flip, resize to img+30, random crop img (UGATIT.py train transform)
GLOBAL_D_LAYERS = 7             # discriminator depths: UGATIT.py hard-codes 7 and 5 (main.py --n_dis is unused)
LOCAL_D_LAYERS = 5
NORM_EPS = 1e-5                 # AdaILN / ILN epsilon (networks.py)
SN_EPS = 1e-12                  # torch.nn.utils.spectral_norm's eps for the power iteration (networks.py uses it)
NET_NAMES = ("genA2B", "genB2A", "disGA", "disGB", "disLA", "disLB")   # UGATIT.py's networks = checkpoint keys
MIN_SIZE = 32                   # smallest training size: both discriminators still fit (Discriminator.strides_for)


class InputError(Exception):
    """Bad user input (folder, image, checkpoint); main() prints it as a one-line error."""


def learning_rate(step, total, lr0):
    """lr of training step `step` (1-based) of `total`: lr0 for the first half, then linear decay to 0,
    lr0 - lr0 * (step - T/2) / (T/2) (UGATIT.py subtracts lr0 / (T // 2) at every step past T // 2)."""
    half = total // 2
    if step <= half or half == 0:
        return lr0
    return max(lr0 - lr0 * (step - half) / half, 0.0)


# ----------------------------------------------------------------------------------------------
# Building blocks
# ----------------------------------------------------------------------------------------------
def full_precision(x):
    """x in float32 when it is a 16-bit float (mixed precision, --amp), else unchanged (float32; float64 in tests)."""
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def spectral_sigma(weight_orig, u, v, training):
    """Largest singular value estimate sigma(W) = u^T W v after one power iteration (Miyato et al. 2018).

    As torch.nn.utils.spectral_norm: W is weight_orig flattened to [out, in*kh*kw]; in training mode
    the buffers u [out] and v [in*kh*kw] are first updated in place, v = W^T u / |W^T u|,
    u = W v / |W v|. Computed outside autocast, in float32 (float64 nets: float64), so that the
    running vectors keep their precision.
    """
    with torch.autocast(weight_orig.device.type, enabled=False):
        w_mat = full_precision(weight_orig).flatten(1)          # [out, in*kh*kw]
        if training:
            with torch.no_grad():
                v.copy_(F.normalize(torch.mv(w_mat.t(), u), dim=0, eps=SN_EPS))
                u.copy_(F.normalize(torch.mv(w_mat, v), dim=0, eps=SN_EPS))
            u, v = u.clone(), v.clone()                          # keep backward safe from later updates
        return torch.dot(u, torch.mv(w_mat, v))


class SNConv2d(nn.Module):
    """Conv2d under spectral normalisation, keys `weight_orig`, `bias`, `weight_u`, `weight_v`.

    conv(x, W / sigma) + b is computed as conv(x, W) / sigma + b: the same value, but no normalised
    copy of W is made and kept for backward (the global D's weights are ~200 MB per network).
    forward(x, stride) lets the discriminator lower a stride for small images without new weights.
    """

    def __init__(self, in_ch, out_ch, kernel_size, stride, bias=True):
        super().__init__()
        self.stride = stride
        self.weight_orig = nn.Parameter(torch.empty(out_ch, in_ch, kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.empty(out_ch)) if bias else None
        fan_in = in_ch * kernel_size * kernel_size
        nn.init.kaiming_uniform_(self.weight_orig, a=math.sqrt(5))   # nn.Conv2d's default init
        if bias:
            nn.init.uniform_(self.bias, -1 / math.sqrt(fan_in), 1 / math.sqrt(fan_in))
        self.register_buffer("weight_u", F.normalize(torch.randn(out_ch), dim=0, eps=SN_EPS))
        self.register_buffer("weight_v", F.normalize(torch.randn(fan_in), dim=0, eps=SN_EPS))

    def forward(self, x, stride=None):
        sigma = spectral_sigma(self.weight_orig, self.weight_u, self.weight_v, self.training)
        out = F.conv2d(x, self.weight_orig.to(x.dtype), stride=stride or self.stride)
        out = out / sigma.to(out.dtype)
        return out if self.bias is None else out + self.bias.to(out.dtype)[:, None, None]


class SNLinear(nn.Module):
    """Linear (no bias) under spectral normalisation: the discriminator's CAM logits gap_fc/gmp_fc."""

    def __init__(self, in_features, out_features):
        super().__init__()
        self.weight_orig = nn.Parameter(torch.empty(out_features, in_features))
        nn.init.kaiming_uniform_(self.weight_orig, a=math.sqrt(5))
        self.register_buffer("weight_u", F.normalize(torch.randn(out_features), dim=0, eps=SN_EPS))
        self.register_buffer("weight_v", F.normalize(torch.randn(in_features), dim=0, eps=SN_EPS))

    def forward(self, x):
        sigma = spectral_sigma(self.weight_orig, self.weight_u, self.weight_v, self.training)
        return F.linear(x, self.weight_orig.to(x.dtype)) / sigma.to(x.dtype)


def layer_instance_norm(x, rho, gamma, beta, eps=NORM_EPS):
    """AdaLIN / LIN (Sec. 2.1.1): rho * IN(x) + (1 - rho) * LN(x), then * gamma + beta.

    Written as one per-channel scale and shift, out = x * a + b, so that one output tensor is made.

    x: [B, C, H, W]; rho: [1, C, 1, 1]; gamma, beta: [B, C, 1, 1] or [1, C, 1, 1].
    IN statistics over (H, W), LN statistics over (C, H, W), both with the unbiased variance
    (torch.var), as in the reference. 16-bit inputs (--amp) are normalised in float32.
    """
    xf = full_precision(x)
    in_var, in_mean = torch.var_mean(xf, dim=(2, 3), keepdim=True)        # [B, C, 1, 1]
    ln_var, ln_mean = torch.var_mean(xf, dim=(1, 2, 3), keepdim=True)     # [B, 1, 1, 1]
    s_in, s_ln = torch.rsqrt(in_var + eps), torch.rsqrt(ln_var + eps)
    scale = rho * s_in + (1 - rho) * s_ln                                 # [B, C, 1, 1]
    shift = -(rho * in_mean * s_in + (1 - rho) * ln_mean * s_ln)
    out = torch.addcmul(shift * gamma + beta, xf, scale * gamma)
    return out.to(x.dtype)


class adaILN(nn.Module):
    """Adaptive Layer-Instance Normalisation (Sec. 2.1.1): rho learned (init 0.9), gamma/beta from the FC."""

    def __init__(self, num_features):
        super().__init__()
        self.rho = nn.Parameter(torch.full((1, num_features, 1, 1), ADAILN_RHO_INIT))

    def forward(self, x, gamma, beta):
        return layer_instance_norm(x, self.rho, gamma[:, :, None, None], beta[:, :, None, None])


class ILN(nn.Module):
    """Layer-Instance Normalisation of the up-sampling path: rho (init 0), gamma (1), beta (0) learned."""

    def __init__(self, num_features):
        super().__init__()
        self.rho = nn.Parameter(torch.full((1, num_features, 1, 1), ILN_RHO_INIT))
        self.gamma = nn.Parameter(torch.ones(1, num_features, 1, 1))
        self.beta = nn.Parameter(torch.zeros(1, num_features, 1, 1))

    def forward(self, x):
        return layer_instance_norm(x, self.rho, self.gamma, self.beta)


class ResnetBlock(nn.Module):
    """Encoder residual block: x + [pad, conv3, IN, ReLU, pad, conv3, IN](x) (keys conv_block.1/.5)."""

    def __init__(self, dim):
        super().__init__()
        self.conv_block = nn.Sequential(
            nn.ReflectionPad2d(1), nn.Conv2d(dim, dim, 3, bias=False), nn.InstanceNorm2d(dim), nn.ReLU(True),
            nn.ReflectionPad2d(1), nn.Conv2d(dim, dim, 3, bias=False), nn.InstanceNorm2d(dim))

    def forward(self, x):
        return x + self.conv_block(x)


class ResnetAdaILNBlock(nn.Module):
    """Decoder residual block with AdaILN (Sec. 2.1.1); gamma/beta [B, C] come from the generator's FC."""

    def __init__(self, dim):
        super().__init__()
        self.pad1 = nn.ReflectionPad2d(1)
        self.conv1 = nn.Conv2d(dim, dim, 3, bias=False)
        self.norm1 = adaILN(dim)
        self.relu1 = nn.ReLU(True)
        self.pad2 = nn.ReflectionPad2d(1)
        self.conv2 = nn.Conv2d(dim, dim, 3, bias=False)
        self.norm2 = adaILN(dim)

    def forward(self, x, gamma, beta):
        out = self.relu1(self.norm1(self.conv1(self.pad1(x)), gamma, beta))
        out = self.norm2(self.conv2(self.pad2(out)), gamma, beta)
        return out + x


def cam_features(x, gap_fc, gmp_fc, gap_w, gmp_w, conv1x1, act):
    """Class activation map attention (Sec. 2.1.1-2.1.2, a(x) = w * E(x)), for generator and discriminator.

    x: [B, C, h, w]. The auxiliary classifier eta gives one logit from global average pooling and
    one from global max pooling (cam_logit [B, 2]). The features are multiplied by the classifier
    weights (gap_w, gmp_w [1, C]), the two re-weighted copies concatenated and mixed by a 1x1 conv.
    Returns (features [B, C, h, w], cam_logit [B, 2], heatmap [B, 1, h, w]).
    """
    gap_logit = gap_fc(x.mean(dim=(2, 3)))                                # [B, 1]
    gmp_logit = gmp_fc(x.amax(dim=(2, 3)))                                # [B, 1]
    cam_logit = torch.cat([gap_logit, gmp_logit], 1)                      # [B, 2]
    gap = x * gap_w[0, :, None, None].to(x.dtype)                         # a(x) = w_gap * E(x)
    gmp = x * gmp_w[0, :, None, None].to(x.dtype)                         # a(x) = w_gmp * E(x)
    x = act(conv1x1(torch.cat([gap, gmp], 1)))                            # [B, 2C, h, w] -> [B, C, h, w]
    heatmap = x.sum(dim=1, keepdim=True)                                  # [B, 1, h, w]
    return x, cam_logit, heatmap


def cam_features_folded(x, gap_fc, gmp_fc, gap_w, gmp_w, conv1x1, act):
    """Fast path of `cam_features` (the networks' default, `fold_cam`): the same result with the CAM
    weights folded into the 1x1 conv, conv1x1(cat[x * a, x * m]) == conv(x, W[:, :C] * a + W[:, C:] * m),
    so the two re-weighted [B, C, h, w] copies and the [B, 2C, h, w] concatenation are never made.
    """
    C = x.shape[1]
    gap_logit = gap_fc(x.mean(dim=(2, 3)))                                # [B, 1]
    gmp_logit = gmp_fc(x.amax(dim=(2, 3)))                                # [B, 1]
    cam_logit = torch.cat([gap_logit, gmp_logit], 1)                      # [B, 2]
    w = conv1x1.weight[:, :C] * gap_w[0, :, None, None] + conv1x1.weight[:, C:] * gmp_w[0, :, None, None]
    x = act(F.conv2d(x, w.to(x.dtype), conv1x1.bias.to(x.dtype)))         # [B, C, h, w]
    heatmap = x.sum(dim=1, keepdim=True)                                  # [B, 1, h, w]
    return x, cam_logit, heatmap


# ----------------------------------------------------------------------------------------------
# Networks
# ----------------------------------------------------------------------------------------------
class ResnetGenerator(nn.Module):
    """U-GAT-IT generator (Sec. 2.1.1): encoder, CAM attention, AdaILN decoder.

    ngf: base channels (64); n_blocks: residual blocks in encoder and decoder (4 in UGATIT.py);
    img_size: input size (fixes the full FC's input width); light: gamma/beta from pooled features.
    forward(img [B, 3, S, S] in [-1, 1]) -> (img [B, 3, S, S] in [-1, 1], cam_logit [B, 2],
    heatmap [B, 1, S/4, S/4]).
    """

    def __init__(self, ngf=64, n_blocks=4, img_size=256, light=False):
        super().__init__()
        self.ngf, self.n_blocks, self.img_size, self.light = ngf, n_blocks, img_size, light
        self.recompute = False        # training: recompute the high-resolution activations in backward
        self.fold_cam = True          # CAM through cam_features_folded (same result, less memory)
        C = ngf * 4                                                       # bottleneck channels
        down = [nn.ReflectionPad2d(3), nn.Conv2d(3, ngf, 7, bias=False), nn.InstanceNorm2d(ngf), nn.ReLU(True)]
        for mult in (1, 2):                                               # two stride-2 down-samplings
            down += [nn.ReflectionPad2d(1), nn.Conv2d(ngf * mult, ngf * mult * 2, 3, stride=2, bias=False),
                     nn.InstanceNorm2d(ngf * mult * 2), nn.ReLU(True)]
        down += [ResnetBlock(C) for _ in range(n_blocks)]
        self.DownBlock = nn.Sequential(*down)                             # indices 0..11 + blocks 12..

        self.gap_fc = nn.Linear(C, 1, bias=False)                         # auxiliary classifier eta
        self.gmp_fc = nn.Linear(C, 1, bias=False)
        self.conv1x1 = nn.Conv2d(2 * C, C, 1, bias=True)
        self.relu = nn.ReLU(True)

        fc_in = C if light else (img_size // 4) * (img_size // 4) * C    # full: flattened features
        self.FC = nn.Sequential(nn.Linear(fc_in, C, bias=False), nn.ReLU(True),
                                nn.Linear(C, C, bias=False), nn.ReLU(True))
        self.gamma = nn.Linear(C, C, bias=False)
        self.beta = nn.Linear(C, C, bias=False)

        for i in range(n_blocks):                                         # reference names: 1-based
            setattr(self, f"UpBlock1_{i + 1}", ResnetAdaILNBlock(C))
        up = []
        for mult in (4, 2):
            up += [nn.Upsample(scale_factor=2, mode="nearest"), nn.ReflectionPad2d(1),
                   nn.Conv2d(ngf * mult, ngf * mult // 2, 3, bias=False), ILN(ngf * mult // 2), nn.ReLU(True)]
        up += [nn.ReflectionPad2d(3), nn.Conv2d(ngf, 3, 7, bias=False), nn.Tanh()]
        self.UpBlock2 = nn.Sequential(*up)

    def forward(self, img):
        B, _, H, W = img.shape
        assert img.shape[1] == 3 and H % 4 == 0 and W % 4 == 0, f"bad input shape {tuple(img.shape)}"
        if not self.light:
            assert H == W == self.img_size, f"full generator built for {self.img_size} px, got {H}x{W}"
        x = self._run(self.DownBlock[:8], img)                            # [B, 2 ngf, H/2, W/2]
        x = self.DownBlock[8:](x)                                         # [B, C, H/4, W/4]
        cam = cam_features_folded if self.fold_cam else cam_features
        x, cam_logit, heatmap = cam(x, self.gap_fc, self.gmp_fc, self.gap_fc.weight, self.gmp_fc.weight,
                                    self.conv1x1, self.relu)
        x_ = x.mean(dim=(2, 3)) if self.light else x.flatten(1)          # [B, C] or [B, C*H*W/16]
        x_ = self.FC(x_)
        gamma, beta = self.gamma(x_), self.beta(x_)                       # [B, C] each
        for i in range(self.n_blocks):
            x = getattr(self, f"UpBlock1_{i + 1}")(x, gamma, beta)
        out = self._run(self.UpBlock2, x)                                 # [B, 3, H, W]
        return out, cam_logit, heatmap

    def _run(self, layers, x):
        """layers(x); in training with `recompute` on, through recompute_in_backward (memory only)."""
        if self.recompute and torch.is_grad_enabled():
            return recompute_in_backward(layers, x)
        return layers(x)


class Discriminator(nn.Module):
    """U-GAT-IT discriminator (Sec. 2.1.2): PatchGAN body with CAM; global n_layers=7, local 5.

    Body: reflection pad 1 + spectral-normalised 4x4 conv + LeakyReLU(0.2), n_layers - 2 times with
    stride 2, once with stride 1; channels ndf, 2 ndf, ... ndf * 2^(n_layers-2). Then CAM (the
    re-weighting uses the un-normalised `weight_orig`, a quirk of the reference kept for equal
    outputs), and a final pad 1 + 4x4 conv to one logit map.
    forward(img [B, 3, S, S]) -> (logits [B, 1, s, s], cam_logit [B, 2], heatmap [B, 1, s', s']).
    """

    def __init__(self, ndf=64, n_layers=5):
        super().__init__()
        self.n_layers = n_layers
        body = [nn.ReflectionPad2d(1), SNConv2d(3, ndf, 4, stride=2), nn.LeakyReLU(0.2, True)]
        for i in range(1, n_layers - 2):
            c = ndf * 2 ** (i - 1)
            body += [nn.ReflectionPad2d(1), SNConv2d(c, 2 * c, 4, stride=2), nn.LeakyReLU(0.2, True)]
        c = ndf * 2 ** (n_layers - 3)
        body += [nn.ReflectionPad2d(1), SNConv2d(c, 2 * c, 4, stride=1), nn.LeakyReLU(0.2, True)]
        self.model = nn.Sequential(*body)        # keys model.1, model.4, ...; forward walks it below
        C = 2 * c
        self.gap_fc = SNLinear(C, 1)
        self.gmp_fc = SNLinear(C, 1)
        self.conv1x1 = nn.Conv2d(2 * C, C, 1, bias=True)
        self.leaky_relu = nn.LeakyReLU(0.2, True)
        self.pad = nn.ReflectionPad2d(1)
        self.conv = SNConv2d(C, 1, 4, stride=1, bias=False)
        self._plans = {}
        self.fold_cam = True          # CAM through cam_features_folded (same result, less memory)

    def strides_for(self, size):
        """Strides of the body convs for a `size`-px input.

        The reference's strides when every reflection pad (body and final conv) sees >= 2 px;
        otherwise the deepest stride-2 convs become stride 1, last first, until it does.
        """
        if size not in self._plans:
            strides = [m.stride for m in self.model if isinstance(m, SNConv2d)]

            def fits(strides):
                d = size
                for s in strides:
                    if d < 2:                       # ReflectionPad2d(1) needs a map of >= 2 px
                        return False
                    d = (d + 2 - 4) // s + 1
                return d >= 2                       # input of the final pad + 4x4 conv

            while not fits(strides):
                if 2 not in strides[1:]:
                    raise ValueError(f"{size} px is too small for a {self.n_layers}-layer discriminator")
                last = max(i for i, s in enumerate(strides) if s == 2)
                strides[last] = 1
            self._plans[size] = strides
        return self._plans[size]

    def forward(self, img):
        assert img.dim() == 4 and img.shape[1] == 3, f"bad input shape {tuple(img.shape)}"
        strides = iter(self.strides_for(min(img.shape[2:])))
        x = img
        for m in self.model:
            x = m(x, next(strides)) if isinstance(m, SNConv2d) else m(x)  # [B, C, s', s']
        cam = cam_features_folded if self.fold_cam else cam_features
        x, cam_logit, heatmap = cam(x, self.gap_fc, self.gmp_fc, self.gap_fc.weight_orig,
                                    self.gmp_fc.weight_orig, self.conv1x1, self.leaky_relu)
        out = self.conv(self.pad(x))                                      # [B, 1, s'-1, s'-1]
        return out, cam_logit, heatmap


def build_networks(ch=64, n_res=4, img_size=256, light=False):
    """The six networks of UGATIT.py, in the checkpoint's key order."""
    return {
        "genA2B": ResnetGenerator(ch, n_res, img_size, light),
        "genB2A": ResnetGenerator(ch, n_res, img_size, light),
        "disGA": Discriminator(ch, GLOBAL_D_LAYERS),
        "disGB": Discriminator(ch, GLOBAL_D_LAYERS),
        "disLA": Discriminator(ch, LOCAL_D_LAYERS),
        "disLB": Discriminator(ch, LOCAL_D_LAYERS),
    }


def clip_rho_(*generators):
    """RhoClipper(0, 1): clamp every AdaILN / ILN rho into RHO_RANGE = [0, 1] after each generator step."""
    with torch.no_grad():
        for g in generators:
            for m in g.modules():
                if isinstance(m, (adaILN, ILN)):
                    m.rho.clamp_(*RHO_RANGE)


# ----------------------------------------------------------------------------------------------
# Losses (Sec. 2.2)
# ----------------------------------------------------------------------------------------------
def lsgan_loss(logit, target):
    """Least-squares GAN loss L_lsgan (Sec. 2.2), on patch logits and on CAM logits: mean (D(x) - t)^2."""
    logit = full_precision(logit)
    return F.mse_loss(logit, torch.full_like(logit, target))


def cam_loss(logit_source, logit_target):
    """Generator CAM loss L_cam (Sec. 2.2): BCE(eta_s(x) from the source domain, 1) + BCE(eta_s(x_t), 0)."""
    logit_source, logit_target = full_precision(logit_source), full_precision(logit_target)
    return (F.binary_cross_entropy_with_logits(logit_source, torch.ones_like(logit_source))
            + F.binary_cross_entropy_with_logits(logit_target, torch.zeros_like(logit_target)))


def d_adv_loss(D, real, fake):
    """Discriminator side of L_lsgan on patch logits and CAM logits, real and fake in one batch."""
    out, cam, _ = D(torch.cat([real, fake]))
    n = real.shape[0]
    return (lsgan_loss(out[:n], 1.0) + lsgan_loss(out[n:], 0.0)
            + lsgan_loss(cam[:n], 1.0) + lsgan_loss(cam[n:], 0.0))


def g_adv_loss(D, fake):
    """Generator side of L_lsgan on patch and CAM logits: (D(G(x)) - 1)^2."""
    out, cam, _ = D(fake)
    return lsgan_loss(out, 1.0) + lsgan_loss(cam, 1.0)


def adam_optimizers(nets, lr, weight_decay, betas=ADAM_BETAS):
    """torch.optim.Adam(lr, betas, weight_decay) over both generators and over all four discriminators."""
    g_params = [p for k in ("genA2B", "genB2A") for p in nets[k].parameters()]
    d_params = [p for k in ("disGA", "disGB", "disLA", "disLB") for p in nets[k].parameters()]
    return (torch.optim.Adam(g_params, lr=lr, betas=betas, weight_decay=weight_decay),
            torch.optim.Adam(d_params, lr=lr, betas=betas, weight_decay=weight_decay))


# ----------------------------------------------------------------------------------------------
# One training iteration
# ----------------------------------------------------------------------------------------------
def train_step(nets, g_optim, d_optim, real_A, real_B, w):
    """One U-GAT-IT iteration in UGATIT.py's order: D update, G update (Sec. 2.2), rho clipping.

    nets: the six networks of `build_networks`; g_optim, d_optim: Adam over both generators and over
    the four discriminators (`adam_optimizers`); real_A, real_B: [B, 3, S, S] in [-1, 1], one batch
    of each domain; w: the weights of the full objective, {adv: lambda_1, cycle: lambda_2,
    identity: lambda_3, cam: lambda_4}. One process, fp32. Returns the loss terms as floats.

    genA2B is G_{s->t} for s = A and genB2A for s = B; disGA / disLA are the global and local
    discriminators of domain A (they judge B2A translations), disGB / disLB those of domain B.
    Each discriminator sees the real and the translated images as one batch (`d_adv_loss`).
    """
    gA2B, gB2A = nets["genA2B"], nets["genB2A"]
    dGA, dGB, dLA, dLB = nets["disGA"], nets["disGB"], nets["disLA"], nets["disLB"]

    # 1. D update: the discriminators' side of lambda_1 L_lsgan (patch and CAM logits)
    with torch.no_grad():                                        # this update does not train G
        fake_A2B, _, _ = gA2B(real_A)
        fake_B2A, _, _ = gB2A(real_B)
    d_loss_A = w["adv"] * (d_adv_loss(dGA, real_A, fake_B2A) + d_adv_loss(dLA, real_A, fake_B2A))
    d_loss_B = w["adv"] * (d_adv_loss(dGB, real_B, fake_A2B) + d_adv_loss(dLB, real_B, fake_A2B))
    d_loss = d_loss_A + d_loss_B
    d_optim.zero_grad()
    d_loss.backward()
    d_optim.step()

    # 2. G update against the updated discriminators: the six translations, then the full objective
    fake_A2B, cam_A2B, _ = gA2B(real_A)                          # x_s -> G_{s->t}(x_s)
    fake_B2A, cam_B2A, _ = gB2A(real_B)
    fake_A2B2A, _, _ = gB2A(fake_A2B)                            # G_{t->s}(G_{s->t}(x_s)), L_cycle
    fake_B2A2B, _, _ = gA2B(fake_B2A)
    fake_A2A, cam_A2A, _ = gB2A(real_A)                          # G_{t->s}(x_s), L_identity
    fake_B2B, cam_B2B, _ = gA2B(real_B)
    adv_A = g_adv_loss(dGA, fake_B2A) + g_adv_loss(dLA, fake_B2A)          # L_lsgan, generator side
    adv_B = g_adv_loss(dGB, fake_A2B) + g_adv_loss(dLB, fake_A2B)
    cycle_A, cycle_B = F.l1_loss(fake_A2B2A, real_A), F.l1_loss(fake_B2A2B, real_B)       # L_cycle
    identity_A, identity_B = F.l1_loss(fake_A2A, real_A), F.l1_loss(fake_B2B, real_B)    # L_identity
    cam_A = cam_loss(cam_B2A, cam_A2A)                           # L_cam of genB2A: B is its source domain
    cam_B = cam_loss(cam_A2B, cam_B2B)                           # L_cam of genA2B: A is its source domain
    g_loss_A = w["adv"] * adv_A + w["cycle"] * cycle_A + w["identity"] * identity_A + w["cam"] * cam_A
    g_loss_B = w["adv"] * adv_B + w["cycle"] * cycle_B + w["identity"] * identity_B + w["cam"] * cam_B
    g_loss = g_loss_A + g_loss_B
    g_optim.zero_grad()
    g_loss.backward()
    g_optim.step()

    # 3. RhoClipper: rho back into [0, 1]
    clip_rho_(gA2B, gB2A)

    return {"d_loss": d_loss.item(), "g_loss": g_loss.item(), "g_adv": (adv_A + adv_B).item(),
            "g_cycle": (cycle_A + cycle_B).item(), "g_identity": (identity_A + identity_B).item(),
            "g_cam": (cam_A + cam_B).item()}


# ---- plumbing: data, checkpoints, formats, settings, distributed, run folder, CLI ----


# ----------------------------------------------------------------------------------------------
# Training memory (not the method; same updates, tested equal): Adam inside backward, glibc's
# mmap threshold, activation recomputation
# ----------------------------------------------------------------------------------------------
class AdamInBackward:
    """Adam whose update of each parameter runs inside backward, as soon as that parameter's gradient
    is complete (Tensor.register_post_accumulate_grad_hook); the gradient is then dropped.

    Adam is element-wise, so this is the same update as one Adam.step() after backward, but the
    gradients of all parameters never exist at once (0.6 GiB for the two full generators at 128 px).
    state_dict() has torch.optim.Adam's format, so each class resumes the other's checkpoints.
    Not for fp16 with a GradScaler, which must see every gradient before any step.
    """

    def __init__(self, params, **adam_kwargs):
        self.params = list(params)
        self.optims = [torch.optim.Adam([p], **adam_kwargs) for p in self.params]
        for p, opt in zip(self.params, self.optims):
            p.register_post_accumulate_grad_hook(self._stepper(opt))

    @staticmethod
    def _stepper(opt):
        def step(p):
            opt.step()
            p.grad = None
        return step

    def step(self):
        pass

    def zero_grad(self, set_to_none=True):
        for p in self.params:
            p.grad = None

    @property
    def param_groups(self):
        return [opt.param_groups[0] for opt in self.optims]

    def state_dict(self):
        states = [opt.state_dict() for opt in self.optims]
        group = {k: v for k, v in states[0]["param_groups"][0].items() if k != "params"}
        return {"state": {i: st["state"][0] for i, st in enumerate(states) if 0 in st["state"]},
                "param_groups": [dict(group, params=list(range(len(self.params))))]}

    def load_state_dict(self, state_dict):
        group = {k: v for k, v in state_dict["param_groups"][0].items() if k != "params"}
        if len(state_dict["param_groups"]) != 1 or len(state_dict["param_groups"][0]["params"]) != len(self.params):
            raise ValueError("optimizer state holds a different set of parameters")
        for i, opt in enumerate(self.optims):
            state = {0: state_dict["state"][i]} if i in state_dict["state"] else {}
            opt.load_state_dict({"state": state, "param_groups": [dict(group, params=[0])]})


def make_optimizers(nets, lr, weight_decay, in_backward=True):
    """Adam(lr, betas (0.5, 0.999), weight_decay) for both generators and for all four discriminators.

    in_backward: AdamInBackward (same updates, less memory); False: torch.optim.Adam (fp16 scaler).
    """
    kwargs = dict(lr=lr, betas=ADAM_BETAS, weight_decay=weight_decay)
    g_params = [p for k in ("genA2B", "genB2A") for p in nets[k].parameters()]
    d_params = [p for k in ("disGA", "disGB", "disLA", "disLB") for p in nets[k].parameters()]
    if all(p.is_cuda for p in g_params + d_params):  # fused Adam takes CUDA tensors (CPU only on newer torch)
        kwargs["fused"] = True                                           # one pass per tensor
    cls = AdamInBackward if in_backward else torch.optim.Adam
    return cls(g_params, **kwargs), cls(d_params, **kwargs)


def release_freed_memory():
    """CPU: serve blocks >= 1 MiB with mmap (glibc M_MMAP_THRESHOLD), so freed activations return to the OS.

    glibc otherwise raises its threshold up to 32 MiB after the first large frees and keeps such
    blocks in its heap: ~0.8 GiB of resident memory held for nothing at 128 px. No-op without glibc.
    """
    import ctypes
    try:
        ctypes.CDLL("libc.so.6").mallopt(-3, 1 << 20)                  # -3 = M_MMAP_THRESHOLD
    except (OSError, AttributeError):
        pass


def recompute_in_backward(layers, x):
    """layers(x) keeping only x for backward: the activations inside `layers` are recomputed there.

    The generators run their full- and half-resolution layers this way in training: about half of
    the activation memory for a quarter of the generator's FLOPs (`--no-recompute` turns it off).
    """
    return torch.utils.checkpoint.checkpoint(layers, x, use_reentrant=False)


def autocast_factory(amp, device):
    """Context manager factory for --amp {bf16, fp16} (None: fp32)."""
    import contextlib
    if amp is None:
        return contextlib.nullcontext
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}[amp]
    return lambda: torch.autocast(device_type=device.type, dtype=dtype)


# ----------------------------------------------------------------------------------------------
# The step the training loop runs: train_step's fast form (same updates, tested equal)
# ----------------------------------------------------------------------------------------------
def set_requires_grad(nets, flag):
    for net in nets:
        for p in net.parameters():
            p.requires_grad_(flag)


def train_step_fast(nets, g_optim, d_optim, real_A, real_B, w, autocast, scalers=None):
    """`train_step` with fewer generator calls, less memory and optional mixed precision.

    The same D update, G update and rho clipping; differences, none of which changes an update
    beyond float rounding (tests/test_ugatit.py compares the parameters after several steps):
    - All six translations (A2B, B2A, A2A, B2B, A2B2A, B2A2B) come from three generator calls:
      genA2B on [A; B], genB2A on [B; A; A2B] and genA2B on B2A (the norms are per sample, so
      batching is exact). They are computed once, before the D update, detached for it and reused
      by the G update, which is exact since D's update does not touch G (train_step runs the two
      generators twice, as UGATIT.py does, 8 calls in all).
    - The discriminators take no weight gradients during the G update (only input gradients).
    - Gradients are freed as soon as they are used (zero_grad(set_to_none=True) after each update;
      with AdamInBackward they never exist all at once).
    - autocast: a context manager factory (nullcontext for fp32, `autocast_factory`); scalers:
      (d_scaler, g_scaler) for fp16 with torch.amp.GradScaler, else None.
    """
    gA2B, gB2A = nets["genA2B"], nets["genB2A"]
    dGA, dGB, dLA, dLB = nets["disGA"], nets["disGB"], nets["disLA"], nets["disLB"]
    discriminators = (dGA, dGB, dLA, dLB)
    n = real_A.shape[0]

    # Generator forward (kept for the G update) ------------------------------------------------
    with autocast():
        out_AB, cam_AB, _ = gA2B(torch.cat([real_A, real_B]))     # [2n, 3, S, S]: A2B, B2B
        fake_A2B, fake_B2B = out_AB[:n], out_AB[n:]
        out_BA, cam_BA, _ = gB2A(torch.cat([real_B, real_A, fake_A2B]))   # [3n, ...]: B2A, A2A, A2B2A
        fake_B2A, fake_A2A, fake_A2B2A = out_BA[:n], out_BA[n:2 * n], out_BA[2 * n:]
        fake_B2A2B, _, _ = gA2B(fake_B2A)

    # D update: LSGAN on patch and CAM logits, adversarial weight only -------------------------
    set_requires_grad(discriminators, True)
    with autocast():
        fB2A, fA2B = fake_B2A.detach(), fake_A2B.detach()
        d_loss_A = w["adv"] * (d_adv_loss(dGA, real_A, fB2A) + d_adv_loss(dLA, real_A, fB2A))
        d_loss_B = w["adv"] * (d_adv_loss(dGB, real_B, fA2B) + d_adv_loss(dLB, real_B, fA2B))
        d_loss = d_loss_A + d_loss_B
    _backward_step(d_loss, d_optim, scalers and scalers[0])
    d_optim.zero_grad(set_to_none=True)                            # free D grads before the G pass

    # G update: adversarial + cycle + identity + CAM (Sec. 2.2) ---------------------------------
    set_requires_grad(discriminators, False)                       # only input grads through D
    with autocast():
        adv_A = g_adv_loss(dGA, fake_B2A) + g_adv_loss(dLA, fake_B2A)
        adv_B = g_adv_loss(dGB, fake_A2B) + g_adv_loss(dLB, fake_A2B)
    cycle_A = F.l1_loss(full_precision(fake_A2B2A), real_A)        # L_cycle
    cycle_B = F.l1_loss(full_precision(fake_B2A2B), real_B)
    identity_A = F.l1_loss(full_precision(fake_A2A), real_A)       # L_identity
    identity_B = F.l1_loss(full_precision(fake_B2B), real_B)
    cam_A = cam_loss(cam_BA[:n], cam_BA[n:2 * n])                  # genB2A: B is its source domain
    cam_B = cam_loss(cam_AB[:n], cam_AB[n:])                       # genA2B: A is its source domain
    g_loss_A = w["adv"] * adv_A + w["cycle"] * cycle_A + w["identity"] * identity_A + w["cam"] * cam_A
    g_loss_B = w["adv"] * adv_B + w["cycle"] * cycle_B + w["identity"] * identity_B + w["cam"] * cam_B
    g_loss = g_loss_A + g_loss_B
    _backward_step(g_loss, g_optim, scalers and scalers[1])
    g_optim.zero_grad(set_to_none=True)
    set_requires_grad(discriminators, True)
    clip_rho_(gA2B, gB2A)

    return {"d_loss": d_loss.item(), "g_loss": g_loss.item(), "g_adv": (adv_A + adv_B).item(),
            "g_cycle": (cycle_A + cycle_B).item(), "g_identity": (identity_A + identity_B).item(),
            "g_cam": (cam_A + cam_B).item()}


def _backward_step(loss, optim, scaler):
    if scaler is not None:                   # fp16: unscale and skip steps with inf/nan gradients
        scaler.scale(loss).backward()
        scaler.step(optim)
        scaler.update()
    else:
        loss.backward()                      # AdamInBackward steps each parameter inside this backward
        optim.step()                         # (its step() does nothing); torch's Adam steps here


def loss_weights(args):
    """The weights of the full objective from the train flags: {adv, cycle, identity, cam}."""
    return {"adv": args.adv_weight, "cycle": args.cycle_weight, "identity": args.identity_weight,
            "cam": args.cam_weight}


def setup_training(nets, args, device, kind="fast"):
    """What `train` sets up before its first iteration: the optimisers and the step it calls.

    The rule: the loop runs `train_step_fast` in every case, with `make_optimizers` (Adam inside
    backward, except for fp16), activation recomputation unless --no-recompute, autocast for --amp
    and GradScalers for fp16. Measured side by side (bench/bench_ugatit.py --step plain --step fast,
    interleaved rounds, fp32, batch 1, one thread per worker on a shared 2-core CPU; time of
    train_step_fast / time of train_step, median and per-round range):
        128 px, ch 64, n_res 4, full 0.83x (0.69-0.94), light 0.99x (0.89-1.30); peak memory
            5.2 vs 5.6 GiB (full) and 3.1 vs 3.6 GiB (light)
        64 px, ch 8, n_res 1 (the CPU demo): with --no-recompute full 0.80x (0.65-1.57),
            light 0.92x (0.89-1.20); with recomputation (the default) 1.15x (1.06-1.45) and
            1.13x (1.05-1.26), the one case where train_step is faster, and there the fast step
            with --no-recompute is faster still
    so the plain step is never the fastest choice, --amp needs the fast one, and the fast one
    holds the least memory (the limit that sets batch and size on a GPU, as the seed's 11 GB).
    kind="plain" (tests, bench/bench_ugatit.py --step plain): torch.optim.Adam and `train_step`.
    Returns (step, g_optim, d_optim, scalers): step(real_A, real_B) -> the losses of one iteration.
    """
    w = loss_weights(args)
    if device.type == "cpu":
        release_freed_memory()
    if kind == "plain":
        if args.amp is not None:
            raise ValueError("train_step is the fp32 iteration; --amp runs train_step_fast")
        for g in (nets["genA2B"], nets["genB2A"]):
            g.recompute = False
        g_optim, d_optim = adam_optimizers(nets, args.lr, args.weight_decay)
        return (lambda real_A, real_B: train_step(nets, g_optim, d_optim, real_A, real_B, w)), g_optim, d_optim, None
    for g in (nets["genA2B"], nets["genB2A"]):
        g.recompute = not args.no_recompute
    g_optim, d_optim = make_optimizers(nets, args.lr, args.weight_decay, in_backward=args.amp != "fp16")
    scalers = (torch.amp.GradScaler("cuda"), torch.amp.GradScaler("cuda")) if args.amp == "fp16" else None
    autocast = autocast_factory(args.amp, device)

    def step(real_A, real_B):
        return train_step_fast(nets, g_optim, d_optim, real_A, real_B, w, autocast, scalers)
    return step, g_optim, d_optim, scalers


# ----------------------------------------------------------------------------------------------
# Checkpoint I/O
# ----------------------------------------------------------------------------------------------
def generator_config(state, where="checkpoint"):
    """Read (ch, n_res, light, img_size) back from a generator state dict's shapes.

    img_size is None for the light variant (its FC does not depend on the size).
    """
    try:
        ch = state["DownBlock.1.weight"].shape[0]
        fc_in = state["FC.0.weight"].shape[1]
    except KeyError as e:
        raise InputError(f"{where}: not a U-GAT-IT generator (missing {e.args[0]})") from None
    n_res = len([k for k in state if re.fullmatch(r"UpBlock1_\d+\.norm1\.rho", k)])
    C = 4 * ch
    if fc_in == C:
        return ch, n_res, True, None
    side = math.isqrt(fc_in // C)
    if side * side * C != fc_in:
        raise InputError(f"{where}: FC.0.weight has {fc_in} inputs, not (S/4)^2 * {C} for any size S")
    return ch, n_res, False, 4 * side


def save_checkpoint(path, ckpt):
    """torch.save(ckpt) to a temp file in the same folder, then os.replace: never a partial file."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    buf = io.BytesIO()  # serialised in memory first: a full disk is then an OSError with its errno
    torch.save(ckpt, buf)  # (torch's zip writer reports it as an unnamed RuntimeError)
    runs.write_atomic(path, lambda f: f.write(buf.getbuffer()))


def load_checkpoint(path):
    """Load one of our checkpoints or a UGATIT-pytorch `*_params_*.pt` (weights only)."""
    if not os.path.isfile(path):
        raise InputError(f"{path}: no such checkpoint file")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        first = (str(e).strip().splitlines() or [""])[0]
        raise InputError(f"{path}: cannot be read as a checkpoint ({type(e).__name__}: {first})") from None
    if not isinstance(ckpt, dict) or "genA2B" not in ckpt:
        raise InputError(f"{path}: no 'genA2B' entry; expected keys {', '.join(NET_NAMES)}")
    return ckpt


def load_generator(path, direction="A2B", img_size=None, device="cpu"):
    """Build the generator stored under gen{direction} in `path`, sized from its shapes (strict load).

    img_size: for the full variant it must equal the checkpoint's size (None: take it); for light,
    None means the training size stored in `args`, else 256. A run folder gives its newest checkpoint.
    """
    if os.path.isdir(path):
        files = find_resume(path)[1]
        if not files:
            raise InputError(f"{path}: a folder without checkpoints/NNNNNN.pt or checkpoint.pt")
        path = files[0]
    ckpt = load_checkpoint(path)
    key = "gen" + direction
    if key not in ckpt:
        raise InputError(f"{path}: no '{key}' entry")
    ch, n_res, light, size = generator_config(ckpt[key], path)
    if light:
        size = img_size or (ckpt.get("args") or {}).get("img_size", 256)
    elif img_size is not None and img_size != size:
        raise InputError(f"{path}: full U-GAT-IT trained at {size} px cannot run at --img-size {img_size} "
                         "(its FC input width depends on the size)")
    if size % 4:
        raise InputError(f"--img-size {size}: must be a multiple of 4")
    g = ResnetGenerator(ch, n_res, size, light)
    try:
        g.load_state_dict(ckpt[key], strict=True)
    except RuntimeError as e:
        raise InputError(f"{path}: {key} does not match the U-GAT-IT layout: {str(e).splitlines()[0]}") from None
    return g.to(device).eval(), size


# ----------------------------------------------------------------------------------------------
# Data
# ----------------------------------------------------------------------------------------------
def list_images(folder):
    """Image files under `folder` (recursive, sorted), by extension. `overview/` folders are skipped:
    01_prepare_data.py writes its contact sheet there, and it is not a training image."""
    found, left_out = [], []
    for root, dirs, files in os.walk(folder):
        dirs[:] = [d for d in dirs if d != "overview"]
        found += [os.path.join(root, f) for f in files if ops.is_image_file(f)]
        left_out += [os.path.relpath(os.path.join(root, f), folder) for f in files if not ops.is_image_file(f)]
    ops.warn_left_out(folder, sorted(left_out))
    return sorted(found)


def read_image(path, size, skipped=None):
    """RGB image resized to (size, size) with PIL bilinear (torchvision's Resize on PIL), or None: a
    file that does not decode is one warning and, with a `skipped` list, one line `path: error` in it."""
    try:
        with Image.open(path) as im:
            im = im.convert("RGB").resize((size, size), Image.BILINEAR)
            return torch.from_numpy(np.asarray(im).copy()).permute(2, 0, 1)  # [3, size, size] uint8
    except Exception as e:  # any decoder error: skip the file, as promised in the docstring
        why = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else 'unreadable'}"
        warnings.warn(f"{path}: skipped, cannot be read as an image ({why})")
        if skipped is not None:
            skipped.append(f"{path}: {why}")
        return None


def load_folder(folder, size, skipped=None):
    """All readable images of `folder` as uint8 [N, 3, size, size] (decoded once, kept in memory);
    the files that do not decode are added to `skipped`."""
    imgs = [t for t in (read_image(p, size, skipped) for p in list_images(folder)) if t is not None]
    if not imgs:
        raise InputError(f"{folder}: no readable images")
    return torch.stack(imgs)


def to_float(img_u8):
    """uint8 [0, 255] -> float [-1, 1] (ToTensor + Normalize(0.5, 0.5))."""
    return img_u8.float().div(127.5).sub(1.0)


def seed_of(seed, domain, count, salt):
    """A reproducible 62-bit seed from (run seed, domain 'A'/'B', epoch or step, salt)."""
    return (((seed * 1_000_003 + "AB".index(domain)) * 1_000_000_007 + count) * 4 + salt) % 2**62


class UnpairedData:
    """trainA/trainB (and testA/testB when present) of DIR, decoded once at img_size + 30 px; the
    files that do not decode are listed in `skipped` (`path: error`, one each).

    batch(domain, step, n) draws the step's images deterministically: a permutation per epoch
    seeded by (seed, domain, epoch), then a random crop and horizontal flip seeded by (seed, domain,
    step) (reference: RandomHorizontalFlip, Resize(img+30), RandomCrop(img)).
    """

    def __init__(self, root, img_size, seed=0, with_test=True):
        if not os.path.isdir(root):
            raise InputError(f"{root}: data folder not found")
        for d in ("trainA", "trainB"):
            if not os.path.isdir(os.path.join(root, d)):
                raise InputError(f"{os.path.join(root, d)}: missing; the data folder needs trainA and trainB")
        self.img_size, self.seed, self.skipped = img_size, seed, []
        self.train = {d: load_folder(os.path.join(root, "train" + d), img_size + CROP_MARGIN, self.skipped)
                      for d in "AB"}
        self.test = {}
        for d in "AB":
            folder = os.path.join(root, "test" + d)
            if with_test and os.path.isdir(folder) and list_images(folder):
                self.test[d] = load_folder(folder, img_size, self.skipped)
        self._perm = {}

    def _index(self, domain, pos):
        n = len(self.train[domain])
        epoch = pos // n
        if self._perm.get(domain, (None,))[0] != epoch:
            g = torch.Generator().manual_seed(seed_of(self.seed, domain, epoch, 0))
            self._perm[domain] = (epoch, torch.randperm(n, generator=g))
        return int(self._perm[domain][1][pos % n])

    def batch(self, domain, step, n):
        """Float [n, 3, S, S] in [-1, 1] for training step `step` (1-based)."""
        g = torch.Generator().manual_seed(seed_of(self.seed, domain, step, 1))
        S, out = self.img_size, []
        for i in range(n):
            img = self.train[domain][self._index(domain, (step - 1) * n + i)]
            y, x = torch.randint(0, CROP_MARGIN + 1, (2,), generator=g).tolist()
            img = img[:, y:y + S, x:x + S]
            if torch.rand((), generator=g) < 0.5:
                img = img.flip(-1)
            out.append(img)
        return to_float(torch.stack(out))

    def fixed(self, domain, n):
        """Up to n train images center-cropped plus up to n test images, for sample sheets."""
        m = CROP_MARGIN // 2
        train = self.train[domain][:n, :, m:m + self.img_size, m:m + self.img_size]
        test = self.test.get(domain, train[:0])[:n]
        return to_float(torch.cat([train, test]))


# ---- Run folder contract: identical in 02, 03 and 05 (tests/test_run_folder.py compares the source) ----
class ResumeError(InputError):
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


# ----------------------------------------------------------------------------------------------
# train(args)
# ----------------------------------------------------------------------------------------------
ARCH_KEYS = ("img_size", "light", "ch", "n_res")


def load_run_checkpoint(path):
    """One of our training checkpoints (networks, optimisers, step), for --resume."""
    ckpt = load_checkpoint(path)
    if "g_optim" not in ckpt or "step" not in ckpt:
        raise InputError(f"{path}: has no optimiser state/step to resume from")
    return ckpt


def resume_settings(args, saved, where):
    """The run's own settings with --resume. A flag given on the command line (a value other than
    its default) replaces the saved one; the architecture (ARCH_KEYS) must match the run's."""
    defaults = vars(build_parser().parse_args(["train"]))
    cfg = argparse.Namespace(**{k: v for k, v in vars(args).items()})
    for k, v in saved.items():
        if k not in defaults or k in ("resume", "command"):
            continue
        given = getattr(args, k) != defaults[k]
        if given and k in ARCH_KEYS and getattr(args, k) != v:
            raise InputError(f"{where}: was trained with --{k.replace('_', '-')} {v}, not {getattr(args, k)}")
        if not given:
            setattr(cfg, k, v)
    return cfg


def train(args):
    """Train U-GAT-IT on DIR/trainA <-> DIR/trainB. Run folder (as 03_stylegan2_ada.py): settings.json,
    log.jsonl, checkpoints/NNNNNN.pt (the newest --keep), samples/, skipped.txt (the data files that do
    not decode). `--resume RUN` continues RUN (a bare `--resume` continues --out if it exists);
    `--resume FILE` continues a checkpoint file, in RUN when the file is in RUN/checkpoints, else in a
    new --out. The stages, in order:
        lock_existing_run  --resume RUN: RUN/.lock (one line if another trainer holds it), before
                           anything in RUN is touched; a new run's folder is locked before it is written
        train_settings     the flags, or with --resume the run's own settings and newest checkpoint
        set_up             data, networks, optimisers and the step (setup_training); with --resume restored
        open_run_folder    settings.json, samples/, checkpoints/, skipped.txt; a resumed run's log cut back
        train_loop         one step per iteration; log lines, sample sheets and checkpoints when due
    A write the machine refuses (disk full, read-only or vanished folder: ops.runs.is_write_failure)
    stops the run with one line naming the file and the errno; what was written before stays, and
    `--resume RUN` continues once the disk is back."""
    lock = lock_existing_run(args)  # before open_resume removes stray files or cut_run_logs rewrites the log
    try:
        args, resume, ckpt_file, restart = train_settings(args)
        device, data = check_inputs(args)
        nets, step_fn, g_optim, d_optim, scalers = set_up(args, device)
        start = restore(args, nets, g_optim, d_optim, scalers, resume, ckpt_file)
        if lock is None:
            lock = runs.RunLock(args.out)  # a new run folder (or a run continued into a new --out): ours now
        try:
            settings = open_run_folder(args, data.skipped, cut_from=start if resume is not None else
                                       (-1 if restart else None))
            train_loop(args, settings, data, device, nets, step_fn, g_optim, d_optim, scalers, start)
        except OSError as e:
            if runs.is_write_failure(e):  # disk full, read-only, vanished: one line, the run resumes later
                raise SystemExit(runs.write_failure(e, args.out, os.path.basename(__file__))) from None
            raise
        if data.skipped:
            print(f"skipped {len(data.skipped)} unreadable image(s) of {args.data}, listed in "
                  f"{os.path.join(args.out, 'skipped.txt')}")
        return nets
    finally:
        if lock is not None:
            lock.release()


def lock_existing_run(args):
    """--resume RUN of this script: its lock (one line if another trainer holds it), taken before
    the stray temporary files go and the log is cut. Nothing is created in a folder that is not this
    script's run (its settings.json is checked first); a run continued into a new --out, or a new
    run, is locked right before its folder is first written."""
    if not args.resume or (args.resume is True and args.out and not os.path.exists(args.out)):
        return None
    where = args.out if args.resume is True else args.resume
    if not where:
        return None  # train_settings says what is missing
    run = find_resume(where, None if args.resume is True else args.out)[0]
    if not os.path.isfile(os.path.join(run, "settings.json")):
        return None
    read_run_settings(run, ("img_size", "cam_weight"))  # another script's run: one line, untouched
    return runs.RunLock(run)


def train_settings(args):
    """(args, resume, ckpt_file, restart): the settings of this run. A new run: the flags (its --out
    must be new or empty). --resume: the run's own settings and its newest checkpoint that loads
    (`resume`, read from `ckpt_file`), or, for a run stopped before its first checkpoint, its
    settings.json and restart=True (step 0)."""
    resume = ckpt_file = None
    restart = False
    if args.resume and not (args.resume is True and args.out and not os.path.exists(args.out)):
        where = args.out if args.resume is True else args.resume
        if not where:
            raise ResumeError("--resume needs a run folder: --resume RUN (or --out RUN --resume)")
        run, ckpt_file, resume = open_resume(where, None if args.resume is True else args.out,
                                             load_run_checkpoint)
        if resume is not None:
            args = resume_settings(args, resume.get("args") or {}, ckpt_file)
        else:
            args = resume_settings(args, read_run_settings(run, ("img_size", "cam_weight")),
                                   os.path.join(run, "settings.json"))
            restart = True
        args.out = run
    else:
        if args.data is None or args.out is None:
            raise InputError("train needs --data DIR and --out RUN (or --resume RUN)")
        if os.path.isdir(args.out) and [n for n in os.listdir(args.out) if n != runs.LOCK_NAME]:
            raise InputError(f"{args.out}: run folder exists and is not empty; continue it with "
                             f"--resume {args.out} or choose another --out")
    return args, resume, ckpt_file, restart


def check_inputs(args):
    """The device, every flag and the data, read before anything is written: (device, UnpairedData)."""
    device = resolve_device(args.device)
    if args.amp == "fp16" and device.type != "cuda":
        raise InputError("--amp fp16 needs a CUDA device (use --amp bf16 on CPU)")
    if args.img_size % 4 or args.img_size < MIN_SIZE:
        raise InputError(f"--img-size {args.img_size}: must be a multiple of 4 and at least {MIN_SIZE}")
    for flag in ("batch", "keep", "ch", "log_every", "sample_every", "save_every"):
        if getattr(args, flag) < 1:
            raise InputError(f"--{flag.replace('_', '-')} {getattr(args, flag)}: must be at least 1")
    if args.iter < 0:
        raise InputError(f"--iter {args.iter}: must be at least 0")
    return device, UnpairedData(args.data, args.img_size, seed=args.seed)


def set_up(args, device):
    """The six networks (seeded by --seed) on the device, the optimisers and the step (setup_training)."""
    torch.manual_seed(args.seed)
    try:
        nets = build_networks(args.ch, args.n_res, args.img_size, args.light)
        for net in nets.values():
            net.to(device).train()
    except (MemoryError, RuntimeError) as e:
        raise_if_out_of_memory(e, args)
        raise
    step_fn, g_optim, d_optim, scalers = setup_training(nets, args, device)
    return nets, step_fn, g_optim, d_optim, scalers


def restore(args, nets, g_optim, d_optim, scalers, resume, ckpt_file):
    """--resume: networks, optimisers and GradScalers from the checkpoint. Returns the step to start from."""
    if resume is None:
        return 0
    for k in NET_NAMES:
        try:
            nets[k].load_state_dict(resume[k], strict=True)
        except (KeyError, RuntimeError) as e:
            raise InputError(f"{ckpt_file}: {k} does not fit these settings: {str(e).splitlines()[0]}") from None
    g_optim.load_state_dict(resume["g_optim"])
    d_optim.load_state_dict(resume["d_optim"])
    if scalers is not None and "scalers" in resume:
        for s, st in zip(scalers, resume["scalers"]):
            s.load_state_dict(st)
    print(f"resuming {ckpt_file} at step {int(resume['step'])}")
    return int(resume["step"])


def open_run_folder(args, skipped, cut_from=None):
    """RUN/samples, RUN/checkpoints, RUN/settings.json (at the run's first start) and RUN/skipped.txt,
    only now: bad input before this leaves nothing behind. cut_from: on resume, what a killed run
    logged after that step goes (-1: a restart from step 0, all). Returns the settings."""
    settings = {k: v for k, v in vars(args).items() if k not in ("func", "resume")}
    for sub in ("samples", "checkpoints"):
        os.makedirs(os.path.join(args.out, sub), exist_ok=True)
    if not os.path.isfile(os.path.join(args.out, "settings.json")):
        runs.write_atomic(os.path.join(args.out, "settings.json"), lambda f: json.dump(settings, f, indent=1),
                          mode="w")
    if cut_from is not None:
        cut_run_logs(args.out, cut_from)
    if skipped:
        runs.write_atomic(os.path.join(args.out, "skipped.txt"), lambda f: f.write("\n".join(skipped) + "\n"),
                          mode="w")
    return settings


def train_loop(args, settings, data, device, nets, step_fn, g_optim, d_optim, scalers, start):
    """Steps start + 1 .. --iter: the lr, one batch per domain, the step, then the log line, the sample
    sheets and a checkpoint when due. Ctrl-C or SIGTERM: the step under way finishes and is saved, and
    the run exits with 130 or 143; a second Ctrl-C stops at once, without saving that step."""
    from tqdm import tqdm
    log = os.path.join(args.out, "log.jsonl")

    def checkpoint(step):
        ckpt = {k: nets[k].state_dict() for k in NET_NAMES}
        ckpt.update(g_optim=g_optim.state_dict(), d_optim=d_optim.state_dict(), step=step, args=settings)
        if scalers is not None:
            ckpt["scalers"] = [s.state_dict() for s in scalers]
        folder = os.path.join(args.out, "checkpoints")
        runs.sync(log)  # the log lines up to this step are on the disk before it
        save_checkpoint(os.path.join(folder, f"{step:06d}.pt"), ckpt)
        for old in checkpoint_files(folder)[:-args.keep]:  # keep the newest --keep
            os.remove(old)
        return os.path.join(folder, f"{step:06d}.pt")

    step, saved = start, None
    with _StopRequest() as stop:
        bar = tqdm(range(start + 1, args.iter + 1), initial=start, total=args.iter,
                   disable=args.quiet, dynamic_ncols=True)
        try:
            for step in bar:
                lr = learning_rate(step, args.iter, args.lr)
                for opt in (g_optim, d_optim):
                    for group in opt.param_groups:
                        group["lr"] = lr
                try:
                    real_A = data.batch("A", step, args.batch).to(device)
                    real_B = data.batch("B", step, args.batch).to(device)
                    losses = step_fn(real_A, real_B)
                except (MemoryError, RuntimeError) as e:
                    raise_if_out_of_memory(e, args, step)
                    raise
                if not all(math.isfinite(v) for v in losses.values()):
                    raise FloatingPointError(f"non-finite loss at step {step}: {losses}")
                if step % args.log_every == 0 or step == args.iter:
                    bar.set_postfix(d=f"{losses['d_loss']:.3f}", g=f"{losses['g_loss']:.3f}")
                    runs.append_line(log, json.dumps({"step": step, "lr": lr,
                                                      **{k: round(v, 6) for k, v in losses.items()}}))
                if step % args.sample_every == 0 or step == args.iter:
                    write_sample_sheets(nets, data, os.path.join(args.out, "samples"), step, device)
                if step % args.save_every == 0 or step == args.iter or stop.requested:
                    saved = checkpoint(step)
                if stop.requested:
                    break
        except KeyboardInterrupt:  # a second Ctrl-C, during a step: stop without saving it
            print(f"\nSIGINT: interrupted during iteration {step}, not saved. Continue from the last "
                  f"checkpoint with: python {os.path.basename(__file__)} train --resume {args.out}",
                  file=sys.stderr)
            raise SystemExit(130) from None
        finally:
            bar.close()
    if stop.requested:
        if saved is None or not saved.endswith(f"{step:06d}.pt"):  # a signal after this step's save check
            saved = checkpoint(step)
        print("\n" + stop.message(step, saved, os.path.basename(__file__), args.out), file=sys.stderr)
        raise SystemExit(stop.exit_code)
    return saved


# CUDA's out-of-memory error (torch.OutOfMemoryError in newer torch)
OUT_OF_MEMORY = runs.OUT_OF_MEMORY


def raise_if_out_of_memory(e, args, step=None):
    """Running out of memory (out_of_memory) in training step `step` (None: building the networks) as
    one line naming what to lower: --batch and --amp, which --resume takes, else --img-size or
    --light (a new run). Nothing is saved: a step cut short may have updated some parameters already
    (Adam runs inside backward); the checkpoints written so far stay. Other errors: returns, for the
    caller to re-raise."""
    memory = runs.out_of_memory(e)
    if memory is None:
        return
    what = (f"batch {args.batch} at {args.img_size} px, {'light' if args.light else 'full'}"
            + (f", --amp {args.amp}" if args.amp else "") + f"; {memory[1]}")
    new_run = "a smaller --img-size" + ("" if args.light else " or --light")
    if step is None:
        raise SystemExit(f"error: out of {memory[0]} memory building the networks ({what}); try {new_run}") from None
    half = max(1, args.batch // 2)
    # --resume takes a flag given with a value other than its default: --batch 1 (the default) only in a new run
    flags = ([f"--batch {half}"] if half < args.batch and half != HPARAMS["batch"] else []) + \
        (["--amp bf16"] if args.amp is None else [])
    if half < args.batch and half == HPARAMS["batch"]:
        new_run = f"--batch {half}, " + new_run
    go_on = (f"continue in less memory with: python {os.path.basename(__file__)} train --resume {args.out} "
             f"{' '.join(flags)}; or " if flags else "")
    kept = "; the checkpoints written so far are intact" if checkpoint_files(
        os.path.join(args.out, "checkpoints")) else ""
    raise SystemExit(f"error: out of {memory[0]} memory in step {step} ({what}); {go_on}start a new run with "
                     f"{new_run}{kept}") from None


# ----------------------------------------------------------------------------------------------
# Sample sheets and test(args)
# ----------------------------------------------------------------------------------------------
def jet(x):
    """Jet colour map of x in [0, 1]: [..., H, W] -> [..., 3, H, W] in [0, 1] (as cv2 COLORMAP_JET)."""
    return torch.stack([(1.5 - (4 * x - c).abs()).clamp(0, 1) for c in (3, 2, 1)], dim=-3)


def heatmap_tile(heatmap, size):
    """CAM heat map [B, 1, h, w] -> coloured tile [B, 3, size, size] in [-1, 1] (min-max normalised)."""
    h = heatmap.float()
    h = h - h.amin(dim=(2, 3), keepdim=True)
    h = h / h.amax(dim=(2, 3), keepdim=True).clamp_min(1e-12)
    h = F.interpolate(h, size=(size, size), mode="bilinear", align_corners=False)
    return jet(h[:, 0]) * 2 - 1


@torch.no_grad()
def translation_sheet(g_fwd, g_back, real):
    """Rows of 7 tiles (reference layout): real, CAM(x2x), x2x, CAM(x2y), x2y, CAM(x2y2x), x2y2x."""
    S = real.shape[-1]
    same, _, h_same = g_back(real)
    fwd, _, h_fwd = g_fwd(real)
    cyc, _, h_cyc = g_back(fwd)
    tiles = [real, heatmap_tile(h_same, S), same, heatmap_tile(h_fwd, S), fwd, heatmap_tile(h_cyc, S), cyc]
    rows = torch.cat([t.float().cpu() for t in tiles], dim=3)            # [B, 3, S, 7S]
    return torch.cat(list(rows), dim=1)                                 # [3, B*S, 7S]


def write_sample_sheets(nets, data, folder, step, device, n=5):
    """RUN/samples/A2B_{step}.png and B2A_{step}.png (networks in eval mode meanwhile)."""
    for net in nets.values():
        net.eval()
    for src, g_fwd, g_back in (("A", nets["genA2B"], nets["genB2A"]), ("B", nets["genB2A"], nets["genA2B"])):
        sheet = translation_sheet(g_fwd, g_back, data.fixed(src, n).to(device))
        name = "A2B" if src == "A" else "B2A"
        save_png(sheet, os.path.join(folder, f"{name}_{step:07d}.png"))
    for net in nets.values():
        net.train()


def save_png(img, path):
    """float [3, H, W] in [-1, 1] -> PNG, written whole (ops.runs.save_image)."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    runs.save_image(Image.fromarray(to_uint8(img[None])[0].cpu().numpy()), path)


@torch.no_grad()
def test(args):
    """Translate every image of --input (resized to S, [-1, 1]) and write PNGs with the same names."""
    device = resolve_device(args.device)
    g, size = load_generator(args.ckpt, args.direction, args.img_size, device)
    if not os.path.isdir(args.input):
        raise InputError(f"{args.input}: " + ("a file; --input takes a folder of images" if os.path.exists(args.input)
                                              else "input folder not found"))
    paths = list_images(args.input)
    if not paths:
        raise InputError(f"{args.input}: no images")
    # the output names (same name, .png), checked before anything is written: never over an input image
    dsts = [os.path.join(args.out, os.path.splitext(os.path.relpath(p, args.input))[0] + ".png") for p in paths]
    inputs = {os.path.realpath(p) for p in paths}
    clash = next((d for d in dsts if os.path.realpath(d) in inputs), None)
    if clash is not None:
        raise InputError(f"--out {args.out}: would overwrite the input image {clash}; choose another folder")
    refuse_existing_outputs(dsts, args.overwrite)  # an earlier test's PNGs, or the user's own
    written = []
    for p, dst in zip(paths, dsts):
        img = read_image(p, size)
        if img is None:
            continue
        out, _, _ = g(to_float(img)[None].to(device))
        save_png(out[0], dst)
        written.append(dst)
    print(f"wrote {len(written)} images to {args.out}")
    return written


# ----------------------------------------------------------------------------------------------
# chain(args): StyleGAN2 faces -> U-GAT-IT cartoons
# ----------------------------------------------------------------------------------------------
def seed_z(seed, code_dim):
    """z = np.random.RandomState(seed).randn(1, code_dim) (the same latents as 03's generate)."""
    return torch.from_numpy(np.random.RandomState(seed).randn(1, code_dim)).float()


def slerp(a, b, t):
    """Spherical interpolation between latent codes a, b [1, D] (t in [0, 1])."""
    an, bn = F.normalize(a, dim=1), F.normalize(b, dim=1)
    omega = torch.acos((an * bn).sum(1, keepdim=True).clamp(-1 + 1e-7, 1 - 1e-7))
    so = torch.sin(omega)
    return (torch.sin((1 - t) * omega) / so) * a + (torch.sin(t * omega) / so) * b


@torch.no_grad()
def chain(args):
    """Faces from a 03_stylegan2_ada.py checkpoint translated A to B: frames face | cartoon and a GIF.

    Writes OUT/seed{seed}.png for each seed and, with --walk N, OUT/walk.gif (N frames between
    consecutive seeds, spherical interpolation in z).
    """
    import importlib
    walk = bool(args.walk) and len(args.seeds) > 1
    refuse_existing_outputs([os.path.join(args.out, f"seed{s}.png") for s in args.seeds]
                            + ([os.path.join(args.out, "walk.gif")] if walk else []), args.overwrite)
    device = resolve_device(args.device)
    set_ops(getattr(args, "ops", None) or "auto")
    root = os.path.dirname(os.path.abspath(__file__))
    if root not in sys.path:
        sys.path.insert(0, root)
    sg2 = importlib.import_module("03_stylegan2_ada")
    try:
        g_face, latent_avg = sg2.load_generator(args.stylegan, device=str(device), which="g_ema")
    except sg2.CheckpointError as e:
        raise InputError(str(e)) from None
    g_face.eval()
    toon, size = load_generator(args.ugatit, "A2B", args.img_size, device)
    style_dim = getattr(g_face, "style_dim", 512)
    if args.truncation < 1 and latent_avg is None:
        latent_avg = g_face.mean_latent(4096) if hasattr(g_face, "mean_latent") else None
        if latent_avg is None:
            raise InputError(f"{args.stylegan}: no average latent for --truncation {args.truncation}")

    def frame(z):
        face, _ = g_face([z], truncation=args.truncation, truncation_latent=latent_avg, randomize_noise=False)
        face = F.interpolate(face.float().clamp(-1, 1), size=(size, size), mode="bilinear",
                             align_corners=False, antialias=True)
        cartoon, _, _ = toon(face)
        return torch.cat([face[0], cartoon[0]], dim=2)                  # [3, S, 2S]

    zs = [seed_z(s, style_dim).to(device) for s in args.seeds]
    os.makedirs(args.out, exist_ok=True)
    written = []
    for s, z in zip(args.seeds, zs):
        path = os.path.join(args.out, f"seed{s}.png")
        save_png(frame(z), path)
        written.append(path)
    if walk:
        frames = []
        for a, b in zip(zs, zs[1:] + zs[:1]):                           # closed loop through the seeds
            for i in range(args.walk):
                img = to_uint8(frame(slerp(a, b, i / args.walk))[None])[0]            # [S, 2S, 3]
                frames.append(Image.fromarray(img.cpu().numpy()))
        path = os.path.join(args.out, "walk.gif")
        frames[0].save(path, save_all=True, append_images=frames[1:], duration=args.frame_ms, loop=0)
        written.append(path)
    print(f"wrote {len(written)} files to {args.out}")
    return written


# ----------------------------------------------------------------------------------------------
# CLI
# ----------------------------------------------------------------------------------------------
def seed_arg(text):
    """--seeds: an integer numpy's RandomState accepts (0 .. 2^32 - 1); argparse prints one line otherwise."""
    try:
        seed = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if not 0 <= seed <= 2 ** 32 - 1:
        raise argparse.ArgumentTypeError(f"{seed} is outside 0..{2 ** 32 - 1} (numpy's RandomState seeds)")
    return seed


def build_parser():
    p = argparse.ArgumentParser(description="U-GAT-IT (arXiv:1907.10830): train, test, chain")
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train on DIR/trainA <-> DIR/trainB")
    t.add_argument("--data", default=None, help="folder with trainA, trainB (and testA, testB)")
    t.add_argument("--out", default=None, help="run folder: settings.json, log.jsonl, checkpoints/, samples/")
    h = HPARAMS  # the method's hyperparameters (top of this file); the other defaults are run settings
    t.add_argument("--img-size", type=int, default=h["img_size"],
                   help=f"image size (paper {h['img_size']}; the seed used 128)")
    t.add_argument("--light", action="store_true", help="light variant: gamma/beta from pooled features")
    t.add_argument("--ch", type=int, default=h["ch"], help=f"base channels of G and D ({h['ch']})")
    t.add_argument("--n-res", type=int, default=h["n_res"],
                   help=f"residual blocks in encoder and decoder ({h['n_res']})")
    t.add_argument("--batch", type=int, default=h["batch"],
                   help=f"batch size ({h['batch']}; the seed used 4 at 128 px)")
    t.add_argument("--iter", type=int, default=h["iter"], help=f"training iterations ({h['iter']:,})")
    t.add_argument("--lr", type=float, default=h["lr"],
                   help=f"Adam learning rate ({h['lr']:g}); linear decay to 0 over the 2nd half")
    t.add_argument("--weight-decay", type=float, default=h["weight_decay"],
                   help=f"Adam weight decay ({h['weight_decay']:g})")
    t.add_argument("--adv-weight", type=float, default=h["adv_weight"],
                   help=f"adversarial loss weight lambda_1 ({h['adv_weight']:g})")
    t.add_argument("--cycle-weight", type=float, default=h["cycle_weight"],
                   help=f"cycle loss weight lambda_2 ({h['cycle_weight']:g})")
    t.add_argument("--identity-weight", type=float, default=h["identity_weight"],
                   help=f"identity loss weight lambda_3 ({h['identity_weight']:g})")
    t.add_argument("--cam-weight", type=float, default=h["cam_weight"],
                   help=f"CAM loss weight lambda_4 ({h['cam_weight']:g})")
    t.add_argument("--amp", choices=("bf16", "fp16"), nargs="?", const="bf16", default=None,
                   help="mixed precision (bf16 if given alone; fp16 needs CUDA)")
    t.add_argument("--no-recompute", action="store_true",
                   help="keep generator activations instead of recomputing them in backward (faster, more memory)")
    t.add_argument("--seed", type=int, default=0, help="random seed (0)")
    t.add_argument("--resume", nargs="?", const=True, default=False, metavar="RUN",
                   help="continue RUN (a run folder, or a checkpoint file inside RUN/checkpoints) with its "
                        "saved settings; alone: the run in --out, if there is one. A checkpoint file "
                        "elsewhere continues into a new --out")
    t.add_argument("--log-every", type=int, default=100, help="steps between log.jsonl lines (100)")
    t.add_argument("--sample-every", type=int, default=1000, help="sample sheets every N steps (1000)")
    t.add_argument("--save-every", type=int, default=1000, help="checkpoint every N steps (1000)")
    t.add_argument("--keep", type=int, default=3, help="newest checkpoints kept in RUN/checkpoints (3)")
    t.add_argument("--device", default=None, help=DEVICE_HELP)
    t.add_argument("--quiet", action="store_true", help="no progress bar")
    t.set_defaults(func=train)

    s = sub.add_parser("test", help="translate a folder of images")
    s.add_argument("--ckpt", required=True, help="a run folder (its newest checkpoint), one of its checkpoints or a UGATIT-pytorch *_params_*.pt")
    s.add_argument("--input", required=True, help="folder of images")
    s.add_argument("--out", required=True, help="output folder (same names, .png)")
    s.add_argument("--overwrite", action="store_true", help="replace existing PNGs of those names in --out")
    s.add_argument("--direction", choices=("A2B", "B2A"), default="A2B",
                   help="genA2B (A2B, the default) or genB2A")
    s.add_argument("--img-size", type=int, default=None, help="default: the checkpoint's size")
    s.add_argument("--device", default=None, help=DEVICE_HELP)
    s.set_defaults(func=test)

    c = sub.add_parser("chain", help="StyleGAN2 faces -> U-GAT-IT A2B, frames and a latent-walk GIF")
    c.add_argument("--ugatit", required=True, help="U-GAT-IT run folder or checkpoint (genA2B used)")
    c.add_argument("--stylegan", required=True, help="checkpoint loadable by 03_stylegan2_ada.py")
    c.add_argument("--seeds", type=seed_arg, nargs="+", required=True, help="latent seeds (0 .. 2^32 - 1)")
    c.add_argument("--walk", type=int, default=0, help="frames between consecutive seeds (0: no GIF)")
    c.add_argument("--truncation", type=float, default=1.0, help="truncation psi (1: none)")
    c.add_argument("--img-size", type=int, default=None, help="U-GAT-IT size (default: checkpoint's)")
    c.add_argument("--frame-ms", type=int, default=80, help="GIF frame duration")
    c.add_argument("--out", required=True, help="output folder")
    c.add_argument("--overwrite", action="store_true", help="replace existing seedN.png / walk.gif in --out")
    c.add_argument("--device", default=None, help=DEVICE_HELP)
    c.add_argument("--ops", choices=OPS_MODES, default="auto", help="StyleGAN2's " + OPS_HELP)
    c.set_defaults(func=chain)
    return p


def main(argv=None):
    if __name__ == "__main__":  # a program's warnings one line each; a test importing this file keeps Python's
        ops.readable_warnings()
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except InputError as e:
        raise SystemExit(f"05_ugatit.py {args.command}: error: {e}") from None
    except (FileExistsError, NotADirectoryError, IsADirectoryError, PermissionError) as e:  # an --out that is a file, a folder without write permission ...
        raise SystemExit(f"05_ugatit.py {args.command}: error: "
                         + (f"{e.filename}: {e.strerror}" if e.filename else str(e))) from None


if __name__ == "__main__":
    main()
