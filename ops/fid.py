"""Frechet Inception Distance and Kernel Inception Distance, the way pytorch-fid computes them.

Papers:
- FID: Heusel, Ramsauer, Unterthiner, Nessler, Hochreiter, "GANs Trained by a Two Time-Scale Update
  Rule Converge to a Local Nash Equilibrium", NeurIPS 2017, arXiv:1706.08500.
  FID = |mu1 - mu2|^2 + tr(S1 + S2 - 2 (S1 S2)^(1/2)), on 2048-d Inception pool3 features.
- KID: Binkowski, Sutherland, Arbel, Gretton, "Demystifying MMD GANs", ICLR 2018, arXiv:1801.01401.
  Unbiased MMD^2 with the cubic kernel k(x, y) = (x.y / d + 1)^3, averaged over random subsets.

Matches mseitzer/pytorch-fid 0.3.0 (src/pytorch_fid/inception.py, src/pytorch_fid/fid_score.py):
the same network (Inception v3 in torchvision's layout with the TF graph's pooling quirks, written
out in section 2), the same released weights (`pt_inception-2015-12-05-6726825d.pth`, loaded
strictly), the same preprocessing (PIL -> RGB -> [0, 1], bilinear resize to 299 without
antialiasing, then 2x - 1), the same statistics (float64 mean, np.cov with N - 1) and the same
distance. Two things are faster than pytorch-fid, with the same results up to float32 rounding
(features agree to ~1e-6 relative): feature extraction (load_inception's fast path: inference
mode, channels-last, batch norms folded into the convs and the ReLU into their call, on CPU
chunks of images run side by side, one per core; decoding in a DataLoader worker overlapped with
the network; no torchvision or scipy import) and the distance (a pivoted Cholesky and one
symmetric eigenvalue problem instead of a general matrix square root; pytorch-fid's scipy
`sqrtm` path is kept as the fallback). fold=False keeps the plain modules beside the fast path.

This file is the metric. What is built on it lives in ops/fid_eval.py: the Evaluator the training
scripts call, the memorization check (`nearest`), the provenance record, the run folder's
fid.csv / fid.png, and the command line (`python -m ops.fid` runs it):

    python -m ops.fid real/ fake/                              # last line: FID: <value>
    python -m ops.fid --save-stats real/ real_stats.npz        # pytorch-fid compatible (mu, sigma)

From Python:
    model = load_inception()                                   # hub cache, else download
    mu, sigma = statistics(folder_features("real/", model)["features"])

Sections: 1 weights, 2 network, 3 images -> features, 4 statistics and cache, 5 distances
(FID, KID).
"""
import collections
import concurrent.futures
import contextlib
import functools
import hashlib
import json
import math
import os
import sys
import tempfile
import urllib.request
import warnings

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image

import ops

# ----------------------------------------------------------------------------------------------
# Constants
FID_WEIGHTS_URL = ("https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/"
                   "pt_inception-2015-12-05-6726825d.pth")
FID_WEIGHTS_NAME = "pt_inception-2015-12-05-6726825d.pth"
FID_WEIGHTS_SHA256_PREFIX = "6726825d"  # torch hub convention: file name carries sha256[:8]
IMAGE_EXTENSIONS = tuple(e[1:] for e in ops.IMAGE_EXTENSIONS)  # pytorch-fid's, here in any case
DIMS_CHOICES = (64, 192, 768, 2048)  # pytorch-fid's blocks: maxpool1, maxpool2, Mixed_6e, pool3
INCEPTION_SIZE = 299
THUMB_SIZE = 64  # pixel-space nearest neighbours are measured at 64x64
RESIZE_METHOD = ("bilinear to 299x299 (torch F.interpolate, align_corners=False, no antialias) "
                 "after PIL RGB decoding to [0, 1], then 2x - 1")
QUANTIZE_METHOD = "generated [-1, 1] -> uint8 as a PNG save: floor((x + 1) * 127.5 + 0.5) clamped"
CACHE_VERSION = 1  # bump when anything that changes cached features changes
EPS_SQRTM = 1e-6  # pytorch-fid's diagonal offset when sqrtm(S1 S2) is not finite
IMAG_ATOL = 1e-3  # pytorch-fid's tolerance on the imaginary part of diag(sqrtm)


class InceptionWeightsMissing(RuntimeError):
    """The FID Inception weights are neither given, nor in the torch hub cache, nor downloadable."""


# ----------------------------------------------------------------------------------------------
# 1. Weights


def hub_weights_path():
    """Where torch hub (and so pytorch-fid) keeps the weights: <hub dir>/checkpoints/<name>."""
    return os.path.join(torch.hub.get_dir(), "checkpoints", FID_WEIGHTS_NAME)


def sha256_file(path, chunk=1 << 20):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def _download(url, dst, timeout=60):
    """Download url to dst atomically (temp file + os.replace); checks the hub sha256 prefix."""
    os.makedirs(os.path.dirname(dst), exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(dst), suffix=".part")
    ops.chmod_like_open(fd)  # mkstemp makes 0600; the user's umask decides
    try:
        with os.fdopen(fd, "wb") as f, urllib.request.urlopen(url, timeout=timeout) as r:
            for block in iter(lambda: r.read(1 << 20), b""):
                f.write(block)
        digest = sha256_file(tmp)
        if not digest.startswith(FID_WEIGHTS_SHA256_PREFIX):
            raise RuntimeError(f"downloaded {url} has sha256 {digest[:8]}..., expected "
                               f"{FID_WEIGHTS_SHA256_PREFIX}...")
        os.replace(tmp, dst)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def resolve_weights(weights=None, download=True):
    """Path of the FID Inception weights: the given file, else the hub cache, else a download.

    Raises InceptionWeightsMissing (one line naming the file and the URL) when none works.
    """
    if weights is not None:
        if not os.path.isfile(weights):
            raise InceptionWeightsMissing(
                f"FID Inception weights file not found: {weights} (the released file is "
                f"{FID_WEIGHTS_NAME} from {FID_WEIGHTS_URL})")
        return weights
    path = hub_weights_path()
    if os.path.isfile(path):
        return path
    reason = "downloads disabled"
    if download:
        try:
            _download(FID_WEIGHTS_URL, path)
            return path
        except (OSError, RuntimeError, ValueError) as e:  # URLError is an OSError
            reason = f"download failed: {e}"
    raise InceptionWeightsMissing(
        f"FID Inception weights {FID_WEIGHTS_NAME} not found at {path} and not downloadable "
        f"({reason}); fetch {FID_WEIGHTS_URL} into that place or pass --inception FILE")


