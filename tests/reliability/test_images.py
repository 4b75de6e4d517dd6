"""Photos as users bring them: phone-rotated (EXIF orientation), two files with one stem, mixed
sizes, and a corpus of bad or unusual files generated at test time (nothing committed)."""
from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from fitting.export import displayed_image_paths
from fitting.images import read_image
from fitting.scene import load_scene
from process_data import run_all
from process_data.manifest import load_manifest

ORIENTATION = 0x0112


def _save_sideways(upright: np.ndarray, path: Path, orientation: int = 6) -> None:
    """Store ``upright`` (H, W, 3) RGB the way a phone does: pixels rotated, EXIF tag to undo it.
    Orientation 6 = "rotate 90 deg clockwise to display", so the stored pixels are the upright
    image rotated 90 deg counter-clockwise (8: the other way)."""
    stored = np.rot90(upright, 1 if orientation == 6 else -1)
    exif = Image.Exif()
    exif[ORIENTATION] = orientation
    Image.fromarray(np.ascontiguousarray(stored)).save(path, quality=95, exif=exif)


def _stored_pixels(path: Path) -> np.ndarray:
    """What a tool that ignores the orientation tag (COLMAP, nerfstudio) sees: (H, W, 3) RGB."""
    return cv2.imread(str(path), cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION)[:, :, ::-1]


@pytest.fixture
def face(ffhq, read_rgb) -> np.ndarray:
    return read_rgb(ffhq / "00000.png")


def _scene(root: Path) -> Path:
    (root / "images").mkdir(parents=True)
    return root


def _grey(path: Path, w: int, h: int) -> None:
    cv2.imwrite(str(path), np.full((h, w, 3), 128, np.uint8))


# ---------------------------------------------------------------- EXIF orientation
def test_phone_rotated_photo_is_read_upright(tmp_path, face):
    """A portrait stored sideways with Orientation 6 gives the landmarks, masks, manifest and
    fitting images of the same photo stored upright."""
    scene = _scene(tmp_path / "scene")
    # 200 x 256, portrait: a sideways read would show in the sizes too
    _save_sideways(face[:, 28:228], scene / "images" / "phone.jpg")
    stored = _stored_pixels(scene / "images" / "phone.jpg")
    assert stored.shape == (200, 256, 3)
    # the same decoded pixels, turned upright losslessly: results must match to the pixel
    Image.fromarray(np.ascontiguousarray(np.rot90(stored, -1))).save(scene / "images" / "upright.png")

    run_all(scene, progress=False, pad_size=64)
    views = load_manifest(scene)["views"]
    assert (views["phone.jpg"]["orientation"], views["upright.png"]["orientation"]) == (6, 1)
    assert views["phone.jpg"]["size"] == [200, 256]
    lms = json.loads((scene / "landmarks.json").read_text())
    err = np.abs(np.array(lms["phone.jpg"]["points"]) - np.array(lms["upright.png"]["points"]))
    assert err.max() < 1.0, err.max()
    for kind in ("head", "skin"):
        phone, ref = (cv2.imread(str(scene / "masks" / kind / f"{s}.png"), cv2.IMREAD_GRAYSCALE) > 127
                      for s in ("phone", "upright"))
        assert phone.shape == (256, 200)
        assert (phone & ref).sum() / (phone | ref).sum() > 0.98
    cams = json.loads((scene / "cameras.json").read_text())
    assert (cams["width"], cams["height"]) == (200, 256)

    sc = load_scene(scene, image_size=64, run_missing=False)
    assert sc.names == ["phone.jpg", "upright.png"] and sc.size == (64, 50)
    assert (sc.images[0] - sc.images[1]).abs().max() < 1e-6


