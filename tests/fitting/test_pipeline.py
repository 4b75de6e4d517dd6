"""The whole fit on synthetic scenes with ground truth (the demo at reduced size), a faceless
view, resume from a checkpoint, and the real multi-view sample (slow)."""
from __future__ import annotations

import argparse
import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from fitting.config import parse_config
from fitting.export import read_colmap_text, read_params, read_transforms
from fitting.meshio import load_obj
from fitting.pipeline import fit_scene
from fitting.render.cameras import rotation_angle_deg

REPO = Path(__file__).resolve().parents[2]

REPORT_VIEW_KEYS = {"name", "used", "reason_if_unused", "landmark_rmse_px", "photometric_l1", "mask_iou",
                    "epipolar_px_median", "epipolar_px_p90", "num_tracks", "track_reprojection_px", "landmarks_used",
                    "rotation_sigma_deg", "center_sigma_mm", "K", "R", "t"}
GT_KEYS = {"rotation_error_deg_mean", "rotation_error_deg_max", "camera_center_error_mm_mean",
           "vertex_error_mm_mean", "landmark_rmse_px"}


@pytest.fixture(scope="module")
def demo_fit(tmp_path_factory):
    """6 views + 1 faceless on a +-60 deg arc at 192 px, fitted at 96 px (with a short
    photometric LM round), without SfM: the two outer views hold a detector's frontal-shaped
    points, and with no tracks to pose them they are posed by their masks
    (fitting/mask_pose.py; following their points, the fit was 23.6 deg off in the mean). (SfM
    on these views, SIFT seeing them doubled, registers 3 of them; docs/PREPROCESSING.md.)"""
    root = tmp_path_factory.mktemp("demo")
    cfg = parse_config([
        "--demo", "true", "--scene_dir", str(root / "scene"), "--savefolder", str(root / "out"),
        "--scene_name", "demo", "--standin_dir", str(root / "standin"), "--demo_views", "7", "--demo_yaw_deg", "60",
        "--demo_faceless_views", "1", "--demo_width", "192", "--demo_height", "192", "--image_size", "96",
        "--geom_lm_iters", "8", "--photo_iters", "4", "--progress", "false", "--n_shape", "40", "--n_exp", "20",
        "--tex_res", "64", "--w_photo_gn", "3e4", "--photo_gn_iters", "3", "--demo_sfm", "false"])
    report = fit_scene(cfg)
    return cfg, report, root / "out" / "demo"


@pytest.mark.slow  # shares the ~20 s reduced-demo fit
def test_demo_ground_truth(demo_fit):
    _, report, out = demo_fit
    gt = report["ground_truth"]
    assert set(gt) == GT_KEYS
    # reduced demo (6 views, 96 px, few iterations): looser than the full demo's targets
    assert gt["landmark_rmse_px"] < 1.5
    assert gt["rotation_error_deg_mean"] < 1.5
    assert gt["camera_center_error_mm_mean"] < 30
    assert gt["vertex_error_mm_mean"] < 6
    assert set(report) >= {"scene", "num_views", "device", "views", "timing_s", "ground_truth"}
    assert report["flagged_views"] == []
    assert set(report["timing_s"]) == {"preprocess", "init", "geometry", "photometric", "total"}
    for v in report["views"]:
        assert set(v) == REPORT_VIEW_KEYS
    # the cameras' standard errors (fitting/uncertainty.py; checked against a Monte Carlo in
    # test_uncertainty.py): finite for the posed views, and of the size of the actual errors
    sig = np.array([v["rotation_sigma_deg"] for v in report["views"] if v["used"]])
    assert np.isfinite(sig).all() and (sig > 0).all()
    assert all(v["rotation_sigma_deg"] is None for v in report["views"] if not v["used"])
    assert 0.1 < gt["rotation_error_deg_mean"] / np.sqrt((sig ** 2).mean()) < 3, (gt, sig)
    assert report["uncertainty"]["head_frame_rotation_sigma_deg"] > 0
    # the synthetic scene has no SfM database: epipolar figures are null, the focal lengths are not
    assert report["epipolar"]["database"] is None and report["epipolar"]["fit"] is None
    assert report["epipolar"]["focal_px"]["fit"] > 0
    for f in ("params.npz", "mesh.obj", "mesh.mtl", "texture.png", "transforms.json", "colmap/cameras.txt",
              "colmap/images.txt", "colmap/points3D.txt", "contact_sheet.png", "losses.png", "report.json"):
        assert (out / f).is_file(), f


