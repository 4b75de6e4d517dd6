"""The compiled CPU visibility kernel (fitting.render.native) against the torch path: the
same (pix, face), bit for bit, on the benchmark head and on adversarial triangle soups;
plus float32 analytic cases checked against float64 geometry. The same scenes check the CUDA
kernel's per-face routine (run on the CPU) against the torch path's CUDA candidate set."""
import importlib
import math
from unittest import mock

import numpy as np
import pytest
import torch

from fitting.render import RasterSettings, rasterize
from fitting.render import native
from fitting.render.cameras import world_to_camera
from fitting.render.demo import load_head_mesh, orbit_cameras
from fitting.render.rasterize import visible_faces

rasterize_module = importlib.import_module("fitting.render.rasterize")   # the name is shadowed by the function

pytestmark = pytest.mark.skipif(not native.available(),
                                reason="native visibility kernel unavailable (FLAME_FIT_NATIVE=0, or no C++ "
                                       "compiler / ninja: see the warning; python -m fitting.render.native)")


def _both(Xc, faces, K, settings):
    """(pix, face) of the torch path and of the kernel, after checking they are identical; and
    the same for the CUDA kernel's per-face routine (raster.h raster_face_coarse, run on the
    CPU) against the torch path with the CUDA candidate set."""
    ref = visible_faces(Xc, faces, K, settings, native=False)
    out = visible_faces(Xc, faces, K, settings, native=True)
    assert out[0].dtype == out[1].dtype == torch.int64
    assert torch.equal(out[0], ref[0]), f"pix differ: {out[0].numel()} vs {ref[0].numel()} covered pixels"
    assert torch.equal(out[1], ref[1]), f"face differs at {(out[1] != ref[1]).sum()} pixels"
    with mock.patch.object(rasterize_module, "_COARSE_DEVICES", ("cuda", "cpu")):
        ref_c = rasterize_module._visible_faces_torch(Xc, faces, K, settings)
    H, W = settings.image_size
    in_front = bool(Xc[..., 2].min() >= settings.near)
    out_c = native._kernel.module.visible_faces_coarse(Xc.contiguous(), faces.long().contiguous(), K.contiguous(),
                                                       H, W, settings.near, settings.cull_backfaces, in_front)
    assert torch.equal(out_c[0], ref_c[0]), f"coarse pix differ: {out_c[0].numel()} vs {ref_c[0].numel()}"
    assert torch.equal(out_c[1], ref_c[1]), f"coarse face differs at {(out_c[1] != ref_c[1]).sum()} pixels"
    return ref


def _head(views, size):
    v, f, *_ = load_head_mesh(None)
    K, R, t = orbit_cameras(v, views, max(size))
    return world_to_camera(v[None].expand(views, -1, -1), R, t), f, K, R, t


@pytest.mark.parametrize("size", [(256, 256), (64, 48)])
@pytest.mark.parametrize("cull", [False, True])
def test_head_identical(size, cull):
    Xc, f, K, _, _ = _head(30, size)
    K = K.clone()
    K[:, 0, 2] -= (max(size) - size[1]) / 2          # keep the head centred in a non-square image
    K[:, 1, 2] -= (max(size) - size[0]) / 2
    pix, face = _both(Xc, f, K, RasterSettings(size, cull_backfaces=cull))
    B, (H, W) = 30, size
    assert pix.numel() > 0.1 * B * H * W               # the head covers ~16 % of each frame
    assert bool((pix[1:] > pix[:-1]).all()) and int(pix[-1]) < B * H * W
    assert int(face.min()) >= 0 and int(face.max()) < f.shape[0]


def test_head_through_near_plane():
    # cameras moved into the head: many faces cross z = near (the clipping branch), some lie behind
    Xc, f, K, _, _ = _head(4, (96, 96))
    Xc = Xc - torch.tensor([0.0, 0.0, float(Xc[..., 2].mean())])
    assert (Xc[..., 2] < 0.01).any() and (Xc[..., 2] > 0.01).any()
    K = K.clone()
    K[:, 0, 0] *= 0.3                                  # a wide field of view
    K[:, 1, 1] *= 0.3
    pix, _ = _both(Xc, f, K, RasterSettings((96, 96), near=0.01))
    assert pix.numel() > 1000


