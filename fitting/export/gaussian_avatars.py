"""GaussianAvatars / VHAP export: VHAP's NeRF dataset layout (vhap/export_as_nerf_dataset.py),
which GaussianAvatars trains on (``python train.py -s DIR -m OUT --eval --bind_to_mesh
--white_background``).

Layout::

    DIR/images/00000_<cc>.png        the photo, composited by the head mask over a white (or
                                     black) background, as VHAP writes it
    DIR/fg_masks/00000_<cc>.png      the head mask (8-bit)
    DIR/flame_param/00000.npz        FLAME parameters of timestep 0 (one capture = one timestep)
    DIR/canonical_flame_param.npz    the same shape, neutral expression and pose, jaw open 0.3 rad
    DIR/transforms.json              every frame; transforms_{train,val,test}.json: split by camera
    DIR/WARNING.txt                  only when the model is not FLAME 2023 (the stand-in, FLAME 2020)

Per frame (the keys VHAP's ``NeRFDatasetWriter.write`` and ``TrackedFLAMEDatasetWriter`` write):
``timestep_index``, ``timestep_index_original``, ``timestep_id``, ``camera_index``,
``camera_id``, ``cx cy fl_x fl_y h w camera_angle_x camera_angle_y``, ``transform_matrix``
(OpenGL camera-to-world), ``file_path``, ``fg_mask_path``, ``flame_param_path``; top level:
the first frame's intrinsics, ``timestep_indices`` and ``camera_indices``.

FLAME npz keys and shapes (GaussianAvatars' ``FlameGaussianModel.load_meshes``): ``shape``
(300,), ``expr`` (1, 100), ``rotation`` / ``neck_pose`` / ``jaw_pose`` (1, 3), ``eyes_pose``
(1, 6), ``translation`` (1, 3) = 0 (our world is FLAME's head frame), ``static_offset`` (1, V, 3)
zeros; float32. Our shape and expression are zero-padded to 300 / 100.

GaussianAvatars' ``readCamerasFromTransforms`` keeps only ``camera_angle_x`` (focal from the
horizontal field of view, principal point at the image centre). When our K has another
principal point or fx != fy, each image (and mask) is resampled to K' = [[fx, 0, w/2], [0, fx,
h/2], [0, 0, 1]] and K' is written; the frame's ``original_K`` keeps ours (pixels map by
K' K^-1).
"""
from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np

from fitting.atomic import atomic_write_bytes
from fitting.export.core import write_json, write_params, write_png, write_transforms
from fitting.export.source import FitResult, model_note
from fitting.images import read_image

__all__ = ["write_gaussian_avatars", "flame_param_arrays", "centred_K", "split_cameras"]

N_SHAPE, N_EXPR = 300, 100


def _pad(x: np.ndarray, n: int) -> np.ndarray:
    x = np.asarray(x, np.float32).reshape(-1)[:n]
    return np.concatenate([x, np.zeros(n - len(x), np.float32)])


def flame_param_arrays(params: dict, num_verts: int, canonical: bool = False) -> dict:
    """Our params.npz (subject 0) -> GaussianAvatars' / VHAP's per-timestep FLAME npz arrays."""
    pose = np.asarray(params["pose"], np.float32).reshape(-1, 15)[0]
    d = {"shape": _pad(params["shape"][0], N_SHAPE),
         "expr": _pad(params["expression"][0], N_EXPR)[None],
         "rotation": pose[None, 0:3], "neck_pose": pose[None, 3:6], "jaw_pose": pose[None, 6:9],
         "eyes_pose": pose[None, 9:15], "translation": np.zeros((1, 3), np.float32),
         "static_offset": np.zeros((1, num_verts, 3), np.float32)}
    if canonical:  # VHAP's write_canonical_flame_param: neutral, mouth open 0.3 rad
        for k in ("expr", "rotation", "neck_pose", "eyes_pose"):
            d[k] = np.zeros_like(d[k])
        d["jaw_pose"] = np.array([[0.3, 0, 0]], np.float32)
    return {k: np.ascontiguousarray(v, np.float32) for k, v in d.items()}


def centred_K(K: np.ndarray, size) -> np.ndarray:
    """The intrinsics GaussianAvatars assumes: fx = fy, principal point at the centre."""
    W, H = size
    return np.array([[K[0, 0], 0, W / 2], [0, K[0, 0], H / 2], [0, 0, 1]], np.float64)


