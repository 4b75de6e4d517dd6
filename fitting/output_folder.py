"""Result folders that hold a complete result or none: a lock, a staging folder and a swap.

A result folder ``F`` (``<savefolder>/<scene>`` of run_fitting.py, ``<savefolder>/<stem>``
of single_view/fit.py) holds the last complete result, or none. A run writes its result into
the staging folder ``.F.partial`` beside ``F``, ``report.json`` last, then :meth:`publish`
swaps it in: the entries of ``F`` that are not results (``checkpoint.pt``, ``preprocess/``,
files of your own) move into the staging folder, ``F`` becomes ``.F.previous``, the staging
folder becomes ``F``, and ``.F.previous`` is deleted. ``report.json`` in ``F`` therefore
means the result is complete, and no file of an older result sits beside a newer one.

A run killed at any point leaves at most ``.F.partial`` / ``.F.previous`` and orphan temp
files of :mod:`fitting.atomic`; :meth:`ResultFolder.recover` (called by the next run under
the lock) finishes a swap whose staging folder was complete, and deletes the rest.

:class:`FolderLock` keeps a second run from writing into the same folder: a lock file naming
the process (pid, host, start time, command); a lock left by a process that no longer runs
(``kill -9``) is taken over with a note.
"""
from __future__ import annotations

import contextlib
import datetime
import json
import os
import shutil
import socket
import stat
import sys
from dataclasses import dataclass
from pathlib import Path

from fitting.atomic import atomic_write_json, remove_orphan_temps

__all__ = ["COMPLETE_MARKER", "ResultFolder", "FolderLock", "writable_dir", "check_writable"]

COMPLETE_MARKER = "report.json"


def writable_dir(d: Path) -> bool:
    """Whether ``d`` is a folder this process may write into."""
    # os.access says yes to root even for a dr-xr-xr-x folder: honour the mode bits too, so a
    # folder marked read-only (like the shared test data) is never written into.
    d = Path(d)
    return d.is_dir() and os.access(d, os.W_OK) and bool(d.stat().st_mode & stat.S_IWUSR)


def check_writable(folder: Path, option: str = "--savefolder") -> None:
    """Raise ValueError unless ``folder`` can be created or written into (checked before any
    work starts, so a long fit never fails at its end for want of a place to write)."""
    folder = Path(folder).absolute()
    existing = next(p for p in (folder, *folder.parents) if p.exists())
    if not existing.is_dir():
        raise ValueError(f"cannot write to {option} {folder}: {existing} is a file, not a folder; "
                         f"give {option} a folder path")
    if not writable_dir(existing):
        raise ValueError(f"cannot write to {option} {folder}: {existing} is read-only; give a writable "
                         f"{option} or make {existing} writable")


def _now() -> str:
    return datetime.datetime.now().astimezone().isoformat(timespec="seconds")


def _running(info: dict) -> bool:
    """Whether the process a lock names may still run (another host's cannot be checked)."""
    if info.get("host") != socket.gethostname():
        return True
    pid = info.get("pid")
    if not isinstance(pid, int) or pid <= 0:  # not a lock this tool wrote
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, under another user
        return True
    return True


class FolderLock:
    """Context manager: the lock file ``path`` for the duration of a run.

    Raises ValueError naming the holder when a running process holds it; takes over (with a
    note through ``log``) a lock whose process is gone."""

    def __init__(self, path: Path, log=print):
        self.path, self.log = Path(path), log
        self.info = {"pid": os.getpid(), "host": socket.gethostname(), "started": _now(),
                     "command": " ".join(sys.argv)}

    def __enter__(self) -> "FolderLock":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(3):  # a stale lock is removed, then created afresh
            if self._create():
                return self
            holder = self._holder()
            if holder is not None and _running(holder):
                raise ValueError(
                    f"{self.path.parent} is in use by another run: pid {holder.get('pid')} on "
                    f"{holder.get('host')}, started {holder.get('started')} ({holder.get('command')}); wait for "
                    f"it to finish or stop it, or give another output folder. If that process is gone, "
                    f"delete {self.path}")
            who = "an unreadable lock" if holder is None else \
                f"pid {holder.get('pid')} on {holder.get('host')}, started {holder.get('started')}"
            self.log(f"note: taking over the stale lock {self.path} ({who}: that process is gone)")
            self.path.unlink(missing_ok=True)
        raise ValueError(f"could not take the lock {self.path}: other runs keep taking it; retry")

    def __exit__(self, *exc) -> None:
        if self._holder() == self.info:  # never delete a lock another run took over
            self.path.unlink(missing_ok=True)

    def _create(self) -> bool:
        # the lock appears with its content at once (a hard link of a complete file), so
        # another run never reads it half-written
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        atomic_write_json(tmp, self.info)
        try:
            os.link(tmp, self.path)
            return True
        except FileExistsError:
            return False
        finally:
            tmp.unlink(missing_ok=True)

    def _holder(self) -> dict | None:
        try:
            return json.loads(self.path.read_text())
        except (OSError, ValueError):
            return None


@dataclass(frozen=True)
class ResultFolder:
    """The result folder ``path``; ``results``: the entry names a result consists of (every
    other entry of ``path`` is kept across results)."""

    path: Path
    results: frozenset

    @property
    def staging(self) -> Path:
        return self.path.with_name(f".{self.path.name}.partial")

    @property
    def previous(self) -> Path:
        return self.path.with_name(f".{self.path.name}.previous")

    @property
    def lock_path(self) -> Path:
        return self.path.with_name(f".{self.path.name}.lock")

    def recover(self) -> None:
        """Clean up after a killed run (call under the lock): finish a swap whose staging
        folder was complete, delete an incomplete one, the old result and orphan temp files."""
        if (self.staging / COMPLETE_MARKER).is_file():
            self.publish()
        shutil.rmtree(self.staging, ignore_errors=True)
        shutil.rmtree(self.previous, ignore_errors=True)
        if self.path.is_dir():
            remove_orphan_temps(self.path)

    def begin(self) -> Path:
        """An empty staging folder to write the new result into."""
        shutil.rmtree(self.staging, ignore_errors=True)
        self.staging.mkdir(parents=True)
        return self.staging

    def discard(self) -> None:
        """Drop an unfinished staging folder (the run failed)."""
        if not (self.staging / COMPLETE_MARKER).is_file():
            shutil.rmtree(self.staging, ignore_errors=True)

    @contextlib.contextmanager
    def replace(self):
        """``with folder.replace() as stage:`` write a result into ``stage``, report.json last;
        it is swapped in when the block ends, and dropped when the block fails."""
        self.recover()
        try:
            yield self.begin()
            self.publish()
        finally:
            self.discard()

    def publish(self) -> Path:
        """Swap the complete staging folder in for ``path``. Each step can be redone after a
        kill: the kept entries move before the swap, and the staging folder is complete."""
        if not (self.staging / COMPLETE_MARKER).is_file():
            raise RuntimeError(f"{self.staging} lacks {COMPLETE_MARKER}: it is not a complete result")
        if self.path.is_dir():
            for entry in self.path.iterdir():
                if entry.name not in self.results and not (self.staging / entry.name).exists():
                    os.replace(entry, self.staging / entry.name)
            shutil.rmtree(self.previous, ignore_errors=True)
            os.replace(self.path, self.previous)
        os.replace(self.staging, self.path)
        shutil.rmtree(self.previous, ignore_errors=True)
        return self.path