def _soup(B, n_faces, seed, all_in_front=False):
    """Random triangles of all sizes around the camera: crossing the near plane, behind it,
    degenerate (repeated corners, collinear, edge-on), huge (far past the image), duplicated
    (exact depth ties), plus cameras with skew and off-centre principal points."""
    g = torch.Generator().manual_seed(seed)
    V = 3 * n_faces
    X = torch.randn(B, V, 3, generator=g) * torch.tensor([0.6, 0.6, 1.0]) + torch.tensor([0.0, 0.0, 1.5])
    if all_in_front:
        X[..., 2] = X[..., 2].abs() + 0.2
    # per face corner spread: tiny (sub-pixel) to huge
    scale = torch.exp(torch.empty(B, n_faces, 1, 1).uniform_(math.log(1e-3), math.log(3.0), generator=g))
    X = X.view(B, n_faces, 3, 3)
    X = X[:, :, :1] + (X - X[:, :, :1]) * scale
    X = X.reshape(B, V, 3)
    faces = torch.arange(V).view(n_faces, 3)
    k = n_faces // 10
    faces[:k, 2] = faces[:k, 1]                                   # repeated corner
    X[:, faces[k:2 * k, 2]] = 0.5 * (X[:, faces[k:2 * k, 0]] + X[:, faces[k:2 * k, 1]])    # collinear
    faces = torch.cat([faces, faces[2 * k:3 * k], faces[3 * k:4 * k, [0, 2, 1]]])      # ties, both windings
    f = torch.empty(B).uniform_(40, 120, generator=g)
    K = torch.zeros(B, 3, 3)
    K[:, 0, 0], K[:, 1, 1] = f, f * torch.empty(B).uniform_(0.8, 1.25, generator=g)
    K[:, 0, 1] = torch.empty(B).uniform_(-5, 5, generator=g)
    K[:, 0, 2], K[:, 1, 2] = torch.empty(B).uniform_(10, 60, generator=g), torch.empty(B).uniform_(10, 50, generator=g)
    K[:, 2, 2] = 1
    return X, faces, K


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("cull", [False, True])
def test_triangle_soup_identical(seed, cull):
    X, faces, K = _soup(3, 600, seed)
    assert (X[..., 2] < 0.1).any()                                 # the clipping branch is taken
    pix, face = _both(X, faces, K, RasterSettings((60, 70), near=0.1, cull_backfaces=cull))
    assert pix.numel() > 1000
    # on an exact tie (a duplicated face) the lowest face id wins
    assert not bool(((face >= 600) & (face < 660)).any())


@pytest.mark.parametrize("size", [(50, 64), (5, 7)])
def test_triangle_soup_in_front_identical(size):
    # every vertex in front of the near plane: the projection shortcut for the boxes;
    # (5, 7): images smaller than the padded 8x8 buckets
    X, faces, K = _soup(2, 500, 7, all_in_front=True)
    K = K * torch.tensor([[size[1] / 70], [size[0] / 60], [1.0]])
    pix, _ = _both(X, faces, K, RasterSettings(size, near=0.1))
    assert pix.numel() > 0.2 * 2 * size[0] * size[1]


def test_edges_through_pixel_centres():
    # a grid of triangles whose corners project exactly onto pixel centres: centres on shared
    # edges and corners belong to every face touching them, and the lowest id wins the tie
    H, W, n = 12, 16, 4
    y, x = torch.meshgrid(torch.arange(0, H + 1, 3.0), torch.arange(0, W + 1, 3.0), indexing="ij")
    V = torch.stack([x + 0.5, y + 0.5, torch.ones_like(x)], -1).reshape(-1, 3)
    nx = x.shape[1]
    quads = [(i * nx + j, i * nx + j + 1, (i + 1) * nx + j, (i + 1) * nx + j + 1)
             for i in range(x.shape[0] - 1) for j in range(nx - 1)]
    faces = torch.tensor([f for a, b, c, d in quads for f in ((a, b, c), (b, d, c))])
    K = torch.eye(3)[None]
    pix, face = _both(V[None], faces, K, RasterSettings((H, W)))
    # every face of the plane has the same depth: exact key ties. Pixel (3, 3) (centre
    # (3.5, 3.5)) is the corner shared by faces 1, 2, 3, ...: the lowest id wins
    fi = torch.full((H * W,), -1).index_copy(0, pix, face).view(H, W)
    assert int(fi[3, 3]) == 1 and int(fi[0, 0]) == 0
    # the diagonal of quad 0 ((3.5, 0.5)-(0.5, 3.5)) is shared by faces 0 and 1: face 0 wins
    assert int(fi[1, 2]) == 0 and int(fi[2, 1]) == 0
    assert int(fi[2, 2]) == 1 and bool((fi >= 0).all())


