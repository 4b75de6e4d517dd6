"""Per-photo outputs in ``<savefolder>/<stem>/``, written with the library's writers.

* ``params.npz``  - shape (n_shape,), exp (n_exp,), pose (15,) FLAME pose (global and neck 0:
  the camera carries the head's rigid motion), tex (n_tex,) texture-space code or (3, Ht, Wt)
  free UV map (``tex_type``), sh (9, 3), K (3, 3) in original-image pixels, R (3, 3), t (3,)
  OpenCV world-to-camera in FLAME's head frame (metres), camera (3,) DECA's weak-perspective
  (s, tx, ty) equivalent with global_pose_deca (3,), camera_model, fov_deg, image_size (W, H),
  landmarks (68, 2) used and landmarks_fitted (68, 2), original pixels (+0.5 convention).
* ``mesh.obj`` + ``mesh.mtl`` + ``texture.png`` - the fitted head in the head frame.
* ``overlay.png`` (photo with landmarks | render blended over it), ``landmarks.png`` (photo,
  green = landmarks used, red = fitted), ``losses.png`` (per-photo curves).
* ``report.json`` - landmark_nme, photometric_l1_first / _last, timing_s, and details;
  written last: a folder with report.json holds a complete result.

Each folder is written through :class:`fitting.output_folder.ResultFolder` (a staging folder
swapped in when complete), so it never mixes files of two runs.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from fitting.export import write_json, write_mesh, write_params, write_png
from fitting.output_folder import ResultFolder
from fitting.context import texture_maps
from fitting.render.cameras import unscale_intrinsics as original_intrinsics
from fitting.visualize import overlay, plot_losses
from single_view.camera import deca_camera, deca_global_pose

__all__ = ["original_intrinsics", "to_original_pixels", "write_image_outputs", "write_failed_report", "photo_folder"]

IMAGE_RESULTS = frozenset({"params.npz", "mesh.obj", "mesh.mtl", "texture.png", "overlay.png", "landmarks.png",
                           "losses.png", "report.json"})


def photo_folder(savefolder: Path, name: str) -> ResultFolder:
    """``<savefolder>/<stem>``: the result folder of photo ``name``."""
    return ResultFolder(Path(savefolder) / Path(name).stem, IMAGE_RESULTS)


def to_original_pixels(points: torch.Tensor, scale: torch.Tensor, offset: torch.Tensor) -> torch.Tensor:
    """points (N, P, 2) fitting pixels -> original pixels. scale: (N,); offset: (N, 2)."""
    return (points - offset[:, None]) / scale[:, None, None]


def landmark_nme(pred: np.ndarray, used: np.ndarray) -> float:
    """Mean point distance / inter-ocular distance of ``used`` (means of 36-41 and 42-47)."""
    from process_data.landmarks import nme
    return nme(pred, used)


def write_failed_report(out: Path, name: str, reason: str) -> None:
    """report.json of a photo left out: ``{"name", "fitted": false, "reason"}``."""
    write_json(Path(out) / "report.json", {"name": name, "fitted": False, "reason": reason})


def write_image_outputs(out: Path, i: int, name: str, batch, ctx, state, ev: dict, history: dict, cfg,
                        timing: dict, model_info: dict) -> dict:
    """Write every output of photo ``i`` of the batch into ``out``; returns its report dict."""
    import time

    t0 = time.perf_counter()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    sc, off = batch.scale.cpu()[i:i + 1], batch.offset.cpu()[i:i + 1]
    K = original_intrinsics(state.K().cpu()[i:i + 1], sc, off)[0]
    R, t = state.R().cpu()[i], state.cam_t.cpu()[i]
    W, H = (int(v) for v in batch.orig_size[i])
    lm_used = to_original_pixels(batch.landmarks.cpu()[i:i + 1], sc, off)[0].numpy()
    lm_fit = to_original_pixels(ev["landmarks"].cpu()[i:i + 1], sc, off)[0].numpy()
    tex = state.tex[i].cpu()
    write_params(out / "params.npz", shape=state.shape[i], exp=state.expression[i], pose=state.pose[i],
                 tex=tex, tex_type=np.array("uv_map" if state.free_texture else "space"),
                 sh=state.sh[i], K=K, R=R, t=t,
                 camera=deca_camera(K[None], t[None], W, H)[0], global_pose_deca=deca_global_pose(R[None])[0],
                 camera_model=np.array(cfg.camera),
                 fov_deg=np.float64(np.degrees(2 * np.arctan(W / (2 * float(K[0, 0]))))),
                 image_size=np.array([W, H]), landmarks=lm_used, landmarks_fitted=lm_fit)
    if cfg.write_mesh:
        vt, ft = ctx.uvs()
        tmap = texture_maps(ctx, state)[i].detach().cpu()
        write_mesh(out, ev["verts"][i].cpu(), ctx.flame.faces.cpu(), None if vt is None else vt.cpu(),
                   None if ft is None else ft.cpu(), tmap)
    if cfg.write_images:
        r = ev["render"]
        ov = overlay(batch.images[i], r.image[i], r.alpha[i], batch.landmarks[i], ev["landmarks"][i])
        write_png(out / "overlay.png", ov)
        write_png(out / "landmarks.png", ov[:, : ov.shape[1] // 2])
        plot_losses({k: v for k, v in history.items() if v}, out / "losses.png")

    p_first = float(ev["photometric_l1_first"][i])
    p_last = float(ev["photometric_l1"][i])
    rmse_fit = float(ev["landmark_rmse"][i])
    timing = dict(timing)
    timing["export"] = time.perf_counter() - t0
    timing["total"] = timing["preprocess"] + timing["fit_share"] + timing["export"]
    report = {
        "name": name, "fitted": True,
        "landmark_nme": landmark_nme(lm_fit, lm_used),
        "photometric_l1_first": p_first,
        "photometric_l1_last": p_last,
        "photometric_l1_drop": 1 - p_last / p_first if p_first > 0 else None,
        "timing_s": {k: (round(v, 3) if isinstance(v, float) else v) for k, v in timing.items()},
        "landmark_rmse_px": rmse_fit / float(sc[0]),
        "image_size": [W, H],
        "camera": {"model": cfg.camera, "K": K.tolist(), "R": R.tolist(), "t": t.tolist(),
                   "deca_cam": deca_camera(K[None], t[None], W, H)[0].tolist()},
        "inputs": batch.sources.get(name, {}),
        "model": model_info,
    }
    write_json(out / "report.json", report)
    return report
