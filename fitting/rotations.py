"""Rotation representations: axis-angle, rotation matrix, 6D (Zhou et al. 2019).

Pure, batched, differentiable functions over arbitrary leading dimensions ``(..., )``.
Both FLAME's skinning and the cameras use these; nothing here knows about conventions
of image axes or camera frames (that is :mod:`fitting.render.cameras`).

Small angles use Taylor series so that values *and* gradients are exact at zero
(smplx's ``batch_rodrigues`` adds 1e-8 to the angle instead, which biases the gradient).
"""
from __future__ import annotations

import torch

_SMALL = 1e-6  # theta^2 below this uses the Taylor branch (error ~ theta^6 / 5040)


def skew(v: torch.Tensor) -> torch.Tensor:
    """Cross-product matrix. v: (..., 3) -> (..., 3, 3) with skew(v) @ w == cross(v, w)."""
    x, y, z = v.unbind(-1)
    o = torch.zeros_like(x)
    return torch.stack([o, -z, y, z, o, -x, -y, x, o], dim=-1).reshape(v.shape[:-1] + (3, 3))


def axis_angle_to_matrix(aa: torch.Tensor) -> torch.Tensor:
    """Rodrigues' formula. aa: (..., 3) axis * angle (radians) -> R: (..., 3, 3)."""
    if aa.shape[-1] != 3:
        raise ValueError(f"axis-angle must have last dimension 3, got shape {tuple(aa.shape)}")
    theta2 = (aa * aa).sum(-1, keepdim=True)[..., None]  # (..., 1, 1)
    small = theta2 < _SMALL
    safe = torch.where(small, torch.ones_like(theta2), theta2)
    theta = safe.sqrt()
    # R = I + a K + b K^2 with K = skew(aa) (unnormalised), a = sin t / t, b = (1 - cos t) / t^2
    a = torch.where(small, 1 - theta2 / 6 + theta2 * theta2 / 120, torch.sin(theta) / theta)
    b = torch.where(small, 0.5 - theta2 / 24 + theta2 * theta2 / 720, (1 - torch.cos(theta)) / safe)
    k = skew(aa)
    eye = torch.eye(3, dtype=aa.dtype, device=aa.device).expand(k.shape)
    return eye + a * k + b * (k @ k)


def left_jacobian(phi: torch.Tensor) -> torch.Tensor:
    """SO(3)'s left Jacobian at rotation vectors phi (..., 3) -> (..., 3, 3):
    exp([phi + v]) = exp([J_l(phi) v]) exp([phi]) + O(|v|^2), so that
    d R / d phi_k = [J_l(phi) e_k]x R with R = :func:`axis_angle_to_matrix` (phi).
    J_l = I + b S + c S^2, S = [phi]x, b = (1 - cos t) / t^2, c = (t - sin t) / t^3."""
    theta2 = (phi * phi).sum(-1)[..., None, None]
    small = theta2 < _SMALL
    safe = torch.where(small, torch.ones_like(theta2), theta2)
    theta = safe.sqrt()
    half = torch.sin(theta / 2) / theta                 # 1 - cos t = 2 sin^2(t/2), without cancellation
    b = torch.where(small, 0.5 - theta2 / 24 + theta2 * theta2 / 720, 2 * half * half)
    # t - sin t cancels in float32, but c multiplies S^2 ~ t^2: its absolute error stays ~1e-7
    c = torch.where(small, 1 / 6 - theta2 / 120 + theta2 * theta2 / 5040, (theta - torch.sin(theta)) / (safe * theta))
    S = skew(phi)
    eye = torch.eye(3, dtype=phi.dtype, device=phi.device).expand(S.shape)
    return eye + b * S + c * (S @ S)


def right_jacobian_inverse(phi: torch.Tensor) -> torch.Tensor:
    """Inverse of SO(3)'s right Jacobian at rotation vectors phi (..., 3) -> (..., 3, 3):
    log(exp([phi]) exp([v])) = phi + Jr^-1(phi) v + O(|v|^2). The left one is Jr^-1(-phi):
    log(exp([v]) exp([phi])) = phi + Jr^-1(-phi) v + O(|v|^2)."""
    theta2 = (phi * phi).sum(-1)[..., None, None]
    small = theta2 < 1e-8
    safe = torch.where(small, torch.ones_like(theta2), theta2)
    theta = safe.sqrt()
    # c = 1/theta^2 - (1 + cos) / (2 theta sin), whose series at 0 is 1/12 + theta^2/720
    c = torch.where(small, 1 / 12 + theta2 / 720, 1 / safe - (1 + torch.cos(theta)) / (2 * theta * torch.sin(theta)))
    S = skew(phi)
    eye = torch.eye(3, dtype=phi.dtype, device=phi.device).expand(S.shape)
    return eye + S / 2 + c * (S @ S)


