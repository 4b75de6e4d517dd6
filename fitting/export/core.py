"""Every output format of a fit, each with a reader (used by the round-trip tests).

Cameras are ours (OpenCV world-to-camera, K in original-image pixels, pixel centres at +0.5)
until they are written; each writer converts at the edge:

* ``params.npz``           - every fitted variable (:func:`write_params` / :func:`read_params`).
* ``mesh.obj`` + ``.mtl`` + ``texture.png`` - world frame (:func:`write_mesh`; read with
  :func:`fitting.meshio.load_obj`).
* ``transforms.json``      - nerfstudio / instant-ngp: OpenGL camera-to-world per frame,
  ``fl_x fl_y cx cy w h`` (top level and per frame), ``file_path``, ``mesh_path``
  (:func:`write_transforms` / :func:`read_transforms`). Both readers put pixel centres at
  +0.5 as we do, so no half-pixel shift is applied.
* COLMAP text model        - ``cameras.txt`` (PINHOLE), ``images.txt``, ``points3D.txt``: the SfM
  track points when the fit used them, else the mesh vertices (:func:`write_colmap_text` /
  :func:`read_colmap_text`); COLMAP's continuous pixel convention is ours.
* ``points3D.ply``         - the same points with colours, binary little-endian PLY
  (:func:`write_points_ply` / :func:`read_points_ply`): initial points for Gaussian splatting.
* ``report.json``          - :func:`write_json`.
* ``images/``              - upright copies of the exported views, only when a photo is stored
  sideways (EXIF orientation); transforms.json then points there (:func:`displayed_image_paths`).

Every file is written atomically (temp file in the same folder + ``os.replace``).
"""
from __future__ import annotations

import io
import json
import os
from pathlib import Path

import cv2
import numpy as np
import torch

from fitting.atomic import atomic_write_bytes
from fitting.images import exif_orientation, write_upright_copy
from fitting.meshio import save_obj
from fitting.rotations import matrix_to_quaternion

__all__ = ["write_json", "write_png", "displayed_image_paths", "write_params", "read_params", "write_mesh",
           "write_transforms", "read_transforms", "write_colmap_text", "read_colmap_text", "quat_to_matrix",
           "vertex_colors_from_texture", "write_points_ply", "read_points_ply"]


def _np(x) -> np.ndarray:
    return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


def write_json(path, obj) -> Path:
    """Atomic JSON write (indent 1; numpy scalars and arrays converted)."""
    def conv(o):
        if isinstance(o, (np.generic,)):
            return o.item()
        if isinstance(o, (np.ndarray, torch.Tensor)):
            return _np(o).tolist()
        if isinstance(o, Path):
            return str(o)
        raise TypeError(f"not JSON serialisable: {type(o)}")
    atomic_write_bytes(path, (json.dumps(obj, indent=1, default=conv) + "\n").encode())
    return Path(path)


def write_png(path, image) -> Path:
    """image: (H, W, 3) RGB or (H, W) uint8 / float in [0, 1] -> PNG, atomically."""
    a = _np(image)
    if a.dtype != np.uint8:
        a = (np.clip(a, 0, 1) * 255 + 0.5).astype(np.uint8)
    if a.ndim == 3:
        a = cv2.cvtColor(a, cv2.COLOR_RGB2BGR)
    ok, buf = cv2.imencode(".png", a)
    if not ok:
        raise RuntimeError(f"PNG encoding failed for {path}")
    atomic_write_bytes(path, buf.tobytes())
    return Path(path)


def displayed_image_paths(out_dir, image_paths) -> list[str]:
    """Paths, relative to ``out_dir``, of the images as displayed, for transforms.json.

    The fit follows the EXIF orientation; nerfstudio and COLMAP read the stored pixels. So when
    any image is stored sideways, every one is written to ``<out_dir>/images/<name>`` (upright;
    the others copied byte for byte), one folder for transforms.json and the COLMAP model;
    otherwise the originals are referred to."""
    out_dir = Path(out_dir)
    paths = [Path(p) for p in image_paths]
    if any(exif_orientation(p) != 1 for p in paths):
        copies = [out_dir / "images" / p.name for p in paths]
        for src, dst in zip(paths, copies):  # file copies, one per view
            if exif_orientation(src) == 1:
                atomic_write_bytes(dst, src.read_bytes())
            else:
                write_upright_copy(src, dst)
        paths = copies
    return [os.path.relpath(p, out_dir) for p in paths]


