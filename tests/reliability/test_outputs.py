"""Outputs as a set: a result folder holds the last complete result or none (a kill midway
leaves the previous one, a rerun replaces every file of it), one run at a time, no orphans."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import run_fitting
from fitting.config import parse_config
from fitting.pipeline import fit_scene

REPO = Path(__file__).resolve().parents[2]

# run_fitting.py killed (SIGKILL: no cleanup runs) after params.npz, mesh and texture are
# written, while the export writes transforms.json
KILLED_IN_EXPORT = """
import os, signal, sys
import fitting.export
fitting.export.write_transforms = lambda *a, **k: os.kill(os.getpid(), signal.SIGKILL)
import run_fitting
run_fitting.main(sys.argv[1:])
"""


def _files(folder: Path) -> dict:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_kill_midway_keeps_the_previous_result_and_a_rerun_replaces_all_of_it(scene, tmp_path, fit_args, capsys):
    """kill -9 while exporting a fit of fewer views: the folder keeps the previous result,
    not a mix; the rerun recovers (stale lock, staging folder, orphan temp file) and leaves
    no overlay of the dropped view beside the new report. The scene (the inputs) is never
    written."""
    out = tmp_path / "out" / "tiny"
    fit_scene(parse_config(fit_args(scene, tmp_path / "out")))
    (out / "notes.txt").write_text("mine")  # not a result: kept
    before = {k: v for k, v in _files(out).items() if k != "checkpoint.pt"}
    dropped = sorted((scene / "images").iterdir())[0]
    dropped.unlink()
    inputs = _files(scene)

    killed = subprocess.run([sys.executable, "-c", KILLED_IN_EXPORT, *fit_args(scene, tmp_path / "out")],
                            cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True, text=True)
    assert killed.returncode == -9, killed.stderr
    assert {k: v for k, v in _files(out).items() if k != "checkpoint.pt"} == before

    (out / ".checkpoint.pt.x1y2.tmp").write_bytes(b"half a checkpoint")  # as a kill inside a write leaves
    report = fit_scene(parse_config(fit_args(scene, tmp_path / "out", "--resume", "true")))
    assert "taking over the stale lock" in capsys.readouterr().out
    assert json.loads((out / "report.json").read_text()) == report and report["num_views"] == 2
    assert sorted(p.name for p in (out / "overlays").iterdir()) == sorted(
        Path(v["name"]).stem + ".png" for v in report["views"])
    assert (out / "notes.txt").read_text() == "mine" and (out / "checkpoint.pt").is_file()
    assert not list(out.parent.glob(".tiny.*")), "staging folder or lock left behind"
    assert not list(out.rglob("*.tmp"))
    assert _files(scene) == inputs


def test_a_second_run_into_the_same_folder_is_refused(scene, tmp_path, fit_args, capsys):
    from fitting.output_folder import FolderLock
    with FolderLock(tmp_path / "out" / ".tiny.lock"):  # held by this (running) process
        assert run_fitting.main(fit_args(scene, tmp_path / "out")) == 2
    err = capsys.readouterr().err
    assert f"pid {os.getpid()}" in err and "in use by another run" in err and "started" in err
    assert not (tmp_path / "out" / "tiny").exists()


def test_a_stale_lock_of_a_dead_process_is_taken_over(tmp_path):
    from fitting.output_folder import FolderLock
    lock = tmp_path / ".x.lock"
    lock.write_text(json.dumps({"pid": _dead_pid(), "host": os.uname().nodename, "started": "then"}))
    notes = []
    with FolderLock(lock, log=notes.append) as held:
        assert json.loads(lock.read_text())["pid"] == os.getpid() == held.info["pid"]
    assert len(notes) == 1 and "stale lock" in notes[0] and "then" in notes[0]
    assert not lock.exists()


@pytest.mark.parametrize("bad", ["file", "read-only"])
def test_unwritable_savefolder_is_refused_before_any_work(bad, tmp_path, fit_args, capsys):
    save = tmp_path / "save"
    if bad == "file":
        save.write_text("not a folder")
    else:
        save.mkdir(mode=0o555)
    demo = tmp_path / "demo_scene"
    assert run_fitting.main(fit_args(demo, save, "--demo", "true")) == 2
    err = capsys.readouterr().err
    assert str(save) in err and ("is a file" if bad == "file" else "is read-only") in err
    assert not demo.exists()  # refused before the demo scene was built


def test_single_view_refuses_an_unwritable_savefolder_before_fitting(tmp_path, monkeypatch, capsys):
    from single_view import fit

    monkeypatch.setattr("single_view.batch.prepare_batch", lambda *a, **k: pytest.fail("work started"))
    (tmp_path / "save").write_text("")
    assert fit.main([str(tmp_path / "photo.png"), "--savefolder", str(tmp_path / "save" / "sub")]) == 2
    assert "is a file, not a folder" in capsys.readouterr().err


def test_single_view_photo_folder_never_mixes_two_runs(tmp_path):
    """A photo that fitted before and has no face now: its folder holds the new report.json
    alone (no mesh of the old fit beside it)."""
    import cv2
    import numpy as np

    from single_view.batch import fit_images
    from single_view.options import parse_single_view

    cv2.imwrite(str(tmp_path / "blank.png"), np.full((64, 64, 3), 128, np.uint8))
    old = tmp_path / "save" / "blank"
    old.mkdir(parents=True)
    for f in ("mesh.obj", "overlay.png", "report.json"):
        (old / f).write_text("old fit")
    with pytest.raises(ValueError, match="no usable photo"):
        fit_images(parse_single_view([str(tmp_path / "blank.png"), "--savefolder", str(tmp_path / "save"),
                                      "--progress", "false"]), log=lambda *a: None)
    assert sorted(p.name for p in old.iterdir()) == ["report.json"]
    assert json.loads((old / "report.json").read_text())["fitted"] is False
    assert not list((tmp_path / "save").glob(".*"))
