"""Linear albedo (texture) spaces in UV space.

Two published formats load here, both storing images with BGR channel order (as DECA
reads them; we flip to RGB) and row 0 at the top:
- ``FLAME_texture.npz``: ``mean`` (H, W, 3) and ``tex_dir`` (H, W, 3, K) in 0..255, with
  FLAME's UVs ``vt`` (T, 2) / ``ft`` (F, 3);
- ``FLAME_albedo_from_BFM.npz``: ``MU`` (H*W*3,) and ``PC`` (H*W*3, K) in 0..1, with its own
  ``vt`` / ``ft``.
The synthetic stand-in writes the first format. With neither file, there is no texture
space and a fit uses a free UV texture map.
"""
from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import torch

from .io import FlameFileError

TEXTURE_HELP = ("FLAME_texture.npz comes with FLAME (flame.is.tue.mpg.de, 'FLAME texture space'); "
                "FLAME_albedo_from_BFM.npz from the BFM-to-FLAME converter (TRUST / DECA). Both optional.")


class TextureSpace(torch.nn.Module):
    """albedo = mean + sum_k code_k * basis_k, RGB in [0, 1] (clamped on output).

    mean: (3, H, W); basis: (K, 3, H, W); verts_uvs: (T, 2); faces_uvs: (F, 3).
    """

    def __init__(self, mean: np.ndarray, basis: np.ndarray, verts_uvs: np.ndarray, faces_uvs: np.ndarray,
                 source: str = ""):
        super().__init__()
        self.register_buffer("mean", torch.as_tensor(mean, dtype=torch.float32))
        self.register_buffer("basis", torch.as_tensor(basis, dtype=torch.float32))
        self.register_buffer("verts_uvs", torch.as_tensor(verts_uvs, dtype=torch.float32))
        self.register_buffer("faces_uvs", torch.as_tensor(faces_uvs, dtype=torch.int64))
        self.source = source

    @property
    def n_tex(self) -> int:
        return self.basis.shape[0]

    def forward(self, code: torch.Tensor) -> torch.Tensor:
        """code: (B, K) -> albedo (B, 3, H, W)."""
        if code.ndim != 2 or code.shape[1] != self.n_tex:
            raise ValueError(f"texture code must be (B, {self.n_tex}), got {tuple(code.shape)}")
        tex = self.mean + torch.einsum("bk,kchw->bchw", code, self.basis)
        return tex.clamp(0, 1)


def load_texture_space(path: str | Path, n_tex: int = 50) -> TextureSpace:
    """Load ``FLAME_texture.npz`` or ``FLAME_albedo_from_BFM.npz`` (first ``n_tex`` components)."""
    path = Path(path)
    if not path.is_file():
        raise FlameFileError(f"texture space not found: {path}. {TEXTURE_HELP}")
    try:
        with np.load(path, allow_pickle=False) as z:
            d = {k: z[k] for k in z.files}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as e:
        raise FlameFileError(f"{path}: texture space is corrupt or unreadable ({e}). {TEXTURE_HELP}") from e
    if "vt" not in d or "ft" not in d:
        raise FlameFileError(f"{path}: texture space lacks UVs 'vt'/'ft' (has {sorted(d)})")
    if "mean" in d and "tex_dir" in d:
        mean = d["mean"].astype(np.float32) / 255.0
        basis = d["tex_dir"][..., :n_tex].astype(np.float32) / 255.0
        if mean.ndim != 3 or basis.shape[:3] != mean.shape:
            raise FlameFileError(f"{path}: mean {mean.shape} and tex_dir {basis.shape} do not match")
        H, W = mean.shape[:2]
        mean = mean.transpose(2, 0, 1)
        basis = basis.transpose(3, 2, 0, 1)
    elif "MU" in d and "PC" in d:
        mu = d["MU"].astype(np.float32).reshape(-1)
        pc = d["PC"].astype(np.float32).reshape(mu.size, -1)[:, :n_tex]
        side = int(round(np.sqrt(mu.size / 3)))
        if side * side * 3 != mu.size:
            raise FlameFileError(f"{path}: MU has {mu.size} values, not a square RGB image")
        H = W = side
        mean = mu.reshape(H, W, 3).transpose(2, 0, 1)
        basis = pc.reshape(H, W, 3, -1).transpose(3, 2, 0, 1)
    else:
        raise FlameFileError(f"{path}: not a texture space (needs mean/tex_dir or MU/PC; has {sorted(d)}). "
                             f"{TEXTURE_HELP}")
    # Stored BGR (as DECA reads these files): flip channels to RGB.
    mean = np.ascontiguousarray(mean[::-1])
    basis = np.ascontiguousarray(basis[:, ::-1])
    return TextureSpace(mean, basis, d["vt"], d["ft"].astype(np.int64), source=str(path))


def find_texture_space(model_path: str | Path) -> Path | None:
    """The texture space beside a model file, if any (stand-in's first, then FLAME's, then BFM's)."""
    model_path = Path(model_path)
    folder = model_path.parent
    for name in (f"{model_path.stem}_texture.npz", "FLAME_texture.npz", "FLAME_albedo_from_BFM.npz"):
        if (folder / name).is_file():
            return folder / name
    return None
