"""run_all: scan -> landmarks -> pad/crop -> masks -> intrinsics, skipping up-to-date stages.

A stage is redone when --force is given, when an output is missing, when its options or the
set of views changed, or when the content of an input (image, landmarks.json) changed: each
image is hashed once per run and each stage records a digest of what it read. An output
folder holding another scene's preprocessing is refused (mf.ForeignPreprocess)."""
from __future__ import annotations

import hashlib
import json
import logging
import shutil
import time
from collections import Counter
from pathlib import Path

import numpy as np
from tqdm import tqdm

from fitting.images import same_camera_shape

from . import files, manifest as mf
from .profiles import PROFILE_BOX_OFFSET, profile_views

log = logging.getLogger("process_data")

ALL_STAGES = ["scan", "landmarks", "pad", "masks", "intrinsics"]
DEFAULTS = dict(backend="dlib", masks="default", bisenet_weights=None, pad_mode="pad", pad_size=512,
                crop_margin=2.0, fov=30.0, sfm_max_size=1024, sequential=False, min_registered=3,
                sfm_landmarks="fallback",
                num_threads=-1, progress=True)
# Options that change how a run looks or how fast, not what it computes: not recorded in the
# manifest (num_threads: SIFT's, whose result does not depend on it).
RUN_ONLY = ("progress", "num_threads")


def _say(msg: str) -> None:
    tqdm.write(f"[process_data] {msg}")


class _Scene:
    def __init__(self, scene_dir, out_dir, opts, prints, manifest):
        self.scene = Path(scene_dir)
        self.images_dir = self.scene / "images"
        self.out = Path(out_dir)
        self.opts = opts
        self.prints = prints  # {name: fingerprint} of every image, hashed once per run
        self._cache: dict[str, np.ndarray] = {}
        self.manifest = manifest

    def image(self, name: str) -> np.ndarray:
        if name not in self._cache:
            self._cache[name] = files.read_image(self.images_dir / name)
        return self._cache[name]

    def good(self, stages=("scan", "landmarks")) -> list[str]:
        """Views that did not fail in any of ``stages``."""
        return [n for n in self.manifest["views"]
                if n not in self.manifest["failed"] or self.manifest["failed"][n]["stage"] not in stages]

    def bar(self, it, desc):
        return tqdm(it, desc=desc, unit="view", disable=not self.opts["progress"], leave=False)

    def save(self):
        files.atomic_write_json(self.out / mf.MANIFEST_NAME, self.manifest)


def _inputs(sc: _Scene, names: list[str], *paths: Path) -> str:
    """Digest of a stage's inputs: the fingerprints of the images ``names`` and the contents
    of the output files ``paths`` of earlier stages (e.g. landmarks.json)."""
    parts = {"images": {n: sc.prints[n]["sha256"] for n in names},
             "files": {p.name: mf.fingerprint(p)["sha256"] for p in paths}}
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()


def _stale(sc: _Scene, stage: str, options: dict, inputs: str, outputs: list[Path], force: bool) -> bool:
    rec = sc.manifest["stages"].get(stage)
    # a record without "inputs" comes from a manifest written before fingerprints: stale
    return (force or rec is None or rec.get("options") != options or rec.get("inputs") != inputs
            or any(not p.exists() for p in outputs))


