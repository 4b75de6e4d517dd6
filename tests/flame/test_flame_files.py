"""Loading FLAME-format files: chumpy-free pickles, npz, embeddings, texture spaces, bad inputs."""
import os
import pickle
import pickletools
import subprocess
import sys

import numpy as np
import pytest
import torch

from fitting.flame import (FLAME, FlameFileError, load_deca_embedding, load_embedding, load_flame_arrays,
                           load_ringnet_embedding, load_texture_space, save_flame_npz)
from fitting.flame.io import REQUIRED_KEYS
from fitting.synthetic import LABEL

REPO = __import__("pathlib").Path(__file__).resolve().parents[2]


def _globals_in_pickle(path):
    names = set()
    ops = list(pickletools.genops(open(path, "rb").read()))
    strings = []
    for op, arg, _ in ops:
        if op.name in ("GLOBAL",):
            names.add(arg.replace(" ", "."))
        if op.name in ("SHORT_BINUNICODE", "BINUNICODE", "UNICODE", "BINSTRING", "SHORT_BINSTRING"):
            strings.append(arg)
        if op.name == "STACK_GLOBAL":
            names.add(".".join(strings[-2:]))
    return names


def test_standin_pickle_references_chumpy_like_flame(standin_path):
    names = _globals_in_pickle(standin_path)
    assert "chumpy.ch.Ch" in names
    assert "scipy.sparse.csc.csc_matrix" in names
    with pytest.raises(ModuleNotFoundError, match="chumpy"):
        pickle.load(open(standin_path, "rb"), encoding="latin1")  # the plain unpickler needs chumpy


def test_pickle_and_npz_load_identically(standin_path, tmp_path):
    a = load_flame_arrays(standin_path)
    npz = save_flame_npz(a, tmp_path / "model.npz")
    b = load_flame_arrays(npz)
    for k in REQUIRED_KEYS:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    assert a["shapedirs"].dtype == np.float64 and a["J_regressor"].shape[0] == 5
    # The model built from either file is the same.
    (tmp_path / "model_landmark_embedding.npy").write_bytes(
        standin_path.with_name(standin_path.stem + "_landmark_embedding.npy").read_bytes())
    v1, l1 = FLAME(standin_path)(shape=torch.ones(1, 100))
    v2, l2 = FLAME(npz)(shape=torch.ones(1, 100))
    torch.testing.assert_close(v1, v2)
    torch.testing.assert_close(l1, l2)


def test_loads_with_chumpy_unimportable(standin_path):
    code = (
        "import sys; sys.modules['chumpy'] = None\n"  # makes `import chumpy` raise ImportError
        "try:\n    import chumpy\n    raise SystemExit('chumpy importable')\nexcept ImportError: pass\n"
        f"from fitting.flame import FLAME\nv, l = FLAME({str(standin_path)!r})()\n"
        "assert v.shape[1:] == (3010, 3) and l.shape == (1, 68, 3), (v.shape, l.shape)\nprint('ok')\n")
    r = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and "ok" in r.stdout, r.stderr


