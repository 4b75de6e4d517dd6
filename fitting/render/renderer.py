"""MeshRenderer: rasterize -> interpolate -> texture / vertex colours -> SH shading.

All per-pixel work runs on the covered pixels only (PackedFragments) and is scattered into
dense images at the end, so its cost scales with the head's area, not the frame's. The
secondary outputs (albedo, shading, normals, fragments) are made dense on first access.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property

import torch
import torch.nn.functional as F

from fitting.render.interpolate import check_attrs as _check_attrs
from fitting.render.interpolate import interpolate_barycentric
from fitting.render.cameras import check_cameras, pinhole_inverse, world_to_camera
from fitting.render.native import cuda as native_cuda
from fitting.render.rasterize import (Fragments, PackedFragments, RasterSettings, _check_mesh, rasterize_packed,
                                      visible_faces)
from fitting.render.shading import sh_basis, vertex_normals
from fitting.render.silhouette import silhouette_static
from fitting.render.texture import uv_to_grid

__all__ = ["MeshRenderer", "RenderOutput", "sample_texture_packed", "per_view_matmul", "view_packing",
           "packed_matmul"]


def _dense(values: torch.Tensor, pf: PackedFragments) -> torch.Tensor:
    """Scatter (N, C) values at the fragments' pixels into a zero (B, C, H, W) image."""
    B, H, W = pf.shape
    return pf.scatter(values).view(B, H, W, -1).permute(0, 3, 1, 2)


@dataclass
class RenderOutput:
    """image: (B,3,H,W) albedo * shading, black background; alpha: (B,1,H,W) hard coverage;
    silhouette: (B,1,H,W) antialiased, differentiable at the outline; packed: the covered
    pixels (PackedFragments). Computed on first access (then cached): albedo, shading,
    normals (world, unit): (B,3,H,W), zero at background; fragments: dense Fragments.
    needed: static mode only (else None), (3,) int64 tiles, pixels and outline pairs this
    call needed; after a CUDA graph replay, any above the RasterSettings' static sizes
    means that work was dropped and the result is wrong."""
    image: torch.Tensor
    alpha: torch.Tensor
    silhouette: torch.Tensor
    packed: PackedFragments
    face_idx: torch.Tensor = field(repr=False)
    packed_albedo: torch.Tensor = field(repr=False)
    packed_shading: torch.Tensor = field(repr=False)
    packed_normals: torch.Tensor = field(repr=False)
    needed: torch.Tensor | None = None

    @cached_property
    def albedo(self) -> torch.Tensor:
        return _dense(self.packed_albedo, self.packed)

    @cached_property
    def shading(self) -> torch.Tensor:
        return _dense(self.packed_shading, self.packed)

    @cached_property
    def normals(self) -> torch.Tensor:
        return _dense(self.packed_normals, self.packed)

    @cached_property
    def fragments(self) -> Fragments:
        pf = self.packed
        B, H, W = pf.shape
        bary = pf.scatter(pf.bary).view(B, H, W, 3)
        depth = pf.scatter(pf.depth[:, None]).view(B, H, W)
        return Fragments(self.face_idx, bary, depth)     # the face map is already dense


def sample_texture_packed(texture: torch.Tensor, uv: torch.Tensor, view: torch.Tensor) -> torch.Tensor:
    """Bilinear lookup at scattered points. texture: (1 or B, C, Ht, Wt); uv: (N, 2) OBJ
    convention; view: (N,) view of each point -> (N, C). Same sampling as sample_texture."""
    grid = uv_to_grid(uv).to(texture.dtype)
    if texture.shape[0] == 1:
        out = F.grid_sample(texture, grid[None, None], mode="bilinear", padding_mode="border",
                            align_corners=False)                    # (1, C, 1, N)
        return out[0, :, 0].t()
    # one texture per view: bilinear weights by hand (grid_sample needs equal counts per view)
    Bt, C, Ht, Wt = texture.shape
    x = ((grid[:, 0] + 1) * Wt - 1) / 2                             # texel-centre coordinates
    y = ((grid[:, 1] + 1) * Ht - 1) / 2
    x = x.clamp(0, Wt - 1)
    y = y.clamp(0, Ht - 1)
    x0 = x.detach().floor().clamp(max=Wt - 2 if Wt > 1 else 0)
    y0 = y.detach().floor().clamp(max=Ht - 2 if Ht > 1 else 0)
    fx, fy = (x - x0)[:, None], (y - y0)[:, None]
    x0, y0 = x0.long(), y0.long()
    x1, y1 = (x0 + 1).clamp(max=Wt - 1), (y0 + 1).clamp(max=Ht - 1)
    flat = texture.permute(0, 2, 3, 1).reshape(-1, C)
    base = view * (Ht * Wt)

    def at(yy, xx):
        return flat.index_select(0, base + yy * Wt + xx)

    return ((1 - fy) * ((1 - fx) * at(y0, x0) + fx * at(y0, x1))
            + fy * ((1 - fx) * at(y1, x0) + fx * at(y1, x1)))


