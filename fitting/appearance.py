"""Closed-form appearance at surface samples: the texture code and per-view SH lighting that
best explain the photo, for the geometry LM's photometric term."""
from __future__ import annotations

import torch

from fitting.context import FitContext, subject_vertices, view_geometry
from fitting.render.renderer import per_view_matmul, view_packing
from fitting.render.shading import sh_basis, vertex_normals
from fitting.render.texture import uv_to_grid
from fitting.state import FitState

__all__ = ["solve_appearance", "solve_lighting"]


@torch.no_grad()
def solve_appearance(ctx: FitContext, st: FitState, samples, rounds: int = 8,
                     tol: float = 1e-5) -> tuple[FitState, torch.Tensor]:
    """Texture code and per-view SH that best explain the photo at the samples (G = 1, texture
    space): colour = (mean + basis code) * (Y(n) . sh_view) in least squares, plus a weak
    N(0, 1) prior on the code. Returns (state with the new ``tex`` and ``sh``, the fitted colour
    of every sample (S, 3)).

    The problem is bilinear. Alternating the two linear solves converges slowly along the
    albedo-versus-lighting valley (measured on the demo: 4 rounds left 2.8x the converged
    residual, and the geometry bent to explain the rest), so this is variable projection: the
    SH is always the exact least-squares solution for the current code, and the code takes
    Gauss-Newton steps on the reduced problem (the SH eliminated by a Schur complement), for
    at most ``rounds`` steps or until the cost drops by less than ``tol`` relatively."""
    view, pix = samples[0], samples[3]
    ts = ctx.texspace
    N = st.num_views
    Y, grid = _surface(ctx, st, samples)
    Kt = ts.n_tex
    stack = torch.cat([ts.mean[None], ts.basis.reshape(1, Kt * 3, *ts.basis.shape[-2:])], 1)
    smp = _sample_maps(stack, grid)                                                   # (S, 3 + 3 Kt)
    slot, m = view_packing(view, N)
    padded = _padding(slot, N, m)
    mean = padded(smp[:, :3])                                                          # (N, m, 3)
    basis = padded(smp[:, 3:].reshape(-1, Kt, 3).transpose(1, 2).contiguous())        # (N, m, 3, Kt)
    Y, img = padded(Y), padded(_photo(ctx, pix))                                      # (N, m, 9), (N, m, 3)
    YY = _outer(Y)
    prior = 1e-4   # code ~ N(0, 1) against colour noise 0.01 (a ridge of w_tex x samples biased the code)

    def light(code):
        """Exact SH for a code. -> alb, A_hh, sh, shade."""
        alb = mean + basis @ code                                                        # (N, m, 3)
        A, sh = _exact_sh(alb, img, Y, YY)
        return alb, A, sh, Y @ sh                                                        # shade (N, m, 3)

    def cost(code, alb, shade):
        return float(((alb * shade - img) ** 2).sum()) + prior * float(code @ code)

    code = st.tex[0].clone()
    alb, A_hh, sh, shade = light(code)
    c0 = cost(code, alb, shade)
    for _ in range(rounds):
        r = (alb * shade - img).reshape(-1)                                              # (N m 3,)
        Jc = shade[..., None] * basis                                                    # (N, m, 3, Kt)
        Jf = Jc.view(-1, Kt)
        A_cc = Jf.t() @ Jf + prior * torch.eye(Kt, device=Y.device, dtype=Y.dtype)
        g_c = Jf.t() @ r + prior * code
        # cross blocks d(colour)/d(code) x d(colour)/d(sh) per view and channel: (N, 3, Kt, 9)
        A_ch = ((Jc * alb[..., None]).view(N, m, 3 * Kt).transpose(1, 2) @ Y).view(N, 3, Kt, 9)
        X = torch.linalg.solve(A_hh, A_ch.transpose(-1, -2))                             # A_hh^-1 A_ch^T
        M = A_cc - torch.einsum("nktj,nkju->tu", A_ch, X)
        # the SH gradient is zero at its exact solve (up to the 1e-6 ridge), so it drops out
        step = -torch.linalg.solve(M, g_c)
        for _try in range(4):                  # Gauss-Newton on a bilinear problem: backtrack if needed
            cand = code + step
            alb1, A1, sh1, shade1 = light(cand)
            c1 = cost(cand, alb1, shade1)
            if c1 <= c0:
                break
            step = step / 2
        else:
            break
        code, alb, A_hh, sh, shade = cand, alb1, A1, sh1, shade1
        done = c0 - c1 <= tol * c0
        c0 = c1
        if done:
            break
    out = st.detach()
    out.tex = code[None].to(st.tex)
    out.sh = sh.to(st.sh)
    return out, (alb * shade).view(N * m, 3).index_select(0, slot)


