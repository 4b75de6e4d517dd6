"""FLAME tracked over monocular videos: ``python single_view/fit.py VIDEO.mp4|FOLDER_OF_VIDEOS``.

Per video, frames streamed from OpenCV ``--chunk_size`` at a time (never all of them):

1. **Landmarks**, chunk by chunk: ``--landmarks`` (a (frames, 68, 2) .npy indexed by frame
   number, NaN rows = no face) or the detector (``process_data.landmarks.detect_landmarks``,
   dlib). Only the landmarks are kept (68 x 2 numbers per frame).
2. **Identity**: shape fitted once, on ``--keyframes`` frames spread over head pose and mouth
   opening (:func:`single_view.tracking.select_keyframes`), jointly with their expression,
   jaw and pose (LM; the 51 static points first, then all 68).
3. **Tracking**, chunk by chunk: per-frame expression, jaw, head rotation and translation
   with the identity fixed, a temporal smoothness prior, each chunk started from PnP of its
   frames (head pose) and the previous chunk's last frame (expression, jaw), tied to that
   frame, and tracked with ``--lookahead`` frames of the next chunk (refitted there).
4. Frames without a face are **interpolated** from their neighbours and flagged.
5. **Outputs** in ``<savefolder>/<stem>/`` (complete or absent, fitting.output_folder):
   params.npz, frames.csv, overlay.mp4 (a second streamed read) and report.json (last).

The camera is one pinhole shared by every frame: ``--fov`` (or ``--camera
weak_perspective``) at the fitting size; the head moves in front of it. Progress is saved
after each chunk in ``<savefolder>/.<stem>.video_progress.npz`` (numpy arrays only), and
``--resume true`` continues from it: landmarks and tracking at chunk granularity.
"""
from __future__ import annotations

import argparse
import csv
import hashlib
import io
import json
import math
import resource
import time
from pathlib import Path

import cv2
import numpy as np
import torch

from fitting.atomic import atomic_write_bytes
from fitting.config import resolve_device
from fitting.export import write_json, write_params
from fitting.flame import landmark_submodel
from fitting.render.cameras import rot_to_matrix
from fitting.output_folder import FolderLock, ResultFolder, check_writable
from fitting.model import load_model
from fitting.run import seed_everything
from single_view.camera import deca_camera, deca_global_pose, fitting_intrinsics
from single_view.inputs import LANDMARK_NAMES, resolve_override
from single_view.tracking import (FrameParams, Weights, fold_identity, interpolate_missing, lm_frames,
                                  model_landmarks, pnp_init, select_keyframes)
from single_view.video_io import VideoWriter, iter_frame_chunks, list_videos, video_info

__all__ = ["fit_videos", "fit_video", "VIDEO_RESULTS", "DECA_N_SHAPE", "DECA_N_EXP"]

VIDEO_RESULTS = frozenset({"params.npz", "frames.csv", "overlay.mp4", "report.json"})
# DECA's codedict: shape (B, 100), exp (B, 50), pose (B, 6) = global + jaw, cam (B, 3)
DECA_N_SHAPE, DECA_N_EXP = 100, 50
PROGRESS_VERSION = 1


def weights_from(cfg: argparse.Namespace) -> Weights:
    return Weights(w_shape=cfg.w_shape, w_exp=cfg.w_exp, w_pose=cfg.w_pose, w_contour=cfg.w_contour,
                   lmk_robust_px=cfg.lmk_robust_px, w_smooth=cfg.w_smooth, sigma_rot=cfg.smooth_rot,
                   sigma_trans=cfg.smooth_trans, sigma_exp=cfg.smooth_exp, sigma_jaw=cfg.smooth_jaw,
                   jaw_side=cfg.jaw_side)


