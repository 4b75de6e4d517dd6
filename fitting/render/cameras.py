"""Camera conventions: the only module that knows them (see docs/CONVENTIONS.md).

OpenCV pinhole, batched per view:

* ``K (B, 3, 3)`` = ``[[fx, 0, cx], [0, fy, cy], [0, 0, 1]]`` in pixels, pixel centres at
  +0.5 (the top-left *corner* of the image is (0, 0); a centred camera has cx = W / 2).
  The projection ``u = fx X / Z + cx`` is OpenCV's; only the meaning of an integer
  coordinate differs from OpenCV's (which puts pixel centres at integers).
* World-to-camera extrinsics ``X_cam = R X_world + t``, ``R (B, 3, 3)``, ``t (B, 3)``;
  camera axes x right, y down, z forward. Camera centre ``C = -R^T t``.

Conversions to the other conventions users hold:

* OpenGL / NeRF camera-to-world ``c2w (B, 4, 4)``: axes x right, y up, z backward, so
  ``c2w[:3, :3] = R^T diag(1, -1, -1)`` and ``c2w[:3, 3] = C``.
* pytorch3d ``PerspectiveCameras(in_ndc=False)``: row-vector convention
  ``X_view = X_world @ R_p3d + T_p3d`` with view axes x left, y up, z forward, so
  ``R_p3d = R^T diag(-1, -1, 1)`` and ``T_p3d = diag(-1, -1, 1) t``; screen-space
  ``focal_length = (fx, fy)``, ``principal_point = (cx, cy)`` and ``image_size = (H, W)``.
  pytorch3d's screen <-> NDC maps use ``W / 2`` and ``min(H, W) / 2`` (not ``W - 1``),
  i.e. the same +0.5 pixel-centre convention as ours, so ``transform_points_screen`` of
  such a camera reproduces our ``project_points`` (the test spells the maths out).

Every function is differentiable and works for float32 / float64 on CPU or CUDA.
Rotation-representation conversions (axis-angle, 6D, matrix) live in
:mod:`fitting.rotations`; this module only re-uses them.
"""
from __future__ import annotations

import math
from typing import NamedTuple

import torch

from fitting.rotations import axis_angle_to_matrix, matrix_to_axis_angle  # noqa: F401  (re-export)
from fitting.rotations import matrix_to_rotation_6d, rotation_6d_to_matrix  # noqa: F401

__all__ = [
    "Cameras", "prepare_cameras",
    "project_points", "world_to_camera", "camera_centers", "intrinsics_from_fov", "look_at",
    "opencv_to_opengl_c2w", "opengl_c2w_to_opencv", "to_pytorch3d", "from_pytorch3d",
    "scale_intrinsics", "unscale_intrinsics", "check_cameras", "pinhole_inverse",
    "FLIP", "rot_to_matrix", "matrix_to_rot", "rotation_angle_deg", "scale_focal", "view_rotation",
]

_FLIP_YZ = (1.0, -1.0, -1.0)   # OpenCV camera axes <-> OpenGL camera axes
_FLIP_XY = (-1.0, -1.0, 1.0)   # OpenCV camera axes <-> pytorch3d view axes


def check_cameras(K: torch.Tensor, R: torch.Tensor, t: torch.Tensor, batch: int | None = None) -> None:
    """Raise a ValueError unless K (B,3,3), R (B,3,3), t (B,3) agree with each other (and ``batch``)."""
    if K.dim() != 3 or K.shape[-2:] != (3, 3):
        raise ValueError(f"K must be (B, 3, 3), got {tuple(K.shape)}; add a batch dim with K[None]")
    if R.dim() != 3 or R.shape[-2:] != (3, 3):
        raise ValueError(f"R must be (B, 3, 3), got {tuple(R.shape)}; add a batch dim with R[None]")
    if t.dim() != 2 or t.shape[-1] != 3:
        raise ValueError(f"t must be (B, 3), got {tuple(t.shape)}; add a batch dim with t[None]")
    b = {K.shape[0], R.shape[0], t.shape[0]}
    if len(b) != 1:
        raise ValueError(f"K, R, t batch sizes differ: {K.shape[0]}, {R.shape[0]}, {t.shape[0]}; "
                         "give one camera per view")
    if batch is not None and b.pop() != batch:
        raise ValueError(f"cameras have batch {K.shape[0]} but the points/verts have {batch}; "
                         "give one camera per view")


