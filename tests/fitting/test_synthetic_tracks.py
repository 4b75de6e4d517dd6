"""SfM tracks on the synthetic scene: the skin detail in UV space gives pycolmap features on the
head, process_data's SfM registers the views with the scene's known K kept, and its poses and
points agree with the ground truth after a similarity (the points on the head's surface, not
on the per-view backgrounds)."""
from __future__ import annotations

import json

import numpy as np
import pytest
from scipy.spatial import cKDTree

from fitting.init import align_sfm_poses
from fitting.synthetic_scene import make_scene, skin_detail, uv_metres

N_VIEWS = 6


@pytest.fixture(scope="module")
def sfm_scene(tmp_path_factory, standin_path):
    """6 views of 448 px on a +-60 deg arc at 0.8 m, then process_data's SfM stage (~20 s CPU).
    The wide arc and the short distance pin SfM's focal length (4% off here; +-45 deg at 1 m:
    16%), without which its points sit centimetres off the true surface after the similarity.
    SfM's retry round here adds the landmarks as matches (``--sfm_landmarks fallback``), except
    the two profiles': their face boxes sit at the side of their head masks
    (process_data/profiles.py). Their detector points, frontal-shaped, pulled SfM's focal length
    to 0.63x the true one (docs/PREPROCESSING.md). SIFT sees the views as they are
    (``sfm_max_size`` 448): doubled, SfM takes 40 s here instead of 10 s (registering 6 views
    with 950 points instead of 5 with 212); test_intrinsics.py tests the doubling."""
    from process_data.pipeline import run_all
    scene = make_scene(tmp_path_factory.mktemp("tracks") / "scene", standin_path, n_views=N_VIEWS, width=448,
                       height=448, yaw_deg=60.0, distance=0.8, n_shape=20, n_exp=10, seed=0)
    run_all(scene, stages=["scan", "intrinsics"], progress=False, sfm_max_size=448)
    cams = json.loads((scene / "cameras.json").read_text())
    warnings = json.loads((scene / "manifest.json").read_text())["warnings"]
    assert any("view_00.png (face box +0.23" in w and "view_05.png (face box -0.23" in w for w in warnings), warnings
    gt = dict(np.load(scene / "ground_truth.npz"))
    names = [str(n) for n in gt["names"]]
    reg = cams["registered"]
    idx = [names.index(n) for n in reg]
    R = np.array([cams["sfm_poses"][n]["R"] for n in reg])
    t = np.array([cams["sfm_poses"][n]["t"] for n in reg])
    al = align_sfm_poses(R, t, gt["R"][idx], gt["t"][idx], max_deg=180, max_rel=1e9)
    return scene, cams, gt, al


def test_skin_detail_is_seeded_with_unit_mean():
    a = skin_detail(96, 160, 0.17e-3, np.random.default_rng(3))  # the 1024 px demo's texels
    b = skin_detail(96, 160, 0.17e-3, np.random.default_rng(3))
    c = skin_detail(96, 160, 0.17e-3, np.random.default_rng(4))
    assert a.shape == (3, 96, 160) and a.dtype == np.float32
    np.testing.assert_array_equal(a, b)
    assert np.abs(a - c).mean() > 0.05
    np.testing.assert_allclose(a.mean(axis=(1, 2)), 1.0, rtol=1e-5)
    assert a.std() > 0.1 and a.min() >= 0  # high-frequency contrast for SIFT, never a negative albedo


def test_skin_detail_finer_than_a_texel_fades():
    """Coarse texels (a low-resolution render) average the pores away instead of drawing them
    texel-sized: the contrast drops, as in a photo of lower resolution."""
    fine = skin_detail(128, 128, 0.17e-3, np.random.default_rng(0))
    coarse = skin_detail(128, 128, 0.9e-3, np.random.default_rng(0))
    assert coarse.std() < 0.8 * fine.std()


