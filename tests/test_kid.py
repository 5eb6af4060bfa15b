"""ops.fid KID; ops.fid_eval provenance record and small-sample warning (honest few-shot evaluation).

KID is checked against the unbiased MMD^2 written out with explicit loops in float64.
"""
import json
import warnings

import numpy as np
import pytest

from ops import fid, fid_eval


def _mmd2_loops(x, y):
    """Binkowski et al. 2018 unbiased MMD^2 with k(a, b) = (a.b / d + 1)^3, explicit loops."""
    m, d = x.shape
    k = lambda a, b: (float(np.dot(a, b)) / d + 1.0) ** 3  # noqa: E731
    sxx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j)
    syy = sum(k(y[i], y[j]) for i in range(m) for j in range(m) if i != j)
    sxy = sum(k(x[i], y[j]) for i in range(m) for j in range(m))
    return (sxx + syy) / (m * (m - 1)) - 2 * sxy / m ** 2


def test_kid_whole_sets_equals_loops():
    rng = np.random.default_rng(0)
    a = rng.gamma(1.5, size=(12, 16))
    b = rng.gamma(1.8, size=(12, 16)) + 0.1
    mean, std = fid.kid(a, b, subsets=4, subset_size=50)  # capped at 12: every subset is whole
    assert mean == pytest.approx(_mmd2_loops(a, b), rel=1e-10)
    assert np.isnan(std)  # identical subsets: no spread measured, so none is reported


def test_kid_subsets_with_seed_equal_loops():
    rng = np.random.default_rng(1)
    a = rng.gamma(1.5, size=(30, 8)).astype(np.float32)
    b = rng.gamma(1.6, size=(17, 8)).astype(np.float32)
    m, subsets, seed = 9, 5, 3
    draw = np.random.default_rng(seed)  # the documented draw order: a's subset, then b's
    ref = []
    for _ in range(subsets):
        ia = draw.choice(len(a), m, replace=False)
        ib = draw.choice(len(b), m, replace=False)
        ref.append(_mmd2_loops(a[ia].astype(np.float64), b[ib].astype(np.float64)))
    mean, std = fid.kid(a, b, subsets=subsets, subset_size=m, seed=seed)
    assert mean == pytest.approx(np.mean(ref), rel=1e-9)
    assert std == pytest.approx(np.std(ref), rel=1e-7)
    assert fid.kid(a, b, subsets=subsets, subset_size=m, seed=seed) == (mean, std)  # repeatable


def test_kid_one_side_whole_equals_loops():
    """The side used whole has its self-kernel sum computed once: same numbers as the loops."""
    rng = np.random.default_rng(2)
    a, b = rng.normal(size=(40, 6)), rng.normal(size=(7, 6)) + 0.3
    draw = np.random.default_rng(0)
    ref = []
    for _ in range(3):
        ia, ib = draw.choice(40, 7, replace=False), draw.choice(7, 7, replace=False)
        ref.append(_mmd2_loops(a[ia], b[ib]))
    mean, std = fid.kid(a, b, subsets=3, subset_size=100)
    assert mean == pytest.approx(np.mean(ref), rel=1e-9)
    assert std == pytest.approx(np.std(ref), rel=1e-6)


def test_kid_unbiased_and_grows_with_shift():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(600, 32))
    mean, std = fid.kid(x[:300], x[300:], subsets=20, subset_size=100)
    assert abs(mean) < 3 * std  # same distribution: zero within its spread
    shifted_small, _ = fid.kid(x[:300], x[300:] + 0.3, subsets=20, subset_size=100)
    shifted_big, s_big = fid.kid(x[:300], x[300:] + 1.0, subsets=20, subset_size=100)
    assert 0 < shifted_small < shifted_big and shifted_big > 10 * s_big


def test_kid_bad_input():
    with pytest.raises(ValueError, match="same d"):
        fid.kid(np.zeros((4, 3)), np.zeros((4, 5)))
    with pytest.raises(ValueError, match="at least 2"):
        fid.kid(np.zeros((1, 3)), np.zeros((4, 3)))


