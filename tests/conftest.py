"""Shared fixtures and helpers. Real data lives in ../shared/data beside the repository (never copied in)."""
from __future__ import annotations

import hashlib
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """Path to ../shared/data; skips the test when it is absent (a fresh clone elsewhere)."""
    if not SHARED_DATA.is_dir():
        pytest.skip("../shared/data is absent")
    return SHARED_DATA


@pytest.fixture(autouse=True)
def _deterministic():
    torch.manual_seed(0)
    yield


@pytest.fixture(scope="session")
def ffhq(shared_data) -> Path:
    """../shared/data/ffhq: ten 256x256 face photos with reference landmarks (skips when absent)."""
    d = shared_data / "ffhq"
    if not d.is_dir():
        pytest.skip("ffhq data absent")
    return d


def real_sample_args(shared_data: Path, root: Path, *extra: str) -> list:
    """fit_scene options for ../shared/data/multiview_sample with configs/scene.txt at 128 px, the
    stand-in on the FLAME template; outputs, preprocessing and stand-in under ``root``."""
    topo = shared_data / "flame_topology"
    return ["--config", str(REPO / "configs" / "scene.txt"), "--scene_dir", str(shared_data / "multiview_sample"),
            "--savefolder", str(root), "--preprocess_dir", str(root / "prep"),
            "--standin_template", str(topo / "head_template_mesh.obj"),
            "--standin_embedding", str(topo / "landmark_embedding.npy"), "--standin_dir", str(root / "standin"),
            "--image_size", "128", "--progress", "false", *extra]


@pytest.fixture(scope="session")
def real_sample_estimate(shared_data, tmp_path_factory) -> tuple:
    """(folder, report) of the default fit of the 8 real views (preprocessing, SfM, the estimate
    fit with its tracks, 5 photometric iterations; ~20 s), shared by the tests that read it or
    start from its cameras. Its outputs are in folder / "multiview_sample"."""
    from fitting.config import parse_config
    from fitting.pipeline import fit_scene
    root = tmp_path_factory.mktemp("real_sample")
    return root, fit_scene(parse_config(real_sample_args(shared_data, root, "--photo_iters", "5")))


def pytest_configure(config):
    config.addinivalue_line("markers", "cuda: needs a CUDA device (skipped without one)")
    config.addinivalue_line("markers", "slow: takes more than a few seconds")


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="no CUDA device")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def standin_path(tmp_path_factory) -> Path:
    """The procedural synthetic stand-in model (built once per test session, ~4 s)."""
    from fitting.synthetic import build_standin
    return build_standin(tmp_path_factory.mktemp("standin") / "standin.pkl")


@pytest.fixture(scope="session")
def flame_topology_standin_path(tmp_path_factory, shared_data) -> Path:
    """The stand-in built on the shared FLAME template and DECA embedding (5023 vertices)."""
    from fitting.synthetic import build_standin
    topo = shared_data / "flame_topology"
    return build_standin(tmp_path_factory.mktemp("standin_flame") / "standin_flame.pkl",
                         template=topo / "head_template_mesh.obj",
                         landmark_embedding=topo / "landmark_embedding.npy")


@pytest.fixture(scope="session")
def standin(standin_path):
    from fitting.flame import FLAME
    return FLAME(standin_path)


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
