"""What a fit sees of its views: photos, landmarks and masks at fitting resolution.

:class:`Observations` is the one type the stages consume (:func:`fitting.context.FitContext.from_observations`).
Its sources extend it with what only they know: :class:`fitting.scene.Scene` (a multi-view
capture: cameras.json's K, SfM poses, per-axis scale to original pixels) and
:class:`single_view.inputs.ImageBatch` (single photos letterboxed into a square: isotropic
scale and offset).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = ["Observations"]


@dataclass(kw_only=True)
class Observations:
    """N views at fitting resolution, in ``names`` order.

    names: N image file names; image_paths: N paths of the original images;
    images: (N, 3, H, W) float32 RGB in [0, 1]; landmarks: (N, 68, 2) fitting pixels (pixel
    centres at +0.5, docs/CONVENTIONS.md); skin_mask, head_mask: (N, 1, H, W) in [0, 1];
    orig_size: (N, 2) int64 (W, H) of the originals; size: (H, W) fitting size.
    """

    names: list
    image_paths: list
    images: torch.Tensor
    landmarks: torch.Tensor
    skin_mask: torch.Tensor
    head_mask: torch.Tensor
    orig_size: torch.Tensor
    size: tuple

    # the tensors the stages read; orig_size stays on the CPU for the exports
    _ON_DEVICE = ("images", "landmarks", "skin_mask", "head_mask")

    @property
    def num_views(self) -> int:
        return len(self.names)

    def to(self, device):
        """Move the tensors the stages read to ``device``; returns self."""
        for k in self._ON_DEVICE:
            setattr(self, k, getattr(self, k).to(device))
        return self
