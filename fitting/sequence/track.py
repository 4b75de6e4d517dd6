"""FLAME tracked over a multi-view sequence from a rig of cameras (docs/SEQUENCES.md).

Shared by the sequence: identity (shape), texture, SH and the cameras, from one keyframe fitted
by the ordinary pipeline (:func:`identity_from_fit`). Per frame: expression, jaw and the head's rigid
motion H in the rig, by the multi-view geometry LM (:func:`fitting.stages.lm_geometry`) with
the rig unknowns, the shape held (``shape_fixed``) and a :class:`fitting.known_cameras.
TemporalPrior` tying the frame to the previous one (:func:`track_frames`). Frames are split
into overlapping chunks (:func:`chunk_ranges`), each tracked on its own from the keyframe's
identity, its results written to ``chunks/<i>.npz`` (:func:`track_chunk`, skipped when present
and made for the same inputs) and the overlaps blended (:func:`blend_chunks`).

A frame's parameters: head_R (3, 3), head_t (3,) with X_rig = head_R X_head + head_t, expression
(E,), jaw (3,) axis-angle; the shape is the identity's. Per frame also landmark_rmse_px (C,) per
camera of the identity's (NaN: no landmarks), missing, seconds.
"""
from __future__ import annotations

import hashlib
import io
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from fitting.atomic import atomic_write_bytes
from fitting.calibration import Calibrated
from fitting.context import JAW, FitContext
from fitting.geometry_terms import landmark_term, model_at
from fitting.known_cameras import (Rig, TemporalPrior, apply_rig, head_to_rig, initialize_from_rig, place_cameras,
                                   read_rig, scene_cameras_json, snap_to_rig)
from fitting.landmark_trust import distrust_profiles
from fitting.render.cameras import matrix_to_rot, rot_to_matrix
from fitting.rotations import axis_angle_to_matrix, matrix_to_axis_angle
from fitting.scene import load_scene
from fitting.stages import lm_geometry, lm_unknowns
from fitting.state import FitState

__all__ = ["add_sequence_options", "check_sequence_options", "Identity", "identity_from_fit", "load_frame",
           "track_frames", "chunk_ranges", "inputs_key", "track_chunk", "blend_chunks", "frame_vertices"]

# what a chunk's .npz holds per frame, besides ``key`` (why: a missing frame's reason, else "")
FIELDS = ("head_R", "head_t", "expression", "jaw", "landmark_rmse_px", "missing", "seconds", "why")


def add_sequence_options(p) -> tuple:
    """The sequence tracker's options, in one group of fitting.config's parser. Returns their
    names (the options that are not the keyframe fit's)."""
    g = p.add_argument_group("sequence tracking (python -m fitting.sequence)")
    opts = [
        g.add_argument("--workers", type=int, default=1, help="chunks tracked in parallel (processes)"),
        g.add_argument("--chunk", type=int, default=0, help="frames per chunk (0: one chunk)"),
        g.add_argument("--overlap", type=int, default=2, help="frames two neighbouring chunks share (blended)"),
        g.add_argument("--frames", type=str, default="", help="START:STOP:STEP of the sequence's frames (default all)"),
        g.add_argument("--keyframe", type=int, default=-1,
                       help="index (among the selected frames) fitted for identity; -1: the first frame with "
                            "landmarks in the most cameras"),
        g.add_argument("--track_iters", type=int, default=3,
                       help="LM iterations per frame on the landmarks alone (warm start from the previous frame)"),
        g.add_argument("--track_photo_iters", type=int, default=2,
                       help="then LM iterations adding the outline (--w_rim) and photometric rows (--w_photo_gn)"),
        g.add_argument("--track_first_iters", type=int, default=8,
                       help="LM iterations of a chunk's first frame (no previous frame)"),
        g.add_argument("--sigma_rot_deg", type=float, default=5.0,
                       help="temporal prior: head rotation step, deg/frame"),
        g.add_argument("--sigma_trans_mm", type=float, default=30.0,
                       help="temporal prior: head translation step, mm/frame"),
        g.add_argument("--sigma_exp", type=float, default=0.6, help="temporal prior: expression step per frame"),
        g.add_argument("--sigma_jaw_deg", type=float, default=3.0, help="temporal prior: jaw step, deg/frame"),
        g.add_argument("--w_temporal", type=float, default=1.0,
                       help="temporal prior weight (1: MAP for 1 px landmark noise at fitting size)"),
        g.add_argument("--refine_frames", type=int, default=8,
                       help="frames the identity's shape and, unless --camera_mode fixed, the cameras are refined "
                            "over, together (1: the keyframe's fit alone)"),
        g.add_argument("--refine_iters", type=int, default=10,
                       help="LM iterations of that solve over --refine_frames frames")]
    return tuple(a.dest for a in opts)


