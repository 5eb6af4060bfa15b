"""The contract 02, 03 and 05 share by name: the run folder, --resume RUN, SIGTERM / SIGINT, to_uint8,
the seed -> z rule, and the reading order of 02 and 05 (method above one plumbing line).

References: the source of 03's helpers (02 and 05 hold identical copies), hand-written expected step
lists and log contents, a fresh uninterrupted run (what a resumed run must equal), the shell's exit
status convention 128 + signal number, and NVlabs' quantisation floor(x * 127.5 + 128) in numpy.
"""
import ast
import functools
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

from conftest import ROOT, load_script
from conftest import random_image_folder as make_images

SCRIPTS = ("02_stylegan_freezed", "03_stylegan2_ada", "05_ugatit")
SHARED = ("_StopRequest", "checkpoint_files", "find_resume", "clean_stray_temp_files", "open_resume",
          "read_run_settings", "cut_run_logs", "to_uint8", "refuse_existing_outputs")
BANNER = "# ---- plumbing: data, checkpoints, formats, settings, distributed, run folder, CLI ----"


@functools.lru_cache(maxsize=None)
def top_level_sources(name):
    """{top-level name: source text} of the SHARED helpers in ROOT/<name>.py, read with ast (no import)."""
    src = open(os.path.join(ROOT, name + ".py")).read()
    lines = src.splitlines()
    return {n.name: "\n".join(lines[n.lineno - 1:n.end_lineno]) for n in ast.parse(src).body
            if isinstance(n, (ast.FunctionDef, ast.ClassDef)) and n.name in SHARED + ("seed_z",)}


# ---------------------------------------------------------------------------------------------
# Same name, same code: identical copies in 02, 03 and 05
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("helper", SHARED)
def test_shared_helpers_are_identical_copies(helper):
    sources = {name: top_level_sources(name).get(helper) for name in SCRIPTS}
    assert all(sources.values()), f"{helper} missing in {[n for n, s in sources.items() if not s]}"
    assert sources["02_stylegan_freezed"] == sources["03_stylegan2_ada"] == sources["05_ugatit"], helper


def test_seed_z_of_02_and_05_is_nvidias_rule():
    sources = {name: top_level_sources(name)["seed_z"] for name in ("02_stylegan_freezed", "05_ugatit")}
    assert sources["02_stylegan_freezed"] == sources["05_ugatit"]
    expect = np.random.RandomState(7).randn(1, 12).astype(np.float32)
    for name in sources:
        np.testing.assert_array_equal(load_script(name).seed_z(7, 12).numpy(), expect)


def test_to_uint8_is_nvlabs_quantisation_in_every_script():
    x = torch.linspace(-1.2, 1.2, 3 * 4 * 5 * 2).reshape(2, 3, 4, 5)
    x[0, 0, 0, :3] = torch.tensor([-1.0, 1.0, 0.0])
    hwc = x.permute(0, 2, 3, 1).numpy()  # float32, as the images are
    expect = np.clip(np.floor(hwc * np.float32(127.5) + np.float32(128)), 0, 255)
    for name in SCRIPTS:
        got = load_script(name).to_uint8(x)
        assert got.dtype == torch.uint8 and tuple(got.shape) == (2, 4, 5, 3), name
        np.testing.assert_array_equal(got.numpy(), expect.astype(np.uint8), err_msg=name)


def test_d_r1_penalty_means_the_same_in_02_and_03():
    torch.manual_seed(0)
    w = torch.randn(1, 3, 4, 4)
    x = torch.randn(5, 3, 4, 4, requires_grad=True)
    logits = (x * w).flatten(1).sum(1, keepdim=True)  # a linear critic: grad = w for every image
    for name in ("02_stylegan_freezed", "03_stylegan2_ada"):
        value = load_script(name).d_r1_penalty(logits, x)  # no gamma / 2 inside: the caller weights it
        assert abs(float(value) - float(w.square().sum())) < 1e-4 * float(w.square().sum()), name


