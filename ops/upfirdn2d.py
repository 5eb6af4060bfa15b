"""upfirdn2d: upsample by zero insertion, pad (or crop), 2-D FIR filter, downsample.

Exactly StyleGAN2's resampling op (rosinality op/upfirdn2d.py, NVlabs torch_utils/ops/upfirdn2d.py).
The filter is applied as a true convolution, i.e. the kernel IS flipped (as rosinality always
does and NVlabs does by default); for symmetric kernels such as [1,3,3,1] this does not matter.
"""
import torch
import torch.nn.functional as F


def _pair(v, name):
    if isinstance(v, int):
        return v, v
    if len(v) != 2:
        raise ValueError(f"{name} must be an int or an (x, y) pair, got {v!r}")
    return int(v[0]), int(v[1])


def _pad4(pad):
    if isinstance(pad, int):
        return pad, pad, pad, pad
    pad = tuple(int(p) for p in pad)
    if len(pad) == 2:  # (p0, p1) for both axes, as rosinality
        return pad[0], pad[1], pad[0], pad[1]
    if len(pad) == 4:  # (x0, x1, y0, y1)
        return pad
    raise ValueError(f"pad must have 2 or 4 entries (p0, p1) or (x0, x1, y0, y1), got {len(pad)}")


def upfirdn2d_ref(x, kernel, up=1, down=1, pad=(0, 0)):
    """Reference on conv2d: x [N, C, H, W], kernel [kh, kw]; returns [N, C, outH, outW]."""
    ux, uy = _pair(up, "up")
    dx, dy = _pair(down, "down")
    px0, px1, py0, py1 = _pad4(pad)
    n, c, h, w = x.shape
    kh, kw = kernel.shape
    # 1. zero insertion: each sample followed by (u - 1) zeros
    if ux > 1 or uy > 1:
        x = x.reshape(n, c, h, 1, w, 1)
        x = F.pad(x, [0, ux - 1, 0, 0, 0, uy - 1])
        x = x.reshape(n, c, h * uy, w * ux)
    # 2. pad with zeros, or crop for negative pads
    x = F.pad(x, [max(px0, 0), max(px1, 0), max(py0, 0), max(py1, 0)])
    x = x[:, :, max(-py0, 0): x.shape[2] - max(-py1, 0), max(-px0, 0): x.shape[3] - max(-px1, 0)]
    # 3. + 4. depthwise true convolution (flipped kernel), keeping every d-th output
    weight = torch.flip(kernel, [0, 1]).to(x.dtype).view(1, 1, kh, kw).expand(c, 1, kh, kw)
    return F.conv2d(x, weight, stride=(dy, dx), groups=c)


def upfirdn2d(x, kernel, up=1, down=1, pad=(0, 0)):
    """StyleGAN2's upfirdn2d on NCHW tensors; see module docstring."""
    return upfirdn2d_ref(x, kernel, up, down, pad)


def make_kernel(k):
    """[1,3,3,1] -> normalised 4x4 outer product (sum 1), as StyleGAN2's make_kernel."""
    k = torch.as_tensor(k, dtype=torch.float32)
    if k.ndim == 1:
        k = k[None, :] * k[:, None]
    return k / k.sum()


def blur(x, kernel, pad, gain=1.0):
    return upfirdn2d(x, kernel * gain, pad=pad)


def upsample2d(x, kernel, factor=2):
    p = kernel.shape[0] - factor
    return upfirdn2d(x, kernel * factor ** 2, up=factor, pad=((p + 1) // 2 + factor - 1, p // 2))


def downsample2d(x, kernel, factor=2):
    p = kernel.shape[0] - factor
    return upfirdn2d(x, kernel, down=factor, pad=((p + 1) // 2, p // 2))
