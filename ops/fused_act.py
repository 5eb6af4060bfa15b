"""Fused bias + leaky ReLU + gain: out = leaky_relu(x + b, slope) * scale.

The StyleGAN2 activation (rosinality op/fused_act.py, NVlabs torch_utils/ops/bias_act.py 'lrelu'):
the bias is broadcast along dim 1 (channels) of a [N, C] or [N, C, H, W] (any rank >= 2) tensor.

Fused path (CPU and CUDA, for negative_slope >= 0 and scale > 0): one autograd Function that
computes out = lrelu(scale * x + scale * b) (equal, as scale > 0) in two memory passes and saves
only `out`. Its backward is
    grad_x = grad * (scale if out > 0 else slope * scale),   grad_b = sum of grad_x over dims != 1,
using the sign of the saved output (out > 0 exactly where x + b > 0), through a second Function
whose own backward applies the same mask, so second-order gradients (R1, path length) work; the
mask is piecewise constant, so it contributes no gradient of its own. On CUDA both passes run the
compiled kernel ops/cuda/bias_act.cu (checked once against the reference on first use, see
ops/cuda/__init__.py), on other devices PyTorch ops. `fused_leaky_relu_ref` is the
plain, differentiable-to-any-order formulation and the spec.
"""
import numbers

import torch
import torch.nn.functional as F
from torch import nn

from . import cuda


def _check(x, bias, negative_slope, scale):
    if not isinstance(x, torch.Tensor) or x.ndim < 2:
        raise ValueError(f"fused_leaky_relu: x must be a tensor of rank >= 2 ([N, C, ...]), got "
                         f"{tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__}")
    if not x.is_floating_point():
        raise ValueError(f"fused_leaky_relu: x must be a floating-point tensor, got {x.dtype}")
    if bias is not None:
        if not isinstance(bias, torch.Tensor) or bias.ndim != 1 or bias.shape[0] != x.shape[1]:
            raise ValueError(f"fused_leaky_relu: bias must be a 1-D tensor of size C={x.shape[1]}, "
                             f"got {tuple(bias.shape) if isinstance(bias, torch.Tensor) else bias!r}")
        if not bias.is_floating_point():
            raise ValueError(f"fused_leaky_relu: bias must be floating-point, got {bias.dtype}")
    for name, v in (("negative_slope", negative_slope), ("scale", scale)):
        if not isinstance(v, numbers.Real):
            raise ValueError(f"fused_leaky_relu: {name} must be a number, got {v!r}")


def fused_leaky_relu_ref(x, bias=None, negative_slope=0.2, scale=2 ** 0.5):
    """Reference: plain PyTorch ops (x + b, leaky_relu, * scale), differentiable to any order."""
    _check(x, bias, negative_slope, scale)
    if bias is not None:
        x = x + bias.to(x.dtype).view(1, -1, *([1] * (x.ndim - 2)))
    return F.leaky_relu(x, negative_slope) * scale


# ----------------------------------------------------------------------------------------------
# Fused path: elementwise passes on CUDA (compiled kernel) or with PyTorch ops elsewhere


def _act(x, bias, slope, scale):
    """lrelu(x + b, slope) * scale, no autograd."""
    ext = cuda.kernel("bias_act", x)
    if ext is not None:
        empty = x.new_empty(0)
        return ext.bias_act(x.contiguous(), empty if bias is None else bias.contiguous(),
                            empty, float(slope), float(scale))
    if bias is None:
        y = x * scale
    else:  # scale * b + scale * x in one pass
        y = torch.add(bias.view(1, -1, *([1] * (x.ndim - 2))) * scale, x, alpha=scale)
    return F.leaky_relu_(y, slope)


def _act_grad(grad, out, slope, scale):
    """grad * (scale if out > 0 else slope * scale), no autograd."""
    ext = cuda.kernel("bias_act", grad)
    if ext is not None:
        return ext.bias_act(grad.contiguous(), grad.new_empty(0), out.contiguous(),
                            float(slope), float(scale))
    # leaky_relu_backward with self_is_result=True masks by the sign of the saved output
    return torch.ops.aten.leaky_relu_backward(grad, out, slope, True).mul_(scale)


