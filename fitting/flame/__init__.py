"""FLAME head model: chumpy-free loading, skinning, landmarks, texture spaces."""
from .io import FLAME_HELP, FlameFileError, load_flame_arrays, save_flame_npz
from .landmarks import LandmarkEmbedding, load_deca_embedding, load_embedding, load_ringnet_embedding
from .model import FLAME, POSE_DIM, POSE_SLICES
from .submodel import landmark_submodel
from .texture import TextureSpace, find_texture_space, load_texture_space

__all__ = ["FLAME", "FLAME_HELP", "FlameFileError", "LandmarkEmbedding", "POSE_DIM", "POSE_SLICES",
           "TextureSpace", "find_texture_space", "landmark_submodel", "load_deca_embedding", "load_embedding",
           "load_flame_arrays", "load_ringnet_embedding", "load_texture_space", "save_flame_npz"]
