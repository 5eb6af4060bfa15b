"""Lazy JIT build of calm-gan's CUDA kernels (upfirdn2d.cu, bias_act.cu, with their .cpp bindings).

Nothing is compiled at import: `load_extension(name)` builds `name` with
torch.utils.cpp_extension.load the first time a CUDA tensor needs it (cached by torch under
TORCH_EXTENSIONS_DIR, so later runs only load the .so). If CUDA is missing or the build fails, it
warns once and returns None, and the callers use the PyTorch reference from then on.
"""
import os
import warnings

import torch

_DIR = os.path.dirname(os.path.abspath(__file__))
_SOURCES = {
    "upfirdn2d": ["upfirdn2d.cpp", "upfirdn2d.cu"],
    "bias_act": ["bias_act.cpp", "bias_act.cu"],
}
_cache = {}


def build(name, build_directory=None, verbose=False):
    """Compile and load extension `name` now; raises on failure (used by bench/compile_check.py)."""
    from torch.utils.cpp_extension import load
    return load(name=f"calm_gan_{name}", sources=[os.path.join(_DIR, s) for s in _SOURCES[name]],
                extra_cflags=["-O3"], extra_cuda_cflags=["-O3"],
                build_directory=build_directory, verbose=verbose)


def load_extension(name):
    """The compiled module for `name`, or None (after one warning) when it cannot be built."""
    if name not in _cache:
        module = None
        if torch.version.cuda is None or not torch.cuda.is_available():
            pass  # nothing to build for; the reference is the implementation
        else:
            try:
                module = build(name)
            except Exception as e:  # compiler missing, CUDA headers mismatch, ...
                first = (str(e).strip().splitlines() or [type(e).__name__])[-1]
                warnings.warn(f"ops/cuda: could not build the '{name}' CUDA kernel ({first}); "
                              f"using the PyTorch reference instead", RuntimeWarning, stacklevel=3)
        _cache[name] = module
    return _cache[name]
