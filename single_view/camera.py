"""Cameras of single-image fits.

Perspective: a pinhole with a fixed horizontal field of view, principal point at the image
centre (``fitting.render.intrinsics_from_fov``). One photo cannot separate focal length from
distance (the "dolly zoom" ambiguity is only weakly broken by perspective foreshortening of a
face), so the focal length is chosen, not fitted; see docs/SINGLE_VIEW.md for the default.

Weak perspective (DECA / photometric_optimization): ``u = s (X + t_xy)`` with no depth term.
It is the limit of a pinhole whose distance grows while the focal length grows in
proportion, so it is modelled here as a pinhole with a tiny field of view
(:data:`WEAK_PERSPECTIVE_FOV_DEG`): the library's stages, renderer and exports then work
unchanged, and the residual perspective effect (depth range / distance, ~0.1 % at 0.5 deg)
is far below a pixel. :func:`deca_camera` converts any fitted pinhole to DECA's ``(s, tx, ty)``.
"""
from __future__ import annotations

import torch

from fitting.render.cameras import FLIP
from fitting.render import intrinsics_from_fov
from fitting.rotations import matrix_to_axis_angle

__all__ = ["CAMERA_MODELS", "DEFAULT_FOV_DEG", "WEAK_PERSPECTIVE_FOV_DEG", "fitting_intrinsics", "deca_camera",
           "deca_global_pose"]

CAMERA_MODELS = ("perspective", "weak_perspective")
DEFAULT_FOV_DEG = 12.0           # FFHQ-style portrait crops: see docs/SINGLE_VIEW.md
WEAK_PERSPECTIVE_FOV_DEG = 0.5   # pinhole this narrow = weak perspective to < 0.2 %


def fitting_intrinsics(camera: str, fov_deg: float, width: int, height: int, batch: int,
                       device=None) -> torch.Tensor:
    """K (batch, 3, 3) at fitting resolution for ``camera`` in :data:`CAMERA_MODELS`.

    fov_deg: horizontal field of view of the perspective camera (ignored for weak perspective).
    """
    if camera not in CAMERA_MODELS:
        raise ValueError(f"--camera must be one of {', '.join(CAMERA_MODELS)}, got {camera!r}")
    fov = WEAK_PERSPECTIVE_FOV_DEG if camera == "weak_perspective" else float(fov_deg)
    if not 0 < fov < 120:
        raise ValueError(f"--fov must be in (0, 120) degrees, got {fov_deg}")
    return intrinsics_from_fov(fov, width, height, batch, device=device)


def deca_camera(K: torch.Tensor, t: torch.Tensor, width: int, height: int) -> torch.Tensor:
    """DECA / photometric_optimization weak-perspective camera ``(s, tx, ty)`` (N, 3) that best
    matches the pinhole (K, R, t) near the head origin.

    K: (N, 3, 3), t: (N, 3) world-to-camera (OpenCV). DECA projects a point X of the rotated
    head as ``x_ndc = s (X_xy + (tx, ty))`` with NDC in [-1, 1] over the image and y up; our
    pinhole at the head origin gives ``u = fx (X + t_x) / t_z + cx`` with y down. Linearised at
    the origin (the weak-perspective assumption), ``s = 2 fx / (W t_z)`` and ``(tx, ty) =
    (t_x + (cx - W/2) t_z / fx, -(t_y + (cy - H/2) t_z / fy))``; the head's rotation is
    :func:`deca_global_pose`. Exact for the weak-perspective camera, first order otherwise.
    """
    fx, fy, cx, cy = K[:, 0, 0], K[:, 1, 1], K[:, 0, 2], K[:, 1, 2]
    tz = t[:, 2]
    s = 2 * fx / (width * tz)
    tx = t[:, 0] + (cx - width / 2) * tz / fx
    ty = -(t[:, 1] + (cy - height / 2) * tz / fy)
    return torch.stack([s, tx, ty], -1)


def deca_global_pose(R: torch.Tensor) -> torch.Tensor:
    """Axis-angle (N, 3) of the head's global rotation in DECA's camera frame (x right, y up,
    z towards the viewer) for our world-to-camera R (N, 3, 3): ``R_deca = FLIP @ R``."""
    return matrix_to_axis_angle(FLIP.to(R) @ R)
