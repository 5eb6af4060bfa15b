"""`03_stylegan2_ada.py ablation`: the seed's table in one command.

References: the run folders `train` itself writes (an ablation run must be one of them and resume as
one), a fresh uninterrupted ablation (what a killed-and-continued one must equal), Kendall's tau
counted by hand from concordant and discordant pairs, mean and sample std by hand, and the files
and one-line errors the issue lists.
"""
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import ROOT, load_script, random_image_folder

SCRIPT = "03_stylegan2_ada"
TINY = ["--channel-max", "16", "--batch", "4", "--device", "cpu", "--num-workers", "0", "--no-progress",
        "--n-sample", "4", "--log-every", "1", "--inception", "random", "--fid-dims", "64", "--fid-n", "8",
        "--fid-every", "2", "--eval-n", "10", "--sample-every", "100", "--ckpt-every", "100"]


@pytest.fixture(scope="module")
def m():
    return load_script(SCRIPT)


@pytest.fixture(scope="module")
def source(m, tmp_path_factory):
    """A 16 px source model in 03's checkpoint layout (random weights: the plumbing is tested here)."""
    torch.manual_seed(0)
    g = m.Generator(16, style_dim=16, n_mlp=2, channel_max=16)
    d = m.Discriminator(16, channel_max=16)
    path = str(tmp_path_factory.mktemp("src") / "source.pt")
    m.save_checkpoint(path, {"g": g.state_dict(), "d": d.state_dict(), "g_ema": g.state_dict(),
                             "args": dict(size=16, style_dim=16, n_mlp=2, channel_multiplier=2,
                                          channel_max=16), "step": 0})
    return path


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return random_image_folder(tmp_path_factory.mktemp("faces"), 12, 16, seed=3)


def argv(data, source, out, rows="baseline,freezed-ada", seeds="0,1", iters=4, *extra):
    return ["ablation", "--data", data, "--ckpt", source, "--out", str(out), "--rows", rows,
            "--seeds", seeds, "--iter", str(iters)] + TINY + list(extra)


def steps(abl):
    runs = os.path.join(abl, "runs")
    return {name: sorted(int(f[:-3]) for f in os.listdir(os.path.join(runs, name, "checkpoints"))
                         if f[:-3].isdigit())[-1] for name in sorted(os.listdir(runs))}


@pytest.fixture(scope="module")
def done(m, data, source, tmp_path_factory):
    abl = tmp_path_factory.mktemp("abl") / "abl"
    table = m.main(argv(data, source, abl))
    return str(abl), table


def test_a_tiny_ablation_writes_the_table_the_grid_and_the_curves(m, done):
    abl, table = done
    for name in ("table.md", "table.json", "grid.png", "curves.png"):
        assert os.path.getsize(os.path.join(abl, name)) > 0, name
    assert steps(abl) == {"baseline-s0": 4, "baseline-s1": 4, "freezed-ada-s0": 4, "freezed-ada-s1": 4}
    saved = json.load(open(os.path.join(abl, "table.json")))
    assert [r["row"] for r in saved["rows"]] == ["baseline", "freezed-ada"]
    assert saved["settings"]["iter"] == 4 and saved["settings"]["seeds"] == [0, 1]
    assert saved["versions"]["torch"] == torch.__version__ and "weights" in saved["inception"]
    # every number of a row is the mean / sample std of its runs' scores
    for row in saved["rows"]:
        fids = [s["fid"] for s in row["runs"].values()]
        assert row["fid"] == pytest.approx(sum(fids) / 2)
        assert row["fid_std"] == pytest.approx(abs(fids[0] - fids[1]) / 2 ** 0.5)
        assert row["seed_fid"] == {"baseline": 75.96, "freezed-ada": 38.94}[row["row"]]
    md = open(os.path.join(abl, "table.md")).read()
    assert "| Baseline | 75.96 |" in md and "| FreezeD + ADA | 38.94 |" in md and "noise floor" in md
    assert "Random Inception weights" in md
    # grid: one row per preset, 8 seeds, tiles enlarged to 64 px from 16 px
    grid = Image.open(os.path.join(abl, "grid.png"))
    assert grid.size == (120 + 8 * 64, 2 * 64)
    # each run is an ordinary run folder of `train`, made with its row's preset and its seed
    run = os.path.join(abl, "runs", "freezed-ada-s1")
    settings = json.load(open(os.path.join(run, "settings.json")))
    # (FreezeD's K = 4 at 256 px keeps the two lowest-resolution blocks training: at 16 px D has
    # just those two, so K = 0)
    assert settings["augment"] == "ada" and settings["freeze_d"] == 0 and settings["seed"] == 1
    assert os.path.isfile(os.path.join(run, "fid.csv")) and os.path.isfile(os.path.join(run, "log.jsonl"))


