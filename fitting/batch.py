"""Many captures at once on Ray: ``python -m fitting.batch SCENES... --savefolder OUT``.

Each scene (a folder with images/, as for ``run_fitting.py --scene_dir``) is fitted by one Ray
task, a thin wrapper around :func:`fitting.pipeline.fit_scene`, which runs the scene's
preprocessing when needed and publishes ``<OUT>/<scene>/`` atomically (report.json last,
:mod:`fitting.output_folder`). Every option the batch does not know is a fit option, passed
through to each scene's config (``--config FILE``, ``--photo_iters 20``, ...).

A sequence (a folder with images/<camera>/<frame>, docs/SEQUENCES.md) is tracked by one Ray
task running ``python -m fitting.sequence``'s :func:`run_sequence` into ``<OUT>/<sequence>/``;
its frames' preprocessing and its chunks (``--chunk``) run as Ray tasks of their own, so one
long sequence spreads over the cluster. Sequence options (``--chunk``, ``--cameras``, ...) are
then fit options of every capture of the batch: give them in a batch of sequences only.

* Without ``--ray`` a local Ray is started for the run with ``--workers`` CPUs; ``--ray auto``
  joins a running cluster (``ray start --head`` / ``ray start --address=...``), and
  ``--ray ray://host:port`` connects through Ray Client. See docs/BATCH.md.
* A rerun skips the finished scenes: report.json present, and ``fit_record.json`` beside it
  holding the same fit options (:mod:`fitting.fit_record`). ``--force`` refits them.
* A failing scene becomes a ``failed`` row with its error; the others go on.
* ``<OUT>/batch_summary.csv`` and ``.json``: one row per scene (:data:`SUMMARY_FIELDS`),
  written atomically when the batch ends.
* Each task declares ``num_cpus`` (``--cpus_per_task``, also its torch threads) and
  ``memory`` (``--memory_gb``, see :data:`DEFAULT_MEMORY_GB`) so a cluster packs the fits
  without running out of memory.

Ray is an optional extra: ``pip install .[ray]`` or ``pip install -r requirements-ray.txt``.
"""
from __future__ import annotations

import argparse
import csv
import glob
import io
import os
import shutil
import sys
import time
from pathlib import Path

from fitting.atomic import atomic_write_bytes, atomic_write_json
from fitting.config import parse_config
from fitting.fit_record import RECORD, finished_report, fit_and_record, output_path, run_and_record
from fitting.sequence.layout import is_sequence

__all__ = ["main", "find_scenes", "scene_configs", "fit_task", "run_batch", "write_summary", "SUMMARY_FIELDS",
           "DEFAULT_MEMORY_GB"]

SUMMARY_FIELDS = ("scene", "status", "views", "frames", "time_s", "error", "output")
# Memory declared to Ray per fit. The demo (configs/demo.txt: 12 views of 1024 px fitted at
# 256 px, every export, its scene and SfM built in the same process) peaks at 1.12 GiB RSS,
# a 4-view 192 px capture fitted at 128 px at 0.37 GiB (/usr/bin/time -v, docs/BATCH.md).
# 2 GiB leaves room for about twice the demo's views; raise --memory_gb for more views or a
# larger --image_size.
DEFAULT_MEMORY_GB = 2.0
REPO = Path(__file__).resolve().parents[1]
# Options the batch sets itself for every scene.
OWN_FIT_OPTIONS = ("--scene_dir", "--savefolder", "--scene_name")

RAY_MISSING = ("fitting.batch needs Ray, an optional extra: pip install '.[ray]' "
               "(or pip install -r requirements-ray.txt)")


def import_ray():
    """The ray module, or ImportError saying how to install it."""
    try:
        import ray
    except ImportError as e:
        raise ImportError(RAY_MISSING) from e
    return ray