def fit_videos(cfg: argparse.Namespace, log=print, reader=iter_frame_chunks, detector=None) -> dict:
    """Fit every video of ``cfg.input`` (a video or a folder of videos), one after the other.

    reader: ``reader(path, chunk_size, sample_step, max_frames, start)`` yielding
    :class:`single_view.video_io.FrameChunk` (tests wrap it to count the frames alive).
    detector: ``detector(frame_index, rgb) -> (68, 2) original pixels (+0.5) or None``
    (default: ``--landmarks`` when given, else process_data's detector).
    Returns {"videos": {name: report}, "failed": {name: reason}, "savefolder", "device"}.
    A video that fails (unreadable, no face in any frame) is reported and the others fit.
    """
    device = resolve_device(cfg.device)
    save = Path(cfg.savefolder)
    check_writable(save)
    videos = list_videos(cfg.input)
    seed_everything(cfg.seed)
    with FolderLock(save / ".lock", log=log):
        flame, texspace, model_info = load_model(cfg, device)
        out, failed = {}, {}
        for v in videos:
            try:
                out[v.name] = fit_video(v, cfg, flame, texspace, model_info, save, log, reader, detector)
            except ValueError as e:
                failed[v.name] = str(e)
                log(f"[video] {v.name}: failed: {e}")
                with ResultFolder(save / v.stem, VIDEO_RESULTS).replace() as stage:
                    write_json(stage / "report.json", {"name": v.name, "fitted": False, "reason": str(e)})
    if not out:
        raise ValueError("no video could be fitted: " + "; ".join(f"{k}: {v}" for k, v in failed.items()))
    return {"videos": out, "failed": failed, "savefolder": str(save), "device": str(device)}


# -- landmarks ------------------------------------------------------------------------------------
def _landmark_source(cfg, path: Path, detector):
    """(callable(frame_index, rgb) -> points or None, description)."""
    if detector is not None:
        return detector, "detector given by the caller"
    f = resolve_override(cfg.landmarks, path, Path(cfg.input).is_file(), LANDMARK_NAMES)
    if f is not None:
        a = np.load(f, allow_pickle=False).astype(np.float64)
        if a.ndim != 3 or a.shape[1:] not in ((68, 2), (68, 3)):
            raise ValueError(f"{f}: video landmarks must be (frames, 68, 2) in iBUG order (NaN rows: no face), "
                             f"got {a.shape}")
        a = a[..., :2] + 0.5  # pixel-index convention -> ours (docs/CONVENTIONS.md)

        def from_file(index, _rgb):
            if index >= len(a):
                raise ValueError(f"{f} has {len(a)} frames of landmarks, the video has frame {index}")
            return a[index] if np.isfinite(a[index]).all() else None
        return from_file, str(f)
    from process_data.landmarks import detect_landmarks

    def detect(_index, rgb):
        return detect_landmarks(rgb, backend=cfg.landmark_backend)["points"]
    return detect, f"process_data.landmarks ({cfg.landmark_backend})"


# -- resumable progress ---------------------------------------------------------------------------
def _signature(cfg, path: Path) -> str:
    st = path.stat()
    keys = ("flame_model", "standin_template", "standin_seed", "n_shape", "n_exp", "image_size", "camera", "fov",
            "sample_step", "max_frames", "chunk_size", "lookahead", "keyframes", "identity_iters", "track_iters",
            "w_smooth", "smooth_rot", "smooth_trans", "smooth_exp", "smooth_jaw", "jaw_side", "w_shape", "w_exp",
            "w_pose", "w_contour", "lmk_robust_px", "landmarks", "landmark_backend")
    d = {k: str(getattr(cfg, k)) for k in keys}
    d["video"] = [str(path.resolve()), st.st_size, st.st_mtime_ns]
    return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()


class Progress:
    """Chunk-granular progress of one video in ``<savefolder>/.<stem>.video_progress.npz``."""

    def __init__(self, path: Path, signature: str):
        self.path, self.sig = path, signature
        self.data = {}

    def load(self, log) -> bool:
        if not self.path.is_file():
            return False
        try:
            with np.load(self.path, allow_pickle=False) as z:
                d = {k: z[k] for k in z.files}
        except (OSError, ValueError) as e:
            log(f"[video] {self.path}: unreadable progress ({type(e).__name__}); starting afresh")
            return False
        if int(d.get("version", -1)) != PROGRESS_VERSION or str(d.get("signature")) != self.sig:
            log(f"[video] {self.path}: written for another video or other options; starting afresh")
            return False
        self.data = d
        return True

    def save(self, **arrays) -> None:
        self.data.update({k: np.asarray(v) for k, v in arrays.items()})
        buf = io.BytesIO()
        np.savez(buf, version=PROGRESS_VERSION, signature=self.sig,
                 **{k: v for k, v in self.data.items() if k not in ("version", "signature")})
        atomic_write_bytes(self.path, buf.getvalue())

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)


