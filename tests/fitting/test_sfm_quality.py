"""The degenerate-SfM verdict (fitting/sfm_quality.py) on constructed models with known answers:
a sound ring of views, a 2-view model with a tiny baseline, a model whose focal length is 0.4x
the true one with the compressed angles of a bas-relief, an implausible focal length."""
from __future__ import annotations

import argparse

import numpy as np

from fitting.pipeline import decide_refine_focal
from fitting.sfm_quality import SfmModel, judge_sfm, rotation_spread_ratio, triangulation_angles_deg

W = H = 512
F_TRUE = 1400.0


def _yaw(deg: float) -> np.ndarray:
    """World-to-camera rotation of a camera at yaw ``deg`` on a circle around the origin,
    looking at it (OpenCV axes: x right, y down, z forward)."""
    a = np.radians(deg)
    fwd = -np.array([np.sin(a), 0.0, np.cos(a)])         # camera at (sin, 0, cos) looking at 0
    down = np.array([0.0, 1.0, 0.0])
    right = np.cross(down, fwd)
    return np.stack([right, down, fwd])


def _model(yaws_deg, focal=F_TRUE, dist=1.0, centers=None, seed=0) -> tuple[SfmModel, np.ndarray]:
    """Cameras at ``yaws_deg`` (or at ``centers``, all looking along -z) around 200 points on a
    10 cm sphere, each point seen by every view. Returns (model, true R (n, 3, 3))."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(200, 3))
    X = 0.1 * X / np.linalg.norm(X, axis=1, keepdims=True)
    if centers is None:
        R = np.stack([_yaw(y) for y in yaws_deg])
        C = np.stack([dist * np.array([np.sin(np.radians(y)), 0, np.cos(np.radians(y))]) for y in yaws_deg])
    else:
        C = np.asarray(centers, np.float64)
        R = np.stack([_yaw(0.0)] * len(C))
    t = -np.einsum("nij,nj->ni", R, C)
    n = len(R)
    view, point = np.meshgrid(np.arange(n), np.arange(len(X)), indexing="ij")
    return SfmModel([f"v{i}" for i in range(n)], R, t, focal, W, H, X, view.ravel(), point.ravel()), R


def test_triangulation_angle_of_two_rays():
    """Two cameras 2 x 0.1 m apart, 1 m from a point on the axis: 2 atan(0.1) = 11.42 deg."""
    m = SfmModel(["a", "b"], np.stack([np.eye(3)] * 2), np.array([[0.1, 0, 1.0], [-0.1, 0, 1.0]]), 1000.0, W, H,
                 np.zeros((1, 3)), np.array([0, 1]), np.array([0, 0]))
    np.testing.assert_allclose(triangulation_angles_deg(m), np.degrees(2 * np.arctan(0.1)), rtol=1e-9)


def test_a_sound_model_passes():
    m, R = _model(np.linspace(-40, 40, 8))
    yaw = np.linspace(-40, 40, 8)
    v = judge_sfm(m, 8, pnp={n: (R[i], yaw[i]) for i, n in enumerate(m.names)}, focal_prior_px=F_TRUE * 1.2)
    assert v["ok"], v["reasons"]
    assert v["metrics"]["tri_angle_deg_median"] > 60        # 80 deg of arc, points near the centre
    np.testing.assert_allclose(v["metrics"]["rotation_spread_ratio"], 1.0, rtol=1e-9)
    assert v["metrics"]["rotation_spread_pairs"] == 28


def test_two_views_with_a_tiny_baseline():
    """2 views 1 cm apart at 1 m: ~0.6 deg of parallax, and too few views."""
    m, _ = _model(None, centers=[[0.005, 0, 1.0], [-0.005, 0, 1.0]])
    v = judge_sfm(m, 8)
    assert not v["ok"]
    assert v["metrics"]["tri_angle_deg_median"] < 0.7
    assert any(r.startswith("few views") for r in v["reasons"]), v["reasons"]
    assert any(r.startswith("small triangulation angles") for r in v["reasons"]), v["reasons"]


def test_bas_relief_focal_04x():
    """A bas-relief model: focal 0.4x the truth, the angles between its views compressed to
    0.4x the landmark poses' (true ones here). Both the EXIF prior and the rotations see it;
    without a prior the rotations alone still do."""
    yaw = np.linspace(-30, 30, 6)
    m, _ = _model(0.4 * yaw, focal=0.4 * F_TRUE)
    R_true = np.stack([_yaw(y) for y in yaw])
    pnp = {n: (R_true[i], yaw[i]) for i, n in enumerate(m.names)}
    v = judge_sfm(m, 6, pnp=pnp, focal_prior_px=F_TRUE)
    assert not v["ok"]
    np.testing.assert_allclose(v["metrics"]["rotation_spread_ratio"], 0.4, rtol=1e-6)
    np.testing.assert_allclose(v["metrics"]["focal_prior_ratio"], 0.4, rtol=1e-9)
    assert any(r.startswith("bas-relief") for r in v["reasons"]), v["reasons"]
    assert any("x the prior" in r for r in v["reasons"]), v["reasons"]
    v2 = judge_sfm(m, 6, pnp=pnp)
    assert not v2["ok"] and len(v2["reasons"]) == 1 and v2["reasons"][0].startswith("bas-relief")


def test_profile_pnp_poses_are_not_the_reference():
    """PnP poses beyond the detector's yaw range (dlib's squeezed frontal points) are left out
    of the bas-relief check: here they are wildly wrong, and the verdict stays ok."""
    yaw = np.array([-70.0, -20.0, 0.0, 20.0, 70.0])
    m, R = _model(yaw)
    bad = R.copy()
    bad[[0, 4]] = _yaw(0.0)                 # the profiles' PnP says "frontal"
    v = judge_sfm(m, 5, pnp={n: (bad[i], yaw[i]) for i, n in enumerate(m.names)})
    assert v["ok"], v["reasons"]
    assert v["metrics"]["rotation_spread_pairs"] == 3   # pairs among the 3 views within 45 deg


def test_implausible_focal():
    m, _ = _model(np.linspace(-30, 30, 5), focal=0.2 * W)
    v = judge_sfm(m, 5)
    assert not v["ok"] and v["reasons"][0].startswith("implausible focal length"), v["reasons"]


def test_rotation_spread_needs_separated_pairs():
    R = np.stack([_yaw(y) for y in (0.0, 1.0, 2.0)])
    assert rotation_spread_ratio(R, R, np.ones(3, bool)) == (None, 0)     # every pair < 5 deg


def test_a_degenerate_model_gets_its_focal_refined():
    cfg = argparse.Namespace(refine_focal="auto", sfm_min_views=3)
    cams = {"source": "sfm", "K": [[F_TRUE, 0, W / 2], [0, F_TRUE, H / 2], [0, 0, 1]], "width": W,
            "registered": [f"v{i}" for i in range(8)]}
    assert decide_refine_focal(cfg, cams, 8) == (False, "SfM registered 8 views")
    refine, why = decide_refine_focal(cfg, cams, 8, {"ok": False, "reasons": ["bas-relief: ..."], "metrics": {}})
    assert refine and "degenerate" in why and "bas-relief" in why
    assert not decide_refine_focal(cfg, {**cams, "source": "known"}, 8, {"ok": False, "reasons": ["x"]})[0]


def test_one_view_keeps_its_focal_prior():
    """One view's landmarks barely fix the focal length: ``auto`` keeps the EXIF or --fov prior
    there, and refines it from the views' own fallback with two or more."""
    cfg = argparse.Namespace(refine_focal="auto", sfm_min_views=3)
    cams = {"source": "fov", "K": [[F_TRUE, 0, W / 2], [0, F_TRUE, H / 2], [0, 0, 1]], "width": W, "registered": []}
    assert decide_refine_focal(cfg, cams, 1) == (False, "one view: the focal length from fov is kept")
    assert decide_refine_focal(cfg, {**cams, "source": "exif"}, 1)[0] is False
    assert decide_refine_focal(cfg, cams, 2)[0] is True
    assert decide_refine_focal(argparse.Namespace(refine_focal="always"), cams, 1)[0] is True
