"""Epipolar consistency of a set of cameras with SfM's verified SIFT matches.

NeRF / Gaussian-splatting users need extrinsics that agree with the images to a fraction of a
pixel. The measure: every inlier match of every verified image pair in the COLMAP database
that preprocessing wrote (``<prep>/sfm/database.db``), scored by its Sampson distance under
the cameras being evaluated.

**Sampson distance** (Hartley & Zisserman, 2nd ed., eq. 11.9), in pixels: for a match
``x1 <-> x2`` (homogeneous pixel coordinates in views 1 and 2) and the fundamental matrix ``F``
with ``x2^T F x1 = 0`` for a perfect match,

    d = |x2^T F x1| / sqrt((F x1)_1^2 + (F x1)_2^2 + (F^T x2)_1^2 + (F^T x2)_2^2).

It is the first-order approximation of the *geometric* error: the smallest joint displacement
``sqrt(|dx1|^2 + |dx2|^2)`` of both points that makes the match consistent with the cameras
(equivalently, of the reprojection error after optimal triangulation). It is *not* the distance
of ``x2`` to its epipolar line: moving only ``x2`` by ``e`` pixels across its epipolar line gives
``d = e |(F x1)_12| / sqrt(|(F x1)_12|^2 + |(F^T x2)_12|^2)``, about ``e / sqrt(2)`` for two
similar views.

Cameras are ``{name: (K (3, 3), R (3, 3), t (3,))}``: ours (docs/CONVENTIONS.md), OpenCV
world-to-camera, K in original-image pixels. COLMAP's keypoints put the centre of the top-left
pixel at (0.5, 0.5) (COLMAP's "Database Format" page), as we do, so no shift is applied.
Sampson distances are invariant to a similarity transform of the whole camera set (F only
changes by a scale factor, which the ratio cancels), so cameras in SfM's frame and scale and
cameras in the FLAME head frame compare directly, without any alignment.

CLI: ``python -m fitting.evaluate_cameras OUTPUT_DIR [--cameras FILE_OR_MODEL] [--database DB] [--json]``.
"""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = ["Matches", "read_matches", "fundamental_matrices", "sampson_distance", "match_distances",
           "epipolar_stats", "read_report_cameras", "read_transforms_cameras", "read_colmap_cameras",
           "read_cameras", "sfm_model_dir", "sfm_cameras", "report_epipolar", "main"]

# Pairs whose inliers are not evidence of the scene's epipolar geometry: no geometry at all, or
# matches explained by a 2-D translation near the border (a watermark, an overlay).
_SKIPPED_CONFIGS = ("UNDEFINED", "DEGENERATE", "WATERMARK")


@dataclass
class Matches:
    """Verified inlier matches of all image pairs, stacked.

    names: I image names (index = position); view1, view2: (M,) int64 indices into ``names``;
    x1, x2: (M, 2) float64 keypoint positions in original pixels (centres at +0.5).
    """

    names: list
    view1: np.ndarray
    view2: np.ndarray
    x1: np.ndarray
    x2: np.ndarray

    def __len__(self) -> int:
        return len(self.view1)

    def subset(self, keep: np.ndarray) -> "Matches":
        """The matches where ``keep`` (M,) bool is set."""
        return Matches(self.names, self.view1[keep], self.view2[keep], self.x1[keep], self.x2[keep])


# -- the database --------------------------------------------------------------------------------
def read_matches(database) -> Matches:
    """Inlier matches of every verified pair in a COLMAP database (pairs in ``_SKIPPED_CONFIGS``
    are left out)."""
    import pycolmap

    if not Path(database).is_file():
        raise ValueError(f"COLMAP database {database} not found: run preprocessing (process_data) first")
    skipped = {getattr(pycolmap.TwoViewGeometryConfiguration, c) for c in _SKIPPED_CONFIGS}
    db = pycolmap.Database.open(str(database))
    try:
        images = db.read_all_images()
        names = [im.name for im in images]
        index = {im.image_id: k for k, im in enumerate(images)}
        keypoints = {im.image_id: np.asarray(db.read_keypoints(im.image_id), np.float64)[:, :2] for im in images}
        pair_ids, geometries = db.read_two_view_geometries()
    finally:
        db.close()
    v1, v2, x1, x2 = [], [], [], []
    for pair_id, g in zip(pair_ids, geometries):  # one entry per image pair, not per match
        m = np.asarray(g.inlier_matches, np.int64).reshape(-1, 2)
        if g.config in skipped or not len(m):
            continue
        # inlier_matches columns index the keypoints of the pair's images in pair-id order
        id1, id2 = pycolmap.pair_id_to_image_pair(pair_id)
        v1.append(np.full(len(m), index[id1]))
        v2.append(np.full(len(m), index[id2]))
        x1.append(keypoints[id1][m[:, 0]])
        x2.append(keypoints[id2][m[:, 1]])
    if not v1:
        return Matches(names, np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros((0, 2)), np.zeros((0, 2)))
    return Matches(names, np.concatenate(v1), np.concatenate(v2), np.concatenate(x1), np.concatenate(x2))


