"""Tests for 01_prepare_data.py: crop geometry, page modes, outputs, demo faces, CARN loading, errors."""
import csv
import functools
import json
import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from conftest import load_script

prep = load_script("01_prepare_data")


# ------------------------------------------------------------------ helpers
def noise_page(path, w=60, h=40, seed=0, mode="RGB"):
    a = np.random.default_rng(seed).integers(0, 256, size=(h, w, 3), dtype=np.uint8)
    img = Image.fromarray(a, "RGB")
    img.save(path)
    return a


def write_csv(path, rows, header=("filename", "x0", "y0", "x1", "y1", "label")):
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    return str(path)


def run_prepare(tmp_path, rows, *extra, pages=None):
    pages = pages or tmp_path / "pages"
    boxes = write_csv(tmp_path / "boxes.csv", rows)
    out = tmp_path / "out"
    prep.main(["--pages", str(pages), "--boxes", boxes, "--out", str(out), *extra])
    return out


def read_index(out):
    with open(out / "index.csv", newline="") as f:
        return list(csv.DictReader(f))


def expected_crop(a, left, top, side, pad):
    """Reference crop by numpy padding then slicing (independent of PIL paste)."""
    h, w = a.shape[:2]
    p = side + 2
    padded = np.empty((h + 2 * p, w + 2 * p, 3), np.uint8)
    padded[:] = np.array(pad, np.uint8)
    padded[p:p + h, p:p + w] = a
    return padded[top + p:top + p + side, left + p:left + p + side]


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny tensors: one CPU thread is faster than many and steadier on a shared machine."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture
def page_dir(tmp_path):
    d = tmp_path / "pages"
    d.mkdir()
    a = noise_page(d / "p.png")
    return d, a


# ------------------------------------------------------------------ crop geometry
def test_margin_zero_square_box_equals_slicing(tmp_path, page_dir):
    d, a = page_dir
    out = run_prepare(tmp_path, [["p.png", 7, 5, 23, 21, "a"]], "--size", "16")
    crop = np.asarray(Image.open(out / "00000.png"))
    assert crop.shape == (16, 16, 3)
    np.testing.assert_array_equal(crop, a[5:21, 7:23])      # written unchanged at --size


@pytest.mark.parametrize("box", [(0, 0, 10, 10), (50, 0, 60, 10), (0, 30, 10, 40), (50, 30, 60, 40),
                                 (0, 15, 12, 25), (48, 12, 60, 24), (20, 0, 30, 8), (25, 33, 35, 40)])
def test_boxes_at_every_border_are_padded(tmp_path, page_dir, box):
    d, a = page_dir
    out = run_prepare(tmp_path, [["p.png", *box, ""]], "--margin", "1.0", "--size", "20",
                      "--pad-color", "10,200,30")
    row = read_index(out)[0]
    left, top, side = int(row["crop_x0"]), int(row["crop_y0"]), int(row["crop_side"])
    w, h = box[2] - box[0], box[3] - box[1]
    assert side == round(max(w, h) * 2.0)
    assert abs((left + side / 2) - (box[0] + box[2]) / 2) <= 0.5
    assert abs((top + side / 2) - (box[1] + box[3]) / 2) <= 0.5
    ref = expected_crop(a, left, top, side, (10, 200, 30))
    img = prep.crop_square(Image.fromarray(a), left, top, side, (10, 200, 30))
    np.testing.assert_array_equal(np.asarray(img), ref)
    assert Image.open(out / "00000.png").size == (20, 20)
    assert (ref == np.array([10, 200, 30], np.uint8)).all(axis=2).any()     # some padding present


def test_pad_color_fills_off_page_region():
    page = Image.new("RGB", (10, 10), (0, 0, 0))
    img = np.asarray(prep.crop_square(page, -5, -5, 10, (255, 0, 0)))
    assert (img[:5, :] == [255, 0, 0]).all() and (img[:, :5] == [255, 0, 0]).all()
    assert (img[5:, 5:] == 0).all()
    white = np.asarray(prep.crop_square(page, 8, 8, 4))
    assert (white[:2, :2] == 0).all() and (white[2:, :] == 255).all()


