"""Faults a long run of 02 (StyleGAN v1 + FreezeD) or 05 (U-GAT-IT) meets, made to happen for real, as
tests/test_faults.py does for 03: a disk that fills (a small tmpfs; and ENOSPC raised by os.replace or
os.write at the Nth checkpoint or log line), a second trainer on a live run folder, a run folder made
immutable mid-run, out of GPU memory (a hook raising torch.OutOfMemoryError after a step has already
changed the weights), out of CPU memory (a real one: the address space capped with RLIMIT_AS), out of
GPU memory in `04 project`, and warnings a person can read (the data files 02 and 05 skip; every
script's main run as a program).

The reference for "nothing lost": an uninterrupted run of the same settings on an ordinary disk; after
each fault, --resume must end with its exact weights."""
import errno
import io
import json
import os
import resource
import signal
import subprocess
import sys
import textwrap
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

import ops
from conftest import ROOT, freeze_mid_run, load_script, mounted_tmpfs, random_image_folder, wait_for_step

ITERS = 6  # the reference run's length; every faulted run resumes to it
SCRIPTS = {
    "02_stylegan_freezed": dict(
        flags=["--size", "16", "--init-size", "16", "--channel-max", "8", "--code-dim", "8", "--batch", "2",
               "--fid-every", "0", "--n-sample", "4", "--sample-every", "1", "--log-every", "1",
               "--ckpt-every", "1", "--keep", "50", "--quiet", "--device", "cpu"],
        nets=("generator", "discriminator", "g_running"), step_fn="train_step"),
    "05_ugatit": dict(
        flags=["--img-size", "32", "--ch", "2", "--n-res", "1", "--batch", "1", "--sample-every", "1",
               "--log-every", "1", "--save-every", "1", "--keep", "50", "--quiet", "--device", "cpu"],
        nets=("genA2B", "genB2A", "disGA", "disGB", "disLA", "disLB"), step_fn="train_step_fast"),
}
ENV = dict(os.environ, OMP_NUM_THREADS="1")  # one thread, as the tests' own torch (conftest)


class Case:
    """One script's tiny run: its module, data folder, flags and an uninterrupted reference run."""

    def __init__(self, name, folder):
        self.name, self.m = name, load_script(name)
        self.flags, self.nets, self.step_fn = (SCRIPTS[name][k] for k in ("flags", "nets", "step_fn"))
        self.path = os.path.join(ROOT, name + ".py")
        if name == "02_stylegan_freezed":
            self.data = random_image_folder(folder / "faces", 4, 16, seed=5)
            self.images = self.data
        else:
            random_image_folder(folder / "pairs" / "trainA", 3, 40, seed=1)
            random_image_folder(folder / "pairs" / "trainB", 3, 40, seed=2)
            self.data, self.images = str(folder / "pairs"), str(folder / "pairs" / "trainA")
        self.reference = folder / "reference"
        self.train("--out", self.reference)

    def argv(self, *extra, data=None):
        return ["train", "--data", data or self.data, "--iter", str(ITERS)] + self.flags + [str(x) for x in extra]

    def train(self, *extra, data=None):
        return self.m.main(self.argv(*extra, data=data))

    def resume(self, run, *extra):
        return self.m.main(["train", "--resume", str(run)] + [str(x) for x in extra])

    def start(self, run, iters, *extra, data=None):
        """The same run in a second process (its output in .out)."""
        argv = self.argv("--out", run, *extra, data=data)
        argv[argv.index("--iter") + 1] = str(iters)
        return subprocess.Popen([sys.executable, self.path] + argv, cwd=ROOT, env=ENV, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True)

    def read(self, run, out):
        """The reader each script has (02 generate, 05 test) on the newest checkpoint of `run`."""
        if self.name == "02_stylegan_freezed":
            self.m.main(["generate", "--ckpt", str(run), "--seeds", "0", "--out", str(out), "--device", "cpu"])
        else:
            self.m.main(["test", "--ckpt", str(run), "--input", self.images, "--out", str(out), "--device", "cpu"])
        return sorted(os.listdir(out))

    def same_as_reference(self, run, step=ITERS):
        a = torch.load(os.path.join(run, "checkpoints", f"{step:06d}.pt"), weights_only=True)
        b = torch.load(os.path.join(self.reference, "checkpoints", f"{step:06d}.pt"), weights_only=True)
        for key in self.nets:
            for name, t in b[key].items():
                assert torch.equal(a[key][name], t), f"{key}.{name}"
        steps = [json.loads(x)["step"] for x in open(os.path.join(run, "log.jsonl"))]
        assert steps == list(range(1, step + 1))

    def checkpoints(self, run):
        return self.m.checkpoint_files(os.path.join(run, "checkpoints"))


