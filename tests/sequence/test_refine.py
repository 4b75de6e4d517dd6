"""The calibration refined over several frames (fitting/sequence/refine.py): the unknowns' map to
the geometry LM's per-view tangents, the rig prior's normal equations, the shared shape, and a
perturbed calibration refined over a synthetic sequence."""
from __future__ import annotations

import argparse

import numpy as np
import pytest
import torch

from fitting.ground_truth import calibration_errors
from fitting.rotations import axis_angle_to_matrix, matrix_to_axis_angle

f64 = torch.float64


def _rig(K: int = 3, C: int = 4, seed: int = 0):
    from fitting.sequence.refine import FrameRig
    g = torch.Generator().manual_seed(seed)
    rot = lambda n: axis_angle_to_matrix(torch.randn(n, 3, generator=g, dtype=f64))  # noqa: E731
    view_frame = torch.arange(K).repeat_interleave(C)
    view_camera = torch.arange(C).repeat(K)
    keep = torch.ones(K * C, dtype=torch.bool)
    keep[1] = False                                    # a frame where one camera saw no face
    return FrameRig(rot(C), torch.randn(C, 3, generator=g, dtype=f64), rot(K), 0.1 * torch.randn(K, 3, generator=g, dtype=f64),
                    view_frame[keep], view_camera[keep])


def _fd(fn, n: int, eps: float = 1e-6) -> torch.Tensor:
    """Central differences of fn: (n,) -> (m,) at 0, (m, n)."""
    cols = []
    for j in range(n):
        e = torch.zeros(n, dtype=f64)
        e[j] = eps
        cols.append((fn(e) - fn(-e)) / (2 * eps))
    return torch.stack(cols, 1)


def test_tangent_map_is_the_first_order_of_a_step():
    """Each view's camera after a step of the frames' heads and the cameras, as the geometry LM's
    per-view tangents (R <- exp([w]) R, t <- t + d), against the map (central differences)."""
    rig = _rig()
    R, t = rig.views()

    def tangents(dx):
        R1, t1 = rig.moved(dx).views()
        return torch.cat([matrix_to_axis_angle(R1 @ R.transpose(1, 2)), t1 - t], 1).reshape(-1)

    M = rig.tangent_map()
    ref = _fd(tangents, rig.size)
    assert M.shape == (6 * len(R), rig.size)
    assert torch.allclose(M, ref, atol=1e-8), float((M - ref).abs().max())


def test_focal_map_scales_k_alone():
    """The rig's focal unknown through the geometry LM's per-view unknowns (whose focal step is
    a dolly): the focal factor moves, the views' translations do not (central differences)."""
    from fitting.geometry_terms import Unknowns
    from fitting.render.cameras import matrix_to_rot
    from fitting.state import FitState

    rig = _rig()
    R, t = rig.views()
    N = len(R)
    st = FitState.create(N, torch.zeros(N, dtype=torch.long), torch.eye(3).expand(N, 3, 3), 4, 3, (3, 8, 8),
                         cam_rot=matrix_to_rot(R.float()), cam_t=t.float())
    base = Unknowns.of(st, True)
    col = rig.focal_map()
    assert col.shape == (6 * N + 1,) and base.focal_column == 6 * N

    def moved(eps: float):
        step = torch.zeros(base.size)
        step[:6 * N + 1] = eps * col.float()
        m = base.apply(st, step)
        return m.cam_t.double(), float(m.log_focal)

    eps = 1e-2            # float32 state; the central difference leaves O(eps^2) of t_z
    (tp, fp), (tm, fm) = moved(eps), moved(-eps)
    assert abs((fp - fm) / (2 * eps) - 1) < 1e-5
    assert float(((tp - tm) / (2 * eps)).abs().max()) < 1e-3 * float(t.abs().max())