def find_scenes(specs: list[str]) -> list[Path]:
    """Scene folders (absolute, sorted, each once) from ``specs``: folders, glob patterns
    (``'captures/*'``, quoted so the shell leaves them) and text files listing one folder or
    pattern per line (``#`` comments; relative to the list's folder). Raises ValueError for a
    spec that names nothing, and for two scenes of one name (their outputs would collide)."""
    scenes = []
    for spec in specs:
        path = Path(spec)
        if path.is_file():
            lines = [ln.strip() for ln in path.read_text().splitlines()]
            listed = [str(path.parent / ln) for ln in lines if ln and not ln.startswith("#")]
            if not listed:
                raise ValueError(f"scene list {path} names no scene: give one scene folder per line")
            scenes += find_scenes(listed)
            continue
        found = [Path(p) for p in sorted(glob.glob(spec, recursive=True)) if Path(p).is_dir()]
        if not found:
            raise ValueError(f"no scene folder matches {spec!r}: give scene folders (each with images/), "
                             "a quoted glob such as 'captures/*', or a text file listing them")
        scenes += found
    unique = sorted({p.resolve() for p in scenes})
    names = [p.name for p in unique]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise ValueError(f"scenes named alike would share <savefolder>/<scene>: {', '.join(twice)} "
                         "(" + "; ".join(str(p) for p in unique if p.name in twice) + "); rename or batch them apart")
    return unique


def scene_configs(scenes: list[Path], savefolder: str, fit_args: list[str]) -> list[argparse.Namespace]:
    """Each scene's fit config: ``fit_args`` (fit options, config files) with the scene's
    folder and the batch's savefolder. Raises ValueError for options the batch sets itself."""
    own = [a for a in fit_args if a.split("=", 1)[0] in OWN_FIT_OPTIONS]
    if own:
        raise ValueError(f"{own[0].split('=', 1)[0]} is set by the batch for each scene: give the scenes as "
                         "arguments and --savefolder once")
    out = Path(savefolder).resolve()
    cfgs = [sequence_config(s, out, fit_args) if is_sequence(s) else
            parse_config([*fit_args, "--scene_dir", str(s), "--savefolder", str(out), "--scene_name", s.name])
            for s in scenes]
    if cfgs and cfgs[0].demo:
        raise ValueError("the batch fits existing captures: --demo builds a synthetic scene; give a config "
                         "without demo = true")
    return cfgs


def sequence_config(scene: Path, savefolder: Path, fit_args: list[str]) -> argparse.Namespace:
    """A sequence's config (``python -m fitting.sequence``'s), its outputs in <savefolder>/<scene>.
    A sequence whose layout is refused gets a config holding only its ``error``: it fails alone."""
    from fitting.sequence.__main__ import parse_sequence_config
    out = savefolder / scene.name
    try:
        cfg = parse_sequence_config([*fit_args, str(scene), "--savefolder", str(out)])
    except ValueError as e:
        return argparse.Namespace(scene=str(scene), scene_name=scene.name, savefolder=str(out), demo=False,
                                  error=f"ValueError: {e}")
    cfg.scene_name = scene.name
    return cfg


def is_sequence_config(cfg) -> bool:
    """Whether ``cfg`` is a sequence's (:func:`sequence_config`: it names its sequence folder)."""
    return "scene" in vars(cfg)


def result_folder(cfg) -> Path:
    """Where a scene's or a sequence's result goes: <savefolder>/<scene>."""
    return Path(cfg.savefolder) if is_sequence_config(cfg) else output_path(cfg)


def finished(cfg) -> dict | None:
    """report.json of a finished scene or sequence made with the same options, else None."""
    return finished_report(cfg, folder=result_folder(cfg))


def summary_row(cfg, status: str, views=None, time_s=None, error: str = "", frames=None) -> dict:
    """One scene's row of the summary (:data:`SUMMARY_FIELDS`); frames: a sequence's."""
    return {"scene": cfg.scene_name, "status": status, "views": views, "frames": frames,
            "time_s": None if time_s is None else round(float(time_s), 2), "error": error,
            "output": "" if status == "failed" else str(result_folder(cfg))}


def skipped_row(cfg, report: dict) -> dict:
    """A finished scene's row: the views (frames) and time of the run that fitted it."""
    if is_sequence_config(cfg):
        s = report["summary"]
        return summary_row(cfg, "skipped", s.get("num_cameras"), s["timing_s"]["total"], frames=s["num_frames"])
    return summary_row(cfg, "skipped", report.get("num_views"), report.get("timing_s", {}).get("total"))


