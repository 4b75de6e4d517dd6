"""Epipolar evaluation: the Sampson distance against independent geometry, its invariance, the
camera readers, and a tiny COLMAP database written with pycolmap."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from scipy.optimize import least_squares

from fitting.evaluate_cameras import (epipolar_stats, fundamental_matrices, main, read_cameras, read_matches,
                                      report_epipolar, sampson_distance)
from fitting.export import write_colmap_text, write_transforms
from fitting.render.cameras import look_at

W, H = 520, 696


def _rig(n=4, seed=0):
    """n cameras (K, R, t as (n,3,3), (n,3,3), (n,3)) around the origin, and 40 points (40, 3)."""
    rng = np.random.default_rng(seed)
    ang = np.linspace(-0.8, 0.8, n) + rng.normal(0, 0.05, n)
    eye = np.stack([1.2 * np.sin(ang), rng.normal(0, 0.1, n), 1.2 * np.cos(ang)], -1)
    R, t = (a.numpy() for a in look_at(torch.tensor(eye), torch.tensor(rng.normal(0, 0.02, (n, 3)))))
    f = rng.uniform(1000, 1400, n)
    K = np.stack([[[fi, 0, W / 2 + rng.normal(0, 3)], [0, fi * 1.01, H / 2 + rng.normal(0, 3)], [0, 0, 1]] for fi in f])
    return K, R, t, rng.normal(0, 0.08, (40, 3))


def _project(X, K, R, t):
    """X (P, 3) -> (P, 2) pixels."""
    x = X @ R.T + t
    return x[:, :2] / x[:, 2:] @ np.diag([K[0, 0], K[1, 1]]) + K[:2, 2]


def _F(K, R, t, i, j):
    return fundamental_matrices(K[i:i + 1], R[i:i + 1], t[i:i + 1], K[j:j + 1], R[j:j + 1], t[j:j + 1])[0]


def test_exact_projections_have_zero_distance():
    K, R, t, X = _rig()
    for i, j in ((0, 1), (3, 0), (1, 3)):
        d = sampson_distance(_F(K, R, t, i, j), _project(X, K[i], R[i], t[i]), _project(X, K[j], R[j], t[j]))
        assert d.max() < 1e-9


def test_one_point_moved_across_its_epipolar_line():
    """The epipolar line of x1 in view 2 is built without F: through the projections of two
    points on x1's ray. Moving x2 by e across it, F's point-to-line distance is e, and the
    Sampson distance is e scaled by |F x1|_12 / sqrt(|F x1|_12^2 + |F^T x2|_12^2) (it shares
    the correction between both points), i.e. below e."""
    K, R, t, X = _rig()
    i, j, e = 0, 2, 0.7
    x1, x2 = _project(X, K[i], R[i], t[i]), _project(X, K[j], R[j], t[j])
    C1 = -R[i].T @ t[i]
    far = C1 + 3.0 * (X - C1)  # a second point on each ray of x1
    d = _project(far, K[j], R[j], t[j]) - x2
    normal = np.stack([-d[:, 1], d[:, 0]], 1) / np.linalg.norm(d, axis=1, keepdims=True)
    x2m = x2 + e * normal
    F = _F(K, R, t, i, j)
    h1, h2 = np.c_[x1, np.ones(len(x1))], np.c_[x2m, np.ones(len(x1))]
    l2, l1 = h1 @ F.T, h2 @ F
    np.testing.assert_allclose(np.abs((h2 * l2).sum(1)) / np.linalg.norm(l2[:, :2], axis=1), e, rtol=1e-6)
    n2, n1 = np.linalg.norm(l2[:, :2], axis=1), np.linalg.norm(l1[:, :2], axis=1)
    s = sampson_distance(F, x1, x2m)
    np.testing.assert_allclose(s, e * n2 / np.hypot(n1, n2), rtol=1e-3)
    assert (s < e).all() and (s > 0.5 * e).all()


def _reprojection_error_after_triangulation(x1, x2, cam1, cam2, X0) -> float:
    """sqrt(min_X |x1 - P1 X|^2 + |x2 - P2 X|^2) for one match (2,), (2,), started at X0 (3,)."""
    res = least_squares(lambda X: np.r_[_project(X[None], *cam1)[0] - x1, _project(X[None], *cam2)[0] - x2],
                        X0, xtol=1e-14, ftol=1e-14)
    return float(np.linalg.norm(res.fun))


def test_sampson_is_the_geometric_error_to_first_order():
    """Independent of F: the reprojection error after optimal triangulation (least squares over
    the 3-D point), sqrt(|x1 - P1 X|^2 + |x2 - P2 X|^2), agrees with the Sampson distance
    within a few % for sub-pixel noise."""
    K, R, t, X = _rig(seed=1)
    i, j = 1, 2
    rng = np.random.default_rng(3)
    x1 = _project(X, K[i], R[i], t[i]) + rng.normal(0, 0.5, (len(X), 2))
    x2 = _project(X, K[j], R[j], t[j]) + rng.normal(0, 0.5, (len(X), 2))
    gold = np.array([_reprojection_error_after_triangulation(a, b, (K[i], R[i], t[i]), (K[j], R[j], t[j]), X0)
                     for a, b, X0 in zip(x1, x2, X)])
    s = sampson_distance(_F(K, R, t, i, j), x1, x2)
    np.testing.assert_allclose(s, gold, rtol=0.03, atol=1e-3)


def test_invariant_to_a_similarity_of_all_cameras():
    K, R, t, X = _rig(seed=2)
    rng = np.random.default_rng(4)
    x1 = _project(X, K[0], R[0], t[0]) + rng.normal(0, 1, (len(X), 2))
    x2 = _project(X, K[3], R[3], t[3]) + rng.normal(0, 1, (len(X), 2))
    # world X' = s Q X + T: R' = R Q^T, t' = s t - R' T (the camera frame scales by s)
    s, T = 7.3, rng.normal(0, 5, 3)
    Q = np.linalg.qr(rng.normal(size=(3, 3)))[0]
    Q *= np.linalg.det(Q)
    R2 = R @ Q.T
    t2 = s * t - R2 @ T
    np.testing.assert_allclose(sampson_distance(_F(K, R2, t2, 0, 3), x1, x2),
                               sampson_distance(_F(K, R, t, 0, 3), x1, x2), rtol=1e-9)


def _write_database(path, K, R, t, X, noise, names):
    """A COLMAP database with each view's projections of X (+ noise) as keypoints, every pair
    verified with all points as inliers (written in reversed id order for one pair, which
    COLMAP stores swapped), plus a WATERMARK pair that must be skipped."""
    import pycolmap
    rng = np.random.default_rng(5)
    db = pycolmap.Database.open(str(path))
    try:
        cid = db.write_camera(pycolmap.Camera(model="PINHOLE", width=W, height=H, params=[1000, 1000, W / 2, H / 2]))
        ids = [db.write_image(pycolmap.Image(name=n, camera_id=cid)) for n in names]
        perm = [rng.permutation(len(X)) for _ in names]  # keypoint order differs per view
        for k, iid in enumerate(ids):
            x = _project(X, K[k], R[k], t[k]) + rng.normal(0, noise, (len(X), 2))
            db.write_keypoints(iid, x[perm[k]].astype(np.float32))
        inv = [np.argsort(p) for p in perm]  # point index -> keypoint index
        for a in range(len(ids)):
            for b in range(a + 1, len(ids)):
                g = pycolmap.TwoViewGeometry()
                last = (a, b) == (0, len(ids) - 1)
                g.config = getattr(pycolmap.TwoViewGeometryConfiguration, "WATERMARK" if last else "UNCALIBRATED")
                lo, hi = (b, a) if (a, b) == (0, 1) else (a, b)
                g.inlier_matches = np.stack([inv[lo], inv[hi]], 1).astype(np.uint32)
                db.write_two_view_geometry(ids[lo], ids[hi], g)
    finally:
        db.close()


@pytest.fixture
def scene(tmp_path):
    """Cameras, a database (0.3 px keypoint noise) and SfM's model (the true cameras, in a
    scaled and rotated frame) laid out as preprocessing writes them."""
    K, R, t, X = _rig(n=4, seed=6)
    names = [f"v{k}.jpg" for k in range(4)]
    sfm = tmp_path / "prep" / "sfm"
    (sfm / "model").mkdir(parents=True)
    _write_database(sfm / "database.db", K, R, t, X, 0.3, names)
    Q = np.linalg.qr(np.random.default_rng(7).normal(size=(3, 3)))[0]
    Q *= np.linalg.det(Q)
    write_colmap_text(sfm / "model", K, R @ Q.T, 3 * t, np.tile([W, H], (4, 1)), names)
    return {"K": K, "R": R, "t": t, "names": names, "db": sfm / "database.db", "prep": tmp_path / "prep"}


def _cams(sc):
    return {n: (sc["K"][k], sc["R"][k], sc["t"][k]) for k, n in enumerate(sc["names"])}


def _report_views(sc):
    """report.json's views[] rows (the fields the reader uses)."""
    return [{"name": n, "K": sc["K"][k].tolist(), "R": sc["R"][k].tolist(), "t": sc["t"][k].tolist()}
            for k, n in enumerate(sc["names"])]