# ----------------------------------------------------------------------------------------------
# 2. Network: Inception v3 as in the TF graph the FID weights come from (pytorch-fid inception.py)
#
# The layer names, channel counts and kernels are torchvision's Inception3 (so the released state
# dict loads strictly); pytorch-fid patches three things of the TF graph into it, written in here:
# the average pools of the Mixed blocks count valid pixels only (count_include_pad=False), and
# Mixed_7c max-pools its pool branch. Defined here rather than imported from torchvision: importing
# torchvision costs almost as much CPU time as torch itself (about 1.7 s on top of torch's 2.1 s,
# measured on a 2-core CPU), a tenth of a 100-image --save-stats run. tests/test_fid.py checks it
# against torchvision's stem and pytorch-fid's InceptionV3 (same weights: equal features).


class BasicConv2d(nn.Module):
    """One convolution of Inception v3: conv (no bias) -> batch norm (eps 0.001) -> ReLU."""

    def __init__(self, c_in, c_out, kernel_size, stride=1, padding=0):
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, kernel_size, stride, padding, bias=False)
        self.bn = nn.BatchNorm2d(c_out, eps=0.001)

    def forward(self, x):
        return F.relu(self.bn(self.conv(x)))


def _avg_pool_valid(x):
    """3x3 stride-1 average over the pixels inside the image (the TF graph's pooling)."""
    return F.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False)


class InceptionA(nn.Module):
    """Mixed_5b/5c/5d at 35x35: 1x1 | 1x1 -> 5x5 | 1x1 -> 3x3 -> 3x3 | avg pool -> 1x1."""

    def __init__(self, c_in, pool_features):
        super().__init__()
        self.branch1x1 = BasicConv2d(c_in, 64, 1)
        self.branch5x5_1 = BasicConv2d(c_in, 48, 1)
        self.branch5x5_2 = BasicConv2d(48, 64, 5, padding=2)
        self.branch3x3dbl_1 = BasicConv2d(c_in, 64, 1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, 3, padding=1)
        self.branch_pool = BasicConv2d(c_in, pool_features, 1)

    def forward(self, x):  # [B, c_in, 35, 35] -> [B, 224 + pool_features, 35, 35]
        b1 = self.branch1x1(x)
        b5 = self.branch5x5_2(self.branch5x5_1(x))
        b3 = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        return torch.cat([b1, b5, b3, self.branch_pool(_avg_pool_valid(x))], 1)


class InceptionB(nn.Module):
    """Mixed_6a, 35x35 -> 17x17: 3x3 stride 2 | 1x1 -> 3x3 -> 3x3 stride 2 | max pool stride 2."""

    def __init__(self, c_in):
        super().__init__()
        self.branch3x3 = BasicConv2d(c_in, 384, 3, stride=2)
        self.branch3x3dbl_1 = BasicConv2d(c_in, 64, 1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, 3, stride=2)

    def forward(self, x):  # [B, 288, 35, 35] -> [B, 768, 17, 17]
        b3 = self.branch3x3(x)
        d = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        return torch.cat([b3, d, F.max_pool2d(x, 3, stride=2)], 1)


class InceptionC(nn.Module):
    """Mixed_6b..6e at 17x17, 7x7 convolutions factorized into 1x7 and 7x1 (c7 channels inside)."""

    def __init__(self, c_in, c7):
        super().__init__()
        self.branch1x1 = BasicConv2d(c_in, 192, 1)
        self.branch7x7_1 = BasicConv2d(c_in, c7, 1)
        self.branch7x7_2 = BasicConv2d(c7, c7, (1, 7), padding=(0, 3))
        self.branch7x7_3 = BasicConv2d(c7, 192, (7, 1), padding=(3, 0))
        self.branch7x7dbl_1 = BasicConv2d(c_in, c7, 1)
        self.branch7x7dbl_2 = BasicConv2d(c7, c7, (7, 1), padding=(3, 0))
        self.branch7x7dbl_3 = BasicConv2d(c7, c7, (1, 7), padding=(0, 3))
        self.branch7x7dbl_4 = BasicConv2d(c7, c7, (7, 1), padding=(3, 0))
        self.branch7x7dbl_5 = BasicConv2d(c7, 192, (1, 7), padding=(0, 3))
        self.branch_pool = BasicConv2d(c_in, 192, 1)

    def forward(self, x):  # [B, 768, 17, 17] -> [B, 768, 17, 17]
        b1 = self.branch1x1(x)
        b7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        d = self.branch7x7dbl_1(x)
        d = self.branch7x7dbl_5(self.branch7x7dbl_4(self.branch7x7dbl_3(self.branch7x7dbl_2(d))))
        return torch.cat([b1, b7, d, self.branch_pool(_avg_pool_valid(x))], 1)


class InceptionD(nn.Module):
    """Mixed_7a, 17x17 -> 8x8: 1x1 -> 3x3 stride 2 | 1x1 -> 1x7 -> 7x1 -> 3x3 stride 2 | max pool."""

    def __init__(self, c_in):
        super().__init__()
        self.branch3x3_1 = BasicConv2d(c_in, 192, 1)
        self.branch3x3_2 = BasicConv2d(192, 320, 3, stride=2)
        self.branch7x7x3_1 = BasicConv2d(c_in, 192, 1)
        self.branch7x7x3_2 = BasicConv2d(192, 192, (1, 7), padding=(0, 3))
        self.branch7x7x3_3 = BasicConv2d(192, 192, (7, 1), padding=(3, 0))
        self.branch7x7x3_4 = BasicConv2d(192, 192, 3, stride=2)

    def forward(self, x):  # [B, 768, 17, 17] -> [B, 1280, 8, 8]
        b3 = self.branch3x3_2(self.branch3x3_1(x))
        b7 = self.branch7x7x3_4(self.branch7x7x3_3(self.branch7x7x3_2(self.branch7x7x3_1(x))))
        return torch.cat([b3, b7, F.max_pool2d(x, 3, stride=2)], 1)


