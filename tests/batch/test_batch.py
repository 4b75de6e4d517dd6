"""python -m fitting.batch on a local Ray of 2 CPUs (issue 18, "Many captures on Ray"): three
small synthetic captures are fitted, a rerun skips them all without touching their files, and
a capture whose only image is corrupt fails alone, with its error in the summary."""
from __future__ import annotations

import csv
import json
import sys

import pytest

from fitting import batch, fit_record
from fitting.synthetic_scene import make_scene

GOOD = ("cap_a", "cap_b", "cap_c")


@pytest.fixture(scope="module")
def captures(tmp_path_factory, standin_path):
    """Three 4-view 192 px captures of the stand-in (preprocessing included: landmarks, masks,
    cameras.json) and one whose images/ holds a single corrupt file."""
    root = tmp_path_factory.mktemp("captures")
    for seed, name in enumerate(GOOD, 1):
        make_scene(root / name, standin_path, n_views=4, width=192, height=192, yaw_deg=40, n_shape=20, n_exp=10,
                   seed=seed)
    (root / "cap_broken" / "images").mkdir(parents=True)
    (root / "cap_broken" / "images" / "cam0.jpg").write_bytes(b"not a jpeg")
    return root


def fit_options(standin_path) -> list[str]:
    """Small fast fits: 128 px, a few photometric iterations, no images or exports."""
    return ["--flame_model", str(standin_path), "--n_shape", "20", "--n_exp", "10", "--image_size", "128",
            "--photo_iters", "5", "--write_images", "false", "--export", "none", "--memory_gb", "1"]


def read_summary(out) -> dict:
    """{scene: row} of batch_summary.json, after checking that the CSV has the same rows."""
    rows = json.loads((out / "batch_summary.json").read_text())
    with open(out / "batch_summary.csv", newline="") as f:
        assert [r["scene"] for r in csv.DictReader(f)] == [r["scene"] for r in rows]
    return {r["scene"]: r for r in rows}


