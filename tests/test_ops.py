"""ops/upfirdn2d.py and ops/fused_act.py against independent numpy/scipy computations.

The upfirdn2d oracle below follows the definition literally, one channel at a time: zero
insertion by strided assignment, np.pad / slicing for the pads, scipy.signal.convolve2d (a true
convolution), decimation by slicing. fused_leaky_relu is checked against the formula in numpy.
CUDA-vs-reference tests run only where a GPU is present (requires_cuda).
"""
import random
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy import signal

import ops.cuda
from conftest import requires_cuda
from ops import FusedLeakyReLU, fused_leaky_relu, make_kernel, upfirdn2d
from ops.fused_act import fused_leaky_relu_ref
from ops.upfirdn2d import _UpFirDn2d, _parse, blur, downsample2d, upfirdn2d_ref, upsample2d


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny tensors: intra-op threads only add synchronisation (and stall on a busy machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# ----------------------------------------------------------------------------------------------
# Independent oracles


def scipy_upfirdn2d(x, k, up, down, pad):
    """x [N, C, H, W], k [kh, kw] numpy; up/down (x, y); pad (x0, x1, y0, y1)."""
    (ux, uy), (dx, dy), (x0, x1, y0, y1) = up, down, pad
    n, c, h, w = x.shape
    planes = []
    for plane in x.reshape(n * c, h, w).astype(np.float64):
        z = np.zeros((h * uy, w * ux))
        z[::uy, ::ux] = plane  # each sample followed by (u - 1) zeros
        z = np.pad(z, ((max(y0, 0), max(y1, 0)), (max(x0, 0), max(x1, 0))))
        z = z[max(-y0, 0): z.shape[0] - max(-y1, 0), max(-x0, 0): z.shape[1] - max(-x1, 0)]
        planes.append(signal.convolve2d(z, k, mode="valid")[::dy, ::dx])
    return np.stack(planes).reshape(n, c, *planes[0].shape)


def numpy_lrelu(x, b, slope, scale):
    y = x + (0 if b is None else b.reshape(1, -1, *([1] * (x.ndim - 2))))
    return np.where(y > 0, y, slope * y) * scale


def random_pad(rng, h, w, up, down, kh, kw):
    """A pad (x0, x1, y0, y1), negative entries allowed, that leaves a non-empty output."""
    while True:
        pad = tuple(rng.randint(-2, max(kh, kw)) for _ in range(4))
        if (h * up[1] + pad[2] + pad[3] >= kh) and (w * up[0] + pad[0] + pad[1] >= kw):
            return pad


# ----------------------------------------------------------------------------------------------
# upfirdn2d values


@pytest.mark.parametrize("ksize", range(1, 9))
@pytest.mark.parametrize("down", [1, 2, 4])
@pytest.mark.parametrize("up", [1, 2, 4])
def test_upfirdn2d_matches_scipy(up, down, ksize):
    rng = random.Random(100 * up + 10 * down + ksize)
    kh, kw = ksize, 9 - ksize  # odd and even, square-free kernels (a flip would show)
    x = torch.randn(2, 3, 6, 9)
    k = torch.randn(kh, kw)
    for pad in [random_pad(rng, 6, 9, (up, up), (down, down), kh, kw) for _ in range(3)]:
        want = scipy_upfirdn2d(x.numpy(), k.numpy(), (up, up), (down, down), pad)
        got = upfirdn2d(x, k, up=up, down=down, pad=pad)
        assert got.shape == want.shape, pad
        out_h = (6 * up + pad[2] + pad[3] - kh + down) // down
        out_w = (9 * up + pad[0] + pad[1] - kw + down) // down
        assert got.shape[2:] == (out_h, out_w)
        np.testing.assert_allclose(got.numpy(), want, rtol=1e-5, atol=1e-5, err_msg=str(pad))


@pytest.mark.parametrize("up,down,pad", [
    ((2, 1), (1, 1), (1, 2, 0, 3)),
    ((1, 4), (2, 1), (-1, 3, 2, -2)),
    ((4, 2), (1, 2), (3, 0, -1, 1)),
    ((2, 2), (2, 2), (2, 1)),       # 2-tuple: same (p0, p1) on both axes
    ((1, 1), (4, 2), (0, -1, 1, 0)),
])
def test_upfirdn2d_separate_xy_factors_match_scipy(up, down, pad):
    x = torch.randn(1, 2, 7, 5)
    k = torch.randn(3, 4)
    pad4 = pad if len(pad) == 4 else (pad[0], pad[1], pad[0], pad[1])
    want = scipy_upfirdn2d(x.numpy(), k.numpy(), up, down, pad4)
    np.testing.assert_allclose(upfirdn2d(x, k, up, down, pad).numpy(), want, rtol=1e-5, atol=1e-5)


def test_upfirdn2d_float64_and_channels_last():
    x = torch.randn(2, 4, 8, 6, dtype=torch.float64)
    k = torch.randn(4, 4, dtype=torch.float64)
    want = scipy_upfirdn2d(x.numpy(), k.numpy(), (2, 2), (1, 1), (2, 1, 2, 1))
    np.testing.assert_allclose(upfirdn2d(x, k, 2, 1, (2, 1)).numpy(), want, rtol=1e-12, atol=1e-12)
    xc = x.float().contiguous(memory_format=torch.channels_last)
    np.testing.assert_allclose(upfirdn2d(xc, k.float(), 1, 2, (1, 2)).numpy(),
                               scipy_upfirdn2d(x.numpy(), k.numpy(), (1, 1), (2, 2), (1, 2, 1, 2)),
                               rtol=1e-5, atol=1e-5)


# ----------------------------------------------------------------------------------------------
# upfirdn2d gradients


GRAD_CASES = [  # (up, down, pad, kernel shape)
    (2, 1, (2, 1), (4, 4)),            # StyleGAN2 Upsample
    (1, 2, (1, 1), (4, 4)),            # Downsample
    (1, 1, (2, 2), (4, 4)),            # Blur before a strided conv
    ((2, 1), (1, 3), (1, -1, 2, 0), (3, 2)),
    (3, 2, (-1, 2, 0, 1), (5, 3)),
]


@pytest.mark.parametrize("up,down,pad,kshape", GRAD_CASES)
def test_upfirdn2d_gradcheck_and_gradgradcheck(up, down, pad, kshape):
    x = torch.randn(1, 2, 5, 6, dtype=torch.float64, requires_grad=True)
    k = torch.randn(*kshape, dtype=torch.float64, requires_grad=True)
    f = lambda x, k: upfirdn2d(x, k, up, down, pad)  # noqa: E731
    assert torch.autograd.gradcheck(f, (x, k))
    assert torch.autograd.gradgradcheck(f, (x, k))


@pytest.mark.parametrize("up,down,pad,kshape", GRAD_CASES)
def test_upfirdn2d_function_backward_pads(up, down, pad, kshape):
    """The Function the CUDA path uses: backward = upfirdn2d(grad, flip(k), down, up, pads'),
    run here on the reference; gradcheck checks those backward pads numerically."""
    x = torch.randn(1, 2, 5, 6, dtype=torch.float64, requires_grad=True)
    k = torch.randn(*kshape, dtype=torch.float64)
    args = _parse(x, k, up, down, pad)
    f = lambda x: _UpFirDn2d.apply(x, k, *args)  # noqa: E731
    assert torch.autograd.gradcheck(f, (x,))
    assert torch.autograd.gradgradcheck(f, (x,))


@pytest.mark.parametrize("up,down,pad,kshape", GRAD_CASES)
def test_upfirdn2d_fixed_kernel_equals_reference_to_second_order(up, down, pad, kshape):
    """A fixed kernel (the networks' filters) takes _UpFirDn2d on the CPU too; it equals
    upfirdn2d_ref through autograd in the output, the gradient, and an R1-like second-order
    gradient (||d loss / d x||^2 differentiated w.r.t. a weight after the filter and x)."""
    x0 = torch.randn(2, 3, 5, 6, dtype=torch.float64)
    k = torch.randn(*kshape, dtype=torch.float64)
    w0 = torch.randn(4, 3, 1, 1, dtype=torch.float64)

    def r1_like(f):
        x, w = x0.clone().requires_grad_(), w0.clone().requires_grad_()
        y = f(x)
        loss = torch.tanh(F.conv2d(y, w)).sum()
        gx, = torch.autograd.grad(loss, x, create_graph=True)
        return (y, gx) + torch.autograd.grad(gx.square().sum(), (w, x))

    fast = r1_like(lambda x: upfirdn2d(x, k, up, down, pad))
    ref = r1_like(lambda x: upfirdn2d_ref(x, k, up, down, pad))
    assert type(upfirdn2d(x0.requires_grad_(), k, up, down, pad).grad_fn).__name__ == "_UpFirDn2dBackward"
    for a, b in zip(fast, ref):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


# ----------------------------------------------------------------------------------------------
# Helpers: make_kernel, upsample2d, downsample2d, blur


def test_make_kernel_is_normalised_outer_product():
    k = make_kernel([1, 3, 3, 1])
    np.testing.assert_allclose(k.numpy(), np.outer([1, 3, 3, 1], [1, 3, 3, 1]) / 64.0, rtol=1e-7)


# pads of rosinality model.py Upsample / Downsample for a kernel of L taps and factor f:
# up ((L - f + 1) // 2 + f - 1, (L - f) // 2), down ((L - f + 1) // 2, (L - f) // 2), written out
@pytest.mark.parametrize("taps,factor,pad", [([1, 3, 3, 1], 2, (2, 1)), ([1, 2, 3, 4, 4, 3, 2, 1], 4, (5, 2))])
def test_upsample2d_matches_scipy_and_keeps_dc(taps, factor, pad):
    k = make_kernel(taps)
    x = torch.randn(2, 3, 6, 10, dtype=torch.float64)
    y = upsample2d(x, k.double(), factor)
    assert y.shape == (2, 3, 6 * factor, 10 * factor)
    want = factor ** 2 * scipy_upfirdn2d(x.numpy(), k.numpy(), (factor, factor), (1, 1), pad + pad)
    np.testing.assert_allclose(y.numpy(), want, rtol=1e-10, atol=1e-10)
    y = upsample2d(torch.full((1, 1, 6, 10), 0.7), k, factor)        # a constant stays constant inside
    border = len(taps) // factor * factor
    np.testing.assert_allclose(y[:, :, border:-border, border:-border].numpy(), 0.7, rtol=1e-6)


@pytest.mark.parametrize("taps,factor,pad", [([1, 3, 3, 1], 2, (1, 1)), ([1, 2, 3, 4, 4, 3, 2, 1], 4, (2, 2))])
def test_downsample2d_matches_scipy_and_keeps_dc(taps, factor, pad):
    k = make_kernel(taps)
    x = torch.randn(2, 3, 16, 24, dtype=torch.float64)
    y = downsample2d(x, k.double(), factor)
    assert y.shape == (2, 3, 16 // factor, 24 // factor)
    want = scipy_upfirdn2d(x.numpy(), k.numpy(), (1, 1), (factor, factor), pad + pad)
    np.testing.assert_allclose(y.numpy(), want, rtol=1e-10, atol=1e-10)
    y = downsample2d(torch.full((1, 1, 16, 24), -1.5), k, factor)
    np.testing.assert_allclose(y[:, :, 1:-1, 1:-1].numpy(), -1.5, rtol=1e-6)


def test_blur_matches_scipy_with_gain():
    x = torch.randn(1, 2, 9, 7)
    k = make_kernel([1, 3, 3, 1])
    want = 4 * scipy_upfirdn2d(x.numpy(), k.numpy(), (1, 1), (1, 1), (2, 2, 2, 2))
    got = blur(x, k, pad=(2, 2), gain=4)
    assert got.shape == (1, 2, 10, 8)  # H + 1: the blur before StyleGAN2's strided 3x3 conv
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-5, atol=1e-5)


# ----------------------------------------------------------------------------------------------
# fused_leaky_relu


@pytest.mark.parametrize("shape", [(4, 5), (2, 3, 7), (2, 3, 5, 4)])
@pytest.mark.parametrize("slope,scale", [(0.2, 2 ** 0.5), (0.0, 1.0), (0.5, 3.0), (-0.3, 1.0),
                                         (0.2, -2.0)])
def test_fused_leaky_relu_matches_numpy_formula(shape, slope, scale):
    x = torch.randn(*shape)
    b = torch.randn(shape[1])
    want = numpy_lrelu(x.numpy().astype(np.float64), b.numpy().astype(np.float64), slope, scale)
    np.testing.assert_allclose(fused_leaky_relu(x, b, slope, scale).numpy(), want,
                               rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(fused_leaky_relu(x, None, slope, scale).numpy(),
                               numpy_lrelu(x.numpy().astype(np.float64), None, slope, scale),
                               rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(fused_leaky_relu_ref(x, b, slope, scale).numpy(), want,
                               rtol=1e-6, atol=1e-6)


def test_fused_leaky_relu_gradient_matches_formula():
    x = torch.randn(3, 4, 5, 6, dtype=torch.float64, requires_grad=True)
    b = torch.randn(4, dtype=torch.float64, requires_grad=True)
    g = torch.randn(3, 4, 5, 6, dtype=torch.float64)
    gx, gb = torch.autograd.grad(fused_leaky_relu(x, b, 0.2, 1.5), (x, b), g)
    y = (x + b.view(1, -1, 1, 1)).detach().numpy()
    want = g.numpy() * np.where(y > 0, 1.5, 0.2 * 1.5)
    np.testing.assert_allclose(gx.numpy(), want, rtol=1e-12)
    np.testing.assert_allclose(gb.numpy(), want.sum(axis=(0, 2, 3)), rtol=1e-10)


@pytest.mark.parametrize("with_bias", [True, False])
@pytest.mark.parametrize("shape", [(3, 4), (2, 3, 4, 5)])
def test_fused_leaky_relu_gradcheck_and_gradgradcheck(shape, with_bias):
    x = torch.randn(*shape, dtype=torch.float64)
    x = (x + 0.1 * torch.sign(x)).requires_grad_()  # keep away from the kink at 0
    b = torch.randn(shape[1], dtype=torch.float64, requires_grad=True) * 0.01 if with_bias else None
    inputs = (x, b.detach().requires_grad_()) if with_bias else (x,)
    f = lambda *a: fused_leaky_relu(*a, negative_slope=0.2, scale=2 ** 0.5)  # noqa: E731
    assert torch.autograd.gradcheck(f, inputs)
    assert torch.autograd.gradgradcheck(f, inputs)


def test_fused_leaky_relu_second_order_r1_like_matches_reference():
    """d/dw of |d out/d x|^2 through a linear layer: exercises the double-backward path."""
    torch.manual_seed(1)
    w = torch.randn(5, 4, dtype=torch.float64, requires_grad=True)
    b = torch.randn(5, dtype=torch.float64, requires_grad=True)
    x = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    results = []
    for act in (fused_leaky_relu, fused_leaky_relu_ref):
        out = (act(x @ w.t(), b) ** 2).sum()
        gx, = torch.autograd.grad(out, x, create_graph=True)
        results.append(torch.autograd.grad(gx.pow(2).sum(), (w, b)))
    for a, r in zip(*results):
        torch.testing.assert_close(a, r, rtol=1e-10, atol=1e-12)


def test_fused_leaky_relu_module_parameter():
    m = FusedLeakyReLU(6)
    assert list(m.state_dict()) == ["bias"] and m.bias.shape == (6,)
    assert torch.count_nonzero(m.bias) == 0
    x = torch.randn(2, 6, 3, 3)
    np.testing.assert_allclose(m(x).detach().numpy(),
                               numpy_lrelu(x.numpy(), None, 0.2, 2 ** 0.5), rtol=1e-6, atol=1e-6)
    assert list(FusedLeakyReLU(6, bias=False).state_dict()) == []


def test_fused_leaky_relu_half_bias_float():
    x = torch.randn(2, 3, 4, 4).half()
    b = torch.randn(3)
    got = fused_leaky_relu(x, b)
    assert got.dtype == torch.float16
    want = numpy_lrelu(x.float().numpy(), b.half().float().numpy(), 0.2, 2 ** 0.5)
    np.testing.assert_allclose(got.float().numpy(), want, rtol=2e-3, atol=2e-3)


# ----------------------------------------------------------------------------------------------
# Bad input


@pytest.mark.parametrize("call,match", [
    (lambda: upfirdn2d(torch.randn(3, 8, 8), torch.ones(2, 2)), "x must be a 4-D"),
    (lambda: upfirdn2d(torch.ones(1, 1, 8, 8, dtype=torch.int64), torch.ones(2, 2)), "x must be a floating"),
    (lambda: upfirdn2d(torch.randn(1, 1, 8, 8), torch.ones(4)), "kernel must be a 2-D"),
    (lambda: upfirdn2d(torch.randn(1, 1, 8, 8), torch.ones(2, 2, dtype=torch.int32)), "kernel must be a floating"),
    (lambda: upfirdn2d(torch.randn(1, 1, 8, 8), torch.ones(2, 2), pad=(1, 1, 1)), "pad must have 2"),
    (lambda: upfirdn2d(torch.randn(1, 1, 8, 8), torch.ones(2, 2), up=0), "up factors must be >= 1"),
    (lambda: upfirdn2d(torch.randn(1, 1, 8, 8), torch.ones(2, 2), down=(1, 2, 3)), "down must be"),
    (lambda: upfirdn2d(torch.randn(1, 1, 4, 4), torch.ones(2, 2), pad=(-4, 0)), "leaves no output"),
    (lambda: fused_leaky_relu(torch.randn(5)), "rank >= 2"),
    (lambda: fused_leaky_relu(torch.ones(2, 3, dtype=torch.int64)), "floating-point tensor"),
    (lambda: fused_leaky_relu(torch.randn(2, 3), torch.zeros(4)), "bias must be a 1-D tensor of size C=3"),
    (lambda: fused_leaky_relu_ref(torch.randn(2, 3), torch.zeros(3, 1)), "bias must be a 1-D"),
])
def test_bad_input_raises_value_error(call, match):
    with pytest.raises(ValueError, match=match):
        call()


# ----------------------------------------------------------------------------------------------
# Lazy CUDA build and fallback (runs on CPU)


def test_cpu_ops_build_nothing(monkeypatch):
    monkeypatch.setattr(ops.cuda, "_cache", {})
    upfirdn2d(torch.randn(1, 1, 4, 4), torch.ones(2, 2))
    fused_leaky_relu(torch.randn(1, 2, 3), torch.zeros(2))
    assert ops.cuda._cache == {}  # nothing was even attempted for CPU tensors


def test_failed_build_warns_once_and_falls_back(monkeypatch):
    def failing_build(name, **kwargs):
        raise RuntimeError("Error building extension: nvcc not found")
    monkeypatch.setattr(ops.cuda, "_cache", {})
    monkeypatch.setattr(ops.cuda, "build", failing_build)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.version, "cuda", "13.0")
    with pytest.warns(RuntimeWarning, match="could not build the 'upfirdn2d' CUDA kernel"):
        assert ops.cuda.load_extension("upfirdn2d") is None
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert ops.cuda.load_extension("upfirdn2d") is None  # cached: no second warning


# ----------------------------------------------------------------------------------------------
# Kernels that check themselves (runs on CPU with stand-in "kernels" for CPU tensors)


class FakeUpFirDn2dKernel:
    """Stands in for the compiled upfirdn2d module; `flip=True` is a classic kernel bug (the FIR
    kernel applied as a correlation, i.e. not flipped), visible with a non-symmetric kernel."""

    def __init__(self, flip=False, crash=False, flip_only=None):
        self.flip, self.crash, self.flip_only, self.calls = flip, crash, flip_only, 0

    def upfirdn2d(self, x, k, ux, uy, dx, dy, x0, x1, y0, y1):
        self.calls += 1
        if self.crash:
            raise RuntimeError("CUDA error: an illegal memory access was encountered")
        # the right answer by the literal definition (scipy), or with the kernel unflipped
        if self.flip or x.dtype == self.flip_only:
            k = torch.flip(k, [0, 1])
        out = scipy_upfirdn2d(x.detach().double().numpy(), k.double().numpy(), (ux, uy), (dx, dy), (x0, x1, y0, y1))
        return torch.from_numpy(out).to(x.dtype)


class FakeBiasActKernel:
    """Stands in for the compiled bias_act module (forward when `ref` is empty, else the gradient
    pass); `wrong_grad=True` forgets the gain on the negative side of the gradient only."""

    def __init__(self, wrong_grad=False):
        self.wrong_grad, self.calls = wrong_grad, 0

    def bias_act(self, x, b, ref, slope, scale):
        self.calls += 1
        if ref.numel() == 0:
            return torch.from_numpy(numpy_lrelu(x.numpy(), b.numpy() if b.numel() else None, slope, scale))
        neg = slope if self.wrong_grad else slope * scale
        return x * torch.where(ref > 0, torch.tensor(scale, dtype=x.dtype), torch.tensor(neg, dtype=x.dtype))


@pytest.fixture
def cpu_kernels(monkeypatch):
    """Treat CPU tensors as kernel tensors and start with fresh self-check verdicts; returns a
    function that installs stand-in modules as if they had been compiled."""
    monkeypatch.setattr(ops.cuda, "KERNEL_DEVICES", {"cpu"})
    monkeypatch.setattr(ops.cuda, "_verdict", {})
    monkeypatch.setattr(ops.cuda, "_mode", "auto")
    cache = {}
    monkeypatch.setattr(ops.cuda, "_cache", cache)
    return cache.update


def upfirdn2d_case():
    x = torch.randn(2, 3, 7, 6)
    k = torch.randn(3, 4)
    want = scipy_upfirdn2d(x.numpy(), k.numpy(), (2, 2), (1, 1), (2, 1, 1, 2))
    return x, k, want


def test_correct_kernel_passes_its_self_check_and_is_used(cpu_kernels):
    fake = FakeUpFirDn2dKernel()
    cpu_kernels({"upfirdn2d": fake})
    x, k, want = upfirdn2d_case()
    with warnings.catch_warnings(), torch.inference_mode():  # first use while generating: still checked
        warnings.simplefilter("error")
        got = upfirdn2d(x, k, up=2, pad=(2, 1, 1, 2))
    checks = fake.calls  # the self-check ran the kernel (forward and backward) ...
    assert checks >= 4 and ops.cuda.self_check_results() == {"upfirdn2d/float32": True}
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-5, atol=1e-5)
    upfirdn2d(x, k, up=2, pad=(2, 1, 1, 2))
    assert fake.calls == checks + 1  # ... and every later call uses it, without a new check


def test_wrong_kernel_warns_once_and_the_reference_takes_over(cpu_kernels):
    fake = FakeUpFirDn2dKernel(flip=True)
    cpu_kernels({"upfirdn2d": fake})
    x, k, want = upfirdn2d_case()
    with pytest.warns(RuntimeWarning, match="'upfirdn2d' CUDA kernel differs from its PyTorch reference"):
        got = upfirdn2d(x, k, up=2, pad=(2, 1, 1, 2))
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-5, atol=1e-5)  # the reference's answer
    calls = fake.calls
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no second warning
        x.requires_grad_()
        got = upfirdn2d(x, k, up=2, pad=(2, 1, 1, 2))
        got.sum().backward()
    assert fake.calls == calls and ops.cuda.self_check_results() == {"upfirdn2d/float32": False}
    np.testing.assert_allclose(got.detach().numpy(), want, rtol=1e-5, atol=1e-5)


