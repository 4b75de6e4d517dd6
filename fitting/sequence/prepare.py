"""Preprocess a sequence's frame folders: process_data's stages except SfM (the rig's
calibration gives the cameras), frame by frame, in a pool of worker processes.

Each frame goes through :func:`fitting.scene.update_preprocessing`, the step load_scene takes:
process_data runs only the missing or stale stages; preprocessing made by another tool (the
synthetic generator) is used as it is while it belongs to the frame's images.
"""
from __future__ import annotations

import json
import multiprocessing
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

__all__ = ["prepare_frames", "prepare_frame"]


def _stages_record(folder: Path):
    path = folder / "manifest.json"
    try:
        m = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return m.get("producer"), m.get("stages")


def prepare_frame(frame_dir, force: bool = False, options: dict | None = None) -> str:
    """Bring one frame folder's preprocessing up to date; "done" when a stage ran, "skipped"
    when all was up to date (or made by another tool for these images). Raises on failure."""
    from fitting.scene import update_preprocessing
    from process_data.pipeline import ALL_STAGES

    folder = Path(frame_dir)
    before = _stages_record(folder)
    opts = {"progress": False, **(options or {}), "stages": [s for s in ALL_STAGES if s != "intrinsics"]}
    update_preprocessing(folder, folder, force, opts)
    return "skipped" if before is not None and _stages_record(folder) == before else "done"


def _run(frame_dir: str, force: bool, options: dict | None):
    """Pool task: (status, seconds); a failure is the status "error: ..." (the pool goes on)."""
    t0 = time.perf_counter()
    try:
        status = prepare_frame(frame_dir, force, options)
    except Exception as e:  # one broken frame must not stop the others: recorded with its reason
        status = f"error: {type(e).__name__}: {e}"
    return status, time.perf_counter() - t0


def prepare_frames(frame_dirs, workers: int = 1, force: bool = False, log=print, options: dict | None = None,
                   mapper=None) -> dict:
    """{frame folder name: "done" | "skipped" | "error: <reason>"}, in the order given.

    frame_dirs: frame scene folders (:func:`fitting.sequence.layout.frame_scenes`); workers: how
    many processes (spawned, so safe beside threads and torch; 1: in this process); options:
    process_data options (e.g. {"backend": "mediapipe"}); mapper(fn, jobs) -> [fn(*job) ...]:
    runs the frames as tasks instead (Ray, ``fitting.batch``). One line is logged per finished
    frame, as frames finish (with a mapper: when all have)."""
    dirs = [Path(d) for d in frame_dirs]
    results, n = {}, len(dirs)

    def report(d: Path, status: str, seconds: float) -> None:
        results[d.name] = status
        log(f"[prepare] {len(results)}/{n} frame {d.name}: {status} ({seconds:.1f} s)")

    if mapper is not None:
        for d, r in zip(dirs, mapper(_run, [(str(d), force, options) for d in dirs])):
            report(d, *r)
    elif workers <= 1 or n <= 1:
        for d in dirs:  # frames are independent; in-process keeps a single worker cheap to start
            report(d, *_run(str(d), force, options))
    else:
        with ProcessPoolExecutor(min(workers, n), mp_context=multiprocessing.get_context("spawn")) as pool:
            futures = {pool.submit(_run, str(d), force, options): d for d in dirs}
            for fut in as_completed(futures):
                report(futures[fut], *fut.result())
    return {d.name: results[d.name] for d in dirs}
