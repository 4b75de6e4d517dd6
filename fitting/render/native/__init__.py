"""Compiled kernels of the renderer (C++ torch extensions, built on first use; see
:mod:`.build`). This module is the CPU visibility pass; :mod:`.shade` is the fused per-pixel
chain, vertex normals, silhouette and image scatter. The maths the kernels share lives in
headers beside them: ``raster.h`` (per face), ``pixel.h`` (per pixel), ``outline.h`` (per
outline pair). :mod:`.cuda` holds the experimental CUDA versions, off unless
``FLAME_FIT_NATIVE_CUDA`` opts in: :func:`experimental_cuda` is the one place that asks.

``visibility.cpp`` returns the same (pix, face) as the torch path of
:func:`fitting.render.rasterize.visible_faces`, bit for bit: every float32 operation mirrors
one torch operation, in the same order, compiled without FMA contraction
(``-ffp-contract=off``) or fast-math. It is parallel over views (``at::parallel_for``,
torch's thread count). Build it ahead of time with ``python -m fitting.render.native``.

When a build fails the renderer warns once and keeps the torch path; it never fails because
of this package. ``FLAME_FIT_NATIVE=0`` disables it.
"""
from __future__ import annotations

from pathlib import Path

import torch

from fitting.render.native.build import (_LDFLAGS, Kernel, _missing, cache_root, compile_extension,  # noqa: F401
                                         enabled, kernel_directory, warn_fallback)

__all__ = ["available", "build", "visible_faces", "build_directory", "cache_root", "kernel_directory", "enabled",
           "compile_extension", "warn_fallback", "Kernel", "experimental_cuda"]

_SOURCE = Path(__file__).with_name("visibility.cpp")
_NAME = "flame_fit_visibility"
# no FMA contraction and no fast-math: the kernel must round like torch's separate ops
_CFLAGS = ["-O3", "-ffp-contract=off", "-fno-fast-math", "-fopenmp"]


def experimental_cuda(device: torch.device):
    """The experimental CUDA kernels (:mod:`fitting.render.native.cuda`) where
    ``FLAME_FIT_NATIVE_CUDA`` opts in and they serve tensors on ``device`` (CUDA tensors, or
    CPU tensors when emulating), else None: then the CPU kernels or the PyTorch path run."""
    from fitting.render.native import cuda
    return cuda if cuda.runs_on(device) else None


_kernel = Kernel(_NAME, _SOURCE, _CFLAGS, "visibility pass")
# the module's API: where it is cached, build it now, and whether it can be used
build_directory, build, available = _kernel.directory, _kernel.build, _kernel.available


def visible_faces(Xc: torch.Tensor, faces: torch.Tensor, K: torch.Tensor, H: int, W: int, near: float,
                  cull_backfaces: bool):
    """Native visibility pass, or None when it does not apply (not built, disabled, not
    CPU float32, near <= 0, non-finite input): the caller then uses the torch path.

    Xc: (B, V, 3) camera frame; faces: (F, 3) integer; K: (B, 3, 3).
    Returns (pix (N,), face (N,)) int64, as :func:`fitting.render.rasterize.visible_faces`.
    Where :func:`experimental_cuda` opts in for Xc's device, the CUDA kernel answers instead."""
    cuda = experimental_cuda(Xc.device)
    if cuda is not None:
        return cuda.visible_faces(Xc, faces, K, H, W, near, cull_backfaces)
    if (Xc.device.type != "cpu" or Xc.dtype != torch.float32 or K.dtype != torch.float32
            or not near > 0 or faces.device.type != "cpu"):
        return None
    mod = _kernel.load()
    if mod is None:
        return None
    pix, face, ok = mod.visible_faces(Xc.contiguous(), faces.long().contiguous(), K.contiguous(),
                                      int(H), int(W), float(near), bool(cull_backfaces))
    return (pix, face) if ok else None
