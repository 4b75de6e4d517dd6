"""Build the native kernels now, ahead of their first use (``python -m fitting.render.native
[-v]``; the Makefile's install step runs it so that the first render does not pay for the
compilation): the visibility pass (visibility.cpp) and the fused per-pixel shading
(shade.cpp); with FLAME_FIT_NATIVE_CUDA=1 and a GPU, also the experimental CUDA kernels
(shade_cuda.cu), and with FLAME_FIT_NATIVE_CUDA=emulate their CPU emulation
(cuda_emulation.cpp). Each kernel is one compiler run, so they compile in parallel, one process
each: on 2 cores, both CPU kernels in 37 s against 55 s one after the other. Prints where they
live; exits non-zero when one cannot be built (rendering then uses the torch path for it)."""
from __future__ import annotations

import multiprocessing
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor

import torch

from fitting.render import native
from fitting.render.native import cuda, shade


def _kernels() -> dict:
    """What to build here: {name in messages: module with build()}."""
    kernels = {"visibility": native, "shading": shade}
    if cuda.emulating():
        kernels["emulated CUDA"] = cuda
    elif cuda.enabled() and torch.cuda.is_available():
        kernels["CUDA"] = cuda
    return kernels


def _build(what: str, verbose: bool) -> tuple[str | None, str | None, float]:
    """(the built library's path or None, the error or None, seconds) of one kernel."""
    t0 = time.perf_counter()
    try:
        path = _kernels()[what].build(verbose=verbose).__file__
    except RuntimeError as e:
        return None, str(e), time.perf_counter() - t0
    return path, None, time.perf_counter() - t0


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not native.enabled():
        print("native kernels disabled (FLAME_FIT_NATIVE=0); nothing built")
        return 0
    kernels = list(_kernels())
    # spawned, not forked: a fork of a process that has started torch's thread pools may hang
    with ProcessPoolExecutor(min(len(kernels), os.cpu_count() or 1),
                             mp_context=multiprocessing.get_context("spawn")) as pool:
        done = {what: pool.submit(_build, what, "-v" in argv) for what in kernels}
        rc = 0
        for what, future in done.items():
            path, error, seconds = future.result()
            if error is not None:
                print(f"{error}\nRendering will use the pure-PyTorch {what} path.", file=sys.stderr)
                rc = 1
            else:
                print(f"native {what} kernel ready in {seconds:.1f} s: {path}")
    return rc
