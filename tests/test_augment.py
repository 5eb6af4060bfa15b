"""Data set, ADA (AugmentPipe, AdaptiveP) and DiffAugment of 03_stylegan2_ada.py.

Checks are against closed forms computed here with numpy/PIL (flips, shifts with reflect or zero
fill, colour matrices, wavelet identities, a warped analytic image), or for resume against an
uninterrupted run.
"""
import math
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import load_script

aug = load_script("03_stylegan2_ada")


def gen(seed):
    return torch.Generator().manual_seed(seed)


def fit_scale(a, b):
    """Per image, the least-squares s in b = s * a, and the largest residual |b - s a|."""
    a, b = a.flatten(1), b.flatten(1)
    s = (a * b).sum(1) / (a * a).sum(1)
    return s, (b - s[:, None] * a).abs().amax(1)


def only(op, p=1.0, **kw):
    """An AugmentPipe with a single op enabled."""
    return aug.AugmentPipe(**{k: int(k == op) for k in aug.AUGPIPE_SPECS["bgc"]}, p=p, **kw)


# ---- Symlet-6 filter --------------------------------------------------------------------------

def test_sym6_is_orthonormal_lowpass_with_six_vanishing_moments():
    h = np.asarray(aug.SYM6, dtype=np.float64)
    assert h.size == 12
    assert abs(h.sum() - math.sqrt(2)) < 1e-12
    for n in range(6):  # sum_k h[k] h[k + 2n] = delta_n
        assert abs(np.dot(h[: 12 - 2 * n], h[2 * n:]) - (n == 0)) < 1e-11
    k = np.arange(12)
    g = (-1.0) ** k * h[::-1]  # quadrature-mirror high-pass
    t = (k - 5.5) / 5.5
    for m in range(6):
        assert abs(np.sum(g * t ** m)) < 1e-9
    assert abs(np.sum(g * t ** 6)) > 1e-3  # exactly six, so this is the 12-tap family
    # least-asymmetric member, not db6 (whose largest tap is the 3rd)
    assert np.argmax(np.abs(h)) == 5 and h[0] > 0


# ---- AugmentPipe: identity cases --------------------------------------------------------------

def test_p_zero_returns_the_input_itself():
    x = torch.randn(4, 3, 16, 16)
    pipe = aug.make_augment("ada", p=0.0)
    assert pipe(x) is x


def test_nothing_fires_gives_bit_identical_images():
    x = torch.randn(8, 3, 16, 16)
    pipe = aug.make_augment("ada", p=1e-12)
    assert torch.equal(pipe(x, generator=gen(0)), x)


def test_each_image_is_gated_with_probability_p():
    x = torch.randn(4000, 3, 2, 2)
    out = only("brightness", p=0.3)(x, generator=gen(1))
    unchanged = (out == x).flatten(1).all(1)
    changed = (out != x).flatten(1).all(1)
    assert torch.equal(unchanged, ~changed)  # all or nothing per image
    assert abs(changed.float().mean().item() - 0.3) < 0.03


# ---- AugmentPipe: integer (blit) ops are exact pixel permutations -----------------------------

def test_xflip_alone_is_an_exact_flip():
    x = torch.randn(64, 3, 16, 12)
    out = only("xflip")(x, generator=gen(2))
    same = (out == x).flatten(1).all(1)
    flipped = (out == torch.from_numpy(x.numpy()[..., ::-1].copy())).flatten(1).all(1)
    assert bool((same ^ flipped).all())
    assert 16 <= int(flipped.sum()) <= 48


def test_rotate90_alone_is_an_exact_quarter_turn():
    x = torch.randn(64, 3, 16, 16)
    out = only("rotate90")(x, generator=gen(3)).numpy()
    seen = set()
    for i in range(len(x)):
        ks = [k for k in range(4) if np.array_equal(out[i], np.rot90(x[i].numpy(), k, axes=(1, 2)))]
        assert len(ks) == 1
        seen.add(ks[0])
    assert seen == {0, 1, 2, 3}


def _shift_reflect(img, dx, dy):
    """numpy reference: out[y, x] = img[y - dy, x - dx], reflect (edge not repeated) outside."""
    c, h, w = img.shape
    padded = np.pad(img, ((0, 0), (abs(dy), abs(dy)), (abs(dx), abs(dx))), mode="reflect")
    return padded[:, abs(dy) - dy: abs(dy) - dy + h, abs(dx) - dx: abs(dx) - dx + w]


