"""upfirdn2d: upsample by zero insertion, pad (or crop), 2-D FIR filter, downsample.

Exactly StyleGAN2's resampling op (rosinality op/upfirdn2d.py, NVlabs torch_utils/ops/upfirdn2d.py),
for NCHW tensors, one kernel shared by every channel:

    1. upsample: each input sample is followed by (up - 1) zeros      -> (H * uy, W * ux)
    2. pad with zeros by (x0, x1, y0, y1); a negative pad crops that side
    3. filter: TRUE convolution with `kernel`, i.e. the kernel IS flipped (as rosinality always
       does and NVlabs does by default); for symmetric kernels such as [1,3,3,1] this is moot
    4. downsample: keep every down-th sample, starting at index 0

    out_h = (H * uy + y0 + y1 - kh + dy) // dy,   out_w = (W * ux + x0 + x1 - kw + dx) // dx

Two implementations with the same result:
- `upfirdn2d_ref`, pure PyTorch, used on CPU (and wherever the CUDA kernel is unavailable). It never
  builds the zero-inserted image: step 1 + 3 is one depthwise transposed convolution (stride = up,
  groups = C), steps 3 + 4 one depthwise strided convolution; the symmetric part of the padding
  goes into the convolution's own `padding`. Differentiable to any order through autograd.
- a CUDA kernel (ops/cuda/upfirdn2d.cu), built on first CUDA use and then checked once against the
  reference (`_self_check`; see ops/cuda/__init__.py for `--ops` and the fallback). Its backward is upfirdn2d again,
  with up and down swapped, the kernel flipped and the pads g0 = k - p0 - 1,
  g1 = size * up - out * down + p0 - up + 1 per axis (as rosinality's UpFirDn2dBackward and NVlabs'
  _upfirdn2d_cuda), through the same autograd Function, so second-order gradients (R1, path
  length) work. The CPU uses the same Function around the reference (see `upfirdn2d`).

Helpers: `make_kernel` ([1,3,3,1] -> normalised 4x4), `blur`, `upsample2d` (gain up**2),
`downsample2d`, with rosinality's pads.
"""
import operator

import torch
import torch.nn.functional as F

from . import cuda

# ----------------------------------------------------------------------------------------------
# Argument checks


def _int(v):
    """v as a Python int if it is an integer (int, numpy, 0-d integer tensor; not bool), else None."""
    if isinstance(v, bool):
        return None
    try:
        return operator.index(v)
    except TypeError:
        return None


def _pair(v, name):
    """int or (x, y) pair of positive ints -> (x, y)."""
    if _int(v) is not None:
        v = (_int(v), _int(v))
    if not isinstance(v, (tuple, list)) or len(v) != 2 or any(_int(a) is None for a in v):
        raise ValueError(f"upfirdn2d: {name} must be an int or an (x, y) pair of ints, got {v!r}")
    v = tuple(_int(a) for a in v)
    if min(v) < 1:
        raise ValueError(f"upfirdn2d: {name} factors must be >= 1, got {v!r}")
    return v


def _pad4(pad):
    """int, (p0, p1) for both axes (rosinality) or (x0, x1, y0, y1) -> (x0, x1, y0, y1)."""
    if _int(pad) is not None:
        return (_int(pad),) * 4
    if not isinstance(pad, (tuple, list)) or any(_int(p) is None for p in pad):
        raise ValueError(f"upfirdn2d: pad must be an int or a tuple of ints, got {pad!r}")
    pad = tuple(_int(p) for p in pad)
    if len(pad) == 2:
        return pad[0], pad[1], pad[0], pad[1]
    if len(pad) == 4:
        return pad
    raise ValueError(f"upfirdn2d: pad must have 2 entries (p0, p1) or 4 (x0, x1, y0, y1), "
                     f"got {len(pad)}")


