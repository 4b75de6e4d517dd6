"""Every output format of a fit.

:mod:`fitting.export.core` holds the files every fit writes (params.npz, mesh, transforms.json,
COLMAP text model, points3D.ply, report.json), each with a reader. The training exports that
``--export`` / ``python -m fitting.export OUTPUT_DIR --format ...`` write into
``OUTPUT/exports/<format>/`` are one self-contained module each (docs/EXPORTS.md):

* :mod:`fitting.export.nerfstudio`       - nerfstudio (splatfacto, nerfacto): transforms.json + images,
  masks, points PLY.
* :mod:`fitting.export.instant_ngp`      - instant-ngp: RGBA images, aabb_scale / scale / offset.
* :mod:`fitting.export.gaussian_avatars` - GaussianAvatars / VHAP's NeRF dataset layout with FLAME params.
* :mod:`fitting.export.deca`             - DECA's codedict names and shapes (+ .mat, landmarks, depth).
* :mod:`fitting.export.colmap`           - a COLMAP model ``sparse/0`` beside ``images/`` (3DGS).

Each writer takes a :class:`fitting.export.source.FitResult` (a finished fit, loaded from its
folder) and converts our cameras (OpenCV, world-to-camera, pixel centres at +0.5) at the edge.
"""
from fitting.export.core import *  # noqa: F401,F403
from fitting.export.core import __all__ as _core_all

FORMATS = ("nerfstudio", "instant-ngp", "gaussian-avatars", "deca", "colmap")
DEFAULT_FORMATS = ("nerfstudio",)

__all__ = list(_core_all) + ["FORMATS", "DEFAULT_FORMATS"]