class _FusedLeakyReLUGrad(torch.autograd.Function):
    """grad -> grad * mask(out); linear in grad, so its backward is itself."""

    @staticmethod
    def forward(ctx, grad, out, slope, scale):
        ctx.save_for_backward(out)
        ctx.slope, ctx.scale = slope, scale
        return _act_grad(grad, out, slope, scale)

    @staticmethod
    def backward(ctx, gradgrad):
        out, = ctx.saved_tensors
        return _FusedLeakyReLUGrad.apply(gradgrad, out, ctx.slope, ctx.scale), None, None, None


class _FusedLeakyReLU(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, bias, slope, scale):
        out = _act(x, bias, slope, scale)
        ctx.save_for_backward(out)
        ctx.slope, ctx.scale = slope, scale
        ctx.has_bias = bias is not None
        return out

    @staticmethod
    def backward(ctx, grad):
        out, = ctx.saved_tensors
        grad_x = _FusedLeakyReLUGrad.apply(grad, out, ctx.slope, ctx.scale)
        grad_b = None
        if ctx.has_bias and ctx.needs_input_grad[1]:
            grad_b = grad_x.sum([d for d in range(grad_x.ndim) if d != 1])
        return grad_x, grad_b, None, None


def fused_leaky_relu(x, bias=None, negative_slope=0.2, scale=2 ** 0.5):
    """leaky_relu(x + bias[None, :, None, ...], negative_slope) * scale; x [N, C, ...], bias [C].

    Fused (fewer memory passes, CUDA kernel on GPU) when negative_slope >= 0 and scale > 0,
    otherwise `fused_leaky_relu_ref`. First and second-order gradients for x and bias.
    """
    _check(x, bias, negative_slope, scale)
    if negative_slope < 0 or scale <= 0:
        return fused_leaky_relu_ref(x, bias, negative_slope, scale)
    if bias is not None:
        bias = bias.to(x.dtype)
    return _FusedLeakyReLU.apply(x, bias, float(negative_slope), float(scale))


def _self_check(ext, device, dtype):
    """The fused path (forward, x- and bias-gradients) on `device` in `dtype` against
    `fused_leaky_relu_ref` in float64 on the CPU, on a small random input. None if they agree,
    else the difference."""
    gen = torch.Generator().manual_seed(0)
    x, b, g = (torch.randn(2, 5, 4, 3, generator=gen).to(dtype), torch.randn(5, generator=gen).to(dtype),
               torch.randn(2, 5, 4, 3, generator=gen).to(dtype))  # both sides get these rounded values
    xr, br = x.double().requires_grad_(), b.double().requires_grad_()
    want = fused_leaky_relu_ref(xr, br, 0.2, 2 ** 0.5)
    want_grads = torch.autograd.grad(want, (xr, br), g.double())
    xd, bd = x.to(device).requires_grad_(), b.to(device).requires_grad_()
    got = _FusedLeakyReLU.apply(xd, bd, 0.2, 2 ** 0.5)
    got_grads = torch.autograd.grad(got, (xd, bd), g.to(device))
    return cuda.compare(dtype, (got, *got_grads), (want, *want_grads))


cuda.register_self_check("bias_act", _self_check)


class FusedLeakyReLU(nn.Module):
    """Per-channel bias (parameter `bias`, shape [C], init 0), leaky ReLU 0.2, gain sqrt(2)."""

    def __init__(self, channel, bias=True, negative_slope=0.2, scale=2 ** 0.5):
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(channel)) if bias else None
        self.negative_slope = negative_slope
        self.scale = scale

    def forward(self, x):
        return fused_leaky_relu(x, self.bias, self.negative_slope, self.scale)

    def extra_repr(self):
        return (f"channel={None if self.bias is None else self.bias.shape[0]}, "
                f"negative_slope={self.negative_slope}, scale={self.scale:.4g}")
