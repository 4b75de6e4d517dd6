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

from fitting.render.cameras import Cameras, prepare_cameras, world_to_camera
from fitting.render.interpolate import check_attrs as _check_attrs
from fitting.render.interpolate import interpolate_barycentric
from fitting.render.rasterize import (Fragments, PackedFragments, RasterSettings, check_image_size, check_mesh,
                                      rasterize_camera_space, visible_faces)
from fitting.render.shading import sh_basis, vertex_normals
from fitting.render.silhouette import silhouette_camera_space
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
    needed: None, except from fitting.render.static.StaticMeshRenderer (see there)."""
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

        The cameras are checked and converted once (prepare_cameras, world_to_camera) and
        handed to each pass. On CPU, everything per covered pixel (barycentrics, depth,
        normals, albedo, shading, the image scatter), the vertex normals and the silhouette
        run in compiled kernels (fitting.render.native, built on first use;
        FLAME_FIT_NATIVE=0 disables them, a failed build warns once and keeps the PyTorch
        path). Same values to float rounding; the packed bary / depth / normals / albedo /
        shading stay differentiable w.r.t. verts, K, R, t, texture, vertex colours and SH."""
        faces = self.faces
        vertex_colors = self._check_inputs(verts, texture, sh, vertex_colors)
        check_mesh(verts, faces)
        cams = prepare_cameras(K, R, t, verts.shape[0])
        check_image_size(self.settings)
        Xc = world_to_camera(verts, R, t)
        pf, n, albedo, shading, image = self._pixels(verts, Xc, cams, texture, vertex_colors, sh)
        face_idx = pf.face_idx()
        return RenderOutput(image=image, alpha=(face_idx >= 0).to(verts.dtype)[:, None],
                            silhouette=silhouette_camera_space(Xc, faces, cams.Kinv, face_idx),
                            packed=pf, face_idx=face_idx, packed_albedo=albedo, packed_shading=shading,
                            packed_normals=n)

    def _check_inputs(self, verts, texture, sh, vertex_colors):
        """Raise a ValueError for a texture, SH or vertex colours that do not fit verts and this
        renderer; returns the vertex colours as (B or 1, V, C)."""
        B = verts.shape[0] if verts.dim() == 3 else -1
        if texture is not None:
            if self.faces_uvs is None:
                raise ValueError("a texture needs verts_uvs and faces_uvs in MeshRenderer(...)")
            if texture.dim() != 4 or texture.shape[0] not in (1, B):
                raise ValueError(f"texture must be (B or 1, C, Ht, Wt) with B = {B}, got {tuple(texture.shape)}")
        if sh is not None and (sh.dim() != 3 or sh.shape[0] != B or sh.shape[1] != 9):
            raise ValueError(f"sh must be (B, 9, C) with B = {B}, got {tuple(sh.shape)}")
        return None if vertex_colors is None else _check_attrs(self.faces, vertex_colors, B)

    def _pixels(self, verts, Xc, cams: Cameras, texture, vertex_colors, sh):
        """Rasterization and everything per covered pixel: (PackedFragments, normals, albedo,
        shading, image (B, C, H, W)), by the compiled kernels where they take the inputs
        (fitting.render.native.shade.supports), else by the PyTorch ops of
        rasterize.barycentrics and _shade_pixels (same values and gradients)."""
        from fitting.render.native import shade
        faces, s = self.faces, self.settings
        if not (shade.supports(verts, texture, vertex_colors, sh) and cams.K.device == verts.device
                and shade.available_on(verts.device)):
            pf = rasterize_camera_space(Xc, faces, cams, s)
            slot, m = view_packing(pf.view, verts.shape[0]) if sh is not None else (None, 0)
            n, albedo, shading = _shade_pixels(verts, faces, pf.bary, pf.view, pf.face, self.faces_uvs,
                                               self.verts_uvs, texture, vertex_colors, sh, slot, m)
            return pf, n, albedo, shading, _dense(albedo * shading, pf)
        (H, W), B = s.image_size, verts.shape[0]
        pix, face = visible_faces(Xc.detach(), faces, cams.K.detach(), s, Kinv=cams.Kinv.detach())
        view = torch.div(pix, H * W, rounding_mode="floor")
        colour, bary, depth, n, albedo, shading = shade.shade_pixels(
            Xc, shade.vertex_normals(verts, faces), cams.Kinv, pix, view, face, faces, (H, W),
            texture=texture, verts_uvs=self.verts_uvs, faces_uvs=self.faces_uvs, vertex_colors=vertex_colors, sh=sh)
        pf = PackedFragments(pix, view, face, bary, depth, (B, H, W))
        return pf, n, albedo, shading, shade.dense_image(colour, pix, pf.shape)