def check_sequence_options(cfg) -> None:
    """ValueError, naming the option, for values the tracker cannot use."""
    at_least = {"workers": 1, "refine_frames": 1, "chunk": 0, "overlap": 0, "track_iters": 0, "track_photo_iters": 0,
                "track_first_iters": 0, "refine_iters": 0, "w_temporal": 0}
    for k, low in at_least.items():
        if not low <= getattr(cfg, k) < math.inf:
            raise ValueError(f"--{k} must be >= {low}, got {getattr(cfg, k)}")
    for k in ("sigma_rot_deg", "sigma_trans_mm", "sigma_exp", "sigma_jaw_deg"):
        if not 0 < getattr(cfg, k) < math.inf:
            raise ValueError(f"--{k} (a step of the temporal prior) must be positive, got {getattr(cfg, k)}")
    chunk_ranges(cfg.chunk + 1, cfg.chunk, cfg.overlap)    # its check of the overlap, before any work


@dataclass
class Identity:
    """What every frame shares: shape (1, S), texture code (1, n_tex) or map (1, 3, Ht, Wt), SH per
    camera name (9, 3), and the cameras {image name: Calibrated} in the rig frame (the
    calibration, the keyframe's refined cameras, or those it estimated); focal_refined: the
    keyframe's fit refined the focal length (so refining over frames does too)."""

    shape: torch.Tensor
    tex: torch.Tensor
    sh: dict
    cameras: dict
    digest: str
    focal_refined: bool = False


def identity_from_fit(fit_dir: Path, rig: Rig | None) -> Identity:
    """The keyframe's result (params.npz, report.json and fit_details.json of
    :func:`fitting.pipeline.fit_scene`).

    With a calibration (``rig``): the fitted cameras taken back into the rig frame with the head
    pose the fit found, so ``refine``'s corrections, its focal length included when the fit
    refined it, carry to every frame (``fixed``: the calibration). A calibrated camera the fit
    did not use (no face in it at the keyframe) keeps its calibration, with the fit's focal
    factor, and takes the other cameras' mean SH, so the frames where it sees the face use it.
    Without one (``--camera_mode estimate``): the cameras the fit estimated, and the rig frame
    is the keyframe's head frame."""
    from fitting.export import read_params
    raw = (fit_dir / "params.npz").read_bytes()
    p = read_params(fit_dir / "params.npz")
    H_R, H_t = np.eye(3), np.zeros(3)
    if rig is not None:
        h = json.loads((fit_dir / "report.json").read_text())["known_cameras"]["head_to_rig"]
        H_R, H_t = np.array(h["R"]), np.array(h["t"])
    focal_refined = json.loads((fit_dir / "fit_details.json").read_text())["focal"]["refined"]
    cams = {}
    for i, n in enumerate(map(str, p["names"])):
        R = p["R"][i].astype(np.float64) @ H_R.T                      # head frame -> rig frame
        t = p["t"][i].astype(np.float64) - R @ H_t
        K = p["K"][i].astype(np.float64)
        if rig is None:
            W, H = (int(v) for v in p["image_size"][i])
            cams[n] = Calibrated(K, R, t, W, H, np.zeros(0))
        else:
            cams[n] = rig.cameras[n]._replace(R=R, t=t, K=K if focal_refined else rig.cameras[n].K)
    sh = {n: torch.as_tensor(p["sh"][i]) for i, n in enumerate(map(str, p["names"]))}
    if rig is not None:
        fitted = next(iter(cams))
        focal = cams[fitted].K[0, 0] / rig.cameras[fitted].K[0, 0]          # 1 unless the fit refined it
        mean_sh = torch.as_tensor(p["sh"]).mean(0)
        cams = {n: cams[n] if n in cams else c.with_focal_scale(focal) for n, c in rig.cameras.items()}
        sh = {n: sh.get(n, mean_sh) for n in cams}
    tex = p["tex"] if "tex" in p else p["tex_map"]
    return Identity(torch.as_tensor(p["shape"]), torch.as_tensor(tex), sh, cams,
                    hashlib.sha256(raw).hexdigest()[:16], bool(focal_refined))


