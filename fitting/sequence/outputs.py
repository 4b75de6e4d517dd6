"""Writers of a tracked sequence's results, each complete or absent (atomic writes; a folder is
built beside its place and swapped in):

* :func:`write_flame_params`: ``flame_param/<timestep>.npz`` per frame in GaussianAvatars' /
  VHAP's per-timestep layout (the single-capture export's keys, see
  :mod:`fitting.export.gaussian_avatars`), ``canonical_flame_param.npz`` and
  ``timestep_index.json`` (timestep ids to frame names);
* :func:`write_frame_table`: ``frames.csv`` and ``frames.json``, per frame the landmark RMSE
  per camera and their mean, the photometric L1 and flags;
* :func:`write_overlay_video`: an mp4 contact sheet per frame (cameras in a grid), streamed.

The head's rigid motion ``X_rig = head_R X + head_t`` (X: FLAME's vertices of shape,
expression and pose) becomes GaussianAvatars' ``rotation`` (the root joint's axis-angle) and
``translation`` (added after skinning). FLAME turns the root about its joint J0 (which depends
on shape and expression), so ``translation = head_R J0 + head_t - J0``.
"""
from __future__ import annotations

import csv
import io
import math
import os
import shutil
import uuid
from pathlib import Path

import cv2
import numpy as np
import torch

from fitting.atomic import atomic_write_bytes, atomic_write_json
from fitting.export.core import write_params
from fitting.export.gaussian_avatars import flame_param_arrays
from fitting.rotations import axis_angle_to_matrix, matrix_to_axis_angle

__all__ = ["write_flame_params", "root_joint", "write_frame_table", "draw_tracked_landmarks", "write_overlay_video",
           "timestep_id"]


def timestep_id(index: int) -> str:
    """The 5-digit timestep id VHAP names files by (00000, 00001, ...)."""
    return f"{index:05d}"


def _swap_in(staging: Path, final: Path) -> None:
    """Replace folder ``final`` by ``staging``; a reader sees the old folder or the new one (for
    the instant between the two renames, none), never a half-written one."""
    old = final.with_name(f".{final.name}.old-{uuid.uuid4().hex[:8]}")
    if final.exists():
        os.replace(final, old)
    os.replace(staging, final)
    shutil.rmtree(old, ignore_errors=True)


@torch.no_grad()
def root_joint(flame, shape, expression) -> np.ndarray:
    """(T, 3) FLAME's root joint J0 for shape (S,) and expression (T, E), as FLAME's skinning
    computes it (J_regressor row 0 of the shaped, expressed template)."""
    e = torch.as_tensor(np.asarray(expression), dtype=torch.float32)
    s = torch.as_tensor(np.asarray(shape), dtype=torch.float32).reshape(1, -1).expand(len(e), -1)
    betas = torch.cat([s, e], 1)
    v = flame.v_template + torch.einsum("vdk,bk->bvd", flame.shapedirs[..., :betas.shape[1]], betas)
    return torch.einsum("v,bvd->bd", flame.j_regressor[0], v).numpy()


