"""One output rule for the sampling commands of 02, 03, 04 and 05: a file the command would write that
already exists is refused, by name, before anything is written (the user's file byte-identical, no
other file or folder made); with --overwrite exactly those files are replaced, other files untouched.

References: the bytes the user wrote, the folder listing before the command, and the same command run
into a fresh folder (what a replaced file must equal); for 03 generate --ckpt RUN, the same command on
the newest checkpoint file of RUN/checkpoints, chosen by hand.
"""
import os

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import load_script
from test_stylegan_v1 import write_source_checkpoint

MINE = b"a picture the user made"


def listing(folder):
    return sorted(os.path.relpath(os.path.join(d, n), folder) for d, dirs, files in os.walk(folder)
                  for n in dirs + files)


def pixels(path):
    return np.asarray(Image.open(path).convert("RGB"))


def check_rule(tmp_path, run, taken, fresh_names):
    """run(out, *flags) runs the command into folder `out`. `taken`: the name of one of its outputs,
    which the user already has in `out`; fresh_names: all the names it writes into a fresh folder."""
    fresh = tmp_path / "fresh"
    run(fresh)
    assert listing(fresh) == sorted(fresh_names)
    out = tmp_path / "out"
    out.mkdir()
    (out / taken).write_bytes(MINE)
    (out / "notes.txt").write_text("the user's notes")
    before = listing(out)
    with pytest.raises((SystemExit, FileExistsError)) as err:
        run(out)
    message = str(err.value)
    assert "\n" not in message and os.path.join(str(out), taken) in message and "--overwrite" in message
    assert (out / taken).read_bytes() == MINE and listing(out) == before  # nothing written, nothing made
    run(out, "--overwrite")
    assert (out / "notes.txt").read_text() == "the user's notes"        # only the outputs replaced
    assert listing(out) == sorted(set(fresh_names) | {"notes.txt"})
    for name in (n for n in fresh_names if os.path.isfile(fresh / n)):
        if name.endswith(".gif"):
            a, b = Image.open(fresh / name), Image.open(out / name)
            assert a.n_frames == b.n_frames
        np.testing.assert_array_equal(pixels(out / name), pixels(fresh / name), err_msg=name)


def sg2_checkpoint(path, seed):
    sg2 = load_script("03_stylegan2_ada")
    torch.manual_seed(seed)
    g = sg2.Generator(16, style_dim=8, n_mlp=1, channel_multiplier=1, channel_max=8)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    torch.save({"g_ema": g.state_dict(), "args": {"channel_max": 8, "channel_multiplier": 1},
                "latent_avg": torch.zeros(8)}, path)
    return path


def test_02_generate(tmp_path):
    m = load_script("02_stylegan_freezed")
    ckpt = str(tmp_path / "src.model")
    write_source_checkpoint(ckpt)
    check_rule(tmp_path, lambda out, *flags: m.main(["generate", "--ckpt", ckpt, "--size", "16", "--seeds", "1-3",
                                                     "--device", "cpu", "--out", str(out), *flags]),
               "seed0002.png", ["seed0001.png", "seed0002.png", "seed0003.png"])


def test_03_generate(tmp_path):
    sg2 = load_script("03_stylegan2_ada")
    ckpt = sg2_checkpoint(str(tmp_path / "g.pt"), 0)
    check_rule(tmp_path, lambda out, *flags: sg2.main(["generate", "--ckpt", ckpt, "--seeds", "4,5", "--device", "cpu",
                                                       "--out", str(out), *flags]),
               "seed0005.png", ["seed0004.png", "seed0005.png"])


def test_03_generate_from_a_run_folder_is_its_newest_checkpoint(tmp_path):
    sg2 = load_script("03_stylegan2_ada")
    run = tmp_path / "run"
    sg2_checkpoint(str(run / "checkpoints" / "000900.pt"), 1)
    newest = sg2_checkpoint(str(run / "checkpoints" / "001000.pt"), 2)

    def generate(ckpt, out):
        sg2.main(["generate", "--ckpt", ckpt, "--seeds", "3", "--device", "cpu", "--out", str(tmp_path / out)])
        return pixels(tmp_path / out / "seed0003.png").astype(int)

    from_run, from_file = generate(str(run), "a"), generate(newest, "b")
    older = generate(str(run / "checkpoints" / "000900.pt"), "c")
    np.testing.assert_array_equal(from_run, from_file)
    assert np.abs(from_run - older).mean() > 1  # the two checkpoints draw different faces
    (tmp_path / "empty").mkdir()
    with pytest.raises(SystemExit, match="empty: a folder without checkpoints"):
        generate(str(tmp_path / "empty"), "d")
    assert not (tmp_path / "d").exists()


