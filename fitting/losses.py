"""Loss terms of the fit: pure functions of tensors, batched over views.

Shapes: N views, H x W fitting resolution. Images (N, 3, H, W) in [0, 1]; masks (N, 1, H, W)
in [0, 1]; landmarks (N, 68, 2) pixels. Every loss returns a scalar (mean over what it
covers) unless said otherwise, so weights stay comparable across image sizes and view counts.
"""
from __future__ import annotations

import torch

__all__ = [
    "CONTOUR", "STATIC", "landmark_point_weights", "robust_landmark_loss", "landmark_rmse",
    "masked_photometric_l1", "silhouette_loss", "mask_iou", "gaussian_prior", "texture_smoothness",
]

CONTOUR = slice(0, 17)   # the yaw-dependent jaw-line points (least reliable)
STATIC = slice(17, 68)   # brows, nose, eyes, mouth


def landmark_point_weights(contour_weight: float = 0.3, static_only: bool = False, device=None) -> torch.Tensor:
    """(68,) per-point weights: contour points get ``contour_weight`` (0 when ``static_only``)."""
    w = torch.ones(68, device=device)
    w[CONTOUR] = 0.0 if static_only else contour_weight
    return w


def _check(name, x, shape_tail, dims):
    if x.dim() != dims or tuple(x.shape[-len(shape_tail):]) != tuple(shape_tail):
        raise ValueError(f"{name} must be (N, {', '.join(map(str, shape_tail))}), got {tuple(x.shape)}")


def robust_landmark_loss(pred: torch.Tensor, target: torch.Tensor, point_weights: torch.Tensor | None = None,
                         view_weights: torch.Tensor | None = None, scale_px: float = 3.0) -> torch.Tensor:
    """Cauchy-robust landmark reprojection loss, mean over weighted points.

    pred, target: (N, 68, 2) pixels; point_weights: (68,) or (N, 68) (0 = ignore, e.g. a missing
    point); view_weights: (N,). With ``r`` the point distance and ``s = scale_px`` each point
    costs ``s^2 log(1 + r^2 / s^2)`` (= r^2 for small r, grows only logarithmically for
    outliers), so a wrong detection cannot drag a view away.
    """
    _check("pred landmarks", pred, (68, 2), 3)
    _check("target landmarks", target, (68, 2), 3)
    N = pred.shape[0]
    w = torch.ones(N, 68, device=pred.device, dtype=pred.dtype)
    if point_weights is not None:
        w = w * point_weights.to(w).expand(N, 68)
    if view_weights is not None:
        w = w * view_weights.to(w)[:, None]
    r2 = ((pred - target) ** 2).sum(-1)
    s2 = scale_px * scale_px
    rho = s2 * torch.log1p(r2 / s2)
    return (w * rho).sum() / w.sum().clamp_min(1e-8)


def landmark_rmse(pred: torch.Tensor, target: torch.Tensor, point_weights: torch.Tensor | None = None) -> torch.Tensor:
    """(N,) root-mean-square point distance per view (pixels), over points with weight > 0."""
    d2 = ((pred - target) ** 2).sum(-1)
    m = torch.ones_like(d2) if point_weights is None else (point_weights.to(d2).expand_as(d2) > 0).to(d2)
    return ((d2 * m).sum(-1) / m.sum(-1).clamp_min(1)).sqrt()


def masked_photometric_l1(render: torch.Tensor, image: torch.Tensor, photo_mask: torch.Tensor,
                          render_mask: torch.Tensor, view_weights: torch.Tensor | None = None,
                          per_view: bool = False) -> torch.Tensor:
    """L1 colour error where both the photo's skin mask and the render's coverage are on.

    render, image: (N, 3, H, W); photo_mask, render_mask: (N, 1, H, W) in [0, 1].
    Masking the photo alone (the seed pipeline) rewards the render for leaving the mask and
    penalises background colour where the mesh does not reach; masking both compares only
    pixels that are face skin in *both*. Returns the mean absolute error per masked pixel
    and channel; ``per_view=True`` gives (N,).
    """
    if render.shape != image.shape or render.dim() != 4:
        raise ValueError(f"render {tuple(render.shape)} and image {tuple(image.shape)} must both be (N, 3, H, W)")
    m = photo_mask * render_mask
    err = ((render - image).abs() * m).sum((1, 2, 3))
    cnt = m.sum((1, 2, 3)) * render.shape[1]
    if per_view:
        return err / cnt.clamp_min(1)
    if view_weights is not None:
        err, cnt = err * view_weights, cnt * view_weights
    return err.sum() / cnt.sum().clamp_min(1)


def silhouette_loss(silhouette: torch.Tensor, mask: torch.Tensor, view_weights: torch.Tensor | None = None) -> torch.Tensor:
    """1 - soft IoU between the render's silhouette and the head mask, mean over views.

    silhouette, mask: (N, 1, H, W) in [0, 1]. IoU is scale-free: a small face in the image
    weighs as much as a large one.
    """
    if silhouette.shape != mask.shape:
        raise ValueError(f"silhouette {tuple(silhouette.shape)} and mask {tuple(mask.shape)} must match")
    inter = (silhouette * mask).sum((1, 2, 3))
    union = (silhouette + mask - silhouette * mask).sum((1, 2, 3))
    loss = 1 - inter / union.clamp_min(1e-6)
    if view_weights is not None:
        return (loss * view_weights).sum() / view_weights.sum().clamp_min(1e-8)
    return loss.mean()


def mask_iou(a: torch.Tensor, b: torch.Tensor, threshold: float = 0.5) -> torch.Tensor:
    """(N,) IoU of two (N, 1, H, W) masks binarised at ``threshold``."""
    a, b = a > threshold, b > threshold
    inter = (a & b).sum((1, 2, 3)).float()
    union = (a | b).sum((1, 2, 3)).float()
    return torch.where(union > 0, inter / union.clamp_min(1), torch.ones_like(union))


def gaussian_prior(x: torch.Tensor) -> torch.Tensor:
    """Squared norm per row, mean over rows. x: (G, D) coefficients with unit prior variance."""
    return (x * x).sum(-1).mean()


def texture_smoothness(tex: torch.Tensor) -> torch.Tensor:
    """Mean squared difference of neighbouring texels. tex: (G, C, Ht, Wt)."""
    if tex.dim() != 4:
        raise ValueError(f"texture map must be (G, C, Ht, Wt), got {tuple(tex.shape)}")
    dx = tex[..., :, 1:] - tex[..., :, :-1]
    dy = tex[..., 1:, :] - tex[..., :-1, :]
    return (dx * dx).mean() + (dy * dy).mean()
