"""Stage 2: 68 iBUG landmarks per view, offline.

Backend ``dlib`` (default): HOG detector + the 68-point shape predictor shipped by the
face-recognition-models package; the CNN (mmod) detector only when HOG finds nothing, with
its box mapped to HOG framing (the predictor was trained on HOG boxes). Backend ``fan``:
face-alignment, when installed. Points are returned in the +0.5 pixel convention of
docs/CONVENTIONS.md (dlib reports pixel-index coordinates).
"""
from __future__ import annotations

import functools
import importlib.util
import sys
from pathlib import Path

import numpy as np

# CNN (mmod) box -> HOG-like box, in units of the CNN box side (mean of width and height):
# centre shift (dx, dy) and side scale. Least-squares over the 10 FFHQ images of
# ../shared/data/ffhq where both detectors fire: predictor NME 0.089 with raw CNN boxes,
# 0.049 with mapped boxes (HOG boxes: 0.044).
CNN_TO_HOG = (0.082, 0.052, 1.022)
CNN_SIDE = 480


def _models_dir() -> Path:
    # Importing face_recognition_models needs pkg_resources, which fresh venvs lack, so only
    # locate the package folder.
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the dlib backend needs the face-recognition-models package: "
                           "pip install face-recognition-models")
    return Path(list(spec.submodule_search_locations)[0]) / "models"


@functools.lru_cache(maxsize=None)
def _dlib_models():
    import dlib

    d = _models_dir()
    sp_path = d / "shape_predictor_68_face_landmarks.dat"
    if not sp_path.is_file():
        raise RuntimeError(f"{sp_path} is missing: reinstall face-recognition-models")
    return dlib, dlib.get_frontal_face_detector(), dlib.shape_predictor(str(sp_path))


@functools.lru_cache(maxsize=None)
def _dlib_cnn():
    import dlib

    path = _models_dir() / "mmod_human_face_detector.dat"
    if not path.is_file():
        return None
    return dlib.cnn_face_detection_model_v1(str(path))


def map_cnn_box(box) -> list[float]:
    """[x0, y0, x1, y1] of a dlib CNN detection -> a HOG-framed square box (same units)."""
    x0, y0, x1, y1 = map(float, box)
    side = 0.5 * ((x1 - x0) + (y1 - y0))
    dx, dy, s = CNN_TO_HOG
    cx, cy = 0.5 * (x0 + x1) + dx * side, 0.5 * (y0 + y1) + dy * side
    h = 0.5 * s * side
    return [cx - h, cy - h, cx + h, cy + h]


def _rect_list(r) -> list[float]:
    return [float(r.left()), float(r.top()), float(r.right()), float(r.bottom())]


def _detect_dlib(image_rgb: np.ndarray, upsample: int, cnn_fallback: bool) -> dict:
    dlib, hog, predictor = _dlib_models()
    rects, scores, _ = hog.run(image_rgb, upsample, 0.0)
    detector = "dlib-hog"
    if len(rects):
        i = int(np.argmax([r.area() for r in rects]))  # the largest face wins
        rect, score = rects[i], float(scores[i])
    else:
        cnn = _dlib_cnn() if cnn_fallback else None
        dets, s = [], 1.0
        if cnn is not None:
            # the mmod CNN costs seconds per megapixel on a CPU: run it on a copy whose long
            # side is CNN_SIDE, without upsampling (faces down to ~80/CNN_SIDE of the side)
            import cv2

            H, W = image_rgb.shape[:2]
            s = min(1.0, CNN_SIDE / max(H, W))
            small = cv2.resize(image_rgb, (round(W * s), round(H * s)), interpolation=cv2.INTER_AREA) \
                if s < 1 else image_rgb
            dets = cnn(small, 0 if s < 1 else upsample)
        if not len(dets):
            return {"points": None, "box": None, "score": 0.0, "detector": "dlib-hog+cnn" if cnn else "dlib-hog",
                    "reason": "no face found"}
        d = max(dets, key=lambda m: m.rect.area())
        # pixel-index box corners -> continuous, rescale, back to pixel index
        b = ((np.array(_rect_list(d.rect)) + 0.5) / s - 0.5).tolist()
        b = map_cnn_box(b)
        rect = dlib.rectangle(*[int(round(v)) for v in b])
        score, detector = float(d.confidence), "dlib-cnn-mapped"
    shape = predictor(image_rgb, rect)
    pts = np.array([[p.x, p.y] for p in shape.parts()], dtype=np.float64) + 0.5
    box = (np.array(_rect_list(rect)) + 0.5).tolist()
    return {"points": pts, "box": box, "score": score, "detector": detector}