@torch.no_grad()
def solve_lighting(ctx: FitContext, st: FitState, samples) -> tuple[FitState, torch.Tensor]:
    """Per-view SH that best explain the photo at the samples with the state's texture code held
    (G = 1, texture space): :func:`solve_appearance`'s SH at a fixed code, in one solve. For a
    sequence's frames, whose texture is the identity's. Returns (state with the new ``sh``,
    the fitted colour of every sample (S, 3))."""
    view, pix = samples[0], samples[3]
    ts = ctx.texspace
    Y, grid = _surface(ctx, st, samples)
    albedo = _sample_maps((ts.mean + torch.einsum("k,kchw->chw", st.tex[0], ts.basis))[None], grid)  # (S, 3)
    slot, m = view_packing(view, st.num_views)
    padded = _padding(slot, st.num_views, m)
    Yp = padded(Y)
    _, sh = _exact_sh(padded(albedo), padded(_photo(ctx, pix)), Yp, _outer(Yp))
    out = st.detach()
    out.sh = sh.to(st.sh)
    return out, albedo * per_view_matmul(Y, view, sh)


def _surface(ctx: FitContext, st: FitState, samples) -> tuple[torch.Tensor, torch.Tensor]:
    """(SH basis of the surface normal (S, 9), texture coordinates for grid_sample (S, 2)) at the
    samples (view, face, barycentrics, pixel)."""
    view, face, bary, _ = samples
    vv, _ = view_geometry(ctx, st, subject_vertices(ctx, st))
    faces = ctx.flame.faces.long()
    n = (vertex_normals(vv, faces)[view[:, None], faces[face]] * bary[..., None]).sum(1)
    vt, ft = ctx.uvs()
    return (sh_basis(n / n.norm(dim=-1, keepdim=True).clamp_min(1e-12)),
            uv_to_grid((vt[ft[face]] * bary[..., None]).sum(1)))


def _sample_maps(maps: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
    """maps (1, C, Ht, Wt) bilinearly at grid (S, 2) -> (S, C)."""
    return torch.nn.functional.grid_sample(maps, grid[None, None].to(maps), mode="bilinear", padding_mode="border",
                                           align_corners=False)[0, :, 0].t()


def _photo(ctx: FitContext, pix: torch.Tensor) -> torch.Tensor:
    """The photo's colour (S, 3) at the flat pixel indices ``pix``."""
    return ctx.images.permute(0, 2, 3, 1).reshape(-1, 3)[pix]


def _padding(slot: torch.Tensor, N: int, m: int):
    """(S, ...) -> (N, m, ...) in the zero-padded per-view layout of ``view_packing``: every
    per-view sum is then a batched matmul, the padding rows zero in every factor."""
    def padded(x):
        return x.new_zeros(N * m, *x.shape[1:]).index_copy_(0, slot, x).view(N, m, *x.shape[1:])
    return padded


def _outer(Y: torch.Tensor) -> torch.Tensor:
    """(N, m, 9) -> the per-sample products Y Y^T (N, m, 81)."""
    return (Y[..., :, None] * Y[..., None, :]).flatten(-2)


def _exact_sh(alb: torch.Tensor, img: torch.Tensor, Y: torch.Tensor, YY: torch.Tensor):
    """The SH (N, 9, 3) that best explain ``img`` with the albedo ``alb`` (both (N, m, 3)) and the
    SH basis Y (N, m, 9) (YY = :func:`_outer` of it): per view and channel 9x9 normal
    equations, returned as (A (N, 3, 9, 9), sh)."""
    N = alb.shape[0]
    A = ((alb * alb).transpose(1, 2) @ YY).view(N, 3, 9, 9) + 1e-6 * torch.eye(9, device=Y.device, dtype=Y.dtype)
    b = (alb * img).transpose(1, 2) @ Y                                                  # (N, 3, 9)
    return A, torch.linalg.solve(A, b[..., None])[..., 0].transpose(1, 2)
