"""Tests of the training section of 03_stylegan2_ada.py: losses, lazy regularization, EMA, presets,
FreezeD/FreezeG, exact resume, Ctrl-C, FID during training and a 2-process torchrun (gloo) run.

CPU only, tiny networks (16-32 px, 16 channels, style_dim 16, 2 mapping layers)."""
import argparse
import copy
import json
import math
import os
import random
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from conftest import ROOT, load_script, random_image_folder

SCRIPT = "03_stylegan2_ada"


@pytest.fixture(scope="module")
def m():
    return load_script(SCRIPT)


def tiny_flags(size=16):
    return ["--size", str(size), "--channel-max", "16", "--style-dim", "16", "--n-mlp", "2",
            "--batch", "4", "--device", "cpu", "--num-workers", "0", "--no-progress",
            "--n-sample", "4", "--fid-every", "0", "--log-every", "1"]


def parse(m, argv):
    parser = argparse.ArgumentParser()
    m.add_train_args(parser)
    return parser.parse_args(argv)


def run(m, argv):
    return m.train(parse(m, argv))


def make_data(folder, size, n=8, seed=0):
    return random_image_folder(folder, n, size, seed)


@pytest.fixture(scope="module")
def data16(tmp_path_factory):
    return make_data(tmp_path_factory.mktemp("data16"), 16)


@pytest.fixture(scope="module")
def data32(tmp_path_factory):
    return make_data(tmp_path_factory.mktemp("data32"), 32)


def read_log(run_dir):
    with open(os.path.join(run_dir, "log.jsonl")) as f:
        return [json.loads(line) for line in f]


def load(path):
    return torch.load(path, map_location="cpu", weights_only=True)


# ---------------------------------------------------------------------------------------------
# Loss formulas and optimiser settings against hand computation
# ---------------------------------------------------------------------------------------------

def test_logistic_losses_match_softplus_by_hand(m):
    real = torch.tensor([[2.0], [-1.5], [0.3], [-7.0]])
    fake = torch.tensor([[-0.5], [4.0], [0.0], [1.25]])
    r, f = real.numpy().ravel().astype(np.float64), fake.numpy().ravel().astype(np.float64)
    # -log sigmoid(x) = log(1 + e^-x); -log(1 - sigmoid(x)) = log(1 + e^x)
    want_d = np.mean(np.log1p(np.exp(-r))) + np.mean(np.log1p(np.exp(f)))
    want_g = np.mean(-np.log(1 / (1 + np.exp(-f))))
    assert m.d_logistic_loss(real, fake).item() == pytest.approx(want_d, rel=1e-6)
    assert m.g_nonsaturating_loss(fake).item() == pytest.approx(want_g, rel=1e-6)


def test_r1_penalty_of_a_linear_discriminator_through_an_augmentation(m):
    torch.manual_seed(1)
    w = torch.randn(3, 4, 4, requires_grad=True)
    x = torch.randn(5, 3, 4, 4, requires_grad=True)
    # D(aug(x)) with aug(x) = 2 * flip(x) and D(y) = sum(w * y): grad_x = 2 * flip(w) for every sample
    logits = (w * (2 * x.flip(3))).flatten(1).sum(1, keepdim=True)
    penalty = m.d_r1_penalty(logits, x)
    want = 4 * float((w.detach().double() ** 2).sum())
    assert penalty.item() == pytest.approx(want, rel=1e-5)
    penalty.backward()  # create_graph=True: the penalty trains D; d/dw 4 |w|^2 = 8 w
    torch.testing.assert_close(w.grad, 8 * w.detach())


def test_path_length_penalty_of_a_linear_generator(m):
    torch.manual_seed(2)
    b, n_latent, dim, h = 3, 4, 5, 6
    A = torch.randn(n_latent, dim, 3 * h * h, dtype=torch.float64)
    latents = torch.randn(b, n_latent, dim, dtype=torch.float64, requires_grad=True)
    img = torch.einsum("bld,ldp->bp", latents, A).view(b, 3, h, h)
    pl_mean = torch.tensor(0.7, dtype=torch.float64)
    torch.manual_seed(3)
    penalty, new_mean, lengths = m.g_path_length_penalty(img, latents, pl_mean, decay=0.01)
    torch.manual_seed(3)
    y = (torch.randn(b, 3, h, h, dtype=torch.float64) / h).view(b, -1).numpy()  # N(0, I) / sqrt(H W)
    jty = np.einsum("ldp,bp->bld", A.numpy(), y)                                   # J_w^T y
    want_len = np.sqrt((jty ** 2).sum(2).mean(1))
    want_mean = 0.7 + 0.01 * (want_len.mean() - 0.7)
    np.testing.assert_allclose(lengths.detach().numpy(), want_len, rtol=1e-10)
    assert float(new_mean) == pytest.approx(want_mean, rel=1e-12)
    assert float(penalty) == pytest.approx(np.mean((want_len - want_mean) ** 2), rel=1e-10)


def test_lazy_regularization_corrects_lr_and_betas(m):
    p = [torch.nn.Parameter(torch.zeros(2))]
    for k, c in ((16, 16 / 17), (4, 0.8), (0, 1.0)):
        group = m.lazy_adam(p, 0.002, k).param_groups[0]
        assert group["lr"] == pytest.approx(0.002 * c, rel=1e-12)
        assert group["betas"][0] == 0.0
        assert group["betas"][1] == pytest.approx(math.exp(c * math.log(0.99)), rel=1e-12)


def test_ema_beta_nvlabs_rule(m):
    assert m.ema_beta(16, 10, 0, 0) == pytest.approx(2 ** (-16 / 10000), rel=1e-12)
    # ramp-up: ema_nimg = min(10000, 1000 * 0.05) = 50 images
    assert m.ema_beta(16, 10, 0.05, 1000) == pytest.approx(2 ** (-16 / 50), rel=1e-12)


