"""``python -m fitting.export OUTPUT_DIR --format nerfstudio,colmap``: write training exports
for an existing fit (a run_fitting output folder). docs/EXPORTS.md has one section per format."""
from __future__ import annotations

import argparse
import sys

from fitting.export import DEFAULT_FORMATS, FORMATS


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m fitting.export", description=__doc__,
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("output_dir", help="a run_fitting output folder (with params.npz, mesh.obj, report.json)")
    p.add_argument("--format", default=",".join(DEFAULT_FORMATS),
                   help=f"comma-separated: {', '.join(FORMATS)} (vhap = gaussian-avatars), 'all'")
    p.add_argument("--out", default="", help="folder for the exports (default OUTPUT_DIR/exports); one subfolder per format")
    p.add_argument("--preprocess_dir", default="",
                   help="preprocessing folder with masks/ and landmarks.json (default: report.json's)")
    p.add_argument("--flame_model", default="", help="the FLAME model of the fit (default: fit_details.json's)")
    p.add_argument("--val_cameras", default="", help="gaussian-avatars: views held out for validation (names, stems or indices, comma-separated)")
    p.add_argument("--test_cameras", default="", help="gaussian-avatars: views held out for testing")
    p.add_argument("--background", default="white", choices=["white", "black"],
                   help="gaussian-avatars: the colour the photo is composited over outside the head mask")
    a = p.parse_args(argv)
    from fitting.export.run import export_formats
    split = lambda s: [x for x in s.split(",") if x] or None  # noqa: E731
    try:
        export_formats(a.output_dir, a.format, out_root=a.out or None, prep_dir=a.preprocess_dir or None,
                       model_path=a.flame_model or None, val_cameras=split(a.val_cameras),
                       test_cameras=split(a.test_cameras), background=a.background, verbose=True)
    except (ValueError, FileNotFoundError) as e:
        print(f"python -m fitting.export: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
