"""A tiny synthetic scene (the demo's generator on the session's stand-in, 3 views at 96 px)
and the options of a ~2 s fit of it, for the reliability tests."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def tiny_scene(tmp_path_factory, standin_path) -> Path:
    from fitting.synthetic_scene import make_scene
    return make_scene(tmp_path_factory.mktemp("reliability") / "scene", standin_path, n_views=3, width=96,
                      height=96, n_shape=10, n_exp=5)


@pytest.fixture
def scene(tiny_scene, tmp_path) -> Path:
    """A private copy of the tiny scene (preprocessed once, shared)."""
    return Path(shutil.copytree(tiny_scene, tmp_path / "scene"))


@pytest.fixture
def fit_args(standin_path):
    """run_fitting.py options of a quick fit of ``scene`` into ``out`` (scene name ``tiny``)."""
    def args(scene: Path, out: Path, *more) -> list:
        return [str(a) for a in ("--scene_dir", scene, "--savefolder", out, "--scene_name", "tiny",
                                 "--flame_model", standin_path, "--image_size", 48, "--n_shape", 10, "--n_exp", 5,
                                 "--geom_rounds", 1, "--geom_lm_iters", 2, "--photo_iters", 2, "--tex_res", 16,
                                 "--progress", "false", *more)]
    return args