class InceptionE(nn.Module):
    """Mixed_7b/7c at 8x8, 3x3 convolutions split into parallel 1x3 and 3x1 halves.

    pool: "avg" (Mixed_7b, valid pixels only) or "max" (Mixed_7c: the TF graph max-pools here, a
    quirk of the original graph that FID keeps)."""

    def __init__(self, c_in, pool):
        super().__init__()
        self.pool = pool
        self.branch1x1 = BasicConv2d(c_in, 320, 1)
        self.branch3x3_1 = BasicConv2d(c_in, 384, 1)
        self.branch3x3_2a = BasicConv2d(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3_2b = BasicConv2d(384, 384, (3, 1), padding=(1, 0))
        self.branch3x3dbl_1 = BasicConv2d(c_in, 448, 1)
        self.branch3x3dbl_2 = BasicConv2d(448, 384, 3, padding=1)
        self.branch3x3dbl_3a = BasicConv2d(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3dbl_3b = BasicConv2d(384, 384, (3, 1), padding=(1, 0))
        self.branch_pool = BasicConv2d(c_in, 192, 1)

    def forward(self, x):  # [B, c_in, 8, 8] -> [B, 2048, 8, 8]
        b3 = self.branch3x3_1(x)
        d = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        p = _avg_pool_valid(x) if self.pool == "avg" else F.max_pool2d(x, 3, stride=1, padding=1)
        return torch.cat([self.branch1x1(x), self.branch3x3_2a(b3), self.branch3x3_2b(b3),
                          self.branch3x3dbl_3a(d), self.branch3x3dbl_3b(d), self.branch_pool(p)], 1)


class FIDInception3(nn.Module):
    """pytorch-fid's FID Inception v3, with torchvision's state_dict keys (num_classes 1008, no aux).

    forward(x): x [B, 3, H, W] in [0, 1] -> features [B, dims] (dims 2048 = pool3).
    Resize to 299 (bilinear, align_corners=False, no antialias) happens before 2x - 1, as in
    pytorch-fid's InceptionV3(resize_input=True, normalize_input=True). `fc` (the 1008 logits) is
    kept so that the released file loads strictly; FID never runs it.
    """

    def __init__(self, dims=2048):
        super().__init__()
        if dims not in DIMS_CHOICES:
            raise ValueError(f"dims must be one of {DIMS_CHOICES}, got {dims}")
        self.dims = dims
        self.chunk = None  # images per pass through the network (None: the whole batch at once)
        self.stem_chunk = None  # images per pass through the stem, 299 -> 35 px (None: all at once)
        self.chunk_threads = None  # chunks run side by side, one intra-op thread each (None: 1)
        self.Conv2d_1a_3x3 = BasicConv2d(3, 32, 3, stride=2)
        self.Conv2d_2a_3x3 = BasicConv2d(32, 32, 3)
        self.Conv2d_2b_3x3 = BasicConv2d(32, 64, 3, padding=1)
        self.Conv2d_3b_1x1 = BasicConv2d(64, 80, 1)
        self.Conv2d_4a_3x3 = BasicConv2d(80, 192, 3)
        self.Mixed_5b = InceptionA(192, pool_features=32)
        self.Mixed_5c = InceptionA(256, pool_features=64)
        self.Mixed_5d = InceptionA(288, pool_features=64)
        self.Mixed_6a = InceptionB(288)
        self.Mixed_6b = InceptionC(768, c7=128)
        self.Mixed_6c = InceptionC(768, c7=160)
        self.Mixed_6d = InceptionC(768, c7=160)
        self.Mixed_6e = InceptionC(768, c7=192)
        self.Mixed_7a = InceptionD(768)
        self.Mixed_7b = InceptionE(1280, pool="avg")
        self.Mixed_7c = InceptionE(2048, pool="max")
        self.fc = nn.Linear(2048, 1008)

    def stem(self, x):
        """[B, 3, H, W] in [0, 1] -> [B, 64, 73, 73] (dims 64) or [B, 192, 35, 35]."""
        x = F.interpolate(x, size=(INCEPTION_SIZE, INCEPTION_SIZE), mode="bilinear",
                          align_corners=False)
        x = (2 * x - 1).contiguous(memory_format=torch.channels_last)  # [B, 3, 299, 299]
        x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))  # [B, 64, 147, 147]
        x = F.max_pool2d(x, 3, stride=2)  # [B, 64, 73, 73]
        if self.dims > 64:
            x = F.max_pool2d(self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x)), 3, stride=2)
        return x

    def forward(self, x):
        if x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(f"FIDInception3 expects [B, 3, H, W] images in [0, 1], got "
                             f"{tuple(x.shape)}")
        threads = min(self.chunk_threads or 1, len(x))
        if (self.chunk and len(x) > self.chunk) or threads > 1:  # the fast path on CPU
            return self.forward_chunks(x, threads)
        return self.forward_batch(x)

    def forward_chunks(self, x, threads):
        """The same features, the batch cut into near-equal chunks of at most self.chunk images,
        a multiple of `threads` of them, run `threads` at a time, each chunk on its own thread
        with one intra-op thread. Whole chunks side by side need no synchronization inside a
        layer; a 2-thread op ends at a barrier (over 100 per chunk), and on a busy machine (or
        beside the decoding worker) each barrier waits for a descheduled partner: 50 images at
        256 px on 2 cores, load average about 5: 6.0-8.9 s this way against 9.0-14.5 s with two
        intra-op threads (one op after the other, same chunks or CHUNK_CPU ones)."""
        n_chunks = threads * math.ceil(len(x) / (threads * (self.chunk or len(x))))
        chunks = x.tensor_split(n_chunks)  # sizes differ by at most 1: the threads stay balanced
        if threads == 1:
            return torch.cat([self.forward_batch(c) for c in chunks])
        grad, inference = torch.is_grad_enabled(), torch.is_inference_mode_enabled()

        def run(c):  # grad and inference mode are per thread: carry the caller's (in this
            # order: inference_mode(False) turns grad on)
            torch.set_num_threads(1)  # this thread's own OpenMP team (the global count is 1 too)
            with torch.inference_mode(inference), torch.set_grad_enabled(grad):
                return self.forward_batch(c)

        with intra_op_threads(1), concurrent.futures.ThreadPoolExecutor(threads) as pool:
            return torch.cat(list(pool.map(run, chunks)))

    def forward_batch(self, x):
        """[B, 3, H, W] in [0, 1] -> [B, dims], the whole batch through each layer in turn."""
        if self.stem_chunk and len(x) > self.stem_chunk:
            x = torch.cat([self.stem(c) for c in x.split(self.stem_chunk)])
        else:
            x = self.stem(x)
        if self.dims > 192:  # [B, 192, 35, 35]
            for m in (self.Mixed_5b, self.Mixed_5c, self.Mixed_5d, self.Mixed_6a,
                      self.Mixed_6b, self.Mixed_6c, self.Mixed_6d, self.Mixed_6e):
                x = m(x)
        if self.dims > 768:  # [B, 768, 17, 17]
            x = self.Mixed_7c(self.Mixed_7b(self.Mixed_7a(x)))  # [B, 2048, 8, 8]
        return torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)  # [B, dims]


