import numpy as np
import pytest

from fitting.atomic import atomic_write_bytes, atomic_write_json
from fitting.meshio import load_obj, save_obj


def test_obj_round_trip_with_uvs_and_material(tmp_path):
    rng = np.random.default_rng(0)
    v = rng.normal(size=(10, 3)).astype(np.float32)
    f = rng.integers(0, 10, size=(7, 3))
    vt = rng.random((12, 2)).astype(np.float32)
    ft = rng.integers(0, 12, size=(7, 3))
    path = save_obj(tmp_path / "m.obj", v, f, vt, ft, texture_png="texture.png", comment="test mesh")
    v2, f2, vt2, ft2 = load_obj(path)
    np.testing.assert_allclose(v2, v, atol=1e-6)
    np.testing.assert_array_equal(f2, f)
    np.testing.assert_allclose(vt2, vt, atol=1e-6)
    np.testing.assert_array_equal(ft2, ft)
    mtl = (tmp_path / "m.mtl").read_text()
    assert "map_Kd texture.png" in mtl and "mtllib m.mtl" in path.read_text()


def test_obj_polygons_negative_indices_and_no_uvs(tmp_path):
    p = tmp_path / "q.obj"
    p.write_text("v 0 0 0\nv 1 0 0\nv 1 1 0\nv 0 1 0\nf 1 2 3 4\nf -4 -2 -1\n")
    v, f, vt, ft = load_obj(p)
    assert v.shape == (4, 3) and vt is None and ft is None
    np.testing.assert_array_equal(f, [[0, 1, 2], [0, 2, 3], [0, 2, 3]])


def test_shared_flame_template(shared_data):
    v, f, vt, ft = load_obj(shared_data / "flame_topology" / "head_template_mesh.obj")
    assert v.shape == (5023, 3) and f.shape == (9976, 3) and vt.shape == (5118, 2) and ft.shape == (9976, 3)
    assert f.min() == 0 and f.max() == 5022 and ft.max() == 5117


def test_bad_obj_files(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_obj(tmp_path / "missing.obj")
    (tmp_path / "empty.obj").write_text("# nothing\n")
    with pytest.raises(ValueError, match="no vertices or no faces"):
        load_obj(tmp_path / "empty.obj")


def test_atomic_write_leaves_no_partial_file(tmp_path):
    target = tmp_path / "out.bin"
    atomic_write_bytes(target, b"first")
    with pytest.raises(TypeError):
        atomic_write_bytes(target, object())  # fails mid-write
    assert target.read_bytes() == b"first"
    assert [p.name for p in tmp_path.iterdir()] == ["out.bin"]  # temp file cleaned up
    assert (target.stat().st_mode & 0o777) != 0o600


def test_atomic_json_overwrites_in_place(tmp_path):
    target = tmp_path / "a" / "r.json"
    atomic_write_json(target, {"x": 1})
    atomic_write_json(target, {"x": 2})
    assert target.read_text() == '{\n "x": 2\n}\n'
    assert sorted(p.name for p in target.parent.iterdir()) == ["r.json"]