def test_database_matches_and_stats(scene):
    m = read_matches(scene["db"])
    assert m.names == scene["names"] and len(m) == 5 * 40  # 6 pairs, the watermark one skipped
    assert not ((m.view1 == 0) & (m.view2 == 3)).any()
    st = epipolar_stats(m, _cams(scene))
    # 0.3 px of noise on each coordinate of both points: the geometric error is ~0.3 px * chi(1)
    assert 0.1 < st["scene"]["epipolar_px_median"] < 0.4 and st["scene"]["num_matches"] == 200
    assert st["views"]["v0.jpg"]["num_matches"] == 80 and st["views"]["v1.jpg"]["num_matches"] == 120
    # a perturbed camera is seen in its own view's figure
    bad = _cams(scene)
    K, R, t = bad["v2.jpg"]
    bad["v2.jpg"] = (K, R, t + np.array([0.02, 0, 0]))
    worse = epipolar_stats(m, bad)
    assert worse["views"]["v2.jpg"]["epipolar_px_median"] > 3 * st["views"]["v2.jpg"]["epipolar_px_median"]
    # views without cameras drop out with their pairs
    two = epipolar_stats(m, {n: c for n, c in _cams(scene).items() if n in ("v0.jpg", "v1.jpg")})
    assert two["scene"]["num_matches"] == 40


