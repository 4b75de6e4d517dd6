"""config -> scene -> stages (:func:`fitting.run.run_stages`) -> exports, with progress bars and checkpoints.

:func:`fit_scene` is what ``run_fitting.py`` calls. Outputs go to ``<savefolder>/<scene>/``
(see :mod:`fitting.export` and docs/FITTING.md), which holds the last complete result or none
(:mod:`fitting.output_folder`: the result is written into a staging folder beside it, report.json
last, then swapped in; a lock keeps a second run out). A checkpoint (``checkpoint.pt``: the
FitState, config, finished stages and position inside the current one) is written after
init, after each geometry round and every ``checkpoint_every`` photometric iterations;
``--resume true`` continues from it: the variables, and inside the photometric stage Adam's moments.
"""
from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import numpy as np
import torch

from fitting.config import config_to_dict, resolve_device
from fitting.evaluate_cameras import report_epipolar
from fitting.export import write_json
from fitting.known_cameras import apply_rig, initialize_from_rig, read_rig, rig_report, rig_tracks, scene_cameras_json
from fitting.landmark_trust import placed_without_landmarks
from fitting.mask_pose import low_mask_iou
from fitting.output_folder import FolderLock, ResultFolder, check_writable
from fitting.render.cameras import unscale_intrinsics
from fitting.scene import Scene, load_scene
from fitting.context import FitContext, texture_maps
from fitting.demo import ensure_demo_scene
from fitting.ground_truth import ground_truth_errors
from fitting.model import load_model, texture_shape
from fitting.run import Progress, StageHooks, run_stages, seed_everything
from fitting.stages import cameras64, initialize
from fitting.state import FitState, check_resume_options, load_checkpoint, save_checkpoint
from fitting.uncertainty import camera_uncertainty, geometry_convergence

__all__ = ["fit_scene", "decide_refine_focal", "judge_scene_sfm", "focal_prior_px",
           "head_mask_test", "scene_tracks", "tracks_unused_why", "attach_tracks", "write_outputs", "output_folder",
           "checkpoint_path", "RESULT_FILES"]

REPO = Path(__file__).resolve().parents[1]

# What a result consists of: replaced as a whole by the next complete result. Everything else
# in the output folder (checkpoint.pt, preprocess/, files of the user) stays.
RESULT_FILES = frozenset({"params.npz", "mesh.obj", "mesh.mtl", "texture.png", "transforms.json", "colmap",
                          "points3D.ply", "images", "overlays", "contact_sheet.png", "losses.png", "fit_details.json",
                          "report.json", "exports", "heatmaps", "index.html", "turntable.gif", "orbit.gif"})


def output_folder(cfg) -> Path:
    """``<savefolder>/<scene>``: the scene's results, its checkpoint and (for read-only scenes)
    its preprocessing outputs."""
    return Path(cfg.savefolder) / (cfg.scene_name or Path(cfg.scene_dir).resolve().name)


def checkpoint_path(cfg) -> Path:
    return output_folder(cfg) / "checkpoint.pt"


def decide_refine_focal(cfg, cameras: dict, num_views: int, sfm_quality: dict | None = None) -> tuple[bool, str]:
    """Whether to estimate the focal length here, and why. ``num_views``: the fit's views;
    ``sfm_quality``: the verdict of :func:`fitting.sfm_quality.judge_sfm` on SfM's model; a
    degenerate model's focal is refined."""
    if cfg.refine_focal != "auto":
        return cfg.refine_focal == "always", f"--refine_focal {cfg.refine_focal}"
    src = cameras.get("source", "")
    if src == "known":
        return False, "intrinsics known"
    if num_views < 2:
        # one view's landmarks barely fix it (sigma 30-80 %): refined, it drifts (docs/SEQUENCES.md)
        return False, f"one view: the focal length from {src or 'an unknown source'} is kept"
    if src != "sfm":
        return True, f"intrinsics from {src or 'unknown source'}, not SfM"
    if sfm_quality is not None and not sfm_quality["ok"]:
        return True, "SfM's model is degenerate: " + "; ".join(sfm_quality["reasons"])
    n_reg = len(cameras.get("registered") or [])
    K = np.asarray(cameras["K"], np.float64)
    w = float(cameras.get("width") or 2 * K[0, 2])
    fr = K[0, 0] / max(w, 1)
    if not 0.5 <= fr <= 20:
        return True, f"SfM focal {K[0, 0]:.0f} px = {fr:.2f} x width is implausible"
    if n_reg < cfg.sfm_min_views:
        return True, f"SfM registered only {n_reg} views (< {cfg.sfm_min_views}): its focal is unreliable"
    return False, f"SfM registered {n_reg} views"


