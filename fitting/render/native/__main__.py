"""python -m fitting.render.native [-v]: build the native CPU kernels now (the Makefile's
install step calls it so the first render does not pay for the compilation): the visibility
pass (visibility.cpp) and the fused per-pixel shading (shade.cpp); with
FLAME_FIT_NATIVE_CUDA=1 and a GPU, also the experimental CUDA kernels (shade_cuda.cu), and with
FLAME_FIT_NATIVE_CUDA=emulate their CPU emulation (cuda_emulation.cpp). Prints
where they live and exits non-zero when one cannot be built (rendering then uses the torch
path for it)."""
from __future__ import annotations

import sys
import time

import torch

from fitting.render import native
from fitting.render.native import cuda, shade


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not native.enabled():
        print("native kernels disabled (FLAME_FIT_NATIVE=0); nothing built")
        return 0
    rc = 0
    kernels = [("visibility", native), ("shading", shade)]
    if cuda.emulating():
        kernels.append(("emulated CUDA", cuda))
    elif cuda.enabled() and torch.cuda.is_available():
        kernels.append(("CUDA", cuda))
    for what, mod in kernels:
        t0 = time.perf_counter()
        try:
            ext = mod.build(verbose="-v" in argv)
        except RuntimeError as e:
            print(f"{e}\nRendering will use the pure-PyTorch {what} path.", file=sys.stderr)
            rc = 1
            continue
        print(f"native {what} kernel ready in {time.perf_counter() - t0:.1f} s: {ext.__file__}")
    return rc


if __name__ == "__main__":
    sys.exit(main())
