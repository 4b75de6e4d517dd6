"""Views that SfM left out, registered from their matches in SfM's database (issue 14).

Incremental mapping can leave a view out (too few matches to its neighbours when it tried,
an unlucky order) although the database holds verified SIFT matches between it and
registered views. Without SfM the view would be posed by its landmarks alone, an order of
magnitude less precisely than the others. :func:`register_left_out` gives it a place among
SfM's views instead:

1. its verified inlier matches to registered views whose keypoints belong to an SfM point
   give 2D-3D correspondences (a keypoint matched to several points takes the most frequent;
   a point keeps one keypoint);
2. pycolmap's LO-RANSAC absolute pose with SfM's camera, then non-linear refinement
   (``estimate_and_refine_absolute_pose``) gives its pose in SfM's frame;
3. the inliers become observations of those points in the model (a new image with a trivial
   frame), so the view joins the bundle adjustment as a tracked view, and its SfM-frame pose
   joins the others at initialisation.

Matches of the view to keypoints without a 3D point are not triangulated here; a view with
fewer than ``min_inliers`` inliers stays out (landmarks and photometric terms only).
"""
from __future__ import annotations

from collections import Counter, defaultdict
from pathlib import Path

import numpy as np

__all__ = ["register_left_out"]

_SKIPPED_CONFIGS = ("UNDEFINED", "DEGENERATE", "WATERMARK")


def _correspondences(pycolmap, rec, image_id: int, pair_ids, geometries) -> tuple[np.ndarray, np.ndarray]:
    """(keypoint indices (C,), point3D ids (C,)) of ``image_id`` from its verified matches."""
    skipped = {getattr(pycolmap.TwoViewGeometryConfiguration, c) for c in _SKIPPED_CONFIGS}
    votes = defaultdict(Counter)
    for pair_id, g in zip(pair_ids, geometries):  # one entry per image pair
        id1, id2 = pycolmap.pair_id_to_image_pair(pair_id)
        if image_id not in (id1, id2) or g.config in skipped:
            continue
        other = id2 if id1 == image_id else id1
        if other not in rec.images or not rec.images[other].has_pose:
            continue
        m = np.asarray(g.inlier_matches, np.int64).reshape(-1, 2)
        mine, theirs = (m[:, 0], m[:, 1]) if id1 == image_id else (m[:, 1], m[:, 0])
        p2d = rec.images[other].points2D
        for a, b in zip(mine.tolist(), theirs.tolist()):  # a few hundred matches per pair
            if p2d[b].has_point3D():
                votes[a][p2d[b].point3D_id] += 1
    best = {}
    for k, c in sorted(votes.items()):
        pid = c.most_common(1)[0][0]
        best.setdefault(pid, k)  # one keypoint per point
    pids = np.array(list(best), np.int64)
    return np.array([best[p] for p in pids.tolist()], np.int64), pids


def register_left_out(model_dir, database, names: list, *, min_inliers: int = 15, max_error_px: float = 4.0):
    """Register the views in ``names`` that the database holds and the model lacks.

    model_dir: SfM's COLMAP model; database: its database.db; max_error_px: RANSAC inlier
    threshold in original pixels. Returns (the Reconstruction with the registered views and
    their observations added, or None when no view was added; {name: {"R", "t"} (SfM frame,
    world-to-camera, lists) or None, "correspondences", "inliers", "why"} for every view
    tried)."""
    import pycolmap

    if not Path(database).is_file():
        return None, {}
    rec = pycolmap.Reconstruction(str(model_dir))
    in_model = {im.name for im in rec.images.values()}
    cams = list(rec.cameras.values())
    db = pycolmap.Database.open(str(database))
    try:
        todo = [im for im in db.read_all_images() if im.name in set(names) and im.name not in in_model]
        if not todo or len(cams) != 1 or not rec.num_reg_images():
            return None, {}
        keypoints = {im.image_id: np.asarray(db.read_keypoints(im.image_id), np.float64)[:, :2] for im in todo}
        pair_ids, geometries = db.read_two_view_geometries()
    finally:
        db.close()
    camera = cams[0]
    opts = pycolmap.AbsolutePoseEstimationOptions()
    opts.ransac.max_error = float(max_error_px)
    opts.ransac.random_seed = 0          # the same pose on every run
    added, info = False, {}
    for im in todo:  # the few views SfM left out
        kp, pids = _correspondences(pycolmap, rec, im.image_id, pair_ids, geometries)
        row = {"R": None, "t": None, "correspondences": int(len(kp)), "inliers": 0, "why": None}
        info[im.name] = row
        if len(kp) < min_inliers:
            row["why"] = f"{len(kp)} matches to SfM points (< {min_inliers})"
            continue
        xyz = np.stack([rec.points3D[p].xyz for p in pids.tolist()])
        res = pycolmap.estimate_and_refine_absolute_pose(keypoints[im.image_id][kp], xyz, camera, opts)
        if res is None:
            row["why"] = "no pose from RANSAC"
            continue
        inl = np.asarray(res["inlier_mask"], bool)
        row["inliers"] = int(inl.sum())
        if inl.sum() < min_inliers:
            row["why"] = f"{int(inl.sum())} RANSAC inliers (< {min_inliers})"
            continue
        pose = res["cam_from_world"]
        image = pycolmap.Image(name=im.name, keypoints=keypoints[im.image_id], camera_id=camera.camera_id,
                               image_id=im.image_id)
        rec.add_image_with_trivial_frame(image, pose)
        for k, p in zip(kp[inl].tolist(), pids[inl].tolist()):  # the inliers, a few hundred
            rec.add_observation(p, pycolmap.TrackElement(im.image_id, k))
        row["R"] = np.asarray(pose.rotation.matrix()).tolist()
        row["t"] = np.asarray(pose.translation).tolist()
        added = True
    return (rec if added else None), info