def pinhole_inverse(K: torch.Tensor) -> torch.Tensor:
    """Inverse of pinhole intrinsics K (B, 3, 3) = [[fx, s, cx], [0, fy, cy], [0, 0, 1]].

    Closed form instead of torch.linalg.inv: elementwise, so it rounds identically on CPU
    and CUDA and never syncs the host (linalg.inv checks for singularity on the device)."""
    fx, s, cx = K[:, 0, 0], K[:, 0, 1], K[:, 0, 2]
    fy, cy = K[:, 1, 1], K[:, 1, 2]
    ifx, ify = 1.0 / fx, 1.0 / fy
    zero, one = torch.zeros_like(fx), torch.ones_like(fx)
    return torch.stack([ifx, -s * ifx * ify, (s * cy - cx * fy) * ifx * ify,
                        zero, ify, -cy * ify,
                        zero, zero, one], -1).view(-1, 3, 3)


class Cameras(NamedTuple):
    """B pinhole cameras checked once, with K^-1: what every pass of one render shares
    (MeshRenderer.forward prepares them once and hands them down).

    K, Kinv: (B, 3, 3), Kinv = pinhole_inverse(K); R: (B, 3, 3); t: (B, 3)."""
    K: torch.Tensor
    Kinv: torch.Tensor
    R: torch.Tensor
    t: torch.Tensor


def prepare_cameras(K: torch.Tensor, R: torch.Tensor, t: torch.Tensor, batch: int | None = None) -> Cameras:
    """check_cameras(K, R, t, batch), then Cameras(K, pinhole_inverse(K), R, t)."""
    check_cameras(K, R, t, batch)
    return Cameras(K, pinhole_inverse(K), R, t)