def test_xint_alone_is_an_integer_shift_with_reflect_fill():
    h, w = 16, 24  # max shift round(0.125 * size): 2 rows, 3 columns
    x = torch.randn(48, 3, h, w)
    out = only("xint")(x, generator=gen(4)).numpy()
    shifts = []
    for i in range(len(x)):
        hits = [(dx, dy) for dx in range(-3, 4) for dy in range(-2, 3)
                if np.array_equal(out[i], _shift_reflect(x[i].numpy(), dx, dy))]
        assert len(hits) == 1, f"image {i} is not an integer shift with reflect fill"
        shifts.append(hits[0])
    assert {s[0] for s in shifts} == set(range(-3, 4))
    assert {s[1] for s in shifts} == set(range(-2, 3))


def test_filter_chain_reproduces_integer_shifts_exactly():
    """sym6 is orthogonal: 2x up, an even 2x-domain shift, 2x down must be the plain shift
    (perfect reconstruction), so the up/down alignment and the padding are right."""
    pipe = aug.make_augment("ada", p=1.0)
    x = torch.randn(3, 3, 16, 16)
    G_inv = torch.eye(3).repeat(3, 1, 1)
    G_inv[:, 0, 2] = torch.tensor([-2.0, 0.0, 3.0])  # output (x, y) reads input (x - 2, y + 1), ...
    G_inv[:, 1, 2] = torch.tensor([1.0, 0.0, -2.0])
    out = aug.warp_resampled(x, G_inv, pipe.sym6).numpy()
    for i, (dx, dy) in enumerate([(2, -1), (0, 0), (-3, 2)]):
        np.testing.assert_allclose(out[i], _shift_reflect(x[i].numpy(), dx, dy), atol=2e-5)


# ---- AugmentPipe: fractional geometry against the continuous closed form ------------------------

def test_general_warp_matches_the_transformed_smooth_image():
    h = w = 32
    B = 12
    pipe = aug.make_augment("ada", spec="geom", p=1.0)
    ys, xs = np.meshgrid(np.arange(h) - (h - 1) / 2, np.arange(w) - (w - 1) / 2, indexing="ij")
    f = lambda u, v: np.sin(0.25 * u + 0.1 * v) * np.cos(0.15 * v - 0.05 * u)  # band-limited
    x = torch.from_numpy(np.broadcast_to(f(xs, ys), (B, 3, h, w)).astype(np.float32).copy())
    G_inv = pipe.sample_geometry(B, h, w, "cpu", gen(5)).double().numpy()  # the draws forward will make
    out = pipe(x, generator=gen(5)).numpy()
    u = np.stack([xs.ravel(), ys.ravel(), np.ones(h * w)])
    for i in range(B):
        src = G_inv[i] @ u  # where output pixel u reads from
        expect = f(src[0], src[1]).reshape(h, w)
        inside = ((np.abs(src[0]) <= (w - 1) / 2 - 3) & (np.abs(src[1]) <= (h - 1) / 2 - 3)).reshape(h, w)
        assert inside.sum() > 20
        # sym6 + bilinear resampling of a smooth image: a few hundredths; a wrong sign would be ~1
        assert np.abs(out[i][:, inside] - expect[inside]).max() < 0.06


def test_rotation_angles_cover_the_circle_with_p_rot():
    pipe = only("rotate", p=0.5)
    G = pipe.sample_geometry(8000, 8, 8, "cpu", gen(6))
    theta = torch.atan2(G[:, 1, 0], G[:, 0, 0])
    rotated = theta.abs() > 0
    # pre or post fires with probability p (p_rot = 1 - sqrt(1 - p) each)
    assert abs(rotated.float().mean().item() - 0.5) < 0.03
    assert theta.abs().max() > 3.0


def test_scale_and_aniso_are_log2_normal():
    s = 1 / only("scale").sample_geometry(6000, 8, 8, "cpu", gen(7))[:, 0, 0]
    assert abs(torch.log2(s).std().item() - 0.2) < 0.01
    A = only("aniso").sample_geometry(6000, 8, 8, "cpu", gen(8))
    assert torch.allclose(A[:, 0, 0] * A[:, 1, 1], torch.ones(6000), atol=1e-5)  # (s, 1/s)
    assert abs(torch.log2(A[:, 1, 1]).std().item() - 0.2) < 0.01