def view_packing(view: torch.Tensor, B: int) -> tuple[torch.Tensor, int]:
    """Slots of rows grouped by view in a zero-padded (B, m) layout (see packed_matmul).

    view: (N,) sorted -> slot (N,) int64 into B*m, and m (the largest count)."""
    counts = torch.bincount(view, minlength=B)
    starts = counts.cumsum(0) - counts
    m = int(counts.max()) if view.numel() else 0
    slot = torch.arange(view.shape[0], device=view.device) - starts.index_select(0, view) + view * m
    return slot, m


def packed_matmul(x: torch.Tensor, slot: torch.Tensor, m: int, mats: torch.Tensor) -> torch.Tensor:
    """Row-wise ``x[n] @ mats[view[n]]`` with (slot, m) = view_packing(view, B).

    x: (N, K); mats: (B, K, C) -> (N, C). One zero-padded bmm: far cheaper (forward and
    backward) than gathering a (K, C) matrix per row."""
    B = mats.shape[0]
    padded = x.new_zeros(B * m, x.shape[1]).index_copy(0, slot, x).view(B, m, x.shape[1])
    return torch.bmm(padded, mats.to(x.dtype)).view(B * m, mats.shape[-1]).index_select(0, slot)


def per_view_matmul(x: torch.Tensor, view: torch.Tensor, mats: torch.Tensor) -> torch.Tensor:
    """Row-wise ``x[n] @ mats[view[n]]``. x: (N, K); view: (N,) sorted; mats: (B, K, C) -> (N, C)."""
    slot, m = view_packing(view, mats.shape[0])
    return packed_matmul(x, slot, m, mats)


def _shade_pixels(verts, faces, bary, view, face, faces_uvs, verts_uvs, texture, vertex_colors,
                  sh, slot, m: int):
    """Everything per covered pixel after rasterization: normals, albedo, SH shading.

    verts: (B, V, 3) world; bary: (N, 3); view, face: (N,); texture, vertex_colors, sh as
    in MeshRenderer.forward (None when absent); (slot, m) = view_packing(view, B), or
    (None, 0) to gather the SH coefficients per pixel instead.
    Returns unit world normals, albedo and shading, each (N, 3 or C)."""
    n = interpolate_barycentric(bary, view, face, faces, vertex_normals(verts, faces))
    n = n * torch.rsqrt((n * n).sum(-1, keepdim=True).clamp_min(1e-24))
    if texture is not None:
        uv = interpolate_barycentric(bary, view, face, faces_uvs, verts_uvs.to(verts.dtype))
        albedo = sample_texture_packed(texture, uv, view)
    elif vertex_colors is not None:
        albedo = interpolate_barycentric(bary, view, face, faces, vertex_colors)
    else:
        albedo = n.new_ones(n.shape[0], 3)
    if sh is not None and slot is None:
        shading = (sh_basis(n)[:, :, None] * sh.index_select(0, view).to(n.dtype)).sum(1)
    elif sh is not None:
        shading = packed_matmul(sh_basis(n), slot, m, sh)
    else:
        shading = n.new_ones(n.shape[0], albedo.shape[-1])
    return n, albedo, shading


