"""Optional CUDA kernels of the renderer: the visibility pass, the fused per-pixel shading
chain (forward and backward) and vertex normals, the CUDA counterparts of visibility.cpp and
shade.cpp (``shade_cuda.cu``; the per-face and per-pixel maths are the same headers,
raster.h and pixel.h, that the CPU kernels and their tests use).

**Experimental, off by default.** The kernels were written and compiled (nvcc 13.0,
sm_90) on a machine without a GPU; they have not yet run. ``FLAME_FIT_NATIVE_CUDA=1`` turns
them on; ``tests/render/test_native_cuda.py`` checks them against the torch path on a GPU
(identical face ids, values and gradients) and ``python -m bench.render --device cuda`` with
the variable set measures them. Once those pass on a GPU, the default becomes on.

Built on first use with ``torch.utils.cpp_extension.load`` (needs a CUDA build of torch,
nvcc and ninja), cached like the CPU kernels. A failed build warns once and rendering keeps
the torch path. The whole extension is compiled with ``-fmad=false``: the visibility keys
must round like torch's separate multiplies and adds (see raster.h).
"""
from __future__ import annotations

import os
from pathlib import Path

import torch

from fitting.render.native import Kernel, enabled as native_enabled

__all__ = ["enabled", "available", "build", "build_directory", "visible_faces"]

_HERE = Path(__file__).parent
_kernel = Kernel("flame_fit_cuda", [_HERE / "shade_cuda.cpp", _HERE / "shade_cuda.cu"], ["-O3"], "CUDA",
                 cuda_cflags=["-O3", "-fmad=false"], ldflags=())
build_directory, build = _kernel.directory, _kernel.build
_FACE_MASK = 0xFFFFFFFF


def enabled() -> bool:
    """True when FLAME_FIT_NATIVE_CUDA is 1 / true / on / yes (and FLAME_FIT_NATIVE is not off)."""
    flag = os.environ.get("FLAME_FIT_NATIVE_CUDA", "0").strip().lower() in ("1", "true", "on", "yes")
    return flag and native_enabled()


def available() -> bool:
    """True when the CUDA kernels are enabled, a GPU is present and the extension is built
    (building it now if needed; a failed build warns once and returns False)."""
    return enabled() and torch.cuda.is_available() and _kernel.available()


def module():
    """The loaded extension (call :func:`available` first)."""
    return _kernel.module


@torch.no_grad()
def visible_faces(Xc: torch.Tensor, faces: torch.Tensor, K: torch.Tensor, H: int, W: int, near: float,
                  cull_backfaces: bool):
    """CUDA visibility pass, or None when it does not apply (not enabled or built, not CUDA
    float32, near <= 0, non-finite input): the caller then uses the torch path.

    Xc: (B, V, 3) camera frame; faces: (F, 3) integer; K: (B, 3, 3), all on one GPU.
    Returns (pix (N,), face (N,)) int64, as :func:`fitting.render.rasterize.visible_faces`
    (two host syncs: the input check and the count of covered pixels)."""
    if (Xc.device.type != "cuda" or Xc.dtype != torch.float32 or K.dtype != torch.float32
            or not near > 0 or not available()):
        return None
    finite, in_front = torch.stack([torch.isfinite(Xc).all() & torch.isfinite(K).all(),
                                    Xc[..., 2].min() >= near]).tolist()
    if not finite:
        return None
    zbuf = _kernel.module.raster(Xc.contiguous(), faces.long().contiguous(), K.contiguous(), int(H), int(W),
                                 float(near), bool(cull_backfaces), bool(in_front))
    pix = zbuf.nonzero()[:, 0]
    face = 0x7FFFFFFF - (zbuf.index_select(0, pix) & _FACE_MASK)
    return pix, face