def fit_task(cfg, num_cpus: int, force: bool = False, memory_gb: float = DEFAULT_MEMORY_GB) -> dict:
    """The Ray task: fit one scene with :func:`fit_scene`, or track one sequence with
    :func:`fitting.sequence.__main__.run_sequence` (its frames' preprocessing and its chunks as
    Ray tasks of their own, each of ``num_cpus`` and ``memory_gb``); return its summary row.

    Idempotent: a finished scene is skipped (unless ``force``; :mod:`fitting.fit_record`), and a
    sequence reuses its identity and chunks made from the same inputs. Never raises for a
    scene's failure: the error goes into the row, so one bad capture does not stop a batch."""
    import torch

    report = None if force else finished(cfg)
    if report is not None:
        return skipped_row(cfg, report)
    # Ray gives each task num_cpus cores; torch would otherwise start one thread per core of
    # the node, and two tasks on two cores would each run two threads
    cfg = argparse.Namespace(**{**vars(cfg), "num_threads": num_cpus, "progress": False})
    torch.set_num_threads(num_cpus)
    t0 = time.perf_counter()
    try:
        if not is_sequence_config(cfg):
            report = fit_and_record(cfg)
            return summary_row(cfg, "ok", report["num_views"], time.perf_counter() - t0)
        if force:
            forget_sequence(cfg)
        report = run_and_record(lambda c: _run_sequence(c, ray_mapper(num_cpus, memory_gb)), cfg, result_folder(cfg))
    except Exception as e:  # any failure of this scene is its row's; the batch goes on
        return summary_row(cfg, "failed", time_s=time.perf_counter() - t0, error=f"{type(e).__name__}: {e}")
    s = report["summary"]
    return summary_row(cfg, "ok", s["num_cameras"], time.perf_counter() - t0, frames=s["num_frames"])


def _run_sequence(cfg, mapper) -> dict:
    from fitting.sequence.__main__ import run_sequence
    return run_sequence(cfg, mapper)


def forget_sequence(cfg) -> None:
    """Make a sequence's rerun fit its identity and track its chunks again (``--force``)."""
    out = result_folder(cfg)
    (out / "identity" / RECORD).unlink(missing_ok=True)
    shutil.rmtree(out / "chunks", ignore_errors=True)


def ray_mapper(num_cpus: int, memory_gb: float):
    """mapper(fn, jobs) -> [fn(*job) for job in jobs] as Ray tasks of ``num_cpus`` CPUs (also
    their torch threads) and ``memory_gb`` each, for a sequence's frames and chunks. Called from
    inside a task: Ray lends the waiting task's CPU to its children."""
    ray = import_ray()
    from fitting.sequence.__main__ import call_with_threads

    def run(fn, jobs: list) -> list:
        task = ray.remote(call_with_threads).options(num_cpus=num_cpus, memory=int(memory_gb * 2**30),
                                                     max_retries=0, runtime_env=worker_env())
        return ray.get([task.remote(fn, num_cpus, job) for job in jobs])
    return run


def write_summary(savefolder, rows: list[dict]) -> tuple[Path, Path]:
    """``batch_summary.csv`` and ``batch_summary.json`` in ``savefolder``, atomically."""
    out = Path(savefolder)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=SUMMARY_FIELDS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    csv_path = atomic_write_bytes(out / "batch_summary.csv", buf.getvalue().encode())
    return csv_path, atomic_write_json(out / "batch_summary.json", rows)


def progress_line(done: int, total: int, row: dict) -> str:
    """``[3/10] scene ok: 8 views, 41.2 s`` (or the error of a failed scene)."""
    if row["status"] == "failed":
        return f"[{done}/{total}] {row['scene']} failed: {row['error']}"
    frames = f" x {row['frames']} frames" if row.get("frames") else ""
    return f"[{done}/{total}] {row['scene']} {row['status']}: {row['views']} views{frames}, {row['time_s']} s"


def worker_env() -> dict:
    """The tasks' Ray runtime_env: workers import this checkout wherever the batch was started
    from (Ray itself adds only the driver's working directory to their path); on a cluster
    every node has the checkout at the same path (docs/BATCH.md)."""
    path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)
    return {"env_vars": {"PYTHONPATH": path}}


def connect(ray, address: str, workers: int) -> bool:
    """Join the cluster at ``address``, or start a local Ray of ``workers`` CPUs when it is
    empty. Returns True when this run started Ray (and so shuts it down)."""
    if ray.is_initialized():  # a caller's Ray (tests, notebooks): use it as it is
        return False
    if address:
        ray.init(address=address)
        return False
    ray.init(num_cpus=workers, include_dashboard=False)
    return True