def test_sfm_and_exports_see_upright_pixels(tmp_path, monkeypatch, face):
    """COLMAP and nerfstudio ignore the orientation tag: SfM runs on upright copies, and the
    exported transforms.json points at upright copies in <out>/images/."""
    import process_data.intrinsics as intr

    upright = face[:, 28:228]
    src = tmp_path / "images"
    src.mkdir()
    Image.fromarray(upright).save(src / "a.jpg", quality=95)
    _save_sideways(upright, src / "b.jpg", orientation=8)
    seen = {}

    def fake_sfm(image_dir, names, work_dir, **kw):
        seen.update({n: _stored_pixels(Path(image_dir) / n) for n in names})
        return None
    monkeypatch.setattr(intr, "run_sfm", fake_sfm)
    with pytest.warns(UserWarning):
        cams, _, _ = intr.estimate_intrinsics(src, ["a.jpg", "b.jpg"], work_dir=tmp_path / "sfm", min_registered=2)
    assert (cams["width"], cams["height"]) == (200, 256)
    assert all(seen[n].shape == (256, 200, 3) for n in ("a.jpg", "b.jpg"))
    assert np.abs(seen["b.jpg"].astype(int) - upright).mean() < 3

    out = tmp_path / "out"
    rel = displayed_image_paths(out, [src / "a.jpg", src / "b.jpg"])
    assert rel == ["images/a.jpg", "images/b.jpg"]
    assert (out / "images" / "a.jpg").read_bytes() == (src / "a.jpg").read_bytes()
    assert np.abs(_stored_pixels(out / "images" / "b.jpg").astype(int) - upright).mean() < 3
    # no photo stored sideways: the originals are referred to, nothing is copied
    assert displayed_image_paths(tmp_path / "out2", [src / "a.jpg"]) == ["../images/a.jpg"]
    assert not (tmp_path / "out2").exists()


# ---------------------------------------------------------------- two photos, one stem
def test_photos_sharing_a_stem_are_refused_everywhere(tmp_path):
    """face.jpg and Face.png would write one masks/face.png and one <savefolder>/face/: every
    entry point refuses them up front and names both."""
    from single_view.inputs import list_inputs

    scene = _scene(tmp_path / "scene")
    for n in ("face.jpg", "Face.png", "other.png"):
        _grey(scene / "images" / n, 32, 32)
    clash = "Face.png and face.jpg"
    with pytest.raises(ValueError, match=clash):
        run_all(scene, stages=["scan"], progress=False)
    with pytest.raises(ValueError, match=clash):
        load_scene(scene, run_missing=False)
    with pytest.raises(ValueError, match=f"{clash}.*--exclude"):
        list_inputs(scene / "images")
    paths, _, skipped = list_inputs(scene / "images", exclude="Face.png")
    assert [p.name for p in paths] == ["face.jpg", "other.png"] and "Face.png" in skipped


# ---------------------------------------------------------------- image sizes and the camera
def test_sizes_of_different_shapes_are_refused(tmp_path):
    """256x256, 400x400 and 520x696 photos cannot share one camera: the scan says which sizes
    and how many views have each, instead of fitting one view with a stretched K."""
    scene = _scene(tmp_path / "scene")
    for n, (w, h) in {"a.png": (256, 256), "b.png": (400, 400), "c.png": (400, 400), "d.jpg": (520, 696)}.items():
        _grey(scene / "images" / n, w, h)
    with pytest.raises(ValueError) as e:
        run_all(scene, stages=["scan"], progress=False)
    msg = str(e.value)
    for part in ("400x400: 2 view(s) (b.png, c.png)", "256x256: 1 view(s) (a.png)", "520x696: 1 view(s) (d.jpg)",
                 "scenes of their own"):
        assert part in msg, msg


def test_other_resolutions_of_the_camera_keep_square_pixels(tmp_path):
    """Views at another resolution of the camera's shape (150x201 and 240x320 beside 120x160) share
    its K scaled uniformly: fl_x == fl_y for every view, in K and in transforms.json."""
    from fitting.export import read_transforms, write_transforms

    scene = _scene(tmp_path / "scene")
    sizes = {"a.png": (120, 160), "b.png": (120, 160), "c.png": (150, 201), "d.png": (240, 320)}
    rng = np.random.default_rng(0)
    lms = {}
    for n, (w, h) in sizes.items():
        _grey(scene / "images" / n, w, h)
        for kind in ("head", "skin"):
            (scene / "masks" / kind).mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str(scene / "masks" / kind / n), np.full((h, w), 255, np.uint8))
        lms[n] = {"points": (rng.uniform(0.3, 0.7, (68, 2)) * (w, h)).tolist()}
    run_all(scene, stages=["scan"], progress=False)
    m = load_manifest(scene)
    assert m["camera_size"] == [120, 160] and not m["failed"]
    assert any("c.png, d.png" in w and "another resolution" in w for w in m["warnings"])
    K = [[200.0, 0, 60], [0, 200.0, 80], [0, 0, 1]]
    (scene / "landmarks.json").write_text(json.dumps(lms))
    (scene / "cameras.json").write_text(json.dumps({"K": K, "width": 120, "height": 160}))

    sc = load_scene(scene, image_size=64, run_missing=False)
    assert sc.names == list(sizes) and not sc.unused
    Ko = sc.K_orig.double().numpy()
    np.testing.assert_allclose(Ko[:, 0, 0], Ko[:, 1, 1], rtol=1e-7)
    np.testing.assert_allclose(Ko[:, 0, 0], [200, 200, 250, 400], rtol=1e-6)
    n = len(sizes)
    write_transforms(tmp_path / "transforms.json", Ko, np.tile(np.eye(3), (n, 1, 1)), np.zeros((n, 3)),
                     sc.orig_size.numpy(), list(sizes))
    *_, d = read_transforms(tmp_path / "transforms.json")
    assert all(f["fl_x"] == f["fl_y"] for f in d["frames"])


