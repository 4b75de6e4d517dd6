"""Static shapes: the renderer with fixed tensor sizes and no host synchronisation, so that a
whole forward + backward (and a fitting step around it) can be captured once in a CUDA graph
and replayed (docs/RENDERER.md, "Static shapes and CUDA graphs").

Opt-in and separate from the default pipeline: build a :class:`StaticMeshRenderer` with the
:class:`StaticSizes` that :func:`static_sizes` measures for a set of views. It returns the
same images and gradients as MeshRenderer (tests/render/test_static.py), but on the CPU it is
several times slower (every candidate tile and padding slot is computed): it is for CUDA
graphs only.

* visibility: every face's box is cut into _TILE x _TILE tiles; ``sizes.tiles`` slots are
  filled by a search over the faces' cumulative tile counts (no buckets, no ``nonzero``),
  with the same z-buffer keys as rasterize.visible_faces;
* covered pixels: ``nonzero_static`` into ``sizes.pixels`` slots (:class:`PaddedFragments`);
* SH per pixel by a gather (the padded per-view ``bmm`` needs per-view counts on the host);
* silhouette pairs by ``nonzero_static`` into ``sizes.outline`` slots per direction.
"""
from __future__ import annotations

from typing import NamedTuple

import torch

from fitting.render.cameras import Cameras, prepare_cameras, world_to_camera
from fitting.render.rasterize import (Fragments, RasterSettings, barycentrics, check_image_size, check_mesh,
                                      face_boxes, face_coefficients, grid_keys, key_face, visible_faces)
from fitting.render.renderer import MeshRenderer, RenderOutput, _dense, _shade_pixels
from fitting.render.silhouette import differing_pairs, outline_delta, outline_pair_counts, pair_pixels

__all__ = ["StaticSizes", "static_sizes", "StaticMeshRenderer", "PaddedFragments"]

# Tiles are _TILE x _TILE pixels. Most faces of a head cover a pixel box of 1-3 pixels a side:
# 2x2 tiles evaluate half the candidates of 4x4 ones (2.4 M instead of 4.8 M for 30 views at
# 256²) for 2.4x the tiles, ~20 % less time in the CPU proxy (docs/RENDERER.md).
_TILE = 2


class StaticSizes(NamedTuple):
    """Fixed sizes of one render: 2x2 candidate tiles, covered pixels, and outline pixel pairs
    per direction (0: 2 x pixels, which always suffices but costs ~30x the work of a measured
    size). A call that needs more raises; after a CUDA graph replay, RenderOutput.needed
    says what it needed."""
    tiles: int
    pixels: int
    outline: int = 0

    def with_room(self, margin: float = 0.2, extra: int = 64) -> "StaticSizes":
        """These sizes plus ``margin`` (relative) and ``extra`` (absolute) room for the mesh and
        cameras to move."""
        return StaticSizes(*(int(n * (1 + margin)) + extra for n in self))


class PaddedFragments(NamedTuple):
    """PackedFragments with a fixed number N = sizes.pixels of slots: the slots after the
    covered pixels are padding with ``pix = B*H*W`` (one past the image), ``covered`` (N,)
    bool False, bary and depth 0 (view and face point at spread-out valid entries, see
    _static_pixels); ``needed`` (2,) int64 = (tiles, pixels) the call needed."""
    pix: torch.Tensor
    view: torch.Tensor
    face: torch.Tensor
    bary: torch.Tensor
    depth: torch.Tensor
    shape: tuple[int, int, int]
    covered: torch.Tensor
    needed: torch.Tensor

    def scatter(self, values: torch.Tensor, fill: float = 0) -> torch.Tensor:
        """(N, C) values at the listed pixels -> (B*H*W, C), ``fill`` elsewhere (padding dropped)."""
        B, H, W = self.shape
        n = B * H * W
        out = values.new_full((n + 1, values.shape[-1]), fill)      # a dump slot for the padding
        return out.index_copy(0, self.pix, values)[:n]

    def face_idx(self) -> torch.Tensor:
        """(B, H, W) int64 face per pixel, -1 for background."""
        B, H, W = self.shape
        return self.scatter(torch.where(self.covered, self.face, -1)[:, None], -1).view(B, H, W)

    def to_dense(self) -> Fragments:
        B, H, W = self.shape
        bary = self.scatter(self.bary).view(B, H, W, 3)
        depth = self.scatter(self.depth[:, None]).view(B, H, W)
        return Fragments(self.face_idx(), bary, depth)


