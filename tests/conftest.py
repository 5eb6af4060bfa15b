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