@pytest.mark.parametrize("upscaler", ["lanczos", "bicubic"])
@pytest.mark.parametrize("wh", [(5, 9), (13, 13), (40, 30), (3, 1)])
def test_exact_output_size(wh, upscaler):
    box = prep.Box("p", 2, 2, 2 + wh[0], 2 + wh[1])
    left, top, side = prep.square_around(box, 0.25)
    assert side == round(max(wh) * 1.25)
    page = Image.new("RGB", (50, 50), (90, 90, 90))
    out = prep.resize_square(prep.crop_square(page, left, top, side), 24, upscaler)
    assert out.size == (24, 24)


def test_upscale_matches_pil_lanczos(page_dir):
    _, a = page_dir
    crop = Image.fromarray(a[:12, :12].copy())
    ours = np.asarray(prep.resize_square(crop, 32, "lanczos"))
    np.testing.assert_array_equal(ours, np.asarray(crop.resize((32, 32), Image.Resampling.LANCZOS)))


# ------------------------------------------------------------------ page modes
def _alpha_over_white(rgb, alpha):
    a = alpha.astype(np.float64)[..., None] / 255.0
    return rgb.astype(np.float64) * a + 255.0 * (1 - a)


def test_mode_rgba_composited_on_white():
    rng = np.random.default_rng(1)
    rgba = rng.integers(0, 256, (8, 8, 4), dtype=np.uint8)
    out = np.asarray(prep.to_rgb(Image.fromarray(rgba, "RGBA"))).astype(np.float64)
    np.testing.assert_allclose(out, _alpha_over_white(rgba[..., :3], rgba[..., 3]), atol=1.01)


def test_mode_la_and_l_and_1():
    rng = np.random.default_rng(2)
    la = rng.integers(0, 256, (6, 6, 2), dtype=np.uint8)
    out = np.asarray(prep.to_rgb(Image.fromarray(la, "LA"))).astype(np.float64)
    ref = _alpha_over_white(np.repeat(la[..., :1], 3, axis=2), la[..., 1])
    np.testing.assert_allclose(out, ref, atol=1.01)
    grey = rng.integers(0, 256, (6, 6), dtype=np.uint8)
    np.testing.assert_array_equal(np.asarray(prep.to_rgb(Image.fromarray(grey, "L"))),
                                  np.repeat(grey[..., None], 3, axis=2))
    bits = rng.integers(0, 2, (6, 6)).astype(bool)
    one = np.asarray(prep.to_rgb(Image.fromarray(bits).convert("1")))
    np.testing.assert_array_equal(one[..., 0], np.where(bits, 255, 0))


def test_mode_p_with_transparent_index():
    img = Image.new("P", (4, 4), 0)
    img.putpalette([10, 20, 30, 200, 100, 50] + [0] * 762)
    img.putpixel((1, 1), 1)
    img.info["transparency"] = 0                 # palette index 0 is transparent
    out = np.asarray(prep.to_rgb(img))
    assert tuple(out[1, 1]) == (200, 100, 50)
    assert tuple(out[0, 0]) == (255, 255, 255)


def test_mode_cmyk_without_black():
    rgb = np.random.default_rng(3).integers(0, 256, (5, 5, 3), dtype=np.uint8)
    cmyk = np.concatenate([255 - rgb, np.zeros((5, 5, 1), np.uint8)], axis=2)
    np.testing.assert_array_equal(np.asarray(prep.to_rgb(Image.fromarray(cmyk, "CMYK"))), rgb)