class MeshRenderer(torch.nn.Module):
    """Differentiable renderer of one mesh topology seen by B cameras.

    faces: (F, 3); verts_uvs: (T, 2) and faces_uvs: (F, 3) (needed for textures);
    settings: RasterSettings.
    """

    def __init__(self, faces: torch.Tensor, verts_uvs: torch.Tensor | None = None,
                 faces_uvs: torch.Tensor | None = None, settings: RasterSettings | None = None):
        super().__init__()
        if settings is None:
            raise ValueError("MeshRenderer needs settings=RasterSettings(image_size=(H, W))")
        if (verts_uvs is None) != (faces_uvs is None):
            raise ValueError("give both verts_uvs and faces_uvs, or neither")
        if faces_uvs is not None and faces_uvs.shape != faces.shape:
            raise ValueError(f"faces_uvs {tuple(faces_uvs.shape)} must match faces {tuple(faces.shape)}")
        self.register_buffer("faces", faces.long(), persistent=False)
        self.register_buffer("verts_uvs", None if verts_uvs is None else verts_uvs.float(), persistent=False)
        self.register_buffer("faces_uvs", None if faces_uvs is None else faces_uvs.long(), persistent=False)
        self.settings = settings

    def forward(self, verts: torch.Tensor, K: torch.Tensor, R: torch.Tensor, t: torch.Tensor,
                texture: torch.Tensor | None = None, sh: torch.Tensor | None = None,
                vertex_colors: torch.Tensor | None = None) -> RenderOutput:
        """verts: (B, V, 3) world; K, R: (B, 3, 3); t: (B, 3); texture: (B or 1, 3, Ht, Wt);
        sh: (B, 9, 3); vertex_colors: (B, V, 3) or (V, 3). Albedo is the texture if given,
        else the vertex colours, else 1; shading is SH if given, else 1.

        On CPU, in the packed mode (settings.static_tiles == 0), everything per covered pixel
        (barycentrics, depth, normals, albedo, shading, the image scatter) and the vertex
        normals run in a compiled kernel
        (fitting.render.native.shade, built on first use; FLAME_FIT_NATIVE=0 disables it, a
        failed build warns once and keeps the torch path); on CUDA the same with
        FLAME_FIT_NATIVE_CUDA=1 (experimental: fitting.render.native.cuda). Same values to float rounding;
        the packed bary / depth / normals / albedo / shading stay differentiable w.r.t.
        verts, K, R, t, texture, vertex colours and SH."""
        faces = self.faces
        B = verts.shape[0] if verts.dim() == 3 else -1
        if texture is not None:
            if self.faces_uvs is None:
                raise ValueError("a texture needs verts_uvs and faces_uvs in MeshRenderer(...)")
            if texture.dim() != 4 or texture.shape[0] not in (1, B):
                raise ValueError(f"texture must be (B or 1, C, Ht, Wt) with B = {B}, got {tuple(texture.shape)}")
        if sh is not None and (sh.dim() != 3 or sh.shape[0] != B or sh.shape[1] != 9):
            raise ValueError(f"sh must be (B, 9, C) with B = {B}, got {tuple(sh.shape)}")

        if vertex_colors is not None:
            vertex_colors = _check_attrs(faces, vertex_colors, B)
        fused = self._fused(verts, K, R, t, texture, vertex_colors, sh)
        if fused is not None:
            pf, n, albedo, shading, colour = fused
            static = False
        else:
            pf = rasterize_packed(verts, faces, K, R, t, self.settings)
            static = pf.covered is not None
            # static: per-pixel SH by gather (a padded per-view batch would need the counts: a sync)
            slot, m = view_packing(pf.view, B) if sh is not None and not static else (None, 0)
            n, albedo, shading = _shade_pixels(verts, faces, pf.bary, pf.view, pf.face, self.faces_uvs,
                                               self.verts_uvs, texture, vertex_colors, sh, slot, m)
        if static:
            cov = pf.covered[:, None].to(n.dtype)
            n, albedo, shading = n * cov, albedo * cov, shading * cov

        face_idx = pf.face_idx()
        alpha = (face_idx >= 0).to(verts.dtype)[:, None]
        s = self.settings
        sil, outline = silhouette_static(verts, faces, K, R, t, face_idx=face_idx,
                                         static_pairs=(s.static_outline or 2 * s.static_pixels) if static else 0)
        needed = torch.cat([pf.needed, outline[None]]) if static else None
        if fused is None:
            image = _dense(albedo * shading, pf)
        elif native_cuda.runs_on(colour.device):     # the CUDA kernels (or their CPU emulation)
            image = _dense(colour, pf)
        else:
            from fitting.render.native.shade import dense_image
            image = dense_image(colour, pf.pix, pf.shape)
        return RenderOutput(image=image, alpha=alpha, silhouette=sil,
                            packed=pf, face_idx=face_idx, packed_albedo=albedo, packed_shading=shading,
                            packed_normals=n, needed=needed)

    def _fused(self, verts, K, R, t, texture, vertex_colors, sh):
        """The compiled fast path: visibility, then the compiled per-pixel chain
        (fitting.render.native.shade) instead of the torch ops of _barycentrics and
        _shade_pixels (same values and gradients). Taken in the packed mode when the kernel is
        built: on CPU (FLAME_FIT_NATIVE=0 disables it), and on CUDA when
        FLAME_FIT_NATIVE_CUDA=1 (experimental, fitting.render.native.cuda). Returns
        (PackedFragments, normals, albedo, shading, colour), or None for the torch path."""
        from fitting.render.native import shade
        s = self.settings
        if (s.static_tiles > 0 or s.static_pixels > 0 or not shade.enabled() or verts.dim() != 3
                or not shade.supports(verts, texture, vertex_colors, sh) or K.device != verts.device
                or not shade.available_on(verts.device)):
            return None
        faces = self.faces
        _check_mesh(verts, faces)
        check_cameras(K, R, t, verts.shape[0])
        H, W = s.image_size
        if H <= 0 or W <= 0:
            raise ValueError(f"image_size must be positive (H, W), got {s.image_size}")
        B = verts.shape[0]
        Xc = world_to_camera(verts, R, t)
        pix, face = visible_faces(Xc.detach(), faces, K.detach(), s)
        view = torch.div(pix, H * W, rounding_mode="floor")
        colour, bary, depth, n, albedo, shading = shade.shade_pixels(
            Xc, shade.vertex_normals(verts, faces), pinhole_inverse(K), pix, view, face, faces, (H, W),
            texture=texture, verts_uvs=self.verts_uvs, faces_uvs=self.faces_uvs, vertex_colors=vertex_colors, sh=sh)
        return PackedFragments(pix, view, face, bary, depth, (B, H, W)), n, albedo, shading, colour