def test_presets_resolve_and_explicit_flags_win(m):
    cfg, src = m.resolve_settings(parse(m, ["--preset", "freezed-ada"]))
    assert (cfg.augment, cfg.freeze_d, cfg.size, cfg.ada_kimg) == ("ada", 4, 256, 500)
    cfg, _ = m.resolve_settings(parse(m, ["--preset", "freezed-diffaug", "--size", "1024"]))
    assert (cfg.augment, cfg.freeze_d) == ("diffaug", 6)  # same two low-resolution blocks train
    cfg, _ = m.resolve_settings(parse(m, ["--preset", "freezed-ada", "--freeze-d", "2",
                                          "--augment", "none", "--ckpt", "start.pt"]))
    assert (cfg.augment, cfg.freeze_d, cfg.ada_kimg) == ("none", 2, 100)
    cfg, src = m.resolve_settings(parse(m, ["--ada-p", "0.3"]))
    assert (cfg.augment, cfg.ada_p) == ("ada", 0.3)
    assert {name: m.PRESETS[name]["augment"] for name in m.PRESETS} == {
        "baseline": "none", "freezed": "none", "diffaug": "diffaug", "ada": "ada",
        "freezed-diffaug": "diffaug", "freezed-ada": "ada", "freezeg": "none", "cdc": "ada"}
    # FreezeG (bryandlee/FreezeG): the two highest-resolution G blocks train, at any size
    for size, k in ((256, 5), (32, 2), (1024, 7)):
        cfg, _ = m.resolve_settings(parse(m, ["--preset", "freezeg", "--size", str(size)]))
        assert cfg.freeze_g == k and int(math.log2(size)) - 1 - cfg.freeze_g == 2, size
    with pytest.raises(SystemExit, match="freeze-d 9"):
        m.resolve_settings(parse(m, ["--size", "64", "--freeze-d", "9"]))


def test_dry_run_prints_settings_and_writes_nothing(m, tmp_path, capsys):
    out = tmp_path / "run"
    cfg = run(m, ["--data", str(tmp_path), "--out", str(out), "--preset", "ada", "--dry-run"])
    text = capsys.readouterr().out
    assert cfg.augment == "ada" and "preset ada" in text and "0.0016" in text  # G lr 0.002 * 4/5
    assert not out.exists()


# ---------------------------------------------------------------------------------------------
# One step of each preset from a checkpoint: what trains changes, what is frozen stays bit-identical
# ---------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def start_ckpt(m, tmp_path_factory):
    """A 32 px starting checkpoint in our format (random weights, real key names)."""
    torch.manual_seed(5)
    g = m.Generator(32, style_dim=16, n_mlp=2, channel_max=16)
    g_ema = m.Generator(32, style_dim=16, n_mlp=2, channel_max=16)
    d = m.Discriminator(32, channel_max=16)
    path = str(tmp_path_factory.mktemp("start") / "start.pt")
    args = dict(size=32, style_dim=16, n_mlp=2, channel_multiplier=2, channel_max=16)
    m.save_checkpoint(path, {"g": g.state_dict(), "d": d.state_dict(), "g_ema": g_ema.state_dict(),
                               "args": args, "step": 0})
    return path


