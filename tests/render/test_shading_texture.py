"""SH constants and basis (DECA convention), vertex normals, bilinear UV lookup."""
import math

import numpy as np
import torch

from fitting.render import SH_CONSTANTS, sample_texture, sample_texture_packed, sh_basis, sh_shading, vertex_normals
from fitting.render.demo import ellipsoid_mesh


def test_sh_constants_are_decas():
    pi = np.pi
    deca = [1 / np.sqrt(4 * pi), ((2 * pi) / 3) * (np.sqrt(3 / (4 * pi))), ((2 * pi) / 3) * (np.sqrt(3 / (4 * pi))),
            ((2 * pi) / 3) * (np.sqrt(3 / (4 * pi))), (pi / 4) * 3 * (np.sqrt(5 / (12 * pi))),
            (pi / 4) * 3 * (np.sqrt(5 / (12 * pi))), (pi / 4) * 3 * (np.sqrt(5 / (12 * pi))),
            (pi / 4) * (3 / 2) * (np.sqrt(5 / (12 * pi))), (pi / 4) * (1 / 2) * (np.sqrt(5 / (4 * pi)))]
    np.testing.assert_allclose(SH_CONSTANTS, deca, rtol=1e-15)
    np.testing.assert_allclose(SH_CONSTANTS[:2], [0.2820948, 1.0233267], rtol=1e-6)


def test_sh_basis_and_shading_values():
    n = torch.nn.functional.normalize(torch.tensor([[0.3, -0.5, 0.8]], dtype=torch.float64), dim=-1)
    x, y, z = n[0].tolist()
    c = SH_CONSTANTS
    expect = [c[0], c[1] * x, c[2] * y, c[3] * z, c[4] * x * y, c[5] * x * z, c[6] * y * z,
              c[7] * (x * x - y * y), c[8] * (3 * z * z - 1)]
    np.testing.assert_allclose(sh_basis(n)[0].numpy(), expect, rtol=1e-12)
    # ambient-only light is constant; a +z light brightens normals facing +z
    sh = torch.zeros(1, 9, 3, dtype=torch.float64)
    sh[0, 0] = torch.tensor([1.0, 2.0, 3.0])
    normals = torch.nn.functional.normalize(torch.randn(1, 5, 7, 3, dtype=torch.float64), dim=-1)
    out = sh_shading(normals, sh)
    assert out.shape == (1, 5, 7, 3)
    torch.testing.assert_close(out, (sh[0, 0] * c[0]).expand(1, 5, 7, 3))
    sh[0, 3] = 1.0
    s = sh_shading(normals, sh)[..., 0]
    assert torch.corrcoef(torch.stack([s.flatten(), normals[..., 2].flatten()]))[0, 1] > 0.999


def test_vertex_normals_of_sphere_are_radial():
    v, f, _, _ = ellipsoid_mesh(30, 40, radii=(1.0, 1.0, 1.0))
    n = vertex_normals(v[None].double(), f)[0]
    used = torch.zeros(len(v), dtype=torch.bool)
    used[f.flatten()] = True
    cos = (n[used] * torch.nn.functional.normalize(v[used].double(), dim=-1)).sum(-1)
    assert cos.min() > 0.99          # outward (CCW faces) and radial
    torch.testing.assert_close(n[used].norm(dim=-1), torch.ones(int(used.sum()), dtype=torch.float64))


def test_texture_lookup_obj_convention():
    Ht, Wt = 4, 6
    tex = torch.arange(Ht * Wt, dtype=torch.float64).reshape(1, 1, Ht, Wt)
    i, j = torch.meshgrid(torch.arange(Ht), torch.arange(Wt), indexing="ij")
    # texel centres: u = (j + 0.5)/Wt, v = 1 - (i + 0.5)/Ht (v up: row 0 is the top, v ~ 1)
    uv = torch.stack([(j + 0.5) / Wt, 1 - (i + 0.5) / Ht], -1)[None].double()
    torch.testing.assert_close(sample_texture(tex, uv)[0, ..., 0], tex[0, 0])
    # half-way between two texel centres horizontally and vertically: bilinear average
    mid = torch.tensor([[[[2.0 / Wt, 1 - 2.0 / Ht]]]], dtype=torch.float64)  # corner of texels (1,1),(1,2),(2,1),(2,2)
    np.testing.assert_allclose(sample_texture(tex, mid).item(), (7 + 8 + 13 + 14) / 4)
    # the packed sampler (one texture per view, by hand) equals grid_sample
    tex2 = torch.rand(2, 3, Ht, Wt, dtype=torch.float64)
    uvr = torch.rand(2, 5, 5, 2, dtype=torch.float64)
    ref = sample_texture(tex2, uvr).reshape(-1, 3)
    view = torch.arange(2).repeat_interleave(25)
    torch.testing.assert_close(sample_texture_packed(tex2, uvr.reshape(-1, 2), view), ref)
    torch.testing.assert_close(sample_texture_packed(tex2[:1], uvr.reshape(-1, 2), view),
                               sample_texture(tex2[:1].expand(2, -1, -1, -1), uvr).reshape(-1, 3))
    assert math.isfinite(sample_texture(tex, torch.full((1, 1, 1, 2), 1.5, dtype=torch.float64)).item())