@pytest.mark.slow  # shares the ~20 s reduced-demo fit
def test_profiles_without_tracks_are_posed_by_their_masks(demo_fit):
    """The two outer views (+-60 deg) followed a detector's frontal-shaped points, 62-65 deg
    off after the first round; re-posed by their masks and held by their outlines, they end
    as close to the truth as the others (measured 1.33 and 0.79 deg; 0.43-1.54 for the rest)."""
    cfg, report, out = demo_fit
    dropped = {d["name"]: d["reason"] for d in report["landmarks_not_used"]}
    assert set(dropped) == {"view_00.png", "view_06.png"}
    assert all("posed by its mask" in why for why in dropped.values())
    gt = np.load(Path(cfg.scene_dir) / "ground_truth.npz")
    names = list(gt["names"])
    R_gt = torch.tensor(gt["R"], dtype=torch.float64)
    err = {v["name"]: float(rotation_angle_deg(torch.tensor(v["R"], dtype=torch.float64), R_gt[names.index(v["name"])]))
           for v in report["views"] if v["used"]}
    assert max(err.values()) < 2.5, err


@pytest.mark.slow  # shares the ~20 s reduced-demo fit
def test_faceless_view_is_left_out_and_named(demo_fit):
    _, report, out = demo_fit
    unused = [v for v in report["views"] if not v["used"]]
    assert len(unused) == 1 and "face" in unused[0]["reason_if_unused"]
    assert report["num_views"] == 6
    # the profiles' landmarks are a detector's frontal-shaped points, left out of the fit
    assert all(v["landmark_rmse_px"] < 3 for v in report["views"] if v["used"] and v["landmarks_used"])
    assert len(list((out / "overlays").glob("*.png"))) == 6


@pytest.mark.slow  # shares the ~20 s reduced-demo fit
def test_exports_agree_with_params(demo_fit):
    """transforms.json, the COLMAP model and params.npz hold the same cameras; a mesh vertex
    projects to the same pixel through each (1e-3 px)."""
    _, report, out = demo_fit
    p = read_params(out / "params.npz")
    Kt, Rt, tt, st, paths, d = read_transforms(out / "transforms.json")
    Kc, Rc, tc, sc, names, pts = read_colmap_text(out / "colmap")
    assert list(p["names"]) == names and len(paths) == len(names)
    assert all(f["fl_x"] == f["fl_y"] for f in d["frames"])  # one camera, square pixels
    assert (out / paths[0]).resolve().is_file() and (out / d["mesh_path"]).is_file()
    verts, *_ = load_obj(out / "mesh.obj")
    np.testing.assert_allclose(pts, verts, atol=1e-6)
    X = verts[:50]

    def proj(K, R, t):
        x = X @ R.T + t
        return x[:, :2] / x[:, 2:] * np.array([K[0, 0], K[1, 1]]) + K[:2, 2]
    for i in range(len(names)):
        ours = proj(p["K"][i], p["R"][i], p["t"][i])
        np.testing.assert_allclose(proj(Kt[i], Rt[i], tt[i]), ours, atol=1e-3)
        np.testing.assert_allclose(proj(Kc[i], Rc[i], tc[i]), ours, atol=1e-3)
    rep = {v["name"]: v for v in report["views"] if v["used"]}
    np.testing.assert_allclose(np.asarray(rep[names[0]]["K"]), p["K"][0], atol=1e-4)


