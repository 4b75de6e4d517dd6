"""Known cameras as input (``--cameras PATH``): read a rig's calibration, check it against the
images, and undistort the views.

:func:`load_calibration` reads, by what ``path`` is:

* a COLMAP model folder (``cameras.bin`` / ``images.bin`` or the ``.txt`` files), with pycolmap;
* a nerfstudio / instant-ngp ``transforms.json`` (OpenGL camera-to-world, per-frame or
  top-level ``fl_x fl_y cx cy w h`` and ``k1 k2 p1 p2``), through
  :func:`fitting.export.core.read_transforms`, the reader of the files the exports write;
* any other ``.json``: the plain calibration JSON of docs/CONVENTIONS.md,
  ``{camera name: {"K", "R", "t", "width", "height", "distortion"}}``, OpenCV world-to-camera.

Every format's pixel centres are at +0.5 as ours, so no shift is applied. A camera is named by
its image's file name or stem. Distortion is OpenCV's ``[k1, k2, p1, p2(, k3, ...)]``;
:func:`undistort_view` removes it from a view at load time, so the fit sees pinhole images.
Inputs are only read.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import NamedTuple

import cv2
import numpy as np

__all__ = ["Calibrated", "load_calibration", "write_calibration_json", "undistort_view", "undistort_points",
           "distort_points", "ROTATION_TOL"]

ROTATION_TOL = 1e-4   # |R^T R - I| and |det R - 1| allowed: float32 files round at ~1e-7


class Calibrated(NamedTuple):
    """One camera: K (3, 3) original pixels, world-to-camera R (3, 3), t (3,), the image size
    it was calibrated at, OpenCV distortion coefficients (D,) (empty: none)."""

    K: np.ndarray
    R: np.ndarray
    t: np.ndarray
    width: int
    height: int
    distortion: np.ndarray

    def with_focal_scale(self, scale: float) -> "Calibrated":
        """This camera with fx, fy (and skew) times ``scale``, as
        :func:`fitting.render.cameras.scale_focal` applies a log focal factor."""
        K = np.array(self.K, dtype=np.float64)
        K[:2, :2] *= scale
        return self._replace(K=K)


def load_calibration(path, image_names: list, image_sizes: dict) -> dict:
    """{image name: Calibrated} for every name in ``image_names``.

    image_sizes: {image name: (W, H)} as displayed. Raises ValueError naming the file and the
    camera, and saying what to do, when the file is malformed, an image has no camera, a camera
    was calibrated at another image size, or its K or R is not a camera's."""
    path = Path(path)
    if path.is_dir():
        cams = _read_colmap(path)
    elif not path.is_file():
        raise ValueError(f"--cameras {path}: no such file or folder; give a COLMAP model folder, a transforms.json "
                         "or a calibration JSON (docs/CONVENTIONS.md)")
    else:
        d = _read_json(path)
        cams = _read_transforms(path) if isinstance(d, dict) and "frames" in d else _read_plain(path, d)
    out = {}
    for name in image_names:
        key = name if name in cams else Path(name).stem if Path(name).stem in cams else None
        if key is None:
            raise ValueError(f"--cameras {path}: no camera for image {name!r} (the file names "
                             f"{_listing(cams)}): add a camera named {name!r} or {Path(name).stem!r}, "
                             "or move the image out of images/")
        cam = cams[key]
        _check_camera(path, key, cam)
        wh = tuple(int(v) for v in image_sizes[name])
        if wh != (cam.width, cam.height):
            raise ValueError(f"--cameras {path}: camera {key!r} was calibrated at {cam.width}x{cam.height} but image "
                             f"{name!r} is {wh[0]}x{wh[1]}: give the calibration of the images' resolution "
                             "(scale K with the image) or the images it was made for")
        out[name] = cam
    return out


def _listing(cams: dict) -> str:
    names = sorted(cams)
    return ", ".join(repr(n) for n in names[:8]) + (f" and {len(names) - 8} more" if len(names) > 8 else "") \
        if names else "no camera"


def _read_json(path: Path):
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"--cameras {path}: not valid JSON ({e}); give a transforms.json or a calibration JSON "
                         "(docs/CONVENTIONS.md)") from None