def test_uv_metres_of_a_plane():
    """A 0.2 m x 0.1 m rectangle mapped to the whole UV square: 0.2 m per unit u, 0.1 m per unit v."""
    verts = np.array([[0, 0, 0], [0.2, 0, 0], [0.2, 0.1, 0], [0, 0.1, 0]], np.float64)
    uvs = np.array([[0, 0], [1, 0], [1, 1], [0, 1]], np.float64)
    faces = np.array([[0, 1, 2], [0, 2, 3]])
    np.testing.assert_allclose(uv_metres(verts, faces, uvs, faces), [0.2, 0.1])


def test_sfm_registers_the_views_and_keeps_the_known_K(sfm_scene):
    scene, cams, gt, _ = sfm_scene
    assert cams["source"] == "known"
    np.testing.assert_allclose(cams["K"], gt["K"][0], rtol=1e-6)
    assert len(cams["registered"]) >= N_VIEWS - 1
    assert cams["num_points3D"] >= 100
    assert cams["colmap_model"] == "sfm/model"
    assert (scene / "sfm" / "database.db").is_file() and (scene / "sfm" / "model" / "points3D.bin").is_file()
    assert abs(cams["sfm_K"][0][0] / gt["K"][0, 0, 0] - 1) < 0.1  # SfM's own focal, free in its adjustment


def test_sfm_poses_match_the_truth_after_a_similarity(sfm_scene):
    _, _, gt, al = sfm_scene
    assert al["angle_deg"].max() < 1.5, al["angle_deg"]  # 0.41 deg mean, 0.83 max when written


def test_sfm_tracks_lie_on_the_head(sfm_scene, standin):
    """The independent check that the tracks follow the surface detail: each SfM track
    triangulated with the TRUE cameras lies on the true mesh (densely sampled) and reprojects
    to its observations to a fraction of a pixel, unbiased. And SfM's own points, after its
    cameras' similarity, lie on the surface too, not on the backgrounds (which differ per view,
    so no correct track can form there)."""
    import pycolmap
    scene, _, gt, al = sfm_scene
    rec = pycolmap.Reconstruction(str(scene / "sfm" / "model"))
    names = [str(n) for n in gt["names"]]
    P = {n: gt["K"][k] @ np.hstack([gt["R"][k], gt["t"][k][:, None]]) for k, n in enumerate(names)}
    V, F = gt["vertices"].astype(np.float64), standin.faces.numpy()
    rng = np.random.default_rng(0)
    w = rng.dirichlet(np.ones(3), 200_000)
    surface = cKDTree(np.einsum("nk,nkd->nd", w, V[F[rng.integers(0, len(F), len(w))]]))
    X_true, residuals = [], []
    for point in rec.points3D.values():
        obs = [(rec.images[e.image_id].points2D[e.point2D_idx].xy, P[rec.images[e.image_id].name])
               for e in point.track.elements]
        A = np.concatenate([[uv[0] * Pm[2] - Pm[0], uv[1] * Pm[2] - Pm[1]] for uv, Pm in obs])
        X = np.linalg.svd(A)[2][-1]
        X_true.append(X[:3] / X[3])
        residuals += [uv - (Pm @ X)[:2] / (Pm @ X)[2] for uv, Pm in obs]
    d_mm = surface.query(np.array(X_true))[0] * 1000
    r = np.linalg.norm(residuals, axis=1)
    # 0.38 / 0.71 mm and 0.15 px (2026-12-07; with SIFT on the views doubled: 0.33 / 0.59 mm, 0.08 px)
    assert np.median(d_mm) < 0.6 and np.percentile(d_mm, 90) < 1.2, np.percentile(d_mm, [50, 90])
    assert np.median(r) < 0.3 and np.abs(np.mean(residuals, 0)).max() < 0.02, (np.median(r), np.mean(residuals, 0))
    # SfM's own points: 0.71 / 1.55 mm. (Doubled: 2.8 / 3.0 mm, where SfM's cameras' similarity
    # puts its points, whose shape is the head's, 0.46 mm after their own similarity, ~2.8 mm off.)
    X = np.array([p.xyz for p in rec.points3D.values()])
    d_mm = surface.query(al["s"] * X @ al["Q"].T + al["T"])[0] * 1000
    assert np.median(d_mm) < 2 and np.mean(d_mm < 4) > 0.9, np.percentile(d_mm, [50, 90])