RANDOM_INFO = {"weights": fid.RANDOM_WEIGHTS_LABEL, "weights_sha256": "random",
               "comparable": False, "dims": 64}


def _features_file(path, n, d, shift, seed, info=RANDOM_INFO):
    f = np.abs(np.random.default_rng(seed).normal(size=(n, d)) + shift).astype(np.float32)
    fid.save_features(str(path), {"features": f, "files": [f"{i}.png" for i in range(n)],
                                  "file_types": {"png": n}}, info)
    return f


def test_cli_kid_line_json_and_warning_below_dims(tmp_path, capsys):
    fa = _features_file(tmp_path / "a.npz", 20, 64, 0.0, 0)
    fb = _features_file(tmp_path / "b.npz", 30, 64, 0.2, 1)
    out = tmp_path / "rec.json"
    with pytest.warns(UserWarning, match="fewer images than the 64 feature dimensions") as rec:
        res = fid.main([str(tmp_path / "a.npz"), str(tmp_path / "b.npz"), "--kid",
                        "--kid-subsets", "4", "--kid-subset-size", "10", "--inception", "random",
                        "--dims", "64", "--json", str(out)])
    assert sum("feature dimensions" in str(w.message) for w in rec) == 1  # once
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[-2].startswith("KID: ") and " ± " in lines[-2]
    assert lines[-1] == f"FID: {res['fid']}"
    mean, std = fid.kid(fa, fb, 4, 10)
    assert lines[-2] == f"KID: {mean:.6g} ± {std:.6g} (std over 4 subsets of 10 images per side; given)"
    ref = fid.frechet_distance(*fid.statistics(fa), *fid.statistics(fb), method="sqrtm")
    assert res["fid"] == pytest.approx(ref, rel=1e-6)
    j = json.loads(out.read_text())
    for key in ("counts", "weights", "weights_sha256", "resize", "file_types", "device", "dims",
                "git_commit", "comparable", "kid", "fid", "kid_mean", "kid_std", "warning"):
        assert key in j, key
    assert j["counts"] == {"a": 20, "b": 30} and j["dims"] == 64 and "n/a" in j["device"]
    assert j["file_types"] == {"a": {"png": 20}, "b": {"png": 30}}
    assert j["comparable"] is False and "not comparable" in j["weights"]
    assert j["weights_sha256"] == "random"
    assert "bilinear" in j["resize"] and "299" in j["resize"]
    assert j["kid"] == {"subsets": 4, "subset_size": 10, "subset_size_rule": "given", "seed": 0}
    assert j["warning"] and "64" in j["warning"]


