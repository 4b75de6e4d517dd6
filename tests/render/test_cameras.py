"""Camera conventions: cv2.projectPoints agreement and round trips of every conversion."""
import math

import cv2
import numpy as np
import torch

from fitting.render import (camera_centers, from_pytorch3d, intrinsics_from_fov, look_at,
                            opencv_to_opengl_c2w, opengl_c2w_to_opencv, project_points,
                            scale_intrinsics, to_pytorch3d, world_to_camera)
from fitting.rotations import (axis_angle_to_matrix, matrix_to_axis_angle, matrix_to_rotation_6d,
                               rotation_6d_to_matrix)


def _cams(B=4, dtype=torch.float64):
    g = torch.Generator().manual_seed(1)
    aa = (torch.rand(B, 3, generator=g, dtype=dtype) - 0.5) * 2.0
    R = axis_angle_to_matrix(aa)
    t = torch.tensor([0.05, -0.02, 0.6], dtype=dtype) + 0.05 * torch.randn(B, 3, generator=g, dtype=dtype)
    K = torch.zeros(B, 3, 3, dtype=dtype)
    K[:, 0, 0] = 500 + 50 * torch.rand(B, generator=g, dtype=dtype)
    K[:, 1, 1] = 480 + 50 * torch.rand(B, generator=g, dtype=dtype)
    K[:, 0, 2], K[:, 1, 2], K[:, 2, 2] = 128.3, 121.7, 1
    return K, R, t, aa


def test_project_points_matches_cv2():
    K, R, t, aa = _cams()
    pts = 0.1 * torch.randn(4, 50, 3, dtype=torch.float64)
    uv, z = project_points(pts, K, R, t)
    for b in range(4):
        ref, _ = cv2.projectPoints(pts[b].numpy(), aa[b].numpy(), t[b].numpy(), K[b].numpy(), None)
        np.testing.assert_allclose(uv[b].numpy(), ref[:, 0], atol=1e-9, rtol=0)
    np.testing.assert_allclose(z.numpy(), world_to_camera(pts, R, t)[..., 2].numpy())
    assert (z > 0).all()


def test_rotation_representations_round_trip_through_projection():
    K, R, t, aa = _cams()
    pts = 0.1 * torch.randn(4, 20, 3, dtype=torch.float64)
    R_aa = axis_angle_to_matrix(matrix_to_axis_angle(R))
    R_6d = rotation_6d_to_matrix(matrix_to_rotation_6d(R))
    torch.testing.assert_close(matrix_to_axis_angle(R), aa, atol=1e-10, rtol=0)
    for R2 in (R_aa, R_6d):
        torch.testing.assert_close(R2, R, atol=1e-10, rtol=0)
        torch.testing.assert_close(project_points(pts, K, R2, t)[0], project_points(pts, K, R, t)[0])


def test_camera_centre_and_look_at():
    eye = torch.tensor([[0.3, 0.2, 0.8], [-0.5, 0.0, 0.1]], dtype=torch.float64)
    target = torch.tensor([[0.0, 0.05, 0.0], [0.1, 0.0, 0.0]], dtype=torch.float64)
    R, t = look_at(eye, target)
    torch.testing.assert_close(R @ R.transpose(1, 2), torch.eye(3, dtype=torch.float64).expand(2, 3, 3))
    torch.testing.assert_close(torch.det(R), torch.ones(2, dtype=torch.float64))
    torch.testing.assert_close(camera_centers(R, t), eye)
    K = intrinsics_from_fov(40, 200, 100, batch=2, dtype=torch.float64)
    uv, z = project_points(target[:, None], K, R, t)
    torch.testing.assert_close(uv[:, 0], torch.tensor([[100.0, 50.0]] * 2, dtype=torch.float64))
    # world up is image up (smaller v)
    uv_up, _ = project_points((target + torch.tensor([0, 0.01, 0.0], dtype=torch.float64))[:, None], K, R, t)
    assert (uv_up[:, 0, 1] < 50).all()
    # horizontal FOV: a point at half-angle projects onto the image's right edge u = W
    R0, t0 = torch.eye(3, dtype=torch.float64)[None], torch.zeros(1, 3, dtype=torch.float64)
    p = torch.tensor([[[math.tan(math.radians(20)), 0, 1]]], dtype=torch.float64)
    torch.testing.assert_close(project_points(p, K[:1], R0, t0)[0][0, 0, 0], torch.tensor(200.0, dtype=torch.float64))