def test_mode_16bit_grey_scaled():
    a = np.array([[0, 257, 65535], [32896, 514, 1000]], dtype=np.uint16)
    img = Image.fromarray(a)
    assert img.mode == "I;16"
    out = np.asarray(prep.to_rgb(img))[..., 0]
    np.testing.assert_array_equal(out, np.rint(a / 257.0).astype(np.uint8))


@pytest.mark.parametrize("ext", ["png", "jpg", "webp", "bmp", "gif"])
def test_file_formats_load_as_rgb(tmp_path, ext):
    a = np.zeros((16, 16, 3), np.uint8)
    a[:, 8:] = 255
    path = tmp_path / f"p.{ext}"
    if ext == "gif":                             # two frames: the first must be read
        f0 = Image.fromarray(a).convert("P")
        f1 = Image.fromarray(255 - a).convert("P")
        f0.save(path, save_all=True, append_images=[f1], duration=100)
    else:
        Image.fromarray(a).save(path, **({"lossless": True} if ext == "webp" else {}))
    img = prep.load_page(str(path))
    assert img.mode == "RGB" and img.size == (16, 16)
    tol = 40 if ext == "jpg" else 0
    assert np.abs(np.asarray(img).astype(int) - a).max() <= tol


# ------------------------------------------------------------------ outputs
def test_index_and_dataset_json(tmp_path, page_dir):
    d, _ = page_dir
    out = run_prepare(tmp_path, [["p.png", 1, 1, 11, 9, "alice"], ["p.png", 30, 20, 50, 38, "bob"]],
                      "--size", "24", "--margin", "0.5")
    rows = read_index(out)
    assert [r["file"] for r in rows] == ["00000.png", "00001.png"]
    assert rows[0]["page"] == "p.png" and rows[1]["label"] == "bob"
    assert [int(rows[1][k]) for k in ("x0", "y0", "x1", "y1")] == [30, 20, 50, 38]
    assert int(rows[0]["crop_side"]) == 15 and int(rows[1]["crop_side"]) == 30
    info = json.loads((out / "dataset.json").read_text())
    assert info["count"] == 2 and info["size"] == 24 and info["upscaler"] == "lanczos"
    assert info["margin"] == 0.5 and info["source"] == "pages"
    sheet = Image.open(out / "overview" / "contact_sheet.png")
    assert sheet.width >= 2 * 24 and sheet.height > 24
    assert sorted(os.listdir(out)) == ["00000.png", "00001.png", "dataset.json", "index.csv", "overview"]


def test_json_boxes_are_accepted(tmp_path, page_dir):
    d, a = page_dir
    boxes = tmp_path / "boxes.json"
    boxes.write_text(json.dumps([{"filename": "p.png", "x0": 4, "y0": 4, "x1": 12, "y1": 12, "label": "x"},
                                 ["p.png", 0, 0, 8, 8]]))
    out = tmp_path / "out"
    prep.main(["prepare", "--pages", str(d), "--boxes", str(boxes), "--out", str(out), "--size", "8"])
    np.testing.assert_array_equal(np.asarray(Image.open(out / "00001.png")), a[0:8, 0:8])
    assert read_index(out)[0]["label"] == "x"


def test_interrupted_run_keeps_an_index_of_written_crops(tmp_path, page_dir, monkeypatch):
    d, _ = page_dir
    noise_page(d / "q.png", seed=1)
    real_load = prep.load_page

    def load_then_stop(path):
        if path.endswith("q.png"):
            raise KeyboardInterrupt
        return real_load(path)
    monkeypatch.setattr(prep, "load_page", load_then_stop)
    with pytest.raises(KeyboardInterrupt):
        run_prepare(tmp_path, [["p.png", 0, 0, 8, 8, ""], ["p.png", 8, 8, 16, 16, ""],
                               ["q.png", 0, 0, 8, 8, ""]], "--size", "8")
    rows = read_index(tmp_path / "out")
    assert [r["file"] for r in rows] == ["00000.png", "00001.png"]
    assert all((tmp_path / "out" / r["file"]).exists() for r in rows)
    assert not [f for f in os.listdir(tmp_path / "out") if f.startswith(".tmp-")]


