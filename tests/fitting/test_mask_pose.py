"""Profiles posed by their mask (fitting/mask_pose.py): the camera moves, checked analytically,
and the re-posing of views that followed a detector's frontal-shaped points, checked against a
synthetic scene's true cameras."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from fitting.config import parse_config
from fitting.landmark_trust import view_yaw_deg
from fitting.mask_pose import box_mismatch, orbit, repose_by_mask, tilt_candidates, yaw_candidates
from fitting.render.cameras import look_at, matrix_to_rot, project_points, rotation_angle_deg
from fitting.synthetic_scene import make_scene

CENTRE = torch.tensor([0.003, 0.021, 0.012], dtype=torch.float64)
K = torch.tensor([[500.0, 0, 128], [0, 500, 128], [0, 0, 1]], dtype=torch.float64)


def _camera():
    R, t = look_at(torch.tensor([[0.31, 0.12, 0.93]]), torch.tensor([[0.01, 0.0, 0.02]]))
    return R[0].double(), t[0].double()


def _centres(R, t):
    return -(R.transpose(-1, -2) @ t[..., None])[..., 0]


def test_orbit_keeps_the_centre_in_place_and_its_distance():
    R, t = _camera()
    rotvec = torch.tensor([[0.0, 0.0, 0.0], [0.1, -0.3, 0.2], [0.0, 1.2, 0.0]], dtype=torch.float64)
    Ro, to = orbit(R, t, CENTRE, rotvec)
    assert torch.allclose(Ro[0], R) and torch.allclose(to[0], t)
    uv = project_points(CENTRE.expand(3, 1, 3), K.expand(3, 3, 3), Ro, to)[0]
    assert torch.allclose(uv, project_points(CENTRE[None, None], K[None], R[None], t[None])[0].expand(3, 1, 2))
    d = (_centres(Ro, to) - CENTRE).norm(dim=-1)
    assert torch.allclose(d, (_centres(R, t) - CENTRE).norm().expand(3))
    # a world point X is seen where the old camera saw X turned about the centre
    X = torch.tensor([0.05, -0.02, 0.07], dtype=torch.float64)
    from fitting.rotations import axis_angle_to_matrix
    Q = axis_angle_to_matrix(rotvec[1])
    assert torch.allclose(Ro[1] @ X + to[1], R @ (Q @ (X - CENTRE) + CENTRE) + t)


def test_yaw_and_tilt_candidates_turn_the_camera_as_named():
    R, t = _camera()
    yaws = torch.tensor([-75.0, -10.0, 0.0, 62.5], dtype=torch.float64)
    Ry, ty = yaw_candidates(R, t, CENTRE, yaws)
    assert torch.allclose(view_yaw_deg(Ry), yaws, atol=1e-9)
    # the yaw turns about the vertical: the camera keeps its height and its view's elevation
    assert torch.allclose(_centres(Ry, ty)[:, 1], _centres(R, t)[1].expand(4))
    assert torch.allclose(Ry[:, 2, 1], R[2, 1].expand(4))
    tilts = torch.tensor([[7.0, 0.0], [0.0, -9.0]], dtype=torch.float64)
    Rt, tt = tilt_candidates(R, t, CENTRE, tilts)
    elevation = torch.rad2deg(torch.asin(torch.stack([Rt[0, 2, 1], R[2, 1]])))   # the view direction's y
    assert abs(abs(float(elevation[0] - elevation[1])) - 7.0) < 1e-6
    assert torch.allclose(view_yaw_deg(Rt[:1]), view_yaw_deg(R[None]))   # elevation alone keeps the yaw
    assert torch.allclose(Rt[1, 2], R[2])                                  # roll keeps the view direction
    assert abs(float(rotation_angle_deg(Rt[1:], R[None]).squeeze()) - 9.0) < 1e-4   # acos near 1


def test_box_mismatch_is_zero_on_the_same_box_and_grows_with_shift_and_size():
    pts = torch.rand(68, 2, dtype=torch.float64) * torch.tensor([40.0, 60.0]) + 100
    pts[:2] = torch.tensor([[100.0, 100.0], [140.0, 160.0]])                # the box: 40 x 60 px
    other = torch.flip(pts, [0]) * 1.0                                    # another shape in the same box
    moved = torch.stack([pts, other, pts + torch.tensor([4.0, 0.0]), (pts - 100) * 1.1 + 100])
    m = box_mismatch(moved, pts)
    assert m[0] == 0 and m[1] < 1e-12
    assert abs(float(m[2]) - 4.0 / math.hypot(40.0, 60.0)) < 1e-12   # 4 px against a 72 px diagonal
    assert m[3] > 0.15


@pytest.fixture(scope="module")
def profile_scene(tmp_path_factory, standin_path):
    """7 views on +-60 deg at 128 px (dlib-like points on the two profiles), fitted at 128 px:
    (ctx, the true state, ground truth)."""
    from fitting.context import FitContext
    from fitting.flame import FLAME
    from fitting.scene import load_scene
    from fitting.state import FitState

    root = tmp_path_factory.mktemp("profiles")
    scene = make_scene(root / "scene", standin_path, n_views=7, width=128, height=128, yaw_deg=60, n_shape=40,
                       n_exp=20, seed=1, noise_px=0.25)
    gt = dict(np.load(scene / "ground_truth.npz"))
    assert gt["profile_views"].tolist() == [True, False, False, False, False, False, True]
    sc = load_scene(scene, 128)
    flame = FLAME(standin_path, str(standin_path.with_name(f"{standin_path.stem}_landmark_embedding.npy")),
                  n_shape=40, n_exp=20)
    N = sc.num_views
    st = FitState.create(N, torch.zeros(N, dtype=torch.long), sc.K, 40, 20, (3, 32, 32))
    st.shape[:] = torch.as_tensor(gt["shape"], dtype=torch.float32)
    st.expression[:] = torch.as_tensor(gt["expression"], dtype=torch.float32)
    st.cam_rot = matrix_to_rot(torch.as_tensor(gt["R"], dtype=torch.float32))
    st.cam_t = torch.as_tensor(gt["t"], dtype=torch.float32)
    cfg = parse_config(["--scene_dir", str(scene), "--n_shape", "40", "--n_exp", "20"])

    def ctx():
        return FitContext(flame, sc.images, sc.landmarks, sc.skin_mask, sc.head_mask.clone(), torch.ones(N), cfg,
                          None, progress=False)
    return ctx, st, gt


def _pnp_on_profiles(ctx, st):
    """The state with the profiles posed by PnP of their detector points on the true head, as
    a fit without tracks poses them."""
    from fitting.context import subject_vertices, view_geometry
    from fitting.init import pnp_views
    _, lmk3d = view_geometry(ctx, st, subject_vertices(ctx, st))
    R, t, ok, _, _ = pnp_views(ctx.landmarks.double().numpy(), lmk3d.double().numpy(), st.K().double().numpy())
    bad = st.detach()
    rot, cam_t = bad.R().clone(), bad.cam_t.clone()
    for i in (0, 6):
        assert ok[i]
        rot[i], cam_t[i] = torch.as_tensor(R[i]), torch.as_tensor(t[i])
    bad.cam_rot, bad.cam_t = matrix_to_rot(rot), cam_t
    return bad


def test_profiles_that_followed_a_detectors_points_are_posed_by_their_mask(profile_scene):
    make_ctx, true_state, gt = profile_scene
    ctx = make_ctx()
    bad = _pnp_on_profiles(ctx, true_state)
    R_gt = torch.as_tensor(gt["R"], dtype=torch.float64)
    before = rotation_angle_deg(bad.R().double(), R_gt)
    assert (before[[0, 6]] > 30).all(), before          # measured: PnP puts them 60-65 deg off
    st, moved = repose_by_mask(ctx, bad)
    after = rotation_angle_deg(st.R().double(), R_gt)
    # measured 2.6 and 3.6 deg: the grid's 5 deg of yaw and 3 deg of tilt, which the outline
    # term then refines (the reduced demo on +-60 deg: 0.8-1.3 deg after the fit)
    assert moved == [0, 6] and (after[[0, 6]] < 6).all(), after
    assert torch.equal(st.R()[1:6], bad.R()[1:6])
    assert ctx.landmark_weights.tolist() == [0, 1, 1, 1, 1, 1, 0]
    assert "posed by its mask" in ctx.landmark_flags[0]


def test_a_bad_mask_on_a_frontal_view_moves_nothing(profile_scene):
    """A view whose mask is wrong (shifted by a quarter of the image) but whose landmarks are a
    frontal face's: the best pose for the mask lies within the detector's range, so the
    landmarks keep it; an empty mask moves nothing either."""
    make_ctx, true_state, _ = profile_scene
    ctx = make_ctx()
    ctx.head_mask[3] = torch.roll(ctx.head_mask[3], shifts=32, dims=-1)
    st, moved = repose_by_mask(ctx, true_state)
    assert moved == [] and ctx.landmark_flags == {}
    assert torch.equal(st.R(), true_state.R())
    ctx.head_mask[2] = 0                                  # a segmentation that found nothing
    st, moved = repose_by_mask(ctx, true_state)
    assert moved == [] and torch.equal(st.R(), true_state.R()) and torch.isfinite(st.cam_t).all()


def test_the_search_compares_at_most_128_px_in_the_same_geometry():
    """_search_scale: a 256 x 192 view becomes 128 x 96; a point projected with the scaled K lands
    on the scaled landmark, and the mask keeps its share of the image."""
    from types import SimpleNamespace
    from fitting.mask_pose import _search_scale
    mask = torch.zeros(1, 1, 192, 256)
    mask[..., 40:120, 60:200] = 1
    R, t = _camera()
    X = torch.tensor([[[0.02, -0.01, 0.05]]], dtype=torch.float64)
    uv = project_points(X, K[None], R[None], t[None])[0]                 # (1, 1, 2) at 256 x 192
    ctx = SimpleNamespace(size=(192, 256), head_mask=mask, landmarks=uv.float().expand(1, 68, 2))
    masks, Ks, lm = _search_scale(ctx, K[None])
    assert masks.shape == (1, 1, 96, 128) and abs(float(masks.mean()) - float(mask.mean())) < 1e-6
    uv_s = project_points(X, Ks, R[None], t[None])[0]
    assert torch.allclose(uv_s.float(), lm[:, :1], atol=1e-4)
    small = SimpleNamespace(size=(96, 96), head_mask=mask[..., :96, :96], landmarks=lm)
    assert _search_scale(small, K[None])[0] is small.head_mask              # small enough already