@pytest.mark.slow  # shares the ~20 s reduced-demo fit
def test_resume_skips_finished_stages(demo_fit, tmp_path):
    cfg, report, out = demo_fit
    cfg2 = parse_config(["--scene_dir", cfg.scene_dir, "--savefolder", cfg.savefolder, "--scene_name", "demo",
                         "--standin_dir", cfg.standin_dir, "--image_size", "96", "--progress", "false",
                         "--n_shape", "40", "--n_exp", "20", "--tex_res", "64", "--photo_iters", "6",
                         "--resume", "true", "--write_images", "false"])
    ck = torch.load(out / "checkpoint.pt", weights_only=True)
    assert ck["progress"]["done"] == ["init", "geometry", "photometric"]
    # the photometric LM round ran after the two landmark rounds, with colour rows
    photo = [h["photo"] for h in ck["history"]["geometry"] if h["round"] == 2]
    assert photo and all(p > 0 for p in photo)
    # pretend the photometric stage stopped after 2 iterations: resume must run 4 more only
    ck["progress"] = {"done": ["init", "geometry"], "stage": "photometric", "pos": 2}
    ck["history"]["photometric"] = ck["history"]["photometric"][:2]
    torch.save(ck, out / "checkpoint.pt")
    rep2 = fit_scene(cfg2)
    ck2 = torch.load(out / "checkpoint.pt", weights_only=True)
    assert [h["iter"] for h in ck2["history"]["photometric"]] == list(range(6))
    assert rep2["timing_s"]["geometry"] == pytest.approx(report["timing_s"]["geometry"], abs=1e-3)


@pytest.mark.slow
def test_real_multiview_sample(shared_data, real_sample_estimate):
    """8 real views, stand-in on the FLAME template: all views used; with the head's SfM tracks
    the cameras agree with SfM's matches on the head better than SfM's own cameras do, span the
    capture's yaw range (the data's README: about +-45 deg; tracks on the torso, which turns
    against the head, had collapsed it to +-8), and the landmarks stay close."""
    scene = shared_data / "multiview_sample"
    root, report = real_sample_estimate
    assert report["num_views"] == 8 and all(v["used"] for v in report["views"])
    rmse = [v["landmark_rmse_px"] for v in report["views"]]
    epi = report["epipolar"]
    print("landmark RMSE", np.round(rmse, 2), "epipolar fit", epi["fit"], "sfm", epi["sfm"])
    print("on the head: fit", epi["head"]["fit"], "sfm", epi["head"]["sfm"])
    assert report["tracks"]["num_observations"] > 1000
    assert epi["fit"]["epipolar_px_median"] <= epi["sfm"]["epipolar_px_median"], epi
    assert epi["head"]["fit"]["epipolar_px_median"] <= epi["head"]["sfm"]["epipolar_px_median"], epi["head"]
    assert epi["head"]["fit"]["epipolar_px_p90"] <= 1.1 * epi["head"]["sfm"]["epipolar_px_p90"], epi["head"]
    yaw = [np.degrees(np.arctan2(np.array(v["R"])[2, 0], -np.array(v["R"])[2, 2])) for v in report["views"]]
    assert max(yaw) - min(yaw) >= 40, np.round(yaw, 1)       # 51 deg measured; 15 with the torso's tracks
    assert np.mean(rmse) <= 1.2 * 3.4, rmse                   # 3.4 px with landmarks alone (256 px)
    out = root / "multiview_sample"
    for f in ("report.json", "params.npz", "mesh.obj", "transforms.json", "colmap/images.txt"):
        assert (out / f).is_file()
    det = json.loads((out / "fit_details.json").read_text())
    assert det["focal"]["refined"]
    # the rig's 30 views give 3323 px (issue 5); SfM on these 8 is a bas-relief (1133 px). -19 %
    # measured (2680 px, sigma 5 %); -46 % (1809 px) before the focal step was a dolly zoom,
    # when the LM stopped short of its optimum (docs/FITTING.md, "Focal length")
    print("focal", det["focal"], "sigma %", report["uncertainty"]["focal_sigma_pct"])
    assert abs(det["focal"]["fitted_px"] / 3323 - 1) <= 0.25, det["focal"]
    # converged: one more Gauss-Newton step moves nothing by a tenth of its standard error (at 256
    # px 0.0011; 4.4 after 3 of the 10 iterations a round, docs/FITTING.md)
    conv = det["geometry_convergence"]
    print("convergence", {k: v for k, v in conv.items() if k != "views"})
    assert conv["converged"] and conv["step_sigma_max"] < 0.1, {k: v for k, v in conv.items() if k != "views"}
    assert not any(p.name in ("landmarks.json", "masks") for p in scene.iterdir())  # read-only scene untouched


