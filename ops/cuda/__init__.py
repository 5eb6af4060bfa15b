"""Lazy JIT build of calm-gan's CUDA kernels (upfirdn2d.cu, bias_act.cu, with their .cpp bindings),
and the gate that decides, per process, whether they are used at all.

Nothing is compiled at import: `load_extension(name)` builds `name` with
torch.utils.cpp_extension.load the first time a CUDA tensor needs it (cached by torch under
TORCH_EXTENSIONS_DIR, so later runs only load the .so). If CUDA is missing or the build fails, it
warns once and returns None, and the callers use the PyTorch reference from then on.

`kernel(name, x)` is what the ops call: the compiled module for tensor x, or None for the reference.
The process-wide mode (`set_ops`, the scripts' `--ops` flag) decides:
- "auto" (default): on first use in a process (per dtype: fp32, bf16, fp16) each kernel is compared
  with its PyTorch reference on a small random input, forward and gradient (the check each op module
  registers with `register_self_check`). If they differ beyond tolerance: one warning, and the
  reference is used for the rest of the run. A kernel that is wrong never trains silently.
- "cuda": the kernels without the check (benchmarks); "ref": the PyTorch references everywhere.
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


# ----------------------------------------------------------------------------------------------
# Which implementation runs: --ops {auto,cuda,ref} and the self-check on first use

OPS_MODES = ("auto", "cuda", "ref")
KERNEL_DEVICES = {"cuda"}  # tensors on these device types may use a compiled kernel
_mode = "auto"
_checks = {}   # name -> fn(ext, device, dtype) -> None if the kernel agrees with the reference, else a reason
_verdict = {}  # "name/dtype" -> True (kernel checked and used) / False (differs: reference from now on)


def set_ops(mode):
    """Process-wide: 'auto' (kernels, each checked against its reference on first use), 'cuda'
    (kernels, unchecked) or 'ref' (the PyTorch references everywhere)."""
    global _mode
    if mode not in OPS_MODES:
        raise ValueError(f"ops mode must be one of {', '.join(OPS_MODES)}, got {mode!r}")
    _mode = mode


def get_ops():
    return _mode


def register_self_check(name, fn):
    """fn(ext, device, dtype) compares kernel `name` (module ext) with the reference on `device`."""
    _checks[name] = fn


def kernel(name, x):
    """The compiled module to use for tensor x, or None: use the PyTorch reference."""
    if _mode == "ref" or x.device.type not in KERNEL_DEVICES:
        return None
    ext = load_extension(name)
    if ext is None or _mode == "cuda" or name not in _checks:
        return ext
    key = f"{name}/{str(x.dtype).replace('torch.', '')}"
    if key not in _verdict:
        _verdict[key] = True  # the check itself runs the kernel
        try:  # first use may come under no_grad, inference_mode or autocast: the check needs none
            with torch.inference_mode(False), torch.enable_grad(), \
                    torch.autocast(x.device.type, enabled=False):
                problem = _checks[name](ext, x.device, x.dtype)
        except Exception as e:  # a kernel that crashes is as wrong as one that miscomputes
            problem = f"{type(e).__name__}: {(str(e).strip().splitlines() or [''])[0]}"
        if problem is not None:
            _verdict[key] = False
            warnings.warn(f"ops: the '{name}' CUDA kernel differs from its PyTorch reference in {x.dtype} "
                          f"({problem}); using the reference for the rest of this run", RuntimeWarning,
                          stacklevel=3)
    return ext if _verdict[key] else None


def self_check_results():
    """{"name/dtype": True/False} for the kernels checked so far in this process."""
    return dict(_verdict)


def compare(dtype, got, want):
    """None if each kernel result (in `dtype`) matches its float64 reference, else a reason.

    The inputs are the same dtype-rounded values on both sides, so the kernel may differ only by
    rounding: each result sums at most a few dozen products, each rounded by at most eps(dtype), so
    |got - want| <= 16 eps max|want| (fp32 at least 1e-5 of it; a real bug, such as a flipped filter
    or a wrong pad, is off by the size of the values themselves)."""
    tol = max(16 * torch.finfo(dtype).eps, 1e-5)
    for label, a, b in zip(("output", "gradient", "bias gradient"), got, want):
        a, b = a.detach().cpu().double(), b.detach().cpu().double()
        if a.shape != b.shape:
            return f"{label} shape {tuple(a.shape)}, reference {tuple(b.shape)}"
        scale = max(b.abs().max().item(), 1.0)
        if not torch.isfinite(a).all() or (a - b).abs().max().item() > tol * scale:
            return f"{label}: max abs difference {(a - b).abs().max().item():.3g} (allowed {tol * scale:.2g})"
    return None
