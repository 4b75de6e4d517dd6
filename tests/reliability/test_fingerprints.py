"""Preprocessing is tied to its inputs by content: another scene's outputs are refused, a
photo replaced in place is redone whoever calls (process_data or load_scene, run_fitting's
path), nothing reruns when nothing changed, and changed settings redo their stage."""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

from fitting.scene import load_scene
from process_data import run_all
from process_data.__main__ import main as process_data_main


@pytest.fixture(scope="module")
def preprocessed(tmp_path_factory, ffhq) -> Path:
    """A one-view scene (ffhq 00000 as a.png) in scene/ and its full preprocessing in prep/
    (a separate folder, as for a read-only scene). Built once; tests work on copies."""
    root = tmp_path_factory.mktemp("fingerprints")
    (root / "scene" / "images").mkdir(parents=True)
    shutil.copy(ffhq / "00000.png", root / "scene" / "images" / "a.png")
    load_scene(root / "scene", 64, prep_dir=root / "prep", preprocess_options={"progress": False})
    return root


@pytest.fixture
def copy(preprocessed, tmp_path) -> tuple[Path, Path]:
    """(scene, prep) copied with their mtimes: a moved scene keeps its preprocessing."""
    shutil.copytree(preprocessed, tmp_path, dirs_exist_ok=True)
    return tmp_path / "scene", tmp_path / "prep"


def _stamps(prep: Path) -> dict:
    """{output file: mtime in ns}: every output is written atomically (a new file), so a stage
    that ran changes its stamps. The manifest is rewritten on every run and left out."""
    return {str(p.relative_to(prep)): p.stat().st_mtime_ns for p in sorted(prep.rglob("*"))
            if p.is_file() and p.name != "manifest.json"}


def _manifest(prep: Path) -> dict:
    return json.loads((prep / "manifest.json").read_text())


def _load(scene: Path, prep: Path, **options):
    return load_scene(scene, 256, prep_dir=prep, preprocess_options={"progress": False, **options})


def test_other_scenes_preprocessing_is_refused(copy, ffhq, capsys):
    scene, prep = copy
    other = scene.parent / "other"
    (other / "images").mkdir(parents=True)
    shutil.copy(ffhq / "00001.png", other / "images" / "a.png")  # same name, another person
    before, manifest = _stamps(prep), _manifest(prep)
    with pytest.raises(ValueError, match="another scene") as e:
        _load(other, prep)
    assert manifest["scene"] in str(e.value) and "--preprocess_dir" in str(e.value)
    assert "--force_preprocess" in str(e.value)
    assert process_data_main([str(other), "--out", str(prep), "--no-progress"]) == 2
    assert "--force to recompute" in capsys.readouterr().err
    assert _stamps(prep) == before and _manifest(prep) == manifest
    run_all(other, out_dir=prep, force=True, stages=["scan", "landmarks"], progress=False)
    assert _manifest(prep)["scene"] == str(other.resolve())
    assert _manifest(prep)["views"]["a.png"]["sha256"] != manifest["views"]["a.png"]["sha256"]


def test_photo_replaced_in_place_gets_new_landmarks(copy):
    """Same name, other content (the face moved 30 px right), and an older mtime than every
    output, as when a backup is restored: load_scene redoes the landmarks."""
    scene, prep = copy
    photo = scene / "images" / "a.png"
    old = _load(scene, prep).landmarks[0].numpy()
    img = cv2.imread(str(photo))
    cv2.imwrite(str(photo), cv2.warpAffine(img, np.float32([[1, 0, 30], [0, 1, 0]]), img.shape[1::-1]))
    os.utime(photo, (946684800, 946684800))  # 2000-01-01
    new = _load(scene, prep).landmarks[0].numpy()
    assert np.abs(new - old - [30, 0]).mean() < 2.0
    assert _manifest(prep)["views"]["a.png"]["bytes"] == photo.stat().st_size


def test_nothing_is_recomputed_when_nothing_changed(copy):
    """Images touched (newer than every output, as after a plain copy) but unchanged: neither
    process_data nor load_scene reruns a stage."""
    scene, prep = copy
    os.utime(scene / "images" / "a.png")
    before, stages = _stamps(prep), _manifest(prep)["stages"]
    run_all(scene, out_dir=prep, progress=False)
    _load(scene, prep)
    assert _stamps(prep) == before
    assert _manifest(prep)["stages"] == stages


def test_changed_setting_redoes_only_its_stage(copy):
    scene, prep = copy
    before = _stamps(prep)
    K_before = json.loads((prep / "cameras.json").read_text())["K"]
    _load(scene, prep, fov=40.0)
    after = _stamps(prep)
    assert after["cameras.json"] != before["cameras.json"]
    assert json.loads((prep / "cameras.json").read_text())["K"] != K_before
    assert _manifest(prep)["stages"]["intrinsics"]["options"]["fov"] == 40.0
    assert {k: v for k, v in after.items() if k != "cameras.json"} == \
        {k: v for k, v in before.items() if k != "cameras.json"}
    _load(scene, prep)  # options not given keep the previous run's: nothing to redo
    assert _stamps(prep) == after


def test_manifest_without_fingerprints_is_stale(copy):
    """A manifest written before fingerprints (version 1) for this scene: recomputed, no crash."""
    scene, prep = copy
    m = _manifest(prep)
    m.update(version=1, scene=str(scene.resolve()))
    m.pop("producer", None), m.pop("options", None)
    for v in m["views"].values():
        v.pop("sha256", None), v.pop("bytes", None)
    for rec in m["stages"].values():
        rec.pop("inputs", None)
    (prep / "manifest.json").write_text(json.dumps(m))
    os.utime(scene / "images" / "a.png", (946684800, 946684800))  # older than every output: mtimes say fresh
    before = _stamps(prep)
    run_all(scene, out_dir=prep, stages=["scan", "landmarks"], progress=False)
    assert _stamps(prep)["landmarks.json"] != before["landmarks.json"]
    assert "sha256" in _manifest(prep)["views"]["a.png"]


def test_outputs_without_manifest_are_not_trusted(copy):
    scene, prep = copy
    (prep / "manifest.json").unlink()
    before = _stamps(prep)
    with pytest.raises(ValueError, match="no manifest.json.*--force_preprocess"):
        _load(scene, prep)
    assert _stamps(prep) == before


def test_read_only_preprocessing_is_used_only_for_its_images(copy):
    """A read-only preprocessing folder cannot be updated: it is read as it is while the images
    match its fingerprints, and refused once a photo changed."""
    scene, prep = copy
    os.chmod(prep, 0o555)
    try:
        before = _stamps(prep)
        assert _load(scene, prep).num_views == 1
        photo = scene / "images" / "a.png"
        cv2.imwrite(str(photo), cv2.flip(cv2.imread(str(photo)), 1))  # the mirrored face
        with pytest.raises(ValueError, match="for other images.*a.png"):
            _load(scene, prep)
        assert _stamps(prep) == before
    finally:
        os.chmod(prep, 0o755)
