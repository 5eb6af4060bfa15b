"""Tests for 02_stylegan_freezed.py (StyleGAN v1 in rosinality/style-based-gan-pytorch's layout + FreezeD).

Independent references used here: the key/shape tables of the port written out below from its
model.py layout (not read from the script), a hand-written forward for the non-fused blocks, scipy
convolution, numpy statistics, and FreezeD finetune.py's substring freezing rule.
"""
import argparse
import csv
import json
import math
import os
import random
import signal
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from scipy.signal import convolve2d

from conftest import load_script

m = load_script("02_stylegan_freezed")


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny convolutions run far faster on one thread than on a shared, oversubscribed CPU."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)

FULL = (512, 512, 512, 512, 256, 128, 64, 32, 16)  # generator block widths, 4 .. 1024 px
TINY = (8, 8, 8, 8, 8, 8, 8, 8, 8)
TINY_CODE = 8


# ----------------------------------------------------------------------------------------------
# The port's state-dict tables (rosinality model.py / FreezeD stylegan/model.py)
# ----------------------------------------------------------------------------------------------
def generator_table(ch=FULL, code=512, n_mlp=8):
    t = {"generator.progression.0.conv1.input": (1, ch[0], 4, 4)}
    for n in range(9):
        c_in, c_out = (ch[n - 1] if n else ch[0]), ch[n]
        p = f"generator.progression.{n}."
        if 1 <= n <= 4:  # Sequential[Upsample, EqualConv2d, Blur]
            t[p + "conv1.1.conv.weight_orig"] = (c_out, c_in, 3, 3)
            t[p + "conv1.1.conv.bias"] = (c_out,)
            t[p + "conv1.2.weight"] = (c_out, 1, 3, 3)
            t[p + "conv1.2.weight_flip"] = (c_out, 1, 3, 3)
        elif n >= 5:  # Sequential[FusedUpsample, Blur]; transposed layout [in, out, 3, 3]
            t[p + "conv1.0.weight"] = (c_in, c_out, 3, 3)
            t[p + "conv1.0.bias"] = (c_out,)
            t[p + "conv1.1.weight"] = (c_out, 1, 3, 3)
            t[p + "conv1.1.weight_flip"] = (c_out, 1, 3, 3)
        for half in ("1", "2"):
            t[p + f"noise{half}.weight_orig"] = (1, c_out, 1, 1)
            t[p + f"adain{half}.style.linear.weight_orig"] = (2 * c_out, code)
            t[p + f"adain{half}.style.linear.bias"] = (2 * c_out,)
        t[p + "conv2.conv.weight_orig"] = (c_out, c_out, 3, 3)
        t[p + "conv2.conv.bias"] = (c_out,)
        t[f"generator.to_rgb.{n}.conv.weight_orig"] = (3, c_out, 1, 1)
        t[f"generator.to_rgb.{n}.conv.bias"] = (3,)
    for i in range(n_mlp):
        t[f"style.{2 * i + 1}.linear.weight_orig"] = (code, code)
        t[f"style.{2 * i + 1}.linear.bias"] = (code,)
    return t


def discriminator_table(ch=FULL, activate=True):
    c = tuple(reversed(ch))  # 16, 32, 64, 128, 256, 512, 512, 512, 512
    t = {}
    for n in range(8):
        p = f"progression.{n}."
        t[p + "conv1.0.conv.weight_orig"] = (c[n + 1], c[n], 3, 3)
        t[p + "conv1.0.conv.bias"] = (c[n + 1],)
        t[p + "conv2.0.weight"] = (c[n + 1], 1, 3, 3)
        t[p + "conv2.0.weight_flip"] = (c[n + 1], 1, 3, 3)
        if n <= 3:  # FusedDownsample, raw weight
            t[p + "conv2.1.weight"] = (c[n + 1], c[n + 1], 3, 3)
            t[p + "conv2.1.bias"] = (c[n + 1],)
        else:
            t[p + "conv2.1.conv.weight_orig"] = (c[n + 1], c[n + 1], 3, 3)
            t[p + "conv2.1.conv.bias"] = (c[n + 1],)
    t["progression.8.conv1.0.conv.weight_orig"] = (c[8], c[8] + 1, 3, 3)
    t["progression.8.conv1.0.conv.bias"] = (c[8],)
    t["progression.8.conv2.0.conv.weight_orig"] = (c[8], c[8], 4, 4)
    t["progression.8.conv2.0.conv.bias"] = (c[8],)
    for n in range(9):
        pre = f"from_rgb.{n}.0.conv." if activate else f"from_rgb.{n}.conv."
        t[pre + "weight_orig"] = (c[n], 3, 1, 1)
        t[pre + "bias"] = (c[n],)
    t["linear.linear.weight_orig"] = (1, c[8])
    t["linear.linear.bias"] = (1,)
    return t


