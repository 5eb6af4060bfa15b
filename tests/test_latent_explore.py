"""04_latent_explore.py: SeFa and GANSpace against numpy, projection, edits, captions, GIFs, mixing
(knobs, sheets and the UI: test_knobs.py, test_knobs_ui.py)."""
import argparse
import json
import os

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import load_script

lx = load_script("04_latent_explore")


def _sg2():
    return load_script("03_stylegan2_ada")


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory):
    """A tiny StyleGAN2 checkpoint in our format (16 px, 16 channels, style_dim 32)."""
    sg2 = _sg2()
    torch.manual_seed(1)
    g = sg2.Generator(16, style_dim=32, n_mlp=2, channel_multiplier=1, channel_max=16)
    with torch.no_grad():  # noise strengths start at 0; make the noise modes visible
        for name, p in g.named_parameters():
            if name.endswith("noise.weight"):
                p.fill_(0.5)
    path = str(tmp_path_factory.mktemp("ckpt") / "g.pt")
    sg2.save_checkpoint(path, {"g_ema": g.state_dict(), "args": {"size": 16, "style_dim": 32, "n_mlp": 2,
                                                                  "channel_multiplier": 1, "channel_max": 16}})
    return path


def test_sefa_equals_numpy_eig_and_is_orthonormal():
    rng = np.random.RandomState(0)
    weights = [torch.from_numpy(rng.randn(c, 24)) for c in (16, 8, 8)]
    out = lx.sefa(weights)
    # independent: genforce's recipe, normalise each output unit's row, np.linalg.eig of A^T A
    a = np.concatenate([w.numpy() / np.linalg.norm(w.numpy(), axis=1, keepdims=True) for w in weights], 0)
    vals, vecs = np.linalg.eig(a.T @ a)
    order = np.argsort(vals.real)[::-1]
    vals, vecs = vals.real[order], vecs.real[:, order].T
    d = out["directions"].double().numpy()
    assert np.allclose(out["values"].numpy(), vals, rtol=1e-4, atol=1e-5)
    assert np.allclose(d @ d.T, np.eye(24), atol=1e-5)
    cos = np.abs(np.sum(d * vecs, axis=1))  # same vectors up to sign
    assert np.all(cos > 1 - 1e-5)


def test_ganspace_recovers_planted_direction():
    dim = 16
    planted = torch.zeros(dim)
    planted[3], planted[7] = 0.6, 0.8
    mix = torch.eye(dim) * 0.3 + 3.0 * torch.outer(planted, planted)  # strong spread along `planted`
    mapping = lambda z: z @ mix.T + 1.0  # noqa: E731  (a linear "mapping network" with an offset)
    out = lx.ganspace(mapping, dim, n_samples=20_000, components=4, batch=5_000)
    top = out["directions"][0]
    assert abs(float(top @ planted)) > 0.99
    # explained variance along it: (0.3 + 3)^2 = 10.89 for unit-variance z
    assert abs(float(out["values"][0]) - 10.89) / 10.89 < 0.05
    assert torch.allclose(out["mean"], torch.ones(dim), atol=0.06)
    assert abs(float(out["stdev"][0]) - 3.3) < 0.15
    assert torch.allclose(out["directions"] @ out["directions"].T, torch.eye(4), atol=1e-5)


def test_parse_helpers():
    assert lx.parse_range("0-3") == [0, 1, 2, 3]
    assert lx.parse_range("1,4,7") == [1, 4, 7]
    assert lx.parse_range("all", 3) == [0, 1, 2]
    assert lx.parse_degrees("-5:5:11") == [-5.0, -4.0, -3.0, -2.0, -1.0, 0.0, 1.0, 2.0, 3.0, 4.0, 5.0]
    with pytest.raises(lx.ExploreError):
        lx.parse_range("0-9", 4)


def test_caption_stays_inside_image():
    gray = Image.new("RGB", (96, 96), (128, 128, 128))
    text = "A VERY LONG CAPTION THAT WOULD NEVER FIT AT FULL SIZE"
    out = np.asarray(lx.caption(gray, top=text, bottom="BOTTOM")).astype(int)
    changed = np.abs(out - 128).max(axis=2) > 0
    assert changed.sum() > 50                                     # something was drawn
    assert not changed[:, 0].any() and not changed[:, -1].any()   # nothing reaches the side borders
    assert not changed[0].any() and not changed[-1].any()         # nor the top and bottom rows
    assert changed[:48].any() and changed[48:].any()              # a top and a bottom caption
    assert (out.min(axis=2) > 200).any() and (out.max(axis=2) < 40).any()  # white fill, black outline
    short = np.abs(np.asarray(lx.caption(gray, top="HI")).astype(int) - 128).max(axis=2) > 0
    assert short[:48].sum() > 0 and short[48:].sum() == 0


