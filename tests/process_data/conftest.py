"""Helpers for process_data tests: small generated scenes in tmp_path."""
from __future__ import annotations

import hashlib
from pathlib import Path

import cv2
import numpy as np
import pytest


def tree_digest(folder: Path) -> dict:
    """{relative path: sha256} of every file under folder (to prove images/ is untouched)."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def _read_rgb(path) -> np.ndarray:
    return cv2.imread(str(path), cv2.IMREAD_COLOR)[:, :, ::-1].copy()


@pytest.fixture
def read_rgb():
    """A function path -> (H, W, 3) uint8 RGB."""
    return _read_rgb


@pytest.fixture
def digest():
    """A function folder -> {relative path: sha256}."""
    return tree_digest