@pytest.mark.slow
def test_tracks_that_never_joined_the_fit_are_reported_unused(shared_data, real_sample_estimate, tmp_path):
    """The real sample's SfM is a bas-relief, so its track points are triangulated when the first
    round after the static ones starts. With --geom_rounds 1 there is none: the fit finishes
    without them (it crashed on their missing points), and the report and the summary say so
    and what to give."""
    from fitting.viewer import summary_lines
    from tests.conftest import real_sample_args
    root, _ = real_sample_estimate
    args = real_sample_args(shared_data, root, "--savefolder", str(tmp_path), "--photo_iters", "0",
                            "--write_images", "false", "--export", "none", "--geom_rounds", "1")
    rep = fit_scene(parse_config(args))
    tr = rep["tracks"]
    assert tr["num_observations"] > 1000 and tr["used"] is False and "--geom_rounds 2" in tr["why_unused"], tr
    assert all(v["track_reprojection_px"] is None for v in rep["views"])
    assert "tracks took no part in the fit" in "\n".join(summary_lines(rep, tmp_path / "multiview_sample"))


@pytest.mark.slow  # shares the ~20 s reduced-demo fit
def test_stages_with_one_subject_per_view(demo_fit):
    """The single-image batch layout (G = N, one view each) runs through the same init and LM
    stage: every view's landmarks fit, and each subject gets its own shape."""
    from fitting.model import load_model
    from fitting.scene import load_scene
    from fitting.context import FitContext
    from fitting.stages import evaluate, initialize, stage_geometry
    from fitting.state import FitState

    import argparse
    cfg, _, _ = demo_fit
    cfg = argparse.Namespace(**{**vars(cfg), "geom_lm_iters": 5})
    flame, tex, _ = load_model(cfg, "cpu")
    sc = load_scene(cfg.scene_dir, 96)
    N = 3  # three views, each its own subject
    st = FitState.create(N, torch.arange(N), sc.K[:N], cfg.n_shape, cfg.n_exp, (tex.n_tex,))
    ctx = FitContext(flame, sc.images[:N], sc.landmarks[:N], sc.skin_mask[:N], sc.head_mask[:N], torch.ones(N),
                     cfg, tex, progress=False)
    st, info = initialize(ctx, st)
    assert all(s == "pnp" for s in info["source"])
    st = stage_geometry(ctx, st)
    ev = evaluate(ctx, st, render=False)
    assert st.shape.shape == (N, cfg.n_shape)
    assert float(ev["landmark_rmse"].max()) < 1.0  # fitting pixels (96 px images, 0.5 px noise)
    assert float((st.shape[0] - st.shape[1]).abs().max()) > 0  # subjects are independent


def _true_state(demo_fit):
    """The reduced demo's scene at 96 px with the true head and cameras:
    (FitContext, FitState, ground truth, index of each loaded view in it, number of views)."""
    from fitting.render.cameras import matrix_to_rot
    from fitting.model import load_model
    from fitting.scene import load_scene
    from fitting.context import FitContext
    from fitting.state import FitState

    cfg, _, _ = demo_fit
    flame, tex, _ = load_model(cfg, "cpu")
    sc = load_scene(cfg.scene_dir, 96)
    gt = sc.ground_truth
    idx = [list(map(str, gt["names"])).index(n) for n in sc.names]
    N = sc.num_views
    st = FitState.create(N, torch.zeros(N, dtype=torch.long), sc.K, cfg.n_shape, cfg.n_exp, (tex.n_tex,))
    st.shape, st.expression = torch.tensor(gt["shape"]).float(), torch.tensor(gt["expression"]).float()
    st.pose = torch.tensor(gt["pose"]).float()
    st.cam_rot, st.cam_t = matrix_to_rot(torch.tensor(gt["R"][idx]).float()), torch.tensor(gt["t"][idx]).float()
    ctx = FitContext(flame, sc.images, sc.landmarks, sc.skin_mask, sc.head_mask, torch.ones(N),
                     argparse.Namespace(**vars(cfg)), tex, progress=False)
    return ctx, st, gt, idx, N


