"""ops.fid (FID Inception, statistics, Frechet distance) and ops.fid_eval (CLI, Evaluator,
memorization check, fid.csv).

References used here are independent of ops/fid.py: numpy/scipy formulas written in the test,
images decoded with PIL in the test, torchvision's unmodified stem, and pytorch-fid itself when
it is installed (same random weights, since the released file cannot be downloaded here).
"""
import errno
import hashlib
import importlib.util
import json
import os
import subprocess
import sys
import warnings

import numpy as np
import pytest
import scipy.linalg
import torch
import torch.nn.functional as F
from PIL import Image

from conftest import load_script, requires_cuda
from ops import fid, fid_eval

HAS_PYTORCH_FID = importlib.util.find_spec("pytorch_fid") is not None


@pytest.fixture(scope="module")
def random_sd():
    return fid.random_inception_state_dict()


@pytest.fixture(scope="module")
def model64():
    return fid.load_inception("random", dims=64)


def _smooth_images(n, size, seed):
    """n distinct smooth RGB images, uint8 [n, size, size, 3]."""
    g = torch.Generator().manual_seed(seed)
    x = F.interpolate(torch.rand(n, 3, 6, 6, generator=g), size=size, mode="bilinear",
                      align_corners=False)
    return (x * 255).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()


def _write_folder(folder, images, fmt="png", modes=None):
    os.makedirs(folder, exist_ok=True)
    for i, a in enumerate(images):
        im = Image.fromarray(a)
        if modes:
            im = im.convert(modes[i % len(modes)])
        im.save(os.path.join(folder, f"{i:03d}.{fmt}"))
    return folder


def _pil_batch(folder):
    """Independent loader: PIL -> RGB -> float [0, 1], [N, 3, H, W]."""
    names = sorted(n for n in os.listdir(folder) if n.endswith(".png"))
    arr = [np.asarray(Image.open(os.path.join(folder, n)).convert("RGB")) for n in names]
    return torch.from_numpy(np.stack(arr)).permute(0, 3, 1, 2).float() / 255


def _fid_formula(f1, f2):
    """FID written out with numpy/scipy (pytorch-fid's formula), float64."""
    m1, m2 = f1.mean(0), f2.mean(0)
    s1, s2 = np.cov(f1, rowvar=False), np.cov(f2, rowvar=False)
    covmean = scipy.linalg.sqrtm(s1 @ s2)
    return float(((m1 - m2) ** 2).sum() + np.trace(s1) + np.trace(s2)
                 - 2 * np.trace(np.real(covmean)))


# ---------------------------------------------------------------------------------------------
# Network and weights


def test_state_dict_has_released_key_set(random_sd):
    assert len(random_sd) == 566
    assert sum(not k.endswith("num_batches_tracked") for k in random_sd) == 472
    assert not any(k.startswith("AuxLogits") for k in random_sd)
    shapes = {"Conv2d_1a_3x3.conv.weight": (32, 3, 3, 3),
              "Mixed_5b.branch1x1.conv.weight": (64, 192, 1, 1),
              "Mixed_7c.branch_pool.conv.weight": (192, 2048, 1, 1),
              "Mixed_6e.branch7x7dbl_5.conv.weight": (192, 192, 1, 7),
              "fc.weight": (1008, 2048), "fc.bias": (1008,)}
    for k, s in shapes.items():
        assert tuple(random_sd[k].shape) == s
    n_numbers = sum(v.numel() for k, v in random_sd.items() if "num_batches" not in k)
    assert n_numbers == 23_885_392  # mseitzer/pytorch-fid 0.3.0 inception.py


@pytest.mark.parametrize("form", ["566", "472-with-metadata", "472-plain-dict"])
def test_weights_file_loads_strictly_in_both_forms(tmp_path, random_sd, form):
    sd = random_sd.copy()  # OrderedDict copy keeps _metadata (version 2 batch norms)
    if form != "566":
        for k in [k for k in sd if k.endswith("num_batches_tracked")]:
            del sd[k]
        if form == "472-plain-dict":
            sd = dict(sd)
        assert len(sd) == 472
    path = tmp_path / "w.pth"
    torch.save(sd, path)
    model = fid.load_inception(str(path), dims=64)
    got = model.state_dict()
    assert len(got) == 566
    assert all(torch.equal(got[k], v) for k, v in sd.items())
    assert model.comparable and model.weights_name == "w.pth"
    assert model.weights_sha256 == hashlib.sha256(path.read_bytes()).hexdigest()


def test_foreign_state_dict_is_a_one_line_error(tmp_path, random_sd):
    sd = dict(random_sd)
    sd["blocks.0.0.conv.weight"] = sd.pop("Conv2d_1a_3x3.conv.weight")
    path = tmp_path / "bad.pth"
    torch.save(sd, path)
    with pytest.raises(ValueError, match="not the FID Inception state dict") as e:
        fid.load_inception(str(path))
    assert "\n" not in str(e.value)


