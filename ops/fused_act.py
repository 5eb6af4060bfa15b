"""Fused bias + leaky ReLU + gain: out = leaky_relu(x + b, slope) * scale.

The StyleGAN2 activation (rosinality op/fused_act.py, NVlabs bias_act 'lrelu'): the bias is
broadcast along dim 1 (channels) of a [N, C] or [N, C, H, W] tensor.
"""
import torch
import torch.nn.functional as F
from torch import nn


def fused_leaky_relu_ref(x, bias=None, negative_slope=0.2, scale=2 ** 0.5):
    """Reference: plain PyTorch ops, differentiable to any order."""
    if bias is not None:
        x = x + bias.view(1, -1, *([1] * (x.ndim - 2))).to(x.dtype)
    return F.leaky_relu(x, negative_slope) * scale


def fused_leaky_relu(x, bias=None, negative_slope=0.2, scale=2 ** 0.5):
    """leaky_relu(x + bias[None, :, None, None], negative_slope) * scale."""
    return fused_leaky_relu_ref(x, bias, negative_slope, scale)


class FusedLeakyReLU(nn.Module):
    """Per-channel bias (parameter `bias`, shape [C], init 0), leaky ReLU 0.2, gain sqrt(2)."""

    def __init__(self, channel, bias=True, negative_slope=0.2, scale=2 ** 0.5):
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(channel)) if bias else None
        self.negative_slope = negative_slope
        self.scale = scale

    def forward(self, x):
        return fused_leaky_relu(x, self.bias, self.negative_slope, self.scale)