def test_readers_give_the_same_figures(scene, tmp_path):
    m = read_matches(scene["db"])
    ref = epipolar_stats(m, _cams(scene))
    K, R, t, names = scene["K"], scene["R"], scene["t"], scene["names"]
    rep = tmp_path / "report.json"
    rep.write_text(json.dumps({"views": _report_views(scene) + [{"name": "gone.jpg", "K": None}]}))
    write_transforms(tmp_path / "transforms.json", K, R, t, np.tile([W, H], (4, 1)), [f"images/{n}" for n in names])
    import pycolmap
    text = tmp_path / "colmap_text"
    text.mkdir()
    write_colmap_text(text, K, R, t, np.tile([W, H], (4, 1)), names)
    binary = tmp_path / "colmap_bin"
    binary.mkdir()
    pycolmap.Reconstruction(str(text)).write(str(binary))
    for src in (rep, tmp_path / "transforms.json", text, binary, scene["db"].parent / "model"):
        got = epipolar_stats(m, read_cameras(src))
        for n in names + ["scene"]:
            a = ref["scene"] if n == "scene" else ref["views"][n]
            b = got["scene"] if n == "scene" else got["views"][n]
            assert a["num_matches"] == b["num_matches"]
            for k in ("epipolar_px_median", "epipolar_px_p90"):
                assert abs(a[k] - b[k]) < 1e-6, (src, n, k)


def test_report_block_and_cli(scene, tmp_path, capsys):
    views, block = report_epipolar(scene["db"], _cams(scene), focal_initial=1234.0)
    assert block["fit"]["num_matches"] == block["sfm"]["num_matches"] == 200
    # SfM's model holds the same cameras in another frame and scale: the same figures
    assert abs(block["fit"]["epipolar_px_median"] - block["sfm"]["epipolar_px_median"]) < 1e-6
    f = scene["K"][0, 0, 0]
    assert block["focal_px"] == {"sfm": pytest.approx(f, abs=1e-6), "initial": 1234.0, "fit": f}
    assert set(views["v1.jpg"]) == {"epipolar_px_median", "epipolar_px_p90"}
    none_views, none_block = report_epipolar(tmp_path / "missing.db", _cams(scene))
    assert none_block["fit"] is None and none_views["v0.jpg"]["epipolar_px_median"] is None

    out = tmp_path / "fit"
    out.mkdir()
    (out / "report.json").write_text(json.dumps({"preprocess_dir": str(scene["prep"]), "views": _report_views(scene)}))
    assert main([str(out), "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["cameras"]["scene"]["num_matches"] == 200
    assert abs(d["cameras"]["scene"]["epipolar_px_p90"] - block["fit"]["epipolar_px_p90"]) < 1e-12
    assert main([str(out)]) == 0
    assert "v3.jpg" in capsys.readouterr().out


def test_distorted_sfm_model_is_refused(scene):
    """A pinhole F cannot score distorted keypoints: the reader refuses, the report keeps the
    fit's figures and leaves SfM's empty."""
    cams_txt = scene["db"].parent / "model" / "cameras.txt"
    lines = cams_txt.read_text().splitlines()
    cams_txt.write_text("\n".join(ln if ln.startswith("#") else ln.replace("PINHOLE", "OPENCV") + " 0.1 0 0 0"
                                  for ln in lines) + "\n")
    with pytest.raises(ValueError, match="distortion"):
        read_cameras(cams_txt.parent)
    _, block = report_epipolar(scene["db"], _cams(scene))
    assert block["fit"]["num_matches"] == 200 and block["sfm"]["num_matches"] == 0