def test_missing_weights_name_file_and_url(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "hub_home"))
    with pytest.raises(fid.InceptionWeightsMissing) as e:
        fid.load_inception(None, download=False)
    msg = str(e.value)
    assert isinstance(e.value, RuntimeError) and "\n" not in msg
    assert fid.FID_WEIGHTS_NAME in msg and fid.FID_WEIGHTS_URL in msg
    assert str(tmp_path / "hub_home") in msg
    with pytest.raises(fid.InceptionWeightsMissing, match="nothere.pth"):
        fid.load_inception(str(tmp_path / "nothere.pth"))
    with pytest.raises(SystemExit, match=fid.FID_WEIGHTS_NAME):
        fid.main([str(tmp_path), str(tmp_path), "--inception", str(tmp_path / "x.pth")])


def test_hub_cache_file_is_used(tmp_path, monkeypatch, random_sd):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    path = tmp_path / "hub" / "checkpoints" / fid.FID_WEIGHTS_NAME
    path.parent.mkdir(parents=True)
    torch.save(random_sd, path)
    model = fid.load_inception(None, dims=64, download=False)
    assert model.weights_name == fid.FID_WEIGHTS_NAME and model.comparable


def test_download_goes_to_hub_cache_and_checks_hash(tmp_path, monkeypatch, random_sd):
    src = tmp_path / "served.pth"
    torch.save(random_sd, src)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "home"))
    monkeypatch.setattr(fid, "FID_WEIGHTS_URL", src.as_uri())  # file:// stands in for https://
    with pytest.raises(fid.InceptionWeightsMissing, match="sha256"):
        fid.load_inception(None, dims=64)
    assert not os.path.exists(fid.hub_weights_path())  # nothing half-written left behind
    digest = hashlib.sha256(src.read_bytes()).hexdigest()
    monkeypatch.setattr(fid, "FID_WEIGHTS_SHA256_PREFIX", digest[:8])
    model = fid.load_inception(None, dims=64)
    assert model.weights_sha256 == digest
    assert os.path.isfile(tmp_path / "home" / "hub" / "checkpoints" / fid.FID_WEIGHTS_NAME)


def test_preprocessing_matches_torchvision_stem(random_sd, model64):
    """dims=64 output = torchvision's unmodified stem on 2x-1 of a bilinear 299 resize."""
    from torchvision.models.inception import Inception3
    with torch.device("meta"):
        tv = Inception3(num_classes=1008, aux_logits=False, init_weights=False).eval()
    tv.load_state_dict(random_sd, assign=True)
    model = model64
    x = torch.rand(2, 3, 37, 53)
    with torch.no_grad():
        y = F.interpolate(x, size=(299, 299), mode="bilinear", align_corners=False) * 2 - 1
        y = tv.maxpool1(tv.Conv2d_2b_3x3(tv.Conv2d_2a_3x3(tv.Conv2d_1a_3x3(y))))
        ref = y.mean((2, 3))
        out = model(x)
    assert out.shape == (2, 64)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-6)


def test_network_has_torchvision_layout():
    """The network is written in ops/fid.py (no torchvision import): its state dict has the keys,
    order and shapes of torchvision's Inception3(num_classes=1008, aux_logits=False)."""
    from torchvision.models.inception import Inception3
    with torch.device("meta"):
        tv = Inception3(num_classes=1008, aux_logits=False, init_weights=False).state_dict()
        ours = fid.FIDInception3().state_dict()
    assert list(ours) == list(tv)
    assert all(ours[k].shape == tv[k].shape and ours[k].dtype == tv[k].dtype for k in tv)


def test_fast_path_equals_plain_modules():
    """load_inception's fast path (folded batch norms, ReLU fused into the conv on CPU, chunks of
    at most CHUNK_CPU images run side by side on threads, the stem STEM_CHUNK_CPU at a time)
    against the plain modules (conv, batch norm, ReLU, whole batch), whose features
    test_features_equal_pytorch_fid checks."""
    plain = fid.load_inception("random", fold=False)
    fast = fid.load_inception("random")
    assert fast.chunk == fid.CHUNK_CPU and fast.stem_chunk == fid.STEM_CHUNK_CPU
    assert fast.chunk_threads == torch.get_num_threads()
    assert plain.chunk is None and plain.chunk_threads is None and not hasattr(plain, "bn_folded")
    fast.chunk, fast.stem_chunk, fast.chunk_threads = 2, 2, 2  # small, to keep the test short
    x = torch.rand(5, 3, 21, 26)  # 4 chunks (2 + 1 + 1 + 1), two at a time, stems of 2 and 1
    threads_before = torch.get_num_threads()
    with torch.inference_mode():
        ref = plain(x)
        got = fast(x)
        assert torch.get_num_threads() == threads_before  # the threads' count of 1 is undone
        torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)
        fast.chunk_threads = 1  # one chunk after the other, on one thread: the same convolutions
        with fid.intra_op_threads(1):
            assert torch.equal(fast(x), got)
        fid.fold_batchnorm(fast, fuse_relu=False)  # folded, ReLU as its own op
        assert not fast.relu_fused
        torch.testing.assert_close(fast(x), ref, rtol=1e-5, atol=1e-5)
    fast.chunk_threads = 2
    x.requires_grad_(True)
    with torch.no_grad():  # the caller's grad mode holds in the chunks' threads
        assert not fast(x).requires_grad


