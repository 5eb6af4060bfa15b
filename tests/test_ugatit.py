"""Tests for 05_ugatit.py (U-GAT-IT): layout, layers against independent formulas, training, CLI."""
import contextlib
import copy
import json
import os
import signal

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image

from conftest import ROOT, load_script, requires_cuda

u = load_script("05_ugatit")


# ---- the reference key table (znxlwm/UGATIT-pytorch networks.py, with ch in place of 64) -------
def reference_generator_table(ch, n_res, img, light):
    """{key: shape} of znxlwm/UGATIT-pytorch's ResnetGenerator(ngf=ch, n_blocks=n_res)."""
    C = 4 * ch
    t = {"DownBlock.1.weight": (ch, 3, 7, 7), "DownBlock.5.weight": (2 * ch, ch, 3, 3),
         "DownBlock.9.weight": (C, 2 * ch, 3, 3)}
    for i in range(n_res):
        t[f"DownBlock.{12 + i}.conv_block.1.weight"] = (C, C, 3, 3)
        t[f"DownBlock.{12 + i}.conv_block.5.weight"] = (C, C, 3, 3)
    t.update({"gap_fc.weight": (1, C), "gmp_fc.weight": (1, C), "conv1x1.weight": (C, 2 * C, 1, 1),
              "conv1x1.bias": (C,), "FC.0.weight": (C, C if light else (img // 4) ** 2 * C),
              "FC.2.weight": (C, C), "gamma.weight": (C, C), "beta.weight": (C, C)})
    for i in range(1, n_res + 1):
        for k in ("conv1.weight", "conv2.weight"):
            t[f"UpBlock1_{i}.{k}"] = (C, C, 3, 3)
        for k in ("norm1.rho", "norm2.rho"):
            t[f"UpBlock1_{i}.{k}"] = (1, C, 1, 1)
    t.update({"UpBlock2.2.weight": (2 * ch, C, 3, 3), "UpBlock2.7.weight": (ch, 2 * ch, 3, 3),
              "UpBlock2.11.weight": (3, ch, 7, 7)})
    for idx, c in ((3, 2 * ch), (8, ch)):
        for k in ("rho", "gamma", "beta"):
            t[f"UpBlock2.{idx}.{k}"] = (1, c, 1, 1)
    return t


def reference_discriminator_table(ch, n_layers):
    """{key: shape} of the spectral-normalised Discriminator(ndf=ch, n_layers)."""
    chans = [3] + [ch * 2 ** i for i in range(n_layers - 1)]      # 3, ch, 2ch, ..., ch*2^(n-2)
    t = {}
    for j, (cin, cout) in enumerate(zip(chans, chans[1:])):
        k = 1 + 3 * j
        t.update({f"model.{k}.weight_orig": (cout, cin, 4, 4), f"model.{k}.bias": (cout,),
                  f"model.{k}.weight_u": (cout,), f"model.{k}.weight_v": (cin * 16,)})
    C = chans[-1]
    for fc in ("gap_fc", "gmp_fc"):
        t.update({f"{fc}.weight_orig": (1, C), f"{fc}.weight_u": (1,), f"{fc}.weight_v": (C,)})
    t.update({"conv1x1.weight": (C, 2 * C, 1, 1), "conv1x1.bias": (C,),
              "conv.weight_orig": (1, C, 4, 4), "conv.weight_u": (1,), "conv.weight_v": (C * 16,)})
    return t


@pytest.mark.parametrize("img,light", [(256, False), (128, False), (256, True)])
def test_full_size_networks_have_the_reference_layout(img, light):
    # UGATIT.py's six networks at ch 64, n_res 4, built on the meta device (no memory): every key
    # and shape equals the table above, whose size-dependent entries are REFERENCE E.2/E.3 numbers
    with torch.device("meta"):
        nets = u.build_networks(64, 4, img, light)
    gen, dg, dl = (reference_generator_table(64, 4, img, light), reference_discriminator_table(64, 7),
                   reference_discriminator_table(64, 5))
    assert gen["FC.0.weight"] == (256, 256 if light else {256: 1_048_576, 128: 262_144}[img])
    assert dg["model.16.weight_orig"] == (2048, 1024, 4, 4) and dg["conv.weight_v"] == (32768,)
    assert dl["model.10.weight_orig"] == (512, 256, 4, 4) and dl["conv.weight_v"] == (8192,)
    for name, table in (("genA2B", gen), ("genB2A", gen), ("disGA", dg), ("disGB", dg), ("disLA", dl),
                        ("disLB", dl)):
        got = {k: tuple(v.shape) for k, v in nets[name].state_dict().items()}
        assert got == table, name


def random_reference_checkpoint(ch, n_res, img, light):
    gen = reference_generator_table(ch, n_res, img, light)
    tables = {"genA2B": gen, "genB2A": gen, "disGA": reference_discriminator_table(ch, 7),
              "disGB": reference_discriminator_table(ch, 7), "disLA": reference_discriminator_table(ch, 5),
              "disLB": reference_discriminator_table(ch, 5)}
    return {name: {k: torch.randn(s) * 0.1 for k, s in t.items()} for name, t in tables.items()}


@pytest.mark.parametrize("light", [False, True])
def test_strict_load_of_reference_layout(tmp_path, light):
    ckpt = random_reference_checkpoint(4, 2, 64, light)
    for net in ckpt.values():                                      # sigma^-1 needs unit u, v
        for k, v in net.items():
            if k.endswith(("weight_u", "weight_v")):
                net[k] = v / v.norm()
    path = str(tmp_path / "UGATIT_params_0001000.pt")
    torch.save(ckpt, path)
    nets = u.build_networks(4, 2, 64, light)
    for name, net in nets.items():
        assert set(net.state_dict()) == set(ckpt[name]), name
        net.load_state_dict(ckpt[name], strict=True)
    g, size = u.load_generator(path, "B2A", 64 if light else None)
    assert size == 64 and g.light == light and g.n_blocks == 2 and g.ngf == 4
    x = torch.rand(2, 3, 64, 64) * 2 - 1
    out, cam, heat = g(x)
    assert out.shape == (2, 3, 64, 64) and cam.shape == (2, 2) and heat.shape == (2, 1, 16, 16)
    assert torch.equal(out, nets["genB2A"].eval()(x)[0])


# ---- whole networks against the reference forward, written out with plain torch ops -------------
def _pad(t, p):
    return F.pad(t, (p, p, p, p), mode="reflect")


def _iln(t, rho, gamma, beta):
    """The reference's adaILN / ILN: rho * IN + (1 - rho) * LN (unbiased var), * gamma + beta."""
    x_in = (t - t.mean((2, 3), keepdim=True)) / torch.sqrt(t.var((2, 3), keepdim=True) + 1e-5)
    x_ln = (t - t.mean((1, 2, 3), keepdim=True)) / torch.sqrt(t.var((1, 2, 3), keepdim=True) + 1e-5)
    return (rho * x_in + (1 - rho) * x_ln) * gamma + beta


def reference_generator_forward(sd, x, n_res, light):
    conv, relu, inorm = F.conv2d, F.relu, F.instance_norm
    h = relu(inorm(conv(_pad(x, 3), sd["DownBlock.1.weight"])))
    h = relu(inorm(conv(_pad(h, 1), sd["DownBlock.5.weight"], stride=2)))
    h = relu(inorm(conv(_pad(h, 1), sd["DownBlock.9.weight"], stride=2)))
    for i in range(n_res):
        r = relu(inorm(conv(_pad(h, 1), sd[f"DownBlock.{12 + i}.conv_block.1.weight"])))
        h = h + inorm(conv(_pad(r, 1), sd[f"DownBlock.{12 + i}.conv_block.5.weight"]))
    ga, gm = sd["gap_fc.weight"], sd["gmp_fc.weight"]
    cam = torch.cat([h.mean((2, 3)) @ ga.t(), h.amax((2, 3)) @ gm.t()], 1)
    h = torch.cat([h * ga[0][None, :, None, None], h * gm[0][None, :, None, None]], 1)
    h = relu(conv(h, sd["conv1x1.weight"], sd["conv1x1.bias"]))
    heat = h.sum(1, keepdim=True)
    v = h.mean((2, 3)) if light else h.flatten(1)
    v = relu(relu(v @ sd["FC.0.weight"].t()) @ sd["FC.2.weight"].t())
    gamma, beta = (v @ sd["gamma.weight"].t())[:, :, None, None], (v @ sd["beta.weight"].t())[:, :, None, None]
    for i in range(1, n_res + 1):
        r = relu(_iln(conv(_pad(h, 1), sd[f"UpBlock1_{i}.conv1.weight"]), sd[f"UpBlock1_{i}.norm1.rho"], gamma, beta))
        h = h + _iln(conv(_pad(r, 1), sd[f"UpBlock1_{i}.conv2.weight"]), sd[f"UpBlock1_{i}.norm2.rho"], gamma, beta)
    for c, n in ((2, 3), (7, 8)):
        h = F.interpolate(h, scale_factor=2, mode="nearest")
        h = relu(_iln(conv(_pad(h, 1), sd[f"UpBlock2.{c}.weight"]),
                      sd[f"UpBlock2.{n}.rho"], sd[f"UpBlock2.{n}.gamma"], sd[f"UpBlock2.{n}.beta"]))
    return torch.tanh(conv(_pad(h, 3), sd["UpBlock2.11.weight"])), cam, heat


def reference_discriminator_forward(sd, x, n_layers):
    """Eval mode: W / (u^T W v) with the stored u, v; CAM re-weighting by weight_orig (as the reference)."""
    def sn(k):
        w = sd[k + ".weight_orig"]
        return w / torch.dot(sd[k + ".weight_u"], w.flatten(1) @ sd[k + ".weight_v"])
    h = x
    for j in range(n_layers - 1):
        k = f"model.{1 + 3 * j}"
        h = F.leaky_relu(F.conv2d(_pad(h, 1), sn(k), sd[k + ".bias"], stride=1 if j == n_layers - 2 else 2), 0.2)
    cam = torch.cat([h.mean((2, 3)) @ sn("gap_fc").t(), h.amax((2, 3)) @ sn("gmp_fc").t()], 1)
    ga, gm = sd["gap_fc.weight_orig"], sd["gmp_fc.weight_orig"]
    h = torch.cat([h * ga[0][None, :, None, None], h * gm[0][None, :, None, None]], 1)
    h = F.leaky_relu(F.conv2d(h, sd["conv1x1.weight"], sd["conv1x1.bias"]), 0.2)
    return F.conv2d(_pad(h, 1), sn("conv")), cam, h.sum(1, keepdim=True)


@pytest.mark.parametrize("light", [False, True])
def test_generator_equals_reference_forward(light):
    ckpt = random_reference_checkpoint(4, 2, 64, light)["genA2B"]
    for k in ckpt:
        if k.endswith("rho"):
            ckpt[k] = torch.rand_like(ckpt[k])
    g = u.ResnetGenerator(4, 2, 64, light).eval()
    g.load_state_dict(ckpt, strict=True)
    x = torch.rand(2, 3, 64, 64) * 2 - 1
    with torch.no_grad():
        for got, expect in zip(g(x), reference_generator_forward(ckpt, x, 2, light)):
            torch.testing.assert_close(got, expect, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("n_layers,size", [(7, 128), (5, 64)])
def test_discriminator_equals_reference_forward(n_layers, size):
    sd = random_reference_checkpoint(2, 1, 64, True)["disGA" if n_layers == 7 else "disLA"]
    for k in sd:
        if k.endswith(("weight_u", "weight_v")):
            sd[k] = sd[k] / sd[k].norm()
    d = u.Discriminator(2, n_layers).eval()
    d.load_state_dict(sd, strict=True)
    x = torch.rand(2, 3, size, size) * 2 - 1
    with torch.no_grad():
        for got, expect in zip(d(x), reference_discriminator_forward(sd, x, n_layers)):
            torch.testing.assert_close(got, expect, rtol=1e-4, atol=1e-5)


def test_adam_in_backward_and_recompute_change_no_update_of_the_fast_step():
    # a: the fast step with recomputed generator activations and Adam inside backward; b: the same
    # step with torch.optim.Adam after backward and the activations kept: the same float program
    nets_a, nets_b = tiny_nets(light=True), tiny_nets(light=True)
    nets_a["genA2B"].recompute = nets_a["genB2A"].recompute = True
    opt_a = u.make_optimizers(nets_a, 1e-3, 1e-4, in_backward=True)
    opt_b = u.make_optimizers(nets_b, 1e-3, 1e-4, in_backward=False)
    ac = u.autocast_factory(None, torch.device("cpu"))
    for step in range(2):
        A, B = torch.rand(1, 3, 64, 64) * 2 - 1, torch.rand(1, 3, 64, 64) * 2 - 1
        la = u.train_step_fast(nets_a, *opt_a, A, B, WEIGHTS, ac)
        lb = u.train_step_fast(nets_b, *opt_b, A, B, WEIGHTS, ac)
        assert la == pytest.approx(lb, rel=1e-5)
    for name in u.NET_NAMES:
        for (k, a), b in zip(nets_a[name].state_dict().items(), nets_b[name].state_dict().values()):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=f"{name}.{k}")
    # same state_dict format: the plain Adam state loads into the in-backward one and back
    sd = opt_b[0].state_dict()
    opt_a[0].load_state_dict(sd)
    re = opt_a[0].state_dict()
    assert re["param_groups"][0]["params"] == sd["param_groups"][0]["params"]
    for i in sd["state"]:
        torch.testing.assert_close(re["state"][i]["exp_avg_sq"], sd["state"][i]["exp_avg_sq"])


# ---- shapes -------------------------------------------------------------------------------------
@pytest.mark.parametrize("size,n_layers,side", [(256, 7, 6), (256, 5, 30), (128, 7, 2), (128, 5, 14),
                                                (64, 7, 1), (64, 5, 6)])
def test_discriminator_output_sizes(size, n_layers, side):
    # 256/128 px: the reference's output maps; 64 px global: the reference fails, ours gives 1x1
    d = u.Discriminator(ndf=1, n_layers=n_layers)
    out, cam, heat = d(torch.rand(1, 3, size, size))
    assert out.shape == (1, 1, side, side) and cam.shape == (1, 2) and heat.shape[1] == 1
    if size >= 128:
        assert d.strides_for(size) == [2] * (n_layers - 2) + [1]


def test_discriminator_keeps_stride_two_where_reference_runs():
    d = u.Discriminator(ndf=1, n_layers=7)
    assert d.strides_for(64) == [2, 2, 2, 2, 1, 1]
    assert d.strides_for(96) == [2, 2, 2, 2, 2, 1]                 # 96->48->24->12->6->3->2->1
    with pytest.raises(ValueError, match="too small"):
        d.strides_for(4)


# ---- layers against independent formulas -------------------------------------------------------
def test_layer_instance_norm_matches_numpy_formula():
    x = torch.randn(2, 5, 6, 7, dtype=torch.float64)
    rho = torch.rand(1, 5, 1, 1, dtype=torch.float64)
    gamma, beta = torch.randn(2, 5, 1, 1, dtype=torch.float64), torch.randn(2, 5, 1, 1, dtype=torch.float64)
    xn, r, gm, bt = (t.numpy() for t in (x, rho, gamma, beta))
    x_in = (xn - xn.mean((2, 3), keepdims=True)) / np.sqrt(xn.var((2, 3), ddof=1, keepdims=True) + 1e-5)
    x_ln = (xn - xn.mean((1, 2, 3), keepdims=True)) / np.sqrt(xn.var((1, 2, 3), ddof=1, keepdims=True) + 1e-5)
    expect = (r * x_in + (1 - r) * x_ln) * gm + bt
    got = u.layer_instance_norm(x, rho, gamma, beta).numpy()
    np.testing.assert_allclose(got, expect, rtol=1e-10, atol=1e-10)


def test_cam_fold_equals_concatenation():
    x = torch.randn(2, 6, 5, 5, dtype=torch.float64)
    gap_fc, gmp_fc = nn.Linear(6, 1, bias=False).double(), nn.Linear(6, 1, bias=False).double()
    conv = nn.Conv2d(12, 6, 1).double()
    feats, logit, heat = u.cam_features(x, gap_fc, gmp_fc, gap_fc.weight, gmp_fc.weight, conv, torch.relu)
    expect = torch.relu(conv(torch.cat([x * gap_fc.weight.view(1, 6, 1, 1), x * gmp_fc.weight.view(1, 6, 1, 1)], 1)))
    torch.testing.assert_close(feats, expect)
    torch.testing.assert_close(heat, expect.sum(1, keepdim=True))
    torch.testing.assert_close(logit[:, 0], x.mean((2, 3)) @ gap_fc.weight[0])
    torch.testing.assert_close(logit[:, 1], x.flatten(2).max(2).values @ gmp_fc.weight[0])
    # the fast path folds the weights into the conv: the same three outputs
    for got, want in zip(u.cam_features_folded(x, gap_fc, gmp_fc, gap_fc.weight, gmp_fc.weight, conv, torch.relu),
                         (feats, logit, heat)):
        torch.testing.assert_close(got, want)


@pytest.mark.parametrize("which", ["genA2B", "disGA", "disLA"])
def test_networks_give_the_same_outputs_and_gradients_with_the_cam_fold_on_and_off(which):
    torch.manual_seed(3)
    net = tiny_nets(light=False)[which].eval()  # eval: no power-iteration update between the calls
    x = torch.rand(2, 3, 64, 64) * 2 - 1
    results = []
    for fold in (False, True):  # the paper's form, then the fast path `train` uses
        net.fold_cam = fold
        net.zero_grad()
        outs = net(x)
        sum(o.square().sum() for o in outs).backward()
        results.append(([o.detach() for o in outs], [p.grad.clone() for p in net.parameters()]))
    (o0, g0), (o1, g1) = results
    for a, b in zip(o0 + g0, o1 + g1):
        # float32 with another summation order: equal to a few units in the 4th digit of the largest entry
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-4 * float(a.abs().max()))


def test_spectral_norm_matches_torch_spectral_norm():
    ref = nn.utils.spectral_norm(nn.Conv2d(3, 5, 4, stride=2, bias=True))
    ours = u.SNConv2d(3, 5, 4, stride=2)
    ours.load_state_dict(ref.state_dict(), strict=True)
    x = torch.randn(2, 3, 10, 10)
    for _ in range(3):                                             # training: power iteration each call
        torch.testing.assert_close(ours(x), ref(x), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(ours.weight_u, ref.weight_u)
    torch.testing.assert_close(ours.weight_v, ref.weight_v)
    ours.eval(), ref.eval()
    torch.testing.assert_close(ours(x), ref(x), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(ours.weight_u, ref.weight_u)          # eval: no update


# ---- training -----------------------------------------------------------------------------------
def tiny_nets(light=False, size=64):
    torch.manual_seed(0)
    return u.build_networks(ch=4, n_res=1, img_size=size, light=light)


WEIGHTS = {"adv": 1.0, "cycle": 10.0, "identity": 10.0, "cam": 1000.0}   # main.py defaults (paper)


def reference_step(nets, g_optim, d_optim, real_A, real_B, w):
    """One iteration of UGATIT-pytorch's train loop, line by line (UGATIT.py, paper Sec. 2.2).

    Every translation is its own generator call, every discriminator sees real and fake in
    separate calls, MSE / L1 / BCE-with-logits are torch's, the loss weights are applied as
    in the reference. Returns the loss terms as floats.
    """
    mse, l1, bce = nn.MSELoss(), nn.L1Loss(), nn.BCEWithLogitsLoss()
    gA2B, gB2A = nets["genA2B"], nets["genB2A"]
    ds = {k: nets[k] for k in ("disGA", "disGB", "disLA", "disLB")}

    def lsgan(logit, target):
        return mse(logit, torch.full_like(logit, target))

    # D update
    d_optim.zero_grad()
    fake_A2B, fake_B2A = gA2B(real_A)[0].detach(), gB2A(real_B)[0].detach()
    d_loss = 0
    for name, real, fake in (("disGA", real_A, fake_B2A), ("disLA", real_A, fake_B2A),
                             ("disGB", real_B, fake_A2B), ("disLB", real_B, fake_A2B)):
        real_logit, real_cam, _ = ds[name](real)
        fake_logit, fake_cam, _ = ds[name](fake)
        d_loss = d_loss + w["adv"] * (lsgan(real_logit, 1) + lsgan(fake_logit, 0)
                                      + lsgan(real_cam, 1) + lsgan(fake_cam, 0))
    d_loss.backward()
    d_optim.step()

    # G update, against the updated discriminators
    g_optim.zero_grad()
    fake_A2B, fake_A2B_cam, _ = gA2B(real_A)
    fake_B2A, fake_B2A_cam, _ = gB2A(real_B)
    fake_A2B2A, fake_B2A2B = gB2A(fake_A2B)[0], gA2B(fake_B2A)[0]
    fake_A2A, fake_A2A_cam, _ = gB2A(real_A)
    fake_B2B, fake_B2B_cam, _ = gA2B(real_B)
    adv = {}
    for side, names, fake in (("A", ("disGA", "disLA"), fake_B2A), ("B", ("disGB", "disLB"), fake_A2B)):
        adv[side] = sum(lsgan(o, 1) + lsgan(c, 1) for o, c, _ in (ds[k](fake) for k in names))
    cycle = {"A": l1(fake_A2B2A, real_A), "B": l1(fake_B2A2B, real_B)}
    identity = {"A": l1(fake_A2A, real_A), "B": l1(fake_B2B, real_B)}
    cam = {"A": bce(fake_B2A_cam, torch.ones_like(fake_B2A_cam)) + bce(fake_A2A_cam, torch.zeros_like(fake_A2A_cam)),
           "B": bce(fake_A2B_cam, torch.ones_like(fake_A2B_cam)) + bce(fake_B2B_cam, torch.zeros_like(fake_B2B_cam))}
    g_loss = sum(w["adv"] * adv[s] + w["cycle"] * cycle[s] + w["identity"] * identity[s] + w["cam"] * cam[s]
                 for s in "AB")
    g_loss.backward()
    g_optim.step()
    with torch.no_grad():                                          # RhoClipper(0, 1)
        for g in (gA2B, gB2A):
            for name, p in g.named_parameters():
                if name.endswith("rho"):
                    p.clamp_(0, 1)
    both = lambda t: (t["A"] + t["B"]).item()
    return {"d_loss": d_loss.item(), "g_loss": g_loss.item(), "g_adv": both(adv), "g_cycle": both(cycle),
            "g_identity": both(identity), "g_cam": both(cam)}


def twin_nets(light, size=32):
    """Two identical copies of tiny networks. The discriminators' spectral-norm vectors u, v are first
    converged by power iteration, then frozen (eval mode), so that sigma is the same however many
    times a discriminator is called (the power iteration is tested against torch's spectral_norm)."""
    a = u.build_networks(ch=2, n_res=1, img_size=size, light=light)
    with torch.no_grad():
        for k in ("disGA", "disGB", "disLA", "disLB"):
            for _ in range(30):
                a[k](torch.zeros(1, 3, size, size))
            a[k].eval()
    return a, copy.deepcopy(a)


def nets_params(nets, prefix):
    return [p for k in u.NET_NAMES if k.startswith(prefix) for p in nets[k].parameters()]


def sgd_pair(nets, lr):
    return torch.optim.SGD(nets_params(nets, "gen"), lr=lr), torch.optim.SGD(nets_params(nets, "dis"), lr=lr)


def run_step(which, nets, g_optim, d_optim, real_A, real_B, w=WEIGHTS, amp=None):
    """One iteration of 05's plain `train_step` or of `train_step_fast` (what the loop may run)."""
    if which == "plain":
        return u.train_step(nets, g_optim, d_optim, real_A, real_B, w)
    return u.train_step_fast(nets, g_optim, d_optim, real_A, real_B, w,
                             u.autocast_factory(amp, real_A.device))


@pytest.mark.parametrize("which", ["plain", "fast"])
@pytest.mark.parametrize("light", [False, True])
def test_training_step_equals_reference_objective(light, which):
    # plain SGD: every parameter's update is -lr * its gradient of the reference loss, so a wrong
    # term, weight, target or detach shows in the parameters as well as in the logged losses
    ours, ref = twin_nets(light)
    real_A, real_B = torch.rand(2, 3, 32, 32) * 2 - 1, torch.rand(2, 3, 32, 32) * 2 - 1
    before = {k: {n: p.detach().clone() for n, p in v.named_parameters()} for k, v in ours.items()}
    got = run_step(which, ours, *sgd_pair(ours, 0.01), real_A, real_B)
    expect = reference_step(ref, *sgd_pair(ref, 0.01), real_A, real_B, WEIGHTS)
    assert set(got) >= set(expect)
    for k, v in expect.items():
        assert got[k] == pytest.approx(v, rel=1e-5), k
    assert expect["g_cam"] * 1000 > 0.5 * expect["g_loss"]          # the CAM term matters at these weights
    for name in u.NET_NAMES:
        for (k, a), b in zip(ours[name].named_parameters(), ref[name].parameters()):
            step_got, step_ref = a - before[name][k], b - before[name][k]       # -lr * gradient
            scale = step_ref.abs().max().item()
            assert scale > 0 or k.endswith("rho"), f"{name}.{k}: the reference did not move it"
            torch.testing.assert_close(step_got, step_ref, rtol=1e-3, atol=1e-4 * scale, msg=f"{name}.{k}")
            if which == "fast":
                assert a.grad is None, f"{name}.{k}: gradient kept"


def train_args(*flags):
    """The train flags' values as `train` sees them, for tiny networks (the defaults otherwise)."""
    return u.build_parser().parse_args(["train", "--img-size", "32", "--ch", "4", "--n-res", "1", *flags])


@pytest.mark.parametrize("light", [False, True])
def test_fast_step_gives_the_plain_steps_parameters_after_several_iterations(light):
    # What the loop runs (train_step_fast: batched generator calls, recomputation, Adam inside
    # backward, no D weight gradients in the G update) against train_step (UGATIT.py's order, one
    # generator call per translation, torch.optim.Adam), from the same networks and batches, with the
    # paper's lr and weights; spectral norm in training mode, so its power iterations must match too.
    # In float64: the two are different float programs, and in float32 their difference is not a
    # tolerance but a lottery. Adam divides every gradient element by its own running RMS (eps 1e-8),
    # so the rounding error of a small gradient element reaches the update multiplied by up to
    # lr / eps = 1e4, and a ReLU input or a max-pool within rounding of a tie goes either way; measured
    # on these tiny nets after 3 float32 iterations, seeds 0-9, full and light: 18 of the 20 runs agree
    # to 1e-7 (+ 1e-6 relative) in all but at most 40 of ~500,000 elements, the other 2 differ beyond
    # that in 1-5 % of the elements, by up to 2 lr. In float64 the same
    # rounding is 1e-16: the parameters agree to ~1e-14 (measured), against a tolerance of 1e-10
    # (1e-6 lr) and steps of ~1e-4, so a wrong term, weight, detach or update order cannot pass.
    steps, lr = 3, u.HPARAMS["lr"]
    torch.manual_seed(0)
    plain = {k: v.double() for k, v in u.build_networks(4, 1, 32, light).items()}
    fast = copy.deepcopy(plain)
    args = train_args(*(["--light"] if light else []))
    plain_step = u.setup_training(plain, args, torch.device("cpu"), kind="plain")[0]
    fast_step = u.setup_training(fast, args, torch.device("cpu"), kind="fast")[0]
    assert fast["genA2B"].recompute and not plain["genA2B"].recompute
    before = {k: {n: t.clone() for n, t in v.state_dict().items()} for k, v in plain.items()}
    for _ in range(steps):
        A, B = (torch.rand(2, 3, 32, 32, dtype=torch.float64) * 2 - 1 for _ in "AB")
        expect, got = plain_step(A, B), fast_step(A, B)
        for k, v in expect.items():
            assert got[k] == pytest.approx(v, rel=1e-12), k
    for name in u.NET_NAMES:
        for (k, a), b in zip(fast[name].state_dict().items(), plain[name].state_dict().values()):
            torch.testing.assert_close(a, b, rtol=0, atol=1e-6 * lr, msg=f"{name}.{k}")
            if not k.endswith(("weight_u", "weight_v")):  # every parameter moved, by far more than that
                assert (b - before[name][k]).abs().max() > 1e-3 * lr * steps, f"{name}.{k} did not move"


def test_rho_clipped_to_unit_interval_after_step():
    # SGD on the rho parameters only, with a step big enough to push many of them out of [0, 1]:
    # after the step each rho is clamp(0.5 - lr * dL/drho, 0, 1), as in the reference step
    ours, ref = twin_nets(light=False)
    for nets in (ours, ref):
        with torch.no_grad():
            for g in ("genA2B", "genB2A"):
                for n, p in nets[g].named_parameters():
                    if n.endswith("rho"):
                        p.fill_(0.5)

    def rho_sgd(nets):
        rho = [p for g in ("genA2B", "genB2A") for n, p in nets[g].named_parameters() if n.endswith("rho")]
        rest = [p for k in u.NET_NAMES for n, p in nets[k].named_parameters() if not n.endswith("rho")]
        return torch.optim.SGD([{"params": rho, "lr": 20.0}, {"params": rest, "lr": 0.0}])

    A, B = torch.rand(1, 3, 32, 32) * 2 - 1, torch.rand(1, 3, 32, 32) * 2 - 1
    u.train_step(ours, rho_sgd(ours), torch.optim.SGD(nets_params(ours, "dis"), lr=0.0), A, B, WEIGHTS)
    reference_step(ref, rho_sgd(ref), torch.optim.SGD(nets_params(ref, "dis"), lr=0.0), A, B, WEIGHTS)
    rho = lambda nets: torch.cat([p.flatten() for g in ("genA2B", "genB2A")
                                  for n, p in nets[g].named_parameters() if n.endswith("rho")])
    got, expect = rho(ours), rho(ref)
    assert got.numel() == 2 * (2 * 8 + 4 + 2)                      # per G: 2 adaILN x 8 ch, ILN 4 + 2 ch
    assert (expect == 0).any() and (expect == 1).any()             # the clip acts at both ends
    torch.testing.assert_close(got, expect, rtol=1e-4, atol=1e-5)


def test_bf16_autocast_step_is_close_to_fp32_reference():
    ours, ref = twin_nets(light=True)
    A, B = torch.rand(1, 3, 32, 32) * 2 - 1, torch.rand(1, 3, 32, 32) * 2 - 1
    got = run_step("fast", ours, *sgd_pair(ours, 0.01), A, B, amp="bf16")
    expect = reference_step(ref, *sgd_pair(ref, 0.01), A, B, WEIGHTS)
    for k, v in expect.items():                                    # bf16 keeps 8 bits of mantissa
        assert got[k] == pytest.approx(v, rel=3e-2), k
    assert all(p.dtype == torch.float32 for net in ours.values() for p in net.parameters())


@requires_cuda
@pytest.mark.parametrize("amp", ["bf16", "fp16"])
def test_amp_step_on_cuda_is_close_to_fp32_reference(amp):
    dev = torch.device("cuda")
    ours, ref = twin_nets(light=False)
    ours, ref = ({k: v.to(dev) for k, v in nets.items()} for nets in (ours, ref))
    scalers = (torch.amp.GradScaler("cuda"), torch.amp.GradScaler("cuda")) if amp == "fp16" else None
    A, B = torch.rand(2, 3, 32, 32, device=dev) * 2 - 1, torch.rand(2, 3, 32, 32, device=dev) * 2 - 1
    got = u.train_step_fast(ours, *sgd_pair(ours, 0.01), A, B, WEIGHTS, u.autocast_factory(amp, dev), scalers)
    expect = reference_step(ref, *sgd_pair(ref, 0.01), A, B, WEIGHTS)
    # the terms computed before any update (a GradScaler may skip the first D step, which g_adv sees)
    for k in ("d_loss", "g_cycle", "g_identity", "g_cam"):
        assert got[k] == pytest.approx(expect[k], rel=3e-2), k
    assert all(p.dtype == torch.float32 for net in ours.values() for p in net.parameters())


def test_learning_rate_linear_decay():
    assert u.learning_rate(50, 100, 1e-4) == 1e-4
    assert u.learning_rate(75, 100, 1e-4) == pytest.approx(5e-5)
    assert u.learning_rate(100, 100, 1e-4) == 0.0


# ---- CLI: data, train/resume, test, errors -------------------------------------------------------
def make_domain(folder, n, seed, size=40):
    os.makedirs(folder, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (size, size + i, 3), dtype=np.uint8)).save(os.path.join(folder, f"im{i}.png"))


def make_data(root):
    make_domain(os.path.join(root, "trainA"), 3, 1)
    make_domain(os.path.join(root, "trainB"), 2, 2)
    make_domain(os.path.join(root, "testA"), 1, 3)
    return root


TRAIN = ["--img-size", "64", "--ch", "4", "--n-res", "1", "--batch", "2", "--quiet", "--device", "cpu",
         "--sample-every", "1000", "--save-every", "1000", "--log-every", "2"]


def test_ctrl_c_saves_and_resume_equals_uninterrupted(tmp_path, monkeypatch, sigint_handled):
    data = make_data(str(tmp_path / "data"))
    full = u.main(["train", "--data", data, "--out", str(tmp_path / "a"), "--iter", "4"] + TRAIN)

    calls = []

    def interrupted(real_step):                    # Ctrl-C during step 2, whichever step the loop runs
        def step(*a, **k):
            out = real_step(*a, **k)
            calls.append(1)
            if len(calls) == 2:
                os.kill(os.getpid(), signal.SIGINT)
            return out
        return step

    with monkeypatch.context() as patch:
        for name in ("train_step", "train_step_fast"):
            patch.setattr(u, name, interrupted(getattr(u, name)))
        with pytest.raises(SystemExit) as stopped:
            u.main(["train", "--data", data, "--out", str(tmp_path / "b"), "--iter", "4"] + TRAIN)
    assert stopped.value.code == 130 and len(calls) == 2
    assert os.listdir(tmp_path / "b" / "checkpoints") == ["000002.pt"]
    ckpt = torch.load(str(tmp_path / "b" / "checkpoints" / "000002.pt"), weights_only=True)
    assert ckpt["step"] == 2
    with pytest.raises(SystemExit, match="--resume"):
        u.main(["train", "--data", data, "--out", str(tmp_path / "b"), "--iter", "4"] + TRAIN)
    resumed = u.main(["train", "--data", data, "--out", str(tmp_path / "b"), "--iter", "4", "--resume"] + TRAIN)
    for name in u.NET_NAMES:
        for (k, a), (_, b) in zip(full[name].state_dict().items(), resumed[name].state_dict().items()):
            assert torch.equal(a, b), f"{name}.{k}"
    assert torch.load(str(tmp_path / "b" / "checkpoints" / "000004.pt"), weights_only=True)["step"] == 4
    assert [json.loads(line)["step"] for line in open(tmp_path / "b" / "log.jsonl")] == [2, 4]  # --log-every 2
    sheets = sorted(os.listdir(tmp_path / "a" / "samples"))
    assert sheets == ["A2B_0000004.png", "B2A_0000004.png"]
    # A2B sheet: 3 train + 1 test rows of 7 tiles; B2A: 2 train rows
    assert Image.open(tmp_path / "a" / "samples" / sheets[0]).size == (7 * 64, 4 * 64)
    assert Image.open(tmp_path / "a" / "samples" / sheets[1]).size == (7 * 64, 2 * 64)
    # the other variant or size cannot resume this run
    with pytest.raises(SystemExit, match="light"):
        u.main(["train", "--data", data, "--out", str(tmp_path / "b"), "--iter", "6", "--resume", "--light"] + TRAIN)


def test_test_command_writes_one_png_per_input(tmp_path):
    nets = tiny_nets(light=False)
    path = str(tmp_path / "ckpt.pt")
    torch.save({k: v.state_dict() for k, v in nets.items()}, path)   # reference-style file: nets only
    src = tmp_path / "in"
    make_domain(str(src / "sub"), 2, 5, size=50)
    Image.fromarray(np.full((30, 20, 3), 200, np.uint8)).save(src / "c.jpg")
    (src / "broken.png").write_bytes(b"not an image")
    with pytest.warns(UserWarning, match="broken.png"):
        written = u.main(["test", "--ckpt", path, "--input", str(src), "--out", str(tmp_path / "out"),
                          "--direction", "B2A", "--device", "cpu"])
    names = sorted(os.path.relpath(p, tmp_path / "out") for p in written)
    assert names == ["c.png", os.path.join("sub", "im0.png"), os.path.join("sub", "im1.png")]
    # the pixels: B2A of the bilinear-resized image, (x + 1) * 127.5 rounded
    img = np.asarray(Image.open(src / "c.jpg").convert("RGB").resize((64, 64), Image.BILINEAR), np.float32)
    x = torch.from_numpy(img / 127.5 - 1).permute(2, 0, 1)[None]
    with torch.no_grad():
        y = nets["genB2A"].eval()(x)[0][0].permute(1, 2, 0).numpy()
    expect = np.round((y + 1) * 127.5).clip(0, 255)
    got = np.asarray(Image.open(tmp_path / "out" / "c.png"), np.float32)
    assert got.shape == (64, 64, 3) and np.abs(got - expect).max() <= 1
    with pytest.raises(SystemExit, match="64 px cannot run at --img-size 128"):
        u.main(["test", "--ckpt", path, "--input", str(src), "--out", str(tmp_path / "o2"), "--img-size", "128"])


def test_test_command_never_writes_over_its_inputs(tmp_path):
    nets = tiny_nets(light=False)
    path = str(tmp_path / "ckpt.pt")
    torch.save({k: v.state_dict() for k, v in nets.items()}, path)
    src = tmp_path / "photos"
    make_domain(str(src), 2, 5, size=50)
    before = {n: (src / n).read_bytes() for n in os.listdir(src)}
    for out in (src, tmp_path / "." / "photos"):  # the same folder, spelled two ways
        with pytest.raises(SystemExit, match="would overwrite the input image"):
            u.main(["test", "--ckpt", path, "--input", str(src), "--out", str(out), "--device", "cpu"])
    assert {n: (src / n).read_bytes() for n in os.listdir(src)} == before
    with pytest.raises(SystemExit, match="a file; --input takes a folder"):
        u.main(["test", "--ckpt", path, "--input", str(src / "im0.png"), "--out", str(tmp_path / "o"),
                "--device", "cpu"])

def test_data_errors(tmp_path):
    root = tmp_path / "d"
    make_domain(str(root / "trainA"), 1, 0)
    with pytest.raises(SystemExit, match=r"trainB: missing"):
        u.main(["train", "--data", str(root), "--out", str(tmp_path / "r"), "--iter", "1"] + TRAIN)
    os.makedirs(root / "trainB")
    (root / "trainB" / "x.png").write_bytes(b"garbage")
    with pytest.warns(UserWarning, match="x.png: skipped"), pytest.raises(SystemExit, match="trainB: no readable images"):
        u.main(["train", "--data", str(root), "--out", str(tmp_path / "r"), "--iter", "1"] + TRAIN)
    with pytest.raises(SystemExit, match="no such checkpoint"):
        u.main(["test", "--ckpt", str(tmp_path / "none.pt"), "--input", str(root), "--out", str(tmp_path / "o")])



@pytest.mark.parametrize("flag,value", [("--batch", "0"), ("--keep", "0"), ("--ch", "0"), ("--iter", "-1"),
                                        ("--log-every", "0"), ("--sample-every", "0"), ("--save-every", "0")])
def test_counts_below_their_minimum_are_one_line_and_make_no_run_folder(tmp_path, flag, value):
    data = make_data(str(tmp_path / "data"))
    out = tmp_path / "run"
    with pytest.raises(SystemExit, match=f"{flag} {value}: must be at least"):
        u.main(["train", "--data", data, "--out", str(out), "--img-size", "32", "--device", "cpu", "--quiet",
                "--iter", "1", flag, value])
    assert not out.exists()


def test_unpaired_batches_are_reproducible_and_cover_epoch(tmp_path):
    data = u.UnpairedData(make_data(str(tmp_path / "data")), 32, seed=3)
    a1, a2 = data.batch("A", 5, 2), u.UnpairedData(str(tmp_path / "data"), 32, seed=3).batch("A", 5, 2)
    assert a1.shape == (2, 3, 32, 32) and torch.equal(a1, a2)
    assert a1.min() >= -1 and a1.max() <= 1
    # one epoch of 3 images: positions 0..2 are a permutation
    assert sorted(data._index("A", p) for p in range(3)) == [0, 1, 2]


@pytest.mark.skipif(not os.path.exists(os.path.join(ROOT, "03_stylegan2_ada.py")),
                    reason="chain needs 03_stylegan2_ada.py (StyleGAN2 generator loader)")
def test_chain_writes_frames_and_gif(tmp_path):
    sg2 = load_script("03_stylegan2_ada")
    torch.manual_seed(0)
    face_g = sg2.Generator(32, style_dim=8, n_mlp=1, channel_multiplier=1, channel_max=8)
    sg_path = str(tmp_path / "sg2.pt")
    torch.save({"g_ema": face_g.state_dict(), "args": {"channel_max": 8, "channel_multiplier": 1},
                "latent_avg": torch.zeros(8)}, sg_path)
    nets = tiny_nets(light=True)
    ug_path = str(tmp_path / "ug.pt")
    torch.save({k: v.state_dict() for k, v in nets.items()}, ug_path)
    written = u.main(["chain", "--ugatit", ug_path, "--stylegan", sg_path, "--seeds", "1", "2",
                      "--walk", "2", "--img-size", "64", "--truncation", "0.7", "--out", str(tmp_path / "c"),
                      "--device", "cpu"])
    assert sorted(os.path.basename(p) for p in written) == ["seed1.png", "seed2.png", "walk.gif"]
    assert Image.open(written[0]).size == (128, 64)
    gif = Image.open(os.path.join(str(tmp_path / "c"), "walk.gif"))
    assert gif.n_frames == 4 and gif.size == (128, 64)
    with pytest.raises(SystemExit, match="sg2_missing.pt"):
        u.main(["chain", "--ugatit", ug_path, "--stylegan", str(tmp_path / "sg2_missing.pt"), "--seeds", "1",
                "--out", str(tmp_path / "c2")])


def test_adam_is_fused_only_for_cuda_tensors():
    """Fused Adam needs CUDA tensors (CPU support came only in later torch): CPU nets get plain Adam."""
    for in_backward in (True, False):
        g_opt, d_opt = u.make_optimizers(tiny_nets(light=True), 1e-3, 1e-4, in_backward=in_backward)
        for opt in (g_opt, d_opt):
            inner = opt.optims if in_backward else [opt]
            assert all(not o.param_groups[0].get("fused") for o in inner)


def test_train_step_called_directly_equals_the_loop(tmp_path):
    """One train_step from the loop's state after step 1 gives exactly the loop's step-2 checkpoint."""
    data = make_data(str(tmp_path / "data"))
    out = str(tmp_path / "run")
    argv = ["train", "--data", data, "--out", out, "--iter", "4", "--img-size", "32", "--ch", "4", "--n-res", "1",
            "--batch", "2", "--quiet", "--device", "cpu", "--sample-every", "1000", "--save-every", "1",
            "--keep", "4", "--log-every", "1"]
    u.main(argv)
    ck1 = torch.load(os.path.join(out, "checkpoints", "000001.pt"), weights_only=True)
    ck2 = torch.load(os.path.join(out, "checkpoints", "000002.pt"), weights_only=True)
    nets = u.build_networks(4, 1, 32, light=False)
    for k in u.NET_NAMES:
        nets[k].load_state_dict(ck1[k])
    g_optim, d_optim = u.adam_optimizers(nets, 1e-4, 1e-4)  # torch.optim.Adam, the paper's update
    g_optim.load_state_dict(ck1["g_optim"])
    d_optim.load_state_dict(ck1["d_optim"])
    for opt in (g_optim, d_optim):
        for group in opt.param_groups:
            group["lr"] = u.learning_rate(2, 4, 1e-4)  # the first half of --iter 4: lr 1e-4
    batches = u.UnpairedData(data, 32, seed=0)
    real_A, real_B = batches.batch("A", 2, 2), batches.batch("B", 2, 2)
    before = nets["genA2B"].FC[0].weight.detach().clone()

    losses = u.train_step(nets, g_optim, d_optim, real_A, real_B, WEIGHTS)

    assert all(np.isfinite(v) for v in losses.values())
    assert not torch.equal(before, nets["genA2B"].FC[0].weight)  # the weights moved
    for k in u.NET_NAMES:  # the loop ran recomputation and Adam inside backward: the same numbers
        for name, value in nets[k].state_dict().items():
            torch.testing.assert_close(value, ck2[k][name], rtol=1e-5, atol=1e-7, msg=f"{k}.{name}")
    row = [json.loads(line) for line in open(os.path.join(out, "log.jsonl"))][1]
    assert row["step"] == 2 and row["d_loss"] == pytest.approx(losses["d_loss"], rel=1e-5)


@pytest.mark.parametrize("flags", [[], ["--no-recompute", "--light"], ["--amp", "bf16"]])
def test_the_loop_runs_the_fast_step_in_every_case(tmp_path, monkeypatch, flags):
    """setup_training's rule (measured, see its docstring): `train` calls train_step_fast, never
    train_step, with recomputation exactly when --no-recompute is absent and Adam inside backward."""
    data = make_data(str(tmp_path / "data"))
    calls, seen = [], {}
    for name in ("train_step", "train_step_fast"):
        def spy(*a, _name=name, _real=getattr(u, name), **k):
            calls.append(_name)
            seen.update(recompute=a[0]["genA2B"].recompute, g_optim=type(a[1]).__name__,
                        mixed=_name == "train_step_fast" and a[6] is not contextlib.nullcontext)
            return _real(*a, **k)
        monkeypatch.setattr(u, name, spy)
    u.main(["train", "--data", data, "--out", str(tmp_path / "run"), "--iter", "1", "--img-size", "32", "--ch", "4",
            "--n-res", "1", "--quiet", "--device", "cpu", "--sample-every", "1000", "--save-every", "1000", *flags])
    assert calls == ["train_step_fast"]
    assert seen["recompute"] == ("--no-recompute" not in flags) and seen["g_optim"] == "AdamInBackward"
    assert seen["mixed"] == ("--amp" in flags)                     # autocast only with --amp


def test_bench_times_both_steps_in_interleaved_rounds_and_keeps_the_one_shot_worker(capsys):
    """bench/bench_ugatit.py: one table row per implementation, with the ratio to the first row and its
    per-round range; the one-shot worker (bench/gpu_check.py's contract) prints one RESULT line."""
    bench = load_script("bench/bench_ugatit")
    bench.main(["--configs", "light:32:1", "--ch", "2", "--n-res", "1", "--rounds", "2", "--iters", "1",
                "--warmup", "0", "--threads", "1", "--step", "plain", "--step", "fast"])
    rows = [line for line in capsys.readouterr().out.splitlines() if line.strip().startswith("light:32:1")]
    assert len(rows) == 2 and "train_step [plain]" in rows[0] and "train_step_fast [fast]" in rows[1]
    assert "x (" in rows[1] and "x (" not in rows[0]
    bench.main(["--worker", "light:32:1", "--ch", "2", "--n-res", "1", "--iters", "2", "--warmup", "0",
                "--device", "cpu"])
    result = json.loads(capsys.readouterr().out.split("RESULT ", 1)[1])
    assert result["step"] == "fast" and len(result["s_per_iter_all"]) == 2 and result["s_per_iter_median"] > 0
