"""``python -m fitting.sequence SCENE --cameras CALIB --savefolder OUT [--camera_mode fixed|refine]
[--workers N] [--chunk N] [--overlap N] [--frames START:STOP:STEP]`` plus the fitting options.

OUT/identity/ is the keyframe's ordinary fit (:func:`fitting.pipeline.fit_scene`); OUT/chunks/<i>.npz
the chunks' tracking (reused by a rerun with the same inputs); OUT/sequence.npz the blended
per-frame parameters and OUT/report.json the per-frame table and the sequence's summary.
"""
from __future__ import annotations

import copy
import json
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

import numpy as np

from fitting.atomic import atomic_write_bytes
from fitting.config import build_parser, parse_checked, validate
from fitting.sequence.track import (add_sequence_options, blend_chunks, chunk_ranges, identity_from_fit, interpolate,
                                    track_chunk)

__all__ = ["parse_sequence_config", "run_sequence", "frame_dirs"]


def parse_sequence_config(argv=None):
    p = build_parser("Track FLAME over a multi-view sequence with a calibrated rig.")
    p.add_argument("scene", help="sequence folder with frames/<frame>/ scene folders")
    add_sequence_options(p)
    cfg = parse_checked(p, argv)
    dirs = frame_dirs(cfg.scene, cfg.frames)
    if not cfg.cameras:
        raise ValueError("fitting.sequence needs --cameras CALIB (a calibrated rig): estimating the cameras from "
                         "a keyframe is not wired yet")
    if cfg.camera_mode == "estimate":
        raise ValueError("fitting.sequence: --camera_mode must be fixed or refine")
    if not 0 <= cfg.keyframe < len(dirs):
        raise ValueError(f"--keyframe {cfg.keyframe} is not among the {len(dirs)} selected frames")
    cfg.scene_dir = str(dirs[cfg.keyframe])
    validate(cfg)
    return cfg


def frame_dirs(scene, spec: str = "") -> list:
    """The sequence's per-frame scene folders (SCENE/frames/*, sorted), sliced by START:STOP:STEP."""
    dirs = sorted(p for p in (Path(scene) / "frames").iterdir() if p.is_dir())
    if not dirs:
        raise ValueError(f"{scene}/frames holds no frame folders")
    if spec:
        parts = [int(s) if s else None for s in spec.split(":")]
        dirs = dirs[slice(*parts)]
    return dirs


def run_sequence(cfg) -> dict:
    """Identity from the keyframe, chunks tracked (in ``--workers`` processes), overlaps blended,
    missing frames interpolated; writes OUT/sequence.npz and OUT/report.json, returns the report."""
    from fitting.known_cameras import read_rig
    from fitting.pipeline import fit_scene
    t0 = time.perf_counter()
    out = Path(cfg.savefolder)
    dirs = frame_dirs(cfg.scene, cfg.frames)
    key_cfg = copy.copy(cfg)
    key_cfg.scene_name = "identity"
    if not (out / "identity" / "report.json").is_file():   # the keyframe fit is reused by a rerun
        fit_scene(key_cfg)
    ident = identity_from_fit(out / "identity", read_rig(cfg, dirs[cfg.keyframe]))
    t_identity = time.perf_counter() - t0

    ranges = chunk_ranges(len(dirs), cfg.chunk, cfg.overlap)
    jobs = [(cfg, dirs[a:b], ident, out / "chunks" / f"{i}.npz") for i, (a, b) in enumerate(ranges)]
    t1 = time.perf_counter()
    if cfg.workers > 1 and len(jobs) > 1:
        threads = max(1, (os.cpu_count() or 1) // cfg.workers)
        with ProcessPoolExecutor(min(cfg.workers, len(jobs)), mp_context=get_context("spawn")) as pool:
            done = list(pool.map(track_chunk, *zip(*jobs), [threads] * len(jobs)))
    else:
        done = [track_chunk(*job) for job in jobs]
    t_track = time.perf_counter() - t1
    res = interpolate(blend_chunks(ranges, [r for r, _ in done]))

    np.savez(out / "sequence.npz", frames=np.array([d.name for d in dirs]), shape=ident.shape.numpy(),
             **{k: res[k] for k in ("head_R", "head_t", "expression", "jaw", "missing")})
    rmse = res["landmark_rmse_px"][~res["missing"]]
    report = {
        "frames": [{"frame": d.name, "landmark_rmse_px": None if m else float(r), "missing": bool(m),
                    "seconds": float(s)}
                   for d, r, m, s in zip(dirs, res["landmark_rmse_px"], res["missing"], res["seconds"])],
        "summary": {"num_frames": len(dirs), "chunks": [list(r) for r in ranges],
                    "chunks_tracked_now": [bool(n) for _, n in done],
                    "landmark_rmse_px_mean": float(rmse.mean()) if len(rmse) else None,
                    "landmark_rmse_px_max": float(rmse.max()) if len(rmse) else None,
                    "frames_flagged": [d.name for d, m in zip(dirs, res["missing"]) if m],
                    "seconds_per_frame": float(res["seconds"].mean()),
                    "timing_s": {"identity": round(t_identity, 2), "tracking": round(t_track, 2),
                                 "total": round(time.perf_counter() - t0, 2)}}}
    atomic_write_bytes(out / "report.json", json.dumps(report, indent=1).encode())
    return report


def main(argv=None) -> int:
    try:
        cfg = parse_sequence_config(argv)
    except ValueError as e:
        print(f"[sequence] error: {e}", file=sys.stderr)
        return 2
    rep = run_sequence(cfg)
    print(json.dumps(rep["summary"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
