"""calm-gan's only shared code: resampling and activation ops, and the FID routine.

- `ops.upfirdn2d`: upsample, FIR filter, downsample (StyleGAN2's resampling op), with
  `blur`, `upsample2d`, `downsample2d` helpers.
- `ops.fused_act`: bias + leaky ReLU + gain, fused.
- `ops.fid`: Frechet Inception Distance exactly as pytorch-fid computes it.
- `resolve_device`: every script's `--device auto` (cuda, then mps, then cpu).
- `set_ops`: every script's `--ops {auto,cuda,ref}`.

Each op has a pure-PyTorch reference (used on CPU) and a CUDA kernel built on first use and
checked against the reference on first use in a process, per dtype (ops/cuda/__init__.py).
"""
from .cuda import OPS_MODES, get_ops, set_ops
from .device import resolve_device
from .fused_act import FusedLeakyReLU, fused_leaky_relu
from .upfirdn2d import blur, downsample2d, make_kernel, upfirdn2d, upsample2d

OPS_HELP = ("CUDA kernels: auto = use them after a check against the PyTorch reference on first use "
            "(default), cuda = unchecked, ref = the PyTorch reference everywhere")

__all__ = ["upfirdn2d", "make_kernel", "blur", "upsample2d", "downsample2d",
           "fused_leaky_relu", "FusedLeakyReLU", "resolve_device", "set_ops", "get_ops", "OPS_MODES"]