def test_chain_seed_draws_the_same_face_as_03_generate(tmp_path):
    """05 `chain --seeds 1` and 03 `generate --seeds 1` use z = RandomState(1).randn: same face."""
    sg2, u = load_script("03_stylegan2_ada"), load_script("05_ugatit")
    torch.manual_seed(0)
    face_g = sg2.Generator(32, style_dim=8, n_mlp=1, channel_multiplier=1, channel_max=8)
    sg_path = str(tmp_path / "sg2.pt")
    torch.save({"g_ema": face_g.state_dict(), "args": {"channel_max": 8, "channel_multiplier": 1},
                "latent_avg": torch.zeros(8)}, sg_path)
    ug_path = str(tmp_path / "ug.pt")
    torch.save({k: v.state_dict() for k, v in u.build_networks(4, 1, 32, light=True).items()}, ug_path)
    sg2.main(["generate", "--ckpt", sg_path, "--seeds", "1", "--noise-mode", "const", "--out", str(tmp_path / "gen"),
              "--device", "cpu"])
    u.main(["chain", "--ugatit", ug_path, "--stylegan", sg_path, "--seeds", "1", "--img-size", "32",
            "--out", str(tmp_path / "chain"), "--device", "cpu"])
    face_03 = np.asarray(Image.open(tmp_path / "gen" / "seed0001.png").convert("RGB")).astype(int)
    frame_05 = np.asarray(Image.open(tmp_path / "chain" / "seed1.png").convert("RGB")).astype(int)
    face_05 = frame_05[:, :32]  # frame = face | cartoon; at the same size the face is not resized
    assert face_03.shape == face_05.shape == (32, 32, 3)
    assert np.abs(face_03 - face_05).max() <= 1  # the same z (another seed rule differs everywhere)
    other = sg2.main(["generate", "--ckpt", sg_path, "--seeds", "2", "--out", str(tmp_path / "gen2"),
                      "--device", "cpu"])
    face_2 = np.asarray(Image.open(other[0]).convert("RGB")).astype(int)
    assert np.abs(face_2 - face_05).mean() > 5  # and a different seed is a different face


# ---------------------------------------------------------------------------------------------
# Reading order: the docstring map names the method, all of it above the one plumbing line
# ---------------------------------------------------------------------------------------------
def map_names(doc, defined):
    """Names in the docstring's 'Map of this file' block (up to its 'plumbing' row) defined in the file."""
    block = doc.split("Map of this file", 1)[1].split("\n\n", 1)[0]
    method = block.split("    plumbing", 1)[0]
    words = {w.strip("(),.") for w in method.replace(",", " ").split()}
    return sorted(w for w in words if w in defined)


@pytest.mark.parametrize("name", ["02_stylegan_freezed", "05_ugatit"])
def test_map_names_the_method_above_the_banner(name):
    src = open(os.path.join(ROOT, name + ".py")).read()
    lines = src.splitlines()
    assert lines.count(BANNER) == 1
    banner = lines.index(BANNER) + 1  # 1-based line number
    tree = ast.parse(src)
    where = {}
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            where[node.name] = node.lineno
        elif isinstance(node, ast.Assign):
            for t in node.targets:
                for n in ast.walk(t):
                    if isinstance(n, ast.Name):
                        where[n.id] = node.lineno
    names = map_names(ast.get_docstring(tree), where)
    assert len(names) >= 20 and "train_step" in names
    below = [n for n in names if where[n] > banner]
    assert not below, f"method names below the plumbing line: {below}"
    assert max(where[n] for n in names) == where["train_step"] or where["train_step"] > max(
        where[n] for n in names if n != "train_step")  # train_step closes the method part
    for plumbing in ("train", "main", "build_parser", "load_checkpoint", "save_checkpoint", "_StopRequest"):
        assert where[plumbing] > banner, plumbing
    if name == "05_ugatit":  # the memory engineering sits below the line too
        for plumbing in ("AdamInBackward", "release_freed_memory", "recompute_in_backward"):
            assert where[plumbing] > banner, plumbing


# ---------------------------------------------------------------------------------------------
# Tiny runs of the three scripts, in-process and as subprocesses
# ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    flat = make_images(root / "flat", 6, 16, 0)
    unpaired = root / "unpaired"
    make_images(unpaired / "trainA", 2, 40, 1)
    make_images(unpaired / "trainB", 2, 40, 2)
    return {"02_stylegan_freezed": flat, "03_stylegan2_ada": flat, "05_ugatit": str(unpaired)}


