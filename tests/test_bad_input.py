"""Bad input files give one line and are never trained on; files are written with the user's umask.

References: image files written here byte by byte (a PNG whose header declares 10000 x 10000
pixels followed by five rows of data), and the permission bits 0666 & ~umask that open() gives.
"""
import os
import stat
import struct
import warnings
import zlib

import numpy as np
import pytest
from PIL import Image

from conftest import load_script

sg2 = load_script("03_stylegan2_ada")


def png_bytes(width, height, rows):
    """An RGB PNG whose IHDR declares width x height but whose data holds only `rows` rows."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    raw = b"".join(b"\x00" + b"\x80" * (width * 3) for _ in range(rows))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


def test_decompression_bomb_is_a_bad_file_not_a_black_image(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    for i in range(3):
        Image.fromarray(np.full((16, 16, 3), 60 * i, np.uint8)).save(data / f"{i}.png")
    (data / "bomb.png").write_bytes(png_bytes(10000, 10000, 5))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ds = sg2.ImageFolderDataset(str(data), 16, xflip=False)
    assert [os.path.basename(p) for p in ds.paths] == ["0.png", "1.png", "2.png"]
    messages = [str(w.message) for w in caught]
    skipped = [t for t in messages if "bomb.png" in t]
    assert len(skipped) == 1 and "\n" not in skipped[0] and skipped[0].endswith("(skipped)")
    assert "decompression bomb" in skipped[0]


@pytest.mark.parametrize("umask", [0o027, 0o002])
def test_written_files_follow_the_umask(tmp_path, umask):
    """Atomic writes (temp file + rename) give the mode open() would: 0666 & ~umask, not 0600."""
    import torch

    from ops import fid

    prep = load_script("01_prepare_data")
    want = 0o666 & ~umask
    old = os.umask(umask)
    try:
        prep.write_demo(str(tmp_path / "demo"), 2, size=16, seed=0)           # crops, index, sheet
        sg2.save_checkpoint(str(tmp_path / "run" / "000001.pt"), {"step": 1})  # checkpoints
        fid.save_features(str(tmp_path / "f.npz"), {"features": np.zeros((2, 4), np.float32),
                                                    "files": [], "file_types": {}})
    finally:
        os.umask(old)
    files = [os.path.join(r, f) for r, _, fs in os.walk(tmp_path) for f in fs]
    assert len(files) >= 7
    modes = {os.path.relpath(f, tmp_path): stat.S_IMODE(os.stat(f).st_mode) for f in files}
    assert modes == {k: want for k in modes}
    assert torch.load(tmp_path / "run" / "000001.pt", weights_only=True) == {"step": 1}


def test_02_with_a_wrong_start_checkpoint_leaves_no_run_folder(tmp_path):
    """A --ckpt that is not a StyleGAN v1 checkpoint is one line, and --out is not created: the same
    command with the right file must not meet "run folder exists, continue it with --resume"."""
    import torch
    sg1 = load_script("02_stylegan_freezed")
    data = tmp_path / "data"
    data.mkdir()
    for i in range(2):
        Image.fromarray(np.full((16, 16, 3), 90 * i, np.uint8)).save(data / f"{i}.png")
    wrong = tmp_path / "stylegan2.pt"  # the top-level keys of a 03 / rosinality StyleGAN2 file
    torch.save({"g": {}, "d": {}, "g_ema": {}}, wrong)
    out = tmp_path / "run"
    with pytest.raises(ValueError) as e:
        sg1.main(["train", "--data", str(data), "--size", "16", "--out", str(out), "--ckpt", str(wrong),
                  "--iter", "1", "--quiet", "--device", "cpu"])
    assert str(wrong) in str(e.value) and len(str(e.value).splitlines()) == 1
    assert not out.exists()


@pytest.mark.parametrize("name", ["02_stylegan_freezed", "03_stylegan2_ada", "05_ugatit"])
def test_an_out_that_is_a_file_is_one_line_and_the_file_stays(name, tmp_path):
    import subprocess
    import sys
    from conftest import ROOT
    data = tmp_path / "data"
    for sub in ("", "trainA", "trainB"):  # 02 and 03 read data/, 05 data/trainA and data/trainB
        (data / sub).mkdir(exist_ok=True)
        for i in range(2):
            Image.fromarray(np.full((16, 16, 3), 90 * i, np.uint8)).save(data / sub / f"{i}.png")
    out = tmp_path / "notes.txt"
    out.write_text("mine")
    size = ["--img-size", "32", "--ch", "4", "--n-res", "1"] if name == "05_ugatit" else ["--size", "16"]
    proc = subprocess.run([sys.executable, os.path.join(ROOT, name + ".py"), "train", "--data", str(data),
                           "--out", str(out), *size, "--batch", "2", "--iter", "1", "--device", "cpu"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1
    last = proc.stderr.strip().splitlines()[-1]
    assert "Traceback" not in proc.stderr and str(out) in last and "Not a directory" in last, proc.stderr
    assert out.read_text() == "mine"


@pytest.mark.parametrize("name,flag", [("02_stylegan_freezed", "--log-every"), ("03_stylegan2_ada", "--log-every"),
                                       ("03_stylegan2_ada", "--sample-every"), ("03_stylegan2_ada", "--ckpt-every"),
                                       ("03_stylegan2_ada", "--ada-interval")])
def test_an_interval_of_0_is_one_line_and_makes_no_run_folder(name, flag, tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    for i in range(2):
        Image.fromarray(np.full((16, 16, 3), 90 * i, np.uint8)).save(data / f"{i}.png")
    out = tmp_path / "run"
    with pytest.raises((SystemExit, ValueError), match=f"{flag} 0: must be at least 1"):
        load_script(name).main(["train", "--data", str(data), "--out", str(out), "--size", "16", "--batch", "2",
                                "--iter", "1", "--device", "cpu", flag, "0"])
    assert not out.exists()


def test_seeds_outside_numpys_range_are_refused_by_every_seed_parser():
    """The bound is numpy's own: RandomState(2**32 - 1) works, RandomState(2**32) and (-1) do not."""
    import argparse
    top = 2 ** 32 - 1
    np.random.RandomState(top)
    for bad in (top + 1, -1):
        with pytest.raises(ValueError):
            np.random.RandomState(bad)
    parsers = {"02": load_script("02_stylegan_freezed").parse_seeds, "03": sg2.parse_seeds,
               "05": lambda t: [load_script("05_ugatit").seed_arg(x) for x in t.split(",")]}
    for name, parse in parsers.items():
        assert parse(f"{top}") == [top], name
        for bad in (f"{top + 1}", "-1", f"{top - 1}-{top + 1}"):
            if name == "05" and "-" in bad[1:]:
                continue  # 05 chain takes single seeds
            if name == "03" and bad == "-1":
                continue  # 03 reads "-1" as a malformed range (refused, another message)
            with pytest.raises((ValueError, argparse.ArgumentTypeError), match="outside|up to"):
                parse(bad)
