"""prepare_frames: the generator's preprocessed frames are accepted as they are; a frame whose
image broke since is recorded with its reason while the others go on (in spawned workers)."""
from __future__ import annotations

import shutil

from fitting.sequence.layout import frame_scenes, read_layout
from fitting.sequence.prepare import prepare_frames
from tests.conftest import tree_digest


def test_preprocessed_frames_are_skipped(seq):
    root, _ = seq
    before = tree_digest(root)
    lines = []
    dirs = frame_scenes(read_layout(root), root)
    assert prepare_frames(dirs, log=lines.append) == {"000000": "skipped", "000001": "skipped", "000002": "skipped"}
    assert len(lines) == 3 and lines[0].startswith("[prepare] 1/3 frame 000000: skipped")
    assert tree_digest(root) == before


def test_broken_frame_is_recorded_others_go_on(seq, tmp_path):
    root = shutil.copytree(seq[0], tmp_path / "seq", symlinks=True)
    (root / "images" / "cam01" / "000001.png").write_bytes(b"not a png any more")
    dirs = frame_scenes(read_layout(root), root)
    got = prepare_frames(dirs, workers=2, log=lambda s: None)
    assert list(got) == ["000000", "000001", "000002"]
    assert got["000000"] == got["000002"] == "skipped"
    assert got["000001"].startswith("error: ValueError:") and "cam01.png" in got["000001"]
