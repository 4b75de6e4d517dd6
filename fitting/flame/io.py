"""Loading FLAME model files without chumpy.

The official ``generic_model.pkl`` (FLAME 2020 and 2023, also ``male_model.pkl`` and
``female_model.pkl``) are Python-2 pickles whose arrays are chumpy ``Ch`` objects and whose
``J_regressor`` is a scipy sparse matrix. chumpy does not import on Python 3.11 / numpy 2,
so :class:`_SafeUnpickler` resolves a short allow-list of globals: numpy's array
reconstruction, chumpy classes (mapped to a stub that keeps the pickled state) and scipy
sparse matrices (likewise). Any other global is refused, which also keeps a malicious
pickle from running code. The same arrays can come from a plain ``.npz``.

:func:`read_pickle` serves every pickled FLAME file, landmark embeddings included: those
may be ``.npy`` files whose pickle holds torch tensors, read here as numpy arrays.
"""
from __future__ import annotations

import io
import pickle
import zipfile
from pathlib import Path

import numpy as np
from numpy.lib import format as npy_format

try:  # numpy >= 2 renamed numpy.core; old pickles still name the old path
    from numpy._core import multiarray as _multiarray
except ImportError:  # numpy < 2
    from numpy.core import multiarray as _multiarray

FLAME_HELP = (
    "FLAME is not redistributable: register at https://flame.is.tue.mpg.de, download "
    "FLAME 2020 or FLAME 2023, and put generic_model.pkl in flame-data/ (or pass its path). "
    "For a quick test without FLAME, build the synthetic stand-in with "
    "`python -m fitting.synthetic --out flame-data/synthetic.pkl` and pass that path."
)

# name -> (trailing shape, or None for 'any'), checked against the vertex count V.
REQUIRED_KEYS = ("v_template", "f", "shapedirs", "posedirs", "J_regressor", "kintree_table", "weights")
N_JOINTS = 5
N_SHAPE_MAX = 300  # FLAME's shapedirs: 300 identity components, then the expression ones


class FlameFileError(ValueError):
    """A FLAME-related file is missing, unreadable or malformed; the message says what to do."""


class _PickledObject:
    """Stand-in for a chumpy or scipy object: keeps the class name and pickled state."""

    _qualname = "?"

    def __init__(self, *args, **kwargs):
        self.args = args
        self.state = None

    def __setstate__(self, state):
        self.state = state


def _stub(module: str, name: str):
    return type(name, (_PickledObject,), {"_qualname": f"{module}.{name}"})


# torch's storage classes, as named in pickles, and the numpy dtype of their elements
_TORCH_STORAGE_DTYPES = {
    "DoubleStorage": np.float64, "FloatStorage": np.float32, "HalfStorage": np.float16,
    "LongStorage": np.int64, "IntStorage": np.int32, "ShortStorage": np.int16,
    "CharStorage": np.int8, "ByteStorage": np.uint8, "BoolStorage": np.bool_,
}
_TORCH_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C  # first pickle of torch's pre-zip serialisation


