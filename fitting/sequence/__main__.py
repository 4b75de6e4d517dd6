"""``python -m fitting.sequence SCENE --savefolder OUT [--cameras CALIB --camera_mode fixed|refine]
[--workers N] [--chunk N] [--overlap N] [--frames START:STOP:STEP]`` plus the fitting options.

OUT/identity/ is the keyframe's ordinary fit (:func:`fitting.pipeline.fit_scene`; without
``--cameras`` it estimates the cameras, SfM included, from the keyframe's views alone);
OUT/refine.npz the shape and (unless ``fixed``) the cameras refined over ``--refine_frames``
frames (:mod:`fitting.sequence.refine`); OUT/cameras.json the cameras
every frame is tracked with, as a calibration JSON;
OUT/chunks/<i>.npz the chunks' tracking; OUT/sequence.npz the blended per-frame parameters and
OUT/report.json the per-frame table and the sequence's summary. A rerun reuses the identity and
the chunks that were made from the same inputs and options.
"""
from __future__ import annotations

import argparse
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
from fitting.export.core import write_params
from fitting.sequence.layout import frame_scenes, read_layout, select_frames
from fitting.sequence.outputs import (draw_tracked_landmarks, write_flame_params, write_frame_table,
                                      write_overlay_video)
from fitting.sequence.track import (add_sequence_options, blend_chunks, check_sequence_options, chunk_ranges,
                                    identity_from_fit, interpolate, track_chunk)

__all__ = ["parse_sequence_config", "run_sequence", "frame_dirs", "choose_keyframe", "fit_identity", "local_mapper",
           "call_with_threads"]

# the options of the sequence (and its positional SCENE), not of the keyframe's fit
SEQUENCE_ONLY = ("scene", *add_sequence_options(argparse.ArgumentParser()))


def parse_sequence_config(argv=None):
    p = build_parser("Track FLAME over a multi-view sequence from a rig of cameras that does not move.")
    p.add_argument("scene", help="sequence folder with images/<camera>/<frame>.{jpg,png}")
    add_sequence_options(p)
    cfg = parse_checked(p, argv)
    check_sequence_options(cfg)
    dirs = frame_dirs(cfg.scene, cfg.frames)
    if not -1 <= cfg.keyframe < len(dirs):
        raise ValueError(f"--keyframe {cfg.keyframe} is not among the {len(dirs)} selected frames "
                         "(-1: the first frame with landmarks in the most cameras)")
    cfg.scene_dir = str(dirs[max(cfg.keyframe, 0)])   # -1: chosen after the frames' preprocessing
    validate(cfg)
    return cfg


def frame_dirs(scene, spec: str = "") -> list:
    """The per-frame scene folders of the frames ``--frames`` picks (made or refreshed from
    SCENE/images/<camera>/<frame>, :mod:`fitting.sequence.layout`)."""
    layout = read_layout(scene)
    return frame_scenes(layout, frames=select_frames(layout.frames, spec))


