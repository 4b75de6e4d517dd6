"""No code runs from data files: landmark embeddings (DECA's .npy with torch tensors inside,
RingNet's .pkl) and checkpoints are read with allow-listed globals only. Each malicious
file below would create a marker file if it were unpickled the ordinary way."""
from __future__ import annotations

import pickle
import re
from collections import OrderedDict

import numpy as np
import pytest
import torch

from fitting.adam import Adam
from fitting.flame import load_deca_embedding, load_ringnet_embedding
from fitting.flame.io import read_pickle
from fitting.state import FitState, load_checkpoint, save_checkpoint


class _CreatesFile:
    """Unpickles as ``open(path, "w")``: the marker file appears when code runs."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return open, (self.path, "w")


class _OutOfBoundsTensor:
    """Unpickles as a tensor whose strides reach far past its 3-element storage."""

    def __reduce__(self):
        storage = torch.arange(3).storage()  # pickles through torch.storage._load_from_bytes
        return torch._utils._rebuild_tensor_v2, (storage, 0, (4,), (10 ** 6,), False, OrderedDict())


def _deca_dict(value) -> dict:
    return {"static_lmk_faces_idx": value, "static_lmk_bary_coords": np.zeros((51, 3)),
            "dynamic_lmk_faces_idx": np.zeros((79, 17)), "dynamic_lmk_bary_coords": np.zeros((79, 17, 3))}


def _save_npy(path, obj) -> None:
    np.save(path, np.array(obj, dtype=object), allow_pickle=True)


def _assert_refused(load, path, marker):
    with pytest.raises(ValueError, match=re.escape(str(path))):
        load()
    assert not marker.exists(), "unpickling the file ran its code"


def test_malicious_deca_embedding_runs_no_code(tmp_path):
    path, marker = tmp_path / "landmark_embedding.npy", tmp_path / "marker"
    _save_npy(path, _deca_dict(_CreatesFile(marker)))
    _assert_refused(lambda: load_deca_embedding(path), path, marker)


def test_code_inside_a_pickled_torch_storage_is_refused(tmp_path):
    """The bytes torch.storage._load_from_bytes receives are a pickle too."""
    path, marker = tmp_path / "landmark_embedding.npy", tmp_path / "marker"

    class EvilStorage:
        def __reduce__(self):
            return torch.storage._load_from_bytes, (pickle.dumps(_CreatesFile(marker)),)

    _save_npy(path, _deca_dict(EvilStorage()))
    _assert_refused(lambda: load_deca_embedding(path), path, marker)


@pytest.mark.filterwarnings("ignore:TypedStorage is deprecated")
def test_tensor_strides_outside_the_storage_are_refused(tmp_path):
    path = tmp_path / "landmark_embedding.npy"
    _save_npy(path, _deca_dict(_OutOfBoundsTensor()))
    with pytest.raises(ValueError, match="does not fit its storage"):
        load_deca_embedding(path)


def test_malicious_ringnet_static_pickle_runs_no_code(tmp_path):
    static, marker = tmp_path / "flame_static_embedding.pkl", tmp_path / "marker"
    static.write_bytes(pickle.dumps({"lmk_face_idx": _CreatesFile(marker), "lmk_b_coords": None}, protocol=2))
    _save_npy(tmp_path / "flame_dynamic_embedding.npy", {"lmk_face_idx": 0, "lmk_b_coords": 0})
    _assert_refused(lambda: load_ringnet_embedding(static, tmp_path / "flame_dynamic_embedding.npy"),
                    static, marker)


@pytest.mark.parametrize("legacy_format", [False, True])
def test_malicious_checkpoint_runs_no_code(tmp_path, legacy_format):
    path, marker = tmp_path / "checkpoint.pt", tmp_path / "marker"
    torch.save({"state": _CreatesFile(marker), "config": {}, "progress": {}, "history": {}, "extra": {}}, path,
               _use_new_zipfile_serialization=not legacy_format)
    _assert_refused(lambda: load_checkpoint(path), path, marker)
    with pytest.raises(ValueError, match="rerun without --resume"):
        load_checkpoint(path)


def test_deca_embedding_with_torch_tensors_loads(tmp_path):
    """DECA's layout, written at test time: torch tensors (one a strided view) beside arrays."""
    rng = np.random.default_rng(0)
    dyn_faces = torch.from_numpy(rng.integers(0, 9976, (79, 34))).t().contiguous().t()[:, ::2]  # strided
    d = {"static_lmk_faces_idx": np.arange(51), "static_lmk_bary_coords": rng.random((51, 3)),
         "dynamic_lmk_faces_idx": dyn_faces, "dynamic_lmk_bary_coords": torch.rand(79, 17, 3),
         "full_lmk_faces_idx": np.arange(68)[None], "full_lmk_bary_coords": rng.random((1, 68, 3)).astype(np.float32)}
    path = tmp_path / "landmark_embedding.npy"
    _save_npy(path, d)
    e = load_deca_embedding(path)
    np.testing.assert_array_equal(e.dynamic_faces, dyn_faces.numpy())
    np.testing.assert_array_equal(e.dynamic_bary, d["dynamic_lmk_bary_coords"].numpy())
    np.testing.assert_array_equal(e.static_faces, d["static_lmk_faces_idx"])
    np.testing.assert_array_equal(e.full_bary, d["full_lmk_bary_coords"][0])
    assert e.dynamic_bary.dtype == np.float32 and e.dynamic_faces.dtype == np.int64