def random_state_dict(table, seed):
    """Random weights in the table's layout; blur buffers hold the binomial filter, as in the port."""
    g = torch.Generator().manual_seed(seed)
    blur = torch.tensor([[1.0, 2, 1], [2, 4, 2], [1, 2, 1]]) / 16
    sd = {}
    for k, shape in table.items():
        if k.endswith((".weight", ".weight_flip")) and len(shape) == 4 and shape[1] == 1 and shape[2] == 3:
            sd[k] = blur.expand(shape).clone()
        elif "adain" in k and k.endswith("bias"):
            sd[k] = torch.cat([1 + 0.2 * torch.randn(shape[0] // 2, generator=g),
                               0.2 * torch.randn(shape[0] // 2, generator=g)])
        else:
            sd[k] = torch.randn(shape, generator=g) * (0.3 if "noise" in k or k.endswith("bias") else 1.0)
    return sd


def write_source_checkpoint(path, ch=TINY, code=TINY_CODE, seed=0, bare=False):
    g_sd = random_state_dict(generator_table(ch, code), seed)
    ema_sd = random_state_dict(generator_table(ch, code), seed + 1)
    if bare:
        torch.save(ema_sd, path)
    else:
        torch.save({"generator": g_sd, "discriminator": random_state_dict(discriminator_table(ch), seed + 2),
                    "g_optimizer": {"state": {}, "param_groups": []},
                    "d_optimizer": {"state": {}, "param_groups": []}, "g_running": ema_sd}, path)
    return g_sd, ema_sd


def make_images(folder, n=6, size=16, seed=0, mode="RGB"):
    os.makedirs(folder, exist_ok=True)
    rs = np.random.RandomState(seed)
    for i in range(n):
        arr = rs.randint(0, 256, (size, size, 3), dtype=np.uint8)
        Image.fromarray(arr).convert(mode).save(os.path.join(folder, f"img{i:02d}.png"))
    return str(folder)


def png(path):
    with Image.open(path) as im:
        return np.asarray(im)


def read_log(run):
    with open(os.path.join(run, "log.jsonl")) as f:
        return [json.loads(line) for line in f]


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(line for line in f if not line.startswith("#")))


def newest_checkpoint(run):
    """RUN/checkpoints/NNNNNN.pt with the largest number, loaded weights-only."""
    names = sorted(n for n in os.listdir(os.path.join(run, "checkpoints")) if n[:-3].isdigit())
    return torch.load(os.path.join(run, "checkpoints", names[-1]), weights_only=True)


def tiny_train_args(data, out, *extra):
    return ["train", "--data", data, "--out", out, "--size", "16", "--batch", "2", "--fid-every", "0",
            "--sample-every", "0", "--log-every", "1", "--quiet", *extra]


# ----------------------------------------------------------------------------------------------
# Layout and strict loading
# ----------------------------------------------------------------------------------------------
def test_full_size_key_tables_load_strictly():
    gt, dt = generator_table(), discriminator_table()
    assert len(gt) == 139 and len(dt) == 72  # rosinality/style-based-gan-pytorch model.py
    g = m.StyledGenerator()
    assert {k: tuple(v.shape) for k, v in g.state_dict().items()} == gt
    d = m.Discriminator()
    assert {k: tuple(v.shape) for k, v in d.state_dict().items()} == dt
    g.load_state_dict({k: torch.zeros(()).expand(v) for k, v in gt.items()}, strict=True)
    d.load_state_dict({k: torch.zeros(()).expand(v) for k, v in dt.items()}, strict=True)
    d_plain = m.Discriminator(from_rgb_activate=False)
    assert {k: tuple(v.shape) for k, v in d_plain.state_dict().items()} == discriminator_table(activate=False)


def test_released_layout_checkpoint_and_bare_ema_file_load(tmp_path):
    path = str(tmp_path / "stylegan-16px-new.model")
    g_sd, ema_sd = write_source_checkpoint(path)
    ckpt = m.load_checkpoint(path)
    g = m.build_generator_from(ckpt["g_running"], path)
    assert all(torch.equal(g.state_dict()[k], v) for k, v in ema_sd.items())
    d = m.build_discriminator_from(ckpt["discriminator"], path)
    assert d.from_rgb_activate
    bare = str(tmp_path / "010000.model")
    write_source_checkpoint(bare, bare=True)
    assert set(m.load_checkpoint(bare)) == {"g_running"}


def reference_image(sd, z, step, code=TINY_CODE, noise=None, z_slots=None):
    """The port's forward for blocks 0..4 (non-fused), written from its description: per half
    conv -> + noise * weight -> lrelu -> AdaIN; zero noise unless given. z_slots: {(block, 1 or 2):
    z'} gives AdaIN `adain1` / `adain2` of that block the style of z' instead of z."""
    lrelu = lambda x: F.leaky_relu(x, 0.2)

    def mapping(z):
        w = z / torch.sqrt((z ** 2).mean(1, keepdim=True) + 1e-8)
        for i in range(8):
            wt, b = sd[f"style.{2 * i + 1}.linear.weight_orig"], sd[f"style.{2 * i + 1}.linear.bias"]
            w = lrelu(w @ (wt * math.sqrt(2 / code)).t() + b)
        return w

    w_z = mapping(z)
    slot_w = {k: mapping(v) for k, v in (z_slots or {}).items()}

    def adain(x, key):
        w = slot_w.get((int(key.split(".")[2]), int(key[-1])), w_z)     # key generator.progression.N.adainJ
        s = w @ (sd[key + ".style.linear.weight_orig"] * math.sqrt(2 / code)).t() + sd[key + ".style.linear.bias"]
        c = x.shape[1]
        mu, var = x.mean((2, 3), keepdim=True), x.var((2, 3), unbiased=False, keepdim=True)
        return s[:, :c, None, None] * (x - mu) / torch.sqrt(var + 1e-5) + s[:, c:, None, None]

    def conv(x, key, pad):
        wt = sd[key + ".weight_orig"]
        return F.conv2d(x, wt * math.sqrt(2 / (wt.shape[1] * wt.shape[2] * wt.shape[3])), sd[key + ".bias"], padding=pad)

    x = sd["generator.progression.0.conv1.input"].expand(z.shape[0], -1, -1, -1)
    for n in range(step + 1):
        p = f"generator.progression.{n}."
        if n > 0:
            x = x.repeat_interleave(2, 2).repeat_interleave(2, 3)
            x = conv(x, p + "conv1.1.conv", 1)
            x = F.conv2d(x, sd[p + "conv1.2.weight"], padding=1, groups=x.shape[1])
        nz = 0 if noise is None else noise[n]

        def add_noise(x, key):
            return x + sd[key + ".weight_orig"] * math.sqrt(2 / x.shape[1]) * nz

        x = adain(lrelu(add_noise(x, p + "noise1")), p + "adain1")
        x = adain(lrelu(add_noise(conv(x, p + "conv2.conv", 1), p + "noise2")), p + "adain2")
    return conv(x, f"generator.to_rgb.{step}.conv", 0)


def test_generate_matches_reference_forward_and_uint8_contract(tmp_path):
    path = str(tmp_path / "src.model")
    _, ema_sd = write_source_checkpoint(path)
    out = str(tmp_path / "gen")
    m.main(["generate", "--ckpt", path, "--size", "16", "--seeds", "3,5", "--noise-mode", "none",
            "--out", out, "--device", "cpu"])
    assert sorted(os.listdir(out)) == ["seed0003.png", "seed0005.png"]
    z = torch.from_numpy(np.random.RandomState(5).randn(1, TINY_CODE)).float()
    ref = reference_image(ema_sd, z, step=2)[0].permute(1, 2, 0).numpy()
    expected = np.floor(np.clip(ref * 127.5 + 128, 0, 255))
    got = png(os.path.join(out, "seed0005.png")).astype(np.float64)
    assert got.shape == (16, 16, 3)
    assert np.abs(got - expected).max() <= 1  # float32 vs float32 order of operations
    assert np.mean(got == expected) > 0.97



def test_generate_without_size_uses_the_size_the_run_trained_at(tmp_path):
    path = str(tmp_path / "run.pt")
    _, ema_sd = write_source_checkpoint(path)
    ckpt = torch.load(path, weights_only=True)
    ckpt["args"] = {"size": 16}  # what 02's own checkpoints record
    torch.save(ckpt, path)
    out = str(tmp_path / "gen")
    m.main(["generate", "--ckpt", path, "--seeds", "5", "--noise-mode", "none", "--out", out, "--device", "cpu"])
    z = torch.from_numpy(np.random.RandomState(5).randn(1, TINY_CODE)).float()
    ref = reference_image(ema_sd, z, step=2)[0].permute(1, 2, 0).numpy()  # 16 px = step 2
    got = png(os.path.join(out, "seed0005.png")).astype(np.float64)
    assert got.shape == (16, 16, 3)
    assert np.abs(got - np.floor(np.clip(ref * 127.5 + 128, 0, 255))).max() <= 1


def test_mix_never_replaces_an_existing_file_and_needs_an_image_name(tmp_path):
    path = str(tmp_path / "src.model")
    write_source_checkpoint(path)
    mine = tmp_path / "mine.png"
    mine.write_bytes(b"a picture the user made")
    argv = ["mix", "--ckpt", path, "--size", "16", "--rows", "1", "--cols", "2", "--device", "cpu", "--out"]
    with pytest.raises(FileExistsError, match="mine.png exists \\(pass --overwrite"):
        m.main(argv + [str(mine)])
    assert mine.read_bytes() == b"a picture the user made"
    with pytest.raises(ValueError, match="not an image file name"):
        m.main(argv + [str(tmp_path / "m.txt")])
    m.main(argv + [str(mine), "--overwrite"])
    assert png(str(mine)).shape[:2] == (3 * 16, 2 * 16)  # (top row + 2 bands) x (left column + 1)

def test_forward_with_noise_and_truncation_matches_reference():
    sd = random_state_dict(generator_table(TINY, TINY_CODE), 7)
    g = m.StyledGenerator(TINY_CODE, 8, TINY)
    m.load_strict(g, sd, "test", "generator")
    z = torch.randn(2, TINY_CODE)
    noise = g.make_noise(2, 3)
    with torch.no_grad():
        torch.testing.assert_close(g(z, noise, step=3, alpha=1), reference_image(sd, z, 3, noise=noise),
                                   atol=1e-4, rtol=1e-4)
        mean = g.mean_style(torch.randn(64, TINY_CODE))
        # psi = 0: every sample becomes the mean-w image
        a = g(z, noise, step=1, mean_style=mean, style_weight=0.0)
        b = g(torch.randn(2, TINY_CODE), noise, step=1, mean_style=mean, style_weight=0.0)
        torch.testing.assert_close(a, b)


def test_fused_resampling_equals_unfused_ops():
    torch.manual_seed(1)
    up, down = m.FusedUpsample(3, 5), m.FusedDownsample(3, 5)
    x = torch.randn(2, 3, 6, 6)
    with torch.no_grad():
        w = (up.weight * up.scale).transpose(0, 1).flip(2, 3)  # transposed-conv -> conv layout
        nearest = x.repeat_interleave(2, 2).repeat_interleave(2, 3)
        ref_up = F.conv2d(nearest, w, padding=1) / 4 + up.bias.view(1, -1, 1, 1)
        torch.testing.assert_close(up(x), ref_up, atol=1e-5, rtol=1e-5)
        y = torch.randn(2, 3, 8, 8)
        conv = F.conv2d(y, down.weight * down.scale, down.bias, padding=1)
        ref_down = conv.reshape(2, 5, 4, 2, 4, 2).mean((3, 5))
        torch.testing.assert_close(down(y), ref_down, atol=1e-5, rtol=1e-5)


def test_blur_is_zero_padded_binomial_convolution():
    blur = m.Blur(2)
    x = torch.randn(1, 2, 7, 5, dtype=torch.float64)
    k = np.outer([1, 2, 1], [1, 2, 1]) / 16
    ref = np.stack([convolve2d(x[0, c].numpy(), k, mode="same") for c in range(2)])
    np.testing.assert_allclose(blur.double()(x)[0].numpy(), ref, atol=1e-12)
    assert torch.equal(blur.weight, blur.weight_flip)


def test_minibatch_stddev_against_numpy():
    x = torch.randn(5, 3, 4, 4, dtype=torch.float64)
    out = m.minibatch_stddev(x)
    ref = np.sqrt(x.numpy().var(axis=0) + 1e-8).mean()
    assert out.shape == (5, 4, 4, 4)
    np.testing.assert_allclose(out[:, 3].numpy(), ref, rtol=1e-12)


def test_r1_penalty_on_linear_critic():
    w = torch.randn(1, 3, 4, 4)
    x = torch.randn(6, 3, 4, 4, requires_grad=True)
    pred = (x * w).flatten(1).sum(1, keepdim=True)
    # E ||grad_x D(x)||^2 = ||w||^2 for every x; the caller multiplies by gamma / 2 (as in 03)
    assert torch.allclose(m.d_r1_penalty(pred, x), w.pow(2).sum(), rtol=1e-5)


def test_l2_sp_is_sum_of_per_tensor_mse():
    a, b = m.ConvBlock(2, 3, downsample=True), m.ConvBlock(2, 3, downsample=True)
    ref = sum(np.mean((p.detach().numpy() - q.detach().numpy()) ** 2) for p, q in zip(a.parameters(), b.parameters()))
    assert abs(m.l2_sp(a, b).item() - ref) < 1e-5 * max(1.0, ref)


# ----------------------------------------------------------------------------------------------
# Progressive fade-in
# ----------------------------------------------------------------------------------------------
def test_generator_fade_in_alpha_zero_is_skip_path_and_linear_in_alpha():
    torch.manual_seed(2)
    g = m.StyledGenerator(TINY_CODE, 8, TINY).eval()
    z = torch.randn(3, TINY_CODE)
    noise = g.make_noise(3, 3)
    with torch.no_grad():
        low = g(z, noise[:3], step=2, alpha=1)  # 16 px
        out = {a: g(z, noise, step=3, alpha=a) for a in (0.0, 0.3, 0.3 + 1e-4, 1.0)}
    torch.testing.assert_close(out[0.0], low.repeat_interleave(2, 2).repeat_interleave(2, 3))
    torch.testing.assert_close(out[0.3], 0.7 * out[0.0] + 0.3 * out[1.0], atol=1e-5, rtol=1e-5)
    step_change = (out[0.3 + 1e-4] - out[0.3]).abs().max()
    assert step_change <= 1e-4 * (out[1.0] - out[0.0]).abs().max() * 1.01 + 1e-6


def test_discriminator_fade_in_alpha_zero_is_downsampled_input():
    torch.manual_seed(3)
    d = m.Discriminator(TINY)
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        d0 = d(x, step=3, alpha=0.0)
        low = d(F.avg_pool2d(x, 2), step=2, alpha=1)
        d1, dh = d(x, step=3, alpha=1.0), d(x, step=3, alpha=0.5)
    torch.testing.assert_close(d0, low)
    assert d0.shape == (4, 1)
    assert not torch.allclose(d0, d1)
    assert (dh - d0).abs().max() < (d1 - d0).abs().max() + 1e-4  # continuous between the ends


def test_the_loop_grows_fades_in_and_runs_one_train_step_per_iteration(tmp_path, monkeypatch):
    """rosinality train.py's schedule, by hand for --init-size 8 --phase 3 --batch 2: 8 px with alpha 1
    (nothing to fade from) while used_sample <= 2 * phase (iterations 1-4: 0, 2, 4, 6 images seen),
    then 16 px with used_sample reset and alpha = min(1, (used_sample + 1) / phase): 1/3, then 1."""
    calls = []
    plain_step = m.train_step

    def recording_step(g, d, g_ema, g_opt, d_opt, real, s, alpha, cfg, trainable_d, *sources):
        calls.append((s, alpha, tuple(real.shape), g_opt.param_groups[0]["lr"]))
        return plain_step(g, d, g_ema, g_opt, d_opt, real, s, alpha, cfg, trainable_d, *sources)

    monkeypatch.setattr(m, "train_step", recording_step)
    out = str(tmp_path / "run")
    m.main(tiny_train_args(make_images(tmp_path / "data"), out, "--channel-max", "8", "--code-dim", "8",
                           "--init-size", "8", "--phase", "3", "--iter", "6", "--lr", "0.004"))
    assert [c[0] for c in calls] == [1, 1, 1, 1, 2, 2]
    assert [c[1] for c in calls] == pytest.approx([1, 1, 1, 1, 1 / 3, 1])
    assert [c[2] for c in calls] == [(2, 3, 8, 8)] * 4 + [(2, 3, 16, 16)] * 2
    assert all(c[3] == 0.004 for c in calls)  # --lr without --sched, at every resolution
    log = read_log(out)
    assert [r["res"] for r in log] == [8, 8, 8, 8, 16, 16] and log[4]["alpha"] == 0.33333
    assert newest_checkpoint(out)["progress"] == {"step": 2, "used_sample": 4}


# ----------------------------------------------------------------------------------------------
# FreezeD
# ----------------------------------------------------------------------------------------------
def freezed_rule(names, feature_loc):
    """sangwoomo/FreezeD finetune.py: requires_grad on for names containing progression.{8-loc},
    loc < feature_loc, and 'linear'."""
    return {n for n in names if "linear" in n or any(f"progression.{8 - loc}" in n for loc in range(feature_loc))}


def test_freeze_d_k_maps_to_feature_loc():
    d = m.Discriminator(TINY)
    names = [n for n, _ in d.named_parameters()]
    for k in range(1, 8):  # 256 px: step 6, seven blocks
        assert m.freezed_trainable(d, 6, k) == freezed_rule(names, 7 - k)
    assert m.freezed_trainable(d, 6, 4) == freezed_rule(names, 3)  # FreezeD README command
    assert m.freezed_trainable(d, 6, 0) == set(names)
    with pytest.raises(ValueError, match="--freeze-d 8"):
        m.freezed_trainable(d, 6, 8)


def test_finetune_step_keeps_frozen_blocks_bit_identical(tmp_path):
    src = str(tmp_path / "src.model")
    g_sd, _ = write_source_checkpoint(src)
    d_sd = torch.load(src, weights_only=True)["discriminator"]
    data = make_images(tmp_path / "data")
    out = str(tmp_path / "run")
    m.main(tiny_train_args(data, out, "--ckpt", src, "--freeze-d", "2", "--iter", "2", "--mixing"))
    ck = newest_checkpoint(out)
    d_new = ck["discriminator"]
    # 16 px = step 2: active D blocks 6, 7, 8; K = 2 freezes from_rgb and blocks 6, 7
    trainable = [k for k in d_sd if k.startswith(("progression.8.", "linear."))]
    frozen = [k for k in d_sd if k not in trainable]
    assert all(torch.equal(d_new[k], d_sd[k]) for k in frozen)
    assert all(not torch.equal(d_new[k], d_sd[k]) for k in trainable if "weight_orig" in k)
    g_new = ck["generator"]
    for k in ("style.1.linear.weight_orig", "generator.progression.0.conv1.input",
              "generator.progression.2.conv2.conv.weight_orig", "generator.to_rgb.2.conv.weight_orig"):
        assert not torch.equal(g_new[k], g_sd[k]), k
    assert torch.equal(g_new["generator.to_rgb.5.conv.weight_orig"], g_sd["generator.to_rgb.5.conv.weight_orig"])
    assert ck["step"] == 2 and ck["args"]["loss"] == "r1"


def test_regularizers_start_at_zero_and_run(tmp_path):
    src = str(tmp_path / "src.model")
    write_source_checkpoint(src)
    data = make_images(tmp_path / "data")
    out = str(tmp_path / "run")
    m.main(tiny_train_args(data, out, "--ckpt", src, "--iter", "1", "--lambda-fm", "1",
                           "--lambda-l2-g", "1", "--lambda-l2-d", "1", "--fm-blocks", "2"))
    row = read_log(out)[0]
    assert row["fm"] == 0 and row["l2_d"] == 0 and row["l2_g"] == 0  # target == source before any update
    ck = newest_checkpoint(out)
    assert "d_source" in ck and "g_source" in ck


# ----------------------------------------------------------------------------------------------
# Resume, Ctrl-C, run folder
# ----------------------------------------------------------------------------------------------
def test_resume_equals_uninterrupted_run(tmp_path):
    data = make_images(tmp_path / "data")
    common = ["--channel-max", "8", "--code-dim", "8", "--init-size", "8", "--phase", "3", "--mixing",
              "--loss", "r1"]
    a, b = str(tmp_path / "a"), str(tmp_path / "b")
    m.main(tiny_train_args(data, a, *common, "--iter", "5"))
    m.main(tiny_train_args(data, b, *common, "--iter", "3"))
    with open(os.path.join(b, "log.jsonl"), "a") as f:  # a line from after the checkpoint (a crash)
        f.write(json.dumps({"step": 4, "loss_d": 0.0}) + "\n")
    m.main(["train", "--out", b, "--resume", "--iter", "4", "--quiet"])  # `--out RUN --resume` ...
    m.main(["train", "--resume", b, "--iter", "5", "--quiet"])          # ... and `--resume RUN`, as 03
    ca, cb = newest_checkpoint(a), newest_checkpoint(b)
    assert ca["step"] == cb["step"] == 5
    assert ca["progress"] == cb["progress"] and ca["progress"]["step"] == 2  # grew 8 -> 16 px
    for net in ("generator", "discriminator", "g_running"):
        for k, v in ca[net].items():
            assert torch.equal(v, cb[net][k]), (net, k)
    sa, sb = ca["d_optimizer"]["state"], cb["d_optimizer"]["state"]
    assert sa.keys() == sb.keys() and len(sa) > 0
    assert all(torch.equal(sa[i]["exp_avg_sq"], sb[i]["exp_avg_sq"]) for i in sa)
    log = read_log(b)
    assert [r["step"] for r in log] == [1, 2, 3, 4, 5]


def test_ctrl_c_saves_the_finished_step(tmp_path, monkeypatch, sigint_handled):
    data = make_images(tmp_path / "data")
    out = str(tmp_path / "run")
    calls = []
    real_accumulate = m.accumulate

    def accumulate_then_interrupt(ema, model, decay=m.EMA_DECAY):
        real_accumulate(ema, model, decay)
        calls.append(1)
        if len(calls) == 2:
            os.kill(os.getpid(), signal.SIGINT)

    monkeypatch.setattr(m, "accumulate", accumulate_then_interrupt)
    before = signal.getsignal(signal.SIGINT)
    with pytest.raises(SystemExit) as stopped:
        m.main(tiny_train_args(data, out, "--channel-max", "8", "--code-dim", "8", "--iter", "10"))
    assert stopped.value.code == 130
    ck = newest_checkpoint(out)
    assert ck["step"] == 2 and len(calls) == 2
    assert signal.getsignal(signal.SIGINT) is before  # the handler from before the run is back
    assert os.listdir(os.path.join(out, "checkpoints")) == ["000002.pt"]  # no temp file left


class FakeEvaluator:
    def __init__(self, real_folder, **kw):
        self.kw, self.calls = kw, 0

    def evaluate(self, gen_fn, n_gen=None):
        img = gen_fn(3)
        assert img.shape == (3, 3, 16, 16) and img.min() >= -1 and img.max() <= 1
        self.calls += 1
        return {"fid": 100.0 / self.calls, "kid_mean": 0.1, "kid_std": 0.01, "copies": 1, "n_real": 6, "n_gen": 3}


def test_fid_curve_written_to_csv_and_png(tmp_path, monkeypatch):
    class FakeOps:
        Evaluator = FakeEvaluator

        class InceptionWeightsMissing(Exception):
            pass

    monkeypatch.setattr(m, "fid_ops", FakeOps)
    data = make_images(tmp_path / "data")
    out = str(tmp_path / "run")
    args = tiny_train_args(data, out, "--channel-max", "8", "--code-dim", "8", "--iter", "4", "--n-sample", "4",
                           "--sample-every", "2", "--init-size", "16")
    args[args.index("--fid-every") + 1] = "2"
    m.main(args)
    rows = read_csv(os.path.join(out, "fid.csv"))
    assert [int(r["step"]) for r in rows] == [0, 2, 4]
    assert [float(r["fid"]) for r in rows] == [100.0, 50.0, 100.0 / 3]
    assert png(os.path.join(out, "fid.png")).shape == (520, 640, 3)
    assert sorted(os.listdir(os.path.join(out, "samples"))) == ["000002.png", "000004.png"]
    assert png(os.path.join(out, "samples", "000004.png")).shape == (32, 32, 3)


def test_fid_without_a_batch_flag_counts_kimg_at_the_schedules_batch(tmp_path, monkeypatch):
    """No --batch: the batch comes from the schedule (rosinality: 32 from scratch without --sched),
    and fid.csv's kimg is iterations x 32 / 1000 (this once failed on the unset --batch)."""
    class FakeOps:
        Evaluator = FakeEvaluator

        class InceptionWeightsMissing(Exception):
            pass

    monkeypatch.setattr(m, "fid_ops", FakeOps)
    out = str(tmp_path / "run")
    m.main(["train", "--data", make_images(tmp_path / "data"), "--out", out, "--size", "16", "--init-size", "16",
            "--channel-max", "8", "--code-dim", "8", "--iter", "2", "--fid-every", "1", "--sample-every", "0",
            "--quiet"])
    rows = read_csv(os.path.join(out, "fid.csv"))
    assert [(int(r["step"]), float(r["kimg"])) for r in rows] == [(0, 0.0), (1, 0.032), (2, 0.064)]


def test_fid_with_ops_fid_random_inception(tmp_path, monkeypatch):
    """The real ops.fid.Evaluator path, with random Inception weights (values not comparable),
    cut to its 64-d first block and no loader workers so that it runs in seconds on a CPU."""
    from ops import fid_eval as fid

    class SmallFid:
        InceptionWeightsMissing = fid.InceptionWeightsMissing

        @staticmethod
        def Evaluator(*a, **kw):
            return fid.Evaluator(*a, dims=64, num_workers=0, kid_subsets=2, kid_subset_size=3, **kw)

    monkeypatch.setattr(m, "fid_ops", SmallFid)
    data = make_images(tmp_path / "data", n=4)
    out = str(tmp_path / "run")
    args = tiny_train_args(data, out, "--channel-max", "8", "--code-dim", "8", "--iter", "1", "--init-size", "16",
                           "--fid-inception", "random", "--fid-n", "4", "--fid-batch", "4")
    args[args.index("--fid-every") + 1] = "1"
    with pytest.warns(UserWarning, match="fewer images"):  # ops.fid flags 4 images vs 64 dims
        m.main(args)
    rows = read_csv(os.path.join(out, "fid.csv"))
    assert [int(r["step"]) for r in rows] == [0, 1] and all(float(r["fid"]) >= 0 for r in rows)
    assert all(int(r["n_gen"]) == 4 and int(r["n_real"]) == 4 for r in rows)
    with open(os.path.join(out, "fid.csv")) as f:
        assert f.readline().startswith("# provenance: ")  # weights, counts, resize, device, commit
    evals = [json.loads(line) for line in open(os.path.join(out, "log.jsonl")) if '"copies"' in line]
    assert [e["step"] for e in evals] == [0, 1]


def test_missing_inception_weights_gives_one_notice_and_trains(tmp_path, monkeypatch, capsys):
    class NoWeightsOps:
        class InceptionWeightsMissing(Exception):
            pass

        class Evaluator:
            def __init__(self, *a, **kw):
                raise NoWeightsOps.InceptionWeightsMissing("pt_inception weights not found")

    monkeypatch.setattr(m, "fid_ops", NoWeightsOps)
    data = make_images(tmp_path / "data")
    out = str(tmp_path / "run")
    args = tiny_train_args(data, out, "--channel-max", "8", "--code-dim", "8", "--iter", "2")
    args[args.index("--fid-every") + 1] = "1"
    m.main(args)
    assert capsys.readouterr().err.count("FID disabled") == 1
    assert not os.path.exists(os.path.join(out, "fid.csv"))
    assert newest_checkpoint(out)["step"] == 2


def test_wgan_gp_is_the_from_scratch_default(tmp_path):
    data = make_images(tmp_path / "data")
    out = str(tmp_path / "run")
    m.main(tiny_train_args(data, out, "--channel-max", "8", "--code-dim", "8", "--iter", "1", "--init-size", "16"))
    row = read_log(out)[0]
    assert "gp" in row and "r1" not in row and math.isfinite(row["loss_d"]) and row["res"] == 16


class FixedImageGenerator(torch.nn.Module):
    """G(z) = the same learned image P for every z, so the fake batch is known."""
    code_dim = 4

    def __init__(self, img):
        super().__init__()
        self.img = torch.nn.Parameter(img.clone())

    def forward(self, z, step=0, alpha=-1):
        return self.img.expand(z.shape[0], -1, -1, -1)


class LinearCritic(torch.nn.Module):
    """D(x) = <w, x> + b: grad_x D = w for every x, so R1 = 5 |w|^2 and WGAN-GP = 10 (|w| - 1)^2.
    Its "features" (feature_blocks given) are x * w, flattened."""

    def __init__(self, w, b):
        super().__init__()
        self.w, self.b = torch.nn.Parameter(w.clone()), torch.nn.Parameter(b.clone())

    def forward(self, x, step=0, alpha=-1, feature_blocks=None):
        if feature_blocks is not None:
            return (x * self.w).flatten(1)
        return (x * self.w).flatten(1).sum(1, keepdim=True) + self.b


def softplus(x):
    return np.logaddexp(0, x)


def sigmoid(x):
    return 1 / (1 + np.exp(-x))


@pytest.mark.parametrize("loss,gamma", [("r1", None), ("r1", 0.05), ("wgan-gp", None)])
def test_train_step_equals_hand_derived_sgd_step(loss, gamma):
    # rosinality style-based-gan-pytorch train.py / FreezeD finetune.py, one SGD step on a linear
    # critic and a generator that outputs one learned image P for every z. D: r1: softplus(-D(x))
    # + softplus(D(G(z))) + gamma/2 |grad D(x)|^2 (gamma 10 unless --r1-gamma is given); wgan-gp: -(E D(x) - 0.001 E D(x)^2) + E D(G(z))
    # + 10 (|grad D(x_hat)| - 1)^2; both + 0.5 L2-SP(D) + 0.2 feature matching. G, against the updated
    # D: softplus(-D(G(z))) or -D(G(z)), + 0.3 L2-SP(G). Then EMA with decay 0.5.
    lam_d, lam_fm, lam_g, lr = 0.5, 0.2, 0.3, 0.1
    torch.set_default_dtype(torch.float64)
    try:
        R, P, P_src = torch.randn(3, 3, 4, 4), torch.randn(3, 4, 4), torch.randn(3, 4, 4)
        w, b, w_src, b_src = torch.randn(3, 4, 4) * 0.3, torch.tensor([0.2]), torch.randn(3, 4, 4) * 0.3, torch.tensor([-0.1])
        g, d, g_ema = FixedImageGenerator(P), LinearCritic(w, b), FixedImageGenerator(torch.zeros(3, 4, 4))
        cfg = SimpleNamespace(mixing=False, loss=loss, lambda_fm=lam_fm, lambda_l2_d=lam_d, lambda_l2_g=lam_g,
                              fm_blocks=1, ema_decay=0.5)
        if gamma is not None:
            cfg.r1_gamma = gamma
        stats = m.train_step(g, d, g_ema, torch.optim.SGD(g.parameters(), lr=lr), torch.optim.SGD(d.parameters(), lr=lr),
                             R, 0, -1, cfg, {"w", "b"}, g_source=FixedImageGenerator(P_src),
                             d_source=LinearCritic(w_src, b_src))
    finally:
        torch.set_default_dtype(torch.float32)
    Rn = R.numpy().reshape(3, -1)
    Pn, Psn, wn, wsn = (t.numpy().ravel() for t in (P, P_src, w, w_src))
    bn, bsn, N = b.item(), b_src.item(), wn.size
    r, f = Rn @ wn + bn, Pn @ wn + bn                                # D(real_i), D(fake)
    norm = np.linalg.norm(wn)
    if loss == "r1":
        loss_d = softplus(-r).mean() + softplus(f)
        gamma = 10.0 if gamma is None else gamma                     # rosinality / FreezeD: 10
        reg, reg_key = gamma / 2 * norm ** 2, "r1"                    # grad_x D = w for every x
        grad_w = (-sigmoid(-r)[:, None] * Rn).mean(0) + sigmoid(f) * Pn + gamma * wn
        grad_b = -sigmoid(-r).mean() + sigmoid(f)
    else:
        loss_d = -(r.mean() - 0.001 * (r ** 2).mean()) + f
        reg, reg_key = 10 * (norm - 1) ** 2, "gp"
        grad_w = -(Rn.mean(0) - 0.001 * (2 * r[:, None] * Rn).mean(0)) + Pn + 20 * (norm - 1) * wn / norm
        grad_b = -(1 - 0.002 * r.mean()) + 1
    l2_d = ((wn - wsn) ** 2).mean() + (bn - bsn) ** 2                # mean over each tensor, summed
    fm = ((Rn * (wn - wsn)) ** 2).mean()                             # features x * w vs x * w_src
    grad_w = grad_w + lam_d * 2 * (wn - wsn) / N + lam_fm * 2 * (Rn ** 2).mean(0) * (wn - wsn) / N
    grad_b = grad_b + lam_d * 2 * (bn - bsn)
    w1, b1 = wn - lr * grad_w, bn - lr * grad_b
    f1 = Pn @ w1 + b1
    loss_g = softplus(-f1) if loss == "r1" else -f1
    grad_P = (-sigmoid(-f1) if loss == "r1" else -1.0) * w1 + lam_g * 2 * (Pn - Psn) / N
    P1 = Pn - lr * grad_P
    expect = {"loss_d": loss_d, reg_key: reg, "loss_g": loss_g, "fm": fm, "l2_d": l2_d,
              "l2_g": ((Pn - Psn) ** 2).mean()}
    assert set(stats) == set(expect)
    for k, v in expect.items():
        assert stats[k] == pytest.approx(v, rel=1e-9), k
    np.testing.assert_allclose(d.w.detach().numpy().ravel(), w1, rtol=1e-9)
    np.testing.assert_allclose(d.b.item(), b1, rtol=1e-9)
    np.testing.assert_allclose(g.img.detach().numpy().ravel(), P1, rtol=1e-9)
    np.testing.assert_allclose(g_ema.img.detach().numpy().ravel(), 0.5 * P1, rtol=1e-9)


def test_gradient_penalty_is_per_sample_on_the_real_fake_segment():
    seen = []

    def critic(x, step, alpha):                                      # D(x) = |x|^2 / 2: grad = x_hat
        seen.append(x.detach())
        return 0.5 * x.pow(2).flatten(1).sum(1, keepdim=True)

    real, fake = torch.randn(64, 3, 2, 2), torch.randn(64, 3, 2, 2)
    gp = m.d_gradient_penalty(critic, real, fake, 0, -1).item()
    x_hat, = seen
    # x_hat_i = e_i real_i + (1 - e_i) fake_i, one e_i in [0, 1] per sample (least squares fit)
    u, v = (x_hat - fake).flatten(1), (real - fake).flatten(1)
    e = (u * v).sum(1) / (v * v).sum(1)
    torch.testing.assert_close(u, e[:, None] * v, rtol=1e-4, atol=1e-5)
    assert e.min() >= 0 and e.max() <= 1 and e.std() > 0.15      # uniform per sample: std 0.29
    expect = 10 * ((x_hat.flatten(1).norm(dim=1) - 1) ** 2).mean().item()
    assert gp == pytest.approx(expect, rel=1e-5)


# ----------------------------------------------------------------------------------------------
# mix
# ----------------------------------------------------------------------------------------------
def test_mix_grid_layout_and_border_images(tmp_path):
    path = str(tmp_path / "src.model")
    write_source_checkpoint(path, ch=(8, 8, 8, 8, 4, 4, 4, 4, 4))
    mix_png, gen_dir = str(tmp_path / "mix.png"), str(tmp_path / "gen")
    m.main(["mix", "--ckpt", path, "--size", "64", "--rows", "1-2", "--cols", "3-5", "--noise-mode", "none",
            "--out", mix_png, "--device", "cpu"])
    m.main(["generate", "--ckpt", path, "--size", "64", "--seeds", "1-5", "--noise-mode", "none",
            "--out", gen_dir, "--device", "cpu"])
    grid = png(mix_png)
    assert grid.shape == ((1 + 3 * 2) * 64, (1 + 3) * 64, 3)  # header + coarse/middle/fine x 2 rows
    cell = lambda r, c: grid[r * 64:(r + 1) * 64, c * 64:(c + 1) * 64]
    img = lambda s: png(os.path.join(gen_dir, f"seed{s:04d}.png"))
    for j, s in enumerate((3, 4, 5)):
        assert np.abs(cell(0, 1 + j).astype(int) - img(s)).max() <= 1
    for band in range(3):
        assert np.abs(cell(1 + band * 2 + 1, 0).astype(int) - img(2)).max() <= 1
    # the fine band copies only 64 px styles: closer to the column image than the coarse band is
    d_coarse = np.abs(cell(1, 1).astype(int) - img(3)).mean()
    d_fine = np.abs(cell(5, 1).astype(int) - img(3)).mean()
    assert d_fine < d_coarse


# ----------------------------------------------------------------------------------------------
# Bad input
# ----------------------------------------------------------------------------------------------
def test_data_folder_errors_and_notes(tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match="no images found"):
        m.ImageFolder(str(empty), 16)
    folder = make_images(tmp_path / "mixed", n=3, size=20, mode="L")  # grayscale, wrong size
    (tmp_path / "mixed" / "broken.png").write_bytes(b"not a png")
    ds = m.ImageFolder(folder, 16)
    err = capsys.readouterr().err
    assert "broken.png" in err and "3 of 3 images" in err
    assert ds.full.shape == (3, 3, 16, 16) and ds.full.dtype == torch.uint8
    assert torch.equal(ds.full[:, 0], ds.full[:, 1])  # L -> RGB
    assert ds.at(8).shape == (3, 3, 8, 8)
    only_bad = tmp_path / "bad"
    only_bad.mkdir()
    (only_bad / "x.jpg").write_bytes(b"junk")
    with pytest.raises(ValueError, match="none of the 1 image files"):
        m.ImageFolder(str(only_bad), 16)


def test_checkpoint_errors_name_the_file(tmp_path):
    wrong = str(tmp_path / "stylegan2.pt")
    torch.save({"g_ema": {"style.1.weight": torch.zeros(2)}}, wrong)
    with pytest.raises(m.CheckpointError, match="stylegan2.pt: no 'g_running'"):
        m.load_checkpoint(wrong)
    text = str(tmp_path / "notes.model")
    with open(text, "w") as f:
        f.write("hello")
    with pytest.raises(m.CheckpointError, match="notes.model: not a readable"):
        m.load_checkpoint(text)
    shapes = str(tmp_path / "shapes.model")
    sd = random_state_dict(generator_table(TINY, TINY_CODE), 0)
    sd["generator.progression.3.conv2.conv.weight_orig"] = torch.zeros(8, 8, 1, 1)
    torch.save({"g_running": sd}, shapes)
    with pytest.raises(m.CheckpointError, match=r"shapes.model: 'generator' .*progression.3.conv2"):
        m.main(["generate", "--ckpt", shapes, "--size", "8", "--out", str(tmp_path / "o")])
    with pytest.raises(ValueError, match="--size 48"):
        m.main(["generate", "--ckpt", shapes, "--size", "48", "--out", str(tmp_path / "o")])
    with pytest.raises(ValueError, match="no such run folder"):
        m.main(["train", "--out", str(tmp_path / "none"), "--resume"])


def test_flag_errors_are_one_line_and_early(tmp_path):
    data = make_images(tmp_path / "data")
    src = str(tmp_path / "src.model")
    write_source_checkpoint(src)
    out = str(tmp_path / "run")
    with pytest.raises(ValueError, match="--freeze-d 2 needs --ckpt"):
        m.main(tiny_train_args(data, out, "--freeze-d", "2"))
    with pytest.raises(ValueError, match=r"--freeze-d 4: the 16 px discriminator has 3 blocks"):
        m.main(tiny_train_args(data, out, "--ckpt", src, "--freeze-d", "4"))
    with pytest.raises(ValueError, match="--size 24"):
        m.main(tiny_train_args(data, out, "--size", "24"))
    with pytest.raises(ValueError, match="need --ckpt"):
        m.main(tiny_train_args(data, out, "--lambda-fm", "1"))
    assert not os.path.exists(out)  # nothing written before the flags are checked

def test_per_adain_styles(tmp_path):
    """Generator.forward also takes a (w1, w2) pair per block, one per AdaIN (genforce's layer
    numbering: slot 2b = adain1, 2b + 1 = adain2 of block b)."""
    sd = random_state_dict(generator_table(TINY, TINY_CODE), 3)
    g = m.StyledGenerator(TINY_CODE, 8, TINY)
    m.load_strict(g, sd, "test", "generator")
    z = torch.randn(2, TINY_CODE)
    noise = [torch.zeros(2, 1, 4 * 2 ** i, 4 * 2 ** i) for i in range(3)]
    with torch.no_grad():
        z2 = torch.randn(2, TINY_CODE)
        w, w_other = g.style(z), g.style(z2)
        same = g.generator([(w, w)] * 3, noise, step=2)
        torch.testing.assert_close(same, reference_image(sd, z, step=2), atol=1e-4, rtol=1e-4)
        for block, slot in ((2, 2), (0, 1), (1, 2)):
            pairs = [(w, w)] * 3
            pairs[block] = (w_other, w) if slot == 1 else (w, w_other)
            torch.testing.assert_close(g.generator(pairs, noise, step=2),
                                       reference_image(sd, z, step=2, z_slots={(block, slot): z2}),
                                       atol=1e-4, rtol=1e-4)
        last_differs = g.generator([(w, w), (w, w), (w, w_other)], noise, step=2)
    assert not torch.allclose(same, last_differs)


# ----------------------------------------------------------------------------------------------
# train_step, called directly
# ----------------------------------------------------------------------------------------------
def test_train_step_called_directly_equals_the_loop(tmp_path):
    """One train_step from the loop's state after step 1 gives exactly the loop's step-2 checkpoint."""
    data = make_images(tmp_path / "data")
    out = str(tmp_path / "run")
    m.main(tiny_train_args(data, out, "--channel-max", "8", "--code-dim", "8", "--iter", "2", "--ckpt-every", "1",
                           "--mixing", "--loss", "r1", "--device", "cpu"))
    ck1 = torch.load(os.path.join(out, "checkpoints", "000001.pt"), weights_only=True)
    ck2 = torch.load(os.path.join(out, "checkpoints", "000002.pt"), weights_only=True)
    cfg = argparse.Namespace(**ck1["args"])
    arch = ck1["arch"]
    g = m.StyledGenerator(arch["code_dim"], arch["n_mlp"], arch["channels"])
    g_ema = m.StyledGenerator(arch["code_dim"], arch["n_mlp"], arch["channels"])
    d = m.Discriminator(arch["channels"], arch["from_rgb_activate"])
    for net, key in ((g, "generator"), (g_ema, "g_running"), (d, "discriminator")):
        net.load_state_dict(ck1[key])
    g_opt = torch.optim.Adam(g.generator.parameters(), lr=cfg.lr, betas=(0.0, 0.99))
    g_opt.add_param_group({"params": g.style.parameters(), "lr": cfg.lr * m.MAPPING_LR_MULT,
                           "mult": m.MAPPING_LR_MULT})
    d_opt = torch.optim.Adam(d.parameters(), lr=cfg.lr, betas=(0.0, 0.99))
    g_opt.load_state_dict(ck1["g_optimizer"])
    d_opt.load_state_dict(ck1["d_optimizer"])
    sampler = m.BatchSampler(6, cfg.seed)
    sampler.load_state_dict(ck1["sampler"])
    torch.set_rng_state(ck1["rng"]["torch"])
    py = ck1["rng"]["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    s = ck1["progress"]["step"]  # 8 px: the first phase of progressive training, alpha 1
    real = sampler.next(m.ImageFolder(data, 16).at(4 * 2 ** s), 2)
    before = {k: v.clone() for k, v in g.state_dict().items()}

    stats = m.train_step(g, d, g_ema, g_opt, d_opt, real, s, 1.0, cfg, m.freezed_trainable(d, s, 0))

    assert all(math.isfinite(v) for v in stats.values()) and set(stats) == {"loss_d", "loss_g", "r1"}
    key = "generator.to_rgb.1.conv.weight_orig"
    assert not torch.equal(before[key], g.state_dict()[key])  # the weights moved
    for net, key in ((g, "generator"), (g_ema, "g_running"), (d, "discriminator")):
        for k, v in net.state_dict().items():
            assert torch.equal(v, ck2[key][k]), (key, k)
    row = read_log(out)[1]
    assert row["step"] == 2 and row["loss_d"] == stats["loss_d"] and row["loss_g"] == stats["loss_g"]


# ----------------------------------------------------------------------------------------------
# --precision bf16
# ----------------------------------------------------------------------------------------------
def test_bf16_forwards_are_torch_autocast_returned_in_fp32_and_close_to_fp32():
    """Inside forward_precision("bf16") a forward of G or D is torch.autocast's bf16 forward (the
    reference: autocast applied by hand), handed back as fp32; after it, the fp32 forward is back.
    bf16 keeps 8 significant bits (unit roundoff 2^-8 = 0.4 %): through the few layers of a 16 px
    G and D the outputs stay within a few percent of fp32 at the same weights."""
    torch.manual_seed(0)
    g, d = m.StyledGenerator(TINY_CODE, 8, TINY).eval(), m.Discriminator(TINY)
    z = torch.randn(4, TINY_CODE)
    noise = g.make_noise(4, 2, "cpu", torch.Generator().manual_seed(1))
    cpu = torch.device("cpu")
    with torch.no_grad():
        img32 = g(z, noise=noise, step=2, alpha=1)
        logits32 = d(img32, 2, 1)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            img_ref, logits_ref = g(z, noise=noise, step=2, alpha=1), d(img32, 2, 1)
        with m.forward_precision("bf16", cpu, g, d, None):  # None: an absent source network
            img16, logits16 = g(z, noise=noise, step=2, alpha=1), d(img32, 2, 1)
        with m.forward_precision("fp32", cpu, g, d):
            img_fp32_path = g(z, noise=noise, step=2, alpha=1)
        after = g(z, noise=noise, step=2, alpha=1)
    assert img_ref.dtype == logits_ref.dtype == torch.bfloat16  # autocast does act on these layers
    assert img16.dtype == logits16.dtype == torch.float32
    assert torch.equal(img16, img_ref.float()) and torch.equal(logits16, logits_ref.float())
    scale = img32.abs().max()
    assert (img16 - img32).abs().max() <= 0.05 * scale
    assert (logits16 - logits32).abs().max() <= 0.05 * logits32.abs().max()
    assert not torch.equal(img16, img32)  # and it is not secretly fp32
    assert torch.equal(img_fp32_path, img32) and torch.equal(after, img32)
    assert "forward" not in vars(g) and "forward" not in vars(d)  # the class's forward again


def test_bf16_train_step_is_the_fp32_step_to_bf16_precision():
    """The fast path beside the paper's fp32 step: one train_step (SGD, R1, mixing, FreezeD K = 1)
    with its forwards in bf16 moves G and D along nearly the same direction, by nearly the same
    amount, as the fp32 step from the same weights, batch and random draws."""
    import copy
    torch.manual_seed(0)
    g, d = m.StyledGenerator(TINY_CODE, 8, TINY), m.Discriminator(TINY)
    g_ema = copy.deepcopy(g)
    real = torch.rand(4, 3, 16, 16) * 2 - 1
    cfg = SimpleNamespace(mixing=True, loss="r1", r1_gamma=1.0, lambda_fm=0.0, lambda_l2_d=0.0, lambda_l2_g=0.0,
                          fm_blocks=1)

    def one_step(precision):
        G, D, E = copy.deepcopy(g), copy.deepcopy(d), copy.deepcopy(g_ema)
        torch.manual_seed(1)
        random.seed(1)
        with m.forward_precision(precision, torch.device("cpu"), G, D):
            stats = m.train_step(G, D, E, torch.optim.SGD(G.parameters(), lr=0.01),
                                 torch.optim.SGD(D.parameters(), lr=0.01), real, 2, 1.0, cfg,
                                 m.freezed_trainable(D, 2, 1))
        moved = {name: torch.cat([(p1.detach() - p0.detach()).flatten() for p1, p0 in
                                  zip(new.parameters(), old.parameters())])
                 for name, new, old in (("G", G, g), ("D", D, d))}
        return stats, moved

    stats32, moved32 = one_step("fp32")
    stats16, moved16 = one_step("bf16")
    for net in ("G", "D"):
        a, b = moved32[net], moved16[net]
        assert a.norm() > 0 and not torch.equal(a, b), net  # both moved, and bf16 changed the arithmetic
        assert F.cosine_similarity(a, b, dim=0) > 0.99, net
        assert abs(b.norm() / a.norm() - 1) < 0.05, net
    for k in stats32:
        assert stats16[k] == pytest.approx(stats32[k], rel=0.05, abs=1e-3), k


def test_bf16_training_steps_move_the_weights_and_checkpoint_stays_fp32(tmp_path):
    src = str(tmp_path / "src.model")
    g_sd, _ = write_source_checkpoint(src)
    data = make_images(tmp_path / "data")
    out = str(tmp_path / "run")
    m.main(tiny_train_args(data, out, "--ckpt", src, "--iter", "2", "--mixing", "--precision", "bf16"))
    ck = newest_checkpoint(out)
    assert ck["args"]["precision"] == "bf16"
    for net in ("generator", "discriminator", "g_running"):
        assert all(v.dtype == torch.float32 for v in ck[net].values() if v.is_floating_point()), net
    assert not torch.equal(ck["generator"]["generator.progression.2.conv2.conv.weight_orig"],
                           g_sd["generator.progression.2.conv2.conv.weight_orig"])
    rows = read_log(out)
    assert all(math.isfinite(r[k]) for r in rows for k in ("loss_d", "loss_g", "r1"))
    m.main(["train", "--resume", out, "--iter", "3", "--precision", "fp32", "--quiet"])  # resumes as fp32
    ck = newest_checkpoint(out)
    assert ck["step"] == 3 and ck["args"]["precision"] == "fp32" and math.isfinite(read_log(out)[-1]["loss_d"])


# ----------------------------------------------------------------------------------------------
# Hyperparameters and run settings; the docstring's map
# ----------------------------------------------------------------------------------------------
BANNER = "# ---- plumbing: data, checkpoints, formats, settings, distributed, run folder, CLI ----"


def test_defaults_are_the_papers_and_the_reference_codes():
    """rosinality style-based-gan-pytorch train.py and sangwoomo/FreezeD finetune.py (REFERENCE.md A.7,
    B.2-B.4), StyleGAN App. C and ProGAN Sec. A.1, written out here: Adam lr 0.001 (--sched: 0.002 at
    256 px), betas (0, 0.99), mapping network lr x 0.01, EMA 0.999, R1 gamma 10, mixing 0.9, WGAN-GP
    10 with drift 0.001; fine-tuning 50,000 iterations at batch 8, FreezeD's row K = 4 (feature_loc 3)
    and regularizer weights 0; from scratch phases of 600,000 images from 8 px at batch 32."""
    parse = lambda *a: m.resolve_train_args(m.build_parser().parse_args(["train", "--data", "d", "--out", "o", *a]))
    freezed = parse("--ckpt", "c", "--preset", "freezed")
    assert (freezed.freeze_d, freezed.mixing, freezed.loss, freezed.sched) == (4, True, "r1", True)
    assert m.lr_for(freezed, 256) == 0.002 and m.batch_for(freezed, 256) == 8 and m.lr_for(freezed, 64) == 0.001
    plain = parse("--ckpt", "c")
    assert (plain.freeze_d, plain.loss, plain.iter, plain.r1_gamma, plain.ema_decay) == (0, "r1", 50000, 10, 0.999)
    assert (plain.lambda_fm, plain.lambda_l2_g, plain.lambda_l2_d, plain.fm_blocks) == (0, 0, 0, 4)
    assert m.lr_for(plain, 256) == 0.001 and m.batch_for(plain, 256) == 8 and plain.size == 256
    scratch = parse()
    assert (scratch.loss, scratch.phase, scratch.init_size, m.batch_for(scratch, 64)) == ("wgan-gp", 600000, 8, 32)
    assert (scratch.code_dim, scratch.channel_max, scratch.seed) == (512, 512, 0)
    assert m.batch_for(parse("--sched"), 8) == 256 and m.batch_for(parse("--sched"), 256) == 32
    assert (m.MIXING_PROB, m.GP_LAMBDA, m.DRIFT, m.N_MLP) == (0.9, 10, 0.001, 8)
    g, d = m.StyledGenerator(TINY_CODE, 8, TINY), m.Discriminator(TINY)
    g_opt, d_opt = m.make_optimizers(g, d, 0.002)
    assert all(grp["betas"] == (0.0, 0.99) for grp in g_opt.param_groups + d_opt.param_groups)
    mapping = {id(p) for p in g.style.parameters()}
    assert [len(grp["params"]) for grp in g_opt.param_groups] == [len(list(g.generator.parameters())), len(mapping)]
    assert {id(p) for p in g_opt.param_groups[1]["params"]} == mapping
    assert g_opt.param_groups[1]["lr"] == pytest.approx(0.002 * 0.01) and d_opt.param_groups[0]["lr"] == 0.002
    m.set_lr(g_opt, 0.003)  # the schedule keeps the mapping network 100x slower
    assert [grp["lr"] for grp in g_opt.param_groups] == pytest.approx([0.003, 0.003 * 0.01])


def test_hyperparameters_sit_above_the_plumbing_line_and_run_settings_below():
    """One block of the method's constants above the banner (nothing but assignments between its first
    and last name); the run settings below it, and each is the default of its flag."""
    import ast
    path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "02_stylegan_freezed.py")
    src = open(path).read()
    banner = src.splitlines().index(BANNER) + 1
    body = ast.parse(src).body
    assigned = {t.id: n.lineno for n in body if isinstance(n, ast.Assign) for t in n.targets
                if isinstance(t, ast.Name)}
    method = ("CHANNELS", "CODE_DIM", "N_MLP", "LR", "SCHED_LR", "ADAM_BETAS", "MAPPING_LR_MULT", "BATCH_SCRATCH",
              "SCHED_BATCH_PROGRESSIVE", "BATCH_FINETUNE", "SCHED_BATCH_FINETUNE", "EMA_DECAY", "SIZE", "ITERATIONS",
              "PHASE_IMAGES", "INIT_SIZE", "LOSS_FINETUNE", "LOSS_SCRATCH", "R1_GAMMA", "GP_LAMBDA", "DRIFT",
              "MIXING_PROB", "FREEZE_D_PAPER", "FM_BLOCKS", "LAMBDA_FM", "LAMBDA_L2_G", "LAMBDA_L2_D", "PRESETS")
    lines = [assigned[n] for n in method]
    assert max(lines) < banner and assigned["RUN_DEFAULTS"] > banner
    first, last = min(lines), max(lines)
    assert all(isinstance(n, ast.Assign) for n in body if first <= n.lineno <= last)  # one block
    defaults = vars(m.build_parser().parse_args(["train"]))
    for key, value in m.RUN_DEFAULTS.items():
        assert defaults[key] in (value, None), key  # None: filled in later (--keep), so --resume sees it unset
    assert m.resolve_train_args(m.build_parser().parse_args(["train", "--data", "d", "--out", "o"])).keep == \
        m.RUN_DEFAULTS["keep"] == 3
    for flag, value in (("lr", m.LR), ("r1_gamma", m.R1_GAMMA), ("ema_decay", m.EMA_DECAY), ("phase", m.PHASE_IMAGES),
                        ("init_size", m.INIT_SIZE), ("lambda_fm", m.LAMBDA_FM), ("size", m.SIZE)):
        assert defaults[flag] == value, flag


def test_settings_json_keeps_the_hyperparameters_and_the_run_settings(tmp_path):
    data = make_images(tmp_path / "data")
    out = str(tmp_path / "run")
    m.main(tiny_train_args(data, out, "--channel-max", "8", "--code-dim", "8", "--iter", "1", "--init-size", "16",
                           "--r1-gamma", "0.5", "--loss", "r1", "--ema-decay", "0.99", "--keep", "2"))
    with open(os.path.join(out, "settings.json")) as f:
        saved = json.load(f)
    flags = set(vars(m.build_parser().parse_args(["train"]))) - {"command", "dry_run", "resume"}
    assert flags <= set(saved)  # every flag of `train`, hyperparameter or run setting
    assert (saved["r1_gamma"], saved["ema_decay"], saved["lr"], saved["phase"], saved["iter"]) == (0.5, 0.99, 0.001,
                                                                                                    600000, 1)
    assert (saved["keep"], saved["log_every"], saved["fid_every"], saved["fid_n"], saved["seed"]) == (2, 1, 0, 5000, 0)
    assert newest_checkpoint(out)["args"] == saved


def test_docstring_map_names_only_what_the_file_defines():
    """The module docstring's map: every name in its method rows (above `plumbing`) and every code name
    (snake_case, CamelCase, UPPER_CASE) in its plumbing row is a top-level definition of 02, and every
    top-level function of the method part (above the banner) is in the map."""
    import ast
    import re
    path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "02_stylegan_freezed.py")
    src = open(path).read()
    tree = ast.parse(src)
    banner = src.splitlines().index(BANNER) + 1
    defined = {n.name: n.lineno for n in tree.body if isinstance(n, (ast.FunctionDef, ast.ClassDef))}
    defined.update({t.id: n.lineno for n in tree.body if isinstance(n, ast.Assign) for t in n.targets
                    if isinstance(t, ast.Name)})
    rows = ast.get_docstring(tree).split("Map of this file", 1)[1].split("\n\n", 1)[0].splitlines()[1:]
    split = next(i for i, row in enumerate(rows) if row[:19].strip() == "plumbing")
    method = {w for row in rows[:split] for w in re.findall(r"\w+", row[19:])}
    code_like = r"\w*_\w*|[A-Z][A-Z0-9]+|(?:[A-Z][a-z0-9]+){2,}"
    plumbing = {w for row in rows[split:] for w in re.findall(r"\w+", row[19:])
                if re.fullmatch(code_like, w)} - {"CLI"}  # CLI: a word here, not a name
    assert len(method) >= 40 and len(plumbing) >= 10
    assert not (method | plumbing) - set(defined), sorted((method | plumbing) - set(defined))
    assert all(defined[n] < banner for n in method) and all(defined[n] > banner for n in plumbing)
    functions_above = {n.name for n in tree.body if isinstance(n, ast.FunctionDef) and n.lineno < banner
                       and not n.name.startswith("_")}  # _helpers: details of a layer
    assert not functions_above - method, sorted(functions_above - method)
