"""A synthetic multi-view sequence with ground truth: one head filmed by a calibrated rig over time.

:func:`make_sequence` draws one identity (shape, texture code) and, per frame, a smoothly
varying expression and jaw opening and a small smooth rigid head motion; it renders every
(frame, camera) with :mod:`fitting.synthetic_scene`'s pieces (skin-detail texture, SH light
per camera, a textured background per camera) and writes::

    images/<camera>/<frame>.png             cameras cam00.., frames 000000..
    calibration/cameras.json                the rig in the plain calibration JSON (docs/CONVENTIONS.md)
    calibration/transforms.json             the same cameras as a transforms.json
    calibration/colmap/                     the same cameras as a COLMAP text model
    frames/<frame>/images/<camera>.png      relative links to ../../../images/<camera>/<frame>.png
    frames/<frame>/landmarks.json, masks/, cameras.json, manifest.json
    ground_truth.npz

Cameras in the calibration files are named by camera (``cam00``; COLMAP image names and the
transforms.json ``file_path`` are the bare names), so they match a frame folder's
``images/cam00.png`` by stem. The calibration is in a RIG frame that is not FLAME's head frame:
the head's pose at frame f is ``X_rig = head_R[f] @ X_flame + head_t[f]``, with X_flame the
FLAME vertices of (shape, expression[f], pose[f]) (pose's global rotation and neck zero).
Each frame folder is a scene load_scene uses as it is (producer fitting.synthetic_sequence,
fingerprints of the linked images); its cameras.json holds the known K.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from fitting.calibration import Calibrated, write_calibration_json
from fitting.export.core import write_colmap_text, write_png, write_transforms
from fitting.landmark_trust import view_yaw_deg
from fitting.render.cameras import FLIP
from fitting.rotations import axis_angle_to_matrix
from fitting.sequence.layout import link_image
from fitting.synthetic_scene import (_sh_random, camera_arc, detector_landmarks, head_texture, textured_background,
                                     view_annotations, write_preprocessing)
from process_data.manifest import fingerprint

__all__ = ["make_sequence", "smooth_series", "SEQUENCE_VERSION"]

PRODUCER = "fitting.synthetic_sequence"
# Bump when a sequence's content changes for the same options (ground_truth.npz ``version``):
# cached sequences (``python -m bench.sequence --cache``) are rebuilt then.
SEQUENCE_VERSION = 3


def smooth_series(n_frames: int, dim: int, std: float, rng: np.random.Generator, n_waves: int = 3) -> np.ndarray:
    """(n_frames, dim) float64: per column a sum of ``n_waves`` sinusoids of periods 15 to 60
    frames and random phase, of standard deviation ``std`` over a long clip. Periods are in
    frames, not in clip lengths, so neighbouring frames differ by at most ~0.4 ``std`` however
    short the clip."""
    f = np.arange(n_frames, dtype=np.float64)[:, None, None]           # (T, 1, 1)
    freq = rng.uniform(1 / 60, 1 / 15, (1, dim, n_waves))              # cycles per frame
    phase = rng.uniform(0, 2 * np.pi, (1, dim, n_waves))
    # each sinusoid of amplitude a has variance a^2 / 2
    return (std * np.sqrt(2.0 / n_waves) * np.sin(2 * np.pi * freq * f + phase)).sum(-1)


def _rig_frame(rng: np.random.Generator):
    """(G_R (3, 3), G_t (3,)) float64: X_rig = G_R X_head + G_t, a rotation of tens of degrees
    and a metre-scale offset, so a solver that assumes the head frame fails visibly."""
    a = rng.normal(0, 1, 3)
    G_R = axis_angle_to_matrix(torch.tensor(a / np.linalg.norm(a) * rng.uniform(0.5, 1.2))).numpy()
    return G_R, rng.uniform(-1, 1, 3)


@torch.no_grad()
def make_sequence(out_dir, model_path, n_frames: int = 20, n_cameras: int = 8, width: int = 256, height: int = 256,
                  fov_deg: float = 20.0, distance: float = 0.8, yaw_deg: float = 50.0, pitch_deg: float = 10.0,
                  noise_px: float = 0.5, n_shape: int = 40, n_exp: int = 20, seed: int = 0,
                  detector_profiles: bool = True) -> Path:
    """Write a synthetic sequence folder with ground truth (module docstring); returns ``out_dir``.

    Per frame: expression ~ :func:`smooth_series` of std 0.5; jaw opening in [0, 0.25] rad;
    the head turns by a few degrees (axis-angle std 2 deg) and moves by ~1.5 cm (std per axis)
    about its rest pose. The rig (:func:`fitting.synthetic_scene.camera_arc`) looks at the head's
    rest pose. Landmarks: the projected model landmarks, with ``detector_profiles`` a
    detector's beyond its yaw range (:func:`fitting.synthetic_scene.detector_landmarks`), + N(0,
    noise_px) px.
    """
    from fitting.flame import FLAME, find_texture_space, load_texture_space
    from fitting.render import MeshRenderer, RasterSettings, project_points

    if n_cameras < 1 or n_frames < 1:
        raise ValueError(f"a sequence needs n_cameras >= 1 and n_frames >= 1, got {n_cameras}, {n_frames}")
    out = Path(out_dir)
    rng = np.random.default_rng(seed)
    flame = FLAME(model_path, n_shape=n_shape, n_exp=n_exp)
    tex_path = find_texture_space(model_path)
    texspace = load_texture_space(tex_path) if tex_path is not None else None
    T, C = n_frames, n_cameras

    shape = torch.tensor(rng.normal(0, 1, (1, n_shape)), dtype=torch.float32)
    expr = torch.tensor(smooth_series(T, n_exp, 0.5, rng), dtype=torch.float32)                    # (T, E)
    pose = torch.zeros(T, 15)
    pose[:, 6] = torch.tensor(0.125 + 0.125 * np.tanh(smooth_series(T, 1, 1.0, rng)[:, 0]))        # jaw in [0, 0.25]
    motion_R = axis_angle_to_matrix(torch.tensor(smooth_series(T, 3, np.radians(2.0), rng))).numpy()  # (T, 3, 3)
    motion_t = smooth_series(T, 3, 0.015, rng)                                                       # (T, 3)
    G_R, G_t = _rig_frame(rng)
    head_R = G_R @ motion_R                                                   # (T, 3, 3): X_rig = head_R X + head_t
    head_t = motion_t @ G_R.T + G_t                                           # (T, 3)

    K, R_h, t_h = camera_arc(C, width, height, fov_deg, distance, yaw_deg, pitch_deg, rng)  # head (rest) frame
    R = R_h.double().numpy() @ G_R.T                                          # (C, 3, 3) rig-frame cameras
    t = t_h.double().numpy() - R @ G_t                                        # (C, 3)
    sh = torch.tensor(_sh_random(C, rng))
    backgrounds = [textured_background(height, width, rng) for _ in range(C)]  # a fixed rig: fixed backdrops

    verts_flame, _ = flame(shape.expand(T, -1), expr, pose)                   # (T, V, 3) head frame, unposed rigidly
    code, texture, vt, ft = head_texture(flame, texspace, verts_flame[0], distance, fov_deg, width, seed, rng)
    renderer = MeshRenderer(flame.faces, vt, ft, RasterSettings((height, width)))
    HR, Ht = torch.tensor(head_R, dtype=torch.float32), torch.tensor(head_t, dtype=torch.float32)
    verts_rig = verts_flame @ HR.transpose(1, 2) + Ht[:, None]                # (T, V, 3)
    Rr, tr = torch.tensor(R, dtype=torch.float32), torch.tensor(t, dtype=torch.float32)

    cams = [f"cam{c:02d}" for c in range(C)]
    frames = [f"{f:06d}" for f in range(T)]
    lmk_all = np.zeros((T, C, 68, 2), np.float32)
    profile = np.zeros((T, C), bool)
    for f, fr in enumerate(frames):  # one frame's views render together; frames are written one by one
        vv = verts_rig[f:f + 1].expand(C, -1, -1)
        # the landmark contour follows the head's rotation in each camera
        lmk3d = flame.landmarks(verts_flame[f:f + 1].expand(C, -1, -1), FLIP @ Rr @ HR[f])
        lmk2d, _ = project_points(lmk3d @ HR[f].T + Ht[f], K, Rr, tr)
        lmk_all[f] = lmk2d.numpy()
        r = renderer(vv, K, Rr, tr, texture=texture, sh=sh,
                     vertex_colors=None if texture is not None else torch.full_like(vv, 0.7))
        detected = lmk2d.numpy()
        if detector_profiles:
            detected, profile[f] = detector_landmarks(detected, view_yaw_deg(Rr @ HR[f]).numpy())
        noisy = detected + rng.normal(0, noise_px, lmk2d.shape)
        folder = out / "frames" / fr
        landmarks, views = {}, {}
        for c, cam in enumerate(cams):  # writing files is per view by nature
            a = r.silhouette[c, 0].numpy()[..., None]
            img = a * r.image[c].permute(1, 2, 0).numpy().clip(0, 1) + (1 - a) * backgrounds[c]
            src = write_png(out / "images" / cam / f"{fr}.png", img)
            name = f"{cam}.png"
            link_image(folder / "images" / name, src)
            views[name] = {"size": [width, height], **fingerprint(src)}
            landmarks[name] = view_annotations(folder, cam, r.alpha[c, 0].numpy() > 0.5, lmk2d[c].numpy(), noisy[c])
        write_preprocessing(folder, PRODUCER, landmarks, views, {}, K[0], width, height,
                            {"model": str(model_path), "seed": seed, "frame": fr})

    sizes = np.full((C, 2), (width, height))
    calib = out / "calibration"
    write_calibration_json(calib / "cameras.json", {
        cam: Calibrated(K[c].double().numpy(), R[c], t[c], width, height, np.zeros(0)) for c, cam in enumerate(cams)})
    write_transforms(calib / "transforms.json", K, R, t, sizes, cams)
    write_colmap_text(calib / "colmap", K, R, t, sizes, cams)
    np.savez(out / "ground_truth.npz", shape=shape[0].numpy(), tex=code[0].numpy(), expression=expr.numpy(),
             pose=pose.numpy(), head_R=head_R.astype(np.float32), head_t=head_t.astype(np.float32), K=K.numpy(),
             R=R.astype(np.float32), t=t.astype(np.float32), cameras=np.array(cams), frames=np.array(frames),
             vertices=verts_rig.numpy(), landmarks=lmk_all, sh=sh.numpy(), noise_px=np.float32(noise_px),
             profile_views=profile, version=np.int64(SEQUENCE_VERSION))
    return out
