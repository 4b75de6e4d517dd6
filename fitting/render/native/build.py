"""Build machinery of the compiled kernels (:class:`Kernel`): each C++ / CUDA torch extension
is built on first use with ``torch.utils.cpp_extension.load`` (a C++ compiler, g++ or
clang++ or ``$CXX``, and the ``ninja`` Python package) into a folder keyed by the hash of its
sources and flags, and loaded from there afterwards. A failed build warns once and the caller
keeps its PyTorch path. ``FLAME_FIT_NATIVE=0`` disables every kernel; ``FLAME_FIT_NATIVE_DIR``
moves the build cache (default ``~/.cache/flame_fit/native/<python>-<torch>/<kernel>/<source hash>``).
"""
from __future__ import annotations

import hashlib
import importlib.util
import os
import re
import shutil
import sys
import threading
import warnings
from pathlib import Path

import torch

from fitting.atomic import atomic_write_bytes

__all__ = ["cache_root", "kernel_directory", "enabled", "compile_extension", "warn_fallback", "Kernel"]

_LDFLAGS = ("-fopenmp",)   # a tuple: torch's load() appends to the flag lists it is given


def enabled() -> bool:
    """False when the environment variable FLAME_FIT_NATIVE is 0 / false / off / no."""
    return os.environ.get("FLAME_FIT_NATIVE", "1").strip().lower() not in ("0", "false", "off", "no")


def cache_root() -> Path:
    """``$FLAME_FIT_NATIVE_DIR`` or ~/.cache/flame_fit/native, then one folder per Python and
    torch version (a virtualenv upgrade never loads a stale binary); each kernel builds in a
    folder of its own below it."""
    root = os.environ.get("FLAME_FIT_NATIVE_DIR")
    base = Path(root) if root else Path.home() / ".cache" / "flame_fit" / "native"
    tag = f"py{sys.version_info[0]}{sys.version_info[1]}-torch{torch.__version__}".replace("+", "_")
    return base / tag


def _as_list(sources) -> list[Path]:
    return [Path(sources)] if isinstance(sources, (str, Path)) else [Path(x) for x in sources]


_INCLUDE = re.compile(r'^[ \t]*#[ \t]*include[ \t]*"([^"]+)"', re.MULTILINE)


def _with_includes(sources: list[Path]) -> list[Path]:
    """The sources, then the local files they ``#include "..."`` (shared headers such as
    pixel.h, the .cu file that cuda_emulation.cpp compiles), recursively, each once."""
    out, todo = [], list(sources)
    while todo:
        path = todo.pop(0)
        if path in out:
            continue
        out.append(path)
        todo += [path.parent / name for name in _INCLUDE.findall(path.read_text(errors="replace"))
                 if (path.parent / name).is_file()]
    return out


def kernel_directory(name: str, sources: Path | list[Path], cflags: list[str], extra: tuple[str, ...] = _LDFLAGS) -> Path:
    """Build folder of one kernel: ``cache_root() / name / <hash of its sources, the local
    files they include and its flags>`` (``extra``: the other flags, linker and nvcc ones, and
    for CUDA the GPU architectures torch adds, see :func:`_other_flags`).
    A changed source (another checkout or version of this project) builds afresh in a folder
    of its own instead of reusing a binary whose functions may take other arguments: ninja's
    timestamps alone were fooled by an edit made while a build was running."""
    h = hashlib.sha256()
    for path in _with_includes(_as_list(sources)):
        h.update(path.read_bytes())
    h.update((" ".join(cflags) + "\0" + " ".join(extra)).encode())
    return cache_root() / name / h.hexdigest()[:16]


def _missing(cuda: bool = False) -> list[str]:
    """Build prerequisites that are absent (empty list: all present); ``cuda``: also nvcc and
    a CUDA build of torch."""
    from torch.utils.cpp_extension import is_ninja_available
    missing = []
    cxx = os.environ.get("CXX", "c++")
    if shutil.which(cxx) is None and shutil.which("g++") is None and shutil.which("clang++") is None:
        missing.append(f"a C++ compiler ({cxx!r}, g++ or clang++ on PATH; e.g. apt-get install g++)")
    if not is_ninja_available():
        missing.append("the 'ninja' build tool (pip install ninja)")
    if cuda:
        from torch.utils.cpp_extension import CUDA_HOME
        if torch.version.cuda is None:
            missing.append("a CUDA build of torch (this one is CPU-only)")
        elif CUDA_HOME is None:
            missing.append("the CUDA toolkit's nvcc (set CUDA_HOME or put nvcc on PATH)")
    return missing


