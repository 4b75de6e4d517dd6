"""Configuration shared by ``run_fitting.py`` and ``single_view/fit.py`` (configargparse).

Every option has a default and a ``--help`` line, and can be given on the command line or
in a config file (``--config FILE``, ``key = value`` lines, ``#`` comments). A boolean option
given bare (``--resume``) means true; ``--resume false`` still works. Command-line
values override the file. An unknown key in a config file or an unknown option on the command
line stops the run with a one-line message (file and line, the closest known option). The
parsed options are a :class:`Config`: code that reads an option that does not exist gets an
AttributeError naming the closest one, not a default.
:func:`build_parser` returns the parser so the single-image CLI (single_view/options.py) can add
its own options and override defaults.
"""
from __future__ import annotations

import argparse
import difflib
import re
import sys
from pathlib import Path

import configargparse
import torch

__all__ = ["Config", "build_parser", "parse_config", "parse_checked", "resolve_device", "config_to_dict"]

DEVICES = "auto, cpu, cuda or cuda:N (N = the GPU's index)"
_DEVICE_RE = re.compile(r"auto|cpu|cuda(:\d+)?")
# a key as configargparse's DefaultConfigFileParser reads it: the line's first word
_CONFIG_KEY_RE = re.compile(r"^(?P<key>[^:=;#\s]+)")


def str2bool(s) -> bool:
    if isinstance(s, bool):
        return s
    v = str(s).strip().lower()
    if v in ("1", "true", "yes", "on"):
        return True
    if v in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected a boolean (true/false), got {s!r}")


