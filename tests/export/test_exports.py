"""The training exports (docs/EXPORTS.md), each read back the way its consumer reads it.

One small fit (tests/export/conftest.py: 4 views, 80 px, stand-in model) runs with
``--export all``; every test reads its exports. The consumers' readers cannot run here (CUDA, their own FLAME), so each check
is written from the reader's source, named in the test. Every format gets a round trip: the
cameras as that consumer builds them reproject the fitted mesh to within 1e-4 px of
report.json's K, R, t.
"""
from __future__ import annotations

import json
import math
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image


REPO = Path(__file__).resolve().parents[2]
TOL_PX = 1e-4


def _report_cameras(report):
    views = [v for v in report["views"] if v["used"]]
    return {v["name"]: (np.asarray(v["K"]), np.asarray(v["R"]), np.asarray(v["t"])) for v in views}


def _project(P, K, R, t):
    x = (P @ R.T + t) @ K.T
    return x[:, :2] / x[:, 2:]


def _assert_reprojects(P, ours, theirs, what):
    err = np.abs(ours - theirs).max()
    assert err < TOL_PX, f"{what}: mesh reprojects {err:.2e} px away from report.json's cameras"


# -- nerfstudio ------------------------------------------------------------------------------------
def test_nerfstudio_fields_as_its_dataparser_reads_them(fit, tmp_path):
    """Written from nerfstudio/data/dataparsers/nerfstudio_dataparser.py,
    Nerfstudio._generate_dataparser_outputs and _load_3D_points: paths relative to the data
    folder, mask_path on every frame or none, camera_model a CAMERA_MODEL_TO_TYPE key,
    applied_transform (3, 4) composed onto the dataparser transform, ply_file_path read by
    open3d (x y z + uchar red green blue); masks one channel at the image size."""
    import shutil
    report, out, verts, _ = fit
    src = out / "exports" / "nerfstudio"
    moved = tmp_path / "moved"          # self-contained: it still loads after a move
    shutil.copytree(src, moved)
    d = json.loads((moved / "transforms.json").read_text())
    assert d["camera_model"] in ("OPENCV", "PERSPECTIVE", "PINHOLE")
    assert np.asarray(d["applied_transform"]).shape == (3, 4)
    ply = moved / d["ply_file_path"]
    head = ply.read_bytes().split(b"end_header\n")[0].decode()
    assert "property float x" in head and "property uchar red" in head
    cams = _report_cameras(report)
    assert len(d["frames"]) == len(cams)
    for fr in d["frames"]:
        img = moved / fr["file_path"]
        mask = moved / fr["mask_path"]
        assert img.is_file() and mask.is_file() and not Path(fr["file_path"]).is_absolute()
        with Image.open(img) as im, Image.open(mask) as m:
            assert m.mode == "L" and m.size == im.size == (fr["w"], fr["h"])
            assert 0 < np.asarray(m).mean() < 255
        # the dataparser's camera: OpenGL camera-to-world, K from fl_x fl_y cx cy
        c2w = np.asarray(fr["transform_matrix"])
        w2c = np.linalg.inv(c2w)
        pc = verts @ w2c[:3, :3].T + w2c[:3, 3]
        u = fr["fl_x"] * pc[:, 0] / -pc[:, 2] + fr["cx"]
        v = -fr["fl_y"] * pc[:, 1] / -pc[:, 2] + fr["cy"]
        K, R, t = cams[Path(fr["file_path"]).name]
        _assert_reprojects(verts, np.stack([u, v], 1), _project(verts, K, R, t), "nerfstudio")


def test_nerfstudio_dataparser_itself(fit):
    """nerfstudio's own dataparser, when the optional extra is installed (pip install nerfstudio)."""
    mod = pytest.importorskip("nerfstudio.data.dataparsers.nerfstudio_dataparser")
    _, out, _, _ = fit
    cfg = mod.NerfstudioDataParserConfig(data=out / "exports" / "nerfstudio", downscale_factor=1,
                                         eval_mode="all")
    outputs = cfg.setup().get_dataparser_outputs("train")
    assert outputs.mask_filenames is not None and "points3D_xyz" in outputs.metadata


# -- instant-ngp -----------------------------------------------------------------------------------
def _ngp_matrix(c2w, scale, offset):
    """instant-ngp's NerfDataset::nerf_matrix_to_ngp (include/neural-graphics-primitives/
    nerf_loader.h): columns 1, 2 negated, position * scale + offset, rows cycled xyz <- yzx."""
    m = np.asarray(c2w, np.float64)[:3].copy()
    m[:, 1] *= -1
    m[:, 2] *= -1
    m[:, 3] = m[:, 3] * scale + np.asarray(offset)
    return m[[1, 2, 0]]


