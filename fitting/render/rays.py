"""Pixel-centre rays and triangle corners in the camera frame: the pieces that the rasterizer
(rasterize.py) and the silhouette (silhouette.py) both test rays against triangles with.

A pixel (x, y) of a view is the ray ``d = K^-1 (x + 0.5, y + 0.5, 1)`` (pixel centres at
+0.5, docs/CONVENTIONS.md); a triangle with camera-frame corners P0, P1, P2 has the edge
functions ``w_i(d) = d . (P_j x P_k)``, linear in d.
"""
from __future__ import annotations

import torch

__all__ = ["cross", "pixel_centre_rays", "pixel_xy", "face_corners"]


def cross(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Cross product over the last dim (explicit: faster than linalg.cross on strided views)."""
    ax, ay, az = a.unbind(-1)
    bx, by, bz = b.unbind(-1)
    return torch.stack([ay * bz - az * by, az * bx - ax * bz, ax * by - ay * bx], -1)


def pixel_xy(pix: torch.Tensor, view: torch.Tensor, H: int, W: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Integer pixel coordinates (x, y), each (N,), of flat pixels ``pix = b*H*W + y*W + x``
    of views ``view`` (both (N,) int64)."""
    rem = pix - view * (H * W)
    y = torch.div(rem, W, rounding_mode="floor")
    return rem - y * W, y


def pixel_centre_rays(Kinv: torch.Tensor, view: torch.Tensor, x: torch.Tensor, y: torch.Tensor,
                      H: int, W: int) -> torch.Tensor:
    """Rays d = K^-1 (x + 0.5, y + 0.5, 1) of integer pixels (x, y) of views ``view`` (all (N,)).

    Kinv: (B, 3, 3) upper triangular with last row (0, 0, 1) (any pinhole K). Per-view
    column / row tables keep the per-pixel work to three scalar gathers. Returns (N, 3)."""
    dt = Kinv.dtype
    cols = torch.arange(W, device=Kinv.device, dtype=dt) + 0.5
    rows = torch.arange(H, device=Kinv.device, dtype=dt) + 0.5
    col_x = Kinv[:, 0, 0, None] * cols + Kinv[:, 0, 2, None]          # (B, W)
    row_x = Kinv[:, 0, 1, None] * rows                                 # (B, H)  (skew)
    row_y = Kinv[:, 1, 1, None] * rows + Kinv[:, 1, 2, None]          # (B, H)
    ci, ri = view * W + x, view * H + y
    dx = col_x.reshape(-1).index_select(0, ci) + row_x.reshape(-1).index_select(0, ri)
    dy = row_y.reshape(-1).index_select(0, ri)
    return torch.stack([dx, dy, torch.ones_like(dx)], -1)


def face_corners(Xc: torch.Tensor, faces: torch.Tensor, view: torch.Tensor, face: torch.Tensor) -> torch.Tensor:
    """Camera-frame corners (M, 3, 3) (corner, xyz) of faces ``face`` (M,) of views ``view`` (M,).

    Xc: (B, V, 3); faces: (F, 3) int64. index_select rather than advanced indexing: ~3x
    faster gathers and scatter-adds on CPU."""
    B, V = Xc.shape[:2]
    vid = faces.index_select(0, face) + (view * V)[:, None]                   # (M, 3)
    return Xc.reshape(B * V, 3).index_select(0, vid.reshape(-1)).view(-1, 3, 3)
