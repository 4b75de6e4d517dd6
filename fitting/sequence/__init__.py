"""Multi-view sequences: a calibrated rig filmed over time.

A sequence folder holds ``images/<camera>/<frame>.<ext>``; :mod:`fitting.sequence.layout`
reads it and makes one ordinary scene folder per frame (``frames/<frame>/``, images linked),
:mod:`fitting.sequence.prepare` preprocesses those frames, :mod:`fitting.sequence.outputs`
writes the tracked result. See docs/SEQUENCES.md.
"""
