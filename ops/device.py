"""`--device` for every script: `auto` (the default) picks cuda, then mps (Apple silicon), then cpu.

    resolve_device("auto")   -> torch.device("cuda") / ("mps") / ("cpu"), the first that works here
    resolve_device("cuda:1") -> torch.device("cuda:1"), if this machine has CUDA

A name this machine cannot use ends the command with one line naming the flag and the reason
(SystemExit), as the scripts' other flag errors do. MPS has no float64: code that may run there
keeps float64 on the CPU (tests/test_device.py checks every script's device path for that).
"""
import torch


def mps_available():
    mps = getattr(torch.backends, "mps", None)
    return bool(mps is not None and mps.is_available())


def resolve_device(flag="auto"):
    """--device value (None or 'auto', 'cpu', 'cuda', 'cuda:1', 'mps', a torch.device) -> torch.device."""
    if flag is None or flag == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if mps_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(flag)
    except (RuntimeError, TypeError):
        raise SystemExit(f"error: --device {flag}: not a device name (auto, cpu, cuda, cuda:1, mps)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit(f"error: --device {flag}: CUDA is not available on this machine")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise SystemExit(f"error: --device {flag}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    if device.type == "mps" and not mps_available():
        raise SystemExit(f"error: --device {flag}: MPS (Apple silicon) is not available on this machine")
    if device.type not in ("cpu", "cuda", "mps"):
        raise SystemExit(f"error: --device {flag}: calm-gan runs on cpu, cuda or mps")
    return device


DEVICE_HELP = "auto (default: cuda, then mps, then cpu), cpu, cuda, cuda:N or mps"
