"""04_latent_explore.py's named knobs: sigma along a direction, the knob library (JSON, one per generator,
checked as untrusted input, atomic and locked writes), `name`, `knobs`, `edit --library --knob`, `walk`
and `sheet`, on StyleGAN2 (ours, rosinality .pt, NVIDIA .pkl) and StyleGAN v1 generators.

References: numpy's std of the projected w, the per-slot addition written out by hand, synthetic images
shifted by a known number of pixels, maps whose centre of mass is known, sha256 of the tensor bytes, and
the bytes of a library before a refused command."""
import hashlib
import json
import os
import subprocess
import sys
import threading

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import ROOT, load_script

lx = load_script("04_latent_explore")


def _sg2():
    return load_script("03_stylegan2_ada")


def sg2_checkpoint(path, seed=1, size=16):
    """A tiny StyleGAN2 checkpoint in our format (size px, 16 channels, style_dim 32)."""
    sg2 = _sg2()
    torch.manual_seed(seed)
    g = sg2.Generator(size, style_dim=32, n_mlp=2, channel_multiplier=1, channel_max=16)
    sg2.save_checkpoint(str(path), {"g_ema": g.state_dict(), "args": {"size": size, "style_dim": 32, "n_mlp": 2,
                                                                       "channel_multiplier": 1, "channel_max": 16}})
    return str(path)


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return sg2_checkpoint(tmp_path_factory.mktemp("g") / "g.pt")


@pytest.fixture(scope="module")
def other_ckpt(tmp_path_factory):
    """Same architecture, other weights: another generator."""
    return sg2_checkpoint(tmp_path_factory.mktemp("o") / "o.pt", seed=7)


@pytest.fixture(scope="module")
def dirs(ckpt, tmp_path_factory):
    path = str(tmp_path_factory.mktemp("d") / "sefa.pt")
    lx.main(["sefa", "--ckpt", ckpt, "--out", path, "--device", "cpu"])
    return path


def one_line(err):
    text = str(err.value)
    assert text.startswith("error: ") and "\n" not in text, text
    return text


# ---- the numbers -------------------------------------------------------------------------------------

def test_sefa_file_stores_sigma_the_std_of_w_along_each_direction(ckpt, dirs):
    e = lx.load_explorer(ckpt)
    d = torch.load(dirs, weights_only=True)
    z = np.random.RandomState(lx.GANSPACE_SEED + 1).standard_normal((lx.STDEV_SAMPLES, 32))
    w = e.mapping(torch.from_numpy(z).float()).double().numpy()
    want = (w @ d["directions"].double().numpy().T).std(0, ddof=1)       # numpy, independent of w_stdev
    assert d["stdev"].shape == (len(d["directions"]),)
    np.testing.assert_allclose(d["stdev"].numpy(), want, rtol=1e-5)
    assert d["checkpoint"] == lx.fingerprint(e) and d["n_latent"] == e.n_latent and d["family"] == "stylegan2"


def test_apply_knobs_adds_strength_times_sigma_on_its_own_slots():
    torch.manual_seed(0)
    ws = torch.randn(2, 6, 4)
    n1, n2 = torch.randn(4), torch.randn(4)
    got = lx.apply_knobs(ws, [(n1, 0.5, (0, 1), 2.0), (n2, 3.0, (1, 4), -1.0)])
    want = ws.clone()
    for slot in range(6):                                  # written out slot by slot
        if slot in (0, 1):
            want[:, slot] += 2.0 * 0.5 * n1
        if 1 <= slot <= 4:
            want[:, slot] -= 1.0 * 3.0 * n2
    torch.testing.assert_close(got, want)
    assert torch.equal(lx.apply_knobs(ws, [(n1, 0.5, (0, 5), 0.0)]), ws)


