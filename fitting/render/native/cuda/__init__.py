"""Optional CUDA kernels of the renderer: the visibility pass, the fused per-pixel shading
chain (forward and backward), vertex normals and the silhouette, the CUDA counterparts of
visibility.cpp and shade.cpp (``shade_cuda.cu``; the per-face, per-pixel and per-outline-pair
maths are the same headers, raster.h, pixel.h and outline.h, that the CPU kernels and their
tests use).

**Experimental, off by default.** The kernels were written on machines without a GPU and
have not yet run on one. ``FLAME_FIT_NATIVE_CUDA`` selects them:

- ``1`` (or true / on / yes): CUDA tensors go through them. ``tests/render/test_native_cuda.py``
  checks them against the torch path on a GPU (identical face ids, values and gradients) and
  ``python -m bench.render --device cuda`` with the variable set measures them. Once those
  pass on a GPU, the default becomes on.
- ``emulate``: CPU tensors go through the same drivers compiled as C++ with
  ``cuda_emulation.h`` standing in for CUDA (32 lanes of a warp as 32 threads, real atomics,
  warp shuffles in lockstep): slow, for testing the drivers' indexing, reductions and glue
  without a GPU. The same tests run this way on every machine.

Built on first use with ``torch.utils.cpp_extension.load`` (CUDA: a CUDA build of torch,
nvcc and ninja; emulation: a C++ compiler and ninja), cached like the CPU kernels. A failed
build warns once and rendering keeps the torch path. The CUDA build is compiled with
``-fmad=false``: the visibility keys must round like torch's separate multiplies and adds
(see raster.h).
"""
from __future__ import annotations

import os
from pathlib import Path

import torch

from fitting.render.native.build import Kernel, enabled as native_enabled

__all__ = ["enabled", "emulating", "runs_on", "available", "build", "build_directory", "visible_faces"]

_HERE = Path(__file__).parent
_kernel = Kernel("flame_fit_cuda", [_HERE / "shade_cuda.cpp", _HERE / "shade_cuda.cu"], ["-O3"], "CUDA",
                 cuda_cflags=["-O3", "-fmad=false"], ldflags=())
# no FMA contraction (as -fmad=false): the visibility keys stay bit-identical to the torch path's
_emulated = Kernel("flame_fit_cuda_emulated", [_HERE / "shade_cuda.cpp", _HERE / "cuda_emulation.cpp"],
                   ["-O2", "-DFF_CUDA_EMULATION", "-ffp-contract=off", "-fno-fast-math", "-pthread"], "emulated CUDA", ldflags=("-pthread",))
_FACE_MASK = 0xFFFFFFFF
_ON = ("1", "true", "on", "yes")


def _flag() -> str:
    return os.environ.get("FLAME_FIT_NATIVE_CUDA", "0").strip().lower()


def enabled() -> bool:
    """True when FLAME_FIT_NATIVE_CUDA is 1 / true / on / yes or emulate (and FLAME_FIT_NATIVE
    is not off)."""
    return (_flag() in _ON or _flag() == "emulate") and native_enabled()


def emulating() -> bool:
    """True when FLAME_FIT_NATIVE_CUDA=emulate: the drivers run on CPU tensors, emulated."""
    return _flag() == "emulate" and native_enabled()


def runs_on(device: torch.device) -> bool:
    """Whether tensors on ``device`` go through these kernels when available: CUDA tensors
    when enabled, CPU tensors (and no others) when emulating."""
    return enabled() and torch.device(device).type == ("cpu" if emulating() else "cuda")


def _selected() -> Kernel:
    return _emulated if emulating() else _kernel


def build(verbose: bool = False):
    """Build (or load from the cache) the selected extension, CUDA or emulated, and return it."""
    return _selected().build(verbose)


def build_directory() -> Path:
    """Where the selected extension is built and cached."""
    return _selected().directory()


def available() -> bool:
    """True when the kernels are enabled, can run here (a GPU, unless emulating) and are built
    (building them now if needed; a failed build warns once and returns False)."""
    if not enabled():
        return False
    if emulating():
        return _emulated.available()
    return torch.cuda.is_available() and _kernel.available()


def module():
    """The loaded extension, CUDA or emulated (call :func:`available` first)."""
    return _selected().module


@torch.no_grad()
def visible_faces(Xc: torch.Tensor, faces: torch.Tensor, K: torch.Tensor, H: int, W: int, near: float,
                  cull_backfaces: bool):
    """CUDA visibility pass, or None when it does not apply (not enabled or built, not on
    :func:`runs_on`'s device, not float32, near <= 0, non-finite input): the caller then uses
    the torch path.

    Xc: (B, V, 3) camera frame; faces: (F, 3) integer; K: (B, 3, 3), all on one GPU (CPU when
    emulating).
    Returns (pix (N,), face (N,)) int64, as :func:`fitting.render.rasterize.visible_faces`
    (two host syncs: the input check and the count of covered pixels)."""
    if (not runs_on(Xc.device) or Xc.dtype != torch.float32 or K.dtype != torch.float32
            or not near > 0 or not available()):
        return None
    finite, in_front = torch.stack([torch.isfinite(Xc).all() & torch.isfinite(K).all(),
                                    Xc[..., 2].min() >= near]).tolist()
    if not finite:
        return None
    zbuf = module().raster(Xc.contiguous(), faces.long().contiguous(), K.contiguous(), int(H), int(W), float(near),
                           bool(cull_backfaces), bool(in_front))
    pix = zbuf.nonzero()[:, 0]
    face = 0x7FFFFFFF - (zbuf.index_select(0, pix) & _FACE_MASK)
    return pix, face