def train_argv(name, data, out, iters):
    """A tiny training command line of script `name`, a checkpoint and a log line every step."""
    if name == "02_stylegan_freezed":
        return ["train", "--data", data, "--out", out, "--size", "16", "--batch", "2", "--channel-max", "8",
                "--code-dim", "8", "--fid-every", "0", "--sample-every", "0", "--log-every", "1",
                "--ckpt-every", "1", "--iter", str(iters), "--quiet", "--device", "cpu"]
    if name == "03_stylegan2_ada":
        return ["train", "--data", data, "--out", out, "--size", "16", "--channel-max", "16", "--style-dim", "16",
                "--n-mlp", "2", "--batch", "2", "--num-workers", "0", "--no-progress", "--n-sample", "2",
                "--fid-every", "0", "--log-every", "1", "--ckpt-every", "1", "--iter", str(iters),
                "--device", "cpu"]
    return ["train", "--data", data, "--out", out, "--img-size", "32", "--ch", "4", "--n-res", "1",
            "--batch", "1", "--quiet", "--device", "cpu", "--sample-every", "1000", "--save-every", "1",
            "--log-every", "1", "--iter", str(iters)]


def resume_argv(run, iters, *extra):
    return ["train", "--resume", run, "--iter", str(iters), *extra]


G_KEY = {"02_stylegan_freezed": "generator", "03_stylegan2_ada": "g", "05_ugatit": "genA2B"}


def ckpt_steps(run):
    folder = os.path.join(run, "checkpoints")
    return sorted(int(n[:-3]) for n in os.listdir(folder) if n[:-3].isdigit())


def load_step(run, step):
    return torch.load(os.path.join(run, "checkpoints", f"{step:06d}.pt"), map_location="cpu", weights_only=True)


def log_steps(run):
    with open(os.path.join(run, "log.jsonl")) as f:
        return [json.loads(line)["step"] for line in f]


def same_weights(a, b, key):
    return a[key].keys() == b[key].keys() and all(torch.equal(a[key][k], b[key][k]) for k in a[key])


def call(name, argv):
    """main(argv) of a script in this process; SystemExit / ValueError come back to the test."""
    return load_script(name).main(argv)


@pytest.fixture(scope="module")
def reference_runs(data, tmp_path_factory):
    """Each script run uninterrupted for 3 steps: what every resumed run below must equal."""
    runs = {}
    for name in SCRIPTS:
        out = str(tmp_path_factory.mktemp("ref") / name)
        try:
            call(name, train_argv(name, data[name], out, 3))
        except SystemExit as e:
            assert not e.code, e
        runs[name] = out
    return runs


# ---- Resume after a kill, in each script ----------------------------------------------------------
@pytest.mark.parametrize("name", SCRIPTS)
def test_resume_cuts_log_and_fid_csv_back_to_the_checkpoint(name, data, reference_runs, tmp_path):
    run = str(tmp_path / "run")
    shutil.copytree(reference_runs[name], run)
    os.remove(os.path.join(run, "checkpoints", "000003.pt"))  # killed after logging step 3, before saving it
    with open(os.path.join(run, "fid.csv"), "w") as f:  # ops.fid's layout: provenance, header, rows
        f.write('# provenance: {"n_real": 6}\nstep,kimg,fid,kid_mean,kid_std,copies,n_real,n_gen\n'
                "0,0,90,0.1,0.01,0,6,8\n2,0.004,80,0.1,0.01,0,6,8\n3,0.006,70,0.1,0.01,0,6,8\n")
    with open(os.path.join(run, "log.jsonl"), "a") as f:
        f.write('{"step": 3, "fi')  # a line cut short by the kill
    call(name, resume_argv(run, 3))
    assert log_steps(run) == [1, 2, 3]  # step 3 once, from the resumed run
    with open(os.path.join(run, "fid.csv")) as f:
        rows = [line.split(",")[0] for line in f if not line.startswith(("#", "step"))]
    assert rows == ["0", "2"]
    assert same_weights(load_step(run, 3), load_step(reference_runs[name], 3), G_KEY[name])


