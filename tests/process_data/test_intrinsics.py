import json

import numpy as np
import pytest

from process_data.intrinsics import K_from_fov, check_plausible, estimate_intrinsics


@pytest.mark.slow
def test_multiview_sfm(shared_data, tmp_path):
    d = shared_data / "multiview_sample" / "images"
    names = sorted(p.name for p in d.glob("*.jpg"))
    # SIFT at a 400 px long side keeps this test fast (4 s on 2 cores); keypoints come back at
    # full resolution, so K is still for 520x696
    cams, rec, warns = estimate_intrinsics(d, names, work_dir=tmp_path / "sfm", num_threads=2, max_image_size=400)
    assert cams["source"] == "sfm", warns
    assert len(cams["registered"]) >= 6
    assert len(rec.cameras) == 1
    K = np.array(cams["K"])
    assert np.isfinite(K).all() and 0.5 * 520 <= K[0, 0] <= 10 * 520
    assert (cams["width"], cams["height"]) == (520, 696)
    assert np.allclose(K[:2, 2], [260, 348])
    # poses are rotations; the model reprojects well
    for p in cams["sfm_poses"].values():
        R = np.array(p["R"])
        assert np.allclose(R @ R.T, np.eye(3), atol=1e-6)
    assert cams["mean_reprojection_error"] < 2.0
    # the camera centres of the registered views all look at the same point (the head):
    # each optical axis passes near the centroid of the sparse points
    pts = np.array([p.xyz for p in rec.points3D.values()])
    centre = np.median(pts, axis=0)
    for p in cams["sfm_poses"].values():
        R, t = np.array(p["R"]), np.array(p["t"])
        Xc = R @ centre + t
        assert Xc[2] > 0 and np.linalg.norm(Xc[:2]) / Xc[2] < 0.2
    json.dumps(cams)


def test_plausibility_checks():
    K = K_from_fov(500, 400, 40)
    assert check_plausible(K, [], 500, 400, 0.5) is None
    assert "focal" in check_plausible(np.diag([9.0, 9.0, 1.0]), [], 500, 400, 0.5)
    assert "distortion" in check_plausible(K, [-2.7], 500, 400, 0.5)
    assert "reprojection" in check_plausible(K, [], 500, 400, 5.0)


def test_fov_fallback_when_sfm_cannot_run(tmp_path):
    import cv2

    d = tmp_path / "imgs"
    d.mkdir()
    rng = np.random.default_rng(0)
    for i in range(2):
        cv2.imwrite(str(d / f"{i}.png"), rng.integers(0, 255, (60, 80, 3), dtype=np.uint8))
    with pytest.warns(UserWarning, match="fall back"):
        cams, rec, warns = estimate_intrinsics(d, ["0.png", "1.png"], fov_deg=60)
    assert rec is None and cams["source"] == "fov" and cams["registered"] == []
    assert warns[0].startswith("SfM not run: 2 view(s), fewer than the 3")   # said as such, not as a failure
    # f = (W/2) / tan(fov/2)
    assert np.isclose(cams["K"][0][0], 40 / np.tan(np.radians(30)))
    assert cams["K"][0][2] == 40 and cams["K"][1][2] == 30


def test_fov_validation():
    with pytest.raises(ValueError):
        K_from_fov(100, 100, 0)


def test_exif_fallback(tmp_path):
    from PIL import Image

    from process_data.intrinsics import exif_focal_px

    d = tmp_path / "imgs"
    d.mkdir()
    rng = np.random.default_rng(0)
    for i in range(2):
        im = Image.fromarray(rng.integers(0, 255, (60, 90, 3), dtype=np.uint8))
        exif = Image.Exif()
        exif.get_ifd(0x8769)[0xA405] = 50  # FocalLengthIn35mmFilm = 50 mm
        im.save(d / f"{i}.jpg", exif=exif)
    # 50 mm on a 36 mm-wide frame: f = 50 / 36 * long side
    assert np.isclose(exif_focal_px(d / "0.jpg"), 50 / 36 * 90)
    with pytest.warns(UserWarning):
        cams, _, _ = estimate_intrinsics(d, ["0.jpg", "1.jpg"])
    assert cams["source"] == "exif" and np.isclose(cams["K"][0][0], 125.0)