def _finish(sc: _Scene, stage: str, options: dict, inputs: str, tool: str, seconds: float, warnings=()) -> None:
    sc.manifest["stages"][stage] = {"tool": tool, "options": options, "inputs": inputs, "seconds": round(seconds, 3),
                                    "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "warnings": list(warnings)}
    for w in warnings:
        _say("warning: " + w)
    sc.save()


# ---------------------------------------------------------------- stages
def _scan(sc: _Scene, skipped: dict) -> None:
    names = list(sc.prints)
    old = sc.manifest
    m = mf.new_manifest(sc.scene, sc.images_dir, sc.out)
    m["options"] = {k: v for k, v in sc.opts.items() if k not in RUN_ONLY}
    # keep the stage records of a previous run; staleness checks compare their options and inputs
    if old:
        m["stages"] = old.get("stages", {})
        for n, v in old.get("views", {}).items():
            if n in names and "transform" in v:
                m["views"].setdefault(n, {})["transform"] = v["transform"]
    m["skipped_files"] = skipped
    for n, why in skipped.items():
        _say(f"skipping {n}: {why}")
    for n in names:
        v = m["views"].setdefault(n, {})
        v["file"] = str(mf.image_path(m, sc.out, n))
        v.update(sc.prints[n])
        try:
            img = sc.image(n)
            v["size"] = [int(img.shape[1]), int(img.shape[0])]
            v["orientation"] = files.exif_orientation(sc.images_dir / n)
            v["status"] = {"scan": "ok"}
        except ValueError as e:
            v["size"] = None
            v["status"] = {"scan": "failed"}
            m["failed"][n] = {"stage": "scan", "reason": str(e)}
            _say(f"view {n} failed: {e}")
    sc.manifest = m
    if not any(v["size"] for v in m["views"].values()):
        sc.save()
        raise ValueError(f"no readable image in {sc.images_dir}: {json.dumps(m['failed'])}")
    try:
        m["camera_size"] = _camera_size(m)
    finally:
        sc.save()


def _camera_size(m: dict) -> list[int]:
    """The size of the scene's one camera: the most common view size. Views at another
    resolution of the same shape are that camera scaled (K scales uniformly; SfM runs on the
    camera size only); a scene whose sizes differ in shape is refused: one camera cannot
    explain it, and per-axis scaling would give non-square pixels."""
    by_size: dict[tuple, list] = {}
    for n, v in m["views"].items():
        if v["size"]:
            by_size.setdefault(tuple(v["size"]), []).append(n)
    counts = Counter({s: len(ns) for s, ns in by_size.items()})
    (w, h), _ = counts.most_common(1)[0]
    if any(not same_camera_shape((w, h), s) for s in by_size):
        listed = "; ".join(f"{sw}x{sh}: {k} view(s) ({', '.join(by_size[(sw, sh)][:3])}"
                           f"{', ...' if k > 3 else ''})" for (sw, sh), k in counts.most_common())
        raise ValueError(f"the photos come in sizes of different shapes ({listed}); a scene is one camera, "
                         "so put photos of different aspect ratios in scenes of their own (or crop them to "
                         "one aspect ratio)")
    others = [n for s, ns in by_size.items() if s != (w, h) for n in ns]
    if others:
        msg = (f"view(s) {', '.join(others)} are the {w}x{h} camera at another resolution: they share its "
               "intrinsics (scaled uniformly) but take no part in SfM")
        m["warnings"].append(msg)
        _say("warning: " + msg)
    return [w, h]


def _landmarks(sc: _Scene, force: bool) -> None:
    names = list(sc.manifest["views"])
    opts = {"backend": sc.opts["backend"], "views": names}
    out = sc.out / "landmarks.json"
    sheet = sc.out / "preview" / "landmarks.png"
    inputs = _inputs(sc, names)
    if not _stale(sc, "landmarks", opts, inputs, [out, sheet], force):
        _restore_failures(sc, "landmarks")
        return
    from . import landmarks as lm
    from .preview import contact_sheet, landmark_tile

    t0 = time.time()
    result, tiles = {}, []
    for n in sc.bar(sc.good(("scan",)), "landmarks"):
        r = lm.detect_landmarks(sc.image(n), backend=sc.opts["backend"])
        pts = r["points"]
        result[n] = {"points": None if pts is None else np.round(pts, 4).tolist(), "box": r["box"],
                     "score": float(r["score"]), "detector": r["detector"]}
        if pts is None:
            mf.record_failure(sc.manifest, n, "landmarks", "no face found")
            _say(f"view {n} failed: no face found")
        else:
            sc.manifest["views"][n]["status"]["landmarks"] = "ok"
        tiles.append(landmark_tile(sc.image(n), pts, n))
    files.atomic_write_json(out, result)
    files.atomic_write_png(sheet, contact_sheet(tiles))
    _finish(sc, "landmarks", opts, inputs, lm.tool_version(sc.opts["backend"]), time.time() - t0)


def _restore_failures(sc: _Scene, stage: str) -> None:
    """A skipped stage still contributes its recorded failures to the fresh manifest."""
    if stage == "landmarks" and (sc.out / "landmarks.json").exists():
        data = json.loads((sc.out / "landmarks.json").read_text())
        for n, r in data.items():
            if n in sc.manifest["views"] and r["points"] is None:
                mf.record_failure(sc.manifest, n, "landmarks", "no face found")
    rec = sc.manifest["stages"].get(stage, {})
    for n, f in rec.get("failed", {}).items():
        if n in sc.manifest["views"]:
            mf.record_failure(sc.manifest, n, stage, f)


def _load_points(sc: _Scene) -> dict:
    path = sc.out / "landmarks.json"
    if not path.is_file():
        raise ValueError(f"{path} is missing: run the landmarks stage first (python -m process_data SCENE)")
    return json.loads(path.read_text())


def _pad(sc: _Scene, force: bool) -> None:
    from .pad import apply_transform, crop_transform, pad_transform

    mode, size = sc.opts["pad_mode"], sc.opts["pad_size"]
    names = sc.good(("scan",) if mode == "pad" else ("scan", "landmarks"))
    opts = {"mode": mode, "size": size, "margin": sc.opts["crop_margin"], "views": names}
    outs = [sc.out / "derived" / (Path(n).stem + ".png") for n in names]
    inputs = _inputs(sc, names, *([sc.out / "landmarks.json"] if mode == "crop" else []))
    if not _stale(sc, "pad", opts, inputs, outs, force) and all("transform" in sc.manifest["views"][n] for n in names):
        return
    t0 = time.time()
    lms = _load_points(sc) if mode == "crop" else {}
    for n, o in zip(sc.bar(names, f"{mode}"), outs):
        img = sc.image(n)
        H, W = img.shape[:2]
        t = pad_transform(W, H, size) if mode == "pad" else crop_transform(lms[n]["box"], size, sc.opts["crop_margin"])
        files.atomic_write_png(o, apply_transform(img, t))
        v = sc.manifest["views"][n]
        v["transform"] = t.to_dict()
        v["derived"] = str(o.relative_to(sc.out))
        v["status"]["pad"] = "ok"
    _finish(sc, "pad", opts, inputs, f"process_data.pad ({mode})", time.time() - t0)


def _masks(sc: _Scene, force: bool) -> None:
    names = sc.good(("scan", "landmarks"))
    backend = sc.opts["masks"]
    opts = {"backend": backend, "weights": sc.opts["bisenet_weights"], "views": names}
    outs = [sc.out / "masks" / k / (Path(n).stem + ".png") for n in names for k in ("head", "skin")]
    sheet = sc.out / "preview" / "masks.png"
    inputs = _inputs(sc, names, sc.out / "landmarks.json")
    if not _stale(sc, "masks", opts, inputs, outs + [sheet], force):
        return
    # imported only when the stage runs: the up-to-date check stays cheap
    from . import masks as mk
    from .preview import contact_sheet, mask_tile

    t0 = time.time()
    if backend == "bisenet":
        from .bisenet import FaceParser

        parser = FaceParser(sc.opts["bisenet_weights"])
        compute, tool = parser.compute_masks, f"bisenet ({sc.opts['bisenet_weights']})"
    elif backend == "default":
        compute, tool = mk.compute_masks, "process_data.masks default (skin colour model + GrabCut, OpenCV)"
    else:
        raise ValueError(f"unknown masks backend {backend!r}: use 'default' or 'bisenet'")
    lms = _load_points(sc)
    tiles = []
    for n in sc.bar(names, "masks"):
        img = sc.image(n)
        head, skin = compute(img, np.asarray(lms[n]["points"], np.float64))
        stem = Path(n).stem
        files.atomic_write_png(sc.out / "masks" / "head" / f"{stem}.png", head)
        files.atomic_write_png(sc.out / "masks" / "skin" / f"{stem}.png", skin)
        sc.manifest["views"][n]["status"]["masks"] = "ok"
        tiles.append(mask_tile(img, head, skin, n))
    files.atomic_write_png(sheet, contact_sheet(tiles))
    _finish(sc, "masks", opts, inputs, tool, time.time() - t0)


# what a calibrated camera (cameras.json with source "known") keeps when SfM runs on its views
_INTRINSICS_KEYS = ("K", "width", "height", "model", "distortion", "source")


def known_cameras(path: Path) -> dict | None:
    """The intrinsics of ``path`` when it says they are known (a calibrated or synthetic camera)."""
    if not path.is_file():
        return None
    cams = json.loads(path.read_text())
    return {k: cams[k] for k in _INTRINSICS_KEYS} if cams.get("source") == "known" else None


def sfm_cameras(out_dir, image_dir, names: list[str], *, fov: float = DEFAULTS["fov"],
                min_registered: int = DEFAULTS["min_registered"], max_image_size: int = DEFAULTS["sfm_max_size"],
                sequential: bool = False, num_threads: int = -1, landmarks: dict | None = None,
                use_landmarks: str = DEFAULTS["sfm_landmarks"], known: dict | None = None,
                sift_dsp: bool = True, keypoint_masks: Path | None = None) -> tuple[dict, list[str]]:
    """pycolmap SfM on ``names`` in ``image_dir``; writes ``out_dir/sfm`` (database.db and the
    COLMAP binary model in model/) when it reconstructs anything. Returns (cameras.json content,
    warnings). ``known``: known intrinsics (source "known") that the result keeps; SfM's own K then
    goes to "sfm_K" while its poses, registered views and model are recorded as usual. sift_dsp,
    keypoint_masks: see :func:`process_data.intrinsics.extract_and_match`."""
    from .intrinsics import estimate_intrinsics

    out_dir = Path(out_dir)
    work = out_dir / "sfm"
    tmp_work = out_dir / ".sfm.tmp"
    shutil.rmtree(tmp_work, ignore_errors=True)
    cams, rec, warns = estimate_intrinsics(image_dir, names, work_dir=tmp_work, fov_deg=fov,
                                           min_registered=min_registered, max_image_size=max_image_size,
                                           sequential=sequential, num_threads=num_threads, landmarks=landmarks,
                                           use_landmarks=use_landmarks, sift_dsp=sift_dsp,
                                           keypoint_masks=keypoint_masks)
    if rec is not None:
        model = tmp_work / "model"
        model.mkdir(parents=True, exist_ok=True)
        rec.write_binary(str(model))  # COLMAP's own binary writer
        shutil.rmtree(tmp_work / "sparse", ignore_errors=True)
        # swap the finished folder in whole, so sfm/ is never half written
        old = out_dir / ".sfm.old"
        shutil.rmtree(old, ignore_errors=True)
        if work.exists():
            work.rename(old)
        tmp_work.rename(work)
        shutil.rmtree(old, ignore_errors=True)
        cams["colmap_model"] = "sfm/model"
    else:
        shutil.rmtree(tmp_work, ignore_errors=True)
    if known is not None:
        sfm_K = {"sfm_K": cams["K"]} if cams["source"] == "sfm" else {}
        cams = {**cams, **known, **sfm_K}
    return cams, warns


def _intrinsics(sc: _Scene, force: bool) -> None:
    # every readable view of the camera size (a view without a face still helps SfM)
    size = sc.manifest["camera_size"]
    names = [n for n, v in sc.manifest["views"].items() if v["size"] == size]
    opts = {k: sc.opts[k] for k in ("fov", "sfm_max_size", "sequential", "min_registered", "sfm_landmarks")}
    opts["views"] = names
    out = sc.out / "cameras.json"
    lm_path = sc.out / "landmarks.json"
    use_lm = sc.opts["sfm_landmarks"] != "never" and lm_path.is_file()
    head_masks, masks = sc.out / "masks" / "head", []
    if use_lm:   # the landmarks of profiles stay out of SfM, judged by the head masks
        opts["profile_box_offset"] = PROFILE_BOX_OFFSET
        masks = [p for p in (head_masks / f"{Path(n).stem}.png" for n in names) if p.is_file()]
    inputs = _inputs(sc, names, *([lm_path, *masks] if use_lm else []))
    if not _stale(sc, "intrinsics", opts, inputs, [out], force):
        return
    import pycolmap

    points, profile_note = None, []
    if use_lm:
        points = {n: r["points"] for n, r in _load_points(sc).items() if r["points"] is not None and n in names}
        profiles = profile_views(points, head_masks)
        points = {n: p for n, p in points.items() if n not in profiles}
        if profiles:
            profile_note = ["SfM leaves out the landmarks of " + ", ".join(
                f"{n} (face box {o:+.2f} of the head's width off its centre)" for n, o in sorted(profiles.items()))
                + ": their face sits at the side of the head, a profile, where a detector's points are a "
                  "frontal face's (docs/PREPROCESSING.md)"]
    t0 = time.time()
    known = known_cameras(out)
    if len(names) >= sc.opts["min_registered"]:
        _say(f"pycolmap SfM on {len(names)} views" + (" (intrinsics known: K kept)" if known else ""))
    cams, warns = sfm_cameras(sc.out, sc.images_dir, names, fov=sc.opts["fov"],
                              min_registered=sc.opts["min_registered"], max_image_size=sc.opts["sfm_max_size"],
                              sequential=sc.opts["sequential"], num_threads=sc.opts["num_threads"],
                              landmarks=points, use_landmarks=sc.opts["sfm_landmarks"], known=known)
    warns = profile_note + warns
    for n in names:
        st = sc.manifest["views"][n]["status"]
        st["intrinsics"] = "registered" if n in cams["registered"] else "not registered"
    sc.manifest["warnings"].extend(warns)
    files.atomic_write_json(out, cams)
    _finish(sc, "intrinsics", opts, inputs, f"pycolmap {pycolmap.__version__} (COLMAP {pycolmap.COLMAP_version})",
            time.time() - t0, warns)


def _previous_manifest(out: Path) -> dict | None:
    try:
        return mf.load_manifest(out)
    except (ValueError, json.JSONDecodeError):
        return None


def run_all(scene_dir, out_dir=None, force: bool = False, stages=None, **options) -> Path:
    """Run the missing or stale stages of ``scene_dir`` (a folder with images/).

    out_dir: where outputs go (default: scene_dir, beside images/); images/ is never modified.
    stages: subset of ALL_STAGES (scan always runs). options: see DEFAULTS; an option not
    given keeps its value from the previous run in out_dir (DEFAULTS the first time), so a
    caller that only names some options never undoes the others.
    Returns the output folder. Raises ValueError for an unusable scene (no images/, no
    readable image), mf.ForeignPreprocess (a ValueError) when out_dir holds another scene's
    preprocessing and ``force`` is not given; per-view problems are recorded in manifest.json."""
    unknown = set(options) - set(DEFAULTS)
    if unknown:
        raise ValueError(f"unknown options {sorted(unknown)}; known: {sorted(DEFAULTS)}")
    stages = list(ALL_STAGES if stages is None else stages)
    bad = set(stages) - set(ALL_STAGES)
    if bad:
        raise ValueError(f"unknown stages {sorted(bad)}; choose from {ALL_STAGES}")
    scene_dir = Path(scene_dir)
    if not scene_dir.is_dir():
        raise ValueError(f"scene folder {scene_dir} does not exist")
    images_dir = scene_dir / "images"
    out = Path(out_dir) if out_dir is not None else scene_dir
    if out.resolve() == images_dir.resolve() or images_dir.resolve() in out.resolve().parents:
        raise ValueError("the output folder must not be inside images/")
    names, skipped = files.list_images(images_dir)
    prints = {n: mf.fingerprint(images_dir / n) for n in names}
    previous = _previous_manifest(out)
    if previous and not force:
        mf.check_owner(previous, scene_dir, out, prints)
    recorded = {k: v for k, v in (previous or {}).get("options", {}).items() if k in DEFAULTS}
    opts = {**DEFAULTS, **recorded, **options}
    if opts["masks"] == "bisenet" and not opts["bisenet_weights"]:
        raise ValueError("--masks bisenet needs --bisenet-weights PATH (the face-parsing 79999_iter.pth file)")
    sc = _Scene(scene_dir, out, opts, prints, previous)
    sc.out.mkdir(parents=True, exist_ok=True)
    _scan(sc, skipped)
    runners = {"landmarks": _landmarks, "pad": _pad, "masks": _masks, "intrinsics": _intrinsics}
    for st in ALL_STAGES[1:]:
        if st in stages:
            runners[st](sc, force)
        elif st == "landmarks":
            _restore_failures(sc, "landmarks")
    sc.save()
    nf = len(sc.manifest["failed"])
    _say(f"done: {len(sc.manifest['views'])} views, {nf} failed" + (
        "".join(f"\n  {n}: [{f['stage']}] {f['reason']}" for n, f in sc.manifest["failed"].items())) +
        f"\n  outputs in {sc.out}")
    return sc.out