def check_step(m, start, after, frozen_d=(), frozen_g=()):
    for net, frozen in (("d", frozen_d), ("g", frozen_g)):
        for name, before in start[net].items():
            if not before.is_floating_point() or name.startswith("noises.") or name.endswith("kernel"):
                continue  # buffers
            same = torch.equal(before, after[net][name])
            if name.startswith(tuple(frozen)):
                assert same, f"{net}.{name} is frozen but changed"
            else:
                assert not same, f"{net}.{name} should train but did not change"
    beta = 0.5 ** (4 / 10000)  # one iteration, batch 4, ema_kimg 10
    for name, p in after["g_ema"].items():
        if name.startswith("noises.") or name.endswith("kernel"):
            continue
        want = start["g_ema"][name] * beta + after["g"][name] * (1 - beta)
        torch.testing.assert_close(p, want, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("preset", ["baseline", "freezed", "diffaug", "ada", "freezed-diffaug",
                                    "freezed-ada"])
def test_one_step_of_each_preset(m, tmp_path, data32, start_ckpt, preset):
    out = str(tmp_path / preset)
    run(m, tiny_flags(32) + ["--data", data32, "--out", out, "--ckpt", start_ckpt,
                             "--preset", preset, "--iter", "1"])
    after = load(os.path.join(out, "checkpoints", "000001.pt"))
    start = load(start_ckpt)
    # FreezeD at 32 px: the presets' 4 blocks at 256 px become 1 -> fromRGB (convs.0) and convs.1
    frozen_d = ("convs.0.", "convs.1.") if preset.startswith("freezed") else ()
    check_step(m, start, after, frozen_d=frozen_d)
    assert after["args"]["augment"] == m.PRESETS[preset]["augment"]
    # iteration 0 runs R1 and path length; optimisers carry the lazy-regularization correction
    rec = read_log(out)[-1]
    assert all(math.isfinite(rec[k]) for k in ("d_loss", "g_loss", "r1", "path_length"))
    assert rec["r1"] > 0 and rec["path_length"] > 0
    assert after["d_optim"]["param_groups"][0]["lr"] == pytest.approx(0.002 * 16 / 17)
    assert after["g_optim"]["param_groups"][0]["lr"] == pytest.approx(0.002 * 4 / 5)
    d_params = [k for k in start["d"] if k.endswith(("weight", "bias"))]
    n_frozen = sum(1 for k in d_params if k.startswith(frozen_d))
    assert len(after["d_optim"]["state"]) == len(d_params) - n_frozen  # frozen: not in the optimiser


def test_freeze_g_keeps_mapping_and_lowest_blocks(m, tmp_path, data32, start_ckpt):
    out = str(tmp_path / "freezeg")
    run(m, tiny_flags(32) + ["--data", data32, "--out", out, "--ckpt", start_ckpt, "--iter", "1",
                             "--freeze-g", "2", "--freeze-d", "2"])
    after = load(os.path.join(out, "checkpoints", "000001.pt"))
    # FreezeG 2: mapping + block 0 (4x4) + block 1 (8x8); FreezeD 2: fromRGB + two blocks
    check_step(m, load(start_ckpt), after,
               frozen_g=("style.", "input.", "conv1.", "to_rgb1.", "convs.0.", "convs.1.", "to_rgbs.0."),
               frozen_d=("convs.0.", "convs.1.", "convs.2."))
    assert read_log(out)[-1]["path_length"] > 0  # path length still runs with a frozen mapping


def test_start_from_a_rosinality_training_checkpoint(m, tmp_path, data32, start_ckpt):
    """rosinality's train.py file: g, d, g_ema, optimisers, args as an argparse.Namespace, ada_aug_p."""
    ours = load(start_ckpt)
    path = str(tmp_path / "rosinality.pt")
    torch.save({"g": ours["g"], "d": ours["d"], "g_ema": ours["g_ema"], "g_optim": {}, "d_optim": {},
                "args": argparse.Namespace(size=32, channel_multiplier=2, latent=16, n_mlp=2, r1=10.0),
                "ada_aug_p": 0.3}, path)
    out = str(tmp_path / "run")
    run(m, tiny_flags(32) + ["--data", data32, "--out", out, "--ckpt", path, "--iter", "1"])
    check_step(m, ours, load(os.path.join(out, "checkpoints", "000001.pt")))


def test_ckpt_of_another_resolution_is_a_clear_error(m, tmp_path, data32, start_ckpt):
    with pytest.raises(SystemExit, match=r"start\.pt.*size 32.*--size 64"):
        run(m, tiny_flags(32)[2:] + ["--size", "64", "--data", data32, "--out", str(tmp_path / "r"),
                                     "--ckpt", start_ckpt])
    assert not (tmp_path / "r").exists()


def test_freezed_needs_discriminator_weights_in_the_ckpt(m, tmp_path, data32, start_ckpt):
    only_g = str(tmp_path / "converted.pt")  # like rosinality's converted FFHQ files: g_ema (+ latent_avg)
    m.save_checkpoint(only_g, {"g_ema": load(start_ckpt)["g_ema"], "latent_avg": torch.zeros(16)})
    with pytest.raises(SystemExit, match=r"converted\.pt.*no discriminator"):
        run(m, tiny_flags(32) + ["--data", data32, "--out", str(tmp_path / "r"), "--ckpt", only_g,
                                 "--preset", "freezed"])
    assert not (tmp_path / "r").exists()


def test_discriminator_of_another_architecture_names_the_difference(m, tmp_path, data32, start_ckpt):
    bad = str(tmp_path / "mixed.pt")
    ckpt = load(start_ckpt)
    ckpt["d"] = m.Discriminator(64, channel_max=16).state_dict()  # one block more than a 32 px D
    m.save_checkpoint(bad, ckpt)
    with pytest.raises(Exception, match=r"mixed\.pt \['d'\].*unexpected keys: convs\.4\."):
        run(m, tiny_flags(32) + ["--data", data32, "--out", str(tmp_path / "r"), "--ckpt", bad])
    assert not (tmp_path / "r").exists()


def test_sample_grid_layout(m, tmp_path):
    colours = torch.tensor([-1.0, -0.5, 0.25, 1.0])
    images = colours.view(4, 1, 1, 1).expand(4, 3, 2, 3).contiguous()  # 4 flat images, 2x3 px
    m.save_image_grid(images, str(tmp_path / "grid.png"), nrow=2)
    grid = np.asarray(Image.open(tmp_path / "grid.png"))
    assert grid.shape == (4, 6, 3)
    want = np.floor((colours.numpy() + 1) * 127.5 + 0.5).clip(0, 255)  # round half up: 0, 64, 159, 255
    for i, v in enumerate(want):
        r, q = divmod(i, 2)
        assert (grid[r * 2:(r + 1) * 2, q * 3:(q + 1) * 3] == v).all()


def test_refuses_a_non_empty_run_folder(m, tmp_path, data16):
    out = tmp_path / "run"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    with pytest.raises(SystemExit, match="--resume"):
        run(m, tiny_flags() + ["--data", data16, "--out", str(out), "--iter", "1"])
    assert os.listdir(out) == ["notes.txt"]


# ---------------------------------------------------------------------------------------------
# Resume, Ctrl-C
# ---------------------------------------------------------------------------------------------

def test_resume_equals_an_uninterrupted_run(m, tmp_path, data16):
    flags = tiny_flags() + ["--data", data16, "--augment", "ada", "--ada-kimg", "0.01",
                            "--ada-interval", "1", "--d-reg-every", "2", "--g-reg-every", "2"]
    run(m, flags + ["--out", str(tmp_path / "a"), "--iter", "4"])
    run(m, flags + ["--out", str(tmp_path / "b"), "--iter", "2"])
    run(m, ["--resume", str(tmp_path / "b"), "--iter", "4"])
    a = load(tmp_path / "a" / "checkpoints" / "000004.pt")
    b = load(tmp_path / "b" / "checkpoints" / "000004.pt")
    assert a["step"] == b["step"] == 4
    for key in ("g", "d", "g_ema"):
        for name in a[key]:
            assert torch.equal(a[key][name], b[key][name]), f"{key}.{name} differs after resume"
    for key in ("g_optim", "d_optim"):
        for i, state in a[key]["state"].items():
            for name, value in state.items():
                assert torch.equal(value, b[key]["state"][i][name]), f"{key} state differs"
    assert a["ada_p"] == b["ada_p"] and a["pl_mean"] == b["pl_mean"]
    assert [r["d_loss"] for r in read_log(tmp_path / "a")] == [r["d_loss"] for r in read_log(tmp_path / "b")]
    logs = [r["ada_p"] for r in read_log(tmp_path / "a")]
    assert max(logs) > 0  # ADA p moved, so the augmentation's random draws were part of the run


@pytest.mark.parametrize("how", ["signal", "exception"])
def test_ctrl_c_writes_a_checkpoint(m, tmp_path, data16, monkeypatch, how, sigint_handled):
    calls = {"n": 0}
    original = m.g_nonsaturating_loss

    def interrupting_loss(logits):
        calls["n"] += 1
        if calls["n"] == 2:  # during the G step of iteration 2
            if how == "signal":
                signal.raise_signal(signal.SIGINT)  # handled: the iteration finishes first
            else:
                raise KeyboardInterrupt
        return original(logits)

    monkeypatch.setattr(m, "g_nonsaturating_loss", interrupting_loss)
    out = tmp_path / "run"
    before = signal.getsignal(signal.SIGINT)
    with pytest.raises(SystemExit) as exit_info:
        run(m, tiny_flags() + ["--data", data16, "--out", str(out), "--iter", "50"])
    assert exit_info.value.code == 130
    step = 2 if how == "signal" else 1
    ckpt = load(out / "checkpoints" / f"{step:06d}.pt")
    assert ckpt["step"] == step
    assert signal.getsignal(signal.SIGINT) is before  # the handler from before the run is restored


# ---------------------------------------------------------------------------------------------
# FID during training, offline notice
# ---------------------------------------------------------------------------------------------

@pytest.mark.filterwarnings("ignore:fewer images than")
def test_fid_during_training_with_random_inception(m, tmp_path, data16):
    pytest.importorskip("ops.fid", reason="ops/fid.py is not importable")
    out = tmp_path / "run"
    run(m, tiny_flags() + ["--data", data16, "--out", str(out), "--iter", "2", "--fid-every", "1",
                           "--fid-n", "8", "--fid-batch", "8", "--inception", "random",
                           "--fid-dims", "64"])
    lines = (out / "fid.csv").read_text().splitlines()
    assert lines[0].startswith("# provenance: ")
    prov = json.loads(lines[0][len("# provenance: "):])
    assert prov["comparable"] is False and prov["counts"]["real"] > 0  # random weights are labelled
    assert lines[1].startswith("step,kimg,fid,kid_mean,kid_std,copies") and len(lines) == 5  # steps 0, 1, 2
    assert [int(line.split(",")[0]) for line in lines[2:]] == [0, 1, 2]
    fids = [float(line.split(",")[2]) for line in lines[2:]]
    assert all(math.isfinite(f) and f >= 0 for f in fids)
    evals = [json.loads(l) for l in (out / "log.jsonl").read_text().splitlines() if '"copies"' in l]
    assert [e["step"] for e in evals] == [0, 1, 2] and all(e["copies"] >= 0 for e in evals)
    with Image.open(out / "fid.png") as im:
        assert im.size == (640, 520)
    best = load(out / "checkpoints" / "best.pt")
    assert best["best_fid"] == pytest.approx(min(fids), abs=1e-3)
    assert os.listdir(out / "fid_cache")  # the real images' features are cached


def test_missing_inception_weights_give_one_notice_and_training_goes_on(m, tmp_path, data16, capsys):
    pytest.importorskip("ops.fid", reason="ops/fid.py is not importable")
    out = tmp_path / "run"
    run(m, tiny_flags() + ["--data", data16, "--out", str(out), "--iter", "1", "--fid-every", "1",
                           "--inception", str(tmp_path / "missing.pth")])
    text = capsys.readouterr().out
    assert text.count("notice: FID is off") == 1 and "missing.pth" in text
    assert (out / "checkpoints" / "000001.pt").exists() and not (out / "fid.csv").exists()


# ---------------------------------------------------------------------------------------------
# torchrun: 2 processes, gloo on CPU
# ---------------------------------------------------------------------------------------------

def test_torchrun_two_processes_gloo(m, tmp_path, data16):
    launcher = tmp_path / "launch.py"
    launcher.write_text(textwrap.dedent(f"""
        import argparse, importlib.util, sys
        sys.path.insert(0, {ROOT!r})
        spec = importlib.util.spec_from_file_location("train_mod", {m.__file__!r})
        mod = importlib.util.module_from_spec(spec)
        sys.modules["train_mod"] = mod
        spec.loader.exec_module(mod)
        parser = argparse.ArgumentParser()
        mod.add_train_args(parser)
        mod.train(parser.parse_args(sys.argv[1:]))
    """))
    out = tmp_path / "ddp"
    flags = tiny_flags()
    flags[flags.index("--batch") + 1] = "8"  # 4 per process
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=ROOT)
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         str(launcher)] + flags + ["--data", data16, "--out", str(out), "--iter", "2",
                                   "--augment", "ada", "--ada-interval", "1", "--ada-kimg", "0.01"],
        capture_output=True, text=True, timeout=120, env=env, cwd=str(tmp_path))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert sorted(os.listdir(out / "checkpoints")) == ["000002.pt"]
    ckpt = load(out / "checkpoints" / "000002.pt")
    assert ckpt["step"] == 2 and ckpt["args"]["batch"] == 8
    log = read_log(out)
    assert [r["step"] for r in log] == [1, 2] and all(math.isfinite(r["d_loss"]) for r in log)
    # ADA updated p at every iteration (sign statistics all-reduced over the processes): steps of
    # 8 * 1 / (0.01 * 1000) = 0.8, kept in [0, 1]
    ps = [0.0] + [r["ada_p"] for r in log]
    for before, after in zip(ps, ps[1:]):
        up, down = min(1.0, before + 0.8), max(0.0, before - 0.8)
        assert after == pytest.approx(up) or after == pytest.approx(down)
    assert ckpt["ada_state"]["rt"] is not None


