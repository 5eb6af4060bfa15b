"""demo.py at its smallest setting: every stage's real command line runs on the shipped source models
and summary.md shows the pictures, the FID/KID table with its noise floor, and the time per stage."""
import json
import os
import re

import numpy as np
from PIL import Image

from conftest import ROOT, load_script


def test_demo_smoke_runs_every_stage_and_writes_the_summary(tmp_path):
    demo = load_script("demo")
    out = tmp_path / "demo_out"
    demo.main(["--smoke", "--out", str(out)])
    summary = (out / "summary.md").read_text()
    stages = [s for s, _ in re.findall(r"^\| (0\d [^|]+?) \| ([\d.]+) \|$", summary, re.M)]
    knob_stages = [s for s in stages if s.startswith(("04 name ", "04 edit "))]
    assert [s for s in stages if s not in knob_stages] == [
        "01 demo faces", "03 source samples", "03 ablation (freezed-ada,scratch; seeds 0)",
        "03 generate (freezed-ada)", "03 generate (scratch)", "02 StyleGAN v1 FreezeD", "02 style mixing",
        "02 StyleGAN v1 score", "04 SeFa for the knobs", "04 sheet", "04 meme", "04 GANSpace", "04 style mixing",
        "05 U-GAT-IT", "05 chain"]
    assert len(knob_stages) >= 6 and len(knob_stages) % 2 == 0  # name + edit for each of >= 3 knobs
    pictures = re.findall(r"!\[[^]]*\]\(([^)]+)\)", summary)
    assert len(pictures) >= 13 and all((out / p).is_file() for p in pictures)
    # 32 px images are shown 3x enlarged by repeating pixels, nothing else changed: the v1 mixing figure
    assert "figures/sg1_mix.png" in pictures and "shown 3x enlarged" in summary
    mix = np.asarray(Image.open(out / "sg1_mix.png").convert("RGB"))
    assert np.array_equal(np.asarray(Image.open(out / "figures" / "sg1_mix.png")), mix.repeat(3, 0).repeat(3, 1))
    # the table is 03 ablation's: its references, then one row per ablation row, with FD-faces beside FID
    rows = re.findall(r"^\| ([^|]+?) \| (?:–|[\d.]+) \| (-?[\d.]+)", summary, re.M)
    assert [r[0] for r in rows] == ["reference: real half vs half", "reference: the source model, not fine-tuned",
                                    "FreezeD + ADA", "Scratch + ADA"]
    assert "FD-faces" in summary and "Ranks, order and gaps by FID" in summary
    assert re.search(r"StyleGAN v1 after FreezeD \(02, 2 iterations\), scored the same way: FID [\d.]+", summary)
    # the explorer runs on the row the table found best, and says which
    best = re.search(r"The explorer figures below use \*\*(.+?)\*\*, the row with the lowest mean FID", summary)
    assert best and best.group(1) in ("FreezeD + ADA", "Scratch + ADA")
    # transfer rows start from the shipped source model, scratch from random weights
    sg2 = os.path.join(ROOT, "demo_models", "stylegan2_source_32px.pt")
    runs = out / "ablation" / "runs"
    assert json.load(open(runs / "freezed-ada-s0" / "settings.json"))["ckpt"] == sg2
    assert json.load(open(runs / "scratch-s0" / "settings.json"))["ckpt"] is None
    sg1 = os.path.join(ROOT, "demo_models", "stylegan_v1_source_32px.pt")
    assert (out / "demo.log").read_text().count(f"--ckpt {sg1} --preset freezed") == 1
    if "Random Inception weights" not in summary:
        assert os.path.isfile(os.path.join(os.path.expanduser("~"), ".cache", "torch", "hub", "checkpoints",
                                           "pt_inception-2015-12-05-6726825d.pth"))
    library = json.load(open(out / "explore" / "knobs" / "knobs.json"))
    assert len(library["knobs"]) >= 3


def test_demo_never_removes_a_folder_it_did_not_make(tmp_path):
    """--out pointing at a user's folder (no demo.log from an earlier demo) is refused; the file stays."""
    demo = load_script("demo")
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    try:
        demo.main(["--smoke", "--out", str(mine)])
    except SystemExit as e:
        assert "not made by demo.py" in str(e.code)
    else:
        raise AssertionError("demo.py ran into a folder it did not make")
    assert sorted(os.listdir(mine)) == ["notes.txt"] and (mine / "notes.txt").read_text() == "keep me"


def test_source_scores_are_written_beside_their_noise_floor(tmp_path):
    """score_sources (`--score-source`, end of `--make-source`): rows = the floor between two halves of the
    source faces, then each shipped model; the record file given gets them, the shipped one is untouched."""
    import shutil
    demo = load_script("demo")
    shipped = open(demo.RECORD).read()
    data, log = str(tmp_path / "data"), str(tmp_path / "log.txt")
    demo.call(["01_prepare_data.py", "--demo", "16", "--demo-style", "source", "--size", "32", "--seed", "3",
               "--out", data], log, "data")
    record = str(tmp_path / "record.json")
    shutil.copyfile(demo.RECORD, record)
    rows = demo.score_sources(32, data, str(tmp_path / "score"), log, n_faces=16, dims=64, record=record)
    assert [r[0] for r in rows] == ["noise floor: real half A vs real half B", "stylegan2", "stylegan_v1"]
    score = json.load(open(record))["32"]["score"]
    for name, fid, kid_m, kid_s in rows:
        key = "noise_floor" if name.startswith("noise") else name
        assert score[key]["fid"] == round(fid, 4) and score[key]["kid"] == round(kid_m, 6) and fid >= 0
    assert "8 samples vs the second half of the first 16 source faces" in score["how"]
    assert len(os.listdir(tmp_path / "score" / "sg1")) == 8
    assert open(demo.RECORD).read() == shipped