def test_the_maps_focal_column_scales_k_alone():
    """The geometry LM's camera Jacobian (point_jacobian, whose focal column is a dolly) through
    unknowns_map: its focal column is the derivative with the cameras held, u - cx and v - cy per
    unit of log focal; the coefficients do not move with it."""
    from dataclasses import replace

    from fitting.geometry_terms import Unknowns
    from fitting.jacobians import point_jacobian
    from fitting.render.cameras import matrix_to_rot
    from fitting.sequence.refine import _shared_shape_map, unknowns_map
    from fitting.state import FitState

    rig = _rig()
    rig = replace(rig, cam_t=rig.cam_t + torch.tensor([0.0, 0.0, 3.0], dtype=f64))   # in front of the points
    R, t = rig.views()
    N = len(R)
    st = FitState.create(N, rig.view_frame, torch.eye(3).expand(N, 3, 3), 4, 3, (3, 8, 8),
                         cam_rot=matrix_to_rot(R.float()), cam_t=t.float())
    base = Unknowns.of(st, True)
    M = unknowns_map(rig, _shared_shape_map(base), True)
    assert M.shape[0] == base.size
    col = M[:, rig.size]
    assert float(col[base.n_cam:].abs().max()) == 0.0

    g = torch.Generator().manual_seed(1)
    X = 0.1 * torch.randn(40, 3, generator=g, dtype=f64)
    view = torch.randint(0, N, (40,), generator=g)
    Kc = torch.tensor([[800.0, 0, 120], [0, 790, 130], [0, 0, 1]], dtype=f64).expand(N, 3, 3)
    one = torch.tensor([1.0, 0.0, 0.0], dtype=f64).expand(40, 3)
    d = point_jacobian(X[None], torch.eye(3, dtype=f64).expand(1, 40, 3, 3), torch.zeros(40, dtype=torch.long),
                       torch.arange(40)[:, None].expand(40, 3), one, view, R, t, Kc)[..., :7]      # (40, 2, 7)
    cam = d[..., :6] @ col[:6 * N].view(N, 6)[view][..., None]                             # the view's tangents
    got = cam[..., 0] + d[..., 6] * col[6 * N]
    xc = (R[view] @ X[..., None])[..., 0] + t[view]
    want = xc[:, :2] / xc[:, 2:] * torch.stack([Kc[view, 0, 0], Kc[view, 1, 1]], -1)
    torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-9)


def test_a_step_keeps_the_views_one_rig():
    """Views of one camera stay one camera in the rig frame after any step (R_c = R H_R^T the same
    from every frame)."""
    rig = _rig().moved(torch.randn(42, dtype=f64) * 0.3)
    R, t = rig.views()
    Rc = R @ rig.head_R[rig.view_frame].transpose(1, 2)
    tc = t - (Rc @ rig.head_t[rig.view_frame][..., None])[..., 0]
    assert torch.allclose(Rc, rig.cam_R[rig.view_camera], atol=1e-12)
    assert torch.allclose(tc, rig.cam_t[rig.view_camera], atol=1e-12)


@pytest.mark.parametrize("turn", [0.0, 0.02, 0.5])
def test_rig_prior_normal_equations(turn):
    """The prior's Gauss-Newton blocks against central differences of its residuals, at cameras
    off their calibration by nothing, a degree, and a large angle."""
    from fitting.sequence.refine import RigPrior
    rig = _rig()
    C = len(rig.cam_R)
    g = torch.Generator().manual_seed(1)
    off = axis_angle_to_matrix(torch.randn(C, 3, generator=g, dtype=f64) * turn)
    cfg = argparse.Namespace(camera_prior_deg=1.0, camera_prior_mm=10.0)
    prior = RigPrior(cfg, off @ rig.cam_R, rig.cam_t + 0.01 * turn, 20)
    A, gr, cost = prior.normal_equations(rig)
    J = _fd(lambda dx: prior.residuals(rig.moved(dx)).reshape(-1), rig.size)
    r = prior.residuals(rig).reshape(-1)
    assert torch.allclose(A, J.T @ J, rtol=1e-5, atol=1e-6 * float(A.abs().max()))
    assert torch.allclose(gr, J.T @ r, rtol=1e-5, atol=1e-6 * float(gr.abs().max()) + 1e-12)
    assert cost == pytest.approx(float(r @ r))
    assert float(A[:18].abs().max()) == 0.0            # the frames' head columns are not tied


def test_shared_shape_map():
    """One shape step moves every frame's shape alike; expression and jaw steps stay per frame."""
    from fitting.geometry_terms import Unknowns
    from fitting.sequence.refine import _shared_shape_map
    unk = Unknowns(torch.tensor([0, 0, 1, 2]), 3, 4, 2, False)
    B = _shared_shape_map(unk)
    assert B.shape == (3 * 9, 4 + 3 * 5)
    dx = torch.arange(1.0, 20.0, dtype=f64)
    per = (B @ dx).reshape(3, 9)
    assert torch.equal(per[:, :4], dx[:4].expand(3, 4))
    assert torch.equal(per[:, 4:], dx[4:].reshape(3, 5))