def test_instant_ngp_unit_cube_alpha_and_cameras(fit):
    """Written from instant-ngp's load_nerf (src/nerf_loader.cu): scale / offset / aabb_scale at
    the top level, focal from fl_x, principal point cx / w, RGBA images whose alpha is kept."""
    report, out, verts, _ = fit
    exp = out / "exports" / "instant_ngp"
    d = json.loads((exp / "transforms.json").read_text())
    scale, offset = d["scale"], np.asarray(d["offset"])
    assert d["aabb_scale"] == 1
    P = (verts * scale + offset)[:, [1, 2, 0]]     # nerf_position_to_ngp
    assert P.min() > 0 and P.max() < 1, "the head leaves the unit cube"
    assert (P.max(0) - P.min(0)).max() > 0.7, "the head does not fill the unit cube"
    cams = _report_cameras(report)
    for fr in d["frames"]:
        with Image.open(exp / fr["file_path"]) as im:
            assert im.mode == "RGBA"
            a = np.asarray(im)[..., 3]
        assert 0 < (a > 127).mean() < 1
        m = _ngp_matrix(fr["transform_matrix"], scale, offset)
        rel = P - m[:, 3]
        x, y, z = rel @ m[:, 0], rel @ m[:, 1], rel @ m[:, 2]   # ngp camera: x right, y down, z forward
        uv = np.stack([fr["fl_x"] * x / z + fr["cx"] / fr["w"] * fr["w"],
                       fr["fl_y"] * y / z + fr["cy"] / fr["h"] * fr["h"]], 1)
        name = next(n for n in cams if Path(n).stem == Path(fr["file_path"]).stem)
        _assert_reprojects(verts, uv, _project(verts, *cams[name]), "instant-ngp")


# -- GaussianAvatars / VHAP ------------------------------------------------------------------------
def test_gaussian_avatars_layout_keys_and_flame_params(fit, standin_path):
    """Written from GaussianAvatars' scene/__init__.py (Scene: canonical_flame_param.npz and no
    sparse/ -> DynamicNerf), scene/dataset_readers.py (readDynamicNerfInfo,
    readMeshesFromTransforms: transforms_{train,val,test}.json, flame_param_path per frame,
    timestep 0 present), scene/flame_gaussian_model.py (load_meshes: the npz keys) and VHAP's
    vhap/data/nerf_dataset.py (NeRFDataset: timestep_indices / camera_indices, their length
    check, fl_x fl_y cx cy h w per frame)."""
    report, out, verts, cfg = fit
    exp = out / "exports" / "gaussian_avatars"
    assert (exp / "canonical_flame_param.npz").is_file() and not (exp / "sparse").exists()
    shapes = {"shape": (300,), "expr": (1, 100), "rotation": (1, 3), "neck_pose": (1, 3), "jaw_pose": (1, 3),
              "eyes_pose": (1, 6), "translation": (1, 3), "static_offset": (1, len(verts), 3)}
    divisions = {}
    for div in ("train", "val", "test", None):
        d = json.loads((exp / ("transforms.json" if div is None else f"transforms_{div}.json")).read_text())
        assert len(d["timestep_indices"]) == max(d["timestep_indices"]) + 1      # NeRFDataset
        for fr in d["frames"]:
            for k in ("timestep_index", "camera_index", "camera_id", "fl_x", "fl_y", "cx", "cy", "h", "w",
                      "camera_angle_x", "transform_matrix", "file_path", "fg_mask_path", "flame_param_path"):
                assert k in fr, k
            assert ".png" in fr["file_path"] and (exp / fr["file_path"]).is_file()
            with np.load(exp / fr["flame_param_path"], allow_pickle=False) as z:
                assert {k: z[k].shape for k in z.files} == shapes
        divisions[div] = {fr["camera_id"] for fr in d["frames"]}
    assert divisions["val"] == {"view_01"} and "view_01" not in divisions["train"]
    assert divisions["train"] | divisions["val"] | divisions["test"] == divisions[None]
    assert 0 in {fr["timestep_index"] for fr in json.loads((exp / "transforms_train.json").read_text())["frames"]}
    assert "stand-in" in (exp / "WARNING.txt").read_text()
    # the parameters give back the fitted mesh through the model (ours: the stand-in here)
    from fitting.flame import FLAME
    flame = FLAME(Path(json.loads((out / "fit_details.json").read_text())["model"]["model"]),
                  n_shape=cfg.n_shape, n_exp=cfg.n_exp)
    with np.load(exp / "flame_param" / "00000.npz") as z:
        pose = np.concatenate([z["rotation"], z["neck_pose"], z["jaw_pose"], z["eyes_pose"]], 1)
        assert not z["shape"][cfg.n_shape:].any() and not z["expr"][:, cfg.n_exp:].any()
        assert not z["translation"].any() and not z["static_offset"].any()
        v, _ = flame(torch.as_tensor(z["shape"][None, :cfg.n_shape]), torch.as_tensor(z["expr"][:, :cfg.n_exp]),
                     torch.as_tensor(pose))
    assert np.abs(v[0].double().numpy() - verts).max() < 1e-5


