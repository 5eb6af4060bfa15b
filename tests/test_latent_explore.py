"""04_latent_explore.py: SeFa and GANSpace against numpy, projection, edits, captions, GIFs, mixing, the UI."""
import os
import socket
import time

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
    assert gif.n_frames == 5 and gif.size == (16, 16)
    assert Image.open(out / "grid_dir01.png").size == (5 * 18 + 2, 2 * 18 + 2)


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


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ui_request_returns_image(tiny_ckpt, tmp_path):
    gr = pytest.importorskip("gradio", reason="gradio is an optional extra (requirements-ui.txt)")
    client_mod = pytest.importorskip("gradio_client", reason="gradio_client comes with gradio")
    e = lx.load_explorer(tiny_ckpt)
    d = lx.sefa([w for _, w in e.style_weights(range(e.n_latent))])
    demo = lx.build_ui(e, d, n_sliders=3)
    port = _free_port()
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    try:
        client = client_mod.Client(f"http://127.0.0.1:{port}/", verbose=False)
        result = client.predict(3, 0.7, 0, e.n_latent - 1, "", "", 1.0, 0.0, 0.0, api_name="/render")
        img = Image.open(result if isinstance(result, str) else result["path"])
        assert img.size == (16, 16)
        gif = client.predict(3, 0.7, 0, e.n_latent - 1, "", "", 1, 1.0, 0.0, 0.0, api_name="/gif")
        gif = Image.open(gif if isinstance(gif, str) else gif["path"])
        assert gif.n_frames == 11
    finally:
        demo.close()


def test_stylegan_v1_checkpoint_sefa_and_edit(tmp_path):
    sg1 = load_script("02_stylegan_freezed")
    torch.manual_seed(2)
    g = sg1.StyledGenerator(code_dim=32, n_mlp=2, channels=sg1.scaled_channels(16))
    path = str(tmp_path / "v1.pt")
    sg1.save_checkpoint(path, {"g_running": g.state_dict(), "args": {"size": 16}})
    e = lx.load_explorer(path)
    assert e.family == "stylegan" and e.n_latent == 3 and e.size == 16  # blocks 4, 8, 16 px
    weights = e.style_weights(range(e.n_latent))
    assert [w.shape for _, w in weights] == [torch.Size([64, 32])] * 3  # adain1 + adain2 rows (2C each)
    d = lx.sefa([w for _, w in weights])
    frames = lx.edit_frames(e, d["directions"][0], 1, [0.0, 4.0], [0, 1, 2])
    base = e.synthesize(lx.styles_for(e, lx.seed_w(e, 1)))
    assert np.array_equal(np.asarray(frames[0]), np.asarray(lx.to_pil(base[0])))
    assert frames[0].size == (16, 16) and not np.array_equal(np.asarray(frames[0]), np.asarray(frames[1]))


def test_ui_page_screenshot_shows_image_and_sliders(tiny_ckpt, tmp_path):
    """Headless Chromium renders the page: the generated image and the direction sliders are there."""
    import shutil
    import subprocess
    pytest.importorskip("gradio", reason="gradio is an optional extra (requirements-ui.txt)")
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("needs the Debian package chromium")
    e = lx.load_explorer(tiny_ckpt)
    demo = lx.build_ui(e, lx.sefa([w for _, w in e.style_weights(range(e.n_latent))]), n_sliders=3)
    port = _free_port()
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    try:
        shot = tmp_path / "ui.png"
        dom = subprocess.run(
            [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
             "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={tmp_path / 'p'}",
             "--virtual-time-budget=8000", "--window-size=1100,1000", "--dump-dom", f"http://127.0.0.1:{port}/"],
            capture_output=True, text=True, timeout=90).stdout
        subprocess.run(
            [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
             "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={tmp_path / 'q'}",
             "--virtual-time-budget=8000", "--window-size=1100,1000", f"--screenshot={shot}",
             f"http://127.0.0.1:{port}/"], capture_output=True, timeout=90)
        assert dom.count('type="range"') >= 3 + 3  # truncation, two layer bounds, three directions
        assert "direction 2" in dom and "<img" in dom
        pixels = np.asarray(Image.open(shot).convert("L"))
        assert pixels.std() > 5  # not a blank page
    finally:
        demo.close()
