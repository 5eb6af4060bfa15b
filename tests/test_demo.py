"""demo.py at its smallest setting: every stage's real command line runs on the shipped source models
and summary.md shows the pictures, the FID/KID table with its noise floor, and the time per stage."""
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
    stages = re.findall(r"^\| (0\d [^|]+?) \| ([\d.]+) \|$", summary, re.M)
    assert [s for s, _ in stages] == ["01 demo faces", "03 source samples", "03 StyleGAN2 FreezeD + ADA",
                                      "03 StyleGAN2 baseline transfer", "03 StyleGAN2 from scratch",
                                      "03 generate", "03 generate (baseline)", "03 generate (scratch)",
                                      "02 StyleGAN v1 FreezeD", "02 style mixing", "04 SeFa", "04 GANSpace",
                                      "04 edit GIF", "04 style mixing", "05 U-GAT-IT", "05 chain"]
    pictures = re.findall(r"!\[[^]]*\]\(([^)]+)\)", summary)
    assert len(pictures) == 11 and all((out / p).is_file() for p in pictures)
    # 32 px images are shown 3x enlarged by repeating pixels, nothing else changed: the v1 mixing figure
    assert "figures/sg1_mix.png" in pictures and "shown 3x enlarged" in summary
    mix = np.asarray(Image.open(out / "sg1_mix.png").convert("RGB"))
    assert np.array_equal(np.asarray(Image.open(out / "figures" / "sg1_mix.png")), mix.repeat(3, 0).repeat(3, 1))
    # the fine-tuning runs start from the shipped source models (the scratch run does not)
    log = (out / "demo.log").read_text()
    sg2, sg1 = (os.path.join(ROOT, "demo_models", f) for f in ("stylegan2_source_32px.pt",
                                                               "stylegan_v1_source_32px.pt"))
    assert log.count(f"--ckpt {sg2} --preset") == 2 and log.count(f"--ckpt {sg1} --preset freezed") == 1
    # the table: the noise floor first, then each generator, FID and KID ± std
    rows = re.findall(r"^\| ([^|]+?) \| (-?[\d.]+) \| (-?[\d.]+) ± ([\d.]+) \|$", summary, re.M)
    assert [r[0] for r in rows] == ["noise floor: real half A vs real half B",
                                    "StyleGAN2 source model, not fine-tuned", "StyleGAN2 from scratch + ADA",
                                    "StyleGAN2 baseline transfer", "StyleGAN2 FreezeD + ADA", "StyleGAN v1 FreezeD"]
    assert all(float(f) >= 0 for _, f, _, _ in rows)
    if "random Inception weights" not in summary:
        assert os.path.isfile(os.path.join(os.path.expanduser("~"), ".cache", "torch", "hub", "checkpoints",
                                           "pt_inception-2015-12-05-6726825d.pth"))
    assert len(os.listdir(out / "sg2_samples")) == 8
    assert len(os.listdir(out / "fid_sets" / "freezed_ada")) == 8  # 16 faces -> halves of 8


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
    import json
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
