"""Check a FLAME install: load a model and report one forward pass.

    python -m fitting.flame flame-data/generic_model.pkl
    python -m fitting.flame synthetic        # builds the stand-in in flame-data/ first
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from . import FLAME, FlameFileError, find_texture_space, load_texture_space

STANDIN = Path("flame-data/synthetic.pkl")


def resolve_model(arg: str) -> Path:
    """``synthetic`` means the stand-in in flame-data/, built on first use."""
    if arg != "synthetic":
        return Path(arg)
    if not STANDIN.is_file():
        from fitting.synthetic import build_standin
        print(f"building the synthetic stand-in (not FLAME) at {STANDIN} ...", file=sys.stderr)
        build_standin(STANDIN)
    return STANDIN


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m fitting.flame", description=__doc__.split("\n\n")[0])
    p.add_argument("model", nargs="?", default="flame-data/generic_model.pkl",
                   help="generic_model.pkl, an .npz with the same arrays, or 'synthetic'")
    p.add_argument("--landmark-embedding", default=None, help="embedding file (default: beside the model)")
    a = p.parse_args(argv)
    try:
        t0 = time.perf_counter()
        model = FLAME(resolve_model(a.model), a.landmark_embedding)
        t1 = time.perf_counter()
        pose = torch.zeros(1, 15)
        pose[0, 6] = 0.2  # open the jaw a little
        verts, lmk = model(torch.randn(1, model.n_shape), torch.randn(1, model.n_exp), pose)
        t2 = time.perf_counter()
    except FlameFileError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    tex = find_texture_space(model.model_path)
    report = {
        "model": str(model.model_path), "embedding": model.embedding_source,
        "vertices": list(verts.shape), "landmarks": list(lmk.shape), "faces": list(model.faces.shape),
        "n_shape": model.n_shape, "n_exp": model.n_exp, "has_uvs": model.verts_uvs is not None,
        "texture_space": None if tex is None else f"{tex} ({load_texture_space(tex).n_tex} components)",
        "extent_m": [round(x, 4) for x in (verts[0].max(0).values - verts[0].min(0).values).tolist()],
        "load_s": round(t1 - t0, 3), "forward_ms": round(1000 * (t2 - t1), 1),
    }
    print(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