def head_mask_test(scene: Scene):
    """inside(view (M,) indices, uv (M, 2) original pixels) -> (M,) bool: the points that fall in
    their view's head mask (at the fitting resolution)."""
    masks = (scene.head_mask[:, 0] > 0.5).cpu().numpy()                       # (N, H, W)
    scale = scene.scale.cpu().numpy()                                          # (N, 2)
    H, W = masks.shape[1:]

    def inside(view: np.ndarray, uv: np.ndarray) -> np.ndarray:
        x = np.clip(np.floor(uv[:, 0] * scale[view, 0]).astype(np.int64), 0, W - 1)
        y = np.clip(np.floor(uv[:, 1] * scale[view, 1]).astype(np.int64), 0, H - 1)
        return masks[view, y, x]

    return inside


def scene_tracks(cfg, scene: Scene) -> tuple:
    """The scene's SfM tracks over its used views (SfM's frame), or None (``--tracks off``,
    no SfM model, or no point seen twice); and {name: registration row} of the used views
    that SfM left out (:func:`fitting.register_views.register_left_out`: each registered one
    joins the tracks with its inlier observations, and its SfM-frame pose is added to
    ``scene.sfm_poses``, so it is initialised like SfM's own views).

    Only observations inside their view's head mask are kept: the fit's rigid object is the
    head, and the torso can turn against it (on the real 8-view sample, the torso's tracks, up
    to 70 % of a side view's, pulled the cameras into an arc of +-8 deg of yaw where the head's
    tracks and landmarks put them at +-30)."""
    from fitting.register_views import register_left_out
    from fitting.tracks import load_tracks
    model = scene.cameras.get("colmap_model")
    if cfg.tracks == "off" or not model or not (scene.prep_dir / model).is_dir():
        return None, {}
    lmk_orig = scene.landmarks.cpu().numpy() / scene.scale.cpu().numpy()[:, None, :]
    inside = head_mask_test(scene)
    rec, registered = register_left_out(scene.prep_dir / model, scene.prep_dir / "sfm" / "database.db", scene.names)
    for n, row in registered.items():
        if row["R"] is not None:
            scene.sfm_poses[n] = (np.asarray(row["R"], np.float64), np.asarray(row["t"], np.float64))
    return load_tracks(scene.prep_dir / model if rec is None else rec, scene.names, scene.scale.cpu().numpy(),
                       landmarks_px=lmk_orig, inside=inside), registered


def focal_prior_px(scene: Scene) -> float | None:
    """A focal length SfM's own can be checked against, original pixels: the known K
    (cameras.json source "known"), else the median EXIF focal length of the views, else None."""
    if scene.cameras.get("source") == "known":
        return float(np.asarray(scene.cameras["K"])[0, 0])
    from process_data.intrinsics import exif_focal_px
    f = [x for x in (exif_focal_px(p) for p in scene.image_paths) if x]
    return float(np.median(f)) if f else None


@torch.no_grad()
def judge_scene_sfm(ctx: FitContext, state: FitState, scene: Scene) -> dict | None:
    """The verdict of :func:`fitting.sfm_quality.judge_sfm` on the scene's SfM model (None
    without a model), with the landmark PnP poses of the mean head as the bas-relief check's
    reference (the poses :func:`initialize` starts from)."""
    from fitting.sfm_quality import judge_sfm, read_sfm_model
    from fitting.landmark_trust import view_yaw_deg
    from fitting.stages import mean_head_pnp
    model = scene.cameras.get("colmap_model")
    if not model or not (scene.prep_dir / model).is_dir():
        return None
    R, _, ok, _, _ = mean_head_pnp(ctx, state)
    yaw = view_yaw_deg(torch.as_tensor(R)).numpy()
    pnp = {n: (R[i], float(yaw[i])) for i, n in enumerate(scene.names) if ok[i]}
    return judge_sfm(read_sfm_model(scene.prep_dir / model, scene.names), scene.num_views, pnp=pnp,
                     focal_prior_px=focal_prior_px(scene))