# ---------------------------------------------------------------------------------------------
# The file's reading order: the method above one plumbing line
# ---------------------------------------------------------------------------------------------
BANNER = "# ---- plumbing: data, checkpoints, formats, settings, distributed, run folder, CLI ----"


def test_docstring_map_names_are_defined_above_the_plumbing_line(m):
    import ast
    import re
    with open(m.__file__) as f:
        source = f.read()
    lines = source.split("\n")
    assert lines.count(BANNER) == 1
    banner = lines.index(BANNER) + 1                                # 1-based line of the banner
    tree = ast.parse(source)
    where = {}
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            where[node.name] = node.lineno
        elif isinstance(node, ast.Assign):
            for t in node.targets:
                if isinstance(t, ast.Name):
                    where[t.id] = node.lineno
    doc = ast.get_docstring(tree)
    map_part = doc[doc.index("Map ("):doc.index("Below the plumbing line")]
    names = {n.split(".")[0] for n in re.findall(r"`([A-Za-z_][A-Za-z0-9_.]*)`", map_part)}
    names -= {"forward_paper", "forward_fast"}                      # methods, checked below
    assert {"train_step", "Generator", "Discriminator", "AugmentPipe", "d_r1_penalty"} <= names
    for name in sorted(names):
        assert name in where, f"{name} is in the docstring map but not defined at top level"
        assert where[name] < banner, f"{name} (line {where[name]}) is below the plumbing line {banner}"
    # and the plumbing is below it
    for name in ("save_checkpoint", "load_checkpoint", "RestrictedUnpickler", "ImageFolderDataset",
                 "resolve_settings", "mean_over_processes", "train", "generate", "main"):
        assert where[name] > banner, f"{name} (line {where[name]}) should be below the plumbing line"
    # ModulatedConv2d: the paper's form comes first, the fast path after it
    cls = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "ModulatedConv2d")
    methods = [f.name for f in cls.body if isinstance(f, ast.FunctionDef)]
    assert methods.index("forward_paper") < methods.index("forward_fast")
    # no process group is touched above the line: DDP goes through mean_over_processes
    above = "\n".join(lines[:banner])
    assert "all_reduce" not in above and "dist." not in above


