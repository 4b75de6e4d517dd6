"""Single-image FLAME fitting: ``python single_view/fit.py IMAGE_OR_FOLDER [options]``.

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


def main(argv=None) -> int:
    try:
        cfg = parse_single_view(argv)
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
