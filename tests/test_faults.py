"""Faults a long run meets, made to happen for real: a disk that fills (a small tmpfs; where mounting
is refused, os.replace raising ENOSPC at the Nth call), a second trainer on a live run folder, a folder
remounted read-only mid-run, an ablation launched twice, out of GPU memory (a hook raising
torch.OutOfMemoryError), and warnings a person can read.

The reference for "nothing lost": an uninterrupted run of the same settings on an ordinary disk;
after the fault, --resume must end with its exact weights."""
import errno
import json
import os
import signal
import subprocess
import sys

import pytest
import torch

from conftest import ROOT, freeze_mid_run, load_script, mounted_tmpfs, random_image_folder, wait_for_step

SCRIPT = "03_stylegan2_ada"
FLAGS = ["--size", "16", "--channel-max", "16", "--style-dim", "16", "--n-mlp", "2", "--batch", "4",
         "--device", "cpu", "--num-workers", "0", "--no-progress", "--n-sample", "4", "--fid-every", "0",
         "--log-every", "1", "--ckpt-every", "1", "--keep", "50"]


@pytest.fixture(scope="module")
def m():
    return load_script(SCRIPT)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return random_image_folder(tmp_path_factory.mktemp("faces"), 8, 16, seed=5)


@pytest.fixture(scope="module")
def reference(m, data, tmp_path_factory):
    """An uninterrupted 6-iteration run on the ordinary disk: what every faulted run must end as."""
    out = tmp_path_factory.mktemp("ref") / "run"
    m.main(["train", "--data", data, "--out", str(out), "--iter", "6"] + FLAGS)
    return out


def same_as_reference(run, reference, step=6):
    a = torch.load(os.path.join(run, "checkpoints", f"{step:06d}.pt"), weights_only=True)
    b = torch.load(os.path.join(reference, "checkpoints", f"{step:06d}.pt"), weights_only=True)
    for key in ("g", "d", "g_ema"):
        for name, t in b[key].items():
            assert torch.equal(a[key][name], t), f"{key}.{name}"
    steps = [json.loads(x)["step"] for x in open(os.path.join(run, "log.jsonl"))]
    assert steps == list(range(1, step + 1))


@pytest.fixture
def tmpfs(tmp_path):
    yield from mounted_tmpfs(tmp_path, "4m", "test_disk_full_at_the_nth_replace")


def checkpoint_bytes(reference):
    return os.path.getsize(os.path.join(reference, "checkpoints", "000001.pt"))


def test_a_disk_that_fills_stops_with_one_line_and_the_run_resumes_exactly(m, data, reference, tmpfs):
    size = checkpoint_bytes(reference)
    free = os.statvfs(tmpfs).f_bavail * os.statvfs(tmpfs).f_frsize
    ballast = tmpfs / "ballast"
    ballast.write_bytes(b"\0" * (free - int(3.5 * size)))  # room for about three checkpoints
    run = tmpfs / "run"
    with pytest.raises(SystemExit) as e:
        m.main(["train", "--data", data, "--out", str(run), "--iter", "6"] + FLAGS)
    text = str(e.value)
    assert "\n" not in text and "No space left on device (ENOSPC)" in text
    assert f"--resume {run}" in text and str(run) in text.split(":")[1]
    kept = m.checkpoint_files(str(run / "checkpoints"))
    assert 1 <= len(kept) < 6  # stopped part-way (where depends on file sizes), an earlier checkpoint kept
    for path in kept:  # every checkpoint written before the fault loads
        assert torch.load(path, weights_only=True)["step"] >= 1
    for line in open(run / "log.jsonl"):
        json.loads(line)  # whole lines only
    ballast.unlink()  # space is back
    m.main(["train", "--resume", str(run), "--keep", "2"])
    same_as_reference(run, reference)


def test_disk_full_at_the_nth_replace_keeps_the_earlier_checkpoints(m, data, reference, tmp_path, monkeypatch):
    """The same path without a mount: the 4th whole-file write into the run fails with ENOSPC."""
    run = tmp_path / "run"
    real_replace, calls = os.replace, []

    def replace(src, dst, *a, **k):
        if str(dst).startswith(str(run)):
            calls.append(dst)
            if len(calls) == 4:
                raise OSError(errno.ENOSPC, "No space left on device")
        return real_replace(src, dst, *a, **k)

    monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(SystemExit, match=r"ENOSPC\) while writing the run"):
        m.main(["train", "--data", data, "--out", str(run), "--iter", "6"] + FLAGS)
    monkeypatch.setattr(os, "replace", real_replace)
    assert not [n for n in os.listdir(run / "checkpoints") if n.startswith(".tmp-")]  # no half file left
    m.main(["train", "--resume", str(run)])
    same_as_reference(run, reference)