def run_sequence(cfg, mapper=None) -> dict:
    """Identity from the keyframe, chunks tracked, overlaps blended, missing frames interpolated;
    writes OUT/sequence.npz and OUT/report.json, returns the report.

    mapper(fn, jobs) -> [fn(*job) for job in jobs]: how the frames are preprocessed and the chunks
    tracked, each job a task of its own (default :func:`local_mapper`: ``--workers`` processes;
    ``fitting.batch`` gives Ray tasks)."""
    from fitting.sequence.prepare import prepare_frames
    t0 = time.perf_counter()
    out = Path(cfg.savefolder)
    dirs = frame_dirs(cfg.scene, cfg.frames)
    (out / "report.json").unlink(missing_ok=True)   # written last: present only beside a complete result
    prepared = prepare_frames(dirs, workers=cfg.workers, options={"backend": cfg.landmark_backend, "progress": False},
                              mapper=mapper)
    # a frame whose preprocessing failed may still hold outputs made for other images: never read them
    unusable = {n: f"preprocessing failed ({s.removeprefix('error: ')})" for n, s in prepared.items()
                if s.startswith("error")}
    key = cfg.keyframe if cfg.keyframe >= 0 else choose_keyframe(dirs, unusable)
    cfg = argparse.Namespace(**{**vars(cfg), "scene_dir": str(dirs[key])})
    ident, track_cfg = fit_identity(cfg)
    refined = None
    if cfg.refine_frames > 1:    # the calibration given as fixed holds; the others' cameras are refined
        ident, refined = _refine_over_frames(track_cfg, dirs, ident, unusable, cfg.camera_mode == "fixed")
    t_identity = time.perf_counter() - t0

    ranges = chunk_ranges(len(dirs), cfg.chunk, cfg.overlap)
    t1 = time.perf_counter()
    done = (mapper or local_mapper(cfg.workers))(
        track_chunk, [(track_cfg, dirs[a:b], ident, out / "chunks" / f"{i}.npz", unusable)
                      for i, (a, b) in enumerate(ranges)])
    t_track = time.perf_counter() - t1
    res = interpolate(blend_chunks(ranges, [r for r, _ in done]))

    names = [d.name for d in dirs]
    write_params(out / "sequence.npz", frames=np.array(names), shape=ident.shape.numpy(),  # the tracker's own arrays
                 **{k: res[k] for k in ("head_R", "head_t", "expression", "jaw", "missing")})
    pose = np.zeros((len(dirs), 15))
    pose[:, 6:9] = res["jaw"]
    flame = _flame(cfg)
    write_flame_params(out, names, {"shape": ident.shape.numpy(), "expression": res["expression"], "pose": pose,
                                    "head_R": res["head_R"], "head_t": res["head_t"]}, flame=flame)
    cams = [Path(n).stem for n in ident.cameras]
    rmse_cam = res["landmark_rmse_px"]                                                   # (T, C)
    write_frame_table(out, [{"frame": n, "rmse_px": {c: None if np.isnan(v) else float(v) for c, v in zip(cams, r)},
                             "flags": ["interpolated"] if m else []}
                            for n, r, m in zip(names, rmse_cam, res["missing"])])
    if cfg.write_images:
        _overlay_video(out / "overlay.mp4", cfg, dirs, ident, res, flame)
        print(f"[sequence] wrote {out / 'overlay.mp4'}")
    rmse = np.nanmean(rmse_cam[~res["missing"]], 1)
    report = {
        "frames": [{"frame": n, "landmark_rmse_px": None if m else float(np.nanmean(r)), "missing": bool(m),
                    "why": str(w) or None, "seconds": float(s)}
                   for n, r, m, w, s in zip(names, rmse_cam, res["missing"], res["why"], res["seconds"])],
        "summary": {"num_frames": len(dirs), "num_cameras": len(ident.cameras), "keyframe": dirs[key].name,
                    "chunks": [list(r) for r in ranges],
                    "chunks_tracked_now": [bool(n) for _, n in done],
                    "landmark_rmse_px_mean": float(rmse.mean()) if len(rmse) else None,
                    "landmark_rmse_px_max": float(rmse.max()) if len(rmse) else None,
                    "frames_flagged": [d.name for d, m in zip(dirs, res["missing"]) if m],
                    "seconds_per_frame": float(res["seconds"].mean()),
                    **({} if refined is None else {"refine": refined}),
                    "timing_s": {"identity": round(t_identity, 2), "tracking": round(t_track, 2),
                                 "total": round(time.perf_counter() - t0, 2)}}}
    atomic_write_bytes(out / "report.json", json.dumps(report, indent=1).encode())
    print(f"[sequence] {len(dirs)} frames ({len(report['summary']['frames_flagged'])} not tracked, set between their "
          f"neighbours) in {out}: sequence.npz, flame_param/ and timestep_index.json, frames.csv, cameras.json, "
          "report.json")
    return report


def choose_keyframe(dirs: list, unusable: dict) -> int:
    """Index of the first frame whose landmarks.json has a face in the most cameras (frames named
    in ``unusable`` count none): the identity is fitted on the views that see the face."""
    def faces(d: Path) -> int:
        try:
            lmk = json.loads((d / "landmarks.json").read_text())
        except (OSError, ValueError):
            return 0
        return sum(isinstance(v, dict) and v.get("points") is not None for v in lmk.values())
    return int(np.argmax([0 if d.name in unusable else faces(d) for d in dirs]))