def test_edit_at_degree_zero_is_the_unedited_image_and_gif_frames(tiny_ckpt, tmp_path):
    e = lx.load_explorer(tiny_ckpt)
    d = lx.sefa([w for _, w in e.style_weights(range(e.n_latent))])
    base = e.synthesize(lx.styles_for(e, lx.seed_w(e, 5), 0.7))
    frames = lx.edit_frames(e, d["directions"][0], 5, [-3.0, 0.0, 3.0], list(range(e.n_latent)), 0.7)
    assert np.array_equal(np.asarray(frames[1]), np.asarray(lx.to_pil(base[0])))
    assert not np.array_equal(np.asarray(frames[0]), np.asarray(frames[1]))
    path = str(tmp_path / "d.pt")
    lx.main(["sefa", "--ckpt", tiny_ckpt, "--out", path])
    saved = torch.load(path, weights_only=True)
    assert saved["method"] == "sefa" and saved["directions"].shape[1] == 32 and saved["layers"] == list(range(e.n_latent))
    out = tmp_path / "edits"
    lx.main(["edit", "--ckpt", tiny_ckpt, "--dirs", path, "--index", "1", "--degrees=-2:2:5",
             "--seeds", "0-1", "--caption-top", "TOP", "--out", str(out)])
    gif = Image.open(out / "seed0001_dir01.gif")
    assert gif.n_frames == 5 and gif.size == (256, 256)  # captioned: enlarged x16 to the meme size
    assert Image.open(out / "grid_dir01.png").size == (5 * 18 + 2, 2 * 18 + 2)