def mtimes(folder) -> dict:
    return {str(p.relative_to(folder)): p.stat().st_mtime_ns for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def first_run(captures, standin_path, tmp_path_factory):
    """The batch over the 4 captures (a glob) on a local Ray started with 2 CPUs."""
    out = tmp_path_factory.mktemp("batch_out")
    rc = batch.main([str(captures / "cap_*"), "--savefolder", str(out), "--workers", "2",
                     *fit_options(standin_path)])
    return rc, out


@pytest.mark.slow  # ~30 s: Ray's start and 4 fits on 2 workers
def test_batch_fits_good_captures_and_records_the_broken_one(first_run):
    rc, out = first_run
    rows = read_summary(out)
    assert rc == 1  # a failed scene makes the exit status non-zero
    assert sorted(rows) == sorted([*GOOD, "cap_broken"])
    for name in GOOD:
        assert rows[name]["status"] == "ok", rows[name]
        assert rows[name]["views"] == 4 and rows[name]["time_s"] > 0 and rows[name]["error"] == ""
        assert (out / name / "report.json").is_file() and (out / name / fit_record.RECORD).is_file()
        assert rows[name]["output"] == str(out / name)
    broken = rows["cap_broken"]
    assert broken["status"] == "failed" and "cam0.jpg" in broken["error"] and "no readable image" in broken["error"]
    assert not (out / "cap_broken" / "report.json").exists()
    assert not list(out.glob(".*.partial"))  # no staging folder left behind


@pytest.mark.slow
def test_rerun_skips_finished_captures_untouched(first_run, captures, standin_path, monkeypatch):
    _, out = first_run
    before = {name: mtimes(out / name) for name in GOOD}
    # nothing to fit: Ray is not even started
    monkeypatch.setattr(batch, "import_ray", lambda: pytest.fail("the rerun started Ray"))
    rc = batch.main([str(captures / name) for name in GOOD] + ["--savefolder", str(out), "--workers", "2",
                                                               *fit_options(standin_path)])
    rows = read_summary(out)
    assert rc == 0
    assert {rows[n]["status"] for n in GOOD} == {"skipped"} and set(rows) == set(GOOD)
    assert all(rows[n]["views"] == 4 for n in GOOD)
    assert {name: mtimes(out / name) for name in GOOD} == before


@pytest.mark.slow
def test_other_options_or_force_refit(first_run, captures, standin_path):
    """The skip needs the same fit options; the task itself skips a finished scene too."""
    _, out = first_run
    cfg = batch.scene_configs([captures / "cap_a"], str(out), fit_options(standin_path)[:-2])[0]
    assert fit_record.finished_report(cfg) is not None
    row = batch.fit_task(cfg, num_cpus=1)  # the Ray task's body, called here without Ray
    assert row["status"] == "skipped" and row["views"] == 4
    other = batch.scene_configs([captures / "cap_a"], str(out), [*fit_options(standin_path)[:-2], "--photo_iters", "6"])
    assert fit_record.finished_report(other[0]) is None
    # options that do not change the result (threads, progress bars) still skip
    same = batch.scene_configs([captures / "cap_a"], str(out), [*fit_options(standin_path)[:-2], "--num_threads", "3"])
    assert fit_record.finished_report(same[0]) is not None


def test_find_scenes(tmp_path):
    for name in ("a", "b"):
        (tmp_path / "caps" / name / "images").mkdir(parents=True)
    (tmp_path / "list.txt").write_text("# captures\ncaps/b\n\ncaps/a\n")
    assert batch.find_scenes([str(tmp_path / "caps" / "*")]) == [tmp_path / "caps" / "a", tmp_path / "caps" / "b"]
    assert batch.find_scenes([str(tmp_path / "list.txt"), str(tmp_path / "caps" / "a")]) == \
        [tmp_path / "caps" / "a", tmp_path / "caps" / "b"]
    with pytest.raises(ValueError, match="no scene folder matches"):
        batch.find_scenes([str(tmp_path / "nothing_*")])
    (tmp_path / "other" / "a").mkdir(parents=True)
    with pytest.raises(ValueError, match="share <savefolder>/<scene>: a"):
        batch.find_scenes([str(tmp_path / "caps" / "a"), str(tmp_path / "other" / "a")])


def test_options_the_batch_sets_are_refused(tmp_path):
    with pytest.raises(ValueError, match="--scene_dir is set by the batch"):
        batch.scene_configs([tmp_path], str(tmp_path / "out"), ["--scene_dir", str(tmp_path)])


def test_without_ray_the_error_says_how_to_install(monkeypatch, tmp_path, capsys):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray now raises ImportError
    (tmp_path / "cap" / "images").mkdir(parents=True)
    rc = batch.main([str(tmp_path / "cap"), "--savefolder", str(tmp_path / "out")])
    assert rc == 2
    assert "pip install '.[ray]'" in capsys.readouterr().err


@pytest.fixture(scope="module")
def sequences(tmp_path_factory, standin_path):
    """Two 3-frame x 3-camera 128 px sequences of one rig (seq_b a copy of seq_a) and one whose
    camera cam01 lacks a frame (its layout is refused)."""
    import shutil

    from fitting.synthetic_sequence import make_sequence
    root = tmp_path_factory.mktemp("sequences")
    make_sequence(root / "seq_a", standin_path, n_frames=3, n_cameras=3, width=128, height=128, n_shape=20,
                  n_exp=10, seed=3)
    for name in ("seq_b", "seq_broken"):
        shutil.copytree(root / "seq_a", root / name, symlinks=True)
    (root / "seq_broken" / "images" / "cam01" / "000002.png").unlink()
    return root


@pytest.mark.slow  # ~1-2 min: Ray's start, two identity fits, four chunk tasks
def test_sequences_run_as_ray_tasks_and_a_rerun_skips_them(sequences, standin_path, tmp_path, monkeypatch):
    """Sequences in a batch: each tracked by a task whose chunks are tasks of their own; the
    sequence with a refused layout fails alone; a rerun skips both without starting Ray."""
    out = tmp_path / "out"
    args = [str(sequences / "seq_*"), "--savefolder", str(out), "--workers", "2",
            *fit_options(standin_path)[:-2], "--memory_gb", "1",
            "--cameras", str(sequences / "seq_a" / "calibration" / "cameras.json"), "--camera_mode", "fixed",
            "--chunk", "2", "--overlap", "1"]
    rc = batch.main(args)
    rows = read_summary(out)
    assert rc == 1 and sorted(rows) == ["seq_a", "seq_b", "seq_broken"]
    for name in ("seq_a", "seq_b"):
        assert rows[name]["status"] == "ok", rows[name]
        assert rows[name]["views"] == 3 and rows[name]["frames"] == 3 and rows[name]["output"] == str(out / name)
        rep = json.loads((out / name / "report.json").read_text())
        assert rep["summary"]["chunks"] == [[0, 2], [1, 3]] and rep["summary"]["chunks_tracked_now"] == [True, True]
        assert len(list((out / name / "flame_param").glob("*.npz"))) == 3
    assert rows["seq_broken"]["status"] == "failed" and "cam01" in rows["seq_broken"]["error"]

    before = {name: mtimes(out / name) for name in ("seq_a", "seq_b")}
    monkeypatch.setattr(batch, "import_ray", lambda: pytest.fail("the rerun started Ray"))
    rc = batch.main([str(sequences / "seq_a"), str(sequences / "seq_b"), *args[1:]])
    rows = read_summary(out)
    assert rc == 0 and {r["status"] for r in rows.values()} == {"skipped"}
    assert rows["seq_a"]["frames"] == 3 and rows["seq_a"]["views"] == 3
    assert {name: mtimes(out / name) for name in ("seq_a", "seq_b")} == before