def test_walk_starts_at_each_key_eases_between_them_and_loops():
    keys = torch.arange(3 * 2 * 2, dtype=torch.float32).view(3, 2, 2)
    frames = lx.walk_styles(keys, 4)
    assert frames.shape == (12, 2, 2)
    for i in range(3):
        assert torch.equal(frames[4 * i], keys[i])                          # each key is a frame
    torch.testing.assert_close(frames[2], (keys[0] + keys[1]) / 2)          # u = 1/2: halfway
    t = (1 - np.cos(np.pi * 0.25)) / 2                                        # u = 1/4, eased
    torch.testing.assert_close(frames[9], (1 - t) * keys[2] + t * keys[0])  # the last leg goes back to the first


def test_change_location_of_maps_with_known_centres():
    m = torch.zeros(30, 30)
    m[3:6, 12:18] = 1.0                                     # a patch in the top third, centred at x = 0.5
    loc = lx.change_location(m)
    assert loc["centroid"] == pytest.approx([0.5, 4.5 / 30])
    assert loc["thirds"]["top"] == pytest.approx(1.0) and loc["spread"] == pytest.approx(9 / 900)
    flat = lx.change_location(torch.ones(30, 30))
    assert flat["spread"] == pytest.approx(0.5, abs=2 / 900) and flat["thirds"]["middle"] == pytest.approx(1 / 3)
    m = torch.zeros(30, 30)
    m[20:24, 5:10] = 2.0                                    # lower middle
    assert lx.change_location(m)["centroid"][1] == pytest.approx(22 / 30)


def _smooth_face(size=32, dx=0.0):
    """A smooth synthetic picture: a bright disc with a dark spot, shifted right by dx pixels."""
    y, x = np.mgrid[0:size, 0:size] + 0.5
    disc = np.exp(-((x - size / 2 - dx) ** 2 + (y - size / 2) ** 2) / (2 * (size / 6) ** 2))
    spot = np.exp(-((x - size / 2 - dx - 3) ** 2 + (y - size / 2.5) ** 2) / 4.0)
    img = (disc - spot) * 1.6 - 0.8
    return torch.from_numpy(np.stack([img] * 3)[None]).float()


def test_pose_change_finds_a_known_shift_and_not_a_local_change():
    lo, hi = _smooth_face(dx=-2.0), _smooth_face(dx=2.0)
    pose = lx.pose_change(lo, hi)
    assert pose["shift_x"]["px"] == pytest.approx(4.0, abs=0.41) and pose["shift_x"]["share"] > 0.9
    assert pose["shift_y"]["share"] < 0.5
    local = lo.clone()
    local[..., 20:24, 14:18] += 0.8                         # something appears at the mouth (y = 0.69)
    pose = lx.pose_change(lo, local)
    assert max(p["share"] for p in pose.values()) < 0.2
    word = lx.where_word(lx.change_location(lx.change_map(lo, local)), pose)
    assert word == "mouth"
    assert lx.where_word(lx.change_location(lx.change_map(lo, hi)), lx.pose_change(lo, hi)) == "pose"


# ---- the library ---------------------------------------------------------------------------------------