def test_landmarks_become_index_matched_features(tmp_path):
    import cv2
    import pycolmap

    from process_data.intrinsics import add_landmark_features, landmark_descriptors

    L = landmark_descriptors().astype(np.float64)
    assert np.array_equal(landmark_descriptors(), landmark_descriptors())  # same in every view
    dist = np.linalg.norm(L[:, None] - L[None], axis=-1) + np.eye(68) * 1e9
    assert dist.min() > 100  # far apart: equal indices are the only distance-0 pairs

    rng = np.random.default_rng(0)
    d = tmp_path / "imgs"
    d.mkdir()
    base = cv2.GaussianBlur(rng.integers(0, 255, (120, 160, 3), dtype=np.uint8), (0, 0), 2)
    cv2.imwrite(str(d / "a.png"), base)
    cv2.imwrite(str(d / "b.png"), np.roll(base, 3, axis=1))
    db = tmp_path / "db.db"
    pycolmap.extract_features(db, str(d), camera_mode=pycolmap.CameraMode.SINGLE, device=pycolmap.Device.cpu)
    pts = {"a.png": rng.uniform(10, 110, (68, 2)), "b.png": rng.uniform(10, 110, (68, 2))}
    h = pycolmap.Database.open(str(db))
    before = {im.name: h.num_keypoints_for_image(im.image_id) for im in h.read_all_images()}
    h.close()
    assert add_landmark_features(pycolmap, db, pts) == 2
    mo = pycolmap.FeatureMatchingOptions()
    mo.skip_geometric_verification = True
    pycolmap.match_exhaustive(db, matching_options=mo, device=pycolmap.Device.cpu)
    h = pycolmap.Database.open(str(db))
    ims = {im.name: im.image_id for im in h.read_all_images()}
    for n, iid in ims.items():
        kp = h.read_keypoints(iid)
        assert len(kp) == before[n] + 68 == h.read_descriptors(iid).data.shape[0]
        assert np.allclose(kp[-68:, :2], pts[n], atol=1e-4)
    m = h.read_matches(ims["a.png"], ims["b.png"])
    h.close()
    na, nb = before["a.png"], before["b.png"]
    lm = m[(m[:, 0] >= na) | (m[:, 1] >= nb)]
    assert len(lm) == 68 and np.array_equal(lm[:, 0] - na, lm[:, 1] - nb)


def test_image_ids_do_not_depend_on_the_threads(tmp_path):
    """extract_and_match extracts SIFT on every core, yet numbers the images in the sorted order
    of their names (COLMAP's, whatever order they are given in): the SfM database, and the model
    mapped from it, must not depend on which thread finished first. Large and small images
    alternate so that, numbered as they finish, the small ones would overtake (pycolmap's
    extract_features alone, on 2 threads, gives v1, v0, v3, v2, ... here, with or
    without domain-size pooling)."""
    import cv2
    import pycolmap

    from process_data.intrinsics import extract_and_match

    rng = np.random.default_rng(0)
    d = tmp_path / "imgs"
    d.mkdir()
    names = []
    for i in range(8):
        s = 320 if i % 2 == 0 else 96        # the small ones finish first on 2 threads
        noise = rng.integers(0, 255, (s, s, 3), dtype=np.uint8)
        cv2.imwrite(str(d / f"v{i}.png"), cv2.GaussianBlur(noise, (0, 0), 1.5))
        names.append(f"v{i}.png")
    features = []
    for order in (names, names[::-1]):
        db = tmp_path / f"{order[0]}.db"
        extract_and_match(pycolmap, db, d, order, "PINHOLE", 1024, 0, -1, False, pycolmap.CameraMode.PER_IMAGE, None,
                          sift_dsp=False)     # plain SIFT: 3x faster, the same race
        with pycolmap.Database.open(str(db)) as h:
            ids = {im.name: im.image_id for im in h.read_all_images()}
            assert [ids[n] for n in names] == list(range(1, 9))
            features.append({n: h.read_keypoints(i).tobytes() + h.read_descriptors(i).data.tobytes()
                             for n, i in ids.items()})
    assert features[0] == features[1]


