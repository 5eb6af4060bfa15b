"""The source models shipped in demo_models/: the recorded hash, a weights-only load, the architecture
the demo expects (compared with freshly built networks), fp32 after loading, and that they learned the
source faces (their mean image matches the mean of freshly drawn source faces)."""
import hashlib
import json
import os

import numpy as np
import pytest
import torch

from conftest import ROOT, load_script

MODELS = os.path.join(ROOT, "demo_models")
RECORD = json.load(open(os.path.join(MODELS, "source_models.json")))
SIZES = sorted(RECORD)


def _sha256(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def _entry(size, key):
    entry = RECORD[size][key]
    return entry, os.path.join(MODELS, entry["file"])


def _source_mean_image(size, n=256):
    """Mean RGB image in [-1, 1] of n freshly drawn source-style faces, [3, H, W]."""
    prep = load_script("01_prepare_data")
    faces = np.stack([np.asarray(f) for f in prep.make_demo_faces(n, size=size, seed=1, style="source")])
    return torch.from_numpy(faces).float().div(127.5).sub(1).mean(0).permute(2, 0, 1)


def _corr(a, b):
    a, b = a.flatten() - a.mean(), b.flatten() - b.mean()
    return float((a @ b) / (a.norm() * b.norm()))


def _same_layout(module, sd):
    own = module.state_dict()
    assert list(sd) == list(own)
    assert all(tuple(sd[k].shape) == tuple(own[k].shape) for k in own)


@pytest.mark.parametrize("size", SIZES)
def test_record_hashes_and_size_budget(size):
    total = 0
    for key in ("stylegan2", "stylegan_v1"):
        entry, path = _entry(size, key)
        assert _sha256(path) == entry["sha256"]
        assert os.path.getsize(path) == entry["bytes"]
        assert entry["command"].startswith("python ") and entry["seconds"] > 0 and entry["iterations"] > 0
        total += entry["bytes"]
    assert total <= 8 * 2 ** 20  # both models, G + G_ema + D each


@pytest.mark.parametrize("size", SIZES)
def test_stylegan2_source_model(size):
    sg2 = load_script("03_stylegan2_ada")
    s = RECORD[size]["settings"]
    entry, path = _entry(size, "stylegan2")
    ck = torch.load(path, map_location="cpu", weights_only=True)
    assert {"g", "d", "g_ema", "latent_avg", "args"} <= set(ck)
    arch = dict(size=int(size), style_dim=s["style_dim"], n_mlp=s["n_mlp"], channel_max=s["channel_max"])
    for key in ("g", "g_ema"):
        _same_layout(sg2.Generator(**arch), ck[key])
    _same_layout(sg2.Discriminator(int(size), channel_max=s["channel_max"]), ck["d"])
    # 03's own loader (the one the demo's fine-tuning uses) gives an fp32 network equal to the stored values
    g, latent_avg = sg2.load_generator(path)
    assert all(p.dtype == torch.float32 for p in g.parameters())
    assert torch.equal(g.state_dict()["style.1.weight"], ck["g_ema"]["style.1.weight"].float())
    assert latent_avg.shape == (1, s["style_dim"])
    with torch.no_grad():
        img, _ = g([torch.randn(256, s["style_dim"], generator=torch.Generator().manual_seed(0))])
    assert img.shape == (256, 3, int(size), int(size)) and torch.isfinite(img).all()
    # a model that learned the source faces draws their average layout (a random one scores about 0)
    assert _corr(img.mean(0), _source_mean_image(int(size))) > 0.8


@pytest.mark.parametrize("size", SIZES)
def test_stylegan_v1_source_model(size):
    sg1 = load_script("02_stylegan_freezed")
    s = RECORD[size]["settings"]
    entry, path = _entry(size, "stylegan_v1")
    ck = torch.load(path, map_location="cpu", weights_only=True)
    assert {"generator", "discriminator", "g_running"} <= set(ck)
    channels = sg1.scaled_channels(s["channel_max"])
    for key in ("generator", "g_running"):
        _same_layout(sg1.StyledGenerator(s["style_dim"], 8, channels), ck[key])
    _same_layout(sg1.Discriminator(channels, from_rgb_activate=True), ck["discriminator"])
    g, _ = sg1.load_sampling_generator(path, torch.device("cpu"))
    assert all(p.dtype == torch.float32 for p in g.parameters())
    step = sg1.size_to_step(int(size))
    with torch.no_grad():
        img = g(torch.randn(256, s["style_dim"], generator=torch.Generator().manual_seed(0)), step=step, alpha=1)
    assert img.shape == (256, 3, int(size), int(size)) and torch.isfinite(img).all()
    assert _corr(img.mean(0), _source_mean_image(int(size))) > 0.8
