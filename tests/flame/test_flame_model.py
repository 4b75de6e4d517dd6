"""FLAME forward: template, rigid global rotation, jaw locality, linearity, landmarks, gradients."""
import numpy as np
import pytest
import torch

from fitting.flame import FLAME, POSE_SLICES
from fitting.rotations import axis_angle_to_matrix


def pose_with(**parts):
    pose = torch.zeros(1, 15)
    for name, aa in parts.items():
        pose[0, POSE_SLICES[name]] = torch.tensor(aa, dtype=torch.float32)
    return pose


def test_shapes_and_zero_params_give_template(standin):
    v, lmk = standin()
    assert v.shape == (1, standin.v_template.shape[0], 3) and lmk.shape == (1, 68, 3)
    assert v.dtype == torch.float32 and standin.faces.dtype == torch.int64
    torch.testing.assert_close(v[0], standin.v_template, atol=1e-6, rtol=0)
    v2, _ = standin(torch.zeros(3, standin.n_shape), torch.zeros(3, standin.n_exp), torch.zeros(3, 15))
    assert v2.shape[0] == 3
    torch.testing.assert_close(v2, v.expand(3, -1, -1), atol=1e-6, rtol=0)


def test_global_rotation_is_rigid(standin):
    shape = torch.randn(1, standin.n_shape)
    aa = [0.3, -0.7, 0.2]
    v0, _ = standin(shape=shape)
    v1, _ = standin(shape=shape, pose=pose_with(**{"global": aa}))
    R = axis_angle_to_matrix(torch.tensor([aa]))[0]
    # LBS rotates about the root joint: v1 = R v0 + c with one c for every vertex.
    c = v1[0] - v0[0] @ R.T
    assert (c - c.mean(0)).abs().max() < 1e-5
    exact = "donot_use_mm_for_euclid_dist"
    d0 = torch.cdist(v0[0, ::7], v0[0, ::7], compute_mode=exact)
    d1 = torch.cdist(v1[0, ::7], v1[0, ::7], compute_mode=exact)
    assert (d0 - d1).abs().max() < 1e-5


def test_jaw_moves_lower_face_only(standin):
    v0, l0 = standin()
    v1, l1 = standin(pose=pose_with(jaw=[0.25, 0, 0]))
    moved = (v1 - v0)[0].norm(dim=-1)
    eye_y = l0[0, 36:48, 1].mean()
    skull = v0[0, :, 1] > eye_y  # everything above the eyes
    assert moved[skull].max() < 1e-6
    assert (l1 - l0)[0, 8].norm() > 5e-3  # chin landmark moves by more than 5 mm
    mouth_y = l0[0, 48:68, 1].mean()
    assert moved[v0[0, :, 1] < mouth_y].max() > 5e-3


def test_eye_rotation_moves_only_eye_regions(flame_topology_standin_path):
    m = FLAME(flame_topology_standin_path)
    v0, _ = m()
    v1, _ = m(pose=pose_with(left_eye=[0, 0.3, 0]))
    moved = (v1 - v0)[0].norm(dim=-1) > 1e-7
    # The FLAME template's eyeballs are 546-vertex components on +x (left) and -x (right).
    assert 0 < moved.sum() <= 546
    assert (v0[0, moved, 0] > 0).all()


def test_linear_in_shape_and_expression(standin):
    v0, _ = standin()
    a, b = torch.randn(1, standin.n_shape), torch.randn(1, standin.n_shape)
    e, f = torch.randn(1, standin.n_exp), torch.randn(1, standin.n_exp)

    def d(**kw):
        return standin(**kw)[0] - v0

    torch.testing.assert_close(d(shape=a + b), d(shape=a) + d(shape=b), atol=1e-5, rtol=0)
    torch.testing.assert_close(d(shape=2.5 * a), 2.5 * d(shape=a), atol=1e-5, rtol=0)
    torch.testing.assert_close(d(expression=e + f), d(expression=e) + d(expression=f), atol=1e-5, rtol=0)
    torch.testing.assert_close(d(shape=a, expression=e), d(shape=a) + d(expression=e), atol=1e-5, rtol=0)


def test_pose_correctives_are_used(standin):
    """A neck rotation changes the mesh by more than the skinning alone (posedirs act)."""
    pose = pose_with(neck=[0.3, 0, 0])
    v_full, _ = standin(pose=pose)
    saved = standin.posedirs.clone()
    standin.posedirs.zero_()
    try:
        v_lbs, _ = standin(pose=pose)
    finally:
        standin.posedirs.copy_(saved)
    assert (v_full - v_lbs).abs().max() > 1e-4


def test_landmarks_are_on_the_surface(standin):
    shape = torch.randn(1, standin.n_shape)
    v, lmk = standin(shape=shape)
    for faces_idx, bary in ((standin.lmk_static_faces, standin.lmk_static_bary),
                            (standin.lmk_full_faces, standin.lmk_full_bary),
                            (standin.lmk_dynamic_faces.reshape(-1), standin.lmk_dynamic_bary.reshape(-1, 3))):
        assert (bary >= -1e-6).all() and (bary <= 1 + 1e-6).all()
        torch.testing.assert_close(bary.sum(-1), torch.ones(len(bary)), atol=1e-5, rtol=0)
    # Recompute the 51 static points independently with numpy.
    vn, fn = v[0].numpy(), standin.faces.numpy()
    tri = vn[fn[standin.lmk_static_faces.numpy()]]
    ref = (standin.lmk_static_bary.numpy()[..., None] * tri).sum(1)
    np.testing.assert_allclose(lmk[0, 17:].numpy(), ref, atol=1e-6)