def matrix_to_quaternion(R: torch.Tensor) -> torch.Tensor:
    """R: (..., 3, 3) -> unit quaternion (..., 4) as (w, x, y, z) with w >= 0.

    Picks, per matrix, the best-conditioned of the four Shepperd candidates, so it is
    accurate for every angle including 180 degrees.
    """
    if R.shape[-2:] != (3, 3):
        raise ValueError(f"rotation matrices must be (..., 3, 3), got {tuple(R.shape)}")
    m = R
    m00, m11, m22 = m[..., 0, 0], m[..., 1, 1], m[..., 2, 2]
    # 4 * q_i^2 for each component; the largest gives a well-conditioned division.
    q_abs2 = torch.stack([1 + m00 + m11 + m22, 1 + m00 - m11 - m22,
                          1 - m00 + m11 - m22, 1 - m00 - m11 + m22], -1)
    q_abs = q_abs2.clamp_min(1e-12).sqrt()  # 2|q_i|
    d21, d12 = m[..., 2, 1], m[..., 1, 2]
    d02, d20 = m[..., 0, 2], m[..., 2, 0]
    d10, d01 = m[..., 1, 0], m[..., 0, 1]
    # Row i: 4 q_i * q (unnormalised) from the i-th candidate.
    cands = torch.stack([
        torch.stack([q_abs2[..., 0], d21 - d12, d02 - d20, d10 - d01], -1),
        torch.stack([d21 - d12, q_abs2[..., 1], d10 + d01, d02 + d20], -1),
        torch.stack([d02 - d20, d10 + d01, q_abs2[..., 2], d21 + d12], -1),
        torch.stack([d10 - d01, d02 + d20, d21 + d12, q_abs2[..., 3]], -1),
    ], -2) / (2 * q_abs[..., None])
    best = q_abs2.argmax(-1)
    q = torch.gather(cands, -2, best[..., None, None].expand(best.shape + (1, 4))).squeeze(-2)
    q = q / q.norm(dim=-1, keepdim=True)
    return torch.where(q[..., :1] < 0, -q, q)


def quaternion_to_axis_angle(q: torch.Tensor) -> torch.Tensor:
    """q: (..., 4) (w, x, y, z), any norm > 0 -> axis-angle (..., 3) with angle in [0, pi]."""
    q = q / q.norm(dim=-1, keepdim=True)
    q = torch.where(q[..., :1] < 0, -q, q)
    w, v = q[..., :1], q[..., 1:]
    n2 = (v * v).sum(-1, keepdim=True)
    small = n2 < _SMALL
    n = torch.where(small, torch.ones_like(n2), n2).sqrt()
    # angle / sin(angle/2) = 2 atan2(n, w) / n ; near 0 use its series in n (w ~ 1).
    scale = torch.where(small, 2 / w * (1 - n2 / (3 * w * w)), 2 * torch.atan2(n, w) / n)
    return v * scale


def matrix_to_axis_angle(R: torch.Tensor) -> torch.Tensor:
    """R: (..., 3, 3) -> axis-angle (..., 3), angle in [0, pi]."""
    return quaternion_to_axis_angle(matrix_to_quaternion(R))


def rotation_6d_to_matrix(d6: torch.Tensor) -> torch.Tensor:
    """6D representation (first two *columns* of R, Zhou et al. 2019) -> R: (..., 3, 3).

    d6: (..., 6) = (c0, c1); Gram-Schmidt makes them orthonormal, the third is their cross.
    """
    if d6.shape[-1] != 6:
        raise ValueError(f"6D rotations must have last dimension 6, got {tuple(d6.shape)}")
    a1, a2 = d6[..., :3], d6[..., 3:]
    b1 = torch.nn.functional.normalize(a1, dim=-1)
    b2 = torch.nn.functional.normalize(a2 - (b1 * a2).sum(-1, keepdim=True) * b1, dim=-1)
    b3 = torch.cross(b1, b2, dim=-1)
    return torch.stack([b1, b2, b3], dim=-1)


def matrix_to_rotation_6d(R: torch.Tensor) -> torch.Tensor:
    """R: (..., 3, 3) -> (..., 6), the first two columns stacked (inverse of the above)."""
    return torch.cat([R[..., :, 0], R[..., :, 1]], dim=-1)