class _Parser(configargparse.ArgumentParser):
    """Errors in one short line (not the usage of every option), unknown options with the
    closest known one."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (--help lists the options)\n")

    def parse_args(self, args=None, namespace=None, **kwargs):
        ns, extra = self.parse_known_args(args, namespace, **kwargs)
        if extra:
            self.error(self._unknown(extra))
        return ns

    def option_names(self) -> list:
        return [s for a in self._actions for s in a.option_strings if s.startswith("--")]

    def suggest(self, option: str, strip: int = 0) -> str:
        """'; did you mean X?' with the known option closest to ``option`` ('' when none is
        close); ``strip``: leading characters to drop from X."""
        close = difflib.get_close_matches(option, self.option_names(), n=1)
        return f"; did you mean {close[0][strip:]}?" if close else ""

    def _unknown(self, extra: list) -> str:
        options = [a.split("=", 1)[0] for a in extra if a.startswith("-")]
        if options:
            return f"unknown option {options[0]}{self.suggest(options[0])}"
        return f"unexpected argument {extra[0]!r}"


class Config(argparse.Namespace):
    """The parsed options, read as attributes (``cfg.w_rim``). Reading a name that is no
    option raises AttributeError naming the closest option: a typo is an error, never a
    silent default."""

    def __getattr__(self, name: str):
        # only reached when ``name`` is not an attribute; dunder probes (copy, pickle) stay plain
        if name.startswith("__"):
            raise AttributeError(name)
        close = difflib.get_close_matches(name, list(vars(self)), n=1)
        raise AttributeError(f"no option {name!r} in the config" + (f"; did you mean {close[0]!r}?" if close else ""))


def build_parser(description: str | None = None) -> configargparse.ArgumentParser:
    """All fitting options. Returns a parser; callers may add options or ``set_defaults``."""
    p = _Parser(
        description=description or "Multi-view FLAME fitting by analysis-by-synthesis.",
        config_file_parser_class=configargparse.DefaultConfigFileParser,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--config", is_config_file=True, help="config file (key = value lines)")

    g = p.add_argument_group("scene and outputs")
    g.add_argument("--scene_dir", type=str, default="",
                   help="scene folder with images/ (and preprocessing outputs beside it)")
    g.add_argument("--preprocess_dir", type=str, default="",
                   help="folder holding the preprocessing outputs (landmarks.json, masks/, cameras.json, "
                        "manifest.json); default: the scene folder, or <savefolder>/<scene>/preprocess "
                        "when the scene folder is read-only")
    g.add_argument("--savefolder", type=str, default="output", help="outputs go to <savefolder>/<scene>/")
    g.add_argument("--scene_name", type=str, default="", help="name of the output subfolder (default: scene folder name)")
    g.add_argument("--force_preprocess", type=str2bool, nargs="?", const=True, default=False, help="redo every preprocessing stage, also into a folder that holds another scene's")
    g.add_argument("--landmark_backend", type=str, default="dlib", help="process_data landmark backend (dlib | fan)")
    g.add_argument("--min_views", type=int, default=1, help="fewest usable views to start a fit")

    g = p.add_argument_group("demo scene (synthetic, with ground truth)")
    g.add_argument("--demo", type=str2bool, nargs="?", const=True, default=False,
                   help="build a synthetic scene from the stand-in model into --scene_dir first (with ground_truth.npz)")
    g.add_argument("--demo_views", type=int, default=12, help="number of demo views on the yaw arc")
    g.add_argument("--demo_yaw_deg", type=float, default=60.0, help="demo views span +-this yaw")
    g.add_argument("--demo_pitch_deg", type=float, default=10.0, help="demo views' pitch amplitude")
    g.add_argument("--demo_width", type=int, default=384, help="demo image width (pixels)")
    g.add_argument("--demo_height", type=int, default=384, help="demo image height (pixels)")
    g.add_argument("--demo_fov_deg", type=float, default=20.0, help="demo horizontal field of view")
    g.add_argument("--demo_distance", type=float, default=1.0, help="demo camera distance to the head (metres)")
    g.add_argument("--demo_noise_px", type=float, default=1.0, help="demo landmark noise sigma (pixels)")
    g.add_argument("--demo_shape_std", type=float, default=1.0, help="demo shape coefficients ~ N(0, std)")
    g.add_argument("--demo_exp_std", type=float, default=0.5, help="demo expression coefficients ~ N(0, std)")
    g.add_argument("--demo_faceless_views", type=int, default=0,
                   help="replace this many demo views with faceless images (robustness check)")
    g.add_argument("--demo_sfm", type=str2bool, nargs="?", const=True, default=True,
                   help="run process_data's pycolmap SfM on the demo scene (sfm/, cameras.json's sfm_poses); "
                        "K stays the known one")
    g.add_argument("--demo_sfm_max_size", type=int, default=1024,
                   help="SfM feature extraction downscales the demo images to at most this side (pixels)")
    g.add_argument("--demo_sift_dsp", type=str2bool, nargs="?", const=True, default=True,
                   help="the demo SfM's SIFT descriptors with domain-size pooling, as process_data's (3x the "
                        "extraction time)")
    g.add_argument("--demo_sfm_mask", type=str2bool, nargs="?", const=True, default=True,
                   help="the demo SfM's SIFT keypoints on the scene's head masks only: its backgrounds are drawn "
                        "per view, so no match can come from them")

    g = p.add_argument_group("model")
    g.add_argument("--flame_model", type=str, default="synthetic",
                   help="FLAME generic_model.pkl / .npz, or 'synthetic' for the stand-in built on --standin_template")
    g.add_argument("--landmark_embedding", type=str, default="",
                   help="landmark embedding .npy (DECA layout); default: the stand-in's or beside the model")
    g.add_argument("--tex_space", type=str, default="auto",
                   help="texture space .npz; 'auto' looks beside the model, 'none' fits a free UV texture map")
    g.add_argument("--standin_template", type=str, default="",
                   help="OBJ template for the stand-in model (e.g. ../shared/data/flame_topology/head_template_mesh.obj); "
                        "empty: the built-in procedural head")
    g.add_argument("--standin_embedding", type=str, default="",
                   help="landmark embedding for the stand-in built on --standin_template")
    g.add_argument("--standin_dir", type=str, default="",
                   help="where the stand-in model is built and cached (default <savefolder>/_standin)")
    g.add_argument("--standin_seed", type=int, default=0, help="seed of the stand-in model")
    g.add_argument("--n_shape", type=int, default=100, help="number of shape parameters")
    g.add_argument("--n_exp", type=int, default=50, help="number of expression parameters")
    g.add_argument("--n_tex", type=int, default=50, help="number of texture-space parameters")
    g.add_argument("--tex_res", type=int, default=256, help="free UV texture map resolution (no texture space)")

    g = p.add_argument_group("fitting")
    g.add_argument("--image_size", type=int, default=256, help="fitting resolution: the longer image side (pixels)")
    g.add_argument("--device", type=str, default="auto", help="auto (CUDA when available) | cpu | cuda | cuda:N")
    g.add_argument("--seed", type=int, default=0, help="random seed")
    g.add_argument("--num_threads", type=int, default=0,
                   help="CPU threads for torch (0: torch's default, one per core). The float32 sums' order "
                        "depends on it, so fits on machines with other core counts agree only when it is set")
    g.add_argument("--refine_focal", type=str, default="auto", choices=["auto", "always", "never"],
                   help="estimate the focal length jointly from the face prior; auto: when SfM registered "
                        "few views, its focal is implausible, or no SfM (never for one view)")
    g.add_argument("--cameras", type=str, default="",
                   help="known cameras of a calibrated rig: a COLMAP model folder, a transforms.json (nerfstudio / "
                        "instant-ngp) or a calibration JSON (docs/CONVENTIONS.md); one camera per image, by file "
                        "name or stem. SfM is skipped; lens distortion is removed at load time")
    g.add_argument("--camera_mode", type=str, default="estimate", choices=["estimate", "fixed", "refine"],
                   help="estimate: cameras from the images (SfM, landmarks); fixed: the --cameras as given, the "
                        "head's pose in the rig fitted; refine: per-view corrections held to --cameras by a prior")
    g.add_argument("--camera_prior_deg", type=float, default=1.0,
                   help="--camera_mode refine: a camera rotated this far from its calibration costs as much as "
                        "every landmark 1 px off (fitting pixels)")
    g.add_argument("--camera_prior_mm", type=float, default=10.0,
                   help="--camera_mode refine: likewise for a camera translated this far (millimetres)")
    g.add_argument("--sfm_min_views", type=int, default=10,
                   help="auto focal refinement: trust SfM's focal only when it registered at least this many views")
    g.add_argument("--tracks", type=str, default="auto", choices=["auto", "off"],
                   help="bundle adjustment: put the SfM tracks (<preprocess>/sfm/model) into the geometry solve "
                        "with the landmarks (auto: whenever the scene has an SfM model)")
    g.add_argument("--sfm_trust_deg", type=float, default=10.0,
                   help="SfM poses initialise the cameras when they agree with PnP's within this in the median "
                        "view and put the landmarks near the detections there (else SfM is taken as degenerate, "
                        "e.g. a bas-relief from few views)")
    g.add_argument("--track_sigma_px", type=float, default=0.5,
                   help="noise of an SfM track observation (original pixels); weighs tracks against landmarks")
    g.add_argument("--track_robust_px", type=float, default=2.0,
                   help="Cauchy scale of the track reprojection loss (original pixels)")
    g.add_argument("--lmk_max_yaw_deg", type=float, default=45.0,
                   help="with tracks or a calibration (--cameras), views beyond this yaw do not use their landmarks "
                        "(detectors fail on profiles)")
    g.add_argument("--lmk_outlier_factor", type=float, default=3.0,
                   help="with tracks, a view whose landmark RMSE exceeds this x the median view's stops using them")
    g.add_argument("--pose_disagree_deg", type=float, default=10.0,
                   help="flag a view when its PnP and (aligned) SfM rotations differ by more than this")
    g.add_argument("--pose_disagree_rel", type=float, default=0.1,
                   help="flag a view when its PnP and SfM camera centres differ by more than this fraction of the distance")

    g.add_argument("--geom_lm_iters", type=int, default=10,
                   help="Levenberg-Marquardt iterations per geometry round (cameras, focal, shape, expression, jaw)")
    g.add_argument("--geom_rounds", type=int, default=2, help="geometry rounds (static landmarks first, then all 68)")
    g.add_argument("--geom_static_rounds", type=int, default=1,
                   help="first rounds use only the 51 static landmarks, later ones all 68")

    g.add_argument("--photo_iters", type=int, default=150, help="photometric stage iterations (0 skips it)")
    g.add_argument("--photo_lr", type=float, default=0.002, help="photometric Adam learning rate of shape, expression, jaw")
    g.add_argument("--photo_warmup", type=float, default=0.3,
                   help="fraction of the photometric iterations that fit only texture and light (geometry frozen)")
    g.add_argument("--tex_lr", type=float, default=0.05, help="learning rate of the texture code or map")
    g.add_argument("--sh_lr", type=float, default=0.02, help="learning rate of the SH lighting")
    g.add_argument("--photo_cam_lr", type=float, default=1e-4, help="learning rate of the cameras in the photometric stage")

    g = p.add_argument_group("loss weights")
    g.add_argument("--w_lmk", type=float, default=1.0, help="landmark reprojection (per pixel^2 at fitting size)")
    g.add_argument("--w_contour", type=float, default=0.3, help="per-point weight of the 17 contour landmarks")
    g.add_argument("--lmk_robust_px", type=float, default=3.0,
                   help="scale s of the Cauchy landmark loss (pixels): a point r px off costs s^2 log(1 + r^2/s^2)")
    g.add_argument("--w_rim", type=float, default=0.0,
                   help="geometry stage: outline term, silhouette-edge vertices vs the head-mask boundary; fixes the "
                        "head's size and its unseen back (0 = off, the default: real masks include hair; the demo uses 1). "
                        "Views that nothing else places (profiles re-posed by their mask) use at least 1")
    g.add_argument("--rim_max_px", type=float, default=4.0, help="drop rim pairs farther apart than this (fitting pixels)")
    g.add_argument("--rim_robust_px", type=float, default=1.0, help="Cauchy scale of the outline term (fitting pixels)")
    g.add_argument("--rim_occlusion_rel", type=float, default=0.005,
                   help="outline term: a rim vertex counts as hidden when the surface in front of it is closer "
                        "by more than this fraction of its depth")
    g.add_argument("--w_photo_gn", type=float, default=0.0,
                   help="geometry stage: an extra Levenberg-Marquardt round with photometric rows (photo at projected "
                        "surface samples vs their fitted albedo x SH shading, texture space only; weight against the "
                        "landmark mean, colours in [0, 1]); 0 = off")
    g.add_argument("--photo_gn_iters", type=int, default=8, help="iterations of that photometric LM round")
    g.add_argument("--photo_gn_robust", type=float, default=0.01,
                   help="Cauchy scale of its colour residuals (colours in [0, 1])")
    g.add_argument("--photo_gn_stride", type=int, default=3, help="that round uses every n-th skin pixel as a sample")
    g.add_argument("--photo_gn_blur", type=float, default=1.5,
                   help="that round blurs photo and model by this Gaussian sigma (fitting px) at first, down to none "
                        "half-way (coarse to fine)")
    g.add_argument("--w_photo", type=float, default=2.0, help="photometric L1 inside the skin mask")
    g.add_argument("--w_sil", type=float, default=1.0, help="silhouette vs head mask")
    g.add_argument("--w_photo_lmk", type=float, default=1.0, help="landmark weight during the photometric stage")
    g.add_argument("--w_shape", type=float, default=1e-3, help="shape prior (squared coefficients)")
    g.add_argument("--w_exp", type=float, default=1e-3, help="expression prior")
    g.add_argument("--w_pose", type=float, default=1e-4, help="jaw pose prior (on jaw / 0.1 rad); stronger values bias the head pitch")
    g.add_argument("--w_tex", type=float, default=1e-4, help="texture-code prior")
    g.add_argument("--w_tex_smooth", type=float, default=1e-2, help="free texture map smoothness")
    g.add_argument("--w_focal", type=float, default=1e-4,
                   help="prior pulling log focal towards its initial value (on log f / 0.1)")

    g = p.add_argument_group("progress and checkpoints")
    g.add_argument("--resume", type=str2bool, nargs="?", const=True, default=False, help="resume from <out>/checkpoint.pt when present")
    g.add_argument("--checkpoint_every", type=int, default=50, help="iterations between checkpoints inside a stage")
    g.add_argument("--progress", type=str2bool, nargs="?", const=True, default=True, help="show tqdm progress bars")
    g.add_argument("--write_images", type=str2bool, nargs="?", const=True, default=True,
                   help="write overlays, heatmaps, contact sheet, losses.png, index.html and the turntable")

    g = p.add_argument_group("exports (docs/EXPORTS.md; also python -m fitting.export OUTPUT_DIR --format ...)")
    g.add_argument("--export", type=str, default="nerfstudio",
                   help="training exports written to <out>/exports/<format>/, comma-separated: nerfstudio, "
                        "instant-ngp, gaussian-avatars (= vhap), deca, colmap; 'all' or 'none'")
    g.add_argument("--val_cameras", type=str, default="",
                   help="gaussian-avatars export: views held out for validation (names, stems or indices, comma-separated)")
    g.add_argument("--test_cameras", type=str, default="", help="gaussian-avatars export: views held out for testing")
    g.add_argument("--export_background", type=str, default="white", choices=["white", "black"],
                   help="gaussian-avatars export: the colour each photo is composited over outside the head mask")
    return p


def parse_config(argv=None, parser: configargparse.ArgumentParser | None = None) -> Config:
    """Parse ``argv`` (default sys.argv[1:]) into a :class:`Config`, validated."""
    cfg = parse_checked(parser or build_parser(), argv)
    validate(cfg)
    return cfg


def parse_checked(parser: _Parser, argv=None) -> Config:
    """``parser.parse_args(argv)`` after checking the keys of the config files it names:
    configargparse would report an unknown key as an unknown command-line argument, without
    the file."""
    argv = sys.argv[1:] if argv is None else [str(a) for a in argv]
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--config", action="append", default=[])
    for path in pre.parse_known_args(argv)[0].config:
        _check_config_keys(parser, Path(path))
    return parser.parse_args(argv, namespace=Config())


def _check_config_keys(parser: _Parser, path: Path) -> None:
    if not path.is_file():
        return  # configargparse reports a missing file
    known = {s[2:] for s in parser.option_names()}
    for lineno, line in enumerate(path.read_text().splitlines(), 1):
        line = line.strip()
        if not line or line[0] in "#;[" or line.startswith("---"):
            continue
        key = _CONFIG_KEY_RE.match(line)["key"].lstrip("-")
        if key not in known:
            parser.error(f"{path}:{lineno}: unknown option {key!r}{parser.suggest('--' + key, strip=2)}")


def validate(cfg: argparse.Namespace) -> None:
    if not cfg.scene_dir:
        raise ValueError("no scene: give --scene_dir DIR (a folder with images/), or --demo true --scene_dir DIR")
    validate_fit_options(cfg)


def validate_fit_options(cfg: argparse.Namespace) -> None:
    """Checks shared by run_fitting.py and single_view/fit.py."""
    for k in ("n_shape", "n_exp", "image_size"):
        if getattr(cfg, k) <= 0:
            raise ValueError(f"--{k} must be positive, got {getattr(cfg, k)}")
    for k in ("photo_iters", "geom_lm_iters", "geom_rounds"):
        if getattr(cfg, k) < 0:
            raise ValueError(f"--{k} must be >= 0, got {getattr(cfg, k)}")
    _check_device_name(cfg.device)
    _check_camera_options(cfg)
    from fitting.export.run import parse_formats
    parse_formats(cfg.export)  # ValueError before any work on an unknown format


def _check_camera_options(cfg: argparse.Namespace) -> None:
    """--cameras and --camera_mode agree (a calibration is used by fixed / refine only)."""
    if cfg.camera_mode != "estimate" and not cfg.cameras:
        raise ValueError(f"--camera_mode {cfg.camera_mode} needs --cameras PATH (a COLMAP model folder, a "
                         "transforms.json or a calibration JSON, docs/CONVENTIONS.md)")
    if cfg.cameras and cfg.camera_mode == "estimate":
        raise ValueError(f"--cameras {cfg.cameras} is used with --camera_mode fixed or refine; with estimate the "
                         "cameras come from the images: add --camera_mode fixed|refine, or drop --cameras")
    if cfg.camera_mode == "fixed" and cfg.refine_focal == "always":
        raise ValueError("--camera_mode fixed keeps the calibration's focal length: drop --refine_focal always, "
                         "or use --camera_mode refine")
    for k in ("camera_prior_deg", "camera_prior_mm"):
        if getattr(cfg, k) <= 0:
            raise ValueError(f"--{k} must be positive, got {getattr(cfg, k)}")


def _check_device_name(name: str) -> None:
    if not _DEVICE_RE.fullmatch(name):
        raise ValueError(f"--device {name!r} is not a device: give {DEVICES}")


def resolve_device(name: str) -> torch.device:
    """'auto' -> CUDA when available, else CPU; 'cpu', 'cuda', 'cuda:N' when that device exists."""
    _check_device_name(name)
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {name} asked for CUDA but none is available; use --device auto or cpu")
    if dev.index is not None and dev.index >= torch.cuda.device_count():
        raise ValueError(f"--device {name}: there is no such GPU (this machine has {torch.cuda.device_count()}: "
                         f"cuda:0 to cuda:{torch.cuda.device_count() - 1})")
    return dev


def config_to_dict(cfg: argparse.Namespace) -> dict:
    """JSON/pickle-friendly copy of the config (paths as strings)."""
    return {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(cfg).items()}