@pytest.mark.parametrize("name", SCRIPTS)
def test_a_run_killed_before_its_first_checkpoint_restarts_from_step_0(name, data, reference_runs, tmp_path):
    run = str(tmp_path / "run")
    shutil.copytree(reference_runs[name], run)
    shutil.rmtree(os.path.join(run, "checkpoints"))  # settings.json and log lines, no checkpoint
    with pytest.raises((SystemExit, ValueError), match="--resume"):  # a fresh run points to --resume ...
        call(name, train_argv(name, data[name], run, 3))
    call(name, resume_argv(run, 3))  # ... which starts it again from step 0 with its settings
    assert log_steps(run) == [1, 2, 3]
    assert same_weights(load_step(run, 3), load_step(reference_runs[name], 3), G_KEY[name])


def snapshot(folder):
    """{relative path: bytes} of every file under `folder`."""
    return {os.path.relpath(os.path.join(d, n), folder): open(os.path.join(d, n), "rb").read()
            for d, _, names in os.walk(folder) for n in names}


@pytest.mark.parametrize("name,other", [(a, b) for a in SCRIPTS for b in SCRIPTS if a != b])
def test_resume_refuses_another_scripts_run_and_changes_nothing(name, other, reference_runs, tmp_path):
    run = str(tmp_path / "run")  # `other`'s run stopped before its first checkpoint: settings.json + log
    shutil.copytree(reference_runs[other], run)
    shutil.rmtree(os.path.join(run, "checkpoints"))
    before = snapshot(run)
    with pytest.raises((SystemExit, Exception)) as e:
        call(name, resume_argv(run, 3))
    assert "settings.json: not the settings of a run of this script" in str(e.value)
    assert len(str(e.value).splitlines()) == 1
    assert snapshot(run) == before  # its log is not cut, nothing is written into it


def test_02_resume_says_which_given_flags_it_ignores(reference_runs, tmp_path, capsys):
    run = str(tmp_path / "run")
    shutil.copytree(reference_runs["02_stylegan_freezed"], run)
    lr = load_step(run, 3)["args"]["lr"]
    capsys.readouterr()
    call("02_stylegan_freezed", resume_argv(run, 4, "--lr", str(lr * 10), "--quiet"))
    assert "note: --lr ignored with --resume" in capsys.readouterr().err
    assert load_step(run, 4)["args"]["lr"] == lr  # the run's own value, as 03 does


@pytest.mark.parametrize("name", SCRIPTS)
def test_resume_with_unreadable_settings_is_one_line(name, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "settings.json").write_text('{"size": 16,')  # cut short
    with pytest.raises((SystemExit, Exception)) as e:
        call(name, resume_argv(str(run), 3))
    assert "settings.json: cannot read the run's settings" in str(e.value)
    assert sorted(os.listdir(run)) == ["settings.json"]


