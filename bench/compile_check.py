"""Compile and link calm-gan's CUDA kernels (ops/cuda/) without needing a GPU.

Run (no GPU needed, a CUDA toolkit is; about 1.5 min per extension on 2 cores):
    CUDA_HOME=/usr/local/cuda TORCH_CUDA_ARCH_LIST=9.0 python bench/compile_check.py
    python bench/compile_check.py --only bias_act --keep build/ext

Each extension is built with torch.utils.cpp_extension.load (the same call ops/ makes on first CUDA
use) into a fresh directory, so it really compiles, and the resulting module is imported and its
functions listed. Exit status 0 when every extension built. Not part of the test suite.
"""
import argparse
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

from ops.cuda import _SOURCES, build  # noqa: E402


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=sorted(_SOURCES), help="build just this extension")
    parser.add_argument("--keep", metavar="DIR", help="build under DIR (kept) instead of a temp dir")
    parser.add_argument("--verbose", action="store_true", help="show the compiler commands")
    args = parser.parse_args(argv)

    print(f"torch {torch.__version__}, CUDA {torch.version.cuda}, "
          f"CUDA_HOME={os.environ.get('CUDA_HOME')}, "
          f"TORCH_CUDA_ARCH_LIST={os.environ.get('TORCH_CUDA_ARCH_LIST')}")
    failed = []
    for name in [args.only] if args.only else sorted(_SOURCES):
        root = args.keep or tempfile.mkdtemp(prefix=f"calm_gan_{name}_")
        directory = os.path.join(root, name)
        os.makedirs(directory, exist_ok=True)
        t0 = time.time()
        try:
            module = build(name, build_directory=directory, verbose=args.verbose)
        except Exception as e:  # report and go on with the next extension
            print(f"[FAIL] {name} after {time.time() - t0:.0f} s: {e}")
            failed.append(name)
            continue
        functions = sorted(f for f in dir(module) if not f.startswith("_"))
        print(f"[ OK ] {name}: compiled and linked in {time.time() - t0:.0f} s "
              f"({directory}), functions {functions}")
    print("compile check:", "FAILED " + ", ".join(failed) if failed else "all extensions built")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