def start_training(data, run, iters, *extra):
    cmd = [sys.executable, os.path.join(ROOT, SCRIPT + ".py"), "train", "--data", data, "--out", str(run),
           "--iter", str(iters)] + FLAGS + list(extra)
    env = dict(os.environ, OMP_NUM_THREADS="1")  # one thread, as the tests' own torch (conftest)
    return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def test_a_second_trainer_gets_one_line_and_touches_nothing(m, data, tmp_path):
    run = tmp_path / "run"
    proc = start_training(data, run, 100000)
    try:
        wait_for_step(run, 2, proc)
        stray = run / "checkpoints" / ".tmp-000099.pt"  # what a live save leaves for a moment
        stray.write_bytes(b"partial")
        lines = sum(1 for _ in open(run / "log.jsonl"))
        with pytest.raises(SystemExit) as e:
            m.main(["train", "--resume", str(run), "--iter", "5"])
        text = str(e.value)
        assert "\n" not in text and f"another training process (PID {proc.pid})" in text
        assert stray.read_bytes() == b"partial" and sum(1 for _ in open(run / "log.jsonl")) >= lines
        # a reader is not blocked: generate reads the live run's newest checkpoint
        m.main(["generate", "--ckpt", str(run), "--seeds", "0", "--out", str(tmp_path / "img"), "--device", "cpu"])
        assert os.path.isfile(tmp_path / "img" / "seed0000.png")
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=120)
    assert proc.returncode == 143
    # once the first trainer is gone its lock is gone with it: no stale lock
    step = torch.load(m.checkpoint_files(str(run / "checkpoints"))[-1], weights_only=True)["step"]
    m.main(["train", "--resume", str(run), "--iter", str(step + 1)])
    assert torch.load(m.checkpoint_files(str(run / "checkpoints"))[-1], weights_only=True)["step"] == step + 1


def test_a_folder_turned_read_only_mid_run_stops_with_one_line_and_resumes(m, data, reference, tmp_path):
    """The run's folders made immutable mid-run (chattr +i: chmod does not stop root, and a remount
    read-only is refused while the run holds its lock file open for writing, as the kernel refuses
    it for any file open for writing): the next whole-file write fails; one line, then --resume."""
    run = tmp_path / "run"
    proc = start_training(data, run, 6, "--keep", "2")
    out = freeze_mid_run(run, proc)
    last = out.strip().splitlines()[-1]
    assert proc.returncode == 1 and "Operation not permitted (EPERM)" in last and f"--resume {run}" in last, last
    for path in m.checkpoint_files(str(run / "checkpoints")):
        torch.load(path, weights_only=True)  # what was written before is whole
    m.main(["train", "--resume", str(run)])
    same_as_reference(run, reference)


def test_an_ablation_launched_twice_gets_one_line(m, data, tmp_path):
    torch.manual_seed(0)
    g, d = m.Generator(16, style_dim=16, n_mlp=2, channel_max=16), m.Discriminator(16, channel_max=16)
    src = str(tmp_path / "src.pt")
    m.save_checkpoint(src, {"g": g.state_dict(), "d": d.state_dict(), "g_ema": g.state_dict(), "step": 0,
                            "args": dict(size=16, style_dim=16, n_mlp=2, channel_multiplier=2, channel_max=16)})
    abl = tmp_path / "abl"
    argv = ["ablation", "--data", data, "--ckpt", src, "--out", str(abl), "--rows", "baseline", "--seeds", "0",
            "--iter", "100000", "--inception", "random", "--fid-dims", "64"] + FLAGS
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.Popen([sys.executable, os.path.join(ROOT, SCRIPT + ".py")] + argv, cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for_step(abl / "runs" / "baseline-s0", 1, proc)
        with pytest.raises(SystemExit, match=f"another training process \\(PID {proc.pid}\\)"):
            m.main(argv)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=120)


def test_out_of_gpu_memory_in_generate_is_one_line(m, reference, tmp_path, monkeypatch):
    def oom(*a, **k):
        raise m.OUT_OF_MEMORY("CUDA out of memory. Tried to allocate 20.00 GiB")

    monkeypatch.setattr(m.Generator, "forward", oom)
    with pytest.raises(SystemExit) as e:
        m.main(["generate", "--ckpt", str(reference), "--seeds", "0", "--out", str(tmp_path / "x"), "--device", "cpu"])
    assert "\n" not in str(e.value) and "out of GPU memory" in str(e.value) and "--precision bf16" in str(e.value)


def test_warnings_are_one_line_each_naming_the_file(m, data, tmp_path):
    bad = tmp_path / "data"
    bad.mkdir()
    for name in sorted(os.listdir(data)):
        (bad / name).write_bytes(open(os.path.join(data, name), "rb").read())
    (bad / "broken.png").write_text("not a png")
    done = subprocess.run([sys.executable, os.path.join(ROOT, SCRIPT + ".py"), "train", "--data", str(bad), "--out",
                           str(tmp_path / "run"), "--iter", "1"] + FLAGS, cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-500:]
    warn = [line for line in done.stderr.splitlines() if "broken.png" in line]
    assert warn == [f"WARNING: {bad / 'broken.png'}: UnidentifiedImageError: cannot identify image file "
                    f"'{bad / 'broken.png'}' (skipped)"]
    assert "warnings.warn" not in done.stderr and "UserWarning" not in done.stderr
    assert "skipped 1 unreadable image(s)" in done.stdout
    assert (tmp_path / "run" / "skipped.txt").read_text().startswith(str(bad / "broken.png"))
