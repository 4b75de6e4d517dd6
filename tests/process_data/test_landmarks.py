import numpy as np
import pytest

from process_data.landmarks import detect_landmarks, map_cnn_box, nme


def test_ffhq_nme_against_fan_reference(ffhq, read_rgb):
    errs = []
    for i in range(10):
        img = read_rgb(ffhq / f"{i:05d}.png")
        r = detect_landmarks(img, cnn_fallback=False)
        assert r["points"] is not None and r["points"].shape == (68, 2)
        assert r["detector"] == "dlib-hog"
        ref = np.load(ffhq / f"{i:05d}_landmarks68.npy").astype(np.float64) + 0.5  # same +0.5 convention
        errs.append(nme(r["points"], ref))
    assert np.mean(errs) <= 0.06, errs


def test_multiview_all_found(shared_data, read_rgb):
    d = shared_data / "multiview_sample" / "images"
    names = sorted(d.glob("*.jpg"))
    assert len(names) == 8
    for p in names:
        r = detect_landmarks(read_rgb(p), cnn_fallback=False)
        assert r["points"] is not None, p.name
        x0, y0, x1, y1 = r["box"]
        inside = (r["points"][:, 0] > x0 - 0.3 * (x1 - x0)) & (r["points"][:, 0] < x1 + 0.3 * (x1 - x0))
        assert inside.all()


def test_no_face_is_none_not_an_error():
    g = np.tile(np.linspace(0, 255, 128, dtype=np.uint8)[None, :, None], (96, 1, 3))
    r = detect_landmarks(g)
    assert r["points"] is None and r["box"] is None and "reason" in r


def test_bad_arguments():
    with pytest.raises(ValueError, match="uint8"):
        detect_landmarks(np.zeros((32, 32), np.uint8))
    with pytest.raises(ValueError, match="backend"):
        detect_landmarks(np.zeros((32, 32, 3), np.uint8), backend="nope")


def test_fan_missing_is_explained():
    pytest.importorskip("dlib")
    try:
        import face_alignment  # noqa: F401
        pytest.skip("face_alignment is installed")
    except ImportError:
        pass
    with pytest.raises(RuntimeError, match="dlib"):
        detect_landmarks(np.zeros((64, 64, 3), np.uint8), backend="fan")


def test_cnn_box_mapping_is_square_and_shifted():
    b = map_cnn_box([10, 20, 110, 120])
    assert np.isclose(b[2] - b[0], b[3] - b[1])
    assert b[1] > 20  # HOG boxes sit lower than mmod boxes


@pytest.mark.slow
def test_cnn_fallback_with_mapped_box(ffhq, read_rgb, monkeypatch):
    """With HOG blinded, the mmod CNN + box mapping still lands the predictor on the face."""
    from process_data import landmarks as lm

    dlib, _, predictor = lm._dlib_models()

    class NoHog:
        def run(self, *a):
            return [], [], []

    monkeypatch.setattr(lm, "_dlib_models", lambda: (dlib, NoHog(), predictor))
    img = read_rgb(ffhq / "00002.png")
    r = lm.detect_landmarks(img)
    assert r["detector"] == "dlib-cnn-mapped"
    ref = np.load(ffhq / "00002_landmarks68.npy").astype(np.float64) + 0.5
    assert nme(r["points"], ref) < 0.06
