"""calm-gan's only shared code: resampling and activation ops, and the FID routine.

- `ops.upfirdn2d`: upsample, FIR filter, downsample (StyleGAN2's resampling op), with
  `blur`, `upsample2d`, `downsample2d` helpers.
- `ops.fused_act`: bias + leaky ReLU + gain, fused.
- `ops.fid`: Frechet Inception Distance exactly as pytorch-fid computes it.

Each op has a pure-PyTorch reference (used on CPU) and a CUDA kernel built on first use.
"""
from .fused_act import FusedLeakyReLU, fused_leaky_relu
from .upfirdn2d import blur, downsample2d, make_kernel, upfirdn2d, upsample2d

__all__ = ["upfirdn2d", "make_kernel", "blur", "upsample2d", "downsample2d",
           "fused_leaky_relu", "FusedLeakyReLU"]
