"""The sequence folder layout: ``SCENE/images/<camera>/<frame>.<ext>`` and the per-frame scene
folders ``SCENE/frames/<frame>/images/<camera><ext>`` made of relative links to those images
(copies where the file system has no symlinks). A single camera's video is ``images/cam0/``.

:func:`read_layout` lists cameras and frames and refuses a malformed folder with a message that
names the folder or file and says what to do; :func:`frame_scenes` makes the frame folders,
which load_scene and process_data read as ordinary scenes. Inputs are only read.
"""
from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from fitting.images import IMAGE_SUFFIXES, check_unique_stems

__all__ = ["SequenceLayout", "read_layout", "is_sequence", "frame_scenes", "select_frames", "link_image"]

_SHOWN = 5  # frames named in a message before "and N more"


@dataclass
class SequenceLayout:
    """cameras: camera folder names, sorted; frames: frame stems every camera has, sorted;
    files: {camera: {frame: image file name}}; dropped: {frame: [cameras lacking it]} (only with
    ``allow_missing``); warnings: one line per dropped frame."""

    root: Path
    cameras: list
    frames: list
    files: dict
    dropped: dict = field(default_factory=dict)
    warnings: list = field(default_factory=list)

    def path(self, camera: str, frame: str) -> Path:
        """The image of ``camera`` at ``frame``: SCENE/images/<camera>/<frame><ext>."""
        try:
            return self.root / "images" / camera / self.files[camera][frame]
        except KeyError:
            raise KeyError(f"{self.root / 'images'}: no image of camera {camera!r} at frame {frame!r}") from None


def _listing(names, n: int = _SHOWN) -> str:
    names = list(names)
    return ", ".join(names[:n]) + (f" and {len(names) - n} more" if len(names) > n else "")


def _images_dir(scene_dir) -> Path:
    d = Path(scene_dir) / "images"
    if not d.is_dir():
        raise ValueError(f"{scene_dir} has no images/ folder: a sequence is SCENE/images/<camera>/<frame>.png "
                         "(jpg or png; one camera's video: images/cam0/<frame>.png)")
    return d


def is_sequence(scene_dir) -> bool:
    """True when SCENE/images holds sub-folders (a sequence), False for loose images (one capture)."""
    d = Path(scene_dir) / "images"
    return d.is_dir() and any(p.is_dir() and not p.name.startswith(".") for p in d.iterdir())


def read_layout(scene_dir, allow_missing: bool = False) -> SequenceLayout:
    """List a sequence folder's cameras and frames.

    Raises ValueError (naming the folder or file, saying what to do) for: no images/ folder;
    loose images beside camera folders; a camera folder with no image; two images of one
    camera sharing a stem; a frame some cameras lack (unless ``allow_missing``: the frame is
    then dropped and a warning recorded in the layout); no frame every camera has."""
    root = Path(scene_dir)
    images = _images_dir(root)
    entries = [p for p in sorted(images.iterdir()) if not p.name.startswith(".")]
    dirs = [p for p in entries if p.is_dir()]
    loose = [p.name for p in entries if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES]
    if not dirs:
        raise ValueError(f"{images} holds no camera folder: a sequence is images/<camera>/<frame>.png "
                         "(a single capture, images/<view>.png, is fitted with run_fitting.py --scene_dir SCENE)")
    if loose:
        raise ValueError(f"{images} mixes image files ({_listing(loose)}) with camera folders "
                         f"({_listing(p.name for p in dirs)}): a sequence is images/<camera>/<frame>, a single "
                         "capture is images/<view>; move the loose images into a camera folder or out of images/")
    files = {}
    for d in dirs:
        names = sorted(p.name for p in d.iterdir()
                       if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith("."))
        if not names:
            raise ValueError(f"{d} holds no .jpg/.jpeg/.png image: put camera {d.name!r}'s frames there "
                             "(<frame>.png) or remove the folder")
        check_unique_stems(names, str(d), fix="keep one file per frame")
        files[d.name] = {Path(n).stem: n for n in names}
    cameras = list(files)
    every = set.intersection(*(set(f) for f in files.values()))
    union = set().union(*(set(f) for f in files.values()))
    dropped = {fr: [c for c in cameras if fr not in files[c]] for fr in sorted(union - every)}
    warnings = []
    if dropped:
        lacking = {}
        for fr, cs in dropped.items():
            for c in cs:
                lacking.setdefault(c, []).append(fr)
        detail = "; ".join(f"camera {c!r} lacks frame(s) {_listing(frs)}" for c, frs in lacking.items())
        if not allow_missing:
            raise ValueError(f"{images}: {detail}. Every camera needs every frame: add the missing images, "
                             "remove those frames from the other cameras, or allow dropping them "
                             "(allow_missing=True)")
        warnings = [f"frame {fr} dropped: camera(s) {', '.join(cs)} lack it" for fr, cs in dropped.items()]
    frames = sorted(every)
    if not frames:
        raise ValueError(f"{images}: no frame is shared by all cameras ({', '.join(cameras)}): frames are matched "
                         "by file stem (images/<camera>/<frame>.png), so name each frame alike in every camera")
    return SequenceLayout(root, cameras, frames, files, dropped, warnings)


def select_frames(frames: list, spec: str | None) -> list:
    """The frames a ``START:STOP:STEP`` string picks, as Python slices them (positions in
    ``frames``, not frame names; any part may be empty; a single ``N`` is the N-th frame)."""
    if spec is None or str(spec).strip() == "":
        return list(frames)
    parts = str(spec).split(":")
    try:
        if len(parts) == 1:
            i = int(parts[0])
            return [frames[i]]
        if len(parts) > 3:
            raise ValueError
        start, stop, step = (int(p) if p.strip() else None for p in parts + [""] * (3 - len(parts)))
    except (ValueError, IndexError):
        raise ValueError(f"--frames {spec!r}: expected START:STOP:STEP of whole numbers (e.g. 0:100:5; parts may "
                         f"be empty) or one frame position, within the {len(frames)} frames") from None
    if step == 0:
        raise ValueError(f"--frames {spec!r}: STEP must not be 0")
    picked = list(frames)[slice(start, stop, step)]
    if not picked:
        raise ValueError(f"--frames {spec!r} picks no frame of the {len(frames)} (positions 0 to {len(frames) - 1})")
    return picked


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


def frame_scenes(layout: SequenceLayout, scene_dir=None, frames: list | None = None) -> list:
    """Make or refresh ``scene_dir``/frames/<frame>/images/<camera><ext> (default: the layout's
    folder) for ``frames`` (default: all of the layout's) and return the frame folders in order.
    Idempotent: links already right are kept; a camera's entry of another extension (the input
    changed) is replaced. Preprocessing files beside images/ are left to process_data, which
    decides whether they are stale."""
    root = Path(scene_dir) if scene_dir is not None else layout.root
    out = []
    for fr in (layout.frames if frames is None else frames):
        if fr not in layout.frames:
            raise ValueError(f"{root / 'images'}: no frame {fr!r} in every camera (frames: {_listing(layout.frames)})")
        folder = root / "frames" / fr
        names = {c: f"{c}{Path(layout.files[c][fr]).suffix}" for c in layout.cameras}
        img_dir = folder / "images"
        if img_dir.is_dir():
            for p in img_dir.iterdir():  # ours only: a camera's stale entry (the input's extension changed)
                if Path(p.name).stem in names and p.name != names[Path(p.name).stem]:
                    p.unlink()
        for c in layout.cameras:
            link_image(img_dir / names[c], layout.path(c, fr))
        out.append(folder)
    return out