def write_flame_params(out_dir, frames: list, params: dict, flame=None) -> Path:
    """Write ``out_dir/flame_param/<timestep>.npz`` (one per frame, timesteps 00000.. in the
    order of ``frames``), ``out_dir/canonical_flame_param.npz`` and ``out_dir/timestep_index.json``
    ({"timestep_indices", "timestep_ids", "frames"}); returns ``out_dir``.

    params: shape (S,), expression (T, E), pose (T, 15) (jaw in 6:9; a root rotation in 0:3 is
    composed with head_R), head_R (T, 3, 3), head_t (T, 3). The root joint comes from ``flame``
    (a :class:`fitting.flame.FLAME` of the tracked model) or from params["root_joint"] (T, 3)
    with params["num_verts"]. flame_param/ is replaced as a whole."""
    out = Path(out_dir)
    T = len(frames)
    shape = np.asarray(params["shape"], np.float32).reshape(-1)
    expr = np.asarray(params["expression"], np.float32).reshape(T, -1)
    pose = np.asarray(params["pose"], np.float32).reshape(T, 15)
    head_R = np.asarray(params["head_R"], np.float64).reshape(T, 3, 3)
    head_t = np.asarray(params["head_t"], np.float64).reshape(T, 3)
    if flame is not None:
        J0, nv = root_joint(flame, shape, expr).astype(np.float64), int(flame.v_template.shape[0])
    elif "root_joint" in params and "num_verts" in params:
        J0, nv = np.asarray(params["root_joint"], np.float64).reshape(T, 3), int(params["num_verts"])
    else:
        raise ValueError("write_flame_params needs the FLAME model (flame=) or params['root_joint'] (T, 3) and "
                         "params['num_verts']: GaussianAvatars turns the head about FLAME's root joint")
    R_root = axis_angle_to_matrix(torch.as_tensor(pose[:, 0:3], dtype=torch.float64)).numpy()
    rot = head_R @ R_root                                               # (T, 3, 3)
    rot_aa = matrix_to_axis_angle(torch.as_tensor(rot)).numpy()
    trans = np.einsum("tij,tj->ti", head_R, J0) + head_t - J0           # (T, 3)

    staging = out / f".flame_param.writing-{uuid.uuid4().hex[:8]}"
    staging.mkdir(parents=True)
    try:
        for i in range(T):
            p = {"shape": shape[None], "expression": expr[i:i + 1], "pose": pose[i:i + 1]}
            a = flame_param_arrays(p, nv)
            a["rotation"] = rot_aa[i:i + 1].astype(np.float32)
            a["translation"] = trans[i:i + 1].astype(np.float32)
            write_params(staging / f"{timestep_id(i)}.npz", **a)
        _swap_in(staging, out / "flame_param")
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    write_params(out / "canonical_flame_param.npz",
                 **flame_param_arrays({"shape": shape[None], "expression": expr[:1], "pose": pose[:1]}, nv,
                                      canonical=True))
    atomic_write_json(out / "timestep_index.json", {"timestep_indices": list(range(T)),
                                                    "timestep_ids": [timestep_id(i) for i in range(T)],
                                                    "frames": [str(f) for f in frames]})
    return out


def _fmt(x) -> str:
    return "" if x is None or (isinstance(x, float) and not math.isfinite(x)) else f"{float(x):.4f}"


def write_frame_table(out_dir, rows: list) -> Path:
    """Write ``out_dir/frames.csv`` and ``out_dir/frames.json``; returns the csv's path.

    rows: per frame {"frame": name, "rmse_px": {camera: landmark RMSE px or None (no
    landmarks)}, optionally "photo_l1": float, "flags": [str] (e.g. "interpolated", "failed")}.
    The mean RMSE is over the cameras with a value. CSV columns: frame, rmse_mean_px,
    rmse_px_<camera>.. (cameras in order of first appearance), photo_l1, flags (joined by ';')."""
    out = Path(out_dir)
    cams = list(dict.fromkeys(c for r in rows for c in r.get("rmse_px", {})))
    table = []
    for r in rows:
        vals = [v for v in r.get("rmse_px", {}).values() if v is not None and math.isfinite(v)]
        table.append({"frame": str(r["frame"]), "rmse_mean_px": float(np.mean(vals)) if vals else None,
                      "rmse_px": {c: (None if v is None else float(v)) for c, v in r.get("rmse_px", {}).items()},
                      "photo_l1": None if r.get("photo_l1") is None else float(r["photo_l1"]),
                      "flags": list(r.get("flags", []))})
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["frame", "rmse_mean_px", *(f"rmse_px_{c}" for c in cams), "photo_l1", "flags"])
    for t in table:
        w.writerow([t["frame"], _fmt(t["rmse_mean_px"]), *(_fmt(t["rmse_px"].get(c)) for c in cams),
                    _fmt(t["photo_l1"]), ";".join(t["flags"])])
    atomic_write_json(out / "frames.json", {"cameras": cams, "frames": table})
    return atomic_write_bytes(out / "frames.csv", buf.getvalue().encode())