@pytest.mark.parametrize("which", ["procedural", "flame_topology"])
def test_contour_switches_side_with_yaw_sign(which, standin_path, request):
    path = standin_path if which == "procedural" else request.getfixturevalue("flame_topology_standin_path")
    m = FLAME(path)
    root = (m.j_regressor @ m.v_template)[0]

    def contour_x(yaw):
        pose = pose_with(**{"global": [0, yaw, 0]})
        _, lmk = m(pose=pose)
        R = axis_angle_to_matrix(pose[:, :3])[0]
        head = (lmk[0] - root) @ R + root  # back into the head's own frame
        return head[:17, 0].mean().item()

    left, centre, right = contour_x(-0.5), contour_x(0.0), contour_x(0.5)
    assert abs(centre) < 1e-3
    assert left > 1e-3 and right < -1e-3
    assert abs(left + right) < 0.3 * abs(left)  # mirror images of each other


def test_view_rotation_matches_pose_rule(standin):
    """landmarks(view_rotation) picks the same contour as forward() does from the pose."""
    pose = pose_with(**{"global": [0, 0.4, 0]})
    v, lmk = standin(pose=pose)
    R = axis_angle_to_matrix(pose[:, :3])
    torch.testing.assert_close(standin.landmarks(v, R), lmk)
    static = standin.landmarks(v, contour="static")
    torch.testing.assert_close(static[:, 17:], lmk[:, 17:])


@pytest.mark.parametrize("group", ["shape", "expression", "global", "neck", "jaw", "left_eye", "right_eye"])
def test_gradients_finite_and_nonzero(standin, group):
    shape = torch.zeros(1, standin.n_shape, requires_grad=group == "shape")
    exp = torch.zeros(1, standin.n_exp, requires_grad=group == "expression")
    pose = (0.1 * torch.randn(1, 15)).requires_grad_(group not in ("shape", "expression"))
    v, lmk = standin(shape, exp, pose)
    target = torch.randn_like(v)
    ((v * target).sum() + lmk.sum()).backward()
    if group == "shape":
        g = shape.grad
    elif group == "expression":
        g = exp.grad
    else:
        g = pose.grad[:, POSE_SLICES[group]]
    assert torch.isfinite(g).all() and g.abs().max() > 0


def test_float64_and_batch(standin):
    m = FLAME(standin.model_path, n_shape=10, n_exp=5).double()
    shape = torch.randn(4, 10, dtype=torch.float64)
    v, lmk = m(shape=shape)
    assert v.dtype == torch.float64 and v.shape[0] == 4 and lmk.shape == (4, 68, 3)
    v1, _ = m(shape=shape[1:2])
    torch.testing.assert_close(v[1:2], v1)


def test_component_counts_are_configurable_and_checked(standin_path):
    m = FLAME(standin_path, n_shape=300, n_exp=100)
    assert m.shapedirs.shape[-1] == 400
    with pytest.raises(ValueError, match="n_shape=301"):
        FLAME(standin_path, n_shape=301)
    with pytest.raises(ValueError, match="n_exp=101"):
        FLAME(standin_path, n_exp=101)
    with pytest.raises(ValueError, match=r"\(B, 100\)"):
        FLAME(standin_path)(shape=torch.zeros(1, 7))


def test_jacobian_equals_autodiff(standin):
    """FLAME.jacobian's closed form against torch.func.jacfwd, with every joint rotated and two
    batch members, in float64: the shape and expression columns (skinning linear in the shaped
    template for a fixed pose), and the axis-angle columns of each joint in turn (the root, the
    neck with the jaw and eyes below it, the jaw, the eyes), which turn their subtree about the
    posed joint and change the pose correctives."""
    import copy

    from fitting.flame.model import POSE_SLICES
    model = copy.deepcopy(standin).double()                                   # the fixture is shared
    g = torch.Generator().manual_seed(0)
    shape = torch.randn(2, model.n_shape, generator=g, dtype=torch.float64)
    expr = 0.5 * torch.randn(2, model.n_exp, generator=g, dtype=torch.float64)
    pose = 0.3 * torch.randn(2, 15, generator=g, dtype=torch.float64)
    K = model.n_shape + model.n_exp

    def per_member(ref):                                                      # (B, V, 3, B, K): members
        return torch.stack([ref[b, :, :, b] for b in range(2)])               # are independent

    verts, J = model.jacobian(shape, expr, pose)
    torch.testing.assert_close(verts, model(shape, expr, pose)[0])
    ref = per_member(torch.func.jacfwd(lambda c: model(c[:, :model.n_shape], c[:, model.n_shape:], pose)[0])(
        torch.cat([shape, expr], 1)))
    assert J.shape == ref.shape == (2, verts.shape[1], 3, K)
    assert float((J - ref).norm() / ref.norm()) < 1e-10
    for joint, cols in POSE_SLICES.items():
        for at in (pose, torch.zeros_like(pose)):                             # and the small-angle branch
            verts, J = model.jacobian(shape, expr, at, joint=joint)
            assert J.shape == (2, verts.shape[1], 3, K + 3)

            def turned(d, at=at, cols=cols):
                return model(shape, expr, torch.cat([at[:, :cols.start], at[:, cols] + d, at[:, cols.stop:]], 1))[0]

            ref = per_member(torch.func.jacfwd(turned)(torch.zeros(2, 3, dtype=torch.float64)))
            assert ref.abs().max() > 1e-3, joint
            rel = float((J[..., K:] - ref).norm() / ref.norm())
            assert rel < 1e-10, f"{joint}: relative error {rel:.2e}"
