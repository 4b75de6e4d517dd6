"""Inputs of a single-image batch: photos, their landmarks and masks, at fitting size.

Landmarks and masks come from process_data's library functions
(``process_data.landmarks.detect_landmarks``, ``process_data.masks.compute_masks``) unless
``--landmarks`` / ``--mask`` give them. User ``.npy`` landmarks are in the pixel-index
convention of the detectors (pixel centres at integers) and get +0.5 here, as
docs/CONVENTIONS.md says. Photos are read upright (EXIF orientation applied, like every
viewer; :mod:`fitting.images`), so landmarks, masks and outputs refer to the photo as shown.
A photo that cannot be read, or shows no face, is recorded with a reason and left out; the
others still fit. Two photos with one stem (``face.jpg``, ``face.png``) are refused up front:
each photo's outputs go to ``<savefolder>/<stem>/``.
"""
from __future__ import annotations

import fnmatch
import time
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import torch

from fitting.images import IMAGE_SUFFIXES, check_unique_stems, read_image
from fitting.observations import Observations

__all__ = ["IMAGE_SUFFIXES", "ImageBatch", "list_inputs", "resolve_override", "load_landmarks_npy", "load_mask",
           "prepare_batch"]

LANDMARK_NAMES = ("{stem}_landmarks68.npy", "{stem}_landmarks.npy", "{stem}.npy")
HEAD_MASK_NAMES = ("{stem}_headmask.png", "{stem}_head.png")
MASK_NAMES = ("{stem}_skinmask.png", "{stem}_mask.png", "{stem}.png", "{stem}.jpg")


@dataclass(kw_only=True)
class ImageBatch(Observations):
    """The usable photos: :class:`Observations` of N photos, each letterboxed into the square
    fitting size (``size``, H = W).

    scale: (N,) original -> fitting pixels (isotropic); offset: (N, 2) fitting pixels of the
    photo's top-left corner. failed: {name: reason} for the photos left out; sources:
    {name: {"landmarks", "mask"}}; preprocess_s: {name: seconds}.
    """

    scale: torch.Tensor
    offset: torch.Tensor
    failed: dict = field(default_factory=dict)
    sources: dict = field(default_factory=dict)
    preprocess_s: dict = field(default_factory=dict)


def list_inputs(path, exclude: str = "") -> tuple[list[Path], bool, dict]:
    """Photos to fit. Returns (paths, is_folder, skipped {name: reason}).

    path: an image file, or a folder (its .jpg/.jpeg/.png files, sorted, minus the names that
    match one of the comma-separated globs in ``exclude``). Raises ValueError when two photos
    share a stem, since each one's outputs go to a folder named by it."""
    p = Path(path)
    if p.is_file():
        if p.suffix.lower() not in IMAGE_SUFFIXES:
            raise ValueError(f"{p} is not a .jpg/.jpeg/.png image: give a photo or a folder of photos")
        return [p], False, {}
    if not p.is_dir():
        raise ValueError(f"{p} does not exist: give a photo or a folder of photos")
    pats = [s.strip() for s in exclude.split(",") if s.strip()]
    paths, skipped = [], {}
    for q in sorted(p.iterdir()):
        if q.name.startswith(".") or not q.is_file():
            continue
        if q.suffix.lower() not in IMAGE_SUFFIXES:
            continue
        if any(fnmatch.fnmatch(q.name, pat) for pat in pats):
            skipped[q.name] = "matches --exclude"
            continue
        paths.append(q)
    if not paths:
        raise ValueError(f"{p} holds no .jpg/.jpeg/.png photo (after --exclude {exclude!r})")
    check_unique_stems([q.name for q in paths], str(p), "leave one of each out with --exclude, or rename it")
    return paths, True, skipped


def resolve_override(spec: str, image: Path, single: bool, candidates: tuple) -> Path | None:
    """The override file for ``image``, or None.

    spec: '' (none); a file (only when fitting a single image); a pattern containing
    ``{stem}``; or a folder searched for ``candidates`` (patterns with ``{stem}``)."""
    if not spec:
        return None
    if "{stem}" in spec or "{name}" in spec:
        q = Path(spec.format(stem=image.stem, name=image.name))
        return q if q.is_file() else None
    s = Path(spec)
    if s.is_dir():
        for c in candidates:
            q = s / c.format(stem=image.stem)
            if q.is_file() and q.resolve() != image.resolve():
                return q
        return None
    if s.is_file():
        if not single:
            raise ValueError(f"{s} is one file but the input is a folder: give a folder or a pattern with {{stem}}")
        return s
    raise ValueError(f"{s} does not exist")


def load_landmarks_npy(path) -> np.ndarray:
    """(68, 2) float64 landmarks from a user .npy (pixel-index convention) in our +0.5 convention.

    Accepts (68, 2) or (68, 3) (a z column is dropped) or (1, 68, 2/3)."""
    a = np.load(path, allow_pickle=False)
    a = np.asarray(a, np.float64).reshape(-1, a.shape[-1]) if a.ndim == 3 else np.asarray(a, np.float64)
    if a.shape[0] != 68 or a.shape[1] not in (2, 3) or not np.isfinite(a[:, :2]).all():
        raise ValueError(f"{path}: landmarks must be a finite (68, 2) array in iBUG-68 order, got {a.shape}")
    return a[:, :2] + 0.5


