"""03_stylegan2_ada.py networks, checkpoint readers and `generate`, on CPU with tiny sizes.

References used here are independent of the code under test: key/shape tables written out from
rosinality's layout, per-sample convolution loops, numpy formulas, and foreign checkpoints
(rosinality .pt, NVIDIA PyTorch and TF-era pickles) written by this file in their own layouts.
"""
import argparse
import math
import os
import pickle
import sys
import types
from collections import OrderedDict

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from scipy.signal import convolve2d

from conftest import load_script

m = load_script("03_stylegan2_ada")


# ---------------------------------------------------------------------------------------------
# rosinality layout, 256 px config-f (written out from the published key list)
# ---------------------------------------------------------------------------------------------
def rosinality_g256_table():
    t = {}
    for i in range(1, 9):
        t[f"style.{i}.weight"] = (512, 512)
        t[f"style.{i}.bias"] = (512,)
    t["input.input"] = (1, 512, 4, 4)
    t["conv1.conv.weight"] = (1, 512, 512, 3, 3)
    t["conv1.conv.modulation.weight"] = (512, 512)
    t["conv1.conv.modulation.bias"] = (512,)
    t["conv1.noise.weight"] = (1,)
    t["conv1.activate.bias"] = (512,)
    t["to_rgb1.bias"] = (1, 3, 1, 1)
    t["to_rgb1.conv.weight"] = (1, 3, 512, 1, 1)
    t["to_rgb1.conv.modulation.weight"] = (512, 512)
    t["to_rgb1.conv.modulation.bias"] = (512,)
    io_ = [(512, 512)] * 8 + [(512, 256), (256, 256), (256, 128), (128, 128)]
    for n, (cin, cout) in enumerate(io_):
        t[f"convs.{n}.conv.weight"] = (1, cout, cin, 3, 3)
        t[f"convs.{n}.conv.modulation.weight"] = (cin, 512)
        t[f"convs.{n}.conv.modulation.bias"] = (cin,)
        t[f"convs.{n}.noise.weight"] = (1,)
        t[f"convs.{n}.activate.bias"] = (cout,)
        if n % 2 == 0:
            t[f"convs.{n}.conv.blur.kernel"] = (4, 4)
    for j, c in enumerate([512, 512, 512, 512, 256, 128]):
        t[f"to_rgbs.{j}.bias"] = (1, 3, 1, 1)
        t[f"to_rgbs.{j}.upsample.kernel"] = (4, 4)
        t[f"to_rgbs.{j}.conv.weight"] = (1, 3, c, 1, 1)
        t[f"to_rgbs.{j}.conv.modulation.weight"] = (c, 512)
        t[f"to_rgbs.{j}.conv.modulation.bias"] = (c,)
    for i, r in enumerate([4, 8, 8, 16, 16, 32, 32, 64, 64, 128, 128, 256, 256]):
        t[f"noises.noise_{i}"] = (1, 1, r, r)
    return t


def rosinality_d256_table():
    t = {"convs.0.0.weight": (128, 3, 1, 1), "convs.0.1.bias": (128,)}
    for b, (cin, cout) in enumerate([(128, 256), (256, 512)] + [(512, 512)] * 4, start=1):
        t[f"convs.{b}.conv1.0.weight"] = (cin, cin, 3, 3)
        t[f"convs.{b}.conv1.1.bias"] = (cin,)
        t[f"convs.{b}.conv2.0.kernel"] = (4, 4)
        t[f"convs.{b}.conv2.1.weight"] = (cout, cin, 3, 3)
        t[f"convs.{b}.conv2.2.bias"] = (cout,)
        t[f"convs.{b}.skip.0.kernel"] = (4, 4)
        t[f"convs.{b}.skip.1.weight"] = (cout, cin, 1, 1)
    t.update({"final_conv.0.weight": (512, 513, 3, 3), "final_conv.1.bias": (512,),
              "final_linear.0.weight": (512, 8192), "final_linear.0.bias": (512,),
              "final_linear.1.weight": (1, 512), "final_linear.1.bias": (1,)})
    return t


def test_generator_256_config_f_has_rosinality_keys_and_shapes():
    table = rosinality_g256_table()
    assert len(table) == 135
    g = m.Generator(256, channel_multiplier=2)
    sd = g.state_dict()
    assert {k: tuple(v.shape) for k, v in sd.items()} == table
    assert sum(p.numel() for p in g.parameters()) == 30_034_338


def test_discriminator_256_config_f_has_rosinality_keys_and_shapes():
    table = rosinality_d256_table()
    assert len(table) == 50
    d = m.Discriminator(256, channel_multiplier=2)
    assert {k: tuple(v.shape) for k, v in d.state_dict().items()} == table
    assert sum(p.numel() for p in d.parameters()) == 28_864_129