def _check_camera(path: Path, name: str, cam: Calibrated) -> None:
    """Raise ValueError unless ``cam`` is a pinhole camera with a rotation and finite numbers."""
    where = f"--cameras {path}: camera {name!r}"
    if cam.K.shape != (3, 3) or cam.R.shape != (3, 3) or cam.t.shape != (3,):
        raise ValueError(f"{where}: K, R must be 3x3 and t 3 numbers, got {cam.K.shape}, {cam.R.shape}, "
                         f"{cam.t.shape}")
    if not all(np.isfinite(a).all() for a in (cam.K, cam.R, cam.t, cam.distortion)):
        raise ValueError(f"{where}: K, R, t or distortion holds NaN or infinity")
    if cam.K[0, 0] <= 0 or cam.K[1, 1] <= 0 or np.abs(cam.K[2] - [0, 0, 1]).max() > 1e-9:
        raise ValueError(f"{where}: K {cam.K.tolist()} is not pinhole intrinsics [[fx, 0, cx], [0, fy, cy], "
                         "[0, 0, 1]] with fx, fy > 0")
    ortho = float(np.abs(cam.R.T @ cam.R - np.eye(3)).max())
    det = float(np.linalg.det(cam.R))
    if ortho > ROTATION_TOL or abs(det - 1) > ROTATION_TOL:
        raise ValueError(f"{where}: R is not a rotation (max |R^T R - I| = {ortho:.2g}, det R = {det:.4g}); give "
                         "the world-to-camera rotation (OpenCV), orthonormal with det +1, to at least 4 decimals")
    if cam.width <= 0 or cam.height <= 0:
        raise ValueError(f"{where}: width and height must be positive, got {cam.width}x{cam.height}")


def _number_array(path: Path, name: str, key: str, value, shape: tuple | None) -> np.ndarray:
    try:
        a = np.asarray(value, np.float64)
    except (TypeError, ValueError):
        a = None
    if a is None or (shape is not None and a.shape != shape) or (shape is None and a.ndim != 1):
        want = "x".join(map(str, shape)) + " numbers" if shape else "a list of numbers"
        raise ValueError(f"--cameras {path}: camera {name!r}: {key!r} must be {want}, got {value!r}")
    return a


def _read_plain(path: Path, d) -> dict:
    """The calibration JSON of docs/CONVENTIONS.md -> {name: Calibrated}."""
    if not isinstance(d, dict) or not d:
        raise ValueError(f"--cameras {path}: expected {{camera name: {{\"K\", \"R\", \"t\", \"width\", \"height\", "
                         "\"distortion\"}}}} (docs/CONVENTIONS.md), got " + type(d).__name__)
    cams = {}
    for name, c in d.items():
        missing = [k for k in ("K", "R", "t", "width", "height") if not isinstance(c, dict) or k not in c]
        if missing:
            raise ValueError(f"--cameras {path}: camera {name!r} lacks {', '.join(missing)}; each camera needs "
                             "K (3x3), R (3x3), t (3), width, height and optionally distortion (docs/CONVENTIONS.md)")
        cams[name] = Calibrated(_number_array(path, name, "K", c["K"], (3, 3)),
                                _number_array(path, name, "R", c["R"], (3, 3)),
                                _number_array(path, name, "t", c["t"], (3,)),
                                int(c["width"]), int(c["height"]),
                                _number_array(path, name, "distortion", c.get("distortion") or [], None))
    return cams


_DISTORTION_KEYS = ("k1", "k2", "p1", "p2", "k3")


def _read_transforms(path: Path) -> dict:
    """nerfstudio / instant-ngp transforms.json -> {file name: Calibrated}."""
    from fitting.export.core import read_transforms
    try:
        K, R, t, sizes, paths, d = read_transforms(path)
    except (KeyError, TypeError, ValueError) as e:
        raise ValueError(f"--cameras {path}: a transforms.json frame lacks or garbles {e}: each frame needs "
                         "file_path and transform_matrix, and fl_x, fl_y, cx, cy, w, h per frame or at the top "
                         "level") from None
    cams = {}
    for i, (fr, p) in enumerate(zip(d["frames"], paths)):
        coeffs = [float(fr.get(k, d.get(k, 0.0))) for k in _DISTORTION_KEYS]
        dist = np.asarray(coeffs[:4] if coeffs[4] == 0 else coeffs, np.float64)
        cams[Path(p).name] = Calibrated(K[i], R[i], t[i], int(sizes[i, 0]), int(sizes[i, 1]),
                                        dist if np.any(dist) else np.zeros(0))
    return cams


# COLMAP camera models -> how their params map to (fx, fy, cx, cy) and OpenCV's [k1, k2, p1, p2, ...]
_COLMAP_MODELS = {
    "SIMPLE_PINHOLE": lambda p: ((p[0], p[0], p[1], p[2]), []),
    "PINHOLE": lambda p: ((p[0], p[1], p[2], p[3]), []),
    "SIMPLE_RADIAL": lambda p: ((p[0], p[0], p[1], p[2]), [p[3], 0, 0, 0]),
    "RADIAL": lambda p: ((p[0], p[0], p[1], p[2]), [p[3], p[4], 0, 0]),
    "OPENCV": lambda p: ((p[0], p[1], p[2], p[3]), list(p[4:8])),
    "FULL_OPENCV": lambda p: ((p[0], p[1], p[2], p[3]), list(p[4:12])),
}


