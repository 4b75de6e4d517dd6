"""Wavefront OBJ reading and writing (positions, triangles, UVs, one texture material).

Files are written atomically (:mod:`fitting.atomic`) so an interrupted run never leaves a
half-written mesh where a good one was.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from fitting.atomic import atomic_write_bytes


def load_obj(path: str | os.PathLike):
    """Read a triangle (or polygon, fan-triangulated) OBJ.

    Returns ``(verts (V, 3) float32, faces (F, 3) int64, verts_uvs (T, 2) float32 | None,
    faces_uvs (F, 3) int64 | None)``, all indices 0-based. UVs are returned only when every
    face has them.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"OBJ file not found: {path}")
    verts, uvs, faces, faces_uv = [], [], [], []
    with open(path, "r", encoding="utf-8", errors="replace") as f:
        for line in f:
            if line.startswith("v "):
                verts.append([float(x) for x in line.split()[1:4]])
            elif line.startswith("vt "):
                uvs.append([float(x) for x in line.split()[1:3]])
            elif line.startswith("f "):
                corners = [c.split("/") for c in line.split()[1:]]
                vi = [int(c[0]) for c in corners]
                ti = [int(c[1]) if len(c) > 1 and c[1] else 0 for c in corners]
                for k in range(1, len(corners) - 1):  # fan triangulation
                    faces.append([vi[0], vi[k], vi[k + 1]])
                    faces_uv.append([ti[0], ti[k], ti[k + 1]])
    if not verts or not faces:
        raise ValueError(f"{path} has no vertices or no faces: is it an OBJ mesh?")
    v = np.asarray(verts, np.float32)
    fa = np.asarray(faces, np.int64)
    fa = np.where(fa < 0, fa + len(v), fa - 1)  # OBJ allows negative (relative) indices
    vt = ft = None
    fu = np.asarray(faces_uv, np.int64)
    if uvs and (fu != 0).all():
        vt = np.asarray(uvs, np.float32)
        ft = np.where(fu < 0, fu + len(vt), fu - 1)
    return v, fa, vt, ft


def save_obj(path: str | os.PathLike, verts, faces, verts_uvs=None, faces_uvs=None,
             texture_png: str | None = None, comment: str | None = None) -> Path:
    """Write an OBJ (and, with ``texture_png``, a ``.mtl`` beside it naming that image).

    verts: (V, 3); faces: (F, 3) 0-based; verts_uvs: (T, 2); faces_uvs: (F, 3).
    ``texture_png`` is a file name relative to the OBJ's folder.
    """
    path = Path(path)
    verts = np.asarray(verts, np.float64)
    faces = np.asarray(faces, np.int64)
    lines = []
    if comment:
        lines += [f"# {c}" for c in comment.splitlines()]
    if texture_png is not None:
        mtl = path.with_suffix(".mtl")
        atomic_write_bytes(mtl, (
            "newmtl material0\nKa 1 1 1\nKd 1 1 1\nKs 0 0 0\nillum 1\n"
            f"map_Kd {texture_png}\n").encode())
        lines += [f"mtllib {mtl.name}", "usemtl material0"]
    lines += [f"v {x:.6f} {y:.6f} {z:.6f}" for x, y, z in verts]
    has_uv = verts_uvs is not None and faces_uvs is not None
    if has_uv:
        lines += [f"vt {u:.6f} {v:.6f}" for u, v in np.asarray(verts_uvs, np.float64)]
        fu = np.asarray(faces_uvs, np.int64) + 1
        lines += [f"f {a}/{ta} {b}/{tb} {c}/{tc}" for (a, b, c), (ta, tb, tc) in zip(faces + 1, fu)]
    else:
        lines += [f"f {a} {b} {c}" for a, b, c in faces + 1]
    atomic_write_bytes(path, ("\n".join(lines) + "\n").encode())
    return path
