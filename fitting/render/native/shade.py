"""Optional compiled kernels for the renderer's per-pixel shading chain and silhouette.

``shade.cpp`` (CPU; and ``cuda/shade_cuda.cu``, experimental, where
:func:`fitting.render.native.experimental_cuda` opts in) fuse what ``fitting.render.renderer``
does per covered pixel after the visibility pass (perspective-correct barycentrics and depth,
interpolated unit normals, texture / vertex-colour albedo, 9-term SH shading, colour =
albedo * shading) into one forward pass and one hand-written backward pass, float32 or float64, parallel over views
(``at::parallel_for``, torch's thread count); likewise vertex normals and the silhouette's
outline antialiasing (:func:`silhouette`, maths in ``outline.h``). It is built on first use with
``torch.utils.cpp_extension.load`` (a C++ compiler and the ``ninja`` package; ~30-60 s,
cached in :func:`build_directory`). When the build fails, :func:`available` warns once and
returns False and the renderer keeps its torch path. ``FLAME_FIT_NATIVE=0`` disables it.
"""
from __future__ import annotations

from pathlib import Path

import torch

from fitting.render.native import experimental_cuda
from fitting.render.native.build import Kernel, enabled
from fitting.render.shading import SH_CONSTANTS

__all__ = ["enabled", "available", "available_on", "build", "build_directory", "supports", "shade_pixels", "dense_image",
           "vertex_normals", "silhouette", "MAX_CHANNELS"]

_SOURCE = Path(__file__).with_name("shade.cpp")
_NAME = "flame_fit_shade"
# -fopenmp: torch's at::parallel_for is inline OpenMP code; without it the kernel runs serially.
# -fno-math-errno: sqrt as one instruction (no errno path); no other fast-math.
_CFLAGS = ["-O3", "-fno-math-errno", "-fopenmp"]
MAX_CHANNELS = 4            # shade.cpp kMaxC
_ALBEDO_NONE, _ALBEDO_TEXTURE, _ALBEDO_VERTEX = 0, 1, 2

_kernel = Kernel(_NAME, _SOURCE, _CFLAGS, "shading")
build_directory, build, available = _kernel.directory, _kernel.build, _kernel.available


def _module(t: torch.Tensor):
    """The loaded extension for t's device: the CPU kernel, or the experimental CUDA one
    where experimental_cuda opts in."""
    cuda = experimental_cuda(t.device)
    return _kernel.module if cuda is None else cuda.module()


def available_on(device: torch.device) -> bool:
    """Whether the compiled chain can run on this device: the CPU kernel, or the experimental
    CUDA kernels where experimental_cuda opts in (building it now if needed; a failed build
    warns once)."""
    cuda = experimental_cuda(device)
    if cuda is not None:
        return cuda.available()
    return device.type == "cpu" and available()


def _load(device: torch.device) -> None:
    """Raise unless the kernel for this device can be used (building it if needed)."""
    if available_on(device):
        return
    cuda = experimental_cuda(device)
    if cuda is not None and cuda.emulating():
        raise RuntimeError("the emulated CUDA kernels are not available (their build failed: see the warning)")
    if device.type == "cuda":
        raise RuntimeError("the native CUDA kernels are not available (they need FLAME_FIT_NATIVE_CUDA=1, "
                           "a GPU and a successful build)")
    raise RuntimeError("the native shading kernel is not available (FLAME_FIT_NATIVE=0 or the build failed)")


def supports(verts: torch.Tensor, texture: torch.Tensor | None, vertex_colors: torch.Tensor | None,
             sh: torch.Tensor | None) -> bool:
    """Whether :func:`shade_pixels` handles these renderer inputs (all on the CPU, or all on
    one GPU when the CUDA kernels are enabled; float32 / float64, at most MAX_CHANNELS colour
    channels, albedo and SH with equal channel counts), without building anything."""
    tensors = [x for x in (verts, texture, vertex_colors, sh) if x is not None]
    device = verts.device
    if device.type != "cpu" and experimental_cuda(device) is None:
        return False
    if any(x.device != device for x in tensors) or verts.dtype not in (torch.float32, torch.float64):
        return False
    C = texture.shape[1] if texture is not None else vertex_colors.shape[-1] if vertex_colors is not None else 3
    return 1 <= C <= MAX_CHANNELS and (sh is None or sh.shape[-1] == C)


