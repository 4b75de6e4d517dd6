"""Write the training exports of a finished fit: :func:`export_formats` (called by
run_fitting's ``--export`` inside the staged output folder, and by ``python -m fitting.export``
on an existing fit). Each format goes to ``<fit>/exports/<format>/``, staged and renamed whole."""
from __future__ import annotations

import time
from pathlib import Path

from fitting.export import FORMATS
from fitting.export.source import load_fit, model_note, staged_folder

__all__ = ["export_formats", "parse_formats", "FOLDERS"]

ALIASES = {"vhap": "gaussian-avatars", "gaussian_avatars": "gaussian-avatars", "instant_ngp": "instant-ngp",
           "ngp": "instant-ngp", "3dgs": "colmap"}
FOLDERS = {"nerfstudio": "nerfstudio", "instant-ngp": "instant_ngp", "gaussian-avatars": "gaussian_avatars",
           "deca": "deca", "colmap": "colmap"}


def parse_formats(spec) -> list:
    """'nerfstudio,colmap' | ['all'] | 'none' -> canonical format names (ValueError on others)."""
    items = spec if isinstance(spec, (list, tuple)) else [spec]
    out = []
    for item in items:
        for f in str(item).replace(" ", ",").split(","):
            f = f.strip().lower()
            if not f or f == "none":
                continue
            if f == "all":
                out.extend(FORMATS)
                continue
            f = ALIASES.get(f, f)
            if f not in FORMATS:
                raise ValueError(f"unknown export format {f!r}: give one or more of {', '.join(FORMATS)}, "
                                 "'all' or 'none'")
            out.append(f)
    return list(dict.fromkeys(out))


def export_formats(folder, formats, out_root=None, prep_dir=None, model_path=None, tracks=None, val_cameras=None,
                   test_cameras=None, background: str = "white", verbose: bool = False) -> dict:
    """Write each of ``formats`` for the fit in ``folder`` into ``out_root/<format>`` (default
    ``folder/exports``). ``tracks``: whether points3D.ply holds SfM track points (default:
    report.json says so). Returns {format: (path, seconds)}."""
    from fitting.export.colmap import write_colmap
    from fitting.export.deca import write_deca
    from fitting.export.gaussian_avatars import write_gaussian_avatars
    from fitting.export.instant_ngp import write_instant_ngp
    from fitting.export.nerfstudio import write_nerfstudio

    formats = parse_formats(formats)
    if not formats:
        return {}
    fit = load_fit(folder, prep_dir=prep_dir, model_path=model_path, tracks=tracks)
    out_root = Path(out_root) if out_root is not None else Path(folder) / "exports"
    writers = {"nerfstudio": write_nerfstudio, "instant-ngp": write_instant_ngp, "deca": write_deca,
               "colmap": write_colmap,
               "gaussian-avatars": lambda f, d: write_gaussian_avatars(f, d, val_cameras, test_cameras, background)}
    done = {}
    for f in formats:
        t0 = time.perf_counter()
        dst = out_root / FOLDERS[f]
        with staged_folder(dst) as tmp:
            writers[f](fit, tmp)
        done[f] = (dst, time.perf_counter() - t0)
        if verbose:
            print(f"[export] {f}: {dst} ({done[f][1]:.1f} s)")
    note = model_note(fit)
    if note and ({"gaussian-avatars", "deca"} & set(formats)):
        print(f"[export] warning: {note}")
    return done
