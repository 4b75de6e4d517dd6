"""COLMAP export, for 3D Gaussian splatting (``python train.py -s DIR``) and other COLMAP
readers: ``sparse/0/{cameras,images,points3D}.{bin,txt}`` written by pycolmap's own writer,
next to ``images/``.

What 3DGS's ``readColmapSceneInfo`` (scene/dataset_readers.py) and its readers
(scene/colmap_loader.py: ``read_extrinsics_binary``, ``read_intrinsics_binary``,
``read_points3D_binary``) need: PINHOLE cameras (fx, fy, cx, cy), images named as the files in
``images/``, world-to-camera quaternion + translation (our R, t as they are: COLMAP is OpenCV),
points with colours. ``sparse/0/points3D.ply`` is written too, in the layout 3DGS's
``storePly`` / ``fetchPly`` use (x y z nx ny nz red green blue). The points: SfM's track points
when the fit had them, else samples of the textured mesh surface. COLMAP's pixel convention is
ours (centres at +0.5).
"""
from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import numpy as np

from fitting.atomic import atomic_write_bytes
from fitting.export.nerfstudio import initial_points
from fitting.export.source import FitResult, copy_image

__all__ = ["write_colmap", "write_ply_with_normals"]

_PLY = np.dtype([("x", "<f4"), ("y", "<f4"), ("z", "<f4"), ("nx", "<f4"), ("ny", "<f4"), ("nz", "<f4"),
                 ("red", "u1"), ("green", "u1"), ("blue", "u1")])


def write_ply_with_normals(path, points, colors) -> Path:
    """Binary PLY with zero normals: 3DGS's point-cloud layout."""
    v = np.zeros(len(points), _PLY)
    v["x"], v["y"], v["z"] = np.asarray(points, np.float32).T
    v["red"], v["green"], v["blue"] = np.asarray(colors, np.uint8).T
    head = ("ply\nformat binary_little_endian 1.0\n" f"element vertex {len(v)}\n"
            + "".join(f"property {'float' if v.dtype[n].kind == 'f' else 'uchar'} {n}\n" for n in v.dtype.names)
            + "end_header\n")
    return atomic_write_bytes(Path(path), head.encode() + v.tobytes())


def write_colmap(fit: FitResult, out_dir) -> Path:
    import pycolmap
    out = Path(out_dir)
    for i, name in enumerate(fit.names):
        copy_image(fit.image_paths[i], out / "images" / name)
    rec = pycolmap.Reconstruction()
    cams = {}
    for i in range(len(fit.names)):
        K, (W, H) = fit.K[i], fit.sizes[i]
        key = (round(K[0, 0], 9), round(K[1, 1], 9), round(K[0, 2], 9), round(K[1, 2], 9), int(W), int(H))
        if key not in cams:
            cams[key] = len(cams) + 1
            rec.add_camera_with_trivial_rig(pycolmap.Camera(model="PINHOLE", width=int(W), height=int(H),
                                                            params=list(key[:4]), camera_id=cams[key]))
        img = pycolmap.Image(name=fit.names[i], camera_id=cams[key], image_id=i + 1)
        rec.add_image_with_trivial_frame(img, pycolmap.Rigid3d(pycolmap.Rotation3d(fit.R[i]), fit.t[i]))
    pts, col, _ = initial_points(fit)
    for p, c in zip(np.asarray(pts, np.float64), np.asarray(col, np.uint8)):
        rec.add_point3D(p, pycolmap.Track(), c)
    model = out / "sparse" / "0"
    model.mkdir(parents=True, exist_ok=True)
    # pycolmap writes its files in place; each goes through a temporary folder and a rename
    tmp = Path(tempfile.mkdtemp(prefix=".pycolmap.", dir=model))
    try:
        rec.write_binary(str(tmp))
        rec.write_text(str(tmp))
        for f in sorted(tmp.iterdir()):
            f.replace(model / f.name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    write_ply_with_normals(model / "points3D.ply", pts, col)
    return out
