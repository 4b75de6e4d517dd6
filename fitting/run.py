"""The fit's stage sequence, shared by multi-view scenes (:mod:`fitting.pipeline`) and batches of
single photos (:mod:`single_view.batch`):

1. init: the caller's pose initialisation, then its ``after_init`` (view and landmark weights,
   tracks; it raises when no view is usable);
2. geometry: :func:`fitting.stages.stage_geometry` (LM rounds over the residual terms);
3. appearance: :func:`fitting.stages.init_appearance` (a free texture map starts at the mean
   skin colour of its subject's photos);
4. photometric: :func:`fitting.stages.stage_photometric`;
5. evaluate: :func:`fitting.stages.evaluate` with a render.

What differs between callers comes in through :class:`StageHooks`. A :class:`Progress` says
which stages a checkpoint already holds, so a resumed fit skips them and starts the next one at
its saved position.
"""
from __future__ import annotations

import random
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch

from fitting.context import FitContext
from fitting.stages import evaluate, init_appearance, stage_geometry, stage_photometric
from fitting.state import FitState

__all__ = ["Progress", "StageHooks", "run_stages", "seed_everything"]


@dataclass
class Progress:
    """Where a fit stands. done: the finished stages, a prefix of ("init", "geometry",
    "photometric"); pos: the position inside the next one (geometry round or photometric
    iteration) to start from."""

    done: list = field(default_factory=list)
    pos: int = 0


def _nothing(*args) -> None:
    return None


@dataclass
class StageHooks:
    """The caller's parts of :func:`run_stages`.

    initialize(state) -> (state, init_info): the pose initialisation (its inputs, e.g. SfM
        poses, are the caller's); init_info["source"] is (N,) with "failed" for views it could
        not place.
    after_init(state, init_info): run right after it and timed with it: weights from
        init_info, tracks; raises ValueError when no view is usable.
    boundary(done, stage, pos, state): at each stage boundary (stage = the next stage:
        "geometry", "photometric" or "export", pos 0) and, as ``ctx.on_iter``, inside the
        geometry and photometric stages (stage = the current one, pos = its position):
        checkpoints for scenes, per-photo records for single photos.
    after_geometry(state): run once the geometry stage has finished, before the boundary
        that follows it (diagnostics of the geometry estimate, which the checkpoint can keep).
    """

    initialize: Callable
    after_init: Callable = _nothing
    boundary: Callable = _nothing
    after_geometry: Callable = _nothing


def run_stages(ctx: FitContext, state: FitState, hooks: StageHooks, progress: Progress | None = None,
               timing: dict | None = None, geometry_ctx: FitContext | None = None) -> tuple[FitState, dict]:
    """Run the stages that ``progress`` (default: none done) has not finished; return the final
    state and :func:`fitting.stages.evaluate`'s dict for it (rendered).

    timing: {stage: seconds}, added to ("init", "geometry", "photometric"; appearance counts
    as photometric); geometry_ctx: the context of the init and geometry stages when it is not
    ``ctx`` (single photos fit their landmarks on a model cut to the landmark vertices); it
    must share ``ctx``'s view weights. Updates ``progress`` as stages finish.
    """
    progress = progress if progress is not None else Progress()
    timing = timing if timing is not None else {}
    geometry_ctx = geometry_ctx or ctx

    def boundary(stage: str, pos: int, st: FitState) -> None:
        hooks.boundary(list(progress.done), stage, pos, st)

    ctx.on_iter = geometry_ctx.on_iter = boundary

    def timed(key: str, t0: float) -> None:
        timing[key] = timing.get(key, 0.0) + time.perf_counter() - t0

    if "init" not in progress.done:
        t0 = time.perf_counter()
        state, init_info = hooks.initialize(state)
        hooks.after_init(state, init_info)
        timing["init"] = time.perf_counter() - t0
        progress.done, progress.pos = ["init"], 0
        boundary("geometry", 0, state)
    if "geometry" not in progress.done:
        t0 = time.perf_counter()
        state = stage_geometry(geometry_ctx, state, start_round=progress.pos)
        hooks.after_geometry(state)
        timed("geometry", t0)
        progress.done.append("geometry")
        progress.pos = 0
        t0 = time.perf_counter()
        state = init_appearance(ctx, state)
        timed("photometric", t0)
        boundary("photometric", 0, state)
    if "photometric" not in progress.done:
        t0 = time.perf_counter()
        state = stage_photometric(ctx, state, start_iter=progress.pos)
        timed("photometric", t0)
        progress.done.append("photometric")
        boundary("export", 0, state)
    return state, evaluate(ctx, state, render=True)


def seed_everything(s: int) -> None:
    """Seed Python, numpy and torch (the fit is then repeatable up to thread scheduling)."""
    random.seed(s)
    np.random.seed(s)
    torch.manual_seed(s)