def test_each_dtype_is_checked_on_its_first_use(cpu_kernels):
    fake = FakeUpFirDn2dKernel(flip_only=torch.bfloat16)  # right in fp32 and fp16, wrong in bf16
    cpu_kernels({"upfirdn2d": fake})
    x, k, want = upfirdn2d_case()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        upfirdn2d(x, k, up=2, pad=(2, 1, 1, 2))
        half = upfirdn2d(x.half(), k.half(), up=2, pad=(2, 1, 1, 2))
    with pytest.warns(RuntimeWarning, match="differs from its PyTorch reference in torch.bfloat16"):
        bf = upfirdn2d(x.bfloat16(), k.bfloat16(), up=2, pad=(2, 1, 1, 2))
    assert ops.cuda.self_check_results() == {"upfirdn2d/float32": True, "upfirdn2d/float16": True,
                                             "upfirdn2d/bfloat16": False}
    # fp16 came from the (right) kernel, bf16 from the reference: both near the scipy answer
    np.testing.assert_allclose(half.float().numpy(), want, rtol=1e-2, atol=2e-2)
    np.testing.assert_allclose(bf.float().numpy(), want, rtol=3e-2, atol=1e-1)


def test_crashing_kernel_counts_as_wrong(cpu_kernels):
    cpu_kernels({"upfirdn2d": FakeUpFirDn2dKernel(crash=True)})
    x, k, want = upfirdn2d_case()
    with pytest.warns(RuntimeWarning, match="illegal memory access"):
        got = upfirdn2d(x, k, up=2, pad=(2, 1, 1, 2))
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-5, atol=1e-5)