def test_min_size_drops_and_reports(tmp_path, page_dir, capsys):
    out = run_prepare(tmp_path, [["p.png", 0, 0, 5, 5, ""], ["p.png", 0, 0, 20, 20, ""],
                                 ["p.png", 10, 10, 14, 30, ""]], "--min-size", "10", "--size", "16")
    assert "dropped 1 of 3" in capsys.readouterr().out
    assert len(read_index(out)) == 2


def test_dedupe_drops_near_duplicates(tmp_path, page_dir, capsys):
    out = run_prepare(tmp_path, [["p.png", 0, 0, 20, 20, ""], ["p.png", 30, 10, 50, 30, ""],
                                 ["p.png", 0, 0, 20, 20, "again"]], "--dedupe", "--size", "16")
    text = capsys.readouterr().out
    assert "dropped 1 near-duplicate" in text and "row 4" in text and "00000.png" in text
    assert len(read_index(out)) == 2


def test_phash_hamming_tolerates_small_changes():
    rng = np.random.default_rng(5)
    a = (rng.random((32, 32)) * 255).astype(np.uint8)
    img = Image.fromarray(np.kron(a, np.ones((2, 2), np.uint8)))
    brighter = Image.fromarray(np.clip(np.asarray(img).astype(int) + 6, 0, 255).astype(np.uint8))
    other = Image.fromarray((rng.random((64, 64)) * 255).astype(np.uint8))
    assert prep.hamming(prep.phash(img), prep.phash(brighter)) <= 4
    assert prep.hamming(prep.phash(img), prep.phash(other)) > 10


def test_dct_matrix_matches_scipy():
    from scipy.fft import dct
    v = np.random.default_rng(0).random(32)
    np.testing.assert_allclose(prep._dct_matrix(32) @ v, dct(v, norm="ortho"), atol=1e-12)


# ------------------------------------------------------------------ demo data
def test_demo_is_deterministic_and_varied():
    a = prep.make_demo_faces(12, size=32, seed=3)
    b = prep.make_demo_faces(12, size=32, seed=3)
    c = prep.make_demo_faces(4, size=32, seed=4)
    arrays = [np.asarray(x) for x in a]
    assert all(x.shape == (32, 32, 3) and x.dtype == np.uint8 for x in arrays)
    assert all(np.array_equal(x, np.asarray(y)) for x, y in zip(a, b))
    assert not any(np.array_equal(arrays[i], np.asarray(c[i])) for i in range(4))
    for i in range(12):                                      # pairwise different
        for j in range(i + 1, 12):
            assert np.abs(arrays[i].astype(int) - arrays[j]).mean() > 5
    for x in arrays:                                         # black-and-white line art on white
        assert (x[..., 0] == x[..., 1]).all() and (x[..., 0] == x[..., 2]).all()
        assert (x > 200).mean() > 0.4 and (x < 60).mean() > 0.02
        assert x[0].mean() > 200 or x[-1].mean() > 200      # background shows at an edge


def test_write_demo_and_cli_flag_form(tmp_path):
    prep.main(["--demo", "6", "--out", str(tmp_path / "d"), "--size", "32", "--seed", "1"])
    prep.main(["demo", "--n", "6", "--out", str(tmp_path / "e"), "--size", "32", "--seed", "1"])
    for name in ("d", "e"):
        files = sorted(os.listdir(tmp_path / name))
        assert files == [f"{i:05d}.png" for i in range(6)] + ["dataset.json", "index.csv", "overview"]
        assert os.listdir(tmp_path / name / "overview") == ["contact_sheet.png"]
    info = json.loads((tmp_path / "d" / "dataset.json").read_text())
    assert info["count"] == 6 and info["size"] == 32 and info["seed"] == 1 and info["source"] == "demo"
    assert (tmp_path / "d" / "00005.png").read_bytes() == (tmp_path / "e" / "00005.png").read_bytes()
    assert len(read_index(tmp_path / "d")) == 6



