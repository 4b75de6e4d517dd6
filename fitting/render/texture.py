"""Bilinear UV texture lookup in the OBJ convention (v up, texel centres at +0.5)."""
from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["sample_texture", "uv_to_grid"]


def uv_to_grid(uv: torch.Tensor) -> torch.Tensor:
    """OBJ (u, v) in [0, 1], v up -> grid_sample coordinates in [-1, 1] (y down).

    Texel column = u * Wt and row = (1 - v) * Ht continuous, i.e. ``align_corners=False``."""
    return torch.stack([2 * uv[..., 0] - 1, 1 - 2 * uv[..., 1]], -1)


def sample_texture(texture: torch.Tensor, uv: torch.Tensor) -> torch.Tensor:
    """texture: (B or 1, C, Ht, Wt) stored like an image (row 0 at the top);
    uv: (B, H, W, 2) -> (B, H, W, C), bilinear, clamped at the border.

    Differentiable w.r.t. the texture and the UVs."""
    if texture.dim() != 4:
        raise ValueError(f"texture must be (B, C, Ht, Wt), got {tuple(texture.shape)}")
    if uv.dim() != 4 or uv.shape[-1] != 2:
        raise ValueError(f"uv must be (B, H, W, 2), got {tuple(uv.shape)}")
    B = uv.shape[0]
    if texture.shape[0] not in (1, B):
        raise ValueError(f"texture batch {texture.shape[0]} must be 1 or {B} (the number of views)")
    texture = texture.expand(B, -1, -1, -1)
    out = F.grid_sample(texture, uv_to_grid(uv).to(texture.dtype), mode="bilinear",
                        padding_mode="border", align_corners=False)
    return out.permute(0, 2, 3, 1)
