"""Options of ``single_view/fit.py``: the shared definitions of fitting/config.py (same names,
same config-file syntax as run_fitting.py) plus the single-image ones, with defaults that suit
one photo per subject.

Defaults that differ from run_fitting.py, and why:

* ``refine_focal = never``: one photo cannot tell focal length from distance; the field of
  view is a choice (``--fov``), documented in docs/SINGLE_VIEW.md.
* ``w_sil = 0``: the silhouette term compares the render with a head mask that includes hair;
  with one view nothing else constrains the back of the head, so it would inflate the skull
  into the hair. The head mask is then not needed and not computed (it costs a GrabCut).
  ``w_rim = 0`` for the same reason (the outline term matches the head mask's outline).
* ``geom_static_rounds = 1, geom_rounds = 3``: stage 1 (rigid PnP, then one LM round on the 51
  static landmarks), stage 2 (two LM rounds on all 68 with shape and expression; the yaw-
  dependent contour converges more slowly, FFHQ 00001: NME 0.038 after one round of 5, 0.022
  after two).
* ``geom_lm_iters = 5``: LM on one photo's landmarks converges in ~5 steps (measured on
  FFHQ), and each step's Jacobian is the costliest part of the geometry stage.
* ``photo_iters = 60``, ``photo_lr = 0.02``, ``w_photo = 50``: with one view the photo's
  shading is the only dense information on the face's 3D shape, but at run_fitting.py's
  weights (2.0, lr 0.002, 40 iterations) the landmark and prior terms held the geometry where
  the landmark stage left it (synthetic ground truth, NoW face region, 6 seeds: 2.17 mm with
  or without the photometric stage). At these values the photometric stage moves shape,
  expression and jaw (2.17 -> 1.77 mm; the test's photo 2.53 -> 1.85 mm) while FFHQ's landmark
  NME stays 0.020 and its masked L1 drops 72 % (was 67 %); every iteration renders the whole
  batch (+15 % CPU per image on FFHQ).
* ``w_photo_lmk = 1.0``: with one view the photometric term (against a texture space that
  cannot reproduce every face) would otherwise drag the landmarks (NME 0.022 -> 0.036 on
  FFHQ 00001 after 80 iterations at 0.2).
* ``w_pose = 0.018``: the jaw prior (on jaw / 0.1 rad) at the weight of one landmark's 1 px
  noise (sigma^2 / sum of landmark weights = 1 / 56): 1e-4 let landmark noise twist the jaw
  sideways by 2-3 deg (synthetic seed 3: (-0.047, 0.037) rad about y and z, true 0), which a
  jaw cannot do; an open mouth (0.3 rad) still costs < 0.2 px^2. Shape and expression priors
  stay at the weak 1e-3: the stand-in's basis is not a statistical face model, so real faces
  need coefficients far beyond N(0, 1) (FFHQ NME 0.045 at the 1 px MAP weights 0.018 / 0.07,
  0.034 at 0.005 / 0.02, 0.020 at 1e-3); the synthetic test, whose coefficients ARE N(0, 1),
  passes the MAP weights (tests/single_view, docs/SINGLE_VIEW.md).
* ``checkpoint_every = 10``: single-image fits write no checkpoints; this is how often the
  per-photo losses for losses.png are recorded.
* ``savefolder = output/single_view``.
"""
from __future__ import annotations

import argparse

import configargparse

from fitting.config import build_parser, parse_checked, str2bool, validate_fit_options
from single_view.camera import CAMERA_MODELS, DEFAULT_FOV_DEG

__all__ = ["build_single_view_parser", "parse_single_view", "SINGLE_VIEW_DEFAULTS", "MULTI_VIEW_ONLY"]

SINGLE_VIEW_DEFAULTS = dict(
    savefolder="output/single_view",
    refine_focal="never",
    w_sil=0.0,
    w_rim=0.0,
    geom_rounds=3,
    geom_static_rounds=1,
    geom_lm_iters=5,
    photo_iters=60,
    photo_lr=0.02,
    w_photo=50.0,
    w_photo_lmk=1.0,
    w_pose=0.018,
    checkpoint_every=10,
)


# Shared options that only a multi-view scene uses (demo scene, SfM and tracks, views that
# disagree, exports): still accepted, so one config file serves both commands, but left out of
# --help, whose first sections are the single-image and video options.
MULTI_VIEW_ONLY = frozenset({
    "scene_dir", "preprocess_dir", "scene_name", "force_preprocess", "min_views", "sfm_min_views", "tracks",
    "sfm_trust_deg", "track_sigma_px", "track_robust_px", "lmk_max_yaw_deg", "lmk_outlier_factor",
    "pose_disagree_deg", "pose_disagree_rel", "export", "val_cameras", "test_cameras", "export_background"})
_MULTI_VIEW_GROUPS = ("demo scene", "exports")


def _single_view_help(p: configargparse.ArgumentParser, own: list) -> None:
    """Hide the multi-view options from ``--help`` and list the groups ``own`` first (argparse
    prints groups in the order of ``_action_groups``; it has no public API for either)."""
    for group in p._action_groups:
        for a in group._group_actions:
            if a.dest in MULTI_VIEW_ONLY or group.title.startswith(_MULTI_VIEW_GROUPS):
                a.help = argparse.SUPPRESS
    rest = [g for g in p._action_groups if g not in own]
    p._action_groups[:] = rest[:2] + own + rest[2:]    # after the positional and general options


