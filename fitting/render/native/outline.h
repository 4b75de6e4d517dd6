// The antialiased silhouette's maths (fitting/render/silhouette.py, whose docstring derives
// it), per pixel, for the CPU (shade.cpp) and CUDA (shade_cuda.cu) drivers.
//
// An outline pair is two horizontally or vertically adjacent pixels, p covered (by face f of
// the hard raster) and q background. The outline crosses the segment between their centres
// at s = a / (a - b), a = E . d_p, b = E . d_q, for the first of f's edge normals E that
// changes sign; the pair counts only in the direction nearer the edge's screen normal, and
// moves coverage by s - 0.5: into p when s < 0.5 (p loses), else into q (q gains).
//
// The CPU driver walks the pairs of each view; on CUDA each pixel gathers the pairs it is the
// target of (at most its 4 neighbours: pairs_into), so the forward pass needs no atomics and
// each pair's gradient is taken once, by its target.
#pragma once

#include <cstdint>

#include "hd.h"

namespace flame_fit {

template <typename T>
struct OutlineInputs {
  const T* Xc;            // (B, V, 3) camera frame
  const int64_t* faces;   // (F, 3)
  const T* Kinv;          // (B, 9) row-major pinhole_inverse(K)
  const int64_t* face;    // (B*H*W) hard-raster face per pixel, -1 background
  int64_t V, H, W;
};

// d = K^-1 (x + 0.5, y + 0.5, 1), in rasterize.pixel_centre_rays' order of operations
template <typename T>
FF_INLINE void centre_ray(const T* Ki, int64_t x, int64_t y, T* d) {
  const T u = static_cast<T>(x) + T(0.5), v = static_cast<T>(y) + T(0.5);
  d[0] = (Ki[0] * u + Ki[2]) + Ki[1] * v;
  d[1] = Ki[4] * v + Ki[5];
  d[2] = T(1);
}

// One pair, evaluated.
template <typename T>
struct Pair {
  int64_t p, q;          // pixel indices within the view (covered, background)
  int64_t px, py, qx, qy;
  const T* P[3];         // the covering face's vertices
  T E[3], dp[3], dq[3];  // the crossed edge's normal, the two rays
  int edge;              // E = P[edge + 1] x P[edge + 2] (indices mod 3)
  T a, b, s_raw, s;
  bool ok;
};

// Evaluates the pair of pixels (x0, y0) and (x1, y1) of view b, one covered and one not
// (the caller checks), adjacent along x (horizontal) or y.
template <typename T>
FF_INLINE void eval_pair(const OutlineInputs<T>& in, int64_t b, int64_t x0, int64_t y0, int64_t x1, int64_t y1,
                         bool horizontal, Pair<T>& r) {
  const int64_t hw = in.H * in.W, i0 = y0 * in.W + x0, i1 = y1 * in.W + x1;
  const bool first = in.face[b * hw + i0] >= 0;
  r.p = first ? i0 : i1;
  r.q = first ? i1 : i0;
  r.px = first ? x0 : x1;
  r.py = first ? y0 : y1;
  r.qx = first ? x1 : x0;
  r.qy = first ? y1 : y0;
  const T* Ki = in.Kinv + 9 * b;
  centre_ray(Ki, r.px, r.py, r.dp);
  centre_ray(Ki, r.qx, r.qy, r.dq);
  const int64_t* fv = in.faces + 3 * in.face[b * hw + r.p];
  const T* Xb = in.Xc + b * in.V * 3;
  for (int k = 0; k < 3; ++k) r.P[k] = Xb + 3 * fv[k];
  // the first edge whose function changes sign along p -> q (silhouette._outline_delta)
  T best = T(2), wp[3], wq[3], En[3][3];
  bool changes[3];
  r.edge = 0;
  for (int e = 0; e < 3; ++e) {
    cross(r.P[(e + 1) % 3], r.P[(e + 2) % 3], En[e]);
    wp[e] = dot(En[e], r.dp);
    wq[e] = dot(En[e], r.dq);
    changes[e] = wp[e] * wq[e] < T(0);
    const T s_det = changes[e] ? wp[e] / (wp[e] - wq[e]) : T(2);
    if (s_det < best) {   // argmin: the first of equal values
      best = s_det;
      r.edge = e;
    }
  }
  for (int k = 0; k < 3; ++k) r.E[k] = En[r.edge][k];
  // the pair counts in the direction nearer the edge's screen-space normal E^T K^-1[:, :2]
  const T g0 = (r.E[0] * Ki[0] + r.E[1] * Ki[3]) + r.E[2] * Ki[6];
  const T g1 = (r.E[0] * Ki[1] + r.E[1] * Ki[4]) + r.E[2] * Ki[7];
  const bool steep = (g0 < T(0) ? -g0 : g0) >= (g1 < T(0) ? -g1 : g1);
  r.ok = changes[r.edge] && (horizontal ? steep : !steep);
  r.a = wp[r.edge];
  r.b = wq[r.edge];
  r.s_raw = r.a / (r.ok ? r.a - r.b : T(1));
  r.s = ff_min(ff_max(r.s_raw, T(0)), T(1));
}

// Calls visit(pair) for each outline pair whose coverage change lands on pixel i = (x, y) of
// view b (at most one per neighbour).
template <typename T, typename Visit>
FF_INLINE void pairs_into(const OutlineInputs<T>& in, int64_t b, int64_t x, int64_t y, Visit&& visit) {
  const int64_t hw = in.H * in.W, i = y * in.W + x;
  const int64_t* fb = in.face + b * hw;
  const bool cov = fb[i] >= 0;
  const int64_t nx[4] = {x - 1, x + 1, x, x}, ny[4] = {y, y, y - 1, y + 1};
  for (int k = 0; k < 4; ++k) {
    if (nx[k] < 0 || nx[k] >= in.W || ny[k] < 0 || ny[k] >= in.H) continue;
    if ((fb[ny[k] * in.W + nx[k]] >= 0) == cov) continue;
    // the pair in the torch path's order: the left / upper pixel first
    const bool before = k == 0 || k == 2;
    Pair<T> r;
    eval_pair(in, b, before ? nx[k] : x, before ? ny[k] : y, before ? x : nx[k], before ? y : ny[k], k < 2, r);
    if (r.ok && pair_target(r) == i) visit(r);
  }
}

// Silhouette before the clamp to [0, 1]: coverage plus the changes that land on the pixel.
template <typename T>
FF_INLINE T outline_pixel(const OutlineInputs<T>& in, int64_t b, int64_t x, int64_t y) {
  T raw = in.face[b * in.H * in.W + y * in.W + x] >= 0 ? T(1) : T(0);
  pairs_into(in, b, x, y, [&](const Pair<T>& r) { raw += r.s - T(0.5); });
  return raw;
}

// The pixel a pair's coverage change lands on (within the view): p when s < 0.5, else q.
template <typename T>
FF_INLINE int64_t pair_target(const Pair<T>& r) { return r.s < T(0.5) ? r.p : r.q; }

// Backward of one counted pair (r.ok) given g = dL/d(its target's value before the final
// clamp, already zero where that clamp cut): adds into gX (the view's (V, 3) vertex gradient,
// through Add::add) and gK (the view's 9 K^-1 gradients, plain adds: a per-thread or per-view
// accumulator); either may be null.
template <typename T, typename Add>
FF_INLINE void pair_backward(const OutlineInputs<T>& in, int64_t b, const Pair<T>& r, T g, T* gX, T* gK) {
  if (g == T(0) || !(r.s_raw >= T(0) && r.s_raw <= T(1))) return;   // the clamp of s passes no gradient
  const T den = r.a - r.b;
  const T ga = g / den - g * r.a / (den * den), gb = g * r.a / (den * den);
  if (gX) {
    T gE[3];
    for (int k = 0; k < 3; ++k) gE[k] = ga * r.dp[k] + gb * r.dq[k];
    const int j = (r.edge + 1) % 3, l = (r.edge + 2) % 3;
    T gPj[3], gPl[3];
    cross(r.P[l], gE, gPj);   // d(Pj x Pl . w)/dPj = Pl x w
    cross(gE, r.P[j], gPl);   // and w x Pj for Pl
    const int64_t* fv = in.faces + 3 * in.face[b * in.H * in.W + r.p];
    for (int k = 0; k < 3; ++k) {
      Add::add(gX + 3 * fv[j] + k, gPj[k]);
      Add::add(gX + 3 * fv[l] + k, gPl[k]);
    }
  }
  if (gK) {
    // rays: d0 = K0 u + K2 + K1 v, d1 = K4 v + K5 (d2 = 1 does not depend on K)
    const T gdp0 = ga * r.E[0], gdp1 = ga * r.E[1], gdq0 = gb * r.E[0], gdq1 = gb * r.E[1];
    const T up = static_cast<T>(r.px) + T(0.5), vp = static_cast<T>(r.py) + T(0.5);
    const T uq = static_cast<T>(r.qx) + T(0.5), vq = static_cast<T>(r.qy) + T(0.5);
    gK[0] += gdp0 * up + gdq0 * uq;
    gK[1] += gdp0 * vp + gdq0 * vq;
    gK[2] += gdp0 + gdq0;
    gK[4] += gdp1 * vp + gdq1 * vq;
    gK[5] += gdp1 + gdq1;
  }
}

}  // namespace flame_fit