# ---------------------------------------------------------------------------------------------
# train_step: one iteration, called directly
# ---------------------------------------------------------------------------------------------
def tiny_nets(m, size=16, seed=0):
    torch.manual_seed(seed)
    g = m.Generator(size, style_dim=16, n_mlp=2, channel_max=16)
    d = m.Discriminator(size, channel_max=16)
    with torch.no_grad():  # a non-trivial noise strength, so that the noise inputs matter
        for name, p in g.named_parameters():
            if name.endswith("noise.weight"):
                p.fill_(0.3)
    g_ema = m.Generator(size, style_dim=16, n_mlp=2, channel_max=16)
    g_ema.load_state_dict(g.state_dict())
    return g, d, g_ema.eval().requires_grad_(False)


def step_cfg(m, **over):
    return argparse.Namespace(**{**m.TRAIN_DEFAULTS, "style_dim": 16, **over})


def adam(params, k):
    """Adam with StyleGAN2's lazy-regularization correction c = k / (k + 1), written out."""
    c = k / (k + 1)
    return torch.optim.Adam(params, lr=0.002 * c, betas=(0.0, 0.99 ** c), eps=1e-8)


def reference_iteration(g, d, g_ema, real, gamma=10.0, pl_weight=2.0, pl_decay=0.01, ema_kimg=10.0):
    """Iteration 0 written from the papers with plain torch (R1 and path length both due, no
    augmentation, no style mixing): returns (d_loss, g_loss, r1, mean path length, new a)."""
    b, size = real.shape[0], real.shape[-1]
    d_opt, g_opt = adam(list(d.parameters()), 16), adam(list(g.parameters()), 4)
    # D: softplus(-D(x)) + softplus(D(G(z)))
    z = torch.randn(b, 16)
    with torch.no_grad():
        fake = g([z])[0]                                  # G draws its noise maps itself
    d_loss = F.softplus(-d(real)).mean() + F.softplus(d(fake)).mean()
    d_opt.zero_grad()
    d_loss.backward()
    d_opt.step()
    # R1: gamma / 2 * E||grad_x D(x)||^2, times the interval 16
    x = real.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(d(x).sum(), x, create_graph=True)
    r1 = grad.pow(2).sum([1, 2, 3]).mean()
    d_opt.zero_grad()
    (gamma / 2 * r1 * 16).backward()
    d_opt.step()
    # G: softplus(-D(G(z))) with D fixed
    for p in d.parameters():
        p.requires_grad_(False)
    z = torch.randn(b, 16)
    g_loss = F.softplus(-d(g([z])[0])).mean()
    g_opt.zero_grad()
    g_loss.backward()
    g_opt.step()
    # path length on b // 2 images: (|J^T y| - a)^2, a <- a + decay (mean - a), times the interval 4
    z = torch.randn(b // 2, 16)
    img, lat = g([g.style(z)], input_is_latent=True, return_latents=True)
    y = torch.randn(img.shape) / size
    (grad,) = torch.autograd.grad((img * y).sum(), lat, create_graph=True)
    lengths = grad.pow(2).sum(2).mean(1).sqrt()
    a = 0.0 + pl_decay * (lengths.mean().detach() - 0.0)
    penalty = (lengths - a).pow(2).mean()
    g_opt.zero_grad()
    (pl_weight * 4 * penalty).backward()
    g_opt.step()
    beta = 0.5 ** (b / (ema_kimg * 1000))
    with torch.no_grad():
        for pe, p in zip(g_ema.parameters(), g.parameters()):
            pe.copy_(beta * pe + (1 - beta) * p)
    return d_loss.item(), g_loss.item(), r1.item(), lengths.mean().item(), float(a)


def test_train_step_equals_the_papers_iteration_written_out(m):
    g, d, g_ema = tiny_nets(m)
    ref_nets = [copy.deepcopy(n) for n in (g, d, g_ema)]
    real = torch.rand(4, 3, 16, 16) * 2 - 1
    start = {k: v.clone() for k, v in g.state_dict().items()}, {k: v.clone() for k, v in d.state_dict().items()}
    cfg = step_cfg(m, batch=4, mixing=0.0)
    torch.manual_seed(11)
    stats, pl_mean = m.train_step(0, real, g, d, g_ema, adam(list(g.parameters()), 4),
                                  adam(list(d.parameters()), 16), m.NoAugment(), cfg,
                                  torch.zeros(()))
    torch.manual_seed(11)
    want = reference_iteration(*ref_nets, real)
    got = (stats["d_loss"], stats["g_loss"], stats["r1"], stats["path_length"], pl_mean)
    for name, a, b in zip(("d_loss", "g_loss", "r1", "path_length", "pl_mean"), got, want):
        assert math.isfinite(float(a)) and float(a) == pytest.approx(b, rel=1e-5, abs=1e-7), name
    for net, ref in zip((g, d, g_ema), ref_nets):
        for (name, p), q in zip(net.named_parameters(), ref.parameters()):
            torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6, msg=name)
    moved_g = [k for k, v in g.state_dict().items() if not torch.equal(v, start[0][k])]
    moved_d = [k for k, v in d.state_dict().items() if not torch.equal(v, start[1][k])]
    assert len(moved_g) > 10 and len(moved_d) > 10


