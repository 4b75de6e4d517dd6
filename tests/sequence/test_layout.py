"""Sequence layout: cameras and frames listed, malformed folders refused with a message naming
the folder and the fix, frame folders made idempotently without touching the inputs."""
from __future__ import annotations

import os

import pytest

from fitting.sequence.layout import frame_scenes, is_sequence, read_layout, select_frames
from tests.conftest import tree_digest


def _touch(root, *rel):
    for r in rel:
        p = root / "images" / r
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"img " + r.encode())
    return root


def test_reads_cameras_frames_and_paths(tmp_path):
    _touch(tmp_path, "b/001.png", "b/000.png", "a/000.jpg", "a/001.jpg")
    lay = read_layout(tmp_path)
    assert lay.cameras == ["a", "b"] and lay.frames == ["000", "001"] and not lay.warnings
    assert lay.path("a", "001") == tmp_path / "images" / "a" / "001.jpg"
    assert is_sequence(tmp_path)
    with pytest.raises(KeyError, match="camera 'a' at frame '002'"):
        lay.path("a", "002")


def test_single_capture_is_not_a_sequence(tmp_path):
    _touch(tmp_path, "v0.png", "v1.png")
    assert not is_sequence(tmp_path)
    with pytest.raises(ValueError, match="no camera folder.*images/<camera>/<frame>"):
        read_layout(tmp_path)


@pytest.mark.parametrize("files, pattern", [
    ((), "has no images/ folder"),
    (("a/000.png", "loose.png"), r"mixes image files \(loose.png\).*a sequence is images/<camera>/<frame>, a single "
                                 r"capture is images/<view>"),
    (("a/000.png", "b/notes.txt"), r"images/b holds no \.jpg/\.jpeg/\.png image"),
    (("a/000.png", "a/000.jpg"), r"images/a.*000.jpg and 000.png"),
    (("a/000.png", "a/001.png", "a/002.png", "b/000.png"), r"camera 'b' lacks frame\(s\) 001, 002.*allow_missing"),
])
def test_malformed_folders_are_refused(tmp_path, files, pattern):
    if files:
        _touch(tmp_path, *files)
    with pytest.raises(ValueError, match=pattern):
        read_layout(tmp_path)


def test_missing_frames_dropped_when_allowed(tmp_path):
    _touch(tmp_path, "a/000.png", "a/001.png", "b/000.png", "b/002.png")
    lay = read_layout(tmp_path, allow_missing=True)
    assert lay.frames == ["000"] and lay.dropped == {"001": ["b"], "002": ["a"]}
    assert len(lay.warnings) == 2 and "frame 001 dropped: camera(s) b" in lay.warnings[0]


def test_select_frames():
    fr = [f"{i:03d}" for i in range(10)]
    assert select_frames(fr, None) == fr and select_frames(fr, "") == fr
    assert select_frames(fr, "2:8:3") == ["002", "005"]
    assert select_frames(fr, "::4") == ["000", "004", "008"] and select_frames(fr, "7:") == ["007", "008", "009"]
    assert select_frames(fr, "-1") == ["009"]
    for bad, msg in (("a:b", "START:STOP:STEP"), ("1:2:0", "STEP must not be 0"), ("20:30", "picks no frame"),
                     ("1:2:3:4", "START:STOP:STEP")):
        with pytest.raises(ValueError, match=msg):
            select_frames(fr, bad)


def test_frame_scenes_link_idempotently_and_leave_inputs(tmp_path):
    _touch(tmp_path, "a/000.png", "a/001.png", "b/000.jpg", "b/001.jpg")
    before = tree_digest(tmp_path / "images")
    lay = read_layout(tmp_path)
    dirs = frame_scenes(lay, tmp_path)
    assert dirs == [tmp_path / "frames" / "000", tmp_path / "frames" / "001"]
    link = tmp_path / "frames" / "001" / "images" / "b.jpg"
    assert os.readlink(link) == "../../../images/b/001.jpg" and link.read_bytes() == b"img b/001.jpg"
    (dirs[0] / "landmarks.json").write_text("{}")                   # preprocessing beside images/ is kept
    assert frame_scenes(lay, tmp_path, frames=["000"]) == dirs[:1]
    assert (dirs[0] / "landmarks.json").read_text() == "{}"
    # camera b's images change extension: the frame folder follows
    for f in ("000", "001"):
        (tmp_path / "images" / "b" / f"{f}.jpg").rename(tmp_path / "images" / "b" / f"{f}.png")
    frame_scenes(read_layout(tmp_path), tmp_path)
    assert sorted(p.name for p in (dirs[1] / "images").iterdir()) == ["a.png", "b.png"]
    assert tree_digest(tmp_path / "images").keys() == {k.replace(".jpg", ".png") for k in before}
    with pytest.raises(ValueError, match="no frame '007'"):
        frame_scenes(lay, tmp_path, frames=["007"])


def test_frame_scenes_copy_without_symlinks(tmp_path, monkeypatch):
    _touch(tmp_path, "a/000.png")

    def no_symlink(*a, **k):
        raise OSError("symlinks not supported")
    monkeypatch.setattr(os, "symlink", no_symlink)
    (d,) = frame_scenes(read_layout(tmp_path), tmp_path)
    p = d / "images" / "a.png"
    assert not p.is_symlink() and p.read_bytes() == b"img a/000.png"