@functools.lru_cache(maxsize=None)
def _fan_model(device: str):
    try:
        import face_alignment  # noqa: F401
    except ImportError as e:
        raise RuntimeError("the fan backend needs the face-alignment package, which is not installed; "
                           "install it (pip install face-alignment) or use --backend dlib (offline)") from e
    try:
        lt = getattr(face_alignment.LandmarksType, "TWO_D", None) or face_alignment.LandmarksType._2D
        return face_alignment.FaceAlignment(lt, device=device, flip_input=False)
    except Exception as e:
        raise RuntimeError(f"face-alignment could not load its weights ({e}); they are downloaded on first use, "
                           "so this machine may be offline. Use --backend dlib, which works offline.") from e


def _detect_fan(image_rgb: np.ndarray, device: str = "cpu") -> dict:
    fa = _fan_model(device)
    res = fa.get_landmarks_from_image(image_rgb, return_bboxes=True)
    preds, _, boxes = res if isinstance(res, tuple) and len(res) == 3 else (res, None, None)
    if not preds:
        return {"points": None, "box": None, "score": 0.0, "detector": "fan", "reason": "no face found"}
    sizes = [np.ptp(p[:, 0]) * np.ptp(p[:, 1]) for p in preds]
    i = int(np.argmax(sizes))
    pts = np.asarray(preds[i], dtype=np.float64)[:, :2] + 0.5
    if boxes is not None and len(boxes) > i:
        box, score = [float(v) + 0.5 for v in boxes[i][:4]], float(boxes[i][4]) if len(boxes[i]) > 4 else 1.0
    else:
        box, score = [*pts.min(0).tolist(), *pts.max(0).tolist()], 1.0
    return {"points": pts, "box": box, "score": score, "detector": "fan"}


def detect_landmarks(image_rgb: np.ndarray, backend: str = "dlib", upsample: int = 1,
                     cnn_fallback: bool = True) -> dict:
    """68 iBUG landmarks of the largest face.

    image_rgb: (H, W, 3) uint8 RGB.
    Returns dict(points=(68, 2) float64 in original pixels, pixel centres at +0.5, or None when
    no face is found; box=[x0, y0, x1, y1] (same convention) or None; score=float;
    detector=str; and reason=str when points is None)."""
    image_rgb = np.asarray(image_rgb)
    if image_rgb.ndim != 3 or image_rgb.shape[2] != 3 or image_rgb.dtype != np.uint8:
        raise ValueError(f"image_rgb must be (H, W, 3) uint8 RGB, got {image_rgb.shape} {image_rgb.dtype}")
    image_rgb = np.ascontiguousarray(image_rgb)
    if backend == "dlib":
        return _detect_dlib(image_rgb, upsample, cnn_fallback)
    if backend == "fan":
        return _detect_fan(image_rgb)
    raise ValueError(f"unknown landmark backend {backend!r}: use 'dlib' or 'fan'")


def tool_version(backend: str) -> str:
    if backend == "dlib":
        import dlib

        return f"dlib {dlib.__version__} + face_recognition_models shape_predictor_68"
    try:
        import face_alignment

        return f"face_alignment {face_alignment.__version__}"
    except ImportError:
        return "face_alignment (not installed)"


def nme(points: np.ndarray, reference: np.ndarray) -> float:
    """Mean point error / inter-ocular distance (means of points 36-41 and 42-47 of reference).
    points, reference: (68, 2)."""
    io = np.linalg.norm(reference[36:42].mean(0) - reference[42:48].mean(0))
    return float(np.linalg.norm(points - reference, axis=1).mean() / io)


if __name__ == "__main__":  # python -m process_data.landmarks: the command is process_data/cli.py's
    from process_data.cli import landmarks_main
    sys.exit(landmarks_main())