def test_cli_builds_a_loadable_model(tmp_path):
    out = tmp_path / "s.pkl"
    r = subprocess.run([sys.executable, "-m", "fitting.synthetic", "--out", str(out), "--seed", "3"],
                       cwd=REPO, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "NOT FLAME" in r.stdout
    v, lmk = FLAME(out)()
    assert v.shape == (1, 3010, 3) and lmk.shape == (1, 68, 3)
    assert LABEL in load_flame_arrays(out).get("note", "")


def test_cli_rejects_bad_arguments(tmp_path):
    r = subprocess.run([sys.executable, "-m", "fitting.synthetic", "--out", str(tmp_path / "x.txt")],
                       cwd=REPO, capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and ".pkl" in r.stderr


def test_flame_topology_standin(flame_topology_standin_path):
    m = FLAME(flame_topology_standin_path)
    v, lmk = m()
    assert v.shape == (1, 5023, 3) and m.faces.shape == (9976, 3) and lmk.shape == (1, 68, 3)
    assert m.verts_uvs.shape == (5118, 2) and m.faces_uvs.shape == (9976, 3)
    # The head sits at the origin, in metres.
    assert v[0].mean(0).abs().max() < 0.05 and 0.15 < (v[0].max(0).values - v[0].min(0).values).max() < 0.4


# -- landmark embeddings --------------------------------------------------------------------
def test_shared_deca_embedding_with_torch_tensors(shared_data):
    path = shared_data / "flame_topology" / "landmark_embedding.npy"
    raw = np.load(path, allow_pickle=True, encoding="latin1").item()
    assert isinstance(raw["dynamic_lmk_faces_idx"], torch.Tensor)
    e = load_deca_embedding(path)
    assert e.static_faces.shape == (51,) and e.dynamic_faces.shape == (79, 17)
    assert e.dynamic_bary.shape == (79, 17, 3) and e.full_faces.shape == (68,)
    np.testing.assert_array_equal(e.dynamic_faces, raw["dynamic_lmk_faces_idx"].numpy())


def test_ringnet_format_equals_deca_format(shared_data, tmp_path):
    e = load_deca_embedding(shared_data / "flame_topology" / "landmark_embedding.npy")
    with open(tmp_path / "flame_static_embedding.pkl", "wb") as f:
        pickle.dump({"lmk_face_idx": e.static_faces.astype(np.uint32), "lmk_b_coords": e.static_bary.astype(np.float64)},
                    f, protocol=2)
    np.save(tmp_path / "flame_dynamic_embedding.npy",
            np.array({"lmk_face_idx": list(e.dynamic_faces), "lmk_b_coords": list(e.dynamic_bary)}, dtype=object),
            allow_pickle=True)
    r = load_ringnet_embedding(tmp_path / "flame_static_embedding.pkl", tmp_path / "flame_dynamic_embedding.npy")
    np.testing.assert_array_equal(r.static_faces, e.static_faces)
    np.testing.assert_array_equal(r.dynamic_faces, e.dynamic_faces)
    np.testing.assert_allclose(r.dynamic_bary, e.dynamic_bary)
    r2 = load_embedding(tmp_path / "flame_static_embedding.pkl")
    np.testing.assert_array_equal(r2.full_faces[17:], e.static_faces)


def test_missing_embedding_says_where_to_look(standin_path, tmp_path):
    lone = tmp_path / "lone.pkl"
    lone.write_bytes(standin_path.read_bytes())
    with pytest.raises(FlameFileError, match="landmark_embedding.npy") as ei:
        FLAME(lone)
    assert "flame_static_embedding.pkl" in str(ei.value)
    with pytest.raises(FlameFileError, match="not found"):
        FLAME(lone, landmark_embedding_path=tmp_path / "nope.npy")


# -- texture spaces ---------------------------------------------------------------------------
def test_standin_texture_space(standin_path):
    tex = load_texture_space(standin_path.with_name(standin_path.stem + "_texture.npz"), n_tex=8)
    albedo = tex(torch.zeros(2, 8))
    assert albedo.shape == (2, 3, 128, 128) and 0 <= albedo.min() and albedo.max() <= 1
    # Skin is redder than it is blue once the stored BGR is flipped to RGB.
    assert albedo[0, 0].mean() > albedo[0, 2].mean()
    assert (tex(torch.ones(1, 8)) - albedo[:1]).abs().max() > 1e-3


def test_bfm_albedo_format(tmp_path):
    H = 8
    mu = np.zeros((H, H, 3), np.float32)
    mu[..., 2] = 0.9  # BGR storage: channel 2 is red
    pc = np.random.rand(H * H * 3, 4).astype(np.float32)
    np.savez(tmp_path / "FLAME_albedo_from_BFM.npz", MU=mu.reshape(1, -1), PC=pc, vt=np.random.rand(10, 2),
             ft=np.zeros((4, 3), np.int64))
    tex = load_texture_space(tmp_path / "FLAME_albedo_from_BFM.npz", n_tex=3)
    assert tex.n_tex == 3 and tex.mean.shape == (3, H, H)
    assert tex.mean[0].min() == pytest.approx(0.9) and tex.mean[2].max() == 0


# -- bad inputs ------------------------------------------------------------------------------
def test_missing_model_file_says_where_to_get_it(tmp_path):
    with pytest.raises(FlameFileError) as ei:
        FLAME(tmp_path / "generic_model.pkl")
    msg = str(ei.value)
    assert "flame.is.tue.mpg.de" in msg and "flame-data/" in msg and "generic_model.pkl" in msg


@pytest.mark.parametrize("content", [b"", b"not a pickle at all", None])
def test_corrupt_model_file(tmp_path, standin_path, content):
    bad = tmp_path / "generic_model.pkl"
    bad.write_bytes(standin_path.read_bytes()[:5000] if content is None else content)
    with pytest.raises(FlameFileError, match="corrupt|not a readable"):
        load_flame_arrays(bad)


def test_corrupt_npz(tmp_path):
    bad = tmp_path / "m.npz"
    bad.write_bytes(b"PK\x03\x04garbage")
    with pytest.raises(FlameFileError, match="corrupt"):
        load_flame_arrays(bad)


def test_missing_keys_and_wrong_shapes(tmp_path, standin_path):
    a = load_flame_arrays(standin_path)
    b = dict(a)
    del b["shapedirs"]
    save_flame_npz(b, tmp_path / "nokey.npz")
    with pytest.raises(FlameFileError, match="missing keys \\['shapedirs'\\]"):
        load_flame_arrays(tmp_path / "nokey.npz")
    c = dict(a)
    c["weights"] = a["weights"][:, :4]
    save_flame_npz(c, tmp_path / "badshape.npz")
    with pytest.raises(FlameFileError, match="'weights' has shape \\(3010, 4\\), expected \\(3010, 5\\)"):
        load_flame_arrays(tmp_path / "badshape.npz")


def test_refuses_code_in_pickle(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    p = tmp_path / "evil.pkl"
    p.write_bytes(pickle.dumps({"v_template": Evil()}, protocol=2))
    with pytest.raises(FlameFileError, match="refusing to load global .*print"):
        load_flame_arrays(p)


def test_embedding_for_another_topology_is_rejected(standin_path, shared_data):
    with pytest.raises(FlameFileError, match="another mesh topology"):
        FLAME(standin_path, landmark_embedding_path=shared_data / "flame_topology" / "landmark_embedding.npy")


def test_synthetic_needs_embedding_with_template(tmp_path, shared_data):
    from fitting.synthetic import build_standin
    obj = tmp_path / "t.obj"
    obj.write_text((shared_data / "flame_topology" / "head_template_mesh.obj").read_text())
    with pytest.raises(ValueError, match="--landmark-embedding"):
        build_standin(tmp_path / "x.pkl", template=obj)


def test_canonical_eigenbasis_depends_on_the_eigenspaces_alone():
    """Any basis of the same eigenspaces (a turn within a pair, a flipped sign) gives the same
    canonical basis, M-orthonormal like the input."""
    from fitting.synthetic import _canonical_eigenbasis
    rng = np.random.default_rng(3)
    V = 40
    mass = rng.uniform(1, 3, V)
    vals = np.array([0.0, 0.1, 0.2, 0.2, 0.3, 0.4, 0.4, 0.4])
    U = np.linalg.qr(rng.standard_normal((V, len(vals))))[0] / np.sqrt(mass)[:, None]   # U^T M U = I
    W = U.copy()
    W[:, 0] *= -1
    a = 0.7
    W[:, 2:4] = U[:, 2:4] @ np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
    W[:, 5:8] = U[:, 5:8] @ np.linalg.qr(rng.standard_normal((3, 3)))[0]
    cu, spaces = _canonical_eigenbasis(vals, U, mass)
    cw, _ = _canonical_eigenbasis(vals, W, mass)
    assert spaces == [[0], [1], [2, 3], [4], [5, 6, 7]]
    assert np.abs(U - W).max() > 0.1
    np.testing.assert_allclose(cu, cw, atol=1e-12)
    np.testing.assert_allclose(cu.T @ (mass[:, None] * cu), np.eye(len(vals)), atol=1e-12)


def test_standin_keeps_its_recorded_harmonics():
    """The procedural head's eigenspace bases are recorded (fitting/standin_harmonics.json) for
    its faces: a change to the mesh that drops them must come with a new VERSION."""
    from fitting.synthetic import _recorded_turns, procedural_head
    faces = procedural_head()[1]
    for k in (130, 8):
        turns = _recorded_turns(faces, k)
        assert turns is not None and sum(q.shape[1] for q in turns) == k
        for q in turns:
            np.testing.assert_allclose(q.T @ q, np.eye(q.shape[1]), atol=1e-12)


@pytest.mark.slow   # a stand-in build in a subprocess, ~10 s
@pytest.mark.skipif(__import__("platform").machine() not in ("x86_64", "AMD64"),
                    reason="OPENBLAS_CORETYPE names x86 kernels")
def test_standin_is_the_same_whatever_the_blas(standin_path, tmp_path):
    """OpenBLAS's thread count (OMP_NUM_THREADS, else the cores) and its CPU kernels change the
    last bits of the eigensolver's sums, and with them ARPACK's basis within the mesh
    Laplacian's equal-eigenvalue pairs: without the canonical basis, a build on 1 thread had
    shape bases up to 1.3 mm from one on 2, and one on Prescott's kernels (SSE3, as an older
    CPU would run) up to 2.3 mm from this machine's. The session's stand-in (this process: every
    core, this CPU's kernels) against one built on 1 thread with Prescott's kernels."""
    out = tmp_path / "m.pkl"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "OPENBLAS_CORETYPE": "Prescott"}
    subprocess.run([sys.executable, "-m", "fitting.synthetic", "--out", str(out)], check=True, env=env,
                   cwd=REPO, capture_output=True, timeout=300)
    a, ta = load_flame_arrays(standin_path), np.load(standin_path.with_name("standin_texture.npz"))
    b, tb = load_flame_arrays(out), np.load(out.with_name("m_texture.npz"))
    for key in ("v_template", "shapedirs", "posedirs", "weights", "J"):
        np.testing.assert_allclose(a[key], b[key], rtol=0, atol=1e-12, err_msg=key)
    np.testing.assert_allclose(ta["tex_dir"], tb["tex_dir"], rtol=0, atol=1e-6)