def load_frame(cfg, frame_dir: Path, ident: Identity, flame, texspace):
    """(ctx, state at the identity, rig) of one frame, or (None, reason) when its landmarks are
    missing (no usable view)."""
    rig = read_rig(cfg, frame_dir)
    rig = Rig(rig.path, rig.mode, {n: ident.cameras[n] for n in rig.cameras if n in ident.cameras})
    try:
        scene = load_scene(frame_dir, cfg.image_size, run_missing=False, cameras=scene_cameras_json(rig))
    except ValueError as e:  # load_scene: no usable view
        return None, str(e)
    apply_rig(rig, scene)
    N = scene.num_views
    st = FitState.create(N, torch.zeros(N, dtype=torch.long), scene.K, cfg.n_shape, cfg.n_exp,
                         tuple(ident.tex.shape[1:]))
    st.shape, st.tex = ident.shape.clone().float(), ident.tex.clone().float()
    st.sh = torch.stack([ident.sh[n] for n in scene.names]).float()
    ctx = FitContext.from_observations(scene, flame, cfg, texspace, False, rig)
    return (ctx, st, rig, scene), None


def _lmk_rmse_px(ctx: FitContext, st: FitState, scene, cameras: list) -> np.ndarray:
    """(C,) landmark RMSE (all 68) per camera of ``cameras`` (image names) in original pixels,
    NaN where the frame has no landmarks or the fit did not use them (a profile's)."""
    raw = landmark_term(ctx, model_at(ctx, st, lm_unknowns(ctx, st, shape_fixed=True)), False).raw
    per_view = ((raw / scene.scale[:, None]) ** 2).sum(-1).mean(-1).sqrt()
    per_view = torch.where(ctx.landmark_weights > 0, per_view, torch.nan)
    out = np.full(len(cameras), np.nan)
    for i, n in enumerate(scene.names):
        out[cameras.index(n)] = float(per_view[i])
    return out


def fit_frame(cfg, loaded: tuple, prev: tuple | None, sig: tuple | None, photo: bool = True) -> tuple:
    """One frame as :func:`load_frame` loaded it, (ctx, state at the identity, rig, scene), fitted
    with the identity's shape held: the first of a run (``prev`` None) placed by triangulating its
    landmarks (:func:`initialize_from_rig`) and fitted with ``track_first_iters``; a later one
    started at ``prev`` = (H_R, H_t, expression (E,), jaw (3,)) of the frame before and tied to it
    by the temporal prior (``sig``: its sigmas; unused for a first frame). ``photo``: the
    photometric rows in the last round (with ``--w_photo_gn``). The loaded state is not
    changed; the loaded context's landmark weights are: the profiles at the start pose lose
    theirs (:func:`fitting.landmark_trust.distrust_profiles`). Returns (fitted state, (H_R, H_t,
    expression, jaw)) with the head's pose in the rig."""
    ctx, st, rig, _ = loaded
    if prev is None:
        st, _ = initialize_from_rig(ctx, st, rig)
        rounds, priors = [(cfg.track_first_iters, True), (cfg.track_photo_iters, True)], ()
    else:
        st = place_cameras(st, rig, prev[0], prev[1])
        distrust_profiles(ctx, st)
        st.expression = torch.as_tensor(prev[2]).float()[None].clone()
        st.pose[0, JAW] = torch.as_tensor(prev[3]).float()
        unk = lm_unknowns(ctx, st, shape_fixed=True)
        priors = (TemporalPrior(unk, rig, st, *sig, weight=cfg.w_temporal),)
        rounds = [(cfg.track_iters, False), (cfg.track_photo_iters, True)]
    # the image rows (outline: a rasterisation per iteration) cost ~10x the landmark rows, and
    # a warm start is already close: landmarks alone first, the image rows only at the end
    for iters, image_rows in rounds:
        if iters > 0:
            st = lm_geometry(ctx, st, False, iters, use_rim=image_rows, use_photo=image_rows and photo,
                             shape_fixed=True, priors=priors)
    st = snap_to_rig(st, rig)
    H_R, H_t = head_to_rig(st, rig)
    return st, (H_R, H_t, st.expression[0].detach().numpy().astype(np.float64),
                st.pose[0, JAW].detach().numpy().astype(np.float64))