def _trusted_load(path) -> dict:
    """What the file holds, read the ordinary way (tensors as numpy): only for files we trust."""
    d = np.load(path, allow_pickle=True, encoding="latin1").item()
    return {k: v.numpy() if isinstance(v, torch.Tensor) else v for k, v in d.items()}


def _assert_same_arrays(got: dict, want: dict) -> None:
    assert set(got) == set(want)
    for k, v in want.items():
        assert type(got[k]) is type(v) and getattr(got[k], "dtype", None) == getattr(v, "dtype", None), k
        np.testing.assert_array_equal(got[k], v, err_msg=k)


def test_shared_deca_embedding_loads_to_the_same_values(shared_data):
    path = shared_data / "flame_topology" / "landmark_embedding.npy"
    _assert_same_arrays(read_pickle(path), _trusted_load(path))


def test_standin_embedding_round_trips(standin_path):
    path = standin_path.with_name(f"{standin_path.stem}_landmark_embedding.npy")
    _assert_same_arrays(read_pickle(path), _trusted_load(path))
    assert load_deca_embedding(path).full_faces.shape == (68,)


def test_checkpoint_with_adam_state_round_trips(tmp_path):
    st = FitState.create(2, torch.zeros(2, dtype=torch.long), torch.eye(3).repeat(2, 1, 1), 4, 3, (5,))
    opt = Adam([{"params": [st.shape.requires_grad_(), st.tex.requires_grad_()], "lr": 0.1}])
    (st.shape.sum() + st.tex.square().sum()).backward()
    opt.step()
    path = tmp_path / "checkpoint.pt"
    save_checkpoint(path, st, {"n_shape": 4, "scene_dir": "s"}, {"done": ["init"], "stage": "photometric", "pos": 1},
                    {"photometric": [{"iter": 0, "photo": 0.5}]}, {"names": ["a", "b"], "photo_opt": opt.state_dict()})
    ck = load_checkpoint(path)
    torch.testing.assert_close(ck["state"].shape, st.shape.detach())
    saved_opt = ck["extra"]["photo_opt"]
    torch.testing.assert_close(saved_opt["state"][0]["exp_avg"], opt.state_dict()["state"][0]["exp_avg"])
    assert saved_opt["state"][1]["step"] == 1
