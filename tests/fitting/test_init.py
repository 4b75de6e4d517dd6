"""Initialisation and the rigid solver against synthetic cameras with known answers."""
from __future__ import annotations

import numpy as np
import torch

from fitting.init import align_sfm_poses, pnp_views, umeyama
from fitting.render.cameras import look_at, matrix_to_rot, project_points, rot_to_matrix, rotation_angle_deg


def _rig(n=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    yaw = torch.linspace(-1.0, 1.0, n, dtype=torch.float64)
    eye = torch.stack([torch.sin(yaw), 0.15 * torch.cos(2 * yaw), torch.cos(yaw)], -1)
    R, t = look_at(eye, 0.01 * torch.randn(n, 3, generator=g, dtype=torch.float64))
    K = torch.tensor([[900.0, 0, 128], [0, 900.0, 128], [0, 0, 1]], dtype=torch.float64).repeat(n, 1, 1)
    pts = torch.randn(68, 3, generator=g, dtype=torch.float64) * torch.tensor([0.05, 0.05, 0.02],
                                                                               dtype=torch.float64)
    pts[:, 2] += 0.08  # a face-like slab in front of the head centre
    return K, R, t, pts


def test_rot_parametrisation_round_trip():
    rot = torch.randn(10, 3, dtype=torch.float64) * 0.8
    R = rot_to_matrix(rot)
    torch.testing.assert_close(rot_to_matrix(matrix_to_rot(R)), R)
    # zero = a camera on +z looking at the origin (world y up appears up in the image)
    R0, _ = look_at(torch.tensor([[0.0, 0.0, 1.0]], dtype=torch.float64), torch.zeros(1, 3, dtype=torch.float64))
    torch.testing.assert_close(rot_to_matrix(torch.zeros(1, 3, dtype=torch.float64)), R0)


def test_pnp_recovers_poses_with_an_outlier():
    K, R, t, pts = _rig()
    uv, _ = project_points(pts.expand(len(K), -1, -1), K, R, t)
    uv = uv.numpy() + np.random.default_rng(0).normal(0, 0.3, uv.shape)
    uv[2, 30] += 80  # a wild detection must not move the pose
    Rp, tp, ok, rmse, n_in = pnp_views(uv, pts.numpy(), K.numpy())
    assert ok.all()
    ang = rotation_angle_deg(torch.as_tensor(Rp), R)
    assert ang.max() < 0.5, ang
    assert np.abs(tp - t.numpy()).max() < 0.01


def test_umeyama_exact():
    rng = np.random.default_rng(1)
    src = rng.normal(size=(20, 3))
    Q = np.linalg.qr(rng.normal(size=(3, 3)))[0]
    Q *= np.sign(np.linalg.det(Q))
    dst = 2.5 * src @ Q.T + np.array([1.0, -2.0, 0.5])
    s, Q2, T = umeyama(src, dst)
    assert abs(s - 2.5) < 1e-9 and np.abs(Q2 - Q).max() < 1e-9 and np.abs(T - [1.0, -2.0, 0.5]).max() < 1e-9


def test_align_sfm_poses_recovers_similarity_and_flags_bad_view():
    K, R, t, _ = _rig(8)
    R, t = R.numpy(), t.numpy()
    # SfM world: X_sfm = (Q^T (X - T)) / s for a known similarity
    rng = np.random.default_rng(2)
    Q = np.linalg.qr(rng.normal(size=(3, 3)))[0]
    Q *= np.sign(np.linalg.det(Q))
    s, T = 0.37, np.array([0.3, -0.1, 2.0])
    C = -np.einsum("nji,nj->ni", R, t)
    C_sfm = (C - T) @ Q / s
    R_sfm = R @ Q
    t_sfm = -np.einsum("nij,nj->ni", R_sfm, C_sfm)
    R_sfm[5] = R_sfm[5] @ rot_to_matrix(torch.tensor([0.0, 0.5, 0.0], dtype=torch.float64)).numpy() @ np.diag([1, -1, -1])
    al = align_sfm_poses(R_sfm, t_sfm, R, t)
    assert abs(al["s"] - s) < 1e-6
    assert al["disagree"].tolist() == [i == 5 for i in range(8)]
    good = np.arange(8) != 5
    assert al["angle_deg"][good].max() < 1e-4  # arccos near 1 limits the precision
    np.testing.assert_allclose(al["t"][good], t[good], atol=1e-6)
