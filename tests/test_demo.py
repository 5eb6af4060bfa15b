"""demo.py at its smallest setting: every stage's real command line runs and summary.md shows the results."""
import os
import re

from conftest import load_script


def test_demo_smoke_runs_every_stage_and_writes_the_summary(tmp_path):
    demo = load_script("demo")
    out = tmp_path / "demo_out"
    demo.main(["--smoke", "--out", str(out)])
    summary = (out / "summary.md").read_text()
    stages = re.findall(r"^\| (0\d [^|]+?) \| ([\d.]+) \|$", summary, re.M)
    assert [s for s, _ in stages] == ["01 demo faces", "03 StyleGAN2 from scratch", "03 StyleGAN2 FreezeD + ADA",
                                      "03 generate", "02 StyleGAN v1", "02 style mixing", "04 SeFa",
                                      "04 GANSpace", "04 edit GIF", "04 style mixing", "05 U-GAT-IT", "05 chain"]
    pictures = re.findall(r"!\[[^]]*\]\(([^)]+)\)", summary)
    assert len(pictures) == 11 and all((out / p).is_file() for p in pictures)
    # FID at the start and end of each StyleGAN run: two numbers per row, labelled when not comparable
    rows = re.findall(r"^\| (StyleGAN[^|]*) \| ([\d.]+) \| ([\d.]+) \|", summary, re.M)
    assert len(rows) == 3
    if "random Inception weights" not in summary:
        assert os.path.isfile(os.path.join(os.path.expanduser("~"), ".cache", "torch", "hub", "checkpoints",
                                           "pt_inception-2015-12-05-6726825d.pth"))
    assert len(os.listdir(out / "sg2_samples")) == 8