# -- params.npz ----------------------------------------------------------------------------------
def write_params(path, **arrays) -> Path:
    """Write named arrays (tensors, arrays, lists of str) to an .npz atomically.

    The fit writes: shape (G, n_shape), expression (G, n_exp), pose (G, 15), tex (G, n_tex) or
    tex_map (G, 3, Ht, Wt), sh (N, 9, 3), K (N, 3, 3) original pixels, R (N, 3, 3), t (N, 3),
    names (N,), image_size (N, 2) as (W, H), view_subject (N,), focal_sfm, focal_fit.
    """
    buf = io.BytesIO()
    np.savez(buf, **{k: (np.asarray(v) if isinstance(v, (list, tuple)) else _np(v)) for k, v in arrays.items()})
    atomic_write_bytes(path, buf.getvalue())
    return Path(path)


def read_params(path) -> dict:
    """params.npz -> {name: ndarray}."""
    with np.load(path, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


# -- mesh ----------------------------------------------------------------------------------------
def write_mesh(out_dir, verts, faces, verts_uvs=None, faces_uvs=None, texture=None, name: str = "mesh") -> Path:
    """mesh.obj (+ mesh.mtl + texture.png when ``texture (3, Ht, Wt)`` in [0, 1] is given), world frame."""
    out_dir = Path(out_dir)
    tex_name = None
    if texture is not None and verts_uvs is not None:
        tex_name = "texture.png"
        write_png(out_dir / tex_name, _np(texture).transpose(1, 2, 0))
    return save_obj(out_dir / f"{name}.obj", _np(verts), _np(faces),
                    None if verts_uvs is None else _np(verts_uvs), None if faces_uvs is None else _np(faces_uvs),
                    texture_png=tex_name, comment="FLAME fit, world = FLAME head frame, metres")


def vertex_colors_from_texture(texture, verts_uvs, faces, faces_uvs, num_verts: int) -> np.ndarray:
    """(V, 3) uint8 colours of each vertex, sampled (nearest texel) at one of its UVs."""
    tex = _np(texture)
    vt, f, ft = _np(verts_uvs), _np(faces).reshape(-1), _np(faces_uvs).reshape(-1)
    uv = np.full((num_verts, 2), 0.5)
    uv[f] = vt[ft]
    Ht, Wt = tex.shape[1:]
    col = np.clip((uv[:, 0] * Wt).astype(int), 0, Wt - 1)
    row = np.clip(((1 - uv[:, 1]) * Ht).astype(int), 0, Ht - 1)
    return (np.clip(tex[:, row, col].T, 0, 1) * 255 + 0.5).astype(np.uint8)


# -- transforms.json (nerfstudio / instant-ngp) ----------------------------------------------------
_PLY_VERTEX = np.dtype([("x", "<f4"), ("y", "<f4"), ("z", "<f4"), ("red", "u1"), ("green", "u1"), ("blue", "u1")])


def write_points_ply(path, points, colors) -> Path:
    """points (P, 3) metres, colors (P, 3) uint8 -> a binary PLY point cloud (x y z red green
    blue: the vertex layout 3D Gaussian splatting's and nerfstudio's loaders read)."""
    pts = np.asarray(_np(points), np.float32).reshape(-1, 3)
    v = np.empty(len(pts), _PLY_VERTEX)
    v["x"], v["y"], v["z"] = pts.T
    v["red"], v["green"], v["blue"] = np.asarray(colors, np.uint8).reshape(-1, 3).T
    header = ("ply\nformat binary_little_endian 1.0\n"
              f"element vertex {len(v)}\n"
              + "".join(f"property {'float' if v.dtype[n].kind == 'f' else 'uchar'} {n}\n" for n in v.dtype.names)
              + "end_header\n")
    return atomic_write_bytes(Path(path), header.encode() + v.tobytes())


def read_points_ply(path) -> tuple[np.ndarray, np.ndarray]:
    """Inverse of :func:`write_points_ply`: (points (P, 3) float32, colors (P, 3) uint8)."""
    data = Path(path).read_bytes()
    end = data.index(b"end_header\n") + len(b"end_header\n")
    n = int(next(ln.split()[2] for ln in data[:end].decode().splitlines() if ln.startswith("element vertex")))
    v = np.frombuffer(data[end:], _PLY_VERTEX, count=n)
    return np.stack([v["x"], v["y"], v["z"]], 1), np.stack([v["red"], v["green"], v["blue"]], 1)


def _c2w_opengl(R: np.ndarray, t: np.ndarray) -> np.ndarray:
    """(N,3,3), (N,3) OpenCV world-to-camera -> (N,4,4) OpenGL camera-to-world."""
    from fitting.render.cameras import opencv_to_opengl_c2w
    return opencv_to_opengl_c2w(torch.as_tensor(R, dtype=torch.float64), torch.as_tensor(t, dtype=torch.float64)).numpy()


def write_transforms(path, K, R, t, sizes, file_paths, mesh_path: str | None = None, extra: dict | None = None,
                     frame_extra: list | None = None) -> Path:
    """transforms.json for nerfstudio, instant-ngp and the GaussianAvatars / VHAP readers.

    K: (N, 3, 3) original pixels; R, t: OpenCV world-to-camera; sizes: (N, 2) as (W, H);
    file_paths: N paths (relative to the JSON's folder, or absolute); mesh_path likewise.
    Intrinsics are written per frame and, from the first view, at the top level (instant-ngp
    reads the top level; nerfstudio prefers per-frame values). ``extra``: top-level keys;
    ``frame_extra``: N dicts of per-frame keys.
    """
    K, R, t, sizes = (np.asarray(_np(x), np.float64) for x in (K, R, t, sizes))
    c2w = _c2w_opengl(R, t)
    frames = []
    for i in range(len(K)):
        frames.append({"file_path": str(file_paths[i]), "transform_matrix": c2w[i].tolist(),
                       "fl_x": K[i, 0, 0], "fl_y": K[i, 1, 1], "cx": K[i, 0, 2], "cy": K[i, 1, 2],
                       "w": int(sizes[i, 0]), "h": int(sizes[i, 1]),
                       "camera_angle_x": float(2 * np.arctan(sizes[i, 0] / (2 * K[i, 0, 0]))),
                       "camera_angle_y": float(2 * np.arctan(sizes[i, 1] / (2 * K[i, 1, 1]))),
                       **(frame_extra[i] if frame_extra else {})})
    d = {"camera_model": "OPENCV",
         "fl_x": K[0, 0, 0], "fl_y": K[0, 1, 1], "cx": K[0, 0, 2], "cy": K[0, 1, 2],
         "w": int(sizes[0, 0]), "h": int(sizes[0, 1]),
         "k1": 0.0, "k2": 0.0, "p1": 0.0, "p2": 0.0,
         "camera_angle_x": float(2 * np.arctan(sizes[0, 0] / (2 * K[0, 0, 0]))),
         "camera_angle_y": float(2 * np.arctan(sizes[0, 1] / (2 * K[0, 1, 1]))),
         "frames": frames}
    if mesh_path is not None:
        d["mesh_path"] = str(mesh_path)
    if extra:
        d.update(extra)
    return write_json(path, d)


def read_transforms(path):
    """transforms.json -> (K (N,3,3), R (N,3,3), t (N,3), sizes (N,2) (W,H), file_paths, dict).

    Per-frame intrinsics win over the top-level ones, as in nerfstudio."""
    from fitting.render.cameras import opengl_c2w_to_opencv
    d = json.loads(Path(path).read_text())
    Ks, sizes, c2w, paths = [], [], [], []
    for fr in d["frames"]:
        g = lambda k: fr.get(k, d.get(k))  # noqa: E731
        Ks.append([[g("fl_x"), 0, g("cx")], [0, g("fl_y"), g("cy")], [0, 0, 1]])
        sizes.append([g("w"), g("h")])
        c2w.append(fr["transform_matrix"])
        paths.append(fr["file_path"])
    R, t = opengl_c2w_to_opencv(torch.tensor(c2w, dtype=torch.float64))
    return np.asarray(Ks, np.float64), R.numpy(), t.numpy(), np.asarray(sizes, np.int64), paths, d


# -- COLMAP text model -----------------------------------------------------------------------------
def quat_to_matrix(q: np.ndarray) -> np.ndarray:
    """(w, x, y, z) unit quaternion(s) (..., 4) -> (..., 3, 3)."""
    q = np.asarray(q, np.float64)
    q = q / np.linalg.norm(q, axis=-1, keepdims=True)
    w, x, y, z = np.moveaxis(q, -1, 0)
    return np.stack([
        np.stack([1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)], -1),
        np.stack([2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)], -1),
        np.stack([2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)], -1)], -2)