# -- a synthetic sequence ---------------------------------------------------------------------------
def test_perturbed_focal_lengths_and_their_error():
    """perturb_cameras scales fx, fy (not the principal point) by 1 + focal_pct / 100, and
    focal_error_pct reads that back; rotations and centres move by the asked amounts."""
    from fitting.calibration import Calibrated
    from fitting.ground_truth import focal_error_pct, perturb_cameras
    from fitting.render.cameras import rotation_angle_deg
    K = np.array([[800.0, 0, 250], [0, 810, 240], [0, 0, 1]])
    R = axis_angle_to_matrix(torch.tensor([0.1, 0.7, -0.2], dtype=f64)).numpy()
    truth = {"a": Calibrated(K, R, np.array([0.01, 0.02, 0.9]), 500, 480, np.zeros(0))}
    out = perturb_cameras(truth, np.random.default_rng(3), deg=1.0, mm=5.0, focal_pct=3.0)["a"]
    assert np.allclose(out.K, K * [[1.03, 1, 1], [1, 1.03, 1], [1, 1, 1]])
    assert abs(focal_error_pct({"a": out}, truth) - 3.0) < 1e-9
    assert abs(float(rotation_angle_deg(torch.as_tensor(out.R)[None], torch.as_tensor(R)[None])) - 1.0) < 1e-6
    C = [-c.R.T @ c.t for c in (out, truth["a"])]
    assert abs(np.linalg.norm(C[0] - C[1]) - 0.005) < 1e-9


def _refine_perturbed(sequence6, standin_path, out, focal_pct: float = 0.0, *args) -> tuple:
    """The 6-frame sequence tracked with its calibration perturbed (1 deg / 5 mm per camera, focal
    lengths by ``focal_pct``) and ``--camera_mode refine --refine_frames 6``. Returns (report,
    true cameras, the keyframe's fit's cameras, the cameras refined over frames)."""
    from fitting.calibration import load_calibration, write_calibration_json
    from fitting.ground_truth import perturb_cameras
    from fitting.known_cameras import Rig
    from fitting.sequence.track import identity_from_fit
    from tests.sequence.test_track import _run

    root, gt = sequence6
    names = [f"{c}.png" for c in gt["cameras"]]
    sizes = {n: (192, 192) for n in names}
    truth = load_calibration(root / "calibration" / "cameras.json", names, sizes)
    perturbed = perturb_cameras(truth, np.random.default_rng(0), focal_pct=focal_pct)
    write_calibration_json(out / "perturbed.json", perturbed)
    rep = _run(root, out / "out", standin_path, "--cameras", str(out / "perturbed.json"),
               "--camera_mode", "refine", "--refine_frames", "6", *args)
    key = identity_from_fit(out / "out" / "identity", Rig(out / "perturbed.json", "refine", perturbed))
    return rep, truth, key.cameras, load_calibration(out / "out" / "cameras.json", names, sizes)


@pytest.mark.slow
def test_refine_over_frames_beats_the_keyframe(sequence6, standin_path, tmp_path):
    """A calibration perturbed by 1 deg / 5 mm per camera and 3 % in focal length, ``refine
    --refine_focal always`` with the photometric rows on: the keyframe's fit alone comes back to
    its one-frame landmark floor, the cameras and the focal length refined over 6 frames (the
    shape shared) land closer, and every frame is tracked with them. (The path without the
    focal length: test_tracking_without_cameras, and the real views in test_real_sequence.py.)"""
    from fitting.ground_truth import focal_error_pct
    rep, truth, key, refined = _refine_perturbed(sequence6, standin_path, tmp_path, 3.0, "--refine_focal", "always")
    rot_key, cen_key = calibration_errors(key, truth)
    rot, cen = calibration_errors(refined, truth)
    f_key, f = focal_error_pct(key, truth), focal_error_pct(refined, truth)
    refine = rep["summary"]["refine"]
    print(f"keyframe alone {rot_key:.3f} deg / {cen_key:.2f} mm / focal {f_key:+.2f} %; over {len(refine['frames'])} "
          f"frames {rot:.3f} deg / {cen:.2f} mm / focal {f:+.2f} %; {refine.get('seconds')} s")
    assert len(refine["frames"]) == 6 and len(refine["cameras"]) == 8
    assert refine["focal_change_from_keyframe_pct"] != 0                   # the focal factor was an unknown
    # measured: alone 0.202-0.222 deg / 1.50-1.69 mm / +0.02-0.03 %, over frames 0.059-0.061 / 0.50-0.52 /
    # -0.23 to -0.24 % (forms of the same maths that round differently), the outer views' detector
    # points not used (with the true points there: 0.139 / 1.28 / -0.40 % alone, 0.073 / 0.56 /
    # -0.42 % over frames)
    assert rot_key <= 0.3 and cen_key <= 2.0 and abs(f_key) <= 2.0, (rot_key, cen_key, f_key)
    assert rot <= 0.75 * rot_key and cen <= 0.85 * cen_key and abs(f) <= 1.0, (rot, cen, f, rot_key, cen_key)


