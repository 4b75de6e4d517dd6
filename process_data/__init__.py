"""Offline preprocessing of a scene folder: pad/crop, 68 landmarks, head/skin masks, intrinsics.

``run_all(scene_dir, out_dir=None, force=False, **options)`` runs every missing or stale stage;
``python -m process_data SCENE`` is its command line. See docs/PREPROCESSING.md.
"""
from __future__ import annotations

__all__ = ["run_all"]


def run_all(scene_dir, out_dir=None, force=False, **options):
    """Run the missing or stale stages of a scene; returns the output folder (Path)."""
    from .pipeline import run_all as _run_all

    return _run_all(scene_dir, out_dir=out_dir, force=force, **options)