def split_cameras(names: list, val: list | None, test: list | None) -> dict:
    """{view index: 'train' | 'val' | 'test'}; ``val`` / ``test`` name views by file name, stem
    or index."""
    def pick(sel):
        out = set()
        for s in sel or []:
            s = str(s)
            hits = [i for i, n in enumerate(names) if s in (n, Path(n).stem)]
            if not hits and s.isdigit() and int(s) < len(names):
                hits = [int(s)]
            if not hits:
                raise ValueError(f"no view named {s!r} to hold out (views: {', '.join(names)})")
            out.update(hits)
        return out
    v, te = pick(val), pick(test)
    return {i: "val" if i in v else "test" if i in te else "train" for i in range(len(names))}


def _resample(img: np.ndarray, K: np.ndarray, K2: np.ndarray, interp) -> np.ndarray:
    A = (K2 @ np.linalg.inv(K))[:2]
    # warpAffine works on pixel indices (centres at integers): shift by 0.5 either side
    S = np.array([[1, 0, 0.5], [0, 1, 0.5], [0, 0, 1]])
    A = (np.linalg.inv(S) @ np.vstack([A, [0, 0, 1]]) @ S)[:2]
    return cv2.warpAffine(img, A, (img.shape[1], img.shape[0]), flags=interp, borderMode=cv2.BORDER_CONSTANT)


def write_gaussian_avatars(fit: FitResult, out_dir, val_cameras=None, test_cameras=None,
                           background: str = "white") -> Path:
    out = Path(out_dir)
    bg = {"white": 255, "black": 0}[background]
    split = split_cameras(fit.names, val_cameras, test_cameras)
    Ks, frames, paths = [], [], []
    for i, stem in enumerate(fit.stems):
        K, size = fit.K[i], fit.sizes[i]
        K2 = centred_K(K, size)
        rgb = read_image(fit.image_paths[i]).astype(np.float32)
        m = fit.head_mask(i)
        m = np.full(rgb.shape[:2], 255, np.uint8) if m is None else m
        warp = not np.allclose(K2, K, atol=1e-6)
        if warp:
            rgb = _resample(rgb, K, K2, cv2.INTER_LINEAR)
            m = _resample(m, K, K2, cv2.INTER_LINEAR)
        a = m.astype(np.float32)[..., None] / 255.0
        comp = (rgb * a + bg * (1 - a) + 0.5).clip(0, 255).astype(np.uint8)
        fp, mp = f"images/00000_{i:02d}.png", f"fg_masks/00000_{i:02d}.png"
        write_png(out / fp, comp)
        write_png(out / mp, m)
        paths.append(fp)
        Ks.append(K2)
        fr = {"timestep_index": 0, "timestep_index_original": 0, "timestep_id": "00000",
              "camera_index": i, "camera_id": stem, "fg_mask_path": mp,
              "flame_param_path": "flame_param/00000.npz", "source_image": fit.names[i]}
        if warp:
            fr["original_K"] = K.tolist()
        frames.append(fr)
    nv = len(fit.verts)
    write_params(out / "flame_param" / "00000.npz", **flame_param_arrays(fit.params, nv))
    write_params(out / "canonical_flame_param.npz", **flame_param_arrays(fit.params, nv, canonical=True))
    note = model_note(fit)
    top = {"timestep_indices": [0], "camera_indices": list(range(len(fit.names))),
           "background": background, "flame_model": Path(fit.model_path).name or "synthetic"}
    if note:
        top["warning"] = note
        atomic_write_bytes(out / "WARNING.txt", (note + "\n").encode())
    Ks = np.asarray(Ks)
    write_transforms(out / "transforms.json", Ks, fit.R, fit.t, fit.sizes, paths, extra=top, frame_extra=frames)
    full = json.loads((out / "transforms.json").read_text())
    for div in ("train", "val", "test"):
        d = dict(full)
        d["frames"] = [fr for i, fr in enumerate(full["frames"]) if split[i] == div]
        d["camera_indices"] = [i for i in range(len(fit.names)) if split[i] == div]
        write_json(out / f"transforms_{div}.json", d)
    return out
