"""The sequence folder layout: ``SCENE/images/<camera>/<frame>.<ext>`` and the per-frame scene
folders ``SCENE/frames/<frame>/images/<camera><ext>`` made of links to those images."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

__all__ = ["link_image"]


def link_image(link: Path, target: Path) -> Path:
    """Make ``link`` a relative symlink to ``target`` (a copy where the file system refuses
    symlinks), replacing whatever ``link`` was; ``target`` is only read."""
    link, target = Path(link), Path(target)
    link.parent.mkdir(parents=True, exist_ok=True)
    rel = os.path.relpath(target, link.parent)
    if link.is_symlink() and os.readlink(link) == rel:
        return link
    tmp = link.with_name(f".{link.name}.tmp{os.getpid()}")
    if tmp.exists() or tmp.is_symlink():
        tmp.unlink()
    try:
        os.symlink(rel, tmp)
    except OSError:  # no symlinks here (some Windows or network file systems): a copy keeps the layout usable
        shutil.copyfile(target, tmp)
    os.replace(tmp, link)  # atomic: a reader sees the old entry or the new one, never none
    return link
