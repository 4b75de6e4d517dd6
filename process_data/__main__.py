"""python -m process_data SCENE_DIR [--out DIR] [--force] [--backend dlib|fan] [--masks default|bisenet] ...

Options use underscores like run_fitting.py (``--pad_mode``); the older hyphenated spellings
(``--pad-mode``) still work."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from fitting.output_folder import check_writable, writable_dir

from .pipeline import ALL_STAGES, DEFAULTS, run_all


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m process_data",
                                description="Preprocess a scene folder (SCENE/images/*.jpg|png): landmarks, "
                                            "pad/crop, head and skin masks, pycolmap intrinsics.")
    p.add_argument("scene", help="scene folder holding images/")
    p.add_argument("--out", default=None, help="output folder (default: the scene folder, beside images/)")
    p.add_argument("--force", action="store_true", help="redo every stage even when its outputs are up to date")
    p.add_argument("--stages", nargs="+", choices=ALL_STAGES[1:], default=None, help="run only these stages")
    p.add_argument("--backend", choices=["dlib", "fan"], default=DEFAULTS["backend"], help="landmark detector")
    p.add_argument("--masks", choices=["default", "bisenet"], default=DEFAULTS["masks"],
                   help="head / skin masks: skin-colour model + GrabCut (default), or the face-parsing BiSeNet")
    p.add_argument("--bisenet_weights", "--bisenet-weights", default=None, help="face-parsing BiSeNet weights (79999_iter.pth)")
    p.add_argument("--pad_mode", "--pad-mode", choices=["pad", "crop"], default=DEFAULTS["pad_mode"],
                   help="make the derived squares by padding the photo, or by cropping around the face")
    p.add_argument("--pad_size", "--pad-size", type=int, default=DEFAULTS["pad_size"], help="side of the derived square images")
    p.add_argument("--crop_margin", "--crop-margin", type=float, default=DEFAULTS["crop_margin"],
                   help="crop mode: side of the square crop, as a multiple of the face box's mean side")
    p.add_argument("--fov", type=float, default=DEFAULTS["fov"], help="fallback horizontal field of view, degrees")
    p.add_argument("--sfm_max_size", "--sfm-max-size", type=int, default=DEFAULTS["sfm_max_size"],
                   help="longest image side used for SIFT (keypoints are rescaled to full resolution); views of at most "
                        "half this size are doubled for SIFT")
    p.add_argument("--sequential", action="store_true", help="sequential matching (frames of a video)")
    p.add_argument("--sfm_landmarks", "--sfm-landmarks", choices=["never", "fallback", "always"], default=DEFAULTS["sfm_landmarks"],
                   help="add the 68 landmarks as SfM correspondences: never, only when SIFT alone fails, always")
    p.add_argument("--no_progress", "--no-progress", action="store_true", help="no progress bars")
    return p


def check_output(scene: Path, out: Path | None) -> None:
    """Raise ValueError, before any work, when the outputs could not be written."""
    if out is not None:
        check_writable(out, "--out")
    elif scene.is_dir() and not writable_dir(scene):
        raise ValueError(f"the scene folder {scene} is read-only: give --out DIR to write the preprocessing "
                         "outputs elsewhere")


def main(argv=None) -> int:
    a = build_parser().parse_args(argv)
    stages = None if a.stages is None else ["scan", *a.stages]
    try:
        check_output(Path(a.scene), None if a.out is None else Path(a.out))
        run_all(a.scene, out_dir=a.out, force=a.force, stages=stages, backend=a.backend, masks=a.masks,
                bisenet_weights=a.bisenet_weights, pad_mode=a.pad_mode, pad_size=a.pad_size,
                crop_margin=a.crop_margin, fov=a.fov, sfm_max_size=a.sfm_max_size, sequential=a.sequential,
                sfm_landmarks=a.sfm_landmarks, progress=not a.no_progress)
    except (ValueError, RuntimeError) as e:
        print(f"process_data: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("process_data: interrupted; finished stages are kept (manifest.json); rerun the same command to "
              "continue", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