class _Shade(torch.autograd.Function):
    """Autograd wrapper; every output is differentiable (a gradient of an unused output
    arrives as None and costs nothing)."""

    @staticmethod
    def forward(ctx, Xc, vn, src, sh, Kinv, pix, view, face, faces, vt, ft, H, W, mode, C):
        outs = _module(Xc).forward(Xc, vn, Kinv, pix, view, face, faces, H, W, mode, src, vt, ft, sh, C, list(SH_CONSTANTS))
        ctx.save_for_backward(Xc, vn, src, sh, Kinv, pix, view, face, faces, vt, ft)
        ctx.args = (H, W, mode, C)
        ctx.set_materialize_grads(False)
        return tuple(outs)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, *grads):
        Xc, vn, src, sh, Kinv, pix, view, face, faces, vt, ft = ctx.saved_tensors
        H, W, mode, C = ctx.args
        empty = Xc.new_empty(0)
        g = [empty if x is None else x.contiguous().to(Xc.dtype) for x in grads]
        need = list(ctx.needs_input_grad[:5])
        gXc, gvn, gsrc, gsh, gKinv = _module(Xc).backward(Xc, vn, Kinv, pix, view, face, faces, H, W, mode, src, vt,
                                                          ft, sh, C, list(SH_CONSTANTS), g, need)
        return (gXc, gvn, gsrc, gsh, gKinv) + (None,) * 10


class _VertexNormals(torch.autograd.Function):
    @staticmethod
    def forward(ctx, verts, faces, eps):
        unit, raw = _module(verts).vnormals_forward(verts, faces, eps)
        ctx.save_for_backward(verts, faces, raw)
        ctx.eps = eps
        return unit

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        verts, faces, raw = ctx.saved_tensors
        return _module(verts).vnormals_backward(verts, faces, raw, grad.contiguous(), ctx.eps), None, None


def vertex_normals(verts: torch.Tensor, faces: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """shading.vertex_normals compiled: verts (B, V, 3) float32 / float64 (CPU, or CUDA with
    the CUDA kernels), faces (F, 3) on the same device -> area-weighted unit vertex normals
    (B, V, 3), differentiable w.r.t. verts."""
    _load(verts.device)
    return _VertexNormals.apply(verts.contiguous(), faces.long().contiguous(), float(eps))


class _Outline(torch.autograd.Function):
    @staticmethod
    def forward(ctx, Xc, Kinv, faces, face, H, W):
        sil, raw = _module(Xc).outline_forward(Xc, faces, Kinv, face, H, W)
        ctx.save_for_backward(Xc, Kinv, faces, face, raw)
        ctx.size = (H, W)
        ctx.mark_non_differentiable(raw)
        return sil, raw

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad, _):
        Xc, Kinv, faces, face, raw = ctx.saved_tensors
        if grad is None:
            return (None,) * 6
        gX, gK = _module(Xc).outline_backward(Xc, faces, Kinv, face, *ctx.size, raw, grad.contiguous().to(Xc.dtype),
                                              ctx.needs_input_grad[0], ctx.needs_input_grad[1])
        return gX, gK, None, None, None, None


def silhouette(Xc: torch.Tensor, faces: torch.Tensor, Kinv: torch.Tensor, face_idx: torch.Tensor) -> torch.Tensor:
    """silhouette.silhouette's antialiased coverage, compiled (outline.h): same values to float
    rounding, differentiable w.r.t. Xc and Kinv.

    Xc: (B, V, 3) camera frame, float32 / float64; faces: (F, 3); Kinv: (B, 3, 3)
    pinhole_inverse(K); face_idx: (B, H, W) hard-raster face per pixel (-1 background), all on
    one device (CPU; CUDA with the CUDA kernels). Returns (B, 1, H, W) in [0, 1]."""
    _load(Xc.device)
    B, H, W = face_idx.shape
    sil, _ = _Outline.apply(Xc.contiguous(), Kinv.to(Xc.dtype).reshape(-1, 9).contiguous(), faces.long().contiguous(),
                            face_idx.reshape(-1).long().contiguous(), int(H), int(W))
    return sil.view(B, 1, H, W)