def tracks_unused_why(cfg) -> str:
    """Why a fit's tracks have no points at its end: untrusted SfM points are triangulated when the
    first round after the static ones starts (:func:`fitting.stages.stage_geometry`)."""
    return (f"they join after the {cfg.geom_static_rounds} static landmark round(s), and --geom_rounds "
            f"{cfg.geom_rounds} leaves none after them: fit with --geom_rounds {cfg.geom_static_rounds + 1}")


def attach_tracks(ctx: FitContext, cfg, scene: Scene, tracks, init_info: dict, points=None) -> None:
    """Put the tracks into the geometry solve (``--tracks``, ``--track_*_px``). Their points,
    in the head frame: ``points`` (P, 3) when resuming; SfM's own points mapped by the
    similarity that initialisation fitted, when it trusted SfM (the initial cameras are then
    SfM's, and consistent with them); else none yet: the geometry stage triangulates them once
    the landmarks have placed the cameras."""
    from fitting.tracks import TrackTerm
    if tracks is None:
        return
    px = float(scene.scale.mean())           # fitting pixels per original pixel
    ctx.tracks = TrackTerm(tracks, robust_px=cfg.track_robust_px * px, device=ctx.images.device)
    ctx.track_sigma_px = cfg.track_sigma_px * px
    sim = init_info.get("sfm_similarity")
    if points is None and init_info.get("sfm_trusted") and sim is not None:
        points = tracks.transformed(sim["s"], np.asarray(sim["Q"]), np.asarray(sim["T"])).xyz
    if points is not None:
        ctx.tracks.points = torch.as_tensor(points, dtype=torch.float64, device=ctx.images.device)


def low_mask_iou_flags(names: list, iou: np.ndarray, by_landmarks: np.ndarray) -> list:
    """report.json ``flagged_views`` entries for the views (names, mask IoU (M,)) that neither
    tracks nor a calibration place (by_landmarks: (M,) bool) whose mask IoU is below
    ``MASK_IOU_FLAG_RATIO`` x the median view's (:func:`fitting.mask_pose.low_mask_iou`)."""
    med = float(np.median(iou)) if len(iou) else 0.0
    why = "the head misses its mask, so this pose is likely wrong (a detector's frontal-shaped points on a profile?)"
    return [{"name": n, "reason": f"mask IoU {x:.2f} against the median view's {med:.2f}: {why}"}
            for n, x, low in zip(names, iou, low_mask_iou(iou, by_landmarks)) if low]


def _view_sigmas(uncertainty: dict | None, i: int) -> dict:
    """View i's report fields from :func:`fitting.uncertainty.camera_uncertainty` (None without)."""
    row = None if uncertainty is None else uncertainty["views"][i]
    return {k: None if row is None else row[k] for k in ("rotation_sigma_deg", "center_sigma_mm")}


