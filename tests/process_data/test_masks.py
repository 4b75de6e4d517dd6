import numpy as np
import pytest

from process_data.landmarks import detect_landmarks
from process_data.masks import compute_masks, iou


@pytest.mark.slow
def test_ffhq_skin_iou(ffhq, read_rgb):
    import cv2

    ious = []
    for i in range(10):
        img = read_rgb(ffhq / f"{i:05d}.png")
        pts = detect_landmarks(img, cnn_fallback=False)["points"]
        head, skin = compute_masks(img, pts)
        assert head.shape == skin.shape == img.shape[:2] and head.dtype == skin.dtype == np.uint8
        ref = cv2.imread(str(ffhq / f"{i:05d}_skinmask.png"), cv2.IMREAD_GRAYSCALE) >= 128
        ious.append(iou(skin, ref))
        # skin lies almost entirely inside the head; eyes are never skin
        assert ((skin > 0) & (head == 0)).sum() <= 0.02 * (skin > 0).sum()
        eye = np.round(pts[36:42].mean(0) - 0.5).astype(int)
        assert skin[eye[1], eye[0]] == 0
    assert np.mean(ious) >= 0.80, ious


def test_synthetic_face_masks():
    # a flat "skin" disc on a blue background with landmarks from a 68-point template
    H = W = 200
    img = np.zeros((H, W, 3), np.uint8)
    img[:] = (30, 60, 160)
    import cv2

    cv2.ellipse(img, (100, 100), (55, 75), 0, 0, 360, (205, 160, 130), -1)
    rng = np.random.default_rng(1)
    img = np.clip(img + rng.normal(0, 3, img.shape), 0, 255).astype(np.uint8)
    t = np.linspace(np.pi * 0.05, np.pi * 0.95, 17)
    jaw = np.stack([100 - 50 * np.cos(t), 95 + 70 * np.sin(t)], 1)
    brows = np.stack([np.linspace(62, 138, 10), np.full(10, 75.0)], 1)
    nose = np.stack([np.full(9, 100.0), np.linspace(85, 125, 9)], 1)
    eye = lambda cx: np.stack([cx + 8 * np.cos(np.linspace(0, 2 * np.pi, 6, endpoint=False)),
                               88 + 3 * np.sin(np.linspace(0, 2 * np.pi, 6, endpoint=False))], 1)
    mouth_o = np.stack([100 + 18 * np.cos(np.linspace(0, 2 * np.pi, 12, endpoint=False)),
                        140 + 6 * np.sin(np.linspace(0, 2 * np.pi, 12, endpoint=False))], 1)
    mouth_i = np.stack([100 + 10 * np.cos(np.linspace(0, 2 * np.pi, 8, endpoint=False)),
                        140 + 2 * np.sin(np.linspace(0, 2 * np.pi, 8, endpoint=False))], 1)
    pts = np.vstack([jaw, brows, nose, eye(80), eye(120), mouth_o, mouth_i])
    assert pts.shape == (68, 2)
    head, skin = compute_masks(img, pts)
    disc = np.zeros((H, W), np.uint8)
    cv2.ellipse(disc, (100, 100), (55, 75), 0, 0, 360, 255, -1)
    assert iou(head, disc) > 0.8
    assert ((skin > 0) & (disc == 0)).sum() < 0.02 * (skin > 0).sum()  # no background in the skin
    assert skin[4, 4] == 0 and head[4, 4] == 0


def test_bad_arguments():
    with pytest.raises(ValueError, match="68, 2"):
        compute_masks(np.zeros((32, 32, 3), np.uint8), np.zeros((5, 2)))
    with pytest.raises(ValueError, match="uint8"):
        compute_masks(np.zeros((32, 32, 3), np.float32), np.zeros((68, 2)))