# -- one video -------------------------------------------------------------------------------------
def fit_video(path: Path, cfg, flame, texspace, model_info: dict, save: Path, log=print, reader=iter_frame_chunks,
              detector=None) -> dict:
    t_start = time.perf_counter()
    timing = {}
    name = path.name
    info = video_info(path)
    W, H = info.width, info.height
    if W <= 0 or H <= 0:
        raise ValueError(f"{path}: OpenCV reports no frame size")
    scale = cfg.image_size / max(W, H)             # original -> fitting pixels (no offset)
    wf, hf = W * scale, H * scale
    dev = flame.v_template.device
    K = fitting_intrinsics(cfg.camera, cfg.fov, wf, hf, 1, device=dev)[0].double()
    sub = landmark_submodel(flame).double()
    w = weights_from(cfg)
    detect, lm_source = _landmark_source(cfg, path, detector)
    progress = Progress(save / f".{path.stem}.video_progress.npz", _signature(cfg, path))
    resumed = bool(cfg.resume) and progress.load(log)
    C = cfg.chunk_size

    # 1. landmarks, streamed
    t0 = time.perf_counter()
    d = progress.data
    idx = list(d["frame_index"]) if resumed else []
    obs = list(d["landmarks"]) if resumed else []
    if not (resumed and bool(d.get("landmarks_done", False))):
        k = 0
        # (not enumerate(): its cached result tuple would keep the last chunk alive while the next is read)
        for chunk in reader(path, C, cfg.sample_step, cfg.max_frames, len(idx)):
            k += 1
            for i, frame in zip(chunk.indices, chunk.frames):
                pts = detect(i, frame)
                idx.append(i)
                obs.append(np.full((68, 2), np.nan) if pts is None else np.asarray(pts, np.float64)[:, :2])
            n_face = sum(np.isfinite(o).all() for o in obs[-len(chunk):])
            log(f"[video] {name}: landmarks, chunk {k}: frames {chunk.indices[0]}-{chunk.indices[-1]}, "
                f"{n_face}/{len(chunk)} with a face")
            del chunk, frame
            progress.save(frame_index=np.asarray(idx), landmarks=np.asarray(obs).reshape(-1, 68, 2),
                          landmarks_done=False)
        progress.save(landmarks_done=True)
    timing["landmarks"] = time.perf_counter() - t0
    T = len(idx)
    if T == 0:
        raise ValueError(f"{path}: no frame could be read")
    frame_index = np.asarray(idx, np.int64)
    obs_o = np.asarray(obs, np.float64).reshape(T, 68, 2)           # original px, NaN = no face
    valid = np.isfinite(obs_o).all((1, 2))
    if not valid.any():
        raise ValueError(f"{path}: no face in any of its {T} frames ({lm_source})")
    obs_f = np.nan_to_num(obs_o * scale)                            # fitting px
    obs_t = torch.tensor(obs_f, dtype=torch.float64, device=dev)
    valid_t = torch.tensor(valid, device=dev)

    # 2. identity on keyframes
    t0 = time.perf_counter()
    E = flame.n_exp
    if resumed and "shape" in d:
        shape = torch.tensor(d["shape"], dtype=torch.float64, device=dev)
        keyframes = d["keyframes"]
    else:
        shape = torch.zeros(flame.n_shape, dtype=torch.float64, device=dev)
        rot, trans, ok = pnp_init(sub, K, obs_f, valid, shape)
        if not ok.any():
            raise ValueError(f"{path}: pose initialisation failed on every frame with a face (PnP found no "
                             "consistent head pose for the landmarks)")
        keyframes = select_keyframes(rot, obs_f, ok, cfg.keyframes)
        kf = torch.as_tensor(keyframes, device=dev)
        z = dict(dtype=torch.float64, device=dev)
        pk = FrameParams(rot[kf].to(dev), trans[kf].to(dev), torch.zeros(len(kf), E, **z), torch.zeros(len(kf), 3, **z))
        vk = torch.ones(len(kf), dtype=torch.bool, device=dev)
        shape, pk, _ = lm_frames(sub, K, obs_t[kf], vk, shape, pk, w, max(1, cfg.identity_iters // 2),
                                 fit_shape=True, smooth=False, static_only=True)
        shape, pk, info_id = lm_frames(sub, K, obs_t[kf], vk, shape, pk, w, cfg.identity_iters, fit_shape=True,
                                       smooth=False)
        progress.save(shape=shape.cpu().numpy(), keyframes=np.asarray(keyframes))
        log(f"[video] {name}: identity from {len(keyframes)} keyframes {list(map(int, frame_index[keyframes]))}: "
            f"landmark RMSE {float(info_id['landmark_rmse_px'].mean()) / scale:.2f} px")
    timing["identity"] = time.perf_counter() - t0

    # 3. tracking, chunk by chunk, on the model with the identity folded in
    t0 = time.perf_counter()
    rot0, trans0, ok = pnp_init(sub, K, obs_f, valid, shape)
    tracker, no_shape = fold_identity(sub, shape), shape[:0]
    params = FrameParams.zeros(T, E, device=dev)
    done = 0
    if resumed and "tracked" in d:
        done = int(d["tracked"])
        for k in ("rot", "trans", "exp", "jaw"):
            getattr(params, k)[:done] = torch.tensor(d[k][:done], dtype=torch.float64, device=dev)
    lookahead_end = done
    n_chunks = math.ceil(T / C)
    for lo in range(done, T, C):
        hi, ext = min(T, lo + C), min(T, lo + C + cfg.lookahead)
        prev = params[lo - 1:lo] if lo > 0 else None
        for f in range(max(lo, lookahead_end), ext):  # new frames: PnP pose, previous expression and jaw
            src = params[f - 1] if f > 0 else None
            if ok[f] or src is None:
                params.rot[f], params.trans[f] = rot0[f], trans0[f]
            else:
                params.rot[f], params.trans[f] = src.rot, src.trans
            if src is not None:
                params.exp[f], params.jaw[f] = src.exp, src.jaw
        _, win, info_w = lm_frames(tracker, K, obs_t[lo:ext], valid_t[lo:ext], no_shape, params[lo:ext].clone(), w,
                                   cfg.track_iters, smooth=True, prev=prev)
        for k in ("rot", "trans", "exp", "jaw"):
            getattr(params, k)[lo:ext] = getattr(win, k)
        lookahead_end = ext
        rm = info_w["landmark_rmse_px"][:hi - lo]
        n_face = int(valid[lo:hi].sum())
        log(f"[video] {name}: tracking, chunk {lo // C + 1}/{n_chunks}: frames {frame_index[lo]}-{frame_index[hi - 1]}"
            f", landmark RMSE {float(rm.nan_to_num().sum()) / max(1, n_face) / scale:.2f} px, "
            f"{hi - lo - n_face} without a face")
        progress.save(tracked=hi, rot=params.rot[:hi].cpu().numpy(), trans=params.trans[:hi].cpu().numpy(),
                      exp=params.exp[:hi].cpu().numpy(), jaw=params.jaw[:hi].cpu().numpy())
    timing["tracking"] = time.perf_counter() - t0

    # 4. frames without a face: interpolated, flagged
    params = interpolate_missing(params, valid)
    interpolated = ~valid

    # 5. outputs
    t0 = time.perf_counter()
    with torch.no_grad():
        fitted = torch.cat([model_landmarks(sub, K, shape, params[a:a + C]) for a in range(0, T, C)])
    fitted_o = fitted.cpu().numpy() / scale
    err = np.linalg.norm(fitted_o - obs_o, axis=-1)                   # (T, 68), NaN without a face
    rmse = np.sqrt((err ** 2).mean(1))                                # NaN without a face
    io_d = np.linalg.norm(obs_o[:, 36:42].mean(1) - obs_o[:, 42:48].mean(1), axis=-1)
    nme = err.mean(1) / io_d
    folder = ResultFolder(save / path.stem, VIDEO_RESULTS)
    fps = info.fps if info.fps > 0 else 25.0
    with folder.replace() as stage:
        _write_params(stage / "params.npz", cfg, flame, shape, params, K, scale, W, H, frame_index, fps, valid,
                      interpolated, obs_o, fitted_o, keyframes)
        _write_table(stage / "frames.csv", frame_index, fps, valid, interpolated, rmse, nme, params)
        n_written = 0
        if cfg.write_images:
            n_written = _write_overlay_video(stage / "overlay.mp4", path, cfg, flame, texspace, shape, params, K,
                                             wf, hf, obs_o * scale, fitted.cpu().numpy(), valid, fps, reader)
        timing["export"] = time.perf_counter() - t0
        timing["total"] = time.perf_counter() - t_start
        timing["per_frame"] = timing["total"] / T
        report = {
            "name": name, "fitted": True, "frames": T, "frames_with_face": int(valid.sum()),
            "interpolated_frames": frame_index[interpolated].tolist(),
            "keyframes": frame_index[np.asarray(keyframes, np.int64)].tolist(),
            "landmark_rmse_px": {"mean": float(np.nanmean(rmse)), "max": float(np.nanmax(rmse))},
            "landmark_nme": {"mean": float(np.nanmean(nme)), "max": float(np.nanmax(nme))},
            "video": {"path": str(path), "width": W, "height": H, "fps": info.fps, "frame_count": info.frame_count,
                      "sample_step": cfg.sample_step, "max_frames": cfg.max_frames},
            "camera": {"model": cfg.camera, "fov_deg": cfg.fov, "K": _K_original(K, scale).tolist()},
            "overlay_frames": n_written, "landmarks": lm_source, "resumed": resumed,
            "timing_s": {k: round(v, 3) for k, v in timing.items()},
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
            "model": model_info,
        }
        write_json(stage / "report.json", report)
    progress.remove()
    log(f"[video] {name}: {T} frames ({int(valid.sum())} with a face) in {timing['total']:.1f} s "
        f"({timing['per_frame']:.2f} s/frame) -> {folder.path}")
    return report


def _K_original(K: torch.Tensor, scale: float) -> np.ndarray:
    Ko = K.cpu().numpy().copy()
    Ko[:2] /= scale
    return Ko


def _fit_to_size(a: np.ndarray, n: int) -> np.ndarray:
    """(T, m) -> (T, n): zero-padded or truncated columns."""
    out = np.zeros((a.shape[0], n), a.dtype)
    m = min(n, a.shape[1])
    out[:, :m] = a[:, :m]
    return out


def _write_params(path, cfg, flame, shape, p: FrameParams, K, scale, W, H, frame_index, fps, valid, interpolated,
                  obs_o, fitted_o, keyframes) -> None:
    T = len(p)
    R = rot_to_matrix(p.rot).cpu()
    t = p.trans.cpu()
    Ko = torch.as_tensor(_K_original(K, scale))
    jaw = p.jaw.cpu().numpy()
    glob = deca_global_pose(R).numpy()
    pose15 = np.zeros((T, 15))
    pose15[:, 6:9] = jaw
    sh = shape.cpu().numpy()
    ex = p.exp.cpu().numpy()
    write_params(
        path,
        # DECA-style keys for code written against DECA's codedict. Our model has n_shape / n_exp
        # components (the stand-in and FLAME with the defaults: 100 / 50, DECA's sizes; FLAME
        # itself has up to 300 / 100): zero-padded or truncated to DECA's 100 / 50.
        shape=_fit_to_size(np.repeat(sh[None], T, 0), DECA_N_SHAPE),
        exp=_fit_to_size(ex, DECA_N_EXP),
        pose=np.concatenate([glob, jaw], 1),                         # (T, 6): global (DECA camera frame) + jaw
        cam=deca_camera(Ko[None].expand(T, 3, 3), t, W, H).numpy(),  # DECA's (s, tx, ty) equivalent
        # the full fit
        identity_shape=sh, expression=ex, flame_pose=pose15,         # FLAME pose with global 0: R, t carry the head
        R=R.numpy(), t=t.numpy(), K=Ko.numpy(), rot_axis_angle=p.rot.cpu().numpy(),
        frame_index=frame_index, time_s=frame_index / fps, fps=np.float64(fps),
        face_detected=valid, interpolated=interpolated, keyframes=frame_index[np.asarray(keyframes, np.int64)],
        landmarks=obs_o, landmarks_fitted=fitted_o, image_size=np.array([W, H]),
        camera_model=np.array(cfg.camera), fov_deg=np.float64(cfg.fov),
        n_shape=np.int64(flame.n_shape), n_exp=np.int64(flame.n_exp), sample_step=np.int64(cfg.sample_step))


def _write_table(path, frame_index, fps, valid, interpolated, rmse, nme, p: FrameParams) -> None:
    jaw = np.degrees(p.jaw.cpu().numpy())
    rot = np.degrees(p.rot.cpu().numpy())
    buf = io.StringIO()
    wr = csv.writer(buf, lineterminator="\n")
    wr.writerow(["frame", "time_s", "face_detected", "interpolated", "landmark_rmse_px", "landmark_nme",
                 "jaw_open_deg", "head_rot_x_deg", "head_rot_y_deg", "head_rot_z_deg"])
    for k in range(len(frame_index)):
        def num(x, fmt="{:.4f}"):
            return "" if not np.isfinite(x) else fmt.format(x)
        wr.writerow([int(frame_index[k]), f"{frame_index[k] / fps:.4f}", int(valid[k]), int(interpolated[k]),
                     num(rmse[k]), num(nme[k], "{:.5f}"), f"{jaw[k, 0]:.3f}", *(f"{v:.3f}" for v in rot[k])])
    atomic_write_bytes(path, buf.getvalue().encode())


@torch.no_grad()
def _write_overlay_video(path, video, cfg, flame, texspace, shape, p: FrameParams, K, wf, hf, obs_f, fit_f, valid,
                         fps, reader) -> int:
    """Second streamed read: photo with landmarks | render blended over it, one frame per
    sampled frame; frames without a face are labelled."""
    from fitting.render import MeshRenderer, RasterSettings
    from fitting.visualize import overlay

    w_i, h_i = max(1, round(wf)), max(1, round(hf))
    if texspace is not None:
        vt, ft = texspace.verts_uvs, texspace.faces_uvs
        tex = texspace(torch.zeros(1, texspace.n_tex, device=K.device))   # the mean albedo (not fitted)
    else:
        vt, ft = flame.verts_uvs, flame.faces_uvs
        tex = torch.full((1, 3, 64, 64), 0.7, device=K.device)
    renderer = MeshRenderer(flame.faces, vt, ft, RasterSettings((h_i, w_i))).to(K.device)
    k = 0
    Kf = K.float()[None]
    writer = None  # opened at the first frame, whose overlay size it takes
    try:
        for chunk in reader(video, cfg.chunk_size, cfg.sample_step, cfg.max_frames, 0):
            n = len(chunk)
            q = p[k:k + n]
            pose = torch.zeros(n, 15, device=K.device)
            pose[:, 6:9] = q.jaw.float()
            verts, _ = flame(shape.float()[None].expand(n, -1), q.exp.float(), pose)
            R = rot_to_matrix(q.rot).float()
            sh = torch.zeros(n, 9, 3, device=K.device)
            sh[:, 0] = 1.0 / 0.8862269
            r = renderer(verts, Kf.expand(n, 3, 3), R, q.trans.float(), texture=tex.expand(n, -1, -1, -1), sh=sh)
            for j, frame in enumerate(chunk.frames):
                img = cv2.resize(frame, (w_i, h_i), interpolation=cv2.INTER_AREA)
                photo = torch.from_numpy(img).permute(2, 0, 1).float() / 255
                ov = overlay(photo, r.image[j].cpu(), r.alpha[j].cpu(), obs_f[k + j] if valid[k + j] else None,
                             fit_f[k + j])
                if not valid[k + j]:
                    cv2.putText(ov, "no face: interpolated", (8, 24), cv2.FONT_HERSHEY_SIMPLEX, 0.6, (255, 60, 60), 2,
                                cv2.LINE_AA)
                if writer is None:
                    writer = VideoWriter(path, fps, (ov.shape[1], ov.shape[0])).__enter__()
                writer.write(ov)
            k += n
            del chunk, frame   # no frame outlives its chunk
    except BaseException as e:
        if writer is not None:
            writer.__exit__(type(e), e, None)
        raise
    if writer is None:
        return 0
    writer.__exit__(None, None, None)
    return writer.frames
