"""Every script refuses a torch older than 2.6 with one line naming the installed version.

The old torch is simulated by a stand-in `torch` package first on PYTHONPATH whose __version__ is
2.5.1 (any attribute or submodule import gives a dummy), so each script runs up to `import ops`.
"""
import os
import re
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

FAKE_TORCH = '''
import importlib.abc, importlib.machinery, sys, types
__version__ = "2.5.1+cpu"
class _Dummy:
    def __init__(self, *a, **k): pass
    def __call__(self, *a, **k): return self
def __getattr__(name):
    return _Dummy
class _Finder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(self, name, path, target=None):
        if name.startswith(("torch.", "torchvision")):
            return importlib.machinery.ModuleSpec(name, self, is_package=True)
    def create_module(self, spec):
        mod = types.ModuleType(spec.name)
        mod.__path__ = []
        mod.__getattr__ = __getattr__
        return mod
    def exec_module(self, mod):
        pass
sys.meta_path.insert(0, _Finder())
'''


@pytest.mark.parametrize("script", ["01_prepare_data.py", "02_stylegan_freezed.py", "03_stylegan2_ada.py",
                                    "04_latent_explore.py", "05_ugatit.py", "-m ops.fid"])
def test_old_torch_gives_one_line_naming_the_version(tmp_path, script):
    (tmp_path / "torch").mkdir()
    (tmp_path / "torch" / "__init__.py").write_text(FAKE_TORCH)
    env = dict(os.environ, PYTHONPATH=str(tmp_path))
    r = subprocess.run([sys.executable, *script.split(), "--help"], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 1
    assert r.stderr.strip().splitlines() == [
        "error: calm-gan needs torch >= 2.6 (older torch.load(weights_only=True) can be made to run "
        "code, CVE-2025-32434); installed: torch 2.5.1+cpu. pip install -r requirements.txt"]


def test_version_rule():
    import ops
    for ok in ("2.6.0", "2.14.1+cu130", "3.0.0a0"):
        ops.check_torch_version(ok)
    for old in ("2.5.1", "1.13.0", "2.1.0+cpu"):
        with pytest.raises(SystemExit, match=re.escape(f"installed: torch {old}.")):
            ops.check_torch_version(old)


def test_requirements_pin_torch_2_6():
    with open(os.path.join(ROOT, "requirements.txt")) as f:
        lines = [line.split("#")[0].strip() for line in f]
    assert "torch>=2.6" in lines and "torchvision>=0.21" in lines