def local_mapper(workers: int):
    """mapper(fn, jobs) -> [fn(*job) for job in jobs]: in this process, or in ``workers`` spawned
    processes sharing the cores' torch threads when there is more than one job."""
    def run(fn, jobs: list) -> list:
        if workers <= 1 or len(jobs) <= 1:
            return [fn(*job) for job in jobs]
        threads = max(1, (os.cpu_count() or 1) // workers)
        with ProcessPoolExecutor(min(workers, len(jobs)), mp_context=get_context("spawn")) as pool:
            return list(pool.map(call_with_threads, [fn] * len(jobs), [threads] * len(jobs), jobs))
    return run


def call_with_threads(fn, threads: int, args: tuple):
    """fn(*args) with torch limited to ``threads`` threads: a task runs beside others, and
    OpenMP threads waiting for a busy core spin (several times slower, docs/SEQUENCES.md)."""
    import torch
    torch.set_num_threads(threads)
    return fn(*args)


def fit_identity(cfg) -> tuple:
    """(Identity, the tracking's config): the keyframe (``cfg.scene_dir``) fitted as a scene into
    OUT/identity (reused when :mod:`fitting.fit_record` says it was made from the same options,
    keyframe images and calibration), and its cameras written to OUT/cameras.json. Without
    ``--cameras`` the frames are tracked with those cameras, ``fixed``."""
    from fitting.calibration import write_calibration_json
    from fitting.fit_record import files_digest, finished_report, fit_and_record
    from fitting.known_cameras import read_rig
    from fitting.viewer import summary_warnings
    from process_data.files import list_images
    keyframe = Path(cfg.scene_dir)
    key_cfg = argparse.Namespace(**{k: v for k, v in vars(cfg).items() if k not in SEQUENCE_ONLY})
    key_cfg.scene_name = "identity"
    inputs = {"keyframe_images": files_digest([keyframe / "images"]),
              "cameras": files_digest([cfg.cameras]) if cfg.cameras else None}
    out = Path(cfg.savefolder) / "identity"
    if finished_report(key_cfg, inputs) is None:
        print(f"[identity] fitting the keyframe {keyframe.name} into {out}")
        t0 = time.perf_counter()
        fit_and_record(key_cfg, inputs)
        print(f"[identity] done ({time.perf_counter() - t0:.1f} s)")
    else:
        print(f"[identity] reused {out} (the same options, keyframe images and calibration)")
    for line in summary_warnings(json.loads((out / "report.json").read_text()), out):
        print(f"[identity] {line}")
    rig = read_rig(cfg, keyframe)
    ident = identity_from_fit(out, rig)
    calib = write_calibration_json(Path(cfg.savefolder) / "cameras.json", ident.cameras)
    if rig is not None:
        return ident, cfg
    unposed = [n for n in list_images(keyframe / "images")[0] if n not in ident.cameras]
    if unposed:
        raise ValueError(f"the keyframe {keyframe.name}'s fit gave no camera for "
                         f"{', '.join(unposed)} (see {Path(cfg.savefolder) / 'identity' / 'report.json'}): pick a "
                         "--keyframe where every camera sees the face, or give the rig's calibration with --cameras")
    return ident, argparse.Namespace(**{**vars(cfg), "cameras": str(calib), "camera_mode": "fixed"})


def _refine_over_frames(cfg, dirs: list, ident, unusable: dict, hold_cameras: bool) -> tuple:
    """The keyframe's shape and cameras refined over ``--refine_frames`` frames
    (:mod:`fitting.sequence.refine`), the cameras held to ``cfg.cameras`` (the calibration, or the
    keyframe's estimate; as they are with ``hold_cameras``: ``--camera_mode fixed``), and written
    to OUT/cameras.json."""
    from fitting.calibration import write_calibration_json
    from fitting.known_cameras import read_rig
    from fitting.sequence.refine import refine_over_frames
    keyframe = Path(cfg.scene_dir)
    out = Path(cfg.savefolder)
    ident, report = refine_over_frames(cfg, dirs, keyframe, ident, read_rig(cfg, keyframe).cameras, unusable,
                                       out / "refine.npz", hold_cameras=hold_cameras)
    write_calibration_json(out / "cameras.json", ident.cameras)
    return ident, report


def _flame(cfg):
    from fitting.model import load_model
    import torch
    return load_model(cfg, torch.device("cpu"))[0]


def _overlay_video(path: Path, cfg, dirs: list, ident, res: dict, flame) -> None:
    """Every camera's image per frame with the tracked model's 68 landmarks (static contour) drawn
    where the camera sees them, through its lens distortion, on the original images
    (:func:`draw_tracked_landmarks`: orange on the cameras whose landmarks the frame's fit did not
    use)."""
    import torch
    from fitting.calibration import distort_points
    from fitting.images import read_image
    from fitting.render.cameras import project_points
    from fitting.sequence.track import frame_vertices
    index = {d.name: t for t, d in enumerate(dirs)}
    names = list(ident.cameras)
    camera = {Path(n).stem: c for c, n in enumerate(names)}
    T, C = len(dirs), len(names)
    K, R, tc = (torch.as_tensor(np.stack([getattr(ident.cameras[n], k) for n in names])).repeat(T, 1, 1)
                for k in ("K", "R", "t"))                                                # (T C, ...)
    X = frame_vertices(flame, ident.shape, res)                                          # (T, V, 3) rig frame
    with torch.no_grad():
        lmk = flame.landmarks(X.float(), contour="static").double()                     # (T, 68, 3)
    uv = project_points(lmk.repeat_interleave(C, 0), K, R, tc.reshape(T * C, 3))[0].reshape(T, C, -1, 2).numpy()
    for c, n in enumerate(names):
        cam = ident.cameras[n]
        uv[:, c] = distort_points(uv[:, c].reshape(-1, 2), cam.K, cam.distortion).reshape(T, -1, 2)

    def load(frame: str) -> dict:
        return {Path(n).stem: read_image(dirs[index[frame]] / "images" / n) for n in names}

    used = np.isfinite(np.asarray(res["landmark_rmse_px"], np.float64))                   # (T, C)

    def overlay(frame: str, cam: str, img: np.ndarray) -> np.ndarray:
        t, c = index[frame], camera[cam]
        return draw_tracked_landmarks(img, uv[t, c], bool(used[t, c]))

    write_overlay_video(path, [d.name for d in dirs], load, overlay)


def main(argv=None) -> int:
    try:
        rep = run_sequence(parse_sequence_config(argv))
    except ValueError as e:
        print(f"[sequence] error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(rep["summary"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
