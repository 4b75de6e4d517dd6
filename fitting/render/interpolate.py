"""Differentiable interpolation of per-vertex attributes with rasterizer barycentrics.

Gradients reach the attributes and, through ``bary``, the vertex positions / cameras.
"""
from __future__ import annotations

import torch

from fitting.render.rasterize import Fragments, PackedFragments

__all__ = ["interpolate", "interpolate_packed", "interpolate_barycentric", "check_attrs"]


def check_attrs(faces: torch.Tensor, attrs: torch.Tensor, B: int) -> torch.Tensor:
    """Validate faces (F, 3) and attrs (V, C) or (1 or B, V, C); return attrs as (B, V, C)
    (an expanded view when shared by all views)."""
    if faces.dim() != 2 or faces.shape[-1] != 3:
        raise ValueError(f"faces must be (F, 3), got {tuple(faces.shape)}")
    if attrs.dim() == 2:
        attrs = attrs[None].expand(B, -1, -1)
    if attrs.dim() != 3 or attrs.shape[0] not in (1, B):
        raise ValueError(f"attrs must be (V, C) or (B, V, C) with B = {B}, got {tuple(attrs.shape)}")
    return attrs.expand(B, -1, -1)


def interpolate_barycentric(bary: torch.Tensor, view: torch.Tensor, face: torch.Tensor,
                            faces: torch.Tensor, attrs: torch.Tensor) -> torch.Tensor:
    """sum_i bary_i * attrs[view, faces[face, i]] for scattered points.

    bary: (N, 3); view, face: (N,); faces: (F, 3); attrs: (V, C), or (B, V, C) (one table
    per view; an expanded view with stride 0 counts as shared) -> (N, C)."""
    vid = faces.long().index_select(0, face)                  # (N, 3)
    if attrs.dim() == 2:
        table = attrs
    elif attrs.stride(0) == 0:                                 # shared across views: no view offset
        table = attrs[0]
    else:
        table = attrs.reshape(-1, attrs.shape[-1])
        vid = vid + (view * attrs.shape[1])[:, None]
    vals = table.index_select(0, vid.reshape(-1)).view(-1, 3, table.shape[-1])   # (N, 3, C)
    return (bary[..., None] * vals).sum(1)


def interpolate_packed(frags: PackedFragments, faces: torch.Tensor, attrs: torch.Tensor) -> torch.Tensor:
    """Attributes at the covered pixels. attrs: (V, C) or (B, V, C) -> (N, C)."""
    attrs = check_attrs(faces, attrs, frags.shape[0])
    return interpolate_barycentric(frags.bary, frags.view, frags.face, faces, attrs)


def interpolate(fragments: Fragments, faces: torch.Tensor, attrs: torch.Tensor) -> torch.Tensor:
    """Interpolate vertex attributes over the image.

    fragments: from :func:`rasterize`; faces: (F, 3) indices into ``attrs`` (for UVs with
    their own index buffer pass ``faces_uvs`` and ``verts_uvs``); attrs: (B, V, C) or (V, C).
    Returns (B, H, W, C), zero at background.
    """
    face_idx, bary = fragments.face_idx, fragments.bary
    B, H, W = face_idx.shape
    attrs = check_attrs(faces, attrs, B)
    V, C = attrs.shape[1:]
    mask = face_idx >= 0
    vid = faces.long()[face_idx.clamp_min(0)]                  # (B, H, W, 3)
    vid = vid + (torch.arange(B, device=vid.device) * V).view(B, 1, 1, 1)
    vals = attrs.reshape(B * V, C)[vid]                        # (B, H, W, 3, C)
    out = (bary[..., None] * vals).sum(-2)
    return out * mask[..., None]