def _read_colmap(path: Path) -> dict:
    """COLMAP model folder -> {image name: Calibrated}."""
    import pycolmap
    if not any((path / f"images.{ext}").is_file() for ext in ("bin", "txt")):
        raise ValueError(f"--cameras {path}: a folder must be a COLMAP model (cameras.bin / images.bin or "
                         "cameras.txt / images.txt), e.g. sparse/0")
    try:
        rec = pycolmap.Reconstruction(str(path))
    except Exception as e:  # pycolmap raises its own types for unreadable models
        raise ValueError(f"--cameras {path}: pycolmap cannot read this COLMAP model ({e})") from None
    cams = {}
    for im in rec.images.values():  # one entry per image
        cam = rec.cameras[im.camera_id]
        if cam.model.name not in _COLMAP_MODELS:
            raise ValueError(f"--cameras {path}: camera of image {im.name!r} is a {cam.model.name} camera; "
                             f"supported: {', '.join(_COLMAP_MODELS)}")
        (fx, fy, cx, cy), dist = _COLMAP_MODELS[cam.model.name](np.asarray(cam.params, np.float64))
        T = im.cam_from_world() if callable(im.cam_from_world) else im.cam_from_world
        dist = np.asarray(dist, np.float64)
        cams[im.name] = Calibrated(np.array([[fx, 0, cx], [0, fy, cy], [0, 0, 1]]),
                                   np.asarray(T.rotation.matrix(), np.float64),
                                   np.asarray(T.translation, np.float64), int(cam.width), int(cam.height),
                                   dist if np.any(dist) else np.zeros(0))
    return cams


def write_calibration_json(path, cameras: dict) -> Path:
    """Write {name: Calibrated} as the calibration JSON of docs/CONVENTIONS.md, atomically."""
    from fitting.atomic import atomic_write_json
    return atomic_write_json(Path(path), {
        n: {"K": np.asarray(c.K).tolist(), "R": np.asarray(c.R).tolist(), "t": np.asarray(c.t).tolist(),
            "width": int(c.width), "height": int(c.height), "distortion": np.asarray(c.distortion).tolist()}
        for n, c in cameras.items()})


# -- undistortion ----------------------------------------------------------------------------------
def _opencv_K(K: np.ndarray) -> np.ndarray:
    """K with pixel centres at +0.5 -> OpenCV's (centres at integers)."""
    Kc = np.array(K, np.float64)
    Kc[:2, 2] -= 0.5
    return Kc


def undistort_view(image: np.ndarray, K: np.ndarray, distortion: np.ndarray, interpolation=cv2.INTER_LINEAR):
    """(H, W[, C]) image of a camera with intrinsics K (3, 3) at the image's resolution and OpenCV
    ``distortion`` -> the pinhole image of the same K (no distortion)."""
    if not len(distortion) or not np.any(distortion):
        return image
    Kc = _opencv_K(K)
    H, W = image.shape[:2]
    mx, my = cv2.initUndistortRectifyMap(Kc, np.asarray(distortion, np.float64), None, Kc, (W, H), cv2.CV_32FC1)
    return cv2.remap(image, mx, my, interpolation, borderMode=cv2.BORDER_REPLICATE)


def distort_points(points: np.ndarray, K: np.ndarray, distortion: np.ndarray) -> np.ndarray:
    """(M, 2) pixels of the pinhole image (+0.5 convention) -> where the camera with lens
    ``distortion`` sees them: the inverse of :func:`undistort_points`, for drawing on the
    original images."""
    p = np.asarray(points, np.float64).reshape(-1, 2)
    if not len(distortion) or not np.any(distortion):
        return p
    Kc = _opencv_K(K)
    x = np.concatenate([(p - 0.5 - Kc[:2, 2]) / Kc[[0, 1], [0, 1]], np.ones((len(p), 1))], 1)
    u = cv2.projectPoints(x, np.zeros(3), np.zeros(3), Kc, np.asarray(distortion, np.float64))[0]
    return u.reshape(-1, 2) + 0.5


def undistort_points(points: np.ndarray, K: np.ndarray, distortion: np.ndarray) -> np.ndarray:
    """(M, 2) pixels of the distorted image (+0.5 convention) -> where they lie in the pinhole image."""
    if not len(distortion) or not np.any(distortion):
        return np.asarray(points, np.float64)
    Kc = _opencv_K(K)
    p = np.asarray(points, np.float64).reshape(-1, 1, 2) - 0.5
    # iterated to convergence: OpenCV's default is 5 fixed iterations, visibly off in the corners
    u = cv2.undistortPoints(p, Kc, np.asarray(distortion, np.float64), R=None, P=Kc,
                            criteria=(cv2.TERM_CRITERIA_COUNT | cv2.TERM_CRITERIA_EPS, 50, 1e-10))
    return u.reshape(-1, 2) + 0.5