def test_every_run_shares_source_budget_and_flags_only_the_preset_differs(done):
    abl, _ = done
    s = {n: json.load(open(os.path.join(abl, "runs", n, "settings.json"))) for n in os.listdir(os.path.join(abl, "runs"))}
    differ = {k for k in s["baseline-s0"] if len({json.dumps(v.get(k)) for v in s.values()}) > 1}
    assert differ == {"out", "seed", "augment"}, differ  # freeze_d: 0 for both at 16 px (see above)


def test_run_again_it_trains_nothing(m, done, data, source, monkeypatch):
    abl, table = done
    before = {n: os.path.getmtime(os.path.join(abl, "runs", n, "checkpoints", "000004.pt")) for n in steps(abl)}
    monkeypatch.setattr(m, "train", lambda args: pytest.fail("a finished run was trained again"))
    again = m.main(argv(data, source, abl))
    assert {n: os.path.getmtime(os.path.join(abl, "runs", n, "checkpoints", "000004.pt")) for n in before} == before
    assert [r["fid"] for r in again["rows"]] == [r["fid"] for r in table["rows"]]


def test_killed_mid_run_and_run_again_it_finishes_as_an_uninterrupted_one(m, done, data, source, tmp_path):
    """SIGTERM while the third run trains; the same command then finishes the table with every run
    at --iter, and the interrupted run ends with the weights of the uninterrupted ablation's run."""
    abl = tmp_path / "abl"
    flags = ["--ckpt-every", "1", "--fid-every", "0"]  # (FID in training draws from forked RNGs: same weights)
    cmd = [sys.executable, os.path.join(ROOT, SCRIPT + ".py")] + argv(data, source, abl, "baseline,freezed-ada",
                                                                      "0,1", 4, *flags)
    env = dict(os.environ, OMP_NUM_THREADS="1")  # one thread, as the tests' own torch (conftest)
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    log = abl / "runs" / "freezed-ada-s0" / "log.jsonl"
    deadline = time.time() + 240
    while time.time() < deadline and not (log.exists() and '"d_loss"' in log.read_text()):
        time.sleep(0.01)  # the third run has logged its first iteration: it is inside its loop
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=120) == 143
    interrupted = steps(abl)
    assert interrupted["baseline-s1"] == 4 and interrupted["freezed-ada-s0"] >= 1
    assert interrupted.get("freezed-ada-s1", 0) < 4  # the ablation stopped before its last run ended
    m.main(argv(data, source, abl, "baseline,freezed-ada", "0,1", 4, *flags))
    assert set(steps(abl).values()) == {4} and len(steps(abl)) == 4
    ours = torch.load(abl / "runs" / "freezed-ada-s0" / "checkpoints" / "000004.pt", weights_only=True)
    ref = torch.load(os.path.join(done[0], "runs", "freezed-ada-s0", "checkpoints", "000004.pt"), weights_only=True)
    for key in ("g", "d", "g_ema"):
        for name, t in ref[key].items():
            torch.testing.assert_close(ours[key][name], t, rtol=0, atol=0, msg=f"{key}.{name}")


def test_a_larger_iter_continues_every_run_and_a_smaller_one_is_refused(m, done, data, source, tmp_path):
    abl = tmp_path / "abl"
    m.main(argv(data, source, abl, "baseline", "0", 2))
    with pytest.raises(SystemExit, match=r"has trained 2 iterations, more than --iter 1: give --iter 2"):
        m.main(argv(data, source, abl, "baseline", "0", 1))
    table = m.main(argv(data, source, abl, "baseline", "0", 4))
    assert steps(abl) == {"baseline-s0": 4} and table["iter"] == 4
    assert "4 iterations" in open(abl / "table.md").read()
    log = [json.loads(x)["step"] for x in open(abl / "runs" / "baseline-s0" / "log.jsonl") if '"d_loss"' in x]
    assert log == [1, 2, 3, 4]


def snapshot(folder):
    return {os.path.join(r, f): os.path.getmtime(os.path.join(r, f)) for r, _, fs in os.walk(folder) for f in fs}


def test_bad_input_is_one_line_and_deletes_nothing(m, done, data, source, tmp_path):
    abl, _ = done
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    (theirs / "notes.txt").write_text("mine")
    other_data = tmp_path / "other"
    shutil.copytree(data, other_data)
    other_source = tmp_path / "other.pt"
    shutil.copyfile(source, other_source)
    cases = [
        (argv(data, str(tmp_path / "missing.pt"), tmp_path / "a"), r"missing\.pt: no such checkpoint file"),
        (argv(data, source, tmp_path / "b", "baseline,freezedd"), r"--rows: 'freezedd' is not a row; choose from"),
        (argv(data, source, theirs), r"holds files that no ablation wrote"),
        (argv(data, source, abl, "baseline,freezed-ada", "0,1", 4, "--lr", "0.01"),
         r"was made with --lr 0\.002, this command asks for 0\.01"),
        (argv(data, source, abl, "baseline,freezed-ada", "0,1", 3), r"has trained 4 iterations, more than --iter 3"),
        (argv(data, source, tmp_path / "c") + ["--seed", "5"], r"--seed: the ablation runs each row with every seed"),
        # the same folder with another real set, source model or training subset: the table would mix them
        (argv(str(other_data), source, abl), r"its runs were made with --data .*, this command gives .*other"),
        (argv(data, str(other_source), abl), r"its runs were made with --ckpt .*, this command gives .*other\.pt"),
        (argv(data, source, abl) + ["--shots", "3"], r"its runs were made with --shots"),
    ]
    before = snapshot(abl), snapshot(theirs)
    for args, message in cases:
        with pytest.raises(SystemExit) as e:
            m.main(args)
        text = str(e.value)
        assert "\n" not in text and __import__("re").search(message, text), (args, text)
    assert (snapshot(abl), snapshot(theirs)) == before
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_scratch_row_starts_from_random_weights_with_the_source_architecture(m, data, source, tmp_path):
    abl = tmp_path / "abl"
    m.main(argv(data, source, abl, "scratch", "0", 1))
    s = json.load(open(abl / "runs" / "scratch-s0" / "settings.json"))
    assert s["ckpt"] is None and s["augment"] == "ada" and (s["size"], s["style_dim"], s["channel_max"]) == (16, 16, 16)


