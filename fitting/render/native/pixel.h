// Per-pixel maths of the fused shading chain, shared by the CPU driver (shade.cpp) and the
// CUDA one (shade_cuda.cu), so both compute the same thing and the CPU tests check the maths
// of both: perspective-correct barycentrics and depth (rasterize._barycentrics), interpolated
// unit normals, albedo (bilinear texture lookup as renderer.sample_texture_packed /
// grid_sample with padding_mode="border", align_corners=False, or interpolated vertex
// colours) and 9-term SH shading (shading.sh_basis), and the hand-written backward of one
// pixel. The backward recomputes the forward of its pixel (cheaper than storing a dozen (N, k)
// intermediates).
//
// Gradients into shared tables (vertices, texels) go through the Add policy: a plain += where
// each thread owns its rows (CPU), atomicAdd on CUDA. The SH and K^-1 outputs of Outs are
// per-thread accumulators of the pixel's view (plain +=, summed by the driver).
#pragma once

#include <cstdint>

#include "hd.h"

namespace flame_fit {

constexpr int kMaxC = 4;          // colour channels handled (the Python side falls back above this)
enum AlbedoMode : int64_t { kNone = 0, kTexture = 1, kVertex = 2 };

template <typename T>
struct Inputs {
  const T* Xc;          // (B, V, 3) camera frame
  const T* vn;          // (B, V, 3) world vertex normals
  const T* Kinv;        // (B, 9) row-major pinhole_inverse(K)
  const int64_t* pix;   // (N,) b*H*W + y*W + x
  const int64_t* view;  // (N,)
  const int64_t* face;  // (N,)
  const int64_t* faces; // (F, 3)
  int64_t B, V, N, H, W, C;
  int64_t mode;         // AlbedoMode
  const T* src;         // texture (Bs, Ht, Wt, C) channels-last, or vertex colours (Bs, V, C)
  int64_t Bs, Ht, Wt;
  const T* vt;          // (T, 2) UVs
  const int64_t* ft;    // (F, 3) UV indices
  const T* sh;          // (B, 9, C) or nullptr (shading 1)
  T shc[9];             // shading.SH_CONSTANTS
};

// Everything the backward needs about one pixel.
template <typename T>
struct Pixel {
  int64_t b, f, row[3];   // view, face, corner rows b*V + v
  T xc, yc;               // pixel centre (x + 0.5, y + 0.5)
  T d[3], P[3][3];        // pixel ray K^-1 (x+.5, y+.5, 1) and corners
  T w1, w2, total, bary[3], depth;
  T nraw[3], r, n[3];
  bool clamped;           // |nraw|^2 below the normalisation's clamp (no gradient through it)
  T uv[3][2];             // corner UVs (texture mode)
  T fx, fy, sx, sy;       // bilinear fractions; d(texel coord)/d(uv) (0 where clipped)
  int64_t tap[4];         // texel rows of (y0,x0) (y0,x1) (y1,x0) (y1,x1) in the flat (Bs*Ht*Wt, C) table
  int64_t srow;           // vertex-colour table of this pixel (b or 0), times V
  T albedo[kMaxC], basis[9], shading[kMaxC];
};

template <typename T>
FF_INLINE void eval_pixel(const Inputs<T>& in, int64_t i, Pixel<T>& px) {
  const int64_t b = in.view[i], f = in.face[i];
  px.b = b;
  px.f = f;
  // 32-bit division: a 64-bit one costs several times more, and rem < H * W fits
  const int32_t rem = static_cast<int32_t>(in.pix[i] - b * in.H * in.W), Wi = static_cast<int32_t>(in.W);
  const int32_t y = rem / Wi, x = rem - y * Wi;
  const T* K = in.Kinv + 9 * b;
  const T xc = static_cast<T>(x) + T(0.5), yc = static_cast<T>(y) + T(0.5);
  px.xc = xc;
  px.yc = yc;
  px.d[0] = (K[0] * xc + K[2]) + K[1] * yc;         // rasterize.pixel_centre_rays
  px.d[1] = K[4] * yc + K[5];
  px.d[2] = T(1);
  for (int k = 0; k < 3; ++k) {
    px.row[k] = b * in.V + in.faces[3 * f + k];
    for (int j = 0; j < 3; ++j) px.P[k][j] = in.Xc[3 * px.row[k] + j];
  }
  // w_i = d . (P_j x P_k); the sum of all three is d . ((P1 - P0) x (P2 - P0))
  T q[3], e1[3], e2[3], e[3];
  cross(px.d, px.P[0], q);
  px.w1 = -dot(px.P[2], q);
  px.w2 = dot(px.P[1], q);
  for (int j = 0; j < 3; ++j) {
    e1[j] = px.P[1][j] - px.P[0][j];
    e2[j] = px.P[2][j] - px.P[0][j];
  }
  cross(e1, e2, e);
  px.total = dot(px.d, e);
  const T inv = T(1) / px.total;
  px.bary[0] = (px.total - px.w1 - px.w2) * inv;
  px.bary[1] = px.w1 * inv;
  px.bary[2] = px.w2 * inv;
  px.depth = px.bary[0] * px.P[0][2] + px.bary[1] * px.P[1][2] + px.bary[2] * px.P[2][2];

  for (int j = 0; j < 3; ++j)
    px.nraw[j] = px.bary[0] * in.vn[3 * px.row[0] + j] + px.bary[1] * in.vn[3 * px.row[1] + j] +
                 px.bary[2] * in.vn[3 * px.row[2] + j];
  const T s = dot(px.nraw, px.nraw);
  const T lo = static_cast<T>(1e-24);
  px.clamped = s < lo;
  px.r = T(1) / ff_sqrt(px.clamped ? lo : s);
  for (int j = 0; j < 3; ++j) px.n[j] = px.nraw[j] * px.r;

  const int64_t C = in.C;
  if (in.mode == kTexture) {
    T u = 0, v = 0;
    for (int k = 0; k < 3; ++k) {
      const T* t = in.vt + 2 * in.ft[3 * f + k];
      px.uv[k][0] = t[0];
      px.uv[k][1] = t[1];
      u += px.bary[k] * t[0];
      v += px.bary[k] * t[1];
    }
    // uv_to_grid, then grid_sample's unnormalisation (align_corners=False) and border clip
    const T gx = T(2) * u - T(1), gy = T(1) - T(2) * v;
    const int64_t Ht = in.Ht, Wt = in.Wt;
    T ix = ((gx + T(1)) * static_cast<T>(Wt) - T(1)) / T(2);
    T iy = ((gy + T(1)) * static_cast<T>(Ht) - T(1)) / T(2);
    const T xmax = static_cast<T>(Wt - 1), ymax = static_cast<T>(Ht - 1);
    px.sx = (ix > T(0) && ix < xmax) ? static_cast<T>(Wt) : T(0);     // d ix / d u
    px.sy = (iy > T(0) && iy < ymax) ? -static_cast<T>(Ht) : T(0);    // d iy / d v
    ix = ff_min(ff_max(ix, T(0)), xmax);
    iy = ff_min(ff_max(iy, T(0)), ymax);
    // ix, iy >= 0 here, so truncation is floor (std::floor is a libm call without SSE4.1);
    // NaN UVs (degenerate faces) must not index out of the table
    int64_t x0 = ix == ix ? static_cast<int64_t>(ix) : 0;
    int64_t y0 = iy == iy ? static_cast<int64_t>(iy) : 0;
    x0 = ff_max<int64_t>(0, ff_min<int64_t>(x0, Wt > 1 ? Wt - 2 : 0));
    y0 = ff_max<int64_t>(0, ff_min<int64_t>(y0, Ht > 1 ? Ht - 2 : 0));
    px.fx = ix - static_cast<T>(x0);
    px.fy = iy - static_cast<T>(y0);
    const int64_t x1 = ff_min(x0 + 1, Wt - 1), y1 = ff_min(y0 + 1, Ht - 1);
    const int64_t base = (in.Bs == 1 ? 0 : b) * Ht * Wt;
    px.tap[0] = base + y0 * Wt + x0;
    px.tap[1] = base + y0 * Wt + x1;
    px.tap[2] = base + y1 * Wt + x0;
    px.tap[3] = base + y1 * Wt + x1;
    for (int64_t c = 0; c < C; ++c) {
      const T t00 = in.src[px.tap[0] * C + c], t01 = in.src[px.tap[1] * C + c];
      const T t10 = in.src[px.tap[2] * C + c], t11 = in.src[px.tap[3] * C + c];
      px.albedo[c] = (T(1) - px.fy) * ((T(1) - px.fx) * t00 + px.fx * t01) +
                     px.fy * ((T(1) - px.fx) * t10 + px.fx * t11);
    }
  } else if (in.mode == kVertex) {
    px.srow = (in.Bs == 1 ? 0 : b) * in.V;
    for (int64_t c = 0; c < C; ++c) {
      T a = 0;
      for (int k = 0; k < 3; ++k) a += px.bary[k] * in.src[(px.srow + in.faces[3 * f + k]) * C + c];
      px.albedo[c] = a;
    }
  } else {
    for (int64_t c = 0; c < C; ++c) px.albedo[c] = T(1);
  }

  if (in.sh != nullptr) {
    const T x = px.n[0], yy = px.n[1], z = px.n[2];
    const T* c = in.shc;
    px.basis[0] = c[0];
    px.basis[1] = c[1] * x;
    px.basis[2] = c[2] * yy;
    px.basis[3] = c[3] * z;
    px.basis[4] = c[4] * x * yy;
    px.basis[5] = c[5] * x * z;
    px.basis[6] = c[6] * yy * z;
    px.basis[7] = c[7] * (x * x - yy * yy);
    px.basis[8] = c[8] * (T(3) * z * z - T(1));
    const T* L = in.sh + b * 9 * C;
    for (int64_t ch = 0; ch < C; ++ch) {
      T acc = 0;
      for (int k = 0; k < 9; ++k) acc += px.basis[k] * L[k * C + ch];
      px.shading[ch] = acc;
    }
  } else {
    for (int64_t ch = 0; ch < C; ++ch) px.shading[ch] = T(1);
  }
}

// Incoming gradients (nullptr: that output was not used).
template <typename T>
struct Grads {
  const T *colour, *bary, *depth, *normals, *albedo, *shading;
};

// Outgoing gradients (nullptr: not needed). src is this thread range's buffer; sh (9, C)
// and Kinv (9,) are accumulators of the current view.
template <typename T>
struct Outs {
  T *Xc, *vn, *src, *sh, *Kinv;
};

template <typename T, typename Add>
FF_INLINE void backward_pixel(const Inputs<T>& in, const Grads<T>& g, const Outs<T>& o, int64_t i, Pixel<T>& px) {
  eval_pixel(in, i, px);
  const int64_t C = in.C;
  T ga[kMaxC], gs[kMaxC];
  for (int64_t c = 0; c < C; ++c) {
    ga[c] = g.albedo ? g.albedo[i * C + c] : T(0);
    gs[c] = g.shading ? g.shading[i * C + c] : T(0);
    if (g.colour) {
      const T gc = g.colour[i * C + c];
      ga[c] += gc * px.shading[c];
      gs[c] += gc * px.albedo[c];
    }
  }
  T gb[3] = {0, 0, 0};          // d loss / d bary
  T gn[3] = {0, 0, 0};          // d loss / d unit normal
  if (g.bary)
    for (int k = 0; k < 3; ++k) gb[k] = g.bary[3 * i + k];
  if (g.normals)
    for (int j = 0; j < 3; ++j) gn[j] = g.normals[3 * i + j];

  if (in.sh != nullptr) {
    const T* L = in.sh + px.b * 9 * C;
    T gbasis[9];
    for (int k = 0; k < 9; ++k) {
      T acc = 0;
      for (int64_t c = 0; c < C; ++c) acc += L[k * C + c] * gs[c];
      gbasis[k] = acc;
    }
    if (o.sh) {
      T* G = o.sh;                 // this view's accumulator (see shade_backward)
      for (int k = 0; k < 9; ++k)
        for (int64_t c = 0; c < C; ++c) G[k * C + c] += px.basis[k] * gs[c];
    }
    const T x = px.n[0], y = px.n[1], z = px.n[2];
    const T* c = in.shc;
    gn[0] += c[1] * gbasis[1] + c[4] * y * gbasis[4] + c[5] * z * gbasis[5] + T(2) * c[7] * x * gbasis[7];
    gn[1] += c[2] * gbasis[2] + c[4] * x * gbasis[4] + c[6] * z * gbasis[6] - T(2) * c[7] * y * gbasis[7];
    gn[2] += c[3] * gbasis[3] + c[5] * x * gbasis[5] + c[6] * y * gbasis[6] + T(6) * c[8] * z * gbasis[8];
  }

  // n = nraw * rsqrt(max(|nraw|^2, 1e-24))
  T gr[3];
  const T ndg = dot(px.n, gn);
  for (int j = 0; j < 3; ++j) gr[j] = px.clamped ? gn[j] * px.r : px.r * (gn[j] - px.n[j] * ndg);
  for (int k = 0; k < 3; ++k) {
    const T* vk = in.vn + 3 * px.row[k];
    gb[k] += dot(vk, gr);
    if (o.vn)
      for (int j = 0; j < 3; ++j) Add::add(&o.vn[3 * px.row[k] + j], px.bary[k] * gr[j]);
  }

  if (in.mode == kTexture) {
    T gix = 0, giy = 0;
    const T fx = px.fx, fy = px.fy;
    const T w[4] = {(T(1) - fy) * (T(1) - fx), (T(1) - fy) * fx, fy * (T(1) - fx), fy * fx};
    for (int64_t c = 0; c < C; ++c) {
      const T t00 = in.src[px.tap[0] * C + c], t01 = in.src[px.tap[1] * C + c];
      const T t10 = in.src[px.tap[2] * C + c], t11 = in.src[px.tap[3] * C + c];
      gix += ga[c] * ((T(1) - fy) * (t01 - t00) + fy * (t11 - t10));
      giy += ga[c] * ((T(1) - fx) * (t10 - t00) + fx * (t11 - t01));
      if (o.src)
        for (int k = 0; k < 4; ++k) Add::add(&o.src[px.tap[k] * C + c], w[k] * ga[c]);
    }
    const T gu = gix * px.sx, gv = giy * px.sy;
    for (int k = 0; k < 3; ++k) gb[k] += px.uv[k][0] * gu + px.uv[k][1] * gv;
  } else if (in.mode == kVertex) {
    for (int k = 0; k < 3; ++k) {
      const int64_t r = (px.srow + in.faces[3 * px.f + k]) * C;
      T acc = 0;
      for (int64_t c = 0; c < C; ++c) {
        acc += in.src[r + c] * ga[c];
        if (o.src) Add::add(&o.src[r + c], px.bary[k] * ga[c]);
      }
      gb[k] += acc;
    }
  }

  if (o.Xc == nullptr && o.Kinv == nullptr) return;
  T gP[3][3] = {{0, 0, 0}, {0, 0, 0}, {0, 0, 0}};
  if (g.depth) {
    const T gd = g.depth[i];
    for (int k = 0; k < 3; ++k) {
      gb[k] += gd * px.P[k][2];
      gP[k][2] += gd * px.bary[k];
    }
  }
  // bary = (1 - (w1 + w2) / total, w1 / total, w2 / total)
  const T inv = T(1) / px.total;
  const T gw1 = (gb[1] - gb[0]) * inv, gw2 = (gb[2] - gb[0]) * inv;
  const T gt = (gb[0] - (gb[0] * px.bary[0] + gb[1] * px.bary[1] + gb[2] * px.bary[2])) * inv;
  // w1 = -P2 . (d x P0), w2 = P1 . (d x P0), total = d . ((P1 - P0) x (P2 - P0))
  T q[3], p2d[3], p1d[3], e1[3], e2[3], e2d[3], de1[3];
  cross(px.d, px.P[0], q);
  cross(px.P[2], px.d, p2d);
  cross(px.P[1], px.d, p1d);
  for (int j = 0; j < 3; ++j) {
    e1[j] = px.P[1][j] - px.P[0][j];
    e2[j] = px.P[2][j] - px.P[0][j];
  }
  if (o.Kinv) {
    // the same three as functions of the ray: w1 = d . (P2 x P0), w2 = d . (P0 x P1),
    // total = d . (e1 x e2); d = (K0 xc + K2 + K1 yc, K4 yc + K5, 1)
    T p20[3], p01[3], e12[3], gd[3];
    cross(px.P[2], px.P[0], p20);
    cross(px.P[0], px.P[1], p01);
    cross(e1, e2, e12);
    for (int j = 0; j < 2; ++j) gd[j] = gw1 * p20[j] + gw2 * p01[j] + gt * e12[j];
    o.Kinv[0] += gd[0] * px.xc;
    o.Kinv[1] += gd[0] * px.yc;
    o.Kinv[2] += gd[0];
    o.Kinv[4] += gd[1] * px.yc;
    o.Kinv[5] += gd[1];
  }
  if (o.Xc == nullptr) return;
  cross(e2, px.d, e2d);
  cross(px.d, e1, de1);
  for (int j = 0; j < 3; ++j) {
    gP[0][j] += -gw1 * p2d[j] + gw2 * p1d[j] - gt * (e2d[j] + de1[j]);
    gP[1][j] += gw2 * q[j] + gt * e2d[j];
    gP[2][j] += -gw1 * q[j] + gt * de1[j];
  }
  for (int k = 0; k < 3; ++k)
    for (int j = 0; j < 3; ++j) Add::add(&o.Xc[3 * px.row[k] + j], gP[k][j]);
}

// ---- vertex normals (shading.vertex_normals): raw = the sum of the right-hand normals of a
// vertex's faces (|n| = 2 x area), unit = raw / max(|raw|, eps). X, raw, gX: one view's (V, 3)
// rows; fv: the face's three vertex ids.

// Adds face fv's normal to its corners' raw sums.
template <typename T, typename Add>
FF_INLINE void add_face_normal(const T* X, const int64_t* fv, T* raw) {
  T e1[3], e2[3], n[3];
  for (int j = 0; j < 3; ++j) {
    e1[j] = X[3 * fv[1] + j] - X[3 * fv[0] + j];
    e2[j] = X[3 * fv[2] + j] - X[3 * fv[0] + j];
  }
  cross(e1, e2, n);
  for (int k = 0; k < 3; ++k)
    for (int j = 0; j < 3; ++j) Add::add(&raw[3 * fv[k] + j], n[j]);
}

template <typename T>
FF_INLINE void normalise(const T* r, T eps, T* unit) {
  const T d = ff_max(ff_sqrt(dot(r, r)), eps);
  for (int j = 0; j < 3; ++j) unit[j] = r[j] / d;
}

// d loss / d raw from d loss / d unit (g); the clamp passes no gradient below eps.
template <typename T>
FF_INLINE void normalise_backward(const T* r, const T* g, T eps, T* graw) {
  const T len = ff_sqrt(dot(r, r));
  if (len >= eps) {
    const T k = dot(r, g) / (len * len * len);
    for (int j = 0; j < 3; ++j) graw[j] = g[j] / len - r[j] * k;
  } else {
    for (int j = 0; j < 3; ++j) graw[j] = g[j] / eps;
  }
}

// The backward of add_face_normal: graw (V, 3) of the raw sums -> adds into gX (V, 3).
template <typename T, typename Add>
FF_INLINE void face_normal_backward(const T* X, const int64_t* fv, const T* graw, T* gX) {
  T a[3], c[3], gf[3], ga[3], gc[3];
  for (int j = 0; j < 3; ++j) {
    a[j] = X[3 * fv[1] + j] - X[3 * fv[0] + j];
    c[j] = X[3 * fv[2] + j] - X[3 * fv[0] + j];
    gf[j] = graw[3 * fv[0] + j] + graw[3 * fv[1] + j] + graw[3 * fv[2] + j];
  }
  cross(c, gf, ga);       // d (gf . (a x c)) / da
  cross(gf, a, gc);       // ... / dc
  for (int j = 0; j < 3; ++j) {
    Add::add(&gX[3 * fv[1] + j], ga[j]);
    Add::add(&gX[3 * fv[2] + j], gc[j]);
    Add::add(&gX[3 * fv[0] + j], -(ga[j] + gc[j]));
  }
}

}  // namespace flame_fit