def write_outputs(out: Path, scene: Scene, ctx: FitContext, state: FitState, used: np.ndarray, ev: dict,
                  write_images: bool = True, final: Path | None = None) -> dict:
    """params.npz, mesh.obj + texture, transforms.json, COLMAP text model, points3D.ply, previews.
    Only views in ``used`` (N,) bool are exported. ``final``: the folder ``out`` becomes once
    complete (default ``out``), that transforms.json's image paths are relative to; it must lie
    at the same depth as ``out`` (the staging folder's sibling). Returns arrays used by the report."""
    from fitting.export import displayed_image_paths, vertex_colors_from_texture, write_colmap_text, write_mesh, \
        write_params, write_png, write_points_ply, write_transforms

    out.mkdir(parents=True, exist_ok=True)
    K = unscale_intrinsics(state.K().cpu(), scene.scale).numpy()
    R, t = state.R().cpu().numpy(), state.cam_t.cpu().numpy()
    idx = np.nonzero(used)[0]
    names = [scene.names[i] for i in idx]
    sizes = scene.orig_size.numpy()
    tex = texture_maps(ctx, state).cpu()
    vt, ft = ctx.uvs()
    verts = ev["verts"][0].cpu().numpy()
    sfm_f = float(np.asarray(scene.cameras["K"])[0, 0])
    params = dict(shape=state.shape, expression=state.expression, pose=state.pose, sh=state.sh[idx],
                  K=K[idx], R=R[idx], t=t[idx], names=names, image_size=sizes[idx],
                  view_subject=state.view_subject[idx], focal_initial=np.float64(sfm_f),
                  focal_fit=np.float64(K[idx][0, 0, 0] if len(idx) else math.nan))
    if state.free_texture:
        params["tex_map"] = state.tex
    else:
        params["tex"] = state.tex
    write_params(out / "params.npz", **params)
    write_mesh(out, verts, ctx.flame.faces.cpu(), None if vt is None else vt.cpu(), None if ft is None else ft.cpu(),
               tex[0])
    # copies of sideways photos go into ``out``; paths to the originals are relative to where
    # ``out`` ends up (same depth, so the same relative path)
    rel = displayed_image_paths(out, [scene.image_paths[i] for i in idx])
    write_transforms(out / "transforms.json", K[idx], R[idx], t[idx], sizes[idx], rel, mesh_path="mesh.obj")
    if ctx.tracks is not None and ctx.tracks.points is not None:
        points, colors = ctx.tracks.points.cpu().numpy(), ctx.tracks.rgb
    else:
        points, colors = verts, np.full((len(verts), 3), 200, np.uint8)
        if vt is not None:
            colors = vertex_colors_from_texture(tex[0], vt.cpu(), ctx.flame.faces.cpu(), ft.cpu(), len(verts))
    write_colmap_text(out / "colmap", K[idx], R[idx], t[idx], sizes[idx], names, points=points, colors=colors)
    write_points_ply(out / "points3D.ply", points, colors)

    if write_images:
        from fitting.visualize import contact_sheet, overlay, plot_losses
        r = ev["render"]
        ovs = []
        for k, i in enumerate(idx):  # image files, one per view
            ov = overlay(ctx.images[i], r.image[i], r.alpha[i], ctx.landmarks[i], ev["landmarks"][i])
            write_png(out / "overlays" / f"{Path(scene.names[i]).stem}.png", ov)
            ovs.append(ov)
        if ovs:
            write_png(out / "contact_sheet.png", contact_sheet(ovs, names))
        plot_losses(ctx.history, out / "losses.png")
    # training exports (--export), read back from the files above: the same code as
    # ``python -m fitting.export`` on a finished fit (fitting/export/run.py)
    if ctx.cfg.export not in ("", "none"):
        from fitting.export.run import export_formats
        split = lambda s: [x for x in str(s or "").split(",") if x] or None  # noqa: E731
        export_formats(out, ctx.cfg.export, prep_dir=scene.prep_dir, model_path=str(ctx.flame.model_path),
                       tracks=ctx.tracks is not None and ctx.tracks.points is not None,
                       val_cameras=split(ctx.cfg.val_cameras), test_cameras=split(ctx.cfg.test_cameras),
                       background=ctx.cfg.export_background)
    return {"K": K, "R": R, "t": t}


def fit_scene(cfg: argparse.Namespace) -> dict:
    """Run the whole fit for ``cfg`` and write every output. Returns the report dict.

    Raises ValueError before any work when the output folder cannot be written or another
    run holds it."""
    t_start = time.perf_counter()
    device = resolve_device(cfg.device)
    if cfg.num_threads > 0:
        torch.set_num_threads(cfg.num_threads)
    out = output_folder(cfg)
    check_writable(out.parent)  # the staging folder and the lock go beside the result folder
    check_writable(out)
    folder = ResultFolder(out, RESULT_FILES)
    with FolderLock(folder.lock_path):
        folder.recover()
        try:
            return _fit_and_publish(cfg, device, folder, t_start)
        finally:
            folder.discard()