@pytest.fixture(scope="module", params=sorted(SCRIPTS))
def case(request, tmp_path_factory):
    return Case(request.param, tmp_path_factory.mktemp(request.param[:2]))


def whole(case, run, temp_files_left=False):
    """What a fault leaves: every checkpoint loads, every log line is whole, and no temporary file is
    left (unless the folder refused its removal: temp_files_left; --resume removes it)."""
    for path in case.checkpoints(run):
        assert torch.load(path, weights_only=True)["step"] >= 1
    for line in open(os.path.join(run, "log.jsonl")):
        json.loads(line)
    if not temp_files_left:
        no_temp_files(run)


def no_temp_files(run):
    for sub in ("", "checkpoints", "samples"):
        assert not [n for n in os.listdir(os.path.join(run, sub)) if n.startswith(".tmp-")], sub


# ---- a disk that fills ----------------------------------------------------------------------------
@pytest.fixture
def tmpfs(tmp_path):
    yield from mounted_tmpfs(tmp_path, "16m", "test_disk_full_at_the_nth_write")


def test_a_disk_that_fills_stops_with_one_line_and_the_run_resumes_exactly(case, tmpfs):
    size = os.path.getsize(os.path.join(case.reference, "checkpoints", "000001.pt"))
    free = os.statvfs(tmpfs).f_bavail * os.statvfs(tmpfs).f_frsize
    ballast = tmpfs / "ballast"
    ballast.write_bytes(b"\0" * (free - int(2.5 * size)))  # room for about two checkpoints and the samples
    run = tmpfs / "run"
    with pytest.raises(SystemExit) as e:
        case.train("--out", run)
    text = str(e.value)
    assert "\n" not in text and "No space left on device (ENOSPC)" in text, text
    assert text.startswith(f"error: {run}") and text.endswith(f"train --resume {run}")
    assert 1 <= len(case.checkpoints(run)) < ITERS  # stopped part-way, an earlier checkpoint kept
    whole(case, run)
    ballast.unlink()  # space is back
    case.resume(run, "--keep", "2")
    case.same_as_reference(run)


@pytest.mark.parametrize("what", ["checkpoint", "log line"])
def test_disk_full_at_the_nth_write_keeps_what_came_before(case, tmp_path, monkeypatch, what):
    """The same path without a mount: the 3rd checkpoint's os.replace, or the 3rd log line's os.write,
    fails with ENOSPC."""
    run = tmp_path / "run"
    log = os.path.join(os.path.realpath(tmp_path), "run", "log.jsonl")
    real_replace, real_write, calls = os.replace, os.write, []

    def replace(src, dst, *a, **k):
        if str(dst).startswith(str(run)) and str(dst).endswith(".pt"):
            calls.append(dst)
            if len(calls) == 3:
                raise OSError(errno.ENOSPC, "No space left on device")
        return real_replace(src, dst, *a, **k)

    def write(fd, data):
        if fd > 2 and os.readlink(f"/proc/self/fd/{fd}") == log:
            calls.append(fd)
            if len(calls) == 3:
                raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(fd, data)

    if what == "checkpoint":
        monkeypatch.setattr(os, "replace", replace)
    else:
        monkeypatch.setattr(os, "write", write)
    with pytest.raises(SystemExit) as e:
        case.train("--out", run)
    monkeypatch.undo()
    named = os.path.join(run, "checkpoints", "000003.pt") if what == "checkpoint" else os.path.join(run, "log.jsonl")
    assert str(e.value).startswith(f"error: {named}: No space left on device (ENOSPC) while writing the run")
    whole(case, run)
    assert [int(os.path.basename(p)[:-3]) for p in case.checkpoints(run)] == [1, 2]
    assert sum(1 for _ in open(log)) == (2 if what == "log line" else 3)  # the line of step 3 is written first
    case.resume(run)
    case.same_as_reference(run)


# ---- two processes, one run folder ----------------------------------------------------------------


def test_a_second_trainer_gets_one_line_and_touches_nothing(case, tmp_path):
    run = tmp_path / "run"
    proc = case.start(run, 100000)
    try:
        wait_for_step(run, 2, proc)
        stray = run / "checkpoints" / ".tmp-000099.pt"  # what a live save leaves for a moment
        stray.write_bytes(b"partial")
        lines = sum(1 for _ in open(run / "log.jsonl"))
        with pytest.raises(SystemExit) as e:
            case.resume(run, "--iter", "5")
        text = str(e.value)
        assert "\n" not in text and f"another training process (PID {proc.pid})" in text, text
        assert stray.read_bytes() == b"partial" and sum(1 for _ in open(run / "log.jsonl")) >= lines
        assert case.read(run, tmp_path / "img")  # a reader is not blocked: the live run's newest checkpoint
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=120)
    assert proc.returncode == 143
    # once the first trainer is gone its lock is gone with it: no stale lock
    step = torch.load(case.checkpoints(run)[-1], weights_only=True)["step"]
    case.resume(run, "--iter", step + 1)
    assert torch.load(case.checkpoints(run)[-1], weights_only=True)["step"] == step + 1