def test_the_training_loop_is_train_step(m, tmp_path, data16, monkeypatch):
    """train(--iter 1) from a checkpoint = the written-out iteration on the batch the loop drew,
    with the loop's documented seed (seed + 1000 for process 0) and lazy-corrected Adam."""
    g, d, g_ema = tiny_nets(m)
    start = str(tmp_path / "start.pt")
    m.save_checkpoint(start, {"g": g.state_dict(), "d": d.state_dict(), "g_ema": g_ema.state_dict(),
                              "args": dict(size=16, style_dim=16, n_mlp=2, channel_multiplier=2,
                                           channel_max=16), "step": 0})
    seen = {}
    original = m.train_step

    def spy(i, real, *args, **kwargs):
        seen["real"] = real.clone()
        return original(i, real, *args, **kwargs)

    monkeypatch.setattr(m, "train_step", spy)
    out = tmp_path / "run"
    run(m, tiny_flags() + ["--data", data16, "--out", str(out), "--ckpt", start, "--iter", "1",
                           "--mixing", "0", "--seed", "3"])
    after = load(out / "checkpoints" / "000001.pt")
    torch.manual_seed(3 + 1000)
    want = reference_iteration(g, d, g_ema, seen["real"])
    for key, net in (("g", g), ("d", d), ("g_ema", g_ema)):
        for name, p in net.named_parameters():
            torch.testing.assert_close(after[key][name], p.detach(), rtol=1e-5, atol=1e-6,
                                       msg=f"{key}.{name}")
    rec = read_log(out)[-1]
    assert rec["d_loss"] == pytest.approx(want[0], rel=1e-5) and rec["r1"] == pytest.approx(want[2], rel=1e-4)


def run_steps(m, step_fn, n, real, cfg, augment_kind, seed=7, **kw):
    """n iterations of one step function from the same start (tiny_nets seed 4, FreezeD 1, lazily
    corrected Adam as the loop builds it); returns the parameters and the ADA p after them."""
    g, d, g_ema = tiny_nets(m, seed=4)
    d_params, _ = m.split_frozen(d, m.frozen_prefixes_d(1))
    g_opt, d_opt = m.lazy_adam(g.parameters(), cfg.lr, cfg.g_reg_every), m.lazy_adam(d_params, cfg.lr, cfg.d_reg_every)
    augment = m.make_augment(augment_kind)
    ada = m.AdaptiveP(interval=1, kimg=0.2, batch_size=cfg.batch) if augment_kind == "ada" else None
    if ada is not None:
        augment.p = ada.p = 0.2                                     # p > 0 from the start: T draws
    pl_mean, ps = torch.zeros(()), []
    torch.manual_seed(seed)
    random.seed(seed)
    for i in range(n):
        _, pl_mean = step_fn(i, real, g, d, g_ema, g_opt, d_opt, augment, cfg, pl_mean, adaptive=ada, **kw)
        ps.append(getattr(augment, "p", None))
    state = {f"{k}.{n}": p.detach().clone() for k, net in (("g", g), ("d", d), ("g_ema", g_ema))
             for n, p in net.named_parameters()}
    return state, ps, float(pl_mean)


@pytest.mark.parametrize("augment,batch_gpu", [("ada", None), ("none", 4)])
def test_plain_and_scale_out_steps_give_the_same_parameters(m, augment, batch_gpu):
    """Five iterations (R1 and path length every 2nd, style mixing, FreezeD, ADA's p moving every
    iteration) of the paper's train_step and of train_step_scale_out as the loop calls it: in one
    chunk with ADA, and in chunks of 4 of batch 8 (ADA's draws would differ per chunk: none there)
    end with the same weights, G_ema, p and path-length mean, to fp32 rounding."""
    real = torch.rand(8, 3, 16, 16) * 2 - 1
    cfg = step_cfg(m, batch=8, batch_gpu=batch_gpu, mixing=0.9, d_reg_every=2, g_reg_every=2)
    plain, p_plain, a_plain = run_steps(m, m.train_step, 5, real, cfg, augment)
    fast, p_fast, a_fast = run_steps(m, m.train_step_scale_out, 5, real, cfg, augment)
    start, _, _ = run_steps(m, lambda *a, **k: (None, a[9]), 1, real, cfg, augment)  # untouched weights
    assert p_fast == pytest.approx(p_plain, abs=1e-12) and a_fast == pytest.approx(a_plain, rel=1e-5)
    if augment == "ada":
        assert len(set(p_plain)) > 2                                # p moved: the update ran
    moved = 0
    for name, p in plain.items():
        torch.testing.assert_close(fast[name], p, rtol=1e-4, atol=1e-5, msg=name)
        moved += not torch.equal(p, start[name])
    assert moved > 20