def _fit_and_publish(cfg: argparse.Namespace, device: torch.device, folder: ResultFolder, t_start: float) -> dict:
    seed_everything(cfg.seed)
    scene_dir = Path(cfg.scene_dir)
    timing = {"preprocess": 0.0, "init": 0.0, "geometry": 0.0, "photometric": 0.0}

    if cfg.demo:
        t0 = time.perf_counter()
        if ensure_demo_scene(cfg, scene_dir):
            timing["demo_scene"] = time.perf_counter() - t0

    out, name = folder.path, folder.path.name
    t0 = time.perf_counter()
    rig = read_rig(cfg, scene_dir)  # --cameras: checked against the images before any work
    scene = load_scene(scene_dir, cfg.image_size, prep_dir=cfg.preprocess_dir or None,
                       fallback_prep_dir=out / "preprocess", force=cfg.force_preprocess, name=name,
                       preprocess_options={"backend": cfg.landmark_backend, "progress": cfg.progress,
                                           "num_threads": cfg.num_threads if cfg.num_threads > 0 else -1},
                       cameras=None if rig is None else scene_cameras_json(rig))
    if rig is not None:
        apply_rig(rig, scene)
    timing["preprocess"] = time.perf_counter() - t0
    if scene.num_views < cfg.min_views:
        raise ValueError(f"only {scene.num_views} usable views (< --min_views {cfg.min_views}); "
                         f"left out: {scene.unused}")
    scene.to(device)
    flame, texspace, model_info = load_model(cfg, device)
    N = scene.num_views
    refine, refine_why = decide_refine_focal(cfg, scene.cameras, N)
    state = FitState.create(N, torch.zeros(N, dtype=torch.long), scene.K, cfg.n_shape, cfg.n_exp,
                            texture_shape(cfg, flame, texspace), device=device)
    ctx = FitContext.from_observations(scene, flame, cfg, texspace, refine, rig)

    tracks, sfm_registered = scene_tracks(cfg, scene)
    if rig is not None and rig.mode == "refine" and cfg.tracks != "off":
        # 3 sigma of the calibration's stated uncertainty
        tracks = rig_tracks(rig, scene, scene.prep_dir / "rig_tracks", 3 * cfg.camera_prior_deg, head_mask_test(scene))
    sfm_quality = judge_scene_sfm(ctx, state, scene)
    if sfm_quality is not None and not sfm_quality["ok"]:
        ctx.refine_focal, refine_why = decide_refine_focal(cfg, scene.cameras, N, sfm_quality)
        refine = ctx.refine_focal
    ckpt_path = checkpoint_path(cfg)
    progress, init_info, convergence = Progress(), {}, None
    if cfg.resume and ckpt_path.is_file():
        ck = load_checkpoint(ckpt_path, device)
        if ck["extra"].get("names") == scene.names:
            check_resume_options(ck["config"], config_to_dict(cfg), ckpt_path)
            state = ck["state"]
            progress = Progress(ck["progress"]["done"], ck["progress"].get("pos", 0))
            ctx.history = ck["history"]
            init_info = ck["extra"].get("init_info", {})
            convergence = ck["extra"].get("geometry_convergence")
            timing.update(ck["extra"].get("timing", {}))
            ctx.view_weights = torch.as_tensor(ck["extra"]["view_weights"], device=device)
            ctx.photo_opt_state = ck["extra"].get("photo_opt")
            # a checkpoint without landmark trust (saved without the track term) uses every landmark
            ctx.landmark_weights = torch.as_tensor(ck["extra"].get("landmark_weights", [1.0] * N), device=device)
            ctx.landmark_flags = {int(k): v for k, v in ck["extra"].get("landmark_flags", {}).items()}
            attach_tracks(ctx, cfg, scene, tracks, init_info, ck["extra"].get("track_points"))
        else:
            print(f"[fit] {ckpt_path} is for other views; starting afresh")
    cfg_d = config_to_dict(cfg)

    def checkpoint(stage_done: list, stage: str, p: int, st: FitState):
        save_checkpoint(ckpt_path, st, cfg_d, {"done": stage_done, "stage": stage, "pos": p}, ctx.history,
                        {"names": scene.names, "init_info": init_info, "geometry_convergence": convergence,
                         "timing": timing,
                         "view_weights": ctx.view_weights.cpu().tolist(),
                         "landmark_weights": ctx.landmark_weights.cpu().tolist(),
                         "landmark_flags": {str(k): v for k, v in ctx.landmark_flags.items()},
                         "track_points": None if ctx.tracks is None or ctx.tracks.points is None
                         else ctx.tracks.points.cpu(),
                         "photo_opt": ctx.photo_opt_state if stage == "photometric" and p > 0 else None})

    def init_poses(st: FitState) -> tuple:
        if rig is not None:
            return initialize_from_rig(ctx, st, rig)
        # a degenerate model's poses are not taken at face value: initialisation keeps the PnP
        # poses (SfM's only where PnP failed or fits worse, and on profiles), and the track
        # points are triangulated once the landmarks have placed the cameras
        degenerate = sfm_quality is not None and not sfm_quality["ok"]
        return initialize(ctx, st, [scene.sfm_poses.get(n) for n in scene.names], prefer_sfm=tracks is not None,
                          trust_deg=-1.0 if degenerate else None)

    def after_init(st: FitState, info: dict) -> None:
        nonlocal init_info
        init_info = info
        if sfm_quality is not None and not sfm_quality["ok"] and info.get("sfm_similarity") is not None:
            info["sfm_trust_why"] = "SfM's model is degenerate: " + "; ".join(sfm_quality["reasons"])
        failed = np.array([s == "failed" for s in info["source"]])
        ctx.view_weights = torch.as_tensor(~failed, dtype=torch.float32, device=device)
        attach_tracks(ctx, cfg, scene, tracks, info)
        if failed.all():
            raise ValueError("pose initialisation failed in every view (PnP found no consistent pose): "
                             "check landmarks.json and cameras.json")

    def after_geometry(st: FitState) -> None:
        nonlocal convergence
        convergence = geometry_convergence(ctx, st, scene.names)

    state, ev = run_stages(ctx, state, StageHooks(init_poses, after_init, checkpoint, after_geometry), progress,
                           timing)
    uncertainty = camera_uncertainty(ctx, state)
    used = ctx.view_weights.cpu().numpy() > 0
    stage = folder.begin()
    arr = write_outputs(stage, scene, ctx, state, used, ev, cfg.write_images, final=out)
    ui = np.nonzero(used)[0]
    inside, index = head_mask_test(scene), {n: i for i, n in enumerate(scene.names)}
    epi_views, epi = report_epipolar(scene.prep_dir / "sfm" / "database.db",
                                     {scene.names[i]: (arr["K"][i], arr["R"][i], arr["t"][i]) for i in ui},
                                     focal_initial=float(scene.K_orig[ui[0], 0, 0]),
                                     on_head=lambda name, xy: inside(np.full(len(xy), index[name]), xy))

    sx_sy = scene.scale.cpu().numpy()
    trk_rms = trk_n = None
    tracks_used = ctx.tracks is not None and ctx.tracks.points is not None
    if ctx.tracks is not None:
        trk_n = np.bincount(ctx.tracks.view.cpu().numpy(), minlength=N)
    if tracks_used:
        trk_rms = ctx.tracks.view_rms(*cameras64(state), N).cpu().numpy() / sx_sy.mean(1)
    lm_pred = ev["landmarks"].cpu().numpy() / sx_sy[:, None, :]
    lm_obs = scene.landmarks.cpu().numpy() / sx_sy[:, None, :]
    rmse_orig = np.sqrt(((lm_pred - lm_obs) ** 2).sum(-1).mean(-1))
    views = []
    for n in scene.all_names:  # report rows, one per image
        if n in scene.names:
            i = scene.names.index(n)
            if used[i]:
                views.append({"name": n, "used": True, "reason_if_unused": None,
                              "landmark_rmse_px": float(rmse_orig[i]),
                              "photometric_l1": float(ev["photometric_l1"][i]),
                              "mask_iou": float(ev["mask_iou"][i]),
                              "num_tracks": None if trk_n is None else int(trk_n[i]),
                              "track_reprojection_px": None if trk_rms is None or trk_n[i] == 0 else float(trk_rms[i]),
                              "landmarks_used": i not in ctx.landmark_flags,
                              **epi_views[n], **_view_sigmas(uncertainty, i),
                              "K": arr["K"][i].tolist(), "R": arr["R"][i].tolist(), "t": arr["t"][i].tolist()})
                continue
            reason = "pose initialisation failed (PnP found no consistent pose, no SfM pose)"
        else:
            reason = scene.unused.get(n, "not loaded")
        views.append({"name": n, "used": False, "reason_if_unused": reason, "landmark_rmse_px": None,
                      "photometric_l1": None, "mask_iou": None, "epipolar_px_median": None, "epipolar_px_p90": None,
                      "num_tracks": None, "track_reprojection_px": None, "landmarks_used": None,
                      **_view_sigmas(None, 0), "K": None, "R": None, "t": None})
    # the fit's total: the demo's scene synthesis (timing["demo_scene"]) is not part of it
    timing["total"] = time.perf_counter() - t_start - timing.get("demo_scene", 0.0)
    # the thread count sets the order of float32 sums, hence the last digits of every figure
    report = {"scene": name, "num_views": int(used.sum()), "device": str(device),
              "cpu_threads": torch.get_num_threads(), "views": views,
              "preprocess_dir": str(Path(scene.prep_dir).resolve()), "epipolar": epi,
              "timing_s": {k: round(float(timing.get(k, 0.0)), 3)
                           for k in ("preprocess", "init", "geometry", "photometric", "total")}}
    # Views whose PnP and SfM poses disagree (the issue asks for them), and views whose head
    # misses its mask.
    report["flagged_views"] = [
        {"name": scene.names[i], "reason": f"PnP and SfM poses disagree by {init_info['sfm_angle_deg'][i]:.1f} deg, "
                                           f"{100 * init_info['sfm_center_rel'][i]:.0f}% of the distance"}
        for i, d in enumerate(init_info.get("sfm_disagree", [])) if d]
    report["flagged_views"] += low_mask_iou_flags([scene.names[i] for i in ui], ev["mask_iou"].cpu().numpy()[ui],
                                                  ~placed_without_landmarks(ctx).cpu().numpy()[ui])
    report["landmarks_not_used"] = [{"name": scene.names[i], "reason": why} for i, why in ctx.landmark_flags.items()]
    report["sfm_quality"] = sfm_quality
    if rig is not None:  # the frame of the outputs and the head's pose in the rig
        report["known_cameras"] = rig_report(state, rig)
    # views SfM left out that the fit registered from their matches (or tried to)
    report["sfm_registered_by_fit"] = {n: {k: r[k] for k in ("correspondences", "inliers", "why")}
                                       for n, r in sfm_registered.items()}
    report["uncertainty"] = None if uncertainty is None else {k: v for k, v in uncertainty.items() if k != "views"}
    report["tracks"] = None if ctx.tracks is None else {
        "num_points": ctx.tracks.num_points, "num_observations": len(ctx.tracks.view), "used": tracks_used,
        "why_unused": None if tracks_used else tracks_unused_why(cfg),
        "landmark_sigma_px": ctx.landmark_sigma_px if tracks_used else None}
    if scene.ground_truth is not None:
        gt_err = ground_truth_errors(scene.ground_truth, [scene.names[i] for i in ui], arr["R"][ui], arr["t"][ui],
                                     ev["verts"][0].cpu().numpy(), lm_pred[ui], aligned=True)
        gt_aligned = gt_err.pop("aligned", None)
        report["ground_truth"] = gt_err
    # Details beyond the report fields: focal, init agreement, the model used.
    K_fit = arr["K"][used][0] if used.any() else np.full((3, 3), np.nan)
    write_json(stage / "fit_details.json", {
        "focal": {"initial_px": float(np.asarray(scene.cameras["K"])[0][0]), "source": scene.cameras.get("source"),
                  "refined": refine, "why": refine_why, "fitted_px": float(K_fit[0, 0]),
                  "width": int(scene.orig_size[0, 0])},
        "init": init_info, "geometry_convergence": convergence, "model": model_info, "left_out": scene.unused,
        "sfm_quality": sfm_quality,
        "sfm_registered_by_fit": sfm_registered,
        "ground_truth_after_similarity": gt_aligned if scene.ground_truth is not None else None,
        "flagged_views": [f["name"] for f in report["flagged_views"]]})
    write_json(stage / "report.json", report)  # last: its presence marks the result complete
    if cfg.write_images:  # index.html and the turntable read the finished result (fitting/viewer.py)
        from fitting.viewer import write_viewer
        try:   # no history: losses.png, which it shows, is written already (write_outputs)
            write_viewer(stage, prep_dir=scene.prep_dir, model_path=str(ctx.flame.model_path))
        except Exception as e:  # a picture is not worth the fit: say so, keep the result
            print(f"[fit] warning: index.html / turntable not written ({type(e).__name__}: {e}); "
                  f"python -m fitting.viewer {output_folder(cfg)} retries")
    folder.publish()
    return report