@contextlib.contextmanager
def intra_op_threads(n):
    """torch's intra-op thread count set to n inside the block, restored after it."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _template():
    """The state dict's keys and shapes, from a model on the meta device (no memory, no init)."""
    with torch.device("meta"):
        return FIDInception3().state_dict()


def random_inception_state_dict(seed=0):
    """Random weights with the released file's keys and shapes, for tests only.

    He-normal convolutions and near-identity batch norms keep activations O(1) through the
    network (PyTorch's default init would shrink them towards zero).
    """
    g = torch.Generator().manual_seed(seed)
    sd = collections.OrderedDict()
    for k, v in _template().items():
        t = torch.zeros(v.shape, dtype=v.dtype)
        if k.endswith("conv.weight"):
            nn.init.normal_(t, 0.0, (2.0 / t[0].numel()) ** 0.5, generator=g)
        elif k == "fc.weight":
            nn.init.normal_(t, 0.0, 0.01, generator=g)
        elif k.endswith(("bn.weight", "bn.running_var")):
            t.fill_(1.0)
        elif k.endswith("bn.bias"):
            nn.init.normal_(t, 0.0, 0.1, generator=g)
        sd[k] = t
    return sd


def _folded_forward(block, x):
    """BasicConv2d with its batch norm folded into the conv: relu(conv(x, W') + b')."""
    return F.relu(F.conv2d(x, block.folded_weight, block.folded_bias, block.conv.stride,
                           block.conv.padding), inplace=True)


def _folded_fused_forward(block, x):
    """The same in one oneDNN call (CPU): the ReLU is applied as the conv writes its output, which
    saves a pass over every activation (the op torch.compile emits for conv + relu on CPU)."""
    return torch.ops.mkldnn._convolution_pointwise(x, block.folded_weight, block.folded_bias,
                                                  block.conv.padding, block.conv.stride, (1, 1), 1,
                                                  "relu", [], "")


@functools.lru_cache(maxsize=1)
def conv_relu_fusion_available():
    """Whether _folded_fused_forward runs in this torch build and equals _folded_forward (checked
    once per process on a small conv; a torch without the op, or with another signature, falls
    back to conv2d then relu)."""
    try:
        block = BasicConv2d(8, 16, 3, padding=1).eval()
        block.folded_weight = torch.randn(16, 8, 3, 3).contiguous(memory_format=torch.channels_last)
        block.folded_bias = torch.randn(16)
        x = torch.randn(2, 8, 9, 9).contiguous(memory_format=torch.channels_last)
        with torch.inference_mode():
            return bool(torch.allclose(_folded_fused_forward(block, x), _folded_forward(block, x),
                                       rtol=1e-5, atol=1e-5))
    except (RuntimeError, AttributeError, TypeError):
        return False


def fold_batchnorm(model, fuse_relu=None):
    """Inference speed-up (about 1.2x on CPU): each BasicConv2d (conv, eval batch norm, ReLU)
    runs as one conv with W' = W * g / sqrt(v + eps) and b' = beta - m * g / sqrt(v + eps).

    fuse_relu (default: on CPU where conv_relu_fusion_available()) applies the ReLU inside the
    conv call. The state dict is untouched (the folded tensors are plain attributes), so the model
    still saves and compares as the released weights; features change by float32 rounding only
    (about 1e-6 relative). Call again after changing the weights or the device.
    """
    device = next(model.parameters()).device
    if fuse_relu is None:
        fuse_relu = device.type == "cpu" and conv_relu_fusion_available()
    forward = _folded_fused_forward if fuse_relu else _folded_forward
    # ~500 small ops: one thread on CPU (0.06 s; with 2 threads on a busy 2-core machine each
    # op's team waits for its partner, measured 3.8 s)
    with intra_op_threads(1) if device.type == "cpu" else contextlib.nullcontext():
        for block in model.modules():
            if isinstance(block, BasicConv2d):
                bn = block.bn
                scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)  # [C_out]
                block.folded_weight = (block.conv.weight * scale[:, None, None, None]).contiguous(
                    memory_format=torch.channels_last)
                block.folded_bias = bn.bias - bn.running_mean * scale
                block.forward = functools.partial(forward, block)
    model.bn_folded, model.relu_fused = True, bool(fuse_relu)
    return model


@functools.lru_cache(maxsize=1)
def _random_state_dict_cached():
    return random_inception_state_dict()  # shared by models: they never change their weights


def _check_state_dict(sd, source):
    """Make sd load strictly into FIDInception3: same keys (num_batches_tracked optional)."""
    if not isinstance(sd, dict):
        raise ValueError(f"{source}: not a state dict (got {type(sd).__name__})")
    expected = _template()
    want = {k for k in expected if not k.endswith("num_batches_tracked")}
    have = {k for k in sd if not k.endswith("num_batches_tracked")}
    if want != have:
        missing, extra = sorted(want - have), sorted(have - want)
        raise ValueError(f"{source}: not the FID Inception state dict ({len(missing)} missing keys "
                         f"e.g. {missing[:2]}, {len(extra)} unexpected e.g. {extra[:2]})")
    for k in want:
        if tuple(sd[k].shape) != tuple(expected[k].shape):
            raise ValueError(f"{source}: {k} has shape {tuple(sd[k].shape)}, expected "
                             f"{tuple(expected[k].shape)}")
    sd = collections.OrderedDict(sd)
    for k in expected:  # the 472-key form: fill the counters explicitly, then load strictly
        if k.endswith("num_batches_tracked") and k not in sd:
            sd[k] = torch.zeros((), dtype=torch.long)
    return sd