def track_frames(cfg, frame_dirs: list, ident: Identity, flame, texspace, unusable: dict | None = None,
                 log=None) -> dict:
    """Track consecutive frames from the identity (:func:`fit_frame`): the first trackable frame
    alone, each next one from the previous estimate, tied to it by the temporal prior. A frame
    without landmarks, or named in ``unusable`` ({frame folder name: reason}, e.g. its
    preprocessing failed), is not fitted: it holds the nearest tracked
    estimate and is flagged ``missing`` with its reason in ``why`` (set between its neighbours by
    :func:`interpolate` later). ``log``: called with one line per frame as it is done (None:
    quiet). Returns {field: (T, ...) array} (see FIELDS); raises ValueError when no frame can be
    tracked."""
    sig = (math.radians(cfg.sigma_rot_deg), cfg.sigma_trans_mm / 1000, cfg.sigma_exp, math.radians(cfg.sigma_jaw_deg))
    unusable = unusable or {}
    out = {k: [] for k in FIELDS}
    cameras = list(ident.cameras)
    prev = None          # (H_R, H_t, expression (1, E), jaw (3,)) of the last tracked frame
    leading = []         # (why, seconds) of the missing frames before the first tracked one
    say = log or (lambda _line: None)
    for fd in map(Path, frame_dirs):
        t0 = time.perf_counter()
        loaded, why = (None, unusable[fd.name]) if fd.name in unusable else load_frame(cfg, fd, ident, flame, texspace)
        if loaded is None:
            say(f"[track] frame {fd.name}: not tracked, {why}")
            if prev is None:
                leading.append((why, time.perf_counter() - t0))
            else:
                _append(out, prev, np.full(len(cameras), np.nan), why, time.perf_counter() - t0)
            continue
        ctx, _, _, scene = loaded
        st, pose = fit_frame(cfg, loaded, prev, sig)
        first = prev is None
        prev = pose
        if first:
            for w, s in leading:
                _append(out, prev, np.full(len(cameras), np.nan), w, s)
        rmse = _lmk_rmse_px(ctx, st, scene, cameras)
        _append(out, prev, rmse, "", time.perf_counter() - t0)
        fitted = int(np.isfinite(rmse).sum())
        over = "" if fitted == scene.num_views else f" over {fitted} of {scene.num_views} views (profiles' not used)"
        seconds = time.perf_counter() - t0
        say(f"[track] frame {fd.name}: landmark RMSE {np.nanmean(rmse):.2f} px{over} ({seconds:.1f} s)")
    if prev is None:
        raise ValueError("no frame of " + ", ".join(Path(f).name for f in frame_dirs) + " could be tracked: "
                         + "; ".join(f"{Path(f).name}: {w}" for f, (w, _) in zip(frame_dirs, leading)))
    return {k: np.asarray(v) for k, v in out.items()}


def _append(out: dict, p: tuple, rmse: np.ndarray, why: str, seconds: float) -> None:
    """One frame's row: p = (H_R, H_t, expression, jaw); missing when ``why`` says why."""
    for k, v in zip(FIELDS, (*p, rmse, bool(why), seconds, why)):
        out[k].append(v)


def interpolate(res: dict) -> dict:
    """Missing frames set between their nearest tracked neighbours (linear; the rotation along
    the geodesic), by :func:`single_view.tracking.interpolate_missing`."""
    from single_view.tracking import FrameParams, interpolate_missing
    valid = ~res["missing"]
    if valid.all():
        return res
    f64 = torch.float64
    p = FrameParams(matrix_to_rot(torch.as_tensor(res["head_R"], dtype=f64)), torch.as_tensor(res["head_t"], dtype=f64),
                    torch.as_tensor(res["expression"], dtype=f64), torch.as_tensor(res["jaw"], dtype=f64))
    q = interpolate_missing(p, valid)
    return {**res, "head_R": rot_to_matrix(q.rot).numpy(), "head_t": q.trans.numpy(), "expression": q.exp.numpy(),
            "jaw": q.jaw.numpy()}


# -- chunks ---------------------------------------------------------------------------------------
def chunk_ranges(T: int, chunk: int, overlap: int) -> list:
    """[(start, stop)] covering range(T), each ``chunk`` frames long (the last may be shorter but
    still holds the overlap), neighbours sharing ``overlap`` frames; one range when chunk <= 0
    or >= T."""
    if chunk <= 0 or chunk >= T:
        return [(0, T)]
    if not 0 <= overlap < chunk:
        raise ValueError(f"--overlap {overlap} must be in [0, --chunk {chunk})")
    out, start = [], 0
    while True:
        stop = min(start + chunk, T)
        out.append((start, stop))
        if stop == T:
            return out
        start = stop - overlap