def test_keypoint_masks_keep_the_keypoints_on_the_mask(tmp_path):
    """extract_and_match with keypoint_masks (process_data's masks/head/<stem>.png): every keypoint
    on a non-zero pixel of its view's mask, also when SIFT runs on downscaled images, and for a
    mask of half the image's size (scaled to the image's; COLMAP itself would compare image
    pixels with the mask's and drop every keypoint beyond it); a view without a mask gets none.
    Without masks the same images have keypoints on both halves."""
    import cv2
    import pycolmap

    from process_data.intrinsics import extract_and_match

    rng = np.random.default_rng(1)
    images, masks = tmp_path / "imgs", tmp_path / "masks"
    images.mkdir()
    masks.mkdir()
    names = ["a.jpg", "b.jpg", "c.jpg"]
    for n in names:
        noise = rng.integers(0, 255, (200, 240, 3), dtype=np.uint8)
        cv2.imwrite(str(images / n), cv2.GaussianBlur(noise, (0, 0), 1.5), [cv2.IMWRITE_JPEG_QUALITY, 95])
    left = np.zeros((200, 240), np.uint8)
    left[:, :120] = 255
    cv2.imwrite(str(masks / "a.png"), left)
    cv2.imwrite(str(masks / "b.png"), cv2.resize(255 - left, (120, 100), interpolation=cv2.INTER_NEAREST))
    # c.jpg: no mask

    def keypoints(db, mask_dir, size):
        extract_and_match(pycolmap, db, images, names, "PINHOLE", size, 0, -1, False, pycolmap.CameraMode.PER_IMAGE,
                          None, sift_dsp=False, keypoint_masks=mask_dir)
        with pycolmap.Database.open(str(db)) as h:
            return {im.name: h.read_keypoints(im.image_id)[:, :2] for im in h.read_all_images()}

    every = keypoints(tmp_path / "all.db", None, 1024)
    assert all((kp[:, 0] < 110).sum() > 50 and (kp[:, 0] > 130).sum() > 50 for kp in every.values())
    for size, db in ((1024, "full.db"), (160, "small.db")):
        kp = keypoints(tmp_path / db, masks, size)
        assert len(kp["a.jpg"]) > 50 and len(kp["b.jpg"]) > 50 and len(kp["c.jpg"]) == 0, size
        assert kp["a.jpg"][:, 0].max() < 121 and kp["b.jpg"][:, 0].min() > 119, size
        assert kp["b.jpg"][:, 1].max() > 150, size                      # below the small mask's 100 rows


