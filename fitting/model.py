"""The FLAME model a fit uses: FLAME's own (``--flame_model FILE``) or the procedural stand-in
(``--flame_model synthetic``, built on first use and cached by its recipe), with its texture
space when there is one."""
from __future__ import annotations

import hashlib
from pathlib import Path

__all__ = ["load_model", "standin_path", "texture_shape"]


def standin_path(cfg) -> Path:
    """Where the stand-in model for this config lives (built on first use, then cached)."""
    base = Path(cfg.standin_dir) if cfg.standin_dir else Path(cfg.savefolder) / "_standin"
    from fitting.synthetic import VERSION
    key = f"{cfg.standin_template}|{cfg.standin_embedding}|{cfg.standin_seed}|v{VERSION}"
    tag = hashlib.sha1(key.encode()).hexdigest()[:8]
    return base / f"standin_{tag}.pkl"


def load_model(cfg, device):
    """-> (FLAME, TextureSpace | None, info dict). ``--flame_model synthetic`` builds the stand-in."""
    from fitting.flame import FLAME, find_texture_space, load_texture_space

    emb = cfg.landmark_embedding or None
    if cfg.flame_model == "synthetic":
        path = standin_path(cfg)
        if not path.is_file():
            from fitting.synthetic import build_standin
            path.parent.mkdir(parents=True, exist_ok=True)
            build_standin(path, template=cfg.standin_template or None,
                          landmark_embedding=cfg.standin_embedding or None, seed=cfg.standin_seed)
        emb = emb or str(path.with_name(f"{path.stem}_landmark_embedding.npy"))
    else:
        path = Path(cfg.flame_model)
        if not path.is_file():
            raise ValueError(f"--flame_model {path} not found: give FLAME's generic_model.pkl, or 'synthetic'")
    flame = FLAME(path, emb, n_shape=cfg.n_shape, n_exp=cfg.n_exp).to(device)
    tex = None
    if cfg.tex_space != "none":
        tp = find_texture_space(path) if cfg.tex_space == "auto" else Path(cfg.tex_space)
        if tp is not None:
            tex = load_texture_space(tp, n_tex=cfg.n_tex).to(device)
    return flame, tex, {"model": str(path), "texture_space": None if tex is None else str(tex.source or "")}


def texture_shape(cfg, flame, texspace) -> tuple:
    """The shape of a fit's texture unknowns: (n_tex,) codes of the texture space, else a free
    (3, tex_res, tex_res) map on the model's UVs. Raises ValueError when the model has neither."""
    if texspace is not None:
        return (texspace.n_tex,)
    if flame.verts_uvs is None:
        raise ValueError("the model has no UVs and no texture space: give --tex_space FILE or a model with UVs")
    return (3, cfg.tex_res, cfg.tex_res)