# ---------------------------------------------------------------------------------------------
# building blocks against independent formulas
# ---------------------------------------------------------------------------------------------
def modconv_ref(x, style, weight, mod_weight, mod_bias, demodulate, upsample):
    """Per-sample loop: modulate, demodulate (Eq. 1-3), conv; up: transposed conv + scipy FIR.

    weight [1, out, in, k, k] and the modulation affine as stored (equalized-lr scales applied here).
    """
    _, cout, cin, k, _ = weight.shape
    w = weight[0].detach().double() / math.sqrt(cin * k * k)
    s = (style.double() @ (mod_weight.double() / math.sqrt(mod_weight.shape[1])).t()
         + mod_bias.double()).detach()                                             # [B, in]
    outs = []
    for b in range(x.shape[0]):
        wb = w * s[b].view(1, -1, 1, 1)
        if demodulate:
            wb = wb / torch.sqrt((wb ** 2).sum([1, 2, 3], keepdim=True) + 1e-8)
        xb = x[b:b + 1].double().detach()
        if upsample:
            y = F.conv_transpose2d(xb, wb.transpose(0, 1), stride=2)[0].numpy()     # [out, 2H+1, 2W+1]
            kern = np.outer([1, 3, 3, 1], [1, 3, 3, 1]) / 64 * 4
            y = np.stack([convolve2d(np.pad(c, 1), kern, mode="valid") for c in y])  # [out, 2H, 2W]
            outs.append(torch.from_numpy(y)[None])
        else:
            outs.append(F.conv2d(xb, wb, padding=k // 2))
    return torch.cat(outs)


def modconv_reference(x, style, layer, upsample):
    return modconv_ref(x, style, layer.weight, layer.modulation.weight, layer.modulation.bias,
                       layer.demodulate, upsample).float()


def upsample_ref(img):
    """FIR 2x upsampling of the ToRGB skip: zero insertion, pad (2, 1), [1,3,3,1] kernel x 4."""
    kern = np.outer([1, 3, 3, 1], [1, 3, 3, 1]) / 64 * 4
    b, c, h, w = img.shape
    up = np.zeros((b, c, 2 * h, 2 * w))
    up[:, :, ::2, ::2] = img.numpy()
    up = np.pad(up, ((0, 0), (0, 0), (2, 1), (2, 1)))
    return torch.from_numpy(np.stack([[convolve2d(ch, kern, mode="valid") for ch in im] for im in up]))


def lrelu(x):
    return torch.where(x > 0, x, 0.2 * x) * math.sqrt(2)


def generator_ref(sd, z, n_mlp, size):
    """rosinality Generator forward written from rosinality/stylegan2-pytorch model.py on a state dict
    (one w, stored noise)."""
    x = z.double() / torch.sqrt((z.double() ** 2).mean(1, keepdim=True) + 1e-8)    # PixelNorm
    for i in range(1, n_mlp + 1):
        wt, bias = sd[f"style.{i}.weight"].double(), sd[f"style.{i}.bias"].double()
        x = lrelu(x @ (wt * 0.01 / math.sqrt(wt.shape[1])).t() + bias * 0.01)
    return generator_ref_w(sd, x, size)


def generator_ref_w(sd, w, size):
    """Synthesis part of generator_ref from one w [B, style_dim] used for every layer."""
    w = w.double()

    def styled(pre, h, noise, up):
        y = modconv_ref(h, w, sd[f"{pre}.conv.weight"], sd[f"{pre}.conv.modulation.weight"],
                        sd[f"{pre}.conv.modulation.bias"], True, up)
        y = y + sd[f"{pre}.noise.weight"].double() * noise.double()
        return lrelu(y + sd[f"{pre}.activate.bias"].double().view(1, -1, 1, 1))

    def torgb(pre, h, skip):
        y = modconv_ref(h, w, sd[f"{pre}.conv.weight"], sd[f"{pre}.conv.modulation.weight"],
                        sd[f"{pre}.conv.modulation.bias"], False, False) + sd[f"{pre}.bias"].double()
        return y if skip is None else y + upsample_ref(skip)

    h = sd["input.input"].double().repeat(w.shape[0], 1, 1, 1)
    h = styled("conv1", h, sd["noises.noise_0"], False)
    img = torgb("to_rgb1", h, None)
    for j in range(int(math.log2(size)) - 2):
        h = styled(f"convs.{2 * j}", h, sd[f"noises.noise_{2 * j + 1}"], True)
        h = styled(f"convs.{2 * j + 1}", h, sd[f"noises.noise_{2 * j + 2}"], False)
        img = torgb(f"to_rgbs.{j}", h, img)
    return img


@pytest.mark.parametrize("upsample", [False, True])
@pytest.mark.parametrize("demodulate", [True, False])
def test_modulated_conv_fused_and_nonfused_equal_per_sample_loop(upsample, demodulate):
    layer = m.ModulatedConv2d(6, 5, 3, style_dim=7, demodulate=demodulate, upsample=upsample)
    x, style = torch.randn(3, 6, 8, 8), torch.randn(3, 7)
    ref = modconv_reference(x, style, layer, upsample)
    with torch.no_grad():
        layer.fused = True
        fused = layer(x, style)
        layer.fused = False
        nonfused = layer(x, style)
    assert fused.shape == ref.shape == (3, 5, 16 if upsample else 8, 16 if upsample else 8)
    torch.testing.assert_close(fused, ref, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(nonfused, ref, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("demodulate", [True, False])
def test_modulated_1x1_conv_batched_matmul_equals_per_sample_loop(demodulate):
    layer = m.ModulatedConv2d(6, 3, 1, style_dim=7, demodulate=demodulate)
    x, style = torch.randn(3, 6, 8, 8).contiguous(memory_format=torch.channels_last), torch.randn(3, 7)
    with torch.no_grad():
        out = layer(x, style)
    torch.testing.assert_close(out, modconv_reference(x, style, layer, False), atol=1e-4, rtol=1e-4)


def test_modulated_conv_paths_have_equal_gradients():
    layer = m.ModulatedConv2d(4, 6, 3, style_dim=5, upsample=True)
    x, style = torch.randn(2, 4, 6, 6, requires_grad=True), torch.randn(2, 5)
    grads = []
    for fused in (True, False):
        layer.zero_grad()
        x.grad = None
        layer.fused = fused
        (layer(x, style) ** 2).sum().backward()
        grads.append((x.grad.clone(), layer.weight.grad.clone(), layer.modulation.weight.grad.clone()))
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("upsample", [False, True])
def test_styled_conv_paper_form_and_fast_path_are_equal(upsample, monkeypatch):
    """StyledConv: the paper's conv -> NoiseInjection -> bias + lrelu (fused=True) equals the fast
    path that adds the noise inside the demodulation pass, in value and gradient; only the paper
    form calls NoiseInjection.forward. Reference: the per-sample loop plus weight * noise by hand."""
    layer = m.StyledConv(4, 6, 3, style_dim=5, upsample=upsample)
    with torch.no_grad():
        layer.noise.weight.fill_(0.7)
        layer.activate.bias.normal_()
    r = 12 if upsample else 6
    x, style, noise = torch.randn(2, 4, 6, 6, requires_grad=True), torch.randn(2, 5), torch.randn(2, 1, r, r)
    calls = []
    original = m.NoiseInjection.forward
    monkeypatch.setattr(m.NoiseInjection, "forward", lambda self, *a: calls.append(1) or original(self, *a))
    outs, grads = [], []
    for fused in (True, False):
        layer.conv.fused = fused
        x.grad = None
        layer.zero_grad()
        out = layer(x, style, noise=noise)
        out.square().sum().backward()
        outs.append(out.detach())
        grads.append((x.grad.clone(), layer.conv.weight.grad.clone(), layer.noise.weight.grad.clone()))
        assert len(calls) == 1  # called by the paper form (first pass) and not again by the fast path
    conv = modconv_reference(x, style, layer.conv, upsample).double()
    want = lrelu(conv + 0.7 * noise.double() + layer.activate.bias.detach().double().view(1, -1, 1, 1))
    for out in outs:
        torch.testing.assert_close(out.double(), want, atol=1e-4, rtol=1e-4)
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)


def test_minibatch_stddev_matches_numpy():
    d = m.Discriminator(16, channel_max=8)
    x = torch.randn(8, 5, 4, 4)
    out = d.minibatch_stddev(x).numpy()
    xn = x.numpy().astype(np.float64).reshape(4, 2, 5, 4, 4)    # group 4: sample i in slot i % 2
    stat = np.sqrt(xn.var(0) + 1e-8).mean(axis=(1, 2, 3))       # [2]
    expect = np.tile(stat, 4)                                    # sample i gets stat[i % 2]
    assert out.shape == (8, 6, 4, 4)
    np.testing.assert_allclose(out[:, 5], np.broadcast_to(expect[:, None, None], (8, 4, 4)), rtol=1e-5)
    np.testing.assert_allclose(out[:, :5], x.numpy())


@pytest.mark.parametrize("fused", [True, False])
def test_generator_matches_reference_forward(fused):
    g = tiny_generator(size=16)
    m.set_modconv_path(g, fused)
    z = torch.randn(2, 16)
    with torch.no_grad():
        img, _ = g([z], randomize_noise=False)
    ref = generator_ref(g.state_dict(), z, n_mlp=2, size=16)
    assert img.shape == (2, 3, 16, 16)
    torch.testing.assert_close(img.double(), ref, atol=2e-4, rtol=1e-4)


def discriminator_ref(sd, img, size):
    """rosinality Discriminator forward written from rosinality/stylegan2-pytorch model.py
    (scipy blur, numpy mbstd)."""
    kern = np.outer([1, 3, 3, 1], [1, 3, 3, 1]) / 64

    def conv(x, w, b=None, stride=1, pad=0):
        w = w.double()
        y = F.conv2d(x, w / math.sqrt(w[0].numel()), stride=stride, padding=pad)
        return y if b is None else y + b.double().view(1, -1, 1, 1)

    def blur(x, p):
        xp = np.pad(x.numpy(), ((0, 0), (0, 0), (p, p), (p, p)))
        return torch.from_numpy(np.stack([[convolve2d(c, kern, mode="valid") for c in im] for im in xp]))

    x = lrelu(conv(img.double(), sd["convs.0.0.weight"], sd["convs.0.1.bias"]))
    for k in range(1, int(math.log2(size)) - 1):
        y = lrelu(conv(x, sd[f"convs.{k}.conv1.0.weight"], sd[f"convs.{k}.conv1.1.bias"], pad=1))
        y = lrelu(conv(blur(y, 2), sd[f"convs.{k}.conv2.1.weight"], sd[f"convs.{k}.conv2.2.bias"], stride=2))
        x = (y + conv(blur(x, 1), sd[f"convs.{k}.skip.1.weight"], stride=2)) / math.sqrt(2)
    b, c = x.shape[:2]
    xn = x.numpy().reshape(4, b // 4, c, 4, 4)
    stat = np.sqrt(xn.var(0) + 1e-8).mean(axis=(1, 2, 3))
    x = torch.cat([x, torch.from_numpy(np.tile(stat, 4)).view(b, 1, 1, 1).expand(b, 1, 4, 4)], 1)
    x = lrelu(conv(x, sd["final_conv.0.weight"], sd["final_conv.1.bias"], pad=1)).flatten(1)
    w0, w1 = sd["final_linear.0.weight"].double(), sd["final_linear.1.weight"].double()
    x = lrelu(x @ (w0 / math.sqrt(w0.shape[1])).t() + sd["final_linear.0.bias"].double())
    return x @ (w1 / math.sqrt(w1.shape[1])).t() + sd["final_linear.1.bias"].double()


def test_discriminator_matches_reference_forward():
    torch.manual_seed(2)
    d = m.Discriminator(16, channel_max=8)
    with torch.no_grad():
        for name, p in d.named_parameters():
            if name.endswith("bias"):
                p.normal_(0, 0.5)
    img = torch.randn(8, 3, 16, 16)
    with torch.no_grad():
        out = d(img)
    assert out.shape == (8, 1)
    torch.testing.assert_close(out.double(), discriminator_ref(d.state_dict(), img, 16), atol=1e-4, rtol=1e-4)


def test_generator_truncation_and_mixing_follow_the_formulas():
    g = m.Generator(16, style_dim=8, n_mlp=2, channel_max=8)
    z1, z2 = torch.randn(2, 8), torch.randn(2, 8)
    w1, w2, avg = g.style(z1), g.style(z2), torch.randn(1, 8)
    _, lat = g([z1, z2], inject_index=3, return_latents=True, truncation=0.5, truncation_latent=avg)
    assert lat.shape == (2, g.n_latent, 8) and g.n_latent == 6
    torch.testing.assert_close(lat[:, 2], avg + 0.5 * (w1 - avg))
    torch.testing.assert_close(lat[:, 3], avg + 0.5 * (w2 - avg))


# ---------------------------------------------------------------------------------------------
# rosinality .pt and our checkpoints
# ---------------------------------------------------------------------------------------------
def tiny_generator(size=32, seed=1):
    torch.manual_seed(seed)
    g = m.Generator(size, style_dim=16, n_mlp=2, channel_max=8)
    with torch.no_grad():  # noise strengths and biases start at 0: make them matter
        for name, p in g.named_parameters():
            if name.endswith("noise.weight") or name.endswith("bias"):
                p.normal_(0, 0.5)
    return g


def test_rosinality_pt_loads_strictly_and_gives_the_same_images(tmp_path):
    g = tiny_generator()
    d = m.Discriminator(32, channel_max=8)
    args = argparse.Namespace(size=32, channel_multiplier=2, channel_max=8, n_mlp=2, latent=16, iter=10)
    avg = torch.randn(16)
    torch.save({"g": g.state_dict(), "d": d.state_dict(), "g_ema": g.state_dict(), "args": args,
                "latent_avg": avg, "g_optim": {}, "d_optim": {}}, tmp_path / "r.pt")
    ckpt = m.load_checkpoint(tmp_path / "r.pt")
    assert ckpt["args"]["size"] == 32 and isinstance(ckpt["args"], dict)
    torch.save({"g_ema": g.state_dict(), "args": args}, tmp_path / "old.pt", _use_new_zipfile_serialization=False)
    assert m.load_checkpoint(tmp_path / "old.pt")["args"]["channel_max"] == 8  # pre-1.6 file format
    g2, latent_avg = m.load_generator(tmp_path / "r.pt")
    torch.testing.assert_close(latent_avg, avg[None])
    z = torch.randn(2, 16)
    with torch.no_grad():
        a, _ = g([z], randomize_noise=False)
        b, _ = g2([z], randomize_noise=False)
    assert torch.equal(a, b)


def test_build_generator_infers_channel_multiplier_from_shapes():
    g = m.Generator(64, style_dim=8, n_mlp=3, channel_multiplier=1, channel_max=512)
    g2 = m.build_generator_from_state(g.state_dict())
    assert (g2.size, g2.style_dim, g2.n_mlp, g2.channel_multiplier) == (64, 8, 3, 1)
    assert g2.convs[-1].conv.weight.shape[1] == 256


def test_checkpoint_errors_are_one_line(tmp_path):
    with pytest.raises(m.CheckpointError, match="no such checkpoint"):
        m.load_checkpoint(tmp_path / "missing.pt")
    g = tiny_generator()
    m.save_checkpoint(tmp_path / "ok.pt", {"g_ema": g.state_dict(), "args": {"size": 32}})
    raw = (tmp_path / "ok.pt").read_bytes()
    (tmp_path / "cut.pt").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(m.CheckpointError, match="truncated or corrupt") as e:
        m.load_checkpoint(tmp_path / "cut.pt")
    assert "\n" not in str(e.value) and "cut.pt" in str(e.value)
    # another architecture: a 32 px generator into a 16 px one
    with pytest.raises(m.CheckpointError, match=r"32 px.*16 px.*unexpected keys: convs\.4\.") as e:
        m.load_state_checked(m.Generator(16, style_dim=16, n_mlp=2, channel_max=8), g.state_dict(), "ok.pt")
    assert "\n" not in str(e.value)
    with pytest.raises(m.CheckpointError, match=r"shapes differ.*input\.input \[1, 8, 4, 4\] vs \[1, 4, 4, 4\]"):
        m.load_state_checked(m.Generator(32, style_dim=16, n_mlp=2, channel_max=4), g.state_dict(), "ok.pt")


def test_checkpoint_with_foreign_classes_is_refused(tmp_path):
    torch.save({"g_ema": {}, "args": types.SimpleNamespace(size=32)}, tmp_path / "odd.pt")
    with pytest.raises(m.CheckpointError, match=r"odd\.pt: refused by the weights-only loader"):
        m.load_checkpoint(tmp_path / "odd.pt")
    torch.save({"g_ema": {"style.1.weight": torch.zeros(4, 4)}}, tmp_path / "part.pt")
    with pytest.raises(m.CheckpointError, match=r"part\.pt \['g_ema'\]: .*not a StyleGAN2 generator"):
        m.load_generator(tmp_path / "part.pt")


@pytest.mark.parametrize("mode", ["none", "const"])
def test_generate_truncation_and_noise_modes(tmp_path, mode):
    g = tiny_generator(size=16)
    avg = torch.randn(1, 16)
    m.save_checkpoint(tmp_path / "g.pt", {"g_ema": g.state_dict(), "latent_avg": avg[0]})
    m.main(["generate", "--ckpt", str(tmp_path / "g.pt"), "--seeds", "7", "--truncation", "0.5",
            "--noise-mode", mode, "--out", str(tmp_path), "--device", "cpu"])
    z = torch.from_numpy(np.random.RandomState(7).randn(1, 16)).float()
    sd = g.state_dict()
    if mode == "none":
        sd = {k: (torch.zeros_like(v) if k.startswith("noises.") else v) for k, v in sd.items()}
    w = avg + 0.5 * (g.style(z) - avg)                                   # truncation in W
    ref = generator_ref_w(sd, w.detach(), size=16)
    expect = np.clip(np.floor((ref[0].permute(1, 2, 0).numpy() + 1) * 127.5 + 0.5), 0, 255)
    got = np.asarray(Image.open(tmp_path / "seed0007.png")).astype(int)
    assert np.abs(got - expect).max() <= 1 and (got == expect).mean() > 0.99


def test_save_checkpoint_is_atomic(tmp_path):
    path = tmp_path / "c.pt"
    m.save_checkpoint(path, {"step": 1})
    before = path.read_bytes()

    class Unpicklable:
        def __reduce__(self):
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        m.save_checkpoint(path, {"step": 2, "bad": Unpicklable()})
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["c.pt"]
    assert m.load_checkpoint(path)["step"] == 1


# ---------------------------------------------------------------------------------------------
# NVIDIA pickles, written here in NVIDIA's formats
# ---------------------------------------------------------------------------------------------
def fake_module(monkeypatch, dotted, **attrs):
    """Register importable modules `dotted` (and parents) so pickle can name their globals."""
    parts = dotted.split(".")
    for i in range(1, len(parts) + 1):
        name = ".".join(parts[:i])
        if name not in sys.modules:
            monkeypatch.setitem(sys.modules, name, types.ModuleType(name))
    mod = sys.modules[dotted]
    for k, v in attrs.items():
        if callable(v) and not isinstance(v, type):
            v.__module__, v.__qualname__, v.__name__ = dotted, k, k
        elif isinstance(v, type):
            v.__module__, v.__qualname__ = dotted, k
        setattr(mod, k, v)
    return mod


class NVPersistent:
    """Pickles as NVlabs persistence does: _reconstruct_persistent_obj(meta) with meta['state']."""

    reconstruct = None  # set per test to the registered fake function

    def __init__(self, class_name, state):
        self.class_name, self.state = class_name, state

    def __reduce__(self):
        meta = dict(type="class", version=6, class_name=self.class_name, state=self.state,
                    module_src="import os\nos.system('echo pwned > PWNED')\n")
        return (NVPersistent.reconstruct, (meta,))


NV_BUFFERS = ("resample_filter", "noise_const", "w_avg")


def nv_tree(flat, class_name="Generator", init_kwargs=None):
    """{dotted name: tensor} -> nested NVPersistent module states (params vs buffers by name)."""
    def node():
        # NVlabs' persistence keeps the constructor arguments as _init_args / _init_kwargs
        return {"training": False, "_parameters": OrderedDict(), "_buffers": OrderedDict(),
                "_non_persistent_buffers_set": set(), "_modules": OrderedDict(), "_init_args": (),
                "_init_kwargs": {}}
    root = node()
    root["_init_kwargs"] = init_kwargs or {}
    objects = {"": NVPersistent(class_name, root)}
    for name, t in flat.items():
        parts = name.split(".")
        state = root
        for i, part in enumerate(parts[:-1]):
            key = ".".join(parts[: i + 1])
            if key not in objects:
                objects[key] = NVPersistent(part, node())
                state["_modules"][part] = objects[key]
            state = objects[key].state
        if parts[-1] in NV_BUFFERS:
            state["_buffers"][parts[-1]] = t
        else:
            state["_parameters"][parts[-1]] = torch.nn.Parameter(t, requires_grad=False)
    return objects[""]


def nv_generator_params(size, c, w_dim, n_mlp):
    """Random NVlabs Generator parameters (training/networks.py names, channel c everywhere)."""
    filt = torch.tensor([1.0, 3, 3, 1]).outer(torch.tensor([1.0, 3, 3, 1])) / 64
    p = OrderedDict()

    def syn_layer(pre, cin, cout, r):
        p[f"{pre}.weight"] = torch.randn(cout, cin, 3, 3)
        p[f"{pre}.noise_strength"] = torch.randn(())
        p[f"{pre}.bias"] = torch.randn(cout) * 0.3
        p[f"{pre}.resample_filter"] = filt.clone()
        p[f"{pre}.noise_const"] = torch.randn(r, r)
        p[f"{pre}.affine.weight"] = torch.randn(cin, w_dim)
        p[f"{pre}.affine.bias"] = torch.ones(cin) + 0.1 * torch.randn(cin)

    def torgb(pre, cin):
        p[f"{pre}.weight"] = torch.randn(3, cin, 1, 1)
        p[f"{pre}.bias"] = torch.randn(3) * 0.3
        p[f"{pre}.affine.weight"] = torch.randn(cin, w_dim)
        p[f"{pre}.affine.bias"] = torch.ones(cin)

    p["synthesis.b4.const"] = torch.randn(c, 4, 4)
    p["synthesis.b4.resample_filter"] = filt.clone()
    syn_layer("synthesis.b4.conv1", c, c, 4)
    torgb("synthesis.b4.torgb", c)
    r = 8
    while r <= size:
        p[f"synthesis.b{r}.resample_filter"] = filt.clone()
        syn_layer(f"synthesis.b{r}.conv0", c, c, r)
        syn_layer(f"synthesis.b{r}.conv1", c, c, r)
        torgb(f"synthesis.b{r}.torgb", c)
        r *= 2
    for i in range(n_mlp):
        p[f"mapping.fc{i}.weight"] = torch.randn(w_dim, w_dim) * 100  # randn / lr_multiplier 0.01
        p[f"mapping.fc{i}.bias"] = torch.randn(w_dim) * 0.1
    p["mapping.w_avg"] = torch.randn(w_dim)
    return p


def nv_discriminator_params(size, c):
    filt = torch.tensor([1.0, 3, 3, 1]).outer(torch.tensor([1.0, 3, 3, 1])) / 64
    p = OrderedDict()
    r = size
    p[f"b{r}.fromrgb.weight"] = torch.randn(c, 3, 1, 1)
    p[f"b{r}.fromrgb.bias"] = torch.randn(c)
    while r > 4:
        p[f"b{r}.resample_filter"] = filt.clone()
        p[f"b{r}.conv0.weight"] = torch.randn(c, c, 3, 3)
        p[f"b{r}.conv0.bias"] = torch.randn(c)
        p[f"b{r}.conv1.weight"] = torch.randn(c, c, 3, 3)
        p[f"b{r}.conv1.bias"] = torch.randn(c)
        p[f"b{r}.skip.weight"] = torch.randn(c, c, 1, 1)
        r //= 2
    p["b4.conv.weight"] = torch.randn(c, c + 1, 3, 3)
    p["b4.conv.bias"] = torch.randn(c)
    p["b4.fc.weight"] = torch.randn(c, c * 16)
    p["b4.fc.bias"] = torch.randn(c)
    p["b4.out.weight"] = torch.randn(1, c)
    p["b4.out.bias"] = torch.randn(1)
    return p


def nv_to_rosinality_g(p, size):
    """The documented NVlabs -> rosinality generator map, written independently of the code."""
    out = {}
    i = 0
    while f"mapping.fc{i}.weight" in p:
        out[f"style.{i + 1}.weight"] = p[f"mapping.fc{i}.weight"]
        out[f"style.{i + 1}.bias"] = p[f"mapping.fc{i}.bias"]
        i += 1
    out["input.input"] = p["synthesis.b4.const"][None]
    layers = [("synthesis.b4.conv1", "conv1", 0)]
    rgbs = [("synthesis.b4.torgb", "to_rgb1")]
    for k in range(int(math.log2(size)) - 2):
        r = 2 ** (k + 3)
        layers += [(f"synthesis.b{r}.conv0", f"convs.{2 * k}", 2 * k + 1),
                   (f"synthesis.b{r}.conv1", f"convs.{2 * k + 1}", 2 * k + 2)]
        rgbs.append((f"synthesis.b{r}.torgb", f"to_rgbs.{k}"))
    for src, dst, n in layers:
        out[f"{dst}.conv.weight"] = p[f"{src}.weight"][None]
        out[f"{dst}.conv.modulation.weight"] = p[f"{src}.affine.weight"]
        out[f"{dst}.conv.modulation.bias"] = p[f"{src}.affine.bias"]
        out[f"{dst}.noise.weight"] = p[f"{src}.noise_strength"].view(1)
        out[f"{dst}.activate.bias"] = p[f"{src}.bias"]
        out[f"noises.noise_{n}"] = p[f"{src}.noise_const"][None, None]
    for src, dst in rgbs:
        out[f"{dst}.conv.weight"] = p[f"{src}.weight"][None]
        out[f"{dst}.conv.modulation.weight"] = p[f"{src}.affine.weight"]
        out[f"{dst}.conv.modulation.bias"] = p[f"{src}.affine.bias"]
        out[f"{dst}.bias"] = p[f"{src}.bias"].view(1, 3, 1, 1)
    return out


def write_nvidia_pkl(path, monkeypatch, g_params, d_params, mbstd_group=2):
    def _reconstruct_persistent_obj(meta):
        raise AssertionError("the loader must never call NVIDIA's reconstructor")

    fake_module(monkeypatch, "torch_utils.persistence", _reconstruct_persistent_obj=_reconstruct_persistent_obj)
    monkeypatch.setattr(NVPersistent, "reconstruct", _reconstruct_persistent_obj, raising=False)
    kw = {"z_dim": 16, "w_dim": 16, "img_resolution": 32}
    data = {"G": nv_tree(g_params, "Generator", kw), "D": nv_tree(d_params, "Discriminator", {"epilogue_kwargs": {"mbstd_group_size": mbstd_group}}),
            "G_ema": nv_tree(g_params, "Generator", kw), "augment_pipe": None,
            "training_set_kwargs": {"resolution": 32}}
    with open(path, "wb") as f:
        pickle.dump(data, f)
    for name in ("torch_utils.persistence", "torch_utils"):  # the loader must not need them
        monkeypatch.delitem(sys.modules, name)


def test_nvidia_pytorch_pkl_loads_and_matches_documented_map(tmp_path, monkeypatch):
    torch.manual_seed(3)
    size, c, w_dim = 32, 8, 16
    gp, dp = nv_generator_params(size, c, w_dim, 2), nv_discriminator_params(size, c)
    path = tmp_path / "network-snapshot-000000.pkl"
    write_nvidia_pkl(path, monkeypatch, gp, dp)
    monkeypatch.chdir(tmp_path)

    g, latent_avg = m.load_generator(path)
    torch.testing.assert_close(latent_avg, gp["mapping.w_avg"][None])
    ref = m.Generator(size, style_dim=w_dim, n_mlp=2, channel_max=c)
    missing, unexpected = ref.load_state_dict(nv_to_rosinality_g(gp, size), strict=False)
    assert unexpected == [] and all(k.endswith("kernel") for k in missing)
    z = torch.from_numpy(np.random.RandomState(0).randn(2, w_dim)).float()
    with torch.no_grad():
        a, _ = g([z], randomize_noise=False, truncation=0.7, truncation_latent=latent_avg)
        b, _ = ref([z], randomize_noise=False, truncation=0.7, truncation_latent=gp["mapping.w_avg"][None])
    torch.testing.assert_close(a, b)

    ckpt = m.load_checkpoint(path)
    assert ckpt["args"]["mbstd_group"] == 2 and ckpt["args"]["size"] == size
    d = m.Discriminator(size, channel_max=c)
    m.load_state_checked(d, ckpt["d"], "d")
    torch.testing.assert_close(d.final_linear[0].weight, dp["b4.fc.weight"])
    torch.testing.assert_close(d.convs[2].skip[1].weight, dp["b16.skip.weight"])
    assert not (tmp_path / "PWNED").exists()


def test_malicious_pickle_is_refused_before_running(tmp_path):
    marker = tmp_path / "ran"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    path = tmp_path / "evil.pkl"
    with open(path, "wb") as f:
        pickle.dump({"G_ema": Evil()}, f)
    with pytest.raises(m.CheckpointError, match=r"evil\.pkl: unsafe.*refusing global (posix|os|nt)\.system"):
        m.load_checkpoint(path)
    assert not marker.exists()
    path.write_bytes(b"\x80\x04cbuiltins\neval\n(S'1'\ntR.")  # builtins.eval('1')
    with pytest.raises(m.CheckpointError, match="refusing global builtins.eval"):
        m.load_checkpoint(path)


def rosinality_to_tf_g(sd, size):
    """Our (rosinality) generator weights -> TF StyleGAN2 Gs variables
    (inverse of NVlabs/stylegan2-ada-pytorch legacy.py)."""
    a = lambda t: t.detach().numpy().astype(np.float32)  # noqa: E731
    v = {"dlatent_avg": np.random.RandomState(1).randn(16).astype(np.float32)}
    i = 1
    while f"style.{i}.weight" in sd:
        v[f"mapping/Dense{i - 1}/weight"] = a(sd[f"style.{i}.weight"]).T
        v[f"mapping/Dense{i - 1}/bias"] = a(sd[f"style.{i}.bias"])
        i += 1
    v["synthesis/4x4/Const/const"] = a(sd["input.input"])

    def mc(dst, src, flip=False, rgb=False):
        w = a(sd[f"{src}.conv.weight"])[0].transpose(2, 3, 1, 0)  # [kh, kw, in, out]
        v[f"{dst}/weight"] = w[::-1, ::-1].copy() if flip else w
        v[f"{dst}/mod_weight"] = a(sd[f"{src}.conv.modulation.weight"]).T
        v[f"{dst}/mod_bias"] = a(sd[f"{src}.conv.modulation.bias"]) - 1
        if rgb:
            v[f"{dst}/bias"] = a(sd[f"{src}.bias"]).reshape(3)
        else:
            v[f"{dst}/noise_strength"] = a(sd[f"{src}.noise.weight"]).reshape(())
            v[f"{dst}/bias"] = a(sd[f"{src}.activate.bias"])

    mc("synthesis/4x4/Conv", "conv1")
    mc("synthesis/4x4/ToRGB", "to_rgb1", rgb=True)
    for k in range(int(math.log2(size)) - 2):
        r = 2 ** (k + 3)
        mc(f"synthesis/{r}x{r}/Conv0_up", f"convs.{2 * k}", flip=True)
        mc(f"synthesis/{r}x{r}/Conv1", f"convs.{2 * k + 1}")
        mc(f"synthesis/{r}x{r}/ToRGB", f"to_rgbs.{k}", rgb=True)
    n = 0
    while f"noises.noise_{n}" in sd:
        v[f"synthesis/noise{n}"] = a(sd[f"noises.noise_{n}"])
        n += 1
    return v


def rosinality_to_tf_d(sd, size):
    a = lambda t: t.detach().numpy().astype(np.float32)  # noqa: E731
    cw = lambda t: a(t).transpose(2, 3, 1, 0)               # noqa: E731
    v = {f"{size}x{size}/FromRGB/weight": cw(sd["convs.0.0.weight"]),
         f"{size}x{size}/FromRGB/bias": a(sd["convs.0.1.bias"])}
    for k in range(1, int(math.log2(size)) - 1):
        r = size // 2 ** (k - 1)
        v[f"{r}x{r}/Conv0/weight"] = cw(sd[f"convs.{k}.conv1.0.weight"])
        v[f"{r}x{r}/Conv0/bias"] = a(sd[f"convs.{k}.conv1.1.bias"])
        v[f"{r}x{r}/Conv1_down/weight"] = cw(sd[f"convs.{k}.conv2.1.weight"])
        v[f"{r}x{r}/Conv1_down/bias"] = a(sd[f"convs.{k}.conv2.2.bias"])
        v[f"{r}x{r}/Skip/weight"] = cw(sd[f"convs.{k}.skip.1.weight"])
    v["4x4/Conv/weight"] = cw(sd["final_conv.0.weight"])
    v["4x4/Conv/bias"] = a(sd["final_conv.1.bias"])
    v["4x4/Dense0/weight"] = a(sd["final_linear.0.weight"]).T
    v["4x4/Dense0/bias"] = a(sd["final_linear.0.bias"])
    v["Output/weight"] = a(sd["final_linear.1.weight"]).T
    v["Output/bias"] = a(sd["final_linear.1.bias"])
    return v


def test_tf_era_pickle_with_numpy_arrays_loads(tmp_path, monkeypatch):
    class Network:
        def __init__(self, state):
            self._state = state

        def __getstate__(self):
            return self._state

    fake_module(monkeypatch, "dnnlib.tflib.network", Network=Network)

    def net(name, variables, components=None, **static_kwargs):
        return Network({"version": 4, "name": name, "static_kwargs": {"resolution": 32, **static_kwargs},
                        "components": components or {}, "build_module_src": "import os\nos.system('x')",
                        "build_func_name": "G_main", "variables": list(variables.items())})

    g = tiny_generator()
    d = m.Discriminator(32, channel_max=8)
    tf = rosinality_to_tf_g(g.state_dict(), 32)

    def split(prefix):
        return {k[len(prefix):]: v for k, v in tf.items() if k.startswith(prefix)}

    gs = net("G", {"dlatent_avg": tf["dlatent_avg"]},
             {"mapping": net("G_mapping", split("mapping/")), "synthesis": net("G_synthesis", split("synthesis/"))})
    dn = net("D", rosinality_to_tf_d(d.state_dict(), 32), mbstd_group_size=8)
    path = tmp_path / "stylegan2-tiny-config-f.pkl"
    with open(path, "wb") as f:
        pickle.dump((gs, dn, gs), f, protocol=4)  # TF-era files: protocol <= 4, _reconstruct arrays
    monkeypatch.delitem(sys.modules, "dnnlib.tflib.network")

    g2, latent_avg = m.load_generator(path)
    np.testing.assert_allclose(latent_avg.numpy()[0], tf["dlatent_avg"])
    own, back = g.state_dict(), g2.state_dict()
    for k in own:
        torch.testing.assert_close(back[k], own[k], msg=k)
    d2 = m.Discriminator(32, channel_max=8)
    ckpt = m.load_checkpoint(path)
    assert ckpt["args"]["mbstd_group"] == 8  # D_stylegan2's static kwarg, used when fine-tuning
    m.load_state_checked(d2, ckpt["d"], "d")
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(d2(x), d(x))


# ---------------------------------------------------------------------------------------------
# generate
# ---------------------------------------------------------------------------------------------
def test_generate_writes_seed_pngs_with_nvidia_conventions(tmp_path):
    g = tiny_generator(size=16)
    m.save_checkpoint(tmp_path / "g.pt", {"g_ema": g.state_dict(), "args": {"size": 16, "channel_max": 8}})
    out = tmp_path / "out"
    m.main(["generate", "--ckpt", str(tmp_path / "g.pt"), "--seeds", "3-4", "--out", str(out),
            "--device", "cpu"])
    assert sorted(os.listdir(out)) == ["seed0003.png", "seed0004.png"]
    z = torch.from_numpy(np.random.RandomState(4).randn(1, 16)).float()
    with torch.no_grad():
        x, _ = g([z], randomize_noise=False)
    expect = np.clip(np.floor((x[0].permute(1, 2, 0).double().numpy() + 1) * 127.5 + 0.5), 0, 255)
    got = np.asarray(Image.open(out / "seed0004.png"))
    assert got.shape == (16, 16, 3) and got.dtype == np.uint8
    assert np.abs(got.astype(int) - expect.astype(int)).max() <= 1  # float rounding at .5 ties
    assert (got.astype(int) == expect.astype(int)).mean() > 0.99


def test_generate_reports_bad_checkpoint_in_one_line(tmp_path):
    (tmp_path / "bad.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(SystemExit, match=r"bad\.pt: not a PyTorch checkpoint"):
        m.main(["generate", "--ckpt", str(tmp_path / "bad.pt"), "--out", str(tmp_path / "o")])