# ---- AugmentPipe: colour ops -------------------------------------------------------------------

def test_brightness_adds_a_per_image_constant():
    x = torch.rand(4000, 3, 2, 2) * 2 - 1
    d = (only("brightness")(x, generator=gen(9)) - x).flatten(1)
    assert torch.allclose(d, d[:, :1].expand_as(d), atol=1e-6)
    b = d[:, 0]
    assert abs(b.mean().item()) < 0.015 and abs(b.std().item() - 0.2) < 0.01


def test_contrast_scales_around_zero():
    x = torch.rand(4000, 3, 2, 2) * 2 - 1
    out = only("contrast")(x, generator=gen(10))
    c, residual = fit_scale(x, out)
    assert residual.max() < 1e-5 * c.max()
    assert abs(torch.log2(c).std().item() - 0.5) < 0.02


def test_lumaflip_negates_gray_and_keeps_chroma():
    gray = (torch.rand(64, 1, 8, 8) * 2 - 1).expand(64, 3, 8, 8).contiguous()
    out = only("lumaflip")(gray, generator=gen(11))
    same = torch.isclose(out, gray, atol=1e-6).flatten(1).all(1)
    negated = torch.isclose(out, -gray, atol=1e-6).flatten(1).all(1)
    assert bool((same ^ negated).all()) and 16 <= int(negated.sum()) <= 48
    x = torch.rand(64, 3, 8, 8) * 2 - 1
    out = only("lumaflip")(x, generator=gen(11))  # Householder: x - 2 * mean_c(x)
    flipped = x - 2 * x.mean(1, keepdim=True)
    ok = torch.isclose(out, x, atol=1e-6).flatten(1).all(1) | torch.isclose(out, flipped, atol=1e-6).flatten(1).all(1)
    assert bool(ok.all())


def test_hue_rotates_chroma_about_the_luma_axis():
    x = torch.rand(2000, 3, 2, 2) * 2 - 1
    out = only("hue")(x, generator=gen(12))
    m_in, m_out = x.mean(1, keepdim=True), out.mean(1, keepdim=True)
    assert torch.allclose(m_in, m_out, atol=1e-5)  # luma kept
    a, b = x - m_in, out - m_out
    assert torch.allclose(a.norm(dim=1), b.norm(dim=1), atol=1e-5)  # chroma length kept
    cos = ((a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1))).flatten(1)  # one angle per image
    assert torch.allclose(cos, cos[:, :1].expand_as(cos), atol=1e-4)
    assert abs(cos[:, 0].mean().item()) < 0.05  # theta uniform on the circle: E[cos] = 0


def test_saturation_scales_chroma_and_tiny_s_makes_gray():
    x = torch.rand(4000, 3, 2, 2) * 2 - 1
    out = only("saturation")(x, generator=gen(13))
    m = x.mean(1, keepdim=True)
    assert torch.allclose(out.mean(1, keepdim=True), m, atol=1e-5)
    s, residual = fit_scale(x - m, out - m)  # out = m + s (x - m)
    assert residual.max() < 1e-4 * s.abs().clamp(min=1).max()
    assert abs(torch.log2(s).std().item() - 1.0) < 0.04
    out = only("saturation", saturation_std=40.0)(x, generator=gen(13))
    spread = (out - out.mean(1, keepdim=True)).abs().flatten(1).amax(1)
    # s = 2^(40 N) < 2^-15 (gray to 1e-4) when N < -0.375, P = 0.354
    assert 0.3 < (spread < 1e-4).float().mean() < 0.42


def test_grayscale_images_use_the_mean_colour_row():
    x = torch.rand(500, 1, 4, 4) * 2 - 1
    d = (only("brightness")(x, generator=gen(14)) - x).flatten(1)
    assert torch.allclose(d, d[:, :1].expand_as(d), atol=1e-6)
    out = aug.make_augment("ada", p=1.0)(x[:4], generator=gen(14))
    assert out.shape == (4, 1, 4, 4) and torch.isfinite(out).all()


# ---- AugmentPipe: gradients -------------------------------------------------------------------

