import math

import numpy as np
import pytest
import torch
from scipy.spatial.transform import Rotation

from fitting.rotations import (axis_angle_to_matrix, matrix_to_axis_angle, matrix_to_quaternion,
                               matrix_to_rotation_6d, quaternion_to_axis_angle, rotation_6d_to_matrix)


def random_aa(n, max_angle=math.pi * 0.999, dtype=torch.float64):
    axis = torch.nn.functional.normalize(torch.randn(n, 3, dtype=dtype), dim=-1)
    return axis * torch.rand(n, 1, dtype=dtype) * max_angle


def test_axis_angle_matches_scipy():
    aa = random_aa(100)
    ours = axis_angle_to_matrix(aa).numpy()
    ref = Rotation.from_rotvec(aa.numpy()).as_matrix()
    np.testing.assert_allclose(ours, ref, atol=1e-12)


def test_axis_angle_round_trip_including_small_and_near_pi():
    aa = torch.cat([random_aa(200), random_aa(20, 1e-5), torch.zeros(1, 3, dtype=torch.float64),
                    random_aa(20, math.pi - 1e-4) * 0 + torch.tensor([[0.0, 0.0, math.pi - 1e-6]], dtype=torch.float64)])
    back = matrix_to_axis_angle(axis_angle_to_matrix(aa))
    np.testing.assert_allclose(axis_angle_to_matrix(back).numpy(), axis_angle_to_matrix(aa).numpy(), atol=1e-9)
    np.testing.assert_allclose(back[:221].numpy(), aa[:221].numpy(), atol=1e-9)


def test_quaternion_matches_scipy_and_is_canonical():
    R = Rotation.random(50, random_state=1)
    q = matrix_to_quaternion(torch.from_numpy(R.as_matrix()))
    ref = R.as_quat()[:, [3, 0, 1, 2]]  # scipy is (x, y, z, w)
    ref = np.where(ref[:, :1] < 0, -ref, ref)
    np.testing.assert_allclose(q.numpy(), ref, atol=1e-12)
    np.testing.assert_allclose(quaternion_to_axis_angle(q).numpy(), R.as_rotvec(), atol=1e-9)


def test_6d_round_trip_and_orthonormal():
    R = axis_angle_to_matrix(random_aa(50))
    np.testing.assert_allclose(rotation_6d_to_matrix(matrix_to_rotation_6d(R)).numpy(), R.numpy(), atol=1e-12)
    R2 = rotation_6d_to_matrix(torch.randn(50, 6, dtype=torch.float64))
    eye = torch.eye(3, dtype=torch.float64).expand(50, 3, 3)
    np.testing.assert_allclose((R2.transpose(1, 2) @ R2).numpy(), eye.numpy(), atol=1e-12)
    assert torch.allclose(torch.det(R2), torch.ones(50, dtype=torch.float64))


@pytest.mark.parametrize("scale", [0.0, 1e-5, 1.0, 3.0])
def test_axis_angle_gradcheck(scale):
    aa = (random_aa(4, 1.0) * scale).requires_grad_(True)
    assert torch.autograd.gradcheck(axis_angle_to_matrix, (aa,))


def test_gradient_at_zero_is_exact():
    # d R / d aa at 0 is the skew generator: R ~ I + [aa]_x
    aa = torch.zeros(1, 3, dtype=torch.float64, requires_grad=True)
    R = axis_angle_to_matrix(aa)
    g = torch.autograd.grad(R[0, 1, 0], aa)[0]  # R[1,0] = +z component
    np.testing.assert_allclose(g.numpy(), [[0, 0, 1]], atol=1e-12)


def test_matrix_to_axis_angle_gradcheck():
    R = axis_angle_to_matrix(random_aa(4, 2.5)).requires_grad_(True)
    assert torch.autograd.gradcheck(matrix_to_axis_angle, (R,))


def test_bad_shapes_raise():
    with pytest.raises(ValueError, match="last dimension 3"):
        axis_angle_to_matrix(torch.zeros(2, 4))
    with pytest.raises(ValueError, match="3, 3"):
        matrix_to_quaternion(torch.zeros(2, 3, 4))


@pytest.mark.parametrize("scale", [0.0, 1e-5, 0.3, 2.5])
def test_right_jacobian_inverse_against_differences(scale):
    """log(exp([phi]) exp([v])) - phi against Jr^-1(phi) v, and the left form with -phi, by
    central differences in float64, at zero, the series branch, and moderate to large angles."""
    from fitting.rotations import right_jacobian_inverse
    phi = torch.tensor([[0.6, -0.8, 0.3], [-0.2, 0.1, 0.9]], dtype=torch.float64) * scale
    E = axis_angle_to_matrix(phi)
    eps = 1e-6
    for side in ("right", "left"):
        cols = []
        for j in range(3):
            v = torch.zeros(3, dtype=torch.float64)
            v[j] = eps
            dv = axis_angle_to_matrix(v)
            move = (lambda d: E @ d) if side == "right" else (lambda d: d @ E)
            cols.append((matrix_to_axis_angle(move(dv)) - matrix_to_axis_angle(move(dv.T))) / (2 * eps))
        ref = torch.stack(cols, -1)
        got = right_jacobian_inverse(phi if side == "right" else -phi)
        assert torch.allclose(got, ref, atol=1e-7), (side, (got - ref).abs().max())


@pytest.mark.parametrize("scale", [0.0, 1e-4, 1.1e-3, 0.3, 3.0])
def test_left_jacobian_against_differences(scale):
    """d R / d phi_k = [J_l(phi) e_k]x R: J_l against central differences of torch's matrix
    exponential (independent of axis_angle_to_matrix) in float64, at zero, in and just beyond
    the series branch, and at moderate and large angles; float32 within 2e-7 of float64."""
    from fitting.rotations import left_jacobian, skew
    phi = torch.tensor([[0.6, -0.8, 0.3], [-0.2, 0.1, 0.9]], dtype=torch.float64)
    phi = phi / phi.norm(dim=-1, keepdim=True) * scale
    R = torch.linalg.matrix_exp(skew(phi))
    eps = 1e-6
    cols = []
    for k in range(3):
        d = torch.zeros(3, dtype=torch.float64)
        d[k] = eps
        dR = (torch.linalg.matrix_exp(skew(phi + d)) - torch.linalg.matrix_exp(skew(phi - d))) / (2 * eps)
        W = dR @ R.transpose(1, 2)
        cols.append(torch.stack([W[:, 2, 1], W[:, 0, 2], W[:, 1, 0]], -1))      # the skew matrix's vector
    ref = torch.stack(cols, -1)
    got = left_jacobian(phi)
    assert torch.allclose(got, ref, atol=1e-8), (got - ref).abs().max()
    assert (left_jacobian(phi.float()).double() - got).abs().max() < 2e-7