def load_mask(path, size_wh) -> np.ndarray:
    """(H, W) uint8 mask from an image file, resized to ``size_wh`` (W, H) when needed."""
    m = read_image(path, gray=True)
    if (m.shape[1], m.shape[0]) != tuple(size_wh):
        m = cv2.resize(m, tuple(size_wh), interpolation=cv2.INTER_LINEAR)
    return m


def _letterbox(size_wh, image_size: int):
    """Isotropic scale and integer-free offset placing a (W, H) photo in a square of
    ``image_size``: the longer side fills it, the shorter one is centred (padding)."""
    W, H = size_wh
    s = image_size / max(W, H)
    return s, ((image_size - W * s) / 2, (image_size - H * s) / 2)


def _warp(img: np.ndarray, s: float, off, size: int) -> np.ndarray:
    if s < 1:  # anti-alias before shrinking (warpAffine samples bilinearly)
        img = cv2.GaussianBlur(img, (0, 0), 0.5 / s)
    A = np.array([[s, 0, off[0] + 0.5 * s - 0.5], [0, s, off[1] + 0.5 * s - 0.5]])  # +0.5 pixel-centre convention
    return cv2.warpAffine(img, A, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0)


def prepare_batch(paths: list, image_size: int, landmarks: str = "", mask: str = "", backend: str = "dlib",
                  need_head_mask: bool = False, single: bool = False, head_mask: str = "", log=print) -> ImageBatch:
    """Read every photo, get its landmarks and masks, and bring all to one square fitting size.

    Photos of any size or aspect ratio are letterboxed into ``image_size`` x ``image_size``
    (an isotropic scale + centring offset, undone exactly at export), so a folder of mixed
    photos is still one batch. ``need_head_mask``: compute the head mask (GrabCut) too unless
    ``head_mask`` gives it (same forms as ``mask``); when neither, the head mask is the skin
    mask (nothing uses it then).
    With no usable photo the batch is empty (N = 0) and ``failed`` names each one's reason.
    """
    failed, sources, pre_s, rows = {}, {}, {}, []
    for p in paths:  # detection and GrabCut are per photo by nature
        t0 = time.perf_counter()
        name = p.name
        try:
            img = read_image(p)
            lm_file = resolve_override(landmarks, p, single, LANDMARK_NAMES)
            mk_file = resolve_override(mask, p, single, MASK_NAMES)
            hd_file = resolve_override(head_mask, p, single, HEAD_MASK_NAMES)
            if lm_file is not None:
                pts, lm_src = load_landmarks_npy(lm_file), str(lm_file)
            else:
                from process_data.landmarks import detect_landmarks
                det = detect_landmarks(img, backend=backend)
                if det["points"] is None:
                    raise ValueError(f"{det.get('reason', 'no face found')} by {det['detector']}: is there a "
                                     "face in the photo? (or give --landmarks for it)")
                pts, lm_src = np.asarray(det["points"], np.float64), det["detector"]
            wh = (img.shape[1], img.shape[0])
            head = None if hd_file is None else load_mask(hd_file, wh)
            if mk_file is not None:
                skin, mk_src = load_mask(mk_file, wh), str(mk_file)
                if need_head_mask and head is None:
                    from process_data.masks import compute_masks
                    head, _ = compute_masks(img, pts)
            else:
                from process_data.masks import compute_masks
                head_pd, skin = compute_masks(img, pts)
                head = head_pd if head is None else head
                mk_src = "process_data.masks"
            if (skin > 127).sum() < 50:
                raise ValueError(f"the skin mask covers only {(skin > 127).sum()} pixels; check --mask")
        except ValueError as e:
            failed[name] = str(e)
            log(f"[single_view] {name}: left out: {e}")
            continue
        pre_s[name] = time.perf_counter() - t0
        sources[name] = {"landmarks": lm_src, "mask": mk_src}
        rows.append((name, p, img, pts, skin, head if head is not None else skin, wh))
    S = int(image_size)
    if not rows:  # the caller reports every failure
        z = torch.zeros
        return ImageBatch(names=[], image_paths=[], images=z(0, 3, S, S), landmarks=z(0, 68, 2),
                          skin_mask=z(0, 1, S, S), head_mask=z(0, 1, S, S), scale=z(0), offset=z(0, 2),
                          orig_size=torch.zeros(0, 2, dtype=torch.int64), size=(S, S), failed=failed,
                          sources=sources, preprocess_s=pre_s)
    ims, lms, skins, heads, scales, offs, sizes = ([] for _ in range(7))
    for name, p, img, pts, skin, head, wh in rows:
        s, off = _letterbox(wh, S)
        ims.append(_warp(img, s, off, S))
        skins.append(_warp(skin, s, off, S))
        heads.append(_warp(head, s, off, S))
        lms.append(pts * s + np.asarray(off))
        scales.append(s)
        offs.append(off)
        sizes.append(wh)
    f32 = torch.float32
    return ImageBatch(
        names=[r[0] for r in rows], image_paths=[r[1] for r in rows],
        images=torch.from_numpy(np.stack(ims)).permute(0, 3, 1, 2).to(f32) / 255.0,
        landmarks=torch.tensor(np.stack(lms), dtype=f32),
        skin_mask=torch.from_numpy(np.stack(skins))[:, None].to(f32) / 255.0,
        head_mask=torch.from_numpy(np.stack(heads))[:, None].to(f32) / 255.0,
        scale=torch.tensor(scales, dtype=f32), offset=torch.tensor(offs, dtype=f32),
        orig_size=torch.tensor(sizes, dtype=torch.int64), size=(S, S),
        failed=failed, sources=sources, preprocess_s=pre_s)