def test_dry_run_lists_the_runs_with_an_estimate_and_writes_nothing(m, data, source, tmp_path, capsys):
    abl = tmp_path / "abl"
    m.main(argv(data, source, abl, "baseline,scratch", "0,1", 3) + ["--dry-run"])
    out = capsys.readouterr().out
    assert not abl.exists()
    for name in ("baseline-s0", "baseline-s1", "scratch-s0", "scratch-s1"):
        assert name in out
    assert out.count("new") == 4 and "estimated training time" in out
    m.main(argv(data, source, abl, "baseline", "0", 3) + ["--dry-run", "--shots", "3"])  # probes the real folder
    assert "estimated training time" in capsys.readouterr().out and not abl.exists()


def test_runs_side_by_side_on_two_devices_equal_the_runs_in_turn(m, done, data, source, tmp_path, monkeypatch):
    """--devices cpu,cpu: one `train` process per device; the same seeds give the same weights."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # the runs' torch: one thread, as the tests' own
    abl = tmp_path / "abl"
    m.main(argv(data, source, abl, "baseline", "0,1") + ["--devices", "cpu,cpu", "--fid-every", "0"])
    assert steps(abl) == {"baseline-s0": 4, "baseline-s1": 4}
    assert sorted(os.listdir(abl / "logs")) == ["baseline-s0.txt", "baseline-s1.txt"]
    for name in steps(abl):
        a = torch.load(abl / "runs" / name / "checkpoints" / "000004.pt", weights_only=True)["g_ema"]
        b = torch.load(os.path.join(done[0], "runs", name, "checkpoints", "000004.pt"), weights_only=True)["g_ema"]
        for k in b:  # (two processes at once may split the CPU's threads differently: rounding only)
            torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-6, msg=f"{name} {k}")


def kendall_by_hand(x, y):
    pairs = [(i, j) for i in range(len(x)) for j in range(i + 1, len(x))]
    s = sum(np.sign(x[i] - x[j]) * np.sign(y[i] - y[j]) for i, j in pairs)
    return s / len(pairs)


def test_summary_ranks_tau_and_the_spread_by_hand(m):
    runs, scores = [], {}
    fids = {"baseline": [70, 74], "freezed": [50, 52], "ada": [48, 52], "freezed-ada": [30, 31]}
    for row, values in fids.items():
        for seed, v in enumerate(values):
            r = m._Run("/abl", row, seed)
            runs.append(r)
            scores[r.name] = {"step": 10, "fid": v, "kid_mean": v / 100, "copies": 0, "n_real": 8}
    floor = {"fid": 1.0, "kid_mean": 0.0, "kid_std": 0.0, "n_per_side": 4}
    t = m._summarise(runs, scores, floor, {"rows": list(fids), "iter": 10, "seeds": [0, 1]})
    by = {e["row"]: e for e in t["rows"]}
    assert [by[r]["rank"] for r in fids] == [4, 3, 2, 1]
    assert [by[r]["seed_rank"] for r in fids] == [4, 3, 2, 1]  # seed: 75.96, 50.74, 46.23, 38.94
    assert by["baseline"]["fid_std"] == pytest.approx(np.std([70, 74], ddof=1))
    means, seed = [72, 51, 50, 30.5], [75.96, 50.74, 46.23, 38.94]
    assert t["kendall"]["tau"] == pytest.approx(kendall_by_hand(means, seed))
    told = {(g["better"], g["worse"]): m._told_apart(g) for g in t["gaps"]}
    # freezed-ada 30.5 +- 0.7 vs ada 50 +- 2.8: apart (19.5 vs se 2.1); ada vs freezed 51 +- 1.4: not
    # (1 vs 2.2); freezed vs baseline 72 +- 2.8: apart
    assert told[("freezed-ada", "ada")] and told[("freezed", "baseline")] and not told[("ada", "freezed")]
    text = m._verdict(t)
    assert "Beyond the spread" in text and "Within the spread" in text