# -- the maths -----------------------------------------------------------------------------------
def _skew(v: np.ndarray) -> np.ndarray:
    """(..., 3) -> (..., 3, 3) cross-product matrices, [v]_x w = v x w."""
    z = np.zeros(v.shape[:-1])
    x, y, w = np.moveaxis(v, -1, 0)
    return np.stack([np.stack([z, -w, y], -1), np.stack([w, z, -x], -1), np.stack([-y, x, z], -1)], -2)


def fundamental_matrices(K1, R1, t1, K2, R2, t2) -> np.ndarray:
    """F (P, 3, 3) with x2^T F x1 = 0 for pixels x1 in camera 1 and x2 in camera 2.

    K*, R*: (P, 3, 3); t*: (P, 3); world-to-camera. F = K2^-T [t21]_x R21 K1^-1 with the
    relative pose R21 = R2 R1^T, t21 = t2 - R21 t1 (camera 1 -> camera 2)."""
    K1, R1, t1, K2, R2, t2 = (np.asarray(a, np.float64) for a in (K1, R1, t1, K2, R2, t2))
    R21 = R2 @ np.swapaxes(R1, -1, -2)
    t21 = t2 - np.einsum("pij,pj->pi", R21, t1)
    E = _skew(t21) @ R21
    return np.swapaxes(np.linalg.inv(K2), -1, -2) @ E @ np.linalg.inv(K1)


def sampson_distance(F: np.ndarray, x1: np.ndarray, x2: np.ndarray) -> np.ndarray:
    """Sampson distance in pixels (module docstring) of matches x1 <-> x2.

    F: (M, 3, 3) or (3, 3); x1, x2: (M, 2) pixels. Returns (M,) float64."""
    F = np.asarray(F, np.float64)
    h1 = np.concatenate([np.asarray(x1, np.float64), np.ones((len(x1), 1))], 1)
    h2 = np.concatenate([np.asarray(x2, np.float64), np.ones((len(x2), 1))], 1)
    Fx1 = np.einsum("...ij,...j->...i", F, h1)     # epipolar line of x1 in view 2
    Ftx2 = np.einsum("...ji,...j->...i", F, h2)    # epipolar line of x2 in view 1
    num = np.abs((h2 * Fx1).sum(-1))
    den = np.sqrt(Fx1[:, 0] ** 2 + Fx1[:, 1] ** 2 + Ftx2[:, 0] ** 2 + Ftx2[:, 1] ** 2)
    return num / den


def _stack_cameras(names: list, cameras: dict) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """K (I, 3, 3), R (I, 3, 3), t (I, 3) of ``names``; names without a camera get a placeholder
    (identity) that the caller never indexes."""
    placeholder = (np.eye(3), np.eye(3), np.zeros(3))
    cams = [cameras.get(n, placeholder) for n in names]
    return tuple(np.stack([np.asarray(c[k], np.float64) for c in cams]) for k in range(3))