def test_opengl_c2w_round_trip_and_meaning():
    K, R, t, _ = _cams()
    c2w = opencv_to_opengl_c2w(R, t)
    R2, t2 = opengl_c2w_to_opencv(c2w)
    torch.testing.assert_close(R2, R)
    torch.testing.assert_close(t2, t)
    # OpenGL camera looks down its -z axis and its +y is image up: a point straight ahead
    # along -z of the c2w projects to the principal point; +y of c2w is -y of OpenCV
    ahead = c2w[:, :3, 3] - 0.5 * c2w[:, :3, 2]
    uv, z = project_points(ahead[:, None], K, R, t)
    torch.testing.assert_close(uv[:, 0], K[:, :2, 2])
    torch.testing.assert_close(c2w[:, :3, 1], -R[:, 1, :])
    torch.testing.assert_close(opencv_to_opengl_c2w(*opengl_c2w_to_opencv(c2w)), c2w)


def _pytorch3d_screen_projection(p3d, pts, H, W):
    """pytorch3d's PerspectiveCameras(in_ndc=False).transform_points_screen, from its
    documented maths: X_view = X R + T (row vectors, x left, y up); screen-space K is
    converted to NDC with s = min(H, W) / 2: f_ndc = f / s, p_ndc = -(p - (W/2, H/2)) / s;
    NDC -> screen: u = W/2 - x_ndc * s, v = H/2 - y_ndc * s."""
    Xv = pts @ p3d["R"] + p3d["T"][:, None]
    s = min(H, W) / 2.0
    f_ndc = p3d["focal_length"] / s
    c = torch.tensor([W / 2.0, H / 2.0], dtype=pts.dtype)
    p_ndc = -(p3d["principal_point"] - c) / s
    ndc = f_ndc[:, None] * Xv[..., :2] / Xv[..., 2:] + p_ndc[:, None]
    return c - ndc * s


def test_pytorch3d_round_trip_and_projection():
    K, R, t, _ = _cams()
    H, W = 240, 256
    d = to_pytorch3d(K, R, t, (H, W))
    assert d["image_size"].shape == (4, 2) and d["image_size"][0].tolist() == [H, W]
    K2, R2, t2 = from_pytorch3d(d["R"], d["T"], d["focal_length"], d["principal_point"], d["image_size"])
    torch.testing.assert_close(K2, K)
    torch.testing.assert_close(R2, R)
    torch.testing.assert_close(t2, t)
    pts = 0.1 * torch.randn(4, 30, 3, dtype=torch.float64)
    torch.testing.assert_close(_pytorch3d_screen_projection(d, pts, H, W), project_points(pts, K, R, t)[0])
    torch.testing.assert_close(torch.det(d["R"]), torch.ones(4, dtype=torch.float64))


def test_scale_intrinsics_is_resizing():
    K, R, t, _ = _cams()
    pts = 0.1 * torch.randn(4, 10, 3, dtype=torch.float64)
    uv = project_points(pts, K, R, t)[0]
    uv2 = project_points(pts, scale_intrinsics(K, 0.5, 0.25), R, t)[0]
    torch.testing.assert_close(uv2, uv * torch.tensor([0.5, 0.25], dtype=torch.float64))
    # pixel (0, 0) covers [0, 1]^2; after halving, the corner stays at 0 and the centre 0.5 -> 0.25
    assert torch.allclose(scale_intrinsics(K, 2.0)[:, :2, 2], 2 * K[:, :2, 2])


def test_pinhole_inverse_matches_linalg_inv_with_skew():
    from fitting.render.cameras import pinhole_inverse
    K = torch.tensor([[[800.0, 3.0, 260.5], [0.0, 790.0, 349.25], [0.0, 0.0, 1.0]],
                      [[100.0, 0.0, 32.0], [0.0, 120.0, 30.0], [0.0, 0.0, 1.0]]], dtype=torch.float64)
    torch.testing.assert_close(pinhole_inverse(K), torch.linalg.inv(K), rtol=1e-12, atol=1e-15)
    torch.testing.assert_close(pinhole_inverse(K) @ K, torch.eye(3, dtype=torch.float64).expand(2, 3, 3))