class _ScatterImage(torch.autograd.Function):
    @staticmethod
    def forward(ctx, values, pix, B, H, W):
        ctx.save_for_backward(pix)
        return _kernel.module.scatter_image(values, pix, B, H, W)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        (pix,) = ctx.saved_tensors
        return _kernel.module.gather_image(grad, pix), None, None, None, None


def dense_image(values: torch.Tensor, pix: torch.Tensor, shape: tuple[int, int, int]) -> torch.Tensor:
    """values (N, C) at the flat pixels pix (N,) (b*H*W + y*W + x, distinct) -> a zero
    (B, C, H, W) image with them, contiguous; differentiable w.r.t. values. Same result as
    renderer._dense in one pass (no channels-last buffer to permute)."""
    B, H, W = shape
    if experimental_cuda(values.device) is not None:    # the CUDA kernels have no image scatter
        flat = values.new_zeros(B * H * W, values.shape[-1]).index_copy(0, pix, values)
        return flat.view(B, H, W, -1).permute(0, 3, 1, 2)
    if _kernel.load() is None:
        raise RuntimeError("the native shading kernel is not available (FLAME_FIT_NATIVE=0 or the build failed)")
    return _ScatterImage.apply(values.contiguous(), pix.contiguous(), int(B), int(H), int(W))


def shade_pixels(Xc: torch.Tensor, vn: torch.Tensor, Kinv: torch.Tensor, pix: torch.Tensor, view: torch.Tensor,
                 face: torch.Tensor, faces: torch.Tensor, image_size: tuple[int, int], *,
                 texture: torch.Tensor | None = None, verts_uvs: torch.Tensor | None = None,
                 faces_uvs: torch.Tensor | None = None, vertex_colors: torch.Tensor | None = None,
                 sh: torch.Tensor | None = None):
    """The renderer's per-pixel chain, fused: same values as rasterize._barycentrics followed
    by renderer._shade_pixels, and colour = albedo * shading.

    Xc: (B, V, 3) camera frame; vn: (B, V, 3) world vertex normals (shading.vertex_normals);
    Kinv: (B, 3, 3) pinhole_inverse(K); pix, view, face: (N,) int64
    covered pixels sorted by view (pix = b*H*W + y*W + x, centre at (x + 0.5, y + 0.5));
    faces: (F, 3); image_size: (H, W). Albedo: texture (1 or B, C, Ht, Wt) with verts_uvs
    (T, 2) and faces_uvs (F, 3) (OBJ UVs, bilinear, border clamp), else vertex_colors
    (B, V, C) (an expanded (1, V, C) counts as shared), else 1 (C = 3); sh: (B, 9, C) or
    None (shading 1). Check :func:`supports` and :func:`available` first.

    Returns colour, bary (N, 3), depth (N,), unit normals (N, 3), albedo, shading, the
    colour-like ones (N, C); all differentiable w.r.t. Xc, vn, Kinv, texture / vertex_colors, sh.
    """
    _load(Xc.device)
    dt = Xc.dtype
    empty = Xc.new_empty(0)
    if texture is not None:
        if verts_uvs is None or faces_uvs is None:
            raise ValueError("a texture needs verts_uvs and faces_uvs")
        mode, C = _ALBEDO_TEXTURE, texture.shape[1]
        src = texture.to(dt).permute(0, 2, 3, 1).contiguous()           # channels-last: one texel = C values
        vt, ft = verts_uvs.to(dt).contiguous(), faces_uvs.long().contiguous()
    else:
        vt = empty
        ft = torch.empty(0, dtype=torch.long, device=Xc.device)
        if vertex_colors is not None:
            mode, C = _ALBEDO_VERTEX, vertex_colors.shape[-1]
            if vertex_colors.dim() == 2:
                vertex_colors = vertex_colors[None]
            if vertex_colors.stride(0) == 0:                          # expanded: one table for all views
                vertex_colors = vertex_colors[:1]
            src = vertex_colors.to(dt).contiguous()
        else:
            mode, C, src = _ALBEDO_NONE, 3, empty
    sh_t = empty if sh is None else sh.to(dt).contiguous()
    H, W = image_size
    return _Shade.apply(Xc.contiguous(), vn.to(dt).contiguous(), src, sh_t,
                        Kinv.to(dt).reshape(-1, 9).contiguous(), pix.contiguous(), view.contiguous(),
                        face.contiguous(), faces.long().contiguous(), vt, ft, int(H), int(W), mode, int(C))
