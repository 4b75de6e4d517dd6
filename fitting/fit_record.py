"""Which options and inputs made the result in a fit's output folder, so a rerun reuses it only
when they are the same (``fitting.batch``'s scenes and sequences, ``fitting.sequence``'s
keyframe identity).

``<savefolder>/<scene_name>/fit_record.json`` (a sequence's: ``<its savefolder>/fit_record.json``)
holds ``{"options": ..., "inputs": ...}``: the fit options that decide the result
(:func:`fit_options_key`) and what the caller adds about its inputs (file digests). It is
removed before a fit and written after the fit published, so it never vouches for a result of
other options, even when the fit dies half-way.
"""
from __future__ import annotations

import argparse
import hashlib
import json
from pathlib import Path

from fitting.atomic import atomic_write_json
from fitting.config import config_to_dict

__all__ = ["RECORD", "NOT_COMPARED", "output_path", "fit_options_key", "finished_report", "run_and_record",
           "fit_and_record", "files_digest"]

RECORD = "fit_record.json"
# Options that change how a fit runs but not its result: a rerun differing only in them reuses it.
NOT_COMPARED = frozenset({"config", "progress", "resume", "num_threads"})


def output_path(cfg: argparse.Namespace) -> Path:
    return Path(cfg.savefolder) / cfg.scene_name


def fit_options_key(cfg: argparse.Namespace) -> dict:
    """The options that decide a fit's result (JSON-normalised)."""
    opts = {k: v for k, v in config_to_dict(cfg).items() if k not in NOT_COMPARED}
    return json.loads(json.dumps(opts, default=str))


def finished_report(cfg: argparse.Namespace, inputs: dict | None = None, folder: Path | None = None) -> dict | None:
    """report.json of ``cfg``'s result (in ``folder``, default <savefolder>/<scene_name>) when it
    is complete and was made with the same options and ``inputs``; None when the fit must run."""
    out = folder or output_path(cfg)
    try:
        record = json.loads((out / RECORD).read_text())
        report = json.loads((out / "report.json").read_text())
    except (OSError, ValueError):
        return None
    same = record.get("options") == fit_options_key(cfg) and record.get("inputs") == _normal(inputs)
    return report if same else None


def run_and_record(run, cfg: argparse.Namespace, folder: Path, inputs: dict | None = None) -> dict:
    """``run(cfg)`` (which writes its result into ``folder``, report.json last), then the record
    of its options and inputs. Returns run's report."""
    record = Path(folder) / RECORD
    record.unlink(missing_ok=True)   # a fit moves files of our own into its new result
    report = run(cfg)
    atomic_write_json(record, {"options": fit_options_key(cfg), "inputs": _normal(inputs)})
    return report


def fit_and_record(cfg: argparse.Namespace, inputs: dict | None = None) -> dict:
    """:func:`fitting.pipeline.fit_scene` for ``cfg`` with :func:`run_and_record`."""
    from fitting.pipeline import fit_scene
    return run_and_record(fit_scene, cfg, output_path(cfg), inputs)


def files_digest(paths) -> str:
    """sha256 over the names and bytes of ``paths`` (a folder: its files, sorted), for ``inputs``."""
    h = hashlib.sha256()
    for p in map(Path, paths):
        for f in sorted(p.rglob("*")) if p.is_dir() else [p]:
            if f.is_file():
                h.update(f.name.encode() + b"\0" + f.read_bytes())
    return h.hexdigest()


def _normal(inputs: dict | None) -> dict | None:
    return None if inputs is None else json.loads(json.dumps(inputs, default=str))