def test_gaussian_avatars_cameras_and_images(fit):
    """readCamerasFromTransforms (GaussianAvatars' scene/dataset_readers.py) keeps
    camera_angle_x only and flips the OpenGL axes; R is stored transposed; the principal point
    is the image centre (utils/graphics_utils.py getProjectionMatrix). Images are composited
    over the background by the mask, as VHAP's MaskFromFLAME writes them."""
    report, out, verts, _ = fit
    exp = out / "exports" / "gaussian_avatars"
    d = json.loads((exp / "transforms.json").read_text())
    assert d["background"] == "white"
    cams = _report_cameras(report)
    names = {Path(n).stem: n for n in cams}
    for fr in d["frames"]:
        c2w = np.asarray(fr["transform_matrix"], np.float64)
        c2w[:3, 1:3] *= -1
        w2c = np.linalg.inv(c2w)
        R, T = w2c[:3, :3].T, w2c[:3, 3]
        W, H = fr["w"], fr["h"]
        fovx = fr["camera_angle_x"]
        focal = W / (2 * math.tan(fovx / 2))                          # fov2focal
        fovy = 2 * math.atan(H / (2 * focal))                        # focal2fov(fov2focal(fovx, W), H)
        fy = H / (2 * math.tan(fovy / 2))
        pc = verts @ R + T                                           # world_view = [R^T | T]
        uv = np.stack([focal * pc[:, 0] / pc[:, 2] + W / 2, fy * pc[:, 1] / pc[:, 2] + H / 2], 1)
        K, Rr, tr = cams[names[fr["camera_id"]]]
        ours = _project(verts, K, Rr, tr)
        if "original_K" in fr:                                       # resampled: pixels map by K' K^-1
            A = np.asarray([[focal, 0, W / 2], [0, focal, H / 2], [0, 0, 1]]) @ np.linalg.inv(fr["original_K"])
            ours = ours @ A[:2, :2].T + A[:2, 2]
        _assert_reprojects(verts, uv, ours, "GaussianAvatars")
        img = np.asarray(Image.open(exp / fr["file_path"]).convert("RGB"))
        mask = np.asarray(Image.open(exp / fr["fg_mask_path"]))
        assert img.shape[:2] == mask.shape == (H, W)
        assert (img[mask == 0] == 255).all() and (img[mask == 255] < 250).any()


# -- DECA ------------------------------------------------------------------------------------------
def test_deca_codedict_mat_keypoints_depth(fit):
    """DECA's codedict (decalib/deca.py, DECA.encode: shape 100, exp 50, pose 6, tex 50, light
    9x3, cam 3) and demos/demo_reconstruct.py's --saveMat / --saveKpt / --saveDepth files."""
    from scipy.io import loadmat

    from fitting.render.shading import sh_basis
    report, out, verts, _ = fit
    exp = out / "exports" / "deca"
    cams = _report_cameras(report)
    with np.load(exp / "codedict.npz") as z:
        cd = {k: z[k] for k in z.files}
    N = len(cams)
    want = {"shape": (N, 100), "exp": (N, 50), "pose": (N, 6), "tex": (N, 50), "light": (N, 9, 3), "cam": (N, 3)}
    assert {k: cd[k].shape for k in want} == want
    from fitting.export import read_params
    p = read_params(out / "params.npz")
    for i, name in enumerate(cd["names"]):
        K, R, t = cams[str(name)]
        _assert_reprojects(verts, _project(verts, cd["K"][i], cd["R"][i], cd["t"][i]), _project(verts, K, R, t), "deca")
        # light: DECA shades camera-frame normals (x right, y up, z to the viewer)
        n = torch.nn.functional.normalize(torch.randn(50, 3, dtype=torch.float64), dim=1)
        Rd = torch.as_tensor(np.diag([1.0, -1, -1]) @ R)
        ours = sh_basis(n).double().numpy() @ p["sh"][i]
        theirs = sh_basis(n @ Rd.T).double().numpy() @ cd["light"][i]
        np.testing.assert_allclose(theirs, ours, atol=1e-4)
        stem = Path(str(name)).stem
        m = loadmat(exp / stem / f"{stem}.mat")
        assert m["shape"].shape == (1, 100) and m["light"].shape == (1, 9, 3)
        k2 = np.loadtxt(exp / stem / f"{stem}_kpt2d.txt")
        k3 = np.loadtxt(exp / stem / f"{stem}_kpt3d.txt")
        assert k2.shape == (68, 2) and k3.shape == (68, 3)
        np.testing.assert_allclose(k2, _project(k3, K, R, t), atol=1e-6)
        z = np.load(exp / stem / f"{stem}_depth.npy")
        assert z.shape == (cd["image_size"][i][1], cd["image_size"][i][0])
        zc = (verts @ R.T + t)[:, 2]
        assert zc.min() - 1e-4 <= z[z > 0].min() and z.max() <= zc.max() + 1e-4
        assert (exp / stem / f"{stem}_depth.jpg").is_file()