def test_source_style_is_coloured_deterministic_and_varied(tmp_path):
    """The source domain (stand-in for FFHQ): shaded colour faces, unlike the grey line art."""
    a = [np.asarray(x).astype(int) for x in prep.make_demo_faces(12, size=32, seed=3, style="source")]
    b = [np.asarray(x).astype(int) for x in prep.make_demo_faces(4, size=32, seed=3, style="source")]
    target = [np.asarray(x).astype(int) for x in prep.make_demo_faces(4, size=32, seed=3)]
    assert all(np.array_equal(x, y) for x, y in zip(a, b))  # a longer set starts with the shorter one
    assert not any(np.array_equal(x, y) for x, y in zip(a, target))
    for i in range(12):
        for j in range(i + 1, 12):
            assert np.abs(a[i] - a[j]).mean() > 5
    for x in a:
        chroma = x.max(-1) - x.min(-1)                       # 0 for grey pixels
        assert chroma.mean() > 15                            # coloured skin, hair, background
        assert (x.min(-1) > 200).mean() < 0.5                # not line art on white paper
        assert len(np.unique(x.reshape(-1, 3), axis=0)) > 200  # shading: many distinct colours
    prep.main(["--demo", "3", "--demo-style", "source", "--out", str(tmp_path / "s"), "--size", "32", "--seed", "3"])
    info = json.loads((tmp_path / "s" / "dataset.json").read_text())
    assert info["style"] == "source" and "colour" in info["description"]
    assert np.array_equal(np.asarray(Image.open(tmp_path / "s" / "00002.png")), a[2].astype(np.uint8))


# ------------------------------------------------------------------ CARN
@functools.lru_cache(maxsize=1)
def _released_carn_state():
    return _build_released_carn_state()


def released_carn_state():
    return dict(_released_carn_state())


def _build_released_carn_state(seed=0):
    """A state dict in the released CARN_V2 layout (yu45020/Waifu2x Models.py keys, `1.` prefix, fp16),
    random values."""
    shapes = {"entry_block.m.0.weight": [64, 3, 3, 3], "entry_block.m.0.bias": [64]}
    for b in range(3):
        for j in (0, 2, 4):
            for k in (0, 2):
                shapes[f"blocks.{b}.blocks.{j}.m.{k}.weight"] = [64, 64, 3, 3]
                shapes[f"blocks.{b}.blocks.{j}.m.{k}.bias"] = [64]
        for j in (1, 3, 5):
            p = f"blocks.{b}.blocks.{j}."
            shapes[p + "channel_excite.0.weight"] = [4, 64]
            shapes[p + "channel_excite.0.bias"] = [4]
            shapes[p + "channel_excite.2.weight"] = [64, 4]
            shapes[p + "channel_excite.2.bias"] = [64]
            shapes[p + "spatial_excite.0.weight"] = [1, 64, 1, 1]
        for i in range(3):
            shapes[f"blocks.{b}.singles.{i}.m.0.weight"] = [64, 64 * (i + 2), 3, 3]
            shapes[f"blocks.{b}.singles.{i}.m.0.bias"] = [64]
    for i in range(3):
        shapes[f"singles.{i}.m.0.weight"] = [64, 64 * (i + 2), 3, 3]
        shapes[f"singles.{i}.m.0.bias"] = [64]
    shapes.update({"upsampler.m.0.0.weight": [256, 64, 3, 3], "upsampler.m.0.0.bias": [256],
                   "exit_conv.weight": [3, 64, 3, 3], "exit_conv.bias": [3]})
    g = torch.Generator().manual_seed(seed)
    state = {}
    for k, s in shapes.items():
        fan_in = int(np.prod(s[1:])) if len(s) > 1 else 64
        state["1." + k] = (torch.randn(s, generator=g) / np.sqrt(fan_in)).half()
    return state