def _tile(img: np.ndarray, width: int, height: int) -> np.ndarray:
    """(H, W, 3) uint8 -> (height, width, 3), letterboxed on black at the same aspect."""
    h, w = img.shape[:2]
    s = min(width / w, height / h)
    nw, nh = max(1, round(w * s)), max(1, round(h * s))
    out = np.zeros((height, width, 3), np.uint8)
    y, x = (height - nh) // 2, (width - nw) // 2
    out[y:y + nh, x:x + nw] = cv2.resize(np.ascontiguousarray(img, np.uint8), (nw, nh), interpolation=cv2.INTER_AREA)
    return out


def _label(img: np.ndarray, text: str, at=(4, 16), scale: float = 0.45) -> None:
    for colour, thick in (((0, 0, 0), 3), ((255, 255, 255), 1)):  # outlined: readable on any background
        cv2.putText(img, text, at, cv2.FONT_HERSHEY_SIMPLEX, scale, colour, thick, cv2.LINE_AA)


def draw_tracked_landmarks(img: np.ndarray, uv: np.ndarray, used: bool) -> np.ndarray:
    """A copy of img (H, W, 3) RGB with the model's landmarks uv (68, 2) drawn: green where the
    frame's fit used this camera's detected landmarks, orange and labelled where it did not (a
    profile's, an outlier's, none detected)."""
    img = img.copy()
    colour = (0, 255, 0) if used else (255, 160, 0)
    for x, y in uv:
        cv2.circle(img, (int(x), int(y)), 2, colour, -1)
    if not used:   # about two thirds of the image's width, whatever its size
        h, w = img.shape[:2]
        scale = w / 320
        cv2.putText(img, "landmarks not used", (max(2, w // 25), max(12, h // 10)), cv2.FONT_HERSHEY_SIMPLEX, scale,
                    colour, max(1, round(2 * scale)), cv2.LINE_AA)
    return img


def write_overlay_video(path, frames: list, load_images, overlay=None, fps: float = 10.0, tile_width: int = 256,
                        columns: int | None = None) -> Path:
    """An mp4 (OpenCV mp4v) with one contact sheet per frame: each camera's image (with its
    overlay) in a grid, labelled with the camera, and the frame's name on top. Frames are
    loaded, drawn and written one at a time, so memory does not grow with the sequence.

    load_images(frame) -> {camera: (H, W, 3) uint8 RGB}, the same cameras in the same order for
    every frame; overlay(frame, camera, image) -> the image with the mesh / landmarks drawn (same
    shape), or None to show the images as they are. Tiles are ``tile_width`` wide at the first
    image's aspect; the grid is about square unless ``columns`` is given. Written to a temp file
    and moved into place when complete."""
    from single_view.video_io import VideoWriter

    if not frames:
        raise ValueError("write_overlay_video needs at least one frame")
    images = load_images(frames[0])
    cameras = list(images)
    if not cameras:
        raise ValueError(f"write_overlay_video: frame {frames[0]!r} has no image")
    cols = columns or math.ceil(math.sqrt(len(cameras)))
    rows = math.ceil(len(cameras) / cols)
    tw = tile_width - tile_width % 2
    first = images[cameras[0]]
    th = max(2, round(tw * first.shape[0] / first.shape[1]) // 2 * 2)  # even sizes: codecs want them
    with VideoWriter(path, fps, (cols * tw, rows * th)) as video:
        for i, f in enumerate(frames):
            if i:
                images = load_images(f)
            if list(images) != cameras:
                raise ValueError(f"write_overlay_video: frame {f!r} has cameras {list(images)}, the first frame "
                                 f"{cameras}: give every frame's images of the same cameras")
            sheet = np.zeros((rows * th, cols * tw, 3), np.uint8)
            for k, c in enumerate(cameras):
                img = images[c] if overlay is None else overlay(f, c, images[c])
                tile = _tile(img, tw, th)
                _label(tile, str(c), at=(4, th - 6), scale=0.4)
                r, q = divmod(k, cols)
                sheet[r * th:(r + 1) * th, q * tw:(q + 1) * tw] = tile
            _label(sheet, f"frame {f}")
            video.write(sheet)
            del images  # freed before the next frame loads: one frame in memory, not two
    return Path(path)
