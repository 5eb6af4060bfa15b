"""calm-gan's only shared code: resampling and activation ops, and the FID routine.

- `ops.upfirdn2d`: upsample, FIR filter, downsample (StyleGAN2's resampling op), with
  `blur`, `upsample2d`, `downsample2d` helpers.
- `ops.fused_act`: bias + leaky ReLU + gain, fused.
- `ops.fid`: Frechet Inception Distance exactly as pytorch-fid computes it.

Each op has a pure-PyTorch reference (used on CPU) and a CUDA kernel built on first use.

Importing ops checks the torch version first (every numbered script imports ops): the loaders
rely on torch.load(weights_only=True), which can be bypassed to run code on torch <= 2.5.1
(CVE-2025-32434), and on torch.serialization.safe_globals, which torch < 2.5 lacks.
"""
import re

import torch

TORCH_MIN = (2, 6)


def check_torch_version(version=None):
    """Exit with one line naming the installed torch if it is older than TORCH_MIN."""
    version = torch.__version__ if version is None else version
    found = re.match(r"(\d+)\.(\d+)", str(version))
    if found is None or tuple(map(int, found.groups())) < TORCH_MIN:
        raise SystemExit(f"error: calm-gan needs torch >= {TORCH_MIN[0]}.{TORCH_MIN[1]} (its safe checkpoint "
                         f"loading is not safe on older torch, CVE-2025-32434); installed: torch {version}. "
                         f"pip install -r requirements.txt")


check_torch_version()
from .fused_act import FusedLeakyReLU, fused_leaky_relu
from .upfirdn2d import blur, downsample2d, make_kernel, upfirdn2d, upsample2d

__all__ = ["upfirdn2d", "make_kernel", "blur", "upsample2d", "downsample2d",
           "fused_leaky_relu", "FusedLeakyReLU"]