def carn_reference_forward(sd, x):
    """CARN_V2 forward written from yu45020/Waifu2x Models.py + Common.py with torch.nn.functional,
    on a bare float state dict."""
    act = lambda t: F.leaky_relu(t, 0.1)                      # noqa: E731
    conv = lambda t, p, pad=1: F.conv2d(t, sd[p + ".weight"], sd.get(p + ".bias"), padding=pad)  # noqa: E731

    def rfb(t, p):
        return act(conv(act(conv(t, p + ".m.0")), p + ".m.2") + t)

    def se(t, p):
        c = torch.sigmoid(F.linear(torch.relu(F.linear(t.mean((2, 3)), sd[p + ".channel_excite.0.weight"],
                                                       sd[p + ".channel_excite.0.bias"])),
                                   sd[p + ".channel_excite.2.weight"], sd[p + ".channel_excite.2.bias"]))
        s = torch.sigmoid(F.conv2d(t, sd[p + ".spatial_excite.0.weight"]))
        return t * c[:, :, None, None] + t * s

    def carn_block(t, p):
        c0 = t
        for i, step in enumerate([lambda u: rfb(u, p + ".blocks.0"), lambda u: se(u, p + ".blocks.1"),
                                  lambda u: rfb(u, p + ".blocks.2")]):
            c0 = torch.cat([c0, step(t)], 1)
            t = act(conv(c0, f"{p}.singles.{i}.m.0"))
        return t

    x = act(conv(x, "entry_block.m.0"))
    res = c0 = x
    for i in range(3):
        c0 = torch.cat([c0, carn_block(x, f"blocks.{i}")], 1)
        x = act(conv(c0, f"singles.{i}.m.0"))
    x = F.pixel_shuffle(act(conv(x + res, "upsampler.m.0.0")), 2)
    return conv(x, "exit_conv")


@pytest.fixture(scope="module")
def carn_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("carn") / "CARN_model_checkpoint.pt"
    torch.save(released_carn_state(), path)
    return str(path)


@pytest.fixture(scope="module")
def carn_model(carn_file):
    return prep.load_carn(carn_file)


def test_carn_parameter_count_matches_release():
    assert sum(p.numel() for p in prep.CARNV2().parameters()) == 2_149_607


def test_carn_strict_load_and_forward_matches_functional_reference(carn_file):
    model = prep.load_carn(carn_file)
    bare = {k[2:]: v.float() for k, v in released_carn_state().items()}
    for k, v in model.state_dict().items():
        assert torch.equal(v, bare[k])
    x = torch.rand(1, 3, 10, 12)
    with torch.no_grad():
        y = model(x)
    assert y.shape == (1, 3, 20, 24)
    torch.testing.assert_close(y, carn_reference_forward(bare, x), rtol=1e-4, atol=1e-5)


def test_carn_tiled_x2_geometry(carn_model):
    model = carn_model
    x = torch.rand(1, 3, 13, 9)
    whole = prep.carn_x2(model, x, tile=0, overlap=3)
    with torch.no_grad():
        ref = model(F.pad(x, (3, 3, 3, 3), mode="replicate"))[:, :, 6:-6, 6:-6].clamp(0, 1)
    torch.testing.assert_close(whole, ref)
    tiled = prep.carn_x2(model, x, tile=5, overlap=3)
    assert tiled.shape == (1, 3, 26, 18)
    assert (tiled >= 0).all() and (tiled <= 1).all()
    # the top-left tile sees exactly the padded region [0, 5 + 6) x [0, 5 + 6)
    with torch.no_grad():
        corner = model(F.pad(x, (3, 3, 3, 3), mode="replicate")[:, :, :11, :11])[:, :, 6:16, 6:16]
    torch.testing.assert_close(tiled[:, :, :10, :10], corner.clamp(0, 1))