def test_float32_triangle_against_float64_geometry():
    # analytic float32 case: coverage equals a float64 inside test away from the edges, and
    # the near-plane-crossing triangle draws exactly where its ray hit is in front of `near`
    H, W = 40, 48
    K = torch.tensor([[[60.0, 0, W / 2], [0, 66.0, H / 2], [0, 0, 1]]])
    P = np.array([[-0.5, -0.3, 1.2], [0.4, -0.1, 1.0], [0.1, 0.35, -0.4]])
    near = 0.3
    R, t = torch.eye(3)[None], torch.zeros(1, 3)
    fr = rasterize(torch.from_numpy(P).float()[None], torch.tensor([[0, 1, 2]]), K, R, t,
                   RasterSettings((H, W), near=near))
    y, x = np.meshgrid(np.arange(H) + 0.5, np.arange(W) + 0.5, indexing="ij")
    d = np.einsum("ij,hwj->hwi", np.linalg.inv(K[0].double().numpy()), np.stack([x, y, np.ones_like(x)], -1))
    E1, E2 = P[1] - P[0], P[2] - P[0]
    M = np.stack([np.broadcast_to(E1, d.shape), np.broadcast_to(E2, d.shape), -d], -1)
    b1, b2, lam = np.linalg.solve(M, -np.broadcast_to(P[0], d.shape)[..., None])[..., 0].transpose(2, 0, 1)
    margin = np.minimum(np.minimum(b1, b2), 1 - b1 - b2)
    expect = (margin >= 0) & (lam >= near)
    sure = (np.abs(margin) > 1e-4) & (np.abs(lam - near) > 1e-4)     # away from float32 rounding
    assert expect[sure].sum() > 100 and (~expect[sure]).sum() > 100
    np.testing.assert_array_equal((fr.face_idx[0].numpy() >= 0)[sure], expect[sure])
    _both(torch.from_numpy(P).float()[None], torch.tensor([[0, 1, 2]]), K, RasterSettings((H, W), near=near))


def test_fallbacks_and_switch(monkeypatch):
    X, faces, K = _soup(2, 50, 3)
    s = RasterSettings((30, 40), near=0.1)
    ref = visible_faces(X, faces, K, s, native=False)
    # float64, non-finite input, int32 faces: the torch path decides (or, int32, the kernel)
    out64 = visible_faces(X.double(), faces, K.double(), s)
    assert torch.equal(out64[0], visible_faces(X.double(), faces, K.double(), s, native=False)[0])
    assert native.visible_faces(X.double(), faces, K.double(), 30, 40, 0.1, False) is None
    bad = X.clone()
    bad[0, 0, 0] = float("nan")
    assert native.visible_faces(bad, faces, K, 30, 40, 0.1, False) is None
    with pytest.raises(RuntimeError, match="not available"):
        visible_faces(X.double(), faces, K.double(), s, native=True)
    out32 = visible_faces(X, faces.int(), K, s, native=True)
    assert torch.equal(out32[0], ref[0]) and torch.equal(out32[1], ref[1])
    with pytest.raises(RuntimeError, match="vertices"):
        native.visible_faces(X, faces + 1000, K, 30, 40, 0.1, False)
    # FLAME_FIT_NATIVE=0 switches the kernel off
    monkeypatch.setenv("FLAME_FIT_NATIVE", "0")
    assert not native.enabled() and not native.available()
    assert native.visible_faces(X, faces, K, 30, 40, 0.1, False) is None


def test_build_folder_follows_the_source(tmp_path, monkeypatch):
    # a binary is reused only for the same source and flags: an edited kernel (or another
    # checkout's) builds in a folder of its own instead of loading a stale binary
    monkeypatch.setenv("FLAME_FIT_NATIVE_DIR", str(tmp_path))
    a, b = tmp_path / "a.cpp", tmp_path / "b.cpp"
    a.write_text("int f() { return 1; }\n")
    b.write_text("int f() { return 1; }\n")
    same = native.kernel_directory("k", a, ["-O3"])
    assert same == native.kernel_directory("k", b, ["-O3"]) and same.is_relative_to(tmp_path)
    assert native.kernel_directory("k", a, ["-O2"]) != same
    b.write_text("int f() { return 2; }\n")
    assert native.kernel_directory("k", b, ["-O3"]) != same
    # the local files a source includes (shared maths such as pixel.h; the .cu file that
    # cuda_emulation.cpp includes), recursively, and every source of a multi-file kernel count
    # too, and so do the other flags (linker, nvcc); a header nobody includes does not
    (tmp_path / "maths.h").write_text('#pragma once\n#include "deep.cu"\n')
    (tmp_path / "deep.cu").write_text("// kernels\n")
    (tmp_path / "unused.h").write_text("#pragma once\n")
    assert native.kernel_directory("k", a, ["-O3"]) == same
    a.write_text('#include "maths.h"\nint f() { return 1; }\n')
    with_header = native.kernel_directory("k", a, ["-O3"])
    assert with_header != same
    (tmp_path / "maths.h").write_text('#pragma once\n#include "deep.cu"\n// edited\n')
    edited = native.kernel_directory("k", a, ["-O3"])
    assert edited != with_header
    (tmp_path / "deep.cu").write_text("// kernels, edited\n")
    assert native.kernel_directory("k", a, ["-O3"]) != edited
    (tmp_path / "unused.h").write_text("#pragma once\n// edited\n")
    assert native.kernel_directory("k", a, ["-O3"]) == native.kernel_directory("k", a, ["-O3"])
    edited = native.kernel_directory("k", a, ["-O3"])
    (tmp_path / "unused.h").write_text("#pragma once\n// edited again\n")
    assert native.kernel_directory("k", a, ["-O3"]) == edited
    pair = native.kernel_directory("k", [a, b], ["-O3"])
    assert pair != native.kernel_directory("k", [a], ["-O3"])
    assert native.kernel_directory("k", [a, b], ["-O3"], ("-fmad=false",)) != pair