def inputs_key(cfg, frame_dirs: list, ident: Identity, unusable: dict) -> str:
    """What a result made from these frames depends on (a chunk's, the refined cameras'): the
    frames and their landmarks, the frames left out, the identity and the options (not the
    worker count or output folders)."""
    from fitting.fit_record import files_digest
    opts = {k: (str(v) if isinstance(v, Path) else v) for k, v in sorted(vars(cfg).items())
            if k not in ("workers", "savefolder", "progress", "scene_name", "num_threads")}
    frames = {str(f): files_digest([Path(f) / "landmarks.json"]) for f in frame_dirs}
    blob = json.dumps({"frames": frames, "unusable": unusable, "identity": ident.digest, "cfg": opts},
                      sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


def track_chunk(cfg, frame_dirs: list, ident: Identity, path: Path, unusable: dict | None = None,
                log=print) -> tuple[dict, bool]:
    """A chunk's result from ``path`` when it holds one for the same inputs, else tracked
    (:func:`track_frames`, a line per frame to ``log``) and written there atomically. Returns
    (result, whether it was tracked now). A task of its own (a worker process, a Ray task)."""
    from fitting.model import load_model
    unusable = {Path(f).name: unusable[Path(f).name] for f in frame_dirs if Path(f).name in (unusable or {})}
    key = inputs_key(cfg, frame_dirs, ident, unusable)
    if path.is_file():
        with np.load(path) as z:
            if str(z["key"]) == key:
                log(f"[track] frames {Path(frame_dirs[0]).name}-{Path(frame_dirs[-1]).name}: reused {path}")
                return {k: z[k] for k in FIELDS}, False
    flame, texspace, _ = load_model(cfg, torch.device("cpu"))
    res = track_frames(cfg, frame_dirs, ident, flame, texspace, unusable, log)
    buf = io.BytesIO()
    np.savez(buf, key=np.array(key), **res)
    atomic_write_bytes(path, buf.getvalue())
    return res, True


def blend_chunks(ranges: list, results: list) -> dict:
    """One result over all frames from overlapping chunks: in an overlap of O frames the later
    chunk's weight ramps linearly (k + 1) / (O + 1), k = 0..O-1, the earlier's is the rest; the
    rotations are blended along the geodesic between the two, the rest linearly. A frame one
    chunk left missing takes the other's values; it is missing only where every chunk covering
    it says so."""
    T = ranges[-1][1]
    out = {k: np.zeros((T,) + np.asarray(v).shape[1:], np.result_type(*(np.asarray(r[k]) for r in results)))
           for k, v in results[0].items()}
    for c, ((a, b), res) in enumerate(zip(ranges, results)):
        lo = a if c == 0 else ranges[c - 1][1]      # frames before lo are shared with chunk c - 1
        for k, v in res.items():
            out[k][lo:b] = v[lo - a:]
        O = lo - a
        if O <= 0:
            continue
        w = np.arange(1, O + 1) / (O + 1)                                  # the later chunk's weight
        w = np.where(res["missing"][:O], 0.0, np.where(out["missing"][a:lo], 1.0, w))
        for k in ("head_t", "expression", "jaw", "landmark_rmse_px", "seconds"):
            A, B, wk = out[k][a:lo], res[k][:O], _col(w, out[k][a:lo])
            out[k][a:lo] = np.where(wk == 0, A, np.where(wk == 1, B, (1 - wk) * A + wk * B))  # NaN rmse stays out
        Ra, Rb = torch.as_tensor(out["head_R"][a:lo]), torch.as_tensor(res["head_R"][:O])
        rel = matrix_to_axis_angle(Rb @ Ra.transpose(1, 2))
        out["head_R"][a:lo] = (axis_angle_to_matrix(rel * torch.as_tensor(w)[:, None]) @ Ra).numpy()
        both = out["missing"][a:lo] & res["missing"][:O]
        out["why"][a:lo] = np.where(both, out["why"][a:lo], "")
        out["missing"][a:lo] = both
    return out


def _col(w: np.ndarray, like: np.ndarray) -> np.ndarray:
    return w.reshape((-1,) + (1,) * (like.ndim - 1))


def frame_vertices(flame, shape: torch.Tensor, res: dict) -> torch.Tensor:
    """(T, V, 3) the tracked heads in the rig frame: X_rig = head_R X_head + head_t."""
    T = len(res["head_R"])
    f64 = torch.float64
    pose = torch.zeros(T, 15, dtype=torch.float32)
    pose[:, JAW] = torch.as_tensor(res["jaw"]).float()
    with torch.no_grad():
        X, _ = flame(shape.float().expand(T, -1), torch.as_tensor(res["expression"]).float(), pose)
    return X.to(f64) @ torch.as_tensor(res["head_R"], dtype=f64).transpose(1, 2) \
        + torch.as_tensor(res["head_t"], dtype=f64)[:, None]