class _SafeUnpickler(pickle.Unpickler):
    """Resolves only an allow-list of globals, so unpickling builds data and runs no code.

    Torch tensors inside a pickle (DECA's embedding) become numpy arrays: the tensor and
    storage rebuild functions are replaced by :func:`_tensor_as_array` and
    :func:`_storage_from_bytes`, which read the raw bytes without importing torch.
    """
    _NUMPY = {
        ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
        ("numpy", "ndarray"), ("numpy", "dtype"),
    }
    # numpy >= 1.16 pickles arrays with protocol 5 through _frombuffer (no code, just a copy)
    _NUMPY_FROMBUFFER = {("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer")}
    _BUILTINS = {("copy_reg", "_reconstructor"), ("copyreg", "_reconstructor"),
                 ("__builtin__", "object"), ("builtins", "object"),
                 ("__builtin__", "set"), ("builtins", "set"),
                 ("collections", "OrderedDict"),  # a tensor's (empty) backward hooks
                 # Python 3 writes bytes into protocol-2 pickles as _codecs.encode(str, "latin1")
                 ("_codecs", "encode")}

    def __init__(self, file):
        super().__init__(file, encoding="latin1")

    def find_class(self, module, name):
        if (module, name) in self._NUMPY:
            if module == "numpy":
                return getattr(np, name)
            return getattr(_multiarray, name)
        if (module, name) in self._NUMPY_FROMBUFFER:
            return _frombuffer
        if (module, name) in self._BUILTINS:
            return super().find_class(module, name)
        if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
            return _tensor_as_array
        if (module, name) == ("torch.storage", "_load_from_bytes"):
            return _storage_from_bytes
        if module == "torch" and name in _TORCH_STORAGE_DTYPES:
            return np.dtype(_TORCH_STORAGE_DTYPES[name])
        if module == "chumpy" or module.startswith("chumpy."):
            return _stub(module, name)
        if module.startswith("scipy.sparse") and name.endswith("_matrix"):
            return _stub(module, name)
        raise pickle.UnpicklingError(
            f"refusing to load global {module}.{name}: FLAME files hold only arrays and tensors, "
            "so a pickle that names other code is damaged or malicious")


class _Storage:
    """A torch storage named by a persistent id, filled from the bytes after the pickle."""

    def __init__(self, dtype: np.dtype, numel: int):
        self.dtype, self.numel, self.array = dtype, numel, None


class _TorchLegacyUnpickler(_SafeUnpickler):
    """The object pickle of torch's pre-zip format, whose storages are persistent ids."""

    def __init__(self, file):
        super().__init__(file)
        self.storages: dict[str, _Storage] = {}

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and len(pid) == 6 and pid[0] == "storage"):
            raise pickle.UnpicklingError(f"unexpected persistent id {pid!r} in a torch storage")
        _, dtype, key, _location, numel, view = pid
        if not isinstance(dtype, np.dtype) or view is not None:
            raise pickle.UnpicklingError(f"unsupported torch storage {pid!r}")
        return self.storages.setdefault(key, _Storage(dtype, int(numel)))


def _frombuffer(buf, dtype, shape, order):
    return np.frombuffer(buf, dtype).reshape(shape, order=order).copy()


def _storage_from_bytes(data: bytes) -> np.ndarray:
    """What ``torch.storage._load_from_bytes`` returns, as a 1-D numpy array.

    The bytes are torch's legacy serialisation of one storage: pickles of the magic number,
    the protocol version and system info; the pickle naming the storage; the list of storage
    keys; then per key its element count (int64) and raw elements.
    """
    f = io.BytesIO(data)
    if _SafeUnpickler(f).load() != _TORCH_LEGACY_MAGIC:
        raise pickle.UnpicklingError("a torch storage without torch's magic number")
    _SafeUnpickler(f).load()  # protocol version
    sys_info = _SafeUnpickler(f).load()
    order = "<" if sys_info.get("little_endian", True) else ">"
    unpickler = _TorchLegacyUnpickler(f)
    storage = unpickler.load()
    for key in _SafeUnpickler(f).load():
        s = unpickler.storages[key]
        numel = int(np.frombuffer(f.read(8), order + "i8")[0])
        dtype = s.dtype.newbyteorder(order)
        raw = f.read(numel * dtype.itemsize)
        if numel != s.numel or len(raw) != numel * dtype.itemsize:
            raise pickle.UnpicklingError("a torch storage is truncated")
        s.array = np.frombuffer(raw, dtype).astype(s.dtype)
    if not isinstance(storage, _Storage) or storage.array is None:
        raise pickle.UnpicklingError("torch storage bytes without the storage's data")
    return storage.array


