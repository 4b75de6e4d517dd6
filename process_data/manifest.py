"""Scene manifest and exact image-space transforms between original and derived images.

Every derived image (padded or cropped square) is related to its original by a uniform scale
and an offset in the continuous pixel convention of docs/CONVENTIONS.md (pixel centres at +0.5):

    derived = scale * original + offset,        original = (derived - offset) / scale

The manifest (``manifest.json``) records the scene it belongs to (its resolved folder) and,
per view: the file's content fingerprint (sha256 and byte size), the original size, the
transform, the status of each stage and why a view failed; per stage: the tool versions, the
options, a digest of the inputs it read, and warnings. Staleness and ownership are decided
by content, never by mtimes (copies and restores rewrite mtimes).
A view's ``size`` is that of the upright image and ``orientation`` its EXIF orientation (1..8,
1 = stored upright): every coordinate refers to the upright image (see fitting.images).
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

MANIFEST_NAME = "manifest.json"
# 2: image fingerprints, per-stage input digests, "producer" and the run's options.
MANIFEST_VERSION = 2
PRODUCER = "process_data"


@dataclass(frozen=True)
class ImageTransform:
    """derived = scale * original + offset (continuous pixel coordinates, x then y).

    scale: float; offset: (2,) as (ox, oy); size: (width, height) of the derived image."""

    scale: float
    offset: tuple[float, float]
    size: tuple[int, int]

    def __post_init__(self):
        if not np.isfinite(self.scale) or self.scale <= 0:
            raise ValueError(f"transform scale must be a positive finite number, got {self.scale}")

    def to_derived(self, points: np.ndarray) -> np.ndarray:
        """points: (..., 2) original pixels -> (..., 2) derived pixels (float64)."""
        p = np.asarray(points, dtype=np.float64)
        return p * self.scale + np.asarray(self.offset, dtype=np.float64)

    def to_original(self, points: np.ndarray) -> np.ndarray:
        """points: (..., 2) derived pixels -> (..., 2) original pixels (float64)."""
        p = np.asarray(points, dtype=np.float64)
        return (p - np.asarray(self.offset, dtype=np.float64)) / self.scale

    def box_to_original(self, box) -> list[float]:
        """[x0, y0, x1, y1] in derived pixels -> original pixels."""
        b = self.to_original(np.asarray(box, dtype=np.float64).reshape(2, 2))
        return b.reshape(4).tolist()

    def K_to_derived(self, K: np.ndarray) -> np.ndarray:
        """Intrinsics K (..., 3, 3) of the original image -> those of the derived image."""
        A = np.array([[self.scale, 0, self.offset[0]], [0, self.scale, self.offset[1]], [0, 0, 1]])
        return A @ np.asarray(K, dtype=np.float64)

    def affine_matrix_cv(self) -> np.ndarray:
        """2x3 matrix for cv2.warpAffine, which maps integer pixel centres: the continuous
        map u' = s u + o becomes (u'-0.5) = s (u-0.5) + o + 0.5 s - 0.5."""
        s = self.scale
        c = 0.5 * s - 0.5
        return np.array([[s, 0, self.offset[0] + c], [0, s, self.offset[1] + c]], dtype=np.float64)

    def to_dict(self) -> dict:
        return {"scale": float(self.scale), "offset": [float(self.offset[0]), float(self.offset[1])],
                "size": [int(self.size[0]), int(self.size[1])],
                "formula": "derived = scale * original + offset (pixel centres at +0.5)"}

    @classmethod
    def from_dict(cls, d: dict) -> "ImageTransform":
        return cls(float(d["scale"]), (float(d["offset"][0]), float(d["offset"][1])),
                   (int(d["size"][0]), int(d["size"][1])))

    @classmethod
    def identity(cls, width: int, height: int) -> "ImageTransform":
        return cls(1.0, (0.0, 0.0), (width, height))


def to_derived(points, transform: ImageTransform | dict) -> np.ndarray:
    """points (..., 2) original -> derived. ``transform`` may be a manifest dict entry."""
    t = transform if isinstance(transform, ImageTransform) else ImageTransform.from_dict(transform)
    return t.to_derived(points)


def to_original(points, transform: ImageTransform | dict) -> np.ndarray:
    """points (..., 2) derived -> original."""
    t = transform if isinstance(transform, ImageTransform) else ImageTransform.from_dict(transform)
    return t.to_original(points)


def new_manifest(scene_dir: Path, images_dir: Path, out_dir: Path) -> dict:
    # Images are referenced relative to the output folder when they sit beside it, and by
    # absolute path when --out put the outputs elsewhere (read-only scenes).
    beside = images_dir.resolve().parent == out_dir.resolve()
    return {"version": MANIFEST_VERSION, "producer": PRODUCER, "scene": str(scene_dir.resolve()),
            "images_dir": "images" if beside else str(images_dir.resolve()),
            "views": {}, "failed": {}, "skipped_files": {}, "stages": {}, "warnings": []}


def load_manifest(out_dir) -> dict:
    """Read ``out_dir/manifest.json`` (ValueError with advice when it is missing)."""
    path = Path(out_dir) / MANIFEST_NAME
    if not path.is_file():
        raise ValueError(f"{path} not found: run `python -m process_data SCENE` first")
    with open(path) as f:
        return json.load(f)


def view_transform(manifest: dict, name: str) -> ImageTransform:
    """The original -> derived transform of view ``name`` (identity when no pad/crop ran)."""
    v = manifest["views"].get(name)
    if v is None:
        raise ValueError(f"view {name!r} is not in the manifest (views: {sorted(manifest['views'])[:5]}...)")
    if "transform" in v:
        return ImageTransform.from_dict(v["transform"])
    w, h = v["size"]
    return ImageTransform.identity(w, h)


def image_path(manifest: dict, out_dir, name: str) -> Path:
    d = Path(manifest["images_dir"])
    return (d if d.is_absolute() else Path(out_dir) / d) / name


def record_failure(manifest: dict, name: str, stage: str, reason: str) -> None:
    manifest["failed"][name] = {"stage": stage, "reason": reason}
    if name in manifest["views"]:
        manifest["views"][name].setdefault("status", {})[stage] = "failed: " + reason


def fingerprint(path) -> dict:
    """{"sha256": hex digest of the file's bytes, "bytes": its size}."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return {"sha256": h.hexdigest(), "bytes": Path(path).stat().st_size}


def image_differences(manifest: dict, prints: dict) -> list[str]:
    """Names whose recorded fingerprint differs from ``prints`` ({name: fingerprint}): added,
    removed or changed images (every image of a manifest without fingerprints). Sorted."""
    recorded = {n: v.get("sha256") for n, v in manifest.get("views", {}).items()}
    current = {n: p["sha256"] for n, p in prints.items()}
    return sorted(n for n in recorded.keys() | current.keys() if recorded.get(n) != current.get(n))


class ForeignPreprocess(ValueError):
    """An output folder holds the preprocessing of another scene (other folder, other images)."""

    def __init__(self, out_dir, manifest: dict, scene_dir, differences: list[str]):
        self.out_dir, self.other = Path(out_dir), manifest.get("scene", "an unknown scene")
        self.scene_dir, self.differences = Path(scene_dir), differences
        super().__init__(self.advice("--out", "--force"))

    def advice(self, out_option: str, force_option: str) -> str:
        """The message, naming the caller's options for another output folder and for recomputing."""
        shown = ", ".join(self.differences[:5]) + (", ..." if len(self.differences) > 5 else "")
        return (f"{self.out_dir} holds the preprocessing of another scene ({self.other}), not of "
                f"{self.scene_dir.resolve()}: {len(self.differences)} image(s) differ ({shown}). "
                f"Give another output folder ({out_option} DIR), or {force_option} to recompute into this one")


def check_owner(manifest: dict, scene_dir, out_dir, prints: dict) -> None:
    """Raise ForeignPreprocess when ``manifest`` belongs to another scene: another scene folder
    AND other images. A moved scene (same images) or a scene whose photos changed in place
    (same folder) is the same scene: its stale stages are redone instead."""
    diff = image_differences(manifest, prints)
    if diff and manifest.get("scene") != str(Path(scene_dir).resolve()):
        raise ForeignPreprocess(out_dir, manifest, scene_dir, diff)