@pytest.mark.slow  # shares the ~20 s reduced-demo fit
def test_rim_correspondences_unbiased_at_ground_truth(demo_fit):
    """At the true head and cameras the outline pairs (silhouette-edge vertices vs the head-mask
    boundary) sit on each other: median signed distance ~0 (a bias here is a head-scale error);
    moving every camera 2 % farther shrinks the head, so the pairs move inside the mask."""
    from fitting.context import subject_vertices, view_geometry
    from fitting.correspondences import rim_correspondences
    from fitting.render.cameras import project_points

    ctx, st, _, _, N = _true_state(demo_fit)

    def signed(s):
        view, vert, tgt, nrm = rim_correspondences(ctx, s, 4.0)
        vv, _ = view_geometry(ctx, s, subject_vertices(ctx, s))
        return view, ((project_points(vv, s.K(), s.R(), s.cam_t)[0][view, vert] - tgt) * nrm).sum(-1)

    view, r = signed(st)
    assert set(view.tolist()) == set(range(N))  # every view has outline pairs
    assert abs(float(r.median())) < 0.05       # fitting px (96 px images)
    assert float(r.abs().median()) < 0.2
    far = st.detach()
    far.cam_t = st.cam_t * 1.02
    _, r2 = signed(far)
    assert float(r2.median()) < -0.15


def _appearance_gradient(ctx, st, smp, photo):
    """A function of an appearance state: the norm of the gradient, in texture code and SH, of
    the closed forms' cost at the samples ``smp`` of the head ``st``, by autograd on the
    renderer's colour model (independent of the solvers' algebra)."""
    from fitting.context import subject_vertices, view_geometry
    from fitting.render.shading import sh_basis, vertex_normals
    from fitting.render.texture import uv_to_grid

    view, face, bary, _ = smp
    vv, _ = view_geometry(ctx, st, subject_vertices(ctx, st))
    f = ctx.flame.faces.long()
    n = (vertex_normals(vv, f)[view[:, None], f[face]] * bary[..., None]).sum(1)
    Y = sh_basis(n / n.norm(dim=-1, keepdim=True)).detach()
    vt, ft = ctx.uvs()
    uv = (vt[ft[face]] * bary[..., None]).sum(1)

    def grad_norm(s, wrt=("tex", "sh")):
        code, sh = s.tex.detach().clone().requires_grad_(), s.sh.detach().clone().requires_grad_()
        ts = ctx.texspace                                           # the linear model, unclamped
        tex = ts.mean + torch.einsum("bk,kchw->bchw", code, ts.basis)
        alb = torch.nn.functional.grid_sample(tex, uv_to_grid(uv)[None, None].to(tex), mode="bilinear",
                                              padding_mode="border", align_corners=False)[0, :, 0].t()
        col = alb * (Y[:, :, None] * sh[view]).sum(1)
        cost = ((col - photo) ** 2).sum() + 1e-4 * (code ** 2).sum()
        g = torch.autograd.grad(cost, [{"tex": code, "sh": sh}[k] for k in wrt])
        return float(torch.cat([x.reshape(-1) for x in g]).norm())
    return grad_norm


def _appearance_at_the_truth(demo_fit):
    """(ctx, the true head with the true texture code and SH, samples, photo at them (S, 3), the
    RMS of the true appearance's render against the photo there, the true head with a blank
    appearance: code 0, ambient SH)."""
    from fitting.context import render_views
    from fitting.correspondences import photo_samples

    ctx, st, gt, idx, N = _true_state(demo_fit)
    st.tex, st.sh = torch.tensor(gt["tex"]).float(), torch.tensor(gt["sh"][idx]).float()
    smp = photo_samples(ctx, st)
    assert smp is not None and set(smp[0].tolist()) == set(range(N))
    photo = ctx.images.permute(0, 2, 3, 1).reshape(-1, 3)[smp[3]]
    with torch.no_grad():
        ren = render_views(ctx, st).image.permute(0, 2, 3, 1).reshape(-1, 3)[smp[3]]
    blank = st.detach()
    blank.tex.zero_()
    blank.sh.zero_()
    blank.sh[:, 0] = 1 / 0.8862269
    return ctx, st, smp, photo, float((ren - photo).pow(2).mean().sqrt()), blank