def test_meme_gif_is_the_enlarged_edit_with_a_caption_and_the_grid_has_none(tiny_ckpt, tmp_path):
    e = lx.load_explorer(tiny_ckpt)
    d = lx.sefa([w for _, w in e.style_weights(range(e.n_latent))])
    path = str(tmp_path / "d.pt")
    torch.save(d, path)
    frames = lx.edit_frames(e, d["directions"][0], 3, [-2.0, 2.0], list(range(e.n_latent)), 0.7)
    for size, caption, gif_size in ((64, "TOP", 64), (40, "TOP", 48), (0, "TOP", 16), (64, None, 16)):
        out = tmp_path / f"e{size}{caption}"
        lx.main(["edit", "--ckpt", tiny_ckpt, "--dirs", path, "--degrees=-2,2", "--seeds", "3", "--out", str(out),
                 "--meme-size", str(size)] + (["--caption-top", caption] if caption else []))
        sheet = np.asarray(Image.open(out / "grid_dir00.png").convert("RGB"))
        for k, want in enumerate(frames):  # the grid holds the plain edits, never a caption
            assert np.array_equal(sheet[2:18, 2 + 18 * k:18 + 18 * k], np.asarray(want))
        gif = Image.open(out / "seed0003_dir00.gif")
        assert gif.size == (gif_size, gif_size)  # 40 px asked: 3 x 16 px, the first whole factor reaching it
        gif.seek(1)
        frame = np.asarray(gif.convert("RGB")).astype(float)
        plain = np.asarray(frames[1].resize((gif_size, gif_size), Image.LANCZOS)).astype(float)
        lower = slice(gif_size * 5 // 8, gif_size)  # below the top caption (at most H/7 high, in the top half)
        if caption is None:
            assert np.array_equal(frame, plain)  # no caption: the GIF frame is the edit itself
        else:
            other = np.asarray(frames[0].resize((gif_size, gif_size), Image.LANCZOS)).astype(float)
            near, far = np.abs(frame[lower] - plain[lower]).mean(), np.abs(frame[lower] - other[lower]).mean()
            assert near < 12 and far > 3 * near  # this frame enlarged (up to GIF palette error), not the other
            assert np.abs(frame[:gif_size // 4] - plain[:gif_size // 4]).max() > 100  # and a caption on top
    with pytest.raises(SystemExit, match="--meme-size"):
        lx.main(["edit", "--ckpt", tiny_ckpt, "--dirs", path, "--out", str(tmp_path / "bad"), "--meme-size", "-1"])


def test_noise_modes(tiny_ckpt):
    e = lx.load_explorer(tiny_ckpt)
    ws = lx.styles_for(e, lx.seed_w(e, 0))
    const1, const2 = e.synthesize(ws, "const"), e.synthesize(ws, "const")
    assert torch.equal(const1, const2)
    assert not torch.equal(e.synthesize(ws, "none"), const1)


def test_mix_figure_layout(tiny_ckpt, tmp_path):
    out = tmp_path / "mix.png"
    lx.main(["mix", "--ckpt", tiny_ckpt, "--rows", "0-1", "--cols", "3-5", "--out", str(out)])
    img = Image.open(out)
    # 16 px: 6 style slots -> coarse [0,4) and middle [4,6) bands; each block (1 + 2 rows) x (1 + 3 cols)
    assert img.size == (4 * 18 + 2, 2 * (3 * 18 + 2))
    # below 64 px no band name is drawn in the corner cells: a font that small is a smudge
    a = np.asarray(img.convert("RGB"))
    assert (a[2:18, 2:18] == 255).all() and (a[58:74, 2:18] == 255).all()
    sg2 = _sg2()
    g = sg2.Generator(64, style_dim=8, n_mlp=1, channel_multiplier=1, channel_max=4)
    path = str(tmp_path / "g64.pt")
    sg2.save_checkpoint(path, {"g_ema": g.state_dict(), "args": {"size": 64, "style_dim": 8, "n_mlp": 1,
                                                                 "channel_multiplier": 1, "channel_max": 4}})
    lx.main(["mix", "--ckpt", path, "--rows", "0", "--cols", "1", "--out", str(tmp_path / "mix64.png")])
    a = np.asarray(Image.open(tmp_path / "mix64.png").convert("RGB"))
    assert (a[2:66, 2:66] < 40).all(axis=2).any()  # at 64 px the corner names its band (black outline)


def test_ganspace_cli_and_bad_inputs(tiny_ckpt, tmp_path):
    path = str(tmp_path / "g.pt")
    lx.main(["ganspace", "--ckpt", tiny_ckpt, "--out", path, "--samples", "2000", "--components", "5",
             "--batch", "1000"])
    d = torch.load(path, weights_only=True)
    assert d["directions"].shape == (5, 32) and torch.all(d["values"][:-1] >= d["values"][1:])
    with pytest.raises(SystemExit, match="no such checkpoint"):
        lx.main(["sefa", "--ckpt", str(tmp_path / "missing.pt"), "--out", path])
    bad = tmp_path / "bad.pt"
    torch.save({"x": torch.zeros(2)}, bad)
    with pytest.raises(lx.ExploreError, match="not a directions file"):
        lx.load_directions(str(bad))


def v1_checkpoint(tmp_path):
    """A random 16 px StyleGAN v1 generator saved as 02 saves it (g_running, code_dim 32): its path."""
    sg1 = load_script("02_stylegan_freezed")
    torch.manual_seed(2)
    g = sg1.StyledGenerator(code_dim=32, n_mlp=2, channels=sg1.scaled_channels(16))
    path = str(tmp_path / "v1.pt")
    sg1.save_checkpoint(path, {"g_running": g.state_dict(), "args": {"size": 16}})
    return path


def test_stylegan_v1_checkpoint_sefa_and_edit(tmp_path):
    path = v1_checkpoint(tmp_path)
    e = lx.load_explorer(path)
    assert e.family == "stylegan" and e.n_latent == 3 and e.size == 16  # blocks 4, 8, 16 px
    weights = e.style_weights(range(e.n_latent))
    assert [w.shape for _, w in weights] == [torch.Size([64, 32])] * 3  # adain1 + adain2 rows (2C each)
    d = lx.sefa([w for _, w in weights])
    frames = lx.edit_frames(e, d["directions"][0], 1, [0.0, 4.0], [0, 1, 2])
    base = e.synthesize(lx.styles_for(e, lx.seed_w(e, 1)))
    assert np.array_equal(np.asarray(frames[0]), np.asarray(lx.to_pil(base[0])))
    assert frames[0].size == (16, 16) and not np.array_equal(np.asarray(frames[0]), np.asarray(frames[1]))


# ---- projection -------------------------------------------------------------------------------------

ROUND_TRIP_STEPS = 200   # NVIDIA's other defaults (lr 0.1, noise factor 0.05, ramps, noise weight 1e5)
W_BOUND_DB = 3.0         # W may be worse than W+ by at most this much on an image the generator made from one w


def _projection_generator():
    """16 px, style_dim 32: ToRGB weights scaled by 0.15 so that images stay near [-1, 1] as a trained
    generator's do (random ones overshoot and clip), noise strengths 0.05 so the noise maps matter."""
    sg2 = _sg2()
    torch.manual_seed(1)
    g = sg2.Generator(16, style_dim=32, n_mlp=2, channel_multiplier=1, channel_max=16)
    with torch.no_grad():
        for name, p in g.named_parameters():
            if "to_rgb" in name and name.endswith("conv.weight"):
                p.mul_(0.15)
            if name.endswith("noise.weight"):
                p.fill_(0.05)
    return g


@pytest.fixture(scope="module")
def proj_ckpt(tmp_path_factory):
    """The projection generator in our checkpoint format, with a discriminator (the offline distance)."""
    sg2 = _sg2()
    g = _projection_generator()
    d = sg2.Discriminator(16, channel_multiplier=1, channel_max=16)
    path = str(tmp_path_factory.mktemp("proj") / "g.pt")
    sg2.save_checkpoint(path, {"g_ema": g.state_dict(), "d": d.state_dict(),
                               "args": {"size": 16, "style_dim": 32, "n_mlp": 2, "channel_multiplier": 1,
                                        "channel_max": 16}})
    return path


def _psnr(a, b):  # independent of lx.psnr
    mse = ((np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2).mean()
    return 10 * np.log10(255.0 ** 2 / mse)


def test_round_trip_w_plus_reaches_30_db_and_w_stays_within_bound():
    """A target the generator made from a known w (seed 7, const noise), saved as uint8 as a PNG would be,
    is projected back with pixel MSE: W+ >= 30 dB, >= 10 dB above the mean-w image, W within 3 dB of W+."""
    e = lx.StyleGAN2Explorer(_projection_generator())
    target = np.asarray(lx.to_pil(e.synthesize(lx.styles_for(e, lx.seed_w(e, 7)))[0]))
    stats = lx.w_stats(e)
    mean_img = np.asarray(lx.to_pil(e.synthesize(lx.styles_for(e, stats[0]))[0]))
    dist = lx.FeatureDistance("pixel MSE", None, None, 1.0)
    got = {}
    for plus in (True, False):
        result = lx.project(e, lx.uint8_to_tensor(target), dist, steps=ROUND_TRIP_STEPS, w_plus=plus,
                            stats=stats, bar=False)
        got[plus] = _psnr(np.asarray(lx.to_pil(result["image"][0])), target)
        assert (result["w"] is None) == plus
    assert got[True] >= 30.0, got
    assert got[True] >= _psnr(mean_img, target) + 10.0
    assert got[False] >= got[True] - W_BOUND_DB, got


def test_learning_rate_and_noise_ramps_follow_the_formulas():
    # hand-evaluated points of NVIDIA's schedule (lr 0.1, ramp-up 0.05, ramp-down 0.25)
    assert lx.learning_rate(0.0) == 0.0                                 # ramp-up starts at 0
    assert lx.learning_rate(0.025) == pytest.approx(0.05)               # halfway up the linear ramp
    assert lx.learning_rate(0.5) == pytest.approx(0.1)                  # plateau
    assert lx.learning_rate(0.875) == pytest.approx(0.05)               # cos(pi / 2): half way down
    assert lx.learning_rate(0.8125) == pytest.approx(0.1 * (0.5 + 0.5 * np.sqrt(0.5)))  # (1-t)/0.25 = 0.75
    assert lx.w_noise_scale(0.0, 2.0) == pytest.approx(0.1)             # w_std * 0.05
    assert lx.w_noise_scale(0.375, 2.0) == pytest.approx(0.1 * 0.25)    # (1 - 0.5)^2
    assert lx.w_noise_scale(0.8, 2.0) == 0.0                            # after noise_ramp_length
    # and project() sets exactly that lr at every step t = step / steps
    e = lx.StyleGAN2Explorer(_projection_generator())
    target = e.synthesize(lx.styles_for(e, lx.seed_w(e, 3)))
    steps = 40
    result = lx.project(e, target, lx.FeatureDistance("mse", None, None, 1.0), steps=steps,
                        stats=lx.w_stats(e, 500), bar=False)
    hist = result["history"]["lr"]
    for n in result["noises"]:   # renormalised after the last step: mean 0, mean square 1
        assert abs(float(n.mean())) < 1e-6 and float(n.square().mean()) == pytest.approx(1.0, abs=1e-5)
    for step, lr in enumerate(hist):
        t = step / steps
        want = 0.1 * min(1.0, t / 0.05) * (1 - np.cos(np.pi * min(1.0, (1 - t) / 0.25))) / 2
        assert lr == pytest.approx(want, abs=1e-12)


def test_noise_regularization_equals_a_numpy_loop():
    rng = np.random.RandomState(0)
    maps = [rng.randn(1, 1, r, r) for r in (4, 8, 16, 32)]
    want = 0.0
    for m in maps:
        x = m[0, 0]
        while True:
            # mean over pixels of x * (x shifted by one pixel, wrapping), along x then along y, squared
            want += np.mean(x * np.roll(x, 1, axis=1)) ** 2 + np.mean(x * np.roll(x, 1, axis=0)) ** 2
            if x.shape[0] <= 8:
                break
            x = x.reshape(x.shape[0] // 2, 2, x.shape[1] // 2, 2).mean(axis=(1, 3))  # 2x2 average
    got = lx.noise_regularization([torch.from_numpy(m) for m in maps])
    assert float(got) == pytest.approx(want, rel=1e-10)
    ns = [torch.from_numpy(m * 3 + 1) for m in maps]
    lx.normalize_noise_(ns)
    for n in ns:
        assert abs(float(n.mean())) < 1e-12 and float(n.square().mean()) == pytest.approx(1.0)


def test_w_stats_match_numpy():
    e = lx.StyleGAN2Explorer(_projection_generator())
    w_avg, w_std = lx.w_stats(e, 3000)
    z = np.random.RandomState(123).randn(3000, 32)   # NVIDIA's z for the W statistics
    w = e.mapping(torch.from_numpy(z).float()).double().numpy()
    assert np.allclose(w_avg.numpy()[0], w.mean(0), atol=1e-5)
    assert w_std == pytest.approx(np.sqrt(((w - w.mean(0)) ** 2).sum() / 3000), rel=1e-5)


def test_project_cli_outputs_and_edit_of_projected_latent_equals_direct_edit(proj_ckpt, tmp_path, capsys):
    e = lx.load_explorer(proj_ckpt)
    img = tmp_path / "face.png"
    Image.fromarray(np.asarray(lx.to_pil(e.synthesize(lx.styles_for(e, lx.seed_w(e, 2)))[0]))).resize(
        (40, 24)).save(img)  # another size and not square: centre-cropped and resized
    out = tmp_path / "proj"
    lx.main(["project", "--ckpt", proj_ckpt, "--image", str(img), "--out", str(out), "--steps", "12",
             "--w-plus", "--video"])
    printed = capsys.readouterr().out
    assert "distance: discriminator features + pixel MSE" in printed       # the offline default, printed
    rec = json.loads((out / "face_distances.json").read_text())
    assert rec["distance"] == "discriminator features + pixel MSE" and rec["space"] == "w+" and rec["steps"] == 12
    proj = np.asarray(Image.open(out / "face_proj.png"))
    assert rec["psnr_db"] == pytest.approx(_psnr(proj, lx.load_target(str(img), 16)), abs=1e-6)
    assert Image.open(out / "face_compare.png").size == (2 * 18 + 2, 18 + 2)
    assert Image.open(out / "face_proj.gif").n_frames == 12
    lat = torch.load(out / "face_latent.pt", weights_only=True)
    assert lat["ws"].shape == (1, e.n_latent, 32) and lat["space"] == "w+" and len(lat["noises"]) == 5
    # the latent file renders the saved reconstruction exactly
    assert np.array_equal(np.asarray(lx.to_pil(e.synthesize(lat["ws"], noises=lat["noises"])[0])), proj)
    # edit --latent == apply_edit on the same ws with the same noise maps
    dirs = tmp_path / "d.pt"
    lx.main(["sefa", "--ckpt", proj_ckpt, "--out", str(dirs)])
    d = torch.load(dirs, weights_only=True)
    lx.main(["edit", "--ckpt", proj_ckpt, "--dirs", str(dirs), "--latent", str(out / "face_latent.pt"),
             "--index", "0", "--degrees", "0,3", "--out", str(tmp_path / "ed")])
    direct = [lx.to_pil(e.synthesize(lx.apply_edit(lat["ws"], d["directions"][0], deg, list(range(e.n_latent))),
                                     noises=lat["noises"])[0]) for deg in (0.0, 3.0)]
    gif = Image.open(tmp_path / "ed" / "face_dir00.gif")
    assert gif.n_frames == 2
    edited = Image.open(tmp_path / "ed" / "grid_dir00.png").convert("RGB")
    for k, want in enumerate(direct):
        cell = np.asarray(edited)[2:18, 2 + k * 18:18 + k * 18]
        assert np.array_equal(cell, np.asarray(want))
    assert np.array_equal(np.asarray(direct[0]), proj)
    # a second run into the same folder refuses to replace the first one's files
    with pytest.raises(SystemExit, match="exists"):
        lx.main(["project", "--ckpt", proj_ckpt, "--image", str(img), "--out", str(out), "--steps", "2"])


def test_w_projection_latent_file_round_trips_exactly(proj_ckpt, tmp_path):
    e = lx.load_explorer(proj_ckpt)
    target = np.asarray(lx.to_pil(e.synthesize(lx.styles_for(e, lx.seed_w(e, 4)))[0]))
    result, _ = lx.project_image(e, target, lx.FeatureDistance("mse", None, None, 1.0), 5, False,
                                 stats=lx.w_stats(e, 500), bar=False)
    path = str(tmp_path / "x_latent.pt")
    lx.save_latent(path, e, result)
    lat = lx.load_latent(path, e)
    assert torch.equal(lat["ws"], result["ws"]) and torch.equal(lat["w"], result["w"])
    assert lat["space"] == "w" and torch.equal(lat["ws"], result["w"][:, None].expand(1, e.n_latent, -1))
    assert all(torch.equal(a, b) for a, b in zip(lat["noises"], result["noises"]))


def test_latent_from_another_checkpoint_is_one_line(proj_ckpt, tiny_ckpt, tmp_path, capsys):
    other = _sg2().Generator(16, style_dim=16, n_mlp=2, channel_multiplier=1, channel_max=16)
    e_other = lx.StyleGAN2Explorer(other)
    e_other.path = "other.pt"
    result = {"ws": torch.zeros(1, e_other.n_latent, 16), "w": None, "noises": e_other.noise_maps()}
    path = str(tmp_path / "o_latent.pt")
    lx.save_latent(path, e_other, result)
    dirs = tmp_path / "d.pt"
    lx.main(["sefa", "--ckpt", proj_ckpt, "--out", str(dirs)])
    with pytest.raises(SystemExit, match=r"6 style slots x 16 dims, but .* 6 x 32 \(projected with another"):
        lx.main(["edit", "--ckpt", proj_ckpt, "--dirs", str(dirs), "--latent", path, "--out", str(tmp_path / "e")])
    assert not (tmp_path / "e").exists()
    # same shape, another generator: it runs, with a warning naming both fingerprints
    e_tiny = lx.load_explorer(tiny_ckpt)
    lx.save_latent(path, e_tiny, {"ws": torch.zeros(1, 6, 32), "w": None, "noises": e_tiny.noise_maps()})
    lx.main(["edit", "--ckpt", proj_ckpt, "--dirs", str(dirs), "--latent", path, "--degrees", "0,1",
             "--out", str(tmp_path / "e2")])
    err = capsys.readouterr().err
    assert "projected with another generator" in err and lx.fingerprint(e_tiny) in err


def test_unreadable_image_is_one_line_and_nothing_is_written(proj_ckpt, tmp_path):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not a png at all")
    with pytest.raises(SystemExit, match=r"bad\.png: not a readable image") as err:
        lx.main(["project", "--ckpt", proj_ckpt, "--image", str(bad), "--out", str(tmp_path / "o")])
    assert "\n" not in str(err.value) and not (tmp_path / "o").exists()


def test_load_target_matches_03s_data_loader(tmp_path):
    """Centre crop + Lanczos, alpha on white: the same pixels 03's ImageFolderDataset gives for training."""
    rng = np.random.RandomState(0)
    folder = tmp_path / "imgs"
    folder.mkdir()
    Image.fromarray(rng.randint(0, 256, (30, 50, 4), dtype=np.uint8), "RGBA").save(folder / "a.png")
    ds = _sg2().ImageFolderDataset(str(folder), 16, xflip=False)
    want = ((ds[0] if torch.is_tensor(ds[0]) else ds[0][0]).float() + 1) * 127.5
    got = lx.load_target(str(folder / "a.png"), 16)
    assert np.abs(got.astype(float) - want.permute(1, 2, 0).numpy()).max() <= 0.5


@pytest.mark.filterwarnings("ignore::FutureWarning")  # torch.jit.script/save, used only to make a TorchScript file
def test_vgg_distance_is_lpips_eq1_and_loads_torchvision_keys(tmp_path):
    torch.manual_seed(0)
    net = lx.VGG16Features({k: v for k, v in _random_vgg_state().items()})
    path = tmp_path / "vgg16.pth"
    torch.save({f"features.{k}": v for k, v in net.features.state_dict().items()}
               | {"classifier.0.weight": torch.zeros(2, 2)}, path)
    loaded = lx.load_vgg16(str(path))
    x, y = torch.rand(1, 3, 32, 32) * 2 - 1, torch.rand(1, 3, 32, 32) * 2 - 1
    dist = lx.FeatureDistance("vgg", loaded, None, 0.0)
    got, _ = dist(x, dist.prepare(y))
    # LPIPS Eq. 1 with unit layer weights, written out: features at relu1_2 .. relu5_3 of a plain run
    shift = torch.tensor([-0.030, -0.088, -0.188]).view(1, 3, 1, 1)
    scale = torch.tensor([0.458, 0.448, 0.450]).view(1, 3, 1, 1)
    want = 0.0
    fx, fy = (x - shift) / scale, (y - shift) / scale
    for i, layer in enumerate(net.features[:30]):
        fx, fy = layer(fx), layer(fy)
        if i in (3, 8, 15, 22, 29):
            nx = fx / (fx.norm(dim=1, keepdim=True) + 1e-10)
            ny = fy / (fy.norm(dim=1, keepdim=True) + 1e-10)
            want += float(((nx - ny) ** 2).sum(1).mean())
    assert float(got) == pytest.approx(want, rel=1e-5)
    script = tmp_path / "ts.pt"
    torch.jit.save(torch.jit.script(torch.nn.ReLU()), str(script))
    with pytest.raises(lx.ExploreError, match="TorchScript"):
        lx.load_vgg16(str(script))


def _random_vgg_state():
    sd, c, i = {}, 3, 0
    for v in lx.VGG16_CFG:
        if v == "M":
            i += 1
            continue
        sd[f"{i}.weight"] = torch.randn(v, c, 3, 3) * np.sqrt(2 / (9 * c))
        sd[f"{i}.bias"] = torch.zeros(v)
        c, i = v, i + 2
    return sd


def test_distance_choice_vgg_then_d_then_mse(proj_ckpt, tiny_ckpt, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(lx, "hub_vgg16_file", lambda: None)
    assert lx.make_distance(lx.load_explorer(proj_ckpt)).name == "discriminator features + pixel MSE"
    assert lx.make_distance(lx.load_explorer(tiny_ckpt)).name == "pixel MSE"      # no 'd' in that file
    assert "holds no discriminator" in capsys.readouterr().err
    with pytest.raises(lx.ExploreError, match="needs VGG16 weights"):
        lx.make_distance(lx.load_explorer(proj_ckpt), "vgg")
    path = tmp_path / "vgg.pth"
    torch.save(_random_vgg_state(), path)
    monkeypatch.setattr(lx, "hub_vgg16_file", lambda: str(path))
    assert "VGG16" in lx.make_distance(lx.load_explorer(proj_ckpt)).name


def test_stylegan_v1_projection_beats_the_mean_image(tmp_path):
    path = v1_checkpoint(tmp_path)
    e = lx.load_explorer(path)
    target = np.asarray(lx.to_pil(e.synthesize(lx.styles_for(e, lx.seed_w(e, 5)))[0]))
    stats = lx.w_stats(e, 1000)
    mean_img = np.asarray(lx.to_pil(e.synthesize(lx.styles_for(e, stats[0]))[0]))
    result, rec = lx.project_image(e, target, lx.make_distance(e, "mse"), 60, True, stats=stats, bar=False)
    assert rec["distance"] == "pixel MSE" and len(result["noises"]) == 3
    assert _psnr(np.asarray(lx.to_pil(result["image"][0])), target) > _psnr(mean_img, target) + 5


# ---- mixing bands -----------------------------------------------------------------------------------

def _slot_px(family, s):
    """Resolution a style slot belongs to: v1 one slot per block (4 * 2^s), v2 two per resolution."""
    return 4 * 2 ** s if family == "stylegan" else 4 * 2 ** (s // 2)


BANDS_PX = {"coarse": (4, 8), "middle": (16, 32), "fine": (64, 1024)}  # StyleGAN Sec. 3.1


@pytest.mark.parametrize("family", ["stylegan", "stylegan2"])
def test_mix_cells_take_their_band_from_the_row_and_differ_from_both(family, tiny_ckpt, tmp_path):
    if family == "stylegan":
        sg1 = load_script("02_stylegan_freezed")
        torch.manual_seed(2)
        g = sg1.StyledGenerator(code_dim=32, n_mlp=2, channels=sg1.scaled_channels(16))
        path = str(tmp_path / "v1.pt")
        sg1.save_checkpoint(path, {"g_running": g.state_dict(), "args": {"size": 64}})
    else:
        sg2 = _sg2()
        torch.manual_seed(3)
        g = sg2.Generator(64, style_dim=32, n_mlp=2, channel_multiplier=1, channel_max=16)
        path = str(tmp_path / "v2.pt")
        sg2.save_checkpoint(path, {"g_ema": g.state_dict(), "args": {"size": 64, "channel_multiplier": 1,
                                                                     "channel_max": 16}})
    e = lx.load_explorer(path)
    rows, cols = [0, 1], [5, 6]
    sheet, cells, row_imgs, col_imgs = lx.mix_figure(e, rows, cols, 0.7)
    assert sorted(cells) == ["coarse", "fine", "middle"]
    for band, (lo, hi) in BANDS_PX.items():
        from_row = [s for s in range(e.n_latent) if lo <= _slot_px(family, s) <= hi]
        for i, r in enumerate(rows):
            ws = lx.styles_for(e, torch.cat([lx.seed_w(e, c) for c in cols]), 0.7).clone()   # columns: source A
            ws[:, from_row] = lx.styles_for(e, lx.seed_w(e, r), 0.7)[:, from_row]          # band from row B
            want = [np.asarray(lx.to_pil(x)) for x in e.synthesize(ws)]   # one batch, as the figure renders
            for j in range(len(cols)):
                cell = np.asarray(cells[band][i][j])
                assert np.array_equal(cell, want[j])
                assert not np.array_equal(cell, np.asarray(row_imgs[i]))
                assert not np.array_equal(cell, np.asarray(col_imgs[j]))
    out = tmp_path / "sub" / "mix.png"
    lx.main(["mix", "--ckpt", path, "--rows", "0-1", "--cols", "5-6", "--out", str(out)])
    assert Image.open(out).size == (3 * 66 + 2, 3 * (3 * 66 + 2))


# ---- bad input: one line each -----------------------------------------------------------------------

@pytest.mark.parametrize("flag,value,message", [
    ("--seeds", "-3", "negative"), ("--seeds", "abc", "expected non-negative integers"),
    ("--seeds", "3-1", "runs backwards"), ("--seeds", "4294967296", "seeds go up to 4294967295")])
def test_bad_seeds_are_one_line(tiny_ckpt, tmp_path, flag, value, message):
    dirs = tmp_path / "d.pt"
    lx.main(["sefa", "--ckpt", tiny_ckpt, "--out", str(dirs)])
    with pytest.raises(SystemExit, match=message) as err:
        lx.main(["edit", "--ckpt", tiny_ckpt, "--dirs", str(dirs), flag, value, "--out", str(tmp_path / "e")])
    assert str(err.value).startswith("error: ") and "\n" not in str(err.value)
    assert not (tmp_path / "e").exists()


def test_mix_negative_rows_is_one_line(tiny_ckpt, tmp_path):
    with pytest.raises(SystemExit, match="--rows '-3': negative"):
        lx.main(["mix", "--ckpt", tiny_ckpt, "--rows", "-3", "--out", str(tmp_path / "m.png")])
    assert not (tmp_path / "m.png").exists()


def test_directions_of_another_style_size_are_one_line_and_leave_no_folder(tiny_ckpt, tmp_path):
    path = tmp_path / "d16.pt"
    torch.save({"directions": torch.eye(16), "values": torch.ones(16), "method": "sefa", "layers": [0]}, path)
    with pytest.raises(SystemExit, match="directions of dimension 16, but .* style dimension 32") as err:
        lx.main(["edit", "--ckpt", tiny_ckpt, "--dirs", str(path), "--out", str(tmp_path / "edits")])
    assert "\n" not in str(err.value)
    assert not (tmp_path / "edits").exists()


def test_directions_from_another_generator_of_the_same_size_warn(tiny_ckpt, proj_ckpt, tmp_path, capsys):
    dirs = tmp_path / "d.pt"
    lx.main(["sefa", "--ckpt", proj_ckpt, "--out", str(dirs)])
    assert torch.load(dirs, weights_only=True)["checkpoint"] == lx.fingerprint(lx.load_explorer(proj_ckpt))
    capsys.readouterr()
    lx.main(["edit", "--ckpt", proj_ckpt, "--dirs", str(dirs), "--seeds", "0", "--degrees", "0,1",
             "--out", str(tmp_path / "same")])
    assert "warning" not in capsys.readouterr().err
    lx.main(["edit", "--ckpt", tiny_ckpt, "--dirs", str(dirs), "--seeds", "0", "--degrees", "0,1",
             "--out", str(tmp_path / "other")])
    err = capsys.readouterr().err
    assert "was made from another generator" in err and lx.fingerprint(lx.load_explorer(tiny_ckpt)) in err


@pytest.mark.parametrize("cmd", ["sefa", "ganspace"])
def test_directions_never_replace_an_existing_file_without_overwrite(tiny_ckpt, tmp_path, cmd):
    out = tmp_path / "notes.pt"
    out.write_bytes(b"the user's own file")
    extra = ["--samples", "2000", "--batch", "1000"] if cmd == "ganspace" else []
    with pytest.raises(SystemExit, match="notes.pt exists \\(pass --overwrite"):
        lx.main([cmd, "--ckpt", tiny_ckpt, "--out", str(out)] + extra)
    assert out.read_bytes() == b"the user's own file"
    lx.main([cmd, "--ckpt", tiny_ckpt, "--out", str(out), "--overwrite"] + extra)
    assert torch.load(out, weights_only=True)["method"] == cmd


@pytest.mark.parametrize("cmd", ["sefa", "ganspace"])
def test_directions_out_into_a_new_folder(tiny_ckpt, tmp_path, cmd):
    out = tmp_path / "new" / "deeper" / "d.pt"
    lx.main([cmd, "--ckpt", tiny_ckpt, "--out", str(out), "--samples", "500", "--batch", "250"]
            if cmd == "ganspace" else [cmd, "--ckpt", tiny_ckpt, "--out", str(out)])
    assert torch.load(out, weights_only=True)["method"] == cmd
    assert os.listdir(out.parent) == ["d.pt"]   # no temp file left behind


def test_library_errors_are_exceptions_and_format_is_chosen_by_keys(tmp_path, monkeypatch):
    # a bug inside 03's loader must surface as itself, never as "try StyleGAN v1"
    sg2 = _sg2()
    torch.manual_seed(0)
    g = sg2.Generator(16, style_dim=32, n_mlp=2, channel_multiplier=1, channel_max=16)
    path = str(tmp_path / "g.pt")
    sg2.save_checkpoint(path, {"g_ema": g.state_dict()})

    def broken(*args, **kwargs):
        raise KeyError("bug in the loader")
    monkeypatch.setattr(sg2, "load_generator", broken)
    with pytest.raises(KeyError, match="bug in the loader"):
        lx.main(["sefa", "--ckpt", path, "--out", str(tmp_path / "d.pt")])
    with pytest.raises(lx.ExploreError):
        lx.parse_seeds("x")


def test_every_flag_has_help():
    parser = lx.build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    for name, sp in sub.choices.items():
        for action in sp._actions:
            if action.option_strings and action.dest != "help":
                assert action.help, f"{name} {action.option_strings[0]} has no help"


def test_stylegan_v1_project_cli_uses_its_discriminator_and_bare_files_load_as_v1(tmp_path):
    sg1 = load_script("02_stylegan_freezed")
    torch.manual_seed(4)
    g = sg1.StyledGenerator(code_dim=32, n_mlp=2, channels=sg1.scaled_channels(16))
    d = sg1.Discriminator(channels=sg1.scaled_channels(16))
    path = str(tmp_path / "v1.pt")
    sg1.save_checkpoint(path, {"generator": g.state_dict(), "g_running": g.state_dict(),
                               "discriminator": d.state_dict(), "args": {"size": 16}})
    e = lx.load_explorer(path)
    Image.fromarray(np.asarray(lx.to_pil(e.synthesize(lx.styles_for(e, lx.seed_w(e, 1)))[0]))).save(tmp_path / "t.png")
    lx.main(["project", "--ckpt", path, "--image", str(tmp_path / "t.png"), "--out", str(tmp_path / "p"),
             "--steps", "3"])
    rec = json.loads((tmp_path / "p" / "t_distances.json").read_text())
    assert rec["distance"] == "discriminator features + pixel MSE" and rec["space"] == "w"
    lat = lx.load_latent(str(tmp_path / "p" / "t_latent.pt"), e)
    assert lat["family"] == "stylegan" and lat["ws"].shape == (1, 3, 32)
    bare = str(tmp_path / "bare.pt")
    torch.save(g.state_dict(), bare)                       # a bare g_running state dict: v1 by its keys
    assert lx.checkpoint_family(bare) == "stylegan" and lx.load_explorer(bare, size=16).family == "stylegan"


def test_mix_with_a_projected_latent_as_the_row(proj_ckpt, tmp_path):
    e = lx.load_explorer(proj_ckpt)
    torch.manual_seed(5)
    ws = lx.styles_for(e, lx.seed_w(e, 3)) + 0.3 * torch.randn(1, e.n_latent, 32)   # a W+ latent
    noises = [torch.randn_like(n) for n in e.noise_maps()]
    path = str(tmp_path / "me_latent.pt")
    lx.save_latent(path, e, {"ws": ws, "w": None, "noises": noises})
    sheet, cells, row_imgs, col_imgs = lx.mix_figure(e, None, [1, 2], 1.0, row_latents=[(ws, noises)])
    assert np.array_equal(np.asarray(row_imgs[0]), np.asarray(lx.to_pil(e.synthesize(ws, noises=noises)[0])))
    want = lx.styles_for(e, lx.seed_w(e, 2)).clone()
    want[:, :4] = ws[:, :4]                                     # coarse slots from the row
    assert np.array_equal(np.asarray(cells["coarse"][0][1]), np.asarray(lx.to_pil(e.synthesize(want, noises=noises)[0])))
    out = tmp_path / "mix.png"
    lx.main(["mix", "--ckpt", proj_ckpt, "--latent", path, "--cols", "1-2", "--out", str(out)])
    assert Image.open(out).size == (3 * 18 + 2, 2 * (2 * 18 + 2))
    with pytest.raises(SystemExit, match="not both"):
        lx.main(["mix", "--ckpt", proj_ckpt, "--latent", path, "--rows", "0", "--out", str(out)])


def test_mix_never_replaces_an_existing_file_and_needs_an_image_name(tiny_ckpt, tmp_path):
    mine = tmp_path / "mine.png"
    Image.new("RGB", (4, 4), (1, 2, 3)).save(mine)
    before = mine.read_bytes()
    with pytest.raises(SystemExit, match="mine.png exists \\(pass --overwrite"):
        lx.main(["mix", "--ckpt", tiny_ckpt, "--rows", "0", "--cols", "1", "--out", str(mine)])
    assert mine.read_bytes() == before
    with pytest.raises(SystemExit, match="not an image file name"):
        lx.main(["mix", "--ckpt", tiny_ckpt, "--rows", "0", "--cols", "1", "--out", str(tmp_path / "m.txt")])
    assert not (tmp_path / "m.txt").exists()
    lx.main(["mix", "--ckpt", tiny_ckpt, "--rows", "0", "--cols", "1", "--out", str(mine), "--overwrite"])
    assert Image.open(mine).size != (4, 4)
