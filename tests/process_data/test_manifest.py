import numpy as np
import pytest

from process_data.manifest import ImageTransform, to_derived, to_original
from process_data.pad import apply_transform, crop_transform, pad_transform


@pytest.mark.parametrize("t", [pad_transform(520, 696, 512), pad_transform(300, 200, None),
                               crop_transform([100.3, 80.7, 260.2, 250.9], 256, 1.6),
                               crop_transform([-20, -30, 40, 35], 1024, 2.0)])
def test_round_trip_exact(t):
    rng = np.random.default_rng(0)
    p = rng.uniform(-100, 800, size=(1000, 2))
    back = t.to_original(t.to_derived(p))
    assert np.abs(back - p).max() < 1e-6
    d = t.to_dict()
    assert np.abs(to_original(to_derived(p, d), d) - p).max() < 1e-6


def test_pad_places_pixels_where_the_transform_says():
    # a single bright pixel (column 37, row 11) in a 60x40 image: its centre is (37.5, 11.5)
    img = np.zeros((40, 60, 3), np.uint8)
    img[11, 37] = 255
    t = pad_transform(60, 40, None)  # no resampling: pure integer padding
    out = apply_transform(img, t)
    assert out.shape == (60, 60, 3)
    (r, c), = np.argwhere(out[..., 0] == 255)
    assert np.allclose(t.to_derived([37.5, 11.5]), [c + 0.5, r + 0.5])


@pytest.mark.parametrize("scale_size", [120, 33])
def test_scaled_blob_centroid_maps(scale_size):
    # the intensity centroid of a smooth blob is preserved by resampling: check the maps agree
    yy, xx = np.mgrid[0:40, 0:60] + 0.5
    c = np.array([23.3, 17.8])
    blob = np.exp(-((xx - c[0]) ** 2 + (yy - c[1]) ** 2) / (2 * 4.0 ** 2))
    img = np.repeat((blob * 255).astype(np.uint8)[..., None], 3, axis=2)
    t = pad_transform(60, 40, scale_size)
    out = apply_transform(img, t).astype(np.float64)[..., 0]
    Y, X = np.mgrid[0:out.shape[0], 0:out.shape[1]] + 0.5
    cen = np.array([(X * out).sum(), (Y * out).sum()]) / out.sum()
    assert np.linalg.norm(t.to_original(cen) - c) < 0.15


def test_crop_centres_the_box_and_K():
    t = crop_transform([100, 50, 200, 150], 200, 2.0)
    assert np.allclose(t.to_derived([150, 100]), [100, 100])
    assert np.isclose(t.scale, 1.0)
    K = np.array([[500, 0, 160], [0, 500, 120], [0, 0, 1.0]])
    Kd = t.K_to_derived(K)
    X = np.array([0.1, -0.2, 2.0])
    u = (K @ X)[:2] / X[2]
    ud = (Kd @ X)[:2] / X[2]
    assert np.allclose(t.to_derived(u), ud)


def test_invalid_transform():
    with pytest.raises(ValueError):
        ImageTransform(0.0, (0, 0), (1, 1))
    with pytest.raises(ValueError):
        crop_transform([5, 5, 5, 5], 64)