# ---- a folder that turns read-only ----------------------------------------------------------------
def test_a_folder_turned_read_only_mid_run_stops_with_one_line_and_resumes(case, tmp_path):
    """The run's folders made immutable mid-run (chattr +i: chmod does not stop root, and a read-only
    remount is refused while the run holds its lock file open for writing): the next whole-file write
    fails; one line, then --resume ends as the uninterrupted run."""
    run = tmp_path / "run"
    proc = case.start(run, ITERS, "--keep", "2")
    out = freeze_mid_run(run, proc)
    last = out.strip().splitlines()[-1]
    assert proc.returncode == 1 and "Operation not permitted (EPERM)" in last and f"--resume {run}" in last, out
    assert "Traceback" not in out
    whole(case, run, temp_files_left=True)  # a write refused at its rename could not remove its temporary file
    case.resume(run)
    case.same_as_reference(run)
    no_temp_files(run)  # --resume removed it


# ---- out of memory --------------------------------------------------------------------------------
def test_out_of_gpu_memory_in_training_is_one_line_and_the_run_resumes_exactly(case, tmp_path, monkeypatch):
    """Step 3 runs (the weights change), then its backward runs out of GPU memory: one line naming the
    settings to lower; nothing of step 3 is saved, so --resume ends as the uninterrupted run."""
    run, real, calls = tmp_path / "run", getattr(case.m, case.step_fn), []

    def step(*a, **k):
        out = real(*a, **k)
        calls.append(1)
        if len(calls) == 3:
            raise case.m.OUT_OF_MEMORY("CUDA out of memory. Tried to allocate 20.00 GiB. GPU 0 has a total "
                                       "capacity of 79.10 GiB of which 3.06 MiB is free.")
        return out

    monkeypatch.setattr(case.m, case.step_fn, step)
    with pytest.raises(SystemExit) as e:
        case.train("--out", run)
    monkeypatch.undo()
    text = str(e.value)
    assert "\n" not in text and "out of GPU memory in " in text and "CUDA could not allocate 20.00 GiB" in text
    assert text.endswith("the checkpoints written so far are intact"), text
    if case.name == "02_stylegan_freezed":
        assert "iteration 3" in text and "--batch 1 (now 2)" in text and "--size" in text
        assert f"--resume {run} --precision bf16" in text
    else:
        assert "step 3" in text and f"--resume {run} --amp bf16;" in text and "--img-size or --light" in text
    assert [int(os.path.basename(p)[:-3]) for p in case.checkpoints(run)] == [1, 2]
    case.resume(run)
    case.same_as_reference(run)


def test_out_of_cpu_memory_is_one_line(case, tmp_path):
    """A real CPU allocator failure: this process may take 256 MiB more address space than it holds
    now (RLIMIT_AS, put back afterwards), and the batch needs more (02: 4000 images at 16 px, 05: 4000
    pairs at 32 px)."""
    held = int(open("/proc/self/status").read().split("VmSize:")[1].split()[0]) << 10
    limit = resource.getrlimit(resource.RLIMIT_AS)
    resource.setrlimit(resource.RLIMIT_AS, (held + (256 << 20), limit[1]))
    try:
        with pytest.raises(SystemExit) as e:
            case.train("--out", tmp_path / "run", "--batch", "4000", "--iter", "1")
    finally:
        resource.setrlimit(resource.RLIMIT_AS, limit)
    text = str(e.value)
    assert "\n" not in text and text.startswith("error: out of CPU memory in ") and "--batch 2000" in text, text
    assert "the allocator could not give" in text or "MemoryError" in text
    assert ("a smaller --size" if case.name == "02_stylegan_freezed" else "a smaller --img-size") in text
    assert "intact" not in text  # no checkpoint was written, and the line does not claim one