def _rendered_at(ctx, st, pix):
    from fitting.context import render_views
    with torch.no_grad():
        return render_views(ctx, st).image.permute(0, 2, 3, 1).reshape(-1, 3)[pix]


@pytest.mark.slow  # shares the ~20 s reduced-demo fit
def test_closed_form_appearance_matches_the_renderer_at_the_truth(demo_fit):
    """At the true head and cameras, the alternating least squares for texture code and SH
    explain the photo as well as the true appearance does, with the renderer's colour model."""
    from fitting.appearance import solve_appearance

    ctx, st, smp, photo, rms_true, blank = _appearance_at_the_truth(demo_fit)
    # the closed form starts from a blank appearance, not from the truth
    fitted, colour = solve_appearance(ctx, blank, smp)
    rms_fit = float((colour - photo).pow(2).mean().sqrt())
    # the photo is the render (resampled, 8-bit: ~0.003) times the scene's skin detail, which the
    # texture space cannot represent (0.0175 in all measured here)
    assert rms_true < 0.025
    # least squares: at least as good as the truth's appearance (measured 0.0023 vs 0.0026 here)
    assert rms_fit <= rms_true
    # and converged: the cost's gradient in code and SH is ~0 next to its size at the blank start
    grad_norm = _appearance_gradient(ctx, st, smp, photo)
    assert grad_norm(fitted) < 1e-3 * grad_norm(blank)
    # the returned colours are what the renderer draws with the fitted appearance
    torch.testing.assert_close(_rendered_at(ctx, fitted, smp[3]), colour, atol=2e-4, rtol=0)


@pytest.mark.slow  # shares the ~20 s reduced-demo fit
def test_lighting_with_the_texture_held_is_the_least_squares_sh(demo_fit):
    """A sequence frame's appearance (``solve_lighting``: the identity's texture code held, here
    the true one): the code is untouched, the SH is the least-squares solution for it, at least
    as good as the true SH, and the returned colours are the renderer's with it."""
    from fitting.appearance import solve_lighting

    ctx, st, smp, photo, rms_true, blank = _appearance_at_the_truth(demo_fit)
    start = st.detach()
    start.sh = blank.sh.clone()                                    # the true code, ambient light
    lit, colour = solve_lighting(ctx, start, smp)
    assert torch.equal(lit.tex, st.tex)
    assert float((colour - photo).pow(2).mean().sqrt()) <= rms_true
    grad_norm = _appearance_gradient(ctx, st, smp, photo)
    assert grad_norm(lit, wrt=("sh",)) < 1e-3 * grad_norm(start, wrt=("sh",))
    torch.testing.assert_close(_rendered_at(ctx, lit, smp[3]), colour, atol=2e-4, rtol=0)


@pytest.mark.slow  # shares the ~20 s reduced-demo fit
def test_demo_scene_is_rebuilt_when_its_recipe_changes(demo_fit, tmp_path):
    """A demo scene left by an older stand-in or other demo options would silently give wrong
    ground-truth errors: it is rebuilt; a ground-truth folder the demo did not make is refused."""
    import shutil

    import numpy as np

    from fitting.demo import ensure_demo_scene

    cfg, _, _ = demo_fit
    scene = tmp_path / "scene"
    shutil.copytree(cfg.scene_dir, scene)
    assert not ensure_demo_scene(cfg, scene)                  # up to date: kept as it is
    noisier = argparse.Namespace(**{**vars(cfg), "demo_noise_px": 2.5, "demo_faceless_views": 0})
    assert ensure_demo_scene(noisier, scene)
    assert float(np.load(scene / "ground_truth.npz")["noise_px"]) == 2.5
    assert not ensure_demo_scene(noisier, scene)
    (scene / "manifest.json").write_text('{"stages": {}}')     # not generated by the demo
    with pytest.raises(ValueError, match="did not generate"):
        ensure_demo_scene(cfg, scene)