def _tiles(Xc: torch.Tensor, faces: torch.Tensor, cams: Cameras, settings: RasterSettings):
    """Per face (flat b*F + f): boxes x0, x1, y0, y1, edge tables coef (B*F, 12), tiles per
    row tx and the number of tiles ``count`` (0 for faces that cannot draw)."""
    H, W = settings.image_size
    B, F = Xc.shape[0], faces.shape[0]
    x0, x1, y0, y1 = (b.flatten() for b in face_boxes(Xc, faces, cams.K, settings.near, H, W, static=True))
    coef, det = face_coefficients(Xc, faces, cams.Kinv, torch.arange(B * F, device=Xc.device))
    draw = det < 0 if settings.cull_backfaces else det != 0
    tx = torch.div(x1 - x0 + _TILE, _TILE, rounding_mode="floor").clamp_min(0)
    ty = torch.div(y1 - y0 + _TILE, _TILE, rounding_mode="floor").clamp_min(0)
    return x0, x1, y0, y1, coef, tx, torch.where(draw, tx * ty, 0)


@torch.no_grad()
def static_sizes(verts: torch.Tensor, faces: torch.Tensor, K: torch.Tensor, R: torch.Tensor,
                 t: torch.Tensor, settings: RasterSettings) -> StaticSizes:
    """StaticSizes(tiles, pixels, outline) that these views need exactly; give a
    StaticMeshRenderer ``static_sizes(...).with_room()`` for the mesh and cameras to move.

    verts: (B, V, 3) world; K, R: (B, 3, 3); t: (B, 3)."""
    faces = faces.long()
    cams = prepare_cameras(K, R, t, verts.shape[0])
    Xc = world_to_camera(verts, R, t)
    tiles = int(_tiles(Xc, faces, cams, settings)[-1].sum())
    pix, face = visible_faces(Xc, faces, K, settings, Kinv=cams.Kinv)
    B, (H, W) = verts.shape[0], settings.image_size
    face_idx = torch.full((B * H * W,), -1, dtype=torch.int64, device=pix.device).index_copy(0, pix, face)
    outline = int(outline_pair_counts(face_idx.view(B, H, W)).max())
    return StaticSizes(tiles, int(pix.numel()), outline)


@torch.no_grad()
def visible_faces_static(Xc: torch.Tensor, faces: torch.Tensor, cams: Cameras, settings: RasterSettings,
                         tiles: int):
    """Visibility pass with static shapes and no host sync (capturable in a CUDA graph).

    Every face's box is cut into _TILE x _TILE tiles; a fixed number ``tiles`` of tile slots
    is filled by a search over the faces' cumulative tile counts. Keys are bit-identical to
    rasterize.visible_faces (see rasterize.grid_keys). Returns face (B*H*W,) int64, -1 for
    background, and the number of tiles needed (0-dim int64 tensor; more than ``tiles``
    means tiles were dropped: the caller must check)."""
    H, W = settings.image_size
    B, F = Xc.shape[0], faces.shape[0]
    dev = Xc.device
    T = _TILE
    x0, x1, y0, y1, coef, tx, count = _tiles(Xc, faces, cams, settings)
    ends = count.cumsum(0)
    slot = torch.arange(tiles, device=dev)
    g = torch.searchsorted(ends, slot, right=True).clamp(max=B * F - 1)     # face of each slot
    local = slot - (ends.index_select(0, g) - count.index_select(0, g))
    w = tx.index_select(0, g).clamp_min(1)
    ry = torch.div(local, w, rounding_mode="floor")
    tile_x = x0.index_select(0, g) + T * (local - ry * w)                   # tile corner pixel
    tile_y = y0.index_select(0, g) + T * ry
    view = torch.div(g, F, rounding_mode="floor")
    d = torch.arange(T, device=dev)
    xs, ys = tile_x[:, None] + d, tile_y[:, None] + d                       # (S, T) each
    key = grid_keys(coef.index_select(0, g), tile_x.to(coef.dtype) + 0.5, tile_y.to(coef.dtype) + 0.5,
                    g - view * F, d.to(coef.dtype), d.to(coef.dtype), settings.near)   # (S, T, T)
    inside = ((slot < ends[-1])[:, None, None]
              & (ys <= y1.index_select(0, g)[:, None])[:, :, None]
              & (xs <= x1.index_select(0, g)[:, None])[:, None, :])
    pix = (view * (H * W))[:, None, None] + ys.clamp(max=H - 1)[:, :, None] * W + xs.clamp(max=W - 1)[:, None, :]
    zbuf = torch.zeros(B * H * W, dtype=torch.int64, device=dev)
    zbuf.scatter_reduce_(0, pix.flatten(), torch.where(inside, key, 0).flatten(), "amax")
    return torch.where(zbuf > 0, key_face(zbuf), -1), ends[-1]