def test_conv_relu_fusion_equals_conv_then_relu():
    """The fused oneDNN call against conv2d then relu in float64, on Inception's kernel shapes."""
    if torch.backends.mkldnn.is_available():
        assert fid.conv_relu_fusion_available()  # else the fast path silently loses its fusion
    if not fid.conv_relu_fusion_available():
        pytest.skip("this torch build has no oneDNN conv + ReLU")
    g = torch.Generator().manual_seed(0)
    for c_in, c_out, k, stride, pad, size in [(3, 32, 3, 2, 0, 31), (16, 24, (1, 7), 1, (0, 3), 17),
                                              (16, 24, (7, 1), 1, (3, 0), 17), (8, 12, 5, 1, 2, 11)]:
        block = fid.BasicConv2d(c_in, c_out, k, stride, pad)
        block.folded_weight = torch.randn(block.conv.weight.shape, generator=g).contiguous(
            memory_format=torch.channels_last)
        block.folded_bias = torch.randn(c_out, generator=g)
        x = torch.randn(2, c_in, size, size, generator=g).contiguous(memory_format=torch.channels_last)
        ref = F.relu(F.conv2d(x.double(), block.folded_weight.double(), block.folded_bias.double(),
                              stride, pad))
        with torch.inference_mode():
            got = fid._folded_fused_forward(block, x)
        assert got.shape == ref.shape
        torch.testing.assert_close(got.double(), ref, rtol=1e-5, atol=1e-5)


def test_importing_the_metric_needs_neither_torchvision_nor_scipy():
    """Start-up is part of every --save-stats run: torchvision costs about as much CPU as torch."""
    code = ("import sys, ops.fid, ops.fid_eval; "
            "print(sorted(m for m in ('torchvision', 'scipy') if m in sys.modules))")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


@pytest.mark.skipif(not HAS_PYTORCH_FID, reason="pytorch-fid not installed")
def test_features_equal_pytorch_fid(monkeypatch, random_sd):
    import pytorch_fid.inception as pfi
    monkeypatch.setattr(pfi, "load_state_dict_from_url", lambda *a, **k: random_sd)
    monkeypatch.setattr(torch.nn.init, "trunc_normal_", lambda t, *a, **k: t)  # weights loaded
    ref = pfi.InceptionV3([0, 3]).eval()  # dims 64 and 2048
    x = torch.rand(1, 3, 45, 40)
    with torch.no_grad():
        r64, r2048 = (o.mean((2, 3)) for o in ref(x))  # pytorch-fid pools when not 1x1
    model = fid.load_inception("random", dims=2048)
    with torch.no_grad():
        out = model(x)
    assert out.shape == (1, 2048)
    torch.testing.assert_close(out, r2048, rtol=1e-4, atol=1e-5)
    model.dims = 64
    with torch.no_grad():
        torch.testing.assert_close(model(x), r64, rtol=1e-4, atol=1e-5)


# ---------------------------------------------------------------------------------------------
# Frechet distance


def test_frechet_distance_closed_form_diagonal():
    rng = np.random.default_rng(1)
    d = 32
    mu1, mu2 = rng.normal(size=d), rng.normal(size=d)
    s1, s2 = rng.uniform(0.1, 3, d), rng.uniform(0, 2, d)
    s2[:4] = 0.0  # singular second covariance
    expected = ((mu1 - mu2) ** 2).sum() + (s1 + s2 - 2 * np.sqrt(s1 * s2)).sum()
    for method in ("auto", "fast", "sqrtm"):
        got = fid.frechet_distance(mu1, np.diag(s1), mu2, np.diag(s2), method=method)
        assert got == pytest.approx(expected, rel=1e-9)


def _rotated(eigs, rng):
    q, _ = np.linalg.qr(rng.normal(size=(len(eigs), len(eigs))))
    return (q * eigs) @ q.T


