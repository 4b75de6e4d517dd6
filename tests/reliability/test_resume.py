"""``--resume true`` with a checkpoint it cannot continue: other model options, or a damaged
file. Either way the user reads which file and what to do, before any fitting starts."""
from __future__ import annotations

import re
import shutil

import pytest
import torch

from fitting.config import parse_config
from fitting.model import standin_path as model_standin_path
from fitting.pipeline import fit_scene
from fitting.state import check_resume_options, load_checkpoint


def _tiny_args(root, *extra) -> list[str]:
    """The smallest demo fit: 3 views at 48 px, one LM iteration, no photometric stage."""
    return ["--demo", "true", "--scene_dir", str(root / "scene"), "--savefolder", str(root / "out"),
            "--scene_name", "demo", "--standin_dir", str(root / "standin"), "--demo_views", "3",
            "--demo_width", "96", "--demo_height", "96", "--image_size", "48", "--geom_lm_iters", "1",
            "--geom_rounds", "1", "--photo_iters", "0", "--n_shape", "10", "--n_exp", "5", "--tex_res", "16",
            "--progress", "false", "--write_images", "false", *extra]


@pytest.fixture(scope="module")
def tiny_fit(tmp_path_factory, standin_path):
    root = tmp_path_factory.mktemp("resume")
    cfg = parse_config(_tiny_args(root))
    # the session's stand-in is the one this config would build (procedural, seed 0): copy, not rebuild
    target = model_standin_path(cfg)
    target.parent.mkdir()
    for src in standin_path.parent.glob(f"{standin_path.stem}*"):
        shutil.copy(src, target.with_name(src.name.replace(standin_path.stem, target.stem, 1)))
    fit_scene(cfg)
    return root


def test_resume_options_check_names_each_changed_option():
    saved = {"n_shape": 50, "n_exp": 20, "tex_res": 64, "photo_iters": 4}
    check_resume_options(saved, {**saved, "photo_iters": 100, "w_lmk": 2.0}, "out/checkpoint.pt")  # free to change
    check_resume_options({}, {"n_shape": 100}, "out/checkpoint.pt")  # older checkpoints: nothing to compare
    with pytest.raises(ValueError) as ei:
        check_resume_options(saved, {**saved, "n_shape": 100, "tex_res": 32}, "out/checkpoint.pt")
    msg = str(ei.value)
    assert "out/checkpoint.pt" in msg and "--n_shape 50 then, 100 now" in msg and "--tex_res 64 then, 32 now" in msg
    assert "n_exp" not in msg and "rerun without --resume" in msg and "old options" in msg


def test_resume_with_another_n_shape_says_what_differs(tiny_fit):
    cfg = parse_config(_tiny_args(tiny_fit, "--resume", "true", "--n_shape", "8"))
    with pytest.raises(ValueError, match=re.escape("--n_shape 10 then, 8 now")) as ei:
        fit_scene(cfg)
    assert str(tiny_fit / "out" / "demo" / "checkpoint.pt") in str(ei.value)


def test_resume_from_a_truncated_checkpoint_says_rerun_without_resume(tiny_fit, tmp_path):
    good = (tiny_fit / "out" / "demo" / "checkpoint.pt").read_bytes()
    bad = tmp_path / "demo" / "checkpoint.pt"
    bad.parent.mkdir()
    bad.write_bytes(good[: len(good) // 2])
    cfg = parse_config(_tiny_args(tiny_fit, "--resume", "true", "--savefolder", str(tmp_path)))
    with pytest.raises(ValueError, match="corrupt or truncated.*rerun without --resume") as ei:
        fit_scene(cfg)
    assert str(bad) in str(ei.value)


def test_a_resumed_fit_reports_its_geometry_convergence(tiny_fit, tmp_path):
    """The convergence check runs once, after the geometry stage; a fit resumed after that
    stage reports the check from its checkpoint."""
    import json
    first = json.loads((tiny_fit / "out" / "demo" / "fit_details.json").read_text())["geometry_convergence"]
    assert first is not None and first["step_sigma_max"] > 0, first
    ck = torch.load(tiny_fit / "out" / "demo" / "checkpoint.pt", weights_only=True)
    assert ck["extra"]["geometry_convergence"] == first
    ck["progress"] = {"done": ["init", "geometry"], "stage": "photometric", "pos": 0}
    (tmp_path / "demo").mkdir()
    torch.save(ck, tmp_path / "demo" / "checkpoint.pt")
    fit_scene(parse_config(_tiny_args(tiny_fit, "--resume", "true", "--savefolder", str(tmp_path))))
    assert json.loads((tmp_path / "demo" / "fit_details.json").read_text())["geometry_convergence"] == first


@pytest.mark.parametrize("content", [b"", b"not a checkpoint" * 20, "a list"])
def test_damaged_or_foreign_checkpoint_is_a_clear_error(tmp_path, content):
    path = tmp_path / "checkpoint.pt"
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        torch.save([1, 2, 3], path)
    with pytest.raises(ValueError, match=re.escape(str(path)) + ".*rerun without --resume"):
        load_checkpoint(path)