@pytest.mark.parametrize("side,passes", [(20, 1), (12, 2), (40, 0)])
def test_carn_upscale_passes_and_size(carn_model, side, passes):
    model = carn_model
    calls = []
    handle = model.register_forward_hook(lambda m, i, o: calls.append(i[0].shape[-1]))
    img = Image.fromarray(np.random.default_rng(0).integers(0, 256, (side, side, 3), dtype=np.uint8))
    out = prep.resize_square(img, 32, "carn", lambda im, s: prep.carn_upscale(model, im, s, tile=64))
    handle.remove()
    assert out.size == (32, 32) and len(calls) == passes


def test_prepare_with_carn_end_to_end(tmp_path, page_dir, carn_file):
    out = run_prepare(tmp_path, [["p.png", 0, 0, 12, 12, ""]], "--upscaler", "carn",
                      "--sr-weights", carn_file, "--size", "32", "--device", "cpu")
    assert Image.open(out / "00000.png").size == (32, 32)
    assert json.loads((out / "dataset.json").read_text())["sr_weights"] == "CARN_model_checkpoint.pt"


def test_carn_load_refuses_wrong_keys_and_shapes(tmp_path):
    state = released_carn_state()
    del state["1.exit_conv.bias"]
    bad = tmp_path / "missing.pt"
    torch.save(state, bad)
    expected = r"missing\.pt: not a CARN_V2 state dict: 1 missing \(e\.g\. exit_conv\.bias\)"
    with pytest.raises(prep.PrepareError, match=expected):
        prep.load_carn(str(bad))
    state = released_carn_state()
    state["1.singles.0.m.0.weight"] = torch.zeros(64, 128, 1, 1)      # the 1x1 CARN singles
    torch.save(state, bad)
    with pytest.raises(prep.PrepareError, match="wrong shape"):
        prep.load_carn(str(bad))


# ------------------------------------------------------------------ errors
def _error(capsys, tmp_path, rows, *extra, pages=None):
    with pytest.raises(SystemExit) as e:
        run_prepare(tmp_path, rows, *extra, pages=pages)
    return str(e.value)


def test_error_box_outside_page_names_row(tmp_path, page_dir, capsys):
    msg = _error(capsys, tmp_path, [["p.png", 0, 0, 10, 10, ""], ["p.png", 55, 0, 61, 10, ""]])
    assert "boxes.csv row 3" in msg and "outside its page" in msg and "60x40" in msg
    assert not (tmp_path / "out").exists()                       # before any work


def test_error_zero_area_names_row(tmp_path, page_dir, capsys):
    msg = _error(capsys, tmp_path, [["p.png", 5, 5, 5, 10, ""]])
    assert "boxes.csv row 2" in msg and "zero area" in msg


def test_error_missing_page_names_row(tmp_path, page_dir, capsys):
    msg = _error(capsys, tmp_path, [["p.png", 0, 0, 5, 5, ""], ["gone.png", 0, 0, 5, 5, ""]])
    assert "boxes.csv row 3" in msg and "gone.png not found" in msg


def test_error_bad_number_and_header(tmp_path, page_dir, capsys):
    msg = _error(capsys, tmp_path, [["p.png", 0, "abc", 5, 5, ""]])
    assert "boxes.csv row 2" in msg and "y0 is 'abc'" in msg
    boxes = write_csv(tmp_path / "bad.csv", [["p.png", 0, 0, 5]], header=("file", "x0", "y0", "x1"))
    with pytest.raises(SystemExit, match="bad.csv: header must be filename,x0,y0,x1,y1"):
        prep.main(["--pages", str(page_dir[0]), "--boxes", boxes, "--out", str(tmp_path / "o")])


