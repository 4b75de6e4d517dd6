"""Fit a batch of single photos with the library's stages (one subject per photo).

:func:`fit_images` is what ``single_view/fit.py`` calls:

1. inputs (:mod:`single_view.inputs`): photos, landmarks, skin masks at fitting size;
2. :func:`fitting.run.run_stages`, the stages of a multi-view fit: rigid fit on the 51 static
   landmarks (robust PnP + LM refinement on the mean shape) per photo; Levenberg-Marquardt,
   one round on the 51 static points, then all 68 (yaw-dependent contour) with per-photo
   shape, expression and jaw; masked photometric L1 (skin mask of the photo AND coverage of
   the render), landmarks and priors, with the FLAME texture space (or a free UV map,
   ``--tex_space none``) and SH lighting per photo;
3. per-photo outputs (:mod:`single_view.outputs`).

The state has N views and G = N subjects with ``view_subject = arange(N)``: nothing is
shared between photos, yet every stage runs once on the whole batch.
"""
from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path

import torch

from fitting.config import resolve_device
from fitting.output_folder import FolderLock, check_writable
from fitting.model import load_model, texture_shape
from fitting.run import seed_everything
from fitting.context import FitContext
from fitting.run import StageHooks, run_stages
from fitting.stages import evaluate, initialize
from fitting.state import FitState
from single_view.camera import fitting_intrinsics
from single_view.inputs import list_inputs, prepare_batch
from fitting.flame import landmark_submodel

__all__ = ["fit_images", "PerImageRecorder"]


class PerImageRecorder:
    """:class:`fitting.run.StageHooks` boundary hook: per-photo landmark RMSE (fitting px) after
    every geometry round and per-photo masked photometric L1 every ``checkpoint_every``
    photometric iterations (the library's own history is per batch).

    contexts: {stage: FitContext} the stage is evaluated with; other stages (the "export"
    boundary) record nothing."""

    def __init__(self, n: int, contexts: dict):
        self.history = [{"geometry": [], "photometric": []} for _ in range(n)]
        self.contexts = contexts

    @torch.no_grad()
    def __call__(self, done: list, stage: str, position: int, state: FitState) -> None:
        if stage not in self.contexts:
            return
        ev = evaluate(self.contexts[stage], state, render=stage == "photometric")
        rmse = ev["landmark_rmse"].cpu().tolist()
        photo = ev["photometric_l1"].cpu().tolist() if "photometric_l1" in ev else None
        for i, h in enumerate(self.history):
            rec = {"iter": position, "landmark_rmse_px": rmse[i]}
            if photo is not None:
                rec["photometric_l1"] = photo[i]
            h[stage].append(rec)


def fit_images(cfg: argparse.Namespace, log=print) -> dict:
    """Fit every photo of ``cfg.input`` (a file or a folder) as one batch; write the outputs.

    Returns {"images": {name: report dict}, "failed": {name: reason}, "timing_s": {...},
    "device": str, "savefolder": str}. Photos without a face (or whose pose initialisation
    fails) are listed in "failed" and get a report.json with the reason; the others fit.
    Raises ValueError when no photo is usable, and before any work when the savefolder cannot
    be written or another run holds it.
    """
    t_start = time.perf_counter()
    device = resolve_device(cfg.device)
    save = Path(cfg.savefolder)
    check_writable(save)
    with FolderLock(save / ".lock", log=log):
        return _fit_batch(cfg, device, save, t_start, log)


def _write_failed(save: Path, name: str, reason: str) -> None:
    from single_view.outputs import photo_folder, write_failed_report
    with photo_folder(save, name).replace() as stage:
        write_failed_report(stage, name, reason)