def test_name_writes_a_library_that_stands_alone(ckpt, dirs, tmp_path, capsys):
    lib = tmp_path / "knobs.json"
    lx.main(["name", "--dirs", dirs, "--index", "2", "--name", "mouth", "--layers", "4-5", "--range=-2:4",
             "--library", str(lib)])
    lx.main(["name", "--dirs", dirs, "--index", "0", "--name", "hair", "--library", str(lib)])
    d = torch.load(dirs, weights_only=True)
    text = lib.read_text()
    data = json.loads(text)                                  # plain JSON, no NaN
    assert [k["name"] for k in data["knobs"]] == ["mouth", "hair"]
    assert text.splitlines()[3].lstrip().startswith('{"name": "mouth"')   # one knob per line, name first
    mouth = data["knobs"][0]
    assert mouth["layers"] == [4, 5] and mouth["range"] == [-2.0, 4.0] and mouth["unit"] == "sigma"
    np.testing.assert_allclose(mouth["vector"], d["directions"][2].numpy(), atol=1e-7)
    assert mouth["sigma"] == pytest.approx(float(d["stdev"][2]), rel=1e-7)
    t = d["directions"].float().contiguous()
    assert mouth["source"] == {"method": "sefa", "index": 2, "sign": 1, "file": "sefa.pt", "directions": hashlib.sha256(
        str(tuple(t.shape)).encode() + t.numpy().tobytes()).hexdigest()[:16]}
    assert data["knobs"][1]["layers"] == [0, 5]              # default: the directions file's layers
    assert data["generator"] == {"fingerprint": lx.fingerprint(lx.load_explorer(ckpt)), "family": "stylegan2",
                                 "size": 16, "style_dim": 32, "n_latent": 6}
    assert sorted(os.listdir(tmp_path)) == [".knobs.json.lock", "knobs.json"]   # no temp file left
    lx.main(["name", "--dirs", dirs, "--index", "2", "--name", "less mouth", "--flip", "--library", str(lib)])
    flipped = json.loads(lib.read_text())["knobs"][2]
    np.testing.assert_allclose(flipped["vector"], -d["directions"][2].numpy(), atol=1e-7)
    assert flipped["source"]["sign"] == -1 and flipped["sigma"] == mouth["sigma"]
    capsys.readouterr()
    lx.main(["knobs", "--library", str(lib)])
    out = capsys.readouterr().out
    assert "mouth       sefa #2 (sefa.pt)   4-5" in out and "-2..4 sigma" in out and "3 knob(s)" in out
    assert "less mouth  -sefa #2 (sefa.pt)" in out


def test_an_older_sefa_file_needs_ckpt_to_measure_sigma(ckpt, dirs, tmp_path):
    d = torch.load(dirs, weights_only=True)
    old = tmp_path / "old.pt"
    torch.save({k: d[k] for k in ("directions", "values", "method", "layers")}, old)   # before sigma was stored
    lib = tmp_path / "k.json"
    with pytest.raises(SystemExit, match="older directions file.*pass --ckpt") as err:
        lx.main(["name", "--dirs", str(old), "--index", "1", "--name", "x", "--library", str(lib)])
    one_line(err)
    assert not lib.exists()
    torch.save({k: d[k] for k in ("directions", "values", "method", "layers", "checkpoint", "family", "size",
                                  "n_latent")}, old)
    with pytest.raises(SystemExit, match="without the spread of w.*pass --ckpt"):
        lx.main(["name", "--dirs", str(old), "--index", "1", "--name", "x", "--library", str(lib)])
    lx.main(["name", "--dirs", str(old), "--index", "1", "--name", "x", "--library", str(lib), "--ckpt", ckpt])
    assert json.loads(lib.read_text())["knobs"][0]["sigma"] == pytest.approx(float(d["stdev"][1]), rel=1e-6)


def _library(path, dirs, names=("hair",)):
    for i, name in enumerate(names):
        lx.main(["name", "--dirs", dirs, "--index", str(i), "--name", name, "--library", str(path)])
    return path.read_bytes()


