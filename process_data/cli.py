"""The stage commands ``python -m process_data.{pad,landmarks,masks,intrinsics} SCENE``: each runs
:func:`process_data.pipeline.run_all` on the stages it needs. The stage modules are the library
(the pipeline imports them); their ``__main__`` blocks call these functions, so no stage module
imports the pipeline. ``python -m process_data`` (all stages) is process_data/__main__.py.
"""
from __future__ import annotations

import argparse
import sys

from .pipeline import run_all

__all__ = ["cli_run", "pad_main", "landmarks_main", "masks_main", "intrinsics_main"]


def cli_run(**kwargs) -> int:
    """run_all for the stage commands: a clear one-line error and exit code 2 instead of a traceback."""
    try:
        run_all(**kwargs)
    except (ValueError, RuntimeError) as e:
        print(f"process_data: error: {e}", file=sys.stderr)
        return 2
    return 0


def _stage_parser(stage: str, description: str) -> argparse.ArgumentParser:
    """The options every stage command has: the scene, where outputs go, and --force."""
    p = argparse.ArgumentParser(prog=f"python -m process_data.{stage}", description=description)
    p.add_argument("scene", help="scene folder with images/")
    p.add_argument("--out", default=None, help="folder for the preprocessing outputs (default: the scene folder)")
    p.add_argument("--force", action="store_true", help="redo the stage even when its outputs are up to date")
    return p


def pad_main(argv=None) -> int:
    p = _stage_parser("pad", "Pad (or crop around the face) every view of a scene to a square.")
    p.add_argument("--mode", choices=["pad", "crop"], default="pad", help="pad to a square, or crop around the face")
    p.add_argument("--size", type=int, default=512, help="side of the square, pixels")
    a = p.parse_args(argv)
    stages = ["scan", "landmarks", "pad"] if a.mode == "crop" else ["scan", "pad"]
    return cli_run(scene_dir=a.scene, out_dir=a.out, force=a.force, stages=stages, pad_mode=a.mode, pad_size=a.size)


def landmarks_main(argv=None) -> int:
    p = _stage_parser("landmarks", "Detect 68 landmarks in every view of a scene (writes landmarks.json).")
    p.add_argument("--backend", choices=["dlib", "fan"], default="dlib", help="landmark detector")
    a = p.parse_args(argv)
    return cli_run(scene_dir=a.scene, out_dir=a.out, force=a.force, stages=["scan", "landmarks"], backend=a.backend)


def masks_main(argv=None) -> int:
    p = _stage_parser("masks", "Head and face-skin masks for every view of a scene (needs landmarks).")
    p.add_argument("--masks", choices=["default", "bisenet"], default="default", help="mask method")
    p.add_argument("--bisenet_weights", "--bisenet-weights", default=None, help="BiSeNet face-parsing weights file")
    a = p.parse_args(argv)
    return cli_run(scene_dir=a.scene, out_dir=a.out, force=a.force, stages=["scan", "landmarks", "masks"],
                   masks=a.masks, bisenet_weights=a.bisenet_weights)


def intrinsics_main(argv=None) -> int:
    p = _stage_parser("intrinsics", "Shared camera intrinsics of a scene with pycolmap (writes cameras.json, sfm/).")
    p.add_argument("--fov", type=float, default=30.0, help="fallback horizontal field of view, degrees")
    p.add_argument("--sfm_max_size", "--sfm-max-size", type=int, default=1024,
                   help="longest image side SIFT and SfM run at, pixels; views of at most half this size are doubled "
                        "for SIFT")
    p.add_argument("--sequential", action="store_true", help="sequential matching (frames of a video)")
    a = p.parse_args(argv)
    return cli_run(scene_dir=a.scene, out_dir=a.out, force=a.force, stages=["scan", "intrinsics"], fov=a.fov,
                   sfm_max_size=a.sfm_max_size, sequential=a.sequential)