def _fit_batch(cfg: argparse.Namespace, device: torch.device, save: Path, t_start: float, log) -> dict:
    from single_view.outputs import photo_folder, write_image_outputs

    seed_everything(cfg.seed)
    paths, is_folder, skipped = list_inputs(cfg.input, cfg.exclude)
    t0 = time.perf_counter()
    batch = prepare_batch(paths, cfg.image_size, cfg.landmarks, cfg.mask, cfg.landmark_backend,
                          need_head_mask=cfg.w_sil > 0 or cfg.w_rim > 0, single=not is_folder,
                          head_mask=cfg.head_mask, log=log)
    failed = dict(batch.failed)
    timing = {"preprocess": time.perf_counter() - t0}
    for name, reason in failed.items():
        _write_failed(save, name, reason)
    if batch.num_views == 0:
        raise ValueError("no usable photo: " + "; ".join(f"{k}: {v}" for k, v in failed.items()))
    batch.to(device)

    t0 = time.perf_counter()
    flame, texspace, model_info = load_model(cfg, device)
    tex_shape = texture_shape(cfg, flame, texspace)
    N = batch.num_views
    H, W = batch.size
    K0 = fitting_intrinsics(cfg.camera, cfg.fov, W, H, N, device=device)
    state = FitState.create(N, torch.arange(N), K0, cfg.n_shape, cfg.n_exp, tex_shape, device=device)
    ctx = FitContext.from_observations(batch, flame, cfg, texspace, refine_focal=False)
    # the landmark stages only need the landmarks' vertices (~360 of 5023): same results, and the
    # geometry stage ran 2.4x faster on FFHQ
    # (the outline term, --w_rim > 0, needs every vertex)
    ctx_lmk = dataclasses.replace(ctx, flame=landmark_submodel(flame)) if cfg.w_rim <= 0 else ctx
    recorder = PerImageRecorder(N, {"geometry": ctx_lmk, "photometric": ctx})
    timing["model"] = time.perf_counter() - t0

    pnp_failed = []

    def after_init(st: FitState, init_info: dict) -> None:
        pnp_failed.extend(i for i, s in enumerate(init_info["source"]) if s == "failed")
        ctx.view_weights = ctx_lmk.view_weights = torch.as_tensor(
            [0.0 if i in pnp_failed else 1.0 for i in range(N)], device=device)
        for i in pnp_failed:
            failed[batch.names[i]] = "pose initialisation failed: PnP found no consistent head pose for the landmarks"
            log(f"[single_view] {batch.names[i]}: left out: {failed[batch.names[i]]}")
        if len(pnp_failed) == N:
            raise ValueError("pose initialisation failed for every photo: " + "; ".join(failed.values()))

    hooks = StageHooks(lambda st: initialize(ctx_lmk, st), after_init, recorder)
    state, ev = run_stages(ctx, state, hooks, timing=timing, geometry_ctx=ctx_lmk)
    # the state the first photometric iteration saw
    ev["photometric_l1_first"] = torch.tensor([h["photometric"][0]["photometric_l1"] for h in recorder.history])
    t0 = time.perf_counter()
    used = [i for i in range(N) if i not in pnp_failed]
    fit_s = sum(timing[k] for k in ("model", "init", "geometry", "photometric"))
    reports = {}
    for i in used:  # file writing is per photo by nature
        name = batch.names[i]
        per_image_t = {"preprocess": batch.preprocess_s[name], "fit_share": fit_s / len(used),
                       "batch_size": len(used)}
        with photo_folder(save, name).replace() as stage:
            reports[name] = write_image_outputs(stage, i, name, batch, ctx, state, ev, recorder.history[i], cfg,
                                                per_image_t, model_info)
    for i in pnp_failed:
        _write_failed(save, batch.names[i], failed[batch.names[i]])
    timing["export"] = time.perf_counter() - t0
    timing["total"] = time.perf_counter() - t_start
    timing["per_image"] = timing["total"] / max(1, len(used))
    return {"images": reports, "failed": failed, "skipped": skipped, "device": str(device),
            "timing_s": {k: round(v, 3) for k, v in timing.items()}, "savefolder": str(save),
            "model": model_info}