# Images per pass on CPU (the fast path): the stem's 147x147 maps of 2 images stay in cache, and
# activations of 16 images stay below glibc's 32 MB mmap threshold, so their memory is reused
# instead of being mapped and zeroed anew by the kernel at every layer (8 ms/img of system time
# at batch 50). Every image goes through the same convolutions; only the rounding of a
# one-thread convolution against a multi-thread one differs (about 1e-7 relative).
STEM_CHUNK_CPU, CHUNK_CPU = 2, 16


def load_inception(weights=None, device="cpu", dims=2048, download=True, fold=True):
    """The FID Inception in eval mode on device; fold=True is the fast path, fold=False the plain
    modules (conv, batch norm, ReLU), equal to float32 rounding.

    The fast path: batch norms folded into the convs (fold_batchnorm), the ReLU fused into them
    on CPU, channels-last activations, and on CPU the batch cut into chunks of at most CHUNK_CPU
    images (the stem STEM_CHUNK_CPU at a time) that run side by side on torch.get_num_threads()
    threads (as set when the model is loaded), one chunk per thread (forward_chunks).
    weights: a .pth file, None (torch hub cache, else download) or "random" (tests only: the
    model is marked comparable=False and every score computed with it says so).
    Attributes set for the provenance record: weights_name, weights_sha256, comparable.
    """
    with torch.device("meta"):  # parameters come from the state dict (assign=True): no init
        model = FIDInception3(dims)
    if weights == "random":
        sd, name, digest, comparable = _random_state_dict_cached(), "random", "random", False
    else:
        path = resolve_weights(weights, download=download)
        try:
            sd = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # a truncated or foreign file: say which and why, on one line
            raise ValueError(f"{path}: cannot read as a torch state dict ({e})") from None
        name, digest, comparable = os.path.basename(path), sha256_file(path), True
    sd = {k: v.float() if v.is_floating_point() else v
          for k, v in _check_state_dict(sd, name).items()}
    model.load_state_dict(sd, strict=True, assign=True)
    model.weights_name, model.weights_sha256, model.comparable = name, digest, comparable
    model = model.eval().requires_grad_(False).to(device)  # a no-op on CPU: no copy
    if not fold:
        return model
    if torch.device(device).type == "cpu":
        model.chunk, model.stem_chunk = CHUNK_CPU, STEM_CHUNK_CPU
        model.chunk_threads = torch.get_num_threads()
    return fold_batchnorm(model)


# ----------------------------------------------------------------------------------------------
# 3. Images -> features


def list_images(folder):
    """Image files directly in folder, sorted: pytorch-fid's extensions in any letter case (the rule
    of every calm-gan script, ops.image_files); other files are named in one warning."""
    if not os.path.isdir(folder):
        raise ValueError(f"{folder}: not a folder")
    return ops.image_files(folder)


class _ImageFiles(torch.utils.data.Dataset):
    """Decodes one file to uint8 [3, H, W] (PIL, any mode -> RGB); None for unreadable files."""

    def __init__(self, files):
        self.files = files

    def __len__(self):
        return len(self.files)

    def __getitem__(self, i):
        try:
            with Image.open(self.files[i]) as im:
                arr = np.asarray(im.convert("RGB"))  # [H, W, 3] uint8
            return i, torch.from_numpy(arr.copy()).permute(2, 0, 1), None
        except Exception as e:  # PIL raises many types for damaged files
            return i, None, f"{type(e).__name__}: {e}"


def _collate_by_size(items):
    """Group a batch by image size so mixed-size folders work (pytorch-fid needs one size)."""
    groups, bad = {}, []
    for i, img, err in items:
        if img is None:
            bad.append((i, err))
        else:
            groups.setdefault(tuple(img.shape), []).append((i, img))
    return [(torch.tensor([i for i, _ in g]), torch.stack([im for _, im in g]))
            for g in groups.values()], bad


def _thumbnails(x):
    """[B, 3, H, W] in [0, 1] -> uint8 [B, 3, 64, 64] (antialiased bilinear), for pixel L2."""
    t = F.interpolate(x, size=(THUMB_SIZE, THUMB_SIZE), mode="bilinear", align_corners=False,
                      antialias=True)
    return (t * 255 + 0.5).clamp(0, 255).to(torch.uint8).cpu()