def run_batch(cfgs: list, address: str = "", workers: int = 1, cpus_per_task: int = 1,
              memory_gb: float = DEFAULT_MEMORY_GB, force: bool = False, log=print) -> list[dict]:
    """Fit every config's scene as a Ray task; returns the summary rows in ``cfgs`` order.
    Finished scenes are skipped here without a task (and without starting Ray when all are), and
    sequences refused at parsing are failed rows."""
    rows = {}
    for cfg in cfgs:
        if "error" in vars(cfg):
            row = summary_row(cfg, "failed", error=cfg.error)
        elif not force and (report := finished(cfg)) is not None:
            row = skipped_row(cfg, report)
        else:
            continue
        rows[cfg.scene_name] = row
        log(progress_line(len(rows), len(cfgs), row))
    todo = [c for c in cfgs if c.scene_name not in rows]
    if todo:
        rows.update(_run_tasks(todo, address, workers, cpus_per_task, memory_gb, force, len(cfgs) - len(todo),
                               len(cfgs), log))
    return [rows[c.scene_name] for c in cfgs]


def _run_tasks(cfgs: list, address: str, workers: int, cpus_per_task: int, memory_gb: float, force: bool,
               done: int, total: int, log) -> dict:
    """{scene: row} of the fits of ``cfgs`` as Ray tasks, printing a line as each finishes."""
    ray = import_ray()
    started = connect(ray, address, workers)
    try:
        # max_retries=0: a fit that crashed its worker (out of memory) would crash the next one too
        task = ray.remote(fit_task).options(num_cpus=cpus_per_task, memory=int(memory_gb * 2**30), max_retries=0,
                                            runtime_env=worker_env())
        pending = {task.remote(cfg, cpus_per_task, force, memory_gb): cfg for cfg in cfgs}
        rows = {}
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1)
            cfg = pending.pop(ready[0])
            try:
                row = ray.get(ready[0])
            except ray.exceptions.RayError as e:  # the worker died (out of memory, killed)
                row = summary_row(cfg, "failed", error=f"{type(e).__name__}: {e}")
            rows[cfg.scene_name] = row
            done += 1
            log(progress_line(done, total, row))
        return rows
    finally:
        if started:
            ray.shutdown()


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m fitting.batch",
        description="Fit many captures as Ray tasks. Options not listed here are fit options "
                    "(run_fitting.py --help), passed to every scene, e.g. --config FILE.",
        epilog="Give the scenes first, then the options.")
    p.add_argument("scenes", nargs="+", help="scene folders, quoted glob patterns, or text files listing them")
    p.add_argument("--savefolder", required=True, help="outputs go to <savefolder>/<scene>/; the summary beside")
    p.add_argument("--ray", default="", help="cluster address: 'auto' (a node of a running cluster) or "
                                             "ray://host:port; default: a local Ray started for the run")
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                   help="CPUs of the local Ray (without --ray); default: every core")
    p.add_argument("--cpus_per_task", type=int, default=1, help="CPUs (and torch threads) of each fit")
    p.add_argument("--memory_gb", type=float, default=DEFAULT_MEMORY_GB,
                   help="memory declared to Ray for each fit (GiB)")
    p.add_argument("--force", action="store_true", help="refit the scenes that are already finished")
    return p


def main(argv=None) -> int:
    parser = build_parser()
    args, fit_args = parser.parse_known_args(argv)
    if args.workers < 1 or args.cpus_per_task < 1 or args.memory_gb <= 0:
        parser.error("--workers and --cpus_per_task must be >= 1, --memory_gb > 0")
    try:
        cfgs = scene_configs(find_scenes(args.scenes), args.savefolder, fit_args)
        rows = run_batch(cfgs, args.ray, args.workers, args.cpus_per_task, args.memory_gb, args.force)
    except (ValueError, ImportError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    csv_path, _ = write_summary(args.savefolder, rows)
    counts = {s: sum(r["status"] == s for r in rows) for s in ("ok", "skipped", "failed")}
    print(f"{len(rows)} scenes: {counts['ok']} fitted, {counts['skipped']} skipped, {counts['failed']} failed; "
          f"summary in {csv_path} and batch_summary.json")
    return 1 if counts["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
