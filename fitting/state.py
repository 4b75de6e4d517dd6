"""FitState: every optimised variable of a fit, as tensors, plus checkpoints.

One state covers ``N`` views of ``G`` subjects with a view -> subject index, so the same
stages serve multi-view fitting (G = 1, every view shows the one head) and a batch of
single images (G = N, one view each).

World frame: FLAME's canonical head frame (metres, y up, +z out of the face); each subject
sits at the origin of its own copy of it, and the views' extrinsics place the cameras.
"""
from __future__ import annotations

import dataclasses
import pickle
from dataclasses import dataclass
from pathlib import Path

import torch

from fitting.atomic import atomic_path
from fitting.render.cameras import rot_to_matrix, scale_focal

__all__ = ["FitState", "save_checkpoint", "load_checkpoint", "check_resume_options"]


@dataclass
class FitState:
    """Optimised variables.

    shape: (G, n_shape); expression: (G, n_exp); pose: (G, 15) FLAME pose
        [global, neck, jaw, left eye, right eye] axis-angle (global stays 0 in multi-view fits:
        the cameras carry the rigid motion).
    cam_rot: (N, 3) axis-angle; world-to-camera R = exp(cam_rot) @ diag(1, -1, -1) (0 = a camera
        on the +z axis facing the head); cam_t: (N, 3) metres.
    K0: (N, 3, 3) intrinsics at fitting resolution before focal refinement (not optimised).
    log_focal: (1,) log of the shared focal-length factor (0 = K0 unchanged).
    tex: (G, n_tex) texture-space code, or (G, 3, Ht, Wt) free UV texture map in [0, 1].
    sh: (N, 9, 3) SH lighting per view.
    view_subject: (N,) int64 index of the subject each view shows.
    """

    shape: torch.Tensor
    expression: torch.Tensor
    pose: torch.Tensor
    cam_rot: torch.Tensor
    cam_t: torch.Tensor
    K0: torch.Tensor
    log_focal: torch.Tensor
    tex: torch.Tensor
    sh: torch.Tensor
    view_subject: torch.Tensor

    @property
    def num_views(self) -> int:
        return self.cam_rot.shape[0]

    @property
    def num_subjects(self) -> int:
        return self.shape.shape[0]

    @property
    def free_texture(self) -> bool:
        return self.tex.dim() == 4

    def R(self) -> torch.Tensor:
        """(N, 3, 3) world-to-camera rotations (cam_rot is relative to FLIP, see fitting.render.cameras)."""
        return rot_to_matrix(self.cam_rot)

    def K(self) -> torch.Tensor:
        """(N, 3, 3) intrinsics at fitting resolution with the focal factor applied to fx, fy."""
        return scale_focal(self.K0, self.log_focal)

    def per_view(self, x: torch.Tensor) -> torch.Tensor:
        """Expand a per-subject tensor (G, ...) to per-view (N, ...)."""
        return x[self.view_subject]

    @classmethod
    def create(cls, num_views: int, view_subject: torch.Tensor, K0: torch.Tensor, n_shape: int, n_exp: int,
               tex_shape: tuple, cam_rot: torch.Tensor | None = None, cam_t: torch.Tensor | None = None,
               device=None) -> "FitState":
        """A zero state: mean shape, neutral expression, ambient white light (sh[0] = 1)."""
        G = int(view_subject.max()) + 1 if view_subject.numel() else 1
        dev = device or K0.device
        sh = torch.zeros(num_views, 9, 3, device=dev)
        sh[:, 0] = 1.0 / 0.8862269  # DECA's first SH constant folded in: shading ~1 everywhere
        tex = torch.zeros((G,) + tuple(tex_shape), device=dev)
        if len(tex_shape) == 3:
            tex = tex + 0.5
        return cls(
            shape=torch.zeros(G, n_shape, device=dev),
            expression=torch.zeros(G, n_exp, device=dev),
            pose=torch.zeros(G, 15, device=dev),
            cam_rot=(cam_rot if cam_rot is not None else torch.zeros(num_views, 3)).to(dev).float().clone(),
            cam_t=(cam_t if cam_t is not None else torch.tensor([[0.0, 0.0, 1.0]]).repeat(num_views, 1)).to(dev).float().clone(),
            K0=K0.to(dev).float().clone(),
            log_focal=torch.zeros(1, device=dev),
            tex=tex,
            sh=sh,
            view_subject=view_subject.to(dev).long().clone(),
        )

    def tensors(self) -> dict:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    def detach(self) -> "FitState":
        """A copy with detached, cloned tensors (stages work on copies)."""
        return FitState(**{k: v.detach().clone() for k, v in self.tensors().items()})

    def to(self, device) -> "FitState":
        return FitState(**{k: v.to(device) for k, v in self.tensors().items()})