def test_the_loop_calls_the_scale_out_step_only_when_asked_for(m, tmp_path, data16, monkeypatch):
    """One process, the whole batch at once, fp32 or bf16: the paper's train_step; --batch-gpu
    below the batch or fp16: train_step_scale_out."""
    calls = []
    for name in ("train_step", "train_step_scale_out"):
        original = getattr(m, name)

        def spy(*args, _name=name, _original=original, **kwargs):
            calls.append(_name)
            return _original(*args, **kwargs)

        monkeypatch.setattr(m, name, spy)
    cases = [([], "train_step"), (["--precision", "bf16"], "train_step"),
             (["--batch-gpu", "4"], "train_step"), (["--batch-gpu", "2"], "train_step_scale_out"),
             (["--precision", "fp16"], "train_step_scale_out")]
    for k, (flags, want) in enumerate(cases):
        calls.clear()
        run(m, tiny_flags() + ["--data", data16, "--out", str(tmp_path / f"r{k}"), "--iter", "2"] + flags)
        assert calls == [want, want], (flags, calls)


def test_no_scale_out_words_in_the_method_part(m):
    """Above the plumbing line (after the module docstring) the code says nothing of chunks, DDP,
    torchrun or fp16: the iteration reads as the paper's."""
    import ast
    import re
    with open(m.__file__) as f:
        source = f.read()
    body = source[ast.parse(source).body[1].col_offset:]            # skip the docstring...
    body = source[source.index('"""', 3) + 3:source.index(BANNER)]  # ...: its end to the banner
    code = "\n".join(line for line in body.split("\n") if not line.lstrip().startswith(("import ", "from ")))
    found = re.findall(r"ddp|distributeddataparallel|chunk|fp16|float16|batch_gpu|torchrun|all_reduce", code, re.I)
    assert not found, found


# ---------------------------------------------------------------------------------------------
# --batch-gpu: gradient accumulation
# ---------------------------------------------------------------------------------------------
class GradRecorder(torch.optim.SGD):
    """An optimiser that records the gradients of each step and leaves the weights alone (lr 0)."""

    def __init__(self, params):
        super().__init__(params, lr=0.0)
        self.seen = []

    def step(self, closure=None):
        self.seen.append([None if p.grad is None else p.grad.clone()
                          for group in self.param_groups for p in group["params"]])


@pytest.mark.parametrize("batch_gpu", [4, 8])
def test_batch_gpu_accumulates_the_full_batch_gradients(m, batch_gpu):
    """Batch 16 in chunks of 4 or 8 (mbstd group 4 divides both): D step, R1, G step and path
    length gradients, the losses, the path-length mean and ADA's sign statistics equal batch 16."""
    real = torch.rand(16, 3, 16, 16) * 2 - 1
    results = []
    for bg in (None, batch_gpu):
        g, d, g_ema = tiny_nets(m, seed=4)
        g_opt, d_opt = GradRecorder(g.parameters()), GradRecorder(d.parameters())
        ada = m.AdaptiveP(batch_size=16)
        cfg = step_cfg(m, batch=16, batch_gpu=bg, mixing=0.9)
        torch.manual_seed(5)
        random.seed(5)
        stats, pl_mean = m.train_step_scale_out(0, real, g, d, g_ema, g_opt, d_opt, m.NoAugment(), cfg,
                                      torch.tensor(0.5), adaptive=ada)
        results.append((d_opt.seen, g_opt.seen, stats, pl_mean, float(ada._sum), ada._count))
    (d_full, g_full, s_full, pl_full, sum_full, n_full), (d_acc, g_acc, s_acc, pl_acc, sum_acc, n_acc) = results
    assert len(d_full) == len(d_acc) == 2 and len(g_full) == len(g_acc) == 2   # D, R1; G, path length
    for what, full, acc in (("D", d_full, d_acc), ("G", g_full, g_acc)):
        for k, (a, b) in enumerate(zip(full, acc)):
            for j, (x, y) in enumerate(zip(a, b)):
                if x is None or y is None:  # a parameter outside this backward (R1: D's last bias)
                    assert x is None and y is None, f"{what} step {k} tensor {j}"
                    continue
                assert x.abs().max() > 0 or j > 0 or k > 0
                torch.testing.assert_close(y, x, rtol=1e-4, atol=1e-6, msg=f"{what} step {k} tensor {j}")
    for key in ("d_loss", "g_loss", "r1", "path_length", "pl_penalty", "real_score"):
        assert float(s_acc[key]) == pytest.approx(float(s_full[key]), rel=1e-5), key
    assert float(pl_acc) == pytest.approx(float(pl_full), rel=1e-6)
    assert (sum_acc, n_acc) == (sum_full, n_full) == (sum_acc, 16)


def test_batch_chunks_keep_whole_minibatch_stddev_groups(m):
    # batch 8, group 4: D groups samples {j, j + 2, j + 4, j + 6}, j = 0, 1 (view(4, -1))
    assert [c.tolist() for c in m.batch_chunks(8, 4, 4)] == [[0, 2, 4, 6], [1, 3, 5, 7]]
    assert [c.tolist() for c in m.batch_chunks(8, 2, 4)] == [[0, 1], [2, 3], [4, 5], [6, 7]]  # NVlabs min(G, N)
    assert [c.tolist() for c in m.batch_chunks(4, None, 4)] == [[0, 1, 2, 3]]