def test_pipe_gradient_is_the_adjoint_of_the_pipe_on_a_batch():
    # with its random draws fixed the pipe is affine, pipe(x) = A x + c, so the gradient of
    # <pipe(x), r> is A^T r and <A^T r, v> = <r, pipe(v) - pipe(0)> for any v: the backward of every
    # op checked against the forward, one transform per sample, at a size where the warp pads
    pipe = aug.make_augment("ada", p=1.0)
    fn = lambda x: pipe(x, generator=gen(15))
    x = torch.randn(6, 3, 16, 16, dtype=torch.float64, requires_grad=True)
    r, v = torch.randn(6, 3, 16, 16, dtype=torch.float64), torch.randn(6, 3, 16, 16, dtype=torch.float64)
    (fn(x) * r).sum().backward()
    with torch.no_grad():
        Av = fn(v) - fn(torch.zeros_like(v))
        torch.testing.assert_close(fn(x + v) - fn(x), Av, rtol=1e-9, atol=1e-9)   # affine in x
    lhs, rhs = (x.grad * v).flatten(1).sum(1), (r * Av).flatten(1).sum(1)          # per sample
    torch.testing.assert_close(lhs, rhs, rtol=1e-9, atol=1e-9)
    assert bool((Av.flatten(1).abs().sum(1) > 0).all())


def test_pipe_gradient_and_second_gradient_match_finite_differences():
    pipe = aug.make_augment("ada", p=1.0)
    fn = lambda x: pipe(x, generator=gen(3))
    x = torch.rand(1, 3, 6, 6, dtype=torch.float64, requires_grad=True)
    G = pipe.sample_geometry(1, 6, 6, "cpu", gen(3))
    assert (G - G.round()).abs().max() > 1e-2  # a fractional warp: the sym6 / grid_sample path
    assert torch.autograd.gradcheck(fn, (x,), fast_mode=True)
    assert torch.autograd.gradgradcheck(fn, (x,), fast_mode=True)  # R1 through the pipe


# ---- AdaptiveP ----------------------------------------------------------------------------------

