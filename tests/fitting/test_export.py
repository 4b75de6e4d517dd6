"""Export round trips: transforms.json and the COLMAP model give back our cameras exactly."""
from __future__ import annotations

import numpy as np
import torch

from fitting.export import (read_colmap_text, read_params, read_transforms, write_colmap_text, write_params,
                            write_transforms)
from fitting.render.cameras import look_at, project_points


def _cameras(n=5):
    ang = torch.linspace(-1.0, 1.0, n, dtype=torch.float64)
    eye = torch.stack([0.8 * torch.sin(ang), 0.1 * torch.cos(3 * ang), 0.8 * torch.cos(ang)], -1)
    R, t = look_at(eye, torch.zeros_like(eye) + torch.tensor([0.0, 0.02, 0.0], dtype=torch.float64))
    K = torch.tensor([[1500.0, 0, 260.3], [0, 1501.0, 348.1], [0, 0, 1]], dtype=torch.float64).repeat(n, 1, 1)
    sizes = np.tile([520, 696], (n, 1))
    return K.numpy(), R.numpy(), t.numpy(), sizes


def _project_np(P, K, R, t):
    x = P @ R.T + t
    return x[:, :2] / x[:, 2:] * np.array([K[0, 0], K[1, 1]]) + K[:2, 2]


def test_transforms_round_trip(tmp_path):
    K, R, t, sizes = _cameras()
    names = [f"images/v{i}.jpg" for i in range(len(K))]
    write_transforms(tmp_path / "transforms.json", K, R, t, sizes, names, mesh_path="mesh.obj")
    K2, R2, t2, s2, paths, d = read_transforms(tmp_path / "transforms.json")
    assert paths == names and d["mesh_path"] == "mesh.obj"
    np.testing.assert_allclose(K2, K, atol=1e-9)
    np.testing.assert_allclose(R2, R, atol=1e-9)
    np.testing.assert_allclose(t2, t, atol=1e-9)
    assert (s2 == sizes).all()
    # Independent reading of the NeRF convention: a point in front of camera i has negative z in
    # the OpenGL camera frame, x right, y up.
    P = np.array([[0.03, -0.02, 0.05]])
    for i, fr in enumerate(d["frames"]):
        c2w = np.asarray(fr["transform_matrix"])
        w2c = np.linalg.inv(c2w)
        pc = P @ w2c[:3, :3].T + w2c[:3, 3]
        assert pc[0, 2] < 0
        u = fr["fl_x"] * pc[0, 0] / -pc[0, 2] + fr["cx"]
        v = -fr["fl_y"] * pc[0, 1] / -pc[0, 2] + fr["cy"]
        ours, _ = project_points(torch.tensor(P)[None], torch.tensor(K[i:i + 1]), torch.tensor(R[i:i + 1]),
                                 torch.tensor(t[i:i + 1]))
        np.testing.assert_allclose([u, v], ours[0, 0].numpy(), atol=1e-3)


def test_colmap_round_trip_and_pycolmap(tmp_path):
    K, R, t, sizes = _cameras()
    names = [f"v{i}.jpg" for i in range(len(K))]
    pts = np.random.default_rng(0).normal(size=(50, 3)) * 0.05
    write_colmap_text(tmp_path, K, R, t, sizes, names, points=pts)
    K2, R2, t2, s2, n2, p2 = read_colmap_text(tmp_path)
    assert n2 == names
    np.testing.assert_allclose(K2, K, atol=1e-9)
    np.testing.assert_allclose(R2, R, atol=1e-9)
    np.testing.assert_allclose(t2, t, atol=1e-9)
    np.testing.assert_allclose(p2, pts, atol=1e-6)
    assert len((tmp_path / "cameras.txt").read_text().split("PINHOLE")) == 2  # one shared camera
    # pycolmap reads the model independently; its projection equals ours.
    import pycolmap
    rec = pycolmap.Reconstruction()
    rec.read_text(str(tmp_path))
    assert rec.num_images() == len(K) and rec.num_points3D() == len(pts)
    P = pts[:3]
    for img in rec.images.values():
        i = names.index(img.name)
        cam = rec.cameras[img.camera_id]
        uv_col = np.array([cam.img_from_cam(img.cam_from_world() * p) for p in P]).reshape(-1, 2)
        np.testing.assert_allclose(uv_col, _project_np(P, K[i], R[i], t[i]), atol=1e-3)
        ours, _ = project_points(torch.tensor(P)[None], torch.tensor(K[i:i + 1]), torch.tensor(R[i:i + 1]),
                                 torch.tensor(t[i:i + 1]))
        np.testing.assert_allclose(uv_col, ours[0].numpy(), atol=1e-3)


def test_params_round_trip(tmp_path):
    a = {"shape": torch.randn(1, 10), "K": np.eye(3)[None], "names": ["a.jpg", "b.jpg"]}
    write_params(tmp_path / "p.npz", **a)
    b = read_params(tmp_path / "p.npz")
    np.testing.assert_array_equal(b["shape"], a["shape"].numpy())
    assert list(b["names"]) == a["names"]


def test_points_ply_round_trip_and_layout(tmp_path):
    from fitting.export import read_points_ply, write_points_ply
    rng = np.random.default_rng(1)
    pts = rng.normal(size=(40, 3)).astype(np.float32) * 0.1
    col = rng.integers(0, 256, size=(40, 3)).astype(np.uint8)
    path = write_points_ply(tmp_path / "points3D.ply", pts, col)
    p2, c2 = read_points_ply(path)
    np.testing.assert_array_equal(p2, pts)
    np.testing.assert_array_equal(c2, col)
    # the layout a plyfile-based loader (3DGS, nerfstudio) expects, parsed here from the header alone
    data = path.read_bytes()
    head, body = data.split(b"end_header\n", 1)
    lines = head.decode().splitlines()
    assert lines[:3] == ["ply", "format binary_little_endian 1.0", "element vertex 40"]
    props = [ln.split()[1:] for ln in lines if ln.startswith("property")]
    assert props == [["float", "x"], ["float", "y"], ["float", "z"], ["uchar", "red"], ["uchar", "green"],
                     ["uchar", "blue"]]
    assert len(body) == 40 * (3 * 4 + 3)
    np.testing.assert_array_equal(np.frombuffer(body[:12], "<f4"), pts[0])
