"""The demo's synthetic scene (``--demo true``): the stand-in head rendered in known cameras, with
ground truth (:mod:`fitting.synthetic_scene`), built once per recipe and then fitted like any
scene."""
from __future__ import annotations

import json
from contextlib import contextmanager
from pathlib import Path

import torch

from fitting.export import write_json
from fitting.model import load_model, standin_path

__all__ = ["ensure_demo_scene"]

_DEMO_RECIPE = "demo_recipe.json"
# The scene is built with one thread: the render's float32 sums and pycolmap's multi-threaded
# mapping follow the thread count, and a last-bit change of one pixel moves SIFT's tracks, so a
# scene built with 2 threads would differ from one built with 16. (SfM's mapper always runs on
# one thread; its SIFT extraction and matching use every core: their results do not depend on it.)
BUILD_THREADS = 1


@contextmanager
def _torch_threads(n: int):
    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def _demo_recipe(cfg) -> dict:
    """Everything the demo scene depends on: rebuilt when any of it changes."""
    keys = ["demo_views", "demo_width", "demo_height", "demo_fov_deg", "demo_distance", "demo_yaw_deg",
            "demo_pitch_deg", "demo_noise_px", "demo_shape_std", "demo_exp_std", "demo_faceless_views",
            "demo_sfm", "demo_sfm_max_size", "demo_sift_dsp", "demo_sfm_mask", "seed", "n_shape", "n_exp"]
    from fitting.synthetic_scene import SCENE_VERSION
    return {"model": standin_path(cfg).name, "scene_version": SCENE_VERSION, "build_threads": BUILD_THREADS,
            **{k: getattr(cfg, k) for k in keys}}


def ensure_demo_scene(cfg, scene_dir: Path) -> bool:
    """Build the demo's synthetic scene unless an up-to-date one is there. A scene that this
    tool generated from another recipe (older stand-in, other demo_* options or seed) is
    replaced: its ground truth would no longer match the model. Returns True when built."""
    import shutil

    from fitting.synthetic_scene import make_scene
    recipe = _demo_recipe(cfg)
    marker = scene_dir / _DEMO_RECIPE
    if (scene_dir / "ground_truth.npz").is_file():
        old = json.loads(marker.read_text()) if marker.is_file() else None
        if old == recipe:
            return False
        manifest = scene_dir / "manifest.json"
        ours = manifest.is_file() and "synthetic" in json.loads(manifest.read_text()).get("stages", {})
        if not ours:
            raise ValueError(f"{scene_dir} holds a ground-truth scene that the demo did not generate; "
                             "give another --scene_dir for the demo")
        print(f"[demo] {scene_dir} was built from another recipe (model, options or seed); rebuilding it")
        shutil.rmtree(scene_dir)
    with _torch_threads(BUILD_THREADS):
        load_model(cfg, "cpu")  # builds the stand-in when missing
        make_scene(scene_dir, standin_path(cfg), n_views=cfg.demo_views, width=cfg.demo_width,
                   height=cfg.demo_height, fov_deg=cfg.demo_fov_deg, distance=cfg.demo_distance,
                   yaw_deg=cfg.demo_yaw_deg, pitch_deg=cfg.demo_pitch_deg, noise_px=cfg.demo_noise_px,
                   shape_std=cfg.demo_shape_std, exp_std=cfg.demo_exp_std,
                   faceless_views=cfg.demo_faceless_views, seed=cfg.seed, n_shape=cfg.n_shape, n_exp=cfg.n_exp)
    if cfg.demo_sfm:
        # the SfM that process_data runs on a real scene, keeping the scene's known K (cameras.json
        # source "known"); the scene stays the generator's (its manifest too), so its exact
        # landmarks and masks are used as they are and never re-detected
        from process_data.files import list_images
        from process_data.pipeline import known_cameras, sfm_cameras
        cams_path = scene_dir / "cameras.json"
        cams, _ = sfm_cameras(scene_dir, scene_dir / "images", list_images(scene_dir / "images")[0],
                              max_image_size=cfg.demo_sfm_max_size, known=known_cameras(cams_path),
                              sift_dsp=cfg.demo_sift_dsp,
                              keypoint_masks=scene_dir / "masks" / "head" if cfg.demo_sfm_mask else None)
        write_json(cams_path, cams)
    write_json(marker, recipe)
    return True
