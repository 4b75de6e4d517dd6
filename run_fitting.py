"""Multi-view FLAME fitting: ``python run_fitting.py --config configs/scene.txt``.

Thin entry point over :func:`fitting.pipeline.fit_scene`; every option is in
fitting/config.py (``python run_fitting.py --help``) and docs/FITTING.md.
"""
from __future__ import annotations

import json
import sys

from fitting.config import parse_config
from fitting.pipeline import checkpoint_path, fit_scene


def interrupted_message(cfg) -> str:
    """What Ctrl-C leaves and how to go on."""
    ckpt = None if cfg is None else checkpoint_path(cfg)
    if ckpt is None or not ckpt.is_file():
        return "interrupted before the first checkpoint; rerun the same command to start again"
    return f"interrupted; checkpoint at {ckpt}; rerun with --resume true to continue"


def main(argv=None) -> int:
    cfg = None
    try:
        cfg = parse_config(argv)
        report = fit_scene(cfg)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(interrupted_message(cfg), file=sys.stderr)
        return 130
    from fitting.pipeline import output_folder
    from fitting.viewer import summary_lines
    print("\n".join(summary_lines(report, output_folder(cfg))))
    print(f"  time: {report['timing_s']['total']:.1f} s ({', '.join(f'{k} {v:.1f}' for k, v in report['timing_s'].items() if k != 'total')})")
    if "ground_truth" in report:
        print("  ground truth: " + json.dumps({k: round(v, 4) for k, v in report["ground_truth"].items()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