def test_out_of_gpu_memory_in_04_project_is_one_line(tmp_path, monkeypatch):
    """The second image's projection runs out of GPU memory: one line naming --distance and --device;
    the first image's outputs are written."""
    sg2, lx = load_script("03_stylegan2_ada"), load_script("04_latent_explore")
    torch.manual_seed(1)
    g = sg2.Generator(16, style_dim=16, n_mlp=2, channel_multiplier=1, channel_max=16)
    d = sg2.Discriminator(16, channel_multiplier=1, channel_max=16)
    ckpt = str(tmp_path / "g.pt")
    sg2.save_checkpoint(ckpt, {"g_ema": g.state_dict(), "d": d.state_dict(), "args": dict(
        size=16, style_dim=16, n_mlp=2, channel_multiplier=1, channel_max=16)})
    images = []
    for name in ("a", "b"):
        images.append(str(tmp_path / f"{name}.png"))
        Image.fromarray(np.random.RandomState(len(images)).randint(0, 256, (16, 16, 3), np.uint8)).save(images[-1])
    real, calls = lx.FeatureDistance.forward, []

    def forward(self, *a, **k):
        calls.append(1)
        if len(calls) == 5:  # image a: 2 steps and its final distance; then image b's 2nd step
            raise sg2.OUT_OF_MEMORY("CUDA out of memory. Tried to allocate 8.00 GiB")
        return real(self, *a, **k)

    monkeypatch.setattr(lx.FeatureDistance, "forward", forward)
    out = tmp_path / "proj"
    with pytest.raises(SystemExit) as e:
        lx.main(["project", "--ckpt", ckpt, "--image", *images, "--out", str(out), "--steps", "2",
                 "--distance", "d", "--device", "cpu"])
    text = str(e.value)
    assert "\n" not in text and text.startswith("error: out of GPU memory projecting b at 16 px with "
                                                "discriminator features"), text
    assert "CUDA could not allocate 8.00 GiB" in text and text.endswith("try --distance mse (no feature network)")
    assert sorted(os.listdir(out)) == ["a_compare.png", "a_distances.json", "a_latent.pt", "a_proj.png"]


# ---- warnings a person can read -------------------------------------------------------------------
def test_unreadable_data_files_are_one_warning_line_each_and_counted(case, tmp_path, capsys):
    """A file that does not decode: one `WARNING: <path>: <what>` line (as main() shows warnings when run
    as a program: ops.readable_warnings), listed in RUN/skipped.txt and counted at the end of the run."""
    bad = tmp_path / "data"
    folder = bad if case.name == "02_stylegan_freezed" else bad / "trainA"
    for root, _, names in os.walk(case.data):
        for name in names:
            dst = bad / os.path.relpath(os.path.join(root, name), case.data)
            dst.parent.mkdir(parents=True, exist_ok=True)
            dst.write_bytes(open(os.path.join(root, name), "rb").read())
    (folder / "broken.png").write_text("not a png")
    run, shown = tmp_path / "run", io.StringIO()
    with warnings.catch_warnings():
        ops.readable_warnings(shown)
        case.train("--out", run, "--iter", "1", data=str(bad))
    printed = capsys.readouterr()
    out = printed.out + printed.err + shown.getvalue()
    path = folder / "broken.png"
    why = f"UnidentifiedImageError: cannot identify image file '{path}'"
    expect = f"{path}: {why} (skipped)" if case.name == "02_stylegan_freezed" else \
        f"{path}: skipped, cannot be read as an image ({why})"
    assert [line for line in out.splitlines() if "broken.png" in line] == [f"WARNING: {expect}"]
    assert f"skipped 1 unreadable image(s) of {bad}, listed in {run / 'skipped.txt'}" in out
    assert (run / "skipped.txt").read_text() == f"{path}: {why}\n"


def test_every_script_prints_warnings_as_one_line_each():
    """Each script's main(), run as a program, shows a warning as `WARNING: <text>`, once, with no
    file:line and no source line (Python's own display is put back before each script)."""
    driver = textwrap.dedent("""
        import argparse, runpy, sys, warnings
        parse = argparse.ArgumentParser.parse_args
        def warn_then_parse(self, *a, **k):
            for _ in range(2):  # the same warning twice: shown once
                warnings.warn(f"/data/{NAME}.png: cannot identify image file (skipped)")
            return parse(self, *a, **k)
        argparse.ArgumentParser.parse_args = warn_then_parse
        for NAME in sys.argv[1:]:
            warnings.showwarning = warnings._showwarning_orig
            sys.argv = [NAME + ".py", "--help"]
            try:
                runpy.run_path(NAME + ".py", run_name="__main__")
            except SystemExit:
                pass
    """)
    names = ["01_prepare_data", "02_stylegan_freezed", "03_stylegan2_ada", "04_latent_explore", "05_ugatit"]
    done = subprocess.run([sys.executable, "-c", driver] + names, cwd=ROOT, env=ENV, capture_output=True,
                          text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stderr.splitlines() == [f"WARNING: /data/{n}.png: cannot identify image file (skipped)"
                                        for n in names]