def test_doubled_sift_gives_keypoints_in_the_images_pixels(tmp_path):
    """extract_and_match with upsample=2 (small images: SIFT sees copies doubled) stores the
    keypoints, the cameras and the matches in the images' own pixels, pixel centres at +0.5.
    Checked against blobs drawn at known sub-pixel centres, and a second view that is the
    first shifted by a known offset: the matched keypoints' displacement is that offset. The
    same hold without doubling (COLMAP's own pixels), and the copies are gone afterwards, also
    when an image cannot be read."""
    import cv2
    import pycolmap

    from process_data.intrinsics import extract_and_match, sift_upsampling

    assert sift_upsampling([(160, 120), (120, 160)], 320) == 2 and sift_upsampling([(161, 120)], 320) == 1
    rng = np.random.default_rng(2)
    h, w, shift = 120, 160, np.array([6.0, -3.0])
    centres = np.stack([rng.uniform(20, w - 20, 12), rng.uniform(20, h - 20, 12)], 1)
    yy, xx = np.mgrid[0:h, 0:w] + 0.5                                   # pixel centres
    texture = cv2.GaussianBlur(rng.normal(0, 1, (h + 20, w + 20)), (0, 0), 1.2)

    def draw(offset):
        x0, y0 = 10 - int(offset[0]), 10 - int(offset[1])
        img = 200.0 + 15 * texture[y0:y0 + h, x0:x0 + w]
        for c in centres + offset:
            img -= 120 * np.exp(-((xx - c[0]) ** 2 + (yy - c[1]) ** 2) / (2 * 2.0 ** 2))
        return np.clip(img, 0, 255).astype(np.uint8)

    d = tmp_path / "imgs"
    d.mkdir()
    cv2.imwrite(str(d / "a.png"), draw(np.zeros(2)))
    cv2.imwrite(str(d / "b.png"), draw(shift))
    for up in (1, 2):
        db = tmp_path / f"up{up}" / "database.db"
        db.parent.mkdir()
        extract_and_match(pycolmap, db, d, ["a.png", "b.png"], "PINHOLE", 320, 0, -1, False,
                          pycolmap.CameraMode.PER_IMAGE, None, sift_dsp=False, upsample=up)
        assert sorted(p.name for p in db.parent.iterdir()) == ["database.db"]
        with pycolmap.Database.open(str(db)) as h_db:
            ims = {im.name: im for im in h_db.read_all_images()}
            assert all((h_db.read_camera(im.camera_id).width, h_db.read_camera(im.camera_id).height) == (w, h)
                       for im in ims.values())
            kp = {n: np.asarray(h_db.read_keypoints(im.image_id))[:, :2] for n, im in ims.items()}
            m = h_db.read_two_view_geometry(ims["a.png"].image_id, ims["b.png"].image_id).inlier_matches
        near = np.linalg.norm(kp["a.png"][None] - centres[:, None], axis=2).min(1)
        assert np.median(near) < 0.1, (up, near)                         # the blobs' centres, to 0.1 px
        moved = kp["b.png"][m[:, 1]] - kp["a.png"][m[:, 0]]
        assert len(m) >= 20 and np.abs(np.median(moved, 0) - shift).max() < 0.02, (up, len(m), np.median(moved, 0))
    # an image that cannot be read: a clear error, and no copy of the others left behind
    (d / "c.png").write_bytes(b"not an image")
    bad = tmp_path / "bad" / "database.db"
    bad.parent.mkdir()
    with pytest.raises(ValueError, match="could not read .*c.png for SIFT"):
        extract_and_match(pycolmap, bad, d, ["a.png", "b.png", "c.png"], "PINHOLE", 320, 0, -1, False,
                          pycolmap.CameraMode.PER_IMAGE, None, sift_dsp=False, upsample=2)
    assert not (bad.parent / "sift_images").exists()


