"""calm-gan's only shared code: resampling and activation ops, and the FID routine.

- `ops.upfirdn2d`: upsample, FIR filter, downsample (StyleGAN2's resampling op), with
  `blur`, `upsample2d`, `downsample2d` helpers.
- `ops.fused_act`: bias + leaky ReLU + gain, fused.
- `ops.fid`: Frechet Inception Distance exactly as pytorch-fid computes it.
- `resolve_device`: every script's `--device auto` (cuda, then mps, then cpu).
- `set_ops`: every script's `--ops {auto,cuda,ref}`.

Each op has a pure-PyTorch reference (used on CPU) and a CUDA kernel built on first use and
checked against the reference on first use in a process, per dtype (ops/cuda/__init__.py).
Small shared rules live here too: which files are images (`image_files`), decompression bombs as
errors (`pil_bombs_are_errors`), atomic temp files with the user's umask (`chmod_like_open`),
warnings as one line each (`readable_warnings`); a run's lock and whole-file writes: ops/runs.py.

Importing ops checks the torch version first (every numbered script imports ops): the loaders
rely on torch.load(weights_only=True), which can be bypassed to run code on torch <= 2.5.1
(CVE-2025-32434), and on torch.serialization.safe_globals, which torch < 2.5 lacks.
"""
import contextlib
import os
import re
import warnings

import torch
from PIL import Image

TORCH_MIN = (2, 6)


def check_torch_version(version=None):
    """Exit with one line naming the installed torch if it is older than TORCH_MIN."""
    version = torch.__version__ if version is None else version
    found = re.match(r"(\d+)\.(\d+)", str(version))
    if found is None or tuple(map(int, found.groups())) < TORCH_MIN:
        raise SystemExit(f"error: calm-gan needs torch >= {TORCH_MIN[0]}.{TORCH_MIN[1]} (older torch.load(weights_only="
                         f"True) can be made to run code, CVE-2025-32434); installed: torch {version}. "
                         f"pip install -r requirements.txt")


check_torch_version()

from .cuda import OPS_MODES, get_ops, set_ops  # noqa: E402  (after the version check)
from .device import resolve_device  # noqa: E402

# One image-file rule for every script and for FID, so that what D trains on is what FID reads:
# pytorch-fid's extensions in any letter case, files directly in the folder, hidden files ignored.
IMAGE_EXTENSIONS = (".bmp", ".jpg", ".jpeg", ".pgm", ".png", ".ppm", ".tif", ".tiff", ".webp")
# companions of an image folder (01_prepare_data.py's index.csv, dataset.json, ...), left out silently
DATA_COMPANIONS = (".csv", ".json", ".jsonl", ".txt", ".md", ".npz", ".npy", ".pt", ".pkl", ".log")


def current_umask():
    """The process umask (Linux: read from /proc, which leaves it untouched; elsewhere set and
    restored at once)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def chmod_like_open(fd):
    """Give a file made by tempfile.mkstemp (always 0600) the mode open() gives a new file,
    0666 & ~umask, so atomically written checkpoints, crops and images follow the user's umask."""
    os.fchmod(fd, 0o666 & ~current_umask())


@contextlib.contextmanager
def pil_bombs_are_errors():
    """Inside: PIL's DecompressionBombWarning (a header declaring more than Image.MAX_IMAGE_PIXELS
    pixels, e.g. 10000 x 10000 with five rows of data) is raised as an error, so the file counts as
    a bad file instead of being decoded into a mostly black image."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        yield


def is_image_file(name):
    """True for a file name with one of IMAGE_EXTENSIONS (any case) that is not hidden."""
    name = os.path.basename(name)
    return not name.startswith(".") and name.lower().endswith(IMAGE_EXTENSIONS)


def warn_left_out(folder, names):
    """One warning naming the files of `folder` that were not read as images (none: no warning)."""
    names = [n for n in names if not os.path.basename(n).startswith(".")
             and not n.lower().endswith(DATA_COMPANIONS)]
    if names:
        shown = ", ".join(names[:10]) + (f" and {len(names) - 10} more" if len(names) > 10 else "")
        warnings.warn(f"{folder}: {len(names)} file(s) left out, not an image extension "
                      f"({' '.join(IMAGE_EXTENSIONS)}, any case): {shown}", stacklevel=2)


def image_files(folder, exclude=()):
    """Sorted paths of the image files directly in `folder` (is_image_file); the other files,
    except data companions and names in `exclude`, are named in one warning."""
    names = sorted(n for n in os.listdir(folder) if os.path.isfile(os.path.join(folder, n)) and n not in exclude)
    warn_left_out(folder, [n for n in names if not is_image_file(n)])
    return [os.path.join(folder, n) for n in names if is_image_file(n)]


def readable_warnings(stream=None):
    """Every warning as one line, `WARNING: <text>` (the texts start with the file they are about),
    without Python's file:line and source line, each text once per process. The scripts' main()
    calls it; a test or a program that imports a script keeps Python's own display."""
    seen = set()

    def show(message, category, filename, lineno, file=None, line=None):
        text = " ".join(str(message).split())
        if text in seen:
            return
        seen.add(text)
        print(f"WARNING: {text}", file=stream or file or __import__("sys").stderr, flush=True)

    warnings.showwarning = show
    warnings.simplefilter("default")  # each (text, place) once, as Python's default, and then once here


from .fused_act import FusedLeakyReLU, fused_leaky_relu
from .upfirdn2d import blur, downsample2d, make_kernel, upfirdn2d, upsample2d

OPS_HELP = ("CUDA kernels: auto = use them after a check against the PyTorch reference on first use "
            "(default), cuda = unchecked, ref = the PyTorch reference everywhere")

__all__ = ["upfirdn2d", "make_kernel", "blur", "upsample2d", "downsample2d",
           "fused_leaky_relu", "FusedLeakyReLU", "IMAGE_EXTENSIONS", "is_image_file", "image_files",
           "check_torch_version", "resolve_device", "set_ops", "get_ops", "OPS_MODES"]