def test_corrupt_page_warns_and_continues(tmp_path, page_dir, capsys):
    d, _ = page_dir
    (d / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nthis is not a png")
    out = run_prepare(tmp_path, [["broken.png", 0, 0, 5, 5, ""], ["p.png", 0, 0, 8, 8, ""]], "--size", "8")
    err = capsys.readouterr().err
    assert "warning:" in err and "broken.png" in err and "skipped" in err
    assert len(read_index(out)) == 1
    assert json.loads((out / "dataset.json").read_text())["skipped_pages"] == ["broken.png"]


def test_truncated_page_warns_at_load(tmp_path, page_dir, capsys):
    d, _ = page_dir
    data = (d / "p.png").read_bytes()
    (d / "cut.png").write_bytes(data[: len(data) // 2])          # header fine, pixels cut off
    out = run_prepare(tmp_path, [["cut.png", 0, 0, 5, 5, ""], ["p.png", 0, 0, 8, 8, ""]], "--size", "8")
    assert "cut.png" in capsys.readouterr().err
    assert [r["page"] for r in read_index(out)] == ["p.png"]


def test_existing_output_refused_unless_overwrite(tmp_path, page_dir, capsys):
    rows = [["p.png", 0, 0, 8, 8, ""]]
    out = run_prepare(tmp_path, rows, "--size", "8")
    (out / "notes.txt").write_text("mine")
    msg = _error(capsys, tmp_path, rows, "--size", "8")
    assert "output folder exists" in msg and "--overwrite" in msg
    run_prepare(tmp_path, rows, "--size", "8", "--overwrite")
    assert (out / "notes.txt").read_text() == "mine" and (out / "00000.png").exists()


def test_carn_without_weights_says_where_published(tmp_path, page_dir, capsys):
    msg = _error(capsys, tmp_path, [["p.png", 0, 0, 8, 8, ""]], "--upscaler", "carn")
    assert "--sr-weights" in msg and "yu45020/Waifu2x" in msg and "CARN_model_checkpoint.pt" in msg
    msg = _error(capsys, tmp_path, [["p.png", 0, 0, 8, 8, ""]], "--upscaler", "carn",
                 "--sr-weights", str(tmp_path / "nope.pt"))
    assert "nope.pt: CARN weights file not found" in msg


def test_crop_face_is_the_hand_computed_square_then_lanczos():
    """One box on a 60x40 page, margin 0.2: side = round(30 * 1.2) = 36, left = floor(20 - 18 + 0.5) = 2,
    top = floor(21 - 18 + 0.5) = 3; the square runs past the bottom edge, so it is padded white."""
    a = np.random.default_rng(3).integers(0, 256, (40, 60, 3), dtype=np.uint8)
    box = prep.Box("p.png", 10, 6, 30, 36)
    crop, where = prep.crop_face(Image.fromarray(a), box, 0.2, 24)
    assert where == (2, 3, 36)
    want = Image.fromarray(expected_crop(a, 2, 3, 36, (255, 255, 255))).resize((24, 24), Image.Resampling.LANCZOS)
    assert np.array_equal(np.asarray(crop), np.asarray(want))


def test_the_method_lies_above_the_plumbing_line():
    """01 reads like the other numbered scripts: geometry, CARN and the hash above one plumbing line,
    page reading, writers, the demo faces, mark and the CLI below it."""
    import ast
    path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "01_prepare_data.py")
    text = open(path, encoding="utf-8").read()
    lines = text.splitlines()
    banner = [i + 1 for i, line in enumerate(lines) if line.startswith("# ---- plumbing:")]
    assert len(banner) == 1
    where = {n.name: n.lineno for n in ast.parse(text).body if isinstance(n, (ast.FunctionDef, ast.ClassDef))}
    for name in ("square_around", "crop_square", "resize_square", "crop_face", "CARNV2", "load_carn",
                 "carn_upscale", "phash", "make_contact_sheet"):
        assert where[name] < banner[0], name
    for name in ("read_boxes", "load_page", "write_atomic", "make_demo_faces", "prepare", "mark", "main"):
        assert where[name] > banner[0], name