def test_mapped_track_blocks_solve_the_mapped_system():
    """The track term's Schur complement seen through the map equals eliminating the points from
    the mapped full system [[M^T A M, M^T W], [W^T M, V]] directly, and its back-substitution
    gives that system's point step."""
    from dataclasses import replace

    from fitting.sequence.refine import _MappedBlocks
    from fitting.tracks import TrackTerm, Tracks
    g = torch.Generator().manual_seed(3)
    turn = lambda n: axis_angle_to_matrix(0.2 * torch.randn(n, 3, generator=g, dtype=f64))  # noqa: E731
    rig = replace(_rig(K=2, C=3), cam_R=turn(3), head_R=turn(2), head_t=0.01 * torch.randn(2, 3, generator=g, dtype=f64),
                  cam_t=torch.tensor([0.0, 0.0, 1.0], dtype=f64) + 0.05 * torch.randn(3, 3, generator=g, dtype=f64))
    R, t = rig.views()                                      # every point below in front of every camera
    N = len(R)
    P = 12
    X = torch.randn(P, 3, generator=g, dtype=f64) * 0.05
    view = torch.arange(N).repeat(P // 2 + 1)[: 2 * P]                    # each point in two views
    point = torch.arange(P).repeat_interleave(2)
    K = torch.tensor([[500.0, 0, 128], [0, 500.0, 128], [0, 0, 1]], dtype=f64).expand(N, 3, 3)
    xc = (R[view] @ X[point][..., None])[..., 0] + t[view]
    uv = xc[:, :2] / xc[:, 2:] * 500 + 128 + torch.randn(2 * P, 2, generator=g, dtype=f64)
    term = TrackTerm(Tracks(X.numpy(), np.zeros((P, 3), np.uint8), view.numpy(), point.numpy(), uv.numpy()), 2.0)
    term.points = X + 0.01
    cols = 6 * torch.arange(N)[:, None] + torch.arange(6)
    base = term.normal_equations(R, t, K, 1.0, cols, 6 * N)
    M = rig.tangent_map()
    mapped = _MappedBlocks(base, M)
    lam = 1e-3
    S, h, back = mapped.reduce(lam)
    A = mapped.A + torch.eye(rig.size, dtype=f64)           # as a prior would: the gauge held
    dx = -torch.linalg.solve(A - S, mapped.g - h)
    # the same from the full system over (reduced unknowns, points)
    n = rig.size
    W = torch.zeros(6 * N, 3 * P, dtype=f64)
    for m in range(len(view)):  # a few observations
        W[base.cols[m][:, None], 3 * point[m] + torch.arange(3)] += base.Y[m]
    Vd = base.V + lam * torch.diag_embed(base.V.diagonal(dim1=1, dim2=2))
    full = torch.zeros(n + 3 * P, n + 3 * P, dtype=f64)
    full[:n, :n] = A
    full[:n, n:] = M.T @ W
    full[n:, :n] = (M.T @ W).T
    full[n:, n:] = torch.block_diag(*Vd)
    ref = -torch.linalg.solve(full, torch.cat([mapped.g, base.gp.reshape(-1)]))
    assert torch.allclose(dx, ref[:n], rtol=1e-8, atol=1e-12 * float(ref.abs().max()))
    assert torch.allclose(back(dx).reshape(-1), ref[n:], rtol=1e-8, atol=1e-12 * float(ref.abs().max()))


def test_pick_frames_spreads_them_and_keeps_the_keyframe():
    from fitting.sequence.refine import pick_frames
    frames = [f"{i:06d}" for i in range(20)]
    assert pick_frames(frames, "000000", 8) == [frames[i] for i in (0, 3, 5, 8, 11, 14, 16, 19)]
    got = pick_frames(frames, "000004", 8)             # off the grid: it takes its nearest pick's place
    assert len(got) == 8 and "000004" in got and "000003" not in got and "000005" in got
    assert pick_frames(frames[:3], "000001", 8) == frames[:3]
