"""Load a preprocessed scene at fitting resolution.

A scene folder holds ``images/``; preprocessing (process_data) writes beside it, or
into another folder for read-only scenes: ``landmarks.json`` (68 points per view in original
pixels, pixel centres at +0.5), ``masks/head/<stem>.png`` and ``masks/skin/<stem>.png``
(original size), ``cameras.json`` (K at original resolution, SfM poses) and
``manifest.json`` (image fingerprints, stage settings, failures). :func:`load_scene` first
brings the preprocessing up to date through ``process_data.run_all``, which redoes the
stages whose images (by content hash) or settings changed and refuses a folder holding
another scene's preprocessing; preprocessing made by another tool (the manifest names its
``producer``, e.g. the synthetic demo scene) is used as it is when its image fingerprints
match. It then resizes every usable view to the fitting size (longer side = ``image_size``)
and scales landmarks and K by the same factors (a plain scale in the +0.5 pixel convention).

Images are read upright (EXIF orientation applied, :mod:`fitting.images`), as preprocessing
read them. Views without a face, without masks, unreadable, or of another shape than the
camera's (cameras.json width x height) are left out and listed with the reason, so one bad
view never stops the fit. A view at another resolution of the camera's shape gets the
camera's K scaled uniformly (square pixels stay square).
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import torch

from fitting.images import IMAGE_SUFFIXES, check_unique_stems, read_image, same_camera_shape
from fitting.observations import Observations
from fitting.output_folder import writable_dir

__all__ = ["Scene", "load_scene", "find_preprocess_dir", "update_preprocessing", "PREPROCESS_FILES"]

PREPROCESS_FILES = ("landmarks.json", "cameras.json")


@dataclass(kw_only=True)
class Scene(Observations):
    """A multi-view scene at fitting resolution: :class:`Observations` of the N *used* views,
    plus what the capture knows about them.

    name: the scene's name; scene_dir: its folder; prep_dir: where its preprocessing is;
    K: (N, 3, 3) at fitting resolution; K_orig: (N, 3, 3) original pixels; scale: (N, 2)
    (sx, sy) original -> fitting pixels. unused: {name: reason} for every view left out;
    all_names: every image, in order. cameras: cameras.json as read; sfm_poses: {name: (R (3,3),
    t (3,))} up-to-scale SfM poses; ground_truth: ground_truth.npz's arrays (synthetic scenes)
    or None; timing_s: seconds of preprocessing.
    """

    name: str
    scene_dir: Path
    prep_dir: Path
    K: torch.Tensor
    K_orig: torch.Tensor
    scale: torch.Tensor
    all_names: list
    unused: dict
    cameras: dict
    sfm_poses: dict = field(default_factory=dict)
    ground_truth: dict | None = None
    timing_s: float = 0.0

    _ON_DEVICE = Observations._ON_DEVICE + ("K",)


def find_preprocess_dir(scene_dir: Path, prep_dir=None, fallback: Path | None = None) -> Path:
    """Where the preprocessing outputs are (or go): ``prep_dir`` when given; the scene folder
    when it already holds them or is writable; else ``fallback``."""
    scene_dir = Path(scene_dir)
    if prep_dir:
        return Path(prep_dir)
    if all((scene_dir / f).is_file() for f in PREPROCESS_FILES) or writable_dir(scene_dir):
        return scene_dir
    if fallback is None:
        raise ValueError(f"{scene_dir} is read-only and has no preprocessing outputs: give --preprocess_dir DIR")
    return Path(fallback)


def _missing(prep: Path, need_cameras: bool = True) -> list:
    miss = [f for f in PREPROCESS_FILES if not (prep / f).is_file() and (need_cameras or f != "cameras.json")]
    for sub in ("head", "skin"):
        if not (prep / "masks" / sub).is_dir():
            miss.append(f"masks/{sub}/")
    return miss


def _manifest(prep: Path) -> dict | None:
    path = prep / "manifest.json"
    return json.loads(path.read_text()) if path.is_file() else None


def _check_images(scene_dir: Path, prep: Path, manifest: dict) -> None:
    """Preprocessing used as it is (made by another tool, or in a read-only folder) must have
    been made for these images: none added or changed since."""
    from process_data import files
    from process_data.manifest import PRODUCER, fingerprint, image_differences

    names, _ = files.list_images(scene_dir / "images")
    # an image removed since is no reason to refuse: the outputs of the others still hold
    diff = [n for n in image_differences(manifest, {n: fingerprint(scene_dir / "images" / n) for n in names})
            if n in names]
    if diff:
        raise ValueError(f"{prep} holds preprocessing made by {manifest.get('producer', PRODUCER)} for other images "
                         f"({len(diff)} differ: {', '.join(diff[:5])}): give --force_preprocess to recompute "
                         f"it with process_data, or another --preprocess_dir")


def update_preprocessing(scene_dir: Path, prep: Path, force: bool, options: dict) -> None:
    """Bring ``prep`` up to date for the images of ``scene_dir`` (cheap when nothing changed:
    the images are hashed, no stage runs)."""
    from process_data.manifest import PRODUCER, ForeignPreprocess

    manifest = _manifest(prep)
    if not force and manifest is None and (prep / "landmarks.json").is_file():
        raise ValueError(f"{prep} holds landmarks.json but no manifest.json, so nothing says which images it "
                         f"belongs to: give --force_preprocess to recompute it, or another --preprocess_dir")
    if not force and manifest is not None and (manifest.get("producer", PRODUCER) != PRODUCER
                                               or not writable_dir(prep)):
        # process_data would replace another tool's outputs, and cannot write a read-only folder
        _check_images(scene_dir, prep, manifest)
        return
    import process_data  # late: the fitting library works on preprocessed scenes without it

    prep.mkdir(parents=True, exist_ok=True)
    try:
        process_data.run_all(scene_dir, out_dir=prep, force=force, **options)
    except ForeignPreprocess as e:
        raise ValueError(e.advice("--preprocess_dir", "--force_preprocess")) from None


def _read_mask(path: Path, size_wh) -> np.ndarray | None:
    try:
        m = read_image(path, gray=True)
    except ValueError:
        return None
    if (m.shape[1], m.shape[0]) != tuple(size_wh):
        m = cv2.resize(m, tuple(size_wh), interpolation=cv2.INTER_LINEAR)
    return m


def load_scene(scene_dir, image_size: int = 256, prep_dir=None, fallback_prep_dir=None, run_missing: bool = True,
               force: bool = False, preprocess_options: dict | None = None, name: str | None = None,
               cameras: dict | None = None) -> Scene:
    """Read (and if needed first compute) a scene's preprocessing outputs at fitting size.

    scene_dir: folder with images/. image_size: longer side of the fitting images.
    prep_dir: folder with the preprocessing outputs (default: see :func:`find_preprocess_dir`).
    run_missing: bring the preprocessing up to date first (missing or stale stages are
    computed, another scene's outputs refused); False reads the outputs as they are.
    cameras: cameras.json's content to use instead of the file (known cameras: the file is then
    neither needed nor read, and preprocessing skips SfM).
    Raises ValueError when no view is usable, naming each view's reason.
    """
    t0 = time.perf_counter()
    scene_dir = Path(scene_dir)
    if not (scene_dir / "images").is_dir():
        raise ValueError(f"{scene_dir} has no images/ folder: a scene is a folder with images/ (jpg or png)")
    all_names = sorted(p.name for p in (scene_dir / "images").iterdir()
                       if p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith("."))
    check_unique_stems(all_names, str(scene_dir / "images"))
    prep = find_preprocess_dir(scene_dir, prep_dir, fallback_prep_dir)
    if run_missing:
        options = dict(preprocess_options or {})
        if cameras is not None:
            from process_data.pipeline import ALL_STAGES
            options["stages"] = [s for s in ALL_STAGES if s != "intrinsics"]
        update_preprocessing(scene_dir, prep, force, options)
    manifest = _manifest(prep) or {}
    failed = {k: (v.get("reason", str(v)) if isinstance(v, dict) else str(v))
              for k, v in manifest.get("failed", {}).items()}
    if all_names and all(n in failed for n in all_names):  # then the later stages wrote nothing either
        raise ValueError(f"no usable view in {scene_dir}: " + "; ".join(f"{n}: {failed[n]}" for n in all_names))
    missing = _missing(prep, need_cameras=cameras is None)
    if missing:
        raise ValueError(f"{prep} lacks {', '.join(missing)}: run `python -m process_data {scene_dir}` first")
    preprocess_s = time.perf_counter() - t0

    lmk_all = json.loads((prep / "landmarks.json").read_text())
    cams = cameras if cameras is not None else json.loads((prep / "cameras.json").read_text())

    K_cam = np.asarray(cams["K"], np.float64)
    cam_wh = (int(cams.get("width", 0)), int(cams.get("height", 0)))
    unused, rows = {}, []
    for n in all_names:  # file reading is per view by nature
        entry = lmk_all.get(n)
        pts = None if entry is None else entry.get("points")
        if pts is None:
            unused[n] = failed.get(n) or "no face detected (no landmarks)"
            continue
        pts = np.asarray(pts, np.float64)
        if pts.shape != (68, 2) or not np.isfinite(pts).all():
            unused[n] = f"landmarks malformed (shape {pts.shape})"
            continue
        try:
            img = read_image(scene_dir / "images" / n)
        except ValueError as e:
            unused[n] = failed.get(n) or str(e)
            continue
        wh = (img.shape[1], img.shape[0])
        stem = Path(n).stem
        head = _read_mask(prep / "masks" / "head" / f"{stem}.png", wh)
        skin = _read_mask(prep / "masks" / "skin" / f"{stem}.png", wh)
        if head is None or skin is None:
            unused[n] = failed.get(n) or "mask missing"
            continue
        rows.append((n, img, pts, head, skin, wh))
    if not rows:
        raise ValueError(f"no usable view in {scene_dir}: " + "; ".join(f"{k}: {v}" for k, v in unused.items()))

    # One fitting size for all views, from the camera's size (else the most common one).
    if cam_wh[0] <= 0:
        sizes = [r[5] for r in rows]
        cam_wh = max(set(sizes), key=sizes.count)
    s = image_size / max(cam_wh)
    fw, fh = max(1, round(cam_wh[0] * s)), max(1, round(cam_wh[1] * s))
    names, paths, ims, lmks, heads, skins, Ks, Korig, scales, osz = ([] for _ in range(10))
    for n, img, pts, head, skin, wh in rows:
        if not same_camera_shape(cam_wh, wh):
            unused[n] = (f"size {wh[0]}x{wh[1]} is not the shape of the scene's {cam_wh[0]}x{cam_wh[1]} camera: "
                         "fit it in a scene of its own")
            continue
        sx, sy = fw / wh[0], fh / wh[1]
        # The same camera at another resolution: K scales uniformly, so pixels stay square.
        k = wh[0] / cam_wh[0]
        Ko = np.diag([k, k, 1.0]) @ K_cam
        interp = cv2.INTER_AREA if sx < 1 else cv2.INTER_LINEAR
        names.append(n)
        paths.append(str(scene_dir / "images" / n))
        ims.append(cv2.resize(img, (fw, fh), interpolation=interp))
        heads.append(cv2.resize(head, (fw, fh), interpolation=cv2.INTER_AREA))
        skins.append(cv2.resize(skin, (fw, fh), interpolation=cv2.INTER_AREA))
        lmks.append(pts * np.array([sx, sy]))
        Korig.append(Ko)
        Ks.append(np.diag([sx, sy, 1.0]) @ Ko)
        scales.append((sx, sy))
        osz.append(wh)
    if not names:
        raise ValueError(f"no usable view in {scene_dir}: " + "; ".join(f"{k}: {v}" for k, v in unused.items()))

    sfm = {}
    for n, p in (cams.get("sfm_poses") or {}).items():
        if n in names:
            sfm[n] = (np.asarray(p["R"], np.float64), np.asarray(p["t"], np.float64))
    gt = None
    if (scene_dir / "ground_truth.npz").is_file():
        gt = dict(np.load(scene_dir / "ground_truth.npz", allow_pickle=False))

    f32 = torch.float32
    return Scene(
        name=name or scene_dir.resolve().name,
        scene_dir=scene_dir,
        prep_dir=prep,
        names=names,
        image_paths=paths,
        images=torch.from_numpy(np.stack(ims)).permute(0, 3, 1, 2).to(f32) / 255.0,
        landmarks=torch.tensor(np.stack(lmks), dtype=f32),
        head_mask=torch.from_numpy(np.stack(heads))[:, None].to(f32) / 255.0,
        skin_mask=torch.from_numpy(np.stack(skins))[:, None].to(f32) / 255.0,
        K=torch.tensor(np.stack(Ks), dtype=f32),
        K_orig=torch.tensor(np.stack(Korig), dtype=f32),
        scale=torch.tensor(scales, dtype=f32),
        orig_size=torch.tensor(osz, dtype=torch.int64),
        size=(fh, fw),
        all_names=all_names,
        unused=unused,
        cameras=cams,
        sfm_poses=sfm,
        ground_truth=gt,
        timing_s=preprocess_s,
    )