def _parse(x, kernel, up, down, pad):
    """Validate the arguments; returns (ux, uy, dx, dy, x0, x1, y0, y1)."""
    if not isinstance(x, torch.Tensor) or x.ndim != 4:
        raise ValueError(f"upfirdn2d: x must be a 4-D [N, C, H, W] tensor, got "
                         f"{tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__}")
    if not x.is_floating_point():
        raise ValueError(f"upfirdn2d: x must be a floating-point tensor, got {x.dtype}")
    if not isinstance(kernel, torch.Tensor) or kernel.ndim != 2:
        raise ValueError(f"upfirdn2d: kernel must be a 2-D [kh, kw] tensor, got "
                         f"{tuple(kernel.shape) if isinstance(kernel, torch.Tensor) else type(kernel).__name__}")
    if not kernel.is_floating_point():
        raise ValueError(f"upfirdn2d: kernel must be a floating-point tensor, got {kernel.dtype}")
    if kernel.device != x.device:
        raise ValueError(f"upfirdn2d: kernel is on {kernel.device} but x is on {x.device}")
    ux, uy = _pair(up, "up")
    dx, dy = _pair(down, "down")
    x0, x1, y0, y1 = _pad4(pad)
    _, _, h, w = x.shape
    kh, kw = kernel.shape
    out_h = (h * uy + y0 + y1 - kh + dy) // dy
    out_w = (w * ux + x0 + x1 - kw + dx) // dx
    if out_h < 1 or out_w < 1 or h * uy + y0 + y1 < 1 or w * ux + x0 + x1 < 1:
        raise ValueError(f"upfirdn2d: pad {pad!r} with a {kh}x{kw} kernel leaves no output for a "
                         f"{h}x{w} input (up={up!r}, down={down!r})")
    return ux, uy, dx, dy, x0, x1, y0, y1


# ----------------------------------------------------------------------------------------------
# Pure-PyTorch reference


def _split_pad(a, b):
    """Pads (a, b) -> (symmetric part s >= 0, a - s, b - s): s goes into a conv's `padding`."""
    s = max(min(a, b), 0)
    return s, a - s, b - s


def _upfirdn2d_ref(x, kernel, ux, uy, dx, dy, x0, x1, y0, y1):
    n, c, h, w = x.shape
    kh, kw = kernel.shape
    kernel = kernel.to(x.dtype)
    if ux == 1 and uy == 1:
        # pad, then true convolution (cross-correlation with the flipped kernel), stride = down
        sx, x0, x1 = _split_pad(x0, x1)
        sy, y0, y1 = _split_pad(y0, y1)
        if x0 or x1 or y0 or y1:
            x = F.pad(x, [x0, x1, y0, y1])  # negative entries crop
        weight = torch.flip(kernel, [0, 1]).view(1, 1, kh, kw).expand(c, 1, kh, kw)
        return F.conv2d(x, weight, stride=(dy, dx), padding=(sy, sx), groups=c)

    # Zero insertion followed by a full true convolution with k is a transposed convolution with
    # the unflipped k and stride = up: full[m] = sum_j x[j] k[m - up * j], length (H-1)*up + kh.
    # The padded/filtered output is out[o] = full[o + kh - 1 - p0] for o < H*up + p0 + p1 - kh + 1,
    # so crop (kh - 1 - p0) at the start and (kh - up - p1) at the end (negative = zero-pad).
    sx, cx0, cx1 = _split_pad(kw - 1 - x0, kw - ux - x1)
    sy, cy0, cy1 = _split_pad(kh - 1 - y0, kh - uy - y1)
    weight = kernel.view(1, 1, kh, kw).expand(c, 1, kh, kw)
    out = F.conv_transpose2d(x, weight, stride=(uy, ux), padding=(sy, sx), groups=c)
    if cx0 or cx1 or cy0 or cy1:
        out = F.pad(out, [-cx0, -cx1, -cy0, -cy1])
    if dx > 1 or dy > 1:
        out = out[:, :, ::dy, ::dx]
    return out


def upfirdn2d_ref(x, kernel, up=1, down=1, pad=(0, 0)):
    """Pure-PyTorch upfirdn2d: x [N, C, H, W], kernel [kh, kw] -> [N, C, out_h, out_w]."""
    return _upfirdn2d_ref(x, kernel, *_parse(x, kernel, up, down, pad))


# ----------------------------------------------------------------------------------------------
# Autograd Function around the CUDA kernel (ops/cuda/upfirdn2d.cu)


class _UpFirDn2d(torch.autograd.Function):
    """upfirdn2d whose backward is upfirdn2d(grad, flip(k), up=down, down=up, pads') through this
    same Function, so it can be differentiated again. Runs the CUDA kernel
    for CUDA tensors and the reference elsewhere (which keeps this logic testable on CPU)."""

    @staticmethod
    def forward(ctx, x, kernel, ux, uy, dx, dy, x0, x1, y0, y1):
        ext = cuda.kernel("upfirdn2d", x)
        if ext is not None:
            out = ext.upfirdn2d(x.contiguous(), kernel.contiguous(), ux, uy, dx, dy, x0, x1, y0, y1)
        else:
            out = _upfirdn2d_ref(x, kernel, ux, uy, dx, dy, x0, x1, y0, y1)
        _, _, h, w = x.shape
        kh, kw = kernel.shape
        out_h, out_w = out.shape[2:]
        # backward pads: g0 = k - p0 - 1,  g1 = size * up - out * down + p0 - up + 1
        ctx.grad_args = (dx, dy, ux, uy,
                         kw - x0 - 1, w * ux - out_w * dx + x0 - ux + 1,
                         kh - y0 - 1, h * uy - out_h * dy + y0 - uy + 1)
        ctx.save_for_backward(kernel)
        return out

    @staticmethod
    def backward(ctx, grad):
        kernel, = ctx.saved_tensors
        grad_x = None
        if ctx.needs_input_grad[0]:
            grad_x = _UpFirDn2d.apply(grad, torch.flip(kernel, [0, 1]), *ctx.grad_args)
        return (grad_x,) + (None,) * 9