def _tensor_as_array(storage, offset, size, stride, *_grad_hooks_metadata) -> np.ndarray:
    """What ``torch._utils._rebuild_tensor_v2`` builds, as a numpy array (a copy)."""
    if not isinstance(storage, np.ndarray) or storage.ndim != 1:
        raise pickle.UnpicklingError("a tensor whose storage is not an array")
    size, stride, offset = tuple(int(n) for n in size), tuple(int(n) for n in stride), int(offset)
    # as_strided reads whatever memory the strides point at: keep every element inside the storage
    last = offset + sum((n - 1) * s for n, s in zip(size, stride)) if all(size) else offset - 1
    if len(size) != len(stride) or min(size + stride, default=0) < 0 or offset < 0 or last >= storage.size:
        raise pickle.UnpicklingError(f"a tensor of size {size}, stride {stride} does not fit its storage")
    return np.lib.stride_tricks.as_strided(storage[offset:], size, [s * storage.itemsize for s in stride]).copy()


def _to_array(obj, key: str, path: Path):
    """Turn what the unpickler made of ``obj`` into a numpy array (dense)."""
    if isinstance(obj, _PickledObject):
        state = obj.state if isinstance(obj.state, dict) else {}
        if obj._qualname.startswith("chumpy"):
            if "x" in state:
                return np.asarray(state["x"])
            raise FlameFileError(
                f"{path}: key '{key}' is a chumpy {obj._qualname} expression, not a plain array; "
                "only plain chumpy arrays (as in the official FLAME files) can be read without chumpy.")
        if obj._qualname.endswith("_matrix"):
            return _sparse_to_dense(state, obj._qualname, key, path)
    return obj


def _sparse_to_dense(state: dict, qualname: str, key: str, path: Path) -> np.ndarray:
    import scipy.sparse as sp
    shape = state.get("_shape", state.get("shape"))
    kind = qualname.rsplit(".", 1)[-1]
    try:
        if kind in ("csc_matrix", "csr_matrix"):
            cls = sp.csc_matrix if kind == "csc_matrix" else sp.csr_matrix
            m = cls((state["data"], state["indices"], state["indptr"]), shape=shape)
        elif kind == "coo_matrix":
            m = sp.coo_matrix((state["data"], (state["row"], state["col"])), shape=shape)
        else:
            raise KeyError(kind)
    except (KeyError, TypeError, ValueError) as e:
        raise FlameFileError(f"{path}: cannot read sparse matrix '{key}' ({qualname}): {e}") from e
    return np.asarray(m.todense())


def _skip_npy_header(f, path: Path) -> None:
    """When ``f`` is a ``.npy`` file, move past its header: the rest is an object array's pickle."""
    if f.read(len(npy_format.MAGIC_PREFIX)) != npy_format.MAGIC_PREFIX:
        f.seek(0)
        return
    f.seek(0)
    readers = {(1, 0): npy_format.read_array_header_1_0, (2, 0): npy_format.read_array_header_2_0}
    version = npy_format.read_magic(f)
    if version not in readers:  # np.save writes 1.0, or 2.0 for very large headers
        raise FlameFileError(f"{path}: unsupported .npy format version {version}; expected 1.0 or 2.0")
    _shape, _fortran, dtype = readers[version](f)
    if not dtype.hasobject:
        raise FlameFileError(f"{path}: a .npy of {dtype} numbers, expected a pickled dict")


def read_pickle(path: Path, what: str = "FLAME pickle", hint: str = FLAME_HELP):
    """Unpickle ``path`` with only allow-listed globals (no code runs, tensors become arrays).

    ``path`` is a pickle, or a ``.npy`` file (any name) holding a pickled object array, as
    ``np.save(allow_pickle=True)`` writes; a 0-d object array is unwrapped to its item.
    ``what`` and ``hint`` complete the error message when the file cannot be read.
    """
    try:
        with open(path, "rb") as f:
            _skip_npy_header(f, path)
            data = _SafeUnpickler(f).load()
    except FlameFileError:
        raise
    except pickle.UnpicklingError as e:
        raise FlameFileError(f"{path}: not a readable {what} ({e}). {hint}") from e
    except (EOFError, ValueError, TypeError, AttributeError, IndexError, KeyError, ImportError) as e:
        raise FlameFileError(
            f"{path}: the file is corrupt or truncated ({type(e).__name__}: {e}); download it again. "
            f"{hint}") from e
    if isinstance(data, np.ndarray) and data.dtype == object and data.ndim == 0:
        data = data.item()
    return data