def world_to_camera(points: torch.Tensor, R: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """points: (B, N, 3) world, R: (B, 3, 3), t: (B, 3) -> (B, N, 3) OpenCV camera frame."""
    if points.dim() != 3 or points.shape[-1] != 3:
        raise ValueError(f"points must be (B, N, 3), got {tuple(points.shape)}")
    # elementwise rather than a matmul: BLAS and cuBLAS round differently (blocking, FMA),
    # and the rasterizer needs the same camera-space vertices on CPU and CUDA to pick the
    # same face at pixel centres lying on an edge
    x, y, z = points.unbind(-1)                                       # (B, N) each
    r = R[:, :, :, None]                                              # (B, 3, 3, 1)
    return torch.stack([((x * r[:, i, 0] + y * r[:, i, 1]) + z * r[:, i, 2]) + t[:, i, None]
                        for i in range(3)], -1)


def project_points(points: torch.Tensor, K: torch.Tensor, R: torch.Tensor, t: torch.Tensor):
    """Pinhole projection (no distortion), identical to ``cv2.projectPoints``.

    points: (B, N, 3) world; K, R: (B, 3, 3); t: (B, 3).
    Returns ``uv (B, N, 2)`` continuous pixel coordinates and ``z (B, N)`` camera depth.
    Points with z <= 0 get meaningless uv; check z.
    """
    check_cameras(K, R, t, points.shape[0] if points.dim() == 3 else None)
    x = world_to_camera(points, R, t)
    z = x[..., 2]
    xy = x[..., :2] / z[..., None]
    f = torch.stack([K[:, 0, 0], K[:, 1, 1]], -1)[:, None, :]
    c = K[:, :2, 2][:, None, :]
    skew = K[:, 0, 1][:, None]
    uv = xy * f + c
    uv = torch.stack([uv[..., 0] + skew * xy[..., 1], uv[..., 1]], -1)
    return uv, z


def camera_centers(R: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """R: (B, 3, 3), t: (B, 3) -> camera centres C = -R^T t: (B, 3) in world."""
    return -(R.transpose(-1, -2) @ t[..., None])[..., 0]


def intrinsics_from_fov(fov_x_deg: float, width: int, height: int, batch: int = 1,
                        dtype: torch.dtype = torch.float32, device=None) -> torch.Tensor:
    """Square-pixel K (batch, 3, 3) with horizontal field of view ``fov_x_deg``, cx = W/2, cy = H/2."""
    if not 0 < fov_x_deg < 180:
        raise ValueError(f"fov_x_deg must be in (0, 180), got {fov_x_deg}")
    f = 0.5 * width / math.tan(math.radians(fov_x_deg) / 2)
    K = torch.tensor([[f, 0, width / 2], [0, f, height / 2], [0, 0, 1]], dtype=dtype, device=device)
    return K.expand(batch, 3, 3).clone()


def look_at(eye: torch.Tensor, target: torch.Tensor, up: torch.Tensor | None = None):
    """OpenCV world-to-camera (R (B,3,3), t (B,3)) of cameras at ``eye`` looking at ``target``.

    eye, target, up: (B, 3); ``up`` (default world +y) appears as up in the image, i.e. the
    camera's y axis (down) is as close as possible to ``-up``.
    """
    if up is None:
        up = torch.tensor([0.0, 1.0, 0.0], dtype=eye.dtype, device=eye.device).expand_as(eye)
    z = torch.nn.functional.normalize(target - eye, dim=-1)
    x = torch.nn.functional.normalize(torch.cross(-up, z, dim=-1), dim=-1)
    y = torch.cross(z, x, dim=-1)
    R = torch.stack([x, y, z], dim=-2)  # rows are the camera axes in world coordinates
    t = -(R @ eye[..., None])[..., 0]
    return R, t


def opencv_to_opengl_c2w(R: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """OpenCV world-to-camera (R, t) -> OpenGL/NeRF camera-to-world (B, 4, 4)."""
    flip = R.new_tensor(_FLIP_YZ)
    c2w = R.new_zeros(R.shape[0], 4, 4)
    c2w[:, :3, :3] = R.transpose(-1, -2) * flip  # scales columns: camera y, z axes reversed
    c2w[:, :3, 3] = camera_centers(R, t)
    c2w[:, 3, 3] = 1
    return c2w


def opengl_c2w_to_opencv(c2w: torch.Tensor):
    """OpenGL/NeRF camera-to-world (B, 4, 4) or (B, 3, 4) -> OpenCV world-to-camera (R, t)."""
    if c2w.dim() != 3 or c2w.shape[-2] not in (3, 4) or c2w.shape[-1] != 4:
        raise ValueError(f"c2w must be (B, 4, 4) or (B, 3, 4), got {tuple(c2w.shape)}")
    R = (c2w[:, :3, :3] * c2w.new_tensor(_FLIP_YZ)).transpose(-1, -2)
    t = -(R @ c2w[:, :3, 3:])[..., 0]
    return R, t


def to_pytorch3d(K: torch.Tensor, R: torch.Tensor, t: torch.Tensor, image_size) -> dict:
    """Arguments for pytorch3d ``PerspectiveCameras(in_ndc=False, **d)`` seeing what we see.

    image_size: (H, W). Returns R (B,3,3), T (B,3), focal_length (B,2), principal_point (B,2),
    image_size (B,2) as (H, W). Skew in K is not representable and must be zero.
    """
    check_cameras(K, R, t)
    flip = R.new_tensor(_FLIP_XY)
    B = R.shape[0]
    h, w = image_size
    return dict(
        R=R.transpose(-1, -2) * flip,           # columns of R^T = rows of R, x/y rows negated
        T=t * flip,
        focal_length=torch.stack([K[:, 0, 0], K[:, 1, 1]], -1),
        principal_point=K[:, :2, 2].clone(),
        image_size=torch.tensor([h, w], dtype=K.dtype, device=K.device).expand(B, 2).clone(),
    )


def from_pytorch3d(R: torch.Tensor, T: torch.Tensor, focal_length: torch.Tensor,
                   principal_point: torch.Tensor, image_size=None):
    """Inverse of :func:`to_pytorch3d` (screen-space, in_ndc=False cameras) -> (K, R, t).

    focal_length: (B, 2) or (B, 1); principal_point: (B, 2); image_size is accepted for
    symmetry and unused (screen-space intrinsics do not depend on it).
    """
    flip = R.new_tensor(_FLIP_XY)
    B = R.shape[0]
    f = focal_length.expand(B, 2) if focal_length.shape[-1] == 2 else focal_length.expand(B, 1).repeat(1, 2)
    K = R.new_zeros(B, 3, 3)
    K[:, 0, 0], K[:, 1, 1] = f[:, 0], f[:, 1]
    K[:, :2, 2] = principal_point
    K[:, 2, 2] = 1
    R_cv = (R * flip).transpose(-1, -2)
    return K, R_cv, T * flip


def unscale_intrinsics(K: torch.Tensor, scale: torch.Tensor, offset: torch.Tensor | None = None) -> torch.Tensor:
    """K (N, 3, 3) of images resized and shifted by ``u_fit = s u + offset`` -> K of the original
    images (with pixel centres at +0.5 the continuous image plane maps affinely, so this is exact).

    scale: (N,) isotropic or (N, 2) (sx, sy); offset: (N, 2) in resized pixels, or None (0)."""
    s = scale[:, None].expand(-1, 2) if scale.dim() == 1 else scale
    A = torch.zeros_like(K)
    A[:, 0, 0], A[:, 1, 1] = 1 / s[:, 0], 1 / s[:, 1]
    if offset is not None:
        A[:, :2, 2] = -offset / s
    A[:, 2, 2] = 1
    return A @ K


def scale_intrinsics(K: torch.Tensor, sx: float, sy: float | None = None) -> torch.Tensor:
    """K for an image resized by (sx, sy) (new_W = sx * W). With pixel centres at +0.5 the
    continuous image plane simply scales, so fx, cx scale by sx and fy, cy by sy."""
    sy = sx if sy is None else sy
    S = K.new_tensor([[sx, 0, 0], [0, sy, 0], [0, 0, 1]])
    return S @ K


# -- the fit's camera parameterisation ----------------------------------------------------------
# Rotations of fitted cameras are stored relative to FLIP = diag(1, -1, -1) (a camera on the +z
# axis looking at the face has R = FLIP): R = exp(rot) @ FLIP. The whole +-90 deg range around
# the face then stays far from the axis-angle singularity at pi.
FLIP = torch.tensor([[1.0, 0.0, 0.0], [0.0, -1.0, 0.0], [0.0, 0.0, -1.0]])

# The shared focal factor scales fx, the skew and fy; the principal point stays.
_FOCAL_MASK = ((1.0, 1.0, 0.0), (0.0, 1.0, 0.0), (0.0, 0.0, 0.0))


def rot_to_matrix(rot: torch.Tensor) -> torch.Tensor:
    """rot: (..., 3) -> world-to-camera R (..., 3, 3) = exp(rot) @ FLIP."""
    return axis_angle_to_matrix(rot) @ FLIP.to(rot)


def matrix_to_rot(R: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`rot_to_matrix`. R: (..., 3, 3) -> (..., 3)."""
    return matrix_to_axis_angle(R @ FLIP.to(R))  # FLIP is its own inverse


def rotation_angle_deg(Ra: torch.Tensor, Rb: torch.Tensor) -> torch.Tensor:
    """(...,) geodesic angle in degrees between rotation matrices (..., 3, 3)."""
    tr = (Ra.transpose(-1, -2) @ Rb).diagonal(dim1=-2, dim2=-1).sum(-1)
    return torch.rad2deg(torch.arccos(((tr - 1) / 2).clamp(-1, 1)))


def scale_focal(K0: torch.Tensor, log_focal: torch.Tensor) -> torch.Tensor:
    """K0 (B, 3, 3) with fx, fy (and skew) multiplied by exp(log_focal) (a scalar tensor)."""
    s = torch.exp(log_focal).reshape(()) - 1
    return K0 * (1 + s * K0.new_tensor(_FOCAL_MASK))


def view_rotation(R: torch.Tensor, head: torch.Tensor) -> torch.Tensor:
    """(B, 3, 3) rotation of the head as a camera at FLIP sees it (the frame in which the
    model picks each view's jaw-line contour): FLIP @ R @ head."""
    return FLIP.to(R) @ R @ head