def _capturing(x: torch.Tensor) -> bool:
    """Inside a CUDA graph capture nothing may sync the host: sizes are checked by the caller."""
    return x.is_cuda and torch.cuda.is_current_stream_capturing()


def _static_pixels(Xc, faces, cams: Cameras, settings: RasterSettings, sizes: StaticSizes):
    """Static-mode visibility: (pix (P,), at (P,), face (P,), covered (P,), needed (2,)) with
    P = sizes.pixels (see PaddedFragments); ``at`` is ``pix`` with the padding slots on
    valid, spread-out pixels, for computing on."""
    B = Xc.shape[0]
    H, W = settings.image_size
    face_all, tiles = visible_faces_static(Xc, faces, cams, settings, sizes.tiles)
    hit = face_all >= 0
    needed = torch.stack([tiles, hit.sum()])
    if not _capturing(Xc):
        nt, npix = needed.tolist()
        if nt > sizes.tiles or npix > sizes.pixels:
            raise ValueError(f"these views need {nt} tiles and {npix} pixels but StaticSizes allows "
                             f"tiles={sizes.tiles}, pixels={sizes.pixels}; "
                             "raise them (static_sizes() measures what views need)")
    n = B * H * W
    pix = torch.nonzero_static(hit, size=sizes.pixels, fill_value=n)[:, 0]
    covered = pix < n
    # padding slots compute on spread-out pixels and faces: were they all the same, the
    # backward's atomic adds into that one face's vertices would serialise
    spread = torch.arange(sizes.pixels, device=pix.device)
    at = torch.where(covered, pix, spread % n)
    face = torch.where(covered, face_all.index_select(0, at), spread % faces.shape[0])
    return pix, at, face, covered, needed


def rasterize_static(Xc: torch.Tensor, faces: torch.Tensor, cams: Cameras, settings: RasterSettings,
                     sizes: StaticSizes) -> PaddedFragments:
    """rasterize.rasterize_camera_space with static shapes (see PaddedFragments)."""
    H, W = settings.image_size
    pix, at, face, covered, needed = _static_pixels(Xc.detach(), faces, cams._replace(K=cams.K.detach(),
                                                    Kinv=cams.Kinv.detach()), settings, sizes)
    view = torch.div(at, H * W, rounding_mode="floor")
    bary, depth = barycentrics(Xc, faces, cams.Kinv, at, view, face, H, W, covered)
    return PaddedFragments(pix, view, face, bary, depth, (Xc.shape[0], H, W), covered, needed)


def _pairs(face_idx: torch.Tensor, dim: int, capacity: int):
    """Outline pairs along ``dim`` (2: horizontal, 1: vertical) of face_idx (B, H, W), exactly
    ``capacity`` of them (no host sync; padding invalid; pairs beyond it are dropped: the
    caller checks the count). Returns p, q (flat pixels, covered and background), valid,
    and the number of pairs found (0-dim int64)."""
    a, differs = differing_pairs(face_idx >= 0, dim)
    edge = torch.nonzero_static(differs, size=capacity, fill_value=-1)
    valid = edge[:, 0] >= 0
    # padding on spread-out pairs (the same pair everywhere would serialise atomic adds)
    spread = torch.arange(capacity, device=edge.device)
    filler = torch.stack([spread % size for size in differs.shape], -1)
    p, q = pair_pixels(a, torch.where(valid[:, None], edge, filler), dim)
    return p, q, valid, differs.sum()