@pytest.mark.parametrize("case", ["sample-cov", "ill-conditioned", "singular-few-samples",
                                  "both-singular-shared-null"])
def test_fast_path_equals_sqrtm_path(case):
    rng = np.random.default_rng(2)
    d = 64
    if case == "sample-cov":
        f1, f2 = rng.gamma(2.0, size=(200, d)), rng.gamma(2.2, size=(150, d))
        s1, s2 = np.cov(f1, rowvar=False), np.cov(f2, rowvar=False)
    elif case == "ill-conditioned":
        s1 = _rotated(np.logspace(-12, 2, d), rng)
        s2 = _rotated(np.logspace(-10, 1, d), rng)
    elif case == "singular-few-samples":  # N < d: rank N - 1, as with 500 images at 2048-d
        s1 = np.cov(np.abs(rng.normal(size=(20, d))), rowvar=False)
        s2 = np.cov(np.abs(rng.normal(size=(30, d))) + 0.2, rowvar=False)
    else:
        basis = rng.normal(size=(d, 10))
        s1 = np.cov(rng.normal(size=(25, 10)) @ basis.T, rowvar=False)
        s2 = np.cov(rng.normal(size=(35, 10)) @ basis.T * 1.3, rowvar=False)
    mu1, mu2 = rng.normal(size=d), rng.normal(size=d)
    fast = fid.frechet_distance(mu1, s1, mu2, s2, method="fast")
    assert fid.frechet_distance(mu1, s1, mu2, s2) == fast  # auto takes the fast path here
    indep = ((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.trace(
        np.real(scipy.linalg.sqrtm(s1 @ s2)))
    assert fast == pytest.approx(indep, rel=1e-6)
    if HAS_PYTORCH_FID:
        from pytorch_fid.fid_score import calculate_frechet_distance
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # scipy deprecates the disp argument it passes
            theirs = calculate_frechet_distance(mu1, s1, mu2, s2)
        assert fast == pytest.approx(theirs, rel=1e-6)


def test_non_psd_input_falls_back_to_sqrtm_path():
    rng = np.random.default_rng(3)
    d = 16
    s1 = _rotated(np.linspace(0.5, 2, d), rng)
    s2 = _rotated(np.r_[-3e-7, np.linspace(0.5, 2, d - 1)], rng)  # slightly indefinite
    s3 = s1 + np.triu(np.full((d, d), 1e-3), 1)  # not symmetric
    mu = np.zeros(d)
    for a, b in ((s1, s2), (s3, s1)):
        with pytest.raises(ValueError, match="positive semi-definite"):
            fid.frechet_distance(mu, a, mu, b, method="fast")
        indep = np.trace(a) + np.trace(b) - 2 * np.trace(np.real(scipy.linalg.sqrtm(a @ b)))
        assert fid.frechet_distance(mu, a, mu, b) == pytest.approx(indep, rel=1e-12)


def test_frechet_distance_bad_shapes():
    with pytest.raises(ValueError, match="sigma"):
        fid.frechet_distance(np.zeros(3), np.eye(4), np.zeros(3), np.eye(3))
    with pytest.raises(ValueError, match="dimensions differ"):
        fid.frechet_distance(np.zeros(3), np.eye(3), np.zeros(4), np.eye(4))


# ---------------------------------------------------------------------------------------------
# Statistics, files, cache


def test_statistics_and_npz_round_trip(tmp_path):
    rng = np.random.default_rng(4)
    f = rng.normal(size=(20, 8)).astype(np.float32)
    mu, sigma = fid.statistics(f)
    np.testing.assert_allclose(mu, f.astype(np.float64).sum(0) / 20, rtol=1e-12)
    c = f.astype(np.float64) - mu
    np.testing.assert_allclose(sigma, c.T @ c / 19, rtol=1e-10)  # N - 1
    fid.save_statistics(str(tmp_path / "s.npz"), mu, sigma, n=20)
    d = fid.load_npz(str(tmp_path / "s.npz"))
    assert np.array_equal(d["mu"], mu) and np.array_equal(d["sigma"], sigma)
    np.savez_compressed(tmp_path / "pf.npz", mu=mu, sigma=sigma)  # pytorch-fid's own format
    assert np.array_equal(fid.load_npz(str(tmp_path / "pf.npz"))["sigma"], sigma)
    with pytest.raises(ValueError, match="N >= 2"):
        fid.statistics(f[:1])


def test_folder_fid_cli_end_to_end(tmp_path, capsys, model64):
    """Mixed modes and sizes; the FID line equals the formula on independently decoded images."""
    a = _write_folder(str(tmp_path / "a"), _smooth_images(6, 32, 0), modes=["RGB", "L", "P"])
    b = _write_folder(str(tmp_path / "b"), _smooth_images(5, 24, 1), modes=["RGBA", "RGB"])
    Image.fromarray(_smooth_images(1, 40, 2)[0]).save(tmp_path / "b" / "zz_other_size.jpg")
    open(tmp_path / "b" / "notes.txt", "w").write("ignored")
    with pytest.warns(UserWarning, match="fewer images than the 64"):
        fid.main([a, b, "--inception", "random", "--dims", "64", "--device", "cpu",
                  "--num-workers", "0", "--batch-size", "4", "--json", str(tmp_path / "r.json")])
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert last.startswith("FID: ")
    rec = json.loads((tmp_path / "r.json").read_text())
    assert rec["device"] == "cpu" and rec["counts"] == {"a": 6, "b": 6}
    assert rec["file_types"] == {"a": {"png": 6}, "b": {"png": 5, "jpg": 1}}
    assert rec["weights_sha256"] == "random" and rec["comparable"] is False
    model = model64
    with torch.no_grad():
        fa = model(_pil_batch(a)).double().numpy()
        xb = _pil_batch(b)
        jb = torch.from_numpy(np.array(Image.open(tmp_path / "b" / "zz_other_size.jpg")
                                         .convert("RGB"))).permute(2, 0, 1)[None].float() / 255
        fb = torch.cat([model(xb), model(jb)]).double().numpy()
    assert float(last.split()[1]) == pytest.approx(_fid_formula(fa, fb), rel=1e-5)


def test_save_stats_and_reuse(tmp_path, capsys, model64):
    a = _write_folder(str(tmp_path / "a"), _smooth_images(5, 32, 0))
    out = str(tmp_path / "a.npz")
    fid.main(["--save-stats", a, out, "--inception", "random", "--dims", "64",
              "--num-workers", "1"])
    d = np.load(out)
    model = model64
    with torch.no_grad():
        f = model(_pil_batch(a)).double().numpy()
    np.testing.assert_allclose(d["mu"], f.mean(0), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(d["sigma"], np.cov(f, rowvar=False), rtol=1e-4, atol=1e-9)
    with pytest.raises(SystemExit, match="already exists"):
        fid.main(["--save-stats", a, out, "--inception", "random", "--dims", "64"])
    capsys.readouterr()
    with pytest.warns(UserWarning, match="fewer images"):
        fid.main([out, a, "--inception", "random", "--dims", "64", "--num-workers", "0"])
    assert float(capsys.readouterr().out.strip().splitlines()[-1].split()[1]) == pytest.approx(
        0.0, abs=1e-6)


@pytest.mark.skipif(not HAS_PYTORCH_FID, reason="pytorch-fid not installed")
def test_folder_statistics_equal_pytorch_fid(tmp_path, monkeypatch, random_sd, model64):
    import pytorch_fid.inception as pfi
    from pytorch_fid.fid_score import calculate_activation_statistics
    monkeypatch.setattr(pfi, "load_state_dict_from_url", lambda *a, **k: random_sd)
    a = _write_folder(str(tmp_path / "a"), _smooth_images(6, 32, 5), modes=["RGB", "L"])
    files = sorted(str(p) for p in (tmp_path / "a").iterdir())
    mu_ref, sigma_ref = calculate_activation_statistics(
        files, pfi.InceptionV3([0]).eval(), batch_size=4, dims=64, device="cpu", num_workers=0)
    model = model64
    mu, sigma = fid.statistics(fid.folder_features(a, model, 4, num_workers=0)["features"])
    np.testing.assert_allclose(mu, mu_ref, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(sigma, sigma_ref, rtol=1e-4, atol=1e-9)


def test_bad_folders(tmp_path, model64):
    model = model64
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match="no image files"):
        fid.folder_features(str(empty), model)
    junk = tmp_path / "junk"
    junk.mkdir()
    (junk / "a.png").write_bytes(b"not a png")
    with pytest.warns(UserWarning, match="a.png"), pytest.raises(ValueError, match="no readable"):
        fid.folder_features(str(junk), model, num_workers=0)
    _write_folder(str(junk), _smooth_images(2, 16, 0))  # 000.png, 001.png
    os.remove(junk / "001.png")
    with pytest.warns(UserWarning, match="a.png"), pytest.raises(ValueError, match="at least 2"):
        fid.folder_features(str(junk), model, num_workers=0)
    _write_folder(str(junk), _smooth_images(3, 16, 0))
    with pytest.warns(UserWarning, match="a.png"):
        out = fid.folder_features(str(junk), model, num_workers=0)
    assert out["features"].shape == (3, 64) and out["skipped"] == ["a.png"]
    with pytest.raises(SystemExit, match="no image files"):
        fid.main([str(empty), str(junk), "--inception", "random", "--dims", "64"])


def test_cache_reused_and_invalidated(tmp_path, model64):
    a = _write_folder(str(tmp_path / "a"), _smooth_images(4, 16, 0))
    model = model64
    cache = str(tmp_path / "cache")
    first = fid.folder_features(a, model, num_workers=0, cache_dir=cache)
    second = fid.folder_features(a, model, num_workers=0, cache_dir=cache)
    assert "cache_file" in second and np.array_equal(first["features"], second["features"])
    Image.fromarray(_smooth_images(1, 16, 9)[0]).save(os.path.join(a, "000.png"))
    os.utime(os.path.join(a, "000.png"), ns=(1, 1))  # content changed: new size/mtime key
    third = fid.folder_features(a, model, num_workers=0, cache_dir=cache)
    assert "cache_file" not in third
    assert not np.array_equal(third["features"][0], first["features"][0])


def test_generated_images_take_the_png_path(tmp_path, model64):
    """gen_fn output -> quantize -> features equals saving PNGs and reading the folder."""
    g = torch.Generator().manual_seed(0)
    imgs = torch.rand(5, 3, 24, 24, generator=g) * 2.2 - 1.1  # beyond [-1, 1]: clamped
    u8 = (imgs * 127.5 + 128).clamp(0, 255).to(torch.uint8)  # NVlabs' conversion
    assert torch.equal((fid.quantize_images(imgs) * 255).round().to(torch.uint8), u8)
    folder = _write_folder(str(tmp_path / "g"), u8.permute(0, 2, 3, 1).numpy())
    model = model64
    it = iter([imgs[:2], imgs[2:4], imgs[4:]])
    gen = fid.generator_features(lambda b: next(it), 5, model, batch_size=2)
    ref = fid.folder_features(folder, model, num_workers=0)
    np.testing.assert_array_equal(gen["features"], ref["features"])


# ---------------------------------------------------------------------------------------------
# Evaluator (used by the training scripts) and the memorization check


def test_evaluator_scores_and_copies(tmp_path):
    train = _smooth_images(10, 32, 0)
    real = _write_folder(str(tmp_path / "real"), train)
    with pytest.warns(UserWarning, match="fewer images than the 64"):
        ev = fid_eval.Evaluator(real, inception="random", dims=64, batch_size=4, num_workers=0,
                           cache_dir=str(tmp_path / "cache"), kid_subsets=3, kid_subset_size=10)
    assert ev.provenance["comparable"] is False and ev.provenance["counts"]["real"] == 10
    as_gen = torch.from_numpy(train).permute(0, 3, 1, 2).float() / 127.5 - 1  # exact copies
    pos = [0]

    def copies(b):
        out = as_gen[pos[0]:pos[0] + b]
        pos[0] += b
        return out

    r = ev.evaluate(copies, n_gen=10)
    assert set(r) == {"fid", "kid_mean", "kid_std", "copies", "n_real", "n_gen"}
    assert r["copies"] == 10 and r["n_real"] == 10 and r["n_gen"] == 10
    assert abs(r["fid"]) < 1e-6
    # identical sides, subsets = whole sets: KID = 2 (sum_{i!=j} k / (m (m-1)) - sum_ij k / m^2)
    f = ev.real_feats.astype(np.float64)
    k = (f @ f.T / 64 + 1) ** 3
    expected = 2 * ((k.sum() - np.trace(k)) / 90 - k.sum() / 100)
    assert r["kid_mean"] == pytest.approx(expected, rel=1e-9) and np.isnan(r["kid_std"])  # no spread
    g = torch.Generator().manual_seed(7)
    r2 = ev.evaluate(lambda b: torch.rand(b, 3, 16, 16, generator=g) * 2 - 1, n_gen=7)
    assert r2["copies"] == 0 and r2["n_gen"] == 7 and r2["fid"] > 1e-3


def test_nearest_cli_flags_planted_copies(tmp_path, capsys):
    train = _smooth_images(16, 32, 0)
    train_dir = _write_folder(str(tmp_path / "train"), train)
    rng = np.random.default_rng(0)
    noised = np.clip(train[2:4].astype(float) + rng.normal(0, 3, train[2:4].shape), 0, 255)
    gen = np.concatenate([train[:2], noised.round().astype(np.uint8), _smooth_images(4, 32, 99)])
    gen_dir = _write_folder(str(tmp_path / "gen"), gen)
    out = tmp_path / "near"
    res = fid.main(["nearest", gen_dir, train_dir, "--out", str(out), "--top", "3",
                    "--inception", "random", "--dims", "64", "--num-workers", "0"])
    assert res["copy"].tolist() == [True] * 4 + [False] * 4
    assert res["pixel_index"][:4].tolist() == [0, 1, 2, 3]
    line = capsys.readouterr().out.strip().splitlines()[-1]
    assert line.startswith("copies: 4 of 8")
    rows = (out / "nearest.csv").read_text().strip().splitlines()
    assert len(rows) == 9 and rows[1].split(",")[:2] == ["000.png", "000.png"]
    grid = Image.open(out / "nearest.png")
    assert grid.size == (2 * 64 + 3 * 2, 2 + 3 * (64 + 2))  # 3 pairs, side by side


def test_nearest_thresholds_match_brute_force():
    rng = np.random.default_rng(5)
    tf, gf = rng.normal(size=(9, 6)), rng.normal(size=(5, 6))
    tt = rng.integers(0, 256, (9, 3, 64, 64), dtype=np.uint8)
    gt = rng.integers(0, 256, (5, 3, 64, 64), dtype=np.uint8)
    res = fid_eval.nearest(gf, gt, tf, tt)
    cos = lambda a, b: 1 - a @ b / np.linalg.norm(a) / np.linalg.norm(b)  # noqa: E731
    l2 = lambda a, b: np.linalg.norm(a.astype(float) / 255 - b.astype(float) / 255)  # noqa: E731
    thr_c = min(cos(tf[i], tf[j]) for i in range(9) for j in range(9) if i != j)
    thr_p = min(l2(tt[i], tt[j]) for i in range(9) for j in range(9) if i != j)
    assert res["thresholds"] == (pytest.approx(thr_c), pytest.approx(thr_p))
    for g in range(5):
        dc = [cos(gf[g], tf[j]) for j in range(9)]
        dp = [l2(gt[g], tt[j]) for j in range(9)]
        assert res["feat_index"][g] == np.argmin(dc) and res["pixel_index"][g] == np.argmin(dp)
        assert res["feat_dist"][g] == pytest.approx(min(dc), abs=1e-12)
        assert res["pixel_dist"][g] == pytest.approx(min(dp), rel=1e-9)


@requires_cuda
def test_cuda_features_match_cpu(model64):
    x = torch.rand(3, 3, 40, 40)
    gpu = fid.load_inception("random", device="cuda", dims=2048)
    cpu = fid.load_inception("random", dims=2048)
    torch.testing.assert_close(torch.from_numpy(fid._features_of_batch(gpu, x, "cuda")),
                               torch.from_numpy(fid._features_of_batch(cpu, x, "cpu")),
                               rtol=2e-3, atol=2e-3)  # cuDNN may use TF32 convolutions


def test_record_fid_keeps_provenance_and_drops_replayed_rows(tmp_path):
    prov = {"weights": "random", "comparable": False}
    for step, value in ((0, 90.0), (10, 70.0), (20, 60.0)):
        fid_eval.record_fid(str(tmp_path), step, {"fid": value, "kid_mean": value / 1000, "kid_std": 0.001,
                                            "copies": 0, "n_real": 8, "n_gen": 8}, prov, kimg=step * 0.016)
    # a resumed run re-evaluates step 10: the old 10 and 20 rows go, the new 10 stays
    fid_eval.record_fid(str(tmp_path), 10, {"fid": 65.0, "kid_mean": 0.05, "kid_std": 0.002, "copies": 1,
                                      "n_real": 8, "n_gen": 8}, prov)
    text = (tmp_path / "fid.csv").read_text().splitlines()
    assert json.loads(text[0][len("# provenance: "):]) == prov
    rows = fid_eval.read_fid_csv(str(tmp_path / "fid.csv"))
    assert [(r["step"], r["fid"], r["copies"]) for r in rows] == [(0, 90.0, 0), (10, 65.0, 1)]
    assert Image.open(tmp_path / "fid.png").size == (640, 520)


def test_record_fid_on_a_full_disk_names_fid_csv_and_leaves_no_temporary_file(tmp_path, monkeypatch):
    """A write the disk refuses (ENOSPC at the fsync, as on a full disk) raises an OSError naming
    RUN/fid.csv; the file keeps its earlier rows and no temporary file stays in the folder."""
    from ops import runs
    result = {"fid": 90.0, "kid_mean": 0.09, "kid_std": 0.001, "copies": 0, "n_real": 8, "n_gen": 8}
    fid_eval.record_fid(str(tmp_path), 0, result)
    before = sorted(os.listdir(tmp_path))
    text = (tmp_path / "fid.csv").read_text()

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(runs.os, "fsync", full)
    with pytest.raises(OSError) as e:
        fid_eval.record_fid(str(tmp_path), 10, dict(result, fid=70.0))
    assert e.value.errno == errno.ENOSPC and e.value.filename == str(tmp_path / "fid.csv")
    assert sorted(os.listdir(tmp_path)) == before == ["fid.csv", "fid.png"]
    assert (tmp_path / "fid.csv").read_text() == text


@pytest.mark.parametrize("command", ["save-stats", "fid"])
def test_out_of_gpu_memory_is_one_line_naming_a_smaller_batch_size(tmp_path, monkeypatch, command):
    """CUDA's out-of-memory error (raised here by a hook in the network) becomes one line that
    names --batch-size and half the value given; nothing is written."""
    a = _write_folder(str(tmp_path / "a"), _smooth_images(3, 16, 0))

    def oom(self, x):
        raise fid_eval.OUT_OF_MEMORY("CUDA out of memory. Tried to allocate 20.00 GiB (GPU 0; "
                                     "79.19 GiB total capacity)\nSee documentation for Memory Management")

    monkeypatch.setattr(fid.FIDInception3, "forward_batch", oom)
    out = tmp_path / "a.npz"
    argv = ["--save-stats", a, str(out)] if command == "save-stats" else [a, a, "--json", str(out)]
    with pytest.raises(SystemExit) as e:
        fid.main(argv + ["--inception", "random", "--dims", "64", "--num-workers", "0",
                         "--device", "cpu", "--batch-size", "64"])
    msg = str(e.value)
    assert "\n" not in msg and "out of memory on cpu" in msg and "Tried to allocate 20.00 GiB" in msg
    assert "--batch-size 64" in msg and "try --batch-size 32" in msg
    assert not out.exists()


def test_a_duplicate_in_the_training_set_does_not_hide_copies(tmp_path, capsys):
    """One training image saved twice used to set both thresholds to 0 (nothing ever flagged);
    the duplicate pair is now left out and an exact copy of a training image is still a copy."""
    train = _smooth_images(12, 32, 0)
    train = np.concatenate([train, train[5:6]])  # image 5 twice
    train_dir = _write_folder(str(tmp_path / "train"), train)
    noise = np.random.default_rng(9).integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)  # far from all
    gen = np.concatenate([train[2:3], noise])  # an exact copy of image 2, and 3 new images
    gen_dir = _write_folder(str(tmp_path / "gen"), gen)
    res = fid.main(["nearest", gen_dir, train_dir, "--out", str(tmp_path / "near"),
                    "--inception", "random", "--dims", "64", "--num-workers", "0"])
    assert res["copy"].tolist() == [True, False, False, False]
    # the thresholds: the closest pair of distinct training images without the duplicate, by hand
    flat = train.reshape(len(train), -1).astype(np.float64)
    thumbs_equal = fid_eval._flat(fid._thumbnails(torch.from_numpy(train).permute(0, 3, 1, 2).float() / 255))
    pairs = [(i, j) for i in range(len(train)) for j in range(len(train)) if i < j and {i, j} != {5, 12}]
    want_p = min(np.linalg.norm(thumbs_equal[i] - thumbs_equal[j]) for i, j in pairs)
    assert res["thresholds"][1] == pytest.approx(want_p, rel=1e-9) and want_p > 0
    assert np.linalg.norm(flat[5] - flat[12]) == 0
    out = capsys.readouterr().out
    assert "copy thresholds: pool3 cosine" in out and "leaving out near-duplicates" in out
    assert "2 by pool3, 2 by pixels" in out  # both images of the duplicated pair


def test_one_image_rule_any_case_and_a_warning_for_what_is_left_out(tmp_path):
    """Upper-case extensions count for FID as for training; other files are named in a warning
    (data companions such as 01's index.csv are expected and left out silently)."""
    folder = tmp_path / "imgs"
    folder.mkdir()
    imgs = _smooth_images(4, 16, 0)
    for name, a in zip(["a.PNG", "b.png", "c.JPG", "d.gif"], imgs):
        Image.fromarray(a).save(folder / name)
    (folder / "index.csv").write_text("file\n")
    (folder / ".hidden.png").write_bytes(b"")
    with pytest.warns(UserWarning, match=r"1 file\(s\) left out, not an image extension .*: d\.gif$"):
        files = fid.list_images(str(folder))
    assert [os.path.basename(f) for f in files] == ["a.PNG", "b.png", "c.JPG"]
    sg2 = load_script("03_stylegan2_ada")
    with pytest.warns(UserWarning, match=r"d\.gif"):
        ds = sg2.ImageFolderDataset(str(folder), 16, xflip=False)
    assert [os.path.basename(p) for p in ds.paths] == ["a.PNG", "b.png", "c.JPG"]
    ugatit = load_script("05_ugatit")
    with pytest.warns(UserWarning, match=r"d\.gif"):
        assert [os.path.basename(p) for p in ugatit.list_images(str(folder))] == ["a.PNG", "b.png", "c.JPG"]
    v1 = load_script("02_stylegan_freezed")
    with pytest.warns(UserWarning, match=r"d\.gif"):
        assert len(v1.ImageFolder(str(folder), 16)) == 3