def test_bad_batch_gpu_and_out_of_memory_are_one_line(m, tmp_path, data16, monkeypatch):
    with pytest.raises(SystemExit, match=r"--batch-gpu 3: must divide the batch per process \(4\)"):
        run(m, tiny_flags() + ["--data", data16, "--out", str(tmp_path / "a"), "--batch-gpu", "3"])

    def oom(*args, **kwargs):
        raise m.OUT_OF_MEMORY("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(m, "train_step", oom)
    with pytest.raises(SystemExit) as e:
        run(m, tiny_flags() + ["--data", data16, "--out", str(tmp_path / "b"), "--iter", "1"])
    text = str(e.value)
    assert "\n" not in text and "out of GPU memory with 4 images" in text and "try --batch-gpu 2" in text


# ---------------------------------------------------------------------------------------------
# --precision: bf16 and fp16 (NVlabs num_fp16_res = 4, conv_clamp = 256)
# ---------------------------------------------------------------------------------------------
def test_fp16_marks_the_four_highest_resolutions_as_nvlabs(m):
    g = m.set_precision(m.Generator(256, style_dim=8, n_mlp=1, channel_max=8), "fp16")
    d = m.set_precision(m.Discriminator(256, channel_max=8), "fp16")
    # NVlabs: fp16 for resolutions >= max(2 ** (log2(256) + 1 - 4), 8) = 32
    g_res = {"conv1": 4, "to_rgb1": 4}
    for j in range(6):
        g_res.update({f"convs.{2 * j}": 8 * 2 ** j, f"convs.{2 * j + 1}": 8 * 2 ** j, f"to_rgbs.{j}": 8 * 2 ** j})
    for name, r in g_res.items():
        block = g.get_submodule(name)
        assert block.compute_dtype == (torch.float16 if r >= 32 else None), name
        assert block.conv_clamp == (256 if r >= 32 else None), name
    d_res = {"convs.0": 256, **{f"convs.{j}": 256 // 2 ** (j - 1) for j in range(1, 7)}}
    for name, r in d_res.items():
        assert d.get_submodule(name).compute_dtype == (torch.float16 if r >= 32 else None), name
    assert all(getattr(b, "compute_dtype", None) is None for b in (*g.style, d.final_conv, d.final_linear))
    b = m.set_precision(m.Generator(32, style_dim=8, n_mlp=1, channel_max=8), "bf16")
    assert b.conv1.compute_dtype == b.to_rgbs[2].compute_dtype == torch.bfloat16 and b.conv1.conv_clamp is None
    assert m.default_precision(torch.device("cpu")) == "fp32"


@pytest.mark.parametrize("precision, tol", [("bf16", 0.03), ("fp16", 0.005)])
def test_half_precision_forward_is_close_to_fp32(m, precision, tol):
    """Same weights, same inputs: relative L2 error of G's image and D's logits. bf16 keeps 8
    significant bits (2^-8 = 0.4% per rounding), fp16 11 (0.05%): the bounds allow for ~10 layers."""
    g, d, _ = tiny_nets(m, size=32, seed=6)
    z = torch.randn(4, 16)
    noise = [torch.randn(4, 1, 2 ** ((i + 5) // 2), 2 ** ((i + 5) // 2)) for i in range(g.num_layers)]
    with torch.no_grad():
        img32 = g([z], noise=noise)[0]
        logits32 = d(img32)
        m.set_precision(g, precision)
        m.set_precision(d, precision)
        img = g([z], noise=noise)[0]
        logits = d(img32)
    assert img.dtype == logits.dtype == torch.float32          # images and logits leave in fp32
    rel = lambda a, b: float((a - b).norm() / b.norm())        # noqa: E731
    assert 0 < rel(img, img32) < tol
    assert 0 < rel(logits, logits32) < tol
    assert all(p.dtype == torch.float32 for p in (*g.parameters(), *d.parameters()))


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_training_in_half_precision_writes_fp32_and_resumes_as_fp32(m, tmp_path, data16, precision):
    out = tmp_path / precision
    run(m, tiny_flags() + ["--data", data16, "--out", str(out), "--iter", "2", "--precision", precision])
    ckpt = load(out / "checkpoints" / "000002.pt")
    assert ckpt["args"]["precision"] == precision
    for key in ("g", "d", "g_ema"):
        assert all(v.dtype == torch.float32 for v in ckpt[key].values() if v.is_floating_point()), key
    for key in ("g_optim", "d_optim"):
        assert all(t.dtype == torch.float32 for s in ckpt[key]["state"].values() for n, t in s.items()
                   if n != "step"), key
    log = read_log(out)
    assert all(math.isfinite(r[k]) for r in log for k in ("d_loss", "g_loss", "r1", "path_length"))
    torch.manual_seed(0)
    ref = m.Generator(16, style_dim=16, n_mlp=2, channel_max=16)
    first = load(out / "checkpoints" / "000002.pt")["g"]
    assert not torch.equal(first["convs.0.conv.weight"], ref.state_dict()["convs.0.conv.weight"])
    run(m, ["--resume", str(out), "--iter", "3", "--precision", "fp32"])
    later = load(out / "checkpoints" / "000003.pt")
    assert later["args"]["precision"] == "fp32" and later["step"] == 3
    assert not torch.equal(later["g"]["convs.0.conv.weight"], first["convs.0.conv.weight"])


def test_fp16_clamps_activations_and_replaces_overflowed_gradients(m):
    """NVlabs' two fp16 guards: activations of fp16 blocks clipped to +-256 (conv_clamp), and
    inf/NaN gradients replaced (nan_to_num: 0, +-1e5) before the optimiser step."""
    g = m.Generator(16, style_dim=8, n_mlp=1, channel_max=8)
    with torch.no_grad():
        g.convs[1].activate.bias.fill_(1000.0)      # 16 px block: fp16 at 16 px (all blocks >= 8)
    seen = {}
    g.convs[1].register_forward_hook(lambda mod, inp, out: seen.update(out=out))
    with torch.no_grad():
        g([torch.randn(2, 8)])
        assert seen["out"].max() > 1000              # fp32: lrelu(x + 1000) * sqrt(2)
        m.set_precision(g, "fp16")
        g([torch.randn(2, 8)])
    assert seen["out"].max() == 256.0
    p = torch.nn.Parameter(torch.zeros(4))
    opt = torch.optim.SGD([p], lr=1.0)
    p.grad = torch.tensor([float("inf"), float("-inf"), float("nan"), 2.0])
    m._optimizer_step(opt, fix_half_grads=True)
    assert p.detach().tolist() == [-1e5, 1e5, 0.0, -2.0]