def build_single_view_parser() -> configargparse.ArgumentParser:
    """fitting.config.build_parser() + the single-image options and defaults."""
    p = build_parser("Single-image FLAME fitting (a folder is fitted as one batch, one subject per image).")
    p.add_argument("input", help="an image (jpg/png), a folder of images, a video (mp4, avi, mov, mkv, webm) or a "
                                 "folder of videos")
    g = p.add_argument_group("single image")
    g.add_argument("--landmarks", type=str, default="",
                   help="68x2 landmarks .npy overriding detection (pixel-index convention, e.g. face-alignment / "
                        "dlib; 0.5 is added). For a folder: a pattern with {stem} (e.g. "
                        "'DIR/{stem}_landmarks68.npy') or a folder holding <stem>_landmarks68.npy or <stem>.npy")
    g.add_argument("--mask", type=str, default="",
                   help="face-skin mask image (255 = skin) overriding process_data's; for a folder a {stem} "
                        "pattern or a folder holding <stem>_skinmask.png or <stem>.png")
    g.add_argument("--head_mask", type=str, default="",
                   help="head mask image (face, ears, hair) overriding process_data's, used by --w_sil / --w_rim; "
                        "for a folder a {stem} pattern or a folder holding <stem>_headmask.png")
    g.add_argument("--camera", type=str, default="perspective", choices=list(CAMERA_MODELS),
                   help="perspective pinhole with --fov, or weak_perspective (DECA / photometric_optimization)")
    g.add_argument("--fov", type=float, default=DEFAULT_FOV_DEG,
                   help="horizontal field of view of the perspective camera (degrees)")
    g.add_argument("--exclude", type=str, default="*_skinmask.*,*_mask.*,*_headmask.*,*_landmarks*",
                   help="comma-separated glob patterns of files in the folder that are not photos")
    g.add_argument("--write_mesh", type=str2bool, default=True, help="write mesh.obj + texture per image")
    v = p.add_argument_group("video (VIDEO.mp4 or a folder of videos; docs/VIDEO.md)")
    _own = [g, v]
    v.add_argument("--sample_step", type=int, default=1, help="fit every n-th frame of a video (as DECA's demo)")
    v.add_argument("--max_frames", type=int, default=0, help="fit at most this many (sampled) frames; 0 = all")
    v.add_argument("--chunk_size", type=int, default=16,
                   help="frames read, and tracked, at a time: memory holds one chunk of frames whatever the length")
    v.add_argument("--lookahead", type=int, default=4,
                   help="frames after a chunk tracked with it (and again with the next): both sides of a chunk's "
                        "last frames are seen")
    v.add_argument("--keyframes", type=int, default=8,
                   help="frames the identity (shape) is fitted on, spread over head pose and mouth opening")
    v.add_argument("--identity_iters", type=int, default=10, help="LM iterations of the identity fit")
    v.add_argument("--track_iters", type=int, default=6, help="LM iterations per tracked chunk")
    v.add_argument("--w_smooth", type=float, default=1.0,
                   help="temporal smoothness of the per-frame parameters: 1 = the random-walk prior's MAP weight "
                        "for 1 px landmark noise and the --smooth_* steps; 0 = off")
    v.add_argument("--smooth_rot", type=float, default=0.03, help="expected head rotation per frame (rad)")
    v.add_argument("--smooth_trans", type=float, default=0.003, help="expected head translation per frame (m)")
    v.add_argument("--smooth_exp", type=float, default=0.15, help="expected expression change per frame")
    v.add_argument("--smooth_jaw", type=float, default=0.03, help="expected jaw rotation per frame (rad)")
    v.add_argument("--jaw_side", type=float, default=400.0,
                   help="factor of the jaw prior (--w_pose) about the y and z axes: a jaw opens about x")
    p.set_defaults(**SINGLE_VIEW_DEFAULTS)
    _single_view_help(p, _own)
    p.usage = "%(prog)s [-h] [--config FILE] INPUT [options]"
    return p


def validate_single_view(cfg: argparse.Namespace) -> None:
    validate_fit_options(cfg)
    for k in ("sample_step", "chunk_size", "keyframes"):
        if getattr(cfg, k) < 1:
            raise ValueError(f"--{k} must be >= 1, got {getattr(cfg, k)}")
    for k in ("max_frames", "lookahead", "identity_iters", "track_iters", "w_smooth"):
        if getattr(cfg, k) < 0:
            raise ValueError(f"--{k} must be >= 0, got {getattr(cfg, k)}")
    for k in ("smooth_rot", "smooth_trans", "smooth_exp", "smooth_jaw"):
        if getattr(cfg, k) <= 0:
            raise ValueError(f"--{k} must be > 0, got {getattr(cfg, k)}")
    if cfg.refine_focal == "always":
        raise ValueError("--refine_focal always is not available for single images: one photo cannot separate "
                         "focal length from distance; set --fov instead")


def parse_single_view(argv=None) -> argparse.Namespace:
    """Parse ``argv`` (default sys.argv[1:]) and validate."""
    cfg = parse_checked(build_single_view_parser(), argv)
    validate_single_view(cfg)
    return cfg