@pytest.mark.slow  # shares the ~20 s reduced-demo fit
def test_photometric_resume_continues_adam(demo_fit):
    """Stopped after 2 of 4 photometric iterations and resumed from that checkpoint (state and
    Adam moments), the stage ends where an uninterrupted run ends."""
    import copy

    from fitting.stages import init_appearance, stage_photometric

    ctx, st, _, _, _ = _true_state(demo_fit)
    ctx.cfg.photo_iters, ctx.cfg.checkpoint_every = 4, 1
    st = init_appearance(ctx, st)
    full = stage_photometric(ctx, st.detach())
    snaps = {}
    ctx.on_iter = lambda stage, p, s: snaps.setdefault(p, (s.detach(), copy.deepcopy(ctx.photo_opt_state)))
    stage_photometric(ctx, st.detach())
    snap, opt_state = snaps[2]
    ctx.on_iter, ctx.photo_opt_state = None, opt_state
    resumed = stage_photometric(ctx, snap, start_iter=2)
    for name in ("shape", "expression", "tex", "sh", "cam_t"):
        torch.testing.assert_close(getattr(resumed, name), getattr(full, name), rtol=1e-5, atol=1e-7)
    # without the moments the resumed run is measurably different (the check above has teeth)
    ctx.photo_opt_state = None
    fresh = stage_photometric(ctx, snap, start_iter=2)
    assert (fresh.shape - full.shape).abs().max() > 1e-4


@pytest.mark.slow  # shares the ~20 s reduced-demo fit
def test_photometric_resume_refuses_moments_of_other_variables(demo_fit):
    """A checkpoint whose Adam state holds more variables than this run optimises (e.g. the
    cameras, then held by tracks) stops with what to do, not with an index error."""
    from fitting.stages import stage_photometric

    ctx, st, _, _, _ = _true_state(demo_fit)
    ctx.cfg.photo_iters = 4
    moments = {"step": 1, "exp_avg": torch.zeros(3), "exp_avg_sq": torch.zeros(3)}
    ctx.photo_opt_state = {"state": {99: moments}}
    with pytest.raises(ValueError, match="optimised other variables.*without --resume"):
        stage_photometric(ctx, st.detach(), start_iter=2)
    ctx.photo_opt_state = None


def _compare_jacobians(J: torch.Tensor, ref: torch.Tensor, term: str, tol: float = 1e-4) -> None:
    """J against ref (rows, 7 + P) to ``tol`` relative (Frobenius) in every column block
    (rotation, translation, focal, coefficients): a small block is not drowned by a large one."""
    assert J.shape == ref.shape, (term, tuple(J.shape), tuple(ref.shape))
    for name, cols in (("rotation", slice(0, 3)), ("translation", slice(3, 6)), ("focal", slice(6, 7)),
                       ("coefficients", slice(7, None))):
        a, b = J[:, cols], ref[:, cols]
        err = float((a - b).norm() / b.norm().clamp_min(1e-30))
        assert err <= tol, f"{term} term, {name} columns: chain rule vs jacfwd relative error {err:.2e}"