def default_num_workers():
    """One decoding worker per two cores (decoding is cheap next to the network), at most 4."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(1, min(4, (cpus or 1) // 2))


@torch.inference_mode()
def _features_of_batch(model, x, device):
    """x: uint8 or float [B, 3, H, W] -> float32 numpy [B, dims] (float x in [0, 1])."""
    x = x.to(device)
    if x.dtype == torch.uint8:
        x = x.float().div_(255)  # torchvision ToTensor's arithmetic
    return model(x).float().cpu().numpy()


def folder_features(folder, model, batch_size=50, device=None, num_workers=None, thumbs=False,
                    cache_dir=None, progress=False):
    """Inception features of every readable image in folder (non-recursive).

    Returns dict: features float32 [N, dims], files (names kept), file_types {ext: count},
    skipped (names), and thumbs uint8 [N, 3, 64, 64] when thumbs=True.
    Unreadable files are skipped with a warning naming them; no readable image, or a single one,
    is a ValueError. With cache_dir the result is cached under a key of the files' names, sizes
    and mtimes, the weights' sha256, dims and the pipeline version.
    """
    device = device or next(model.parameters()).device
    files = list_images(folder)
    if not files:
        raise ValueError(f"{folder}: no image files (looked for *.{', *.'.join(IMAGE_EXTENSIONS)})")
    cache_path = None
    if cache_dir is not None:
        cache_path = _cache_path(cache_dir, folder, files, model, thumbs)
        if os.path.isfile(cache_path):
            return _load_cached(cache_path)
    dims = model.dims
    feats = np.zeros((len(files), dims), np.float32)
    thumb_arr = np.zeros((len(files), 3, THUMB_SIZE, THUMB_SIZE), np.uint8) if thumbs else None
    ok = np.zeros(len(files), bool)
    skipped = []
    batch_size = max(1, min(batch_size, len(files)))
    num_workers = default_num_workers() if num_workers is None else num_workers
    loader = torch.utils.data.DataLoader(_ImageFiles(files), batch_size=batch_size,
                                         num_workers=num_workers, collate_fn=_collate_by_size)
    done = 0
    for groups, bad in loader:
        for i, err in bad:
            warnings.warn(f"skipping unreadable image {files[i]} ({err})")
            skipped.append(os.path.basename(files[i]))
        for idx, x in groups:
            if thumbs:
                thumb_arr[idx.numpy()] = _thumbnails(x.float().div(255)).numpy()
            feats[idx.numpy()] = _features_of_batch(model, x, device)
            ok[idx.numpy()] = True
        done += len(bad) + sum(len(i) for i, _ in groups)
        if progress:
            print(f"\r{folder}: {done}/{len(files)} images", end="", file=sys.stderr, flush=True)
    if progress:
        print(file=sys.stderr)
    n_ok = int(ok.sum())
    if n_ok == 0:
        raise ValueError(f"{folder}: no readable image among {len(files)} files")
    if n_ok < 2:
        raise ValueError(f"{folder}: only {n_ok} readable image; FID needs at least 2 "
                         f"(the covariance is undefined)")
    kept = [f for f, k in zip(files, ok) if k]
    out = {"features": feats[ok], "files": [os.path.basename(f) for f in kept],
           "file_types": dict(collections.Counter(f.rpartition(".")[2].lower() for f in kept)),
           "skipped": skipped}
    if thumbs:
        out["thumbs"] = thumb_arr[ok]
    if cache_path is not None:
        _save_cached(cache_path, out)
    return out


def quantize_images(x):
    """Generated images in [-1, 1] -> [0, 1] floats that a PNG round trip would give.

    floor((x + 1) * 127.5 + 0.5) clamped to [0, 255] (round half up, as torchvision's save_image
    and NVlabs' (x * 127.5 + 128).clamp(0, 255).to(uint8)), then / 255: generated and real
    images reach the network through the same values.
    """
    return torch.floor((x.float() + 1) * 127.5 + 0.5).clamp_(0, 255).div_(255)


def generator_features(gen_fn, n, model, batch_size=50, device=None, thumbs=False):
    """Features of n images drawn from gen_fn(b) -> float [b, 3, H, W] in [-1, 1] (any device).

    Returns dict: features float32 [n, dims] and thumbs uint8 [n, 3, 64, 64] when thumbs=True.
    """
    device = device or next(model.parameters()).device
    feats, th, have = [], [], 0
    while have < n:
        b = min(batch_size, n - have)
        with torch.no_grad():
            img = gen_fn(b)
        if not torch.is_tensor(img) or img.ndim != 4 or img.shape[1] != 3 or img.shape[0] < 1:
            raise ValueError(f"gen_fn({b}) must return a [B, 3, H, W] tensor, got "
                             f"{getattr(img, 'shape', type(img))}")
        x = quantize_images(img[: n - have].to(device))
        feats.append(_features_of_batch(model, x, device))
        if thumbs:
            th.append(_thumbnails(x).numpy())
        have += x.shape[0]
    out = {"features": np.concatenate(feats)}
    if thumbs:
        out["thumbs"] = np.concatenate(th)
    return out


# ----------------------------------------------------------------------------------------------
# 4. Statistics and cache


def statistics(features):
    """(mu, sigma) of [N, d] features, float64: mean and np.cov (N - 1), as pytorch-fid."""
    f = np.asarray(features, dtype=np.float64)
    if f.ndim != 2 or f.shape[0] < 2:
        raise ValueError(f"statistics need [N >= 2, d] features, got shape {f.shape}")
    return f.mean(axis=0), np.cov(f, rowvar=False)


def _atomic_savez(path, compress=False, **arrays):
    """np.savez to path atomically. Uncompressed by default: float64 statistics and float32
    features hardly compress (a 2048-d sigma: 32.2 MB against 33.6 MB) and zlib spends about 1 s of
    CPU on it; compress=True where uint8 thumbnails are stored."""
    d = os.path.dirname(os.path.abspath(path))
    os.makedirs(d, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=d, suffix=".npz.part")
    ops.chmod_like_open(fd)  # mkstemp makes 0600; the user's umask decides
    try:
        with os.fdopen(fd, "wb") as f:
            (np.savez_compressed if compress else np.savez)(f, **arrays)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


RANDOM_WEIGHTS_LABEL = "random (test weights: not comparable with any published FID)"


def weights_info(model):
    """What identifies the features a model computes: weights file name, sha256, dims."""
    return {"weights": model.weights_name if model.comparable else RANDOM_WEIGHTS_LABEL,
            "weights_sha256": model.weights_sha256, "comparable": bool(model.comparable),
            "dims": model.dims}


def _info_arrays(info):
    return {} if info is None else {"weights_info": np.array(json.dumps(info))}


def save_statistics(path, mu, sigma, n=None, info=None):
    """pytorch-fid compatible .npz (mu, sigma); n and weights_info(model) added when given
    (pytorch-fid ignores extra keys). Written atomically."""
    extra = {} if n is None else {"n": np.int64(n)}
    _atomic_savez(path, mu=mu, sigma=sigma, **extra, **_info_arrays(info))


def save_features(path, feats, info=None):
    """Features .npz: features [N, d] float32, files, file types, and mu, sigma (so pytorch-fid
    reads it as statistics). Written atomically."""
    mu, sigma = statistics(feats["features"])
    _atomic_savez(path, features=feats["features"], mu=mu, sigma=sigma,
                  n=np.int64(len(feats["features"])), files=np.array(feats.get("files", [])),
                  file_types=np.array(json.dumps(feats.get("file_types", {}))),
                  **_info_arrays(info))


def load_npz(path):
    """A stats .npz (mu, sigma; pytorch-fid's format) or a features .npz; returns a dict."""
    try:
        with np.load(path, allow_pickle=False) as f:
            d = {k: f[k] for k in f.files}
    except Exception as e:
        raise ValueError(f"{path}: cannot read as .npz ({e})") from None
    if "features" in d:
        d["features"] = d["features"].astype(np.float32)
        if "mu" not in d or "sigma" not in d:
            d["mu"], d["sigma"] = statistics(d["features"])
    if "mu" not in d or "sigma" not in d:
        raise ValueError(f"{path}: needs keys mu and sigma (or features), has {sorted(d)}")
    if d["mu"].ndim != 1 or d["sigma"].shape != (len(d["mu"]),) * 2:
        raise ValueError(f"{path}: mu {d['mu'].shape} and sigma {d['sigma'].shape} do not match")
    for k in ("file_types", "weights_info"):
        if k in d:
            d[k] = json.loads(str(d[k]))
    if "files" in d:
        d["files"] = [str(s) for s in d["files"]]
    return d


def default_cache_dir():
    """$XDG_CACHE_HOME/calm-gan/fid (else ~/.cache/calm-gan/fid): shared by training runs."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "calm-gan", "fid")


def _cache_path(cache_dir, folder, files, model, thumbs):
    h = hashlib.sha256()
    h.update(f"v{CACHE_VERSION} dims={model.dims} thumbs={thumbs} "
             f"weights={getattr(model, 'weights_sha256', '?')}\n".encode())
    for f in files:
        st = os.stat(f)
        h.update(f"{os.path.basename(f)}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    base = os.path.basename(os.path.normpath(os.path.abspath(folder))) or "root"
    return os.path.join(cache_dir, f"{base}-{h.hexdigest()[:20]}.npz")


def _save_cached(path, out):
    arrays = {"features": out["features"], "files": np.array(out["files"]),
              "file_types": np.array(json.dumps(out["file_types"])),
              "skipped": np.array(out["skipped"], dtype=str)}
    if "thumbs" in out:
        arrays["thumbs"] = out["thumbs"]
    _atomic_savez(path, compress="thumbs" in out, **arrays)


def _load_cached(path):
    with np.load(path, allow_pickle=False) as f:
        out = {"features": f["features"], "files": [str(s) for s in f["files"]],
               "file_types": json.loads(str(f["file_types"])),
               "skipped": [str(s) for s in f["skipped"]], "cache_file": path}
        if "thumbs" in f.files:
            out["thumbs"] = f["thumbs"]
    return out


# ----------------------------------------------------------------------------------------------
# 5. Distances


def _check_gaussian(mu, sigma, name):
    mu = np.atleast_1d(np.asarray(mu, dtype=np.float64))
    sigma = np.atleast_2d(np.asarray(sigma, dtype=np.float64))
    if mu.ndim != 1 or sigma.shape != (mu.shape[0], mu.shape[0]):
        raise ValueError(f"{name}: mu must be [d] and sigma [d, d], got {mu.shape} and "
                         f"{sigma.shape}")
    return mu, sigma


def trace_sqrt_product_sqrtm(sigma1, sigma2):
    """tr sqrtm(S1 S2) exactly as pytorch-fid: scipy sqrtm; eps offset if not finite; imag check."""
    import scipy.linalg  # imported here: --save-stats and the Evaluator's set-up never need it
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # sqrtm warns on singular products; pytorch-fid disp=False
        covmean = scipy.linalg.sqrtm(sigma1 @ sigma2)
        if not np.isfinite(covmean).all():
            warnings.warn(f"fid calculation produces singular product; adding {EPS_SQRTM} to "
                          f"diagonal of cov estimates")
            offset = np.eye(sigma1.shape[0]) * EPS_SQRTM
            covmean = scipy.linalg.sqrtm((sigma1 + offset) @ (sigma2 + offset))
    if np.iscomplexobj(covmean):
        if not np.allclose(np.diagonal(covmean).imag, 0, atol=IMAG_ATOL):
            raise ValueError(f"Imaginary component {np.max(np.abs(covmean.imag))}")
        covmean = covmean.real
    return float(np.trace(covmean))


def trace_sqrt_product_fast(sigma1, sigma2, tol=1e-8):
    """tr sqrtm(S1 S2) for symmetric PSD S1, S2 from one symmetric eigenvalue problem.

    Factor S1 = C C^T with a rank-revealing (pivoted) Cholesky, LAPACK dpstrf: P^T S1 P = U^T U,
    U [r, d], r = rank (N - 1 for N < d images), so C = P U^T. The nonzero eigenvalues of
    S1 S2 = C (C^T S2) equal those of M = C^T S2 C = U (P^T S2 P) U^T [r, r], which is symmetric
    PSD; so tr sqrtm(S1 S2) = sum sqrt(eig M), eig M clipped at 0. Returns None when the inputs
    are not symmetric PSD to tolerance tol (relative), so the caller falls back to sqrtm.
    """
    import scipy.linalg.lapack  # imported here, as in trace_sqrt_product_sqrtm
    for s in (sigma1, sigma2):
        scale = np.abs(s).max()
        if not np.isfinite(s).all() or np.abs(s - s.T).max() > tol * max(scale, 1e-300):
            return None
    c, piv, rank, info = scipy.linalg.lapack.dpstrf(sigma1, lower=0)
    if info < 0:
        return None
    if rank == 0:
        return 0.0
    p = piv - 1  # LAPACK pivots are 1-based
    u = np.triu(c[:rank])  # [r, d]
    if np.abs(u.T @ u - sigma1[np.ix_(p, p)]).max() > tol * max(np.abs(sigma1).max(), 1e-300):
        return None  # S1 is not PSD: its factor does not reproduce it
    m = u @ sigma2[np.ix_(p, p)] @ u.T  # [r, r]
    ev = np.linalg.eigvalsh((m + m.T) / 2)
    if ev.min() < -tol * max(ev.max(), 1e-300):  # S2 not PSD
        return None
    return float(np.sqrt(np.clip(ev, 0, None)).sum())


def frechet_distance(mu1, sigma1, mu2, sigma2, method="auto"):
    """FID = |mu1 - mu2|^2 + tr(S1) + tr(S2) - 2 tr sqrtm(S1 S2)   (Heusel et al. 2017, Eq. 6).

    method "auto": the fast path (pivoted Cholesky + one symmetric eigenvalue problem, see
    trace_sqrt_product_fast; 5-10x faster than scipy's sqrtm at 2048-d and equal to pytorch-fid's
    value to 1e-6 relative on sample, ill-conditioned and singular covariances), falling back to
    pytorch-fid's sqrtm path when the covariances are not symmetric PSD; "sqrtm": pytorch-fid's
    path always; "fast": never fall back (ValueError instead).
    """
    mu1, sigma1 = _check_gaussian(mu1, sigma1, "first")
    mu2, sigma2 = _check_gaussian(mu2, sigma2, "second")
    if mu1.shape != mu2.shape:
        raise ValueError(f"dimensions differ: {mu1.shape[0]} vs {mu2.shape[0]}")
    if method not in ("auto", "fast", "sqrtm"):
        raise ValueError(f"method must be auto, fast or sqrtm, got {method!r}")
    tr_covmean = None
    if method in ("auto", "fast"):
        tr_covmean = trace_sqrt_product_fast(sigma1, sigma2)
        if tr_covmean is None and method == "fast":
            raise ValueError("covariances are not symmetric positive semi-definite")
    if tr_covmean is None:
        tr_covmean = trace_sqrt_product_sqrtm(sigma1, sigma2)
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * tr_covmean)


KID_SUBSET_SIZE = 1000  # Binkowski et al. and NVlabs' metrics: subsets of 1000


def choose_kid_subset_size(n_a, n_b, subset_size=None):
    """(m, rule): the KID subset size and how it was chosen.

    Default: 1000, or half the smaller set when that set has 1000 images or fewer, so that the
    subsets differ and their spread measures something (with subsets as large as both sets every
    subset is the same pair of sets and the std is 0 by construction). A given size is capped at
    the sets' sizes."""
    if subset_size is None:
        if min(n_a, n_b) > KID_SUBSET_SIZE:
            return KID_SUBSET_SIZE, f"default {KID_SUBSET_SIZE}"
        return max(2, min(n_a, n_b) // 2), "default: half the smaller set, so that the subsets differ"
    m = min(subset_size, n_a, n_b)
    return m, "given" if m == subset_size else f"given {subset_size}, capped at the smaller set"


def kid_subsets(n_a, n_b, subsets, subset_size=None, seed=0):
    """The subsets KID uses: m from choose_kid_subset_size; for each subset, first
    rng.choice(n_a, m, replace=False) then rng.choice(n_b, m, replace=False), with
    rng = np.random.default_rng(seed). Yields (index_a, index_b)."""
    m = choose_kid_subset_size(n_a, n_b, subset_size)[0]
    rng = np.random.default_rng(seed)
    for _ in range(subsets):
        yield rng.choice(n_a, m, replace=False), rng.choice(n_b, m, replace=False)


def _cubic_kernel(x, y):
    """k(a, b) = (a.b / d + 1)^3 (Binkowski et al. 2018, Sec. 4): x [m, d], y [n, d] -> [m, n]."""
    return (x @ y.T / x.shape[1] + 1) ** 3


def _self_sum(x, blocks=2):
    """Sum over i != j of k(x_i, x_j) for x [m, d] float64, from the blocks on and above the
    diagonal only (the kernel matrix is symmetric): 3/4 of the full product's work."""
    edges = np.linspace(0, len(x), blocks + 1).astype(int)
    total = 0.0
    for i in range(blocks):
        xi = x[edges[i]:edges[i + 1]]
        for j in range(i, blocks):
            k = _cubic_kernel(xi, x[edges[j]:edges[j + 1]])
            total += float(k.sum() - k.diagonal().sum()) if i == j else 2 * float(k.sum())
    return total


def _row_sums(f, rows, other, block=2048):
    """sum_j k(f_i, other_j) for each i in rows (f: [N, d] array, other: float64 array)."""
    out = np.zeros(len(f))
    for s in range(0, len(rows), block):
        r = rows[s:s + block]
        out[r] = _cubic_kernel(np.asarray(f[r], dtype=np.float64), other).sum(1)
    return out


def kid(feats_a, feats_b, subsets=100, subset_size=None, seed=0):
    """Kernel Inception Distance: mean and std (ddof 0) over subsets of the unbiased MMD^2,

        MMD^2 = (sum_{i!=j} k(x_i, x_j) + sum_{i!=j} k(y_i, y_j)) / (m (m - 1))
                - 2 sum_{i,j} k(x_i, y_j) / m^2,

    for subsets X, Y of m features each (choose_kid_subset_size: by default 1000, or half the smaller
    set), with the cubic kernel. The std is nan (not available) when every subset is the whole
    of both sets: then it would be 0 without measuring anything. Sums in float64, by numpy (for
    the small blocks of few-shot sets, torch's float64 matmul on a loaded CPU costs milliseconds of
    thread start-up each). A side used whole (m = its size: the usual few-shot case, e.g. 500
    training images) is the same set in every subset, so its self sum is computed once, and the
    cross sum of a subset is a sum of per-row sums against that side.
    """
    a, b = np.asarray(feats_a), np.asarray(feats_b)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(f"kid needs [N, d] features with the same d, got {a.shape} and {b.shape}")
    if min(len(a), len(b)) < 2 or subsets < 1:
        raise ValueError(f"kid needs at least 2 features per side and 1 subset, got {len(a)}, "
                         f"{len(b)} and subsets={subsets}")
    m = choose_kid_subset_size(len(a), len(b), subset_size)[0]
    rows = lambda f, i: np.asarray(f[i], dtype=np.float64)  # noqa: E731
    draws = list(kid_subsets(len(a), len(b), subsets, subset_size, seed))
    self_a = _self_sum(rows(a, slice(None))) if m == len(a) else None
    self_b = _self_sum(rows(b, slice(None))) if m == len(b) else None
    cross_rows = None  # per-row cross sums of one side against the other, used whole
    if self_b is not None:
        need = np.unique(np.concatenate([ia for ia, _ in draws]))
        cross_rows = ("a", _row_sums(a, need, rows(b, slice(None))))
    elif self_a is not None:
        need = np.unique(np.concatenate([ib for _, ib in draws]))
        cross_rows = ("b", _row_sums(b, need, rows(a, slice(None))))
    mmd = np.empty(subsets)
    for s, (ia, ib) in enumerate(draws):
        kxx = self_a if self_a is not None else _self_sum(rows(a, ia))
        kyy = self_b if self_b is not None else _self_sum(rows(b, ib))
        if cross_rows is None:
            kxy = float(_cubic_kernel(rows(a, ia), rows(b, ib)).sum())
        else:
            kxy = float(cross_rows[1][ia if cross_rows[0] == "a" else ib].sum())
        mmd[s] = (kxx + kyy) / (m * (m - 1)) - 2 * kxy / m ** 2
    if m == len(a) == len(b):
        return float(mmd.mean()), float("nan")  # all subsets identical: no spread to report
    return float(mmd.mean()), float(mmd.std())


# ----------------------------------------------------------------------------------------------
# The command line: `python -m ops.fid ...` (pytorch-fid's shape) is ops/fid_eval.py's main


def main(argv=None):
    """`python -m ops.fid`: FID [and KID] of two folders or .npz files, --save-stats, nearest."""
    from .fid_eval import main as fid_eval_main  # imported here: fid_eval imports this file
    return fid_eval_main(argv)


if __name__ == "__main__":
    main()
