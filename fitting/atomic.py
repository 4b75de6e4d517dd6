"""Atomic file writes: a temp file in the target's folder, then ``os.replace``.

A reader never sees a half-written file, and an interrupted run leaves the previous file in
place. Every output of the project (preprocessing, fits, exports, checkpoints) goes through
here.
"""
from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path

import numpy as np


_TMP_SUFFIX = ".tmp"


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike):
    """Yield a temp path beside ``path``; on success move it into place, else delete it.

    For writers that want a file name (``torch.save``, image libraries)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=_TMP_SUFFIX, dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; outputs get normal permissions
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def remove_orphan_temps(folder: str | os.PathLike) -> list[Path]:
    """Delete the temp files that writes killed midway (``kill -9``) left under ``folder``.
    Only while no other process writes there (under the output folder's lock). Returns them."""
    orphans = [p for p in Path(folder).rglob(f".*{_TMP_SUFFIX}") if p.is_file()]
    for p in orphans:
        p.unlink(missing_ok=True)
    return orphans


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically. Returns the path."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def atomic_write_json(path: str | os.PathLike, obj, default=None) -> Path:
    """JSON (indented, newline-terminated) written atomically; ``default`` as in ``json.dumps``."""
    return atomic_write_bytes(path, (json.dumps(obj, indent=1, default=default) + "\n").encode())


def atomic_write_png(path: str | os.PathLike, image: np.ndarray) -> Path:
    """image: (H, W) uint8 or (H, W, 3) uint8 RGB -> PNG, atomically."""
    import cv2
    image = np.asarray(image)
    if image.ndim == 3:
        image = image[:, :, ::-1]  # OpenCV encodes BGR
    ok, buf = cv2.imencode(".png", np.ascontiguousarray(image))
    if not ok:
        raise RuntimeError(f"could not encode {path} as PNG")
    return atomic_write_bytes(path, buf.tobytes())