def upfirdn2d(x, kernel, up=1, down=1, pad=(0, 0)):
    """StyleGAN2's upfirdn2d (see the module docstring): x [N, C, H, W], kernel [kh, kw].

    up, down: int or (x, y) factors; pad: (p0, p1) for both axes or (x0, x1, y0, y1), negative
    entries crop. The kernel is flipped (true convolution). A fixed kernel (the networks' FIR
    filters) goes through `_UpFirDn2d`: the compiled kernel on CUDA (unless `--ops ref`, or it
    failed its self-check), `upfirdn2d_ref`'s computation elsewhere, and in both cases a backward
    that is upfirdn2d again. On the CPU that matters for R1 and path length: autograd's second
    derivative of a depthwise (groups = C) convolution runs one convolution per channel, and
    R1 at 64 px makes several thousand of them, while `_UpFirDn2d`'s second derivative is one
    more depthwise convolution (tests/test_ops.py checks both against `upfirdn2d_ref`). A kernel
    that itself needs a gradient uses `upfirdn2d_ref` through autograd.
    """
    args = _parse(x, kernel, up, down, pad)
    if kernel.requires_grad:
        return _upfirdn2d_ref(x, kernel, *args)
    return _UpFirDn2d.apply(x, kernel.to(x.dtype), *args)


def _self_check(ext, device, dtype):
    """The kernel path (forward and x-gradient through _UpFirDn2d) on `device` in `dtype` against
    the reference in float64 on the CPU, on small random inputs with non-symmetric kernels and
    uneven pads (a flipped kernel or a wrong pad shows). None if they agree, else the difference."""
    gen = torch.Generator().manual_seed(0)
    for up, down, pad, kshape in (((2, 2), (1, 1), (2, 1, 1, 2), (4, 3)),
                                  ((1, 1), (2, 2), (1, 2, 2, 0), (3, 4))):
        x = torch.randn(2, 3, 9, 8, generator=gen).to(dtype)  # both sides get these rounded values
        k = torch.randn(*kshape, generator=gen).to(dtype)
        args = _parse(x, k, up, down, pad)
        xr = x.double().requires_grad_()
        want = _upfirdn2d_ref(xr, k.double(), *args)
        g = torch.randn(want.shape, generator=gen).to(dtype)
        want_grad, = torch.autograd.grad(want, xr, g.double())
        xd = x.to(device).requires_grad_()
        got = _UpFirDn2d.apply(xd, k.to(device), *args)
        got_grad, = torch.autograd.grad(got, xd, g.to(device))
        problem = cuda.compare(dtype, (got, got_grad), (want, want_grad))
        if problem is not None:
            return f"up={up}, down={down}, pad={pad}: {problem}"
    return None


cuda.register_self_check("upfirdn2d", _self_check)


# ----------------------------------------------------------------------------------------------
# Helpers used by the networks (rosinality model.py Blur / Upsample / Downsample)


def make_kernel(k):
    """[1,3,3,1] -> normalised 4x4 outer product (sum 1), as StyleGAN2's make_kernel."""
    k = torch.as_tensor(k, dtype=torch.float32)
    if k.ndim == 1:
        k = k[None, :] * k[:, None]
    if k.ndim != 2:
        raise ValueError(f"make_kernel: expected a 1-D or 2-D kernel, got {k.ndim}-D")
    return k / k.sum()


def blur(x, kernel, pad, gain=1.0):
    """FIR filter only: upfirdn2d(x, kernel * gain, pad=pad)."""
    return upfirdn2d(x, kernel * gain, pad=pad)


def upsample2d(x, kernel, factor=2):
    """[N, C, H, W] -> [N, C, H*f, W*f]; kernel gain f**2 keeps a constant image constant."""
    p = kernel.shape[0] - factor
    return upfirdn2d(x, kernel * factor ** 2, up=factor, pad=((p + 1) // 2 + factor - 1, p // 2))


def downsample2d(x, kernel, factor=2):
    """[N, C, H, W] -> [N, C, H/f, W/f] (filter, then keep every f-th sample)."""
    p = kernel.shape[0] - factor
    return upfirdn2d(x, kernel, down=factor, pad=((p + 1) // 2, p // 2))