def test_bias_act_self_check_covers_the_gradient(cpu_kernels):
    good, bad = FakeBiasActKernel(), FakeBiasActKernel(wrong_grad=True)
    x, b = torch.randn(3, 4, 5), torch.randn(4)
    want = numpy_lrelu(x.numpy(), b.numpy(), 0.2, 2 ** 0.5)
    cpu_kernels({"bias_act": good})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        np.testing.assert_allclose(fused_leaky_relu(x, b).numpy(), want, rtol=1e-5, atol=1e-5)
    assert good.calls >= 3 and ops.cuda.self_check_results() == {"bias_act/float32": True}
    # the wrong gradient pass gives the right forward: only the gradient comparison can catch it
    ops.cuda._verdict.clear()
    cpu_kernels({"bias_act": bad})
    xg = x.clone().requires_grad_()
    with pytest.warns(RuntimeWarning, match="'bias_act' CUDA kernel differs.*gradient"):
        out = fused_leaky_relu(xg, b)
    out.backward(torch.ones_like(out))
    want_grad = np.where(x.numpy() + b.numpy()[:, None] > 0, 1.0, 0.2) * 2 ** 0.5
    np.testing.assert_allclose(xg.grad.numpy(), want_grad, rtol=1e-5, atol=1e-5)


def test_ops_ref_never_touches_a_kernel_and_ops_cuda_skips_the_check(cpu_kernels):
    fake = FakeUpFirDn2dKernel(flip=True)
    cpu_kernels({"upfirdn2d": fake})
    x, k, want = upfirdn2d_case()
    ops.set_ops("ref")
    np.testing.assert_allclose(upfirdn2d(x, k, up=2, pad=(2, 1, 1, 2)).numpy(), want, rtol=1e-5, atol=1e-5)
    assert fake.calls == 0 and ops.cuda.self_check_results() == {}
    ops.set_ops("cuda")  # unchecked: the (wrong) kernel runs, which is what makes --ops cuda a benchmark flag
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got = upfirdn2d(x, k, up=2, pad=(2, 1, 1, 2))
    assert fake.calls == 1 and not np.allclose(got.numpy(), want, atol=1e-3)
    with pytest.raises(ValueError, match="auto, cuda, ref"):
        ops.set_ops("fast")


