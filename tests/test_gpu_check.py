"""bench/gpu_check.py: the dry listing (what runs without a GPU) and one case end to end at toy size."""
import argparse
import json
import os

import pytest
import torch

from conftest import load_script

gc = load_script("bench/gpu_check")

EXPECTED = ["build", "cuda-tests", "sg2-fp32", "sg2-tf32", "sg2-bf16", "sg2-fp16", "sg2-nvcfg-fp16", "sg2-nvcfg-default",
            "sg2-generate", "sg2-bench", "ugatit-fp32",
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


def test_nvidia_configuration_is_their_cfg_auto_at_256_px(tmp_path):
    """The sg2-nvcfg cases run 03 at NVIDIA's --cfg=auto for 256 px on one GPU, the values their
    train.py derives (fmaps 0.5 -> channel base 16384, map 2, mb 16, gamma 0.0002 * 256^2 / 16,
    lrate 0.0025, ema 16 * 10 / 32 kimg, ramp 0.05), from scratch with adaptive ADA."""
    sg2 = load_script("03_stylegan2_ada")
    parser = argparse.ArgumentParser()
    sg2.add_train_args(parser)
    cases = {name: cmd for name, _, _, cmd in gc.plan(str(tmp_path), gc.precision_choices())}
    for name, precision in (("sg2-nvcfg-fp16", "fp16"), ("sg2-nvcfg-default", None)):
        cmd = cases[name]
        a = parser.parse_args(cmd[cmd.index("--") + 1:][1:])
        assert (a.size, a.channel_multiplier, a.n_mlp, a.batch) == (256, 1, 2, 16)
        assert a.r1_gamma == pytest.approx(0.0002 * 256 ** 2 / 16) and a.lr == 0.0025
        assert (a.ema_kimg, a.ema_rampup) == (16 * 10 / 32, 0.05)
        assert a.augment == "ada" and a.ada_p is None and a.ckpt is None and a.preset is None
        assert a.precision == precision
        assert cmd[cmd.index("--tf32") + 1] == ("0" if precision == "fp16" else "1")  # their loop: TF32 off
        # NVIDIA's channels min(channel_base / r, 512) with channel base 16384, at every resolution
        table = sg2.channel_table(a.size, a.channel_multiplier)
        assert table == {r: min(16384 // r, 512) for r in (4, 8, 16, 32, 64, 128, 256)}


def test_a_peer_adds_nvidias_own_loop_and_goes_to_the_bench(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    peer = tmp_path / "stylegan2-ada-pytorch"
    peer.mkdir()
    assert gc.main(["--dry-run", "--peer", f"nvlabs={peer}", "--out", str(tmp_path / "r")]) == 0
    lines = capsys.readouterr().out.splitlines()[1:]
    assert [line.split()[0] for line in lines] == EXPECTED[:10] + ["nvidia-train"] + EXPECTED[10:]
    bench_line = next(line for line in lines if line.split()[0] == "sg2-bench")
    assert f"--peer=nvlabs={peer}" in bench_line
    train_line = next(line for line in lines if line.split()[0] == "nvidia-train")
    for flag in ("--cfg auto", "--batch 16", "--aug ada", "--gpus 1", "--metrics none"):
        assert flag in train_line
    with pytest.raises(SystemExit, match="expected nvlabs=PATH"):
        gc.main(["--dry-run", "--peer", f"nvidia={peer}"])


def test_nvidia_status_lines_give_the_median_after_tick_0():
    """Their training_loop's status line format; tick 0 (start-up) is left out."""
    out = "\n".join([
        "Setting up training phases...",
        "tick 0     kimg 0.0      time 1m 02s       sec/tick 12.0    sec/kimg 750.00  maintenance 50.2   cpumem 3.1",
        "tick 1     kimg 4.0      time 1m 52s       sec/tick 50.1    sec/kimg 12.53   maintenance 0.0    cpumem 3.2",
        "tick 2     kimg 8.0      time 2m 42s       sec/tick 50.5    sec/kimg 12.61   maintenance 0.0    cpumem 3.2",
        "tick 3     kimg 12.0     time 3m 32s       sec/tick 51.0    sec/kimg 12.75   maintenance 0.0    cpumem 3.2"])
    assert gc.nvidia_sec_per_kimg(out) == pytest.approx(12.61)
    assert gc.nvidia_sec_per_kimg(out.splitlines()[1]) is None  # only tick 0: nothing timed


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


def test_bench_times_the_iteration_kinds_03_train_runs(tmp_path, monkeypatch):
    """bench_stylegan2 at toy size: its three kinds of iteration are the ones 03's train_step runs
    at i = 1 (no regularizer), 4 (path length) and 0 (R1 and path length), the real step weighs
    them 12:3:1 as 16 iterations at 03's intervals, and the loop row times `03 train` itself."""
    bench = load_script("bench/bench_stylegan2")
    monkeypatch.setitem(bench.CONFIGS, "toy", dict(size=16, channel_multiplier=1, arch=[
        "--channel-max", "16", "--style-dim", "16", "--n-mlp", "2", "--num-workers", "0"]))
    m = bench.load_03()
    monkeypatch.setattr(bench, "load_03", lambda: m)
    seen, real_step = {}, m.train_step

    def noting(i, *a, **k):
        stats, pl_mean = real_step(i, *a, **k)
        seen.setdefault(i, set()).update(stats)
        return stats, pl_mean

    monkeypatch.setattr(m, "train_step", noting)
    info = bench.main(["--configs", "toy", "--augment", "ada", "--rounds", "2", "--loop-iters", "2",
                       "--threads", "1", "--out", str(tmp_path / "b.json")])
    hp = m.HYPERPARAMETERS
    for i in (0, 1, 4):
        assert ("r1" in seen[i]) == (i % hp["d_reg_every"] == 0)
        assert ("path_length" in seen[i]) == (i % hp["g_reg_every"] == 0)
    rows = {r["what"].strip(): r["seconds"]["calm-gan"] for r in info["results"]}
    kinds = {k: rows[f"{k} iteration ({share} of 16)"] for k, _, share in bench.KINDS}
    assert [share for _, _, share in bench.KINDS] == [12, 3, 1] and hp["d_reg_every"] // hp["g_reg_every"] == 4
    for r in range(2):  # the mean over 16 iterations: 1 with R1 and path length, 3 with path length, 12 plain
        want = (12 * kinds["plain"][r] + 3 * kinds["pl"][r] + kinds["r1_pl"][r]) / 16
        assert rows["real step (12:3:1 of 16)"][r] == pytest.approx(want)
    assert len(rows["03 train loop, i=1..2"]) == 2 and all(t > 0 for t in rows["03 train loop, i=1..2"])
    assert {1, 2} <= set(seen)  # the loop's own iterations went through train_step too
    assert json.loads((tmp_path / "b.json").read_text())["results"]