@pytest.mark.parametrize("name", SCRIPTS)
def test_resume_falls_back_past_a_truncated_checkpoint(name, data, reference_runs, tmp_path, capsys):
    run = str(tmp_path / "run")
    shutil.copytree(reference_runs[name], run)
    newest = os.path.join(run, "checkpoints", "000003.pt")
    with open(newest, "rb") as f:
        head = f.read(os.path.getsize(newest) // 2)
    with open(newest, "wb") as f:
        f.write(head)
    call(name, resume_argv(run, 3))
    err = capsys.readouterr().err
    assert "000003.pt" in err and "resuming from" in err and "000002.pt" in err
    assert log_steps(run) == [1, 2, 3]
    assert same_weights(load_step(run, 3), load_step(reference_runs[name], 3), G_KEY[name])


@pytest.mark.parametrize("name", SCRIPTS)
def test_resume_from_a_file_outside_a_run_writes_into_a_new_out(name, data, reference_runs, tmp_path):
    elsewhere = tmp_path / "downloads"
    elsewhere.mkdir()
    file = str(elsewhere / "model.pt")
    shutil.copy(os.path.join(reference_runs[name], "checkpoints", "000002.pt"), file)
    with pytest.raises((SystemExit, ValueError), match="--out"):
        call(name, resume_argv(file, 3))
    new = str(tmp_path / "continued")
    call(name, resume_argv(file, 3, "--out", new))
    assert sorted(os.listdir(elsewhere)) == ["model.pt"]  # nothing written beside the file
    assert ckpt_steps(new)[-1] == 3 and os.path.isfile(os.path.join(new, "settings.json"))
    assert log_steps(new) == [3]
    assert same_weights(load_step(new, 3), load_step(reference_runs[name], 3), G_KEY[name])


@pytest.mark.parametrize("name", SCRIPTS)
def test_resume_removes_stray_temporary_files(name, data, reference_runs, tmp_path):
    run = str(tmp_path / "run")
    shutil.copytree(reference_runs[name], run)
    stray = os.path.join(run, "checkpoints", ".tmp-000004.ptk3j2h1")
    with open(stray, "wb") as f:
        f.write(b"PK\x03\x04 half a checkpoint")
    call(name, resume_argv(run, 4))
    assert not os.path.exists(stray)
    assert ckpt_steps(run)[-1] == 4 and not [n for n in os.listdir(os.path.join(run, "checkpoints"))
                                             if n.startswith(".tmp")]


@pytest.mark.parametrize("name", ["02_stylegan_freezed", "05_ugatit"])
def test_a_run_folder_of_the_older_layout_still_resumes(name, data, reference_runs, tmp_path):
    """02 and 05 used to keep one RUN/checkpoint.pt (and 05 a log.txt); such a folder resumes."""
    run = str(tmp_path / "old")
    os.makedirs(run)
    shutil.copy(os.path.join(reference_runs[name], "checkpoints", "000002.pt"), os.path.join(run, "checkpoint.pt"))
    call(name, resume_argv(run, 3))
    assert ckpt_steps(run) == [3] and os.path.isfile(os.path.join(run, "checkpoint.pt"))  # left as it was
    assert same_weights(load_step(run, 3), load_step(reference_runs[name], 3), G_KEY[name])


# ---- SIGTERM from another process (a scheduler, `timeout`, `docker stop`) ------------------------
def run_until_signalled(name, argv, sig, ignore_sigint=False, timeout=240):
    """Start `python SCRIPT argv`, wait until log.jsonl has a line, send `sig`; returns (rc, output)."""
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONPATH=ROOT)

    def pre():  # the child's SIGINT at start: ignored (as under nohup) or the default
        signal.signal(signal.SIGINT, signal.SIG_IGN if ignore_sigint else signal.SIG_DFL)

    proc = subprocess.Popen([sys.executable, os.path.join(ROOT, name + ".py"), *argv], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=pre)
    log = os.path.join(argv[argv.index("--out") + 1], "log.jsonl")
    deadline = time.time() + timeout
    while not (os.path.isfile(log) and os.path.getsize(log) > 0):
        if proc.poll() is not None or time.time() > deadline:
            proc.kill()
            out, err = proc.communicate()
            pytest.fail(f"{name} ended or hung before its first log line: {err[-2000:]}")
        time.sleep(0.05)
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, out + err


@pytest.mark.parametrize("ignore_sigint", [False, True], ids=["plain", "sigint-ignored"])
@pytest.mark.parametrize("name", SCRIPTS)
def test_sigterm_saves_the_finished_step_exits_143_and_resume_continues(name, data, tmp_path, ignore_sigint):
    run = str(tmp_path / "run")
    argv = train_argv(name, data[name], run, 100000)
    argv[argv.index("--ckpt-every" if "--ckpt-every" in argv else "--save-every") + 1] = "1000"
    rc, text = run_until_signalled(name, argv, signal.SIGTERM, ignore_sigint)
    assert rc == 143, text[-2000:]
    steps = ckpt_steps(run)
    assert len(steps) == 1 and steps[0] >= 1  # the one checkpoint: the iteration it had finished
    step = steps[0]
    assert log_steps(run)[-1] == step
    assert f"SIGTERM: stopped after iteration {step}" in text and f"--resume {run}" in text
    call(name, resume_argv(run, step + 1))
    assert ckpt_steps(run)[-1] == step + 1 and load_step(run, step + 1)["step"] == step + 1
    assert log_steps(run) == list(range(1, step + 2))


def test_stop_request_restores_the_previous_handlers_and_keeps_an_ignored_sigint_ignored(sigint_handled):
    s = load_script("05_ugatit")
    old_int, old_term = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    try:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        with s._StopRequest() as stop:
            assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN  # as under nohup: still ignored
            signal.raise_signal(signal.SIGTERM)
            assert stop.requested and stop.exit_code == 128 + signal.SIGTERM == 143
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
        assert signal.getsignal(signal.SIGTERM) is old_term
    finally:
        signal.signal(signal.SIGINT, old_int)