def match_distances(matches: Matches, cameras: dict) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sampson distances of the matches whose two views both have a camera.

    cameras: {name: (K (3, 3), R (3, 3), t (3,))}. Returns (d (M',), view1 (M',), view2 (M',)),
    views as indices into ``matches.names``."""
    has = np.array([n in cameras for n in matches.names], bool)
    keep = has[matches.view1] & has[matches.view2]
    v1, v2 = matches.view1[keep], matches.view2[keep]
    if not len(v1):
        return np.zeros(0), v1, v2
    # one F per image pair, then gathered per match; views without a camera are never indexed
    pairs, inverse = np.unique(np.stack([v1, v2], 1), axis=0, return_inverse=True)
    K, R, t = _stack_cameras(matches.names, cameras)
    a, b = pairs[:, 0], pairs[:, 1]
    F = fundamental_matrices(K[a], R[a], t[a], K[b], R[b], t[b])
    return sampson_distance(F[inverse.reshape(-1)], matches.x1[keep], matches.x2[keep]), v1, v2


def _summary(d: np.ndarray) -> dict:
    if not len(d):
        return {"epipolar_px_median": None, "epipolar_px_p90": None, "num_matches": 0}
    return {"epipolar_px_median": float(np.median(d)), "epipolar_px_p90": float(np.percentile(d, 90)),
            "num_matches": int(len(d))}


def epipolar_stats(matches: Matches, cameras: dict) -> dict:
    """Median and 90th percentile Sampson distance, per view and over the scene.

    Per view: over the matches of every pair that involves the view and another view of
    ``cameras``. Returns {"scene": S, "views": {name: S}} for every name in ``cameras``, where
    S = {"epipolar_px_median", "epipolar_px_p90" (None without matches), "num_matches"}."""
    d, v1, v2 = match_distances(matches, cameras)
    pos = {n: i for i, n in enumerate(matches.names)}
    views = {}
    for n in cameras:  # a handful of views; each selection is vectorised
        i = pos.get(n, -1)
        views[n] = _summary(d[(v1 == i) | (v2 == i)])
    return {"scene": _summary(d), "views": views}


# -- camera files --------------------------------------------------------------------------------
def read_report_cameras(path) -> dict:
    """The fit's report.json -> {name: (K, R, t)} of its used views (K in original pixels)."""
    views = json.loads(Path(path).read_text())["views"]
    return {v["name"]: (np.asarray(v["K"], np.float64), np.asarray(v["R"], np.float64), np.asarray(v["t"], np.float64))
            for v in views if v.get("K") is not None}


def read_transforms_cameras(path) -> dict:
    """transforms.json (nerfstudio / instant-ngp, OpenGL camera-to-world; as written by
    :func:`fitting.export.write_transforms`) -> {image file name: (K, R, t)} in our convention."""
    from fitting.export import read_transforms
    K, R, t, _, paths, _ = read_transforms(path)
    return {Path(p).name: (K[i], R[i], t[i]) for i, p in enumerate(paths)}


def read_colmap_cameras(model_dir) -> dict:
    """A COLMAP model folder (text or binary, read by pycolmap) -> {name: (K, R, t)} of its
    posed images. Only pinhole models (or zero distortion) are accepted: Sampson distances of
    distorted keypoints under a pinhole F would be wrong."""
    import pycolmap
    rec = pycolmap.Reconstruction(str(model_dir))
    out = {}
    for im in rec.images.values():
        if not im.has_pose:
            continue
        cam = rec.cameras[im.camera_id]
        n_focal = 2 if cam.model.name in ("PINHOLE", "OPENCV", "FULL_OPENCV", "OPENCV_FISHEYE") else 1
        if np.any(np.asarray(cam.params)[n_focal + 2:] != 0):
            raise ValueError(f"{model_dir}: camera {cam.camera_id} ({cam.model.name}) has distortion; "
                             "undistort the model (colmap image_undistorter) before evaluating it")
        T = im.cam_from_world() if callable(im.cam_from_world) else im.cam_from_world  # pycolmap >= 3.12: a method
        out[im.name] = (np.asarray(cam.calibration_matrix(), np.float64), np.asarray(T.rotation.matrix(), np.float64),
                        np.asarray(T.translation, np.float64))
    return out


def read_cameras(path) -> dict:
    """Cameras from a COLMAP model folder, a transforms.json or a report.json (by content)."""
    path = Path(path)
    if path.is_dir():
        return read_colmap_cameras(path)
    d = json.loads(path.read_text())
    if "frames" in d:
        return read_transforms_cameras(path)
    if "views" in d:
        return read_report_cameras(path)
    raise ValueError(f"{path}: neither a COLMAP model folder, a transforms.json (frames) nor a report.json (views)")


def sfm_model_dir(database) -> Path:
    """SfM's model, written by preprocessing next to its database (``<prep>/sfm/model``)."""
    return Path(database).parent / "model"


def sfm_cameras(database, names) -> dict:
    """SfM's own cameras {name: (K, R, t)} of those ``names`` it registered, in SfM's frame and
    scale (the Sampson distance is invariant to a similarity of the whole set, so they compare
    with cameras in any other frame without alignment); {} without a model."""
    model = sfm_model_dir(database)
    cams = read_colmap_cameras(model) if model.is_dir() else {}
    return {n: cams[n] for n in names if n in cams}


# -- the fit's report ----------------------------------------------------------------------------
def report_epipolar(database, cameras: dict, focal_initial: float | None = None,
                    on_head=None) -> tuple[dict, dict]:
    """Epipolar figures of the fit's cameras for report.json, beside SfM's own cameras.

    database: path of SfM's database (may not exist); cameras: {name: (K, R, t)} of the used
    views, original pixels; on_head(name, xy (M, 2) original pixels) -> (M,) bool, optional:
    which keypoints lie on the head. Returns (per-view fields {name: {"epipolar_px_median",
    "epipolar_px_p90"}}, scene block {"database", "fit", "sfm", "sfm_views", "head": {"fit",
    "sfm"} (the matches with both ends on the head; None without ``on_head``), "focal_px":
    {"sfm", "initial", "fit"}}); figures are None without a database or matches. SfM's cameras
    are scored on the same views (those of ``cameras`` that SfM registered)."""
    first = next(iter(cameras.values()), None)
    focal = {"sfm": None, "initial": focal_initial, "fit": None if first is None else float(first[0][0, 0])}
    database = Path(database)
    if not database.is_file():
        none = {"epipolar_px_median": None, "epipolar_px_p90": None}
        return ({n: dict(none) for n in cameras},
                {"database": None, "fit": None, "sfm": None, "sfm_views": None, "head": None, "focal_px": focal})
    matches = read_matches(database)
    fit = epipolar_stats(matches, cameras)
    try:
        sfm_cams = sfm_cameras(database, cameras)
    except ValueError:  # a distorted SfM camera has no pinhole figures; the fit's still stand
        sfm_cams = {}
    sfm = epipolar_stats(matches, sfm_cams)
    focal["sfm"] = next((float(c[0][0, 0]) for c in sfm_cams.values()), None)
    views = {n: {k: s[k] for k in ("epipolar_px_median", "epipolar_px_p90")} for n, s in fit["views"].items()}
    head = None
    if on_head is not None:
        head_matches = matches.subset(_both_on_head(matches, cameras, on_head))
        head = {"fit": epipolar_stats(head_matches, cameras)["scene"],
                "sfm": epipolar_stats(head_matches, sfm_cams)["scene"]}
    return views, {"database": str(database), "fit": fit["scene"], "sfm": sfm["scene"], "sfm_views": sfm["views"],
                   "head": head, "focal_px": focal}


def _both_on_head(matches: Matches, cameras: dict, on_head) -> np.ndarray:
    """(M,) bool: matches whose two keypoints are both on the head (views without a camera: no)."""
    ok = [np.zeros(len(matches), bool), np.zeros(len(matches), bool)]
    for k, n in enumerate(matches.names):  # a few views
        if n not in cameras:
            continue
        for end, (v, x) in enumerate(((matches.view1, matches.x1), (matches.view2, matches.x2))):
            sel = v == k
            if sel.any():
                ok[end][sel] = np.asarray(on_head(n, x[sel]), bool)
    return ok[0] & ok[1]


# -- CLI -----------------------------------------------------------------------------------------
def _database_of(output_dir: Path) -> Path:
    """SfM's database of a fit's output folder: the preprocessing folder the report names, else
    the fit's own fallback preprocessing folder (``<output>/preprocess``)."""
    rep = output_dir / "report.json"
    prep = json.loads(rep.read_text()).get("preprocess_dir") if rep.is_file() else None
    return Path(prep or output_dir / "preprocess") / "sfm" / "database.db"


def _fmt(x) -> str:
    return "     -" if x is None else f"{x:6.3f}"


def _table(names: list, given: dict, sfm: dict) -> str:
    rows = [f"{'view':<24} {'matches':>7} {'median':>6} {'p90':>6} | {'SfM med':>7} {'SfM p90':>7}"]
    for n, a, b in [(n, given["views"][n], sfm["views"].get(n, {})) for n in names] + [
            ("scene", given["scene"], sfm["scene"])]:
        rows.append(f"{n:<24} {a['num_matches']:>7d} {_fmt(a['epipolar_px_median'])} {_fmt(a['epipolar_px_p90'])} | "
                    f" {_fmt(b.get('epipolar_px_median'))}  {_fmt(b.get('epipolar_px_p90'))}")
    return "\n".join(rows)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m fitting.evaluate_cameras",
                                description="Sampson distance (px) of SfM's verified SIFT matches under a fit's "
                                            "cameras, beside SfM's own cameras.")
    p.add_argument("output_dir", help="a fit's output folder (holds report.json)")
    p.add_argument("--cameras", default=None,
                   help="report.json, transforms.json or a COLMAP model folder (default: OUTPUT_DIR/report.json)")
    p.add_argument("--database", default=None, help="SfM's database.db (default: <preprocess_dir>/sfm/database.db)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    a = p.parse_args(argv)
    out = Path(a.output_dir)
    database = Path(a.database) if a.database else _database_of(out)
    cameras = read_cameras(a.cameras or out / "report.json")
    matches = read_matches(database)
    given = epipolar_stats(matches, cameras)
    sfm = epipolar_stats(matches, sfm_cameras(database, cameras))
    if a.json:
        print(json.dumps({"database": str(database), "cameras": given, "sfm": sfm}, indent=1))
    else:
        print(f"Sampson distance (px) of {len(matches)} verified matches in {database}")
        print(_table(list(cameras), given, sfm))
    return 0


if __name__ == "__main__":
    sys.exit(main())