def test_adaptive_p_rises_by_the_exact_step_when_d_overfits():
    ada = aug.AdaptiveP(target=0.6, interval=4, kimg=500, batch_size=4)
    step = 4 * 4 / (500 * 1000)
    for it in range(1, 9):
        ada.accumulate(torch.tensor([[2.0], [0.5], [1.0], [-0.1]]) if it == 1 else torch.ones(4, 1))
        p = ada.step(it)
        assert p == pytest.approx(step * (it // 4), abs=1e-15)
    assert ada.rt == 1.0


def test_adaptive_p_falls_to_zero_when_d_does_not_overfit():
    ada = aug.AdaptiveP(batch_size=4, p=5e-5)
    for it in range(1, 13):
        ada.accumulate(torch.tensor([1.0, -1.0, -2.0, 3.0]))  # E[sign] = 0 < 0.6
        ada.step(it)
        if it == 4:
            assert ada.p == pytest.approx(5e-5 - 3.2e-5, abs=1e-15)
    assert ada.p == 0.0


def test_adaptive_p_holds_at_target_and_clamps_at_p_max():
    ada = aug.AdaptiveP(target=0.5, interval=1, kimg=0.001, batch_size=1, p=0.3)  # step 1.0
    ada.accumulate(torch.tensor([1.0, 1.0, 1.0, -1.0]))  # E[sign] = 0.5 = target
    assert ada.step(1) == 0.3
    ada.accumulate(torch.ones(4))
    assert ada.step(2) == 1.0
    free = aug.AdaptiveP(target=0.5, interval=1, kimg=0.001, batch_size=1, p=0.3, p_max=None)  # NVlabs
    free.accumulate(torch.ones(4))
    assert free.step(1) == pytest.approx(1.3)


def test_adaptive_p_state_round_trips_mid_interval(tmp_path):
    a = aug.AdaptiveP(batch_size=8)
    b = aug.AdaptiveP(batch_size=8)
    logits = [torch.randn(8) + 1 for _ in range(12)]
    for it in range(1, 7):
        a.accumulate(logits[it - 1])
        a.step(it)
    state = a.state_dict()
    assert all(v is None or type(v) in (float, int) for v in state.values())
    torch.save(state, tmp_path / "s.pt")
    b.load_state_dict(torch.load(tmp_path / "s.pt", weights_only=True))
    for it in range(7, 13):
        for ctl in (a, b):
            ctl.accumulate(logits[it - 1])
            ctl.step(it)
    assert a.p == b.p and a.p > 0


# ---- DiffAugment -----------------------------------------------------------------------------

def _shift_zero(img, th, tw):
    """numpy reference: out[i, j] = img[i + th, j + tw], zero outside."""
    c, h, w = img.shape
    padded = np.pad(img, ((0, 0), (h, h), (w, w)))
    return padded[:, h + th: 2 * h + th, w + tw: 2 * w + tw]


def test_diffaug_translation_is_a_zero_filled_integer_shift():
    x = torch.rand(300, 3, 16, 16) + 0.5  # nonzero everywhere
    out = aug.diff_augment(x, "translation", generator=gen(20)).numpy()
    shifts = []
    for i in range(len(x)):
        hits = [(th, tw) for th in range(-2, 3) for tw in range(-2, 3)  # int(16 / 8 + 0.5) = 2
                if np.array_equal(out[i], _shift_zero(x[i].numpy(), th, tw))]
        assert len(hits) == 1
        shifts.append(hits[0])
    counts = np.bincount(np.asarray(shifts)[:, 0] + 2, minlength=5) / len(shifts)
    assert counts.min() > 0.1 and counts.max() < 0.3  # uniform over 5 values


def test_diffaug_cutout_zeros_one_clipped_square_with_the_right_coverage():
    h = w = 16
    x = torch.rand(3000, 3, h, w) + 0.5
    out = aug.diff_augment(x, "cutout", generator=gen(21))
    zero = (out == 0).numpy()
    assert (zero == zero[:, :1]).all()  # same mask on every channel
    keep = ~zero[:, 0]
    np.testing.assert_array_equal(out.numpy(), x.numpy() * keep[:, None])
    rows, cols = zero[:, 0].any(2), zero[:, 0].any(1)
    for i in range(50):  # the zeroed set is exactly the product of a row run and a column run
        np.testing.assert_array_equal(zero[i, 0], np.outer(rows[i], cols[i]))
        r = np.flatnonzero(rows[i])
        assert r.size == 0 or r[-1] - r[0] + 1 == r.size <= 8
    # closed form: side 8, centre o uniform in [0, 16], rows o-4 .. o+3 clipped to [0, 15]
    lengths = [len(set(range(o - 4, o + 4)) & set(range(16))) for o in range(17)]
    expected = (np.mean(lengths) / 16) ** 2
    assert abs(zero[:, 0].mean() - expected) < 0.01


def test_diffaug_color_ops_have_the_published_ranges():
    x = torch.rand(4000, 3, 2, 2) * 2 - 1
    d = (aug._diffaug_brightness(x, gen(22)) - x).flatten(1)
    assert torch.allclose(d, d[:, :1].expand_as(d), atol=1e-6)
    assert d.min() >= -0.5 and d.max() < 0.5 and abs(d[:, 0].var().item() - 1 / 12) < 0.006
    m = x.mean(1, keepdim=True)
    s, residual = fit_scale(x - m, aug._diffaug_saturation(x, gen(23)) - m)
    assert residual.max() < 1e-5
    assert s.min() >= -1e-5 and s.max() < 2 and abs(s.mean().item() - 1) < 0.03
    out = aug._diffaug_contrast(x, gen(24))
    mean = x.mean((1, 2, 3), keepdim=True)
    assert torch.allclose(out.mean((1, 2, 3), keepdim=True), mean, atol=1e-5)
    c, residual = fit_scale(x - mean, out - mean)
    assert residual.max() < 1e-5
    assert c.min() >= 0.5 - 1e-5 and c.max() < 1.5 and abs(c.mean().item() - 1) < 0.02
    assert [f.__name__ for f in aug.DIFFAUGMENT_POLICIES["color"]] == [
        "_diffaug_brightness", "_diffaug_saturation", "_diffaug_contrast"]


def test_diffaug_gradient_is_the_adjoint_and_policies_are_checked():
    # colour, translation and cutout are affine in x for fixed draws: as for the ADA pipe above,
    # <grad of <out, r>, v> = <r, out(v) - out(0)> per sample
    fn = lambda x: aug.diff_augment(x, generator=gen(25))
    x = torch.randn(8, 3, 16, 16, dtype=torch.float64, requires_grad=True)
    r, v = torch.randn(8, 3, 16, 16, dtype=torch.float64), torch.randn(8, 3, 16, 16, dtype=torch.float64)
    (fn(x) * r).sum().backward()
    with torch.no_grad():
        Av = fn(v) - fn(torch.zeros_like(v))
        torch.testing.assert_close(fn(x + v) - fn(x), Av, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close((x.grad * v).flatten(1).sum(1), (r * Av).flatten(1).sum(1), rtol=1e-9, atol=1e-9)
    y = torch.randn(2, 3, 8, 8)
    assert torch.equal(aug.diff_augment(y, ""), y)
    with pytest.raises(ValueError, match="colour"):
        aug.diff_augment(y, "colour,translation")


def test_make_augment_kinds():
    x = torch.randn(2, 3, 8, 8)
    assert aug.make_augment("none")(x) is x
    ada = aug.make_augment("ada", p=0.25)
    assert isinstance(ada, aug.AugmentPipe) and ada.p == 0.25 and ada.saturation == 1
    assert aug.make_augment("ada", spec="blit").scale == 0
    default = aug.AugmentPipe()  # the interface's defaults: every 'bgc' op on, p = 0
    assert all(getattr(default, op) == 1 for op in aug.AUGPIPE_SPECS["bgc"]) and default.p == 0
    assert aug.make_augment("diffaug", policy="translation")(x, generator=gen(0)).shape == x.shape
    with pytest.raises(ValueError, match="unknown augmentation"):
        aug.make_augment("mixup")
    with pytest.raises(ValueError, match="cutmix"):
        aug.make_augment("diffaug", policy="color,cutmix")
    with pytest.raises(ValueError):
        ada.p = -0.1


# ---- ImageFolderDataset / StepBatchSampler ---------------------------------------------------

def _png(path, arr):
    Image.fromarray(np.asarray(arr)).save(path)  # mode from the shape: L, RGB or RGBA


def test_dataset_missing_or_empty_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope"):
        aug.ImageFolderDataset(tmp_path / "nope", 16)
    (tmp_path / "readme.txt").write_text("no images here")
    with pytest.raises(ValueError, match=str(tmp_path)):
        aug.ImageFolderDataset(tmp_path, 16)


def test_dataset_skips_corrupt_files_with_a_warning(tmp_path):
    _png(tmp_path / "a.png", np.zeros((8, 8, 3), np.uint8))
    (tmp_path / "b.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    full = tmp_path / "c.jpg"
    Image.fromarray(np.full((8, 8, 3), 200, np.uint8)).save(full)
    full.write_bytes(full.read_bytes()[:40])  # truncated JPEG
    with warnings.catch_warnings(record=True) as caught:  # one line per unreadable file, naming it
        warnings.simplefilter("always")
        ds = aug.ImageFolderDataset(tmp_path, 8, xflip=False)
    lines = [str(w.message) for w in caught if issubclass(w.category, UserWarning)]
    assert len(lines) == 2 and all("\n" not in t and t.endswith("(skipped)") for t in lines)
    assert "b.png" in lines[0] and "c.jpg" in lines[1]
    assert len(ds) == 1
    (tmp_path / "a.png").unlink()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(ValueError, match="2 unreadable"):
            aug.ImageFolderDataset(tmp_path, 8)


def test_dataset_converts_modes_to_rgb_in_minus_one_one(tmp_path):
    rgba = np.zeros((4, 4, 4), np.uint8)
    rgba[0, 0] = (255, 0, 0, 128)  # half-transparent red over white
    rgba[1, 1] = (10, 20, 30, 255)  # opaque
    _png(tmp_path / "0_rgba.png", rgba)  # the rest: fully transparent -> white
    _png(tmp_path / "1_gray.png", np.full((4, 4), 100, np.uint8))
    Image.fromarray(np.full((4, 4), 257 * 40, np.uint16)).save(tmp_path / "2_gray16.png")
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).convert("P").save(tmp_path / "3_palette.png")
    _png(tmp_path / "4_rgb.png", np.full((4, 4, 3), 255, np.uint8))
    ds = aug.ImageFolderDataset(tmp_path, 4, xflip=False)
    level = lambda v: v / 127.5 - 1
    img = ds[0]
    assert img.shape == (3, 4, 4) and img.dtype == torch.float32
    a = 128 / 255  # alpha compositing: a * src + (1 - a) * 255
    assert torch.allclose(img[:, 0, 0], torch.tensor([level(255.0), level(255 * (1 - a))] + [level(255 * (1 - a))]),
                          atol=1.01 / 127.5)
    assert torch.allclose(img[:, 1, 1], torch.tensor([level(10.0), level(20.0), level(30.0)]))
    assert (img[:, 3, 3] == 1).all()  # transparent -> white
    assert torch.allclose(ds[1], torch.full((3, 4, 4), level(100.0)))
    assert torch.allclose(ds[2], torch.full((3, 4, 4), level(40.0)))
    assert (ds[3] == -1).all() and (ds[4] == 1).all()


def test_dataset_resizes_mismatched_sizes_with_lanczos(tmp_path, capsys):
    rng = np.random.default_rng(0)
    imgs = {"a.png": rng.integers(0, 256, (16, 16, 3), dtype=np.uint8),
            "b.png": rng.integers(0, 256, (10, 10, 3), dtype=np.uint8),
            "c.png": rng.integers(0, 256, (24, 20, 3), dtype=np.uint8)}  # portrait 20 wide, 24 high
    for name, arr in imgs.items():
        _png(tmp_path / name, arr)
    ds = aug.ImageFolderDataset(tmp_path, 16, xflip=False)
    note = capsys.readouterr().err
    assert "2 of 3" in note and "1 centre-cropped" in note
    ref_b = np.asarray(Image.fromarray(imgs["b.png"]).resize((16, 16), Image.LANCZOS), np.float32)
    ref_c = np.asarray(Image.fromarray(imgs["c.png"][2:22]).resize((16, 16), Image.LANCZOS), np.float32)
    np.testing.assert_allclose(ds[1].permute(1, 2, 0).numpy(), ref_b / 127.5 - 1, atol=1e-6)
    np.testing.assert_allclose(ds[2].permute(1, 2, 0).numpy(), ref_c / 127.5 - 1, atol=1e-6)
    np.testing.assert_allclose(ds[0].permute(1, 2, 0).numpy(), imgs["a.png"] / 127.5 - 1, atol=1e-6)


def test_dataset_xflip_doubles_with_mirrored_copies(tmp_path):
    rng = np.random.default_rng(1)
    for i in range(3):
        _png(tmp_path / f"{i}.png", rng.integers(0, 256, (8, 8, 3), dtype=np.uint8))
    ds = aug.ImageFolderDataset(tmp_path, 8, xflip=True)
    lazy = aug.ImageFolderDataset(tmp_path, 8, xflip=True, in_memory=False)
    assert len(ds) == 6
    for i in range(3):
        assert torch.equal(ds[i + 3], torch.from_numpy(ds[i].numpy()[:, :, ::-1].copy()))
        assert torch.equal(lazy[i + 3], ds[i + 3])


def test_step_batch_sampler_follows_the_distributed_sampler_epochs():
    data = torch.utils.data.TensorDataset(torch.arange(10))
    sampler = torch.utils.data.distributed.DistributedSampler(data, num_replicas=2, rank=0, shuffle=True, seed=3)
    expected = []
    for e in range(3):  # a fresh sampler told epoch e gives the reference order
        ref = torch.utils.data.distributed.DistributedSampler(data, num_replicas=2, rank=0, shuffle=True, seed=3)
        ref.set_epoch(e)
        expected.append(list(ref))
    it = iter(aug.StepBatchSampler(sampler, 5, start=0))
    epochs = [next(it) for _ in range(3)]  # 5 indices per process: one batch per epoch
    assert epochs == expected and epochs[0] != epochs[1]
    # resuming at step 2 gives the batch that step 2 had
    assert next(iter(aug.StepBatchSampler(sampler, 5, start=2))) == expected[2]
    with pytest.raises(ValueError, match="no full batch"):
        aug.StepBatchSampler(sampler, 6, start=0)


def test_adaptive_p_all_reduces_its_statistics_under_torch_distributed(tmp_path):
    import torch.distributed as dist
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        ada = aug.AdaptiveP(interval=1, batch_size=4)
        ada.accumulate(torch.tensor([1.0, 1.0, 1.0, -1.0]))  # E[sign] = 0.5 < 0.6
        ada.p = 0.5
        assert ada.step(1) == pytest.approx(0.5 - 4 / 500000) and ada.rt == 0.5
    finally:
        dist.destroy_process_group()