def test_04_edit(tmp_path):
    lx = load_script("04_latent_explore")
    ckpt = sg2_checkpoint(str(tmp_path / "g.pt"), 0)
    dirs = str(tmp_path / "dirs.pt")
    lx.main(["sefa", "--ckpt", ckpt, "--device", "cpu", "--out", dirs])
    check_rule(tmp_path, lambda out, *flags: lx.main(["edit", "--ckpt", ckpt, "--device", "cpu", "--dirs", dirs,
                                                      "--seeds", "0,1", "--degrees", "0,2", "--out", str(out),
                                                      *flags]),
               "seed0001_dir00.gif", ["grid_dir00.png", "seed0000_dir00.gif", "seed0001_dir00.gif"])


@pytest.fixture
def ugatit_ckpt(tmp_path):
    u = load_script("05_ugatit")
    path = str(tmp_path / "ug.pt")
    torch.save({k: v.state_dict() for k, v in u.build_networks(4, 1, 16, light=True).items()}, path)
    return path


def test_05_test(tmp_path, ugatit_ckpt):
    u = load_script("05_ugatit")
    faces = tmp_path / "faces"
    (faces / "sub").mkdir(parents=True)
    rs = np.random.RandomState(0)
    for name in ("a.jpg", "b.png", "sub/c.png"):  # sub/c.png -> OUT/sub/c.png: a folder not made on refusal
        Image.fromarray(rs.randint(0, 256, (16, 16, 3), dtype=np.uint8)).save(faces / name)
    check_rule(tmp_path, lambda out, *flags: u.main(["test", "--ckpt", ugatit_ckpt, "--input", str(faces),
                                                     "--device", "cpu", "--out", str(out), *flags]),
               "a.png", ["a.png", "b.png", "sub", os.path.join("sub", "c.png")])


def test_05_chain(tmp_path, ugatit_ckpt):
    u = load_script("05_ugatit")
    sg = sg2_checkpoint(str(tmp_path / "g.pt"), 0)
    check_rule(tmp_path, lambda out, *flags: u.main(["chain", "--ugatit", ugatit_ckpt, "--stylegan", sg,
                                                     "--seeds", "1", "2", "--walk", "2", "--img-size", "16",
                                                     "--device", "cpu", "--out", str(out), *flags]),
               "walk.gif", ["seed1.png", "seed2.png", "walk.gif"])


def test_the_refusal_names_the_first_taken_files_and_writes_nothing(tmp_path):
    """Several outputs taken: one line naming the first three and the count of the rest."""
    sg2 = load_script("03_stylegan2_ada")
    paths = [str(tmp_path / f"seed{i:04d}.png") for i in range(5)] + [str(tmp_path / "new" / "x.png")]
    for p in paths[:5]:
        open(p, "wb").write(MINE)
    with pytest.raises(FileExistsError) as err:
        sg2.refuse_existing_outputs(paths, overwrite=False)
    assert str(err.value) == (f"{paths[0]} exists, as do {paths[1]}, {paths[2]} and 2 more "
                              f"(pass --overwrite to replace them)")
    sg2.refuse_existing_outputs(paths, overwrite=True)  # allowed; the helper itself writes nothing
    assert not (tmp_path / "new").exists() and all(open(p, "rb").read() == MINE for p in paths[:5])


def test_04_edit_refuses_two_latents_that_would_write_one_gif(tmp_path):
    lx = load_script("04_latent_explore")
    ckpt = sg2_checkpoint(str(tmp_path / "g.pt"), 0)
    dirs = str(tmp_path / "dirs.pt")
    lx.main(["sefa", "--ckpt", ckpt, "--device", "cpu", "--out", dirs])
    Image.fromarray(np.random.RandomState(0).randint(0, 256, (16, 16, 3), dtype=np.uint8)).save(tmp_path / "me.png")
    lx.main(["project", "--ckpt", ckpt, "--device", "cpu", "--image", str(tmp_path / "me.png"), "--steps", "1",
             "--distance", "mse", "--out", str(tmp_path / "p1")])
    (tmp_path / "p2").mkdir()
    (tmp_path / "p2" / "me_latent.pt").write_bytes((tmp_path / "p1" / "me_latent.pt").read_bytes())
    with pytest.raises(SystemExit, match=r"--latent: two files share a name \(me\)"):
        lx.main(["edit", "--ckpt", ckpt, "--device", "cpu", "--dirs", dirs, "--degrees", "0,1", "--latent",
                 str(tmp_path / "p1" / "me_latent.pt"), str(tmp_path / "p2" / "me_latent.pt"),
                 "--out", str(tmp_path / "e")])
    assert not (tmp_path / "e").exists()
