"""nerfstudio export: a self-contained folder that ``ns-train splatfacto --data DIR`` reads.

Layout (what nerfstudio's ``Nerfstudio._generate_dataparser_outputs`` in
nerfstudio/data/dataparsers/nerfstudio_dataparser.py reads)::

    DIR/transforms.json   camera_model OPENCV, fl_x fl_y cx cy w h (+ k1 k2 p1 p2 = 0) per frame,
                          transform_matrix (OpenGL camera-to-world), file_path, mask_path,
                          ply_file_path, applied_transform (3x4 identity: the poses and the
                          PLY are both in our head frame)
    DIR/images/<name>     the photos as displayed (copied; upright when stored sideways)
    DIR/masks/<stem>.png  head masks at the image's size (8-bit, 0 = ignore, as nerfstudio reads)
    DIR/points3D.ply      initial points: SfM track points when the fit had them, else samples
                          of the mesh surface, coloured

Every path is relative to DIR, so the folder can be moved. nerfstudio puts pixel centres at
+0.5, as we do: no shift.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from fitting.export.core import write_png, write_points_ply, write_transforms
from fitting.export.source import FitResult, copy_image, sample_surface

__all__ = ["write_nerfstudio"]


def initial_points(fit: FitResult, n_samples: int = 20000) -> tuple[np.ndarray, np.ndarray, str]:
    """(points, colours, source): the fit's SfM track points, else mesh-surface samples."""
    if fit.points_are_tracks and fit.points is not None and len(fit.points):
        return fit.points, fit.colors, "sfm_tracks"
    p, c = sample_surface(fit, n_samples)
    return p, c, "mesh_samples"


def write_nerfstudio(fit: FitResult, out_dir) -> Path:
    out = Path(out_dir)
    file_paths, mask_paths = [], []
    for i, name in enumerate(fit.names):
        copy_image(fit.image_paths[i], out / "images" / name)
        file_paths.append(f"images/{name}")
        m = fit.head_mask(i)
        if m is not None:
            write_png(out / "masks" / f"{fit.stems[i]}.png", m)
            mask_paths.append(f"masks/{fit.stems[i]}.png")
    pts, col, src = initial_points(fit)
    write_points_ply(out / "points3D.ply", pts, col)
    extra = {"ply_file_path": "points3D.ply", "points_source": src,
             "applied_transform": np.eye(4)[:3].tolist(),
             "frame": "FLAME head frame, metres (OpenGL camera axes: x right, y up, z back)"}
    frame_extra = [{"mask_path": m} for m in mask_paths] if len(mask_paths) == len(file_paths) else None
    # nerfstudio asserts that every frame or none has a mask_path
    write_transforms(out / "transforms.json", fit.K, fit.R, fit.t, fit.sizes, file_paths, extra=extra,
                     frame_extra=frame_extra)
    return out