def test_no_warning_at_or_above_dims(tmp_path, capsys):
    _features_file(tmp_path / "a.npz", 70, 64, 0.0, 0)
    _features_file(tmp_path / "b.npz", 64, 64, 0.1, 1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # any warning fails the test
        fid.main([str(tmp_path / "a.npz"), str(tmp_path / "b.npz"), "--inception", "random",
                  "--dims", "64"])
    assert capsys.readouterr().out.strip().splitlines()[-1].startswith("FID: ")


def test_kid_needs_features_not_just_stats(tmp_path):
    f = np.random.default_rng(0).normal(size=(10, 64))
    fid.save_statistics(str(tmp_path / "s.npz"), *fid.statistics(f))
    _features_file(tmp_path / "b.npz", 10, 64, 0.0, 1)
    with pytest.raises(SystemExit, match="KID needs features"), pytest.warns(UserWarning):
        fid.main([str(tmp_path / "s.npz"), str(tmp_path / "b.npz"), "--kid", "--inception",
                  "random", "--dims", "64"])


def test_features_from_different_weights_warn(tmp_path):
    _features_file(tmp_path / "a.npz", 70, 64, 0.0, 0)
    _features_file(tmp_path / "b.npz", 70, 64, 0.0, 1, dict(RANDOM_INFO, weights_sha256="f00"))
    with pytest.warns(UserWarning, match="different Inception weights"):
        fid.main([str(tmp_path / "a.npz"), str(tmp_path / "b.npz"), "--dims", "64"])


def _unbiased_mmd2(x, y):
    """The unbiased MMD^2 of whole sets, from the kernel matrices (numpy, float64)."""
    d = x.shape[1]
    kxx, kyy, kxy = ((x @ x.T / d + 1) ** 3, (y @ y.T / d + 1) ** 3, (x @ y.T / d + 1) ** 3)
    m, n = len(x), len(y)
    return ((kxx.sum() - np.trace(kxx)) / (m * (m - 1)) + (kyy.sum() - np.trace(kyy)) / (n * (n - 1))
            - 2 * kxy.sum() / (m * n))


def test_kid_500_vs_500_has_a_measured_std(tmp_path, capsys):
    """Equal few-shot sets (500 vs 500): the default subsets are smaller than the sets, so the std
    is positive, and the mean agrees with the unbiased formula on the whole sets within it."""
    rng = np.random.default_rng(11)
    a = np.abs(rng.normal(size=(500, 16)))
    b = np.abs(rng.normal(size=(500, 16)) + 0.15)
    mean, std = fid.kid(a, b, subsets=100)
    assert std > 0
    assert abs(mean - _unbiased_mmd2(a, b)) < std
    assert fid.choose_kid_subset_size(500, 500) == (250, "default: half the smaller set, so that the subsets differ")
    assert fid.choose_kid_subset_size(5000, 2000)[0] == 1000  # large sets: the usual 1000


def test_kid_cli_500_vs_500_says_which_subsets(tmp_path, capsys):
    fa = _features_file(tmp_path / "a.npz", 500, 64, 0.0, 0)
    fb = _features_file(tmp_path / "b.npz", 500, 64, 0.1, 1)
    out = tmp_path / "rec.json"
    fid.main([str(tmp_path / "a.npz"), str(tmp_path / "b.npz"), "--kid", "--kid-subsets", "20",
              "--inception", "random", "--dims", "64", "--json", str(out)])
    mean, std = fid.kid(fa, fb, 20)
    line = capsys.readouterr().out.strip().splitlines()[-2]
    assert std > 0 and " ± 0 " not in line
    assert line == (f"KID: {mean:.6g} ± {std:.6g} (std over 20 subsets of 250 images per side; "
                    f"default: half the smaller set, so that the subsets differ)")
    j = json.loads(out.read_text())
    assert j["kid"]["subset_size"] == 250 and "half the smaller set" in j["kid"]["subset_size_rule"]
    assert j["kid_std"] == pytest.approx(std)


def test_kid_cli_whole_sets_report_no_std(tmp_path, capsys):
    _features_file(tmp_path / "a.npz", 70, 64, 0.0, 0)
    _features_file(tmp_path / "b.npz", 70, 64, 0.1, 1)
    out = tmp_path / "rec.json"
    fid.main([str(tmp_path / "a.npz"), str(tmp_path / "b.npz"), "--kid", "--kid-subsets", "3",
              "--kid-subset-size", "1000", "--inception", "random", "--dims", "64", "--json", str(out)])
    line = capsys.readouterr().out.strip().splitlines()[-2]
    assert "±" not in line and "std not available" in line
    assert json.loads(out.read_text())["kid_std"] is None


def test_fid_png_draws_no_band_and_no_std_label_without_a_measured_std(tmp_path):
    from PIL import Image, ImageChops

    def draw(std):
        rows = [{"step": s, "fid": 50.0 - s, "kid_mean": 0.02, "kid_std": std} for s in (0, 10, 20)]
        path = str(tmp_path / f"fid-{std}.png")
        fid_eval.draw_fid_curve(rows, path)
        return Image.open(path).convert("RGB")

    zero, nan, measured = draw(0.0), draw(float("nan")), draw(0.001)
    assert ImageChops.difference(zero, nan).getbbox() is None  # a 0 (old fid.csv) is "not measured" too
    label = (76, 272, 400, 288)  # the KID panel's title line (points lie mid-panel: constant mean)
    assert ImageChops.difference(zero.crop(label), measured.crop(label)).getbbox() is not None
    blue = lambda im: int((np.asarray(im) == (30, 80, 200)).all(axis=2).sum())  # noqa: E731
    assert blue(measured) > blue(zero)  # bands only when measured
