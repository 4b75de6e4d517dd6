"""Scene files: listing images (read with the project's one reader, fitting.images), atomic writes."""
from __future__ import annotations

from pathlib import Path

from fitting.atomic import atomic_write_bytes, atomic_write_json, atomic_write_png  # noqa: F401 (re-exported)
from fitting.images import IMAGE_SUFFIXES, check_unique_stems, exif_orientation, read_image  # noqa: F401


def list_images(images_dir) -> tuple[list[str], dict[str, str]]:
    """Sorted image file names in ``images_dir`` and ``{name: reason}`` for the files skipped.

    Raises ValueError when the folder is missing, holds no image at all, or two images share a
    stem (``face.jpg`` and ``face.png``: their masks would overwrite each other)."""
    images_dir = Path(images_dir)
    if not images_dir.is_dir():
        raise ValueError(f"{images_dir} is not a folder: a scene needs an images/ folder of jpg or png files")
    names, skipped = [], {}
    for p in sorted(images_dir.iterdir()):
        if p.name.startswith("."):
            continue
        if not p.is_file():
            skipped[p.name] = "not a file"
        elif p.suffix.lower() not in IMAGE_SUFFIXES:
            skipped[p.name] = f"not an image (suffix {p.suffix or 'none'}; expected .jpg, .jpeg or .png)"
        else:
            names.append(p.name)
    if not names:
        raise ValueError(f"{images_dir} holds no .jpg/.jpeg/.png image: put the scene's photos there")
    check_unique_stems(names, str(images_dir))
    return names, skipped
