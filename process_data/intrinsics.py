"""Stage 4: intrinsics (and up-to-scale poses) with pycolmap: no colmap binary.

SIFT with one shared SIMPLE_PINHOLE camera, exhaustive (or sequential) matching, incremental
mapping, with settings that work on face captures (few features on skin and plain
backgrounds): peak_threshold 0.003, domain-size pooling, min_num_matches 10,
init_min_tri_angle 2. The result is checked for plausibility; when SfM fails or registers
fewer than 3 views, K comes from the EXIF focal length, else from a field of view.
The default model has no distortion, so fitting uses a pure pinhole projection; if a
distorted model is requested, its parameters are carried in cameras.json ("distortion") and
the fitting must apply them in its projection (images are never undistorted here).
COLMAP reads the stored pixels and ignores the EXIF orientation, so when a photo is stored
sideways, SfM runs on upright copies (``sfm/images/``): K and poses refer to the upright
images, like the landmarks and masks.
"""
from __future__ import annotations

import json
import logging
import shutil
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
from PIL import Image

from fitting.atomic import atomic_write_json
from fitting.images import exif_orientation, image_size, write_upright_copy
from process_data.manifest import fingerprint

log = logging.getLogger(__name__)

FOCAL_BOUNDS = (0.25, 25.0)   # plausible f / max(width, height)
MAX_DISTORTION = 0.5          # |k| above this is an absurd radial distortion
MAX_REPROJ_ERROR = 2.0        # px
MIN_POINTS3D = 50             # fewer triangulated points cannot pin down a focal length


def K_from_fov(width: int, height: int, fov_deg: float) -> np.ndarray:
    """K (3, 3) float64 for a horizontal field of view in degrees; centred principal point
    (W/2, H/2): fitting.render.cameras.intrinsics_from_fov as a numpy array."""
    import torch

    from fitting.render.cameras import intrinsics_from_fov
    return intrinsics_from_fov(fov_deg, width, height, dtype=torch.float64)[0].numpy()


def exif_focal_px(path) -> float | None:
    """Focal length in pixels from EXIF FocalLengthIn35mmFilm (36 mm across the long side of
    a 3:2 frame is the 35 mm convention); None when the tag is absent."""
    try:
        with Image.open(path) as im:
            exif = im.getexif()
            sub = exif.get_ifd(0x8769)
            f35 = sub.get(0xA405) or exif.get(0xA405)
            w, h = im.size
    except Exception:
        return None
    if not f35:
        return None
    return float(f35) * max(w, h) / 36.0


def check_plausible(K: np.ndarray, distortion, width: int, height: int, reproj: float | None) -> str | None:
    """None when (K, distortion) are plausible, else the reason."""
    f = float(K[0, 0])
    lo, hi = FOCAL_BOUNDS
    side = max(width, height)
    if not np.isfinite(K).all():
        return "non-finite intrinsics"
    if not lo * side <= f <= hi * side:
        return f"focal length {f:.1f} px is outside [{lo}, {hi}] x the image side {side}"
    if any(abs(k) > MAX_DISTORTION for k in distortion):
        return f"distortion {list(distortion)} exceeds |k| <= {MAX_DISTORTION}"
    if reproj is not None and reproj > MAX_REPROJ_ERROR:
        return f"mean reprojection error {reproj:.2f} px > {MAX_REPROJ_ERROR}"
    return None