# -- COLMAP ----------------------------------------------------------------------------------------
def _read_images_bin(path):
    """The binary layout of 3DGS's read_extrinsics_binary (scene/colmap_loader.py)."""
    out = {}
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        for _ in range(n):
            props = struct.unpack("<idddddddi", f.read(64))
            name = b""
            while (c := f.read(1)) != b"\x00":
                name += c
            (n2d,) = struct.unpack("<Q", f.read(8))
            f.read(24 * n2d)
            out[name.decode()] = (np.asarray(props[1:5]), np.asarray(props[5:8]), props[8])
    return out


def _read_cameras_bin(path):
    """3DGS's read_intrinsics_binary: id, model id, width, height (iiQQ), then the params."""
    out = {}
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        for _ in range(n):
            cid, model, w, h = struct.unpack("<iiQQ", f.read(24))
            assert model == 1, "3DGS handles PINHOLE (1) or SIMPLE_PINHOLE (0) only"
            out[cid] = (w, h, np.asarray(struct.unpack("<dddd", f.read(32))))
    return out


def test_colmap_model_beside_images(fit):
    """sparse/0 beside images/ (3DGS's readColmapSceneInfo), read by pycolmap and by the
    binary layout of 3DGS's colmap_loader.py; both reproject the mesh like report.json."""
    import pycolmap
    report, out, verts, _ = fit
    exp = out / "exports" / "colmap"
    cams = _report_cameras(report)
    for ext in ("bin", "txt"):
        for f in ("cameras", "images", "points3D"):
            assert (exp / "sparse" / "0" / f"{f}.{ext}").is_file()
    rec = pycolmap.Reconstruction(str(exp / "sparse" / "0"))
    assert rec.num_images() == len(cams) and rec.num_points3D() > 100
    imgs, cambin = _read_images_bin(exp / "sparse/0/images.bin"), _read_cameras_bin(exp / "sparse/0/cameras.bin")
    for img in rec.images.values():
        assert (exp / "images" / img.name).is_file()
        cam = rec.cameras[img.camera_id]
        uv = np.asarray([cam.img_from_cam(img.cam_from_world() * p) for p in verts]).reshape(-1, 2)
        _assert_reprojects(verts, uv, _project(verts, *cams[img.name]), "colmap (pycolmap)")
        q, tv, cid = imgs[img.name]
        w, h, (fx, fy, cx, cy) = cambin[cid]
        w_, x, y, z = q / np.linalg.norm(q)
        Rq = np.array([[1 - 2 * (y * y + z * z), 2 * (x * y - w_ * z), 2 * (x * z + w_ * y)],
                       [2 * (x * y + w_ * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w_ * x)],
                       [2 * (x * z - w_ * y), 2 * (y * z + w_ * x), 1 - 2 * (x * x + y * y)]])
        Kb = np.array([[fx, 0, cx], [0, fy, cy], [0, 0, 1]])
        _assert_reprojects(verts, _project(verts, Kb, Rq, tv), _project(verts, *cams[img.name]), "colmap (3DGS)")


# -- the command on an existing fit ----------------------------------------------------------------
def test_export_command_on_a_finished_fit(fit, tmp_path):
    """python -m fitting.export writes into a staged folder and renames it whole; an unknown
    format is refused with a one-line message."""
    _, out, _, _ = fit
    cmd = [sys.executable, "-m", "fitting.export", str(out), "--out", str(tmp_path / "ex")]
    r = subprocess.run(cmd + ["--format", "nerfstudio,colmap"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert sorted(p.name for p in (tmp_path / "ex").iterdir()) == ["colmap", "nerfstudio"]
    r = subprocess.run(cmd + ["--format", "blender"], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "unknown export format 'blender'" in r.stderr


def test_points_prefer_sfm_tracks(fit):
    """The initial points: the fit's SfM track points when it had them, else mesh samples."""
    from fitting.export.nerfstudio import initial_points
    from fitting.export.source import load_fit
    _, out, verts, _ = fit
    f = load_fit(out)
    p, c, src = initial_points(f)
    assert src == "mesh_samples" and len(p) == 20000 and c.std() > 0
    f.points_are_tracks, f.points = True, verts[:50]
    assert initial_points(f)[2] == "sfm_tracks"
