"""Vertex normals and 9-term spherical-harmonics Lambertian shading (DECA convention).

Basis and constants are those of DECA / photometric_optimization (Feng et al.), so a
lighting code ``sh (B, 9, 3)`` fitted there means the same here. For a unit normal
n = (x, y, z) in the **world** frame (FLAME: y up, z out of the face) the basis is

    [1, x, y, z, x*y, x*z, y*z, x^2 - y^2, 3 z^2 - 1] * c

with ``c`` (the real SH normalisation times the Lambertian kernel's band factors
pi, 2pi/3, pi/4, cf. Ramamoorthi & Hanrahan 2001):

    c0 = 1 / sqrt(4 pi)                         = 0.282095
    c1 = c2 = c3 = (2 pi / 3) sqrt(3 / (4 pi))  = 1.023327
    c4 = c5 = c6 = (pi / 4) * 3 * sqrt(5 / (12 pi))   = 0.858086
    c7 = (pi / 4) * (3 / 2) * sqrt(5 / (12 pi)) = 0.429043
    c8 = (pi / 4) * (1 / 2) * sqrt(5 / (4 pi))  = 0.247708

and ``shading[c] = sum_k basis_k * sh[k, c]``. (DECA feeds rasterized normals that are not
re-normalised; we re-normalise interpolated normals, which differs by < 1% on FLAME.)
"""
from __future__ import annotations

import math

import torch

__all__ = ["vertex_normals", "face_normals", "sh_basis", "sh_shading", "SH_CONSTANTS"]

_PI = math.pi
SH_CONSTANTS = (
    1 / math.sqrt(4 * _PI),
    (2 * _PI / 3) * math.sqrt(3 / (4 * _PI)),
    (2 * _PI / 3) * math.sqrt(3 / (4 * _PI)),
    (2 * _PI / 3) * math.sqrt(3 / (4 * _PI)),
    (_PI / 4) * 3 * math.sqrt(5 / (12 * _PI)),
    (_PI / 4) * 3 * math.sqrt(5 / (12 * _PI)),
    (_PI / 4) * 3 * math.sqrt(5 / (12 * _PI)),
    (_PI / 4) * (3 / 2) * math.sqrt(5 / (12 * _PI)),
    (_PI / 4) * (1 / 2) * math.sqrt(5 / (4 * _PI)),
)


def face_normals(verts: torch.Tensor, faces: torch.Tensor) -> torch.Tensor:
    """Unnormalised right-hand face normals (length = 2 * area). verts (B,V,3) -> (B,F,3)."""
    B, F = verts.shape[0], faces.shape[0]
    v0, v1, v2 = verts.index_select(1, faces.reshape(-1)).view(B, F, 3, 3).unbind(2)
    a, b = v1 - v0, v2 - v0
    ax, ay, az = a.unbind(-1)
    bx, by, bz = b.unbind(-1)
    return torch.stack([ay * bz - az * by, az * bx - ax * bz, ax * by - ay * bx], -1)


def vertex_normals(verts: torch.Tensor, faces: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """Area-weighted unit vertex normals. verts: (B, V, 3), faces: (F, 3) -> (B, V, 3).

    Counter-clockwise faces (seen from outside) give outward normals. Vertices used by no
    face get a zero normal."""
    if verts.dim() != 3 or verts.shape[-1] != 3:
        raise ValueError(f"verts must be (B, V, 3), got {tuple(verts.shape)}")
    faces = faces.long()
    fn = face_normals(verts, faces)                                # (B, F, 3)
    B, V = verts.shape[:2]
    n = verts.new_zeros(B, V, 3)
    for k in range(3):                                   # the three corners of every face
        n = n.index_add(1, faces[:, k], fn)
    return n / n.norm(dim=-1, keepdim=True).clamp_min(eps)


def sh_basis(normals: torch.Tensor) -> torch.Tensor:
    """DECA's 9-term SH basis with constant factors folded in. normals: (..., 3) -> (..., 9)."""
    if normals.shape[-1] != 3:
        raise ValueError(f"normals must have last dimension 3, got {tuple(normals.shape)}")
    x, y, z = normals.unbind(-1)
    c = SH_CONSTANTS
    return torch.stack([
        torch.full_like(x, c[0]), c[1] * x, c[2] * y, c[3] * z,
        c[4] * x * y, c[5] * x * z, c[6] * y * z,
        c[7] * (x * x - y * y), c[8] * (3 * z * z - 1),
    ], -1)


def sh_shading(normals: torch.Tensor, sh: torch.Tensor) -> torch.Tensor:
    """Lambertian SH irradiance. normals: (B, ..., 3) world unit; sh: (B, 9, C) -> (B, ..., C)."""
    if sh.dim() != 3 or sh.shape[1] != 9:
        raise ValueError(f"sh must be (B, 9, C) (9 coefficients per channel), got {tuple(sh.shape)}")
    if normals.shape[0] != sh.shape[0]:
        raise ValueError(f"normals batch {normals.shape[0]} != sh batch {sh.shape[0]}; one SH set per view")
    B = normals.shape[0]
    basis = sh_basis(normals)
    out = torch.bmm(basis.reshape(B, -1, 9), sh)
    return out.reshape(normals.shape[:-1] + (sh.shape[-1],))