# ---------------------------------------------------------------- a corpus of bad and unusual files
REF = np.random.default_rng(1).integers(0, 256, (48, 64, 3), dtype=np.uint8)  # (H, W, 3) RGB
GREY = np.asarray(Image.fromarray(REF).convert("L"))


def _jpeg_bytes(img: np.ndarray) -> bytes:
    return cv2.imencode(".jpg", img[:, :, ::-1])[1].tobytes()


# name -> (writer, expected RGB or None when unreadable, tolerance in grey levels or error text)
CORPUS = {
    "grey.png": (lambda p: Image.fromarray(GREY).save(p), np.dstack([GREY] * 3), 0),
    "rgba.png": (lambda p: Image.fromarray(np.dstack([REF, GREY])).save(p), REF, 0),
    "palette.png": (lambda p: Image.fromarray(REF).quantize(256).save(p), None, 40),
    "rgb16.png": (lambda p: cv2.imwrite(str(p), REF[:, :, ::-1].astype(np.uint16) * 257), REF, 0),
    "grey16.png": (lambda p: cv2.imwrite(str(p), GREY.astype(np.uint16) * 257), np.dstack([GREY] * 3), 0),
    "cmyk.jpg": (lambda p: Image.fromarray(REF).convert("CMYK").save(p, quality=95), REF, 15),
    "corrupt.jpg": (lambda p: p.write_bytes(b"\xff\xd8\xff\xe0 not a jpeg"), None, "cannot read image"),
    "truncated.jpg": (lambda p: p.write_bytes(_jpeg_bytes(REF)[:400]), None, "truncated"),
    "empty.png": (lambda p: p.write_bytes(b""), None, "cannot identify"),
    "tiny.png": (lambda p: Image.fromarray(REF[:8, :8]).save(p), None, "only 8x8 pixels"),
}


@pytest.mark.parametrize("name", sorted(CORPUS))
def test_bad_image_corpus(tmp_path, name):
    """Every reader (preprocessing, fitting, single view: one function) decodes grey, RGBA,
    palette, 16-bit and CMYK files to 8-bit RGB and refuses broken files naming the file and
    what to do; the file itself is left as it was."""
    write, expected, tol = CORPUS[name]
    path = tmp_path / name
    write(path)
    before = path.read_bytes()
    if isinstance(tol, str):
        with pytest.raises(ValueError) as e:
            read_image(path)
        msg = str(e.value)
        assert name in msg and tol.lower() in msg.lower(), msg
        assert "re-export or remove" in msg or "needed" in msg, msg
    else:
        img = read_image(path)
        assert img.shape == REF.shape and img.dtype == np.uint8
        ref = REF if expected is None else expected
        assert np.abs(img.astype(int) - ref).mean() <= tol
        assert read_image(path, gray=True).shape == REF.shape[:2]
    assert path.read_bytes() == before


def test_bad_image_corpus_in_a_scene(tmp_path, digest):
    """The whole corpus in one scene: readable files are scanned at their size, broken ones
    are failed with the decoder's reason, and images/ is byte-identical afterwards."""
    scene = _scene(tmp_path / "scene")
    for name, (write, _, _) in CORPUS.items():
        write(scene / "images" / name)
    before = digest(scene / "images")
    run_all(scene, stages=["scan"], progress=False)
    m = load_manifest(scene)
    for name, (_, _, tol) in CORPUS.items():
        if isinstance(tol, str):
            assert m["failed"][name]["stage"] == "scan" and name in m["failed"][name]["reason"]
        else:
            assert m["views"][name]["size"] == [64, 48] and name not in m["failed"]
    assert digest(scene / "images") == before
