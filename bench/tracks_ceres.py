"""Track-only bundle adjustment, Ceres against the torch LM: ``python -m bench.tracks_ceres MODEL``.

MODEL: a COLMAP model folder, e.g. the preprocessing's ``<prep>/sfm/model`` of the real sample
(``python -m process_data ../shared/data/multiview_sample --out /tmp/mvp``). Both
solvers adjust the same problem from SfM's own solution: every view's pose, one shared focal
length, every point; no robust loss. Ceres runs as pycolmap's bundle adjuster; the torch LM
is :func:`fitting.lm.levenberg_marquardt` with :class:`fitting.tracks.TrackTerm` (points
eliminated by their Schur complement), the code the geometry stage runs. Prints one JSON line
per solver: wall seconds (min / median over ``--repeats``), iterations, final RMS reprojection
error (px), torch threads, load.
"""
from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch

from bench._common import emit, load_average, machine


def _problem(rec):
    """(names, R (N, 3, 3), t (N, 3), K (N, 3, 3)) of a pycolmap Reconstruction's images."""
    images = sorted(rec.images.values(), key=lambda im: im.name)
    poses = [im.cam_from_world() if callable(im.cam_from_world) else im.cam_from_world for im in images]
    R = torch.tensor(np.stack([p.rotation.matrix() for p in poses]))
    t = torch.tensor(np.stack([p.translation for p in poses]))
    K = torch.tensor(np.stack([rec.cameras[im.camera_id].calibration_matrix() for im in images]))
    return [im.name for im in images], R, t, K


def _rms(term, R, t, K, points) -> float:
    return round(float(term.residuals(R, t, K, points).pow(2).sum(-1).mean().sqrt()), 4)


def _ceres(model: str, term) -> tuple[float, dict]:
    """pycolmap's bundle adjuster (Ceres), its defaults but the principal point held."""
    import pycolmap
    rec = pycolmap.Reconstruction(model)
    opts = pycolmap.BundleAdjustmentOptions()
    opts.refine_focal_length, opts.refine_principal_point, opts.refine_extra_params = True, False, False
    t0 = time.perf_counter()
    pycolmap.bundle_adjustment(rec, opts)
    wall = time.perf_counter() - t0
    import tempfile
    with tempfile.TemporaryDirectory() as d:        # the adjusted points in the tracks' order
        rec.write(d)
        names, R, t, K = _problem(rec)
        points = torch.tensor(_tracks(d, names).xyz)
    return wall, {"iterations": None, "observation_error_rms_px": _rms(term, R, t, K, points)}


def _tracks(model: str, names: list):
    from fitting.tracks import load_tracks
    return load_tracks(model, names, np.ones((len(names), 2)))


def _torch_lm(model: str, term) -> tuple[float, dict]:
    """The torch LM with TrackTerm: poses, a shared log focal factor and the points."""
    import pycolmap

    from fitting.lm import NormalEquations, levenberg_marquardt
    from fitting.render.cameras import scale_focal
    from fitting.rotations import axis_angle_to_matrix

    names, R, t, K0 = _problem(pycolmap.Reconstruction(model))
    N = len(names)
    n = 6 * N + 1
    cols = torch.cat([6 * torch.arange(N)[:, None] + torch.arange(6)[None], torch.full((N, 1), 6 * N)], 1)
    iterations = [0]

    def cameras(x):
        return x[0], x[1], scale_focal(K0, x[2])

    def linearize(x, it):
        iterations[0] += 1
        term.points = x[3]
        blocks = term.normal_equations(*cameras(x), 1.0, cols, n)
        ne = NormalEquations.zeros(n, torch.float64)
        ne.add_eliminated("track", blocks)
        ne.A = ne.A + 1e-9 * torch.eye(n, dtype=torch.float64)   # the 7 gauge freedoms
        return (*x[:4], blocks), ne

    def propose(x, dx, own):
        d = dx[:6 * N].reshape(N, 6)
        cand = (axis_angle_to_matrix(d[:, :3]) @ x[0], x[1] + d[:, 3:], x[2] + dx[6 * N], x[3] + own[0], None)
        return cand, term.step_cost(x[4], *cameras(cand), cand[3])

    points0 = torch.tensor(_tracks(model, names).xyz)
    t0 = time.perf_counter()
    x = levenberg_marquardt((R, t, torch.zeros((), dtype=torch.float64), points0, None), linearize, propose, 100,
                            tol=1e-10)
    wall = time.perf_counter() - t0
    return wall, {"iterations": iterations[0], "observation_error_rms_px": _rms(term, *cameras(x), x[3])}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(prog="python -m bench.tracks_ceres", description=__doc__.split("\n")[0])
    p.add_argument("model", help="COLMAP model folder (e.g. <prep>/sfm/model)")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=1, help="torch threads (1: steadiest on a shared CPU)")
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    import pycolmap

    from fitting.tracks import TrackTerm
    names = _problem(pycolmap.Reconstruction(a.model))[0]
    term = TrackTerm(_tracks(a.model, names), robust_px=1e9)     # squared loss, as Ceres' default here
    for name, fn in (("ceres", _ceres), ("torch_lm", _torch_lm)):
        runs = [fn(a.model, term) for _ in range(a.repeats)]
        walls = [w for w, _ in runs]
        emit({"bench": "tracks_ceres", "solver": name, "wall_s_min": round(min(walls), 3),
              "wall_s_median": round(statistics.median(walls), 3), **runs[-1][1], "torch_threads": a.threads,
              "load": load_average(), "machine": machine()})


if __name__ == "__main__":
    main()
