"""index.html, turntable and the end-of-run summary of a fit (filled in below)."""
from __future__ import annotations


def write_viewer(folder, history=None, prep_dir=None, model_path=None):
    return None