def _other_flags(ldflags: tuple[str, ...], cuda_cflags: list[str] | None) -> tuple[str, ...]:
    """The flags besides the C++ ones that decide a build: linker, nvcc and, for CUDA, the GPU
    architectures torch compiles for (``TORCH_CUDA_ARCH_LIST`` or the visible GPU), so that a
    cache shared by machines with other GPUs never loads a binary without their kernels."""
    arch: list[str] = []
    if cuda_cflags is not None:
        try:
            from torch.utils.cpp_extension import _get_cuda_arch_flags
            arch = _get_cuda_arch_flags()
        except Exception:   # no CUDA toolkit or GPU: the build itself will say what is missing
            arch = []
    return (*ldflags, *(cuda_cflags or ()), *arch)


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _load_built(name: str, out: Path):
    """The module already built in ``out``, or None: when there is none, a build is running
    (torch's lock file), or the binary is not the one the finished build recorded (a build killed
    mid-link; importing such a file can crash the process). Imported directly: torch's load()
    would run ninja, which rebuilds whenever the sources' paths or times differ, as they do in
    every fresh clone, although the folder's hash says the sources are the same."""
    library, stamp = out / f"{name}.so", out / f"{name}.so.sha256"
    if (out / "lock").exists() or not library.is_file() or not stamp.is_file():
        return None
    if stamp.read_text().strip() != _digest(library):
        return None
    try:
        spec = importlib.util.spec_from_file_location(name, library)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    except ImportError:   # e.g. built against another library: build it again
        return None
    return module


def compile_extension(name: str, sources: Path | list[Path], cflags: list[str], what: str, verbose: bool = False,
                      cuda_cflags: list[str] | None = None, ldflags: tuple[str, ...] = _LDFLAGS):
    """Build (or load the cached build of) one kernel into :func:`kernel_directory` and return
    the module; ``cuda_cflags`` (nvcc flags) when its sources include .cu files. Raises
    RuntimeError saying what is missing or how compilation failed."""
    out = kernel_directory(name, sources, cflags, _other_flags(ldflags, cuda_cflags))
    cached = _load_built(name, out)
    if cached is not None:
        return cached
    missing = _missing(cuda=cuda_cflags is not None)
    if missing:
        raise RuntimeError(f"cannot build the native {what} kernel: missing " + " and ".join(missing))
    from torch.utils.cpp_extension import load
    out.mkdir(parents=True, exist_ok=True)
    print(f"building the native {what} kernel in {out} (once, ~20-90 s)...", file=sys.stderr)
    try:
        # copies of the flag lists: load() appends to them
        module = load(name=name, sources=[str(x) for x in _as_list(sources)], extra_cflags=list(cflags),
                      extra_cuda_cflags=list(cuda_cflags or ()), extra_ldflags=list(ldflags),
                      build_directory=str(out), verbose=verbose)
    except Exception as e:   # compiler errors come as RuntimeError / CalledProcessError / OSError
        raise RuntimeError(f"building the native {what} kernel in {out} failed: {e}") from e
    library = Path(module.__file__)
    if library == out / f"{name}.so":   # what _load_built may import later: this very file
        atomic_write_bytes(out / f"{name}.so.sha256", _digest(library).encode())
    return module


def warn_fallback(reason: str, what: str) -> None:
    """The one warning when a kernel cannot be used: rendering goes on in PyTorch."""
    warnings.warn(f"{reason}. Rendering goes on with the slower pure-PyTorch {what} "
                  "(set FLAME_FIT_NATIVE=0 to silence this).", RuntimeWarning, stacklevel=4)


class Kernel:
    """One optional C++ kernel: built (or loaded from the cache) once, on first use or by
    :meth:`build`; a failed build warns once, is never retried, and the caller keeps its
    PyTorch path. ``what`` names the kernel in messages."""

    def __init__(self, name: str, sources: Path | list[Path], cflags: list[str], what: str,
                 cuda_cflags: list[str] | None = None, ldflags: tuple[str, ...] = _LDFLAGS):
        self.name, self.sources, self.cflags, self.what = name, _as_list(sources), cflags, what
        self.cuda_cflags, self.ldflags = cuda_cflags, ldflags
        self.module = None             # the loaded extension
        self.failed: str | None = None  # why the build failed
        self._lock = threading.Lock()

    def directory(self) -> Path:
        """Where it is built and cached (see :func:`kernel_directory`)."""
        return kernel_directory(self.name, self.sources, self.cflags, _other_flags(self.ldflags, self.cuda_cflags))

    def build(self, verbose: bool = False):
        """Build (or load the cached build of) the extension and return the module. Raises
        RuntimeError saying what is missing or how the compilation failed."""
        with self._lock:
            if self.module is None:
                self.module = compile_extension(self.name, self.sources, self.cflags, self.what, verbose,
                                                self.cuda_cflags, self.ldflags)
            return self.module

    def load(self):
        """The extension, building it on first use; None (with one warning) when it cannot
        be built or FLAME_FIT_NATIVE disables it."""
        if not enabled():
            return None
        if self.module is not None:
            return self.module
        if self.failed is not None:
            return None
        try:
            return self.build()
        except Exception as e:
            self.failed = str(e)
            warn_fallback(self.failed, self.what)
            return None

    def available(self) -> bool:
        """True when the kernel is enabled and built (building it now if needed)."""
        return self.load() is not None