def run_sfm(image_dir, names: list[str], work_dir, *, max_image_size: int = 1024, sequential: bool = False,
            camera_model: str = "SIMPLE_PINHOLE", num_threads: int = -1, seed: int = 0,
            max_attempts: int = 3, landmarks: dict | None = None, use_landmarks: str = "fallback",
            sift_dsp: bool = True, keypoint_masks: Path | None = None, upsample: int = 1):
    """Run pycolmap on ``names`` inside ``image_dir``; database and model go in ``work_dir``.

    landmarks: optional {name: (68, 2)} in the +0.5 convention (COLMAP's too), added as extra
    keypoints whose descriptors identify the landmark index, so that matching pairs the same
    index across views; use_landmarks: "never", "always" or "fallback" (only in the retry round).
    sift_dsp, keypoint_masks, upsample: the SIFT descriptor, where keypoints may lie, and the
    scale SIFT sees the images at (see :func:`extract_and_match`).
    num_threads: SIFT extraction's and matching's (-1: every core); their results do not depend
    on it. The mapper runs on one thread (:data:`MAPPER_THREADS`).
    Returns the best pycolmap.Reconstruction or None. Keypoints are rescaled to the original
    resolution by COLMAP itself, so the camera is at original resolution."""
    import pycolmap

    work_dir = Path(work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    level = pycolmap.logging.minloglevel
    pycolmap.logging.minloglevel = 2  # COLMAP's INFO lines would drown the progress bars
    try:
        return _run_sfm(pycolmap, image_dir, names, work_dir, max_image_size, sequential, camera_model,
                        num_threads, seed, max_attempts, landmarks, use_landmarks, sift_dsp, keypoint_masks,
                        upsample)
    finally:
        pycolmap.logging.minloglevel = level


# The incremental mapper's threads. With more than one the model changes from run to run: on
# multiview_sample its focal length took 3 values 17 % apart over 6 runs with every core, and
# one value in 7 of 8 runs with one thread (the eighth 1.1 % off); mapping 8 views takes ~1 s.
MAPPER_THREADS = 1


def _run_sfm(pycolmap, image_dir, names, work_dir, max_image_size, sequential, camera_model, num_threads, seed,
             max_attempts, landmarks, use_landmarks, sift_dsp, keypoint_masks, upsample, max_rounds=2):
    # Multi-threaded mapping is not deterministic; on face captures an unlucky run strands most
    # views or lands on an absurd focal length. So: retry mapping with other seeds (cheap), and
    # if that does not help, redo the matching once (another RANSAC seed, and the landmarks
    # added with --sfm_landmarks fallback) on the same features.
    best = None
    db = work_dir / "database.db"
    for rnd in range(max_rounds):
        pycolmap.set_random_seed(seed + 100 * rnd)
        if rnd == 0:
            if db.exists():
                db.unlink()
            extract_features(pycolmap, db, image_dir, names, camera_model, max_image_size, num_threads,
                             pycolmap.CameraMode.SINGLE, sift_dsp, keypoint_masks, upsample)
        else:   # the features do not depend on the seed: only the matching is redone
            with pycolmap.Database.open(str(db)) as database:
                database.clear_matches()
                database.clear_two_view_geometries()
        if landmarks and ((use_landmarks == "always" and rnd == 0) or (use_landmarks == "fallback" and rnd == 1)):
            add_landmark_features(pycolmap, db, landmarks)
        match_features(pycolmap, db, seed + rnd, num_threads, sequential, upsample)
        for attempt in range(max_attempts):
            opts = pycolmap.IncrementalPipelineOptions()
            opts.min_num_matches = 10
            opts.mapper.init_min_tri_angle = 2.0   # faces subtend small baselines
            opts.num_threads = MAPPER_THREADS
            opts.random_seed = seed + attempt + 100 * rnd
            opts.multiple_models = False
            fixed_focal = attempt % 2 == 1
            if fixed_focal:
                # Small-baseline face pairs can send the focal length to "orthographic" values
                # (f >> 10 x width), after which the mapper rejects every further view. Map
                # with the focal held at its prior, then free it in one global adjustment.
                opts.ba_refine_focal_length = False
                opts.mapper.abs_pose_refine_focal_length = False
            pycolmap.set_random_seed(opts.random_seed)
            out = work_dir / "sparse" / f"{rnd}_{attempt}"
            out.mkdir(parents=True, exist_ok=True)
            recs = pycolmap.incremental_mapping(db, str(image_dir), out, options=opts)
            if fixed_focal:
                for r in recs.values():
                    ba = pycolmap.BundleAdjustmentOptions()
                    ba.refine_focal_length = True
                    ba.print_summary = False
                    pycolmap.bundle_adjustment(r, ba)
            for r in recs.values():
                if best is None or _rank(r) > _rank(best):
                    best = r
            if best is not None and _good(best, len(names)):
                return best
        if best is None:
            break  # no model at all: the views do not overlap; another round will not help
    return best


def extract_and_match(pycolmap, db, image_dir, names: list[str], camera_model: str, max_image_size: int,
                      ransac_seed: int, num_threads: int, sequential: bool, camera_mode, landmarks: dict | None,
                      sift_dsp: bool = True, keypoint_masks: Path | None = None, upsample: int = 1):
    """SIFT features of ``names`` and their verified matches into the database ``db`` (COLMAP
    numbers the images in the sorted order of their names); with ``landmarks``, also the
    landmark keypoints (:func:`add_landmark_features`).

    keypoint_masks: a folder of masks, ``<image stem>.png`` each (process_data's masks/head/;
    stems must differ across sub-folders): SIFT keeps only the keypoints on their non-zero
    pixels, and a view without a mask gets none. For the demo's scenes, whose backgrounds are
    drawn per view, so that none of their keypoints can match (docs/PREPROCESSING.md,
    "Intrinsics": not for real captures yet).

    num_threads: extraction's and matching's (-1: every core; the result does not depend on it).
    sift_dsp: domain-size pooling (DSP-SIFT descriptors). It triples extraction's time, and it
    is what finds the matches on real skin: on ../shared/data/multiview_sample it gave 737 SfM
    points against 562 without (docs/PREPROCESSING.md).
    upsample: SIFT sees the images scaled by this integer (:func:`sift_upsampling`); the
    database then holds the keypoints and cameras in the images' own pixels, as without it,
    and the matches are verified at 4 px in the pixels SIFT saw."""
    extract_features(pycolmap, db, image_dir, names, camera_model, max_image_size, num_threads, camera_mode,
                     sift_dsp, keypoint_masks, upsample)
    if landmarks:
        add_landmark_features(pycolmap, db, landmarks)
    match_features(pycolmap, db, ransac_seed, num_threads, sequential, upsample)


def extract_features(pycolmap, db, image_dir, names: list[str], camera_model: str, max_image_size: int,
                     num_threads: int, camera_mode, sift_dsp: bool = True, keypoint_masks: Path | None = None,
                     upsample: int = 1) -> None:
    """The images ``names`` and their SIFT features into the new database ``db``, in the
    images' own pixels (arguments as in :func:`extract_and_match`)."""
    reader = pycolmap.ImageReaderOptions()
    reader.camera_model = camera_model
    if upsample == 1:
        _extract(pycolmap, db, Path(image_dir), names, reader, max_image_size, num_threads, camera_mode, sift_dsp,
                 keypoint_masks)
        return
    sift_dir = Path(db).parent / "sift_images"
    try:   # the copies go, extracted or not: a later run must not find another run's copies
        _scaled_copies(image_dir, names, sift_dir, upsample)
        _extract(pycolmap, db, sift_dir, names, reader, max_image_size, num_threads, camera_mode, sift_dsp,
                 keypoint_masks)
    finally:
        shutil.rmtree(sift_dir, ignore_errors=True)
    _to_original_pixels(pycolmap, db, image_dir, names, camera_mode, reader, upsample)


def match_features(pycolmap, db, ransac_seed: int, num_threads: int, sequential: bool, upsample: int = 1) -> None:
    """Verified matches between the features in ``db`` (exhaustive, or ``sequential``), with
    the verification's RANSAC seeded; its 4 px threshold applies in the pixels SIFT saw, so it
    is divided by ``upsample`` in the database's."""
    mo = pycolmap.FeatureMatchingOptions()
    mo.num_threads = num_threads
    vo = pycolmap.TwoViewGeometryOptions()
    vo.ransac.random_seed = ransac_seed
    vo.ransac.max_error /= upsample
    if sequential:
        pycolmap.match_sequential(db, matching_options=mo, verification_options=vo, device=pycolmap.Device.cpu)
    else:
        pycolmap.match_exhaustive(db, matching_options=mo, verification_options=vo, device=pycolmap.Device.cpu)


def _extract(pycolmap, db, sift_dir: Path, names: list[str], reader, max_image_size: int, num_threads: int,
             camera_mode, sift_dsp: bool, keypoint_masks: Path | None) -> None:
    """Import ``names`` of ``sift_dir`` into ``db`` and extract their SIFT features there (see
    :func:`extract_and_match`)."""
    if keypoint_masks is not None:
        reader.mask_path = str(_colmap_masks(keypoint_masks, sift_dir, names, Path(db).parent / "keypoint_masks"))
    ext = pycolmap.FeatureExtractionOptions()
    ext.max_image_size = int(max_image_size)
    # The images go into the database first, on one thread (in sorted order); the extraction
    # threads then find them there by name. Extracting into an empty database numbers the images
    # in the order the threads finish. So the database, and with the fixed RANSAC seed the
    # matches, are the same on every run and whatever the thread count (1 against 2 threads:
    # the same ids, keypoints, descriptors and inlier matches, byte for byte).
    pycolmap.Database.open(str(db)).close()
    pycolmap.import_images(db, str(sift_dir), camera_mode=camera_mode, image_names=list(names), options=reader)
    ext.num_threads = num_threads
    ext.sift.peak_threshold = 0.003   # low-contrast skin needs a lower DoG threshold
    ext.sift.domain_size_pooling = bool(sift_dsp)
    pycolmap.extract_features(db, str(sift_dir), image_names=list(names), camera_mode=camera_mode,
                              reader_options=reader, extraction_options=ext, device=pycolmap.Device.cpu)


def sift_upsampling(sizes: list, max_image_size: int) -> int:
    """2 when every image's longer side is at most half ``max_image_size``, else 1. sizes:
    (width, height) per image. SIFT's finest octave (COLMAP's, the image doubled) still misses
    the skin's fine texture in small images: on the 256 px synthetic sequence the doubled views
    give ~140 track points a frame against ~2, 3x and 4x no more than 2x; on the real sample
    halved, 2.5x the points (docs/FITTING.md)."""
    return 2 if all(2 * max(w, h) <= max_image_size for w, h in sizes) else 1


def _scaled_copies(image_dir, names: list[str], out: Path, up: int) -> Path:
    """``names`` of ``image_dir`` scaled by the integer ``up`` (cubic), in ``out`` under their
    own names (:func:`write_sift_copy`). Returns ``out``."""
    import cv2
    for n in names:
        # the stored pixels, as COLMAP reads them (it ignores the EXIF orientation)
        img = cv2.imread(str(Path(image_dir) / n), cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION)
        if img is None:
            raise ValueError(f"could not read {Path(image_dir) / n} for SIFT")
        write_sift_copy(out / n, cv2.resize(img, None, fx=up, fy=up, interpolation=cv2.INTER_CUBIC))
    return out


def write_sift_copy(dst: Path, bgr: np.ndarray) -> None:
    """Write the image ``bgr`` (H, W, 3) uint8, OpenCV's channel order, to ``dst`` for SIFT to
    read under the original's name: a PNG stays lossless, a JPEG is written at quality 100."""
    import cv2
    dst.parent.mkdir(parents=True, exist_ok=True)
    jpeg = [cv2.IMWRITE_JPEG_QUALITY, 100] if dst.suffix.lower() in (".jpg", ".jpeg") else []
    if not cv2.imwrite(str(dst), np.ascontiguousarray(bgr), jpeg):
        raise ValueError(f"could not write {dst}, a copy of an image for SIFT: is the disk full?")


def _to_original_pixels(pycolmap, db, image_dir, names: list[str], camera_mode, reader, up: int) -> None:
    """The database ``db``, extracted from copies scaled by ``up``, in the pixels of the images
    in ``image_dir``: every keypoint's position and affine shape divided by ``up`` (pixel
    centres at +0.5, COLMAP's convention too, so the map is exact), and the cameras as
    importing the images themselves makes them (their size, and a focal prior from EXIF,
    which the copies lack)."""
    ref = Path(db).with_name("originals.db")
    ref.unlink(missing_ok=True)
    pycolmap.Database.open(str(ref)).close()
    pycolmap.import_images(ref, str(image_dir), camera_mode=camera_mode, image_names=list(names), options=reader)
    with pycolmap.Database.open(str(ref)) as original:
        camera_of = {im.name: original.read_camera(im.camera_id) for im in original.read_all_images()}
    ref.unlink()
    with pycolmap.Database.open(str(db)) as database:
        for im in database.read_all_images():
            cam = camera_of[im.name]
            cam.camera_id = im.camera_id
            database.update_camera(cam)
            kp = np.array(database.read_keypoints(im.image_id), np.float32)
            kp[:, :2] /= up
            kp[:, 2:6 if kp.shape[1] == 6 else 3] /= up     # affine shape (a11..a22), or scale
            database.update_keypoints(im.image_id, kp)


def _colmap_masks(mask_dir: Path, image_dir, names: list[str], out: Path) -> Path:
    """``out`` in COLMAP's layout of keypoint masks: ``<image name>.png``, ``mask_dir / <image
    stem>.png`` at the image's size (COLMAP compares keypoints in image pixels with the mask's
    own: a smaller mask would drop those beyond it); an all-zero mask for a view without one
    (COLMAP would skip that view with an error)."""
    shutil.rmtree(out, ignore_errors=True)
    for n in names:
        src, dst = Path(mask_dir) / (Path(n).stem + ".png"), out / (n + ".png")
        dst.parent.mkdir(parents=True, exist_ok=True)
        size = image_size(Path(image_dir) / n)
        mask = Image.open(src).convert("L") if src.is_file() else Image.new("L", size, 0)
        (mask if mask.size == size else mask.resize(size, Image.NEAREST)).save(dst)
    return out


def triangulate_known(image_dir, names: list[str], cameras: list, work_dir, *, tolerance_deg: float,
                      max_image_size: int = 1024, num_threads: int = -1, seed: int = 0, upsample: int = 1):
    """Tracks of ``names`` under known cameras: SIFT, exhaustive verified matching, then COLMAP's
    point triangulator with every pose held (no mapping, no bundle adjustment).

    cameras: per name (K (3, 3) original pixels, world-to-camera R (3, 3), t (3,), width,
    height), undistorted. tolerance_deg: how far the cameras may be off; the triangulator's
    angle and reprojection limits are widened to it, since its defaults (2 deg, 4 px) reject
    every match of a camera that is off by a degree (~25 px at 512 px). upsample: see
    :func:`extract_and_match`. The database goes in ``work_dir``, with the recipe it was made
    from (``database.json``: the images' bytes, the options, this module's code); a later call
    with the same recipe triangulates from it again, under its own cameras. Returns the
    pycolmap.Reconstruction (its points in the cameras' frame)."""
    import pycolmap

    work_dir = Path(work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    db, stamp = work_dir / "database.db", work_dir / "database.json"
    recipe = _features_recipe(pycolmap, image_dir, names, max_image_size, seed, upsample)
    level = pycolmap.logging.minloglevel
    pycolmap.logging.minloglevel = 2
    try:
        pycolmap.set_random_seed(seed)
        # features and verified matches do not depend on the cameras: a database made from the
        # same images with the same recipe (the keyframe's, again in the refinement over frames)
        # is kept; the recipe is written once the database is complete
        if not (db.is_file() and _recorded(stamp) == recipe):
            stamp.unlink(missing_ok=True)
            db.unlink(missing_ok=True)
            extract_and_match(pycolmap, db, image_dir, names, "PINHOLE", max_image_size, seed, num_threads, False,
                              pycolmap.CameraMode.PER_IMAGE, None, upsample=upsample)
            atomic_write_json(stamp, recipe)
        with pycolmap.Database.open(str(db)) as database:
            ids = {im.name: (im.image_id, im.camera_id) for im in database.read_all_images()}
        rec = pycolmap.Reconstruction()
        for name, (K, R, t, width, height) in zip(names, cameras):
            image_id, camera_id = ids[name]
            K = np.asarray(K, np.float64)
            rec.add_camera_with_trivial_rig(pycolmap.Camera(
                model="PINHOLE", width=int(width), height=int(height), camera_id=camera_id,
                params=[K[0, 0], K[1, 1], K[0, 2], K[1, 2]]))
            rec.add_image_with_trivial_frame(pycolmap.Image(name=name, camera_id=camera_id, image_id=image_id),
                                             pycolmap.Rigid3d(pycolmap.Rotation3d(np.asarray(R, np.float64)),
                                                              np.asarray(t, np.float64)))
        opts = pycolmap.IncrementalPipelineOptions()
        tri = opts.triangulation
        f = max(float(np.asarray(c[0])[0, 0]) for c in cameras)
        px = f * np.radians(tolerance_deg)
        tri.create_max_angle_error = tri.continue_max_angle_error = max(tri.create_max_angle_error, tolerance_deg)
        tri.re_max_angle_error = max(tri.re_max_angle_error, tolerance_deg)
        tri.merge_max_reproj_error = tri.complete_max_reproj_error = max(tri.merge_max_reproj_error, px)
        opts.mapper.filter_max_reproj_error = max(opts.mapper.filter_max_reproj_error, px)
        out = work_dir / "model"
        out.mkdir(exist_ok=True)
        return pycolmap.triangulate_points(rec, db, str(image_dir), out, options=opts)
    finally:
        pycolmap.logging.minloglevel = level


def _features_recipe(pycolmap, image_dir, names: list[str], max_image_size: int, seed: int, upsample: int) -> dict:
    """What :func:`triangulate_known`'s features and matches depend on: the images (names in
    order and bytes), the options, pycolmap's version and this module's code (which sets the
    SIFT and matching options)."""
    return {"images": [[n, fingerprint(Path(image_dir) / n)["sha256"]] for n in names],
            "max_image_size": int(max_image_size), "seed": int(seed), "upsample": int(upsample),
            "pycolmap": pycolmap.__version__, "code": fingerprint(__file__)["sha256"]}


def _recorded(stamp: Path) -> dict | None:
    """The recipe in ``stamp``, or None when it is missing or unreadable (then the database is
    made again)."""
    try:
        return json.loads(stamp.read_text())
    except (OSError, ValueError):
        return None


def landmark_descriptors() -> np.ndarray:
    """(68, 128) uint8: one fixed pseudo-random SIFT-like descriptor per landmark index. The
    same index gets the same descriptor in every view (distance 0), different indices are far
    apart, so brute-force matching with the ratio test pairs equal indices only."""
    d = np.abs(np.random.default_rng(68).normal(size=(68, 128)))
    d *= 512.0 / np.linalg.norm(d, axis=1, keepdims=True)  # COLMAP's uint8 descriptor scale
    return np.clip(np.round(d), 0, 255).astype(np.uint8)


def add_landmark_features(pycolmap, db_path, landmarks: dict) -> int:
    """Append the 68 landmarks of each view to its keypoints and descriptors in the database.
    Returns the number of views augmented."""
    L = landmark_descriptors()
    db = pycolmap.Database.open(str(db_path))
    try:
        data = {}
        for im in db.read_all_images():
            pts = landmarks.get(im.name)
            if pts is not None:
                data[im.image_id] = (np.asarray(pts, np.float32), db.read_keypoints(im.image_id),
                                     db.read_descriptors(im.image_id))
        if not data:
            return 0
        # descriptors cannot be updated in place, only cleared and rewritten
        keep = {im.image_id: db.read_descriptors(im.image_id) for im in db.read_all_images()
                if im.image_id not in data}
        db.clear_descriptors()
        for iid, desc in keep.items():
            db.write_descriptors(iid, desc)
        for iid, (pts, kp, desc) in data.items():
            extra = np.zeros((len(pts), kp.shape[1]), np.float32)
            extra[:, :2] = pts
            if kp.shape[1] == 6:       # affine shape a11, a12, a21, a22: an isotropic 4 px blob
                extra[:, 2] = extra[:, 5] = 4.0
            elif kp.shape[1] == 4:     # scale, orientation
                extra[:, 2] = 4.0
            db.update_keypoints(iid, np.vstack([kp, extra]).astype(np.float32))
            db.write_descriptors(iid, pycolmap.FeatureDescriptors(desc.type, np.vstack([desc.data, L])))
        return len(data)
    finally:
        db.close()


def _good(rec, n: int) -> bool:
    return _plausible_rec(rec) and rec.num_reg_images() >= 0.8 * n


def _plausible_rec(rec) -> bool:
    if rec.num_points3D() < MIN_POINTS3D:
        return False
    cam = next(iter(rec.cameras.values()))
    n_focal = 2 if cam.model.name in ("PINHOLE", "OPENCV", "FULL_OPENCV") else 1
    return check_plausible(np.asarray(cam.calibration_matrix()), list(np.asarray(cam.params)[n_focal + 2:]),
                           cam.width, cam.height, rec.compute_mean_reprojection_error()) is None


def _rank(rec) -> tuple:
    """Plausible models first, then more registered views."""
    return (_plausible_rec(rec), rec.num_reg_images())


def cameras_from_reconstruction(rec, width: int, height: int) -> dict:
    """cameras.json content from a pycolmap Reconstruction with one camera."""
    cams = list(rec.cameras.values())
    if len(cams) != 1:
        raise ValueError(f"expected one shared camera, the reconstruction has {len(cams)}")
    cam = cams[0]
    K = np.asarray(cam.calibration_matrix(), dtype=np.float64)
    n_focal = 2 if cam.model.name in ("PINHOLE", "OPENCV", "FULL_OPENCV") else 1
    distortion = [float(v) for v in np.asarray(cam.params)[n_focal + 2:]]
    poses = {}
    for im in rec.images.values():
        if not im.has_pose:
            continue
        T = im.cam_from_world() if callable(im.cam_from_world) else im.cam_from_world
        poses[im.name] = {"R": np.asarray(T.rotation.matrix()).tolist(), "t": np.asarray(T.translation).tolist()}
    if (cam.width, cam.height) != (width, height):
        raise ValueError(f"SfM camera is {cam.width}x{cam.height}, expected {width}x{height}")
    return {"K": K.tolist(), "width": int(width), "height": int(height), "model": cam.model.name,
            "distortion": distortion, "source": "sfm", "registered": sorted(poses),
            "sfm_poses": poses, "mean_reprojection_error": float(rec.compute_mean_reprojection_error()),
            "num_points3D": int(rec.num_points3D())}


def _upright_folder(image_dir, names: list[str], copies) -> Path:
    """The folder for COLMAP to read: ``image_dir`` itself, or upright copies of ``names`` in
    ``copies`` when some photo is stored sideways: COLMAP ignores the EXIF orientation that
    our landmarks and masks follow."""
    image_dir = Path(image_dir)
    if all(exif_orientation(image_dir / n) == 1 for n in names):
        return image_dir
    for n in names:
        write_upright_copy(image_dir / n, Path(copies) / n)
    return Path(copies)


def estimate_intrinsics(image_dir, names: list[str], *, work_dir=None, fov_deg: float = 30.0,
                        min_registered: int = 3, max_image_size: int = 1024, sequential: bool = False,
                        num_threads: int = -1, landmarks: dict | None = None,
                        use_landmarks: str = "fallback", sift_dsp: bool = True,
                        keypoint_masks: Path | None = None) -> tuple[dict, object, list[str]]:
    """Shared intrinsics of ``names`` (all the same size) in ``image_dir``.

    landmarks: optional {name: (68, 2)} used as extra correspondences; sift_dsp, keypoint_masks:
    the SIFT descriptor and where keypoints may lie (all see run_sfm). SIFT sees the images
    doubled when they are small (:func:`sift_upsampling`).
    Returns (cameras dict as in cameras.json, pycolmap.Reconstruction or None, warnings)."""
    if use_landmarks not in ("never", "always", "fallback"):
        raise ValueError(f"use_landmarks must be 'never', 'always' or 'fallback', got {use_landmarks!r}")
    if not names:
        raise ValueError("estimate_intrinsics needs at least one image")
    sizes = {image_size(Path(image_dir) / n) for n in names}
    if len(sizes) != 1:
        raise ValueError(f"all images must share one size for one camera model, got {sorted(sizes)}")
    (width, height), = sizes
    warns: list[str] = []
    rec, cams = None, None
    tmp = None
    if work_dir is None:
        tmp = tempfile.mkdtemp(prefix="sfm_")
        work_dir = tmp
    t0 = time.time()
    upsample = sift_upsampling([(width, height)], max_image_size)
    try:
        if len(names) >= min_registered:
            sfm_dir = _upright_folder(image_dir, names, Path(work_dir) / "images")
            rec = run_sfm(sfm_dir, names, work_dir, max_image_size=max_image_size, sequential=sequential,
                          num_threads=num_threads, landmarks=landmarks, use_landmarks=use_landmarks,
                          sift_dsp=sift_dsp, keypoint_masks=keypoint_masks, upsample=upsample)
        if len(names) < min_registered:
            warns.append(f"SfM not run: {len(names)} view(s), fewer than the {min_registered} it must register "
                         "(--min_registered)")
        elif rec is None:
            warns.append("SfM reconstructed nothing")
        elif rec.num_reg_images() < min_registered:
            warns.append(f"SfM registered only {rec.num_reg_images()} of {len(names)} views (< {min_registered})")
        else:
            cams = cameras_from_reconstruction(rec, width, height)
            why = check_plausible(np.array(cams["K"]), cams["distortion"], width, height,
                                  cams["mean_reprojection_error"])
            if why is None and cams["num_points3D"] < MIN_POINTS3D:
                why = f"only {cams['num_points3D']} triangulated points"
            if why:
                warns.append(f"SfM result rejected: {why}")
                cams = None
    except Exception as e:  # pycolmap raises RuntimeError on degenerate input
        warns.append(f"SfM failed: {e}")
        cams = None
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
    if cams is not None:
        cams["sfm_seconds"] = round(time.time() - t0, 2)
        cams["sift_upsample"] = upsample
        return cams, rec, warns
    focals = [f for f in (exif_focal_px(Path(image_dir) / n) for n in names) if f]
    if focals:
        K = K_from_fov(width, height, 60.0)
        K[0, 0] = K[1, 1] = float(np.median(focals))
        source = "exif"
    else:
        K = K_from_fov(width, height, fov_deg)
        source = "fov"
    warns.append(f"intrinsics fall back to {source}: f = {K[0, 0]:.1f} px; the fit should refine the focal length")
    for w in warns:
        warnings.warn(w)
    return ({"K": K.tolist(), "width": int(width), "height": int(height), "model": "SIMPLE_PINHOLE",
             "distortion": [], "source": source, "registered": [], "sfm_poses": {}}, None, warns)


if __name__ == "__main__":  # python -m process_data.intrinsics: the command is process_data/cli.py's
    from process_data.cli import intrinsics_main
    sys.exit(intrinsics_main())