# ----------------------------------------------------------------------------------------------
# CUDA kernels vs the reference (GPU only)


CUDA_CASES = [(2, 1, (2, 1)), (1, 2, (1, 1)), (1, 1, (2, 2)), ((2, 1), (1, 2), (1, -1, 2, 0)),
              (4, 1, (3, 0)), (1, 4, (-1, 2, 1, 2))]


@requires_cuda
@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.float16, 2e-2)])
@pytest.mark.parametrize("up,down,pad", CUDA_CASES)
def test_cuda_upfirdn2d_matches_reference(up, down, pad, dtype, tol):
    assert ops.cuda.load_extension("upfirdn2d") is not None, "CUDA kernel failed to build"
    x = torch.randn(2, 5, 17, 12, device="cuda")
    k = torch.randn(4, 3, device="cuda")
    xd, kd = x.to(dtype).requires_grad_(), k.to(dtype)
    got = upfirdn2d(xd, kd, up, down, pad)
    assert got.grad_fn is not None and "UpFirDn2d" in type(got.grad_fn).__name__
    xr = x.double().requires_grad_()
    want = upfirdn2d_ref(xr, k.double(), up, down, pad)
    torch.testing.assert_close(got.double(), want, rtol=tol, atol=tol)
    g = torch.randn_like(want)
    got_grad, = torch.autograd.grad(got, xd, g.to(dtype))
    want_grad, = torch.autograd.grad(want, xr, g)
    torch.testing.assert_close(got_grad.double(), want_grad, rtol=tol, atol=tol)