def test_retry_round_rematches_the_same_features(tmp_path, monkeypatch):
    """When the first round's models are not good enough, SfM's second round matches again
    with another RANSAC seed and, with ``--sfm_landmarks fallback``, the landmarks added, on
    the features of the first round: SIFT runs once. Checked on a real database (two views of
    blobs): the cleared and rematched database has the same inlier matches for the same seed."""
    import cv2
    import pycolmap

    from process_data import intrinsics

    rng = np.random.default_rng(5)
    img = cv2.GaussianBlur(rng.uniform(0, 255, (120, 160)).astype(np.float32), (0, 0), 2.0)
    d = tmp_path / "imgs"
    d.mkdir()
    cv2.imwrite(str(d / "a.png"), np.clip(img, 0, 255).astype(np.uint8))
    cv2.imwrite(str(d / "b.png"), np.clip(np.roll(img, (3, 5), (0, 1)), 0, 255).astype(np.uint8))
    db = tmp_path / "real" / "database.db"
    db.parent.mkdir()

    def inliers(seed):
        intrinsics.match_features(pycolmap, db, seed, -1, False)
        with pycolmap.Database.open(str(db)) as h:
            a, b = sorted(h.read_all_images(), key=lambda im: im.name)
            return np.asarray(h.read_two_view_geometry(a.image_id, b.image_id).inlier_matches)

    intrinsics.extract_features(pycolmap, db, d, ["a.png", "b.png"], "PINHOLE", 320, -1,
                                pycolmap.CameraMode.PER_IMAGE, sift_dsp=False)
    first = inliers(0)
    with pycolmap.Database.open(str(db)) as h:
        h.clear_matches()
        h.clear_two_view_geometries()
        assert h.num_matched_image_pairs() == 0 and h.num_verified_image_pairs() == 0
    assert len(first) >= 20 and np.array_equal(inliers(0), first)

    calls = []
    monkeypatch.setattr(intrinsics, "extract_features", lambda *a, **k: calls.append("extract"))
    monkeypatch.setattr(intrinsics, "add_landmark_features", lambda *a, **k: calls.append("landmarks"))
    monkeypatch.setattr(intrinsics, "match_features", lambda pc, db, seed, *a: calls.append(f"match {seed}"))
    monkeypatch.setattr(pycolmap, "incremental_mapping", lambda *a, **k: {0: "a model"})
    monkeypatch.setattr(intrinsics, "_rank", lambda rec: 0)
    monkeypatch.setattr(intrinsics, "_good", lambda rec, n: False)
    work = tmp_path / "sfm"
    work.mkdir()
    pycolmap.Database.open(str(work / "database.db")).close()     # what extraction would have made
    for use, expected in (("fallback", ["extract", "match 7", "landmarks", "match 8"]),
                          ("always", ["extract", "landmarks", "match 7", "match 8"])):
        calls.clear()
        got = intrinsics.run_sfm(d, ["a.png", "b.png"], work, seed=7, max_attempts=1, landmarks={"a.png": None},
                                 use_landmarks=use)
        assert got == "a model" and calls == expected, (use, calls)


@pytest.mark.slow
def test_small_real_views_are_doubled_for_sfm(shared_data, tmp_path):
    """The real sample halved (260 x 348, under half the default 1024 px limit): SIFT sees the
    views doubled, and SfM finds ~2x the points it finds on them as they are (the limit set to
    their size), with K and poses for the halved views (docs/PREPROCESSING.md, "Small images")."""
    import cv2
    d = tmp_path / "half"
    d.mkdir()
    names = sorted(p.name for p in (shared_data / "multiview_sample" / "images").glob("*.jpg"))
    for n in names:
        img = cv2.imread(str(shared_data / "multiview_sample" / "images" / n))
        cv2.imwrite(str(d / n), cv2.resize(img, (260, 348), interpolation=cv2.INTER_AREA),
                    [cv2.IMWRITE_JPEG_QUALITY, 95])
    found = {}
    for what, size in (("doubled", 1024), ("as they are", 348)):
        cams, rec, warns = estimate_intrinsics(d, names, work_dir=tmp_path / what, num_threads=2, max_image_size=size)
        assert cams["source"] == "sfm" and (cams["width"], cams["height"]) == (260, 348), warns
        assert np.allclose(np.array(cams["K"])[:2, 2], [130, 174])
        assert cams["sift_upsample"] == (2 if size == 1024 else 1)
        found[what] = (len(cams["registered"]), cams["num_points3D"], cams["mean_reprojection_error"])
    print(f"halved real views, SfM (views, points, reprojection px): {found}")
    assert found["doubled"][0] >= found["as they are"][0] >= 6
    assert found["doubled"][1] >= 1.8 * found["as they are"][1], found
    assert not (tmp_path / "doubled" / "sift_images").exists()