def test_build_folder_is_stable_across_builds():
    # torch's load() appends to the flag lists it is given; were ours shared with it, the
    # folder computed in the next process (or after the other kernel's build) would differ
    # and every process would rebuild
    from fitting.render.native import shade
    before = (native.build_directory(), shade.build_directory())
    if native.available() and shade.available():
        assert (native.build_directory(), shade.build_directory()) == before
        assert (before[0] / "flame_fit_visibility.so").is_file() and (before[1] / "flame_fit_shade.so").is_file()
        assert list(native._LDFLAGS) == ["-fopenmp"] and shade._CFLAGS == ["-O3", "-fno-math-errno", "-fopenmp"]


def test_a_fresh_clone_reuses_the_built_kernel(tmp_path, monkeypatch):
    # a fresh clone has the same sources under another path with newer times: its kernel
    # folder is the same, and the binary there is imported as it is, without torch's load()
    # (whose ninja would compile it again, ~40 s per clone); the build recorded its digest
    import shutil
    from torch.utils import cpp_extension
    source = native._kernel.sources[0]
    clone = tmp_path / "clone"
    clone.mkdir()
    for path in source.parent.iterdir():
        if path.suffix in (".cpp", ".h", ".cu"):
            shutil.copy(path, clone / path.name)   # copy(), not copy2(): new times
    copied = clone / source.name
    assert native.kernel_directory(native._NAME, copied, native._CFLAGS) == native.build_directory()

    def no_build(*args, **kwargs):
        raise AssertionError("torch's load() called for a kernel already built")
    monkeypatch.setattr(cpp_extension, "load", no_build)
    module = native.compile_extension(native._NAME, copied, native._CFLAGS, "visibility pass")
    assert module.__file__ == str(native.build_directory() / f"{native._NAME}.so")
    assert hasattr(module, "visible_faces")
    # a binary the build did not finish (cut short, as by a kill mid-link) is built again, never
    # imported: importing it can kill the process (SIGBUS); so is one without the build's record
    if native._missing():
        return   # no compiler here: a rebuild would stop at that, before load()
    library = native.build_directory() / f"{native._NAME}.so"
    monkeypatch.setenv("FLAME_FIT_NATIVE_DIR", str(tmp_path / "cache"))
    folder = native.kernel_directory(native._NAME, copied, native._CFLAGS)
    folder.mkdir(parents=True)
    data = library.read_bytes()
    (folder / library.name).write_bytes(data[: len(data) // 2])
    shutil.copy(library.with_name(library.name + ".sha256"), folder)
    with pytest.raises(RuntimeError, match="load\\(\\) called"):
        native.compile_extension(native._NAME, copied, native._CFLAGS, "visibility pass")
    (folder / library.name).write_bytes(data)
    (folder / (library.name + ".sha256")).unlink()
    with pytest.raises(RuntimeError, match="load\\(\\) called"):
        native.compile_extension(native._NAME, copied, native._CFLAGS, "visibility pass")


def test_prebuild_command_reports_every_kernel():
    """``python -m fitting.render.native`` (the Makefile's install step) builds the kernels in
    spawned processes, one each, and names each built library: with the kernels already in the
    cache, as here, both come back at once."""
    import subprocess
    import sys

    from tests.conftest import REPO
    out = subprocess.run([sys.executable, "-m", "fitting.render.native"], cwd=REPO, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    for what, name in (("visibility", "flame_fit_visibility"), ("shading", "flame_fit_shade")):
        assert any(line.startswith(f"native {what} kernel ready") and f"{name}.so" in line for line in lines), out