def write_colmap_text(out_dir, K, R, t, sizes, names, points=None, colors=None) -> Path:
    """COLMAP sparse text model: cameras.txt (PINHOLE, one per distinct intrinsics), images.txt
    (world-to-camera quaternion + translation, no 2D points), points3D.txt (``points (P, 3)``
    with ``colors (P, 3)`` uint8, empty tracks). Returns the folder."""
    out_dir = Path(out_dir)
    K, R, t, sizes = (np.asarray(_np(x), np.float64) for x in (K, R, t, sizes))
    cams, cam_id = {}, []
    for i in range(len(K)):
        key = (*(float(round(K[i, a, b], 9)) for a, b in ((0, 0), (1, 1), (0, 2), (1, 2))),
               int(sizes[i, 0]), int(sizes[i, 1]))
        cam_id.append(cams.setdefault(key, len(cams) + 1))
    lines = ["# Camera list with one line of data per camera:",
             "#   CAMERA_ID, MODEL, WIDTH, HEIGHT, PARAMS[]", f"# Number of cameras: {len(cams)}"]
    for (fx, fy, cx, cy, w, h), cid in cams.items():
        lines.append(f"{cid} PINHOLE {w} {h} {fx!r} {fy!r} {cx!r} {cy!r}")
    atomic_write_bytes(out_dir / "cameras.txt", ("\n".join(lines) + "\n").encode())

    q = matrix_to_quaternion(torch.as_tensor(R, dtype=torch.float64)).numpy()
    lines = ["# Image list with two lines of data per image:",
             "#   IMAGE_ID, QW, QX, QY, QZ, TX, TY, TZ, CAMERA_ID, NAME",
             "#   POINTS2D[] as (X, Y, POINT3D_ID)", f"# Number of images: {len(K)}"]
    for i in range(len(K)):
        vals = " ".join(repr(float(v)) for v in (*q[i], *t[i]))
        lines += [f"{i + 1} {vals} {cam_id[i]} {names[i]}", ""]
    atomic_write_bytes(out_dir / "images.txt", ("\n".join(lines) + "\n").encode())

    pts = np.zeros((0, 3)) if points is None else np.asarray(_np(points), np.float64)
    col = np.full((len(pts), 3), 200, np.uint8) if colors is None else np.asarray(colors, np.uint8)
    lines = ["# 3D point list with one line of data per point:",
             "#   POINT3D_ID, X, Y, Z, R, G, B, ERROR, TRACK[] as (IMAGE_ID, POINT2D_IDX)",
             f"# Number of points: {len(pts)}"]
    lines += [f"{j + 1} {p[0]:.7g} {p[1]:.7g} {p[2]:.7g} {c[0]} {c[1]} {c[2]} 0" for j, (p, c) in enumerate(zip(pts, col))]
    atomic_write_bytes(out_dir / "points3D.txt", ("\n".join(lines) + "\n").encode())
    return out_dir