@pytest.mark.slow  # shares the ~20 s reduced-demo fit
@pytest.mark.parametrize("layout", ["one_subject_photo_round", "subject_per_view_focal"])
def test_lm_jacobian_equals_autodiff(demo_fit, layout):
    """Each row term's chain-rule Jacobian (landmarks with the dynamic contour, outline,
    photometric samples; one subject or one per view; focal refinement) against
    torch.func.jacfwd of its residuals, at a state two LM iterations into the fit."""
    from fitting.context import FitContext
    from fitting.geometry_terms import Unknowns, linearize, model_at
    from fitting.model import load_model
    from fitting.scene import load_scene
    from fitting.stages import geometry_terms, initialize, lm_geometry
    from fitting.state import FitState

    cfg, _, _ = demo_fit
    cfg = argparse.Namespace(**{**vars(cfg), "w_rim": 1.0})      # outline rows on (the demo's weight)
    photo = layout == "one_subject_photo_round"
    flame, tex, _ = load_model(cfg, "cpu")
    sc = load_scene(cfg.scene_dir, 96)
    N = 4
    subject = torch.zeros(N, dtype=torch.long) if photo else torch.arange(N)
    st = FitState.create(N, subject, sc.K[:N], cfg.n_shape, cfg.n_exp, (tex.n_tex,))
    ctx = FitContext(flame, sc.images[:N], sc.landmarks[:N], sc.skin_mask[:N], sc.head_mask[:N], torch.ones(N),
                     cfg, tex, refine_focal=not photo, progress=False)
    st, _ = initialize(ctx, st)
    st = lm_geometry(ctx, st, True, 2)                                   # landmarks only, static contour
    unk = Unknowns.of(st, ctx.refine_focal)
    st, terms = geometry_terms(ctx, st, unk, False, use_rim=True, use_photo=photo)
    assert [t.name for t in terms] == ["landmark", "rim"] + (["photo"] if photo else [])
    lin = linearize(ctx, st, unk)
    x0 = torch.zeros(7 + unk.P)
    for term in terms:
        ref = torch.func.jacfwd(lambda x: term.residuals(model_at(ctx, st, unk, x)))(x0).detach()
        _compare_jacobians(term.jacobian(lin), ref, term.name)
    hist = []
    lm_geometry(ctx, st, False, 2, hist, use_rim=True, use_photo=photo)  # each term's cost per iteration
    assert len(hist) == 2 and hist[0]["rim"] > 0 and (hist[0]["photo"] > 0) == photo


def test_demo_scene_is_the_same_whatever_the_thread_count(tmp_path):
    """The render's float32 sums follow torch's thread count, and one changed pixel moves SIFT's
    tracks and the whole demo fit: the scene is built with one thread whatever the caller uses.
    (At 512 px, 4 views, one image differs between 1 and 2 threads without that; at 256 px none.)"""
    from fitting.demo import ensure_demo_scene

    digests = []
    for threads in (2, 1):
        cfg = parse_config(["--config", "configs/demo.txt", "--standin_dir", str(tmp_path / "standin"),
                            "--savefolder", str(tmp_path), "--demo_views", "4",
                            "--demo_width", "512", "--demo_height", "512", "--demo_sfm", "false",
                            "--n_shape", "20", "--n_exp", "10"])
        before = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            ensure_demo_scene(cfg, tmp_path / f"scene{threads}")
            assert torch.get_num_threads() == threads       # the caller's setting comes back
        finally:
            torch.set_num_threads(before)
        images = sorted((tmp_path / f"scene{threads}" / "images").iterdir())
        digests.append([hashlib.sha256(p.read_bytes()).hexdigest() for p in images])
    assert digests[0] == digests[1]


def test_texture_shape_and_the_no_uv_error():
    """Both fits (scenes and single photos) size their texture unknowns in one place, which
    refuses a model that has neither UVs nor a texture space, saying what to give."""
    from types import SimpleNamespace as NS

    from fitting.model import texture_shape
    cfg = NS(tex_res=64)
    assert texture_shape(cfg, NS(verts_uvs=None), NS(n_tex=16)) == (16,)
    assert texture_shape(cfg, NS(verts_uvs=torch.zeros(4, 2)), None) == (3, 64, 64)
    with pytest.raises(ValueError, match="no UVs and no texture space: give --tex_space"):
        texture_shape(cfg, NS(verts_uvs=None), None)


def test_views_the_head_misses_are_flagged():
    """The mask IoUs of the reduced demo on +-60 deg, whose outer views followed a detector's
    frontal-shaped points (no tracks at 192 px; before they were posed by their masks), are
    flagged; the real sample's, hair in every mask, are not; nor are views that tracks or a
    calibration pose."""
    from fitting.pipeline import low_mask_iou_flags
    names, alone = [f"v{i}" for i in range(6)], np.ones(6, bool)
    iou = np.array([0.458, 0.935, 0.867, 0.881, 0.898, 0.446])
    flags = low_mask_iou_flags(names, iou, alone)
    assert [f["name"] for f in flags] == ["v0", "v5"] and "mask IoU 0.46" in flags[0]["reason"]
    assert low_mask_iou_flags(names, np.array([0.661, 0.664, 0.659, 0.657, 0.663, 0.652]), alone) == []
    assert low_mask_iou_flags(names, iou, np.zeros(6, bool)) == []
