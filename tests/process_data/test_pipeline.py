"""run_all and the command line on small generated scenes, including every bad input."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from process_data import run_all
from process_data.__main__ import main as cli_main
from process_data.manifest import load_manifest, view_transform

REPO = Path(__file__).resolve().parents[2]


def _gradient(path, w=160, h=120):
    g = np.tile(np.linspace(0, 255, w, dtype=np.uint8)[None, :, None], (h, 1, 3))
    cv2.imwrite(str(path), g)


def test_empty_folder(tmp_path, capsys):
    (tmp_path / "images").mkdir()
    with pytest.raises(ValueError, match="no .jpg"):
        run_all(tmp_path)
    assert cli_main([str(tmp_path), "--no-progress"]) == 2
    assert "no .jpg" in capsys.readouterr().err
    with pytest.raises(ValueError, match="images/ folder"):
        run_all(tmp_path / "images")  # a folder without images/ inside
    with pytest.raises(ValueError, match="does not exist"):
        run_all(tmp_path / "missing")


def test_only_non_images_and_corrupt(tmp_path):
    im = tmp_path / "images"
    im.mkdir()
    (im / "notes.txt").write_text("hello")
    (im / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0garbage")
    with pytest.raises(ValueError, match="no readable image"):
        run_all(tmp_path, progress=False)
    m = load_manifest(tmp_path)
    assert "broken.jpg" in m["failed"] and "notes.txt" in m["skipped_files"]


@pytest.mark.slow
def test_bad_inputs_good_views_still_processed(tmp_path, ffhq, digest):
    scene = tmp_path / "scene"
    im = scene / "images"
    im.mkdir(parents=True)
    shutil.copy(ffhq / "00000.png", im / "a.png")
    shutil.copy(ffhq / "00003.png", im / "b.png")
    good = cv2.imread(str(ffhq / "00004.png"))
    ok, buf = cv2.imencode(".jpg", good)
    (im / "truncated.jpg").write_bytes(buf.tobytes()[: len(buf) // 2])   # truncated JPEG
    cv2.imwrite(str(im / "small.jpg"), cv2.resize(good, (200, 200)))      # another size, with a face
    _gradient(im / "gradient.png", 96, 96)                                 # no face (small: fast CNN)
    (im / "readme.md").write_text("not an image")
    (im / "sub").mkdir()
    before = digest(im)

    out = run_all(scene, progress=False, pad_size=128)
    assert out == scene
    assert digest(im) == before  # images/ is byte-identical
    m = load_manifest(out)
    f = m["failed"]
    assert f["truncated.jpg"]["stage"] == "scan" and "truncated" in f["truncated.jpg"]["reason"]
    assert f["gradient.png"] == {"stage": "landmarks", "reason": "no face found"}
    # small.jpg is the 256x256 camera at another resolution: kept, left out of SfM only
    assert any("small.jpg" in w and "another resolution" in w for w in m["warnings"])
    assert "readme.md" in m["skipped_files"] and "sub" in m["skipped_files"]
    assert "a.png" not in f and "b.png" not in f and "small.jpg" not in f

    lms = json.loads((out / "landmarks.json").read_text())
    assert lms["gradient.png"]["points"] is None
    for n in ("a.png", "b.png", "small.jpg"):
        assert np.array(lms[n]["points"]).shape == (68, 2)
        stem = Path(n).stem
        for kind in ("head", "skin"):
            mask = cv2.imread(str(out / "masks" / kind / f"{stem}.png"), cv2.IMREAD_UNCHANGED)
            assert mask.dtype == np.uint8 and mask.shape == tuple(m["views"][n]["size"][::-1])
        # pad transform recorded and exact
        t = view_transform(m, n)
        p = np.array(lms[n]["points"])
        assert np.abs(t.to_original(t.to_derived(p)) - p).max() < 1e-6
    assert not (out / "masks" / "skin" / "gradient.png").exists()
    cams = json.loads((out / "cameras.json").read_text())
    assert cams["source"] in ("fov", "exif") and (cams["width"], cams["height"]) == (256, 256)
    assert any("fall back" in w for w in m["stages"]["intrinsics"]["warnings"])
    for sheet in ("landmarks.png", "masks.png"):
        assert cv2.imread(str(out / "preview" / sheet)) is not None
    assert m["stages"]["landmarks"]["tool"].startswith("dlib")

    # second run: everything up to date, nothing rewritten; --force redoes
    stamp = (out / "landmarks.json").stat().st_mtime_ns
    run_all(scene, progress=False, pad_size=128)
    assert (out / "landmarks.json").stat().st_mtime_ns == stamp
    assert load_manifest(out)["failed"] == f
    run_all(scene, progress=False, pad_size=128, force=True, stages=["scan", "landmarks"])
    assert (out / "landmarks.json").stat().st_mtime_ns != stamp
    assert digest(im) == before
    leftovers = [p for p in out.rglob("*.tmp")]
    assert not leftovers


def test_out_dir_for_read_only_scene(tmp_path, ffhq, digest):
    scene = tmp_path / "scene"
    (scene / "images").mkdir(parents=True)
    shutil.copy(ffhq / "00001.png", scene / "images" / "x.png")
    before = digest(scene)
    os.chmod(scene / "images", 0o555)
    try:
        out = run_all(scene, out_dir=tmp_path / "out", stages=["scan", "landmarks"], progress=False)
    finally:
        os.chmod(scene / "images", 0o755)
    assert digest(scene) == before
    m = load_manifest(out)
    assert Path(m["images_dir"]).is_absolute()
    assert Path(m["views"]["x.png"]["file"]).is_file()
    lm = json.loads((out / "landmarks.json").read_text())["x.png"]
    # the +0.5 convention: the file stores dlib pixel-index coordinates + 0.5
    ref = np.load(ffhq / "00001_landmarks68.npy") + 0.5
    assert np.abs(np.array(lm["points"]) - ref).mean() < 5


def test_bad_options(tmp_path):
    (tmp_path / "images").mkdir()
    _gradient(tmp_path / "images" / "g.png")
    with pytest.raises(ValueError, match="bisenet-weights"):
        run_all(tmp_path, masks="bisenet")
    with pytest.raises(ValueError, match="unknown options"):
        run_all(tmp_path, colour="red")


def test_module_commands_run():
    for mod in ("process_data", "process_data.pad", "process_data.landmarks", "process_data.masks",
                "process_data.intrinsics"):
        r = subprocess.run([sys.executable, "-m", mod, "--help"], cwd=REPO, capture_output=True, text=True)
        assert r.returncode == 0 and "usage" in r.stdout


def test_crop_mode_transform_matches_pixels(tmp_path, ffhq):
    scene = tmp_path / "scene"
    (scene / "images").mkdir(parents=True)
    shutil.copy(ffhq / "00006.png", scene / "images" / "f.png")
    out = run_all(scene, stages=["scan", "landmarks", "pad"], pad_mode="crop", pad_size=200, progress=False)
    m = load_manifest(out)
    t = view_transform(m, "f.png")
    derived = cv2.imread(str(out / m["views"]["f.png"]["derived"]))
    orig = cv2.imread(str(scene / "images" / "f.png"))
    assert derived.shape == (200, 200, 3)
    # sample the original at the back-projected centre of a derived pixel: colours agree
    rng = np.random.default_rng(0)
    ij = rng.integers(20, 180, (50, 2))
    src = t.to_original(ij[:, ::-1] + 0.5)          # (x, y) continuous in the original
    inside = (src >= 1).all(1) & (src[:, 0] < orig.shape[1] - 1) & (src[:, 1] < orig.shape[0] - 1)
    sampled = np.array([cv2.getRectSubPix(orig, (1, 1), (float(x - 0.5), float(y - 0.5)))[0, 0]
                        for x, y in src[inside]], np.float64)
    got = derived[ij[inside, 0], ij[inside, 1]].astype(np.float64)
    assert np.abs(sampled - got).mean() < 3.0
    lm = json.loads((out / "landmarks.json").read_text())["f.png"]
    c = t.to_derived(np.array(lm["points"]).mean(0))
    assert np.all(np.abs(c - 100) < 30)  # the face is centred in the crop