def _junk_libraries(good):
    """Hand-edited or foreign files a user may pass as a library: (name, bytes, message)."""
    data = json.loads(good)
    knob = data["knobs"][0]

    def edited(**change):
        return json.dumps(dict(data, knobs=[dict(knob, **change)])).encode()
    first = f'"vector": [{knob["vector"][0]:.8g}'.encode()
    assert first in good
    rng = np.random.RandomState(0)
    return [
        ("truncated", good[: len(good) // 2], "not JSON"),
        ("megabytes of junk", rng.randint(0, 256, 5 << 20, dtype=np.uint8).tobytes(), "larger than a knob library"),
        ("junk", rng.randint(0, 256, 3000, dtype=np.uint8).tobytes(), "not a knob library"),
        ("nested", b"[" * 100000 + b"]" * 100000, "not a knob library"),
        ("NaN in the vector", good.replace(first, b'"vector": [NaN'), "NaN is not a JSON number"),
        ("an infinite number", good.replace(first, b'"vector": [1e999'), "not a finite number"),
        ("wrong length", edited(vector=knob["vector"][:-1]), "vector of length 31, but the generator's w has 32"),
        ("not unit", edited(vector=[v * 2 for v in knob["vector"]]), "unit length"),
        ("layers outside", edited(layers=[2, 9]), "layers 2-9 outside the generator's 6 style slots"),
        ("layers as text", edited(layers="0-3"), "layers must be"),
        ("negative sigma", edited(sigma=-1.0), "sigma must be a positive"),
        ("bool index", edited(source=dict(knob["source"], index=True)), "source index"),
        ("sign 2", edited(source=dict(knob["source"], sign=2)), "source sign must be 1 or -1"),
        ("unknown field", edited(comment="mine"), "unknown field 'comment'"),
        ("bad name", edited(name="a/b"), "only letters"),
        ("two knobs one name", json.dumps(dict(data, knobs=[knob, knob])).encode(), "used twice"),
        ("a key twice", good.replace(b'"version": 1,', b'"version": 1, "version": 1,'), "appears twice"),
        ("another format", json.dumps({"format": "x", "version": 1, "generator": {}, "knobs": []}).encode(),
         "not a 'calm-gan knob library'"),
        ("not utf-8", good.replace(b'"hair"', b'"h\xffir"'), "not UTF-8"),
    ]


@pytest.mark.parametrize("case", range(19))
def test_a_bad_library_is_one_line_and_stays_as_it_was(ckpt, dirs, tmp_path, case):
    good = _library(tmp_path / "good.json", dirs)
    name, junk, message = _junk_libraries(good)[case]
    path = tmp_path / "lib.json"
    path.write_bytes(junk)
    for argv in (["knobs", "--library", str(path)],
                 ["name", "--dirs", dirs, "--index", "3", "--name", "new", "--library", str(path)],
                 ["edit", "--ckpt", ckpt, "--library", str(path), "--knob", "hair", "--out", str(tmp_path / "e")]):
        with pytest.raises(SystemExit, match=message) as err:
            lx.main(argv)
        assert str(path) in one_line(err), name
        assert path.read_bytes() == junk, name              # never rewritten
    assert not (tmp_path / "e").exists()


def test_name_refuses_another_generator_a_taken_name_and_a_range_outside(ckpt, other_ckpt, dirs, tmp_path):
    lib = tmp_path / "k.json"
    before = _library(lib, dirs, ("hair", "mouth"))
    other = str(tmp_path / "other.pt")
    lx.main(["sefa", "--ckpt", other_ckpt, "--out", other])
    cases = [(["--dirs", other, "--index", "0", "--name", "new"], "library of another generator"),
             (["--dirs", dirs, "--index", "4", "--name", "Mouth"], "already has a knob 'Mouth'.*--overwrite"),
             (["--dirs", dirs, "--index", "4", "--name", "new", "--layers", "3-6"], "outside the generator's 6 style"),
             (["--dirs", dirs, "--index", "4", "--name", "new", "--layers", "5-2"], "runs backwards"),
             (["--dirs", dirs, "--index", "99", "--name", "new"], "--index 99 outside"),
             (["--dirs", dirs, "--index", "4", "--name", "seed"], "seed control"),
             (["--dirs", dirs, "--index", "4", "--name", "new", "--range=3:-3"], "low < high"),
             (["--dirs", dirs, "--index", "4", "--name", "new", "--ckpt", other_ckpt], "another generator")]
    for argv, message in cases:
        with pytest.raises(SystemExit, match=message) as err:
            lx.main(["name", "--library", str(lib)] + argv)
        one_line(err)
        assert lib.read_bytes() == before
    lx.main(["name", "--library", str(lib), "--dirs", dirs, "--index", "4", "--name", "mouth", "--overwrite"])
    knobs = json.loads(lib.read_text())["knobs"]
    assert [k["name"] for k in knobs] == ["hair", "mouth"] and knobs[1]["source"]["index"] == 4


def test_edit_refuses_the_library_of_another_generator(ckpt, other_ckpt, dirs, tmp_path):
    lib = tmp_path / "k.json"
    _library(lib, dirs)
    with pytest.raises(SystemExit, match="library of another generator") as err:
        lx.main(["edit", "--ckpt", other_ckpt, "--library", str(lib), "--knob", "hair", "--out", str(tmp_path / "e")])
    one_line(err)
    for argv, message in ((["--knob", "nose"], "no knob 'nose' \\(it has: hair\\)"), (["--knob", "hair=x"], "a number"),
                          ([], "needs --knob"), (["--knob", "hair", "--layers", "0-1"], "its own layer range")):
        with pytest.raises(SystemExit, match=message):
            lx.main(["edit", "--ckpt", ckpt, "--library", str(lib), "--out", str(tmp_path / "e")] + argv)
    with pytest.raises(SystemExit, match="one of them"):
        lx.main(["edit", "--ckpt", ckpt, "--library", str(lib), "--dirs", dirs, "--out", str(tmp_path / "e")])
    assert not (tmp_path / "e").exists()


# ---- concurrent saves ----------------------------------------------------------------------------------

def _knob(name, dim=32, n_latent=6):
    v = np.zeros(dim)
    v[hash(name) % dim] = 1.0
    return {"name": name, "layers": [0, n_latent - 1], "range": [-3.0, 3.0], "unit": "sigma", "sigma": 1.0,
            "source": {"method": "sefa", "index": 0, "sign": 1, "directions": "0" * 16, "file": "d.pt"},
            "vector": v.tolist()}


GEN = {"fingerprint": "0123456789abcdef", "family": "stylegan2", "size": 16, "style_dim": 32, "n_latent": 6}


def test_two_threads_saving_at_once_keep_every_knob(tmp_path, monkeypatch):
    """Each save reads, adds and writes; a slow write (sleep inside it) makes the two overlap for real."""
    import time
    write = lx.write_library
    inside, overlap = [0], [0]

    def slow_write(path, lib):
        inside[0] += 1
        overlap[0] = max(overlap[0], inside[0])
        time.sleep(0.02)
        write(path, lib)
        inside[0] -= 1
    monkeypatch.setattr(lx, "write_library", slow_write)
    path = str(tmp_path / "k.json")
    start = threading.Barrier(2)

    def save(prefix):
        start.wait()
        for i in range(8):
            lx.add_knob(path, _knob(f"{prefix}{i}"), GEN)
    threads = [threading.Thread(target=save, args=(p,)) for p in "ab"]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    names = {k["name"] for k in lx.read_library(path)["knobs"]}
    assert names == {f"{p}{i}" for p in "ab" for i in range(8)}
    assert overlap[0] == 1                                   # the lock let one writer in at a time


def test_two_processes_saving_at_once_keep_every_knob(tmp_path):
    """Two processes (each imports 04, says it is ready, waits for the other, then saves 8 knobs with a
    slow write) on one library: fcntl's lock keeps all 16."""
    path = str(tmp_path / "k.json")
    code = ("import sys, os, time, importlib.util, json\n"
            f"sys.path.insert(0, {ROOT!r})\n"
            f"spec = importlib.util.spec_from_file_location('lx', {os.path.join(ROOT, '04_latent_explore.py')!r})\n"
            "lx = importlib.util.module_from_spec(spec); spec.loader.exec_module(lx)\n"
            "write = lx.write_library\n"
            "lx.write_library = lambda p, lib: (time.sleep(0.02), write(p, lib))\n"
            "prefix, path, knob, gen = sys.argv[1], sys.argv[2], json.loads(sys.argv[3]), json.loads(sys.argv[4])\n"
            "open(f'{path}.{prefix}.ready', 'w').close()\n"
            "while not all(os.path.exists(f'{path}.{p}.ready') for p in 'ab'):\n"
            "    time.sleep(0.01)\n"
            "for i in range(8):\n"
            "    lx.add_knob(path, dict(knob, name=f'{prefix}{i}'), gen)\n")
    procs = [subprocess.Popen([sys.executable, "-c", code, p, path, json.dumps(_knob("x")), json.dumps(GEN)])
             for p in "ab"]
    assert [p.wait(timeout=300) for p in procs] == [0, 0]
    names = {k["name"] for k in lx.read_library(path)["knobs"]}
    assert names == {f"{p}{i}" for p in "ab" for i in range(8)}


def test_a_failed_write_leaves_the_old_library(tmp_path, monkeypatch):
    path = str(tmp_path / "k.json")
    lx.add_knob(path, _knob("a"), GEN)
    before = open(path, "rb").read()

    def full_disk(src, dst):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(os, "replace", full_disk)
    with pytest.raises(OSError):
        lx.add_knob(path, _knob("b"), GEN)
    assert open(path, "rb").read() == before and sorted(os.listdir(tmp_path)) == [".k.json.lock", "k.json"]


# ---- edit, walk and sheet by name ----------------------------------------------------------------------

def _by_hand(e, seed, knobs, truncation):
    """The edited image written out: w of the seed, truncated, repeated per slot, + s sigma n on the knob's slots."""
    z = torch.from_numpy(np.random.RandomState(seed).randn(1, 32)).float()
    w = e.w_avg + truncation * (e.mapping(z) - e.w_avg)
    ws = w[:, None].repeat(1, e.n_latent, 1)
    for k, s in knobs:
        a, b = k["layers"]
        ws[:, a:b + 1] += s * k["sigma"] * torch.tensor(k["vector"])
    return np.asarray(lx.to_pil(e.synthesize(ws)[0]))


def test_edit_by_knob_name_sweeps_one_and_applies_several(ckpt, dirs, tmp_path):
    lib = tmp_path / "k.json"
    lx.main(["name", "--dirs", dirs, "--index", "0", "--name", "hair", "--layers", "0-3", "--library", str(lib)])
    lx.main(["name", "--dirs", dirs, "--index", "1", "--name", "tilt", "--layers", "2-5", "--library", str(lib)])
    knobs = {k["name"]: k for k in json.loads(lib.read_text())["knobs"]}
    e = lx.load_explorer(ckpt)
    out = tmp_path / "sweep"
    lx.main(["edit", "--ckpt", ckpt, "--library", str(lib), "--knob", "hair", "--knob", "tilt=1.5", "--seeds", "2",
             "--caption-top", "ME", "--out", str(out)])
    sheet = np.asarray(Image.open(out / "grid_hair_tilt+1.5.png").convert("RGB"))
    for col, s in enumerate(np.linspace(-3, 3, 7)):          # the knob's range, 7 steps
        cell = sheet[2:18, 2 + 18 * col:18 + 18 * col]
        assert np.array_equal(cell, _by_hand(e, 2, [(knobs["hair"], s), (knobs["tilt"], 1.5)], 0.7)), s
    gif = Image.open(out / "seed0002_hair_tilt+1.5.gif")
    assert gif.n_frames == 7 and gif.size == (256, 256)     # the meme: captioned, enlarged
    out = tmp_path / "both"
    lx.main(["edit", "--ckpt", ckpt, "--library", str(lib), "--knob", "hair=2", "--knob", "tilt=-1", "--seeds", "0-1",
             "--out", str(out)])
    for seed in (0, 1):
        want = _by_hand(e, seed, [(knobs["hair"], 2.0), (knobs["tilt"], -1.0)], 0.7)
        assert np.array_equal(np.asarray(Image.open(out / f"seed{seed:04d}_hair+2_tilt-1.png")), want)
        row = np.asarray(Image.open(out / "grid_hair+2_tilt-1.png").convert("RGB"))[2 + 18 * seed:18 + 18 * seed]
        assert np.array_equal(row[:, 2:18], _by_hand(e, seed, [], 0.7)) and np.array_equal(row[:, 20:36], want)
    with pytest.raises(SystemExit, match="exists"):                          # the output rule holds
        lx.main(["edit", "--ckpt", ckpt, "--library", str(lib), "--knob", "hair=2", "--knob", "tilt=-1",
                 "--seeds", "0-1", "--out", str(out)])
    with pytest.raises(SystemExit, match="one knob is swept at a time"):
        lx.main(["edit", "--ckpt", ckpt, "--library", str(lib), "--knob", "hair", "--knob", "tilt",
                 "--out", str(tmp_path / "x")])


def test_walk_is_a_looping_gif_through_the_seeds(ckpt, dirs, tmp_path):
    lib = tmp_path / "k.json"
    _library(lib, dirs)
    out = tmp_path / "walk.gif"
    lx.main(["walk", "--ckpt", ckpt, "--seeds", "3,5", "--frames", "4", "--library", str(lib), "--knob", "hair=1",
             "--out", str(out)])
    gif = Image.open(out)
    assert gif.n_frames == 8 and gif.size == (256, 256) and gif.info.get("loop") == 0
    knob = json.loads(lib.read_text())["knobs"][0]
    e = lx.load_explorer(ckpt)
    gif.seek(4)                                             # frame 4 is the second seed's image, x16 Lanczos
    want = Image.fromarray(_by_hand(e, 5, [(knob, 1.0)], 0.7)).resize((256, 256), Image.LANCZOS)
    assert np.abs(np.asarray(gif.convert("RGB")).astype(float) - np.asarray(want)).mean() < 6  # GIF palette
    with pytest.raises(SystemExit, match="at least two seeds"):
        lx.main(["walk", "--ckpt", ckpt, "--seeds", "3", "--out", str(tmp_path / "w.gif")])


def test_sheet_rows_cells_and_numbers(ckpt, dirs, tmp_path):
    out = tmp_path / "sheet"
    lx.main(["sheet", "--ckpt", ckpt, "--dirs", dirs, "--count", "2", "--seeds", "0-1", "--strengths=-3:3:3",
             "--out", str(out)])
    rec = json.loads((out / "sheet.json").read_text())
    e = lx.load_explorer(ckpt)
    assert [z["name"] for z in rec["zones"]] == ["coarse", "middle"] and rec["zones"][1]["layers"] == [4, 5]
    assert [(r["index"], r["zone"]) for r in rec["rows"]] == [(0, "coarse"), (0, "middle"), (1, "coarse"),
                                                               (1, "middle")]
    d = torch.load(dirs, weights_only=True)
    row = rec["rows"][3]                                    # direction 1 on slots 4-5: the change, by hand
    knob = {"vector": d["directions"][1].tolist(), "sigma": float(d["stdev"][1]), "layers": [4, 5]}
    lo = [np.asarray(_by_hand(e, s, [(knob, -3.0)], 0.7), float) for s in (0, 1)]
    hi = [np.asarray(_by_hand(e, s, [(knob, 3.0)], 0.7), float) for s in (0, 1)]
    want = np.mean([np.abs(h - l) for h, l in zip(hi, lo)]) / 127.5   # uint8 -> [-1, 1] units
    assert row["change"] == pytest.approx(want, abs=0.01)
    assert row["word"] in ("top", "eyes", "mouth", "bottom", "whole image", "pose") and len(row["map"]) == 16
    assert sum(row["thirds"].values()) == pytest.approx(1.0, abs=1e-4)
    sheet = Image.open(out / "sheet.png")
    label, cell, header = max(lx.SHEET_CELL, 150), lx.SHEET_CELL + 2, lx.SHEET_CELL // 4 + 8
    assert sheet.size == (label + (2 * 3 + 1) * cell, header + 2 * (2 * cell + 6))   # 16 px cells enlarged x8
    first = {"vector": d["directions"][0].tolist(), "sigma": float(d["stdev"][0]), "layers": [0, 3]}
    want = Image.fromarray(_by_hand(e, 0, [(first, -3.0)], 0.7)).resize((128, 128), Image.NEAREST)
    a = np.asarray(sheet.convert("RGB"))
    assert np.array_equal(a[header:header + 128, label:label + 128], np.asarray(want))  # seed 0 at -3 sigma


# ---- every generator family ------------------------------------------------------------------------------

def _rosinality(tmp_path):
    import argparse
    sg2 = _sg2()
    torch.manual_seed(4)
    g = sg2.Generator(16, style_dim=32, n_mlp=2, channel_multiplier=1, channel_max=16)
    args = argparse.Namespace(size=16, channel_multiplier=1, channel_max=16, n_mlp=2, latent=32)
    path = tmp_path / "rosinality.pt"
    torch.save({"g_ema": g.state_dict(), "args": args, "latent_avg": torch.zeros(32)}, path)  # rosinality's layout
    return str(path)


def _nvidia(tmp_path, monkeypatch):
    from test_stylegan2_models import nv_discriminator_params, nv_generator_params, write_nvidia_pkl
    torch.manual_seed(3)
    path = tmp_path / "network-snapshot.pkl"
    write_nvidia_pkl(path, monkeypatch, nv_generator_params(32, 8, 16, 2), nv_discriminator_params(32, 8))
    return str(path)


def _v1(tmp_path):
    sg1 = load_script("02_stylegan_freezed")
    torch.manual_seed(2)
    g = sg1.StyledGenerator(code_dim=32, n_mlp=2, channels=sg1.scaled_channels(16))
    path = str(tmp_path / "v1.pt")
    sg1.save_checkpoint(path, {"g_running": g.state_dict(), "args": {"size": 16}})
    return path


@pytest.mark.parametrize("kind", ["rosinality", "nvidia", "stylegan_v1"])
def test_knobs_on_every_generator_family(kind, tmp_path, monkeypatch):
    path = {"rosinality": lambda: _rosinality(tmp_path), "nvidia": lambda: _nvidia(tmp_path, monkeypatch),
            "stylegan_v1": lambda: _v1(tmp_path)}[kind]()
    e = lx.load_explorer(path)
    dirs, lib = str(tmp_path / "d.pt"), tmp_path / "k.json"
    lx.main(["sefa", "--ckpt", path, "--out", dirs])
    lx.main(["name", "--dirs", dirs, "--index", "0", "--name", "first", "--layers", f"0-{e.n_latent - 1}",
             "--library", str(lib)])
    gen = json.loads(lib.read_text())["generator"]
    assert gen["fingerprint"] == lx.fingerprint(lx.load_explorer(path)) and gen["n_latent"] == e.n_latent
    lx.main(["sheet", "--ckpt", path, "--dirs", dirs, "--count", "1", "--seeds", "0", "--strengths=-3,3",
             "--out", str(tmp_path / "s")])
    zones = json.loads((tmp_path / "s" / "sheet.json").read_text())["zones"]
    assert [z["name"] for z in zones] == [n for n, _, _ in e.mix_bands()]
    lx.main(["edit", "--ckpt", path, "--library", str(lib), "--knob", "first=2", "--seeds", "1",
             "--out", str(tmp_path / "e")])
    knob = json.loads(lib.read_text())["knobs"][0]
    z = torch.from_numpy(np.random.RandomState(1).randn(1, e.style_dim)).float()
    ws = (e.w_avg + 0.7 * (e.mapping(z) - e.w_avg))[:, None].repeat(1, e.n_latent, 1)
    ws = ws + 2.0 * knob["sigma"] * torch.tensor(knob["vector"])
    want = np.asarray(lx.to_pil(e.synthesize(ws)[0]))
    assert np.array_equal(np.asarray(Image.open(tmp_path / "e" / "seed0001_first+2.png")), want)