def _atomic_torch_save(obj, path: Path) -> None:
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def save_checkpoint(path, state: FitState, config: dict, progress: dict, history: dict | None = None,
                    extra: dict | None = None) -> None:
    """torch.save of the state (on CPU) + config + progress ({'stage', 'iter', 'done': [...]}) atomically.

    Everything else must be tensors and plain Python data (dicts, lists, numbers, strings; an
    optimiser's state_dict is): :func:`load_checkpoint` reads with ``weights_only``.
    """
    _atomic_torch_save({
        "state": {k: v.detach().cpu() for k, v in state.tensors().items()},
        "config": config,
        "progress": progress,
        "history": history or {},
        "extra": extra or {},
    }, path)


CHECKPOINT_KEYS = ("state", "config", "progress", "history", "extra")
RESTART_HINT = "rerun without --resume (or delete the file) to start afresh"

# Options that decide which model the saved variables belong to and their shapes; the others
# (iterations, loss weights, learning rates, outputs) may change between a run and its resume.
RESUME_OPTIONS = ("flame_model", "standin_template", "standin_seed", "landmark_embedding",
                  "n_shape", "n_exp", "tex_space", "n_tex", "tex_res", "image_size", "cameras", "camera_mode")


def load_checkpoint(path, device=None) -> dict:
    """Inverse of :func:`save_checkpoint`; ``d['state']`` is a FitState on ``device``.

    Only tensors and plain data load (``weights_only``), so a crafted file runs no code.
    Raises ValueError naming the file when it is corrupt, truncated or not a checkpoint.
    """
    try:
        d = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        # torch's message is long and about its own API; one line of it names what was refused
        reason = next((line for line in str(e).splitlines() if "GLOBAL" in line), type(e).__name__)
        raise ValueError(f"{path}: refusing to load this checkpoint: it holds more than tensors and plain "
                         f"data, so it is damaged or was not written by this tool ({reason}); "
                         f"{RESTART_HINT}") from e
    except (RuntimeError, EOFError, OSError, KeyError, ValueError) as e:
        raise ValueError(f"{path}: the checkpoint is corrupt or truncated ({type(e).__name__}); "
                         f"{RESTART_HINT}") from e
    fields = {f.name for f in dataclasses.fields(FitState)}
    if not (isinstance(d, dict) and set(CHECKPOINT_KEYS) <= set(d) and isinstance(d["state"], dict)
            and set(d["state"]) == fields):
        raise ValueError(f"{path}: not a checkpoint of this tool (expected the keys {list(CHECKPOINT_KEYS)} "
                         f"and a state with {sorted(fields)}); {RESTART_HINT}")
    d["state"] = FitState(**d["state"])
    if device is not None:
        d["state"] = d["state"].to(device)
    return d


def check_resume_options(saved: dict, current: dict, path) -> None:
    """Raise ValueError when the options a checkpoint was written with and today's disagree
    on any of :data:`RESUME_OPTIONS` (options the saved config lacks are not compared)."""
    changed = [f"--{k} {saved[k]!r} then, {current.get(k)!r} now" for k in RESUME_OPTIONS
               if k in saved and saved[k] != current.get(k)]
    if changed:
        raise ValueError(f"{path} was written with other options ({'; '.join(changed)}), so its fit cannot "
                         "continue: rerun without --resume to start afresh, or with the old options to resume.")