def silhouette_static(Xc: torch.Tensor, faces: torch.Tensor, Kinv: torch.Tensor, face_idx: torch.Tensor,
                      capacity: int) -> tuple[torch.Tensor, torch.Tensor]:
    """silhouette.silhouette_camera_space with the outline pairs of each direction padded to
    ``capacity``; also returns the pairs it needed (0-dim int64, the larger of the two
    directions; more than ``capacity`` means pairs were dropped)."""
    B, H, W = face_idx.shape
    flat_face = face_idx.reshape(-1)
    cover = (flat_face >= 0).to(Xc.dtype)
    ph, qh, vh, nh = _pairs(face_idx, 2, capacity)
    pv, qv, vv, nv = _pairs(face_idx, 1, capacity)
    needed = torch.maximum(nh, nv)
    if not _capturing(face_idx) and int(needed) > capacity:
        raise ValueError(f"the silhouette needs {int(needed)} outline pairs per direction but "
                         f"StaticSizes.outline is {capacity}; raise it "
                         "(static_sizes() measures what views need)")
    p, q, valid = torch.cat([ph, pv]), torch.cat([qh, qv]), torch.cat([vh, vv])
    horizontal = torch.arange(len(p), device=p.device) < len(ph)
    if len(p) == 0:
        return cover.view(B, 1, H, W), needed
    delta = outline_delta(Xc, faces, Kinv, flat_face, p, q, horizontal, valid, H, W)
    return (cover + delta).clamp(0, 1).view(B, 1, H, W), needed


class StaticMeshRenderer(MeshRenderer):
    """MeshRenderer with static shapes (module doc): same arguments plus ``sizes``
    (StaticSizes, e.g. ``static_sizes(...).with_room()``). Always the PyTorch path.
    RenderOutput.needed holds (tiles, pixels, outline pairs) the call needed: after a CUDA
    graph replay, more than ``sizes`` means work was dropped and the result is wrong."""

    def __init__(self, faces: torch.Tensor, verts_uvs: torch.Tensor | None = None,
                 faces_uvs: torch.Tensor | None = None, settings: RasterSettings | None = None,
                 sizes: StaticSizes | None = None):
        super().__init__(faces, verts_uvs, faces_uvs, settings)
        if sizes is None or sizes.tiles <= 0 or sizes.pixels <= 0:
            raise ValueError("StaticMeshRenderer needs sizes=StaticSizes(tiles, pixels, outline) with both "
                             "tiles and pixels > 0 (static_sizes() measures what your views need)")
        self.sizes = sizes

    def forward(self, verts: torch.Tensor, K: torch.Tensor, R: torch.Tensor, t: torch.Tensor,
                texture: torch.Tensor | None = None, sh: torch.Tensor | None = None,
                vertex_colors: torch.Tensor | None = None) -> RenderOutput:
        """As MeshRenderer.forward."""
        faces, s = self.faces, self.settings
        vertex_colors = self._check_inputs(verts, texture, sh, vertex_colors)
        check_mesh(verts, faces)
        cams = prepare_cameras(K, R, t, verts.shape[0])
        check_image_size(s)
        Xc = world_to_camera(verts, R, t)
        pf = rasterize_static(Xc, faces, cams, s, self.sizes)
        n, albedo, shading = _shade_pixels(verts, faces, pf.bary, pf.view, pf.face, self.faces_uvs,
                                           self.verts_uvs, texture, vertex_colors, sh, None, 0)
        cov = pf.covered[:, None].to(n.dtype)
        n, albedo, shading = n * cov, albedo * cov, shading * cov
        face_idx = pf.face_idx()
        sil, outline = silhouette_static(Xc, faces, cams.Kinv, face_idx, self.sizes.outline or 2 * self.sizes.pixels)
        return RenderOutput(image=_dense(albedo * shading, pf), alpha=(face_idx >= 0).to(verts.dtype)[:, None],
                            silhouette=sil, packed=pf, face_idx=face_idx, packed_albedo=albedo,
                            packed_shading=shading, packed_normals=n, needed=torch.cat([pf.needed, outline[None]]))