def read_colmap_text(model_dir):
    """COLMAP text model -> (K (N,3,3), R (N,3,3), t (N,3), sizes (N,2), names, points (P,3)),
    images in file order. Understands PINHOLE, SIMPLE_PINHOLE, and the radial models' K."""
    model_dir = Path(model_dir)
    cams = {}
    for line in (model_dir / "cameras.txt").read_text().splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        p = line.split()
        cid, model, w, h, prm = int(p[0]), p[1], int(p[2]), int(p[3]), [float(x) for x in p[4:]]
        if model == "PINHOLE" or model in ("OPENCV", "FULL_OPENCV"):
            fx, fy, cx, cy = prm[:4]
        else:  # SIMPLE_PINHOLE, SIMPLE_RADIAL, RADIAL: f, cx, cy, ...
            fx = fy = prm[0]
            cx, cy = prm[1:3]
        cams[cid] = (np.array([[fx, 0, cx], [0, fy, cy], [0, 0, 1]]), (w, h))
    Ks, Rs, ts, sizes, names = [], [], [], [], []
    lines = [ln for ln in (model_dir / "images.txt").read_text().splitlines() if not ln.startswith("#")]
    i = 0
    while i < len(lines):
        if not lines[i].strip():
            i += 1
            continue
        p = lines[i].split()
        q, tt, cid, name = [float(x) for x in p[1:5]], [float(x) for x in p[5:8]], int(p[8]), " ".join(p[9:])
        Ks.append(cams[cid][0])
        sizes.append(cams[cid][1])
        Rs.append(quat_to_matrix(np.array(q)))
        ts.append(tt)
        names.append(name)
        i += 2  # the POINTS2D line (possibly empty) follows every image line
    pts = []
    for line in (model_dir / "points3D.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            pts.append([float(x) for x in line.split()[1:4]])
    return (np.asarray(Ks), np.asarray(Rs), np.asarray(ts), np.asarray(sizes), names,
            np.asarray(pts).reshape(-1, 3))
