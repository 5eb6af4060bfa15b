"""bench/gpu_check.py: the dry listing (what runs without a GPU) and one case end to end at toy size."""
import argparse
import json
import os

import pytest
import torch

from conftest import load_script

gc = load_script("bench/gpu_check")

EXPECTED = ["build", "cuda-tests", "sg2-fp32", "sg2-tf32", "sg2-bf16", "sg2-fp16", "sg2-generate", "ugatit-fp32",
            "ugatit-amp-bf16", "ugatit-amp-fp16", "sg1-fp32", "sg1-bf16", "fid", "sg2-fp32-ref", "sg2-tf32-ref", "sg2-bf16-ref",
            "sg2-fp16-ref"]


def test_without_a_gpu_it_lists_every_case_and_runs_nothing(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    out = tmp_path / "results"
    assert gc.main(["--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert text.startswith("no CUDA device here: nothing is run")
    listed = [line.split()[0] for line in text.splitlines()[1:]]
    assert listed == EXPECTED
    assert not out.exists()  # nothing measured, nothing written
    assert gc.main(["--dry-run", "--only", "fid,sg1-bf16", "--out", str(out)]) == 0
    assert [line.split()[0] for line in capsys.readouterr().out.splitlines()[1:]] == ["sg1-bf16", "fid"]
    with pytest.raises(SystemExit, match="--only sg3: no such case"):
        gc.main(["--dry-run", "--only", "sg3"])


def test_listed_stylegan2_commands_are_valid_03_command_lines(tmp_path):
    """Each sg2 case's 03 command parses with 03's own train parser and asks for what its name says."""
    sg2 = load_script("03_stylegan2_ada")
    parser = argparse.ArgumentParser()
    sg2.add_train_args(parser)
    precisions = gc.precision_choices()
    cases = {name: cmd for name, _, _, cmd in gc.plan(str(tmp_path), precisions)}
    for name in ("sg2-fp32", "sg2-tf32", "sg2-fp32-ref", "sg2-tf32-ref", "sg2-bf16", "sg2-fp16"):
        cmd = cases[name]
        if cmd is None:  # bf16/fp16 when this 03 has no --precision
            assert name.endswith(("bf16", "fp16")) and not precisions
            continue
        argv = cmd[cmd.index("--") + 1:]
        assert argv[0] == "train"
        a = parser.parse_args(argv[1:])
        assert (a.size, a.batch, a.channel_multiplier, a.preset) == (256, 16, 2, "freezed-ada")  # the seed's run
        assert a.ops == ("ref" if name.endswith("-ref") else "auto")
        assert cmd[cmd.index("--tf32") + 1] == ("0" if name.startswith("sg2-fp32") else "1")
        if precisions:
            assert getattr(a, "precision") == name.split("-")[1].replace("tf32", "fp32")


def test_one_case_end_to_end_at_toy_size(tmp_path, capsys):
    """--smoke runs the real case code on the CPU at toy sizes: the RESULT protocol, the JSON and the
    table, and a projection consistent with its own measurement."""
    out = tmp_path / "results"
    assert gc.main(["--smoke", "--only", "sg2-tf32", "--out", str(out), "--work", str(tmp_path / "work")]) == 0
    with open(out / "gpu_check.json") as f:
        report = json.load(f)
    r, = report["results"]
    assert r["status"] == "ok" and r["ops"] == "auto" and r["tf32"] is True
    assert r["s_per_kimg"] == pytest.approx(1000 / r["img_per_s"])
    assert r["headline_hours"] == pytest.approx(r["s_per_kimg"] * 480 / 3600)
    # the timed intervals (3 of the 4 iterations at batch 4) fit inside the case's own wall time
    assert r["s_per_kimg"] * 3 * 4 / 1000 < r["case_wall_s"]
    md = (out / "gpu_check.md").read_text()
    assert "| sg2-tf32 |" in md and f"{r['s_per_kimg']:.2f} s/kimg" in md and "projects to" in md
    assert not os.path.exists(tmp_path / "work" / "run_sg2-tf32")  # the run folder is cleaned up