@requires_cuda
@pytest.mark.parametrize("up,down,pad", CUDA_CASES[:4])
def test_cuda_upfirdn2d_gradcheck_and_gradgradcheck(up, down, pad):
    x = torch.randn(1, 2, 5, 6, dtype=torch.float64, device="cuda", requires_grad=True)
    k = torch.randn(4, 3, dtype=torch.float64, device="cuda")
    f = lambda x: upfirdn2d(x, k, up, down, pad)  # noqa: E731
    assert torch.autograd.gradcheck(f, (x,))
    assert torch.autograd.gradgradcheck(f, (x,))


@requires_cuda
@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.float16, 1e-2)])
@pytest.mark.parametrize("shape", [(8, 16), (2, 16, 9, 7)])
def test_cuda_fused_leaky_relu_matches_reference(shape, dtype, tol):
    assert ops.cuda.load_extension("bias_act") is not None, "CUDA kernel failed to build"
    x = torch.randn(*shape, device="cuda")
    b = torch.randn(shape[1], device="cuda")
    xd, bd = x.to(dtype).requires_grad_(), b.to(dtype).requires_grad_()
    got = fused_leaky_relu(xd, bd)
    xr, br = x.to(dtype).double().requires_grad_(), b.to(dtype).double().requires_grad_()
    want = fused_leaky_relu_ref(xr, br)
    torch.testing.assert_close(got.double(), want, rtol=tol, atol=tol)
    g = torch.randn_like(want)
    got_grads = torch.autograd.grad(got, (xd, bd), g.to(dtype))
    want_grads = torch.autograd.grad(want, (xr, br), g)
    for a, r in zip(got_grads, want_grads):
        torch.testing.assert_close(a.double(), r, rtol=tol, atol=tol * max(1.0, shape[0] ** 0.5))


