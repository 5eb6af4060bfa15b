"""CDC (Ojha et al. 2021) in 03_stylegan2_ada.py: the distance consistency against a numpy
computation of Eq. 2-3 as the official code evaluates it, the frozen source, the anchor / patch
schedule, the patch head with FreezeD, and exact resume of a CDC run."""
import argparse
import json
import os

import numpy as np
import pytest
import torch

from conftest import load_script, random_image_folder

SCRIPT = "03_stylegan2_ada"


@pytest.fixture(scope="module")
def m():
    return load_script(SCRIPT)


def tiny_g(m, size=32, seed=0):
    torch.manual_seed(seed)
    return m.Generator(size, style_dim=16, n_mlp=2, channel_max=16)


def softmax(x):
    e = np.exp(x - x.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def test_distance_loss_is_the_kl_of_softmaxed_cosine_similarities_by_hand(m):
    rng = np.random.RandomState(0)
    n = 5
    src = [rng.randn(n, 3, 4, 4) for _ in range(4)]
    tgt = [rng.randn(n, 3, 4, 4) for _ in range(4)]
    layer_of = np.array([1, 3, 2, 1, 3])
    got = m.cdc_distance_loss([torch.tensor(f) for f in src], [torch.tensor(f) for f in tgt],
                              torch.tensor(layer_of)).item()

    def y(feats):  # Eq. 2 by hand: row i over j != i, at the anchor's layer
        rows = []
        for i in range(n):
            f = feats[layer_of[i]].reshape(n, -1)
            cos = f @ f[i] / (np.linalg.norm(f, axis=1) * np.linalg.norm(f[i]))
            rows.append(np.delete(cos, i))
        return softmax(np.array(rows))

    ys, yt = y(src), y(tgt)
    want = np.mean(ys * (np.log(ys) - np.log(yt)))  # torch KLDivLoss(log yt, ys), reduction "mean"
    assert got == pytest.approx(want, rel=1e-10)
    assert m.cdc_distance_loss([torch.tensor(f) for f in src], [torch.tensor(f) for f in src],
                               torch.tensor(layer_of)).item() == pytest.approx(0, abs=1e-15)


def make_cdc(m, g, d, **kw):
    import copy
    return m.CrossDomainCorrespondence(copy.deepcopy(g), d, 8, **kw)


def test_the_source_gets_no_gradient_and_the_adapting_g_does(m):
    g = tiny_g(m)
    d = m.Discriminator(32, channel_max=16)
    cdc = make_cdc(m, g, d)
    with torch.no_grad():  # the adapting G moves away from the source
        for p in g.parameters():
            p.add_(0.05 * torch.randn_like(p))
    before = {k: v.clone() for k, v in cdc.g_source.state_dict().items()}
    loss = cdc.distance_loss(g)
    loss.backward()
    assert loss.item() > 0
    assert all(p.grad is None and not p.requires_grad for p in cdc.g_source.parameters())
    assert sum(float(p.grad.abs().sum()) for p in g.parameters() if p.grad is not None) > 0
    assert all(torch.equal(v, cdc.g_source.state_dict()[k]) for k, v in before.items())


def test_patch_logits_read_the_named_block_and_anchors_stay_near(m):
    g = tiny_g(m)
    d = m.Discriminator(32, channel_max=16)
    cdc = make_cdc(m, g, d, n_anchors=3, anchor_std=0.1)
    x = torch.randn(2, 3, 32, 32)
    assert cdc.block == 2 and cdc.patch_logits(d, x).shape == (2, 1, 8, 8)
    # the block's conv2 output, by hand: fromRGB, block 1, then block 2's conv1 and conv2
    h = d.convs[1](d.convs[0](x))
    torch.testing.assert_close(d.patch_features(x, 2), d.convs[2].conv2(d.convs[2].conv1(h)))
    z = cdc.anchor_z(600)
    nearest = torch.cdist(z, cdc.anchors).min(1).values
    assert nearest.max() < 0.1 * 16 ** 0.5 * 2.5 and float((z[:, None] - cdc.anchors).norm(dim=2).argmin(1).unique().numel()) == 3
    assert [cdc.anchor_iteration(i) for i in range(6)] == [True, False, False, False, True, False]
    with pytest.raises(ValueError, match="patch resolution 6"):
        m.CrossDomainCorrespondence(g, d, 6)


def tiny_flags():
    return ["--size", "32", "--channel-max", "16", "--style-dim", "16", "--n-mlp", "2", "--batch", "4",
            "--device", "cpu", "--num-workers", "0", "--no-progress", "--n-sample", "4", "--fid-every", "0",
            "--log-every", "1"]


def run(m, argv):
    parser = argparse.ArgumentParser()
    m.add_train_args(parser)
    return m.train(parser.parse_args(argv))


@pytest.fixture(scope="module")
def start(m, tmp_path_factory):
    g = tiny_g(m)
    d = m.Discriminator(32, channel_max=16)
    path = str(tmp_path_factory.mktemp("cdc") / "start.pt")
    m.save_checkpoint(path, {"g": g.state_dict(), "d": d.state_dict(), "g_ema": g.state_dict(),
                             "args": dict(size=32, style_dim=16, n_mlp=2, channel_multiplier=2,
                                          channel_max=16), "step": 0})
    data = random_image_folder(tmp_path_factory.mktemp("data"), 8, 32)
    return path, data


def test_a_cdc_run_trains_the_head_with_freezed_keeps_the_source_and_resumes_exactly(m, start, tmp_path):
    ckpt, data = start
    flags = tiny_flags() + ["--data", data, "--ckpt", ckpt, "--preset", "cdc", "--freeze-d", "1",
                            "--cdc-subspace-freq", "2", "--d-reg-every", "2", "--g-reg-every", "2"]
    run(m, flags + ["--out", str(tmp_path / "a"), "--iter", "4"])
    run(m, flags + ["--out", str(tmp_path / "b"), "--iter", "2"])
    run(m, ["--resume", str(tmp_path / "b"), "--iter", "4"])
    a = torch.load(tmp_path / "a" / "checkpoints" / "000004.pt", weights_only=True)
    b = torch.load(tmp_path / "b" / "checkpoints" / "000004.pt", weights_only=True)
    for key in ("g", "d", "g_ema", "cdc"):
        for name, t in a[key].items():
            assert torch.equal(t, b[key][name]), f"{key}.{name} differs after resume"
    first = torch.load(ckpt, weights_only=True)
    # G_s is the starting G, untouched; the head trained; FreezeD's blocks (fromRGB, block 1) stayed
    for name, t in first["g"].items():
        assert torch.equal(a["cdc"]["g_source." + name], t), name
    head0 = m.ConvLayer(16, 1, 3)  # a fresh head has zero bias: the trained one moved
    assert not torch.equal(a["cdc"]["patch_head.1.bias"], head0[1].bias.detach())
    for name, t in first["d"].items():
        if name.endswith(".kernel"):  # the blur filters are constants
            continue
        same = torch.equal(a["d"][name], t)
        assert same == name.startswith(("convs.0.", "convs.1.")), name
    log = [json.loads(x) for x in open(tmp_path / "a" / "log.jsonl")]
    dist = [r["cdc_dist"] for r in log if "cdc_dist" in r]
    # iteration 1: G = G_s (noise strengths 0), the same similarities: 0; then G moves and it grows
    assert len(dist) == 4 and dist[0] == 0 and all(v > 0 for v in dist[1:])


def test_cdc_needs_a_source_and_the_plain_step(m, start, tmp_path):
    ckpt, data = start
    with pytest.raises(SystemExit, match="CDC adapts a source model: give --ckpt"):
        run(m, tiny_flags() + ["--data", data, "--out", str(tmp_path / "a"), "--cdc-kl-weight", "1000"])
    with pytest.raises(SystemExit, match="CDC runs in the plain step only"):
        run(m, tiny_flags() + ["--data", data, "--ckpt", ckpt, "--out", str(tmp_path / "b"), "--preset", "cdc",
                               "--batch-gpu", "2"])
    with pytest.raises(SystemExit, match=r"--cdc-patch-res 32: a 32 px discriminator's blocks give 16, 8"):
        run(m, tiny_flags() + ["--data", data, "--ckpt", ckpt, "--out", str(tmp_path / "c"), "--preset", "cdc",
                               "--cdc-patch-res", "32"])
