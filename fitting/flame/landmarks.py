"""The 68 iBUG landmarks as barycentric points on the FLAME mesh.

Two embedding formats exist in the wild, and both load here:
- DECA's ``landmark_embedding.npy``: one pickled dict with ``static_lmk_faces_idx`` (51,),
  ``static_lmk_bary_coords`` (51, 3), ``dynamic_lmk_faces_idx`` (79, 17),
  ``dynamic_lmk_bary_coords`` (79, 17, 3) (torch tensors inside the pickle, read as numpy
  arrays), ``full_lmk_faces_idx`` (1, 68), ``full_lmk_bary_coords`` (1, 68, 3).
- FLAME_PyTorch / RingNet's ``flame_static_embedding.pkl`` (``lmk_face_idx`` (51,),
  ``lmk_b_coords`` (51, 3)) plus ``flame_dynamic_embedding.npy`` (same keys, (79, 17[, 3])).

The 51 static points are iBUG 17..67 (brows, nose, eyes, mouth). The 17 jaw-contour points
(iBUG 0..16) depend on the view: the dynamic table has one row per integer yaw, rows 0..39
for yaw 0..+39 degrees and rows 40..78 for yaw -1..-39 degrees (the layout of those files).

Both are pickles; :func:`fitting.flame.io.read_pickle` reads them without running code.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .io import FlameFileError, read_pickle

N_CONTOUR = 17
MAX_YAW_DEG = 39


@dataclass
class LandmarkEmbedding:
    """Barycentric landmark embedding (numpy, as read from disk).

    static_faces (51,), static_bary (51, 3), dynamic_faces (79, 17), dynamic_bary (79, 17, 3),
    full_faces (68,), full_bary (68, 3).
    """
    static_faces: np.ndarray
    static_bary: np.ndarray
    dynamic_faces: np.ndarray
    dynamic_bary: np.ndarray
    full_faces: np.ndarray
    full_bary: np.ndarray
    source: str = ""


EMBEDDING_HINT = ("Use the landmark_embedding.npy from DECA's data folder, or FLAME_PyTorch's "
                  "flame_static_embedding.pkl + flame_dynamic_embedding.npy.")


def _load_dict(path: Path, what: str) -> dict:
    d = read_pickle(path, what, EMBEDDING_HINT)
    if not isinstance(d, dict):
        raise FlameFileError(f"{path}: expected a pickled dict ({what}), found {type(d).__name__}")
    return d


def _require(d: dict, keys, path: Path):
    missing = [k for k in keys if k not in d]
    if missing:
        raise FlameFileError(f"{path}: landmark embedding lacks keys {missing} (has {sorted(d)})")


def load_deca_embedding(path: str | Path) -> LandmarkEmbedding:
    path = Path(path)
    d = _load_dict(path, "landmark embedding")
    _require(d, ["static_lmk_faces_idx", "static_lmk_bary_coords", "dynamic_lmk_faces_idx",
                 "dynamic_lmk_bary_coords"], path)
    emb = LandmarkEmbedding(
        static_faces=np.asarray(d["static_lmk_faces_idx"]).astype(np.int64).reshape(-1),
        static_bary=np.asarray(d["static_lmk_bary_coords"]).astype(np.float32).reshape(-1, 3),
        dynamic_faces=np.asarray(d["dynamic_lmk_faces_idx"]).astype(np.int64),
        dynamic_bary=np.asarray(d["dynamic_lmk_bary_coords"]).astype(np.float32),
        full_faces=None, full_bary=None, source=str(path))
    if "full_lmk_faces_idx" in d:
        emb.full_faces = np.asarray(d["full_lmk_faces_idx"]).astype(np.int64).reshape(-1)
        emb.full_bary = np.asarray(d["full_lmk_bary_coords"]).astype(np.float32).reshape(-1, 3)
    return _complete(emb, path)


def load_ringnet_embedding(static_path: str | Path, dynamic_path: str | Path) -> LandmarkEmbedding:
    static_path, dynamic_path = Path(static_path), Path(dynamic_path)
    s = _load_dict(static_path, "static landmark embedding")
    _require(s, ["lmk_face_idx", "lmk_b_coords"], static_path)
    d = _load_dict(dynamic_path, "dynamic landmark embedding")
    _require(d, ["lmk_face_idx", "lmk_b_coords"], dynamic_path)
    emb = LandmarkEmbedding(
        static_faces=np.asarray(s["lmk_face_idx"]).astype(np.int64).reshape(-1),
        static_bary=np.asarray(s["lmk_b_coords"]).astype(np.float32).reshape(-1, 3),
        dynamic_faces=np.asarray(d["lmk_face_idx"]).astype(np.int64),
        dynamic_bary=np.asarray(d["lmk_b_coords"]).astype(np.float32),
        full_faces=None, full_bary=None, source=f"{static_path} + {dynamic_path}")
    return _complete(emb, static_path)


def _complete(emb: LandmarkEmbedding, path: Path) -> LandmarkEmbedding:
    """Validate shapes; derive the 'full' static 68 from the frontal contour when absent."""
    n_yaw = 2 * MAX_YAW_DEG + 1
    checks = [("static faces", emb.static_faces.shape, (51,)), ("static bary", emb.static_bary.shape, (51, 3)),
              ("dynamic faces", emb.dynamic_faces.shape, (n_yaw, N_CONTOUR)),
              ("dynamic bary", emb.dynamic_bary.shape, (n_yaw, N_CONTOUR, 3))]
    for what, got, want in checks:
        if tuple(got) != want:
            raise FlameFileError(f"{path}: {what} has shape {tuple(got)}, expected {want}")
    if emb.full_faces is None:
        emb.full_faces = np.concatenate([emb.dynamic_faces[0], emb.static_faces])
        emb.full_bary = np.concatenate([emb.dynamic_bary[0], emb.static_bary])
    if emb.full_faces.shape != (68,):
        raise FlameFileError(f"{path}: full embedding has {emb.full_faces.shape} faces, expected (68,)")
    return emb


def find_embedding(model_path: str | Path) -> LandmarkEmbedding:
    """Look beside the model for an embedding, in the order users are likely to have them."""
    model_path = Path(model_path)
    folder = model_path.parent
    candidates = [folder / f"{model_path.stem}_landmark_embedding.npy", folder / "landmark_embedding.npy"]
    for c in candidates:
        if c.is_file():
            return load_deca_embedding(c)
    s, d = folder / "flame_static_embedding.pkl", folder / "flame_dynamic_embedding.npy"
    if s.is_file() and d.is_file():
        return load_ringnet_embedding(s, d)
    raise FlameFileError(
        f"no landmark embedding beside {model_path}: looked for {candidates[0].name}, landmark_embedding.npy "
        f"(DECA's, from its data folder) and flame_static_embedding.pkl + flame_dynamic_embedding.npy "
        f"(FLAME_PyTorch / RingNet) in {folder}. Put one there or pass landmark_embedding_path.")


def load_embedding(path: str | Path) -> LandmarkEmbedding:
    """Load an embedding file: DECA's ``.npy``, or RingNet's static ``.pkl`` (dynamic ``.npy`` beside it)."""
    path = Path(path)
    if not path.is_file():
        raise FlameFileError(f"landmark embedding not found: {path}")
    if path.suffix == ".pkl":
        return load_ringnet_embedding(path, path.with_name("flame_dynamic_embedding.npy"))
    return load_deca_embedding(path)


def yaw_degrees(rotation: torch.Tensor) -> torch.Tensor:
    """Yaw (rotation about +y) of a rotation matrix, in degrees. rotation: (B, 3, 3) -> (B,)."""
    r = rotation
    return torch.rad2deg(torch.atan2(-r[:, 2, 0], torch.sqrt(r[:, 0, 0] ** 2 + r[:, 1, 0] ** 2)))


def contour_row(yaw_deg: torch.Tensor) -> torch.Tensor:
    """Row of the dynamic table for a yaw in degrees: (B,) float -> (B,) int64."""
    y = torch.round(yaw_deg).clamp(-MAX_YAW_DEG, MAX_YAW_DEG).long()
    return torch.where(y >= 0, y, MAX_YAW_DEG - y)


def barycentric_points(vertices: torch.Tensor, faces: torch.Tensor, face_idx: torch.Tensor,
                       bary: torch.Tensor) -> torch.Tensor:
    """Points on the mesh. vertices: (B, V, 3); faces: (F, 3); face_idx: (B, L); bary: (B, L, 3) -> (B, L, 3)."""
    B = vertices.shape[0]
    tri = faces[face_idx]  # (B, L, 3)
    corners = vertices[torch.arange(B, device=vertices.device)[:, None, None], tri]  # (B, L, 3, 3)
    return (bary.unsqueeze(-1) * corners).sum(-2)