@requires_cuda
def test_cuda_kernels_pass_their_self_check(monkeypatch):
    """The check that guards every run (--ops auto) passes on this GPU, silently, and the kernels
    are then used (the autograd node is the kernel's Function)."""
    monkeypatch.setattr(ops.cuda, "_verdict", {})
    monkeypatch.setattr(ops.cuda, "_mode", "auto")
    x = torch.randn(2, 3, 8, 8, device="cuda", requires_grad=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        y = upfirdn2d(x, make_kernel([1, 3, 3, 1]).cuda(), up=2, pad=(2, 1))
        z = fused_leaky_relu(y, torch.zeros(3, device="cuda"))
    assert ops.cuda.self_check_results() == {"upfirdn2d/float32": True, "bias_act/float32": True}
    with warnings.catch_warnings():  # the half-precision kernels pass their own checks too
        warnings.simplefilter("error")
        for dtype in (torch.bfloat16, torch.float16):
            fused_leaky_relu(upfirdn2d(x.to(dtype), make_kernel([1, 3, 3, 1]).cuda(), up=2, pad=(2, 1)),
                             torch.zeros(3, device="cuda"))
    assert all(ops.cuda.self_check_results().values()) and len(ops.cuda.self_check_results()) == 6
    assert "UpFirDn2d" in type(y.grad_fn).__name__ and "FusedLeakyReLU" in type(z.grad_fn).__name__


@requires_cuda
def test_cuda_fused_leaky_relu_gradcheck_and_gradgradcheck():
    x = torch.randn(2, 3, 4, 5, dtype=torch.float64, device="cuda")
    x = (x + 0.1 * torch.sign(x)).requires_grad_()
    b = (0.01 * torch.randn(3, dtype=torch.float64, device="cuda")).requires_grad_()
    assert torch.autograd.gradcheck(fused_leaky_relu, (x, b))
    assert torch.autograd.gradgradcheck(fused_leaky_relu, (x, b))
