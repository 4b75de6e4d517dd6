"""Videos in and out, streamed: frames are read with OpenCV in chunks of at most
``chunk_size`` frames, so memory stays bounded whatever the video's length.

* :func:`list_videos` - a video file, or the videos of a folder (one result folder per stem).
* :func:`iter_frame_chunks` - the sampled frames of a video, ``chunk_size`` at a time, as
  upright RGB uint8 arrays with their frame indices. The generator keeps no frame after it
  has yielded the chunk holding it (tests/single_view/test_video.py checks this with weak
  references over a whole fit).
* :class:`VideoWriter` - an mp4 (OpenCV's ``mp4v`` codec) written frame by frame into a temp
  file beside the target and moved into place when complete.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from fitting.images import check_unique_stems

__all__ = ["VIDEO_SUFFIXES", "VideoInfo", "FrameChunk", "is_video", "list_videos", "video_info", "iter_frame_chunks",
           "VideoWriter"]

VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v")
FOURCC = "mp4v"  # MPEG-4 Part 2: in every OpenCV wheel's FFmpeg (H.264 'avc1' is not, here)


def is_video(path) -> bool:
    return Path(path).suffix.lower() in VIDEO_SUFFIXES


@dataclass(frozen=True)
class VideoInfo:
    """What the container says: frame size (W, H), frames per second (0 when unknown) and the
    frame count (-1 when unknown; the count read is authoritative)."""

    width: int
    height: int
    fps: float
    frame_count: int


@dataclass
class FrameChunk:
    """Consecutive sampled frames: ``indices`` (n,) frame numbers in the video (0-based, before
    sampling) and ``frames`` n arrays (H, W, 3) uint8 RGB."""

    indices: list
    frames: list

    def __len__(self) -> int:
        return len(self.frames)


def list_videos(path) -> list[Path]:
    """The videos to fit: ``path`` itself, or the video files of a folder (sorted, not
    recursive). Raises ValueError when there is none or two share a stem (each one's outputs
    go to ``<savefolder>/<stem>/``)."""
    p = Path(path)
    if p.is_file():
        if not is_video(p):
            raise ValueError(f"{p} is not a video ({', '.join(VIDEO_SUFFIXES)})")
        return [p]
    if not p.is_dir():
        raise ValueError(f"{p} does not exist: give a video or a folder of videos")
    vids = sorted(q for q in p.iterdir() if q.is_file() and not q.name.startswith(".") and is_video(q))
    if not vids:
        raise ValueError(f"{p} holds no video ({', '.join(VIDEO_SUFFIXES)})")
    check_unique_stems([q.name for q in vids], str(p), "rename one of each")
    return vids


def _open(path) -> cv2.VideoCapture:
    cap = cv2.VideoCapture(str(path))
    if not cap.isOpened():
        cap.release()
        raise ValueError(f"{path}: OpenCV cannot open this video (unsupported codec or not a video file)")
    return cap


def video_info(path) -> VideoInfo:
    cap = _open(path)
    try:
        n = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
        return VideoInfo(int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)), int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT)),
                         float(cap.get(cv2.CAP_PROP_FPS) or 0.0), n if n > 0 else -1)
    finally:
        cap.release()


def iter_frame_chunks(path, chunk_size: int, sample_step: int = 1, max_frames: int = 0, start: int = 0):
    """Yield :class:`FrameChunk` of at most ``chunk_size`` frames: every ``sample_step``-th frame
    of the video (frames 0, step, 2 step, ...), at most ``max_frames`` of them (0: all),
    beginning with the ``start``-th sampled frame (to resume). Frames between samples are
    grabbed, not decoded into arrays. A frame the decoder cannot read ends the video (OpenCV
    reports truncation that way)."""
    if chunk_size < 1 or sample_step < 1 or max_frames < 0 or start < 0:
        raise ValueError(f"chunk_size and sample_step must be >= 1, max_frames and start >= 0, got {chunk_size}, "
                         f"{sample_step}, {max_frames}, {start}")
    cap = _open(path)
    try:
        k = 0        # sampled frames so far
        index = 0    # frame number in the video
        idx, frames = [], []
        if start > 0:  # seek by grabbing: exact for every codec, unlike CAP_PROP_POS_FRAMES
            for _ in range(start * sample_step):
                if not cap.grab():
                    return
            index, k = start * sample_step, start
        while max_frames == 0 or k < max_frames:
            ok, bgr = cap.read()
            if not ok:
                break
            idx.append(index)
            frames.append(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
            del bgr
            k += 1
            index += 1
            if len(frames) == chunk_size:
                chunk = FrameChunk(idx, frames)
                idx, frames = [], []   # the generator drops its references before yielding
                yield chunk
                del chunk
            if max_frames and k >= max_frames:
                break
            for _ in range(sample_step - 1):
                if not cap.grab():
                    break
                index += 1
        if frames:
            chunk = FrameChunk(idx, frames)
            idx, frames = [], []
            yield chunk
    finally:
        cap.release()


class VideoWriter:
    """``with VideoWriter(path, fps, (W, H)) as w: w.write(rgb)``: an mp4 (``mp4v``) written into
    a temp file beside ``path`` and moved into place when the block ends without error."""

    def __init__(self, path, fps: float, size_wh: tuple):
        self.path = Path(path)
        self.size = (int(size_wh[0]), int(size_wh[1]))
        self.tmp = self.path.with_name(f".{self.path.stem}.writing{self.path.suffix}")
        self.fps = float(fps) if fps and fps > 0 else 25.0
        self.frames = 0
        self._w = None

    def __enter__(self) -> "VideoWriter":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._w = cv2.VideoWriter(str(self.tmp), cv2.VideoWriter_fourcc(*FOURCC), self.fps, self.size)
        if not self._w.isOpened():
            raise RuntimeError(f"OpenCV cannot write {FOURCC} video to {self.tmp} (is FFmpeg in this OpenCV build?)")
        return self

    def write(self, rgb: np.ndarray) -> None:
        a = np.asarray(rgb)
        if (a.shape[1], a.shape[0]) != self.size:
            raise ValueError(f"frame {a.shape[1]}x{a.shape[0]} differs from the video's {self.size[0]}x{self.size[1]}")
        self._w.write(cv2.cvtColor(np.ascontiguousarray(a, np.uint8), cv2.COLOR_RGB2BGR))
        self.frames += 1

    def __exit__(self, exc_type, *exc) -> None:
        self._w.release()
        if exc_type is None:
            os.replace(self.tmp, self.path)
        else:
            self.tmp.unlink(missing_ok=True)