def read_pickle_dict(path: Path) -> dict:
    """Unpickle a FLAME-style (Python 2, possibly chumpy-referencing) pickle into a dict."""
    data = read_pickle(path)
    if not isinstance(data, dict):
        raise FlameFileError(f"{path}: expected a dict of arrays, found {type(data).__name__}")
    return data


def load_flame_arrays(path: str | Path) -> dict[str, np.ndarray]:
    """Read a FLAME model (``.pkl`` as distributed, or ``.npz`` with the same keys).

    Returns a dict with at least v_template (V, 3), f (F, 3), shapedirs (V, 3, S+E),
    posedirs (V, 3, 36), J_regressor (5, V) dense, kintree_table (2, 5), weights (V, 5),
    each validated. Extra keys (e.g. ``vt``/``ft`` UVs in the stand-in) are kept.
    """
    path = Path(path)
    if not path.exists():
        raise FlameFileError(f"FLAME model file not found: {path}. {FLAME_HELP}")
    if path.is_dir():
        raise FlameFileError(f"{path} is a folder; pass the model file inside it (generic_model.pkl). {FLAME_HELP}")
    if path.suffix == ".npz":
        try:
            with np.load(path, allow_pickle=False) as z:
                raw = {k: z[k] for k in z.files}
        except (OSError, ValueError, zipfile.BadZipFile, EOFError) as e:
            raise FlameFileError(f"{path}: the .npz is corrupt or unreadable ({e}). {FLAME_HELP}") from e
    else:
        raw = read_pickle_dict(path)
    arrays = {k: _to_array(v, k, path) for k, v in raw.items()}
    _validate(arrays, path)
    return arrays


def _validate(a: dict, path: Path) -> None:
    missing = [k for k in REQUIRED_KEYS if k not in a]
    if missing:
        raise FlameFileError(
            f"{path}: missing keys {missing}; a FLAME model has {list(REQUIRED_KEYS)}. "
            f"Is this really a FLAME generic_model.pkl? {FLAME_HELP}")
    for k in REQUIRED_KEYS:
        a[k] = np.asarray(a[k])
        if a[k].dtype == object:
            raise FlameFileError(f"{path}: key '{k}' is not a numeric array")
    V = a["v_template"].shape[0]
    expect = {
        "v_template": (V, 3), "f": (None, 3), "shapedirs": (V, 3, None), "posedirs": (V, 3, (N_JOINTS - 1) * 9),
        "J_regressor": (N_JOINTS, V), "kintree_table": (2, N_JOINTS), "weights": (V, N_JOINTS),
    }
    for k, shape in expect.items():
        got = a[k].shape
        if len(got) != len(shape) or any(s is not None and s != g for s, g in zip(shape, got)):
            want = "(" + ", ".join("*" if s is None else str(s) for s in shape) + ")"
            raise FlameFileError(f"{path}: '{k}' has shape {got}, expected {want} (V = {V} vertices)")
    if a["f"].min() < 0 or a["f"].max() >= V:
        raise FlameFileError(f"{path}: face indices out of range for {V} vertices")


def save_flame_npz(arrays: dict, path: str | Path) -> Path:
    """Write FLAME arrays as a plain ``.npz`` (the chumpy-free format this loader also reads)."""
    from fitting.meshio import atomic_write_bytes
    buf = io.BytesIO()
    np.savez(buf, **{k: np.asarray(v) for k, v in arrays.items()})
    atomic_write_bytes(path, buf.getvalue())
    return Path(path)
