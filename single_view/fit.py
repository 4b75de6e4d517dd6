"""Single-image FLAME fitting: ``python single_view/fit.py IMAGE_OR_FOLDER [options]``, and FLAME
tracked over monocular videos: ``python single_view/fit.py VIDEO.mp4|FOLDER_OF_VIDEOS``
(:mod:`single_view.video`, docs/VIDEO.md).

Thin entry point over :func:`single_view.batch.fit_images`; options are fitting/config.py's
(the same names and config files as run_fitting.py) plus the single-image ones in
single_view/options.py (``python single_view/fit.py --help``); see docs/SINGLE_VIEW.md.
A folder is fitted as one batch; photos without a face are reported and the others fit.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from single_view.batch import fit_images  # noqa: E402
from single_view.options import parse_single_view  # noqa: E402


def is_video_input(path) -> bool:
    """A video file, or a folder holding videos and no photo."""
    from fitting.images import IMAGE_SUFFIXES
    from single_view.video_io import is_video
    p = Path(path)
    if p.is_file():
        return is_video(p)
    if not p.is_dir():
        return False
    files = [q for q in p.iterdir() if q.is_file() and not q.name.startswith(".")]
    return any(is_video(q) for q in files) and not any(q.suffix.lower() in IMAGE_SUFFIXES for q in files)


def main_video(cfg) -> int:
    from single_view.video import fit_videos
    try:
        res = fit_videos(cfg)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; videos whose report.json was written are complete; rerun with --resume true to "
              "continue the others from their last chunk", file=sys.stderr)
        return 130
    summary = {"savefolder": res["savefolder"], "device": res["device"], "failed": res["failed"],
               "videos": {n: {k: r[k] for k in ("frames", "frames_with_face", "interpolated_frames",
                                                "landmark_rmse_px", "timing_s")} for n, r in res["videos"].items()}}
    print(json.dumps(summary, indent=1))
    return 0


def main(argv=None) -> int:
    try:
        cfg = parse_single_view(argv)
        if is_video_input(cfg.input):
            return main_video(cfg)
        res = fit_images(cfg)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; photos whose report.json was written are complete; rerun the same command to fit "
              "the rest (single-image fits keep no checkpoint)", file=sys.stderr)
        return 130
    summary = {"savefolder": res["savefolder"], "device": res["device"], "timing_s": res["timing_s"],
               "images": {n: {k: r[k] for k in ("landmark_nme", "photometric_l1_first", "photometric_l1_last")}
                          for n, r in res["images"].items()},
               "failed": res["failed"]}
    print(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
