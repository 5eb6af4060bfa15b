"""Shared test helpers: load a numbered script (e.g. 03_stylegan2_ada.py) as a module."""
import importlib.util
import os
import sys

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

# Test tensors are tiny: one thread avoids thread start-up and oversubscription costs on small machines.
torch.set_num_threads(1)

_cache = {}


def random_image_folder(folder, n, size, seed=0):
    """n uniform-noise RGB PNGs (00000.png, ...) of size x size in folder: a training set for plumbing tests."""
    import numpy as np
    from PIL import Image
    os.makedirs(folder, exist_ok=True)
    rng = np.random.RandomState(seed)
    for i in range(n):
        Image.fromarray(rng.randint(0, 256, (size, size, 3), dtype=np.uint8)).save(
            os.path.join(folder, f"{i:05d}.png"))
    return str(folder)


def load_script(name):
    """Import ROOT/<name>.py (names may start with a digit) once and return the module."""
    if name not in _cache:
        path = os.path.join(ROOT, name + ".py")
        spec = importlib.util.spec_from_file_location(os.path.basename(name), path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module
        spec.loader.exec_module(module)
        _cache[name] = module
    return _cache[name]


@pytest.fixture(autouse=True)
def _fixed_seed():
    """Every test starts from torch.manual_seed(0), so random test inputs are the same on every run."""
    torch.manual_seed(0)
    yield


@pytest.fixture
def sigint_handled():
    """SIGINT handled as in an interactive shell even when the suite runs with it ignored (nohup,
    a background job): tests that send themselves Ctrl-C need it delivered."""
    import signal
    old = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, old)


requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
# A test that needs a GPU carries the `cuda` marker (`pytest -m cuda` selects them, bench/gpu_check.py
# runs them); without a GPU it is skipped.
requires_cuda = pytest.mark.cuda


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if item.get_closest_marker("cuda") is not None:
            item.add_marker(skip)


# ---------------------------------------------------------------------------------------------
# Faults made to happen (tests/test_faults.py for 03, tests/test_faults_02_05.py for 02 and 05)
# ---------------------------------------------------------------------------------------------
def mounted_tmpfs(tmp_path, size, other_test):
    """A real small filesystem (tmpfs, root only) at tmp_path/disk, as a generator for a fixture;
    skipped with the reason where mounting is refused (`other_test` covers the same path)."""
    import subprocess
    folder = tmp_path / "disk"
    folder.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({done.stderr.decode().strip() or 'not root'}); "
                    f"{other_test} covers the same path")
    yield folder
    subprocess.run(["umount", "-l", str(folder)], capture_output=True)


def wait_for_step(run, step, proc, timeout=240):
    """Wait until the training process `proc` has logged `step` lines in RUN/log.jsonl."""
    import time
    deadline = time.time() + timeout
    log = os.path.join(run, "log.jsonl")
    while time.time() < deadline and proc.poll() is None:
        if os.path.isfile(log) and sum(1 for _ in open(log)) >= step:
            return
        time.sleep(0.02)
    tail = proc.stdout.read()[-800:] if proc.poll() is not None and proc.stdout else ""
    raise AssertionError(f"the run did not reach step {step} (exit {proc.poll()}): {tail}")


def freeze_mid_run(run, proc, step=2):
    """Make the run's folders immutable once `proc` reached `step` (chattr +i: chmod does not stop
    root, and a read-only remount is refused while the run holds its lock file open for writing);
    returns the process's output after it stopped. Skips where chattr is refused; fails if the run
    finished before the folders turned read-only (nothing would be tested)."""
    import subprocess
    frozen = [run / "checkpoints", run / "samples", run]
    try:
        wait_for_step(run, step, proc)
        done = subprocess.run(["chattr", "+i"] + [str(f) for f in frozen], capture_output=True, text=True)
        if done.returncode != 0:
            proc.kill()
            pytest.skip(f"chattr +i is refused here ({done.stderr.strip()})")
        out, _ = proc.communicate(timeout=240)
    finally:
        subprocess.run(["chattr", "-i"] + [str(f) for f in frozen], capture_output=True)
    if proc.returncode == 0:
        pytest.fail("the run finished before its folder turned read-only: nothing was tested")
    return out
